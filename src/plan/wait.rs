//! Admission's short wait for a thread that is about to come back.

use super::ledger::{AccountState, ThreadSlot};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest an admission waits for a slot while one of the account's tunnels is closing.
const CLOSING_WAIT: Duration = Duration::from_secs(1);
/// Longest it waits otherwise: for a close the slot's core has not seen yet.
const ENDING_GRACE: Duration = Duration::from_millis(20);

/// Every thread is taken. A client that closes a tunnel and opens the next at once would
/// be refused while its last tunnel ends: the core that holds it has yet to see the close,
/// or has seen it and waits for the origin's close, most often one round trip. So the
/// admission waits for a slot before it refuses: [`ENDING_GRACE`], or [`CLOSING_WAIT`]
/// while a tunnel of the account is closing ([`ThreadSlot::closing`]), looking 1 ms apart
/// at first, then twice as far each time, 100 ms at most. Only this account waits.
pub(super) async fn closing_slot(state: &Arc<AccountState>) -> Option<ThreadSlot> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let wait = if state.closing() > 0 {
            CLOSING_WAIT
        } else {
            ENDING_GRACE
        };
        let left = (start + wait).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        glommio::timer::sleep(pause.min(left)).await;
        if let Some(s) = state.try_acquire() {
            return Some(s);
        }
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

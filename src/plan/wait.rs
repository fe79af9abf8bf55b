//! Admission's short wait for a thread that is about to come back.

use super::ledger::{AccountState, Down, SharedPlan, SharedSlot, ThreadSlot};
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
    let mut wait = Backoff::new(Duration::from_millis(1));
    while wait.pause(state.closing() > 0).await {
        if let Some(s) = state.try_acquire() {
            return Some(s);
        }
    }
    None
}

/// The same wait for a slot the cluster refused ([`SharedSlot::Full`]): another node may
/// have given one back that Redis has not counted yet, or hold one that is closing. Each
/// look is a Redis round trip, so the first is 2 ms after the refusal.
pub(super) async fn cluster_slot(
    cluster: &Arc<dyn SharedPlan>,
    state: &Arc<AccountState>,
    mut closing: bool,
) -> Result<SharedSlot, Down> {
    let mut wait = Backoff::new(Duration::from_millis(2));
    while wait.pause(closing).await {
        match cluster.acquire(state).await? {
            SharedSlot::Taken => return Ok(SharedSlot::Taken),
            SharedSlot::Full { closing: c } => closing = c,
        }
    }
    Ok(SharedSlot::Full { closing })
}

/// Pauses between looks for a slot: from `first`, twice as long each time, at most
/// 100 ms, within [`ENDING_GRACE`] of the start, or [`CLOSING_WAIT`] while a slot is
/// closing.
struct Backoff {
    start: Instant,
    pause: Duration,
}

impl Backoff {
    fn new(first: Duration) -> Backoff {
        Backoff {
            start: Instant::now(),
            pause: first,
        }
    }

    /// Sleep until the next look; `false` (at once) when the wait is over.
    async fn pause(&mut self, closing: bool) -> bool {
        let wait = if closing { CLOSING_WAIT } else { ENDING_GRACE };
        let left = (self.start + wait).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        glommio::timer::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        true
    }
}

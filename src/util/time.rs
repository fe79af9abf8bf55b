//! Deadlines on futures (glommio timers).

use std::future::Future;
use std::time::{Duration, Instant};

/// Run `fut` until `deadline`; `None` when the deadline passed first.
pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let left = deadline.saturating_duration_since(Instant::now());
    within(left, fut).await
}

/// Run `fut` for at most `dur`; `None` when it took longer.
pub async fn within<F: Future>(dur: Duration, fut: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

/// The process's epoch: the first time anything asked for it.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds from the process epoch to `t` (0 for earlier instants): a clock that fits
/// an atomic, shared by every core.
pub fn epoch_ms(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

/// Nanoseconds from the process epoch to `t` (0 for earlier instants).
pub fn epoch_ns(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The wall clock (UTC), for what is decided by calendar: plan periods, account expiry.
/// Built with `fault-injection`, `TOLLGATE_TEST_CLOCK_OFFSET_S` (seconds, may be negative)
/// moves it, or `TOLLGATE_TEST_CLOCK_FILE` names a file holding that offset, read at each
/// call (a test moves a running gateway's clock across a boundary when it is ready).
pub fn wall_now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    #[cfg(feature = "fault-injection")]
    if let Some(off) = std::env::var("TOLLGATE_TEST_CLOCK_FILE")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("TOLLGATE_TEST_CLOCK_OFFSET_S").ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        if let Ok(t) = now.checked_add(jiff::SignedDuration::from_secs(off)) {
            return t;
        }
    }
    now
}

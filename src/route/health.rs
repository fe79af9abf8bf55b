//! Exit health: consecutive failures, unclear failures (by target and tenant) and the bench,
//! shared by every core and carried across reloads by exit name.

use crate::config::Snapshot;
use crate::util::epoch_ms;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::index::ExitIndex;

/// The route's live view of one world's exits: the index by targeting and each exit's
/// health. Built with the world; the health of exits that survive a reload (by name) is
/// the same object as before it.
#[derive(Debug, Default)]
pub struct Exits {
    pub index: ExitIndex,
    health: Vec<Arc<Health>>,
}

impl Exits {
    pub fn build(snap: &Snapshot, prev: Option<(&Snapshot, &Exits)>) -> Exits {
        let health = snap
            .exits
            .iter()
            .map(|e| {
                prev.and_then(|(old, ex)| {
                    let i = *old.exit_by_name.get(&e.name)?;
                    ex.health.get(i).cloned()
                })
                .unwrap_or_default()
            })
            .collect();
        Exits {
            index: ExitIndex::build(&snap.exits),
            health,
        }
    }

    /// Exit `i`'s health (`i` from the same world's snapshot).
    pub fn health(&self, i: usize) -> &Health {
        &self.health[i]
    }

    pub fn is_benched(&self, i: usize, now: Instant) -> bool {
        self.health.get(i).is_none_or(|h| h.is_benched(now))
    }
}

/// Per-exit health shared by all cores and carried across reloads (by exit name).
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Benched until this many ms after [`epoch`]; 0 = not benched.
    benched_until_ms: AtomicU64,
    /// Unclear failures since the last success ([`Health::unclear_failure`]).
    has_unclear: AtomicBool,
    /// The exit cannot work as configured (a `source_cidr` that is not local): left out
    /// until a reload finds it fixed.
    unusable: AtomicBool,
    unclear: parking_lot::Mutex<Unclear>,
}

/// The targets and accounts of an exit's unclear failures since its last success.
#[derive(Debug, Default)]
struct Unclear {
    targets: Vec<u64>,
    tenants: Vec<u64>,
}

/// Distinct targets and accounts remembered per exit.
const UNCLEAR_KEPT: usize = 16;

impl Health {
    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// How long the exit stays benched from `now` (`None`: usable; `Some(MAX)`: left
    /// out until a reload fixes it).
    pub fn benched_for(&self, now: Instant) -> Option<Duration> {
        if self.unusable.load(Ordering::Relaxed) {
            return Some(Duration::MAX);
        }
        let until = self.benched_until_ms.load(Ordering::Relaxed);
        let now = epoch_ms(now);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn is_benched(&self, now: Instant) -> bool {
        self.unusable.load(Ordering::Relaxed)
            || self.benched_until_ms.load(Ordering::Relaxed) > epoch_ms(now)
    }

    /// Leave the exit out (`false`) or take it back (`true`) whatever its failures: for
    /// what a check of its configuration found.
    pub fn set_usable(&self, usable: bool) {
        self.unusable.store(!usable, Ordering::Relaxed);
    }

    pub fn success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.has_unclear.load(Ordering::Relaxed) {
            self.has_unclear.store(false, Ordering::Relaxed);
            *self.unclear.lock() = Unclear::default();
        }
    }

    /// Count a failure that may be the target's or the exit's: the exit is benched only
    /// when `bench_after` different targets of at least two different accounts failed
    /// through it since its last success. Returns true when this failure benched it.
    pub fn unclear_failure(
        &self,
        target: u64,
        tenant: u64,
        bench_after: u32,
        bench_for: Duration,
        now: Instant,
    ) -> bool {
        let mut guard = self.unclear.lock();
        let u = &mut *guard;
        self.has_unclear.store(true, Ordering::Relaxed);
        for (set, v) in [(&mut u.targets, target), (&mut u.tenants, tenant)] {
            if !set.contains(&v) {
                if set.len() >= UNCLEAR_KEPT {
                    set.remove(0);
                }
                set.push(v);
            }
        }
        if u.targets.len() >= bench_after as usize && u.tenants.len() >= 2 {
            *u = Unclear::default();
            let until = epoch_ms(now) + bench_for.as_millis() as u64;
            self.benched_until_ms.store(until.max(1), Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Count a failure; returns true when this failure benched the exit.
    pub fn failure(&self, bench_after: u32, bench_for: Duration, now: Instant) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= bench_after {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = epoch_ms(now) + bench_for.as_millis() as u64;
            self.benched_until_ms.store(until.max(1), Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_benches_and_recovers() {
        let h = Health::default();
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        assert!(!h.failure(3, cool, t0));
        assert!(!h.failure(3, cool, t0));
        h.success();
        assert!(!h.failure(3, cool, t0));
        assert!(!h.failure(3, cool, t0));
        assert!(h.failure(3, cool, t0));
        assert!(h.is_benched(t0 + Duration::from_secs(29)));
        assert!(!h.is_benched(t0 + Duration::from_secs(31)));
    }
}

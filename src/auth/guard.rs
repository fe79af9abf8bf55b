//! Password-guessing defence that does not lock out a NAT'd farm.
//!
//! Farms sit behind one address, so one worker with a stale password must not take down the
//! correctly configured workers beside it. The guard therefore tracks, per source address,
//! the *credentials* that failed (a keyed 64-bit fingerprint of user and password, never
//! the password):
//!
//! - a credential that already failed from this address is refused at once, without a
//!   check: a stale worker retrying costs nothing and slows no one;
//! - `auth_failures` *different* failed credentials within `auth_window` slow the address
//!   for `auth_block`: each of its password checks then waits for a slot, one per
//!   `auth_delay` (60 checks a minute per address with the defaults), so guessing stays
//!   slow, and a correct password from that address is still checked and served, at most
//!   [`MAX_WAIT`] late;
//! - other addresses are never affected.
//!
//! Shared by all cores; touched once per authentication attempt, never per byte.

use ahash::{AHashMap, RandomState};
use parking_lot::Mutex;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Addresses tracked per shard before stale entries are swept.
const MAX_PER_SHARD: usize = 8192;
/// Failed credentials remembered per address.
const KNOWN_BAD: usize = 64;
/// Longest a check from a slowed address waits for its slot; beyond, it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Entry {
    window_start: Instant,
    /// Different credentials that failed in the current window.
    distinct: u32,
    /// Fingerprints of credentials that failed (the most recent [`KNOWN_BAD`]), and when.
    bad: Vec<(u64, Instant)>,
    slowed_until: Option<Instant>,
    /// The next free check slot while slowed.
    next_slot: Instant,
}

/// Thresholds, from `[security]`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub failures: u32,
    pub window: Duration,
    pub block: Duration,
    /// While slowed: one password check per this interval.
    pub delay: Duration,
}

/// What to do with one authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Check the password now.
    Check,
    /// Check it after this wait (the address is slowed).
    After(Duration),
    /// This credential already failed from this address: refuse without a check.
    KnownBad,
    /// Slowed, and no check slot within [`MAX_WAIT`]: refuse without a check.
    Busy,
}

pub struct AuthGuard {
    hasher: RandomState,
    shards: Vec<Mutex<AHashMap<IpAddr, Entry>>>,
}

impl Default for AuthGuard {
    fn default() -> Self {
        AuthGuard {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(AHashMap::new())).collect(),
        }
    }
}

impl AuthGuard {
    fn shard(&self, ip: &IpAddr) -> &Mutex<AHashMap<IpAddr, Entry>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// The keyed fingerprint of a credential on one network under one configuration
    /// `generation` (the key is per process and never leaves it): the same credential may be
    /// good on another listener's network, and after a reload a credential that failed
    /// before (an account not yet added, a password not yet changed) is checked again.
    pub fn fingerprint(
        &self,
        user: &[u8],
        password: &[u8],
        network: usize,
        generation: usize,
    ) -> u64 {
        self.hasher.hash_one((user, password, network, generation))
    }

    /// Whether `ip` is slowed at `now`.
    pub fn is_slowed(&self, ip: IpAddr, now: Instant) -> bool {
        self.shard(&ip)
            .lock()
            .get(&ip)
            .and_then(|e| e.slowed_until)
            .is_some_and(|until| until > now)
    }

    /// Decide an attempt of credential `fp` from `ip`; a check slot is taken when it says
    /// [`Admit::After`].
    pub fn admit(&self, ip: IpAddr, fp: u64, p: &Policy, now: Instant) -> Admit {
        let mut shard = self.shard(&ip).lock();
        let Some(e) = shard.get_mut(&ip) else {
            return Admit::Check;
        };
        let memory = p.window.max(p.block);
        if e.bad
            .iter()
            .any(|&(f, at)| f == fp && now.duration_since(at) < memory)
        {
            return Admit::KnownBad;
        }
        if e.slowed_until.is_none_or(|u| u <= now) {
            return Admit::Check;
        }
        let slot = e.next_slot.max(now);
        let wait = slot - now;
        if wait > MAX_WAIT {
            return Admit::Busy;
        }
        e.next_slot = slot + p.delay;
        if wait.is_zero() {
            Admit::Check
        } else {
            Admit::After(wait)
        }
    }

    /// Count a failed check of credential `fp`; true when this failure slowed the address.
    pub fn failure(&self, ip: IpAddr, fp: u64, p: &Policy, now: Instant) -> bool {
        let mut shard = self.shard(&ip).lock();
        if shard.len() >= MAX_PER_SHARD {
            let memory = p.window.max(p.block);
            shard.retain(|_, e| {
                e.slowed_until.is_some_and(|u| u > now)
                    || now.duration_since(e.window_start) < memory
            });
        }
        let e = shard.entry(ip).or_insert(Entry {
            window_start: now,
            distinct: 0,
            bad: Vec::new(),
            slowed_until: None,
            next_slot: now,
        });
        if now.duration_since(e.window_start) >= p.window {
            e.distinct = 0;
            e.window_start = now;
        }
        if let Some(b) = e.bad.iter_mut().find(|(f, _)| *f == fp) {
            b.1 = now;
            return false;
        }
        if e.bad.len() >= KNOWN_BAD {
            e.bad.remove(0);
        }
        e.bad.push((fp, now));
        e.distinct += 1;
        if e.distinct >= p.failures && e.slowed_until.is_none_or(|u| u <= now) {
            e.slowed_until = Some(now + p.block);
            e.next_slot = now;
            e.distinct = 0;
            e.window_start = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            failures: 3,
            window: Duration::from_secs(60),
            block: Duration::from_secs(300),
            delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn repeated_stale_credentials_never_slow_the_address() {
        let g = AuthGuard::default();
        let p = policy();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let stale = g.fingerprint(b"alice", b"old", 0, 0);
        let t0 = Instant::now();
        assert_eq!(g.admit(ip, stale, &p, t0), Admit::Check);
        assert!(!g.failure(ip, stale, &p, t0));
        for _ in 0..60 {
            assert_eq!(g.admit(ip, stale, &p, t0), Admit::KnownBad);
        }
        let good = g.fingerprint(b"alice", b"right", 0, 0);
        assert_eq!(g.admit(ip, good, &p, t0), Admit::Check);
        assert!(!g.is_slowed(ip, t0));
    }

    #[test]
    fn distinct_guesses_slow_the_address_to_one_check_per_delay() {
        let g = AuthGuard::default();
        let p = policy();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        // Outside the window a count starts again.
        assert!(!g.failure(ip, 1, &p, t0));
        assert!(!g.failure(ip, 2, &p, t0 + Duration::from_secs(61)));
        assert!(!g.failure(ip, 3, &p, t0 + Duration::from_secs(62)));
        let t = t0 + Duration::from_secs(63);
        assert!(g.failure(ip, 4, &p, t));
        assert!(g.is_slowed(ip, t));
        assert!(!g.is_slowed(other, t));
        // One check per delay: now, then 1 s later, 2 s later, …, refused beyond MAX_WAIT.
        assert_eq!(g.admit(ip, 10, &p, t), Admit::Check);
        assert_eq!(g.admit(ip, 11, &p, t), Admit::After(Duration::from_secs(1)));
        assert_eq!(g.admit(ip, 12, &p, t), Admit::After(Duration::from_secs(2)));
        for _ in 0..3 {
            assert!(matches!(g.admit(ip, 13, &p, t), Admit::After(_)));
        }
        assert_eq!(g.admit(ip, 14, &p, t), Admit::Busy);
        assert_eq!(g.admit(other, 14, &p, t), Admit::Check);
        // The block ends.
        assert!(!g.is_slowed(ip, t + Duration::from_secs(301)));
        assert_eq!(
            g.admit(ip, 15, &p, t + Duration::from_secs(301)),
            Admit::Check
        );
    }
}

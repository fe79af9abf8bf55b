//! Password-guessing defence: a source address that fails authentication too often within
//! a window is blocked for a while, and its attempts during the block are answered late
//! (without checking the password). Shared by all cores; touched only on an authentication
//! attempt from a guarded address or a failure, never per byte.

use ahash::{AHashMap, RandomState};
use parking_lot::Mutex;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Addresses tracked per shard before stale entries are swept.
const MAX_PER_SHARD: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// Thresholds, from `[security]`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub failures: u32,
    pub window: Duration,
    pub block: Duration,
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

    /// Whether `ip` is blocked at `now`.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.shard(&ip)
            .lock()
            .get(&ip)
            .and_then(|e| e.blocked_until)
            .is_some_and(|until| until > now)
    }

    /// Count a failed attempt; true when this failure blocked the address.
    pub fn failure(&self, ip: IpAddr, p: &Policy, now: Instant) -> bool {
        let mut shard = self.shard(&ip).lock();
        if shard.len() >= MAX_PER_SHARD {
            shard.retain(|_, e| {
                e.blocked_until.is_some_and(|u| u > now)
                    || now.duration_since(e.window_start) < p.window
            });
        }
        let e = shard.entry(ip).or_insert(Entry {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.duration_since(e.window_start) >= p.window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= p.failures && e.blocked_until.is_none_or(|u| u <= now) {
            e.blocked_until = Some(now + p.block);
            e.failures = 0;
            e.window_start = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_threshold_within_window_then_expires() {
        let g = AuthGuard::default();
        let p = Policy {
            failures: 3,
            window: Duration::from_secs(60),
            block: Duration::from_secs(300),
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!g.failure(ip, &p, t0));
        assert!(!g.failure(ip, &p, t0));
        // A failure outside the window starts a new count.
        assert!(!g.failure(ip, &p, t0 + Duration::from_secs(61)));
        assert!(!g.failure(ip, &p, t0 + Duration::from_secs(62)));
        assert!(g.failure(ip, &p, t0 + Duration::from_secs(63)));
        assert!(g.is_blocked(ip, t0 + Duration::from_secs(64)));
        assert!(!g.is_blocked(other, t0 + Duration::from_secs(64)));
        assert!(!g.is_blocked(ip, t0 + Duration::from_secs(364)));
    }
}

//! Sticky sessions shared by every core: (account, targeting, session) → exit, for the
//! session's TTL. One sharded lookup per connection, never per byte. Time is passed in
//! by the caller, so expiry is testable without waiting minutes.

use ahash::RandomState;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
struct Entry {
    /// The exit's name: stable across reloads, unlike its index.
    exit: String,
    expires: Instant,
}

/// The table. Bounded: past `max` entries, expired ones are swept and then the entries
/// closest to expiry are evicted.
pub struct SessionTable {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Entry, RandomState>>>,
    max_per_shard: usize,
}

impl SessionTable {
    pub fn new(max: usize) -> SessionTable {
        SessionTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            max_per_shard: (max / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry, RandomState>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    /// The exit bound to `key`, if the binding is still live at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<String> {
        let shard = self.shard(key).lock();
        shard
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.exit.clone())
    }

    /// Bind `key` to `exit` for `ttl` unless a live binding exists; returns the binding
    /// that holds (so two cores racing on a new session agree on one exit).
    pub fn bind(&self, key: &str, exit: &str, ttl: Duration, now: Instant) -> String {
        let mut shard = self.shard(key).lock();
        if let Some(e) = shard.get(key).filter(|e| e.expires > now) {
            return e.exit.clone();
        }
        self.insert_bounded(&mut shard, key, exit, now + ttl, now);
        exit.to_owned()
    }

    /// Mirror a binding decided elsewhere (the cluster): `key` is on `exit` for `left` more.
    pub fn put(&self, key: &str, exit: &str, left: Duration, now: Instant) {
        let mut shard = self.shard(key).lock();
        self.insert_bounded(&mut shard, key, exit, now + left, now);
    }

    /// Move a session off a failed exit: rebind to `exit`, keeping the session's expiry,
    /// unless another connection already moved it.
    pub fn replace(
        &self,
        key: &str,
        failed: &str,
        exit: &str,
        ttl: Duration,
        now: Instant,
    ) -> String {
        let mut shard = self.shard(key).lock();
        match shard.get_mut(key) {
            Some(e) if e.expires > now && e.exit == failed => {
                e.exit = exit.to_owned();
                e.exit.clone()
            }
            Some(e) if e.expires > now => e.exit.clone(),
            _ => {
                self.insert_bounded(&mut shard, key, exit, now + ttl, now);
                exit.to_owned()
            }
        }
    }

    /// Insert within the shard's bound: sweep expired entries, then evict those closest to
    /// expiry.
    fn insert_bounded(
        &self,
        shard: &mut HashMap<String, Entry, RandomState>,
        key: &str,
        exit: &str,
        expires: Instant,
        now: Instant,
    ) {
        if !shard.contains_key(key) && shard.len() >= self.max_per_shard {
            shard.retain(|_, e| e.expires > now);
            while shard.len() >= self.max_per_shard {
                let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                shard.remove(&oldest);
            }
        }
        shard.insert(
            key.to_owned(),
            Entry {
                exit: exit.to_owned(),
                expires,
            },
        );
    }

    /// Drop expired entries in every shard.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for s in &self.shards {
            let mut s = s.lock();
            let before = s.len();
            s.retain(|_, e| e.expires > now);
            removed += before - s.len();
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_holds_for_its_ttl_then_expires() {
        let t = SessionTable::new(1000);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30 * 60);
        assert_eq!(t.get("alice|s1", t0), None);
        assert_eq!(t.bind("alice|s1", "e1", ttl, t0), "e1");
        // A racing core that picked another exit gets the existing binding.
        assert_eq!(
            t.bind("alice|s1", "e2", ttl, t0 + Duration::from_secs(1)),
            "e1"
        );
        assert_eq!(
            t.get("alice|s1", t0 + Duration::from_secs(29 * 60))
                .as_deref(),
            Some("e1")
        );
        // Fixed from the first binding: not extended by use.
        assert_eq!(t.get("alice|s1", t0 + ttl), None);
        assert_eq!(t.bind("alice|s1", "e3", ttl, t0 + ttl), "e3");
        assert_eq!(t.sweep(t0 + ttl * 3), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn replacement_keeps_expiry_and_is_idempotent() {
        let t = SessionTable::new(1000);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        t.bind("k", "bad", ttl, t0);
        assert_eq!(
            t.replace("k", "bad", "good", ttl, t0 + Duration::from_secs(10)),
            "good"
        );
        // A second core that also saw "bad" fail adopts the first replacement.
        assert_eq!(
            t.replace("k", "bad", "other", ttl, t0 + Duration::from_secs(11)),
            "good"
        );
        assert_eq!(
            t.get("k", t0 + Duration::from_secs(59)).as_deref(),
            Some("good")
        );
        assert_eq!(t.get("k", t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn bounded() {
        let t = SessionTable::new(SHARDS * 2);
        let t0 = Instant::now();
        for i in 0..10_000 {
            t.bind(&format!("k{i}"), "e", Duration::from_secs(60 + i), t0);
            // Replacing a session with no live binding inserts too, within the same bound.
            t.replace(&format!("r{i}"), "x", "e", Duration::from_secs(60 + i), t0);
        }
        assert!(t.len() <= SHARDS * 2, "{}", t.len());
    }
}

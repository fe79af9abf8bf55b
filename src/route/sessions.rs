//! Sticky sessions shared by every core: (account, network, targeting, session) → exit, for
//! the session's TTL. One sharded lookup per connection, never per byte. Time is passed in
//! by the caller, so expiry is testable without waiting minutes.
//!
//! Bounded per tenant: each account holds at most `per_account` sessions and, when the
//! whole table is full, a new session evicts its own account's oldest one. Only an account
//! that has none yet evicts another's (the largest account's oldest), so one account
//! creating sessions never moves another's while it has sessions of its own to give up.

use ahash::RandomState;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
const OWNER_SHARDS: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    /// The exit's name: stable across reloads, unlike its index.
    exit: String,
    expires: Instant,
}

/// An account's sessions in the order they were created (with their expiry, to tell a
/// record from a later binding of the same key).
type Owned = VecDeque<(String, Instant)>;

/// The table.
pub struct SessionTable {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Entry, RandomState>>>,
    /// Per account, its sessions oldest first; touched only when a session is created.
    owners: Vec<Mutex<HashMap<String, Owned, RandomState>>>,
    total: AtomicUsize,
    max: usize,
    per_account: usize,
}

/// The account a session key belongs to (keys start with `account|`).
fn account_of(key: &str) -> &str {
    key.split('|').next().unwrap_or(key)
}

impl SessionTable {
    /// At most `max` sessions in all, and `per_account` for any one account.
    pub fn new(max: usize, per_account: usize) -> SessionTable {
        SessionTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            owners: (0..OWNER_SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            total: AtomicUsize::new(0),
            max: max.max(1),
            per_account: per_account.clamp(1, max.max(1)),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry, RandomState>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    fn owners_of(&self, account: &str) -> &Mutex<HashMap<String, Owned, RandomState>> {
        let i = (self.hasher.hash_one(account) as usize) % OWNER_SHARDS;
        &self.owners[i]
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
        if let Some(e) = self.get(key, now) {
            return e;
        }
        self.insert(key, exit, now + ttl, now, false)
    }

    /// Mirror a binding decided elsewhere (the cluster): `key` is on `exit` for `left` more.
    pub fn put(&self, key: &str, exit: &str, left: Duration, now: Instant) {
        self.insert(key, exit, now + left, now, true);
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
        {
            let mut shard = self.shard(key).lock();
            match shard.get_mut(key) {
                Some(e) if e.expires > now && e.exit == failed => {
                    e.exit = exit.to_owned();
                    return e.exit.clone();
                }
                Some(e) if e.expires > now => return e.exit.clone(),
                _ => {}
            }
        }
        self.insert(key, exit, now + ttl, now, false)
    }

    /// Insert a new binding within the bounds (`overwrite`: replace a live one too).
    fn insert(
        &self,
        key: &str,
        exit: &str,
        expires: Instant,
        now: Instant,
        overwrite: bool,
    ) -> String {
        // A live binding already counts in its account's share: it is kept, or (a mirror
        // of the cluster's binding) moved to `exit` in place, expiry unchanged.
        {
            let mut shard = self.shard(key).lock();
            if let Some(e) = shard.get_mut(key).filter(|e| e.expires > now) {
                if overwrite {
                    exit.clone_into(&mut e.exit);
                }
                return e.exit.clone();
            }
        }
        let victims = self.make_room(key, expires, now);
        for (k, at) in victims {
            self.evict(&k, at);
        }
        let mut shard = self.shard(key).lock();
        match shard.get_mut(key) {
            Some(e) if e.expires > now && !overwrite => e.exit.clone(),
            Some(e) => {
                e.exit = exit.to_owned();
                e.expires = expires;
                exit.to_owned()
            }
            None => {
                shard.insert(
                    key.to_owned(),
                    Entry {
                        exit: exit.to_owned(),
                        expires,
                    },
                );
                self.total.fetch_add(1, Ordering::Relaxed);
                exit.to_owned()
            }
        }
    }

    /// Record `key` as its account's newest session and pick the sessions it displaces:
    /// the account's own oldest past its share, or when the table is full; only an
    /// account with none of its own takes the largest account's oldest.
    fn make_room(&self, key: &str, expires: Instant, now: Instant) -> Vec<(String, Instant)> {
        let account = account_of(key);
        let mut victims = Vec::new();
        let full = self.total.load(Ordering::Relaxed) >= self.max;
        let own_empty = {
            let mut owners = self.owners_of(account).lock();
            let owned = owners.entry(account.to_owned()).or_default();
            while owned.front().is_some_and(|(_, at)| *at <= now) {
                owned.pop_front();
            }
            while owned.len() >= self.per_account
                || (full && victims.is_empty() && !owned.is_empty())
            {
                match owned.pop_front() {
                    Some(v) => victims.push(v),
                    None => break,
                }
            }
            let own_empty = victims.is_empty() && owned.is_empty();
            owned.push_back((key.to_owned(), expires));
            own_empty
        };
        if full && own_empty {
            if let Some(v) = self.largest_accounts_oldest(account) {
                victims.push(v);
            }
        }
        victims
    }

    /// The oldest session of the account with the most (other than `except`).
    fn largest_accounts_oldest(&self, except: &str) -> Option<(String, Instant)> {
        let mut best: Option<(usize, usize, String)> = None;
        for (i, o) in self.owners.iter().enumerate() {
            for (acc, owned) in o.lock().iter() {
                if acc != except && best.as_ref().is_none_or(|b| owned.len() > b.0) {
                    best = Some((owned.len(), i, acc.clone()));
                }
            }
        }
        let (_, i, acc) = best?;
        self.owners[i].lock().get_mut(&acc)?.pop_front()
    }

    /// Remove `key` if it is still the binding recorded with expiry `at`.
    fn evict(&self, key: &str, at: Instant) {
        let mut shard = self.shard(key).lock();
        if shard.get(key).is_some_and(|e| e.expires == at) {
            shard.remove(key);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
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
        self.total.fetch_sub(removed, Ordering::Relaxed);
        for o in &self.owners {
            o.lock().retain(|_, owned| {
                owned.retain(|(_, at)| *at > now);
                !owned.is_empty()
            });
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget `account`'s sticky session `session` (on every network and targeting it was
    /// used with): its next connection gets a fresh exit. Returns the bindings removed.
    pub fn release(&self, account: &str, session: &str) -> usize {
        let keys: Vec<String> = {
            let mut owners = self.owners_of(account).lock();
            let Some(owned) = owners.get_mut(account) else {
                return 0;
            };
            let mut keys = Vec::new();
            owned.retain(|(k, _)| {
                let hit = k.rsplit_once('|').is_some_and(|(_, s)| s == session);
                if hit {
                    keys.push(k.clone());
                }
                !hit
            });
            keys
        };
        let mut removed = 0;
        for k in keys {
            if self.shard(&k).lock().remove(&k).is_some() {
                self.total.fetch_sub(1, Ordering::Relaxed);
                removed += 1;
            }
        }
        removed
    }

    /// Live sessions of `account` (at the last sweep or creation).
    pub fn count_for(&self, account: &str) -> usize {
        self.owners_of(account)
            .lock()
            .get(account)
            .map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_holds_for_its_ttl_then_expires() {
        let t = SessionTable::new(1000, 1000);
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
        let t = SessionTable::new(1000, 1000);
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
        let t = SessionTable::new(128, 128);
        let t0 = Instant::now();
        for i in 0..10_000 {
            t.bind(
                &format!("a{}|k{i}", i % 7),
                "e",
                Duration::from_secs(60 + i),
                t0,
            );
            // Replacing a session with no live binding inserts too, within the same bound.
            t.replace(
                &format!("a{}|r{i}", i % 5),
                "x",
                "e",
                Duration::from_secs(60 + i),
                t0,
            );
        }
        assert!(t.len() <= 128, "{}", t.len());
    }

    #[test]
    fn one_account_never_evicts_anothers_sessions() {
        let t = SessionTable::new(640, 640);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        for i in 0..16 {
            t.bind(&format!("victim|n|||||v{i}"), "e1", ttl, t0);
        }
        for i in 0..10_000 {
            t.bind(&format!("greedy|n|||||g{i}"), "e2", ttl, t0);
        }
        assert!(t.len() <= 640);
        for i in 0..16 {
            assert_eq!(
                t.get(&format!("victim|n|||||v{i}"), t0).as_deref(),
                Some("e1"),
                "v{i}"
            );
        }
        // The greedy account kept its newest sessions.
        assert_eq!(t.get("greedy|n|||||g9999", t0).as_deref(), Some("e2"));
        assert_eq!(t.get("greedy|n|||||g0", t0), None);
        // A per-account share applies before the table is full.
        let t = SessionTable::new(1000, 10);
        for i in 0..50 {
            t.bind(&format!("a|s{i}"), "e", ttl, t0);
        }
        assert_eq!(t.count_for("a"), 10);
        assert_eq!(t.len(), 10);
        // A new account at a full table takes from the largest.
        let t = SessionTable::new(20, 20);
        for i in 0..20 {
            t.bind(&format!("big|s{i}"), "e", ttl, t0);
        }
        t.bind("small|s0", "e", ttl, t0);
        assert_eq!(t.get("small|s0", t0).as_deref(), Some("e"));
        assert_eq!(t.len(), 20);
    }

    #[test]
    fn mirroring_a_live_binding_adds_no_record() {
        // A cluster node mirrors the binding on every connection of the session.
        let t = SessionTable::new(1000, 10);
        let t0 = Instant::now();
        let left = Duration::from_secs(600);
        for i in 0..10_000 {
            t.put("a|s", if i % 2 == 0 { "e1" } else { "e2" }, left, t0);
        }
        assert_eq!(t.count_for("a"), 1);
        assert_eq!(t.get("a|s", t0).as_deref(), Some("e2"));
        for i in 0..9 {
            t.bind(&format!("a|other{i}"), "e", left, t0);
        }
        // The account is at its share of 10; the mirrored session is still there.
        assert_eq!(t.get("a|s", t0).as_deref(), Some("e2"));
        assert_eq!(t.len(), 10);
    }
}

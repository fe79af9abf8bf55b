//! Routing: which exits may carry a connection (network + targeting), which one does
//! (rotation, sticky sessions), and which are benched after repeated failures.

pub mod geo;
pub mod sessions;

use crate::auth::Identity;
use crate::config::{Exit, Snapshot};
use crate::error::ProxyError;
use ahash::AHashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Exits by tag combination: for every exit, each subset of its (country, state, city)
/// tags is a key, so any targeting resolves with one lookup.
#[derive(Debug, Default)]
pub struct ExitIndex {
    lists: AHashMap<TagKey, usize>,
    members: Vec<Vec<usize>>,
    /// Cities with exits, per (network, country, state): for `city-ran`.
    cities: AHashMap<(usize, String, String), Vec<String>>,
}

type TagKey = (usize, Option<String>, Option<String>, Option<String>);

impl ExitIndex {
    pub fn build(exits: &[Exit]) -> ExitIndex {
        let mut ix = ExitIndex::default();
        for (i, e) in exits.iter().enumerate() {
            for mask in 0u8..8 {
                let pick = |bit: u8, v: &Option<String>| -> Option<Option<String>> {
                    if mask & bit == 0 {
                        Some(None)
                    } else {
                        v.as_ref().map(|s| Some(s.clone()))
                    }
                };
                let (Some(c), Some(s), Some(ci)) =
                    (pick(1, &e.country), pick(2, &e.state), pick(4, &e.city))
                else {
                    continue;
                };
                let key = (e.network, c, s, ci);
                let next = ix.members.len();
                let id = *ix.lists.entry(key).or_insert(next);
                if id == next {
                    ix.members.push(Vec::new());
                }
                ix.members[id].push(i);
            }
            if let (Some(c), Some(s), Some(ci)) = (&e.country, &e.state, &e.city) {
                let list = ix
                    .cities
                    .entry((e.network, c.clone(), s.clone()))
                    .or_default();
                if !list.contains(ci) {
                    list.push(ci.clone());
                }
            }
        }
        ix
    }

    fn list(&self, key: &TagKey) -> Option<usize> {
        self.lists.get(key).copied()
    }

    /// Exits of a list (by id from [`Route::list`]).
    pub fn members(&self, list: usize) -> &[usize] {
        self.members.get(list).map_or(&[], |v| v.as_slice())
    }

    pub fn lists(&self) -> usize {
        self.members.len()
    }
}

/// Per-exit health shared by all cores and carried across reloads (by exit name).
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Benched until this many ms after [`epoch`]; 0 = not benched.
    benched_until_ms: AtomicU64,
    /// Unclear failures since the last success ([`Health::unclear_failure`]).
    has_unclear: std::sync::atomic::AtomicBool,
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

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

impl Health {
    pub fn is_benched(&self, now: Instant) -> bool {
        self.benched_until_ms.load(Ordering::Relaxed) > ms_since_epoch(now)
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
            let until = ms_since_epoch(now) + bench_for.as_millis() as u64;
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
            let until = ms_since_epoch(now) + bench_for.as_millis() as u64;
            self.benched_until_ms.store(until.max(1), Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Where a connection may go: a list of candidate exits, and its stickiness.
#[derive(Debug, Clone)]
pub struct Route {
    /// Id of the candidate list in the snapshot's [`ExitIndex`].
    pub list: usize,
    pub sticky: Option<Sticky>,
    /// The account, hashed: exit health tells one tenant's failures from many.
    pub tenant: u64,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    /// Account, network, targeting and session: the username without its ttl.
    pub key: String,
    pub ttl: Duration,
}

fn lower(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.to_ascii_lowercase())
}

/// Resolve an identity's targeting and session into a [`Route`] (454, 455 or 503 when it
/// cannot be served).
pub fn resolve(snap: &Snapshot, ident: &Identity) -> Result<Route, ProxyError> {
    let net = ident.network;
    let country = lower(&ident.country);
    let state = lower(&ident.state);
    let mut city = lower(&ident.city);
    if let Some(c) = &country {
        if !geo::is_country(c) {
            return Err(ProxyError::InvalidCountry);
        }
    }
    if let Some(s) = &state {
        match &country {
            Some(c) if geo::is_state(c, s) => {}
            _ => return Err(ProxyError::InvalidState),
        }
    }
    if city.as_deref() == Some("ran") {
        let (Some(c), Some(s)) = (&country, &state) else {
            return Err(ProxyError::InvalidCity);
        };
        let cities = snap
            .index
            .cities
            .get(&(net, c.clone(), s.clone()))
            .filter(|v| !v.is_empty())
            .ok_or(ProxyError::InvalidCity)?;
        city = Some(cities[fastrand::usize(..cities.len())].clone());
    }
    let key = (net, country.clone(), state.clone(), city.clone());
    let list = match snap.index.list(&key) {
        Some(l) => l,
        None if city.is_some() => return Err(ProxyError::InvalidCity),
        None => return Err(ProxyError::Unavailable("no exit serves this targeting")),
    };
    let ttl = ident.ttl_minutes(snap)?;
    let sticky = ttl.map(|minutes| Sticky {
        // The network by name: a reload that reorders [[network]], or another node whose
        // file lists them in another order, finds the same session.
        key: format!(
            "{}|{}|{}|{}|{}|{}",
            ident.account,
            snap.networks.get(net).map_or("", |n| n.name.as_str()),
            country.as_deref().unwrap_or(""),
            state.as_deref().unwrap_or(""),
            // A city-ran session sticks to the exit it got, not to the city drawn.
            lower(&ident.city).as_deref().unwrap_or(""),
            ident.session.as_deref().unwrap_or("")
        ),
        ttl: Duration::from_secs(u64::from(minutes) * 60),
    });
    let tenant = {
        use std::hash::{Hash, Hasher};
        let mut h = ahash::AHasher::default();
        ident.account.hash(&mut h);
        h.finish()
    };
    Ok(Route {
        list,
        sticky,
        tenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CFG: &str = r#"
[[listener]]
listen = "127.0.0.1:0"
network = "res"
[[network]]
name = "res"
targeting = true
[[network]]
name = "dc"
[[exit]]
name = "la"
network = "res"
kind = "direct"
country = "us"
state = "ca"
city = "losangeles"
[[exit]]
name = "sf"
network = "res"
kind = "direct"
country = "US"
state = "CA"
city = "sanfrancisco"
[[exit]]
name = "nyc"
network = "res"
kind = "direct"
country = "us"
state = "ny"
city = "newyork"
[[exit]]
name = "plain"
network = "res"
kind = "direct"
[[exit]]
name = "dc1"
network = "dc"
kind = "direct"
[[plan]]
name = "p"
bandwidth = "1GiB"
threads = 5
[[user]]
name = "alice"
password = "pw"
plan = "p"
networks = ["res", "dc"]
"#;

    /// (country, state, city) as a username would give them.
    type Geo<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

    fn ident(country: Option<&str>, state: Option<&str>, city: Option<&str>) -> Identity {
        Identity {
            account: "alice".into(),
            counters: Default::default(),
            network: 0,
            country: country.map(Into::into),
            state: state.map(Into::into),
            city: city.map(Into::into),
            session: None,
            ttl: None,
        }
    }

    fn names(snap: &Snapshot, r: &Route) -> Vec<String> {
        let mut v: Vec<String> = snap
            .index
            .members(r.list)
            .iter()
            .map(|&i| snap.exits[i].name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn targeting_selects_tagged_exits() {
        let snap = parse(CFG).unwrap();
        let rows: &[(Geo, &[&str])] = &[
            ((None, None, None), &["la", "nyc", "plain", "sf"]),
            ((Some("us"), None, None), &["la", "nyc", "sf"]),
            ((Some("US"), Some("Ca"), None), &["la", "sf"]),
            ((Some("us"), Some("ca"), Some("losangeles")), &["la"]),
            ((Some("us"), None, Some("newyork")), &["nyc"]),
        ];
        for ((c, s, ci), want) in rows {
            let r = resolve(&snap, &ident(*c, *s, *ci)).unwrap();
            assert_eq!(names(&snap, &r), *want, "{c:?} {s:?} {ci:?}");
        }
        for _ in 0..20 {
            let r = resolve(&snap, &ident(Some("us"), Some("ca"), Some("ran"))).unwrap();
            let n = names(&snap, &r);
            assert!(n == ["la"] || n == ["sf"], "{n:?}");
        }
    }

    #[test]
    fn targeting_errors() {
        let snap = parse(CFG).unwrap();
        use ProxyError::*;
        let none = Unavailable("no exit serves this targeting");
        let rows: &[(Geo, ProxyError)] = &[
            ((Some("zz"), None, None), InvalidCountry),
            ((Some("usa"), None, None), InvalidCountry),
            ((Some("us"), Some("zz"), None), InvalidState),
            ((None, Some("ca"), None), InvalidState),
            ((Some("us"), Some("ca"), Some("paris")), InvalidCity),
            ((Some("us"), None, Some("ran")), InvalidCity),
            ((Some("us"), Some("tx"), Some("ran")), InvalidCity),
            ((Some("fr"), None, None), none.clone()),
            ((Some("us"), Some("tx"), None), none),
        ];
        for ((c, s, ci), want) in rows {
            assert_eq!(
                resolve(&snap, &ident(*c, *s, *ci)).unwrap_err(),
                *want,
                "{c:?} {s:?} {ci:?}"
            );
        }
    }

    #[test]
    fn sticky_key_and_ttl() {
        let snap = parse(CFG).unwrap();
        let mut i = ident(Some("us"), None, None);
        assert!(resolve(&snap, &i).unwrap().sticky.is_none());
        i.session = Some("abc".into());
        let s = resolve(&snap, &i).unwrap().sticky.unwrap();
        assert_eq!(s.ttl, Duration::from_secs(600)); // ttl_default = 10
        assert_eq!(s.key, "alice|res|us|||abc");
        i.session = None;
        i.ttl = Some("30".into());
        let s = resolve(&snap, &i).unwrap().sticky.unwrap();
        assert_eq!(
            (s.key.as_str(), s.ttl),
            ("alice|res|us|||", Duration::from_secs(1800))
        );
        i.ttl = Some("0".into());
        assert_eq!(resolve(&snap, &i).unwrap_err(), ProxyError::InvalidTtl);
    }

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

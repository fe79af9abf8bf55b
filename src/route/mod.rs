//! Routing: which exits may carry a connection (network + targeting: [`resolve`]), which
//! one does ([`choose`]: rotation, sticky sessions, benching), and each exit's [`health`].
//! The exit module only connects through the exit chosen here.

pub mod choose;
pub mod health;
pub mod index;
pub mod sessions;

pub use choose::{Choice, Rotation, Sessions, SharedSessions};
pub use health::{Exits, Health};
pub use index::ExitIndex;

use crate::auth::Identity;
use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::geo;
use std::time::Duration;

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
pub fn resolve(snap: &Snapshot, index: &ExitIndex, ident: &Identity) -> Result<Route, ProxyError> {
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
        let cities = index
            .cities
            .get(&(net, c.clone(), s.clone()))
            .filter(|v| !v.is_empty())
            .ok_or(ProxyError::InvalidCity)?;
        city = Some(cities[fastrand::usize(..cities.len())].clone());
    }
    let key = (net, country.clone(), state.clone(), city.clone());
    let list = match index.list(&key) {
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
            plan: std::sync::Arc::new(crate::config::Plan {
                name: "p".into(),
                bandwidth: 1,
                threads: 1,
                speed: 0,
                period: crate::config::Period::None,
            }),
            network: 0,
            country: country.map(Into::into),
            state: state.map(Into::into),
            city: city.map(Into::into),
            session: None,
            ttl: None,
        }
    }

    fn names(snap: &Snapshot, r: &Route) -> Vec<String> {
        let mut v: Vec<String> = ExitIndex::build(&snap.exits)
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
            let r = resolve(&snap, &ExitIndex::build(&snap.exits), &ident(*c, *s, *ci)).unwrap();
            assert_eq!(names(&snap, &r), *want, "{c:?} {s:?} {ci:?}");
        }
        for _ in 0..20 {
            let r = resolve(
                &snap,
                &ExitIndex::build(&snap.exits),
                &ident(Some("us"), Some("ca"), Some("ran")),
            )
            .unwrap();
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
                resolve(&snap, &ExitIndex::build(&snap.exits), &ident(*c, *s, *ci)).unwrap_err(),
                *want,
                "{c:?} {s:?} {ci:?}"
            );
        }
    }

    #[test]
    fn sticky_key_and_ttl() {
        let snap = parse(CFG).unwrap();
        let mut i = ident(Some("us"), None, None);
        assert!(resolve(&snap, &ExitIndex::build(&snap.exits), &i)
            .unwrap()
            .sticky
            .is_none());
        i.session = Some("abc".into());
        let s = resolve(&snap, &ExitIndex::build(&snap.exits), &i)
            .unwrap()
            .sticky
            .unwrap();
        assert_eq!(s.ttl, Duration::from_secs(600)); // ttl_default = 10
        assert_eq!(s.key, "alice|res|us|||abc");
        i.session = None;
        i.ttl = Some("30".into());
        let s = resolve(&snap, &ExitIndex::build(&snap.exits), &i)
            .unwrap()
            .sticky
            .unwrap();
        assert_eq!(
            (s.key.as_str(), s.ttl),
            ("alice|res|us|||", Duration::from_secs(1800))
        );
        i.ttl = Some("0".into());
        assert_eq!(
            resolve(&snap, &ExitIndex::build(&snap.exits), &i).unwrap_err(),
            ProxyError::InvalidTtl
        );
    }
}

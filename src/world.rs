//! The published world: one validated configuration together with the live state that
//! belongs to it, the accounts' usage (kept by the plan ledger) and the exits' health and
//! routing index (kept by route). Published through `ArcSwap`; a connection loads it once
//! and serves its whole life from it, so every index it reads (account id, exit, list) comes
//! from the same world.
//!
//! A reload prepares the next world from the new file and the current one (usage and exit
//! health carry over by name), then publishes it: nothing is patched in afterwards.

use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::plan::ledger::AccountState;
use crate::plan::Ledger;
use crate::route::Exits;
use std::sync::Arc;

#[derive(Debug)]
pub struct World {
    pub config: Snapshot,
    /// Exits' health and the index by targeting.
    pub exits: Exits,
    /// Each account's live usage, at its [`crate::config::Account::id`].
    usage: Vec<Option<Arc<AccountState>>>,
}

impl World {
    /// The world `config` describes, continuing `prev` (its usage and exit health).
    pub fn prepare(config: Snapshot, ledger: &Ledger, prev: Option<&World>) -> World {
        let usage = ledger.usage_for(&config);
        let exits = Exits::build(&config, prev.map(|w| (&w.config, &w.exits)));
        World {
            config,
            exits,
            usage,
        }
    }

    /// A world with the given usage per account id and fresh exit health (harnesses and
    /// tests: no ledger behind it).
    pub fn with_usage(config: Snapshot, usage: Vec<Option<Arc<AccountState>>>) -> World {
        let exits = Exits::build(&config, None);
        World {
            config,
            exits,
            usage,
        }
    }

    /// Account `id`'s usage (an id from this world's config).
    pub fn usage(&self, id: usize) -> Result<&Arc<AccountState>, ProxyError> {
        self.usage
            .get(id)
            .and_then(Option::as_ref)
            .ok_or(ProxyError::Unavailable("account not loaded"))
    }

    /// The usage of the account named `name`.
    pub fn usage_of(&self, name: &str) -> Option<&Arc<AccountState>> {
        let id = self.config.accounts.get(name)?.id;
        self.usage.get(id)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::plan::store::SqliteStore;
    use std::time::{Duration, Instant};

    fn file(users: &[&str], exits: &[&str]) -> Snapshot {
        let mut t = String::from(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nnetwork = \"n\"\n[[network]]\nname = \"n\"\n\
             [[plan]]\nname = \"p\"\nbandwidth = \"1GiB\"\nthreads = 4\n",
        );
        for e in exits {
            t += &format!("[[exit]]\nname = \"{e}\"\nnetwork = \"n\"\nkind = \"direct\"\n");
        }
        for u in users {
            t += &format!(
                "[[user]]\nname = \"{u}\"\npassword = \"x\"\nplan = \"p\"\nnetworks = [\"n\"]\n"
            );
        }
        parse(&t).unwrap()
    }

    /// A reload that reorders accounts and exits keeps each account's usage and each exit's
    /// health with its name, and every id resolves in the world it came from.
    #[test]
    fn a_reload_carries_usage_and_health_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(Box::new(SqliteStore::open(dir.path()).unwrap())).unwrap();
        let first = World::prepare(file(&["a", "b"], &["x", "y"]), &ledger, None);
        first.usage_of("b").unwrap().settle(777, 0);
        let y = first.config.exit_by_name["y"];
        let t0 = Instant::now();
        assert!(first
            .exits
            .health(y)
            .failure(1, Duration::from_secs(60), t0));

        let next = World::prepare(file(&["c", "b", "a"], &["y", "x"]), &ledger, Some(&first));
        assert_eq!(next.usage_of("b").unwrap().used(), 777);
        assert_eq!(next.usage_of("a").unwrap().used(), 0);
        assert!(Arc::ptr_eq(
            next.usage_of("b").unwrap(),
            first.usage_of("b").unwrap()
        ));
        for (name, acc) in &next.config.accounts {
            assert_eq!(&next.usage(acc.id).unwrap().name, name);
        }
        let y2 = next.config.exit_by_name["y"];
        assert_ne!(y, y2, "the reload moved exit y");
        assert!(next.exits.is_benched(y2, t0));
        assert!(!next.exits.is_benched(next.config.exit_by_name["x"], t0));
        assert!(next.usage(99).is_err());
    }
}

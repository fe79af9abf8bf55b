//! The published world: one validated configuration together with the live state that
//! belongs to it, the accounts' usage (kept by the plan ledger) and the exits' health and
//! routing index (kept by route). Published through `ArcSwap`; a connection loads it once
//! and serves its whole life from it, so every index it reads (account id, exit, list) comes
//! from the same world.
//!
//! A reload prepares the next world from the new file and the current one (usage and exit
//! health carry over by name), then publishes it: nothing is patched in afterwards.

use crate::accounts::store::{AccountSource, Change};
use crate::accounts::{self, Directory};
use crate::config::{Plan, Snapshot};
use crate::plan::Ledger;
use crate::route::Exits;
use std::sync::Arc;

#[derive(Debug)]
pub struct World {
    pub config: Snapshot,
    /// Exits' health and the index by targeting.
    pub exits: Exits,
    /// Accounts and plans of the API: one directory for every world (a reload keeps it).
    pub accounts: Arc<Directory>,
    /// The live usage of the accounts in use (attached on first use, by name).
    pub ledger: Arc<Ledger>,
}

impl World {
    /// The world `config` describes, continuing `prev` (its exit health); the accounts in
    /// use get their plans as `config` defines them from their next admission.
    pub fn prepare(
        config: Snapshot,
        ledger: &Arc<Ledger>,
        accounts: &Arc<Directory>,
        prev: Option<&World>,
    ) -> World {
        let exits = Exits::build(&config, prev.map(|w| (&w.config, &w.exits)));
        let world = World {
            config,
            exits,
            accounts: accounts.clone(),
            ledger: ledger.clone(),
        };
        world.reapply_plans();
        world
    }

    /// A world with its own in-memory ledger, an empty directory and fresh exit health
    /// (harnesses and tests).
    pub fn standalone(config: Snapshot) -> World {
        let exits = Exits::build(&config, None);
        World {
            config,
            exits,
            accounts: Arc::new(Directory::default()),
            ledger: Ledger::in_memory(),
        }
    }

    /// The plan account `name` is on in this world.
    pub fn plan_of(&self, name: &str) -> Option<Arc<Plan>> {
        crate::auth::plan_of(&self.config, &self.accounts, name)
    }

    /// Apply one change of the store (written by the API or `tollgate account …`): the
    /// account or plan is read again (gone: removed), a disconnect cuts the account's
    /// live connections on every core at its next tick, a release forgets a session.
    pub fn apply(
        &self,
        store: &mut dyn AccountSource,
        sessions: &crate::route::sessions::SessionTable,
        change: &Change,
    ) -> Result<(), String> {
        match change {
            Change::Account(name) => match store.get(name)? {
                Some(row) => {
                    let record = accounts::record_from(&self.accounts, row)?;
                    self.accounts.put(record);
                    if let (Some(state), Some(plan)) = (self.ledger.get(name), self.plan_of(name)) {
                        state.apply(&plan);
                    }
                }
                None => {
                    if self.accounts.remove(name).is_some() {
                        self.ledger.forget(name);
                    }
                }
            },
            Change::Plan(name) => {
                match store.get_plan(name)? {
                    Some(row) => {
                        self.accounts.put_plan(accounts::plan_from(&row)?);
                    }
                    None => {
                        self.accounts.remove_plan(name);
                    }
                }
                self.reapply_plans();
            }
            Change::Disconnect(name) => {
                self.ledger.disconnect(name);
            }
            Change::Release { account, session } => {
                sessions.release(account, session);
            }
            Change::Resync => {
                for gone in accounts::load(&self.accounts, store)? {
                    self.ledger.forget(&gone);
                }
                self.reapply_plans();
                tracing::info!(accounts = self.accounts.len(), "store accounts read again");
            }
        }
        Ok(())
    }

    /// Apply this world's plans to every account in use (after a reload, or a plan change
    /// through the API), so live connections' next leases follow them.
    pub fn reapply_plans(&self) {
        self.ledger.reapply(|name| self.plan_of(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::plan::store::SqliteStore;
    use std::time::{Duration, Instant};

    fn file(users: &[&str], exits: &[&str], threads: u32) -> Snapshot {
        let mut t = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nnetwork = \"n\"\n[[network]]\nname = \"n\"\n\
             [[plan]]\nname = \"p\"\nbandwidth = \"1GiB\"\nthreads = {threads}\n",
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
    /// health with its name, and applies the new plans to the accounts in use.
    #[test]
    fn a_reload_carries_usage_and_health_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(Box::new(SqliteStore::open(dir.path()).unwrap())).unwrap();
        let accounts = Arc::new(Directory::default());
        let first = World::prepare(file(&["a", "b"], &["x", "y"], 4), &ledger, &accounts, None);
        let b = ledger.attach("b", &first.plan_of("b").unwrap()).unwrap();
        b.settle(777, 0);
        let y = first.config.exit_by_name["y"];
        let t0 = Instant::now();
        assert!(first
            .exits
            .health(y)
            .failure(1, Duration::from_secs(60), t0));

        let next = World::prepare(
            file(&["c", "b", "a"], &["y", "x"], 9),
            &ledger,
            &accounts,
            Some(&first),
        );
        let b2 = ledger.attach("b", &next.plan_of("b").unwrap()).unwrap();
        assert!(Arc::ptr_eq(&b, &b2));
        assert_eq!(b2.used(), 777);
        assert_eq!(b.threads(), 9, "the new plan applies to the account in use");
        assert!(next.plan_of("nobody").is_none());
        let y2 = next.config.exit_by_name["y"];
        assert_ne!(y, y2, "the reload moved exit y");
        assert!(next.exits.is_benched(y2, t0));
        assert!(!next.exits.is_benched(next.config.exit_by_name["x"], t0));
    }
}

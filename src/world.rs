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
    /// Each account's live usage, by [`crate::config::Account::id`].
    usage: Vec<Arc<AccountState>>,
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
    pub fn with_usage(config: Snapshot, usage: Vec<Arc<AccountState>>) -> World {
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
            .ok_or(ProxyError::Unavailable("account not loaded"))
    }

    /// The usage of the account named `name`.
    pub fn usage_of(&self, name: &str) -> Option<&Arc<AccountState>> {
        let id = self.config.accounts.get(name)?.id;
        self.usage.get(id)
    }
}

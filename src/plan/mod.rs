//! Plans: concurrent-connection slots and bandwidth quotas, metered to the byte.
//!
//! - [`ledger`]: global per-account counters (a CAS per admission, a CAS per lease).
//! - [`shard`]: per-core leases and the per-connection [`shard::Charge`]; reads are capped at
//!   the lease, so the plan's bandwidth is never exceeded.
//! - [`store`]: durable usage (SQLite under `state_dir`) behind [`store::UsageBackend`].
//! - [`Ledger`]: the registry tying them together: resumes usage at start, applies operators'
//!   adjustments and writes usage on an interval and at shutdown.

pub mod ledger;
pub mod shard;
pub mod store;

use crate::config::{DownPolicy, Snapshot};
use crate::error::ProxyError;
use ahash::AHashMap;
use ledger::{AccountState, Adjustment, ThreadSlot};
pub use ledger::{Down, SharedPlan};
use parking_lot::Mutex;
use shard::{Charge, Shard};
use std::collections::HashMap;
use std::sync::Arc;
use store::{EndedPeriod, Stored, UsageBackend};

/// What admission hands a connection: its concurrency slot and its quota charge.
pub struct Admission {
    pub slot: ThreadSlot,
    pub charge: Charge,
}

/// Admit one proxied connection (or HTTP request) of `state`'s account on this core:
/// 452 when the bandwidth is used up, 453 when every thread is taken. In a cluster the
/// slot is also taken in Redis; while Redis is down, `on_redis_down` decides (503, or this
/// node's own count only).
pub async fn admit(quota: &Shard, state: &Arc<AccountState>) -> Result<Admission, ProxyError> {
    let mut local = quota.local(state);
    if local.exhausted() {
        return Err(ProxyError::BandwidthExceeded);
    }
    let mut slot = state.try_acquire().ok_or(ProxyError::ThreadsExceeded)?;
    if let Some(cluster) = state.cluster() {
        share_slot(cluster, state, &mut slot).await?;
        // While this admission waited for Redis, the quota tick may have retired the
        // core's view of the account (idle here): charge the live one, or the leases it
        // takes would never be handed back.
        local = quota.local(state);
    }
    Ok(Admission {
        slot,
        charge: Charge::new(local),
    })
}

/// Also take `slot` in the cluster's count; while Redis is down, `on_redis_down` decides.
async fn share_slot(
    cluster: &Arc<dyn SharedPlan>,
    state: &Arc<AccountState>,
    slot: &mut ThreadSlot,
) -> Result<(), ProxyError> {
    match cluster.acquire(state).await {
        Ok(true) => slot.share(),
        Ok(false) => return Err(ProxyError::ThreadsExceeded),
        Err(Down) if cluster.on_down() == DownPolicy::FailClosed => {
            cluster.count_down(false);
            return Err(ProxyError::Unavailable("usage store unreachable"));
        }
        Err(Down) => cluster.count_down(true),
    }
    Ok(())
}

/// Every account's global state, by name, and the durable store behind it.
#[derive(Debug)]
pub struct Ledger {
    accounts: Mutex<AHashMap<String, Arc<AccountState>>>,
    /// Values at start for accounts not yet attached (from the store).
    stored: Mutex<HashMap<String, Stored>>,
    /// Active counts as last written, to skip unchanged rows.
    written_active: Mutex<AHashMap<String, u32>>,
    backend: Mutex<Box<dyn UsageBackend>>,
    /// Set when plans are shared with other nodes: accounts are created cluster-bound.
    cluster: Option<Arc<dyn SharedPlan>>,
    /// Plan periods that ended and are not written to the store yet.
    ended: Mutex<Vec<EndedPeriod>>,
}

impl Ledger {
    /// Open the store and resume from it (applying adjustments queued while stopped).
    pub fn open(mut backend: Box<dyn UsageBackend>) -> Result<Arc<Ledger>, String> {
        let mut stored = backend.load()?;
        for (account, adj) in backend.take_queued()? {
            let row = stored.entry(account).or_default();
            match adj {
                Adjustment::Reset => {
                    row.used = 0;
                    row.credit = 0;
                }
                Adjustment::TopUp(n) => row.credit = row.credit.saturating_add(n),
            }
        }
        let rows: Vec<(String, Stored)> = stored.iter().map(|(k, v)| (k.clone(), *v)).collect();
        backend.save(&rows, &[])?;
        Ok(Arc::new(Ledger {
            accounts: Mutex::new(AHashMap::new()),
            stored: Mutex::new(stored),
            written_active: Mutex::new(AHashMap::new()),
            backend: Mutex::new(backend),
            cluster: None,
            ended: Mutex::new(Vec::new()),
        }))
    }

    /// A ledger whose usage lives in the cluster's Redis (nothing is stored locally).
    pub fn shared(cluster: Arc<dyn SharedPlan>) -> Arc<Ledger> {
        Arc::new(Ledger {
            accounts: Mutex::new(AHashMap::new()),
            stored: Mutex::new(HashMap::new()),
            written_active: Mutex::new(AHashMap::new()),
            backend: Mutex::new(Box::new(store::InRedis)),
            cluster: Some(cluster),
            ended: Mutex::new(Vec::new()),
        })
    }

    /// Every account of `snap`'s persistent state, at its account id: the same one it had
    /// before a reload (counters and slots carry over), or a new one resumed from the
    /// store; plan limits are (re)applied.
    pub fn usage_for(&self, snap: &Snapshot) -> Vec<Option<Arc<AccountState>>> {
        let mut accounts = self.accounts.lock();
        let stored = self.stored.lock();
        let len = snap.accounts.values().map(|a| a.id + 1).max().unwrap_or(0);
        let mut by_id = vec![None; len];
        for acc in snap.accounts.values() {
            let plan = &snap.plans[acc.plan];
            let state = accounts
                .entry(acc.name.clone())
                .or_insert_with(|| match &self.cluster {
                    Some(c) => {
                        AccountState::shared(&acc.name, plan.bandwidth, plan.threads, c.clone())
                    }
                    None => {
                        let s = stored.get(&acc.name).copied().unwrap_or_default();
                        AccountState::new(&acc.name, plan.bandwidth, plan.threads, s.used, s.credit)
                    }
                })
                .clone();
            state.set_plan(plan.bandwidth, plan.threads);
            state.set_speed(plan.speed);
            let stored_start = stored.get(&acc.name).map_or(0, |s| s.period_start);
            state.set_period(plan.period, stored_start);
            // Usage stored before a boundary (the gateway was down) belongs to its period.
            if let Some((start, used)) = state.roll_period(crate::util::wall_now()) {
                self.ended.lock().push((acc.name.clone(), start, used));
            }
            by_id[acc.id] = Some(state);
        }
        by_id
    }

    /// Start the next period of every account whose plan period has ended at `now`; the
    /// ended periods are written at the next flush. Called every second (the usage thread).
    pub fn roll_periods(&self, now: jiff::Timestamp) {
        let accounts = self.accounts.lock();
        let mut ended = self.ended.lock();
        for (name, state) in accounts.iter() {
            if let Some((start, used)) = state.roll_period(now) {
                tracing::info!(account = %name, period_start = start, used, "plan period ended; usage starts again");
                ended.push((name.clone(), start, used));
            }
        }
    }

    /// (account, concurrent connections, bytes leased to cores and unspent) for every
    /// account known to the ledger.
    pub fn live_by_account(&self) -> Vec<(String, u32, u64)> {
        self.accounts
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.active(), s.outstanding()))
            .collect()
    }
}

impl Ledger {
    /// Apply queued adjustments, then write every account whose usage or live count changed.
    pub fn flush(&self) -> Result<(), String> {
        let mut backend = self.backend.lock();
        let queued = backend.take_queued()?;
        let accounts = self.accounts.lock();
        let mut rows = Vec::new();
        for (name, adj) in queued {
            match accounts.get(&name) {
                Some(state) => state.adjust(adj),
                None => {
                    // Not configured now: adjust the stored row directly.
                    let mut stored = self.stored.lock();
                    let row = stored.entry(name.clone()).or_default();
                    match adj {
                        Adjustment::Reset => *row = Stored::default(),
                        Adjustment::TopUp(n) => row.credit = row.credit.saturating_add(n),
                    }
                    rows.push((name, *row));
                }
            }
        }
        let mut written = self.written_active.lock();
        let mut flushed = Vec::new();
        for (name, state) in accounts.iter() {
            let active = state.active();
            let dirty = state.take_dirty();
            if dirty || written.get(name) != Some(&active) {
                written.insert(name.clone(), active);
                flushed.push(state);
                rows.push((
                    name.clone(),
                    Stored {
                        used: state.used(),
                        credit: state.credit(),
                        active,
                        updated: 0,
                        period_start: state.period_start(),
                    },
                ));
            }
        }
        let ended: Vec<EndedPeriod> = std::mem::take(&mut *self.ended.lock());
        let res = backend.save(&rows, &ended);
        if res.is_err() {
            // Not written: the ended periods go with the next write.
            self.ended.lock().extend(ended);
            // Not written: write these again next time, and the live counts with them.
            for state in flushed {
                state.mark_dirty();
            }
            written.clear();
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store whose writes can be made to fail.
    #[derive(Debug, Default)]
    struct Flaky {
        fail: Arc<AtomicBool>,
        rows: Arc<Mutex<HashMap<String, Stored>>>,
    }

    impl UsageBackend for Flaky {
        fn load(&mut self) -> Result<HashMap<String, Stored>, String> {
            Ok(HashMap::new())
        }
        fn save(
            &mut self,
            rows: &[(String, Stored)],
            _: &[store::EndedPeriod],
        ) -> Result<(), String> {
            if self.fail.load(Ordering::Relaxed) {
                return Err("disk full".into());
            }
            let mut r = self.rows.lock();
            for (k, v) in rows {
                r.insert(k.clone(), *v);
            }
            Ok(())
        }
        fn queue(&mut self, _: &str, _: Adjustment) -> Result<(), String> {
            Ok(())
        }
        fn take_queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
            Ok(Vec::new())
        }
        fn queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
            Ok(Vec::new())
        }
        fn periods(&mut self, _: &str) -> Result<Vec<(i64, u64)>, String> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_failed_write_is_retried_on_the_next_flush() {
        let store = Flaky::default();
        let (fail, rows) = (store.fail.clone(), store.rows.clone());
        let ledger = Ledger::open(Box::new(store)).unwrap();
        let snap = crate::config::parse(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nnetwork = \"n\"\n[[network]]\nname = \"n\"\n\
             [[plan]]\nname = \"p\"\nbandwidth = \"1GiB\"\nthreads = 1\n\
             [[user]]\nname = \"a\"\npassword = \"x\"\nplan = \"p\"\nnetworks = [\"n\"]\n",
        )
        .unwrap();
        let state = ledger.usage_for(&snap)[snap.accounts["a"].id]
            .clone()
            .unwrap();
        state.settle(1234, 0);
        fail.store(true, Ordering::Relaxed);
        assert!(ledger.flush().is_err());
        fail.store(false, Ordering::Relaxed);
        ledger.flush().unwrap();
        assert_eq!(rows.lock()["a"].used, 1234);
    }
}

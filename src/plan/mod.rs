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
mod wait;

use crate::config::{DownPolicy, Period, Plan};
use crate::error::ProxyError;
use ahash::AHashMap;
use ledger::{AccountState, Adjustment, ThreadSlot};
pub use ledger::{Down, SharedPlan, SharedSlot};
use parking_lot::Mutex;
use shard::{Charge, Shard};
use std::sync::Arc;
use store::{EndedPeriod, Stored, UsageBackend};

/// What admission hands a connection: its concurrency slot and its quota charge.
pub struct Admission {
    pub slot: ThreadSlot,
    pub charge: Charge,
}

/// The live state of account `name` on `plan` for a connection on this core: the core's
/// own view when it has one (no shared lock), else the ledger's (attached on first use).
pub fn state_for(
    quota: &Shard,
    ledger: &Ledger,
    name: &str,
    plan: &Plan,
) -> Result<Arc<AccountState>, ProxyError> {
    match quota.state_of(name) {
        Some(s) => {
            s.apply(plan);
            Ok(s)
        }
        None => ledger.attach(name, plan),
    }
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
    let mut slot = match state.try_acquire() {
        Some(s) => s,
        None => wait::closing_slot(state)
            .await
            .ok_or(ProxyError::ThreadsExceeded)?,
    };
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
    let answer = match cluster.acquire(state).await {
        Ok(SharedSlot::Full { closing }) => wait::cluster_slot(cluster, state, closing).await,
        other => other,
    };
    match answer {
        Ok(SharedSlot::Taken) => slot.share(),
        Ok(SharedSlot::Full { .. }) => return Err(ProxyError::ThreadsExceeded),
        Err(Down) if cluster.on_down() == DownPolicy::FailClosed => {
            cluster.count_down(false);
            return Err(ProxyError::Unavailable("usage store unreachable"));
        }
        Err(Down) => cluster.count_down(true),
    }
    Ok(())
}

/// The live state of the accounts in use, by name, and the durable store behind it. An
/// account's state is attached at its first admission (resumed from the store) and
/// dropped when it has been unused for two sweeps with everything written, so memory
/// follows the accounts in use, not the accounts that exist.
#[derive(Debug)]
pub struct Ledger {
    accounts: Mutex<AHashMap<String, Arc<AccountState>>>,
    /// Active counts as last written, to skip unchanged rows.
    written_active: Mutex<AHashMap<String, u32>>,
    /// Bytes used as of the last hourly bucket written, per account in use.
    hourly_base: Mutex<AHashMap<String, u64>>,
    backend: Mutex<Box<dyn UsageBackend>>,
    /// Reads of one account's row at attach (a connection waits for it), apart from the
    /// flusher's writes.
    reader: Option<Mutex<Box<dyn UsageBackend>>>,
    /// Set when plans are shared with other nodes: accounts are created cluster-bound.
    cluster: Option<Arc<dyn SharedPlan>>,
    /// Plan periods that ended and are not written to the store yet.
    ended: Mutex<Vec<EndedPeriod>>,
    /// States of deleted accounts that live connections still hold: a disconnect can
    /// still reach them.
    departed: Mutex<AHashMap<String, std::sync::Weak<AccountState>>>,
    /// Held while an account is attached (its row read) and while a period boundary
    /// rolls the rows of accounts not in use: a row is rolled once, in memory or in the
    /// store, never both.
    attach_lock: Mutex<()>,
    /// The day, week and month starts the stored rows were last rolled to.
    rolled_to: Mutex<[i64; 3]>,
}

/// The periods rolled by the calendar, in `rolled_to`'s order.
const PERIODS: [Period; 3] = [Period::Day, Period::Week, Period::Month];

fn adjusted(mut row: Stored, adj: Adjustment) -> Stored {
    match adj {
        Adjustment::Reset => {
            row.used = 0;
            row.credit = 0;
        }
        Adjustment::TopUp(n) => row.credit = row.credit.saturating_add(n),
    }
    row
}

impl Ledger {
    /// Open the store, applying adjustments queued while the gateway was stopped.
    pub fn open(mut backend: Box<dyn UsageBackend>) -> Result<Arc<Ledger>, String> {
        let mut rows: AHashMap<String, Stored> = AHashMap::new();
        for (account, adj) in backend.take_queued()? {
            let row = match rows.get(&account) {
                Some(r) => *r,
                None => backend.load_one(&account)?.unwrap_or_default(),
            };
            rows.insert(account, adjusted(row, adj));
        }
        let rows: Vec<(String, Stored)> = rows.into_iter().collect();
        backend.save(&rows, &[])?;
        // Boundaries passed while the gateway was down, for every stored row.
        let now = crate::util::wall_now();
        let mut rolled_to = [0; 3];
        for (i, p) in PERIODS.iter().enumerate() {
            rolled_to[i] = p.start_of(now);
            backend.roll_dormant(*p, rolled_to[i])?;
        }
        let reader = backend.reader().map(Mutex::new);
        Ok(Arc::new(Ledger {
            accounts: Mutex::new(AHashMap::new()),
            written_active: Mutex::new(AHashMap::new()),
            hourly_base: Mutex::new(AHashMap::new()),
            backend: Mutex::new(backend),
            reader,
            cluster: None,
            ended: Mutex::new(Vec::new()),
            departed: Mutex::new(AHashMap::new()),
            attach_lock: Mutex::new(()),
            rolled_to: Mutex::new(rolled_to),
        }))
    }

    /// A ledger whose usage lives in the cluster's Redis (nothing is stored locally).
    /// `buckets` keeps what a cluster node keeps besides Redis's counters (its hourly usage
    /// buckets, also in Redis).
    pub fn shared(cluster: Arc<dyn SharedPlan>, buckets: Box<dyn UsageBackend>) -> Arc<Ledger> {
        Arc::new(Ledger {
            accounts: Mutex::new(AHashMap::new()),
            written_active: Mutex::new(AHashMap::new()),
            hourly_base: Mutex::new(AHashMap::new()),
            backend: Mutex::new(buckets),
            reader: None,
            cluster: Some(cluster),
            ended: Mutex::new(Vec::new()),
            departed: Mutex::new(AHashMap::new()),
            attach_lock: Mutex::new(()),
            rolled_to: Mutex::new([0; 3]),
        })
    }

    /// A ledger that keeps nothing between runs (harnesses, benches).
    pub fn in_memory() -> Arc<Ledger> {
        Arc::new(Ledger {
            accounts: Mutex::new(AHashMap::new()),
            written_active: Mutex::new(AHashMap::new()),
            hourly_base: Mutex::new(AHashMap::new()),
            backend: Mutex::new(Box::new(store::InRedis)),
            reader: None,
            cluster: None,
            ended: Mutex::new(Vec::new()),
            departed: Mutex::new(AHashMap::new()),
            attach_lock: Mutex::new(()),
            rolled_to: Mutex::new([0; 3]),
        })
    }

    /// The state of an account in use now (`None`: not attached).
    pub fn get(&self, name: &str) -> Option<Arc<AccountState>> {
        self.accounts.lock().get(name).cloned()
    }

    /// Account `name`'s live state on `plan`: the one in use, or a new one resumed from
    /// the store (usage, credit, its period, rolled if a boundary passed meanwhile).
    pub fn attach(&self, name: &str, plan: &Plan) -> Result<Arc<AccountState>, ProxyError> {
        if let Some(s) = self.accounts.lock().get(name) {
            s.apply(plan);
            return Ok(s.clone());
        }
        // Read the row without holding the map (other accounts' connections use it
        // meanwhile), but not while a boundary rolls the stored rows.
        let _attaching = self.attach_lock.lock();
        if let Some(s) = self.accounts.lock().get(name) {
            s.apply(plan);
            return Ok(s.clone());
        }
        let stored = match &self.cluster {
            Some(_) => Stored::default(),
            None => {
                let res = match &self.reader {
                    Some(r) => r.lock().load_one(name),
                    None => self.backend.lock().load_one(name),
                };
                res.map_err(|e| {
                    tracing::error!(account = %name, error = %e, "usage store unreadable");
                    ProxyError::Unavailable("usage store unreadable")
                })?
                .unwrap_or_default()
            }
        };
        let mut accounts = self.accounts.lock();
        let state = accounts
            .entry(name.to_owned())
            .or_insert_with(|| {
                let s = match &self.cluster {
                    Some(c) => AccountState::shared(name, plan.bandwidth, plan.threads, c.clone()),
                    None => AccountState::new(
                        name,
                        plan.bandwidth,
                        plan.threads,
                        stored.used,
                        stored.credit,
                    ),
                };
                s.set_speed(plan.speed);
                s.set_period(plan.period, stored.period_start);
                self.hourly_base.lock().insert(name.to_owned(), stored.used);
                // Usage stored before a boundary (unused, or the gateway was down) belongs
                // to its period.
                if let Some((start, used)) = s.roll_period(crate::util::wall_now()) {
                    self.ended.lock().push((name.to_owned(), start, used));
                }
                s
            })
            .clone();
        drop(accounts);
        state.apply(plan);
        Ok(state)
    }

    /// Apply the current plans to every attached account (after a reload or a plan
    /// change): `plan_of` gives an account's plan, `None` when it is gone.
    pub fn reapply(&self, plan_of: impl Fn(&str) -> Option<Arc<crate::config::Plan>>) {
        for (name, state) in self.accounts.lock().iter() {
            if let Some(p) = plan_of(name) {
                state.apply(&p);
            }
        }
    }

    /// Drop a deleted account's state: live connections keep theirs until they end; a
    /// new account of the same name starts from nothing.
    ///
    /// A cluster node keeps the state: its usage lives in Redis by name (where the delete
    /// resets it: `cluster::usage::forget`), and its link counts this node's bytes on that
    /// one state as absolute counters, so a second state for the name would count from
    /// zero again and undo the reset's arithmetic.
    pub fn forget(&self, name: &str) {
        if self.cluster.is_some() {
            return;
        }
        if let Some(s) = self.accounts.lock().remove(name) {
            s.forget();
            self.departed
                .lock()
                .insert(name.to_owned(), Arc::downgrade(&s));
        }
        self.written_active.lock().remove(name);
        self.hourly_base.lock().remove(name);
    }

    /// Cut account `name`'s live connections on every core (at each one's next tick),
    /// a deleted account's too. Returns the connections it had, `None` when it has none
    /// anywhere.
    pub fn disconnect(&self, name: &str) -> Option<u32> {
        let state = self
            .get(name)
            .or_else(|| self.departed.lock().get(name).and_then(|w| w.upgrade()))?;
        state.disconnect();
        Some(state.active())
    }

    /// Drop the states nobody used for two sweeps whose usage is written (called after a
    /// flush). A cluster node keeps its accounts: their grants live with its link.
    pub fn sweep(&self) -> usize {
        self.departed.lock().retain(|_, w| w.strong_count() > 0);
        if self.cluster.is_some() {
            return 0;
        }
        let mut dropped = Vec::new();
        self.accounts.lock().retain(|name, s| {
            // Held only here: no core and no connection has it, and none can take it
            // while the map is locked.
            let unused = Arc::strong_count(s) == 1 && s.active() == 0 && !s.is_dirty();
            if unused && s.idle_twice() {
                dropped.push(name.clone());
                return false;
            }
            true
        });
        if !dropped.is_empty() {
            let mut written = self.written_active.lock();
            let mut base = self.hourly_base.lock();
            for n in &dropped {
                written.remove(n);
                base.remove(n);
            }
        }
        dropped.len()
    }

    /// (used, credit, active threads, period start) of an account without attaching it:
    /// its live state when in use, else its stored row (for listings of many accounts).
    pub fn peek(&self, name: &str) -> Result<(u64, u64, u32, i64), String> {
        if let Some(s) = self.get(name) {
            return Ok((s.used(), s.credit(), s.active(), s.period_start()));
        }
        let row = match &self.reader {
            Some(r) => r.lock().load_one(name)?,
            None => self.backend.lock().load_one(name)?,
        }
        .unwrap_or_default();
        Ok((row.used, row.credit, 0, row.period_start))
    }

    /// An account's hourly usage from `since` (Unix seconds): (hour start, bytes), oldest
    /// first.
    pub fn hourly(&self, name: &str, since: i64) -> Result<Vec<(i64, u64)>, String> {
        match &self.reader {
            Some(r) => r.lock().hourly(name, since),
            None => self.backend.lock().hourly(name, since),
        }
    }

    /// An account's ended periods, newest first: (start, bytes used).
    pub fn history(&self, name: &str) -> Result<Vec<(i64, u64)>, String> {
        let mut past = match &self.reader {
            Some(r) => r.lock().periods(name)?,
            None => self.backend.lock().periods(name)?,
        };
        // Ended and not written yet.
        for (a, start, used) in self.ended.lock().iter() {
            if a == name {
                match past.iter_mut().find(|(s, _)| s == start) {
                    Some(p) => p.1 += used,
                    None => past.push((*start, *used)),
                }
            }
        }
        past.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(past)
    }

    /// Start the next period of every account whose plan period has ended at `now`; the
    /// ended periods are written at the next flush. Called every second (the usage thread).
    pub fn roll_periods(&self, now: jiff::Timestamp) {
        let starts = PERIODS.map(|p| p.start_of(now));
        if *self.rolled_to.lock() == starts {
            self.roll_attached(now);
            return;
        }
        // A boundary: accounts in use roll in memory and are written, then the stored
        // rows of the others roll in the store, with no attach in between.
        let _no_attach = self.attach_lock.lock();
        self.roll_attached(now);
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "usage write failed at a period boundary; will retry");
            return;
        }
        let mut rolled_to = self.rolled_to.lock();
        let mut backend = self.backend.lock();
        for (i, p) in PERIODS.iter().enumerate() {
            if rolled_to[i] != starts[i] {
                match backend.roll_dormant(*p, starts[i]) {
                    Ok(n) => {
                        rolled_to[i] = starts[i];
                        if n > 0 {
                            tracing::info!(
                                period = p.as_str(),
                                accounts = n,
                                "plan period ended for stored accounts not in use"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rolling stored usage failed; will retry")
                    }
                }
            }
        }
    }

    fn roll_attached(&self, now: jiff::Timestamp) {
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
        let mut rows = Vec::new();
        for (name, adj) in queued {
            let attached = self.accounts.lock().get(&name).cloned();
            match attached {
                Some(state) => state.adjust(adj),
                None => {
                    // Not in use now: adjust the stored row.
                    let row = backend.load_one(&name)?.unwrap_or_default();
                    rows.push((name, adjusted(row, adj)));
                }
            }
        }
        let accounts: Vec<(String, Arc<AccountState>)> = self
            .accounts
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let mut written = self.written_active.lock();
        let mut flushed = Vec::new();
        for (name, state) in &accounts {
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
                        period: state.period(),
                        plan_bandwidth: state.plan_bandwidth(),
                    },
                ));
            }
        }
        let ended: Vec<EndedPeriod> = std::mem::take(&mut *self.ended.lock());
        let res = backend.save(&rows, &ended);
        if res.is_ok() {
            // The bytes since the last write go to this hour's bucket (a reset or a new
            // period restarts the count: what was used since is this hour's).
            let hour = crate::util::wall_now().as_second().div_euclid(3600) * 3600;
            let mut base = self.hourly_base.lock();
            let mut buckets = Vec::new();
            for (name, row) in &rows {
                let Some(b) = base.get_mut(name) else {
                    continue;
                };
                let delta = if row.used >= *b {
                    row.used - *b
                } else {
                    row.used
                };
                *b = row.used;
                if delta > 0 {
                    buckets.push((name.clone(), hour, delta));
                }
            }
            drop(base);
            if let Err(e) = backend.add_hourly(&buckets) {
                tracing::warn!(error = %e, "hourly usage buckets not written");
            }
        }
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
    use std::collections::HashMap;
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
        fn load_one(&mut self, a: &str) -> Result<Option<Stored>, String> {
            Ok(self.rows.lock().get(a).copied())
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
        let state = ledger.attach("a", &snap.plans[0]).unwrap();
        state.settle(1234, 0);
        fail.store(true, Ordering::Relaxed);
        assert!(ledger.flush().is_err());
        fail.store(false, Ordering::Relaxed);
        ledger.flush().unwrap();
        assert_eq!(rows.lock()["a"].used, 1234);
    }
}

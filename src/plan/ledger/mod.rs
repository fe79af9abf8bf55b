//! The global, per-account ledger: concurrent-connection slots and bandwidth leases.
//! Touched once per connection (slot) or once per lease, never per read.
//!
//! Bytes: `reserved` = `used` + bytes leased to cores and not yet spent. A core may only
//! lease what keeps `reserved <= limit`, and reads are capped at the core's lease, so the
//! plan's bandwidth is never exceeded; at most one lease per core is held back unspent.
//!
//! In a cluster (`[cluster]`), the same counters describe this node only: `limit` is what
//! Redis granted the node so far, `used` what the node spent since it started, and a core
//! that finds the node's grant spent waits for the cluster thread to fetch more
//! ([`AccountState::wait_grant`]); `exhausted` is set only when Redis says the plan is
//! used up across the cluster.

use crate::config::{DownPolicy, Period, Plan};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Waker;

mod grant;
mod speed;

/// Smallest and largest lease a core takes at once.
pub const MIN_LEASE: u64 = 16 * 1024;
pub const MAX_LEASE: u64 = 4 * 1024 * 1024;

// The plan's seam to a store shared with other nodes. The plan owns it and says what it
// needs (a cluster-wide slot count and bandwidth grants); `cluster` implements it over
// Redis. Called at admission, on slot release and on lease refill, never per read.

/// The shared store could not be asked (unreachable, timed out, or the node is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// An account's plan shared across nodes.
pub trait SharedPlan: Send + Sync + std::fmt::Debug {
    /// Take one of `state`'s thread slots across every node.
    fn acquire<'a>(
        &'a self,
        state: &'a Arc<AccountState>,
    ) -> Pin<Box<dyn Future<Output = Result<SharedSlot, Down>> + 'a>>;
    /// Give back a slot taken by [`SharedPlan::acquire`] (and count it out of the closing
    /// ones, if it was closing).
    fn release(&self, state: &Arc<AccountState>);
    /// A slot taken by [`SharedPlan::acquire`] is closing ([`ThreadSlot::closing`]): the
    /// other nodes' admissions wait for it as this node's do.
    fn closing(&self, state: &Arc<AccountState>);
    /// Ask for more bandwidth for this node (the answer wakes the account's waiters),
    /// unless a request is already on its way.
    fn request_grant(&self, state: &Arc<AccountState>);
    /// What admission does while the store is down.
    fn on_down(&self) -> DownPolicy;
    /// Count an admission decided while the store was down (`admitted` or refused).
    fn count_down(&self, admitted: bool);
    /// Nodes sharing the plan now (at least 1): each enforces its share of the speed.
    fn nodes(&self) -> u64;
}

/// The cluster's answer to a request for a thread slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedSlot {
    /// Taken, and counted as this node's.
    Taken,
    /// Every slot is held across the cluster; `closing` when one of them is closing (on
    /// any node), so one is about to come back.
    Full { closing: bool },
}

/// Concurrency counter on its own cache line: every core CASes it at admission.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicU32);

/// One account's global counters. Survives reloads (carried by name).
#[derive(Debug, Default)]
pub struct AccountState {
    pub name: String,
    active: Padded,
    threads: AtomicU32,
    /// Of `active`, tunnels one side of which has closed: about to end, most of them.
    closing: AtomicU32,
    /// Bytes spent and settled by cores: what is billed and stored.
    used: AtomicU64,
    /// `used` plus outstanding leases.
    reserved: AtomicU64,
    /// Plan bandwidth plus operator credit.
    limit: AtomicU64,
    plan_bandwidth: AtomicU64,
    credit: AtomicU64,
    exhausted: AtomicBool,
    /// Changed since the last durable write.
    dirty: AtomicBool,
    /// Set when the plan is shared with other nodes through Redis.
    cluster: Option<Arc<dyn SharedPlan>>,
    /// Cluster: a grant request is on its way.
    granting: AtomicBool,
    /// Cluster: connections waiting for that grant.
    waiters: Mutex<Vec<Waker>>,
    /// Cluster: bytes handed back to Redis (counted in `reserved`, never spent).
    returned: AtomicU64,
    /// Cluster: size of the last grant (the next is fetched when half of it is left).
    last_grant: AtomicU64,
    /// The plan's speed, bytes per second across every connection and core; 0 = none.
    speed: AtomicU64,
    /// Speed: when (ns after the process epoch) the bytes let through so far are paid for
    /// at the plan's rate (GCRA's theoretical arrival time). One CAS per chunk a core takes.
    speed_tat: AtomicU64,
    /// The plan's period ([`period_code`]), and the start (Unix seconds) of the one `used`
    /// belongs to.
    period: AtomicU8,
    period_start: AtomicI64,
    /// Seen unused at the last sweep: dropped at the next one if still unused.
    idle_mark: AtomicBool,
    /// The account was deleted: cores stop using this state (a new one is attached if the
    /// name is created again).
    forgotten: AtomicBool,
    /// Bumped by "disconnect this account": every core cuts the account's live
    /// connections at its next tick.
    disconnects: AtomicU32,
}

fn period_code(p: Period) -> u8 {
    match p {
        Period::None => 0,
        Period::Day => 1,
        Period::Week => 2,
        Period::Month => 3,
    }
}

fn period_of(code: u8) -> Period {
    match code {
        1 => Period::Day,
        2 => Period::Week,
        3 => Period::Month,
        _ => Period::None,
    }
}

/// How far ahead of the rate an account may run (its burst), in nanoseconds.
const SPEED_BURST_NS: u64 = 50_000_000;

/// A held concurrency slot; released on drop.
#[derive(Debug)]
pub struct ThreadSlot {
    state: Arc<AccountState>,
    /// Also holds a slot in the cluster's count.
    shared: bool,
    /// Counted in the account's `closing`.
    closing: std::cell::Cell<bool>,
}

impl ThreadSlot {
    /// The account whose slot this is.
    pub fn account(&self) -> &str {
        &self.state.name
    }

    /// The slot is also counted across the cluster (given back there on drop).
    pub fn share(&mut self) {
        self.shared = true;
    }

    /// Its tunnel is closing: one side has closed, and the tunnel ends once the other
    /// does. Admission waits a little for such a slot before it refuses.
    pub fn closing(&self) {
        if !self.closing.replace(true) {
            self.state.closing.fetch_add(1, Ordering::AcqRel);
            if self.shared {
                if let Some(c) = &self.state.cluster {
                    c.closing(&self.state);
                }
            }
        }
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        if self.closing.get() {
            self.state.closing.fetch_sub(1, Ordering::AcqRel);
        }
        self.state.active.0.fetch_sub(1, Ordering::AcqRel);
        if self.shared {
            if let Some(c) = &self.state.cluster {
                c.release(&self.state);
            }
        }
    }
}

/// An operator's change to an account's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// Forget all usage.
    Reset,
    /// Add this many bytes of credit on top of the plan.
    TopUp(u64),
}

impl AccountState {
    pub fn new(name: &str, bandwidth: u64, threads: u32, used: u64, credit: u64) -> Arc<Self> {
        let s = AccountState {
            name: name.to_owned(),
            ..Default::default()
        };
        s.used.store(used, Ordering::Relaxed);
        s.reserved.store(used, Ordering::Relaxed);
        s.credit.store(credit, Ordering::Relaxed);
        s.set_plan(bandwidth, threads);
        Arc::new(s)
    }

    /// An account whose plan this node shares with others through `cluster`: starts with
    /// nothing granted and nothing spent (the totals live in Redis).
    pub fn shared(
        name: &str,
        bandwidth: u64,
        threads: u32,
        cluster: Arc<dyn SharedPlan>,
    ) -> Arc<Self> {
        let s = AccountState {
            name: name.to_owned(),
            cluster: Some(cluster),
            ..Default::default()
        };
        s.set_plan(bandwidth, threads);
        Arc::new(s)
    }

    pub fn cluster(&self) -> Option<&Arc<dyn SharedPlan>> {
        self.cluster.as_ref()
    }

    /// Apply (new) plan limits; takes effect from the next admission or lease.
    pub fn set_plan(&self, bandwidth: u64, threads: u32) {
        self.plan_bandwidth.store(bandwidth, Ordering::Relaxed);
        self.threads.store(threads, Ordering::Relaxed);
        if self.cluster.is_none() {
            self.recompute_limit();
        }
    }

    /// Set the plan's period; `start` is the period the stored usage belongs to (0: not
    /// known, taken as the current one).
    pub fn set_period(&self, period: Period, start: i64) {
        self.period.store(period_code(period), Ordering::Release);
        if start != 0 {
            let _ =
                self.period_start
                    .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    pub fn period(&self) -> Period {
        period_of(self.period.load(Ordering::Acquire))
    }

    /// Apply `plan` (limits, speed, period) where it differs from what the state holds:
    /// called at every admission, so a plan change applies from the next one, and an
    /// unchanged plan writes nothing shared.
    pub fn apply(&self, plan: &Plan) {
        if self.plan_bandwidth() != plan.bandwidth || self.threads() != plan.threads {
            self.set_plan(plan.bandwidth, plan.threads);
        }
        if self.speed.load(Ordering::Relaxed) != plan.speed {
            self.set_speed(plan.speed);
        }
        if self.period() != plan.period {
            self.set_period(plan.period, 0);
        }
    }

    /// The ledger dropped this state (the account was deleted).
    pub fn forget(&self) {
        self.forgotten.store(true, Ordering::Release);
    }

    pub fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// Ask every core to cut this account's live connections (at its next tick).
    pub fn disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times [`AccountState::disconnect`] was asked.
    pub fn disconnects(&self) -> u32 {
        self.disconnects.load(Ordering::Acquire)
    }

    /// Sweep: `true` when the state was already unused at the last sweep (drop it now);
    /// otherwise marks it.
    pub fn idle_twice(&self) -> bool {
        self.idle_mark.swap(true, Ordering::AcqRel)
    }

    /// The state was used: clear the sweep's mark.
    fn touch(&self) {
        if self.idle_mark.load(Ordering::Relaxed) {
            self.idle_mark.store(false, Ordering::Relaxed);
        }
    }

    /// Whether usage changed since the last durable write (without clearing it).
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// The start of the period `used` belongs to (Unix seconds; 0 = no period).
    pub fn period_start(&self) -> i64 {
        self.period_start.load(Ordering::Acquire)
    }

    /// At `now`, start the plan's next period if the current one has ended: usage starts
    /// again from 0, and credit that was not needed (usage beyond the plan consumes it) is
    /// kept. Returns the period that ended and its usage, for the history.
    pub fn roll_period(&self, now: jiff::Timestamp) -> Option<(i64, u64)> {
        if self.cluster.is_some() {
            // A cluster's totals roll in Redis (the grant script); this node's counters
            // are its own spending, which only grows.
            return None;
        }
        let period = self.period();
        let start = period.start_of(now);
        if start == 0 {
            return None;
        }
        let old = self.period_start.load(Ordering::Acquire);
        if old == 0 {
            // First sight of this account's period: it is the current one.
            let _ =
                self.period_start
                    .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire);
            return None;
        }
        if start <= old
            || self
                .period_start
                .compare_exchange(old, start, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        let used = self.used.swap(0, Ordering::AcqRel);
        let _ = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some(r.saturating_sub(used))
            });
        let beyond_plan = used.saturating_sub(self.plan_bandwidth());
        let credit = self.credit.load(Ordering::Acquire);
        self.credit
            .store(credit.saturating_sub(beyond_plan), Ordering::Release);
        self.recompute_limit();
        self.dirty.store(true, Ordering::Release);
        Some((old, used))
    }

    pub fn plan_bandwidth(&self) -> u64 {
        self.plan_bandwidth.load(Ordering::Relaxed)
    }

    pub fn threads(&self) -> u32 {
        self.threads.load(Ordering::Relaxed)
    }

    fn recompute_limit(&self) {
        let limit = self
            .plan_bandwidth
            .load(Ordering::Relaxed)
            .saturating_add(self.credit.load(Ordering::Relaxed));
        self.limit.store(limit, Ordering::Release);
        if self.reserved.load(Ordering::Acquire) < limit {
            self.exhausted.store(false, Ordering::Release);
        }
    }

    /// Held slots whose tunnels are closing ([`ThreadSlot::closing`]).
    pub fn closing(&self) -> u32 {
        self.closing.load(Ordering::Acquire)
    }

    /// Take a concurrency slot if the plan allows one more.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ThreadSlot> {
        self.touch();
        let max = self.threads.load(Ordering::Relaxed);
        let mut cur = self.active.0.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self.active.0.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(ThreadSlot {
                        state: self.clone(),
                        shared: false,
                        closing: Default::default(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Lease bytes for one core; 0 when the plan's bandwidth is used up (in a cluster:
    /// when the node's grant is spent; [`AccountState::is_exhausted`] tells which).
    pub fn lease(&self, cores: usize) -> u64 {
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            if cur >= limit {
                if self.cluster.is_none() {
                    self.exhausted.store(true, Ordering::Release);
                }
                return 0;
            }
            let left = limit - cur;
            let chunk = (left / (4 * cores.max(1) as u64))
                .clamp(MIN_LEASE, MAX_LEASE)
                .min(left);
            match self.reserved.compare_exchange_weak(
                cur,
                cur + chunk,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if self.exhausted.load(Ordering::Relaxed) {
                        self.exhausted.store(false, Ordering::Release);
                    }
                    return chunk;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Return unspent lease.
    pub fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            self.reserved.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Record bytes a core spent. `spent` came out of leases except `unleased`, which was
    /// spent beyond them (proxy-generated replies are always delivered).
    pub fn settle(&self, spent: u64, unleased: u64) {
        if spent == 0 && unleased == 0 {
            return;
        }
        self.used.fetch_add(spent, Ordering::AcqRel);
        if unleased > 0 {
            self.reserved.fetch_add(unleased, Ordering::AcqRel);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Apply an operator's adjustment.
    pub fn adjust(&self, adj: Adjustment) {
        match adj {
            Adjustment::Reset => {
                let used = self.used.swap(0, Ordering::AcqRel);
                self.reserved.fetch_sub(used, Ordering::AcqRel);
                self.credit.store(0, Ordering::Relaxed);
            }
            Adjustment::TopUp(n) => {
                self.credit.fetch_add(n, Ordering::AcqRel);
            }
        }
        self.recompute_limit();
        self.dirty.store(true, Ordering::Release);
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }

    /// No more bytes for new connections: the plan is used up (single node: nothing left
    /// to lease; cluster: Redis said so).
    pub fn out_of_bandwidth(&self) -> bool {
        match self.cluster {
            None => self.remaining() == 0,
            Some(_) => self.is_exhausted(),
        }
    }

    /// Bytes that may still be leased.
    pub fn remaining(&self) -> u64 {
        self.limit
            .load(Ordering::Acquire)
            .saturating_sub(self.reserved.load(Ordering::Acquire))
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn credit(&self) -> u64 {
        self.credit.load(Ordering::Acquire)
    }

    /// Bytes leased to cores and not yet spent.
    pub fn outstanding(&self) -> u64 {
        self.reserved
            .load(Ordering::Acquire)
            .saturating_sub(self.used.load(Ordering::Acquire))
            .saturating_sub(self.returned.load(Ordering::Acquire))
    }

    pub fn active(&self) -> u32 {
        self.active.0.load(Ordering::Acquire)
    }

    /// Clear and return the dirty flag (for the durable writer).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Flag for the next durable write (after a failed one).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A period boundary starts usage again from 0 (credit the period needed is gone,
    /// the rest kept), once, whoever sees it first; no period, no reset.
    #[test]
    fn a_period_boundary_starts_usage_again() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let st = AccountState::new("a", 1000, 10, 0, 500);
        st.set_period(Period::Month, 0);
        assert_eq!(st.roll_period(t("2026-11-30T23:59:59Z")), None);
        assert_eq!(st.period_start(), t("2026-11-01T00:00:00Z").as_second());
        st.settle(1200, 1200);
        assert_eq!(st.roll_period(t("2026-11-30T23:59:59Z")), None);
        let ended = st.roll_period(t("2026-12-01T00:00:00Z"));
        assert_eq!(ended, Some((t("2026-11-01T00:00:00Z").as_second(), 1200)));
        assert_eq!((st.used(), st.credit(), st.remaining()), (0, 300, 1300));
        assert_eq!(st.roll_period(t("2026-12-01T00:00:01Z")), None);
        let none = AccountState::new("b", 1000, 10, 7, 0);
        assert_eq!(none.roll_period(t("2030-01-01T00:00:00Z")), None);
        assert_eq!(none.used(), 7);
    }

    /// The speed budget lets through the rate plus one burst, whatever the chunking, and
    /// says how long to wait when it is spent.
    #[test]
    fn speed_lets_through_the_rate_and_no_more() {
        let st = AccountState::new("a", u64::MAX / 2, 10, 0, 0);
        let rate = 1_000_000u64;
        st.set_speed(rate);
        let ms = 1_000_000u64;
        let (mut now, mut total) = (0u64, 0u64);
        // Two takers (cores) asking for 20 kB at a time, for 10 simulated seconds.
        while now < 10_000 * ms {
            for _ in 0..2 {
                match st.take_speed(20_000, now) {
                    Ok(n) => total += n,
                    Err(wait) => assert!((ms..=50 * ms).contains(&wait), "{wait}"),
                }
            }
            now += ms;
        }
        let burst = rate / 20;
        assert!(total <= 10 * rate + burst, "{total}");
        assert!(total >= 10 * rate - rate / 100, "{total}");
        // Unlimited: everything asked for.
        st.set_speed(0);
        assert_eq!(st.take_speed(123, now), Ok(123));
    }

    #[test]
    fn slots_are_exact_and_released_on_drop() {
        let a = AccountState::new("a", 1 << 30, 2, 0, 0);
        let s1 = a.try_acquire().unwrap();
        let _s2 = a.try_acquire().unwrap();
        assert!(a.try_acquire().is_none());
        drop(s1);
        assert_eq!(a.active(), 1);
        assert!(a.try_acquire().is_some());
        a.set_plan(1 << 30, 1);
        assert!(a.try_acquire().is_none());
    }

    #[test]
    fn leases_never_exceed_the_limit() {
        let a = AccountState::new("a", 100_000, 10, 0, 0);
        let mut total = 0;
        loop {
            let l = a.lease(2);
            if l == 0 {
                break;
            }
            assert!(l >= MIN_LEASE.min(100_000 - total));
            total += l;
        }
        assert_eq!(total, 100_000);
        assert!(a.is_exhausted());
        a.settle(90_000, 0);
        a.give_back(10_000);
        assert_eq!((a.used(), a.remaining()), (90_000, 10_000));
        assert!(a.lease(2) > 0);
    }

    #[test]
    fn usage_resumes_and_adjusts() {
        let a = AccountState::new("a", 100, 10, 100, 0);
        assert_eq!(a.lease(1), 0);
        a.adjust(Adjustment::TopUp(50));
        assert!(!a.is_exhausted());
        assert_eq!(a.lease(1), 50);
        a.give_back(50);
        a.adjust(Adjustment::Reset);
        assert_eq!((a.used(), a.credit(), a.remaining()), (0, 0, 100));
        assert!(a.take_dirty());
        assert!(!a.take_dirty());
    }
}

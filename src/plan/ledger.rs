//! The global, per-account ledger: concurrent-connection slots and bandwidth leases.
//! Touched once per connection (slot) or once per lease, never per read.
//!
//! Bytes: `reserved` = `used` + bytes leased to cores and not yet spent. A core may only
//! lease what keeps `reserved <= limit`, and reads are capped at the core's lease, so the
//! plan's bandwidth is never exceeded; at most one lease per core is held back unspent.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Smallest and largest lease a core takes at once.
pub const MIN_LEASE: u64 = 16 * 1024;
pub const MAX_LEASE: u64 = 4 * 1024 * 1024;

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
}

/// A held concurrency slot; released on drop.
#[derive(Debug)]
pub struct ThreadSlot(Arc<AccountState>);

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        self.0.active.0.fetch_sub(1, Ordering::AcqRel);
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

    /// Apply (new) plan limits; takes effect from the next admission or lease.
    pub fn set_plan(&self, bandwidth: u64, threads: u32) {
        self.plan_bandwidth.store(bandwidth, Ordering::Relaxed);
        self.threads.store(threads, Ordering::Relaxed);
        self.recompute_limit();
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

    /// Take a concurrency slot if the plan allows one more.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ThreadSlot> {
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
                Ok(_) => return Some(ThreadSlot(self.clone())),
                Err(now) => cur = now,
            }
        }
    }

    /// Lease bytes for one core; 0 when the plan's bandwidth is used up.
    pub fn lease(&self, cores: usize) -> u64 {
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            if cur >= limit {
                self.exhausted.store(true, Ordering::Release);
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

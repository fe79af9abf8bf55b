//! A cluster node's side of an account's bandwidth: grants fetched from Redis, waited
//! for, and handed back (see `cluster`). Unused on a single node.

use super::AccountState;
use std::sync::atomic::Ordering;
use std::task::Waker;

impl AccountState {
    /// Cluster: Redis has nothing more, but this node still holds grant to lease (its
    /// cores gave leases back): not used up here.
    pub fn clear_exhausted(&self) {
        self.exhausted.store(false, Ordering::Release);
    }

    /// Cluster: mark a grant request as on its way; false when one already is.
    pub fn begin_grant(&self) -> bool {
        !self.granting.swap(true, Ordering::AcqRel)
    }

    /// Cluster: wake `waker` when the grant on its way is answered.
    pub fn wait_grant(&self, waker: &Waker) {
        let mut w = self.waiters.lock();
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }

    /// Cluster: the grant request was answered (or given up): wake the waiters.
    pub fn finish_grant(&self) {
        self.granting.store(false, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for w in waiters {
            w.wake();
        }
    }

    /// Cluster: Redis granted this node `bytes` more.
    pub fn add_grant(&self, bytes: u64) {
        self.last_grant.store(bytes, Ordering::Relaxed);
        self.limit.fetch_add(bytes, Ordering::AcqRel);
        self.exhausted.store(false, Ordering::Release);
    }

    /// Cluster: Redis said the plan is used up across the cluster.
    pub fn set_exhausted(&self) {
        self.exhausted.store(true, Ordering::Release);
    }

    /// Cluster: time to fetch the next grant (half of the last one is left).
    pub fn wants_grant(&self) -> bool {
        self.cluster.is_some()
            && !self.is_exhausted()
            && self.remaining() < self.last_grant.load(Ordering::Relaxed) / 2
    }

    /// Cluster: take back the node's grant not leased to a core (to return it to Redis).
    /// Uses the cores' own compare-and-swap, so a lease racing it is never double-counted.
    pub fn reclaim(&self) -> u64 {
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            let limit = self.limit.load(Ordering::Acquire);
            if cur >= limit {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                cur,
                limit,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.returned.fetch_add(limit - cur, Ordering::AcqRel);
                    return limit - cur;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Cluster: granted to this node and neither spent nor returned (leases of its cores
    /// included).
    pub fn unspent_grant(&self) -> u64 {
        self.limit
            .load(Ordering::Acquire)
            .saturating_sub(self.used.load(Ordering::Acquire))
            .saturating_sub(self.returned.load(Ordering::Acquire))
    }
}

//! An account's speed limit: a GCRA bucket on the account, one compare-and-swap per
//! chunk a core takes (see `shard`), never per byte.

use super::{AccountState, SPEED_BURST_NS};
use std::sync::atomic::Ordering;

impl AccountState {
    /// Set the plan's speed (bytes per second; 0 = unlimited).
    pub fn set_speed(&self, bytes_per_second: u64) {
        self.speed.store(bytes_per_second, Ordering::Relaxed);
    }

    /// The speed this node enforces: the plan's, or on a cluster its share (the plan's
    /// divided by the nodes alive), so that the nodes together stay near the plan's.
    pub fn speed(&self) -> u64 {
        let speed = self.speed.load(Ordering::Relaxed);
        match (&self.cluster, speed) {
            (Some(c), s) if s > 0 => (s / c.nodes()).max(1),
            _ => speed,
        }
    }

    /// Take up to `want` bytes of the speed budget at `now` (ns after the process epoch):
    /// `Ok(bytes)`, at least one, or `Err(ns)` to wait before any is free. Unlimited plans
    /// always get `want`.
    pub fn take_speed(&self, want: u64, now: u64) -> Result<u64, u64> {
        let rate = u128::from(self.speed());
        if rate == 0 || want == 0 {
            return Ok(want);
        }
        let mut tat = self.speed_tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let room_ns = (now + SPEED_BURST_NS).saturating_sub(base);
            let room = (u128::from(room_ns) * rate / 1_000_000_000) as u64;
            if room == 0 {
                // Wait until `want` (or 1/20 s of the rate, if less) fits.
                let need = u128::from(want).min(rate / 20).max(1);
                let need_ns = (need * 1_000_000_000).div_ceil(rate) as u64;
                // At least 1 ms: a waiter sleeps, it never spins on the clock.
                return Err((base + need_ns)
                    .saturating_sub(now + SPEED_BURST_NS)
                    .max(1_000_000));
            }
            let grant = want.min(room);
            let cost = (u128::from(grant) * 1_000_000_000).div_ceil(rate) as u64;
            match self.speed_tat.compare_exchange_weak(
                tat,
                base + cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(grant),
                Err(t) => tat = t,
            }
        }
    }
}

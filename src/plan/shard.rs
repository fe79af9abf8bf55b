//! Per-core quota shards and the per-connection charge. Everything here is core-local
//! (`Rc`, `Cell`): a read costs a few `Cell` updates; the global ledger is touched only
//! to refill or return a lease.

use super::ledger::AccountState;
use crate::metrics::CoreMetrics;
use crate::util::Latch;
use ahash::AHashMap;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What may be read now for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// This many bytes (0: the plan's bandwidth is used up).
    Bytes(usize),
    /// The plan's speed is reached: nothing before this long.
    Throttled(Duration),
}

/// The most of an account's speed one core takes at once: 1/50 s of the rate.
fn speed_chunk(rate: u64) -> u64 {
    (rate / 50).clamp(4 * 1024, 256 * 1024)
}

/// [`Local::cut`]'s latch fired because an operator asked to disconnect the account
/// (otherwise: its bandwidth ran out).
pub const CUT_BY_OPERATOR: u8 = 1;

/// One account on one core.
pub struct Local {
    state: Arc<AccountState>,
    cores: usize,
    lease: Cell<u64>,
    /// The plan's speed, as this core last read it (at creation and every tick: a reload
    /// applies within a second), so that a read touches no shared cache line for it.
    speed: Cell<u64>,
    /// Bytes of the plan's speed this core took and has not spent yet.
    speed_left: Cell<u64>,
    /// Bytes spent since the last settle.
    spent: Cell<u64>,
    /// Of those, bytes spent beyond the lease.
    unleased: Cell<u64>,
    conns: Cell<u32>,
    /// Fired when the account runs out, or an operator disconnects it: its live
    /// connections on this core close.
    cut: RefCell<Rc<Latch>>,
    /// The account's disconnect count this core has acted on.
    disconnects: Cell<u32>,
    metrics: Arc<CoreMetrics>,
}

impl Local {
    /// What may be read now: bytes within the lease (refilled when empty; `Bytes(0)` = used
    /// up) and within the plan's speed (`Throttled` when it is reached). In a cluster,
    /// `Pending` while the node waits for Redis to grant it more.
    pub fn poll_grant(&self, cx: &mut Context<'_>, want: usize) -> Poll<Grant> {
        let n = match self.poll_allowance(cx, want) {
            Poll::Ready(n) => n as u64,
            Poll::Pending => return Poll::Pending,
        };
        let rate = self.speed.get();
        if rate == 0 || n == 0 {
            return Poll::Ready(Grant::Bytes(n as usize));
        }
        if self.speed_left.get() == 0 {
            let now = crate::util::epoch_ns(Instant::now());
            match self.state.take_speed(speed_chunk(rate), now) {
                Ok(got) => self.speed_left.set(got),
                Err(wait) => return Poll::Ready(Grant::Throttled(Duration::from_nanos(wait))),
            }
        }
        Poll::Ready(Grant::Bytes(n.min(self.speed_left.get()) as usize))
    }

    /// Bytes that may be read now within the lease (refilling it when empty); `Ready(0)` =
    /// used up. In a cluster, `Pending` while the node waits for Redis to grant it more.
    pub fn poll_allowance(&self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        if self.lease.get() == 0 {
            let mut got = self.state.lease(self.cores);
            self.metrics.lease_refills.inc();
            if got == 0 {
                let Some(cluster) = self.state.cluster().filter(|_| !self.state.is_exhausted())
                else {
                    self.cut.borrow().fire();
                    return Poll::Ready(0);
                };
                self.state.wait_grant(cx.waker());
                cluster.request_grant(&self.state);
                // A grant may have landed between the lease and the wait.
                got = self.state.lease(self.cores);
                if got == 0 {
                    return Poll::Pending;
                }
            }
            self.lease.set(got);
            if self.state.wants_grant() {
                if let Some(c) = self.state.cluster() {
                    c.request_grant(&self.state);
                }
            }
        }
        Poll::Ready((self.lease.get().min(want as u64)) as usize)
    }

    /// [`Local::poll_allowance`] where waiting is not possible (tests, benches).
    pub fn allowance(&self, want: usize) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_allowance(&mut cx, want) {
            Poll::Ready(n) => n,
            Poll::Pending => 0,
        }
    }

    /// Spend `n` bytes of the lease (beyond it when the lease is short) and of the speed
    /// this core took.
    fn take(&self, n: u64) {
        self.speed_left.set(self.speed_left.get().saturating_sub(n));
        let lease = self.lease.get();
        if n <= lease {
            self.lease.set(lease - n);
        } else {
            self.lease.set(0);
            self.unleased.set(self.unleased.get() + (n - lease));
        }
    }

    fn refund(&self, n: u64) {
        self.lease.set(self.lease.get() + n);
    }

    fn bill(&self, n: u64) {
        self.spent.set(self.spent.get() + n);
    }

    /// Publish spent bytes to the global ledger.
    fn settle(&self) {
        self.state
            .settle(self.spent.replace(0), self.unleased.replace(0));
    }

    pub fn exhausted(&self) -> bool {
        self.lease.get() == 0 && self.state.out_of_bandwidth()
    }

    pub fn cut(&self) -> Rc<Latch> {
        self.cut.borrow().clone()
    }
}

/// A core's quota shard: its accounts' leases.
pub struct Shard {
    cores: usize,
    locals: RefCell<AHashMap<String, Rc<Local>>>,
    metrics: Arc<CoreMetrics>,
}

impl Shard {
    pub fn new(cores: usize, metrics: Arc<CoreMetrics>) -> Shard {
        Shard {
            cores: cores.max(1),
            locals: RefCell::new(AHashMap::new()),
            metrics,
        }
    }

    /// The account's state as this core holds it (`None`: not held here, or the account
    /// was deleted since).
    pub fn state_of(&self, name: &str) -> Option<Arc<AccountState>> {
        let map = self.locals.borrow();
        let l = map.get(name)?;
        (!l.state.is_forgotten()).then(|| l.state.clone())
    }

    /// This core's view of an account (created on first use).
    pub fn local(&self, state: &Arc<AccountState>) -> Rc<Local> {
        let mut map = self.locals.borrow_mut();
        if let Some(l) = map.get(&state.name) {
            if Arc::ptr_eq(&l.state, state) {
                if l.cut.borrow().is_fired() && !state.is_exhausted() {
                    // Topped up since the cut: new connections get a fresh latch.
                    *l.cut.borrow_mut() = Rc::new(Latch::default());
                }
                return l.clone();
            }
        }
        let l = Rc::new(Local {
            state: state.clone(),
            cores: self.cores,
            lease: Cell::new(0),
            speed: Cell::new(state.speed()),
            speed_left: Cell::new(0),
            spent: Cell::new(0),
            unleased: Cell::new(0),
            conns: Cell::new(0),
            cut: RefCell::new(Rc::new(Latch::default())),
            disconnects: Cell::new(state.disconnects()),
            metrics: self.metrics.clone(),
        });
        if let Some(old) = map.insert(state.name.clone(), l.clone()) {
            old.settle();
            old.state.give_back(old.lease.replace(0));
        }
        l
    }

    /// Periodic: settle spent bytes, return leases of accounts idle on this core, and
    /// cut connections of accounts that ran out (on any core) or that an operator
    /// disconnected.
    pub fn tick(&self) {
        self.locals.borrow_mut().retain(|_, l| {
            l.settle();
            let asked = l.state.disconnects();
            if asked != l.disconnects.replace(asked) {
                // The connections of now go; later ones get a fresh latch.
                let old = l.cut.replace(Rc::new(Latch::default()));
                old.fire_because(CUT_BY_OPERATOR);
            }
            l.speed.set(l.state.speed());
            if l.state.is_exhausted() {
                // Another core found the account used up: hand back what this core holds
                // (someone may still use it) and close the account's connections here.
                l.state.give_back(l.lease.replace(0));
                l.cut.borrow().fire();
            }
            if l.conns.get() == 0 {
                l.state.give_back(l.lease.replace(0));
                return false;
            }
            true
        });
    }

    /// Settle and return everything (shutdown).
    pub fn release_all(&self) {
        for (_, l) in self.locals.borrow_mut().drain() {
            l.settle();
            l.state.give_back(l.lease.replace(0));
        }
    }
}

/// A connection's tie to an account's shard: counts it as live on the core and refunds
/// bytes it read for the client but could not deliver.
pub struct Charge {
    local: Rc<Local>,
    /// Read from the upstream for the client, not yet written to it.
    pending_down: Cell<u64>,
    /// Set while the plan's speed holds this connection back: it wakes it.
    throttle: RefCell<Option<Pin<Box<glommio::timer::Timer>>>>,
}

impl Charge {
    pub fn new(local: Rc<Local>) -> Charge {
        local.conns.set(local.conns.get() + 1);
        Charge {
            local,
            pending_down: Cell::new(0),
            throttle: RefCell::new(None),
        }
    }

    /// How many of `want` bytes may be read now for this connection: `Ready(0)` = the
    /// plan's bandwidth is used up; `Pending` while the plan's speed holds it back (a timer
    /// wakes it) or a cluster node waits for a grant.
    pub fn poll_allow(&self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        loop {
            {
                let mut throttle = self.throttle.borrow_mut();
                if let Some(t) = throttle.as_mut() {
                    if t.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *throttle = None;
                }
            }
            match self.local.poll_grant(cx, want) {
                Poll::Ready(Grant::Bytes(n)) => return Poll::Ready(n),
                Poll::Ready(Grant::Throttled(wait)) => {
                    *self.throttle.borrow_mut() = Some(Box::pin(glommio::timer::Timer::new(wait)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Bytes received from the client.
    pub fn up(&self, n: u64) {
        self.local.take(n);
        self.local.bill(n);
    }

    /// Bytes read from the upstream on the client's behalf (already within the allowance).
    pub fn read_for_client(&self, n: u64) {
        self.local.take(n);
        self.pending_down.set(self.pending_down.get() + n);
    }

    /// Bill `n` bytes reserved earlier with [`Charge::read_for_client`] as received from
    /// the client (the head of a request, once it is relayed).
    pub fn commit_reserved(&self, n: u64) {
        let n = n.min(self.pending_down.get());
        self.pending_down.set(self.pending_down.get() - n);
        self.local.bill(n);
    }

    /// Give back `n` bytes reserved earlier (the exchange was refused, nothing relayed).
    pub fn release_reserved(&self, n: u64) {
        let n = n.min(self.pending_down.get());
        self.pending_down.set(self.pending_down.get() - n);
        self.local.refund(n);
    }

    /// Bytes written to the client.
    pub fn down(&self, n: u64) {
        let pending = self.pending_down.get();
        let covered = pending.min(n);
        self.pending_down.set(pending - covered);
        self.local.take(n - covered);
        self.local.bill(n);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.local.refund(self.pending_down.get());
        self.local.conns.set(self.local.conns.get() - 1);
        if self.local.conns.get() == 0 {
            // Bill promptly when the account's last connection on this core closes.
            self.local.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_capped_and_billing_is_exact() {
        let st = AccountState::new("a", 100_000, 10, 0, 0);
        let shard = Shard::new(2, Default::default());
        let c = Charge::new(shard.local(&st));
        let mut billed = 0u64;
        loop {
            let n = c.local().allowance(40_000) as u64;
            if n == 0 {
                break;
            }
            c.up(n / 2);
            c.read_for_client(n - n / 2);
            c.down(n - n / 2);
            billed += n;
        }
        drop(c);
        assert_eq!(billed, 100_000);
        assert_eq!(st.used(), 100_000);
        assert!(shard.local(&st).exhausted());
    }

    #[test]
    fn undelivered_bytes_are_refunded() {
        let st = AccountState::new("a", 1 << 20, 10, 0, 0);
        let shard = Shard::new(1, Default::default());
        let c = Charge::new(shard.local(&st));
        assert!(c.local().allowance(1000) > 0);
        c.read_for_client(1000);
        c.down(400);
        drop(c);
        shard.tick();
        assert_eq!(st.used(), 400);
        assert_eq!(st.remaining(), (1 << 20) - 400);
    }
}

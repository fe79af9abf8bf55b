//! One core's context: what a connection on this executor shares with its neighbours
//! without locks ([`Core`]: `Rc`, `Cell`, `RefCell`), and what every core shares
//! ([`Services`]: the published world, sticky sessions, the auth guard). A connection's
//! stages never get the whole of it: [`crate::conn::Ctx`] hands each the part it uses.

use crate::auth::guard::AuthGuard;
use crate::auth::CredCache;
use crate::exit::dns::DnsCache;
use crate::metrics::CoreMetrics;
use crate::plan::shard::Shard;
use crate::route::{Rotation, Sessions};
use crate::util::{BufPool, Latch, RELAY_BUF, RELAY_BUF_BULK};
use crate::world::World;
use arc_swap::ArcSwap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// What every core shares with the others.
#[derive(Clone)]
pub struct Services {
    /// The current world; a connection loads it once.
    pub world: Arc<ArcSwap<World>>,
    /// Sticky sessions (every core's table, and the cluster's store on a cluster node).
    pub sessions: Sessions,
    /// Failed-login tracking per source address.
    pub guard: Arc<AuthGuard>,
    /// Where refusals' error records go (support's lookups).
    pub trail: crate::support::Trail,
}

/// Per-core state, touched by this executor only.
pub struct Core {
    pub id: usize,
    pub creds: CredCache,
    pub dns: DnsCache,
    pub buffers: BufPool,
    /// Pipes of spliced tunnels, while their bytes are in flight.
    pub pipes: crate::relay::PipePool,
    /// This core's quota shard (bandwidth leases per account).
    pub quota: Shard,
    /// Round-robin position per candidate list.
    pub rotation: Rotation,
    /// This core's counters, summed by the admin endpoint at scrape time.
    pub metrics: Arc<CoreMetrics>,
    /// Fired once when the gateway starts draining.
    pub drain: Latch,
    /// Fired when the drain timeout passes: the connections still open end now (and
    /// write their access lines, `end=drain`).
    pub stop: Latch,
    live: Live,
}

/// One executor: its core and its handle on the shared services.
pub struct Worker {
    pub core: Core,
    pub services: Services,
}

/// Live client connections on this core, and who waits for them all to close.
#[derive(Default)]
struct Live {
    active: Cell<usize>,
    idle: RefCell<Vec<Waker>>,
}

impl Worker {
    pub fn new(
        id: usize,
        workers: usize,
        services: Services,
        metrics: Arc<CoreMetrics>,
    ) -> Rc<Worker> {
        let dns = DnsCache::new(&services.world.load().config.dns, metrics.clone());
        Rc::new(Worker {
            core: Core {
                id,
                creds: CredCache::default(),
                dns,
                buffers: BufPool::new(RELAY_BUF, 256, RELAY_BUF_BULK, 32),
                pipes: crate::relay::PipePool::new(64),
                quota: Shard::new(workers, metrics.clone()),
                rotation: Rotation::new(id),
                metrics,
                drain: Latch::default(),
                stop: Latch::default(),
                live: Live::default(),
            },
            services,
        })
    }

    pub fn active(&self) -> usize {
        self.core.live.active.get()
    }

    /// Count a connection as live until the guard drops.
    pub fn track(self: &Rc<Self>) -> ConnGuard {
        let n = self.active() + 1;
        self.core.live.active.set(n);
        self.core.metrics.active.store(n as i64, Ordering::Relaxed);
        ConnGuard(self.clone())
    }

    /// Resolves when no connection is live on this core.
    pub async fn all_closed(&self) {
        std::future::poll_fn(|cx| {
            if self.active() == 0 {
                Poll::Ready(())
            } else {
                self.core.live.idle.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Keeps a connection counted in [`Worker::active`].
pub struct ConnGuard(Rc<Worker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let core = &self.0.core;
        let n = core.live.active.get() - 1;
        core.live.active.set(n);
        core.metrics.active.store(n as i64, Ordering::Relaxed);
        if n == 0 {
            for w in core.live.idle.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

impl Core {
    /// Where this core's relays keep bytes in flight; pipes only with `[server] splice`.
    pub fn pools(&self, splice: bool) -> crate::relay::Pools<'_> {
        crate::relay::Pools {
            buffers: &self.buffers,
            pipes: splice.then_some(&self.pipes),
        }
    }
}

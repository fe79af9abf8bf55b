//! One core's context: everything a connection on this executor shares with its neighbours
//! without locks (`Rc`, `Cell`, `RefCell`), plus the handle to the shared snapshot.

use crate::auth::guard::AuthGuard;
use crate::auth::CredCache;
use crate::cluster::Cluster;
use crate::config::Snapshot;
use crate::exit::dns::DnsCache;
use crate::metrics::CoreMetrics;
use crate::plan::shard::Shard;
use crate::route::sessions::SessionTable;
use crate::util::{BufPool, Latch, RELAY_BUF, RELAY_BUF_BULK};
use arc_swap::ArcSwap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// What every core shares with the others.
pub struct Shared {
    pub sessions: Arc<SessionTable>,
    pub guard: Arc<AuthGuard>,
    pub cluster: Option<Arc<Cluster>>,
}

/// Per-core state. One per executor, shared by its connections through `Rc`.
pub struct Worker {
    pub id: usize,
    pub config: Arc<ArcSwap<Snapshot>>,
    pub creds: CredCache,
    pub dns: DnsCache,
    pub buffers: BufPool,
    /// This core's quota shard (bandwidth leases per account).
    pub quota: Shard,
    /// This core's counters, summed by the admin endpoint at scrape time.
    pub metrics: Arc<CoreMetrics>,
    /// Fired once when the gateway starts draining.
    pub drain: Latch,
    /// Fired when the drain timeout passes: the connections still open end now (and
    /// write their access lines, `end=drain`).
    pub stop: Latch,
    /// Live client connections on this core.
    active: Cell<usize>,
    /// Fired whenever `active` drops to zero.
    idle: RefCell<Vec<Waker>>,
    /// Sticky sessions, shared by every core.
    pub sessions: Arc<SessionTable>,
    /// Failed-login tracking per source address, shared by every core.
    pub guard: Arc<AuthGuard>,
    /// Set when sessions (and plans) are shared with other nodes.
    pub cluster: Option<Arc<Cluster>>,
    /// Round-robin position per candidate list (list ids from the snapshot's exit index).
    rotation: RefCell<Vec<usize>>,
}

impl Worker {
    pub fn new(
        id: usize,
        workers: usize,
        config: Arc<ArcSwap<Snapshot>>,
        shared: Shared,
        metrics: Arc<CoreMetrics>,
    ) -> Rc<Worker> {
        let snap = config.load();
        let dns = DnsCache::new(&snap.dns, metrics.clone());
        drop(snap);
        Rc::new(Worker {
            id,
            config,
            creds: CredCache::default(),
            dns,
            buffers: BufPool::new(RELAY_BUF, 256, RELAY_BUF_BULK, 32),
            quota: Shard::new(workers, metrics.clone()),
            metrics,
            drain: Latch::default(),
            stop: Latch::default(),
            active: Cell::new(0),
            idle: RefCell::new(Vec::new()),
            sessions: shared.sessions,
            guard: shared.guard,
            cluster: shared.cluster,
            rotation: RefCell::new(Vec::new()),
        })
    }

    /// Next exit of candidate list `list` in rotation, skipping those already `tried` and
    /// those benched at `now`.
    pub fn pick(
        &self,
        snap: &Snapshot,
        list: usize,
        tried: &[usize],
        now: Instant,
    ) -> Option<usize> {
        let members = snap.index.members(list);
        if members.is_empty() {
            return None;
        }
        let start = {
            let mut rot = self.rotation.borrow_mut();
            if rot.len() <= list {
                // Cores start at different offsets so they do not move in lockstep.
                rot.resize(snap.index.lists().max(list + 1), self.id);
            }
            let start = rot[list];
            rot[list] = start.wrapping_add(1);
            start
        };
        (0..members.len())
            .map(|k| members[(start + k) % members.len()])
            .find(|i| !tried.contains(i) && !snap.exits[*i].health.is_benched(now))
    }

    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Count a connection as live until the guard drops.
    pub fn track(self: &Rc<Self>) -> ConnGuard {
        self.active.set(self.active.get() + 1);
        self.metrics.active.store(
            self.active.get() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        ConnGuard(self.clone())
    }

    /// Resolves when no connection is live on this core.
    pub async fn all_closed(&self) {
        std::future::poll_fn(|cx| {
            if self.active.get() == 0 {
                Poll::Ready(())
            } else {
                self.idle.borrow_mut().push(cx.waker().clone());
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
        let n = self.0.active.get() - 1;
        self.0.active.set(n);
        self.0
            .metrics
            .active
            .store(n as i64, std::sync::atomic::Ordering::Relaxed);
        if n == 0 {
            for w in self.0.idle.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

//! Scale-out: several gateway nodes enforce one plan per account through Redis.
//!
//! What is shared: thread slots (a Lua script takes one per connection, atomically against
//! every node's count), bandwidth (each node is *granted* bytes by a script that keeps the
//! plan's total, and leases them to its cores as a single node does), and sticky sessions
//! (the exit a session is bound to, with its TTL). A node that dies stops renewing its
//! heartbeat; after `node_ttl` its slots and unspent grants count for nobody.
//!
//! Why a dedicated thread: glommio executors must never block, redis-rs's async client
//! needs a tokio runtime, and one thread per node lets every core's requests share one
//! connection, pipelined in batches (one round trip serves everything queued meanwhile).
//! Executors talk to it over channels; a reply wakes the waiting task on its own core.
//! The thread is in `node/`.

pub mod accounts;
mod link;
mod node;
pub mod scripts;
pub mod trail;
pub mod usage;

use crate::config::{ClusterSection, DownPolicy};
use crate::plan::ledger::AccountState;
pub use crate::plan::Down;
use crate::plan::{SharedPlan, SharedSlot};
use crate::route::choose::{Binding, SharedSessions};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request from an executor to the cluster thread.
enum Req {
    /// Take one of the account's thread slots across the cluster.
    Acquire {
        state: Arc<AccountState>,
        reply: flume::Sender<Result<SharedSlot, Down>>,
    },
    /// Give one back.
    Release(Arc<AccountState>),
    /// One of the account's slots here is closing: write the count for the other nodes.
    Closing(Arc<AccountState>),
    /// Grant the node more of the account's bandwidth (wakes the account's waiters).
    Grant(Arc<AccountState>),
    /// Bind (or read) a sticky session; answers the exit and the TTL left.
    Bind {
        key: String,
        exit: String,
        ttl: Duration,
        reply: flume::Sender<Result<(String, Duration), Down>>,
    },
    /// Move a session off a failed exit.
    Replace {
        key: String,
        failed: String,
        exit: String,
        ttl: Duration,
        reply: flume::Sender<Result<(String, Duration), Down>>,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub up: AtomicBool,
    /// Round trips to Redis (each carries a batch).
    pub round_trips: AtomicU64,
    /// Commands sent (scripts and writes).
    pub commands: AtomicU64,
    /// Connection attempts and calls that failed.
    pub errors: AtomicU64,
    /// Connections admitted under `fail-open` while Redis was down.
    pub admitted_down: AtomicU64,
    /// Connections refused under `fail-closed` while Redis was down.
    pub refused_down: AtomicU64,
    /// Nodes alive at the last heartbeat (this one included); 0 before the first.
    pub nodes: AtomicU64,
}

/// The node's handle on the cluster, shared by every core.
pub struct Cluster {
    pub cfg: ClusterSection,
    /// This run of this node: `<node>.<pid>.<random>`. A restarted node is a new
    /// incarnation; the old one's entries lapse with its heartbeat.
    pub me: String,
    pub stats: Arc<Stats>,
    tx: flume::Sender<Option<Req>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    /// Connect to Redis (waiting at most `redis_timeout`) and start the cluster thread.
    /// Redis need not be up yet: the thread keeps trying, and admissions follow
    /// `on_redis_down` meanwhile.
    pub fn start(cfg: ClusterSection) -> Result<Arc<Cluster>, String> {
        let me = format!(
            "{}.{}.{:04x}",
            cfg.node,
            std::process::id(),
            fastrand::u16(..)
        );
        let stats = Arc::new(Stats::default());
        let (tx, rx) = flume::unbounded();
        let mut node = node::Node::new(cfg.clone(), me.clone(), stats.clone())?;
        // Connect before serving, so the first connections already count in the cluster.
        node.connect();
        let thread = std::thread::Builder::new()
            .name("tollgate-cluster".into())
            .spawn(move || node.run(rx))
            .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
        Ok(Arc::new(Cluster {
            cfg,
            me,
            stats,
            tx,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn is_up(&self) -> bool {
        self.stats.up.load(Ordering::Relaxed)
    }

    fn send(&self, req: Req) -> bool {
        self.tx.send(Some(req)).is_ok()
    }

    /// The longest an executor waits for an answer: a batch's call plus one queued ahead.
    fn patience(&self) -> Duration {
        self.cfg.redis_timeout.0 * 2 + Duration::from_millis(100)
    }

    /// Send the request `make` builds around a reply channel and wait for the answer;
    /// `Down` at once while Redis is known to be unreachable.
    async fn ask<T>(
        &self,
        make: impl FnOnce(flume::Sender<Result<T, Down>>) -> Req,
    ) -> Result<T, Down> {
        if !self.is_up() {
            return Err(Down);
        }
        let (reply, rx) = flume::bounded(1);
        if !self.send(make(reply)) {
            return Err(Down);
        }
        match crate::util::within(self.patience(), rx.recv_async()).await {
            Some(Ok(answer)) => answer,
            _ => Err(Down),
        }
    }

    /// Settle usage, hand back unspent grants and leave the cluster (after the executors
    /// have stopped). Waits for the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(None);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The plan's seam, over Redis: slots are counted and bandwidth granted by the node thread.
impl SharedPlan for Cluster {
    fn acquire<'a>(
        &'a self,
        state: &'a Arc<AccountState>,
    ) -> Pin<Box<dyn Future<Output = Result<SharedSlot, Down>> + 'a>> {
        let state = state.clone();
        Box::pin(self.ask(|reply| Req::Acquire { state, reply }))
    }

    fn release(&self, state: &Arc<AccountState>) {
        self.send(Req::Release(state.clone()));
    }

    fn closing(&self, state: &Arc<AccountState>) {
        self.send(Req::Closing(state.clone()));
    }

    fn request_grant(&self, state: &Arc<AccountState>) {
        if state.begin_grant() && !self.send(Req::Grant(state.clone())) {
            state.finish_grant();
        }
    }

    fn on_down(&self) -> DownPolicy {
        self.cfg.on_redis_down
    }

    fn nodes(&self) -> u64 {
        self.stats.nodes.load(Ordering::Relaxed).max(1)
    }

    fn count_down(&self, admitted: bool) {
        let n = match admitted {
            true => &self.stats.admitted_down,
            false => &self.stats.refused_down,
        };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// The route's seam for sticky sessions, over Redis: every node sees one binding.
impl SharedSessions for Cluster {
    fn bind<'a>(
        &'a self,
        key: &'a str,
        exit: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<Binding>> + 'a>> {
        Box::pin(async move {
            let ask = self.ask(|reply| Req::Bind {
                key: key.to_owned(),
                exit: exit.to_owned(),
                ttl,
                reply,
            });
            ask.await.ok()
        })
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        failed: &'a str,
        exit: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<Binding>> + 'a>> {
        Box::pin(async move {
            let ask = self.ask(|reply| Req::Replace {
                key: key.to_owned(),
                failed: failed.to_owned(),
                exit: exit.to_owned(),
                ttl,
                reply,
            });
            ask.await.ok()
        })
    }
}

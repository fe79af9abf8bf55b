//! The cluster thread: one Redis connection per node, requests from every core pipelined
//! in batches, plus the periodic work: heartbeat, usage, idle grants handed back, and
//! accounts found used up asked again (a top-up on any node lifts the block).
//!
//! Every count this thread writes for itself is absolute (`HSET`), never a delta: a call
//! repeated after a lost reply, or replayed after Redis lost its data, changes nothing.

mod link;
mod replies;

use super::scripts::{evalsha, Keys, Scripts};
use super::{Down, Req, Stats};
use crate::config::ClusterSection;
use crate::plan::ledger::AccountState;
use crate::plan::SharedSlot;
use ahash::AHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Smallest and largest grant of bytes from Redis to a node.
pub const MIN_GRANT: u64 = 64 * 1024;
pub const MAX_GRANT: u64 = 16 * 1024 * 1024;
/// A grant this node gives itself while Redis is down (within `down_allowance`).
const DOWN_GRANT: u64 = 1024 * 1024;
/// How often usage and grants are written back.
const SETTLE_EVERY: Duration = Duration::from_millis(250);
/// How often a lost connection is retried.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Requests served in one round trip at most.
const BATCH: usize = 512;

/// One account, as this node has told Redis about it.
struct Acct {
    state: Arc<AccountState>,
    /// Thread slots this node holds in Redis.
    held: u32,
    held_written: u32,
    /// Of those, slots closing as last written (the live count is the state's).
    closing_written: u32,
    /// (bytes spent since start, unspent grant) last written.
    bw_written: Option<(u64, u64)>,
    /// Bytes granted to itself during the current outage.
    down_granted: u64,
}

/// What to do with one reply of a batch.
enum Then {
    Ignore,
    Acquired(String, flume::Sender<Result<SharedSlot, Down>>),
    Granted(String),
    Session(flume::Sender<Result<(String, Duration), Down>>),
    Heartbeat,
}

pub(super) struct Node {
    cfg: ClusterSection,
    me: String,
    stats: Arc<Stats>,
    client: redis::Client,
    conn: Option<redis::Connection>,
    scripts: Scripts,
    keys: Keys,
    accounts: AHashMap<String, Acct>,
    /// Write every count again (after a reconnect or a lapsed heartbeat).
    resync: bool,
    /// The current outage was logged.
    warned: bool,
    next_beat: Instant,
    next_settle: Instant,
    next_retry: Instant,
}

impl Node {
    pub fn new(cfg: ClusterSection, me: String, stats: Arc<Stats>) -> Result<Node, String> {
        let client = redis::Client::open(cfg.redis.as_str())
            .map_err(|e| format!("[cluster] redis = {:?}: {e}", cfg.redis_for_logs()))?;
        let now = Instant::now();
        Ok(Node {
            keys: Keys {
                prefix: cfg.key_prefix.clone(),
            },
            cfg,
            me,
            stats,
            client,
            conn: None,
            scripts: Scripts::new(),
            accounts: AHashMap::new(),
            resync: true,
            warned: false,
            next_beat: now,
            next_settle: now,
            next_retry: now,
        })
    }

    pub fn run(mut self, rx: flume::Receiver<Option<Req>>) {
        let mut stop = false;
        while !stop {
            let now = Instant::now();
            let mut next = self.next_settle.min(self.next_beat);
            if self.conn.is_none() {
                next = next.min(self.next_retry);
            }
            let mut batch = Vec::new();
            match rx.recv_timeout(next.saturating_duration_since(now)) {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(flume::RecvTimeoutError::Disconnected) => stop = true,
                Err(flume::RecvTimeoutError::Timeout) => {}
            }
            while !stop && batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) => stop = true,
                    Err(_) => break,
                }
            }
            if self.conn.is_none() && Instant::now() >= self.next_retry {
                self.connect();
            }
            if !batch.is_empty() {
                self.serve(batch);
            }
            let now = Instant::now();
            if now >= self.next_beat || self.resync {
                self.maintain();
            } else if now >= self.next_settle {
                self.settle(false);
            }
        }
        self.leave();
    }

    fn acct(&mut self, state: &Arc<AccountState>) -> &mut Acct {
        self.accounts
            .entry(state.name.clone())
            .or_insert_with(|| Acct {
                state: state.clone(),
                held: 0,
                held_written: 0,
                closing_written: 0,
                bw_written: None,
                down_granted: 0,
            })
    }

    /// Serve a batch of requests in one round trip (or locally while Redis is down).
    fn serve(&mut self, batch: Vec<Req>) {
        let mut cmds = Vec::with_capacity(batch.len() + 4);
        let mut then = Vec::with_capacity(batch.len() + 4);
        // Releases (and closings) first, as absolute counts, so the acquires of this batch
        // count on top.
        let mut released: Vec<String> = Vec::new();
        for r in &batch {
            let state = match r {
                Req::Release(state) => {
                    let a = self.acct(state);
                    a.held = a.held.saturating_sub(1);
                    state
                }
                Req::Closing(state) => {
                    self.acct(state);
                    state
                }
                _ => continue,
            };
            if !released.contains(&state.name) {
                released.push(state.name.clone());
            }
        }
        for name in &released {
            for c in self.slot_writes(name) {
                cmds.push(c);
                then.push(Then::Ignore);
            }
        }
        let nodes = self.keys.nodes();
        for r in batch {
            match r {
                Req::Release(_) | Req::Closing(_) => {}
                Req::Acquire { state, reply } => {
                    let threads = state.threads();
                    self.acct(&state);
                    let mut c = evalsha(
                        &self.scripts.acquire,
                        &[
                            &self.keys.threads(&state.name),
                            &nodes,
                            &self.keys.closing(&state.name),
                        ],
                    );
                    c.arg(threads).arg(&self.me);
                    cmds.push(c);
                    then.push(Then::Acquired(state.name.clone(), reply));
                }
                Req::Grant(state) => {
                    self.acct(&state);
                    cmds.push(self.grant_cmd(&state));
                    then.push(Then::Granted(state.name.clone()));
                }
                Req::Bind {
                    key,
                    exit,
                    ttl,
                    reply,
                } => {
                    let mut c = evalsha(&self.scripts.bind, &[&self.keys.session(&key)]);
                    c.arg(exit).arg(ttl.as_millis().max(1) as u64);
                    cmds.push(c);
                    then.push(Then::Session(reply));
                }
                Req::Replace {
                    key,
                    failed,
                    exit,
                    ttl,
                    reply,
                } => {
                    let mut c = evalsha(&self.scripts.replace, &[&self.keys.session(&key)]);
                    c.arg(failed).arg(exit).arg(ttl.as_millis().max(1) as u64);
                    cmds.push(c);
                    then.push(Then::Session(reply));
                }
            }
        }
        let values = self.call(&cmds);
        self.finish(then, values);
    }

    /// The writes of what changed in `name`'s slot counts: held, and closing.
    fn slot_writes(&mut self, name: &str) -> impl Iterator<Item = redis::Cmd> {
        [self.held_write(name), self.closing_write(name)]
            .into_iter()
            .flatten()
    }

    /// `name`'s count of closing slots, if it changed (0 once nothing is held).
    fn closing_write(&mut self, name: &str) -> Option<redis::Cmd> {
        let key = self.keys.closing(name);
        let a = self.accounts.get_mut(name)?;
        let now = if a.held == 0 {
            0
        } else {
            a.state.closing().min(a.held)
        };
        if a.closing_written == now && !self.resync {
            return None;
        }
        a.closing_written = now;
        let mut c = if now == 0 {
            redis::cmd("HDEL")
        } else {
            redis::cmd("HSET")
        };
        c.arg(key).arg(&self.me);
        if now > 0 {
            c.arg(now);
        }
        Some(c)
    }

    /// `HSET`/`HDEL` of this node's slot count for `name`, when it changed.
    fn held_write(&mut self, name: &str) -> Option<redis::Cmd> {
        let key = self.keys.threads(name);
        let a = self.accounts.get_mut(name)?;
        if a.held_written == a.held && !self.resync {
            return None;
        }
        a.held_written = a.held;
        let mut c = if a.held == 0 {
            redis::cmd("HDEL")
        } else {
            redis::cmd("HSET")
        };
        c.arg(key).arg(&self.me);
        if a.held > 0 {
            c.arg(a.held);
        }
        Some(c)
    }

    fn grant_cmd(&self, state: &AccountState) -> redis::Cmd {
        let mut c = evalsha(
            &self.scripts.grant,
            &[
                &self.keys.bw(&state.name),
                &self.keys.nodes(),
                &self.keys.periods(&state.name),
            ],
        );
        c.arg(state.plan_bandwidth())
            .arg(&self.me)
            .arg(MIN_GRANT)
            .arg(MAX_GRANT)
            .arg(state.period().start_of(crate::util::wall_now()));
        c
    }

    /// Heartbeat, then (re)write counts, usage and grants; ask again for used-up accounts.
    fn maintain(&mut self) {
        let now = Instant::now();
        self.next_beat = now + self.cfg.node_ttl.0 / 3;
        if self.conn.is_none() {
            return;
        }
        let mut c = evalsha(&self.scripts.heartbeat, &[&self.keys.nodes()]);
        c.arg(&self.me).arg(self.cfg.node_ttl.0.as_millis() as u64);
        let v = self.call(&[c]);
        self.finish(vec![Then::Heartbeat], v);
        if self.conn.is_none() {
            return;
        }
        self.settle(false);
        if self.conn.is_none() {
            return;
        }
        // Used-up accounts: a top-up or a reset (on any node) lets them through again.
        let mut cmds = Vec::new();
        let mut then = Vec::new();
        for (name, a) in &self.accounts {
            if a.state.is_exhausted() && a.state.begin_grant() {
                cmds.push(self.grant_cmd(&a.state));
                then.push(Then::Granted(name.clone()));
            }
        }
        let v = self.call(&cmds);
        if v.is_some() {
            self.finish(then, v);
        } else {
            for t in then {
                if let Then::Granted(name) = t {
                    if let Some(a) = self.accounts.get(&name) {
                        a.state.finish_grant();
                    }
                }
            }
        }
    }

    /// Write what changed: usage, unspent grants (handing back those of accounts with no
    /// live connection here, or all of them when `all`), slot counts after a resync.
    fn settle(&mut self, all: bool) {
        self.next_settle = Instant::now() + SETTLE_EVERY;
        if self.conn.is_none() {
            return;
        }
        let resync = self.resync;
        let mut cmds = Vec::new();
        let names: Vec<String> = self.accounts.keys().cloned().collect();
        for name in names {
            if resync {
                cmds.extend(self.slot_writes(&name));
            }
            let key = self.keys.bw(&name);
            let Some(a) = self.accounts.get_mut(&name) else {
                continue;
            };
            if all || a.state.active() == 0 {
                a.state.reclaim();
            }
            let now = (a.state.used(), a.state.unspent_grant());
            if resync || a.bw_written != Some(now) {
                a.bw_written = Some(now);
                let mut c = evalsha(&self.scripts.settle, &[&key]);
                c.arg(&self.me).arg(now.0).arg(now.1);
                cmds.push(c);
            }
        }
        if self.call(&cmds).is_some() {
            self.resync = false;
            // Forget accounts no longer configured once nothing of theirs is outstanding.
            self.accounts.retain(|_, a| {
                Arc::strong_count(&a.state) > 1
                    || a.held > 0
                    || a.closing_written > 0
                    || a.state.unspent_grant() > 0
            });
        }
    }

    /// Shutdown: hand everything back and leave the cluster.
    fn leave(&mut self) {
        if self.conn.is_none() {
            self.connect();
        }
        self.settle(true);
        let mut cmds: Vec<redis::Cmd> = Vec::new();
        let names: Vec<String> = self.accounts.keys().cloned().collect();
        for name in names {
            if let Some(a) = self.accounts.get_mut(&name) {
                a.held = 0;
            }
            cmds.extend(self.slot_writes(&name));
        }
        let mut bye = redis::cmd("HDEL");
        bye.arg(self.keys.nodes()).arg(&self.me);
        cmds.push(bye);
        match self.call(&cmds) {
            Some(_) => tracing::info!(node = %self.me, "left the cluster; usage written"),
            None => tracing::error!(
                node = %self.me,
                "redis unreachable at shutdown: this node's last usage is not written; its \
                 slots and grants lapse after node_ttl"
            ),
        }
    }
}

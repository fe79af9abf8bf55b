//! Which exit carries a connection, attempt by attempt: a sticky session's bound exit
//! first (bound in the shared table, and in Redis on a cluster node), otherwise the next
//! exit of the route's candidates in this core's rotation; benched exits and exits already
//! tried are skipped. The outcome of each attempt feeds the exit's health (benching) and,
//! when a session's exit failed, moves the session. The exit module only connects.

use super::health::Exits;
use super::sessions::SessionTable;
use super::{Route, Sticky};
use crate::config::{Snapshot, MAX_RETRIES};
use crate::error::ProxyError;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A binding answered by a shared session store: the exit's name and the TTL left.
pub type Binding = (String, Duration);

type Answer<'a> = Pin<Box<dyn Future<Output = Option<Binding>> + 'a>>;

/// The route's seam to sessions shared with other nodes; `cluster` implements it over
/// Redis. `None` answers mean the store could not be asked: the local table decides then.
pub trait SharedSessions: Send + Sync {
    /// Bind `key` to `exit` for `ttl` unless it is bound already (on any node).
    fn bind<'a>(&'a self, key: &'a str, exit: &'a str, ttl: Duration) -> Answer<'a>;
    /// Move `key` from `failed` to `exit` unless another node moved it already.
    fn replace<'a>(
        &'a self,
        key: &'a str,
        failed: &'a str,
        exit: &'a str,
        ttl: Duration,
    ) -> Answer<'a>;
}

/// Sticky sessions: every core's table, and the cluster's store when there is one.
#[derive(Clone)]
pub struct Sessions {
    pub table: Arc<SessionTable>,
    pub shared: Option<Arc<dyn SharedSessions>>,
}

impl Sessions {
    /// The exit `st` is bound to, binding `pick` first if it has none.
    async fn bound(&self, st: &Sticky, pick: Option<&str>, now: Instant) -> Option<String> {
        if let (Some(shared), Some(pick)) = (&self.shared, pick) {
            if let Some((exit, left)) = shared.bind(&st.key, pick, st.ttl).await {
                self.table.put(&st.key, &exit, left, Instant::now());
                return Some(exit);
            }
        }
        if let Some(exit) = self.table.get(&st.key, now) {
            return Some(exit);
        }
        Some(self.table.bind(&st.key, pick?, st.ttl, now))
    }

    /// Move session `st` off `failed` onto `exit`.
    async fn moved(&self, st: &Sticky, failed: &str, exit: &str, now: Instant) {
        if let Some(shared) = &self.shared {
            if let Some((exit, left)) = shared.replace(&st.key, failed, exit, st.ttl).await {
                self.table.put(&st.key, &exit, left, Instant::now());
                return;
            }
        }
        self.table.replace(&st.key, failed, exit, st.ttl, now);
    }
}

/// This core's round-robin position per candidate list.
pub struct Rotation {
    /// Cores start at different offsets so they do not move in lockstep.
    offset: usize,
    at: RefCell<Vec<usize>>,
}

impl Rotation {
    pub fn new(offset: usize) -> Rotation {
        Rotation {
            offset,
            at: RefCell::new(Vec::new()),
        }
    }

    /// Next exit of candidate list `list`, skipping those `tried` and those benched.
    pub fn next(&self, exits: &Exits, list: usize, tried: &[usize], now: Instant) -> Option<usize> {
        let members = exits.index.members(list);
        if members.is_empty() {
            return None;
        }
        let start = {
            let mut at = self.at.borrow_mut();
            if at.len() <= list {
                at.resize(exits.index.lists().max(list + 1), self.offset);
            }
            let start = at[list];
            at[list] = start.wrapping_add(1);
            start
        };
        (0..members.len())
            .map(|k| members[(start + k) % members.len()])
            .find(|i| !tried.contains(i) && !exits.is_benched(*i, now))
    }
}

/// What choosing an exit reads: the world's exits and config, and this core's rotation.
#[derive(Clone, Copy)]
pub struct Chooser<'a> {
    pub snap: &'a Snapshot,
    pub exits: &'a Exits,
    pub rotation: &'a Rotation,
    pub sessions: &'a Sessions,
}

/// One connection's choice of exit, attempt by attempt (at most `1 + retries`).
pub struct Choice<'a> {
    with: Chooser<'a>,
    route: &'a Route,
    now: Instant,
    /// The sticky session's exit, when it has one this route may use.
    bound: Option<usize>,
    /// Exits tried so far: on the stack, no allocation.
    tried: [usize; 1 + MAX_RETRIES as usize],
    n: usize,
    attempts: usize,
}

impl<'a> Choice<'a> {
    /// Start choosing for `route` (binding its sticky session first if it has none).
    pub async fn start(with: Chooser<'a>, route: &'a Route) -> Choice<'a> {
        let now = Instant::now();
        let bound = match &route.sticky {
            Some(st) => {
                let pick = with.rotation.next(with.exits, route.list, &[], now);
                let pick = pick.map(|i| with.snap.exits[i].name.as_str());
                let exit = with.sessions.bound(st, pick, now).await;
                exit.and_then(|n| usable(with, route, &n))
            }
            None => None,
        };
        let tried = [usize::MAX; 1 + MAX_RETRIES as usize];
        Choice {
            with,
            route,
            now,
            bound,
            tried,
            n: 0,
            attempts: (1 + with.snap.routing.retries as usize).min(tried.len()),
        }
    }

    /// The exit of the next attempt; `None` when every attempt is spent or no exit is left.
    pub fn next_exit(&mut self) -> Option<usize> {
        if self.n >= self.attempts {
            return None;
        }
        let w = self.with;
        let exit = match self
            .bound
            .filter(|b| self.n == 0 && !w.exits.is_benched(*b, self.now))
        {
            Some(b) => b,
            None => w
                .rotation
                .next(w.exits, self.route.list, &self.tried[..self.n], self.now)?,
        };
        self.tried[self.n] = exit;
        self.n += 1;
        Some(exit)
    }

    fn name(&self, exit: usize) -> &'a str {
        self.with.snap.exits[exit].name.as_str()
    }

    /// `exit` carried the connection. A session whose exit failed moves to it for the rest
    /// of its TTL.
    pub async fn served(&self, exit: usize) {
        self.with.exits.health(exit).success();
        if let (Some(st), Some(b)) = (&self.route.sticky, self.bound) {
            if b != exit {
                let (failed, to) = (self.name(b), self.name(exit));
                self.with.sessions.moved(st, failed, to, self.now).await;
                tracing::info!(exit = to, failed, "sticky session moved");
            }
        }
    }

    /// The target failed through `exit`: the exit itself works.
    pub fn target_failed(&self, exit: usize) {
        self.with.exits.health(exit).success();
    }

    /// `exit` itself failed: counts towards benching it.
    pub fn exit_failed(&self, exit: usize, e: &ProxyError) {
        let name = self.name(exit);
        let r = &self.with.snap.routing;
        tracing::warn!(exit = name, error = %e, "exit failed");
        if self
            .with
            .exits
            .health(exit)
            .failure(r.bench_after, r.bench_for.0, self.now)
        {
            tracing::warn!(exit = name, cooldown = ?r.bench_for.0, "exit benched after repeated failures");
        }
    }

    /// A failure that may be the target's or the exit's: benches the exit only when several
    /// targets (`target` is one's hash) of several accounts failed through it.
    pub fn unclear(&self, exit: usize, target: u64, e: &ProxyError) {
        let name = self.name(exit);
        let r = &self.with.snap.routing;
        tracing::info!(exit = name, error = %e, "exit or target failed (unclear which)");
        let health = self.with.exits.health(exit);
        if health.unclear_failure(
            target,
            self.route.tenant,
            r.bench_after,
            r.bench_for.0,
            self.now,
        ) {
            tracing::warn!(
                exit = name,
                cooldown = ?r.bench_for.0,
                "exit benched: several accounts' targets failed through it"
            );
        }
    }
}

/// The exit named `name`, if `route` may use it.
fn usable(with: Chooser<'_>, route: &Route, name: &str) -> Option<usize> {
    let i = *with.snap.exit_by_name.get(name)?;
    with.exits
        .index
        .members(route.list)
        .contains(&i)
        .then_some(i)
}

/// May a connection already open through `exit` carry another request on `route`? Only
/// when `route` may use that exit: for a sticky session, it is the session's exit now; when
/// every request takes the next exit (`per_request`), it is the only candidate.
pub fn may_reuse(with: Chooser<'_>, route: &Route, exit: usize, per_request: bool) -> bool {
    let members = with.exits.index.members(route.list);
    members.contains(&exit)
        && (!per_request || members.len() == 1)
        && route.sticky.as_ref().is_none_or(|st| {
            with.sessions.table.get(&st.key, Instant::now()).as_deref()
                == Some(with.snap.exits[exit].name.as_str())
        })
}

//! The node's Redis link: connecting (and loading the scripts), noticing it went down, and
//! one pipelined round trip per batch.

use super::{Node, RETRY_EVERY};
use redis::{ConnectionLike, Value};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Node {
    pub fn connect(&mut self) {
        let timeout = self.cfg.redis_timeout.0;
        let res = self
            .client
            .get_connection_with_timeout(timeout)
            .and_then(|mut c| {
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                for s in self.scripts.all() {
                    s.load(&mut c)?;
                }
                Ok(c)
            });
        match res {
            Ok(c) => {
                tracing::info!(node = %self.me, redis = %self.cfg.redis_for_logs(), "connected to redis");
                self.conn = Some(c);
                self.resync = true;
                self.next_beat = Instant::now();
                for a in self.accounts.values_mut() {
                    a.down_granted = 0;
                }
                self.stats.up.store(true, Ordering::Relaxed);
                self.warned = false;
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.next_retry = Instant::now() + RETRY_EVERY;
                self.went_down(&e);
            }
        }
    }

    pub(super) fn went_down(&mut self, e: &redis::RedisError) {
        self.conn = None;
        self.resync = true;
        self.stats.up.store(false, Ordering::Relaxed);
        if !std::mem::replace(&mut self.warned, true) {
            tracing::error!(
                node = %self.me,
                error = %e,
                policy = ?self.cfg.on_redis_down,
                "redis unreachable; live tunnels go on within down_allowance, new admissions \
                 follow on_redis_down"
            );
        }
        self.next_retry = Instant::now() + RETRY_EVERY;
    }

    /// Send `cmds` in one round trip; `None` when the connection failed (it is dropped).
    pub(super) fn call(&mut self, cmds: &[redis::Cmd]) -> Option<Vec<Value>> {
        if cmds.is_empty() {
            return Some(Vec::new());
        }
        let conn = self.conn.as_mut()?;
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.add_command(c.clone());
        }
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(cmds.len() as u64, Ordering::Relaxed);
        match conn.req_packed_commands(&pipe.get_packed_pipeline(), 0, cmds.len()) {
            Ok(values) if values.len() == cmds.len() => {
                // A script missing from Redis means it restarted: reconnect and reload.
                if values
                    .iter()
                    .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
                {
                    let e = redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
                        "scripts lost",
                    ));
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.went_down(&e);
                    return None;
                }
                Some(values)
            }
            Ok(_) => {
                let e = redis::RedisError::from((redis::ErrorKind::Client, "short reply"));
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.went_down(&e);
                None
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.went_down(&e);
                None
            }
        }
    }
}

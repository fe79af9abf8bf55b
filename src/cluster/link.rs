//! A blocking Redis connection made on first use and again after it fails, for the
//! cluster's stores read and written off the executors (the API's accounts, the support
//! trail, hourly buckets). The node's own link to Redis is `node/link.rs`.

use crate::config::ClusterSection;

pub struct Lazy {
    cfg: ClusterSection,
    client: redis::Client,
    conn: Option<redis::Connection>,
}

impl Lazy {
    pub fn open(cfg: &ClusterSection) -> Result<Lazy, String> {
        let client = redis::Client::open(cfg.redis.as_str())
            .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))?;
        Ok(Lazy {
            cfg: cfg.clone(),
            client,
            conn: None,
        })
    }

    pub fn cfg(&self) -> &ClusterSection {
        &self.cfg
    }

    /// Run `f` on the connection (made if needed, with `redis_timeout` on every call); a
    /// call that fails for the connection's sake drops it, so the next one connects again.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let fail = |e: redis::RedisError, cfg: &ClusterSection| {
            format!("redis {}: {e}", cfg.redis_for_logs())
        };
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let timeout = self.cfg.redis_timeout.0;
                self.client
                    .get_connection_with_timeout(timeout)
                    .and_then(|c| {
                        c.set_read_timeout(Some(timeout))?;
                        c.set_write_timeout(Some(timeout))?;
                        Ok(c)
                    })
                    .map_err(|e| fail(e, &self.cfg))?
            }
        };
        match f(&mut conn) {
            Ok(v) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Err(e) => {
                if !e.is_io_error() && !e.is_timeout() && !e.is_connection_dropped() {
                    self.conn = Some(conn);
                }
                Err(fail(e, &self.cfg))
            }
        }
    }
}

//! A cluster's error records, in Redis, so that support finds a request id whichever node
//! answered it. Keys (under `key_prefix`): `err:<id>` the record (JSON, expiring after
//! `errors_for`), `errs` every id by time (for the count bound), `errs:<account>` an
//! account's ids by time.

use crate::config::ClusterSection;
use crate::support::{ErrorRecord, Retention, TrailStore};
use redis::Commands;

pub struct RedisTrail {
    link: super::link::Lazy,
    /// The age bound as of the last trim: each record expires after it.
    ttl_ms: u64,
}

impl RedisTrail {
    pub fn open(cfg: &ClusterSection) -> Result<RedisTrail, String> {
        Ok(RedisTrail {
            link: super::link::Lazy::open(cfg)?,
            ttl_ms: 7 * 86_400_000,
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.link.cfg().key_prefix)
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        self.link.with(f)
    }
}

impl TrailStore for RedisTrail {
    fn write(&mut self, records: &[ErrorRecord]) -> Result<(), String> {
        let all = self.key("errs");
        let mut pipe = redis::pipe();
        for r in records {
            let json = serde_json::to_string(r).map_err(|e| e.to_string())?;
            pipe.cmd("SET")
                .arg(self.key(&format!("err:{}", r.id)))
                .arg(json)
                .arg("PX")
                .arg(self.ttl_ms.max(1))
                .ignore();
            pipe.zadd(&all, &r.id, r.at_ms).ignore();
            if let Some(a) = &r.account {
                pipe.zadd(self.key(&format!("errs:{a}")), &r.id, r.at_ms)
                    .ignore();
            }
        }
        self.with(|c| pipe.query::<()>(c))
    }

    fn trim(&mut self, retention: Retention, now_ms: i64) -> Result<(), String> {
        self.ttl_ms = retention.age.as_millis().min(u128::from(u64::MAX)) as u64;
        let oldest = now_ms - self.ttl_ms.min(i64::MAX as u64) as i64;
        let all = self.key("errs");
        let prefix = self.key("err:");
        let count = retention.count;
        self.with(|c| {
            let _: () = c.zrembyscore(&all, "-inf", format!("({oldest}"))?;
            let n: u64 = c.zcard(&all)?;
            if n > count {
                let gone: Vec<String> = c.zrange(&all, 0, (n - count - 1) as isize)?;
                if !gone.is_empty() {
                    let keys: Vec<String> = gone.iter().map(|id| format!("{prefix}{id}")).collect();
                    let _: () = c.del(&keys)?;
                    let _: () = c.zrem(&all, &gone)?;
                }
            }
            Ok(())
        })
    }

    fn get(&mut self, id: &str) -> Result<Option<ErrorRecord>, String> {
        let key = self.key(&format!("err:{id}"));
        let json: Option<String> = self.with(|c| c.get(&key))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    fn by_account(
        &mut self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<ErrorRecord>, String> {
        let idx = self.key(&format!("errs:{account}"));
        let prefix = self.key("err:");
        let oldest =
            crate::util::wall_now().as_millisecond() - self.ttl_ms.min(i64::MAX as u64) as i64;
        self.with(|c| {
            // Entries past the age bound go as they are met.
            let _: () = c.zrembyscore(&idx, "-inf", format!("({oldest}"))?;
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&idx)
                .arg(until_ms)
                .arg(since_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}")).collect();
            let rows: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(c)?;
            Ok(rows
                .into_iter()
                .flatten()
                .filter_map(|j| serde_json::from_str(&j).ok())
                .collect())
        })
    }
}

//! `tollgate usage` against the cluster's Redis: shared usage is read and adjusted there,
//! and every node sees the change at its next grant (a used-up account is asked about
//! again each heartbeat).

use super::scripts::{evalsha, Keys, Scripts};
use crate::config::ClusterSection;
use crate::plan::ledger::Adjustment;
use redis::{ConnectionLike, Value};
use std::collections::HashMap;

/// One account as the cluster sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared {
    pub used: u64,
    pub credit: u64,
    /// Thread slots held on live nodes.
    pub active: u32,
    /// Start of the plan period the totals belong to (0: no period).
    pub period_start: i64,
}

/// What rolling an account's totals to the current plan period needs: the period's start
/// now (0: the plan has none) and the plan's bandwidth.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roll {
    pub start: i64,
    pub plan_bandwidth: u64,
}

impl Roll {
    pub fn of(plan: &crate::config::Plan) -> Roll {
        Roll {
            start: plan.period.start_of(crate::util::wall_now()),
            plan_bandwidth: plan.bandwidth,
        }
    }
}

fn connect(cfg: &ClusterSection) -> Result<(redis::Connection, Scripts), String> {
    let fail = |e: redis::RedisError| format!("redis {}: {e}", cfg.redis_for_logs());
    let client = redis::Client::open(cfg.redis.as_str()).map_err(fail)?;
    let mut conn = client
        .get_connection_with_timeout(cfg.redis_timeout.0)
        .map_err(fail)?;
    let scripts = Scripts::new();
    scripts.adjust.load(&mut conn).map_err(fail)?;
    Ok((conn, scripts))
}

/// ADJUST's answer: (used, credit, period start).
fn triple(v: Value) -> Option<(u64, u64, i64)> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(u), Value::Int(c), Value::Int(p)] => {
                Some(((*u).max(0) as u64, (*c).max(0) as u64, *p))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Apply an operator's adjustment at once; returns the account's (used, credit) after it.
/// A plan period that started since the last look is rolled first.
pub fn adjust(
    cfg: &ClusterSection,
    account: &str,
    adj: Adjustment,
    roll: Roll,
) -> Result<(u64, u64), String> {
    let (mut conn, scripts) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    let mut c = evalsha(
        &scripts.adjust,
        &[&keys.bw(account), &keys.periods(account)],
    );
    match adj {
        Adjustment::Reset => c.arg("reset").arg(0),
        Adjustment::TopUp(n) => c.arg("top-up").arg(n),
    };
    c.arg(roll.start).arg(roll.plan_bandwidth);
    let v = conn
        .req_command(&c)
        .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))?;
    triple(v)
        .map(|(u, c, _)| (u, c))
        .ok_or_else(|| "unexpected reply from redis".into())
}

/// A deleted account's usage goes with it: its totals reset (as `usage reset` does, so the
/// nodes' own counters stay valid) and its ended periods dropped, so an account made again
/// under the name starts from nothing. Bytes its live connections move after this (until
/// they are cut) still count, to the name.
pub fn forget(cfg: &ClusterSection, account: &str, roll: Roll) -> Result<(), String> {
    adjust(cfg, account, Adjustment::Reset, roll)?;
    let (mut conn, _) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    redis::cmd("DEL")
        .arg(keys.periods(account))
        .query::<()>(&mut conn)
        .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))
}

/// An account's ended plan periods, newest first: (start, bytes used).
pub fn history(cfg: &ClusterSection, account: &str) -> Result<Vec<(i64, u64)>, String> {
    let (mut conn, _) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    let all: HashMap<i64, i64> = redis::cmd("HGETALL")
        .arg(keys.periods(account))
        .query(&mut conn)
        .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))?;
    let mut v: Vec<(i64, u64)> = all.into_iter().map(|(s, u)| (s, u.max(0) as u64)).collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.0));
    Ok(v)
}

/// Usage, credit and live slots of `accounts` (each rolled to its plan's current period
/// first).
pub fn read(
    cfg: &ClusterSection,
    accounts: &[(&str, Roll)],
) -> Result<HashMap<String, Shared>, String> {
    let (mut conn, scripts) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    let fail = |e: redis::RedisError| format!("redis {}: {e}", cfg.redis_for_logs());
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).map_err(fail)?;
    let now_ms = secs * 1000 + micros / 1000;
    let nodes: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.nodes())
        .query(&mut conn)
        .map_err(fail)?;
    let mut out = HashMap::new();
    for &(name, roll) in accounts {
        let mut c = evalsha(&scripts.adjust, &[&keys.bw(name), &keys.periods(name)]);
        c.arg("show")
            .arg(0)
            .arg(roll.start)
            .arg(roll.plan_bandwidth);
        let (used, credit, period_start) = triple(conn.req_command(&c).map_err(fail)?)
            .ok_or_else(|| "unexpected reply from redis".to_owned())?;
        let slots: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(keys.threads(name))
            .query(&mut conn)
            .map_err(fail)?;
        let active = slots
            .iter()
            .filter(|(n, _)| nodes.get(*n).is_some_and(|&until| until > now_ms))
            .map(|(_, c)| *c)
            .sum();
        out.insert(
            name.to_owned(),
            Shared {
                used,
                credit,
                active,
                period_start,
            },
        );
    }
    Ok(out)
}

/// The nodes Redis knows and until when each one's heartbeat holds (Unix ms).
pub fn nodes(cfg: &ClusterSection) -> Result<Vec<(String, i64)>, String> {
    let (mut conn, _) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    let all: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.nodes())
        .query(&mut conn)
        .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))?;
    let mut v: Vec<(String, i64)> = all.into_iter().collect();
    v.sort();
    Ok(v)
}

/// A cluster node's usage backend: nothing stored locally (usage lives in Redis's
/// counters), but the dashboard's hourly buckets are added up in Redis from every node
/// (`hourly:<account>`: hour → bytes, kept 45 days).
pub struct RedisBuckets {
    link: super::link::Lazy,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisBuckets")
    }
}

impl RedisBuckets {
    pub fn open(cfg: &ClusterSection) -> Result<RedisBuckets, String> {
        Ok(RedisBuckets {
            link: super::link::Lazy::open(cfg)?,
        })
    }

    fn key(&self, account: &str) -> String {
        format!("{}hourly:{account}", self.link.cfg().key_prefix)
    }
}

impl crate::plan::store::UsageBackend for RedisBuckets {
    fn load(&mut self) -> Result<HashMap<String, crate::plan::store::Stored>, String> {
        Ok(HashMap::new())
    }
    fn load_one(&mut self, _: &str) -> Result<Option<crate::plan::store::Stored>, String> {
        Ok(None)
    }
    fn save(
        &mut self,
        _: &[(String, crate::plan::store::Stored)],
        _: &[crate::plan::store::EndedPeriod],
    ) -> Result<(), String> {
        Ok(())
    }
    fn queue(&mut self, _: &str, _: Adjustment) -> Result<(), String> {
        Err("usage of a cluster is adjusted in Redis".into())
    }
    fn take_queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
        Ok(Vec::new())
    }
    fn queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
        Ok(Vec::new())
    }
    fn periods(&mut self, _: &str) -> Result<Vec<(i64, u64)>, String> {
        Ok(Vec::new())
    }
    fn add_hourly(&mut self, rows: &[(String, i64, u64)]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (account, hour, bytes) in rows {
            let key = self.key(account);
            pipe.cmd("HINCRBY").arg(&key).arg(hour).arg(*bytes).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(45 * 86_400).ignore();
        }
        self.link.with(|c| pipe.query::<()>(c))
    }
    fn hourly(&mut self, account: &str, since: i64) -> Result<Vec<(i64, u64)>, String> {
        let key = self.key(account);
        let all: HashMap<i64, i64> = self
            .link
            .with(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut v: Vec<(i64, u64)> = all
            .into_iter()
            .filter(|(h, _)| *h >= since)
            .map(|(h, b)| (h, b.max(0) as u64))
            .collect();
        v.sort_unstable();
        Ok(v)
    }
}

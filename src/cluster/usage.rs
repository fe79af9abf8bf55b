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

fn pair(v: Value) -> Option<(u64, u64)> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(u), Value::Int(c)] => Some(((*u).max(0) as u64, (*c).max(0) as u64)),
            _ => None,
        },
        _ => None,
    }
}

/// Apply an operator's adjustment at once; returns the account's (used, credit) after it.
pub fn adjust(cfg: &ClusterSection, account: &str, adj: Adjustment) -> Result<(u64, u64), String> {
    let (mut conn, scripts) = connect(cfg)?;
    let keys = Keys {
        prefix: cfg.key_prefix.clone(),
    };
    let mut c = evalsha(&scripts.adjust, &[&keys.bw(account)]);
    match adj {
        Adjustment::Reset => c.arg("reset").arg(0),
        Adjustment::TopUp(n) => c.arg("top-up").arg(n),
    };
    let v = conn
        .req_command(&c)
        .map_err(|e| format!("redis {}: {e}", cfg.redis_for_logs()))?;
    pair(v).ok_or_else(|| "unexpected reply from redis".into())
}

/// Usage, credit and live slots of `accounts`.
pub fn read(cfg: &ClusterSection, accounts: &[&str]) -> Result<HashMap<String, Shared>, String> {
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
    for &name in accounts {
        let mut c = evalsha(&scripts.adjust, &[&keys.bw(name)]);
        c.arg("show").arg(0);
        let (used, credit) = pair(conn.req_command(&c).map_err(fail)?)
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
            },
        );
    }
    Ok(out)
}

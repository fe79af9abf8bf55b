//! The API's accounts and plans on a cluster: in Redis, so that every node serves the
//! same ones. Each write is one Lua script that changes the record, its indexes and the
//! change log together; every node follows the log (a counter and a sorted set, read every
//! [`crate::accounts::store::POLL`]), so a change made through any node (or `tollgate
//! account …`) applies on all of them within a second, and a node that was cut off catches
//! up from the log when it reconnects (or reads everything again when the log was trimmed
//! past what it had seen).
//!
//! Keys (under `key_prefix`): `dir:accounts` hash name → JSON (with the argon2id hash),
//! `dir:names` sorted set (for paging by name), `dir:plans` hash name → JSON,
//! `dir:plan_use` hash plan → accounts on it, `dir:allow` hash CIDR → account, `dir:seq`
//! the last change's number, `dir:log` sorted set of changes by number (the last
//! [`KEEP`]).

use crate::accounts::store::{AccountRow, AccountSource, Change, PlanRow};
use crate::config::ClusterSection;
use redis::{Commands, Script};
use serde::{Deserialize, Serialize};

/// Changes kept in the log.
const KEEP: i64 = 100_000;

/// Accounts read per round trip when everything is read.
const SCAN_BATCH: usize = 10_000;

/// An account as Redis keeps it (the hash included: nodes verify logins with it).
#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    password_hash: String,
    plan: String,
    networks: Vec<String>,
    #[serde(default)]
    allow_ips: Vec<String>,
    enabled: bool,
    #[serde(default)]
    expires: Option<String>,
}

impl From<&AccountRow> for Wire {
    fn from(a: &AccountRow) -> Wire {
        Wire {
            name: a.name.clone(),
            password_hash: a.password_hash.clone(),
            plan: a.plan.clone(),
            networks: a.networks.clone(),
            allow_ips: a.allow_ips.clone(),
            enabled: a.enabled,
            expires: a.expires.clone(),
        }
    }
}

impl From<Wire> for AccountRow {
    fn from(w: Wire) -> AccountRow {
        AccountRow {
            name: w.name,
            password_hash: w.password_hash,
            plan: w.plan,
            networks: w.networks,
            allow_ips: w.allow_ips,
            enabled: w.enabled,
            expires: w.expires,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PlanWire {
    bandwidth: u64,
    threads: u32,
    speed: u64,
    period: String,
}

/// Appends a change to the log: ARGV kind, name, arg (after the script's own ARGV).
const LOG: &str = r#"
local function log(kind, name, arg)
  local s = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], s, s .. '\n' .. kind .. '\n' .. name .. '\n' .. arg)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', s - tonumber(ARGV[1]))
  return s
end
"#;

/// KEYS: seq, log, accounts, names, plan_use, allow. ARGV: keep, name, json (or '' to
/// delete). Returns 1 when created (or deleted), 0 when replaced (or absent).
const PUT_ACCOUNT: &str = r#"
local old = redis.call('HGET', KEYS[3], ARGV[2])
if old then
  local o = cjson.decode(old)
  redis.call('HINCRBY', KEYS[5], o.plan, -1)
  for _, c in ipairs(o.allow_ips or {}) do
    if redis.call('HGET', KEYS[6], c) == ARGV[2] then redis.call('HDEL', KEYS[6], c) end
  end
end
if ARGV[3] == '' then
  if not old then return 0 end
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  log('account', ARGV[2], '')
  return 1
end
local n = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('HINCRBY', KEYS[5], n.plan, 1)
for _, c in ipairs(n.allow_ips or {}) do redis.call('HSET', KEYS[6], c, ARGV[2]) end
log('account', ARGV[2], '')
if old then return 0 else return 1 end
"#;

/// KEYS: seq, log, plans. ARGV: keep, name, json (or '' to delete). 1: created / deleted.
const PUT_PLAN: &str = r#"
local old = redis.call('HEXISTS', KEYS[3], ARGV[2])
if ARGV[3] == '' then
  if old == 0 then return 0 end
  redis.call('HDEL', KEYS[3], ARGV[2])
else
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
log('plan', ARGV[2], '')
if ARGV[3] == '' then return 1 end
return 1 - old
"#;

/// KEYS: seq, log. ARGV: keep, kind, name, arg.
const NOTE: &str = r#"
return log(ARGV[2], ARGV[3], ARGV[4])
"#;

pub struct RedisAccounts {
    link: super::link::Lazy,
    scripts: Writes,
}

/// The scripts that write the directory.
struct Writes {
    put_account: Script,
    put_plan: Script,
    note: Script,
}

impl std::fmt::Debug for RedisAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisAccounts({})", self.link.cfg().redis_for_logs())
    }
}

impl RedisAccounts {
    /// A handle on the cluster's accounts (connected on first use, again after a failure).
    pub fn open(cfg: &ClusterSection) -> Result<RedisAccounts, String> {
        Ok(RedisAccounts {
            link: super::link::Lazy::open(cfg)?,
            scripts: Writes {
                put_account: Script::new(&format!("{LOG}{PUT_ACCOUNT}")),
                put_plan: Script::new(&format!("{LOG}{PUT_PLAN}")),
                note: Script::new(&format!("{LOG}{NOTE}")),
            },
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}dir:{k}", self.link.cfg().key_prefix)
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection, &Writes) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let scripts = &self.scripts;
        self.link.with(|c| f(c, scripts))
    }

    fn decode(json: &str) -> Option<AccountRow> {
        serde_json::from_str::<Wire>(json)
            .ok()
            .map(AccountRow::from)
    }

    fn write_account(&mut self, name: &str, json: &str) -> Result<bool, String> {
        let keys = [
            self.key("seq"),
            self.key("log"),
            self.key("accounts"),
            self.key("names"),
            self.key("plan_use"),
            self.key("allow"),
        ];
        let (name, json) = (name.to_owned(), json.to_owned());
        self.with(|c, me| {
            let mut inv = me.put_account.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(KEEP).arg(&name).arg(&json);
            inv.invoke::<i64>(c).map(|n| n == 1)
        })
    }

    fn write_plan(&mut self, name: &str, json: &str) -> Result<bool, String> {
        let keys = [self.key("seq"), self.key("log"), self.key("plans")];
        let (name, json) = (name.to_owned(), json.to_owned());
        self.with(|c, me| {
            let mut inv = me.put_plan.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(KEEP).arg(&name).arg(&json);
            inv.invoke::<i64>(c).map(|n| n == 1)
        })
    }
}

/// `s` matched literally by a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn plan_row(name: &str, json: &str) -> Option<PlanRow> {
    let w: PlanWire = serde_json::from_str(json).ok()?;
    Some(PlanRow {
        name: name.to_owned(),
        bandwidth: w.bandwidth,
        threads: w.threads,
        speed: w.speed,
        period: w.period,
    })
}

impl AccountSource for RedisAccounts {
    fn get(&mut self, name: &str) -> Result<Option<AccountRow>, String> {
        let key = self.key("accounts");
        let json: Option<String> = self.with(|c, _| c.hget(&key, name))?;
        Ok(json.as_deref().and_then(Self::decode))
    }

    fn load_all(&mut self) -> Result<Vec<AccountRow>, String> {
        let mut out = Vec::new();
        self.each_account(&mut |r| out.push(r))?;
        Ok(out)
    }

    fn each_account(&mut self, f: &mut dyn FnMut(AccountRow)) -> Result<(), String> {
        let key = self.key("accounts");
        self.with(|c, _| {
            let mut cursor: u64 = 0;
            loop {
                let (next, items): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query(c)?;
                for (_, j) in &items {
                    if let Some(r) = Self::decode(j) {
                        f(r);
                    }
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        })
    }

    fn search(
        &mut self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<AccountRow>, String> {
        let (names_key, accounts) = (self.key("names"), self.key("accounts"));
        let min = if after.is_empty() || after < prefix {
            if prefix.is_empty() {
                "-".to_string()
            } else {
                format!("[{prefix}")
            }
        } else {
            format!("({after}")
        };
        // Past every name starting with the prefix (bytes compare; 0xFF is never in UTF-8).
        let mut max = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            format!("({prefix}").into_bytes()
        };
        if !prefix.is_empty() {
            max.push(0xFF);
        }
        self.with(|c, _| {
            let names: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(&names_key)
                .arg(&min)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let rows: Vec<Option<String>> =
                redis::cmd("HMGET").arg(&accounts).arg(&names).query(c)?;
            Ok(rows
                .iter()
                .flatten()
                .filter_map(|j| Self::decode(j))
                .collect())
        })
    }

    fn put(&mut self, a: &AccountRow) -> Result<bool, String> {
        let json = serde_json::to_string(&Wire::from(a)).map_err(|e| e.to_string())?;
        self.write_account(&a.name, &json)
    }

    fn delete(&mut self, name: &str) -> Result<bool, String> {
        self.write_account(name, "")
    }

    fn get_plan(&mut self, name: &str) -> Result<Option<PlanRow>, String> {
        let key = self.key("plans");
        let json: Option<String> = self.with(|c, _| c.hget(&key, name))?;
        Ok(json.and_then(|j| plan_row(name, &j)))
    }

    fn plans(&mut self) -> Result<Vec<PlanRow>, String> {
        let key = self.key("plans");
        let all: Vec<(String, String)> = self.with(|c, _| c.hgetall(&key))?;
        let mut v: Vec<PlanRow> = all.iter().filter_map(|(n, j)| plan_row(n, j)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn put_plan(&mut self, p: &PlanRow) -> Result<bool, String> {
        let json = serde_json::to_string(&PlanWire {
            bandwidth: p.bandwidth,
            threads: p.threads,
            speed: p.speed,
            period: p.period.clone(),
        })
        .map_err(|e| e.to_string())?;
        self.write_plan(&p.name, &json)
    }

    fn delete_plan(&mut self, name: &str) -> Result<bool, String> {
        self.write_plan(name, "")
    }

    fn allowed_for(&mut self, cidr: &str) -> Result<Option<String>, String> {
        let key = self.key("allow");
        self.with(|c, _| c.hget(&key, cidr))
    }

    fn count_on_plan(&mut self, plan: &str) -> Result<u64, String> {
        let key = self.key("plan_use");
        let n: Option<i64> = self.with(|c, _| c.hget(&key, plan))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn note(&mut self, change: &Change) -> Result<(), String> {
        let (kind, name, arg) = match change {
            Change::Account(n) => ("account", n.as_str(), ""),
            Change::Plan(n) => ("plan", n.as_str(), ""),
            Change::Disconnect(n) => ("disconnect", n.as_str(), ""),
            Change::Release { account, session } => ("release", account.as_str(), session.as_str()),
            Change::Resync => return Ok(()),
        };
        let keys = [self.key("seq"), self.key("log")];
        let (kind, name, arg) = (kind.to_owned(), name.to_owned(), arg.to_owned());
        self.with(|c, me| {
            let mut inv = me.note.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(KEEP).arg(&kind).arg(&name).arg(&arg);
            inv.invoke::<i64>(c).map(|_| ())
        })
    }

    fn release_sessions(&mut self, account: &str, session: &str) -> Result<usize, String> {
        // Keys are `session:<account>|<network>|<country>|<state>|<city>|<session>`.
        let pattern = format!(
            "{}session:{}|*|{}",
            self.link.cfg().key_prefix,
            glob_escape(account),
            glob_escape(session)
        );
        self.with(|c, _| {
            let mut removed = 0usize;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                if !keys.is_empty() {
                    removed += c.del::<_, usize>(&keys)?;
                }
                if next == 0 {
                    return Ok(removed);
                }
                cursor = next;
            }
        })
    }

    fn last_change(&mut self) -> Result<i64, String> {
        let key = self.key("seq");
        let n: Option<i64> = self.with(|c, _| c.get(&key))?;
        Ok(n.unwrap_or(0))
    }

    fn changes_since(&mut self, seq: i64) -> Result<Vec<(i64, Change)>, String> {
        let last = self.last_change()?;
        if last == seq {
            return Ok(Vec::new());
        }
        if last < seq {
            // Redis lost its data (restarted empty, or flushed): read everything again.
            return Ok(vec![(last, Change::Resync)]);
        }
        let key = self.key("log");
        let entries: Vec<(String, f64)> = self.with(|c, _| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(format!("({seq}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(10_000)
                .query(c)
        })?;
        let first = entries.first().map_or(last, |(_, s)| *s as i64);
        if first > seq + 1 {
            // Trimmed past what this reader had seen.
            return Ok(vec![(last, Change::Resync)]);
        }
        let mut out = Vec::with_capacity(entries.len());
        for (member, score) in entries {
            let mut parts = member.splitn(4, '\n');
            let (_, kind, name, arg) = (parts.next(), parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name)) = (kind, name) else {
                continue;
            };
            let name = name.to_owned();
            let change = match kind {
                "account" => Change::Account(name),
                "plan" => Change::Plan(name),
                "disconnect" => Change::Disconnect(name),
                "release" => Change::Release {
                    account: name,
                    session: arg.unwrap_or("").to_owned(),
                },
                _ => continue,
            };
            out.push((score as i64, change));
        }
        Ok(out)
    }
}

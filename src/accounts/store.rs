//! The accounts and plans of the API in the embedded SQLite store (the same file as usage,
//! `<state_dir>/usage.sqlite3`, WAL mode), with a change log: the gateway reads the log
//! every [`POLL`] and applies what another process (`tollgate account …`) wrote, so the
//! CLI and the API share one store and a running gateway follows both.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// How often a running gateway reads the change log.
pub const POLL: Duration = Duration::from_millis(200);

/// Changes kept in the log (older ones are trimmed at start; a gateway that was down
/// longer than that reloads everything anyway).
const KEEP_CHANGES: i64 = 100_000;

/// An account as stored (and as the API and the CLI exchange it, less the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub name: String,
    /// An argon2id PHC string. Never serialised out of the process.
    #[serde(skip_serializing, default)]
    pub password_hash: String,
    pub plan: String,
    pub networks: Vec<String>,
    #[serde(default)]
    pub allow_ips: Vec<String>,
    pub enabled: bool,
    /// RFC 3339.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A plan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub name: String,
    pub bandwidth: u64,
    pub threads: u32,
    pub speed: u64,
    pub period: String,
}

/// What a change-log entry asks the gateway to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Re-read this account (gone: removed).
    Account(String),
    /// Re-read this plan (gone: removed).
    Plan(String),
    /// Cut this account's live connections.
    Disconnect(String),
    /// Forget this account's sticky session.
    Release { account: String, session: String },
    /// The log lost entries this reader had not seen: read everything again.
    Resync,
}

/// Where the API's accounts and plans live: the embedded store on a single node
/// ([`AccountStore`]), Redis on a cluster (`cluster::accounts`). The API, the CLI and the
/// gateway's change-log follower go through this.
pub trait AccountSource: Send {
    fn get(&mut self, name: &str) -> Result<Option<AccountRow>, String>;
    /// Every account (start-up, resync), in no particular order.
    fn load_all(&mut self) -> Result<Vec<AccountRow>, String>;
    /// Every account, handed to `f` one at a time as it is read.
    fn each_account(&mut self, f: &mut dyn FnMut(AccountRow)) -> Result<(), String> {
        for row in self.load_all()? {
            f(row);
        }
        Ok(())
    }
    /// Up to `limit` accounts named after `after`, by name.
    fn list(&mut self, after: &str, limit: usize) -> Result<Vec<AccountRow>, String> {
        self.search("", after, limit)
    }
    /// Up to `limit` accounts whose name starts with `prefix`, named after `after`, by name.
    fn search(
        &mut self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<AccountRow>, String>;
    /// Create or replace an account; `Ok(true)` when it was created.
    fn put(&mut self, a: &AccountRow) -> Result<bool, String>;
    /// Delete an account (and its stored usage where the store keeps it); `Ok(false)`
    /// when there was none.
    fn delete(&mut self, name: &str) -> Result<bool, String>;
    fn get_plan(&mut self, name: &str) -> Result<Option<PlanRow>, String>;
    fn plans(&mut self) -> Result<Vec<PlanRow>, String>;
    /// Create or replace a plan; `Ok(true)` when it was created.
    fn put_plan(&mut self, p: &PlanRow) -> Result<bool, String>;
    fn delete_plan(&mut self, name: &str) -> Result<bool, String>;
    /// The stored account that allows the client network `cidr` (canonical form).
    fn allowed_for(&mut self, cidr: &str) -> Result<Option<String>, String>;
    /// Stored accounts on `plan`.
    fn count_on_plan(&mut self, plan: &str) -> Result<u64, String>;
    /// Ask the running gateways for an action (disconnect, release).
    fn note(&mut self, change: &Change) -> Result<(), String>;
    /// The last change's number (0: none).
    fn last_change(&mut self) -> Result<i64, String>;
    /// Changes after `seq`, oldest first, with their numbers ([`Change::Resync`] when the
    /// log no longer reaches back to `seq`).
    fn changes_since(&mut self, seq: i64) -> Result<Vec<(i64, Change)>, String>;
    /// Forget `account`'s sticky session `session` where the store keeps sessions (a
    /// cluster's Redis); returns the bindings removed.
    fn release_sessions(&mut self, _account: &str, _session: &str) -> Result<usize, String> {
        Ok(0)
    }
}

pub struct AccountStore {
    conn: Connection,
}

impl std::fmt::Debug for AccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountStore")
    }
}

fn db_err(e: rusqlite::Error) -> String {
    format!("account store: {e}")
}

fn now_unix() -> i64 {
    crate::util::wall_now().as_second()
}

impl AccountStore {
    /// Open (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<AccountStore, String> {
        let conn = crate::util::db::open(state_dir)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS accounts (
                 name          TEXT PRIMARY KEY,
                 password_hash TEXT NOT NULL,
                 plan          TEXT NOT NULL,
                 networks      TEXT NOT NULL,
                 allow_ips     TEXT NOT NULL DEFAULT '[]',
                 enabled       INTEGER NOT NULL DEFAULT 1,
                 expires       TEXT,
                 created_at    INTEGER NOT NULL,
                 updated_at    INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS plans (
                 name       TEXT PRIMARY KEY,
                 bandwidth  INTEGER NOT NULL,
                 threads    INTEGER NOT NULL,
                 speed      INTEGER NOT NULL DEFAULT 0,
                 period     TEXT NOT NULL DEFAULT 'none',
                 updated_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS changes (
                 seq  INTEGER PRIMARY KEY AUTOINCREMENT,
                 kind TEXT NOT NULL,
                 name TEXT NOT NULL,
                 arg  TEXT NOT NULL DEFAULT '',
                 at   INTEGER NOT NULL
             );",
        )
        .map_err(db_err)?;
        Ok(AccountStore { conn })
    }

    /// Drop change-log entries too old to matter (start-up).
    pub fn trim_changes(&self) -> Result<(), String> {
        self.conn
            .execute(
                "DELETE FROM changes WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM changes) - ?1",
                params![KEEP_CHANGES],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRow> {
        let networks: String = r.get(3)?;
        let allow: String = r.get(4)?;
        Ok(AccountRow {
            name: r.get(0)?,
            password_hash: r.get(1)?,
            plan: r.get(2)?,
            networks: serde_json::from_str(&networks).unwrap_or_default(),
            allow_ips: serde_json::from_str(&allow).unwrap_or_default(),
            enabled: r.get::<_, i64>(5)? != 0,
            expires: r.get(6)?,
        })
    }

    const COLUMNS: &'static str =
        "name, password_hash, plan, networks, allow_ips, enabled, expires";

    fn plan_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlanRow> {
        Ok(PlanRow {
            name: r.get(0)?,
            bandwidth: r.get::<_, i64>(1)?.max(0) as u64,
            threads: r.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
            speed: r.get::<_, i64>(3)?.max(0) as u64,
            period: r.get(4)?,
        })
    }
}

impl AccountSource for AccountStore {
    fn each_account(&mut self, f: &mut dyn FnMut(AccountRow)) -> Result<(), String> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM accounts", Self::COLUMNS))
            .map_err(db_err)?;
        let mut rows = st.query([]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            f(Self::row(r).map_err(db_err)?);
        }
        Ok(())
    }

    fn get(&mut self, name: &str) -> Result<Option<AccountRow>, String> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {} FROM accounts WHERE name = ?1",
                Self::COLUMNS
            ))
            .and_then(|mut st| st.query_row(params![name], Self::row).optional())
            .map_err(db_err)
    }

    /// Every account (start-up), in no particular order.
    fn load_all(&mut self) -> Result<Vec<AccountRow>, String> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM accounts", Self::COLUMNS))
            .map_err(db_err)?;
        let rows = st.query_map([], Self::row).map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    fn search(
        &mut self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<AccountRow>, String> {
        // The prefix's range on the primary key, [prefix, prefix + U+10FFFF), from past
        // `after`: one lower bound, so that SQLite seeks to it (given two, it may scan
        // from the smaller).
        let upper = format!("{prefix}\u{10FFFF}");
        let (op, lower) = if after >= prefix {
            (">", after)
        } else {
            (">=", prefix)
        };
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM accounts WHERE name {op} ?1 AND name < ?2 ORDER BY name LIMIT ?3",
                Self::COLUMNS
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![lower, upper, limit as i64], Self::row)
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Create or replace an account; `Ok(true)` when it was created.
    fn put(&mut self, a: &AccountRow) -> Result<bool, String> {
        let tx = self.conn.transaction().map_err(db_err)?;
        let existed: bool = tx
            .prepare_cached("SELECT 1 FROM accounts WHERE name = ?1")
            .and_then(|mut st| st.exists(params![a.name]))
            .map_err(db_err)?;
        let now = now_unix();
        let networks = serde_json::to_string(&a.networks).map_err(|e| e.to_string())?;
        let allow = serde_json::to_string(&a.allow_ips).map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO accounts (name, password_hash, plan, networks, allow_ips, enabled, expires, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(name) DO UPDATE SET password_hash = ?2, plan = ?3, networks = ?4,
                 allow_ips = ?5, enabled = ?6, expires = ?7, updated_at = ?8",
            params![a.name, a.password_hash, a.plan, networks, allow, a.enabled as i64, a.expires, now],
        )
        .map_err(db_err)?;
        log(&tx, "account", &a.name, "")?;
        tx.commit().map_err(db_err)?;
        Ok(!existed)
    }

    /// Delete an account with its stored usage and past periods; `Ok(false)` when there
    /// was none.
    fn delete(&mut self, name: &str) -> Result<bool, String> {
        let tx = self.conn.transaction().map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM accounts WHERE name = ?1", params![name])
            .map_err(db_err)?;
        if n > 0 {
            for sql in [
                "DELETE FROM usage WHERE account = ?1",
                "DELETE FROM periods WHERE account = ?1",
            ] {
                // The usage tables exist once the gateway ran; a fresh CLI store may lack them.
                let _ = tx.execute(sql, params![name]);
            }
            log(&tx, "account", name, "")?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n > 0)
    }

    fn get_plan(&mut self, name: &str) -> Result<Option<PlanRow>, String> {
        self.conn
            .prepare_cached(
                "SELECT name, bandwidth, threads, speed, period FROM plans WHERE name = ?1",
            )
            .and_then(|mut st| st.query_row(params![name], Self::plan_row).optional())
            .map_err(db_err)
    }

    fn plans(&mut self) -> Result<Vec<PlanRow>, String> {
        let mut st = self
            .conn
            .prepare("SELECT name, bandwidth, threads, speed, period FROM plans ORDER BY name")
            .map_err(db_err)?;
        let rows = st.query_map([], Self::plan_row).map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Create or replace a plan; `Ok(true)` when it was created.
    fn put_plan(&mut self, p: &PlanRow) -> Result<bool, String> {
        let tx = self.conn.transaction().map_err(db_err)?;
        let existed: bool = tx
            .prepare_cached("SELECT 1 FROM plans WHERE name = ?1")
            .and_then(|mut st| st.exists(params![p.name]))
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO plans (name, bandwidth, threads, speed, period, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET bandwidth = ?2, threads = ?3, speed = ?4,
                 period = ?5, updated_at = ?6",
            params![
                p.name,
                p.bandwidth.min(i64::MAX as u64) as i64,
                p.threads,
                p.speed.min(i64::MAX as u64) as i64,
                p.period,
                now_unix()
            ],
        )
        .map_err(db_err)?;
        log(&tx, "plan", &p.name, "")?;
        tx.commit().map_err(db_err)?;
        Ok(!existed)
    }

    fn delete_plan(&mut self, name: &str) -> Result<bool, String> {
        let tx = self.conn.transaction().map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM plans WHERE name = ?1", params![name])
            .map_err(db_err)?;
        if n > 0 {
            log(&tx, "plan", name, "")?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n > 0)
    }

    /// The stored account that allows the client network `cidr` (canonical form), if any.
    fn allowed_for(&mut self, cidr: &str) -> Result<Option<String>, String> {
        // allow_ips is a JSON array of canonical CIDR strings (no '%' or '_' in them).
        self.conn
            .prepare_cached("SELECT name FROM accounts WHERE allow_ips LIKE ?1 LIMIT 1")
            .and_then(|mut st| {
                st.query_row(params![format!("%\"{cidr}\"%")], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)
    }

    /// Stored accounts on `plan`.
    fn count_on_plan(&mut self, plan: &str) -> Result<u64, String> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM accounts WHERE plan = ?1",
                params![plan],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db_err)
    }

    /// Ask the running gateway for an action (disconnect, release).
    fn note(&mut self, change: &Change) -> Result<(), String> {
        let (kind, name, arg) = match change {
            Change::Account(n) => ("account", n.as_str(), ""),
            Change::Plan(n) => ("plan", n.as_str(), ""),
            Change::Disconnect(n) => ("disconnect", n.as_str(), ""),
            Change::Release { account, session } => ("release", account.as_str(), session.as_str()),
            Change::Resync => return Ok(()),
        };
        log(&self.conn, kind, name, arg)
    }

    /// The last change's number (0: none).
    fn last_change(&mut self) -> Result<i64, String> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(db_err)
    }

    /// Changes after `seq`, oldest first, with their numbers.
    fn changes_since(&mut self, seq: i64) -> Result<Vec<(i64, Change)>, String> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT seq, kind, name, arg FROM changes WHERE seq > ?1 ORDER BY seq LIMIT 10000",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, name, arg) = row.map_err(db_err)?;
            let change = match kind.as_str() {
                "account" => Change::Account(name),
                "plan" => Change::Plan(name),
                "disconnect" => Change::Disconnect(name),
                "release" => Change::Release {
                    account: name,
                    session: arg,
                },
                _ => continue,
            };
            out.push((seq, change));
        }
        Ok(out)
    }
}

fn log(conn: &Connection, kind: &str, name: &str, arg: &str) -> Result<(), String> {
    conn.prepare_cached("INSERT INTO changes (kind, name, arg, at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut st| st.execute(params![kind, name, arg, now_unix()]))
        .map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> AccountRow {
        AccountRow {
            name: name.into(),
            password_hash: "$argon2id$h".into(),
            plan: "p".into(),
            networks: vec!["n".into()],
            allow_ips: vec![],
            enabled: true,
            expires: None,
        }
    }

    #[test]
    fn accounts_plans_and_the_change_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AccountStore::open(dir.path()).unwrap();
        assert_eq!(s.last_change().unwrap(), 0);
        assert!(s.put(&row("b")).unwrap());
        assert!(s.put(&row("a")).unwrap());
        let mut c = row("a");
        c.enabled = false;
        assert!(!s.put(&c).unwrap());
        assert_eq!(s.get("a").unwrap().unwrap(), c);
        assert_eq!(s.list("", 1).unwrap()[0].name, "a");
        for n in ["ab", "abc", "b2"] {
            s.put(&row(n)).unwrap();
        }
        let names = |v: Vec<AccountRow>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(s.search("ab", "", 10).unwrap()), ["ab", "abc"]);
        assert_eq!(names(s.search("ab", "ab", 10).unwrap()), ["abc"]);
        assert_eq!(names(s.search("b", "a", 10).unwrap()), ["b", "b2"]);
        assert_eq!(names(s.search("b", "b", 1).unwrap()), ["b2"]);
        for n in ["ab", "abc", "b2"] {
            s.delete(n).unwrap();
        }
        assert_eq!(s.list("a", 10).unwrap().len(), 1);
        assert!(s.delete("a").unwrap());
        assert!(!s.delete("a").unwrap());
        assert_eq!(s.list("", 10).unwrap().len(), 1);
        let plan = PlanRow {
            name: "p".into(),
            bandwidth: 10,
            threads: 2,
            speed: 0,
            period: "month".into(),
        };
        assert!(s.put_plan(&plan).unwrap());
        assert_eq!(s.get_plan("p").unwrap().unwrap(), plan);
        s.note(&Change::Disconnect("b".into())).unwrap();
        let log: Vec<Change> = s
            .changes_since(0)
            .unwrap()
            .into_iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(log.len(), 12);
        assert_eq!(log[11], Change::Disconnect("b".into()));
        let last = s.last_change().unwrap();
        assert!(s.changes_since(last).unwrap().is_empty());
        // A second process sees the first one's writes.
        let mut other = AccountStore::open(dir.path()).unwrap();
        assert_eq!(other.count_on_plan("p").unwrap(), 1);
    }
}

//! Durable usage: an embedded SQLite database under `state_dir` (WAL mode, so operators'
//! `tollgate usage …` commands can work on it while the gateway runs).
//!
//! [`UsageBackend`] is where the ledger keeps usage between restarts: SQLite on a single
//! node, nothing on a cluster node ([`InRedis`]), whose usage lives in Redis behind the
//! plan's other seam, [`super::SharedPlan`].

use super::ledger::Adjustment;
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::path::Path;

/// An account's stored usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub used: u64,
    pub credit: u64,
    /// Concurrent connections at the last write.
    pub active: u32,
    /// Unix seconds of the last write.
    pub updated: i64,
    /// Start (Unix seconds) of the plan period `used` belongs to; 0 = none.
    pub period_start: i64,
    /// The plan's period and bandwidth at the last write: what a boundary passed while
    /// the account is not in use needs to roll the row ([`UsageBackend::roll_dormant`]).
    pub period: crate::config::Period,
    pub plan_bandwidth: u64,
}

/// One ended plan period of an account: (account, period start, bytes used).
pub type EndedPeriod = (String, i64, u64);

/// Where usage lives between restarts.
pub trait UsageBackend: Send + std::fmt::Debug {
    fn load(&mut self) -> Result<HashMap<String, Stored>, String>;
    /// One account's stored usage (`None`: never written).
    fn load_one(&mut self, account: &str) -> Result<Option<Stored>, String>;
    /// A second handle for reads that must not wait behind a write (SQLite: another
    /// connection, WAL mode lets it read while the flusher writes); `None`: share this one.
    fn reader(&self) -> Option<Box<dyn UsageBackend>> {
        None
    }
    /// Write these accounts' current values and the periods that ended, atomically: an
    /// ended period is never recorded without its account's new period, or the reverse (a
    /// crash between the two would count it twice, or lose it).
    fn save(&mut self, rows: &[(String, Stored)], ended: &[EndedPeriod]) -> Result<(), String>;
    /// Queue an operator's adjustment for the running (or next) gateway.
    fn queue(&mut self, account: &str, adj: Adjustment) -> Result<(), String>;
    /// Take the queued adjustments, oldest first.
    fn take_queued(&mut self) -> Result<Vec<(String, Adjustment)>, String>;
    /// Look at the queued adjustments without taking them.
    fn queued(&mut self) -> Result<Vec<(String, Adjustment)>, String>;
    /// An account's ended periods, newest first: (start, bytes used).
    fn periods(&mut self, account: &str) -> Result<Vec<(i64, u64)>, String>;
    /// Start period `start` for every stored row of a `period` plan still in an earlier
    /// one (accounts not in use when the boundary passed): its usage goes to the history
    /// and starts again from 0, as [`super::ledger::AccountState::roll_period`] does for
    /// accounts in use. Returns the rows rolled.
    fn roll_dormant(
        &mut self,
        _period: crate::config::Period,
        _start: i64,
    ) -> Result<usize, String> {
        Ok(0)
    }
    /// Add bytes to accounts' hourly buckets (`hour`: Unix seconds of the hour's start),
    /// for the dashboard's usage over time.
    fn add_hourly(&mut self, _rows: &[(String, i64, u64)]) -> Result<(), String> {
        Ok(())
    }
    /// An account's hourly buckets from `since` (Unix seconds), oldest first.
    fn hourly(&mut self, _account: &str, _since: i64) -> Result<Vec<(i64, u64)>, String> {
        Ok(Vec::new())
    }
}

/// No local store: a cluster node's usage lives in Redis.
#[derive(Debug)]
pub struct InRedis;

impl UsageBackend for InRedis {
    fn load(&mut self) -> Result<HashMap<String, Stored>, String> {
        Ok(HashMap::new())
    }
    fn load_one(&mut self, _: &str) -> Result<Option<Stored>, String> {
        Ok(None)
    }
    fn save(&mut self, _: &[(String, Stored)], _: &[EndedPeriod]) -> Result<(), String> {
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
}

#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    state_dir: std::path::PathBuf,
}

fn db_err(e: rusqlite::Error) -> String {
    format!("usage store: {e}")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SqliteStore {
    /// Open (creating if needed) `<state_dir>/usage.sqlite3`.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, String> {
        let conn = crate::util::db::open(state_dir)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS usage (
                 account    TEXT PRIMARY KEY,
                 used       INTEGER NOT NULL,
                 credit     INTEGER NOT NULL DEFAULT 0,
                 active     INTEGER NOT NULL DEFAULT 0,
                 updated_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS periods (
                 account    TEXT NOT NULL,
                 start      INTEGER NOT NULL,
                 used       INTEGER NOT NULL,
                 PRIMARY KEY (account, start)
             );
             CREATE TABLE IF NOT EXISTS usage_hourly (
                 account TEXT NOT NULL,
                 hour    INTEGER NOT NULL,
                 bytes   INTEGER NOT NULL,
                 PRIMARY KEY (account, hour)
             );
             CREATE INDEX IF NOT EXISTS usage_hourly_by_hour ON usage_hourly (hour);
             CREATE TABLE IF NOT EXISTS adjustments (
                 id         INTEGER PRIMARY KEY AUTOINCREMENT,
                 account    TEXT NOT NULL,
                 kind       TEXT NOT NULL,
                 amount     INTEGER NOT NULL,
                 created_at INTEGER NOT NULL
             );",
        )
        .map_err(db_err)?;
        // Stores written before plan periods existed lack the column.
        let has_period: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('usage') WHERE name = 'period_start'")
            .and_then(|mut st| st.exists([]))
            .map_err(db_err)?;
        if !has_period {
            conn.execute_batch(
                "ALTER TABLE usage ADD COLUMN period_start INTEGER NOT NULL DEFAULT 0;",
            )
            .map_err(db_err)?;
        }
        // And the plan's period and bandwidth, for rolling rows of accounts not in use.
        let has_kind: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('usage') WHERE name = 'period'")
            .and_then(|mut st| st.exists([]))
            .map_err(db_err)?;
        if !has_kind {
            conn.execute_batch(
                "ALTER TABLE usage ADD COLUMN period TEXT NOT NULL DEFAULT 'none';
                 ALTER TABLE usage ADD COLUMN plan_bandwidth INTEGER NOT NULL DEFAULT 0;",
            )
            .map_err(db_err)?;
        }
        Ok(SqliteStore {
            conn,
            state_dir: state_dir.to_path_buf(),
        })
    }

    fn read_queue(&mut self) -> Result<Vec<(i64, String, Adjustment)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, account, kind, amount FROM adjustments ORDER BY id")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, account, kind, amount) = row.map_err(db_err)?;
            let adj = match kind.as_str() {
                "reset" => Adjustment::Reset,
                _ => Adjustment::TopUp(amount.max(0) as u64),
            };
            out.push((id, account, adj));
        }
        Ok(out)
    }
}

impl UsageBackend for SqliteStore {
    fn load(&mut self) -> Result<HashMap<String, Stored>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT account, used, credit, active, updated_at, period_start, period, plan_bandwidth FROM usage")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Stored {
                        used: r.get::<_, i64>(1)?.max(0) as u64,
                        credit: r.get::<_, i64>(2)?.max(0) as u64,
                        active: r.get::<_, i64>(3)?.max(0) as u32,
                        updated: r.get::<_, i64>(4)?,
                        period_start: r.get::<_, i64>(5)?,
                        period: crate::config::parse_period(&r.get::<_, String>(6)?)
                            .unwrap_or_default(),
                        plan_bandwidth: r.get::<_, i64>(7)?.max(0) as u64,
                    },
                ))
            })
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err)).collect()
    }

    fn load_one(&mut self, account: &str) -> Result<Option<Stored>, String> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached(
                "SELECT used, credit, active, updated_at, period_start, period, plan_bandwidth
                 FROM usage WHERE account = ?1",
            )
            .and_then(|mut st| {
                st.query_row(params![account], |r| {
                    Ok(Stored {
                        used: r.get::<_, i64>(0)?.max(0) as u64,
                        credit: r.get::<_, i64>(1)?.max(0) as u64,
                        active: r.get::<_, i64>(2)?.max(0) as u32,
                        updated: r.get::<_, i64>(3)?,
                        period_start: r.get::<_, i64>(4)?,
                        period: crate::config::parse_period(&r.get::<_, String>(5)?)
                            .unwrap_or_default(),
                        plan_bandwidth: r.get::<_, i64>(6)?.max(0) as u64,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    fn reader(&self) -> Option<Box<dyn UsageBackend>> {
        match SqliteStore::open(&self.state_dir) {
            Ok(s) => Some(Box::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "usage store: no separate reader; reads share the writer");
                None
            }
        }
    }

    fn save(&mut self, rows: &[(String, Stored)], ended: &[EndedPeriod]) -> Result<(), String> {
        if rows.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO periods (account, start, used) VALUES (?1, ?2, ?3)
                     ON CONFLICT(account, start) DO UPDATE SET used = used + ?3",
                )
                .map_err(db_err)?;
            for (account, start, used) in ended {
                stmt.execute(params![account, start, (*used).min(i64::MAX as u64) as i64])
                    .map_err(db_err)?;
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage (account, used, credit, active, updated_at, period_start,
                         period, plan_bandwidth)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(account) DO UPDATE SET used = ?2, credit = ?3,
                         active = ?4, updated_at = ?5, period_start = ?6, period = ?7,
                         plan_bandwidth = ?8",
                )
                .map_err(db_err)?;
            let now = now_unix();
            for (account, s) in rows {
                stmt.execute(params![
                    account,
                    s.used.min(i64::MAX as u64) as i64,
                    s.credit.min(i64::MAX as u64) as i64,
                    s.active,
                    now,
                    s.period_start,
                    s.period.as_str(),
                    s.plan_bandwidth.min(i64::MAX as u64) as i64
                ])
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn queue(&mut self, account: &str, adj: Adjustment) -> Result<(), String> {
        let (kind, amount) = match adj {
            Adjustment::Reset => ("reset", 0i64),
            Adjustment::TopUp(n) => ("top-up", n.min(i64::MAX as u64) as i64),
        };
        self.conn
            .execute(
                "INSERT INTO adjustments (account, kind, amount, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![account, kind, amount, now_unix()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn take_queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
        let queued = self.read_queue()?;
        if let Some((last, _, _)) = queued.last() {
            self.conn
                .execute("DELETE FROM adjustments WHERE id <= ?1", params![last])
                .map_err(db_err)?;
        }
        Ok(queued.into_iter().map(|(_, a, adj)| (a, adj)).collect())
    }

    fn periods(&mut self, account: &str) -> Result<Vec<(i64, u64)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT start, used FROM periods WHERE account = ?1 ORDER BY start DESC")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![account], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err)).collect()
    }

    fn roll_dormant(&mut self, period: crate::config::Period, start: i64) -> Result<usize, String> {
        if period == crate::config::Period::None {
            return Ok(0);
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO periods (account, start, used)
             SELECT account, period_start, used FROM usage
             WHERE period = ?1 AND period_start != 0 AND period_start < ?2
             ON CONFLICT(account, start) DO UPDATE SET used = used + excluded.used",
            params![period.as_str(), start],
        )
        .map_err(db_err)?;
        // Credit the period needed (usage beyond the plan) is gone; the rest is kept.
        let n = tx
            .execute(
                "UPDATE usage SET credit = MAX(0, credit - MAX(0, used - plan_bandwidth)),
                     used = 0, period_start = ?2, updated_at = ?3
                 WHERE period = ?1 AND period_start != 0 AND period_start < ?2",
                params![period.as_str(), start, now_unix()],
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(n)
    }

    fn add_hourly(&mut self, rows: &[(String, i64, u64)]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO usage_hourly (account, hour, bytes) VALUES (?1, ?2, ?3)
                     ON CONFLICT(account, hour) DO UPDATE SET bytes = bytes + ?3",
                )
                .map_err(db_err)?;
            for (a, hour, bytes) in rows {
                st.execute(params![a, hour, (*bytes).min(i64::MAX as u64) as i64])
                    .map_err(db_err)?;
            }
        }
        // Buckets are kept for 45 days.
        let oldest = now_unix() - 45 * 86_400;
        tx.execute("DELETE FROM usage_hourly WHERE hour < ?1", params![oldest])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn hourly(&mut self, account: &str, since: i64) -> Result<Vec<(i64, u64)>, String> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT hour, bytes FROM usage_hourly WHERE account = ?1 AND hour >= ?2 ORDER BY hour",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![account, since], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err)).collect()
    }

    fn queued(&mut self) -> Result<Vec<(String, Adjustment)>, String> {
        Ok(self
            .read_queue()?
            .into_iter()
            .map(|(_, a, adj)| (a, adj))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boundary passed while an account was not in use rolls its stored row once: the
    /// usage goes to the history, credit the period needed is gone, the rest kept.
    #[test]
    fn dormant_rows_roll_at_a_boundary() {
        use crate::config::Period;
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        let day = 1_764_547_200; // 2025-12-01T00:00:00Z
        let row = |period, used| Stored {
            used,
            credit: 800,
            period_start: day,
            period,
            plan_bandwidth: 1000,
            ..Default::default()
        };
        s.save(
            &[
                ("daily".into(), row(Period::Day, 1500)),
                ("monthly".into(), row(Period::Month, 1500)),
                ("plain".into(), row(Period::None, 1500)),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.roll_dormant(Period::Day, day + 86_400).unwrap(), 1);
        assert_eq!(
            s.roll_dormant(Period::Day, day + 86_400).unwrap(),
            0,
            "once"
        );
        let got = s.load_one("daily").unwrap().unwrap();
        assert_eq!(
            (got.used, got.credit, got.period_start),
            (0, 300, day + 86_400)
        );
        assert_eq!(s.periods("daily").unwrap(), vec![(day, 1500)]);
        assert_eq!(s.load_one("monthly").unwrap().unwrap().used, 1500);
        assert_eq!(s.load_one("plain").unwrap().unwrap().used, 1500);
    }

    #[test]
    fn round_trip_and_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path()).unwrap();
        assert!(s.load().unwrap().is_empty());
        let row = Stored {
            used: 12_345_678_901,
            credit: 7,
            active: 3,
            updated: 0,
            period_start: 1_700_000_000,
            ..Default::default()
        };
        s.save(&[("alice".into(), row)], &[]).unwrap();
        s.queue("alice", Adjustment::TopUp(1 << 30)).unwrap();
        s.queue("bob", Adjustment::Reset).unwrap();
        drop(s);
        let mut s = SqliteStore::open(dir.path()).unwrap();
        let got = s.load().unwrap()["alice"];
        assert_eq!((got.used, got.credit, got.active), (12_345_678_901, 7, 3));
        assert_eq!(got.period_start, 1_700_000_000);
        s.save(&[], &[("alice".into(), 100, 5), ("alice".into(), 200, 6)])
            .unwrap();
        assert_eq!(s.periods("alice").unwrap(), vec![(200, 6), (100, 5)]);
        assert_eq!(s.queued().unwrap().len(), 2);
        assert_eq!(
            s.take_queued().unwrap(),
            vec![
                ("alice".to_string(), Adjustment::TopUp(1 << 30)),
                ("bob".to_string(), Adjustment::Reset)
            ]
        );
        assert!(s.take_queued().unwrap().is_empty());
    }
}

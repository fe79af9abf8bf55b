//! The support trail: every refusal the gateway answers itself (an HTTP error response, a
//! SOCKS5 failure reply) gets a request id, shown to the client (`X-Request-Id`), written
//! on its access line (`request_id=`) and kept as an [`ErrorRecord`] for a bounded time and
//! count, so that support can find "what happened at 14:03:12" from what the customer saw.
//!
//! Executors hand records to [`Trail::record`] (a bounded channel: a full one drops the
//! record and counts it, never blocks a core); one thread writes them in batches to the
//! [`TrailStore`] (SQLite under `state_dir`, or Redis on a cluster) and trims it.

use crate::config::Snapshot;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Records waiting for the writer at most; more are dropped (and counted).
const QUEUE: usize = 65_536;
/// How often the writer writes what is queued.
const WRITE_EVERY: Duration = Duration::from_millis(200);
/// How often the writer trims by age and count (and after each write).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// A new request id: 16 hex digits, random (unique enough across nodes and restarts for
/// the records kept).
pub fn new_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// One refusal, as support finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub account: Option<String>,
    /// `http` or `socks5`.
    pub proto: String,
    /// The HTTP status of the refusal (SOCKS5 refusals carry their table row's code too).
    pub code: u16,
    /// What went wrong, in the gateway's words (the access line's `error`).
    pub error: String,
    /// The answer's body, as the client read it (HTTP; SOCKS5 refusals have none).
    #[serde(default)]
    pub body: String,
    pub target: Option<String>,
    pub peer: Option<String>,
    pub exit: Option<String>,
    pub network: Option<String>,
}

/// How many records are kept, and for how long (`[support]`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub count: u64,
    pub age: Duration,
}

impl Retention {
    pub fn of(snap: &Snapshot) -> Retention {
        Retention {
            count: snap.support.errors_kept,
            age: snap.support.errors_for.0,
        }
    }
}

/// Where records are kept.
pub trait TrailStore: Send {
    fn write(&mut self, records: &[ErrorRecord]) -> Result<(), String>;
    /// Drop records older than `retention.age`, and the oldest beyond `retention.count`.
    fn trim(&mut self, retention: Retention, now_ms: i64) -> Result<(), String>;
    fn get(&mut self, id: &str) -> Result<Option<ErrorRecord>, String>;
    /// `account`'s records from `since_ms` to `until_ms`, newest first, at most `limit`.
    fn by_account(
        &mut self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<ErrorRecord>, String>;
}

/// The executors' side: hand a record to the writer.
#[derive(Clone)]
pub struct Trail {
    tx: flume::Sender<ErrorRecord>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trail")
    }
}

impl Trail {
    /// A trail whose records go nowhere (harnesses).
    pub fn discard() -> Trail {
        let (tx, _) = flume::bounded(1);
        Trail {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queue a record for the writer; never waits.
    pub fn record(&self, r: ErrorRecord) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer fell behind (or is gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Start the writer thread over `store`; `retention` is read from `current` at each trim
    /// (a reload applies).
    pub fn start(
        mut store: Box<dyn TrailStore>,
        current: impl Fn() -> Retention + Send + 'static,
    ) -> Result<Trail, String> {
        let (tx, rx) = flume::bounded::<ErrorRecord>(QUEUE);
        std::thread::Builder::new()
            .name("tollgate-support".into())
            .spawn(move || {
                let mut next_trim = std::time::Instant::now();
                let mut batch = Vec::new();
                loop {
                    match rx.recv_timeout(WRITE_EVERY) {
                        Ok(r) => batch.push(r),
                        Err(flume::RecvTimeoutError::Timeout) => {}
                        Err(flume::RecvTimeoutError::Disconnected) => return,
                    }
                    batch.extend(rx.try_iter().take(10_000));
                    if !batch.is_empty() {
                        match store.write(&batch) {
                            Ok(()) => {
                                batch.clear();
                                next_trim = std::time::Instant::now();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, records = batch.len(), "error records not written; will retry");
                                if batch.len() > QUEUE {
                                    batch.clear();
                                }
                            }
                        }
                    }
                    if std::time::Instant::now() >= next_trim {
                        next_trim = std::time::Instant::now() + TRIM_EVERY;
                        let now = crate::util::wall_now().as_millisecond();
                        if let Err(e) = store.trim(current(), now) {
                            tracing::warn!(error = %e, "error records not trimmed");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the support writer: {e}"))?;
        Ok(Trail {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// Records in SQLite (`<state_dir>/usage.sqlite3`, table `errors`).
pub struct SqliteTrail {
    conn: Connection,
}

fn db_err(e: rusqlite::Error) -> String {
    format!("error records: {e}")
}

impl SqliteTrail {
    pub fn open(state_dir: &Path) -> Result<SqliteTrail, String> {
        let conn = crate::util::db::open(state_dir)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS errors (
                 seq     INTEGER PRIMARY KEY AUTOINCREMENT,
                 id      TEXT NOT NULL UNIQUE,
                 at_ms   INTEGER NOT NULL,
                 account TEXT,
                 proto   TEXT NOT NULL,
                 code    INTEGER NOT NULL,
                 error   TEXT NOT NULL,
                 body    TEXT NOT NULL DEFAULT '',
                 target  TEXT,
                 peer    TEXT,
                 exit    TEXT,
                 network TEXT
             );
             CREATE INDEX IF NOT EXISTS errors_by_account ON errors (account, at_ms);
             CREATE INDEX IF NOT EXISTS errors_by_time ON errors (at_ms);",
        )
        .map_err(db_err)?;
        Ok(SqliteTrail { conn })
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ErrorRecord> {
        Ok(ErrorRecord {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            account: r.get(2)?,
            proto: r.get(3)?,
            code: r.get::<_, i64>(4)?.clamp(0, 999) as u16,
            error: r.get(5)?,
            body: r.get(10)?,
            target: r.get(6)?,
            peer: r.get(7)?,
            exit: r.get(8)?,
            network: r.get(9)?,
        })
    }
}

const COLUMNS: &str = "id, at_ms, account, proto, code, error, target, peer, exit, network, body";

impl TrailStore for SqliteTrail {
    fn write(&mut self, records: &[ErrorRecord]) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut st = tx
                .prepare_cached(&format!(
                    "INSERT OR IGNORE INTO errors ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ))
                .map_err(db_err)?;
            for r in records {
                st.execute(params![
                    r.id, r.at_ms, r.account, r.proto, r.code, r.error, r.target, r.peer, r.exit,
                    r.network, r.body
                ])
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn trim(&mut self, retention: Retention, now_ms: i64) -> Result<(), String> {
        let oldest = now_ms - retention.age.as_millis().min(i64::MAX as u128) as i64;
        self.conn
            .execute("DELETE FROM errors WHERE at_ms < ?1", params![oldest])
            .map_err(db_err)?;
        self.conn
            .execute(
                "DELETE FROM errors WHERE seq <= (SELECT MAX(seq) FROM errors) - ?1",
                params![retention.count.min(i64::MAX as u64) as i64],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn get(&mut self, id: &str) -> Result<Option<ErrorRecord>, String> {
        self.conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM errors WHERE id = ?1"))
            .and_then(|mut st| st.query_row(params![id], Self::row).optional())
            .map_err(db_err)
    }

    fn by_account(
        &mut self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<ErrorRecord>, String> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM errors WHERE account = ?1 AND at_ms >= ?2 AND at_ms <= ?3
                 ORDER BY at_ms DESC, seq DESC LIMIT ?4"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(
                params![account, since_ms, until_ms, limit as i64],
                Self::row,
            )
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, at_ms: i64, account: &str) -> ErrorRecord {
        ErrorRecord {
            id: id.into(),
            at_ms,
            account: Some(account.into()),
            proto: "http".into(),
            code: 454,
            error: "invalid country".into(),
            body: "invalid country code".into(),
            target: Some("example.com:443".into()),
            peer: None,
            exit: None,
            network: Some("n".into()),
        }
    }

    #[test]
    fn records_are_found_by_id_and_account_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteTrail::open(dir.path()).unwrap();
        let recs: Vec<ErrorRecord> = (0..10)
            .map(|i| {
                rec(
                    &format!("id{i}"),
                    1_000 + i,
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect();
        s.write(&recs).unwrap();
        s.write(&recs[..1]).unwrap(); // a retried batch: no duplicate
        assert_eq!(s.get("id3").unwrap().unwrap(), recs[3]);
        let a: Vec<String> = s
            .by_account("a", 0, i64::MAX, 3)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(a, ["id8", "id6", "id4"]);
        assert_eq!(s.by_account("a", 1_003, 1_005, 10).unwrap().len(), 1);
        let keep = Retention {
            count: 4,
            age: Duration::from_secs(3600),
        };
        s.trim(keep, 2_000).unwrap();
        assert!(s.get("id5").unwrap().is_none());
        assert!(s.get("id6").unwrap().is_some());
        let young = Retention {
            count: 100,
            age: Duration::from_millis(1),
        };
        s.trim(young, 1_009).unwrap();
        assert!(s.get("id7").unwrap().is_none());
        assert!(s.get("id9").unwrap().is_some());
    }
}

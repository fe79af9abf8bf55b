//! The embedded store's file: `<state_dir>/usage.sqlite3`, opened the same way by every
//! part that keeps something there (usage, the API's accounts, the support trail): the
//! directory made if needed, WAL mode (readers go on while one writes; operators' CLI
//! commands work while the gateway runs), and a busy timeout instead of an error when
//! another connection holds the write lock.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// A connection to the store under `state_dir`.
pub fn open(state_dir: &Path) -> Result<Connection, String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("state_dir {}: {e}", state_dir.display()))?;
    let path = state_dir.join("usage.sqlite3");
    let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
    let conn = Connection::open(&path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .map_err(fail)?;
    Ok(conn)
}

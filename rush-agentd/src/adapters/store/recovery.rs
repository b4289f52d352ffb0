//! A database SQLite cannot read whole is moved aside and what can be read is copied
//! into a new one, before anything opens it.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{MIGRATIONS, StoreError, migrate};

/// What [`recover_if_corrupt`] did with a database SQLite could not read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the damaged file now is (with its `-wal` beside it, if there was one).
    pub moved_to: PathBuf,
    /// Why it was judged damaged (SQLite's words).
    pub why: String,
    /// Rows copied into the new database, per table.
    pub salvaged: Vec<(String, u64)>,
    /// Tables (or rows of them) that could not be read, and why.
    pub lost: Vec<String>,
}

/// The tables salvaged from a damaged database, in this order (meta first: its boot id
/// decides whether the agents and tokens copied after it are still alive).
const SALVAGE: &[&str] = &[
    "meta",
    "agents",
    "tokens",
    "sessions",
    "timelines",
    "checkpoints",
    "journal",
    "session_kv",
    "session_cwd",
    "restartable",
    "claims",
    "intents",
    "results",
    "tasks",
    "audit",
];

/// Checks the database at `path` before the daemon uses it. A file SQLite cannot read
/// whole (not a database, a failed `PRAGMA quick_check`) is moved aside as
/// `state.db.corrupt-<unix time>`, a new one is made, and every row that can still be read
/// from the old one is copied over. The daemon then starts from what was saved: agents
/// it no longer knows are killed (fail closed), and the loss is reported (audit
/// `store_recovered`, `rush doctor`). A database from a newer daemon is never touched.
pub fn recover_if_corrupt(path: &Path) -> Result<Option<Recovery>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let why = match damage(path) {
        Ok(None) => return Ok(None),
        Ok(Some(why)) => why,
        Err(e) => return Err(e),
    };
    tracing::error!(path = %path.display(), %why, "state database damaged: moving it aside and salvaging what is readable");
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let moved_to = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    let io = |what: &str, e: std::io::Error| StoreError::Corrupt {
        path: path.to_owned(),
        what: format!("cannot move the damaged database aside ({what}): {e}"),
    };
    // Its WAL and shared-memory index go with it, under the names SQLite derives.
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", moved_to.display())).map_err(|e| io(suffix, e))?;
        }
    }
    std::fs::rename(path, &moved_to).map_err(|e| io("rename", e))?;
    let err = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let mut conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    migrate(&mut conn, path)?;
    let mut recovery = Recovery { moved_to: moved_to.clone(), why, salvaged: Vec::new(), lost: Vec::new() };
    if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS old", [moved_to.to_string_lossy()]) {
        recovery.lost.push(format!("everything: {e}"));
        return Ok(Some(recovery));
    }
    for table in SALVAGE {
        match salvage_table(&conn, table) {
            Ok((copied, failed)) => {
                recovery.salvaged.push((table.to_string(), copied));
                if failed > 0 {
                    recovery.lost.push(format!("{table}: {failed} unreadable rows"));
                }
            }
            Err(e) => recovery.lost.push(format!("{table}: {e}")),
        }
    }
    let _ = conn.execute("DETACH DATABASE old", []);
    Ok(Some(recovery))
}

/// None if SQLite reads the database whole, else why not. Errors only for what recovery
/// must not touch (a newer schema).
fn damage(path: &Path) -> Result<Option<String>, StoreError> {
    let check = || -> rusqlite::Result<(i64, Vec<String>)> {
        let conn = Connection::open(path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok((version, rows))
    };
    match check() {
        Ok((version, _)) if version > MIGRATIONS.len() as i64 => {
            Err(StoreError::TooNew { path: path.to_owned(), found: version, known: MIGRATIONS.len() as i64 })
        }
        Ok((_, rows)) if rows == ["ok"] => Ok(None),
        Ok((_, rows)) => Ok(Some(rows.into_iter().take(3).collect::<Vec<_>>().join("; "))),
        // Busy/locked is another process holding it, not damage.
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            Err(StoreError::Sqlite { path: path.to_owned(), source: rusqlite::Error::SqliteFailure(e, msg) })
        }
        Err(e) => Ok(Some(e.to_string())),
    }
}

/// Copies the readable rows of `old.<table>` into `main.<table>` (the columns both have):
/// all at once, else row by row. Returns (rows copied, rows unreadable).
fn salvage_table(conn: &Connection, table: &str) -> rusqlite::Result<(u64, u64)> {
    let columns = |schema: &str| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("PRAGMA {schema}.table_info({table})"))?;
        stmt.query_map([], |r| r.get::<_, String>(1))?.collect()
    };
    let old = columns("old")?;
    let cols: Vec<String> = columns("main")?.into_iter().filter(|c| old.contains(c)).collect();
    if cols.is_empty() {
        return Ok((0, 0));
    }
    let cols = cols.join(", ");
    let verb = if table == "meta" { "INSERT OR REPLACE" } else { "INSERT OR IGNORE" };
    let all = format!("{verb} INTO main.{table} ({cols}) SELECT {cols} FROM old.{table}");
    if let Ok(n) = conn.execute(&all, []) {
        return Ok((n as u64, 0));
    }
    // A damaged page fails the whole statement: one row at a time keeps the others.
    let mut stmt = conn.prepare(&format!("SELECT rowid FROM old.{table}"))?;
    let mut rowids = Vec::new();
    let mut rows = stmt.query([])?;
    loop {
        match rows.next() {
            Ok(Some(r)) => rowids.push(r.get::<_, i64>(0)?),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    drop(rows);
    let one = format!("{all} WHERE rowid = ?1");
    let (mut copied, mut failed) = (0, 0);
    for id in rowids {
        match conn.execute(&one, [id]) {
            Ok(n) => copied += n as u64,
            Err(_) => failed += 1,
        }
    }
    Ok((copied, failed))
}

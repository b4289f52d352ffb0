//! The daemon's durable state: an SQLite database (WAL, `synchronous=FULL`, versioned
//! schema) under the state dir holding the living agents and their tokens, written before
//! a request is acknowledged, read at start-up to re-adopt agents that outlived a daemon
//! and to rebuild their kernel entries.
//!
//! Deadlines are CLOCK_BOOTTIME values, meaningful within one boot only: the boot id is
//! stored with them, and a store from another boot is emptied on open (its agents died
//! with that boot). Restartable agents' spawn requests, sessions and the audit trail
//! outlive boots.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rush_proto::{AgentInfo, CheckpointInfo, Ops, SessionInfo, ShellState, SpawnRequest, TimelineInfo};
use rusqlite::{Connection, OptionalExtension, params};

use crate::core::FileKey;
use crate::core::token::{Condition, Origin, Token};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: schema version {found} is newer than this daemon's ({known})")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("state database {path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

impl StoreError {
    /// The disk (or the filesystem's quota) is full: the write can succeed once there is room.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

/// Schema migrations, in order; `PRAGMA user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        cgroup_id INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        files_confined INTEGER NOT NULL,
        log_path TEXT,
        info TEXT NOT NULL            -- rush_proto::AgentInfo as JSON
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        agent TEXT NOT NULL,
        cgroup_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        mnt_id INTEGER NOT NULL,
        save_dev INTEGER,
        save_ino INTEGER,
        ops INTEGER NOT NULL,
        expires_boot_ns INTEGER,      -- NULL: until revoked
        expires_unix_ms INTEGER,
        granted_unix_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        condition_command TEXT,
        condition_original TEXT,
        condition_worktree TEXT
    );
    CREATE INDEX tokens_by_cgroup ON tokens (cgroup_id);
",
    "
    -- Sessions and their history outlive reboots (the workspace does); JSON is the
    -- rush_proto type of each row.
    CREATE TABLE sessions (name TEXT PRIMARY KEY, info TEXT NOT NULL);
    CREATE TABLE timelines (
        session TEXT NOT NULL, name TEXT NOT NULL, info TEXT NOT NULL,
        PRIMARY KEY (session, name)
    );
    CREATE TABLE checkpoints (
        session TEXT NOT NULL, name TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        info TEXT NOT NULL,
        shell TEXT,                   -- rush_proto::ShellState
        PRIMARY KEY (session, name)
    );
    -- A workspace operation under way (one per session), so that a daemon that died in
    -- the middle of one can settle it when it starts again.
    CREATE TABLE journal (session TEXT PRIMARY KEY, op TEXT NOT NULL, detail TEXT NOT NULL);
",
    "
    -- The audit trail (audit.rs), kept across reboots. AUTOINCREMENT: sequence numbers
    -- never go back, even when retention has deleted every row.
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time_unix_ms INTEGER NOT NULL,
        agent TEXT,
        session TEXT,
        kind TEXT NOT NULL,
        caller_uid INTEGER,
        event TEXT NOT NULL           -- rush_proto::AuditEvent as JSON
    );
    CREATE INDEX audit_by_time ON audit (time_unix_ms);
    CREATE INDEX audit_by_agent ON audit (agent, seq);
    CREATE INDEX audit_by_session ON audit (session, seq);
    CREATE INDEX audit_by_kind ON audit (kind, seq);
    CREATE INDEX audit_by_caller ON audit (caller_uid, seq);
",
    "
    -- Per-session state beyond the workspace: key-value pairs, the saved working
    -- directory (bytes: paths need not be UTF-8), and the shells attached to it. An
    -- attachment names its shell by pid, start time and boot, so that a dead shell (or one
    -- from before a reboot) is recognised and pruned, also when its pid is reused.
    CREATE TABLE session_kv (
        session TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (session, key)
    );
    CREATE TABLE session_cwd (session TEXT PRIMARY KEY, cwd BLOB NOT NULL);
    CREATE TABLE session_attachments (
        pid INTEGER NOT NULL,
        start_ticks INTEGER NOT NULL,  -- /proc/PID/stat starttime
        boot_id TEXT NOT NULL,
        session TEXT NOT NULL,
        uid INTEGER NOT NULL,
        since_unix_ms INTEGER NOT NULL,
        tty TEXT,
        PRIMARY KEY (pid, start_ticks, boot_id)
    );
",
    "
    -- Agents spawned --restartable: what starting them again needs (RestartRecord as
    -- JSON). Kept across reboots, unlike `agents`.
    CREATE TABLE restartable (
        name TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        updated_unix_ms INTEGER NOT NULL
    );
",
];

/// Brings the schema of `conn` (the database at `path`) up to date. Each migration is one
/// transaction that also bumps the version, so a concurrent opener (the audit log's own
/// connection) either sees it whole or runs it after.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let known = MIGRATIONS.len() as i64;
    loop {
        // IMMEDIATE: the version is read under the write lock, so two openers cannot both
        // run the same migration.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if version > known {
            return Err(StoreError::TooNew { path: path.to_owned(), found: version, known });
        }
        let Some(sql) = MIGRATIONS.get(version as usize) else { return Ok(()) };
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
}

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

/// An agent as stored: enough to re-adopt it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub info: AgentInfo,
    pub files_confined: bool,
    pub log_path: Option<PathBuf>,
}

/// A shell attached to a session, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRecord {
    pub pid: i32,
    /// The process's start time (clock ticks since boot), telling it from a later process
    /// that got the same pid.
    pub start_ticks: u64,
    pub boot_id: String,
    pub session: String,
    pub uid: u32,
    pub since_unix_ms: u64,
    pub tty: Option<String>,
}

/// A restartable agent as stored: its spawn request and who asked, with its file tokens
/// as they stand (kept up to date through grants, revokes and expiries).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestartRecord {
    /// As it came; its `allow` is not used (`grants` replaces it).
    pub request: SpawnRequest,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub grants: Vec<RestartGrant>,
    /// File-confined (spawned with --allow): it must never restart without file tokens.
    pub files_confined: bool,
    /// Its first process when last written (0: never started on this boot).
    pub pid: u32,
}

/// A file token of a restartable agent, re-resolved from its path when it restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestartGrant {
    pub path: PathBuf,
    pub ops: Ops,
    /// Wall-clock expiry: a grant past it is not given again.
    pub expires_unix_ms: Option<u64>,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The database was last written during another boot (emptied of agents on open).
    other_boot: std::sync::atomic::AtomicBool,
    /// The agents that boot had (emptied away), for the audit trail to close.
    earlier_agents: Mutex<Vec<AgentInfo>>,
}

impl Store {
    /// Opens (creating, migrating) the database; empties it if it is from another boot.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        // Every acknowledged grant or revoke must survive a crash of the daemon or a power cut.
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let store = Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            other_boot: Default::default(),
            earlier_agents: Mutex::default(),
        };
        store.migrate()?;
        store.check_boot()?;
        Ok(store)
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
        let path = self.path.clone();
        move |source| StoreError::Sqlite { path, source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every later write fail (`PRAGMA query_only`), as a full disk would: for tests
    /// of what a refused write does.
    #[cfg(test)]
    pub fn refuse_writes(&self, refuse: bool) {
        self.lock().pragma_update(None, "query_only", refuse).unwrap();
    }

    fn migrate(&self) -> Result<(), StoreError> {
        migrate(&mut self.lock(), &self.path)
    }

    /// A store written during another boot describes nothing alive: emptied.
    fn check_boot(&self) -> Result<(), StoreError> {
        let boot = crate::core::boot_id();
        let conn = self.lock();
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        if stored.as_deref() != Some(boot.as_str()) {
            if stored.is_some() {
                tracing::info!("state database is from an earlier boot: its agents and tokens are gone");
                self.other_boot.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut stmt = conn.prepare("SELECT info FROM agents ORDER BY name").map_err(self.err())?;
                let infos: Vec<String> = stmt
                    .query_map([], |r| r.get(0))
                    .map_err(self.err())?
                    .collect::<Result<_, _>>()
                    .map_err(self.err())?;
                let gone = infos.iter().filter_map(|i| serde_json::from_str(i).ok()).collect();
                *self.earlier_agents.lock().unwrap_or_else(|p| p.into_inner()) = gone;
            }
            conn.execute_batch("DELETE FROM agents; DELETE FROM tokens;").map_err(self.err())?;
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('boot_id', ?1)", [boot])
                .map_err(self.err())?;
        }
        Ok(())
    }

    pub fn put_agent(&self, rec: &AgentRecord) -> Result<(), StoreError> {
        let info = serde_json::to_string(&rec.info)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), what: e.to_string() })?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO agents (name, cgroup_id, pid, files_confined, log_path, info)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rec.info.name,
                    rec.info.cgroup_id as i64,
                    rec.info.pid,
                    rec.files_confined,
                    rec.log_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
                    info
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The agent and its tokens.
    pub fn delete_agent(&self, name: &str, cgroup_id: u64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute("DELETE FROM agents WHERE name = ?1", [name]).map_err(self.err())?;
        tx.execute("DELETE FROM tokens WHERE cgroup_id = ?1", [cgroup_id as i64]).map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub fn put_tokens(&self, tokens: &[Token]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        for t in tokens {
            let cond = t.condition.as_ref();
            tx.execute(
                "INSERT OR REPLACE INTO tokens (id, agent, cgroup_id, path, dev, ino, mnt_id, save_dev,
                     save_ino, ops, expires_boot_ns, expires_unix_ms, granted_unix_ms, origin,
                     condition_command, condition_original, condition_worktree)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    t.id as i64,
                    t.agent,
                    t.cgroup_id as i64,
                    t.path.to_string_lossy(),
                    t.key.dev,
                    t.key.ino as i64,
                    t.mnt_id,
                    t.save_dir.map(|k| k.dev),
                    t.save_dir.map(|k| k.ino as i64),
                    t.ops.0,
                    t.expires.map(|(ns, _)| ns as i64),
                    t.expires.map(|(_, ms)| ms as i64),
                    t.granted_unix_ms as i64,
                    t.origin.as_str(),
                    cond.map(|c| c.command.clone()),
                    cond.map(|c| c.original.to_string_lossy().into_owned()),
                    cond.map(|c| c.worktree.to_string_lossy().into_owned()),
                ],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    pub fn delete_tokens(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        for id in ids {
            tx.execute("DELETE FROM tokens WHERE id = ?1", [*id as i64]).map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    /// The kernel moved a grant to a new inode (an editor-style save).
    pub fn rekey(&self, cgroup_id: u64, from: FileKey, to: FileKey) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE tokens SET dev = ?1, ino = ?2 WHERE cgroup_id = ?3 AND dev = ?4 AND ino = ?5",
                params![to.dev, to.ino as i64, cgroup_id as i64, from.dev, from.ino as i64],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT info, files_confined, log_path FROM agents ORDER BY name")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (info, files_confined, log_path) = row.map_err(self.err())?;
            let info: AgentInfo = serde_json::from_str(&info).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("agent record: {e}"),
            })?;
            out.push(AgentRecord { info, files_confined, log_path: log_path.map(PathBuf::from) });
        }
        Ok(out)
    }

    /// The tokens of one agent cgroup, in id order.
    pub fn tokens(&self, cgroup_id: u64) -> Result<Vec<Token>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, agent, path, dev, ino, mnt_id, save_dev, save_ino, ops, expires_boot_ns,
                        expires_unix_ms, granted_unix_ms, origin, condition_command,
                        condition_original, condition_worktree
                 FROM tokens WHERE cgroup_id = ?1 ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([cgroup_id as i64], |r| {
                let save = match (r.get::<_, Option<u32>>(6)?, r.get::<_, Option<i64>>(7)?) {
                    (Some(dev), Some(ino)) => Some(FileKey { dev, ino: ino as u64 }),
                    _ => None,
                };
                let expires = match (r.get::<_, Option<i64>>(9)?, r.get::<_, Option<i64>>(10)?) {
                    (Some(ns), Some(ms)) => Some((ns as u64, ms as u64)),
                    _ => None,
                };
                let condition = match (
                    r.get::<_, Option<String>>(13)?,
                    r.get::<_, Option<String>>(14)?,
                    r.get::<_, Option<String>>(15)?,
                ) {
                    (Some(command), Some(original), Some(worktree)) => {
                        Some(Condition { command, original: original.into(), worktree: worktree.into() })
                    }
                    _ => None,
                };
                Ok(Token {
                    id: r.get::<_, i64>(0)? as u64,
                    agent: r.get(1)?,
                    cgroup_id,
                    path: PathBuf::from(r.get::<_, String>(2)?),
                    key: FileKey { dev: r.get(3)?, ino: r.get::<_, i64>(4)? as u64 },
                    mnt_id: r.get(5)?,
                    save_dir: save,
                    ops: Ops(r.get(8)?),
                    expires,
                    granted_unix_ms: r.get::<_, i64>(11)? as u64,
                    origin: Origin::parse(&r.get::<_, String>(12)?).unwrap_or(Origin::Grant),
                    condition,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The agents the earlier boot had when this store was opened (once).
    pub fn take_earlier_boot_agents(&self) -> Vec<AgentInfo> {
        std::mem::take(&mut *self.earlier_agents.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this store was last written during an earlier boot of the machine.
    pub fn from_earlier_boot(&self) -> bool {
        self.other_boot.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn put_restartable(&self, rec: &RestartRecord) -> Result<(), StoreError> {
        let json = self.json(rec)?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO restartable (name, record, updated_unix_ms) VALUES (?1, ?2, ?3)",
                params![rec.request.name, json, crate::core::now_unix_ms() as i64],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn delete_restartable(&self, name: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM restartable WHERE name = ?1", [name]).map_err(self.err())?;
        Ok(())
    }

    /// By name.
    pub fn restartable(&self) -> Result<Vec<RestartRecord>, StoreError> {
        self.rows("restartable agent", "SELECT record FROM restartable ORDER BY name", [])
    }

    /// The highest token id ever stored (ids are never reused across restarts).
    pub fn max_token_id(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        let max: Option<i64> =
            conn.query_row("SELECT MAX(id) FROM tokens", [], |r| r.get(0)).map_err(self.err())?;
        Ok(max.unwrap_or(0) as u64)
    }
}

/// Sessions, timelines, checkpoints and the journal of workspace operations.
impl Store {
    fn json<T: serde::Serialize>(&self, v: &T) -> Result<String, StoreError> {
        serde_json::to_string(v)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), what: e.to_string() })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, s: &str) -> Result<T, StoreError> {
        serde_json::from_str(s)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), what: format!("{what}: {e}") })
    }

    fn rows<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql).map_err(self.err())?;
        let texts = stmt
            .query_map(args, |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.err())?;
        texts.iter().map(|t| self.parse(what, t)).collect()
    }

    pub fn put_session(&self, s: &SessionInfo) -> Result<(), StoreError> {
        let info = self.json(s)?;
        self.lock()
            .execute("INSERT OR REPLACE INTO sessions (name, info) VALUES (?1, ?2)", params![s.name, info])
            .map_err(self.err())?;
        Ok(())
    }

    pub fn sessions(&self) -> Result<Vec<SessionInfo>, StoreError> {
        self.rows("session", "SELECT info FROM sessions ORDER BY name", [])
    }

    /// The session and everything it had.
    pub fn delete_session(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        for table in [
            "sessions",
            "timelines",
            "checkpoints",
            "journal",
            "session_kv",
            "session_cwd",
            "session_attachments",
        ] {
            let col = if table == "sessions" { "name" } else { "session" };
            tx.execute(&format!("DELETE FROM {table} WHERE {col} = ?1"), [name]).map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    pub fn put_timeline(&self, session: &str, t: &TimelineInfo) -> Result<(), StoreError> {
        let info = self.json(t)?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO timelines (session, name, info) VALUES (?1, ?2, ?3)",
                params![session, t.name, info],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn timelines(&self, session: &str) -> Result<Vec<TimelineInfo>, StoreError> {
        self.rows("timeline", "SELECT info FROM timelines WHERE session = ?1 ORDER BY name", [session])
    }

    pub fn put_checkpoint(&self, c: &CheckpointInfo, shell: Option<&ShellState>) -> Result<(), StoreError> {
        let info = self.json(c)?;
        let shell = shell.map(|s| self.json(s)).transpose()?;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO checkpoints (session, name, created_unix_ms, info, shell)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![c.session, c.name, c.created_unix_ms as i64, info, shell],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Oldest first.
    pub fn checkpoints(&self, session: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
        self.rows(
            "checkpoint",
            "SELECT info FROM checkpoints WHERE session = ?1 ORDER BY created_unix_ms, name",
            [session],
        )
    }

    pub fn checkpoint_shell(&self, session: &str, name: &str) -> Result<Option<ShellState>, StoreError> {
        let text: Option<Option<String>> = self
            .lock()
            .query_row(
                "SELECT shell FROM checkpoints WHERE session = ?1 AND name = ?2",
                [session, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        text.flatten().map(|t| self.parse("shell state", &t)).transpose()
    }

    pub fn delete_checkpoint(&self, session: &str, name: &str) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM checkpoints WHERE session = ?1 AND name = ?2", [session, name])
            .map_err(self.err())?;
        Ok(())
    }

    /// Sets (or replaces) one key; false if there is no such session (checked in the same
    /// statement, so a concurrent `session rm` cannot leave the key behind).
    pub fn put_kv(&self, session: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute(
                "INSERT OR REPLACE INTO session_kv (session, key, value)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM sessions WHERE name = ?1)",
                [session, key, value],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// The removed value, if the key was there.
    pub fn delete_kv(&self, session: &str, key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        let old: Option<String> = tx
            .query_row("SELECT value FROM session_kv WHERE session = ?1 AND key = ?2", [session, key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        tx.execute("DELETE FROM session_kv WHERE session = ?1 AND key = ?2", [session, key])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(old)
    }

    /// (key, value) pairs sorted by key: all of them, or the one named.
    pub fn kv(&self, session: &str, key: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT key, value FROM session_kv WHERE session = ?1 AND (?2 IS NULL OR key = ?2)
                 ORDER BY key",
            )
            .map_err(self.err())?;
        stmt.query_map(params![session, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())
    }

    /// Key names only, sorted (counting and listing need no values of up to 64 KiB each).
    pub fn kv_keys(&self, session: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT key FROM session_kv WHERE session = ?1 ORDER BY key").map_err(self.err())?;
        stmt.query_map([session], |r| r.get(0))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())
    }

    /// False if there is no such session.
    pub fn put_cwd(&self, session: &str, cwd: &Path) -> Result<bool, StoreError> {
        use std::os::unix::ffi::OsStrExt;
        let n = self
            .lock()
            .execute(
                "INSERT OR REPLACE INTO session_cwd (session, cwd)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM sessions WHERE name = ?1)",
                params![session, cwd.as_os_str().as_bytes()],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    pub fn cwd(&self, session: &str) -> Result<Option<PathBuf>, StoreError> {
        use std::os::unix::ffi::OsStringExt;
        let bytes: Option<Vec<u8>> = self
            .lock()
            .query_row("SELECT cwd FROM session_cwd WHERE session = ?1", [session], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        Ok(bytes.map(|b| PathBuf::from(std::ffi::OsString::from_vec(b))))
    }

    /// Binds a shell to a session (false if there is no such session); a shell is
    /// attached to one session at a time, so this replaces an attachment it had elsewhere.
    pub fn put_attachment(&self, a: &AttachmentRecord) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute(
                "INSERT OR REPLACE INTO session_attachments
                     (pid, start_ticks, boot_id, session, uid, since_unix_ms, tty)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM sessions WHERE name = ?4)",
                params![
                    a.pid,
                    a.start_ticks as i64,
                    a.boot_id,
                    a.session,
                    a.uid,
                    a.since_unix_ms as i64,
                    a.tty
                ],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Every attachment (of one session, or of all), oldest first.
    pub fn attachments(&self, session: Option<&str>) -> Result<Vec<AttachmentRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT pid, start_ticks, boot_id, session, uid, since_unix_ms, tty FROM session_attachments
                 WHERE ?1 IS NULL OR session = ?1 ORDER BY since_unix_ms, pid",
            )
            .map_err(self.err())?;
        stmt.query_map([session], |r| {
            Ok(AttachmentRecord {
                pid: r.get(0)?,
                start_ticks: r.get::<_, i64>(1)? as u64,
                boot_id: r.get(2)?,
                session: r.get(3)?,
                uid: r.get(4)?,
                since_unix_ms: r.get::<_, i64>(5)? as u64,
                tty: r.get(6)?,
            })
        })
        .map_err(self.err())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.err())
    }

    /// Whether there was one to drop.
    pub fn delete_attachment(&self, a: &AttachmentRecord) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute(
                "DELETE FROM session_attachments WHERE pid = ?1 AND start_ticks = ?2 AND boot_id = ?3",
                params![a.pid, a.start_ticks as i64, a.boot_id],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Records that `op` on `session` has begun; `detail` is what settling it needs.
    pub fn journal_begin(&self, session: &str, op: &str, detail: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO journal (session, op, detail) VALUES (?1, ?2, ?3)",
                [session, op, detail],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn journal_end(&self, session: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM journal WHERE session = ?1", [session]).map_err(self.err())?;
        Ok(())
    }

    /// (session, op, detail) of operations a crash interrupted.
    pub fn journal(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT session, op, detail FROM journal").map_err(self.err())?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u64, cgroup_id: u64) -> Token {
        Token {
            id,
            agent: "a".into(),
            cgroup_id,
            path: "/srv/x".into(),
            key: FileKey { dev: 7, ino: 42 },
            mnt_id: 3,
            save_dir: Some(FileKey { dev: 7, ino: 2 }),
            ops: Ops::READ,
            expires: Some((123, 456)),
            granted_unix_ms: 9,
            origin: Origin::Grant,
            condition: Some(Condition {
                command: "true".into(),
                original: "/srv/x".into(),
                worktree: "/srv/.x".into(),
            }),
        }
    }

    fn info(name: &str, cgroup_id: u64) -> AgentInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "cgroup_id": cgroup_id, "cgroup_path": "/sys/fs/cgroup/rush/a", "pid": 10,
            "uid": 0, "command": ["sleep"], "net": {"mode": "deny"}, "state": "running", "processes": 1,
            "started_unix_ms": 1, "enforcement": [], "detached": true
        }))
        .unwrap()
    }

    #[test]
    fn agents_and_tokens_round_trip_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_agent(&AgentRecord { info: info("a", 5), files_confined: true, log_path: None }).unwrap();
            s.put_tokens(&[token(1, 5), token(2, 5), token(3, 6)]).unwrap();
            s.delete_tokens(&[2]).unwrap();
            s.rekey(5, FileKey { dev: 7, ino: 42 }, FileKey { dev: 7, ino: 43 }).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let agents = s.agents().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].info.name, "a");
        assert!(agents[0].files_confined);
        let t = s.tokens(5).unwrap();
        assert_eq!(t.len(), 1, "token 2 deleted, token 3 is another agent's");
        let mut want = token(1, 5);
        want.key.ino = 43;
        assert_eq!(t[0].key, want.key);
        assert_eq!(t[0].expires, want.expires);
        assert_eq!(t[0].condition, want.condition);
        assert_eq!(t[0].save_dir, want.save_dir);
        assert_eq!(s.max_token_id().unwrap(), 3);
        s.delete_agent("a", 5).unwrap();
        assert!(s.agents().unwrap().is_empty());
        assert!(s.tokens(5).unwrap().is_empty());
    }

    fn session(name: &str) -> SessionInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "workspace": "/w", "live": "/s/live", "backend": "git", "timeline": "main",
            "created_unix_ms": 1
        }))
        .unwrap()
    }

    #[test]
    fn session_kv_cwd_and_attachments_round_trip_and_go_with_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let tricky = "line 1\nit's \"quoted\" $x `y` \\ ünï©ødé\0end";
        let att = |pid: i32, session: &str| AttachmentRecord {
            pid,
            start_ticks: 77,
            boot_id: "b".into(),
            session: session.into(),
            uid: 1000,
            since_unix_ms: 5,
            tty: Some("/dev/pts/1".into()),
        };
        {
            let s = Store::open(&path).unwrap();
            for name in ["s", "t"] {
                s.put_session(&session(name)).unwrap();
                assert!(s.put_kv(name, "k", tricky).unwrap());
                assert!(s.put_kv(name, "empty", "").unwrap());
                assert!(s.put_attachment(&att(if name == "s" { 10 } else { 11 }, name)).unwrap());
            }
            assert!(s.put_kv("s", "k2", "old").unwrap());
            assert!(s.put_kv("s", "k2", "new").unwrap());
            assert!(s.put_cwd("s", Path::new("/w/sub dir")).unwrap());
            assert!(!s.put_kv("gone", "k", "v").unwrap(), "a key of no session was stored");
            assert!(!s.put_cwd("gone", Path::new("/")).unwrap());
            assert!(!s.put_attachment(&att(12, "gone")).unwrap());
        }
        let s = Store::open(&path).unwrap();
        let kv = |k: Option<&str>| s.kv("s", k).unwrap();
        assert_eq!(
            kv(None),
            [("empty".into(), "".into()), ("k".into(), tricky.into()), ("k2".into(), "new".into())]
        );
        assert_eq!(kv(Some("k")), [("k".to_string(), tricky.to_string())]);
        assert_eq!(s.kv_keys("s").unwrap(), ["empty", "k", "k2"]);
        assert!(kv(Some("nope")).is_empty());
        assert_eq!(s.delete_kv("s", "k2").unwrap().as_deref(), Some("new"));
        assert_eq!(s.delete_kv("s", "k2").unwrap(), None);
        assert_eq!(s.cwd("s").unwrap(), Some(PathBuf::from("/w/sub dir")));
        assert_eq!(s.attachments(Some("s")).unwrap(), [att(10, "s")]);
        assert_eq!(s.attachments(None).unwrap().len(), 2);
        // The same shell attaching elsewhere moves its attachment.
        s.put_attachment(&att(10, "t")).unwrap();
        assert!(s.attachments(Some("s")).unwrap().is_empty());
        s.put_attachment(&att(10, "s")).unwrap();

        s.delete_session("s").unwrap();
        assert!(s.kv("s", None).unwrap().is_empty(), "kv outlived its session");
        assert_eq!(s.cwd("s").unwrap(), None);
        assert!(s.attachments(Some("s")).unwrap().is_empty());
        assert_eq!(s.kv("t", None).unwrap().len(), 2, "another session's keys went too");
        assert!(s.delete_attachment(&att(11, "t")).unwrap());
        assert!(!s.delete_attachment(&att(11, "t")).unwrap());
    }

    #[test]
    fn a_readable_database_is_left_alone_and_a_damaged_one_moved_aside_and_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert_eq!(recover_if_corrupt(&path).unwrap(), None, "no database yet");
        {
            let s = Store::open(&path).unwrap();
            s.put_session(&session("s1")).unwrap();
            s.put_agent(&AgentRecord { info: info("a", 5), files_confined: true, log_path: None }).unwrap();
            s.put_tokens(&[token(1, 5)]).unwrap();
            // Pages at the end of the file: the audit rows, the damage below hits them.
            let conn = s.lock();
            for i in 0..2000 {
                conn.execute(
                    "INSERT INTO audit (time_unix_ms, kind, event) VALUES (?1, 'spawn', ?2)",
                    params![i, "x".repeat(200)],
                )
                .unwrap();
            }
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        assert_eq!(recover_if_corrupt(&path).unwrap(), None, "an intact database is not touched");

        // Damage the last pages (audit's): the sessions, agents and tokens stay readable.
        let len = std::fs::metadata(&path).unwrap().len();
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[(len as usize - 40_000)..(len as usize - 20_000)] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = recover_if_corrupt(&path).unwrap().expect("damage found");
        assert!(r.moved_to.exists(), "{r:?}");
        assert_eq!(std::fs::read(&r.moved_to).unwrap(), bytes, "the damaged file kept as it was");
        let copied = |t: &str| r.salvaged.iter().find(|(n, _)| n == t).map(|(_, c)| *c);
        assert_eq!(copied("sessions"), Some(1), "{r:?}");
        assert_eq!(copied("tokens"), Some(1), "{r:?}");
        assert!(copied("audit").unwrap_or(0) < 2000, "some audit rows were lost: {r:?}");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.sessions().unwrap().len(), 1);
        assert_eq!(s.agents().unwrap().len(), 1, "same boot: the agent record is kept");
        assert_eq!(s.tokens(5).unwrap().len(), 1);
        drop(s);
        assert_eq!(recover_if_corrupt(&path).unwrap(), None, "the new database is whole");

        // Not a database at all: moved aside, a new empty one.
        std::fs::write(&path, b"this is not an SQLite database, not even close..........").unwrap();
        let _ = std::fs::remove_file(dir.path().join("state.db-wal"));
        let r = recover_if_corrupt(&path).unwrap().expect("damage found");
        assert!(r.why.contains("not a database"), "{r:?}");
        let s = Store::open(&path).unwrap();
        assert!(s.sessions().unwrap().is_empty());
    }

    #[test]
    fn restartable_agents_outlive_a_boot_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let request: SpawnRequest = serde_json::from_value(serde_json::json!({
            "name": "r", "command": ["sleep", "9"], "cwd": "/", "stdio": "log", "restartable": true
        }))
        .unwrap();
        let rec = RestartRecord {
            request,
            uid: 1000,
            gid: 1000,
            groups: vec![27],
            grants: vec![RestartGrant { path: "/srv/w".into(), ops: Ops::READ, expires_unix_ms: Some(5) }],
            files_confined: true,
            pid: 77,
        };
        {
            let s = Store::open(&path).unwrap();
            assert!(!s.from_earlier_boot());
            s.put_restartable(&rec).unwrap();
            s.lock().execute("UPDATE meta SET value = 'another-boot' WHERE key = 'boot_id'", []).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.from_earlier_boot());
        assert_eq!(s.restartable().unwrap(), vec![rec]);
        s.delete_restartable("r").unwrap();
        assert!(s.restartable().unwrap().is_empty());
    }

    #[test]
    fn a_store_from_another_boot_is_emptied_and_a_newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.put_tokens(&[token(1, 5)]).unwrap();
            s.put_agent(&AgentRecord { info: info("b", 5), files_confined: true, log_path: None }).unwrap();
            s.lock().execute("UPDATE meta SET value = 'another-boot' WHERE key = 'boot_id'", []).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.tokens(5).unwrap().is_empty());
        assert!(s.from_earlier_boot());
        let gone: Vec<String> = s.take_earlier_boot_agents().into_iter().map(|a| a.name).collect();
        assert_eq!(gone, ["b"], "the earlier boot's agents, for the audit trail");
        assert!(s.agents().unwrap().is_empty());
        s.lock().pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("99") && e.contains("newer"), "{e}");
    }
}

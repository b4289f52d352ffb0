//! The daemon's durable state: an SQLite database (WAL, `synchronous=FULL`, versioned
//! schema) under the state dir holding the living agents and their tokens, written before
//! a request is acknowledged, read at start-up to re-adopt agents that outlived a daemon
//! and to rebuild their kernel entries.
//!
//! Deadlines are CLOCK_BOOTTIME values, meaningful within one boot only: the boot id is
//! stored with them, and a store from another boot is emptied on open (its agents died
//! with that boot). Restartable agents' spawn requests, sessions and the audit trail
//! outlive boots.
//!
//! One file per group of tables: `agents` (agents, tokens, restartable agents),
//! `sessions` (sessions, timelines, checkpoints, key-values, attachments, the journal);
//! the audit table is written by `crate::services::audit`, with this module's migrations.
//! `recovery` moves a damaged database aside and salvages what it can.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rush_proto::AgentInfo;
use rusqlite::{Connection, OptionalExtension};

mod agents;
mod approvals;
mod coordination;
mod guardrails;
mod recovery;
mod sessions;
#[cfg(test)]
mod tests;
mod workspaces;

pub use agents::{AgentRecord, RestartGrant, RestartRecord};
pub use approvals::ApprovalRecord;
pub use coordination::{ClaimRecord, ClaimSwap};
pub use recovery::{Recovery, recover_if_corrupt};
pub use sessions::AttachmentRecord;

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
    "
    -- Coordination (coordination.rs): a row per task ever claimed, keeping its last
    -- fencing token when released (live = 0); intents, results, delegated tasks.
    CREATE TABLE claims (
        task TEXT PRIMARY KEY,
        fencing INTEGER NOT NULL,
        live INTEGER NOT NULL,
        agent TEXT,
        expires_unix_ms INTEGER,
        record TEXT                   -- ClaimRecord as JSON
    );
    CREATE TABLE intents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        expires_unix_ms INTEGER NOT NULL,
        info TEXT NOT NULL            -- rush_proto::coordination::Intent
    );
    CREATE TABLE results (
        session TEXT NOT NULL,        -- '' for agents without one
        key TEXT NOT NULL,
        info TEXT NOT NULL,           -- rush_proto::coordination::ResultInfo
        PRIMARY KEY (session, key)
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        to_agent TEXT NOT NULL,
        state TEXT NOT NULL,
        info TEXT NOT NULL            -- rush_proto::coordination::Task
    );
    CREATE INDEX tasks_by_agent ON tasks (to_agent, state);
",
    "
    -- The human attention queue (approvals.rs): a row per request; only a pending one
    -- changes state, once. `applied`: an approval's effect (a grant, a budget raise) is done;
    -- `seen`: the decision was shown to its agent; `token_sha256`: the email links' token.
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL,
        state TEXT NOT NULL,
        deadline_unix_ms INTEGER NOT NULL,
        applied INTEGER NOT NULL DEFAULT 0,
        seen INTEGER NOT NULL DEFAULT 0,
        token_sha256 TEXT,
        info TEXT NOT NULL            -- rush_proto::approval::Approval
    );
    CREATE INDEX approvals_by_state ON approvals (state, deadline_unix_ms);
    CREATE INDEX approvals_by_token ON approvals (token_sha256);
",
    "
    -- Risk gating's guardrails (guardrails.rs): one row per lesson, learned exactly once:
    -- the same scope and normalised pattern is the same guardrail.
    CREATE TABLE guardrails (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL,          -- GuardrailScope as `global`, `session:N`, `repository:P`
        pattern TEXT NOT NULL,
        info TEXT NOT NULL,           -- rush_proto::gate::Guardrail
        UNIQUE (scope, pattern)
    );
",
    "
    -- Agent workspaces (workspaces.rs) and their merge queue: a merge's row is written
    -- before each step it takes, so a restart knows where it stopped.
    CREATE TABLE workspaces (name TEXT PRIMARY KEY, info TEXT NOT NULL);
    CREATE TABLE merges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workspace TEXT NOT NULL,
        final INTEGER NOT NULL,       -- MergeState::is_final
        info TEXT NOT NULL            -- rush_proto::workspace::MergeJob
    );
    CREATE INDEX merges_open ON merges (final, id);
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

    /// A value as the JSON text stored for it.
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
}

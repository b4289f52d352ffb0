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

use crate::bpf::FileKey;
use crate::condition::Condition;
use crate::tokens::{Origin, Token};

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

/// An agent as stored: enough to re-adopt it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub info: AgentInfo,
    pub files_confined: bool,
    pub log_path: Option<PathBuf>,
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

    fn migrate(&self) -> Result<(), StoreError> {
        migrate(&mut self.lock(), &self.path)
    }

    /// A store written during another boot describes nothing alive: emptied.
    fn check_boot(&self) -> Result<(), StoreError> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
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
                params![rec.request.name, json, crate::audit::now_unix_ms() as i64],
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
        for table in ["sessions", "timelines", "checkpoints", "journal"] {
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

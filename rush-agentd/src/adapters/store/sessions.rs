//! Sessions, timelines, checkpoints, session key-values and working directories, attached
//! shells and the journal of workspace operations.

use std::path::{Path, PathBuf};

use rush_proto::{CheckpointInfo, SessionInfo, ShellState, TimelineInfo};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

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

/// Sessions, timelines, checkpoints and the journal of workspace operations.
impl Store {
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

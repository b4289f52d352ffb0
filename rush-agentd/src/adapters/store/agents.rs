//! The agents, tokens and restartable agents tables: what re-adopts agents after a
//! daemon restart and restarts restartable ones after a reboot.

use std::path::PathBuf;

use rush_proto::{AgentInfo, Ops, SpawnRequest};
use rusqlite::params;

use super::{Store, StoreError};
use crate::core::FileKey;
use crate::core::token::{Condition, Origin, Token};

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

impl Store {
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

    /// The agent `name` whose cgroup is `cgroup_id`, and its tokens: a newer agent under
    /// the name (another cgroup) keeps its row.
    pub fn delete_agent(&self, name: &str, cgroup_id: u64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute("DELETE FROM agents WHERE name = ?1 AND cgroup_id = ?2", params![name, cgroup_id as i64])
            .map_err(self.err())?;
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
        // The highest id ever stored, kept apart from the tokens: ids are never reused, even
        // when the highest token is revoked and the daemon then restarts.
        if let Some(high) = tokens.iter().map(|t| t.id).max() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('token_id_high', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?1)",
                [high as i64],
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
        let max: Option<i64> = conn
            .query_row(
                "SELECT MAX(m) FROM (SELECT MAX(id) AS m FROM tokens
                 UNION ALL SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'token_id_high')",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(max.unwrap_or(0) as u64)
    }
}

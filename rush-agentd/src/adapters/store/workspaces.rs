//! Agent workspaces and the merge queue. A merge is one row rewritten at every step
//! (queued, running, landing, final), each write committed before the step it names.

use rush_proto::workspace::{MergeJob, WorkspaceInfo};
use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    pub fn put_workspace(&self, w: &WorkspaceInfo) -> Result<(), StoreError> {
        let mut stored = w.clone();
        stored.status = None;
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO workspaces (name, info) VALUES (?1, ?2)",
                params![w.name, self.json(&stored)?],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn workspaces(&self) -> Result<Vec<WorkspaceInfo>, StoreError> {
        self.rows("workspace", "SELECT info FROM workspaces ORDER BY name", [])
    }

    pub fn delete_workspace(&self, name: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM workspaces WHERE name = ?1", [name]).map_err(self.err())?;
        Ok(())
    }

    /// Stores a new merge (its `id` assigned here).
    pub fn add_merge(&self, mut job: MergeJob) -> Result<MergeJob, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO merges (workspace, final, info) VALUES (?1, ?2, '')",
            params![job.workspace, job.state.is_final()],
        )
        .map_err(self.err())?;
        job.id = tx.last_insert_rowid() as u64;
        tx.execute("UPDATE merges SET info = ?1 WHERE id = ?2", params![self.json(&job)?, job.id as i64])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(job)
    }

    pub fn put_merge(&self, job: &MergeJob) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE merges SET final = ?1, info = ?2 WHERE id = ?3",
                params![job.state.is_final(), self.json(job)?, job.id as i64],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn merge(&self, id: u64) -> Result<Option<MergeJob>, StoreError> {
        Ok(self.rows("merge", "SELECT info FROM merges WHERE id = ?1", [id as i64])?.pop())
    }

    /// Merges not final yet, in queue order.
    pub fn open_merges(&self) -> Result<Vec<MergeJob>, StoreError> {
        self.rows("merge", "SELECT info FROM merges WHERE final = 0 ORDER BY id", [])
    }

    /// The newest `limit` merges, oldest first.
    pub fn recent_merges(&self, limit: usize) -> Result<Vec<MergeJob>, StoreError> {
        let mut jobs: Vec<MergeJob> =
            self.rows("merge", "SELECT info FROM merges ORDER BY id DESC LIMIT ?1", [limit as i64])?;
        jobs.reverse();
        Ok(jobs)
    }
}

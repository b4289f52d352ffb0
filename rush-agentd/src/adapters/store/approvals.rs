//! The human attention queue's records. A decision is one `UPDATE ... WHERE state =
//! 'pending'` in an IMMEDIATE transaction, committed (`synchronous=FULL`) before anyone is
//! told: a request is decided at most once, whatever crashes or races.

use rush_proto::approval::{Approval, ApprovalState};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError};

/// A request and its bookkeeping flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub approval: Approval,
    /// The approval's effect is done (or failed and was recorded).
    pub applied: bool,
    /// The decision was shown to its agent (`inbox`, `wait_approval`).
    pub seen: bool,
}

impl Store {
    /// Stores a new request (its `id` assigned here) and returns it.
    pub fn add_approval(&self, mut approval: Approval) -> Result<Approval, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        tx.execute(
            "INSERT INTO approvals (agent, state, deadline_unix_ms, info) VALUES (?1, ?2, ?3, '')",
            params![approval.agent, approval.state.as_str(), approval.deadline_unix_ms as i64],
        )
        .map_err(self.err())?;
        approval.id = tx.last_insert_rowid() as u64;
        tx.execute(
            "UPDATE approvals SET info = ?1 WHERE id = ?2",
            params![self.json(&approval)?, approval.id as i64],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(approval)
    }

    pub fn approval(&self, id: u64) -> Result<Option<ApprovalRecord>, StoreError> {
        let conn = self.lock();
        let row: Option<(String, bool, bool)> = conn
            .query_row("SELECT info, applied, seen FROM approvals WHERE id = ?1", [id as i64], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get::<_, i64>(2)? != 0))
            })
            .optional()
            .map_err(self.err())?;
        drop(conn);
        row.map(|(info, applied, seen)| {
            Ok(ApprovalRecord { approval: self.parse("approval", &info)?, applied, seen })
        })
        .transpose()
    }

    /// Pending requests, oldest first.
    pub fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.rows("approval", "SELECT info FROM approvals WHERE state = 'pending' ORDER BY id", [])
    }

    /// Every request (the most recent `limit`), oldest first.
    pub fn all_approvals(&self, limit: usize) -> Result<Vec<Approval>, StoreError> {
        self.rows(
            "approval",
            "SELECT info FROM (SELECT id, info FROM approvals ORDER BY id DESC LIMIT ?1) ORDER BY id",
            [limit as i64],
        )
    }

    /// Pending requests whose deadline is at or before `now_ms`.
    pub fn overdue_approvals(&self, now_ms: u64) -> Result<Vec<Approval>, StoreError> {
        self.rows(
            "approval",
            "SELECT info FROM approvals WHERE state = 'pending' AND deadline_unix_ms <= ?1 ORDER BY id",
            [now_ms as i64],
        )
    }

    /// Approved requests whose effect is not done: a crash came between the decision and it.
    pub fn unapplied_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.rows(
            "approval",
            "SELECT info FROM approvals WHERE state = 'approved' AND applied = 0 ORDER BY id",
            [],
        )
    }

    /// Changes a pending request (a decision, an escalation, a delivery): `change` turns it
    /// into its new form. None if it is not pending (decided meanwhile, or unknown): nothing
    /// changes then.
    pub fn update_pending(
        &self,
        id: u64,
        change: impl FnOnce(&mut Approval),
    ) -> Result<Option<Approval>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let info: Option<String> = tx
            .query_row("SELECT info FROM approvals WHERE id = ?1 AND state = 'pending'", [id as i64], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        let Some(info) = info else { return Ok(None) };
        let mut approval: Approval = self.parse("approval", &info)?;
        change(&mut approval);
        // Applied = nothing to do: only an approval has an effect.
        let applied = approval.state != ApprovalState::Approved;
        tx.execute(
            "UPDATE approvals SET state = ?1, deadline_unix_ms = ?2, info = ?3, applied = ?4 WHERE id = ?5",
            params![
                approval.state.as_str(),
                approval.deadline_unix_ms as i64,
                self.json(&approval)?,
                applied as i64,
                id as i64
            ],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(approval))
    }

    /// Records what an approval did (`effect`), marking it applied.
    pub fn approval_applied(&self, id: u64, effect: &str) -> Result<Option<Approval>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let info: Option<String> = tx
            .query_row("SELECT info FROM approvals WHERE id = ?1", [id as i64], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        let Some(info) = info else { return Ok(None) };
        let mut approval: Approval = self.parse("approval", &info)?;
        if let Some(d) = approval.decision.as_mut() {
            d.effect = Some(effect.to_owned());
        }
        tx.execute(
            "UPDATE approvals SET applied = 1, info = ?1 WHERE id = ?2",
            params![self.json(&approval)?, id as i64],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(approval))
    }

    /// The agent's decided requests it has not been shown, marked shown.
    pub fn take_unseen_decisions(&self, agent: &str) -> Result<Vec<Approval>, StoreError> {
        let list: Vec<Approval> = self.rows(
            "approval",
            "SELECT info FROM approvals WHERE agent = ?1 AND state != 'pending' AND seen = 0 ORDER BY id",
            [agent],
        )?;
        if !list.is_empty() {
            self.mark_seen(list.iter().map(|a| a.id))?;
        }
        Ok(list)
    }

    pub fn mark_seen(&self, ids: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        for id in ids {
            tx.execute("UPDATE approvals SET seen = 1 WHERE id = ?1", [id as i64]).map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    /// Sets the one-time token (its sha256) of a pending request's email links.
    pub fn set_approval_token(&self, id: u64, token_sha256: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE approvals SET token_sha256 = ?1 WHERE id = ?2 AND state = 'pending'",
                params![token_sha256, id as i64],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The request an email token names, whatever its state.
    pub fn approval_by_token(&self, token_sha256: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self
            .rows("approval", "SELECT info FROM approvals WHERE token_sha256 = ?1", [token_sha256])?
            .into_iter()
            .next())
    }

    /// What `rush human-queue configure` and `rush approval-policy set` stored.
    pub fn queue_overrides<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, StoreError> {
        let text: Option<String> = self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = 'approval_queue'", [], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        text.map_or(Ok(T::default()), |t| self.parse("approval queue settings", &t))
    }

    pub fn set_queue_overrides<T: serde::Serialize>(&self, overrides: &T) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('approval_queue', ?1)",
                [self.json(overrides)?],
            )
            .map_err(self.err())?;
        Ok(())
    }
}

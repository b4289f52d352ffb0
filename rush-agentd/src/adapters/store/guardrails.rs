//! Risk gating's guardrails. A lesson is stored once: `(scope, pattern)` is unique, and the
//! insert that finds it there returns the one already stored (learned exactly once,
//! whatever races).

use rush_proto::gate::Guardrail;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError};

impl Store {
    /// Stores `g` (its `id` assigned here) unless a guardrail with its scope and pattern
    /// is there: `(the stored one, whether it is new)`.
    pub fn add_guardrail(&self, mut g: Guardrail) -> Result<(Guardrail, bool), StoreError> {
        let scope = g.scope.to_string();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT info FROM guardrails WHERE scope = ?1 AND pattern = ?2",
                params![scope, g.pattern],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(info) = existing {
            return Ok((self.parse("guardrail", &info)?, false));
        }
        tx.execute(
            "INSERT INTO guardrails (scope, pattern, info) VALUES (?1, ?2, '')",
            params![scope, g.pattern],
        )
        .map_err(self.err())?;
        g.id = tx.last_insert_rowid() as u64;
        tx.execute("UPDATE guardrails SET info = ?1 WHERE id = ?2", params![self.json(&g)?, g.id as i64])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok((g, true))
    }

    /// Every guardrail, oldest first.
    pub fn guardrails(&self) -> Result<Vec<Guardrail>, StoreError> {
        self.rows("guardrail", "SELECT info FROM guardrails ORDER BY id", [])
    }

    /// Removes guardrail `id`: the one removed, or None if there was none.
    pub fn remove_guardrail(&self, id: u64) -> Result<Option<Guardrail>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let info: Option<String> = tx
            .query_row("SELECT info FROM guardrails WHERE id = ?1", [id as i64], |r| r.get(0))
            .optional()
            .map_err(self.err())?;
        let Some(info) = info else { return Ok(None) };
        tx.execute("DELETE FROM guardrails WHERE id = ?1", [id as i64]).map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(self.parse("guardrail", &info)?))
    }
}

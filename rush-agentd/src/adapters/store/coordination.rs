//! Coordination records: claims (one row per task ever claimed, keeping its last fencing
//! token), intents, results and delegated tasks. A claim is decided by one IMMEDIATE
//! transaction (the compare-and-swap), committed (`synchronous=FULL`) before the answer.

use rush_proto::coordination::{Claim, Intent, ResultInfo, Task, TaskState};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// A claim as stored: the wire claim, the inodes its paths resolved to (what the kernel
/// protects), and the TTL a renew without one extends it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub claim: Claim,
    /// (dev, ino) as the file programs key them.
    pub keys: Vec<(u32, u64)>,
    pub ttl_secs: u64,
    /// The daemon whose agent holds it, among the daemons sharing a store (etcd); empty in
    /// the embedded store (one daemon) and in records written before there was a node.
    #[serde(default)]
    pub node: String,
    /// Which version of the holding this is, as the store counts (etcd: the key's
    /// mod_revision; embedded: 0): what ending exactly this version compares. Not stored.
    #[serde(skip)]
    pub version: u64,
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimSwap {
    /// The caller holds it now; `displaced` is a lapsed holding it replaced.
    Won { record: ClaimRecord, displaced: Option<Box<ClaimRecord>> },
    /// The caller already held it (nothing changed).
    AlreadyHeld(ClaimRecord),
    /// Someone else holds it.
    Lost(ClaimRecord),
}

impl Store {
    /// The compare-and-swap: `new` (lease, fencing and times left for it to decide) wins
    /// if nobody holds the task or the holding has lapsed (`expires <= now_ms`); its
    /// fencing token is the task's last one plus one.
    pub fn try_claim(&self, new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let row: Option<(u64, bool, Option<String>)> = tx
            .query_row("SELECT fencing, live, record FROM claims WHERE task = ?1", [&new.claim.task], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? != 0, r.get(2)?))
            })
            .optional()
            .map_err(self.err())?;
        let mut displaced = None;
        let mut last_fencing = 0;
        if let Some((fencing, live, record)) = row {
            last_fencing = fencing;
            if live && let Some(text) = record {
                let held: ClaimRecord = self.parse("claim", &text)?;
                if held.claim.expires_unix_ms > now_ms {
                    return Ok(if held.claim.agent == new.claim.agent && held.node == new.node {
                        ClaimSwap::AlreadyHeld(held)
                    } else {
                        ClaimSwap::Lost(held)
                    });
                }
                displaced = Some(Box::new(held));
            }
        }
        let lease: i64 = tx
            .query_row(
                "INSERT INTO meta (key, value) VALUES ('lease_seq', '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
                 RETURNING CAST(value AS INTEGER)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        let mut record = new;
        record.claim.lease = lease as u64;
        record.claim.fencing = last_fencing + 1;
        record.claim.acquired_unix_ms = now_ms;
        record.claim.expires_unix_ms = now_ms + record.ttl_secs * 1000;
        let text = self.json(&record)?;
        tx.execute(
            "INSERT INTO claims (task, fencing, live, agent, expires_unix_ms, record) VALUES (?1, ?2, 1, ?3, ?4, ?5)
             ON CONFLICT (task) DO UPDATE SET fencing = ?2, live = 1, agent = ?3, expires_unix_ms = ?4, record = ?5",
            params![
                record.claim.task,
                record.claim.fencing as i64,
                record.claim.agent,
                record.claim.expires_unix_ms as i64,
                text
            ],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(ClaimSwap::Won { record, displaced })
    }

    /// Extends `agent`'s live, unlapsed holding of `task` to `now_ms + ttl`. None: it holds
    /// no such claim (never had it, released it, or its lease lapsed).
    pub fn renew_claim(
        &self,
        task: &str,
        agent: &str,
        ttl_secs: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let Some(mut record) = live_claim(self, &tx, task)? else { return Ok(None) };
        if record.claim.agent != agent || record.claim.expires_unix_ms <= now_ms {
            return Ok(None);
        }
        if let Some(ttl) = ttl_secs {
            record.ttl_secs = ttl;
        }
        record.claim.expires_unix_ms = now_ms + record.ttl_secs * 1000;
        let text = self.json(&record)?;
        tx.execute(
            "UPDATE claims SET expires_unix_ms = ?2, record = ?3 WHERE task = ?1",
            params![task, record.claim.expires_unix_ms as i64, text],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(record))
    }

    /// Ends the live holding of `task` (by `agent` only, when given). Its fencing token
    /// stays: the next holder gets a higher one.
    pub fn release_claim(&self, task: &str, agent: Option<&str>) -> Result<Option<ClaimRecord>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let Some(record) = live_claim(self, &tx, task)? else { return Ok(None) };
        if agent.is_some_and(|a| a != record.claim.agent) {
            return Ok(None);
        }
        tx.execute("UPDATE claims SET live = 0 WHERE task = ?1", [task]).map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(record))
    }

    /// Ends the holding `seen` if it is still that one, unrenewed (same lease, same
    /// deadline): a sweep's release that a renew or a new holder in between must win.
    pub fn end_claim(&self, seen: &ClaimRecord) -> Result<Option<ClaimRecord>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        let Some(record) = live_claim(self, &tx, &seen.claim.task)? else { return Ok(None) };
        if record.claim.lease != seen.claim.lease
            || record.claim.expires_unix_ms != seen.claim.expires_unix_ms
        {
            return Ok(None);
        }
        tx.execute("UPDATE claims SET live = 0 WHERE task = ?1", [&seen.claim.task]).map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Some(record))
    }

    /// Every live holding (lapsed ones included: the caller sweeps them).
    pub fn live_claims(&self) -> Result<Vec<ClaimRecord>, StoreError> {
        self.rows("claim", "SELECT record FROM claims WHERE live = 1 ORDER BY task", [])
    }

    pub fn add_intent(&self, mut intent: Intent) -> Result<Intent, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO intents (expires_unix_ms, info) VALUES (?1, '')",
            [intent.expires_unix_ms as i64],
        )
        .map_err(self.err())?;
        intent.id = conn.last_insert_rowid() as u64;
        conn.execute(
            "UPDATE intents SET info = ?2 WHERE id = ?1",
            params![intent.id as i64, self.json(&intent)?],
        )
        .map_err(self.err())?;
        Ok(intent)
    }

    /// Intents whose expiry is after `now_ms`; lapsed ones are deleted.
    pub fn live_intents(&self, now_ms: u64) -> Result<Vec<Intent>, StoreError> {
        self.lock()
            .execute("DELETE FROM intents WHERE expires_unix_ms <= ?1", [now_ms as i64])
            .map_err(self.err())?;
        self.rows("intent", "SELECT info FROM intents ORDER BY id", [])
    }

    /// Stores a result; with `fence` (task, fencing token), only if that is the task's
    /// live, unlapsed holding by the result's publisher, checked in the same transaction.
    /// `Ok(Err(holding))`: the fence is stale (the task's live holding, if any).
    pub fn put_result(
        &self,
        r: &ResultInfo,
        fence: Option<(&str, u64)>,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.err())?;
        if let Some((task, fencing)) = fence {
            let live = live_claim(self, &tx, task)?.filter(|h| h.claim.expires_unix_ms > now_ms);
            match live {
                Some(h) if h.claim.fencing == fencing && h.claim.agent == r.agent => {}
                other => return Ok(Err(other.map(|h| h.claim))),
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO results (session, key, info) VALUES (?1, ?2, ?3)",
            params![r.session.as_deref().unwrap_or(""), r.key, self.json(r)?],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(Ok(()))
    }

    /// Results of one session (None: agents without one), by key.
    pub fn results(&self, session: Option<&str>) -> Result<Vec<ResultInfo>, StoreError> {
        self.rows(
            "result",
            "SELECT info FROM results WHERE session = ?1 ORDER BY key",
            [session.unwrap_or("")],
        )
    }

    /// Every result, for the operator.
    pub fn all_results(&self) -> Result<Vec<ResultInfo>, StoreError> {
        self.rows("result", "SELECT info FROM results ORDER BY session, key", [])
    }

    /// Stores a new task; its id and result key are decided here.
    pub fn add_task(&self, mut task: Task) -> Result<Task, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute("INSERT INTO tasks (to_agent, state, info) VALUES (?1, 'open', '')", [&task.to])
            .map_err(self.err())?;
        task.id = tx.last_insert_rowid() as u64;
        task.result_key = rush_proto::coordination::task_result_key(task.id);
        tx.execute("UPDATE tasks SET info = ?2 WHERE id = ?1", params![task.id as i64, self.json(&task)?])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(task)
    }

    pub fn task(&self, id: u64) -> Result<Option<Task>, StoreError> {
        Ok(self.rows("task", "SELECT info FROM tasks WHERE id = ?1", [id as i64])?.pop())
    }

    /// Open tasks delegated to `agent`, oldest first.
    pub fn open_tasks(&self, agent: &str) -> Result<Vec<Task>, StoreError> {
        self.rows(
            "task",
            "SELECT info FROM tasks WHERE to_agent = ?1 AND state = 'open' ORDER BY id",
            [agent],
        )
    }

    /// Ends open task `id` as `state` (done or cancelled); None if it was not open.
    pub fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, StoreError> {
        let Some(mut task) = self.task(id)? else { return Ok(None) };
        if task.state != TaskState::Open {
            return Ok(None);
        }
        task.state = state;
        let changed = self
            .lock()
            .execute(
                "UPDATE tasks SET state = ?3, info = ?2 WHERE id = ?1 AND state = 'open'",
                params![
                    id as i64,
                    self.json(&task)?,
                    if state == TaskState::Done { "done" } else { "cancelled" }
                ],
            )
            .map_err(self.err())?;
        Ok((changed == 1).then_some(task))
    }
}

fn live_claim(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    task: &str,
) -> Result<Option<ClaimRecord>, StoreError> {
    let text: Option<String> = tx
        .query_row("SELECT record FROM claims WHERE task = ?1 AND live = 1", [task], |r| r.get(0))
        .optional()
        .map_err(store.err())?;
    text.map(|t| store.parse("claim", &t)).transpose()
}

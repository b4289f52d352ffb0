//! The audit trail: every spawn, exit, kill, kernel deny and refused request, stored as a
//! row of the `audit` table in the daemon's SQLite database (`<state_dir>/state.db`, see
//! store.rs for the schema) and fanned out to `rush audit --follow`.
//!
//! The log has its own connection to that database rather than going through `Store`:
//! records are written from the kernel event pump at deny rates and must not queue behind
//! the store's transactions (nor hold them up), and they are written with
//! `synchronous=NORMAL`: in WAL mode a record survives a crash or kill -9 of the daemon
//! once `record` returns, and only a power cut can lose the last few, which saves an fsync
//! per deny. Records outlive reboots; retention (`[audit]` in the config) deletes the
//! oldest.
//!
//! Writing is never fatal: a record the database refuses (disk full, read-only, corrupt)
//! still reaches live followers, is counted, and the count is stored as a `records_lost`
//! record in front of the next record the database takes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rush_proto::{AuditEvent, AuditQuery, AuditRecord, Event};
use rusqlite::{Connection, OptionalExtension, params};

use crate::adapters::store::StoreError;
use crate::services::events::{EventBus, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit trail in {path}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit trail in {path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("importing the old audit trail {path}")]
    Import { path: PathBuf, source: std::io::Error },
}

pub struct AuditLog {
    path: PathBuf,
    /// The connection and the next sequence number move together under one lock, so rows
    /// are inserted in sequence order.
    inner: Mutex<Inner>,
    /// Where each record goes once the trail took it (or counted it lost).
    bus: EventBus,
    /// Records the database refused since the daemon started (`rush doctor`).
    lost_total: std::sync::atomic::AtomicU64,
}

struct Inner {
    conn: Connection,
    next_seq: u64,
    /// Records the database refused since it last took one, and the first refusal.
    lost: u64,
    lost_error: String,
    /// The session of each agent spawned into one, so that its records carry it.
    sessions: HashMap<String, String>,
}

/// Per-agent budget for deny records: a burst, then a steady rate; what is over it is
/// counted, and the count is written as one `denials_suppressed` record (so a process
/// hammering a denied file cannot fill the disk, and the trail still says it happened).
pub struct DenyLimiter {
    burst: f64,
    per_sec: f64,
    agents: std::collections::HashMap<u64, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    suppressed: u64,
}

impl DenyLimiter {
    pub fn new(burst: u32, per_sec: u32) -> DenyLimiter {
        DenyLimiter { burst: f64::from(burst), per_sec: f64::from(per_sec), agents: Default::default() }
    }

    /// Whether this agent's deny may be recorded now (else it is counted).
    pub fn admit(&mut self, agent: u64, now: std::time::Instant) -> bool {
        let (burst, rate) = (self.burst, self.per_sec);
        let b = self.agents.entry(agent).or_insert(Bucket { tokens: burst, at: now, suppressed: 0 });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.suppressed += 1;
            false
        }
    }

    /// The counts suppressed since the last call, per agent (reset).
    pub fn take_suppressed(&mut self) -> Vec<(u64, u64)> {
        let out = self
            .agents
            .iter_mut()
            .filter(|(_, b)| b.suppressed > 0)
            .map(|(id, b)| (*id, std::mem::take(&mut b.suppressed)))
            .collect();
        // Buckets refilled to the brim carry no state worth keeping.
        let (burst, now) = (self.burst, std::time::Instant::now());
        let rate = self.per_sec;
        self.agents.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        out
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

const INSERT: &str = "INSERT INTO audit (seq, time_unix_ms, agent, session, kind, caller_uid, event)
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

impl AuditLog {
    /// Opens (creating, migrating) the database at `db`, the daemon's state database.
    pub fn open(db: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with_bus(db, EventBus::default())
    }

    /// [`AuditLog::open`], publishing its records on `bus`.
    pub fn open_with_bus(db: &Path, bus: EventBus) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError::Sqlite { path: db.to_owned(), source };
        let mut conn = Connection::open(db).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        crate::adapters::store::migrate(&mut conn, db)?;
        let next_seq = last_seq(&conn).map_err(err)? + 1;
        let inner = Inner { conn, next_seq, lost: 0, lost_error: String::new(), sessions: HashMap::new() };
        Ok(AuditLog { path: db.to_owned(), inner: Mutex::new(inner), bus, lost_total: Default::default() })
    }

    /// How many records the database refused since this daemon started.
    pub fn records_lost(&self) -> u64 {
        self.lost_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> AuditError + use<> {
        let path = self.path.clone();
        move |source| AuditError::Sqlite { path, source }
    }

    /// Records of agent `name` from now on carry `session` (the session it was spawned into).
    pub fn set_agent_session(&self, name: &str, session: Option<&str>) {
        let mut g = self.lock();
        match session {
            Some(s) => g.sessions.insert(name.to_owned(), s.to_owned()),
            None => g.sessions.remove(name),
        };
    }

    /// Stores a record before returning it. A refusal of the database is logged and
    /// counted, never fatal: enforcement does not depend on the audit trail, and the record
    /// still reaches live followers.
    pub fn record(&self, agent: Option<&str>, event: AuditEvent) -> AuditRecord {
        let mut g = self.lock();
        let time_unix_ms = now_unix_ms();
        let session =
            event.session().map(str::to_owned).or_else(|| agent.and_then(|a| g.sessions.get(a).cloned()));
        let mut batch = Vec::with_capacity(2);
        if g.lost > 0 {
            let event = AuditEvent::RecordsLost { count: g.lost, error: g.lost_error.clone() };
            batch.push(AuditRecord { seq: g.next_seq, time_unix_ms, agent: None, session: None, event });
            g.next_seq += 1;
        }
        let mut rec =
            AuditRecord { seq: g.next_seq, time_unix_ms, agent: agent.map(str::to_owned), session, event };
        g.next_seq += 1;
        batch.push(rec.clone());
        match insert(&mut g.conn, INSERT, &batch) {
            Ok(()) if g.lost > 0 => {
                tracing::warn!(lost = g.lost, "audit records are stored again; the loss is recorded");
                g.lost = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if g.lost == 0 {
                    tracing::error!(path = %self.path.display(), error = %e, seq = rec.seq,
                        "audit record not stored (counting until the database takes records again)");
                    g.lost_error = e.to_string();
                }
                g.lost += 1;
                self.lost_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Nothing was stored or sent: the record takes back the number the loss
                // record would have had, so that followers see no gap of our own making.
                if batch.len() == 2 {
                    rec.seq -= 1;
                    g.next_seq -= 1;
                }
                batch = vec![rec.clone()];
            }
        }
        drop(g);
        for r in batch {
            self.bus.publish(Event::Audit(Box::new(r)));
        }
        rec
    }

    /// The bus this trail publishes to, for the other services to publish on too.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Every event published from now on (this trail's records among them).
    pub fn subscribe(&self) -> Subscription {
        self.bus.subscribe()
    }

    /// The matching records, oldest first (the newest `limit` of them when it is set).
    pub fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        use rusqlite::types::Value;
        let mut sql = String::from("SELECT seq, time_unix_ms, agent, session, event FROM audit WHERE 1");
        let mut args: Vec<Value> = Vec::new();
        let mut filter = |clause: &str, v: Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(a) = &q.agent {
            filter(" AND agent = ?", Value::Text(a.clone()));
        }
        if let Some(s) = &q.session {
            filter(" AND session = ?", Value::Text(s.clone()));
        }
        if let Some(t) = q.since_unix_ms {
            filter(" AND time_unix_ms >= ?", Value::Integer(clamp(t)));
        }
        if let Some(t) = q.until_unix_ms {
            filter(" AND time_unix_ms <= ?", Value::Integer(clamp(t)));
        }
        if let Some(uid) = q.caller_uid {
            filter(" AND caller_uid = ?", Value::Integer(uid.into()));
        }
        if !q.kinds.is_empty() {
            let marks = vec!["?"; q.kinds.len()].join(", ");
            sql.push_str(&format!(" AND kind IN ({marks})"));
            args.extend(q.kinds.iter().map(|k| Value::Text(k.clone())));
        }
        // Newest first so that LIMIT keeps the newest; turned around below.
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
        args.push(Value::Integer(if q.limit == 0 { -1 } else { clamp(q.limit as u64) }));

        // A connection of its own: a long export does not hold up `record`, and in WAL
        // mode it reads a consistent snapshot while records go on being written.
        let conn = Connection::open(&self.path).map_err(self.err())?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(self.err())?;
        let mut stmt = conn.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, agent, session, event) = row.map_err(self.err())?;
            let event = serde_json::from_str(&event).map_err(|e| AuditError::Corrupt {
                path: self.path.clone(),
                what: format!("record {seq}: {e}"),
            })?;
            out.push(AuditRecord { seq: seq as u64, time_unix_ms: time as u64, agent, session, event });
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes the records older than `max_age` and all but the newest `max_records`;
    /// returns how many went.
    pub fn prune(&self, max_age: Option<Duration>, max_records: Option<u64>) -> Result<usize, AuditError> {
        let g = self.lock();
        let mut deleted = 0;
        if let Some(age) = max_age {
            let cutoff = now_unix_ms().saturating_sub(age.as_millis().try_into().unwrap_or(u64::MAX));
            deleted += g
                .conn
                .execute("DELETE FROM audit WHERE time_unix_ms < ?1", [clamp(cutoff)])
                .map_err(self.err())?;
        }
        if let Some(max) = max_records {
            deleted += g
                .conn
                .execute(
                    "DELETE FROM audit WHERE seq <= (SELECT seq FROM audit ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                    [clamp(max)],
                )
                .map_err(self.err())?;
        }
        Ok(deleted)
    }

    /// Imports the JSON-lines trail of an older daemon once: its records keep their
    /// sequence numbers (new ones continue after them) and the file is renamed to
    /// `<name>.imported`. Unreadable lines (a torn last line) are skipped. Returns how many
    /// records were imported; 0 when there is no such file.
    pub fn import_jsonl(&self, path: &Path) -> Result<usize, AuditError> {
        let io = |source| AuditError::Import { path: path.to_owned(), source };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        let mut records = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io)?;
            if let Ok(mut r) = serde_json::from_str::<AuditRecord>(&line) {
                r.session = r.session.or_else(|| r.event.session().map(str::to_owned));
                records.push(r);
            }
        }
        let mut g = self.lock();
        // OR IGNORE: a crash between the commit and the rename imports the same file again.
        let sql = INSERT.replacen("INSERT", "INSERT OR IGNORE", 1);
        insert(&mut g.conn, &sql, &records).map_err(self.err())?;
        g.next_seq = g.next_seq.max(last_seq(&g.conn).map_err(self.err())? + 1);
        drop(g);
        let mut done = path.as_os_str().to_owned();
        done.push(".imported");
        std::fs::rename(path, &done).map_err(io)?;
        tracing::info!(path = %path.display(), records = records.len(), "imported the old JSON-lines audit trail");
        Ok(records.len())
    }
}

/// The highest sequence number ever stored (kept by AUTOINCREMENT past deleted rows).
fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'audit'", [], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

fn insert(conn: &mut Connection, sql: &str, records: &[AuditRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        for r in records {
            let event = serde_json::to_string(&r.event).expect("audit events serialize");
            stmt.execute(params![
                clamp(r.seq),
                clamp(r.time_unix_ms),
                r.agent,
                r.session,
                r.event.kind(),
                r.event.caller_uid(),
                event
            ])?;
        }
    }
    tx.commit()
}

/// SQLite integers are signed.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether a live record passes the query's filters (the same ones `query` applies).
pub fn matches(q: &AuditQuery, r: &AuditRecord) -> bool {
    q.agent.as_deref().is_none_or(|a| r.agent.as_deref() == Some(a))
        && q.session.as_deref().is_none_or(|s| r.session.as_deref() == Some(s))
        && q.since_unix_ms.is_none_or(|t| r.time_unix_ms >= t)
        && q.until_unix_ms.is_none_or(|t| r.time_unix_ms <= t)
        && q.caller_uid.is_none_or(|u| r.event.caller_uid() == Some(u))
        && (q.kinds.is_empty() || q.kinds.iter().any(|k| k == r.event.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rush_proto::ExitStatus;

    fn exit(pid: u32) -> AuditEvent {
        AuditEvent::Exit { pid, status: ExitStatus { code: Some(0), signal: None } }
    }

    #[test]
    fn denials_over_the_budget_are_counted_per_agent_and_refill() {
        let mut l = DenyLimiter::new(3, 10);
        let t0 = std::time::Instant::now();
        let admitted = (0..10).filter(|_| l.admit(1, t0)).count();
        assert_eq!(admitted, 3, "the burst");
        assert!(l.admit(2, t0), "another agent has its own budget");
        assert_eq!(l.take_suppressed(), vec![(1, 7)]);
        assert!(l.take_suppressed().is_empty(), "counts are taken once");
        // 10 per second: a tenth of a second buys one more.
        assert!(l.admit(1, t0 + std::time::Duration::from_millis(110)));
        assert!(!l.admit(1, t0 + std::time::Duration::from_millis(110)));
    }

    fn seqs(log: &AuditLog, q: AuditQuery) -> Vec<u64> {
        log.query(&q).unwrap().iter().map(|r| r.seq).collect()
    }

    fn checkpoint(session: &str) -> AuditEvent {
        AuditEvent::Checkpoint { session: session.into(), name: "c".into(), captured: vec![], caller_uid: 7 }
    }

    #[test]
    fn records_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("state.db")).unwrap();
        let mut live = log.subscribe();
        log.set_agent_session("b", Some("s1"));
        log.record(Some("a"), exit(1));
        log.record(Some("b"), exit(2));
        log.record(Some("a"), AuditEvent::Kill { caller_uid: 1000, processes_killed: 1 });
        log.record(None, checkpoint("s1"));
        log.record(None, checkpoint("s2"));
        assert_eq!(crate::services::events::audit_record(&live.try_recv().unwrap()).unwrap().seq, 1);

        let all = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(all[2].event, AuditEvent::Kill { caller_uid: 1000, processes_killed: 1 });
        assert_eq!(all[1].session.as_deref(), Some("s1"), "the agent's session");
        assert_eq!(all[4].session.as_deref(), Some("s2"), "the event's session");

        assert_eq!(seqs(&log, AuditQuery { agent: Some("a".into()), ..Default::default() }), [1, 3]);
        assert_eq!(seqs(&log, AuditQuery { limit: 2, ..Default::default() }), [4, 5]);
        assert_eq!(seqs(&log, AuditQuery { session: Some("s1".into()), ..Default::default() }), [2, 4]);
        let kinds = vec!["kill".to_string(), "checkpoint".into()];
        assert_eq!(seqs(&log, AuditQuery { kinds, ..Default::default() }), [3, 4, 5]);
        assert_eq!(seqs(&log, AuditQuery { caller_uid: Some(1000), ..Default::default() }), [3]);
        let future = now_unix_ms() + 60_000;
        assert!(seqs(&log, AuditQuery { since_unix_ms: Some(future), ..Default::default() }).is_empty());
        assert_eq!(seqs(&log, AuditQuery { until_unix_ms: Some(future), ..Default::default() }).len(), 5);
        assert!(seqs(&log, AuditQuery { until_unix_ms: Some(1), ..Default::default() }).is_empty());
        // Live records pass the same filters.
        let q = AuditQuery { session: Some("s1".into()), kinds: vec!["exit".into()], ..Default::default() };
        assert_eq!(all.iter().filter(|r| matches(&q, r)).map(|r| r.seq).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn sequence_survives_reopen_and_pruning_everything() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let log = AuditLog::open(&db).unwrap();
        for pid in 0..3 {
            log.record(None, exit(pid));
        }
        assert_eq!(log.prune(Some(Duration::from_secs(60)), None).unwrap(), 0, "none a minute old");
        assert_eq!(log.prune(None, Some(0)).unwrap(), 3);
        drop(log);
        // The state store opens the same database (its migrations already ran).
        let _store = crate::adapters::store::Store::open(&db).unwrap();
        let log = AuditLog::open(&db).unwrap();
        assert_eq!(log.record(None, exit(4)).seq, 4);
    }

    #[test]
    fn retention_deletes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("state.db")).unwrap();
        for pid in 0..10 {
            log.record(None, exit(pid));
        }
        assert_eq!(log.prune(None, Some(4)).unwrap(), 6);
        assert_eq!(seqs(&log, AuditQuery::default()), [7, 8, 9, 10]);
        log.lock().conn.execute("UPDATE audit SET time_unix_ms = 1000 WHERE seq <= 8", []).unwrap();
        assert_eq!(log.prune(Some(Duration::from_secs(86_400)), Some(100)).unwrap(), 2);
        assert_eq!(seqs(&log, AuditQuery::default()), [9, 10]);
    }

    #[test]
    fn an_old_jsonl_trail_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("audit.jsonl");
        let old = |seq: u64, event: AuditEvent| {
            let r = AuditRecord { seq, time_unix_ms: 5, agent: Some("a".into()), session: None, event };
            serde_json::to_string(&r).unwrap() + "\n"
        };
        // Records of an older daemon, the last line torn by a crash.
        let text = old(1, exit(1)) + &old(2, checkpoint("s")) + &old(7, exit(3)) + "{\"seq\":9";
        std::fs::write(&jsonl, text).unwrap();
        let log = AuditLog::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(log.import_jsonl(&jsonl).unwrap(), 3);
        assert!(!jsonl.exists() && dir.path().join("audit.jsonl.imported").exists());
        assert_eq!(log.import_jsonl(&jsonl).unwrap(), 0, "once");
        assert_eq!(log.record(None, exit(4)).seq, 8, "numbering continues after the import");
        let imported = log.query(&AuditQuery { session: Some("s".into()), ..Default::default() }).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].seq, 2);
    }

    #[test]
    fn refused_writes_are_counted_and_reported_by_the_next_stored_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("state.db")).unwrap();
        let mut live = log.subscribe();
        log.record(None, exit(1));
        // The database refuses writes (as a full disk or a read-only file would).
        log.lock().conn.pragma_update(None, "query_only", true).unwrap();
        log.record(Some("a"), exit(2));
        log.record(Some("a"), exit(3));
        assert_eq!(seqs(&log, AuditQuery::default()), [1]);
        let got: Vec<u64> = std::iter::from_fn(|| live.try_recv().ok())
            .filter_map(|e| crate::services::events::audit_record(&e).map(|r| r.seq))
            .collect();
        assert_eq!(got, [1, 2, 3], "followers still see every record");

        log.lock().conn.pragma_update(None, "query_only", false).unwrap();
        log.record(Some("a"), exit(4));
        let stored = log.query(&AuditQuery::default()).unwrap();
        assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 4, 5]);
        match &stored[1].event {
            AuditEvent::RecordsLost { count: 2, error } => assert!(error.contains("readonly"), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crate::services::events::audit_record(&live.try_recv().unwrap()).unwrap().event.kind(),
            "records_lost"
        );
        log.record(None, exit(5));
        assert_eq!(seqs(&log, AuditQuery { kinds: vec!["records_lost".into()], ..Default::default() }), [4]);
    }
}

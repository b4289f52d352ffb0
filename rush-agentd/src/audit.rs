//! The audit trail: every spawn, exit, kill, kernel deny and refused request, appended as
//! one JSON line to `<state_dir>/audit.jsonl` and fanned out to `rush audit --follow`.
//!
//! A JSON-lines file for now; the durable SQLite store (a later issue) replaces it behind
//! the same `record`/`query` calls.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rush_proto::{AuditEvent, AuditQuery, AuditRecord};
use tokio::sync::broadcast;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct AuditLog {
    path: PathBuf,
    /// The file and the next sequence number move together under one lock, so the
    /// file's order is the sequence order.
    inner: Mutex<(File, u64)>,
    live: broadcast::Sender<AuditRecord>,
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

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError::Io { path: path.to_owned(), source };
        // Continue the sequence after the last readable record.
        let next_seq = match File::open(path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str::<AuditRecord>(&l).ok())
                .map(|r| r.seq + 1)
                .last()
                .unwrap_or(1),
            Err(_) => 1,
        };
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        // A crash mid-write leaves a torn last line: end it, so the next record stands alone.
        if ends_torn(path) {
            file.write_all(b"\n").map_err(err)?;
        }
        let (live, _) = broadcast::channel(1024);
        Ok(AuditLog { path: path.to_owned(), inner: Mutex::new((file, next_seq)), live })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record. A write failure is logged, never fatal: enforcement does not
    /// depend on the audit file, and the record still reaches live followers.
    pub fn record(&self, agent: Option<&str>, event: AuditEvent) -> AuditRecord {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rec =
            AuditRecord { seq: guard.1, time_unix_ms: now_unix_ms(), agent: agent.map(str::to_owned), event };
        guard.1 += 1;
        let mut line = serde_json::to_vec(&rec).expect("audit records serialize");
        line.push(b'\n');
        if let Err(e) = guard.0.write_all(&line) {
            tracing::error!(path = %self.path.display(), error = %e, seq = rec.seq, "audit record not written");
        }
        drop(guard);
        let _ = self.live.send(rec.clone());
        rec
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.live.subscribe()
    }

    pub fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let f =
            File::open(&self.path).map_err(|source| AuditError::Io { path: self.path.clone(), source })?;
        let mut out: Vec<AuditRecord> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<AuditRecord>(&l).ok())
            .filter(|r| matches(q, r))
            .collect();
        if q.limit > 0 && out.len() > q.limit {
            out.drain(..out.len() - q.limit);
        }
        Ok(out)
    }
}

fn ends_torn(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else { return false };
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

pub fn matches(q: &AuditQuery, r: &AuditRecord) -> bool {
    q.agent.as_deref().is_none_or(|a| r.agent.as_deref() == Some(a))
        && q.since_unix_ms.is_none_or(|t| r.time_unix_ms >= t)
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

    #[test]
    fn records_filter_and_sequence_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let mut live = log.subscribe();
        log.record(Some("a"), exit(1));
        log.record(Some("b"), exit(2));
        log.record(Some("a"), exit(3));
        assert_eq!(live.try_recv().unwrap().seq, 1);

        let only_a = log.query(&AuditQuery { agent: Some("a".into()), ..Default::default() }).unwrap();
        assert_eq!(only_a.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        let last = log.query(&AuditQuery { limit: 1, ..Default::default() }).unwrap();
        assert_eq!(last[0].seq, 3);
        let future = AuditQuery { since_unix_ms: Some(now_unix_ms() + 60_000), ..Default::default() };
        assert!(log.query(&future).unwrap().is_empty());
        drop(log);

        // A torn last line (crash mid-write) is skipped, and numbering continues.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"seq\":9").unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.record(None, exit(4)).seq, 4);
        assert_eq!(log.query(&AuditQuery::default()).unwrap().len(), 4);
    }
}

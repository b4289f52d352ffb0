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

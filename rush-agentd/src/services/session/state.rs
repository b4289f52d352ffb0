//! A session's state beyond its workspace: key-value pairs, the working directory to
//! start in, and the shells attached to it. All of it is in the store, written before the
//! reply, so it outlives daemon restarts and reboots (attachments do not outlive their
//! shells: they are pruned whenever they are read).

use crate::core::Fault;
use crate::services::session::SessionError;
use std::path::{Path, PathBuf};

use rush_proto::{
    Attachment, AuditEvent, KeyValue, SessionDetail, SessionInfo, SessionRef,
    session::{check_key, check_value},
};

use super::{Sessions, err, now_unix_ms, store_err};
use crate::adapters::store::AttachmentRecord;
use crate::core::Caller;
use crate::core::boot_id;
use crate::core::process::proc_stat;
use rush_proto::KvAction;

fn is_alive(a: &AttachmentRecord, boot: &str) -> bool {
    a.boot_id == boot && proc_stat(a.pid).is_some_and(|(_, start)| start == a.start_ticks)
}

/// Whether `pid` is the caller itself (the rush shell, attaching itself), an ancestor of
/// `caller` (its shell) or its child (the subshell `rush session attach` starts): the only
/// processes a caller may bind.
fn related(pid: i32, caller: i32) -> bool {
    if pid == caller || proc_stat(pid).is_some_and(|(ppid, _)| ppid == caller) {
        return true;
    }
    let mut p = caller;
    for _ in 0..64 {
        match proc_stat(p) {
            Some((ppid, _)) if ppid == pid => return true,
            Some((ppid, _)) if ppid > 0 => p = ppid,
            _ => return false,
        }
    }
    false
}

fn public(a: &AttachmentRecord) -> Attachment {
    Attachment {
        session: a.session.clone(),
        pid: a.pid,
        uid: a.uid,
        since_unix_ms: a.since_unix_ms,
        tty: a.tty.clone(),
    }
}

fn no_session(name: &str) -> SessionError {
    err(Fault::NotFound, format!("no session {name:?} (see `rush session list`)"))
}

impl Sessions {
    /// The live attachments of `session`; those whose shell is gone are deleted.
    fn live_attachments(&self, session: &str) -> Result<Vec<AttachmentRecord>, SessionError> {
        let boot = boot_id();
        let (live, dead): (Vec<_>, Vec<_>) = self
            .store
            .attachments(Some(session))
            .map_err(store_err)?
            .into_iter()
            .partition(|a| is_alive(a, &boot));
        for a in dead {
            tracing::debug!(session, pid = a.pid, "pruning the attachment of a shell that is gone");
            self.store.delete_attachment(&a).map_err(store_err)?;
        }
        Ok(live)
    }

    /// Attachments, keys and working directory in the session's summary.
    pub(super) fn add_state(&self, info: &mut SessionInfo) {
        info.attached = self.live_attachments(&info.name).map(|a| a.len() as u32).unwrap_or(0);
        info.keys = self.store.kv_keys(&info.name).map(|k| k.len() as u32).unwrap_or(0);
        info.cwd = self.store.cwd(&info.name).ok().flatten();
    }

    pub fn show(&self, sref: &SessionRef) -> Result<SessionDetail, SessionError> {
        let info = self.with_runtime(self.find(sref)?);
        let attachments = self.live_attachments(&info.name)?.iter().map(public).collect();
        let checkpoints =
            self.store.checkpoints(&info.name).map_err(store_err)?.into_iter().map(|c| c.name).collect();
        let keys = self.store.kv_keys(&info.name).map_err(store_err)?;
        Ok(SessionDetail { session: info, attachments, checkpoints, keys })
    }

    pub fn kv_set(
        &self,
        sref: &SessionRef,
        key: String,
        value: String,
        caller: &Caller,
    ) -> Result<(String, Vec<KeyValue>), SessionError> {
        let bad = |why: String| err(Fault::Invalid, why);
        check_key(&key).map_err(bad)?;
        check_value(&key, &value).map_err(bad)?;
        let session = self.find(sref)?.name;
        if !self.store.put_kv(&session, &key, &value).map_err(store_err)? {
            return Err(no_session(&session));
        }
        self.audit_kv(&session, &key, KvAction::Set, caller);
        Ok((session, vec![KeyValue { key, value }]))
    }

    pub fn kv_unset(
        &self,
        sref: &SessionRef,
        key: String,
        caller: &Caller,
    ) -> Result<(String, Vec<KeyValue>), SessionError> {
        check_key(&key).map_err(|why| err(Fault::Invalid, why))?;
        let session = self.find(sref)?.name;
        let Some(value) = self.store.delete_kv(&session, &key).map_err(store_err)? else {
            return Err(missing_key(&session, &key));
        };
        self.audit_kv(&session, &key, KvAction::Unset, caller);
        Ok((session, vec![KeyValue { key, value }]))
    }

    pub fn kv_get(
        &self,
        sref: &SessionRef,
        key: Option<String>,
    ) -> Result<(String, Vec<KeyValue>), SessionError> {
        let session = self.find(sref)?.name;
        let pairs: Vec<KeyValue> = self
            .store
            .kv(&session, key.as_deref())
            .map_err(store_err)?
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect();
        if let Some(k) = &key
            && pairs.is_empty()
        {
            return Err(missing_key(&session, k));
        }
        Ok((session, pairs))
    }

    fn audit_kv(&self, session: &str, key: &str, action: KvAction, caller: &Caller) {
        self.audit.record(
            None,
            AuditEvent::SessionKv {
                session: session.to_owned(),
                key: key.to_owned(),
                action,
                caller_uid: caller.uid,
            },
        );
    }

    /// Binds shell `pid` to the session; returns the session with its saved working
    /// directory.
    pub fn attach(
        &self,
        sref: &SessionRef,
        pid: i32,
        tty: Option<String>,
        caller: &Caller,
    ) -> Result<(SessionInfo, Attachment), SessionError> {
        let info = self.find(sref)?;
        let Some((_, start_ticks)) = proc_stat(pid).filter(|_| pid > 0) else {
            return Err(err(Fault::Invalid, format!("shell pid {pid}: no such process")));
        };
        if !related(pid, caller.pid) {
            return Err(err(
                Fault::Forbidden,
                format!("shell pid {pid}: neither the caller's parent shell nor its child"),
            ));
        }
        let rec = AttachmentRecord {
            pid,
            start_ticks,
            boot_id: boot_id(),
            session: info.name.clone(),
            uid: caller.uid,
            since_unix_ms: now_unix_ms(),
            tty: tty.clone(),
        };
        if !self.store.put_attachment(&rec).map_err(store_err)? {
            return Err(no_session(&info.name));
        }
        self.audit.record(
            None,
            AuditEvent::SessionAttached { session: info.name.clone(), pid, tty, caller_uid: caller.uid },
        );
        Ok((self.with_runtime(info), public(&rec)))
    }

    /// Drops shell `pid`'s attachment and saves `cwd` as the session's working directory.
    pub fn detach(
        &self,
        sref: &SessionRef,
        pid: i32,
        cwd: Option<PathBuf>,
        caller: &Caller,
    ) -> Result<(String, Option<PathBuf>), SessionError> {
        let info = self.find(sref)?;
        if let Some(c) = &cwd
            && !c.is_absolute()
        {
            return Err(err(Fault::Invalid, format!("cwd {}: not absolute", c.display())));
        }
        // Also a shell that just exited (`rush session attach` detaches its subshell after
        // it): its record is dropped, not pruned, so that the detach is audited.
        let boot = boot_id();
        let Some(rec) = self
            .store
            .attachments(Some(&info.name))
            .map_err(store_err)?
            .into_iter()
            .filter(|a| a.pid == pid && a.boot_id == boot)
            .max_by_key(|a| is_alive(a, &boot))
        else {
            return Err(err(
                Fault::NotFound,
                format!(
                    "session {:?} has no attachment from shell pid {pid}: not attached (attach with \
                     `rush session attach {}`)",
                    info.name, info.name
                ),
            ));
        };
        let cwd = cwd.map(|c| through_workspace(&info, &c));
        if let Some(c) = &cwd
            && !self.store.put_cwd(&info.name, c).map_err(store_err)?
        {
            return Err(no_session(&info.name));
        }
        self.store.delete_attachment(&rec).map_err(store_err)?;
        self.audit.record(
            None,
            AuditEvent::SessionDetached {
                session: info.name.clone(),
                pid,
                cwd: cwd.clone(),
                caller_uid: caller.uid,
            },
        );
        Ok((info.name, cwd))
    }
}

fn missing_key(session: &str, key: &str) -> SessionError {
    err(Fault::NotFound, format!("session {session:?} has no key {key:?}"))
}

/// A directory inside the session's store, as the workspace path shows it: the tree of a
/// timeline changes under a rollback or switch, the workspace path does not.
fn through_workspace(info: &SessionInfo, cwd: &Path) -> PathBuf {
    let Some(timelines) = info.live.parent().map(|d| d.join("timelines")) else { return cwd.to_owned() };
    let Ok(rest) = cwd.strip_prefix(&timelines) else { return cwd.to_owned() };
    let mut parts = rest.components();
    parts.next(); // the timeline's name
    info.workspace.join(parts.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_stat_reads_back_and_a_dead_pid_does_not() {
        let me = std::process::id() as i32;
        let (ppid, start) = proc_stat(me).unwrap();
        assert_eq!(ppid, nix::unistd::getppid().as_raw());
        assert!(start > 0);
        assert!(related(ppid, me), "the parent is an ancestor");
        assert!(!related(me, ppid + 1_000_000), "nonsense caller");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(proc_stat(pid), None);
        let rec = AttachmentRecord {
            pid: me,
            start_ticks: start,
            boot_id: boot_id(),
            session: "s".into(),
            uid: 0,
            since_unix_ms: 0,
            tty: None,
        };
        assert!(is_alive(&rec, &boot_id()));
        assert!(
            !is_alive(&AttachmentRecord { start_ticks: start + 1, ..rec.clone() }, &boot_id()),
            "pid reuse"
        );
        assert!(!is_alive(&rec, "another-boot"));
    }

    #[test]
    fn a_directory_in_the_store_is_saved_as_its_workspace_path() {
        let info: SessionInfo = serde_json::from_value(serde_json::json!({
            "name": "s", "workspace": "/home/u/web", "live": "/st/s/live", "backend": "git",
            "timeline": "main", "created_unix_ms": 1
        }))
        .unwrap();
        let p = |s: &str| through_workspace(&info, Path::new(s));
        assert_eq!(p("/st/s/timelines/main/src/x"), Path::new("/home/u/web/src/x"));
        assert_eq!(p("/st/s/timelines/other"), Path::new("/home/u/web"));
        assert_eq!(p("/home/u/web/src"), Path::new("/home/u/web/src"));
        assert_eq!(p("/tmp"), Path::new("/tmp"));
    }
}

//! Sessions: a named workspace whose history the daemon keeps, and the agents working in
//! it. This module decides what happens and in which order (freeze, snapshot, swap, thaw;
//! journal first, so a crash is settled at the next start); the trees themselves are the
//! snapshot backends' (btrfs subvolumes, or git commits), the process images CRIU's.
//!
//! The user keeps their path: `rush session create` moves the directory's contents into
//! the store and leaves a symlink where the directory was, pointing at `<session>/live`,
//! itself a symlink to `timelines/<timeline>`. A symlink rather than a bind mount because
//! a bind mount pins the tree it was made of (a rollback would have to unmount under
//! whoever is inside), while a symlink follows names: swapping the tree behind a name is
//! one `renameat2(RENAME_EXCHANGE)`, and switching timelines one `rename` of `live`. Both
//! are atomic, so every lookup sees the old tree or the new one, never a mix. The cost:
//! a shell whose working directory is inside the workspace stays in the tree it was in
//! until it `cd`s again, which the CLI prints after a rollback.
//!
//! This file holds the registry of sessions and how one is found; the rest is in rooms:
//! `lifecycle` (create, remove), `timetravel` (checkpoint, rollback and its crash
//! recovery, branch, switch, diff, delete), `store` (where trees live), `state` (key-values,
//! working directory, attached shells).

use crate::core::Fault;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rush_proto::{
    AuditEvent, CheckpointInfo, DiffReport, EnvChange, Prune, RollbackReport, SessionInfo, SessionRef,
    ShellState, Timeline, TimelineInfo,
};

use crate::adapters::snapshot::{Backend, BackendKind, ChangeKind, Side, SnapshotError};
use crate::adapters::snapshot::{SnapshotSection, StoreChoice};
use crate::adapters::store::Store;
use crate::core::{Caller, error_chain};
use crate::services::audit::AuditLog;

mod agents;
pub use agents::{Pending, SessionAgents};
mod lifecycle;
mod state;
mod store;
mod timetravel;

/// The first timeline of every session.
const MAIN: &str = "main";

/// Marks the root of a tree a rollback is about to swap in, so that a daemon restarted
/// after a crash can tell whether the swap happened (the mark is then on the live side).
const SWAP_MARK: &str = "trusted.rush.rollback";

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

pub struct Sessions {
    store: Arc<Store>,
    /// The agents working in sessions, seen only through what a session needs of them.
    agents: Arc<dyn SessionAgents>,
    audit: Arc<AuditLog>,
    config: SnapshotSection,
    state_dir: PathBuf,
    /// Opened backends by `kind:root`; opening the loop store mounts it.
    backends: Mutex<HashMap<String, Arc<dyn Backend>>>,
    /// One workspace operation at a time: they are short, and serializing them keeps
    /// every one's view of the session (its live timeline, its checkpoints) true.
    ops: tokio::sync::Mutex<()>,
}

crate::service_error!(
    /// Why a request to the sessions service failed; `api` maps it to the wire.
    SessionError
);

fn err(fault: Fault, msg: impl Into<String>) -> SessionError {
    SessionError::new(fault, msg)
}

fn snap_err(e: SnapshotError) -> SessionError {
    let kind = match &e {
        SnapshotError::Full { .. } => Fault::Exhausted,
        SnapshotError::Unavailable(_) => Fault::Unsupported,
        SnapshotError::NoCheckpoint(_) => Fault::NotFound,
        _ => Fault::Internal,
    };
    err(kind, error_chain(&e))
}

fn store_err(e: crate::adapters::store::StoreError) -> SessionError {
    err(Fault::Internal, error_chain(&e))
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + use<> {
    let msg = format!("{what} {}", path.display());
    move |e| err(Fault::Internal, format!("{msg}: {e}"))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Session, checkpoint and timeline names: like agent names, so they are safe as one path
/// component and never hidden (`.`-prefixed names are the daemon's own scratch trees).
fn check_name(what: &str, name: &str) -> Result<(), SessionError> {
    name.parse::<rush_proto::AgentName>().map(|_| ()).map_err(|_| {
        err(
            Fault::Invalid,
            format!(
                "{what} name {name:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        )
    })
}

/// A session as this module uses it: where its pieces are.
struct Located {
    info: SessionInfo,
    backend: Arc<dyn Backend>,
}

impl Located {
    fn dir(&self) -> &Path {
        self.info.live.parent().expect("live is <session dir>/live")
    }
    fn tree(&self, timeline: &str) -> PathBuf {
        self.dir().join("timelines").join(timeline)
    }
    fn images(&self, checkpoint: &str) -> PathBuf {
        self.dir().join("images").join(checkpoint)
    }
}

impl Sessions {
    /// Opens the stores of existing sessions (mounting the loop image after a reboot) and
    /// settles operations a crash interrupted.
    pub fn open(
        store: Arc<Store>,
        agents: Arc<dyn SessionAgents>,
        audit: Arc<AuditLog>,
        config: SnapshotSection,
        state_dir: PathBuf,
    ) -> Arc<Sessions> {
        let s = Arc::new(Sessions {
            store,
            agents,
            audit,
            config,
            state_dir,
            backends: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        });
        match s.store.sessions() {
            Ok(list) => {
                for info in list {
                    if let Err(e) = s.backend_of(&info) {
                        tracing::error!(session = %info.name, error = %e, "session store not available");
                    }
                }
            }
            Err(e) => tracing::error!(error = %error_chain(&e), "sessions not read"),
        }
        s.recover();
        s
    }

    pub fn exists(&self, name: &str) -> bool {
        self.store.sessions().map(|l| l.iter().any(|s| s.name == name)).unwrap_or(false)
    }

    fn with_runtime(&self, mut info: SessionInfo) -> SessionInfo {
        info.agents = self.agents.in_session(&info.name);
        info.checkpoints = self.store.checkpoints(&info.name).map(|c| c.len() as u32).unwrap_or(0);
        self.add_state(&mut info);
        info
    }

    pub fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        Ok(self.store.sessions().map_err(store_err)?.into_iter().map(|s| self.with_runtime(s)).collect())
    }

    fn locate(&self, sref: &SessionRef) -> Result<Located, SessionError> {
        let info = self.find(sref)?;
        let backend = self.backend_of(&info).map_err(snap_err)?;
        Ok(Located { info, backend })
    }

    /// The session a request names, or whose workspace contains its working directory.
    pub fn find(&self, sref: &SessionRef) -> Result<SessionInfo, SessionError> {
        let sessions = self.store.sessions().map_err(store_err)?;
        let info = match (&sref.name, &sref.cwd) {
            (Some(name), _) => sessions.into_iter().find(|s| &s.name == name).ok_or_else(|| {
                err(Fault::NotFound, format!("no session {name:?} (see `rush session list`)"))
            })?,
            (None, Some(cwd)) => sessions
                .into_iter()
                .find(|s| {
                    let dir = s.live.parent().unwrap_or(&s.live);
                    cwd.starts_with(&s.workspace) || cwd.starts_with(dir)
                })
                .ok_or_else(|| {
                    err(
                        Fault::NotFound,
                        format!(
                            "{} is in no session's workspace: name one with --session, or cd into one \
                             (see `rush session list`)",
                            cwd.display()
                        ),
                    )
                })?,
            (None, None) => {
                return Err(err(Fault::Invalid, "no session named and no working directory given"));
            }
        };
        Ok(info)
    }

    fn checkpoint_named(&self, l: &Located, name: &str) -> Result<CheckpointInfo, SessionError> {
        let all = self.store.checkpoints(&l.info.name).map_err(store_err)?;
        let known: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        all.into_iter().find(|c| c.name == name).ok_or_else(|| {
            err(
                Fault::NotFound,
                format!(
                    "session {:?} has no checkpoint {name:?} (it has: {})",
                    l.info.name,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            )
        })
    }

    /// Checkpoints and timelines share one namespace, so `timeline diff A B` is never ambiguous.
    fn check_free(&self, l: &Located, name: &str) -> Result<(), SessionError> {
        let clash = self.store.checkpoints(&l.info.name).map_err(store_err)?.iter().any(|c| c.name == name);
        let clash_tl = self.store.timelines(&l.info.name).map_err(store_err)?.iter().any(|t| t.name == name);
        if clash || clash_tl {
            let what = if clash { "checkpoint" } else { "timeline" };
            return Err(err(
                Fault::Exists,
                format!("session {:?} already has a {what} named {name:?}", l.info.name),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::timetravel::{clear_mark, env_diff, exchange, read_mark, set_mark};
    use super::*;

    #[test]
    fn env_diff_lists_added_removed_and_changed_variables() {
        let v =
            |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let d =
            env_diff(&v(&[("A", "1"), ("B", "2"), ("C", "3")]), &v(&[("A", "1"), ("B", "x"), ("D", "4")]));
        let got: Vec<(&str, Option<&str>, Option<&str>)> =
            d.iter().map(|c| (c.name.as_str(), c.a.as_deref(), c.b.as_deref())).collect();
        assert_eq!(got, vec![("B", Some("2"), Some("x")), ("C", Some("3"), None), ("D", None, Some("4"))]);
    }

    #[test]
    fn names_are_one_safe_path_component() {
        assert!(check_name("checkpoint", "before-refactor.2").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "x y", &"a".repeat(65)] {
            assert!(check_name("checkpoint", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_swap_mark_is_read_back_and_cleared() {
        let d = tempfile::tempdir().unwrap();
        if set_mark(d.path(), "cp1").is_err() {
            // trusted.* needs CAP_SYS_ADMIN: the unit tier may run unprivileged.
            assert!(!nix::unistd::geteuid().is_root(), "root could not set {SWAP_MARK}");
            return;
        }
        assert_eq!(read_mark(d.path()).as_deref(), Some("cp1"));
        clear_mark(d.path());
        assert_eq!(read_mark(d.path()), None);
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("f"), "A").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "A");
        assert!(!a.join("f").exists());
    }
}

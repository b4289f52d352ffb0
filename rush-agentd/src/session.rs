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

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rush_proto::{
    ApiError, AuditEvent, CheckpointInfo, DiffReport, EnvChange, ErrorKind, Prune, RollbackReport,
    SessionInfo, SessionRef, ShellState, Timeline, TimelineInfo,
};

use crate::agent::{AgentManager, Caller};
use crate::audit::AuditLog;
use crate::core::error_chain;
use crate::snapshot::{Backend, BackendKind, ChangeKind, Side, SnapshotError};
use crate::snapshot::{SnapshotSection, StoreChoice};
use crate::store::Store;

mod state;

/// The first timeline of every session.
const MAIN: &str = "main";
/// Marks the root of a tree a rollback is about to swap in, so that a daemon restarted
/// after a crash can tell whether the swap happened (the mark is then on the live side).
const SWAP_MARK: &str = "trusted.rush.rollback";
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

pub struct Sessions {
    store: Arc<Store>,
    agents: Arc<AgentManager>,
    audit: Arc<AuditLog>,
    config: SnapshotSection,
    state_dir: PathBuf,
    /// Opened backends by `kind:root`; opening the loop store mounts it.
    backends: Mutex<HashMap<String, Arc<dyn Backend>>>,
    /// One workspace operation at a time: they are short, and serializing them keeps
    /// every one's view of the session (its live timeline, its checkpoints) true.
    ops: tokio::sync::Mutex<()>,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn snap_err(e: SnapshotError) -> ApiError {
    let kind = match &e {
        SnapshotError::Full { .. } => ErrorKind::ResourceExhausted,
        SnapshotError::Unavailable(_) => ErrorKind::Unsupported,
        SnapshotError::NoCheckpoint(_) => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    };
    err(kind, error_chain(&e))
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    err(ErrorKind::Internal, error_chain(&e))
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError + use<> {
    let msg = format!("{what} {}", path.display());
    move |e| err(ErrorKind::Internal, format!("{msg}: {e}"))
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Session, checkpoint and timeline names: like agent names, so they are safe as one path
/// component and never hidden (`.`-prefixed names are the daemon's own scratch trees).
fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    name.parse::<rush_proto::AgentName>().map(|_| ()).map_err(|_| {
        err(
            ErrorKind::InvalidArgument,
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
        agents: Arc<AgentManager>,
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

    /// The image stays in the state dir (agents never reach it); the trees are mounted
    /// outside it, since the guard keeps agents out of the state dir and they work in them.
    fn loop_paths(&self) -> (PathBuf, PathBuf) {
        (self.state_dir.join("snapshots.img"), self.config.base_dir(&self.state_dir).join("btrfs"))
    }

    fn open_backend(&self, kind: BackendKind, root: &Path) -> Result<Arc<dyn Backend>, SnapshotError> {
        let key = format!("{}:{}", kind.as_str(), root.display());
        if let Some(b) = self.backends.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(b.clone());
        }
        let backend: Arc<dyn Backend> = match kind {
            BackendKind::Btrfs => Arc::new(crate::snapshot::btrfs::Btrfs::on_host(root)?),
            BackendKind::BtrfsLoop => {
                let (image, mountpoint) = self.loop_paths();
                Arc::new(crate::snapshot::btrfs::Btrfs::on_loop(
                    &image,
                    &mountpoint,
                    self.config.image_bytes(),
                )?)
            }
            BackendKind::Git => Arc::new(crate::snapshot::git::Git::new(root)?),
        };
        self.backends.lock().unwrap_or_else(|p| p.into_inner()).insert(key, backend.clone());
        Ok(backend)
    }

    fn backend_of(&self, info: &SessionInfo) -> Result<Arc<dyn Backend>, SnapshotError> {
        let kind = match info.backend.as_str() {
            "btrfs" => BackendKind::Btrfs,
            "btrfs-loop" => BackendKind::BtrfsLoop,
            "git" => BackendKind::Git,
            other => return Err(SnapshotError::Unavailable(format!("unknown store kind {other:?}"))),
        };
        let root = info.live.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        self.open_backend(kind, root)
    }

    /// The store a new session whose workspace is `workspace` goes to, per `[snapshot] store`.
    fn choose_store(&self, workspace: &Path) -> Result<(BackendKind, PathBuf), ApiError> {
        let on_btrfs = nix::sys::statfs::statfs(workspace)
            .map(|s| s.filesystem_type().0 == BTRFS_SUPER_MAGIC)
            .unwrap_or(false);
        let loop_ok = Path::new("/dev/loop-control").exists() && which("mkfs.btrfs").is_some();
        let host_root = || mount_point(workspace).map(|m| m.join(".rush-sessions"));
        let git_root = || self.config.base_dir(&self.state_dir).join("git");
        let loop_root = || self.loop_paths().1;
        match self.config.store {
            StoreChoice::Auto if on_btrfs => Ok((BackendKind::Btrfs, host_root()?)),
            StoreChoice::Auto if loop_ok => Ok((BackendKind::BtrfsLoop, loop_root())),
            StoreChoice::Auto => Ok((BackendKind::Git, git_root())),
            StoreChoice::Btrfs if on_btrfs => Ok((BackendKind::Btrfs, host_root()?)),
            StoreChoice::Btrfs => Err(err(
                ErrorKind::Unsupported,
                format!(
                    "snapshot.store is \"btrfs\" but workspace {} is not on a btrfs filesystem",
                    workspace.display()
                ),
            )),
            StoreChoice::BtrfsLoop if loop_ok => Ok((BackendKind::BtrfsLoop, loop_root())),
            StoreChoice::BtrfsLoop => Err(err(
                ErrorKind::Unsupported,
                "snapshot.store is \"btrfs-loop\" but this machine has no loop devices (/dev/loop-control) \
                 or no mkfs.btrfs (btrfs-progs)",
            )),
            StoreChoice::Git if which("git").is_some() => Ok((BackendKind::Git, git_root())),
            StoreChoice::Git => {
                Err(err(ErrorKind::Unsupported, "snapshot.store is \"git\" but git is not installed"))
            }
        }
    }

    /// The store new sessions would use, and why: for `rush doctor`.
    pub fn store_report(&self) -> (bool, String) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match self.choose_store(&cwd) {
            Ok((BackendKind::Btrfs, root)) => {
                (true, format!("btrfs snapshots on the workspace's own filesystem ({})", root.display()))
            }
            Ok((BackendKind::BtrfsLoop, root)) => (
                true,
                format!(
                    "btrfs snapshots on a loop-mounted image at {} ({} sparse; workspaces on btrfs use their own)",
                    root.display(),
                    self.config.image_size
                ),
            ),
            Ok((BackendKind::Git, _)) => (
                true,
                "git commits on hidden refs (no btrfs, no loop devices): checkpoints copy every file".into(),
            ),
            Err(e) => (false, e.message),
        }
    }

    /// An ephemeral daemon (tests, demos) leaves nothing mounted: the loop store is
    /// unmounted (its loop device goes with it). A normal daemon keeps it mounted, so that
    /// workspaces stay reachable while it is down.
    pub fn unmount_loop_store(&self) {
        let (_, mountpoint) = self.loop_paths();
        let mounted = crate::snapshot::btrfs::is_mount_point(&mountpoint).unwrap_or(false);
        if mounted && let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %mountpoint.display(), error = %e, "snapshot store not unmounted");
        }
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

    pub fn list(&self) -> Result<Vec<SessionInfo>, ApiError> {
        Ok(self.store.sessions().map_err(store_err)?.into_iter().map(|s| self.with_runtime(s)).collect())
    }

    fn locate(&self, sref: &SessionRef) -> Result<Located, ApiError> {
        let info = self.find(sref)?;
        let backend = self.backend_of(&info).map_err(snap_err)?;
        Ok(Located { info, backend })
    }

    /// The session a request names, or whose workspace contains its working directory.
    fn find(&self, sref: &SessionRef) -> Result<SessionInfo, ApiError> {
        let sessions = self.store.sessions().map_err(store_err)?;
        let info = match (&sref.name, &sref.cwd) {
            (Some(name), _) => sessions.into_iter().find(|s| &s.name == name).ok_or_else(|| {
                err(ErrorKind::NotFound, format!("no session {name:?} (see `rush session list`)"))
            })?,
            (None, Some(cwd)) => sessions
                .into_iter()
                .find(|s| {
                    let dir = s.live.parent().unwrap_or(&s.live);
                    cwd.starts_with(&s.workspace) || cwd.starts_with(dir)
                })
                .ok_or_else(|| {
                    err(
                        ErrorKind::NotFound,
                        format!(
                            "{} is in no session's workspace: name one with --session, or cd into one \
                             (see `rush session list`)",
                            cwd.display()
                        ),
                    )
                })?,
            (None, None) => {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    "no session named and no working directory given",
                ));
            }
        };
        Ok(info)
    }

    fn checkpoint_named(&self, l: &Located, name: &str) -> Result<CheckpointInfo, ApiError> {
        let all = self.store.checkpoints(&l.info.name).map_err(store_err)?;
        let known: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        all.into_iter().find(|c| c.name == name).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!(
                    "session {:?} has no checkpoint {name:?} (it has: {})",
                    l.info.name,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            )
        })
    }

    /// Checkpoints and timelines share one namespace, so `timeline diff A B` is never ambiguous.
    fn check_free(&self, l: &Located, name: &str) -> Result<(), ApiError> {
        let clash = self.store.checkpoints(&l.info.name).map_err(store_err)?.iter().any(|c| c.name == name);
        let clash_tl = self.store.timelines(&l.info.name).map_err(store_err)?.iter().any(|t| t.name == name);
        if clash || clash_tl {
            let what = if clash { "checkpoint" } else { "timeline" };
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("session {:?} already has a {what} named {name:?}", l.info.name),
            ));
        }
        Ok(())
    }

    pub async fn create(
        self: &Arc<Self>,
        name: String,
        workspace: PathBuf,
        caller: &Caller,
    ) -> Result<SessionInfo, ApiError> {
        check_name("session", &name)?;
        let _op = self.ops.lock().await;
        if self.exists(&name) {
            return Err(err(ErrorKind::AlreadyExists, format!("session {name:?} already exists")));
        }
        let this = Arc::clone(self);
        let info = tokio::task::spawn_blocking(move || this.create_blocking(&name, &workspace))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))??;
        self.audit.record(
            None,
            AuditEvent::SessionCreated {
                session: info.name.clone(),
                workspace: info.workspace.clone(),
                backend: info.backend.clone(),
                caller_uid: caller.uid,
            },
        );
        Ok(self.with_runtime(info))
    }

    fn create_blocking(&self, name: &str, workspace: &Path) -> Result<SessionInfo, ApiError> {
        let bad = |why: String| {
            err(ErrorKind::InvalidArgument, format!("workspace {}: {why}", workspace.display()))
        };
        if !workspace.is_absolute() {
            return Err(bad("not an absolute path".into()));
        }
        let meta = std::fs::symlink_metadata(workspace).map_err(|e| bad(e.to_string()))?;
        if meta.file_type().is_symlink() {
            return Err(bad(
                "is a symlink (already a session's workspace?); give the directory itself".into()
            ));
        }
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        if workspace.parent().is_none() {
            return Err(bad("the root directory cannot be a workspace".into()));
        }
        if self.state_dir.starts_with(workspace) || workspace.starts_with(&self.state_dir) {
            return Err(bad(format!("overlaps the daemon's state dir {}", self.state_dir.display())));
        }
        for s in self.store.sessions().map_err(store_err)? {
            let dir = s.live.parent().unwrap_or(&s.live).to_path_buf();
            if s.workspace.starts_with(workspace)
                || workspace.starts_with(&s.workspace)
                || workspace.starts_with(&dir)
            {
                return Err(bad(format!("overlaps session {:?}'s workspace", s.name)));
            }
        }
        let (kind, root) = self.choose_store(workspace)?;
        if workspace.starts_with(&root) {
            return Err(bad(format!("is inside the snapshot store {}", root.display())));
        }
        let backend = self.open_backend(kind, &root).map_err(snap_err)?;
        let dir = backend.root().join(name);
        if dir.exists() {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("{} exists (left by an earlier session {name:?}?): remove it first", dir.display()),
            ));
        }
        let timelines = dir.join("timelines");
        std::fs::create_dir_all(&timelines).map_err(io_err("creating", &timelines))?;
        let tree = timelines.join(MAIN);
        let made = (|| {
            backend.create_tree(&tree).map_err(snap_err)?;
            copy_tree(workspace, &tree)?;
            // The tree's root takes the directory's owner and mode (cp copied only its contents).
            std::os::unix::fs::lchown(&tree, Some(meta.uid()), Some(meta.gid()))
                .map_err(io_err("chown", &tree))?;
            std::fs::set_permissions(&tree, meta.permissions()).map_err(io_err("chmod", &tree))?;
            std::os::unix::fs::symlink(Path::new("timelines").join(MAIN), dir.join("live"))
                .map_err(io_err("symlink", &dir.join("live")))
        })();
        if let Err(e) = made {
            let _ = backend.remove_tree(&tree);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let info = SessionInfo {
            name: name.to_owned(),
            workspace: workspace.to_owned(),
            live: dir.join("live"),
            backend: kind.as_str().to_owned(),
            timeline: MAIN.to_owned(),
            created_unix_ms: now_unix_ms(),
            agents: Vec::new(),
            checkpoints: 0,
            attached: 0,
            keys: 0,
            cwd: None,
        };
        // From here a crash is settled by `recover`: the directory is set aside, the
        // symlink put in its place, then the directory removed.
        let aside = aside_path(workspace, name);
        let detail = serde_json::json!({ "workspace": workspace, "aside": aside }).to_string();
        self.store.put_session(&info).map_err(store_err)?;
        self.store
            .put_timeline(
                name,
                &TimelineInfo {
                    name: MAIN.into(),
                    from: None,
                    created_unix_ms: info.created_unix_ms,
                    live: true,
                },
            )
            .map_err(store_err)?;
        self.store.journal_begin(name, "create", &detail).map_err(store_err)?;
        std::fs::rename(workspace, &aside).map_err(io_err("moving aside", workspace))?;
        if let Err(e) = std::os::unix::fs::symlink(&info.live, workspace) {
            let _ = std::fs::rename(&aside, workspace);
            let _ = self.store.delete_session(name);
            return Err(io_err("symlink", workspace)(e));
        }
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(path = %aside.display(), error = %e, "original workspace not removed");
        }
        self.store.journal_end(name).map_err(store_err)?;
        Ok(info)
    }

    pub async fn remove(self: &Arc<Self>, name: String, caller: &Caller) -> Result<PathBuf, ApiError> {
        let _op = self.ops.lock().await;
        let l = self.locate(&SessionRef { name: Some(name.clone()), cwd: None })?;
        let running = self.agents.in_session(&name);
        if !running.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("session {name:?} has running agents ({}): kill them first", running.join(", ")),
            ));
        }
        let this = Arc::clone(self);
        let workspace = tokio::task::spawn_blocking(move || this.remove_blocking(&l))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))??;
        self.audit.record(None, AuditEvent::SessionRemoved { session: name, caller_uid: caller.uid });
        Ok(workspace)
    }

    fn remove_blocking(&self, l: &Located) -> Result<PathBuf, ApiError> {
        let name = &l.info.name;
        let ws = &l.info.workspace;
        let restoring = aside_path(ws, name);
        self.store
            .journal_begin(
                name,
                "remove",
                &serde_json::json!({ "workspace": ws, "restoring": restoring }).to_string(),
            )
            .map_err(store_err)?;
        // The live tree back at the user's path as a plain directory, swapped in for the
        // symlink in one step. A copy a crash interrupted is made again.
        let linked = std::fs::symlink_metadata(ws).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        if linked {
            if std::fs::symlink_metadata(&restoring).is_ok() {
                std::fs::remove_dir_all(&restoring).map_err(io_err("removing", &restoring))?;
            }
            let live = l.tree(&l.info.timeline);
            let copied = (|| {
                std::fs::create_dir(&restoring).map_err(io_err("creating", &restoring))?;
                copy_tree(&live, &restoring)?;
                let meta = std::fs::metadata(&live).map_err(io_err("stat", &live))?;
                let _ = std::os::unix::fs::lchown(&restoring, Some(meta.uid()), Some(meta.gid()));
                let _ = std::fs::set_permissions(&restoring, meta.permissions());
                exchange(&restoring, ws)
            })();
            if let Err(e) = copied {
                // Nothing changed for the user: the session stays as it was.
                let _ = std::fs::remove_dir_all(&restoring);
                let _ = self.store.journal_end(name);
                return Err(e);
            }
        }
        let _ = std::fs::remove_file(&restoring);
        self.destroy(l);
        self.store.delete_session(name).map_err(store_err)?;
        Ok(ws.clone())
    }

    /// Deletes the session's trees, checkpoints and images from its store.
    fn destroy(&self, l: &Located) {
        if let Ok(cps) = self.store.checkpoints(&l.info.name) {
            for c in cps {
                if let Err(e) = l.backend.remove_checkpoint(l.dir(), &c.name) {
                    tracing::warn!(session = %l.info.name, checkpoint = %c.name, error = %e, "checkpoint not removed");
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(l.dir().join("timelines")) {
            for e in entries.flatten() {
                let _ = l.backend.remove_tree(&e.path());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(l.dir()) {
            tracing::warn!(path = %l.dir().display(), error = %e, "session directory not removed");
        }
    }

    /// Freezes the session's agents; the guard thaws them when dropped, whatever happened.
    async fn freeze_all(&self, names: &[String]) -> Result<Thaw<'_>, ApiError> {
        let mut thaw = Thaw { agents: &self.agents, names: Vec::new() };
        for n in names {
            self.agents.freeze(n).await?;
            thaw.names.push(n.clone());
        }
        Ok(thaw)
    }

    pub async fn checkpoint(
        self: &Arc<Self>,
        sref: SessionRef,
        name: String,
        with_processes: bool,
        shell: Option<ShellState>,
        caller: &Caller,
    ) -> Result<CheckpointInfo, ApiError> {
        check_name("checkpoint", &name)?;
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        self.check_free(&l, &name)?;
        let agents = self.agents.in_session(&l.info.name);
        if with_processes {
            crate::agent::processes::criu(self.agents.criu())
                .map_err(|e| err(ErrorKind::Unsupported, format!("--with-processes: {}", e.message)))?;
            if agents.is_empty() {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("--with-processes: session {:?} has no running agents", l.info.name),
                ));
            }
        }
        let c = self.take_checkpoint(&l, &name, &agents, with_processes, shell, false).await?;
        self.audit.record(
            None,
            AuditEvent::Checkpoint {
                session: l.info.name.clone(),
                name: c.name.clone(),
                captured: c.captured.clone(),
                caller_uid: caller.uid,
            },
        );
        Ok(c)
    }

    async fn take_checkpoint(
        self: &Arc<Self>,
        l: &Located,
        name: &str,
        agents: &[String],
        with_processes: bool,
        shell: Option<ShellState>,
        automatic: bool,
    ) -> Result<CheckpointInfo, ApiError> {
        let started = Instant::now();
        let thaw = self.freeze_all(agents).await?;
        let tree = l.tree(&l.info.timeline);
        let mut captured = vec!["files".to_owned()];
        let size = {
            let backend = l.backend.clone();
            let (dir, tree, id) = (l.dir().to_owned(), tree.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || {
                syncfs(&tree);
                backend.checkpoint(&dir, &tree, &id)
            })
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .map_err(snap_err)?
        };
        if with_processes {
            let images = l.images(name);
            for a in agents {
                let dir = images.join(a);
                let dumped = match std::fs::create_dir_all(&dir) {
                    Ok(()) => self.agents.dump_processes(a, &dir).await.map(|_| ()),
                    Err(e) => Err(io_err("creating", &dir)(e)),
                };
                if let Err(e) = dumped {
                    drop(thaw);
                    let _ = std::fs::remove_dir_all(&images);
                    let _ = l.backend.remove_checkpoint(l.dir(), name);
                    return Err(err(
                        e.kind,
                        format!("checkpoint {name:?} not taken: agent {a}: {}", e.message),
                    ));
                }
                captured.push(format!("processes:{a}"));
            }
        }
        drop(thaw);
        if shell.is_some() {
            captured.push("shell".into());
        }
        let parent = self
            .store
            .checkpoints(&l.info.name)
            .map_err(store_err)?
            .into_iter()
            .rfind(|c| c.timeline == l.info.timeline)
            .map(|c| c.name);
        let info = CheckpointInfo {
            name: name.to_owned(),
            session: l.info.name.clone(),
            timeline: l.info.timeline.clone(),
            parent,
            created_unix_ms: now_unix_ms(),
            size_bytes: size,
            automatic,
            captured,
            took_ms: started.elapsed().as_millis() as u64,
        };
        self.store.put_checkpoint(&info, shell.as_ref()).map_err(store_err)?;
        Ok(info)
    }

    pub async fn rollback(
        self: &Arc<Self>,
        sref: SessionRef,
        name: String,
        caller: &Caller,
    ) -> Result<RollbackReport, ApiError> {
        let started = Instant::now();
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        let target = self.checkpoint_named(&l, &name)?;
        let shell = self.store.checkpoint_shell(&l.info.name, &name).map_err(store_err)?;
        let agents = self.agents.in_session(&l.info.name);
        let imaged: Vec<String> =
            target.captured.iter().filter_map(|c| c.strip_prefix("processes:")).map(str::to_owned).collect();
        if !imaged.is_empty() {
            crate::agent::processes::criu(self.agents.criu()).map_err(|e| {
                err(ErrorKind::Unsupported, format!("checkpoint {name:?} holds processes: {}", e.message))
            })?;
        }
        // The present, kept so that this rollback can be undone.
        let undo_name = self.undo_name(&l)?;
        let undo = self.take_checkpoint(&l, &undo_name, &agents, false, None, true).await?;

        // Agents whose files are about to be replaced are stopped (their open files and
        // working directories would go on naming the old tree); those the checkpoint holds
        // images of are restored after the swap.
        let mut stopped = Vec::new();
        for a in &agents {
            if !imaged.contains(a) {
                self.agents.kill(a, caller).await?;
                stopped.push(a.clone());
            }
        }
        let this = Arc::clone(self);
        let (l2, id) = (Located { info: l.info.clone(), backend: l.backend.clone() }, name.clone());
        tokio::task::spawn_blocking(move || this.swap_in(&l2, &id))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))??;
        let mut restored = Vec::new();
        for a in &imaged {
            match self.agents.restore_processes(a, &l.images(&name).join(a)).await {
                Ok(_) => {
                    if let Err(e) = self.agents.follow_token_paths(a) {
                        tracing::error!(agent = %a, error = %e.message, "tokens not moved to the restored tree");
                    }
                    restored.push(a.clone())
                }
                Err(e) => {
                    tracing::error!(agent = %a, error = %e.message, "processes not restored");
                    return Err(err(
                        e.kind,
                        format!(
                            "the workspace was rolled back to {name:?}, but agent {a}'s processes were not \
                             restored: {} (undo with `rush rollback {}`)",
                            e.message, undo.name
                        ),
                    ));
                }
            }
        }
        self.audit.record(
            None,
            AuditEvent::Rollback {
                session: l.info.name.clone(),
                name: name.clone(),
                undo: undo.name.clone(),
                caller_uid: caller.uid,
            },
        );
        Ok(RollbackReport {
            checkpoint: target,
            undo,
            shell,
            stopped,
            restored,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn undo_name(&self, l: &Located) -> Result<String, ApiError> {
        let taken: Vec<String> =
            self.store.checkpoints(&l.info.name).map_err(store_err)?.into_iter().map(|c| c.name).collect();
        Ok((1..).map(|n| format!("undo-{n}")).find(|n| !taken.contains(n)).expect("a free name"))
    }

    /// Builds checkpoint `id` as a scratch tree next to the live one, then exchanges the two
    /// in one rename: the atomic point of a rollback. Journaled, so `recover` can settle a crash.
    fn swap_in(&self, l: &Located, id: &str) -> Result<(), ApiError> {
        let live = l.tree(&l.info.timeline);
        let incoming = l.dir().join("timelines").join(format!(".{}.incoming", l.info.timeline));
        if incoming.exists() {
            l.backend.remove_tree(&incoming).map_err(snap_err)?;
        }
        let detail = serde_json::json!({ "checkpoint": id, "live": live, "incoming": incoming }).to_string();
        self.store.journal_begin(&l.info.name, "rollback", &detail).map_err(store_err)?;
        let built = l.backend.materialize(l.dir(), id, &incoming).map_err(snap_err).and_then(|()| {
            keep_git_dir(l.backend.kind(), &live, &incoming)?;
            set_mark(&incoming, id)?;
            crash_point("rollback-before-swap");
            exchange(&incoming, &live)
        });
        if let Err(e) = built {
            let _ = l.backend.remove_tree(&incoming);
            let _ = self.store.journal_end(&l.info.name);
            return Err(e);
        }
        crash_point("rollback-after-swap");
        self.finish_swap(&live, &incoming, l.backend.as_ref());
        self.store.journal_end(&l.info.name).map_err(store_err)
    }

    fn finish_swap(&self, live: &Path, incoming: &Path, backend: &dyn Backend) {
        clear_mark(live);
        if incoming.exists()
            && let Err(e) = backend.remove_tree(incoming)
        {
            tracing::warn!(path = %incoming.display(), error = %e, "the replaced tree was not removed");
        }
    }

    /// Settles workspace operations a crash interrupted: each ends as if it had completed
    /// or as if it had never begun, and is audited as such.
    pub fn recover(&self) {
        let journal = match self.store.journal() {
            Ok(j) => j,
            Err(e) => return tracing::error!(error = %error_chain(&e), "journal not read"),
        };
        for (session, op, detail) in journal {
            let d: serde_json::Value = serde_json::from_str(&detail).unwrap_or_default();
            let path = |k: &str| d.get(k).and_then(|v| v.as_str()).map(PathBuf::from);
            let outcome = match op.as_str() {
                "rollback" => {
                    let (Some(live), Some(incoming)) = (path("live"), path("incoming")) else { continue };
                    let id = d.get("checkpoint").and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    let backend = self.store.sessions().ok().and_then(|l| {
                        l.into_iter().find(|s| s.name == session).and_then(|s| self.backend_of(&s).ok())
                    });
                    let Some(backend) = backend else { continue };
                    let swapped = read_mark(&live).as_deref() == Some(id.as_str());
                    if swapped {
                        self.finish_swap(&live, &incoming, backend.as_ref());
                    } else if incoming.exists() {
                        let _ = backend.remove_tree(&incoming);
                    }
                    let outcome = if swapped { "completed" } else { "undone" };
                    self.audit.record(
                        None,
                        AuditEvent::RollbackRepaired {
                            session: session.clone(),
                            name: id,
                            outcome: outcome.into(),
                        },
                    );
                    outcome
                }
                "create" => {
                    let (Some(ws), Some(aside)) = (path("workspace"), path("aside")) else { continue };
                    let linked =
                        std::fs::symlink_metadata(&ws).map(|m| m.file_type().is_symlink()).unwrap_or(false);
                    if linked {
                        let _ = std::fs::remove_dir_all(&aside);
                        "completed"
                    } else {
                        if !ws.exists() && aside.exists() {
                            let _ = std::fs::rename(&aside, &ws);
                        }
                        if let Some(s) =
                            self.store.sessions().ok().and_then(|l| l.into_iter().find(|s| s.name == session))
                            && let Ok(backend) = self.backend_of(&s)
                        {
                            self.destroy(&Located { info: s, backend });
                        }
                        let _ = self.store.delete_session(&session);
                        "undone"
                    }
                }
                "remove" => {
                    let Some(restoring) = path("restoring") else { continue };
                    let s =
                        self.store.sessions().ok().and_then(|l| l.into_iter().find(|s| s.name == session));
                    match s.map(|s| self.backend_of(&s).map(|b| Located { info: s, backend: b })) {
                        Some(Ok(l)) => match self.remove_blocking(&l) {
                            Ok(_) => "completed",
                            Err(e) => {
                                tracing::error!(session = %session, error = %e.message, "session removal not finished");
                                continue;
                            }
                        },
                        // The session's rows are gone: the removal had finished but for this.
                        _ => {
                            let _ = std::fs::remove_file(&restoring);
                            "completed"
                        }
                    }
                }
                _ => "unknown",
            };
            tracing::warn!(session = %session, op = %op, outcome, "settled an operation a crash interrupted");
            let _ = self.store.journal_end(&session);
        }
    }

    pub async fn branch(
        self: &Arc<Self>,
        sref: SessionRef,
        name: String,
        from: Option<String>,
        caller: &Caller,
    ) -> Result<TimelineInfo, ApiError> {
        check_name("timeline", &name)?;
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        self.check_free(&l, &name)?;
        if let Some(c) = &from {
            self.checkpoint_named(&l, c)?;
        }
        let dest = l.tree(&name);
        let agents = self.agents.in_session(&l.info.name);
        let thaw = if from.is_none() { Some(self.freeze_all(&agents).await?) } else { None };
        let (backend, dir, live, from2) =
            (l.backend.clone(), l.dir().to_owned(), l.tree(&l.info.timeline), from.clone());
        let made = tokio::task::spawn_blocking(move || match &from2 {
            Some(c) => backend.materialize(&dir, c, &dest),
            None => backend.clone_tree(&live, &dest),
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        drop(thaw);
        made.map_err(snap_err)?;
        let t = TimelineInfo { name: name.clone(), from, created_unix_ms: now_unix_ms(), live: false };
        self.store.put_timeline(&l.info.name, &t).map_err(store_err)?;
        self.audit.record(
            None,
            AuditEvent::TimelineChange {
                session: l.info.name.clone(),
                action: "branch".into(),
                timeline: name,
                caller_uid: caller.uid,
            },
        );
        Ok(t)
    }

    pub async fn switch(
        self: &Arc<Self>,
        sref: SessionRef,
        name: String,
        caller: &Caller,
    ) -> Result<TimelineInfo, ApiError> {
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        let mut timelines = self.store.timelines(&l.info.name).map_err(store_err)?;
        let Some(t) = timelines.iter_mut().find(|t| t.name == name) else {
            let known: Vec<String> = timelines.iter().map(|t| t.name.clone()).collect();
            return Err(err(
                ErrorKind::NotFound,
                format!("session {:?} has no timeline {name:?} (it has: {})", l.info.name, known.join(", ")),
            ));
        };
        let running = self.agents.in_session(&l.info.name);
        if !running.is_empty() && name != l.info.timeline {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "session {:?} has running agents ({}), whose files are on timeline {:?}: stop them first",
                    l.info.name,
                    running.join(", "),
                    l.info.timeline
                ),
            ));
        }
        // A new symlink renamed over `live`: one atomic step.
        let tmp = l.dir().join(".live.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("timelines").join(&name), &tmp)
            .map_err(io_err("symlink", &tmp))?;
        std::fs::rename(&tmp, &l.info.live).map_err(io_err("replacing", &l.info.live))?;
        let mut info = l.info.clone();
        info.timeline = name.clone();
        self.store.put_session(&info).map_err(store_err)?;
        t.live = true;
        let switched = t.clone();
        for t in timelines.iter_mut() {
            t.live = t.name == name;
            self.store.put_timeline(&l.info.name, t).map_err(store_err)?;
        }
        self.audit.record(
            None,
            AuditEvent::TimelineChange {
                session: l.info.name.clone(),
                action: "switch".into(),
                timeline: name,
                caller_uid: caller.uid,
            },
        );
        Ok(TimelineInfo { live: true, ..switched })
    }

    pub fn timeline(&self, sref: &SessionRef) -> Result<Timeline, ApiError> {
        let l = self.locate(sref)?;
        let mut timelines = self.store.timelines(&l.info.name).map_err(store_err)?;
        for t in &mut timelines {
            t.live = t.name == l.info.timeline;
        }
        Ok(Timeline {
            checkpoints: self.store.checkpoints(&l.info.name).map_err(store_err)?,
            timelines,
            session: self.with_runtime(l.info),
        })
    }

    pub async fn diff(
        self: &Arc<Self>,
        sref: SessionRef,
        a: String,
        b: String,
    ) -> Result<DiffReport, ApiError> {
        let started = Instant::now();
        let l = self.locate(&sref)?;
        let checkpoints = self.store.checkpoints(&l.info.name).map_err(store_err)?;
        let timelines = self.store.timelines(&l.info.name).map_err(store_err)?;
        let side = |n: &str| -> Result<(bool, PathBuf), ApiError> {
            if checkpoints.iter().any(|c| c.name == n) {
                Ok((true, PathBuf::new()))
            } else if timelines.iter().any(|t| t.name == n) {
                Ok((false, l.tree(n)))
            } else {
                Err(err(
                    ErrorKind::NotFound,
                    format!("session {:?} has no checkpoint or timeline {n:?}", l.info.name),
                ))
            }
        };
        let (sa, sb) = (side(&a)?, side(&b)?);
        let (backend, dir, a2, b2) = (l.backend.clone(), l.dir().to_owned(), a.clone(), b.clone());
        let changes = tokio::task::spawn_blocking(move || {
            fn pick<'a>((cp, tree): &'a (bool, PathBuf), n: &'a str) -> Side<'a> {
                if *cp { Side::Checkpoint(n) } else { Side::Tree(tree.as_path()) }
            }
            backend.diff(&dir, pick(&sa, &a2), pick(&sb, &b2))
        })
        .await
        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
        .map_err(snap_err)?;
        let mut report = DiffReport {
            a: a.clone(),
            b: b.clone(),
            added: Vec::new(),
            removed: Vec::new(),
            modified: Vec::new(),
            env: Vec::new(),
            took_ms: 0,
        };
        for c in changes {
            match c.kind {
                ChangeKind::Added => report.added.push(c.path),
                ChangeKind::Removed => report.removed.push(c.path),
                ChangeKind::Modified => report.modified.push(c.path),
            }
        }
        // Environments are compared where both sides saved one (a timeline has none).
        let shell_a = self.store.checkpoint_shell(&l.info.name, &a).map_err(store_err)?;
        let shell_b = self.store.checkpoint_shell(&l.info.name, &b).map_err(store_err)?;
        if let (Some(sa), Some(sb)) = (shell_a, shell_b) {
            report.env = env_diff(&sa.env, &sb.env);
        }
        report.took_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    pub async fn delete(
        self: &Arc<Self>,
        sref: SessionRef,
        names: Option<Vec<String>>,
        prune: Option<Prune>,
        caller: &Caller,
    ) -> Result<Vec<String>, ApiError> {
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        let all = self.store.checkpoints(&l.info.name).map_err(store_err)?;
        let doomed: Vec<String> = match (names, prune) {
            (Some(names), _) => {
                for n in &names {
                    self.checkpoint_named(&l, n)?;
                }
                names
            }
            (None, Some(p)) => {
                if p.keep.is_none() && p.older_than_ms.is_none() {
                    return Err(err(
                        ErrorKind::InvalidArgument,
                        "prune: give --keep N, --older-than AGE, or both",
                    ));
                }
                let now = now_unix_ms();
                let keep_from = all.len().saturating_sub(p.keep.map_or(all.len(), |k| k as usize));
                all.iter()
                    .enumerate()
                    .filter(|(i, c)| {
                        let beyond_keep = p.keep.is_some() && *i < keep_from;
                        let too_old =
                            p.older_than_ms.is_some_and(|age| now.saturating_sub(c.created_unix_ms) > age);
                        beyond_keep || too_old
                    })
                    .map(|(_, c)| c.name.clone())
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        for n in &doomed {
            let (backend, dir, id) = (l.backend.clone(), l.dir().to_owned(), n.clone());
            tokio::task::spawn_blocking(move || backend.remove_checkpoint(&dir, &id))
                .await
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
                .map_err(snap_err)?;
            let _ = std::fs::remove_dir_all(l.images(n));
            self.store.delete_checkpoint(&l.info.name, n).map_err(store_err)?;
        }
        if !doomed.is_empty() {
            self.audit.record(
                None,
                AuditEvent::CheckpointsDeleted {
                    session: l.info.name.clone(),
                    names: doomed.clone(),
                    caller_uid: caller.uid,
                },
            );
        }
        Ok(doomed)
    }
}

/// Thaws the agents a workspace operation froze when it goes out of scope.
struct Thaw<'a> {
    agents: &'a AgentManager,
    names: Vec<String>,
}

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            if let Err(e) = self.agents.thaw(n) {
                tracing::error!(agent = %n, error = %e.message, "not thawed after a workspace operation");
            }
        }
    }
}

/// Variables that differ between two sorted environments.
pub fn env_diff(a: &[(String, String)], b: &[(String, String)]) -> Vec<EnvChange> {
    let (ma, mb): (HashMap<_, _>, HashMap<_, _>) =
        (a.iter().map(|(k, v)| (k, v)).collect(), b.iter().map(|(k, v)| (k, v)).collect());
    let mut names: Vec<&String> = ma.keys().chain(mb.keys()).copied().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| ma.get(n) != mb.get(n))
        .map(|n| EnvChange {
            name: n.clone(),
            a: ma.get(n).map(|v| (*v).clone()),
            b: mb.get(n).map(|v| (*v).clone()),
        })
        .collect()
}

/// Where the original directory waits while a session takes (or gives back) its place.
fn aside_path(workspace: &Path, session: &str) -> PathBuf {
    let base = workspace.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    workspace.with_file_name(format!(".{base}.rush-{session}"))
}

/// `cp -a --reflink=auto SRC/. DEST`: the contents of SRC into the directory DEST.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), ApiError> {
    cp_a(&src.join("."), dest)
}

/// `cp -a --reflink=auto -- SRC DEST`: coreutils gets every file type, owner, mode, time,
/// xattr and hole right, and clones extents where the filesystem can.
fn cp_a(src: &Path, dest: &Path) -> Result<(), ApiError> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(src)
        .arg(dest)
        .output()
        .map_err(|e| err(ErrorKind::Internal, format!("cp: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kind =
            if stderr.contains("No space left") { ErrorKind::ResourceExhausted } else { ErrorKind::Internal };
        return Err(err(kind, format!("copying {} to {}: {}", src.display(), dest.display(), stderr.trim())));
    }
    Ok(())
}

/// The git store records no `.git` (the user's repository is not its to rewrite): a
/// rollback carries the workspace's present `.git` over into the restored tree, so the
/// user's history is kept as it is rather than lost.
fn keep_git_dir(kind: BackendKind, live: &Path, incoming: &Path) -> Result<(), ApiError> {
    let dot_git = live.join(".git");
    if kind != BackendKind::Git || std::fs::symlink_metadata(&dot_git).is_err() {
        return Ok(());
    }
    cp_a(&dot_git, &incoming.join(".git"))
}

/// Exchanges two paths in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<(), ApiError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| err(ErrorKind::Internal, format!("exchanging {} and {}: {e}", a.display(), b.display())))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

// By hand: nix has no xattr calls, and these are three libc calls on one path.
fn set_mark(tree: &Path, id: &str) -> Result<(), ApiError> {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    // SAFETY: both strings are NUL-terminated and outlive the call; value/len describe `id`.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), id.as_ptr().cast(), id.len(), 0) };
    if rc != 0 {
        return Err(io_err("marking", tree)(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn read_mark(tree: &Path) -> Option<String> {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings; the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn clear_mark(tree: &Path) {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    // SAFETY: NUL-terminated strings that outlive the call.
    unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
}

/// Flushes the filesystem holding `tree`, so a checkpoint holds what writers wrote.
fn syncfs(tree: &Path) {
    if let Ok(f) = std::fs::File::open(tree) {
        let _ = nix::unistd::syncfs(&f);
    }
}

/// Tests make the daemon die at a named point (RUSH_TEST_CRASH_AT=point) to prove that a
/// crash there leaves the old tree or the new one.
fn crash_point(point: &str) {
    if std::env::var("RUSH_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::error!(point, "RUSH_TEST_CRASH_AT: dying here");
        std::process::abort();
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The mount point of the filesystem `path` is on (longest matching mount in mountinfo).
fn mount_point(path: &Path) -> Result<PathBuf, ApiError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    let canon = std::fs::canonicalize(path).map_err(io_err("resolving", path))?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(crate::snapshot::btrfs::unescape(m.as_bytes()))))
        .filter(|m| canon.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .ok_or_else(|| err(ErrorKind::Internal, format!("no mount point found for {}", path.display())))
}

#[cfg(test)]
mod tests {
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

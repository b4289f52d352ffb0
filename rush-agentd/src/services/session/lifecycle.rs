//! Creating a session (its workspace moved into the store, a symlink left in its
//! place) and removing one (the tree put back).

use super::store::store_of;
use super::timetravel::{aside_path, exchange};
use super::*;
use crate::core::Fault;
use crate::services::session::SessionError;

/// `cp -a --reflink=auto SRC/. DEST`: the contents of SRC into the directory DEST.
pub(super) fn copy_tree(src: &Path, dest: &Path) -> Result<(), SessionError> {
    cp_a(&src.join("."), dest)
}

/// `cp -a --reflink=auto -- SRC DEST`: coreutils gets every file type, owner, mode, time,
/// xattr and hole right, and clones extents where the filesystem can.
pub(super) fn cp_a(src: &Path, dest: &Path) -> Result<(), SessionError> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(src)
        .arg(dest)
        .output()
        .map_err(|e| err(Fault::Internal, format!("cp: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kind = if stderr.contains("No space left") { Fault::Exhausted } else { Fault::Internal };
        return Err(err(kind, format!("copying {} to {}: {}", src.display(), dest.display(), stderr.trim())));
    }
    Ok(())
}

/// The git store records no `.git` (the user's repository is not its to rewrite): a
/// rollback carries the workspace's present `.git` over into the restored tree, so the
/// user's history is kept as it is rather than lost.
pub(super) fn keep_git_dir(kind: BackendKind, live: &Path, incoming: &Path) -> Result<(), SessionError> {
    let dot_git = live.join(".git");
    if kind != BackendKind::Git || std::fs::symlink_metadata(&dot_git).is_err() {
        return Ok(());
    }
    cp_a(&dot_git, &incoming.join(".git"))
}

impl Sessions {
    pub async fn create(
        self: &Arc<Self>,
        name: String,
        workspace: PathBuf,
        caller: &Caller,
    ) -> Result<SessionInfo, SessionError> {
        check_name("session", &name)?;
        let _op = self.ops.lock().await;
        if self.exists(&name) {
            return Err(err(Fault::Exists, format!("session {name:?} already exists")));
        }
        let this = Arc::clone(self);
        let info = tokio::task::spawn_blocking(move || this.create_blocking(&name, &workspace))
            .await
            .map_err(|e| err(Fault::Internal, e.to_string()))??;
        self.audit.record(
            None,
            AuditEvent::SessionCreated {
                session: info.name.clone(),
                workspace: info.workspace.clone(),
                backend: info.backend,
                caller_uid: caller.uid,
            },
        );
        Ok(self.with_runtime(info))
    }

    pub(super) fn create_blocking(&self, name: &str, workspace: &Path) -> Result<SessionInfo, SessionError> {
        let bad = |why: String| err(Fault::Invalid, format!("workspace {}: {why}", workspace.display()));
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
                Fault::Exists,
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
            backend: store_of(kind),
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

    pub async fn remove(self: &Arc<Self>, name: String, caller: &Caller) -> Result<PathBuf, SessionError> {
        let _op = self.ops.lock().await;
        let l = self.locate(&SessionRef { name: Some(name.clone()), cwd: None })?;
        let running = self.agents.in_session(&name);
        if !running.is_empty() {
            return Err(err(
                Fault::Invalid,
                format!("session {name:?} has running agents ({}): kill them first", running.join(", ")),
            ));
        }
        let this = Arc::clone(self);
        let workspace = tokio::task::spawn_blocking(move || this.remove_blocking(&l))
            .await
            .map_err(|e| err(Fault::Internal, e.to_string()))??;
        self.audit.record(None, AuditEvent::SessionRemoved { session: name, caller_uid: caller.uid });
        Ok(workspace)
    }

    pub(super) fn remove_blocking(&self, l: &Located) -> Result<PathBuf, SessionError> {
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
    pub(super) fn destroy(&self, l: &Located) {
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
}

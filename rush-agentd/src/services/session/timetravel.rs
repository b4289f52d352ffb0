//! Time travel: checkpoints (agents frozen, a snapshot, shell state and process images),
//! rollbacks by one atomic swap (and their recovery after a crash), timelines, diffs.

use super::lifecycle::keep_git_dir;
use super::*;
use crate::core::Fault;
use crate::services::session::SessionError;
use rush_proto::{RollbackOutcome, TimelineAction};

/// Thaws the agents a workspace operation froze when it goes out of scope.
pub(super) struct Thaw<'a> {
    pub(super) agents: &'a dyn SessionAgents,
    pub(super) names: Vec<String>,
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
pub(super) fn aside_path(workspace: &Path, session: &str) -> PathBuf {
    let base = workspace.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    workspace.with_file_name(format!(".{base}.rush-{session}"))
}

/// Exchanges two paths in one step (`renameat2(RENAME_EXCHANGE)`).
pub(super) fn exchange(a: &Path, b: &Path) -> Result<(), SessionError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|e| err(Fault::Internal, format!("exchanging {} and {}: {e}", a.display(), b.display())))
}

pub(super) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

// By hand: nix has no xattr calls, and these are three libc calls on one path.
pub(super) fn set_mark(tree: &Path, id: &str) -> Result<(), SessionError> {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    // SAFETY: both strings are NUL-terminated and outlive the call; value/len describe `id`.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), id.as_ptr().cast(), id.len(), 0) };
    if rc != 0 {
        return Err(io_err("marking", tree)(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(super) fn read_mark(tree: &Path) -> Option<String> {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings; the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

pub(super) fn clear_mark(tree: &Path) {
    let (path, name) = (cpath(tree), CString::new(SWAP_MARK).expect("no NUL"));
    // SAFETY: NUL-terminated strings that outlive the call.
    unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
}

/// Flushes the filesystem holding `tree`, so a checkpoint holds what writers wrote.
pub(super) fn syncfs(tree: &Path) {
    if let Ok(f) = std::fs::File::open(tree) {
        let _ = nix::unistd::syncfs(&f);
    }
}

/// Tests make the daemon die at a named point (RUSH_TEST_CRASH_AT=point) to prove that a
/// crash there leaves the old tree or the new one.
pub(super) fn crash_point(point: &str) {
    if std::env::var("RUSH_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::error!(point, "RUSH_TEST_CRASH_AT: dying here");
        std::process::abort();
    }
}

impl Sessions {
    /// Freezes the session's agents; the guard thaws them when dropped, whatever happened.
    pub(super) async fn freeze_all(&self, names: &[String]) -> Result<Thaw<'_>, SessionError> {
        let mut thaw = Thaw { agents: self.agents.as_ref(), names: Vec::new() };
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
    ) -> Result<CheckpointInfo, SessionError> {
        check_name("checkpoint", &name)?;
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        self.check_free(&l, &name)?;
        let agents = self.agents.in_session(&l.info.name);
        if with_processes {
            self.agents
                .processes_supported()
                .map_err(|e| err(Fault::Unsupported, format!("--with-processes: {}", e.message)))?;
            if agents.is_empty() {
                return Err(err(
                    Fault::Invalid,
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

    pub(super) async fn take_checkpoint(
        self: &Arc<Self>,
        l: &Located,
        name: &str,
        agents: &[String],
        with_processes: bool,
        shell: Option<ShellState>,
        automatic: bool,
    ) -> Result<CheckpointInfo, SessionError> {
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
            .map_err(|e| err(Fault::Internal, e.to_string()))?
            .map_err(snap_err)?
        };
        if with_processes {
            let images = l.images(name);
            for a in agents {
                let dir = images.join(a);
                let dumped = match std::fs::create_dir_all(&dir) {
                    Ok(()) => self.agents.dump_processes(a, &dir).await,
                    Err(e) => Err(io_err("creating", &dir)(e)),
                };
                if let Err(e) = dumped {
                    drop(thaw);
                    let _ = std::fs::remove_dir_all(&images);
                    let _ = l.backend.remove_checkpoint(l.dir(), name);
                    return Err(err(
                        e.fault,
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
    ) -> Result<RollbackReport, SessionError> {
        let started = Instant::now();
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        let target = self.checkpoint_named(&l, &name)?;
        let shell = self.store.checkpoint_shell(&l.info.name, &name).map_err(store_err)?;
        let agents = self.agents.in_session(&l.info.name);
        let imaged: Vec<String> =
            target.captured.iter().filter_map(|c| c.strip_prefix("processes:")).map(str::to_owned).collect();
        if !imaged.is_empty() {
            self.agents.processes_supported().map_err(|e| {
                err(Fault::Unsupported, format!("checkpoint {name:?} holds processes: {}", e.message))
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
            .map_err(|e| err(Fault::Internal, e.to_string()))??;
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
                        e.fault,
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

    pub(super) fn undo_name(&self, l: &Located) -> Result<String, SessionError> {
        let taken: Vec<String> =
            self.store.checkpoints(&l.info.name).map_err(store_err)?.into_iter().map(|c| c.name).collect();
        Ok((1..).map(|n| format!("undo-{n}")).find(|n| !taken.contains(n)).expect("a free name"))
    }

    /// Builds checkpoint `id` as a scratch tree next to the live one, then exchanges the two
    /// in one rename: the atomic point of a rollback. Journaled, so `recover` can settle a crash.
    pub(super) fn swap_in(&self, l: &Located, id: &str) -> Result<(), SessionError> {
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

    pub(super) fn finish_swap(&self, live: &Path, incoming: &Path, backend: &dyn Backend) {
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
                    let outcome = if swapped { RollbackOutcome::Completed } else { RollbackOutcome::Undone };
                    self.audit.record(
                        None,
                        AuditEvent::RollbackRepaired { session: session.clone(), name: id, outcome },
                    );
                    outcome.as_str()
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
    ) -> Result<TimelineInfo, SessionError> {
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
        .map_err(|e| err(Fault::Internal, e.to_string()))?;
        drop(thaw);
        made.map_err(snap_err)?;
        let t = TimelineInfo { name: name.clone(), from, created_unix_ms: now_unix_ms(), live: false };
        self.store.put_timeline(&l.info.name, &t).map_err(store_err)?;
        self.audit.record(
            None,
            AuditEvent::TimelineChange {
                session: l.info.name.clone(),
                action: TimelineAction::Branch,
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
    ) -> Result<TimelineInfo, SessionError> {
        let _op = self.ops.lock().await;
        let l = self.locate(&sref)?;
        let mut timelines = self.store.timelines(&l.info.name).map_err(store_err)?;
        let Some(t) = timelines.iter_mut().find(|t| t.name == name) else {
            let known: Vec<String> = timelines.iter().map(|t| t.name.clone()).collect();
            return Err(err(
                Fault::NotFound,
                format!("session {:?} has no timeline {name:?} (it has: {})", l.info.name, known.join(", ")),
            ));
        };
        let running = self.agents.in_session(&l.info.name);
        if !running.is_empty() && name != l.info.timeline {
            return Err(err(
                Fault::Invalid,
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
                action: TimelineAction::Switch,
                timeline: name,
                caller_uid: caller.uid,
            },
        );
        Ok(TimelineInfo { live: true, ..switched })
    }

    pub fn timeline(&self, sref: &SessionRef) -> Result<Timeline, SessionError> {
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
    ) -> Result<DiffReport, SessionError> {
        let started = Instant::now();
        let l = self.locate(&sref)?;
        let checkpoints = self.store.checkpoints(&l.info.name).map_err(store_err)?;
        let timelines = self.store.timelines(&l.info.name).map_err(store_err)?;
        let side = |n: &str| -> Result<(bool, PathBuf), SessionError> {
            if checkpoints.iter().any(|c| c.name == n) {
                Ok((true, PathBuf::new()))
            } else if timelines.iter().any(|t| t.name == n) {
                Ok((false, l.tree(n)))
            } else {
                Err(err(
                    Fault::NotFound,
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
        .map_err(|e| err(Fault::Internal, e.to_string()))?
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
    ) -> Result<Vec<String>, SessionError> {
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
                    return Err(err(Fault::Invalid, "prune: give --keep N, --older-than AGE, or both"));
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
                .map_err(|e| err(Fault::Internal, e.to_string()))?
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

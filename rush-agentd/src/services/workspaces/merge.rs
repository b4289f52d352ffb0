//! The merge queue: one merge at a time, each a row in the store rewritten before every
//! step, so a daemon that stops anywhere resumes or ends it cleanly on restart.
//!
//! A merge never touches the target until the end: the branch is merged (or rebased, or
//! squashed) in a scratch worktree detached at the target's commit (`.rush/merges/ID`),
//! the test runs there, confined; only then is the merge `landing`: the target moves in
//! one step, `git update-ref NEW OLD` (a compare-and-swap) or, where the target is checked
//! out in the main tree, `git merge --ff-only` there (the tree was clean). So the target is
//! either where it was or at the tested commit, never half-merged. On restart: a `running`
//! merge starts again; a `landing` one is `merged` if the target is at its commit, landed
//! again if the target is still where it was, and started again if the target moved.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rush_proto::FileGrant;
use rush_proto::Ops;
use rush_proto::workspace::{
    MergeJob, MergeRequest, MergeState, MergeStrategy, WorkspaceAction, WorkspaceInfo,
};

use super::{TestRun, WorkspaceError, Workspaces, git_failed, invalid, store_failed};
use crate::adapters::git::Git;
use crate::core::{Fault, now_unix_ms};

/// A merge whose target moves under it is merged again, this many times in all.
const MAX_ATTEMPTS: u32 = 3;
/// An object store's temporary file this old is no git's any more.
pub(super) const OBJECT_TEMPORARY_AGE: std::time::Duration = std::time::Duration::from_secs(600);
/// The test output kept in the report.
const TAIL_LINES: usize = 20;

impl Workspaces {
    /// `rush agent workspace merge`: checked, queued, and (unless `no_wait`) answered
    /// when final.
    pub async fn merge(self: &Arc<Self>, req: MergeRequest) -> Result<MergeJob, WorkspaceError> {
        let w = self.find(&req.name)?;
        let git = Git::new(&w.repo, w.uid);
        let into = match req.into.clone() {
            Some(i) => i,
            None => git.line(["symbolic-ref", "--quiet", "--short", "HEAD"]).map_err(|_| {
                invalid(format!("the main tree of {} is on no branch: give --into", w.repo.display()))
            })?,
        };
        if git.commit_of(&format!("refs/heads/{into}")).map_err(git_failed)?.is_none() {
            return Err(invalid(format!("no branch {into:?} in {} to merge into", w.repo.display())));
        }
        if into == w.branch {
            return Err(invalid(format!("cannot merge workspace {:?} into its own branch", w.name)));
        }
        if w.path.join(".git").exists() {
            let dirty = super::in_worktree(&git, &w).dirty_paths().map_err(git_failed)?;
            if !dirty.is_empty() {
                return Err(invalid(format!(
                    "workspace {:?} has {} uncommitted change(s) ({}): commit them first; a merge takes commits only",
                    w.name,
                    dirty.len(),
                    sample(&dirty)
                )));
            }
        }
        // The same checks again when it runs; here for an answer before it queues.
        self.preflight(&w, &git, &into)?;
        let job = MergeJob {
            id: 0,
            workspace: w.name.clone(),
            repo: w.repo.clone(),
            branch: w.branch.clone(),
            into,
            strategy: req.strategy,
            test: req.test.clone().filter(|t| !t.trim().is_empty()),
            state: MergeState::Queued,
            target_before: None,
            commit: None,
            branch_tip: None,
            conflicts: Vec::new(),
            test_exit: None,
            test_tail: None,
            notes: Vec::new(),
            queued_unix_ms: now_unix_ms(),
            finished_unix_ms: None,
            attempts: 0,
        };
        let job = self.store.add_merge(job).map_err(store_failed)?;
        self.queued.notify_one();
        if req.no_wait {
            return Ok(job);
        }
        let mut changed = self.changed.subscribe();
        loop {
            let now = self.store.merge(job.id).map_err(store_failed)?.unwrap_or(job.clone());
            if now.state.is_final() {
                return Ok(now);
            }
            if changed.changed().await.is_err() {
                return Ok(now);
            }
        }
    }

    /// The queue and the newest finished merges (of one workspace, or all).
    pub fn merges(&self, workspace: Option<&str>) -> Result<Vec<MergeJob>, WorkspaceError> {
        let mut jobs = self.store.recent_merges(200).map_err(store_failed)?;
        jobs.retain(|j| workspace.is_none_or(|w| j.workspace == w));
        Ok(jobs)
    }

    /// Refusals that need no merge: the main tree dirty where the target is checked out,
    /// changed paths claimed by another agent.
    fn preflight(&self, w: &WorkspaceInfo, git: &Git, into: &str) -> Result<(), WorkspaceError> {
        if let Some(main) = checked_out(git, into) {
            let dirty = git.at(&main).dirty_paths().map_err(git_failed)?;
            if !dirty.is_empty() {
                return Err(invalid(format!(
                    "the main tree {} (on {into}) has {} uncommitted change(s) ({}): commit or stash them before a merge",
                    main.display(),
                    dirty.len(),
                    sample(&dirty)
                )));
            }
        }
        let changed = git
            .run(["diff", "--name-only", "-z", &format!("refs/heads/{into}...refs/heads/{}", w.branch)])
            .map_err(git_failed)?;
        let paths: Vec<PathBuf> =
            changed.split('\0').filter(|p| !p.is_empty()).map(|p| w.repo.join(p)).collect();
        if let Some((path, holder, task)) = self.context.claimed(&paths, &w.name).into_iter().next() {
            return Err(WorkspaceError::new(
                Fault::Forbidden,
                format!(
                    "merging {:?} would change {}, claimed by agent {holder:?} (task {task:?}): wait for its release",
                    w.name,
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn record_merge(&self, job: &MergeJob, action: WorkspaceAction, what: String) {
        self.audit.record(
            None,
            rush_proto::AuditEvent::Workspace {
                action,
                name: job.workspace.clone(),
                branch: job.branch.clone(),
                repo: job.repo.clone(),
                detail: format!("merge {} into {} {what}", job.id, job.into),
            },
        );
    }

    fn save(&self, job: &MergeJob) -> Result<(), WorkspaceError> {
        self.store.put_merge(job).map_err(store_failed)?;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// On start: merges a stopped daemon left `running` start again; `landing` ones are
    /// finished by what the target says.
    fn recover(&self) {
        let Ok(open) = self.store.open_merges() else { return };
        for mut job in open {
            let outcome = match job.state {
                MergeState::Running => {
                    remove_scratch(&Git::new(&job.repo, self.owner(&job)), &job);
                    job.state = MergeState::Queued;
                    job.notes.push("the daemon stopped while it was merged or tested: started again".into());
                    self.save(&job)
                }
                MergeState::Landing => self.recover_landing(&mut job),
                _ => Ok(()),
            };
            if let Err(e) = outcome {
                tracing::error!(merge = job.id, "merge not recovered: {e}");
            }
        }
    }

    fn recover_landing(&self, job: &mut MergeJob) -> Result<(), WorkspaceError> {
        let git = Git::new(&job.repo, self.owner(job));
        let target = git.commit_of(&format!("refs/heads/{}", job.into)).map_err(git_failed)?;
        if target.is_some() && target == job.commit {
            job.notes.push("landed before the daemon stopped".into());
            return self.finish_merged(&git, job);
        }
        remove_scratch(&git, job);
        job.state = MergeState::Queued;
        job.notes.push(if target == job.target_before {
            "the daemon stopped before the target moved: started again".into()
        } else {
            format!("{} moved while the daemon was stopped: merged again", job.into)
        });
        self.save(job)
    }

    fn owner(&self, job: &MergeJob) -> u32 {
        self.find(&job.workspace).map(|w| w.uid).unwrap_or_else(|_| {
            std::fs::metadata(&job.repo).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
        })
    }

    /// Runs queued merges, oldest first, until there are none; then waits.
    async fn run_queue(self: Arc<Self>) {
        loop {
            let next = self.store.open_merges().ok().and_then(|l| l.into_iter().next());
            let Some(job) = next else {
                self.queued.notified().await;
                continue;
            };
            let id = job.id;
            if let Err(e) = self.run(job).await {
                // A store that cannot save: the merge stays where it is for the next start.
                tracing::error!(merge = id, "merge stopped: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }

    async fn run(self: &Arc<Self>, mut job: MergeJob) -> Result<(), WorkspaceError> {
        job.attempts += 1;
        job.state = MergeState::Running;
        job.conflicts.clear();
        self.save(&job)?;
        // Worktrees change under `busy` (create and remove wait); the test runs without it.
        let busy = self.busy.lock().await;
        let this = Arc::clone(self);
        let prepared = tokio::task::spawn_blocking(move || {
            let made = this.prepare(&mut job);
            (job, made)
        })
        .await
        .map_err(|e| WorkspaceError::new(Fault::Internal, e.to_string()))?;
        let (mut job, made) = prepared;
        let Some(scratch) = made? else { return Ok(()) };
        drop(busy);
        let git = Git::new(&job.repo, self.owner(&job));
        if let Some(test) = job.test.clone() {
            let log = scratch.with_extension("log");
            let exit = self.test(&git, &job, &test, &scratch, &log).await;
            let _busy = self.busy.lock().await;
            job.test_tail = Some(tail(&log));
            let _ = std::fs::remove_file(&log);
            match exit {
                Ok(0) => job.test_exit = Some(0),
                Ok(code) => {
                    job.test_exit = Some(code);
                    return self.stop(
                        &git,
                        &mut job,
                        MergeState::TestFailed,
                        format!("`{test}` exited with {code}"),
                    );
                }
                Err(why) => return self.stop(&git, &mut job, MergeState::TestFailed, why),
            }
        }
        let _busy = self.busy.lock().await;
        job.state = MergeState::Landing;
        self.save(&job)?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.land(&mut job))
            .await
            .map_err(|e| WorkspaceError::new(Fault::Internal, e.to_string()))?
    }

    /// Merges the branch in a scratch worktree: its path, or None when the merge ended
    /// here (conflict, refused, nothing to merge).
    fn prepare(&self, job: &mut MergeJob) -> Result<Option<PathBuf>, WorkspaceError> {
        let w = match self.find(&job.workspace) {
            Ok(w) => w,
            Err(e) => return self.stop_plain(job, MergeState::Refused, e.message).map(|()| None),
        };
        let git = Git::new(&w.repo, w.uid);
        if let Err(e) = self.preflight(&w, &git, &job.into) {
            return self.stop_plain(job, MergeState::Refused, e.message).map(|()| None);
        }
        let (Some(target), Some(tip)) = (
            git.commit_of(&format!("refs/heads/{}", job.into)).map_err(git_failed)?,
            git.commit_of(&format!("refs/heads/{}", job.branch)).map_err(git_failed)?,
        ) else {
            return self
                .stop_plain(job, MergeState::Refused, "the target or the branch is gone".into())
                .map(|()| None);
        };
        job.target_before = Some(target.clone());
        job.branch_tip = Some(tip.clone());
        if git.test(["merge-base", "--is-ancestor", &tip, &target]).map_err(git_failed)? {
            job.commit = Some(target);
            job.notes.push(format!("nothing to merge: every commit of {} is on {}", job.branch, job.into));
            return self.finish_merged(&git, job).map(|()| None);
        }
        let swept = super::state::sweep_object_temporaries(&w.common_dir, OBJECT_TEMPORARY_AGE);
        if swept > 0 {
            tracing::info!(merge = job.id, swept, "agents' temporary object files removed");
        }
        let scratch = scratch_path(job);
        remove_scratch(&git, job);
        std::fs::create_dir_all(scratch.parent().unwrap_or(&job.repo))
            .map_err(|e| WorkspaceError::new(Fault::Internal, format!("{}: {e}", scratch.display())))?;
        let _ = std::os::unix::fs::chown(scratch.parent().unwrap_or(&job.repo), Some(git.uid), Some(git.gid));
        git.run([
            "worktree".as_ref(),
            "add".as_ref(),
            "--detach".as_ref(),
            scratch.as_os_str(),
            target.as_ref(),
        ])
        .map_err(git_failed)?;
        let s = git.at(&scratch);
        let ident = identity(&git);
        let with = |args: &[&str]| -> Vec<String> {
            ident.iter().cloned().chain(args.iter().map(|a| a.to_string())).collect()
        };
        let message = format!("Merge workspace {} ({})", job.workspace, job.branch);
        let merged = match job.strategy {
            MergeStrategy::Merge => s.run(with(&["merge", "--no-ff", "--no-edit", "-m", &message, &tip])),
            MergeStrategy::Squash => s.run(with(&["merge", "--squash", &tip])).and_then(|_| {
                let count =
                    git.line(["rev-list", "--count", &format!("{target}..{tip}")]).unwrap_or_default();
                let msg = format!("Workspace {} ({}, {count} commit(s) squashed)", job.workspace, job.branch);
                s.run(with(&["commit", "--no-verify", "--allow-empty", "-m", &msg]))
            }),
            MergeStrategy::Rebase => s.run(with(&["rebase", &target, &tip])),
        };
        if let Err(e) = merged {
            let conflicts = s
                .run(["diff", "--name-only", "-z", "--diff-filter=U"])
                .map(|o| o.split('\0').filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>())
                .unwrap_or_default();
            let _ = s.run(["merge", "--abort"]);
            let _ = s.run(["rebase", "--abort"]);
            if conflicts.is_empty() {
                return self.stop(&git, job, MergeState::Refused, e.to_string()).map(|()| None);
            }
            job.conflicts = conflicts;
            let n = job.conflicts.len();
            return self
                .stop(&git, job, MergeState::Conflict, format!("{n} file(s) conflict with {}", job.into))
                .map(|()| None);
        }
        job.commit = Some(s.line(["rev-parse", "HEAD"]).map_err(git_failed)?);
        self.save(job)?;
        Ok(Some(scratch))
    }

    async fn test(
        &self,
        git: &Git,
        job: &MergeJob,
        test: &str,
        scratch: &Path,
        log: &Path,
    ) -> Result<i32, String> {
        std::fs::write(log, b"").map_err(|e| format!("{}: {e}", log.display()))?;
        let _ = std::os::unix::fs::chown(log, Some(git.uid), Some(git.gid));
        let common =
            git.line(["rev-parse", "--path-format=absolute", "--git-common-dir"]).unwrap_or_default();
        let rw = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0 | Ops::DELETE.0 | Ops::EXEC.0);
        let mut grants = vec![
            FileGrant { path: scratch.to_owned(), ops: rw, ttl_secs: None },
            FileGrant { path: log.to_owned(), ops: Ops(Ops::WRITE.0 | Ops::READ.0), ttl_secs: None },
        ];
        if !common.is_empty() {
            // git in the test reads the shared objects and refs.
            grants.push(FileGrant { path: PathBuf::from(&common), ops: Ops::READ, ttl_secs: None });
            let own = PathBuf::from(&common).join("worktrees").join(scratch.file_name().unwrap_or_default());
            if own.exists() {
                grants.push(FileGrant { path: own, ops: rw, ttl_secs: None });
            }
        }
        let command = format!("exec >>'{}' 2>&1\n{test}", log.display());
        self.context
            .run_test(TestRun {
                name: format!("merge-{}-{}", job.id, job.attempts),
                command: &command,
                dir: scratch,
                grants,
                uid: git.uid,
                timeout: std::time::Duration::from_secs(self.config.test_timeout_secs),
            })
            .await
    }

    /// Moves the target to the merge's commit, in one step that fails if the target moved.
    fn land(&self, job: &mut MergeJob) -> Result<(), WorkspaceError> {
        let git = Git::new(&job.repo, self.owner(job));
        let (Some(commit), Some(before)) = (job.commit.clone(), job.target_before.clone()) else {
            return self.stop(&git, job, MergeState::Refused, "landing without a commit".into());
        };
        let target = format!("refs/heads/{}", job.into);
        let landed = match checked_out(&git, &job.into) {
            Some(main) => {
                let m = git.at(&main);
                let dirty = m.dirty_paths().map_err(git_failed)?;
                if !dirty.is_empty() {
                    return self.stop(
                        &git,
                        job,
                        MergeState::Refused,
                        format!(
                            "the main tree {} changed during the merge ({}): nothing landed",
                            main.display(),
                            sample(&dirty)
                        ),
                    );
                }
                if git.commit_of(&target).map_err(git_failed)?.as_deref() != Some(before.as_str()) {
                    Err(())
                } else {
                    m.run(["merge", "--ff-only", "--no-edit", &commit]).map(|_| ()).map_err(|e| {
                        tracing::warn!(merge = job.id, "fast-forward of the main tree failed: {e}");
                    })
                }
            }
            None => git
                .run([
                    "update-ref",
                    "-m",
                    &format!("rush: merge workspace {}", job.workspace),
                    &target,
                    &commit,
                    &before,
                ])
                .map(|_| ())
                .map_err(|_| ()),
        };
        match landed {
            Ok(()) => self.finish_merged(&git, job),
            Err(()) if job.attempts < MAX_ATTEMPTS => {
                remove_scratch(&git, job);
                job.state = MergeState::Queued;
                job.notes.push(format!("{} moved during the merge: merged again", job.into));
                self.save(job)
            }
            Err(()) => self.stop(
                &git,
                job,
                MergeState::Refused,
                format!("{} kept moving: not merged after {MAX_ATTEMPTS} tries", job.into),
            ),
        }
    }

    fn finish_merged(&self, git: &Git, job: &mut MergeJob) -> Result<(), WorkspaceError> {
        remove_scratch(git, job);
        if let Ok(mut w) = self.find(&job.workspace) {
            w.merged_tip = job.branch_tip.clone();
            w.merged_unix_ms = Some(now_unix_ms());
            self.store.put_workspace(&w).map_err(store_failed)?;
        }
        job.state = MergeState::Merged;
        job.finished_unix_ms = Some(now_unix_ms());
        tracing::info!(merge = job.id, workspace = %job.workspace, into = %job.into, "merged");
        self.save(job)?;
        let commit = job.commit.clone().unwrap_or_default();
        self.record_merge(job, WorkspaceAction::Merged, format!("as {commit} ({})", job.strategy));
        Ok(())
    }

    /// Ends the merge with nothing landed: the scratch worktree goes, the workspace and
    /// its branch stay as they were.
    fn stop(
        &self,
        git: &Git,
        job: &mut MergeJob,
        state: MergeState,
        why: String,
    ) -> Result<(), WorkspaceError> {
        remove_scratch(git, job);
        self.stop_plain(job, state, why)
    }

    fn stop_plain(&self, job: &mut MergeJob, state: MergeState, why: String) -> Result<(), WorkspaceError> {
        job.state = state;
        job.notes.push(why);
        job.finished_unix_ms = Some(now_unix_ms());
        tracing::info!(merge = job.id, workspace = %job.workspace, state = %state, "merge stopped");
        self.save(job)?;
        let why = job.notes.last().cloned().unwrap_or_default();
        self.record_merge(job, WorkspaceAction::MergeStopped, format!("{state}: {why}"));
        Ok(())
    }
}

/// Starts the queue: first what a stopped daemon left, then each merge as it comes.
pub fn spawn_queue(w: Arc<Workspaces>) {
    w.recover();
    tokio::spawn(w.run_queue());
}

fn scratch_path(job: &MergeJob) -> PathBuf {
    job.repo.join(".rush/merges").join(job.id.to_string())
}

fn remove_scratch(git: &Git, job: &MergeJob) {
    let scratch = scratch_path(job);
    if scratch.exists() {
        let _ = git.run(["worktree".as_ref(), "remove".as_ref(), "--force".as_ref(), scratch.as_os_str()]);
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let _ = git.run(["worktree", "prune"]);
}

/// The main tree, if `branch` is checked out there. Only the main tree counts: the other
/// worktrees' HEADs are files their agents can write.
fn checked_out(git: &Git, branch: &str) -> Option<PathBuf> {
    let head = git.line(["symbolic-ref", "--quiet", "HEAD"]).ok()?;
    (head == format!("refs/heads/{branch}")).then(|| git.dir.clone())
}

/// `-c user.name=... -c user.email=...` when the owner has no identity configured: a
/// merge commit needs one, and the queue runs with nobody to ask.
fn identity(git: &Git) -> Vec<String> {
    let mut args = Vec::new();
    if git.line(["config", "user.name"]).map(|n| n.is_empty()).unwrap_or(true) {
        args.extend(["-c".into(), "user.name=Rush merge queue".into()]);
    }
    if git.line(["config", "user.email"]).map(|n| n.is_empty()).unwrap_or(true) {
        args.extend(["-c".into(), "user.email=rush@localhost".into()]);
    }
    args
}

/// The last lines of a test's output.
fn tail(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// A few of `paths`, for a message.
fn sample(paths: &[String]) -> String {
    let mut s = paths.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > 3 {
        s.push_str(", ...");
    }
    s
}

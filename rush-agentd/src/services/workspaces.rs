//! Agent workspaces: a git worktree per agent (`REPO/.rush/workspaces/NAME`, branch
//! `rush/NAME`), the repository's untracked state copied in and its ignored build
//! directories cloned copy-on-write, and a merge queue (`merge.rs`) that lands branches
//! one at a time and never deletes a branch whose commits are not merged.
//!
//! Git runs as the repository's owner (`adapters::git`): what it makes is theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rush_proto::FileGrant;
use rush_proto::Ops;
use rush_proto::workspace::{RemovedWorkspace, WorkspaceAction, WorkspaceInfo, WorkspaceStatus};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::adapters::git::{Git, GitError, parse_worktrees};
use crate::adapters::store::{Store, StoreError};
use crate::core::{Caller, Fault, error_chain, now_unix_ms};
use crate::services::audit::AuditLog;

mod merge;
mod state;

pub use merge::spawn_queue;

crate::service_error!(
    /// A workspace request's failure: its fault and one line naming the input.
    WorkspaceError
);

fn invalid(message: impl Into<String>) -> WorkspaceError {
    WorkspaceError::new(Fault::Invalid, message)
}

fn git_failed(e: GitError) -> WorkspaceError {
    WorkspaceError::new(Fault::Invalid, e.to_string())
}

fn store_failed(e: StoreError) -> WorkspaceError {
    let fault = if e.is_full() { Fault::Exhausted } else { Fault::Internal };
    WorkspaceError::new(fault, format!("workspace state not saved: {}", error_chain(&e)))
}

/// `[workspaces]` in config.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspacesConfig {
    /// A workspace's branch is this followed by its name.
    pub branch_prefix: String,
    /// Ignored directories with these names (at any depth) are build state, cloned into
    /// a new workspace.
    pub state_dirs: Vec<String>,
    /// How long a merge's test command may run.
    pub test_timeout_secs: u64,
}

impl Default for WorkspacesConfig {
    fn default() -> Self {
        WorkspacesConfig {
            branch_prefix: "rush/".into(),
            state_dirs: [
                "target",
                "node_modules",
                ".venv",
                "venv",
                "build",
                "dist",
                ".gradle",
                ".mypy_cache",
                ".pytest_cache",
                ".tox",
                "vendor",
            ]
            .map(String::from)
            .to_vec(),
            test_timeout_secs: 600,
        }
    }
}

/// What workspaces need of the agents and coordination services (handles.rs).
pub trait WorkspaceContext: Send + Sync {
    /// The state of the agent named `name`, if there is one.
    fn agent_state(&self, name: &str) -> Option<rush_proto::AgentState>;
    /// Live claims held by agents other than `except` whose paths cover one of `paths`:
    /// `(path, holder, task)`.
    fn claimed(&self, paths: &[PathBuf], except: &str) -> Vec<(PathBuf, String, String)>;
    /// Runs `command` as agent `name`, as `uid`, confined to `grants` with no network;
    /// stdout and stderr to `log`. Its exit code, or why it has none.
    fn run_test<'a>(&'a self, test: TestRun<'a>) -> BoxFuture<'a, Result<i32, String>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A merge's test, as the queue asks it run.
pub struct TestRun<'a> {
    pub name: String,
    pub command: &'a str,
    pub dir: &'a Path,
    pub grants: Vec<FileGrant>,
    pub uid: u32,
    pub timeout: std::time::Duration,
}

pub struct WorkspacesSetup {
    pub store: Arc<Store>,
    pub audit: Arc<AuditLog>,
    pub context: Arc<dyn WorkspaceContext>,
    pub config: WorkspacesConfig,
}

pub struct Workspaces {
    store: Arc<Store>,
    audit: Arc<AuditLog>,
    context: Arc<dyn WorkspaceContext>,
    config: WorkspacesConfig,
    /// Wakes the queue when a merge is added.
    queued: Notify,
    /// Bumped whenever a merge changes: waiters re-read it.
    changed: watch::Sender<u64>,
    /// Held by create, remove and gc, and by the queue per merge: one change of a
    /// repository's worktrees at a time.
    busy: tokio::sync::Mutex<()>,
}

/// Where a request's repository is.
struct Repo {
    /// The main worktree.
    root: PathBuf,
    /// `.git` of the main worktree (shared by every worktree).
    common: PathBuf,
    git: Git,
}

impl Workspaces {
    pub fn new(setup: WorkspacesSetup) -> Arc<Workspaces> {
        Arc::new(Workspaces {
            store: setup.store,
            audit: setup.audit,
            context: setup.context,
            config: setup.config,
            queued: Notify::new(),
            changed: watch::channel(0).0,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The repository `dir` is in, run as its owner: `caller` must be root or that owner.
    fn repo(&self, dir: &Path, caller: &Caller) -> Result<Repo, WorkspaceError> {
        let meta =
            std::fs::metadata(dir).map_err(|e| invalid(format!("repository {}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(invalid(format!("repository {}: not a directory", dir.display())));
        }
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        let git = Git::new(dir, owner);
        let common = git
            .line(["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map_err(|_| invalid(format!("{} is not in a git repository", dir.display())))?;
        let list = git.run(["worktree", "list", "--porcelain"]).map_err(git_failed)?;
        let root = parse_worktrees(&list)
            .into_iter()
            .next()
            .map(|w| w.path)
            .ok_or_else(|| invalid(format!("{}: git lists no worktree", dir.display())))?;
        if git.line(["rev-parse", "--is-bare-repository"]).map_err(git_failed)? == "true"
            || !root.join(".git").exists()
        {
            return Err(invalid(format!(
                "{}: a bare repository has no main tree to work beside",
                dir.display()
            )));
        }
        let owner =
            std::fs::metadata(&root).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(owner);
        if caller.uid != 0 && caller.uid != owner {
            return Err(WorkspaceError::new(
                Fault::Forbidden,
                format!(
                    "{} belongs to uid {owner}; uid {} may not make workspaces in it",
                    root.display(),
                    caller.uid
                ),
            ));
        }
        Ok(Repo { git: Git::new(&root, owner), root, common: PathBuf::from(common) })
    }

    fn record(&self, action: WorkspaceAction, w: &WorkspaceInfo, detail: String) {
        self.audit.record(
            None,
            rush_proto::AuditEvent::Workspace {
                action,
                name: w.name.clone(),
                branch: w.branch.clone(),
                repo: w.repo.clone(),
                detail,
            },
        );
    }

    fn find(&self, name: &str) -> Result<WorkspaceInfo, WorkspaceError> {
        self.store
            .workspaces()
            .map_err(store_failed)?
            .into_iter()
            .find(|w| w.name == name)
            .ok_or_else(|| WorkspaceError::new(Fault::NotFound, format!("no workspace {name:?}")))
    }

    /// `rush agent workspace create`.
    pub async fn create(
        self: &Arc<Self>,
        name: String,
        dir: PathBuf,
        from: Option<String>,
        branch: Option<String>,
        no_state: bool,
        caller: Caller,
    ) -> Result<(WorkspaceInfo, Vec<String>), WorkspaceError> {
        check_name(&name)?;
        let _busy = self.busy.lock().await;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.create_blocking(name, &dir, from, branch, no_state, &caller))
            .await
            .map_err(|e| WorkspaceError::new(Fault::Internal, e.to_string()))?
    }

    fn create_blocking(
        &self,
        name: String,
        dir: &Path,
        from: Option<String>,
        branch: Option<String>,
        no_state: bool,
        caller: &Caller,
    ) -> Result<(WorkspaceInfo, Vec<String>), WorkspaceError> {
        if self.store.workspaces().map_err(store_failed)?.iter().any(|w| w.name == name) {
            return Err(WorkspaceError::new(Fault::Exists, format!("workspace {name:?} already exists")));
        }
        let repo = self.repo(dir, caller)?;
        let base = from.unwrap_or_else(|| "HEAD".into());
        let base_commit =
            repo.git.commit_of(&base).map_err(git_failed)?.ok_or_else(|| {
                invalid(format!("bad ref {base:?}: not a commit in {}", repo.root.display()))
            })?;
        let branch = branch.unwrap_or_else(|| format!("{}{name}", self.config.branch_prefix));
        if !repo.git.test(["check-ref-format", "--branch", &branch]).map_err(git_failed)? {
            return Err(invalid(format!("bad branch name {branch:?}")));
        }
        if repo.git.commit_of(&format!("refs/heads/{branch}")).map_err(git_failed)?.is_some() {
            return Err(WorkspaceError::new(
                Fault::Exists,
                format!(
                    "branch {branch:?} already exists in {} (an earlier workspace's? remove it, or give --branch)",
                    repo.root.display()
                ),
            ));
        }
        let path = repo.root.join(".rush/workspaces").join(&name);
        if path.exists() {
            return Err(WorkspaceError::new(
                Fault::Exists,
                format!("{} already exists (not a workspace Rush knows): move it away first", path.display()),
            ));
        }
        exclude_rush_dir(&repo)?;
        let started = Instant::now();
        mkdir_as(&repo.git, &repo.root.join(".rush/workspaces"))?;
        repo.git
            .run([
                "worktree".as_ref(),
                "add".as_ref(),
                "-b".as_ref(),
                branch.as_ref(),
                path.as_os_str(),
                base_commit.as_ref(),
            ])
            .map_err(git_failed)?;
        let worktree_ms = started.elapsed().as_millis() as u64;
        // Read now, while only git has written it: later the agent can.
        let git_dir = repo
            .git
            .at(&path)
            .line(["rev-parse", "--path-format=absolute", "--git-dir"])
            .map(PathBuf::from)
            .map_err(git_failed)?;
        let mut warnings = Vec::new();
        let mut copy = if no_state {
            rush_proto::workspace::StateCopy::default()
        } else {
            let started = Instant::now();
            let mut copy =
                state::clone_state(&repo.git, &repo.root, &path, &self.config.state_dirs, &mut warnings);
            copy.state_ms = started.elapsed().as_millis() as u64;
            copy
        };
        copy.worktree_ms = worktree_ms;
        if copy.method.is_none() {
            copy.method = Some(rush_proto::workspace::CloneMethod::None);
        }
        let info = WorkspaceInfo {
            name: name.clone(),
            repo: repo.root.clone(),
            path: path.clone(),
            branch: branch.clone(),
            grants: grants(&repo, &path, &git_dir, &branch),
            git_dir,
            common_dir: repo.common.clone(),
            base,
            base_commit,
            uid: repo.git.uid,
            created_unix_ms: now_unix_ms(),
            state: copy,
            merged_tip: None,
            merged_unix_ms: None,
            status: None,
        };
        if let Err(e) = self.store.put_workspace(&info) {
            // Not stored, not made: the worktree and its branch go again.
            let _ =
                repo.git.run(["worktree".as_ref(), "remove".as_ref(), "--force".as_ref(), path.as_os_str()]);
            let _ = repo.git.run(["branch", "-D", &branch]);
            return Err(store_failed(e));
        }
        tracing::info!(workspace = %name, path = %path.display(), "workspace created");
        self.record(WorkspaceAction::Created, &info, format!("from {} ({})", info.base, info.base_commit));
        Ok((info, warnings))
    }

    /// `rush agent workspace list`: each with its state now.
    pub async fn list(self: &Arc<Self>, repo: Option<PathBuf>) -> Result<Vec<WorkspaceInfo>, WorkspaceError> {
        self.list_measured(repo, true).await
    }

    /// The workspaces with their state; their size on disk (a walk of every tree) only
    /// `with_size`.
    async fn list_measured(
        self: &Arc<Self>,
        repo: Option<PathBuf>,
        with_size: bool,
    ) -> Result<Vec<WorkspaceInfo>, WorkspaceError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let repo = repo.map(|r| std::fs::canonicalize(&r).unwrap_or(r));
            let mut list = this.store.workspaces().map_err(store_failed)?;
            list.retain(|w| repo.as_ref().is_none_or(|r| w.repo.starts_with(r) || r.starts_with(&w.repo)));
            for w in &mut list {
                w.status = Some(this.status(w, with_size));
            }
            Ok(list)
        })
        .await
        .map_err(|e| WorkspaceError::new(Fault::Internal, e.to_string()))?
    }

    fn status(&self, w: &WorkspaceInfo, with_size: bool) -> WorkspaceStatus {
        let git = Git::new(&w.repo, w.uid);
        let mut s = WorkspaceStatus {
            agent: self.context.agent_state(&w.name),
            missing: !w.path.join(".git").exists(),
            ..Default::default()
        };
        let tip = git.commit_of(&format!("refs/heads/{}", w.branch)).ok().flatten();
        if let Some(tip) = &tip {
            if let Ok(counts) = git.line(["rev-list", "--left-right", "--count", &format!("HEAD...{tip}")]) {
                let mut n = counts.split_whitespace().map(|n| n.parse::<u32>().ok());
                s.behind = n.next().flatten();
                s.ahead = n.next().flatten();
            }
            s.merged = self.is_merged(&git, w, tip);
        }
        if !s.missing {
            s.dirty = in_worktree(&git, w).dirty_paths().map(|p| p.len() as u32).unwrap_or(0);
            if with_size {
                s.size_bytes = state::disk_usage(&w.path);
            }
        }
        s
    }

    /// Every commit of the branch is on another branch, or it was merged (squash,
    /// rebase) and has not moved since.
    fn is_merged(&self, git: &Git, w: &WorkspaceInfo, tip: &str) -> bool {
        w.merged_tip.as_deref() == Some(tip) || unmerged_commits(git, &w.branch, tip) == Some(0)
    }

    /// `rush agent workspace remove`.
    pub async fn remove(
        self: &Arc<Self>,
        name: String,
        force: bool,
        caller: Caller,
    ) -> Result<RemovedWorkspace, WorkspaceError> {
        let _busy = self.busy.lock().await;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.remove_blocking(&name, force, &caller))
            .await
            .map_err(|e| WorkspaceError::new(Fault::Internal, e.to_string()))?
    }

    fn remove_blocking(
        &self,
        name: &str,
        force: bool,
        caller: &Caller,
    ) -> Result<RemovedWorkspace, WorkspaceError> {
        let w = self.find(name)?;
        if caller.uid != 0 && caller.uid != w.uid {
            return Err(WorkspaceError::new(
                Fault::Forbidden,
                format!("workspace {name:?} belongs to uid {}", w.uid),
            ));
        }
        if self.context.agent_state(name) == Some(rush_proto::AgentState::Running) {
            return Err(invalid(format!("agent {name:?} is running in workspace {name:?}: stop it first")));
        }
        if self.store.open_merges().map_err(store_failed)?.iter().any(|m| m.workspace == name) {
            return Err(invalid(format!(
                "workspace {name:?} has a merge in the queue (rush agent workspace queue)"
            )));
        }
        let git = Git::new(&w.repo, w.uid);
        let tip = git.commit_of(&format!("refs/heads/{}", w.branch)).map_err(git_failed)?;
        let unmerged = match &tip {
            Some(tip) if w.merged_tip.as_deref() != Some(tip.as_str()) => {
                unmerged_commits(&git, &w.branch, tip).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let present = w.path.join(".git").exists();
        let dirty = if present { in_worktree(&git, &w).dirty_paths().map_err(git_failed)?.len() } else { 0 };
        if !force && unmerged > 0 {
            return Err(invalid(format!(
                "workspace {name:?}: branch {} has {} not merged anywhere; merge it first (rush agent workspace merge {name}), or --force to remove the worktree and keep the branch",
                w.branch,
                if unmerged == u32::MAX { "commits".to_owned() } else { format!("{unmerged} commit(s)") },
            )));
        }
        if !force && dirty > 0 {
            return Err(invalid(format!(
                "workspace {name:?} has {dirty} uncommitted change(s) in {}: commit them, or --force to discard them",
                w.path.display()
            )));
        }
        if present {
            git.run(["worktree".as_ref(), "remove".as_ref(), "--force".as_ref(), w.path.as_os_str()])
                .map_err(git_failed)?;
        } else {
            git.run(["worktree", "prune"]).map_err(git_failed)?;
        }
        let branch_deleted = tip.is_some() && unmerged == 0 && git.run(["branch", "-D", &w.branch]).is_ok();
        state::sweep_object_temporaries(&w.common_dir, merge::OBJECT_TEMPORARY_AGE);
        self.store.delete_workspace(name).map_err(store_failed)?;
        let fate = if branch_deleted {
            "branch deleted (merged)".to_owned()
        } else {
            format!("branch kept ({} unmerged commit(s))", if unmerged == u32::MAX { 0 } else { unmerged })
        };
        self.record(WorkspaceAction::Removed, &w, fate);
        Ok(RemovedWorkspace {
            name: name.to_owned(),
            path: w.path,
            branch: w.branch,
            branch_deleted,
            unmerged_commits: if unmerged == u32::MAX { 0 } else { unmerged },
        })
    }

    /// `rush agent workspace gc`: merged workspaces older than `older_than_secs`.
    pub async fn collect(
        self: &Arc<Self>,
        older_than_secs: u64,
        dry_run: bool,
        caller: Caller,
    ) -> Result<Vec<RemovedWorkspace>, WorkspaceError> {
        let cutoff = now_unix_ms().saturating_sub(older_than_secs.saturating_mul(1000));
        let mut removed = Vec::new();
        // gc needs no sizes: no walk of every tree.
        for w in self.list_measured(None, false).await? {
            let s = w.status.clone().unwrap_or_default();
            let since = w.merged_unix_ms.unwrap_or(w.created_unix_ms);
            if !s.merged || since > cutoff || s.dirty > 0 || s.agent == Some(rush_proto::AgentState::Running)
            {
                continue;
            }
            if caller.uid != 0 && caller.uid != w.uid {
                continue;
            }
            if dry_run {
                removed.push(RemovedWorkspace {
                    name: w.name,
                    path: w.path,
                    branch: w.branch,
                    branch_deleted: false,
                    unmerged_commits: 0,
                });
            } else {
                removed.push(self.remove(w.name, false, caller.clone()).await?);
            }
        }
        Ok(removed)
    }
}

/// Git in workspace `w`'s worktree, pinned to the directories recorded when it was made.
fn in_worktree(git: &Git, w: &WorkspaceInfo) -> Git {
    git.pinned_worktree(&w.git_dir, &w.common_dir, &w.path)
}

/// A workspace name: a directory name and part of a branch name.
fn check_name(name: &str) -> Result<(), WorkspaceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && !name.ends_with(".lock")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "bad workspace name {name:?}: 1-64 of A-Z a-z 0-9 - _ . (not starting with . or -)"
        )))
    }
}

/// Commits on `tip` not on any other branch (None: git could not say).
fn unmerged_commits(git: &Git, branch: &str, tip: &str) -> Option<u32> {
    git.line(["rev-list", "--count", tip, "--not", &format!("--exclude={branch}"), "--branches"])
        .ok()
        .and_then(|n| n.parse().ok())
}

/// `.rush/` in the repository's local excludes (`info/exclude`, never committed), so the
/// workspaces inside the main tree do not make it dirty.
fn exclude_rush_dir(repo: &Repo) -> Result<(), WorkspaceError> {
    let exclude = repo.common.join("info/exclude");
    let text = std::fs::read_to_string(&exclude).unwrap_or_default();
    if text.lines().any(|l| l.trim() == "/.rush/") {
        return Ok(());
    }
    mkdir_as(&repo.git, &repo.common.join("info"))?;
    let mut add = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        add.push('\n');
    }
    add.push_str("# Rush's agent workspaces and merges\n/.rush/\n");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&exclude)?;
        f.write_all(add.as_bytes())?;
        std::os::unix::fs::chown(&exclude, Some(repo.git.uid), Some(repo.git.gid))
    };
    write().map_err(|e| WorkspaceError::new(Fault::Internal, format!("{}: {e}", exclude.display())))
}

/// `mkdir -p` as the repository's owner.
fn mkdir_as(git: &Git, dir: &Path) -> Result<(), WorkspaceError> {
    let out = git
        .command("mkdir")
        .arg("-p")
        .arg(dir)
        .output()
        .map_err(|e| WorkspaceError::new(Fault::Internal, format!("mkdir {}: {e}", dir.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(WorkspaceError::new(
            Fault::Internal,
            format!("mkdir {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

/// The tokens an agent working in the workspace gets: its worktree read-write, the main
/// tree read-only, of the shared `.git` what a commit on its own branch writes, and the
/// owner's git config read-only.
fn grants(repo: &Repo, path: &Path, git_dir: &Path, branch: &str) -> Vec<FileGrant> {
    let rw = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0 | Ops::DELETE.0 | Ops::EXEC.0);
    let read = Ops(Ops::READ.0 | Ops::EXEC.0);
    let add = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0);
    let branch_dir = Path::new(branch).parent().filter(|p| !p.as_os_str().is_empty());
    let refs = repo.common.join("refs/heads").join(branch_dir.unwrap_or(Path::new("")));
    let logs = repo.common.join("logs/refs/heads").join(branch_dir.unwrap_or(Path::new("")));
    let mut list = vec![
        FileGrant { path: repo.root.clone(), ops: read, ttl_secs: None },
        FileGrant { path: path.to_owned(), ops: rw, ttl_secs: None },
        FileGrant { path: git_dir.to_owned(), ops: rw, ttl_secs: None },
        // New objects only: no delete, so the shared store cannot be emptied (git's
        // temporaries stay behind; merges and removals sweep them).
        FileGrant { path: repo.common.join("objects"), ops: add, ttl_secs: None },
        FileGrant { path: refs, ops: rw, ttl_secs: None },
    ];
    if logs.exists() {
        list.push(FileGrant { path: logs, ops: rw, ttl_secs: None });
    }
    // The owner's git config (identity, aliases): git stops at a config file it cannot read.
    if let Some(home) = repo.git.home() {
        for config in [home.join(".gitconfig"), home.join(".config/git")] {
            if config.exists() {
                list.push(FileGrant { path: config, ops: Ops::READ, ttl_secs: None });
            }
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "fix-1", "A_b.c"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a..b", "x.lock", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}

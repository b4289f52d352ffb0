//! Agent workspaces: a git worktree per agent on its own branch, its untracked state
//! cloned in, and a merge queue that lands branches one at a time and never loses work.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

wire_enum! {
    /// How a merge lands a workspace's branch on its target (`MergeRequest.strategy`).
    #[derive(Default)]
    pub enum MergeStrategy as "MergeRequest.strategy" {
        /// A merge commit (`git merge --no-ff`): the branch's commits stay as they are.
        #[default]
        Merge = "merge",
        /// The branch's commits replayed on the target (`git rebase`); the branch itself
        /// is left as it was.
        Rebase = "rebase",
        /// One commit with the branch's changes (`git merge --squash`).
        Squash = "squash",
    }
}

wire_enum! {
    /// Where a merge is (`MergeJob.state`). The first three are in the queue; the rest are
    /// final.
    pub enum MergeState as "MergeJob.state" {
        /// Waiting for the merges ahead of it in its repository.
        Queued = "queued",
        /// Being merged and tested in a scratch worktree; the target is untouched.
        Running = "running",
        /// Merged and tested; the target's ref is being moved (one compare-and-swap).
        Landing = "landing",
        /// On the target.
        Merged = "merged",
        /// The branch conflicts with the target: nothing changed.
        Conflict = "conflict",
        /// The test command failed: nothing changed.
        TestFailed = "test_failed",
        /// Refused when it came to run (the main tree dirty, a claim): nothing changed.
        Refused = "refused",
    }
}

impl MergeState {
    pub fn is_final(self) -> bool {
        !matches!(self, MergeState::Queued | MergeState::Running | MergeState::Landing)
    }
}

wire_enum! {
    /// What happened to a workspace (the `workspace` audit record's `action`).
    pub enum WorkspaceAction as "workspace.action" {
        Created = "created",
        /// A merge landed on its target.
        Merged = "merged",
        /// A merge ended without landing (conflict, failed test, refused).
        MergeStopped = "merge_stopped",
        Removed = "removed",
    }
}

wire_enum! {
    /// How a workspace's ignored build state got there (`StateCopy.method`).
    pub enum CloneMethod as "StateCopy.method" {
        /// Copy-on-write: the copy shares the source's extents (reflink).
        Reflink = "reflink",
        /// A plain copy: the filesystem cannot share extents.
        Copy = "copy",
        /// Left out (`--no-state`, or nothing to clone).
        None = "none",
    }
}

/// What `create` put in a workspace beside the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateCopy {
    /// Untracked files named by `.rushinclude` (relative to the repository), copied.
    #[serde(default)]
    pub included: Vec<PathBuf>,
    /// Ignored build directories (relative), cloned.
    #[serde(default)]
    pub cloned: Vec<PathBuf>,
    #[serde(default)]
    pub method: Option<CloneMethod>,
    /// Bytes of what was copied or cloned (apparent size: a reflink uses no new blocks).
    #[serde(default)]
    pub bytes: u64,
    /// Milliseconds the worktree (`git worktree add`) and the state took.
    #[serde(default)]
    pub worktree_ms: u64,
    #[serde(default)]
    pub state_ms: u64,
}

/// A workspace, as stored and as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub name: String,
    /// The main worktree of the repository.
    pub repo: PathBuf,
    /// The worktree: `REPO/.rush/workspaces/NAME`.
    pub path: PathBuf,
    pub branch: String,
    /// Its git directory (`.git/worktrees/NAME`) and the repository's common one, as
    /// they were when it was made: git runs there with these, never with what the
    /// worktree's own `.git` file says now.
    #[serde(default)]
    pub git_dir: PathBuf,
    #[serde(default)]
    pub common_dir: PathBuf,
    /// What it was created from, as given (`HEAD` by default), and that commit.
    pub base: String,
    pub base_commit: String,
    /// Whose it is: git runs as this user for it.
    pub uid: u32,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub state: StateCopy,
    /// The tokens an agent spawned in it gets (`rush agent spawn --workspace`): exactly
    /// these paths.
    #[serde(default)]
    pub grants: Vec<crate::FileGrant>,
    /// The branch's tip when it was last merged (squash and rebase leave no ancestry for
    /// git to see, so this is how `remove` knows the work landed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_tip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_unix_ms: Option<u64>,
    /// Filled in by `list` (not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkspaceStatus>,
}

/// A workspace's state now, as `list` measures it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkspaceStatus {
    /// Commits on the branch not on its base's branch (`HEAD` of the main tree), and
    /// the other way; None when git could not say (the branch is gone).
    pub ahead: Option<u32>,
    pub behind: Option<u32>,
    /// Files changed and not committed in the worktree.
    pub dirty: u32,
    pub size_bytes: u64,
    /// Every commit of the branch is on the target (or was merged by squash or rebase
    /// and has not moved since).
    pub merged: bool,
    /// The agent of the same name, if there is one: its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::AgentState>,
    /// The worktree directory is gone (removed by hand): `remove` or `gc` clears it.
    #[serde(default)]
    pub missing: bool,
}

/// `rush agent workspace merge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequest {
    pub name: String,
    /// The target branch (default: the branch checked out in the main tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    #[serde(default)]
    pub strategy: MergeStrategy,
    /// Run confined in the merged tree; the merge lands only if it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    /// Answer once queued instead of when final.
    #[serde(default)]
    pub no_wait: bool,
}

/// A merge in the queue or done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeJob {
    pub id: u64,
    pub workspace: String,
    pub repo: PathBuf,
    pub branch: String,
    pub into: String,
    pub strategy: MergeStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    pub state: MergeState,
    /// The target's commit the merge was made on, and the commit it landed as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch's tip that was merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_tip: Option<String>,
    /// Conflicting files (relative to the repository).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_exit: Option<i32>,
    /// The last lines the test printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_tail: Option<String>,
    /// Why it stopped, or what happened on the way (a resume after a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub queued_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// Times it was started (more than one: the daemon stopped during an earlier try).
    #[serde(default)]
    pub attempts: u32,
}

/// What `remove` or `gc` did to one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedWorkspace {
    pub name: String,
    pub path: PathBuf,
    pub branch: String,
    /// The branch was deleted (it was merged); else it is kept.
    pub branch_deleted: bool,
    /// Commits on the branch not merged anywhere, kept on the branch.
    #[serde(default)]
    pub unmerged_commits: u32,
}

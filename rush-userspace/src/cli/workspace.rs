//! `rush agent workspace`: git worktrees for agents and the merge queue.

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub(super) const WORKSPACE_LONG_ABOUT: &str = "\
A workspace is a git worktree for one agent: REPO/.rush/workspaces/NAME on branch rush/NAME \
(`[workspaces] branch_prefix`), made by git itself and owned by the repository's owner. \
Untracked files named in REPO/.rushinclude (gitignore syntax; none by default) are copied in; \
ignored build directories (target/, node_modules/, .venv/, ... at any depth: `[workspaces] \
state_dirs`) are cloned copy-on-write (reflink) where the filesystem can, and copied with a \
warning where it cannot (ext4); --no-state leaves both out. REPO/.rush/ is added to the \
repository's .git/info/exclude, so the main tree stays clean.

`rush agent spawn NAME --workspace -- CMD` makes (or reuses) workspace NAME and runs the \
agent in it with exactly these tokens: the worktree read-write (and exec); the main tree \
read-only; of the shared .git: worktrees/NAME, objects/ and refs/heads/rush/ (the branch's \
directory) read-write, so it can commit on its branch. It cannot write the main checkout.

Merges go through a queue, one at a time, stored: the branch is merged (merge, rebase or \
squash) in a scratch worktree at the target's commit, --test runs there confined (no \
network, that tree only), and only then does the target move, in one compare-and-swap (or a \
fast-forward of the main tree where the target is checked out, which must be clean). A \
conflict or a failing test stops with a report and changes nothing. A daemon stopped \
mid-merge resumes it on restart; the target is never half-merged. Changes to paths another \
agent holds a claim on are refused, naming the holder.

A branch with commits not merged anywhere is never deleted: `remove` refuses (--force \
removes the worktree and keeps the branch); `gc` removes merged workspaces only.";

pub(super) const WORKSPACE_EXAMPLES: &str = "\
Examples:
  $ rush agent workspace create fix-login --from main
  $ rush agent spawn fix-login --workspace -- claude
  $ rush agent workspace list
  $ rush agent workspace merge fix-login --strategy squash --test 'cargo test --offline'
  $ rush agent workspace queue
  $ rush agent workspace remove fix-login
  $ rush agent workspace gc --older-than 7d";

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Make a git worktree for an agent, with its untracked state cloned in
    Create(CreateArgs),
    /// List workspaces: branch, base, ahead/behind, dirty, size, agent state
    List {
        /// Only the workspaces of the repository holding DIR.
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
    },
    /// Merge a workspace's branch through the queue (tested first with --test)
    Merge(MergeArgs),
    /// The merge queue and the latest merges
    Queue {
        /// Only this workspace's merges.
        #[arg(value_name = "NAME")]
        workspace: Option<String>,
    },
    /// Remove a workspace's worktree (refused while its branch has unmerged commits)
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
        /// Remove it anyway, discarding uncommitted changes; the branch is kept.
        #[arg(long)]
        force: bool,
    },
    /// Remove merged workspaces older than a duration
    Gc {
        /// By the time of their merge (e.g. 7d, 12h, 0s).
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        older_than: String,
        /// List what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// 1-64 of A-Z a-z 0-9 - _ . ; also the agent's name with `spawn --workspace`.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Start from this commit, branch or tag (default: HEAD of the main tree).
    #[arg(long, value_name = "REF")]
    pub from: Option<String>,
    /// A directory in the repository (default: the current one).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// The branch to make (default: rush/NAME).
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
    /// Leave out .rushinclude files and ignored build directories.
    #[arg(long)]
    pub no_state: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The branch to merge into (default: the branch of the main tree).
    #[arg(long, value_name = "BRANCH")]
    pub into: Option<String>,
    /// merge (a merge commit), rebase (the commits replayed), squash (one commit).
    #[arg(long, value_name = "STRATEGY", default_value = "merge")]
    pub strategy: rush_proto::workspace::MergeStrategy,
    /// Run in the merged tree, confined; the merge lands only if it exits 0.
    #[arg(long, value_name = "CMD")]
    pub test: Option<String>,
    /// Return once queued (see `rush agent workspace queue`).
    #[arg(long)]
    pub no_wait: bool,
}

//! Time travel for session workspaces: the storage backends behind checkpoint, rollback,
//! branch and diff.
//!
//! A session's directory in the store (`<store>/<session>/`) holds:
//! - `timelines/<timeline>`: writable trees; the one `live` names is the workspace;
//! - `live`: a symlink to `timelines/<timeline>`, which the user's workspace path (itself a
//!   symlink, so the user keeps their path) resolves through;
//! - the backend's checkpoints (read-only snapshots, or commits on hidden refs).
//!
//! Backends only make, copy and compare trees. Everything that must be atomic (rollback
//! swaps a fully built tree in with one `renameat2(RENAME_EXCHANGE)`, timeline switch
//! replaces the `live` symlink with one `rename`) is done above them, in `services::session`, the
//! same way for every backend, so that a crash leaves the old tree or the new, never a mix.
//!
//! - [`btrfs`]: subvolumes and snapshots, on the workspace's own btrfs or on a loop-mounted
//!   image under the daemon's state dir (created on first use).
//! - [`git`]: for machines without btrfs or loop devices: a checkpoint is a commit of the
//!   whole tree (untracked and ignored files too) on a hidden ref of a private repository.
//! - [`criu`]: process trees, dumped and restored with the criu CLI.

use std::path::{Path, PathBuf};

pub mod btrfs;
pub mod criu;
pub mod git;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// A tool (btrfs, mkfs.btrfs, git, criu, mount) failed; `stderr` is its own words.
    #[error("{tool} failed: {stderr}")]
    Tool { tool: String, stderr: String },
    #[error("the snapshot store is full ({used} of {size} bytes used): {hint}")]
    Full { used: u64, size: u64, hint: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("no checkpoint {0:?}")]
    NoCheckpoint(String),
}

impl SnapshotError {
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + use<> {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Subvolumes on a btrfs the workspace already lives on.
    Btrfs,
    /// Subvolumes on a btrfs image under the state dir, loop-mounted by the daemon.
    BtrfsLoop,
    Git,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Btrfs => "btrfs",
            BackendKind::BtrfsLoop => "btrfs-loop",
            BackendKind::Git => "git",
        }
    }
}

/// One side of a diff: a checkpoint, or a live (writable) tree.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    Checkpoint(&'a str),
    Tree(&'a Path),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

/// A path (relative to the tree's root) that differs between two trees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreUsage {
    pub used_bytes: u64,
    pub size_bytes: u64,
}

/// What a backend does to trees. Paths are absolute; `session_dir` is `<store>/<session>`,
/// where a backend may keep its checkpoints as it likes (btrfs: `checkpoints/<id>`
/// subvolumes; git: a repository and refs). Checkpoint ids are names the caller has
/// validated (no `/`, not `.` or `..`, no leading `.`).
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The directory sessions live in (`<store>`), ready for use.
    fn root(&self) -> &Path;
    /// A new, empty, writable tree at `path` (which does not exist).
    fn create_tree(&self, path: &Path) -> Result<(), SnapshotError>;
    /// A writable copy of tree `src` at `dest` (which does not exist): a writable snapshot on
    /// btrfs, a reflink-or-plain copy otherwise.
    fn clone_tree(&self, src: &Path, dest: &Path) -> Result<(), SnapshotError>;
    /// Removes a writable tree made by `create_tree`, `clone_tree` or `materialize`.
    fn remove_tree(&self, path: &Path) -> Result<(), SnapshotError>;
    /// Captures `tree` as checkpoint `id`, read-only; returns its size in bytes if cheaply
    /// known. The caller has frozen the writers and synced.
    fn checkpoint(&self, session_dir: &Path, tree: &Path, id: &str) -> Result<Option<u64>, SnapshotError>;
    /// A writable tree at `dest` (which does not exist) with checkpoint `id`'s contents.
    fn materialize(&self, session_dir: &Path, id: &str, dest: &Path) -> Result<(), SnapshotError>;
    fn remove_checkpoint(&self, session_dir: &Path, id: &str) -> Result<(), SnapshotError>;
    /// Paths added, removed or modified from `a` to `b`, sorted by path.
    fn diff(&self, session_dir: &Path, a: Side<'_>, b: Side<'_>) -> Result<Vec<Change>, SnapshotError>;
    fn usage(&self) -> Result<StoreUsage, SnapshotError>;
}

/// Where session workspaces and their checkpoints are kept.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StoreChoice {
    /// The workspace's own btrfs when it is on one, else a loop-mounted btrfs image, else
    /// git (no loop devices or no mkfs.btrfs).
    #[default]
    Auto,
    Btrfs,
    BtrfsLoop,
    Git,
}

#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSection {
    pub store: StoreChoice,
    /// Size of the loop-mounted btrfs image (sparse: it takes what is written). Raising it
    /// grows the image at the next start.
    pub image_size: String,
    /// The criu binary (`--with-processes`); default: /usr/sbin/criu or /usr/bin/criu.
    pub criu: Option<PathBuf>,
    /// Where session trees live when the workspace's own filesystem is not btrfs (the loop
    /// store's mount point, the git store); default: `<state_dir>-workspaces`. Not inside
    /// the state dir, which agents may not enter.
    pub dir: Option<PathBuf>,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection { store: StoreChoice::Auto, image_size: "64G".into(), criu: None, dir: None }
    }
}

impl SnapshotSection {
    pub fn base_dir(&self, state_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let name = state_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            state_dir.with_file_name(format!("{name}-workspaces"))
        })
    }

    pub fn image_bytes(&self) -> u64 {
        // Validated by `Config::parse`.
        rush_proto::budget::parse_size(&self.image_size).unwrap_or(64 << 30)
    }
}

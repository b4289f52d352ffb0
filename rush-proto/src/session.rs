//! Sessions and time travel: a session owns a workspace directory whose history the
//! daemon keeps as checkpoints and timelines.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which session a time-travel request acts on: the one named, or else the one whose
/// workspace contains `cwd` (the caller's working directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: String,
    /// The path the user works in: a symlink to the live tree in the store.
    pub workspace: PathBuf,
    /// Where the live tree really is (`<store>/<session>/live`, a symlink to the timeline).
    pub live: PathBuf,
    /// `btrfs`, `btrfs-loop` or `git`.
    pub backend: String,
    /// The timeline the workspace shows.
    pub timeline: String,
    pub created_unix_ms: u64,
    /// Agents spawned with `--session` that are running.
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub checkpoints: u32,
}

/// What the frontend reports of its shell when it checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellState {
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Sorted by name.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The job table, one line per job, as the shell prints it.
    #[serde(default)]
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub name: String,
    pub session: String,
    /// The timeline it was taken on.
    pub timeline: String,
    /// The checkpoint taken before it on the same timeline.
    #[serde(default)]
    pub parent: Option<String>,
    pub created_unix_ms: u64,
    /// Bytes of the tree when known.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Taken by the daemon (before a rollback, so that it can be undone), not by a user.
    #[serde(default)]
    pub automatic: bool,
    /// What it holds: `files`, `shell`, `processes:<agent>`.
    pub captured: Vec<String>,
    /// How long taking it took, freezing included.
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub name: String,
    /// The checkpoint it was branched from; None for the first timeline or a branch of a
    /// live tree.
    #[serde(default)]
    pub from: Option<String>,
    pub created_unix_ms: u64,
    /// The workspace shows this one.
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub session: SessionInfo,
    pub timelines: Vec<TimelineInfo>,
    /// Oldest first.
    pub checkpoints: Vec<CheckpointInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    pub name: String,
    #[serde(default)]
    pub a: Option<String>,
    #[serde(default)]
    pub b: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
    /// Environment differences of the two shell states (checkpoints that saved one).
    #[serde(default)]
    pub env: Vec<EnvChange>,
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    pub checkpoint: CheckpointInfo,
    /// The automatic checkpoint of the state before the rollback: roll back to it to undo.
    pub undo: CheckpointInfo,
    /// The shell state the checkpoint saved, for the frontend to restore.
    #[serde(default)]
    pub shell: Option<ShellState>,
    /// Agents of the session stopped because their files were replaced under them.
    #[serde(default)]
    pub stopped: Vec<String>,
    /// Agents whose processes were restored from the checkpoint's images.
    #[serde(default)]
    pub restored: Vec<String>,
    pub took_ms: u64,
}

/// What `PruneCheckpoints` removes: all but the newest `keep`, and/or those older than
/// `older_than_ms`. Automatic checkpoints count like the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    #[serde(default)]
    pub keep: Option<u32>,
    #[serde(default)]
    pub older_than_ms: Option<u64>,
}

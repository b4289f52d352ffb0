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
    /// What keeps its history.
    pub backend: crate::SessionStore,
    /// The timeline the workspace shows.
    pub timeline: String,
    pub created_unix_ms: u64,
    /// Agents spawned with `--session` that are running.
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub checkpoints: u32,
    /// Live attachments (shells or CLI contexts bound to it; see `AttachSession`).
    #[serde(default)]
    pub attached: u32,
    /// Keys of its key-value state.
    #[serde(default)]
    pub keys: u32,
    /// The working directory `rush session detach` saved; `attach` starts there.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// A shell (or other CLI context) bound to a session by `rush session attach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub session: String,
    /// The shell's process id.
    pub pid: i32,
    /// Who attached it.
    pub uid: u32,
    pub since_unix_ms: u64,
    /// The shell's terminal, when it has one (`/dev/pts/3`).
    #[serde(default)]
    pub tty: Option<String>,
}

/// `rush session show`: one session with everything it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDetail {
    pub session: SessionInfo,
    pub attachments: Vec<Attachment>,
    /// Checkpoint names, oldest first.
    pub checkpoints: Vec<String>,
    /// Key names, sorted (not values: `rush session get` prints those).
    pub keys: Vec<String>,
}

/// One key of a session's key-value state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// Longest value `rush session set` stores, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Why a key of the key-value state is refused: keys are 1-256 bytes of printable
/// characters (any script), with no whitespace and no `=` (so `KEY=VALUE` listings and
/// environment exports stay unambiguous).
pub fn check_key(key: &str) -> Result<(), String> {
    let why = if key.is_empty() {
        "it is empty".to_string()
    } else if key.len() > MAX_KEY_BYTES {
        format!("it is {} bytes long, more than {MAX_KEY_BYTES}", key.len())
    } else if let Some(c) = key.chars().find(|c| c.is_control() || c.is_whitespace()) {
        format!("it contains {:?} (no whitespace or control characters)", c)
    } else if key.contains('=') {
        "it contains '='".to_string()
    } else {
        return Ok(());
    };
    Err(format!("invalid key {key:?}: {why}"))
}

/// Why a value is refused: only its size (any UTF-8 is kept as it is).
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value of key {key:?} is {} bytes, more than the {MAX_VALUE_BYTES} allowed",
            value.len()
        ));
    }
    Ok(())
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
    /// The `rush` shell's own state (another shell reports only cwd and env).
    /// Aliases by name, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<(String, String)>,
    /// Shell functions: name and definition as source text, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<(String, String)>,
    /// Every `set -o` and `shopt` option with its value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<ShellOption>,
    /// The performance baseline: recent runs of each command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub perf: Vec<PerfSeries>,
}

/// Which builtin sets an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellOptionKind {
    /// `set -o NAME`.
    Set,
    /// `shopt -s NAME`.
    Shopt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellOption {
    pub kind: ShellOptionKind,
    pub name: String,
    pub on: bool,
}

/// One run of a command line in the `rush` shell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerfSample {
    pub at_unix_ms: u64,
    pub wall_ms: f64,
    /// User + system CPU of the shell and the children it waited for.
    pub cpu_ms: f64,
    pub status: u8,
}

/// Recent runs of one command line, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfSeries {
    pub command: String,
    pub samples: Vec<PerfSample>,
}

// Eq for ShellState: the samples' floats are measurements, compared bit for bit.
impl Eq for PerfSeries {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_without_whitespace_or_equals() {
        for good in ["k", "api.token", "x/y:z", "naïve-ключ", &"a".repeat(MAX_KEY_BYTES)] {
            assert_eq!(check_key(good), Ok(()), "{good:?}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a b", "whitespace"),
            ("a=b", "'='"),
            ("a\nb", "control"),
            (&"a".repeat(MAX_KEY_BYTES + 1), "257 bytes"),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_value("k", &"x".repeat(MAX_VALUE_BYTES)).is_ok());
        let e = check_value("k", &"x".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert!(e.contains("\"k\"") && e.contains("65537"), "{e}");
    }
}

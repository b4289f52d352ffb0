//! A capability token as a record: what the token store holds and the state store saves.

use std::path::PathBuf;

use rush_proto::{Ops, TokenInfo};

use super::clock::boot_time_ns;
use super::file_key::FileKey;

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The daemon's baseline for every file-confined agent (loader, libraries, /dev/null...).
    Baseline,
    /// `rush agent spawn --allow`.
    Spawn,
    /// `rush capability grant`.
    Grant,
    /// The agent's own stdin/stdout/stderr or log, when they are regular files: the agent
    /// may use what it was handed.
    Stdio,
}

impl Origin {
    /// The inverse of [`Origin::as_str`].
    pub fn parse(s: &str) -> Option<Origin> {
        [Origin::Baseline, Origin::Spawn, Origin::Grant, Origin::Stdio].into_iter().find(|o| o.as_str() == s)
    }

    /// As `TokenInfo.origin` has it.
    pub fn wire(self) -> rush_proto::TokenOrigin {
        match self {
            Origin::Baseline => rush_proto::TokenOrigin::Baseline,
            Origin::Spawn => rush_proto::TokenOrigin::Spawn,
            Origin::Grant => rush_proto::TokenOrigin::Grant,
            Origin::Stdio => rush_proto::TokenOrigin::Stdio,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Baseline => "baseline",
            Origin::Spawn => "spawn",
            Origin::Grant => "grant",
            Origin::Stdio => "stdio",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: u64,
    pub agent: String,
    pub cgroup_id: u64,
    pub path: PathBuf,
    pub key: FileKey,
    /// The mount the path was resolved in (statx mount id).
    pub mnt_id: u32,
    /// For a token that lets the agent write a file (not a directory): that file's
    /// directory, which gets the save right.
    pub save_dir: Option<FileKey>,
    pub ops: Ops,
    /// (CLOCK_BOOTTIME ns, Unix ms) of the expiry; None = until revoked.
    pub expires: Option<(u64, u64)>,
    pub granted_unix_ms: u64,
    pub origin: Origin,
    /// A conditional token: `key` is its worktree's.
    pub condition: Option<Condition>,
}

impl Token {
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id,
            agent: self.agent.clone(),
            path: self.path.clone(),
            ops: self.ops,
            granted_unix_ms: self.granted_unix_ms,
            expires_unix_ms: self.expires.map(|(_, ms)| ms),
            expired: self.expires.is_some_and(|(ns, _)| ns <= boot_time_ns()),
            origin: self.origin.wire(),
            condition: self.condition.as_ref().map(|c| c.command.clone()),
            worktree: self.condition.as_ref().map(|c| c.worktree.clone()),
        }
    }
}

/// A conditional token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub command: String,
    /// The granted directory, where changes land when the command passes.
    pub original: PathBuf,
    /// Where the agent writes.
    pub worktree: PathBuf,
}

impl Token {
    /// The kernel entries this token contributes to: its inode, and its save directory.
    pub fn keys(&self) -> impl Iterator<Item = FileKey> {
        std::iter::once(self.key).chain(self.save_dir)
    }
}

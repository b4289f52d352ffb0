//! What a session needs of the agents working in it: the narrow handle through which the
//! sessions service reaches the agents service (implemented at the edge, `handles.rs`), so
//! that neither imports the other.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use super::SessionError;
use crate::core::Caller;

/// The future of a handle call that waits (freezing, killing, CRIU). Boxed by hand so the
/// handle can be a trait object; four methods do not warrant the async-trait crate.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send + 'a>>;

pub trait SessionAgents: Send + Sync {
    /// The running agents of `session`, by name, sorted.
    fn in_session(&self, session: &str) -> Vec<String>;
    /// Freezes a running agent (its cgroup), for a consistent snapshot.
    fn freeze<'a>(&'a self, name: &'a str) -> Pending<'a, ()>;
    fn thaw(&self, name: &str) -> Result<(), SessionError>;
    /// Kills the agent's whole tree (its files are about to be replaced); how many processes.
    fn kill<'a>(&'a self, name: &'a str, caller: &'a Caller) -> Pending<'a, u32>;
    /// Err (why not) unless processes can be checkpointed here (CRIU found and working).
    fn processes_supported(&self) -> Result<(), SessionError>;
    /// Dumps the agent's process tree into `images`.
    fn dump_processes<'a>(&'a self, name: &'a str, images: &'a Path) -> Pending<'a, ()>;
    /// Replaces the agent's processes with the tree dumped in `images`.
    fn restore_processes<'a>(&'a self, name: &'a str, images: &'a Path) -> Pending<'a, ()>;
    /// Moves the agent's file tokens to the inodes their paths name now (after a swap);
    /// how many moved.
    fn follow_token_paths(&self, name: &str) -> Result<usize, SessionError>;
}

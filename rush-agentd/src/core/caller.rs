//! Who is asking the daemon.

/// The process that sent a request, from its credentials (SCM_CREDENTIALS per request,
/// /proc for the groups): who an agent it spawns runs as, and whom the audit trail names.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups; the agent runs with exactly the caller's credentials.
    pub groups: Vec<u32>,
}

/// Who sends a request to a service (the approvals queue, risk gating): an operator (by
/// uid), or an agent as itself (named by its cgroup, never by what it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker<'a> {
    Operator { uid: u32 },
    Agent { name: &'a str },
}

//! The audit trail on the wire: a record, and every event it can hold.

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use crate::api::*;
use crate::budget::{Budget, BudgetResource};
use crate::spec::NetPolicy;
use crate::wire::{ChangeAction, PauseReason};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increases by one per record for the daemon's lifetime of the log.
    pub seq: u64,
    pub time_unix_ms: u64,
    #[serde(default)]
    pub agent: Option<String>,
    /// The session it concerns: the one a time-travel event names, or the session of the
    /// agent it is about (spawned into one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub event: AuditEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    Spawn {
        pid: u32,
        uid: u32,
        command: Vec<String>,
        net: NetPolicy,
        caller_uid: u32,
        /// What it asked for that is not enforced (spawned with `allow_unconfined`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unconfined: Vec<String>,
    },
    Exit {
        pid: u32,
        status: ExitStatus,
    },
    Kill {
        caller_uid: u32,
        processes_killed: u32,
    },
    /// The kernel refused a connect() or sendmsg() of the agent.
    NetDeny {
        pid: u32,
        uid: u32,
        comm: String,
        /// `connect4`, `connect6`, `sendmsg4`, `sendmsg6`.
        hook: String,
        /// `ip:port` (`[ip]:port` for IPv6).
        destination: String,
        protocol: String,
    },
    /// The kernel refused a file operation of a file-confined agent.
    FileDeny {
        pid: u32,
        uid: u32,
        comm: String,
        /// The LSM hook that refused, e.g. `file_open`, `file_permission`, `path_unlink`.
        hook: String,
        /// The operation no token covered: read, write, exec, create or delete.
        op: String,
        path: String,
    },
    Grant {
        caller_uid: u32,
        token: TokenInfo,
    },
    Revoke {
        caller_uid: u32,
        tokens: Vec<TokenInfo>,
    },
    /// A process of the agent SIGKILLed because it had a file mapped in memory with an
    /// access a revoke or an expiry had just taken away (pages of a mapping are read and
    /// written without any hook the kernel programs could deny).
    RevokeKill {
        pid: u32,
        comm: String,
        /// The mapped file (the first one of that process no longer allowed).
        path: String,
        /// What the mappings used that was taken away: `read`, `write`, `exec`, comma-joined.
        ops: String,
        /// `revoke` or `expiry`.
        cause: crate::TokenChange,
    },
    /// The kernel refused an agent something that reaches outside its cgroup or into the
    /// kernel itself (self-protection).
    GuardDeny {
        /// 0 when the hook cannot tell (sysctl writes).
        pid: u32,
        uid: u32,
        comm: String,
        /// The hook that refused, e.g. `capable`, `task_kill`, `ptrace_access_check`, `bpf`,
        /// `sb_mount`, `inode_permission:kernel-fs-write`, `file_open:procfs-write`, `cgroup/sysctl`.
        hook: String,
        /// What was refused, readable: `CAP_SYS_ADMIN`, `signal 9 to pid 812`, ...
        what: String,
    },
    /// The agent's seccomp filter refused a system call (read from the kernel's audit
    /// records; see `rush doctor` for when they are not available).
    SyscallDeny {
        pid: u32,
        uid: u32,
        comm: String,
        /// The refused call as the filter lists it, e.g. `bpf`, `unshare(CLONE_NEWUSER)`.
        syscall: String,
        /// Its x86-64 number.
        nr: i64,
    },
    /// A conditional token's check ran: its worktree's changes promoted or discarded.
    Commit {
        outcome: CommitOutcome,
        cause: crate::CommitCause,
    },
    /// Deny records of this agent not written, because it was denied faster than the
    /// audit trail takes (a process hammering a file it may not open): how many.
    DenialsSuppressed {
        count: u64,
    },
    /// The kernel dropped this many events because the ring buffer was full.
    EventsLost {
        count: u64,
    },
    /// This many audit records were not stored (the database refused them: disk full,
    /// read-only, corrupt); `error` is the first refusal. Written with the next record that
    /// is stored.
    RecordsLost {
        count: u64,
        error: String,
    },
    /// The state database could not be read whole when the daemon started: it was moved
    /// to `moved_to` and what was readable copied into a new one. `lost` says what was not
    /// (agents the daemon no longer knows are killed: they are never left unconfined).
    StoreRecovered {
        moved_to: String,
        why: String,
        /// "table=rows" copied.
        salvaged: Vec<String>,
        lost: Vec<String>,
    },
    /// A budget ran out and its action was taken (`frozen`, `packets dropped`, ...).
    BudgetExceeded {
        /// `cpu`, `net`, `api` or `cost`.
        resource: BudgetResource,
        used: u64,
        limit: u64,
        action: String,
    },
    /// The kernel's OOM killer killed processes of the agent at its memory limit.
    OomKill {
        count: u64,
        limit_bytes: u64,
    },
    /// fork/clone of the agent failed at its pids limit, this many times.
    ForkRefused {
        count: u64,
        limit: u64,
    },
    /// A model API call refused at the agent's `api` or `cost` budget.
    ApiRefused {
        /// `api` (the kernel refused the connect) or `cost` (the metering proxy refused).
        resource: BudgetResource,
        pid: u32,
        comm: String,
        destination: String,
        used: u64,
        limit: u64,
    },
    /// The agent was frozen.
    Paused {
        caller_uid: Option<u32>,
        reason: PauseReason,
    },
    Resumed {
        caller_uid: u32,
        budget: Budget,
    },
    /// Time travel (`session` names the session; the record's agent is none).
    SessionCreated {
        session: String,
        workspace: PathBuf,
        backend: crate::SessionStore,
        caller_uid: u32,
    },
    SessionRemoved {
        session: String,
        caller_uid: u32,
    },
    Checkpoint {
        session: String,
        name: String,
        captured: Vec<String>,
        caller_uid: u32,
    },
    Rollback {
        session: String,
        name: String,
        /// The automatic checkpoint that undoes it.
        undo: String,
        caller_uid: u32,
    },
    /// A rollback a crash interrupted, settled when the daemon started again: `completed`
    /// (the swap had happened) or `undone` (it had not: the workspace is as it was).
    RollbackRepaired {
        session: String,
        name: String,
        outcome: crate::RollbackOutcome,
    },
    TimelineChange {
        session: String,
        action: crate::TimelineAction,
        timeline: String,
        caller_uid: u32,
    },
    CheckpointsDeleted {
        session: String,
        names: Vec<String>,
        caller_uid: u32,
    },
    /// A key of the session's key-value state was `set` or `unset`. The value is never
    /// recorded: values may be secrets.
    SessionKv {
        session: String,
        key: String,
        action: crate::KvAction,
        caller_uid: u32,
    },
    /// A shell was bound to the session (`rush session attach`).
    SessionAttached {
        session: String,
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<String>,
        caller_uid: u32,
    },
    /// A shell left it (`rush session detach`, or the attach subshell exited).
    SessionDetached {
        session: String,
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<PathBuf>,
        caller_uid: u32,
    },
    /// A Landlock-confined agent's rules changed (a grant, revoke or expiry): Landlock
    /// cannot change a running process's rules, so it was frozen and then restarted under
    /// the new ones (`restart`, `new_pid`) or killed (`kill`).
    RulesetChange {
        /// `restart` or `kill`.
        action: ChangeAction,
        cause: crate::TokenChange,
        old_pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_pid: Option<u32>,
    },
    /// A restartable agent started again by a starting daemon, as it was spawned:
    /// `reason` is `reboot` (the machine restarted) or `gone` (the daemon found it dead).
    AgentRestarted {
        reason: crate::RestartReason,
        /// Its first process before (unknown after a reboot: 0) and now.
        old_pid: u32,
        new_pid: u32,
    },
    /// A restartable agent not started again: `error` says why (a granted path gone, its
    /// session missing, enforcement unavailable on this boot). Fail closed: it is never
    /// started with fewer restrictions; it is tried again at the next daemon start.
    RestartFailed {
        reason: crate::RestartReason,
        error: String,
    },
    /// Someone attached to the agent's terminal (`rush agent attach`), as `mode`.
    TerminalAttached {
        caller_uid: u32,
        mode: crate::terminal::AttachMode,
    },
    /// Someone typed into the agent's terminal with `rush agent send` (how much, never what).
    TerminalInput {
        caller_uid: u32,
        bytes: u64,
    },
    /// An agent declared an intent.
    Intent {
        id: u64,
        text: String,
        #[serde(default)]
        paths: Vec<String>,
        expires_unix_ms: u64,
    },
    /// A claim was taken, renewed or ended (the record's agent is its holder).
    Claim {
        task: String,
        action: crate::coordination::ClaimAction,
        lease: u64,
        fencing: u64,
        #[serde(default)]
        paths: Vec<PathBuf>,
        enforcement: crate::coordination::ClaimEnforcement,
        expires_unix_ms: u64,
        /// The operator who released it (`revoked`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller_uid: Option<u32>,
    },
    /// The kernel refused the agent a write in a path another agent has claimed.
    ClaimDeny {
        pid: u32,
        uid: u32,
        comm: String,
        hook: String,
        /// write, create or delete.
        op: String,
        path: String,
        task: String,
        /// The claim's holder.
        holder: String,
        fencing: u64,
    },
    /// The agent published a result.
    Result {
        key: String,
        sha256: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_agent: Option<String>,
    },
    /// A task was delegated (the record's agent: the delegator) or done (its doer).
    Task {
        id: u64,
        action: crate::coordination::TaskAction,
        from: String,
        to: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<u64>,
    },
    /// A request for a person's decision was made (the record's agent: the asker).
    ApprovalRequested {
        id: u64,
        action: String,
        approval_kind: crate::approval::ApprovalKind,
        priority: crate::approval::Priority,
        channel: crate::approval::Channel,
        origin: crate::approval::ApprovalOrigin,
        batch_key: String,
        deadline_unix_ms: u64,
    },
    /// A request was decided: approved, rejected, expired or cancelled; or escalated
    /// (`state: pending`, `escalated: true`).
    ApprovalDecided {
        id: u64,
        state: crate::approval::ApprovalState,
        by: String,
        via: crate::approval::DecidedVia,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        escalated: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<String>,
    },
    /// One delivery attempt of pending requests to a channel (a webhook post, an email).
    ApprovalDelivery {
        ids: Vec<u64>,
        channel: crate::approval::Channel,
        attempt: u32,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A decision from outside refused: a forged or stale signature, a replayed callback,
    /// an unknown or spent token, an already decided request. Nothing changed.
    ApprovalRefused {
        via: crate::approval::DecidedVia,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        reason: String,
    },
    /// A command the risk gate judged ran (`rush execute`, a hook, the shell), and how
    /// it ended. What guardrails learn from.
    CommandRun {
        command: String,
        cwd: std::path::PathBuf,
        decision: crate::gate::GateDecision,
        /// None: killed by a signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        caller_uid: u32,
    },
    /// A guardrail was learned (from an outcome or a person) or imported.
    GuardrailLearned {
        id: u64,
        pattern: String,
        decision: crate::gate::GateDecision,
        source: crate::gate::GuardrailSource,
        scope: String,
        because: String,
    },
    /// A guardrail was removed (`rush guardrail rm`).
    GuardrailRemoved {
        id: u64,
        pattern: String,
        caller_uid: u32,
    },
    /// An agent workspace was made or removed, or a merge of one ended.
    Workspace {
        action: crate::workspace::WorkspaceAction,
        name: String,
        branch: String,
        repo: std::path::PathBuf,
        /// The merge: its id, target, commit or why it stopped; the removal: the branch's fate.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    /// A request the daemon refused for policy reasons (not input errors).
    Refused {
        caller_uid: u32,
        request: String,
        reason: String,
    },
}

impl AuditEvent {
    /// Every `kind()`, in declaration order.
    pub const KINDS: &[&str] = &[
        "spawn",
        "exit",
        "kill",
        "net_deny",
        "file_deny",
        "grant",
        "revoke",
        "revoke_kill",
        "guard_deny",
        "syscall_deny",
        "commit",
        "denials_suppressed",
        "events_lost",
        "records_lost",
        "store_recovered",
        "budget_exceeded",
        "oom_kill",
        "fork_refused",
        "api_refused",
        "paused",
        "resumed",
        "session_created",
        "session_removed",
        "checkpoint",
        "rollback",
        "rollback_repaired",
        "timeline_change",
        "checkpoints_deleted",
        "session_kv",
        "session_attached",
        "session_detached",
        "ruleset_change",
        "agent_restarted",
        "restart_failed",
        "terminal_attached",
        "terminal_input",
        "intent",
        "claim",
        "claim_deny",
        "result",
        "task",
        "approval_requested",
        "approval_decided",
        "approval_delivery",
        "approval_refused",
        "command_run",
        "guardrail_learned",
        "guardrail_removed",
        "workspace",
        "refused",
    ];

    /// The session a time-travel event names.
    pub fn session(&self) -> Option<&str> {
        match self {
            AuditEvent::SessionCreated { session, .. }
            | AuditEvent::SessionRemoved { session, .. }
            | AuditEvent::Checkpoint { session, .. }
            | AuditEvent::Rollback { session, .. }
            | AuditEvent::RollbackRepaired { session, .. }
            | AuditEvent::TimelineChange { session, .. }
            | AuditEvent::CheckpointsDeleted { session, .. }
            | AuditEvent::SessionKv { session, .. }
            | AuditEvent::SessionAttached { session, .. }
            | AuditEvent::SessionDetached { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The uid whose request it records, for events that record one.
    pub fn caller_uid(&self) -> Option<u32> {
        match self {
            AuditEvent::Spawn { caller_uid, .. }
            | AuditEvent::Kill { caller_uid, .. }
            | AuditEvent::Grant { caller_uid, .. }
            | AuditEvent::Revoke { caller_uid, .. }
            | AuditEvent::Resumed { caller_uid, .. }
            | AuditEvent::SessionCreated { caller_uid, .. }
            | AuditEvent::SessionRemoved { caller_uid, .. }
            | AuditEvent::Checkpoint { caller_uid, .. }
            | AuditEvent::Rollback { caller_uid, .. }
            | AuditEvent::TimelineChange { caller_uid, .. }
            | AuditEvent::CheckpointsDeleted { caller_uid, .. }
            | AuditEvent::SessionKv { caller_uid, .. }
            | AuditEvent::SessionAttached { caller_uid, .. }
            | AuditEvent::SessionDetached { caller_uid, .. }
            | AuditEvent::TerminalAttached { caller_uid, .. }
            | AuditEvent::TerminalInput { caller_uid, .. }
            | AuditEvent::CommandRun { caller_uid, .. }
            | AuditEvent::GuardrailRemoved { caller_uid, .. }
            | AuditEvent::Refused { caller_uid, .. } => Some(*caller_uid),
            AuditEvent::Paused { caller_uid, .. } | AuditEvent::Claim { caller_uid, .. } => *caller_uid,
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Spawn { .. } => "spawn",
            AuditEvent::Exit { .. } => "exit",
            AuditEvent::Kill { .. } => "kill",
            AuditEvent::NetDeny { .. } => "net_deny",
            AuditEvent::EventsLost { .. } => "events_lost",
            AuditEvent::RecordsLost { .. } => "records_lost",
            AuditEvent::StoreRecovered { .. } => "store_recovered",
            AuditEvent::Refused { .. } => "refused",
            AuditEvent::FileDeny { .. } => "file_deny",
            AuditEvent::Grant { .. } => "grant",
            AuditEvent::Revoke { .. } => "revoke",
            AuditEvent::RevokeKill { .. } => "revoke_kill",
            AuditEvent::GuardDeny { .. } => "guard_deny",
            AuditEvent::SyscallDeny { .. } => "syscall_deny",
            AuditEvent::Commit { .. } => "commit",
            AuditEvent::DenialsSuppressed { .. } => "denials_suppressed",
            AuditEvent::BudgetExceeded { .. } => "budget_exceeded",
            AuditEvent::OomKill { .. } => "oom_kill",
            AuditEvent::ForkRefused { .. } => "fork_refused",
            AuditEvent::ApiRefused { .. } => "api_refused",
            AuditEvent::Paused { .. } => "paused",
            AuditEvent::Resumed { .. } => "resumed",
            AuditEvent::RulesetChange { .. } => "ruleset_change",
            AuditEvent::SessionCreated { .. } => "session_created",
            AuditEvent::SessionRemoved { .. } => "session_removed",
            AuditEvent::Checkpoint { .. } => "checkpoint",
            AuditEvent::Rollback { .. } => "rollback",
            AuditEvent::RollbackRepaired { .. } => "rollback_repaired",
            AuditEvent::TimelineChange { .. } => "timeline_change",
            AuditEvent::CheckpointsDeleted { .. } => "checkpoints_deleted",
            AuditEvent::SessionKv { .. } => "session_kv",
            AuditEvent::SessionAttached { .. } => "session_attached",
            AuditEvent::SessionDetached { .. } => "session_detached",
            AuditEvent::AgentRestarted { .. } => "agent_restarted",
            AuditEvent::RestartFailed { .. } => "restart_failed",
            AuditEvent::TerminalAttached { .. } => "terminal_attached",
            AuditEvent::TerminalInput { .. } => "terminal_input",
            AuditEvent::Intent { .. } => "intent",
            AuditEvent::Claim { .. } => "claim",
            AuditEvent::ClaimDeny { .. } => "claim_deny",
            AuditEvent::Result { .. } => "result",
            AuditEvent::Task { .. } => "task",
            AuditEvent::ApprovalRequested { .. } => "approval_requested",
            AuditEvent::ApprovalDecided { .. } => "approval_decided",
            AuditEvent::ApprovalDelivery { .. } => "approval_delivery",
            AuditEvent::ApprovalRefused { .. } => "approval_refused",
            AuditEvent::CommandRun { .. } => "command_run",
            AuditEvent::GuardrailLearned { .. } => "guardrail_learned",
            AuditEvent::GuardrailRemoved { .. } => "guardrail_removed",
            AuditEvent::Workspace { .. } => "workspace",
        }
    }
}

//! Request, Response and Error: the three enums of the API, and their envelopes.

use crate::audit::AuditRecord;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::budget::{Budget, BudgetUsage};
use crate::session::{
    Attachment, CheckpointInfo, DiffReport, KeyValue, Prune, RollbackReport, SessionDetail, SessionInfo,
    SessionRef, ShellState, Timeline, TimelineInfo,
};
use crate::spec::{FileGrant, Hardlinks, NetPolicy, Ops};
use crate::wire::{ChangeAction, Enforcement, FilesBackend, PauseReason, TokenOrigin};

/// One line from a caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    /// Chosen by the caller; echoed on every reply to this request.
    pub id: u64,
    pub request: Request,
}

/// One line from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub version: u32,
    /// The request this answers; 0 when the request line could not be parsed at all.
    pub id: u64,
    pub reply: Reply,
}

/// `{"ok": {...}}` or `{"err": {...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// One per request, moved once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Ok(Response),
    Err(ApiError),
}

impl From<Result<Response, ApiError>> for Reply {
    fn from(r: Result<Response, ApiError>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Protocol handshake: the daemon's version and how it sees the caller.
    Hello,
    /// Start an agent. Foreground (`stdio: passed`): replies `Spawned`, then `Exited`
    /// when the agent's first process exits; closing the connection kills the agent.
    /// Detached (`stdio: log`): replies `Spawned` only.
    Spawn(SpawnRequest),
    ListAgents,
    /// One agent. An agent may ask for its own (and may leave `name` out for it).
    AgentStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Kill the agent's whole process tree and remove its cgroup.
    KillAgent {
        name: String,
    },
    /// Freeze every process of the agent (cgroup freezer) until `ResumeAgent`. Replies `Agent`.
    PauseAgent {
        name: String,
    },
    /// Thaw an agent paused by the operator or by its cpu budget. `budget` replaces the
    /// limits it sets (raising a spent budget is what lets the agent go on); the agent
    /// stays frozen if a resource it has used up is not raised. Replies `Agent`.
    ResumeAgent {
        name: String,
        #[serde(default)]
        budget: Option<Budget>,
    },
    /// Replies `AuditEvents`; with `follow`, keeps sending `AuditEvents` as they happen
    /// until the caller closes the connection.
    Audit(AuditQuery),
    /// The live event stream: `Subscribed`, then one `Event` per event that passes the
    /// filter, until the caller closes the connection. A subscriber that falls behind gets
    /// `Event::Lagged` and the connection is closed; the daemon never waits for it.
    Subscribe(crate::events::SubscribeRequest),
    /// A detached agent's captured output: `Logs` chunks, the last with `end: true`.
    /// With `follow`, keeps streaming until the agent exits.
    AgentLogs {
        name: String,
        follow: bool,
    },
    /// Attach to an agent's terminal (agents spawned with `stdio: tty`). Replies
    /// `TerminalAttached`; after it the connection carries [`crate::terminal::Frame`]s,
    /// not JSON lines, until either side closes it.
    AttachTerminal {
        name: String,
        mode: crate::terminal::AttachMode,
        #[serde(default)]
        size: crate::terminal::WindowSize,
    },
    /// Type `text` into an agent's terminal, as if at its keyboard. Replies `TerminalSent`.
    SendTerminal {
        name: String,
        text: String,
    },
    /// What the running kernel supports and which guarantees hold.
    Doctor,
    /// Give a file-confined agent a capability token; replies `Granted`.
    Grant(GrantRequest),
    /// Withdraw tokens; takes effect on already-open files at their next read or write.
    /// Replies `Revoked` with what was withdrawn.
    Revoke {
        agent: String,
        target: RevokeTarget,
    },
    /// Tokens of one agent, or of all. Replies `Capabilities`. An agent gets its own.
    ListCapabilities {
        #[serde(default)]
        agent: Option<String>,
    },
    /// Runs the condition of the agent's conditional tokens (one, or all) against its
    /// worktree; promotes the worktree's changes if it passes, discards them otherwise.
    /// An agent may ask for its own (and may leave `agent` out for it). Replies `Committed`.
    Commit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default)]
        token: Option<u64>,
    },
    /// Make session `name` own `workspace`: its contents move into the snapshot store and
    /// the path becomes a symlink to the live tree, so the user keeps working where they
    /// were. Replies `Session`.
    CreateSession {
        name: String,
        workspace: PathBuf,
    },
    /// Replies `Sessions`.
    ListSessions,
    /// Puts the session's live tree back at its workspace path as a plain directory and
    /// deletes its checkpoints and timelines. Refused while agents of it run. Replies
    /// `SessionRemoved`.
    RemoveSession {
        name: String,
    },
    /// Freeze the session's agents, snapshot the workspace read-only, save `shell`; with
    /// `with_processes`, also CRIU-dump the agents (thawed afterwards whatever happens).
    /// Replies `Checkpointed`.
    Checkpoint {
        session: SessionRef,
        name: String,
        #[serde(default)]
        with_processes: bool,
        #[serde(default)]
        shell: Option<ShellState>,
    },
    /// Swap the workspace back to checkpoint `name` in one atomic rename, after keeping
    /// the present state as an automatic checkpoint. Replies `RolledBack`.
    Rollback {
        session: SessionRef,
        name: String,
    },
    /// A new writable timeline `name` from checkpoint `from` (default: the live tree); the
    /// workspace stays on its timeline. Replies `TimelineChanged`.
    Branch {
        session: SessionRef,
        name: String,
        #[serde(default)]
        from: Option<String>,
    },
    /// Point the workspace at timeline `name` (one atomic symlink replace). Replies
    /// `TimelineChanged`.
    SwitchTimeline {
        session: SessionRef,
        name: String,
    },
    /// Replies `Timeline`.
    ListTimeline {
        session: SessionRef,
    },
    /// Files added, removed and modified from `a` to `b` (checkpoint or timeline names),
    /// and environment differences. Replies `Diff`.
    Diff {
        session: SessionRef,
        a: String,
        b: String,
    },
    /// Replies `CheckpointsDeleted`.
    DeleteCheckpoint {
        session: SessionRef,
        name: String,
    },
    /// Replies `CheckpointsDeleted`.
    PruneCheckpoints {
        session: SessionRef,
        prune: Prune,
    },
    /// Everything about one session: attachments, checkpoints, keys. Replies `SessionDetail`.
    ShowSession {
        session: SessionRef,
    },
    /// Sets `key` of the session's key-value state to `value` (stored before the reply).
    /// Replies `SessionKv` with the pair.
    SessionSet {
        session: SessionRef,
        key: String,
        value: String,
    },
    /// One key (`key`), or all of them. A missing key is `NotFound`. Replies `SessionKv`.
    SessionGet {
        session: SessionRef,
        #[serde(default)]
        key: Option<String>,
    },
    /// Removes `key`; a missing key is `NotFound`. Replies `SessionKv` with the removed pair.
    SessionUnset {
        session: SessionRef,
        key: String,
    },
    /// Binds the shell `pid` (the caller's shell, not the caller) to the session until it
    /// detaches or exits. Replies `Attached` with the session (its saved `cwd`).
    AttachSession {
        session: SessionRef,
        pid: i32,
        #[serde(default)]
        tty: Option<String>,
    },
    /// Drops the attachment of shell `pid` and saves `cwd` as the session's working
    /// directory. Replies `Detached`.
    DetachSession {
        session: SessionRef,
        pid: i32,
        #[serde(default)]
        cwd: Option<PathBuf>,
    },
    /// What a grant (`revoke: None`) or this revoke would do to the running agent, asked
    /// before making it: in place (BPF LSM), or a restart or kill (Landlock, whose rules
    /// cannot change in a running process). Changes nothing. Replies `ChangeEffect`.
    ChangeEffect {
        agent: String,
        #[serde(default)]
        revoke: Option<RevokeTarget>,
    },
    /// Declare an intent (what the agent is about to do, and where). Replies `Intent`.
    Broadcast(crate::coordination::BroadcastRequest),
    /// Live intents (an agent sees its session's), those naming a path that overlaps one
    /// of `paths` marked. Replies `Intents`.
    QueryIntents {
        #[serde(default)]
        paths: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// Take an exclusive lease on a task, decided by one compare-and-swap in the store.
    /// Replies `Claim`: won, or the holder's claim.
    Claim(crate::coordination::ClaimRequest),
    /// Extend the caller's lease on `task` by `ttl_secs` from now (default: the TTL it
    /// was taken with). Replies `Claim`; a task the caller does not hold is `NotFound`.
    Renew {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        task: String,
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    /// Give the task up. An operator leaving `agent` out releases whoever holds it.
    /// Replies `Released`.
    Release {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        task: String,
    },
    /// Live claims (an agent sees its session's); with `path`, those whose paths cover it.
    /// Replies `Claims`.
    ListClaims {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// Store a result (content-addressed, size-limited). Replies `Published`.
    Publish(crate::coordination::PublishRequest),
    /// Results the caller may read, or one key with its content (optionally waited for).
    /// Replies `Results`.
    Results(crate::coordination::ResultsQuery),
    /// Put a task in another agent's inbox. Replies `Delegated`.
    Delegate(crate::coordination::DelegateRequest),
    /// The open tasks delegated to the agent; with `wait_secs`, waits up to that long for
    /// one if there is none. Replies `Inbox`.
    Inbox {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_secs: Option<u64>,
    },
    /// Ask a person for a decision; answered at once with the pending request (the agent
    /// goes on, or waits with `wait_approval`). Replies `Approval`.
    RequestApproval(crate::approval::ApprovalRequest),
    /// Pending requests (with `all`, decided ones too; an agent sees its own), and the
    /// batches the pending ones fold into. Replies `Approvals`.
    ListApprovals {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// One request; with `wait_secs`, waits up to that long for it to be decided.
    /// Replies `Approval`.
    WaitApproval {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_secs: Option<u64>,
    },
    /// Withdraw a pending request (the asker, or an operator). Replies `Approval`.
    CancelApproval {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        id: u64,
    },
    /// Approve or reject a pending request or a batch. Operators only: no agent decides,
    /// its own request or any other. Replies `Decided`.
    Decide(crate::approval::DecideRequest),
    /// Change the queue's routes, a class's policy, the batch window, similarity or aging;
    /// stored, and applied to requests made after. Replies `QueueSettings`.
    ConfigureQueue(crate::approval::QueueChange),
    /// The queue's settings in effect. Replies `QueueSettings`.
    ShowQueue,
    /// Judge a shell command (risk gating): its tree, tags, score and decision. Nothing
    /// runs. Replies `Assessment`.
    Assess(crate::gate::AssessRequest),
    /// A command the gate passed has run, with this outcome (what guardrails learn from).
    /// Replies `ExecutionRecorded`.
    RecordExecution(crate::gate::ExecutionRecord),
    /// The guardrails learned or imported. Replies `Guardrails`.
    ListGuardrails,
    /// Forget a guardrail. Replies `Guardrails` (the one removed).
    RemoveGuardrail {
        id: u64,
    },
    /// Add guardrails (a team's shared file); one already there (same scope and pattern)
    /// is left as it is. Replies `GuardrailsImported`.
    ImportGuardrails {
        guardrails: Vec<crate::gate::GuardrailSpec>,
    },
    /// A git worktree for an agent on its own branch, with the repository's untracked
    /// state (`.rushinclude`) and ignored build directories cloned in. Replies `Workspace`.
    CreateWorkspace {
        name: String,
        /// A directory in the repository (the caller's working directory).
        repo: PathBuf,
        /// What to start from (default: `HEAD` of the main tree).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The branch to make (default: `rush/NAME`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// Leave the untracked and ignored state out.
        #[serde(default)]
        no_state: bool,
    },
    /// Workspaces with their state now (of one repository, or all). Replies `Workspaces`.
    ListWorkspaces {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repo: Option<PathBuf>,
    },
    /// Queue a merge of a workspace's branch; answered when it is final unless `no_wait`.
    /// Replies `Merge`.
    MergeWorkspace(crate::workspace::MergeRequest),
    /// The merge queue and its recent history. Replies `Merges`.
    ListMerges {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
    },
    /// Remove a workspace's worktree; refused while its branch has unmerged commits unless
    /// `force` (which keeps the branch). Replies `WorkspacesRemoved`.
    RemoveWorkspace {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Remove merged workspaces older than `older_than_secs` (by their merge, else their
    /// creation). Replies `WorkspacesRemoved`.
    CollectWorkspaces {
        older_than_secs: u64,
        #[serde(default)]
        dry_run: bool,
    },
}

impl Request {
    /// Every request's name (its serde tag, `type` on the wire), in declaration order.
    pub const NAMES: &[&str] = &[
        "hello",
        "spawn",
        "list_agents",
        "agent_status",
        "kill_agent",
        "pause_agent",
        "resume_agent",
        "audit",
        "subscribe",
        "agent_logs",
        "attach_terminal",
        "send_terminal",
        "doctor",
        "grant",
        "revoke",
        "list_capabilities",
        "commit",
        "create_session",
        "list_sessions",
        "remove_session",
        "checkpoint",
        "rollback",
        "branch",
        "switch_timeline",
        "list_timeline",
        "diff",
        "delete_checkpoint",
        "prune_checkpoints",
        "show_session",
        "session_set",
        "session_get",
        "session_unset",
        "attach_session",
        "detach_session",
        "change_effect",
        "broadcast",
        "query_intents",
        "claim",
        "renew",
        "release",
        "list_claims",
        "publish",
        "results",
        "delegate",
        "inbox",
        "request_approval",
        "list_approvals",
        "wait_approval",
        "cancel_approval",
        "decide",
        "configure_queue",
        "show_queue",
        "assess",
        "record_execution",
        "list_guardrails",
        "remove_guardrail",
        "import_guardrails",
        "create_workspace",
        "list_workspaces",
        "merge_workspace",
        "list_merges",
        "remove_workspace",
        "collect_workspaces",
    ];

    /// The request's name: its `type` on the wire (a unit test holds the two together).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Spawn(_) => "spawn",
            Request::ListAgents => "list_agents",
            Request::AgentStatus { .. } => "agent_status",
            Request::KillAgent { .. } => "kill_agent",
            Request::PauseAgent { .. } => "pause_agent",
            Request::ResumeAgent { .. } => "resume_agent",
            Request::Audit(_) => "audit",
            Request::Subscribe(_) => "subscribe",
            Request::AgentLogs { .. } => "agent_logs",
            Request::AttachTerminal { .. } => "attach_terminal",
            Request::SendTerminal { .. } => "send_terminal",
            Request::Doctor => "doctor",
            Request::Grant(_) => "grant",
            Request::Revoke { .. } => "revoke",
            Request::ListCapabilities { .. } => "list_capabilities",
            Request::Commit { .. } => "commit",
            Request::CreateSession { .. } => "create_session",
            Request::ListSessions => "list_sessions",
            Request::RemoveSession { .. } => "remove_session",
            Request::Checkpoint { .. } => "checkpoint",
            Request::Rollback { .. } => "rollback",
            Request::Branch { .. } => "branch",
            Request::SwitchTimeline { .. } => "switch_timeline",
            Request::ListTimeline { .. } => "list_timeline",
            Request::Diff { .. } => "diff",
            Request::DeleteCheckpoint { .. } => "delete_checkpoint",
            Request::PruneCheckpoints { .. } => "prune_checkpoints",
            Request::ShowSession { .. } => "show_session",
            Request::SessionSet { .. } => "session_set",
            Request::SessionGet { .. } => "session_get",
            Request::SessionUnset { .. } => "session_unset",
            Request::AttachSession { .. } => "attach_session",
            Request::DetachSession { .. } => "detach_session",
            Request::ChangeEffect { .. } => "change_effect",
            Request::Broadcast(_) => "broadcast",
            Request::QueryIntents { .. } => "query_intents",
            Request::Claim(_) => "claim",
            Request::Renew { .. } => "renew",
            Request::Release { .. } => "release",
            Request::ListClaims { .. } => "list_claims",
            Request::Publish(_) => "publish",
            Request::Results(_) => "results",
            Request::Delegate(_) => "delegate",
            Request::Inbox { .. } => "inbox",
            Request::RequestApproval(_) => "request_approval",
            Request::ListApprovals { .. } => "list_approvals",
            Request::WaitApproval { .. } => "wait_approval",
            Request::CancelApproval { .. } => "cancel_approval",
            Request::Decide(_) => "decide",
            Request::ConfigureQueue(_) => "configure_queue",
            Request::ShowQueue => "show_queue",
            Request::Assess(_) => "assess",
            Request::RecordExecution(_) => "record_execution",
            Request::ListGuardrails => "list_guardrails",
            Request::RemoveGuardrail { .. } => "remove_guardrail",
            Request::ImportGuardrails { .. } => "import_guardrails",
            Request::CreateWorkspace { .. } => "create_workspace",
            Request::ListWorkspaces { .. } => "list_workspaces",
            Request::MergeWorkspace(_) => "merge_workspace",
            Request::ListMerges { .. } => "list_merges",
            Request::RemoveWorkspace { .. } => "remove_workspace",
            Request::CollectWorkspaces { .. } => "collect_workspaces",
        }
    }

    /// The principals that may send it. Agents send few: the ones about themselves, which
    /// [`Request::confine_to_agent`] makes act on the sender whatever names they carry.
    pub fn senders(&self) -> &'static [Principal] {
        const ANYONE: &[Principal] = &[Principal::Operator, Principal::Agent, Principal::Other];
        const OPERATOR_OR_SELF: &[Principal] = &[Principal::Operator, Principal::Agent];
        const OPERATOR: &[Principal] = &[Principal::Operator];
        match self {
            Request::Hello | Request::Doctor => ANYONE,
            Request::AgentStatus { .. }
            | Request::ListCapabilities { .. }
            | Request::Commit { .. }
            | Request::Broadcast(_)
            | Request::QueryIntents { .. }
            | Request::Claim(_)
            | Request::Renew { .. }
            | Request::Release { .. }
            | Request::ListClaims { .. }
            | Request::Publish(_)
            | Request::Results(_)
            | Request::Delegate(_)
            | Request::Inbox { .. }
            | Request::RequestApproval(_)
            | Request::ListApprovals { .. }
            | Request::WaitApproval { .. }
            | Request::CancelApproval { .. }
            | Request::Assess(_)
            | Request::RecordExecution(_) => OPERATOR_OR_SELF,
            Request::Spawn(_)
            | Request::ListAgents
            | Request::KillAgent { .. }
            | Request::PauseAgent { .. }
            | Request::ResumeAgent { .. }
            | Request::Audit(_)
            | Request::Subscribe(_)
            | Request::AgentLogs { .. }
            | Request::AttachTerminal { .. }
            | Request::SendTerminal { .. }
            | Request::Grant(_)
            | Request::Revoke { .. }
            | Request::CreateSession { .. }
            | Request::ListSessions
            | Request::RemoveSession { .. }
            | Request::Checkpoint { .. }
            | Request::Rollback { .. }
            | Request::Branch { .. }
            | Request::SwitchTimeline { .. }
            | Request::ListTimeline { .. }
            | Request::Diff { .. }
            | Request::DeleteCheckpoint { .. }
            | Request::PruneCheckpoints { .. }
            | Request::ShowSession { .. }
            | Request::SessionSet { .. }
            | Request::SessionGet { .. }
            | Request::SessionUnset { .. }
            | Request::AttachSession { .. }
            | Request::DetachSession { .. }
            | Request::ChangeEffect { .. }
            | Request::Decide(_)
            | Request::ConfigureQueue(_)
            | Request::ShowQueue
            | Request::ListGuardrails
            | Request::RemoveGuardrail { .. }
            | Request::ImportGuardrails { .. }
            | Request::CreateWorkspace { .. }
            | Request::ListWorkspaces { .. }
            | Request::MergeWorkspace(_)
            | Request::ListMerges { .. }
            | Request::RemoveWorkspace { .. }
            | Request::CollectWorkspaces { .. } => OPERATOR,
        }
    }

    pub fn may_be_sent_by(&self, principal: Principal) -> bool {
        self.senders().contains(&principal)
    }

    /// For a request agent `own` sends: makes it act on `own`, whatever agent it names or
    /// leaves out. A request that names another agent is `Err` with that name (refused, never
    /// silently turned into a request about the sender). Requests no agent may send are left
    /// as they are (they are refused before this matters).
    pub fn confine_to_agent(&mut self, own: &str) -> Result<(), String> {
        let target = match self {
            Request::AgentStatus { name: target } => target,
            Request::ListCapabilities { agent: target }
            | Request::Commit { agent: target, .. }
            | Request::Renew { agent: target, .. }
            | Request::Release { agent: target, .. }
            | Request::Inbox { agent: target, .. }
            | Request::ListApprovals { agent: target, .. }
            | Request::WaitApproval { agent: target, .. }
            | Request::CancelApproval { agent: target, .. }
            | Request::RequestApproval(crate::approval::ApprovalRequest { agent: target, .. })
            | Request::Broadcast(crate::coordination::BroadcastRequest { agent: target, .. })
            | Request::Claim(crate::coordination::ClaimRequest { agent: target, .. })
            | Request::Publish(crate::coordination::PublishRequest { agent: target, .. })
            | Request::Results(crate::coordination::ResultsQuery { agent: target, .. })
            | Request::Delegate(crate::coordination::DelegateRequest { agent: target, .. })
            | Request::Assess(crate::gate::AssessRequest { agent: target, .. })
            | Request::RecordExecution(crate::gate::ExecutionRecord { agent: target, .. }) => target,
            // Reads the service scopes to the agent's session.
            Request::QueryIntents { .. } | Request::ListClaims { .. } => return Ok(()),
            // Naming no agent; or refused to agents by `senders` (a unit test checks that
            // every request an agent may send, but these two, is confined above).
            Request::Hello
            | Request::Doctor
            | Request::Spawn(_)
            | Request::ListAgents
            | Request::KillAgent { .. }
            | Request::PauseAgent { .. }
            | Request::ResumeAgent { .. }
            | Request::Audit(_)
            | Request::Subscribe(_)
            | Request::AgentLogs { .. }
            | Request::AttachTerminal { .. }
            | Request::SendTerminal { .. }
            | Request::Grant(_)
            | Request::Revoke { .. }
            | Request::CreateSession { .. }
            | Request::ListSessions
            | Request::RemoveSession { .. }
            | Request::Checkpoint { .. }
            | Request::Rollback { .. }
            | Request::Branch { .. }
            | Request::SwitchTimeline { .. }
            | Request::ListTimeline { .. }
            | Request::Diff { .. }
            | Request::DeleteCheckpoint { .. }
            | Request::PruneCheckpoints { .. }
            | Request::ShowSession { .. }
            | Request::SessionSet { .. }
            | Request::SessionGet { .. }
            | Request::SessionUnset { .. }
            | Request::AttachSession { .. }
            | Request::DetachSession { .. }
            | Request::ChangeEffect { .. }
            | Request::Decide(_)
            | Request::ConfigureQueue(_)
            | Request::ShowQueue
            | Request::ListGuardrails
            | Request::RemoveGuardrail { .. }
            | Request::ImportGuardrails { .. }
            | Request::CreateWorkspace { .. }
            | Request::ListWorkspaces { .. }
            | Request::MergeWorkspace(_)
            | Request::ListMerges { .. }
            | Request::RemoveWorkspace { .. }
            | Request::CollectWorkspaces { .. } => return Ok(()),
        };
        match target {
            Some(named) if named != own => Err(named.clone()),
            _ => {
                *target = Some(own.to_owned());
                Ok(())
            }
        }
    }

    /// Whether it changes anything (agents, tokens, sessions, the workspace): refusals of
    /// these are audited. Reads, streams of reads and `change_effect` (a question) are not.
    pub fn is_mutation(&self) -> bool {
        match self {
            Request::Spawn(_)
            | Request::KillAgent { .. }
            | Request::PauseAgent { .. }
            | Request::ResumeAgent { .. }
            | Request::Grant(_)
            | Request::Revoke { .. }
            | Request::Commit { .. }
            | Request::CreateSession { .. }
            | Request::RemoveSession { .. }
            | Request::Checkpoint { .. }
            | Request::Rollback { .. }
            | Request::Branch { .. }
            | Request::SwitchTimeline { .. }
            | Request::DeleteCheckpoint { .. }
            | Request::PruneCheckpoints { .. }
            | Request::SessionSet { .. }
            | Request::SessionUnset { .. }
            | Request::AttachSession { .. }
            | Request::DetachSession { .. }
            | Request::AttachTerminal { .. }
            | Request::SendTerminal { .. }
            | Request::Broadcast(_)
            | Request::Claim(_)
            | Request::Renew { .. }
            | Request::Release { .. }
            | Request::Publish(_)
            | Request::Delegate(_)
            | Request::RequestApproval(_)
            | Request::CancelApproval { .. }
            | Request::Decide(_)
            | Request::ConfigureQueue(_)
            | Request::RecordExecution(_)
            | Request::RemoveGuardrail { .. }
            | Request::ImportGuardrails { .. }
            | Request::CreateWorkspace { .. }
            | Request::MergeWorkspace(_)
            | Request::RemoveWorkspace { .. }
            | Request::CollectWorkspaces { .. } => true,
            Request::Hello
            | Request::ListAgents
            | Request::AgentStatus { .. }
            | Request::Audit(_)
            | Request::Subscribe(_)
            | Request::AgentLogs { .. }
            | Request::Doctor
            | Request::ListCapabilities { .. }
            | Request::ListSessions
            | Request::ListTimeline { .. }
            | Request::Diff { .. }
            | Request::ShowSession { .. }
            | Request::SessionGet { .. }
            | Request::ChangeEffect { .. }
            | Request::QueryIntents { .. }
            | Request::ListClaims { .. }
            | Request::Results(_)
            | Request::Inbox { .. }
            | Request::ListApprovals { .. }
            | Request::WaitApproval { .. }
            | Request::ShowQueue
            | Request::Assess(_)
            | Request::ListGuardrails
            | Request::ListWorkspaces { .. }
            | Request::ListMerges { .. } => false,
        }
    }
}

/// What a token change does (or did) to a running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEffect {
    pub agent: String,
    /// The file backend confining it.
    pub backend: FilesBackend,
    pub action: ChangeAction,
    /// One line for the operator: what happens and why.
    pub detail: String,
    /// The agent's first process now.
    pub pid: u32,
    /// After a restart: the new first process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    pub agent: String,
    /// Absolute path of an existing file or directory; a directory grant covers its subtree.
    pub path: PathBuf,
    pub ops: Ops,
    /// Lifetime from now; None = until revoked.
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// A conditional token (directories only): the agent's writes go to a worktree, a
    /// copy of `path`; this shell command, run confined in the worktree on commit (or at
    /// the agent's exit), decides whether they reach `path` (exit 0) or are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeTarget {
    /// Every token of the agent on this path.
    Path(PathBuf),
    Id(u64),
}

/// A capability token as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u64,
    pub agent: String,
    pub path: PathBuf,
    pub ops: Ops,
    pub granted_unix_ms: u64,
    /// None = until revoked.
    #[serde(default)]
    pub expires_unix_ms: Option<u64>,
    pub expired: bool,
    pub origin: TokenOrigin,
    /// For a conditional token: the command that decides, and the worktree the agent
    /// writes to instead of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<PathBuf>,
}

/// What a commit of one conditional token did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    pub token: u64,
    pub path: PathBuf,
    pub worktree: PathBuf,
    pub condition: String,
    /// The condition's exit code; None if it was killed (timeout) or could not start.
    pub exit_code: Option<i32>,
    /// The worktree's changes reached `path`; else they were discarded.
    pub promoted: bool,
    pub added: u32,
    pub changed: u32,
    pub removed: u32,
    /// Why the changes were discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub name: String,
    /// argv; `command[0]` is looked up in the caller's `PATH` (from `env`).
    pub command: Vec<String>,
    /// None: the trust level's network policy, or deny without one.
    #[serde(default)]
    pub net: Option<NetPolicy>,
    /// A preset from the daemon's policy file (default tokens, budget, network, exec rule);
    /// the other fields of this request override it.
    #[serde(default)]
    pub trust: Option<String>,
    /// Limits set here override the trust level's.
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub allow: Vec<FileGrant>,
    /// The caller's environment, given to the agent as it is.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory of the agent's first process.
    pub cwd: PathBuf,
    pub stdio: StdioMode,
    /// The terminal's first window size (`stdio: tty`); default 24x80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<crate::terminal::WindowSize>,
    /// Run the agent even where no backend can enforce what it asks (file tokens, network
    /// policy): it is then listed as UNCONFINED, and the spawn audited as such.
    #[serde(default)]
    pub allow_unconfined: bool,
    /// The session it belongs to: checkpoints freeze it, rollbacks stop or restore it.
    #[serde(default)]
    pub session: Option<String>,
    /// Start it again after a reboot, or when a starting daemon finds it gone (detached
    /// agents only). Forgotten when an operator kills it or it exits with status 0.
    #[serde(default)]
    pub restartable: bool,
    /// Files with more than one hard link (file-confined agents); None: the trust
    /// level's setting, or `follow` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlinks: Option<Hardlinks>,
    /// Run the agent as this user (a name or a numeric uid) with its primary group and
    /// supplementary groups; None: as the caller. Only root may name another user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// How an agent's processes are hardened besides its cgroup, tokens and network policy
/// (on every kernel; `rush doctor` says what each part stops).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardening {
    /// In a cgroup namespace rooted at its cgroup.
    pub cgroup_namespace: bool,
    /// In a private mount namespace whose cgroupfs is read-only and shows only its cgroup.
    pub private_cgroupfs: bool,
    /// Capabilities no process of the agent can hold (bounding set and all others).
    pub capabilities_dropped: Vec<String>,
    /// Under the seccomp filter (bpf, keyrings, perf, fanotify, mounts, modules, ...).
    pub seccomp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioMode {
    /// stdin, stdout, stderr ride on the request line as SCM_RIGHTS, in that order.
    Passed,
    /// Detached: stdin is /dev/null, stdout and stderr go to the agent's log file.
    Log,
    /// Detached, on a pseudo-terminal the daemon owns: `AttachTerminal` and `SendTerminal`
    /// reach it; its output is kept as scroll-back and, as plain text, in the log file.
    Tty,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub agent: Option<String>,
    /// Only records at or after this time (Unix milliseconds).
    #[serde(default)]
    pub since_unix_ms: Option<u64>,
    /// Only records at or before this time (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_unix_ms: Option<u64>,
    /// Only records of this session (see `AuditRecord::session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only records of these kinds (`AuditEvent::kind`); empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Only records of requests made by this uid (events with a `caller_uid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_uid: Option<u32>,
    /// At most this many of the newest records (0 = all).
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        daemon_version: String,
        protocol_version: u32,
        caller: CallerInfo,
    },
    Spawned {
        agent: AgentInfo,
    },
    Exited {
        name: String,
        status: ExitStatus,
    },
    Agents {
        agents: Vec<AgentInfo>,
    },
    Agent {
        agent: AgentInfo,
    },
    Killed {
        name: String,
        processes_killed: u32,
    },
    AuditEvents {
        events: Vec<AuditRecord>,
    },
    /// The subscription is in place: every later event that passes the filter follows.
    Subscribed,
    /// Attached to the agent's terminal as `mode` (a writer that found another writer
    /// attached is told so by a notice frame, and reads only until it leaves); terminal
    /// frames follow on this connection.
    TerminalAttached {
        name: String,
        mode: crate::terminal::AttachMode,
    },
    /// `SendTerminal` typed this many bytes.
    TerminalSent {
        bytes: u64,
    },
    /// One event of a subscription.
    Event {
        event: crate::events::Event,
    },
    /// A chunk of captured output, lossily decoded as UTF-8. The last reply to an
    /// `AgentLogs` request has `end: true` (after the agent exits, with `follow`).
    Logs {
        data: String,
        #[serde(default)]
        end: bool,
    },
    Doctor {
        report: DoctorReport,
    },
    Granted {
        token: TokenInfo,
        /// What the grant did to the running agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<ChangeEffect>,
    },
    Revoked {
        tokens: Vec<TokenInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<ChangeEffect>,
    },
    ChangeEffect {
        effect: ChangeEffect,
    },
    Capabilities {
        tokens: Vec<TokenInfo>,
    },
    Committed {
        outcomes: Vec<CommitOutcome>,
    },
    Session {
        session: SessionInfo,
    },
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    SessionRemoved {
        name: String,
        /// Where its live tree was put back.
        workspace: PathBuf,
    },
    Checkpointed {
        checkpoint: CheckpointInfo,
    },
    RolledBack {
        report: RollbackReport,
    },
    TimelineChanged {
        timeline: TimelineInfo,
    },
    Timeline {
        timeline: Timeline,
    },
    Diff {
        diff: DiffReport,
    },
    CheckpointsDeleted {
        names: Vec<String>,
    },
    SessionDetail {
        detail: SessionDetail,
    },
    SessionKv {
        session: String,
        pairs: Vec<KeyValue>,
    },
    Attached {
        session: SessionInfo,
        attachment: Attachment,
    },
    Detached {
        session: String,
        /// The working directory saved.
        #[serde(default)]
        cwd: Option<PathBuf>,
    },
    Intent {
        intent: crate::coordination::Intent,
    },
    Intents {
        intents: Vec<crate::coordination::Intent>,
    },
    Claim {
        outcome: crate::coordination::ClaimOutcome,
    },
    Released {
        claim: crate::coordination::Claim,
    },
    Claims {
        claims: Vec<crate::coordination::Claim>,
    },
    Published {
        result: crate::coordination::ResultInfo,
    },
    Results {
        results: Vec<crate::coordination::ResultInfo>,
    },
    Delegated {
        task: crate::coordination::Task,
        /// The agent spawned for it (`spawn`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spawned: Option<AgentInfo>,
    },
    Inbox {
        tasks: Vec<crate::coordination::Task>,
        /// The agent's requests decided since it last looked (here or by `wait_approval`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<crate::approval::Approval>,
    },
    Approval {
        approval: crate::approval::Approval,
    },
    Approvals {
        approvals: Vec<crate::approval::Approval>,
        #[serde(default)]
        batches: Vec<crate::approval::ApprovalBatch>,
    },
    Decided {
        decided: Vec<crate::approval::Approval>,
    },
    QueueSettings {
        settings: crate::approval::QueueSettings,
    },
    Assessment {
        assessment: crate::gate::Assessment,
    },
    ExecutionRecorded {
        /// Guardrails the outcome taught (usually none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        learned: Vec<crate::gate::Guardrail>,
    },
    Guardrails {
        guardrails: Vec<crate::gate::Guardrail>,
    },
    GuardrailsImported {
        added: Vec<crate::gate::Guardrail>,
        /// Already there (same scope and pattern): kept as they were.
        existing: Vec<crate::gate::Guardrail>,
    },
    Workspace {
        workspace: crate::workspace::WorkspaceInfo,
        /// What could not be done as asked (state copied, not cloned).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    Workspaces {
        workspaces: Vec<crate::workspace::WorkspaceInfo>,
    },
    Merge {
        merge: crate::workspace::MergeJob,
    },
    Merges {
        merges: Vec<crate::workspace::MergeJob>,
    },
    WorkspacesRemoved {
        removed: Vec<crate::workspace::RemovedWorkspace>,
    },
}

impl Response {
    /// The reply's name: its `type` on the wire (a unit test holds the two together).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Spawned { .. } => "spawned",
            Response::Exited { .. } => "exited",
            Response::Agents { .. } => "agents",
            Response::Agent { .. } => "agent",
            Response::Killed { .. } => "killed",
            Response::AuditEvents { .. } => "audit_events",
            Response::Subscribed => "subscribed",
            Response::TerminalAttached { .. } => "terminal_attached",
            Response::TerminalSent { .. } => "terminal_sent",
            Response::Event { .. } => "event",
            Response::Logs { .. } => "logs",
            Response::Doctor { .. } => "doctor",
            Response::Granted { .. } => "granted",
            Response::Revoked { .. } => "revoked",
            Response::ChangeEffect { .. } => "change_effect",
            Response::Capabilities { .. } => "capabilities",
            Response::Committed { .. } => "committed",
            Response::Session { .. } => "session",
            Response::Sessions { .. } => "sessions",
            Response::SessionRemoved { .. } => "session_removed",
            Response::Checkpointed { .. } => "checkpointed",
            Response::RolledBack { .. } => "rolled_back",
            Response::TimelineChanged { .. } => "timeline_changed",
            Response::Timeline { .. } => "timeline",
            Response::Diff { .. } => "diff",
            Response::CheckpointsDeleted { .. } => "checkpoints_deleted",
            Response::SessionDetail { .. } => "session_detail",
            Response::SessionKv { .. } => "session_kv",
            Response::Attached { .. } => "attached",
            Response::Detached { .. } => "detached",
            Response::Intent { .. } => "intent",
            Response::Intents { .. } => "intents",
            Response::Claim { .. } => "claim",
            Response::Released { .. } => "released",
            Response::Claims { .. } => "claims",
            Response::Published { .. } => "published",
            Response::Results { .. } => "results",
            Response::Delegated { .. } => "delegated",
            Response::Inbox { .. } => "inbox",
            Response::Approval { .. } => "approval",
            Response::Approvals { .. } => "approvals",
            Response::Decided { .. } => "decided",
            Response::QueueSettings { .. } => "queue_settings",
            Response::Assessment { .. } => "assessment",
            Response::ExecutionRecorded { .. } => "execution_recorded",
            Response::Guardrails { .. } => "guardrails",
            Response::GuardrailsImported { .. } => "guardrails_imported",
            Response::Workspace { .. } => "workspace",
            Response::Workspaces { .. } => "workspaces",
            Response::Merge { .. } => "merge",
            Response::Merges { .. } => "merges",
            Response::WorkspacesRemoved { .. } => "workspaces_removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub role: CallerRole,
}

/// Who sends a request, as the daemon identifies it: from the credentials of the process
/// that wrote it and its cgroup, never from anything the request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// root or the operator group, outside any agent.
    Operator,
    /// A process inside an agent's cgroup (whatever its uid): acts as that agent only.
    Agent,
    /// Anyone else.
    Other,
}

impl CallerRole {
    pub fn principal(&self) -> Principal {
        match self {
            CallerRole::Operator => Principal::Operator,
            CallerRole::Agent { .. } => Principal::Agent,
            CallerRole::Unprivileged => Principal::Other,
        }
    }
}

impl fmt::Display for CallerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerRole::Operator => f.write_str("the operator"),
            CallerRole::Agent { name } => write!(f, "agent {name:?}"),
            CallerRole::Unprivileged => f.write_str("an unprivileged caller"),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Principal::Operator => "root or the operator group",
            Principal::Agent => "an agent (about itself)",
            Principal::Other => "anyone",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallerRole {
    /// root or a member of the configured operator group, outside any agent.
    Operator,
    /// A process inside an agent's cgroup, whatever its uid: it may only act as itself.
    Agent { name: String },
    /// Anyone else: may read the daemon's version and its doctor report.
    Unprivileged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    /// The agent's identity in the kernel: its cgroup v2 id.
    pub cgroup_id: u64,
    pub cgroup_path: PathBuf,
    /// The agent's first process.
    pub pid: u32,
    pub uid: u32,
    pub command: Vec<String>,
    pub net: NetPolicy,
    pub state: AgentState,
    /// The trust level it was spawned with.
    #[serde(default)]
    pub trust: Option<String>,
    /// Its limits (trust level and flags combined).
    #[serde(default)]
    pub budget: Budget,
    /// Why it is frozen, if it is (on the wire: one comma-joined string, absent when not).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::wire::comma_list")]
    pub paused: Vec<PauseReason>,
    /// Used against limit, per resource; filled by `ListAgents` and `AgentStatus`.
    #[serde(default)]
    pub usage: Vec<BudgetUsage>,
    /// The metering proxy its model API calls go through (agents with a cost budget;
    /// also in their environment as RUSH_METER_URL, OPENAI_BASE_URL, ANTHROPIC_BASE_URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_url: Option<String>,
    /// Processes currently in the agent's cgroup.
    pub processes: u32,
    pub started_unix_ms: u64,
    /// Which kernel mechanisms confine this agent.
    pub enforcement: Vec<Enforcement>,
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    pub detached: bool,
    /// It runs on a terminal the daemon owns (`rush agent attach`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// What this agent asked for that nothing enforces (spawned with `allow_unconfined`
    /// where no backend could): e.g. `files: ...why`. Empty for a confined agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfined: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Spawned with `restartable`: the daemon starts it again after a reboot.
    #[serde(default)]
    pub restartable: bool,
    /// Its hard-link mode (what a grant on a directory gives to files with several links).
    #[serde(default)]
    pub hardlinks: Hardlinks,
    #[serde(default)]
    pub hardening: Hardening,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Running,
    Exited,
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentState::Running => "running",
            AgentState::Exited => "exited",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 1,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// Raw facts, each probed rather than read from config.
    pub probes: Vec<Probe>,
    /// What Rush can promise on this machine, derived from the probes.
    pub guarantees: Vec<Guarantee>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarantee {
    pub name: String,
    pub holds: bool,
    /// How it is enforced when it holds, why not when it does not.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// One line, naming the input or object concerned and why.
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }
}

impl ApiError {
    /// The daemon's answer to a request in protocol version `client` (not ours).
    pub fn version_mismatch(client: u32) -> Self {
        ApiError::new(
            ErrorKind::VersionMismatch,
            format!(
                "this client speaks protocol version {client} and rush-agentd speaks version {}: use the \
                 rush of the daemon's release",
                crate::PROTOCOL_VERSION
            ),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line was not a valid request (bad JSON, unknown type, missing field).
    BadRequest,
    /// A well-formed request with a value that cannot be used.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// The kernel cannot keep a guarantee the request asks for.
    Unsupported,
    /// Out of room (the snapshot store is full).
    ResourceExhausted,
    VersionMismatch,
    Internal,
}

#[cfg(test)]
mod tests;

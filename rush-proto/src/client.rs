//! A small blocking client: what the `rush` CLI and the tests use to talk to the daemon.
//!
//! Blocking std I/O on purpose: a CLI call is one connect, one line out, one line back,
//! and an async runtime would cost more start-up time than the whole exchange.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use serde::Deserialize;

use crate::PROTOCOL_VERSION;
use crate::api::{
    AgentInfo, ApiError, AuditQuery, CallerInfo, ChangeEffect, CommitOutcome, DoctorReport, ExitStatus,
    GrantRequest, Reply, ReplyEnvelope, Request, RequestEnvelope, Response, RevokeTarget, SpawnRequest,
    TokenInfo,
};
use crate::approval::{Approval, ApprovalBatch, ApprovalRequest, DecideRequest, QueueChange, QueueSettings};
use crate::audit::AuditRecord;
use crate::budget::Budget;
use crate::coordination::{
    BroadcastRequest, Claim, ClaimOutcome, ClaimRequest, DelegateRequest, Intent, PublishRequest, ResultInfo,
    ResultsQuery, Task,
};
use crate::session::{
    Attachment, CheckpointInfo, DiffReport, KeyValue, Prune, RollbackReport, SessionDetail, SessionInfo,
    SessionRef, ShellState, Timeline, TimelineInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "rush-agentd is not running: nothing listens on {path} (start it with `rush-agentd`, or set --socket / RUSH_SOCKET)"
    )]
    NotRunning { path: PathBuf },
    #[error("refusing to talk to {path}: {why}; a daemon socket must be owned by root or by you")]
    UntrustedSocket { path: PathBuf, why: String },
    #[error("cannot reach the daemon at {path}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("lost the connection to the daemon")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection before answering")]
    Closed,
    #[error("unreadable reply from the daemon: {0}")]
    Protocol(String),
    /// The daemon answers in another protocol version (an older or newer rush-agentd).
    #[error(
        "the daemon speaks protocol version {daemon} and this rush speaks version {ours}: use the rush of \
         the daemon's release (or restart the daemon after an upgrade)"
    )]
    DaemonVersion { daemon: u32, ours: u32 },
    /// A reply of a kind the request never gets.
    #[error("unexpected reply from the daemon to {request}: expected {expected}, got {got}")]
    Unexpected { request: &'static str, expected: &'static str, got: &'static str },
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// What `Hello` tells: the daemon's version and how it sees the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub daemon_version: String,
    pub protocol_version: u32,
    pub caller: CallerInfo,
}

/// The envelope's version alone, for a reply line that does not parse as ours.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// One request, one reply of the kind it expects: `$pat => $out` picks it out of the
/// reply, anything else is [`ClientError::Unexpected`].
macro_rules! call {
    ($client:ident, $request:expr, $expected:literal, $pat:pat => $out:expr) => {{
        let request: Request = $request;
        let name = request.name();
        let id = $client.send(request, &[])?;
        match $client.recv_for(id)? {
            $pat => Ok($out),
            other => Err(ClientError::Unexpected { request: name, expected: $expected, got: other.name() }),
        }
    }};
}

pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    line: String,
}

impl Client {
    /// Connects after checking that `path` is a socket owned by root or by the caller:
    /// anyone else could have put it there to collect our terminal and requests.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning { path: path.to_owned() });
            }
            Err(source) => return Err(ClientError::Connect { path: path.to_owned(), source }),
        };
        if !meta.file_type().is_socket() {
            return Err(ClientError::UntrustedSocket {
                path: path.to_owned(),
                why: "it is not a socket".into(),
            });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(ClientError::UntrustedSocket {
                path: path.to_owned(),
                why: format!("it is owned by uid {}", meta.uid()),
            });
        }
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::NotRunning { path: path.to_owned() });
            }
            Err(source) => return Err(ClientError::Connect { path: path.to_owned(), source }),
        };
        Client::from_stream(stream)
    }

    /// A client on an already connected stream (tests, fakes).
    pub fn from_stream(stream: UnixStream) -> Result<Client, ClientError> {
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { writer: stream, reader, next_id: 1, line: String::new() })
    }

    /// Another handle on the connection: shutting it down from another thread ends a
    /// blocking read of a stream (events, logs) on this one.
    pub fn shutdown_handle(&self) -> std::io::Result<UnixStream> {
        self.writer.try_clone()
    }

    /// Sends one request and returns its single reply, whatever its kind; an error reply
    /// becomes `Err`. The typed calls below check the kind.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request, &[])?;
        self.recv_for(id)
    }

    /// Sends one request line; `fds` ride along as SCM_RIGHTS. Returns the request id.
    pub fn send(&mut self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let env = RequestEnvelope { version: PROTOCOL_VERSION, id, request };
        let mut line = serde_json::to_vec(&env).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if fds.is_empty() {
            self.writer.write_all(&line)?;
        } else {
            let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            // The fds attach to the first chunk; the rest of the line follows plainly.
            let sent = sendmsg::<()>(
                self.writer.as_raw_fd(),
                &[IoSlice::new(&line)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .map_err(std::io::Error::from)?;
            self.writer.write_all(&line[sent..])?;
        }
        Ok(id)
    }

    /// The next reply line, whatever request it answers. A reply in another protocol
    /// version is [`ClientError::DaemonVersion`], whether or not it parses as ours.
    pub fn recv(&mut self) -> Result<ReplyEnvelope, ClientError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(ClientError::Closed);
        }
        let version_error = |daemon: u32| ClientError::DaemonVersion { daemon, ours: PROTOCOL_VERSION };
        match serde_json::from_str::<ReplyEnvelope>(&self.line) {
            Ok(env) if env.version != PROTOCOL_VERSION => Err(version_error(env.version)),
            Ok(env) => Ok(env),
            Err(e) => match serde_json::from_str::<VersionOnly>(&self.line) {
                Ok(v) if v.version != PROTOCOL_VERSION => Err(version_error(v.version)),
                _ => Err(ClientError::Protocol(e.to_string())),
            },
        }
    }

    /// The next reply to `id`, as a Result.
    pub fn recv_for(&mut self, id: u64) -> Result<Response, ClientError> {
        loop {
            let env = self.recv()?;
            if env.id != id && env.id != 0 {
                continue;
            }
            return match env.reply {
                Reply::Ok(r) => Ok(r),
                Reply::Err(e) => Err(ClientError::Api(e)),
            };
        }
    }

    // Typed calls: one per request, each returning what that request's reply carries.

    pub fn hello(&mut self) -> Result<Hello, ClientError> {
        call!(self, Request::Hello, "hello", Response::Hello { daemon_version, protocol_version, caller } => {
            Hello { daemon_version, protocol_version, caller }
        })
    }

    pub fn doctor(&mut self) -> Result<DoctorReport, ClientError> {
        call!(self, Request::Doctor, "doctor", Response::Doctor { report } => report)
    }

    /// A detached spawn (`stdio: log`).
    pub fn spawn(&mut self, req: SpawnRequest) -> Result<AgentInfo, ClientError> {
        call!(self, Request::Spawn(req), "spawned", Response::Spawned { agent } => agent)
    }

    /// A foreground spawn: `stdio` (stdin, stdout, stderr) go to the agent. Returns the
    /// request id, for [`Client::exited`], and the agent.
    pub fn spawn_foreground(
        &mut self,
        req: SpawnRequest,
        stdio: &[BorrowedFd<'_>; 3],
    ) -> Result<(u64, AgentInfo), ClientError> {
        let id = self.send(Request::Spawn(req), stdio)?;
        match self.recv_for(id)? {
            Response::Spawned { agent } => Ok((id, agent)),
            other => {
                Err(ClientError::Unexpected { request: "spawn", expected: "spawned", got: other.name() })
            }
        }
    }

    /// The exit status of the foreground agent spawned by request `id`.
    pub fn exited(&mut self, id: u64) -> Result<ExitStatus, ClientError> {
        match self.recv_for(id)? {
            Response::Exited { status, .. } => Ok(status),
            other => Err(ClientError::Unexpected { request: "spawn", expected: "exited", got: other.name() }),
        }
    }

    pub fn list_agents(&mut self) -> Result<Vec<AgentInfo>, ClientError> {
        call!(self, Request::ListAgents, "agents", Response::Agents { agents } => agents)
    }

    /// One agent's status; `None`: the caller's own (agents only).
    pub fn agent_status(&mut self, name: Option<&str>) -> Result<AgentInfo, ClientError> {
        call!(self, Request::AgentStatus { name: name.map(str::to_owned) }, "agent",
            Response::Agent { agent } => agent)
    }

    /// How many processes were killed.
    pub fn kill_agent(&mut self, name: &str) -> Result<u32, ClientError> {
        call!(self, Request::KillAgent { name: name.to_owned() }, "killed",
            Response::Killed { processes_killed, .. } => processes_killed)
    }

    pub fn pause_agent(&mut self, name: &str) -> Result<AgentInfo, ClientError> {
        call!(self, Request::PauseAgent { name: name.to_owned() }, "agent", Response::Agent { agent } => agent)
    }

    pub fn resume_agent(&mut self, name: &str, budget: Option<Budget>) -> Result<AgentInfo, ClientError> {
        call!(self, Request::ResumeAgent { name: name.to_owned(), budget }, "agent",
            Response::Agent { agent } => agent)
    }

    /// The records the query selects; with `follow`, more come from [`Client::audit_next`]
    /// with the returned request id.
    pub fn audit(&mut self, query: AuditQuery) -> Result<(u64, Vec<AuditRecord>), ClientError> {
        let id = self.send(Request::Audit(query), &[])?;
        Ok((id, self.audit_next(id)?))
    }

    pub fn audit_next(&mut self, id: u64) -> Result<Vec<AuditRecord>, ClientError> {
        match self.recv_for(id)? {
            Response::AuditEvents { events } => Ok(events),
            other => {
                Err(ClientError::Unexpected { request: "audit", expected: "audit_events", got: other.name() })
            }
        }
    }

    /// Subscribes to the daemon's event stream; events come from [`Client::next_event`]
    /// with the returned request id. Returns once the subscription is in place.
    pub fn subscribe(&mut self, filter: crate::events::SubscribeRequest) -> Result<u64, ClientError> {
        let id = self.send(Request::Subscribe(filter), &[])?;
        match self.recv_for(id)? {
            Response::Subscribed => Ok(id),
            other => Err(ClientError::Unexpected {
                request: "subscribe",
                expected: "subscribed",
                got: other.name(),
            }),
        }
    }

    /// The next event of a subscription (`Event::Lagged` is the last one).
    pub fn next_event(&mut self, id: u64) -> Result<crate::events::Event, ClientError> {
        match self.recv_for(id)? {
            Response::Event { event } => Ok(event),
            other => {
                Err(ClientError::Unexpected { request: "subscribe", expected: "event", got: other.name() })
            }
        }
    }

    /// Starts reading an agent's captured output: chunks come from [`Client::logs_next`].
    pub fn agent_logs(&mut self, name: &str, follow: bool) -> Result<u64, ClientError> {
        self.send(Request::AgentLogs { name: name.to_owned(), follow }, &[])
    }

    /// The next chunk, and whether it is the last.
    pub fn logs_next(&mut self, id: u64) -> Result<(String, bool), ClientError> {
        match self.recv_for(id)? {
            Response::Logs { data, end } => Ok((data, end)),
            other => {
                Err(ClientError::Unexpected { request: "agent_logs", expected: "logs", got: other.name() })
            }
        }
    }

    /// Attaches to an agent's terminal: the connection, now carrying terminal frames, and
    /// the bytes of them already read.
    pub fn attach_terminal(
        mut self,
        name: &str,
        mode: crate::terminal::AttachMode,
        size: crate::terminal::WindowSize,
    ) -> Result<(UnixStream, Vec<u8>), ClientError> {
        let id = self.send(Request::AttachTerminal { name: name.to_owned(), mode, size }, &[])?;
        match self.recv_for(id)? {
            Response::TerminalAttached { .. } => {
                let early = self.reader.buffer().to_vec();
                Ok((self.writer, early))
            }
            other => Err(ClientError::Unexpected {
                request: "attach_terminal",
                expected: "terminal_attached",
                got: other.name(),
            }),
        }
    }

    pub fn send_terminal(&mut self, name: &str, text: &str) -> Result<u64, ClientError> {
        call!(self, Request::SendTerminal { name: name.to_owned(), text: text.to_owned() }, "terminal_sent",
            Response::TerminalSent { bytes } => bytes)
    }

    pub fn grant(&mut self, req: GrantRequest) -> Result<(TokenInfo, Option<ChangeEffect>), ClientError> {
        call!(self, Request::Grant(req), "granted", Response::Granted { token, effect } => (token, effect))
    }

    pub fn revoke(
        &mut self,
        agent: &str,
        target: RevokeTarget,
    ) -> Result<(Vec<TokenInfo>, Option<ChangeEffect>), ClientError> {
        call!(self, Request::Revoke { agent: agent.to_owned(), target }, "revoked",
            Response::Revoked { tokens, effect } => (tokens, effect))
    }

    pub fn change_effect(
        &mut self,
        agent: &str,
        revoke: Option<RevokeTarget>,
    ) -> Result<ChangeEffect, ClientError> {
        call!(self, Request::ChangeEffect { agent: agent.to_owned(), revoke }, "change_effect",
            Response::ChangeEffect { effect } => effect)
    }

    pub fn list_capabilities(&mut self, agent: Option<&str>) -> Result<Vec<TokenInfo>, ClientError> {
        call!(self, Request::ListCapabilities { agent: agent.map(str::to_owned) }, "capabilities",
            Response::Capabilities { tokens } => tokens)
    }

    /// Runs conditions of `agent`'s tokens; `None`: the caller's own (agents only).
    pub fn commit(
        &mut self,
        agent: Option<&str>,
        token: Option<u64>,
    ) -> Result<Vec<CommitOutcome>, ClientError> {
        call!(self, Request::Commit { agent: agent.map(str::to_owned), token }, "committed",
            Response::Committed { outcomes } => outcomes)
    }

    pub fn create_session(&mut self, name: &str, workspace: PathBuf) -> Result<SessionInfo, ClientError> {
        call!(self, Request::CreateSession { name: name.to_owned(), workspace }, "session",
            Response::Session { session } => session)
    }

    pub fn list_sessions(&mut self) -> Result<Vec<SessionInfo>, ClientError> {
        call!(self, Request::ListSessions, "sessions", Response::Sessions { sessions } => sessions)
    }

    /// Where the session's live tree was put back.
    pub fn remove_session(&mut self, name: &str) -> Result<PathBuf, ClientError> {
        call!(self, Request::RemoveSession { name: name.to_owned() }, "session_removed",
            Response::SessionRemoved { workspace, .. } => workspace)
    }

    pub fn checkpoint(
        &mut self,
        session: SessionRef,
        name: &str,
        with_processes: bool,
        shell: Option<ShellState>,
    ) -> Result<CheckpointInfo, ClientError> {
        call!(self, Request::Checkpoint { session, name: name.to_owned(), with_processes, shell }, "checkpointed",
            Response::Checkpointed { checkpoint } => checkpoint)
    }

    pub fn rollback(&mut self, session: SessionRef, name: &str) -> Result<RollbackReport, ClientError> {
        call!(self, Request::Rollback { session, name: name.to_owned() }, "rolled_back",
            Response::RolledBack { report } => report)
    }

    pub fn branch(
        &mut self,
        session: SessionRef,
        name: &str,
        from: Option<String>,
    ) -> Result<TimelineInfo, ClientError> {
        call!(self, Request::Branch { session, name: name.to_owned(), from }, "timeline_changed",
            Response::TimelineChanged { timeline } => timeline)
    }

    pub fn switch_timeline(&mut self, session: SessionRef, name: &str) -> Result<TimelineInfo, ClientError> {
        call!(self, Request::SwitchTimeline { session, name: name.to_owned() }, "timeline_changed",
            Response::TimelineChanged { timeline } => timeline)
    }

    pub fn list_timeline(&mut self, session: SessionRef) -> Result<Timeline, ClientError> {
        call!(self, Request::ListTimeline { session }, "timeline", Response::Timeline { timeline } => timeline)
    }

    pub fn diff(&mut self, session: SessionRef, a: &str, b: &str) -> Result<DiffReport, ClientError> {
        call!(self, Request::Diff { session, a: a.to_owned(), b: b.to_owned() }, "diff",
            Response::Diff { diff } => diff)
    }

    /// The checkpoints deleted.
    pub fn delete_checkpoint(&mut self, session: SessionRef, name: &str) -> Result<Vec<String>, ClientError> {
        call!(self, Request::DeleteCheckpoint { session, name: name.to_owned() }, "checkpoints_deleted",
            Response::CheckpointsDeleted { names } => names)
    }

    pub fn prune_checkpoints(
        &mut self,
        session: SessionRef,
        prune: Prune,
    ) -> Result<Vec<String>, ClientError> {
        call!(self, Request::PruneCheckpoints { session, prune }, "checkpoints_deleted",
            Response::CheckpointsDeleted { names } => names)
    }

    pub fn show_session(&mut self, session: SessionRef) -> Result<SessionDetail, ClientError> {
        call!(self, Request::ShowSession { session }, "session_detail",
            Response::SessionDetail { detail } => detail)
    }

    /// The session's name and the pair set.
    pub fn session_set(
        &mut self,
        session: SessionRef,
        key: String,
        value: String,
    ) -> Result<(String, KeyValue), ClientError> {
        let (session, pairs) = call!(self, Request::SessionSet { session, key, value }, "session_kv",
            Response::SessionKv { session, pairs } => (session, pairs))?;
        Ok((session, one_pair(pairs)?))
    }

    /// The session's name and its pairs: one (`key`) or all.
    pub fn session_get(
        &mut self,
        session: SessionRef,
        key: Option<String>,
    ) -> Result<(String, Vec<KeyValue>), ClientError> {
        let one = key.is_some();
        let (session, pairs) = call!(self, Request::SessionGet { session, key }, "session_kv",
            Response::SessionKv { session, pairs } => (session, pairs))?;
        if one {
            return Ok((session, vec![one_pair(pairs)?]));
        }
        Ok((session, pairs))
    }

    /// The session's name and the pair removed.
    pub fn session_unset(
        &mut self,
        session: SessionRef,
        key: String,
    ) -> Result<(String, KeyValue), ClientError> {
        let (session, pairs) = call!(self, Request::SessionUnset { session, key }, "session_kv",
            Response::SessionKv { session, pairs } => (session, pairs))?;
        Ok((session, one_pair(pairs)?))
    }

    pub fn attach_session(
        &mut self,
        session: SessionRef,
        pid: i32,
        tty: Option<String>,
    ) -> Result<(SessionInfo, Attachment), ClientError> {
        call!(self, Request::AttachSession { session, pid, tty }, "attached",
            Response::Attached { session, attachment } => (session, attachment))
    }

    /// The session's name and the working directory saved.
    pub fn detach_session(
        &mut self,
        session: SessionRef,
        pid: i32,
        cwd: Option<PathBuf>,
    ) -> Result<(String, Option<PathBuf>), ClientError> {
        call!(self, Request::DetachSession { session, pid, cwd }, "detached",
            Response::Detached { session, cwd } => (session, cwd))
    }

    // Coordination. `agent`: whom the operator acts for; an agent leaves it out (or names
    // itself): the daemon fills it in from the caller's cgroup.

    pub fn broadcast(&mut self, req: BroadcastRequest) -> Result<Intent, ClientError> {
        call!(self, Request::Broadcast(req), "intent", Response::Intent { intent } => intent)
    }

    /// Live intents (an agent sees its session's), those overlapping `paths` marked.
    pub fn query_intents(
        &mut self,
        paths: Vec<String>,
        session: Option<String>,
    ) -> Result<Vec<Intent>, ClientError> {
        call!(self, Request::QueryIntents { paths, session }, "intents",
            Response::Intents { intents } => intents)
    }

    /// Won or lost, a claim is `Ok`: a lost one carries the holder's claim.
    pub fn claim(&mut self, req: ClaimRequest) -> Result<ClaimOutcome, ClientError> {
        call!(self, Request::Claim(req), "claim", Response::Claim { outcome } => outcome)
    }

    pub fn renew(
        &mut self,
        agent: Option<&str>,
        task: &str,
        ttl_secs: Option<u64>,
    ) -> Result<ClaimOutcome, ClientError> {
        call!(self, Request::Renew { agent: agent.map(str::to_owned), task: task.to_owned(), ttl_secs }, "claim",
            Response::Claim { outcome } => outcome)
    }

    /// The claim released. The operator leaving `agent` out releases whoever holds it.
    pub fn release(&mut self, agent: Option<&str>, task: &str) -> Result<Claim, ClientError> {
        call!(self, Request::Release { agent: agent.map(str::to_owned), task: task.to_owned() }, "released",
            Response::Released { claim } => claim)
    }

    /// Live claims; with `path`, those covering it.
    pub fn list_claims(
        &mut self,
        path: Option<String>,
        session: Option<String>,
    ) -> Result<Vec<Claim>, ClientError> {
        call!(self, Request::ListClaims { path, session }, "claims", Response::Claims { claims } => claims)
    }

    pub fn publish(&mut self, req: PublishRequest) -> Result<ResultInfo, ClientError> {
        call!(self, Request::Publish(req), "published", Response::Published { result } => result)
    }

    /// The results the caller may read; with `key`, that one with its content (`NotFound`
    /// if it is not published, after `wait_secs` if given).
    pub fn results(&mut self, query: ResultsQuery) -> Result<Vec<ResultInfo>, ClientError> {
        call!(self, Request::Results(query), "results", Response::Results { results } => results)
    }

    /// The task, and the agent spawned for it (`spawn`).
    pub fn delegate(&mut self, req: DelegateRequest) -> Result<(Task, Option<AgentInfo>), ClientError> {
        call!(self, Request::Delegate(req), "delegated",
            Response::Delegated { task, spawned } => (task, spawned))
    }

    /// The agent's open tasks, and its requests decided since it last looked; with
    /// `wait_secs`, waits up to that long for a task.
    pub fn inbox(
        &mut self,
        agent: Option<&str>,
        wait_secs: Option<u64>,
    ) -> Result<(Vec<Task>, Vec<Approval>), ClientError> {
        call!(self, Request::Inbox { agent: agent.map(str::to_owned), wait_secs }, "inbox",
            Response::Inbox { tasks, approvals } => (tasks, approvals))
    }

    /// The pending request, as made.
    pub fn request_approval(&mut self, req: ApprovalRequest) -> Result<Approval, ClientError> {
        call!(self, Request::RequestApproval(req), "approval", Response::Approval { approval } => approval)
    }

    /// Pending requests (with `all`, decided ones too) and the batches they fold into.
    pub fn list_approvals(
        &mut self,
        agent: Option<&str>,
        all: bool,
    ) -> Result<(Vec<Approval>, Vec<ApprovalBatch>), ClientError> {
        call!(self, Request::ListApprovals { agent: agent.map(str::to_owned), all }, "approvals",
            Response::Approvals { approvals, batches } => (approvals, batches))
    }

    /// The request; with `wait_secs`, once decided or after that long.
    pub fn wait_approval(
        &mut self,
        agent: Option<&str>,
        id: u64,
        wait_secs: Option<u64>,
    ) -> Result<Approval, ClientError> {
        call!(self, Request::WaitApproval { agent: agent.map(str::to_owned), id, wait_secs }, "approval",
            Response::Approval { approval } => approval)
    }

    pub fn cancel_approval(&mut self, agent: Option<&str>, id: u64) -> Result<Approval, ClientError> {
        call!(self, Request::CancelApproval { agent: agent.map(str::to_owned), id }, "approval",
            Response::Approval { approval } => approval)
    }

    /// The requests this decision answered.
    pub fn decide(&mut self, req: DecideRequest) -> Result<Vec<Approval>, ClientError> {
        call!(self, Request::Decide(req), "decided", Response::Decided { decided } => decided)
    }

    pub fn configure_queue(&mut self, change: QueueChange) -> Result<QueueSettings, ClientError> {
        call!(self, Request::ConfigureQueue(change), "queue_settings",
            Response::QueueSettings { settings } => settings)
    }

    pub fn show_queue(&mut self) -> Result<QueueSettings, ClientError> {
        call!(self, Request::ShowQueue, "queue_settings", Response::QueueSettings { settings } => settings)
    }

    /// The gate's verdict on a command (nothing runs).
    pub fn assess(
        &mut self,
        req: crate::gate::AssessRequest,
    ) -> Result<crate::gate::Assessment, ClientError> {
        call!(self, Request::Assess(req), "assessment", Response::Assessment { assessment } => assessment)
    }

    /// Report how a gated command ended; answers the guardrails it taught.
    pub fn record_execution(
        &mut self,
        record: crate::gate::ExecutionRecord,
    ) -> Result<Vec<crate::gate::Guardrail>, ClientError> {
        call!(self, Request::RecordExecution(record), "execution_recorded",
            Response::ExecutionRecorded { learned } => learned)
    }

    pub fn list_guardrails(&mut self) -> Result<Vec<crate::gate::Guardrail>, ClientError> {
        call!(self, Request::ListGuardrails, "guardrails", Response::Guardrails { guardrails } => guardrails)
    }

    /// The guardrail removed.
    pub fn remove_guardrail(&mut self, id: u64) -> Result<Vec<crate::gate::Guardrail>, ClientError> {
        call!(self, Request::RemoveGuardrail { id }, "guardrails", Response::Guardrails { guardrails } => guardrails)
    }

    /// (added, already there).
    #[allow(clippy::type_complexity)]
    pub fn import_guardrails(
        &mut self,
        guardrails: Vec<crate::gate::GuardrailSpec>,
    ) -> Result<(Vec<crate::gate::Guardrail>, Vec<crate::gate::Guardrail>), ClientError> {
        call!(self, Request::ImportGuardrails { guardrails }, "guardrails_imported",
            Response::GuardrailsImported { added, existing } => (added, existing))
    }

    /// The workspace made, and what could not be done as asked.
    pub fn create_workspace(
        &mut self,
        name: &str,
        repo: &std::path::Path,
        from: Option<String>,
        branch: Option<String>,
        no_state: bool,
    ) -> Result<(crate::workspace::WorkspaceInfo, Vec<String>), ClientError> {
        let req =
            Request::CreateWorkspace { name: name.to_owned(), repo: repo.to_owned(), from, branch, no_state };
        call!(self, req, "workspace", Response::Workspace { workspace, warnings } => (workspace, warnings))
    }

    pub fn list_workspaces(
        &mut self,
        repo: Option<std::path::PathBuf>,
    ) -> Result<Vec<crate::workspace::WorkspaceInfo>, ClientError> {
        call!(self, Request::ListWorkspaces { repo }, "workspaces", Response::Workspaces { workspaces } => workspaces)
    }

    pub fn merge_workspace(
        &mut self,
        req: crate::workspace::MergeRequest,
    ) -> Result<crate::workspace::MergeJob, ClientError> {
        call!(self, Request::MergeWorkspace(req), "merge", Response::Merge { merge } => merge)
    }

    pub fn list_merges(
        &mut self,
        workspace: Option<String>,
    ) -> Result<Vec<crate::workspace::MergeJob>, ClientError> {
        call!(self, Request::ListMerges { workspace }, "merges", Response::Merges { merges } => merges)
    }

    pub fn remove_workspace(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<Vec<crate::workspace::RemovedWorkspace>, ClientError> {
        call!(self, Request::RemoveWorkspace { name: name.to_owned(), force }, "workspaces_removed",
            Response::WorkspacesRemoved { removed } => removed)
    }

    pub fn collect_workspaces(
        &mut self,
        older_than_secs: u64,
        dry_run: bool,
    ) -> Result<Vec<crate::workspace::RemovedWorkspace>, ClientError> {
        call!(self, Request::CollectWorkspaces { older_than_secs, dry_run }, "workspaces_removed",
            Response::WorkspacesRemoved { removed } => removed)
    }
}

/// The one pair a request naming a key gets back.
fn one_pair(mut pairs: Vec<KeyValue>) -> Result<KeyValue, ClientError> {
    match pairs.len() {
        1 => Ok(pairs.remove(0)),
        n => Err(ClientError::Protocol(format!("{n} key-value pairs for one key"))),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A client whose daemon answers each request line with `reply(line)`.
    fn fake(reply: impl Fn(&str) -> String + Send + 'static) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let mut out = reply(&line);
                out.push('\n');
                if w.write_all(out.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
        });
        Client::from_stream(ours).unwrap()
    }

    fn id_of(line: &str) -> u64 {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_u64().unwrap()
    }

    #[test]
    fn an_older_daemon_is_named_with_both_versions() {
        // What a version-1 daemon answers a request of ours: its own refusal, in version 1.
        let mut c = fake(|line| {
            format!(
                r#"{{"version":1,"id":{},"reply":{{"err":{{"kind":"version_mismatch","message":"protocol version 2 is not supported; this daemon speaks 1"}}}}}}"#,
                id_of(line)
            )
        });
        let e = c.list_agents().unwrap_err();
        assert!(matches!(e, ClientError::DaemonVersion { daemon: 1, ours: PROTOCOL_VERSION }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("protocol version 1") && text.contains(&format!("version {PROTOCOL_VERSION}")),
            "{text}"
        );
        // A reply that does not even parse as ours still says which version it is.
        let mut c = fake(|line| {
            format!(r#"{{"version":1,"id":{},"reply":{{"ok":{{"type":"agents_v1"}}}}}}"#, id_of(line))
        });
        assert!(matches!(c.hello().unwrap_err(), ClientError::DaemonVersion { daemon: 1, .. }));
    }

    #[test]
    fn an_unknown_state_is_an_error_naming_field_and_value() {
        let mut c = fake(|line| {
            let agent = serde_json::json!({
                "name": "a", "cgroup_id": 1, "cgroup_path": "/c", "pid": 1, "uid": 0, "command": [],
                "net": "deny", "state": "running", "processes": 0, "started_unix_ms": 0,
                "enforcement": ["identity:cgroup-v2", "files:martian"], "detached": false,
            });
            serde_json::json!({"version": PROTOCOL_VERSION, "id": id_of(line),
                "reply": {"ok": {"type": "agent", "agent": agent}}})
            .to_string()
        });
        let e = c.agent_status(Some("a")).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
        assert!(text.contains("AgentInfo.enforcement") && text.contains("\"files:martian\""), "{text}");
    }

    #[test]
    fn a_reply_of_the_wrong_kind_is_unexpected_not_a_panic() {
        let mut c = fake(|line| {
            serde_json::json!({"version": PROTOCOL_VERSION, "id": id_of(line),
                "reply": {"ok": {"type": "sessions", "sessions": []}}})
            .to_string()
        });
        let e = c.list_agents().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Unexpected { request: "list_agents", expected: "agents", got: "sessions" }
            ),
            "{e:?}"
        );
        // The untyped call takes whatever comes.
        assert!(matches!(c.call(Request::ListAgents).unwrap(), Response::Sessions { .. }));
    }

    #[test]
    fn a_lost_claim_is_an_answer_naming_the_holder() {
        let mut c = fake(|line| {
            let req: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(req["request"]["type"], "claim");
            assert_eq!(req["request"]["task"], "t1");
            let claim = serde_json::json!({
                "task": "t1", "agent": "a", "lease": 7, "fencing": 3, "enforcement": "kernel",
                "paths": ["/w/x"], "enforced_paths": ["/w/x"], "acquired_unix_ms": 0, "expires_unix_ms": 9,
            });
            serde_json::json!({"version": PROTOCOL_VERSION, "id": id_of(line),
                "reply": {"ok": {"type": "claim", "outcome": {"won": false, "claim": claim}}}})
            .to_string()
        });
        let req = ClaimRequest {
            agent: Some("b".into()),
            task: "t1".into(),
            paths: vec![],
            ttl_secs: None,
            enforce: false,
        };
        let outcome = c.claim(req).unwrap();
        assert!(!outcome.won);
        assert_eq!((outcome.claim.agent.as_str(), outcome.claim.fencing), ("a", 3));
        // A reply of another kind is not taken for a claim.
        let mut c = fake(|line| {
            serde_json::json!({"version": PROTOCOL_VERSION, "id": id_of(line),
                "reply": {"ok": {"type": "inbox", "tasks": []}}})
            .to_string()
        });
        let e = c.release(None, "t1").unwrap_err();
        assert!(matches!(e, ClientError::Unexpected { request: "release", got: "inbox", .. }), "{e:?}");
    }

    #[test]
    fn the_daemons_refusal_of_an_old_client_names_both_versions() {
        let e = ApiError::version_mismatch(1);
        assert_eq!(e.kind, crate::ErrorKind::VersionMismatch);
        assert!(
            e.message.contains("protocol version 1")
                && e.message.contains(&format!("version {PROTOCOL_VERSION}"))
        );
    }
}

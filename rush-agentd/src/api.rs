//! The Unix-socket API: NDJSON requests in, replies out, callers identified by SO_PEERCRED
//! and their cgroup.

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use rush_proto::terminal::{AttachMode, Frame, Hello, WindowSize};
use rush_proto::{
    ApiError, AuditEvent, CallerInfo, CallerRole, ErrorKind, PROTOCOL_VERSION, Reply, ReplyEnvelope, Request,
    RequestEnvelope, Response, StdioMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::adapters::cgroup::process_cgroup_v2;
use crate::core::Asker;
use crate::core::{Caller, Fault};
use crate::services::agent::{AgentError, AgentManager};
use crate::services::approvals::{ApprovalError, Decider};
use crate::services::audit::AuditLog;
use crate::services::coordination::{Actor, CoordinationError};
use crate::services::events::Published;
use crate::services::gating::GatingError;
use crate::services::session::SessionError;
use crate::services::workspaces::WorkspaceError;
use rush_proto::approval::DecidedVia;

/// Longest request line accepted; a spawn with a large environment fits easily.
const MAX_LINE: usize = 1 << 20;
/// How long one event may wait for a subscriber's socket before the subscriber is dropped.
const SUBSCRIBER_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// More fds than one spawn needs are closed on arrival.
const MAX_PENDING_FDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("another rush-agentd is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("refusing to replace {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("socket {path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Binds the API socket. A stale socket from a dead daemon is replaced; a live daemon, or
/// a path that is not a root-owned socket, is left alone and reported.
pub async fn bind(path: &Path) -> Result<UnixListener, ApiServerError> {
    let io = |source| ApiServerError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(ApiServerError::Untrusted {
                    path: path.to_owned(),
                    why: "it is not a socket".into(),
                });
            }
            if meta.uid() != 0 {
                return Err(ApiServerError::Untrusted {
                    path: path.to_owned(),
                    why: format!("it is owned by uid {}, not root", meta.uid()),
                });
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(ApiServerError::AlreadyRunning(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(e) if e.kind() == IoKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Bound under a temporary name and renamed into place once set up: a client that
    // connected between listen() and SO_PASSCRED would keep a connection without
    // credentials (newer kernels copy the option to a connection at connect(), not at
    // accept()), and every request on it would be refused.
    let staging = path.with_extension(format!("binding-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(io)?;
    // Anyone may connect (agents, unprivileged users asking for `doctor`); what each
    // caller may do is decided per request from its credentials.
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
    // Every read carries the writer's credentials (SCM_CREDENTIALS); accepted connections
    // inherit the option.
    setsockopt(&listener, sockopt::PassCred, &true).map_err(|e| io(e.into()))?;
    std::fs::rename(&staging, path).map_err(io)?;
    Ok(listener)
}

pub struct ApiContext {
    pub agents: Arc<AgentManager>,
    pub sessions: Arc<crate::services::session::Sessions>,
    pub coordination: Arc<crate::services::coordination::Coordination>,
    pub approvals: Arc<crate::services::approvals::Approvals>,
    pub gating: Arc<crate::services::gating::Gating>,
    pub workspaces: Arc<crate::services::workspaces::Workspaces>,
    pub audit: Arc<AuditLog>,
    pub operator_gid: Option<u32>,
    /// The v2 cgroup path prefix of agents, e.g. "/rush/": callers under it are agents.
    pub agent_cgroup_prefix: String,
    /// The socket's path, exported to agents as `RUSH_SOCKET`.
    pub socket: PathBuf,
    pub doctor: Box<dyn Fn() -> rush_proto::DoctorReport + Send + Sync>,
}

pub async fn serve(listener: UnixListener, ctx: Arc<ApiContext>, mut shutdown: broadcast::Receiver<()>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move {
                        if let Err(e) = handle_connection(stream, ctx).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.recv() => return,
        }
    }
}

/// A caller: its credentials, and the principal they make it.
struct Peer {
    caller: Caller,
    role: CallerRole,
}

/// Who opened the connection (SO_PEERCRED, taken at connect).
fn identify(stream: &UnixStream, ctx: &ApiContext) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Ok(peer_of(cred.pid().unwrap_or(0), cred.uid(), cred.gid(), ctx))
}

/// The principal of process `pid` with these credentials.
fn peer_of(pid: i32, uid: u32, gid: u32, ctx: &ApiContext) -> Peer {
    let groups = proc_groups(pid).unwrap_or_else(|| vec![gid]);
    let caller = Caller { uid, gid, pid, groups };
    // An agent is an agent whatever its uid: root inside an agent is not an operator.
    let role = match process_cgroup_v2(pid).and_then(|cg| {
        cg.strip_prefix(&ctx.agent_cgroup_prefix).map(|rest| rest.split('/').next().unwrap_or("").to_owned())
    }) {
        Some(name) if !name.is_empty() => CallerRole::Agent { name },
        _ if uid == 0 => CallerRole::Operator,
        _ if ctx.operator_gid.is_some_and(|g| caller.groups.contains(&g) || gid == g) => CallerRole::Operator,
        _ => CallerRole::Unprivileged,
    };
    Peer { caller, role }
}

/// Who wrote a chunk of bytes, from its SCM_CREDENTIALS (the kernel's, taken at send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Process {
        pid: i32,
        uid: u32,
        gid: u32,
    },
    /// No credentials came with the bytes.
    Unknown,
}

/// The writer of a whole request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineWriter {
    One(Writer),
    /// Its bytes came from more than one process.
    Several,
}

/// Who sent this request: the process that wrote the line, never merely the one that
/// connected.
///
/// Why per request, and why both: SO_PEERCRED names whoever called connect(). A connected
/// socket is an fd like any other: handed with SCM_RIGHTS (or as stdin of a foreground
/// agent) to an agent, it would let that agent send requests as the operator who opened
/// it, and an agent handing its connection to another agent would let the second act as
/// the first. So each read carries the writer's credentials (SO_PASSCRED: the kernel
/// stamps every send with the sender's pid, uid and gid, and never merges two writers'
/// bytes into one read), the writer is identified by its own cgroup, and its principal
/// must be the opener's: a connection is its opener's and cannot be handed on, whoever
/// receives it (refusing such a socket outright is not possible: nothing marks it). The
/// opener check also covers what SCM_CREDENTIALS alone would not: a process with
/// CAP_SYS_ADMIN may send any pid as its own (agents have it dropped, and the BPF LSM
/// guard refuses it to them; the opener's credentials cannot be forged). The pid is held
/// as a pidfd while its cgroup is read, and refused if it exited meanwhile, so a reused
/// pid is not mistaken for the writer.
fn sender(opener: &Peer, writer: LineWriter, ctx: &ApiContext) -> Result<Peer, ApiError> {
    let denied = |why: String| ApiError::new(ErrorKind::PermissionDenied, why);
    let (pid, uid, gid) = match writer {
        LineWriter::One(Writer::Process { pid, uid, gid }) if pid > 0 => (pid, uid, gid),
        LineWriter::Several => {
            return Err(denied("the request line was written by more than one process".into()));
        }
        LineWriter::One(_) => return Err(denied("the request came without its writer's credentials".into())),
    };
    let gone = || {
        denied(format!("the process that sent the request (pid {pid}) exited before it could be identified"))
    };
    let pidfd = crate::core::process::pidfd_open(pid as u32).ok_or_else(gone)?;
    let peer = peer_of(pid, uid, gid, ctx);
    if exited(&pidfd) {
        return Err(gone());
    }
    if peer.role != opener.role {
        return Err(denied(format!(
            "this connection was opened by {} and the request was sent by {} (pid {pid}): a connection to \
             rush-agentd acts only for its opener and cannot be handed on",
            opener.role, peer.role
        )));
    }
    Ok(peer)
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout; poll(2) only writes `revents`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0 && p.revents != 0
}

fn proc_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// A connection's read side: bytes split into lines, plus the fds that arrived with them
/// and who wrote them.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// The writer of each chunk of `buf`, in order: (length, writer).
    writers: VecDeque<(usize, Writer)>,
    fds: VecDeque<OwnedFd>,
    eof: bool,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn { stream, buf: Vec::new(), writers: VecDeque::new(), fds: VecDeque::new(), eof: false }
    }

    /// The next complete line and who wrote it; None at end of stream (a partial last line
    /// is dropped).
    async fn read_line(&mut self) -> std::io::Result<Option<(Vec<u8>, LineWriter)>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let writer = self.take_writers(line.len());
                return Ok(Some((line, writer)));
            }
            if self.eof {
                return Ok(None);
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::new(IoKind::InvalidData, "request line longer than 1 MiB"));
            }
            self.fill().await?;
        }
    }

    /// The writer of the next `len` bytes of `buf`, dropping their chunks.
    fn take_writers(&mut self, mut len: usize) -> LineWriter {
        let mut seen: Option<Writer> = None;
        let mut several = false;
        while len > 0 {
            let Some((chunk, writer)) = self.writers.front_mut() else { break };
            several |= seen.is_some_and(|s| s != *writer);
            seen = Some(*writer);
            let used = len.min(*chunk);
            *chunk -= used;
            len -= used;
            if *chunk == 0 {
                self.writers.pop_front();
            }
        }
        if several { LineWriter::Several } else { LineWriter::One(seen.unwrap_or(Writer::Unknown)) }
    }

    /// Reads once (bytes, any SCM_RIGHTS fds, the writer's credentials). Sets `eof` when
    /// the peer has gone.
    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.stream.readable().await?;
            let fd = self.stream.as_raw_fd();
            match self.stream.try_io(Interest::READABLE, || recv_with_fds(fd, &mut chunk)) {
                Ok((0, _, _)) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok((n, fds, writer)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.writers.push_back((n, writer));
                    for fd in fds {
                        if self.fds.len() < MAX_PENDING_FDS {
                            self.fds.push_back(fd);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == IoKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the peer has closed the connection both ways (its socket is gone), checked
    /// once a second. Unlike [`Conn::closed`], a peer that only shut its sending side
    /// (`socat`, `shutdown(SHUT_WR)` after its request) still counts as there.
    async fn hung_up(&self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut p = libc::pollfd { fd: self.stream.as_raw_fd(), events: 0, revents: 0 };
            // SAFETY: one valid pollfd, a zero timeout; poll(2) only writes `revents`.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return;
            }
        }
    }

    /// Waits until the peer closes its end (data it sends meanwhile is kept).
    async fn closed(&mut self) {
        while !self.eof {
            if self.fill().await.is_err() {
                self.eof = true;
            }
        }
    }

    async fn send(&mut self, id: u64, reply: Reply) -> std::io::Result<()> {
        let env = ReplyEnvelope { version: PROTOCOL_VERSION, id, reply };
        let mut line = serde_json::to_vec(&env).expect("replies serialize");
        line.push(b'\n');
        self.stream.write_all(&line).await
    }

    /// Sends a published event as `Reply::Ok(Response::Event)`, with the event's JSON made
    /// once for all subscribers (`event_line`).
    async fn send_event(&mut self, id: u64, event: &Published) -> std::io::Result<()> {
        self.stream.write_all(&event_line(id, event)).await
    }
}

/// The reply line of an event, the same bytes `send` would write for
/// `Reply::Ok(Response::Event { event })` (a test holds them to that), but around the
/// event's JSON made once: ten subscribers no longer serialize each event ten times.
fn event_line(id: u64, event: &Published) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        version: u32,
        id: u64,
        reply: Ok<'a>,
    }
    #[derive(serde::Serialize)]
    struct Ok<'a> {
        ok: EventResponse<'a>,
    }
    #[derive(serde::Serialize)]
    struct EventResponse<'a> {
        r#type: &'static str,
        event: &'a serde_json::value::RawValue,
    }
    let line = Line {
        version: PROTOCOL_VERSION,
        id,
        reply: Ok { ok: EventResponse { r#type: "event", event: event.json() } },
    };
    let mut bytes = serde_json::to_vec(&line).expect("event lines serialize");
    bytes.push(b'\n');
    bytes
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>, Writer)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 8], libc::ucred);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    let mut writer = Writer::Unknown;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        match c {
            ControlMessageOwned::ScmRights(raw) => {
                for r in raw {
                    // SAFETY: the kernel just installed `r` in our fd table for this message;
                    // nothing else refers to it, so we are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
            ControlMessageOwned::ScmCredentials(c) => {
                writer = Writer::Process { pid: c.pid(), uid: c.uid(), gid: c.gid() };
            }
            _ => {}
        }
    }
    Ok((msg.bytes, fds, writer))
}

async fn handle_connection(stream: UnixStream, ctx: Arc<ApiContext>) -> std::io::Result<()> {
    let opener = identify(&stream, &ctx)?;
    let mut conn = Conn::new(stream);
    while let Some((line, writer)) = conn.read_line().await? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let env: RequestEnvelope = match serde_json::from_slice(&line) {
            Ok(env) => env,
            Err(e) => {
                // Salvage the id if the envelope was close enough, so the caller can match;
                // a line of another protocol version is refused as that, whatever its body.
                let v = serde_json::from_slice::<serde_json::Value>(&line).ok();
                let id = v.as_ref().and_then(|v| v.get("id")?.as_u64()).unwrap_or(0);
                let err = match v.as_ref().and_then(|v| v.get("version")?.as_u64()) {
                    Some(version) if version != u64::from(PROTOCOL_VERSION) => {
                        ApiError::version_mismatch(u32::try_from(version).unwrap_or(u32::MAX))
                    }
                    _ => ApiError::new(ErrorKind::BadRequest, format!("not a valid request: {e}")),
                };
                conn.send(id, Reply::Err(err)).await?;
                conn.fds.clear();
                continue;
            }
        };
        if env.version != PROTOCOL_VERSION {
            conn.send(env.id, Reply::Err(ApiError::version_mismatch(env.version))).await?;
            conn.fds.clear();
            continue;
        }
        let peer = match sender(&opener, writer, &ctx) {
            Ok(peer) => peer,
            Err(err) => {
                // Always audited: a handed-on connection is an attempt to act as someone else.
                let agent = match writer {
                    LineWriter::One(Writer::Process { pid, uid, gid }) => {
                        match peer_of(pid, uid, gid, &ctx).role {
                            CallerRole::Agent { name } => Some(name),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let caller_uid = match writer {
                    LineWriter::One(Writer::Process { uid, .. }) => uid,
                    _ => opener.caller.uid,
                };
                ctx.audit.record(
                    agent.as_deref(),
                    AuditEvent::Refused {
                        caller_uid,
                        request: env.request.name().into(),
                        reason: err.message.clone(),
                    },
                );
                conn.send(env.id, Reply::Err(err)).await?;
                conn.fds.clear();
                continue;
            }
        };
        let mut env = env;
        if let Err(err) = authorize(&peer, &mut env.request, &ctx) {
            conn.send(env.id, Reply::Err(err)).await?;
            conn.fds.clear();
            continue;
        }
        dispatch(&mut conn, &peer, env, &ctx).await?;
        // fds belong to the request they came with, never to a later one.
        conn.fds.clear();
    }
    Ok(())
}

/// Whether `peer` may send `req`: its principal among the request's senders, and an
/// agent's request made to act on that agent only (see `Request::confine_to_agent`).
fn authorize(peer: &Peer, req: &mut Request, ctx: &ApiContext) -> Result<(), ApiError> {
    let who = match &peer.role {
        CallerRole::Agent { name } => format!("agent {name:?}"),
        _ => format!("uid {}", peer.caller.uid),
    };
    let reason = if !req.may_be_sent_by(peer.role.principal()) {
        let senders: Vec<String> = req.senders().iter().map(|p| p.to_string()).collect();
        format!("{who} may not {}: only {} may", req.name(), senders.join(", or "))
    } else if let CallerRole::Agent { name } = &peer.role
        && let Err(other) = req.confine_to_agent(name)
    {
        format!("{who} may not {} agent {other:?}: an agent acts only on itself", req.name())
    } else {
        return Ok(());
    };
    // Refusals of mutations are worth auditing; reads are not.
    if req.is_mutation() {
        let agent = match &peer.role {
            CallerRole::Agent { name } => Some(name.as_str()),
            _ => None,
        };
        ctx.audit.record(
            agent,
            AuditEvent::Refused {
                caller_uid: peer.caller.uid,
                request: req.name().into(),
                reason: reason.clone(),
            },
        );
    }
    Err(ApiError::new(ErrorKind::PermissionDenied, reason))
}

/// The agent a request names, or the error for an operator who left it out (only an agent
/// may: `authorize` made it name the agent itself).
fn named(name: Option<String>, request: &str) -> Result<String, ApiError> {
    name.ok_or_else(|| {
        ApiError::new(
            ErrorKind::InvalidArgument,
            format!("{request} needs the agent's name (only an agent may leave it out, for itself)"),
        )
    })
}

async fn dispatch(
    conn: &mut Conn,
    peer: &Peer,
    env: RequestEnvelope,
    ctx: &ApiContext,
) -> std::io::Result<()> {
    let id = env.id;
    // Requests answered by a stream of replies; every other one by one reply.
    match env.request {
        Request::Spawn(req) => spawn(conn, peer, id, req, ctx).await,
        Request::Audit(q) => audit(conn, id, q, ctx).await,
        Request::Subscribe(filter) => subscribe(conn, id, filter, ctx).await,
        Request::AgentLogs { name, follow } => logs(conn, id, &name, follow, ctx).await,
        Request::AttachTerminal { name, mode, size } => {
            attach_terminal(conn, peer, id, name, mode, size, ctx).await
        }
        Request::SendTerminal { name, text } => {
            let reply = send_terminal(peer, &name, text.into_bytes(), ctx).await;
            conn.send(id, reply.into()).await
        }
        // A wait ends with its caller: a client gone does not hold a wait for an hour.
        request @ (Request::Results(rush_proto::coordination::ResultsQuery {
            wait_secs: Some(1..), ..
        })
        | Request::Inbox { wait_secs: Some(1..), .. }
        | Request::WaitApproval { wait_secs: Some(1..), .. }) => {
            tokio::select! {
                reply = answer(peer, request, ctx) => conn.send(id, reply.into()).await,
                _ = conn.hung_up() => Ok(()),
            }
        }
        request => {
            let reply = answer(peer, request, ctx).await;
            conn.send(id, reply.into()).await
        }
    }
}

/// The one reply to `request`; each service's error becomes a wire error here (`?`, by
/// the `From` impls below), nowhere else.
async fn answer(peer: &Peer, request: Request, ctx: &ApiContext) -> Result<Response, ApiError> {
    let (agents, sessions, caller) = (&ctx.agents, &ctx.sessions, &peer.caller);
    Ok(match request {
        Request::Hello => Response::Hello {
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            caller: CallerInfo { uid: caller.uid, gid: caller.gid, pid: caller.pid, role: peer.role.clone() },
        },
        Request::Doctor => Response::Doctor { report: (ctx.doctor)() },
        Request::ListAgents => Response::Agents { agents: agents.list() },
        Request::AgentStatus { name } => {
            Response::Agent { agent: agents.status(&named(name, "agent_status")?)? }
        }
        Request::KillAgent { name } => {
            let processes_killed = agents.kill_by_operator(&name, caller).await?;
            Response::Killed { name, processes_killed }
        }
        Request::PauseAgent { name } => Response::Agent { agent: agents.pause(&name, caller).await? },
        Request::ResumeAgent { name, budget } => {
            Response::Agent { agent: agents.resume(&name, budget, caller).await? }
        }
        Request::Grant(req) => {
            let (token, effect) = agents.grant(req, caller).await?;
            Response::Granted { token, effect }
        }
        Request::Revoke { agent, target } => {
            let (tokens, effect) = agents.revoke(&agent, target, caller).await?;
            Response::Revoked { tokens, effect }
        }
        Request::ChangeEffect { agent, revoke } => {
            Response::ChangeEffect { effect: agents.change_effect(&agent, revoke.as_ref())? }
        }
        Request::Commit { agent, token } => {
            Response::Committed { outcomes: agents.commit(&named(agent, "commit")?, token).await? }
        }
        Request::ListCapabilities { agent } => {
            Response::Capabilities { tokens: agents.capabilities(agent.as_deref())? }
        }
        Request::CreateSession { name, workspace } => {
            Response::Session { session: sessions.create(name, workspace, caller).await? }
        }
        Request::ListSessions => Response::Sessions { sessions: sessions.list()? },
        Request::RemoveSession { name } => {
            let workspace = sessions.remove(name.clone(), caller).await?;
            Response::SessionRemoved { name, workspace }
        }
        Request::Checkpoint { session, name, with_processes, shell } => Response::Checkpointed {
            checkpoint: sessions.checkpoint(session, name, with_processes, shell, caller).await?,
        },
        Request::Rollback { session, name } => {
            let report = sessions.rollback(session, name.clone(), caller).await?;
            // A rollback right after a command is a lesson about that command.
            if let Some(g) = ctx.gating.rolled_back(&report.checkpoint.session, &name) {
                tracing::info!(guardrail = g.id, pattern = %g.pattern, "guardrail learned from a rollback");
            }
            Response::RolledBack { report }
        }
        Request::Branch { session, name, from } => {
            Response::TimelineChanged { timeline: sessions.branch(session, name, from, caller).await? }
        }
        Request::SwitchTimeline { session, name } => {
            Response::TimelineChanged { timeline: sessions.switch(session, name, caller).await? }
        }
        Request::ListTimeline { session } => Response::Timeline { timeline: sessions.timeline(&session)? },
        Request::Diff { session, a, b } => Response::Diff { diff: sessions.diff(session, a, b).await? },
        Request::DeleteCheckpoint { session, name } => Response::CheckpointsDeleted {
            names: sessions.delete(session, Some(vec![name]), None, caller).await?,
        },
        Request::PruneCheckpoints { session, prune } => {
            Response::CheckpointsDeleted { names: sessions.delete(session, None, Some(prune), caller).await? }
        }
        Request::ShowSession { session } => Response::SessionDetail { detail: sessions.show(&session)? },
        Request::SessionSet { session, key, value } => {
            let (session, pairs) = sessions.kv_set(&session, key, value, caller)?;
            Response::SessionKv { session, pairs }
        }
        Request::SessionGet { session, key } => {
            let (session, pairs) = sessions.kv_get(&session, key)?;
            Response::SessionKv { session, pairs }
        }
        Request::SessionUnset { session, key } => {
            let (session, pairs) = sessions.kv_unset(&session, key, caller)?;
            Response::SessionKv { session, pairs }
        }
        Request::AttachSession { session, pid, tty } => {
            let (session, attachment) = sessions.attach(&session, pid, tty, caller)?;
            Response::Attached { session, attachment }
        }
        Request::DetachSession { session, pid, cwd } => {
            let (session, cwd) = sessions.detach(&session, pid, cwd, caller)?;
            Response::Detached { session, cwd }
        }
        // Each a round trip to the coordination store (an etcd cluster's may take seconds to
        // fail): off the async workers.
        Request::Broadcast(req) => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            Response::Intent { intent: blocking(move || c.broadcast(who.actor(), req)).await? }
        }
        Request::QueryIntents { paths, session } => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            let intents = blocking(move || c.intents(who.actor(), &paths, session.as_deref())).await?;
            Response::Intents { intents }
        }
        Request::Claim(req) => {
            let c = Arc::clone(&ctx.coordination);
            let who = OwnedActor::of(peer);
            Response::Claim { outcome: blocking(move || c.claim(who.actor(), req)).await? }
        }
        Request::Renew { agent, task, ttl_secs } => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            Response::Claim {
                outcome: blocking(move || c.renew(who.actor(), agent.as_deref(), &task, ttl_secs)).await?,
            }
        }
        Request::Release { agent, task } => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            Response::Released {
                claim: blocking(move || c.release(who.actor(), agent.as_deref(), &task)).await?,
            }
        }
        Request::ListClaims { path, session } => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            let claims = blocking(move || c.claims(who.actor(), path.as_deref(), session.as_deref())).await?;
            Response::Claims { claims }
        }
        Request::Publish(req) => {
            let (c, who) = (Arc::clone(&ctx.coordination), OwnedActor::of(peer));
            Response::Published { result: blocking(move || c.publish(who.actor(), req)).await? }
        }
        Request::Results(q) => Response::Results { results: ctx.coordination.results(actor(peer), q).await? },
        Request::Delegate(req) => delegate(peer, req, ctx).await?,
        Request::Inbox { agent, wait_secs } => {
            let tasks = ctx.coordination.inbox(actor(peer), agent.as_deref(), wait_secs).await?;
            // The same agent the tasks are for (confined to itself, or named by the operator).
            let approvals = match (&peer.role, agent.as_deref()) {
                (CallerRole::Agent { name }, _) => ctx.approvals.unseen_decisions(name),
                (_, Some(name)) => ctx.approvals.unseen_decisions(name),
                _ => Vec::new(),
            };
            Response::Inbox { tasks, approvals }
        }
        Request::RequestApproval(req) => {
            let risk = command_risk(&req, peer, &ctx.gating);
            Response::Approval { approval: ctx.approvals.request(asker(peer), req, risk).await? }
        }
        Request::ListApprovals { agent, all } => {
            let (approvals, batches) = ctx.approvals.list(asker(peer), agent.as_deref(), all)?;
            Response::Approvals { approvals, batches }
        }
        Request::WaitApproval { agent, id, wait_secs } => Response::Approval {
            approval: ctx.approvals.wait(asker(peer), agent.as_deref(), id, wait_secs).await?,
        },
        Request::CancelApproval { agent, id } => {
            Response::Approval { approval: ctx.approvals.cancel(asker(peer), agent.as_deref(), id)? }
        }
        Request::Decide(req) => {
            let by = Decider { by: format!("uid:{}", caller.uid), via: DecidedVia::Cli, uid: caller.uid };
            let (remember, scope) = (req.remember, req.remember_scope.clone());
            if remember.is_some() {
                remembered_is_a_command(&req.target, &ctx.approvals)?;
            }
            let decided = ctx.approvals.decide(req, &by).await?;
            for a in &decided {
                ctx.gating.approval_decided(a, remember, scope.clone(), &by.by);
            }
            Response::Decided { decided }
        }
        Request::ConfigureQueue(change) => {
            Response::QueueSettings { settings: ctx.approvals.configure(change)? }
        }
        Request::ShowQueue => Response::QueueSettings { settings: ctx.approvals.settings() },
        Request::Assess(req) => {
            let g = Arc::clone(&ctx.gating);
            let who = OwnedActor::of(peer);
            // Parsing and the rules' walk are CPU work: off the async workers.
            let assessment = tokio::task::spawn_blocking(move || g.assess(who.asker(), &req))
                .await
                .map_err(|e| ApiError::new(ErrorKind::Internal, format!("assess: {e}")))??;
            Response::Assessment { assessment }
        }
        Request::RecordExecution(rec) => {
            Response::ExecutionRecorded { learned: ctx.gating.record(asker(peer), caller.uid, rec)? }
        }
        Request::ListGuardrails => Response::Guardrails { guardrails: ctx.gating.list()? },
        Request::RemoveGuardrail { id } => {
            Response::Guardrails { guardrails: vec![ctx.gating.remove(id, caller.uid)?] }
        }
        Request::ImportGuardrails { guardrails } => {
            let (added, existing) = ctx.gating.import(guardrails, caller.uid)?;
            Response::GuardrailsImported { added, existing }
        }
        Request::CreateWorkspace { name, repo, from, branch, no_state } => {
            let (workspace, warnings) =
                ctx.workspaces.create(name, repo, from, branch, no_state, caller.clone()).await?;
            Response::Workspace { workspace, warnings }
        }
        Request::ListWorkspaces { repo } => {
            Response::Workspaces { workspaces: ctx.workspaces.list(repo).await? }
        }
        Request::MergeWorkspace(req) => Response::Merge { merge: ctx.workspaces.merge(req).await? },
        Request::ListMerges { workspace } => {
            Response::Merges { merges: ctx.workspaces.merges(workspace.as_deref())? }
        }
        Request::RemoveWorkspace { name, force } => Response::WorkspacesRemoved {
            removed: vec![ctx.workspaces.remove(name, force, caller.clone()).await?],
        },
        Request::CollectWorkspaces { older_than_secs, dry_run } => Response::WorkspacesRemoved {
            removed: ctx.workspaces.collect(older_than_secs, dry_run, caller.clone()).await?,
        },
        streamed @ (Request::Spawn(_)
        | Request::Audit(_)
        | Request::Subscribe(_)
        | Request::AgentLogs { .. }
        | Request::AttachTerminal { .. }
        | Request::SendTerminal { .. }) => {
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!("{} is answered by a stream, not by one reply", streamed.name()),
            ));
        }
    })
}

/// A service's [`Fault`] on the wire: the one mapping.
fn wire_kind(fault: Fault) -> ErrorKind {
    match fault {
        Fault::Malformed => ErrorKind::BadRequest,
        Fault::Invalid => ErrorKind::InvalidArgument,
        Fault::NotFound => ErrorKind::NotFound,
        Fault::Exists => ErrorKind::AlreadyExists,
        Fault::Forbidden => ErrorKind::PermissionDenied,
        Fault::Unsupported => ErrorKind::Unsupported,
        Fault::Exhausted => ErrorKind::ResourceExhausted,
        Fault::Internal => ErrorKind::Internal,
    }
}

/// Each service's error type, made a wire error the same way; a new service adds its type
/// here.
macro_rules! to_wire {
    ($($service_error:ty),* $(,)?) => {$(
        impl From<$service_error> for ApiError {
            fn from(e: $service_error) -> ApiError {
                ApiError::new(wire_kind(e.fault), e.message)
            }
        }
    )*};
}
to_wire!(AgentError, SessionError, CoordinationError, ApprovalError, GatingError, WorkspaceError);

/// Risk gating's score of a command request, made by the daemon where the agent is (what
/// the asker says of its own command is not asked).
fn command_risk(
    req: &rush_proto::approval::ApprovalRequest,
    peer: &Peer,
    gating: &crate::services::gating::Gating,
) -> Option<crate::services::approvals::Risk> {
    let rush_proto::approval::ApprovalDetail::Command { argv, cwd } = &req.detail else { return None };
    let agent = match &peer.role {
        CallerRole::Agent { name } => name.as_str(),
        _ => req.agent.as_deref()?,
    };
    let (score, tags) = gating.score(agent, argv, cwd.as_deref())?;
    let destructive =
        tags.iter().any(|t| t.starts_with("fs.delete") || t == "vcs.history-rewrite" || t == "disk.format");
    Some(crate::services::approvals::Risk { score, tags, destructive })
}

/// "Always allow / always ask / never" is about a command: refused for anything else before
/// anything is decided.
fn remembered_is_a_command(
    target: &rush_proto::approval::ApprovalTarget,
    approvals: &crate::services::approvals::Approvals,
) -> Result<(), ApiError> {
    let rush_proto::approval::ApprovalTarget::Id(id) = target else {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            "remember: only with one request id (a guardrail is learned from one command), not --batch",
        ));
    };
    let a = approvals.get(Asker::Operator { uid: 0 }, None, *id)?;
    if a.kind() != rush_proto::approval::ApprovalKind::Command {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!(
                "remember: request {id} is a {} request; guardrails are learned from command requests",
                a.kind()
            ),
        ));
    }
    Ok(())
}

/// The principal of a request as the approvals queue and risk gating name it.
fn asker(peer: &Peer) -> Asker<'_> {
    match &peer.role {
        CallerRole::Agent { name } => Asker::Agent { name },
        _ => Asker::Operator { uid: peer.caller.uid },
    }
}

/// The principal of a request as coordination names it.
fn actor(peer: &Peer) -> Actor<'_> {
    match &peer.role {
        CallerRole::Agent { name } => Actor::Agent { name },
        _ => Actor::Operator { uid: peer.caller.uid },
    }
}

/// [`actor`] owned, for work moved to a blocking thread.
enum OwnedActor {
    Operator(u32),
    Agent(String),
}

impl OwnedActor {
    fn of(peer: &Peer) -> OwnedActor {
        match &peer.role {
            CallerRole::Agent { name } => OwnedActor::Agent(name.clone()),
            _ => OwnedActor::Operator(peer.caller.uid),
        }
    }

    fn actor(&self) -> Actor<'_> {
        match self {
            OwnedActor::Operator(uid) => Actor::Operator { uid: *uid },
            OwnedActor::Agent(name) => Actor::Agent { name },
        }
    }

    fn asker(&self) -> Asker<'_> {
        match self {
            OwnedActor::Operator(uid) => Asker::Operator { uid: *uid },
            OwnedActor::Agent(name) => Asker::Agent { name },
        }
    }
}

/// Runs `f` (store writes, kernel map updates) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoordinationError> + Send + 'static,
) -> Result<T, CoordinationError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CoordinationError::new(Fault::Internal, format!("claim task failed: {e}"))))
}

/// `delegate`: the task first, then (operator only) the agent spawned for it, detached,
/// so the task is in its inbox before it can look.
async fn delegate(
    peer: &Peer,
    mut req: rush_proto::coordination::DelegateRequest,
    ctx: &ApiContext,
) -> Result<Response, ApiError> {
    let spawn = req.spawn.take();
    if let Some(s) = &spawn
        && s.name != req.to
    {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("the agent spawned for the task is named {:?}, the task is for {:?}", s.name, req.to),
        ));
    }
    let mut checked = req.clone();
    checked.spawn = spawn.clone();
    let task = ctx.coordination.delegate(actor(peer), &checked)?;
    let Some(mut spawn) = spawn else { return Ok(Response::Delegated { task, spawned: None }) };
    spawn.stdio = StdioMode::Log;
    spawn.env.retain(|(k, _)| k != "RUSH_TASK" && k != "RUSH_SOCKET");
    spawn.env.push(("RUSH_TASK".into(), task.id.to_string()));
    let socket = std::path::absolute(&ctx.socket).unwrap_or_else(|_| ctx.socket.clone());
    spawn.env.push(("RUSH_SOCKET".to_owned(), socket.to_string_lossy().into_owned()));
    match ctx.agents.spawn(*spawn, &peer.caller, None).await {
        Ok((info, _exit)) => Ok(Response::Delegated { task, spawned: Some(info) }),
        Err(e) => {
            ctx.coordination.cancel(task.id);
            Err(e.into())
        }
    }
}

async fn spawn(
    conn: &mut Conn,
    peer: &Peer,
    id: u64,
    mut req: rush_proto::SpawnRequest,
    ctx: &ApiContext,
) -> std::io::Result<()> {
    // Its way to the daemon, as itself (rush reads RUSH_SOCKET): the file backends let it
    // connect (neither checks connect(2) of a path socket: BPF LSM file hooks see opens,
    // reads and writes of files, Landlock handles no such right up to the ABI Rush maps,
    // and its scopes cover abstract sockets only), and the guard's protected directories
    // never hold the socket (daemon.rs `protected_dirs`).
    let socket = std::path::absolute(&ctx.socket).unwrap_or_else(|_| ctx.socket.clone());
    req.env.retain(|(k, _)| k != "RUSH_SOCKET");
    req.env.push(("RUSH_SOCKET".to_owned(), socket.to_string_lossy().into_owned()));
    let stdio = if req.stdio == StdioMode::Passed && conn.fds.len() >= 3 {
        let mut take = || conn.fds.pop_front().expect("three fds are queued");
        Some([take(), take(), take()])
    } else {
        None
    };
    let foreground = req.stdio == StdioMode::Passed;
    if let Some(s) = &req.session
        && !ctx.sessions.exists(s)
    {
        let e = ApiError::new(ErrorKind::NotFound, format!("no session {s:?} (see `rush session list`)"));
        return conn.send(id, Reply::Err(e)).await;
    }
    let (info, mut exit) = match ctx.agents.spawn(req, &peer.caller, stdio).await {
        Ok(v) => v,
        Err(e) => return conn.send(id, Reply::Err(e.into())).await,
    };
    let name = info.name.clone();
    let sent = conn.send(id, Reply::Ok(Response::Spawned { agent: info })).await;
    if !foreground {
        return sent;
    }
    // A foreground agent lives as long as its caller: if the caller goes away (Ctrl-C,
    // a killed terminal), so does the agent — also when it went before hearing back.
    if let Err(e) = sent {
        tracing::info!(agent = %name, "caller gone before the spawn reply; killing its foreground agent");
        let _ = ctx.agents.kill(&name, &peer.caller).await;
        return Err(e);
    }
    tokio::select! {
        status = async { exit.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s) } => {
            let status = status.unwrap_or(rush_proto::ExitStatus { code: None, signal: None });
            conn.send(id, Reply::Ok(Response::Exited { name, status })).await
        }
        _ = conn.closed() => {
            tracing::info!(agent = %name, "caller disconnected; killing its foreground agent");
            let _ = ctx.agents.kill(&name, &peer.caller).await;
            Ok(())
        }
    }
}

async fn audit(conn: &mut Conn, id: u64, q: rush_proto::AuditQuery, ctx: &ApiContext) -> std::io::Result<()> {
    // Subscribe before querying the trail so nothing falls between the two.
    let mut live = ctx.audit.subscribe();
    let past = match ctx.audit.query(&q) {
        Ok(p) => p,
        Err(e) => {
            let err = ApiError::new(ErrorKind::Internal, crate::core::error_chain(&e));
            return conn.send(id, Reply::Err(err)).await;
        }
    };
    let last_seq = past.last().map(|r| r.seq).unwrap_or(0);
    conn.send(id, Reply::Ok(Response::AuditEvents { events: past })).await?;
    if !q.follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            rec = live.recv() => match rec {
                Ok(e) => match crate::services::events::audit_record(&e) {
                    Some(r) if r.seq > last_seq && crate::services::audit::matches(&q, r) => {
                        conn.send(id, Reply::Ok(Response::AuditEvents { events: vec![r.clone()] })).await?;
                    }
                    _ => {}
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "audit follower too slow; records skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = conn.closed() => return Ok(()),
        }
    }
}

/// `Subscribe`: the live event stream. The subscription is taken before `Subscribed` is
/// sent, so the caller misses nothing published after it reads that reply. A subscriber
/// that falls behind gets the `Lagged` marker and its connection is closed (Err ends it):
/// the bus never waits for it.
async fn subscribe(
    conn: &mut Conn,
    id: u64,
    filter: rush_proto::SubscribeRequest,
    ctx: &ApiContext,
) -> std::io::Result<()> {
    if let Some(kind) = filter.unknown_kind() {
        let why = format!("no event kind {kind:?}; the kinds are: {}", AuditEvent::KINDS.join(", "));
        return conn.send(id, Reply::Err(ApiError::new(ErrorKind::InvalidArgument, why))).await;
    }
    let mut events = ctx.audit.subscribe();
    conn.send(id, Reply::Ok(Response::Subscribed)).await?;
    loop {
        tokio::select! {
            got = events.recv() => match got {
                Ok(event) if filter.matches(&event) => {
                    // A subscriber that stopped reading fills its socket: it is dropped
                    // once one event has waited this long (the bus does not wait at all).
                    tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, conn.send_event(id, &event))
                        .await
                        .map_err(|_| std::io::Error::other("event subscriber stopped reading"))??;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event subscriber too slow: dropped");
                    let event = rush_proto::Event::Lagged { missed };
                    conn.send(id, Reply::Ok(Response::Event { event })).await?;
                    return Err(std::io::Error::other("event subscriber fell behind"));
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = conn.closed() => return Ok(()),
        }
    }
}

/// A connection to the holder of `name`'s terminal, greeted as `mode`.
async fn holder(
    peer: &Peer,
    name: &str,
    mode: AttachMode,
    size: WindowSize,
    ctx: &ApiContext,
) -> Result<UnixStream, ApiError> {
    let socket = ctx.agents.terminal(name, &peer.caller)?;
    let unreachable = |e: std::io::Error| {
        ApiError::new(ErrorKind::Internal, format!("agent {name:?}'s terminal holder: {e}"))
    };
    let mut holder = UnixStream::connect(&socket).await.map_err(unreachable)?;
    let who = match &peer.role {
        CallerRole::Agent { name } => format!("agent {name}"),
        _ => format!("uid {} (pid {})", peer.caller.uid, peer.caller.pid),
    };
    let hello = Frame::Hello(Hello { mode, who, rows: size.rows, cols: size.cols });
    holder.write_all(&hello.encode()).await.map_err(unreachable)?;
    Ok(holder)
}

/// `AttachTerminal`: after `TerminalAttached`, the connection is relayed to the holder
/// both ways, frames and all, until either side ends.
async fn attach_terminal(
    conn: &mut Conn,
    peer: &Peer,
    id: u64,
    name: String,
    mode: AttachMode,
    size: WindowSize,
    ctx: &ApiContext,
) -> std::io::Result<()> {
    if mode == AttachMode::Send {
        let e = ApiError::new(
            ErrorKind::InvalidArgument,
            "attach mode \"send\" is send_terminal's: use write or read",
        );
        return conn.send(id, Reply::Err(e)).await;
    }
    let mut holder = match holder(peer, &name, mode, size, ctx).await {
        Ok(h) => h,
        Err(e) => return conn.send(id, Reply::Err(e)).await,
    };
    ctx.audit.record(Some(&name), AuditEvent::TerminalAttached { caller_uid: peer.caller.uid, mode });
    conn.send(id, Reply::Ok(Response::TerminalAttached { name, mode })).await?;
    // What the caller sent after its request line is already frames.
    let early = std::mem::take(&mut conn.buf);
    conn.writers.clear();
    let relayed = async {
        holder.write_all(&early).await?;
        tokio::io::copy_bidirectional(&mut conn.stream, &mut holder).await
    };
    if let Err(e) = relayed.await {
        tracing::debug!(error = %e, "terminal relay ended");
    }
    // The connection carried frames: no request line follows.
    conn.eof = true;
    conn.buf.clear();
    Ok(())
}

/// `SendTerminal`: `text` typed into the terminal, audited (its length, not its bytes).
async fn send_terminal(
    peer: &Peer,
    name: &str,
    text: Vec<u8>,
    ctx: &ApiContext,
) -> Result<Response, ApiError> {
    if text.len() > rush_proto::terminal::MAX_FRAME {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("{} bytes to type: at most {} at once", text.len(), rush_proto::terminal::MAX_FRAME),
        ));
    }
    let mut holder = holder(peer, name, AttachMode::Send, WindowSize::default(), ctx).await?;
    let bytes = text.len() as u64;
    let lost =
        |e: std::io::Error| ApiError::new(ErrorKind::Internal, format!("agent {name:?}'s terminal: {e}"));
    holder.write_all(&Frame::Input(text).encode()).await.map_err(lost)?;
    holder.shutdown().await.map_err(lost)?;
    // The holder closes its end once it has typed everything.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), holder.read_to_end(&mut rest)).await;
    ctx.audit.record(Some(name), AuditEvent::TerminalInput { caller_uid: peer.caller.uid, bytes });
    Ok(Response::TerminalSent { bytes })
}

async fn logs(conn: &mut Conn, id: u64, name: &str, follow: bool, ctx: &ApiContext) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (path, exit) = match ctx.agents.log_path(name) {
        Ok(v) => v,
        Err(e) => return conn.send(id, Reply::Err(e.into())).await,
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let err = ApiError::new(ErrorKind::Internal, format!("log {}: {e}", path.display()));
            return conn.send(id, Reply::Err(err)).await;
        }
    };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let exited = exit.borrow().is_some();
        file.seek(std::io::SeekFrom::Start(pos)).await?;
        let n = file.read(&mut buf).await?;
        if n > 0 {
            pos += n as u64;
            let data = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.send(id, Reply::Ok(Response::Logs { data, end: false })).await?;
            continue;
        }
        if !follow || exited {
            return conn.send(id, Reply::Ok(Response::Logs { data: String::new(), end: true })).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = conn.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_the_reply_serde_would_write() {
        let event = rush_proto::Event::Lagged { missed: 3 };
        let published = Published::new(event.clone());
        let expected =
            ReplyEnvelope { version: PROTOCOL_VERSION, id: 42, reply: Reply::Ok(Response::Event { event }) };
        let mut want = serde_json::to_vec(&expected).unwrap();
        want.push(b'\n');
        assert_eq!(String::from_utf8(event_line(42, &published)).unwrap(), String::from_utf8(want).unwrap());
        let back: ReplyEnvelope = serde_json::from_slice(&event_line(42, &published)).unwrap();
        assert_eq!(back, expected);
    }
}

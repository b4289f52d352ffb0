//! The Unix-socket API: NDJSON requests in, replies out, callers identified by SO_PEERCRED
//! and their cgroup.

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use rush_proto::{
    ApiError, AuditEvent, CallerInfo, CallerRole, ErrorKind, PROTOCOL_VERSION, Reply, ReplyEnvelope, Request,
    RequestEnvelope, Response, StdioMode,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::agent::{AgentManager, Caller};
use crate::audit::AuditLog;
use crate::cgroup::process_cgroup_v2;

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
    let listener = UnixListener::bind(path).map_err(io)?;
    // Anyone may connect (agents, unprivileged users asking for `doctor`); what each
    // caller may do is decided per request from its credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
    Ok(listener)
}

pub struct ApiContext {
    pub agents: Arc<AgentManager>,
    pub sessions: Arc<crate::session::Sessions>,
    pub audit: Arc<AuditLog>,
    pub operator_gid: Option<u32>,
    /// The v2 cgroup path prefix of agents, e.g. "/rush/": callers under it are agents.
    pub agent_cgroup_prefix: String,
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

struct Peer {
    caller: Caller,
    role: CallerRole,
}

fn identify(stream: &UnixStream, ctx: &ApiContext) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let pid = cred.pid().unwrap_or(0);
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
    Ok(Peer { caller, role })
}

fn proc_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// A connection's read side: bytes split into lines, plus the fds that arrived with them.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    eof: bool,
}

impl Conn {
    /// The next complete line; None at end of stream (a partial last line is dropped).
    async fn read_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(line));
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

    /// Reads once (bytes and any SCM_RIGHTS fds). Sets `eof` when the peer has gone.
    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.stream.readable().await?;
            let fd = self.stream.as_raw_fd();
            match self.stream.try_io(Interest::READABLE, || recv_with_fds(fd, &mut chunk)) {
                Ok((0, _)) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok((n, fds)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
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
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in our fd table for this message;
                // nothing else refers to it, so we are its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

async fn handle_connection(stream: UnixStream, ctx: Arc<ApiContext>) -> std::io::Result<()> {
    let peer = identify(&stream, &ctx)?;
    let mut conn = Conn { stream, buf: Vec::new(), fds: VecDeque::new(), eof: false };
    while let Some(line) = conn.read_line().await? {
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
        if let Err(err) = authorize(&peer, &env.request, &ctx) {
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

fn authorize(peer: &Peer, req: &Request, ctx: &ApiContext) -> Result<(), ApiError> {
    if matches!(req, Request::Hello | Request::Doctor) || peer.role == CallerRole::Operator {
        return Ok(());
    }
    // An agent may submit its own work for its conditions (never another agent's).
    if let (Request::Commit { agent, .. }, CallerRole::Agent { name }) = (req, &peer.role)
        && agent == name
    {
        return Ok(());
    }
    let who = match &peer.role {
        CallerRole::Agent { name } => format!("agent {name:?}"),
        _ => format!("uid {}", peer.caller.uid),
    };
    let reason = format!("{who} may not {}: only root or the operator group may", req.name());
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

async fn dispatch(
    conn: &mut Conn,
    peer: &Peer,
    env: RequestEnvelope,
    ctx: &ApiContext,
) -> std::io::Result<()> {
    let id = env.id;
    let reply: Result<Response, ApiError> = match env.request {
        Request::Hello => Ok(Response::Hello {
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            caller: CallerInfo {
                uid: peer.caller.uid,
                gid: peer.caller.gid,
                pid: peer.caller.pid,
                role: peer.role.clone(),
            },
        }),
        Request::Spawn(req) => return spawn(conn, peer, id, req, ctx).await,
        Request::ListAgents => Ok(Response::Agents { agents: ctx.agents.list() }),
        Request::AgentStatus { name } => ctx.agents.status(&name).map(|agent| Response::Agent { agent }),
        Request::KillAgent { name } => ctx
            .agents
            .kill_by_operator(&name, &peer.caller)
            .await
            .map(|processes_killed| Response::Killed { name, processes_killed }),
        Request::PauseAgent { name } => {
            ctx.agents.pause(&name, &peer.caller).await.map(|agent| Response::Agent { agent })
        }
        Request::ResumeAgent { name, budget } => {
            ctx.agents.resume(&name, budget, &peer.caller).await.map(|agent| Response::Agent { agent })
        }
        Request::Audit(q) => return audit(conn, id, q, ctx).await,
        Request::Subscribe(filter) => return subscribe(conn, id, filter, ctx).await,
        Request::AgentLogs { name, follow } => return logs(conn, id, &name, follow, ctx).await,
        Request::Doctor => {
            let report = (ctx.doctor)();
            Ok(Response::Doctor { report })
        }
        Request::Grant(req) => ctx
            .agents
            .grant(req, &peer.caller)
            .await
            .map(|(token, effect)| Response::Granted { token, effect }),
        Request::Revoke { agent, target } => ctx
            .agents
            .revoke(&agent, target, &peer.caller)
            .await
            .map(|(tokens, effect)| Response::Revoked { tokens, effect }),
        Request::ChangeEffect { agent, revoke } => {
            ctx.agents.change_effect(&agent, revoke.as_ref()).map(|effect| Response::ChangeEffect { effect })
        }
        Request::Commit { agent, token } => {
            ctx.agents.commit(&agent, token).await.map(|outcomes| Response::Committed { outcomes })
        }
        Request::ListCapabilities { agent } => {
            ctx.agents.capabilities(agent.as_deref()).map(|tokens| Response::Capabilities { tokens })
        }
        Request::CreateSession { name, workspace } => ctx
            .sessions
            .create(name, workspace, &peer.caller)
            .await
            .map(|session| Response::Session { session }),
        Request::ListSessions => ctx.sessions.list().map(|sessions| Response::Sessions { sessions }),
        Request::RemoveSession { name } => ctx
            .sessions
            .remove(name.clone(), &peer.caller)
            .await
            .map(|workspace| Response::SessionRemoved { name, workspace }),
        Request::Checkpoint { session, name, with_processes, shell } => ctx
            .sessions
            .checkpoint(session, name, with_processes, shell, &peer.caller)
            .await
            .map(|checkpoint| Response::Checkpointed { checkpoint }),
        Request::Rollback { session, name } => ctx
            .sessions
            .rollback(session, name, &peer.caller)
            .await
            .map(|report| Response::RolledBack { report }),
        Request::Branch { session, name, from } => ctx
            .sessions
            .branch(session, name, from, &peer.caller)
            .await
            .map(|timeline| Response::TimelineChanged { timeline }),
        Request::SwitchTimeline { session, name } => ctx
            .sessions
            .switch(session, name, &peer.caller)
            .await
            .map(|timeline| Response::TimelineChanged { timeline }),
        Request::ListTimeline { session } => {
            ctx.sessions.timeline(&session).map(|timeline| Response::Timeline { timeline })
        }
        Request::Diff { session, a, b } => {
            ctx.sessions.diff(session, a, b).await.map(|diff| Response::Diff { diff })
        }
        Request::DeleteCheckpoint { session, name } => ctx
            .sessions
            .delete(session, Some(vec![name]), None, &peer.caller)
            .await
            .map(|names| Response::CheckpointsDeleted { names }),
        Request::PruneCheckpoints { session, prune } => ctx
            .sessions
            .delete(session, None, Some(prune), &peer.caller)
            .await
            .map(|names| Response::CheckpointsDeleted { names }),
        Request::ShowSession { session } => {
            ctx.sessions.show(&session).map(|detail| Response::SessionDetail { detail })
        }
        Request::SessionSet { session, key, value } => ctx
            .sessions
            .kv_set(&session, key, value, &peer.caller)
            .map(|(session, pairs)| Response::SessionKv { session, pairs }),
        Request::SessionGet { session, key } => {
            ctx.sessions.kv_get(&session, key).map(|(session, pairs)| Response::SessionKv { session, pairs })
        }
        Request::SessionUnset { session, key } => ctx
            .sessions
            .kv_unset(&session, key, &peer.caller)
            .map(|(session, pairs)| Response::SessionKv { session, pairs }),
        Request::AttachSession { session, pid, tty } => ctx
            .sessions
            .attach(&session, pid, tty, &peer.caller)
            .map(|(session, attachment)| Response::Attached { session, attachment }),
        Request::DetachSession { session, pid, cwd } => ctx
            .sessions
            .detach(&session, pid, cwd, &peer.caller)
            .map(|(session, cwd)| Response::Detached { session, cwd }),
    };
    conn.send(id, reply.into()).await
}

async fn spawn(
    conn: &mut Conn,
    peer: &Peer,
    id: u64,
    req: rush_proto::SpawnRequest,
    ctx: &ApiContext,
) -> std::io::Result<()> {
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
        Err(e) => return conn.send(id, Reply::Err(e)).await,
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
                Ok(e) => match crate::events::audit_record(&e) {
                    Some(r) if r.seq > last_seq && crate::audit::matches(&q, r) => {
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
                    let reply = Reply::Ok(Response::Event { event: (*event).clone() });
                    tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, conn.send(id, reply))
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

async fn logs(conn: &mut Conn, id: u64, name: &str, follow: bool, ctx: &ApiContext) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (path, exit) = match ctx.agents.log_path(name) {
        Ok(v) => v,
        Err(e) => return conn.send(id, Reply::Err(e)).await,
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

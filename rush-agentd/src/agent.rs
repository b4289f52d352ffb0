//! Agents: spawn a command inside its own cgroup with its kernel policy in place before
//! it executes anything, track it until exit, kill its whole tree, clean up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rush_proto::{
    AgentInfo, AgentName, AgentState, ApiError, AuditEvent, Budget, BudgetResource, ChangeAction,
    ChangeEffect, ErrorKind, ExitStatus, FileGrant, FilesBackend, GrantRequest, Hardlinks, NetPolicy, Ops,
    PauseReason, RevokeTarget, SpawnRequest, StdioMode, TokenInfo,
};
use tokio::sync::watch;

use crate::audit::{AuditLog, now_unix_ms};
use crate::bpf::{AgentFlags, FileGrantEntry, FileKey, KernelNetPolicy, KernelPolicy, boot_time_ns};
use crate::budget::{Observed, ResourceControl};
use crate::cgroup::{AgentCgroup, CgroupBackend};
use crate::mappings::{Kept, Killed, Lost, path_forms};
use crate::policy::{ExecRule, Policy};
use crate::spawn::{Spawn, SpawnError};
use crate::tokens::{NewToken, Origin, Token, TokenError, TokenStore};

/// What a validated spawn request turns into, before anything is created.
struct Plan {
    net: KernelNetPolicy,
    budget: Budget,
    /// Some: the agent is file-confined, with these tokens.
    file_tokens: Option<FileTokens>,
    files: Files,
    /// What it asked for that nothing enforces (`allow_unconfined`).
    unconfined: Vec<String>,
    stdio: Option<[OwnedFd; 3]>,
    log_path: Option<PathBuf>,
    /// A restart under new rules: the log goes on rather than starting empty.
    restart: bool,
    /// Capabilities, seccomp (config, then the trust level).
    hardening: crate::harden::HardeningPolicy,
}

/// The hardening every agent of this daemon gets (`[hardening]`, `harden.rs`); set by
/// the daemon at start. Unit tests run without it.
pub struct AgentHardening {
    pub cgroup_namespace: bool,
    pub private_cgroupfs: bool,
    /// The BPF LSM guard is attached: it refuses cgroupfs writes itself, and the mount
    /// calls the read-only view would need in the agent's first process.
    pub guard: bool,
    /// For agents without a trust level, and what a level's keys override.
    pub defaults: crate::harden::HardeningPolicy,
    pub seccomp: Arc<crate::harden::SeccompProgram>,
}

/// A new agent's tokens: resolved from its request, or carried over from the process it
/// replaces (a Landlock restart), ids and expiries kept.
enum FileTokens {
    New(Vec<NewToken>),
    Carried(Vec<Token>),
}

/// What confines an agent's file access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Files {
    /// Not file-confined (spawned without --allow).
    Open,
    BpfLsm,
    Landlock,
    /// Tokens recorded, nothing enforces them (`allow_unconfined` with no backend).
    Unenforced,
}

impl Files {
    fn backend(self) -> FilesBackend {
        match self {
            Files::Open | Files::Unenforced => FilesBackend::None,
            Files::BpfLsm => FilesBackend::BpfLsm,
            Files::Landlock => FilesBackend::Landlock,
        }
    }

    /// From what a stored agent's info says (re-adoption).
    fn of_info(info: &AgentInfo, files_confined: bool) -> Files {
        let has = |e: rush_proto::Enforcement| info.enforcement.contains(&e);
        match () {
            _ if !files_confined => Files::Open,
            _ if has(rush_proto::Enforcement::FilesLandlock) => Files::Landlock,
            _ if has(rush_proto::Enforcement::FilesBpfLsm) => Files::BpfLsm,
            _ => Files::Unenforced,
        }
    }
}

/// How to start an agent's command again (Landlock restarts): its request as it came,
/// and who asked. None for foreground agents, whose terminal went with the old process.
#[derive(Clone)]
struct Respawn {
    req: SpawnRequest,
    caller: Caller,
}

/// An agent's first process, as the daemon holds it.
pub(crate) struct Child {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
}

/// A pidfd for a process that is not our child (an adopted agent's): its exit is seen
/// (readable), its status is not (waitid is for children). None if it is gone.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Conditional tokens' worktrees are numbered per daemon run.
static CONDITION_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
/// How long a condition may run before it counts as failed.
const CONDITION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Why a conditional token's check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCause {
    /// `rush capability commit` (by the operator or the agent itself).
    Request,
    /// The agent exited: the last chance for its work; the worktree is removed after.
    Exit,
}

impl CommitCause {
    fn as_str(self) -> &'static str {
        match self {
            CommitCause::Request => "request",
            CommitCause::Exit => "exit",
        }
    }
}

/// Who is asking, from SO_PEERCRED and /proc at connect time.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups; the agent runs with exactly the caller's credentials.
    pub groups: Vec<u32>,
}

/// What the kernel side can enforce, decided once at start-up from what really attached.
#[derive(Debug, Clone)]
pub struct Enforcement {
    pub net: bool,
    /// What enforces `--allow` file tokens on this daemon.
    pub files: FileBackend,
    /// What a token change does to a Landlock-confined agent.
    pub landlock: crate::config::LandlockSection,
}

/// The file-token backend chosen at start-up (`files.enforcement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileBackend {
    /// BPF LSM programs: per-inode tokens, changed live.
    BpfLsm,
    /// A Landlock ruleset applied before exec; changes freeze and restart or kill.
    Landlock,
    /// Nothing can: why (`--allow` is refused unless `allow_unconfined`).
    Unavailable(String),
}

/// The operations an fd handed to an agent was opened for (its access mode).
fn stdio_ops(fd: std::os::fd::BorrowedFd<'_>) -> Ops {
    match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        Ok(flags) => match flags & libc::O_ACCMODE {
            libc::O_RDONLY => Ops::READ,
            libc::O_WRONLY => Ops::WRITE,
            libc::O_RDWR => Ops(Ops::READ.0 | Ops::WRITE.0),
            _ => Ops(0),
        },
        Err(_) => Ops(0),
    }
}

/// How many exited agents `agent list` keeps showing.
const EXITED_KEPT: usize = 64;

pub struct AgentManager {
    pub(crate) cgroups: Arc<dyn CgroupBackend>,
    kernel: Arc<dyn KernelPolicy>,
    audit: Arc<AuditLog>,
    pub(crate) enforcement: Enforcement,
    log_dir: PathBuf,
    /// Tokens every file-confined agent gets (config `files.baseline`).
    baseline: Vec<FileGrant>,
    /// File-confined agents' own TMPDIRs (config `files.private_tmp`); unset: none.
    private_tmp: std::sync::OnceLock<crate::baseline::PrivateTmp>,
    hardening: std::sync::OnceLock<AgentHardening>,
    tokens: TokenStore,
    registry: Mutex<Registry>,
    /// One revoke or expiry enforcement at a time: one's thaw must not cut another's
    /// scan of a frozen agent short.
    enforcing: tokio::sync::Mutex<()>,
    /// Tokens with a TTL whose expiry is still to be enforced on mappings, by id.
    pending_expiries: Mutex<HashMap<u64, Token>>,
    /// The durable state (agents, tokens), once the daemon has opened it; unit tests run
    /// without one.
    store: std::sync::OnceLock<Arc<crate::store::Store>>,
    /// Ids of tokens revoked in the kernel whose deletion the store refused (a full disk):
    /// retried before every store write, so a restart cannot grant them again once the
    /// disk has room.
    unsaved_revokes: Mutex<Vec<(String, u64)>>,
    budgets: Budgets,
}

/// What [`AgentManager::check_state`] compared, and where the store, the daemon and the
/// kernel disagree (nothing, normally).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StateCheck {
    pub agents: usize,
    pub tokens: usize,
    pub kernel_entries: usize,
    pub problems: Vec<String>,
}

/// What budgets and trust levels need.
pub struct Budgets {
    pub control: Arc<dyn ResourceControl>,
    pub policy: Policy,
    /// None: cost budgets are refused (unit tests).
    pub meter: Option<MeterSetup>,
    /// How many API endpoint addresses the kernel counts connects to; with none, an `api`
    /// budget would count nothing and is refused.
    pub api_endpoints: usize,
}

/// The metering proxy's config and where its events go.
pub struct MeterSetup {
    pub config: Arc<crate::meter::MeterConfig>,
    pub events: tokio::sync::mpsc::UnboundedSender<crate::meter::MeterEvent>,
}

/// Why an agent is frozen; each reason holds one freeze of its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pause {
    operator: bool,
    cpu_budget: bool,
}

impl Pause {
    fn from_info(paused: &[PauseReason]) -> Pause {
        Pause {
            operator: paused.contains(&PauseReason::Operator),
            cpu_budget: paused.contains(&PauseReason::BudgetCpu),
        }
    }

    fn describe(self) -> Vec<PauseReason> {
        [(self.operator, PauseReason::Operator), (self.cpu_budget, PauseReason::BudgetCpu)]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
            .collect()
    }
}

/// Counters already reported to the audit trail, so each OOM kill and refused fork is
/// recorded once. None until first read (an adopted agent's past is not re-reported).
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    oom_kills: Option<u64>,
    fork_refusals: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) agents: HashMap<String, Agent>,
    /// Names whose spawn is under way, so two concurrent spawns can't both take a name.
    starting: HashSet<String>,
    exited_order: VecDeque<String>,
    /// cgroup id → name, also for exited agents, so late kernel events keep their name.
    names: HashMap<u64, String>,
    /// Agents whose processes a CRIU restore is replacing: their exit watcher hands over
    /// to the restored root it receives here (None: the restore failed, clean up).
    pub(crate) restoring: HashMap<String, tokio::sync::oneshot::Receiver<Option<Child>>>,
}

pub(crate) struct Agent {
    pub(crate) info: AgentInfo,
    pub(crate) cgroup: AgentCgroup,
    exit: watch::Receiver<Option<ExitStatus>>,
    pub(crate) log_path: Option<PathBuf>,
    /// File hooks deny what no token covers (spawned with --allow).
    files_confined: bool,
    pub(crate) files: Files,
    respawn: Option<Respawn>,
    pause: Pause,
    reported: Reported,
    exec: ExecRule,
    /// The metering proxy of an agent with a cost budget; dropping it stops it.
    meter: Option<crate::meter::AgentMeter>,
    /// The cost last written to the store (restored into the meter after a restart).
    cost_saved: u64,
}

fn api_err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

impl AgentManager {
    pub fn new(
        cgroups: Arc<dyn CgroupBackend>,
        kernel: Arc<dyn KernelPolicy>,
        audit: Arc<AuditLog>,
        enforcement: Enforcement,
        log_dir: PathBuf,
        baseline: Vec<FileGrant>,
        budgets: Budgets,
    ) -> Arc<AgentManager> {
        Arc::new(AgentManager {
            cgroups,
            kernel,
            audit,
            enforcement,
            log_dir,
            baseline,
            private_tmp: std::sync::OnceLock::new(),
            hardening: std::sync::OnceLock::new(),
            tokens: TokenStore::default(),
            registry: Mutex::default(),
            enforcing: tokio::sync::Mutex::new(()),
            pending_expiries: Mutex::default(),
            store: std::sync::OnceLock::new(),
            unsaved_revokes: Mutex::default(),
            budgets,
        })
    }

    /// From now on, agents and tokens are written to `store` before requests are answered.
    pub fn attach_store(&self, store: Arc<crate::store::Store>) {
        let _ = self.store.set(store);
    }

    /// Runs a store write; a failure is loud (log) but does not undo what the kernel
    /// already enforces: the agent stays confined, only its re-adoption would miss it.
    fn persist(
        &self,
        what: &str,
        write: impl FnOnce(&crate::store::Store) -> Result<(), crate::store::StoreError>,
    ) {
        if let Some(store) = self.store.get()
            && let Err(e) = write(store)
        {
            tracing::error!(error = %error_chain(&e), "state database: {what} not saved");
        }
    }

    /// Runs a store write that a request's acknowledgement depends on: its failure is the
    /// request's (ResourceExhausted when the disk is full), so nothing acknowledged is
    /// missing from the store after a crash.
    fn save(
        &self,
        what: &str,
        write: impl FnOnce(&crate::store::Store) -> Result<(), crate::store::StoreError>,
    ) -> Result<(), ApiError> {
        let Some(store) = self.store.get() else { return Ok(()) };
        self.retry_unsaved_revokes(store);
        write(store).map_err(|e| {
            tracing::error!(error = %error_chain(&e), "state database: {what} not saved");
            let kind = if e.is_full() { ErrorKind::ResourceExhausted } else { ErrorKind::Internal };
            api_err(kind, format!("{what} not saved: {}", error_chain(&e)))
        })
    }

    /// Deletes from the store the tokens a revoke took out of the kernel while the store
    /// refused writes.
    fn retry_unsaved_revokes(&self, store: &crate::store::Store) {
        let mut unsaved = self.unsaved_revokes.lock().unwrap_or_else(|p| p.into_inner());
        if unsaved.is_empty() {
            return;
        }
        let ids: Vec<u64> = unsaved.iter().map(|(_, id)| *id).collect();
        let mut agents: Vec<&str> = unsaved.iter().map(|(a, _)| a.as_str()).collect();
        agents.dedup();
        // A restartable agent's record lists its grants too: rewritten from what it holds now.
        let records: Vec<_> = agents.iter().filter_map(|a| self.restart_record(a)).collect();
        let saved = store
            .delete_tokens(&ids)
            .and_then(|()| records.iter().try_for_each(|r| store.put_restartable(r)));
        if saved.is_ok() {
            tracing::info!(tokens = ids.len(), "revokes the store had refused are now saved");
            unsaved.clear();
        }
    }

    /// How many revokes hold in the kernel but not yet in the store (`rush doctor`).
    pub fn unsaved_revokes(&self) -> usize {
        if let Some(store) = self.store.get() {
            self.retry_unsaved_revokes(store);
        }
        self.unsaved_revokes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Deletes revoked tokens from the store. The kernel has already dropped them, so a
    /// failure does not undo the revoke: the ids are kept for a retry, and the caller is
    /// told that a restart before the retry succeeds would grant them again.
    fn save_revoke(&self, agent: &str, ids: &[u64]) -> Result<(), ApiError> {
        let restart = self.restart_record(agent);
        let write = |s: &crate::store::Store| {
            s.delete_tokens(ids)?;
            restart.as_ref().map_or(Ok(()), |r| s.put_restartable(r))
        };
        self.save("revoke", write).map_err(|e| {
            let mut unsaved = self.unsaved_revokes.lock().unwrap_or_else(|p| p.into_inner());
            unsaved.extend(ids.iter().map(|id| (agent.to_owned(), *id)));
            api_err(
                e.kind,
                format!(
                    "agent {agent:?} has lost the access in the kernel now, but the {}; the daemon retries \
                     the write before every other one, and a daemon restarted before it succeeds would \
                     grant the token again (free space in the state dir)",
                    e.message
                ),
            )
        })
    }

    /// Writes the agent (as registered now) and its tokens.
    fn persist_agent(&self, name: &str) {
        if let Err(e) = self.save_agent(name) {
            tracing::error!(agent = %name, error = %e.message, "agent record not updated");
        }
    }

    fn save_agent(&self, name: &str) -> Result<(), ApiError> {
        let record = self.registry().agents.get(name).map(|a| crate::store::AgentRecord {
            info: a.info.clone(),
            files_confined: a.files_confined,
            log_path: a.log_path.clone(),
        });
        let Some(record) = record else { return Ok(()) };
        let tokens = self.tokens.of_agent(record.info.cgroup_id);
        self.save("agent", |s| s.put_agent(&record).and_then(|()| s.put_tokens(&tokens)))
    }

    /// Writes what restarting a restartable agent needs: its request, who asked, and its
    /// file tokens as they are now (so a revoke is never undone by a restart).
    /// Part of the request it belongs to (spawn, grant, revoke): a refused write is that
    /// request's failure.
    fn save_restart(&self, name: &str) -> Result<(), ApiError> {
        match self.restart_record(name) {
            Some(record) => self.save("restartable agent", |s| s.put_restartable(&record)),
            None => Ok(()),
        }
    }

    fn restart_record(&self, name: &str) -> Option<crate::store::RestartRecord> {
        let found = self.registry().agents.get(name).and_then(|a| {
            let r = a.respawn.clone().filter(|r| r.req.restartable)?;
            Some((r, a.cgroup.id, a.info.pid, a.files_confined))
        });
        let (r, cgroup_id, pid, files_confined) = found?;
        let now = boot_time_ns();
        let grants = self
            .tokens
            .of_agent(cgroup_id)
            .into_iter()
            // Baseline and stdio tokens are made again at spawn; a conditional token's
            // worktree does not outlive the agent, so it is left out (less, never more).
            .filter(|t| matches!(t.origin, Origin::Spawn | Origin::Grant) && t.condition.is_none())
            .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
            .map(|t| crate::store::RestartGrant {
                path: t.path,
                ops: t.ops,
                expires_unix_ms: t.expires.map(|(_, ms)| ms),
            })
            .collect();
        Some(crate::store::RestartRecord {
            request: r.req,
            uid: r.caller.uid,
            gid: r.caller.gid,
            groups: r.caller.groups,
            grants,
            files_confined,
            pid,
        })
    }

    /// The agent is not to be started again (killed by an operator, or done).
    fn forget_restart(&self, name: &str) {
        if let Some(a) = self.registry().agents.get_mut(name) {
            a.info.restartable = false;
            if let Some(r) = a.respawn.as_mut() {
                r.req.restartable = false;
            }
        }
        self.persist("a restartable agent's removal", |s| s.delete_restartable(name));
    }

    /// `rush agent kill`: the operator's kill, which also ends a restartable agent's
    /// restarts. A stored restartable agent that is not running (its restart failed) is
    /// forgotten without error.
    pub async fn kill_by_operator(&self, name: &str, caller: &Caller) -> Result<u32, ApiError> {
        let stored = self
            .store
            .get()
            .and_then(|s| s.restartable().ok())
            .is_some_and(|l| l.iter().any(|r| r.request.name == name));
        self.forget_restart(name);
        match self.kill(name, caller).await {
            Err(e) if stored && (e.kind == ErrorKind::NotFound || e.message.contains("already exited")) => {
                self.audit
                    .record(Some(name), AuditEvent::Kill { caller_uid: caller.uid, processes_killed: 0 });
                Ok(0)
            }
            other => other,
        }
    }

    /// Starts again every restartable agent that is not running (after adoption, once the
    /// sessions are open), each as it was spawned, its tokens resolved again from their
    /// paths. Fail closed: a path gone, its session gone, or enforcement this boot lacks
    /// and it is not started (audited `restart_failed`, tried again at the next start).
    /// Returns how many started.
    pub async fn restart_restartable(self: &Arc<Self>, session_exists: impl Fn(&str) -> bool) -> usize {
        let Some(store) = self.store.get().cloned() else { return 0 };
        let reason = if store.from_earlier_boot() { "reboot" } else { "gone" };
        let records = match store.restartable() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "state database unreadable: no agent restarted");
                return 0;
            }
        };
        let mut started = 0;
        for rec in records {
            let name = rec.request.name.clone();
            let running =
                self.registry().agents.get(&name).is_some_and(|a| a.info.state == AgentState::Running);
            if running {
                continue;
            }
            let result = match restart_request(&rec, now_unix_ms()) {
                Err(why) => Err(why),
                Ok(req) => match req.session.as_deref().filter(|s| !session_exists(s)) {
                    Some(s) => Err(format!("its session {s:?} no longer exists")),
                    None => {
                        let caller = Caller {
                            uid: rec.uid,
                            gid: rec.gid,
                            pid: std::process::id() as i32,
                            groups: rec.groups.clone(),
                        };
                        self.spawn(req, &caller, None).await.map(|(info, _)| info.pid).map_err(|e| e.message)
                    }
                },
            };
            match result {
                Ok(new_pid) => {
                    tracing::info!(agent = %name, reason, old_pid = rec.pid, new_pid, "restartable agent started again");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::AgentRestarted { reason: reason.into(), old_pid: rec.pid, new_pid },
                    );
                    started += 1;
                }
                Err(error) => {
                    tracing::error!(agent = %name, reason, %error, "restartable agent not started again");
                    self.audit.set_agent_session(&name, rec.request.session.as_deref());
                    self.audit
                        .record(Some(&name), AuditEvent::RestartFailed { reason: reason.into(), error });
                }
            }
        }
        started
    }

    /// The kernel moved a grant to a new inode: the stored tokens follow.
    pub fn persist_rekey(&self, cgroup_id: u64, from: crate::bpf::FileKey, to: crate::bpf::FileKey) {
        self.persist("a moved grant", |s| s.rekey(cgroup_id, from, to));
    }

    /// Takes back the agents a previous daemon left running (their cgroup still there, their
    /// first process alive in it): registered again, tokens restored from the store and
    /// rewritten into the kernel map, TTL timers rescheduled, exit watched. Returns how
    /// many; stored agents that are gone are forgotten (their exit status is unknown).
    pub fn adopt(self: &Arc<Self>) -> usize {
        let Some(store) = self.store.get() else { return 0 };
        let records = match store.agents() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "state database unreadable: no agent re-adopted");
                return 0;
            }
        };
        if let Ok(max) = store.max_token_id() {
            self.tokens.skip_ids_to(max);
        }
        // Agents of an earlier boot died with it: their exit recorded (status unknown).
        for info in store.take_earlier_boot_agents() {
            self.audit.set_agent_session(&info.name, info.session.as_deref());
            self.audit.record(
                Some(&info.name),
                AuditEvent::Exit { pid: info.pid, status: ExitStatus { code: None, signal: None } },
            );
            tracing::info!(agent = %info.name, "an agent of the earlier boot is gone (exit status unknown)");
        }
        let existing = self.cgroups.existing();
        let stored_restarts = store.restartable().unwrap_or_default();
        let restart_of = |name: &str| {
            stored_restarts.iter().find(|r| r.request.name == name).map(|r| Respawn {
                req: r.request.clone(),
                caller: Caller { uid: r.uid, gid: r.gid, pid: 0, groups: r.groups.clone() },
            })
        };
        let mut adopted = 0;
        for rec in records {
            let name = rec.info.name.clone();
            let pid = rec.info.pid;
            self.audit.set_agent_session(&name, rec.info.session.as_deref());
            let cg = existing.iter().find(|c| c.id == rec.info.cgroup_id).cloned();
            // The pid must still be the agent's (not reused): alive (a zombie is not: its
            // agent died with the old daemon, its reaper has not come by yet), in its cgroup.
            let still_there = cg.as_ref().is_some_and(|cg| {
                proc_stat(pid as i32).is_some()
                    && crate::cgroup::process_cgroup_v2(pid as i32)
                        .is_some_and(|p| cg.v2_dir.ends_with(p.trim_start_matches('/')))
            });
            let pidfd = if still_there { pidfd_open(pid) } else { None };
            let (Some(cg), Some(pidfd)) = (cg, pidfd) else {
                self.persist("a gone agent's removal", |s| s.delete_agent(&name, rec.info.cgroup_id));
                self.audit.record(
                    Some(&name),
                    AuditEvent::Exit { pid, status: ExitStatus { code: None, signal: None } },
                );
                tracing::info!(agent = %name, "a stored agent is gone (exit status unknown)");
                continue;
            };
            let tokens = store.tokens(cg.id).unwrap_or_else(|e| {
                tracing::error!(agent = %name, error = %error_chain(&e), "its tokens are unreadable: it keeps what the kernel map holds");
                Vec::new()
            });
            // A daemon that died mid-revoke (or mid-check) left it frozen; no freeze of
            // this daemon is in force, so thaw, unless it is paused: then each reason takes
            // its freeze again (no window in which it runs).
            let pause = Pause::from_info(&rec.info.paused);
            if pause == Pause::default() {
                if let Err(e) = self.cgroups.thaw(&cg) {
                    tracing::warn!(agent = %name, error = %error_chain(&e), "adopted agent not thawed");
                }
            } else {
                for _ in [pause.operator, pause.cpu_budget].iter().filter(|on| **on) {
                    if let Err(e) = self.cgroups.freeze(&cg, std::time::Duration::from_secs(1)) {
                        tracing::error!(agent = %name, error = %error_chain(&e), "paused agent not frozen again");
                    }
                }
            }
            let exec = self.exec_rule(rec.info.trust.as_deref());
            // Its meter again, on the port the agent was told about, with what it spent.
            let cost_saved = saved_cost(&rec.info);
            let meter_port = rec.info.meter_url.as_deref().and_then(|u| u.rsplit(':').next()?.parse().ok());
            let meter = match (rec.info.budget.cost_micro_usd, meter_port) {
                (Some(limit), Some(port)) => match self.start_meter(&name, port, limit) {
                    Some(Ok(m)) => {
                        m.ledger.restore(cost_saved, 0);
                        Some(m)
                    }
                    Some(Err(e)) => {
                        tracing::error!(agent = %name, error = %e.message, "meter not restarted: its API calls fail");
                        None
                    }
                    None => None,
                },
                _ => None,
            };
            let files = Files::of_info(&rec.info, rec.files_confined);
            let (restored, entries) = self.tokens.restore(tokens);
            if files == Files::BpfLsm
                && let Err(e) = self.write_entries(cg.id, entries)
            {
                tracing::error!(agent = %name, error = %e.message, "kernel entries not rebuilt");
            }
            let (tx, rx) = watch::channel(None);
            let mut info = rec.info;
            info.state = AgentState::Running;
            {
                let mut reg = self.registry();
                reg.names.insert(cg.id, name.clone());
                reg.agents.insert(
                    name.clone(),
                    Agent {
                        info,
                        cgroup: cg.clone(),
                        exit: rx,
                        log_path: rec.log_path,
                        files_confined: rec.files_confined,
                        files,
                        // Only a restartable agent's request (env, cwd) is stored: any
                        // other is killed by a Landlock change.
                        respawn: restart_of(&name),
                        pause,
                        reported: Reported::default(),
                        exec,
                        meter,
                        cost_saved,
                    },
                );
            }
            for t in restored {
                self.schedule_expiry(t);
            }
            let mgr = Arc::clone(self);
            let child = Child { pid, pidfd };
            tokio::spawn(async move { mgr.watch_exit(name, cg, child, tx).await });
            adopted += 1;
        }
        adopted
    }

    /// Checks that the store, this daemon's memory and the kernel's grant map say the same
    /// of every running agent: its record and tokens in `state.db`, and (BPF LSM) each
    /// grant entry the tokens make, exact to the expiry. Returns what was checked and the
    /// disagreements found (`rush doctor`; the crash tests).
    pub fn check_state(&self) -> StateCheck {
        let mut check = StateCheck::default();
        let running: Vec<(String, u64, Files)> = self
            .registry()
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running)
            .map(|a| (a.info.name.clone(), a.cgroup.id, a.files))
            .collect();
        if let Some(store) = self.store.get() {
            match store.agents() {
                Ok(stored) => {
                    for rec in &stored {
                        if !running.iter().any(|(n, id, _)| *n == rec.info.name && *id == rec.info.cgroup_id)
                        {
                            check
                                .problems
                                .push(format!("agent {:?} is in state.db but not running", rec.info.name));
                        }
                    }
                    for (name, _, _) in &running {
                        if !stored.iter().any(|r| r.info.name == *name) {
                            check.problems.push(format!("agent {name:?} runs but is not in state.db"));
                        }
                    }
                }
                Err(e) => check.problems.push(format!("agents unreadable: {}", error_chain(&e))),
            }
        }
        let fields = |t: &Token| (t.id, t.key, t.ops, t.expires, t.save_dir, t.mnt_id);
        // One pass over the kernel map for all agents (it may hold many thousands of entries).
        let kernel = running.iter().any(|(_, _, f)| *f == Files::BpfLsm).then(|| self.kernel.file_grants());
        for (name, cgroup_id, files) in running {
            check.agents += 1;
            let mut held: Vec<_> = self.tokens.of_agent(cgroup_id).iter().map(fields).collect();
            held.sort_by_key(|f| f.0);
            check.tokens += held.len();
            if let Some(store) = self.store.get() {
                match store.tokens(cgroup_id) {
                    Ok(stored) => {
                        let stored: Vec<_> = stored.iter().map(fields).collect();
                        for f in held.iter().filter(|f| !stored.contains(f)) {
                            check
                                .problems
                                .push(format!("agent {name:?}: token {} is not in state.db as held", f.0));
                        }
                        for f in stored.iter().filter(|f| !held.contains(f)) {
                            check.problems.push(format!(
                                "agent {name:?}: state.db has token {} the daemon does not hold",
                                f.0
                            ));
                        }
                    }
                    Err(e) => {
                        check.problems.push(format!("agent {name:?}: tokens unreadable: {}", error_chain(&e)))
                    }
                }
            }
            if files != Files::BpfLsm {
                continue;
            }
            let want: HashMap<_, _> = self.tokens.entries_of(cgroup_id).into_iter().collect();
            let Some(read) = &kernel else { continue };
            let have: HashMap<_, _> = match read {
                Ok(all) => all.get(&cgroup_id).into_iter().flatten().copied().collect(),
                Err(e) => {
                    check.problems.push(format!("agent {name:?}: grant map unreadable: {}", error_chain(&e)));
                    continue;
                }
            };
            check.kernel_entries += have.len();
            for (key, entry) in &want {
                match have.get(key) {
                    None => check.problems.push(format!("agent {name:?}: no kernel entry for inode {}:{}", key.dev, key.ino)),
                    Some(k) if k != entry => check.problems.push(format!(
                        "agent {name:?}: kernel entry for inode {}:{} differs from its tokens ({k:?} != {entry:?})",
                        key.dev, key.ino
                    )),
                    Some(_) => {}
                }
            }
            for key in have.keys().filter(|k| !want.contains_key(k)) {
                check.problems.push(format!(
                    "agent {name:?}: kernel entry for inode {}:{} that no token makes",
                    key.dev, key.ino
                ));
            }
        }
        check
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kills and removes agent cgroups no stored agent accounts for: a spawn a crash cut
    /// before its record was written, or agents a damaged store lost. Their processes were
    /// confined by the pinned programs until now; with no record, nothing would enforce a
    /// later revoke, TTL or budget of theirs correctly, so they end (fail closed).
    pub fn reap_orphans(&self) {
        let adopted: HashSet<u64> = self.registry().names.keys().copied().collect();
        for cg in self.cgroups.existing().into_iter().filter(|cg| !adopted.contains(&cg.id)) {
            let n = self.cgroups.kill_all(&cg).unwrap_or(0);
            tracing::warn!(agent = %cg.name, processes = n, "killed an agent cgroup the state database does not know (fail closed)");
            match self.cgroups.remove(&cg) {
                Ok(()) => {
                    let _ = self.kernel.remove_agent(cg.id);
                }
                Err(e) => {
                    tracing::error!(agent = %cg.name, error = %e, "orphan cgroup not removed; its kernel policy stays")
                }
            }
            self.audit.record(Some(&cg.name), AuditEvent::Kill { caller_uid: 0, processes_killed: n });
        }
    }

    pub fn name_of(&self, cgroup_id: u64) -> Option<String> {
        self.registry().names.get(&cgroup_id).cloned()
    }

    /// Starts an agent. On success the process runs in its cgroup under its policy; the
    /// receiver yields its exit status. On error nothing is left behind.
    pub async fn spawn(
        self: &Arc<Self>,
        req: SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<(AgentInfo, watch::Receiver<Option<ExitStatus>>), ApiError> {
        self.spawn_inner(req, caller, stdio, None).await
    }

    /// [`AgentManager::spawn`]; with `carried`, a restart: these tokens instead of the
    /// request's, and the log continued.
    async fn spawn_inner(
        self: &Arc<Self>,
        req: SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
        carried: Option<Vec<Token>>,
    ) -> Result<(AgentInfo, watch::Receiver<Option<ExitStatus>>), ApiError> {
        let original = req.clone();
        let name: AgentName = req
            .name
            .parse()
            .map_err(|e: rush_proto::SpecError| api_err(ErrorKind::InvalidArgument, e.to_string()))?;
        let name = name.to_string();
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(api_err(ErrorKind::InvalidArgument, "no command to run: give one after `--`"));
        }
        if req.restartable && req.stdio != StdioMode::Log {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                "refusing --restartable for a foreground agent: its terminal does not survive a restart; \
                 spawn it detached (--detach)",
            ));
        }
        let (mut req, budget, exec, hardening) = self.apply_trust(req)?;
        // Who the agent runs as: the caller, or --user (root callers only).
        let run_as = self.run_as(&req, caller, &hardening)?;
        let operator = caller;
        let caller = &run_as;
        // Cost budgets: the agent's API calls go through its own metering proxy.
        let meter = match budget.cost_micro_usd {
            Some(limit) => match self.start_meter(&name, 0, limit) {
                Some(m) => Some(m?),
                None => {
                    return Err(api_err(
                        ErrorKind::Unsupported,
                        "refusing the cost budget: this daemon runs no metering proxy",
                    ));
                }
            },
            None => None,
        };
        let meter_url = meter.as_ref().map(|m| format!("http://{}", m.addr));
        if let Some(url) = &meter_url {
            for var in ["RUSH_METER_URL", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"] {
                req.env.retain(|(k, _)| k != var);
                req.env.push((var.to_owned(), url.clone()));
            }
        }
        let mut unconfined = Vec::new();
        let files = match (req.allow.first(), &self.enforcement.files) {
            (None, _) => Files::Open,
            (Some(_), FileBackend::BpfLsm) => Files::BpfLsm,
            (Some(_), FileBackend::Landlock) => Files::Landlock,
            (Some(_), FileBackend::Unavailable(why)) if req.allow_unconfined => {
                unconfined.push(format!("files: {why}"));
                Files::Unenforced
            }
            (Some(grant), FileBackend::Unavailable(why)) => {
                return Err(api_err(
                    ErrorKind::Unsupported,
                    format!(
                        "refusing --allow {}:{}: {why}; the agent would not be confined to it \
                         (--allow-unconfined runs it anyway, listed as UNCONFINED)",
                        grant.path.display(),
                        grant.ops
                    ),
                ));
            }
        };
        if !self.enforcement.net {
            if !req.allow_unconfined {
                return Err(api_err(
                    ErrorKind::Unsupported,
                    "the network programs are not attached, so no agent can be confined; see `rush doctor` \
                     (--allow-unconfined runs it anyway, listed as UNCONFINED)",
                ));
            }
            unconfined.push("net: the cgroup network programs are not attached".into());
        }
        if !req.cwd.is_dir() {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!("working directory {} does not exist or is not a directory", req.cwd.display()),
            ));
        }
        let (stdio_fds, log_path) = match (req.stdio, stdio) {
            (StdioMode::Passed, Some(fds)) => (Some(fds), None),
            (StdioMode::Passed, None) => {
                return Err(api_err(
                    ErrorKind::BadRequest,
                    "stdio \"passed\" needs stdin, stdout and stderr as SCM_RIGHTS on the request line",
                ));
            }
            (StdioMode::Log, _) => (None, Some(self.log_dir.join(format!("{name}.log")))),
        };
        let mut net = resolve_net(req.net.as_ref().unwrap_or(&NetPolicy::Deny)).await?;
        if meter.is_some()
            && let Some(up) = self.budgets.meter.as_ref().and_then(|m| m.config.upstream.as_ref())
            && reaches(&net, up)
        {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "refusing the cost budget: the network policy lets the agent reach the API ({}:{}) around \
                     its meter; give a --net that leaves the API out (the meter is always reachable)",
                    up.host, up.port
                ),
            ));
        }
        if let Some(m) = &meter {
            // Its meter is always reachable, whatever else its network policy says.
            let ep = (m.addr.ip(), 32, m.addr.port());
            net = match net {
                KernelNetPolicy::Deny => KernelNetPolicy::List(vec![ep]),
                KernelNetPolicy::List(mut eps) => {
                    eps.push(ep);
                    KernelNetPolicy::List(eps)
                }
                KernelNetPolicy::Allow => KernelNetPolicy::Allow,
            };
        }
        let restart = carried.is_some();
        // A file-confined agent's own TMPDIR (a restart under new rules keeps its path).
        let tmp = match files {
            Files::Open => None,
            _ => self.private_tmp_for(&name, caller, carried.as_deref())?,
        };
        if let Some(dir) = &tmp {
            req.env.retain(|(k, _)| k != "TMPDIR");
            req.env.push(("TMPDIR".to_owned(), dir.path().to_string_lossy().into_owned()));
        }
        let file_tokens = match carried {
            _ if files == Files::Open => None,
            Some(tokens) => Some(FileTokens::Carried(tokens)),
            None => Some(FileTokens::New(self.spawn_tokens(
                &self.agent_baseline(caller, tmp.as_ref().map(|t| t.path())),
                &req.allow,
                exec,
                stdio_fds.as_ref(),
                log_path.as_deref(),
            )?)),
        };

        if let (Files::Landlock, Some(FileTokens::New(tokens))) = (files, &file_tokens) {
            landlock_link_check(
                req.hardlinks.unwrap_or_default(),
                tokens.iter().map(|t| (&t.path, t.ops, t.origin)),
                &[],
            )
            .map_err(|e| api_err(ErrorKind::Unsupported, format!("refusing the spawn: {e}")))?;
        }
        // Reserve the name; everything after this point is undone on failure.
        {
            let mut reg = self.registry();
            let running = reg.agents.get(&name).is_some_and(|a| a.info.state == AgentState::Running);
            if running || reg.starting.contains(&name) {
                return Err(api_err(
                    ErrorKind::AlreadyExists,
                    format!("agent name {name:?} is already in use"),
                ));
            }
            reg.starting.insert(name.clone());
        }
        let files_confined = file_tokens.is_some();
        let respawn =
            (req.stdio == StdioMode::Log).then(|| Respawn { req: original, caller: operator.clone() });
        let plan = Plan {
            net,
            budget,
            file_tokens,
            files,
            unconfined: unconfined.clone(),
            stdio: stdio_fds,
            log_path: log_path.clone(),
            restart,
            hardening,
        };
        let result = self.start(&name, &req, plan, caller).await;
        self.registry().starting.remove(&name);
        let (mut info, cgroup, child, timed) = result?;
        info.meter_url = meter_url;

        let (tx, rx) = watch::channel(None);
        // A block: the guard must not live across the awaits below.
        {
            let mut reg = self.registry();
            if let Some(old) = reg.agents.remove(&name) {
                reg.exited_order.retain(|n| n != &name);
                // The name's previous agent (exited, or killed for a restart) is gone for
                // good: so is its cgroup id's name, which nothing else would ever remove.
                if old.cgroup.id != cgroup.id {
                    reg.names.remove(&old.cgroup.id);
                }
            }
            reg.agents.insert(
                name.clone(),
                Agent {
                    info: info.clone(),
                    cgroup: cgroup.clone(),
                    exit: rx.clone(),
                    log_path,
                    files_confined,
                    files,
                    respawn,
                    pause: Pause::default(),
                    reported: Reported { oom_kills: Some(0), fork_refusals: Some(0) },
                    exec,
                    meter,
                    cost_saved: 0,
                },
            );
        }
        self.audit.set_agent_session(&name, info.session.as_deref());
        self.audit.record(
            Some(&name),
            AuditEvent::Spawn {
                pid: info.pid,
                uid: caller.uid,
                command: req.command.clone(),
                net: req.net.clone().unwrap_or_default(),
                caller_uid: operator.uid,
                unconfined,
            },
        );
        for token in timed {
            self.schedule_expiry(token);
        }
        let mgr = Arc::clone(self);
        let saved = self.save_agent(&name).and_then(|()| self.save_restart(&name));
        let kill = saved.is_err().then(|| cgroup.clone());
        tokio::spawn(async move { mgr.watch_exit(name, cgroup, child, tx).await });
        if let (Err(e), Some(cg)) = (saved, kill) {
            // Unrecorded, a daemon restart would not know it: it must not outlive the refusal.
            let killed = self.cgroups.kill_all(&cg).unwrap_or(0);
            // Answered once it is gone, so the name is free again for a retry.
            let mut exit = rx.clone();
            let gone = async move { exit.wait_for(Option::is_some).await.is_ok() };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), gone).await;
            return Err(api_err(
                e.kind,
                format!("the agent was started, then killed ({killed} processes): its {}", e.message),
            ));
        }
        // From here on the agent's exit removes it.
        if let Some(t) = tmp {
            t.keep();
        }
        Ok((info, rx))
    }

    /// What the agent's first process sets up before exec (`harden.rs`); nothing when
    /// the daemon has no hardening (unit tests).
    fn child_hardening(
        &self,
        cg: &AgentCgroup,
        policy: &crate::harden::HardeningPolicy,
        in_session: bool,
    ) -> Result<crate::harden::ChildHardening, ApiError> {
        let Some(h) = self.hardening.get() else {
            return Ok(crate::harden::ChildHardening::default());
        };
        let view = if h.private_cgroupfs && !h.guard { self.cgroups.view(cg) } else { None };
        // An agent of a session may be dumped by CRIU (`checkpoint --with-processes`),
        // from a staging cgroup beside its own: CRIU 3.17 refuses a task that is outside
        // its cgroup namespace's root ("invalid cgroup configuration"). Where CRIU works,
        // such agents get no cgroup namespace; what keeps them in their cgroup is the
        // guard or the read-only view, as for every agent.
        let namespace = h.cgroup_namespace && !(in_session && crate::snapshot::processes::criu().is_ok());
        crate::harden::ChildHardening::new(namespace, view.as_ref(), policy, Some(Arc::clone(&h.seccomp)))
            .map_err(|e| api_err(ErrorKind::Internal, format!("cannot prepare the agent's hardening: {e}")))
    }

    /// Who the agent runs as: the caller, or `req.user` (a name or uid), which only root
    /// may set to someone else. Refused as root where the hardening refuses root agents.
    fn run_as(
        &self,
        req: &SpawnRequest,
        caller: &Caller,
        hardening: &crate::harden::HardeningPolicy,
    ) -> Result<Caller, ApiError> {
        let bad = |m: String| api_err(ErrorKind::InvalidArgument, m);
        let run_as = match &req.user {
            None => caller.clone(),
            Some(spec) => {
                let user = match spec.parse::<u32>() {
                    Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                    Err(_) => nix::unistd::User::from_name(spec),
                }
                .map_err(|e| api_err(ErrorKind::Internal, format!("cannot look up user {spec:?}: {e}")))?
                .ok_or_else(|| bad(format!("--user {spec:?}: no such user in the user database")))?;
                let uid = user.uid.as_raw();
                if caller.uid != 0 && uid != caller.uid {
                    return Err(api_err(
                        ErrorKind::PermissionDenied,
                        format!("--user {spec:?}: only root may run an agent as another user"),
                    ));
                }
                let name = std::ffi::CString::new(user.name.clone())
                    .map_err(|_| bad(format!("--user {spec:?}: the user name has a NUL byte")))?;
                let groups = nix::unistd::getgrouplist(&name, user.gid)
                    .map_err(|e| api_err(ErrorKind::Internal, format!("groups of {spec:?}: {e}")))?;
                Caller {
                    uid,
                    gid: user.gid.as_raw(),
                    pid: caller.pid,
                    groups: groups.into_iter().map(|g| g.as_raw()).collect(),
                }
            }
        };
        if run_as.uid == 0 && !hardening.root_agents {
            return Err(api_err(
                ErrorKind::PermissionDenied,
                format!(
                    "refusing to run the agent as root: {} refuses root agents; give --user USER",
                    match &req.trust {
                        Some(level) => format!("trust level {level:?}"),
                        None => "this daemon ([hardening] root_agents = false)".to_string(),
                    }
                ),
            ));
        }
        Ok(run_as)
    }

    async fn start(
        &self,
        name: &str,
        req: &SpawnRequest,
        plan: Plan,
        caller: &Caller,
    ) -> Result<(AgentInfo, AgentCgroup, Child, Vec<Token>), ApiError> {
        let Plan { net, budget, file_tokens, files, unconfined, stdio, log_path, restart, hardening } = plan;
        let tcp = landlock_tcp(&net);
        let internal =
            |what: &str, e: &dyn std::fmt::Display| api_err(ErrorKind::Internal, format!("{what}: {e}"));
        // A few mkdir(2) calls: done in place, since a hop to a blocking thread costs a
        // cold wake-up, which measured more than the work itself.
        let cg = self
            .cgroups
            .create(name)
            .map_err(|e| internal("cannot create the agent's cgroup", &error_chain(&e)))?;
        // Kernel events name the agent from its first instruction on.
        self.registry().names.insert(cg.id, name.to_owned());
        // The policy must be in the kernel before the first process enters the cgroup:
        // file grants first, then the agent entry that makes them (and the net policy) live.
        // Tokens with a TTL: the daemon enforces their expiry on mappings too.
        let mut timed = Vec::new();
        let installed = (|| {
            if let Some(tokens) = file_tokens {
                let (added, entries) = match tokens {
                    FileTokens::New(new) => self.tokens.add(name, cg.id, new),
                    FileTokens::Carried(mut old) => {
                        old.iter_mut().for_each(|t| t.cgroup_id = cg.id);
                        self.tokens.restore(old)
                    }
                };
                timed.extend(added.into_iter().filter(|t| t.expires.is_some()));
                // The BPF grant map only for agents the LSM programs confine.
                if files == Files::BpfLsm {
                    for (key, entry) in entries {
                        self.kernel.set_file_grant(cg.id, key, entry)?;
                    }
                }
            }
            self.budgets
                .control
                .apply(&cg, &budget)
                .map_err(|e| crate::bpf::BpfError::Other(error_chain(&e)))?;
            self.kernel.add_agent(
                cg.id,
                &net,
                AgentFlags { files_confined: files == Files::BpfLsm, hardlinks: hardlinks_of(files, req) },
            )?;
            self.kernel.set_net_budget(cg.id, net_budget(&budget))
        })();
        if let Err(e) = installed {
            self.tokens.forget_agent(cg.id);
            if self.cgroups.remove(&cg).is_ok() {
                let _ = self.kernel.remove_agent(cg.id);
            }
            self.registry().names.remove(&cg.id);
            return Err(internal("cannot install the agent's kernel policy", &e));
        }
        let landlock = if files == Files::Landlock {
            let now = boot_time_ns();
            let rules: Vec<crate::landlock::PathRule> = self
                .tokens
                .of_agent(cg.id)
                .into_iter()
                .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
                .map(|t| crate::landlock::PathRule { path: t.path, ops: t.ops })
                .collect();
            match crate::landlock::ruleset(&rules, &tcp) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    self.tokens.forget_agent(cg.id);
                    if self.cgroups.remove(&cg).is_ok() {
                        let _ = self.kernel.remove_agent(cg.id);
                    }
                    self.registry().names.remove(&cg.id);
                    return Err(api_err(ErrorKind::Unsupported, format!("Landlock: {}", error_chain(&e))));
                }
            }
        } else if files == Files::Open && self.enforcement.files == FileBackend::Landlock {
            // No BPF LSM guard on this daemon: Landlock's scopes keep the agent's signals
            // inside it (the daemon included), whatever its uid.
            crate::landlock::scope_only().unwrap_or_else(|e| {
                tracing::warn!(agent = %name, error = %error_chain(&e), "no Landlock scope: the agent may signal outside its cgroup");
                None
            })
        } else {
            None
        };
        let scoped = files == Files::Open && landlock.is_some();
        let files_enforcement = match files {
            Files::BpfLsm => Some(rush_proto::Enforcement::FilesBpfLsm),
            Files::Landlock => Some(rush_proto::Enforcement::FilesLandlock),
            Files::Open | Files::Unenforced => None,
        };
        let landlock_tcp = files == Files::Landlock && tcp.is_some() && crate::landlock::tcp_enforced();
        let child_hardening = self.child_hardening(&cg, &hardening, req.session.is_some());
        let hardening_info =
            child_hardening.as_ref().map(|h| crate::harden::info(h, &hardening)).unwrap_or_default();
        match child_hardening.and_then(|h| self.exec(&cg, req, caller, stdio, log_path, landlock, restart, h))
        {
            Ok(child) => {
                let pid = child.pid;
                let info = AgentInfo {
                    name: name.to_owned(),
                    cgroup_id: cg.id,
                    cgroup_path: cg.v2_dir.clone(),
                    pid,
                    uid: caller.uid,
                    command: req.command.clone(),
                    net: req.net.clone().unwrap_or_default(),
                    state: AgentState::Running,
                    trust: req.trust.clone(),
                    budget,
                    paused: Vec::new(),
                    usage: Vec::new(),
                    meter_url: None,
                    processes: 1,
                    started_unix_ms: now_unix_ms(),
                    enforcement: std::iter::once(rush_proto::Enforcement::IdentityCgroupV2)
                        .chain(self.enforcement.net.then_some(rush_proto::Enforcement::NetCgroupSockAddr))
                        .chain(files_enforcement)
                        .chain(scoped.then_some(rush_proto::Enforcement::SelfProtectionLandlockScope))
                        .chain(landlock_tcp.then_some(rush_proto::Enforcement::NetLandlockTcpPorts))
                        .chain((!budget.is_empty()).then_some(rush_proto::Enforcement::BudgetCgroup))
                        .collect(),
                    exit: None,
                    detached: req.stdio == StdioMode::Log,
                    unconfined,
                    session: req.session.clone(),
                    restartable: req.restartable,
                    hardlinks: hardlinks_of(files, req),
                    hardening: hardening_info,
                };
                Ok((info, cg, child, timed))
            }
            Err(e) => {
                let _ = self.cgroups.kill_all(&cg);
                if self.cgroups.remove(&cg).is_ok() {
                    let _ = self.kernel.remove_agent(cg.id);
                }
                self.tokens.forget_agent(cg.id);
                self.registry().names.remove(&cg.id);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        cg: &AgentCgroup,
        req: &SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
        log_path: Option<PathBuf>,
        landlock: Option<OwnedFd>,
        restart: bool,
        hardening: crate::harden::ChildHardening,
    ) -> Result<Child, ApiError> {
        let internal = |what: String| api_err(ErrorKind::Internal, what);
        let placement = self
            .cgroups
            .placement(cg)
            .map_err(|e| internal(format!("cannot open the agent's cgroup: {}", error_chain(&e))))?;
        let null = || -> Result<OwnedFd, ApiError> {
            File::open("/dev/null").map(OwnedFd::from).map_err(|e| internal(format!("/dev/null: {e}")))
        };
        let stdio = match (stdio, log_path) {
            (Some(fds), _) => fds,
            (None, Some(path)) => {
                let mut opts = std::fs::OpenOptions::new();
                // A restart continues the log, with a line saying why it starts over.
                if restart {
                    opts.append(true)
                } else {
                    opts.write(true).truncate(true)
                };
                let mut file = opts
                    .create(true)
                    .open(&path)
                    .map_err(|e| internal(format!("cannot open log {}: {e}", path.display())))?;
                if restart {
                    use std::io::Write;
                    let _ = writeln!(file, "--- rush-agentd: restarted under new Landlock rules ---");
                }
                let out = OwnedFd::from(file);
                let err = out.try_clone().map_err(|e| internal(e.to_string()))?;
                [null()?, out, err]
            }
            (None, None) => [null()?, null()?, null()?],
        };
        // Only root can change credentials; an unprivileged daemon (unit tests) runs agents
        // as itself, which is then also its caller.
        let creds = nix::unistd::geteuid().is_root().then(|| (caller.uid, caller.gid, caller.groups.clone()));
        let spawn =
            Spawn::new(&req.command, &req.env, &req.cwd, stdio, placement, creds, landlock, hardening)
                .map_err(|e| {
                    api_err(
                        ErrorKind::InvalidArgument,
                        format!("cannot run {:?}: {}", req.command[0], error_chain(&e)),
                    )
                })?;
        let (pid, pidfd) = spawn.start().map_err(|e| {
            let kind = match e {
                SpawnError::Child { .. } | SpawnError::NotFound { .. } => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            };
            api_err(kind, format!("cannot run {:?}: {}", req.command[0], error_chain(&e)))
        })?;
        Ok(Child { pid: pid as u32, pidfd })
    }

    async fn watch_exit(
        self: Arc<Self>,
        name: String,
        cg: AgentCgroup,
        child: Child,
        tx: watch::Sender<Option<ExitStatus>>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = child;
        let status = loop {
            let status = match crate::spawn::wait(child.pidfd).await {
                Ok(s) => ExitStatus { code: s.code(), signal: s.signal() },
                Err(e) => {
                    tracing::error!(agent = %name, error = %e, "lost track of the agent's process");
                    ExitStatus { code: None, signal: None }
                }
            };
            // Killed for a process restore: watch the restored root instead.
            let handover = self.registry().restoring.remove(&name);
            match handover {
                Some(rx) => match rx.await {
                    Ok(Some(restored)) => child = restored,
                    _ => break status,
                },
                None => break status,
            }
        };
        // The last look at its counters, while the cgroup still exists.
        let last = {
            let reg = self.registry();
            reg.agents.get(&name).map(|a| (a.info.budget, a.reported))
        };
        if let Some((budget, reported)) = last {
            let u = self.budgets.control.usage(&cg);
            self.audit_counters(&name, &budget, &u, reported);
        }
        // The first process is gone: nothing the agent left running outlives it.
        let tmp_dirs = self.private_tmp_dirs(cg.id);
        let mut conditional = Vec::new();
        let cgroups = Arc::clone(&self.cgroups);
        let cg2 = cg.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let _ = cgroups.kill_all(&cg2);
            cgroups.remove(&cg2)
        })
        .await;
        match removed {
            // Only once the cgroup is gone may its kernel policy go: fail closed.
            Ok(Ok(())) => {
                if let Err(e) = self.kernel.remove_agent(cg.id) {
                    tracing::warn!(agent = %name, error = %e, "kernel policy not removed");
                }
                conditional = self.tokens.conditional(cg.id);
                self.tokens.forget_agent(cg.id);
                self.persist("an exited agent's removal", |s| s.delete_agent(&name, cg.id));
                self.pending_expiries().retain(|_, t| t.cgroup_id != cg.id);
            }
            Ok(Err(e)) => {
                tracing::error!(agent = %name, error = %error_chain(&e), "agent cgroup not removed; its policy stays in force")
            }
            Err(e) => tracing::error!(agent = %name, error = %e, "cleanup task failed"),
        }
        let (pid, evicted) = {
            let mut reg = self.registry();
            // Only this watcher's agent: a restart may already have put a new agent under
            // the name (when the kill's wait for this exit timed out).
            let pid = match reg.agents.get_mut(&name) {
                Some(a) if a.cgroup.id == cg.id => {
                    a.info.state = AgentState::Exited;
                    a.info.exit = Some(status);
                    a.info.processes = 0;
                    Some(a.info.pid)
                }
                _ => None,
            };
            if pid.is_some() {
                reg.exited_order.push_back(name.clone());
            }
            let pid = pid.unwrap_or(child.pid);
            let mut evicted = Vec::new();
            while reg.exited_order.len() > EXITED_KEPT {
                let Some(old) = reg.exited_order.pop_front() else { break };
                if let Some(a) = reg.agents.remove(&old) {
                    reg.names.remove(&a.cgroup.id);
                    evicted.push(old);
                }
            }
            (pid, evicted)
        };
        for old in evicted {
            self.audit.set_agent_session(&old, None);
        }
        // Its TMPDIR, unless a restart already put a new agent under the name (which
        // carries the same directory).
        if !tmp_dirs.is_empty() && self.registry().agents.get(&name).is_some_and(|a| a.cgroup.id == cg.id) {
            self.remove_private_tmp(tmp_dirs).await;
        }
        // Done by itself: a restartable agent is not started again. Any other end (a crash,
        // a signal) leaves it to the next daemon start or boot; never restarted here, so a
        // failing agent cannot loop.
        if status.code == Some(0) {
            let restartable =
                self.registry().agents.get(&name).is_some_and(|a| a.cgroup.id == cg.id && a.info.restartable);
            if restartable {
                self.forget_restart(&name);
            }
        }
        self.audit.record(Some(&name), AuditEvent::Exit { pid, status });
        let _ = tx.send(Some(status));
        // The agent's work under its conditions gets its last check now.
        if !conditional.is_empty() {
            self.commit_at_exit(name, conditional).await;
        }
    }

    /// Boxed as `dyn Send`: the check is an agent spawned from here, so its future would
    /// otherwise contain itself (spawn → exit watcher → check → spawn).
    fn commit_at_exit(
        self: Arc<Self>,
        name: String,
        tokens: Vec<Token>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.commit_tokens(&name, tokens, CommitCause::Exit).await;
        })
    }

    pub fn list(&self) -> Vec<AgentInfo> {
        let reg = self.registry();
        let mut v: Vec<AgentInfo> = reg.agents.values().map(|a| self.current(a)).collect();
        v.sort_by(|a, b| a.started_unix_ms.cmp(&b.started_unix_ms).then(a.name.cmp(&b.name)));
        v
    }

    pub fn status(&self, name: &str) -> Result<AgentInfo, ApiError> {
        let reg = self.registry();
        reg.agents.get(name).map(|a| self.current(a)).ok_or_else(|| not_found(name))
    }

    fn current(&self, a: &Agent) -> AgentInfo {
        let mut info = a.info.clone();
        if info.state == AgentState::Running {
            info.processes = self.cgroups.pids(&a.cgroup).len() as u32;
            info.usage = crate::budget::usage_lines(&info.budget, &self.observe(&a.cgroup, ledger(a)));
        }
        info
    }

    /// Everything counted for an agent now.
    fn observe(&self, cg: &AgentCgroup, ledger: Option<Arc<crate::meter::Ledger>>) -> Observed {
        let net = self.kernel.net_usage(cg.id).ok().flatten();
        Observed {
            cgroup: self.budgets.control.usage(cg),
            net_bytes: net.map(|n| n.tx_bytes + n.rx_bytes),
            api_calls: net.map(|n| n.api_calls),
            net_dropped: net.map_or(0, |n| n.dropped_packets),
            api_refused: net.map_or(0, |n| n.refused_calls),
            cost_micro_usd: ledger.map(|l| l.used_micro_usd()),
        }
    }

    /// Starts a metering proxy for the agent; None if this daemon has none configured.
    fn start_meter(
        &self,
        name: &str,
        port: u16,
        limit: u64,
    ) -> Option<Result<crate::meter::AgentMeter, ApiError>> {
        let setup = self.budgets.meter.as_ref()?;
        let started = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(crate::meter::start_on(
                setup.config.clone(),
                name.to_owned(),
                port,
                limit,
                setup.events.clone(),
            ))
        });
        Some(started.map_err(|e| {
            api_err(ErrorKind::Unsupported, format!("refusing the cost budget: {}", error_chain(&e)))
        }))
    }

    /// Kills the agent's whole process tree. Cleanup (cgroup, kernel policy) follows when
    /// its first process is reaped.
    pub async fn kill(&self, name: &str, caller: &Caller) -> Result<u32, ApiError> {
        let (cg, mut exit) = {
            let reg = self.registry();
            let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
            if a.info.state != AgentState::Running {
                return Err(api_err(
                    ErrorKind::InvalidArgument,
                    format!("agent {name:?} has already exited"),
                ));
            }
            (a.cgroup.clone(), a.exit.clone())
        };
        let cgroups = Arc::clone(&self.cgroups);
        let n = tokio::task::spawn_blocking(move || cgroups.kill_all(&cg))
            .await
            .map_err(|e| api_err(ErrorKind::Internal, e.to_string()))?
            .map_err(|e| api_err(ErrorKind::Internal, format!("kill {name}: {}", error_chain(&e))))?;
        self.audit.record(Some(name), AuditEvent::Kill { caller_uid: caller.uid, processes_killed: n });
        // Answer once the agent is really gone, so `kill` then `list` never shows it running.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exit.wait_for(|s| s.is_some())).await;
        Ok(n)
    }

    pub fn log_path(&self, name: &str) -> Result<(PathBuf, watch::Receiver<Option<ExitStatus>>), ApiError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        let path = a.log_path.clone().ok_or_else(|| {
            api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "agent {name:?} runs in the foreground: its output went to the terminal that spawned it"
                ),
            )
        })?;
        Ok((path, a.exit.clone()))
    }

    /// The tokens a spawn with --allow starts with: the baseline (paths missing here are
    /// skipped) and the requested grants (which must exist).
    fn spawn_tokens(
        &self,
        baseline: &[FileGrant],
        allow: &[FileGrant],
        exec: ExecRule,
        stdio: Option<&[OwnedFd; 3]>,
        log_path: Option<&std::path::Path>,
    ) -> Result<Vec<NewToken>, ApiError> {
        let mut tokens: Vec<NewToken> = baseline
            .iter()
            .filter_map(|g| match NewToken::resolve(g, Origin::Baseline) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::debug!(error = %e, "baseline token skipped");
                    None
                }
            })
            .collect();
        for g in allow {
            let mut g = g.clone();
            if exec == ExecRule::System {
                // Only the baseline runs programs: what the agent may write, it may not run.
                g.ops = Ops(g.ops.0 & !Ops::EXEC.0);
                if g.ops.0 == 0 {
                    continue;
                }
            }
            let t = NewToken::resolve(&g, Origin::Spawn).map_err(|e| token_err("--allow", &e))?;
            tokens.push(t);
        }
        // What the agent was handed stays usable: a regular file as stdin/stdout/stderr
        // (`> out.txt`) or its log. Pipes and terminals need no token. In the modes it was
        // opened with, as under Landlock (which never checks an fd opened outside): stdin
        // handed read-write (`<> f`) may be written, stdout opened read-write read.
        if let Some(fds) = stdio {
            for fd in fds {
                use std::os::fd::AsFd;
                let meta = nix::sys::stat::fstat(fd.as_fd());
                let ops = stdio_ops(fd.as_fd());
                if meta.is_ok_and(|m| m.st_mode & libc::S_IFMT == libc::S_IFREG) && ops != Ops(0) {
                    let path =
                        std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)))
                            .unwrap_or_default();
                    let token = NewToken::stdio(path, fd.as_fd(), ops).map_err(|e| token_err("stdio", &e))?;
                    tokens.push(token);
                }
            }
        }
        if let Some(log) = log_path {
            // Created now, so that it has an inode to grant.
            std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| {
                api_err(ErrorKind::Internal, format!("cannot create log {}: {e}", log.display()))
            })?;
            let grant = FileGrant { path: log.to_owned(), ops: Ops::WRITE, ttl_secs: None };
            tokens.push(NewToken::resolve(&grant, Origin::Stdio).map_err(|e| token_err("log", &e))?);
        }
        Ok(tokens)
    }

    /// The baseline of an agent of `caller`'s: home entries under the home of the user
    /// it runs as, and its TMPDIR (read, write, create, delete; never exec).
    fn agent_baseline(&self, caller: &Caller, tmp: Option<&std::path::Path>) -> Vec<FileGrant> {
        let uid = if nix::unistd::geteuid().is_root() { caller.uid } else { nix::unistd::geteuid().as_raw() };
        let mut grants = crate::baseline::expand(&self.baseline, crate::baseline::home_of(uid).as_deref());
        if let Some(dir) = tmp {
            let ops = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0 | Ops::DELETE.0);
            grants.push(FileGrant { path: dir.to_owned(), ops, ttl_secs: None });
        }
        grants
    }

    /// Turns on private TMPDIRs in `tmp` (the daemon, from `files.private_tmp`): what
    /// agents left there before is removed, except the directories of adopted agents.
    /// Agents spawned from now on are hardened so (see `harden.rs`).
    pub fn set_hardening(&self, hardening: AgentHardening) {
        let _ = self.hardening.set(hardening);
    }

    pub fn set_private_tmp(&self, tmp: crate::baseline::PrivateTmp) {
        let live: HashSet<PathBuf> = {
            let reg = self.registry();
            let running: Vec<u64> = reg
                .agents
                .values()
                .filter(|a| a.info.state == AgentState::Running)
                .map(|a| a.cgroup.id)
                .collect();
            drop(reg);
            running.into_iter().flat_map(|id| self.tokens.of_agent(id)).map(|t| t.path).collect()
        };
        tmp.sweep(|d| live.contains(d));
        let _ = self.private_tmp.set(tmp);
    }

    /// A new TMPDIR for agent `name`, owned by the user it runs as; for a restart, the
    /// one its carried tokens name, made again if gone. None when private TMPDIRs are off.
    fn private_tmp_for(
        &self,
        name: &str,
        caller: &Caller,
        carried: Option<&[Token]>,
    ) -> Result<Option<crate::baseline::TmpDir>, ApiError> {
        let Some(tmp) = self.private_tmp.get() else { return Ok(None) };
        let owner = nix::unistd::geteuid().is_root().then_some((caller.uid, caller.gid));
        let made = match carried.and_then(|c| c.iter().find(|t| tmp.owns(&t.path))) {
            Some(t) => tmp.recreate(&t.path, owner),
            None if carried.is_some() => return Ok(None),
            None => tmp.create(name, owner),
        };
        made.map(Some).map_err(|e| {
            api_err(ErrorKind::Internal, format!("cannot give the agent its TMPDIR: {}", error_chain(&e)))
        })
    }

    /// The TMPDIRs among the tokens of the agent in cgroup `cgroup_id`.
    fn private_tmp_dirs(&self, cgroup_id: u64) -> Vec<PathBuf> {
        let Some(tmp) = self.private_tmp.get() else { return Vec::new() };
        self.tokens.of_agent(cgroup_id).into_iter().map(|t| t.path).filter(|p| tmp.owns(p)).collect()
    }

    async fn remove_private_tmp(&self, dirs: Vec<PathBuf>) {
        let Some(tmp) = self.private_tmp.get().cloned() else { return };
        let _ = tokio::task::spawn_blocking(move || dirs.iter().for_each(|d| tmp.remove(d))).await;
    }

    /// The cgroup of the running, file-confined agent `name`.
    fn confined_agent(&self, name: &str) -> Result<AgentCgroup, ApiError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        if a.info.state != AgentState::Running {
            return Err(api_err(ErrorKind::InvalidArgument, format!("agent {name:?} has exited")));
        }
        if !a.files_confined {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "agent {name:?} is not file-confined (it was spawned without --allow): its file access \
                     is not restricted, so a token would change nothing"
                ),
            ));
        }
        Ok(a.cgroup.clone())
    }

    /// The request with its trust level's defaults filled in, the combined budget, and the
    /// exec rule. Refuses budgets this machine cannot enforce.
    #[allow(clippy::type_complexity)]
    fn apply_trust(
        &self,
        mut req: SpawnRequest,
    ) -> Result<(SpawnRequest, Budget, ExecRule, crate::harden::HardeningPolicy), ApiError> {
        let mut budget = req.budget;
        let mut exec = ExecRule::Granted;
        let mut hardening = self.hardening.get().map(|h| h.defaults.clone()).unwrap_or_default();
        if let Some(level) = &req.trust {
            let level =
                self.budgets.policy.level(level).map_err(|e| api_err(ErrorKind::InvalidArgument, e))?;
            budget = level.budget.overridden_by(&req.budget);
            if req.net.is_none() {
                req.net = level.net.clone();
            }
            if req.hardlinks.is_none() {
                req.hardlinks = level.hardlinks;
            }
            hardening = level.hardening.apply(&hardening);
            let mut allow = level.allow.clone();
            allow.append(&mut req.allow);
            req.allow = allow;
            exec = level.exec;
            let exec_unenforced = match &self.enforcement.files {
                FileBackend::BpfLsm => None,
                // Landlock sees execve only: `ld.so BINARY` and memfds would run what the
                // agent wrote, so the rule would not hold.
                FileBackend::Landlock => Some(
                    "file tokens are enforced by Landlock here, which checks execve only (not \
                     mmap(PROT_EXEC): `ld.so BINARY` would run what the agent wrote)"
                        .to_string(),
                ),
                FileBackend::Unavailable(why) => Some(why.clone()),
            };
            if let (ExecRule::System, Some(why)) = (exec, &exec_unenforced) {
                return Err(api_err(
                    ErrorKind::Unsupported,
                    format!(
                        "refusing trust level {:?}: its exec rule (\"system\") is enforced by file confinement, \
                         and {why}",
                        level.name
                    ),
                ));
            }
            if exec == ExecRule::System && req.allow.is_empty() {
                // The exec rule is enforced by file confinement: an agent at this level is
                // file-confined even with no tokens of its own (the baseline lets it run).
                req.allow.push(FileGrant {
                    path: PathBuf::from("/dev/null"),
                    ops: Ops::READ,
                    ttl_secs: None,
                });
            }
        }
        if budget.api_calls.is_some() && self.budgets.api_endpoints == 0 {
            return Err(api_err(
                ErrorKind::Unsupported,
                "refusing the api budget: no API endpoints are configured (budget.api_endpoints in the \
                 daemon's config), so no call would be counted",
            ));
        }
        if let Some((resource, why)) =
            self.budgets.control.unavailable().into_iter().find(|(r, _)| crate::budget::sets(&budget, r))
        {
            return Err(api_err(
                ErrorKind::Unsupported,
                format!("refusing the {resource} budget: {why}; it could not be enforced"),
            ));
        }
        Ok((req, budget, exec, hardening))
    }

    fn exec_rule(&self, trust: Option<&str>) -> ExecRule {
        trust.and_then(|t| self.budgets.policy.level(t).ok()).map_or(ExecRule::Granted, |l| l.exec)
    }

    /// Freezes the agent until `resume`.
    pub async fn pause(&self, name: &str, caller: &Caller) -> Result<AgentInfo, ApiError> {
        let cg = self.running(name)?;
        if self.registry().agents.get(name).is_some_and(|a| a.pause.operator) {
            return self.status(name);
        }
        self.freeze_for(name, &cg).await?;
        self.set_pause(name, |p| p.operator = true);
        self.audit.record(
            Some(name),
            AuditEvent::Paused { caller_uid: Some(caller.uid), reason: PauseReason::Operator },
        );
        self.persist_agent(name);
        self.status(name)
    }

    /// Thaws the agent, first raising its budget by `raise`. Refused, with the agent left
    /// frozen, if its CPU budget stays spent.
    pub async fn resume(
        &self,
        name: &str,
        raise: Option<Budget>,
        caller: &Caller,
    ) -> Result<AgentInfo, ApiError> {
        let cg = self.running(name)?;
        let (old, pause, ledger) = {
            let reg = self.registry();
            let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
            (a.info.budget, a.pause, ledger(a))
        };
        let budget = raise.map_or(old, |r| old.overridden_by(&r));
        if budget.cost_micro_usd.is_some() && old.cost_micro_usd.is_none() {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "agent {name:?} was spawned without a cost budget: its API calls do not go through a meter"
                ),
            ));
        }
        let observed = self.observe(&cg, ledger.clone());
        if crate::budget::cpu_spent(&budget, &observed) {
            let used = crate::budget::cpu_ms(&observed).unwrap_or(0);
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "agent {name:?} has used {:.1}s of CPU time against a budget of {}: it stays frozen; \
                     resume it with a higher one, e.g. --budget cpu:{}",
                    used as f64 / 1000.0,
                    rush_proto::budget::format_cpu_ms(budget.cpu_ms.unwrap_or(0)),
                    rush_proto::budget::format_cpu_ms((used * 2).max(1000).div_ceil(1000) * 1000)
                ),
            ));
        }
        if budget != old {
            let control = Arc::clone(&self.budgets.control);
            let cg2 = cg.clone();
            tokio::task::spawn_blocking(move || control.apply(&cg2, &budget))
                .await
                .map_err(|e| api_err(ErrorKind::Internal, e.to_string()))?
                .map_err(|e| api_err(ErrorKind::Unsupported, error_chain(&e)))?;
        }
        if let (Some(l), Some(limit)) = (&ledger, budget.cost_micro_usd) {
            l.set_limit(limit);
        }
        if (budget.net_bytes, budget.api_calls) != (old.net_bytes, old.api_calls) {
            self.kernel
                .set_net_budget(cg.id, net_budget(&budget))
                .map_err(|e| api_err(ErrorKind::Internal, format!("net budget of {name}: {e}")))?;
        }
        for _ in [pause.operator, pause.cpu_budget].iter().filter(|on| **on) {
            self.cgroups
                .thaw(&cg)
                .map_err(|e| api_err(ErrorKind::Internal, format!("thaw {name}: {}", error_chain(&e))))?;
        }
        if let Some(a) = self.registry().agents.get_mut(name) {
            a.info.budget = budget;
        }
        self.set_pause(name, |p| *p = Pause::default());
        self.audit.record(Some(name), AuditEvent::Resumed { caller_uid: caller.uid, budget });
        self.persist_agent(name);
        self.status(name)
    }

    /// Running agents of session `session`.
    pub fn in_session(&self, session: &str) -> Vec<String> {
        let reg = self.registry();
        let mut names: Vec<String> = reg
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running && a.info.session.as_deref() == Some(session))
            .map(|a| a.info.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Freezes the running agent for a workspace operation; pair with [`Self::thaw`]. Each
    /// freeze is counted, so an operator pause or a budget freeze held meanwhile stays.
    pub async fn freeze(&self, name: &str) -> Result<(), ApiError> {
        let cg = self.running(name)?;
        self.freeze_for(name, &cg).await
    }

    pub fn thaw(&self, name: &str) -> Result<(), ApiError> {
        let cg = self.running(name)?;
        self.cgroups
            .thaw(&cg)
            .map_err(|e| api_err(ErrorKind::Internal, format!("thaw {name}: {}", error_chain(&e))))
    }

    /// After a rollback swapped the workspace's tree, the agent's tokens follow their paths
    /// to the new inodes (kernel map and store), so a restored agent keeps what it was granted.
    pub fn follow_token_paths(&self, name: &str) -> Result<usize, ApiError> {
        let cg = self.running(name)?;
        let (moves, entries) = self.tokens.follow_paths(cg.id);
        self.write_entries(cg.id, entries)?;
        for (from, to) in &moves {
            self.persist_rekey(cg.id, *from, *to);
        }
        Ok(moves.len())
    }

    /// The cgroup of the running agent `name`.
    fn running(&self, name: &str) -> Result<AgentCgroup, ApiError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        if a.info.state != AgentState::Running {
            return Err(api_err(ErrorKind::InvalidArgument, format!("agent {name:?} has exited")));
        }
        Ok(a.cgroup.clone())
    }

    async fn freeze_for(&self, name: &str, cg: &AgentCgroup) -> Result<(), ApiError> {
        let cgroups = Arc::clone(&self.cgroups);
        let cg = cg.clone();
        let frozen =
            tokio::task::spawn_blocking(move || cgroups.freeze(&cg, std::time::Duration::from_secs(5)))
                .await
                .map_err(|e| api_err(ErrorKind::Internal, e.to_string()))?
                .map_err(|e| api_err(ErrorKind::Internal, format!("freeze {name}: {}", error_chain(&e))))?;
        if !frozen {
            tracing::warn!(agent = %name, "still freezing after 5 s (a process in uninterruptible sleep)");
        }
        Ok(())
    }

    fn set_pause(&self, name: &str, change: impl FnOnce(&mut Pause)) {
        if let Some(a) = self.registry().agents.get_mut(name) {
            change(&mut a.pause);
            a.info.paused = a.pause.describe();
        }
    }

    /// One round of budget enforcement (the daemon runs it every `budget.poll_ms`): agents
    /// past their CPU time are frozen; new OOM kills and refused forks are audited.
    pub async fn check_budgets(&self) {
        type Row = (String, AgentCgroup, Budget, Pause, Reported, Option<Arc<crate::meter::Ledger>>, u64);
        let agents: Vec<Row> = self
            .registry()
            .agents
            .iter()
            .filter(|(_, a)| a.info.state == AgentState::Running)
            .map(|(n, a)| {
                (n.clone(), a.cgroup.clone(), a.info.budget, a.pause, a.reported, ledger(a), a.cost_saved)
            })
            .collect();
        for (name, cg, budget, pause, reported, ledger, cost_saved) in agents {
            // Only what this round acts on: cpu time, the cgroup counters and spend (the
            // kernel's net counters enforce themselves; status reads them).
            let observed = Observed {
                cgroup: self.budgets.control.usage(&cg),
                cost_micro_usd: ledger.map(|l| l.used_micro_usd()),
                ..Default::default()
            };
            // Spend survives a daemon restart: written when it changed.
            if let Some(cost) = observed.cost_micro_usd.filter(|c| *c != cost_saved) {
                if let Some(a) = self.registry().agents.get_mut(&name) {
                    a.cost_saved = cost;
                    a.info.usage = crate::budget::usage_lines(&budget, &observed);
                }
                self.persist_agent(&name);
            }
            let u = observed.cgroup;
            if !pause.cpu_budget && crate::budget::cpu_spent(&budget, &observed) {
                if let Err(e) = self.freeze_for(&name, &cg).await {
                    tracing::error!(agent = %name, error = %e.message, "cpu budget spent but the agent is not frozen");
                } else {
                    self.set_pause(&name, |p| p.cpu_budget = true);
                    let used = crate::budget::cpu_ms(&observed).unwrap_or(0);
                    let limit = budget.cpu_ms.unwrap_or(0);
                    tracing::warn!(agent = %name, used_ms = used, limit_ms = limit, "cpu budget spent: agent frozen; `rush agent resume {name} --budget cpu:...` continues it");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::BudgetExceeded {
                            resource: BudgetResource::Cpu,
                            used,
                            limit,
                            action: "frozen until resumed with a raised budget".into(),
                        },
                    );
                    self.persist_agent(&name);
                }
            }
            self.audit_counters(&name, &budget, &u, reported);
        }
    }

    /// Audits OOM kills and refused forks counted since `reported`, and remembers the new
    /// counts. Also run when the agent's first process exits, before its cgroup (and
    /// counters) go: an OOM kill is often what ended it.
    fn audit_counters(
        &self,
        name: &str,
        budget: &Budget,
        u: &crate::budget::CgroupUsage,
        reported: Reported,
    ) {
        let mut now = reported;
        if let Some(kills) = u.oom_kills {
            if let Some(seen) = reported.oom_kills.filter(|s| kills > *s) {
                let limit_bytes = budget.mem_bytes.unwrap_or(0);
                self.audit.record(Some(name), AuditEvent::OomKill { count: kills - seen, limit_bytes });
            }
            now.oom_kills = Some(kills);
        }
        if let Some(refused) = u.fork_refusals {
            if let Some(seen) = reported.fork_refusals.filter(|s| refused > *s) {
                let limit = budget.pids.unwrap_or(0);
                self.audit.record(Some(name), AuditEvent::ForkRefused { count: refused - seen, limit });
            }
            now.fork_refusals = Some(refused);
        }
        if let Some(a) = self.registry().agents.get_mut(name) {
            a.reported = now;
        }
    }

    /// The tokens (for the kernel's own changes to them, e.g. a grant moved by a save).
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Adds a token. A Landlock-confined agent is then frozen and restarted under the
    /// widened rules, or killed (`[landlock] on_widen`): the returned effect says which.
    pub async fn grant(
        self: &Arc<Self>,
        req: GrantRequest,
        caller: &Caller,
    ) -> Result<(TokenInfo, Option<ChangeEffect>), ApiError> {
        let files = self.files_of(&req.agent);
        if let (FileBackend::Unavailable(why), false) =
            (&self.enforcement.files, files == Some(Files::Unenforced))
        {
            return Err(api_err(ErrorKind::Unsupported, format!("refusing the grant: {why}")));
        }
        let cgroup_id = self.confined_agent(&req.agent)?.id;
        if files == Some(Files::Landlock) && req.condition.is_some() {
            return Err(api_err(
                ErrorKind::Unsupported,
                format!(
                    "refusing --condition: agent {:?} is confined by Landlock, whose rules are paths fixed \
                     at start, so its writes cannot be redirected to a worktree (conditional tokens need \
                     BPF LSM); grant the directory itself, or a worktree you made, without --condition",
                    req.agent
                ),
            ));
        }
        let effect = match files {
            Some(Files::Landlock) => Some(self.planned_effect(&req.agent, true)?),
            _ => None,
        };
        if req.ops.0 == 0 {
            return Err(api_err(ErrorKind::InvalidArgument, "no operations to grant"));
        }
        if req.ops.contains(Ops::EXEC) {
            let reg = self.registry();
            if let Some(a) = reg.agents.get(&req.agent).filter(|a| a.exec == ExecRule::System) {
                return Err(api_err(
                    ErrorKind::PermissionDenied,
                    format!(
                        "refusing exec on {}: agent {:?} runs at trust level {:?}, whose exec rule is \"system\" \
                         (only the baseline tokens may run programs)",
                        req.path.display(),
                        req.agent,
                        a.info.trust.as_deref().unwrap_or("?")
                    ),
                ));
            }
        }
        let grant = FileGrant { path: req.path, ops: req.ops, ttl_secs: req.duration_secs };
        let new = match req.condition {
            Some(command) => self.conditional_token(&req.agent, &grant, command)?,
            None => NewToken::resolve(&grant, Origin::Grant).map_err(|e| token_err("grant", &e))?,
        };
        if files == Some(Files::Landlock) {
            let mode = self.registry().agents.get(&req.agent).map(|a| a.info.hardlinks).unwrap_or_default();
            let held: Vec<PathBuf> = self.tokens.of_agent(cgroup_id).into_iter().map(|t| t.path).collect();
            landlock_link_check(mode, [(&new.path, new.ops, new.origin)], &held)
                .map_err(|e| api_err(ErrorKind::Unsupported, format!("refusing the grant: {e}")))?;
        }
        let (added, entries) = self.tokens.add(&req.agent, cgroup_id, vec![new]);
        let ids: Vec<u64> = added.iter().map(|t| t.id).collect();
        // The store first: a crash after it and before the kernel write is mended by the
        // restart (the kernel map is rebuilt from the store); the other order could leave
        // an access in the kernel that nothing records.
        if let Err(e) = self.save("grant", |s| s.put_tokens(&added)) {
            self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            return Err(e);
        }
        if let Err(e) = self.save_restart(&req.agent) {
            self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            self.persist("an undone grant", |s| s.delete_tokens(&ids));
            return Err(e);
        }
        if files == Some(Files::BpfLsm)
            && let Err(e) = self.write_entries(cgroup_id, entries)
        {
            let (_, entries) = self.tokens.remove(cgroup_id, |t| ids.contains(&t.id));
            let _ = self.write_entries(cgroup_id, entries);
            self.persist("an undone grant", |s| s.delete_tokens(&ids));
            return Err(e);
        }
        let token = added[0].info();
        self.audit
            .record(Some(&req.agent), AuditEvent::Grant { caller_uid: caller.uid, token: token.clone() });
        for t in added {
            self.schedule_expiry(t);
        }
        let effect = match effect {
            Some(planned) => Some(self.reconfine(planned, "grant", caller).await?),
            None => None,
        };
        Ok((token, effect))
    }

    /// How the running agent `name`'s files are confined; None if there is no such agent.
    fn files_of(&self, name: &str) -> Option<Files> {
        self.registry().agents.get(name).map(|a| a.files)
    }

    /// What a grant (`widen`) or a revoke would do to the running agent `name`.
    fn planned_effect(&self, name: &str, widen: bool) -> Result<ChangeEffect, ApiError> {
        // Refuses exited and unconfined agents, as the change itself would.
        self.confined_agent(name)?;
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        let pid = a.info.pid;
        let (action, detail) = match a.files {
            Files::BpfLsm => (
                ChangeAction::InPlace,
                "BPF LSM: the kernel's grant map changes under the running agent; open files are \
                 checked again at their next read or write, and a process that maps a file which lost \
                 an operation is killed"
                    .to_string(),
            ),
            Files::Landlock => {
                let (policy, key) = if widen {
                    (self.enforcement.landlock.on_widen, "on_widen")
                } else {
                    (self.enforcement.landlock.on_narrow, "on_narrow")
                };
                let head = format!(
                    "Landlock cannot change the rules of a running process: agent {name} (pid {pid}) will be \
                     frozen and"
                );
                match (policy, &a.respawn) {
                    (crate::config::OnChange::Restart, Some(r)) => (
                        ChangeAction::Restart,
                        format!(
                            "{head} restarted ([landlock] {key} = \"restart\"): its process tree killed, then \
                             `{}` started again under the new rules, with a new pid, from the beginning \
                             (restart from a checkpoint comes with time travel)",
                            r.req.command.join(" ")
                        ),
                    ),
                    (crate::config::OnChange::Restart, None) => (
                        ChangeAction::Kill,
                        format!(
                            "{head} killed: it {} so it cannot be restarted",
                            if a.info.detached {
                                "was re-adopted after a daemon restart (its environment is not stored),"
                            } else {
                                "runs in the foreground (its terminal cannot be handed to a new process),"
                            }
                        ),
                    ),
                    (crate::config::OnChange::Kill, _) => {
                        (ChangeAction::Kill, format!("{head} killed ([landlock] {key} = \"kill\")"))
                    }
                }
            }
            Files::Unenforced => (
                ChangeAction::None,
                format!(
                    "agent {name} is UNCONFINED: nothing enforces its file tokens; the change is only recorded"
                ),
            ),
            Files::Open => unreachable!("confined_agent refuses agents spawned without --allow"),
        };
        drop(reg);
        Ok(ChangeEffect {
            agent: name.to_owned(),
            backend: self.files_of(name).map_or(FilesBackend::None, Files::backend),
            action,
            detail,
            pid,
            new_pid: None,
        })
    }

    /// What a grant (`revoke: None`) or this revoke would do to the running agent, without
    /// doing it (`rush capability grant/revoke` print it first).
    pub fn change_effect(&self, name: &str, revoke: Option<&RevokeTarget>) -> Result<ChangeEffect, ApiError> {
        let cgroup_id = self.confined_agent(name)?.id;
        if let Some(target) = revoke {
            let key = match target {
                RevokeTarget::Path(p) => crate::tokens::file_key(p).ok(),
                RevokeTarget::Id(_) => None,
            };
            let any = self.tokens.of_agent(cgroup_id).iter().any(|t| match target {
                RevokeTarget::Id(id) => t.id == *id,
                RevokeTarget::Path(p) => t.path == *p || Some(t.key) == key,
            });
            if !any {
                return Err(api_err(ErrorKind::NotFound, format!("agent {name:?} has no such token")));
            }
        }
        self.planned_effect(name, revoke.is_none())
    }

    /// Landlock cannot change a running process's rules: the agent is frozen, then killed,
    /// and (for `restart`) its command started again under its tokens as they are now.
    async fn reconfine(
        self: &Arc<Self>,
        planned: ChangeEffect,
        cause: &str,
        caller: &Caller,
    ) -> Result<ChangeEffect, ApiError> {
        let name = planned.agent.clone();
        let (cg, respawn) = {
            let reg = self.registry();
            let a = reg.agents.get(&name).ok_or_else(|| not_found(&name))?;
            (a.cgroup.clone(), a.respawn.clone())
        };
        // Frozen first: from here on it does nothing under its old rules.
        if let Err(e) = self.freeze_for(&name, &cg).await {
            tracing::warn!(agent = %name, error = %e.message, "not frozen before the kill");
        }
        let now = boot_time_ns();
        let carried: Vec<Token> = self
            .tokens
            .of_agent(cg.id)
            .into_iter()
            .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
            .collect();
        self.kill(&name, caller).await?;
        let mut effect = planned;
        if effect.action == ChangeAction::Restart
            && let Some(r) = respawn
        {
            match self.spawn_inner(r.req, &r.caller, None, Some(carried)).await {
                Ok((info, _)) => effect.new_pid = Some(info.pid),
                Err(e) => {
                    tracing::error!(agent = %name, error = %e.message, "killed for new Landlock rules, but not restarted");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::RulesetChange {
                            action: ChangeAction::Kill,
                            cause: cause.into(),
                            old_pid: effect.pid,
                            new_pid: None,
                        },
                    );
                    return Err(api_err(
                        e.kind,
                        format!(
                            "agent {name} was killed for its new rules but could not be restarted: {}",
                            e.message
                        ),
                    ));
                }
            }
        }
        tracing::info!(agent = %name, action = %effect.action, cause, old_pid = effect.pid, new_pid = ?effect.new_pid, "Landlock rules changed");
        self.audit.record(
            Some(&name),
            AuditEvent::RulesetChange {
                action: effect.action,
                cause: cause.into(),
                old_pid: effect.pid,
                new_pid: effect.new_pid,
            },
        );
        Ok(effect)
    }

    /// A conditional token: its worktree made now, a copy of the directory.
    fn conditional_token(
        &self,
        agent: &str,
        grant: &FileGrant,
        command: String,
    ) -> Result<NewToken, ApiError> {
        if command.trim().is_empty() {
            return Err(api_err(ErrorKind::InvalidArgument, "--condition: the command is empty"));
        }
        if !grant.ops.contains(Ops::WRITE) {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!("--condition guards writes, but the ops ({}) include no write", grant.ops),
            ));
        }
        if !grant.path.is_absolute() {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!("path {} must be absolute", grant.path.display()),
            ));
        }
        let id = CONDITION_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worktree = crate::condition::create_worktree(&grant.path, agent, id)
            .map_err(|e| api_err(ErrorKind::InvalidArgument, format!("--condition: {e}")))?;
        let condition = crate::condition::Condition { command, original: grant.path.clone(), worktree };
        NewToken::conditional(grant, condition).map_err(|e| token_err("grant", &e))
    }

    /// Runs the conditions of the agent's conditional tokens (one, or all): each in a
    /// confined agent of its own (cwd: the worktree, network denied, writes to the
    /// worktree only), with the agent frozen meanwhile; exit 0 promotes the worktree's
    /// changes to the directory, anything else puts the worktree back as the directory is.
    pub async fn commit(
        self: &Arc<Self>,
        agent: &str,
        token: Option<u64>,
    ) -> Result<Vec<rush_proto::CommitOutcome>, ApiError> {
        let cg = self.confined_agent(agent)?;
        let cgroup_id = cg.id;
        let tokens: Vec<Token> = self
            .tokens
            .conditional(cgroup_id)
            .into_iter()
            .filter(|t| token.is_none_or(|id| t.id == id))
            .collect();
        if tokens.is_empty() {
            return Err(api_err(
                ErrorKind::NotFound,
                match token {
                    Some(id) => format!("agent {agent} has no conditional token {id}"),
                    None => format!("agent {agent} has no conditional token"),
                },
            ));
        }
        let cgroups = Arc::clone(&self.cgroups);
        let frozen = cg.clone();
        let froze =
            tokio::task::spawn_blocking(move || cgroups.freeze(&frozen, std::time::Duration::from_secs(5)))
                .await
                .map_err(|e| api_err(ErrorKind::Internal, format!("freezing {agent}: {e}")))?
                .map_err(|e| {
                    api_err(ErrorKind::Internal, format!("freezing {agent}: {}", error_chain(&e)))
                })?;
        if !froze {
            tracing::warn!(agent, "not frozen within 5 s; its condition runs anyway");
        }
        let outcomes = self.commit_tokens(agent, tokens, CommitCause::Request).await;
        let cgroups = Arc::clone(&self.cgroups);
        let _ = tokio::task::spawn_blocking(move || cgroups.thaw(&cg)).await;
        Ok(outcomes)
    }

    async fn commit_tokens(
        self: &Arc<Self>,
        agent: &str,
        tokens: Vec<Token>,
        cause: CommitCause,
    ) -> Vec<rush_proto::CommitOutcome> {
        let mut outcomes = Vec::new();
        for t in tokens {
            let Some(c) = t.condition.clone() else { continue };
            let exit = self.run_condition(agent, t.id, &c).await;
            let (promoted, synced, reason) = match &exit {
                Ok(0) => (true, crate::condition::sync(&c.worktree, &c.original), None),
                Ok(code) => (
                    false,
                    crate::condition::sync(&c.original, &c.worktree),
                    Some(format!("`{}` exited with {code}", c.command)),
                ),
                Err(why) => (false, crate::condition::sync(&c.original, &c.worktree), Some(why.clone())),
            };
            let (changes, reason) = match synced {
                Ok(changes) => (changes, reason),
                Err(e) => (
                    crate::condition::Changes::default(),
                    Some(format!("{}{e}", reason.map(|r| format!("{r}; ")).unwrap_or_default())),
                ),
            };
            let outcome = rush_proto::CommitOutcome {
                token: t.id,
                path: c.original.clone(),
                worktree: c.worktree.clone(),
                condition: c.command.clone(),
                exit_code: exit.ok(),
                promoted: promoted && reason.is_none(),
                added: changes.added,
                changed: changes.changed,
                removed: changes.removed,
                reason,
            };
            self.audit.record(
                Some(agent),
                AuditEvent::Commit { outcome: outcome.clone(), cause: cause.as_str().into() },
            );
            if cause == CommitCause::Exit {
                let _ = std::fs::remove_dir_all(&c.worktree);
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// The condition's exit code, run as agent `NAME-check-ID`.
    async fn run_condition(
        self: &Arc<Self>,
        agent: &str,
        token: u64,
        c: &crate::condition::Condition,
    ) -> Result<i32, String> {
        let worktree = c.worktree.clone();
        let req = SpawnRequest {
            name: format!("{agent}-check-{token}"),
            command: vec!["/bin/sh".into(), "-c".into(), c.command.clone()],
            net: Some(rush_proto::NetPolicy::Deny),
            trust: None,
            budget: Budget::default(),
            allow: vec![FileGrant { path: worktree.clone(), ops: Ops(0x1f), ttl_secs: None }],
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), worktree.display().to_string()),
            ],
            cwd: worktree,
            stdio: StdioMode::Log,
            allow_unconfined: false,
            session: None,
            restartable: false,
            hardlinks: None,
            user: None,
        };
        // As the agent's user (its primary group from the user database, else uid = gid).
        let uid = self.status(agent).map(|a| a.uid).unwrap_or(0);
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        let root = Caller { uid, gid, pid: std::process::id() as i32, groups: Vec::new() };
        let (_, mut exit) = Box::pin(self.spawn(req, &root, None))
            .await
            .map_err(|e| format!("cannot start the condition: {}", e.message))?;
        // The status is copied out: the watch guard must not live across the kill below.
        let waited = tokio::time::timeout(CONDITION_TIMEOUT, exit.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|status| *status));
        match waited {
            Ok(Ok(status)) => match status {
                Some(ExitStatus { code: Some(code), .. }) => Ok(code),
                Some(s) => Err(format!("`{}` was killed ({s:?})", c.command)),
                None => Err("no exit status".into()),
            },
            Ok(Err(_)) => Err("the condition's agent vanished".into()),
            Err(_) => {
                let _ = self.kill(&format!("{agent}-check-{token}"), &root).await;
                Err(format!("`{}` ran longer than {} s", c.command, CONDITION_TIMEOUT.as_secs()))
            }
        }
    }

    /// Revokes tokens. Once the kernel map no longer grants what they did, processes of
    /// the agent whose memory mappings use what was taken away are killed (see
    /// [`crate::mappings`]); the agent is frozen from before the map change until then.
    pub async fn revoke(
        self: &Arc<Self>,
        agent: &str,
        target: RevokeTarget,
        caller: &Caller,
    ) -> Result<(Vec<TokenInfo>, Option<ChangeEffect>), ApiError> {
        let _one = self.enforcing.lock().await;
        let cg = self.confined_agent(agent)?;
        let cgroup_id = cg.id;
        let files = self.files_of(agent);
        let planned = match files {
            Some(Files::Landlock | Files::Unenforced) => Some(self.planned_effect(agent, false)?),
            _ => None,
        };
        let (removed, entries) = match &target {
            RevokeTarget::Id(id) => self.tokens.remove(cgroup_id, |t| t.id == *id),
            RevokeTarget::Path(p) => {
                // The path as it was granted, or whatever inode it names now.
                let key = crate::tokens::file_key(p).ok();
                self.tokens.remove(cgroup_id, |t| t.path == *p || Some(t.key) == key)
            }
        };
        if removed.is_empty() {
            let what = match target {
                RevokeTarget::Id(id) => format!("token {id}"),
                RevokeTarget::Path(p) => format!("token on {}", p.display()),
            };
            return Err(api_err(ErrorKind::NotFound, format!("agent {agent:?} has no {what}")));
        }
        if let Some(planned) = planned {
            let tokens: Vec<TokenInfo> = removed.iter().map(|t| t.info()).collect();
            self.audit
                .record(Some(agent), AuditEvent::Revoke { caller_uid: caller.uid, tokens: tokens.clone() });
            let ids: Vec<u64> = removed.iter().map(|t| t.id).collect();
            // Landlock: the new rules reach the agent only by the restart below, which a
            // refused write must not skip; the refusal is reported after it.
            let saved = self.save_revoke(agent, &ids);
            let effect = match files {
                Some(Files::Landlock) => self.reconfine(planned, "revoke", caller).await?,
                _ => planned,
            };
            saved?;
            return Ok((tokens, Some(effect)));
        }
        let lost = lost_by_revoke(&removed, &entries, boot_time_ns());
        let killed = self.enforce(cg, lost, move |mgr| mgr.write_entries(cgroup_id, entries)).await?;
        let tokens: Vec<TokenInfo> = removed.iter().map(|t| t.info()).collect();
        self.audit.record(Some(agent), AuditEvent::Revoke { caller_uid: caller.uid, tokens: tokens.clone() });
        let ids: Vec<u64> = removed.iter().map(|t| t.id).collect();
        self.record_kills(agent, killed, "revoke");
        self.save_revoke(agent, &ids)?;
        Ok((tokens, None))
    }

    /// At a token's expiry (the kernel lapses it by itself), the same enforcement on
    /// memory mappings as a revoke.
    fn schedule_expiry(self: &Arc<Self>, token: Token) {
        let Some((deadline, _)) = token.expires else { return };
        let cgroup_id = token.cgroup_id;
        self.pending_expiries().insert(token.id, token);
        let mgr = Arc::downgrade(self);
        tokio::spawn(async move {
            // The deadline is CLOCK_BOOTTIME; tokio's clock stops during suspend: re-check.
            loop {
                let now = boot_time_ns();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_nanos(deadline - now)).await;
            }
            if let Some(mgr) = mgr.upgrade() {
                mgr.expire_due(cgroup_id).await;
            }
        });
    }

    fn pending_expiries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Token>> {
        self.pending_expiries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enforces, in one freeze, the expiry of every token of the agent due by now: tokens
    /// granted together lapse together, and the first of their timers does it for all.
    async fn expire_due(self: Arc<Self>, cgroup_id: u64) {
        let _one = self.enforcing.lock().await;
        let now = boot_time_ns();
        let due: Vec<Token> = {
            let mut pending = self.pending_expiries();
            let ids: Vec<u64> = pending
                .values()
                .filter(|t| t.cgroup_id == cgroup_id && t.expires.is_some_and(|(ns, _)| ns <= now))
                .map(|t| t.id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        if due.is_empty() {
            return;
        }
        let cg = {
            let reg = self.registry();
            let running =
                reg.agents.values().find(|a| a.cgroup.id == cgroup_id && a.info.state == AgentState::Running);
            match running {
                Some(a) => a.cgroup.clone(),
                None => return,
            }
        };
        // Tokens revoked meanwhile: the revoke did this already.
        let live: HashSet<u64> = self.tokens.list(Some(&cg.name)).into_iter().map(|t| t.id).collect();
        let lost: Vec<(FileKey, PathBuf, Ops)> =
            due.into_iter().filter(|t| live.contains(&t.id)).map(|t| (t.key, t.path, t.ops)).collect();
        if lost.is_empty() {
            return;
        }
        let name = cg.name.clone();
        match self.files_of(&name) {
            Some(Files::Landlock) => {
                // The kernel knows nothing of the deadline: this is the expiry.
                let daemon = Caller { uid: 0, gid: 0, pid: std::process::id() as i32, groups: Vec::new() };
                let done = match self.planned_effect(&name, false) {
                    Ok(planned) => self.reconfine(planned, "expiry", &daemon).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::error!(agent = %name, error = %e.message, "token expiry not enforced");
                }
                return;
            }
            Some(Files::Unenforced) => return,
            _ => {}
        }
        match self.enforce(cg, lost, |_| Ok(())).await {
            Ok(killed) => self.record_kills(&name, killed, "expiry"),
            Err(e) => tracing::error!(agent = %name, error = %e.message, "expiry not enforced on mappings"),
        }
    }

    /// [`crate::mappings::enforce`] on a blocking thread (it waits for the freeze and
    /// reads /proc): `apply` is the kernel map change.
    async fn enforce(
        self: &Arc<Self>,
        cg: AgentCgroup,
        lost: Vec<(FileKey, PathBuf, Ops)>,
        apply: impl FnOnce(&AgentManager) -> Result<(), ApiError> + Send + 'static,
    ) -> Result<Vec<Killed>, ApiError> {
        if lost.is_empty() {
            return apply(self).map(|()| Vec::new());
        }
        let mgr = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let lost: Vec<Lost> = lost
                .into_iter()
                .map(|(key, path, ops)| Lost { key, paths: path_forms(&path), ops })
                .collect();
            let kept = || -> Vec<Kept> {
                let live = mgr.tokens.list(Some(&cg.name)).into_iter().filter(|t| !t.expired);
                live.map(|t| Kept { paths: path_forms(&t.path), ops: t.ops }).collect()
            };
            crate::mappings::enforce(&*mgr.cgroups, &cg, &lost, &kept, || apply(&mgr))
        })
        .await
        .map_err(|e| api_err(ErrorKind::Internal, format!("enforcing on memory mappings: {e}")))?
    }

    fn record_kills(&self, agent: &str, killed: Vec<Killed>, cause: &str) {
        for k in killed {
            tracing::warn!(agent, pid = k.pid, path = %k.path.display(), ops = %k.ops, cause, "killed: maps a file it may no longer use");
            self.audit.record(
                Some(agent),
                AuditEvent::RevokeKill {
                    pid: k.pid,
                    comm: k.comm,
                    path: k.path.display().to_string(),
                    ops: k.ops.to_string(),
                    cause: cause.into(),
                },
            );
        }
    }

    pub fn capabilities(&self, agent: Option<&str>) -> Result<Vec<TokenInfo>, ApiError> {
        if let Some(name) = agent
            && !self.registry().agents.contains_key(name)
        {
            return Err(not_found(name));
        }
        Ok(self.tokens.list(agent))
    }

    fn write_entries(
        &self,
        cgroup_id: u64,
        entries: Vec<(crate::bpf::FileKey, Option<crate::bpf::FileGrantEntry>)>,
    ) -> Result<(), ApiError> {
        for (key, entry) in entries {
            self.kernel.set_file_grant(cgroup_id, key, entry).map_err(|e| {
                api_err(ErrorKind::Internal, format!("kernel grant map not updated: {}", error_chain(&e)))
            })?;
        }
        Ok(())
    }

    /// Kills every running agent (daemon shutdown).
    pub async fn kill_all_agents(&self) {
        let running: Vec<(String, watch::Receiver<Option<ExitStatus>>, AgentCgroup)> = self
            .registry()
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running)
            .map(|a| (a.info.name.clone(), a.exit.clone(), a.cgroup.clone()))
            .collect();
        for (name, mut exit, cg) in running {
            let _ = self.cgroups.kill_all(&cg);
            if tokio::time::timeout(std::time::Duration::from_secs(5), exit.wait_for(|s| s.is_some()))
                .await
                .is_err()
            {
                tracing::error!(agent = %name, "agent did not exit after SIGKILL");
            }
        }
    }
}

/// Per removed token: (inode, path, the operations no longer granted on that inode). A
/// token that had expired already took nothing away now; one whose operations another
/// token on the same inode still grants took those away from no one.
fn lost_by_revoke(
    removed: &[Token],
    entries: &[(FileKey, Option<FileGrantEntry>)],
    now_boot_ns: u64,
) -> Vec<(FileKey, PathBuf, Ops)> {
    let still = |key: FileKey| -> u32 {
        let entry = entries.iter().find(|(k, _)| *k == key).and_then(|(_, e)| *e);
        entry.map_or(0, |e| {
            e.expires_ns
                .iter()
                .enumerate()
                .filter(|(_, t)| **t > now_boot_ns)
                .fold(0, |acc, (bit, _)| acc | 1 << bit)
        })
    };
    removed
        .iter()
        .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now_boot_ns))
        .map(|t| (t.key, t.path.clone(), Ops(t.ops.0 & !still(t.key))))
        .filter(|(_, _, ops)| ops.0 != 0)
        .collect()
}

fn token_err(what: &str, e: &TokenError) -> ApiError {
    let kind = match e {
        TokenError::Stat { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ErrorKind::NotFound
        }
        _ => ErrorKind::InvalidArgument,
    };
    api_err(kind, format!("{what}: {e}"))
}

/// What the kernel is told of an agent's hard links: only file-confined agents have a mode.
fn hardlinks_of(files: Files, req: &SpawnRequest) -> Hardlinks {
    if files == Files::Open { Hardlinks::Follow } else { req.hardlinks.unwrap_or_default() }
}

/// `--hardlinks` under Landlock, which cannot see link counts: refuses while a directory
/// that `tokens` grant (for the ops the mode guards) holds a regular file with more than
/// one link that no token names by itself (among `tokens` and the files of `held`). The
/// baseline's system directories are not walked. Links made later are not seen.
fn landlock_link_check<'a>(
    mode: Hardlinks,
    tokens: impl IntoIterator<Item = (&'a PathBuf, Ops, Origin)>,
    held: &[PathBuf],
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let guarded = match mode {
        Hardlinks::Follow => return Ok(()),
        Hardlinks::RefuseWrite => Ops::WRITE.0,
        Hardlinks::Refuse => Ops::READ.0 | Ops::WRITE.0 | Ops::EXEC.0,
    };
    let tokens: Vec<(&PathBuf, Ops, Origin)> = tokens.into_iter().collect();
    let mut named = std::collections::HashSet::new();
    let mut dirs = Vec::new();
    for path in tokens.iter().map(|t| t.0).chain(held) {
        if let Ok(m) = std::fs::metadata(path)
            && !m.is_dir()
        {
            named.insert((m.dev(), m.ino()));
        }
    }
    for (path, ops, origin) in tokens {
        if origin != Origin::Baseline && ops.0 & guarded != 0 && path.is_dir() {
            dirs.push(path);
        }
    }
    for dir in dirs {
        crate::landlock::scan_links(dir, &named, crate::landlock::LINK_SCAN_MAX).map_err(|e| {
            format!(
                "--hardlinks {mode} under Landlock, which cannot check link counts, so the daemon looked \
                 below {}: {}; grant such a file by its own token, remove the extra link, or use \
                 --hardlinks follow",
                dir.display(),
                error_chain(&e)
            )
        })?;
    }
    Ok(())
}

/// The TCP ports a Landlock ruleset allows connects to: none for `deny`, the listed ports
/// for an allow list; None (TCP left to the cgroup programs) for `allow` or any-port entries.
fn landlock_tcp(net: &KernelNetPolicy) -> crate::landlock::TcpPorts {
    match net {
        KernelNetPolicy::Deny => Some(Vec::new()),
        KernelNetPolicy::Allow => None,
        KernelNetPolicy::List(eps) if eps.iter().any(|(_, _, port)| *port == 0) => None,
        KernelNetPolicy::List(eps) => {
            let mut ports: Vec<u16> = eps.iter().map(|(_, _, port)| *port).collect();
            ports.sort_unstable();
            ports.dedup();
            Some(ports)
        }
    }
}

/// Whether `net` lets the agent connect to the meter's upstream itself. A host name is
/// resolved as the kernel would see it; a name that does not resolve is reachable only
/// under `allow`.
fn reaches(net: &KernelNetPolicy, up: &crate::meter::Upstream) -> bool {
    let eps = match net {
        KernelNetPolicy::Allow => return true,
        KernelNetPolicy::Deny => return false,
        KernelNetPolicy::List(eps) => eps,
    };
    let addrs: Vec<IpAddr> = match up.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(up.host.as_str(), up.port))
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    let covers = |net: IpAddr, prefix: u8, ip: IpAddr| {
        net.is_ipv4() == ip.is_ipv4()
            && rush_proto::spec::mask_ip(net, prefix) == rush_proto::spec::mask_ip(ip, prefix)
    };
    eps.iter().any(|&(net, prefix, port)| {
        (port == 0 || port == up.port) && addrs.iter().any(|&ip| covers(net, prefix, ip))
    })
}

/// The part of a budget the kernel's network programs enforce.
fn net_budget(b: &Budget) -> crate::bpf::NetBudget {
    crate::bpf::NetBudget { bytes: b.net_bytes, api_calls: b.api_calls }
}

fn ledger(a: &Agent) -> Option<Arc<crate::meter::Ledger>> {
    a.meter.as_ref().map(|m| m.ledger.clone())
}

/// The cost an agent had spent when it was last stored.
fn saved_cost(info: &AgentInfo) -> u64 {
    info.usage.iter().find(|u| u.resource == BudgetResource::Cost).map_or(0, |u| u.used)
}

/// (parent pid, start time in clock ticks since boot) of a live process; None for a
/// process that is gone or a zombie (exited, waiting to be reaped).
pub(crate) fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields count from the
    // last ')'. After it: state (3), ppid (4), ..., starttime (22).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The request that starts a stored restartable agent again, `now` in Unix ms: its
/// tokens as last stored (timed ones with what is left of their time), detached, never
/// unconfined. Err: why it must not start.
fn restart_request(rec: &crate::store::RestartRecord, now: u64) -> Result<SpawnRequest, String> {
    let mut req = rec.request.clone();
    req.stdio = StdioMode::Log;
    req.restartable = true;
    req.allow_unconfined = false;
    req.allow = rec
        .grants
        .iter()
        .filter(|g| g.expires_unix_ms.is_none_or(|ms| ms > now))
        .map(|g| FileGrant {
            path: g.path.clone(),
            ops: g.ops,
            ttl_secs: g.expires_unix_ms.map(|ms| (ms - now).div_ceil(1000)),
        })
        .collect();
    if rec.files_confined && req.allow.is_empty() {
        return Err("all its file grants have expired or were revoked; without any it would run with \
                    its files unconfined"
            .into());
    }
    Ok(req)
}

fn not_found(name: &str) -> ApiError {
    api_err(ErrorKind::NotFound, format!("no agent named {name:?}"))
}

/// `e` and its sources, joined: for messages that leave the daemon as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        // Errors that print their source themselves (thiserror's `{source}`) would say it twice.
        let text = src.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}

/// Host names are resolved now, once, to their addresses (full prefixes): the kernel
/// matches addresses. Prefixes are checked again: the request may not come from our parser.
async fn resolve_net(net: &NetPolicy) -> Result<KernelNetPolicy, ApiError> {
    Ok(match net {
        NetPolicy::Deny => KernelNetPolicy::Deny,
        NetPolicy::Allow => KernelNetPolicy::Allow,
        NetPolicy::AllowList(eps) => {
            let mut out = Vec::new();
            for ep in eps {
                let block = ep
                    .ip_prefix()
                    .map_err(|why| api_err(ErrorKind::InvalidArgument, format!("--net {ep}: {why}")))?;
                if let Some((ip, len)) = block {
                    out.push((ip, len, ep.port));
                    continue;
                }
                let addrs = tokio::net::lookup_host((ep.host.as_str(), ep.port)).await.map_err(|e| {
                    api_err(
                        ErrorKind::InvalidArgument,
                        format!("--net {ep}: cannot resolve {:?}: {e}", ep.host),
                    )
                })?;
                let before = out.len();
                out.extend(addrs.map(|a| (a.ip(), if a.is_ipv4() { 32 } else { 128 }, ep.port)));
                if out.len() == before {
                    return Err(api_err(
                        ErrorKind::InvalidArgument,
                        format!("--net {ep}: {:?} has no addresses", ep.host),
                    ));
                }
            }
            out.sort();
            out.dedup();
            KernelNetPolicy::List(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::FakeKernel;
    use crate::cgroup::fake::FakeCgroups;

    struct Fixture {
        mgr: Arc<AgentManager>,
        kernel: Arc<FakeKernel>,
        cgroups: Arc<FakeCgroups>,
        control: Arc<crate::budget::fake::FakeControl>,
        _dir: tempfile::TempDir,
    }

    fn fixture(enforcement: Enforcement) -> Fixture {
        fixture_with(enforcement, crate::budget::fake::FakeControl::default())
    }

    fn fixture_with(enforcement: Enforcement, control: crate::budget::fake::FakeControl) -> Fixture {
        fixture_policy(enforcement, control, crate::policy::DEFAULT_POLICY)
    }

    fn fixture_policy(
        enforcement: Enforcement,
        control: crate::budget::fake::FakeControl,
        policy: &str,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(AuditLog::open(&dir.path().join("state.db")).unwrap());
        let kernel = Arc::new(FakeKernel::default());
        let cgroups = Arc::new(FakeCgroups::default());
        let control = Arc::new(control);
        let mgr = AgentManager::new(
            cgroups.clone(),
            kernel.clone(),
            audit,
            enforcement,
            dir.path().to_owned(),
            vec!["/usr:read,exec".parse().unwrap()],
            Budgets {
                control: control.clone(),
                policy: Policy::parse(policy, "t").unwrap(),
                meter: None,
                api_endpoints: 1,
            },
        );
        Fixture { mgr, kernel, cgroups, control, _dir: dir }
    }

    fn enforced() -> Enforcement {
        Enforcement {
            net: true,
            files: FileBackend::Unavailable("BPF LSM programs did not attach: EPERM".into()),
            landlock: Default::default(),
        }
    }

    /// `--user`: only root may name another user; names and uids resolve through the
    /// user database; a trust level with `root_agents = false` refuses root.
    #[test]
    fn run_as_resolves_users_and_refuses_what_it_must() {
        let f = fixture_policy(enforced(), Default::default(), "[trust.nonroot]\nroot_agents = false\n");
        let policy = crate::harden::HardeningPolicy::default();
        let user = |u: &str| SpawnRequest { user: Some(u.into()), ..req("u", &["true"]) };
        let root = Caller { uid: 0, gid: 0, pid: 1, groups: vec![] };
        let nobody = f.mgr.run_as(&user("nobody"), &root, &policy).unwrap();
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        assert_eq!(f.mgr.run_as(&user("65534"), &root, &policy).unwrap().uid, 65534);
        let e = f.mgr.run_as(&user("no-such-user-x"), &root, &policy).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("--user \"no-such-user-x\": no such user"), "{}", e.message);
        // A caller that is not root may only name itself.
        let alice = Caller { uid: 1000, gid: 1000, pid: 1, groups: vec![] };
        let e = f.mgr.run_as(&user("root"), &alice, &policy).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{}", e.message);
        assert_eq!(f.mgr.run_as(&user("1000"), &alice, &policy).unwrap().uid, 1000);
        // Root agents refused by the level; with --user they pass.
        let level = f.mgr.budgets.policy.level("nonroot").unwrap().hardening.apply(&policy);
        let as_root = SpawnRequest { trust: Some("nonroot".into()), ..req("r", &["true"]) };
        let e = f.mgr.run_as(&as_root, &root, &level).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(
            e.message.contains("trust level \"nonroot\" refuses root agents; give --user USER"),
            "{}",
            e.message
        );
        let with_user = SpawnRequest { user: Some("nobody".into()), ..as_root };
        assert_eq!(f.mgr.run_as(&with_user, &root, &level).unwrap().uid, 65534);
    }

    fn me() -> Caller {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Caller { uid, gid, pid: std::process::id() as i32, groups: vec![gid] }
    }

    fn req(name: &str, cmd: &[&str]) -> SpawnRequest {
        SpawnRequest {
            name: name.into(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            net: Some(NetPolicy::Deny),
            trust: None,
            budget: Budget::default(),
            allow: vec![],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: PathBuf::from("/"),
            stdio: StdioMode::Log,
            allow_unconfined: false,
            session: None,
            restartable: false,
            hardlinks: None,
            user: None,
        }
    }

    #[tokio::test]
    async fn spawn_installs_policy_first_and_cleans_up_after_exit() {
        let f = fixture(enforced());
        let (info, mut rx) = f.mgr.spawn(req("a1", &["sh", "-c", "exit 3"]), &me(), None).await.unwrap();
        assert_eq!(f.mgr.name_of(info.cgroup_id).as_deref(), Some("a1"));
        let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
        assert_eq!(status.code, Some(3));
        // Give watch_exit's cleanup a moment: it runs before the status is sent.
        assert!(f.kernel.agents.lock().unwrap().is_empty(), "kernel policy must be removed after exit");
        assert!(f.cgroups.cgroups.lock().unwrap().is_empty(), "cgroup must be removed after exit");
        assert_eq!(f.mgr.status("a1").unwrap().state, AgentState::Exited);
    }

    #[tokio::test]
    async fn name_in_use_is_refused_and_changes_nothing() {
        let f = fixture(enforced());
        let (_info, _rx) = f.mgr.spawn(req("a1", &["sleep", "5"]), &me(), None).await.unwrap();
        let e = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert_eq!(f.kernel.agents.lock().unwrap().len(), 1);
        assert_eq!(f.mgr.list().len(), 1);
        // kill through the fake (which knows no pids) — register the real pid first.
        let pid = f.mgr.status("a1").unwrap().pid;
        f.cgroups.add_pid("a1", pid);
        assert_eq!(f.mgr.kill("a1", &me()).await.unwrap(), 1);
        assert_eq!(f.mgr.status("a1").unwrap().state, AgentState::Exited);
        // The name is free again once the agent has exited.
        let (_i, mut rx) = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap();
        rx.wait_for(|s| s.is_some()).await.unwrap();
    }

    /// What the daemon keeps per agent is bounded: a name spawned again, and many names,
    /// leave only the newest EXITED_KEPT exited agents and their cgroup ids' names.
    #[tokio::test]
    async fn exited_agents_state_stays_bounded_over_reused_and_new_names() {
        let f = fixture(enforced());
        for i in 0..EXITED_KEPT + 20 {
            for name in ["same".to_string(), format!("n{i}")] {
                let (_i, mut rx) = f.mgr.spawn(req(&name, &["true"]), &me(), None).await.unwrap();
                rx.wait_for(|s| s.is_some()).await.unwrap();
            }
        }
        let reg = f.mgr.registry();
        assert_eq!(reg.agents.len(), EXITED_KEPT);
        assert_eq!(reg.exited_order.len(), EXITED_KEPT);
        assert_eq!(reg.names.len(), EXITED_KEPT, "a cgroup id's name outlived its agent");
        assert!(reg.agents.contains_key("same"));
    }

    #[tokio::test]
    async fn bad_requests_leave_no_trace() {
        let f = fixture(enforced());
        let cases: Vec<(SpawnRequest, ErrorKind, &str)> = vec![
            (req("bad name", &["true"]), ErrorKind::InvalidArgument, "invalid agent name"),
            (req("a", &[]), ErrorKind::InvalidArgument, "no command"),
            (req("a", &["/nonexistent/prog"]), ErrorKind::InvalidArgument, "cannot run"),
            (
                SpawnRequest { allow: vec!["/srv/a:read".parse().unwrap()], ..req("a", &["true"]) },
                ErrorKind::Unsupported,
                "EPERM",
            ),
            (
                SpawnRequest { cwd: "/nonexistent".into(), ..req("a", &["true"]) },
                ErrorKind::InvalidArgument,
                "working directory",
            ),
            (
                SpawnRequest { stdio: StdioMode::Passed, ..req("a", &["true"]) },
                ErrorKind::BadRequest,
                "SCM_RIGHTS",
            ),
        ];
        for (r, kind, needle) in cases {
            let e = f.mgr.spawn(r.clone(), &me(), None).await.unwrap_err();
            assert_eq!(e.kind, kind, "{r:?}: {e:?}");
            assert!(e.message.contains(needle), "{:?} lacks {needle:?}", e.message);
        }
        assert!(f.kernel.agents.lock().unwrap().is_empty());
        assert!(f.cgroups.cgroups.lock().unwrap().is_empty());
        assert!(f.mgr.list().is_empty());
    }

    #[tokio::test]
    async fn refuses_to_run_unconfined() {
        let f = fixture(Enforcement {
            net: false,
            files: FileBackend::Unavailable("x".into()),
            landlock: Default::default(),
        });
        let e = f.mgr.spawn(req("a1", &["true"]), &me(), None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(f.mgr.list().is_empty());
    }

    #[tokio::test]
    async fn allow_list_resolves_to_addresses() {
        let p = resolve_net(&"127.0.0.1:80,[::1]:*,localhost:8080,10.0.0.0/8:443".parse().unwrap())
            .await
            .unwrap();
        let KernelNetPolicy::List(l) = p else { panic!() };
        assert!(l.contains(&("127.0.0.1".parse().unwrap(), 32, 80)));
        assert!(l.contains(&("::1".parse().unwrap(), 128, 0)));
        assert!(l.contains(&("10.0.0.0".parse().unwrap(), 8, 443)));
        assert!(l.iter().any(|(ip, len, port)| ip.is_loopback() && *len >= 32 && *port == 8080));
        let e = resolve_net(&"no-such-host.invalid:80".parse().unwrap()).await.unwrap_err();
        assert!(e.message.contains("no-such-host.invalid"), "{}", e.message);
        // A prefix on a name, from a request the CLI's parser did not make.
        let bad = NetPolicy::AllowList(vec![rush_proto::NetEndpoint {
            host: "localhost".into(),
            port: 80,
            prefix: Some(8),
        }]);
        let e = resolve_net(&bad).await.unwrap_err();
        assert!(e.message.contains("host name"), "{}", e.message);
    }

    #[tokio::test]
    async fn logs_capture_detached_output() {
        let f = fixture(enforced());
        let (_i, mut rx) =
            f.mgr.spawn(req("a1", &["sh", "-c", "echo hello; echo err >&2"]), &me(), None).await.unwrap();
        rx.wait_for(|s| s.is_some()).await.unwrap();
        let (path, _) = f.mgr.log_path("a1").unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hello\nerr\n");
    }

    fn files_enforced() -> Enforcement {
        Enforcement { net: true, files: FileBackend::BpfLsm, landlock: Default::default() }
    }

    #[tokio::test]
    async fn allow_confines_the_agent_and_installs_grants_before_it_runs() {
        let f = fixture(files_enforced());
        let dir = tempfile::tempdir().unwrap();
        let allow: FileGrant = format!("{}:read,write:1h", dir.path().display()).parse().unwrap();
        let r = SpawnRequest { allow: vec![allow], ..req("f1", &["sleep", "5"]) };
        let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert!(f.kernel.files_confined.lock().unwrap().contains(&info.cgroup_id));
        assert!(info.enforcement.contains(&rush_proto::Enforcement::FilesBpfLsm), "{:?}", info.enforcement);
        let key = crate::tokens::file_key(dir.path()).unwrap();
        let grants = f.kernel.file_grants.lock().unwrap().clone();
        let entry = grants.get(&(info.cgroup_id, key)).expect("the --allow grant is in the kernel");
        assert!(entry.expires_ns[0] > crate::bpf::boot_time_ns() && entry.expires_ns[0] < u64::MAX);
        assert_eq!(entry.expires_ns[2], 0, "no exec granted");
        let usr = crate::tokens::file_key(std::path::Path::new("/usr")).unwrap();
        assert_eq!(grants.get(&(info.cgroup_id, usr)).unwrap().expires_ns[2], u64::MAX, "baseline /usr exec");
        // The detached agent's own log is granted (write) so it can keep writing to it.
        let origins: Vec<&str> =
            f.mgr.capabilities(Some("f1")).unwrap().into_iter().map(|t| t.origin.as_str()).collect();
        assert_eq!(origins, ["baseline", "spawn", "stdio"]);
    }

    #[tokio::test]
    async fn hardlinks_reach_the_kernel_from_the_flag_or_the_trust_level() {
        let policy = "[trust.careful]\nhardlinks = \"refuse\"\n[trust.plain]\n";
        let f = fixture_policy(files_enforced(), Default::default(), policy);
        let dir = tempfile::tempdir().unwrap();
        let allow: FileGrant = format!("{}:read,write", dir.path().display()).parse().unwrap();
        let cases = [
            ("h1", None, None, Hardlinks::Follow),
            ("h2", None, Some(Hardlinks::RefuseWrite), Hardlinks::RefuseWrite),
            ("h3", Some("careful"), None, Hardlinks::Refuse),
            ("h4", Some("careful"), Some(Hardlinks::Follow), Hardlinks::Follow),
            ("h5", Some("plain"), None, Hardlinks::Follow),
        ];
        for (name, trust, flag, want) in cases {
            let r = SpawnRequest {
                allow: vec![allow.clone()],
                trust: trust.map(str::to_owned),
                hardlinks: flag,
                ..req(name, &["sleep", "5"])
            };
            let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
            assert_eq!(info.hardlinks, want, "{name}");
            let flags = f.kernel.flags.lock().unwrap()[&info.cgroup_id];
            assert_eq!(flags, AgentFlags { files_confined: true, hardlinks: want }, "{name}");
            assert_eq!(f.mgr.status(name).unwrap().hardlinks, want);
        }
        // Without --allow nothing is file-confined: no mode reaches the kernel.
        let r = SpawnRequest { hardlinks: Some(Hardlinks::Refuse), ..req("h6", &["sleep", "5"]) };
        let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert_eq!(info.hardlinks, Hardlinks::Follow);
        assert_eq!(f.kernel.flags.lock().unwrap()[&info.cgroup_id].bits(), 0);
    }

    #[tokio::test]
    async fn landlock_refuses_a_granted_dir_holding_a_linked_file_unless_following() {
        let enforcement =
            Enforcement { net: true, files: FileBackend::Landlock, landlock: Default::default() };
        let f = fixture(enforcement);
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("x"), "secret").unwrap();
        std::fs::hard_link(b.join("x"), a.join("sub/h")).unwrap();
        let rw: FileGrant = format!("{}:read,write", a.display()).parse().unwrap();
        let ro: FileGrant = format!("{}:read", a.display()).parse().unwrap();
        for (mode, grant) in [(Hardlinks::RefuseWrite, &rw), (Hardlinks::Refuse, &ro)] {
            let r =
                SpawnRequest { allow: vec![grant.clone()], hardlinks: Some(mode), ..req("l1", &["true"]) };
            let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unsupported);
            let h = a.join("sub/h");
            assert!(
                e.message.contains(&format!("{} has 2 hard links", h.display()))
                    && e.message.contains(&format!("--hardlinks {mode} under Landlock")),
                "{}",
                e.message
            );
        }
        // refuse-write does not look below a read-only grant; a token on the file itself
        // names it.
        let named: FileGrant = format!("{}:read,write", a.join("sub/h").display()).parse().unwrap();
        for (allow, mode) in
            [(vec![ro.clone()], Hardlinks::RefuseWrite), (vec![rw.clone(), named], Hardlinks::Refuse)]
        {
            assert_eq!(
                landlock_link_check(mode, allow.iter().map(|g| (&g.path, g.ops, Origin::Spawn)), &[]),
                Ok(())
            );
        }
        let bound = landlock_link_check(
            Hardlinks::Refuse,
            [(&PathBuf::from("/usr"), Ops::READ, Origin::Baseline)],
            &[],
        );
        assert_eq!(bound, Ok(()), "the baseline is not walked");
    }

    #[tokio::test]
    async fn grant_and_revoke_rewrite_the_kernel_entry() {
        let f = fixture(files_enforced());
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let allow: FileGrant = format!("{}:read", dir.path().display()).parse().unwrap();
        let r = SpawnRequest { allow: vec![allow], ..req("g1", &["sleep", "5"]) };
        let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        let key = crate::tokens::file_key(other.path()).unwrap();
        let entry = |f: &Fixture| f.kernel.file_grants.lock().unwrap().get(&(info.cgroup_id, key)).copied();

        let grant = GrantRequest {
            agent: "g1".into(),
            path: other.path().to_owned(),
            ops: "write,create".parse().unwrap(),
            duration_secs: None,
            condition: None,
        };
        let token = f.mgr.grant(grant.clone(), &me()).await.unwrap().0;
        assert_eq!(entry(&f).unwrap().expires_ns[1], u64::MAX);
        // A second token on the same path, then revoke by path: both go, entry deleted.
        f.mgr.grant(GrantRequest { ops: "read".parse().unwrap(), ..grant.clone() }, &me()).await.unwrap();
        let (gone, _) = f.mgr.revoke("g1", RevokeTarget::Path(other.path().to_owned()), &me()).await.unwrap();
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().any(|t| t.id == token.id));
        assert_eq!(entry(&f), None);
        let e = f.mgr.revoke("g1", RevokeTarget::Id(token.id), &me()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = f
            .mgr
            .grant(GrantRequest { path: "/nonexistent/x".into(), ..grant.clone() }, &me())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("/nonexistent/x"), "{}", e.message);
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::other("disk full");
        let e = crate::store::StoreError::Corrupt { path: "/s".into(), what: "x".into() };
        assert_eq!(error_chain(&e), "state database /s: x");
        #[derive(Debug, thiserror::Error)]
        #[error("saving: {0}")]
        struct Twice(#[source] std::io::Error);
        assert_eq!(error_chain(&Twice(io)), "saving: disk full");
    }

    #[tokio::test]
    async fn a_write_the_store_refuses_refuses_the_grant_and_reports_the_revoke() {
        let f = fixture(files_enforced());
        let db = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&db.path().join("state.db")).unwrap());
        f.mgr.attach_store(store.clone());
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let allow: FileGrant = format!("{}:read", dir.path().display()).parse().unwrap();
        let r = SpawnRequest { allow: vec![allow], ..req("s1", &["sleep", "60"]) };
        let (info, _rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());
        let key = crate::tokens::file_key(other.path()).unwrap();
        let entry = |f: &Fixture| f.kernel.file_grants.lock().unwrap().get(&(info.cgroup_id, key)).copied();
        let grant = GrantRequest {
            agent: "s1".into(),
            path: other.path().to_owned(),
            ops: "write".parse().unwrap(),
            duration_secs: None,
            condition: None,
        };
        let held = f.mgr.tokens.of_agent(info.cgroup_id).len();

        store.refuse_writes(true);
        let e = f.mgr.grant(grant.clone(), &me()).await.unwrap_err();
        assert!(e.message.contains("grant not saved"), "{}", e.message);
        assert_eq!(entry(&f), None, "a grant the store refused never reaches the kernel");
        assert_eq!(f.mgr.tokens.of_agent(info.cgroup_id).len(), held, "nor the daemon's memory");
        // (The fake cgroups cannot kill it: it ends by itself.)
        let e = f.mgr.spawn(req("s2", &["sleep", "1"]), &me(), None).await.unwrap_err();
        assert!(e.message.contains("killed") && e.message.contains("not saved"), "{}", e.message);

        store.refuse_writes(false);
        let token = f.mgr.grant(grant, &me()).await.unwrap().0;
        assert!(entry(&f).is_some());
        assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());
        store.refuse_writes(true);
        let e = f.mgr.revoke("s1", RevokeTarget::Id(token.id), &me()).await.unwrap_err();
        assert!(e.message.contains("lost the access in the kernel now"), "{}", e.message);
        assert_eq!(entry(&f), None, "the revoke holds in the kernel although the store refused it");
        assert_eq!(f.mgr.unsaved_revokes(), 1);
        let problems = f.mgr.check_state().problems;
        assert!(problems.iter().any(|p| p.contains(&format!("token {}", token.id))), "{problems:?}");
        store.refuse_writes(false);
        assert_eq!(f.mgr.unsaved_revokes(), 0, "retried once the store takes writes");
        assert!(store.tokens(info.cgroup_id).unwrap().iter().all(|t| t.id != token.id));
        assert_eq!(f.mgr.check_state().problems, Vec::<String>::new());

        // The kernel map changed behind the daemon's back: the check says so.
        f.kernel.file_grants.lock().unwrap().insert((info.cgroup_id, key), FileGrantEntry::default());
        let problems = f.mgr.check_state().problems;
        assert!(problems.iter().any(|p| p.contains("no token makes")), "{problems:?}");
    }

    #[tokio::test]
    async fn grants_to_unconfined_agents_and_without_lsm_are_refused() {
        let f = fixture(files_enforced());
        let (_i, _rx) = f.mgr.spawn(req("free", &["sleep", "5"]), &me(), None).await.unwrap();
        let grant = GrantRequest {
            agent: "free".into(),
            path: "/tmp".into(),
            ops: Ops::READ,
            duration_secs: None,
            condition: None,
        };
        let e = f.mgr.grant(grant.clone(), &me()).await.unwrap_err();
        assert!(e.message.contains("not file-confined"), "{}", e.message);
        let f = fixture(enforced());
        let e = f.mgr.grant(grant, &me()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
    }

    /// An agent running a copy of `sleep` from a directory it was granted `ops` on: the
    /// program's text is an executable, private mapping of a file there.
    async fn mapping_agent(
        f: &Fixture,
        name: &str,
        ops: &str,
        extra: &[FileGrant],
    ) -> (tempfile::TempDir, watch::Receiver<Option<ExitStatus>>) {
        let dir = tempfile::tempdir().unwrap();
        let sleep = dir.path().join("sleep");
        std::fs::copy("/bin/sleep", &sleep).unwrap();
        let allow: FileGrant = format!("{}:{ops}", dir.path().display()).parse().unwrap();
        let cmd = [sleep.to_str().unwrap(), "30"];
        // Another test's fork may briefly hold the copy's write fd: ETXTBSY, retried.
        let (info, rx) = loop {
            let allow = [std::slice::from_ref(&allow), extra].concat();
            let r = SpawnRequest { allow, ..req(name, &cmd) };
            match f.mgr.spawn(r, &me(), None).await {
                Err(e) if e.message.contains("Text file busy") => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                r => break r.unwrap(),
            }
        };
        f.cgroups.add_pid(name, info.pid);
        // Until it has executed the copy, its maps show the daemon's binary.
        for _ in 0..500 {
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", info.pid)).unwrap_or_default();
            if maps.contains(sleep.to_str().unwrap()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        (dir, rx)
    }

    fn revoke_kills(f: &Fixture) -> Vec<(u32, String, String, String)> {
        let all = f.mgr.audit.query(&rush_proto::AuditQuery::default()).unwrap();
        all.into_iter()
            .filter_map(|r| match r.event {
                AuditEvent::RevokeKill { pid, path, ops, cause, .. } => Some((pid, path, ops, cause)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn revoke_kills_only_processes_whose_mappings_lost_an_operation() {
        let f = fixture(files_enforced());
        let (dir, mut rx) = mapping_agent(&f, "m1", "read,exec", &[]).await;
        let pid = f.mgr.status("m1").unwrap().pid;
        let grant = |ops: &str| GrantRequest {
            agent: "m1".into(),
            path: dir.path().to_owned(),
            ops: ops.parse().unwrap(),
            duration_secs: None,
            condition: None,
        };
        // Write taken away: the program's mapping is private, nothing it uses is lost.
        let w = f.mgr.grant(grant("write"), &me()).await.unwrap().0;
        f.mgr.revoke("m1", RevokeTarget::Id(w.id), &me()).await.unwrap();
        assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze m1", "thaw m1"]);
        // A second token granting the same: revoking it takes nothing away, no freeze.
        let again = f.mgr.grant(grant("read,exec"), &me()).await.unwrap().0;
        f.mgr.revoke("m1", RevokeTarget::Id(again.id), &me()).await.unwrap();
        assert_eq!(f.cgroups.freezes.lock().unwrap().len(), 2, "nothing lost, nothing frozen");
        assert!(revoke_kills(&f).is_empty());
        assert_eq!(f.mgr.status("m1").unwrap().state, AgentState::Running);

        // Read and exec taken away: the process mapping its program goes.
        f.mgr.revoke("m1", RevokeTarget::Path(dir.path().to_owned()), &me()).await.unwrap();
        let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
        assert_eq!(status.signal, Some(libc::SIGKILL));
        let path = dir.path().join("sleep").display().to_string();
        assert_eq!(revoke_kills(&f), [(pid, path, "read,exec".into(), "revoke".into())]);
        assert_eq!(f.cgroups.freezes.lock().unwrap()[2..], ["freeze m1", "thaw m1"]);
    }

    #[tokio::test]
    async fn an_expiring_token_kills_the_processes_mapping_its_files() {
        let f = fixture(files_enforced());
        let started = std::time::Instant::now();
        // Two tokens lapsing together: one freeze for both.
        let other = tempfile::tempdir().unwrap();
        let extra: FileGrant = format!("{}:read:1s", other.path().display()).parse().unwrap();
        let (dir, mut rx) = mapping_agent(&f, "m2", "read,exec:1s", &[extra]).await;
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|s| s.is_some()))
            .await
            .expect("killed at expiry")
            .unwrap()
            .unwrap();
        assert_eq!(status.signal, Some(libc::SIGKILL));
        assert!(started.elapsed() >= std::time::Duration::from_secs(1));
        let kills = revoke_kills(&f);
        assert_eq!(kills.len(), 1, "{kills:?}");
        assert_eq!(kills[0].1, dir.path().join("sleep").display().to_string());
        assert_eq!(kills[0].3, "expiry");
        // The thaw can come after the exit status: wait for it.
        for _ in 0..100 {
            if f.cgroups.freezes.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze m2", "thaw m2"]);
        assert!(f.mgr.pending_expiries().is_empty());
    }

    #[tokio::test]
    async fn restartable_agents_are_stored_forgotten_at_exit_0_and_refused_in_the_foreground() {
        let f = fixture(enforced());
        let store = Arc::new(crate::store::Store::open(&f._dir.path().join("state.db")).unwrap());
        f.mgr.attach_store(store.clone());
        let fg = SpawnRequest { restartable: true, stdio: StdioMode::Passed, ..req("fg", &["true"]) };
        let e = f.mgr.spawn(fg, &me(), None).await.unwrap_err();
        assert!(e.message.contains("--restartable") && e.message.contains("--detach"), "{}", e.message);
        let r = SpawnRequest { restartable: true, ..req("r", &["sh", "-c", "sleep 0.3"]) };
        let (info, mut rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert!(info.restartable);
        let stored = store.restartable().unwrap();
        assert_eq!(stored.len(), 1, "written before the spawn is answered");
        assert_eq!((stored[0].pid, stored[0].uid), (info.pid, me().uid));
        assert_eq!(stored[0].request.command, ["sh", "-c", "sleep 0.3"]);
        let status = rx.wait_for(|s| s.is_some()).await.unwrap().unwrap();
        assert_eq!(status.code, Some(0));
        assert!(store.restartable().unwrap().is_empty(), "exit 0: done, not restarted");
        // A non-zero exit keeps it for the next start, and is not restarted meanwhile.
        let r = SpawnRequest { restartable: true, ..req("r2", &["sh", "-c", "exit 3"]) };
        let (_, mut rx) = f.mgr.spawn(r, &me(), None).await.unwrap();
        rx.wait_for(|s| s.is_some()).await.unwrap();
        assert_eq!(store.restartable().unwrap().len(), 1);
        assert_eq!(f.mgr.status("r2").unwrap().state, AgentState::Exited);
    }

    #[tokio::test]
    async fn a_starting_daemon_restarts_what_is_gone_and_fails_closed_on_a_missing_path() {
        let f = fixture(files_enforced());
        let store = Arc::new(crate::store::Store::open(&f._dir.path().join("state.db")).unwrap());
        f.mgr.attach_store(store.clone());
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        let gone = dir.path().join("gone");
        std::fs::create_dir(&keep).unwrap();
        std::fs::create_dir(&gone).unwrap();
        for (name, path) in [("ok", &keep), ("lost", &gone)] {
            let allow: FileGrant = format!("{}:read", path.display()).parse().unwrap();
            let r = SpawnRequest { restartable: true, allow: vec![allow], ..req(name, &["sleep", "30"]) };
            f.mgr.spawn(r, &me(), None).await.unwrap();
        }
        std::fs::remove_dir(&gone).unwrap();
        // Another daemon on the same store: both are gone from its point of view.
        let g = fixture(files_enforced());
        g.mgr.attach_store(store.clone());
        assert_eq!(g.mgr.restart_restartable(|_| true).await, 1);
        let ok = g.mgr.status("ok").unwrap();
        assert!(ok.restartable && ok.state == AgentState::Running);
        assert_ne!(ok.pid, f.mgr.status("ok").unwrap().pid, "a new process");
        assert!(g.kernel.files_confined.lock().unwrap().contains(&ok.cgroup_id), "still confined");
        let key = crate::tokens::file_key(&keep).unwrap();
        assert!(g.kernel.file_grants.lock().unwrap().contains_key(&(ok.cgroup_id, key)));
        assert!(g.mgr.status("lost").is_err(), "never started with fewer tokens");
        let events = audit_kinds(&g);
        assert!(
            events.iter().any(|e| matches!(e, AuditEvent::AgentRestarted { reason, new_pid, .. }
                if reason == "gone" && *new_pid == ok.pid)),
            "{events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(e, AuditEvent::RestartFailed { error, .. }
                if error.contains(&*gone.to_string_lossy()))),
            "{events:?}"
        );
        // A session that no longer exists: not started either.
        let h = fixture(files_enforced());
        h.mgr.attach_store(store.clone());
        let mut rec = store.restartable().unwrap().into_iter().find(|r| r.request.name == "ok").unwrap();
        rec.request.session = Some("s".into());
        store.put_restartable(&rec).unwrap();
        assert_eq!(h.mgr.restart_restartable(|_| false).await, 0);
        // The operator's kill forgets it, also one whose restart failed.
        assert_eq!(g.mgr.kill_by_operator("lost", &me()).await.unwrap(), 0);
        let names: Vec<String> = store.restartable().unwrap().into_iter().map(|r| r.request.name).collect();
        assert_eq!(names, ["ok"]);
        for m in [&f.mgr, &g.mgr] {
            for a in m.list() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(a.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[test]
    fn a_restart_request_keeps_what_is_left_of_timed_grants_and_never_runs_unconfined() {
        let grant = |p: &str, exp| crate::store::RestartGrant {
            path: p.into(),
            ops: Ops::READ,
            expires_unix_ms: exp,
        };
        let mut rec = crate::store::RestartRecord {
            request: SpawnRequest { allow_unconfined: true, ..req("a", &["true"]) },
            uid: 0,
            gid: 0,
            groups: vec![],
            grants: vec![grant("/a", None), grant("/b", Some(10_500)), grant("/c", Some(9_000))],
            files_confined: true,
            pid: 1,
        };
        let r = restart_request(&rec, 10_000).unwrap();
        assert!(!r.allow_unconfined && r.restartable && r.stdio == StdioMode::Log);
        let got: Vec<(String, Option<u64>)> =
            r.allow.iter().map(|g| (g.path.display().to_string(), g.ttl_secs)).collect();
        assert_eq!(got, [("/a".to_string(), None), ("/b".to_string(), Some(1))], "/c has expired");
        rec.grants = vec![grant("/c", Some(9_000))];
        let e = restart_request(&rec, 10_000).unwrap_err();
        assert!(e.contains("unconfined"), "{e}");
        rec.files_confined = false;
        assert!(restart_request(&rec, 10_000).unwrap().allow.is_empty());
    }

    fn audit_kinds(f: &Fixture) -> Vec<AuditEvent> {
        let q = rush_proto::AuditQuery::default();
        f.mgr.audit.query(&q).unwrap().into_iter().map(|r| r.event).collect()
    }

    fn set_usage(f: &Fixture, name: &str, u: crate::budget::CgroupUsage) {
        f.control.usage.lock().unwrap().insert(name.into(), u);
    }

    #[tokio::test]
    async fn a_spent_cpu_budget_freezes_once_and_resume_needs_a_raise() {
        let f = fixture(enforced());
        let mut r = req("cpu1", &["sleep", "30"]);
        r.budget = "cpu:2s,mem:64M".parse().unwrap();
        f.mgr.spawn(r, &me(), None).await.unwrap();
        assert_eq!(f.control.applied.lock().unwrap()["cpu1"].mem_bytes, Some(64 << 20));

        set_usage(
            &f,
            "cpu1",
            crate::budget::CgroupUsage { cpu_ns: Some(1_900_000_000), ..Default::default() },
        );
        f.mgr.check_budgets().await;
        assert!(f.cgroups.freezes.lock().unwrap().is_empty(), "not spent yet");
        set_usage(
            &f,
            "cpu1",
            crate::budget::CgroupUsage { cpu_ns: Some(2_050_000_000), ..Default::default() },
        );
        f.mgr.check_budgets().await;
        f.mgr.check_budgets().await;
        assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1"], "frozen exactly once");
        let info = f.mgr.status("cpu1").unwrap();
        assert_eq!(info.paused, [PauseReason::BudgetCpu]);
        let cpu = info.usage.iter().find(|u| u.resource == BudgetResource::Cpu).unwrap();
        assert!(cpu.exceeded && cpu.used == 2050 && cpu.limit == Some(2000));
        assert!(audit_kinds(&f).iter().any(|e| matches!(
            e,
            AuditEvent::BudgetExceeded { resource: BudgetResource::Cpu, used: 2050, limit: 2000, .. }
        )));

        // Without a raise, or with one still used up: refused, still frozen.
        let e = f.mgr.resume("cpu1", None, &me()).await.unwrap_err();
        assert!(e.message.contains("stays frozen") && e.message.contains("--budget cpu:"), "{}", e.message);
        let e = f.mgr.resume("cpu1", Some("cpu:2s".parse().unwrap()), &me()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1"]);

        let info = f.mgr.resume("cpu1", Some("cpu:4s".parse().unwrap()), &me()).await.unwrap();
        assert!(info.paused.is_empty());
        assert_eq!(info.budget.cpu_ms, Some(4000));
        assert_eq!(info.budget.mem_bytes, Some(64 << 20), "limits not named stay");
        assert_eq!(*f.cgroups.freezes.lock().unwrap(), ["freeze cpu1", "thaw cpu1"]);
        f.mgr.kill("cpu1", &me()).await.unwrap();
    }

    #[tokio::test]
    async fn oom_kills_and_refused_forks_are_audited_once_each() {
        let f = fixture(enforced());
        let mut r = req("hog", &["sleep", "30"]);
        r.budget = "mem:32M,pids:8".parse().unwrap();
        f.mgr.spawn(r, &me(), None).await.unwrap();
        set_usage(
            &f,
            "hog",
            crate::budget::CgroupUsage { oom_kills: Some(1), fork_refusals: Some(5), ..Default::default() },
        );
        f.mgr.check_budgets().await;
        f.mgr.check_budgets().await;
        set_usage(
            &f,
            "hog",
            crate::budget::CgroupUsage { oom_kills: Some(3), fork_refusals: Some(5), ..Default::default() },
        );
        f.mgr.check_budgets().await;
        let events = audit_kinds(&f);
        let ooms: Vec<u64> = events
            .iter()
            .filter_map(|e| if let AuditEvent::OomKill { count, .. } = e { Some(*count) } else { None })
            .collect();
        let forks: Vec<u64> = events
            .iter()
            .filter_map(
                |e| if let AuditEvent::ForkRefused { count, limit: 8 } = e { Some(*count) } else { None },
            )
            .collect();
        assert_eq!(ooms, [1, 2]);
        assert_eq!(forks, [5]);
        f.mgr.kill("hog", &me()).await.unwrap();
    }

    #[tokio::test]
    async fn trust_levels_fill_in_defaults_that_flags_override() {
        let f = fixture(files_enforced());
        let mut r = req("t1", &["sleep", "30"]);
        r.trust = Some("low".into());
        r.net = None;
        r.budget = "mem:2G".parse().unwrap();
        r.allow = vec![FileGrant { path: "/tmp".into(), ops: "read,exec".parse().unwrap(), ttl_secs: None }];
        let (info, _) = f.mgr.spawn(r, &me(), None).await.unwrap();
        assert_eq!(info.trust.as_deref(), Some("low"));
        assert_eq!(info.net, NetPolicy::Deny);
        assert_eq!(info.budget.to_string(), "cpu:10m,mem:2G,pids:128");
        // exec = "system": the agent's own grant lost exec; later exec grants are refused.
        let tmp = f.mgr.capabilities(Some("t1")).unwrap();
        let t = tmp.iter().find(|t| t.path == std::path::Path::new("/tmp")).unwrap();
        assert_eq!(t.ops, Ops::READ);
        let e = f
            .mgr
            .grant(
                GrantRequest {
                    agent: "t1".into(),
                    path: "/tmp".into(),
                    ops: Ops::EXEC,
                    duration_secs: None,
                    condition: None,
                },
                &me(),
            )
            .await
            .unwrap_err();
        assert!(e.message.contains("exec rule is \"system\""), "{}", e.message);
        let mut r = req("t2", &["true"]);
        r.trust = Some("root".into());
        let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
        assert!(e.message.contains("unknown trust level \"root\""), "{}", e.message);
        f.mgr.kill("t1", &me()).await.unwrap();
    }

    #[tokio::test]
    async fn budgets_this_machine_cannot_enforce_are_refused() {
        let control = crate::budget::fake::FakeControl {
            missing: vec![("mem", "no v1 memory hierarchy".into())],
            ..Default::default()
        };
        let f = fixture_with(enforced(), control);
        let mut r = req("m1", &["true"]);
        r.budget = "mem:1G".parse().unwrap();
        let e = f.mgr.spawn(r, &me(), None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(e.message.contains("mem budget: no v1 memory hierarchy"), "{}", e.message);
        let mut r = req("m2", &["true"]);
        r.budget = "pids:10".parse().unwrap();
        assert!(f.mgr.spawn(r, &me(), None).await.is_ok(), "other resources still work");
    }

    #[tokio::test]
    async fn net_and_api_budgets_reach_the_kernel_before_the_agent_runs_and_on_resume() {
        let f = fixture(enforced());
        let mut r = req("n1", &["sleep", "30"]);
        r.budget = "net:1M,api:5".parse().unwrap();
        let (info, _) = f.mgr.spawn(r, &me(), None).await.unwrap();
        let set = f.kernel.budgets.lock().unwrap()[&info.cgroup_id];
        assert_eq!((set.bytes, set.api_calls), (Some(1 << 20), Some(5)));
        f.kernel.usage.lock().unwrap().insert(
            info.cgroup_id,
            crate::bpf::NetUsage {
                tx_bytes: 600_000,
                rx_bytes: 400_000,
                api_calls: 5,
                dropped_packets: 0,
                refused_calls: 2,
            },
        );
        let s = f.mgr.status("n1").unwrap();
        let line = |r: &str| s.usage.iter().find(|u| u.resource.as_str() == r).unwrap().clone();
        assert_eq!(line("net").used, 1_000_000);
        assert!(!line("net").exceeded);
        assert!(line("api").exceeded, "refused calls mean the budget was hit");
        f.mgr.resume("n1", Some("api:50".parse().unwrap()), &me()).await.unwrap();
        let set = f.kernel.budgets.lock().unwrap()[&info.cgroup_id];
        assert_eq!((set.bytes, set.api_calls), (Some(1 << 20), Some(50)), "raised, the rest kept");
        f.mgr.kill("n1", &me()).await.unwrap();
    }

    #[test]
    fn a_network_policy_reaching_the_meter_upstream_is_spotted() {
        let up: crate::meter::Upstream = "http://10.1.2.3:8080".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(reaches(&KernelNetPolicy::Allow, &up));
        assert!(!reaches(&KernelNetPolicy::Deny, &up));
        assert!(reaches(&KernelNetPolicy::List(vec![(ip("10.0.0.0"), 8, 0)]), &up));
        assert!(reaches(&KernelNetPolicy::List(vec![(ip("10.1.2.3"), 32, 8080)]), &up));
        assert!(!reaches(&KernelNetPolicy::List(vec![(ip("10.1.2.3"), 32, 443)]), &up));
        assert!(!reaches(&KernelNetPolicy::List(vec![(ip("10.2.0.0"), 16, 0)]), &up));
        assert!(!reaches(&KernelNetPolicy::List(vec![(ip("::1"), 128, 0)]), &up));
    }
}

//! Agents: spawn a command inside its own cgroup with its kernel policy in place before
//! it executes anything, track it until exit, kill its whole tree, clean up.
//!
//! This file holds the registry and what every room shares; each room adds its part of
//! [`AgentManager`]:
//! - `lifecycle` — spawn (plan, cgroup, kernel policy, hardening, exec), exit, kill
//! - `capabilities` — file tokens: spawn-time, grant, revoke, expiry, commit, reconfine
//! - `budgets` — usage, budget pauses and resumes, the cost meter
//! - `names` — host names in `--net`: each such agent's own DNS resolver
//! - `persistence` — the store, re-adoption after a daemon restart, restartable agents
//! - [`processes`] — checkpoint and restore of an agent's processes with CRIU

mod budgets;
mod capabilities;
mod lifecycle;
mod names;
mod persistence;
pub mod processes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rush_proto::{
    AgentInfo, AgentName, AgentState, AuditEvent, Budget, BudgetResource, ChangeAction, ChangeEffect,
    CommitCause, ExitStatus, FileGrant, FilesBackend, GrantRequest, Hardlinks, NetPolicy, Ops, PauseReason,
    RestartReason, RevokeTarget, SpawnRequest, StdioMode, TokenChange, TokenInfo,
};
use tokio::sync::watch;

use crate::adapters::bpf::{AgentFlags, FileGrantEntry, KernelNetPolicy, KernelPolicy};
use crate::adapters::cgroup::{AgentCgroup, CgroupBackend};
use crate::adapters::mappings::{Kept, Killed, Lost, path_forms};
use crate::adapters::snapshot::criu::CriuSetup;
use crate::adapters::spawn::{Spawn, SpawnError};
use crate::core::process::{pidfd_open, proc_stat};
use crate::core::token::{Condition, Origin, Token};
use crate::core::{Caller, Fault, FileKey, KeyError, boot_time_ns, error_chain, now_unix_ms};
use crate::services::audit::AuditLog;
use crate::services::budget::{AgentBudget, BudgetBook, Budgets, Observed, Pause};
use crate::services::policy::ExecRule;
use crate::services::tokens::{NewToken, TokenError, TokenStore};
use lifecycle::Respawn;

/// The hardening every agent of this daemon gets (`[hardening]`, `harden.rs`); set by
/// the daemon at start. Unit tests run without it.
pub struct AgentHardening {
    pub cgroup_namespace: bool,
    pub private_cgroupfs: bool,
    /// The BPF LSM guard is attached: it refuses cgroupfs writes itself, and the mount
    /// calls the read-only view would need in the agent's first process.
    pub guard: bool,
    /// For agents without a trust level, and what a level's keys override.
    pub defaults: crate::adapters::harden::HardeningPolicy,
    pub seccomp: Arc<crate::adapters::harden::SeccompProgram>,
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

/// An agent's first process, as the daemon holds it.
pub(crate) struct Child {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
}

/// What the kernel side can enforce, decided once at start-up from what really attached.
#[derive(Debug, Clone)]
pub struct Enforcement {
    pub net: bool,
    /// What enforces `--allow` file tokens on this daemon.
    pub files: FileBackend,
    /// What a token change does to a Landlock-confined agent.
    pub landlock: crate::adapters::landlock::LandlockSection,
    /// How paths resolve to the kernel programs' file keys (btrfs keyed or not).
    pub keys: crate::core::FileKeys,
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

pub struct AgentManager {
    pub(crate) cgroups: Arc<dyn CgroupBackend>,
    kernel: Arc<dyn KernelPolicy>,
    audit: Arc<AuditLog>,
    pub(crate) enforcement: Enforcement,
    log_dir: PathBuf,
    /// Tokens every file-confined agent gets (config `files.baseline`).
    baseline: Vec<FileGrant>,
    /// File-confined agents' own TMPDIRs (config `files.private_tmp`); unset: none.
    /// Each agent's own TMPDIR in here (`files.private_tmp`); None: off.
    private_tmp: Option<crate::services::baseline::PrivateTmp>,
    /// The hardening every agent gets; None only in unit tests.
    hardening: Option<AgentHardening>,
    tokens: TokenStore,
    registry: Mutex<Registry>,
    /// The durable state (agents, tokens), once the daemon has opened it; unit tests run
    /// without one.
    /// Where agents and tokens are written before a request is answered; None only in
    /// unit tests that do not need it.
    store: Option<Arc<crate::adapters::store::Store>>,
    /// The budgets service: limits, pauses, counters audited, cost meters.
    budgets: BudgetBook,
    /// Checkpoints of processes (`checkpoint --with-processes`).
    criu: Arc<CriuSetup>,
    /// Where agents' DNS is forwarded; None: host names are resolved once, at spawn.
    dns: Option<Arc<crate::services::resolver::ResolverConfig>>,
    /// Bytes of terminal output each terminal keeps for a late viewer (`[terminal]`).
    terminal_scrollback: usize,
    /// Asked before an agent's first process runs (claim denies of its session); set once
    /// by the daemon after the services exist.
    admission: std::sync::OnceLock<Arc<dyn AgentAdmission>>,
}

/// What must be in place in the kernel before a new agent runs, owned by another service
/// (coordination: the write-denies of its session's path claims).
pub trait AgentAdmission: Send + Sync {
    /// Err: why the agent may not start (it is not started).
    fn admit(&self, name: &str, cgroup_id: u64, session: Option<&str>) -> Result<(), String>;
}

/// What an [`AgentManager`] is built from: the adapters it drives and the daemon's choices.
pub struct AgentSetup {
    pub cgroups: Arc<dyn CgroupBackend>,
    pub kernel: Arc<dyn KernelPolicy>,
    pub audit: Arc<AuditLog>,
    pub enforcement: Enforcement,
    /// Where detached agents' output goes.
    pub log_dir: PathBuf,
    /// What every file-confined agent may use.
    pub baseline: Vec<FileGrant>,
    pub budgets: Budgets,
    pub criu: Arc<CriuSetup>,
    /// The hardening of every agent (`[hardening]`); None only in unit tests.
    pub hardening: Option<AgentHardening>,
    /// Private TMPDIRs (`files.private_tmp`); swept of dead agents' directories by
    /// [`AgentManager::sweep_private_tmp`] once adoption is done.
    pub private_tmp: Option<crate::services::baseline::PrivateTmp>,
    /// The state store; None only in unit tests that do not need it.
    pub store: Option<Arc<crate::adapters::store::Store>>,
    /// Agents' DNS resolvers forward here (`[dns]`); None: host names in `--net` are
    /// resolved once, at spawn, and wildcards are refused.
    pub dns: Option<Arc<crate::services::resolver::ResolverConfig>>,
    /// Bytes of terminal output each agent's terminal keeps for a late viewer.
    pub terminal_scrollback: usize,
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
    exec: ExecRule,
    /// Its DNS resolver, while it runs with host names in its `--net` list.
    resolver: Option<crate::services::resolver::AgentResolver>,
    /// Held by a kill until its audit record is written: the exit watcher waits for it, so
    /// the trail says `kill` before the `exit` the kill caused.
    kill_lock: Arc<tokio::sync::Mutex<()>>,
}

crate::service_error!(
    /// Why a request to the agents service failed; `api` maps it to the wire.
    AgentError
);

impl AgentManager {
    pub fn new(setup: AgentSetup) -> Arc<AgentManager> {
        let AgentSetup {
            cgroups,
            kernel,
            audit,
            enforcement,
            log_dir,
            baseline,
            budgets,
            criu,
            hardening,
            private_tmp,
            store,
            dns,
            terminal_scrollback,
        } = setup;
        Arc::new(AgentManager {
            cgroups,
            kernel,
            audit,
            enforcement,
            log_dir,
            baseline,
            private_tmp,
            hardening,
            tokens: TokenStore::default(),
            registry: Mutex::default(),
            store,
            budgets: BudgetBook::new(budgets),
            criu,
            dns,
            terminal_scrollback,
            admission: std::sync::OnceLock::new(),
        })
    }

    /// Sets who admits new agents (once; later calls are ignored).
    pub fn set_admission(&self, admission: Arc<dyn AgentAdmission>) {
        let _ = self.admission.set(admission);
    }

    /// The criu this daemon checkpoints processes with.
    pub fn criu(&self) -> &CriuSetup {
        &self.criu
    }

    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name_of(&self, cgroup_id: u64) -> Option<String> {
        self.registry().names.get(&cgroup_id).cloned()
    }

    pub fn list(&self) -> Vec<AgentInfo> {
        let reg = self.registry();
        let mut v: Vec<AgentInfo> = reg.agents.values().map(|a| self.current(a)).collect();
        v.sort_by(|a, b| a.started_unix_ms.cmp(&b.started_unix_ms).then(a.name.cmp(&b.name)));
        v
    }

    /// Every agent's stored info as it is (no cgroup reads: cheap, for other services).
    pub fn infos(&self) -> Vec<AgentInfo> {
        self.registry().agents.values().map(|a| a.info.clone()).collect()
    }

    pub fn status(&self, name: &str) -> Result<AgentInfo, AgentError> {
        let reg = self.registry();
        reg.agents.get(name).map(|a| self.current(a)).ok_or_else(|| not_found(name))
    }

    fn current(&self, a: &Agent) -> AgentInfo {
        let mut info = a.info.clone();
        if info.state == AgentState::Running {
            info.processes = self.cgroups.pids(&a.cgroup).len() as u32;
            info.usage = crate::services::budget::usage_lines(
                &info.budget,
                &self.observe(&a.cgroup, self.budgets.ledger(&info.name)),
            );
        }
        info
    }
}

fn not_found(name: &str) -> AgentError {
    AgentError::new(Fault::NotFound, format!("no agent named {name:?}"))
}

#[cfg(test)]
mod tests;

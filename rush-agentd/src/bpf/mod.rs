//! The kernel side: loads, pins and attaches the BPF programs of `rush-ebpf`, owns them on
//! one dedicated thread, writes agents' policies into the maps, and turns ring-buffer
//! records into [`KernelEvent`]s.
//!
//! Threads:
//! - `rush-bpf`: owns the skeletons; [`BpfHandle`] clones send it commands and wait for the
//!   reply (microseconds). It exits when the last handle is dropped. Links and maps are
//!   pinned, so enforcement outlives it and the daemon; a restarted daemon reuses the
//!   pinned maps (agents' entries included) and replaces the pinned links.
//! - `rush-bpf-events`: polls the ring buffer and the lost-events counter; exits when the
//!   owner thread has exited or the event receiver is dropped.

mod events;
mod load;
mod owner;
#[cfg(test)]
mod smoke_test;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{0}")]
    Other(String),
    #[error("invalid BPF configuration: {0}")]
    Config(String),
    #[error("{path} is not on a bpffs and is not under /sys/fs/bpf")]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs at {path}")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening BPF object {object}")]
    Open {
        object: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("loading BPF object {object}")]
    Load {
        object: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} ({hook})")]
    Attach {
        program: &'static str,
        hook: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("pinning the link of {program} at {path}")]
    PinLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("pinning map at {path}")]
    PinMap {
        path: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("map {map}: {op} for agent cgroup {cgroup_id}")]
    Map {
        map: &'static str,
        op: &'static str,
        cgroup_id: u64,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("map {map}: opening a handle")]
    MapHandle {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("starting thread {name}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the BPF owner thread has stopped")]
    Stopped,
}

/// Where and how the daemon loads its programs.
#[derive(Debug, Clone)]
pub struct BpfConfig {
    /// bpffs directory for this daemon's pins, e.g. /sys/fs/bpf/rush (mounted if needed).
    pub pin_dir: PathBuf,
    /// The cgroup v2 mount (the root the cgroup programs attach to).
    pub cgroup2_root: PathBuf,
    /// Depth below the v2 root of every agent cgroup (root = 0); the programs identify
    /// the agent with bpf_get_current_ancestor_cgroup_id(level).
    pub agent_cgroup_level: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStatus {
    pub name: String,
    /// e.g. "cgroup/connect4", "lsm/file_open"
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachReport {
    pub programs: Vec<ProgramStatus>,
}

impl AttachReport {
    /// connect4, connect6, sendmsg4 and sendmsg6 all attached.
    pub fn net_enforced(&self) -> bool {
        rush_ebpf::NET_PROGRAMS
            .iter()
            .all(|spec| self.programs.iter().any(|p| p.hook == spec.hook && p.attached))
    }

    /// Every lsm/* program attached.
    pub fn lsm_attached(&self) -> bool {
        let mut lsm = self.lsm_programs().peekable();
        lsm.peek().is_some() && lsm.all(|p| p.attached)
    }

    /// Why the LSM programs did not attach, if they did not.
    pub fn lsm_error(&self) -> Option<String> {
        if self.lsm_attached() {
            return None;
        }
        Some(
            self.lsm_programs()
                .find_map(|p| p.error.clone())
                .unwrap_or_else(|| "no LSM program was loaded".to_string()),
        )
    }

    fn lsm_programs(&self) -> impl Iterator<Item = &ProgramStatus> {
        self.programs.iter().filter(|p| p.hook.starts_with("lsm/"))
    }
}

/// The kernel's view of an agent's network policy, with host names already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelNetPolicy {
    Deny,
    Allow,
    /// (address, port); port 0 = any port on that address.
    List(Vec<(IpAddr, u16)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetHook {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
}

impl NetHook {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetHook::Connect4 => "connect4",
            NetHook::Connect6 => "connect6",
            NetHook::Sendmsg4 => "sendmsg4",
            NetHook::Sendmsg6 => "sendmsg6",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    NetDeny {
        cgroup_id: u64,
        /// The thread that called connect()/sendmsg().
        pid: u32,
        /// Its process (what users call the pid).
        tgid: u32,
        uid: u32,
        comm: String,
        hook: NetHook,
        destination: SocketAddr,
        /// "tcp", "udp", or the protocol number
        protocol: String,
    },
    /// The kernel could not reserve ring-buffer space for this many events.
    Lost { count: u64 },
}

/// What the daemon asks of the kernel side. Implemented by [`BpfHandle`] and, for unit
/// tests, by [`FakeKernel`].
pub trait KernelPolicy: Send + Sync + 'static {
    /// Must complete before any process enters the cgroup.
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy) -> Result<(), BpfError>;
    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError>;
}

/// A request to the owner thread, with the channel its answer goes back on.
enum Command {
    AddAgent { cgroup_id: u64, net: KernelNetPolicy, reply: mpsc::SyncSender<Result<(), BpfError>> },
    RemoveAgent { cgroup_id: u64, reply: mpsc::SyncSender<Result<(), BpfError>> },
    AgentIds { reply: mpsc::SyncSender<Result<Vec<u64>, BpfError>> },
}

/// Cheap to clone; every clone talks to the one thread that owns the BPF objects.
#[derive(Clone)]
pub struct BpfHandle {
    commands: mpsc::Sender<Command>,
}

impl BpfHandle {
    /// Loads, pins and attaches; LSM programs only where the kernel accepts them.
    /// Fails only if the network programs cannot be loaded or attached.
    pub fn start(
        cfg: BpfConfig,
    ) -> Result<(BpfHandle, AttachReport, tokio::sync::mpsc::UnboundedReceiver<KernelEvent>), BpfError> {
        if cfg.agent_cgroup_level == 0 {
            return Err(BpfError::Config(
                "agent_cgroup_level is 0: the v2 root itself cannot be an agent cgroup".into(),
            ));
        }
        let (commands, command_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        // Set by the owner thread when it exits; tells the events thread to stop too.
        let owner_gone = Arc::new(AtomicBool::new(false));
        let gone = owner_gone.clone();
        thread::Builder::new()
            .name("rush-bpf".into())
            .spawn(move || owner::run(cfg, ready_tx, command_rx, gone))
            .map_err(|source| BpfError::Thread { name: "rush-bpf", source })?;
        let started = ready_rx.recv().map_err(|_| BpfError::Stopped)??;

        let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
        events::spawn(started.events, started.stats, event_tx, owner_gone)?;
        Ok((BpfHandle { commands }, started.report, event_rx))
    }

    /// Cgroup ids that have an entry in the kernel's agent map, including ones a previous
    /// daemon left in the pinned map: the daemon removes those it no longer knows.
    pub fn agent_ids(&self) -> Result<Vec<u64>, BpfError> {
        self.request(|reply| Command::AgentIds { reply })
    }

    fn request<T>(
        &self,
        command: impl FnOnce(mpsc::SyncSender<Result<T, BpfError>>) -> Command,
    ) -> Result<T, BpfError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.commands.send(command(reply)).map_err(|_| BpfError::Stopped)?;
        answer.recv().map_err(|_| BpfError::Stopped)?
    }
}

impl KernelPolicy for BpfHandle {
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy) -> Result<(), BpfError> {
        self.request(|reply| Command::AddAgent { cgroup_id, net: net.clone(), reply })
    }

    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError> {
        self.request(|reply| Command::RemoveAgent { cgroup_id, reply })
    }
}

/// Records calls; for unit tests of the daemon's logic.
#[derive(Default)]
pub struct FakeKernel {
    pub agents: std::sync::Mutex<std::collections::HashMap<u64, KernelNetPolicy>>,
}

impl KernelPolicy for FakeKernel {
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy) -> Result<(), BpfError> {
        self.agents.lock().unwrap().insert(cgroup_id, net.clone());
        Ok(())
    }
    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError> {
        self.agents.lock().unwrap().remove(&cgroup_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(hook: &str, attached: bool, error: Option<&str>) -> ProgramStatus {
        ProgramStatus {
            name: format!("rush_{}", hook.rsplit('/').next().unwrap()),
            hook: hook.into(),
            attached,
            error: error.map(Into::into),
        }
    }

    fn net_all() -> Vec<ProgramStatus> {
        ["cgroup/connect4", "cgroup/connect6", "cgroup/sendmsg4", "cgroup/sendmsg6"]
            .into_iter()
            .map(|h| status(h, true, None))
            .collect()
    }

    #[test]
    fn report_net_and_lsm() {
        let mut programs = net_all();
        programs.push(status("lsm/file_open", false, Some("load: EPERM")));
        programs.push(status("lsm/file_permission", false, Some("load: EPERM")));
        let r = AttachReport { programs };
        assert!(r.net_enforced());
        assert!(!r.lsm_attached());
        assert_eq!(r.lsm_error().as_deref(), Some("load: EPERM"));

        let mut programs = net_all();
        programs.remove(2);
        programs.push(status("lsm/file_open", true, None));
        let r = AttachReport { programs };
        assert!(!r.net_enforced());
        assert!(r.lsm_attached());
        assert_eq!(r.lsm_error(), None);

        let r = AttachReport { programs: net_all() };
        assert!(!r.lsm_attached(), "no LSM program is not 'every LSM program attached'");
        assert!(r.lsm_error().is_some());
    }

    #[test]
    fn handle_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<BpfHandle>();
        fn error_is_send<T: Send + Sync + 'static>() {}
        error_is_send::<BpfError>();
    }
}

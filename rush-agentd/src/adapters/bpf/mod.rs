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
#[cfg(test)]
mod file_smoke_test;
mod load;
#[cfg(test)]
mod net_budget_smoke_test;
mod owner;
#[cfg(test)]
mod smoke_test;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread;

use crate::core::FileKey;

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
    #[error("map {map}: {op}")]
    GlobalMap {
        map: &'static str,
        op: &'static str,
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
    /// Directories no agent may enter (the daemon's state dir, its config dir), at most
    /// `rush_ebpf::PROTECTED_MAX`; the guard programs refuse even their lookup.
    pub protected_dirs: Vec<PathBuf>,
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
    /// The file programs were loaded with btrfs's type information, so they key btrfs
    /// inodes by subvolume (without it they deny every btrfs file).
    pub btrfs_keyed: bool,
}

impl AttachReport {
    /// connect4, connect6, sendmsg4, sendmsg6 and the skb ingress/egress counters all attached.
    pub fn net_enforced(&self) -> bool {
        rush_ebpf::NET_PROGRAMS
            .iter()
            .all(|spec| self.programs.iter().any(|p| p.hook == spec.hook && p.attached))
    }

    /// Every program of `rush_ebpf::LSM_PROGRAMS` attached (file tokens are enforced).
    pub fn lsm_attached(&self) -> bool {
        rush_ebpf::LSM_PROGRAMS
            .iter()
            .all(|spec| self.lsm_programs().any(|p| p.hook == spec.hook && p.attached))
            && self.lsm_programs().all(|p| p.attached)
    }

    /// Why the LSM programs did not attach, if they did not.
    pub fn lsm_error(&self) -> Option<String> {
        if self.lsm_attached() {
            return None;
        }
        Some(self.lsm_programs().find_map(|p| p.error.clone()).unwrap_or_else(|| {
            match rush_ebpf::LSM_PROGRAMS.iter().find(|s| !self.lsm_programs().any(|p| p.hook == s.hook)) {
                Some(spec) => format!("LSM program {} ({}) was not loaded", spec.name, spec.hook),
                None => "an LSM program did not attach".to_string(),
            }
        }))
    }

    fn lsm_programs(&self) -> impl Iterator<Item = &ProgramStatus> {
        // By name: the guard object has an lsm/file_open program too.
        let file_programs: Vec<&str> = rush_ebpf::LSM_PROGRAMS.iter().map(|s| s.name).collect();
        self.programs.iter().filter(move |p| file_programs.contains(&p.name.as_str()))
    }

    /// Every program of `rush_ebpf::GUARD_PROGRAMS` attached (self-protection holds).
    pub fn guard_attached(&self) -> bool {
        rush_ebpf::GUARD_PROGRAMS
            .iter()
            .all(|spec| self.programs.iter().any(|p| p.name == spec.name && p.attached))
    }

    /// Why self-protection does not hold, if it does not.
    pub fn guard_error(&self) -> Option<String> {
        if self.guard_attached() {
            return None;
        }
        let guard = rush_ebpf::GUARD_PROGRAMS;
        Some(
            guard
                .iter()
                .find_map(|s| self.programs.iter().find(|p| p.name == s.name).and_then(|p| p.error.clone()))
                .unwrap_or_else(|| "a self-protection program did not attach".into()),
        )
    }

    /// The cgroup/sysctl program attached (agents cannot write sysctls).
    pub fn sysctl_guarded(&self) -> bool {
        self.programs.iter().any(|p| p.hook == rush_ebpf::SYSCTL_PROGRAM.hook && p.attached)
    }
}

/// The kernel's view of an agent's network policy, with host names already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelNetPolicy {
    Deny,
    Allow,
    /// (address, prefix length, port): every address sharing the first `prefix length`
    /// bits of `address` (32 or 128 = that address alone); port 0 = any port.
    List(Vec<(IpAddr, u8, u16)>),
}

/// An agent's kernel-enforced network budgets; None = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetBudget {
    /// Bytes sent plus received (IP packets, headers included). Past it, every packet of
    /// the agent's sockets is dropped.
    pub bytes: Option<u64>,
    /// Connects to an API endpoint (see [`KernelPolicy::set_api_endpoints`]). Past it,
    /// such connects fail with EPERM.
    pub api_calls: Option<u64>,
}

/// What an agent has used, as the kernel counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetUsage {
    /// IP packet bytes, headers included, of the agent's own sockets (loopback too).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Connects to API endpoints let through.
    pub api_calls: u64,
    /// Packets dropped over the byte budget.
    pub dropped_packets: u64,
    /// API connects refused over the call budget.
    pub refused_calls: u64,
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
    /// A file-confined agent was refused a file operation (the syscall failed with EPERM).
    FileDeny {
        cgroup_id: u64,
        /// The thread that made the call.
        pid: u32,
        /// Its process.
        tgid: u32,
        uid: u32,
        comm: String,
        /// The LSM hook: "file_open", "file_permission", "path_mknod", "path_mkdir",
        /// "path_symlink", "path_unlink", "path_rmdir", "path_rename", "path_link",
        /// "path_truncate", "path_chmod", "path_chown".
        hook: &'static str,
        /// The op bit no grant covered (`rush_proto::Ops` bits: 1 read, 1<<1 write, 1<<2
        /// exec, 1<<3 create, 1<<4 delete).
        op: u32,
        /// Absolute path of what the agent tried to reach (for a create: the new name),
        /// as the kernel saw it; starts with "…" when it was too long. Best effort.
        path: String,
        /// The inode whose grants were missing (for a create: the parent directory), as
        /// in [`FileKey`].
        dev: u32,
        ino: u64,
    },
    /// An agent was refused something that reaches outside its cgroup or into the kernel
    /// (self-protection: ptrace, kill, bpf, mount, a capability, a cgroupfs write, ...).
    GuardDeny {
        cgroup_id: u64,
        /// 0 when the hook cannot tell (sysctl).
        pid: u32,
        tgid: u32,
        uid: u32,
        comm: String,
        /// e.g. "capable", "task_kill", "cgroup/sysctl".
        hook: &'static str,
        /// The process acted on (ptrace, kill), else 0.
        target: u32,
        /// What was asked: the capability, bpf command, signal, fcntl argument, ...
        arg: i64,
    },
    /// The kernel moved an agent's grant from one inode to another (an editor-style save
    /// renamed a new file over the granted one).
    GrantMoved { cgroup_id: u64, from: FileKey, to: FileKey },
    /// An agent spent its byte budget: its packets are dropped from now on. Sent once per
    /// breach (again only after [`KernelPolicy::set_net_budget`]).
    NetBudgetExceeded {
        cgroup_id: u64,
        /// Bytes sent + received when the first packet was dropped.
        used: u64,
        limit: u64,
    },
    /// An agent was refused a write-like file operation (EPERM) because another agent holds
    /// a path claim on the object or a directory above it (see
    /// [`KernelPolicy::set_claim_denies`]). Checked before, and whatever, its grants; for
    /// agents that are not file-confined too.
    ClaimDeny {
        cgroup_id: u64,
        /// The thread that made the call.
        pid: u32,
        /// Its process.
        tgid: u32,
        uid: u32,
        comm: String,
        /// The LSM hook, as in [`KernelEvent::FileDeny`].
        hook: &'static str,
        /// What the hook asked (`rush_proto::Ops` bits): write (1<<1), create (1<<3) or
        /// delete (1<<4).
        op: u32,
        /// Absolute path of what the agent tried to reach (for a create: the new name), as
        /// the kernel saw it; starts with "…" when it was too long. Best effort.
        path: String,
        /// The object checked (for a create: the parent directory), as in [`FileKey`].
        dev: u32,
        ino: u64,
        /// The claim that denied, as given to `set_claim_denies`. 0: the kernel's walk up
        /// from the object could not finish (deeper than its bound) and denied.
        claim_id: u64,
        /// The cgroup of the agent that holds the claim (0 with claim id 0).
        holder_cgroup: u64,
    },
    /// An agent's connect to an API endpoint was refused (EPERM): its call budget is spent.
    /// One per refused connect.
    ApiCallRefused {
        cgroup_id: u64,
        /// The process (tgid) that called connect().
        pid: u32,
        uid: u32,
        comm: String,
        addr: IpAddr,
        port: u16,
        /// Calls made (= the limit, unless it was lowered below them).
        calls: u64,
        limit: u64,
    },
    /// The kernel could not reserve ring-buffer space for this many events.
    Lost { count: u64 },
}

/// One agent's grants on one inode (and, for a directory, its subtree), per op: index i
/// is op bit `1 << i` (read, write, exec, create, delete). 0 = not granted by this entry,
/// `u64::MAX` = never expires, else granted while CLOCK_BOOTTIME ([`crate::core::boot_time_ns`], the
/// clock of `bpf_ktime_get_boot_ns`) is below it: expiry needs no daemon action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileGrantEntry {
    /// Index 5: `rush_ebpf::FILE_OP_SAVE`, set on the directory of a file the agent may write.
    pub expires_ns: [u64; rush_ebpf::FILE_OPS_LEN],
    /// The mount id (statx STATX_MNT_ID) the grant holds in; 0 = any mount.
    pub mnt_id: u32,
}

/// The kernel grant map's entries, by agent cgroup id.
pub type GrantsByAgent = std::collections::HashMap<u64, Vec<(FileKey, FileGrantEntry)>>;

/// A path claim's write-deny for one agent on one inode (and its subtree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimDeny {
    pub claim_id: u64,
    pub holder_cgroup: u64,
}

/// How the file programs treat one agent (`struct rush_agent.flags`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentFlags {
    /// File hooks deny whatever no grant covers.
    pub files_confined: bool,
    /// What a directory's grant gives to a regular file with more than one link.
    pub hardlinks: rush_proto::Hardlinks,
}

impl AgentFlags {
    /// The `RUSH_AGENT_*` bits. A hard-link mode means nothing without confinement.
    /// `RUSH_AGENT_CLAIM_DENIED` is never among them: it follows the agent's claim denies
    /// ([`KernelPolicy::set_claim_denies`]).
    pub fn bits(self) -> u32 {
        if !self.files_confined {
            return 0;
        }
        rush_ebpf::AGENT_FILES_CONFINED
            | match self.hardlinks {
                rush_proto::Hardlinks::Follow => 0,
                rush_proto::Hardlinks::RefuseWrite => rush_ebpf::AGENT_HARDLINKS_REFUSE_WRITE,
                rush_proto::Hardlinks::Refuse => rush_ebpf::AGENT_HARDLINKS_REFUSE,
            }
    }
}

/// What the daemon asks of the kernel side. Implemented by [`BpfHandle`] and, for unit
/// tests, by `FakeKernel`.
pub trait KernelPolicy: Send + Sync + 'static {
    /// Must complete before any process enters the cgroup. The entry's
    /// `RUSH_AGENT_CLAIM_DENIED` bit is set only if claim denies were set for the cgroup
    /// before (a fresh agent has none: off).
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy, flags: AgentFlags) -> Result<(), BpfError>;
    /// Also deletes the agent's file grants, claim denies and allow-list entries.
    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError>;
    /// Sets (Some) or deletes (None) the agent's grant entry for one inode.
    fn set_file_grant(
        &self,
        cgroup_id: u64,
        key: FileKey,
        grant: Option<FileGrantEntry>,
    ) -> Result<(), BpfError>;
    /// Every grant entry the kernel map holds now, by agent cgroup id, in one pass over the
    /// map (to check them against the store: `rush doctor`).
    fn file_grants(&self) -> Result<GrantsByAgent, BpfError>;
    /// Kernel-enforced byte and API-call budgets of one agent; None = unlimited. Called after
    /// add_agent and before the agent's first process runs; called again to raise a budget
    /// (resume), which clears the breach flags so the next breach is reported again.
    fn set_net_budget(&self, cgroup_id: u64, budget: NetBudget) -> Result<(), BpfError>;
    /// What the agent has used; None = no entry (not an agent of this daemon).
    fn net_usage(&self, cgroup_id: u64) -> Result<Option<NetUsage>, BpfError>;
    /// Sends the agent's DNS (any address, port 53) to its resolver in the daemon:
    /// 127.0.0.1:`port4` and [::1]:`port6` (0: none); None stops redirecting.
    fn set_dns_resolver(&self, cgroup_id: u64, ports: Option<(u16, u16)>) -> Result<(), BpfError>;
    /// Allows the agent `ip` on `port` (0 = any) until `until_boot_ns` (CLOCK_BOOTTIME):
    /// an address a DNS answer gave for a name on its list. A later answer extends it,
    /// never shortens it. Expired entries are swept; remove_agent deletes the rest.
    fn learn_address(
        &self,
        cgroup_id: u64,
        ip: IpAddr,
        port: u16,
        until_boot_ns: u64,
    ) -> Result<(), BpfError>;
    /// The API endpoints whose connects count as API calls (global; replaces the set).
    /// Port 0 = any port of that address. One connect() is one call: requests sent over a
    /// kept-alive connection are not seen, so this bounds connections, not requests.
    fn set_api_endpoints(&self, endpoints: &[(IpAddr, u16)]) -> Result<(), BpfError>;
    /// Replaces the whole set of claim denies of agent `cgroup_id` with `denies` (empty: none),
    /// setting or clearing its RUSH_AGENT_CLAIM_DENIED flag to match. New entries are in place
    /// (flag set) before old ones go, so no write slips through a change.
    ///
    /// Works whether or not the file (LSM) programs loaded: the map exists either way, but
    /// without them nothing enforces it. Before `add_agent` (no agent entry yet) the
    /// entries are written and `add_agent` sets the flag.
    fn set_claim_denies(&self, cgroup_id: u64, denies: &[(FileKey, ClaimDeny)]) -> Result<(), BpfError>;
}

/// A request to the owner thread, with the channel its answer goes back on.
enum Command {
    AddAgent {
        cgroup_id: u64,
        net: KernelNetPolicy,
        flags: AgentFlags,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    RemoveAgent {
        cgroup_id: u64,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    SetFileGrant {
        cgroup_id: u64,
        key: FileKey,
        grant: Option<FileGrantEntry>,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    AgentIds {
        reply: mpsc::SyncSender<Result<Vec<u64>, BpfError>>,
    },
    FileGrants {
        reply: mpsc::SyncSender<Result<GrantsByAgent, BpfError>>,
    },
    SetNetBudget {
        cgroup_id: u64,
        budget: NetBudget,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    NetUsage {
        cgroup_id: u64,
        reply: mpsc::SyncSender<Result<Option<NetUsage>, BpfError>>,
    },
    SetApiEndpoints {
        endpoints: Vec<(IpAddr, u16)>,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    SetClaimDenies {
        cgroup_id: u64,
        denies: Vec<(FileKey, ClaimDeny)>,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    SetDnsResolver {
        cgroup_id: u64,
        ports: Option<(u16, u16)>,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
    LearnAddress {
        cgroup_id: u64,
        ip: IpAddr,
        port: u16,
        until_boot_ns: u64,
        reply: mpsc::SyncSender<Result<(), BpfError>>,
    },
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

    /// Cgroup ids that have an entry in the kernel's agent map (or left-over allow entries,
    /// file grants or claim denies), including ones a previous daemon left in the pinned maps: the
    /// daemon removes those it no longer knows.
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
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy, flags: AgentFlags) -> Result<(), BpfError> {
        self.request(|reply| Command::AddAgent { cgroup_id, net: net.clone(), flags, reply })
    }

    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError> {
        self.request(|reply| Command::RemoveAgent { cgroup_id, reply })
    }

    fn set_file_grant(
        &self,
        cgroup_id: u64,
        key: FileKey,
        grant: Option<FileGrantEntry>,
    ) -> Result<(), BpfError> {
        self.request(|reply| Command::SetFileGrant { cgroup_id, key, grant, reply })
    }

    fn file_grants(&self) -> Result<GrantsByAgent, BpfError> {
        self.request(|reply| Command::FileGrants { reply })
    }

    fn set_net_budget(&self, cgroup_id: u64, budget: NetBudget) -> Result<(), BpfError> {
        self.request(|reply| Command::SetNetBudget { cgroup_id, budget, reply })
    }

    fn net_usage(&self, cgroup_id: u64) -> Result<Option<NetUsage>, BpfError> {
        self.request(|reply| Command::NetUsage { cgroup_id, reply })
    }

    fn set_dns_resolver(&self, cgroup_id: u64, ports: Option<(u16, u16)>) -> Result<(), BpfError> {
        self.request(|reply| Command::SetDnsResolver { cgroup_id, ports, reply })
    }

    fn learn_address(
        &self,
        cgroup_id: u64,
        ip: IpAddr,
        port: u16,
        until_boot_ns: u64,
    ) -> Result<(), BpfError> {
        self.request(|reply| Command::LearnAddress { cgroup_id, ip, port, until_boot_ns, reply })
    }

    fn set_api_endpoints(&self, endpoints: &[(IpAddr, u16)]) -> Result<(), BpfError> {
        self.request(|reply| Command::SetApiEndpoints { endpoints: endpoints.to_vec(), reply })
    }

    fn set_claim_denies(&self, cgroup_id: u64, denies: &[(FileKey, ClaimDeny)]) -> Result<(), BpfError> {
        self.request(|reply| Command::SetClaimDenies { cgroup_id, denies: denies.to_vec(), reply })
    }
}

/// Records calls; for unit tests of the daemon's logic.
#[cfg(test)]
#[derive(Default)]
pub struct FakeKernel {
    pub agents: std::sync::Mutex<std::collections::HashMap<u64, KernelNetPolicy>>,
    /// Agents added with `files_confined`.
    pub files_confined: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// The flags each agent was added with.
    pub flags: std::sync::Mutex<std::collections::HashMap<u64, AgentFlags>>,
    /// (agent cgroup id, inode) → grant, as the kernel map would hold them.
    pub file_grants: std::sync::Mutex<std::collections::HashMap<(u64, FileKey), FileGrantEntry>>,
    /// Budgets set per agent (the last one).
    pub budgets: std::sync::Mutex<std::collections::HashMap<u64, NetBudget>>,
    /// What `net_usage` answers: an all-zero entry from `add_agent` on (as the kernel
    /// counts every agent), which tests may change.
    pub usage: std::sync::Mutex<std::collections::HashMap<u64, NetUsage>>,
    /// The last `set_api_endpoints`.
    pub api_endpoints: std::sync::Mutex<Vec<(IpAddr, u16)>>,
    /// Agents' resolver ports.
    pub dns_resolvers: std::sync::Mutex<std::collections::HashMap<u64, (u16, u16)>>,
    /// (agent, address, port) → until, as `learn_address` set them.
    pub learned: std::sync::Mutex<std::collections::HashMap<(u64, IpAddr, u16), u64>>,
    /// Each agent's claim denies, as the last `set_claim_denies` gave them (none: no key).
    pub claim_denies: std::sync::Mutex<std::collections::HashMap<u64, Vec<(FileKey, ClaimDeny)>>>,
}

#[cfg(test)]
impl KernelPolicy for FakeKernel {
    fn add_agent(&self, cgroup_id: u64, net: &KernelNetPolicy, flags: AgentFlags) -> Result<(), BpfError> {
        self.agents.lock().unwrap().insert(cgroup_id, net.clone());
        self.usage.lock().unwrap().entry(cgroup_id).or_default();
        self.flags.lock().unwrap().insert(cgroup_id, flags);
        let mut confined = self.files_confined.lock().unwrap();
        if flags.files_confined {
            confined.insert(cgroup_id);
        } else {
            confined.remove(&cgroup_id);
        }
        Ok(())
    }

    fn remove_agent(&self, cgroup_id: u64) -> Result<(), BpfError> {
        self.agents.lock().unwrap().remove(&cgroup_id);
        self.files_confined.lock().unwrap().remove(&cgroup_id);
        self.flags.lock().unwrap().remove(&cgroup_id);
        self.file_grants.lock().unwrap().retain(|(c, _), _| *c != cgroup_id);
        self.budgets.lock().unwrap().remove(&cgroup_id);
        self.usage.lock().unwrap().remove(&cgroup_id);
        self.dns_resolvers.lock().unwrap().remove(&cgroup_id);
        self.learned.lock().unwrap().retain(|(c, _, _), _| *c != cgroup_id);
        self.claim_denies.lock().unwrap().remove(&cgroup_id);
        Ok(())
    }

    fn set_file_grant(
        &self,
        cgroup_id: u64,
        key: FileKey,
        grant: Option<FileGrantEntry>,
    ) -> Result<(), BpfError> {
        let mut grants = self.file_grants.lock().unwrap();
        match grant {
            Some(g) => grants.insert((cgroup_id, key), g),
            None => grants.remove(&(cgroup_id, key)),
        };
        Ok(())
    }

    fn file_grants(&self) -> Result<GrantsByAgent, BpfError> {
        let mut by_agent: GrantsByAgent = Default::default();
        for ((cgroup_id, key), grant) in self.file_grants.lock().unwrap().iter() {
            by_agent.entry(*cgroup_id).or_default().push((*key, *grant));
        }
        Ok(by_agent)
    }

    fn set_net_budget(&self, cgroup_id: u64, budget: NetBudget) -> Result<(), BpfError> {
        self.budgets.lock().unwrap().insert(cgroup_id, budget);
        self.usage.lock().unwrap().entry(cgroup_id).or_default();
        Ok(())
    }

    fn net_usage(&self, cgroup_id: u64) -> Result<Option<NetUsage>, BpfError> {
        Ok(self.usage.lock().unwrap().get(&cgroup_id).copied())
    }

    fn set_api_endpoints(&self, endpoints: &[(IpAddr, u16)]) -> Result<(), BpfError> {
        *self.api_endpoints.lock().unwrap() = endpoints.to_vec();
        Ok(())
    }

    fn set_dns_resolver(&self, cgroup_id: u64, ports: Option<(u16, u16)>) -> Result<(), BpfError> {
        let mut resolvers = self.dns_resolvers.lock().unwrap();
        match ports {
            Some(p) => resolvers.insert(cgroup_id, p),
            None => resolvers.remove(&cgroup_id),
        };
        Ok(())
    }

    fn learn_address(
        &self,
        cgroup_id: u64,
        ip: IpAddr,
        port: u16,
        until_boot_ns: u64,
    ) -> Result<(), BpfError> {
        let mut learned = self.learned.lock().unwrap();
        let until = learned.entry((cgroup_id, ip, port)).or_default();
        *until = (*until).max(until_boot_ns);
        Ok(())
    }

    fn set_claim_denies(&self, cgroup_id: u64, denies: &[(FileKey, ClaimDeny)]) -> Result<(), BpfError> {
        let mut all = self.claim_denies.lock().unwrap();
        if denies.is_empty() {
            all.remove(&cgroup_id);
        } else {
            all.insert(cgroup_id, denies.to_vec());
        }
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
        rush_ebpf::NET_PROGRAMS.iter().map(|s| status(s.hook, true, None)).collect()
    }

    fn lsm_all(attached: bool, error: Option<&str>) -> Vec<ProgramStatus> {
        rush_ebpf::LSM_PROGRAMS.iter().map(|s| status(s.hook, attached, error)).collect()
    }

    #[test]
    fn report_net_and_lsm() {
        let mut programs = net_all();
        programs.extend(lsm_all(false, Some("load: EPERM")));
        let r = AttachReport { programs, btrfs_keyed: true };
        assert!(r.net_enforced());
        assert!(!r.lsm_attached());
        assert_eq!(r.lsm_error().as_deref(), Some("load: EPERM"));

        let mut programs = net_all();
        programs.remove(2);
        programs.extend(lsm_all(true, None));
        let r = AttachReport { programs, btrfs_keyed: true };
        assert!(!r.net_enforced());
        assert!(r.lsm_attached());
        assert_eq!(r.lsm_error(), None);

        let r = AttachReport { programs: net_all(), btrfs_keyed: true };
        assert!(!r.lsm_attached(), "no LSM program is not 'every LSM program attached'");
        assert!(r.lsm_error().is_some());

        // One program short (file_open alone used to count as attached).
        let mut programs = net_all();
        programs.push(status("lsm/file_open", true, None));
        let r = AttachReport { programs, btrfs_keyed: true };
        assert!(!r.lsm_attached());
        assert!(r.lsm_error().unwrap().contains("rush_file_permission"), "{:?}", r.lsm_error());

        // One failed attach among the twelve.
        let mut programs = net_all();
        programs.extend(lsm_all(true, None));
        let last = programs.last_mut().unwrap();
        last.attached = false;
        last.error = Some("attach: ENOENT".into());
        let r = AttachReport { programs, btrfs_keyed: true };
        assert!(!r.lsm_attached());
        assert_eq!(r.lsm_error().as_deref(), Some("attach: ENOENT"));
    }

    #[test]
    fn fake_kernel_records_grants() {
        let k = FakeKernel::default();
        let key = FileKey { dev: 7, ino: 42 };
        let g = FileGrantEntry { expires_ns: [u64::MAX, 0, 0, 0, 0, 0], mnt_id: 0 };
        k.add_agent(1, &KernelNetPolicy::Deny, AgentFlags { files_confined: true, ..Default::default() })
            .unwrap();
        k.set_file_grant(1, key, Some(g)).unwrap();
        k.set_file_grant(2, key, Some(g)).unwrap();
        assert!(k.files_confined.lock().unwrap().contains(&1));
        assert_eq!(k.file_grants.lock().unwrap().get(&(1, key)), Some(&g));
        k.set_file_grant(1, key, None).unwrap();
        assert!(!k.file_grants.lock().unwrap().contains_key(&(1, key)));
        k.set_file_grant(1, key, Some(g)).unwrap();
        k.remove_agent(1).unwrap();
        assert!(k.file_grants.lock().unwrap().keys().all(|(c, _)| *c == 2));
        assert!(!k.files_confined.lock().unwrap().contains(&1));
    }

    #[test]
    fn fake_kernel_records_claim_denies() {
        let k = FakeKernel::default();
        let deny = ClaimDeny { claim_id: 3, holder_cgroup: 9 };
        let denies = [(FileKey { dev: 7, ino: 42 }, deny), (FileKey { dev: 7, ino: 43 }, deny)];
        k.add_agent(1, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
        k.set_claim_denies(1, &denies).unwrap();
        k.set_claim_denies(2, &denies[..1]).unwrap();
        assert_eq!(k.claim_denies.lock().unwrap().get(&1), Some(&denies.to_vec()));
        k.set_claim_denies(1, &denies[1..]).unwrap();
        assert_eq!(k.claim_denies.lock().unwrap().get(&1), Some(&denies[1..].to_vec()), "replaced");
        k.set_claim_denies(1, &[]).unwrap();
        assert!(!k.claim_denies.lock().unwrap().contains_key(&1));
        k.set_claim_denies(1, &denies).unwrap();
        k.remove_agent(1).unwrap();
        assert!(!k.claim_denies.lock().unwrap().contains_key(&1));
        assert!(k.claim_denies.lock().unwrap().contains_key(&2));
    }

    #[test]
    fn agent_flags_never_claim_denied() {
        for hardlinks in
            [rush_proto::Hardlinks::Follow, rush_proto::Hardlinks::RefuseWrite, rush_proto::Hardlinks::Refuse]
        {
            for files_confined in [false, true] {
                let bits = AgentFlags { files_confined, hardlinks }.bits();
                assert_eq!(bits & rush_ebpf::AGENT_CLAIM_DENIED, 0);
            }
        }
    }

    #[test]
    fn fake_kernel_records_budgets() {
        let k = FakeKernel::default();
        assert_eq!(k.net_usage(1).unwrap(), None);
        k.add_agent(1, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
        assert_eq!(k.net_usage(1).unwrap(), Some(NetUsage::default()), "every agent is counted");
        let budget = NetBudget { bytes: Some(1 << 20), api_calls: None };
        k.set_net_budget(1, budget).unwrap();
        assert_eq!(k.budgets.lock().unwrap().get(&1), Some(&budget));
        let api = ["10.0.0.1".parse().unwrap()].map(|ip| (ip, 443));
        k.set_api_endpoints(&api).unwrap();
        assert_eq!(*k.api_endpoints.lock().unwrap(), api.to_vec());
        k.remove_agent(1).unwrap();
        assert_eq!(k.net_usage(1).unwrap(), None);
        assert!(k.budgets.lock().unwrap().is_empty());
    }

    #[test]
    fn handle_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<BpfHandle>();
        fn error_is_send<T: Send + Sync + 'static>() {}
        error_is_send::<BpfError>();
    }
}

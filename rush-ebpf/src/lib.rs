//! Rush's kernel programs and the types they share with userspace.
//!
//! The C sources live in `src/bpf/` (CO-RE, one file per hook family, shared maps and
//! structs in `rush.h`); `build.rs` compiles each into an object and a libbpf-rs skeleton:
//!
//! - [`net`]: `cgroup/connect4|6`, `cgroup/sendmsg4|6` — network confinement and API
//!   call budgets; `cgroup_skb/ingress|egress` — byte budgets. Also `cgroup/sysctl`
//!   (agents write no sysctl), optional: retried without it.
//! - [`file`]: `lsm/file_open`, `lsm/file_permission`, `lsm/path_*`, `lsm/mmap_file`,
//!   `lsm/file_mprotect` — file capability tokens; loads only where the kernel accepts BPF
//!   LSM programs; kept apart so its failure cannot stop the network programs.
//! - [`guard`]: `lsm/capable`, `lsm/bpf`, `lsm/ptrace_*`, `lsm/task_kill`, mounts, user
//!   namespaces, module loading, cgroupfs writes — self-protection, for every agent.
//!
//! The objects define the same maps with `LIBBPF_PIN_BY_NAME`; with their pin paths set to
//! one directory, whichever loads second reuses the first one's maps.
//!
//! The `#[repr(C)]` mirrors below are checked against the objects' BTF by the tests.

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, unused)]
pub mod net {
    include!(concat!(env!("OUT_DIR"), "/net.skel.rs"));
}

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, unused)]
pub mod file {
    include!(concat!(env!("OUT_DIR"), "/file.skel.rs"));
}

#[allow(clippy::all, non_camel_case_types, non_snake_case, non_upper_case_globals, unused)]
pub mod guard {
    include!(concat!(env!("OUT_DIR"), "/guard.skel.rs"));
}

/// The compiled objects, e.g. for `bpftool` or a BTF check.
pub const NET_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/net.bpf.o"));
pub const FILE_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file.bpf.o"));
pub const GUARD_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guard.bpf.o"));

// Values of `RushAgent::net_mode`.
pub const NET_MODE_DENY: u32 = 0;
pub const NET_MODE_ALLOW: u32 = 1;
pub const NET_MODE_LIST: u32 = 2;

// Values of `RushEventHdr::hook` of a `RushNetEvent`.
pub const HOOK_CONNECT4: u32 = 1;
pub const HOOK_CONNECT6: u32 = 2;
pub const HOOK_SENDMSG4: u32 = 3;
pub const HOOK_SENDMSG6: u32 = 4;

// Values of `RushEventHdr::kind` (the first u32 of every record).
pub const EVENT_NET_DENY: u32 = 1;
pub const EVENT_FILE_DENY: u32 = 2;
pub const EVENT_GUARD_DENY: u32 = 3;
pub const EVENT_GRANT_MOVED: u32 = 4;
pub const EVENT_NET_BUDGET: u32 = 5;
pub const EVENT_API_REFUSED: u32 = 6;

/// `RushNetUsage::flags`: the byte budget was reached (packets are dropped, the breach was
/// reported); cleared by the daemon when it raises the budget.
pub const USAGE_BYTES_BREACHED: u64 = 1;

/// Bits of `RushNetCidrKey` before the address (family, port, cgroup id):
/// `prefixlen` = this + the address prefix length.
pub const NET_CIDR_FIXED_BITS: u32 = 96;

/// `RushAgent::flags`: file hooks deny whatever no grant in `rush_file_grants` covers.
pub const AGENT_FILES_CONFINED: u32 = 1;
/// `RushAgent::flags`: a regular file with more than one link needs write from its own
/// grant entry (a directory's grant does not carry write to it).
pub const AGENT_HARDLINKS_REFUSE_WRITE: u32 = 1 << 1;
/// `RushAgent::flags`: the same for read, write and exec.
pub const AGENT_HARDLINKS_REFUSE: u32 = 1 << 2;

// File operations: bit `1 << i` is `RushFileGrant::expires_ns[i]` (= rush_proto::Ops bits).
pub const FILE_OP_READ: u32 = 1 << 0;
pub const FILE_OP_WRITE: u32 = 1 << 1;
pub const FILE_OP_EXEC: u32 = 1 << 2;
pub const FILE_OP_CREATE: u32 = 1 << 3;
pub const FILE_OP_DELETE: u32 = 1 << 4;
/// Internal, never a token's: on the directory of a file the agent may write, lets it save
/// that file the way editors do (create a file beside it, rename that over it).
pub const FILE_OP_SAVE: u32 = 1 << 5;
pub const FILE_OPS_LEN: usize = 6;

// Values of `RushEventHdr::hook` of a `RushFileEvent`.
pub const FHOOK_FILE_OPEN: u32 = 1;
pub const FHOOK_FILE_PERMISSION: u32 = 2;
pub const FHOOK_PATH_MKNOD: u32 = 3;
pub const FHOOK_PATH_MKDIR: u32 = 4;
pub const FHOOK_PATH_SYMLINK: u32 = 5;
pub const FHOOK_PATH_UNLINK: u32 = 6;
pub const FHOOK_PATH_RMDIR: u32 = 7;
pub const FHOOK_PATH_RENAME: u32 = 8;
pub const FHOOK_PATH_LINK: u32 = 9;
pub const FHOOK_PATH_TRUNCATE: u32 = 10;
pub const FHOOK_PATH_CHMOD: u32 = 11;
pub const FHOOK_PATH_CHOWN: u32 = 12;
pub const FHOOK_MMAP_FILE: u32 = 13;
pub const FHOOK_FILE_MPROTECT: u32 = 14;
pub const FHOOK_PATH_NOTIFY: u32 = 15;

/// The hook name (the `lsm/` section without its prefix) of a `RushFileEvent`'s hook.
pub fn file_hook_name(hook: u32) -> Option<&'static str> {
    Some(match hook {
        FHOOK_FILE_OPEN => "file_open",
        FHOOK_FILE_PERMISSION => "file_permission",
        FHOOK_PATH_MKNOD => "path_mknod",
        FHOOK_PATH_MKDIR => "path_mkdir",
        FHOOK_PATH_SYMLINK => "path_symlink",
        FHOOK_PATH_UNLINK => "path_unlink",
        FHOOK_PATH_RMDIR => "path_rmdir",
        FHOOK_PATH_RENAME => "path_rename",
        FHOOK_PATH_LINK => "path_link",
        FHOOK_PATH_TRUNCATE => "path_truncate",
        FHOOK_PATH_CHMOD => "path_chmod",
        FHOOK_PATH_CHOWN => "path_chown",
        FHOOK_MMAP_FILE => "mmap_file",
        FHOOK_FILE_MPROTECT => "file_mprotect",
        FHOOK_PATH_NOTIFY => "path_notify",
        _ => return None,
    })
}

// Values of `RushEventHdr::hook` of a `RushGuardEvent`.
pub const GHOOK_CAPABLE: u32 = 1;
pub const GHOOK_BPF: u32 = 2;
pub const GHOOK_PTRACE: u32 = 3;
pub const GHOOK_TRACEME: u32 = 4;
pub const GHOOK_KILL: u32 = 5;
pub const GHOOK_MOUNT: u32 = 6;
pub const GHOOK_UMOUNT: u32 = 7;
pub const GHOOK_PIVOTROOT: u32 = 8;
pub const GHOOK_MOVE_MOUNT: u32 = 9;
pub const GHOOK_USERNS: u32 = 10;
pub const GHOOK_KERNEL_READ_FILE: u32 = 11;
pub const GHOOK_KERNEL_LOAD_DATA: u32 = 12;
pub const GHOOK_CGROUPFS_WRITE: u32 = 13;
pub const GHOOK_PROTECTED_DIR: u32 = 14;
pub const GHOOK_FCNTL: u32 = 15;
pub const GHOOK_SYSCTL: u32 = 16;
pub const GHOOK_IOCTL: u32 = 17;
pub const GHOOK_PROC_WRITE: u32 = 18;

/// What a `RushGuardEvent`'s hook stopped, for the audit trail.
pub fn guard_hook_name(hook: u32) -> Option<&'static str> {
    Some(match hook {
        GHOOK_CAPABLE => "capable",
        GHOOK_BPF => "bpf",
        GHOOK_PTRACE => "ptrace_access_check",
        GHOOK_TRACEME => "ptrace_traceme",
        GHOOK_KILL => "task_kill",
        GHOOK_MOUNT => "sb_mount",
        GHOOK_UMOUNT => "sb_umount",
        GHOOK_PIVOTROOT => "sb_pivotroot",
        GHOOK_MOVE_MOUNT => "move_mount",
        GHOOK_USERNS => "userns_create",
        GHOOK_KERNEL_READ_FILE => "kernel_read_file",
        GHOOK_KERNEL_LOAD_DATA => "kernel_load_data",
        GHOOK_CGROUPFS_WRITE => "inode_permission:kernel-fs-write",
        GHOOK_PROTECTED_DIR => "inode_permission:protected-dir",
        GHOOK_FCNTL => "file_fcntl",
        GHOOK_SYSCTL => "cgroup/sysctl",
        GHOOK_IOCTL => "file_ioctl",
        GHOOK_PROC_WRITE => "file_open:procfs-write",
        _ => return None,
    })
}

/// Slots of the guard object's protected-directory constants.
pub const PROTECTED_MAX: usize = 4;

/// Bytes of `RushFileEvent::path`, NUL included.
pub const FILE_PATH_LEN: usize = 256;

// `RushNetKey::family` / `RushNetEvent::family` (Linux AF_*).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Index of the lost-events counter in the `rush_stats` array.
pub const STAT_EVENTS_LOST: u32 = 0;

// Map names; each map is pinned under the daemon's pin directory by this name.
pub const MAP_AGENTS: &str = "rush_agents";
pub const MAP_NET_CIDR: &str = "rush_net_cidr";
pub const MAP_NET_USAGE: &str = "rush_net_usage";
pub const MAP_API_ADDRS: &str = "rush_api_addrs";
pub const MAP_FILE_GRANTS: &str = "rush_file_grants";
pub const MAP_EVENTS: &str = "rush_events";
pub const MAP_STATS: &str = "rush_stats";
/// In the order the objects define them.
pub const PINNED_MAPS: [&str; 7] =
    [MAP_AGENTS, MAP_NET_CIDR, MAP_NET_USAGE, MAP_API_ADDRS, MAP_FILE_GRANTS, MAP_EVENTS, MAP_STATS];
/// The allow-list map of older daemons (a HASH of [`RushNetKey`]), replaced by
/// [`MAP_NET_CIDR`]: the loader migrates a pin of it and removes it.
pub const MAP_NET_ALLOW_RETIRED: &str = "rush_net_allow";

/// Name of the `.rodata` variable holding the agent cgroup depth.
pub const RODATA_AGENT_CGROUP_LEVEL: &str = "agent_cgroup_level";

/// A program: its name in the object, its section (= hook), and the bpffs name its link
/// is pinned under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub hook: &'static str,
    pub link_pin: &'static str,
}

pub const NET_PROGRAMS: [ProgramSpec; 6] = [
    ProgramSpec { name: "rush_connect4", hook: "cgroup/connect4", link_pin: "rush_link_connect4" },
    ProgramSpec { name: "rush_connect6", hook: "cgroup/connect6", link_pin: "rush_link_connect6" },
    ProgramSpec { name: "rush_sendmsg4", hook: "cgroup/sendmsg4", link_pin: "rush_link_sendmsg4" },
    ProgramSpec { name: "rush_sendmsg6", hook: "cgroup/sendmsg6", link_pin: "rush_link_sendmsg6" },
    ProgramSpec { name: "rush_skb_ingress", hook: "cgroup_skb/ingress", link_pin: "rush_link_skb_ingress" },
    ProgramSpec { name: "rush_skb_egress", hook: "cgroup_skb/egress", link_pin: "rush_link_skb_egress" },
];

/// The net object's optional program (the loader retries the object without it).
pub const SYSCTL_PROGRAM: ProgramSpec =
    ProgramSpec { name: "rush_sysctl", hook: "cgroup/sysctl", link_pin: "rush_link_sysctl" };

/// Every program of the file object; `AttachReport::lsm_attached` wants all of them.
pub const LSM_PROGRAMS: [ProgramSpec; 15] = [
    lsm("rush_file_open", "lsm/file_open", "rush_link_file_open"),
    lsm("rush_file_permission", "lsm/file_permission", "rush_link_file_permission"),
    lsm("rush_path_mknod", "lsm/path_mknod", "rush_link_path_mknod"),
    lsm("rush_path_mkdir", "lsm/path_mkdir", "rush_link_path_mkdir"),
    lsm("rush_path_symlink", "lsm/path_symlink", "rush_link_path_symlink"),
    lsm("rush_path_unlink", "lsm/path_unlink", "rush_link_path_unlink"),
    lsm("rush_path_rmdir", "lsm/path_rmdir", "rush_link_path_rmdir"),
    lsm("rush_path_rename", "lsm/path_rename", "rush_link_path_rename"),
    lsm("rush_path_link", "lsm/path_link", "rush_link_path_link"),
    lsm("rush_path_truncate", "lsm/path_truncate", "rush_link_path_truncate"),
    lsm("rush_path_chmod", "lsm/path_chmod", "rush_link_path_chmod"),
    lsm("rush_path_chown", "lsm/path_chown", "rush_link_path_chown"),
    lsm("rush_mmap_file", "lsm/mmap_file", "rush_link_mmap_file"),
    lsm("rush_file_mprotect", "lsm/file_mprotect", "rush_link_file_mprotect"),
    lsm("rush_path_notify", "lsm/path_notify", "rush_link_path_notify"),
];

/// Every program of the guard object (self-protection).
pub const GUARD_PROGRAMS: [ProgramSpec; 16] = [
    lsm("rush_capable", "lsm/capable", "rush_link_capable"),
    lsm("rush_bpf", "lsm/bpf", "rush_link_bpf"),
    lsm("rush_ptrace_access_check", "lsm/ptrace_access_check", "rush_link_ptrace_access_check"),
    lsm("rush_ptrace_traceme", "lsm/ptrace_traceme", "rush_link_ptrace_traceme"),
    lsm("rush_task_kill", "lsm/task_kill", "rush_link_task_kill"),
    lsm("rush_file_fcntl", "lsm/file_fcntl", "rush_link_file_fcntl"),
    lsm("rush_file_ioctl", "lsm/file_ioctl", "rush_link_file_ioctl"),
    lsm("rush_sb_mount", "lsm/sb_mount", "rush_link_sb_mount"),
    lsm("rush_sb_umount", "lsm/sb_umount", "rush_link_sb_umount"),
    lsm("rush_sb_pivotroot", "lsm/sb_pivotroot", "rush_link_sb_pivotroot"),
    lsm("rush_move_mount", "lsm/move_mount", "rush_link_move_mount"),
    lsm("rush_userns_create", "lsm/userns_create", "rush_link_userns_create"),
    lsm("rush_kernel_read_file", "lsm/kernel_read_file", "rush_link_kernel_read_file"),
    lsm("rush_kernel_load_data", "lsm/kernel_load_data", "rush_link_kernel_load_data"),
    lsm("rush_inode_permission", "lsm/inode_permission", "rush_link_inode_permission"),
    ProgramSpec {
        name: "rush_guard_file_open",
        hook: "lsm/file_open",
        link_pin: "rush_link_guard_file_open",
    },
];

const fn lsm(name: &'static str, hook: &'static str, link_pin: &'static str) -> ProgramSpec {
    ProgramSpec { name, hook, link_pin }
}

/// Value of `rush_agents` (key: the agent's cgroup id, u64). C: `struct rush_agent`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushAgent {
    pub net_mode: u32,
    pub flags: u32,
    pub reserved: u64,
}

/// Key of the retired `rush_net_allow` map of older daemons (value: u8, 1), read only to
/// migrate its entries into `rush_net_cidr`. No longer defined in C.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RushNetKey {
    pub cgroup_id: u64,
    pub family: u16,
    /// Host order; 0 = any port.
    pub port: u16,
    pub pad: u32,
    /// Network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

/// Key of the `rush_net_cidr` LPM trie (value: u8, 1). C: `struct rush_net_cidr_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RushNetCidrKey {
    /// [`NET_CIDR_FIXED_BITS`] + the address prefix length.
    pub prefixlen: u32,
    pub family: u16,
    /// Host order; 0 = any port.
    pub port: u16,
    pub cgroup_id: u64,
    /// Network order; IPv4 in the first 4 bytes, the rest zero; bits below the prefix zero.
    pub addr: [u8; 16],
}

/// Value of `rush_net_usage` (key: the agent's cgroup id). C: `struct rush_net_usage`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushNetUsage {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// 0 = unlimited.
    pub limit_bytes: u64,
    pub api_calls: u64,
    /// `u64::MAX` = unlimited.
    pub api_limit: u64,
    pub dropped_packets: u64,
    pub refused_calls: u64,
    /// `USAGE_*` bits.
    pub flags: u64,
}

/// Key of `rush_api_addrs` (value: u8, 1). C: `struct rush_api_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RushApiKey {
    pub family: u16,
    /// Host order; 0 = any port.
    pub port: u16,
    pub pad: u32,
    pub addr: [u8; 16],
}

/// The header every record of `rush_events` starts with: which struct follows (`kind`), the
/// hook that emitted it, the agent, and the task that caused it (zero where no task is
/// known: budget breaches, grant moves; a sysctl write has the uid only). C: `struct
/// rush_event_hdr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushEventHdr {
    /// `EVENT_*`.
    pub kind: u32,
    /// Per kind: `HOOK_*`, `FHOOK_*` or `GHOOK_*`; 0 where the kind has none.
    pub hook: u32,
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    pub uid: u32,
    pub pad: u32,
    pub comm: [u8; 16],
}

impl RushEventHdr {
    /// A header of `kind` from `hook`, for agent `cgroup_id`, with no task.
    pub fn new(kind: u32, hook: u32, cgroup_id: u64) -> RushEventHdr {
        RushEventHdr { kind, hook, cgroup_id, ..Default::default() }
    }

    /// The task's comm up to its first NUL.
    pub fn comm(&self) -> String {
        c_string(&self.comm)
    }
}

/// An agent reached its byte budget. C: `struct rush_budget_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushBudgetEvent {
    /// `EVENT_NET_BUDGET`, no hook, no task.
    pub hdr: RushEventHdr,
    pub used: u64,
    pub limit: u64,
}

/// An API connect refused over the call budget. C: `struct rush_api_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushApiEvent {
    /// `EVENT_API_REFUSED`, `HOOK_CONNECT4` or `HOOK_CONNECT6`.
    pub hdr: RushEventHdr,
    pub family: u16,
    /// Host order.
    pub port: u16,
    pub pad: u32,
    pub addr: [u8; 16],
    pub calls: u64,
    pub limit: u64,
}

/// A record of the `rush_events` ring buffer. C: `struct rush_net_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushNetEvent {
    /// `EVENT_NET_DENY`, `HOOK_*`.
    pub hdr: RushEventHdr,
    pub protocol: u32,
    pub family: u16,
    /// Host order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// Key of `rush_file_grants`. C: `struct rush_file_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RushFileKey {
    pub cgroup_id: u64,
    /// `inode->i_ino`
    pub ino: u64,
    /// `inode->i_sb->s_dev`: the kernel's dev_t, `MAJOR << 20 | MINOR`.
    pub dev: u32,
    pub pad: u32,
}

/// Value of `rush_file_grants`. C: `struct rush_file_grant`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushFileGrant {
    /// Per op (index i = bit `1 << i`): 0 = not granted by this entry, `u64::MAX` = no
    /// expiry, else granted while `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME) is below it.
    pub expires_ns: [u64; FILE_OPS_LEN],
    /// The mount (statx mount id) the grant holds in; 0 = any.
    pub mnt_id: u32,
    pub pad: u32,
}

/// A self-protection deny record of `rush_events`. C: `struct rush_guard_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushGuardEvent {
    /// `EVENT_GUARD_DENY`, `GHOOK_*` (pid, tgid and comm are 0 from the sysctl program).
    pub hdr: RushEventHdr,
    /// The process (tgid) acted on, for ptrace and kill; else 0.
    pub target: u32,
    pub pad: u32,
    /// Capability, bpf command, signal, fcntl argument, mount flags...
    pub arg: i64,
}

/// The kernel moved an agent's grant to a new inode (an editor-style save). C: `struct
/// rush_grant_moved_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RushGrantMovedEvent {
    /// `EVENT_GRANT_MOVED`, no hook, no task.
    pub hdr: RushEventHdr,
    pub from_ino: u64,
    pub to_ino: u64,
    pub from_dev: u32,
    pub to_dev: u32,
}

/// A file deny record of the `rush_events` ring buffer. C: `struct rush_file_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RushFileEvent {
    /// `EVENT_FILE_DENY`, `FHOOK_*`.
    pub hdr: RushEventHdr,
    /// The `FILE_OP_*` bit no grant covered.
    pub op: u32,
    pub dev: u32,
    /// The object whose grants were checked (for a create: the parent directory).
    pub ino: u64,
    /// NUL-terminated; starts with "…" when it was cut.
    pub path: [u8; FILE_PATH_LEN],
}

impl Default for RushFileEvent {
    fn default() -> Self {
        RushFileEvent { hdr: RushEventHdr::default(), op: 0, dev: 0, ino: 0, path: [0; FILE_PATH_LEN] }
    }
}

impl RushFileEvent {
    /// The path up to its first NUL (lossy UTF-8).
    pub fn path(&self) -> String {
        c_string(&self.path)
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Plain old data shared with the kernel: viewable as bytes and readable from bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and integer arrays with no
/// implicit padding (every byte belongs to a field), so every byte is initialized and
/// every bit pattern is a valid value.
pub unsafe trait Plain: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self: Plain` has no padding, so all size_of::<Self>() bytes are
        // initialized; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// Reads a value from the front of `bytes`; `None` if `bytes` is too short.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked; `read_unaligned` copes with any alignment, and
        // any bit pattern is a valid `Self: Plain`.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

// SAFETY: repr(C), integer fields only; no padding (asserted below).
unsafe impl Plain for RushAgent {}
// SAFETY: as above.
unsafe impl Plain for RushNetKey {}
// SAFETY: as above.
unsafe impl Plain for RushEventHdr {}
// SAFETY: as above (the header is itself Plain, with no padding).
unsafe impl Plain for RushNetEvent {}
// SAFETY: as above.
unsafe impl Plain for RushFileKey {}
// SAFETY: as above.
unsafe impl Plain for RushFileGrant {}
// SAFETY: as above.
unsafe impl Plain for RushFileEvent {}
// SAFETY: as above.
unsafe impl Plain for RushGuardEvent {}
// SAFETY: as above.
unsafe impl Plain for RushGrantMovedEvent {}
// SAFETY: as above.
unsafe impl Plain for RushNetCidrKey {}
// SAFETY: as above.
unsafe impl Plain for RushNetUsage {}
// SAFETY: as above.
unsafe impl Plain for RushApiKey {}
// SAFETY: as above.
unsafe impl Plain for RushBudgetEvent {}
// SAFETY: as above.
unsafe impl Plain for RushApiEvent {}

// No implicit padding: the fields add up to the whole struct.
const _: () = assert!(size_of::<RushAgent>() == 4 + 4 + 8);
const _: () = assert!(size_of::<RushNetKey>() == 8 + 2 + 2 + 4 + 16);
const _: () = assert!(size_of::<RushEventHdr>() == 4 + 4 + 8 + 4 * 4 + 16);
const HDR: usize = size_of::<RushEventHdr>();
const _: () = assert!(size_of::<RushNetEvent>() == HDR + 4 + 2 + 2 + 16);
const _: () = assert!(size_of::<RushFileKey>() == 8 + 8 + 4 + 4);
const _: () = assert!(size_of::<RushFileGrant>() == 8 * FILE_OPS_LEN + 4 + 4);
const _: () = assert!(size_of::<RushGuardEvent>() == HDR + 4 + 4 + 8);
const _: () = assert!(size_of::<RushGrantMovedEvent>() == HDR + 8 + 8 + 4 + 4);
const _: () = assert!(size_of::<RushNetCidrKey>() == 4 + 2 + 2 + 8 + 16);
// The fixed part of an LPM key is everything between `prefixlen` and the address.
const _: () = assert!((std::mem::offset_of!(RushNetCidrKey, addr) - 4) * 8 == NET_CIDR_FIXED_BITS as usize);
const _: () = assert!(size_of::<RushNetUsage>() == 8 * 8);
const _: () = assert!(size_of::<RushApiKey>() == 2 + 2 + 4 + 16);
const _: () = assert!(size_of::<RushBudgetEvent>() == HDR + 8 + 8);
const _: () = assert!(size_of::<RushApiEvent>() == HDR + 2 + 2 + 4 + 16 + 8 + 8);
const _: () = assert!(size_of::<RushFileEvent>() == HDR + 4 + 4 + 8 + FILE_PATH_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::btf::types::{Array, Int, MemberAttr, Struct};
    use libbpf_rs::btf::{Btf, BtfKind, BtfType, HasSize};

    /// (field name, byte offset, byte size) of every field of a Rust struct, in order.
    macro_rules! rust_fields {
        ($ty:ty { $($field:ident),* $(,)? }) => {{
            fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize { size_of::<F>() }
            vec![$((
                stringify!($field),
                std::mem::offset_of!($ty, $field),
                size_of_field(|s: &$ty| &s.$field),
            )),*]
        }};
    }

    fn btf_size(ty: BtfType<'_>) -> usize {
        let ty = ty.skip_mods_and_typedefs();
        match ty.kind() {
            BtfKind::Int => Int::try_from(ty).unwrap().size(),
            BtfKind::Struct => Struct::try_from(ty).unwrap().size(),
            BtfKind::Array => {
                let a = Array::try_from(ty).unwrap();
                a.capacity() * btf_size(a.contained_type())
            }
            k => panic!("unexpected member type kind {k:?}"),
        }
    }

    /// (field name, byte offset, byte size) of every member of the C struct `c_name`, and
    /// its size, from the object's BTF.
    fn c_layout(object: &[u8], c_name: &str) -> (Vec<(String, usize, usize)>, usize) {
        let btf = Btf::from_raw("rush", object).expect("parse object BTF").expect("object has BTF");
        let s: Struct<'_> =
            btf.type_by_name(c_name).unwrap_or_else(|| panic!("struct {c_name} not in the object's BTF"));
        let members = s
            .iter()
            .map(|m| {
                let MemberAttr::Normal { offset } = m.attr else {
                    panic!("{c_name}: bitfield member {:?}", m.name)
                };
                assert_eq!(offset % 8, 0);
                let ty = btf.type_by_id::<BtfType<'_>>(m.ty).unwrap();
                let name = m.name.expect("named member").to_string_lossy().into_owned();
                (name, offset as usize / 8, btf_size(ty))
            })
            .collect();
        (members, s.size())
    }

    /// Where the Rust struct differs from the C struct of the same layout: size, or any
    /// field's name, order, offset or size.
    fn layout_mismatch(
        object: &[u8],
        c_name: &str,
        rust_size: usize,
        rust: &[(&str, usize, usize)],
    ) -> Option<String> {
        let (c, c_size) = c_layout(object, c_name);
        let rust: Vec<(String, usize, usize)> = rust.iter().map(|&(n, o, s)| (n.to_string(), o, s)).collect();
        (c != rust || c_size != rust_size).then(|| {
            format!(
                "struct {c_name}: C size {c_size} (name, offset, size) {c:?}\n\
                 Rust size {rust_size} {rust:?}"
            )
        })
    }

    fn check_layout(object: &[u8], c_name: &str, rust_size: usize, rust: &[(&str, usize, usize)]) {
        if let Some(mismatch) = layout_mismatch(object, c_name, rust_size, rust) {
            panic!("{mismatch}");
        }
    }

    #[test]
    fn layouts_match_btf() {
        for object in [NET_OBJECT, FILE_OBJECT, GUARD_OBJECT] {
            check_layout(
                object,
                "rush_agent",
                size_of::<RushAgent>(),
                &rust_fields!(RushAgent { net_mode, flags, reserved }),
            );
            check_layout(
                object,
                "rush_net_cidr_key",
                size_of::<RushNetCidrKey>(),
                &rust_fields!(RushNetCidrKey { prefixlen, family, port, cgroup_id, addr }),
            );
            check_layout(
                object,
                "rush_net_usage",
                size_of::<RushNetUsage>(),
                &rust_fields!(RushNetUsage {
                    tx_bytes,
                    rx_bytes,
                    limit_bytes,
                    api_calls,
                    api_limit,
                    dropped_packets,
                    refused_calls,
                    flags
                }),
            );
            check_layout(
                object,
                "rush_api_key",
                size_of::<RushApiKey>(),
                &rust_fields!(RushApiKey { family, port, pad, addr }),
            );
            check_layout(
                object,
                "rush_event_hdr",
                size_of::<RushEventHdr>(),
                &rust_fields!(RushEventHdr { kind, hook, cgroup_id, pid, tgid, uid, pad, comm }),
            );
            check_layout(
                object,
                "rush_budget_event",
                size_of::<RushBudgetEvent>(),
                &rust_fields!(RushBudgetEvent { hdr, used, limit }),
            );
            check_layout(
                object,
                "rush_api_event",
                size_of::<RushApiEvent>(),
                &rust_fields!(RushApiEvent { hdr, family, port, pad, addr, calls, limit }),
            );
            check_layout(
                object,
                "rush_net_event",
                size_of::<RushNetEvent>(),
                &rust_fields!(RushNetEvent { hdr, protocol, family, port, addr }),
            );
            check_layout(
                object,
                "rush_file_key",
                size_of::<RushFileKey>(),
                &rust_fields!(RushFileKey { cgroup_id, ino, dev, pad }),
            );
            check_layout(
                object,
                "rush_file_grant",
                size_of::<RushFileGrant>(),
                &rust_fields!(RushFileGrant { expires_ns, mnt_id, pad }),
            );
            check_layout(
                object,
                "rush_guard_event",
                size_of::<RushGuardEvent>(),
                &rust_fields!(RushGuardEvent { hdr, target, pad, arg }),
            );
            check_layout(
                object,
                "rush_grant_moved_event",
                size_of::<RushGrantMovedEvent>(),
                &rust_fields!(RushGrantMovedEvent { hdr, from_ino, to_ino, from_dev, to_dev }),
            );
            check_layout(
                object,
                "rush_file_event",
                size_of::<RushFileEvent>(),
                &rust_fields!(RushFileEvent { hdr, op, dev, ino, path }),
            );
        }
    }

    #[test]
    fn layout_check_can_fail() {
        let wrong = rust_fields!(RushAgent { flags, net_mode, reserved });
        let mismatch = layout_mismatch(NET_OBJECT, "rush_agent", size_of::<RushAgent>(), &wrong);
        assert!(mismatch.is_some(), "swapped fields must not pass");
        let right = rust_fields!(RushAgent { net_mode, flags, reserved });
        let mismatch = layout_mismatch(NET_OBJECT, "rush_agent", 24, &right);
        assert!(mismatch.is_some(), "a wrong size must not pass");
    }

    /// The `#define RUSH_*` values in rush.h equal the Rust constants.
    #[test]
    fn constants_match_header() {
        let header = include_str!("bpf/rush.h");
        let define = |name: &str| -> u64 {
            header
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("#define") && w.next() == Some(name))
                        .then(|| w.next().unwrap().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("#define {name} not in rush.h"))
        };
        let expected = [
            ("RUSH_NET_MODE_DENY", NET_MODE_DENY.into()),
            ("RUSH_NET_MODE_ALLOW", NET_MODE_ALLOW.into()),
            ("RUSH_NET_MODE_LIST", NET_MODE_LIST.into()),
            ("RUSH_HOOK_CONNECT4", HOOK_CONNECT4.into()),
            ("RUSH_HOOK_CONNECT6", HOOK_CONNECT6.into()),
            ("RUSH_HOOK_SENDMSG4", HOOK_SENDMSG4.into()),
            ("RUSH_HOOK_SENDMSG6", HOOK_SENDMSG6.into()),
            ("RUSH_EVENT_NET_DENY", EVENT_NET_DENY.into()),
            ("RUSH_AF_INET", AF_INET.into()),
            ("RUSH_AF_INET6", AF_INET6.into()),
            ("RUSH_STAT_EVENTS_LOST", STAT_EVENTS_LOST.into()),
            ("RUSH_EVENT_FILE_DENY", EVENT_FILE_DENY.into()),
            ("RUSH_AGENT_FILES_CONFINED", AGENT_FILES_CONFINED.into()),
            ("RUSH_AGENT_HARDLINKS_REFUSE_WRITE", AGENT_HARDLINKS_REFUSE_WRITE.into()),
            ("RUSH_AGENT_HARDLINKS_REFUSE", AGENT_HARDLINKS_REFUSE.into()),
            ("RUSH_FHOOK_PATH_NOTIFY", FHOOK_PATH_NOTIFY.into()),
            ("RUSH_FILE_OP_READ", FILE_OP_READ.into()),
            ("RUSH_FILE_OP_WRITE", FILE_OP_WRITE.into()),
            ("RUSH_FILE_OP_EXEC", FILE_OP_EXEC.into()),
            ("RUSH_FILE_OP_CREATE", FILE_OP_CREATE.into()),
            ("RUSH_FILE_OP_DELETE", FILE_OP_DELETE.into()),
            ("RUSH_FILE_OP_SAVE", FILE_OP_SAVE.into()),
            ("RUSH_FILE_OPS_LEN", FILE_OPS_LEN as u64),
            ("RUSH_EVENT_GUARD_DENY", EVENT_GUARD_DENY.into()),
            ("RUSH_EVENT_GRANT_MOVED", EVENT_GRANT_MOVED.into()),
            ("RUSH_EVENT_NET_BUDGET", EVENT_NET_BUDGET.into()),
            ("RUSH_EVENT_API_REFUSED", EVENT_API_REFUSED.into()),
            ("RUSH_USAGE_BYTES_BREACHED", USAGE_BYTES_BREACHED),
            ("RUSH_NET_CIDR_FIXED_BITS", NET_CIDR_FIXED_BITS.into()),
            ("RUSH_FHOOK_MMAP_FILE", FHOOK_MMAP_FILE.into()),
            ("RUSH_FHOOK_FILE_MPROTECT", FHOOK_FILE_MPROTECT.into()),
            ("RUSH_GHOOK_CAPABLE", GHOOK_CAPABLE.into()),
            ("RUSH_GHOOK_BPF", GHOOK_BPF.into()),
            ("RUSH_GHOOK_PTRACE", GHOOK_PTRACE.into()),
            ("RUSH_GHOOK_TRACEME", GHOOK_TRACEME.into()),
            ("RUSH_GHOOK_KILL", GHOOK_KILL.into()),
            ("RUSH_GHOOK_MOUNT", GHOOK_MOUNT.into()),
            ("RUSH_GHOOK_UMOUNT", GHOOK_UMOUNT.into()),
            ("RUSH_GHOOK_PIVOTROOT", GHOOK_PIVOTROOT.into()),
            ("RUSH_GHOOK_MOVE_MOUNT", GHOOK_MOVE_MOUNT.into()),
            ("RUSH_GHOOK_USERNS", GHOOK_USERNS.into()),
            ("RUSH_GHOOK_KERNEL_READ_FILE", GHOOK_KERNEL_READ_FILE.into()),
            ("RUSH_GHOOK_KERNEL_LOAD_DATA", GHOOK_KERNEL_LOAD_DATA.into()),
            ("RUSH_GHOOK_CGROUPFS_WRITE", GHOOK_CGROUPFS_WRITE.into()),
            ("RUSH_GHOOK_PROTECTED_DIR", GHOOK_PROTECTED_DIR.into()),
            ("RUSH_GHOOK_FCNTL", GHOOK_FCNTL.into()),
            ("RUSH_GHOOK_SYSCTL", GHOOK_SYSCTL.into()),
            ("RUSH_GHOOK_IOCTL", GHOOK_IOCTL.into()),
            ("RUSH_GHOOK_PROC_WRITE", GHOOK_PROC_WRITE.into()),
            ("RUSH_PROTECTED_MAX", PROTECTED_MAX as u64),
            ("RUSH_FHOOK_FILE_OPEN", FHOOK_FILE_OPEN.into()),
            ("RUSH_FHOOK_FILE_PERMISSION", FHOOK_FILE_PERMISSION.into()),
            ("RUSH_FHOOK_PATH_MKNOD", FHOOK_PATH_MKNOD.into()),
            ("RUSH_FHOOK_PATH_MKDIR", FHOOK_PATH_MKDIR.into()),
            ("RUSH_FHOOK_PATH_SYMLINK", FHOOK_PATH_SYMLINK.into()),
            ("RUSH_FHOOK_PATH_UNLINK", FHOOK_PATH_UNLINK.into()),
            ("RUSH_FHOOK_PATH_RMDIR", FHOOK_PATH_RMDIR.into()),
            ("RUSH_FHOOK_PATH_RENAME", FHOOK_PATH_RENAME.into()),
            ("RUSH_FHOOK_PATH_LINK", FHOOK_PATH_LINK.into()),
            ("RUSH_FHOOK_PATH_TRUNCATE", FHOOK_PATH_TRUNCATE.into()),
            ("RUSH_FHOOK_PATH_CHMOD", FHOOK_PATH_CHMOD.into()),
            ("RUSH_FHOOK_PATH_CHOWN", FHOOK_PATH_CHOWN.into()),
            ("RUSH_FILE_PATH_LEN", FILE_PATH_LEN as u64),
            ("RUSH_STATS_LEN", u64::from(STAT_EVENTS_LOST) + 1),
        ];
        let header_defines = header
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define")).then(|| w.next()).flatten()
            })
            .filter(|name| name.starts_with("RUSH_") && !name.ends_with("_H"))
            .count();
        assert_eq!(header_defines, expected.len(), "a #define of rush.h has no Rust constant here");
        for (name, value) in expected {
            assert_eq!(define(name), value, "{name}");
        }
    }

    /// Program and map names in the objects are the ones the loader looks for.
    #[test]
    fn names_match_objects() {
        let open = libbpf_rs::ObjectBuilder::default().open_memory(NET_OBJECT).unwrap();
        let progs: Vec<(String, String)> = open
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
            .collect();
        let expected: Vec<(String, String)> = NET_PROGRAMS
            .iter()
            .chain([&SYSCTL_PROGRAM])
            .map(|p| (p.name.to_string(), p.hook.to_string()))
            .collect();
        assert_eq!(progs, expected);
        let mut maps: Vec<String> = open
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .filter(|n| !n.contains('.'))
            .collect();
        // ELF map order follows first use in the code: compare as sets.
        let mut pinned = PINNED_MAPS.to_vec();
        maps.sort();
        pinned.sort();
        assert_eq!(maps, pinned);

        let open = libbpf_rs::ObjectBuilder::default().open_memory(FILE_OBJECT).unwrap();
        let progs: Vec<(String, String)> = open
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
            .collect();
        let expected: Vec<(String, String)> =
            LSM_PROGRAMS.iter().map(|p| (p.name.to_string(), p.hook.to_string())).collect();
        assert_eq!(progs, expected);
        let mut maps: Vec<String> = open
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .filter(|n| !n.contains('.'))
            .collect();
        // rush_path_scratch is the file object's own (per-CPU scratch), not shared. The
        // order of maps in the ELF follows first use in the code, which means nothing.
        let mut want: Vec<&str> = PINNED_MAPS.to_vec();
        want.extend(["rush_path_scratch", "rush_save_pending"]);
        maps.sort();
        want.sort();
        assert_eq!(maps, want);
        for (i, spec) in LSM_PROGRAMS.iter().enumerate() {
            let hook = spec.hook.strip_prefix("lsm/").unwrap();
            let fhook = u32::try_from(i).unwrap() + 1;
            assert_eq!(file_hook_name(fhook), Some(hook), "FHOOK {fhook} is LSM_PROGRAMS[{i}]");
            assert_eq!(spec.name, format!("rush_{hook}"));
            assert_eq!(spec.link_pin, format!("rush_link_{hook}"));
        }
        let open = libbpf_rs::ObjectBuilder::default().open_memory(GUARD_OBJECT).unwrap();
        let progs: Vec<(String, String)> = open
            .progs()
            .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
            .collect();
        let expected: Vec<(String, String)> =
            GUARD_PROGRAMS.iter().map(|p| (p.name.to_string(), p.hook.to_string())).collect();
        assert_eq!(progs, expected);
        for spec in GUARD_PROGRAMS.iter().filter(|s| s.name != "rush_guard_file_open") {
            let hook = spec.hook.strip_prefix("lsm/").unwrap();
            assert_eq!(spec.name, format!("rush_{hook}"));
            assert_eq!(spec.link_pin, format!("rush_link_{hook}"));
        }
        assert_eq!(file_hook_name(0), None);
        assert_eq!(file_hook_name(LSM_PROGRAMS.len() as u32 + 1), None);
    }

    #[test]
    fn plain_round_trip() {
        let hdr = RushEventHdr { comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0", ..Default::default() };
        let e = RushNetEvent { hdr, port: 443, ..Default::default() };
        let back = RushNetEvent::from_bytes(e.as_bytes()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.hdr.comm(), "curl");
        assert!(RushNetEvent::from_bytes(&[0; 8]).is_none());

        let mut f = RushFileEvent {
            hdr: RushEventHdr::new(EVENT_FILE_DENY, FHOOK_FILE_OPEN, 7),
            op: FILE_OP_WRITE,
            ..Default::default()
        };
        f.path[..6].copy_from_slice(b"/srv/a");
        f.hdr.comm[..3].copy_from_slice(b"cat");
        let back = RushFileEvent::from_bytes(f.as_bytes()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.path(), "/srv/a");
        assert_eq!(back.hdr.comm(), "cat");
        // Every event starts with the header: its kind is the record's first u32.
        assert_eq!(RushEventHdr::from_bytes(back.as_bytes()).unwrap().kind, EVENT_FILE_DENY);
    }
}

//! Defence in depth for every agent, on every kernel, beside its cgroup, file tokens and
//! network policy: what the agent's first process sets up between clone3 and execve
//! (`spawn.rs` runs it; this module decides and prepares it).
//!
//! - **A cgroup namespace** rooted at the agent's cgroup, made by the clone itself
//!   (`CLONE_NEWCGROUP` with `CLONE_INTO_CGROUP`, with the daemon's privileges):
//!   `/proc/self/cgroup` says `/`, and where cgroup2 is mounted with `nsdelegate` the
//!   kernel refuses migrations out of it (ENOENT). Not for agents of a session where CRIU works:
//!   their process checkpoints are dumped from a staging cgroup outside it, which CRIU
//!   3.17 refuses (see `agent.rs` `child_hardening`). Without `nsdelegate`, and on every cgroup v1 hierarchy, a namespace alone
//!   stops nothing (measured on this project's hybrid host: a root process in a cgroup
//!   namespace moved itself to the root of both), hence the next item.
//! - **A private mount namespace whose cgroupfs is read-only** and shows only the agent's
//!   own cgroup: each hierarchy's mount point gets a bind of the agent's directory there,
//!   then everything below the cgroup mount root is made read-only (`mount_setattr`,
//!   recursive). A root agent cannot write `cgroup.procs` of any cgroup (EROFS), and
//!   cannot remount (no CAP_SYS_ADMIN, no mount syscalls). Mount propagation is made
//!   slave first, so nothing done here reaches the host's namespace. This is what
//!   systemd's `ProtectControlGroups=` and container runtimes do. Only where the BPF LSM
//!   guard is not attached: where it is, it refuses every cgroupfs write itself, and it
//!   would refuse the mount calls this needs (the first process is already an agent's).
//! - **A capability bounding set** without the capabilities that reach around everything
//!   else (SYS_ADMIN, BPF, PERFMON, SYS_PTRACE, ...; `[hardening] drop_capabilities`, per
//!   trust level too): dropped from the bounding, inheritable, permitted, effective and
//!   ambient sets before the credential switch, so neither a root agent nor anything it
//!   executes (with `no_new_privs`, setuid binaries neither) can hold them.
//! - **A seccomp filter** refusing the system calls that reach the kernel's shared state
//!   (`REFUSED`): `bpf`, `perf_event_open`, keyrings, `fanotify_init`, `userfaultfd`
//!   (kernel-mode faults), `open_by_handle_at`, module and kexec loading, the mount family,
//!   new user namespaces (`unshare`/`clone` flags; `clone3`, whose flags seccomp cannot
//!   read, answers ENOSYS so libc falls back to `clone`), `setns`, swap, reboot, `acct`,
//!   `iopl`/`ioperm`, `syslog`. Refusals are EPERM and logged by the kernel's audit
//!   subsystem (`SECCOMP_FILTER_FLAG_LOG`), which the daemon reads (`audit_netlink.rs`).
//!
//! Compiled with seccompiler (Firecracker's): it emits one action for all its rules, so the
//! ENOSYS rule for `clone3` is a second filter, and a third, four instructions written by
//! hand, refuses the x32 ABI (x86-64 system call numbers with bit 30 set, which
//! seccompiler's exact-number rules would not match) on kernels built with it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::Capability;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("unknown capability {name:?} (names as in capabilities(7), e.g. CAP_SYS_ADMIN or SYS_ADMIN)")]
    UnknownCapability { name: String },
    #[error("compiling the agents' seccomp filter: {0}")]
    Seccomp(String),
    #[error("{} contains a NUL byte", path.display())]
    Nul { path: PathBuf },
}

/// The capabilities every agent loses by default: those that reach around the file
/// tokens, the guard and the cgroup, or into the kernel. The BPF LSM guard refuses the
/// same set where it runs (`guard.bpf.c` RUSH_DENIED_CAPS), so the two layers agree.
/// Kept: DAC override, chown, fowner, setuid/setgid, kill, net bind, nice, resource, ...:
/// within what the other layers allow, a root agent is still root.
pub const DEFAULT_DROPPED: [&str; 26] = [
    "CAP_DAC_READ_SEARCH",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `[hardening]` in config.toml: the defaults of every agent; a trust level may override
/// `drop_capabilities`, `seccomp` and `root_agents`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HardeningSection {
    /// Each agent in a cgroup namespace rooted at its cgroup.
    pub cgroup_namespace: bool,
    /// Each agent in a private mount namespace whose cgroupfs is read-only and shows only
    /// its own cgroup.
    pub private_cgroupfs: bool,
    /// Removed from every agent's capability sets (bounding set included).
    pub drop_capabilities: Vec<String>,
    /// The seccomp filter (`rush doctor` lists what it refuses).
    pub seccomp: bool,
    /// Agents may run as root (uid 0); `false` refuses such spawns (use `--user`).
    pub root_agents: bool,
}

impl Default for HardeningSection {
    fn default() -> Self {
        HardeningSection {
            cgroup_namespace: true,
            private_cgroupfs: true,
            drop_capabilities: DEFAULT_DROPPED.iter().map(|s| s.to_string()).collect(),
            seccomp: true,
            root_agents: true,
        }
    }
}

impl HardeningSection {
    /// What agents without a trust level get.
    pub fn policy(&self) -> Result<HardeningPolicy, HardenError> {
        Ok(HardeningPolicy {
            drop: parse_capabilities(&self.drop_capabilities)?,
            seccomp: self.seccomp,
            root_agents: self.root_agents,
        })
    }
}

/// The per-agent part of the hardening (config defaults, then the trust level's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardeningPolicy {
    pub drop: Vec<Capability>,
    pub seccomp: bool,
    pub root_agents: bool,
}

impl Default for HardeningPolicy {
    fn default() -> Self {
        HardeningSection::default().policy().expect("the default capabilities are known")
    }
}

impl HardeningPolicy {
    /// The dropped set as a bit mask (bit N = capability N).
    pub fn drop_mask(&self) -> u64 {
        self.drop.iter().fold(0, |m, c| m | c.bitmask())
    }
}

/// `CAP_SYS_ADMIN`, `SYS_ADMIN` or `sys_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, HardenError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    full.parse().map_err(|_| HardenError::UnknownCapability { name: name.to_owned() })
}

pub fn parse_capabilities(names: &[String]) -> Result<Vec<Capability>, HardenError> {
    let mut caps: Vec<Capability> = names.iter().map(|n| parse_capability(n)).collect::<Result<_, _>>()?;
    caps.sort_by_key(|c| c.index());
    caps.dedup();
    Ok(caps)
}

/// When a refused system call is refused: always, or by the bits of one argument.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// Refused when `args[arg] & mask` is not zero (e.g. `unshare(CLONE_NEWUSER)`).
    AnyOf {
        arg: u8,
        mask: u64,
    },
    /// Refused when `args[arg] & mask` is zero (`userfaultfd` without UFFD_USER_MODE_ONLY).
    NoneOf {
        arg: u8,
        mask: u64,
    },
}

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
const UFFD_USER_MODE_ONLY: u64 = 1;

/// What the filter refuses with EPERM: (name, number, when). x86-64 numbers (libc's).
const REFUSED: [(&str, i64, When); 30] = [
    ("bpf", libc::SYS_bpf, When::Always),
    ("perf_event_open", libc::SYS_perf_event_open, When::Always),
    ("keyctl", libc::SYS_keyctl, When::Always),
    ("add_key", libc::SYS_add_key, When::Always),
    ("request_key", libc::SYS_request_key, When::Always),
    ("fanotify_init", libc::SYS_fanotify_init, When::Always),
    ("userfaultfd", libc::SYS_userfaultfd, When::NoneOf { arg: 0, mask: UFFD_USER_MODE_ONLY }),
    ("open_by_handle_at", libc::SYS_open_by_handle_at, When::Always),
    ("init_module", libc::SYS_init_module, When::Always),
    ("finit_module", libc::SYS_finit_module, When::Always),
    ("delete_module", libc::SYS_delete_module, When::Always),
    ("kexec_load", libc::SYS_kexec_load, When::Always),
    ("kexec_file_load", libc::SYS_kexec_file_load, When::Always),
    ("mount", libc::SYS_mount, When::Always),
    ("umount2", libc::SYS_umount2, When::Always),
    ("pivot_root", libc::SYS_pivot_root, When::Always),
    ("move_mount", libc::SYS_move_mount, When::Always),
    ("open_tree", libc::SYS_open_tree, When::Always),
    ("fsopen", libc::SYS_fsopen, When::Always),
    ("fsmount", libc::SYS_fsmount, When::Always),
    ("fspick", libc::SYS_fspick, When::Always),
    ("mount_setattr", libc::SYS_mount_setattr, When::Always),
    ("unshare(CLONE_NEWUSER)", libc::SYS_unshare, When::AnyOf { arg: 0, mask: CLONE_NEWUSER }),
    ("clone(CLONE_NEWUSER)", libc::SYS_clone, When::AnyOf { arg: 0, mask: CLONE_NEWUSER }),
    ("setns", libc::SYS_setns, When::Always),
    ("swapon", libc::SYS_swapon, When::Always),
    ("swapoff", libc::SYS_swapoff, When::Always),
    ("reboot", libc::SYS_reboot, When::Always),
    ("acct", libc::SYS_acct, When::Always),
    ("syslog", libc::SYS_syslog, When::Always),
];

/// Refused with ENOSYS instead: `clone3` carries its flags in memory seccomp cannot read,
/// and libc falls back to `clone` (whose flags it can) on ENOSYS.
const UNAVAILABLE: [(&str, i64); 3] =
    [("clone3", libc::SYS_clone3), ("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)];

/// The names of what the filter refuses, for `rush doctor`, `agent status` and the docs.
pub fn refused_syscalls() -> Vec<&'static str> {
    REFUSED.iter().map(|(n, _, _)| *n).chain(UNAVAILABLE.iter().map(|(n, _)| *n)).collect()
}

/// The name of a refused system call number (audit records carry the number).
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    REFUSED
        .iter()
        .find(|(_, n, _)| *n == nr)
        .map(|(name, _, _)| *name)
        .or_else(|| UNAVAILABLE.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name))
}

/// The compiled filters, installed in order by the agent's first process.
#[derive(Debug)]
pub struct SeccompProgram {
    pub filters: Vec<Vec<libc::sock_filter>>,
}

/// Compiles the agents' filters; done once at daemon start.
pub fn seccomp_program() -> Result<SeccompProgram, HardenError> {
    let err = |e: &dyn std::fmt::Display| HardenError::Seccomp(e.to_string());
    let arch = seccompiler::TargetArch::x86_64;
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr, when) in REFUSED {
        // seccompiler compares `args[arg] & mask` with a value: `mask` for "any of the
        // bits" (all of them here: each mask is one bit), 0 for "none of them".
        let masked = |arg, mask, value| -> Result<Vec<SeccompRule>, HardenError> {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), value)
                .map_err(|e| err(&e))?;
            Ok(vec![SeccompRule::new(vec![c]).map_err(|e| err(&e))?])
        };
        let rules = match when {
            When::Always => vec![],
            When::AnyOf { arg, mask } => masked(arg, mask, mask)?,
            When::NoneOf { arg, mask } => masked(arg, mask, 0)?,
        };
        eperm.insert(nr, rules);
    }
    let enosys: BTreeMap<i64, Vec<SeccompRule>> = UNAVAILABLE.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let compile = |rules, errno: i32| -> Result<Vec<libc::sock_filter>, HardenError> {
        let filter =
            SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)
                .map_err(|e| err(&e))?;
        let program: seccompiler::BpfProgram =
            filter.try_into().map_err(|e: seccompiler::BackendError| err(&e))?;
        Ok(program
            .into_iter()
            .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
            .collect())
    };
    Ok(SeccompProgram {
        filters: vec![x32_filter(), compile(eperm, libc::EPERM)?, compile(enosys, libc::ENOSYS)?],
    })
}

/// Refuses (ENOSYS) every x32 system call: x86-64 calls whose number has bit 30 set.
/// By hand: seccompiler matches exact numbers only.
fn x32_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // struct seccomp_data: int nr at 0, u32 arch at 4.
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        ins(LD_W_ABS, 0, 0, 0),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// How the agent sees cgroupfs in its own mount namespace: binds of its own cgroup
/// directories onto the hierarchies' mount points, then `read_only` made read-only
/// (recursively).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupView {
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub read_only: Vec<PathBuf>,
}

/// A [`CgroupView`] as C strings: (source, target) binds, then the read-only roots.
pub type ChildView = (Vec<(CString, CString)>, Vec<CString>);

/// Everything the child needs, as C strings and plain values prepared before the clone.
#[derive(Debug, Default)]
pub struct ChildHardening {
    pub cgroup_namespace: bool,
    /// (source, target) binds, then the read-only roots.
    pub view: Option<ChildView>,
    /// Capabilities (bit N = capability N) removed from every set.
    pub drop_caps: u64,
    pub seccomp: Option<std::sync::Arc<SeccompProgram>>,
}

fn cpath(p: &Path) -> Result<CString, HardenError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| HardenError::Nul { path: p.to_owned() })
}

impl ChildHardening {
    pub fn new(
        cgroup_namespace: bool,
        view: Option<&CgroupView>,
        policy: &HardeningPolicy,
        seccomp: Option<std::sync::Arc<SeccompProgram>>,
    ) -> Result<ChildHardening, HardenError> {
        let view = match view {
            Some(v) => Some((
                v.binds
                    .iter()
                    .map(|(s, t)| Ok((cpath(s)?, cpath(t)?)))
                    .collect::<Result<_, HardenError>>()?,
                v.read_only.iter().map(|p| cpath(p)).collect::<Result<_, _>>()?,
            )),
            None => None,
        };
        Ok(ChildHardening {
            cgroup_namespace,
            view,
            drop_caps: policy.drop_mask(),
            seccomp: if policy.seccomp { seccomp } else { None },
        })
    }
}

/// The hardening an agent runs with, for `rush agent status` and `--json`.
pub fn info(child: &ChildHardening, policy: &HardeningPolicy) -> rush_proto::Hardening {
    rush_proto::Hardening {
        cgroup_namespace: child.cgroup_namespace,
        private_cgroupfs: child.view.is_some(),
        capabilities_dropped: policy.drop.iter().map(|c| c.to_string()).collect(),
        seccomp: child.seccomp.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_in_every_spelling_and_unknown_ones_are_named() {
        assert_eq!(parse_capability("CAP_SYS_ADMIN").unwrap(), Capability::CAP_SYS_ADMIN);
        assert_eq!(parse_capability("sys_admin").unwrap(), Capability::CAP_SYS_ADMIN);
        assert_eq!(parse_capability(" BPF ").unwrap(), Capability::CAP_BPF);
        let e = parse_capability("CAP_FLY").unwrap_err().to_string();
        assert!(e.contains("unknown capability \"CAP_FLY\""), "{e}");
        let d = HardeningPolicy::default();
        assert_eq!(d.drop.len(), DEFAULT_DROPPED.len());
        assert_ne!(d.drop_mask() & (1 << 21), 0, "CAP_SYS_ADMIN is bit 21");
        assert_eq!(d.drop_mask() & Capability::CAP_DAC_OVERRIDE.bitmask(), 0, "DAC override is kept");
    }

    #[test]
    fn the_filter_compiles_and_names_its_numbers() {
        let p = seccomp_program().unwrap();
        assert_eq!(p.filters.len(), 3);
        assert!(p.filters.iter().all(|f| !f.is_empty() && f.len() < 4096));
        assert_eq!(syscall_name(libc::SYS_keyctl), Some("keyctl"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        assert_eq!(syscall_name(libc::SYS_read), None);
        assert!(refused_syscalls().contains(&"bpf"));
    }

    /// The filters, installed in a forked child, refuse what they list (with the errno
    /// they say) and let the rest through; x32 numbers are refused too.
    #[test]
    fn the_filter_refuses_in_a_real_process() {
        let p = seccomp_program().unwrap();
        // SAFETY: fork in a test; the child only makes raw system calls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw syscalls on memory prepared before the fork.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for f in &p.filters {
                    let prog = libc::sock_fprog { len: f.len() as u16, filter: f.as_ptr() as *mut _ };
                    if libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const libc::sock_fprog) != 0 {
                        libc::_exit(10);
                    }
                }
                let checks: [(i64, i32); 4] = [
                    (libc::SYS_keyctl, libc::EPERM),
                    (libc::SYS_unshare, libc::EPERM),
                    (libc::SYS_clone3, libc::ENOSYS),
                    (0x4000_0000 | libc::SYS_getpid, libc::ENOSYS),
                ];
                for (i, (nr, want)) in checks.iter().enumerate() {
                    // unshare's only argument is CLONE_NEWUSER; the others ignore theirs.
                    let r = libc::syscall(*nr, libc::CLONE_NEWUSER, 0, 0, 0, 0);
                    if r != -1 || *libc::__errno_location() != *want {
                        libc::_exit(20 + i as i32);
                    }
                }
                // Allowed: getpid, and userfaultfd in user mode reaches the kernel's own checks.
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    libc::_exit(30);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "a check failed (exit code names which)");
    }
}

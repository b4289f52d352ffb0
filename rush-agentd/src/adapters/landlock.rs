//! The Landlock backend for file tokens, for kernels that refuse BPF LSM programs.
//!
//! An agent's tokens become one Landlock ruleset, built here in the daemon before the
//! agent's first process is cloned; the child only calls `landlock_restrict_self` on its
//! fd (after `no_new_privs`), then executes. Landlock rules are path hierarchies fixed
//! when the domain is made: a token on a directory is a `PathBeneath` rule on it, a token
//! on a file a rule with the rights a file can have. What Landlock cannot do the daemon
//! does around it (see `agent.rs`): a revoke, an expiry or a grant freezes the agent and
//! restarts it under a new ruleset, or kills it.
//!
//! Mapping of operations (rights handled are those of ABI 5 the running kernel knows;
//! best effort down to ABI 1, none at all is refused):
//! - read: `ReadFile`, `ReadDir`
//! - write: `WriteFile`, `Truncate` (writing a file includes cutting it), `IoctlDev` (a
//!   device the agent may write it may also control: terminals need their ioctls)
//! - exec: `Execute` (execve only: Landlock does not see `mmap(PROT_EXEC)`)
//! - create: `MakeReg`, `MakeDir`, `MakeSym`, `MakeFifo`, `MakeSock`, and `Refer`
//! - delete: `RemoveFile`, `RemoveDir`, and `Refer`
//!
//! `MakeChar`/`MakeBlock` are handled and never granted (no device nodes). `Refer` (moving
//! or linking a file between directories) goes with create and delete: Landlock then also
//! checks that the file gains no right by the move, as the BPF programs do.
//!
//! Network (ABI 4+): with an allow list whose every entry names a port, TCP connects are
//! handled and each listed port allowed; Landlock rules are per port, not per address, so
//! the cgroup programs keep doing the per-address checks. Scopes (ABI 6+): the agent may
//! not signal, or connect to abstract Unix sockets of, processes outside its domain.
//!
//! Hard links (`--hardlinks refuse-write|refuse`): Landlock rules see paths, never link
//! counts, so a hard link in a granted directory opens the file it names. What the
//! daemon can do instead is [`scan_links`]: refuse the spawn (or grant) while a granted
//! directory holds a regular file with more than one link. Links made later are not seen.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use rush_proto::Ops;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock is not available on this kernel")]
    Unavailable,
    #[error("building the Landlock ruleset")]
    Ruleset(#[source] landlock::RulesetError),
    #[error("cannot open {path} for a Landlock rule")]
    Path { path: PathBuf, source: landlock::PathFdError },
}

/// Entries the hard-link check visits below one granted directory, at most.
pub const LINK_SCAN_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum LinkScanError {
    #[error(
        "{file} has {links} hard links (another of its names may be outside every grant) and no token names it"
    )]
    Linked { file: PathBuf, links: u64 },
    #[error("{dir} holds more than {max} entries, which is as far as the hard-link check looks")]
    TooLarge { dir: PathBuf, max: usize },
    #[error("cannot read {path} for the hard-link check")]
    Read { path: PathBuf, source: std::io::Error },
}

/// Refuses when a regular file below `dir` has more than one link and its (st_dev, st_ino)
/// is not in `named` (files a token names by themselves). Symlinks are not followed (the
/// file a symlink reaches is checked where it is); mounts below `dir` are walked, since
/// Landlock rules cover them. At most `max` entries, else [`LinkScanError::TooLarge`].
pub fn scan_links(dir: &Path, named: &HashSet<(u64, u64)>, max: usize) -> Result<(), LinkScanError> {
    let mut stack = vec![dir.to_owned()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(read_err(&d))? {
            let entry = entry.map_err(read_err(&d))?;
            seen += 1;
            if seen > max {
                return Err(LinkScanError::TooLarge { dir: dir.to_owned(), max });
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.nlink() > 1 && !named.contains(&(meta.dev(), meta.ino())) {
                return Err(LinkScanError::Linked { file: path, links: meta.nlink() });
            }
        }
    }
    Ok(())
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> LinkScanError + use<> {
    let path = path.to_owned();
    move |source| LinkScanError::Read { path, source }
}

/// The Landlock ABI version of the running kernel; None without Landlock. By hand (one
/// syscall): the crate answers only through a ruleset's compatibility status.
pub fn abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attr, size 0 and the VERSION flag only
    // returns the ABI version (or an error); it reads and writes no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

/// The newest ABI whose rights this module maps (see the module docs).
const MAPPED_ABI: ABI = ABI::V5;

/// Rights a token's operations give on a directory (`dir`) or on a file.
pub fn access(ops: Ops, dir: bool) -> BitFlags<AccessFs> {
    let mut a = BitFlags::<AccessFs>::empty();
    if ops.contains(Ops::READ) {
        a |= AccessFs::ReadFile | AccessFs::ReadDir;
    }
    if ops.contains(Ops::WRITE) {
        a |= AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    }
    if ops.contains(Ops::EXEC) {
        a |= AccessFs::Execute;
    }
    if ops.contains(Ops::CREATE) {
        a |= AccessFs::MakeReg
            | AccessFs::MakeDir
            | AccessFs::MakeSym
            | AccessFs::MakeFifo
            | AccessFs::MakeSock
            | AccessFs::Refer;
    }
    if ops.contains(Ops::DELETE) {
        a |= AccessFs::RemoveFile | AccessFs::RemoveDir | AccessFs::Refer;
    }
    if dir { a } else { a & AccessFs::from_file(MAPPED_ABI) }
}

/// One path rule: a token's path and operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub ops: Ops,
}

/// The TCP ports the agent may connect to; None leaves TCP connects to the cgroup
/// programs alone (`--net allow`, or an allow list with an any-port entry).
pub type TcpPorts = Option<Vec<u16>>;

/// The ruleset for these rules, as the fd the child hands to `landlock_restrict_self`.
/// Paths missing now are skipped (a baseline entry absent on this machine; the agent
/// cannot reach what does not exist, and anything made there later is not covered).
pub fn ruleset(rules: &[PathRule], tcp: &TcpPorts) -> Result<OwnedFd, LandlockError> {
    if abi().is_none() {
        return Err(LandlockError::Unavailable);
    }
    let mut attr = Ruleset::default()
        .handle_access(AccessFs::from_all(MAPPED_ABI))
        .map_err(LandlockError::Ruleset)?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(LandlockError::Ruleset)?;
    if tcp.is_some() {
        attr = attr.handle_access(AccessNet::ConnectTcp).map_err(LandlockError::Ruleset)?;
    }
    let mut created = attr.create().map_err(LandlockError::Ruleset)?;
    for r in rules {
        let fd = match PathFd::new(&r.path) {
            Ok(fd) => fd,
            Err(e) if !r.path.exists() => {
                tracing::debug!(path = %r.path.display(), error = %e, "no Landlock rule: the path is gone");
                continue;
            }
            Err(source) => return Err(LandlockError::Path { path: r.path.clone(), source }),
        };
        let a = access(r.ops, r.path.is_dir());
        if a.is_empty() {
            continue;
        }
        created = created.add_rule(PathBeneath::new(fd, a)).map_err(LandlockError::Ruleset)?;
    }
    for port in tcp.iter().flatten() {
        created =
            created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp)).map_err(LandlockError::Ruleset)?;
    }
    Option::<OwnedFd>::from(created).ok_or(LandlockError::Unavailable)
}

/// For agents without file tokens, where Landlock is the file backend (so no BPF LSM
/// guard runs): a ruleset that handles no file or network access, only the scopes (ABI 6+),
/// so a root agent still cannot signal the daemon or any process outside its domain, nor
/// reach their abstract Unix sockets. None below ABI 6.
pub fn scope_only() -> Result<Option<OwnedFd>, LandlockError> {
    if abi().is_none_or(|v| v < 6) {
        return Ok(None);
    }
    let created = Ruleset::default()
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(LandlockError::Ruleset)?
        .create()
        .map_err(LandlockError::Ruleset)?;
    Ok(Option::<OwnedFd>::from(created))
}

/// Whether the ruleset's TCP rules apply on this kernel (ABI 4+).
pub fn tcp_enforced() -> bool {
    abi().is_some_and(|v| v >= 4)
}

/// `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON` (linux/landlock.h, ABI 7): log the domain's
/// denials after an `execve` too. By default Landlock logs a domain's denials only until
/// the process that entered it executes another program ("a program should know its own
/// behavior"); an agent enters its ruleset in the daemon's child just before it executes
/// the agent's program, so without this flag none of an agent's denials would be logged.
const LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: u32 = 1 << 1;

/// The flags of every agent's `landlock_restrict_self`, set once at start by
/// [`log_denials`], before any agent is spawned; read in the child between clone and exec
/// (an atomic load is async-signal-safe).
static RESTRICT_FLAGS: AtomicU32 = AtomicU32::new(0);

/// Whether agents' Landlock denials are logged to the kernel's audit (what [`log_denials`]
/// last set).
pub fn logs_denials() -> bool {
    RESTRICT_FLAGS.load(Ordering::Relaxed) & LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON != 0
}

/// Makes every agent spawned from now on log its Landlock denials to the kernel's audit
/// (which reports them only while it is enabled); Err says why this kernel cannot (ABI
/// below 7: the flag would make `landlock_restrict_self` fail with EINVAL).
pub fn log_denials(on: bool) -> Result<(), String> {
    let flags = match abi() {
        _ if !on => 0,
        Some(v) if v >= 7 => LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON,
        Some(v) => return Err(format!("Landlock ABI {v} cannot log denials (ABI 7, Linux 6.15+, can)")),
        None => return Err("no Landlock on this kernel".into()),
    };
    RESTRICT_FLAGS.store(flags, Ordering::Relaxed);
    Ok(())
}

/// `landlock_restrict_self(fd, flags)`: to be called in the child between clone and exec,
/// after `no_new_privs`, with the flags [`log_denials`] chose. One raw syscall: the
/// crate (0.4.8) has the logging flags (`RulesetCreatedAttr::log_new_exec`), but only
/// through its own `restrict_self`, which allocates and builds a status, which the child
/// of a multi-threaded process must not do.
///
/// # Safety
/// Async-signal-safe; `fd` must be a Landlock ruleset fd.
pub unsafe fn restrict_self(fd: std::os::fd::RawFd) -> libc::c_long {
    let flags = RESTRICT_FLAGS.load(Ordering::Relaxed);
    // SAFETY: a plain syscall on an fd and a flag word; no memory is passed.
    unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, flags) }
}

/// What happens to a Landlock-confined agent whose tokens change: Landlock cannot change
/// the rules of a running process, so it is frozen, then restarted or killed.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    /// Kill its process tree and start its command again (same name, argv, env, cwd, uid,
    /// log) under the new rules. Foreground agents are killed instead.
    Restart,
    /// Kill its process tree.
    Kill,
}

impl OnChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnChange::Restart => "restart",
            OnChange::Kill => "kill",
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LandlockSection {
    /// A revoke or an expiry (access narrowed).
    pub on_narrow: OnChange,
    /// A grant (access widened).
    pub on_widen: OnChange,
    /// Bring Landlock's denials into the audit trail as `file_deny` (Landlock ABI 7, Linux
    /// 6.15+): agents enter their ruleset with `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON` and
    /// the daemon turns the kernel's audit on if it is off (as auditd and journald do; it
    /// stays on: `auditctl -e 0` turns it off). Costs: see BENCHMARKS.md.
    pub audit_denials: bool,
}

impl Default for LandlockSection {
    fn default() -> Self {
        // Restart: a narrowed token is a limit on the agent, not a verdict on it (`rush
        // agent kill` is that); the new process is confined by the new rules from its
        // first instruction, and the CLI says so before it happens.
        LandlockSection { on_narrow: OnChange::Restart, on_widen: OnChange::Restart, audit_denials: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_scan_names_a_linked_file_unless_a_token_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("deep/er")).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("plain"), "x").unwrap();
        std::fs::write(b.join("x"), "secret").unwrap();
        std::os::unix::fs::symlink(b.join("x"), a.join("sym")).unwrap();
        assert!(
            scan_links(&a, &HashSet::new(), LINK_SCAN_MAX).is_ok(),
            "one link each; a symlink is not followed"
        );
        std::fs::hard_link(b.join("x"), a.join("deep/er/h")).unwrap();
        match scan_links(&a, &HashSet::new(), LINK_SCAN_MAX) {
            Err(LinkScanError::Linked { file, links: 2 }) => assert_eq!(file, a.join("deep/er/h")),
            other => panic!("{other:?}"),
        }
        let m = std::fs::metadata(b.join("x")).unwrap();
        assert!(
            scan_links(&a, &HashSet::from([(m.dev(), m.ino())]), LINK_SCAN_MAX).is_ok(),
            "named by a token"
        );
        let e = scan_links(&a, &HashSet::new(), 2).unwrap_err();
        assert!(matches!(e, LinkScanError::TooLarge { max: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("more than 2 entries"), "{e}");
    }

    #[test]
    fn operations_map_to_rights_a_file_can_hold() {
        let rw: Ops = "read,write".parse().unwrap();
        assert!(access(rw, true).contains(AccessFs::ReadDir));
        assert!(!access(rw, false).contains(AccessFs::ReadDir), "ReadDir on a file is EINVAL");
        assert!(access(rw, false).contains(AccessFs::Truncate | AccessFs::WriteFile));
        let cd: Ops = "create,delete".parse().unwrap();
        assert!(access(cd, true).contains(AccessFs::Refer | AccessFs::MakeReg | AccessFs::RemoveFile));
        assert!(access(cd, false).is_empty(), "create and delete are rights of directories");
        assert!(!access(Ops(0x1f), true).intersects(AccessFs::MakeChar | AccessFs::MakeBlock));
    }

    /// Runs `f` in a forked child restricted by `fd`, returning its exit code.
    fn in_child(fd: &OwnedFd, f: impl FnOnce() -> i32) -> i32 {
        use std::os::fd::AsRawFd;
        // SAFETY: fork in a test: the child only makes syscalls and std fs calls, then
        // _exits; the parent waits for it.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl and restrict_self on our own ruleset fd.
                let code = unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || restrict_self(fd.as_raw_fd()) != 0
                    {
                        99
                    } else {
                        f()
                    }
                };
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_ruleset_allows_its_tree_and_nothing_else() {
        if abi().is_none() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP: no Landlock on this kernel");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), "x").unwrap();
        std::fs::write(dir.path().join("b"), "y").unwrap();
        let rules = [PathRule { path: dir.path().join("a"), ops: "read".parse().unwrap() }];
        let fd = ruleset(&rules, &None).unwrap();
        let a = dir.path().join("a/f");
        let b = dir.path().join("b");
        let code = in_child(&fd, || {
            let read_a = std::fs::read(&a).is_ok();
            let read_b = std::fs::read(&b).map_err(|e| e.raw_os_error());
            let write_a = std::fs::write(&a, "z").map_err(|e| e.raw_os_error());
            i32::from(read_a && read_b == Err(Some(libc::EACCES)) && write_a == Err(Some(libc::EACCES)))
        });
        assert_eq!(code, 1);
    }
}

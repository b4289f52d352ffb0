//! Starting an agent's first process directly inside its cgroup with
//! `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`.
//!
//! Written by hand because std's `Command` cannot pass `CLONE_INTO_CGROUP`, and the
//! alternative — the child writing itself into `cgroup.procs` before exec — is a cgroup
//! *migration*: it takes the global cgroup_threadgroup_rwsem for writing, which waits for an
//! RCU grace period (measured here: 7-11 ms per spawn). Born in its cgroup, the child
//! is never anywhere else, and the only migrations left are into v1 controller hierarchies
//! on hybrid hosts, which `CLONE_INTO_CGROUP` cannot reach: the daemon moves the child
//! there (it may not write to cgroupfs itself once inside an agent) before letting it exec.
//!
//! The child sets `no_new_privs` last before exec: setuid and file-capability binaries
//! never raise an agent's privileges. An agent confined by Landlock then enters the
//! ruleset the daemon built before the clone (`landlock_restrict_self` on its fd, after
//! the credential switch and `no_new_privs`, as Landlock requires of unprivileged callers),
//! so its program's first instruction already runs under it.
//!
//! Then, once the daemon has placed it (it waits for the daemon's go before any of this),
//! the hardening of `harden.rs`: its own cgroup namespace and a mount namespace with
//! cgroupfs read-only, capabilities dropped from every set (before the credential switch,
//! which would take away the right to drop them), and last, right before exec, the
//! seccomp filter (it refuses the mount calls made before it).
//!
//! The child side runs between clone3 and execve in a copy of a multi-threaded process, so
//! it only makes raw system calls on memory prepared before the clone: no allocation, no
//! locks, and no glibc set*id wrappers (they signal the parent's other threads).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::adapters::cgroup::Placement;
use crate::adapters::harden::ChildHardening;

/// Everything the child needs, prepared in the parent.
pub struct Spawn {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// stdin, stdout, stderr for the child.
    stdio: [OwnedFd; 3],
    placement: Placement,
    /// (uid, gid, groups) to switch to; None keeps the daemon's.
    creds: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// A Landlock ruleset to enter before exec (CLOEXEC: it does not reach the program).
    landlock: Option<OwnedFd>,
    /// Namespaces, capabilities and seccomp filter (see `harden.rs`).
    hardening: ChildHardening,
    /// stdin is a terminal the new session takes as its controlling terminal (`--tty`).
    controlling_tty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program:?} not found in PATH")]
    NotFound { program: String },
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("clone3")]
    Clone(#[source] std::io::Error),
    #[error(
        "the new process is in {hierarchy} cgroup {found:?}, not in the agent's {expected:?}: refusing to let it run"
    )]
    Misplaced { hierarchy: String, expected: String, found: String },
    #[error("cannot move the new process into {}", dir.display())]
    JoinV1 { dir: PathBuf, source: std::io::Error },
    #[error("{step} in the new process")]
    Child { step: &'static str, source: std::io::Error },
    #[error("cannot prepare the new process")]
    Io(#[from] std::io::Error),
}

/// Steps of the child, reported back by index into [`STEPS`] through the error pipe.
mod step {
    pub const SETSID: u32 = 0;
    pub const STDIO: u32 = 1;
    pub const SETGROUPS: u32 = 2;
    pub const SETGID: u32 = 3;
    pub const SETUID: u32 = 4;
    pub const NO_NEW_PRIVS: u32 = 5;
    pub const CHDIR: u32 = 6;
    pub const EXECVE: u32 = 7;
    pub const LANDLOCK: u32 = 8;
    pub const UNSHARE: u32 = 9;
    pub const MOUNT: u32 = 10;
    pub const CAPABILITIES: u32 = 11;
    pub const SECCOMP: u32 = 12;
    pub const CONTROLLING_TTY: u32 = 13;
    pub const ROOT_SLAVE: u32 = 14;
}
const STEPS: [&str; 15] = [
    "setsid",
    "setting up stdio",
    "setgroups",
    "setgid",
    "setuid",
    "setting no_new_privs",
    "chdir",
    "execve",
    "entering the Landlock ruleset",
    "entering the agent's mount namespace",
    "making cgroupfs read-only in the agent's mount namespace",
    "dropping capabilities",
    "installing the seccomp filter",
    "taking the terminal as controlling terminal",
    // EINVAL when the daemon's / is not a mount point (a plain chroot).
    "making the agent's mounts slaves of the host's (the daemon's / must be a mount point: \
     in a chroot, bind its root onto itself first)",
];

fn cstring(what: &'static str, s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul { what })
}

impl Spawn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        stdio: [OwnedFd; 3],
        placement: Placement,
        creds: Option<(u32, u32, Vec<u32>)>,
        landlock: Option<OwnedFd>,
        hardening: ChildHardening,
    ) -> Result<Spawn, SpawnError> {
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
        let program =
            resolve(&argv[0], path, cwd).ok_or_else(|| SpawnError::NotFound { program: argv[0].clone() })?;
        Ok(Spawn {
            program: cstring("the program path", program.as_os_str().as_bytes())?,
            argv: argv.iter().map(|a| cstring("an argument", a.as_bytes())).collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstring("the environment", format!("{k}={v}").as_bytes()))
                .collect::<Result<_, _>>()?,
            cwd: cstring("the working directory", cwd.as_os_str().as_bytes())?,
            stdio,
            placement,
            creds,
            landlock,
            hardening,
            controlling_tty: false,
        })
    }

    /// Makes stdin (a terminal) the controlling terminal of the agent's session, so that
    /// Ctrl-C and window changes reach its foreground process group.
    pub fn with_controlling_tty(mut self) -> Spawn {
        self.controlling_tty = true;
        self
    }

    /// Starts the process. Returns its pid and a pidfd once it has executed the program;
    /// any failure before that is returned with the step that failed.
    pub fn start(self) -> Result<(i32, OwnedFd), SpawnError> {
        // The child reports failure as (step, errno) on this pipe; exec closes it (CLOEXEC).
        let (err_read, err_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        // The fds dup2'ed onto 0-2 must not themselves be 0-2, or an earlier dup2 could
        // clobber a later source; move them up first.
        let stdio: Vec<OwnedFd> = self
            .stdio
            .into_iter()
            .map(|fd| if fd.as_raw_fd() > 2 { Ok(fd) } else { fd.try_clone() })
            .collect::<Result<_, _>>()?;
        let stdio_raw: [RawFd; 3] = [stdio[0].as_raw_fd(), stdio[1].as_raw_fd(), stdio[2].as_raw_fd()];
        let mut argv_ptrs: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let (set_creds, uid, gid, groups) = match &self.creds {
            Some((u, g, gs)) => (true, *u, *g, gs.as_slice()),
            None => (false, 0, 0, &[][..]),
        };
        let err_fd = err_write.as_raw_fd();
        // The child waits on this pipe before execve: the daemon first checks that it
        // really is in the agent's cgroup. Whatever goes wrong, it never runs unconfined.
        let (go_read, go_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let go_fd = go_read.as_raw_fd();
        let landlock_fd: RawFd = self.landlock.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        let h = &self.hardening;
        let (binds, read_only): (Vec<[*const libc::c_char; 2]>, Vec<*const libc::c_char>) = match &h.view {
            Some((b, ro)) => (
                b.iter().map(|(s, t)| [s.as_ptr(), t.as_ptr()]).collect(),
                ro.iter().map(|r| r.as_ptr()).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let fprogs: Vec<libc::sock_fprog> = h
            .seccomp
            .iter()
            .flat_map(|p| p.filters.iter())
            .map(|f| libc::sock_fprog { len: f.len() as u16, filter: f.as_ptr() as *mut libc::sock_filter })
            .collect();
        let child_h = ChildRaw {
            unshare: if h.view.is_some() { libc::CLONE_NEWNS } else { 0 },
            binds: &binds,
            read_only: &read_only,
            drop_caps: h.drop_caps,
            filters: &fprogs,
        };

        let mut pidfd: RawFd = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(dir) = &self.placement.v2_dir {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
            // The cgroup namespace comes with the clone, made with the daemon's privileges
            // (inside the agent's cgroup the BPF LSM guard refuses CAP_SYS_ADMIN, which
            // unshare needs); born into the agent's cgroup, the child's namespace is rooted
            // there (cgroup_post_fork), for cgroup v2. v1 hierarchies, joined after the
            // clone, keep the daemon's as their namespace root.
            if self.hardening.cgroup_namespace {
                args.flags |= CLONE_NEWCGROUP;
            }
        }
        // SAFETY: clone3 with a zero stack behaves like fork: the child continues here on a
        // copy-on-write copy of this thread's stack. The child branch below only reads
        // memory prepared above, makes raw system calls and ends in execve or _exit, so it
        // never touches allocator or lock state copied from other threads.
        let ret = unsafe {
            libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>())
        };
        if ret == 0 {
            // SAFETY: see above; `child` never returns.
            unsafe {
                child(
                    stdio_raw,
                    self.controlling_tty,
                    set_creds,
                    uid,
                    gid,
                    groups,
                    &self.cwd,
                    &self.program,
                    &argv_ptrs,
                    &envp_ptrs,
                    err_fd,
                    go_fd,
                    landlock_fd,
                    &child_h,
                )
            }
        }
        if ret < 0 {
            return Err(SpawnError::Clone(std::io::Error::last_os_error()));
        }
        let pid = ret as i32;
        // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(err_write);
        drop(go_read);
        drop(stdio);
        let mut pipe = File::from(err_read);
        if let Err(e) = place(&self.placement, pid) {
            // Never let it run. If it had failed a step of its own already (and so could not
            // be moved), that failure is the one to report.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            drop(go_write);
            return Err(child_report(&mut pipe)?.unwrap_or(e));
        }
        // EPIPE here means the child has exited already, usually after reporting a failed
        // step: the report says why.
        let go = nix::unistd::write(&go_write, b"g");
        drop(go_write);
        let failure = match (child_report(&mut pipe)?, go) {
            (None, Ok(_)) => return Ok((pid, pidfd)),
            (Some(e), _) => e,
            (None, Err(e)) => SpawnError::Io(e.into()),
        };
        // The child failed before exec and has exited: reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        Err(failure)
    }
}

/// Moves the new process into the v1 hierarchies, then checks it is in the agent's cgroup
/// in every hierarchy.
fn place(placement: &Placement, pid: i32) -> Result<(), SpawnError> {
    use std::io::Write;
    for j in &placement.v1 {
        // One write(2) of the decimal pid, as cgroup.procs wants it.
        (&j.procs)
            .write_all(pid.to_string().as_bytes())
            .map_err(|source| SpawnError::JoinV1 { dir: j.dir.clone(), source })?;
    }
    if let Some(expected) = &placement.expect {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if let Some((hierarchy, found)) = expected.mismatch(&text) {
            return Err(SpawnError::Misplaced { hierarchy, expected: expected.path.clone(), found });
        }
    }
    Ok(())
}

/// What the child reported on the error pipe: None once it has executed (EOF, the pipe is
/// CLOEXEC) or died without a word.
fn child_report(pipe: &mut File) -> Result<Option<SpawnError>, SpawnError> {
    let mut report = [0u8; 8];
    let n = loop {
        match pipe.read(&mut report) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if n < report.len() {
        return Ok(None);
    }
    let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) as usize;
    let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
    Ok(Some(SpawnError::Child {
        step: STEPS.get(step).copied().unwrap_or("setup"),
        source: std::io::Error::from_raw_os_error(errno),
    }))
}

// linux/sched.h; libc's own constants are c_int, too narrow for CLONE_INTO_CGROUP.
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (linux/sched.h), version 2 (with `cgroup`, Linux 5.7+).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The hardening steps' inputs, as raw pointers into memory prepared before the clone.
struct ChildRaw<'a> {
    /// CLONE_NEWNS (the read-only cgroupfs view), or 0.
    unshare: libc::c_int,
    binds: &'a [[*const libc::c_char; 2]],
    read_only: &'a [*const libc::c_char],
    drop_caps: u64,
    filters: &'a [libc::sock_fprog],
}

// linux/mount.h, linux/seccomp.h, linux/capability.h: not all in the libc crate.
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
/// The kernel logs each refusal to the audit subsystem, where the daemon reads it.
const SECCOMP_FILTER_FLAG_LOG: libc::c_uint = 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct mount_attr`.
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The child between clone3 and execve.
///
/// # Safety
/// Must only be called in the child of `clone3`/`fork`, with every pointer valid.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    stdio: [RawFd; 3],
    controlling_tty: bool,
    set_creds: bool,
    uid: u32,
    gid: u32,
    groups: &[libc::gid_t],
    cwd: &CString,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err_fd: RawFd,
    go_fd: RawFd,
    landlock_fd: RawFd,
    h: &ChildRaw<'_>,
) -> ! {
    // SAFETY: (the whole body) raw system calls on fds and buffers prepared by the parent; on
    // any failure the step and errno go to the CLOEXEC pipe and the child exits.
    unsafe {
        let fail = |step: u32| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&step.to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(err_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        };
        if libc::setsid() < 0 {
            fail(step::SETSID);
        }
        for (target, &src) in stdio.iter().enumerate() {
            if libc::dup2(src, target as RawFd) < 0 {
                fail(step::STDIO);
            }
        }
        if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(step::CONTROLLING_TTY);
        }
        // Signals: dispositions the daemon ignores (SIGPIPE) would survive execve; the
        // mask would too. Give the program a clean slate.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // No go (the daemon found us outside the agent's cgroup, or died): never exec.
        // Waited for before the mount namespace: its binds name the agent's v1
        // directories, which the daemon joins the process to first.
        let mut go = 0u8;
        if libc::read(go_fd, (&mut go as *mut u8).cast(), 1) != 1 {
            libc::_exit(127);
        }
        if h.unshare != 0 && libc::unshare(h.unshare) < 0 {
            fail(step::UNSHARE);
        }
        if h.unshare & libc::CLONE_NEWNS != 0 {
            // Slave first: nothing mounted here may propagate to the host's namespace.
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) < 0
            {
                fail(step::ROOT_SLAVE);
            }
            for [src, dst] in h.binds {
                if libc::mount(*src, *dst, std::ptr::null(), libc::MS_BIND, std::ptr::null()) < 0 {
                    fail(step::MOUNT);
                }
            }
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                ..MountAttr::default()
            };
            for dir in h.read_only {
                if libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    *dir,
                    AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) < 0
                {
                    fail(step::MOUNT);
                }
            }
        }
        if h.drop_caps != 0 {
            // Before the credential switch: dropping from the bounding set needs
            // CAP_SETPCAP, which a switch to another uid takes away.
            for cap in 0..64 {
                // EINVAL: a capability this kernel does not know, which nobody can hold.
                if h.drop_caps & (1 << cap) != 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    fail(step::CAPABILITIES);
                }
            }
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 {
                fail(step::CAPABILITIES);
            }
            let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) < 0 {
                fail(step::CAPABILITIES);
            }
            for (i, d) in data.iter_mut().enumerate() {
                let keep = !((h.drop_caps >> (32 * i)) as u32);
                d.effective &= keep;
                d.permitted &= keep;
                d.inheritable &= keep;
            }
            if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) < 0 {
                fail(step::CAPABILITIES);
            }
        }
        if set_creds {
            // Raw syscalls: glibc's wrappers would try to sync the parent's other threads.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 {
                fail(step::SETGROUPS);
            }
            if libc::syscall(libc::SYS_setgid, gid) < 0 {
                fail(step::SETGID);
            }
            if libc::syscall(libc::SYS_setuid, uid) < 0 {
                fail(step::SETUID);
            }
        }
        // After the credential switch, so that nothing exec'ed from here on (setuid or
        // setcap binaries included) gains privileges; inherited across fork and exec.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(step::NO_NEW_PRIVS);
        }
        // Before chdir and exec: the program never runs outside the ruleset.
        if landlock_fd >= 0 && crate::adapters::landlock::restrict_self(landlock_fd) < 0 {
            fail(step::LANDLOCK);
        }
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(step::CHDIR);
        }
        // Last: the filter refuses the mount calls made above.
        for prog in h.filters {
            if libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_LOG, prog) < 0 {
                fail(step::SECCOMP);
            }
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(step::EXECVE)
    }
}

/// The program to execute: a name with a '/' as it is (relative to `cwd`), else the
/// first executable file of that name in `path` (the agent's own PATH, not the daemon's).
fn resolve(program: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = cwd.join(program);
        return Some(p);
    }
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    std::env::split_paths(OsStr::new(path))
        .map(|dir| if dir.is_absolute() { dir } else { cwd.join(dir) })
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Waits for the process behind `pidfd` to exit and reaps it.
pub async fn wait(pidfd: OwnedFd) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    // A pidfd becomes readable when its process exits.
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for its life.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
    let _ = afd.readable().await?;
    let pidfd = afd.get_ref();
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on our own child's pidfd, writing into `info`.
    let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled in a SIGCHLD siginfo, whose status fields these read.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    Ok(match code {
        libc::CLD_EXITED => std::process::ExitStatus::from_raw((status & 0xff) << 8),
        _ => std::process::ExitStatus::from_raw(status & 0x7f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error_chain;

    #[test]
    fn resolves_in_the_given_path_only() {
        let cwd = Path::new("/");
        assert_eq!(resolve("sh", Some("/nonexistent:/bin"), cwd), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("sh", Some("/nonexistent"), cwd), None);
        assert_eq!(resolve("./x", None, Path::new("/tmp")), Some(PathBuf::from("/tmp/./x")));
        assert_eq!(resolve("/bin/sh", Some(""), cwd), Some(PathBuf::from("/bin/sh")));
    }

    fn no_placement() -> Placement {
        Placement { v2_dir: None, v1: vec![], expect: None }
    }

    fn null() -> OwnedFd {
        File::open("/dev/null").unwrap().into()
    }

    /// Runs `argv` (with `creds`), returning its stdout and exit status.
    fn run(
        argv: &[&str],
        cwd: &str,
        placement: Placement,
        creds: Option<(u32, u32, Vec<u32>)>,
    ) -> Result<(String, i32), SpawnError> {
        let (r, w) = nix::unistd::pipe().unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let spawn = Spawn::new(
            &argv,
            &env,
            Path::new(cwd),
            [null(), w, null()],
            placement,
            creds,
            None,
            ChildHardening::default(),
        )?;
        let (pid, _pidfd) = spawn.start()?;
        let mut out = String::new();
        File::from(r).read_to_string(&mut out).unwrap();
        let status = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            other => panic!("{other:?}"),
        };
        Ok((out, status))
    }

    #[test]
    fn the_program_runs_with_no_new_privs() {
        let (out, status) =
            run(&["grep", "NoNewPrivs", "/proc/self/status"], "/", no_placement(), None).unwrap();
        assert_eq!((out.as_str(), status), ("NoNewPrivs:\t1\n", 0));
    }

    /// A program that never ran leaves no marker; the error names what failed.
    #[test]
    fn a_failed_placement_never_lets_the_program_run() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cmd = format!("touch {}", marker.display());
        // A cgroup.procs the daemon cannot write (opened read-only).
        let procs = tempfile::tempfile().unwrap().try_clone().unwrap();
        let ro = File::open(format!("/proc/self/fd/{}", procs.as_raw_fd())).unwrap();
        let v1 =
            vec![crate::adapters::cgroup::V1Join { dir: "/sys/fs/cgroup/memory/rush/x".into(), procs: ro }];
        let e = run(&["sh", "-c", &cmd], "/", Placement { v1, ..no_placement() }, None).unwrap_err();
        assert!(matches!(e, SpawnError::JoinV1 { .. }), "{e:?}");
        assert_eq!(e.to_string(), "cannot move the new process into /sys/fs/cgroup/memory/rush/x");
        // A process found outside the agent's cgroup.
        let expect =
            crate::adapters::cgroup::Expected { path: "/rush/nowhere".into(), v1_controllers: vec![] };
        let e = run(&["sh", "-c", &cmd], "/", Placement { expect: Some(expect), ..no_placement() }, None)
            .unwrap_err();
        assert!(e.to_string().contains("not in the agent's \"/rush/nowhere\""), "{e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!marker.exists(), "the program ran");
        // The child's own failures name their step.
        let file = marker.with_file_name("file");
        std::fs::write(&file, "").unwrap();
        let e = run(&["sh", "-c", &cmd], file.to_str().unwrap(), no_placement(), None).unwrap_err();
        assert_eq!(error_chain(&e), "chdir in the new process: Not a directory (os error 20)");
        assert!(!marker.exists(), "the program ran");
    }

    /// Root only: a setuid-root copy of `id`, run as nobody, stays nobody inside an agent
    /// (and, as the control, becomes root outside one).
    #[test]
    fn setuid_binaries_do_not_raise_privileges() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP: setuid_binaries_do_not_raise_privileges needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let id = dir.path().join("id");
        std::fs::copy("/usr/bin/id", &id).unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let id = id.to_str().unwrap();
        let nobody = 65534;
        // Another test's fork may hold our copy's write fd until it execs: ETXTBSY, retried.
        let busy = |e: &std::io::Error| e.raw_os_error() == Some(libc::ETXTBSY);
        let retry = |f: &mut dyn FnMut() -> Result<(String, i32), SpawnError>| loop {
            match f() {
                Err(SpawnError::Child { source, .. }) if busy(&source) => {}
                Err(SpawnError::Io(e)) if busy(&e) => {}
                r => break r.unwrap(),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let (outside, _) = retry(&mut || {
            let out = std::process::Command::new(id).arg("-u").uid(nobody).gid(nobody).output()?;
            Ok((String::from_utf8_lossy(&out.stdout).trim().to_owned(), 0))
        });
        if outside != "0" {
            use std::io::Write;
            let _ =
                writeln!(std::io::stderr(), "SKIP: setuid is not honoured under {}", dir.path().display());
            return;
        }
        let (out, status) =
            retry(&mut || run(&[id, "-u"], "/", no_placement(), Some((nobody, nobody, vec![]))));
        assert_eq!((out.trim(), status), ("65534", 0));
    }
}

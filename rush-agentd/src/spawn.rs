//! Starting an agent's first process directly inside its cgroup with
//! `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`.
//!
//! Written by hand because std's `Command` cannot pass `CLONE_INTO_CGROUP`, and the
//! alternative — the child writing itself into `cgroup.procs` before exec — is a cgroup
//! *migration*: it takes the global cgroup_threadgroup_rwsem for writing, which waits for an
//! RCU grace period (measured here: 7-11 ms per spawn). Born in its cgroup, the child
//! is never anywhere else, and the only migrations left are into v1 controller hierarchies
//! on hybrid hosts, which `CLONE_INTO_CGROUP` cannot reach.
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

use crate::cgroup::Placement;

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
        "the new process is in cgroup {found:?}, not in the agent's {expected:?}: refusing to let it run"
    )]
    Misplaced { expected: String, found: String },
    #[error("{step} in the new process")]
    Child { step: &'static str, source: std::io::Error },
    #[error("cannot prepare the new process")]
    Io(#[from] std::io::Error),
}

/// Steps of the child, reported back by index through the error pipe.
const STEPS: [&str; 8] =
    ["joining v1 cgroups", "setsid", "setting up stdio", "setgroups", "setgid", "setuid", "chdir", "execve"];

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
        })
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
        let v1_raw: Vec<RawFd> = self.placement.v1_procs.iter().map(|f| f.as_raw_fd()).collect();
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
                    &v1_raw,
                    stdio_raw,
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
        if let Some(expected) = &self.placement.expect_v2 {
            let found = crate::cgroup::process_cgroup_v2(pid).unwrap_or_default();
            if &found != expected {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                return Err(SpawnError::Misplaced { expected: expected.clone(), found });
            }
        }
        nix::unistd::write(&go_write, b"g").map_err(std::io::Error::from)?;
        drop(go_write);
        let mut report = [0u8; 8];
        let mut pipe = File::from(err_read);
        let n = loop {
            match pipe.read(&mut report) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok((pid, pidfd));
        }
        // The child failed before exec and has exited: reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) as usize;
        let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
        Err(SpawnError::Child {
            step: STEPS.get(step).copied().unwrap_or("setup"),
            source: std::io::Error::from_raw_os_error(errno),
        })
    }
}

// linux/sched.h; libc's own constants are c_int, too narrow for CLONE_INTO_CGROUP.
const CLONE_PIDFD: u64 = 0x1000;
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

/// The child between clone3 and execve.
///
/// # Safety
/// Must only be called in the child of `clone3`/`fork`, with every pointer valid.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    v1_procs: &[RawFd],
    stdio: [RawFd; 3],
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
) -> ! {
    // SAFETY (whole body): raw system calls on fds and buffers prepared by the parent; on
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
        for &fd in v1_procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(0);
            }
        }
        if libc::setsid() < 0 {
            fail(1);
        }
        for (target, &src) in stdio.iter().enumerate() {
            if libc::dup2(src, target as RawFd) < 0 {
                fail(2);
            }
        }
        // Signals: dispositions the daemon ignores (SIGPIPE) would survive execve; the
        // mask would too. Give the program a clean slate.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if set_creds {
            // Raw syscalls: glibc's wrappers would try to sync the parent's other threads.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 {
                fail(3);
            }
            if libc::syscall(libc::SYS_setgid, gid) < 0 {
                fail(4);
            }
            if libc::syscall(libc::SYS_setuid, uid) < 0 {
                fail(5);
            }
        }
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(6);
        }
        // No go (the daemon found us outside the agent's cgroup, or died): never exec.
        let mut go = 0u8;
        if libc::read(go_fd, (&mut go as *mut u8).cast(), 1) != 1 {
            libc::_exit(127);
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(7)
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

    #[test]
    fn resolves_in_the_given_path_only() {
        let cwd = Path::new("/");
        assert_eq!(resolve("sh", Some("/nonexistent:/bin"), cwd), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("sh", Some("/nonexistent"), cwd), None);
        assert_eq!(resolve("./x", None, Path::new("/tmp")), Some(PathBuf::from("/tmp/./x")));
        assert_eq!(resolve("/bin/sh", Some(""), cwd), Some(PathBuf::from("/bin/sh")));
    }
}

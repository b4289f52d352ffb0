//! `rush session attach` and `rush session detach`: a shell bound to a session. The
//! binding a shell sees is RUSH_SESSION in its environment (every session command's
//! default); the daemon keeps the attachment itself (shell pid, uid, terminal, time) so
//! that `session show` lists who is attached, and the working directory saved on detach.

use std::ffi::CString;
use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, execve, fork, getppid, pipe2, read, write};
use rush_proto::client::ClientError;
use rush_proto::{AgentName, ErrorKind, SessionInfo, SessionRef};

use super::Ctx;
use super::session::{env_session, shell_cwd};
use crate::error::{Error, Result};
use crate::render::shell_quote;

fn by_name(name: &str) -> SessionRef {
    SessionRef { name: Some(name.to_owned()), cwd: None }
}

/// Our terminal (stdin's), when we have one: also inside `$(...)`, whose stdout is a pipe.
fn tty() -> Option<String> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    std::fs::read_link("/proc/self/fd/0").ok().map(|p| p.to_string_lossy().into_owned())
}

/// Where an attached shell starts: the saved working directory while it exists, else the
/// workspace.
fn start_dir(s: &SessionInfo) -> PathBuf {
    match &s.cwd {
        Some(c) if c.is_dir() => c.clone(),
        Some(c) => {
            eprintln!(
                "rush: session {}'s working directory {} is gone; starting in its workspace",
                s.name,
                c.display()
            );
            s.workspace.clone()
        }
        None => s.workspace.clone(),
    }
}

fn attach_call(ctx: &Ctx, name: &str, pid: i32) -> Result<(SessionInfo, rush_proto::Attachment)> {
    Ok(ctx.connect()?.attach_session(by_name(name), pid, tty())?)
}

pub fn attach(ctx: &mut Ctx, name: &AgentName, print: bool) -> Result<u8> {
    let name = name.as_str();
    if print {
        // The shell that runs `eval "$(rush session attach NAME --print)"` is our parent:
        // shells exec the last command of a command substitution without another fork.
        let (session, attachment) = attach_call(ctx, name, getppid().as_raw())?;
        let dir = start_dir(&session);
        if ctx.out.json {
            ctx.out.document(&serde_json::json!({
                "session": session.name, "dir": dir, "attachment": attachment
            }))?;
        } else {
            ctx.out.text(&format!(
                "export RUSH_SESSION={}\ncd {}\n",
                shell_quote(&session.name),
                shell_quote(&dir.to_string_lossy())
            ))?;
        }
        return Ok(0);
    }
    subshell(ctx, name)
}

/// An interactive shell attached to the session; detached when it exits.
fn subshell(ctx: &mut Ctx, name: &str) -> Result<u8> {
    let session = ctx.connect()?.show_session(by_name(name))?.session;
    let dir = start_dir(&session);
    let shell = std::env::var_os("SHELL").filter(|s| !s.is_empty()).unwrap_or_else(|| "/bin/sh".into());
    // The attachment names the subshell (our child): `rush session detach` run in it finds
    // it as its parent. The shell is held before exec until the daemon has recorded it, so
    // nothing it runs can see the session without its own attachment.
    let held = HeldChild::fork(
        Path::new(&shell),
        &dir,
        &[("RUSH_SESSION", name.as_ref()), ("PWD", dir.as_os_str())],
    )
    .with_context(|| format!("cannot start the shell {}", Path::new(&shell).display()))?;
    let pid = held.pid.as_raw();
    if let Err(e) = attach_call(ctx, name, pid) {
        held.abandon();
        return Err(e);
    }
    let child = match held.release() {
        Ok(c) => c,
        Err(e) => {
            let _ = ctx.connect()?.detach_session(by_name(name), pid, None);
            return Err(Error::from(
                anyhow::Error::from(e)
                    .context(format!("cannot start the shell {}", Path::new(&shell).display())),
            ));
        }
    };
    eprintln!("rush: shell {pid} attached to session {name} in {}; `exit` to detach", dir.display());
    // Ctrl-C and Ctrl-\ are the shell's (it is in our process group, so the terminal
    // signals us too): we wait for it whatever it does with them.
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code; the shell is already exec'd, so its own
        // dispositions are untouched.
        unsafe { signal(sig, SigHandler::SigIgn) }.context("cannot ignore SIGINT/SIGQUIT")?;
    }
    let status = child.wait()?;
    match ctx.connect()?.detach_session(by_name(name), pid, None) {
        Ok(_) => eprintln!("rush: shell {pid} detached from session {name}"),
        // `rush session detach` in the shell did it already.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => {}
        Err(e) => eprintln!("rush: warning: shell {pid} not detached: {e}"),
    }
    Ok(status)
}

/// A forked child held before `execve` until the parent releases it. Written by hand because
/// `std::process::Command` waits for the exec to happen inside `spawn`, so a child cannot be
/// held there until its pid has been recorded elsewhere.
struct HeldChild {
    pid: Pid,
    go: OwnedFd,
    exec_error: OwnedFd,
}

/// The released child.
struct Shell(Pid);

impl HeldChild {
    fn fork(program: &Path, dir: &Path, set: &[(&str, &std::ffi::OsStr)]) -> std::io::Result<HeldChild> {
        // Everything the child needs is allocated before fork: after it, only
        // async-signal-safe calls (read, chdir, execve, write, _exit).
        let c =
            |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
        let path = c(program.as_os_str().as_bytes())?;
        let cdir = c(dir.as_os_str().as_bytes())?;
        let argv = [path.clone()];
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !set.iter().any(|(s, _)| k.as_bytes() == s.as_bytes()))
            .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<std::io::Result<_>>()?;
        for (k, v) in set {
            env.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the child only calls async-signal-safe functions (read, chdir, execve,
        // write, _exit) on memory allocated before the fork.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(go_write);
                drop(err_read);
                let mut b = [0u8; 1];
                // EOF without a byte: the parent gave up (or died); never run the shell.
                if !matches!(read(&go_read, &mut b), Ok(1)) {
                    // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
                    unsafe { libc::_exit(127) }
                }
                let errno = match chdir(cdir.as_c_str()) {
                    Err(e) => e,
                    Ok(()) => execve(&path, &argv, &env).unwrap_err(),
                };
                let _ = write(&err_write, &(errno as i32).to_ne_bytes());
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => Ok(HeldChild { pid: child, go: go_write, exec_error: err_read }),
        }
    }

    /// Lets the child exec; Err with the reason when chdir or exec failed (the child is reaped).
    fn release(self) -> std::io::Result<Shell> {
        let HeldChild { pid, go, exec_error } = self;
        write(&go, &[1])?;
        drop(go);
        let mut errno = [0u8; 4];
        // EOF: the exec closed the pipe (CLOEXEC), so the shell runs.
        match read(&exec_error, &mut errno) {
            Ok(4) => {
                let _ = waitpid(pid, None);
                Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
            }
            _ => Ok(Shell(pid)),
        }
    }

    /// The child never execs: closing the pipe makes it exit; it is reaped here.
    fn abandon(self) {
        let pid = self.pid;
        drop(self);
        let _ = waitpid(pid, None);
    }
}

impl Shell {
    /// The shell's exit code, or 128 + the signal that ended it.
    fn wait(self) -> Result<u8> {
        loop {
            match waitpid(self.0, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok((128 + sig as i32) as u8),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Error::from(
                        anyhow::Error::from(e).context("waiting for the attached shell"),
                    ));
                }
            }
        }
    }
}

/// Whether our parent shell is a subshell started by `rush session attach` (a rush).
fn in_attach_subshell() -> bool {
    let ppid = getppid().as_raw();
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{ppid}/stat")) else { return false };
    let Some(grandparent) = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)) else {
        return false;
    };
    let exe = std::fs::read_link(format!("/proc/{grandparent}/exe")).ok();
    exe.is_some() && exe == std::env::current_exe().ok()
}

pub fn detach(ctx: &mut Ctx, session: Option<&AgentName>, print: bool) -> Result<u8> {
    let name = match session.map(|s| s.to_string()) {
        Some(n) => n,
        None => env_session()?.ok_or_else(|| {
            Error::from(anyhow!(
                "not attached: RUSH_SESSION is not set and no --session given (attach with \
                 `rush session attach NAME`)"
            ))
        })?,
    };
    let cwd = shell_cwd();
    let (name, cwd) = ctx.connect()?.detach_session(by_name(&name), getppid().as_raw(), cwd)?;
    let report = format!(
        "detached from session {name}; it will start in {}",
        cwd.as_deref().map(|c| c.display().to_string()).unwrap_or_else(|| "its workspace".into())
    );
    if print {
        eprintln!("rush: {report}");
        ctx.out.text("unset RUSH_SESSION\n")?;
        return Ok(0);
    }
    if ctx.out.json {
        ctx.out.document(&serde_json::json!({ "session": name, "cwd": cwd }))?;
    } else {
        ctx.out.text(&format!("{report}\n"))?;
    }
    if in_attach_subshell() {
        eprintln!("rush: this shell was started by `rush session attach`: `exit` to leave it");
    } else if std::env::var_os("RUSH_SESSION").is_some_and(|s| !s.is_empty()) {
        eprintln!(
            "rush: RUSH_SESSION is still set in this shell: `unset RUSH_SESSION` (`eval \"$(rush session \
             detach --print)\"` does both)"
        );
    }
    Ok(0)
}

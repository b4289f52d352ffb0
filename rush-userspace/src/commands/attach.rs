//! `rush session attach` and `rush session detach`: a shell bound to a session. The
//! binding a shell sees is RUSH_SESSION in its environment (every session command's
//! default); the daemon keeps the attachment itself (shell pid, uid, terminal, time) so
//! that `session show` lists who is attached, and the working directory saved on detach.

use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::unistd::getppid;
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
    let mut child = Command::new(&shell)
        .current_dir(&dir)
        .env("RUSH_SESSION", name)
        .env("PWD", &dir)
        .spawn()
        .with_context(|| format!("cannot start the shell {}", Path::new(&shell).display()))?;
    // The attachment names the subshell (our child): `rush session detach` run in it finds
    // it as its parent.
    let pid = child.id() as i32;
    if let Err(e) = attach_call(ctx, name, pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    eprintln!("rush: shell {pid} attached to session {name} in {}; `exit` to detach", dir.display());
    // Ctrl-C and Ctrl-\ are the shell's (it is in our process group, so the terminal
    // signals us too): we wait for it whatever it does with them.
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code; the shell is already exec'd, so its own
        // dispositions are untouched.
        unsafe { signal(sig, SigHandler::SigIgn) }.context("cannot ignore SIGINT/SIGQUIT")?;
    }
    let status = child.wait().context("waiting for the attached shell")?;
    match ctx.connect()?.detach_session(by_name(name), pid, None) {
        Ok(_) => eprintln!("rush: shell {pid} detached from session {name}"),
        // `rush session detach` in the shell did it already.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => {}
        Err(e) => eprintln!("rush: warning: shell {pid} not detached: {e}"),
    }
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)) as u8)
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

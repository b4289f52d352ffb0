//! `rush agent spawn`: foreground (the agent gets our terminal) or detached.

use std::io::{self, IsTerminal};
use std::os::fd::AsFd;

use anyhow::{Context, anyhow};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::termios::{self, SetArg, Termios};
use rush_proto::client::ClientError;
use rush_proto::{AgentName, SpawnRequest, StdioMode};

use super::Ctx;
use crate::cli::{SpawnArgs, SpawnOptions};
use crate::error::Result;
use crate::render::sanitize;

/// rush's exit status when Ctrl-C ends a foreground spawn (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// The home of the user running rush ($HOME), where a profile's `~` points.
pub fn home() -> Result<std::path::PathBuf> {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(h.into()),
        None => Err(anyhow!("HOME is not set: a profile's ~ has nowhere to point").into()),
    }
}

pub fn spawn(ctx: &mut Ctx, args: SpawnArgs) -> Result<u8> {
    if args.visible {
        return visible(ctx, args);
    }
    let terminal = if args.tty {
        Some(true)
    } else if args.no_tty {
        Some(false)
    } else {
        None
    };
    let mut request = build_request(&args.name, args.opts, args.command, terminal, args.detach)?;
    request.restartable = args.restartable;
    if args.workspace {
        in_workspace(ctx, &mut request, args.from, args.no_state)?;
    }
    let tty = request.stdio == StdioMode::Tty;
    match (args.detach, tty) {
        (true, _) => detached(ctx, request),
        (false, true) => on_terminal(ctx, request),
        (false, false) => run_foreground(ctx, request),
    }
}

/// The request spawning agent `name`, as `rush agent spawn` makes it and `rush agent
/// delegate --spawn` reuses: `opts` with its profile applied (which may create directories
/// the profile names), our environment and working directory, and the session from
/// --session or $RUSH_SESSION. `terminal`: --tty (`Some(true)`) or --no-tty
/// (`Some(false)`); a terminal of its own otherwise when the profile asks for one or, in
/// the foreground, when we run on one.
pub fn build_request(
    name: &AgentName,
    mut opts: SpawnOptions,
    mut command: Vec<String>,
    terminal: Option<bool>,
    detach: bool,
) -> Result<SpawnRequest> {
    let cwd =
        std::env::current_dir().context("cannot read the current directory, where the agent would start")?;
    let mut env = environment();
    let mut profile_tty = None;
    if let Some(profile) = &opts.profile {
        let applied = crate::profile::Profile::load(profile)?.apply(&crate::profile::ApplyInputs {
            workspace: cwd.clone(),
            home: home()?,
            net: opts.net.take(),
            budget: opts.budget.take(),
            allow: std::mem::take(&mut opts.allow),
            tty: terminal,
            command: std::mem::take(&mut command),
        })?;
        if applied.command.is_empty() {
            return Err(anyhow!("profile {profile} names no command: give one after --").into());
        }
        crate::profile::create_dirs(&applied)?;
        for (k, v) in &applied.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        (opts.net, opts.budget, opts.allow, command) =
            (applied.net, applied.budget, applied.allow, applied.command);
        profile_tty = Some(applied.tty);
    }
    // A terminal of its own: asked for (or by the profile, where there is one to attach or
    // it runs detached), or a foreground spawn from a terminal.
    let from_terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
    let forced = terminal == Some(true);
    let tty = match profile_tty {
        Some(t) => t && (detach || from_terminal || forced),
        None => forced || (terminal.is_none() && !detach && from_terminal),
    };
    Ok(SpawnRequest {
        name: name.to_string(),
        command,
        net: opts.net,
        trust: opts.trust,
        budget: opts.budget.unwrap_or_default(),
        allow: opts.allow,
        env,
        cwd,
        stdio: match (tty, detach) {
            (true, _) => StdioMode::Tty,
            (false, true) => StdioMode::Log,
            (false, false) => StdioMode::Passed,
        },
        tty_size: tty.then(|| super::terminal::stdout_size().unwrap_or_default()),
        allow_unconfined: opts.allow_unconfined,
        // An attached shell's agents belong to its session.
        session: match opts.session {
            Some(s) => Some(s.to_string()),
            None => super::session::env_session()?,
        },
        restartable: false,
        hardlinks: opts.hardlinks,
        user: opts.user,
    })
}

/// A foreground agent on its own terminal: spawned, then attached to.
fn on_terminal(ctx: &mut Ctx, request: SpawnRequest) -> Result<u8> {
    let agent = ctx.connect()?.spawn(request)?;
    let keys = rush_proto::terminal::parse_detach_keys(rush_proto::terminal::DEFAULT_DETACH_KEYS)
        .expect("the default detach keys parse");
    super::terminal::attach(ctx, &agent.name, rush_proto::terminal::AttachMode::Write, &keys)
}

/// Our environment, as the agent gets it. The protocol carries UTF-8 only; a variable
/// that is not valid UTF-8 is left out.
fn environment() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// `--visible`: detached on a terminal of its own, then `rush top` focused on it.
fn visible(ctx: &mut Ctx, args: SpawnArgs) -> Result<u8> {
    let mut request = build_request(&args.name, args.opts, args.command, Some(true), true)?;
    request.restartable = args.restartable;
    if args.workspace {
        in_workspace(ctx, &mut request, args.from, args.no_state)?;
    }
    let agent = ctx.connect()?.spawn(request)?;
    for what in &agent.unconfined {
        eprintln!("rush: UNCONFINED {}", sanitize(what));
    }
    let opts = crate::top::Options {
        agent: Some(agent.name.clone()),
        refresh: std::time::Duration::from_secs(1),
        plain: false,
        iterations: 0,
    };
    crate::top::run(ctx, opts)
}

fn detached(ctx: &mut Ctx, request: SpawnRequest) -> Result<u8> {
    let agent = ctx.connect()?.spawn(request)?;
    if ctx.out.json {
        ctx.out.document(&agent)?;
    } else {
        let name = sanitize(&agent.name);
        let see = if agent.tty { "terminal: rush agent attach" } else { "output: rush agent logs" };
        ctx.out.text(&format!(
            "spawned {name} (pid {}, cgroup id {}); {see} {name}\n",
            agent.pid, agent.cgroup_id
        ))?;
        for what in &agent.unconfined {
            ctx.out.text(&format!("UNCONFINED {}\n", sanitize(what)))?;
        }
    }
    Ok(0)
}

/// Hands our stdin, stdout and stderr to the agent, waits for it, and returns its status.
/// Prints nothing: the terminal is the agent's. The connection staying open is what keeps
/// the agent alive: when rush dies, the daemon kills the agent.
pub(super) fn run_foreground(ctx: &mut Ctx, request: SpawnRequest) -> Result<u8> {
    let name = request.name.clone();
    let terminal = SavedTerminal::save();
    let mut client = ctx.connect()?;
    exit_on_sigint()?;
    // Rust's runtime makes sure fds 0-2 are open (on /dev/null if they were closed).
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let (id, _agent) = client.spawn_foreground(request, &stdio)?;
    let status = match client.exited(id) {
        Ok(status) => status,
        Err(ClientError::Closed) => {
            return Err(anyhow!(
                "the daemon closed the connection before agent {name} exited \
                 (see `rush agent status {name}`)"
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    if status.signal.is_some() {
        // A killed agent may have left the terminal raw or without echo.
        terminal.restore();
    }
    // What a shell would see: exit(n) keeps the low 8 bits.
    Ok((status.shell_code() & 0xff) as u8)
}

extern "C" fn exit_interrupted(_: libc::c_int) {
    // SAFETY: _exit(2) is async-signal-safe and ends the process without running any
    // code of ours.
    unsafe { libc::_exit(INTERRUPTED) }
}

/// Ctrl-C ends rush at once with status 130; closing our connection makes the daemon kill
/// the agent. (The agent is not in our process group, so the terminal signals only us.)
fn exit_on_sigint() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(exit_interrupted), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only calls _exit(2), which is async-signal-safe, and touches no
    // state of this program.
    unsafe { sigaction(Signal::SIGINT, &action) }.context("cannot install a SIGINT handler")?;
    Ok(())
}

/// The terminal's settings before the agent ran, when stdin is a terminal.
struct SavedTerminal(Option<Termios>);

impl SavedTerminal {
    fn save() -> SavedTerminal {
        let stdin = io::stdin();
        SavedTerminal(if stdin.is_terminal() { termios::tcgetattr(stdin.as_fd()).ok() } else { None })
    }

    fn restore(&self) {
        let Some(saved) = &self.0 else { return };
        let stdin = io::stdin();
        // Only as the terminal's foreground process group: from the background,
        // tcsetattr would stop us with SIGTTOU.
        if nix::unistd::tcgetpgrp(stdin.as_fd()).ok() == Some(nix::unistd::getpgrp()) {
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

/// `--workspace`: the agent starts in its worktree with the workspace's tokens.
fn in_workspace(
    ctx: &mut Ctx,
    request: &mut SpawnRequest,
    from: Option<String>,
    no_state: bool,
) -> Result<()> {
    let w = super::workspace::for_spawn(ctx, &request.name, &request.cwd, from, no_state)?;
    request.cwd = w.path.clone();
    request.env.retain(|(k, _)| k != "PWD");
    request.env.push(("PWD".into(), w.path.display().to_string()));
    request.allow.extend(w.grants);
    Ok(())
}

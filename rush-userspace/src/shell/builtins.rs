//! Rush inside the shell: `rush ...` is a builtin. The verbs that change the shell itself
//! (`checkpoint`, `rollback`, `session attach`, `session detach`) run in the shell's
//! process on its state; every other verb runs the command-line client in a forked copy of
//! the shell (no exec, no PATH lookup) with the shell's cwd, exported variables and the
//! builtin's redirections, so `rush agent spawn` inherits them as it would from bash and
//! the client's exits and prints cannot disturb the shell.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::AsRawFd;

use brush_core::builtins::{ContentOptions, ContentType, Registration};
use brush_core::{ExecutionContext, ExecutionResult};
use clap::Parser;
use rush_proto::client::Client;
use rush_proto::{AgentName, SessionRef, ShellState};

use super::perf::PerfStore;
use super::{Ext, Fut, Shell, session_file_name, state, var_string};
use crate::cli::{Cli, Command, SessionCommand};

/// The session key an attached shell's state is kept under between detach and attach.
pub const SHELL_STATE_KEY: &str = "rush.shell";

/// brush's own `alias` and `kill`, which our wrappers call.
static ALIAS: std::sync::OnceLock<Registration<Ext>> = std::sync::OnceLock::new();
static KILL: std::sync::OnceLock<Registration<Ext>> = std::sync::OnceLock::new();

pub fn register(shell: &mut Shell) {
    for (name, slot, wrapper) in [
        ("alias", &ALIAS, alias_builtin as brush_core::builtins::CommandExecuteFunc<Ext>),
        ("kill", &KILL, kill_builtin),
    ] {
        if let Some(orig) = shell.builtins().get(name).cloned() {
            let mut wrapped = orig.clone();
            wrapped.execute_func = wrapper;
            let _ = slot.set(orig);
            shell.register_builtin(name, wrapped);
        }
    }
    for (name, f) in [
        ("rush", rush_builtin as brush_core::builtins::CommandExecuteFunc<Ext>),
        ("__rush_complete", complete_builtin),
        ("disown", disown_builtin),
    ] {
        shell.register_builtin(
            name,
            Registration {
                execute_func: f,
                content_func: help,
                disabled: false,
                special_builtin: false,
                declaration_builtin: false,
            },
        );
    }
}

/// `complete -C`: Rush's verbs and options, from the client's own definition.
pub async fn install_completion(shell: &mut Shell) {
    let params = shell.default_exec_params();
    let _ = shell
        .run_string(
            "complete -C __rush_complete rush".to_owned(),
            &brush_core::SourceInfo::from("rush"),
            &params,
        )
        .await;
}

fn help(name: &str, _t: ContentType, _o: &ContentOptions) -> Result<String, brush_core::Error> {
    Ok(match name {
        "rush" => "rush SUBCOMMAND ...: Rush's verbs, run in the shell (see `rush --help`)\n".into(),
        "disown" => "disown [-h] [-ar] [JOBSPEC ... | PID ...]: remove jobs from the job table\n".into(),
        _ => format!("{name}: completes Rush's verbs for the line editor\n"),
    })
}

fn words(args: &[brush_core::CommandArg]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn rush_builtin(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> Fut<'_> {
    Box::pin(async move {
        let mut words = words(&args);
        // `rush`, `rush -c ...`, `rush script`: another shell, a new process as from bash.
        let os: Vec<OsString> = words.iter().skip(1).map(OsString::from).collect();
        if super::wants_shell(&os) {
            return Ok(ExecutionResult::new(run_forked(&ctx, &words, Run::Shell).await));
        }
        // The daemon this shell talks to is the shell's RUSH_SOCKET (clap would read the
        // process's environment, which `export` in the shell does not change).
        if !words.iter().any(|w| w == "--socket" || w.starts_with("--socket="))
            && let Some(socket) = var_string(ctx.shell, "RUSH_SOCKET").filter(|s| !s.is_empty())
        {
            words.insert(1, format!("--socket={socket}"));
        }
        if let Ok(cli) = Cli::try_parse_from(&words) {
            let json = cli.json;
            let socket = cli.socket.clone();
            let outcome = match cli.command {
                Command::Checkpoint(a) => Some(checkpoint(
                    ctx.shell,
                    &socket,
                    a.session.session.as_ref(),
                    &a.name,
                    a.with_processes,
                )),
                Command::Rollback(a) => {
                    Some(rollback(ctx.shell, &socket, a.session.session.as_ref(), &a.name).await)
                }
                Command::Session(SessionCommand::Attach { name, print: false }) => {
                    Some(attach(ctx.shell, &socket, &name).await)
                }
                Command::Session(SessionCommand::Detach { session, print: false }) => {
                    Some(detach(ctx.shell, &socket, session.as_ref()))
                }
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Ok(match outcome {
                    Ok(report) => {
                        let mut out = ctx.stdout();
                        let _ = if json {
                            writeln!(
                                out,
                                "{}",
                                serde_json::to_string_pretty(&report.json).expect("serializes")
                            )
                        } else {
                            out.write_all(report.text.as_bytes())
                        };
                        let mut err = ctx.stderr();
                        for n in &report.notes {
                            let _ = writeln!(err, "rush: {n}");
                        }
                        ExecutionResult::success()
                    }
                    Err(e) => {
                        let mut err = ctx.stderr();
                        for line in e.lines() {
                            let _ = writeln!(err, "rush: {line}");
                        }
                        ExecutionResult::new(e.exit_code())
                    }
                });
            }
        }
        Ok(ExecutionResult::new(run_forked(&ctx, &words, Run::Client).await))
    })
}

/// What a native verb says: text for a person, JSON for scripts, notes on stderr.
struct Report {
    text: String,
    json: serde_json::Value,
    notes: Vec<String>,
}

type Outcome = crate::error::Result<Report>;

fn session_of(shell: &Shell, named: Option<&AgentName>) -> SessionRef {
    let name =
        named.map(|n| n.to_string()).or_else(|| var_string(shell, "RUSH_SESSION").filter(|s| !s.is_empty()));
    SessionRef { name, cwd: Some(shell.working_dir().to_path_buf()) }
}

fn client(socket: &std::path::Path) -> crate::error::Result<Client> {
    Ok(Client::connect(socket)?)
}

fn baseline(shell: &Shell) -> Vec<rush_proto::PerfSeries> {
    PerfStore::path_for(&session_file_name(shell))
        .and_then(|p| PerfStore::load(&p).ok())
        .map(|s| s.baseline())
        .unwrap_or_default()
}

fn checkpoint(
    shell: &mut Shell,
    socket: &std::path::Path,
    session: Option<&AgentName>,
    name: &AgentName,
    with_processes: bool,
) -> Outcome {
    let saved = state::capture(shell, baseline(shell));
    let c =
        client(socket)?.checkpoint(session_of(shell, session), name.as_str(), with_processes, Some(saved))?;
    Ok(Report {
        text: crate::render::checkpoint_line(&c),
        json: serde_json::to_value(&c).expect("serializes"),
        notes: Vec::new(),
    })
}

/// Applies a saved state and its baseline; notes on what could not be.
async fn restore(shell: &mut Shell, saved: &ShellState) -> Vec<String> {
    let mut notes = state::apply(shell, saved).await;
    if let Some(path) = PerfStore::path_for(&session_file_name(shell)) {
        let replaced = PerfStore::load(&path).and_then(|mut s| s.replace(&saved.perf));
        if let Err(e) = replaced {
            notes.push(format!("the performance baseline was not restored: {e}"));
        }
        super::perf::records_replaced();
    }
    if !saved.jobs.is_empty() {
        notes.push(format!("jobs then (their processes are not restored): {}", saved.jobs.join("; ")));
    }
    notes
}

async fn rollback(
    shell: &mut Shell,
    socket: &std::path::Path,
    session: Option<&AgentName>,
    name: &AgentName,
) -> Outcome {
    let r = client(socket)?.rollback(session_of(shell, session), name.as_str())?;
    let mut text = crate::render::rollback_report(&r);
    let mut notes = Vec::new();
    match &r.shell {
        Some(saved) => {
            notes = restore(shell, saved).await;
            text += &format!(
                "shell restored: {} variables, {} aliases, {} functions, {} options{}\n",
                saved.env.len(),
                saved.aliases.len(),
                saved.functions.len(),
                saved.options.len(),
                saved.cwd.as_ref().map(|c| format!(", cwd {}", c.display())).unwrap_or_default()
            );
        }
        None => notes.push(format!("checkpoint {} saved no shell state", r.checkpoint.name)),
    }
    Ok(Report { text, json: serde_json::to_value(&r).expect("serializes"), notes })
}

/// An interactive shell started with RUSH_SESSION set is attached to it, its saved state
/// restored (as `rush session attach` in the shell would); said only when it fails.
pub async fn attach_at_start(shell: &mut Shell) {
    let Some(name) = var_string(shell, "RUSH_SESSION").filter(|s| !s.is_empty()) else { return };
    let name: AgentName = match name.parse() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("rush: RUSH_SESSION={name:?}: {e}; not attached");
            return;
        }
    };
    let socket = var_string(shell, "RUSH_SOCKET")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| rush_proto::DEFAULT_SOCKET.to_owned());
    match attach(shell, std::path::Path::new(&socket), &name).await {
        Ok(report) => {
            for n in report.notes {
                eprintln!("rush: {n}");
            }
        }
        Err(e) => eprintln!("rush: session {name}: not attached: {}", e.lines().join("; ")),
    }
}

async fn attach(shell: &mut Shell, socket: &std::path::Path, name: &AgentName) -> Outcome {
    let mut c = client(socket)?;
    let by_name = SessionRef { name: Some(name.to_string()), cwd: None };
    let tty = std::fs::read_link("/proc/self/fd/0").ok().map(|p| p.to_string_lossy().into_owned());
    let (session, attachment) = c.attach_session(by_name.clone(), std::process::id() as i32, tty)?;
    let saved: Option<ShellState> = match c.session_get(by_name, Some(SHELL_STATE_KEY.into())) {
        Ok((_, pairs)) => pairs.first().and_then(|kv| serde_json::from_str(&kv.value).ok()),
        Err(_) => None,
    };
    let _ = shell.save_history();
    set_var(shell, "RUSH_SESSION", name.as_str());
    let mut notes = Vec::new();
    if let Some(saved) = &saved {
        notes = restore(shell, saved).await;
        // The session's own name wins over whatever the saved environment said.
        set_var(shell, "RUSH_SESSION", name.as_str());
    }
    let dir = match session.cwd.as_ref().filter(|c| c.is_dir()) {
        Some(c) => c.clone(),
        None => session.workspace.clone(),
    };
    if let Err(e) = shell.set_working_dir(&dir) {
        notes.push(format!("cannot enter {}: {e}", dir.display()));
    }
    switch_history(shell, name.as_str());
    Ok(Report {
        text: format!(
            "attached to session {} in {}{}\n",
            session.name,
            dir.display(),
            if saved.is_some() { "; its shell state restored" } else { "" }
        ),
        json: serde_json::json!({ "session": session.name, "dir": dir, "attachment": attachment, "restored": saved.is_some() }),
        notes,
    })
}

fn detach(shell: &mut Shell, socket: &std::path::Path, session: Option<&AgentName>) -> Outcome {
    let name = match session
        .map(|s| s.to_string())
        .or_else(|| var_string(shell, "RUSH_SESSION").filter(|s| !s.is_empty()))
    {
        Some(n) => n,
        None => {
            return Err(
                anyhow::anyhow!("not attached: RUSH_SESSION is not set and no --session given").into()
            );
        }
    };
    let by_name = SessionRef { name: Some(name.clone()), cwd: None };
    let saved = state::capture(shell, baseline(shell));
    let value = serde_json::to_string(&saved).expect("serializes");
    let mut c = client(socket)?;
    let mut notes = Vec::new();
    match rush_proto::session::check_value(SHELL_STATE_KEY, &value) {
        Ok(()) => {
            c.session_set(by_name.clone(), SHELL_STATE_KEY.into(), value)?;
        }
        Err(e) => notes.push(format!("the shell state was not saved ({e}): only the cwd was")),
    }
    let (name, cwd) =
        c.detach_session(by_name, std::process::id() as i32, Some(shell.working_dir().to_path_buf()))?;
    let _ = shell.save_history();
    let _ = shell.env_mut().unset("RUSH_SESSION");
    switch_history(shell, "default");
    Ok(Report {
        text: format!(
            "detached from session {name}: its environment, aliases, functions, options and jobs saved; it will start in {}\n",
            cwd.as_deref().map(|c| c.display().to_string()).unwrap_or_else(|| "its workspace".into())
        ),
        json: serde_json::json!({ "session": name, "cwd": cwd }),
        notes,
    })
}

fn set_var(shell: &mut Shell, name: &str, value: &str) {
    let mut v = brush_core::ShellVariable::new(value.to_owned());
    v.export();
    let _ = shell.set_env_global(name, v);
}

/// Each session has its own history: HISTFILE follows the attachment when it is ours.
fn switch_history(shell: &mut Shell, session: &str) {
    let Some(dir) = super::perf::state_dir().map(|d| d.join("history")) else { return };
    let ours = var_string(shell, "HISTFILE").is_some_and(|h| std::path::Path::new(&h).starts_with(&dir));
    if !ours {
        return;
    }
    let file = dir.join(session);
    let _ = std::fs::create_dir_all(&dir);
    set_var(shell, "HISTFILE", &file.to_string_lossy());
    if let Some(h) = shell.history_mut() {
        let _ = h.clear();
        if let Ok(f) = std::fs::File::open(&file)
            && let Ok(loaded) = brush_core::history::History::import(f)
        {
            for item in loaded.iter() {
                let _ = h.add(item.clone());
            }
        }
    }
}

/// What a forked copy of the shell runs.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// The command-line client, in the copy.
    Client,
    /// A new rush shell: the copy execs this program.
    Shell,
}

/// Runs the client (or execs a new shell) in a forked copy of the shell; its exit status.
async fn run_forked(ctx: &ExecutionContext<'_, Ext>, words: &[String], what: Run) -> u8 {
    let shell = &*ctx.shell;
    let c = |s: String| CString::new(s).ok();
    let env: Vec<CString> = shell
        .env()
        .iter_exported()
        .filter_map(|(k, v)| c(format!("{k}={}", v.value().to_cow_str(shell))))
        .collect();
    let Some(cwd) = c(shell.working_dir().to_string_lossy().into_owned()) else { return 1 };
    let argv: Vec<OsString> = words.iter().map(OsString::from).collect();
    let exec_argv: Vec<CString> = words.iter().filter_map(|w| c(w.clone())).collect();
    let self_exe = c("/proc/self/exe".into()).expect("no NUL");
    let files: Vec<_> = (0..3).map(|fd| ctx.try_fd(fd)).collect();
    let fds: Vec<i32> = files
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().and_then(|f| f.try_borrow_as_fd().ok()).map_or(i as i32, |b| b.as_raw_fd()))
        .collect();
    let _ = std::io::stdout().flush();
    // SAFETY: the child is a copy of this process that runs the (synchronous) client and
    // _exits; it touches no tokio state. It sets its signals, fds, cwd and environment
    // before anything else runs. glibc's malloc is fork-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, single-threaded from here on: resets what the shell
        // changed (signal dispositions), then installs the builtin's fds and environment.
        unsafe {
            for sig in [
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTTIN,
                libc::SIGTTOU,
                libc::SIGCHLD,
                libc::SIGTERM,
                libc::SIGPIPE,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            // It shares the shell's process group, which is no job the shell can stop and
            // continue: Ctrl-Z is ignored by it (Ctrl-C ends it).
            libc::signal(libc::SIGTSTP, libc::SIG_IGN);
            let mut sigs: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut sigs);
            libc::sigprocmask(libc::SIG_SETMASK, &sigs, std::ptr::null_mut());
            let dups: Vec<i32> = fds.iter().map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10)).collect();
            for (target, &fd) in dups.iter().enumerate() {
                if fd >= 0 {
                    libc::dup2(fd, target as i32);
                }
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                libc::_exit(1);
            }
            libc::clearenv();
            for kv in &env {
                libc::putenv(kv.as_ptr() as *mut libc::c_char);
            }
        }
        if what == Run::Shell {
            let _ = nix::unistd::execv(&self_exe, &exec_argv);
            // SAFETY: the exec failed; nothing of the shell may run in this copy.
            unsafe { libc::_exit(127) }
        }
        let code = crate::run_cli(argv);
        let _ = std::io::stdout().flush();
        // SAFETY: ends the child without running the shell's exit handlers.
        unsafe { libc::_exit(i32::from(code)) }
    }
    if pid < 0 {
        let _ = writeln!(ctx.stderr(), "rush: cannot fork: {}", std::io::Error::last_os_error());
        return 1;
    }
    let waited = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child into a local int.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status) as u8
                } else {
                    (128 + libc::WTERMSIG(status)) as u8
                };
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return 1;
            }
        }
    })
    .await;
    waited.unwrap_or(1)
}

/// `complete -C`: prints the candidates for the word being completed, from the client's
/// clap definition (subcommands, then options).
fn complete_builtin(ctx: ExecutionContext<'_, Ext>, _args: Vec<brush_core::CommandArg>) -> Fut<'_> {
    Box::pin(async move {
        let line = var_string(ctx.shell, "COMP_LINE").unwrap_or_default();
        let point =
            var_string(ctx.shell, "COMP_POINT").and_then(|p| p.parse::<usize>().ok()).unwrap_or(line.len());
        let upto = line.get(..point.min(line.len())).unwrap_or(&line);
        let mut out = ctx.stdout();
        for c in completions(upto) {
            let _ = writeln!(out, "{c}");
        }
        Ok(ExecutionResult::success())
    })
}

/// Candidates for the last word of `line` (a `rush ...` command line up to the cursor).
pub fn completions(line: &str) -> Vec<String> {
    use clap::CommandFactory;
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let current = if line.ends_with(char::is_whitespace) { "" } else { words.pop().unwrap_or("") };
    let mut cmd = Cli::command();
    for w in words.iter().skip(1) {
        if w.starts_with('-') {
            continue;
        }
        match cmd.find_subcommand(w) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    let mut out: Vec<String> = Vec::new();
    if current.starts_with('-') {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                out.push(format!("--{l}"));
            }
        }
    } else {
        for s in cmd.get_subcommands() {
            out.push(s.get_name().to_owned());
        }
    }
    out.retain(|c| c.starts_with(current));
    out.sort();
    out.dedup();
    out
}

/// `alias` / `alias -p`: the listing sorted by name and each value quoted so it reads back
/// (brush lists in hash order, unquoted); the rest is brush's.
fn alias_builtin(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> Fut<'_> {
    Box::pin(async move {
        let words = words(&args);
        if !words.iter().skip(1).all(|w| w == "-p") {
            return match ALIAS.get() {
                Some(orig) => (orig.execute_func)(ctx, args).await,
                None => Ok(ExecutionResult::new(1)),
            };
        }
        let mut all: Vec<(&String, &String)> = ctx.shell.aliases().iter().collect();
        all.sort();
        let mut out = ctx.stdout();
        for (name, value) in all {
            let _ = writeln!(out, "alias {name}={}", crate::render::shell_quote(value));
        }
        Ok(ExecutionResult::success())
    })
}

/// `kill` as bash reads it; brush-builtins 0.2 sends SIGKILL when no signal is named and
/// refuses `-9`. Here no signal means SIGTERM and `-N` means signal number N; the rest is
/// brush's.
fn kill_builtin(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> Fut<'_> {
    Box::pin(async move {
        let words = words(&args);
        let Some(orig) = KILL.get() else { return Ok(ExecutionResult::new(1)) };
        let lists = words.iter().skip(1).any(|w| w == "-l" || w == "-L");
        let mut fixed = vec![words[0].clone()];
        let mut named = false;
        let mut rest = words.iter().skip(1).peekable();
        while let Some(w) = rest.next() {
            if w == "--" {
                fixed.push(w.clone());
                fixed.extend(rest.by_ref().cloned());
                break;
            }
            if w == "-s" || w == "-n" {
                named = true;
                fixed.push(w.clone());
                fixed.extend(rest.next().cloned());
            } else if let Some(n) = w
                .strip_prefix('-')
                .filter(|n| !lists && !named && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                named = true;
                fixed.extend(["-n".to_owned(), n.to_owned()]);
            } else {
                named |= w.starts_with('-') && w.len() > 1 && !lists;
                fixed.push(w.clone());
            }
        }
        if !named && !lists {
            fixed.splice(1..1, ["-s".to_owned(), "TERM".to_owned()]);
        }
        let args = fixed.into_iter().map(brush_core::CommandArg::String).collect();
        (orig.execute_func)(ctx, args).await
    })
}

/// `disown [-h] [-ar] [JOBSPEC...]` (brush-builtins 0.2 leaves it unimplemented): the jobs
/// leave the table, so `jobs`, `wait` and the shell's exit no longer know them. `-h`
/// alone keeps them listed: this shell never sends its jobs SIGHUP, so there is nothing
/// more to mark.
fn disown_builtin(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> Fut<'_> {
    Box::pin(async move {
        let words = words(&args);
        let (mut all, mut running, mut keep) = (false, false, false);
        let mut specs = Vec::new();
        for w in words.iter().skip(1) {
            match w.strip_prefix('-') {
                Some(flags)
                    if !flags.is_empty() && specs.is_empty() && flags.chars().all(|c| "ahr".contains(c)) =>
                {
                    all |= flags.contains('a');
                    running |= flags.contains('r');
                    keep |= flags.contains('h');
                }
                _ => specs.push(w.clone()),
            }
        }
        let mut err = ctx.stderr();
        let jobs = ctx.shell.jobs_mut();
        let mut ids: Vec<usize> = Vec::new();
        if specs.is_empty() {
            if all || running {
                ids = jobs
                    .jobs
                    .iter()
                    .filter(|j| !running || matches!(j.state, brush_core::jobs::JobState::Running))
                    .map(|j| j.id)
                    .collect();
            } else if let Some(j) = jobs.current_job() {
                ids.push(j.id);
            } else {
                let _ = writeln!(err, "disown: current: no such job");
                return Ok(ExecutionResult::new(1));
            }
        }
        let mut status = 0;
        for spec in &specs {
            let by_pid = spec.parse::<i32>().ok();
            let id = match by_pid {
                Some(pid) => jobs.jobs.iter().find(|j| j.representative_pid() == Some(pid)).map(|j| j.id),
                None => jobs.resolve_job_spec(spec).map(|j| j.id),
            };
            match id {
                Some(id) => ids.push(id),
                None => {
                    let _ = writeln!(err, "disown: {spec}: no such job");
                    status = 1;
                }
            }
        }
        if !keep {
            jobs.jobs.retain(|j| !ids.contains(&j.id));
        }
        Ok(ExecutionResult::new(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_verbs_then_their_subcommands_then_options() {
        let top = completions("rush ch");
        assert_eq!(top, ["checkpoint"]);
        let agent = completions("rush agent ");
        assert!(agent.contains(&"spawn".to_string()) && agent.contains(&"list".to_string()), "{agent:?}");
        let opts = completions("rush checkpoint --wi");
        assert_eq!(opts, ["--with-processes"]);
    }

    #[test]
    fn the_subcommand_list_is_the_clients() {
        use clap::CommandFactory;
        let mut names: Vec<String> = Vec::new();
        for s in Cli::command().get_subcommands() {
            names.push(s.get_name().to_owned());
            names.extend(s.get_all_aliases().map(str::to_owned));
        }
        names.push("help".into());
        let mut ours: Vec<String> = super::super::SUBCOMMANDS.iter().map(|s| s.to_string()).collect();
        names.sort();
        ours.sort();
        assert_eq!(ours, names);
    }
}

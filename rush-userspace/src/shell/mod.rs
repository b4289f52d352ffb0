//! `rush` as a shell (no subcommand, `-c`, a script, `-s`): brush's bash-compatible core
//! with Rush built in. The verbs are builtins over the daemon socket (`rush agent list`
//! runs in the shell, not as a new program); the shell's own state (environment, cwd,
//! aliases, functions, options, jobs, performance baseline) travels with checkpoints and
//! session attach/detach; with gating on, every command line and every external command's
//! expanded argv is judged by the daemon before it runs.
//!
//! The shell is its own process (never inside the daemon): brush installs signal handlers
//! and takes the terminal, which a daemon must not have.

mod args;
mod builtins;
mod gate;
mod interactive;
pub mod perf;
mod prompt;
mod state;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use brush_core::ShellValue;
use tokio::sync::Mutex;

pub use perf::PerfStore;

pub type Ext = brush_core::extensions::DefaultShellExtensions;
pub type Shell = brush_core::Shell<Ext>;
pub type ShellRef = Arc<Mutex<Shell>>;
/// What a builtin's body returns (brush's registration takes a plain fn returning it).
pub type Fut<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<brush_core::ExecutionResult, brush_core::Error>> + Send + 'a>,
>;

/// The subcommands (and their aliases) of the command-line client: `rush NAME ...` with one
/// of these runs the client, anything else the shell. A script named like one of them runs
/// as `rush ./NAME`. Kept as a list (not read from clap) so `rush -c` builds no parser; a
/// unit test holds it equal to the clap definition.
pub const SUBCOMMANDS: &[&str] = &[
    "agent",
    "capability",
    "cap",
    "session",
    "checkpoint",
    "rollback",
    "timeline",
    "audit",
    "events",
    "approval",
    "ask",
    "approvals",
    "approve",
    "reject",
    "human-queue",
    "approval-policy",
    "explain",
    "execute",
    "guardrail",
    "hook",
    "perf",
    "top",
    "doctor",
    "version",
    "whoami",
    "completions",
    "man",
    "help",
];

/// Whether these arguments (after the program name) ask for the shell rather than the
/// command-line client.
pub fn wants_shell(args: &[OsString]) -> bool {
    let Some(first) = args.first().and_then(|a| a.to_str()) else { return args.is_empty() };
    if SUBCOMMANDS.contains(&first) {
        return false;
    }
    // The client's global options and its help/version.
    let client = ["--json", "--socket", "--help", "-h", "--version", "-V"];
    !(client.contains(&first) || first.starts_with("--socket=") || first.starts_with("--json="))
}

/// Runs the shell; its exit status is the last command's, as with bash.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = match args.into_iter().map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("rush: argument {bad:?} is not valid UTF-8");
            return ExitCode::from(2);
        }
    };
    let parsed = match args::parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rush: {e}");
            eprintln!(
                "usage: rush [-ilsx...] [-o OPTION] [-O SHOPT] [-c COMMAND [NAME [ARG...]] | SCRIPT [ARG...]]"
            );
            eprintln!("       rush SUBCOMMAND ... (see `rush --help`)");
            return ExitCode::from(2);
        }
    };
    let interactive = parsed.interactive
        || (parsed.command.is_none()
            && (parsed.operands.is_empty() || parsed.stdin)
            && std::io::stdin().is_terminal()
            && std::io::stderr().is_terminal());
    // The line editor blocks inside tokio tasks (block_in_place), which only a
    // multi-threaded runtime allows; anything else starts faster on the current thread.
    let runtime = if interactive {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rush: cannot start the shell's runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let status = runtime.block_on(run_async(parsed, interactive));
    // Jobs left running belong to the user, not to us: nothing waits for them.
    runtime.shutdown_background();
    ExitCode::from(status)
}

async fn run_async(a: args::ShellArgs, interactive: bool) -> u8 {
    let shell = match build(&a, interactive).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rush: {e}");
            return 2;
        }
    };
    let shell: ShellRef = Arc::new(Mutex::new(shell));
    let result = execute(&shell, a, interactive).await;
    if !interactive {
        // brush runs `cmd &` as a task of this process, not a forked subshell: exiting now
        // would kill it, maybe before it started. A non-interactive rush waits for its
        // background jobs instead (bash would leave them running).
        let mut sh = shell.lock().await;
        let status = sh.last_exit_status();
        let _ = sh.jobs_mut().wait_all().await;
        sh.set_last_exit_status(status);
    }
    match result {
        Ok(()) => shell.lock().await.last_exit_status(),
        Err(e) => {
            let sh = shell.lock().await;
            let mut err = sh.stderr();
            let _ = writeln!(err, "rush: {e}");
            1
        }
    }
}

async fn build(a: &args::ShellArgs, interactive: bool) -> Result<Shell, String> {
    use brush_builtins::ShellBuilderExt as _;
    let shell_name = match (&a.command, a.operands.first()) {
        (Some(_), Some(zero)) => zero.clone(),
        (None, Some(script)) if !a.stdin => script.clone(),
        _ => std::env::args().next().unwrap_or_else(|| "rush".into()),
    };
    let positional: Option<Vec<String>> = if a.command.is_some() {
        Some(a.operands.iter().skip(1).cloned().collect())
    } else if a.stdin {
        Some(a.operands.clone())
    } else {
        None
    };
    let from_stdin = a.command.is_none() && (a.stdin || a.operands.is_empty());
    // A non-interactive shell reads its script from fd 0 unbuffered (interactive.rs); so
    // must its `read` builtin and its children, which std's buffered Stdin would starve
    // (it would swallow the rest of the script). A plain File on a dup of fd 0 reads only
    // what is asked for.
    let mut fds = std::collections::HashMap::new();
    if !interactive && let Ok(stdin) = std::io::stdin().as_fd().try_clone_to_owned() {
        fds.insert(0, brush_core::openfiles::OpenFile::File(std::fs::File::from(stdin)));
    }
    let builder = brush_core::Shell::builder_with_extensions::<Ext>()
        .fds(fds)
        .login(a.login || std::env::args().next().is_some_and(|z| z.starts_with('-')))
        .interactive(interactive)
        .command_string_mode(a.command.is_some())
        .no_editing(a.no_editing)
        .profile(brush_core::ProfileLoadBehavior::Skip)
        .rc(brush_core::RcLoadBehavior::Skip)
        .maybe_shell_args(positional)
        .posix(a.posix)
        .read_commands_from_stdin(from_stdin)
        .shell_name(shell_name)
        .shell_product_display_str(format!("rush {}", env!("CARGO_PKG_VERSION")))
        .shell_version(env!("CARGO_PKG_VERSION").to_string())
        .default_builtins(brush_builtins::BuiltinSet::BashMode);
    // brush defaults HISTFILE to ~/.brush_history and loads it while building; ours is per
    // session, unless the user's environment names one.
    let session = std::env::var("RUSH_SESSION").ok().filter(|s| s.parse::<rush_proto::AgentName>().is_ok());
    let history = perf::state_dir()
        .filter(|_| interactive && std::env::var_os("HISTFILE").is_none())
        .map(|d| d.join("history").join(session.as_deref().unwrap_or("default")));
    let builder = match history {
        Some(file) => {
            let _ = std::fs::create_dir_all(file.parent().expect("a history file has a directory"));
            builder.var("HISTFILE", brush_core::ShellVariable::new(file.to_string_lossy().into_owned()))
        }
        None => builder,
    };
    let mut shell = builder.build().await.map_err(|e| format!("cannot start the shell: {e}"))?;
    state::apply_args(&mut shell, a)?;
    builtins::register(&mut shell);
    if interactive {
        prompt::install(&mut shell);
        builtins::install_completion(&mut shell).await;
    }
    gate::install(&mut shell).await?;
    Ok(shell)
}

/// The session this shell is attached to (RUSH_SESSION), as a file name for its history
/// and performance records; `default` when none.
pub fn session_file_name(shell: &Shell) -> String {
    match shell.env_str("RUSH_SESSION") {
        Some(s) if !s.is_empty() && s.parse::<rush_proto::AgentName>().is_ok() => s.into_owned(),
        _ => "default".into(),
    }
}

async fn execute(shell: &ShellRef, a: args::ShellArgs, interactive: bool) -> Result<(), brush_core::Error> {
    {
        let profile = if a.no_profile || !a.login {
            brush_core::ProfileLoadBehavior::Skip
        } else {
            brush_core::ProfileLoadBehavior::LoadDefault
        };
        let rc = match (&a.rc_file, a.no_rc || !interactive) {
            (_, true) => brush_core::RcLoadBehavior::Skip,
            (Some(f), false) => brush_core::RcLoadBehavior::LoadCustom(f.clone()),
            (None, false) => brush_core::RcLoadBehavior::LoadDefault,
        };
        shell.lock().await.load_config(&profile, &rc).await?;
    }
    if let Some(command) = a.command {
        let mut sh = shell.lock().await;
        if !gate::check_line(&mut sh, &command).await {
            sh.set_last_exit_status(gate::EXIT_NOT_RUN);
            return Ok(());
        }
        sh.run_dash_c_command(command).await?;
    } else if !a.stdin && !a.operands.is_empty() {
        let script = Path::new(&a.operands[0]);
        let mut sh = shell.lock().await;
        // bash's statuses for a script it cannot read: 127 when missing, 126 otherwise.
        if let Err(e) = std::fs::File::open(script).and_then(|f| {
            if f.metadata()?.is_dir() {
                Err(std::io::Error::from(std::io::ErrorKind::IsADirectory))
            } else {
                Ok(())
            }
        }) {
            let mut err = sh.stderr();
            let _ = writeln!(err, "rush: {}: {}", script.display(), plain_io_error(&e));
            sh.set_last_exit_status(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
            return Ok(());
        }
        if gate::enabled(&sh) {
            let text = std::fs::read_to_string(script).unwrap_or_default();
            if !gate::check_line(&mut sh, &text).await {
                sh.set_last_exit_status(gate::EXIT_NOT_RUN);
                return Ok(());
            }
        }
        sh.run_script(script, a.operands.iter().skip(1)).await?;
    } else {
        if interactive {
            builtins::attach_at_start(&mut *shell.lock().await).await;
        }
        interactive::run(shell, interactive, a.no_editing).await?;
    }
    Ok(())
}

/// "No such file or directory", without Rust's "(os error 2)".
fn plain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// A shell variable's value as one string (an array's elements joined by spaces).
pub fn var_string(shell: &Shell, name: &str) -> Option<String> {
    shell.env_var(name).map(|v| match v.value() {
        ShellValue::String(s) => s.clone(),
        other => other.to_cow_str(shell).into_owned(),
    })
}

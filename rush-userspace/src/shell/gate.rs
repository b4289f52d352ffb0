//! Risk gating inside the shell. With it on (an agent's shell: `RUSH_AGENT` set by the
//! daemon, and then it cannot be turned off; or `set -o rush-gate`), the daemon judges
//! every command line before it runs (a script whole, first) and again every external
//! command and every builtin that runs code (`eval`, `exec`, `source`, `command`, ...) on
//! its expanded words, just before it runs, so `$(...)` results, variables and aliases
//! defined earlier cannot slip past the first check.
//!
//! brush-core 0.5 has no hook that may veto a command; it has the DEBUG trap, which runs
//! after expansion and before the command, but ignores the trap's status. So the trap's
//! builtin, on a refusal, puts a one-shot builtin under the command's name, which brush
//! then finds first: it says why and fails with 126 instead of running the command, and
//! puts back whatever it shadowed. In an agent's shell the DEBUG trap, `set -T` (traps
//! in functions and subshells) and these builtins are locked.
//!
//! Honest limits: the second check sees `$BASH_COMMAND` (the words joined by spaces, so
//! an argument's own spaces are lost; it is judged as the stricter of the two readings
//! only in that the first check saw the original line), and redirection targets are
//! judged only by the first check. The kernel's capability tokens are the guarantee;
//! the gate is a second opinion before a command runs.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use brush_core::builtins::{ContentOptions, ContentType, Registration};
use brush_core::{ExecutionContext, ExecutionResult};
use rush_proto::client::Client;
use rush_proto::gate::{AssessRequest, Assessment, GateDecision};

use super::{Ext, Shell, var_string};

/// What a command the gate did not let run exits with (bash's "cannot execute").
pub const EXIT_NOT_RUN: u8 = 126;
const ARGV_BUILTIN: &str = "__rush_gate_argv";
/// Builtins that run other code: judged like external commands.
const RUNNERS: [&str; 8] = ["eval", "exec", "source", ".", "command", "builtin", "coproc", "time"];

static ENABLED: AtomicBool = AtomicBool::new(false);
/// An agent's shell: gating cannot be turned off.
static LOCKED: AtomicBool = AtomicBool::new(false);
static CLIENT: Mutex<Option<Client>> = Mutex::new(None);
/// The registrations refusal shims shadow, by command name, to put back.
static SHADOWED: Mutex<Option<HashMap<String, Option<Registration<Ext>>>>> = Mutex::new(None);
/// The shell's own `set`, `trap` and `enable`, which our wrappers call.
static ORIGINAL: Mutex<Option<HashMap<&'static str, Registration<Ext>>>> = Mutex::new(None);

pub fn enabled(_shell: &Shell) -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub async fn install(shell: &mut Shell) -> Result<(), String> {
    let mut originals = HashMap::new();
    for (name, wrapper) in [
        ("set", set_wrapper as brush_core::builtins::CommandExecuteFunc<Ext>),
        ("trap", trap_wrapper),
        ("enable", enable_wrapper),
    ] {
        if let Some(orig) = shell.builtins().get(name).cloned() {
            let mut wrapped = orig.clone();
            wrapped.execute_func = wrapper;
            originals.insert(name, orig);
            shell.register_builtin(name, wrapped);
        }
    }
    *ORIGINAL.lock().unwrap_or_else(|p| p.into_inner()) = Some(originals);
    shell.register_builtin(
        ARGV_BUILTIN,
        Registration {
            execute_func: argv_builtin,
            content_func: help,
            disabled: false,
            special_builtin: false,
            declaration_builtin: false,
        },
    );
    if var_string(shell, "RUSH_AGENT").is_some_and(|a| !a.is_empty()) {
        LOCKED.store(true, Ordering::Relaxed);
        turn_on(shell).await?;
    }
    Ok(())
}

async fn turn_on(shell: &mut Shell) -> Result<(), String> {
    ENABLED.store(true, Ordering::Relaxed);
    if let Some(t) =
        brush_core::namedoptions::options(brush_core::namedoptions::ShellOptionKind::Set).get("T")
    {
        t.set(shell.options_mut(), true);
    }
    let params = shell.default_exec_params();
    // The command about to run is passed as an argument: brush sets BASH_COMMAND again
    // for the trap's own command (to the builtin's name) once its words are expanded.
    orig_builtin_run(shell, &format!("trap '{ARGV_BUILTIN} \"$BASH_COMMAND\"' DEBUG"), &params).await
}

async fn orig_builtin_run(
    shell: &mut Shell,
    code: &str,
    params: &brush_core::ExecutionParameters,
) -> Result<(), String> {
    // Our `trap` wrapper refuses DEBUG changes while locked: the gate sets its own trap
    // with the shell's original builtin in place for this one line.
    let orig =
        ORIGINAL.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|m| m.get("trap").cloned());
    let ours = shell.builtins().get("trap").cloned();
    if let Some(o) = orig {
        shell.register_builtin("trap", o);
    }
    let r = shell.run_string(code.to_owned(), &brush_core::SourceInfo::from("rush-gate"), params).await;
    if let Some(o) = ours {
        shell.register_builtin("trap", o);
    }
    r.map(|_| ()).map_err(|e| format!("cannot install the gate's DEBUG trap: {e}"))
}

fn help(name: &str, _t: ContentType, _o: &ContentOptions) -> Result<String, brush_core::Error> {
    Ok(format!("{name}: judges the command about to run (rush's risk gate; see `rush explain`)\n"))
}

/// Asks the daemon; None when it cannot be asked (then the gate refuses: it was asked
/// for).
fn assess(shell: &Shell, command: &str) -> Result<Assessment, String> {
    let socket = var_string(shell, "RUSH_SOCKET")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| rush_proto::DEFAULT_SOCKET.to_owned());
    let req = AssessRequest {
        command: command.to_owned(),
        cwd: shell.working_dir().to_path_buf(),
        agent: None,
        trust: None,
    };
    let mut slot = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..2 {
        if slot.is_none() {
            *slot = Some(
                Client::connect(std::path::Path::new(&socket))
                    .map_err(|e| format!("cannot reach the daemon at {socket} to judge the command: {e}"))?,
            );
        }
        match slot.as_mut().expect("connected above").assess(req.clone()) {
            Ok(a) => return Ok(a),
            // A connection the daemon closed (it restarted): once more on a new one.
            Err(rush_proto::client::ClientError::Io(_)) if attempt == 0 => *slot = None,
            Err(e) => {
                *slot = None;
                return Err(format!("the daemon could not judge the command: {e}"));
            }
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Judges and, where a person must say yes, asks. Whether it may run; the reason it may
/// not is written to the shell's stderr.
fn judge(shell: &Shell, command: &str) -> bool {
    let mut err = shell.stderr();
    if rush_proto::gate::check_command(command).is_err() {
        // Too long or not text the gate reads: nothing vouches for it.
        let _ = writeln!(err, "rush: gate: not run: the command cannot be judged (too long or binary)");
        return false;
    }
    let a = match assess(shell, command) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "rush: gate: not run: {e}");
            return false;
        }
    };
    let reason = crate::render::sanitize(&a.reason);
    match a.decision {
        GateDecision::Allow => true,
        GateDecision::Deny => {
            let _ = writeln!(err, "rush: gate: not run: denied: {reason}");
            false
        }
        GateDecision::Sandbox | GateDecision::VmOnly if LOCKED.load(Ordering::Relaxed) => {
            let _ = writeln!(
                err,
                "rush: gate: not run: {} ({reason}); `rush execute` runs it that way",
                a.decision
            );
            false
        }
        // A person decides: an agent's through the attention queue, an operator here.
        _ => {
            let mut slot = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
            let Some(client) = slot.as_mut() else { return false };
            match crate::commands::gating::ask(client, &a, &Default::default(), None) {
                Ok(true) => true,
                Ok(false) => {
                    let _ = writeln!(err, "rush: gate: not run: not approved: {reason}");
                    false
                }
                Err(e) => {
                    *slot = None;
                    for line in e.lines() {
                        let _ = writeln!(err, "rush: gate: {line}");
                    }
                    false
                }
            }
        }
    }
}

/// The first check: a whole command line (or script) before it runs.
pub async fn check_line(shell: &mut Shell, line: &str) -> bool {
    if !ENABLED.load(Ordering::Relaxed) {
        return true;
    }
    if LOCKED.load(Ordering::Relaxed) && line.contains(ARGV_BUILTIN) {
        let _ = writeln!(shell.stderr(), "rush: gate: not run: it names the gate's own builtin");
        return false;
    }
    judge(shell, line)
}

/// The DEBUG trap's builtin: the command about to run, expanded.
fn argv_builtin(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> super::Fut<'_> {
    Box::pin(async move {
        if !ENABLED.load(Ordering::Relaxed) {
            return Ok(ExecutionResult::success());
        }
        let shell = ctx.shell;
        let Some(command) = args.get(1).map(|a| a.to_string()) else { return Ok(ExecutionResult::success()) };
        let name = command.split_whitespace().next().unwrap_or_default().to_owned();
        if name.is_empty() || name == ARGV_BUILTIN {
            return Ok(ExecutionResult::success());
        }
        let runs_code = RUNNERS.contains(&name.as_str());
        let is_function = shell.funcs().get(&name).is_some();
        let is_builtin = shell.builtins().get(&name).is_some_and(|b| !b.disabled);
        if !runs_code && (is_function || is_builtin) {
            return Ok(ExecutionResult::success());
        }
        let refused =
            (LOCKED.load(Ordering::Relaxed) && command.contains(ARGV_BUILTIN)) || !judge(shell, &command);
        if refused {
            let previous = shell.builtins().get(&name).cloned();
            SHADOWED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(name.clone(), previous);
            shell.register_builtin(
                name,
                Registration {
                    execute_func: refusal,
                    content_func: help,
                    disabled: false,
                    special_builtin: false,
                    declaration_builtin: false,
                },
            );
        }
        Ok(ExecutionResult::success())
    })
}

/// Stands in for a refused command once, then puts back what it shadowed.
fn refusal(ctx: ExecutionContext<'_, Ext>, _args: Vec<brush_core::CommandArg>) -> super::Fut<'_> {
    Box::pin(async move {
        let name = ctx.command_name.clone();
        let previous =
            SHADOWED.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|m| m.remove(&name));
        match previous.flatten() {
            Some(reg) => ctx.shell.register_builtin(name, reg),
            None => {
                if let Some(b) = ctx.shell.builtin_mut(&name) {
                    b.disabled = true;
                }
            }
        }
        Ok(ExecutionResult::new(EXIT_NOT_RUN))
    })
}

fn strings(args: &[brush_core::CommandArg]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

async fn call_original(
    name: &'static str,
    ctx: ExecutionContext<'_, Ext>,
    args: Vec<brush_core::CommandArg>,
) -> Result<ExecutionResult, brush_core::Error> {
    let orig = ORIGINAL.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|m| m.get(name).cloned());
    match orig {
        Some(o) => (o.execute_func)(ctx, args).await,
        None => Ok(ExecutionResult::new(1)),
    }
}

fn refuse(ctx: &ExecutionContext<'_, Ext>, what: &str) -> Result<ExecutionResult, brush_core::Error> {
    let _ = writeln!(ctx.stderr(), "rush: {what}: risk gating is locked on in an agent's shell");
    Ok(ExecutionResult::new(1))
}

/// `set`, plus `set -o rush-gate` / `set +o rush-gate`; locked: no `+T`, `+o functrace`.
fn set_wrapper(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> super::Fut<'_> {
    Box::pin(async move {
        let words = strings(&args);
        if let Some(i) = words.iter().position(|w| w == "rush-gate") {
            let on = match words.get(i.wrapping_sub(1)).map(String::as_str) {
                Some("-o") => true,
                Some("+o") => false,
                _ => return call_original("set", ctx, args).await,
            };
            if !on && LOCKED.load(Ordering::Relaxed) {
                return refuse(&ctx, "set +o rush-gate");
            }
            if on {
                if let Err(e) = turn_on(ctx.shell).await {
                    let _ = writeln!(ctx.stderr(), "rush: {e}");
                    return Ok(ExecutionResult::new(1));
                }
            } else {
                ENABLED.store(false, Ordering::Relaxed);
                let params = ctx.shell.default_exec_params();
                let _ = orig_builtin_run(ctx.shell, "trap - DEBUG", &params).await;
            }
            return Ok(ExecutionResult::success());
        }
        if LOCKED.load(Ordering::Relaxed)
            && words.iter().enumerate().any(|(i, w)| {
                (w.starts_with('+') && !w.starts_with("+o") && w.contains('T'))
                    || (w == "functrace" && words.get(i.wrapping_sub(1)).is_some_and(|p| p == "+o"))
            })
        {
            return refuse(&ctx, "set +T");
        }
        call_original("set", ctx, args).await
    })
}

/// `trap`; locked: the DEBUG trap is the gate's.
fn trap_wrapper(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> super::Fut<'_> {
    Box::pin(async move {
        let words = strings(&args);
        // `trap` / `trap -p`: listed in bash's order (EXIT, signals by number, DEBUG, ERR,
        // RETURN), each command quoted to read back; brush lists in hash order.
        if words.iter().skip(1).all(|w| w == "-p") {
            use brush_core::traps::TrapSignal;
            let rank = |s: &TrapSignal| match s {
                TrapSignal::Exit => 0,
                TrapSignal::Signal(sig) => *sig as i32,
                TrapSignal::Debug => 1000,
                TrapSignal::Err => 1001,
                TrapSignal::Return => 1002,
            };
            let mut all: Vec<(TrapSignal, String)> =
                ctx.shell.traps().iter_handlers().map(|(s, h)| (s, h.command.clone())).collect();
            all.sort_by_key(|(s, _)| rank(s));
            let mut out = ctx.stdout();
            for (signal, command) in all {
                let _ = writeln!(out, "trap -- {} {signal}", crate::render::shell_quote(&command));
            }
            return Ok(ExecutionResult::success());
        }
        let listing = words.iter().skip(1).all(|w| w.starts_with("-p") || w == "-l");
        if LOCKED.load(Ordering::Relaxed)
            && !listing
            && words
                .iter()
                .skip(1)
                .any(|w| w.eq_ignore_ascii_case("DEBUG") || w.eq_ignore_ascii_case("SIGDEBUG"))
        {
            return refuse(&ctx, "trap ... DEBUG");
        }
        call_original("trap", ctx, args).await
    })
}

/// `enable`; locked: the gate's builtins and their wrappers stay enabled.
fn enable_wrapper(ctx: ExecutionContext<'_, Ext>, args: Vec<brush_core::CommandArg>) -> super::Fut<'_> {
    Box::pin(async move {
        let words = strings(&args);
        let guarded = ["set", "trap", "enable", ARGV_BUILTIN];
        if LOCKED.load(Ordering::Relaxed)
            && words.iter().any(|w| w.starts_with('-') && (w.contains('n') || w.contains('d')))
            && words.iter().any(|w| guarded.contains(&w.as_str()))
        {
            return refuse(&ctx, "enable -n");
        }
        call_original("enable", ctx, args).await
    })
}

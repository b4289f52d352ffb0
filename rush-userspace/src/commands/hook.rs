//! `rush hook`: agent tools' PreToolUse hooks answered by risk gating, and their install.
//!
//! `rush hook claude-code` and `rush hook codex` read the tool's hook JSON on stdin, ask
//! the daemon to assess the command (or, for a file tool, the equivalent shell command:
//! see payload.rs), and print the answer in the tool's own contract (verdict.rs), always
//! with exit 0: a hook that exits otherwise is, for both tools, either a plain block (2,
//! whose stderr the model reads as an error) or a *non-blocking* error after which the call
//! runs, so every failure here, a panic included, is turned into an answer that does not
//! let the call through. The daemon gets [`DEADLINE`] to answer, well inside the tools'
//! own hook timeouts (60 s and more), after which the call is not let through either.

mod ordered;
mod payload;
mod settings;
mod verdict;

use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use rush_proto::gate::{AssessRequest, Assessment};

use self::payload::{Call, Parsed};
use self::verdict::Verdict;
use super::Ctx;
use crate::cli::{HookCommand, HookInstallArgs, HookRunArgs, HookTool};
use crate::error::{Error, Result};

/// How long the daemon has to judge a call.
const DEADLINE: Duration = Duration::from_secs(20);

/// Largest hook input read (a Write carries the whole file it writes).
const MAX_INPUT: u64 = 64 << 20;

pub fn hook(ctx: &mut Ctx, cmd: HookCommand) -> Result<u8> {
    match cmd {
        HookCommand::ClaudeCode(args) => answer(ctx, HookTool::ClaudeCode, &args),
        HookCommand::Codex(args) => answer(ctx, HookTool::Codex, &args),
        HookCommand::Install(args) => install(ctx, &args),
    }
}

/// Reads the payload, judges it, prints the answer.
fn answer(ctx: &mut Ctx, tool: HookTool, args: &HookRunArgs) -> Result<u8> {
    let mut input = String::new();
    let read = std::io::stdin().take(MAX_INPUT + 1).read_to_string(&mut input);
    let socket = ctx.socket.clone();
    let verdict = match read {
        Err(e) => verdict::failed(tool, &format!("cannot read the hook input on stdin: {e}")),
        Ok(n) if n as u64 > MAX_INPUT => {
            verdict::failed(tool, &format!("the hook input is over {} MiB", MAX_INPUT >> 20))
        }
        Ok(_) => std::panic::catch_unwind(|| decide(tool, &input, args, &socket))
            .unwrap_or_else(|_| verdict::failed(tool, "rush hook failed unexpectedly (a bug: see stderr)")),
    };
    if let Some(json) = verdict::output(&verdict) {
        ctx.out.json_line(&json)?;
    }
    Ok(0)
}

/// The verdict on one payload.
fn decide(tool: HookTool, input: &str, args: &HookRunArgs, socket: &std::path::Path) -> Verdict {
    let call = match payload::parse(tool, input) {
        Ok(Parsed::Judge(call)) => call,
        Ok(Parsed::NoOpinion(why)) => {
            eprintln!("rush hook: no opinion: {why}");
            return Verdict::NoOpinion;
        }
        Err(why) => return verdict::failed(tool, &why),
    };
    match assess(&call, args, socket.to_owned(), DEADLINE) {
        Ok(a) => verdict::judged(tool, &call, &a),
        Err(why) => verdict::failed(tool, &why),
    }
}

/// Asks the daemon, waiting at most `deadline`; the error is one line for a person.
fn assess(
    call: &Call,
    args: &HookRunArgs,
    socket: PathBuf,
    deadline: Duration,
) -> std::result::Result<Assessment, String> {
    let cwd = match &call.cwd {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|e| format!("the hook input has no absolute cwd, and ours is unreadable: {e}"))?,
    };
    let req = AssessRequest {
        command: call.subject.command(),
        cwd,
        agent: args.agent.clone(),
        trust: args.trust.clone(),
    };
    let (tx, rx) = mpsc::channel();
    // A thread, so that a daemon that accepts and never answers cannot hold the tool past
    // its hook timeout (after which both tools run the call).
    std::thread::spawn(move || {
        let result = rush_proto::client::Client::connect(&socket).and_then(|mut c| c.assess(req));
        let _ = tx.send(result.map_err(Error::from));
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) if e.is_unreachable() => {
            let why = e.lines().join("; ");
            let why = why.strip_prefix("rush-agentd is not running: ").unwrap_or(&why);
            Err(format!("rush-agentd is not reachable: {why}"))
        }
        Ok(Err(e)) => Err(format!("rush-agentd refused to judge it: {}", e.lines().join("; "))),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("rush-agentd did not answer within {} s", deadline.as_secs_f32()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the request to rush-agentd failed unexpectedly".into())
        }
    }
}

/// `rush hook install TOOL`.
fn install(ctx: &mut Ctx, args: &HookInstallArgs) -> Result<u8> {
    let tool = args.tool;
    let path = match &args.settings {
        Some(p) => p.clone(),
        None => settings::default_path(tool)?,
    };
    let entry = settings::HookEntry {
        tool,
        matcher: settings::matcher(tool),
        command: hook_command(ctx, tool, args.agent.as_deref(), args.trust.as_deref())?,
    };
    let text = settings::read(&path)?;
    let (merged, changed) = settings::merge(text.as_deref(), &path, &entry)?;
    let rendered = settings::render(&merged);
    if args.dry_run {
        ctx.out.text(&rendered)?;
        return Ok(0);
    }
    if changed {
        settings::write_atomically(&path, &rendered)?;
    }
    if ctx.out.json {
        ctx.out.document(&serde_json::json!({
            "tool": settings::subcommand(tool),
            "settings": path,
            "matcher": entry.matcher,
            "command": entry.command,
            "changed": changed,
        }))?;
        return Ok(0);
    }
    let what = if changed { "installed" } else { "already installed" };
    let mut text = format!(
        "{what}: PreToolUse hook in {}\n  matcher: {}\n  command: {}\n",
        path.display(),
        entry.matcher,
        entry.command
    );
    if tool == HookTool::Codex {
        text.push_str(
            "Codex runs a hook from hooks.json only once you have trusted it: open /hooks in Codex and \
             trust it (hooks need Codex 0.124 or later, or [features] codex_hooks = true).\n",
        );
    }
    ctx.out.text(&text)?;
    Ok(0)
}

/// The command the tool runs: this very binary, with the socket it was installed against
/// when that is not the default one, and the agent and trust given.
fn hook_command(ctx: &Ctx, tool: HookTool, agent: Option<&str>, trust: Option<&str>) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the path of the running rush binary")?;
    let exe = exe.to_str().context("the path of the rush binary is not UTF-8")?;
    let mut words = vec![shell_word(exe), "hook".to_owned(), settings::subcommand(tool).to_owned()];
    if ctx.socket.as_os_str() != rush_proto::DEFAULT_SOCKET {
        let socket = ctx.socket.to_str().context("the socket path is not UTF-8")?;
        words.extend(["--socket".to_owned(), shell_word(socket)]);
    }
    if let Some(agent) = agent {
        words.extend(["--agent".to_owned(), shell_word(agent)]);
    }
    if let Some(trust) = trust {
        words.extend(["--trust".to_owned(), shell_word(trust)]);
    }
    Ok(words.join(" "))
}

/// `s` as it is when it needs no quoting, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if plain { s.to_owned() } else { payload::quote(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/local/bin/rush"), "/usr/local/bin/rush");
        assert_eq!(shell_word("/opt/my tools/rush"), "'/opt/my tools/rush'");
        assert_eq!(shell_word("a'b"), r"'a'\''b'");
        assert_eq!(shell_word(""), "''");
        assert!(settings::is_rush_hook(
            &format!("{} hook codex", shell_word("/opt/my tools/rush")),
            HookTool::Codex
        ));
    }

    #[test]
    fn an_unreachable_daemon_is_asked_about_never_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agentd.sock");
        let args = HookRunArgs { agent: None, trust: None };
        let input = serde_json::json!({
            "hook_event_name": "PreToolUse", "cwd": "/", "tool_name": "Bash",
            "tool_input": {"command": "cargo test"},
        })
        .to_string();
        let v = decide(HookTool::ClaudeCode, &input, &args, &socket);
        let Verdict::Ask(reason) = &v else { panic!("{v:?}") };
        assert!(reason.contains("rush-agentd is not reachable"), "{reason}");
        let v = decide(HookTool::Codex, &input, &args, &socket);
        assert!(matches!(&v, Verdict::Deny(r) if r.contains("not reachable")), "{v:?}");
        let bad = decide(HookTool::ClaudeCode, "{not json", &args, &socket);
        assert!(matches!(&bad, Verdict::Ask(r) if r.contains("not JSON")), "{bad:?}");
        let none =
            decide(HookTool::ClaudeCode, r#"{"tool_name":"WebFetch","tool_input":{}}"#, &args, &socket);
        assert_eq!(none, Verdict::NoOpinion);
    }

    #[test]
    fn a_daemon_that_never_answers_is_given_up_on_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agentd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // Accepts, reads, never answers.
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(1).flatten().collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let call = Call {
            tool: "Bash".into(),
            cwd: Some("/".into()),
            subject: payload::Subject::Command("ls".into()),
        };
        let args = HookRunArgs { agent: None, trust: None };
        let started = std::time::Instant::now();
        let err = assess(&call, &args, socket, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not answer within 0.3 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

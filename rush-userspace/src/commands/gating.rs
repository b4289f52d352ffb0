//! `rush explain`, `rush execute`, `rush guardrail`: risk gating. The daemon decides; this
//! side only asks, renders, and carries the decision out.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use rush_proto::approval::{ApprovalDetail, ApprovalRequest, ApprovalState};
use rush_proto::client::Client;
use rush_proto::gate::{AssessRequest, Assessment, ExecutionRecord, GateDecision, GuardrailSpec};
use rush_proto::{FileGrant, NetPolicy, Ops, SpawnRequest, StdioMode};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::cli::{ExecuteArgs, ExplainArgs, GateContextArgs, GuardrailCommand};
use crate::error::{EXIT_DECLINED, Error, Result};
use crate::render;

/// The shell an allowed command runs in. brush-parser models bash, the gate's parser: the
/// `rush` shell (brush-core) takes its place when it lands.
const SHELL: &str = "bash";

fn cwd_of(args: &GateContextArgs) -> Result<PathBuf> {
    let cwd = match &args.cwd {
        Some(d) => std::fs::canonicalize(d).with_context(|| format!("--cwd {}", d.display()))?,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    Ok(cwd)
}

pub fn assess_request(command: &str, args: &GateContextArgs) -> Result<AssessRequest> {
    rush_proto::gate::check_command(command).map_err(|e| Error::Usage(format!("COMMAND: {e}")))?;
    Ok(AssessRequest {
        command: command.to_owned(),
        cwd: cwd_of(args)?,
        agent: args.agent.clone(),
        trust: args.trust.clone(),
    })
}

pub fn explain(ctx: &mut Ctx, args: &ExplainArgs) -> Result<u8> {
    let req = assess_request(&args.command, &args.context)?;
    let a = ctx.connect()?.assess(req)?;
    if ctx.out.json {
        ctx.out.document(&a)?;
    } else {
        ctx.out.text(&render::gating::assessment(&a))?;
    }
    Ok(0)
}

pub fn execute(ctx: &mut Ctx, args: &ExecuteArgs) -> Result<u8> {
    let req = assess_request(&args.command, &args.context)?;
    let cwd = req.cwd.clone();
    let mut client = ctx.connect()?;
    let a = client.assess(req)?;
    // stdout is the command's: the verdict goes to stderr.
    eprintln!("rush: {}", render::gating::verdict_line(&a));
    let status = match a.decision {
        // --in-guest: the stricter path where the gate would run it here or sandboxed.
        GateDecision::Allow if args.in_guest => super::guest::run_in_guest(&a, &cwd)?,
        GateDecision::Allow => run_here(&a.command, &cwd)?,
        GateDecision::Deny => return Err(declined(&a, "denied")),
        GateDecision::Ask => match ask(&mut client, &a, &args.context, args.wait)? {
            true if args.in_guest => super::guest::run_in_guest(&a, &cwd)?,
            true => run_here(&a.command, &cwd)?,
            false => return Err(declined(&a, "not approved")),
        },
        GateDecision::Sandbox if args.in_guest => super::guest::run_in_guest(&a, &cwd)?,
        GateDecision::Sandbox => sandboxed(ctx, &a)?,
        GateDecision::VmOnly => super::guest::run_in_guest(&a, &cwd)?,
    };
    // What guardrails learn from; the command ran either way, so a daemon that cannot
    // take the record is said, not fatal.
    let record = ExecutionRecord {
        command: a.command.clone(),
        cwd,
        agent: args.context.agent.clone(),
        exit_code: status.code,
        decision: a.decision,
    };
    match ctx.connect().map(|mut c| c.record_execution(record)) {
        Ok(Ok(learned)) => {
            for g in learned {
                eprintln!(
                    "rush: learned guardrail {}: {} {}",
                    g.id,
                    g.decision,
                    render::sanitize(&g.pattern)
                );
            }
        }
        Ok(Err(e)) => eprintln!("rush: the outcome was not recorded (no guardrail can learn from it): {e}"),
        Err(_) => eprintln!("rush: the outcome was not recorded: the daemon is gone"),
    }
    Ok(status.exit_byte())
}

/// How a command ended.
#[derive(Debug, Clone, Copy)]
pub struct Ran {
    /// None: killed by `signal`.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Ran {
    /// What a shell would report: the code, or 128 + the signal.
    pub fn exit_byte(self) -> u8 {
        match (self.code, self.signal) {
            (Some(c), _) => (c & 0xff) as u8,
            (None, Some(s)) => (128 + s).min(255) as u8,
            (None, None) => 1,
        }
    }
}

fn declined(a: &Assessment, what: &str) -> Error {
    Error::Status {
        code: EXIT_DECLINED,
        message: format!("not run: {what}: {}", render::sanitize(&a.reason)),
    }
}

fn run_here(command: &str, cwd: &Path) -> Result<Ran> {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(SHELL)
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .status()
        .with_context(|| format!("cannot run {SHELL}"))?;
    Ok(Ran { code: status.code(), signal: status.signal() })
}

/// Asks a person: an agent through the human attention queue, an operator on this
/// terminal. Whether they said yes.
pub(crate) fn ask(
    client: &mut Client,
    a: &Assessment,
    args: &GateContextArgs,
    wait: Option<u64>,
) -> Result<bool> {
    let me = client.hello()?;
    let is_agent = matches!(me.caller.role, rush_proto::CallerRole::Agent { .. });
    if is_agent || args.agent.is_some() {
        let req = ApprovalRequest {
            agent: args.agent.clone(),
            action: one_line(&format!("run `{}` ({})", a.command, a.reason)),
            detail: ApprovalDetail::Command {
                argv: vec![SHELL.into(), "-c".into(), a.command.clone()],
                cwd: Some(a.cwd.clone()),
            },
            priority: None,
            timeout_secs: wait,
            on_timeout: None,
            class: None,
            freeze: false,
        };
        let asked = client.request_approval(req)?;
        eprintln!(
            "rush: {}; waiting for a decision",
            render::approval_pending_line(&asked, crate::time::now_unix_ms())
        );
        let decided = super::approvals::wait_until_decided(client, args.agent.as_deref(), asked, wait)?;
        eprintln!("rush: {}", render::approval_line(&decided));
        return Ok(decided.state == ApprovalState::Approved);
    }
    let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !tty {
        return Err(Error::Status {
            code: EXIT_DECLINED,
            message: format!(
                "not run: {}: a person must say yes, and there is no terminal to ask on (run it from one, or as an agent: its request goes to `rush approvals`)",
                render::sanitize(&a.reason)
            ),
        });
    }
    eprint!("{}Run it? [y/N] ", render::gating::assessment(a));
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// An approval's action line: control characters (a multi-line command) are refused in it,
/// so they are shown as spaces; the command itself travels intact in the detail.
fn one_line(s: &str) -> String {
    let line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    line.chars().take(rush_proto::approval::MAX_TEXT / 4).collect()
}

/// Runs it as a new confined agent that may touch only the workspace.
fn sandboxed(ctx: &mut Ctx, a: &Assessment) -> Result<Ran> {
    let workspace = a.workspace.clone().unwrap_or_else(|| a.cwd.clone());
    let all = Ops(Ops::READ.0 | Ops::WRITE.0 | Ops::CREATE.0 | Ops::DELETE.0 | Ops::EXEC.0);
    let request = SpawnRequest {
        name: format!("gate-{}", std::process::id()),
        command: vec![SHELL.into(), "-c".into(), a.command.clone()],
        net: Some(NetPolicy::Deny),
        // The confinement is this request's own (no network, one token), not a trust
        // level's: those may carry budgets this daemon cannot count.
        trust: None,
        budget: Default::default(),
        allow: vec![FileGrant { path: workspace.clone(), ops: all, ttl_secs: None }],
        env: std::env::vars().collect(),
        cwd: a.cwd.clone(),
        stdio: StdioMode::Passed,
        tty_size: None,
        allow_unconfined: false,
        session: None,
        restartable: false,
        hardlinks: None,
        user: None,
    };
    eprintln!("rush: sandboxed: agent {} may touch only {}, no network", request.name, workspace.display());
    let code = super::spawn::run_foreground(ctx, request)?;
    Ok(Ran { code: Some(i32::from(code)), signal: None })
}

/// `rush guardrail export`'s file: `[[guardrail]]` tables.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailFile {
    #[serde(default)]
    guardrail: Vec<GuardrailSpec>,
}

pub fn guardrail(ctx: &mut Ctx, cmd: GuardrailCommand) -> Result<u8> {
    match cmd {
        GuardrailCommand::List => {
            let list = ctx.connect()?.list_guardrails()?;
            if ctx.out.json {
                ctx.out.document(&list)?;
            } else {
                ctx.out.text(&render::gating::guardrails(&list))?;
            }
        }
        GuardrailCommand::Rm { id } => {
            let removed = ctx.connect()?.remove_guardrail(id)?;
            if ctx.out.json {
                ctx.out.document(&removed)?;
            } else {
                for g in &removed {
                    ctx.out.text(&format!(
                        "removed guardrail {}: {}\n",
                        g.id,
                        render::sanitize(&g.pattern)
                    ))?;
                }
            }
        }
        GuardrailCommand::Export { scope } => {
            let list = ctx.connect()?.list_guardrails()?;
            let file = GuardrailFile {
                guardrail: list
                    .into_iter()
                    .filter(|g| scope.is_empty() || scope.contains(&g.scope))
                    .map(|g| GuardrailSpec {
                        pattern: g.pattern,
                        decision: g.decision,
                        scope: g.scope,
                        because: g.because,
                    })
                    .collect(),
            };
            if ctx.out.json {
                ctx.out.document(&file.guardrail)?;
            } else {
                let text = toml::to_string_pretty(&file).context("cannot write the guardrails as TOML")?;
                ctx.out.text(&text)?;
            }
        }
        GuardrailCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let parsed: GuardrailFile = toml::from_str(&text)
                .map_err(|e| anyhow!("{}: not a guardrails file: {e}", file.display()))?;
            let (added, existing) = ctx.connect()?.import_guardrails(parsed.guardrail)?;
            if ctx.out.json {
                ctx.out.document(&serde_json::json!({"added": added, "existing": existing}))?;
            } else {
                ctx.out.text(&format!(
                    "imported {} guardrail(s); {} already there\n",
                    added.len(),
                    existing.len()
                ))?;
            }
        }
    }
    Ok(0)
}

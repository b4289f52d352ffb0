//! `rush approval request|wait|show|cancel|list`, `rush ask`, `rush approvals`, `rush
//! approve`, `rush reject`, `rush human-queue configure|show`, `rush approval-policy set`:
//! the human attention queue.
//!
//! Inside an agent, rush asks, waits and lists as that agent (the daemon knows it by its
//! cgroup); the operator names the agent it acts for with --agent, and alone decides.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rush_proto::approval::{
    Approval, ApprovalBatch, ApprovalDetail, ApprovalKind, ApprovalState, ApprovalTarget, Channel,
    DecideRequest, MAX_WAIT_SECS, QueueChange,
};
use rush_proto::client::{Client, ClientError};
use rush_proto::{AgentName, AuditEvent, Event, SubscribeRequest};

use super::Ctx;
use crate::cli::{
    ApprovalPolicyCommand, ConfigureArgs, DecideTarget, HumanQueueCommand, IdArgs, ListArgs, RequestArgs,
    WaitArgs,
};
use crate::error::{EXIT_DECLINED, EXIT_STILL_PENDING, Error, Result};
use crate::render;
use crate::time::now_unix_ms;

/// How long past a request's deadline a wait without --timeout goes on, for the daemon to
/// apply the deadline (expire it, approve it, or escalate it with a new one).
const DEADLINE_GRACE_MS: u64 = 5000;

fn name(a: Option<&AgentName>) -> Option<String> {
    a.map(|a| a.to_string())
}

pub fn request(ctx: &mut Ctx, args: RequestArgs) -> Result<u8> {
    let command = args.kind == ApprovalKind::Command;
    let cwd = if command {
        std::env::current_dir().context("cannot read the current directory, where the command would run")?
    } else {
        "/".into()
    };
    let request = args.to_request(&cwd)?;
    let agent = name(args.agent.as_ref());
    let mut client = ctx.connect()?;
    let asked = client.request_approval(request)?;
    let pending = render::approval_pending_line(&asked, now_unix_ms());
    if !args.wait {
        if ctx.out.json {
            ctx.out.document(&asked)?;
        } else {
            ctx.out.text(&format!("{pending}\n"))?;
        }
        return Ok(0);
    }
    eprintln!("rush: {pending}; waiting for a decision");
    let decided = wait_until_decided(&mut client, agent.as_deref(), asked, args.wait_timeout)?;
    if command {
        return match decided.state {
            ApprovalState::Approved => run_approved(&decided, &args.command),
            // stdout is the command's: rush says the rest on stderr, also with --json.
            _ => Err(not_approved(&decided)),
        };
    }
    answer(ctx, &decided)
}

pub fn wait(ctx: &mut Ctx, args: WaitArgs) -> Result<u8> {
    let agent = name(args.agent.as_ref());
    let mut client = ctx.connect()?;
    let first = client.wait_approval(agent.as_deref(), args.id, None)?;
    let decided = wait_until_decided(&mut client, agent.as_deref(), first, args.timeout)?;
    answer(ctx, &decided)
}

/// Waits until `a` is decided, or `limit` seconds pass (None: until its deadline, as it
/// may move by an escalation), in calls of at most [`MAX_WAIT_SECS`]. Returns it as it is
/// then: still pending if the wait ran out.
pub(super) fn wait_until_decided(
    client: &mut Client,
    agent: Option<&str>,
    mut a: Approval,
    limit: Option<u64>,
) -> Result<Approval> {
    let start = Instant::now();
    while a.state == ApprovalState::Pending {
        let left_ms = match limit {
            Some(secs) => (secs * 1000).saturating_sub(start.elapsed().as_millis() as u64),
            None => (a.deadline_unix_ms + DEADLINE_GRACE_MS).saturating_sub(now_unix_ms()),
        };
        if left_ms == 0 {
            break;
        }
        let call = Instant::now();
        a = client.wait_approval(agent, a.id, Some(left_ms.div_ceil(1000).min(MAX_WAIT_SECS)))?;
        // An early answer with nothing decided (an escalation): never spin on it.
        if a.state == ApprovalState::Pending && call.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(a)
}

/// The outcome as an exit status: 0 approved, 3 declined, 4 still pending.
fn answer(ctx: &mut Ctx, a: &Approval) -> Result<u8> {
    if ctx.out.json {
        ctx.out.document(a)?;
    }
    match a.state {
        ApprovalState::Approved => {
            if !ctx.out.json {
                ctx.out.text(&format!("{}\n", render::approval_line(a)))?;
            }
            Ok(0)
        }
        _ => Err(not_approved(a)),
    }
}

fn not_approved(a: &Approval) -> Error {
    match a.state {
        ApprovalState::Pending => Error::Status {
            code: EXIT_STILL_PENDING,
            message: format!("{}; stopped waiting", render::approval_pending_line(a, now_unix_ms())),
        },
        _ => Error::Status { code: EXIT_DECLINED, message: render::approval_line(a) },
    }
}

/// Runs an approved command in place of rush: the argv approved, which must be the one
/// asked, in the directory it was asked from. Returns only if it cannot be run.
fn run_approved(a: &Approval, asked: &[String]) -> Result<u8> {
    let ApprovalDetail::Command { argv, cwd } = &a.detail else {
        return Err(
            anyhow!("approval {} is not of a command (the daemon answered kind {})", a.id, a.kind()).into()
        );
    };
    if argv.as_slice() != asked {
        return Err(anyhow!(
            "approval {} is of `{}`, not of the command asked, `{}`: not running either",
            a.id,
            render::shell_join(argv),
            render::shell_join(asked)
        )
        .into());
    }
    eprintln!("rush: {}; running it", render::approval_line(a));
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let error = command.exec();
    let code = if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    Err(Error::Status { code, message: format!("cannot run {}: {error}", render::sanitize(&argv[0])) })
}

pub fn show(ctx: &mut Ctx, args: IdArgs) -> Result<u8> {
    let a = ctx.connect()?.wait_approval(name(args.agent.as_ref()).as_deref(), args.id, None)?;
    if ctx.out.json {
        ctx.out.document(&a)?;
    } else {
        ctx.out.text(&render::approval_detail(&a, now_unix_ms()))?;
    }
    Ok(0)
}

pub fn cancel(ctx: &mut Ctx, args: IdArgs) -> Result<u8> {
    let a = ctx.connect()?.cancel_approval(name(args.agent.as_ref()).as_deref(), args.id)?;
    if ctx.out.json {
        ctx.out.document(&a)?;
    } else {
        ctx.out.text(&format!("{}\n", render::approval_line(&a)))?;
    }
    Ok(0)
}

/// `rush approvals --json`: the reply as it came.
#[derive(serde::Serialize)]
struct Listing<'a> {
    approvals: &'a [Approval],
    batches: &'a [ApprovalBatch],
}

pub fn list(ctx: &mut Ctx, args: ListArgs) -> Result<u8> {
    if args.follow {
        return follow(ctx, args);
    }
    let (approvals, batches) =
        ctx.connect()?.list_approvals(name(args.agent.as_ref()).as_deref(), args.all)?;
    if ctx.out.json {
        ctx.out.document(&Listing { approvals: &approvals, batches: &batches })?;
    } else {
        ctx.out.text(&render::approvals_table(&approvals, &batches, now_unix_ms()))?;
    }
    Ok(0)
}

fn blocking(channel: &Channel) -> bool {
    *channel == Channel::Cli { blocking: true }
}

/// `rush approvals --follow`: the list, then requests and decisions as they come, with a
/// prompt for each `cli:blocking` request when rush runs at a terminal.
fn follow(ctx: &mut Ctx, args: ListArgs) -> Result<u8> {
    let agent = name(args.agent.as_ref());
    let mut events = ctx.connect()?;
    // Subscribed before listing: nothing arriving in between is missed.
    let kinds = vec!["approval_requested".to_owned(), "approval_decided".to_owned()];
    let sub = events.subscribe(SubscribeRequest { kinds, agent: agent.clone(), session: None })?;
    // Listing and deciding go on a connection of their own: a stream's serves nothing else.
    let mut queue = ctx.connect()?;
    let (approvals, batches) = queue.list_approvals(agent.as_deref(), args.all)?;
    if ctx.out.json {
        ctx.out.json_line(&Listing { approvals: &approvals, batches: &batches })?;
    } else {
        ctx.out.text(&render::approvals_table(&approvals, &batches, now_unix_ms()))?;
    }
    let prompting = !ctx.out.json && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut prompted = BTreeSet::new();
    if prompting {
        for a in approvals.iter().filter(|a| a.state == ApprovalState::Pending && blocking(&a.channel)) {
            prompted.insert(a.id);
            prompt(ctx, &mut queue, a.id, &a.agent, &a.action)?;
        }
    }
    loop {
        let event = match events.next_event(sub) {
            Ok(event) => event,
            Err(ClientError::Closed) => {
                return Err(anyhow!("the daemon closed the event stream (did it stop?)").into());
            }
            Err(e) => return Err(e.into()),
        };
        let record = match &event {
            Event::Audit(record) => record,
            Event::Lagged { missed } => {
                if ctx.out.json {
                    ctx.out.json_line(&event)?;
                }
                return Err(anyhow!(
                    "this subscriber fell {missed} events behind and the daemon dropped it; `rush approvals` \
                     lists what is pending"
                )
                .into());
            }
        };
        if ctx.out.json {
            ctx.out.json_line(&event)?;
        } else if let Some(line) = render::approval_event_line(record, now_unix_ms()) {
            ctx.out.text(&format!("{line}\n"))?;
        }
        if !prompting {
            continue;
        }
        let agent = record.agent.clone().unwrap_or_default();
        match &record.event {
            AuditEvent::ApprovalRequested { id, action, channel, .. }
                if blocking(channel) && prompted.insert(*id) =>
            {
                prompt(ctx, &mut queue, *id, &agent, action)?;
            }
            // Escalated: it may have moved to a blocking channel.
            AuditEvent::ApprovalDecided { id, escalated: true, state: ApprovalState::Pending, .. } => {
                let a = match queue.wait_approval(None, *id, None) {
                    Ok(a) => a,
                    Err(e) => {
                        warn(Error::from(e));
                        continue;
                    }
                };
                if a.state == ApprovalState::Pending && blocking(&a.channel) && prompted.insert(a.id) {
                    prompt(ctx, &mut queue, a.id, &a.agent, &a.action)?;
                }
            }
            _ => {}
        }
    }
}

/// An error that does not end `--follow`, on stderr.
fn warn(e: Error) {
    for line in e.lines() {
        eprintln!("rush: {line}");
    }
}

/// Rings the bell and asks about request `id` in this terminal: y approves it, n rejects
/// it, anything else (or end of input) leaves it pending.
fn prompt(ctx: &mut Ctx, queue: &mut Client, id: u64, agent: &str, action: &str) -> Result<()> {
    ctx.out.text(&format!(
        "\x07approve {id} ({}: {})? [y]es/[n]o/[s]kip: ",
        render::sanitize(agent),
        render::sanitize(action)
    ))?;
    let mut line = String::new();
    let n = std::io::stdin().read_line(&mut line).context("cannot read the answer from the terminal")?;
    if n == 0 {
        ctx.out.text("\n")?;
    }
    let approve = match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => true,
        "n" | "no" => false,
        _ => {
            ctx.out.text(&format!("skipped {id}: still pending\n"))?;
            return Ok(());
        }
    };
    let request = DecideRequest {
        target: ApprovalTarget::Id(id),
        approve,
        exclude: vec![],
        ttl_secs: None,
        reason: None,
        remember: None,
        remember_scope: None,
    };
    match queue.decide(request) {
        Ok(decided) => {
            let text: String = decided.iter().map(|a| format!("{}\n", render::decided_line(a))).collect();
            ctx.out.text(&text)?;
        }
        Err(e) => warn(Error::from(e)),
    }
    Ok(())
}

pub fn decide(
    ctx: &mut Ctx,
    target: &DecideTarget,
    approve: bool,
    ttl_secs: Option<u64>,
    remember: &crate::cli::RememberArgs,
) -> Result<u8> {
    let mut request = target.to_request(approve, ttl_secs);
    request.remember = remember.decision();
    request.remember_scope = remember.scope.clone();
    if request.remember_scope.is_some() && request.remember.is_none() {
        return Err(Error::Usage(
            "--scope is where a guardrail applies: give --always, --always-ask or --never".into(),
        ));
    }
    let decided = ctx.connect()?.decide(request)?;
    if decided.is_empty() {
        let what = match &target.batch {
            Some(key) => format!("no pending request of batch {key:?} is left to decide"),
            None => "no request was decided".to_owned(),
        };
        return Err(Error::from(anyhow!("{what}")).with_hint("`rush approvals` lists what is pending"));
    }
    if ctx.out.json {
        ctx.out.document(&decided)?;
    } else {
        let text: String = decided.iter().map(|a| format!("{}\n", render::decided_line(a))).collect();
        ctx.out.text(&text)?;
    }
    Ok(0)
}

pub fn human_queue(ctx: &mut Ctx, cmd: HumanQueueCommand) -> Result<u8> {
    let settings = match cmd {
        HumanQueueCommand::Configure(args) => configure(ctx, &args)?,
        HumanQueueCommand::Show => ctx.connect()?.show_queue()?,
    };
    show_settings(ctx, &settings)
}

fn configure(ctx: &mut Ctx, args: &ConfigureArgs) -> Result<rush_proto::approval::QueueSettings> {
    let change = args.to_change()?;
    Ok(ctx.connect()?.configure_queue(change)?)
}

pub fn approval_policy(ctx: &mut Ctx, cmd: ApprovalPolicyCommand) -> Result<u8> {
    let ApprovalPolicyCommand::Set(args) = cmd;
    let change = QueueChange { class: Some(args.to_policy()), ..QueueChange::default() };
    let settings = ctx.connect()?.configure_queue(change)?;
    show_settings(ctx, &settings)
}

fn show_settings(ctx: &mut Ctx, settings: &rush_proto::approval::QueueSettings) -> Result<u8> {
    if ctx.out.json {
        ctx.out.document(settings)?;
    } else {
        ctx.out.text(&render::queue_settings(settings))?;
    }
    Ok(0)
}

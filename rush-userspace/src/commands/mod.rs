//! One function per command: build the request, talk to the daemon, render the answer.
//! Each returns the exit status on success; failures are `Error`s, mapped in `main`.

mod agent;
mod approvals;
mod attach;
mod audit;
mod capability;
mod coordination;
mod doctor;
mod events;
pub(crate) mod gating;
mod guest;
mod hook;
mod meta;
mod perf;
mod session;
mod spawn;
mod terminal;
mod workspace;

use std::io::StdoutLock;
use std::path::PathBuf;

use rush_proto::ErrorKind;
use rush_proto::client::{Client, ClientError};

use crate::cli::{AgentCommand, ApprovalCommand, CapabilityCommand, Cli, Command};
use crate::error::{Error, Result};
use crate::output::Output;

/// What every command gets: where the daemon is, and stdout.
pub struct Ctx {
    pub socket: PathBuf,
    pub out: Output<StdoutLock<'static>>,
}

impl Ctx {
    pub fn connect(&self) -> Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }
}

/// An attachment to agent `name`'s terminal (for `rush top`'s `a`): true when the detach
/// keys ended it (the agent runs on), false when the agent's terminal closed.
pub fn terminal_session(
    ctx: &mut Ctx,
    name: &str,
    mode: rush_proto::terminal::AttachMode,
    keys: &[u8],
) -> Result<bool> {
    Ok(matches!(terminal::session(ctx, name, mode, keys)?, terminal::Ended::Detached))
}

pub fn run(cli: Cli) -> Result<u8> {
    run_command(cli).map_err(hint_rush_session)
}

/// A session that is gone, named by RUSH_SESSION: say where the name came from.
fn hint_rush_session(e: Error) -> Error {
    let Ok(Some(s)) = session::env_session() else { return e };
    let Error::Failed { error, .. } = &e else { return e };
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Api(api))
            if api.kind == ErrorKind::NotFound && api.message.starts_with(&format!("no session {s:?}")) =>
        {
            e.with_hint(format!(
                "RUSH_SESSION={s} is set in your environment (by `rush session attach`?): \
                 `unset RUSH_SESSION`, or give --session"
            ))
        }
        _ => e,
    }
}

fn run_command(cli: Cli) -> Result<u8> {
    let mut ctx = Ctx { socket: cli.socket, out: Output::stdout(cli.json) };
    match cli.command {
        Command::Agent(AgentCommand::Spawn(args)) => spawn::spawn(&mut ctx, args),
        Command::Agent(AgentCommand::List) => agent::list(&mut ctx),
        Command::Agent(AgentCommand::Status { name }) => agent::status(&mut ctx, name.as_ref()),
        Command::Agent(AgentCommand::Kill { name }) => agent::kill(&mut ctx, &name),
        Command::Agent(AgentCommand::Pause { name }) => {
            let agent = ctx.connect()?.pause_agent(name.as_str())?;
            agent::show(&mut ctx, agent)
        }
        Command::Agent(AgentCommand::Resume { name, budget }) => {
            let agent = ctx.connect()?.resume_agent(name.as_str(), budget)?;
            agent::show(&mut ctx, agent)
        }
        Command::Agent(AgentCommand::Logs { name, follow }) => agent::logs(&mut ctx, &name, follow),
        Command::Agent(AgentCommand::Attach { name, read_only, steal, detach_keys }) => {
            let mode = match (read_only, steal) {
                (true, _) => rush_proto::terminal::AttachMode::Read,
                (false, true) => rush_proto::terminal::AttachMode::Steal,
                (false, false) => rush_proto::terminal::AttachMode::Write,
            };
            terminal::attach(&mut ctx, &name.to_string(), mode, &detach_keys.0)
        }
        Command::Agent(AgentCommand::Send { name, text, enter }) => {
            terminal::send(&mut ctx, &name.to_string(), &text, enter)
        }
        Command::Agent(AgentCommand::Broadcast(args)) => coordination::broadcast(&mut ctx, args),
        Command::Agent(AgentCommand::QueryIntents(args)) => coordination::query_intents(&mut ctx, args),
        Command::Agent(AgentCommand::Claim(args)) => coordination::claim(&mut ctx, args),
        Command::Agent(AgentCommand::Renew(args)) => coordination::renew(&mut ctx, args),
        Command::Agent(AgentCommand::Release(args)) => coordination::release(&mut ctx, args),
        Command::Agent(AgentCommand::Claims(args)) => coordination::claims(&mut ctx, args),
        Command::Agent(AgentCommand::Publish(args)) => coordination::publish(&mut ctx, args),
        Command::Agent(AgentCommand::Results(args)) => coordination::results(&mut ctx, args),
        Command::Agent(AgentCommand::Delegate(args)) => coordination::delegate(&mut ctx, *args),
        Command::Agent(AgentCommand::Inbox(args)) => coordination::inbox(&mut ctx, args),
        Command::Agent(AgentCommand::Workspace(cmd)) => workspace::workspace(&mut ctx, cmd),
        Command::Capability(CapabilityCommand::Grant(args)) => capability::grant(&mut ctx, args),
        Command::Capability(CapabilityCommand::Revoke(args)) => capability::revoke(&mut ctx, args),
        Command::Capability(CapabilityCommand::List { agent }) => capability::list(&mut ctx, agent),
        Command::Capability(CapabilityCommand::Commit { agent, token }) => {
            capability::commit(&mut ctx, agent.as_ref(), token)
        }
        Command::Session(cmd) => session::session(&mut ctx, cmd),
        Command::Checkpoint(args) => session::checkpoint(&mut ctx, args),
        Command::Rollback(args) => session::rollback(&mut ctx, args),
        Command::Timeline(cmd) => session::timeline(&mut ctx, cmd),
        Command::Audit(args) => audit::audit(&mut ctx, args),
        Command::Events(args) => events::events(&mut ctx, args),
        Command::Approval(ApprovalCommand::Request(args)) | Command::Ask(args) => {
            approvals::request(&mut ctx, *args)
        }
        Command::Approval(ApprovalCommand::Wait(args)) => approvals::wait(&mut ctx, args),
        Command::Approval(ApprovalCommand::Show(args)) => approvals::show(&mut ctx, args),
        Command::Approval(ApprovalCommand::Cancel(args)) => approvals::cancel(&mut ctx, args),
        Command::Approval(ApprovalCommand::List(args)) | Command::Approvals(args) => {
            approvals::list(&mut ctx, args)
        }
        Command::Approve(args) => approvals::decide(&mut ctx, &args.target, true, args.ttl, &args.remember),
        Command::Reject(args) => approvals::decide(&mut ctx, &args.target, false, None, &args.remember),
        Command::Explain(args) => gating::explain(&mut ctx, &args),
        Command::Execute(args) => gating::execute(&mut ctx, &args),
        Command::Guardrail(cmd) => gating::guardrail(&mut ctx, cmd),
        Command::Hook(cmd) => hook::hook(&mut ctx, cmd),
        Command::HumanQueue(cmd) => approvals::human_queue(&mut ctx, cmd),
        Command::ApprovalPolicy(cmd) => approvals::approval_policy(&mut ctx, cmd),
        Command::Perf(args) => perf::perf(&mut ctx, &args),
        Command::Top(args) => crate::top::run(
            &mut ctx,
            crate::top::Options {
                agent: args.agent,
                refresh: std::time::Duration::from_secs_f64(args.refresh),
                plain: args.plain,
                iterations: args.iterations,
            },
        ),
        Command::Doctor { profile: None } => doctor::doctor(&mut ctx),
        Command::Doctor { profile: Some(name) } => doctor::profile(&mut ctx, &name),
        Command::Version => meta::version(&mut ctx),
        Command::Whoami => meta::whoami(&mut ctx),
        Command::Completions { shell } => meta::completions(&mut ctx, shell),
        Command::Man { dir } => meta::man(&mut ctx, dir.as_deref()),
    }
}

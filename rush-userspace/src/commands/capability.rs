//! `rush capability grant | revoke | list`.

use rush_proto::{AgentName, ChangeAction, ChangeEffect, GrantRequest, RevokeTarget};

use super::Ctx;
use crate::cli::{GrantArgs, RevokeArgs};
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

/// Tells the operator, before the change, what it will do to the running agent (Landlock
/// restarts or kills it); on stderr, so `--json` output stays one document.
fn announce(ctx: &mut Ctx, agent: &str, revoke: Option<RevokeTarget>) -> Result<()> {
    // The change itself reports what is wrong (no such agent or token): not said twice.
    if let Ok(effect) = ctx.connect()?.change_effect(agent, revoke)
        && effect.action != ChangeAction::InPlace
    {
        eprintln!("rush: {}", render::sanitize(&effect.detail));
    }
    Ok(())
}

/// What the change did, when it was more than a map update.
fn outcome(effect: &Option<ChangeEffect>) {
    let Some(e) = effect else { return };
    match (e.action, e.new_pid) {
        (ChangeAction::Restart, Some(new)) => {
            eprintln!(
                "rush: agent {} restarted under the new rules: pid {} -> {new}",
                render::sanitize(&e.agent),
                e.pid
            )
        }
        (ChangeAction::Kill, _) => {
            eprintln!("rush: agent {} (pid {}) killed", render::sanitize(&e.agent), e.pid)
        }
        _ => {}
    }
}

pub fn grant(ctx: &mut Ctx, args: GrantArgs) -> Result<u8> {
    announce(ctx, &args.agent.to_string(), None)?;
    let (token, effect) = ctx.connect()?.grant(GrantRequest {
        agent: args.agent.to_string(),
        path: args.path,
        ops: args.ops,
        duration_secs: args.duration,
        condition: args.condition,
    })?;
    outcome(&effect);
    if ctx.out.json {
        ctx.out.document(&token)?;
    } else {
        ctx.out.text(&format!("granted {}\n", render::token_line(&token, now_unix_ms())))?;
        if let (Some(cmd), Some(worktree)) = (&token.condition, &token.worktree) {
            ctx.out.text(&format!(
                "the agent writes to its worktree {}; `{}` decides on `rush capability commit {}`\n",
                worktree.display(),
                cmd,
                token.agent
            ))?;
        }
    }
    Ok(0)
}

pub fn revoke(ctx: &mut Ctx, args: RevokeArgs) -> Result<u8> {
    let target = match (args.path, args.id) {
        (Some(p), _) => RevokeTarget::Path(p),
        (None, Some(id)) => RevokeTarget::Id(id),
        (None, None) => unreachable!("clap requires --path or --id"),
    };
    announce(ctx, &args.agent.to_string(), Some(target.clone()))?;
    let (tokens, effect) = ctx.connect()?.revoke(args.agent.as_str(), target)?;
    outcome(&effect);
    if ctx.out.json {
        ctx.out.document(&tokens)?;
    } else {
        let now = now_unix_ms();
        let text: String =
            tokens.iter().map(|t| format!("revoked {}\n", render::token_line(t, now))).collect();
        ctx.out.text(&text)?;
    }
    Ok(0)
}

pub fn commit(ctx: &mut Ctx, agent: Option<&AgentName>, token: Option<u64>) -> Result<u8> {
    let outcomes = ctx.connect()?.commit(agent.map(AgentName::as_str), token)?;
    if ctx.out.json {
        ctx.out.document(&outcomes)?;
    } else {
        let text: String = outcomes.iter().map(|o| format!("{}\n", render::commit_line(o))).collect();
        ctx.out.text(&text)?;
    }
    Ok(if outcomes.iter().all(|o| o.promoted) { 0 } else { 1 })
}

pub fn list(ctx: &mut Ctx, agent: Option<AgentName>) -> Result<u8> {
    let tokens = ctx.connect()?.list_capabilities(agent.as_ref().map(AgentName::as_str))?;
    if ctx.out.json {
        ctx.out.document(&tokens)?;
    } else {
        ctx.out.text(&render::token_table(&tokens, now_unix_ms()))?;
    }
    Ok(0)
}

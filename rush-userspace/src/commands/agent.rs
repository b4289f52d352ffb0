//! `rush agent list | status | pause | resume | kill | logs`.

use anyhow::anyhow;
use rush_proto::client::ClientError;
use rush_proto::{AgentName, Request, Response};
use serde::Serialize;

use super::{Ctx, unexpected};
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

pub fn list(ctx: &mut Ctx) -> Result<u8> {
    let agents = match ctx.connect()?.call(Request::ListAgents)? {
        Response::Agents { agents } => agents,
        other => return Err(unexpected("agents", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&agents)?;
    } else {
        ctx.out.text(&render::agent_table(&agents, now_unix_ms()))?;
    }
    Ok(0)
}

pub fn status(ctx: &mut Ctx, name: &AgentName) -> Result<u8> {
    show(ctx, Request::AgentStatus { name: name.to_string() })
}

/// Sends a request answered by one agent (status, pause, resume) and prints it.
pub fn show(ctx: &mut Ctx, request: Request) -> Result<u8> {
    let agent = match ctx.connect()?.call(request)? {
        Response::Agent { agent } => agent,
        other => return Err(unexpected("agent", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&agent)?;
    } else {
        ctx.out.text(&render::agent_status(&agent, now_unix_ms()))?;
    }
    Ok(0)
}

pub fn kill(ctx: &mut Ctx, name: &AgentName) -> Result<u8> {
    #[derive(Serialize)]
    struct Killed {
        name: String,
        processes_killed: u32,
    }
    let killed = match ctx.connect()?.call(Request::KillAgent { name: name.to_string() })? {
        Response::Killed { name, processes_killed } => Killed { name, processes_killed },
        other => return Err(unexpected("killed", &other)),
    };
    if ctx.out.json {
        ctx.out.document(&killed)?;
    } else {
        let n = killed.processes_killed;
        let noun = if n == 1 { "process" } else { "processes" };
        ctx.out.text(&format!("killed {} ({n} {noun})\n", render::sanitize(&killed.name)))?;
    }
    Ok(0)
}

/// Prints chunks as they arrive, until the daemon marks the last one (`end`): without
/// --follow once the captured output is sent, with it once the agent exited.
pub fn logs(ctx: &mut Ctx, name: &AgentName, follow: bool) -> Result<u8> {
    #[derive(Serialize)]
    struct Chunk<'a> {
        data: &'a str,
    }
    let mut client = ctx.connect()?;
    let id = client.send(Request::AgentLogs { name: name.to_string(), follow }, &[])?;
    // `--json` without --follow: one document with all the output.
    let mut whole = String::new();
    loop {
        let (data, end) = match client.recv_for(id) {
            Ok(Response::Logs { data, end }) => (data, end),
            Ok(other) => return Err(unexpected("logs", &other)),
            Err(ClientError::Closed) => {
                return Err(anyhow!("the daemon closed the log stream of {name} before its end").into());
            }
            Err(e) => return Err(e.into()),
        };
        match (ctx.out.json, follow) {
            (true, false) => whole.push_str(&data),
            _ if data.is_empty() => {}
            (true, true) => ctx.out.json_line(&Chunk { data: &data })?,
            (false, _) => ctx.out.text(&data)?,
        }
        if end {
            break;
        }
    }
    if ctx.out.json && !follow {
        ctx.out.document(&Chunk { data: &whole })?;
    }
    Ok(0)
}

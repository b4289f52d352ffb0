//! `rush agent list | status | pause | resume | kill | logs`.

use anyhow::anyhow;
use rush_proto::client::ClientError;
use rush_proto::{AgentInfo, AgentName};
use serde::Serialize;

use super::Ctx;
use crate::error::Result;
use crate::render;
use crate::time::now_unix_ms;

pub fn list(ctx: &mut Ctx) -> Result<u8> {
    let agents = ctx.connect()?.list_agents()?;
    if ctx.out.json {
        ctx.out.document(&agents)?;
    } else {
        ctx.out.text(&render::agent_table(&agents, now_unix_ms()))?;
    }
    Ok(0)
}

/// One agent; without a name, the caller's own (inside an agent).
pub fn status(ctx: &mut Ctx, name: Option<&AgentName>) -> Result<u8> {
    let agent = ctx.connect()?.agent_status(name.map(AgentName::as_str))?;
    show(ctx, agent)
}

/// Prints what a request answered by one agent (status, pause, resume) got.
pub fn show(ctx: &mut Ctx, agent: AgentInfo) -> Result<u8> {
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
    let processes_killed = ctx.connect()?.kill_agent(name.as_str())?;
    let killed = Killed { name: name.to_string(), processes_killed };
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
    let id = client.agent_logs(name.as_str(), follow)?;
    // `--json` without --follow: one document with all the output.
    let mut whole = String::new();
    loop {
        let (data, end) = match client.logs_next(id) {
            Ok(chunk) => chunk,
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

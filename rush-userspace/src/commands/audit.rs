//! `rush audit`.

use anyhow::anyhow;
use rush_proto::client::ClientError;
use rush_proto::{AuditQuery, Request, Response};

use super::{Ctx, unexpected};
use crate::cli::AuditArgs;
use crate::error::Result;
use crate::render;

pub fn audit(ctx: &mut Ctx, args: AuditArgs) -> Result<u8> {
    let query = AuditQuery {
        agent: args.agent.map(|a| a.to_string()),
        since_unix_ms: args.since,
        limit: args.limit,
        follow: args.follow,
    };
    let mut client = ctx.connect()?;
    let id = client.send(Request::Audit(query), &[])?;
    loop {
        let events = match client.recv_for(id) {
            Ok(Response::AuditEvents { events }) => events,
            Ok(other) => return Err(unexpected("audit_events", &other)),
            Err(ClientError::Closed) if args.follow => {
                return Err(anyhow!("the daemon closed the audit stream (did it stop?)").into());
            }
            Err(e) => return Err(e.into()),
        };
        if !args.follow {
            if ctx.out.json {
                ctx.out.document(&events)?;
            } else {
                let text: String = events.iter().map(|r| render::audit_line(r) + "\n").collect();
                ctx.out.text(&text)?;
            }
            return Ok(0);
        }
        for record in &events {
            if ctx.out.json {
                ctx.out.json_line(record)?;
            } else {
                ctx.out.text(&(render::audit_line(record) + "\n"))?;
            }
        }
    }
}

//! `rush audit`.

use anyhow::anyhow;
use rush_proto::AuditQuery;
use rush_proto::client::ClientError;

use super::Ctx;
use crate::cli::AuditArgs;
use crate::error::Result;
use crate::render;

pub fn audit(ctx: &mut Ctx, args: AuditArgs) -> Result<u8> {
    let query = AuditQuery {
        agent: args.agent.map(|a| a.to_string()),
        since_unix_ms: args.since,
        until_unix_ms: args.until,
        session: args.session.map(|s| s.to_string()),
        kinds: args.kind,
        caller_uid: args.caller_uid,
        limit: args.limit,
        follow: args.follow,
    };
    let mut client = ctx.connect()?;
    let (id, first) = client.audit(query)?;
    let mut first = Some(first);
    loop {
        let events = match first.take() {
            Some(events) => Ok(events),
            None => client.audit_next(id),
        };
        let events = match events {
            Ok(events) => events,
            Err(ClientError::Closed) if args.follow => {
                return Err(anyhow!("the daemon closed the audit stream (did it stop?)").into());
            }
            Err(e) => return Err(e.into()),
        };
        if args.export {
            let mut lines = String::new();
            for record in &events {
                lines.push_str(&serde_json::to_string(record).expect("protocol types serialize"));
                lines.push('\n');
            }
            ctx.out.text(&lines)?;
            return Ok(0);
        }
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

//! `rush events`.

use anyhow::anyhow;
use rush_proto::client::ClientError;
use rush_proto::{AuditQuery, Event, SubscribeRequest};

use super::Ctx;
use crate::cli::EventsArgs;
use crate::error::Result;
use crate::render;

pub fn events(ctx: &mut Ctx, args: EventsArgs) -> Result<u8> {
    let agent = args.agent.map(|a| a.to_string());
    let session = args.session.map(|s| s.to_string());
    let mut client = ctx.connect()?;
    if !args.follow {
        // The past is the audit trail's: the newest matching records.
        let query = AuditQuery { agent, session, kinds: args.kinds, limit: args.limit, ..Default::default() };
        let (_, records) = client.audit(query)?;
        let events: Vec<Event> = records.into_iter().map(|r| Event::Audit(Box::new(r))).collect();
        if ctx.out.json {
            ctx.out.document(&events)?;
        } else {
            let text: String = events.iter().map(|e| line(e) + "\n").collect();
            ctx.out.text(&text)?;
        }
        return Ok(0);
    }
    let id = client.subscribe(SubscribeRequest { kinds: args.kinds, agent, session })?;
    loop {
        let event = match client.next_event(id) {
            Ok(event) => event,
            Err(ClientError::Closed) => {
                return Err(anyhow!("the daemon closed the event stream (did it stop?)").into());
            }
            Err(e) => return Err(e.into()),
        };
        if ctx.out.json {
            ctx.out.json_line(&event)?;
        } else {
            ctx.out.text(&(line(&event) + "\n"))?;
        }
        if let Event::Lagged { missed } = event {
            return Err(anyhow!(
                "this subscriber fell {missed} events behind and the daemon dropped it; \
                 `rush audit --since` shows what was missed"
            )
            .into());
        }
    }
}

fn line(event: &Event) -> String {
    match event {
        Event::Audit(record) => render::audit_line(record),
        Event::Lagged { missed } => format!("-- {missed} events missed: this subscriber fell behind --"),
    }
}

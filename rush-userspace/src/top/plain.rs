//! `rush top` where full-screen cannot work (not a terminal, TERM=dumb, `--plain`): the
//! agents table, printed again every refresh, for logs, pipes and dumb terminals.

use std::io::Write;

use rush_proto::AuditQuery;

use super::Options;
use super::model::{Model, is_denial, mem_used, state_label, worst_budget};
use crate::commands::Ctx;
use crate::error::{Error, Result};
use crate::render::{Table, age, sanitize};
use crate::time::{format_unix_ms, now_unix_ms};

pub fn run(ctx: &mut Ctx, opts: &Options) -> Result<u8> {
    let mut m = Model::new(false, now_unix_ms());
    let mut round = 0u64;
    loop {
        let mut c = ctx.connect()?;
        let agents = c.list_agents()?;
        let approvals = c.list_approvals(None, false).map(|(a, _)| a).unwrap_or_default();
        let now = now_unix_ms();
        // Denials of the last minute, from the trail (one query a round).
        let (_, records) =
            c.audit(AuditQuery { since_unix_ms: Some(now.saturating_sub(60_000)), ..Default::default() })?;
        m = {
            let mut fresh = Model::new(false, now);
            fresh.rows = std::mem::take(&mut m.rows);
            fresh.seed_audit(records.into_iter().filter(|r| is_denial(&r.event)).collect());
            fresh
        };
        m.set_agents(agents, now);
        m.set_approvals(approvals);
        if let Some(a) = &opts.agent {
            m.filter = a.clone();
        }
        let text = if ctx.out.json { json(&m).to_string() + "\n" } else { table(&m) };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).map_err(Error::stdout)?;
        out.flush().map_err(Error::stdout)?;
        round += 1;
        if opts.iterations != 0 && round >= opts.iterations {
            return Ok(0);
        }
        std::thread::sleep(opts.refresh);
    }
}

/// One round as one JSON line (`rush --json top`): what the table shows, unrounded.
pub fn json(m: &Model) -> serde_json::Value {
    let agents: Vec<serde_json::Value> = m
        .visible()
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.info.name,
                "session": r.info.session,
                "state": state_label(&r.info, &m.approvals),
                "trust": r.info.trust,
                "cpu_pct": r.cpu_pct,
                "mem_bytes": mem_used(&r.info),
                "usage": r.info.usage,
                "denials_last_minute": m.denials_last_minute(&r.info.name),
                "claims": m.claims_held(&r.info.name),
                "started_unix_ms": r.info.started_unix_ms,
            })
        })
        .collect();
    serde_json::json!({"time_unix_ms": m.now_ms, "agents": agents, "pending_approvals": m.approvals.len()})
}

/// One round: a header line and the table.
pub fn table(m: &Model) -> String {
    let clock = format_unix_ms(m.now_ms);
    let header =
        format!("rush top {clock} · {} agents · {} pending approvals\n", m.rows.len(), m.approvals.len());
    let mut t = Table::new(&["NAME", "STATE", "CPU%", "MEM", "BUDGET", "DENY/1m", "AGE"]);
    for r in m.visible() {
        let running = r.info.state == rush_proto::AgentState::Running;
        t.row(vec![
            sanitize(&r.info.name),
            state_label(&r.info, &m.approvals),
            if running { r.cpu_pct.map_or("-".into(), |p| format!("{p:.1}")) } else { "-".into() },
            if running { super::view::human_bytes(mem_used(&r.info)) } else { "-".into() },
            worst_budget(&r.info).map_or("-".to_string(), |(u, p)| format!("{} {p:.0}%", u.resource)),
            m.denials_last_minute(&r.info.name).to_string(),
            age(m.now_ms, r.info.started_unix_ms),
        ]);
    }
    header + &t.render() + "\n"
}

//! `rush top`'s arguments and its long help.

use clap::Args;

pub(super) const TOP_LONG_ABOUT: &str = "\
A full-screen view of every agent, fed by the daemon's event stream (one subscription) and \
one round of agent/approval/claim queries per refresh (never a query per agent).

The agents table: name, session, state (running; paused: operator; paused: budget; waiting: \
approval ID; exited CODE), trust, CPU now (% of one core over the last refresh), memory now, \
budget bars (cpu, mem, net, api, cost: used against limit; `!` at the limit), denials in the \
last minute, claims held, age. Under 120 columns the budget is one column (the most used \
resource) and session, trust and claims are left out.

The focus pane shows the selected agent's terminal live (agents spawned with --tty: a \
read-only attachment, colours kept) or its captured output (--detach without --tty); its \
latest audit records (denials name the path or destination, the operation and the hook); its \
tokens with the time each has left; and its session's workspace diff since the last \
checkpoint (A/M/D). Pending approvals get a pane of their own.

Keys: arrows/PgUp/PgDn/Home/End select; p pause (freezes its cgroup); r resume (asks for a \
raised budget when its budget froze it); k kill (asks y/N); a attach (this terminal becomes \
the agent's; ctrl-\\ then d comes back to rush top); c checkpoint its session; g grant and v \
revoke a path (asked on the bottom line, as PATH:OPS[:TTL] and PATH or token ID); / filter; \
s sort (name, cpu, mem, age, denials); tab moves to the approvals, where y approves, n rejects \
and b approves the batch; ? help; q or ctrl-c quits, leaving the agents running. Every key \
makes the same request as the command line does, authorised and audited the same way.

NO_COLOR (set and not empty) draws without colours. Where full-screen cannot work (stdout or \
stdin not a terminal, TERM unset or dumb) or with --plain, the table is printed every \
refresh instead; with --json, one JSON object per refresh (one line each: time_unix_ms, \
agents with their state label, cpu_pct, mem_bytes, usage, denials_last_minute, claims; \
pending_approvals).";

pub(super) const TOP_EXAMPLES: &str = "\
Examples:
  $ rush top
  $ rush top --agent coder
  $ rush top --plain --iterations 1      # one table, for a script or a log
  $ rush --json top -n 1 | jq '.agents[] | select(.denials_last_minute > 0) | .name'
  $ rush agent spawn coder --visible -- claude";

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Select agent NAME first (with --plain: show only agents whose name contains it).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Seconds between refreshes of the numbers (CPU, memory, budgets); state changes and
    /// denials show as they happen. 0.1 to 60.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = refresh_secs)]
    pub refresh: f64,
    /// Print a plain table every refresh instead of the full-screen view.
    #[arg(long)]
    pub plain: bool,
    /// When printing plain tables (--plain, or not on a terminal): stop after N (0: run
    /// until interrupted).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 0)]
    pub iterations: u64,
}

fn refresh_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=60.0).contains(&v) {
        return Err(format!("{s} is out of range: the refresh is 0.1 to 60 seconds"));
    }
    Ok(v)
}

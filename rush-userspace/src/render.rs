//! Text rendering of the daemon's answers. Pure functions of their input (and of the
//! time "now" where ages are shown), so they are tested without a daemon.
//!
//! Strings an agent controls (its command line, process names) are escaped before they
//! reach the operator's terminal: an agent must not be able to write escape sequences
//! into `rush agent list`.

use std::fmt::Write as _;

use rush_proto::approval::{
    Approval, ApprovalBatch, ApprovalDetail, ApprovalState, DecidedVia, Priority, QueueSettings,
};
use rush_proto::{AgentInfo, AgentState, AuditEvent, AuditRecord, BudgetResource, DoctorReport, TokenInfo};

use crate::time::{format_duration, format_unix_ms};

mod approvals;
pub mod gating;
pub use approvals::*;

/// Columns aligned on the widest cell, two spaces apart; the last column is not padded.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Control characters escaped (`\n`, `\u{1b}`), everything else as it is.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A command line as a shell would need it typed, control characters escaped.
pub fn shell_join(args: &[String]) -> String {
    let quote = |a: &String| {
        let a = sanitize(a);
        let plain =
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,^".contains(&b));
        if plain { a } else { format!("'{}'", a.replace('\'', r"'\''")) }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// A value for `key=value`: bare when simple, else quoted and escaped.
fn value(v: &str) -> String {
    let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
    if plain { v.to_owned() } else { format!("{v:?}") }
}

/// How long ago `then_ms` was: `3m12s`.
pub(crate) fn age(now_ms: u64, then_ms: u64) -> String {
    format_duration(now_ms.saturating_sub(then_ms) / 1000)
}

/// One word for a POSIX shell, single-quoted: exact to the byte, whatever it holds.
pub fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// `rush session list`.
pub fn session_table(sessions: &[rush_proto::SessionInfo], now_ms: u64) -> String {
    let mut t = Table::new(&[
        "NAME",
        "WORKSPACE",
        "STORE",
        "TIMELINE",
        "CHECKPOINTS",
        "AGENTS",
        "ATTACHED",
        "KEYS",
        "CWD",
        "AGE",
    ]);
    for s in sessions {
        t.row(vec![
            s.name.clone(),
            sanitize(&s.workspace.to_string_lossy()),
            s.backend.to_string(),
            s.timeline.clone(),
            s.checkpoints.to_string(),
            if s.agents.is_empty() { "-".into() } else { s.agents.join(",") },
            s.attached.to_string(),
            s.keys.to_string(),
            s.cwd.as_ref().map(|c| sanitize(&c.to_string_lossy())).unwrap_or_else(|| "-".into()),
            age(now_ms, s.created_unix_ms),
        ]);
    }
    t.render()
}

/// `rush session show`: key: value lines.
pub fn session_detail(d: &rush_proto::SessionDetail, now_ms: u64) -> String {
    let s = &d.session;
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { sanitize(&v.join(", ")) };
    let mut out = format!(
        "name:        {}\nworkspace:   {}\nstore:       {} ({})\ntimeline:    {}\ncwd:         {}\n\
         created:     {} ago\n",
        s.name,
        sanitize(&s.workspace.to_string_lossy()),
        s.backend,
        sanitize(&s.live.to_string_lossy()),
        s.timeline,
        s.cwd.as_ref().map(|c| sanitize(&c.to_string_lossy())).unwrap_or_else(|| "- (the workspace)".into()),
        age(now_ms, s.created_unix_ms),
    );
    out += &format!("attached:    {}\n", d.attachments.len());
    for a in &d.attachments {
        out += &format!(
            "  pid {} uid {} tty {} since {} ago\n",
            a.pid,
            a.uid,
            a.tty.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
            age(now_ms, a.since_unix_ms)
        );
    }
    out += &format!("agents:      {}\n", list(&s.agents));
    out += &format!("checkpoints: {}\n", list(&d.checkpoints));
    out += &format!("keys:        {}\n", list(&d.keys));
    out
}

/// `rush session get` without a key: KEY VALUE, values escaped and cut at 60 characters.
pub fn kv_table(pairs: &[rush_proto::KeyValue]) -> String {
    let mut t = Table::new(&["KEY", "VALUE"]);
    for p in pairs {
        let v = sanitize(&p.value);
        let v =
            if v.chars().count() > 60 { format!("{}...", v.chars().take(57).collect::<String>()) } else { v };
        t.row(vec![sanitize(&p.key), v]);
    }
    t.render()
}

/// `rush timeline list`: the timelines, then the checkpoints oldest first.
pub fn timeline(tl: &rush_proto::Timeline, now_ms: u64) -> String {
    let mut t = Table::new(&["TIMELINE", "LIVE", "FROM", "AGE"]);
    for x in &tl.timelines {
        t.row(vec![
            x.name.clone(),
            if x.live { "*".into() } else { String::new() },
            x.from.clone().unwrap_or_else(|| "-".into()),
            age(now_ms, x.created_unix_ms),
        ]);
    }
    let mut c = Table::new(&["CHECKPOINT", "TIMELINE", "PARENT", "AGE", "SIZE", "TOOK", "CAPTURED"]);
    for x in &tl.checkpoints {
        let name = if x.automatic { format!("{} (auto)", x.name) } else { x.name.clone() };
        c.row(vec![
            name,
            x.timeline.clone(),
            x.parent.clone().unwrap_or_else(|| "-".into()),
            age(now_ms, x.created_unix_ms),
            x.size_bytes.map(rush_proto::budget::format_size).unwrap_or_else(|| "-".into()),
            format!("{} ms", x.took_ms),
            x.captured.join(","),
        ]);
    }
    format!("session {} ({} store)\n{}\n{}", tl.session.name, tl.session.backend, t.render(), c.render())
}

/// `rush timeline diff`: `A|D|M path` lines, then environment changes.
pub fn diff(d: &rush_proto::DiffReport) -> String {
    let mut out = String::new();
    let mut lines: Vec<(&String, char)> = d
        .added
        .iter()
        .map(|p| (p, 'A'))
        .chain(d.removed.iter().map(|p| (p, 'D')))
        .chain(d.modified.iter().map(|p| (p, 'M')))
        .collect();
    lines.sort();
    for (p, k) in lines {
        out += &format!("{k} {}\n", sanitize(p));
    }
    for e in &d.env {
        let show = |v: &Option<String>| v.as_deref().map(value).unwrap_or_else(|| "(unset)".into());
        out += &format!("env {}: {} -> {}\n", sanitize(&e.name), show(&e.a), show(&e.b));
    }
    out += &format!(
        "{} -> {}: {} added, {} removed, {} modified, {} environment changes ({} ms)\n",
        d.a,
        d.b,
        d.added.len(),
        d.removed.len(),
        d.modified.len(),
        d.env.len(),
        d.took_ms
    );
    out
}

/// `rush rollback`'s report: where the session went, how to undo it, and which agents
/// were stopped or restored.
pub fn rollback_report(r: &rush_proto::RollbackReport) -> String {
    let mut report = format!(
        "session {} rolled back to {} in {} ms; undo with `rush rollback {}`\n",
        r.checkpoint.session, r.checkpoint.name, r.took_ms, r.undo.name
    );
    if !r.stopped.is_empty() {
        report += &format!("stopped agents (their files were replaced): {}\n", r.stopped.join(", "));
    }
    if !r.restored.is_empty() {
        report += &format!("restored agents' processes: {}\n", r.restored.join(", "));
    }
    report
}

/// `rush checkpoint`'s line.
pub fn checkpoint_line(c: &rush_proto::CheckpointInfo) -> String {
    format!(
        "checkpoint {} of session {} taken in {} ms: {}\n",
        c.name,
        c.session,
        c.took_ms,
        c.captured.join(", ")
    )
}

/// Shell commands that take a shell from `current` to `saved` (for `eval`): every value
/// single-quoted, exact to the byte.
pub fn shell_restore(saved: &rush_proto::ShellState, current: &rush_proto::ShellState) -> String {
    let q = shell_quote;
    let ident = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let mut out = String::new();
    for (k, _) in &current.env {
        if ident(k) && !saved.env.iter().any(|(s, _)| s == k) && k != "PWD" {
            out += &format!("unset {k}\n");
        }
    }
    for (k, v) in &saved.env {
        if ident(k) && k != "PWD" && current.env.iter().find(|(c, _)| c == k).map(|(_, cv)| cv) != Some(v) {
            out += &format!("export {k}={}\n", q(v));
        }
    }
    if let Some(cwd) = &saved.cwd {
        out += &format!("cd {}\n", q(&cwd.to_string_lossy()));
    }
    out
}

/// `running`, `exited`, or `paused (operator,budget:cpu)`.
fn state(a: &AgentInfo) -> String {
    if a.paused.is_empty() || a.state != AgentState::Running {
        return a.state.to_string();
    }
    let why: Vec<&str> = a.paused.iter().map(|r| r.as_str()).collect();
    format!("paused ({})", why.join(","))
}

/// `rush agent list`.
pub fn agent_table(agents: &[AgentInfo], now_ms: u64) -> String {
    let mut t = Table::new(&["NAME", "STATE", "PID", "PROCS", "NET", "UPTIME/EXIT", "COMMAND"]);
    for a in agents {
        let uptime_or_exit = match (a.state, a.exit) {
            (AgentState::Running, _) => age(now_ms, a.started_unix_ms),
            (AgentState::Exited, Some(status)) => status.to_string(),
            (AgentState::Exited, None) => "-".into(),
        };
        let mut state = state(a);
        if !a.unconfined.is_empty() {
            state.push_str(" UNCONFINED");
        }
        t.row(vec![
            a.name.clone(),
            state,
            a.pid.to_string(),
            a.processes.to_string(),
            a.net.to_string(),
            uptime_or_exit,
            shell_join(&a.command),
        ]);
    }
    t.render()
}

/// The budget lines of `rush agent status`: used, limit, percent, action at the limit.
pub fn budget_table(usage: &[rush_proto::BudgetUsage]) -> String {
    let mut t = Table::new(&["RESOURCE", "USED", "LIMIT", "%", "AT THE LIMIT"]);
    for u in usage {
        let limit = u.limit.map_or("-".to_string(), |l| u.format(l));
        let pct = match (u.resource, u.percent()) {
            (BudgetResource::CpuRate, _) | (_, None) => "-".to_string(),
            (_, Some(p)) => format!("{p:.0}%"),
        };
        let action = if u.exceeded { format!("REACHED: {}", u.at_limit) } else { u.at_limit.clone() };
        let used = if u.resource == BudgetResource::CpuRate { "-".to_string() } else { u.format(u.used) };
        t.row(vec![u.resource.to_string(), used, limit, pct, action]);
    }
    t.render()
}

/// The hardening line of `agent status`: what stands besides the cgroup and tokens.
fn hardening(h: &rush_proto::Hardening) -> String {
    let mut parts = Vec::new();
    if h.cgroup_namespace {
        parts.push("cgroup namespace".to_string());
    }
    if h.private_cgroupfs {
        parts.push("cgroupfs read-only".to_string());
    }
    if h.seccomp {
        parts.push("seccomp filter".to_string());
    }
    if !h.capabilities_dropped.is_empty() {
        let names: Vec<&str> =
            h.capabilities_dropped.iter().map(|c| c.strip_prefix("CAP_").unwrap_or(c)).collect();
        parts.push(format!("capabilities dropped: {}", names.join(" ")));
    }
    if parts.is_empty() { "none".to_string() } else { sanitize(&parts.join("; ")) }
}

/// `rush agent status NAME`.
pub fn agent_status(a: &AgentInfo, now_ms: u64) -> String {
    let enforcement: Vec<&str> = a.enforcement.iter().map(|e| e.as_str()).collect();
    let enforcement = if enforcement.is_empty() { "none".to_string() } else { enforcement.join(", ") };
    let exit = match a.exit {
        Some(status) => status.to_string(),
        None => "-".to_string(),
    };
    let started = match a.state {
        AgentState::Running => {
            format!("{} ({} ago)", format_unix_ms(a.started_unix_ms), age(now_ms, a.started_unix_ms))
        }
        AgentState::Exited => format_unix_ms(a.started_unix_ms),
    };
    let state = state(a);
    let confinement = if a.unconfined.is_empty() {
        "confined".to_string()
    } else {
        format!("UNCONFINED ({})", sanitize(&a.unconfined.join("; ")))
    };
    let fields: [(&str, String); 19] = [
        ("name", a.name.clone()),
        ("state", state),
        ("trust", a.trust.clone().unwrap_or_else(|| "-".into())),
        ("budget", if a.budget.is_empty() { "none".into() } else { a.budget.to_string() }),
        ("pid", a.pid.to_string()),
        ("uid", a.uid.to_string()),
        ("processes", a.processes.to_string()),
        ("started", started),
        ("command", shell_join(&a.command)),
        (
            "mode",
            match (a.tty, a.detached) {
                (true, _) => "terminal (rush agent attach)",
                (false, true) => "detached",
                (false, false) => "foreground",
            }
            .to_string(),
        ),
        ("restartable", if a.restartable { "yes" } else { "no" }.to_string()),
        ("net", a.net.to_string()),
        ("enforcement", enforcement),
        ("confinement", confinement),
        ("hardlinks", a.hardlinks.to_string()),
        ("hardening", hardening(&a.hardening)),
        ("cgroup path", sanitize(&a.cgroup_path.to_string_lossy())),
        ("cgroup id", a.cgroup_id.to_string()),
        ("exit", exit),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in fields {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    if !a.usage.is_empty() {
        out.push('\n');
        out += &budget_table(&a.usage);
    }
    out
}

/// A unit enum's name on the wire (`snake_case`), for the enums without a Display.
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `a,b,c`, or `-` for none.
fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() { "-".into() } else { items.join(",") }
}

/// One audit record as one line: time, seq, agent, kind, details.
pub fn audit_line(r: &AuditRecord) -> String {
    let details = match &r.event {
        AuditEvent::Spawn { pid, uid, command, net, caller_uid, unconfined } => {
            let mut line = format!(
                "pid={pid} uid={uid} caller_uid={caller_uid} net={} command={}",
                value(&net.to_string()),
                value(&shell_join(command))
            );
            if !unconfined.is_empty() {
                line.push_str(&format!(" UNCONFINED={}", value(&unconfined.join("; "))));
            }
            line
        }
        AuditEvent::Exit { pid, status } => match (status.code, status.signal) {
            (Some(c), _) => format!("pid={pid} code={c}"),
            (None, Some(s)) => format!("pid={pid} signal={s}"),
            (None, None) => format!("pid={pid} status=unknown"),
        },
        AuditEvent::Kill { caller_uid, processes_killed } => {
            format!("caller_uid={caller_uid} processes_killed={processes_killed}")
        }
        AuditEvent::NetDeny { pid, uid, comm, hook, destination, protocol } => format!(
            "pid={pid} uid={uid} comm={} hook={} destination={} protocol={}",
            value(comm),
            value(hook),
            value(destination),
            value(protocol)
        ),
        AuditEvent::FileDeny { pid, uid, comm, hook, op, path } => format!(
            "pid={pid} uid={uid} comm={} hook={} op={} path={}",
            value(comm),
            value(hook),
            value(op),
            value(path)
        ),
        AuditEvent::Grant { caller_uid, token } => format!(
            "caller_uid={caller_uid} id={} path={} ops={} expires={}",
            token.id,
            value(&token.path.display().to_string()),
            token.ops,
            token.expires_unix_ms.map(format_unix_ms).unwrap_or_else(|| "never".into())
        ),
        AuditEvent::Revoke { caller_uid, tokens } => {
            let ids: Vec<String> = tokens.iter().map(|t| t.id.to_string()).collect();
            let paths: Vec<String> = tokens.iter().map(|t| t.path.display().to_string()).collect();
            format!("caller_uid={caller_uid} ids={} paths={}", ids.join(","), value(&paths.join(",")))
        }
        AuditEvent::RevokeKill { pid, comm, path, ops, cause } => format!(
            "pid={pid} comm={} path={} ops={} cause={}",
            value(comm),
            value(path),
            value(ops),
            value(cause.as_str())
        ),
        AuditEvent::GuardDeny { pid, uid, comm, hook, what } => {
            format!("pid={pid} uid={uid} comm={} hook={} what={}", value(comm), value(hook), value(what))
        }
        AuditEvent::SyscallDeny { pid, uid, comm, syscall, nr } => {
            format!("pid={pid} uid={uid} comm={} syscall={} nr={nr}", value(comm), value(syscall))
        }
        AuditEvent::Commit { outcome, cause } => {
            format!("cause={} {}", value(cause.as_str()), commit_line(outcome))
        }
        AuditEvent::EventsLost { count } | AuditEvent::DenialsSuppressed { count } => {
            format!("count={count}")
        }
        AuditEvent::RecordsLost { count, error } => format!("count={count} error={}", value(error)),
        AuditEvent::StoreRecovered { moved_to, why, salvaged, lost } => format!(
            "moved_to={} why={} salvaged={} lost={}",
            value(moved_to),
            value(why),
            value(&salvaged.join(",")),
            value(&lost.join("; "))
        ),
        AuditEvent::Refused { caller_uid, request, reason } => {
            format!("caller_uid={caller_uid} request={} reason={}", value(request), value(reason))
        }
        AuditEvent::BudgetExceeded { resource, used, limit, action } => {
            format!("resource={resource} used={used} limit={limit} action={}", value(action))
        }
        AuditEvent::OomKill { count, limit_bytes } => format!("count={count} mem_limit={limit_bytes}"),
        AuditEvent::ForkRefused { count, limit } => format!("count={count} pids_limit={limit}"),
        AuditEvent::ApiRefused { resource, pid, comm, destination, used, limit } => format!(
            "resource={resource} pid={pid} comm={} destination={} used={used} limit={limit}",
            value(comm),
            value(destination)
        ),
        AuditEvent::Paused { caller_uid, reason } => match caller_uid {
            Some(uid) => format!("caller_uid={uid} reason={reason}"),
            None => format!("reason={reason}"),
        },
        AuditEvent::Resumed { caller_uid, budget } => {
            format!("caller_uid={caller_uid} budget={}", value(&budget.to_string()))
        }
        AuditEvent::AgentRestarted { reason, old_pid, new_pid } => {
            format!("reason={reason} old_pid={old_pid} new_pid={new_pid}")
        }
        AuditEvent::RestartFailed { reason, error } => format!("reason={reason} error={}", value(error)),
        AuditEvent::RulesetChange { action, cause, old_pid, new_pid } => match new_pid {
            Some(new) => format!("action={action} cause={cause} old_pid={old_pid} new_pid={new}"),
            None => format!("action={action} cause={cause} old_pid={old_pid}"),
        },
        AuditEvent::SessionCreated { session, workspace, backend, caller_uid } => format!(
            "session={} workspace={} store={backend} caller_uid={caller_uid}",
            value(session),
            value(&workspace.to_string_lossy())
        ),
        AuditEvent::SessionRemoved { session, caller_uid } => {
            format!("session={} caller_uid={caller_uid}", value(session))
        }
        AuditEvent::Checkpoint { session, name, captured, caller_uid } => format!(
            "session={} checkpoint={} captured={} caller_uid={caller_uid}",
            value(session),
            value(name),
            value(&captured.join(","))
        ),
        AuditEvent::Rollback { session, name, undo, caller_uid } => format!(
            "session={} checkpoint={} undo={} caller_uid={caller_uid}",
            value(session),
            value(name),
            value(undo)
        ),
        AuditEvent::RollbackRepaired { session, name, outcome } => {
            format!("session={} checkpoint={} outcome={outcome}", value(session), value(name))
        }
        AuditEvent::TimelineChange { session, action, timeline, caller_uid } => format!(
            "session={} action={action} timeline={} caller_uid={caller_uid}",
            value(session),
            value(timeline)
        ),
        AuditEvent::CheckpointsDeleted { session, names, caller_uid } => format!(
            "session={} checkpoints={} caller_uid={caller_uid}",
            value(session),
            value(&names.join(","))
        ),
        AuditEvent::SessionKv { session, key, action, caller_uid } => {
            format!("session={} key={} action={action} caller_uid={caller_uid}", value(session), value(key))
        }
        AuditEvent::SessionAttached { session, pid, tty, caller_uid } => format!(
            "session={} pid={pid} tty={} caller_uid={caller_uid}",
            value(session),
            value(tty.as_deref().unwrap_or("-"))
        ),
        AuditEvent::SessionDetached { session, pid, cwd, caller_uid } => format!(
            "session={} pid={pid} cwd={} caller_uid={caller_uid}",
            value(session),
            value(&cwd.as_ref().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "-".into()))
        ),
        AuditEvent::TerminalAttached { caller_uid, mode } => {
            format!("mode={} caller_uid={caller_uid}", wire_name(mode))
        }
        AuditEvent::TerminalInput { caller_uid, bytes } => format!("bytes={bytes} caller_uid={caller_uid}"),
        AuditEvent::Intent { id, text, paths, expires_unix_ms } => format!(
            "id={id} paths={} expires={} text={}",
            value(&list_or_dash(paths)),
            format_unix_ms(*expires_unix_ms),
            value(text)
        ),
        AuditEvent::Claim {
            task,
            action,
            lease,
            fencing,
            paths,
            enforcement,
            expires_unix_ms,
            caller_uid,
        } => {
            let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let mut line = format!(
                "task={} action={} lease={lease} fencing={fencing} enforcement={} paths={} expires={}",
                value(task),
                wire_name(action),
                wire_name(enforcement),
                value(&list_or_dash(&paths)),
                format_unix_ms(*expires_unix_ms)
            );
            if let Some(uid) = caller_uid {
                line.push_str(&format!(" caller_uid={uid}"));
            }
            line
        }
        AuditEvent::ClaimDeny { pid, uid, comm, hook, op, path, task, holder, fencing } => format!(
            "{} refused in {}: claimed by {} for {} (fencing {fencing}) pid={pid} uid={uid} comm={} hook={}",
            value(op),
            value(path),
            value(holder),
            value(task),
            value(comm),
            value(hook)
        ),
        AuditEvent::Result { key, sha256, size, for_agent } => {
            let mut line = format!("key={} size={size} sha256={}", value(key), value(sha256));
            if let Some(to) = for_agent {
                line.push_str(&format!(" for={}", value(to)));
            }
            line
        }
        AuditEvent::Task { id, action, from, to, text, parent } => {
            let mut line =
                format!("id={id} action={} from={} to={}", wire_name(action), value(from), value(to));
            if let Some(p) = parent {
                line.push_str(&format!(" parent={p}"));
            }
            line.push_str(&format!(" text={}", value(text)));
            line
        }
        AuditEvent::ApprovalRequested {
            id,
            action,
            approval_kind,
            priority,
            channel,
            origin,
            batch_key,
            deadline_unix_ms,
        } => format!(
            "id={id} kind={approval_kind} priority={priority} channel={} origin={origin} batch={} \
             deadline={} action={}",
            value(&channel.to_string()),
            value(batch_key),
            format_unix_ms(*deadline_unix_ms),
            value(action)
        ),
        AuditEvent::ApprovalDecided { id, state, by, via, late, escalated, effect } => {
            let mut line = format!("id={id} state={state} by={} via={via}", value(by));
            if *late {
                line.push_str(" late=true");
            }
            if *escalated {
                line.push_str(" escalated=true");
            }
            if let Some(e) = effect {
                line.push_str(&format!(" effect={}", value(e)));
            }
            line
        }
        AuditEvent::ApprovalDelivery { ids, channel, attempt, ok, error } => {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            let mut line = format!(
                "ids={} channel={} attempt={attempt} ok={ok}",
                list_or_dash(&ids),
                value(&channel.to_string())
            );
            if let Some(e) = error {
                line.push_str(&format!(" error={}", value(e)));
            }
            line
        }
        AuditEvent::ApprovalRefused { via, id, reason } => match id {
            Some(id) => format!("via={via} id={id} reason={}", value(reason)),
            None => format!("via={via} reason={}", value(reason)),
        },
        AuditEvent::CommandRun { command, cwd, decision, exit_code, caller_uid } => format!(
            "decision={decision} exit={} cwd={} caller_uid={caller_uid} command={}",
            exit_code.map_or_else(|| "signal".to_owned(), |c| c.to_string()),
            value(&cwd.display().to_string()),
            value(command)
        ),
        AuditEvent::GuardrailLearned { id, pattern, decision, source, scope, because } => format!(
            "id={id} decision={decision} source={source} scope={} because={} pattern={}",
            value(scope),
            value(because),
            value(pattern)
        ),
        AuditEvent::GuardrailRemoved { id, pattern, caller_uid } => {
            format!("id={id} caller_uid={caller_uid} pattern={}", value(pattern))
        }
        AuditEvent::Workspace { action, name, branch, repo, detail } => format!(
            "action={action} name={} branch={} repo={} detail={}",
            value(name),
            value(branch),
            value(&repo.display().to_string()),
            value(detail)
        ),
    };
    let mut details = details;
    // The session of the agent's records (time-travel events name theirs already).
    if let (Some(s), None) = (&r.session, r.event.session()) {
        details.push_str(&format!(" session={}", value(s)));
    }
    let agent = r.agent.as_deref().map(sanitize).unwrap_or_else(|| "-".into());
    format!(
        "{}  {:>6}  {agent:<12}  {:<11}  {details}",
        format_unix_ms(r.time_unix_ms),
        r.seq,
        r.event.kind()
    )
}

/// When a token lapses, relative to now: `never`, `in 4m10s`, `expired`.
fn token_expiry(t: &TokenInfo, now_ms: u64) -> String {
    match t.expires_unix_ms {
        None => "never".into(),
        Some(_) if t.expired => "expired".into(),
        Some(ms) => format!("in {}", format_duration(ms.saturating_sub(now_ms).div_ceil(1000))),
    }
}

/// One token on one line, for grant and revoke.
pub fn token_line(t: &TokenInfo, now_ms: u64) -> String {
    format!(
        "token {} to {}: {} on {} (expires: {})",
        t.id,
        sanitize(&t.agent),
        t.ops,
        sanitize(&t.path.display().to_string()),
        token_expiry(t, now_ms)
    )
}

/// `rush capability list`.
pub fn token_table(tokens: &[TokenInfo], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "AGENT", "PATH", "OPS", "EXPIRES", "ORIGIN"]);
    for t in tokens {
        // A conditional token: where the agent writes, and what decides.
        let origin = match (&t.condition, &t.worktree) {
            (Some(cmd), Some(wt)) => {
                format!(
                    "{} (condition {}; worktree {})",
                    t.origin,
                    value(cmd),
                    sanitize(&wt.display().to_string())
                )
            }
            _ => t.origin.to_string(),
        };
        table.row(vec![
            t.id.to_string(),
            sanitize(&t.agent),
            sanitize(&t.path.display().to_string()),
            t.ops.to_string(),
            token_expiry(t, now_ms),
            origin,
        ]);
    }
    table.render()
}

/// One conditional token's commit, for `rush capability commit` and the audit trail.
pub fn commit_line(o: &rush_proto::CommitOutcome) -> String {
    let verdict = if o.promoted { "promoted" } else { "discarded" };
    let mut line = format!(
        "token={} {verdict} path={} condition={} exit={} added={} changed={} removed={}",
        o.token,
        value(&o.path.display().to_string()),
        value(&o.condition),
        o.exit_code.map_or("none".to_string(), |c| c.to_string()),
        o.added,
        o.changed,
        o.removed
    );
    if let Some(reason) = &o.reason {
        line.push_str(&format!(" reason={}", value(reason)));
    }
    line
}

/// A duration as short as it reads: `30m`, `1h05m`, `2d`, `45s`.
pub fn short_duration(secs: u64) -> String {
    let full = format_duration(secs);
    for zero in ["00s", "00m", "00h"] {
        if let Some(short) = full.strip_suffix(zero) {
            return short.to_owned();
        }
    }
    full
}

/// When a lease or intent ends, from now: `in 29m59s`, or `expired`.
pub fn expires_in(now_ms: u64, expires_ms: u64) -> String {
    if expires_ms <= now_ms {
        return "expired".into();
    }
    format!("in {}", short_duration((expires_ms - now_ms).div_ceil(1000)))
}

fn paths_or_dash(paths: &[String]) -> String {
    sanitize(&list_or_dash(paths))
}

/// `rush agent broadcast`.
pub fn intent_line(i: &rush_proto::coordination::Intent, now_ms: u64) -> String {
    format!("intent {}: {} (expires {})\n", i.id, sanitize(&i.text), expires_in(now_ms, i.expires_unix_ms))
}

/// `rush agent query-intents`; `marked`: the query named paths, so OVERLAPS is shown.
pub fn intent_table(intents: &[rush_proto::coordination::Intent], now_ms: u64, marked: bool) -> String {
    let mut headers = vec!["ID", "AGENT", "SESSION", "EXPIRES"];
    if marked {
        headers.push("OVERLAPS");
    }
    headers.extend(["PATHS", "TEXT"]);
    let mut t = Table::new(&headers);
    for i in intents {
        let mut row = vec![
            i.id.to_string(),
            sanitize(&i.agent),
            i.session.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
            expires_in(now_ms, i.expires_unix_ms),
        ];
        if marked {
            row.push(if i.overlaps { "yes" } else { "-" }.into());
        }
        row.extend([paths_or_dash(&i.paths), sanitize(&i.text)]);
        t.row(row);
    }
    t.render()
}

/// What a claim's enforcement means, after its paths.
fn enforcement_note(e: rush_proto::coordination::ClaimEnforcement) -> &'static str {
    use rush_proto::coordination::ClaimEnforcement;
    match e {
        ClaimEnforcement::Kernel => {
            "kernel: the session's other agents cannot write, create, delete or rename there"
        }
        ClaimEnforcement::Advisory => "advisory: nothing stops other agents writing there",
        ClaimEnforcement::None => "none",
    }
}

/// `rush agent claim` won (`verb` claimed) or `rush agent renew` (renewed).
pub fn claim_held(verb: &str, c: &rush_proto::coordination::Claim, now_ms: u64) -> String {
    let mut out = format!(
        "{verb} {}: lease {}, fencing token {}, expires {}\n",
        sanitize(&c.task),
        c.lease,
        c.fencing,
        expires_in(now_ms, c.expires_unix_ms)
    );
    if !c.paths.is_empty() {
        out += &format!("  paths: {} ({})\n", sanitize(&c.paths.join(", ")), enforcement_note(c.enforcement));
        // Globs: what they matched, which is what is protected.
        if c.paths.iter().any(|p| rush_proto::coordination::is_glob(p)) {
            let matched: Vec<String> = c.enforced_paths.iter().map(|p| p.display().to_string()).collect();
            let matched =
                if matched.is_empty() { "nothing yet".to_owned() } else { sanitize(&matched.join(", ")) };
            out += &format!("  matched now: {matched}\n");
        }
    }
    out
}

/// The loser's line: who holds the task.
pub fn claim_lost(c: &rush_proto::coordination::Claim, now_ms: u64) -> String {
    format!(
        "task {} is held by agent {} (fencing {}, expires {})",
        sanitize(&c.task),
        sanitize(&c.agent),
        c.fencing,
        expires_in(now_ms, c.expires_unix_ms)
    )
}

/// `rush agent release`.
pub fn released_line(c: &rush_proto::coordination::Claim) -> String {
    format!(
        "released {} (held by {}, lease {}, fencing token {})\n",
        sanitize(&c.task),
        sanitize(&c.agent),
        c.lease,
        c.fencing
    )
}

/// `rush agent claims`.
pub fn claim_table(claims: &[rush_proto::coordination::Claim], now_ms: u64) -> String {
    use rush_proto::coordination::ClaimEnforcement;
    let mut t = Table::new(&["TASK", "HOLDER", "SESSION", "FENCING", "EXPIRES", "ENFORCEMENT", "PATHS"]);
    for c in claims {
        t.row(vec![
            sanitize(&c.task),
            sanitize(&c.agent),
            c.session.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
            c.fencing.to_string(),
            expires_in(now_ms, c.expires_unix_ms),
            match c.enforcement {
                ClaimEnforcement::None => "-".into(),
                other => wire_name(&other),
            },
            paths_or_dash(&c.paths),
        ]);
    }
    t.render()
}

/// `rush agent publish`.
pub fn published_line(r: &rush_proto::coordination::ResultInfo) -> String {
    let noun = if r.size == 1 { "byte" } else { "bytes" };
    format!("published {}: {} {noun}, sha256 {}\n", sanitize(&r.key), r.size, sanitize(&r.sha256))
}

/// `rush agent results` without a key.
pub fn results_table(results: &[rush_proto::coordination::ResultInfo], now_ms: u64) -> String {
    let mut t = Table::new(&["KEY", "FROM", "FOR", "SESSION", "SIZE", "AGE", "SHA256"]);
    for r in results {
        t.row(vec![
            sanitize(&r.key),
            sanitize(&r.agent),
            r.for_agent.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
            r.session.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
            rush_proto::budget::format_size(r.size),
            short_duration(now_ms.saturating_sub(r.published_unix_ms) / 1000),
            sanitize(&r.sha256.chars().take(12).collect::<String>()),
        ]);
    }
    t.render()
}

/// `rush agent delegate`.
pub fn delegated_line(task: &rush_proto::coordination::Task) -> String {
    format!(
        "task {} delegated to {} (its result: rush agent results {})\n",
        task.id,
        sanitize(&task.to),
        sanitize(&task.result_key)
    )
}

/// `rush agent inbox`.
pub fn inbox_table(tasks: &[rush_proto::coordination::Task]) -> String {
    if tasks.is_empty() {
        return "inbox empty\n".into();
    }
    let mut t = Table::new(&["ID", "FROM", "RESULT-KEY", "TEXT"]);
    for task in tasks {
        let id = match task.parent {
            Some(p) => format!("{} (of {p})", task.id),
            None => task.id.to_string(),
        };
        t.row(vec![id, sanitize(&task.from), sanitize(&task.result_key), sanitize(&task.text)]);
    }
    t.render()
}

/// `rush agent inbox`: the open tasks, then the agent's requests decided since it last
/// looked.
pub fn inbox(tasks: &[rush_proto::coordination::Task], approvals: &[Approval]) -> String {
    let mut out = if tasks.is_empty() && !approvals.is_empty() { String::new() } else { inbox_table(tasks) };
    if !out.is_empty() && !approvals.is_empty() {
        out.push('\n');
    }
    for a in approvals {
        out += &approval_line(a);
        out.push('\n');
    }
    out
}

/// `rush doctor`.
pub fn doctor(report: &DoctorReport) -> String {
    let mut out = format!("kernel: {}\n\n", sanitize(&report.kernel));
    let mut probes = Table::new(&["PROBE", "DETAIL"]);
    for p in &report.probes {
        let mark = if p.ok { '✓' } else { '✗' };
        probes.row(vec![format!("{mark} {}", p.name), sanitize(&p.detail)]);
    }
    out.push_str(&probes.render());
    out.push('\n');
    let mut guarantees = Table::new(&["GUARANTEE", "HOLDS", "WHY/HOW"]);
    for g in &report.guarantees {
        let holds = if g.holds { "yes" } else { "no" };
        guarantees.row(vec![g.name.clone(), holds.into(), sanitize(&g.detail)]);
    }
    out.push_str(&guarantees.render());
    let held = report.guarantees.iter().filter(|g| g.holds).count();
    let _ = writeln!(out, "\n{held} of {} guarantees hold on this machine.", report.guarantees.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rush_proto::{ExitStatus, Guarantee, NetEndpoint, NetPolicy, Probe};

    const NOW: u64 = 1_795_745_771_123;

    fn agent(name: &str) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            cgroup_id: 8812,
            cgroup_path: "/sys/fs/cgroup/rush/agents/coder".into(),
            pid: 4242,
            uid: 1000,
            command: vec!["claude".into(), "-p".into(), "fix the tests".into()],
            net: NetPolicy::AllowList(vec![NetEndpoint {
                host: "api.anthropic.com".into(),
                port: 443,
                prefix: None,
            }]),
            state: AgentState::Running,
            processes: 3,
            started_unix_ms: NOW - 192_000,
            enforcement: vec![
                rush_proto::Enforcement::IdentityCgroupV2,
                rush_proto::Enforcement::NetCgroupSockAddr,
            ],
            exit: None,
            detached: true,
            tty: false,
            unconfined: vec![],
            session: None,
            restartable: false,
            hardlinks: Default::default(),
            hardening: rush_proto::Hardening {
                cgroup_namespace: true,
                private_cgroupfs: true,
                capabilities_dropped: vec!["CAP_SYS_ADMIN".into(), "CAP_BPF".into()],
                seccomp: true,
            },
            trust: Some("medium".into()),
            budget: "cpu:1h,cost:$5".parse().unwrap(),
            paused: vec![],
            usage: vec![
                rush_proto::BudgetUsage {
                    resource: BudgetResource::Cpu,
                    unit: rush_proto::BudgetUnit::Millis,
                    used: 2_700_000,
                    limit: Some(3_600_000),
                    at_limit: "frozen until resumed with a raised budget".into(),
                    exceeded: false,
                },
                rush_proto::BudgetUsage {
                    resource: BudgetResource::Cost,
                    unit: rush_proto::BudgetUnit::MicroUsd,
                    used: 5_010_000,
                    limit: Some(5_000_000),
                    at_limit: "calls refused by the metering proxy (HTTP 402)".into(),
                    exceeded: true,
                },
            ],
            meter_url: None,
        }
    }

    #[test]
    fn status_shows_each_budget_with_percent_and_action() {
        let out = agent_status(&agent("coder"), NOW);
        assert!(out.contains("budget:      cpu:1h,cost:$5.00"), "{out}");
        let cpu = out.lines().find(|l| l.starts_with("cpu ")).unwrap();
        assert!(cpu.contains("2700.0s") && cpu.contains("3600.0s") && cpu.contains("75%"), "{cpu}");
        let cost = out.lines().find(|l| l.starts_with("cost")).unwrap();
        assert!(cost.contains("$5.01") && cost.contains("100%") && cost.contains("REACHED"), "{cost}");
    }

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.row(vec!["xyz".into(), "1".into(), "last column".into()]);
        t.row(vec!["é".into(), "".into(), "".into()]);
        assert_eq!(t.render(), "A    LONGER  C\nxyz  1       last column\né\n");
    }

    #[test]
    fn agent_list_table() {
        let mut done = agent("done");
        done.state = AgentState::Exited;
        done.exit = Some(ExitStatus { code: None, signal: Some(9) });
        done.net = NetPolicy::Deny;
        done.processes = 0;
        done.command = vec!["sh".into(), "-c".into(), "it's\x1b[2J".into()];
        let got = agent_table(&[agent("coder"), done], NOW);
        let want = "\
NAME   STATE    PID   PROCS  NET                    UPTIME/EXIT  COMMAND
coder  running  4242  3      api.anthropic.com:443  3m12s        claude -p 'fix the tests'
done   exited   4242  0      deny                   signal 9     sh -c 'it'\\''s\\u{1b}[2J'
";
        assert_eq!(got, want);
    }

    #[test]
    fn empty_list_is_just_the_header() {
        assert_eq!(agent_table(&[], NOW).lines().count(), 1);
    }

    #[test]
    fn status_lines() {
        let got = agent_status(&agent("coder"), NOW);
        assert!(got.contains("name:        coder\n"), "{got}");
        assert!(got.contains("started:     2026-11-27T02:12:59.123Z (3m12s ago)\n"), "{got}");
        assert!(got.contains("cgroup path: /sys/fs/cgroup/rush/agents/coder\n"), "{got}");
        assert!(got.contains("cgroup id:   8812\n"), "{got}");
        assert!(got.contains("enforcement: identity:cgroup-v2, net:cgroup-sock-addr\n"), "{got}");
        assert!(got.contains("net:         api.anthropic.com:443\n"), "{got}");
        assert!(got.contains("exit:        -\n"), "{got}");
        assert!(got.contains("mode:        detached\n"), "{got}");
        assert!(got.contains("hardlinks:   follow\n"), "{got}");
        assert!(
            got.contains(
                "hardening:   cgroup namespace; cgroupfs read-only; seccomp filter; capabilities dropped: SYS_ADMIN BPF\n"
            ),
            "{got}"
        );
        let mut a = agent("coder");
        a.enforcement.clear();
        a.state = AgentState::Exited;
        a.exit = Some(ExitStatus { code: Some(3), signal: None });
        let got = agent_status(&a, NOW);
        assert!(got.contains("enforcement: none\n") && got.contains("exit:        exit 3\n"), "{got}");
    }

    #[test]
    fn audit_lines() {
        let rec = |event| AuditRecord {
            seq: 42,
            time_unix_ms: NOW,
            agent: Some("coder".into()),
            session: None,
            event,
        };
        assert_eq!(
            audit_line(&rec(AuditEvent::NetDeny {
                pid: 4243,
                uid: 1000,
                comm: "curl".into(),
                hook: "connect4".into(),
                destination: "93.184.216.34:443".into(),
                protocol: "tcp".into(),
            })),
            "2026-11-27T02:16:11.123Z      42  coder         net_deny     pid=4243 uid=1000 comm=curl \
             hook=connect4 destination=93.184.216.34:443 protocol=tcp"
        );
        let line = audit_line(&rec(AuditEvent::Spawn {
            pid: 1,
            uid: 1000,
            command: vec!["echo".into(), "a b".into()],
            net: NetPolicy::Deny,
            caller_uid: 0,
            unconfined: vec![],
        }));
        assert!(
            line.ends_with(r#"spawn        pid=1 uid=1000 caller_uid=0 net=deny command="echo 'a b'""#),
            "{line}"
        );
        let line = audit_line(&AuditRecord {
            seq: 7,
            time_unix_ms: 0,
            agent: None,
            session: None,
            event: AuditEvent::Exit { pid: 5, status: ExitStatus { code: None, signal: Some(15) } },
        });
        assert_eq!(line, "1970-01-01T00:00:00.000Z       7  -             exit         pid=5 signal=15");
        let line = audit_line(&rec(AuditEvent::NetDeny {
            pid: 1,
            uid: 0,
            comm: "evil\x1b]0;x\x07".into(),
            hook: "sendmsg6".into(),
            destination: "[::1]:53".into(),
            protocol: "udp".into(),
        }));
        assert!(line.contains(r#"comm="evil\u{1b}]0;x\u{7}""#), "{line}");
        let line = audit_line(&rec(AuditEvent::RevokeKill {
            pid: 77,
            comm: "python3".into(),
            path: "/srv/project/db file".into(),
            ops: "write".into(),
            cause: rush_proto::TokenChange::Revoke,
        }));
        assert!(
            line.ends_with(
                r#"coder         revoke_kill  pid=77 comm=python3 path="/srv/project/db file" ops=write cause=revoke"#
            ),
            "{line}"
        );
    }

    fn claim(task: &str, holder: &str) -> rush_proto::coordination::Claim {
        rush_proto::coordination::Claim {
            task: task.into(),
            agent: holder.into(),
            session: Some("web".into()),
            lease: 12,
            fencing: 3,
            paths: vec!["/srv/web/src/parser".into()],
            enforced_paths: vec!["/srv/web/src/parser".into()],
            enforcement: rush_proto::coordination::ClaimEnforcement::Kernel,
            acquired_unix_ms: NOW - 60_000,
            expires_unix_ms: NOW + 1_800_000,
        }
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(short_duration(1800), "30m");
        assert_eq!(short_duration(3600), "1h");
        assert_eq!(short_duration(3900), "1h05m");
        assert_eq!(short_duration(2 * 86400), "2d");
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(0), "0s");
        // A lease just taken reads as its whole TTL, not a second less.
        assert_eq!(expires_in(NOW, NOW + 1_799_999), "in 30m");
        assert_eq!(expires_in(NOW, NOW), "expired");
    }

    #[test]
    fn claims_won_lost_and_listed() {
        use rush_proto::coordination::ClaimEnforcement;
        let c = claim("parser", "coder-1");
        assert_eq!(
            claim_held("claimed", &c, NOW),
            "claimed parser: lease 12, fencing token 3, expires in 30m\n  paths: /srv/web/src/parser (kernel: \
             the session's other agents cannot write, create, delete or rename there)\n"
        );
        assert_eq!(claim_lost(&c, NOW), "task parser is held by agent coder-1 (fencing 3, expires in 30m)");
        let mut glob = claim("lexer", "coder-2");
        glob.paths = vec!["/srv/web/src/*.rs".into()];
        glob.enforced_paths = vec!["/srv/web/src/a.rs".into(), "/srv/web/src/b.rs".into()];
        glob.enforcement = ClaimEnforcement::Advisory;
        glob.session = None;
        let out = claim_held("renewed", &glob, NOW);
        assert!(out.starts_with("renewed lexer: "), "{out}");
        assert!(out.contains("(advisory: nothing stops other agents writing there)"), "{out}");
        assert!(out.ends_with("  matched now: /srv/web/src/a.rs, /srv/web/src/b.rs\n"), "{out}");
        let mut bare = claim("deploy", "ops");
        bare.paths.clear();
        bare.enforced_paths.clear();
        bare.enforcement = ClaimEnforcement::None;
        assert_eq!(claim_held("claimed", &bare, NOW).lines().count(), 1);
        assert_eq!(released_line(&c), "released parser (held by coder-1, lease 12, fencing token 3)\n");
        let want = "\
TASK    HOLDER   SESSION  FENCING  EXPIRES  ENFORCEMENT  PATHS
parser  coder-1  web      3        in 30m   kernel       /srv/web/src/parser
lexer   coder-2  -        3        in 30m   advisory     /srv/web/src/*.rs
deploy  ops      web      3        in 30m   -            -
";
        assert_eq!(claim_table(&[c, glob, bare], NOW), want);
    }

    #[test]
    fn intents_with_and_without_overlaps() {
        let intent = |id, overlaps, text: &str| rush_proto::coordination::Intent {
            id,
            agent: "coder-1".into(),
            session: Some("web".into()),
            text: text.into(),
            paths: vec!["/srv/web/src/parser/**".into()],
            created_unix_ms: NOW,
            expires_unix_ms: NOW + 7_200_000,
            overlaps,
        };
        assert_eq!(
            intent_line(&intent(7, false, "rename Lexer"), NOW),
            "intent 7: rename Lexer (expires in 2h)\n"
        );
        let all = [intent(7, true, "rename Lexer"), intent(8, false, "evil\x1b[2J")];
        let want = "\
ID  AGENT    SESSION  EXPIRES  OVERLAPS  PATHS                   TEXT
7   coder-1  web      in 2h    yes       /srv/web/src/parser/**  rename Lexer
8   coder-1  web      in 2h    -         /srv/web/src/parser/**  evil\\u{1b}[2J
";
        assert_eq!(intent_table(&all, NOW, true), want);
        assert!(intent_table(&all, NOW, false).starts_with("ID  AGENT    SESSION  EXPIRES  PATHS "));
    }

    #[test]
    fn results_and_tasks() {
        use rush_proto::coordination::{ResultInfo, Task, TaskState};
        let r = ResultInfo {
            key: "parser-patch".into(),
            agent: "coder-1".into(),
            session: Some("web".into()),
            for_agent: None,
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            size: 4211,
            published_unix_ms: NOW - 120_000,
            content_base64: None,
        };
        assert_eq!(
            published_line(&r),
            "published parser-patch: 4211 bytes, sha256 \
             9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        );
        let mine = ResultInfo { key: "review".into(), for_agent: Some("lead".into()), size: 1, ..r.clone() };
        let want = "\
KEY           FROM     FOR   SESSION  SIZE  AGE  SHA256
parser-patch  coder-1  -     web      4.1K  2m   9f86d081884c
review        coder-1  lead  web      1     2m   9f86d081884c
";
        assert_eq!(results_table(&[r, mine], NOW), want);
        let task = Task {
            id: 12,
            from: "lead".into(),
            to: "tester".into(),
            session: None,
            text: "write tests\nfor src/parser".into(),
            parent: None,
            state: TaskState::Open,
            result_key: "task/12".into(),
            created_unix_ms: NOW,
        };
        assert_eq!(
            delegated_line(&task),
            "task 12 delegated to tester (its result: rush agent results task/12)\n"
        );
        let sub = Task { id: 13, parent: Some(12), result_key: "task/13".into(), ..task.clone() };
        let want = "\
ID          FROM  RESULT-KEY  TEXT
12          lead  task/12     write tests\\nfor src/parser
13 (of 12)  lead  task/13     write tests\\nfor src/parser
";
        assert_eq!(inbox_table(&[task, sub]), want);
        assert_eq!(inbox_table(&[]), "inbox empty\n");
    }

    #[test]
    fn coordination_audit_lines() {
        use rush_proto::coordination::{ClaimAction, ClaimEnforcement, TaskAction};
        let rec = |event| AuditRecord {
            seq: 42,
            time_unix_ms: NOW,
            agent: Some("coder-2".into()),
            session: Some("web".into()),
            event,
        };
        let line = audit_line(&rec(AuditEvent::ClaimDeny {
            pid: 77,
            uid: 1000,
            comm: "sed".into(),
            hook: "inode_permission".into(),
            op: "write".into(),
            path: "/srv/web/src/parser/lex.rs".into(),
            task: "parser".into(),
            holder: "coder-1".into(),
            fencing: 3,
        }));
        assert!(
            line.ends_with(
                "claim_deny   write refused in /srv/web/src/parser/lex.rs: claimed by coder-1 for parser \
                 (fencing 3) pid=77 uid=1000 comm=sed hook=inode_permission session=web"
            ),
            "{line}"
        );
        let line = audit_line(&rec(AuditEvent::Claim {
            task: "parser".into(),
            action: ClaimAction::Revoked,
            lease: 12,
            fencing: 3,
            paths: vec!["/srv/web/src/parser".into()],
            enforcement: ClaimEnforcement::Kernel,
            expires_unix_ms: 0,
            caller_uid: Some(0),
        }));
        assert!(
            line.contains(
                "claim        task=parser action=revoked lease=12 fencing=3 enforcement=kernel \
                 paths=/srv/web/src/parser expires=1970-01-01T00:00:00.000Z caller_uid=0"
            ),
            "{line}"
        );
        let line = audit_line(&rec(AuditEvent::Intent {
            id: 7,
            text: "rename Lexer".into(),
            paths: vec![],
            expires_unix_ms: 0,
        }));
        assert!(
            line.contains("intent       id=7 paths=- expires=1970-01-01T00:00:00.000Z text=\"rename Lexer\""),
            "{line}"
        );
        let line = audit_line(&rec(AuditEvent::Result {
            key: "task/12".into(),
            sha256: "ab".into(),
            size: 3,
            for_agent: Some("lead".into()),
        }));
        assert!(line.contains("result       key=task/12 size=3 sha256=ab for=lead"), "{line}");
        let line = audit_line(&rec(AuditEvent::Task {
            id: 13,
            action: TaskAction::Delegated,
            from: "lead".into(),
            to: "tester".into(),
            text: "go".into(),
            parent: Some(12),
        }));
        assert!(
            line.contains("task         id=13 action=delegated from=lead to=tester parent=12 text=go"),
            "{line}"
        );
    }

    #[test]
    fn shell_quote_survives_sh_exactly() {
        let v = "it's \"x\" $HOME `id` \\ \n end";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(v)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn doctor_report() {
        let report = DoctorReport {
            kernel: "6.8.0-49-generic".into(),
            probes: vec![
                Probe { name: "bpf_lsm".into(), ok: true, detail: "bpf in /sys/kernel/security/lsm".into() },
                Probe { name: "btrfs".into(), ok: false, detail: "not mounted".into() },
            ],
            guarantees: vec![
                Guarantee { name: "net-deny".into(), holds: true, detail: "cgroup connect hooks".into() },
                Guarantee { name: "file-grants".into(), holds: false, detail: "needs BPF LSM".into() },
            ],
        };
        let want = "\
kernel: 6.8.0-49-generic

PROBE      DETAIL
✓ bpf_lsm  bpf in /sys/kernel/security/lsm
✗ btrfs    not mounted

GUARANTEE    HOLDS  WHY/HOW
net-deny     yes    cgroup connect hooks
file-grants  no     needs BPF LSM

1 of 2 guarantees hold on this machine.
";
        assert_eq!(doctor(&report), want);
    }
}

//! Rendering of the human attention queue: requests, batches, decisions, the queue's
//! settings, and its events. An agent writes a request's action and detail: they are
//! escaped like every other string an agent controls.

use super::*;

/// What a request asks for, in a few words: `write on /w/migrations`, `make migrate (in
/// /w)`, `raise to cpu:2m`, or its text.
pub fn approval_detail_text(d: &ApprovalDetail) -> String {
    match d {
        ApprovalDetail::Capability { path, ops } => format!("{ops} on {}", sanitize(&path.to_string_lossy())),
        ApprovalDetail::Command { argv, cwd: Some(cwd) } => {
            format!("{} (in {})", shell_join(argv), sanitize(&cwd.to_string_lossy()))
        }
        ApprovalDetail::Command { argv, cwd: None } => shell_join(argv),
        ApprovalDetail::Budget { raise } => format!("raise to {raise}"),
        ApprovalDetail::Custom { text } if text.is_empty() => "-".into(),
        ApprovalDetail::Custom { text } => sanitize(text),
    }
}

/// The priority now, marked when raised: `high`, `high↑ (waited 40m)`.
fn effective_priority(a: &Approval) -> String {
    if a.effective_priority <= a.priority {
        return a.effective_priority.to_string();
    }
    match &a.raised_because {
        Some(why) => format!("{}↑ ({})", a.effective_priority, sanitize(why)),
        None => format!("{}↑", a.effective_priority),
    }
}

/// Until a deadline: `in 4m`, or `now` once it passed (the daemon applies it).
fn deadline_in(now_ms: u64, deadline_ms: u64) -> String {
    if deadline_ms <= now_ms { "now".into() } else { expires_in(now_ms, deadline_ms) }
}

/// Who decided, through what: `approved by uid:0 via cli`, `expired at its deadline`.
fn decision_phrase(a: &Approval) -> String {
    let state = a.state;
    let Some(d) = &a.decision else { return state.to_string() };
    let mut out = match d.via {
        DecidedVia::Timeout if state == ApprovalState::Approved => {
            "approved at its deadline (on timeout: approve)".into()
        }
        DecidedVia::Timeout => format!("{state} at its deadline"),
        DecidedVia::Agent => format!("{state} by its agent"),
        DecidedVia::Daemon => format!("{state} by the daemon"),
        via => format!("{state} by {} via {via}", sanitize(&d.by)),
    };
    if d.late {
        out.push_str(" (applied late: the daemon was down at the deadline)");
    }
    out
}

/// What a decision did and why, after the action: ` (token 17 granted for 1h; reason: ok)`.
fn decision_notes(a: &Approval) -> String {
    let Some(d) = &a.decision else { return String::new() };
    let notes: Vec<String> =
        [d.effect.as_deref().map(sanitize), d.reason.as_deref().map(|r| format!("reason: {}", sanitize(r)))]
            .into_iter()
            .flatten()
            .collect();
    if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
}

/// One request on one line: `approval 12 pending (high, webhook:ops, deadline in 1h)`, or
/// decided, `approval 12 approved by uid:0 via cli: write /w/migrations (token 17 granted
/// for 1h)`.
pub fn approval_line(a: &Approval) -> String {
    format!("approval {} {}: {}{}", a.id, decision_phrase(a), sanitize(&a.action), decision_notes(a))
}

/// A pending request, as asked: `approval 12 pending (high, webhook:ops, deadline in 1h)`.
pub fn approval_pending_line(a: &Approval, now_ms: u64) -> String {
    format!(
        "approval {} {} ({}, {}, deadline {})",
        a.id,
        a.state,
        effective_priority(a),
        a.channel,
        deadline_in(now_ms, a.deadline_unix_ms)
    )
}

/// `rush approve` / `rush reject`: `approved 4 (coder: write /w/migrations): token 17
/// granted for 1h`.
pub fn decided_line(a: &Approval) -> String {
    let mut line = format!("{} {} ({}: {})", a.state, a.id, sanitize(&a.agent), sanitize(&a.action));
    if let Some(effect) = a.decision.as_ref().and_then(|d| d.effect.as_deref()) {
        line += &format!(": {}", sanitize(effect));
    }
    line
}

/// A cell of free text cut to `max` characters.
fn cut(s: &str, max: usize) -> String {
    let s = sanitize(s);
    if s.chars().count() > max { format!("{}...", s.chars().take(max - 3).collect::<String>()) } else { s }
}

/// `rush approvals`: the batches, each a line and its requests indented, then the single
/// requests; with decided ones (--all), a table of those after.
pub fn approvals_table(approvals: &[Approval], batches: &[ApprovalBatch], now_ms: u64) -> String {
    let pending: Vec<&Approval> = approvals.iter().filter(|a| a.state == ApprovalState::Pending).collect();
    let decided: Vec<&Approval> = approvals.iter().filter(|a| a.state != ApprovalState::Pending).collect();
    let mut out = String::new();
    if pending.is_empty() {
        out.push_str("no pending requests\n");
    } else {
        let mut t = Table::new(&["ID", "AGENT", "PRIORITY", "KIND", "ACTION", "CHANNEL", "DEADLINE"]);
        let row = |a: &Approval, indent: &str| {
            vec![
                format!("{indent}{}", a.id),
                sanitize(&a.agent),
                effective_priority(a),
                a.kind().to_string(),
                cut(&a.action, 60),
                a.channel.to_string(),
                deadline_in(now_ms, a.deadline_unix_ms),
            ]
        };
        // Lines to put before a row (its batch's), by row number.
        let mut before: Vec<(usize, String)> = Vec::new();
        let mut in_batch: Vec<u64> = Vec::new();
        let mut rows = 0;
        for b in batches {
            let members: Vec<&&Approval> =
                b.ids.iter().filter_map(|id| pending.iter().find(|a| a.id == *id)).collect();
            if members.is_empty() {
                continue;
            }
            let ids: Vec<String> = b.ids.iter().map(u64::to_string).collect();
            let noun = if b.ids.len() == 1 { "request" } else { "requests" };
            before.push((
                rows,
                format!(
                    "batch {}: {} {noun} (ids {}), {}, first deadline {}",
                    sanitize(&b.key),
                    b.ids.len(),
                    ids.join(", "),
                    b.priority,
                    deadline_in(now_ms, b.deadline_unix_ms)
                ),
            ));
            for a in members {
                t.row(row(a, "  "));
                in_batch.push(a.id);
                rows += 1;
            }
        }
        for a in pending.iter().filter(|a| !in_batch.contains(&a.id)) {
            t.row(row(a, ""));
        }
        let rendered = t.render();
        let mut lines = rendered.lines();
        out += lines.next().unwrap_or_default();
        out.push('\n');
        for (n, line) in lines.enumerate() {
            for (_, batch) in before.iter().filter(|(at, _)| *at == n) {
                out += batch;
                out.push('\n');
            }
            out += line;
            out.push('\n');
        }
    }
    if !decided.is_empty() {
        let mut t = Table::new(&["ID", "AGENT", "KIND", "DECIDED", "AGO", "ACTION"]);
        for a in decided {
            let ago = a
                .decision
                .as_ref()
                .map(|d| short_duration(now_ms.saturating_sub(d.unix_ms) / 1000))
                .unwrap_or_default();
            t.row(vec![
                a.id.to_string(),
                sanitize(&a.agent),
                a.kind().to_string(),
                decision_phrase(a),
                ago,
                format!("{}{}", cut(&a.action, 60), decision_notes(a)),
            ]);
        }
        out.push('\n');
        out += &t.render();
    }
    out
}

/// `rush approval show`: key: value lines.
pub fn approval_detail(a: &Approval, now_ms: u64) -> String {
    let when = |ms: u64| {
        let rel = if ms > now_ms {
            format!("in {}", short_duration((ms - now_ms).div_ceil(1000)))
        } else {
            format!("{} ago", short_duration((now_ms - ms) / 1000))
        };
        format!("{} ({rel})", format_unix_ms(ms))
    };
    let agent = match &a.session {
        Some(s) => format!("{} (session {})", sanitize(&a.agent), sanitize(s)),
        None => sanitize(&a.agent),
    };
    let priority = if a.effective_priority > a.priority {
        format!("{} (asked {})", effective_priority(a), a.priority)
    } else {
        a.priority.to_string()
    };
    let channel = match a.delivered_unix_ms {
        _ if matches!(a.channel, rush_proto::approval::Channel::Cli { .. }) => a.channel.to_string(),
        Some(ms) => format!("{} (delivered {})", a.channel, when(ms)),
        None if a.state == ApprovalState::Pending => format!("{} (not delivered yet)", a.channel),
        None => format!("{} (not delivered)", a.channel),
    };
    let mut deadline = format!("{}, then {}", when(a.deadline_unix_ms), a.on_timeout);
    if a.escalated {
        deadline.push_str(" (escalated)");
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("id", a.id.to_string()),
        ("agent", agent),
        ("state", a.state.to_string()),
        ("action", sanitize(&a.action)),
        ("kind", a.kind().to_string()),
        ("asks", approval_detail_text(&a.detail)),
        ("class", a.class.to_string()),
        ("priority", priority),
        ("channel", channel),
        ("asked", format!("{} by {}", when(a.created_unix_ms), a.origin)),
        ("deadline", deadline),
        ("batch", sanitize(&a.batch_key)),
    ];
    if let Some(score) = a.risk_score {
        fields.push(("risk", format!("{score}")));
    }
    if !a.tags.is_empty() {
        fields.push(("tags", sanitize(&a.tags.join(", "))));
    }
    if a.freeze {
        fields.push(("freeze", "the agent is frozen until it is decided".into()));
    }
    if let Some(d) = &a.decision {
        fields.push(("decided", format!("{} {}", decision_phrase(a), when(d.unix_ms))));
        if let Some(r) = &d.reason {
            fields.push(("reason", sanitize(r)));
        }
        if let Some(ttl) = d.ttl_secs {
            fields.push(("ttl", short_duration(ttl)));
        }
        if let Some(e) = &d.effect {
            fields.push(("effect", sanitize(e)));
        }
    }
    key_values(&fields)
}

fn key_values(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in fields {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    out
}

/// `rush human-queue show` (and what configure and approval-policy set leave).
pub fn queue_settings(s: &QueueSettings) -> String {
    let duration_or = |secs: u64, zero: &str| if secs == 0 { zero.to_owned() } else { short_duration(secs) };
    let mut routes = Table::new(&["PRIORITY", "CHANNEL"]);
    for p in [Priority::High, Priority::Medium, Priority::Low] {
        let channel = match s.routes.iter().find(|r| r.priority == p) {
            Some(r) => r.channel.to_string(),
            None => "cli (no route: the default)".into(),
        };
        routes.row(vec![p.to_string(), channel]);
    }
    let mut out = String::from("routes:\n");
    out += &indent(&routes.render());
    out += "class policies:\n";
    if s.classes.is_empty() {
        out += "  none: requests go by their priority's route\n";
    } else {
        let mut t = Table::new(&["CLASS", "CHANNEL", "PRIORITY", "TIMEOUT", "BATCH WINDOW"]);
        for c in &s.classes {
            let timeout = match (c.timeout_secs, c.on_timeout) {
                (Some(t), Some(on)) => format!("{}, then {on}", short_duration(t)),
                (Some(t), None) => short_duration(t),
                (None, Some(on)) => format!("-, then {on}"),
                (None, None) => "-".into(),
            };
            t.row(vec![
                c.class.map_or("-".into(), |c| c.to_string()),
                c.channel.as_ref().map_or("-".into(), |c| c.to_string()),
                c.priority.map_or("-".into(), |p| p.to_string()),
                timeout,
                c.batch_window_secs.map_or("-".into(), |w| duration_or(w, "0 (none)")),
            ]);
        }
        out += &indent(&t.render());
    }
    let similarity = if s.similarity > 1.0 {
        format!("{} (off)", s.similarity)
    } else {
        format!("{} (requests of one kind at least this alike are batched)", s.similarity)
    };
    let aging = if s.aging_secs == 0 {
        "off".to_owned()
    } else {
        format!(
            "{} (a pending request is raised one level per {} waiting)",
            short_duration(s.aging_secs),
            short_duration(s.aging_secs)
        )
    };
    let dash_list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { sanitize(&v.join(", ")) };
    let fields: Vec<(&str, String)> = vec![
        ("batch window", duration_or(s.batch_window_secs, "0 (no batching)")),
        ("similarity", similarity),
        ("aging", aging),
        ("grant ttl", short_duration(s.grant_ttl_secs)),
        ("deny to ask", dash_list(&s.deny_to_ask)),
        ("webhooks", dash_list(&s.webhooks)),
        ("smtp", s.smtp.as_deref().map_or("-".into(), sanitize)),
        ("listener", s.listener.as_deref().map_or("- (not running)".into(), sanitize)),
    ];
    out + &key_values(&fields)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `rush approvals --follow`: a request as it arrives, a decision as it is made, from the
/// audit record; None for the other kinds.
pub fn approval_event_line(r: &AuditRecord, now_ms: u64) -> Option<String> {
    let agent = r.agent.as_deref().map(sanitize).unwrap_or_else(|| "-".into());
    match &r.event {
        AuditEvent::ApprovalRequested {
            id,
            action,
            approval_kind,
            priority,
            channel,
            deadline_unix_ms,
            ..
        } => Some(format!(
            "approval {id} from {agent}: {} ({approval_kind}, {priority}, {channel}, deadline {})",
            sanitize(action),
            deadline_in(now_ms, *deadline_unix_ms)
        )),
        AuditEvent::ApprovalDecided {
            id, escalated: true, state: ApprovalState::Pending, effect, ..
        } => {
            let what = effect.as_deref().map_or("to high priority".into(), sanitize);
            Some(format!("approval {id} of {agent} escalated at its deadline: {what}"))
        }
        AuditEvent::ApprovalDecided { id, state, by, via, effect, .. } => {
            let mut line = format!("approval {id} of {agent} {state} by {} via {via}", sanitize(by));
            if let Some(e) = effect {
                line += &format!(" ({})", sanitize(e));
            }
            Some(line)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_745_771_123;

    fn approval(id: u64, agent: &str, action: &str, path: &str) -> Approval {
        use rush_proto::approval::{ActionClass, ApprovalOrigin, Channel, OnTimeout};
        Approval {
            id,
            agent: agent.into(),
            session: Some("web".into()),
            origin: ApprovalOrigin::Agent,
            action: action.into(),
            detail: ApprovalDetail::Capability { path: path.into(), ops: rush_proto::Ops::WRITE },
            class: ActionClass::Capability,
            priority: Priority::High,
            effective_priority: Priority::High,
            raised_because: None,
            risk_score: None,
            tags: vec![],
            batch_key: "capability:write:/w".into(),
            channel: Channel::Cli { blocking: true },
            created_unix_ms: NOW - 60_000,
            deadline_unix_ms: NOW + 240_000,
            on_timeout: OnTimeout::Reject,
            escalated: false,
            freeze: false,
            delivered_unix_ms: None,
            state: ApprovalState::Pending,
            decision: None,
        }
    }

    fn decided(
        mut a: Approval,
        state: ApprovalState,
        effect: Option<&str>,
        reason: Option<&str>,
    ) -> Approval {
        a.state = state;
        a.decision = Some(rush_proto::approval::Decision {
            by: "uid:0".into(),
            via: DecidedVia::Cli,
            unix_ms: NOW - 30_000,
            reason: reason.map(str::to_owned),
            ttl_secs: None,
            late: false,
            effect: effect.map(str::to_owned),
        });
        a
    }

    #[test]
    fn approvals_fold_batches_then_singles() {
        use rush_proto::approval::{ApprovalKind, Channel};
        let four = approval(4, "coder", "write /w/migrations", "/w/migrations");
        let mut seven = approval(7, "coder", "write /w/schema.sql", "/w/schema.sql");
        seven.deadline_unix_ms = NOW + 540_000;
        let mut nine = approval(9, "docs", "publish the changelog", "/w/x");
        nine.detail = ApprovalDetail::Custom { text: String::new() };
        nine.priority = Priority::Low;
        nine.effective_priority = Priority::Medium;
        nine.raised_because = Some("waited 1h".into());
        nine.channel = Channel::Webhook("ops".into());
        nine.deadline_unix_ms = NOW + 1_200_000;
        assert_eq!(nine.kind(), ApprovalKind::Custom);
        let batch = ApprovalBatch {
            key: "capability:write:/w".into(),
            ids: vec![4, 7],
            priority: Priority::High,
            deadline_unix_ms: NOW + 240_000,
        };
        // The daemon's order (single first) does not matter: batches come first.
        let got =
            approvals_table(&[nine.clone(), four.clone(), seven.clone()], std::slice::from_ref(&batch), NOW);
        let want = "\
ID   AGENT  PRIORITY             KIND        ACTION                 CHANNEL       DEADLINE
batch capability:write:/w: 2 requests (ids 4, 7), high, first deadline in 4m
  4  coder  high                 capability  write /w/migrations    cli:blocking  in 4m
  7  coder  high                 capability  write /w/schema.sql    cli:blocking  in 9m
9    docs   medium↑ (waited 1h)  custom      publish the changelog  webhook:ops   in 20m
";
        assert_eq!(got, want);
        // The help shows the same.
        assert!(
            crate::cli::LIST_EXAMPLES.contains(&want.lines().map(|l| format!("  {l}\n")).collect::<String>())
        );
        assert_eq!(approvals_table(&[], &[], NOW), "no pending requests\n");

        // With --all: the decided ones after, with their decisions.
        let done = decided(
            approval(2, "coder", "write /w/a\x1b[2J", "/w/a"),
            ApprovalState::Rejected,
            None,
            Some("no"),
        );
        let got = approvals_table(&[done], &[], NOW);
        assert_eq!(
            got,
            "no pending requests\n\nID  AGENT  KIND        DECIDED                    AGO  ACTION\n\
             2   coder  capability  rejected by uid:0 via cli  30s  write /w/a\\u{1b}[2J (reason: no)\n"
        );
    }

    #[test]
    fn approval_lines() {
        let a = approval(12, "coder", "write /w/migrations", "/w/migrations");
        assert_eq!(
            approval_pending_line(&a, NOW),
            "approval 12 pending (high, cli:blocking, deadline in 4m)"
        );
        let ok = decided(a.clone(), ApprovalState::Approved, Some("token 17 granted for 1h"), None);
        assert_eq!(
            approval_line(&ok),
            "approval 12 approved by uid:0 via cli: write /w/migrations (token 17 granted for 1h)"
        );
        assert_eq!(decided_line(&ok), "approved 12 (coder: write /w/migrations): token 17 granted for 1h");
        let no = decided(a.clone(), ApprovalState::Rejected, None, Some("not now"));
        assert_eq!(
            approval_line(&no),
            "approval 12 rejected by uid:0 via cli: write /w/migrations (reason: not now)"
        );
        assert_eq!(decided_line(&no), "rejected 12 (coder: write /w/migrations)");
        let mut expired = decided(a.clone(), ApprovalState::Expired, None, None);
        expired.decision.as_mut().unwrap().via = DecidedVia::Timeout;
        expired.decision.as_mut().unwrap().late = true;
        assert_eq!(
            approval_line(&expired),
            "approval 12 expired at its deadline (applied late: the daemon was down at the deadline): \
             write /w/migrations"
        );
        let mut cancelled = decided(a.clone(), ApprovalState::Cancelled, None, None);
        cancelled.decision.as_mut().unwrap().via = DecidedVia::Agent;
        assert_eq!(approval_line(&cancelled), "approval 12 cancelled by its agent: write /w/migrations");
        // The inbox: tasks, then the decided requests.
        assert_eq!(inbox(&[], std::slice::from_ref(&ok)), format!("{}\n", approval_line(&ok)));
        let task = rush_proto::coordination::Task {
            id: 3,
            from: "lead".into(),
            to: "coder".into(),
            session: None,
            text: "migrate".into(),
            parent: None,
            state: rush_proto::coordination::TaskState::Open,
            result_key: "task/3".into(),
            created_unix_ms: NOW,
        };
        assert_eq!(
            inbox(std::slice::from_ref(&task), std::slice::from_ref(&no)),
            "ID  FROM  RESULT-KEY  TEXT\n3   lead  task/3      migrate\n\n\
             approval 12 rejected by uid:0 via cli: write /w/migrations (reason: not now)\n"
        );
        assert_eq!(inbox(&[], &[]), "inbox empty\n");
        let detail = approval_detail(&ok, NOW);
        for line in [
            "id:       12\n",
            "agent:    coder (session web)\n",
            "asks:     write on /w/migrations\n",
            "deadline: 2026-11-27T02:20:11.123Z (in 4m), then reject\n",
            "decided:  approved by uid:0 via cli 2026-11-27T02:15:41.123Z (30s ago)\n",
            "effect:   token 17 granted for 1h\n",
        ] {
            assert!(detail.contains(line), "{line:?} not in\n{detail}");
        }
        let cmd = ApprovalDetail::Command {
            argv: vec!["make".into(), "migrate db".into()],
            cwd: Some("/w".into()),
        };
        assert_eq!(approval_detail_text(&cmd), "make 'migrate db' (in /w)");
        assert_eq!(
            approval_detail_text(&ApprovalDetail::Budget { raise: "cpu:2m".parse().unwrap() }),
            "raise to cpu:2m"
        );
    }

    #[test]
    fn queue_settings_show_every_priority_and_class() {
        use rush_proto::approval::{ActionClass, Channel, ClassPolicy, OnTimeout, Route};
        let s = QueueSettings {
            routes: vec![Route { priority: Priority::High, channel: Channel::Cli { blocking: true } }],
            classes: vec![ClassPolicy {
                class: Some(ActionClass::Destructive),
                channel: Some(Channel::Webhook("ops".into())),
                priority: Some(Priority::High),
                timeout_secs: Some(3600),
                on_timeout: Some(OnTimeout::Escalate),
                batch_window_secs: None,
            }],
            batch_window_secs: 300,
            similarity: 0.8,
            aging_secs: 0,
            grant_ttl_secs: 3600,
            deny_to_ask: vec!["low".into()],
            webhooks: vec!["ops".into()],
            smtp: None,
            listener: Some("127.0.0.1:8470".into()),
        };
        let want = "\
routes:
  PRIORITY  CHANNEL
  high      cli:blocking
  medium    cli (no route: the default)
  low       cli (no route: the default)
class policies:
  CLASS        CHANNEL      PRIORITY  TIMEOUT            BATCH WINDOW
  destructive  webhook:ops  high      1h, then escalate  -
batch window: 5m
similarity:   0.8 (requests of one kind at least this alike are batched)
aging:        off
grant ttl:    1h
deny to ask:  low
webhooks:     ops
smtp:         -
listener:     127.0.0.1:8470
";
        assert_eq!(queue_settings(&s), want);
    }

    #[test]
    fn approval_audit_lines_and_events() {
        use rush_proto::approval::{ApprovalKind, ApprovalOrigin, Channel};
        let rec = |event| AuditRecord {
            seq: 42,
            time_unix_ms: NOW,
            agent: Some("coder".into()),
            session: None,
            event,
        };
        let requested = rec(AuditEvent::ApprovalRequested {
            id: 12,
            action: "write /w/migrations".into(),
            approval_kind: ApprovalKind::Capability,
            priority: Priority::High,
            channel: Channel::Cli { blocking: true },
            origin: ApprovalOrigin::Agent,
            batch_key: "capability:write:/w".into(),
            deadline_unix_ms: NOW + 3_600_000,
        });
        let line = audit_line(&requested);
        assert!(
            line.ends_with(
                "approval_requested  id=12 kind=capability priority=high channel=cli:blocking origin=agent \
                 batch=capability:write:/w deadline=2026-11-27T03:16:11.123Z action=\"write /w/migrations\""
            ),
            "{line}"
        );
        assert_eq!(
            approval_event_line(&requested, NOW).unwrap(),
            "approval 12 from coder: write /w/migrations (capability, high, cli:blocking, deadline in 1h)"
        );
        let decided = rec(AuditEvent::ApprovalDecided {
            id: 12,
            state: ApprovalState::Approved,
            by: "uid:0".into(),
            via: DecidedVia::Cli,
            late: false,
            escalated: false,
            effect: Some("token 17 granted for 1h".into()),
        });
        assert!(
            audit_line(&decided)
                .ends_with("id=12 state=approved by=uid:0 via=cli effect=\"token 17 granted for 1h\"")
        );
        assert_eq!(
            approval_event_line(&decided, NOW).unwrap(),
            "approval 12 of coder approved by uid:0 via cli (token 17 granted for 1h)"
        );
        let escalated = rec(AuditEvent::ApprovalDecided {
            id: 12,
            state: ApprovalState::Pending,
            by: "timeout".into(),
            via: DecidedVia::Timeout,
            late: false,
            escalated: true,
            effect: Some("escalated to high, routed to cli:blocking".into()),
        });
        assert_eq!(
            approval_event_line(&escalated, NOW).unwrap(),
            "approval 12 of coder escalated at its deadline: escalated to high, routed to cli:blocking"
        );
        let line = audit_line(&escalated);
        assert!(
            line.ends_with(
                "id=12 state=pending by=timeout via=timeout escalated=true \
                 effect=\"escalated to high, routed to cli:blocking\""
            ),
            "{line}"
        );
        let delivery = rec(AuditEvent::ApprovalDelivery {
            ids: vec![4, 7],
            channel: Channel::Webhook("ops".into()),
            attempt: 2,
            ok: false,
            error: Some("HTTP 502".into()),
        });
        assert!(
            audit_line(&delivery)
                .ends_with("ids=4,7 channel=webhook:ops attempt=2 ok=false error=\"HTTP 502\"")
        );
        let refused = rec(AuditEvent::ApprovalRefused {
            via: DecidedVia::Webhook,
            id: None,
            reason: "bad signature".into(),
        });
        assert!(audit_line(&refused).ends_with("via=webhook reason=\"bad signature\""));
        assert_eq!(approval_event_line(&delivery, NOW), None);
    }
}

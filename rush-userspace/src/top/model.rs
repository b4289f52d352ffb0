//! What `rush top` shows, as plain data: updated from the daemon's replies and events,
//! changed by keys, drawn by `view`. Nothing here talks to the daemon or the terminal, so
//! the layout tests feed it a fake event stream.

use std::collections::{HashMap, VecDeque};

use rush_proto::approval::{Approval, ApprovalState};
use rush_proto::audit::{AuditEvent, AuditRecord};
use rush_proto::budget::{BudgetResource, BudgetUsage};
use rush_proto::coordination::Claim;
use rush_proto::events::Event;
use rush_proto::wire::PauseReason;
use rush_proto::{AgentInfo, AgentState, DiffReport, TokenInfo};

/// Audit records kept for the focus pane (all agents together).
const AUDIT_KEPT: usize = 400;
/// The budget resources the table shows, in order (the ceilings, cpu-rate and pids, are
/// left out: they are never used up).
pub const BUDGET_BARS: [BudgetResource; 5] = [
    BudgetResource::Cpu,
    BudgetResource::Mem,
    BudgetResource::Net,
    BudgetResource::Api,
    BudgetResource::Cost,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Cpu,
    Mem,
    Age,
    Denials,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Cpu,
            SortKey::Cpu => SortKey::Mem,
            SortKey::Mem => SortKey::Age,
            SortKey::Age => SortKey::Denials,
            SortKey::Denials => SortKey::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Cpu => "cpu",
            SortKey::Mem => "mem",
            SortKey::Age => "age",
            SortKey::Denials => "denials",
        }
    }
}

/// Which list the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Agents,
    Approvals,
}

/// A question asked on the bottom line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Filter,
    /// `g`: PATH:OPS[:TTL] for the selected agent.
    Grant,
    /// `v`: a path or token id of the selected agent.
    Revoke,
    /// `c`: the checkpoint's name (empty: one made from the time).
    Checkpoint,
    /// `r` on an agent its budget froze: the new limits (`cpu:30s,mem:1G`).
    ResumeBudget,
}

impl Prompt {
    pub fn label(&self) -> &'static str {
        match self {
            Prompt::Filter => "filter (name, session or state; empty clears): ",
            Prompt::Grant => "grant PATH:OPS[:TTL] (e.g. /src:read,write:1h): ",
            Prompt::Revoke => "revoke PATH or token ID: ",
            Prompt::Checkpoint => "checkpoint name (empty: from the time): ",
            Prompt::ResumeBudget => "its budget froze it; raise it (e.g. cpu:60s): ",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Input {
        prompt: Prompt,
        text: String,
        agent: Option<String>,
    },
    /// `k`: kill AGENT? y/N
    ConfirmKill {
        agent: String,
    },
    Help,
}

/// One agent as the table shows it.
#[derive(Debug, Clone)]
pub struct Row {
    pub info: AgentInfo,
    /// CPU use over the last refresh, percent of one core.
    pub cpu_pct: Option<f64>,
    /// (cpu ms used, when) at the last refresh, for the next rate.
    cpu_sample: Option<(u64, u64)>,
}

/// The focused agent's terminal (or log) as a screen.
pub struct Screen {
    pub agent: String,
    /// Its output went through a terminal emulator: colours, cursor moves, clears.
    pub parser: vt100::Parser,
    /// The agent's terminal closed (or its log ended).
    pub closed: bool,
    /// Log output (no terminal): bare `\n` is turned into `\r\n` before parsing.
    pub log: bool,
    pub error: Option<String>,
}

impl Screen {
    pub fn new(agent: &str, log: bool, rows: u16, cols: u16) -> Screen {
        Screen {
            agent: agent.to_owned(),
            parser: vt100::Parser::new(nonzero(rows), nonzero(cols), 0),
            closed: false,
            log,
            error: None,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.log {
            let mut out = Vec::with_capacity(bytes.len() + 16);
            for &b in bytes {
                if b == b'\n' {
                    out.push(b'\r');
                }
                out.push(b);
            }
            self.parser.process(&out);
        } else {
            self.parser.process(bytes);
        }
    }
}

pub fn nonzero(v: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(v).unwrap_or(std::num::NonZeroU16::MIN)
}

/// The focused agent's tokens and workspace diff, fetched when it is selected and when
/// they change.
#[derive(Debug, Clone)]
pub struct Detail {
    pub agent: String,
    pub tokens: Vec<TokenInfo>,
    /// (since what, the diff) or why there is none.
    pub diff: Result<Option<DiffReport>, String>,
}

pub struct Model {
    pub rows: Vec<Row>,
    /// The selected agent, by name (survives re-sorting and new agents).
    pub selected: Option<String>,
    pub sort: SortKey,
    pub filter: String,
    pub pane: Pane,
    pub approvals: Vec<Approval>,
    pub approval_selected: usize,
    pub claims: Vec<Claim>,
    pub audit: VecDeque<AuditRecord>,
    /// Denial times per agent (ms), the last minute's.
    denials: HashMap<String, VecDeque<u64>>,
    pub screen: Option<Screen>,
    pub detail: Option<Detail>,
    pub mode: Mode,
    /// (message, is an error, when shown in ms).
    pub status: Option<(String, bool, u64)>,
    /// The daemon could not be reached / the event stream broke.
    pub feed_error: Option<String>,
    pub now_ms: u64,
    pub color: bool,
    /// Ask the poller for a fresh snapshot (an agent's state changed).
    pub want_refresh: bool,
    /// Ask for the focused agent's tokens and diff again.
    pub want_detail: bool,
    /// The focused agent was started again (a restart under new rules): open its
    /// terminal or log anew.
    pub want_refocus: bool,
}

/// Denial events: what the "denials in the last minute" column counts.
pub fn is_denial(e: &AuditEvent) -> bool {
    matches!(
        e,
        AuditEvent::FileDeny { .. }
            | AuditEvent::NetDeny { .. }
            | AuditEvent::GuardDeny { .. }
            | AuditEvent::SyscallDeny { .. }
            | AuditEvent::ClaimDeny { .. }
            | AuditEvent::ApiRefused { .. }
            | AuditEvent::ForkRefused { .. }
    )
}

/// Events after which the agents table is out of date.
fn changes_agents(e: &AuditEvent) -> bool {
    matches!(
        e,
        AuditEvent::Spawn { .. }
            | AuditEvent::Exit { .. }
            | AuditEvent::Kill { .. }
            | AuditEvent::Paused { .. }
            | AuditEvent::Resumed { .. }
            | AuditEvent::BudgetExceeded { .. }
            | AuditEvent::OomKill { .. }
            | AuditEvent::AgentRestarted { .. }
            | AuditEvent::Claim { .. }
            | AuditEvent::ApprovalRequested { .. }
            | AuditEvent::ApprovalDecided { .. }
            | AuditEvent::SessionRemoved { .. }
    )
}

/// Events after which the focused agent's tokens or diff are out of date.
fn changes_detail(e: &AuditEvent) -> bool {
    matches!(
        e,
        AuditEvent::Grant { .. }
            | AuditEvent::Revoke { .. }
            | AuditEvent::Checkpoint { .. }
            | AuditEvent::Rollback { .. }
            | AuditEvent::TimelineChange { .. }
            | AuditEvent::Commit { .. }
    )
}

impl Model {
    pub fn new(color: bool, now_ms: u64) -> Model {
        Model {
            rows: Vec::new(),
            selected: None,
            sort: SortKey::Name,
            filter: String::new(),
            pane: Pane::Agents,
            approvals: Vec::new(),
            approval_selected: 0,
            claims: Vec::new(),
            audit: VecDeque::new(),
            denials: HashMap::new(),
            screen: None,
            detail: None,
            mode: Mode::Normal,
            status: None,
            feed_error: None,
            now_ms,
            color,
            want_refresh: false,
            want_detail: false,
            want_refocus: false,
        }
    }

    /// A fresh list of agents (one `ListAgents`): keeps the selection, derives CPU rates.
    pub fn set_agents(&mut self, agents: Vec<AgentInfo>, now_ms: u64) {
        self.now_ms = now_ms;
        let mut old: HashMap<String, Row> = self.rows.drain(..).map(|r| (r.info.name.clone(), r)).collect();
        for info in agents {
            let used = cpu_used_ms(&info);
            let prev = old.remove(&info.name).and_then(|r| r.cpu_sample.map(|s| (s, r.cpu_pct)));
            let cpu_pct = match (prev, used) {
                // A rate needs two samples some time apart; between them keep the last.
                (Some(((u0, t0), _)), Some(u1)) if now_ms > t0 + 200 => {
                    Some(u1.saturating_sub(u0) as f64 * 100.0 / (now_ms - t0) as f64)
                }
                (Some((_, pct)), _) => pct,
                (None, _) => None,
            };
            let cpu_sample = match (prev, used) {
                (Some(((u0, t0), _)), Some(_)) if now_ms <= t0 + 200 => Some((u0, t0)),
                (_, Some(u)) => Some((u, now_ms)),
                (_, None) => None,
            };
            let cpu_pct = if info.state == AgentState::Exited { None } else { cpu_pct };
            self.rows.push(Row { info, cpu_pct, cpu_sample });
        }
        self.sort_rows();
        if self.selected.as_ref().is_none_or(|s| !self.rows.iter().any(|r| &r.info.name == s)) {
            self.selected = self.visible().first().map(|r| r.info.name.clone());
        }
    }

    pub fn set_approvals(&mut self, mut approvals: Vec<Approval>) {
        approvals.retain(|a| a.state == ApprovalState::Pending);
        approvals.sort_by(|a, b| b.effective_priority.cmp(&a.effective_priority).then(a.id.cmp(&b.id)));
        self.approvals = approvals;
        self.approval_selected = self.approval_selected.min(self.approvals.len().saturating_sub(1));
    }

    /// Audit records from before the subscription (the last minute's), oldest first.
    pub fn seed_audit(&mut self, records: Vec<AuditRecord>) {
        for r in records {
            self.push_audit(r);
        }
    }

    fn push_audit(&mut self, r: AuditRecord) {
        // The seed and the subscription overlap: a record seen twice counts once.
        if self.audit.iter().any(|x| x.seq == r.seq) {
            return;
        }
        if is_denial(&r.event)
            && let Some(agent) = &r.agent
        {
            self.denials.entry(agent.clone()).or_default().push_back(r.time_unix_ms);
        }
        self.audit.push_back(r);
        while self.audit.len() > AUDIT_KEPT {
            self.audit.pop_front();
        }
    }

    /// One event from the subscription.
    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Audit(r) => {
                if changes_agents(&r.event) {
                    self.want_refresh = true;
                }
                if changes_detail(&r.event) && r.agent.is_some() && r.agent == self.selected {
                    self.want_detail = true;
                }
                if matches!(
                    r.event,
                    AuditEvent::AgentRestarted { .. } | AuditEvent::RulesetChange { new_pid: Some(_), .. }
                ) && r.agent.is_some()
                    && r.agent == self.selected
                {
                    self.want_refocus = true;
                }
                if matches!(r.event, AuditEvent::Checkpoint { .. } | AuditEvent::Rollback { .. })
                    && self.selected_row().and_then(|row| row.info.session.as_deref()) == r.event.session()
                {
                    self.want_detail = true;
                }
                self.push_audit(*r);
            }
            Event::Lagged { missed } => {
                self.feed_error =
                    Some(format!("fell behind the daemon's events ({missed} missed); reconnecting"));
                self.want_refresh = true;
            }
        }
    }

    /// Denials of `agent` in the minute before now.
    pub fn denials_last_minute(&self, agent: &str) -> usize {
        let since = self.now_ms.saturating_sub(60_000);
        self.denials.get(agent).map_or(0, |d| d.iter().filter(|&&t| t >= since).count())
    }

    /// Forget denial times older than a minute.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let since = now_ms.saturating_sub(60_000);
        for d in self.denials.values_mut() {
            while d.front().is_some_and(|&t| t < since) {
                d.pop_front();
            }
        }
        self.denials.retain(|_, d| !d.is_empty());
        if let Some((_, _, at)) = &self.status
            && now_ms > at + 8_000
        {
            self.status = None;
        }
    }

    pub fn claims_held(&self, agent: &str) -> usize {
        self.claims.iter().filter(|c| c.agent == agent && c.expires_unix_ms > self.now_ms).count()
    }

    fn sort_rows(&mut self) {
        let denials: HashMap<String, usize> =
            self.rows.iter().map(|r| (r.info.name.clone(), self.denials_last_minute(&r.info.name))).collect();
        let key = self.sort;
        self.rows.sort_by(|a, b| {
            let running = |r: &Row| r.info.state != AgentState::Running;
            let by = match key {
                SortKey::Name => std::cmp::Ordering::Equal,
                SortKey::Cpu => b.cpu_pct.unwrap_or(0.0).total_cmp(&a.cpu_pct.unwrap_or(0.0)),
                SortKey::Mem => mem_used(&b.info).cmp(&mem_used(&a.info)),
                SortKey::Age => a.info.started_unix_ms.cmp(&b.info.started_unix_ms),
                SortKey::Denials => denials[&b.info.name].cmp(&denials[&a.info.name]),
            };
            running(a).cmp(&running(b)).then(by).then_with(|| a.info.name.cmp(&b.info.name))
        });
    }

    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        self.sort_rows();
    }

    /// The rows the filter lets through, in table order.
    pub fn visible(&self) -> Vec<&Row> {
        let f = self.filter.to_lowercase();
        self.rows
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.info.name.to_lowercase().contains(&f)
                    || r.info.session.as_deref().is_some_and(|s| s.to_lowercase().contains(&f))
                    || state_label(&r.info, &self.approvals).contains(&f)
            })
            .collect()
    }

    pub fn selected_row(&self) -> Option<&Row> {
        let name = self.selected.as_ref()?;
        self.rows.iter().find(|r| &r.info.name == name)
    }

    /// Moves the selection by `delta` rows in the focused list.
    pub fn move_selection(&mut self, delta: isize) {
        match self.pane {
            Pane::Agents => {
                let visible: Vec<String> = self.visible().iter().map(|r| r.info.name.clone()).collect();
                if visible.is_empty() {
                    return;
                }
                let at =
                    self.selected.as_ref().and_then(|s| visible.iter().position(|n| n == s)).unwrap_or(0);
                let to = (at as isize + delta).clamp(0, visible.len() as isize - 1) as usize;
                self.selected = Some(visible[to].clone());
            }
            Pane::Approvals => {
                if self.approvals.is_empty() {
                    return;
                }
                let to =
                    (self.approval_selected as isize + delta).clamp(0, self.approvals.len() as isize - 1);
                self.approval_selected = to as usize;
            }
        }
    }

    /// After the filter changed: the selection stays visible.
    pub fn refilter(&mut self) {
        let visible: Vec<String> = self.visible().iter().map(|r| r.info.name.clone()).collect();
        if self.selected.as_ref().is_none_or(|s| !visible.contains(s)) {
            self.selected = visible.first().cloned();
        }
    }

    pub fn selected_approval(&self) -> Option<&Approval> {
        self.approvals.get(self.approval_selected)
    }

    pub fn say(&mut self, message: impl Into<String>) {
        self.status = Some((message.into(), false, self.now_ms));
    }

    pub fn fail(&mut self, message: impl Into<String>) {
        self.status = Some((message.into(), true, self.now_ms));
    }

    /// The audit records of `agent`, newest first: denials and state changes, not the
    /// noise of terminal input.
    pub fn agent_audit(&self, agent: &str) -> impl Iterator<Item = &AuditRecord> {
        self.audit.iter().rev().filter(move |r| r.agent.as_deref() == Some(agent)).filter(|r| {
            !matches!(r.event, AuditEvent::TerminalInput { .. } | AuditEvent::TerminalAttached { .. })
        })
    }
}

/// The state column: running, paused: operator / budget, waiting: approval ID, exited CODE.
pub fn state_label(a: &AgentInfo, approvals: &[Approval]) -> String {
    if a.state == AgentState::Exited {
        return match a.exit {
            Some(s) => match (s.code, s.signal) {
                (Some(c), _) => format!("exited {c}"),
                (None, Some(sig)) => format!("exited sig{sig}"),
                (None, None) => "exited ?".into(),
            },
            None => "exited".into(),
        };
    }
    if a.paused.contains(&PauseReason::Approval) {
        let id = approvals.iter().find(|p| p.agent == a.name && p.freeze).map(|p| p.id);
        return match id {
            Some(id) => format!("waiting: approval {id}"),
            None => "waiting: approval".into(),
        };
    }
    if a.paused.contains(&PauseReason::BudgetCpu) {
        return "paused: budget".into();
    }
    if a.paused.contains(&PauseReason::Operator) {
        return "paused: operator".into();
    }
    "running".into()
}

pub fn cpu_used_ms(a: &AgentInfo) -> Option<u64> {
    a.usage.iter().find(|u| u.resource == BudgetResource::Cpu).map(|u| u.used)
}

/// The most used of its `BUDGET_BARS` that has a limit, and its percent.
pub fn worst_budget(a: &AgentInfo) -> Option<(&BudgetUsage, f64)> {
    a.usage
        .iter()
        .filter(|u| BUDGET_BARS.contains(&u.resource))
        .filter_map(|u| u.percent().map(|p| (u, p)))
        .max_by(|x, y| x.1.total_cmp(&y.1))
}

pub fn mem_used(a: &AgentInfo) -> u64 {
    a.usage.iter().find(|u| u.resource == BudgetResource::Mem).map_or(0, |u| u.used)
}

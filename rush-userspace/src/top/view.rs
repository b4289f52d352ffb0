//! Drawing the model: header, agents table, focus pane (terminal, audit, tokens, diff),
//! approvals, and the key line. Two layouts: narrow (under 120 columns: a compact table,
//! panes stacked) and wide (budget bars per resource, panes side by side).

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState, Widget, Wrap,
};
use rush_proto::audit::{AuditEvent, AuditRecord};
use rush_proto::budget::{BudgetResource, BudgetUsage};
use rush_proto::{AgentInfo, AgentState};

use super::model::{BUDGET_BARS, Mode, Model, Pane, Screen, mem_used, nonzero, state_label, worst_budget};
use crate::render::{self, sanitize, shell_join};
use crate::time::{format_duration, format_unix_ms};

/// Columns from which the wide layout is used.
pub const WIDE: u16 = 120;

struct Styles {
    color: bool,
}

impl Styles {
    fn fg(&self, c: Color) -> Style {
        if self.color { Style::default().fg(c) } else { Style::default() }
    }
    fn bold(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    fn state(&self, label: &str) -> Style {
        let c = if label.starts_with("running") {
            Color::Green
        } else if label.starts_with("paused: budget") || label.starts_with("exited") {
            Color::Red
        } else {
            Color::Yellow
        };
        self.fg(c)
    }
    fn percent(&self, pct: f64) -> Style {
        let s = self.fg(if pct >= 100.0 {
            Color::Red
        } else if pct >= 80.0 {
            Color::Yellow
        } else {
            Color::Green
        });
        if pct >= 100.0 { s.add_modifier(Modifier::BOLD) } else { s }
    }
}

pub fn draw(f: &mut Frame, m: &mut Model) {
    let area = f.area();
    let st = Styles { color: m.color };
    let wide = area.width >= WIDE;
    let visible_rows = m.visible().len() as u16;
    let table_h = (visible_rows + 3).clamp(4, (area.height / 3).max(5));
    let [header, table, rest, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, header, m, &st);
    draw_table(f, table, m, &st, wide);
    let approvals_h = if m.approvals.is_empty() && m.pane != Pane::Approvals {
        0
    } else {
        (m.approvals.len() as u16 + 3).clamp(4, if wide { 10 } else { 6 })
    };
    if wide {
        let [screen, side] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(rest);
        let [info, approvals] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(approvals_h)]).areas(side);
        draw_screen(f, screen, m, &st);
        draw_info(f, info, m, &st);
        draw_approvals(f, approvals, m, &st);
    } else {
        let info_h = if rest.height >= 14 + approvals_h { 8 } else { 5 };
        let [screen, info, approvals] = Layout::vertical([
            Constraint::Min(3),
            Constraint::Length(info_h),
            Constraint::Length(approvals_h),
        ])
        .areas(rest);
        draw_screen(f, screen, m, &st);
        draw_info(f, info, m, &st);
        draw_approvals(f, approvals, m, &st);
    }
    draw_footer(f, footer, m, &st);
    if m.mode == Mode::Help {
        draw_help(f, area);
    }
}

fn draw_header(f: &mut Frame, area: Rect, m: &Model, st: &Styles) {
    let running = m.rows.iter().filter(|r| r.info.state == AgentState::Running).count();
    let paused =
        m.rows.iter().filter(|r| r.info.state == AgentState::Running && !r.info.paused.is_empty()).count();
    let mut text = format!("rush top · {} agents · {running} running · {paused} paused", m.rows.len());
    if !m.approvals.is_empty() {
        text.push_str(&format!(" · {} to approve", m.approvals.len()));
    }
    text.push_str(&format!(" · sort {}", m.sort.label()));
    if !m.filter.is_empty() {
        text.push_str(&format!(" · filter {:?}", m.filter));
    }
    let clock = format_unix_ms(m.now_ms);
    let clock = clock.get(11..19).unwrap_or(&clock).to_owned();
    let mut spans = vec![Span::styled(text, st.bold())];
    if let Some(e) = &m.feed_error {
        spans.push(Span::styled(format!(" · {e}"), st.fg(Color::Red)));
    }
    let width = spans.iter().map(|s| s.width()).sum::<usize>();
    // The clock only where it fits after the rest.
    if width + 1 + clock.len() <= area.width as usize {
        spans.push(Span::raw(" ".repeat(area.width as usize - width - clock.len())));
        spans.push(Span::raw(clock));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn usage(a: &AgentInfo, r: BudgetResource) -> Option<&BudgetUsage> {
    a.usage.iter().find(|u| u.resource == r)
}

/// `███░░ 60%` for a resource with a limit, `-` without one.
fn bar(u: Option<&BudgetUsage>, st: &Styles, cells: usize) -> Cell<'static> {
    let Some((u, pct)) = u.and_then(|u| u.percent().map(|p| (u, p))) else {
        return Cell::from("-");
    };
    let filled = ((pct / 100.0) * cells as f64).round().clamp(0.0, cells as f64) as usize;
    let mark = if u.exceeded || pct >= 100.0 { "!" } else { "" };
    Cell::from(Line::from(vec![
        Span::styled("█".repeat(filled), st.percent(pct)),
        Span::styled("░".repeat(cells - filled), st.fg(Color::DarkGray)),
        Span::styled(format!("{:>4.0}%{mark}", pct.min(999.0)), st.percent(pct)),
    ]))
}

/// The most used limited resource: `cpu 67%`.
fn worst_budget_cell(a: &AgentInfo, st: &Styles) -> Cell<'static> {
    match worst_budget(a) {
        None => Cell::from("-"),
        Some((u, p)) => {
            let mark = if u.exceeded || p >= 100.0 { "!" } else { "" };
            Cell::from(Span::styled(format!("{} {:.0}%{mark}", u.resource, p.min(999.0)), st.percent(p)))
        }
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

fn draw_table(f: &mut Frame, area: Rect, m: &Model, st: &Styles, wide: bool) {
    let rows = m.visible();
    let selected = m.selected.as_ref().and_then(|s| rows.iter().position(|r| &r.info.name == s));
    let mut lines = Vec::new();
    for r in &rows {
        let state = state_label(&r.info, &m.approvals);
        let cpu = if r.info.state == AgentState::Running {
            r.cpu_pct.map_or("-".into(), |p| format!("{p:.1}"))
        } else {
            "-".into()
        };
        let mem =
            if r.info.state == AgentState::Running { human_bytes(mem_used(&r.info)) } else { "-".into() };
        let denials = m.denials_last_minute(&r.info.name);
        let deny_cell = if denials > 0 {
            Cell::from(Span::styled(denials.to_string(), st.fg(Color::Red)))
        } else {
            Cell::from("0")
        };
        let mut name = sanitize(&r.info.name);
        if !r.info.unconfined.is_empty() {
            name.push_str(" UNCONFINED");
        }
        let mut cells = vec![Cell::from(name)];
        if wide {
            cells.push(Cell::from(r.info.session.as_deref().map(sanitize).unwrap_or_else(|| "-".into())));
        }
        cells.push(Cell::from(Span::styled(state.clone(), st.state(&state))));
        if wide {
            cells.push(Cell::from(r.info.trust.clone().unwrap_or_else(|| "-".into())));
        }
        cells.push(Cell::from(cpu));
        cells.push(Cell::from(mem));
        if wide {
            for res in BUDGET_BARS {
                let u = usage(&r.info, res).filter(|_| r.info.state == AgentState::Running);
                cells.push(bar(u, st, 5));
            }
        } else {
            cells.push(if r.info.state == AgentState::Running {
                worst_budget_cell(&r.info, st)
            } else {
                Cell::from("-")
            });
        }
        cells.push(deny_cell);
        if wide {
            cells.push(Cell::from(m.claims_held(&r.info.name).to_string()));
        }
        cells.push(Cell::from(render::age(m.now_ms, r.info.started_unix_ms)));
        lines.push(TableRow::new(cells));
    }
    let (header, widths): (Vec<&str>, Vec<Constraint>) = if wide {
        (
            vec![
                "NAME", "SESSION", "STATE", "TRUST", "CPU%", "MEM", "CPU", "MEM", "NET", "API", "COST",
                "DENY/1m", "CLAIMS", "AGE",
            ],
            vec![
                Constraint::Min(10),
                Constraint::Length(10),
                Constraint::Length(20),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(7),
            ],
        )
    } else {
        (
            vec!["NAME", "STATE", "CPU%", "MEM", "BUDGET", "DENY", "AGE"],
            vec![
                Constraint::Min(8),
                Constraint::Length(20),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(4),
                Constraint::Length(7),
            ],
        )
    };
    let focused = m.pane == Pane::Agents;
    let title = if rows.is_empty() && m.rows.is_empty() {
        " Agents: none running (rush agent spawn NAME -- CMD) ".to_string()
    } else if rows.is_empty() {
        format!(" Agents: none match {:?} ", m.filter)
    } else {
        " Agents ".to_string()
    };
    let table = Table::new(lines, widths)
        .header(TableRow::new(header).style(st.bold()))
        .block(Block::default().borders(Borders::ALL).title(title).border_style(border(st, focused)))
        .row_highlight_style(if focused { st.selected() } else { st.bold() })
        .column_spacing(1);
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

fn border(st: &Styles, focused: bool) -> Style {
    if focused { st.fg(Color::Cyan) } else { Style::default() }
}

/// The focused agent's terminal or log, drawn cell by cell from the emulator.
struct ScreenView<'a> {
    screen: &'a Screen,
    color: bool,
}

fn vt_color(c: vt100::Color) -> Option<Color> {
    match c {
        vt100::Color::Default => None,
        vt100::Color::Idx(i) => Some(Color::Indexed(i)),
        vt100::Color::Rgb(r, g, b) => Some(Color::Rgb(r, g, b)),
    }
}

impl Widget for ScreenView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let screen = self.screen.parser.screen();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        // Show the rows that end at the last written one: the newest output.
        let (cursor_row, _) = screen.cursor_position();
        let last_used = (0..rows)
            .rev()
            .find(|&r| (0..cols).any(|c| screen.cell(r, c).is_some_and(|cell| cell.has_contents())))
            .unwrap_or(0)
            .max(cursor_row);
        let first = (last_used + 1).saturating_sub(area.height);
        for y in 0..area.height {
            let row = first + y;
            if row >= rows {
                break;
            }
            for x in 0..area.width.min(cols) {
                let Some(cell) = screen.cell(row, x) else { continue };
                if cell.is_wide_continuation() {
                    continue;
                }
                let Some(out) = buf.cell_mut((area.x + x, area.y + y)) else { continue };
                let text = cell.contents();
                out.set_symbol(if text.is_empty() { " " } else { text });
                let mut style = Style::default();
                if self.color {
                    if let Some(c) = vt_color(cell.fgcolor()) {
                        style = style.fg(c);
                    }
                    if let Some(c) = vt_color(cell.bgcolor()) {
                        style = style.bg(c);
                    }
                }
                for (on, m) in [
                    (cell.bold(), Modifier::BOLD),
                    (cell.italic(), Modifier::ITALIC),
                    (cell.underline(), Modifier::UNDERLINED),
                    (cell.inverse(), Modifier::REVERSED),
                    (cell.dim(), Modifier::DIM),
                ] {
                    if on {
                        style = style.add_modifier(m);
                    }
                }
                out.set_style(style);
            }
        }
    }
}

fn draw_screen(f: &mut Frame, area: Rect, m: &mut Model, st: &Styles) {
    let Some(row) = m.selected_row() else {
        f.render_widget(Block::default().borders(Borders::ALL).title(" no agent selected "), area);
        return;
    };
    let (agent, tty) = (row.info.name.clone(), row.info.tty);
    let name = sanitize(&agent);
    let what = if tty { "terminal (a: attach)" } else { "log" };
    let mut title = format!(" {name} · {what} ");
    let inner_rows = area.height.saturating_sub(2);
    let inner_cols = area.width.saturating_sub(2);
    if let Some(s) = m.screen.as_mut().filter(|s| s.agent == agent) {
        if s.closed {
            title.push_str("· closed ");
        }
        // A log wraps at the pane; a terminal keeps its own width (at least 80 columns,
        // what the agent's pty was most likely given), clipped at the right.
        let (want_rows, want_cols) = if s.log {
            (inner_rows.max(1), inner_cols.max(1))
        } else {
            (inner_rows.max(24), inner_cols.max(80))
        };
        let (r, c) = s.parser.screen().size();
        if (r.get(), c.get()) != (want_rows, want_cols) {
            s.parser.set_size(nonzero(want_rows), nonzero(want_cols));
        }
    }
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    match m.screen.as_ref().filter(|s| s.agent == agent) {
        Some(s) if s.error.is_some() => {
            let e = s.error.clone().unwrap_or_default();
            f.render_widget(Paragraph::new(e).style(st.fg(Color::Red)).wrap(Wrap { trim: true }), inner)
        }
        Some(s) => f.render_widget(ScreenView { screen: s, color: m.color }, inner),
        None => f.render_widget(Paragraph::new("connecting…"), inner),
    }
}

/// One audit record, compact: denials name what was denied.
pub fn audit_text(r: &AuditRecord) -> String {
    let t = format_unix_ms(r.time_unix_ms);
    let t = t.get(11..19).unwrap_or(&t).to_owned();
    let what = match &r.event {
        AuditEvent::FileDeny { comm, hook, op, path, .. } => format!("DENIED {op} {path} ({comm}, {hook})"),
        AuditEvent::NetDeny { comm, destination, protocol, .. } => {
            format!("DENIED connect {destination}/{protocol} ({comm})")
        }
        AuditEvent::GuardDeny { comm, hook, what, .. } => format!("DENIED {what} ({comm}, {hook})"),
        AuditEvent::SyscallDeny { comm, syscall, .. } => format!("DENIED syscall {syscall} ({comm})"),
        AuditEvent::ClaimDeny { op, path, holder, task, .. } => {
            format!("DENIED {op} {path}: claimed by {holder} ({task})")
        }
        AuditEvent::ApiRefused { resource, destination, .. } => {
            format!("REFUSED api call to {destination} ({resource} budget)")
        }
        AuditEvent::ForkRefused { count, limit } => format!("REFUSED {count} forks (pids limit {limit})"),
        AuditEvent::BudgetExceeded { resource, action, .. } => format!("budget {resource} reached: {action}"),
        AuditEvent::Spawn { command, .. } => format!("spawned: {}", shell_join(command)),
        AuditEvent::Exit { status, .. } => format!("exited: {status}"),
        AuditEvent::Kill { processes_killed, .. } => format!("killed ({processes_killed} processes)"),
        AuditEvent::Paused { reason, .. } => format!("paused: {reason}"),
        AuditEvent::Resumed { .. } => "resumed".into(),
        AuditEvent::Grant { token, .. } => format!("granted {} on {}", token.ops, token.path.display()),
        AuditEvent::Revoke { tokens, .. } => {
            let paths: Vec<String> = tokens.iter().map(|t| t.path.display().to_string()).collect();
            format!("revoked {}", paths.join(", "))
        }
        AuditEvent::Checkpoint { name, .. } => format!("checkpoint {name}"),
        AuditEvent::Rollback { name, .. } => format!("rolled back to {name}"),
        AuditEvent::ApprovalRequested { id, action, .. } => format!("asks approval {id}: {action}"),
        AuditEvent::ApprovalDecided { id, state, by, .. } => format!("approval {id} {state:?} by {by}"),
        e => e.kind().replace('_', " "),
    };
    sanitize(&format!("{t} {what}"))
}

fn draw_info(f: &mut Frame, area: Rect, m: &Model, st: &Styles) {
    if area.height == 0 {
        return;
    }
    let Some(row) = m.selected_row() else {
        f.render_widget(Block::default().borders(Borders::ALL), area);
        return;
    };
    let name = &row.info.name;
    let mut lines: Vec<Line> = Vec::new();
    let denials = m.denials_last_minute(name);
    lines.push(Line::from(vec![
        Span::styled("denials/1m ", st.bold()),
        Span::styled(denials.to_string(), if denials > 0 { st.fg(Color::Red) } else { Style::default() }),
        Span::raw(format!(" · pid {} · {} procs · net {}", row.info.pid, row.info.processes, row.info.net)),
    ]));
    let detail = m.detail.as_ref().filter(|d| &d.agent == name);
    if let Some(d) = detail {
        // The daemon's baseline tokens (the same for every confined agent) are counted,
        // not listed: the agent's own grants are what the pane is for.
        let mut own: Vec<_> =
            d.tokens.iter().filter(|t| t.origin != rush_proto::wire::TokenOrigin::Baseline).collect();
        own.sort_by_key(|t| std::cmp::Reverse(t.id));
        for t in own {
            let left = match t.expires_unix_ms {
                None => "no expiry".to_string(),
                Some(_) if t.expired => "expired".into(),
                Some(ms) => {
                    format!("expires in {}", format_duration(ms.saturating_sub(m.now_ms).div_ceil(1000)))
                }
            };
            lines.push(Line::from(vec![
                Span::styled(format!("token {} ", t.id), st.bold()),
                Span::raw(sanitize(&format!("{} {} ({left})", t.path.display(), t.ops))),
            ]));
        }
        let baseline =
            d.tokens.iter().filter(|t| t.origin == rush_proto::wire::TokenOrigin::Baseline).count();
        if baseline > 0 {
            lines.push(Line::from(Span::styled(
                format!("+ {baseline} baseline tokens"),
                st.fg(Color::DarkGray),
            )));
        }
        match &d.diff {
            Ok(Some(diff)) => {
                lines.push(Line::from(Span::styled(
                    format!(
                        "diff since {}: {} added, {} modified, {} removed",
                        sanitize(&diff.a),
                        diff.added.len(),
                        diff.modified.len(),
                        diff.removed.len()
                    ),
                    st.bold(),
                )));
                for (mark, list, c) in [
                    ("A", &diff.added, Color::Green),
                    ("M", &diff.modified, Color::Yellow),
                    ("D", &diff.removed, Color::Red),
                ] {
                    for p in list.iter().take(8) {
                        lines.push(Line::from(vec![
                            Span::styled(format!("{mark} "), st.fg(c)),
                            Span::raw(sanitize(p)),
                        ]));
                    }
                }
            }
            Ok(None) => {}
            Err(why) => lines.push(Line::from(Span::styled(sanitize(why), st.fg(Color::DarkGray)))),
        }
    }
    let audit: Vec<Line> = m
        .agent_audit(name)
        .take(50)
        .map(|r| {
            let text = audit_text(r);
            let style = if super::model::is_denial(&r.event) { st.fg(Color::Red) } else { Style::default() };
            Line::from(Span::styled(text, style))
        })
        .collect();
    // The newest two records (denials matter most in a short pane), then tokens and the
    // diff, then older records.
    let header = lines.remove(0);
    let mut audit = audit.into_iter();
    let mut all = vec![header];
    all.extend(audit.by_ref().take(2));
    all.extend(lines);
    all.extend(audit);
    let title = format!(" {} · audit · tokens · diff ", sanitize(name));
    f.render_widget(
        Paragraph::new(all)
            .block(Block::default().borders(Borders::ALL).title(title))
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn draw_approvals(f: &mut Frame, area: Rect, m: &Model, st: &Styles) {
    if area.height == 0 {
        return;
    }
    let focused = m.pane == Pane::Approvals;
    let lines: Vec<TableRow> = m
        .approvals
        .iter()
        .map(|a| {
            let left = format_duration(a.deadline_unix_ms.saturating_sub(m.now_ms) / 1000);
            TableRow::new(vec![
                Cell::from(a.id.to_string()),
                Cell::from(sanitize(&a.agent)),
                Cell::from(format!("{:?}", a.effective_priority).to_lowercase()),
                Cell::from(sanitize(&a.action)),
                Cell::from(sanitize(&a.batch_key)),
                Cell::from(left),
            ])
        })
        .collect();
    let title = if focused {
        format!(" Approvals ({}) · y approve · n reject · b approve batch · tab back ", m.approvals.len())
    } else {
        format!(" Approvals ({}) · tab to decide ", m.approvals.len())
    };
    let table = Table::new(
        lines,
        [
            Constraint::Length(5),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Min(10),
            Constraint::Length(12),
            Constraint::Length(7),
        ],
    )
    .header(TableRow::new(vec!["ID", "AGENT", "PRIO", "ACTION", "BATCH", "LEFT"]).style(st.bold()))
    .block(Block::default().borders(Borders::ALL).title(title).border_style(border(st, focused)))
    .row_highlight_style(if focused { st.selected() } else { Style::default() });
    let mut state = TableState::default().with_selected(if m.approvals.is_empty() {
        None
    } else {
        Some(m.approval_selected)
    });
    f.render_stateful_widget(table, area, &mut state);
}

const KEYS_WIDE: &str = "↑↓ select  p pause  r resume  k kill  a attach  c checkpoint  g grant  v revoke  / filter  s sort  tab approvals  ? help  q quit";
const KEYS_NARROW: &str = "p pause r resume k kill a attach c ckpt g grant v revoke / filter ? help q quit";

fn draw_footer(f: &mut Frame, area: Rect, m: &Model, st: &Styles) {
    let line = match &m.mode {
        Mode::Input { prompt, text, .. } => Line::from(vec![
            Span::styled(prompt.label(), st.bold()),
            Span::raw(text.clone()),
            Span::styled("█", Style::default()),
        ]),
        Mode::ConfirmKill { agent } => Line::from(Span::styled(
            format!("kill {} and every process in it? y/N", sanitize(agent)),
            st.fg(Color::Red).add_modifier(Modifier::BOLD),
        )),
        _ => match &m.status {
            Some((msg, true, _)) => Line::from(Span::styled(sanitize(msg), st.fg(Color::Red))),
            Some((msg, false, _)) => Line::from(Span::styled(sanitize(msg), st.fg(Color::Green))),
            None => Line::from(Span::styled(
                if area.width as usize >= KEYS_WIDE.chars().count() { KEYS_WIDE } else { KEYS_NARROW },
                st.fg(Color::DarkGray),
            )),
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓ PgUp PgDn Home End", "select an agent (or an approval, after tab)"),
    ("p", "pause the agent (freezes its cgroup)"),
    ("r", "resume it (asks for a raised budget when its budget froze it)"),
    ("k", "kill it and its processes (asks first)"),
    ("a", "attach: this terminal becomes its terminal; ctrl-\\ d comes back"),
    ("c", "checkpoint its session"),
    ("g / v", "grant / revoke a path (asks which)"),
    ("/", "filter by name, session or state"),
    ("s", "sort by name, cpu, mem, age, denials"),
    ("tab", "move between agents and approvals"),
    ("y / n / b", "approve / reject / approve the batch (approvals)"),
    ("q, ctrl-c", "quit (agents keep running)"),
];

fn draw_help(f: &mut Frame, area: Rect) {
    let w = area.width.min(76);
    let h = (HELP.len() as u16 + 4).min(area.height);
    let rect =
        Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<22}"), Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from("any key closes this"));
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" rush top: keys ")),
        rect,
    );
}

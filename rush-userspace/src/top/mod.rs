//! `rush top`: every agent, live, and the keys to steer them.
//!
//! Fed by one event subscription (state changes, denials, approvals arrive as they
//! happen) and one `ListAgents`/`ListApprovals`/`ListClaims` round per refresh for the
//! numbers that change continuously (CPU, memory, budgets) — never a query per agent.
//! The focused agent's terminal is a read-only attachment to its pty, parsed by a terminal
//! emulator (vt100); a log agent's output is followed. Threads, not a runtime: like the
//! rest of the CLI, `rush top` starts no async executor. Every key is the same protocol
//! request the CLI makes, so it is authorised and audited the same way.

mod model;
mod plain;
mod view;

#[cfg(test)]
mod tests;

use std::io::{self, IsTerminal, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self as term_event, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use rush_proto::approval::{Approval, ApprovalTarget, DecideRequest};
use rush_proto::client::Client;
use rush_proto::coordination::Claim;
use rush_proto::events::{Event, SubscribeRequest};
use rush_proto::spec::FileGrant;
use rush_proto::terminal::{AttachMode, Frame, WindowSize};
use rush_proto::{AgentInfo, AuditQuery, Budget, GrantRequest, RevokeTarget, SessionRef};

use crate::commands::Ctx;
use crate::error::Result;
use crate::render::sanitize;
use crate::time::now_unix_ms;
use model::{Detail, Mode, Model, Pane, Prompt, Screen};

/// `rush top`'s options (from clap, or from `agent spawn --visible`).
pub struct Options {
    /// Focus this agent first.
    pub agent: Option<String>,
    pub refresh: Duration,
    /// A plain table printed every refresh, instead of the full-screen UI.
    pub plain: bool,
    /// Plain mode: stop after this many tables (0: run until interrupted).
    pub iterations: u64,
}

/// How often the focused agent's tokens and workspace diff are fetched again.
const DETAIL_EVERY: Duration = Duration::from_secs(3);

/// The detach keys of an attachment made from the TUI (`rush agent attach`'s default).
const DETACH_KEYS: &str = "ctrl-\\,d";

pub fn run(ctx: &mut Ctx, opts: Options) -> Result<u8> {
    // Ask once before taking the screen: a daemon that is not running, or that refuses
    // this caller the agents list, is a one-line error, not a broken full-screen view.
    ctx.connect()?.list_agents()?;
    let dumb = std::env::var("TERM").map_or(true, |t| t.is_empty() || t == "dumb");
    if opts.plain || ctx.out.json || dumb || !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return plain::run(ctx, &opts);
    }
    match enable_raw_mode() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("rush: this terminal cannot do full-screen ({e}); showing a plain table");
            return plain::run(ctx, &opts);
        }
    }
    let result = full_screen(ctx, &opts);
    // Once, whatever happened: the terminal is the user's again.
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, ratatui::crossterm::cursor::Show);
    let running = result?;
    if !running.is_empty() {
        eprintln!(
            "rush: left {} running ({}); `rush top` to come back, `rush agent kill NAME` to stop one",
            if running.len() == 1 { "1 agent".to_string() } else { format!("{} agents", running.len()) },
            running.join(", ")
        );
    }
    Ok(0)
}

/// A failed write to the terminal, or a failed mode change of it.
fn tty(e: io::Error) -> crate::error::Error {
    anyhow::Error::new(e).context("cannot draw on this terminal").into()
}

/// What the feeding threads send the UI thread.
enum Msg {
    Key(KeyEvent),
    Resize,
    Event(Event),
    /// The event stream is (re)connected (None) or broke (why).
    Feed(Option<String>),
    Snapshot {
        agents: Vec<AgentInfo>,
        approvals: Vec<Approval>,
        claims: Vec<Claim>,
        at_ms: u64,
    },
    SnapshotFailed(String),
    Detail(Detail),
    Focus {
        generation: u64,
        data: FocusData,
    },
}

enum FocusData {
    Bytes(Vec<u8>),
    Closed,
    Error(String),
}

/// What the UI thread asks of the poller.
enum Poll {
    Refresh,
    Detail(Box<AgentInfo>),
}

/// The input thread's gate: while the TUI hands the terminal to an agent, it reads no keys.
struct InputGate {
    suspended: AtomicBool,
    reading: Mutex<()>,
}

/// The TUI until the user quits; the agents it leaves running.
fn full_screen(ctx: &mut Ctx, opts: &Options) -> Result<Vec<String>> {
    let mut stdout = io::stdout();
    execute!(stdout, EnterAlternateScreen).map_err(tty)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(stdout)).map_err(tty)?;
    terminal.clear().map_err(tty)?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut m = Model::new(color, now_unix_ms());
    m.selected = opts.agent.clone();

    let (tx, rx) = mpsc::channel();
    let socket = ctx.socket.clone();
    spawn_events(socket.clone(), tx.clone());
    let poll_tx = spawn_poller(socket.clone(), opts.refresh, tx.clone());
    let gate = Arc::new(InputGate { suspended: AtomicBool::new(false), reading: Mutex::new(()) });
    spawn_input(gate.clone(), tx.clone());
    // The last minute's records, for the denial counts and the audit pane (the
    // subscription is already up, so nothing falls between; duplicates are dropped by seq).
    if let Ok((_, records)) = ctx.connect()?.audit(AuditQuery {
        since_unix_ms: Some(now_unix_ms().saturating_sub(60_000)),
        limit: 400,
        ..Default::default()
    }) {
        m.seed_audit(records);
    }
    let _ = poll_tx.send(Poll::Refresh);

    let mut focus = Focus { generation: 0, agent: None, stop: None };
    // The focused agent's details (tokens, workspace diff) change with its files too, not
    // only with events: fetched again every few seconds.
    let mut detail_at = std::time::Instant::now();
    loop {
        terminal.draw(|f| view::draw(f, &mut m)).map_err(tty)?;
        let msg = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut msgs: Vec<Msg> = msg.into_iter().collect();
        // Everything that queued while drawing: one draw for all of it.
        msgs.extend(rx.try_iter());
        let mut quit = false;
        for msg in msgs {
            match msg {
                Msg::Key(key) => match on_key(ctx, &mut m, key) {
                    KeyOutcome::Quit => quit = true,
                    KeyOutcome::Attach(name) => {
                        attach(ctx, &mut terminal, &gate, &mut m, &name)?;
                    }
                    KeyOutcome::Done => {}
                },
                Msg::Resize => {
                    terminal.autoresize().map_err(tty)?;
                }
                Msg::Event(e) => m.on_event(e),
                Msg::Feed(None) => {
                    m.feed_error = None;
                    m.want_refresh = true;
                }
                Msg::Feed(Some(e)) => m.feed_error = Some(e),
                Msg::Snapshot { agents, approvals, claims, at_ms } => {
                    m.set_agents(agents, at_ms);
                    m.set_approvals(approvals);
                    m.claims = claims;
                    if m.feed_error.as_deref().is_some_and(|e| e.starts_with("daemon:")) {
                        m.feed_error = None;
                    }
                }
                Msg::SnapshotFailed(e) => m.feed_error = Some(format!("daemon: {e}")),
                Msg::Detail(d) => m.detail = Some(d),
                Msg::Focus { generation, data } if generation == focus.generation => {
                    if let Some(s) = m.screen.as_mut() {
                        match data {
                            FocusData::Bytes(b) => s.feed(&b),
                            FocusData::Closed => s.closed = true,
                            FocusData::Error(e) => s.error = Some(e),
                        }
                    }
                }
                Msg::Focus { .. } => {}
            }
        }
        if quit {
            break;
        }
        m.tick(now_unix_ms());
        if m.want_refresh {
            m.want_refresh = false;
            let _ = poll_tx.send(Poll::Refresh);
        }
        // The focus follows the selection: a new terminal stream and fresh details.
        let selected = m.selected_row().map(|r| r.info.clone());
        if std::mem::take(&mut m.want_refocus) {
            focus.agent = None;
        }
        if selected.as_ref().map(|a| &a.name) != focus.agent.as_ref() {
            focus.switch(&socket, selected.as_ref(), &mut m, &tx);
            if let Some(a) = &selected {
                let _ = poll_tx.send(Poll::Detail(Box::new(a.clone())));
            }
            m.want_detail = false;
            detail_at = std::time::Instant::now();
        }
        if detail_at.elapsed() >= DETAIL_EVERY {
            m.want_detail = true;
        }
        if m.want_detail {
            m.want_detail = false;
            detail_at = std::time::Instant::now();
            if let Some(a) = selected {
                let _ = poll_tx.send(Poll::Detail(Box::new(a)));
            }
        }
    }
    focus.stop();
    Ok(m.rows
        .iter()
        .filter(|r| r.info.state == rush_proto::AgentState::Running)
        .map(|r| sanitize(&r.info.name))
        .collect())
}

/// The stream of the focused agent's terminal or log.
struct Focus {
    generation: u64,
    agent: Option<String>,
    stop: Option<UnixStream>,
}

impl Focus {
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn switch(&mut self, socket: &Path, agent: Option<&AgentInfo>, m: &mut Model, tx: &Sender<Msg>) {
        self.stop();
        self.generation += 1;
        self.agent = agent.map(|a| a.name.clone());
        m.screen = None;
        let Some(a) = agent else { return };
        let mut screen = Screen::new(&a.name, !a.tty, 24, 80);
        let generation = self.generation;
        let started = if a.tty {
            start_terminal(socket, &a.name, generation, tx.clone())
        } else if a.detached {
            start_log(socket, &a.name, generation, tx.clone())
        } else {
            Err("its output goes to the terminal that spawned it (spawned in the foreground)".to_string())
        };
        match started {
            Ok(stop) => self.stop = Some(stop),
            Err(e) => screen.error = Some(e),
        }
        m.screen = Some(screen);
    }
}

/// A read-only attachment to the agent's pty; the replay comes first.
fn start_terminal(
    socket: &Path,
    name: &str,
    generation: u64,
    tx: Sender<Msg>,
) -> std::result::Result<UnixStream, String> {
    let client = Client::connect(socket).map_err(|e| e.to_string())?;
    let size = WindowSize { rows: 24, cols: 80 };
    let (mut conn, early) =
        client.attach_terminal(name, AttachMode::Read, size).map_err(|e| e.to_string())?;
    let stop = conn.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let send = |data| tx.send(Msg::Focus { generation, data }).is_ok();
        let mut buf = early;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            loop {
                match Frame::decode(&buf) {
                    Ok(Some((frame, used))) => {
                        buf.drain(..used);
                        let go = match frame {
                            Frame::Output(b) => send(FocusData::Bytes(b)),
                            Frame::Closed => {
                                send(FocusData::Closed);
                                return;
                            }
                            _ => true,
                        };
                        if !go {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        send(FocusData::Error(e.to_string()));
                        return;
                    }
                }
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    send(FocusData::Closed);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    Ok(stop)
}

/// A detached agent's captured output, followed.
fn start_log(
    socket: &Path,
    name: &str,
    generation: u64,
    tx: Sender<Msg>,
) -> std::result::Result<UnixStream, String> {
    let mut client = Client::connect(socket).map_err(|e| e.to_string())?;
    let stop = client.shutdown_handle().map_err(|e| e.to_string())?;
    let id = client.agent_logs(name, true).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        loop {
            let data = match client.logs_next(id) {
                Ok((text, false)) => FocusData::Bytes(text.into_bytes()),
                Ok((text, true)) => {
                    let _ = tx.send(Msg::Focus { generation, data: FocusData::Bytes(text.into_bytes()) });
                    FocusData::Closed
                }
                Err(_) => FocusData::Closed,
            };
            let end = matches!(data, FocusData::Closed);
            if tx.send(Msg::Focus { generation, data }).is_err() || end {
                return;
            }
        }
    });
    Ok(stop)
}

/// The one subscription; reconnects (after a second) when the daemon restarts.
fn spawn_events(socket: PathBuf, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            let why = match Client::connect(&socket) {
                Ok(mut c) => match c.subscribe(SubscribeRequest::default()) {
                    Ok(id) => {
                        if tx.send(Msg::Feed(None)).is_err() {
                            return;
                        }
                        loop {
                            match c.next_event(id) {
                                Ok(e) => {
                                    let lagged = matches!(e, Event::Lagged { .. });
                                    if tx.send(Msg::Event(e)).is_err() {
                                        return;
                                    }
                                    if lagged {
                                        break "fell behind the event stream; reconnected".to_string();
                                    }
                                }
                                Err(e) => break format!("event stream: {e}"),
                            }
                        }
                    }
                    Err(e) => format!("event stream: {e}"),
                },
                Err(e) => format!("event stream: {e}"),
            };
            if tx.send(Msg::Feed(Some(why))).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// The refresh round (agents, approvals, claims) every `refresh`, or at once when asked;
/// and the focused agent's details when asked.
fn spawn_poller(socket: PathBuf, refresh: Duration, tx: Sender<Msg>) -> Sender<Poll> {
    let (poll_tx, poll_rx) = mpsc::channel::<Poll>();
    std::thread::spawn(move || {
        let mut client: Option<Client> = None;
        loop {
            let mut refresh_now = false;
            let mut detail: Option<Box<AgentInfo>> = None;
            match poll_rx.recv_timeout(refresh) {
                Ok(Poll::Refresh) | Err(RecvTimeoutError::Timeout) => refresh_now = true,
                Ok(Poll::Detail(a)) => detail = Some(a),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Coalesce what queued meanwhile.
            for p in poll_rx.try_iter() {
                match p {
                    Poll::Refresh => refresh_now = true,
                    Poll::Detail(a) => detail = Some(a),
                }
            }
            if client.is_none() {
                client = Client::connect(&socket).ok();
            }
            let Some(c) = client.as_mut() else {
                if tx
                    .send(Msg::SnapshotFailed(format!("cannot reach rush-agentd at {}", socket.display())))
                    .is_err()
                {
                    return;
                }
                continue;
            };
            if refresh_now {
                let msg = match snapshot(c) {
                    Ok(msg) => msg,
                    Err(e) => {
                        client = None;
                        Msg::SnapshotFailed(e)
                    }
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            if let (Some(a), Some(c)) = (detail, client.as_mut())
                && tx.send(Msg::Detail(fetch_detail(c, &a))).is_err()
            {
                return;
            }
        }
    });
    poll_tx
}

fn snapshot(c: &mut Client) -> std::result::Result<Msg, String> {
    let agents = c.list_agents().map_err(|e| e.to_string())?;
    // The approvals queue and claims are features a daemon may have switched off: their
    // absence is not an error of the round.
    let approvals = c.list_approvals(None, false).map(|(a, _)| a).unwrap_or_default();
    let claims = c.list_claims(None, None).unwrap_or_default();
    Ok(Msg::Snapshot { agents, approvals, claims, at_ms: now_unix_ms() })
}

/// Tokens, and the workspace diff since the session's last checkpoint on its timeline.
fn fetch_detail(c: &mut Client, a: &AgentInfo) -> Detail {
    let tokens = c.list_capabilities(Some(&a.name)).unwrap_or_default();
    let diff = match &a.session {
        None => Err("no session: no workspace diff (spawn with --session)".to_string()),
        Some(s) => {
            let session = SessionRef { name: Some(s.clone()), cwd: None };
            match c.list_timeline(session.clone()) {
                Err(e) => Err(format!("diff: {e}")),
                Ok(tl) => {
                    let live = tl.session.timeline.clone();
                    match tl.checkpoints.iter().rev().find(|cp| cp.timeline == live) {
                        None => Err(format!(
                            "session {s}: no checkpoint yet on {live} to diff against (c: checkpoint)"
                        )),
                        Some(cp) => {
                            c.diff(session, &cp.name, &live).map(Some).map_err(|e| format!("diff: {e}"))
                        }
                    }
                }
            }
        }
    };
    Detail { agent: a.name.clone(), tokens, diff }
}

fn spawn_input(gate: Arc<InputGate>, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            if gate.suspended.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let _reading = gate.reading.lock().unwrap_or_else(|e| e.into_inner());
            match term_event::poll(Duration::from_millis(200)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let msg = match term_event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => Msg::Key(k),
                Ok(TermEvent::Resize(..)) => Msg::Resize,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

enum KeyOutcome {
    Done,
    Quit,
    Attach(String),
}

fn on_key(ctx: &Ctx, m: &mut Model, key: KeyEvent) -> KeyOutcome {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return KeyOutcome::Quit;
    }
    match std::mem::replace(&mut m.mode, Mode::Normal) {
        Mode::Help => KeyOutcome::Done,
        Mode::ConfirmKill { agent } => {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                act(
                    m,
                    || ctx.connect()?.kill_agent(&agent).map_err(Into::into),
                    |n| format!("killed {} ({n} processes)", sanitize(&agent)),
                );
                m.want_refresh = true;
            } else {
                m.say("not killed");
            }
            KeyOutcome::Done
        }
        Mode::Input { prompt, mut text, agent } => {
            match key.code {
                KeyCode::Esc => {
                    if prompt == Prompt::Filter {
                        m.filter.clear();
                        m.refilter();
                    }
                }
                KeyCode::Enter => submit(ctx, m, prompt, text.trim().to_owned(), agent),
                KeyCode::Backspace => {
                    text.pop();
                    if prompt == Prompt::Filter {
                        m.filter = text.clone();
                        m.refilter();
                    }
                    m.mode = Mode::Input { prompt, text, agent };
                }
                KeyCode::Char(c) if !ctrl => {
                    text.push(c);
                    if prompt == Prompt::Filter {
                        m.filter = text.clone();
                        m.refilter();
                    }
                    m.mode = Mode::Input { prompt, text, agent };
                }
                _ => m.mode = Mode::Input { prompt, text, agent },
            }
            KeyOutcome::Done
        }
        Mode::Normal => normal_key(ctx, m, key),
    }
}

fn normal_key(ctx: &Ctx, m: &mut Model, key: KeyEvent) -> KeyOutcome {
    let agent = m.selected_row().map(|r| r.info.clone());
    let ask = |m: &mut Model, prompt: Prompt| {
        m.mode = Mode::Input { prompt, text: String::new(), agent: agent.as_ref().map(|a| a.name.clone()) };
    };
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc if m.pane == Pane::Agents || key.code == KeyCode::Char('q') => {
            return KeyOutcome::Quit;
        }
        KeyCode::Esc => m.pane = Pane::Agents,
        KeyCode::Up => m.move_selection(-1),
        KeyCode::Down => m.move_selection(1),
        KeyCode::PageUp => m.move_selection(-10),
        KeyCode::PageDown => m.move_selection(10),
        KeyCode::Home => m.move_selection(-100_000),
        KeyCode::End => m.move_selection(100_000),
        KeyCode::Tab | KeyCode::BackTab => {
            m.pane = if m.pane == Pane::Agents { Pane::Approvals } else { Pane::Agents };
        }
        KeyCode::Char('?') => m.mode = Mode::Help,
        KeyCode::Char('s') => m.cycle_sort(),
        KeyCode::Char('/') => {
            m.mode = Mode::Input { prompt: Prompt::Filter, text: m.filter.clone(), agent: None }
        }
        KeyCode::Char('y' | 'n' | 'b') if m.pane == Pane::Approvals => decide(ctx, m, key.code),
        KeyCode::Char(c @ ('p' | 'r' | 'k' | 'a' | 'c' | 'g' | 'v')) => {
            let Some(a) = agent.clone() else {
                m.fail("no agent selected");
                return KeyOutcome::Done;
            };
            let name = a.name.clone();
            match c {
                'p' => {
                    act(
                        m,
                        || ctx.connect()?.pause_agent(&name).map_err(Into::into),
                        |_| format!("paused {} (its cgroup is frozen)", sanitize(&name)),
                    );
                    m.want_refresh = true;
                }
                'r' if a.paused.contains(&rush_proto::wire::PauseReason::BudgetCpu) => {
                    ask(m, Prompt::ResumeBudget)
                }
                'r' => {
                    act(
                        m,
                        || ctx.connect()?.resume_agent(&name, None).map_err(Into::into),
                        |_| format!("resumed {}", sanitize(&name)),
                    );
                    m.want_refresh = true;
                }
                'k' => m.mode = Mode::ConfirmKill { agent: name },
                'a' if a.tty && a.state == rush_proto::AgentState::Running => {
                    return KeyOutcome::Attach(name);
                }
                'a' => m.fail(format!(
                    "{} has no terminal to attach to (spawn with --tty); its log is shown",
                    sanitize(&name)
                )),
                'c' if a.session.is_none() => m.fail(format!(
                    "{} is in no session: nothing to checkpoint (spawn with --session)",
                    sanitize(&name)
                )),
                'c' => ask(m, Prompt::Checkpoint),
                'g' => ask(m, Prompt::Grant),
                'v' => ask(m, Prompt::Revoke),
                _ => {}
            }
        }
        _ => {}
    }
    KeyOutcome::Done
}

/// Runs a request, and shows what it did or why not.
fn act<T>(m: &mut Model, call: impl FnOnce() -> Result<T>, done: impl FnOnce(T) -> String) {
    match call() {
        Ok(v) => m.say(done(v)),
        Err(e) => m.fail(e.lines().join("; ")),
    }
}

fn submit(ctx: &Ctx, m: &mut Model, prompt: Prompt, text: String, agent: Option<String>) {
    let name = agent.unwrap_or_default();
    match prompt {
        Prompt::Filter => {
            m.filter = text;
            m.refilter();
        }
        Prompt::Grant => match text.parse::<FileGrant>() {
            Err(e) => m.fail(format!("not granted: {e}")),
            Ok(g) => act(
                m,
                || {
                    ctx.connect()?
                        .grant(GrantRequest {
                            agent: name.clone(),
                            path: g.path,
                            ops: g.ops,
                            duration_secs: g.ttl_secs,
                            condition: None,
                        })
                        .map_err(Into::into)
                },
                |(t, effect)| {
                    let mut s = format!("granted token {}: {} on {}", t.id, t.ops, t.path.display());
                    if let Some(e) = effect {
                        s.push_str(&format!(" ({})", e.action.as_str()));
                    }
                    s
                },
            ),
        },
        Prompt::Revoke => {
            let target = match text.parse::<u64>() {
                Ok(id) => RevokeTarget::Id(id),
                Err(_) if text.starts_with('/') => RevokeTarget::Path(PathBuf::from(&text)),
                Err(_) => {
                    m.fail(format!("not revoked: {text:?} is neither a token id nor an absolute path"));
                    return;
                }
            };
            act(
                m,
                || ctx.connect()?.revoke(&name, target).map_err(Into::into),
                |(tokens, _)| format!("revoked {} token(s) of {}", tokens.len(), sanitize(&name)),
            );
        }
        Prompt::Checkpoint => {
            let Some(session) = m.selected_row().and_then(|r| r.info.session.clone()) else {
                m.fail("no session to checkpoint");
                return;
            };
            let cp = if text.is_empty() { format!("top-{}", now_unix_ms() / 1000) } else { text };
            act(
                m,
                || {
                    ctx.connect()?
                        .checkpoint(SessionRef { name: Some(session.clone()), cwd: None }, &cp, false, None)
                        .map_err(Into::into)
                },
                |c| format!("checkpoint {} of session {}", c.name, c.session),
            );
            m.want_detail = true;
        }
        Prompt::ResumeBudget => match text.parse::<Budget>() {
            Err(e) => m.fail(format!("not resumed: {e}")),
            Ok(b) => {
                act(
                    m,
                    || ctx.connect()?.resume_agent(&name, Some(b)).map_err(Into::into),
                    |a| {
                        if a.paused.is_empty() {
                            format!("resumed {} with a raised budget", sanitize(&name))
                        } else {
                            format!(
                                "{} stays frozen: the budget it used up was not raised enough",
                                sanitize(&name)
                            )
                        }
                    },
                );
                m.want_refresh = true;
            }
        },
    }
}

fn decide(ctx: &Ctx, m: &mut Model, key: KeyCode) {
    let Some(a) = m.selected_approval().cloned() else {
        m.fail("no pending approval");
        return;
    };
    let (target, approve, what) = match key {
        KeyCode::Char('y') => (ApprovalTarget::Id(a.id), true, format!("approved {}", a.id)),
        KeyCode::Char('n') => (ApprovalTarget::Id(a.id), false, format!("rejected {}", a.id)),
        _ => (ApprovalTarget::Batch(a.batch_key.clone()), true, format!("approved batch {}", a.batch_key)),
    };
    let req = DecideRequest {
        target,
        approve,
        exclude: Vec::new(),
        ttl_secs: None,
        reason: Some("rush top".into()),
        remember: None,
        remember_scope: None,
    };
    act(m, || ctx.connect()?.decide(req).map_err(Into::into), |d| format!("{what} ({} request(s))", d.len()));
    m.want_refresh = true;
}

/// `a`: the agent's terminal becomes ours until the detach keys; then the TUI is back.
fn attach(
    ctx: &mut Ctx,
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    gate: &InputGate,
    m: &mut Model,
    name: &str,
) -> Result<()> {
    gate.suspended.store(true, Ordering::Release);
    let reading = gate.reading.lock().unwrap_or_else(|e| e.into_inner());
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, ratatui::crossterm::cursor::Show);
    let mut out = io::stdout();
    let _ = write!(out, "\x1b[2J\x1b[H");
    let _ = out.flush();
    let keys = rush_proto::terminal::parse_detach_keys(DETACH_KEYS).unwrap_or_default();
    let ended = crate::commands::terminal_session(ctx, name, AttachMode::Write, &keys);
    let _ = enable_raw_mode();
    execute!(io::stdout(), EnterAlternateScreen).map_err(tty)?;
    terminal.clear().map_err(tty)?;
    drop(reading);
    gate.suspended.store(false, Ordering::Release);
    match ended {
        Ok(true) => m.say(format!("detached from {}; it is still running", sanitize(name))),
        Ok(false) => m.say(format!("{}'s terminal closed", sanitize(name))),
        Err(e) => m.fail(format!("attach {}: {}", sanitize(name), e.lines().join("; "))),
    }
    m.want_refresh = true;
    Ok(())
}

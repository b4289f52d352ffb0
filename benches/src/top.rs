//! `rush-bench top`: what `rush top` costs, with 50 agents running (every other one on a
//! terminal), side by side in one run:
//! - CPU: 15 s windows alternating no TUI and one `rush top` at its default refresh (1 s)
//!   in a 160x48 tmux window; utime+stime of the TUI and of the daemon from
//!   /proc/PID/stat, as % of one core; the daemon's with the TUI against without;
//! - latency: from `rush agent pause bN` (resume, and a new agent's spawn) to the change
//!   on the TUI's screen, read with `tmux capture-pane` every ~2 ms;
//! - the TUI's VmRSS.
//!
//! Everything it started (agents, the daemon, tmux) is gone at the end, or it fails.

use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use kernel_tests::tmux::{self, Tmux};
use kernel_tests::{Daemon, bin, describe, pid_alive, wait_until};
use rush_proto::audit::AuditEvent;
use rush_proto::client::Client;
use rush_proto::{AgentState, Event, SubscribeRequest};

use crate::scale::rss_kb;
use crate::{ms, percentile};

const AGENTS: usize = 50;
/// One CPU window, and the rounds of (no TUI, one TUI) alternated.
const WINDOW: Duration = Duration::from_secs(15);
const ROUNDS: usize = 2;
/// Pause/resume cycles and spawns whose latency to the screen is measured.
const REPS: usize = 10;
/// The pause between two reads of the screen.
const POLL: Duration = Duration::from_millis(2);
const COLS: u16 = 160;
const ROWS: u16 = 48;

/// Whether the TUI's header says it has listed every agent running.
fn all_listed(screen: &str) -> bool {
    let header = screen.lines().next().unwrap_or_default();
    header.contains(&format!("{AGENTS} agents")) && header.contains(&format!("{AGENTS} running"))
}

/// utime + stime of process `pid` (every thread, those that ended too), in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // From field 3 (state) on, after the command name (which may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').expect("/proc/PID/stat") + 2..].split(' ').collect();
    let ticks =
        |i: usize| fields[i].parse::<u64>().unwrap_or_else(|e| panic!("{stat}: field {}: {e}", i + 3));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// CPU seconds each of `pids` used over one `WINDOW`, and the window's wall time.
fn cpu_window(pids: &[i32]) -> (Vec<f64>, f64) {
    let before: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let t = Instant::now();
    std::thread::sleep(WINDOW);
    let used = pids.iter().zip(&before).map(|(&p, b)| cpu_secs(p) - b).collect();
    (used, t.elapsed().as_secs_f64())
}

fn rush_ok(d: &Daemon, args: &[&str]) {
    let out = d.rush(args);
    assert!(out.status.success(), "rush {args:?}: {}", describe(&out));
}

/// The agents table's row of `name` on the screen: the line whose first cell is the name.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.trim_start_matches(['│', ' ']).split_whitespace().next() == Some(name))
}

/// The bench's running agents (`bN`) whose rows are on the screen, top to bottom.
fn visible_agents(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter(|l| l.contains("running"))
        .filter_map(|l| l.trim_start_matches(['│', ' ']).split_whitespace().next())
        .filter(|n| n.strip_prefix('b').is_some_and(|k| k.parse::<u32>().is_ok()))
        .map(str::to_owned)
        .collect()
}

/// `rush top` in a new tmux window of COLS x ROWS, once it shows every agent; its pid.
fn start_tui(tmux: &Tmux, d: &Daemon, window: &str) -> i32 {
    let cmd = format!("exec '{}' --socket '{}' top", bin("rush").display(), d.socket.display());
    tmux.window(window, COLS, ROWS, &cmd);
    tmux.wait_screen(window, tmux::WAIT, "the header to count every agent running", all_listed);
    assert_eq!(tmux.pane_size(window), (ROWS, COLS), "the tmux window's size");
    let pid = tmux.pane_pid(window);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "rush", "the window's process is not rush top");
    pid
}

/// `q`, until rush top has exited (its window stays, dead: the next is a new window of the
/// same server).
fn quit_tui(tmux: &Tmux, window: &str, pid: i32) {
    tmux.keys(window, &["q"]);
    let gone = wait_until(Duration::from_secs(10), || !pid_alive(pid));
    assert!(gone, "rush top did not quit on q; the screen:\n{}", tmux.screen(window));
}

/// Reads the screen every POLL until `ok` holds for `name`'s row (None: not on the screen);
/// the time since `t0`. Panics with the screen after 10 s.
fn until_row(
    tmux: &Tmux,
    window: &str,
    name: &str,
    t0: Instant,
    what: &str,
    ok: impl Fn(Option<&str>) -> bool,
) -> Duration {
    loop {
        let screen = tmux.screen(window);
        if ok(row(&screen, name)) {
            return t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(10) {
            panic!("rush top: {name}'s row did not show {what} within 10 s; the screen:\n{screen}");
        }
        std::thread::sleep(POLL);
    }
}

/// A subscriber beside the TUI: when each pause, resume and spawn event reached it, by
/// agent name and kind.
fn watch_events(socket: &Path) -> Receiver<(String, &'static str, Instant)> {
    let mut c = Client::connect(socket).expect("connect");
    let id = c.subscribe(SubscribeRequest::default()).expect("subscribe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(Event::Audit(r)) = c.next_event(id) {
            let kind = match r.event {
                AuditEvent::Paused { .. } => "paused",
                AuditEvent::Resumed { .. } => "resumed",
                AuditEvent::Spawn { .. } => "spawn",
                _ => continue,
            };
            if tx.send((r.agent.unwrap_or_default(), kind, Instant::now())).is_err() {
                return;
            }
        }
    });
    rx
}

/// When the `kind` event of `agent` reached the subscriber, after `t0`.
fn event_after(
    events: &Receiver<(String, &'static str, Instant)>,
    agent: &str,
    kind: &str,
    t0: Instant,
) -> Duration {
    loop {
        let (a, k, at) = events
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no {kind} event of {agent} on the subscription: {e}"));
        if a == agent && k == kind {
            return at.saturating_duration_since(t0);
        }
    }
}

/// One refresh round of the TUI's (ListAgents, ListApprovals, ListClaims) on one
/// connection: the round's time and ListAgents' alone.
fn refresh_round(c: &mut Client) -> (Duration, Duration) {
    let t = Instant::now();
    c.list_agents().expect("list agents");
    let list = t.elapsed();
    let _ = c.list_approvals(None, false);
    let _ = c.list_claims(None, None);
    (t.elapsed(), list)
}

/// Latencies of one kind: the command alone, from its start to the event on a subscriber,
/// and to the screen.
#[derive(Default)]
struct Latency {
    command: Vec<Duration>,
    event: Vec<Duration>,
    screen: Vec<Duration>,
}

impl Latency {
    fn print(&mut self, what: &str) {
        // Per change: from the event reaching the subscriber to the screen.
        let mut after: Vec<Duration> =
            self.screen.iter().zip(&self.event).map(|(s, e)| s.saturating_sub(*e)).collect();
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            ms(percentile(&mut self.command, 0.5)),
            ms(percentile(&mut self.event, 0.5)),
            ms(percentile(&mut self.screen, 0.5)),
            ms(percentile(&mut self.screen, 0.9)),
            ms(percentile(&mut after, 0.5)),
            ms(percentile(&mut after, 0.9)),
        );
    }
}

/// Processes left behind: the agents' (by pid), and any naming the daemon's state
/// directory (the daemon itself, terminal holders).
fn leftovers(agent_pids: &[i32], state_dir: &Path) -> Vec<String> {
    let needle = state_dir.to_string_lossy().into_owned();
    let mut left: Vec<String> =
        agent_pids.iter().filter(|&&p| pid_alive(p)).map(|p| format!("agent process {p}")).collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if pid_alive(pid) && String::from_utf8_lossy(&cmdline).contains(&needle) {
            left.push(format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    left
}

pub fn run() {
    assert!(tmux::available(), "tmux is not installed: the bench runs rush top in a tmux window");
    let started = Instant::now();
    let d = Daemon::start();
    let daemon_pid = d.pid();
    let state_dir = d.state.path().to_owned();
    // Every other agent on a terminal: the table's first rows (and the focused agent, b0)
    // have both kinds.
    for i in 0..AGENTS {
        let name = format!("b{i}");
        let mut args = vec!["agent", "spawn", &name, "--detach"];
        if i % 2 == 0 {
            args.push("--tty");
        }
        args.extend(["--", "sleep", "1000"]);
        rush_ok(&d, &args);
    }
    let mut c = Client::connect(&d.socket).expect("connect");
    let agents = c.list_agents().expect("list agents");
    let running = agents.iter().filter(|a| a.state == AgentState::Running).count();
    assert_eq!(running, AGENTS, "agents running after the spawns");
    let mut agent_pids: Vec<i32> = agents.iter().map(|a| a.pid as i32).collect();
    std::thread::sleep(Duration::from_secs(2));

    // CPU: rounds of a window with no TUI, then one with a TUI that has been up 2 s.
    let tmux = Tmux::new();
    let (mut idle_cpu, mut idle_wall) = (0.0, 0.0);
    let (mut tui_daemon_cpu, mut tui_cpu, mut tui_wall) = (0.0, 0.0, 0.0);
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let (used, wall) = cpu_window(&[daemon_pid]);
        idle_cpu += used[0];
        idle_wall += wall;
        let window = format!("cpu{round}");
        let pid = start_tui(&tmux, &d, &window);
        std::thread::sleep(Duration::from_secs(2));
        let (used, wall) = cpu_window(&[daemon_pid, pid]);
        tui_daemon_cpu += used[0];
        tui_cpu += used[1];
        tui_wall += wall;
        rss.push(rss_kb(pid));
        quit_tui(&tmux, &window, pid);
        std::thread::sleep(Duration::from_secs(1));
    }

    // The TUI's refresh round on its own, with no TUI running.
    let (mut rounds, mut lists): (Vec<Duration>, Vec<Duration>) = (0..30)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            refresh_round(&mut c)
        })
        .unzip();

    // Latency: pause and resume agents whose rows are on the screen, then new agents.
    let events = watch_events(&d.socket);
    let pid = start_tui(&tmux, &d, "latency");
    std::thread::sleep(Duration::from_secs(2));
    let screen = tmux.screen("latency");
    let targets = visible_agents(&screen);
    assert!(targets.len() >= 2, "rush top shows fewer than 2 agents' rows:\n{screen}");
    let poll_t = Instant::now();
    for _ in 0..20 {
        tmux.screen("latency");
    }
    let capture = poll_t.elapsed() / 20;
    let (mut pause, mut resume, mut spawn) = (Latency::default(), Latency::default(), Latency::default());
    // Not in step with the refresh: a different pause before each change. The screen is
    // watched first; the subscriber's time of the event waits in its channel.
    let settle = |i: usize| std::thread::sleep(Duration::from_millis(150 + (i as u64 * 73) % 400));
    for i in 0..REPS {
        let name = &targets[(i + 1) % targets.len()];
        settle(i);
        let t0 = Instant::now();
        rush_ok(&d, &["agent", "pause", name]);
        pause.command.push(t0.elapsed());
        let paused = |r: Option<&str>| r.is_some_and(|r| r.contains("paused: operator"));
        pause.screen.push(until_row(&tmux, "latency", name, t0, "\"paused: operator\"", paused));
        pause.event.push(event_after(&events, name, "paused", t0));
        settle(i + 1);
        let t0 = Instant::now();
        rush_ok(&d, &["agent", "resume", name]);
        resume.command.push(t0.elapsed());
        let running = |r: Option<&str>| r.is_some_and(|r| r.contains("running"));
        resume.screen.push(until_row(&tmux, "latency", name, t0, "\"running\" again", running));
        resume.event.push(event_after(&events, name, "resumed", t0));
    }
    for i in 0..REPS {
        // Before every bN by name: its row is on the screen when it appears.
        let name = format!("a{i}");
        settle(i);
        let t0 = Instant::now();
        rush_ok(&d, &["agent", "spawn", &name, "--detach", "--", "sleep", "1000"]);
        spawn.command.push(t0.elapsed());
        let running = |r: Option<&str>| r.is_some_and(|r| r.contains("running"));
        spawn.screen.push(until_row(&tmux, "latency", &name, t0, "the new agent running", running));
        spawn.event.push(event_after(&events, &name, "spawn", t0));
        let agent = c.list_agents().expect("list agents").into_iter().find(|a| a.name == name);
        agent_pids.extend(agent.map(|a| a.pid as i32));
        rush_ok(&d, &["agent", "kill", &name]);
        let gone = |r: Option<&str>| r.is_none_or(|r| !r.contains("running"));
        until_row(&tmux, "latency", &name, Instant::now(), "the killed agent gone or exited", gone);
    }
    let rss_after = rss_kb(pid);
    quit_tui(&tmux, "latency", pid);
    drop(tmux);

    // Every agent killed, then the daemon stopped; nothing may be left.
    for a in c.list_agents().expect("list agents") {
        if a.state == AgentState::Running {
            c.kill_agent(&a.name).unwrap_or_else(|e| panic!("kill {}: {e}", a.name));
        }
    }
    drop(c);
    drop(d);
    let mut left = Vec::new();
    wait_until(Duration::from_secs(5), || {
        left = leftovers(&agent_pids, &state_dir);
        left.is_empty()
    });
    assert!(left.is_empty(), "left behind after the bench:\n{}", left.join("\n"));

    let pct = |cpu: f64, wall: f64| cpu * 100.0 / wall;
    let (idle, with) = (pct(idle_cpu, idle_wall), pct(tui_daemon_cpu, tui_wall));
    let ratio =
        if idle_cpu > 0.0 { format!("{:.2}x", with / idle) } else { "n/a (no CPU tick without)".into() };
    println!(
        "\n## rush top: {AGENTS} agents (half on a terminal), a {COLS}x{ROWS} tmux window, default refresh (1 s)\n"
    );
    println!(
        "| CPU, % of one core (utime+stime, {ROUNDS} windows of {} s per side, alternated) | no TUI | one TUI | ratio | added |",
        WINDOW.as_secs()
    );
    println!("|---|---|---|---|---|");
    println!("| rush-agentd | {idle:.2}% | {with:.2}% | {ratio} | {:+.2}% |", with - idle);
    println!("| rush top | - | {:.2}% | - | - |", pct(tui_cpu, tui_wall));
    println!();
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "rush top VmRSS: {} after each CPU window, {} after the latency runs ({} agents listed by then)\n",
        rss.iter().map(|&k| mib(k)).collect::<Vec<_>>().join(", "),
        mib(rss_after),
        AGENTS + REPS
    );
    println!(
        "| change → on rush top's screen ({REPS} each; `capture-pane` every {} ms, one capture {}) \
         | command alone p50 | event on a subscriber p50 | on screen p50 | on screen p90 \
         | on screen after the event p50 | p90 |",
        POLL.as_millis(),
        ms(capture)
    );
    println!("|---|---|---|---|---|---|---|");
    pause.print("`rush agent pause bN` → \"paused: operator\"");
    resume.print("`rush agent resume bN` → \"running\"");
    spawn.print("`rush agent spawn aN -d -- sleep 1000` → its row");
    println!(
        "\nthe TUI's refresh round (ListAgents + ListApprovals + ListClaims, one connection, {AGENTS} agents, \
         no TUI running): p50 {}, p90 {}; ListAgents alone p50 {}, p90 {}",
        ms(percentile(&mut rounds, 0.5)),
        ms(percentile(&mut rounds, 0.9)),
        ms(percentile(&mut lists, 0.5)),
        ms(percentile(&mut lists, 0.9))
    );
    println!(
        "\nall agents killed, daemon stopped, nothing left; wall time {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

//! `rush top` on a real terminal: tmux runs it against a real daemon at 80x24 and
//! 160x48, `send-keys` drives it, `capture-pane` reads the screen, and every key's effect
//! is checked where it really happens: the cgroup's CPU time stops growing while paused,
//! the cgroup is gone after a kill, the agent's shell ran what was typed while attached,
//! the budget's freeze is the daemon's.

use std::path::PathBuf;
use std::time::Duration;

use kernel_tests::tmux::{self, Tmux};
use kernel_tests::*;
use serde_json::Value;

/// One refresh (1 s) and slack for a loaded CI machine.
const REFRESH: Duration = Duration::from_secs(5);

fn ready() -> bool {
    require(is_root(), "root") && require(tmux::available(), "tmux")
}

fn status(d: &Daemon, name: &str) -> Value {
    d.rush_json(&["agent", "status", name])
}

fn spawn(d: &Daemon, args: &[&str]) {
    let mut all = vec!["agent", "spawn"];
    all.extend_from_slice(args);
    let out = d.rush(&all);
    assert!(out.status.success(), "rush {all:?}: {}", describe(&out));
}

/// CPU time (µs) of the agent's cgroup, from its cgroup v2 `cpu.stat`.
fn cgroup_cpu_usec(d: &Daemon, name: &str) -> u64 {
    let path = PathBuf::from(status(d, name)["cgroup_path"].as_str().expect("cgroup_path")).join("cpu.stat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no usage_usec in {}: {text}", path.display()))
}

/// `rush top ARGS` in a tmux window of `cols`x`rows`.
fn top(t: &Tmux, d: &Daemon, window: &str, cols: u16, rows: u16, args: &str) {
    let cmd = format!(
        "env RUSH_SOCKET={} TERM=xterm-256color {} top {args}",
        d.socket.display(),
        bin("rush").display()
    );
    t.window(window, cols, rows, &cmd);
}

/// The screen line of `agent`'s row in the table: the line whose first cell is its name
/// (not a status line or an audit record that merely names it).
fn row<'a>(screen: &'a str, agent: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.trim_start_matches('│').split_whitespace().next() == Some(agent))
}

fn wait_row(t: &Tmux, w: &str, agent: &str, what: &str) -> String {
    t.wait_screen(w, REFRESH, &format!("{agent}'s row to say {what:?}"), |s| {
        row(s, agent).is_some_and(|r| r.contains(what))
    })
}

/// `key` opens a prompt saying `prompt`; `text` and Enter answer it.
fn answer(t: &Tmux, w: &str, key: &str, prompt: &str, text: &str) {
    t.keys(w, &[key]);
    t.wait_for(w, prompt);
    t.type_text(w, text);
    t.keys(w, &["Enter"]);
}

/// Moves the selection down until the focus pane is `agent`'s.
fn select(t: &Tmux, w: &str, agent: &str) {
    let title = format!("{agent} · ");
    t.keys(w, &["Home"]);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        if t.screen(w).contains(&title) {
            return;
        }
        t.keys(w, &["Down"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    t.wait_for(w, &title);
}

#[test]
fn steer_agents_from_the_tui_at_80x24() {
    if !ready() {
        return;
    }
    let d = Daemon::start_with_config("[files]\nenforcement = \"landlock\"\n");
    let tree = tempfile::Builder::new().prefix("rtop").tempdir_in("/tmp").unwrap();
    std::fs::create_dir(tree.path().join("a")).unwrap();
    std::fs::create_dir(tree.path().join("b")).unwrap();
    std::fs::write(tree.path().join("b/secret"), "secret").unwrap();
    let spin = bin("rush-test-budget");
    spawn(&d, &["a-spin", "-d", "--", spin.to_str().unwrap(), "spin"]);
    spawn(&d, &["b-worker", "-d", "--tty", "--", "sh", "-c", "echo hello-from-worker; exec sh"]);

    let t = Tmux::new();
    top(&t, &d, "top", 80, 24, "--agent a-spin");
    assert_eq!(t.pane_size("top"), (24, 80));
    // Both agents listed; the focused one's log shows its output.
    t.wait_for("top", "b-worker");
    t.wait_for("top", "spinning");

    // A new agent appears within one refresh (its spawn event triggers one at once).
    let bins = kernel_tests::escape_kit::bin_grant();
    let allow = format!("{}:read", tree.path().join("a").display());
    spawn(&d, &["c-new", "-d", "--allow", &bins, "--allow", &allow, "--", "sleep", "600"]);
    t.wait_for_within("top", "c-new", REFRESH);

    // p: paused by the operator, and the cgroup's CPU time stops growing.
    t.keys("top", &["p"]);
    wait_row(&t, "top", "a-spin", "paused: operator");
    let frozen = cgroup_cpu_usec(&d, "a-spin");
    std::thread::sleep(Duration::from_secs(1));
    let later = cgroup_cpu_usec(&d, "a-spin");
    assert!(later - frozen < 20_000, "a paused agent used {} µs of CPU in a second", later - frozen);
    assert_eq!(status(&d, "a-spin")["paused"], "operator");

    // r: running again, and using CPU.
    t.keys("top", &["r"]);
    wait_row(&t, "top", "a-spin", "running");
    let resumed = cgroup_cpu_usec(&d, "a-spin");
    assert!(
        wait_until(Duration::from_secs(10), || cgroup_cpu_usec(&d, "a-spin") > resumed + 100_000),
        "a resumed agent runs"
    );

    // A denial shows in the focus pane, with its path, and is counted in the row.
    let secret = tree.path().join("b/secret");
    let escape = bin("rush-test-escape");
    spawn(
        &d,
        &[
            "d-snoop",
            "-d",
            "--allow",
            &bins,
            "--allow",
            &allow,
            "--",
            escape.to_str().unwrap(),
            "read",
            secret.to_str().unwrap(),
        ],
    );
    select(&t, "top", "d-snoop");
    let denials_audited = d.doctor()["guarantees"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g["name"] == "file denials audited" && g["holds"] == true));
    if denials_audited {
        let screen = t.wait_for_within("top", &secret.display().to_string(), REFRESH);
        assert!(screen.contains("DENIED"), "{screen}");
        let line = row(&screen, "d-snoop").unwrap_or_default().to_owned();
        assert!(
            line.split_whitespace().any(|w| w == "1" || w == "2"),
            "denials counted in the row: {line}\n{screen}"
        );
    } else {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "NOTE ***** this kernel's Landlock audits no denials: file denial in the TUI not checked *****"
        );
    }

    // a: the worker's terminal becomes ours; what we type runs in its shell; the detach
    // keys bring rush top back.
    select(&t, "top", "b-worker");
    t.wait_for("top", "hello-from-worker");
    t.keys("top", &["a"]);
    t.wait_screen("top", REFRESH, "the agent's terminal instead of the TUI", |s| !s.contains("Agents"));
    t.type_text("top", "echo typed-$((6*7))");
    t.keys("top", &["Enter"]);
    t.wait_for("top", "typed-42");
    t.keys("top", &["C-\\"]);
    t.keys("top", &["d"]);
    t.wait_for("top", "detached from b-worker; it is still running");
    // What was typed ran in the agent, so its terminal (shown again) has the answer.
    t.wait_for("top", "typed-42");

    // k: asks, then kills; the cgroup is gone.
    select(&t, "top", "a-spin");
    let cgroup = PathBuf::from(status(&d, "a-spin")["cgroup_path"].as_str().unwrap());
    t.keys("top", &["k"]);
    t.wait_for("top", "kill a-spin and every process in it? y/N");
    t.keys("top", &["n"]);
    t.wait_for("top", "not killed");
    assert!(cgroup.exists());
    t.keys("top", &["k"]);
    t.wait_for("top", "y/N");
    t.keys("top", &["y"]);
    t.wait_for("top", "killed a-spin");
    assert!(wait_until(Duration::from_secs(10), || !cgroup.exists()), "{} is still there", cgroup.display());
    wait_row(&t, "top", "a-spin", "exited");

    // g: a grant, and its token with the time it has left in the focus pane.
    select(&t, "top", "c-new");
    answer(&t, "top", "g", "grant PATH:OPS", &format!("{}:read:1h", tree.path().join("b").display()));
    t.wait_for("top", "granted token");
    t.wait_for("top", "expires in 59m");
    let caps = d.rush_json(&["capability", "list", "c-new"]);
    assert!(caps.to_string().contains(&tree.path().join("b").display().to_string()), "{caps}");

    // v: revoked by path; the pane drops the token.
    answer(&t, "top", "v", "revoke PATH or token ID", &tree.path().join("b").display().to_string());
    t.wait_for("top", "revoked 1 token(s) of c-new");
    t.wait_screen("top", REFRESH, "the revoked token to leave the pane", |s| !s.contains("expires in 59m"));

    // /: only the matching rows.
    t.keys("top", &["/"]);
    t.type_text("top", "work");
    t.keys("top", &["Enter"]);
    t.wait_screen("top", REFRESH, "the filter to leave b-worker alone", |s| {
        row(s, "b-worker").is_some() && row(s, "c-new").is_none() && s.contains("filter \"work\"")
    });
    t.keys("top", &["/"]);
    t.keys("top", &["Escape"]);
    t.wait_screen("top", REFRESH, "every row back", |s| row(s, "c-new").is_some());

    // Bad input on a prompt: a clear error, nothing granted.
    select(&t, "top", "b-worker");
    answer(&t, "top", "g", "grant PATH:OPS", "/nonexistent-dir:fly");
    t.wait_for("top", "not granted");

    // q: the TUI ends, the agents run on, and it says so.
    t.keys("top", &["q"]);
    assert!(wait_until(Duration::from_secs(10), || t.pane_dead("top")), "rush top did not quit");
    assert!(
        wait_until(Duration::from_secs(10), || t
            .scrollback("top")
            .contains("agents running (b-worker, c-new)")),
        "{}",
        t.scrollback("top")
    );
    assert_eq!(status(&d, "b-worker")["state"], "running");
}

#[test]
fn a_budget_crossing_its_limit_shows_at_160x48_and_r_asks_for_a_raise() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let spin = bin("rush-test-budget");
    spawn(&d, &["hot", "-d", "--budget", "cpu:1s", "--", spin.to_str().unwrap(), "spin"]);
    let t = Tmux::new();
    top(&t, &d, "wide", 160, 48, "");
    assert_eq!(t.pane_size("wide"), (48, 160));
    let screen = t.wait_for("wide", "hot");
    for column in ["SESSION", "TRUST", "CPU%", "COST", "DENY/1m", "CLAIMS"] {
        assert!(screen.contains(column), "the wide table has {column}:\n{screen}");
    }
    // The bar crosses 100% (marked `!`) and the state turns to paused: budget.
    let screen = t.wait_screen("wide", Duration::from_secs(60), "hot to be frozen by its budget", |s| {
        row(s, "hot").is_some_and(|r| r.contains("paused: budget") && r.contains('!'))
    });
    assert_eq!(status(&d, "hot")["paused"], "budget:cpu", "{screen}");

    // r on a budget-frozen agent asks for the raise; a bad one is refused, a good one resumes.
    answer(&t, "wide", "r", "raise it", "cpu:lots");
    t.wait_for("wide", "not resumed");
    answer(&t, "wide", "r", "raise it", "cpu:30s");
    t.wait_for("wide", "resumed hot with a raised budget");
    wait_row(&t, "wide", "hot", "running");
    assert_eq!(status(&d, "hot")["paused"], Value::Null);

    // c: a checkpoint of the session; then the workspace diff since it shows a new file.
    let ws = tempfile::Builder::new().prefix("rtop-ws").tempdir_in("/tmp").unwrap();
    std::fs::write(ws.path().join("kept.txt"), "kept").unwrap();
    let out = d.rush(&["session", "create", "topsess", "--workspace", ws.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    spawn(&d, &["in-session", "-d", "--session", "topsess", "--", "sleep", "600"]);
    select(&t, "wide", "in-session");
    t.wait_for("wide", "no checkpoint yet");
    answer(&t, "wide", "c", "checkpoint name", "from-top");
    t.wait_for("wide", "checkpoint from-top of session topsess");
    let listed = d.rush_json(&["timeline", "list", "--session", "topsess"]);
    assert!(listed.to_string().contains("from-top"), "{listed}");
    t.wait_for("wide", "diff since from-top: 0 added");
    std::fs::write(ws.path().join("made-after.txt"), "new").unwrap();
    t.wait_for_within("wide", "A made-after.txt", Duration::from_secs(15));

    t.keys("wide", &["q"]);
    assert!(wait_until(Duration::from_secs(10), || t.pane_dead("wide")));
}

#[test]
fn spawn_visible_opens_the_tui_on_the_agent_and_leaves_it_running() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let t = Tmux::new();
    let cmd = format!(
        "env RUSH_SOCKET={} TERM=xterm-256color NO_COLOR=1 {} agent spawn vis --visible -- sh -c 'echo visible-output; exec sleep 600'",
        d.socket.display(),
        bin("rush").display()
    );
    t.window("vis", 100, 30, &cmd);
    let screen = t.wait_for("vis", "visible-output");
    assert!(screen.contains("vis · terminal"), "focused on its terminal:\n{screen}");
    t.keys("vis", &["?"]);
    t.wait_for("vis", "rush top: keys");
    t.keys("vis", &["x"]);
    t.keys("vis", &["q"]);
    assert!(wait_until(Duration::from_secs(10), || t.pane_dead("vis")));
    // (tmux may show its "Pane is dead" over the last screen: read the scroll-back too.)
    assert!(
        wait_until(Duration::from_secs(10), || t.scrollback("vis").contains("left 1 agent running (vis)")),
        "{}",
        t.scrollback("vis")
    );
    assert_eq!(status(&d, "vis")["state"], "running");
    let info = status(&d, "vis");
    assert_eq!(info["tty"], true, "--visible spawns on a terminal: {info}");
}

#[test]
fn without_a_terminal_it_prints_plain_tables() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    spawn(&d, &["plain-one", "-d", "--", "sleep", "600"]);
    let out = d.rush(&["top", "-n", "2", "--plain", "--refresh", "0.2"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("NAME  ").count(), 2, "two tables:\n{text}");
    assert!(row(&text, "plain-one").is_some_and(|r| r.contains("running")), "{text}");
    // Piped without --plain: the same, not escape codes.
    let out = d.rush(&["top", "-n", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("plain-one") && !text.contains('\x1b'),
        "{}",
        describe(&out)
    );
    // --json: one object per refresh.
    let out = d.rush(&["--json", "top", "-n", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let one = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "plain-one")
        .cloned()
        .unwrap_or_default();
    assert_eq!(one["state"], "running", "{v}");
    assert_eq!(one["denials_last_minute"], 0, "{v}");
    let bad = d.rush(&["top", "--refresh", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("0.1 to 60"), "{}", describe(&bad));
}

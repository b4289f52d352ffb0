//! Agents on terminals, with a real terminal: tmux runs `rush agent attach` (and a
//! foreground `rush agent spawn`), `send-keys` types, `capture-pane` reads the screen.
//! The full-screen program is fixtures/tty_app.py (curses, Debian's python3).
//!
//! Proven here: the screen draws and is shown again on re-attach, a resize reaches the
//! agent, Ctrl-C reaches the agent and not rush, detach leaves it running, one writer at a
//! time (read-only viewers, --steal), `send` and plain-text logs, the terminal survives a
//! daemon restart, and nobody but the daemon reaches a terminal's holder (an agent that
//! connects to it types nothing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kernel_tests::tmux::Tmux;
use kernel_tests::*;

fn fixture() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tty_app.py")).to_owned()
}

/// The app as an agent's command.
fn app() -> Vec<String> {
    vec!["/usr/bin/python3".into(), fixture().display().to_string()]
}

fn ready() -> bool {
    let tmux = kernel_tests::tmux::available();
    let curses =
        Command::new("/usr/bin/python3").args(["-c", "import curses"]).status().is_ok_and(|s| s.success());
    require(is_root(), "root") && require(tmux, "tmux") && require(curses, "/usr/bin/python3 with curses")
}

/// `rush ARGS; echo RUSH-EXIT=$?` as a shell line for a tmux window.
fn rush_line(d: &Daemon, args: &str) -> String {
    format!("{} --socket {} {args}; echo RUSH-EXIT=$?; sleep 600", bin("rush").display(), d.socket.display())
}

fn spawn_tty(d: &Daemon, name: &str, command: &[String]) {
    let mut args = vec!["agent", "spawn", name, "--tty", "--detach", "--"];
    args.extend(command.iter().map(String::as_str));
    let out = d.rush(&args);
    assert!(out.status.success(), "spawn --tty: {}", describe(&out));
}

fn state_of(d: &Daemon, name: &str) -> serde_json::Value {
    d.rush_json(&["agent", "status", name])
}

/// An echo loop: each line typed comes back as `got:LINE`.
fn echo_loop() -> Vec<String> {
    ["sh", "-c", "echo ready; while read -r l; do echo \"got:$l\"; done"].map(String::from).to_vec()
}

fn logs(d: &Daemon, name: &str) -> String {
    let out = d.rush(&["agent", "logs", name]);
    assert!(out.status.success(), "logs: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_screen_agent_draws_resizes_takes_ctrl_c_detaches_and_is_shown_again() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    spawn_tty(&d, "screen", &app());
    let tmux = Tmux::new();
    tmux.window("a", 100, 30, &rush_line(&d, "agent attach screen"));
    let (rows, cols) = tmux.pane_size("a");
    // The agent's window is the viewer's.
    tmux.wait_for("a", &format!("SIZE {rows}x{cols}"));
    let screen = tmux.wait_for("a", "PGRP-FG yes");
    assert!(screen.contains("TTY /dev/pts/"), "{screen}");

    tmux.keys("a", &["abc"]);
    tmux.wait_for("a", "KEYS abc");
    // Ctrl-C is the agent's: its SIGINT handler counts it, rush stays attached.
    tmux.keys("a", &["C-c"]);
    tmux.wait_for("a", "SIGINT 1");
    assert!(!tmux.screen("a").contains("RUSH-EXIT"), "Ctrl-C ended rush:\n{}", tmux.screen("a"));

    // A resize reaches the agent (SIGWINCH, new size).
    tmux.run(&["resize-window", "-t", "t:a", "-x", "120", "-y", "40"]);
    let (rows2, cols2) = tmux.pane_size("a");
    assert_ne!((rows, cols), (rows2, cols2));
    tmux.wait_for("a", &format!("SIZE {rows2}x{cols2}"));

    // Detach: rush exits 0, the agent runs on.
    tmux.keys("a", &["C-\\", "d"]);
    let screen = tmux.wait_for("a", "RUSH-EXIT=0");
    assert!(screen.contains("detached from screen"), "{screen}");
    assert_eq!(state_of(&d, "screen")["state"], "running");

    // Typed while nobody watched.
    let sent = d.rush_json(&["agent", "send", "screen", "xyz"]);
    assert_eq!(sent["bytes"], 3);

    // Again, in another window of another size: the screen as it is now.
    tmux.window("b", 90, 25, &rush_line(&d, "agent attach screen"));
    let screen = tmux.wait_for("b", "KEYS abcxyz");
    assert!(screen.contains("SIGINT 1"), "{screen}");
    let (rows3, cols3) = tmux.pane_size("b");
    tmux.wait_for("b", &format!("SIZE {rows3}x{cols3}"));

    // The agent's own exit ends the attachment with its status.
    tmux.keys("b", &["q"]);
    tmux.wait_for("b", "RUSH-EXIT=3");
    let st = state_of(&d, "screen");
    assert_eq!(st["state"], "exited");
    assert_eq!(st["exit"]["code"], 3);
    // Its terminal is gone with it.
    let out = d.rush(&["agent", "attach", "screen"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("terminal is closed"), "{}", describe(&out));

    let audit = d.audit();
    let attached = audit.iter().filter(|r| r["event"]["kind"] == "terminal_attached").count();
    assert_eq!(attached, 2, "two attaches audited");
    let typed: Vec<_> = audit.iter().filter(|r| r["event"]["kind"] == "terminal_input").collect();
    assert_eq!(typed.len(), 1);
    assert_eq!(typed[0]["event"]["bytes"], 3);
    assert!(!typed[0].to_string().contains("xyz"), "the audit keeps the length, not the text");
}

#[test]
fn a_foreground_spawn_from_a_terminal_gets_a_terminal_of_its_own() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let tmux = Tmux::new();
    let cmd = app().join(" ");
    tmux.window("fg", 100, 30, &rush_line(&d, &format!("agent spawn fg -- {cmd}")));
    let pane_tty = tmux.run(&["display-message", "-p", "-t", "t:fg", "#{pane_tty}"]);
    let screen = tmux.wait_for("fg", "PGRP-FG yes");
    let (rows, cols) = tmux.pane_size("fg");
    assert!(screen.contains(&format!("SIZE {rows}x{cols}")), "{screen}");
    assert!(
        !screen.contains(&format!("TTY {}", pane_tty.trim())),
        "the agent got rush's own terminal:\n{screen}"
    );
    assert_eq!(state_of(&d, "fg")["tty"], true);
    tmux.keys("fg", &["C-c"]);
    tmux.wait_for("fg", "SIGINT 1");
    tmux.keys("fg", &["q"]);
    tmux.wait_for("fg", "RUSH-EXIT=3");

    // --no-tty: rush's terminal itself, as before.
    tmux.window(
        "nt",
        100,
        30,
        &rush_line(
            &d,
            "agent spawn nt --no-tty -- /usr/bin/python3 -c 'import os; print(\"TTY\", os.ttyname(0))'",
        ),
    );
    let pane_tty = tmux.run(&["display-message", "-p", "-t", "t:nt", "#{pane_tty}"]);
    let screen = tmux.wait_for("nt", "RUSH-EXIT=0");
    assert!(screen.contains(&format!("TTY {}", pane_tty.trim())), "{screen}");
}

#[test]
fn one_writer_at_a_time_others_watch_and_steal_takes_over() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    spawn_tty(&d, "echo", &echo_loop());
    let tmux = Tmux::new();
    tmux.window("w1", 100, 30, &rush_line(&d, "agent attach echo"));
    tmux.wait_for("w1", "ready");
    tmux.window("w2", 100, 30, &rush_line(&d, "agent attach echo"));
    tmux.wait_for("w2", "read-only until they detach");
    tmux.window("ro", 100, 30, &rush_line(&d, "agent attach echo --read-only"));
    tmux.wait_for("ro", "ready");

    // Only the writer's keys arrive; everyone sees the result.
    tmux.keys("w2", &["ignored", "Enter"]);
    tmux.keys("ro", &["ignored-too", "Enter"]);
    tmux.keys("w1", &["first", "Enter"]);
    for w in ["w1", "w2", "ro"] {
        tmux.wait_for(w, "got:first");
    }
    // --steal: the old writer is told, and reads only.
    tmux.window("st", 100, 30, &rush_line(&d, "agent attach echo --steal"));
    tmux.wait_for("w1", "took over the keyboard");
    tmux.keys("w1", &["from-w1", "Enter"]);
    tmux.keys("st", &["stolen", "Enter"]);
    tmux.wait_for("ro", "got:stolen");
    // The stealer leaves: the longest-waiting writer (w1) gets the keyboard back.
    tmux.keys("st", &["C-\\", "d"]);
    tmux.wait_for("st", "RUSH-EXIT=0");
    tmux.wait_for("w1", "you have the keyboard");
    tmux.keys("w1", &["back", "Enter"]);
    tmux.wait_for("ro", "got:back");

    let log = logs(&d, "echo");
    for line in ["got:first", "got:stolen", "got:back"] {
        assert!(log.contains(line), "{line} not in the log:\n{log}");
    }
    for typed in ["ignored", "from-w1"] {
        assert!(!log.contains(&format!("got:{typed}")), "a read-only viewer typed {typed}:\n{log}");
    }
}

#[test]
fn send_types_and_logs_hold_the_plain_text() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let cmd: Vec<String> = [
        "sh",
        "-c",
        "printf '\\033[1;31mred\\033[0m plain\\n'; printf '10%%\\r50%%\\r100%%\\n'; while read -r l; do echo \"got:$l\"; done",
    ]
    .map(String::from)
    .to_vec();
    spawn_tty(&d, "plain", &cmd);
    let out = d.rush(&["agent", "send", "plain", "hello", "--enter"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("typed 6 bytes"), "{}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || logs(&d, "plain").contains("got:hello")),
        "{}",
        logs(&d, "plain")
    );
    let log = logs(&d, "plain");
    assert!(log.starts_with("red plain\n100%\n"), "escapes and redrawn lines in the log:\n{log:?}");
    assert!(!log.contains('\u{1b}'), "{log:?}");

    // The terminal's line discipline is the agent's: its echo of what was typed is there.
    assert!(log.contains("hello\n"), "{log:?}");

    // Errors name what is wrong.
    let out = d.rush(&["agent", "send", "nosuch", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"), "{}", describe(&out));
    let out = d.rush(&["agent", "spawn", "notty", "--detach", "--", "sleep", "30"]);
    assert!(out.status.success());
    let out = d.rush(&["agent", "attach", "notty"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tty"), "{}", describe(&out));
    let out = d.rush(&["agent", "attach", "plain", "--detach-keys", "ctrl-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ctrl-1"), "{}", describe(&out));
}

#[test]
fn the_terminal_survives_a_daemon_restart() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start();
    spawn_tty(&d, "keep", &echo_loop());
    d.rush_json(&["agent", "send", "keep", "one\r"]);
    assert!(wait_until(Duration::from_secs(10), || logs(&d, "keep").contains("got:one")));
    d.kill9();
    // Output while no daemon runs is kept (the holder reads on).
    d.restart();
    assert_eq!(state_of(&d, "keep")["tty"], true);
    d.rush_json(&["agent", "send", "keep", "two\r"]);
    assert!(
        wait_until(Duration::from_secs(10), || logs(&d, "keep").contains("got:two")),
        "{}",
        logs(&d, "keep")
    );
    let tmux = Tmux::new();
    tmux.window("r", 100, 30, &rush_line(&d, "agent attach keep"));
    let screen = tmux.wait_for("r", "got:two");
    assert!(screen.contains("got:one"), "the scroll-back from before the restart:\n{screen}");
    tmux.keys("r", &["three", "Enter"]);
    tmux.wait_for("r", "got:three");
    tmux.keys("r", &["C-d"]);
    // Not the daemon's child any more: it sees the end, not the status.
    let screen = tmux.wait_for("r", "RUSH-EXIT=1");
    assert!(screen.contains("exit status is unknown"), "{screen}");
    assert_eq!(state_of(&d, "keep")["state"], "exited");
}

#[test]
fn only_the_daemon_reaches_a_terminal_holder() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    spawn_tty(&d, "victim", &echo_loop());
    let socket = d.state.path().join("state/pty/victim.sock");
    assert!(socket.exists(), "the holder's socket {}", socket.display());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    // An agent (root, no file tokens asked: nothing but the holder's own check stops it)
    // connects and speaks the holder's protocol: a writer's hello, then keys.
    let inject = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect refused", e.errno); sys.exit(0)
hello = json.dumps({"mode": "write", "who": "attacker", "rows": 24, "cols": 80}).encode()
try:
    s.sendall(bytes([1]) + struct.pack(">I", len(hello)) + hello)
    s.sendall(bytes([2]) + struct.pack(">I", 8) + b"INJECT\r\n")
    s.settimeout(3)
    data = s.recv(1 << 16)
    print("got", len(data))
except OSError as e:
    print("closed", e.errno)
"#;
    let out = d.rush(&[
        "agent",
        "spawn",
        "attacker",
        "--",
        "/usr/bin/python3",
        "-c",
        inject,
        socket.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("the attacker: {}", said.trim());
    assert!(
        said.contains("got 0") || said.contains("closed") || said.contains("refused"),
        "{}",
        describe(&out)
    );
    std::thread::sleep(Duration::from_millis(500));
    d.rush_json(&["agent", "send", "victim", "real\r"]);
    assert!(wait_until(Duration::from_secs(10), || logs(&d, "victim").contains("got:real")));
    assert!(
        !logs(&d, "victim").contains("INJECT"),
        "an agent typed into another's terminal:\n{}",
        logs(&d, "victim")
    );

    // Through the daemon, an agent may not attach or type either: operators only.
    let rush = bin("rush").display().to_string();
    let sock = d.socket.display().to_string();
    let out =
        d.rush(&["agent", "spawn", "asker", "--", &rush, "--socket", &sock, "agent", "send", "victim", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not send_terminal"), "{}", describe(&out));
}

#[test]
fn an_agent_on_the_callers_terminal_cannot_type_into_it_or_take_it() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let tmux = Tmux::new();
    // --no-tty: the agent has the pane's terminal as stdin, but it is in a session of its
    // own without a controlling terminal, and without CAP_SYS_ADMIN even as root: typing
    // into the terminal (TIOCSTI: what the shell after it would read) and taking it as its
    // controlling terminal (TIOCSCTTY, forced or not) are refused.
    let probe = "import errno, fcntl, termios\n\
                 for name, req, arg in [('TIOCSTI', termios.TIOCSTI, b'x'), ('TIOCSCTTY', termios.TIOCSCTTY, 0), ('TIOCSCTTY-force', termios.TIOCSCTTY, 1)]:\n\
                 \x20   try:\n\
                 \x20       fcntl.ioctl(0, req, arg); print(name, 'DONE')\n\
                 \x20   except OSError as e:\n\
                 \x20       print(name, errno.errorcode[e.errno])\n";
    std::fs::write(d.state.path().join("probe.py"), probe).unwrap();
    let line = format!(
        "agent spawn probe --no-tty -- /usr/bin/python3 {}",
        d.state.path().join("probe.py").display()
    );
    tmux.window("p", 100, 30, &rush_line(&d, &line));
    let screen = tmux.wait_for("p", "RUSH-EXIT=");
    for name in ["TIOCSTI ", "TIOCSCTTY ", "TIOCSCTTY-force "] {
        let got = screen.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{screen}"));
        assert!(got.ends_with("EPERM") || got.ends_with("EIO"), "{got}\n{screen}");
    }
}

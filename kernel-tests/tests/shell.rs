//! `rush` as an interactive shell, on a real terminal: tmux runs `rush --norc` (a private
//! HOME and XDG_STATE_HOME per test, the test daemon's RUSH_SOCKET where one is needed),
//! `send-keys` types, and the tests assert on the screen and on what really happened:
//! files, exit statuses (`echo RC=$?`), processes, the daemon's records.
//!
//! Proven here: the prompt and its Rush status (session, agents, approvals), line editing
//! and Ctrl-C on a line, history (within a shell, across shells, per session), completion
//! of Rush's verbs and of paths, job control (Ctrl-Z, jobs, bg, fg, a full-screen program
//! drawn again, disown, `$!`, Ctrl-C on `wait`), Ctrl-C on a foreground command, session
//! attach and detach carrying the shell's state to another shell, checkpoint and rollback
//! restoring the shell and the files, the performance records and their baseline, and the
//! non-interactive modes bash has (`-c`, stdin, `-s`, a script, `-e`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kernel_tests::tmux::{self, Tmux};
use kernel_tests::*;
use serde_json::Value;

/// Waits on the shell: a command line's prompt coming back, its output.
const WAIT: Duration = Duration::from_secs(10);

fn tmux_ready() -> bool {
    require(tmux::available(), "tmux")
}

/// A daemon (root) and tmux, or None after a SKIP line.
fn daemon() -> Option<Daemon> {
    if !(require(is_root(), "root") && tmux_ready()) {
        return None;
    }
    Some(Daemon::start())
}

fn short_hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    h.trim().split('.').next().unwrap_or_default().to_owned()
}

fn user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .expect("the test's user has a name")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Fields of /proc/PID/stat after the command name: (state, ppid, pgrp, tpgid).
fn proc_stat(pid: i32) -> Option<(char, i32, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| rest.get(i).and_then(|v| v.parse().ok());
    Some((rest.first()?.chars().next()?, n(1)?, n(2)?, n(5)?))
}

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_owned()
}

/// The live (not zombie) children of `parent` whose command line is `cmd`.
fn children(parent: i32, cmd: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some((state, ppid, _, _)) = proc_stat(pid)
            && ppid == parent
            && state != 'Z'
            && cmdline(pid) == cmd
        {
            out.push(pid);
        }
    }
    out
}

/// A shell's child running `cmd` that has the terminal (its group is the foreground one):
/// a key typed now reaches it, not the shell.
fn wait_foreground(shell: i32, cmd: &str) -> i32 {
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = children(shell, cmd)
            .into_iter()
            .find(|&p| proc_stat(p).is_some_and(|(_, _, pgrp, tpgid)| pgrp == tpgid));
        found.is_some()
    });
    assert!(ok, "`{cmd}` never became the terminal's foreground job of shell {shell}");
    found.unwrap()
}

/// The rush shells a test opens, each in a tmux window, sharing one HOME and
/// XDG_STATE_HOME (so a second shell finds the first one's history).
struct Term {
    tmux: Tmux,
    dir: tempfile::TempDir,
    /// RUSH_SOCKET of the shells: the test daemon's, else a path where nothing listens.
    socket: PathBuf,
    prompt_tag: String,
    shells: Mutex<Vec<i32>>,
}

impl Term {
    fn new(d: Option<&Daemon>) -> Term {
        let dir = tempfile::Builder::new().prefix("rush-shell-").tempdir_in("/tmp").unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let socket = d.map_or_else(|| dir.path().join("no-daemon.sock"), |d| d.socket.clone());
        Term {
            tmux: Tmux::new(),
            dir,
            socket,
            prompt_tag: format!("{}@{}:", user_name(), short_hostname()),
            shells: Mutex::new(Vec::new()),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A scratch directory of the test, outside any workspace.
    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `rush --norc` in window `w` (in HOME) and waits for its first prompt; its pid.
    fn open(&self, w: &str) -> i32 {
        self.open_with(w, "")
    }

    /// `open`, with `env` (`NAME=VALUE ...`, quoted) added to the shell's environment.
    fn open_with(&self, w: &str, env: &str) -> i32 {
        let line = format!(
            "cd {home} && exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME={home} XDG_STATE_HOME={state} \
             TERM=xterm-256color LANG=C.UTF-8 RUSH_SOCKET={sock} {env} {rush} --norc",
            home = quote(&self.home().to_string_lossy()),
            state = quote(&self.state().to_string_lossy()),
            sock = quote(&self.socket.to_string_lossy()),
            rush = quote(&bin("rush").to_string_lossy()),
        );
        self.tmux.window(w, 120, 40, &line);
        let pid = self.tmux.pane_pid(w);
        self.shells.lock().unwrap().push(pid);
        self.wait_idle(w, 0);
        pid
    }

    fn keys(&self, w: &str, keys: &[&str]) {
        self.tmux.keys(w, keys);
    }

    fn type_text(&self, w: &str, text: &str) {
        self.tmux.type_text(w, text);
    }

    fn screen(&self, w: &str) -> String {
        self.tmux.screen(w)
    }

    fn lines(&self, w: &str) -> Vec<String> {
        self.tmux.scrollback(w).lines().map(|l| l.trim_end().to_owned()).collect()
    }

    fn is_prompt(&self, line: &str) -> bool {
        line.contains(&self.prompt_tag)
    }

    fn prompts(&self, w: &str) -> usize {
        self.lines(w).iter().filter(|l| self.is_prompt(l)).count()
    }

    /// The last non-empty line of the screen.
    fn last_line(&self, w: &str) -> String {
        self.screen(w).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim_end().to_owned()
    }

    /// Waits until more than `seen` prompts were drawn and the last line is an empty prompt.
    fn wait_idle(&self, w: &str, seen: usize) {
        self.wait_idle_within(w, seen, WAIT);
    }

    fn wait_idle_within(&self, w: &str, seen: usize, timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until(timeout, || {
            let lines = self.lines(w);
            let n = lines.iter().filter(|l| self.is_prompt(l)).count();
            last = lines.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
            n > seen && self.is_prompt(&last) && last.ends_with(['#', '$'])
        });
        if !ok {
            panic!(
                "no new prompt in window {w} within {timeout:?} (last line {last:?}); the screen:\n{}",
                self.tmux.scrollback(w)
            );
        }
    }

    /// Types `line`, Enter, waits for the next prompt; what the command printed (the lines
    /// between its command line and the next prompt).
    fn run(&self, w: &str, line: &str) -> Vec<String> {
        let seen = self.prompts(w);
        self.type_text(w, line);
        self.keys(w, &["Enter"]);
        self.wait_idle(w, seen);
        self.output_of(w, line)
    }

    /// [`Term::run`], the output as one string (lines joined by \n).
    fn out(&self, w: &str, line: &str) -> String {
        self.run(w, line).join("\n")
    }

    /// The output of the last run of command line `line`.
    fn output_of(&self, w: &str, line: &str) -> Vec<String> {
        let lines = self.lines(w);
        let at = lines
            .iter()
            .rposition(|l| self.is_prompt(l) && l.ends_with(line.trim_end()))
            .unwrap_or_else(|| panic!("command line {line:?} not on the screen:\n{}", lines.join("\n")));
        lines[at + 1..].iter().take_while(|l| !self.is_prompt(l)).filter(|l| !l.is_empty()).cloned().collect()
    }

    /// Presses Enter at an empty prompt until the prompt line contains `what` (the status
    /// cache refreshes in the background every 2 s and after each command); that line.
    fn wait_prompt_with(&self, w: &str, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = self.last_line(w);
            if self.is_prompt(&last) && last.contains(what) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "the prompt never showed {what:?} within {WAIT:?}; the screen:\n{}",
                self.screen(w)
            );
            let seen = self.prompts(w);
            self.keys(w, &["Enter"]);
            self.wait_idle(w, seen);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        // What a failed test left running in its shells (a job that would sleep on), then
        // the shells (a shell stuck in a command outlives its terminal).
        let rush = format!("{} --norc", bin("rush").display());
        for &sh in self.shells.lock().unwrap().iter() {
            if cmdline(sh) != rush {
                continue;
            }
            let kill = |pid: i32| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            };
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
                if proc_stat(pid).is_some_and(|(_, ppid, _, _)| ppid == sh) {
                    kill(pid);
                }
            }
            kill(sh);
        }
    }
}

/// A session's workspace: a directory with `sub/` and `data.txt`, under /tmp.
struct Workspace {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("rush-shell-ws-").tempdir_in("/tmp").unwrap();
        let path = dir.path().join("ws");
        std::fs::create_dir_all(path.join("sub")).unwrap();
        std::fs::create_dir_all(path.join("dirA")).unwrap();
        std::fs::write(path.join("data.txt"), "before\n").unwrap();
        Workspace { _dir: dir, path }
    }

    fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

fn create_session(d: &Daemon, name: &str, ws: &Workspace) {
    d.rush_json(&["session", "create", name, "--workspace", ws.s()]);
}

fn same_dir(a: &str, b: &Path) -> bool {
    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

// ---------------------------------------------------------------------------------------
// 1. The prompt

#[test]
fn the_prompt_shows_the_session_running_agents_and_pending_approvals() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create_session(&d, "s", &ws);
    let t = Term::new(Some(&d));
    t.open("p");
    // The default PS1 `${RUSH_PROMPT}\u@\h:\w\$ `: no session, no agents, nothing pending.
    let first = t.last_line("p");
    assert_eq!(first, format!("{}~#", t.prompt_tag), "the first prompt:\n{}", t.screen("p"));

    let out = d.rush(&["agent", "spawn", "w1", "--detach", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", describe(&out));
    t.wait_prompt_with("p", "[1 agent] ");
    let out = d.rush(&["ask", "--agent", "w1", "--kind", "custom", "--action", "may I"]);
    assert!(out.status.success(), "{}", describe(&out));
    t.wait_prompt_with("p", "[1 agent · 1 approval] ");

    // RUSH_SESSION alone names the session (what every session verb defaults to).
    t.run("p", "export RUSH_SESSION=s");
    t.wait_prompt_with("p", "[s@main · 1 agent · 1 approval] ");
    t.run("p", "unset RUSH_SESSION");
    t.wait_prompt_with("p", "[1 agent · 1 approval] ");

    // Attached: the session's timeline, and the shell in its workspace.
    let out = t.out("p", "rush session attach s");
    assert!(out.contains("attached to session s"), "{out}");
    t.wait_prompt_with("p", "[s@main · 1 agent · 1 approval] ");
    let pwd = t.out("p", "pwd");
    assert!(same_dir(&pwd, &ws.path), "attach did not enter the workspace: {pwd}");
    // Decided elsewhere: the count goes.
    let id = d.rush_json(&["approvals"])["approvals"][0]["id"].to_string();
    let out = d.rush(&["reject", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    t.wait_prompt_with("p", "[s@main · 1 agent] ");
}

// ---------------------------------------------------------------------------------------
// 2. Line editing

#[test]
fn an_edited_line_runs_as_edited_and_ctrl_c_discards_a_half_typed_one() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    t.open("e");
    // `echo 1-3`, Left twice, insert; Home, past `echo `, insert; End, append.
    let seen = t.prompts("e");
    t.type_text("e", "echo 1-3");
    t.keys("e", &["Left"]);
    t.type_text("e", "2-");
    t.keys("e", &["Home", "Right", "Right", "Right", "Right", "Right"]);
    t.type_text("e", "0-");
    t.keys("e", &["End"]);
    t.type_text("e", "-4");
    t.keys("e", &["Enter"]);
    t.wait_idle("e", seen);
    assert_eq!(t.output_of("e", "echo 0-1-2-3-4"), ["0-1-2-3-4"]);

    // A word deleted back (Ctrl-W) and the line's start (Ctrl-A) reached.
    let seen = t.prompts("e");
    t.type_text("e", "printf '%s\\n' x wrong");
    t.keys("e", &["C-w"]);
    t.type_text("e", "right");
    t.keys("e", &["C-a"]);
    t.type_text("e", "X=1 ");
    t.keys("e", &["Enter"]);
    t.wait_idle("e", seen);
    assert_eq!(t.output_of("e", "X=1 printf '%s\\n' x right"), ["x", "right"]);

    // Ctrl-C on a half-typed line: nothing runs, the next line runs clean, $? is 130.
    let seen = t.prompts("e");
    t.type_text("e", "touch half-typed; echo SHOULD-NOT-RUN");
    t.keys("e", &["C-c"]);
    t.wait_idle("e", seen);
    assert_eq!(t.run("e", "echo RC=$?"), ["RC=130"]);
    assert_eq!(t.run("e", "echo clean"), ["clean"]);
    assert!(!t.home().join("half-typed").exists(), "the discarded line ran");
    assert!(!t.lines("e").iter().any(|l| l == "SHOULD-NOT-RUN"), "{}", t.screen("e"));
}

// ---------------------------------------------------------------------------------------
// 3. History

#[test]
fn history_recalls_within_a_shell_across_shells_and_per_session() {
    let Some(d) = daemon() else { return };
    let t = Term::new(Some(&d));
    t.open("h1");
    t.run("h1", "echo hist-one");
    t.run("h1", "echo hist-two");
    let seen = t.prompts("h1");
    t.keys("h1", &["Up", "Up"]);
    t.tmux.wait_screen("h1", WAIT, "`echo hist-one` recalled", |_| {
        t.last_line("h1").ends_with(" echo hist-one")
    });
    t.keys("h1", &["Enter"]);
    t.wait_idle("h1", seen);
    let ones = t.lines("h1").iter().filter(|l| *l == "hist-one").count();
    assert_eq!(ones, 2, "Up Up did not run the first command again:\n{}", t.screen("h1"));
    // Ctrl-D ends the shell (and is no command of the history).
    t.keys("h1", &["C-d"]);
    assert!(wait_until(WAIT, || t.tmux.pane_dead("h1")), "Ctrl-D did not end the shell:\n{}", t.screen("h1"));

    // A new shell, same XDG_STATE_HOME: Up is the last shell's last command.
    t.open("h2");
    let seen = t.prompts("h2");
    t.keys("h2", &["Up"]);
    t.tmux.wait_screen("h2", WAIT, "`echo hist-one` recalled", |_| {
        t.last_line("h2").ends_with(" echo hist-one")
    });
    t.keys("h2", &["Enter"]);
    t.wait_idle("h2", seen);
    assert_eq!(t.output_of("h2", "echo hist-one"), ["hist-one"]);
    // Kept where Rush keeps it, not in a file of HOME's.
    let file = t.state().join("rush/history/default");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        let home: Vec<_> = std::fs::read_dir(t.home()).unwrap().flatten().map(|e| e.file_name()).collect();
        panic!("no history file {} ({e}); HOME has {home:?}", file.display())
    });
    assert!(text.lines().any(|l| l == "echo hist-two"), "{text}");

    // Per session: attached to s, the history is s's own file.
    let ws = Workspace::new();
    create_session(&d, "s", &ws);
    let out = t.out("h2", "rush session attach s");
    assert!(out.contains("attached to session s"), "{out}");
    t.run("h2", "echo only-in-s");
    let out = t.out("h2", "rush session detach");
    assert!(out.contains("detached from session s"), "{out}");
    let s_file = std::fs::read_to_string(t.state().join("rush/history/s")).unwrap_or_default();
    assert!(s_file.lines().any(|l| l == "echo only-in-s"), "s's history:\n{s_file}");
    let default = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(!default.contains("only-in-s"), "the default history has s's command:\n{default}");
    // Back in the default history: Up does not reach s's command.
    t.keys("h2", &["Up"]);
    std::thread::sleep(Duration::from_millis(500));
    let last = t.last_line("h2");
    assert!(last.ends_with("rush session detach") || last.ends_with("rush session attach s"), "{last}");
    t.keys("h2", &["C-c"]);
}

/// A terminal closed under the shell (SIGHUP) is how most shells end; bash saves the
/// history then too.
#[test]
fn history_is_kept_when_the_terminal_closes() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    let shell = t.open("h1");
    t.run("h1", "echo before-the-hangup");
    t.tmux.run(&["kill-window", "-t", "t:h1"]);
    assert!(wait_until(WAIT, || !pid_alive(shell)), "the shell outlived its terminal");
    t.open("h2");
    let seen = t.prompts("h2");
    t.keys("h2", &["Up"]);
    std::thread::sleep(Duration::from_millis(300));
    t.keys("h2", &["Enter"]);
    t.wait_idle("h2", seen);
    assert!(
        t.lines("h2").iter().any(|l| l == "before-the-hangup"),
        "the last command before the hangup is not in the history:\n{}",
        t.screen("h2")
    );
}

// ---------------------------------------------------------------------------------------
// 4. Completion

#[test]
fn tab_completes_rush_verbs_their_subcommands_and_paths() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    std::fs::create_dir_all(t.home().join("completion-target/inner")).unwrap();
    t.open("c");
    t.type_text("c", "rush che");
    t.keys("c", &["Tab"]);
    t.tmux.wait_for("c", "rush checkpoint");
    t.keys("c", &["C-c"]);
    t.wait_idle("c", 1);

    t.type_text("c", "rush agent ");
    t.keys("c", &["Tab"]);
    std::thread::sleep(Duration::from_millis(300));
    t.keys("c", &["Tab"]);
    // What is listed below the line being edited.
    let below = |s: &str| -> String {
        let lines: Vec<&str> = s.lines().collect();
        let at = lines.iter().rposition(|l| l.contains("rush agent")).unwrap_or(0);
        lines[at + 1..].join("\n")
    };
    let screen = t.tmux.wait_screen("c", WAIT, "agent's subcommands listed", |s| {
        ["spawn", "list", "attach", "logs"].iter().all(|w| below(s).split_whitespace().any(|x| x == *w))
    });
    assert!(!below(&screen).contains("checkpoint"), "top-level verbs offered after `rush agent`:\n{screen}");
    // Escape closes the menu; a key right after it would be read as Alt-key.
    t.keys("c", &["Escape"]);
    std::thread::sleep(Duration::from_millis(300));
    let seen = t.prompts("c");
    t.keys("c", &["C-c"]);
    t.wait_idle("c", seen);

    // Paths: an absolute one, then a relative one, run.
    let seen = t.prompts("c");
    t.type_text("c", "ls -d /us");
    t.keys("c", &["Tab"]);
    t.tmux.wait_for("c", "ls -d /usr/");
    t.keys("c", &["C-c"]);
    t.wait_idle("c", seen);
    let seen = t.prompts("c");
    t.type_text("c", "ls complet");
    t.keys("c", &["Tab"]);
    t.tmux.wait_for("c", "ls completion-target/");
    t.keys("c", &["Enter"]);
    t.wait_idle("c", seen);
    assert_eq!(t.output_of("c", "ls completion-target/"), ["inner"]);
}

// ---------------------------------------------------------------------------------------
// 5. Job control

#[test]
fn ctrl_z_stops_a_job_bg_runs_it_fg_brings_it_back_and_ctrl_c_ends_it() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    let shell = t.open("j");
    t.type_text("j", "sleep 100");
    t.keys("j", &["Enter"]);
    let sleep = wait_foreground(shell, "sleep 100");
    let seen = t.prompts("j");
    t.keys("j", &["C-z"]);
    t.wait_idle("j", seen);
    assert!(t.tmux.scrollback("j").contains("Stopped"), "{}", t.screen("j"));
    assert!(wait_until(WAIT, || proc_stat(sleep).is_some_and(|s| s.0 == 'T')), "sleep is not stopped");
    let jobs = t.out("j", "jobs");
    assert!(jobs.contains("Stopped") && jobs.contains("sleep 100"), "{jobs}");

    t.run("j", "bg");
    assert!(
        wait_until(WAIT, || proc_stat(sleep).is_some_and(|s| s.0 == 'S')),
        "bg did not continue sleep: {:?}",
        proc_stat(sleep)
    );
    let jobs = t.out("j", "jobs");
    assert!(jobs.contains("Running") && jobs.contains("sleep 100"), "{jobs}");

    t.type_text("j", "fg");
    t.keys("j", &["Enter"]);
    assert_eq!(wait_foreground(shell, "sleep 100"), sleep, "fg brought back another process");
    let seen = t.prompts("j");
    t.keys("j", &["C-c"]);
    t.wait_idle("j", seen);
    assert_eq!(t.run("j", "echo RC=$?"), ["RC=130"]);
    assert!(wait_until(WAIT, || !pid_alive(sleep)), "Ctrl-C did not end sleep");
    assert_eq!(t.run("j", "jobs"), Vec::<String>::new(), "the job is still in the table");
}

/// vim (or less where there is no vim): stopped, the shell's prompt is back and the file
/// is not on the screen; `fg`, the program draws its screen again.
#[test]
fn a_stopped_full_screen_program_is_drawn_again_on_fg() {
    if !tmux_ready() {
        return;
    }
    let vim = Path::new("/usr/bin/vim").exists();
    let less = Path::new("/usr/bin/less").exists();
    if !require(vim || less, "vim or less") {
        return;
    }
    let t = Term::new(None);
    std::fs::write(t.home().join("view.txt"), "first line\nMARKER-IN-THE-FILE\n").unwrap();
    let shell = t.open("v");
    let program = if vim { "vim -u NONE -N view.txt" } else { "less view.txt" };
    t.type_text("v", program);
    t.keys("v", &["Enter"]);
    let pid = wait_foreground(shell, program);
    t.tmux.wait_for("v", "MARKER-IN-THE-FILE");
    let seen = t.prompts("v");
    t.keys("v", &["C-z"]);
    t.wait_idle("v", seen);
    let screen = t.screen("v");
    assert!(screen.contains("Stopped"), "{screen}");
    assert!(!screen.contains("MARKER-IN-THE-FILE"), "the program's screen stayed:\n{screen}");
    assert_eq!(t.run("v", "echo BACK-$((40+2))"), ["BACK-42"]);

    t.type_text("v", "fg");
    t.keys("v", &["Enter"]);
    t.tmux.wait_for("v", "MARKER-IN-THE-FILE");
    assert!(!t.screen("v").contains("BACK-42"), "not redrawn:\n{}", t.screen("v"));
    let seen = t.prompts("v");
    if vim {
        t.keys("v", &["Escape"]);
        t.type_text("v", ":q!");
        t.keys("v", &["Enter"]);
    } else {
        t.keys("v", &["q"]);
    }
    t.wait_idle("v", seen);
    assert_eq!(t.run("v", "echo RC=$?"), ["RC=0"]);
    assert!(wait_until(WAIT, || !pid_alive(pid)), "{program} still runs");
    assert_eq!(t.run("v", "jobs"), Vec::<String>::new());
}

#[test]
fn disown_removes_a_job_from_the_table_and_leaves_it_running() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    let shell = t.open("d");
    t.run("d", "sleep 101 &");
    t.run("d", "sleep 102 &");
    let jobs = t.out("d", "jobs");
    assert!(jobs.contains("sleep 101") && jobs.contains("sleep 102"), "{jobs}");
    let out = t.out("d", "disown %1");
    assert!(out.is_empty(), "disown said: {out}");
    let jobs = t.out("d", "jobs");
    assert!(!jobs.contains("sleep 101") && jobs.contains("sleep 102"), "after disown %1:\n{jobs}");
    assert_eq!(children(shell, "sleep 101").len(), 1, "the disowned job was killed");
    t.run("d", "disown");
    assert_eq!(t.run("d", "jobs"), Vec::<String>::new());
}

#[test]
fn ctrl_c_ends_a_foreground_command_and_the_shell_lives_on() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    let shell = t.open("i");
    t.type_text("i", "sleep 100");
    t.keys("i", &["Enter"]);
    let sleep = wait_foreground(shell, "sleep 100");
    let seen = t.prompts("i");
    t.keys("i", &["C-c"]);
    t.wait_idle("i", seen);
    assert_eq!(t.run("i", "echo RC=$?"), ["RC=130"]);
    assert!(wait_until(WAIT, || !pid_alive(sleep)), "sleep survived Ctrl-C");
    assert!(pid_alive(shell), "the shell died");
    assert_eq!(t.run("i", "echo ALIVE-$((6*7))"), ["ALIVE-42"]);
    // A pipeline: Ctrl-C ends all of it.
    t.type_text("i", "sleep 100 | cat");
    t.keys("i", &["Enter"]);
    wait_foreground(shell, "cat");
    let seen = t.prompts("i");
    t.keys("i", &["C-c"]);
    t.wait_idle("i", seen);
    assert_eq!(t.run("i", "echo RC=$?"), ["RC=130"]);
    assert!(children(shell, "sleep 100").is_empty() && children(shell, "cat").is_empty());
}

/// bash: Ctrl-C ends what runs in the shell itself (a loop of builtins) and the shell
/// comes back with 130.
#[test]
fn ctrl_c_cannot_stop_a_loop_of_builtins_so_it_warns_and_a_second_one_ends_the_shell() {
    if !tmux_ready() {
        return;
    }
    let t = Term::new(None);
    let shell = t.open("l");
    let seen = t.prompts("l");
    t.type_text("l", "while true; do :; done");
    t.keys("l", &["Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys("l", &["C-c"]);
    // brush checks for nothing between the builtins of a loop, so the line cannot be
    // abandoned: the shell survives the first Ctrl-C, says so, and the second ends it
    // (docs/SHELL.md).
    t.tmux.wait_for("l", "does not stop on Ctrl-C");
    assert!(pid_alive(shell), "Ctrl-C killed the shell:\n{}", t.screen("l"));
    let _ = seen;
    t.keys("l", &["C-c"]);
    assert!(wait_until(WAIT, || !pid_alive(shell)), "the second Ctrl-C did not end it:\n{}", t.screen("l"));
}

/// A Rush verb runs in a fork of the shell: Ctrl-C must end it, not the shell.
#[test]
fn ctrl_c_on_a_rush_verb_ends_the_verb_not_the_shell() {
    let Some(d) = daemon() else { return };
    let t = Term::new(Some(&d));
    let shell = t.open("v");
    let seen = t.prompts("v");
    t.type_text("v", "rush events --follow");
    t.keys("v", &["Enter"]);
    assert!(
        wait_until(WAIT, || !children(shell, &format!("{} --norc", bin("rush").display())).is_empty()),
        "the verb's fork never ran"
    );
    std::thread::sleep(Duration::from_millis(300));
    t.keys("v", &["C-c"]);
    assert!(
        !wait_until(Duration::from_secs(1), || t.tmux.pane_dead("v")),
        "Ctrl-C killed the shell:\n{}",
        t.screen("v")
    );
    t.wait_idle("v", seen);
    assert_eq!(t.run("v", "echo RC=$?"), ["RC=130"]);
}

// ---------------------------------------------------------------------------------------
// 7. Session attach and detach

#[test]
fn detach_saves_the_shell_and_attach_in_a_new_shell_restores_it() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create_session(&d, "s", &ws);
    let t = Term::new(Some(&d));
    t.open("a");
    let out = t.out("a", "rush session attach s");
    assert!(out.contains("attached to session s"), "{out}");
    let pwd = t.out("a", "pwd");
    assert!(same_dir(&pwd, &ws.path), "attach did not enter the workspace: {pwd}");
    t.run("a", "export FOO=bar; alias ll='ls -ld'; greet() { echo hi-$1; }; cd sub");
    let out = t.out("a", "rush session detach");
    assert!(out.contains("detached from session s"), "{out}");
    // The shell keeps what it had; it is just no longer attached.
    assert_eq!(t.run("a", "echo RS=${RUSH_SESSION-unset} FOO=$FOO; greet y"), ["RS=unset FOO=bar", "hi-y"]);
    let saved = d.rush(&["session", "get", "rush.shell", "--session", "s"]);
    assert!(saved.status.success(), "{}", describe(&saved));
    let saved: Value = serde_json::from_slice(&saved.stdout).expect("the saved shell state is JSON");
    assert!(saved["env"].as_array().unwrap().iter().any(|kv| kv[0] == "FOO" && kv[1] == "bar"), "{saved}");

    // Another shell, fresh: nothing of it, until attached.
    t.open("b");
    assert_eq!(t.run("b", "echo FOO=${FOO-unset}"), ["FOO=unset"]);
    let out = t.out("b", "rush session attach s");
    assert!(out.contains("its shell state restored"), "{out}");
    assert_eq!(t.run("b", "echo FOO=$FOO"), ["FOO=bar"]);
    assert_eq!(t.run("b", "greet x"), ["hi-x"]);
    let ll = t.out("b", "ll .");
    assert!(ll.starts_with('d') && ll.ends_with(" ."), "the alias ll: {ll}");
    let pwd = t.out("b", "pwd");
    assert!(same_dir(&pwd, &ws.p("sub")), "not in the saved directory: {pwd}");
    assert_eq!(t.run("b", "echo RS=$RUSH_SESSION"), ["RS=s"]);
}

/// Native verbs (attach, checkpoint, rollback) must reach the daemon the shell's own
/// RUSH_SOCKET names, as the forked ones (`rush agent list`) do.
#[test]
fn a_rush_socket_exported_in_the_shell_reaches_every_verb() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create_session(&d, "s", &ws);
    let t = Term::new(None);
    t.open("x");
    t.run("x", &format!("export RUSH_SOCKET={}; export RUSH_SESSION=s; cd {}", d.socket.display(), ws.s()));
    t.run("x", "rush agent list; echo RC=$?");
    assert_eq!(t.output_of("x", "rush agent list; echo RC=$?").last().map(String::as_str), Some("RC=0"));
    let out = t.out("x", "rush checkpoint c1; echo RC=$?");
    assert!(out.ends_with("RC=0") && out.contains("checkpoint c1 of session s"), "{out}");
}

// ---------------------------------------------------------------------------------------
// 8. Checkpoint and rollback of the shell and the files

#[test]
fn rollback_restores_the_shells_variables_cwd_functions_and_the_files() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create_session(&d, "s", &ws);
    let t = Term::new(Some(&d));
    t.open("r");
    // RUSH_SESSION names the session (as attach sets it; attach itself is proven above).
    t.run("r", &format!("export RUSH_SESSION=s; cd {}", ws.s()));
    t.run("r", "export A=1; f() { echo one; }; alias keep='echo kept'; set -o noclobber; cd dirA");
    let out = t.out("r", "rush checkpoint c1");
    assert!(out.contains("checkpoint c1 of session s") && out.contains("shell"), "{out}");

    let data = ws.p("data.txt").display().to_string();
    let added = ws.p("added.txt").display().to_string();
    t.run(
        "r",
        &format!(
            "export A=2 B=new; unset -f f; f() {{ echo two; }}; unalias keep; alias zz='echo zz'; \
             set +o noclobber; cd /; printf 'after\\n' > {data}; echo extra > {added}"
        ),
    );
    assert_eq!(std::fs::read(ws.p("data.txt")).unwrap(), b"after\n");
    assert_eq!(t.run("r", "f"), ["two"]);
    let out = t.out("r", "rush rollback c1");
    assert!(out.contains("rolled back to c1"), "{out}");
    assert!(out.contains("shell restored"), "{out}");

    assert_eq!(t.run("r", "echo A=$A B=${B-unset}"), ["A=1 B=unset"]);
    assert_eq!(t.run("r", "f"), ["one"]);
    assert_eq!(t.run("r", "keep"), ["kept"]);
    let zz = t.out("r", "alias zz; echo RC=$?");
    assert!(zz.ends_with("RC=1"), "the alias made after c1 survived: {zz}");
    assert_eq!(t.run("r", "[[ -o noclobber ]] && echo noclobber-on"), ["noclobber-on"]);
    let pwd = t.out("r", "pwd");
    assert!(same_dir(&pwd, &ws.p("dirA")), "cwd not restored: {pwd}");
    assert_eq!(std::fs::read(ws.p("data.txt")).unwrap(), b"before\n", "data.txt not restored");
    assert!(!ws.p("added.txt").exists(), "a file made after c1 is still there");
    assert_eq!(t.run("r", "echo RS=$RUSH_SESSION"), ["RS=s"]);
}

// ---------------------------------------------------------------------------------------
// 9. Performance records

fn perf_runs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()));
    assert_eq!(v["command"], "sleep $D", "{v}");
    v["samples"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_slower_run_is_flagged_listed_and_a_rollback_restores_the_baseline() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create_session(&d, "perf", &ws);
    let t = Term::new(Some(&d));
    t.open("f");
    t.run("f", &format!("export RUSH_SESSION=perf; cd {}; D=0.1", ws.s()));
    for _ in 0..5 {
        assert_eq!(t.run("f", "sleep $D"), Vec::<String>::new(), "a run at the usual speed was flagged");
    }
    let at_c1 = t.scratch().join("at-c1.json");
    t.run("f", &format!("rush perf --json 'sleep $D' > {}", at_c1.display()));
    assert_eq!(perf_runs(&at_c1).len(), 5);
    let out = t.out("f", "rush checkpoint c1");
    assert!(out.contains("checkpoint c1"), "{out}");

    t.run("f", "D=0.4");
    let out = t.out("f", "sleep $D");
    assert!(out.starts_with("rush: perf: `sleep $D` took"), "no regression note: {out}");
    assert!(out.contains("over its median of") && out.contains("(5 runs)"), "{out}");
    let listed = t.out("f", "rush perf --regressions");
    assert!(listed.contains("sleep $D") && listed.contains("REGRESSION"), "{listed}");
    // Slow is the new usual: six more such runs make it the median of the runs before the
    // last (five at 0.1 s, six at 0.4 s).
    for _ in 0..6 {
        t.run("f", "sleep $D");
    }
    let after = t.scratch().join("after.json");
    t.run("f", &format!("rush perf --json 'sleep $D' > {}", after.display()));
    assert_eq!(perf_runs(&after).len(), 12);
    let listed = t.out("f", "rush perf --regressions");
    assert!(!listed.contains("sleep $D"), "the new usual is still a regression: {listed}");

    let out = t.out("f", "rush rollback c1");
    assert!(out.contains("rolled back to c1"), "{out}");
    let rolled = t.scratch().join("rolled.json");
    t.run("f", &format!("rush perf --json 'sleep $D' > {}", rolled.display()));
    assert_eq!(perf_runs(&rolled), perf_runs(&at_c1), "the baseline is not the checkpoint's");
    // The shell judges against the restored baseline too: slow again after the rollback.
    let out = t.out("f", "sleep $D");
    assert!(
        out.starts_with("rush: perf: `sleep $D` took") && out.contains("(5 runs)"),
        "after the rollback, 0.4 s was judged against the runs made after c1: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 10. Non-interactive, as bash

fn rush_plain(args: &[&str], stdin: Option<&str>, cwd: &Path) -> Output {
    let mut c = Command::new(bin("rush"));
    c.args(args)
        .current_dir(cwd)
        .env("RUSH_SOCKET", cwd.join("no-daemon.sock"))
        .env_remove("RUSH_SESSION")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("rush");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn said(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_terminal_rush_runs_commands_scripts_and_stdin_as_bash_does() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = rush_plain(&["-c", "echo $0 $1", "a", "b"], None, cwd);
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"a b\n"[..]), "{}", describe(&out));

    let out = rush_plain(&[], Some("echo from-stdin\nread x; echo \"read:$x\"\nline-for-read\n"), cwd);
    assert_eq!(said(&out).1, "from-stdin\nread:line-for-read\n", "{}", describe(&out));

    let script = cwd.join("script");
    std::fs::write(&script, format!("#!{}\necho \"script $1 $#\"\nexit 7\n", bin("rush").display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&script).arg("arg1").env("RUSH_SOCKET", cwd.join("none")).output().unwrap();
    assert_eq!(
        (out.status.code(), said(&out).1.as_str()),
        (Some(7), "script arg1 1\n"),
        "{}",
        describe(&out)
    );

    let out = rush_plain(&["-s", "x", "y"], Some("echo $1\n"), cwd);
    assert_eq!(said(&out).1, "x\n", "{}", describe(&out));

    let out = rush_plain(&["-ec", "false; echo no"], None, cwd);
    assert_eq!((out.status.code(), said(&out).1.as_str()), (Some(1), ""), "{}", describe(&out));

    let out = rush_plain(&["--badopt"], None, cwd);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(said(&out).2.contains("--badopt"), "{}", describe(&out));

    // A client verb stays the client's, daemon or not: its error, not the shell's.
    let out = rush_plain(&["agent", "list"], None, cwd);
    let (code, _, err) = said(&out);
    assert_eq!(code, Some(1), "{}", describe(&out));
    assert!(err.contains("rush-agentd is not running") && err.contains("no-daemon.sock"), "{err}");
    assert!(!err.contains("command not found") && !err.contains("syntax"), "{err}");

    // A script that happens to be named like a verb: `rush ./agent`.
    std::fs::write(cwd.join("agent"), "echo \"agent-script $1\"\n").unwrap();
    let out = rush_plain(&["./agent", "q"], None, cwd);
    assert_eq!(
        (out.status.code(), said(&out).1.as_str()),
        (Some(0), "agent-script q\n"),
        "{}",
        describe(&out)
    );
    let out = rush_plain(&["agent", "--help"], None, cwd);
    assert!(said(&out).1.contains("Usage: rush agent"), "{}", describe(&out));

    // A syntax error ends a script with 2, and what came before it ran.
    let out = rush_plain(&[], Some("echo before\nif then fi\necho after\n"), cwd);
    let (code, stdout, _) = said(&out);
    assert_eq!((code, stdout.as_str()), (Some(2), "before\n"), "{}", describe(&out));
}

/// `cmd &` of a `-c` command or a script runs (bash starts it before it goes on).
#[test]
fn a_background_command_of_a_non_interactive_shell_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = rush_plain(&["-c", "touch from-dash-c &"], None, cwd);
    assert!(out.status.success(), "{}", describe(&out));
    let out = rush_plain(&[], Some("touch from-stdin &\n"), cwd);
    assert!(out.status.success(), "{}", describe(&out));
    let out = rush_plain(&["-c", "echo 1 & echo 2 & wait; echo 3"], None, cwd);
    let mut lines: Vec<String> = said(&out).1.lines().map(str::to_owned).collect();
    let last = lines.pop();
    lines.sort();
    assert_eq!(
        (lines, last.as_deref()),
        (vec!["1".to_owned(), "2".to_owned()], Some("3")),
        "{}",
        describe(&out)
    );
    for f in ["from-dash-c", "from-stdin"] {
        assert!(wait_until(Duration::from_secs(5), || cwd.join(f).exists()), "`touch {f} &` never ran");
    }
    // Unlike bash, the shell waits for its background jobs before it exits: brush runs
    // them as tasks of the shell's process, which exiting would kill (docs/SHELL.md).
    let started = Instant::now();
    let out = rush_plain(&["-c", "sleep 1 & echo $?"], None, cwd);
    assert_eq!(said(&out).1, "0\n", "{}", describe(&out));
    assert!(started.elapsed() >= Duration::from_millis(900), "the background job was killed at exit");
}

/// `rush agent spawn` typed in the shell starts the agent where the shell is, with the
/// shell's exported variables (not the ones rush was started with), and its output goes
/// where the builtin's is redirected.
#[test]
fn an_agent_spawned_from_the_shell_inherits_its_cwd_exports_and_redirections() {
    if !require(is_root(), "root (a daemon)") {
        return;
    }
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let out_file = dir.path().join("agent-out");
    let script = format!(
        "cd {}; export GREETING='hi there'; unset HOME_MARK; rush agent spawn inheritor -- sh -c 'pwd; echo \"$GREETING\"; echo \"${{HOME_MARK-unset}}\"' > {}; echo rc=$?",
        here.display(),
        out_file.display()
    );
    let out = Command::new(bin("rush"))
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("RUSH_SOCKET", &d.socket)
        .env("HOME_MARK", "from-rushs-own-environment")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(said(&out).1, "rc=0\n", "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        format!("{}\nhi there\nunset\n", here.display()),
        "{}",
        describe(&out)
    );
}

/// An interactive rush started with RUSH_SESSION set is attached to that session: the
/// daemon lists the shell's pid among the session's attachments.
#[test]
fn a_shell_started_with_rush_session_set_is_attached() {
    if !tmux_ready() || !require(is_root(), "root (a daemon)") {
        return;
    }
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let out = d.rush(&["session", "create", "started", "--workspace", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let t = Term::new(Some(&d));
    let shell = t.open_with("s", "RUSH_SESSION=started");
    // Its cwd is the session's workspace (no cwd was saved yet).
    assert_eq!(t.run("s", "pwd"), [ws.to_str().unwrap()]);
    let attached = || {
        d.rush_json(&["session", "show", "started"])["attachments"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["pid"] == shell))
    };
    assert!(wait_until(WAIT, attached), "{:#}", d.rush_json(&["session", "show", "started"]));
}

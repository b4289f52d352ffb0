//! `rush-bench shell`: the rush shell against bash and dash (and brush, the shell core it is
//! built on, when installed), side by side in one run. hyperfine's method: warm-up runs,
//! then every variant once per round, round after round, so machine drift hits all alike;
//! medians and p90s.
//! - `X -c true`: process start to exit;
//! - an interactive shell under a pty (`--norc`; dash with no ENV): start to the first
//!   prompt's bytes on the pty, and its VmRSS then; rush also with a daemon to talk to,
//!   and with a socket that never answers (its prompt must not wait on the socket);
//! - per command, interactive: `true` typed, until the next prompt, and the CPU time the
//!   shell spent per line; rush recording its performance records vs RUSH_PERF=off, and
//!   recording with a daemon (bash and dash for scale);
//! - per command, gated: 500 `/bin/true` (each judged by the daemon) and 500 `:` (a
//!   builtin: the DEBUG trap runs, the daemon is not asked) sourced by `rush -c`, gating
//!   on vs off.
//!
//! Every variant must run: a shell that cannot start, exits non-zero or never shows its
//! prompt fails the bench (a panic), it is never reported as zero. brush is optional
//! (`cargo install --locked brush-shell --root ~/.cache/rush/brush`, or RUSH_BENCH_BRUSH
//! naming the binary): without it the bench says so and goes on.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, bin, describe};

/// `-c true` runs per variant (after `WARMUP`).
const STARTS: usize = 200;
const WARMUP: usize = 10;
/// Interactive starts per variant.
const PROMPTS: usize = 40;
const PROMPT_WARMUP: usize = 3;
/// Lines of `true` typed into each interactive shell.
const LINES: usize = 200;
const LINE_WARMUP: usize = 5;
/// Rounds of fresh shells the lines are spread over.
const LINE_ROUNDS: usize = 5;
/// Commands in a gating script, and runs of each script per variant.
const SCRIPT_LINES: usize = 500;
const SCRIPT_RUNS: usize = 15;
const SCRIPT_WARMUP: usize = 2;
/// Every shell's PS1: what "the prompt appeared" looks for on the pty.
const MARKER: &[u8] = b"rbp> ";
const PROMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The issue's targets for `rush -c true` on this machine.
const TARGET_MS: f64 = 4.0;
const TARGET_VS_DASH: f64 = 2.0;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// One shell to measure: its program, arguments before the command, and environment.
#[derive(Clone)]
struct Shell {
    name: String,
    program: PathBuf,
    /// For an interactive start (before nothing else): `--norc` and the like.
    interactive_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Shell {
    fn new(
        name: &str,
        program: impl Into<PathBuf>,
        interactive_args: &[&str],
        env: &[(String, String)],
    ) -> Shell {
        Shell {
            name: name.to_owned(),
            program: program.into(),
            interactive_args: interactive_args.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
        }
    }

    fn with_env(&self, name: &str, k: &str, v: &str) -> Shell {
        let mut s = self.clone();
        s.name = name.to_owned();
        s.env.retain(|(key, _)| key != k);
        s.env.push((k.to_owned(), v.to_owned()));
        s
    }

    /// The program with exactly this environment (nothing inherited: no RUSH_AGENT, no ENV,
    /// no RUSH_SESSION from the caller).
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

/// A command run to completion, timed; panics unless it succeeded.
fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let d = t.elapsed();
    let out = out.unwrap_or_else(|e| panic!("{cmd:?} could not run: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    d
}

/// Runs every variant once per round, `warmup` rounds unrecorded then `rounds` recorded;
/// the samples per variant.
fn interleave(
    n: usize,
    warmup: usize,
    rounds: usize,
    mut run: impl FnMut(usize) -> Duration,
) -> Vec<Vec<Duration>> {
    let mut samples = vec![Vec::with_capacity(rounds); n];
    for round in 0..warmup + rounds {
        for (i, s) in samples.iter_mut().enumerate() {
            let d = run(i);
            if round >= warmup {
                s.push(d);
            }
        }
    }
    samples
}

/// An interactive shell on a pty this process drives; the terminal answers cursor
/// position queries (reedline asks before painting a prompt) as a terminal would.
struct Term {
    child: Child,
    master: File,
    out: Vec<u8>,
    /// Output up to here was scanned for queries.
    scanned: usize,
    name: String,
}

impl Term {
    /// Starts `shell` interactive on a new pty (its session leader, the pty its controlling
    /// terminal); returns it and the time it was started.
    fn start(shell: &Shell) -> (Term, Instant) {
        let size = nix::pty::Winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let mut c = shell.command();
        c.args(&shell.interactive_args)
            .stdin(pty.slave.try_clone().unwrap())
            .stdout(pty.slave.try_clone().unwrap())
            .stderr(pty.slave.try_clone().unwrap());
        // SAFETY: between fork and exec, only async-signal-safe calls: setsid(2) and
        // ioctl(2) on fd 0, the pty's slave (TIOCSCTTY makes it the controlling terminal
        // of the new session, as a terminal emulator does).
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {}: {e}", shell.name, shell.program.display()));
        drop(pty.slave);
        let term = Term {
            child,
            master: File::from(pty.master),
            out: Vec::new(),
            scanned: 0,
            name: shell.name.clone(),
        };
        (term, started)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what is there (waiting up to `deadline`) and answers the queries in it.
    fn pump(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.fail("timed out waiting for the prompt");
        }
        let mut pfd = libc::pollfd { fd: self.master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd for a descriptor this Term owns.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32 + 1) };
        if n <= 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        match self.master.read(&mut buf) {
            Ok(0) | Err(_) => self.fail("the shell exited (the pty closed)"),
            Ok(n) => self.out.extend_from_slice(&buf[..n]),
        }
        // Queries a terminal answers: cursor position (DSR 6) and primary device attributes.
        let from = self.scanned.saturating_sub(4);
        let mut replies = Vec::new();
        let mut i = from;
        while i < self.out.len() {
            let rest = &self.out[i..];
            if rest.starts_with(b"\x1b[6n") {
                replies.extend_from_slice(b"\x1b[1;1R");
                i += 4;
            } else if rest.starts_with(b"\x1b[c") || rest.starts_with(b"\x1b[0c") {
                replies.extend_from_slice(b"\x1b[?62;22c");
                i += 3;
            } else {
                i += 1;
            }
        }
        // A query cut in two by the read is seen whole next time: keep its start unscanned.
        self.scanned = self.out.len().saturating_sub(3).max(self.scanned);
        if !replies.is_empty() {
            self.master.write_all(&replies).expect("answer the terminal query");
        }
    }

    /// Waits until `MARKER` appears at or after `from`; returns where it ends.
    fn wait_prompt(&mut self, from: usize) -> usize {
        let deadline = Instant::now() + PROMPT_TIMEOUT;
        loop {
            if let Some(at) = find(&self.out[from.min(self.out.len())..], MARKER) {
                return from + at + MARKER.len();
            }
            self.pump(deadline);
        }
    }

    /// Types `line` and Enter; waits for the next prompt: the one after the line's echo and
    /// the newline after it (a line editor repaints the prompt with the line when it is
    /// submitted). The time from typing to that prompt.
    fn run_line(&mut self, line: &str) -> Duration {
        let from = self.out.len();
        let t = Instant::now();
        self.master.write_all(format!("{line}\r").as_bytes()).expect("type into the pty");
        let deadline = Instant::now() + PROMPT_TIMEOUT;
        let after_echo = loop {
            if let Some(at) = find(&self.out[from..], line.as_bytes())
                && let Some(nl) = self.out[from + at..].iter().position(|b| *b == b'\n')
            {
                break from + at + nl;
            }
            self.pump(deadline);
        };
        self.wait_prompt(after_echo);
        t.elapsed()
    }

    /// CPU time of each of the shell's threads so far (ns, from schedstat), by thread id.
    fn cpu_ns(&self) -> Vec<(String, u64)> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| self.fail(&format!("{dir}: {e}")))
            .flatten()
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
                Some((t.file_name().to_string_lossy().into_owned(), stat.split(' ').next()?.parse().ok()?))
            })
            .collect()
    }

    /// CPU time of the shell's threads since `before`; fails if a thread ended in between
    /// (its time would be lost).
    fn cpu_since(&self, before: &[(String, u64)]) -> u64 {
        let now = self.cpu_ns();
        let mut total = 0;
        for (tid, ns) in &now {
            total += ns - before.iter().find(|(t, _)| t == tid).map_or(0, |b| b.1);
        }
        if let Some((gone, _)) = before.iter().find(|(t, _)| !now.iter().any(|(n, _)| n == t)) {
            self.fail(&format!("thread {gone} ended while measured: its CPU time would be lost"));
        }
        total
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| self.fail("no VmRSS"))
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{}: {what}; what the pty showed:\n{}", self.name, String::from_utf8_lossy(&self.out));
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// brush, when installed: its binary.
fn brush() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUSH_BENCH_BRUSH") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "RUSH_BENCH_BRUSH={} does not exist", p.display());
        return Some(p);
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/rush/brush/bin/brush");
    p.exists().then_some(p)
}

fn require_program(p: &Path) {
    assert!(p.exists(), "{} is not installed: the bench compares against it", p.display());
}

struct Row {
    what: String,
    p50: Duration,
    p90: Duration,
}

fn rows(names: &[String], mut samples: Vec<Vec<Duration>>) -> Vec<Row> {
    names
        .iter()
        .zip(samples.iter_mut())
        .map(|(n, s)| Row { what: n.clone(), p50: percentile(s, 0.5), p90: percentile(s, 0.9) })
        .collect()
}

fn print_rows(title: &str, rows: &[Row], base: usize, fmt: fn(Duration) -> String) {
    println!("| {title} | p50 | p90 | ratio p50 vs {} |", rows[base].what);
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {:.2}x |", r.what, fmt(r.p50), fmt(r.p90), ratio(r.p50, rows[base].p50));
    }
    println!();
}

fn by_name<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter().find(|r| r.what == name).unwrap_or_else(|| panic!("no row {name}"))
}

pub fn run() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let state = tmp.path().join("state");
    let env = |extra: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), home.display().to_string()),
            ("TERM".into(), "xterm".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PS1".into(), String::from_utf8(MARKER.to_vec()).unwrap()),
            ("XDG_STATE_HOME".into(), state.display().to_string()),
            // No daemon unless a variant names one.
            ("RUSH_SOCKET".into(), tmp.path().join("no-daemon.sock").display().to_string()),
        ];
        v.extend(extra.iter().map(|(k, val)| (k.to_string(), val.to_string())));
        v
    };
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    println!(
        "rush shell vs bash, dash{}: kernel {}, {} cores\n",
        if brush().is_some() { ", brush" } else { "" },
        uname.unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    println!("load average at the start: {}\n", load());
    let (bash_bin, dash_bin) = (PathBuf::from("/bin/bash"), PathBuf::from("/bin/dash"));
    require_program(&bash_bin);
    require_program(&dash_bin);
    let rush = Shell::new("rush", bin("rush"), &["--norc"], &env(&[]));
    let bash = Shell::new("bash", &bash_bin, &["--norc", "--noprofile", "-i"], &env(&[]));
    let dash = Shell::new("dash", &dash_bin, &["-i"], &env(&[]));
    let brush = brush().map(|b| Shell::new("brush", b, &["--norc", "--noprofile"], &env(&[])));
    match &brush {
        Some(b) => {
            let v = Command::new(&b.program).arg("--version").output().expect("brush --version");
            println!("brush: {}", String::from_utf8_lossy(&v.stdout).lines().next().unwrap_or("?"));
        }
        None => println!(
            "note: brush is not installed (~/.cache/rush/brush/bin/brush; `cargo install --locked brush-shell \
             --root ~/.cache/rush/brush`): measured without it\n"
        ),
    }
    let mut shells = vec![rush.clone(), bash.clone(), dash.clone()];
    shells.extend(brush.clone());

    // 1. `X -c true`, with fork+exec of /bin/true as the floor.
    let mut names: Vec<String> = shells.iter().map(|s| format!("`{} -c true`", s.name)).collect();
    names.push("fork+exec `/bin/true` (floor)".into());
    let samples = interleave(names.len(), WARMUP, STARTS, |i| match shells.get(i) {
        Some(s) => timed(s.command().args(["-c", "true"])),
        None => timed(&mut Command::new("/bin/true")),
    });
    let start_rows = rows(&names, samples);
    print_rows(&format!("`-c true`, start to exit ({STARTS} runs each)"), &start_rows, 2, ms);
    let (r, b, d) = (&start_rows[0], &start_rows[1], &start_rows[2]);
    let rush_ms = r.p50.as_secs_f64() * 1e3;
    let vs_dash = ratio(r.p50, d.p50);
    println!(
        "rush -c true: p50 {} ; rush/dash {vs_dash:.2}x ; rush/bash {:.2}x",
        ms(r.p50),
        ratio(r.p50, b.p50)
    );
    println!(
        "target rush -c true < {TARGET_MS} ms: {} ({rush_ms:.2} ms{}); target <= {TARGET_VS_DASH}x dash: {} ({vs_dash:.2}x{})\n",
        if rush_ms < TARGET_MS { "met" } else { "MISSED" },
        if rush_ms < TARGET_MS { String::new() } else { format!(", {:.2} ms over", rush_ms - TARGET_MS) },
        if vs_dash <= TARGET_VS_DASH { "met" } else { "MISSED" },
        if vs_dash <= TARGET_VS_DASH {
            String::new()
        } else {
            format!(", {:.2} ms over 2x dash", rush_ms - TARGET_VS_DASH * d.p50.as_secs_f64() * 1e3)
        },
    );

    // 2 and 5. Interactive: start to the first prompt, and the RSS then. rush with a daemon
    // to ask for its prompt status, too.
    let d = Daemon::start();
    let sock = d.socket.display().to_string();
    let rush_daemon = rush.with_env("rush, daemon running", "RUSH_SOCKET", &sock);
    // A socket that takes connections and never answers: were the prompt to wait on the
    // daemon, it would never appear (and the bench would fail).
    let stalled_sock = tmp.path().join("stalled.sock");
    let _stalled = std::os::unix::net::UnixListener::bind(&stalled_sock).expect("bind the stalled socket");
    let rush_stalled =
        rush.with_env("rush, daemon stalled", "RUSH_SOCKET", &stalled_sock.display().to_string());
    let mut prompt_shells = vec![rush.clone(), rush_daemon, bash.clone(), dash.clone(), rush_stalled];
    prompt_shells.extend(brush.clone());
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); prompt_shells.len()];
    let samples = interleave(prompt_shells.len(), PROMPT_WARMUP, PROMPTS, |i| {
        let (mut t, started) = Term::start(&prompt_shells[i]);
        t.wait_prompt(0);
        let d = started.elapsed();
        rss[i].push(t.rss_kib());
        d
    });
    let names: Vec<String> = prompt_shells.iter().map(|s| s.name.clone()).collect();
    let prompt_rows = rows(&names, samples);
    print_rows(
        &format!("interactive, start to first prompt on a pty ({PROMPTS} starts each)"),
        &prompt_rows,
        3,
        ms,
    );
    let (p_rush, p_daemon, p_bash, p_dash) =
        (&prompt_rows[0], &prompt_rows[1], &prompt_rows[2], &prompt_rows[3]);
    let p_stalled = by_name(&prompt_rows, "rush, daemon stalled");
    println!(
        "first prompt: rush/dash {:.2}x ; rush/bash {:.2}x ; rush with a daemon / without {:.2}x ; \
         with a daemon that never answers / without {:.2}x\n",
        ratio(p_rush.p50, p_dash.p50),
        ratio(p_rush.p50, p_bash.p50),
        ratio(p_daemon.p50, p_rush.p50),
        ratio(p_stalled.p50, p_rush.p50)
    );
    let rss_med: Vec<u64> = rss
        .iter_mut()
        .map(|v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect();
    println!("| idle interactive shell after its first prompt | VmRSS (median) | ratio vs dash |");
    println!("|---|---|---|");
    for (n, kib) in names.iter().zip(&rss_med) {
        println!("| {n} | {:.1} MiB | {:.1}x |", *kib as f64 / 1024.0, *kib as f64 / rss_med[3] as f64);
    }
    println!();

    // 3. Per command, interactive: `true` typed, to the next prompt; alternated line by line.
    let perf_on = rush.with_env(
        "rush, perf recording on",
        "XDG_STATE_HOME",
        &tmp.path().join("perf-on").display().to_string(),
    );
    let perf_off = rush
        .with_env("rush, RUSH_PERF=off", "XDG_STATE_HOME", &tmp.path().join("perf-off").display().to_string())
        .with_env("rush, RUSH_PERF=off", "RUSH_PERF", "off");
    // And as a user has it: recording, and a daemon the prompt's status thread asks after
    // every command (in the background).
    let perf_daemon = rush
        .with_env(
            "rush, perf recording on, daemon running",
            "XDG_STATE_HOME",
            &tmp.path().join("perf-d").display().to_string(),
        )
        .with_env("rush, perf recording on, daemon running", "RUSH_SOCKET", &sock);
    let line_shells = [perf_on, perf_off, perf_daemon, bash.clone(), dash.clone()];
    // Fresh shells each round: one process's luck (where its threads run) is not the
    // variant's. Besides the latency, the CPU time the shell (all its threads) spent per
    // line, settled before and after: work done after the prompt is shown counts too.
    let mut samples = vec![Vec::new(); line_shells.len()];
    let mut cpu = vec![0u64; line_shells.len()];
    let settle = || std::thread::sleep(Duration::from_millis(100));
    for _ in 0..LINE_ROUNDS {
        let mut terms: Vec<Term> = line_shells
            .iter()
            .map(|s| {
                let (mut t, _) = Term::start(s);
                t.wait_prompt(0);
                t
            })
            .collect();
        interleave(terms.len(), LINE_WARMUP, 0, |i| terms[i].run_line("true"));
        settle();
        let before: Vec<_> = terms.iter().map(Term::cpu_ns).collect();
        let round = interleave(terms.len(), 0, LINES / LINE_ROUNDS, |i| terms[i].run_line("true"));
        settle();
        for (i, t) in terms.iter().enumerate() {
            cpu[i] += t.cpu_since(&before[i]);
        }
        for (all, r) in samples.iter_mut().zip(round) {
            all.extend(r);
        }
    }
    let cpu_per_line: Vec<Duration> = cpu
        .iter()
        .map(|ns| Duration::from_nanos(ns / (LINE_ROUNDS * (LINES / LINE_ROUNDS)) as u64))
        .collect();
    let typed = LINE_ROUNDS * (LINES / LINE_ROUNDS + LINE_WARMUP);
    let records = tmp.path().join("perf-on/rush/perf/default.jsonl");
    let recorded = std::fs::read_to_string(&records).map(|t| t.lines().count()).unwrap_or(0);
    assert!(
        recorded >= typed,
        "perf recording was on, but {} holds {recorded} records for {typed} lines typed",
        records.display(),
    );
    let off_records = tmp.path().join("perf-off/rush/perf/default.jsonl");
    assert!(!off_records.exists(), "RUSH_PERF=off, yet {} was written", off_records.display());
    let names: Vec<String> = line_shells.iter().map(|s| s.name.clone()).collect();
    let line_rows = rows(&names, samples);
    println!(
        "| interactive, `true` typed to the next prompt ({LINES} lines each, {LINE_ROUNDS} shells) \
         | p50 | p90 | ratio p50 | CPU per line | ratio CPU |"
    );
    println!("|---|---|---|---|---|---|");
    for (r, c) in line_rows.iter().zip(&cpu_per_line) {
        println!(
            "| {} | {} | {} | {:.2}x | {} | {:.2}x |",
            r.what,
            us(r.p50),
            us(r.p90),
            ratio(r.p50, line_rows[1].p50),
            us(*c),
            ratio(*c, cpu_per_line[1])
        );
    }
    println!("(ratios vs {})\n", line_rows[1].what);
    println!(
        "per command: perf recording on / RUSH_PERF=off {:.2}x latency (+{}), {:.2}x CPU (+{}) ; \
         {recorded} records written ; recording and a daemon / RUSH_PERF=off {:.2}x latency, {:.2}x CPU ; \
         rush (recording) / bash {:.2}x latency, {:.2}x CPU\n",
        ratio(line_rows[0].p50, line_rows[1].p50),
        us(line_rows[0].p50.saturating_sub(line_rows[1].p50)),
        ratio(cpu_per_line[0], cpu_per_line[1]),
        us(cpu_per_line[0].saturating_sub(cpu_per_line[1])),
        ratio(line_rows[2].p50, line_rows[1].p50),
        ratio(cpu_per_line[2], cpu_per_line[1]),
        ratio(line_rows[0].p50, line_rows[3].p50),
        ratio(cpu_per_line[0], cpu_per_line[3]),
    );

    // 4. Gating, per command: scripts sourced by `rush -c`, gating off vs on.
    let gate_ok = rush
        .command()
        .args(["-c", "set -o rush-gate; /bin/true"])
        .stdin(Stdio::null())
        .output()
        .expect("rush -c");
    assert_eq!(
        gate_ok.status.code(),
        Some(126),
        "with no daemon, a gated command must be refused: {}",
        describe(&gate_ok)
    );
    // Not under /tmp: the gate asks a person before running a script from a world-writable
    // directory, and this measures its ordinary path.
    let scripts_dir = tempfile::tempdir_in(kernel_tests::repo().join("target")).expect("scripts dir");
    let scripts = scripts_dir.path().to_owned();
    let rush_gated = rush.with_env("rush", "RUSH_SOCKET", &sock);
    let mut gate_rows = Vec::new();
    for (what, line) in [("/bin/true", "/bin/true\n"), (":", ":\n")] {
        let script = scripts.join(if what == ":" { "colon.sh" } else { "true.sh" });
        std::fs::write(&script, line.repeat(SCRIPT_LINES)).unwrap();
        let script = script.display().to_string();
        let off = format!(". {script}");
        let on = format!("set -o rush-gate; . {script}");
        let names = vec![
            format!("`rush -c '. S'`, {SCRIPT_LINES} × `{what}`, gating off"),
            format!("`rush -c 'set -o rush-gate; . S'`, {SCRIPT_LINES} × `{what}`, gating on"),
            format!("`bash S`, {SCRIPT_LINES} × `{what}`"),
        ];
        let samples = interleave(3, SCRIPT_WARMUP, SCRIPT_RUNS, |i| match i {
            0 => timed(rush_gated.command().args(["-c", &off])),
            1 => timed(rush_gated.command().args(["-c", &on])),
            _ => timed(bash.command().arg(&script)),
        });
        gate_rows.push((what, rows(&names, samples)));
    }
    drop(d);
    for (what, r) in &gate_rows {
        print_rows(&format!("a script of {SCRIPT_LINES} `{what}` ({SCRIPT_RUNS} runs each)"), r, 0, ms);
        println!(
            "gating per `{what}`: on/off {:.2}x ; +{} per command\n",
            ratio(r[1].p50, r[0].p50),
            us((r[1].p50.saturating_sub(r[0].p50)) / SCRIPT_LINES as u32),
        );
    }

    println!("summary:");
    println!(
        "  -c true: rush {} p50 ; rush/dash {:.2}x ; rush/bash {:.2}x{}",
        ms(start_rows[0].p50),
        ratio(start_rows[0].p50, start_rows[2].p50),
        ratio(start_rows[0].p50, start_rows[1].p50),
        brush
            .as_ref()
            .map(|_| format!(
                " ; rush/brush {:.2}x",
                ratio(start_rows[0].p50, by_name(&start_rows, "`brush -c true`").p50)
            ))
            .unwrap_or_default()
    );
    println!(
        "  first prompt: rush {} ; rush/dash {:.2}x ; rush/bash {:.2}x ; with daemon/without {:.2}x ; \
         daemon stalled/without {:.2}x",
        ms(p_rush.p50),
        ratio(p_rush.p50, p_dash.p50),
        ratio(p_rush.p50, p_bash.p50),
        ratio(p_daemon.p50, p_rush.p50),
        ratio(p_stalled.p50, p_rush.p50)
    );
    println!(
        "  idle RSS: rush {:.1} MiB ; rush/dash {:.1}x ; rush/bash {:.1}x",
        rss_med[0] as f64 / 1024.0,
        rss_med[0] as f64 / rss_med[3] as f64,
        rss_med[0] as f64 / rss_med[2] as f64
    );
    println!(
        "  per interactive command: perf recording on/off {:.2}x (CPU {:.2}x) ; with a daemon too {:.2}x \
         (CPU {:.2}x) ; rush/bash {:.2}x (CPU {:.2}x)",
        ratio(line_rows[0].p50, line_rows[1].p50),
        ratio(cpu_per_line[0], cpu_per_line[1]),
        ratio(line_rows[2].p50, line_rows[1].p50),
        ratio(cpu_per_line[2], cpu_per_line[1]),
        ratio(line_rows[0].p50, line_rows[3].p50),
        ratio(cpu_per_line[0], cpu_per_line[3])
    );
    for (what, r) in &gate_rows {
        println!("  gating per `{what}`: {:.2}x", ratio(r[1].p50, r[0].p50));
    }
    println!(
        "  wall time of the bench: {:.1} s ; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        load()
    );
}

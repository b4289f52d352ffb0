//! `rush-bench hardening`: what the process hardening of every agent (harden.rs) costs,
//! side by side in one run, alternating the two sides:
//! - a syscall-heavy loop (getppid, stat, open+read+close, clock_gettime) in an agent
//!   under the seccomp filter vs an agent of a trust level without it (same daemon, same
//!   other hardening), and vs the same loop outside any agent;
//! - `rush agent spawn x -- /bin/true` end to end, on a daemon with the hardening (cgroup
//!   and mount namespaces, capabilities, seccomp) vs one with it off.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, HARDENING_OFF, bin, describe};

const ITERS: &str = "200000";

/// One loop's ns per iteration, as the tool measured it.
fn loop_ns(cmd: &mut Command) -> f64 {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("ns/iter ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no measurement: {}", describe(&out)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[trust.noseccomp]\nseccomp = false\n").unwrap();
    let d = Daemon::start_with_config(&format!("[policy]\nfile = \"{}\"\n", policy.display()));
    let tool = bin("rush-test-escape").display().to_string();
    let agent = |name: &str, trust: Option<&str>| {
        let mut c = d.rush_cmd(&["agent", "spawn", name]);
        if let Some(t) = trust {
            c.args(["--trust", t]);
        }
        c.args(["--", &tool, "syscall-loop", ITERS]);
        c
    };
    let (mut filtered, mut unfiltered, mut outside) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        filtered.push(loop_ns(&mut agent("sc-on", None)));
        unfiltered.push(loop_ns(&mut agent("sc-off", Some("noseccomp"))));
        outside.push(loop_ns(Command::new(&tool).args(["syscall-loop", ITERS])));
    }
    let (f, u, o) = (median(filtered), median(unfiltered), median(outside));
    println!("| what | seccomp filter | no filter | outside any agent | filter / no filter |");
    println!("|---|---|---|---|---|");
    println!(
        "| syscall loop (getppid, stat, open+read+close, clock_gettime), ns/iter, median of 7 x {ITERS} | {f:.0} | {u:.0} | {o:.0} | {:.3}x |",
        f / u
    );
    drop(d);

    let hardened = Daemon::start();
    let plain = Daemon::start_with_config(HARDENING_OFF);
    let time = |d: &Daemon| {
        let t = Instant::now();
        let out = d.rush(&["agent", "spawn", "bench", "--", "/bin/true"]);
        assert!(out.status.success(), "{}", describe(&out));
        t.elapsed()
    };
    let (mut a, mut b): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        a.push(time(&hardened));
        b.push(time(&plain));
    }
    a.sort();
    b.sort();
    let (pa, pb) = (a[a.len() / 2], b[b.len() / 2]);
    println!();
    println!("| what | hardened p50 | hardening off p50 | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| `rush agent spawn x -- /bin/true` end to end, 100 alternated | {:.2} ms | {:.2} ms | {:.2}x |",
        pa.as_secs_f64() * 1e3,
        pb.as_secs_f64() * 1e3,
        pa.as_secs_f64() / pb.as_secs_f64()
    );
}

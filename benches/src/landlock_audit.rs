//! `rush-bench landlock-audit`: what bringing Landlock's denials into the audit trail costs
//! (`[landlock] audit_denials`, Linux 6.15+), side by side in one run, alternating the two
//! sides: a daemon with `audit_denials = true` and the kernel's audit on vs one with
//! `audit_denials = false` and the kernel's audit off (set before each side, put back as it
//! was at the end). In an agent confined by Landlock:
//! - a tight loop of opens of a file no token grants: each a denial, with logging on an
//!   AUDIT_LANDLOCK_ACCESS and an AUDIT_SYSCALL record, until the kernel's backlog (64
//!   without auditd) is full and it drops them, which is cheaper than making them;
//! - the same opens 1 ms apart (only the opens timed): the queue drains in between, so
//!   every record is made and sent, the cost of one audited denial;
//! - a tight loop of open + close of a file it may read: no denial, what the kernel's audit
//!   being on costs every system call of the agent (its audit context).

use std::process::Stdio;

use kernel_tests::{Daemon, bin, bin_dir, describe};
use rush_agentd::adapters::audit_netlink;

const OPENS: &str = "200000";
/// The paced loop: this many opens, this many microseconds apart.
const PACED: (&str, &str) = ("300", "1000");
const ROUNDS: usize = 9;

/// (ns per open, opens refused) of one `open-loop` in a fresh agent.
fn open_loop(d: &Daemon, allow: &[String], path: &str, paced: bool) -> (f64, u64) {
    let tool = bin("rush-test-escape").display().to_string();
    let mut args = vec!["agent".to_string(), "spawn".into(), "ll-bench".into()];
    for a in allow {
        args.extend(["--allow".into(), a.clone()]);
    }
    args.extend(["--".into(), tool, "open-loop".into(), path.into()]);
    if paced {
        args.extend([PACED.0.into(), PACED.1.into()]);
    } else {
        args.push(OPENS.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.rush_cmd(&args).stdin(Stdio::null()).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.contains("ns/iter"))?;
        l.split_whitespace().skip_while(|w| *w != key).nth(1)?.parse().ok()
    };
    match (field("ns/iter"), field("refused")) {
        (Some(ns), Some(refused)) => (ns, refused as u64),
        _ => panic!("no measurement: {}", describe(&out)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run() {
    let abi = rush_agentd::adapters::landlock::abi().unwrap_or(0);
    if abi < 7 {
        println!("SKIP: Landlock ABI {abi}: denials are audited from ABI 7 (Linux 6.15) on");
        return;
    }
    let before = audit_netlink::status().expect("the kernel's audit status (AUDIT_GET)");
    let landlock = "[files]\nenforcement = \"landlock\"\n";
    let on = Daemon::start_with_config(landlock);
    let off = Daemon::start_with_config(&format!("{landlock}[landlock]\naudit_denials = false\n"));

    let dir = tempfile::Builder::new().prefix("rush-ll-bench-").tempdir_in("/tmp").unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/f"), "granted").unwrap();
    std::fs::write(dir.path().join("secret"), "refused").unwrap();
    let allow =
        [format!("{}:read,exec", bin_dir().display()), format!("{}:read", dir.path().join("a").display())];
    let (granted, refused) = (dir.path().join("a/f"), dir.path().join("secret"));
    let (granted, refused) = (granted.to_str().unwrap(), refused.to_str().unwrap());

    let side = |d: &Daemon, audit: bool, path: &str, paced: bool| {
        audit_netlink::set_enabled(audit).expect("AUDIT_SET");
        open_loop(d, &allow, path, paced)
    };
    // (refused tight, refused paced, granted tight) x (on, off)
    let mut ns: [[Vec<f64>; 2]; 3] = Default::default();
    let (mut lost, mut denials) = (0u32, 0u64);
    for _ in 0..ROUNDS {
        for (row, (path, paced)) in
            [(refused, false), (refused, true), (granted, false)].into_iter().enumerate()
        {
            for (col, (d, audit)) in [(&on, true), (&off, false)].into_iter().enumerate() {
                let before = audit_netlink::status().map(|s| s.lost).unwrap_or(0);
                let (t, n) = side(d, audit, path, paced);
                if audit && path == refused {
                    lost += audit_netlink::status().map(|s| s.lost).unwrap_or(0).wrapping_sub(before);
                    denials += n;
                }
                if path == granted {
                    assert_eq!(n, 0, "the granted file must open");
                } else {
                    assert!(
                        n > 0 && (paced || n.to_string() == OPENS),
                        "every open of the secret is refused"
                    );
                }
                ns[row][col].push(t);
            }
        }
    }
    // What the daemon wrote: its deny limiter keeps 200 at once, then 50 a second.
    let rows = on
        .audit()
        .iter()
        .filter(|r| r["event"]["kind"] == "file_deny" && r["event"]["path"] == refused)
        .count();
    let suppressed: u64 = on
        .audit()
        .iter()
        .filter(|r| r["event"]["kind"] == "denials_suppressed")
        .filter_map(|r| r["event"]["count"].as_u64())
        .sum();
    drop((on, off));
    if let Err(e) = audit_netlink::set_enabled(before.enabled > 0) {
        eprintln!("could not put the kernel's audit back (enabled={}): {e}", before.enabled);
    }

    println!(
        "| open() in a Landlock agent, ns per open, median of {ROUNDS} loops | logging on (audit on) | logging off (audit off) | on / off |"
    );
    println!("|---|---|---|---|");
    let what = [
        format!("refused (EACCES), {OPENS} back to back"),
        format!("refused (EACCES), {} opens {} us apart (each record made)", PACED.0, PACED.1),
        format!("granted (open + close), {OPENS} back to back"),
    ];
    for (row, what) in what.iter().enumerate() {
        let [a, b] = ns[row].clone();
        let (a, b) = (median(a), median(b));
        println!("| {what} | {a:.0} | {b:.0} | {:.2}x |", a / b);
    }
    println!();
    println!(
        "{denials} refusals with logging on: the kernel dropped {lost} audit records (each denial makes 4: access, syscall, proctitle, end of event; backlog limit {}, auditd pid {}); \
         the daemon stored {rows} file_deny rows of them and counted {suppressed} more as suppressed (its deny limiter)",
        before.backlog_limit, before.auditd_pid
    );
}

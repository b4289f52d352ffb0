//! The audit trail in the daemon's state database, through the real daemon and CLI: it
//! survives a crash of the daemon, its filters select exactly what they name, `--export`
//! is JSON lines, and retention prunes it at start.

use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn host_ready() -> bool {
    require(is_root(), "root (the daemon creates cgroups and loads BPF programs)")
}

fn spawn(d: &Daemon, name: &str) {
    let out = d.rush(&["agent", "spawn", name, "--", "/bin/true"]);
    assert!(out.status.success(), "spawn {name}: {}", describe(&out));
}

/// `rush --json audit ARGS`: the records.
fn audit(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    d.rush_json(&all).as_array().cloned().unwrap_or_default()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().expect("seq")).collect()
}

/// `rush audit --export ARGS`: one JSON object per line, parsed.
fn export(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--export"];
    all.extend_from_slice(args);
    let out = d.rush(&all);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

#[test]
fn audit_records_survive_kill9_and_filter_by_kind_and_agent() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    spawn(&d, "x");
    spawn(&d, "y");
    let x_spawns = audit(&d, &["--kind", "spawn", "--agent", "x"]);
    assert_eq!(x_spawns.len(), 1, "{x_spawns:?}");
    assert_eq!((&x_spawns[0]["agent"], &x_spawns[0]["event"]["kind"]), (&"x".into(), &"spawn".into()));
    let x_all = audit(&d, &["--kind", "spawn,exit", "--agent", "x"]);
    let kinds: Vec<&str> = x_all.iter().map(|r| r["event"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["spawn", "exit"], "{x_all:?}");
    let before = audit(&d, &[]);

    d.kill9();
    d.restart();
    let after = audit(&d, &[]);
    assert_eq!(seqs(&after), seqs(&before), "the records survived the crash");
    assert_eq!(audit(&d, &["--kind", "spawn", "--agent", "x"]), x_spawns);
    spawn(&d, "z");
    let z = audit(&d, &["--kind", "spawn", "--agent", "z"]);
    let last_before = *seqs(&before).last().unwrap();
    assert!(seqs(&z)[0] > last_before, "numbering goes on after a restart: {z:?} after {last_before}");

    // --export: every matching record as a JSON line, oldest first.
    let lines = export(&d, &[]);
    assert_eq!(lines, audit(&d, &[]));
    assert!(seqs(&lines).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(export(&d, &["--kind", "exit", "--agent", "y"]).len(), 1);
    // An unknown kind is refused by name.
    let bad = d.rush(&["audit", "--kind", "spwn"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("spwn"),
        "{}",
        describe(&bad)
    );
}

#[test]
fn audit_retention_keeps_the_newest_max_records_from_the_next_start() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start_with_config("[audit]\nmax_records = 5\n");
    for i in 0..4 {
        spawn(&d, &format!("r{i}"));
    }
    let before = seqs(&audit(&d, &[]));
    assert!(before.len() >= 8, "a spawn and an exit each: {before:?}");
    d.kill9();
    d.restart();
    // Retention runs at start, beside the API.
    let pruned = wait_until(Duration::from_secs(10), || audit(&d, &[]).len() <= 5);
    let kept = seqs(&audit(&d, &[]));
    assert!(pruned, "more than 5 records kept: {kept:?}\n{}", d.log_text());
    assert_eq!(kept, before[before.len() - kept.len()..], "the newest are kept");
    spawn(&d, "r4");
    let now = seqs(&audit(&d, &[]));
    assert!(now.len() <= 5 + 2 && now.len() > kept.len(), "{now:?}");
}

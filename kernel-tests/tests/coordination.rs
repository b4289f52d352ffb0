//! Coordination between agents on the real daemon (host tier): claims decided by one
//! compare-and-swap under real concurrency, leases that lapse, holders that exit or are
//! killed, a daemon killed mid-claim, results and delegated tasks between real agents.
//! The kernel side of path claims (EPERM under BPF LSM) is in `files.rs`, run in the guests;
//! here (no BPF LSM on the host) path claims are advisory and `--enforce` refuses them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use kernel_tests::*;
use rush_proto::Request;
use rush_proto::client::Client;
use rush_proto::coordination::ClaimRequest;
use serde_json::Value;

fn ready() -> bool {
    require(is_root(), "root (these tests start the daemon and agents)")
}

#[test]
fn a_hundred_clients_race_for_ten_tasks_and_exactly_ten_win_fifty_times_over() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let agents = Arc::new(d.sleepers("racer", 100));
    const ROUNDS: usize = 50;
    // One connection per client, opened before the race: the race is in the claims.
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let (socket, agents, barrier) = (d.socket.clone(), agents.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                (0..ROUNDS)
                    .map(|round| {
                        barrier.wait();
                        let task = format!("r{round}-t{}", i % 10);
                        let got = claim_outcome(client.call(claim_request(&agents[i], &task, &[])).unwrap());
                        (round, task, agents[i].clone(), got)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    for round in 0..ROUNDS {
        let mut winners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut told: HashMap<String, Vec<String>> = HashMap::new();
        for (_, task, agent, got) in results.iter().filter(|r| r.0 == round) {
            if got.won {
                assert_eq!(&got.claim.agent, agent);
                winners.entry(task.clone()).or_default().push(agent.clone());
            } else {
                told.entry(task.clone()).or_default().push(got.claim.agent.clone());
            }
        }
        assert_eq!(winners.len(), 10, "round {round}: {winners:?}");
        for (task, won) in &winners {
            assert_eq!(won.len(), 1, "round {round}: {task} had {} winners: {won:?}", won.len());
            // Every loser was told who won.
            let losers = &told[task];
            assert_eq!(losers.len(), 9, "round {round} {task}");
            assert!(
                losers.iter().all(|w| w == &won[0]),
                "round {round} {task}: told {losers:?}, won {won:?}"
            );
        }
    }
    assert_eq!(d.live_claims().len(), 10 * ROUNDS);
}

#[test]
fn a_lease_lapses_on_the_daemons_clock_and_the_next_holder_gets_a_higher_fencing_token() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    d.sleepers("l", 2);
    let first = d.rush_json(&["agent", "claim", "job", "--agent", "l0", "--ttl", "1s"]);
    assert_eq!(first["won"], true, "{first}");
    let fencing = first["claim"]["fencing"].as_u64().unwrap();
    let lost = d.rush(&["agent", "claim", "job", "--agent", "l1"]);
    assert_eq!(lost.status.code(), Some(1), "{}", describe(&lost));
    let err = String::from_utf8_lossy(&lost.stderr);
    assert!(err.contains("held by agent l0"), "{err}");
    // Lapsed: swept (the holder is told nothing, its renew fails), the next claimer wins.
    assert!(wait_until(Duration::from_secs(5), || d.live_claims().is_empty()), "{:?}", d.live_claims());
    let renew = d.rush(&["agent", "renew", "job", "--agent", "l0"]);
    assert_eq!(renew.status.code(), Some(1), "{}", describe(&renew));
    let second = d.rush_json(&["agent", "claim", "job", "--agent", "l1", "--ttl", "1h"]);
    assert_eq!(second["won"], true);
    assert!(second["claim"]["fencing"].as_u64().unwrap() > fencing);
    // A renew moves the deadline.
    let before = second["claim"]["expires_unix_ms"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let renewed = d.rush_json(&["agent", "renew", "job", "--agent", "l1", "--ttl", "2h"]);
    assert!(renewed["claim"]["expires_unix_ms"].as_u64().unwrap() > before + 3_000_000);
    let kinds: Vec<String> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"]["kind"] == "claim")
        .map(|r| r["event"]["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["acquired", "expired", "acquired", "renewed"]);
}

#[test]
fn claims_are_released_when_the_holder_exits_is_killed_or_is_killed_with_sigkill() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    d.sleepers("h", 4);
    for (task, holder) in [("by-kill", "h0"), ("by-sigkill", "h1"), ("by-exit", "h2")] {
        assert_eq!(d.rush_json(&["agent", "claim", task, "--agent", holder])["won"], true);
    }
    // An agent that claims for itself and exits.
    let rush = bin("rush");
    let script = format!("{} agent claim self-held && sleep 0.2", rush.display());
    let out = d.rush(&["agent", "spawn", "selfish", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(d.rush(&["agent", "kill", "h0"]).status.success());
    let pid = d.rush_json(&["agent", "status", "h1"])["pid"].as_i64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let pid = d.rush_json(&["agent", "status", "h2"])["pid"].as_i64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || d.live_claims().is_empty()), "{:?}", d.live_claims());
    let ended: Vec<(String, String)> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"]["kind"] == "claim" && r["event"]["action"] == "holder_exited")
        .map(|r| (r["event"]["task"].as_str().unwrap().into(), r["agent"].as_str().unwrap().into()))
        .collect();
    for want in [("by-kill", "h0"), ("by-sigkill", "h1"), ("by-exit", "h2"), ("self-held", "selfish")] {
        assert!(ended.contains(&(want.0.into(), want.1.into())), "{want:?} not in {ended:?}");
    }
    // Free again.
    assert_eq!(d.rush_json(&["agent", "claim", "by-sigkill", "--agent", "h3"])["won"], true);
}

#[test]
fn a_daemon_killed_during_claims_keeps_every_acknowledged_one_and_grants_none_twice() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start();
    let agents = d.sleepers("k", 4);
    // Four clients claim tasks as fast as they can while the daemon is killed under them.
    let threads: Vec<_> = agents
        .iter()
        .cloned()
        .map(|agent| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let Ok(mut client) = Client::connect(&socket) else { return acked };
                for n in 0.. {
                    match client.call(claim_request(&agent, &format!("task-{}", n % 40), &[])) {
                        Ok(r) => {
                            let o = claim_outcome(r);
                            if o.won {
                                acked.push((o.claim.task, agent.clone(), o.claim.fencing));
                            }
                        }
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    let acked: Vec<(String, String, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(acked.len() >= 10, "too few claims made before the kill to test anything: {}", acked.len());
    d.restart();
    let live = d.live_claims();
    let by_task: HashMap<String, (String, u64)> = live
        .iter()
        .map(|c| {
            (
                c["task"].as_str().unwrap().into(),
                (c["agent"].as_str().unwrap().into(), c["fencing"].as_u64().unwrap()),
            )
        })
        .collect();
    for (task, agent, fencing) in &acked {
        assert_eq!(by_task.get(task), Some(&(agent.clone(), *fencing)), "acknowledged claim of {task} lost");
    }
    // After the restart the store still decides: a claim of a held task loses.
    let (task, (holder, _)) = by_task.iter().next().unwrap();
    let other = agents.iter().find(|a| *a != holder).unwrap();
    let again = d.rush(&["agent", "claim", task, "--agent", other]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
}

#[test]
fn path_claims_without_bpf_lsm_are_advisory_and_enforce_refuses_them() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    if d.lsm_attached() {
        eprintln!("BPF LSM attached here: the kernel-enforced case is in files.rs");
        return;
    }
    d.sleepers("p", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = d.rush(&["--json", "agent", "claim", "parser", "--agent", "p0", "--paths", path]);
    assert!(out.status.success(), "{}", describe(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["claim"]["enforcement"], "advisory", "{got}");
    assert!(got["warning"].as_str().unwrap().contains("advisory"), "{got}");
    let strict = d.rush(&["agent", "claim", "other", "--agent", "p0", "--paths", path, "--enforce"]);
    assert_eq!(strict.status.code(), Some(1));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("--enforce") && err.contains("BPF LSM"), "{err}");
    let doctor = d.doctor();
    let g = doctor["guarantees"].as_array().unwrap().iter().find(|g| g["name"] == "path claims").cloned();
    assert_eq!(g.as_ref().map(|g| g["holds"].clone()), Some(Value::Bool(false)), "{doctor}");
}

/// The daemon checks what `rush` checks too: a client in another language gets the same
/// refusals, each naming the field.
#[test]
fn the_daemon_refuses_bad_input_itself() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    d.sleepers("v", 1);
    let mut client = Client::connect(&d.socket).unwrap();
    let bad = |task: &str, paths: &[&str], ttl: Option<u64>| {
        Request::Claim(ClaimRequest {
            agent: Some("v0".into()),
            task: task.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ttl_secs: ttl,
            enforce: false,
        })
    };
    for (req, want) in [
        (bad("", &[], None), "task is empty"),
        (bad("a b", &[], None), "contains ' '"),
        (bad("t", &[], Some(0)), "at least 1s"),
        (bad("t", &[], Some(40 * 86400)), "30 days"),
        (bad("t", &["relative"], None), "not absolute"),
        (bad("t", &["/tmp/[x"], None), "bad glob"),
    ] {
        let e = client.call(req).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn bad_input_is_one_line_naming_it() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    d.sleepers("b", 1);
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'x'; 600 << 10]).unwrap();
    let big = big.path().to_str().unwrap().to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agent", "claim", "", "--agent", "b0"], "task is empty"),
        (vec!["agent", "claim", "t", "--agent", "b0", "--ttl", "0s"], "at least 1s"),
        (vec!["agent", "claim", "t", "--agent", "b0", "--ttl", "100d"], "30 days"),
        (vec!["agent", "claim", "t", "--agent", "b0", "--paths", "/tmp/[x"], "bad glob"),
        (vec!["agent", "claim", "t", "--agent", "b0", "--paths", "/nonexistent/x"], "does not exist"),
        (vec!["agent", "claim", "t", "--agent", "nobody"], "no agent named \"nobody\""),
        (vec!["agent", "publish", "k", "--agent", "b0", "--file", &big], "max_result_bytes"),
    ];
    for (args, want) in cases {
        let out = d.rush(&args);
        // 2: `rush` saw it was wrong before asking (a usage error); 1: the daemon refused it.
        assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Real agents, each calling `rush` as itself: A broadcasts and claims, B sees the intent
/// and who holds the path, delegates a review to a reviewer that waits on its inbox, and
/// the reviewer's result flows back to A.
#[test]
fn agents_coordinate_as_themselves_intents_claims_delegation_and_results() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("parser")).unwrap();
    let parser = work.path().join("parser");
    let parser = parser.to_str().unwrap();
    let rush = bin("rush");
    let rush = rush.to_str().unwrap();
    // The reviewer waits for a task, answers it, and exits.
    let reviewer = format!(
        "set -e; task=$({rush} --json agent inbox --wait --timeout 60s); \
         id=$(echo \"$task\" | sed -n 's/.*\"id\": *\\([0-9]*\\).*/\\1/p' | head -1); \
         printf 'LGTM from reviewer' | {rush} agent publish task/$id --stdin --for b"
    );
    let out = d.rush(&["agent", "spawn", "reviewer", "--detach", "--", "sh", "-c", &reviewer]);
    assert!(out.status.success(), "{}", describe(&out));
    let a_script = format!(
        "{rush} agent broadcast 'optimizing parser' --paths {parser} && {rush} agent claim parser --paths {parser} \
         && sleep 600"
    );
    let out = d.rush(&["agent", "spawn", "a", "--detach", "--", "sh", "-c", &a_script]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(10), || d.live_claims().len() == 1), "a never claimed");
    let b_script = format!(
        "{rush} agent query-intents --paths {parser}/lex.rs; {rush} agent claims --path {parser}/lex.rs; \
         {rush} agent claim parser; echo claim-exit=$?; \
         {rush} agent delegate 'review parser changes' reviewer --wait --timeout 60s"
    );
    let out = d.rush(&["agent", "spawn", "b", "--", "sh", "-c", &b_script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout.contains("optimizing parser"), "{stdout}");
    assert!(stdout.contains("claim-exit=1"), "{stdout}");
    assert!(stderr.contains("held by agent a"), "{stderr}");
    assert!(stdout.trim_end().ends_with("LGTM from reviewer"), "{stdout}");
    let kinds: Vec<String> = d
        .audit()
        .into_iter()
        .map(|r| r["event"]["kind"].as_str().unwrap_or_default().to_owned())
        .filter(|k| ["intent", "claim", "task", "result"].contains(&k.as_str()))
        .collect();
    for k in ["intent", "claim", "task", "result"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in the audit trail: {kinds:?}");
    }
    // An agent cannot act for another one.
    let out = d.rush(&["agent", "spawn", "c", "--", rush, "agent", "release", "parser", "--agent", "a"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("acts only on itself"), "{}", describe(&out));
    assert_eq!(d.live_claims().len(), 1);
}

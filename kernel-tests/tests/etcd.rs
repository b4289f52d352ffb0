//! Coordination across machines (host tier): a real 3-member etcd cluster on loopback
//! (Debian's etcd-server) and two daemons sharing it, as two machines would (two state
//! dirs, sockets and node names on this one). Claims decided by etcd's transactions under
//! real concurrency, seen and refused through the other daemon, surviving the loss of the
//! etcd leader; a daemon stopped past its node lease loses its claims to the other one's
//! agents (higher fencing token) and learns it on waking; no etcd, one line naming it.
//!
//! The tests share the machine's two cores with the cluster and four daemons at a time at
//! most: they take turns (a lock), whatever `--test-threads` says, so that a lease TTL of
//! 2 s measures the daemon, not the scheduler.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kernel_tests::*;
use rush_proto::client::Client;
use rush_proto::coordination::{ClaimOutcome, Fence, PublishRequest};
use rush_proto::{Request, Response};
use serde_json::Value;

static TURN: Mutex<()> = Mutex::new(());

/// Two daemons on one etcd cluster, and the turn they hold.
struct Pair {
    d1: Daemon,
    d2: Daemon,
    etcd: EtcdCluster,
    _turn: MutexGuard<'static, ()>,
}

fn pair(lease_ttl: &str) -> Option<Pair> {
    if !require(is_root(), "root (these tests start daemons and agents)") {
        return None;
    }
    if !require(std::path::Path::new("/usr/bin/etcd").exists(), "/usr/bin/etcd (Debian's etcd-server)") {
        return None;
    }
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = EtcdCluster::start(3);
    let config = etcd.config(lease_ttl);
    let d1 = Daemon::start_with_config(&config);
    let d2 = Daemon::start_with_config(&config);
    Some(Pair { d1, d2, etcd, _turn: turn })
}

fn claim(d: &Daemon, agent: &str, task: &str) -> ClaimOutcome {
    claim_outcome(Client::connect(&d.socket).unwrap().call(claim_request(agent, task, &[])).unwrap())
}

fn holder(d: &Daemon, task: &str) -> Option<(String, u64)> {
    d.live_claims()
        .into_iter()
        .find(|c| c["task"] == task)
        .map(|c| (c["agent"].as_str().unwrap().to_owned(), c["fencing"].as_u64().unwrap()))
}

fn guarantee(d: &Daemon, name: &str) -> Value {
    let doctor = d.doctor();
    doctor["guarantees"].as_array().unwrap().iter().find(|g| g["name"] == name).cloned().unwrap_or_else(
        || {
            panic!("no guarantee {name:?} in {doctor}");
        },
    )
}

#[test]
fn a_hundred_clients_on_two_daemons_race_for_ten_tasks_and_exactly_ten_win() {
    let Some(p) = pair("10s") else { return };
    let started = Instant::now();
    let mut agents = p.d1.sleepers("a", 50);
    agents.extend(p.d2.sleepers("b", 50));
    let agents = Arc::new(agents);
    const ROUNDS: usize = 50;
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            // a0..a49 act through daemon 1, b0..b49 through daemon 2.
            let socket = if i < 50 { p.d1.socket.clone() } else { p.d2.socket.clone() };
            let (agents, barrier) = (agents.clone(), barrier.clone());
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
    let raced = started.elapsed();
    let mut fencing = std::collections::HashSet::new();
    for round in 0..ROUNDS {
        let mut winners: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut told: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for (_, task, agent, got) in results.iter().filter(|r| r.0 == round) {
            if got.won {
                assert_eq!(&got.claim.agent, agent);
                winners.entry(task.clone()).or_default().push((agent.clone(), got.claim.fencing));
            } else {
                told.entry(task.clone()).or_default().push((got.claim.agent.clone(), got.claim.fencing));
            }
        }
        assert_eq!(winners.len(), 10, "round {round}: {winners:?}");
        for (task, won) in &winners {
            assert_eq!(won.len(), 1, "round {round}: {task} had {} winners: {won:?}", won.len());
            // Every loser was told who won, and the winner's fencing token.
            let losers = &told[task];
            assert_eq!(losers.len(), 9, "round {round} {task}");
            assert!(
                losers.iter().all(|w| w == &won[0]),
                "round {round} {task}: told {losers:?}, won {won:?}"
            );
            assert!(fencing.insert(won[0].1), "fencing token {} given twice", won[0].1);
        }
    }
    // Both daemons see the same 200 holdings.
    let by_task = |d: &Daemon| -> BTreeMap<String, (String, u64)> {
        d.live_claims()
            .into_iter()
            .map(|c| {
                let who = (c["agent"].as_str().unwrap().to_owned(), c["fencing"].as_u64().unwrap());
                (c["task"].as_str().unwrap().to_owned(), who)
            })
            .collect()
    };
    let (one, two) = (by_task(&p.d1), by_task(&p.d2));
    assert_eq!(one.len(), 10 * ROUNDS);
    assert_eq!(one, two);
    eprintln!(
        "{ROUNDS} rounds of 100 claims through two daemons on etcd: {raced:?} (spawning the 100 agents included)"
    );
}

#[test]
fn a_claim_made_through_one_daemon_is_seen_and_refused_through_the_other() {
    let Some(p) = pair("10s") else { return };
    let (d1, d2) = (&p.d1, &p.d2);
    d1.sleepers("holder", 1);
    d2.sleepers("other", 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lex.rs"), "fn lex() {}\n").unwrap();
    let parser = dir.path().to_str().unwrap();
    let won = claim_outcome(
        Client::connect(&d1.socket).unwrap().call(claim_request("holder0", "parser", &[parser])).unwrap(),
    );
    assert!(won.won, "{won:?}");

    // Daemon 2 sees the claim, with its paths and the same fencing token.
    let seen = d2.live_claims();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0]["task"].as_str(), seen[0]["agent"].as_str()), (Some("parser"), Some("holder0")));
    assert_eq!(seen[0]["fencing"].as_u64(), Some(won.claim.fencing));
    let lex = dir.path().join("lex.rs");
    let by_path = d2.rush_json(&["agent", "claims", "--path", lex.to_str().unwrap()]);
    assert_eq!(by_path[0]["agent"], "holder0", "{by_path}");
    // Its agent cannot have it; it is told who holds it.
    let lost = claim(d2, "other0", "parser");
    assert!(!lost.won);
    assert_eq!((lost.claim.agent.as_str(), lost.claim.fencing), ("holder0", won.claim.fencing));
    let cli = d2.rush(&["agent", "claim", "parser", "--agent", "other0"]);
    assert_eq!(cli.status.code(), Some(1), "{}", describe(&cli));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("held by agent holder0"), "{}", describe(&cli));

    if d2.lsm_attached() {
        // The other daemon mirrored the claim into its kernel: its agent's write is refused.
        let (tool, bins) = (bin("rush-test-fs"), format!("{}:read,exec", bin_dir().display()));
        let rw = format!("{parser}:read,write,create,delete");
        let target = lex.to_str().unwrap();
        let mut n = 0;
        let denied = wait_until(Duration::from_secs(5), || {
            n += 1;
            let name = format!("writer{n}");
            let out = d2.rush(&[
                "agent",
                "spawn",
                &name,
                "--allow",
                &bins,
                "--allow",
                &rw,
                "--",
                tool.to_str().unwrap(),
                "write",
                target,
                "+x",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "errno EPERM"
        });
        assert!(denied, "daemon 2's agent could write in daemon 1's claim");
        assert_eq!(std::fs::read_to_string(&lex).unwrap(), "fn lex() {}\n");
    } else {
        // No BPF LSM here: the claim is exclusive, its paths advisory (said so).
        assert_eq!(won.claim.enforcement, rush_proto::coordination::ClaimEnforcement::Advisory);
        assert!(won.warning.as_deref().is_some_and(|w| w.contains("advisory")), "{won:?}");
        eprintln!(
            "no BPF LSM on this kernel: the kernel side of a claim across daemons runs where it attaches"
        );
    }

    // One agent name on two nodes is two agents: the same name on daemon 2 does not hold it.
    d2.sleepers("holder", 1);
    let twin = claim(d2, "holder0", "parser");
    assert!(!twin.won, "daemon 2's holder0 was taken for daemon 1's: {twin:?}");
    // Intents, results (with their content) and tasks cross too.
    let out = d1.rush(&["agent", "broadcast", "optimizing parser", "--agent", "holder0", "--paths", parser]);
    assert!(out.status.success(), "{}", describe(&out));
    let intents = d2.rush_json(&["agent", "query-intents"]);
    assert_eq!(intents[0]["text"], "optimizing parser", "{intents}");
    let content = "parser is 2x faster";
    let mut c1 = Client::connect(&d1.socket).unwrap();
    let published = c1.call(Request::Publish(PublishRequest {
        agent: Some("holder0".into()),
        key: "bench".into(),
        content_base64: b64(content.as_bytes()),
        for_agent: None,
        fence: Some(Fence { task: "parser".into(), fencing: won.claim.fencing }),
    }));
    assert!(matches!(published, Ok(Response::Published { .. })), "{published:?}");
    let read = d2.rush(&["agent", "results", "bench"]);
    assert!(String::from_utf8_lossy(&read.stdout).contains(content), "{}", describe(&read));

    // Released through daemon 1: daemon 2's agent has it, with a higher fencing token.
    assert!(d1.rush(&["agent", "release", "parser", "--agent", "holder0"]).status.success());
    let next = claim(d2, "other0", "parser");
    assert!(next.won && next.claim.fencing > won.claim.fencing, "{next:?}");
    let g = guarantee(d1, "coordination store");
    assert_eq!(g["holds"], true, "{g}");
    assert!(g["detail"].as_str().unwrap().contains("etcd"), "{g}");
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn claims_are_still_decided_when_the_etcd_leader_is_killed() {
    let Some(mut p) = pair("10s") else { return };
    p.d1.sleepers("a", 1);
    p.d2.sleepers("b", 1);
    assert!(claim(&p.d1, "a0", "held").won);
    let leader = p.etcd.leader().expect("a leader");
    p.etcd.kill(leader);
    let killed = Instant::now();
    // A new claim is decided (won), through either daemon, within a few seconds.
    let mut decided = None;
    while killed.elapsed() < Duration::from_secs(10) {
        let mut c = Client::connect(&p.d2.socket).unwrap();
        if let Ok(r) = c.call(claim_request("b0", "after", &[])) {
            decided = Some((claim_outcome(r), killed.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, took) =
        decided.unwrap_or_else(|| panic!("no claim decided 10 s after the leader died:\n{}", p.etcd.logs()));
    assert!(after.won, "{after:?}");
    assert!(took < Duration::from_secs(5), "a claim took {took:?} after the leader died");
    // A held one still loses, told the holder; both daemons agree.
    let lost = claim(&p.d2, "b0", "held");
    assert!(!lost.won && lost.claim.agent == "a0", "{lost:?}");
    assert_eq!(holder(&p.d1, "after").map(|h| h.0).as_deref(), Some("b0"));
    let new_leader = p.etcd.leader();
    assert!(new_leader.is_some_and(|l| l != leader), "leader {leader} killed, now {new_leader:?}");
    eprintln!("leader killed: the next claim decided after {took:?}");
}

#[test]
fn a_daemon_stopped_past_its_lease_loses_its_claims_and_learns_it_on_waking() {
    let Some(p) = pair("2s") else { return };
    let (d1, d2) = (&p.d1, &p.d2);
    d1.sleepers("a", 1);
    d2.sleepers("b", 1);
    let first = claim(d1, "a0", "job");
    assert!(first.won);
    let pid = nix::unistd::Pid::from_raw(d1.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    // Its node lease lapses at etcd: the claim goes with it (the claim's own TTL is 30 min).
    let gone = wait_until(Duration::from_secs(10), || holder(d2, "job").is_none());
    let lapsed = stopped.elapsed();
    let second = gone.then(|| claim(d2, "b0", "job"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(gone, "daemon 1's claim outlived its stopped daemon's 2 s lease: {:?}", d2.live_claims());
    let second = second.unwrap();
    assert!(second.won, "{second:?}");
    assert!(second.claim.fencing > first.claim.fencing, "{second:?} after {first:?}");

    // Awake, daemon 1 says who holds it now, and refuses its agent's stale fencing token.
    let woke = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || holder(d1, "job") == Some(("b0".into(), second.claim.fencing))),
        "daemon 1 does not see b0's claim: {:?}",
        d1.live_claims()
    );
    let stale = Client::connect(&d1.socket).unwrap().call(Request::Publish(PublishRequest {
        agent: Some("a0".into()),
        key: "job-output".into(),
        content_base64: b64(b"late work"),
        for_agent: None,
        fence: Some(Fence { task: "job".into(), fencing: first.claim.fencing }),
    }));
    let err = format!("{stale:?}");
    assert!(stale.is_err() && err.contains("stale fencing token"), "{err}");
    assert!(err.contains("b0"), "{err}");
    // Its own renew fails; it makes new claims on a new node lease, said loudly in its log.
    let renew = d1.rush(&["agent", "renew", "job", "--agent", "a0"]);
    assert_eq!(renew.status.code(), Some(1), "{}", describe(&renew));
    assert!(claim(d1, "a0", "next").won);
    assert!(d1.log_text().contains("node lease EXPIRED"), "{}", d1.log_text());
    eprintln!(
        "claim gone {lapsed:?} after SIGSTOP (lease 2 s); daemon 1 up to date {:?} after SIGCONT",
        woke.elapsed()
    );
}

#[test]
fn with_etcd_unreachable_a_claim_fails_with_one_line_naming_it() {
    let Some(mut p) = pair("10s") else { return };
    p.d1.sleepers("a", 1);
    assert!(claim(&p.d1, "a0", "before").won);
    p.etcd.kill_all();
    let start = Instant::now();
    let out = p.d1.rush(&["agent", "claim", "t", "--agent", "a0"]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("etcd at") && err.contains(&p.etcd.endpoints()[0]) && err.contains("unreachable"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "the claim took {took:?} to fail");
    // No silent local answer for reads either; doctor says the store is not answering.
    let list = p.d1.rush(&["agent", "claims"]);
    assert_eq!(list.status.code(), Some(1), "{}", describe(&list));
    assert_eq!(guarantee(&p.d1, "coordination store")["holds"], false);
    eprintln!("etcd gone: the claim failed after {took:?}: {}", err.trim());
}

/// `rush-agentd` with this config and private paths, expected to refuse to start: its
/// stderr.
fn refused_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(bin("rush-agentd"))
        .arg("--config")
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("agentd.sock"))
        .args([
            "--pin-dir",
            "/sys/fs/bpf/rush-test-never",
            "--cgroup-parent",
            "rush-test-never",
            "--ephemeral",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "rush-agentd started with {config:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn https_endpoints_with_a_ca_work_and_a_bad_coordination_config_stops_the_daemon_naming_the_key() {
    if !require(is_root(), "root")
        || !require(std::path::Path::new("/usr/bin/etcd").exists(), "/usr/bin/etcd")
    {
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = EtcdCluster::start_tls(1);
    let d = Daemon::start_with_config(&etcd.config("10s"));
    d.sleepers("t", 1);
    let won = claim(&d, "t0", "over-tls");
    assert!(won.won, "{won:?}");
    let g = guarantee(&d, "coordination store");
    assert_eq!(g["holds"], true, "{g}");
    assert!(g["detail"].as_str().unwrap().contains("https://"), "{g}");

    let err = refused_start("[coordination]\nbackend = \"zookeeper\"\n");
    assert!(err.contains("coordination.backend"), "{err}");
    let err = refused_start(
        "[coordination]\nbackend = \"etcd\"\netcd_endpoints = [\"https://127.0.0.1:2379\"]\n\
         etcd_ca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert!(err.contains("coordination.etcd_ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
    assert!(
        !std::path::Path::new("/sys/fs/bpf/rush-test-never").exists(),
        "it loaded programs before refusing"
    );
}

//! Crash safety of the daemon's state, in the guests (BPF LSM: grants live in the kernel's
//! grant map). A stream of 1,000 spawn / grant / revoke requests, the daemon killed with
//! SIGKILL at random points inside it and restarted each time; afterwards every
//! acknowledged request is there (agents running, granted tokens listed, revoked ones
//! gone), and `rush doctor` finds `state.db`, the daemon and the kernel's map in agreement.
//! Under RUSH_TEST_STRICT=1 a kernel without BPF LSM fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kernel_tests::*;
use serde_json::Value;

/// xorshift64*: reproducible from the seed printed at the start, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Present,
    Absent,
    /// Its request was cut by a kill: either outcome is right.
    Unknown,
}

const REQUESTS: usize = 1000;
const FILES: usize = 16;
const MAX_AGENTS: usize = 8;

fn doctor_line(d: &Daemon, name: &str) -> Value {
    let doctor = d.doctor();
    doctor["guarantees"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no doctor line {name:?}: {doctor}"))
}

#[test]
fn acknowledged_requests_survive_kill9_at_random_points_and_store_and_kernel_agree() {
    let Some(mut d) = lsm_daemon() else { return };
    let dir = tempfile::Builder::new().prefix("rush-crash-").tempdir_in("/tmp").unwrap();
    let files: Vec<PathBuf> = (0..FILES).map(|i| dir.path().join(format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, "x").unwrap();
    }
    let seed = std::env::var("RUSH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("crash test seed {seed} (RUSH_TEST_SEED={seed} repeats it)");
    let mut rng = Rng(seed);

    let mut agents: HashMap<String, Known> = HashMap::new();
    // token id -> (agent, state)
    let mut tokens: HashMap<u64, (String, Known)> = HashMap::new();
    let (mut acked, mut cut, mut kills) = (0, 0, 0);
    let started = Instant::now();
    let mut next_agent = 0;
    let cut_at: Vec<usize> = (0..REQUESTS.div_ceil(100)).map(|_| rng.below(100) as usize).collect();
    for i in 0..REQUESTS {
        if i % 100 == 0 {
            eprintln!("  {i} requests, {kills} kills, {:.0?}", started.elapsed());
        }
        let live: Vec<String> =
            agents.iter().filter(|(_, k)| **k != Known::Absent).map(|(n, _)| n.clone()).collect();
        let held: Vec<u64> =
            tokens.iter().filter(|(_, (_, k))| *k != Known::Absent).map(|(id, _)| *id).collect();
        let roll = rng.below(10);
        enum Op {
            Spawn(String),
            Grant(String),
            Revoke(String, u64),
        }
        let op = if live.is_empty() || (roll == 0 && live.len() < MAX_AGENTS) {
            next_agent += 1;
            Op::Spawn(format!("c{next_agent}"))
        } else if roll < 6 || held.is_empty() {
            Op::Grant(live[rng.below(live.len() as u64) as usize].clone())
        } else {
            let id = held[rng.below(held.len() as u64) as usize];
            Op::Revoke(tokens[&id].0.clone(), id)
        };
        let file = files[rng.below(FILES as u64) as usize].display().to_string();
        let ops = ["read", "write", "read,write"][rng.below(3) as usize];
        let ttl = if rng.below(4) == 0 { Some(7200) } else { None };
        // Straight on the socket, as `rush` would send them (a process per request costs
        // more than the request itself under TCG).
        let ops: rush_proto::Ops = ops.parse().unwrap();
        let request: Value = match &op {
            Op::Spawn(name) => serde_json::json!({
                "type": "spawn", "name": name, "command": ["sleep", "3600"], "cwd": "/", "stdio": "log",
                "allow": [{"path": dir.path(), "ops": rush_proto::Ops::READ.0}],
            }),
            Op::Grant(agent) => serde_json::json!({
                "type": "grant", "agent": agent, "path": file, "ops": ops.0, "duration_secs": ttl
            }),
            Op::Revoke(agent, id) => {
                serde_json::json!({"type": "revoke", "agent": agent, "target": {"id": id}})
            }
        };
        let request: rush_proto::Request =
            serde_json::from_value(request.clone()).unwrap_or_else(|e| panic!("{request}: {e}"));
        // One request in each hundred, at a random place, is cut: SIGKILL after a random
        // 0-15 ms, which lands before, inside or after the daemon's work on it.
        let killer = (i % 100 == cut_at[i / 100]).then(|| {
            let pid = d.pid();
            let delay = Duration::from_millis(rng.below(15));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            })
        });
        let reply = rush_proto::client::Client::connect(&d.socket).and_then(|mut c| c.call(request.clone()));
        let ok = reply.is_ok();
        let answer: Option<Value> = reply.as_ref().ok().map(|r| serde_json::to_value(r).unwrap());
        let was_cut = killer.is_some();
        match (&op, answer) {
            (Op::Spawn(name), Some(_)) => {
                agents.insert(name.clone(), Known::Present);
            }
            (Op::Spawn(name), None) => {
                agents.insert(name.clone(), Known::Unknown);
            }
            (Op::Grant(agent), Some(t)) => {
                let id =
                    t["token"]["id"].as_u64().or(t["id"].as_u64()).unwrap_or_else(|| panic!("no id: {t}"));
                tokens.insert(id, (agent.clone(), Known::Present));
            }
            (Op::Grant(_), None) => {}
            (Op::Revoke(agent, id), Some(_)) => {
                tokens.insert(*id, (agent.clone(), Known::Absent));
            }
            (Op::Revoke(agent, id), None) => {
                tokens.insert(*id, (agent.clone(), Known::Unknown));
            }
        }
        if ok {
            acked += 1;
        } else if !was_cut {
            // No kill, so the daemon saw it whole: a refusal here is a bug, not a crash.
            panic!("request {i} ({request:?}) failed without a kill: {reply:?}");
        } else {
            cut += 1;
        }
        if let Some(k) = killer {
            k.join().unwrap();
            kills += 1;
            d.kill9();
            d.restart();
            // What the cut request did is settled now (an unrecorded agent is killed at
            // start): learn it, so that every later expectation is exact.
            match &op {
                Op::Spawn(name) if agents[name] == Known::Unknown => {
                    let out = d.rush(&["--json", "agent", "status", name]);
                    let running = out.status.success()
                        && serde_json::from_slice::<Value>(&out.stdout)
                            .is_ok_and(|a| a["state"] == "running");
                    agents.insert(name.clone(), if running { Known::Present } else { Known::Absent });
                }
                Op::Revoke(agent, id) if tokens[id].1 == Known::Unknown => {
                    let caps = d.rush_json(&["capability", "list", agent]);
                    let there = caps.as_array().unwrap().iter().any(|t| t["id"] == *id);
                    tokens.insert(*id, (agent.clone(), if there { Known::Present } else { Known::Absent }));
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "{REQUESTS} requests in {:.0?}: {acked} acknowledged, {cut} cut by {kills} kills",
        started.elapsed()
    );
    assert_eq!(kills, REQUESTS / 100, "seed {seed}");

    // One more crash with nothing in flight: what was acknowledged must be on disk.
    d.kill9();
    d.restart();
    let listed = d.rush_json(&["agent", "list"]);
    let running =
        |name: &str| listed.as_array().unwrap().iter().any(|a| a["name"] == name && a["state"] == "running");
    for (name, known) in &agents {
        if *known == Known::Present {
            assert!(
                running(name),
                "acknowledged agent {name} is not running after the restarts (seed {seed}): {listed}"
            );
        }
    }
    let caps = d.rush_json(&["capability", "list"]);
    let ids: Vec<u64> = caps.as_array().unwrap().iter().filter_map(|t| t["id"].as_u64()).collect();
    for (id, (agent, known)) in &tokens {
        match known {
            Known::Present => {
                assert!(ids.contains(id), "acknowledged grant {id} to {agent} is gone (seed {seed})")
            }
            Known::Absent => assert!(!ids.contains(id), "acknowledged revoke of {id} undone (seed {seed})"),
            Known::Unknown => {}
        }
    }
    let agree = doctor_line(&d, "state: store and kernel agree");
    assert_eq!(agree["holds"], true, "seed {seed}: {agree}");
    let detail = agree["detail"].as_str().unwrap();
    eprintln!("doctor: {detail}");
    assert!(!detail.contains(" 0 kernel entries"), "nothing in the kernel map was compared: {detail}");

    // And the kernel still says no where no token says yes.
    let some = agents.iter().find(|(_, k)| **k == Known::Present).map(|(n, _)| n.clone()).unwrap();
    let fs = bin("rush-test-fs");
    let bins = format!("{}:read,exec", bin_dir().display());
    let out = d.rush(&[
        "agent",
        "spawn",
        "probe",
        "--allow",
        &bins,
        "--",
        fs.to_str().unwrap(),
        "read",
        files[0].to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("EPERM"), "{}", describe(&out));
    for name in agents.keys().filter(|n| running(n)) {
        let _ = d.rush(&["agent", "kill", name]);
    }
    let _ = some;
}

/// A full ring buffer drops kernel events, never enforcement: with the daemon stopped
/// (SIGSTOP: nobody drains the buffer), an agent's thousands of denied opens are all
/// denied, and once the daemon runs again the loss is counted, audited and in the doctor.
#[test]
fn a_full_ring_buffer_loses_events_not_denials_and_says_so() {
    let Some(d) = lsm_daemon() else { return };
    let ctl = tempfile::Builder::new().prefix("rush-flood-").tempdir_in("/tmp").unwrap();
    let c = ctl.path().display().to_string();
    let outside = tempfile::Builder::new().prefix("rush-flood-secret-").tempdir_in("/tmp").unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "not granted").unwrap();
    let fs = bin("rush-test-fs");
    let script = format!(
        "while [ ! -e {c}/go ]; do sleep 0.05; done; {fs} try-loop 6000 {secret} > {c}/out; touch {c}/done",
        fs = fs.display(),
        secret = secret.display()
    );
    let bins = format!("{}:read,exec", bin_dir().display());
    let own = format!("{c}:read,write,create");
    let out = d.rush(&[
        "agent", "spawn", "flood", "--detach", "--allow", &bins, "--allow", &own, "--", "/bin/sh", "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let daemon = nix::unistd::Pid::from_raw(d.pid());
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::fs::write(ctl.path().join("go"), "").unwrap();
    let done = wait_until(Duration::from_secs(120), || ctl.path().join("done").exists());
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(done, "the flooding agent did not finish");
    let verdict = std::fs::read_to_string(ctl.path().join("out")).unwrap();
    assert_eq!(verdict.trim(), "ok 0 denied 6000 other 0", "every open denied, event or not");
    let lost = || doctor_line(&d, "state: nothing lost");
    assert!(
        wait_until(Duration::from_secs(20), || lost()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("kernel events dropped")),
        "the doctor does not report the dropped events: {}",
        lost()
    );
    assert_eq!(lost()["holds"], false);
    let records = d.rush_json(&["audit", "--kind", "events_lost"]);
    let dropped: u64 = records.as_array().unwrap().iter().filter_map(|r| r["event"]["count"].as_u64()).sum();
    let denies = d.rush_json(&["audit", "--agent", "flood", "--kind", "file_deny", "--limit", "0"]);
    eprintln!(
        "6000 denied opens: {dropped} events dropped, {} deny records",
        denies.as_array().unwrap().len()
    );
    assert!(dropped > 0, "{records}");
    let _ = d.rush(&["agent", "kill", "flood"]);
}

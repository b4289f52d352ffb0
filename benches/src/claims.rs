//! `rush-bench claims`: a claim + release round trip, side by side in one run, alternating
//! rounds, against what tools use instead:
//! - Rush (embedded store): `Claim` then `Release` over one connection, each decided by a
//!   committed SQLite transaction (`synchronous=FULL`: durable before the answer);
//! - Rush on etcd: the same requests to a daemon with `[coordination] backend = "etcd"` on a
//!   real 3-member etcd cluster on loopback (Debian's etcd-server; data in /dev/shm, so
//!   the raft round trips, not the disk, are measured): each claim one etcd transaction
//!   committed by a majority, each release another;
//! - `flock(2)`: open a lock file, `LOCK_EX|LOCK_NB`, unlock, close (not durable, not
//!   leased, no fencing token, gone with the holder's machine);
//! - a git ref compare-and-swap, as git-based work trackers do: `git update-ref REF NEW
//!   ZERO` (fails if the ref exists), then `git update-ref -d REF NEW`.
//!
//! Reported: p50 and p99 µs per round trip, round trips per second, and Rush's ratio to each.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use kernel_tests::{Daemon, EtcdCluster, describe};
use rush_proto::Request;
use rush_proto::client::Client;
use rush_proto::coordination::ClaimRequest;

const PER_ROUND: usize = 200;
const ROUNDS: usize = 5;
const GIT_PER_ROUND: usize = 40;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rush_round(client: &mut Client, round: usize, out: &mut Vec<f64>) {
    for i in 0..PER_ROUND {
        let task = format!("bench-{round}-{i}");
        let start = Instant::now();
        let claim = ClaimRequest {
            agent: Some("bench".into()),
            task: task.clone(),
            paths: vec![],
            ttl_secs: Some(60),
            enforce: false,
        };
        match client.call(Request::Claim(claim)).expect("claim") {
            rush_proto::Response::Claim { outcome } => assert!(outcome.won),
            other => panic!("{other:?}"),
        }
        client.call(Request::Release { agent: Some("bench".into()), task }).expect("release");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
}

fn flock_round(dir: &std::path::Path, out: &mut Vec<f64>) {
    for i in 0..PER_ROUND {
        let path = dir.join(format!("task-{}.lock", i % 10));
        let start = Instant::now();
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
        // SAFETY: a valid open descriptor; flock only changes its lock.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, 0);
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        drop(f);
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
}

fn git(repo: &std::path::Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn git_round(repo: &std::path::Path, sha: &str, round: usize, out: &mut Vec<f64>) {
    const ZERO: &str = "0000000000000000000000000000000000000000";
    for i in 0..GIT_PER_ROUND {
        let r = format!("refs/claims/bench-{round}-{i}");
        let start = Instant::now();
        assert!(git(repo, &["update-ref", &r, sha, ZERO]), "claim by ref");
        assert!(git(repo, &["update-ref", "-d", &r, sha]), "release by ref");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
}

pub fn run() {
    let d = Daemon::start();
    let out = d.rush(&["agent", "spawn", "bench", "--detach", "--", "sleep", "3600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let mut client = Client::connect(&d.socket).expect("connect");
    let etcd = EtcdCluster::start(3);
    let on_etcd = Daemon::start_with_config(&etcd.config("10s"));
    let out = on_etcd.rush(&["agent", "spawn", "bench", "--detach", "--", "sleep", "3600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let mut etcd_client = Client::connect(&on_etcd.socket).expect("connect");
    let locks = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    assert!(git(repo.path(), &["init", "-q"]));
    assert!(git(
        repo.path(),
        &["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "x"]
    ));
    let sha = Command::new("git").arg("-C").arg(repo.path()).args(["rev-parse", "HEAD"]).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).trim().to_owned();

    let (mut rush, mut flock, mut gitref) = (Vec::new(), Vec::new(), Vec::new());
    let mut rush_etcd = Vec::new();
    for round in 0..ROUNDS {
        rush_round(&mut client, round, &mut rush);
        rush_round(&mut etcd_client, round, &mut rush_etcd);
        flock_round(locks.path(), &mut flock);
        git_round(repo.path(), &sha, round, &mut gitref);
    }
    let rush_p50 = percentile(&mut rush, 0.5);
    println!("claim + release round trip, {ROUNDS} alternated rounds (Rush: {} round trips)\n", rush.len());
    println!("| how | what it gives | p50 µs | p99 µs | round trips/s | Rush p50 / this p50 |");
    println!("|---|---|---|---|---|---|");
    let rows: [(&str, &str, &mut Vec<f64>); 4] = [
        ("Rush, embedded store", "durable, leased, fencing token, kernel path claims", &mut rush),
        (
            "Rush on etcd (3 members, loopback)",
            "as embedded, across machines: decided by a majority of 3, node-leased",
            &mut rush_etcd,
        ),
        ("flock(2) on a lock file", "one machine, no lease, no token, lost with the holder", &mut flock),
        ("git update-ref CAS", "durable, no lease, no token; two git processes", &mut gitref),
    ];
    for (name, gives, v) in rows {
        let p50 = percentile(v, 0.5);
        let p99 = percentile(v, 0.99);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!("| {name} | {gives} | {p50:.0} | {p99:.0} | {:.0} | {:.2}x |", 1e6 / mean, rush_p50 / p50);
    }
}

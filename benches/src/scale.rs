//! `rush-bench scale`: spawn/exit cycles per second through the real daemon (1 client and 4
//! at once), the daemon's RSS before and after them, and the latency of a request with 50
//! clients asking at once against 1 client alone, the two alternated in one run.
//!
//! The socket protocol directly (rush-proto's client): the daemon is measured, not the
//! start-up of 50 `rush` processes.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kernel_tests::Daemon;
use rush_proto::client::Client;
use rush_proto::{Budget, Request, Response, SpawnRequest, StdioMode};

use crate::{ms, percentile};

fn spawn_request(name: &str, command: &[&str], stdio: StdioMode) -> SpawnRequest {
    SpawnRequest {
        name: name.to_owned(),
        command: command.iter().map(|s| s.to_string()).collect(),
        net: None,
        trust: None,
        budget: Budget::default(),
        allow: Vec::new(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: PathBuf::from("/"),
        stdio,
        tty_size: None,
        allow_unconfined: false,
        session: None,
        restartable: false,
        hardlinks: None,
        user: None,
    }
}

/// `n` foreground `true` agents, one after the other, each through to its exit reply.
fn cycles(socket: &Path, tag: &str, n: usize) {
    let null = OwnedFd::from(std::fs::File::options().read(true).write(true).open("/dev/null").unwrap());
    let mut c = Client::connect(socket).unwrap();
    for k in 0..n {
        let fds = [null.as_fd(), null.as_fd(), null.as_fd()];
        let req = spawn_request(&format!("{tag}-{k}"), &["true"], StdioMode::Passed);
        let id = c.send(Request::Spawn(req), &fds).unwrap();
        assert!(matches!(c.recv_for(id).unwrap(), Response::Spawned { .. }));
        assert!(matches!(c.recv_for(id).unwrap(), Response::Exited { .. }));
    }
}

/// Cycles per second with `clients` clients at once, `per_client` cycles each.
fn cycle_rate(socket: &Path, tag: &str, clients: usize, per_client: usize) -> f64 {
    let t = Instant::now();
    let hs: Vec<_> = (0..clients)
        .map(|i| {
            let (socket, tag) = (socket.to_owned(), format!("{tag}{i}"));
            std::thread::spawn(move || cycles(&socket, &tag, per_client))
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    (clients * per_client) as f64 / t.elapsed().as_secs_f64()
}

pub(crate) fn rss_kb(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches(" kB").parse().ok()).unwrap()
}

/// `clients` clients, each sending `per_client` status requests for the running agent
/// `name` as soon as all are connected; every request's latency, and the round's wall time.
fn status_round(socket: &Path, name: &str, clients: usize, per_client: usize) -> (Vec<Duration>, Duration) {
    let start = Arc::new(Barrier::new(clients + 1));
    let hs: Vec<_> = (0..clients)
        .map(|_| {
            let (socket, name, start) = (socket.to_owned(), name.to_owned(), start.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                start.wait();
                (0..per_client)
                    .map(|_| {
                        let t = Instant::now();
                        let r = c.call(Request::AgentStatus { name: Some(name.clone()) }).unwrap();
                        let d = t.elapsed();
                        assert!(matches!(r, Response::Agent { .. }));
                        d
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    let lat = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    (lat, t.elapsed())
}

pub fn run() {
    let d = Daemon::start();
    let pid = d.pid();
    let rss0 = rss_kb(pid);
    // Warm-up: allocator, SQLite caches, the exited-agents list, runtime threads.
    cycle_rate(&d.socket, "w", 4, 125);
    let rss_warm = rss_kb(pid);
    let (mut one, mut four) = (Vec::new(), Vec::new());
    for round in 0..5 {
        one.push(cycle_rate(&d.socket, &format!("a{round}-"), 1, 400));
        four.push(cycle_rate(&d.socket, &format!("b{round}-"), 4, 100));
    }
    let total = 5 * 800;
    // A second batch as large again, to see whether the RSS keeps growing with cycles.
    let rss_mid = rss_kb(pid);
    for round in 0..5 {
        cycle_rate(&d.socket, &format!("c{round}-"), 4, 200);
    }
    let rss_end = rss_kb(pid);
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| spawn/exit cycles (foreground `true`, through the socket) | cycles/s (median of 5) |");
    println!("|---|---|");
    println!("| 1 client | {:.0} |", med(one));
    println!("| 4 clients at once | {:.0} |", med(four));
    println!();
    println!(
        "daemon RSS: {rss0} KiB at start, {rss_warm} KiB after 500 warm-up cycles, {rss_mid} KiB after {total} more, \
         {rss_end} KiB after {total} more ({:+} KiB over the last {total})",
        rss_end as i64 - rss_mid as i64
    );
    println!();

    // Status of a running agent: the registry lock, two cgroup reads, one reply line.
    let mut c = Client::connect(&d.socket).unwrap();
    c.call(Request::Spawn(spawn_request("target", &["sleep", "600"], StdioMode::Log))).unwrap();
    let (mut solo, mut crowd) = (Vec::new(), Vec::new());
    let (mut solo_t, mut crowd_t) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..5 {
        let (l, t) = status_round(&d.socket, "target", 1, 200);
        solo.extend(l);
        solo_t += t;
        let (l, t) = status_round(&d.socket, "target", 50, 40);
        crowd.extend(l);
        crowd_t += t;
    }
    let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    let (solo_rate, crowd_rate) = (rate(solo.len(), solo_t), rate(crowd.len(), crowd_t));
    c.call(Request::KillAgent { name: "target".into() }).unwrap();
    let (s50, s90) = (percentile(&mut solo, 0.5), percentile(&mut solo, 0.9));
    let (c50, c90) = (percentile(&mut crowd, 0.5), percentile(&mut crowd, 0.9));
    println!("| `agent status` request | p50 | p90 | ratio (p50) vs 1 client | requests/s |");
    println!("|---|---|---|---|---|");
    println!("| 1 client | {} | {} | 1.00x | {solo_rate:.0} |", ms(s50), ms(s90));
    println!(
        "| 50 clients at once | {} | {} | {:.2}x | {crowd_rate:.0} |",
        ms(c50),
        ms(c90),
        c50.as_secs_f64() / s50.as_secs_f64()
    );
}

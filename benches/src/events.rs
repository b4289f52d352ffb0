//! `rush-bench events`: the event bus under load, side by side in one run. One client
//! makes session key-value writes as fast as it can (each one a store write and an audit
//! record published on the bus); rounds alternate 0 and 10 subscribers, each subscriber
//! reading every event on its own connection and thread. Reported: the writer's rate with
//! 10 subscribers against none (what subscribers cost the daemon), and the events per
//! second delivered to all subscribers together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, describe};
use rush_proto::client::Client;
use rush_proto::{Request, Response, SessionRef, SubscribeRequest};

const WRITES: u64 = 2000;
const SUBSCRIBERS: usize = 10;
const ROUNDS: usize = 3;

fn writes_per_sec(d: &Daemon, round: usize) -> f64 {
    let mut c = Client::connect(&d.socket).expect("connect");
    let t = Instant::now();
    for i in 0..WRITES {
        let request = Request::SessionSet {
            session: SessionRef { name: Some("bench".into()), cwd: None },
            key: format!("k{}", i % 16),
            value: format!("{round}-{i}"),
        };
        c.call(request).expect("session set");
    }
    WRITES as f64 / t.elapsed().as_secs_f64()
}

/// Starts `n` subscribers counting what they receive; returns the counters and a stop flag.
fn subscribers(d: &Daemon, n: usize) -> (Vec<Arc<AtomicU64>>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for count in &counters {
        let mut c = Client::connect(&d.socket).expect("connect");
        let id = c.send(Request::Subscribe(SubscribeRequest::default()), &[]).unwrap();
        assert!(matches!(c.recv_for(id).unwrap(), Response::Subscribed));
        let (count, stop) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match c.recv_for(id) {
                    Ok(Response::Event { event: rush_proto::Event::Audit(_) }) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Response::Event { event }) => panic!("subscriber: {event:?}"),
                    _ => return,
                }
            }
        });
    }
    (counters, stop)
}

pub fn run() {
    let d = Daemon::start();
    let ws = tempfile::tempdir().unwrap();
    let out = d.rush(&["session", "create", "bench", "--workspace", ws.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let (mut alone, mut watched, mut delivered) = (Vec::new(), Vec::new(), Vec::new());
    writes_per_sec(&d, 0); // warm-up
    for round in 0..ROUNDS {
        alone.push(writes_per_sec(&d, round));
        let (counters, stop) = subscribers(&d, SUBSCRIBERS);
        let t = Instant::now();
        watched.push(writes_per_sec(&d, round));
        // Every subscriber has every event of the round (they are never more than a few behind).
        let want = WRITES;
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters.iter().any(|c| c.load(Ordering::Relaxed) < want) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = t.elapsed().as_secs_f64();
        let total: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert!(
            total >= want * SUBSCRIBERS as u64,
            "subscribers got {total} of {}",
            want * SUBSCRIBERS as u64
        );
        delivered.push(total as f64 / secs);
        stop.store(true, Ordering::Relaxed);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (a, w, e) = (median(alone), median(watched), median(delivered));
    println!(
        "| writes/s, no subscriber | writes/s, {SUBSCRIBERS} subscribers | ratio | events/s delivered to {SUBSCRIBERS} subscribers |"
    );
    println!("|---|---|---|---|");
    println!("| {a:.0} | {w:.0} | {:.2}x | {e:.0} |", w / a);
    println!("(median of {ROUNDS} rounds of {WRITES} session key-value writes, alternating)");
}

//! `rush-bench terminal`: what an agent's terminal costs, side by side in one run,
//! alternating rounds:
//! - keystroke echo: one byte typed, the same byte back from `cat` (raw mode) on the other
//!   side; through Rush (client → daemon → holder → pty → cat → holder → daemon → client)
//!   vs a plain pty this process opens and drives itself;
//! - attach: connect, `AttachTerminal`, the first output frame (the replay) vs one plain
//!   request on a new connection (`Hello`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Instant;

use kernel_tests::{Daemon, describe};
use rush_proto::client::Client;
use rush_proto::terminal::{AttachMode, Frame, WindowSize};

const KEYS: usize = 1000;
const ATTACHES: usize = 200;
const ROUNDS: usize = 5;

const CAT: &str = "stty raw -echo && echo ready && exec cat";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Reads frames until an output frame holding `want`.
fn until_output(conn: &mut UnixStream, buf: &mut Vec<u8>, want: &[u8]) {
    let mut seen = Vec::new();
    loop {
        let f = Frame::read_from(conn, buf).expect("a frame").expect("the terminal closed");
        if let Frame::Output(b) = f {
            seen.extend_from_slice(&b);
            if seen.windows(want.len()).any(|w| w == want) {
                return;
            }
        }
    }
}

/// µs per echoed keystroke through the agent's terminal.
fn rush_echo(d: &Daemon) -> f64 {
    let client = Client::connect(&d.socket).expect("connect");
    let (mut conn, mut buf) =
        client.attach_terminal("echo", AttachMode::Steal, WindowSize::default()).expect("attach");
    until_output(&mut conn, &mut buf, b"ready");
    let start = Instant::now();
    for i in 0..KEYS {
        let key = [b'a' + (i % 26) as u8];
        conn.write_all(&Frame::Input(key.to_vec()).encode()).unwrap();
        until_output(&mut conn, &mut buf, &key);
    }
    start.elapsed().as_secs_f64() * 1e6 / KEYS as f64
}

/// µs per echoed keystroke on a plain pty with the same `cat`.
fn plain_echo() -> f64 {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = pty.slave;
    let mut child = Command::new("sh")
        .args(["-c", CAT])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .expect("sh");
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(5).any(|w| w == b"ready") {
        let n = master.read(&mut chunk).unwrap();
        seen.extend_from_slice(&chunk[..n]);
    }
    let start = Instant::now();
    for i in 0..KEYS {
        let key = b'a' + (i % 26) as u8;
        master.write_all(&[key]).unwrap();
        loop {
            let n = master.read(&mut chunk).unwrap();
            if chunk[..n].contains(&key) {
                break;
            }
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / KEYS as f64;
    let _ = child.kill();
    let _ = child.wait();
    let _ = master.as_raw_fd();
    us
}

/// µs from connecting to the first screen, per attach.
fn attach(d: &Daemon) -> f64 {
    let start = Instant::now();
    for _ in 0..ATTACHES {
        let client = Client::connect(&d.socket).expect("connect");
        let (mut conn, mut buf) =
            client.attach_terminal("echo", AttachMode::Read, WindowSize::default()).expect("attach");
        until_output(&mut conn, &mut buf, b"ready");
    }
    start.elapsed().as_secs_f64() * 1e6 / ATTACHES as f64
}

/// µs per new connection and one `Hello`.
fn hello(d: &Daemon) -> f64 {
    let start = Instant::now();
    for _ in 0..ATTACHES {
        Client::connect(&d.socket).expect("connect").hello().expect("hello");
    }
    start.elapsed().as_secs_f64() * 1e6 / ATTACHES as f64
}

pub fn run() {
    let d = Daemon::start();
    let out = d.rush(&["agent", "spawn", "echo", "--tty", "--detach", "--", "sh", "-c", CAT]);
    assert!(out.status.success(), "spawn: {}", describe(&out));
    let (mut via, mut plain, mut att, mut hel) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(plain_echo());
        via.push(rush_echo(&d));
        hel.push(hello(&d));
        att.push(attach(&d));
    }
    let (via, plain, att, hel) = (median(via), median(plain), median(att), median(hel));
    println!("\n## Terminals: an agent's pty through Rush vs a plain pty (median of {ROUNDS} rounds)\n");
    println!("| what | through Rush | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| keystroke echo round trip ({KEYS} keys, `cat` in raw mode) | {via:.1} µs | {plain:.1} µs (plain pty) | {:.2} |",
        via / plain
    );
    println!(
        "| attach: connect to first screen ({ATTACHES} attaches) | {att:.1} µs | {hel:.1} µs (connect + hello) | {:.2} |",
        att / hel
    );
}

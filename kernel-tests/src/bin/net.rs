//! `rush-test-net tcp|udp ADDR:PORT`: one connect() (tcp) or sendto() (udp) and its
//! outcome, for tests that must see the exact errno an agent gets.
//! Prints `ok` and exits 0, or prints `errno NAME` and exits 10.
//!
//! `rush-test-net connect-loop N ADDR:PORT`: N connect() calls of one UDP socket, for
//! benchmarks: a UDP connect runs the cgroup connect hook but sends no packet, so the
//! loop measures the syscall and the hook; prints `ns_per_op X`.
//!
//! `rush-test-net tcp NAME:PORT`: the name resolved by the C library first (as any
//! program would: /etc/hosts, then DNS); prints `resolved IP` before the outcome, or
//! `resolve-failed ERROR` (exit 11).
//!
//! `rush-test-net dns udp|tcp SERVER:PORT NAME`: one DNS query for NAME's A records sent
//! to SERVER (a packet written here, no resolver library); prints `from ADDR` (udp: who
//! the reply came from), `rcode N` and `a IP` per answer, or `errno NAME` (exit 10).
//!
//! `rush-test-net dns-loop N SERVER:PORT NAME`: N such queries over UDP, one after
//! another on one socket, for benchmarks; prints `ns_per_op X` (exit 10 on an error).
//!
//! `rush-test-net download|upload ADDR:PORT BYTES [CHUNK]`: one TCP connection that reads
//! (download: until BYTES, EOF or 5 s without data) or writes BYTES in CHUNK-byte writes
//! (upload; default 64 KiB), for byte budgets and throughput benchmarks. Prints
//! `bytes N`, `ns T` (from connect to the last byte), and `errno NAME` if an error or the
//! timeout ended it (exit 10), else exits 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("connect-loop") => return connect_loop(&args[2..]),
        Some(dir @ ("download" | "upload")) => return stream(dir == "upload", &args[2..]),
        Some("dns") => return dns(&args[2..]),
        Some("dns-loop") => return dns_loop(&args[2..]),
        _ => {}
    }
    let (Some(kind), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: rush-test-net tcp|udp ADDR:PORT");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) if addr.contains(':') => {
            use std::net::ToSocketAddrs;
            match addr.to_socket_addrs().map(|mut a| a.find(SocketAddr::is_ipv4)) {
                Ok(Some(a)) => {
                    println!("resolved {}", a.ip());
                    a
                }
                Ok(None) => {
                    println!("resolve-failed no IPv4 address");
                    return ExitCode::from(11);
                }
                Err(e) => {
                    println!("resolve-failed {e}");
                    return ExitCode::from(11);
                }
            }
        }
        Err(e) => {
            eprintln!("rush-test-net: bad address {addr:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match kind.as_str() {
        "tcp" => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(|_| ()),
        "udp" => {
            let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(bind).and_then(|s| s.send_to(b"rush", addr)).map(|_| ())
        }
        _ => {
            eprintln!("rush-test-net: kind must be tcp or udp");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("errno {}", errno_name(&e));
            ExitCode::from(10)
        }
    }
}

fn connect_loop(args: &[String]) -> ExitCode {
    let (Some(Ok(n)), Some(Ok(addr))) =
        (args.first().map(|n| n.parse::<u32>()), args.get(1).map(|a| a.parse::<SocketAddr>()))
    else {
        eprintln!("usage: rush-test-net connect-loop N ADDR:PORT");
        return ExitCode::from(2);
    };
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            println!("errno {e}");
            return ExitCode::from(10);
        }
    };
    let start = std::time::Instant::now();
    for _ in 0..n {
        if let Err(e) = socket.connect(addr) {
            println!("errno {e}");
            return ExitCode::from(10);
        }
    }
    println!("ns_per_op {}", start.elapsed().as_nanos() / u128::from(n.max(1)));
    ExitCode::SUCCESS
}

fn stream(upload: bool, args: &[String]) -> ExitCode {
    let parsed = (
        args.first().map(|a| a.parse::<SocketAddr>()),
        args.get(1).map(|n| n.parse::<u64>()),
        args.get(2).map_or(Ok(64 * 1024), |c| c.parse::<usize>()),
    );
    let (Some(Ok(addr)), Some(Ok(total)), Ok(chunk @ 1..)) = parsed else {
        eprintln!("usage: rush-test-net download|upload ADDR:PORT BYTES [CHUNK]");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let mut done = 0u64;
    let result = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0x5a; chunk];
        while done < total {
            let want = (total - done).min(chunk as u64) as usize;
            let n = if upload { s.write(&buf[..want])? } else { s.read(&mut buf[..want])? };
            if n == 0 {
                break;
            }
            done += n as u64;
        }
        if upload {
            // The peer has every byte once it has closed its side after ours.
            s.shutdown(std::net::Shutdown::Write)?;
            let _ = s.read(&mut buf)?;
        }
        Ok(())
    });
    println!("bytes {done}");
    println!("ns {}", start.elapsed().as_nanos());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("errno {}", errno_name(&e));
            ExitCode::from(10)
        }
    }
}

/// `EPERM`, `ECONNREFUSED`...; the error's text when it carries no errno.
fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

/// One A query, by hand: a resolver library would hide what came back from where.
fn dns(args: &[String]) -> ExitCode {
    let (Some(proto), Some(Ok(server)), Some(name)) =
        (args.first(), args.get(1).map(|a| a.parse::<SocketAddr>()), args.get(2))
    else {
        eprintln!("usage: rush-test-net dns udp|tcp SERVER:PORT NAME");
        return ExitCode::from(2);
    };
    let query = a_query(name);
    let answer = match proto.as_str() {
        "udp" => dns_udp(server, &query),
        _ => dns_tcp(server, &query),
    };
    match answer {
        Ok(reply) => {
            print_reply(&reply);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("errno {}", errno_name(&e));
            ExitCode::from(10)
        }
    }
}

fn dns_loop(args: &[String]) -> ExitCode {
    let (Some(Ok(n)), Some(Ok(server)), Some(name)) =
        (args.first().map(|n| n.parse::<u32>()), args.get(1).map(|a| a.parse::<SocketAddr>()), args.get(2))
    else {
        eprintln!("usage: rush-test-net dns-loop N SERVER:PORT NAME");
        return ExitCode::from(2);
    };
    let query = a_query(name);
    let run = || -> std::io::Result<f64> {
        let socket = UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 1500];
        let start = Instant::now();
        for _ in 0..n {
            socket.send_to(&query, server)?;
            socket.recv_from(&mut buf)?;
        }
        Ok(start.elapsed().as_nanos() as f64 / f64::from(n.max(1)))
    };
    match run() {
        Ok(ns) => {
            println!("ns_per_op {ns:.0}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("errno {}", errno_name(&e));
            ExitCode::from(10)
        }
    }
}

fn a_query(name: &str) -> Vec<u8> {
    let mut query = vec![0x52, 0x55, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

fn dns_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.send_to(query, server)?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf)?;
    println!("from {from}");
    Ok(buf[..n].to_vec())
}

fn dns_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&(query.len() as u16).to_be_bytes())?;
    s.write_all(query)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply)?;
    Ok(reply)
}

/// The rcode and the A records of a reply (names compressed or not are skipped over).
fn print_reply(reply: &[u8]) {
    if reply.len() < 12 {
        println!("short reply");
        return;
    }
    println!("rcode {}", reply[3] & 0x0f);
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *reply.get(i)?;
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            if len == 0 {
                return Some(i + 1);
            }
            i += 1 + usize::from(len);
        }
    };
    let Some(mut i) = skip_name(12).map(|i| i + 4) else { return };
    for _ in 0..answers {
        let Some(j) = skip_name(i) else { return };
        let Some(head) = reply.get(j..j + 10) else { return };
        let (kind, len) =
            (u16::from_be_bytes([head[0], head[1]]), usize::from(u16::from_be_bytes([head[8], head[9]])));
        if kind == 1
            && len == 4
            && let Some(a) = reply.get(j + 10..j + 14)
        {
            println!("a {}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        }
        i = j + 10 + len;
    }
}

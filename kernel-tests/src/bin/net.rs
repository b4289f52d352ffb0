//! `rush-test-net tcp|udp ADDR:PORT`: one connect() (tcp) or sendto() (udp) and its
//! outcome, for tests that must see the exact errno an agent gets.
//! Prints `ok` and exits 0, or prints `errno NAME` and exits 10.
//!
//! `rush-test-net connect-loop N ADDR:PORT`: N connect() calls of one UDP socket, for
//! benchmarks: a UDP connect runs the cgroup connect hook but sends no packet, so the
//! loop measures the syscall and the hook; prints `ns_per_op X`.
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
        _ => {}
    }
    let (Some(kind), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: rush-test-net tcp|udp ADDR:PORT");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
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

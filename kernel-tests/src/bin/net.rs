//! `rush-test-net tcp|udp ADDR:PORT`: one connect() (tcp) or sendto() (udp) and its
//! outcome, for tests that must see the exact errno an agent gets.
//! Prints `ok` and exits 0, or prints `errno NAME` and exits 10.
//!
//! `rush-test-net connect-loop N ADDR:PORT`: N connect() calls of one UDP socket, for
//! benchmarks: a UDP connect runs the cgroup connect hook but sends no packet, so the
//! loop measures the syscall and the hook; prints `ns_per_op X`.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("connect-loop") {
        return connect_loop(&args[2..]);
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
            let name = match e.raw_os_error() {
                Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
                None => e.to_string(),
            };
            println!("errno {name}");
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

//! `rush-test-api` itself, without root: the fake model API answers in each style with
//! the usage it was told, and the client's lines and exit codes say what happened. The
//! cost-budget tests build on both.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};

use kernel_tests::bin;
use serde_json::Value;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(bin("rush-test-api"))
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("rush-test-api serve");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().strip_prefix("listening ").expect("listening line").parse().unwrap();
        Server { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM; the `served N` line.
    fn stop(self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM)
            .unwrap();
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "serve exited with {}", out.status);
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap_or("").to_owned()
    }
}

fn call(args: &[&str]) -> Output {
    Command::new(bin("rush-test-api")).arg("call").args(args).output().expect("rush-test-api call")
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn answers_in_each_style_and_counts_requests() {
    let openai = Server::start(&["--input-tokens", "12", "--output-tokens", "34", "--model", "gpt-x"]);
    let out = call(&[&openai.url("/v1/chat/completions"), "--count", "3"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(lines(&out), ["ok 200", "ok 200", "ok 200", "summary calls=3 ok=3 http=0 refused=0 broken=0"]);
    let out = call(&[&openai.url("/v1/chat/completions"), "--json"]);
    let first: Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    assert_eq!(first["body"]["model"], "gpt-x");
    assert_eq!(first["body"]["usage"]["prompt_tokens"], 12);
    assert_eq!(first["body"]["usage"]["completion_tokens"], 34);
    let out = call(&[&openai.url("/v1/chat/completions"), "--json", "--stream"]);
    let first: Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    let sse = first["body"].as_str().unwrap();
    assert!(sse.contains(r#""usage":{"completion_tokens":34,"prompt_tokens":12"#), "{sse}");
    assert!(sse.ends_with("data: [DONE]\n\n"));
    assert_eq!(openai.stop(), "served 5");

    let anthropic = Server::start(&["--style", "anthropic", "--stream", "--output-tokens", "9"]);
    let out = call(&[&anthropic.url("/v1/messages"), "--json"]);
    let sse = serde_json::from_str::<Value>(&lines(&out)[0]).unwrap()["body"].as_str().unwrap().to_owned();
    assert!(sse.contains("event: message_start") && sse.contains(r#""usage":{"output_tokens":9}"#), "{sse}");
    assert_eq!(anthropic.stop(), "served 1");
}

fn bound_not_listening() -> (std::os::fd::OwnedFd, std::net::SocketAddr) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // By hand with libc: std has no bind-without-listen, and nix's SockaddrIn needs a feature
    // the workspace does not otherwise build.
    // SAFETY: socket(2) with constant arguments; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sin is a valid sockaddr_in of the length given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sin).cast(), len) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    // SAFETY: sin and len are writable and len holds sin's size.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sin).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
    (fd, std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port))))
}

#[test]
fn exit_codes_say_how_calls_failed() {
    // A port bound but not listening: connects are refused, and no other test can take the
    // port meanwhile (a dropped listener's port could be rebound by a test running alongside).
    let (_held, closed) = bound_not_listening();
    let out = call(&[&format!("http://{closed}/v1/chat/completions"), "--count", "2"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(lines(&out)[..2], ["refused ECONNREFUSED", "refused ECONNREFUSED"]);

    // A server answering 402 once, then 500.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for status in ["402 Payment Required", "500 Internal Server Error"] {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let body = r#"{"error":{"type":"insufficient_quota"}}"#;
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    let out = call(&[&format!("http://{addr}/v1/chat/completions")]);
    assert_eq!((out.status.code(), lines(&out)[0].as_str()), (Some(3), "http 402"));
    let out = call(&[&format!("http://{addr}/v1/chat/completions")]);
    assert_eq!((out.status.code(), lines(&out)[0].as_str()), (Some(5), "http 500"));
    server.join().unwrap();
}

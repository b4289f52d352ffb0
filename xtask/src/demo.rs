//! The README's main job: a short narrated scenario with the real daemon and CLI.
//!
//! Scenes that need features still to come (file tokens in the kernel, budgets, rollback)
//! are announced as such rather than faked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{setup, util};

struct DemoDaemon {
    child: Child,
    socket: PathBuf,
    _state: PathBuf,
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(text: &str) {
    println!("\n\x1b[1m## {text}\x1b[0m");
}

fn show(bin_dir: &Path, socket: &Path, args: &[&str]) -> Result<i32> {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| if a.contains([' ', '&', '(', ';']) { format!("'{a}'") } else { a.to_string() })
        .collect();
    println!("$ rush {}", quoted.join(" "));
    std::io::stdout().flush()?;
    let status = Command::new(bin_dir.join("rush"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .context("running rush")?;
    let code = status.code().unwrap_or(128);
    if code != 0 {
        println!("(exit status {code})");
    }
    Ok(code)
}

pub fn run() -> Result<()> {
    setup::ensure()?;
    util::require_root("the demo (it loads BPF programs and creates cgroups)")?;
    util::step("building rush-agentd and rush");
    util::cargo(&["build", "-p", "rush-agentd", "-p", "rush-userspace"], &[])?;
    let bin_dir = util::target_dir()?.join("debug");

    let state = std::env::temp_dir().join(format!("rush-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let socket = state.join("agentd.sock");
    util::step("starting rush-agentd (private socket and state dir; pins removed on exit)");
    let child = Command::new(bin_dir.join("rush-agentd"))
        .args(["--config", "/dev/null", "--ephemeral", "--cgroup-parent", "rush-demo"])
        .arg("--pin-dir")
        .arg(format!("/sys/fs/bpf/rush-demo-{}", std::process::id()))
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.join("daemon.log"))?)
        .spawn()
        .context("starting rush-agentd")?;
    let mut daemon = DemoDaemon { child, socket: socket.clone(), _state: state.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
        if Instant::now() > deadline || daemon.child.try_wait()?.is_some() {
            let log = std::fs::read_to_string(state.join("daemon.log")).unwrap_or_default();
            bail!("rush-agentd did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let port = serve_http()?;
    let url = format!("http://127.0.0.1:{port}/");
    let rush = |args: &[&str]| show(&bin_dir, &socket, args);

    say("What this kernel lets Rush guarantee");
    rush(&["doctor"])?;

    say("A local web server answers a plain curl");
    println!("$ curl -sS {url}");
    Command::new("curl").args(["-sS", "--max-time", "5", &url]).status()?;

    say("The same curl as an agent with --net deny: the kernel refuses its connect() (EPERM)");
    let code = rush(&[
        "agent",
        "spawn",
        "researcher",
        "--net",
        "deny",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        &url,
    ])?;
    if code == 0 {
        bail!("the denied agent connected: enforcement is broken");
    }

    say("Allowed by the agent's own allow list, the connection goes through");
    let allow = format!("127.0.0.1:{port}");
    let code =
        rush(&["agent", "spawn", "fetcher", "--net", &allow, "--", "curl", "-sS", "--max-time", "5", &url])?;
    if code != 0 {
        bail!("the allowed agent could not connect");
    }

    say("The denial is in the audit trail: agent, pid, command, destination");
    rush(&["audit", "--agent", "researcher"])?;

    say("An agent that forks a process tree is killed as one: cgroup.kill, then its cgroup is removed");
    rush(&[
        "agent",
        "spawn",
        "forker",
        "--detach",
        "--",
        "sh",
        "-c",
        "sleep 600 & sleep 600 & (sleep 600 &); wait",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    rush(&["agent", "list"])?;
    rush(&["agent", "kill", "forker"])?;
    rush(&["agent", "status", "forker"])?;

    say("An operator's request to give file access the kernel cannot enforce here is refused, not faked");
    rush(&["agent", "spawn", "editor", "--allow", "/srv/project:read,write", "--", "true"])?;

    say(
        "Still to come (tracked as issues): file tokens in the kernel (BPF LSM, proven in QEMU guests), budgets, rollback",
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&state);
    println!("\ndemo finished");
    Ok(())
}

/// A one-line HTTP server on a free loopback port, in a thread for the demo's lifetime.
fn serve_http() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let body = "hello from a local server\n";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

//! The real `rush` binary against a fake daemon: a thread with a Unix listener that reads
//! the request (and any fds passed with it) and answers with canned reply lines.

use std::io::{BufRead, BufReader, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use rush_proto::{
    AgentInfo, AgentState, ApiError, AuditEvent, AuditRecord, DoctorReport, ErrorKind, ExitStatus, Guarantee,
    NetPolicy, PROTOCOL_VERSION, Probe, Reply, ReplyEnvelope, Request, RequestEnvelope, Response, StdioMode,
};

/// One accepted connection, seen from the daemon's side.
struct Conn {
    stream: UnixStream,
}

impl Conn {
    /// The request line, with the fds that rode on it.
    fn request(&mut self) -> (RequestEnvelope, Vec<OwnedFd>) {
        let mut buf = vec![0u8; 1 << 16];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 3]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .expect("recvmsg");
            let mut fds = Vec::new();
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS gave us these fds; nothing else owns them.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        };
        let mut line = buf[..n].to_vec();
        while !line.ends_with(b"\n") {
            let mut more = [0u8; 4096];
            let m = self.stream.read(&mut more).expect("read");
            assert!(m > 0, "client closed mid-request: {:?}", String::from_utf8_lossy(&line));
            line.extend_from_slice(&more[..m]);
        }
        (serde_json::from_slice(&line).expect("a valid request line"), fds)
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        let mut line = serde_json::to_vec(&ReplyEnvelope { version: PROTOCOL_VERSION, id, reply }).unwrap();
        line.push(b'\n');
        // The client may be gone already (a test of it going away): not our failure.
        let _ = self.stream.write_all(&line);
    }

    fn ok(&mut self, id: u64, response: Response) {
        self.reply(id, Reply::Ok(response));
    }

    /// Waits for the client to close its end; true if it did within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut reader = BufReader::new(&self.stream);
        let mut rest = String::new();
        matches!(reader.read_line(&mut rest), Ok(0))
    }
}

struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    thread: Option<JoinHandle<Vec<Request>>>,
}

impl FakeDaemon {
    /// Serves one connection with `script`; `join` returns the requests it saw.
    fn start(script: impl FnOnce(&mut Conn) -> Vec<Request> + Send + 'static) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agentd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            script(&mut Conn { stream })
        });
        FakeDaemon { _dir: dir, socket, thread: Some(thread) }
    }

    /// Answers the single request of a one-shot command with `reply`.
    fn answering(reply: Reply) -> FakeDaemon {
        FakeDaemon::start(move |c| {
            let (req, _) = c.request();
            c.reply(req.id, reply);
            vec![req.request]
        })
    }

    fn join(mut self) -> Vec<Request> {
        self.thread.take().unwrap().join().expect("fake daemon thread")
    }
}

fn only(mut requests: Vec<Request>) -> Request {
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.pop().unwrap()
}

fn rush(socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.env_remove("RUSH_SOCKET").arg("--socket").arg(socket);
    cmd
}

fn run(socket: &Path, args: &[&str]) -> Output {
    rush(socket).args(args).stdin(Stdio::null()).output().expect("run rush")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn agent(name: &str) -> AgentInfo {
    AgentInfo {
        name: name.into(),
        cgroup_id: 8812,
        cgroup_path: format!("/sys/fs/cgroup/rush/{name}").into(),
        pid: 4242,
        uid: 1000,
        command: vec!["sleep".into(), "100".into()],
        net: NetPolicy::Deny,
        state: AgentState::Running,
        processes: 1,
        started_unix_ms: 1_795_745_771_123,
        enforcement: vec![rush_proto::Enforcement::NetCgroupSockAddr],
        exit: None,
        detached: true,
        tty: false,
        unconfined: vec![],
        session: None,
        restartable: false,
        hardlinks: Default::default(),
        hardening: Default::default(),
        trust: None,
        budget: Default::default(),
        paused: vec![],
        usage: vec![],
        meter_url: None,
    }
}

fn record(seq: u64) -> AuditRecord {
    AuditRecord {
        seq,
        time_unix_ms: 1_795_745_771_123 + seq,
        agent: Some("coder".into()),
        session: None,
        event: AuditEvent::NetDeny {
            pid: 4243,
            uid: 1000,
            comm: "curl".into(),
            hook: "connect4".into(),
            destination: "93.184.216.34:443".into(),
            protocol: "tcp".into(),
        },
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "rush did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn agent_list_json_is_one_json_document() {
    let d = FakeDaemon::answering(Reply::Ok(Response::Agents { agents: vec![agent("a"), agent("b")] }));
    let out = run(&d.socket, &["agent", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let parsed: Vec<AgentInfo> =
        serde_json::from_str(&stdout(&out)).expect("stdout is a JSON array of agents");
    assert_eq!(parsed, vec![agent("a"), agent("b")]);
    assert_eq!(d.join(), vec![Request::ListAgents]);
}

#[test]
fn agent_list_text_is_a_table() {
    let d = FakeDaemon::answering(Reply::Ok(Response::Agents { agents: vec![agent("coder")] }));
    let out = run(&d.socket, &["agent", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("NAME   STATE    PID   PROCS  NET   UPTIME/EXIT  COMMAND"), "{text}");
    assert!(
        lines[1].starts_with("coder  running  4242  1      deny") && lines[1].ends_with("sleep 100"),
        "{text}"
    );
}

#[test]
fn api_error_exits_1_with_its_message() {
    let msg = "no agent named \"ghost\"";
    let d = FakeDaemon::answering(Reply::Err(ApiError::new(ErrorKind::NotFound, msg)));
    let out = run(&d.socket, &["agent", "status", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("rush: {msg}\n"));
    assert!(out.stdout.is_empty());
    assert_eq!(d.join(), vec![Request::AgentStatus { name: Some("ghost".into()) }]);
}

#[test]
fn no_daemon_exits_1_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir.path().join("none.sock"), &["agent", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("rush: rush-agentd is not running") && err.lines().count() == 1, "{err}");
}

#[test]
fn doctor_without_daemon_hints_at_the_local_probe() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir.path().join("none.sock"), &["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("rush: hint: `rush-agentd doctor`"), "{}", stderr(&out));
}

#[test]
fn rush_socket_env_is_used() {
    let d = FakeDaemon::answering(Reply::Ok(Response::Killed { name: "coder".into(), processes_killed: 3 }));
    let out = Command::new(env!("CARGO_BIN_EXE_rush"))
        .env("RUSH_SOCKET", &d.socket)
        .args(["agent", "kill", "coder"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "killed coder (3 processes)\n");
}

#[test]
fn bad_input_exits_2_without_reaching_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agentd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    for args in [
        &["agent", "spawn", "bad name", "--", "true"][..],
        &["agent", "spawn", "ok", "--net", "example.com", "--", "true"],
        &["agent", "spawn", "ok", "--allow", "/x:fly", "--", "true"],
        &["audit", "--since", "2026-02-30"],
    ] {
        let out = run(&socket, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.starts_with("rush: invalid ") && err.lines().count() == 1, "{args:?}: {err}");
    }
    let out = run(&socket, &["agent", "spawn", "ok"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("<CMD>"), "{}", stderr(&out));
    assert!(listener.accept().is_err(), "a refused command line reached the daemon");
}

#[test]
fn foreground_spawn_passes_the_terminal_and_exits_with_the_agents_status() {
    let d = FakeDaemon::start(|c| {
        let (req, fds) = c.request();
        assert_eq!(fds.len(), 3, "stdin, stdout, stderr must ride on the request");
        // Write as the agent would, straight into rush's stdout and stderr.
        std::fs::File::from(fds[1].try_clone().unwrap()).write_all(b"hello from the agent\n").unwrap();
        std::fs::File::from(fds[2].try_clone().unwrap()).write_all(b"agent stderr\n").unwrap();
        drop(fds);
        c.ok(req.id, Response::Spawned { agent: agent("fg") });
        c.ok(
            req.id,
            Response::Exited { name: "fg".into(), status: ExitStatus { code: Some(3), signal: None } },
        );
        vec![req.request]
    });
    let dir = tempfile::tempdir().unwrap();
    let out = rush(&d.socket)
        .args(["--json", "agent", "spawn", "fg", "--", "sh", "-c", "exit 3"])
        .current_dir(dir.path())
        .env("RUSH_TEST_MARKER", "yes")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from the agent\n", "rush must add nothing to the agent's stdout");
    assert_eq!(stderr(&out), "agent stderr\n");
    let Request::Spawn(spawn) = only(d.join()) else { panic!("not a spawn") };
    assert_eq!(spawn.name, "fg");
    assert_eq!(spawn.command, ["sh", "-c", "exit 3"]);
    assert_eq!(spawn.net, None);
    assert_eq!(spawn.stdio, StdioMode::Passed);
    assert_eq!(spawn.cwd.canonicalize().unwrap(), dir.path().canonicalize().unwrap());
    assert!(spawn.env.contains(&("RUSH_TEST_MARKER".into(), "yes".into())));
}

#[test]
fn foreground_spawn_killed_by_a_signal_exits_128_plus_it() {
    let d = FakeDaemon::start(|c| {
        let (req, _fds) = c.request();
        c.ok(req.id, Response::Spawned { agent: agent("fg") });
        c.ok(
            req.id,
            Response::Exited { name: "fg".into(), status: ExitStatus { code: None, signal: Some(9) } },
        );
        vec![]
    });
    let out = run(&d.socket, &["agent", "spawn", "fg", "--", "sleep", "9"]);
    assert_eq!(out.status.code(), Some(137));
    d.join();
}

#[test]
fn foreground_spawn_losing_the_daemon_exits_1() {
    let d = FakeDaemon::start(|c| {
        let (req, _fds) = c.request();
        c.ok(req.id, Response::Spawned { agent: agent("fg") });
        vec![]
    });
    let out = run(&d.socket, &["agent", "spawn", "fg", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("rush: the daemon closed the connection before agent fg exited"), "{err}");
    d.join();
}

#[test]
fn ctrl_c_in_the_foreground_exits_130_and_closes_the_connection() {
    let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
    let d = FakeDaemon::start(move |c| {
        let (req, _fds) = c.request();
        c.ok(req.id, Response::Spawned { agent: agent("fg") });
        spawned_tx.send(()).unwrap();
        assert!(c.closed_within(Duration::from_secs(10)), "rush kept the connection open");
        vec![]
    });
    let mut child = rush(&d.socket)
        .args(["agent", "spawn", "fg", "--", "sleep", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    spawned_rx.recv_timeout(Duration::from_secs(10)).expect("spawn request");
    std::thread::sleep(Duration::from_millis(50));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT).unwrap();
    assert_eq!(wait_timeout(&mut child, Duration::from_secs(10)).code(), Some(130));
    d.join();
}

#[test]
fn detached_spawn_prints_the_agent() {
    let d = FakeDaemon::start(|c| {
        let (req, fds) = c.request();
        assert!(fds.is_empty(), "a detached spawn passes no fds");
        c.ok(req.id, Response::Spawned { agent: agent("bg") });
        vec![req.request]
    });
    let out =
        run(&d.socket, &["agent", "spawn", "bg", "--detach", "--net", "1.2.3.4:443", "--", "sleep", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "spawned bg (pid 4242, cgroup id 8812); output: rush agent logs bg\n");
    let Request::Spawn(spawn) = only(d.join()) else { panic!("not a spawn") };
    assert_eq!(spawn.stdio, StdioMode::Log);
    assert_eq!(spawn.net.unwrap().to_string(), "1.2.3.4:443");

    let d = FakeDaemon::answering(Reply::Ok(Response::Spawned { agent: agent("bg") }));
    let out = run(&d.socket, &["agent", "spawn", "bg", "-d", "--json", "--", "true"]);
    let parsed: AgentInfo = serde_json::from_str(&stdout(&out)).expect("one JSON agent");
    assert_eq!(parsed.pid, 4242);
}

#[test]
fn audit_json_is_an_array_and_follow_is_ndjson() {
    let d = FakeDaemon::answering(Reply::Ok(Response::AuditEvents { events: vec![record(1), record(2)] }));
    let out = run(&d.socket, &["audit", "--json", "--agent", "coder", "--since", "@5", "--limit", "7"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let parsed: Vec<AuditRecord> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(parsed.len(), 2);
    let Request::Audit(q) = only(d.join()) else { panic!("not audit") };
    assert_eq!((q.agent.as_deref(), q.since_unix_ms, q.limit, q.follow), (Some("coder"), Some(5), 7, false));

    let d = FakeDaemon::start(|c| {
        let (req, _) = c.request();
        c.ok(req.id, Response::AuditEvents { events: vec![record(1)] });
        c.ok(req.id, Response::AuditEvents { events: vec![] });
        c.ok(req.id, Response::AuditEvents { events: vec![record(2), record(3)] });
        vec![req.request]
    });
    let out = run(&d.socket, &["audit", "--json", "--follow"]);
    // The fake daemon then hangs up, which ends a follow with an error.
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("closed the audit stream"), "{}", stderr(&out));
    let seqs: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).expect("each line one record").seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn audit_text_is_one_line_per_record() {
    let d = FakeDaemon::answering(Reply::Ok(Response::AuditEvents { events: vec![record(1), record(2)] }));
    let out = run(&d.socket, &["audit"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2);
    assert!(
        text.starts_with(
            "2026-11-27T02:16:11.124Z       1  coder         net_deny     pid=4243 uid=1000 comm=curl"
        ),
        "{text}"
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    let events: Vec<AuditRecord> = (0..3000).map(record).collect();
    let d = FakeDaemon::answering(Reply::Ok(Response::AuditEvents { events }));
    let mut child =
        rush(&d.socket).arg("audit").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!((status.code(), err.as_str()), (Some(0), ""));
}

#[test]
fn logs_print_chunks_until_the_end() {
    let script = |c: &mut Conn| {
        let (req, _) = c.request();
        c.ok(req.id, Response::Logs { data: "line 1\n".into(), end: false });
        c.ok(req.id, Response::Logs { data: "line 2\n".into(), end: false });
        c.ok(req.id, Response::Logs { data: String::new(), end: true });
        vec![req.request]
    };
    let d = FakeDaemon::start(script);
    let out = run(&d.socket, &["agent", "logs", "bg", "-f"]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "line 1\nline 2\n"));
    assert_eq!(d.join(), vec![Request::AgentLogs { name: "bg".into(), follow: true }]);

    let d = FakeDaemon::start(script);
    let out = run(&d.socket, &["agent", "logs", "bg", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc, serde_json::json!({ "data": "line 1\nline 2\n" }));
}

#[test]
fn doctor_renders_both_tables_and_exits_0_even_when_guarantees_fail() {
    let report = DoctorReport {
        kernel: "6.8.0".into(),
        probes: vec![Probe { name: "bpf_lsm".into(), ok: false, detail: "not in lsm list".into() }],
        guarantees: vec![Guarantee {
            name: "file-grants".into(),
            holds: false,
            detail: "needs BPF LSM".into(),
        }],
    };
    let d = FakeDaemon::answering(Reply::Ok(Response::Doctor { report: report.clone() }));
    let out = run(&d.socket, &["doctor"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with("kernel: 6.8.0\n") && text.contains("✗ bpf_lsm") && text.contains("file-grants  no"),
        "{text}"
    );

    let d = FakeDaemon::answering(Reply::Ok(Response::Doctor { report: report.clone() }));
    let out = run(&d.socket, &["doctor", "--json"]);
    assert_eq!(serde_json::from_str::<DoctorReport>(&stdout(&out)).unwrap(), report);
}

#[test]
fn unexpected_replies_are_errors() {
    let d = FakeDaemon::answering(Reply::Ok(Response::Agents { agents: vec![] }));
    let out = run(&d.socket, &["agent", "status", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rush: unexpected reply from the daemon to agent_status: expected agent, got agents\n"
    );
}

#[test]
fn an_older_daemon_is_named_with_both_versions() {
    // A version-1 daemon refuses our request in its own version.
    let d = FakeDaemon::start(|c| {
        let (req, _) = c.request();
        let line = format!(
            "{{\"version\":1,\"id\":{},\"reply\":{{\"err\":{{\"kind\":\"version_mismatch\",\
             \"message\":\"protocol version 2 is not supported; this daemon speaks 1\"}}}}}}\n",
            req.id
        );
        c.stream.write_all(line.as_bytes()).unwrap();
        vec![req.request]
    });
    let out = run(&d.socket, &["agent", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the daemon speaks protocol version 1")
            && err.contains(&format!("this rush speaks version {PROTOCOL_VERSION}")),
        "{err}"
    );
}

#[test]
fn an_unknown_state_from_a_newer_daemon_is_a_clear_error() {
    let d = FakeDaemon::start(|c| {
        let (req, _) = c.request();
        let mut v = serde_json::to_value(ReplyEnvelope {
            version: PROTOCOL_VERSION,
            id: req.id,
            reply: Reply::Ok(Response::Agent { agent: agent("coder") }),
        })
        .unwrap();
        v["reply"]["ok"]["agent"]["paused"] = "hibernating".into();
        c.stream.write_all(format!("{v}\n").as_bytes()).unwrap();
        vec![req.request]
    });
    let out = run(&d.socket, &["agent", "status", "coder"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("AgentInfo.paused") && err.contains("\"hibernating\""), "{err}");
}

fn claim(task: &str, holder: &str) -> rush_proto::coordination::Claim {
    rush_proto::coordination::Claim {
        task: task.into(),
        agent: holder.into(),
        session: None,
        lease: 7,
        fencing: 3,
        paths: vec![],
        enforced_paths: vec![],
        enforcement: rush_proto::coordination::ClaimEnforcement::None,
        acquired_unix_ms: 0,
        // Far ahead: "expires in ...d".
        expires_unix_ms: u64::MAX / 2,
    }
}

#[test]
fn a_lost_claim_exits_1_naming_the_holder_also_with_json() {
    use rush_proto::coordination::ClaimOutcome;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    for json in [false, true] {
        let lost = ClaimOutcome { won: false, claim: claim("t1", "a"), warning: None };
        let d = FakeDaemon::answering(Reply::Ok(Response::Claim { outcome: lost.clone() }));
        let mut cmd = rush(&d.socket);
        cmd.current_dir(&cwd).args(["agent", "claim", "t1", "--agent", "b", "--paths", "src/../lib/"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("rush: task t1 is held by agent a (fencing 3, expires in "), "{err}");
        if json {
            assert_eq!(serde_json::from_str::<ClaimOutcome>(&stdout(&out)).unwrap(), lost);
        } else {
            assert!(out.stdout.is_empty());
        }
        let Request::Claim(req) = only(d.join()) else { panic!("not a claim") };
        assert_eq!(req.agent.as_deref(), Some("b"));
        assert_eq!(req.paths, [format!("{}/lib", cwd.display())]);
    }
}

#[test]
fn a_won_claim_prints_it_and_its_warning_on_stderr() {
    use rush_proto::coordination::{ClaimEnforcement, ClaimOutcome};
    let mut c = claim("t1", "a");
    c.paths = vec!["/w".into()];
    c.enforced_paths = vec!["/w".into()];
    c.enforcement = ClaimEnforcement::Advisory;
    let won = ClaimOutcome {
        won: true,
        claim: c,
        warning: Some("the claim's paths are advisory: no BPF LSM".into()),
    };
    let d = FakeDaemon::answering(Reply::Ok(Response::Claim { outcome: won }));
    let out = run(&d.socket, &["agent", "claim", "t1", "--paths", "/w"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("claimed t1: lease 7, fencing token 3, expires in "), "{text}");
    assert!(text.contains("  paths: /w (advisory"), "{text}");
    assert_eq!(stderr(&out), "rush: warning: the claim's paths are advisory: no BPF LSM\n");
}

/// Every byte value, and more than one read's worth.
fn binary() -> Vec<u8> {
    (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

fn result_info(key: &str, content: Option<&[u8]>) -> rush_proto::coordination::ResultInfo {
    rush_proto::coordination::ResultInfo {
        key: key.into(),
        agent: "a".into(),
        session: None,
        for_agent: None,
        sha256: "00".repeat(32),
        size: binary().len() as u64,
        published_unix_ms: 0,
        content_base64: content.map(|c| data_encoding::BASE64.encode(c)),
    }
}

#[test]
fn publish_sends_the_file_base64_and_results_writes_it_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, binary()).unwrap();
    let d = FakeDaemon::answering(Reply::Ok(Response::Published { result: result_info("k", None) }));
    let out = run(&d.socket, &["agent", "publish", "k", "--file", file.to_str().unwrap(), "--fence", "t1:3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("published k: 70000 bytes, sha256 {}\n", "00".repeat(32)));
    let Request::Publish(req) = only(d.join()) else { panic!("not a publish") };
    assert_eq!(data_encoding::BASE64.decode(req.content_base64.as_bytes()).unwrap(), binary());
    assert_eq!(req.fence.map(|f| (f.task, f.fencing)), Some(("t1".into(), 3)));

    let content = binary();
    let d = FakeDaemon::answering(Reply::Ok(Response::Results {
        results: vec![result_info("k", Some(&content))],
    }));
    let out = run(&d.socket, &["agent", "results", "k", "--wait", "--timeout", "2m"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout == binary(), "content differs");
    let Request::Results(q) = only(d.join()) else { panic!("not results") };
    assert_eq!((q.key.as_deref(), q.wait_secs), (Some("k"), Some(120)));
}

#[test]
fn a_file_over_700_kib_is_refused_before_reaching_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.log");
    std::fs::write(&file, vec![b'x'; 700 * 1024 + 1]).unwrap();
    let out =
        run(&dir.path().join("none.sock"), &["agent", "publish", "k", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("rush: {} is 716801 bytes: ", file.display())), "{err}");
}

#[test]
fn delegate_wait_prints_the_task_on_stderr_and_the_result_on_stdout() {
    use rush_proto::coordination::{Task, TaskState};
    let d = FakeDaemon::start(|c| {
        let (req, _) = c.request();
        let task = Task {
            id: 12,
            from: "lead".into(),
            to: "w".into(),
            session: None,
            text: "go".into(),
            parent: None,
            state: TaskState::Open,
            result_key: "task/12".into(),
            created_unix_ms: 0,
        };
        c.ok(req.id, Response::Delegated { task, spawned: None });
        let (wait, _) = c.request();
        c.ok(wait.id, Response::Results { results: vec![result_info("task/12", Some(b"done\n"))] });
        vec![req.request, wait.request]
    });
    let out = run(&d.socket, &["agent", "delegate", "go", "w", "--agent", "lead", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "done\n");
    assert_eq!(stderr(&out), "rush: task 12 delegated to w (its result: rush agent results task/12)\n");
    let requests = d.join();
    let Request::Results(q) = &requests[1] else { panic!("{requests:?}") };
    assert_eq!((q.key.as_deref(), q.wait_secs), (Some("task/12"), Some(60)));
}

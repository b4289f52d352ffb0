//! Harness for tests that need root and a real kernel.
//!
//! Each test starts its own `rush-agentd` with a private socket, state dir, bpffs pin dir
//! and cgroup parent, so tests run in parallel and leave nothing behind.
//!
//! Skips: a test that cannot run here calls [`require`]. Under `RUSH_TEST_STRICT=1` (set by
//! `cargo xtask test` and in the guests) a missing requirement fails the test instead: a
//! tier that exists to prove a kernel guarantee must not pass by skipping.

pub mod channels;
pub mod escape_kit;
pub mod tmux;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Directory holding the built binaries (rush, rush-agentd, rush-test-net): `RUSH_BIN_DIR`,
/// else the directory of the test executable's parent (target/<profile>/).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RUSH_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` (cargo xtask test does)",
        p.display()
    );
    p
}

/// A daemon config with the process hardening (harden.rs) off: tests that prove another
/// layer alone (the BPF LSM guard, the cgroup itself) use it, so that an earlier layer
/// cannot be what refused.
pub const HARDENING_OFF: &str = "[hardening]\ncgroup_namespace = false\nprivate_cgroupfs = false\n\
                                 drop_capabilities = []\nseccomp = false\n";

pub fn strict() -> bool {
    std::env::var("RUSH_TEST_STRICT").is_ok_and(|v| v == "1")
}

/// Returns false (after a loud SKIP line) when `ok` is false, unless strict, where it panics.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("required for this tier but missing: {what}");
    }
    // Straight to the stderr handle, not eprintln!: libtest captures the print macros of
    // passing tests, and a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP ***** {what} *****");
    false
}

/// A daemon whose BPF LSM programs attached; None (after a SKIP line, or a failure under
/// RUSH_TEST_STRICT=1) where they cannot, or when not root.
pub fn lsm_daemon() -> Option<Daemon> {
    lsm_daemon_with("")
}

/// [`lsm_daemon`] with this config file text.
pub fn lsm_daemon_with(config: &str) -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    let d = Daemon::start_with_config(config);
    if !require(d.lsm_attached(), "BPF LSM programs attach on this kernel (rush doctor: bpf-lsm-attach)") {
        return None;
    }
    Some(d)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and daemon: its cgroup parent and pin dir.
fn next_tag() -> String {
    format!("rush-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Where a test daemon keeps its state: a temporary directory removed on drop, or a
/// directory that outlives the test (the reboot suite's, on the guest's state disk).
pub enum StateDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl StateDir {
    pub fn path(&self) -> &Path {
        match self {
            StateDir::Temp(t) => t.path(),
            StateDir::Kept(p) => p,
        }
    }
}

/// A private daemon, stopped (SIGTERM) and cleaned up on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state: StateDir,
    pub cgroup_parent: String,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    /// Extra environment of the daemon process (e.g. RUSH_TEST_CRASH_AT), also on restart.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_config("")
    }

    /// A daemon with this config file text (TOML); flags still set the private paths.
    pub fn start_with_config(config: &str) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// A daemon with this config and these extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let tag = next_tag();
        let state = tempfile::Builder::new().prefix(&tag).tempdir().expect("state dir");
        Daemon::launch_in(StateDir::Temp(state), tag, config, env)
    }

    /// A daemon whose state (database, sessions' store, socket) is kept in `root`, which
    /// outlives it: started again there after a reboot, it finds what the last one left.
    pub fn start_in(root: &Path, config: &str) -> Daemon {
        std::fs::create_dir_all(root).expect("state root");
        Daemon::launch_in(StateDir::Kept(root.to_owned()), next_tag(), config, &[])
    }

    fn launch_in(state: StateDir, tag: String, config: &str, env: &[(&str, &str)]) -> Daemon {
        let socket = state.path().join("agentd.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let log = state.path().join("daemon.log");
        let config_path = state.path().join("config.toml");
        std::fs::write(&config_path, config).expect("config file");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = launch(&config_path, state.path(), &socket, &pin_dir, &tag, &log, &env);
        let mut d = Daemon { child: Some(child), socket, state, cgroup_parent: tag, pin_dir, log, env };
        d.wait_ready();
        d
    }

    /// Starts the daemon again on the same socket, state, pins and cgroups (after
    /// [`Daemon::kill9`]): what a restart after a crash does.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        let config_path = self.state.path().join("config.toml");
        self.child = Some(launch(
            &config_path,
            self.state.path(),
            &self.socket,
            &self.pin_dir,
            &self.cgroup_parent,
            &self.log,
            &self.env,
        ));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        // Loading the BPF objects runs the verifier: seconds under TCG, more with two guests
        // sharing the host's cores.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(90);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                // Most of a guest test's time (the verifier under TCG): shown with --nocapture.
                eprintln!("rush-agentd ready after {:.2} s", started.elapsed().as_secs_f64());
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("rush-agentd exited with {status} during start-up:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rush-agentd not ready after 90 s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Leaves the daemon and its agents running and everything in place (no stop, no
    /// cleanup): what a machine about to lose power has.
    pub fn abandon(mut self) {
        self.child.take();
        // Forgetting is the point: Drop would stop the daemon and clean up.
        #[allow(clippy::mem_forget)]
        std::mem::forget(self);
    }

    /// SIGKILL, as a crash would: no cleanup, pins and agents stay.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's doctor report (via `rush --json doctor`).
    pub fn doctor(&self) -> serde_json::Value {
        self.rush_json(&["doctor"])
    }

    /// Whether this daemon attached its BPF LSM (file-token) programs.
    pub fn lsm_attached(&self) -> bool {
        self.doctor()["probes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "bpf-lsm-attach" && p["ok"] == true))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// `rush --socket S ARGS...`, waited for.
    pub fn rush(&self, args: &[&str]) -> Output {
        self.rush_cmd(args).output().expect("run rush")
    }

    pub fn rush_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("rush"));
        c.arg("--socket").arg(&self.socket).args(args).stdin(Stdio::null());
        c
    }

    /// `rush --json ARGS`, parsed; panics with the output when it fails.
    pub fn rush_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.rush(&all);
        assert!(out.status.success(), "rush {args:?} failed: {}", describe(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("rush {args:?}: not JSON ({e}): {}", describe(&out)))
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.rush_json(&["audit"]).as_array().cloned().unwrap_or_default()
    }

    /// The daemon's pid (found by its private socket on the command line: also after a
    /// restart, and for a daemon this test did not start itself).
    pub fn pid(&self) -> i32 {
        let sock = self.socket.to_str().unwrap();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"rush-agentd")) && args.contains(&sock.as_bytes()) {
                return pid;
            }
        }
        panic!("no rush-agentd process with --socket {sock}");
    }

    /// The v2 cgroup directory that holds this daemon's agents.
    pub fn cgroup_v2_parent(&self) -> PathBuf {
        cgroup2_root().join(&self.cgroup_parent)
    }
}

/// rush-agentd with the test's private paths; its log appended to `log`.
fn launch(
    config: &Path,
    root: &Path,
    socket: &Path,
    pin_dir: &Path,
    tag: &str,
    log: &Path,
    env: &[(String, String)],
) -> Child {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("daemon log");
    // The socket outside the state dir, as in a real install (/run/rush vs
    // /var/lib/rush): agents reach the socket, never the state.
    Command::new(bin("rush-agentd"))
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--socket")
        .arg(socket)
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--cgroup-parent")
        .arg(tag)
        .arg("--ephemeral")
        .env("RUSH_LOG", "debug")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("spawn rush-agentd")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The daemon removes its agents' cgroups, unless a test killed it: then whatever
        // is left (agents and their cgroups) is ours to remove, and so are the parents.
        for root in cgroup_roots() {
            let parent = root.join(&self.cgroup_parent);
            for agent in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let _ = std::fs::write(agent.path().join("cgroup.kill"), "1");
                wait_until(Duration::from_secs(2), || std::fs::remove_dir(agent.path()).is_ok());
            }
            let _ = std::fs::remove_dir(&parent);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // A killed daemon leaves its loop-mounted snapshot store mounted.
        let store = self.state.path().join("state-workspaces/btrfs");
        if std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*store.to_string_lossy())))
        {
            let _ = nix::mount::umount2(&store, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// Every cgroup hierarchy mount point (v2 and v1).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup2" || f[2] == "cgroup")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?} (signal {:?})\nstdout: {}\nstderr: {}",
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tiny HTTP server on 127.0.0.1 answering every request with "hello from rush test".
pub struct HttpServer {
    pub port: u16,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let body = "hello from rush test\n";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        HttpServer { port }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); treat it as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// dnsmasq on 127.0.0.1:`port`, answering from a hosts file with a 2 s TTL.
pub struct Dnsmasq {
    child: std::process::Child,
    hosts: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(hosts: &str) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let port = free_udp_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--conf-file=/dev/null",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--local-ttl=2",
                "--log-queries",
                "--log-facility=-",
                "--user=root",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg("--pid-file=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base; `cargo xtask setup` installs it)");
        let ready = wait_until(Duration::from_secs(10), || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            // Any well-formed query: a reply of any kind means it listens.
            let q = [0u8, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
            s.send_to(&q, ("127.0.0.1", port)).is_ok() && s.recv(&mut [0u8; 512]).is_ok()
        });
        assert!(ready, "dnsmasq did not answer on port {port}");
        Dnsmasq { child, hosts: file, port, _dir: dir }
    }

    /// New answers: the hosts file rewritten, then SIGHUP (dnsmasq re-reads it).
    pub fn answer(&self, hosts: &str) {
        let tmp = self.hosts.with_extension("new");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The repository's root (fixtures, test data).
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// What `cargo xtask setup` installed under the cache dir: `$VAR`, else
/// `${RUSH_CACHE_DIR:-~/.cache/rush}/NAME`.
pub fn cached(var: &str, name: &str) -> PathBuf {
    let set = |v: &str| std::env::var_os(v).filter(|v| !v.is_empty()).map(PathBuf::from);
    set(var).unwrap_or_else(|| {
        set("RUSH_CACHE_DIR")
            .unwrap_or_else(|| set("HOME").unwrap_or_else(|| "/root".into()).join(".cache/rush"))
            .join(name)
    })
}

/// The SDK venv's python (`cached("RUSH_SDK_VENV", "sdk-venv")`), if it has the SDKs.
pub fn sdk_python() -> Option<PathBuf> {
    let venv = cached("RUSH_SDK_VENV", "sdk-venv");
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import anthropic, openai"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// fixtures/model_api.py on TLS: (the process, its port, its request log).
pub struct ModelApi {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ModelApi {
    pub fn start() -> ModelApi {
        let dir = tempfile::tempdir().unwrap();
        let (port_file, log) = (dir.path().join("port"), dir.path().join("requests.jsonl"));
        let tls = repo().join("testdata/tls");
        let child = Command::new("python3")
            .arg(repo().join("kernel-tests/fixtures/model_api.py"))
            .arg("--cert")
            .arg(tls.join("localhost.pem"))
            .arg("--key")
            .arg(tls.join("localhost.key"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 fixtures/model_api.py");
        assert!(wait_until(Duration::from_secs(10), || port_file.exists()), "the model API did not start");
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        ModelApi { child, port, log, _dir: dir }
    }

    /// What reached the API: (path, body).
    pub fn requests(&self) -> Vec<(String, serde_json::Value)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["path"].as_str().unwrap().to_owned(), v["body"].clone()))
            .collect()
    }
}

impl Drop for ModelApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd cluster on loopback (Debian's `etcd-server`, /usr/bin/etcd): `n` members,
/// free ports, data in a temporary directory (in /dev/shm where there is one: the tests
/// measure Rush, not the disk), killed on drop. Fast elections (heartbeat 50 ms, election
/// timeout 500 ms) so that losing the leader costs about a second.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    /// With TLS: the CA the members' certificate chains to.
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

struct EtcdMember {
    client_port: u16,
    /// Plain HTTP, for [`EtcdCluster::status`] (the client port itself when not TLS).
    status_port: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts the members and waits until every one answers with a leader.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// Members serving clients on https only, with testdata/tls's localhost certificate
    /// (its CA is `etcd_ca_file` in [`EtcdCluster::config`]).
    pub fn start_tls(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, Some(repo().join("testdata/tls")))
    }

    fn start_with(n: usize, tls: Option<PathBuf>) -> EtcdCluster {
        let etcd = Path::new("/usr/bin/etcd");
        assert!(
            etcd.exists(),
            "{} missing: `cargo xtask setup` installs Debian's etcd-server",
            etcd.display()
        );
        let shm = Path::new("/dev/shm");
        let dir =
            if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("etcd dir");
        // All ports at once, held until every one is known, so none is handed out twice.
        let listeners: Vec<TcpListener> =
            (0..3 * n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 * i + 1]);
        let initial: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
        let token = format!("rush-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let members = (0..n)
            .map(|i| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let client = format!("{scheme}://127.0.0.1:{}", ports[3 * i]);
                let status_port = if tls.is_some() { ports[3 * i + 2] } else { ports[3 * i] };
                let listen = match tls {
                    Some(_) => format!("{client},http://127.0.0.1:{status_port}"),
                    None => client.clone(),
                };
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                let mut cmd = Command::new(etcd);
                if let Some(t) = &tls {
                    cmd.arg("--cert-file")
                        .arg(t.join("localhost.pem"))
                        .arg("--key-file")
                        .arg(t.join("localhost.key"));
                }
                let child = cmd
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", &listen, "--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                    .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &token])
                    .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                    .args(["--logger", "zap", "--log-level", "warn"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start /usr/bin/etcd");
                EtcdMember { client_port: ports[3 * i], status_port, child: Some(child) }
            })
            .collect();
        let ca = tls.map(|t| t.join("ca.pem"));
        let cluster = EtcdCluster { members, ca, _dir: dir };
        let healthy = wait_until(Duration::from_secs(20), || {
            (0..n).all(|i| cluster.status(i).is_some_and(|s| s.leader != 0))
        });
        assert!(healthy, "etcd cluster not healthy after 20 s:\n{}", cluster.logs());
        cluster
    }

    /// Every member's client URL (killed ones too: a client must cope).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        self.members.iter().map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port)).collect()
    }

    /// `[coordination]` for a daemon on this cluster.
    pub fn config(&self, lease_ttl: &str) -> String {
        let eps: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        let ca = self.ca.as_ref().map(|c| format!("etcd_ca_file = {:?}\n", c.display().to_string()));
        format!(
            "[coordination]\nbackend = \"etcd\"\netcd_endpoints = [{}]\netcd_lease_ttl = {lease_ttl:?}\n{}",
            eps.join(", "),
            ca.unwrap_or_default()
        )
    }

    /// Member `i`'s view (etcd's HTTP gateway, `/v3/maintenance/status`); None when it does
    /// not answer.
    pub fn status(&self, i: usize) -> Option<EtcdStatus> {
        self.members[i].child.as_ref()?;
        let body = http_post_json(self.members[i].status_port, "/v3/maintenance/status", "{}")?;
        let num = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Some(EtcdStatus { member_id: num(&body["header"]["member_id"]), leader: num(&body["leader"]) })
    }

    /// The index of the member that is leader now.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .find(|&i| self.status(i).is_some_and(|s| s.leader != 0 && s.leader == s.member_id))
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let text =
                    std::fs::read_to_string(self._dir.path().join(format!("m{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!("--- etcd m{i}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// What one etcd member says of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdStatus {
    pub member_id: u64,
    /// 0: it knows of no leader.
    pub leader: u64,
}

/// `POST path` with a JSON body to 127.0.0.1:`port`, the answer's JSON body.
fn http_post_json(port: u16, path: &str, body: &str) -> Option<serde_json::Value> {
    let mut s =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, rest) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let json = &rest[rest.find('{')?..=rest.rfind('}')?];
    serde_json::from_str(json).ok()
}

/// `claim` for `agent` (the operator acting for it) of `task`, protecting `paths`.
pub fn claim_request(agent: &str, task: &str, paths: &[&str]) -> rush_proto::Request {
    rush_proto::Request::Claim(rush_proto::coordination::ClaimRequest {
        agent: Some(agent.into()),
        task: task.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ttl_secs: None,
        enforce: false,
    })
}

/// The outcome a `claim` or `renew` reply carries; panics on any other reply.
pub fn claim_outcome(r: rush_proto::Response) -> rush_proto::coordination::ClaimOutcome {
    match r {
        rush_proto::Response::Claim { outcome } => outcome,
        other => panic!("not a claim reply: {other:?}"),
    }
}

impl Daemon {
    /// Detached agents running `sleep 600`, named `prefix0..n`.
    pub fn sleepers(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}{i}");
                let out = self.rush(&["agent", "spawn", &name, "--detach", "--", "sleep", "600"]);
                assert!(out.status.success(), "{name}: {}", describe(&out));
                name
            })
            .collect()
    }

    /// The live claims (`rush --json agent claims`).
    pub fn live_claims(&self) -> Vec<serde_json::Value> {
        self.rush_json(&["agent", "claims"]).as_array().cloned().unwrap_or_default()
    }
}

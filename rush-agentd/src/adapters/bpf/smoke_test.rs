//! End-to-end check on the running kernel: load, attach, confine a process in an agent
//! cgroup, read the deny events, restart on the same pins. Needs root and cgroup v2; prints
//! SKIP otherwise.
//!
//!     cargo test -p rush-agentd bpf::smoke_test -- --nocapture     (as root)

use std::ffi::CString;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapHandle, MapType};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

pub(super) const EPERM: i32 = libc::EPERM;
pub(super) const CHILD_COMM: &str = "rush-smoke";

/// Held by each test that starts a BpfHandle: they count this process's rush-bpf threads
/// and must not see another test's.
pub(super) static BPF_TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn smoke_test_net_confinement() {
    let _serial = BPF_TEST_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !nix::unistd::geteuid().is_root() {
        // Not println!: libtest would swallow it in a passing test.
        let _ = writeln!(std::io::stderr(), "SKIP: needs root (bpf, cgroups, bpffs)");
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let Some(v2_root) = cgroup2_root() else {
        // Not println!: libtest would swallow it in a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified"
        );
        return;
    };
    let id = std::process::id();
    let fixture = Fixture {
        parent: v2_root.join(format!("rush-bpftest-{id}")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/rush-bpftest-{id}")),
    };
    let agent = fixture.parent.join("a1"); // level 2 below the v2 root
    let sub = agent.join("sub"); // made by the agent itself: still the agent
    std::fs::create_dir_all(&sub).expect("create test cgroups");
    let cgroup_id = std::fs::metadata(&agent).unwrap().ino();
    plant_incompatible_pin(&fixture.pin_dir);

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", tcp_addr.port()).parse().unwrap();
    let v6_loopback: SocketAddr = format!("[::1]:{}", tcp_addr.port()).parse().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let cfg = BpfConfig {
        pin_dir: fixture.pin_dir.clone(),
        cgroup2_root: v2_root.clone(),
        agent_cgroup_level: 2,
        protected_dirs: Vec::new(),
    };

    let (bpf, report, mut events) = BpfHandle::start(cfg.clone()).expect("start BPF");
    println!("attach report:");
    for p in &report.programs {
        println!("  {:<22} {:<20} attached={} error={:?}", p.name, p.hook, p.attached, p.error);
    }
    println!("lsm_error: {:?}", report.lsm_error());
    assert!(report.net_enforced(), "{report:?}");
    let stats = MapHandle::from_pinned_path(fixture.pin_dir.join("rush_stats")).unwrap();
    assert_eq!(stats.value_size(), 8, "the incompatible rush_stats pin was replaced");

    // Deny: every way out is refused, with an event; processes outside are untouched.
    bpf.add_agent(cgroup_id, &KernelNetPolicy::Deny, AgentFlags::default()).unwrap();
    std::net::TcpStream::connect(tcp_addr).expect("outside the agent cgroup: allowed");
    assert_eq!(probe(&agent, Probe::Tcp(tcp_addr)), Err(EPERM), "connect4");
    assert_eq!(probe(&sub, Probe::Tcp(tcp_addr)), Err(EPERM), "connect4 from a sub-cgroup");
    assert_eq!(probe(&agent, Probe::Tcp(mapped)), Err(EPERM), "connect6 to ::ffff:127.0.0.1");
    assert_eq!(probe(&agent, Probe::Udp(udp_addr)), Err(EPERM), "sendmsg4");
    assert_eq!(probe(&agent, Probe::Tcp(v6_loopback)), Err(EPERM), "connect6");
    assert_eq!(probe(&agent, Probe::FastOpen(tcp_addr)), Err(EPERM), "TCP fast open sendto");
    let denies = collect_denies(&mut events, 6);
    let expect = |hook, destination: SocketAddr, protocol: &str| {
        assert!(
            denies.iter().any(|e| matches!(e, KernelEvent::NetDeny { cgroup_id: c, comm, hook: h, destination: d, protocol: p, pid, tgid, .. }
                if *c == cgroup_id && comm == CHILD_COMM && *h == hook && *d == destination && p == protocol && pid == tgid)),
            "no {hook:?} deny event to {destination} ({protocol}) in {denies:#?}"
        )
    };
    expect(NetHook::Connect4, tcp_addr, "tcp");
    expect(NetHook::Connect6, tcp_addr, "tcp"); // reported as the IPv4 address it is
    expect(NetHook::Sendmsg4, udp_addr, "udp");
    expect(NetHook::Connect6, v6_loopback, "tcp");
    println!("deny events: {denies:#?}");

    // Failed ring-buffer reservations are counted in rush_stats and reported as deltas.
    let lost_key = rush_ebpf::STAT_EVENTS_LOST.to_ne_bytes();
    let lost = stats.lookup(&lost_key, libbpf_rs::MapFlags::ANY).unwrap().unwrap();
    let lost = u64::from_ne_bytes(lost.try_into().unwrap());
    stats.update(&lost_key, &(lost + 5).to_ne_bytes(), libbpf_rs::MapFlags::ANY).unwrap();
    assert_eq!(next_lost(&mut events), Some(5));

    // List: exactly the listed (address, port); port 0 = any port.
    let list = KernelNetPolicy::List(vec![(tcp_addr.ip(), 32, tcp_addr.port())]);
    bpf.add_agent(cgroup_id, &list, AgentFlags::default()).unwrap();
    assert_eq!(probe(&agent, Probe::Tcp(tcp_addr)), Ok(()), "listed");
    assert_eq!(probe(&agent, Probe::Tcp(mapped)), Ok(()), "listed, via a v6 socket");
    assert_eq!(probe(&agent, Probe::Udp(udp_addr)), Err(EPERM), "port not listed");
    let any_port = KernelNetPolicy::List(vec![(udp_addr.ip(), 32, 0)]);
    bpf.add_agent(cgroup_id, &any_port, AgentFlags::default()).unwrap();
    assert_eq!(probe(&agent, Probe::Udp(udp_addr)), Ok(()), "port 0 = any port");

    bpf.add_agent(cgroup_id, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    assert_eq!(probe(&agent, Probe::Udp(udp_addr)), Ok(()), "allow-all");

    // The daemon goes away: the pinned links and maps keep enforcing.
    bpf.add_agent(cgroup_id, &KernelNetPolicy::Deny, AgentFlags::default()).unwrap();
    drop(bpf);
    let deadline = Instant::now() + Duration::from_secs(2);
    while bpf_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(bpf_threads(), 0, "owner and events threads end with the last handle");
    drop(events);
    assert_eq!(probe(&agent, Probe::Tcp(tcp_addr)), Err(EPERM), "enforced with no daemon");

    // A restarted daemon reuses the pinned maps and replaces the pinned links.
    let old_prog = pinned_connect4_prog(&fixture.pin_dir);
    assert!(connect4_progs(&v2_root).contains(&old_prog));
    let (bpf, _report, _events) = BpfHandle::start(cfg).expect("restart BPF");
    let new_prog = pinned_connect4_prog(&fixture.pin_dir);
    let attached = connect4_progs(&v2_root);
    assert!(attached.contains(&new_prog) && !attached.contains(&old_prog), "old link replaced");
    assert_eq!(bpf.agent_ids().unwrap(), vec![cgroup_id]);
    assert_eq!(probe(&agent, Probe::Tcp(tcp_addr)), Err(EPERM), "still denied after restart");
    bpf.remove_agent(cgroup_id).unwrap();
    bpf.remove_agent(cgroup_id).unwrap(); // idempotent
    assert_eq!(probe(&agent, Probe::Tcp(tcp_addr)), Ok(()), "removed agent is unconfined");
    assert!(bpf.agent_ids().unwrap().is_empty());
    println!("smoke test passed");
}

/// Test cgroups and pins, removed even when an assertion fails.
pub(super) struct Fixture {
    pub(super) parent: PathBuf,
    pub(super) pin_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for dir in [self.parent.join("a1/sub"), self.parent.join("a1"), self.parent.clone()] {
            // rmdir fails while the cgroup still counts an exiting process; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Id of the program behind the pinned connect4 link.
fn pinned_connect4_prog(pin_dir: &Path) -> u32 {
    let link = libbpf_rs::Link::open(pin_dir.join("rush_link_connect4")).unwrap();
    link.info().unwrap().prog_id
}

/// Ids of the programs attached to connect4 of `cgroup` (of every daemon).
fn connect4_progs(cgroup: &Path) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(cgroup).unwrap();
    let mut ids = [0u32; 256];
    let mut count = ids.len() as u32;
    let mut flags = 0;
    // SAFETY: the pointers are to live locals; `count` tells the kernel the array's size.
    let r = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_query(
            dir.as_raw_fd(),
            libbpf_rs::libbpf_sys::BPF_CGROUP_INET4_CONNECT,
            0,
            &mut flags,
            ids.as_mut_ptr(),
            &mut count,
        )
    };
    assert_eq!(r, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    ids[..count as usize].to_vec()
}

/// Threads of this process named rush-bpf*.
pub(super) fn bpf_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("rush-bpf"))
        .count()
}

pub(super) fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC))
}

/// A `rush_stats` pin with the wrong value size, as an older daemon version might leave.
fn plant_incompatible_pin(pin_dir: &Path) {
    super::load::ensure_bpffs(pin_dir).unwrap();
    std::fs::create_dir_all(pin_dir).unwrap();
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut map = MapHandle::create(MapType::Array, Some("rush_stats"), 4, 4, 1, &opts).unwrap();
    map.pin(pin_dir.join("rush_stats")).unwrap();
}

fn collect_denies(events: &mut UnboundedReceiver<KernelEvent>, want: usize) -> Vec<KernelEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match events.try_recv() {
            Ok(e @ KernelEvent::NetDeny { .. }) => got.push(e),
            Ok(other) => println!("event: {other:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    got
}

fn next_lost(events: &mut UnboundedReceiver<KernelEvent>) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match events.try_recv() {
            Ok(KernelEvent::Lost { count }) => return Some(count),
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    None
}

#[derive(Clone, Copy)]
pub(super) enum Probe {
    /// connect()
    Tcp(SocketAddr),
    /// sendto() on an unconnected UDP socket
    Udp(SocketAddr),
    /// sendto(MSG_FASTOPEN) on an unconnected TCP socket: connects without connect()
    FastOpen(SocketAddr),
}

/// Forks a child that moves itself into `cgroup`, then makes the `probe` call. Ok, or the
/// errno the call failed with.
pub(super) fn probe(cgroup: &Path, probe: Probe) -> Result<(), i32> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let comm = CString::new(CHILD_COMM).unwrap();
    let (addr, sock_type, send_flags) = match probe {
        Probe::Tcp(a) => (a, libc::SOCK_STREAM, None),
        Probe::Udp(a) => (a, libc::SOCK_DGRAM, Some(0)),
        Probe::FastOpen(a) => (a, libc::SOCK_STREAM, Some(libc::MSG_FASTOPEN)),
    };
    let (sockaddr, sockaddr_len) = raw_sockaddr(addr);
    let sockaddr_ptr = (&raw const sockaddr).cast::<libc::sockaddr>();
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };

    // SAFETY: this test process has other threads, so the child may only make
    // async-signal-safe calls: it runs raw syscalls on memory prepared before the fork and
    // leaves with _exit, never returning into Rust code that could allocate or lock.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        // SAFETY: (the child) every call is a raw syscall wrapper on the locals above.
        0 => unsafe {
            // "0" moves the writing process.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(200);
            }
            libc::close(fd);
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            let s = libc::socket(domain, sock_type, 0);
            if s < 0 {
                libc::_exit(201);
            }
            let r = match send_flags {
                Some(flags) => {
                    libc::sendto(s, c"x".as_ptr().cast(), 1, flags, sockaddr_ptr, sockaddr_len) as i32
                }
                None => libc::connect(s, sockaddr_ptr, sockaddr_len),
            };
            libc::_exit(if r < 0 { *libc::__errno_location() } else { 0 })
        },
        pid => match waitpid(Pid::from_raw(pid), None).expect("waitpid") {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, code) if code >= 200 => panic!("child setup failed ({code})"),
            WaitStatus::Exited(_, errno) => Err(errno),
            other => panic!("child: {other:?}"),
        },
    }
}

pub(super) fn raw_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is a plain C struct; all zeroes is a valid (empty) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

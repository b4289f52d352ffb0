//! On the running kernel: CIDR allow lists, the byte counters and budget of the cgroup_skb
//! programs, and API-call budgets of the connect programs. Needs root and cgroup v2; prints
//! SKIP otherwise.
//!
//!     cargo test -p rush-agentd bpf::net_budget_smoke_test -- --nocapture --test-threads=1   (as root)

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use rush_ebpf::{AF_INET, Plain, RushAgent, RushNetKey};
use tokio::sync::mpsc::UnboundedReceiver;

use super::smoke_test::{
    BPF_TEST_LOCK, CHILD_COMM, EPERM, Fixture, Probe, cgroup2_root, probe, raw_sockaddr,
};
use super::*;

const ECONNREFUSED: i32 = libc::ECONNREFUSED;
const MIB: u64 = 1 << 20;

/// One BpfHandle on private pins, and one agent cgroup (level 2) to confine children in.
struct Setup {
    bpf: BpfHandle,
    events: UnboundedReceiver<KernelEvent>,
    agent: PathBuf,
    cgroup_id: u64,
    // Dropped after `bpf`: the pins and cgroups go last.
    _fixture: Fixture,
    _serial: MutexGuard<'static, ()>,
}

/// None (after a SKIP line) where the test cannot run. `before_start` runs once the pin
/// directory exists, before the daemon side loads (to plant an older daemon's pins).
fn setup(tag: &str, before_start: impl FnOnce(&Path, u64)) -> Option<Setup> {
    let serial = BPF_TEST_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIP: needs root (bpf, cgroups, bpffs)");
        return None;
    }
    let Some(v2_root) = cgroup2_root() else {
        let _ = writeln!(std::io::stderr(), "SKIP: no cgroup v2 mount");
        return None;
    };
    let id = std::process::id();
    let fixture = Fixture {
        parent: v2_root.join(format!("rush-{tag}-{id}")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/rush-{tag}-{id}")),
    };
    let agent = fixture.parent.join("a1");
    std::fs::create_dir_all(&agent).expect("create test cgroups");
    let cgroup_id = std::fs::metadata(&agent).unwrap().ino();
    super::load::ensure_bpffs(&fixture.pin_dir).unwrap();
    std::fs::create_dir_all(&fixture.pin_dir).unwrap();
    before_start(&fixture.pin_dir, cgroup_id);
    let cfg = BpfConfig {
        pin_dir: fixture.pin_dir.clone(),
        cgroup2_root: v2_root,
        agent_cgroup_level: 2,
        protected_dirs: Vec::new(),
    };
    let (bpf, report, events) = BpfHandle::start(cfg).expect("start BPF");
    assert!(report.net_enforced(), "{report:?}");
    for hook in ["cgroup_skb/ingress", "cgroup_skb/egress"] {
        assert!(
            report.programs.iter().any(|p| p.hook == hook && p.attached),
            "{hook} not attached: {report:?}"
        );
    }
    Some(Setup { bpf, events, agent, cgroup_id, _fixture: fixture, _serial: serial })
}

fn tcp(ip: &str, port: u16) -> Probe {
    Probe::Tcp(SocketAddr::new(ip.parse().unwrap(), port))
}

#[test]
fn cidr_allow_lists() {
    let Some(s) = setup("cidrtest", |_, _| {}) else { return };
    let (bpf, agent, id) = (&s.bpf, &s.agent, s.cgroup_id);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = other_listener.local_addr().unwrap().port();
    // Only 127.0.0.1 listens: an allowed connect elsewhere in 127/8 is refused by the
    // stack (ECONNREFUSED), a denied one by the program (EPERM).
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();

    bpf.add_agent(id, &KernelNetPolicy::List(vec![(ip("127.0.0.0"), 8, port)]), AgentFlags::default())
        .unwrap();
    assert_eq!(probe(agent, tcp("127.0.0.1", port)), Ok(()), "in 127.0.0.0/8, listed port");
    assert_eq!(probe(agent, tcp("127.9.8.7", port)), Err(ECONNREFUSED), "in the block: allowed");
    assert_eq!(probe(agent, tcp("::ffff:127.9.8.7", port)), Err(ECONNREFUSED), "mapped, in the block");
    assert_eq!(probe(agent, tcp("127.0.0.1", other)), Err(EPERM), "port not listed");
    assert_eq!(probe(agent, tcp("::1", port)), Err(EPERM), "IPv6 is not in an IPv4 block");

    // A narrower block, any port; and the longest prefix does not hide a shorter one.
    let list = vec![(ip("127.0.0.0"), 24, 0), (ip("127.0.0.1"), 32, port), (ip("::"), 0, other)];
    bpf.add_agent(id, &KernelNetPolicy::List(list), AgentFlags::default()).unwrap();
    assert_eq!(probe(agent, tcp("127.0.0.1", other)), Ok(()), "127.0.0.0/24, any port");
    assert_eq!(probe(agent, tcp("127.0.0.200", other)), Err(ECONNREFUSED), "in /24");
    assert_eq!(probe(agent, tcp("127.0.1.1", port)), Err(EPERM), "outside /24 and /32");
    assert_eq!(probe(agent, tcp("127.0.1.1", other)), Err(EPERM), "::/0 covers no IPv4");
    assert_eq!(probe(agent, tcp("::1", other)), Err(ECONNREFUSED), "::/0 on its port");
    assert_eq!(probe(agent, tcp("::1", port)), Err(EPERM), "::/0 on another port");

    // /0 = everything of the family; an unrelated block admits nothing here.
    bpf.add_agent(id, &KernelNetPolicy::List(vec![(ip("0.0.0.0"), 0, 0)]), AgentFlags::default()).unwrap();
    assert_eq!(probe(agent, tcp("127.1.2.3", port)), Err(ECONNREFUSED), "0.0.0.0/0");
    bpf.add_agent(id, &KernelNetPolicy::List(vec![(ip("10.0.0.0"), 8, 0)]), AgentFlags::default()).unwrap();
    assert_eq!(probe(agent, tcp("127.0.0.1", port)), Err(EPERM), "127.0.0.1 is not in 10/8");
    let denies = drain(&mut { s.events }, Duration::from_millis(300));
    assert!(denies.iter().any(|e| matches!(e, KernelEvent::NetDeny { cgroup_id, .. } if *cgroup_id == id)));
    bpf.remove_agent(id).unwrap();
    assert_eq!(probe(agent, tcp("127.0.0.1", other)), Ok(()), "removed agent");
    drop((listener, other_listener));
}

/// An older daemon's pins: a HASH `rush_net_allow` with one exact entry and an agent in
/// list mode. The new loader moves the entry into the LPM trie and drops the old pin.
#[test]
fn a_retired_allow_pin_is_migrated() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let plant = |pin_dir: &Path, cgroup_id: u64| {
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let key_size = size_of::<RushNetKey>() as u32;
        let mut old =
            MapHandle::create(MapType::Hash, Some("rush_net_allow"), key_size, 1, 64, &opts).unwrap();
        let mut key = RushNetKey { cgroup_id, family: AF_INET, port, ..Default::default() };
        key.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        old.update(key.as_bytes(), &[1], MapFlags::ANY).unwrap();
        old.pin(pin_dir.join("rush_net_allow")).unwrap();
        let mut agents = MapHandle::create(MapType::Hash, Some("rush_agents"), 8, 16, 16384, &opts).unwrap();
        let agent = RushAgent { net_mode: rush_ebpf::NET_MODE_LIST, ..Default::default() };
        agents.update(&cgroup_id.to_ne_bytes(), agent.as_bytes(), MapFlags::ANY).unwrap();
        agents.pin(pin_dir.join("rush_agents")).unwrap();
    };
    let Some(s) = setup("migratetest", plant) else { return };
    assert!(!s._fixture.pin_dir.join("rush_net_allow").exists(), "the retired pin is gone");
    assert_eq!(probe(&s.agent, tcp("127.0.0.1", port)), Ok(()), "the migrated entry admits");
    assert_eq!(probe(&s.agent, tcp("127.0.0.2", port)), Err(EPERM), "nothing else");
    assert_eq!(s.bpf.agent_ids().unwrap(), vec![s.cgroup_id]);
    // The migrated keys are known: a new policy replaces them.
    s.bpf.add_agent(s.cgroup_id, &KernelNetPolicy::List(vec![]), AgentFlags::default()).unwrap();
    assert_eq!(probe(&s.agent, tcp("127.0.0.1", port)), Err(EPERM), "old entry deleted");
    s.bpf.remove_agent(s.cgroup_id).unwrap();
}

#[test]
fn byte_counters_count_a_known_transfer() {
    let Some(s) = setup("bytetest", |_, _| {}) else { return };
    let (bpf, id) = (&s.bpf, s.cgroup_id);
    bpf.add_agent(id, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    assert_eq!(bpf.net_usage(id).unwrap(), Some(NetUsage::default()), "every agent has a zeroed entry");
    assert_eq!(bpf.net_usage(id + 1_000_000).unwrap(), None);

    let (up, down) = (MIB, 4 * MIB);
    let (server, addr) = serve_once(down);
    let t = transfer(&s.agent, addr, up);
    let server_got = server.join().unwrap();
    assert_eq!((t.sent, t.received, t.errno), (up, down, 0), "{t:?}");
    assert_eq!(server_got, up);
    let u = bpf.net_usage(id).unwrap().unwrap();
    println!("transfer of {up} up, {down} down counted as {u:?}");
    // IP packets, headers included: a little more than the payload, never less. Each
    // direction also carries the ACKs of the other, whose number depends on how the reader
    // was scheduled (a CI run once saw 1.16 MB sent for 1 MiB up while 4 MiB came down):
    // up to one 52-byte ACK per 1 KiB received is allowed for.
    let within = |counted: u64, payload: u64, other: u64| {
        counted >= payload && counted <= payload + payload / 20 + 64 * 1024 + other / 1024 * 52
    };
    assert!(within(u.tx_bytes, up, down), "tx {} for {up} bytes sent", u.tx_bytes);
    assert!(within(u.rx_bytes, down, up), "rx {} for {down} bytes received", u.rx_bytes);
    assert_eq!((u.dropped_packets, u.api_calls, u.refused_calls), (0, 0, 0));

    // A re-add (new policy) keeps the counters; outside processes are not counted.
    bpf.add_agent(id, &KernelNetPolicy::Deny, AgentFlags::default()).unwrap();
    let (server, addr) = serve_once(MIB);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    std::io::copy(&mut c, &mut std::io::sink()).unwrap();
    server.join().unwrap();
    assert_eq!(bpf.net_usage(id).unwrap().unwrap(), u, "unchanged");
    bpf.remove_agent(id).unwrap();
    assert_eq!(bpf.net_usage(id).unwrap(), None, "remove_agent deletes the usage entry");
}

#[test]
fn a_byte_budget_stops_a_transfer_and_reports_each_breach_once() {
    let Some(mut s) = setup("budgettest", |_, _| {}) else { return };
    let id = s.cgroup_id;
    s.bpf.add_agent(id, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    let limit = 256 * 1024;
    s.bpf.set_net_budget(id, NetBudget { bytes: Some(limit), api_calls: None }).unwrap();

    let (server, addr) = serve_once(8 * MIB);
    let t = transfer(&s.agent, addr, 0);
    server.join().unwrap();
    let u = s.bpf.net_usage(id).unwrap().unwrap();
    println!("at a {limit}-byte budget: {t:?}, {u:?}");
    assert!(t.received > 0 && t.received < limit, "{t:?}");
    assert_eq!(t.errno, libc::EAGAIN, "the read timed out: the stream stalled");
    assert!(u.tx_bytes + u.rx_bytes <= limit, "{u:?}");
    assert!(u.dropped_packets > 0, "{u:?}");
    let breaches = budget_events(&mut s.events, id);
    assert_eq!(breaches.len(), 1, "one event per breach: {breaches:?}");
    let KernelEvent::NetBudgetExceeded { used, limit: l, .. } = breaches[0] else { unreachable!() };
    assert!(used <= limit && l == limit, "{:?}", breaches[0]);

    // Raised (resume): traffic flows again, counters kept, no new event.
    s.bpf.set_net_budget(id, NetBudget { bytes: Some(64 * MIB), api_calls: None }).unwrap();
    let (server, addr) = serve_once(MIB);
    let t = transfer(&s.agent, addr, 0);
    server.join().unwrap();
    assert_eq!((t.received, t.errno), (MIB, 0), "{t:?}");
    let raised = s.bpf.net_usage(id).unwrap().unwrap();
    assert!(raised.rx_bytes >= u.rx_bytes + MIB, "{raised:?}");
    assert!(budget_events(&mut s.events, id).is_empty());

    // The next breach is reported again, once.
    let used = raised.tx_bytes + raised.rx_bytes;
    s.bpf.set_net_budget(id, NetBudget { bytes: Some(used + 100_000), api_calls: None }).unwrap();
    let (server, addr) = serve_once(8 * MIB);
    let t = transfer(&s.agent, addr, 0);
    server.join().unwrap();
    assert!(t.received < 100_000, "{t:?}");
    assert_eq!(budget_events(&mut s.events, id).len(), 1, "the second breach is reported");

    // A budget of 0 bytes lets nothing through, not everything.
    s.bpf.set_net_budget(id, NetBudget { bytes: Some(0), api_calls: None }).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = s.bpf.net_usage(id).unwrap().unwrap();
    // A dropped egress packet fails the send itself.
    assert_eq!(probe(&s.agent, Probe::Udp(udp.local_addr().unwrap())), Err(EPERM));
    let after = s.bpf.net_usage(id).unwrap().unwrap();
    assert!(after.dropped_packets > before.dropped_packets, "{after:?}");
    assert_eq!(after.tx_bytes + after.rx_bytes, before.tx_bytes + before.rx_bytes);
    s.bpf.remove_agent(id).unwrap();
}

#[test]
fn api_calls_past_the_budget_are_refused_with_an_event() {
    let Some(mut s) = setup("apitest", |_, _| {}) else { return };
    let (agent, id) = (s.agent.clone(), s.cgroup_id);
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api.local_addr().unwrap().port();
    let plain_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = plain_listener.local_addr().unwrap().port();
    s.bpf.set_api_endpoints(&[("127.0.0.1".parse().unwrap(), api_port)]).unwrap();
    s.bpf.add_agent(id, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    s.bpf.set_net_budget(id, NetBudget { bytes: None, api_calls: Some(3) }).unwrap();

    for n in 1..=3 {
        assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Ok(()), "API call {n} of 3");
    }
    assert_eq!(probe(&agent, tcp("127.0.0.1", plain)), Ok(()), "not an API endpoint: not counted");
    assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Err(EPERM), "call 4 of 3");
    assert_eq!(probe(&agent, tcp("::ffff:127.0.0.1", api_port)), Err(EPERM), "via a v6 socket");
    let u = s.bpf.net_usage(id).unwrap().unwrap();
    assert_eq!((u.api_calls, u.refused_calls), (3, 2), "{u:?}");
    let refused = drain(&mut s.events, Duration::from_millis(500));
    let refused: Vec<_> =
        refused.iter().filter(|e| matches!(e, KernelEvent::ApiCallRefused { .. })).collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let KernelEvent::ApiCallRefused { cgroup_id, pid, uid, comm, addr, port, calls, limit } = refused[0]
    else {
        unreachable!()
    };
    assert_eq!((*cgroup_id, *uid, comm.as_str()), (id, 0, CHILD_COMM));
    assert!(*pid > 0);
    assert_eq!((*addr, *port, *calls, *limit), ("127.0.0.1".parse::<IpAddr>().unwrap(), api_port, 3, 3));

    // A connect the policy denies is not a call; a raised budget admits again.
    s.bpf.add_agent(id, &KernelNetPolicy::Deny, AgentFlags::default()).unwrap();
    assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Err(EPERM));
    s.bpf.add_agent(id, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    s.bpf.set_net_budget(id, NetBudget { bytes: None, api_calls: Some(4) }).unwrap();
    assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Ok(()), "call 4 of 4");
    assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Err(EPERM), "call 5 of 4");
    assert_eq!(s.bpf.net_usage(id).unwrap().unwrap().api_calls, 4);

    // Port 0 = any port of the address; an emptied set counts nothing.
    s.bpf.set_api_endpoints(&[("127.0.0.1".parse().unwrap(), 0)]).unwrap();
    assert_eq!(probe(&agent, tcp("127.0.0.1", plain)), Err(EPERM), "any port of an endpoint");
    s.bpf.set_api_endpoints(&[]).unwrap();
    assert_eq!(probe(&agent, tcp("127.0.0.1", api_port)), Ok(()), "no endpoints: not counted");
    s.bpf.remove_agent(id).unwrap();
    drop((api, plain_listener));
}

/// Every event that arrives within `wait`.
fn drain(events: &mut UnboundedReceiver<KernelEvent>, wait: Duration) -> Vec<KernelEvent> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match events.try_recv() {
            Ok(e) => got.push(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    got
}

/// The NetBudgetExceeded events of `cgroup_id` within the next second.
fn budget_events(events: &mut UnboundedReceiver<KernelEvent>, cgroup_id: u64) -> Vec<KernelEvent> {
    drain(events, Duration::from_secs(1))
        .into_iter()
        .filter(|e| matches!(e, KernelEvent::NetBudgetExceeded { cgroup_id: c, .. } if *c == cgroup_id))
        .collect()
}

/// A server on 127.0.0.1 (outside any agent) for one connection: reads to EOF, and
/// writes `down` bytes then closes its side. Joins to the bytes it read. Gives up on a
/// peer that stalls (a spent budget) after a few seconds.
fn serve_once(down: u64) -> (JoinHandle<u64>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no connection: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(4))).unwrap();
        let mut reader = conn.try_clone().unwrap();
        let read = std::thread::spawn(move || {
            let (mut total, mut buf) = (0u64, vec![0u8; 64 * 1024]);
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                total += n as u64;
            }
            total
        });
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut left = down;
        while left > 0 {
            match conn.write(&chunk[..left.min(chunk.len() as u64) as usize]) {
                Ok(n) => left -= n as u64,
                Err(_) => break,
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Write);
        read.join().unwrap()
    });
    (server, addr)
}

/// What a transfer child did: bytes sent and received, and the errno that ended it (0 =
/// the server closed its side).
#[derive(Debug, Clone, Copy, Default)]
struct Transfer {
    sent: u64,
    received: u64,
    errno: i32,
}

/// Forks a child that moves itself into `cgroup`, connects to `server`, sends `up` bytes,
/// closes its sending side and reads until EOF, an error or 2 s without data.
fn transfer(cgroup: &Path, server: SocketAddr, up: u64) -> Transfer {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let comm = CString::new(CHILD_COMM).unwrap();
    let (sockaddr, sockaddr_len) = raw_sockaddr(server);
    let sockaddr_ptr = (&raw const sockaddr).cast::<libc::sockaddr>();
    let out = vec![0x5au8; 64 * 1024];
    let mut inb = vec![0u8; 64 * 1024];
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe() wants.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let [rd, wr] = fds;
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };

    // SAFETY: this test process has other threads, so the child only makes raw syscalls on
    // memory prepared before the fork, and leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        // SAFETY: (the child) raw syscall wrappers on the locals above.
        0 => unsafe {
            let mut report = [0u64; 3];
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(200);
            }
            libc::close(fd);
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let tv = (&raw const timeout).cast::<libc::c_void>();
            let tv_len = size_of::<libc::timeval>() as libc::socklen_t;
            libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv, tv_len);
            libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_SNDTIMEO, tv, tv_len);
            if libc::connect(s, sockaddr_ptr, sockaddr_len) < 0 {
                report[2] = *libc::__errno_location() as u64;
            } else {
                while report[0] < up {
                    let len = (up - report[0]).min(out.len() as u64) as usize;
                    let n = libc::write(s, out.as_ptr().cast(), len);
                    if n <= 0 {
                        report[2] = *libc::__errno_location() as u64;
                        break;
                    }
                    report[0] += n as u64;
                }
                libc::shutdown(s, libc::SHUT_WR);
                while report[2] == 0 {
                    let n = libc::read(s, inb.as_mut_ptr().cast(), inb.len());
                    if n < 0 {
                        report[2] = *libc::__errno_location() as u64;
                    }
                    if n <= 0 {
                        break;
                    }
                    report[1] += n as u64;
                }
            }
            libc::write(wr, report.as_ptr().cast(), size_of::<[u64; 3]>());
            libc::_exit(0)
        },
        pid => {
            // SAFETY: `wr` is our copy of the pipe's write end, closed once.
            unsafe { libc::close(wr) };
            let mut report = [0u64; 3];
            // SAFETY: `report` is 24 writable bytes; `rd` is the pipe's read end.
            let n = unsafe { libc::read(rd, report.as_mut_ptr().cast(), size_of::<[u64; 3]>()) };
            // SAFETY: closed once.
            unsafe { libc::close(rd) };
            match waitpid(Pid::from_raw(pid), None).expect("waitpid") {
                WaitStatus::Exited(_, 0) => {}
                other => panic!("transfer child: {other:?}"),
            }
            assert_eq!(n, size_of::<[u64; 3]>() as isize, "transfer child report");
            drop((out, inb));
            Transfer { sent: report[0], received: report[1], errno: report[2] as i32 }
        }
    }
}

//! Records of the kernel's audit subsystem that concern agents, read from the audit
//! netlink socket's read-only multicast group, which any process with CAP_AUDIT_READ may
//! join beside auditd (or without one):
//! - the seccomp filter's refusals (`AUDIT_SECCOMP`, logged because the filter is
//!   installed with `SECCOMP_FILTER_FLAG_LOG`);
//! - Landlock's denials (`AUDIT_LANDLOCK_ACCESS` and `AUDIT_LANDLOCK_DOMAIN`, Linux 6.15+,
//!   Landlock ABI 7), logged for agents because they enter their ruleset with
//!   `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON` (see `landlock.rs`), and only while the
//!   kernel's audit is enabled (`audit_enabled`, which [`set_enabled`] turns on as auditd
//!   and journald do).
//!
//! By hand (a socket, a bind, a loop of recv; AUDIT_GET/AUDIT_SET requests): the audit
//! crates on crates.io speak the control protocol (rules, auditd's unicast), not the
//! multicast log; the records are `key=value` text.
//!
//! A Landlock access record names the domain that denied and the object (`path=`), not the
//! process: that is in the `AUDIT_SYSCALL` record of the same event (same serial, when the
//! task has an audit context, which tasks started after audit was enabled have), and the
//! domain's creator (the agent's first process) is in the `AUDIT_LANDLOCK_DOMAIN` record
//! that follows the first denial of each domain. The records of one event are gathered
//! here and handed on together ([`LandlockDenial`]).
//!
//! What is not audited: a refusal whose process (and, for Landlock, whose domain's creator)
//! exited before its record was read (records name a pid; the agent is found from
//! `/proc/PID/cgroup`), records the kernel dropped (its backlog: `audit_backlog_limit`),
//! and every refusal when the kernel has no audit support (`audit=0` on its command
//! line): `rush doctor` says which.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket};

/// `AUDIT_GET` / `AUDIT_SET` (linux/audit.h): the audit status, read or changed.
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
/// `AUDIT_SYSCALL`: the system call an event happened in (pid, uid, comm).
const AUDIT_SYSCALL: u16 = 1300;
/// `AUDIT_EOE`: the end of a multi-record event.
const AUDIT_EOE: u16 = 1320;
/// `AUDIT_SECCOMP` (linux/audit.h).
const AUDIT_SECCOMP: u16 = 1326;
/// `AUDIT_LANDLOCK_ACCESS`: one access a Landlock domain denied.
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// `AUDIT_LANDLOCK_DOMAIN`: a domain's creator (`status=allocated`) or its end.
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// `AUDIT_NLGRP_READLOG`: the read-only multicast group of every audit record.
const AUDIT_NLGRP_READLOG: u32 = 1;
/// `AUDIT_STATUS_ENABLED`: the mask bit of `struct audit_status.enabled`.
const AUDIT_STATUS_ENABLED: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// How long the records of one event may wait for the rest of it (its SYSCALL record and
/// EOE): the kernel sends them together, so this only bounds an event without an EOE.
const EVENT_WAIT: Duration = Duration::from_millis(100);

/// One system call the seccomp filter refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRefusal {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub syscall: i64,
}

/// One access a Landlock domain denied, with what the rest of its event says of the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockDenial {
    /// The denying domain's id (hex in the records).
    pub domain: u64,
    /// `fs.read_file`, `fs.make_reg`, `net.connect_tcp`, `scope.signal`, ...
    pub blockers: Vec<String>,
    /// The object, as `path=` (or, for some records, only its `name=`) says.
    pub path: Option<String>,
    /// The task, from the event's AUDIT_SYSCALL record (absent for a task without an
    /// audit context).
    pub task: Option<Task>,
    /// The domain's creator (the process that called `landlock_restrict_self`), from an
    /// AUDIT_LANDLOCK_DOMAIN record of the same event: only the first denial of a domain.
    pub creator: Option<u32>,
}

/// A task as an audit record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

impl LandlockDenial {
    /// The file operations (`rush_proto::Ops` bits) the blockers stand for; 0 when none is
    /// a file access (network, scopes, ptrace, mount changes).
    pub fn file_ops(&self) -> u32 {
        let mut ops = 0;
        for b in &self.blockers {
            ops |= match b.as_str() {
                "fs.read_file" | "fs.read_dir" => rush_proto::Ops::READ.0,
                "fs.write_file" | "fs.truncate" | "fs.ioctl_dev" => rush_proto::Ops::WRITE.0,
                "fs.execute" => rush_proto::Ops::EXEC.0,
                "fs.remove_file" | "fs.remove_dir" => rush_proto::Ops::DELETE.0,
                // Moving or linking between directories goes with create (and delete) in
                // the Landlock backend's mapping; the other blockers of the record say which.
                b if b.starts_with("fs.make_") || b == "fs.refer" => rush_proto::Ops::CREATE.0,
                _ => 0,
            };
        }
        ops
    }
}

/// What the reader hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditRecord {
    Seccomp(SyscallRefusal),
    Landlock(LandlockDenial),
    /// A Landlock domain ended (`status=deallocated`): its id is never used again.
    LandlockDomainGone {
        domain: u64,
    },
}

/// The audit multicast socket, joined; Err says why records cannot be read here.
pub fn open() -> std::io::Result<OwnedFd> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkAudit)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, AUDIT_NLGRP_READLOG))?;
    // A timeout, so that an event missing its end is handed on anyway (see EVENT_WAIT).
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, EVENT_WAIT.as_micros() as nix::libc::suseconds_t),
    )?;
    Ok(fd)
}

/// Reads records until the socket fails; each record of interest goes to `sink`.
/// Blocking: run it on a thread of its own.
pub fn read_loop(fd: OwnedFd, mut sink: impl FnMut(AuditRecord)) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut events = Events::default();
    loop {
        match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty()) {
            Ok(n) => {
                let now = Instant::now();
                for (kind, text) in messages(&buf[..n]) {
                    events.push(kind, text, now, &mut sink);
                }
                events.expire(Some(now), &mut sink);
            }
            // The timeout: hand on what waited long enough.
            Err(nix::errno::Errno::EAGAIN) => events.expire(Some(Instant::now()), &mut sink),
            // ENOBUFS: records were dropped while we were slow; go on with the next ones.
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOBUFS) => {}
            Err(e) => {
                tracing::error!(error = %e, "the kernel audit socket failed: seccomp refusals and Landlock denials are no longer audited");
                return;
            }
        }
    }
}

/// Events still being read: a Landlock access record waits for the rest of its event (the
/// SYSCALL record naming the task, the domain's creator) until its EOE, or EVENT_WAIT for
/// a task without an audit context (no SYSCALL record, no EOE). Keyed by serial, since
/// records of events on other CPUs may come in between.
#[derive(Default)]
struct Events {
    pending: Vec<Pending>,
}

struct Pending {
    serial: u64,
    since: Instant,
    denials: Vec<LandlockDenial>,
    task: Option<Task>,
    creator: Option<(u64, u32)>,
}

/// Events waiting at once, at most (a flood hands the oldest on early, without its task).
const PENDING_MAX: usize = 64;

impl Events {
    fn push(&mut self, kind: u16, text: &str, now: Instant, sink: &mut impl FnMut(AuditRecord)) {
        match kind {
            AUDIT_SECCOMP => {
                if let Some(r) = parse_seccomp(text) {
                    sink(AuditRecord::Seccomp(r));
                }
            }
            AUDIT_LANDLOCK_ACCESS => {
                if let (Some(serial), Some(d)) = (serial(text), parse_landlock_access(text)) {
                    self.event(serial, now, sink).denials.push(d);
                }
            }
            AUDIT_LANDLOCK_DOMAIN => match parse_landlock_domain(text) {
                Some(Domain::Allocated { domain, pid }) => {
                    if let Some(serial) = serial(text) {
                        self.event(serial, now, sink).creator = Some((domain, pid));
                    }
                }
                Some(Domain::Gone(domain)) => sink(AuditRecord::LandlockDomainGone { domain }),
                None => {}
            },
            AUDIT_SYSCALL => {
                if let Some(p) = serial(text).and_then(|s| self.pending.iter_mut().find(|p| p.serial == s)) {
                    p.task = parse_task(text);
                }
            }
            AUDIT_EOE => {
                if let Some(i) = serial(text).and_then(|s| self.pending.iter().position(|p| p.serial == s)) {
                    hand_on(self.pending.remove(i), sink);
                }
            }
            _ => {}
        }
    }

    /// The pending event `serial`, made if new (handing on the oldest when too many wait).
    fn event(&mut self, serial: u64, now: Instant, sink: &mut impl FnMut(AuditRecord)) -> &mut Pending {
        if let Some(i) = self.pending.iter().position(|p| p.serial == serial) {
            return &mut self.pending[i];
        }
        if self.pending.len() >= PENDING_MAX {
            hand_on(self.pending.remove(0), sink);
        }
        self.pending.push(Pending { serial, since: now, denials: Vec::new(), task: None, creator: None });
        self.pending.last_mut().expect("just pushed")
    }

    /// Hands on the events that waited EVENT_WAIT or longer (all of them with `None`).
    fn expire(&mut self, now: Option<Instant>, sink: &mut impl FnMut(AuditRecord)) {
        let (done, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now.is_none_or(|now| now.duration_since(p.since) >= EVENT_WAIT));
        self.pending = waiting;
        for p in done {
            hand_on(p, sink);
        }
    }
}

/// The denials of one event, each with what the event said of the task.
fn hand_on(p: Pending, sink: &mut impl FnMut(AuditRecord)) {
    for mut d in p.denials {
        d.task = p.task.clone();
        d.creator = p.creator.filter(|(domain, _)| *domain == d.domain).map(|(_, pid)| pid);
        sink(AuditRecord::Landlock(d));
    }
}

/// The (type, payload text) of each netlink message in a datagram.
fn messages(mut buf: &[u8]) -> Vec<(u16, &str)> {
    let mut out = Vec::new();
    // struct nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        // The audit multicast sets nlmsg_len to the payload's length on some kernels,
        // to header + payload on others: take what is there, at most the datagram.
        let end = len.clamp(16, buf.len());
        let payload = if len >= 16 { &buf[16..end] } else { &buf[16..] };
        let text = std::str::from_utf8(payload).unwrap_or("");
        out.push((kind, text.trim_end_matches('\0')));
        let step = (end + 3) & !3;
        if step == 0 || step >= buf.len() {
            break;
        }
        buf = &buf[step..];
    }
    out
}

/// The serial of `audit(SECONDS.MILLIS:SERIAL): ...`: records of one event share it.
fn serial(text: &str) -> Option<u64> {
    let stamp = text.strip_prefix("audit(")?.split_once(')')?.0;
    stamp.split_once(':')?.1.parse().ok()
}

/// The value of `key=` in a record (the first one), as written.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// A string the kernel logged with `audit_log_untrustedstring`: in quotes when it holds
/// nothing special, else as hex digits (spaces, quotes, control or non-ASCII bytes).
fn untrusted(value: &str) -> Option<String> {
    if let Some(v) = value.strip_prefix('"') {
        return Some(v.strip_suffix('"').unwrap_or(v).to_owned());
    }
    if !value.len().is_multiple_of(2) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..value.len()).step_by(2).map(|i| u8::from_str_radix(&value[i..i + 2], 16).ok()).collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// `audit(…): auid=… uid=0 gid=0 ses=… pid=123 comm="keyctl" exe="…" sig=0 arch=c000003e
/// syscall=250 compat=0 ip=0x… code=0x50000`.
fn parse_seccomp(text: &str) -> Option<SyscallRefusal> {
    let comm = field(text, "comm").and_then(untrusted).unwrap_or_default();
    Some(SyscallRefusal {
        pid: field(text, "pid")?.parse().ok()?,
        uid: field(text, "uid")?.parse().ok()?,
        comm,
        syscall: field(text, "syscall")?.parse().ok()?,
    })
}

/// `audit(…): domain=1a5a6059b blockers=fs.read_file path="/etc/shadow" dev="vda" ino=42`.
fn parse_landlock_access(text: &str) -> Option<LandlockDenial> {
    let domain = u64::from_str_radix(field(text, "domain")?, 16).ok()?;
    let blockers = field(text, "blockers")?.split(',').map(str::to_owned).collect();
    let path = field(text, "path").or_else(|| field(text, "name")).and_then(untrusted);
    Some(LandlockDenial { domain, blockers, path, task: None, creator: None })
}

enum Domain {
    Allocated { domain: u64, pid: u32 },
    Gone(u64),
}

/// `domain=… status=allocated mode=enforcing pid=300 uid=0 exe="…" comm="…"`, or
/// `domain=… status=deallocated denials=3`.
fn parse_landlock_domain(text: &str) -> Option<Domain> {
    let domain = u64::from_str_radix(field(text, "domain")?, 16).ok()?;
    match field(text, "status")? {
        "allocated" => Some(Domain::Allocated { domain, pid: field(text, "pid")?.parse().ok()? }),
        "deallocated" => Some(Domain::Gone(domain)),
        _ => None,
    }
}

/// The task of an AUDIT_SYSCALL record: `... ppid=1 pid=2 auid=… uid=0 ... comm="cat" ...`.
fn parse_task(text: &str) -> Option<Task> {
    Some(Task {
        pid: field(text, "pid")?.parse().ok()?,
        uid: field(text, "uid")?.parse().ok()?,
        comm: field(text, "comm").and_then(untrusted).unwrap_or_default(),
    })
}

/// The kernel's audit status (`struct audit_status`, the fields Rush reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStatus {
    /// 0 off, 1 on, 2 on and locked.
    pub enabled: u32,
    /// The pid of the registered audit daemon (auditd), 0 for none.
    pub auditd_pid: u32,
    pub backlog_limit: u32,
    /// Records the kernel could not deliver (backlog full, no memory).
    pub lost: u32,
}

/// One request on a unicast audit socket; the status for AUDIT_GET.
fn request(kind: u16, payload: &[u8]) -> std::io::Result<Option<AuditStatus>> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkAudit)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )?;
    let mut msg = Vec::with_capacity(16 + payload.len());
    msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    let kernel = NetlinkAddr::new(0, 0);
    nix::sys::socket::sendto(fd.as_raw_fd(), &msg, &kernel, nix::sys::socket::MsgFlags::empty())?;
    let mut buf = vec![0u8; 8192];
    let mut status = None;
    // The reply (AUDIT_GET) and the ack, in either order; the ack ends it.
    for _ in 0..4 {
        let n = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())?;
        for (t, body) in raw_messages(&buf[..n]) {
            match t {
                NLMSG_ERROR => {
                    let errno =
                        i32::from_ne_bytes(body.get(..4).ok_or_else(short)?.try_into().expect("4 bytes"));
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno));
                    }
                    if kind != AUDIT_GET || status.is_some() {
                        return Ok(status);
                    }
                }
                AUDIT_GET => {
                    let word = |i: usize| -> std::io::Result<u32> {
                        Ok(u32::from_ne_bytes(
                            body.get(i * 4..i * 4 + 4).ok_or_else(short)?.try_into().expect("4 bytes"),
                        ))
                    };
                    // struct audit_status: mask, enabled, failure, pid, rate_limit,
                    // backlog_limit, lost, backlog, ...
                    status = Some(AuditStatus {
                        enabled: word(1)?,
                        auditd_pid: word(3)?,
                        backlog_limit: word(5)?,
                        lost: word(6)?,
                    });
                    if kind == AUDIT_GET {
                        return Ok(status);
                    }
                }
                _ => {}
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the kernel's audit socket"))
}

fn short() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "short audit netlink message")
}

/// (type, payload bytes) of each netlink message of a unicast reply (lengths there always
/// include the header).
fn raw_messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = (u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize).clamp(16, buf.len());
        out.push((u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes")), &buf[16..len]));
        let step = (len + 3) & !3;
        if step >= buf.len() {
            break;
        }
        buf = &buf[step..];
    }
    out
}

/// The kernel's audit status (AUDIT_GET; needs CAP_AUDIT_CONTROL).
pub fn status() -> std::io::Result<AuditStatus> {
    request(AUDIT_GET, &[])?.ok_or_else(|| std::io::Error::other("AUDIT_GET returned no status"))
}

/// Turns the kernel's audit on or off (AUDIT_SET of `enabled`, as `auditctl -e` does;
/// needs CAP_AUDIT_CONTROL; EPERM when it is locked).
pub fn set_enabled(on: bool) -> std::io::Result<()> {
    // struct audit_status up to `enabled`; the kernel reads only what the mask names.
    let mut payload = [0u8; 40];
    payload[0..4].copy_from_slice(&AUDIT_STATUS_ENABLED.to_ne_bytes());
    payload[4..8].copy_from_slice(&u32::from(on).to_ne_bytes());
    request(AUDIT_SET, &payload).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_records_parse() {
        let text = "audit(1796462459.471:1): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=15389 \
                    comm=\"t\" exe=\"/tmp/sc/t\" sig=0 arch=c000003e syscall=250 compat=0 ip=0x7f1562727829 code=0x50000";
        let r = parse_seccomp(text).unwrap();
        assert_eq!(r, SyscallRefusal { pid: 15389, uid: 0, comm: "t".into(), syscall: 250 });
        assert_eq!(parse_seccomp("audit(1.2:3): pid=x"), None);
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut dgram = Vec::new();
        for (kind, text) in [(1326u16, "pid=1 uid=0 syscall=321"), (1300u16, "other")] {
            let len = 16 + text.len();
            dgram.extend_from_slice(&(len as u32).to_ne_bytes());
            dgram.extend_from_slice(&kind.to_ne_bytes());
            dgram.extend_from_slice(&[0u8; 10]);
            dgram.extend_from_slice(text.as_bytes());
            while dgram.len() % 4 != 0 {
                dgram.push(0);
            }
        }
        let m = messages(&dgram);
        assert_eq!(m, [(1326, "pid=1 uid=0 syscall=321"), (1300, "other")]);
    }

    /// The records of two events as Linux 6.18 sent them (a denied read by `cat` in a
    /// domain created by pid 7926, its first denial; then a second denial of the same
    /// domain), then the domain's end.
    const EVENTS: [(u16, &str); 10] = [
        (
            1423,
            "audit(1796491004.874:83): domain=1a5a6059b blockers=fs.read_file path=\"/etc/shadow\" dev=\"vda\" ino=247076",
        ),
        (
            1424,
            "audit(1796491004.874:83): domain=1a5a6059b status=allocated mode=enforcing pid=7926 uid=0 exe=\"/usr/local/bin/rush-agentd\" comm=\"tokio-runtime-w\"",
        ),
        (
            1300,
            "audit(1796491004.874:83): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c a1=7f9c5a34a0f0 a2=80000 a3=0 items=0 ppid=7925 pid=7931 auid=4294967295 uid=1000 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"cat\" exe=\"/usr/bin/cat\" key=(null)",
        ),
        (1327, "audit(1796491004.874:83): proctitle=636174002F6574632F736861646F77"),
        (1320, "audit(1796491004.874:83): "),
        (
            1423,
            "audit(1796491004.880:84): domain=1a5a6059b blockers=fs.make_reg,fs.refer path=2F746D702F6120622F dev=\"vda\" ino=9",
        ),
        (
            1300,
            "audit(1796491004.880:84): arch=c000003e syscall=257 success=no exit=-13 ppid=7925 pid=7932 auid=4294967295 uid=0 gid=0 comm=6D7920746F6F6C exe=\"/x\" key=(null)",
        ),
        (1320, "audit(1796491004.880:84): "),
        (1424, "audit(1796491004.934:86): domain=1a5a6059b status=deallocated denials=2"),
        (1326, "audit(1796491004.940:87): pid=5 uid=0 comm=\"k\" syscall=250 code=0x50000"),
    ];

    #[test]
    fn landlock_events_gather_their_task_and_creator() {
        let mut got = Vec::new();
        let mut events = Events::default();
        let now = Instant::now();
        // Another event's access record comes in between (another CPU): no matter.
        events.push(EVENTS[0].0, EVENTS[0].1, now, &mut |r| got.push(r));
        events.push(
            1423,
            "audit(1796491004.875:90): domain=2 blockers=fs.read_dir path=\"/x\"",
            now,
            &mut |r| got.push(r),
        );
        for (kind, text) in &EVENTS[1..] {
            events.push(*kind, text, now, &mut |r| got.push(r));
        }
        assert_eq!(events.pending.len(), 1, "serial 90 has no EOE yet");
        events.expire(Some(now), &mut |r| got.push(r));
        assert_eq!(events.pending.len(), 1, "it waits EVENT_WAIT");
        events.expire(Some(now + EVENT_WAIT), &mut |r| got.push(r));
        let AuditRecord::Landlock(last) = got.pop().unwrap() else { panic!() };
        assert_eq!((last.domain, last.task, last.creator), (2, None, None));
        assert_eq!(
            got,
            [
                AuditRecord::Landlock(LandlockDenial {
                    domain: 0x1a5a6059b,
                    blockers: vec!["fs.read_file".into()],
                    path: Some("/etc/shadow".into()),
                    task: Some(Task { pid: 7931, uid: 1000, comm: "cat".into() }),
                    creator: Some(7926),
                }),
                AuditRecord::Landlock(LandlockDenial {
                    domain: 0x1a5a6059b,
                    blockers: vec!["fs.make_reg".into(), "fs.refer".into()],
                    path: Some("/tmp/a b/".into()),
                    task: Some(Task { pid: 7932, uid: 0, comm: "my tool".into() }),
                    creator: None,
                }),
                AuditRecord::LandlockDomainGone { domain: 0x1a5a6059b },
                AuditRecord::Seccomp(SyscallRefusal { pid: 5, uid: 0, comm: "k".into(), syscall: 250 }),
            ]
        );
    }

    #[test]
    fn a_flood_of_events_hands_the_oldest_on_early() {
        let mut got = Vec::new();
        let mut events = Events::default();
        let now = Instant::now();
        for serial in 0..=PENDING_MAX {
            let text = format!("audit(1.0:{serial}): domain=1 blockers=fs.read_file path=\"/f{serial}\"");
            events.push(AUDIT_LANDLOCK_ACCESS, &text, now, &mut |r| got.push(r));
        }
        assert_eq!(events.pending.len(), PENDING_MAX);
        let [AuditRecord::Landlock(d)] = &got[..] else { panic!("{got:?}") };
        assert_eq!(d.path.as_deref(), Some("/f0"));
        events.expire(None, &mut |r| got.push(r));
        assert_eq!(got.len(), PENDING_MAX + 1);
    }

    #[test]
    fn blockers_map_to_file_operations() {
        let d = |b: &[&str]| LandlockDenial {
            domain: 1,
            blockers: b.iter().map(|s| s.to_string()).collect(),
            path: None,
            task: None,
            creator: None,
        };
        let ops = |b: &[&str]| rush_proto::Ops(d(b).file_ops()).to_string();
        assert_eq!(ops(&["fs.read_file"]), "read");
        assert_eq!(ops(&["fs.write_file", "fs.truncate"]), "write");
        assert_eq!(ops(&["fs.execute"]), "exec");
        assert_eq!(ops(&["fs.make_reg", "fs.refer"]), "create");
        assert_eq!(ops(&["fs.remove_file"]), "delete");
        assert_eq!(d(&["scope.signal"]).file_ops(), 0);
        assert_eq!(d(&["net.connect_tcp"]).file_ops(), 0);
        assert_eq!(d(&["fs.change_topology"]).file_ops(), 0);
    }

    #[test]
    fn untrusted_strings_decode() {
        assert_eq!(untrusted("\"/etc/hosts\"").as_deref(), Some("/etc/hosts"));
        assert_eq!(untrusted("2F746D702F6120622F").as_deref(), Some("/tmp/a b/"));
        assert_eq!(untrusted("?"), None);
        assert_eq!(serial("audit(1796491004.874:83): x"), Some(83));
        assert_eq!(serial("garbage"), None);
    }
}

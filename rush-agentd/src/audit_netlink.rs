//! Records of the kernel's audit subsystem that concern agents: today the seccomp
//! filter's refusals (`AUDIT_SECCOMP`, logged because the filter is installed with
//! `SECCOMP_FILTER_FLAG_LOG`), read from the audit netlink socket's read-only multicast
//! group, which any process with CAP_AUDIT_READ may join beside auditd (or without one).
//!
//! By hand (a socket, a bind, a loop of recv): the audit crates on crates.io speak the
//! control protocol (rules, auditd's unicast), not the multicast log; the records are
//! `key=value` text.
//!
//! What is not audited: a refusal whose process exited before its record was read (the
//! record names a pid, the agent is found from `/proc/PID/cgroup`), records the kernel
//! dropped (its backlog), and every refusal when the kernel has no audit support
//! (`audit=0` on its command line): `rush doctor` says which.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket};

/// `AUDIT_SECCOMP` (linux/audit.h).
const AUDIT_SECCOMP: u16 = 1326;
/// `AUDIT_NLGRP_READLOG`: the read-only multicast group of every audit record.
const AUDIT_NLGRP_READLOG: u32 = 1;

/// One system call the seccomp filter refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRefusal {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub syscall: i64,
}

/// The audit multicast socket, joined; Err says why records cannot be read here.
pub fn open() -> std::io::Result<OwnedFd> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkAudit)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, AUDIT_NLGRP_READLOG))?;
    Ok(fd)
}

/// Reads records until the socket fails; each seccomp refusal goes to `sink`. Blocking:
/// run it on a thread of its own.
pub fn read_loop(fd: OwnedFd, mut sink: impl FnMut(SyscallRefusal)) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty()) {
            Ok(n) => {
                for (kind, text) in messages(&buf[..n]) {
                    if kind == AUDIT_SECCOMP
                        && let Some(r) = parse_seccomp(text)
                    {
                        sink(r);
                    }
                }
            }
            // ENOBUFS: records were dropped while we were slow; go on with the next ones.
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOBUFS) => {}
            Err(e) => {
                tracing::error!(error = %e, "the kernel audit socket failed: seccomp refusals are no longer audited");
                return;
            }
        }
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

/// `audit(…): auid=… uid=0 gid=0 ses=… pid=123 comm="keyctl" exe="…" sig=0 arch=c000003e
/// syscall=250 compat=0 ip=0x… code=0x50000`.
fn parse_seccomp(text: &str) -> Option<SyscallRefusal> {
    let field = |key: &str| {
        text.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let comm = field("comm").unwrap_or("").trim_matches('"').to_owned();
    Some(SyscallRefusal {
        pid: field("pid")?.parse().ok()?,
        uid: field("uid")?.parse().ok()?,
        comm,
        syscall: field("syscall")?.parse().ok()?,
    })
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
}

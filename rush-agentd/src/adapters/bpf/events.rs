//! The thread that drains the `rush_events` ring buffer and watches the lost counter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBufferBuilder};
use rush_ebpf::{
    AF_INET, AF_INET6, EVENT_API_REFUSED, EVENT_CLAIM_DENY, EVENT_FILE_DENY, EVENT_GRANT_MOVED,
    EVENT_GUARD_DENY, EVENT_NET_BUDGET, EVENT_NET_DENY, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4,
    HOOK_SENDMSG6, MAP_EVENTS, Plain, RushApiEvent, RushBudgetEvent, RushClaimEvent, RushEventHdr,
    RushFileEvent, RushGrantMovedEvent, RushGuardEvent, RushNetEvent, STAT_EVENTS_LOST,
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, warn};

use super::{BpfError, KernelEvent, NetHook};
use crate::core::FileKey;

/// How long one poll may block: bounds how late the thread notices it should stop.
const POLL: Duration = Duration::from_millis(250);
const LOST_EVERY: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    events: MapHandle,
    stats: MapHandle,
    tx: UnboundedSender<KernelEvent>,
    owner_gone: Arc<AtomicBool>,
) -> Result<(), BpfError> {
    let sink = tx.clone();
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&events, move |record: &[u8]| {
            match decode(record) {
                Some(event) => {
                    let _ = sink.send(event);
                }
                None => warn!(len = record.len(), "undecodable record in {MAP_EVENTS}"),
            }
            0
        })
        .map_err(|source| BpfError::MapHandle { map: MAP_EVENTS, source })?;
    let ring = builder.build().map_err(|source| BpfError::MapHandle { map: MAP_EVENTS, source })?;

    thread::Builder::new()
        .name("rush-bpf-events".into())
        .spawn(move || {
            // The ring buffer polls this fd: keep it open as long as `ring`.
            let _events = events;
            // Counts from before this daemon started are not ours to report.
            let mut lost_seen = read_lost(&stats);
            let mut checked = Instant::now();
            while !owner_gone.load(Ordering::Relaxed) && !tx.is_closed() {
                if let Err(e) = ring.poll(POLL)
                    && e.kind() != libbpf_rs::ErrorKind::Interrupted
                {
                    error!(error = %e, "polling the {MAP_EVENTS} ring buffer; kernel events are no longer read");
                    return;
                }
                if checked.elapsed() >= LOST_EVERY {
                    checked = Instant::now();
                    let lost = read_lost(&stats);
                    if lost > lost_seen {
                        let _ = tx.send(KernelEvent::Lost { count: lost - lost_seen });
                    }
                    lost_seen = lost;
                }
            }
        })
        .map_err(|source| BpfError::Thread { name: "rush-bpf-events", source })?;
    Ok(())
}

fn read_lost(stats: &MapHandle) -> u64 {
    stats
        .lookup(&STAT_EVENTS_LOST.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| Some(u64::from_ne_bytes(v.as_slice().try_into().ok()?)))
        .unwrap_or(0)
}

/// A ring-buffer record: its header says which struct it is, which agent and which task.
fn decode(record: &[u8]) -> Option<KernelEvent> {
    let h = RushEventHdr::from_bytes(record)?;
    match h.kind {
        EVENT_NET_DENY => decode_net(&h, RushNetEvent::from_bytes(record)?),
        EVENT_FILE_DENY => decode_file(&h, &RushFileEvent::from_bytes(record)?),
        EVENT_CLAIM_DENY => decode_claim(&h, &RushClaimEvent::from_bytes(record)?),
        EVENT_GUARD_DENY => {
            let e = RushGuardEvent::from_bytes(record)?;
            Some(KernelEvent::GuardDeny {
                cgroup_id: h.cgroup_id,
                pid: h.pid,
                tgid: h.tgid,
                uid: h.uid,
                comm: h.comm(),
                hook: rush_ebpf::guard_hook_name(h.hook)?,
                target: e.target,
                arg: e.arg,
            })
        }
        EVENT_GRANT_MOVED => {
            let e = RushGrantMovedEvent::from_bytes(record)?;
            Some(KernelEvent::GrantMoved {
                cgroup_id: h.cgroup_id,
                from: FileKey { dev: e.from_dev, ino: e.from_ino },
                to: FileKey { dev: e.to_dev, ino: e.to_ino },
            })
        }
        EVENT_NET_BUDGET => {
            let e = RushBudgetEvent::from_bytes(record)?;
            Some(KernelEvent::NetBudgetExceeded { cgroup_id: h.cgroup_id, used: e.used, limit: e.limit })
        }
        EVENT_API_REFUSED => {
            let e = RushApiEvent::from_bytes(record)?;
            Some(KernelEvent::ApiCallRefused {
                cgroup_id: h.cgroup_id,
                pid: h.tgid,
                uid: h.uid,
                comm: h.comm(),
                addr: ip(e.family, &e.addr)?,
                port: e.port,
                calls: e.calls,
                limit: e.limit,
            })
        }
        _ => None,
    }
}

/// An address as the programs report it (IPv4 in the first 4 bytes).
fn ip(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
        _ => None,
    }
}

fn decode_file(h: &RushEventHdr, e: &RushFileEvent) -> Option<KernelEvent> {
    Some(KernelEvent::FileDeny {
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tgid: h.tgid,
        uid: h.uid,
        comm: h.comm(),
        hook: rush_ebpf::file_hook_name(h.hook)?,
        op: e.op,
        path: e.path(),
        dev: e.dev,
        ino: e.ino,
    })
}

fn decode_claim(h: &RushEventHdr, e: &RushClaimEvent) -> Option<KernelEvent> {
    Some(KernelEvent::ClaimDeny {
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tgid: h.tgid,
        uid: h.uid,
        comm: h.comm(),
        hook: rush_ebpf::file_hook_name(h.hook)?,
        op: e.op,
        path: e.path(),
        dev: e.dev,
        ino: e.ino,
        claim_id: e.claim_id,
        holder_cgroup: e.holder_cgroup,
    })
}

fn decode_net(h: &RushEventHdr, e: RushNetEvent) -> Option<KernelEvent> {
    let hook = match h.hook {
        HOOK_CONNECT4 => NetHook::Connect4,
        HOOK_CONNECT6 => NetHook::Connect6,
        HOOK_SENDMSG4 => NetHook::Sendmsg4,
        HOOK_SENDMSG6 => NetHook::Sendmsg6,
        _ => return None,
    };
    let ip = ip(e.family, &e.addr)?;
    let protocol = match e.protocol as i32 {
        libc::IPPROTO_TCP => "tcp".to_string(),
        libc::IPPROTO_UDP => "udp".to_string(),
        n => n.to_string(),
    };
    Some(KernelEvent::NetDeny {
        cgroup_id: h.cgroup_id,
        pid: h.pid,
        tgid: h.tgid,
        uid: h.uid,
        comm: h.comm(),
        hook,
        destination: SocketAddr::new(ip, e.port),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header of a task (pid 11, tgid 10, uid 1000, `comm`) of agent 42.
    fn hdr(kind: u32, hook: u32, comm: &[u8]) -> RushEventHdr {
        let mut h = RushEventHdr { pid: 11, tgid: 10, uid: 1000, ..RushEventHdr::new(kind, hook, 42) };
        h.comm[..comm.len()].copy_from_slice(comm);
        h
    }

    fn event() -> RushNetEvent {
        RushNetEvent {
            hdr: hdr(EVENT_NET_DENY, HOOK_CONNECT6, b"curl"),
            protocol: libc::IPPROTO_TCP as u32,
            family: AF_INET,
            port: 443,
            addr: [93, 184, 216, 34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn decodes_net_deny() {
        let got = decode(event().as_bytes()).unwrap();
        assert_eq!(
            got,
            KernelEvent::NetDeny {
                cgroup_id: 42,
                pid: 11,
                tgid: 10,
                uid: 1000,
                comm: "curl".into(),
                hook: NetHook::Connect6,
                destination: "93.184.216.34:443".parse().unwrap(),
                protocol: "tcp".into(),
            }
        );

        let mut v6 = event();
        v6.family = AF_INET6;
        v6.addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        v6.protocol = 132;
        let KernelEvent::NetDeny { destination, protocol, .. } = decode(v6.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(destination, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(protocol, "132");
    }

    #[test]
    fn decodes_file_deny() {
        let mut e = RushFileEvent {
            hdr: hdr(EVENT_FILE_DENY, rush_ebpf::FHOOK_PATH_UNLINK, b"rm"),
            op: rush_ebpf::FILE_OP_DELETE,
            ino: 77,
            dev: 0x0010_0003,
            ..Default::default()
        };
        e.path[..10].copy_from_slice(b"/srv/a/x.t");
        assert_eq!(
            decode(e.as_bytes()),
            Some(KernelEvent::FileDeny {
                cgroup_id: 42,
                pid: 11,
                tgid: 10,
                uid: 1000,
                comm: "rm".into(),
                hook: "path_unlink",
                op: 1 << 4,
                path: "/srv/a/x.t".into(),
                dev: 0x0010_0003,
                ino: 77,
            })
        );
        // A cut path keeps its "…" (3 bytes of UTF-8).
        e.path = [0; rush_ebpf::FILE_PATH_LEN];
        e.path[..7].copy_from_slice("…/b/c".as_bytes());
        let Some(KernelEvent::FileDeny { path, .. }) = decode(e.as_bytes()) else { panic!() };
        assert_eq!(path, "…/b/c");
        // Truncated records and unknown hooks are refused.
        assert_eq!(decode(&e.as_bytes()[..100]), None);
        e.hdr.hook = 99;
        assert_eq!(decode(e.as_bytes()), None);
    }

    #[test]
    fn decodes_claim_deny() {
        let mut e = RushClaimEvent {
            hdr: hdr(EVENT_CLAIM_DENY, rush_ebpf::FHOOK_PATH_RENAME, b"mv"),
            op: rush_ebpf::FILE_OP_CREATE,
            ino: 78,
            dev: 0x0010_0003,
            claim_id: 12,
            holder_cgroup: 4242,
            ..Default::default()
        };
        e.path[..15].copy_from_slice(b"/r/parser/new.c");
        assert_eq!(
            decode(e.as_bytes()),
            Some(KernelEvent::ClaimDeny {
                cgroup_id: 42,
                pid: 11,
                tgid: 10,
                uid: 1000,
                comm: "mv".into(),
                hook: "path_rename",
                op: 1 << 3,
                path: "/r/parser/new.c".into(),
                dev: 0x0010_0003,
                ino: 78,
                claim_id: 12,
                holder_cgroup: 4242,
            })
        );
        // Truncated records and unknown hooks are refused.
        assert_eq!(decode(&e.as_bytes()[..size_of::<RushClaimEvent>() - 1]), None);
        e.hdr.hook = 99;
        assert_eq!(decode(e.as_bytes()), None);
    }

    #[test]
    fn decodes_budget_events() {
        let e = RushBudgetEvent { hdr: RushEventHdr::new(EVENT_NET_BUDGET, 0, 42), used: 1000, limit: 1024 };
        assert_eq!(
            decode(e.as_bytes()),
            Some(KernelEvent::NetBudgetExceeded { cgroup_id: 42, used: 1000, limit: 1024 })
        );
        assert_eq!(decode(&e.as_bytes()[..20]), None);

        let mut a = RushApiEvent {
            hdr: hdr(EVENT_API_REFUSED, HOOK_CONNECT6, b"python"),
            family: AF_INET6,
            port: 443,
            addr: "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
            calls: 5,
            limit: 5,
            ..Default::default()
        };
        assert_eq!(
            decode(a.as_bytes()),
            Some(KernelEvent::ApiCallRefused {
                cgroup_id: 42,
                pid: 10,
                uid: 1000,
                comm: "python".into(),
                addr: "2001:db8::1".parse().unwrap(),
                port: 443,
                calls: 5,
                limit: 5,
            })
        );
        a.family = AF_INET;
        a.addr = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let Some(KernelEvent::ApiCallRefused { addr, .. }) = decode(a.as_bytes()) else { panic!() };
        assert_eq!(addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        a.family = 1;
        assert_eq!(decode(a.as_bytes()), None);
    }

    #[test]
    fn decodes_guard_and_grant_moved() {
        let g = RushGuardEvent {
            hdr: hdr(EVENT_GUARD_DENY, rush_ebpf::GHOOK_KILL, b"sh"),
            target: 1,
            pad: 0,
            arg: 9,
        };
        assert_eq!(
            decode(g.as_bytes()),
            Some(KernelEvent::GuardDeny {
                cgroup_id: 42,
                pid: 11,
                tgid: 10,
                uid: 1000,
                comm: "sh".into(),
                hook: rush_ebpf::guard_hook_name(rush_ebpf::GHOOK_KILL).unwrap(),
                target: 1,
                arg: 9,
            })
        );
        let m = RushGrantMovedEvent {
            hdr: RushEventHdr::new(EVENT_GRANT_MOVED, 0, 42),
            from_ino: 5,
            to_ino: 6,
            from_dev: 1,
            to_dev: 2,
        };
        assert_eq!(
            decode(m.as_bytes()),
            Some(KernelEvent::GrantMoved {
                cgroup_id: 42,
                from: FileKey { dev: 1, ino: 5 },
                to: FileKey { dev: 2, ino: 6 },
            })
        );
        assert_eq!(
            decode(&m.as_bytes()[..size_of::<RushEventHdr>()]),
            None,
            "a header alone is not an event"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0; 8]), None);
        let mut e = event();
        e.hdr.hook = 99;
        assert_eq!(decode(e.as_bytes()), None);
        let mut e = event();
        e.family = 1;
        assert_eq!(decode(e.as_bytes()), None);
    }
}

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Maps and structs shared by every Rush BPF object. Each object includes this header, so
 * each defines the same maps; they are pinned by name under the daemon's pin directory and
 * libbpf reuses the pinned map when it exists, which is how the objects (and a restarted
 * daemon) share them.
 *
 * The structs are mirrored in rush-ebpf/src/lib.rs; a test compares both layouts through
 * the BTF of the built objects. Plain integers only, explicit padding, no holes.
 */
#ifndef RUSH_H
#define RUSH_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

/* Socket families: macros in the uapi headers, so not part of vmlinux.h. */
#define RUSH_AF_INET 2
#define RUSH_AF_INET6 10

#define RUSH_NET_MODE_DENY 0
#define RUSH_NET_MODE_ALLOW 1
#define RUSH_NET_MODE_LIST 2

#define RUSH_HOOK_CONNECT4 1
#define RUSH_HOOK_CONNECT6 2
#define RUSH_HOOK_SENDMSG4 3
#define RUSH_HOOK_SENDMSG6 4

#define RUSH_EVENT_NET_DENY 1
#define RUSH_EVENT_FILE_DENY 2
#define RUSH_EVENT_GUARD_DENY 3
#define RUSH_EVENT_GRANT_MOVED 4
#define RUSH_EVENT_NET_BUDGET 5
#define RUSH_EVENT_API_REFUSED 6
#define RUSH_EVENT_CLAIM_DENY 7

/* struct rush_net_usage.flags: the byte budget was reached; every packet is dropped and
 * no further event is sent until the daemon writes the entry again (a raised budget). */
#define RUSH_USAGE_BYTES_BREACHED 1

/* Bits of struct rush_net_cidr_key before the address (family, port, cgroup_id): an
 * entry's prefixlen is this plus the address prefix length. */
#define RUSH_NET_CIDR_FIXED_BITS 96

/* struct rush_agent.flags */
#define RUSH_AGENT_FILES_CONFINED 1
/* Hard links (`--hardlinks`): a regular file with more than one link needs the op from
 * its own grant entry, not from a directory above it: write only (refuse-write), or
 * read, write and exec (refuse). Neither bit: the walk decides (follow). */
#define RUSH_AGENT_HARDLINKS_REFUSE_WRITE 2
#define RUSH_AGENT_HARDLINKS_REFUSE 4
/* Another agent of the session holds a path claim: rush_claim_denies has entries for this
 * agent, and the file hooks check them on every write-like operation (file-confined or
 * not). Only agents with this bit pay that walk. */
#define RUSH_AGENT_CLAIM_DENIED 8

/* File operations: bit i of an op mask is index i of struct rush_file_grant.expires_ns
 * (the same bits as rush_proto::Ops). */
#define RUSH_FILE_OP_READ 1
#define RUSH_FILE_OP_WRITE 2
#define RUSH_FILE_OP_EXEC 4
#define RUSH_FILE_OP_CREATE 8
#define RUSH_FILE_OP_DELETE 16
/* Internal (never in a token's ops): set by the daemon on the directory of a file that a
 * token lets the agent write, so that the agent can save it the way editors do: create a
 * regular file beside it (which it then owns: read, write, delete) and rename that over
 * the granted file (which moves the file's grant to the new inode). */
#define RUSH_FILE_OP_SAVE 32
#define RUSH_FILE_OPS_LEN 6

/* struct rush_file_event.hook: the LSM hook that denied. */
#define RUSH_FHOOK_FILE_OPEN 1
#define RUSH_FHOOK_FILE_PERMISSION 2
#define RUSH_FHOOK_PATH_MKNOD 3
#define RUSH_FHOOK_PATH_MKDIR 4
#define RUSH_FHOOK_PATH_SYMLINK 5
#define RUSH_FHOOK_PATH_UNLINK 6
#define RUSH_FHOOK_PATH_RMDIR 7
#define RUSH_FHOOK_PATH_RENAME 8
#define RUSH_FHOOK_PATH_LINK 9
#define RUSH_FHOOK_PATH_TRUNCATE 10
#define RUSH_FHOOK_PATH_CHMOD 11
#define RUSH_FHOOK_PATH_CHOWN 12
#define RUSH_FHOOK_MMAP_FILE 13
#define RUSH_FHOOK_FILE_MPROTECT 14
#define RUSH_FHOOK_PATH_NOTIFY 15
#define RUSH_FHOOK_UNIX_STREAM_CONNECT 16
#define RUSH_FHOOK_UNIX_MAY_SEND 17

/* struct rush_guard_event.hook: the self-protection hook that denied (guard.bpf.c, and
 * the cgroup/sysctl program of net.bpf.c). */
#define RUSH_GHOOK_CAPABLE 1
#define RUSH_GHOOK_BPF 2
#define RUSH_GHOOK_PTRACE 3
#define RUSH_GHOOK_TRACEME 4
#define RUSH_GHOOK_KILL 5
#define RUSH_GHOOK_MOUNT 6
#define RUSH_GHOOK_UMOUNT 7
#define RUSH_GHOOK_PIVOTROOT 8
#define RUSH_GHOOK_MOVE_MOUNT 9
#define RUSH_GHOOK_USERNS 10
#define RUSH_GHOOK_KERNEL_READ_FILE 11
#define RUSH_GHOOK_KERNEL_LOAD_DATA 12
#define RUSH_GHOOK_CGROUPFS_WRITE 13
#define RUSH_GHOOK_PROTECTED_DIR 14
#define RUSH_GHOOK_FCNTL 15
#define RUSH_GHOOK_SYSCTL 16
#define RUSH_GHOOK_IOCTL 17
#define RUSH_GHOOK_PROC_WRITE 18
#define RUSH_GHOOK_UNIX_ABSTRACT_CONNECT 19
#define RUSH_GHOOK_UNIX_ABSTRACT_SEND 20
#define RUSH_GHOOK_PROC_PID_WRITE 21

/* Directories agents may not enter at all (the daemon's state and config), set by the
 * loader as (s_dev, i_ino); unused slots are 0. */
#define RUSH_PROTECTED_MAX 4

/* Entries of rush_file_policy: the daemon's (grants written or deleted, the earliest
 * expiry) and the kernel's own (renames, links, grants moved by a save). */
#define RUSH_POLICY_DAEMON 0
#define RUSH_POLICY_KERNEL 1
#define RUSH_POLICY_LEN 2

/* Bytes of struct rush_file_event.path, NUL included. */
#define RUSH_FILE_PATH_LEN 256

#define RUSH_STAT_EVENTS_LOST 0
#define RUSH_STATS_LEN 1

struct rush_agent {
	__u32 net_mode; /* RUSH_NET_MODE_* */
	__u32 flags;    /* RUSH_AGENT_* */
	__u64 reserved;
};

/*
 * Key of the rush_net_cidr LPM trie: one allowed prefix of one agent. The trie matches
 * the first prefixlen bits after the prefixlen field, so family, port and cgroup_id (all
 * before the address, no holes) always match exactly and only the address is a prefix.
 */
struct rush_net_cidr_key {
	__u32 prefixlen; /* RUSH_NET_CIDR_FIXED_BITS + address prefix length */
	__u16 family;    /* RUSH_AF_INET or RUSH_AF_INET6 */
	__u16 port;      /* host order; 0 = any port */
	__u64 cgroup_id;
	__u8 addr[16]; /* network order; IPv4 in the first 4 bytes, the rest zero */
};

/*
 * Value of rush_net_usage (key: the agent's cgroup id): the agent's network budget and
 * what it has used. Counters are added to atomically by the programs; the limits and
 * flags are written by the daemon.
 */
struct rush_net_usage {
	__u64 tx_bytes; /* IP packet bytes (headers included) sent by the agent's sockets */
	__u64 rx_bytes; /* and received by them */
	__u64 limit_bytes; /* tx + rx may not exceed it; 0 = unlimited */
	__u64 api_calls; /* connects to an API endpoint let through */
	__u64 api_limit; /* api_calls may not exceed it; ~0 = unlimited */
	__u64 dropped_packets; /* over the byte budget */
	__u64 refused_calls; /* API connects refused over the call budget */
	__u64 flags; /* RUSH_USAGE_* */
};

/* Key of rush_api_addrs (value: u8, 1): an API endpoint, for every agent. */
struct rush_api_key {
	__u16 family;
	__u16 port; /* host order; 0 = any port */
	__u32 pad;
	__u8 addr[16];
};

/*
 * The header every record of rush_events starts with: which struct follows (kind), the
 * hook that emitted it, the agent, and the task that caused it. The task fields are zero
 * where no task is known: a byte budget breach (counted on a packet), a grant moved, and
 * a sysctl write (uid only: sysctl programs get no pid or comm helpers).
 */
struct rush_event_hdr {
	__u32 kind; /* RUSH_EVENT_* */
	__u32 hook; /* RUSH_HOOK_*, RUSH_FHOOK_* or RUSH_GHOOK_*, per kind; 0 where none */
	__u64 cgroup_id; /* the agent's cgroup */
	__u32 pid; /* thread id */
	__u32 tgid; /* process id */
	__u32 uid;
	__u32 pad;
	char comm[16];
};

struct rush_net_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_NET_DENY, RUSH_HOOK_* */
	__u32 protocol; /* IPPROTO_* of the socket */
	__u16 family;
	__u16 port; /* host order */
	__u8 addr[16];
};

/* Key of rush_file_grants: one inode, for one agent. */
struct rush_file_key {
	__u64 cgroup_id;
	__u64 ino; /* inode->i_ino */
	__u32 dev; /* inode->i_sb->s_dev: kernel dev_t, MAJOR << 20 | MINOR */
	__u32 pad;
};

/*
 * Value of rush_file_grants. expires_ns[i] is for op bit 1 << i: 0 = not granted by this
 * entry, ~0 = granted with no expiry, else granted while bpf_ktime_get_boot_ns() < it.
 */
struct rush_file_grant {
	__u64 expires_ns[RUSH_FILE_OPS_LEN];
	/* The mount the granted path was resolved in (mount id, as statx STATX_MNT_ID): the
	 * entry counts only when the walk meets the inode in that mount, so a bind mount of a
	 * granted tree elsewhere does not carry the grant. 0 = in any mount. */
	__u32 mnt_id;
	__u32 pad;
};

/*
 * Value of rush_file_policy, the version of the file policy that decisions cached per open
 * file (file.bpf.c, rush_open_cache) were made under. A cached decision counts only while
 * both generations are still the ones it was made under and bpf_ktime_get_boot_ns() is
 * below the daemon's next_expiry_ns (the earliest expiry of any grant it wrote that has not
 * passed yet; ~0: none): past it, every check walks again until the daemon, seeing the
 * expiry, bumps the generation and moves next_expiry_ns on, so a TTL lapses in the kernel
 * even with the daemon gone. Each writer changes one field per map update (the daemon:
 * lowers next_expiry_ns before a grant write, bumps generation after it, raises
 * next_expiry_ns only after a bump); the kernel entry's generation is only ever
 * incremented atomically.
 */
struct rush_file_policy {
	__u64 generation;
	__u64 next_expiry_ns; /* RUSH_POLICY_DAEMON only; 0 in the kernel's entry */
};

struct rush_file_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_FILE_DENY, RUSH_FHOOK_* */
	__u32 op; /* the RUSH_FILE_OP_* bit that no grant covered */
	__u32 dev;
	__u64 ino; /* the object checked (for create: the parent directory) */
	char path[RUSH_FILE_PATH_LEN]; /* NUL-terminated; starts with U+2026 "…" when cut */
};

/*
 * Value of rush_claim_denies (key: struct rush_file_key of the DENIED agent's cgroup and
 * the claimed inode): while another agent (holder_cgroup) holds path claim claim_id on
 * that inode, this agent may not write, create, delete, rename or link anything at or
 * below it (read stays allowed).
 */
struct rush_claim_deny {
	__u64 claim_id; /* the daemon's claim (its fencing token) */
	__u64 holder_cgroup; /* the agent that holds the claim */
};

/* A write-like operation refused because another agent holds a claim on the path. */
struct rush_claim_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_CLAIM_DENY, RUSH_FHOOK_* */
	__u32 op; /* RUSH_FILE_OP_WRITE, _CREATE or _DELETE: what the hook asked */
	__u32 dev;
	__u64 ino; /* the object checked (for create: the parent directory) */
	__u64 claim_id; /* 0: the walk could not finish (too deep) and denied */
	__u64 holder_cgroup;
	char path[RUSH_FILE_PATH_LEN]; /* NUL-terminated; starts with U+2026 "…" when cut */
};

/* A self-protection deny: an agent tried to reach outside its cgroup or the kernel. */
struct rush_guard_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_GUARD_DENY, RUSH_GHOOK_* */
	__u32 target; /* the process (tgid) acted on, for ptrace and kill; else 0 */
	__u32 pad;
	__s64 arg; /* capability, bpf command, signal, fcntl argument, mount flags... */
};

/* A grant the kernel moved (an editor-style save renamed a new file over a granted one):
 * the daemon re-keys its token. */
struct rush_grant_moved_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_GRANT_MOVED, no hook, no task */
	__u64 from_ino;
	__u64 to_ino;
	__u32 from_dev;
	__u32 to_dev;
};

/* An agent reached its byte budget (once per breach). */
struct rush_budget_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_NET_BUDGET, no hook, no task */
	__u64 used; /* tx + rx bytes when the first packet was dropped */
	__u64 limit;
};

/* An agent's connect to an API endpoint was refused: its call budget is spent. */
struct rush_api_event {
	struct rush_event_hdr hdr; /* RUSH_EVENT_API_REFUSED, RUSH_HOOK_CONNECT4 or _CONNECT6 */
	__u16 family;
	__u16 port; /* host order */
	__u32 pad;
	__u8 addr[16];
	__u64 calls; /* api_calls at the refusal */
	__u64 limit;
};

/* Never read: makes struct rush_net_event part of every object's BTF, which only keeps the
 * types of globals and function signatures (the layout test and bpftool rely on it). */
struct rush_event_hdr *const rush_event_hdr_btf = 0;
struct rush_net_event *const rush_net_event_btf = 0;
struct rush_file_event *const rush_file_event_btf = 0;
struct rush_file_key *const rush_file_key_btf = 0;
struct rush_file_grant *const rush_file_grant_btf = 0;
struct rush_guard_event *const rush_guard_event_btf = 0;
struct rush_grant_moved_event *const rush_grant_moved_event_btf = 0;
struct rush_budget_event *const rush_budget_event_btf = 0;
struct rush_api_event *const rush_api_event_btf = 0;
struct rush_claim_deny *const rush_claim_deny_btf = 0;
struct rush_claim_event *const rush_claim_event_btf = 0;
struct rush_file_policy *const rush_file_policy_btf = 0;

/* Depth of agent cgroups below the cgroup v2 root (root = 0), set by the loader. */
const volatile __u32 agent_cgroup_level = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rush_agent);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_agents SEC(".maps");

/* Allow lists. Was the HASH map rush_net_allow (exact addresses); a pin of that name
 * left by an older daemon is migrated into this one and removed by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct rush_net_cidr_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_net_cidr SEC(".maps");

/*
 * Addresses learned from DNS answers for names on an agent's allow list (the daemon's
 * per-agent resolver writes them): same key as rush_net_cidr, full-length prefixes; the
 * value is when the entry stops allowing (CLOCK_BOOTTIME ns: the answer's TTL plus a
 * grace). Apart from rush_net_cidr so that map's layout stays what older pins have.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct rush_net_cidr_key);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_net_learned SEC(".maps");

/* An agent's resolver in the daemon: its DNS traffic (port 53) goes there. */
struct rush_dns_resolver {
	__u16 port4; /* on 127.0.0.1, host order */
	__u16 port6; /* on ::1, host order; 0 = none */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* the agent's cgroup id */
	__type(value, struct rush_dns_resolver);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_dns_resolvers SEC(".maps");

/* Where a redirected DNS socket meant to go, so replies seem to come from there. */
struct rush_dns_orig {
	__u16 family; /* RUSH_AF_* of the original destination */
	__u16 port;   /* host order */
	__u16 via;    /* the resolver port it was sent to, host order */
	__u16 pad;
	__u8 addr[16]; /* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* socket cookie */
	__type(value, struct rush_dns_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_dns_orig SEC(".maps");

/* Budgets and usage, per agent; agents without an entry are not counted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rush_net_usage);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_net_usage SEC(".maps");

/* API endpoints (global): an agent's connect to one counts as one API call. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct rush_api_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_api_addrs SEC(".maps");

/* File capability tokens, checked by the LSM programs (file.bpf.c). Defined here so the
 * map exists (and the daemon can fill it) even where the LSM object cannot load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rush_file_key);
	__type(value, struct rush_file_grant);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_file_grants SEC(".maps");

/* Path claims: what each agent may not write because another agent holds a claim
 * (file.bpf.c, for agents with RUSH_AGENT_CLAIM_DENIED). Here for the same reason as
 * rush_file_grants: the map exists, and the daemon can fill it, without the LSM object. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rush_file_key);
	__type(value, struct rush_claim_deny);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_claim_denies SEC(".maps");

/* The file policy's generations (struct rush_file_policy, RUSH_POLICY_*). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RUSH_POLICY_LEN);
	__type(key, __u32);
	__type(value, struct rush_file_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_file_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_events SEC(".maps");

/* Counters read by the daemon; [RUSH_STAT_EVENTS_LOST] = ring buffer reservations that failed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RUSH_STATS_LEN);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_stats SEC(".maps");

/* The agent cgroup the current task is in (or below), 0 when it is in none. */
static __always_inline __u64 rush_current_agent_cgroup(void)
{
	return bpf_get_current_ancestor_cgroup_id(agent_cgroup_level);
}

static __always_inline struct rush_agent *rush_lookup_agent(__u64 cgroup_id)
{
	if (!cgroup_id)
		return NULL;
	return bpf_map_lookup_elem(&rush_agents, &cgroup_id);
}

/* The agent cgroup of cgroup `cgrp` (its ancestor at agent_cgroup_level; a cgroup there
 * may also be some other service's), 0 when it is above that level. */
static __always_inline __u64 rush_cgroup_agent(struct cgroup *cgrp)
{
	struct cgroup *ancestor = NULL;
	__u32 level = agent_cgroup_level;

	if (!cgrp || BPF_CORE_READ(cgrp, level) < (int)level || level > 64)
		return 0;
	bpf_probe_read_kernel(&ancestor, sizeof(ancestor),
			      (void *)cgrp + bpf_core_field_offset(struct cgroup, ancestors) +
				      level * sizeof(ancestor));
	if (!ancestor)
		return 0;
	return BPF_CORE_READ(ancestor, kn, id);
}

/* The agent cgroup of `task` (of its cgroup v2), 0 when it is in none. */
static __always_inline __u64 rush_task_agent_cgroup(struct task_struct *task)
{
	return rush_cgroup_agent(BPF_CORE_READ(task, cgroups, dfl_cgrp));
}

static __always_inline void rush_count_lost_event(void)
{
	__u32 key = RUSH_STAT_EVENTS_LOST;
	__u64 *lost = bpf_map_lookup_elem(&rush_stats, &key);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

/* An event header with no task (kind, hook, agent; the task fields zero). */
static __always_inline void rush_event_hdr_init(struct rush_event_hdr *h, __u32 kind, __u32 hook,
						__u64 cgroup_id)
{
	h->kind = kind;
	h->hook = hook;
	h->cgroup_id = cgroup_id;
	h->pid = 0;
	h->tgid = 0;
	h->uid = 0;
	h->pad = 0;
	__builtin_memset(h->comm, 0, sizeof(h->comm));
}

/* An event header for the current task (not for sysctl or skb programs: no such helpers). */
static __always_inline void rush_event_hdr_current(struct rush_event_hdr *h, __u32 kind, __u32 hook,
						   __u64 cgroup_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	h->kind = kind;
	h->hook = hook;
	h->cgroup_id = cgroup_id;
	h->pid = (__u32)pid_tgid;
	h->tgid = pid_tgid >> 32;
	h->uid = (__u32)bpf_get_current_uid_gid();
	h->pad = 0;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

#endif /* RUSH_H */

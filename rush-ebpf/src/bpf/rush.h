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

#define RUSH_STAT_EVENTS_LOST 0
#define RUSH_STATS_LEN 1

struct rush_agent {
	__u32 net_mode; /* RUSH_NET_MODE_* */
	__u32 flags;
	__u64 reserved;
};

struct rush_net_key {
	__u64 cgroup_id;
	__u16 family; /* RUSH_AF_INET or RUSH_AF_INET6 */
	__u16 port;   /* host order; 0 = any port */
	__u32 pad;
	__u8 addr[16]; /* network order; IPv4 in the first 4 bytes, the rest zero */
};

struct rush_net_event {
	__u32 kind; /* RUSH_EVENT_* */
	__u32 hook; /* RUSH_HOOK_* */
	__u64 cgroup_id;
	__u32 pid; /* thread id */
	__u32 tgid; /* process id */
	__u32 uid;
	__u32 protocol; /* IPPROTO_* of the socket */
	__u16 family;
	__u16 port; /* host order */
	__u8 addr[16];
	char comm[16];
	__u32 pad;
};

/* Never read: makes struct rush_net_event part of every object's BTF, which only keeps the
 * types of globals and function signatures (the layout test and bpftool rely on it). */
struct rush_net_event *const rush_net_event_btf = 0;

/* Depth of agent cgroups below the cgroup v2 root (root = 0), set by the loader. */
const volatile __u32 agent_cgroup_level = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rush_agent);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_agents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rush_net_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rush_net_allow SEC(".maps");

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

static __always_inline void rush_count_lost_event(void)
{
	__u32 key = RUSH_STAT_EVENTS_LOST;
	__u64 *lost = bpf_map_lookup_elem(&rush_stats, &key);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

#endif /* RUSH_H */

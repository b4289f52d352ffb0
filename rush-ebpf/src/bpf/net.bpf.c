// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Network confinement: cgroup sock_addr hooks on connect() and on sendmsg() with a
 * destination address (unconnected UDP). Attached at the cgroup v2 root, so they run for
 * every socket; the agent is identified by the *calling task's* cgroup, not the socket's,
 * so a socket handed to an agent is still checked against the agent.
 *
 * Return 1 = allow, 0 = deny (the syscall fails with EPERM).
 *
 * Network budgets: cgroup_skb programs count every IP packet of an agent's sockets in
 * rush_net_usage and drop them once the agent's byte budget is spent; the connect hooks
 * count connects to API endpoints and refuse them once the call budget is spent.
 */
#include "rush.h"

/* Longest-prefix match in the agent's allow list: the exact port first, then "any port". */
static __always_inline int rush_net_allowed(__u64 cgroup_id, __u16 family, const __u8 *addr,
					    __u16 port)
{
	struct rush_net_cidr_key key = {
		.prefixlen = RUSH_NET_CIDR_FIXED_BITS + (family == RUSH_AF_INET ? 32 : 128),
		.family = family,
		.port = port,
		.cgroup_id = cgroup_id,
	};

	__u64 now, *until;

	__builtin_memcpy(key.addr, addr, 16);
	if (bpf_map_lookup_elem(&rush_net_cidr, &key))
		return 1;
	key.port = 0;
	if (bpf_map_lookup_elem(&rush_net_cidr, &key))
		return 1;
	/* Learned from a DNS answer: only until its TTL (and grace) ran out. */
	now = bpf_ktime_get_boot_ns();
	key.port = port;
	until = bpf_map_lookup_elem(&rush_net_learned, &key);
	if (until && *until > now)
		return 1;
	key.port = 0;
	until = bpf_map_lookup_elem(&rush_net_learned, &key);
	return until && *until > now;
}

/*
 * DNS of an agent with a resolver: whatever server it asks (its resolv.conf's, 8.8.8.8,
 * any address on port 53), the query goes to its resolver in the daemon, which answers
 * only for names on its allow list and learns their addresses. The original destination
 * is kept by socket, so recvmsg can make the reply seem to come from it (resolvers drop
 * replies from another address). DNS on other ports (DoT 853, DoH 443) is a destination
 * like any other: refused unless listed.
 */
static __always_inline int rush_dns_redirect(struct bpf_sock_addr *ctx, __u32 hook, __u64 cgroup_id,
					     __u16 family, const __u8 *addr, __u16 port)
{
	struct rush_dns_resolver *r = bpf_map_lookup_elem(&rush_dns_resolvers, &cgroup_id);
	struct rush_dns_orig orig = { .family = family, .port = port };
	int v6_socket = hook == RUSH_HOOK_CONNECT6 || hook == RUSH_HOOK_SENDMSG6;
	__u64 cookie;

	if (!r)
		return -1;
	if (family == RUSH_AF_INET6 && !r->port6)
		return -1;
	orig.via = family == RUSH_AF_INET ? r->port4 : r->port6;
	__builtin_memcpy(orig.addr, addr, 16);
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&rush_dns_orig, &cookie, &orig, BPF_ANY);
	if (!v6_socket) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	} else if (family == RUSH_AF_INET) {
		/* A dual-stack socket's ::ffff:a.b.c.d: ::ffff:127.0.0.1 */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(orig.via);
	return 1;
}

static __always_inline void rush_emit_net_deny(struct bpf_sock_addr *ctx, __u32 hook,
					       __u64 cgroup_id, __u16 family, const __u8 *addr,
					       __u16 port)
{
	struct rush_net_event *e;

	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return;
	}
	rush_event_hdr_current(&e->hdr, RUSH_EVENT_NET_DENY, hook, cgroup_id);
	e->protocol = ctx->protocol;
	e->family = family;
	e->port = port;
	__builtin_memcpy(e->addr, addr, 16);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void rush_emit_api_refused(__u32 hook, __u64 cgroup_id, __u16 family,
						  const __u8 *addr, __u16 port, __u64 calls,
						  __u64 limit)
{
	struct rush_api_event *e;

	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return;
	}
	rush_event_hdr_current(&e->hdr, RUSH_EVENT_API_REFUSED, hook, cgroup_id);
	e->family = family;
	e->port = port;
	e->pad = 0;
	__builtin_memcpy(e->addr, addr, 16);
	e->calls = calls;
	e->limit = limit;
	bpf_ringbuf_submit(e, 0);
}

/*
 * An allowed connect of an agent with a usage entry: if the destination is an API
 * endpoint, it is one API call, refused (0) once the agent's call budget is spent.
 *
 * One connect = one call: requests sent over a kept-alive connection (HTTP/1.1
 * keep-alive, HTTP/2 streams) are not seen, so this bounds connections, not requests.
 * Unconnected UDP (sendmsg) is not counted; QUIC clients connect their UDP socket.
 */
static __always_inline int rush_count_api_call(__u32 hook, __u64 cgroup_id, __u16 family,
					       const __u8 *addr, __u16 port)
{
	struct rush_api_key key = { .family = family, .port = port };
	struct rush_net_usage *usage;
	__u64 calls, limit;

	usage = bpf_map_lookup_elem(&rush_net_usage, &cgroup_id);
	if (!usage)
		return 1;
	__builtin_memcpy(key.addr, addr, 16);
	if (!bpf_map_lookup_elem(&rush_api_addrs, &key)) {
		key.port = 0;
		if (!bpf_map_lookup_elem(&rush_api_addrs, &key))
			return 1;
	}
	/* Fetch-and-add, so concurrent connects cannot all slip under the limit. */
	calls = __sync_fetch_and_add(&usage->api_calls, 1);
	limit = usage->api_limit;
	if (calls < limit)
		return 1;
	/* A refused connect is not a call. */
	__sync_fetch_and_add(&usage->api_calls, -1);
	__sync_fetch_and_add(&usage->refused_calls, 1);
	rush_emit_api_refused(hook, cgroup_id, family, addr, port, calls, limit);
	return 0;
}

/* The policy decision, shared by all four hooks. */
static __always_inline int rush_check(struct bpf_sock_addr *ctx, __u32 hook, __u16 family,
				      const __u8 *addr, __u16 port)
{
	__u64 cgroup_id = rush_current_agent_cgroup();
	struct rush_agent *agent = rush_lookup_agent(cgroup_id);

	if (!agent)
		return 1;
	if (port == 53 && agent->net_mode == RUSH_NET_MODE_LIST) {
		int redirected = rush_dns_redirect(ctx, hook, cgroup_id, family, addr, port);

		if (redirected >= 0)
			return redirected;
	}
	if (agent->net_mode == RUSH_NET_MODE_ALLOW ||
	    (agent->net_mode == RUSH_NET_MODE_LIST &&
	     rush_net_allowed(cgroup_id, family, addr, port))) {
		if (hook == RUSH_HOOK_CONNECT4 || hook == RUSH_HOOK_CONNECT6)
			return rush_count_api_call(hook, cgroup_id, family, addr, port);
		return 1;
	}
	rush_emit_net_deny(ctx, hook, cgroup_id, family, addr, port);
	return 0;
}

static __always_inline int rush_check4(struct bpf_sock_addr *ctx, __u32 hook)
{
	__u8 addr[16] = {};
	__u32 ip4 = ctx->user_ip4;

	__builtin_memcpy(addr, &ip4, 4);
	return rush_check(ctx, hook, RUSH_AF_INET, addr, bpf_ntohs((__u16)ctx->user_port));
}

static __always_inline int rush_check6(struct bpf_sock_addr *ctx, __u32 hook)
{
	__u32 ip6[4] = {};
	__u16 family = RUSH_AF_INET6;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	/*
	 * ::ffff:a.b.c.d reaches IPv4 through a v6 socket: judge it as the IPv4 address, so
	 * an IPv4 list entry applies and cannot be sidestepped with a dual-stack socket.
	 */
	if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff)) {
		family = RUSH_AF_INET;
		ip6[0] = ip6[3];
		ip6[2] = 0;
		ip6[3] = 0;
	}
	return rush_check(ctx, hook, family, (const __u8 *)ip6, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/connect4")
int rush_connect4(struct bpf_sock_addr *ctx)
{
	return rush_check4(ctx, RUSH_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int rush_connect6(struct bpf_sock_addr *ctx)
{
	return rush_check6(ctx, RUSH_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg4")
int rush_sendmsg4(struct bpf_sock_addr *ctx)
{
	return rush_check4(ctx, RUSH_HOOK_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int rush_sendmsg6(struct bpf_sock_addr *ctx)
{
	return rush_check6(ctx, RUSH_HOOK_SENDMSG6);
}

/*
 * The reply side of rush_dns_redirect: a datagram from the agent's resolver, on a socket
 * whose DNS was redirected, seems to come from the server the agent asked. Always 1:
 * recvmsg hooks only rewrite.
 */
static __always_inline struct rush_dns_orig *rush_dns_reply_orig(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct rush_dns_orig *o = bpf_map_lookup_elem(&rush_dns_orig, &cookie);

	if (!o || ctx->user_port != bpf_htons(o->via))
		return NULL;
	return o;
}

SEC("cgroup/recvmsg4")
int rush_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct rush_dns_orig *o = rush_dns_reply_orig(ctx);
	__u32 ip4;

	if (!o || o->family != RUSH_AF_INET || ctx->user_ip4 != bpf_htonl(0x7f000001))
		return 1;
	__builtin_memcpy(&ip4, o->addr, 4);
	ctx->user_ip4 = ip4;
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

SEC("cgroup/recvmsg6")
int rush_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct rush_dns_orig *o = rush_dns_reply_orig(ctx);
	__u32 ip6[4];

	if (!o)
		return 1;
	__builtin_memcpy(ip6, o->addr, 16);
	if (o->family == RUSH_AF_INET) {
		if (ctx->user_ip6[3] != bpf_htonl(0x7f000001))
			return 1;
		ctx->user_ip6[3] = ip6[0];
	} else {
		if (ctx->user_ip6[3] != bpf_htonl(1))
			return 1;
		ctx->user_ip6[0] = ip6[0];
		ctx->user_ip6[1] = ip6[1];
		ctx->user_ip6[2] = ip6[2];
		ctx->user_ip6[3] = ip6[3];
	}
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

/*
 * Byte budget. The agent is the socket's cgroup (set when the socket was created), so a
 * socket an agent made is counted wherever it goes, and one handed to it from outside is
 * not. Loopback traffic counts like any other (between two sockets of one agent, twice).
 *
 * The limit check and the add are not one atomic step: packets racing on other CPUs can
 * overshoot the limit by at most one packet each. Once over, every packet is dropped
 * (TCP sees loss and stalls) until the daemon raises the budget and clears the flag.
 *
 * Return 1 = pass, 0 = drop.
 */
static __always_inline int rush_count_skb(struct __sk_buff *skb, int egress)
{
	__u64 cgroup_id = bpf_skb_ancestor_cgroup_id(skb, agent_cgroup_level);
	struct rush_budget_event *e;
	struct rush_net_usage *usage;
	__u64 len = skb->len;
	__u64 used, limit, flags;

	if (!cgroup_id)
		return 1;
	usage = bpf_map_lookup_elem(&rush_net_usage, &cgroup_id);
	if (!usage)
		return 1;
	limit = usage->limit_bytes;
	if (limit) {
		flags = usage->flags;
		used = usage->tx_bytes + usage->rx_bytes;
		if (!(flags & RUSH_USAGE_BYTES_BREACHED) && used + len <= limit)
			goto count;
		__sync_fetch_and_add(&usage->dropped_packets, 1);
		if (flags & RUSH_USAGE_BYTES_BREACHED)
			return 0;
		/* Only the CPU that sets the flag reports the breach. */
		if (__sync_val_compare_and_swap(&usage->flags, flags,
						flags | RUSH_USAGE_BYTES_BREACHED) != flags)
			return 0;
		e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
		if (!e) {
			rush_count_lost_event();
			return 0;
		}
		rush_event_hdr_init(&e->hdr, RUSH_EVENT_NET_BUDGET, 0, cgroup_id);
		e->used = used;
		e->limit = limit;
		bpf_ringbuf_submit(e, 0);
		return 0;
	}
count:
	if (egress)
		__sync_fetch_and_add(&usage->tx_bytes, len);
	else
		__sync_fetch_and_add(&usage->rx_bytes, len);
	return 1;
}

SEC("cgroup_skb/ingress")
int rush_skb_ingress(struct __sk_buff *skb)
{
	return rush_count_skb(skb, 0);
}

SEC("cgroup_skb/egress")
int rush_skb_egress(struct __sk_buff *skb)
{
	return rush_count_skb(skb, 1);
}

/*
 * Self-protection that works without BPF LSM: no agent writes a sysctl (kernel-wide
 * settings such as unprivileged_bpf_disabled, ptrace_scope, the cgroup or net knobs).
 * Return 1 = allow, 0 = deny (EPERM). Optional: the loader retries the object without
 * it where the kernel refuses it.
 */
SEC("cgroup/sysctl")
int rush_sysctl(struct bpf_sysctl *ctx)
{
	__u64 cgroup_id;
	struct rush_guard_event *e;

	if (!ctx->write)
		return 1;
	cgroup_id = rush_current_agent_cgroup();
	if (!rush_lookup_agent(cgroup_id))
		return 1;
	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return 0;
	}
	/* Only helpers every kernel gives sysctl programs: no pid, no comm. */
	__builtin_memset(e, 0, sizeof(*e));
	rush_event_hdr_init(&e->hdr, RUSH_EVENT_GUARD_DENY, RUSH_GHOOK_SYSCTL, cgroup_id);
	e->hdr.uid = (__u32)bpf_get_current_uid_gid();
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * File confinement (BPF LSM). For now these programs only identify the agent and ALLOW
 * everything: the file-token checks (inode ancestry walk, expiry) land in a later issue.
 * They exist already so the daemon learns whether this kernel loads and attaches LSM
 * programs at all (some kernels refuse BPF trampolines: BPF_PROG_LOAD fails with EPERM),
 * and reports which guarantees hold.
 *
 * Return 0 = allow, -EPERM = deny.
 */
#include "rush.h"
#include <bpf/bpf_tracing.h>

SEC("lsm/file_open")
int BPF_PROG(rush_file_open, struct file *file)
{
	struct rush_agent *agent = rush_lookup_agent(rush_current_agent_cgroup());

	if (!agent)
		return 0;
	/* Agent: file tokens are checked here in a later issue. */
	return 0;
}

/* Runs on every read/write of an open file, so a revoked token also stops open fds. */
SEC("lsm/file_permission")
int BPF_PROG(rush_file_permission, struct file *file, int mask)
{
	struct rush_agent *agent = rush_lookup_agent(rush_current_agent_cgroup());

	if (!agent)
		return 0;
	/* Agent: file tokens are checked here in a later issue. */
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

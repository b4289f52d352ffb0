// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Self-protection (BPF LSM): what no agent may do, whatever its tokens and even as root
 * inside its cgroup. Applies to every process in an agent cgroup (file-confined or not);
 * everybody else passes after one cgroup-id lookup, or, in the hot inode_permission hook,
 * after comparing the superblock magic and the inode with a few constants.
 *
 *   capable           the capabilities that reach around the other hooks or into the
 *                     kernel (RUSH_DENIED_CAPS: CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_BPF,
 *                     CAP_SYS_PTRACE, CAP_SYS_RAWIO, CAP_MKNOD, CAP_NET_RAW, ...) are
 *                     refused: no mount, chroot, raw disk, device nodes, raw sockets, ...
 *   bpf               every bpf() command: the maps hold the tokens.
 *   ptrace_access_check, ptrace_traceme
 *                     ptrace, /proc/PID/{mem,root,cwd,fd,environ}, process_vm_*,
 *                     pidfd_getfd of processes outside the agent's own cgroup.
 *   task_kill         signals to processes outside the agent's cgroup (the daemon
 *                     included); the kernel's own signals (SIGCHLD, ...) are not checks.
 *   file_fcntl        F_SETOWN to another process, F_SETOWN_EX (SIGIO would signal it);
 *   file_ioctl        FIOSETOWN, SIOCSPGRP (the same through ioctl; refused outright).
 *   sb_mount, sb_umount, sb_pivotroot, move_mount   (also behind CAP_SYS_ADMIN).
 *   userns_create     no user namespaces, where capabilities would be had again.
 *   kernel_read_file, kernel_load_data             module, firmware, kexec loading.
 *   inode_permission  write to the kernel's interface filesystems: cgroupfs (cgroup.procs
 *                     of any cgroup: no moving out, no raising limits), bpffs (no
 *                     unpinning), sysfs, binfmt_misc (a handler would run outside the
 *                     agent), debugfs, tracefs, securityfs, configfs, efivarfs, pstore;
 *                     any access to the protected directories (the daemon's state, config).
 *   file_open         write opens on procfs outside /proc/PID (sysrq-trigger, /proc/sys,
 *                     /proc/irq, ...); an agent's own /proc/self stays writable.
 * The cgroup/sysctl program in net.bpf.c refuses sysctl writes the same way.
 *
 * Return 0 = allow, -EPERM = deny (+ a struct rush_guard_event on rush_events).
 */
#include "rush.h"
#include <bpf/bpf_tracing.h>

#define EPERM 1
#define MAY_WRITE 0x2
#define MAY_APPEND 0x8
#define CAP_OPT_NOAUDIT 0x2
#define PTRACE_MODE_NOAUDIT 0x04
#define F_SETOWN 8
#define F_SETOWN_EX 15
#define FIOSETOWN 0x8901
#define SIOCSPGRP 0x8902

#define CGROUP_SUPER_MAGIC 0x27e0eb
#define CGROUP2_SUPER_MAGIC 0x63677270
#define BPF_FS_MAGIC 0xcafe4a11
#define SYSFS_MAGIC 0x62656572
#define BINFMTFS_MAGIC 0x42494e4d
#define DEBUGFS_MAGIC 0x64626720
#define TRACEFS_MAGIC 0x74726163
#define SECURITYFS_MAGIC 0x73636673
#define CONFIGFS_MAGIC 0x62656570
#define EFIVARFS_MAGIC 0xde5e81e4
#define PSTOREFS_MAGIC 0x6165676c
#define PROC_SUPER_MAGIC 0x9fa0
#define FMODE_WRITE 0x2
/* Levels between a procfs file and /proc that the procfs check climbs. */
#define RUSH_PROC_DEPTH 8

#define CAP(n) (1ull << (n))
/* CAP_DAC_READ_SEARCH 2 (open_by_handle_at), CAP_LINUX_IMMUTABLE 9, CAP_NET_ADMIN 12,
 * CAP_NET_RAW 13, CAP_SYS_MODULE 16, CAP_SYS_RAWIO 17, CAP_SYS_CHROOT 18,
 * CAP_SYS_PTRACE 19, CAP_SYS_PACCT 20, CAP_SYS_ADMIN 21, CAP_SYS_BOOT 22, CAP_SYS_TIME 25,
 * CAP_MKNOD 27, CAP_AUDIT_CONTROL 30, CAP_SETFCAP 31, CAP_MAC_OVERRIDE 32,
 * CAP_MAC_ADMIN 33, CAP_SYSLOG 34, CAP_PERFMON 38, CAP_BPF 39, CAP_CHECKPOINT_RESTORE 40.
 * Kept: DAC override, chown, setuid/setgid, kill (task_kill limits it), net bind, ... */
#define RUSH_DENIED_CAPS                                                                      \
	(CAP(2) | CAP(9) | CAP(12) | CAP(13) | CAP(16) | CAP(17) | CAP(18) | CAP(19) | CAP(20) | \
	 CAP(21) | CAP(22) | CAP(25) | CAP(27) | CAP(30) | CAP(31) | CAP(32) | CAP(33) |        \
	 CAP(34) | CAP(38) | CAP(39) | CAP(40))
/* Denied without an event: the kernel asks for it on every DAC-refused read, before it
 * falls back to CAP_DAC_OVERRIDE, so an event would be noise. */
#define RUSH_QUIET_CAPS CAP(2)

/* Set by the loader: the protected directories, as (sb s_dev, i_ino). */
const volatile __u32 protected_dev[RUSH_PROTECTED_MAX] = {};
const volatile __u64 protected_ino[RUSH_PROTECTED_MAX] = {};

/* The current task's agent cgroup (any agent, confined files or not), else 0. */
static __always_inline __u64 rush_agent_self(void)
{
	__u64 cgroup_id = rush_current_agent_cgroup();

	return rush_lookup_agent(cgroup_id) ? cgroup_id : 0;
}

static __always_inline int rush_guard_deny(__u32 hook, __u64 cgroup_id, __u32 target, __s64 arg)
{
	struct rush_guard_event *e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);

	if (!e) {
		rush_count_lost_event();
		return -EPERM;
	}
	rush_event_hdr_current(&e->hdr, RUSH_EVENT_GUARD_DENY, hook, cgroup_id);
	e->target = target;
	e->pad = 0;
	e->arg = arg;
	bpf_ringbuf_submit(e, 0);
	return -EPERM;
}

/* Denies when the current task is an agent; the event carries `arg`. */
static __always_inline int rush_agent_may_not(__u32 hook, __s64 arg)
{
	__u64 cgroup_id = rush_agent_self();

	if (!cgroup_id)
		return 0;
	return rush_guard_deny(hook, cgroup_id, 0, arg);
}

/* Denies an agent acting on `task` outside its own agent cgroup. */
static __always_inline int rush_check_task(__u32 hook, struct task_struct *task, __s64 arg)
{
	__u64 cgroup_id = rush_agent_self();

	if (!cgroup_id || rush_task_agent_cgroup(task) == cgroup_id)
		return 0;
	return rush_guard_deny(hook, cgroup_id, BPF_CORE_READ(task, tgid), arg);
}

SEC("lsm/capable")
int BPF_PROG(rush_capable, const struct cred *cred, struct user_namespace *ns, int cap,
	     unsigned int opts)
{
	__u64 cgroup_id;

	if (cap < 0 || cap > 63 || !(RUSH_DENIED_CAPS & CAP(cap)))
		return 0;
	cgroup_id = rush_agent_self();
	if (!cgroup_id)
		return 0;
	if ((opts & CAP_OPT_NOAUDIT) || (RUSH_QUIET_CAPS & CAP(cap)))
		return -EPERM;
	return rush_guard_deny(RUSH_GHOOK_CAPABLE, cgroup_id, 0, cap);
}

SEC("lsm/bpf")
int BPF_PROG(rush_bpf, int cmd)
{
	return rush_agent_may_not(RUSH_GHOOK_BPF, cmd);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(rush_ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	__u64 cgroup_id;

	/* The kernel's quiet probes (ps reading /proc/PID/stat): denied without an event. */
	if (mode & PTRACE_MODE_NOAUDIT) {
		cgroup_id = rush_agent_self();
		return cgroup_id && rush_task_agent_cgroup(child) != cgroup_id ? -EPERM : 0;
	}
	return rush_check_task(RUSH_GHOOK_PTRACE, child, mode);
}

SEC("lsm/ptrace_traceme")
int BPF_PROG(rush_ptrace_traceme, struct task_struct *parent)
{
	return rush_check_task(RUSH_GHOOK_TRACEME, parent, 0);
}

SEC("lsm/task_kill")
int BPF_PROG(rush_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig)
{
	return rush_check_task(RUSH_GHOOK_KILL, p, sig);
}

SEC("lsm/file_fcntl")
int BPF_PROG(rush_file_fcntl, struct file *file, unsigned int cmd, unsigned long arg)
{
	__u64 cgroup_id, pid_tgid;

	if (cmd != F_SETOWN && cmd != F_SETOWN_EX)
		return 0;
	cgroup_id = rush_agent_self();
	if (!cgroup_id)
		return 0;
	/* F_SETOWN to itself (or to nobody) is harmless; any other owner could be outside
	 * the agent. F_SETOWN_EX's argument is in user memory: refused outright. */
	pid_tgid = bpf_get_current_pid_tgid();
	if (cmd == F_SETOWN && (arg == 0 || arg == (pid_tgid >> 32) || arg == (__u32)pid_tgid))
		return 0;
	return rush_guard_deny(RUSH_GHOOK_FCNTL, cgroup_id, 0, cmd == F_SETOWN ? (__s64)arg : -1);
}

SEC("lsm/file_ioctl")
int BPF_PROG(rush_file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
{
	/* The owner is behind a user pointer, which this hook cannot read safely. */
	if (cmd != FIOSETOWN && cmd != SIOCSPGRP)
		return 0;
	return rush_agent_may_not(RUSH_GHOOK_IOCTL, cmd);
}

SEC("lsm/sb_mount")
int BPF_PROG(rush_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags)
{
	return rush_agent_may_not(RUSH_GHOOK_MOUNT, flags);
}

SEC("lsm/sb_umount")
int BPF_PROG(rush_sb_umount, struct vfsmount *mnt, int flags)
{
	return rush_agent_may_not(RUSH_GHOOK_UMOUNT, flags);
}

SEC("lsm/sb_pivotroot")
int BPF_PROG(rush_sb_pivotroot, const struct path *old_path, const struct path *new_path)
{
	return rush_agent_may_not(RUSH_GHOOK_PIVOTROOT, 0);
}

SEC("lsm/move_mount")
int BPF_PROG(rush_move_mount, const struct path *from_path, const struct path *to_path)
{
	return rush_agent_may_not(RUSH_GHOOK_MOVE_MOUNT, 0);
}

SEC("lsm/userns_create")
int BPF_PROG(rush_userns_create, const struct cred *cred)
{
	return rush_agent_may_not(RUSH_GHOOK_USERNS, 0);
}

SEC("lsm/kernel_read_file")
int BPF_PROG(rush_kernel_read_file, struct file *file, int id)
{
	return rush_agent_may_not(RUSH_GHOOK_KERNEL_READ_FILE, id);
}

SEC("lsm/kernel_load_data")
int BPF_PROG(rush_kernel_load_data, int id)
{
	return rush_agent_may_not(RUSH_GHOOK_KERNEL_LOAD_DATA, id);
}

/* Whether (dev, ino) is one of the protected directories. */
static __always_inline int rush_is_protected(__u32 dev, __u64 ino)
{
#pragma unroll
	for (int i = 0; i < RUSH_PROTECTED_MAX; i++) {
		if (protected_ino[i] && protected_ino[i] == ino && protected_dev[i] == dev)
			return 1;
	}
	return 0;
}

/*
 * Called for every permission check, path lookups included, by every process: the
 * superblock magic and inode number are compared first, the agent lookup comes last.
 * A protected directory refuses even the search (lookup) permission, so nothing below it
 * can be reached by path; /proc/PID/{cwd,root,fd} of the daemon are ptrace-guarded.
 */
/* Filesystems that are interfaces to the kernel itself, which agents may not write. */
static __always_inline int rush_is_kernel_fs(unsigned long magic)
{
	return magic == CGROUP2_SUPER_MAGIC || magic == CGROUP_SUPER_MAGIC || magic == BPF_FS_MAGIC ||
	       magic == SYSFS_MAGIC || magic == BINFMTFS_MAGIC || magic == DEBUGFS_MAGIC ||
	       magic == TRACEFS_MAGIC || magic == SECURITYFS_MAGIC || magic == CONFIGFS_MAGIC ||
	       magic == EFIVARFS_MAGIC || magic == PSTOREFS_MAGIC;
}

SEC("lsm/inode_permission")
int BPF_PROG(rush_inode_permission, struct inode *inode, int mask)
{
	struct super_block *sb = inode->i_sb;
	unsigned long magic = sb->s_magic;
	__u32 hook;

	if ((mask & (MAY_WRITE | MAY_APPEND)) && rush_is_kernel_fs(magic))
		hook = RUSH_GHOOK_CGROUPFS_WRITE;
	else if (rush_is_protected(sb->s_dev, inode->i_ino))
		hook = RUSH_GHOOK_PROTECTED_DIR;
	else
		return 0;
	return rush_agent_may_not(hook, mask);
}

/* Whether `name` (a procfs entry right under /proc) is a process directory: all digits. */
static __always_inline int rush_is_pid_name(const unsigned char *name, __u32 len)
{
	char buf[12] = {};

	if (len == 0 || len > 10)
		return 0;
	bpf_probe_read_kernel(buf, sizeof(buf) - 1, name);
#pragma unroll
	for (int i = 0; i < 10; i++) {
		if (i >= len)
			break;
		if (buf[i] < '0' || buf[i] > '9')
			return 0;
	}
	return 1;
}

/*
 * The agent cgroup of the process whose /proc/PID directory has inode `inode` (a plain
 * value, read with BPF_CORE_READ: container_of arithmetic is refused on BTF pointers), 0
 * when it is in none or has exited. The proc_inode around it holds the struct pid; its
 * first PIDTYPE_PID task is the process.
 */
static __always_inline __u64 rush_proc_dir_agent(struct inode *inode, __u32 *pid_nr)
{
	struct proc_inode *pi =
		(void *)((__u64)inode - bpf_core_field_offset(struct proc_inode, vfs_inode));
	struct pid *pid = BPF_CORE_READ(pi, pid);
	struct hlist_node *first;
	struct task_struct *task;

	if (!pid)
		return 0;
	*pid_nr = BPF_CORE_READ(pid, numbers[0].nr);
	first = BPF_CORE_READ(pid, tasks[PIDTYPE_PID].first);
	if (!first)
		return 0;
	task = (void *)((__u64)first - bpf_core_field_offset(struct task_struct, pid_links[PIDTYPE_PID]));
	return rush_task_agent_cgroup(task);
}

/*
 * A write open of a procfs file: allowed only under the directory of a process of the
 * agent's own (/proc/PID/..., which /proc/self resolves to): another process's
 * oom_score_adj (the daemon's, to have the OOM killer take it first), comm, timers, ...
 * are not the agent's to write. The rest of /proc is the kernel's: sysrq-trigger,
 * /proc/sys (also refused by the sysctl program), /proc/irq, /proc/fs, ...
 */
SEC("lsm/file_open")
int BPF_PROG(rush_guard_file_open, struct file *file)
{
	struct super_block *sb;
	struct dentry *dentry, *root;
	__u64 cgroup_id;
	int i;

	if (!(file->f_mode & FMODE_WRITE))
		return 0;
	sb = file->f_inode->i_sb;
	if (sb->s_magic != PROC_SUPER_MAGIC)
		return 0;
	cgroup_id = rush_agent_self();
	if (!cgroup_id)
		return 0;
	root = sb->s_root;
	dentry = file->f_path.dentry;
	for (i = 0; i < RUSH_PROC_DEPTH; i++) {
		struct dentry *parent = dentry->d_parent;

		if (parent == root || parent == dentry)
			break;
		dentry = parent;
	}
	if (dentry->d_parent == root && rush_is_pid_name(dentry->d_name.name, dentry->d_name.len)) {
		__u32 pid_nr = 0;

		if (rush_proc_dir_agent(BPF_CORE_READ(dentry, d_inode), &pid_nr) == cgroup_id)
			return 0;
		return rush_guard_deny(RUSH_GHOOK_PROC_PID_WRITE, cgroup_id, pid_nr, 0);
	}
	return rush_guard_deny(RUSH_GHOOK_PROC_WRITE, cgroup_id, 0, 0);
}

/*
 * Abstract Unix sockets have no file (pathname sockets are files: file.bpf.c checks them
 * against tokens): an agent may reach only those its own processes made, as Landlock's
 * scope has it (LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET). A display server's
 * @/tmp/.X11-unix/X0, a session bus or any service listening outside the agent would
 * otherwise take its requests (keystrokes into the user's terminal). Who made the socket
 * is its cgroup (sk_cgrp_data: the creator's cgroup v2). Unnamed sockets (socketpair)
 * are not checked: a peer outside had to hand one in.
 */
static __always_inline int rush_check_abstract_peer(__u32 hook, struct sock *peer)
{
	__u64 cgroup_id = rush_agent_self();
	struct unix_sock *u;

	if (!cgroup_id || !peer)
		return 0;
	u = bpf_skc_to_unix_sock(peer);
	if (!u || u->path.dentry || !u->addr)
		return 0;
	if (rush_cgroup_agent(BPF_CORE_READ(peer, sk_cgrp_data.cgroup)) == cgroup_id)
		return 0;
	return rush_guard_deny(hook, cgroup_id, 0, 0);
}

SEC("lsm/unix_stream_connect")
int BPF_PROG(rush_guard_unix_stream_connect, struct sock *sock, struct sock *other,
	     struct sock *newsk)
{
	return rush_check_abstract_peer(RUSH_GHOOK_UNIX_ABSTRACT_CONNECT, other);
}

SEC("lsm/unix_may_send")
int BPF_PROG(rush_guard_unix_may_send, struct socket *sock, struct socket *other)
{
	return rush_check_abstract_peer(RUSH_GHOOK_UNIX_ABSTRACT_SEND, other->sk);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

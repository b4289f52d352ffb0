// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * File confinement (BPF LSM): capability tokens on files, checked in the kernel.
 *
 * A process in an agent cgroup whose rush_agents entry has RUSH_AGENT_FILES_CONFINED may
 * do an operation (read, write, exec, create, delete) on an object only if a grant covers
 * it: an entry of rush_file_grants for (agent, dev, ino) of the object or of any directory
 * above it, up to the global root and across mount points (a grant on a directory covers
 * its subtree), whose expiry for that op lies in the future of bpf_ktime_get_boot_ns(),
 * met in the mount the grant names (a bind mount elsewhere does not carry it). dev is the
 * superblock's, except on btrfs: the subvolume's anonymous device, since subvolumes and
 * snapshots share the superblock and repeat inode numbers.
 * Everybody else (non-agents, agents without the flag) pays one hash lookup and is never
 * denied by grants (claims, below, may still deny an agent without it). Denies return
 * -EPERM and emit a struct rush_file_event on rush_events.
 *
 * What each hook checks:
 *   file_open        exec (__FMODE_EXEC in f_flags: execve, the ELF interpreter): exec,
 *                    not read, so an exec-only grant runs a binary; else FMODE_READ: read;
 *                    FMODE_WRITE or O_TRUNC: write; an open with neither mode
 *                    (O_WRONLY|O_RDWR, ioctl-only): read; O_TMPFILE: also create (on
 *                    the directory). Every file type.
 *   file_permission  read / write on every read/write of an open regular file or
 *                    directory (getdents included), so a revoked or expired token stops
 *                    descriptors that are already open. The kernel's own reads of a file
 *                    opened for exec need exec instead of read.
 *                    Pipes, sockets, ttys and other non-regular files are not checked.
 *   path_mknod, path_mkdir, path_symlink   create, on the parent directory (an
 *                    open(O_CREAT) of a new file goes through path_mknod).
 *   path_unlink, path_rmdir                delete, on the victim.
 *   path_rename      delete on the source, create on the new parent, delete on a target
 *                    that is replaced; RENAME_EXCHANGE: both ways. No widening: read,
 *                    write and exec granted at the destination must already be granted
 *                    on the source, so an object cannot be moved into more access.
 *   path_link        create on the new parent + the same no-widening rule.
 *   path_truncate, path_chmod, path_chown  write.
 *   mmap_file        what read()/write() would need, for any mapping of a file, also
 *                    one the agent did not open (received over SCM_RIGHTS, its stdin):
 *                    PROT_READ or PROT_WRITE: read (exec for a file opened for exec:
 *                    the ELF loader maps exec-only binaries); PROT_WRITE with MAP_SHARED:
 *                    write (a private writable mapping writes only its own copy);
 *                    PROT_EXEC: exec (also non-regular files: ld.so PROGRAM, memfds).
 *   file_mprotect    the same for what a mapping gains: exec without VM_EXEC before,
 *                    read from PROT_NONE, write on a VM_SHARED vma without VM_WRITE.
 *   path_notify      read, for inotify, fanotify and dnotify marks on an inode; mount
 *                    and filesystem marks refused (they report beyond any grant).
 * Decisions cached per inode (rush_open_cache, inode local storage): the ops a walk found
 * granted on an object (in the hooks above but delete and the renames' and links'
 * no-widening rule; for create, on the directory) are kept in the object's inode storage
 * with the decision's identity (agent, its flags, the dentry and mount it was reached
 * through) and the generations of rush_file_policy it was decided under; while both
 * generations are unchanged and the clock is below the daemon's next expiry, the next
 * check of that inode through the same path by the same agent (another open, every read
 * and write, a create in that directory) is one lookup. One entry per inode, holding the
 * last identity's ops (another agent's check, or another name's, walks and takes the
 * entry over). The daemon bumps its generation after every grant it writes or deletes
 * (so a revoke reaches open descriptors at their next read, as before) and, past the
 * earliest expiry, the check walks again until the daemon moves the expiry on (a TTL
 * lapses even with the daemon gone). The kernel's generation is bumped by every rename
 * and link, by any task (they change what lies above a file, and links change the
 * hard-link rule), by an unlink of a name of a file that has others (a dentry freed with
 * its name can come back as another name's at the same address), and when a save moves a
 * grant. An entry dies with its inode. Denials are never cached.
 * Hard links (rush_agents flags RUSH_AGENT_HARDLINKS_*, `--hardlinks`): a regular file
 * with i_nlink > 1 needs write (refuse-write) or read, write and exec (refuse) from its
 * own grant entry, not from a directory above it: file_open, file_permission, mmap_file,
 * file_mprotect, path_notify, path_truncate/chmod/chown. Default (follow): a name in a
 * granted directory grants the inode, whatever its other names.
 * Save right (RUSH_FILE_OP_SAVE, internal): on the directory of a file the agent may
 * write, path_mknod lets it create a regular file there, which the next file_open grants
 * it (read, write, delete), and path_rename lets it rename such a file over the writable
 * one in the same directory, moving that file's grant to the new inode (editor saves).
 * Objects on internal (kernel) mounts, reachable only through a descriptor the process
 * already holds (a pipe or memfd reopened through /proc/self/fd, nsfs), count as granted
 * for read and write, as Landlock does, never for exec (no memfd + execveat).
 *
 * Path claims (rush_claim_denies, RUSH_AGENT_CLAIM_DENIED): while an agent holds an
 * exclusive claim on a directory, the daemon gives every other agent of its session an
 * entry (that agent, dev, ino of the directory) -> (claim id, holder) and sets its
 * RUSH_AGENT_CLAIM_DENIED flag. Such an agent, file-confined or not, is refused every
 * write-like operation on an object at or below a claimed inode, whatever its grants say
 * (the claim check runs first): -EPERM and a struct rush_claim_event. Reads are untouched.
 * The check walks from the object up like the grant walk, looking the agent's entry up at
 * each level, but through the filesystem's tree (rush_walk_up, fs_tree): the root of a
 * bind mount of a subdirectory goes on to that directory's parents before crossing to the
 * mount point, and the mount id is not part of the match, so no bind mount (of the
 * claimed directory or of anything below it) escapes the deny; a mount inside the claimed
 * directory is crossed to its mount point, as for grants. A walk that cannot finish
 * within RUSH_WALK_MAX levels denies (the event's claim id is 0): failing open would let
 * a deep enough tree escape a claim, and failing closed costs only agents with the flag,
 * i.e. only while some claim denies them something (a file-confined agent's grant walk
 * fails closed at the same depth anyway). Only agents with the flag pay the walk: a hash
 * lookup per level, to the root, on every write-like call. What is checked:
 *   file_open        an open that needs write (FMODE_WRITE, O_TRUNC) or O_TMPFILE.
 *   file_permission  every write to an open regular file or directory: descriptors
 *                    opened before the claim are stopped too.
 *   path_mknod, path_mkdir, path_symlink   the parent directory.
 *   path_unlink, path_rmdir                the victim.
 *   path_rename      the source (moving out of a claim); a target that is replaced or,
 *                    with RENAME_EXCHANGE, moved out; else the new parent (moving in).
 *   path_link        the new parent, and the linked file (a second name outside the
 *                    claim would let it be written there).
 *   path_truncate, path_chmod, path_chown  the object.
 *   mmap_file        a shared writable mapping; file_mprotect: a shared one gaining write.
 * path_notify, unix_stream_connect and unix_may_send (reads, in claim terms) are not.
 *
 * NOT covered (yet):
 *   - mmap: pages of a file mapped before a revoke stay readable/writable (no hook on
 *     page faults): the daemon kills the agent's processes holding such mappings.
 *   - Notification marks are checked when placed: one placed while granted keeps
 *     reporting events after a revoke.
 *   - A hard link made after a file was mapped leaves the mapping usable (no hook on page
 *     faults); open descriptors meet the hard-link rule at their next read or write.
 *   - io_uring: its io-wq and SQPOLL workers are threads of the submitting task, in its
 *     cgroup, so its opens and reads/writes meet these hooks as the agent.
 *   - ftruncate() on 6.2+ kernels goes through file_truncate (absent in 6.1), not
 *     path_truncate: ftruncate of an fd opened for write before a revoke still works
 *     there. open(O_TRUNC) and truncate(path) are checked everywhere.
 *   - Metadata: stat, getxattr/setxattr/removexattr, utimes, access(), readlink, chdir,
 *     path lookup itself (an agent can learn names and attributes of files it cannot
 *     open), inode_setattr other than chmod/chown, fcntl/ioctl/flock on open files.
 *   - Files handed to the agent already open (stdout redirected to a regular file, an
 *     fd received over SCM_RIGHTS): the open was not the agent's, but every read, write
 *     and mapping is, so they need a grant like any other.
 *   - Stacked/backing files: overlayfs opens its real files on private, detached mounts,
 *     so the walk for those ends at the layer's root: agents on an overlayfs root are
 *     denied unless the layer directories are granted.
 *   - btrfs needs its BTF (built in, or the module loaded before these programs): without
 *     it every btrfs file is denied, and the daemon refuses grants there.
 *   - The walk reads d_parent/mnt_parent without the kernel's locks (as every BPF LSM
 *     does): a rename racing with a check can be judged on either side of it (and a
 *     decision so judged stays cached for that inode until the next generation).
 *   - A mount moved, detached or unmounted (move_mount, umount) by a process outside the
 *     agents changes what lies above its files without a generation bump: decisions
 *     cached for inodes below it stand until the next bump, also for a new mount of the
 *     same filesystem that happens to reuse the old struct mount's address (agents
 *     cannot mount at all).
 *   - A walk longer than RUSH_WALK_MAX levels denies (fail closed).
 *   Claims, besides the above (mappings made before it keep writing; ftruncate of a
 *   descriptor opened before it, on 6.2+; metadata other than chmod/chown):
 *   - A file that already had a second name outside the claimed tree (a hard link made
 *     before the claim) can be written through that name: the walk follows the name used.
 *   - Moving a directory that lies above a claimed one (rename of an ancestor): the claim
 *     is keyed by inode, so the claimed tree stays denied, at its new path.
 *
 * Return 0 = allow, -EPERM = deny.
 */
#include "rush.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* Macros of the kernel headers (so not in vmlinux.h); the same values in 6.1 and 6.12. */
#define EPERM 1
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
/* An exec's open: FMODE_EXEC's value, but set in f_flags, not f_mode (as Landlock notes). */
#define __FMODE_EXEC 0x20
#define O_TRUNC 01000
#define __O_TMPFILE 020000000
#define MAY_WRITE 0x2
#define MAY_READ 0x4
#define MAY_APPEND 0x8
#define S_IFMT 0170000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define S_IFLNK 0120000
#define RENAME_EXCHANGE 2
#define MNT_INTERNAL 0x4000
#define PROT_READ 0x1
#define PROT_WRITE 0x2
#define PROT_EXEC 0x4
#define MAP_TYPE 0x0f
#define MAP_SHARED 0x01
#define MAP_SHARED_VALIDATE 0x03
#define VM_READ 0x1
#define VM_WRITE 0x2
#define VM_EXEC 0x4
#define VM_SHARED 0x8
#define BTRFS_SUPER_MAGIC 0x9123683e

/* Directory levels a walk may climb (mount crossings included) before it gives up. */
#define RUSH_WALK_MAX 4096
/* Of those, the first levels (within the first mount) walked without helper calls. */
#define RUSH_WALK_FAST 16

#define RUSH_OPS_ALL 0x1f
#define RUSH_OPS_RWX (RUSH_FILE_OP_READ | RUSH_FILE_OP_WRITE | RUSH_FILE_OP_EXEC)
/* What an object on a kernel-internal mount (a pipe, a memfd reopened through
 * /proc/self/fd) allows: using the descriptor the process has, never executing it. */
#define RUSH_OPS_INTERNAL (RUSH_FILE_OP_READ | RUSH_FILE_OP_WRITE)
/* What an agent holds on a file it created beside a file it may save (RUSH_FILE_OP_SAVE). */
#define RUSH_OPS_SAVED (RUSH_FILE_OP_READ | RUSH_FILE_OP_WRITE | RUSH_FILE_OP_DELETE)
#define RUSH_SAVE_SLOT 5

/* Where event paths are assembled, leaf to root, ending at RUSH_FILE_PATH_LEN - 1. Twice
 * the path size so that (start offset <= 255) + (name length <= 255) stays inside it,
 * which is what the verifier can check. Per CPU: an LSM program can be preempted (not
 * migrated), so another deny on the same CPU may, rarely, garble an event's path. */
struct rush_path_scratch {
	char buf[2 * RUSH_FILE_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rush_path_scratch);
} rush_path_scratch SEC(".maps");

/* Files being created through a RUSH_FILE_OP_SAVE directory: (pid_tgid) -> the new
 * dentry, from path_mknod until the open that follows it (file_open) grants the file. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} rush_save_pending SEC(".maps");

/*
 * The last decision made for one inode (rush_open_cache; see the top comment). Local
 * storage is written in place, by any CPU: `seq` is a sequence count (odd while a writer
 * is in it; writers take it with a compare-and-swap and skip when it is taken), read
 * before and after the fields with fully ordered atomics, so that a reader never takes
 * one writer's agent with another's ops.
 */
struct rush_open_decision {
	__u64 seq;       /* 64 bits: BPF's 32-bit atomics with fetch need alu32 (-mcpu=v3) */
	__u64 cgroup_id; /* the agent it was made for */
	__u64 dentry;    /* the path it was reached by: the decision holds for that path only */
	__u64 mnt;
	__u64 daemon_gen; /* rush_file_policy generations it was made under */
	__u64 kernel_gen;
	__u32 ops;   /* granted (the hard-link rule of `flags` applied) */
	__u32 flags; /* the agent's RUSH_AGENT_* flags then */
};

/* Inode local storage rather than a hash keyed by the struct file: a read is a few loads
 * from the inode's security blob, and an open of a file met before is decided without a
 * walk. (An LRU insert at every open cost more, under TCG, than the walk it saved.) */
struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rush_open_decision);
} rush_open_cache SEC(".maps");

/* Renames, links and moved grants change what a walk finds: cached decisions go stale. */
static __always_inline void rush_policy_bump_kernel(void)
{
	__u32 k = RUSH_POLICY_KERNEL;
	struct rush_file_policy *p = bpf_map_lookup_elem(&rush_file_policy, &k);

	if (p)
		__sync_fetch_and_add(&p->generation, 1);
}

/* The policy generations read before a check, which the decision it caches is stamped with.
 * ~0 when rush_file_policy could not be read: no generation reaches it, so a decision so
 * stamped never counts. (Not a flag: a known constant in the verifier's state at the walk
 * would have it verify the walk once for each value.) */
struct rush_gens {
	__u64 daemon;
	__u64 kernel;
};

/*
 * The ops cached for `inode` if its decision still counts (reached through the same
 * dentry and mount, by the same agent with the same flags, under the current generations,
 * before the next expiry), else 0; the generations in `g` either way, for the decision
 * the caller then makes. The expiry is read before the generations: the daemon raises it
 * only after a bump, so an expiry read new implies generations at least as new.
 * `inode` must be a BTF pointer (a direct load), as the storage helper takes it.
 */
static __always_inline __u32 rush_cached_at(struct inode *inode, struct dentry *dentry, __u64 mnt,
					    __u64 cgroup_id, __u32 flags, struct rush_gens *g)
{
	__u32 d = RUSH_POLICY_DAEMON, k = RUSH_POLICY_KERNEL, ops;
	struct rush_file_policy *pd = bpf_map_lookup_elem(&rush_file_policy, &d);
	struct rush_file_policy *pk = bpf_map_lookup_elem(&rush_file_policy, &k);
	struct rush_open_decision *c;
	__u64 seq, next;
	int stale;

	g->daemon = ~0ULL;
	g->kernel = ~0ULL;
	if (!pd || !pk)
		return 0;
	next = *(volatile __u64 *)&pd->next_expiry_ns;
	asm volatile("" ::: "memory");
	g->daemon = *(volatile __u64 *)&pd->generation;
	g->kernel = *(volatile __u64 *)&pk->generation;
	asm volatile("" ::: "memory");
	if (!inode)
		return 0;
	c = bpf_inode_storage_get(&rush_open_cache, inode, 0, 0);
	if (!c)
		return 0;
	seq = __sync_fetch_and_add(&c->seq, 0);
	if (seq & 1)
		return 0;
	stale = c->cgroup_id != cgroup_id || c->flags != flags || c->daemon_gen != g->daemon ||
		c->kernel_gen != g->kernel || c->dentry != (__u64)dentry || c->mnt != mnt;
	ops = c->ops;
	if (__sync_fetch_and_add(&c->seq, 0) != seq || stale)
		return 0;
	/* ~0: no grant expires (no clock read, the common case). */
	if (next != ~0ULL && bpf_ktime_get_boot_ns() >= next)
		return 0;
	return ops;
}

/* Remembers that `ops` are granted on `inode` through (dentry, mnt) under the generations
 * `g` read before the walk that found them; added to the entry's ops when it holds a
 * decision of the same identity and generations. Skipped when another writer is in the
 * entry (the next check walks again). */
static __always_inline void rush_cache_at(struct inode *inode, struct dentry *dentry, __u64 mnt,
					  __u64 cgroup_id, __u32 flags, __u32 ops,
					  const struct rush_gens *g)
{
	struct rush_open_decision *c;
	__u64 seq;

	if (!inode)
		return;
	c = bpf_inode_storage_get(&rush_open_cache, inode, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c)
		return;
	seq = *(volatile __u64 *)&c->seq;
	if ((seq & 1) || __sync_val_compare_and_swap(&c->seq, seq, seq + 1) != seq)
		return;
	if (c->cgroup_id == cgroup_id && c->flags == flags && c->dentry == (__u64)dentry &&
	    c->mnt == mnt && c->daemon_gen == g->daemon && c->kernel_gen == g->kernel)
		ops |= c->ops;
	c->cgroup_id = cgroup_id;
	c->dentry = (__u64)dentry;
	c->mnt = mnt;
	c->daemon_gen = g->daemon;
	c->kernel_gen = g->kernel;
	c->ops = ops;
	c->flags = flags;
	__sync_val_compare_and_swap(&c->seq, seq + 1, seq + 2);
}

/* The agent cgroup of the current task if that agent is file-confined, else 0; its
 * RUSH_AGENT_* flags in `flags`. */
static __always_inline __u64 rush_confined_agent_flags(__u32 *flags)
{
	__u64 cgroup_id = rush_current_agent_cgroup();
	struct rush_agent *agent = rush_lookup_agent(cgroup_id);

	if (!agent || !(agent->flags & RUSH_AGENT_FILES_CONFINED))
		return 0;
	*flags = agent->flags;
	return cgroup_id;
}

/* The agent cgroup of the current task if the write-like hooks have something to check
 * for it (it is file-confined, or a claim denies it something), else 0; its RUSH_AGENT_*
 * flags in `flags`. */
static __always_inline __u64 rush_file_agent(__u32 *flags)
{
	__u64 cgroup_id = rush_current_agent_cgroup();
	struct rush_agent *agent = rush_lookup_agent(cgroup_id);
	__u32 agent_flags;

	if (!agent)
		return 0;
	agent_flags = agent->flags;
	if (!(agent_flags & (RUSH_AGENT_FILES_CONFINED | RUSH_AGENT_CLAIM_DENIED)))
		return 0;
	*flags = agent_flags;
	return cgroup_id;
}

/* struct mount embeds the struct vfsmount that paths point to (container_of). */
static __always_inline struct mount *rush_real_mount(struct vfsmount *mnt)
{
	if (!mnt)
		return NULL;
	return (struct mount *)((unsigned long)mnt - bpf_core_field_offset(struct mount, mnt));
}

/* The ops one grant entry allows now. 0 is not granted, ~0 never expires; the clock is
 * read only for an op with a real expiry, and at most once: a clock read is a helper
 * call, and where the clocksource is emulated (hpet in the 6.1 guests) it costs more
 * than the rest of a walk. */
static __always_inline __u32 rush_grant_ops(const struct rush_file_grant *g)
{
	__u64 now = 0;
	__u32 ops = 0;

#pragma unroll
	for (int i = 0; i < RUSH_FILE_OPS_LEN; i++) {
		__u64 expires = g->expires_ns[i];

		if (!expires)
			continue;
		if (expires != ~0ULL) {
			if (!now)
				now = bpf_ktime_get_boot_ns();
			if (now >= expires)
				continue;
		}
		ops |= 1u << i;
	}
	return ops;
}

/*
 * State of one ancestry walk. Pointers are plain values here (read with BPF_CORE_READ,
 * i.e. bpf_probe_read_kernel), so the verifier sees scalars and nothing can fault.
 */
struct rush_walk {
	__u64 cgroup_id;
	struct dentry *dentry;
	struct mount *mnt;
	__u32 mnt_id; /* of mnt */
	__u32 pad2;
	__u32 want; /* stop as soon as all of these are found */
	__u32 ops;  /* union of what the levels visited so far grant */
	__u32 done; /* the walk finished (top reached or want found) */
	__u32 pad;
};

/*
 * The ops the agent's grant on (dev, ino) allows now. A global function, verified once
 * on its own (its result is just a scalar to the callers): inlined in the fast loop of
 * rush_walk_ops, its branches multiplied the loop's states past the 6.1 verifier's limit.
 */
__noinline __u32 rush_level_ops(__u64 cgroup_id, __u64 ino, __u32 dev, __u32 mnt_id)
{
	struct rush_file_key key = {
		.cgroup_id = cgroup_id,
		.ino = ino,
		.dev = dev,
	};
	struct rush_file_grant *grant = bpf_map_lookup_elem(&rush_file_grants, &key);

	if (!grant || (grant->mnt_id && grant->mnt_id != mnt_id))
		return 0;
	return rush_grant_ops(grant);
}

/*
 * `v`, unknown to the verifier: a global function's result is just a scalar. For the ops
 * a hook computes on many paths, each a different constant: kept known, each would be
 * checked against the rest of the program (the walk included) on its own path.
 */
__noinline __u32 rush_opaque(__u32 v)
{
	/* Else clang sees that the result is the argument and uses the argument. */
	asm volatile("" : "+r"(v));
	return v;
}

/*
 * The device of a btrfs inode as the grants key it: its subvolume's anonymous device
 * (what stat() reports), not the superblock's, which every subvolume and snapshot of
 * the filesystem shares while their inode numbers repeat. btrfs is often a module: the
 * CO-RE relocations then resolve against its BTF; without it (module not loaded when
 * this object was), 0, which no grant has: btrfs files are denied, never aliased.
 */
__noinline __u32 rush_btrfs_dev(__u64 inode_addr)
{
	struct btrfs_inode *bi;

	if (!bpf_core_type_exists(struct btrfs_inode))
		return 0;
	bi = (struct btrfs_inode *)(inode_addr - bpf_core_field_offset(struct btrfs_inode, vfs_inode));
	return BPF_CORE_READ(bi, root, anon_dev);
}

/* The identity grants are keyed by: (dev, ino) of `inode` (read with BPF_CORE_READ). */
static __always_inline __u32 rush_inode_dev(struct inode *inode)
{
	if (BPF_CORE_READ(inode, i_sb, s_magic) == BTRFS_SUPER_MAGIC)
		return rush_btrfs_dev((__u64)inode);
	return BPF_CORE_READ(inode, i_sb, s_dev);
}

/* The mount id of `mnt` (statx's STATX_MNT_ID). */
static __always_inline __u32 rush_mnt_id(struct mount *mnt)
{
	return BPF_CORE_READ(mnt, mnt_id);
}

/* What rush_walk_up did. */
#define RUSH_UP_PARENT 0 /* moved to the parent directory, in the same mount */
#define RUSH_UP_MOUNT 1  /* moved to the mount point, in the parent mount */
#define RUSH_UP_TOP 2    /* nothing above: did not move */

/*
 * One level up from (*dentry, *mnt), read with BPF_CORE_READ: the parent directory; at
 * the root of the mount, the mount point in the parent mount (whose inode the walks look
 * up next, as Landlock does); at the root of the mount tree (or of a detached tree), or
 * at a disconnected root (pseudo files such as pipes are their own parent), nowhere.
 *
 * `fs_tree` (a constant at every call: each caller gets its own copy) is the claims'
 * walk: the root of a mount that is not its filesystem's root (a bind mount of a
 * subdirectory) goes on to that directory's parents in the filesystem, and only the
 * filesystem's root crosses to the mount point, so that the walk meets every directory
 * the object lies below, through whichever mount it was reached. Grants, which hold in
 * one mount, and event paths, which show the path the agent used, walk the mount tree.
 */
static __always_inline int rush_walk_up(struct dentry **dentry, struct mount **mnt, const int fs_tree)
{
	struct dentry *d = *dentry;
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	struct mount *m = *mnt;
	int fs_root = parent == d || !parent;

	if (fs_tree ? fs_root : d == BPF_CORE_READ(m, mnt.mnt_root)) {
		struct mount *up = BPF_CORE_READ(m, mnt_parent);

		if (up == m || !up)
			return RUSH_UP_TOP;
		*dentry = BPF_CORE_READ(m, mnt_mountpoint);
		*mnt = up;
		return RUSH_UP_MOUNT;
	}
	if (fs_root)
		return RUSH_UP_TOP;
	*dentry = parent;
	return RUSH_UP_PARENT;
}

/*
 * One level: look up (dev, ino) of w->dentry, then go up (rush_walk_up, the mount tree);
 * at the top, stop.
 */
static long rush_walk_step(__u32 index, void *data)
{
	struct rush_walk *w = data;
	struct dentry *dentry = w->dentry;
	struct inode *inode;
	int up;

	if (!dentry || !w->mnt)
		return 1; /* unreadable: not done, so the walk denies */
	inode = BPF_CORE_READ(dentry, d_inode);
	if (inode) {
		w->ops |= rush_level_ops(w->cgroup_id, BPF_CORE_READ(inode, i_ino), rush_inode_dev(inode),
					 w->mnt_id);
		if ((w->ops & w->want) == w->want) {
			w->done = 1;
			return 1;
		}
	}
	up = rush_walk_up(&w->dentry, &w->mnt, 0);
	if (up == RUSH_UP_MOUNT) {
		w->mnt_id = rush_mnt_id(w->mnt);
		return 0;
	}
	if (up == RUSH_UP_TOP) {
		/* Not BPF_CORE_READ(w->mnt, ...): that would relocate w's own field too. */
		struct mount *mnt = w->mnt;

		/* A kernel-internal mount (pipefs, sockfs, anon inodes, nsfs, shmem of
		 * memfds) is reachable only through a descriptor the process already has. */
		if (BPF_CORE_READ(mnt, mnt.mnt_flags) & MNT_INTERNAL)
			w->ops |= RUSH_OPS_INTERNAL;
		w->done = 1;
		return 1;
	}
	return 0;
}

/*
 * A pointer as a plain value, a scalar to the verifier (read back from the stack with
 * bpf_probe_read_kernel): what a global function's argument must be. Some callers pass
 * a BTF pointer (a hook argument), which stays typed through casts.
 */
static __always_inline __u64 rush_plain(const void *p)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), &p);
	return v;
}

/*
 * The walk from `dentry` (in mount `mnt`) on, `walked` levels (of RUSH_WALK_MAX) having
 * given `ops`. A global function, verified once on its own: inlined, each exit of the
 * fast loop below (one per level, and one per caller of it) verified the bpf_loop walk
 * again, which was most of the file object's load time (seconds under TCG, at every
 * daemon start). So its pointers are plain values (as BPF_CORE_READ gives them): a
 * global function takes no BTF pointer.
 */
__noinline __u32 rush_walk_rest(__u64 cgroup_id, __u64 dentry, __u64 mnt, __u64 want_ops, __u32 walked)
{
	/* Five arguments at most: `want` and `ops` share one (want << 32 | ops). */
	struct rush_walk w = {
		.cgroup_id = cgroup_id,
		.dentry = (struct dentry *)dentry,
		.mnt = (struct mount *)mnt,
		.want = want_ops >> 32,
		.ops = (__u32)want_ops,
	};

	if (walked >= RUSH_WALK_MAX || !w.mnt)
		return 0; /* fail closed */
	w.mnt_id = rush_mnt_id(w.mnt);
	bpf_loop(RUSH_WALK_MAX - walked, rush_walk_step, &w, 0);
	return w.done ? w.ops : 0;
}

/*
 * The union of the ops the agent is granted, now, on `dentry` (in mount `mnt`) and on
 * every directory above it up to the global root. Stops early once `want` is covered.
 * 0 if the walk could not finish within RUSH_WALK_MAX levels (fail closed).
 *
 * `dentry` must be a BTF pointer (a hook argument or loaded from one with a direct
 * load, not BPF_CORE_READ): the first RUSH_WALK_FAST levels of the mount it is in are
 * walked here with direct (CO-RE relocated, fault-safe BPF_PROBE_MEM) loads, no helper
 * call; only a deeper path or a mount crossing continues in the general bpf_loop walk
 * (rush_walk_step, the same steps read with BPF_CORE_READ), with what is left of the
 * RUSH_WALK_MAX levels. The mount's fields are read with BPF_CORE_READ here too (the
 * vfsmount pointers the callers pass are plain values): mount crossings are rare.
 */
static __noinline __u32 rush_walk_ops(__u64 cgroup_id, struct dentry *dentry,
				      struct vfsmount *vfsmnt, __u32 want)
{
	struct mount *mnt = rush_real_mount(vfsmnt);
	struct dentry *root;
	__u32 ops = 0, mnt_id;
	int i;

	if (!dentry || !mnt)
		return 0; /* unreadable: fail closed */
	root = BPF_CORE_READ(mnt, mnt.mnt_root);
	mnt_id = rush_mnt_id(mnt);
	/* Unrolled: as a loop, 6.1's CFG check refuses the call to the global walk inside it
	 * ("back-edge" from a call's fall-through into the loop). */
#pragma unroll
	for (i = 0; i < RUSH_WALK_FAST; i++) {
		struct inode *inode = dentry->d_inode;
		struct dentry *parent;

		if (inode) {
			struct super_block *sb = inode->i_sb;
			__u32 dev = sb->s_dev;

			/* As a plain value: a global function takes no BTF pointer. */
			if (sb->s_magic == BTRFS_SUPER_MAGIC)
				dev = rush_btrfs_dev((__u64)BPF_CORE_READ(dentry, d_inode));
			ops |= rush_level_ops(cgroup_id, inode->i_ino, dev, mnt_id);
			if ((ops & want) == want)
				return ops;
		}
		if (dentry == root) {
			/* As in rush_walk_step; the rest (rare) in the general walk. */
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

			if (up == mnt || !up) {
				if (BPF_CORE_READ(mnt, mnt.mnt_flags) & MNT_INTERNAL)
					ops |= RUSH_OPS_INTERNAL;
				return ops;
			}
			/* Both read with BPF_CORE_READ: plain values already. */
			return rush_walk_rest(cgroup_id, (__u64)BPF_CORE_READ(mnt, mnt_mountpoint),
					      (__u64)up, (__u64)want << 32 | ops, i + 1);
		}
		parent = dentry->d_parent;
		if (parent == dentry || !parent) {
			/* A disconnected root (pseudo files such as pipes are their own parent). */
			if (BPF_CORE_READ(mnt, mnt.mnt_flags) & MNT_INTERNAL)
				ops |= RUSH_OPS_INTERNAL;
			return ops;
		}
		if (i == RUSH_WALK_FAST - 1)
			return rush_walk_rest(cgroup_id, rush_plain(parent), rush_plain(mnt),
					      (__u64)want << 32 | ops, RUSH_WALK_FAST);
		dentry = parent;
	}
	return 0; /* not reached: the last level returns above */
}

/* State of the walk that assembles an event's path from dentry names. */
struct rush_name_walk {
	struct dentry *dentry;
	struct mount *mnt;
	__s64 pos; /* the path built so far is scratch[pos .. RUSH_FILE_PATH_LEN - 1) */
	__u32 cut; /* a name did not fit: the path is truncated at its root end */
	__u32 pad;
};

static long rush_name_step(__u32 index, void *data)
{
	struct rush_name_walk *w = data;
	struct dentry *dentry = w->dentry;
	struct rush_path_scratch *scratch;
	const unsigned char *name;
	__u32 zero = 0;
	__s64 pos, start;
	__u32 len;
	int up;

	if (!dentry || !w->mnt)
		return 1;
	/* Up first (a mount crossing adds no name); then `dentry`'s name, in front. */
	up = rush_walk_up(&w->dentry, &w->mnt, 0);
	if (up == RUSH_UP_MOUNT)
		return 0;
	if (up != RUSH_UP_PARENT)
		return 1;

	scratch = bpf_map_lookup_elem(&rush_path_scratch, &zero);
	if (!scratch)
		return 1;
	len = BPF_CORE_READ(dentry, d_name.len);
	name = BPF_CORE_READ(dentry, d_name.name);
	pos = w->pos;
	if (pos > RUSH_FILE_PATH_LEN - 1 || pos < 0)
		return 1;
	/* "/name" goes to [start, pos); keep 3 bytes in front for a "…". */
	start = pos - (__s64)len - 1;
	if (len >= RUSH_FILE_PATH_LEN || start < 3) {
		w->cut = 1;
		return 1;
	}
	bpf_probe_read_kernel(&scratch->buf[start + 1], len & (RUSH_FILE_PATH_LEN - 1), name);
	scratch->buf[start] = '/';
	w->pos = start;
	return 0;
}

/*
 * Writes the absolute path of `dentry` (in `mnt`) into `out` (RUSH_FILE_PATH_LEN bytes):
 * the dentry names from leaf to root, mount points crossed; if it is too long, its root
 * end is cut and replaced by "…". Best effort: names can change while they are read.
 */
static __noinline void rush_dentry_path(char *out, struct dentry *dentry, struct vfsmount *mnt)
{
	struct rush_name_walk w = {
		.dentry = dentry,
		.mnt = rush_real_mount(mnt),
		.pos = RUSH_FILE_PATH_LEN - 1,
	};
	struct rush_path_scratch *scratch;
	__u32 zero = 0;
	__s64 pos;

	scratch = bpf_map_lookup_elem(&rush_path_scratch, &zero);
	if (!scratch) {
		out[0] = 0;
		return;
	}
	scratch->buf[RUSH_FILE_PATH_LEN - 1] = 0;
	bpf_loop(RUSH_WALK_MAX, rush_name_step, &w, 0);
	pos = w.pos;
	if (pos > RUSH_FILE_PATH_LEN - 1 || pos < 3) {
		out[0] = 0;
		return;
	}
	if (pos == RUSH_FILE_PATH_LEN - 1) {
		/* The root itself (or nothing readable). */
		pos--;
		scratch->buf[pos] = '/';
	}
	if (w.cut) {
		pos -= 3;
		scratch->buf[pos] = 0xe2; /* U+2026 "…" in UTF-8 */
		scratch->buf[pos + 1] = 0x80;
		scratch->buf[pos + 2] = 0xa6;
	}
	bpf_probe_read_kernel_str(out, RUSH_FILE_PATH_LEN, &scratch->buf[pos & (RUSH_FILE_PATH_LEN - 1)]);
}

/* A deny event with everything but the path; NULL if the ring buffer is full (counted). */
static __always_inline struct rush_file_event *rush_file_event_start(__u32 hook, __u64 cgroup_id,
								     __u32 op, struct dentry *object)
{
	struct rush_file_event *e;
	struct inode *inode;

	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return NULL;
	}
	inode = BPF_CORE_READ(object, d_inode);
	rush_event_hdr_current(&e->hdr, RUSH_EVENT_FILE_DENY, hook, cgroup_id);
	e->op = op;
	e->dev = inode ? rush_inode_dev(inode) : 0;
	e->ino = inode ? BPF_CORE_READ(inode, i_ino) : 0;
	return e;
}

/* The lowest op bit of `ops` (the one an event reports). */
static __always_inline __u32 rush_first_op(__u32 ops)
{
	return ops & -ops;
}

/*
 * Denies `op` with an event whose path is assembled from dentry names: `named` (in
 * `mnt`) is what the agent tried to reach, `object` the inode whose grants were missing
 * (for a create, the parent directory of the new name).
 */
static __always_inline int rush_deny(__u32 hook, __u64 cgroup_id, __u32 op, struct dentry *object,
				     struct dentry *named, struct vfsmount *mnt)
{
	struct rush_file_event *e = rush_file_event_start(hook, cgroup_id, op, object);

	if (e) {
		rush_dentry_path(e->path, named, mnt);
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/* The agent's grant key for `dentry`'s inode, in `key`; 0 for a negative dentry. */
static __always_inline int rush_dentry_key(__u64 cgroup_id, struct dentry *dentry, struct rush_file_key *key)
{
	struct inode *inode = BPF_CORE_READ(dentry, d_inode);

	if (!inode)
		return 0;
	key->cgroup_id = cgroup_id;
	key->ino = BPF_CORE_READ(inode, i_ino);
	key->dev = rush_inode_dev(inode);
	key->pad = 0;
	return 1;
}

/* The agent's own entry for `dentry`'s inode (no walk), its key in `key`. */
static __always_inline struct rush_file_grant *rush_own_grant(__u64 cgroup_id, struct dentry *dentry,
							       struct rush_file_key *key)
{
	if (!rush_dentry_key(cgroup_id, dentry, key))
		return NULL;
	return bpf_map_lookup_elem(&rush_file_grants, key);
}

/* The ops the agent's own entry for `dentry` (in `vfsmnt`) allows now: this inode's
 * grant alone, none of its directories'. */
static __always_inline __u32 rush_own_ops(__u64 cgroup_id, struct dentry *dentry,
					  struct vfsmount *vfsmnt)
{
	struct rush_file_key key;
	struct rush_file_grant *grant = rush_own_grant(cgroup_id, dentry, &key);
	struct mount *mnt = rush_real_mount(vfsmnt);

	if (!grant || !mnt || (grant->mnt_id && grant->mnt_id != rush_mnt_id(mnt)))
		return 0;
	return rush_grant_ops(grant);
}

/*
 * The ops of `need` that `dentry` must hold from its own grant entry under the agent's
 * hard-link mode (`flags`): a regular file with more than one link may be reached
 * through a name in a granted directory while its other name is outside every grant,
 * so a directory's grant does not carry those ops to it. 0 when the walk decides.
 */
static __always_inline __u32 rush_linked_ops(__u32 flags, struct dentry *dentry, __u32 need)
{
	struct inode *inode;
	__u32 mask = 0;

	if (flags & RUSH_AGENT_HARDLINKS_REFUSE)
		mask = RUSH_OPS_RWX;
	else if (flags & RUSH_AGENT_HARDLINKS_REFUSE_WRITE)
		mask = RUSH_FILE_OP_WRITE;
	mask &= need;
	if (!mask)
		return 0;
	inode = BPF_CORE_READ(dentry, d_inode);
	if (!inode || (BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFREG ||
	    BPF_CORE_READ(inode, i_nlink) <= 1)
		return 0;
	return mask;
}

/* Of `need`, granted by the walk, what the hard-link mode still finds missing. */
static __always_inline __u32 rush_linked_missing(__u64 cgroup_id, __u32 flags, __u32 need,
						 struct dentry *dentry, struct vfsmount *mnt)
{
	__u32 linked = rush_linked_ops(flags, dentry, need);

	if (!linked)
		return 0;
	return linked & ~rush_own_ops(cgroup_id, dentry, mnt);
}

/* Allows when the agent holds every op of `need` on (dentry, mnt) (and, for a file with
 * several links under a hard-link mode, from its own entry), else denies. The decision is
 * cached on the inode (rush_cached_at); `dentry` must be a BTF pointer. */
static __always_inline int rush_require(__u32 hook, __u64 cgroup_id, __u32 flags, __u32 need,
					struct dentry *dentry, struct vfsmount *mnt,
					struct dentry *named)
{
	struct inode *inode = dentry->d_inode;
	struct rush_gens g;
	__u32 missing;

	if ((rush_cached_at(inode, dentry, (__u64)mnt, cgroup_id, flags, &g) & need) == need)
		return 0;
	missing = need & ~rush_walk_ops(cgroup_id, dentry, mnt, need);
	if (!missing)
		missing = rush_linked_missing(cgroup_id, flags, need, dentry, mnt);
	if (!missing) {
		rush_cache_at(inode, dentry, (__u64)mnt, cgroup_id, flags, need, &g);
		return 0;
	}
	return rush_deny(hook, cgroup_id, rush_first_op(missing), dentry, named, mnt);
}

/* State of a claim walk (rush_claim_find). */
struct rush_claim_walk {
	__u64 cgroup_id;
	struct dentry *dentry;
	struct mount *mnt;
	struct rush_claim_deny deny; /* the entry found */
	__u32 done;  /* the walk finished (top reached or an entry found) */
	__u32 found; /* an entry was found */
};

/* One level: look up the agent's claim deny for (dev, ino) of w->dentry, then go up
 * (rush_walk_up, the filesystem's tree); at the top, stop. */
static long rush_claim_step(__u32 index, void *data)
{
	struct rush_claim_walk *w = data;
	struct dentry *dentry = w->dentry;
	struct inode *inode;

	if (!dentry || !w->mnt)
		return 1; /* unreadable: not done, so the check denies */
	inode = BPF_CORE_READ(dentry, d_inode);
	if (inode) {
		struct rush_file_key key = {
			.cgroup_id = w->cgroup_id,
			.ino = BPF_CORE_READ(inode, i_ino),
			.dev = rush_inode_dev(inode),
		};
		struct rush_claim_deny *deny = bpf_map_lookup_elem(&rush_claim_denies, &key);

		if (deny) {
			w->deny.claim_id = deny->claim_id;
			w->deny.holder_cgroup = deny->holder_cgroup;
			w->found = 1;
			w->done = 1;
			return 1;
		}
	}
	if (rush_walk_up(&w->dentry, &w->mnt, 1) == RUSH_UP_TOP) {
		w->done = 1;
		return 1;
	}
	return 0;
}

/*
 * Whether a claim of another agent denies agent `cgroup_id` writing at `dentry` (in
 * `vfsmnt`): an entry of rush_claim_denies for the object or for any directory above
 * it, in its filesystem or across mounts. 1 if so, the entry in `hit`; 1 too, with
 * claim id 0, if the walk could not finish (fail closed); else 0.
 */
static __noinline int rush_claim_find(__u64 cgroup_id, struct dentry *dentry, struct vfsmount *vfsmnt,
				      struct rush_claim_deny *hit)
{
	struct rush_claim_walk w = {
		.cgroup_id = cgroup_id,
		.dentry = dentry,
		.mnt = rush_real_mount(vfsmnt),
	};

	bpf_loop(RUSH_WALK_MAX, rush_claim_step, &w, 0);
	if (w.done && !w.found)
		return 0;
	hit->claim_id = w.found ? w.deny.claim_id : 0;
	hit->holder_cgroup = w.found ? w.deny.holder_cgroup : 0;
	return 1;
}

/* A claim deny event with everything but the path; NULL if the ring buffer is full
 * (counted). */
static __always_inline struct rush_claim_event *rush_claim_event_start(__u32 hook, __u64 cgroup_id,
								       __u32 op, struct dentry *object,
								       const struct rush_claim_deny *hit)
{
	struct rush_claim_event *e;
	struct inode *inode;

	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return NULL;
	}
	inode = BPF_CORE_READ(object, d_inode);
	rush_event_hdr_current(&e->hdr, RUSH_EVENT_CLAIM_DENY, hook, cgroup_id);
	e->op = op;
	e->dev = inode ? rush_inode_dev(inode) : 0;
	e->ino = inode ? BPF_CORE_READ(inode, i_ino) : 0;
	e->claim_id = hit->claim_id;
	e->holder_cgroup = hit->holder_cgroup;
	return e;
}

/*
 * The claim check of a write-like hook, before any grant: for an agent with
 * RUSH_AGENT_CLAIM_DENIED (in `flags`), -EPERM with an event if a claim covers `object`
 * (`op` is what the hook asked of it; the event's path names `named`, in `mnt`); else 0.
 */
static __always_inline int rush_claim_check(__u32 hook, __u64 cgroup_id, __u32 flags, __u32 op,
					    struct dentry *object, struct dentry *named,
					    struct vfsmount *mnt)
{
	struct rush_claim_deny hit = {};
	struct rush_claim_event *e;

	if (!(flags & RUSH_AGENT_CLAIM_DENIED) || !rush_claim_find(cgroup_id, object, mnt, &hit))
		return 0;
	e = rush_claim_event_start(hook, cgroup_id, op, object, &hit);
	if (e) {
		rush_dentry_path(e->path, named, mnt);
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/*
 * Create on the directory `dir`; the event names the new entry. A regular file may also
 * be created in a directory whose own entry has RUSH_FILE_OP_SAVE (beside a file the agent
 * may write): remembered here, granted to the agent by the open that follows.
 */
static __always_inline int rush_check_create(__u32 hook, const struct path *dir,
					     struct dentry *dentry, umode_t mode)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_file_agent(&flags);
	struct dentry *parent = dir->dentry;
	struct vfsmount *mnt;
	__u32 type = mode & S_IFMT;
	struct inode *inode;
	struct rush_gens g;
	int denied;

	if (!cgroup_id)
		return 0;
	mnt = BPF_CORE_READ(dir, mnt);
	denied = rush_claim_check(hook, cgroup_id, flags, RUSH_FILE_OP_CREATE, parent, dentry, mnt);
	if (denied || !(flags & RUSH_AGENT_FILES_CONFINED))
		return denied;
	/* Cached on the directory: a tar or a build creates many files in one. */
	inode = parent->d_inode;
	if (rush_cached_at(inode, parent, (__u64)mnt, cgroup_id, flags, &g) & RUSH_FILE_OP_CREATE)
		return 0;
	if (rush_walk_ops(cgroup_id, parent, mnt, RUSH_FILE_OP_CREATE) & RUSH_FILE_OP_CREATE) {
		rush_cache_at(inode, parent, (__u64)mnt, cgroup_id, flags, RUSH_FILE_OP_CREATE, &g);
		return 0;
	}
	if (hook == RUSH_FHOOK_PATH_MKNOD && (type == 0 || type == S_IFREG) &&
	    (rush_own_ops(cgroup_id, parent, mnt) & RUSH_FILE_OP_SAVE)) {
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		__u64 created = (__u64)dentry;

		bpf_map_update_elem(&rush_save_pending, &pid_tgid, &created, BPF_ANY);
		return 0;
	}
	return rush_deny(hook, cgroup_id, RUSH_FILE_OP_CREATE, parent, dentry, mnt);
}

/*
 * The open that follows a create allowed by RUSH_FILE_OP_SAVE: grants the new file to the
 * agent (read, write, delete, until the save right lapses). 1 if it did.
 */
static __noinline int rush_claim_saved(__u64 cgroup_id, struct dentry *dentry, struct vfsmount *vfsmnt)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 *pending = bpf_map_lookup_elem(&rush_save_pending, &pid_tgid);
	struct rush_file_grant *dir_grant, grant = {};
	struct rush_file_key dir_key, key;
	struct mount *mnt = rush_real_mount(vfsmnt);
	__u64 until;

	if (!pending || *pending != (__u64)dentry || !mnt)
		return 0;
	bpf_map_delete_elem(&rush_save_pending, &pid_tgid);
	dir_grant = rush_own_grant(cgroup_id, BPF_CORE_READ(dentry, d_parent), &dir_key);
	if (!dir_grant)
		return 0;
	until = dir_grant->expires_ns[RUSH_SAVE_SLOT];
	if (!until || bpf_ktime_get_boot_ns() >= until)
		return 0;
	if (!rush_dentry_key(cgroup_id, dentry, &key))
		return 0;
	grant.expires_ns[0] = until; /* read */
	grant.expires_ns[1] = until; /* write */
	grant.expires_ns[4] = until; /* delete */
	grant.mnt_id = rush_mnt_id(mnt);
	return bpf_map_update_elem(&rush_file_grants, &key, &grant, BPF_NOEXIST) == 0;
}

/*
 * An editor-style save renamed `from` (a file the agent made beside the granted one) over
 * `to`: the grant of `to` moves to `from`'s inode (the name keeps its access; the old
 * inode, now unlinked or elsewhere, loses it) and the daemon is told. Done in the hook,
 * before the rename itself: if the rename then fails, the agent has lost access to the
 * old file (fail closed) and holds the granted ops on its own new file.
 */
static __noinline void rush_move_grant(__u64 cgroup_id, struct dentry *from, struct dentry *to)
{
	struct rush_file_key from_key, to_key;
	struct rush_file_grant *to_grant = rush_own_grant(cgroup_id, to, &to_key);
	struct rush_grant_moved_event *e;
	struct rush_file_grant moved;

	if (!to_grant)
		return;
	moved = *to_grant;
	if (!rush_dentry_key(cgroup_id, from, &from_key))
		return;
	bpf_map_update_elem(&rush_file_grants, &from_key, &moved, BPF_ANY);
	bpf_map_delete_elem(&rush_file_grants, &to_key);
	rush_policy_bump_kernel();
	e = bpf_ringbuf_reserve(&rush_events, sizeof(*e), 0);
	if (!e) {
		rush_count_lost_event();
		return;
	}
	rush_event_hdr_init(&e->hdr, RUSH_EVENT_GRANT_MOVED, 0, cgroup_id);
	e->from_ino = to_key.ino;
	e->from_dev = to_key.dev;
	e->to_ino = from_key.ino;
	e->to_dev = from_key.dev;
	bpf_ringbuf_submit(e, 0);
}

/* Delete of `dentry`, an entry of the directory `dir`. */
static __always_inline int rush_check_delete(__u32 hook, const struct path *dir,
					     struct dentry *dentry)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_file_agent(&flags);
	struct vfsmount *mnt;
	int denied;

	if (!cgroup_id)
		return 0;
	mnt = BPF_CORE_READ(dir, mnt);
	denied = rush_claim_check(hook, cgroup_id, flags, RUSH_FILE_OP_DELETE, dentry, dentry, mnt);
	if (denied || !(flags & RUSH_AGENT_FILES_CONFINED))
		return denied;
	/* Not rush_require: no hard-link rule for removing a name, and nothing to cache on
	 * an inode that is going (its entry is left for its other names). */
	if (rush_walk_ops(cgroup_id, dentry, mnt, RUSH_FILE_OP_DELETE) & RUSH_FILE_OP_DELETE)
		return 0;
	return rush_deny(hook, cgroup_id, RUSH_FILE_OP_DELETE, dentry, dentry, mnt);
}

/* Write on the object at `path` (truncate, chmod, chown). */
static __always_inline int rush_check_path_write(__u32 hook, const struct path *path)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_file_agent(&flags);
	struct vfsmount *mnt;
	struct dentry *dentry;
	int denied;

	if (!cgroup_id)
		return 0;
	dentry = path->dentry;
	mnt = BPF_CORE_READ(path, mnt);
	denied = rush_claim_check(hook, cgroup_id, flags, RUSH_FILE_OP_WRITE, dentry, dentry, mnt);
	if (denied || !(flags & RUSH_AGENT_FILES_CONFINED))
		return denied;
	return rush_require(hook, cgroup_id, flags, RUSH_FILE_OP_WRITE, dentry, mnt, dentry);
}

/*
 * Moving or linking `object` (with `object_ops` granted where it is now) into the
 * directory `dir` (in `mnt`; the new name `named`): create on `dir`, and what `dir`
 * grants of read, write and exec must already be granted on the object.
 */
static __always_inline int rush_check_move_in(__u32 hook, __u64 cgroup_id, __u32 object_ops,
					      struct dentry *object, struct dentry *dir,
					      struct vfsmount *mnt, struct dentry *named)
{
	__u32 dir_ops = rush_walk_ops(cgroup_id, dir, mnt, RUSH_OPS_ALL);
	__u32 wider;

	if (!(dir_ops & RUSH_FILE_OP_CREATE))
		return rush_deny(hook, cgroup_id, RUSH_FILE_OP_CREATE, dir, named, mnt);
	wider = dir_ops & RUSH_OPS_RWX & ~object_ops;
	if (wider)
		return rush_deny(hook, cgroup_id, rush_first_op(wider), object, named, mnt);
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(rush_file_open, struct file *file)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_file_agent(&flags);
	struct rush_file_event *e;
	struct vfsmount *mnt;
	struct dentry *dentry;
	struct inode *inode;
	struct rush_gens g;
	__u32 fmode, fflags, need = 0, missing;

	if (!cgroup_id)
		return 0;
	fmode = file->f_mode;
	fflags = file->f_flags;
	if (fflags & __FMODE_EXEC)
		need |= RUSH_FILE_OP_EXEC;
	else if (fmode & FMODE_READ)
		need |= RUSH_FILE_OP_READ;
	if ((fmode & FMODE_WRITE) || (fflags & O_TRUNC))
		need |= RUSH_FILE_OP_WRITE;
	if (!need)
		need = RUSH_FILE_OP_READ;
	/* O_TMPFILE makes a file in the directory: its open (the tmpfile's dentry, whose
	 * parent is that directory; __O_TMPFILE stays in f_flags on 6.1 and 6.12) needs
	 * create there, which only the directories above the new inode can grant. */
	if (fflags & __O_TMPFILE)
		need |= RUSH_FILE_OP_CREATE;
	need = rush_opaque(need);

	dentry = file->f_path.dentry;
	mnt = BPF_CORE_READ(file, f_path.mnt);
	if ((flags & RUSH_AGENT_CLAIM_DENIED) && (need & (RUSH_FILE_OP_WRITE | RUSH_FILE_OP_CREATE))) {
		struct rush_claim_deny hit = {};
		struct rush_claim_event *c;

		if (rush_claim_find(cgroup_id, dentry, mnt, &hit)) {
			c = rush_claim_event_start(RUSH_FHOOK_FILE_OPEN, cgroup_id,
						   (need & RUSH_FILE_OP_WRITE) ? RUSH_FILE_OP_WRITE
									: RUSH_FILE_OP_CREATE,
						   dentry, &hit);
			if (c) {
				/* As for the grants' deny below. */
				if (bpf_d_path((struct path *)&file->f_path, c->path, sizeof(c->path)) < 0)
					rush_dentry_path(c->path, dentry, mnt);
				bpf_ringbuf_submit(c, 0);
			}
			return -EPERM;
		}
	}
	if (!(flags & RUSH_AGENT_FILES_CONFINED))
		return 0;
	/* An open of an inode decided before, through the same path, needs no walk; what
	 * this one decides is what file_permission then finds. Only read, write and exec are
	 * kept: O_TMPFILE's create is the directory's, not the new inode's. */
	inode = dentry->d_inode;
	if ((rush_cached_at(inode, dentry, (__u64)mnt, cgroup_id, flags, &g) & need) == need)
		return 0;
	missing = need & ~rush_walk_ops(cgroup_id, dentry, mnt, need);
	if (!missing) {
		missing = rush_linked_missing(cgroup_id, flags, need, dentry, mnt);
		if (!missing) {
			rush_cache_at(inode, dentry, (__u64)mnt, cgroup_id, flags, need & RUSH_OPS_RWX, &g);
			return 0;
		}
	} else if (!(missing & ~(RUSH_FILE_OP_READ | RUSH_FILE_OP_WRITE)) &&
		   rush_claim_saved(cgroup_id, dentry, mnt)) {
		rush_cache_at(inode, dentry, (__u64)mnt, cgroup_id, flags, need & RUSH_OPS_RWX, &g);
		return 0;
	}
	e = rush_file_event_start(RUSH_FHOOK_FILE_OPEN, cgroup_id, rush_first_op(missing), dentry);
	if (e) {
		/* bpf_d_path is allowed in file_open (not in file_permission nor the path_*
		 * hooks, on 6.1 and 6.12: the verifier refuses the helper there). */
		if (bpf_d_path((struct path *)&file->f_path, e->path, sizeof(e->path)) < 0)
			rush_dentry_path(e->path, dentry, mnt);
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/* Every read/write of an open file: what makes revoking (or expiry) reach open fds. */
SEC("lsm/file_permission")
int BPF_PROG(rush_file_permission, struct file *file, int mask)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_file_agent(&flags);
	__u32 need = 0, type;
	struct vfsmount *mnt;
	struct dentry *dentry;
	int denied;

	if (!cgroup_id)
		return 0;
	/* Direct (CO-RE, fault-safe) loads, not helper calls: this runs on every read. */
	type = file->f_inode->i_mode & S_IFMT;
	if (type != S_IFREG && type != S_IFDIR)
		return 0;
	if (mask & MAY_READ)
		need |= (file->f_flags & __FMODE_EXEC) ? RUSH_FILE_OP_EXEC : RUSH_FILE_OP_READ;
	if (mask & (MAY_WRITE | MAY_APPEND))
		need |= RUSH_FILE_OP_WRITE;
	need = rush_opaque(need);
	if (!need)
		return 0;
	dentry = file->f_path.dentry;
	/* Writes to descriptors opened before the claim stop here. */
	if ((need & RUSH_FILE_OP_WRITE) && (flags & RUSH_AGENT_CLAIM_DENIED)) {
		mnt = BPF_CORE_READ(file, f_path.mnt);
		denied = rush_claim_check(RUSH_FHOOK_FILE_PERMISSION, cgroup_id, flags, RUSH_FILE_OP_WRITE,
					  dentry, dentry, mnt);
		if (denied)
			return denied;
	}
	if (!(flags & RUSH_AGENT_FILES_CONFINED))
		return 0;
	/* Mostly a hit of what file_open decided (rush_require's cache). */
	mnt = BPF_CORE_READ(file, f_path.mnt);
	return rush_require(RUSH_FHOOK_FILE_PERMISSION, cgroup_id, flags, need, dentry, mnt, dentry);
}

SEC("lsm/path_mknod")
int BPF_PROG(rush_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev)
{
	return rush_check_create(RUSH_FHOOK_PATH_MKNOD, dir, dentry, mode);
}

SEC("lsm/path_mkdir")
int BPF_PROG(rush_path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode)
{
	return rush_check_create(RUSH_FHOOK_PATH_MKDIR, dir, dentry, S_IFDIR);
}

SEC("lsm/path_symlink")
int BPF_PROG(rush_path_symlink, const struct path *dir, struct dentry *dentry,
	     const char *old_name)
{
	return rush_check_create(RUSH_FHOOK_PATH_SYMLINK, dir, dentry, S_IFLNK);
}

SEC("lsm/path_unlink")
int BPF_PROG(rush_path_unlink, const struct path *dir, struct dentry *dentry)
{
	/* By any task: one of several names going changes which paths reach the inode, and
	 * its dentry may come back as another name's: decisions cached for it go stale. */
	if (BPF_CORE_READ(dentry, d_inode, i_nlink) > 1)
		rush_policy_bump_kernel();
	return rush_check_delete(RUSH_FHOOK_PATH_UNLINK, dir, dentry);
}

SEC("lsm/path_rmdir")
int BPF_PROG(rush_path_rmdir, const struct path *dir, struct dentry *dentry)
{
	return rush_check_delete(RUSH_FHOOK_PATH_RMDIR, dir, dentry);
}

SEC("lsm/path_rename")
int BPF_PROG(rush_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)
{
	__u32 agent_flags = 0;
	__u64 cgroup_id;
	struct vfsmount *old_mnt, *new_mnt;
	__u32 src_ops, dst_ops = 0, wider;
	int denied;

	/* Before the rename, whoever does it (see the top comment). */
	rush_policy_bump_kernel();
	cgroup_id = rush_file_agent(&agent_flags);
	if (!cgroup_id)
		return 0;
	old_mnt = BPF_CORE_READ(old_dir, mnt);
	new_mnt = BPF_CORE_READ(new_dir, mnt);
	/* Claims: moving out (the source), and in: a target that is replaced (or, with
	 * RENAME_EXCHANGE, moved out), else the new parent directory. */
	denied = rush_claim_check(RUSH_FHOOK_PATH_RENAME, cgroup_id, agent_flags, RUSH_FILE_OP_DELETE,
				  old_dentry, old_dentry, old_mnt);
	if (!denied && (agent_flags & RUSH_AGENT_CLAIM_DENIED)) {
		if (BPF_CORE_READ(new_dentry, d_inode))
			denied = rush_claim_check(RUSH_FHOOK_PATH_RENAME, cgroup_id, agent_flags,
						  RUSH_FILE_OP_DELETE, new_dentry, new_dentry, new_mnt);
		else
			denied = rush_claim_check(RUSH_FHOOK_PATH_RENAME, cgroup_id, agent_flags,
						  RUSH_FILE_OP_CREATE, new_dir->dentry, new_dentry, new_mnt);
	}
	if (denied || !(agent_flags & RUSH_AGENT_FILES_CONFINED))
		return denied;
	src_ops = rush_walk_ops(cgroup_id, old_dentry, old_mnt, RUSH_OPS_ALL);
	if (!(src_ops & RUSH_FILE_OP_DELETE))
		return rush_deny(RUSH_FHOOK_PATH_RENAME, cgroup_id, RUSH_FILE_OP_DELETE, old_dentry,
				 old_dentry, old_mnt);
	/* A target that exists is replaced (deleted) or, with RENAME_EXCHANGE, moved. */
	if (BPF_CORE_READ(new_dentry, d_inode)) {
		dst_ops = rush_walk_ops(cgroup_id, new_dentry, new_mnt, RUSH_OPS_ALL);
		if (!(dst_ops & RUSH_FILE_OP_DELETE)) {
			/* An editor-style save: a regular file renamed, in one directory with
			 * RUSH_FILE_OP_SAVE, over a file the agent's own entry lets it write. */
			if ((flags & RENAME_EXCHANGE) || old_dir->dentry != new_dir->dentry ||
			    (BPF_CORE_READ(old_dentry, d_inode, i_mode) & S_IFMT) != S_IFREG ||
			    !(rush_own_ops(cgroup_id, new_dir->dentry, new_mnt) & RUSH_FILE_OP_SAVE) ||
			    !(rush_own_ops(cgroup_id, new_dentry, new_mnt) & RUSH_FILE_OP_WRITE))
				return rush_deny(RUSH_FHOOK_PATH_RENAME, cgroup_id, RUSH_FILE_OP_DELETE,
						 new_dentry, new_dentry, new_mnt);
			/* Same directory: nothing is widened unless the directory itself grants
			 * more than the new file holds. */
			wider = rush_walk_ops(cgroup_id, new_dir->dentry, new_mnt, RUSH_OPS_ALL) &
				RUSH_OPS_RWX & ~src_ops;
			if (wider)
				return rush_deny(RUSH_FHOOK_PATH_RENAME, cgroup_id, rush_first_op(wider),
						 old_dentry, new_dentry, new_mnt);
			rush_move_grant(cgroup_id, old_dentry, new_dentry);
			return 0;
		}
	}
	denied = rush_check_move_in(RUSH_FHOOK_PATH_RENAME, cgroup_id, src_ops, old_dentry,
				    new_dir->dentry, new_mnt, new_dentry);
	if (denied || !(flags & RENAME_EXCHANGE))
		return denied;
	return rush_check_move_in(RUSH_FHOOK_PATH_RENAME, cgroup_id, dst_ops, new_dentry,
				  old_dir->dentry, old_mnt, old_dentry);
}

SEC("lsm/path_link")
int BPF_PROG(rush_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry)
{
	__u32 flags = 0;
	__u64 cgroup_id;
	struct vfsmount *mnt;
	__u32 src_ops;
	int denied;

	/* Whoever links: a second link brings the hard-link rule to open files. */
	rush_policy_bump_kernel();
	cgroup_id = rush_file_agent(&flags);
	if (!cgroup_id)
		return 0;
	/* A hard link stays in its mount: new_dir's mount is old_dentry's. */
	mnt = BPF_CORE_READ(new_dir, mnt);
	/* Claims: a name in a claimed directory, and a new name for a claimed file (through
	 * which it could be written outside the claim). */
	denied = rush_claim_check(RUSH_FHOOK_PATH_LINK, cgroup_id, flags, RUSH_FILE_OP_CREATE,
				  new_dir->dentry, new_dentry, mnt);
	if (!denied)
		denied = rush_claim_check(RUSH_FHOOK_PATH_LINK, cgroup_id, flags, RUSH_FILE_OP_WRITE,
					  old_dentry, old_dentry, mnt);
	if (denied || !(flags & RUSH_AGENT_FILES_CONFINED))
		return denied;
	src_ops = rush_walk_ops(cgroup_id, old_dentry, mnt, RUSH_OPS_ALL);
	return rush_check_move_in(RUSH_FHOOK_PATH_LINK, cgroup_id, src_ops, old_dentry,
				  new_dir->dentry, mnt, new_dentry);
}

SEC("lsm/path_truncate")
int BPF_PROG(rush_path_truncate, const struct path *path)
{
	return rush_check_path_write(RUSH_FHOOK_PATH_TRUNCATE, path);
}

SEC("lsm/path_chmod")
int BPF_PROG(rush_path_chmod, const struct path *path, umode_t mode)
{
	return rush_check_path_write(RUSH_FHOOK_PATH_CHMOD, path);
}

/* kuid_t and kgid_t are structs, which BPF_PROG cannot unpack: only the path is taken. */
SEC("lsm/path_chown")
int BPF_PROG(rush_path_chown, const struct path *path)
{
	return rush_check_path_write(RUSH_FHOOK_PATH_CHOWN, path);
}

/*
 * What mapping `file` with `prot` asks of the agent, as read()/write() would
 * (file_permission): exec for PROT_EXEC (any file type: otherwise ld.so PROGRAM or any
 * mmap(PROT_EXEC) would run ungranted code); for a regular file, read for any
 * readable or writable mapping (a private writable mapping reads the file, never
 * writes it; a file opened for exec, as the ELF loader maps it, needs exec instead) and
 * write for a shared writable one. Pages of a mapping are never checked again (no hook
 * on page faults): a revoke kills the processes that map what they lost.
 */
static __always_inline __u32 rush_map_need(struct file *file, __u32 read, __u32 write,
					   __u32 exec)
{
	__u32 need = exec ? RUSH_FILE_OP_EXEC : 0;

	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFREG)
		return need;
	if (read)
		need |= (BPF_CORE_READ(file, f_flags) & __FMODE_EXEC) ? RUSH_FILE_OP_EXEC
								      : RUSH_FILE_OP_READ;
	if (write)
		need |= RUSH_FILE_OP_WRITE;
	return need;
}

SEC("lsm/mmap_file")
int BPF_PROG(rush_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long mflags)
{
	__u32 flags = 0, need, map_type = mflags & MAP_TYPE;
	struct vfsmount *mnt;
	struct dentry *dentry;
	__u64 cgroup_id;
	int denied;

	/* Anonymous mappings (file NULL, MAP_SHARED|MAP_ANONYMOUS included) and PROT_NONE
	 * reach no file: no lookup at all. */
	if (!file || !(prot & (PROT_READ | PROT_WRITE | PROT_EXEC)))
		return 0;
	cgroup_id = rush_file_agent(&flags);
	if (!cgroup_id)
		return 0;
	need = rush_opaque(rush_map_need(file, prot & (PROT_READ | PROT_WRITE),
			     (prot & PROT_WRITE) &&
				     (map_type == MAP_SHARED || map_type == MAP_SHARED_VALIDATE),
			     prot & PROT_EXEC));
	if (!need)
		return 0;
	dentry = file->f_path.dentry;
	mnt = BPF_CORE_READ(file, f_path.mnt);
	/* A shared writable mapping writes the file (claims: write, as file_permission). */
	if (need & RUSH_FILE_OP_WRITE) {
		denied = rush_claim_check(RUSH_FHOOK_MMAP_FILE, cgroup_id, flags, RUSH_FILE_OP_WRITE, dentry,
					  dentry, mnt);
		if (denied)
			return denied;
	}
	if (!(flags & RUSH_AGENT_FILES_CONFINED))
		return 0;
	return rush_require(RUSH_FHOOK_MMAP_FILE, cgroup_id, flags, need, dentry, mnt, dentry);
}

/* What a mapping gains: exec on a vma without VM_EXEC, read on one with neither VM_READ
 * nor VM_WRITE (mapped PROT_NONE), write on a shared one without VM_WRITE. */
SEC("lsm/file_mprotect")
int BPF_PROG(rush_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot)
{
	__u32 flags = 0, need;
	__u64 cgroup_id, vm_flags;
	struct vfsmount *mnt;
	struct dentry *dentry;
	struct file *file;
	int denied;

	if (!(prot & (PROT_READ | PROT_WRITE | PROT_EXEC)))
		return 0;
	file = vma->vm_file;
	if (!file)
		return 0; /* anonymous memory: no lookup */
	cgroup_id = rush_file_agent(&flags);
	if (!cgroup_id)
		return 0;
	vm_flags = BPF_CORE_READ(vma, vm_flags);
	need = rush_opaque(rush_map_need(file,
			     (prot & (PROT_READ | PROT_WRITE)) && !(vm_flags & (VM_READ | VM_WRITE)),
			     (prot & PROT_WRITE) && (vm_flags & VM_SHARED) && !(vm_flags & VM_WRITE),
			     (prot & PROT_EXEC) && !(vm_flags & VM_EXEC)));
	if (!need)
		return 0;
	dentry = file->f_path.dentry;
	mnt = BPF_CORE_READ(file, f_path.mnt);
	/* A shared mapping gaining write (claims: as mmap_file). */
	if (need & RUSH_FILE_OP_WRITE) {
		denied = rush_claim_check(RUSH_FHOOK_FILE_MPROTECT, cgroup_id, flags, RUSH_FILE_OP_WRITE,
					  dentry, dentry, mnt);
		if (denied)
			return denied;
	}
	if (!(flags & RUSH_AGENT_FILES_CONFINED))
		return 0;
	return rush_require(RUSH_FHOOK_FILE_MPROTECT, cgroup_id, flags, need, dentry, mnt, dentry);
}

/*
 * inotify_add_watch, fanotify_mark, fcntl(F_NOTIFY): a mark reports what others do to
 * the object, so it needs read on it. Mount and filesystem marks (fanotify, which also
 * needs CAP_SYS_ADMIN, refused by the guard) would report on objects beyond any grant:
 * refused outright. Same signature in 6.1 and 6.12.
 */
SEC("lsm/path_notify")
int BPF_PROG(rush_path_notify, const struct path *path, __u64 mask, unsigned int obj_type)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_confined_agent_flags(&flags);
	struct vfsmount *mnt;
	struct dentry *dentry;

	if (!cgroup_id)
		return 0;
	dentry = path->dentry;
	mnt = BPF_CORE_READ(path, mnt);
	if (obj_type != bpf_core_enum_value(enum fsnotify_obj_type, FSNOTIFY_OBJ_TYPE_INODE))
		return rush_deny(RUSH_FHOOK_PATH_NOTIFY, cgroup_id, RUSH_FILE_OP_READ, dentry, dentry,
				 mnt);
	return rush_require(RUSH_FHOOK_PATH_NOTIFY, cgroup_id, flags, RUSH_FILE_OP_READ, dentry,
			    mnt, dentry);
}

/*
 * Pathname Unix sockets are files: connecting to one (stream) or sending to one (datagram)
 * writes to the process that listens there, which DAC too checks as write on the socket
 * file. A file-confined agent needs write on the listener's socket file, as on any file:
 * without it, a root agent could ask a privileged service outside (systemd, D-Bus, Docker)
 * to run what it may not. Abstract and unnamed sockets have no file (`path.dentry` NULL):
 * not covered here. The daemon's own socket is in every confined agent's baseline.
 * Same signatures in 6.1 and 6.12; bpf_skc_to_unix_sock (5.16+) gives the unix_sock
 * around the listener's sock, whose `path` is where it was bound.
 */
static __always_inline int rush_check_unix_peer(__u32 hook, struct sock *peer)
{
	__u32 flags = 0;
	__u64 cgroup_id = rush_confined_agent_flags(&flags);
	struct unix_sock *u;
	struct vfsmount *mnt;
	struct dentry *dentry;

	if (!cgroup_id || !peer)
		return 0;
	u = bpf_skc_to_unix_sock(peer);
	if (!u)
		return 0;
	dentry = u->path.dentry;
	if (!dentry)
		return 0;
	mnt = u->path.mnt;
	return rush_require(hook, cgroup_id, flags, RUSH_FILE_OP_WRITE, dentry, mnt, dentry);
}

SEC("lsm/unix_stream_connect")
int BPF_PROG(rush_unix_stream_connect, struct sock *sock, struct sock *other, struct sock *newsk)
{
	return rush_check_unix_peer(RUSH_FHOOK_UNIX_STREAM_CONNECT, other);
}

SEC("lsm/unix_may_send")
int BPF_PROG(rush_unix_may_send, struct socket *sock, struct socket *other)
{
	return rush_check_unix_peer(RUSH_FHOOK_UNIX_MAY_SEND, other->sk);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

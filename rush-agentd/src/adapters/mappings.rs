//! Revocation reaching memory mappings.
//!
//! The LSM hooks check opens, reads and writes of files, but a page of a file mapped into
//! memory before a revoke is read and written by plain loads and stores: no hook runs on
//! a page fault. So when a revoke (or a token's expiry) takes an operation away, the
//! daemon freezes the agent's cgroup, lets the kernel map change land, finds the agent's
//! processes whose mappings use what was taken away, SIGKILLs them (a frozen task dies on
//! SIGKILL without running another instruction) and thaws the rest.
//!
//! A mapping uses: read (any mapping of the file: its pages are readable), write (a shared
//! mapping that is writable, or may be made so with mprotect: `mw` in smaps' VmFlags, as
//! for a file opened read-write; stores reach the file) and exec (an executable mapping).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rush_proto::Ops;

use crate::adapters::cgroup::{AgentCgroup, CgroupBackend};
use crate::core::FileKey;

/// How long a revoke waits for the agent's cgroup to report `frozen 1`. Past it the scan
/// runs anyway (a task stuck in uninterruptible sleep delays freezing), repeated so that
/// a process forked meanwhile is found too.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Start address: what ties a maps line to its smaps entry.
    pub start: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    /// Writable now or after an mprotect (VM_MAYWRITE); from maps alone, `write`.
    pub may_write: bool,
    /// The file's superblock dev in the kernel's encoding (`MAJOR << 20 | MINOR`, as in
    /// [`FileKey`]) and its inode number.
    pub key: FileKey,
    /// As the kernel printed it, without a trailing ` (deleted)`.
    pub path: PathBuf,
}

impl Mapping {
    /// The operations this mapping lets the process perform without a system call.
    pub fn uses(&self) -> Ops {
        let mut ops = Ops::READ;
        if self.shared && (self.write || self.may_write) {
            ops.0 |= Ops::WRITE.0;
        }
        if self.exec {
            ops.0 |= Ops::EXEC.0;
        }
        ops
    }
}

/// The file mappings in the text of `/proc/PID/maps`; anonymous and special mappings
/// (`[heap]`, `[vdso]`, inode 0) are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // address perms offset dev inode [path]; the path may contain spaces.
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start();
        let end = s.find(' ').unwrap_or(s.len());
        let (f, r) = s.split_at(end);
        rest = r;
        f
    };
    let start = u64::from_str_radix(field().split('-').next()?, 16).ok()?;
    let perms = field().as_bytes();
    let _offset = field();
    let dev = field();
    let ino: u64 = field().parse().ok()?;
    if ino == 0 || perms.len() < 4 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let dev = (u32::from_str_radix(major, 16).ok()? << 20) | u32::from_str_radix(minor, 16).ok()?;
    let path = rest.trim_start();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    if !path.starts_with('/') {
        return None;
    }
    Some(Mapping {
        start,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        may_write: perms[1] == b'w',
        key: FileKey { dev, ino },
        // seq_file_path escapes newlines (and only those) as \012.
        path: PathBuf::from(path.replace("\\012", "\n")),
    })
}

/// The start addresses of the mappings in the text of `/proc/PID/smaps` whose VmFlags
/// include `mw` (VM_MAYWRITE: an mprotect can make them writable without a file hook).
pub fn may_write_starts(smaps: &str) -> HashSet<u64> {
    let mut out = HashSet::new();
    let mut current = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(start) = current.take()
                && flags.split_whitespace().any(|f| f == "mw")
            {
                out.insert(start);
            }
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && !start.is_empty()
            && start.bytes().chain(end.bytes()).all(|b| b.is_ascii_hexdigit())
        {
            current = u64::from_str_radix(start, 16).ok();
        }
    }
    out
}

/// What one removed or lapsed token took away: the operations no token on the same inode
/// still grants.
#[derive(Debug, Clone)]
pub struct Lost {
    pub key: FileKey,
    /// The token's path, and where it leads now if that differs (symlinks).
    pub paths: Vec<PathBuf>,
    pub ops: Ops,
}

/// A token still in force: it keeps granting its operations at and below its paths.
#[derive(Debug, Clone)]
pub struct Kept {
    pub paths: Vec<PathBuf>,
    pub ops: Ops,
}

/// `path` and, when it resolves elsewhere, its canonical form: maps show canonical paths.
pub fn path_forms(path: &Path) -> Vec<PathBuf> {
    let mut forms = vec![path.to_owned()];
    if let Ok(c) = std::fs::canonicalize(path)
        && c != path
    {
        forms.push(c);
    }
    forms
}

/// The operations `m` uses that a [`Lost`] took away and no [`Kept`] token still grants.
/// A mapping is hit by a lost token if it maps that very inode, or its path lies at or
/// below the token's path (component-wise: `/srv/a` covers `/srv/a/f`, not `/srv/ab`),
/// as a directory grant covers its subtree.
pub fn no_longer_allowed(m: &Mapping, lost: &[Lost], kept: &[Kept]) -> Ops {
    let uses = m.uses();
    let mut gone = 0;
    for l in lost {
        if l.key == m.key || l.paths.iter().any(|p| m.path.starts_with(p)) {
            gone |= l.ops.0 & uses.0;
        }
    }
    if gone == 0 {
        return Ops(0);
    }
    for k in kept {
        if k.paths.iter().any(|p| m.path.starts_with(p)) {
            gone &= !k.ops.0;
        }
    }
    Ops(gone)
}

/// A process killed because of one of its mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Killed {
    pub pid: u32,
    pub comm: String,
    /// The first mapping that was no longer allowed.
    pub path: PathBuf,
    /// What its mappings used that was taken away.
    pub ops: Ops,
}

/// Whether process `pid` maps something it may no longer use: (first such path, ops).
fn offence(
    pid: u32,
    lost: &[Lost],
    kept: &dyn Fn() -> Vec<Kept>,
    kept_cache: &mut Option<Vec<Kept>>,
) -> Option<(PathBuf, Ops)> {
    // An unreadable maps file means the process is gone (or a kernel thread): nothing mapped.
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut first: Option<PathBuf> = None;
    let mut ops = 0;
    let mut may_write: Option<HashSet<u64>> = None;
    for mut m in parse_maps(&text) {
        // A shared mapping read-only now counts as writing if an mprotect can change that
        // and write is what was lost; smaps (larger) is read only then.
        if m.shared && !m.write {
            let if_writable = Mapping { may_write: true, ..m.clone() };
            if no_longer_allowed(&if_writable, lost, &[]).contains(Ops::WRITE) {
                let starts = may_write.get_or_insert_with(|| {
                    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
                    may_write_starts(&smaps)
                });
                m.may_write = starts.contains(&m.start);
            }
        }
        // Cheap test first; the kept tokens (canonicalized paths) only when needed.
        if no_longer_allowed(&m, lost, &[]).0 == 0 {
            continue;
        }
        let kept = kept_cache.get_or_insert_with(kept);
        let gone = no_longer_allowed(&m, lost, kept);
        if gone.0 != 0 {
            ops |= gone.0;
            first.get_or_insert(m.path);
        }
    }
    first.map(|p| (p, Ops(ops)))
}

/// Freezes the agent, runs `apply` (the kernel map change), SIGKILLs every process of
/// the agent with a mapping that is no longer allowed, and thaws the agent, whatever
/// happens (a guard thaws on every path out, panics included). Returns `apply`'s error
/// (nothing is scanned then) or the processes killed.
pub fn enforce<E>(
    cgroups: &dyn CgroupBackend,
    cg: &AgentCgroup,
    lost: &[Lost],
    kept: &dyn Fn() -> Vec<Kept>,
    apply: impl FnOnce() -> Result<(), E>,
) -> Result<Vec<Killed>, E> {
    if lost.iter().all(|l| l.ops.0 == 0) {
        return apply().map(|()| Vec::new());
    }
    let frozen = Frozen::freeze(cgroups, cg);
    apply()?;
    let mut kept_cache = None;
    let mut killed: Vec<Killed> = Vec::new();
    let mut seen: HashSet<u32> = HashSet::new();
    // Frozen, one pass finds everyone. Not frozen, processes may still fork: rescan
    // until a pass finds no one new.
    let passes = if frozen.complete { 1 } else { 5 };
    for _ in 0..passes {
        let mut found = false;
        for pid in cgroups.all_pids(cg) {
            if seen.contains(&pid) {
                continue;
            }
            let Some((path, ops)) = offence(pid, lost, kept, &mut kept_cache) else { continue };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            seen.insert(pid);
            found = true;
            killed.push(Killed { pid, comm: comm.trim_end().to_owned(), path, ops });
        }
        if !found {
            break;
        }
    }
    drop(frozen);
    Ok(killed)
}

/// The agent's cgroup frozen for as long as this lives (if freezing worked at all).
struct Frozen<'a> {
    cgroups: &'a dyn CgroupBackend,
    cg: &'a AgentCgroup,
    /// This freeze is in force and must be undone.
    held: bool,
    /// Every task reached the frozen state in time.
    complete: bool,
}

impl<'a> Frozen<'a> {
    fn freeze(cgroups: &'a dyn CgroupBackend, cg: &'a AgentCgroup) -> Frozen<'a> {
        let (held, complete) = match cgroups.freeze(cg, FREEZE_TIMEOUT) {
            Ok(true) => (true, true),
            Ok(false) => {
                tracing::warn!(agent = %cg.name, timeout = ?FREEZE_TIMEOUT, "agent not frozen in time; scanning its mappings anyway");
                (true, false)
            }
            Err(e) => {
                tracing::warn!(agent = %cg.name, error = %crate::core::error_chain(&e), "cannot freeze the agent; scanning its mappings anyway");
                (false, false)
            }
        };
        Frozen { cgroups, cg, held, complete }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if self.held
            && let Err(e) = self.cgroups.thaw(self.cg)
        {
            tracing::error!(agent = %self.cg.name, error = %crate::core::error_chain(&e), "agent not thawed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c5a00000-55d0c5a02000 r--p 00000000 fd:01 1835030                    /usr/bin/cat
55d0c5a02000-55d0c5a07000 r-xp 00002000 fd:01 1835030                    /usr/bin/cat
55d0c6b3e000-55d0c6b5f000 rw-p 00000000 00:00 0                          [heap]
7f1a2c000000-7f1a2c001000 rw-s 00000000 00:1f 4242                       /tmp/rush files/a/f (deleted)
7f1a2c200000-7f1a2c201000 r--s 00000000 103:0a 77                        /srv/x\\012y
7f1a2c400000-7f1a2c401000 rw-p 00000000 00:1f 4243                       /tmp/rush files/a/g
7ffd1e1f0000-7ffd1e1f2000 r-xp 00000000 00:00 0                          [vdso]
";

    fn key(dev: u32, ino: u64) -> FileKey {
        FileKey { dev, ino }
    }

    #[test]
    fn parses_file_mappings_only() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 5, "{m:#?}");
        assert_eq!(m[0].key, key(0xfd << 20 | 1, 1835030));
        assert_eq!(m[0].start, 0x55d0c5a00000);
        assert!(m[2].may_write && !m[3].may_write, "from maps alone: writable now");
        assert_eq!(m[0].path, Path::new("/usr/bin/cat"));
        assert!(m[1].exec && !m[1].write && !m[1].shared);
        assert_eq!(m[2].path, Path::new("/tmp/rush files/a/f"), "spaces kept, (deleted) dropped");
        assert!(m[2].shared && m[2].write);
        assert_eq!(m[2].key, key(0x1f, 4242));
        assert_eq!(m[3].key, key(0x103 << 20 | 0xa, 77), "majors above 255 are hex too");
        assert_eq!(m[3].path, Path::new("/srv/x\ny"));
        assert!(!m[4].shared && m[4].write);
        assert_eq!(parse_maps("garbage\n\n7f-7f r--p 0 zz:01 5 /x\nzz-7f r--p 0 00:01 5 /x\n"), vec![]);
    }

    #[test]
    fn a_mapping_uses_what_its_pages_allow() {
        let m = parse_maps(MAPS);
        assert_eq!(m[0].uses(), Ops::READ);
        assert_eq!(m[1].uses(), Ops(Ops::READ.0 | Ops::EXEC.0));
        assert_eq!(m[2].uses(), Ops(Ops::READ.0 | Ops::WRITE.0), "shared writable");
        assert_eq!(m[3].uses(), Ops::READ, "shared read-only");
        assert_eq!(m[4].uses(), Ops::READ, "private writable: stores never reach the file");
        let mprotectable = Mapping { may_write: true, ..m[3].clone() };
        assert_eq!(mprotectable.uses(), Ops(Ops::READ.0 | Ops::WRITE.0), "shared, may become writable");
        let private = Mapping { may_write: true, ..m[4].clone() };
        assert_eq!(private.uses(), Ops::READ);
    }

    #[test]
    fn smaps_tells_which_mappings_may_become_writable() {
        let smaps = "\
7f1a2c000000-7f1a2c001000 rw-s 00000000 00:1f 4242                       /tmp/a/f
Size:                  4 kB
VmFlags: rd wr sh mr mw me ms sd
7f1a2c200000-7f1a2c201000 r--s 00000000 103:0a 77                        /srv/opened read-write
Size:                  4 kB
Rss:                   0 kB
VmFlags: rd sh mr mw me ms sd
7f1a2c400000-7f1a2c401000 r--s 00000000 00:1f 4243                       /srv/opened read-only
VmFlags: rd sh mr me ms sd
";
        let starts = may_write_starts(smaps);
        assert_eq!(starts, HashSet::from([0x7f1a2c000000, 0x7f1a2c200000]));
    }

    fn lost(path: &str, k: FileKey, ops: &str) -> Lost {
        Lost { key: k, paths: vec![path.into()], ops: ops.parse().unwrap() }
    }

    fn kept(path: &str, ops: &str) -> Kept {
        Kept { paths: vec![path.into()], ops: ops.parse().unwrap() }
    }

    #[test]
    fn only_what_was_taken_away_and_is_used_counts() {
        let m = parse_maps(MAPS);
        let (shared_rw, private_rw, exe) = (&m[2], &m[4], &m[1]);
        let dir = key(0x1f, 4000);
        let write = [lost("/tmp/rush files/a", dir, "write")];
        // By path: the revoked directory covers the file below it.
        assert_eq!(no_longer_allowed(shared_rw, &write, &[]), Ops::WRITE);
        assert_eq!(no_longer_allowed(private_rw, &write, &[]), Ops(0), "private mappings never write back");
        // Component-wise: /tmp/rush files/a does not cover /tmp/rush files/ab.
        let ab = Mapping { path: "/tmp/rush files/ab".into(), ..shared_rw.clone() };
        assert_eq!(no_longer_allowed(&ab, &write, &[]), Ops(0));
        // Read taken away: every mapping of the file goes.
        let read = [lost("/tmp/rush files/a", dir, "read,write")];
        assert_eq!(no_longer_allowed(private_rw, &read, &[]), Ops::READ);
        // By inode: a renamed or hard-linked file is still that inode.
        let file = [lost("/elsewhere/f", key(0x1f, 4242), "write")];
        assert_eq!(no_longer_allowed(shared_rw, &file, &[]), Ops::WRITE);
        assert_eq!(
            no_longer_allowed(shared_rw, &[lost("/elsewhere/f", key(0x20, 4242), "write")], &[]),
            Ops(0)
        );
        // Exec taken away: executable mappings only.
        let x = [lost("/usr", key(0xfd << 20 | 1, 2), "read,exec")];
        assert_eq!(no_longer_allowed(exe, &x, &[]), Ops(Ops::READ.0 | Ops::EXEC.0));
        assert_eq!(no_longer_allowed(exe, &[lost("/usr", key(1, 2), "exec")], &[]), Ops::EXEC);
        assert_eq!(no_longer_allowed(&m[0], &[lost("/usr", key(1, 2), "exec")], &[]), Ops(0));
        // A token still in force at or above the file keeps what it grants.
        assert_eq!(no_longer_allowed(shared_rw, &write, &[kept("/tmp", "write")]), Ops(0));
        assert_eq!(
            no_longer_allowed(shared_rw, &write, &[kept("/tmp/rush files/a/f", "read,write")]),
            Ops(0)
        );
        assert_eq!(no_longer_allowed(shared_rw, &read, &[kept("/tmp", "write")]), Ops::READ);
        assert_eq!(no_longer_allowed(shared_rw, &write, &[kept("/tmp/rush files/a/g", "write")]), Ops::WRITE);
        assert_eq!(no_longer_allowed(exe, &x, &[kept("/usr/bin", "read")]), Ops::EXEC);
    }

    #[test]
    fn the_agent_is_thawed_whatever_happens() {
        use crate::adapters::cgroup::fake::FakeCgroups;
        let cgroups = FakeCgroups::default();
        let cg = cgroups.create("t").unwrap();
        let lost = [lost("/nonexistent", key(1, 1), "write")];
        let r: Result<_, &str> = enforce(&cgroups, &cg, &lost, &Vec::new, || Err("map update failed"));
        assert_eq!(r, Err("map update failed"));
        assert_eq!(*cgroups.freezes.lock().unwrap(), ["freeze t", "thaw t"]);
        // Nothing taken away: no freeze at all.
        let r: Result<_, &str> = enforce(&cgroups, &cg, &[], &Vec::new, || Ok(()));
        assert_eq!(r, Ok(vec![]));
        assert_eq!(cgroups.freezes.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_symlinked_token_path_also_matches_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = real.with_file_name("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(path_forms(&link), [link.clone(), real.clone()]);
        assert_eq!(path_forms(&real), std::slice::from_ref(&real));
        assert_eq!(path_forms(Path::new("/nonexistent/x")), [PathBuf::from("/nonexistent/x")]);
        // A token granted as .../link; the kernel prints the mapping as .../real/f.
        let m = parse_maps(&format!("7f-7f rw-s 0 00:1f 9 {}/f\n", real.display())).remove(0);
        let l = Lost { key: key(0x1f, 1), paths: path_forms(&link), ops: Ops::WRITE };
        assert_eq!(no_longer_allowed(&m, &[l], &[]), Ops::WRITE);
    }
}

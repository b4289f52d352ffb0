//! One cgroup per agent: a cgroup v2 directory for identity (its inode number is the id
//! the BPF programs see) plus a directory in each v1 controller hierarchy where the host
//! still has them (hybrid mode).
//!
//! Written by hand rather than with cgroups-rs: cgroups-rs fixes the v2 root at
//! /sys/fs/cgroup and cannot express hybrid mode (v2 at /sys/fs/cgroup/unified, controllers
//! in v1 hierarchies), which is what this project's own hosts run. What we need here is a
//! handful of file operations; budgets (a later issue) will wrap a library behind
//! [`CgroupBackend`] for the controller knobs.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (needed for agent identity); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cannot read the mount table")]
    Mounts(#[source] std::io::Error),
    #[error("cgroup {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} still has processes after kill")]
    Busy { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Pure cgroup v2 (modern distros, the test guests).
    Unified,
    /// v2 for identity, resource controllers in v1 hierarchies (this project's hosts).
    Hybrid,
}

impl CgroupMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CgroupMode::Unified => "unified (cgroup v2)",
            CgroupMode::Hybrid => "hybrid (v2 identity, v1 controllers)",
        }
    }
}

/// Where the hierarchies are mounted on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    pub mode: CgroupMode,
    pub v2_root: PathBuf,
    /// Controllers the v2 root offers (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// (controller, mount point) of the v1 hierarchies agents are placed in.
    pub v1: Vec<(String, PathBuf)>,
    /// What an agent's mount namespace makes read-only: the directory every cgroup
    /// hierarchy is mounted under when it is a mount point itself (hybrid hosts' tmpfs at
    /// /sys/fs/cgroup), else each hierarchy's mount point (all of them, not only those
    /// agents are placed in).
    pub read_only: Vec<PathBuf>,
    /// The cgroup2 superblock flags in force (of [`CGROUP2_FLAGS`]), e.g. `nsdelegate`.
    pub v2_flags: Vec<String>,
}

/// The flags a cgroup2 superblock can carry. A reconfigure sets all of them at once
/// (those not named are cleared), so the ones in force are passed again.
pub const CGROUP2_FLAGS: [&str; 6] = [
    "nsdelegate",
    "favordynmods",
    "memory_localevents",
    "memory_recursiveprot",
    "memory_hugetlb_accounting",
    "pids_localevents",
];

/// v1 controllers agents can join in hybrid mode; cpuset and devices need setup we don't do.
pub const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

impl CgroupLayout {
    pub fn detect() -> Result<CgroupLayout, CgroupError> {
        let mounts = fs::read_to_string("/proc/self/mounts").map_err(CgroupError::Mounts)?;
        Self::from_mounts(&mounts)
    }

    /// Parses /proc/self/mounts text; separate from `detect` for tests.
    pub fn from_mounts(mounts: &str) -> Result<CgroupLayout, CgroupError> {
        let mut v2_root = None;
        let mut v2_flags = Vec::new();
        let mut v1 = Vec::new();
        let mut points: Vec<PathBuf> = Vec::new();
        let mut cgroup_points: Vec<PathBuf> = Vec::new();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            points.push(PathBuf::from(f[1]));
            if f[2] == "cgroup" || f[2] == "cgroup2" {
                cgroup_points.push(PathBuf::from(f[1]));
            }
            match f[2] {
                "cgroup2" if v2_root.is_none() => {
                    v2_root = Some(PathBuf::from(f[1]));
                    v2_flags =
                        f[3].split(',').filter(|o| CGROUP2_FLAGS.contains(o)).map(str::to_owned).collect();
                }
                "cgroup" => {
                    for opt in f[3].split(',') {
                        if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                            v1.push((opt.to_owned(), PathBuf::from(f[1])));
                        }
                    }
                }
                _ => {}
            }
        }
        let v2_root = v2_root.ok_or(CgroupError::NoCgroup2)?;
        let v2_controllers = fs::read_to_string(v2_root.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mode = if v1.is_empty() { CgroupMode::Unified } else { CgroupMode::Hybrid };
        cgroup_points.dedup();
        let read_only = match v2_root.parent() {
            Some(top)
                if top != Path::new("/")
                    && points.iter().any(|p| p == top)
                    && cgroup_points.iter().all(|p| p.starts_with(top)) =>
            {
                vec![top.to_owned()]
            }
            _ => cgroup_points,
        };
        Ok(CgroupLayout { mode, v2_root, v2_controllers, v1, read_only, v2_flags })
    }
}

/// `[cgroup] favordynmods` on this host.
#[derive(Debug)]
pub enum DynmodsState {
    /// Not wanted (or no v1 hierarchy is joined): left as it was (`on`: set by someone else).
    Untouched { on: bool },
    /// In force while this daemon runs (`set_now`: this start set it); the shared lock
    /// says a daemon wants it, so the last one to stop clears it.
    Held { set_now: bool, lock: File },
}

impl DynmodsState {
    pub fn is_on(&self) -> bool {
        match self {
            DynmodsState::Untouched { on } => *on,
            DynmodsState::Held { .. } => true,
        }
    }
}

/// Where daemons note that they want `favordynmods` (the flag is one per host): each holds
/// a shared flock while it runs; the file's text is "rush" while Rush set the flag.
pub fn dynmods_lock_path() -> PathBuf {
    PathBuf::from("/run/rush-favordynmods.lock")
}

/// Joining a v1 hierarchy is a migration: it write-locks the kernel's global
/// `cgroup_threadgroup_rwsem`, which, idle, first waits for an RCU grace period (7-15 ms
/// here). The cgroup2 `favordynmods` flag keeps that lock's readers (fork, exit) on their
/// slow path, so a migration does not wait; kernels from 6.18 also switch to a lock per
/// thread group for good (until reboot). The flag is global: it is set by reconfiguring
/// the cgroup2 superblock (flags it has kept), taken back by the last daemon that stops
/// ([`release_dynmods`]), and by the next start after a crash if that one does not want it.
pub fn favor_dynmods(
    layout: &CgroupLayout,
    wanted: bool,
    lock_path: &Path,
) -> Result<DynmodsState, CgroupError> {
    use std::io::{Read, Seek, Write};
    let on = layout.v2_flags.iter().any(|f| f == "favordynmods");
    // Not wanted and no daemon ever noted it here: nothing to create or clear.
    let mut lock = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(wanted)
        .truncate(false)
        .mode(0o600)
        .open(lock_path)
    {
        Ok(f) => f,
        Err(e) if !wanted && e.kind() == ErrorKind::NotFound => return Ok(DynmodsState::Untouched { on }),
        Err(e) => return Err(CgroupError::Io { path: lock_path.to_owned(), source: e }),
    };
    let mut text = String::new();
    let _ = lock.read_to_string(&mut text);
    let ours = text.trim() == "rush";
    if !wanted {
        // Left set by a daemon that died, and nobody wants it now: take it back.
        if on && ours && flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
            set_v2_flag(layout, "favordynmods", false).map_err(io_err(&layout.v2_root))?;
            let _ = lock.set_len(0);
            return Ok(DynmodsState::Untouched { on: false });
        }
        return Ok(DynmodsState::Untouched { on });
    }
    // Shared: other daemons may want it too. Held exclusively only while a stopping
    // daemon decides; never wait on it for long.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !flock(&lock, libc::LOCK_SH | libc::LOCK_NB) {
        if Instant::now() > deadline {
            return Err(CgroupError::Io {
                path: lock_path.to_owned(),
                source: std::io::Error::other("held exclusively for 2 s"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !on {
        set_v2_flag(layout, "favordynmods", true).map_err(io_err(&layout.v2_root))?;
        let (_, _) = (lock.set_len(0), lock.rewind());
        lock.write_all(b"rush").map_err(io_err(lock_path))?;
    }
    // Checked, not assumed: outside the initial cgroup namespace the kernel ignores the flag.
    let now = CgroupLayout::detect()?;
    if !now.v2_flags.iter().any(|f| f == "favordynmods") {
        return Err(CgroupError::Io {
            path: layout.v2_root.clone(),
            source: std::io::Error::other(
                "favordynmods did not take effect (not in the initial cgroup namespace?)",
            ),
        });
    }
    Ok(DynmodsState::Held { set_now: !on, lock })
}

/// At stop: clears `favordynmods` if Rush set it and no other daemon still holds the lock.
pub fn release_dynmods(layout: &CgroupLayout, state: DynmodsState) -> Result<bool, CgroupError> {
    use std::io::Read;
    let DynmodsState::Held { mut lock, .. } = state else { return Ok(false) };
    if !flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        return Ok(false);
    }
    let mut text = String::new();
    let _ = std::io::Seek::rewind(&mut lock);
    let _ = lock.read_to_string(&mut text);
    if text.trim() != "rush" {
        return Ok(false);
    }
    set_v2_flag(layout, "favordynmods", false).map_err(io_err(&layout.v2_root))?;
    let _ = lock.set_len(0);
    Ok(true)
}

fn flock(f: &File, op: i32) -> bool {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on an fd `f` keeps open; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Reconfigures the cgroup2 superblock with `flag` on or off and every other flag it has
/// now (read again, not from a stale layout), leaving the mount's own flags alone (fspick,
/// not a remount).
fn set_v2_flag(layout: &CgroupLayout, flag: &str, on: bool) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let current = CgroupLayout::detect()
        .ok()
        .filter(|l| l.v2_root == layout.v2_root)
        .map(|l| l.v2_flags)
        .unwrap_or_else(|| layout.v2_flags.clone());
    let mut flags: Vec<String> = current.into_iter().filter(|f| f != flag).collect();
    if on {
        flags.push(flag.to_owned());
    }
    let path = CString::new(layout.v2_root.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    const FSPICK_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;
    // SAFETY: fspick with a NUL-terminated path; the fd it returns is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, path.as_ptr(), FSPICK_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for f in &flags {
        let key = CString::new(f.as_str()).map_err(std::io::Error::other)?;
        // SAFETY: a valid fs context fd and a NUL-terminated key; no value for a flag.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<u8>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("cgroup2 flag {f}: {e}")));
        }
    }
    // SAFETY: as above; the command takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An agent's cgroup directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCgroup {
    pub name: String,
    /// The cgroup v2 id: what `bpf_get_current_cgroup_id()` returns inside the agent.
    pub id: u64,
    pub v2_dir: PathBuf,
    pub v1_dirs: Vec<PathBuf>,
}

/// The kernel-facing cgroup operations, behind a trait so the agent logic is unit-tested
/// without root.
pub trait CgroupBackend: Send + Sync + 'static {
    /// Depth of agent cgroups below the v2 root (the root is 0).
    fn agent_level(&self) -> u32;
    fn create(&self, name: &str) -> Result<AgentCgroup, CgroupError>;
    /// What the first process needs to start inside the agent's cgroups.
    fn placement(&self, cg: &AgentCgroup) -> Result<Placement, CgroupError>;
    fn pids(&self, cg: &AgentCgroup) -> Vec<u32>;
    /// The processes of the agent's cgroup and of any sub-cgroups the agent made.
    fn all_pids(&self, cg: &AgentCgroup) -> Vec<u32>;
    /// Freezes the agent's v2 cgroup (sub-cgroups included) and waits until the kernel
    /// reports it frozen: Ok(false) if that took longer than `timeout` (it stays freezing).
    /// Every Ok must be paired with a [`CgroupBackend::thaw`]. Freezes nest (a revoke
    /// during a conditional token's check): the agent thaws when the last one is undone.
    fn freeze(&self, cg: &AgentCgroup, timeout: Duration) -> Result<bool, CgroupError>;
    fn thaw(&self, cg: &AgentCgroup) -> Result<(), CgroupError>;
    /// Kills every process in the cgroup; returns how many there were.
    fn kill_all(&self, cg: &AgentCgroup) -> Result<u32, CgroupError>;
    /// Removes the directories; the cgroup must be empty (waits briefly for exiting tasks).
    fn remove(&self, cg: &AgentCgroup) -> Result<(), CgroupError>;
    /// Agent cgroups that exist now (e.g. left by a daemon that died).
    fn existing(&self) -> Vec<AgentCgroup>;
    /// How the agent sees cgroupfs in its own mount namespace (`harden.rs`): its own
    /// directories bound over each hierarchy's mount point, everything read-only. None
    /// where there is no cgroupfs to hide (the unit tests' fake).
    fn view(&self, _cg: &AgentCgroup) -> Option<crate::adapters::harden::CgroupView> {
        None
    }
}

/// Opened by the daemon before the agent's first process is cloned.
pub struct Placement {
    /// The v2 directory, for `clone3(CLONE_INTO_CGROUP)`: the process is born there.
    /// None only for the unit tests' fake.
    pub v2_dir: Option<File>,
    /// The v1 hierarchies (hybrid hosts), which `CLONE_INTO_CGROUP` cannot reach: the
    /// daemon writes the new process's pid into each before it may exec. Not the child
    /// itself: a process inside an agent's cgroup may not write to cgroupfs at all.
    pub v1: Vec<V1Join>,
    /// Where `/proc/PID/cgroup` must place the first process before it may execute;
    /// checked by the daemon, not assumed.
    pub expect: Option<Expected>,
}

/// One v1 hierarchy's agent directory and its open `cgroup.procs`.
pub struct V1Join {
    pub dir: PathBuf,
    pub procs: File,
}

/// The agent's cgroup as `/proc/PID/cgroup` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The path below every hierarchy's root, e.g. `/rush/a1`.
    pub path: String,
    /// One controller of each v1 hierarchy the process must also be in.
    pub v1_controllers: Vec<String>,
}

impl Expected {
    /// The first hierarchy in which `proc_cgroup` (the text of `/proc/PID/cgroup`) does
    /// not show [`Expected::path`]: (hierarchy, path found there, "" if absent).
    pub fn mismatch(&self, proc_cgroup: &str) -> Option<(String, String)> {
        let lines: Vec<(&str, &str)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(':')?;
                rest.split_once(':')
            })
            .collect();
        let found = |matches: &dyn Fn(&str) -> bool| {
            lines.iter().find(|(ctl, _)| matches(ctl)).map(|(_, p)| p.to_string()).unwrap_or_default()
        };
        let v2 = found(&|ctl| ctl.is_empty());
        if v2 != self.path {
            return Some(("cgroup v2".into(), v2));
        }
        self.v1_controllers.iter().find_map(|c| {
            let p = found(&|ctl| ctl.split(',').any(|x| x == c));
            (p != self.path).then(|| (format!("v1 {c}"), p))
        })
    }
}

/// The real cgroupfs.
pub struct FsCgroups {
    layout: CgroupLayout,
    /// Relative path under every hierarchy root holding the agent cgroups, e.g. "rush".
    parent: PathBuf,
    /// How many freezes of each agent (by v2 directory) are in force.
    freezes: std::sync::Mutex<std::collections::HashMap<PathBuf, u32>>,
}

impl FsCgroups {
    /// `v1_controllers`: the v1 hierarchies agents join on hybrid hosts. Joining one is a
    /// cgroup migration (see [`crate::adapters::spawn`]), so a spawn pays an RCU grace period for it.
    pub fn new(
        mut layout: CgroupLayout,
        parent: &Path,
        v1_controllers: &[String],
    ) -> Result<FsCgroups, CgroupError> {
        layout.v1.retain(|(c, _)| v1_controllers.iter().any(|w| w == c));
        let parent = parent.strip_prefix("/").unwrap_or(parent).to_owned();
        let v2_parent = layout.v2_root.join(&parent);
        fs::create_dir_all(&v2_parent).map_err(io_err(&v2_parent))?;
        if layout.mode == CgroupMode::Unified {
            // Delegate the controllers down to the agents (no-internal-process rule: the
            // parent itself never holds processes).
            enable_subtree_controllers(&layout.v2_root, &parent, &layout.v2_controllers)?;
        }
        for (_, root) in &layout.v1 {
            let dir = root.join(&parent);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(FsCgroups { layout, parent, freezes: Default::default() })
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Applies `[cgroup] favordynmods` (see [`favor_dynmods`]); returns what the daemon
    /// reports. The layout's flags are re-read, so doctor shows what is in force.
    pub fn favor_dynmods(&mut self, wanted: bool) -> Result<DynmodsState, CgroupError> {
        let state = favor_dynmods(&self.layout, wanted && !self.layout.v1.is_empty(), &dynmods_lock_path())?;
        if let Ok(now) = CgroupLayout::detect() {
            self.layout.v2_flags = now.v2_flags;
        }
        Ok(state)
    }

    /// Removes the (empty) parent directories: for daemons that leave nothing behind.
    pub fn remove_parent(&self) {
        for root in std::iter::once(&self.layout.v2_root).chain(self.layout.v1.iter().map(|(_, r)| r)) {
            let _ = fs::remove_dir(root.join(&self.parent));
        }
    }

    fn v2_parent(&self) -> PathBuf {
        self.layout.v2_root.join(&self.parent)
    }

    fn cgroup_for(&self, name: &str) -> Result<AgentCgroup, CgroupError> {
        let v2_dir = self.v2_parent().join(name);
        let id = fs::metadata(&v2_dir).map_err(io_err(&v2_dir))?.ino();
        let mut v1_dirs: Vec<PathBuf> = Vec::new();
        for (_, root) in &self.layout.v1 {
            let d = root.join(&self.parent).join(name);
            // cpu and cpuacct are often co-mounted: one directory serves both.
            if !v1_dirs.contains(&d) {
                v1_dirs.push(d);
            }
        }
        Ok(AgentCgroup { name: name.to_owned(), id, v2_dir, v1_dirs })
    }
}

fn enable_subtree_controllers(root: &Path, parent: &Path, wanted: &[String]) -> Result<(), CgroupError> {
    let wanted: Vec<&str> =
        wanted.iter().map(String::as_str).filter(|c| ["cpu", "memory", "pids", "io"].contains(c)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let line: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    let mut dir = root.to_owned();
    for comp in std::iter::once(None).chain(parent.components().map(Some)) {
        if let Some(c) = comp {
            dir.push(c);
        }
        let file = dir.join("cgroup.subtree_control");
        fs::write(&file, line.trim_end()).map_err(io_err(&file))?;
    }
    Ok(())
}

impl CgroupBackend for FsCgroups {
    fn agent_level(&self) -> u32 {
        self.parent.components().count() as u32 + 1
    }

    fn view(&self, cg: &AgentCgroup) -> Option<crate::adapters::harden::CgroupView> {
        let mut binds = vec![(cg.v2_dir.clone(), self.layout.v2_root.clone())];
        for (_, root) in &self.layout.v1 {
            let dir = root.join(&self.parent).join(&cg.name);
            if !binds.iter().any(|(_, r)| r == root) {
                binds.push((dir, root.clone()));
            }
        }
        Some(crate::adapters::harden::CgroupView { binds, read_only: self.layout.read_only.clone() })
    }

    fn create(&self, name: &str) -> Result<AgentCgroup, CgroupError> {
        let v2_dir = self.v2_parent().join(name);
        fs::create_dir(&v2_dir).map_err(io_err(&v2_dir))?;
        let cg = match self.cgroup_for(name) {
            Ok(cg) => cg,
            Err(e) => {
                let _ = fs::remove_dir(&v2_dir);
                return Err(e);
            }
        };
        for d in &cg.v1_dirs {
            if let Err(e) = fs::create_dir(d)
                && e.kind() != ErrorKind::AlreadyExists
            {
                let _ = self.remove(&cg);
                return Err(CgroupError::Io { path: d.clone(), source: e });
            }
        }
        Ok(cg)
    }

    fn placement(&self, cg: &AgentCgroup) -> Result<Placement, CgroupError> {
        let v2_dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&cg.v2_dir)
            .map_err(io_err(&cg.v2_dir))?;
        let v1 = cg
            .v1_dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                let procs = OpenOptions::new().write(true).open(&p).map_err(io_err(&p))?;
                Ok(V1Join { dir: d.clone(), procs })
            })
            .collect::<Result<_, _>>()?;
        let v1_controllers = self.layout.v1.iter().map(|(c, _)| c.clone()).collect();
        let path = format!("/{}/{}", self.parent.display(), cg.name);
        Ok(Placement { v2_dir: Some(v2_dir), v1, expect: Some(Expected { path, v1_controllers }) })
    }

    fn pids(&self, cg: &AgentCgroup) -> Vec<u32> {
        read_pids(&cg.v2_dir.join("cgroup.procs"))
    }

    fn all_pids(&self, cg: &AgentCgroup) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>) {
            out.extend(read_pids(&dir.join("cgroup.procs")));
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&cg.v2_dir, &mut out);
        out
    }

    fn freeze(&self, cg: &AgentCgroup, timeout: Duration) -> Result<bool, CgroupError> {
        {
            let mut freezes = self.freezes.lock().unwrap_or_else(|p| p.into_inner());
            let held = freezes.get(&cg.v2_dir).copied().unwrap_or(0);
            if held == 0 {
                let file = cg.v2_dir.join("cgroup.freeze");
                fs::write(&file, "1").map_err(io_err(&file))?;
            }
            freezes.insert(cg.v2_dir.clone(), held + 1);
        }
        let events = cg.v2_dir.join("cgroup.events");
        wait_frozen(&events, timeout).map_err(|e| {
            // An Err is not paired with a thaw: undo this freeze here.
            let _ = self.thaw(cg);
            CgroupError::Io { path: events.clone(), source: e }
        })
    }

    fn thaw(&self, cg: &AgentCgroup) -> Result<(), CgroupError> {
        let mut freezes = self.freezes.lock().unwrap_or_else(|p| p.into_inner());
        match freezes.get_mut(&cg.v2_dir) {
            Some(held) if *held > 1 => {
                *held -= 1;
                return Ok(());
            }
            _ => freezes.remove(&cg.v2_dir),
        };
        let file = cg.v2_dir.join("cgroup.freeze");
        match fs::write(&file, "0") {
            // An agent gone meanwhile is not frozen.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map_err(io_err(&file)),
        }
    }

    fn kill_all(&self, cg: &AgentCgroup) -> Result<u32, CgroupError> {
        let before = self.pids(cg).len() as u32;
        let kill_file = cg.v2_dir.join("cgroup.kill");
        if kill_file.exists() {
            // cgroup.kill (5.14+) kills the whole tree atomically, racing forks included.
            fs::write(&kill_file, "1").map_err(io_err(&kill_file))?;
        } else {
            // Older kernels: freeze so nothing can fork, SIGKILL everyone, thaw.
            let freeze = cg.v2_dir.join("cgroup.freeze");
            let _ = fs::write(&freeze, "1");
            for _ in 0..100 {
                let pids = self.pids(cg);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = fs::write(&freeze, "0");
        }
        // Processes in v1 hierarchies only (they can't leave the v2 cgroup, but be sure).
        for d in &cg.v1_dirs {
            for pid in read_pids(&d.join("cgroup.procs")) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(before)
    }

    fn remove(&self, cg: &AgentCgroup) -> Result<(), CgroupError> {
        // Killed tasks leave the cgroup asynchronously; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in cg.v1_dirs.iter().chain(std::iter::once(&cg.v2_dir)) {
            loop {
                match remove_tree(dir) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        return Err(CgroupError::Busy { path: dir.clone() });
                    }
                    Err(e) => return Err(CgroupError::Io { path: dir.clone(), source: e }),
                }
            }
        }
        // Freezes held on a removed cgroup (one killed while frozen: a Landlock restart, a
        // paused agent killed) are over. Kept, they would leak, and the next agent of that
        // name (same directory) would be counted frozen without `cgroup.freeze` being written.
        self.freezes.lock().unwrap_or_else(|p| p.into_inner()).remove(&cg.v2_dir);
        Ok(())
    }

    fn existing(&self) -> Vec<AgentCgroup> {
        let Ok(rd) = fs::read_dir(self.v2_parent()) else { return Vec::new() };
        rd.filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| self.cgroup_for(&e.file_name().to_string_lossy()).ok())
            .collect()
    }
}

/// rmdir of a cgroup and any sub-cgroups the agent made inside it, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove_tree(&e.path())?;
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Waits until `cgroup.events` says `frozen 1`: the kernel signals a change of that file
/// with POLLPRI, so this sleeps until the state changes rather than polling on a timer.
fn wait_frozen(events: &Path, timeout: Duration) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut f = File::open(events)?;
    let mut text = String::new();
    loop {
        text.clear();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_string(&mut text)?;
        if text.lines().any(|l| l == "frozen 1") {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call; `f` stays open.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        if r < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error());
        }
    }
}

fn read_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The v2 cgroup path (relative to the v2 root, e.g. "/rush/a1") of a process.
pub fn process_cgroup_v2(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// In-memory stand-in for unit tests: ids are counters, placement files are temp files,
/// and "the cgroup's processes" are the pids the test registers.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeCgroups {
        pub cgroups: Mutex<HashMap<String, (AgentCgroup, Vec<u32>)>>,
        /// "freeze NAME" / "thaw NAME", in order.
        pub freezes: Mutex<Vec<String>>,
        next_id: std::sync::atomic::AtomicU64,
    }

    impl FakeCgroups {
        pub fn add_pid(&self, name: &str, pid: u32) {
            self.cgroups.lock().unwrap().get_mut(name).unwrap().1.push(pid);
        }
    }

    impl CgroupBackend for FakeCgroups {
        fn agent_level(&self) -> u32 {
            2
        }
        fn create(&self, name: &str) -> Result<AgentCgroup, CgroupError> {
            let mut map = self.cgroups.lock().unwrap();
            if map.contains_key(name) {
                return Err(CgroupError::Io {
                    path: PathBuf::from(name),
                    source: std::io::Error::from(ErrorKind::AlreadyExists),
                });
            }
            let id = 1000 + self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cg = AgentCgroup {
                name: name.into(),
                id,
                v2_dir: PathBuf::from(format!("/fake/rush/{name}")),
                v1_dirs: vec![],
            };
            map.insert(name.into(), (cg.clone(), vec![]));
            Ok(cg)
        }
        fn placement(&self, _cg: &AgentCgroup) -> Result<Placement, CgroupError> {
            let procs = tempfile::tempfile().unwrap();
            Ok(Placement { v2_dir: None, v1: vec![V1Join { dir: "/fake/v1".into(), procs }], expect: None })
        }
        fn pids(&self, cg: &AgentCgroup) -> Vec<u32> {
            self.cgroups.lock().unwrap().get(&cg.name).map(|(_, p)| p.clone()).unwrap_or_default()
        }
        fn all_pids(&self, cg: &AgentCgroup) -> Vec<u32> {
            self.pids(cg)
        }
        fn freeze(&self, cg: &AgentCgroup, _timeout: Duration) -> Result<bool, CgroupError> {
            self.freezes.lock().unwrap().push(format!("freeze {}", cg.name));
            Ok(true)
        }
        fn thaw(&self, cg: &AgentCgroup) -> Result<(), CgroupError> {
            self.freezes.lock().unwrap().push(format!("thaw {}", cg.name));
            Ok(())
        }
        fn kill_all(&self, cg: &AgentCgroup) -> Result<u32, CgroupError> {
            let pids = self
                .cgroups
                .lock()
                .unwrap()
                .get_mut(&cg.name)
                .map(|e| std::mem::take(&mut e.1))
                .unwrap_or_default();
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Ok(pids.len() as u32)
        }
        fn remove(&self, cg: &AgentCgroup) -> Result<(), CgroupError> {
            self.cgroups.lock().unwrap().remove(&cg.name);
            Ok(())
        }
        fn existing(&self) -> Vec<AgentCgroup> {
            self.cgroups.lock().unwrap().values().map(|(c, _)| c.clone()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_hybrid_layout() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        let l = CgroupLayout::from_mounts(mounts).unwrap();
        assert_eq!(l.mode, CgroupMode::Hybrid);
        assert_eq!(l.v2_root, PathBuf::from("/sys/fs/cgroup/unified"));
        let names: Vec<&str> = l.v1.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids"]);
        // The tmpfs holding every hierarchy is made read-only as a whole.
        assert_eq!(l.read_only, [PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn detects_unified_layout_and_co_mounted_controllers() {
        let l = CgroupLayout::from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n").unwrap();
        assert_eq!(l.mode, CgroupMode::Unified);
        assert_eq!(l.read_only, [PathBuf::from("/sys/fs/cgroup")]);
        let l = CgroupLayout::from_mounts(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup2 /u cgroup2 rw 0 0\n",
        )
        .unwrap();
        assert_eq!(l.v1.len(), 2);
        assert_eq!(l.v1[0].1, l.v1[1].1);
        // No common mount above them: each hierarchy on its own.
        assert_eq!(l.read_only, [PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), PathBuf::from("/u")]);
    }

    #[test]
    fn placement_is_checked_in_every_hierarchy() {
        let exp = Expected { path: "/rush/a1".into(), v1_controllers: vec!["cpu".into(), "memory".into()] };
        let good = "12:memory:/rush/a1\n4:cpu,cpuacct:/rush/a1\n1:name=systemd:/user.slice\n0::/rush/a1\n";
        assert_eq!(exp.mismatch(good), None);
        let v2_only = Expected { v1_controllers: vec![], ..exp.clone() };
        assert_eq!(v2_only.mismatch("0::/rush/a1\n"), None);
        assert_eq!(v2_only.mismatch("0::/\n"), Some(("cgroup v2".into(), "/".into())));
        let stray = "12:memory:/\n4:cpu,cpuacct:/rush/a1\n0::/rush/a1\n";
        assert_eq!(exp.mismatch(stray), Some(("v1 memory".into(), "/".into())));
        // A hierarchy missing from the file is a mismatch too.
        assert_eq!(
            exp.mismatch("4:cpu,cpuacct:/rush/a1\n0::/rush/a1\n"),
            Some(("v1 memory".into(), "".into()))
        );
        // "cpu" must not match "cpuset".
        assert_eq!(exp.mismatch("3:cpuset:/rush/a1\n12:memory:/rush/a1\n0::/rush/a1\n").unwrap().0, "v1 cpu");
    }

    fn wait_until_thawed(dir: &Path) -> bool {
        (0..200).any(|_| {
            let thawed = fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 0");
            if !thawed {
                std::thread::sleep(Duration::from_millis(5));
            }
            thawed
        })
    }

    /// Root only, on this machine's real cgroupfs (hybrid here: v1 controllers too): the
    /// daemon places a process in every hierarchy, and freezes and thaws the agent with
    /// the process in a sub-cgroup it made.
    #[test]
    fn real_cgroups_place_freeze_and_thaw() {
        if !nix::unistd::geteuid().is_root() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP: real_cgroups_place_freeze_and_thaw needs root");
            return;
        }
        struct Cleanup(FsCgroups, AgentCgroup);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = self.0.thaw(&self.1);
                let _ = self.0.kill_all(&self.1);
                let _ = self.0.remove(&self.1);
                self.0.remove_parent();
            }
        }
        let layout = CgroupLayout::detect().unwrap();
        let parent = format!("rush-unit-{}", std::process::id());
        let v1: Vec<String> = V1_CONTROLLERS.iter().map(|c| c.to_string()).collect();
        let cgroups = FsCgroups::new(layout, Path::new(&parent), &v1).unwrap();
        let cg = cgroups.create("a1").unwrap();
        let placement = cgroups.placement(&cg).unwrap();
        let c = Cleanup(cgroups, cg);
        let null = || std::os::fd::OwnedFd::from(File::open("/dev/null").unwrap());
        let argv = ["sleep".to_string(), "30".to_string()];
        let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let spawn = crate::adapters::spawn::Spawn::new(
            &argv,
            &env,
            Path::new("/"),
            [null(), null(), null()],
            placement,
            None,
            None,
            crate::adapters::harden::ChildHardening::default(),
        )
        .unwrap();
        // start() checks every hierarchy before it lets the process exec.
        let (pid, _pidfd) = spawn.start().unwrap();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for (controller, _) in &c.0.layout.v1 {
            let line =
                text.lines().find(|l| l.split(':').nth(1).unwrap().split(',').any(|x| x == controller));
            assert!(line.unwrap().ends_with(&format!("/{parent}/a1")), "{controller}: {text}");
        }

        let sub = c.1.v2_dir.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("cgroup.procs"), pid.to_string()).unwrap();
        assert_eq!(c.0.pids(&c.1), Vec::<u32>::new());
        assert_eq!(c.0.all_pids(&c.1), [pid as u32]);
        let frozen = |dir: &Path| fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 1");
        assert!(c.0.freeze(&c.1, Duration::from_secs(5)).unwrap());
        assert!(frozen(&sub), "the sub-cgroup is frozen with its parent");
        // Nested: the agent stays frozen until the last freeze is undone.
        assert!(c.0.freeze(&c.1, Duration::from_secs(5)).unwrap());
        c.0.thaw(&c.1).unwrap();
        assert!(frozen(&c.1.v2_dir));
        c.0.thaw(&c.1).unwrap();
        assert!(wait_until_thawed(&c.1.v2_dir) && wait_until_thawed(&sub));
        assert_eq!(c.0.kill_all(&c.1).unwrap(), 0, "kill_all counts the top level only");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);

        // Removed while frozen (a Landlock restart kills a frozen agent): the next cgroup
        // of that name starts unfrozen and freezes for real.
        assert!(c.0.freeze(&c.1, Duration::from_secs(5)).unwrap());
        fs::remove_dir(&sub).unwrap();
        c.0.remove(&c.1).unwrap();
        let again = c.0.create("a1").unwrap();
        assert!(fs::read_to_string(again.v2_dir.join("cgroup.events")).unwrap().contains("frozen 0"));
        assert!(c.0.freeze(&again, Duration::from_secs(2)).unwrap(), "the new a1 froze");
        c.0.thaw(&again).unwrap();
    }

    fn dynmods_on() -> bool {
        CgroupLayout::detect().unwrap().v2_flags.iter().any(|f| f == "favordynmods")
    }

    /// Root only, on this machine's real cgroup2 superblock (the flag is global to the
    /// host; a private lock file stands in for the daemons'): held by two daemons, cleared
    /// by the last to stop only; left by a crash, cleared by the next start that does not
    /// want it; set by someone else, never cleared.
    #[test]
    fn favordynmods_is_held_while_wanted_and_cleared_by_the_last_holder() {
        if !nix::unistd::geteuid().is_root() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP: favordynmods test needs root");
            return;
        }
        let layout = CgroupLayout::detect().unwrap();
        let before = dynmods_on();
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("dynmods.lock");
        // Start from "off", whoever had set it; put back at the end.
        set_v2_flag(&layout, "favordynmods", false).unwrap();
        struct Restore(CgroupLayout, bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = set_v2_flag(&self.0, "favordynmods", self.1);
            }
        }
        let _restore = Restore(layout.clone(), before);

        let fresh = || CgroupLayout::detect().unwrap();
        let a = favor_dynmods(&fresh(), true, &lock).unwrap();
        assert!(matches!(a, DynmodsState::Held { set_now: true, .. }));
        assert!(dynmods_on());
        let b = favor_dynmods(&fresh(), true, &lock).unwrap();
        assert!(matches!(b, DynmodsState::Held { set_now: false, .. }));
        assert!(!release_dynmods(&fresh(), a).unwrap(), "b still holds it");
        assert!(dynmods_on());
        assert!(release_dynmods(&fresh(), b).unwrap(), "the last holder clears it");
        assert!(!dynmods_on());

        // A daemon that dies holding it (its lock goes with it, the mark stays): the next
        // start that wants it keeps it, one that does not clears it.
        drop(favor_dynmods(&fresh(), true, &lock).unwrap());
        assert!(dynmods_on());
        let c = favor_dynmods(&fresh(), false, &lock).unwrap();
        assert!(matches!(c, DynmodsState::Untouched { on: false }));
        assert!(!dynmods_on());

        // Not wanted: nothing is set.
        assert!(matches!(
            favor_dynmods(&fresh(), false, &lock).unwrap(),
            DynmodsState::Untouched { on: false }
        ));
        assert!(!dynmods_on());

        // Set by the admin (no mark): neither a start without it nor the last holder clears it.
        set_v2_flag(&layout, "favordynmods", true).unwrap();
        assert!(matches!(
            favor_dynmods(&fresh(), false, &lock).unwrap(),
            DynmodsState::Untouched { on: true }
        ));
        let d = favor_dynmods(&fresh(), true, &lock).unwrap();
        assert!(matches!(d, DynmodsState::Held { set_now: false, .. }));
        assert!(!release_dynmods(&fresh(), d).unwrap());
        assert!(dynmods_on());
    }

    #[test]
    fn cgroup2_flags_are_read_from_the_mount() {
        let l = CgroupLayout::from_mounts(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate,favordynmods,memory_recursiveprot 0 0\n",
        )
        .unwrap();
        assert_eq!(l.v2_flags, ["nsdelegate", "favordynmods", "memory_recursiveprot"]);
    }

    #[test]
    fn no_cgroup2_is_an_error() {
        let e = CgroupLayout::from_mounts("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n").unwrap_err();
        assert!(matches!(e, CgroupError::NoCgroup2));
    }
}

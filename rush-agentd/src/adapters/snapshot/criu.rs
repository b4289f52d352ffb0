//! Process trees dumped and restored with the criu command-line tool.
//!
//! The CLI rather than the rust-criu crate: rust-criu speaks CRIU's RPC (`criu swrk`) in
//! protobuf, which would add protobuf code generation to the build for the same three
//! operations, and it still needs the criu binary; the CLI is what Debian ships and what
//! an operator can run by hand on the same image directory to see what went wrong.
//!
//! What the options are for (found by experiment in the 6.1 and 6.12 guests):
//! - `--freeze-cgroup DIR` (dump): criu stops the tree with the cgroup v2 freezer rather
//!   than one task at a time, so racing forks are caught; a cgroup frozen before the dump
//!   is left frozen after it (criu puts back the state it found).
//! - `--leave-running` (dump): a checkpoint, not a migration.
//! - `--manage-cgroups=ignore`: restored tasks are born where criu runs (the caller puts
//!   criu in a staging cgroup); criu neither records nor recreates cgroup properties.
//! - `--restore-detached --restore-sibling`: the restored root becomes a child of criu's
//!   parent (the daemon), which can then wait for it like any agent it spawned.
//! - `--leave-stopped`: the restored tasks stop (SIGSTOP) at the first instruction of
//!   their own code, so nothing of theirs runs until the caller has confined them.
//! - criu runs with `no_new_privs` for a restore: it does not restore the flag itself.
//! - `--inherit-fd fd[N]:PATH` (restore): files that grew since the dump (an agent's log)
//!   fail criu's size check ("has bad size"); the caller opens them and hands them over.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::SnapshotError;

/// Where criu is looked for when no path is configured.
const SEARCH: [&str; 4] = ["/usr/sbin/criu", "/usr/bin/criu", "/usr/local/sbin/criu", "/sbin/criu"];

/// The log file criu writes in the image directory, per operation.
pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";

/// How many lines of criu's log an error carries.
const LOG_TAIL: usize = 8;

/// Inherited fds are placed from here up in criu's process (clear of its own low fds).
const INHERIT_BASE: RawFd = 100;

#[derive(Debug, Clone)]
pub struct Criu {
    bin: PathBuf,
    /// `criu check`, run once: Err is the reason for users who ask for process snapshots.
    checked: OnceLock<Result<(), String>>,
}

/// What to dump.
#[derive(Debug, Clone)]
pub struct DumpRequest<'a> {
    /// The root of the tree (an agent's first process).
    pub root_pid: u32,
    pub images: &'a Path,
    /// The cgroup v2 directory holding the whole tree, frozen by criu while it collects.
    pub freeze_cgroup: Option<&'a Path>,
}

/// One file the restored tree gets from the caller instead of criu opening it again.
#[derive(Debug, Clone, Copy)]
pub struct Inherit<'a> {
    pub fd: BorrowedFd<'a>,
    /// The file's absolute path as the dumped process had it open.
    pub path: &'a Path,
}

#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    pub images: &'a Path,
    pub inherit: Vec<Inherit<'a>>,
    /// An open `cgroup.procs` criu joins before it starts, so that the restored tasks are
    /// born in that cgroup (with `--manage-cgroups=ignore`).
    pub join_cgroup: Option<BorrowedFd<'a>>,
    /// Run criu with `no_new_privs`, which every restored task inherits: criu 3.17 does not
    /// dump or restore that flag (found in the guests), and rush agents must keep it.
    pub no_new_privs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpStats {
    pub took: Duration,
    /// The image directory's size.
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub root_pid: u32,
    pub took: Duration,
}

/// The system's criu, located (`[snapshot] criu`, else the usual places) and checked
/// (`criu check`) on first use, once per daemon: a value the daemon hands to whoever
/// checkpoints processes.
#[derive(Debug, Default)]
pub struct CriuSetup {
    configured: Option<PathBuf>,
    found: OnceLock<Result<Criu, String>>,
}

impl CriuSetup {
    pub fn new(configured: Option<PathBuf>) -> CriuSetup {
        CriuSetup { configured, found: OnceLock::new() }
    }

    /// The checked criu, or why there is none.
    pub fn get(&self) -> Result<&Criu, SnapshotError> {
        let found =
            self.found.get_or_init(|| Criu::locate(self.configured.as_deref()).map_err(|e| e.to_string()));
        let criu = found.as_ref().map_err(|why| SnapshotError::Unavailable(why.clone()))?;
        criu.check()?;
        Ok(criu)
    }
}

impl Criu {
    /// The criu binary: `configured`, else the first of the usual places.
    pub fn locate(configured: Option<&Path>) -> Result<Criu, SnapshotError> {
        let found = match configured {
            Some(p) => p.is_file().then(|| p.to_path_buf()),
            None => SEARCH.iter().map(PathBuf::from).find(|p| p.is_file()),
        };
        let bin = found.ok_or_else(|| {
            SnapshotError::Unavailable(match configured {
                Some(p) => format!("CRIU is not available: {} does not exist", p.display()),
                None => "CRIU is not installed (no criu in /usr/sbin or /usr/bin): install the `criu` \
                         package to checkpoint processes"
                    .into(),
            })
        })?;
        Ok(Criu::at(bin))
    }

    /// The binary at `bin`, unchecked.
    pub fn at(bin: PathBuf) -> Criu {
        Criu { bin, checked: OnceLock::new() }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Whether criu works on this kernel (`criu check`, run once per `Criu`).
    pub fn check(&self) -> Result<(), SnapshotError> {
        let checked = self.checked.get_or_init(|| {
            let out = Command::new(&self.bin).arg("check").stdin(Stdio::null()).output();
            match out {
                Err(e) => Err(format!("cannot run {}: {e}", self.bin.display())),
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    Err(format!(
                        "`criu check` fails on this kernel ({}): {}",
                        o.status,
                        tail(&text, LOG_TAIL)
                    ))
                }
            }
        });
        checked.clone().map_err(|why| {
            SnapshotError::Unavailable(format!("CRIU cannot checkpoint processes here: {why}"))
        })
    }

    /// Dumps the tree under `req.root_pid` into `req.images` (created if missing) and
    /// leaves it running.
    pub fn dump(&self, req: &DumpRequest<'_>) -> Result<DumpStats, SnapshotError> {
        std::fs::create_dir_all(req.images).map_err(SnapshotError::io("creating", req.images))?;
        let start = Instant::now();
        let mut cmd = Command::new(&self.bin);
        cmd.args(dump_args(req)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        self.run(cmd, "criu dump", &req.images.join(DUMP_LOG))?;
        let took = start.elapsed();
        Ok(DumpStats { took, bytes: dir_size(req.images) })
    }

    /// Restores the tree in `req.images`, detached (the root is a child of the caller) and
    /// stopped: the caller confines it, then sends SIGCONT. The dumped pids must be free.
    pub fn restore(&self, req: &RestoreRequest<'_>) -> Result<Restored, SnapshotError> {
        let start = Instant::now();
        let pidfile = req.images.join("restore.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = Command::new(&self.bin);
        cmd.args(restore_args(req, &pidfile))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let moves: Vec<(RawFd, RawFd)> = req
            .inherit
            .iter()
            .enumerate()
            .map(|(i, h)| (h.fd.as_raw_fd(), INHERIT_BASE + i as RawFd))
            .collect();
        let join = req.join_cgroup.map(|fd| fd.as_raw_fd());
        let no_new_privs = req.no_new_privs;
        // SAFETY: the closure runs in the forked child before exec and only makes raw
        // system calls (write, dup2, fcntl, prctl) on fds the parent keeps open until the
        // spawn.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = join {
                    // "0" moves the writer itself: criu and everything it forks.
                    if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for &(from, to) in &moves {
                    // dup2 onto itself would keep CLOEXEC; both cases end inheritable.
                    if from == to {
                        let flags = libc::fcntl(from, libc::F_GETFD);
                        if flags < 0 || libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        self.run(cmd, "criu restore", &req.images.join(RESTORE_LOG))?;
        let text = std::fs::read_to_string(&pidfile).map_err(SnapshotError::io("reading", &pidfile))?;
        let root_pid = text.trim().parse().map_err(|_| SnapshotError::Tool {
            tool: "criu restore".into(),
            stderr: format!("{} holds {text:?}, not a pid", pidfile.display()),
        })?;
        Ok(Restored { root_pid, took: start.elapsed() })
    }

    fn run(&self, mut cmd: Command, tool: &str, log: &Path) -> Result<(), SnapshotError> {
        let out = cmd.output().map_err(|e| SnapshotError::Tool {
            tool: tool.into(),
            stderr: format!("cannot run {}: {e}", self.bin.display()),
        })?;
        if out.status.success() {
            return Ok(());
        }
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = if logged.is_empty() { tail(&stderr, LOG_TAIL) } else { tail(&logged, LOG_TAIL) };
        Err(SnapshotError::Tool {
            tool: tool.into(),
            stderr: format!("{} ({}; log {}):\n{why}", out.status, self.bin.display(), log.display()),
        })
    }
}

fn dump_args(req: &DumpRequest<'_>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "dump".into(),
        "--tree".into(),
        req.root_pid.to_string(),
        "--images-dir".into(),
        req.images.display().to_string(),
        "--log-file".into(),
        req.images.join(DUMP_LOG).display().to_string(),
        "-v4".into(),
        "--leave-running".into(),
        "--manage-cgroups=ignore".into(),
    ];
    if let Some(dir) = req.freeze_cgroup {
        a.extend(["--freeze-cgroup".into(), dir.display().to_string()]);
    }
    a
}

fn restore_args(req: &RestoreRequest<'_>, pidfile: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "restore".into(),
        "--images-dir".into(),
        req.images.display().to_string(),
        "--log-file".into(),
        req.images.join(RESTORE_LOG).display().to_string(),
        "-v4".into(),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--leave-stopped".into(),
        "--manage-cgroups=ignore".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
    ];
    for (i, h) in req.inherit.iter().enumerate() {
        a.extend([
            "--inherit-fd".into(),
            format!("fd[{}]:{}", INHERIT_BASE + i as RawFd, inherit_key(h.path)),
        ]);
    }
    a
}

/// criu names a regular file by its path without the leading `/`.
fn inherit_key(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

/// The lines that say why: criu's `Error` lines if it logged any (the last few), else the
/// last lines.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines.iter().copied().filter(|l| l.contains("Error")).collect();
    let pick = if errors.is_empty() { &lines[..] } else { &errors[..] };
    // One line: errors travel as one-line API messages.
    pick[pick.len().saturating_sub(n)..].join("; ")
}

/// Bytes of the regular files under `dir` (one level: criu's images are flat).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn errors_carry_the_error_lines_else_the_last_lines() {
        let log = "(00.01) a\n(00.02) Error (files-reg.c:2093): File x has bad size 2 (expect 1)\n\
                   (00.03) b\n(00.04) Error (cr-restore.c:2537): Restoring FAILED.\n(00.05) c\n";
        assert_eq!(
            tail(log, 8),
            "(00.02) Error (files-reg.c:2093): File x has bad size 2 (expect 1); \
             (00.04) Error (cr-restore.c:2537): Restoring FAILED."
        );
        assert_eq!(tail(log, 1), "(00.04) Error (cr-restore.c:2537): Restoring FAILED.");
        assert_eq!(tail("one\n\ntwo\nthree\n", 2), "two; three");
    }

    #[test]
    fn dump_and_restore_arguments() {
        let req = DumpRequest {
            root_pid: 42,
            images: Path::new("/i"),
            freeze_cgroup: Some(Path::new("/sys/fs/cgroup/r/a")),
        };
        assert_eq!(
            dump_args(&req).join(" "),
            "dump --tree 42 --images-dir /i --log-file /i/dump.log -v4 --leave-running \
             --manage-cgroups=ignore --freeze-cgroup /sys/fs/cgroup/r/a"
        );
        let log = std::fs::File::open("/dev/null").unwrap();
        let req = RestoreRequest {
            images: Path::new("/i"),
            inherit: vec![Inherit { fd: log.as_fd(), path: Path::new("/var/lib/rush/logs/a.log") }],
            join_cgroup: None,
            no_new_privs: true,
        };
        assert_eq!(
            restore_args(&req, Path::new("/i/restore.pid")).join(" "),
            "restore --images-dir /i --log-file /i/restore.log -v4 --restore-detached --restore-sibling \
             --leave-stopped --manage-cgroups=ignore --pidfile /i/restore.pid \
             --inherit-fd fd[100]:var/lib/rush/logs/a.log"
        );
    }

    #[test]
    fn a_missing_binary_says_so() {
        let e = Criu::locate(Some(Path::new("/nonexistent/criu"))).unwrap_err();
        assert_eq!(e.to_string(), "CRIU is not available: /nonexistent/criu does not exist");
    }

    /// A binary that fails `check` (here: `false`) is reported once, with the reason.
    #[test]
    fn a_failing_check_is_unavailable_and_cached() {
        let c = Criu::at(PathBuf::from("/bin/false"));
        let e = c.check().unwrap_err();
        assert!(matches!(e, SnapshotError::Unavailable(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("CRIU cannot checkpoint processes here: `criu check` fails"),
            "{e}"
        );
        assert!(c.checked.get().is_some());
    }
}

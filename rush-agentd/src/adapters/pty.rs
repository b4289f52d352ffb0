//! Agents' terminals: the pseudo-terminal pair, and the holder process that keeps its
//! master side.
//!
//! The master lives in a small holder process (`rush-agentd pty-holder`, this binary
//! re-executed), not in the daemon: a restarted daemon must give re-adopted agents their
//! terminals back, and a master fd dies with the process holding it. systemd's fd store
//! would keep the fd across a restart, but only under systemd and only while nothing
//! reads the pty meanwhile: the agent blocks once the pty buffer (a few KiB) is full.
//! The holder keeps reading, so an agent never stalls on a daemon restart, and the
//! scroll-back stays whole. It is the daemon's child in the daemon's cgroup (the unit's
//! `KillMode=process` leaves it running on a restart), and it ends when the agent's last
//! process closes the terminal.
//!
//! The holder listens on `<state>/pty/<agent>.sock` (the directory 0700 root) and accepts
//! only a root peer in its own cgroup: the daemon, never an agent (each in a cgroup of its
//! own). The daemon relays viewers' connections to it, after authorizing and auditing them.

pub mod holder;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use rush_proto::terminal::WindowSize;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot open a pseudo-terminal ({step})")]
    Open { step: &'static str, source: nix::Error },
    #[error("cannot start the terminal's holder process")]
    Holder(#[source] std::io::Error),
    #[error("the terminal's holder did not come up within {0:?}")]
    HolderTimeout(std::time::Duration),
}

/// A new pseudo-terminal: (master, slave), the slave owned by `uid`:`gid` (the agent may
/// then reopen /dev/tty) and sized `size`. Both CLOEXEC: the agent gets the slave by dup2
/// onto 0-2, nothing else gets either.
pub fn open(size: WindowSize, owner: Option<(u32, u32)>) -> Result<(OwnedFd, OwnedFd), PtyError> {
    let err = |step| move |source| PtyError::Open { step, source };
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("posix_openpt"))?;
    nix::pty::grantpt(&master).map_err(err("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(err("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(err("ptsname"))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err("opening the slave"))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into())).map_err(err("fchown"))?;
    }
    let master: OwnedFd = master.into();
    set_size(&master, size).map_err(err("TIOCSWINSZ"))?;
    Ok((master, slave))
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its foreground group).
pub fn set_size(fd: &impl AsRawFd, size: WindowSize) -> Result<(), nix::Error> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    nix::errno::Errno::result(r).map(drop)
}

/// Where an agent's terminal holder listens.
pub fn socket_path(dir: &Path, agent: &str) -> PathBuf {
    dir.join(format!("{agent}.sock"))
}

/// What the holder is started with.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    pub agent: String,
    pub socket: PathBuf,
    /// The agent's log: the plain text of the terminal stream goes there.
    pub log: PathBuf,
    /// Raw bytes of the terminal stream kept for a viewer who attaches later.
    pub scrollback: usize,
    pub size: WindowSize,
    /// Append to the log (a restart) instead of truncating it.
    pub append: bool,
}

/// Starts the holder for `master` and waits until it listens. The holder is this binary
/// (`/proc/self/exe`), in its own process group so that a signal to the daemon's group
/// (a Ctrl-C on a daemon run by hand) does not end the agents' terminals.
pub fn start_holder(master: OwnedFd, cfg: &HolderConfig) -> Result<u32, PtyError> {
    use std::os::unix::process::CommandExt;
    let dir = cfg.socket.parent().expect("the socket path has a directory");
    std::fs::create_dir_all(dir).map_err(PtyError::Holder)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(PtyError::Holder)?;
    let _ = std::fs::remove_file(&cfg.socket);
    let (ready_r, ready_w) = std::io::pipe().map_err(PtyError::Holder)?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("pty-holder")
        .arg("--agent")
        .arg(&cfg.agent)
        .arg("--socket")
        .arg(&cfg.socket)
        .arg("--log")
        .arg(&cfg.log)
        .arg("--scrollback")
        .arg(cfg.scrollback.to_string())
        .arg("--rows")
        .arg(cfg.size.rows.to_string())
        .arg("--cols")
        .arg(cfg.size.cols.to_string());
    if cfg.append {
        cmd.arg("--append");
    }
    // The master is the holder's stdin, its ready pipe its stdout; stderr stays the
    // daemon's (its own log lines).
    cmd.stdin(File::from(master)).stdout(ready_w).process_group(0);
    let child = cmd.spawn().map_err(PtyError::Holder)?;
    drop(cmd);
    // One byte once it listens; end of file if it failed (its stderr says why).
    let timeout = std::time::Duration::from_secs(10);
    let mut ready = [0u8; 1];
    let fd = std::os::fd::AsFd::as_fd(&ready_r);
    let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let n = nix::poll::poll(
        &mut pfd,
        nix::poll::PollTimeout::try_from(timeout).unwrap_or(nix::poll::PollTimeout::MAX),
    )
    .map_err(|e| PtyError::Holder(e.into()))?;
    if n == 0 {
        return Err(PtyError::HolderTimeout(timeout));
    }
    match std::io::Read::read(&mut &ready_r, &mut ready) {
        Ok(1) => {}
        _ => {
            return Err(PtyError::Holder(std::io::Error::other(
                "it exited before listening (see the daemon's log)",
            )));
        }
    }
    let pid = child.id();
    // A thread waits for it, so that no zombie is left when it ends (after a daemon
    // restart, init reaps it instead).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

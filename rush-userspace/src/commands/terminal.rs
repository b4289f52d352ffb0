//! `rush agent attach` and `rush agent send`: an agent's terminal at ours.
//!
//! A blocking poll loop over three fds (our stdin, the daemon's connection, a self-pipe
//! for SIGWINCH): one thread, no runtime, as the rest of `rush`.

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::termios::{self, SetArg};
use rush_proto::terminal::{AttachMode, Frame, WindowSize};

use super::Ctx;
use crate::error::Result;
use crate::render::sanitize;

/// How an attachment ended.
pub enum Ended {
    /// The detach keys (or our terminal closed): the agent runs on.
    Detached,
    /// The agent's terminal closed: all its processes are gone.
    Closed,
}

pub fn attach(ctx: &mut Ctx, name: &str, mode: AttachMode, detach_keys: &[u8]) -> Result<u8> {
    match session(ctx, name, mode, detach_keys)? {
        Ended::Detached => {
            eprintln!(
                "rush: detached from {n}; it is still running (`rush agent attach {n}` to return)",
                n = sanitize(name)
            );
            Ok(0)
        }
        Ended::Closed => exit_code(ctx, name),
    }
}

/// The agent's exit status as ours, once the daemon has seen it exit.
pub fn exit_code(ctx: &mut Ctx, name: &str) -> Result<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info = ctx.connect()?.agent_status(Some(name))?;
        if let Some(status) = info.exit {
            if status.code.is_none() && status.signal.is_none() {
                eprintln!(
                    "rush: {} ended; its exit status is unknown (the daemon was restarted while it ran)",
                    sanitize(name)
                );
            }
            return Ok((status.shell_code() & 0xff) as u8);
        }
        if std::time::Instant::now() > deadline {
            eprintln!("rush: the terminal of {} closed, but it has not exited", sanitize(name));
            return Ok(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn send(ctx: &mut Ctx, name: &str, text: &str, enter: bool) -> Result<u8> {
    let mut text = text.to_owned();
    if enter {
        text.push('\r');
    }
    let bytes = ctx.connect()?.send_terminal(name, &text)?;
    if ctx.out.json {
        ctx.out.document(&serde_json::json!({ "bytes": bytes }))?;
    } else {
        ctx.out.text(&format!("typed {bytes} bytes into {}\n", sanitize(name)))?;
    }
    Ok(0)
}

/// Attached until detached or the terminal closes.
pub fn session(ctx: &mut Ctx, name: &str, mode: AttachMode, detach_keys: &[u8]) -> Result<Ended> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let size = window_size(stdout.as_fd()).unwrap_or_default();
    let (mut conn, early) = ctx.connect()?.attach_terminal(name, mode, size)?;
    let winch = WinchPipe::install()?;
    let raw = RawMode::enter(stdin.as_fd());
    let ended = relay(&mut conn, early, mode, detach_keys, &winch).map_err(crate::error::Error::from);
    drop(raw);
    if stdout.is_terminal() {
        // Whatever the agent left set (a full-screen program's alternate screen, a hidden
        // cursor, mouse reporting), this terminal is the user's again.
        let mut out = stdout.lock();
        let _ = out.write_all(
            b"\x1b[0m\x1b[?25h\x1b[?1l\x1b>\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1049l\r\n",
        );
        let _ = out.flush();
    }
    ended
}

fn relay(
    conn: &mut UnixStream,
    mut inbox: Vec<u8>,
    mode: AttachMode,
    detach_keys: &[u8],
    winch: &WinchPipe,
) -> anyhow::Result<Ended> {
    let stdin = io::stdin();
    let mut stdout = io::stdout();
    let mut stdin_open = mode != AttachMode::Read;
    // Keys that may begin the detach sequence, held back until it is clear they do not.
    let mut held: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Frames already read first.
        while let Some((frame, n)) = Frame::decode(&inbox).context("the daemon sent a bad terminal frame")? {
            inbox.drain(..n);
            match frame {
                Frame::Output(bytes) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                Frame::Notice(text) => {
                    let mut err = io::stderr();
                    let _ = write!(err, "\r\n[rush: {}]\r\n", sanitize(&text));
                }
                Frame::Closed => return Ok(Ended::Closed),
                _ => {}
            }
        }
        let conn_fd = conn.try_clone()?;
        let mut fds = vec![
            PollFd::new(conn_fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(winch.read.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow::Error::from(e).context("poll")),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
        };
        let (conn_ready, winch_ready, stdin_ready) = (ready(0), ready(1), ready(2));
        drop(fds);
        if conn_ready {
            let n = match conn.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow::Error::from(e).context("the daemon's connection")),
            };
            if n == 0 {
                // The daemon went (a restart): the agent runs on.
                eprintln!("\r\nrush: the daemon closed the connection");
                return Ok(Ended::Detached);
            }
            inbox.extend_from_slice(&buf[..n]);
        }
        if winch_ready {
            winch.drain();
            if let Some(size) = window_size(io::stdout().as_fd()) {
                conn.write_all(&Frame::Resize(size).encode())?;
            }
        }
        if stdin_ready {
            let n = match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // Our stdin ended (a pipe, or the terminal is gone): watch on without it.
                stdin_open = false;
                if !io::stdin().is_terminal() {
                    continue;
                }
                return Ok(Ended::Detached);
            }
            let mut typed = Vec::with_capacity(n);
            for &b in &buf[..n] {
                held.push(b);
                if detach_keys.is_empty() || !detach_keys.starts_with(&held) {
                    // Not (or no longer) the detach sequence: a key that restarts it stays held.
                    let last = held.pop().expect("just pushed");
                    typed.append(&mut held);
                    if detach_keys.first() == Some(&last) {
                        held.push(last);
                    } else {
                        typed.push(last);
                    }
                } else if held == detach_keys {
                    if !typed.is_empty() {
                        conn.write_all(&Frame::Input(typed).encode())?;
                    }
                    return Ok(Ended::Detached);
                }
            }
            if !typed.is_empty() {
                conn.write_all(&Frame::Input(typed).encode())?;
            }
        }
    }
}

/// Our window size, if stdout is a terminal.
pub fn stdout_size() -> Option<WindowSize> {
    window_size(io::stdout().as_fd())
}

/// The window size of a terminal, if `fd` is one.
fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    let mut ws: libc::winsize = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize { rows: ws.ws_row, cols: ws.ws_col })
}

/// Our terminal in raw mode while attached (every key to the agent, no echo of ours);
/// restored on drop.
struct RawMode(Option<termios::Termios>);

impl RawMode {
    fn enter(fd: BorrowedFd<'_>) -> RawMode {
        let Ok(saved) = termios::tcgetattr(fd) else { return RawMode(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

/// SIGWINCH as a readable pipe (the handler writes a byte: async-signal-safe).
struct WinchPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

static WINCH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, so a full pipe
        // (a resize already pending) drops the byte instead of blocking.
        unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
}

impl WinchPipe {
    fn install() -> Result<WinchPipe> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).context("pipe2")?;
        WINCH_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(SigHandler::Handler(on_winch), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handler only reads an atomic and calls write(2).
        unsafe { sigaction(Signal::SIGWINCH, &action) }.context("cannot install a SIGWINCH handler")?;
        Ok(WinchPipe { read, _write: write })
    }

    fn drain(&self) {
        let mut b = [0u8; 64];
        while matches!(nix::unistd::read(self.read.as_fd(), &mut b), Ok(n) if n > 0) {}
    }
}

impl Drop for WinchPipe {
    fn drop(&mut self) {
        // The handler must not write to the pipe's fd number once it is closed (reused).
        WINCH_FD.store(-1, Ordering::Relaxed);
    }
}

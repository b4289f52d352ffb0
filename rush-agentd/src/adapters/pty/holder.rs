//! The terminal holder (`rush-agentd pty-holder`): one per agent on a terminal. It reads
//! the pty master (its stdin) for as long as the agent has the terminal open, and keeps
//! what a viewer attaching later needs: the raw stream's last bytes, and the screen as a
//! terminal would show it (vt100), for full-screen programs whose screen is not the sum
//! of their output. It writes the stream's plain text (escape sequences dropped, a line
//! redrawn after `\r` kept as last drawn) to the agent's log for `rush agent logs`.
//!
//! Viewers come through the daemon (see the module above): the first frame of each is
//! a [`Hello`] saying what it may do. One of them at a time types (the writer); its window
//! size is the terminal's.
//!
//! One thread (a current-thread runtime): the state is shared by `Rc<RefCell<_>>`, and no
//! borrow is held across an `.await`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use rush_proto::terminal::{AttachMode, Frame, Hello, WindowSize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::HolderConfig;

/// Frames queued for a viewer that reads too slowly before it is let go (it can attach
/// again and is shown the screen).
const VIEWER_QUEUE: usize = 1024;

/// Runs the holder until the agent's terminal closes. The master is fd 0; one byte on
/// fd 1 says the socket listens.
pub fn run(cfg: HolderConfig) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cfg))
}

async fn serve(cfg: HolderConfig) -> io::Result<()> {
    // Take the master and the ready pipe off 0 and 1 (then /dev/null there: nothing else
    // in this process should read the terminal or keep the pipe open).
    let master = take_fd(0)?;
    let mut ready = File::from(take_fd(1)?);
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    // SAFETY: the AsyncFd owns the File, so the fd stays open and the same for its life.
    let master = Rc::new(unsafe { AsyncFd::register(File::from(master)) }.map_err(io::Error::from)?);

    let log = {
        let mut o = std::fs::OpenOptions::new();
        if cfg.append {
            o.append(true)
        } else {
            o.write(true).truncate(true)
        };
        o.create(true).open(&cfg.log)?
    };
    let listener = {
        let std = std::os::unix::net::UnixListener::bind(&cfg.socket)?;
        std::fs::set_permissions(&cfg.socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(std)?
    };
    let own_cgroup = crate::adapters::cgroup::process_cgroup_v2(std::process::id() as i32);
    // Removed at the end only if still ours (a later agent of the same name has its own).
    let bound = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cfg.socket)?);
    ready.write_all(b"1")?;
    drop(ready);

    let term = Rc::new(RefCell::new(Term::new(&cfg, log, master.as_raw_fd())));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = master.readable() => {
                let mut guard = r?;
                match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from)) {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => term.borrow_mut().output(&buf[..n]),
                    // EIO: no process has the terminal open any more.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => break,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {}
                }
            }
            c = listener.accept() => {
                let Ok((stream, _)) = c else { continue };
                if !trusted(&stream, own_cgroup.as_deref()) {
                    continue;
                }
                tokio::task::spawn_local(viewer(stream, term.clone(), master.clone()));
            }
        }
    }
    if std::fs::metadata(&cfg.socket).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == bound) {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    let writers = term.borrow_mut().close();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for w in writers {
            let _ = w.await;
        }
    })
    .await;
    Ok(())
}

/// Moves the fd off `n` and puts /dev/null there.
fn take_fd(n: i32) -> io::Result<OwnedFd> {
    // SAFETY: fds 0 and 1 are open (the daemon set them) and owned by nobody else here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
    let fd = borrowed.try_clone_to_owned()?;
    let null = File::options().read(true).write(true).open("/dev/null")?;
    // SAFETY: dup2 onto a standard fd, from a valid fd.
    if unsafe { libc::dup2(null.as_raw_fd(), n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Only the daemon may connect: root, in the holder's own cgroup (an agent is in its own).
fn trusted(stream: &UnixStream, own_cgroup: Option<&str>) -> bool {
    let Ok(cred) = stream.peer_cred() else { return false };
    let Some(pid) = cred.pid() else { return false };
    cred.uid() == 0
        && own_cgroup.is_some()
        && crate::adapters::cgroup::process_cgroup_v2(pid).as_deref() == own_cgroup
}

struct Viewer {
    tx: mpsc::Sender<Frame>,
    mode: AttachMode,
    who: String,
    size: WindowSize,
}

struct Term {
    agent: String,
    screen: vt100::Parser,
    /// The raw stream's last bytes (at most `scrollback_cap`).
    scrollback: VecDeque<u8>,
    scrollback_cap: usize,
    /// Whether `scrollback` lost its start (a replay then begins at a line).
    truncated: bool,
    plain: vte::Parser,
    log: PlainLog,
    viewers: BTreeMap<u64, Viewer>,
    writer: Option<u64>,
    next_id: u64,
    /// The master (owned by `serve`'s AsyncFd, which outlives this), for TIOCSWINSZ.
    master_fd: i32,
    closing: Vec<tokio::task::JoinHandle<()>>,
}

impl Term {
    fn new(cfg: &HolderConfig, log: File, master_fd: i32) -> Term {
        let nz = |n: u16| std::num::NonZeroU16::new(n.max(1)).expect("at least 1");
        Term {
            agent: cfg.agent.clone(),
            screen: vt100::Parser::new(nz(cfg.size.rows), nz(cfg.size.cols), 0),
            scrollback: VecDeque::with_capacity(cfg.scrollback.min(1 << 20)),
            scrollback_cap: cfg.scrollback,
            truncated: false,
            plain: vte::Parser::new(),
            log: PlainLog { out: log, line: String::new(), cr: false, alternate: false },
            viewers: BTreeMap::new(),
            writer: None,
            next_id: 1,
            master_fd,
            closing: Vec::new(),
        }
    }

    fn output(&mut self, bytes: &[u8]) {
        self.screen.process(bytes);
        self.plain.advance(&mut self.log, bytes);
        self.scrollback.extend(bytes);
        if self.scrollback.len() > self.scrollback_cap {
            let extra = self.scrollback.len() - self.scrollback_cap;
            self.scrollback.drain(..extra);
            self.truncated = true;
        }
        let slow: Vec<u64> = self
            .viewers
            .iter()
            .filter(|(_, v)| v.mode != AttachMode::Send)
            .filter(|(_, v)| v.tx.try_send(Frame::Output(bytes.to_vec())).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            // Too slow (or gone): let it go; it may attach again.
            self.leave(id);
        }
    }

    /// What a viewer attaching now is shown first.
    fn replay(&self) -> Vec<u8> {
        let screen = self.screen.screen();
        if screen.alternate_screen() {
            // A full-screen program: its screen as it is, not the history that drew it.
            let mut out = b"\x1b[?1049h\x1b[H\x1b[2J".to_vec();
            out.extend_from_slice(screen.state_formatted().as_bytes());
            return out;
        }
        let raw: Vec<u8> = self.scrollback.iter().copied().collect();
        // Lost its start: begin at a line, not in the middle of an escape sequence.
        let start = if self.truncated {
            raw.iter().position(|&b| b == b'\n').map_or(raw.len(), |p| p + 1)
        } else {
            0
        };
        let mut out = raw[start..].to_vec();
        out.extend_from_slice(screen.input_mode_formatted().as_bytes());
        out
    }

    fn notice(&mut self, id: u64, text: String) {
        if let Some(v) = self.viewers.get(&id) {
            let _ = v.tx.try_send(Frame::Notice(text));
        }
    }

    fn join(&mut self, hello: Hello, tx: mpsc::Sender<Frame>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let size = WindowSize { rows: hello.rows, cols: hello.cols };
        let mode = hello.mode;
        if mode != AttachMode::Send {
            let _ = tx.try_send(Frame::Output(self.replay()));
        }
        self.viewers.insert(id, Viewer { tx, mode, who: hello.who.clone(), size });
        match (mode, self.writer) {
            (AttachMode::Write, None) | (AttachMode::Steal, None) => self.take_keyboard(id),
            (AttachMode::Write, Some(w)) => {
                let by = self.viewers.get(&w).map(|v| v.who.clone()).unwrap_or_default();
                self.notice(
                    id,
                    format!(
                        "{by} is typing in {}: read-only until they detach (`rush agent attach --steal` takes over)",
                        self.agent
                    ),
                );
            }
            (AttachMode::Steal, Some(w)) => {
                self.notice(
                    w,
                    format!("{} took over the keyboard of {}: read-only now", hello.who, self.agent),
                );
                self.take_keyboard(id);
            }
            (AttachMode::Read | AttachMode::Send, _) => {}
        }
        id
    }

    fn take_keyboard(&mut self, id: u64) {
        self.writer = Some(id);
        if let Some(size) = self.viewers.get(&id).map(|v| v.size) {
            self.apply_size(size);
        }
    }

    fn apply_size(&mut self, size: WindowSize) {
        if size.rows == 0 || size.cols == 0 {
            return;
        }
        let (rows, cols) = self.screen.screen().size();
        if (rows.get(), cols.get()) == (size.rows, size.cols) {
            return;
        }
        let nz = |n: u16| std::num::NonZeroU16::new(n).expect("checked above");
        self.screen.screen_mut().set_size(nz(size.rows), nz(size.cols));
        // SAFETY: the master fd is open for the holder's life; the borrow is for the call.
        let master = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.master_fd) };
        if let Err(e) = super::set_size(&master, size) {
            eprintln!("rush-agentd pty-holder ({}): TIOCSWINSZ: {e}", self.agent);
        }
    }

    fn resize(&mut self, id: u64, size: WindowSize) {
        if let Some(v) = self.viewers.get_mut(&id) {
            v.size = size;
        }
        if self.writer == Some(id) {
            self.apply_size(size);
        }
    }

    fn may_type(&self, id: u64) -> bool {
        self.writer == Some(id) || self.viewers.get(&id).is_some_and(|v| v.mode == AttachMode::Send)
    }

    fn leave(&mut self, id: u64) {
        if self.viewers.remove(&id).is_none() {
            return;
        }
        if self.writer == Some(id) {
            self.writer = None;
            // The longest-waiting viewer that asked to type gets the keyboard.
            let next = self
                .viewers
                .iter()
                .find(|(_, v)| matches!(v.mode, AttachMode::Write | AttachMode::Steal))
                .map(|(id, _)| *id);
            if let Some(next) = next {
                self.take_keyboard(next);
                self.notice(next, format!("you have the keyboard of {} now", self.agent));
            }
        }
    }

    /// The terminal closed: every viewer is told, the log gets its last line. The viewers'
    /// writer tasks, to wait for.
    fn close(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.log.finish();
        for v in self.viewers.values() {
            let _ = v.tx.try_send(Frame::Closed);
        }
        self.viewers.clear();
        std::mem::take(&mut self.closing)
    }
}

/// The plain text of the terminal stream, a line at a time.
struct PlainLog {
    out: File,
    line: String,
    /// A carriage return came last: the next character starts the line over (a progress
    /// line redrawn is logged as last drawn).
    cr: bool,
    /// A full-screen program's screen is not logged.
    alternate: bool,
}

impl PlainLog {
    fn write_line(&mut self) {
        if let Err(e) = self.out.write_all(self.line.as_bytes()) {
            // The log is best effort: the terminal goes on.
            eprintln!("rush-agentd pty-holder: log: {e}");
        }
        self.line.clear();
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.line.push('\n');
            self.write_line();
        }
    }
}

impl vte::Perform for PlainLog {
    fn print(&mut self, c: char) {
        if self.alternate {
            return;
        }
        if self.cr {
            self.line.clear();
            self.cr = false;
        }
        self.line.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                self.cr = false;
                if !self.alternate {
                    self.line.push('\n');
                    self.write_line();
                }
            }
            b'\r' => self.cr = true,
            b'\t' if !self.alternate => self.line.push('\t'),
            0x08 => {
                self.line.pop();
            }
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &vte::Params, intermediates: &[u8], _ignore: bool, action: char) {
        if intermediates == b"?"
            && matches!(action, 'h' | 'l')
            && params.iter().any(|p| matches!(p.first(), Some(47 | 1047 | 1049)))
        {
            if action == 'h' && !self.line.is_empty() {
                self.line.push('\n');
                self.write_line();
            }
            self.alternate = action == 'h';
        }
    }
}

/// One viewer's connection (relayed by the daemon).
async fn viewer(stream: UnixStream, term: Rc<RefCell<Term>>, master: Rc<AsyncFd<File>>) {
    let (mut rd, wr) = stream.into_split();
    let mut buf = Vec::new();
    let hello = match tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd, &mut buf)).await {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        _ => return,
    };
    let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
    let writes = tokio::task::spawn_local(write_frames(wr, rx));
    let id = {
        let mut t = term.borrow_mut();
        t.closing.retain(|w| !w.is_finished());
        t.closing.push(writes);
        t.join(hello, tx)
    };
    loop {
        let frame = match read_frame(&mut rd, &mut buf).await {
            Ok(Some(f)) => f,
            _ => break,
        };
        match frame {
            Frame::Input(bytes) => {
                let may = term.borrow().may_type(id);
                if may && write_master(&master, &bytes).await.is_err() {
                    break;
                }
            }
            Frame::Resize(size) => term.borrow_mut().resize(id, size),
            _ => {}
        }
    }
    term.borrow_mut().leave(id);
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> io::Result<Option<Frame>> {
    loop {
        if let Some((f, n)) = Frame::decode(buf)? {
            buf.drain(..n);
            return Ok(Some(f));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write_frames(mut wr: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        let closed = frame == Frame::Closed;
        if wr.write_all(&frame.encode()).await.is_err() || closed {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn write_master(master: &AsyncFd<File>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(io::Error::from)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(input: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("rush-plain-{}-{}", std::process::id(), input.len()));
        let mut log =
            PlainLog { out: File::create(&dir).unwrap(), line: String::new(), cr: false, alternate: false };
        let mut p = vte::Parser::new();
        p.advance(&mut log, input);
        log.finish();
        let s = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        s
    }

    #[test]
    fn the_log_is_the_text_without_escapes() {
        assert_eq!(plain(b"\x1b[1;31mred\x1b[0m text\r\nnext\r\n"), "red text\nnext\n");
    }

    #[test]
    fn a_redrawn_line_is_logged_as_last_drawn() {
        assert_eq!(plain(b"10%\r50%\r100%\r\ndone\r\n"), "100%\ndone\n");
        assert_eq!(plain(b"ab\x08c\r\n"), "ac\n");
    }

    #[test]
    fn a_full_screen_program_is_left_out_of_the_log() {
        assert_eq!(plain(b"before\r\n\x1b[?1049h\x1b[Hscreen text\x1b[?1049lafter\r\n"), "before\nafter\n");
    }

    #[test]
    fn a_partial_last_line_is_kept() {
        assert_eq!(plain(b"$ "), "$ \n");
    }
}

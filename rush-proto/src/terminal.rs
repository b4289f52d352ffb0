//! An agent's terminal on the wire. After the daemon answers `AttachTerminal` with
//! [`crate::Response::TerminalAttached`], that connection stops carrying JSON lines: both
//! sides send [`Frame`]s (a tag byte, a big-endian u32 length, the payload) to and from the
//! terminal's holder, the process that keeps the agent's pty master (the daemon relays).
//! The same frames are what the daemon and the holder speak.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The largest frame payload accepted (a read of the pty is far smaller).
pub const MAX_FRAME: usize = 1 << 20;

/// What an attached connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Read and type; while another writer is attached, read-only until it leaves.
    Write,
    /// Read only.
    Read,
    /// Take the writer's place; the writer before becomes read-only.
    Steal,
    /// Type only (`rush agent send`): no screen, no writer's place needed.
    Send,
}

/// The first frame the daemon sends the holder for a connection: what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub mode: AttachMode,
    /// Who attaches (for the notices other viewers get).
    pub who: String,
    /// The viewer's window; a writer's is applied to the pty.
    pub rows: u16,
    pub cols: u16,
}

/// A window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for WindowSize {
    fn default() -> Self {
        WindowSize { rows: 24, cols: 80 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Daemon → holder, first and only once per connection.
    Hello(Hello),
    /// Viewer → agent: typed bytes.
    Input(Vec<u8>),
    /// Viewer → holder: the viewer's window changed.
    Resize(WindowSize),
    /// Holder → viewer: what the agent wrote (the replay first, on attach).
    Output(Vec<u8>),
    /// Holder → viewer: a message for the person, not the screen.
    Notice(String),
    /// Holder → viewer: the agent's terminal closed (all its processes gone).
    Closed,
}

const HELLO: u8 = 1;
const INPUT: u8 = 2;
const RESIZE: u8 = 3;
const OUTPUT: u8 = 4;
const NOTICE: u8 = 5;
const CLOSED: u8 = 6;

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Frame::Hello(h) => (HELLO, serde_json::to_vec(h).expect("a hello serializes")),
            Frame::Input(b) => (INPUT, b.clone()),
            Frame::Resize(w) => (RESIZE, [w.rows.to_be_bytes(), w.cols.to_be_bytes()].concat()),
            Frame::Output(b) => (OUTPUT, b.clone()),
            Frame::Notice(s) => (NOTICE, s.as_bytes().to_vec()),
            Frame::Closed => (CLOSED, Vec::new()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(tag);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// A whole frame at the start of `buf`: the frame and its length; Ok(None) when
    /// more bytes are needed.
    pub fn decode(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("terminal frame of {len} bytes")));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let p = &buf[5..5 + len];
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad terminal frame: {what}"));
        let frame = match buf[0] {
            HELLO => Frame::Hello(serde_json::from_slice(p).map_err(|_| bad("hello"))?),
            INPUT => Frame::Input(p.to_vec()),
            RESIZE if len == 4 => Frame::Resize(WindowSize {
                rows: u16::from_be_bytes([p[0], p[1]]),
                cols: u16::from_be_bytes([p[2], p[3]]),
            }),
            OUTPUT => Frame::Output(p.to_vec()),
            NOTICE => Frame::Notice(String::from_utf8_lossy(p).into_owned()),
            CLOSED => Frame::Closed,
            t => return Err(bad(&format!("tag {t}"))),
        };
        Ok(Some((frame, 5 + len)))
    }

    /// Reads one frame (blocking); None at a clean end of stream.
    pub fn read_from(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<Frame>> {
        loop {
            if let Some((f, n)) = Frame::decode(buf)? {
                buf.drain(..n);
                return Ok(Some(f));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = r.read(&mut chunk)?;
            if n == 0 {
                return if buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }
}

/// `rush agent attach`'s detach keys unless told others: Ctrl-\ then d.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-\\,d";

/// The detach sequence: keys as `docker attach --detach-keys` spells them, comma-separated:
/// `ctrl-X` (X a letter or one of `@[\]^_`) or one printable character. Default `ctrl-\,d`.
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for key in s.split(',') {
        let b = if let Some(c) = key.strip_prefix("ctrl-") {
            match c.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [c @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_')] => c - b'@',
                _ => return Err(format!("detach key {key:?}: ctrl- takes a letter or one of @[\\]^_")),
            }
        } else {
            match key.as_bytes() {
                [c] if c.is_ascii_graphic() => *c,
                _ => return Err(format!("detach key {key:?}: a printable character or ctrl-X")),
            }
        };
        out.push(b);
    }
    if out.is_empty() || s.is_empty() {
        return Err("no detach keys".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_input_waits() {
        let frames = [
            Frame::Hello(Hello { mode: AttachMode::Steal, who: "uid 0".into(), rows: 40, cols: 120 }),
            Frame::Input(b"ls\r".to_vec()),
            Frame::Resize(WindowSize { rows: 50, cols: 200 }),
            Frame::Output(vec![0x1b, b'[', b'H']),
            Frame::Notice("read-only".into()),
            Frame::Closed,
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        assert_eq!(Frame::decode(&bytes[..3]).unwrap(), None);
        let mut r = std::io::Cursor::new(bytes);
        let mut buf = Vec::new();
        for f in &frames {
            assert_eq!(Frame::read_from(&mut r, &mut buf).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read_from(&mut r, &mut buf).unwrap(), None);
        let mut huge = vec![OUTPUT];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(Frame::decode(&huge).is_err());
        assert!(Frame::decode(&[9, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys("ctrl-\\,d").unwrap(), [0x1c, b'd']);
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), [0x10, 0x11]);
        for bad in ["", "ctrl-", "ctrl-1", "dd", "ctrl-p,", " "] {
            assert!(parse_detach_keys(bad).is_err(), "{bad:?}");
        }
    }
}

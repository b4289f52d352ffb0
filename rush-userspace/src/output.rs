//! stdout, as text or JSON. Every write goes through here so a closed pipe
//! (`rush audit --follow | head`) ends the program quietly instead of panicking.

use std::io::{self, Write};

use serde::Serialize;

use crate::error::{Error, Result};

pub struct Output<W: Write> {
    pub json: bool,
    out: W,
}

impl Output<io::StdoutLock<'static>> {
    pub fn stdout(json: bool) -> Self {
        Output { json, out: io::stdout().lock() }
    }
}

impl<W: Write> Output<W> {
    /// Text as it is, flushed (for streams).
    pub fn text(&mut self, s: &str) -> Result<()> {
        self.out.write_all(s.as_bytes()).and_then(|()| self.out.flush()).map_err(Error::stdout)
    }

    /// Bytes exactly as they are (a published result), flushed.
    pub fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).and_then(|()| self.out.flush()).map_err(Error::stdout)
    }

    /// One pretty-printed JSON document and a newline.
    pub fn document<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let mut buf = serde_json::to_vec_pretty(value).expect("protocol types serialize");
        buf.push(b'\n');
        self.out.write_all(&buf).and_then(|()| self.out.flush()).map_err(Error::stdout)
    }

    /// One compact JSON object on its own line (NDJSON), flushed.
    pub fn json_line<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let mut buf = serde_json::to_vec(value).expect("protocol types serialize");
        buf.push(b'\n');
        self.out.write_all(&buf).and_then(|()| self.out.flush()).map_err(Error::stdout)
    }
}

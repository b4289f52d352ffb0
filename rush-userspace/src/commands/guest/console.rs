//! Reading the guest's serial console: the bytes between the start marker and the status
//! line are the command's output and are passed on as they come; everything else (the
//! kernel, /init) is kept as a short tail, shown only when the guest fails.

use std::collections::VecDeque;

use super::script;

/// Console lines kept for a failure's report.
const TAIL: usize = 40;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Booting: until the start marker.
    Before,
    /// The command's output.
    Output,
    /// After the status line.
    After,
}

#[derive(Debug)]
pub struct Console {
    start: Vec<u8>,
    exit_prefix: Vec<u8>,
    state: State,
    /// Before/After: the line so far. Output: the bytes held back while the line may still
    /// be the status line.
    line: Vec<u8>,
    /// Output: whether the current line may still be the status line.
    candidate: bool,
    /// Output: a line ended; its newline is passed on when more output follows (the one
    /// before the status line is the script's own).
    pending_nl: bool,
    /// The console translates \n to \r\n (the script's `stty -opost` failed): undone.
    crlf: bool,
    pending_cr: bool,
    status: Option<i32>,
    tail: VecDeque<String>,
}

impl Console {
    pub fn new(nonce: &str) -> Console {
        Console {
            start: script::start_marker(nonce).into_bytes(),
            exit_prefix: script::exit_prefix(nonce).into_bytes(),
            state: State::Before,
            line: Vec::new(),
            candidate: true,
            pending_nl: false,
            crlf: false,
            pending_cr: false,
            status: None,
            tail: VecDeque::new(),
        }
    }

    /// Whether the command started (its start marker came).
    pub fn started(&self) -> bool {
        self.state != State::Before
    }

    /// The command's exit status, once its status line came.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// The last console lines outside the command's output.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// Takes a chunk of the console; appends to `out` what is the command's output.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            match self.state {
                State::Before | State::After => self.console_byte(b),
                State::Output => self.output_byte(b, out),
            }
        }
    }

    /// The console ended: output held back (a last line that was no status line) is
    /// passed on, a partial console line kept.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Output if !self.line.is_empty() => {
                if self.pending_nl {
                    out.push(b'\n');
                }
                out.append(&mut self.line);
            }
            State::Output => {}
            State::Before | State::After => {
                if !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.keep(&line);
                }
            }
        }
    }

    fn console_byte(&mut self, b: u8) {
        if b != b'\n' {
            self.line.push(b);
            return;
        }
        let line = std::mem::take(&mut self.line);
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        if self.state == State::Before && text == self.start.as_slice() {
            self.state = State::Output;
            self.crlf = line.ends_with(b"\r");
            return;
        }
        self.keep(text);
    }

    fn keep(&mut self, line: &[u8]) {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(String::from_utf8_lossy(line).into_owned());
    }

    fn output_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == b'\n' {
            if self.candidate {
                let line = std::mem::take(&mut self.line);
                let text = if self.crlf { line.strip_suffix(b"\r").unwrap_or(&line) } else { &line[..] };
                if let Some(rc) = self.status_of(text) {
                    self.status = Some(rc);
                    self.state = State::After;
                    return;
                }
                if self.pending_nl {
                    out.push(b'\n');
                }
                out.extend_from_slice(text);
            }
            self.pending_cr = false;
            self.pending_nl = true;
            self.candidate = true;
            return;
        }
        if self.candidate {
            self.line.push(b);
            if self.may_be_status(&self.line) {
                return;
            }
            self.candidate = false;
            if std::mem::take(&mut self.pending_nl) {
                out.push(b'\n');
            }
            for b in std::mem::take(&mut self.line) {
                self.emit(b, out);
            }
            return;
        }
        self.emit(b, out);
    }

    /// One byte of output, holding back a \r that may be half of a translated \r\n.
    fn emit(&mut self, b: u8, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
        if self.crlf && b == b'\r' {
            self.pending_cr = true;
        } else {
            out.push(b);
        }
    }

    fn may_be_status(&self, line: &[u8]) -> bool {
        let p = &self.exit_prefix;
        if line.len() <= p.len() {
            return p.starts_with(line);
        }
        let rest = &line[p.len()..];
        line.starts_with(p)
            && rest.len() <= 16
            && rest.iter().all(|c| c.is_ascii_digit() || b"-@\r".contains(c))
    }

    fn status_of(&self, line: &[u8]) -> Option<i32> {
        let rest = line.strip_prefix(self.exit_prefix.as_slice())?.strip_suffix(b"@@")?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console as QEMU would send it, fed in chunks of `step` bytes.
    fn run(console: &str, step: usize) -> (Vec<u8>, Option<i32>, Vec<String>) {
        let mut c = Console::new("N1");
        let mut out = Vec::new();
        for chunk in console.as_bytes().chunks(step) {
            c.feed(chunk, &mut out);
        }
        c.finish(&mut out);
        (out, c.status(), c.tail())
    }

    const BOOT: &str = "[    0.1] Linux version 6.12\nrush-vm: init started\n";
    const END: &str =
        "rush-vm: payload finished with 0 after 3.1s\n\n@@EXIT=0@@\n[ 3.2] reboot: Power down\n";

    #[test]
    fn only_the_command_output_passes_byte_for_byte() {
        for step in [1, 2, 3, 7, 4096] {
            // The script prints "\n" before its status line: dropped.
            let console =
                format!("{BOOT}@@RUSH-START-N1@@\nhello\n\nno newline at the end\n@@RUSH-EXIT-N1=7@@\n{END}");
            let (out, status, tail) = run(&console, step);
            assert_eq!(String::from_utf8(out).unwrap(), "hello\n\nno newline at the end", "step {step}");
            assert_eq!(status, Some(7));
            assert!(
                tail.contains(&"rush-vm: init started".to_owned()) && tail.contains(&"@@EXIT=0@@".to_owned())
            );
        }
        let (out, status, _) = run(&format!("{BOOT}@@RUSH-START-N1@@\nline\n\n@@RUSH-EXIT-N1=0@@\n{END}"), 1);
        assert_eq!((String::from_utf8(out).unwrap().as_str(), status), ("line\n", Some(0)));
        let (out, status, _) = run(&format!("{BOOT}@@RUSH-START-N1@@\n\n@@RUSH-EXIT-N1=0@@\n"), 5);
        assert_eq!((out.len(), status), (0, Some(0)), "no output at all");
    }

    #[test]
    fn look_alike_markers_are_output() {
        let console = "@@RUSH-START-N1@@\n@@RUSH-EXIT-N2=0@@\n@@RUSH-EXIT-N1=x@@\n@@RUSH-EXIT-N1=3@@ trailing\n@@RUSH-EXIT-N1\n\n@@RUSH-EXIT-N1=-1@@\n";
        let (out, status, _) = run(console, 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "@@RUSH-EXIT-N2=0@@\n@@RUSH-EXIT-N1=x@@\n@@RUSH-EXIT-N1=3@@ trailing\n@@RUSH-EXIT-N1\n"
        );
        assert_eq!(status, Some(-1));
    }

    #[test]
    fn a_console_that_adds_carriage_returns_is_undone_and_real_ones_kept() {
        let console = "boot\r\n@@RUSH-START-N1@@\r\nprogress\r50%\r\ndone\r\n\r\n@@RUSH-EXIT-N1=2@@\r\n";
        let (out, status, _) = run(console, 1);
        assert_eq!((String::from_utf8(out).unwrap().as_str(), status), ("progress\r50%\ndone\n", Some(2)));
        // Without translation, a \r is the command's own.
        let (out, _, _) = run("@@RUSH-START-N1@@\na\r\n\n@@RUSH-EXIT-N1=0@@\n", 1);
        assert_eq!(out, b"a\r\n");
    }

    #[test]
    fn a_guest_that_dies_keeps_the_output_so_far_and_no_status() {
        let (out, status, tail) = run(&format!("{BOOT}@@RUSH-START-N1@@\npartial\nlast"), 3);
        assert_eq!((String::from_utf8(out).unwrap().as_str(), status), ("partial\nlast", None));
        assert_eq!(tail.last().map(String::as_str), Some("rush-vm: init started"));
        let (out, status, tail) = run("[ 0.5] Kernel panic - not syncing: Out of memory", 4);
        assert_eq!((out.len(), status), (0, None));
        assert_eq!(tail, ["[ 0.5] Kernel panic - not syncing: Out of memory"]);
    }
}

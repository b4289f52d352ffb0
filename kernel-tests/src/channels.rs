//! The approval notification channels' counterparts: a real SMTP server
//! (fixtures/smtp_sink.py, aiosmtpd) and a webhook receiver (fixtures/webhook_receiver.py),
//! each in a temporary directory, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{cached, repo, wait_until};

/// The SDK venv's python (`cached("RUSH_SDK_VENV", "sdk-venv")`), if it has aiosmtpd
/// (`cargo xtask setup` installs it there).
pub fn smtp_python() -> Option<PathBuf> {
    let py = cached("RUSH_SDK_VENV", "sdk-venv").join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// The CA that signs testdata/tls/localhost.pem, the certificate both fixtures use for TLS:
/// the `ca_file` a client needs to trust them (connect to `localhost`).
pub fn test_ca() -> PathBuf {
    repo().join("testdata/tls/ca.pem")
}

/// Waits for a fixture's port file (written by rename once it listens).
fn read_port(child: &mut Child, port_file: &Path, what: &str) -> u16 {
    let up = wait_until(Duration::from_secs(15), || {
        port_file.exists() || child.try_wait().is_ok_and(|s| s.is_some())
    });
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{what} exited at start ({status})");
    }
    assert!(up, "{what} did not start listening in 15 s");
    std::fs::read_to_string(port_file)
        .unwrap_or_else(|e| panic!("{what}'s port file {}: {e}", port_file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}'s port file {}: {e}", port_file.display()))
}

/// fixtures/smtp_sink.py on 127.0.0.1: each message received in `maildir` as `<n>.eml`
/// (raw) and `<n>.json` (the envelope: `mail_from`, `rcpt_tos`, `peer`, `tls`, `user`).
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
    /// Whether STARTTLS is offered and required (testdata/tls's localhost certificate).
    pub tls: bool,
    /// The credentials AUTH requires, if any.
    pub auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts the server: with `tls`, STARTTLS offered and required before MAIL; with
    /// `auth`, AUTH PLAIN/LOGIN required (after STARTTLS when `tls`). Panics when the SDK
    /// venv has no aiosmtpd: check [`smtp_python`] first (with [`crate::require`]).
    pub fn start(tls: bool, auth: Option<(&str, &str)>) -> SmtpSink {
        let py =
            smtp_python().expect("a python with aiosmtpd (the SDK venv: `cargo xtask setup` installs it)");
        let dir = tempfile::tempdir().expect("smtp sink dir");
        let (port_file, maildir) = (dir.path().join("port"), dir.path().join("mail"));
        let mut cmd = Command::new(py);
        cmd.arg(repo().join("kernel-tests/fixtures/smtp_sink.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--maildir")
            .arg(&maildir)
            .stdout(Stdio::null());
        if tls {
            let t = repo().join("testdata/tls");
            cmd.arg("--tls-cert").arg(t.join("localhost.pem")).arg("--tls-key").arg(t.join("localhost.key"));
        }
        if let Some((user, password)) = auth {
            cmd.args(["--user", user, "--password", password]);
        }
        let mut child = cmd.spawn().expect("python fixtures/smtp_sink.py");
        let port = read_port(&mut child, &port_file, "smtp_sink.py");
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        SmtpSink { child, port, maildir, tls, auth, _dir: dir }
    }

    /// The messages received so far, raw (RFC 5322, CRLF line ends), in order.
    pub fn messages(&self) -> Vec<String> {
        (1..).map_while(|n| std::fs::read_to_string(self.maildir.join(format!("{n}.eml"))).ok()).collect()
    }

    /// The envelopes of the messages received so far, in order.
    pub fn envelopes(&self) -> Vec<serde_json::Value> {
        (1..)
            .take_while(|n| self.maildir.join(format!("{n}.eml")).exists())
            .map(|n| {
                let path = self.maildir.join(format!("{n}.json"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("envelope {}: {e}", path.display()));
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("envelope {}: {e}", path.display()))
            })
            .collect()
    }

    /// Whether `n` messages (or more) arrived within `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.maildir.join(format!("{n}.eml")).exists() || n == 0)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fixtures/webhook_receiver.py on 127.0.0.1: answers the first `fail_first` POSTs 500 and
/// the rest 200 `ok`, logging every request.
pub struct WebhookReceiver {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WebhookReceiver {
    pub fn start(fail_first: u32) -> WebhookReceiver {
        let dir = tempfile::tempdir().expect("webhook receiver dir");
        let (port_file, log) = (dir.path().join("port"), dir.path().join("requests.jsonl"));
        let mut child = Command::new("python3")
            .arg(repo().join("kernel-tests/fixtures/webhook_receiver.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .arg("--fail-first")
            .arg(fail_first.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 fixtures/webhook_receiver.py");
        let port = read_port(&mut child, &port_file, "webhook_receiver.py");
        WebhookReceiver { child, port, log, _dir: dir }
    }

    /// `http://127.0.0.1:PORT/hook`: any path is accepted.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every request so far, in order: `{"method", "path", "headers": {..}, "body": "..."}`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("webhook log line {l:?}: {e}")))
            .collect()
    }

    /// Whether `n` requests (or more) arrived within `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.requests().len() >= n)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_receiver_fails_first_then_logs() {
        if !crate::require(Path::new("/usr/bin/python3").exists(), "python3") {
            return;
        }
        let r = WebhookReceiver::start(1);
        let post = |body: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
            write!(
                s,
                "POST /hook/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Test: 1\r\n\
                 Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(post("{\"a\":1}").starts_with("HTTP/1.1 500"));
        assert!(post("{\"a\":2}").starts_with("HTTP/1.1 200"));
        assert!(r.wait_for(2, Duration::from_secs(5)));
        let reqs = r.requests();
        assert_eq!(reqs[0]["method"], "POST");
        assert_eq!(reqs[0]["path"], "/hook/x");
        assert_eq!(reqs[0]["headers"]["X-Test"], "1");
        assert_eq!(reqs[1]["body"], "{\"a\":2}");
    }

    #[test]
    fn smtp_sink_keeps_messages_and_envelopes() {
        if !crate::require(smtp_python().is_some(), "a python with aiosmtpd (cargo xtask setup)") {
            return;
        }
        let sink = SmtpSink::start(false, None);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", sink.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        let mut expect = |code: &str| {
            use std::io::BufRead;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(line.starts_with(code), "expected {code}, got {line:?}");
                if line.as_bytes().get(3) == Some(&b' ') {
                    break;
                }
            }
        };
        use std::io::Write;
        expect("220");
        for (cmd, code) in [
            ("EHLO t", "250"),
            ("MAIL FROM:<a@example.com>", "250"),
            ("RCPT TO:<b@example.com>", "250"),
            ("DATA", "354"),
            ("Subject: hi\r\n\r\nbody\r\n.", "250"),
            ("QUIT", "221"),
        ] {
            write!(s, "{cmd}\r\n").unwrap();
            expect(code);
        }
        assert!(sink.wait_for(1, Duration::from_secs(5)));
        assert_eq!(sink.messages(), ["Subject: hi\r\n\r\nbody\r\n"]);
        let env = &sink.envelopes()[0];
        assert_eq!(env["mail_from"], "a@example.com");
        assert_eq!(env["rcpt_tos"], serde_json::json!(["b@example.com"]));
    }
}

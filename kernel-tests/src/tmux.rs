//! A real terminal for tests: a private tmux server per [`Tmux`] (its own socket name, so
//! tests run in parallel and never touch a user's tmux), windows running a command,
//! `send-keys` to type and `capture-pane` to read the screen. Waits panic with the screen
//! they last saw.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{describe, wait_until};

/// How long [`Tmux::wait_for`] waits unless told otherwise.
pub const WAIT: Duration = Duration::from_secs(20);

/// Whether tmux is installed.
pub fn available() -> bool {
    Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// A private tmux server, killed on drop.
pub struct Tmux {
    socket: String,
}

static TMUX_N: AtomicU32 = AtomicU32::new(0);

impl Default for Tmux {
    fn default() -> Self {
        Tmux::new()
    }
}

impl Tmux {
    pub fn new() -> Tmux {
        let socket = format!("rush-test-{}-{}", std::process::id(), TMUX_N.fetch_add(1, Ordering::Relaxed));
        Tmux { socket }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).stdin(Stdio::null());
        c
    }

    /// `tmux ARGS`; its stdout. Panics when tmux fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A window named `name`, `cols`x`rows`, running `shell` (sh -c); it stays after the
    /// command ends so its last screen can be read.
    pub fn window(&self, name: &str, cols: u16, rows: u16, shell: &str) {
        let size = [cols.to_string(), rows.to_string()];
        let first = self.cmd().arg("has-session").output().is_ok_and(|o| o.status.success());
        if first {
            self.run(&["new-window", "-d", "-n", name, shell]);
        } else {
            self.run(&["new-session", "-d", "-s", "t", "-n", name, "-x", &size[0], "-y", &size[1], shell]);
            self.run(&["set-option", "-g", "status", "off"]);
            self.run(&["set-option", "-g", "remain-on-exit", "on"]);
        }
        self.run(&["set-option", "-w", "-t", &format!("t:{name}"), "remain-on-exit", "on"]);
    }

    /// The visible screen.
    pub fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", &format!("t:{name}")])
    }

    /// The scroll-back and the visible screen, wrapped lines joined.
    pub fn scrollback(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", &format!("t:{name}")])
    }

    /// Keys by tmux's names (`Enter`, `C-c`, `Up`); an argument that is no key's name is
    /// typed as text.
    pub fn keys(&self, name: &str, keys: &[&str]) {
        let target = format!("t:{name}");
        let mut args = vec!["send-keys", "-t", &target];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// `text` typed as it is (no key names).
    pub fn type_text(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", &format!("t:{name}"), "-l", "--", text]);
    }

    /// The pane's size as the program in it sees it: (rows, cols).
    pub fn pane_size(&self, name: &str) -> (u16, u16) {
        let s =
            self.run(&["display-message", "-p", "-t", &format!("t:{name}"), "#{pane_height} #{pane_width}"]);
        let mut it = s.split_whitespace().map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }

    /// The pid of the program the window started.
    pub fn pane_pid(&self, name: &str) -> i32 {
        let s = self.run(&["display-message", "-p", "-t", &format!("t:{name}"), "#{pane_pid}"]);
        s.trim().parse().unwrap_or_else(|e| panic!("pane pid {s:?}: {e}"))
    }

    /// Whether the program the window started has ended.
    pub fn pane_dead(&self, name: &str) -> bool {
        self.run(&["display-message", "-p", "-t", &format!("t:{name}"), "#{pane_dead}"]).trim() == "1"
    }

    /// Waits (up to [`WAIT`]) until the visible screen contains `what`; the screen.
    pub fn wait_for(&self, name: &str, what: &str) -> String {
        self.wait_for_within(name, what, WAIT)
    }

    pub fn wait_for_within(&self, name: &str, what: &str, timeout: Duration) -> String {
        self.wait_screen(name, timeout, &format!("{what:?} to appear"), |s| s.contains(what))
    }

    /// Waits until `ok` holds for the visible screen; panics with `what` and the screen.
    pub fn wait_screen(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        mut ok: impl FnMut(&str) -> bool,
    ) -> String {
        let mut last = String::new();
        if wait_until(timeout, || {
            last = self.screen(name);
            ok(&last)
        }) {
            return last;
        }
        panic!("waited {timeout:?} for {what} in tmux window {name}; the screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        // kill-server leaves the socket file behind.
        let dir = std::env::var_os("TMUX_TMPDIR").filter(|d| !d.is_empty()).unwrap_or_else(|| "/tmp".into());
        let uid = nix::unistd::getuid();
        let _ =
            std::fs::remove_file(std::path::Path::new(&dir).join(format!("tmux-{uid}")).join(&self.socket));
    }
}

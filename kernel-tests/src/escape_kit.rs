//! The escape tests' kit, shared by the suites that make escape attempts with
//! `rush-test-escape` (`tests/escape.rs`: the BPF LSM layer; `tests/hardening.rs`: the
//! process hardening on every kernel): scratch trees, agents running steps, a process
//! outside handing out fds, line assertions.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{Daemon, bin, bin_dir, describe, wait_until};

pub fn tool() -> String {
    bin("rush-test-escape").to_str().unwrap().to_owned()
}

/// The test binaries' directory must be readable and executable by confined agents.
pub fn bin_grant() -> String {
    format!("{}:read,exec", bin_dir().display())
}

/// A scratch tree under /tmp (mode 0755): `a/f` ("granted data") in `a/`, meant to be
/// granted, and `b/secret` ("secret data") in `b/`, never granted.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("rush-escape-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Scratch { dir };
        s.mkdir("a");
        s.mkdir("b");
        s.write("a/f", "granted data");
        s.write("b/secret", "secret data");
        s
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn p(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }
    pub fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.path(rel)).unwrap();
    }
    pub fn write(&self, rel: &str, data: &str) {
        std::fs::write(self.path(rel), data).unwrap();
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).symlink_metadata().is_ok()
    }
    /// `PATH:OPS` for `--allow`.
    pub fn grant(&self, rel: &str, ops: &str) -> String {
        format!("{}:{ops}", self.p(rel))
    }
}

pub fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Steps (each a command and its arguments) as one `rush-test-escape` argument list.
pub fn chain<'a>(steps: &[&[&'a str]]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            out.push(";;");
        }
        out.extend_from_slice(step);
    }
    out
}

/// `rush agent spawn NAME [--allow BIN_DIR:read,exec --allow G...] -- rush-test-escape STEPS`.
/// `allow: None` spawns an unconfined agent (no `--allow` at all).
pub fn agent_output(d: &Daemon, name: &str, allow: Option<&[&str]>, steps: &[&[&str]]) -> Output {
    d.rush(&spawn_args(name, &[], allow, steps).iter().map(String::as_str).collect::<Vec<_>>())
}

/// The `rush` arguments of [`agent_output`], with `flags` (e.g. `--hardlinks refuse`) too.
pub fn spawn_args(name: &str, flags: &[&str], allow: Option<&[&str]>, steps: &[&[&str]]) -> Vec<String> {
    let (bins, tool) = (bin_grant(), tool());
    let mut cmd: Vec<&str> = vec!["agent", "spawn", name];
    cmd.extend_from_slice(flags);
    if let Some(grants) = allow {
        cmd.extend(["--allow", &bins]);
        for g in grants {
            cmd.extend(["--allow", g]);
        }
    }
    cmd.extend(["--", &tool]);
    cmd.extend(chain(steps));
    cmd.into_iter().map(str::to_owned).collect()
}

/// [`agent`] with extra spawn flags.
pub fn agent_with(d: &Daemon, name: &str, flags: &[&str], allow: &[&str], steps: &[&[&str]]) -> Vec<String> {
    let args = spawn_args(name, flags, Some(allow), steps);
    let out = d.rush(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(matches!(out.status.code(), Some(0) | Some(10)), "agent {name}: {}", describe(&out));
    let l = lines(&out);
    eprintln!("agent {name}: {l:?}");
    l
}

/// The agent's file_deny record from `hook` naming `path`, waiting for it (kernel events
/// reach the audit trail asynchronously).
pub fn file_deny(d: &Daemon, agent: &str, hook: &str, path: &str) -> Value {
    let get = || {
        d.audit().into_iter().find(|r| {
            r["agent"] == agent
                && r["event"]["kind"] == "file_deny"
                && r["event"]["hook"] == hook
                && r["event"]["path"] == path
        })
    };
    wait_until(Duration::from_secs(5), || get().is_some());
    get().unwrap_or_else(|| panic!("no {hook} file_deny of {path} for {agent} in {:#?}", d.audit()))
}

/// A process outside any agent (this test, on a thread) that hands out open files over
/// a Unix socket as SCM_RIGHTS: the next file to each connection, in order.
pub struct FdServer {
    pub path: String,
}

impl FdServer {
    pub fn start(path: PathBuf, files: Vec<std::fs::File>) -> FdServer {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for f in files {
                let Ok((conn, _)) = listener.accept() else { return };
                let fds = [f.as_raw_fd()];
                let iov = [std::io::IoSlice::new(b"x")];
                let sent = sendmsg::<()>(
                    conn.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                );
                assert!(sent.is_ok(), "sendmsg: {sent:?}");
            }
        });
        FdServer { path: path.to_str().unwrap().to_owned() }
    }
}

pub fn open_rw(path: &str) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// The tool's lines from an agent; the tool must have run to its end (exit 0 or 10).
pub fn agent(d: &Daemon, name: &str, allow: Option<&[&str]>, steps: &[&[&str]]) -> Vec<String> {
    let out = agent_output(d, name, allow, steps);
    assert!(
        matches!(out.status.code(), Some(0) | Some(10)),
        "agent {name} did not run the tool to its end: {}",
        describe(&out)
    );
    let l = lines(&out);
    eprintln!("agent {name}: {l:?}");
    l
}

/// The same steps run by root outside any agent.
pub fn outside(steps: &[&[&str]]) -> Vec<String> {
    let out = Command::new(tool()).args(chain(steps)).stdin(Stdio::null()).output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(10)), "outside {steps:?}: {}", describe(&out));
    lines(&out)
}

/// Line by line: each expected entry is a `|`-separated list of alternatives, each exact or,
/// ending in `*`, a prefix.
pub fn assert_lines(got: &[String], want: &[&str], what: &str) {
    let matches = |line: &str, pat: &str| {
        pat.split('|').any(|alt| match alt.strip_suffix('*') {
            Some(prefix) => line.starts_with(prefix),
            None => line == alt,
        })
    };
    let ok = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| matches(g, w));
    assert!(ok, "{what}:\n  got  {got:?}\n  want {want:?}");
}

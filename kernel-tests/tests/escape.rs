//! The escape suite: one test per known way around Rush's confinement (docs/ESCAPES.md
//! has the table). Each test starts the real daemon with its BPF LSM programs attached
//! (where they cannot attach it fails under RUSH_TEST_STRICT=1 and skips loudly
//! elsewhere), spawns an agent (as root: the guests run the tests as root, and root inside
//! an agent must be stopped too), makes the attempt with `rush-test-escape`, and asserts
//! both halves: the attempt ended in a denial (the exact errno, or the process killed) and
//! the target is unchanged. Where it is cheap, a positive control (the same operation on
//! a granted target, or by root outside any agent) shows the denial is not a broken setup.
//!
//! These tests prove the BPF LSM layer on its own: their daemon runs with the process
//! hardening off (`HARDENING_OFF`); `tests/hardening.rs` proves that layer, on every kernel.
//!
//! "Unconfined" agents below are spawned without `--allow`: no file tokens apply to them,
//! so what stops them is the self-protection that every agent gets.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kernel_tests::escape_kit::*;
use kernel_tests::*;
use serde_json::Value;

/// The BPF LSM layer alone: the process hardening (seccomp, capabilities, namespaces;
/// `tests/hardening.rs` proves it) is off, so that what refuses here is the guard or the
/// file hooks and nothing in front of them.
fn lsm_daemon() -> Option<Daemon> {
    kernel_tests::lsm_daemon_with(HARDENING_OFF)
}

/// A process outside any agent holding `path` open (read-only) with `cwd` as its working
/// directory; killed on drop.
struct Holder {
    child: Child,
    pid: i32,
    fd: i32,
}

impl Holder {
    fn start(path: &str, cwd: &Path) -> Holder {
        let mut child = Command::new(tool())
            .args(["hold-open", path])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
        let fd = first.trim().strip_prefix("ok fd ").and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            panic!("hold-open {path}: {first:?}");
        });
        let pid = child.id() as i32;
        Holder { child, pid, fd }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A detached agent running `sleep 120`; returns its pid.
fn sleeper_agent(d: &Daemon, name: &str, allow: &[&str]) -> i32 {
    let bins = bin_grant();
    let mut cmd: Vec<&str> = vec!["agent", "spawn", name, "--detach"];
    if !allow.is_empty() {
        cmd.extend(["--allow", &bins]);
        for g in allow {
            cmd.extend(["--allow", g]);
        }
    }
    cmd.extend(["--", "/bin/sleep", "120"]);
    let out = d.rush(&cmd);
    assert!(out.status.success(), "{}", describe(&out));
    let status = d.rush_json(&["agent", "status", name]);
    status["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {status}")) as i32
}

/// The `0::/...` line an agent's /proc/self/cgroup must show.
fn agent_cgroup_line(d: &Daemon, name: &str) -> String {
    format!("0::/{}/{name}", d.cgroup_parent)
}

fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// A mount made for a test, detached on drop.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_tmpfs(at: &Path) -> MountGuard {
    nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .unwrap_or_else(|e| panic!("mount tmpfs at {}: {e}", at.display()));
    MountGuard(at.to_owned())
}

fn bind_mount(from: &Path, at: &Path) -> MountGuard {
    nix::mount::mount(Some(from), at, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind {} at {}: {e}", from.display(), at.display()));
    MountGuard(at.to_owned())
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A fresh btrfs on a loop file, unmounted (and the loop device freed) on drop.
struct Btrfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Option<Btrfs> {
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        let mkfs = which("mkfs.btrfs");
        if !require(filesystems.contains("btrfs"), "btrfs in /proc/filesystems")
            || !require(mkfs.is_some(), "mkfs.btrfs (btrfs-progs)")
            || !require(Path::new("/dev/loop-control").exists(), "loop devices (/dev/loop-control)")
        {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("rush-escape-btrfs-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
        let out = Command::new(mkfs.unwrap()).args(["-q", "-f"]).arg(&img).output().unwrap();
        assert!(out.status.success(), "mkfs.btrfs: {}", describe(&out));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out =
            Command::new("mount").args(["-o", "loop", "-t", "btrfs"]).arg(&img).arg(&mnt).output().unwrap();
        assert!(out.status.success(), "mount -o loop -t btrfs: {}", describe(&out));
        Some(Btrfs { mnt, _dir: dir })
    }
    fn p(&self, rel: &str) -> String {
        self.mnt.join(rel).to_str().unwrap().to_owned()
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-d").arg(&self.mnt).output();
    }
}

fn ino(path: &str) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.dev(), m.ino())
}

const EPERM: &str = "errno EPERM";

// ---------------------------------------------------------------------------------------
// Path tricks: the check is by inode identity, so another name for an ungranted inode
// gives nothing.

#[test]
fn escape_symlink_in_granted_dir() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    std::os::unix::fs::symlink(s.path("b/secret"), s.path("a/root-link")).unwrap();
    let (secret, l, rl, f) = (s.p("b/secret"), s.p("a/l"), s.p("a/root-link"), s.p("a/f"));
    let grant = s.grant("a", "read,write,create");
    let got = agent(
        &d,
        "symlink",
        Some(&[&grant]),
        &[
            &["symlink", &secret, &l], // making the link is within the grant (create in a/)
            &["read", &l],
            &["put", &l, "pwned"],
            &["read", &rl], // one made by root
            &["put", &rl, "pwned"],
            &["read", &f],
        ],
    );
    assert_lines(&got, &["ok", EPERM, EPERM, EPERM, EPERM, "ok 12"], "symlinks from a/ to b/secret");
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_hardlink_into_granted_dir() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let (secret, f, f2) = (s.p("b/secret"), s.p("a/f"), s.p("a/f2"));
    let (h1, h2, h3) = (s.p("a/h1"), s.p("a/h2"), s.p("a/h3"));
    let grant = s.grant("a", "read,write,create,delete");
    let got = agent(
        &d,
        "hardlink",
        Some(&[&grant]),
        &[
            &["link", &secret, &h1],
            &["opath", &secret],
            &["link-follow", "/proc/self/fd/@", &h2],
            &["link-empty", "@", &h3],
            &["link", &f, &f2], // control: within the grant
        ],
    );
    // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH on 6.1 (ENOENT without it); newer
    // kernels let the fd's opener through to the path_link hook (EPERM). Both refuse.
    assert_lines(
        &got,
        &[EPERM, "ok fd *", EPERM, "errno EPERM|errno ENOENT", "ok"],
        "hard links of b/secret into a/",
    );
    for h in ["a/h1", "a/h2", "a/h3"] {
        assert!(!s.exists(h), "{h} was created");
    }
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_rename_into_granted_dir() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read,write,create,delete");
    let got = agent(
        &d,
        "rename-in",
        Some(&[&grant]),
        &[
            &["rename", &s.p("b/secret"), &s.p("a/stolen")],
            &["rename", &s.p("b"), &s.p("a/bdir")],
            &["rename", &s.p("a/f"), &s.p("a/g")], // control: within the grant
        ],
    );
    assert_lines(&got, &[EPERM, EPERM, "ok"], "renames of b/ and b/secret into a/");
    assert!(!s.exists("a/stolen") && !s.exists("a/bdir"));
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_rename_out_and_back_no_widening() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("r/sub");
    s.write("r/ro", "read only data");
    s.write("r/sub/x", "x");
    // A file that root moved out of a/ to b/ (not granted).
    s.write("b/was-in-a", "moved out");
    let rw = s.grant("a", "read,write,create,delete");
    let ro = s.grant("r", "read");
    let got = agent(
        &d,
        "rename-out",
        Some(&[&rw, &ro]),
        &[
            &["rename", &s.p("a/f"), &s.p("b/f")],               // out of the grant
            &["rename", &s.p("b/was-in-a"), &s.p("a/was-in-a")], // back in
            &["rename", &s.p("r/ro"), &s.p("a/ro")],             // read-only → writable
            &["link", &s.p("r/ro"), &s.p("a/ro-link")],          // the same by a second name
            &["rename", &s.p("r/sub"), &s.p("a/sub")],           // a read-only directory
            &["rename", &s.p("a/f"), &s.p("r/f")],               // into the read-only one
            &["put", &s.p("r/ro"), "pwned"],                     // writing it where it is
            &["read", &s.p("r/ro")],
            &["read", &s.p("a/f")],
        ],
    );
    assert_lines(
        &got,
        &[EPERM, EPERM, EPERM, EPERM, EPERM, EPERM, EPERM, "ok 14", "ok 12"],
        "renames and links across grants",
    );
    assert_eq!(s.read("a/f"), "granted data");
    assert_eq!(s.read("r/ro"), "read only data");
    assert_eq!(s.read("r/sub/x"), "x");
    assert_eq!(s.read("b/was-in-a"), "moved out");
    for gone in ["b/f", "a/was-in-a", "a/ro", "a/ro-link", "a/sub", "r/f"] {
        assert!(!s.exists(gone), "{gone} exists");
    }
}

#[test]
fn escape_opath_reopen_via_proc_self_fd() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read,write");
    let got = agent(
        &d,
        "opath",
        Some(&[&grant]),
        &[
            &["opath", &s.p("b/secret")],
            &["read", "/proc/self/fd/@"],
            &["put", "/proc/self/fd/@", "pwned"],
            &["opath", &s.p("a/f")],
            &["read", "/proc/self/fd/@"], // control
        ],
    );
    // O_PATH itself is allowed (it reads nothing); re-opening it for data is not.
    assert_lines(&got, &["ok fd *", EPERM, EPERM, "ok fd *", "ok 12"], "O_PATH re-opened via /proc/self/fd");
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_opath_dirfd_openat() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read");
    let got = agent(
        &d,
        "opath-dir",
        Some(&[&grant]),
        &[
            &["opath", &s.p("b")],
            &["openat", "@", "secret"],
            &["openat2", "@", "secret", "none"],
            &["dir", &s.p("a")],
            &["openat", "@", "f"], // control
        ],
    );
    assert_lines(&got, &["ok fd *", EPERM, EPERM, "ok fd *", "ok 12"], "openat below an O_PATH dirfd of b/");
}

#[test]
fn escape_openat2_resolve_flags() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read");
    let got = agent(
        &d,
        "openat2",
        Some(&[&grant]),
        &[
            &["dir", &s.p("a")],
            &["openat2", "@", "../b/secret", "none"],
            &["openat2", "@", "../b/secret", "no-symlinks"],
            &["openat2", "@", "../b/secret", "in-root"], // ".." stops at a/: a/b/secret
            &["openat2", "@", "../b/secret", "beneath"],
            &["openat2", "@", "f", "in-root"], // control
            &["opath", &s.p("b/secret")],
            &["openat2", "cwd", "/proc/self/fd/@", "none"],
            &["openat2", "cwd", "/proc/self/fd/@", "no-magiclinks"],
            &["openat2", "cwd", "/proc/self/fd/@", "no-xdev"],
        ],
    );
    assert_lines(
        &got,
        &[
            "ok fd *",
            EPERM,
            EPERM,
            "errno ENOENT",
            "errno EXDEV",
            "ok 12",
            "ok fd *",
            EPERM,
            "errno ELOOP",
            "errno EXDEV",
        ],
        "openat2 with resolve flags",
    );
}

// ---------------------------------------------------------------------------------------
// Other processes: /proc links, ptrace, signals.

#[test]
fn escape_proc_pid_root() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let secret = s.p("b/secret");
    let h = Holder::start(&secret, &s.path("b"));
    let dpid = d.pid();
    let targets = [
        format!("/proc/{}/root{secret}", h.pid),
        format!("/proc/{}/cwd/secret", h.pid),
        format!("/proc/{}/fd/{}", h.pid, h.fd),
        format!("/proc/{dpid}/root{secret}"),
    ];
    // Control: the same paths work for root outside.
    for t in &targets {
        assert_eq!(std::fs::read_to_string(t).unwrap(), "secret data", "{t} outside");
    }
    let grant = s.grant("a", "read");
    let self_root = format!("/proc/self/root{}", s.p("a/f"));
    let mut steps: Vec<Vec<&str>> = targets.iter().map(|t| vec!["read", t.as_str()]).collect();
    steps.push(vec!["read", &self_root]); // control: its own /proc/self/root
    let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
    let got = agent(&d, "procroot", Some(&[&grant]), &steps);
    // ptrace_may_access refusals on /proc links come back as EACCES; were the link
    // followed, the file token check would refuse the open with EPERM.
    let denied = "errno EACCES|errno EPERM";
    assert_lines(
        &got,
        &[denied, denied, denied, denied, "ok 12"],
        "/proc/PID/{root,cwd,fd} of processes outside",
    );
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_proc_pid_mem_environ() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let secret = s.p("b/secret");
    let h = Holder::start(&secret, &s.path("b"));
    let dpid = d.pid();
    let environ = format!("/proc/{dpid}/environ");
    let mem = format!("/proc/{dpid}/mem");
    let cwd = format!("/proc/{dpid}/cwd");
    let root = format!("/proc/{dpid}/root{secret}");
    let fd = format!("/proc/{}/fd/{}", h.pid, h.fd);
    assert!(std::fs::read(&environ).is_ok(), "control: root outside reads {environ}");
    // Unconfined: no file token stands in the way, only the ptrace guard.
    let got = agent(
        &d,
        "procmem",
        None,
        &[
            &["read", &environ],
            &["open-rw", &mem],
            &["readlink", &cwd],
            &["read", &root],
            &["read", &fd],
            &["read", "/proc/self/environ"], // control: its own
            &["read", &secret],              // control: not file-confined
        ],
    );
    let denied = "errno EACCES|errno EPERM";
    assert_lines(
        &got,
        &[denied, denied, denied, denied, denied, "ok *", "ok 11"],
        "/proc/PID/{environ,mem,cwd,root,fd} of the daemon and of a process outside",
    );
}

#[test]
fn escape_ptrace_attach_daemon() {
    let Some(mut d) = lsm_daemon() else { return };
    let dpid = d.pid().to_string();
    let victim = sleeper_agent(&d, "victim", &[]).to_string();
    // Control: root outside gets past the permission check (then EFAULT: 0x1000 is unmapped).
    assert_lines(&outside(&[&["vm-read", &dpid]]), &["errno EFAULT"], "process_vm_readv outside");
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    eprintln!("yama ptrace_scope: {:?}", scope.trim());
    let got = agent(
        &d,
        "tracer",
        None,
        &[
            &["ptrace-attach", &dpid],
            &["ptrace-seize", &dpid],
            &["vm-read", &dpid],
            &["vm-write", &dpid],
            &["pidfd-getfd", &dpid, "0"],
            &["ptrace-attach", &victim], // another agent
        ],
    );
    assert_lines(
        &got,
        &[EPERM, EPERM, EPERM, EPERM, "ok pidfd", EPERM, EPERM],
        "ptrace, process_vm_{readv,writev}, pidfd_getfd of the daemon and of another agent",
    );
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
    let status = std::fs::read_to_string(format!("/proc/{dpid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "TracerPid:\t0"), "daemon traced: {status}");
}

#[test]
fn escape_kill_daemon() {
    let Some(mut d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let h = Holder::start(&s.p("a/f"), s.dir.path());
    let dpid = d.pid().to_string();
    let victim_pid = sleeper_agent(&d, "victim", &[]);
    let (hpid, victim) = (h.pid.to_string(), victim_pid.to_string());
    let got = agent(
        &d,
        "killer",
        None,
        &[
            &["kill", &dpid, "9"],
            &["pidfd-kill", &dpid, "9"],
            &["kill", &dpid, "15"],
            &["kill", &hpid, "9"],   // a process outside
            &["kill", &victim, "9"], // another agent
        ],
    );
    assert_lines(&got, &[EPERM, "ok pidfd", EPERM, EPERM, EPERM, EPERM], "signals out of the agent");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
    assert!(pid_alive(h.pid), "the process outside died");
    assert!(pid_alive(victim_pid), "the other agent died");
}

#[test]
fn escape_fsetown_sigio_to_daemon() {
    let Some(mut d) = lsm_daemon() else { return };
    let dpid = d.pid().to_string();
    // sigio-self (control): SIGIO to its own process is delivered. Then F_SETOWN naming
    // the daemon, with F_SETSIG(SIGKILL): refused at F_SETOWN.
    let got = agent(&d, "sigio", None, &[&["sigio-self"], &["sigio", &dpid, "9"]]);
    assert_lines(&got, &["ok received", EPERM], "fcntl(F_SETOWN) to the daemon");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
}

#[test]
fn escape_fiosetown_ioctl_sigio_to_daemon() {
    let Some(mut d) = lsm_daemon() else { return };
    let dpid = d.pid().to_string();
    let out = agent_output(&d, "fiosetown", None, &[&["sigio", &dpid, "9", "ioctl"]]);
    std::thread::sleep(Duration::from_millis(300));
    // The ioctl form of F_SETOWN passes the pid through user memory: refused at set time
    // (EPERM) or not, the SIGKILL it would send must not reach the daemon.
    assert!(
        d.is_running(),
        "ioctl(FIOSETOWN, daemon) + F_SETSIG(SIGKILL) + O_ASYNC from an agent killed the daemon: {}",
        describe(&out)
    );
    let got = lines(&out);
    assert!(got == [EPERM] || got == ["ok setown", "ok triggered"], "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------
// Mounts and namespaces.

#[test]
fn escape_bind_mount_by_agent() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("a/m");
    let before = mount_points();
    let (b, m) = (s.p("b"), s.p("a/m"));
    let got = agent(
        &d,
        "mounter",
        None,
        &[&["mount-bind", &b, &m], &["mount-tmpfs", &m], &["open-tree", &b], &["fsopen", "tmpfs"]],
    );
    assert_lines(&got, &[EPERM, EPERM, EPERM, EPERM], "mount(MS_BIND), mount(tmpfs), open_tree, fsopen");
    assert_eq!(mount_points(), before, "the mount table changed");
    assert!(!s.exists("a/m/secret"));
}

#[test]
fn escape_bind_mount_alias() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("alias");
    let _alias = bind_mount(&s.path("a"), &s.path("alias"));
    assert_eq!(s.read("alias/f"), "granted data", "control: the alias shows a/");
    let grant = s.grant("a", "read,write");
    let got = agent(
        &d,
        "alias",
        Some(&[&grant]),
        &[&["read", &s.p("alias/f")], &["put", &s.p("alias/f"), "pwned"], &["read", &s.p("a/f")]],
    );
    assert_lines(&got, &[EPERM, EPERM, "ok 12"], "a/ through a bind mount made by root");
    assert_eq!(s.read("a/f"), "granted data");
}

#[test]
fn escape_umount_by_agent() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("t/m");
    s.mkdir("t/m2");
    let _m = mount_tmpfs(&s.path("t/m"));
    s.write("t/m/f", "on tmpfs");
    let before = mount_points();
    let (m, m2) = (s.p("t/m"), s.p("t/m2"));
    let got = agent(&d, "umounter", None, &[&["umount", &m], &["move-mount", &m, &m2]]);
    assert_lines(&got, &[EPERM, EPERM], "umount, move_mount");
    assert_eq!(mount_points(), before, "the mount table changed");
    assert_eq!(s.read("t/m/f"), "on tmpfs");
}

#[test]
fn escape_pivot_root() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("a/old");
    let (new, old) = (s.p("a"), s.p("a/old"));
    // Control: root outside gets past the capability check and fails on the arguments
    // (a/ is no mount point), so an agent's EPERM is the guard's.
    let ctl = outside(&[&["pivot-root", &new, &old]]);
    assert!(ctl.len() == 1 && ctl[0].starts_with("errno ") && ctl[0] != EPERM, "control outside: {ctl:?}");
    let got = agent(&d, "pivot", None, &[&["pivot-root", &new, &old], &["readlink", "/proc/self/root"]]);
    assert_lines(&got, &[EPERM, "ok /"], "pivot_root");
}

#[test]
fn escape_chroot() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let a = s.p("a");
    assert_lines(&outside(&[&["chroot", &a]]), &["ok"], "control: chroot outside");
    let got = agent(&d, "chroot", None, &[&["chroot", &a], &["readlink", "/proc/self/root"]]);
    assert_lines(&got, &[EPERM, "ok /"], "chroot");
    let grant = s.grant("a", "read");
    let got = agent(&d, "chroot-confined", Some(&[&grant]), &[&["chroot", &a]]);
    assert_lines(&got, &[EPERM], "chroot into the granted dir");
}

#[test]
fn escape_unshare_mount_ns() {
    let Some(d) = lsm_daemon() else { return };
    let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string();
    let same = format!("ok {mine}");
    let ctl = outside(&[&["unshare", "mnt"], &["readlink", "/proc/self/ns/mnt"]]);
    assert!(ctl.len() == 2 && ctl[0] == "ok" && ctl[1] != same, "control outside: {ctl:?}");
    let got = agent(
        &d,
        "unshare-m",
        None,
        &[
            &["unshare", "mnt"],
            &["readlink", "/proc/self/ns/mnt"],
            &["unshare", "net"],
            &["unshare", "uts"],
            &["unshare", "ipc"],
            &["unshare", "cgroup"],
            &["unshare", "pid"],
        ],
    );
    assert_lines(
        &got,
        &[EPERM, &same, EPERM, EPERM, EPERM, EPERM, EPERM],
        "unshare(CLONE_NEWNS and the other CAP_SYS_ADMIN namespaces)",
    );
}

#[test]
fn escape_unshare_user_ns() {
    let Some(d) = lsm_daemon() else { return };
    let mine = std::fs::read_link("/proc/self/ns/user").unwrap().display().to_string();
    let same = format!("ok {mine}");
    assert_lines(&outside(&[&["unshare", "user"]]), &["ok"], "control: unshare(CLONE_NEWUSER) outside");
    let got = agent(
        &d,
        "unshare-u",
        None,
        &[
            &["unshare", "user"],
            &["readlink", "/proc/self/ns/user"],
            &["clone-newuser"],
            &["unshare", "user,mnt"],
        ],
    );
    assert_lines(&got, &[EPERM, &same, EPERM, EPERM], "unshare(CLONE_NEWUSER), clone(CLONE_NEWUSER)");
}

// ---------------------------------------------------------------------------------------
// Around the file hooks: io_uring, handles, mappings, exec.

#[test]
fn escape_io_uring_openat() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read");
    let got = agent(
        &d,
        "uring",
        Some(&[&grant]),
        &[&["io-uring-openat", &s.p("b/secret")], &["io-uring-openat", &s.p("a/f")]],
    );
    assert!(
        !got.iter().any(|l| l.contains("io_uring_setup")),
        "io_uring_setup failed in the agent, so nothing was tested: {got:?}"
    );
    assert_lines(&got, &[EPERM, "ok 12"], "IORING_OP_OPENAT (the cqe's res)");
}

#[test]
fn escape_open_by_handle_at() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let h = outside(&[&["handle", &s.p("b/secret")]]);
    let handle = h[0].strip_prefix("ok ").unwrap_or_else(|| panic!("name_to_handle_at outside: {h:?}"));
    let (ty, hex) = handle.split_once(' ').unwrap();
    let a = s.p("a");
    assert_lines(
        &outside(&[&["open-by-handle", &a, ty, hex]]),
        &["ok 11"],
        "control: the handle opens outside",
    );
    let grant = s.grant("a", "read");
    let got = agent(&d, "handle", Some(&[&grant]), &[&["open-by-handle", &a, ty, hex]]);
    assert_lines(&got, &[EPERM], "open_by_handle_at of b/secret");
}

/// `rush agent spawn` of `mmap-hold PATH MODE`, talked to over stdin/stdout.
struct Mapper {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pid: i32,
}

impl Mapper {
    fn spawn(d: &Daemon, name: &str, grants: &[&str], path: &str, mode: &str) -> Mapper {
        let (bins, tool) = (bin_grant(), tool());
        let mut args: Vec<&str> = vec!["agent", "spawn", name, "--allow", &bins];
        for g in grants {
            args.extend(["--allow", g]);
        }
        args.extend(["--", &tool, "mmap-hold", path, mode]);
        let mut child = d.rush_cmd(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let pid = first
            .strip_prefix("mapped ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("mmap-hold {path} {mode}: {first:?}"));
        Mapper { child, stdin, lines, pid }
    }

    /// One request; None once the mapper is gone.
    fn ask(&mut self, req: &str) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        if writeln!(stdin, "{req}").and_then(|_| stdin.flush()).is_err() {
            return None;
        }
        self.lines.next().and_then(Result::ok)
    }
}

fn revoke_kill_record(d: &Daemon, agent: &str, pid: i32) -> Option<Value> {
    let get = || {
        d.audit()
            .into_iter()
            .find(|r| r["agent"] == agent && r["event"]["kind"] == "revoke_kill" && r["event"]["pid"] == pid)
    };
    wait_until(Duration::from_secs(5), || get().is_some());
    get()
}

#[test]
fn escape_mmap_revoke_write() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let f = s.p("a/f");
    let read_a = s.grant("a", "read");
    let write_f = format!("{f}:write");
    let mut m = Mapper::spawn(&d, "mapper", &[&read_a, &write_f], &f, "rw");
    // Control: while granted, a write through the shared mapping reaches the file.
    assert_eq!(m.ask("write AAAA").as_deref(), Some("ok wrote 4"));
    assert_eq!(s.read("a/f"), "AAAAted data");

    let out = d.rush(&["capability", "revoke", "mapper", "--path", &f]);
    assert!(out.status.success(), "revoke: {}", describe(&out));
    // Frozen, killed, thawed before the revoke returns.
    assert!(
        wait_until(Duration::from_secs(2), || !pid_alive(m.pid)),
        "the mapper (pid {}) outlived the revoke of its write token",
        m.pid
    );
    assert_eq!(m.ask("write BBBB"), None, "the mapper answered after the revoke");
    let status = m.child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9), "agent status: {status}");
    assert_eq!(
        s.read("a/f"),
        "AAAAted data",
        "a write through the mapping reached the file after the revoke"
    );
    let rec = revoke_kill_record(&d, "mapper", m.pid)
        .unwrap_or_else(|| panic!("no revoke_kill record for pid {}: {:#?}", m.pid, d.audit()));
    assert!(rec["event"]["ops"].as_str().unwrap_or("").contains("write"), "{rec}");
}

#[test]
fn escape_mmap_revoke_read() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let f = s.p("a/f");
    let read_a = s.grant("a", "read");
    let mut m = Mapper::spawn(&d, "reader", &[&read_a], &f, "r");
    assert_eq!(m.ask("read").as_deref(), Some("ok granted data"));
    let out = d.rush(&["capability", "revoke", "reader", "--path", &s.p("a")]);
    assert!(out.status.success(), "revoke: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(2), || !pid_alive(m.pid)),
        "the mapper (pid {}) outlived the revoke of its read token",
        m.pid
    );
    // Root outside changes the file: a surviving mapping would show the new bytes.
    s.write("a/f", "changed data");
    assert_eq!(m.ask("read"), None, "the mapper answered after the revoke");
    assert_eq!(m.child.wait().unwrap().code(), Some(128 + 9));
    let rec = revoke_kill_record(&d, "reader", m.pid)
        .unwrap_or_else(|| panic!("no revoke_kill record for pid {}: {:#?}", m.pid, d.audit()));
    assert!(rec["event"]["ops"].as_str().unwrap_or("").contains("read"), "{rec}");
}

#[test]
fn escape_memfd_exec() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let t = tool();
    // Control: outside, the memfd copy of a binary executes.
    assert_lines(
        &outside(&[&["memfd", &t], &["execveat", "@"]]),
        &["ok fd *", "ok executed"],
        "memfd exec outside",
    );
    let grant = s.grant("a", "read,write");
    let got = agent(
        &d,
        "memfd",
        Some(&[&grant]),
        &[
            &["memfd", &t], // a copy of a binary the agent may execute
            &["mmap-read", "@"],
            &["mmap-exec", "@"],
            &["mprotect-exec", "@"],
            &["execve", "/proc/self/fd/@"],
            &["execveat", "@"],
        ],
    );
    assert_lines(
        &got,
        &["ok fd *", "ok mapped", EPERM, EPERM, EPERM, EPERM],
        "memfd: mmap PROT_EXEC, mprotect PROT_EXEC, execve via /proc/self/fd, execveat(AT_EMPTY_PATH)",
    );
}

const LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";

#[test]
fn escape_ld_so_loader() {
    let Some(d) = lsm_daemon() else { return };
    if !require(Path::new(LD_SO).exists(), LD_SO) {
        return;
    }
    let s = Scratch::new();
    for dir in ["r", "x"] {
        s.mkdir(dir);
        let copy = s.path(&format!("{dir}/tool"));
        std::fs::copy(tool(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ro, rx, rw) = (s.grant("r", "read"), s.grant("x", "read,exec"), s.grant("a", "read,write,create"));
    let (rt, xt) = (s.p("r/tool"), s.p("x/tool"));
    let (m1, m2, m3, m4) = (s.p("a/m1"), s.p("a/m2"), s.p("a/m3"), s.p("a/m4"));
    let out = agent_output(
        &d,
        "ldso",
        Some(&[&ro, &rx, &rw]),
        &[
            &["run", LD_SO, &rt, "create", &m1, "x"], // readable, not executable: its mmap refused
            &["run", LD_SO, &xt, "create", &m2, "x"], // control: exec-granted, through ld.so
            &["run", &xt, "create", &m3, "x"],        // control: exec-granted, directly
            &["run", &rt, "create", &m4, "x"],        // the read-only copy, directly
        ],
    );
    let got = lines(&out);
    eprintln!("ldso: {got:?}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_lines(
        &got,
        &["ok exit *|ok signal *", "ok", "ok exit 0", "ok", "ok exit 0", EPERM],
        "ld.so as the loader of a read-only binary",
    );
    assert_ne!(got[0], "ok exit 0", "ld.so ran the read-only binary");
    assert!(!s.exists("a/m1") && !s.exists("a/m4"), "the read-only binary ran");
    assert!(s.exists("a/m2") && s.exists("a/m3"));
}

#[test]
fn escape_setuid_binary() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("s");
    let suid = s.p("s/suid");
    std::fs::copy(tool(), &suid).unwrap();
    nix::unistd::chown(Path::new(&suid), Some(0.into()), Some(0.into())).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    s.write("s/secret", "root only");
    std::fs::set_permissions(s.path("s/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = s.p("s/secret");
    let steps: [&[&str]; 3] =
        [&["as-user", "1000", "1000", "--", &suid, "ids"], &["nnp"], &["read", &secret]];

    // Control: outside any agent (no no_new_privs) the setuid copy does run as euid 0.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if status.lines().any(|l| l == "NoNewPrivs:\t0") {
        let ctl = outside(&steps);
        if !require(
            ctl.get(1).is_some_and(|l| l.contains("euid 0")),
            &format!("setuid binaries honoured under /tmp outside agents: {ctl:?}"),
        ) {
            return;
        }
        assert_lines(
            &ctl,
            &["ok as 1000:1000", "ok uid 1000 euid 0 *", "ok nnp 0", "ok 9"],
            "control outside",
        );
    }
    let grant = s.grant("s", "read,exec");
    let got = agent(&d, "setuid", Some(&[&grant]), &steps);
    assert_lines(
        &got,
        &["ok as 1000:1000", "ok uid 1000 euid 1000 gid 1000 egid 1000", "ok nnp 1", "errno EACCES"],
        "a setuid-root binary run by uid 1000 inside an agent",
    );
    assert_eq!(s.read("s/secret"), "root only");
}

#[test]
fn escape_fork_bomb_children() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read");
    // /proc readable, for /proc/self/cgroup.
    let cg = format!("ok {}", agent_cgroup_line(&d, "bomb"));
    let got = agent(
        &d,
        "bomb",
        Some(&[&grant, "/proc:read"]),
        &[&["cgroup"], &["fork-chain", "100", &s.p("b/secret"), &s.p("a/f")]],
    );
    // The 100th process of the chain: same cgroup, same tokens.
    assert_lines(
        &got,
        &[&cg, "ok depth 100 pid *", &cg, EPERM, "ok 12", "ok chain 100 exit 0"],
        "a chain of 100 processes",
    );
}

#[test]
fn escape_mknod_block_device() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read,write,create");
    let got = agent(
        &d,
        "mknod",
        Some(&[&grant]),
        &[&["mknod-blk", &s.p("a/sda"), "8", "0"], &["mkfifo", &s.p("a/fifo")]],
    );
    assert_lines(&got, &[EPERM, "ok"], "mknod of a block device in a create-granted dir (a FIFO: control)");
    let got = agent(&d, "mknod-free", None, &[&["mknod-blk", &s.p("b/sda"), "8", "0"]]);
    assert_lines(&got, &[EPERM], "mknod of a block device, unconfined agent");
    assert!(!s.exists("a/sda") && !s.exists("b/sda"));
}

#[test]
fn escape_truncate_chmod_chown_ungranted() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let secret = s.p("b/secret");
    let meta = std::fs::metadata(&secret).unwrap();
    let grant = s.grant("a", "read,write,create,delete");
    let got = agent(
        &d,
        "meta",
        Some(&[&grant]),
        &[
            &["truncate", &secret, "0"],
            &["chmod", &secret, "777"],
            &["chown", &secret, "1000", "1000"],
            &["truncate", &s.p("a/f"), "7"], // control
        ],
    );
    assert_lines(&got, &[EPERM, EPERM, EPERM, "ok"], "truncate, chmod, chown of b/secret");
    let after = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (after.len(), after.mode(), after.uid(), after.gid()),
        (meta.len(), meta.mode(), meta.uid(), meta.gid())
    );
    assert_eq!(s.read("a/f"), "granted");
}

// ---------------------------------------------------------------------------------------
// The kernel, the cgroup tree and the daemon's own state.

#[test]
fn escape_cgroup_procs() {
    let Some(d) = lsm_daemon() else { return };
    let parent = d.cgroup_v2_parent();
    let own = parent.join("cg");
    let root = cgroup2_root();
    let f = |dir: &Path, file: &str| dir.join(file).to_str().unwrap().to_owned();
    let (pp, rp, op) = (f(&parent, "cgroup.procs"), f(&root, "cgroup.procs"), f(&own, "cgroup.procs"));
    let (ps, os, om) =
        (f(&parent, "cgroup.subtree_control"), f(&own, "cgroup.subtree_control"), f(&own, "memory.max"));
    let sibling = f(&parent, "escaped");
    let cg = format!("ok {}", agent_cgroup_line(&d, "cg"));
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["cgroup"],
        vec!["put", &pp, "0"], // "0": the writing process itself
        vec!["put", &rp, "0"],
        vec!["put", &op, "0"],
        vec!["put", &ps, " "], // no change if it ever got through
        vec!["put", &os, " "],
        vec!["mkdir", &sibling],
    ];
    let mut want = vec![&cg[..], EPERM, EPERM, EPERM, EPERM, EPERM, EPERM];
    // memory.max exists where the daemon enables the memory controller for its agents.
    let memory = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    if memory.split_whitespace().any(|c| c == "memory") {
        steps.push(vec!["put", &om, "max"]);
        want.push(EPERM);
    }
    steps.push(vec!["cgroup"]);
    want.push(&cg);
    let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
    let got = agent(&d, "cg", None, &steps);
    let _ = std::fs::remove_dir(&sibling);
    assert_lines(&got, &want, "writes to cgroupfs (the agent's /proc/self/cgroup before and after)");
}

#[test]
fn escape_clone_into_parent_cgroup() {
    let Some(d) = lsm_daemon() else { return };
    let parent = d.cgroup_v2_parent();
    // Control: root outside can start a child in a cgroup it names.
    let ctl_dir = parent.join("escape-control");
    std::fs::create_dir(&ctl_dir).unwrap();
    let ctl = outside(&[&["clone-into-cgroup", ctl_dir.to_str().unwrap()]]);
    let _ = std::fs::remove_dir(&ctl_dir);
    assert!(
        ctl.iter().any(|l| l.starts_with("ok child-cgroup ") && l.ends_with("/escape-control")),
        "control outside: {ctl:?}"
    );
    let (p, r) = (parent.to_str().unwrap().to_owned(), cgroup2_root().to_str().unwrap().to_owned());
    let got =
        agent(&d, "clone-cg", None, &[&["clone-into-cgroup", &p], &["clone-into-cgroup", &r], &["cgroup"]]);
    assert!(!got.iter().any(|l| l.contains("child-cgroup")), "a child started outside the agent: {got:?}");
    // Refused where the cgroup directory is opened, or at clone3.
    let one = |l: &[String]| -> usize {
        match l {
            [a, ..] if a == EPERM => 1,
            [a, b, ..] if a == "ok opened" && b == EPERM => 2,
            _ => panic!("clone3(CLONE_INTO_CGROUP) not refused with EPERM: {got:?}"),
        }
    };
    let n = one(&got);
    let n = n + one(&got[n..]);
    assert_eq!(got[n..], [format!("ok {}", agent_cgroup_line(&d, "clone-cg"))], "{got:?}");
}

#[test]
fn escape_bpf_map_update() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let pin = d.pin_dir.join("rush_file_grants");
    let pin = pin.to_str().unwrap();
    // A confined agent, so that the map has entries worth aiming at.
    let _holder = sleeper_agent(&d, "holder", &[&s.grant("a", "read")]);
    let dump = || -> Vec<String> {
        let out = outside(&[&["map-dump", pin]]);
        assert!(out.last().is_some_and(|l| l.ends_with(" entries")), "map-dump {pin}: {out:?}");
        out
    };
    let before = dump();
    assert!(before.len() > 1, "no entries in {pin}: {before:?}");
    let got = agent(&d, "bpf", None, &[&["bpf-get", pin], &["bpf-poison", "@"], &["bpf-map-create"]]);
    assert_lines(&got, &[EPERM, EPERM, EPERM], "bpf(BPF_OBJ_GET, then BPF_MAP_UPDATE_ELEM, BPF_MAP_CREATE)");
    let after = dump();
    for e in &before[..before.len() - 1] {
        assert!(after.contains(e), "entry changed or gone: {e}\nafter: {after:#?}");
    }
    let poisoned = |e: &String| e.split(' ').nth(2).is_some_and(|v| v.chars().all(|c| c == 'f'));
    assert!(!after.iter().any(poisoned), "a poisoned entry (every op, no expiry): {after:#?}");
}

#[test]
fn escape_sysctl_write() {
    let Some(d) = lsm_daemon() else { return };
    let knobs = ["/proc/sys/kernel/domainname", "/proc/sys/kernel/modprobe", "/proc/sys/kernel/core_pattern"];
    let before: Vec<String> = knobs.iter().map(|k| std::fs::read_to_string(k).unwrap()).collect();
    let pwned = "/tmp/rush-escape-pwned\n";
    let mut steps: Vec<Vec<&str>> = vec![vec!["cat", knobs[0]]];
    steps.extend(knobs.iter().map(|k| vec!["put", k, pwned]));
    let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
    let got = agent(&d, "sysctl", None, &steps);
    let after: Vec<String> = knobs.iter().map(|k| std::fs::read_to_string(k).unwrap()).collect();
    for (k, v) in knobs.iter().zip(&before) {
        let _ = std::fs::write(k, v); // put back whatever an escape changed
    }
    // Refused at open, or at write (a cgroup/sysctl program): EPERM either way.
    let denied = "errno EPERM|errno EPERM (write)";
    let first = format!("ok {}", before[0].escape_debug());
    assert_lines(&got, &[&first, denied, denied, denied], "sysctl writes (reading one: control)");
    assert_eq!(after, before, "a sysctl changed");
}

#[test]
fn escape_init_module() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.write("junk.ko", "\u{7f}ELF not a module");
    let junk = s.p("junk.ko");
    let steps: [&[&str]; 3] =
        [&["init-module"], &["finit-module", &junk], &["delete-module", "rush_escape_none"]];
    // Control: root outside gets past the capability check to the module's own checks.
    let ctl = outside(&steps);
    assert!(
        ctl.len() == 3 && ctl.iter().all(|l| l.starts_with("errno ") && l != EPERM),
        "control outside: {ctl:?}"
    );
    let got = agent(&d, "modules", None, &steps);
    assert_lines(&got, &[EPERM, EPERM, EPERM], "init_module, finit_module, delete_module");
}

#[test]
fn escape_raw_socket() {
    let Some(d) = lsm_daemon() else { return };
    assert_lines(&outside(&[&["socket-raw"], &["socket-packet"]]), &["ok", "ok"], "control outside");
    let got = agent(&d, "raw", None, &[&["socket-raw"], &["socket-packet"], &["socket-udp"]]);
    assert_lines(&got, &[EPERM, EPERM, "ok"], "SOCK_RAW and AF_PACKET (CAP_NET_RAW); UDP: control");
}

#[test]
fn escape_dangerous_capabilities() {
    let Some(d) = lsm_daemon() else { return };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["sethostname"],                // CAP_SYS_ADMIN
        vec!["swapoff", "/nonexistent"],    // CAP_SYS_ADMIN
        vec!["setns", "/proc/self/ns/net"], // CAP_SYS_ADMIN
        vec!["ioperm"],                     // CAP_SYS_RAWIO
        vec!["net-admin"],                  // CAP_NET_ADMIN
        vec!["reboot-badmagic"],            // CAP_SYS_BOOT
    ];
    let mut want = vec![EPERM, EPERM, "ok opened", EPERM, EPERM, EPERM, EPERM];
    // Control: root outside passes every capability check (and then fails on the
    // arguments where they are bad on purpose).
    let mut ctl_want =
        vec!["ok hostname *", "errno ENOENT", "ok opened", "ok", "ok", "ok lo flags set", "errno EINVAL"];
    if Path::new("/dev/mem").exists() {
        steps.push(vec!["open", "/dev/mem"]); // CAP_SYS_RAWIO
        want.push(EPERM);
        ctl_want.push("ok");
    }
    let steps: Vec<&[&str]> = steps.iter().map(Vec::as_slice).collect();
    assert_lines(&outside(&steps), &ctl_want, "control outside");
    let got = agent(&d, "caps", None, &steps);
    assert_lines(&got, &want, "CAP_SYS_ADMIN, CAP_SYS_RAWIO, CAP_NET_ADMIN, CAP_SYS_BOOT");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(), hostname);
}

#[test]
fn escape_binfmt_misc_register() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("binfmt");
    let at = s.path("binfmt");
    let mounted = nix::mount::mount(
        Some("binfmt_misc"),
        &at,
        Some("binfmt_misc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if !require(mounted.is_ok(), &format!("binfmt_misc mounts ({mounted:?})")) {
        return;
    }
    let _m = MountGuard(at.clone());
    // A handler for files named *.rushescape: every process on the machine that executed
    // one would run the agent's interpreter, outside the agent.
    let (register, entry) = (s.p("binfmt/register"), s.p("binfmt/rush-escape"));
    let rule = ":rush-escape:E::rushescape::/bin/false:";
    let remove = || {
        if Path::new(&entry).exists() {
            let _ = std::fs::write(&entry, "-1");
        }
    };
    // Control: root outside registers (and removes) it.
    let ctl = outside(&[&["put", &register, rule]]);
    let registered = Path::new(&entry).exists();
    remove();
    assert!(ctl == ["ok"] && registered, "control outside: {ctl:?}, entry made: {registered}");
    let got = agent(&d, "binfmt", None, &[&["put", &register, rule]]);
    let escaped = Path::new(&entry).exists();
    remove();
    assert_lines(&got, &[EPERM], "binfmt_misc register");
    assert!(!escaped, "the agent registered a binfmt_misc handler");
}

#[test]
fn escape_sysrq_trigger() {
    let Some(d) = lsm_daemon() else { return };
    let trigger = "/proc/sysrq-trigger";
    // 'h' only prints the SysRq help to the kernel log; 'b' would reboot, 'c' crash.
    assert_lines(&outside(&[&["put", trigger, "h"]]), &["ok"], "control: root outside");
    let got = agent(&d, "sysrq", None, &[&["put", trigger, "h"]]);
    assert_lines(&got, &[EPERM], "a write to /proc/sysrq-trigger");
}

/// Writes to /proc/PID of processes outside the agent: the daemon's oom_score_adj (to have
/// the OOM killer take the daemon first), another agent's, a process outside any agent.
/// Controls: the agent's own /proc/self; root outside.
#[test]
fn escape_proc_pid_write_outside() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let h = Holder::start(&s.p("a/f"), s.dir.path());
    let victim = sleeper_agent(&d, "victim", &[]);
    let adj = |pid: i32| format!("/proc/{pid}/oom_score_adj");
    let before: Vec<String> =
        [d.pid(), victim, h.pid].iter().map(|p| std::fs::read_to_string(adj(*p)).unwrap()).collect();
    let got = agent(
        &d,
        "oomer",
        None,
        &[
            &["put", &adj(d.pid()), "1000"],
            &["put", &adj(victim), "1000"],
            &["put", &adj(h.pid), "1000"],
            &["put", &format!("/proc/{}/comm", h.pid), "pwned"],
            &["put", "/proc/self/oom_score_adj", "500"],
        ],
    );
    assert_lines(&got, &[EPERM, EPERM, EPERM, EPERM, "ok"], "writes to /proc/PID outside the agent");
    let after: Vec<String> =
        [d.pid(), victim, h.pid].iter().map(|p| std::fs::read_to_string(adj(*p)).unwrap()).collect();
    assert_eq!(after, before, "an oom_score_adj outside the agent changed");
    let denied = d.audit().iter().any(|r| {
        r["agent"] == "oomer"
            && r["event"]["kind"] == "guard_deny"
            && r["event"]["hook"] == "file_open:procfs-pid-write"
            && r["event"]["what"] == format!("write to /proc/{} (a process outside the agent)", d.pid())
    });
    assert!(denied, "no guard_deny naming the daemon's /proc entry: {:?}", d.audit());
    // Control: root outside may.
    assert_lines(&outside(&[&["put", &adj(h.pid), "10"]]), &["ok"], "control: root outside");
}

/// The daemon's --state-dir: the harness's temp dir, or its `state/` where the socket
/// lives beside it.
fn state_dir(d: &Daemon) -> PathBuf {
    let nested = d.state.path().join("state");
    if nested.is_dir() { nested } else { d.state.path().to_owned() }
}

#[test]
fn escape_state_dir() {
    let Some(d) = lsm_daemon() else { return };
    let state = state_dir(&d);
    let list = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Something in the audit trail first, so that there are bytes to protect.
    let out = d.rush(&["agent", "spawn", "first", "--", "/bin/true"]);
    assert!(out.status.success(), "{}", describe(&out));
    // The audit trail is in the state database.
    let export = || String::from_utf8(d.rush(&["audit", "--export"]).stdout).unwrap();
    let (names, trail) = (list(), export());
    assert!(trail.contains("\"first\""), "no audit trail: {trail}");
    let p = |f: &str| state.join(f).to_str().unwrap().to_owned();
    let (st, aud, new) = (p(""), p("state.db"), p("new"));
    let got = agent(
        &d,
        "state",
        None,
        &[
            &["ls", &st],
            &["read", &aud],
            &["put", &aud, "{}\n"],
            &["create", &new, "x"],
            &["unlink", &aud],
            &["opath", &st],
            &["openat", "@", "state.db"],
        ],
    );
    // O_PATH of the directory may be allowed (it opens nothing for reading); the openat
    // below it is the real attempt, and moot when the O_PATH was refused.
    let mut want = vec![EPERM; 5];
    if got.get(5).is_some_and(|l| l.starts_with("ok fd ")) {
        want.extend(["ok fd *", EPERM]);
    } else {
        want.extend([EPERM, "errno EBADF"]);
    }
    assert_lines(&got, &want, "the daemon's state dir");
    assert_eq!(list(), names, "the state dir's entries changed");
    assert!(export().starts_with(&trail), "the audit trail was rewritten");
}

#[test]
fn escape_agent_asks_daemon_for_a_grant() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let grant = s.grant("a", "read");
    let rush = bin("rush");
    let (rush, sock, b) = (rush.to_str().unwrap(), d.socket.to_str().unwrap(), s.p("b"));
    let got = agent(
        &d,
        "asker",
        Some(&[&grant]),
        &[
            &["run", rush, "--socket", sock, "capability", "grant", "asker", "--path", &b, "--ops", "read"],
            &["read", &s.p("b/secret")],
        ],
    );
    // Refused by the daemon (an agent is never an operator, even as root).
    assert_lines(&got, &["ok exit 1", EPERM], "capability grant asked from inside the agent");
    let tokens = d.rush_json(&["capability", "list", "asker"]);
    assert!(
        !tokens.as_array().unwrap().iter().any(|t| t["path"].as_str() == Some(b.as_str())),
        "a token on b/ appeared: {tokens:#}"
    );
}

// ---------------------------------------------------------------------------------------
// Aliases across filesystems: the key is (device, inode) and the mount.

#[test]
fn escape_btrfs_snapshot_alias() {
    let Some(d) = lsm_daemon() else { return };
    let Some(fs) = Btrfs::new() else { return };
    let (ws, snap, src) = (fs.p("ws"), fs.p("snap"), fs.p("ws/src"));
    assert_lines(
        &outside(&[&["btrfs-subvol", &ws], &["create", &src, "workspace data"], &["btrfs-snap", &ws, &snap]]),
        &["ok", "ok", "ok"],
        "subvolume ws and its snapshot",
    );
    let (a, b) = (ino(&src), ino(&fs.p("snap/src")));
    assert_eq!(a.1, b.1, "the snapshot's file has the same inode number");
    assert_ne!(a.0, b.0, "st_dev: btrfs reports each subvolume's anonymous device");
    let grant = format!("{ws}:read");
    let got = agent(&d, "snap", Some(&[&grant]), &[&["read", &fs.p("snap/src")], &["read", &src]]);
    assert_lines(&got, &[EPERM, "ok 14"], "a snapshot of the granted subvolume");
}

#[test]
fn escape_btrfs_subvolume_same_ino() {
    let Some(d) = lsm_daemon() else { return };
    let Some(fs) = Btrfs::new() else { return };
    let (v1, v2, f1, f2) = (fs.p("v1"), fs.p("v2"), fs.p("v1/f"), fs.p("v2/f"));
    assert_lines(
        &outside(&[
            &["btrfs-subvol", &v1],
            &["btrfs-subvol", &v2],
            &["create", &f1, "one"],
            &["create", &f2, "two"],
        ]),
        &["ok", "ok", "ok", "ok"],
        "two subvolumes",
    );
    assert_eq!(ino(&f1).1, ino(&f2).1, "equal inode numbers in both subvolumes");
    let grant = format!("{v1}:read");
    let got = agent(&d, "subvol", Some(&[&grant]), &[&["read", &f2], &["read", &f1]]);
    assert_lines(&got, &[EPERM, "ok 3"], "another subvolume's file with the granted inode number");
}

#[test]
fn escape_tmpfs_same_ino() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("t1");
    s.mkdir("t2");
    let _m1 = mount_tmpfs(&s.path("t1"));
    let _m2 = mount_tmpfs(&s.path("t2"));
    s.write("t1/f", "one");
    s.write("t2/f", "two");
    let (i1, i2) = (ino(&s.p("t1/f")), ino(&s.p("t2/f")));
    assert_eq!(i1.1, i2.1, "fresh tmpfs mounts number their first files alike");
    assert_ne!(i1.0, i2.0);
    let grant = s.grant("t1", "read");
    let got = agent(&d, "tmpfs", Some(&[&grant]), &[&["read", &s.p("t2/f")], &["read", &s.p("t1/f")]]);
    assert_lines(&got, &[EPERM, "ok 3"], "another tmpfs's file with the granted inode number");
}

// ---------------------------------------------------------------------------------------
// Editor-style saves: a single-file write token follows its name, and no further.

#[test]
fn escape_rename_save_keeps_grant() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("e");
    s.write("e/doc", "v1");
    s.write("e/sibling", "sibling data");
    let (doc, tmp) = (s.p("e/doc"), s.p("e/.doc.tmp"));
    let grant = format!("{doc}:read,write");
    let got = agent(
        &d,
        "saver",
        Some(&[&grant]),
        &[
            &["cat", &doc],
            &["create", &tmp, "v2"],
            &["rename", &tmp, &doc],
            &["cat", &doc],
            &["write", &doc, "v3"],
            &["cat", &doc],
        ],
    );
    assert_lines(
        &got,
        &["ok v1", "ok", "ok", "ok v2", "ok", "ok v3"],
        "tmp + rename save, then the new inode",
    );
    assert_eq!(s.read("e/doc"), "v3");
    assert!(!s.exists("e/.doc.tmp"));
    assert_eq!(s.read("e/sibling"), "sibling data");
}

#[test]
fn escape_rename_save_does_not_widen() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("e");
    s.write("e/doc", "v1");
    s.write("e/sibling", "sibling data");
    let (doc, sib, t2, t3) = (s.p("e/doc"), s.p("e/sibling"), s.p("e/.t2"), s.p("e/.t3"));
    let grant = format!("{doc}:read,write");
    let got = agent(
        &d,
        "widen",
        Some(&[&grant]),
        &[
            &["read", &sib],
            &["put", &sib, "pwned"],
            &["create", &t2, "evil"], // a temp file beside the granted one: allowed
            &["rename", &t2, &sib],   // ... but not over a sibling
            &["rename", &sib, &doc],  // nor the sibling over the granted name
            &["link", &sib, &t3],
            &["unlink", &sib],
            &["create", &s.p("a/new"), "x"], // nor a temp file elsewhere
            &["cat", &doc],
        ],
    );
    assert_lines(
        &got,
        &[EPERM, EPERM, "ok", EPERM, EPERM, EPERM, EPERM, EPERM, "ok v1"],
        "a single-file write token and the files beside it",
    );
    assert_eq!(s.read("e/sibling"), "sibling data");
    assert_eq!(s.read("e/doc"), "v1");
    assert!(!s.exists("e/.t3") && !s.exists("a/new"));
}

// ---------------------------------------------------------------------------------------
// Files the agent did not open itself, notification marks, O_TMPFILE, hard links.

#[test]
fn escape_mmap_received_fd() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("r");
    s.write("r/ro", "read only data");
    let (secret, ro, f) = (s.p("b/secret"), s.p("r/ro"), s.p("a/f"));
    // Opened read-write by a process outside: what the agent could not open itself.
    let server = FdServer::start(s.path("fds.sock"), vec![open_rw(&secret), open_rw(&ro)]);
    let sock = server.path.as_str();
    let (rw, r) = (s.grant("a", "read,write"), s.grant("r", "read"));
    // Connecting to the server is a write on its socket file (escape_unix_socket_outside).
    let to_server = s.grant("fds.sock", "write");
    let got = agent(
        &d,
        "mapper-fd",
        Some(&[&rw, &r, &to_server]),
        &[
            &["recv-fd", sock], // b/secret, ungranted
            &["pread", "@"],
            &["pwrite", "@", "pwned"],
            &["map", "@", "r", "shared"],
            &["map", "@", "rw", "shared", "pwned"],
            &["map", "@", "r", "private"],
            &["map", "@", "rw", "private", "pwned"],
            &["recv-fd", sock], // r/ro, read-granted
            &["map", "@", "r", "shared"],
            &["map", "@", "rw", "shared", "pwned"],
            &["map-mprotect", "@", "pwned"],
            &["fd", &f, "rw"], // control: a granted file
            &["map", "@", "rw", "shared", "AAAA"],
        ],
    );
    assert_lines(
        &got,
        &[
            "ok fd *",
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            "ok fd *",
            "ok read only data",
            EPERM,
            "ok mapped",
            EPERM,
            "ok fd *",
            "ok wrote 4",
        ],
        "mappings of fds received over SCM_RIGHTS",
    );
    assert_eq!(s.read("b/secret"), "secret data");
    assert_eq!(s.read("r/ro"), "read only data");
    assert_eq!(s.read("a/f"), "AAAAted data", "control: the granted file's shared mapping wrote it");
    assert_eq!(file_deny(&d, "mapper-fd", "mmap_file", &secret)["event"]["op"], "read");
    assert_eq!(file_deny(&d, "mapper-fd", "mmap_file", &ro)["event"]["op"], "write");
    assert_eq!(file_deny(&d, "mapper-fd", "file_mprotect", &ro)["event"]["op"], "write");
}

#[test]
fn escape_mmap_stdin() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let secret = s.p("b/secret");
    let grant = s.grant("a", "read");
    let args = spawn_args(
        "mapper-stdin",
        &[],
        Some(&[&grant]),
        &[
            &["pread", "0"],
            &["map", "0", "r", "shared"],
            &["pwrite", "0", "pwned"],
            &["map", "0", "rw", "shared", "pwned"],
            &["map-mprotect", "0", "pwned"],
            &["map", "0", "rw", "private", "private"],
        ],
    );
    // stdin: b/secret opened read-write by root outside. A regular file handed in as
    // stdio gets a token in the modes its fd was opened with (read-write here), as under
    // Landlock, which never checks an fd opened outside: the backends agree. So reads,
    // writes and mappings of it all go through the hooks, and all are allowed.
    let out = d
        .rush_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(open_rw(&secret))
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(10)), "{}", describe(&out));
    assert_lines(
        &lines(&out),
        &[
            "ok secret data",
            "ok secret data",
            "ok wrote 5",
            "ok wrote 5",
            "ok mapped",
            "ok wrote 5",
            "ok wrote 7",
        ],
        "mappings of a read-write stdin, whose token is read,write",
    );
    assert_eq!(
        s.read("b/secret"),
        "pwnedt data",
        "written through the fd and the shared mappings; the private one wrote its copy only"
    );
    // (The tool's own look at /proc/self/maps, ungranted, is refused: not the file's.)
    let denied = d.audit().iter().any(|r| {
        r["agent"] == "mapper-stdin"
            && r["event"]["kind"] == "file_deny"
            && r["event"]["path"] == secret.as_str()
    });
    assert!(!denied, "{:?}", d.audit());
    // The token is the fd's modes, no more: handed read-only, the same file is not
    // writable by path either (EPERM from file_open, not the fd's own EBADF).
    let args =
        spawn_args("reader-stdin", &[], Some(&[&grant]), &[&["pread", "0"], &["put", &secret, "pwned"]]);
    let out = d
        .rush_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(std::fs::File::open(&secret).unwrap())
        .output()
        .unwrap();
    assert_lines(&lines(&out), &["ok pwnedt data", EPERM], "a read-only stdin: read, and no write by path");
    assert_eq!(s.read("b/secret"), "pwnedt data");
}

#[test]
fn escape_notify_marks() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let (a, b, secret, f) = (s.p("a"), s.p("b"), s.p("b/secret"), s.p("a/f"));
    // Control: root outside watches b/ (the refusals below are the agent's).
    assert_lines(
        &outside(&[&["inotify", &b, &secret], &["fanotify", &b, "fid"]]),
        &["ok wd 1 events *", "ok init", "ok"],
        "marks outside",
    );
    let server = FdServer::start(s.path("fds.sock"), vec![std::fs::File::open(&b).unwrap()]);
    let grant = s.grant("a", "read,write");
    let to_server = s.grant("fds.sock", "write");
    let got = agent(
        &d,
        "watcher",
        Some(&[&grant, &to_server]),
        &[
            &["inotify", &b],
            &["inotify", &secret],
            &["fanotify", &b, "fid"],
            &["fanotify", &secret, "fid"],
            &["fanotify", &b, "plain"],
            &["recv-fd", &server.path], // b/, opened outside
            &["dnotify", "@"],
            &["inotify", &a, &f], // controls: the granted dir
            &["fanotify", &a, "fid"],
            &["dir", &a],
            &["dnotify", "@"],
        ],
    );
    // fanotify without FID reporting needs CAP_SYS_ADMIN, which the guard refuses any
    // agent; with it, fanotify_init works unprivileged and the mark is what is refused.
    assert_lines(
        &got,
        &[
            EPERM,
            EPERM,
            "ok init",
            EPERM,
            "ok init",
            EPERM,
            EPERM,
            "ok fd *",
            EPERM,
            "ok wd 1 events *",
            "ok init",
            "ok",
            "ok fd *",
            "ok",
        ],
        "inotify, fanotify, dnotify marks",
    );
    let events: u32 = got[9].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(events >= 1, "control: the watch on a/ saw the agent's own write: {got:?}");
    assert_eq!(file_deny(&d, "watcher", "path_notify", &b)["event"]["op"], "read");
    assert_eq!(file_deny(&d, "watcher", "path_notify", &secret)["event"]["op"], "read");
    assert_eq!(s.read("b/secret"), "secret data");
}

#[test]
fn escape_o_tmpfile() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.mkdir("c");
    let (a, c) = (s.p("a"), s.p("c"));
    let (rw, rwc) = (s.grant("a", "read,write"), s.grant("c", "read,write,create"));
    let got = agent(
        &d,
        "tmpfile",
        Some(&[&rw, &rwc]),
        &[
            &["tmpfile", &a, "unnamed"],
            &["tmpfile", &c, "made in c"], // control: create granted
            &["link-follow", "/proc/self/fd/@", &s.p("c/t")],
            &["tmpfile", &c, "made in c"],
            &["link-follow", "/proc/self/fd/@", &s.p("a/t")], // linkat into a/: path_link
        ],
    );
    assert_lines(
        &got,
        &[EPERM, "ok fd *", "ok", "ok fd *", EPERM],
        "O_TMPFILE in a dir without create, and linkat of one into it",
    );
    assert_eq!(s.read("c/t"), "made in c");
    assert!(!s.exists("a/t"));
    let names: Vec<_> = std::fs::read_dir(s.path("a")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["f"], "a/ changed");
    // The tmpfile has no name: its event's path is the directory's and whatever the
    // kernel prints for the unnamed entry.
    let denied = || {
        d.audit().into_iter().any(|r| {
            r["agent"] == "tmpfile"
                && r["event"]["hook"] == "file_open"
                && r["event"]["op"] == "create"
                && r["event"]["path"].as_str().is_some_and(|p| p.starts_with(&a))
        })
    };
    assert!(wait_until(Duration::from_secs(5), denied), "no create file_deny in a/: {:#?}", d.audit());
}

/// A privileged service outside, listening on a pathname Unix socket (systemd, D-Bus and
/// Docker do; a root agent that reaches them can have them run anything outside Rush):
/// connecting or sending to it is a write on its socket file, refused without a token,
/// for root agents too. Controls: root outside connects; a token on the socket admits
/// the agent; the agent's own `rush` still reaches its daemon (RUSH_SOCKET is in the
/// baseline).
#[test]
fn escape_unix_socket_outside() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let (stream, dgram) = (s.path("priv.sock"), s.path("priv.dgram"));
    let listener = std::os::unix::net::UnixListener::bind(&stream).unwrap();
    let receiver = std::os::unix::net::UnixDatagram::bind(&dgram).unwrap();
    receiver.set_nonblocking(true).unwrap();
    let (stream_p, dgram_p) = (s.p("priv.sock"), s.p("priv.dgram"));
    // Control: root outside any agent.
    assert_lines(
        &outside(&[&["unix-connect", &stream_p], &["unix-send", &dgram_p]]),
        &["ok", "ok 5"],
        "connect and send outside",
    );
    let mut buf = [0u8; 16];
    assert_eq!(receiver.recv(&mut buf).unwrap(), 5, "the control's datagram arrived");
    let rush = bin("rush");
    let grant = s.grant("a", "read,write");
    let got = agent(
        &d,
        "asker",
        Some(&[&grant]),
        &[&["unix-connect", &stream_p], &["unix-send", &dgram_p], &["run", rush.to_str().unwrap(), "whoami"]],
    );
    assert_lines(
        &got,
        &[EPERM, EPERM, "agent asker (uid 0*", "ok exit 0"],
        "connect and send to a socket outside the grant; `rush whoami` reaches the daemon",
    );
    assert!(receiver.recv(&mut buf).is_err(), "a refused datagram arrived");
    let denied = |hook: &str, path: &str| {
        d.audit().iter().any(|r| {
            r["agent"] == "asker"
                && r["event"]["kind"] == "file_deny"
                && r["event"]["hook"] == hook
                && r["event"]["path"] == path
                && r["event"]["op"] == "write"
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || denied("unix_stream_connect", &stream_p)
            && denied("unix_may_send", &dgram_p)),
        "no file_deny records for the two sockets: {:?}",
        d.audit()
    );
    // With a token on each socket, the same agent gets through.
    let (to_stream, to_dgram) = (s.grant("priv.sock", "write"), s.grant("priv.dgram", "write"));
    let got = agent(
        &d,
        "granted",
        Some(&[&grant, &to_stream, &to_dgram]),
        &[&["unix-connect", &stream_p], &["unix-send", &dgram_p]],
    );
    assert_lines(&got, &["ok", "ok 5"], "connect and send with tokens on the sockets");
    assert_eq!(receiver.recv(&mut buf).unwrap(), 5, "the granted datagram arrived");
    drop(listener);
}

/// Abstract Unix sockets have no file: an agent (any agent, file-confined or not) reaches
/// only those its own processes made, as Landlock's scope has it. A display server's
/// `@/tmp/.X11-unix/X0` or a session bus outside would otherwise take its requests.
/// Controls: root outside connects; the agent connects to a listener of its own.
#[test]
fn escape_unix_abstract_socket_outside() {
    use std::os::linux::net::SocketAddrExt;
    let Some(d) = lsm_daemon() else { return };
    let name = format!("rush-test-{}", std::process::id());
    let (stream, dgram) = (format!("abstract:{name}.stream"), format!("abstract:{name}.dgram"));
    let addr = |n: &str| {
        std::os::unix::net::SocketAddr::from_abstract_name(n.strip_prefix("abstract:").unwrap()).unwrap()
    };
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr(&stream)).unwrap();
    let receiver = std::os::unix::net::UnixDatagram::bind_addr(&addr(&dgram)).unwrap();
    receiver.set_nonblocking(true).unwrap();
    assert_lines(
        &outside(&[&["unix-connect", &stream], &["unix-send", &dgram]]),
        &["ok", "ok 5"],
        "connect and send outside",
    );
    let mut buf = [0u8; 16];
    assert_eq!(receiver.recv(&mut buf).unwrap(), 5, "the control's datagram arrived");
    let s = Scratch::new();
    let grant = s.grant("a", "read,write");
    for (agent_name, allow) in [("abstract-open", None), ("abstract-confined", Some(&[grant.as_str()][..]))] {
        let own = format!("{name}.{agent_name}");
        let got = agent(
            &d,
            agent_name,
            allow,
            &[&["unix-connect", &stream], &["unix-send", &dgram], &["abstract-self", &own]],
        );
        assert_lines(&got, &[EPERM, EPERM, "ok"], &format!("{agent_name}: abstract sockets outside"));
        assert!(receiver.recv(&mut buf).is_err(), "{agent_name}: a refused datagram arrived");
        let denied = |hook: &str| {
            d.audit().iter().any(|r| {
                r["agent"] == agent_name && r["event"]["kind"] == "guard_deny" && r["event"]["hook"] == hook
            })
        };
        assert!(
            wait_until(Duration::from_secs(5), || denied("unix_stream_connect:abstract")
                && denied("unix_may_send:abstract")),
            "{agent_name}: no guard_deny records: {:?}",
            d.audit()
        );
    }
}

#[test]
fn escape_hardlink_modes() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    s.write("b/x", "linked data");
    std::fs::hard_link(s.path("b/x"), s.path("a/h")).unwrap(); // by root outside, before the spawn
    let (h, f) = (s.p("a/h"), s.p("a/f"));
    let grant = s.grant("a", "read,write");
    // follow (the default, asserted so the docs stay true): a/h is b/x, read and written.
    let got = agent_with(
        &d,
        "hl-follow",
        &["--hardlinks", "follow"],
        &[&grant],
        &[&["cat", &h], &["put", &h, "FOLLOW"]],
    );
    assert_lines(&got, &["ok linked data", "ok"], "--hardlinks follow");
    assert_eq!(s.read("b/x"), "FOLLOW data", "follow: writing a/h wrote b/x");
    assert_eq!(d.rush_json(&["agent", "status", "hl-follow"])["hardlinks"], "follow");
    s.write("b/x", "linked data");

    let steps: &[&[&str]] = &[
        &["cat", &h],
        &["put", &h, "pwned"],
        &["open-rw", &h],
        &["truncate", &h, "0"],
        &["chmod", &h, "777"],
        &["fd", &h, "r"],
        &["map", "@", "r", "shared"],
        &["cat", &f], // control: one link, the directory's grant
        &["put", &f, "GRANTED"],
    ];
    let mode = std::fs::metadata(s.path("b/x")).unwrap().mode();
    let got = agent_with(&d, "hl-rw", &["--hardlinks", "refuse-write"], &[&grant], steps);
    assert_lines(
        &got,
        &["ok linked data", EPERM, EPERM, EPERM, EPERM, "ok fd *", "ok linked data", "ok granted data", "ok"],
        "--hardlinks refuse-write",
    );
    assert_eq!(d.rush_json(&["agent", "status", "hl-rw"])["hardlinks"], "refuse_write");
    assert_eq!(file_deny(&d, "hl-rw", "file_open", &h)["event"]["op"], "write");
    let got = agent_with(&d, "hl-all", &["--hardlinks", "refuse"], &[&grant], steps);
    assert_lines(
        &got,
        &[EPERM, EPERM, EPERM, EPERM, EPERM, EPERM, "errno EBADF (fstat)", "ok GRANTED data", "ok"],
        "--hardlinks refuse",
    );
    assert_eq!(file_deny(&d, "hl-all", "file_open", &h)["event"]["op"], "read");
    assert_eq!(s.read("b/x"), "linked data");
    let meta = std::fs::metadata(s.path("b/x")).unwrap();
    assert_eq!((meta.len(), meta.mode()), (11, mode));
    // A token naming a/h itself grants it in either mode.
    let own = format!("{h}:read,write");
    let got = agent_with(
        &d,
        "hl-own",
        &["--hardlinks", "refuse"],
        &[&grant, &own],
        &[&["cat", &h], &["put", &h, "NAMED"]],
    );
    assert_lines(&got, &["ok linked data", "ok"], "--hardlinks refuse with a token on a/h itself");
    assert_eq!(s.read("b/x"), "NAMEDd data");
}

/// The cost of the mapping checks: open + mmap(MAP_SHARED, PROT_READ) + a read of the
/// page + munmap + close of a granted file, in a file-confined agent and outside any
/// agent, alternated in one run. Prints the numbers (docs/ESCAPES.md, the report).
#[test]
fn mmap_cost_agent_vs_outside() {
    let Some(d) = lsm_daemon() else { return };
    let s = Scratch::new();
    let f = s.p("a/f");
    let grant = s.grant("a", "read");
    let n = "20000";
    let per_iter = |l: &[String]| -> u64 {
        let line = l.iter().find(|l| l.contains("ns/iter")).unwrap_or_else(|| panic!("{l:?}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (mut inside, mut out) = (Vec::new(), Vec::new());
    for round in 0..5 {
        out.push(per_iter(&outside(&[&["map-loop", &f, n]])));
        inside.push(per_iter(&agent(&d, &format!("cost{round}"), Some(&[&grant]), &[&["map-loop", &f, n]])));
    }
    inside.sort_unstable();
    out.sort_unstable();
    let (i, o) = (inside[2], out[2]);
    let ratio = i as f64 / o as f64;
    eprintln!(
        "mmap cost: outside {o} ns/iter {out:?}, confined agent {i} ns/iter {inside:?}, ratio {ratio:.2}x"
    );
    assert!(ratio < 20.0, "a confined agent's open+mmap+munmap+close costs {ratio:.1}x the same outside");
}

//! File capability tokens, end to end: the real daemon and CLI, enforced by the BPF LSM
//! programs. Runs where BPF LSM attaches (the QEMU guests); under RUSH_TEST_STRICT=1 a
//! kernel without it fails these tests instead of skipping them.
//!
//! Each test ends in what the kernel did: an EPERM on open, read, write, create, delete or
//! rename, an unchanged target, or a deny record in the audit trail.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kernel_tests::*;
use serde_json::Value;

/// A scratch tree: `a/` (to be granted) with `a/f`, and `b/` (never granted) with `b/secret`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::Builder::new().prefix("rush-files-").tempdir_in("/tmp").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a/f"), "granted data").unwrap();
        std::fs::write(dir.path().join("b/secret"), "secret data").unwrap();
        Tree { dir }
    }
    fn a(&self) -> PathBuf {
        self.dir.path().join("a")
    }
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_owned()
    }
}

fn fs_tool() -> String {
    bin("rush-test-fs").to_str().unwrap().to_owned()
}

/// The test binaries' directory must be readable and executable by confined agents.
fn bin_grant() -> String {
    format!("{}:read,exec", bin_dir().display())
}

/// `rush agent spawn NAME --allow ... -- rush-test-fs ARGS` → the tool's output lines.
fn agent_fs(d: &Daemon, name: &str, allow: &[&str], args: &[&str]) -> Vec<String> {
    let bins = bin_grant();
    let tool = fs_tool();
    let mut cmd: Vec<&str> = vec!["agent", "spawn", name, "--allow", &bins];
    for a in allow {
        cmd.extend(["--allow", a]);
    }
    cmd.extend(["--", &tool]);
    cmd.extend_from_slice(args);
    let out = d.rush(&cmd);
    assert!(
        matches!(out.status.code(), Some(0) | Some(10)),
        "rush {cmd:?} did not run the tool: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn outside(args: &[&str]) -> String {
    let out = Command::new(bin("rush-test-fs")).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The agent's file_deny record for `path`, waiting for it: kernel events reach the audit
/// trail asynchronously. (Programs make denied reads of their own, e.g. the Rust runtime's
/// of /proc/self/maps, so the record is looked up by path, not taken first.)
fn file_deny(d: &Daemon, agent: &str, path: &str) -> Value {
    let get = || -> Option<Value> {
        d.audit()
            .into_iter()
            .find(|r| r["agent"] == agent && r["event"]["kind"] == "file_deny" && r["event"]["path"] == path)
    };
    wait_until(Duration::from_secs(5), || get().is_some());
    get().unwrap_or_else(|| panic!("no file_deny of {path} for {agent} in {:#?}", d.audit()))
}

#[test]
fn a_granted_directory_is_usable_and_everything_else_is_refused() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read,write", t.a().display());
    let shadow = if Path::new("/etc/shadow").exists() { "/etc/shadow" } else { "/etc/hosts" };

    assert_eq!(agent_fs(&d, "r1", &[&grant], &["read", &t.p("a/f")]), ["ok 12"]);
    assert_eq!(agent_fs(&d, "r2", &[&grant], &["write", &t.p("a/f"), "+more"]), ["ok"]);
    assert_eq!(std::fs::read_to_string(t.p("a/f")).unwrap(), "granted data+more");
    assert_eq!(agent_fs(&d, "r3", &[&grant], &["read", &t.p("b/secret")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "r4", &[&grant], &["read", shadow]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "r5", &[&grant], &["write", &t.p("b/secret"), "x"]), ["errno EPERM"]);
    assert_eq!(std::fs::read_to_string(t.p("b/secret")).unwrap(), "secret data", "target changed");
    // Processes outside agents are never affected.
    assert_eq!(outside(&["read", &t.p("b/secret")]), "ok 11");
    assert_eq!(outside(&["read", shadow]).split(' ').next(), Some("ok"));

    let rec = file_deny(&d, "r3", &t.p("b/secret"));
    let ev = &rec["event"];
    assert_eq!(ev["op"], "read", "{ev}");
    assert_eq!(ev["hook"], "file_open");
    assert_eq!(ev["comm"], "rush-test-fs");
    assert!(ev["pid"].as_u64().unwrap() > 0);
    assert_eq!(file_deny(&d, "r5", &t.p("b/secret"))["event"]["op"], "write");
}

#[test]
fn create_delete_and_rename_need_their_own_operations() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let rw = format!("{}:read,write", t.a().display());
    let all = format!("{}:read,write,create,delete", t.a().display());

    assert_eq!(agent_fs(&d, "c1", &[&rw], &["create", &t.p("a/new")]), ["errno EPERM"]);
    assert!(!Path::new(&t.p("a/new")).exists());
    assert_eq!(agent_fs(&d, "c2", &[&all], &["create", &t.p("a/new")]), ["ok"]);
    assert_eq!(agent_fs(&d, "c3", &[&all], &["mkdir", &t.p("a/sub")]), ["ok"]);
    assert_eq!(agent_fs(&d, "c4", &[&rw], &["unlink", &t.p("a/new")]), ["errno EPERM"]);
    assert!(Path::new(&t.p("a/new")).exists());
    assert_eq!(agent_fs(&d, "c5", &[&all], &["unlink", &t.p("a/new")]), ["ok"]);
    assert_eq!(agent_fs(&d, "c6", &[&all], &["create", &t.p("b/new")]), ["errno EPERM"]);
    // An ungranted file cannot be brought into reach by rename or hard link.
    assert_eq!(agent_fs(&d, "c7", &[&all], &["rename", &t.p("b/secret"), &t.p("a/stolen")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c8", &[&all], &["link", &t.p("b/secret"), &t.p("a/linked")]), ["errno EPERM"]);
    assert!(Path::new(&t.p("b/secret")).exists() && !Path::new(&t.p("a/stolen")).exists());
    assert!(!Path::new(&t.p("a/linked")).exists());
    // Within the grant, renames work.
    assert_eq!(agent_fs(&d, "c9", &[&all], &["rename", &t.p("a/f"), &t.p("a/g")]), ["ok"]);
}

#[test]
fn a_revoked_token_fails_the_next_read_on_an_open_descriptor() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read,write", t.a().display());
    // Opened, and its first read answered "ok 1".
    let (mut child, mut ask) = holder(&d, "holder", &grant, &t.p("a/f"));
    assert_eq!(ask("write"), "ok 1");

    let out = d.rush(&["capability", "revoke", "holder", "--path", t.a().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(ask("read"), "errno EPERM", "revoke must reach the already-open descriptor");
    assert_eq!(ask("write"), "errno EPERM");
    drop(ask);
    let _ = child.wait();
    let kinds: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|r| r["agent"] == "holder")
        .map(|r| r["event"]["kind"].clone())
        .collect();
    assert!(kinds.contains(&Value::from("revoke")) && kinds.contains(&Value::from("file_deny")), "{kinds:?}");
}

#[test]
fn a_token_with_a_ttl_lapses_in_the_kernel_with_the_daemon_dead() {
    let Some(mut d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read:3s", t.a().display());
    let (bins, tool, f) = (bin_grant(), fs_tool(), t.p("a/f"));
    let script = format!("{tool} read {f}; sleep 4; {tool} read {f}");
    let mut child = d
        .rush_cmd(&[
            "agent", "spawn", "ttl", "--allow", &bins, "--allow", &grant, "--", "/bin/sh", "-c", &script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ok 12", "readable before expiry");
    // No daemon from here on: the expiry is the kernel's own business.
    let started = Instant::now();
    d.kill9();
    assert!(!d.is_running());
    let second = lines.next().unwrap().unwrap();
    assert_eq!(second, "errno EPERM", "the token must lapse with no daemon action");
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = child.wait();
}

/// An agent holding `f` open (the `hold` tool, one command a line), after its first read.
fn holder(
    d: &Daemon,
    name: &str,
    grant: &str,
    f: &str,
) -> (std::process::Child, impl FnMut(&str) -> String + use<>) {
    let (bins, tool) = (bin_grant(), fs_tool());
    let mut child = d
        .rush_cmd(&["agent", "spawn", name, "--allow", &bins, "--allow", grant, "--", &tool, "hold", f])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "opened");
    let mut ask = move |cmd: &str| -> String {
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        lines.next().unwrap().unwrap()
    };
    // The open and this read leave the decision cached for the descriptor.
    assert_eq!(ask("read"), "ok 1");
    (child, ask)
}

/// The decision cached for an open descriptor carries the token's expiry: with the daemon
/// dead (nobody to bump the policy generation), the next read after the TTL fails.
#[test]
fn a_ttl_lapses_on_an_open_descriptor_with_the_daemon_dead() {
    let Some(mut d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read,write:3s", t.a().display());
    let (mut child, mut ask) = holder(&d, "ttlfd", &grant, &t.p("a/f"));
    assert_eq!(ask("read"), "ok 1", "a second read, from the cache");
    d.kill9();
    assert!(!d.is_running());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(ask("read"), "errno EPERM", "the token must lapse on the open descriptor with no daemon");
    drop(ask);
    let _ = child.kill();
    let _ = child.wait();
}

/// A file moved out of the granted directory (by a process outside any agent) is no
/// longer covered: the next read on the descriptor opened before fails, cached or not.
#[test]
fn a_file_moved_out_of_its_grant_fails_the_next_read_on_an_open_descriptor() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read,write", t.a().display());
    let (mut child, mut ask) = holder(&d, "moved", &grant, &t.p("a/f"));
    assert_eq!(ask("read"), "ok 1");
    std::fs::rename(t.p("a/f"), t.dir.path().join("f-moved")).unwrap();
    assert_eq!(ask("read"), "errno EPERM", "moved out of the grant");
    drop(ask);
    let _ = child.kill();
    let _ = child.wait();
}

/// `a/x/y/g` with `a` granted read, opened by an agent (`open-serve`) until its walks'
/// results are cached for the directories it went through.
fn cached_below_a(d: &Daemon, name: &str, t: &Tree) -> Served {
    std::fs::create_dir_all(t.p("a/x/y")).unwrap();
    std::fs::write(t.p("a/x/y/g"), "g").unwrap();
    let grant = vec![format!("{}:read", t.a().display())];
    let mut s = Served::agent(d, name, &grant, &["open-serve"]);
    for path in ["a/x/y/g", "a/f", "a/x/y/g"] {
        let line = s.ask(&format!("3 {}", t.p(path)));
        assert!(line.as_deref().is_some_and(|l| l.starts_with("ns_per_op")), "{path}: {line:?}");
    }
    s
}

/// Walk results are cached per directory (rush_dir_cache): a grant deleted from a
/// directory high up must not be served from the entry of a directory below it.
#[test]
fn a_grant_deleted_high_up_is_not_served_from_a_cached_lower_directory() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let mut s = cached_below_a(&d, "dircache", &t);
    let out = d.rush(&["capability", "revoke", "dircache", "--path", t.a().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.ask(&format!("1 {}", t.p("a/x/y/g"))).as_deref(), Some("errno EPERM"), "revoked above y");
}

/// A directory moved out of the grant (by a process outside any agent) takes its cached
/// walk result with it as a stale entry: the files below it are refused at the next open.
#[test]
fn a_directory_moved_out_of_its_grant_is_not_served_from_its_cached_walk() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let mut s = cached_below_a(&d, "dirmoved", &t);
    std::fs::rename(t.p("a/x"), t.p("b/x")).unwrap();
    assert_eq!(s.ask(&format!("1 {}", t.p("b/x/y/g"))).as_deref(), Some("errno EPERM"), "moved out of a");
}

/// Decisions are cached per inode (rush_open_cache): what one agent was granted on a file
/// it opens again and again is not another agent's, whose open of it is refused.
#[test]
fn a_file_opened_by_one_agent_is_still_refused_to_another() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let f = t.p("a/f");
    let mut granted = Served::agent(&d, "inode-a", &[format!("{}:read", t.a().display())], &["open-serve"]);
    let mut other = Served::agent(&d, "inode-b", &[format!("{}:read", t.p("b"))], &["open-serve"]);
    for _ in 0..3 {
        assert!(granted.measures(&f), "the granted agent");
        assert_eq!(other.ask(&format!("1 {f}")).as_deref(), Some("errno EPERM"), "the other agent");
    }
}

/// An inode's cached decision holds for the path it was reached by: a second name of the
/// file outside the grant (a hard link made outside any agent) is walked and refused, also
/// once the granted name is gone.
#[test]
fn a_file_opened_through_a_granted_name_is_refused_through_another() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let alias = t.p("b/alias");
    std::fs::hard_link(t.p("a/f"), &alias).unwrap();
    let mut s = Served::agent(&d, "names", &[format!("{}:read", t.a().display())], &["open-serve"]);
    for _ in 0..3 {
        assert!(s.measures(&t.p("a/f")), "through the granted name");
        assert_eq!(s.ask(&format!("1 {alias}")).as_deref(), Some("errno EPERM"), "through b/alias");
    }
    std::fs::remove_file(t.p("a/f")).unwrap();
    assert_eq!(s.ask(&format!("1 {alias}")).as_deref(), Some("errno EPERM"), "the granted name unlinked");
    assert_eq!(outside(&["read", &alias]), "ok 12");
}

/// A create right found on a directory is cached on it (rush_open_cache): revoking the
/// grant stops the next create there, in the same process, and another directory's
/// creates never came from that entry.
#[test]
fn a_revoked_create_right_stops_the_next_create_in_a_directory_created_in_before() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = vec![format!("{}:read,write,create", t.a().display())];
    let mut s = Served::agent(&d, "creates", &grant, &["create-serve"]);
    for i in 0..3 {
        assert_eq!(s.ask(&t.p(&format!("a/n{i}"))).as_deref(), Some("ok"), "create {i} in a");
    }
    assert_eq!(s.ask(&t.p("b/n0")).as_deref(), Some("errno EPERM"), "b is not granted");
    let out = d.rush(&["capability", "revoke", "creates", "--path", t.a().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(s.ask(&t.p("a/n9")).as_deref(), Some("errno EPERM"), "after the revoke");
    assert!(!Path::new(&t.p("a/n9")).exists() && !Path::new(&t.p("b/n0")).exists());
}

#[test]
fn a_grant_covers_a_file_a_thousand_directories_deep() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let deep = outside(&["deep-tree", &t.p("a"), "1000"]);
    let deep = deep.strip_prefix("ok ").unwrap_or_else(|| panic!("deep-tree: {deep}")).to_owned();
    let grant_a = format!("{}:read", t.a().display());
    let grant_b = format!("{}:read", t.p("b"));
    assert_eq!(agent_fs(&d, "deep1", &[&grant_a], &["read", &deep]), ["ok 4"]);
    assert_eq!(agent_fs(&d, "deep2", &[&grant_b], &["read", &deep]), ["errno EPERM"]);
}

#[test]
fn capability_grant_list_and_revoke_through_the_cli() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let bins = bin_grant();
    let grant_b = format!("{}:read", t.p("b"));
    let out = d.rush(&[
        "--json",
        "agent",
        "spawn",
        "cli",
        "--detach",
        "--allow",
        &bins,
        "--allow",
        &grant_b,
        "--",
        "/bin/sleep",
        "30",
    ]);
    assert!(out.status.success(), "{}", describe(&out));

    let granted = d.rush_json(&[
        "capability",
        "grant",
        "cli",
        "--path",
        t.a().to_str().unwrap(),
        "--ops",
        "read,write",
        "--duration",
        "1h",
    ]);
    assert_eq!(granted["ops"], Value::from(3));
    assert!(granted["expires_unix_ms"].as_u64().is_some());
    let tokens = d.rush_json(&["capability", "list", "cli"]);
    let origins: Vec<&str> =
        tokens.as_array().unwrap().iter().map(|t| t["origin"].as_str().unwrap()).collect();
    assert!(
        origins.contains(&"baseline") && origins.contains(&"spawn") && origins.contains(&"grant"),
        "{origins:?}"
    );

    let id = granted["id"].as_u64().unwrap().to_string();
    let revoked = d.rush_json(&["capability", "revoke", "cli", "--id", &id]);
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    // Bad input: one clear line, exit 1 (daemon-side) or 2 (usage).
    for (args, code, needle) in [
        (vec!["capability", "revoke", "cli", "--id", "999999"], 1, "no token 999999"),
        (
            vec!["capability", "grant", "cli", "--path", "/nonexistent/x", "--ops", "read"],
            1,
            "/nonexistent/x",
        ),
        (vec!["capability", "grant", "nobody", "--path", "/tmp", "--ops", "read"], 1, "nobody"),
        (vec!["capability", "grant", "cli", "--path", "relative", "--ops", "read"], 2, "absolute"),
        (vec!["capability", "grant", "cli", "--path", "/tmp", "--ops", "fly"], 2, "fly"),
        (vec!["capability", "revoke", "cli"], 2, ""),
    ] {
        let out = d.rush(&args);
        assert_eq!(out.status.code(), Some(code), "rush {args:?}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle), "rush {args:?}: {}", describe(&out));
    }
    // An agent spawned without --allow is not file-confined: a grant would mean nothing.
    let out = d.rush(&["agent", "spawn", "free", "--detach", "--", "/bin/sleep", "30"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.rush(&["capability", "grant", "free", "--path", "/tmp", "--ops", "read"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not file-confined"), "{}", describe(&out));
}

/// A cgroup v2 child of the root with the controllers an agent's cgroup has (memory, cpu,
/// pids, io), made by the test and nothing else: what being in a non-root cgroup costs by
/// itself (memory charging of every page and of kernel objects such as new inodes, which
/// the root cgroup skips), apart from what Rush adds. On a systemd host every login shell
/// is in such a cgroup already; in the guests, the "outside" rows run in the root.
struct PlainCgroup {
    dir: PathBuf,
}

impl PlainCgroup {
    fn new(name: &str) -> PlainCgroup {
        let root = Path::new("/sys/fs/cgroup");
        assert!(root.join("cgroup.controllers").exists(), "a pure cgroup v2 mount at /sys/fs/cgroup");
        for c in ["+memory", "+cpu", "+pids", "+io"] {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), c);
        }
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        assert!(have.contains("memory"), "the plain cgroup has the memory controller: {have:?}");
        PlainCgroup { dir }
    }

    /// `sh -c SCRIPT`, moved into this cgroup before the script runs.
    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &format!("echo $$ > {}/cgroup.procs && {script}", self.dir.display())]);
        cmd
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        wait_until(Duration::from_secs(5), || std::fs::remove_dir(&self.dir).is_ok());
    }
}

/// A `rush-test-fs` serving line requests on its stdin/stdout: in an agent (through a
/// foreground `rush agent spawn`) or outside. Dropping it closes stdin: the tool exits.
struct Served {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Served {
    fn start(mut cmd: Command) -> Served {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Served { child, stdin, lines }
    }

    /// In agent NAME with the tool's directory and `allow` granted: `rush-test-fs ARGS`.
    fn agent(d: &Daemon, name: &str, allow: &[String], args: &[&str]) -> Served {
        let (bins, tool) = (bin_grant(), fs_tool());
        let mut cmd: Vec<&str> = vec!["agent", "spawn", name, "--allow", &bins];
        for a in allow {
            cmd.extend(["--allow", a.as_str()]);
        }
        cmd.extend(["--", &tool]);
        cmd.extend_from_slice(args);
        Served::start(d.rush_cmd(&cmd))
    }

    fn outside(args: &[&str]) -> Served {
        let mut cmd = Command::new(fs_tool());
        cmd.args(args);
        Served::start(cmd)
    }

    /// Outside any agent, but in `cg` (a [`PlainCgroup`]): `rush-test-fs ARGS`.
    fn in_cgroup(cg: &PlainCgroup, args: &[&str]) -> Served {
        Served::start(cg.command(&format!("exec {} {}", fs_tool(), args.join(" "))))
    }

    /// The next output line; None once the process is gone.
    fn line(&mut self) -> Option<String> {
        self.lines.next().and_then(Result::ok)
    }

    fn ask(&mut self, request: &str) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        writeln!(stdin, "{request}").ok()?;
        stdin.flush().ok()?;
        self.line()
    }

    /// Whether one open+read+close of `f` is answered with a measurement (`open-serve`):
    /// the process runs and can open the file.
    fn measures(&mut self, f: &str) -> bool {
        self.ask(&format!("1 {f}")).is_some_and(|l| l.starts_with("ns_per_op"))
    }

    /// The exit status of the process (for an agent: of `rush`, 128+N for signal N).
    fn wait(mut self) -> std::process::ExitStatus {
        self.stdin.take();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

fn revoke_kills(d: &Daemon, agent: &str) -> Vec<Value> {
    d.audit()
        .into_iter()
        .filter(|r| r["agent"] == agent && r["event"]["kind"] == "revoke_kill")
        .map(|r| r["event"].clone())
        .collect()
}

/// No hook runs on a page fault: a revoke must reach pages mapped before it by killing the
/// process that maps them, and only if the mapping uses what the revoke took away.
#[test]
fn a_revoke_kills_the_process_that_maps_the_file_and_spares_the_others() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let f = t.p("a/f");
    let (read, write) = (format!("{}:read", t.a().display()), format!("{}:write", t.a().display()));
    let mut writer = Served::agent(&d, "mapw", &[read.clone(), write.clone()], &["map", &f, "shared"]);
    let mut reader = Served::agent(&d, "mapr", &[read.clone(), write.clone()], &["map", &f, "private"]);
    // Shared and read-only, but from a read-write descriptor: mprotect can make it writable.
    let mut sleeper = Served::agent(&d, "maps", &[read.clone(), write.clone()], &["map", &f, "shared-ro"]);
    assert_eq!(writer.line().as_deref(), Some("mapped"));
    assert_eq!(reader.line().as_deref(), Some("mapped"));
    assert_eq!(sleeper.line().as_deref(), Some("mapped"));
    assert_eq!(writer.ask("write").as_deref(), Some("ok"));
    assert_eq!(reader.ask("read").as_deref(), Some("ok W"), "the private mapping shows the shared write");

    // Take write away from all three (their spawn's write token, by id): the processes of
    // the shared mappings die, the private read-only one lives on.
    for agent in ["mapw", "mapr", "maps"] {
        let tokens = d.rush_json(&["capability", "list", agent]);
        let id = tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["origin"] == "spawn" && t["ops"] == 2)
            .unwrap_or_else(|| panic!("no write token in {tokens}"))["id"]
            .to_string();
        let out = d.rush(&["capability", "revoke", agent, "--id", &id]);
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert_eq!(writer.ask("write"), None, "the writer must be dead");
    assert_eq!(writer.wait().code(), Some(128 + 9), "SIGKILL");
    assert_eq!(sleeper.ask("write"), None, "mprotect must not bring write back");
    assert_eq!(sleeper.wait().code(), Some(128 + 9));
    assert_eq!(revoke_kills(&d, "maps")[0]["ops"], "write");
    std::fs::write(&f, "after").unwrap();
    assert_eq!(reader.ask("read").as_deref(), Some("ok a"), "the reader keeps reading its pages");
    let kills = revoke_kills(&d, "mapw");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(
        (&kills[0]["path"], &kills[0]["ops"], &kills[0]["cause"]),
        (&Value::from(f.clone()), &Value::from("write"), &Value::from("revoke"))
    );
    assert_eq!(kills[0]["comm"], "rush-test-fs");
    assert!(revoke_kills(&d, "mapr").is_empty());

    // Take read away: now the reader goes too.
    let out = d.rush(&["capability", "revoke", "mapr", "--path", t.a().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(reader.ask("read"), None);
    assert_eq!(reader.wait().code(), Some(128 + 9));
    assert_eq!(revoke_kills(&d, "mapr")[0]["ops"], "read");
}

#[test]
fn an_expiring_token_kills_the_process_that_maps_the_file() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let f = t.p("a/f");
    let grant = format!("{}:read,write:3s", t.a().display());
    let mut mapper = Served::agent(&d, "mapttl", &[grant], &["map", &f, "shared"]);
    assert_eq!(mapper.line().as_deref(), Some("mapped"));
    let started = Instant::now();
    assert_eq!(mapper.ask("write").as_deref(), Some("ok"));
    assert!(
        wait_until(Duration::from_secs(10), || !revoke_kills(&d, "mapttl").is_empty()),
        "not killed at expiry"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(mapper.wait().code(), Some(128 + 9));
    let kill = &revoke_kills(&d, "mapttl")[0];
    assert_eq!((&kill["cause"], &kill["ops"]), (&Value::from("expiry"), &Value::from("read,write")));
}

/// openat+read+close inside agents holding 1, 100 and 10,000 tokens and outside any agent,
/// alternated in one run; each side is one long-lived process answering requests, so the
/// rounds measure opens, not spawns.
#[test]
fn bench_open_read_close_overhead() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let f = t.p("a/f");
    let grant_a = format!("{}:read", t.a().display());
    let many = t.dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    // Distinct files, each its own token (and kernel entry) for the agent.
    let files = |n: usize| -> Vec<String> {
        let mut grants = vec![grant_a.clone()];
        for i in 1..n {
            let p = many.join(format!("f{i}"));
            if !p.exists() {
                std::fs::write(&p, "").unwrap();
            }
            grants.push(format!("{}:read", p.display()));
        }
        grants
    };
    let deep = outside(&["deep-tree", &t.p("a"), "1000"]);
    let deep = deep.strip_prefix("ok ").unwrap().to_owned();

    let mut outside_ = Served::outside(&["open-serve"]);
    let plain_cg = PlainCgroup::new("rush-bench-plain");
    let mut in_cg = Served::in_cgroup(&plain_cg, &["open-serve"]);
    assert!(in_cg.measures(&f), "in a plain cgroup");
    // An agent that is not file-confined (no --allow): its cgroup and the hooks' agent
    // lookup, without the token checks; apart from the file-confined agents' overhead.
    let tool = fs_tool();
    let mut plain = Served::start(d.rush_cmd(&["agent", "spawn", "open-plain", "--", &tool, "open-serve"]));
    assert!(plain.measures(&f), "agent without tokens");
    // The same agent on a daemon whose agents get no seccomp filter: the filter's share.
    let no_seccomp = Daemon::start_with_config("[hardening]\nseccomp = false\n");
    let mut unfiltered =
        Served::start(no_seccomp.rush_cmd(&["agent", "spawn", "open-nofilter", "--", &tool, "open-serve"]));
    assert!(unfiltered.measures(&f), "agent without tokens nor seccomp filter");
    let mut agents: Vec<(usize, Served, Duration)> = [1, 100, 10_000]
        .into_iter()
        .map(|n| {
            let grants = files(n);
            let started = Instant::now();
            let mut s = Served::agent(&d, &format!("open{n}"), &grants, &["open-serve"]);
            // The first answer comes once the agent runs: that is the spawn's cost.
            assert!(s.measures(&f), "agent with {n} tokens");
            (n, s, started.elapsed())
        })
        .collect();
    let ns = |s: &mut Served, n: u32, path: &str| -> f64 {
        let line = s.ask(&format!("{n} {path}")).unwrap_or_default();
        line.strip_prefix("ns_per_op ")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no measurement: {line:?}"))
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rounds = 9;
    let (mut base, mut deep_base, mut deep_in, mut plain_v, mut cg_v) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut unfiltered_v = vec![];
    let mut inside: Vec<Vec<f64>> = vec![vec![]; agents.len()];
    for _ in 0..rounds {
        base.push(ns(&mut outside_, 1000, &f));
        cg_v.push(ns(&mut in_cg, 1000, &f));
        plain_v.push(ns(&mut plain, 1000, &f));
        unfiltered_v.push(ns(&mut unfiltered, 1000, &f));
        for (i, (_, s, _)) in agents.iter_mut().enumerate() {
            inside[i].push(ns(s, 1000, &f));
        }
        deep_base.push(ns(&mut outside_, 50, &deep));
        deep_in.push(ns(&mut agents[0].1, 50, &deep));
    }
    let (base, deep_base, deep_in) = (median(base), median(deep_base), median(deep_in));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("BENCH kernel {}", kernel.trim());
    // Under TCG a clock read costs what the clocksource's emulation does (tsc or hpet).
    let clock = std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    println!("BENCH clocksource {}", clock.unwrap_or_default().trim());
    println!("BENCH | open+read+close, median of {rounds} rounds of 1000 | µs per op | ratio vs outside |");
    println!("BENCH |---|---|---|");
    println!("BENCH | outside any agent | {:.1} | 1.00 |", base / 1000.0);
    let cg_v = median(cg_v);
    println!(
        "BENCH | outside any agent, in a plain cgroup (memory, cpu, pids, io) | {:.1} | {:.2} |",
        cg_v / 1000.0,
        cg_v / base
    );
    let unfiltered_v = median(unfiltered_v);
    println!(
        "BENCH | agent, no file tokens, no seccomp filter | {:.1} | {:.2} |",
        unfiltered_v / 1000.0,
        unfiltered_v / base
    );
    let plain_v = median(plain_v);
    println!(
        "BENCH | agent, no file tokens (not file-confined) | {:.1} | {:.2} |",
        plain_v / 1000.0,
        plain_v / base
    );
    let mut ratios = Vec::new();
    for ((n, _, spawn), v) in agents.iter().zip(inside) {
        let v = median(v);
        ratios.push(v / base);
        println!("BENCH | agent, {n} token(s) (+ baseline) | {:.1} | {:.2} |", v / 1000.0, v / base);
        println!(
            "BENCH spawn of the agent with {n} token(s), to its first answer: {:.2} s",
            spawn.as_secs_f64()
        );
    }
    println!("BENCH | 1000 dirs deep, outside | {:.1} | 1.00 |", deep_base / 1000.0);
    println!("BENCH | 1000 dirs deep, agent | {:.1} | {:.2} |", deep_in / 1000.0, deep_in / deep_base);
    // Where the time goes (bpf_stats on: each program run is timed, which slows it).
    profile_programs("outside, open+read+close", 1000, || {
        ns(&mut outside_, 1000, &f);
    });
    profile_programs("agent without tokens, open+read+close", 1000, || {
        ns(&mut plain, 1000, &f);
    });
    profile_programs("agent 1 token, open+read+close", 1000, || {
        ns(&mut agents[0].1, 1000, &f);
    });
    // Sanity bounds only (TCG timing is noisy); the numbers go to BENCHMARKS.md.
    assert!(ratios.iter().all(|r| *r < 5.0), "file-token overhead out of bounds: {ratios:?}");
}

/// Run count and run time (ns) of every loaded BPF program by name, summed over programs
/// of one name (kernel.bpf_stats_enabled must be 1 for the counts to move). Through the
/// bpf() syscall: GET_NEXT_ID, GET_FD_BY_ID, OBJ_GET_INFO_BY_FD (struct bpf_prog_info:
/// name at byte 64, run_time_ns at 192, run_cnt at 200, the same in 6.1 and 6.12).
fn bpf_prog_stats() -> std::collections::BTreeMap<String, (u64, u64)> {
    const GET_NEXT_ID: libc::c_long = 11;
    const GET_FD_BY_ID: libc::c_long = 13;
    const GET_INFO_BY_FD: libc::c_long = 15;
    let mut stats = std::collections::BTreeMap::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u32; 32];
        attr[0] = id;
        // SAFETY: attr is a zeroed buffer larger than the union bpf_attr fields this
        // command reads and writes (start_id, next_id).
        let r = unsafe { libc::syscall(libc::SYS_bpf, GET_NEXT_ID, attr.as_mut_ptr(), 128u32) };
        if r != 0 {
            break;
        }
        id = attr[1];
        let mut attr = [0u32; 32];
        attr[0] = id;
        // SAFETY: as above (prog_id in, an fd returned).
        let fd = unsafe { libc::syscall(libc::SYS_bpf, GET_FD_BY_ID, attr.as_mut_ptr(), 128u32) };
        if fd < 0 {
            continue;
        }
        let mut info = [0u8; 256];
        let mut attr = [0u64; 16];
        attr[0] = (fd as u64) | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        // SAFETY: bpf_fd and info_len, then a pointer to `info`, which is info_len bytes
        // and outlives the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, GET_INFO_BY_FD, attr.as_mut_ptr(), 128u32) };
        // SAFETY: fd was returned by GET_FD_BY_ID and is closed once.
        unsafe { libc::close(fd as i32) };
        if r != 0 {
            continue;
        }
        let name = String::from_utf8_lossy(&info[64..80]).trim_end_matches('\0').to_owned();
        let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap());
        let e = stats.entry(name).or_insert((0, 0));
        e.0 += u64_at(200);
        e.1 += u64_at(192);
    }
    stats
}

/// What each BPF program costs per operation of `run` (which does `ops` operations):
/// printed as BENCH lines, programs that ran at least once per 100 operations.
fn profile_programs(what: &str, ops: u64, run: impl FnOnce()) {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(sysctl).unwrap_or_default();
    if std::fs::write(sysctl, "1").is_err() {
        println!("BENCH profile {what}: kernel.bpf_stats_enabled not writable, no profile");
        return;
    }
    let before = bpf_prog_stats();
    run();
    let after = bpf_prog_stats();
    let _ = std::fs::write(sysctl, if was.trim().is_empty() { "0" } else { was.trim() });
    println!("BENCH profile {what} | program | runs per op | ns per run | ns per op |");
    for (name, (cnt, ns)) in &after {
        let (c0, n0) = before.get(name).copied().unwrap_or((0, 0));
        let (runs, time) = (cnt.saturating_sub(c0), ns.saturating_sub(n0));
        if runs * 100 < ops {
            continue;
        }
        println!(
            "BENCH profile {what} | {name} | {:.2} | {:.0} | {:.0} |",
            runs as f64 / ops as f64,
            time as f64 / runs as f64,
            time as f64 / ops as f64
        );
    }
}

/// Seconds between the lines "start" and "end" of `cmd`'s output (the workload between
/// them; an agent's spawn comes before "start"), asserting that it got to "end".
fn timed_between_lines(mut cmd: Command, what: &str) -> f64 {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut started = None;
    let mut took = None;
    for line in lines.by_ref() {
        match line.unwrap().as_str() {
            "start" => started = Some(Instant::now()),
            "end" => took = started.map(|s| s.elapsed().as_secs_f64()),
            _ => {}
        }
    }
    let out = child.wait_with_output().unwrap();
    took.unwrap_or_else(|| panic!("{what}: no end: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Real workloads timed inside the agent (the spawn excluded), alternated: git init + add +
/// commit of 500 files and a tar extract of 5000 files, outside any agent, in an agent that
/// is not file-confined (no --allow: the hooks' agent lookup, the guard) and in one with
/// the workload's directory granted (every open, read and create checked against tokens).
#[test]
#[ignore = "a benchmark, ~2 min a kernel under TCG: cargo xtask vm-test --suite files -- --ignored bench_workloads"]
fn bench_workloads_inside_the_agent() {
    let Some(d) = lsm_daemon() else { return };
    let git = ["/usr/bin/git", "/bin/git"].into_iter().find(|p| Path::new(p).exists());
    let tar = if Path::new("/bin/busybox").exists() { "/bin/busybox tar" } else { "tar" };
    let t = Tree::new();
    let root = t.dir.path().join("work");
    std::fs::create_dir(&root).unwrap();
    // The archive: 5000 files of 100 bytes in 50 directories.
    let src = root.join("src");
    for i in 0..5000 {
        let dir = src.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), [b'x'; 100]).unwrap();
    }
    let archive = root.join("a.tar");
    let made = Command::new("/bin/sh")
        .args(["-c", &format!("{tar} -cf {} -C {} .", archive.display(), src.display())])
        .status()
        .unwrap();
    assert!(made.success(), "making the archive");
    let plain_cg = PlainCgroup::new("rush-bench-workload");
    let no_seccomp = Daemon::start_with_config("[hardening]\nseccomp = false\n");
    let rows = [
        "outside",
        "agent, no file tokens",
        "agent, directory granted",
        "outside, in a plain cgroup",
        "agent, no file tokens, no seccomp filter",
    ];
    let mut runs: Vec<(&str, usize, f64)> = Vec::new();
    let rounds = 5;
    let mut n = 0;
    for round in 0..=rounds {
        for (row, _) in rows.iter().enumerate() {
            let mut workloads: Vec<(&str, String, PathBuf)> = Vec::new();
            if let Some(git) = git.filter(|_| round < rounds) {
                let dir = root.join(format!("git{round}-{row}"));
                for i in 0..500 {
                    let sub = dir.join(format!("d{}", i % 20));
                    std::fs::create_dir_all(&sub).unwrap();
                    std::fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
                }
                let script = format!(
                    "cd {} && export HOME={0} GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@a \
                     GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@a && echo start && {git} init -q && \
                     {git} add . && {git} commit -q -m x && echo end",
                    dir.display()
                );
                workloads.push(("git init+add+commit, 500 files", script, dir));
            }
            let dir = root.join(format!("tar{round}-{row}"));
            std::fs::create_dir(&dir).unwrap();
            let script =
                format!("echo start && {tar} -xf {} -C {} && echo end", archive.display(), dir.display());
            workloads.push(("tar -x, 5000 files", script, dir));
            for (what, script, dir) in workloads {
                n += 1;
                let profiled = round == rounds && what.starts_with("tar");
                let cmd = match row {
                    0 => {
                        let mut c = Command::new("/bin/sh");
                        c.args(["-c", &script]);
                        c
                    }
                    1 | 4 => {
                        let daemon = if row == 1 { &d } else { &no_seccomp };
                        daemon.rush_cmd(&[
                            "agent",
                            "spawn",
                            &format!("wl{n}"),
                            "--",
                            "/bin/sh",
                            "-c",
                            &script,
                        ])
                    }
                    3 => plain_cg.command(&script),
                    _ => {
                        let (bins, arch) = (bin_grant(), format!("{}:read", archive.display()));
                        let work = format!("{}:read,write,create,delete", dir.display());
                        d.rush_cmd(&[
                            "agent",
                            "spawn",
                            &format!("wl{n}"),
                            "--allow",
                            &bins,
                            "--allow",
                            &arch,
                            "--allow",
                            &work,
                            "--",
                            "/bin/sh",
                            "-c",
                            &script,
                        ])
                    }
                };
                let label = format!("{what}, {}", rows[row]);
                if profiled {
                    // An extra round, not in the medians: which programs run how often per file.
                    profile_programs(&label, 5000, || {
                        timed_between_lines(cmd, &label);
                    });
                } else {
                    runs.push((what, row, timed_between_lines(cmd, &label)));
                }
                // The guest's files are in its RAM (1 GiB): 5000 files are 20 MiB of tmpfs.
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("BENCH kernel {}", kernel.trim());
    println!(
        "BENCH | workload, timed inside (median of {rounds}) | outside | agent, no file tokens | agent, granted | outside, in a plain cgroup | agent, no tokens, no seccomp |"
    );
    println!("BENCH |---|---|---|---|---|---|");
    let mut whats: Vec<&str> = runs.iter().map(|r| r.0).collect();
    whats.dedup();
    whats.sort();
    whats.dedup();
    for what in whats {
        let median = |row: usize| {
            let mut v: Vec<f64> = runs.iter().filter(|r| r.0 == what && r.1 == row).map(|r| r.2).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let base = median(0);
        println!(
            "BENCH | {what} | {base:.2} s (1.00) | {:.2} s ({:.2}) | {:.2} s ({:.2}) | {:.2} s ({:.2}) | {:.2} s ({:.2}) |",
            median(1),
            median(1) / base,
            median(2),
            median(2) / base,
            median(3),
            median(3) / base,
            median(4),
            median(4) / base
        );
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes only into `ts`.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Grant and revoke latency, request to kernel effect: a confined agent opens a file in a
/// tight loop; the time runs from just before `rush capability grant` (or `revoke`) to
/// the agent's first successful open (first EPERM), against a protocol round trip
/// (`rush capability list`) measured while the agent polls the same way, since the
/// polling takes a CPU from the CLI and the daemon (and denied opens are audited). Both
/// sides include the CLI's own start.
#[test]
fn bench_grant_and_revoke_latency() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let f = t.p("a/f");
    let mut poller = Served::agent(&d, "lat", &[], &["poll-open", &f]);
    assert_eq!(poller.line().as_deref(), Some("ready"));
    let median = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let timed = |args: &[&str]| -> (u64, u64) {
        let t0 = monotonic_ns();
        let out = d.rush(args);
        assert!(out.status.success(), "rush {args:?}: {}", describe(&out));
        (t0, monotonic_ns() - t0)
    };
    let start_polling = |poller: &mut Served, request: &str| {
        let stdin = poller.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
    };
    let effect = |poller: &mut Served, t0: u64, want: &str| -> (u64, u64) {
        let line = poller.line().unwrap_or_else(|| panic!("the agent died waiting for {want}"));
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], want, "{line}");
        (f[1].parse::<u64>().unwrap() - t0, f[2].parse().unwrap())
    };
    let list = ["capability", "list", "lat"];
    let rounds = 5;
    let (mut idle, mut busy, mut grant, mut grant_cli, mut revoke, mut revoke_cli, mut denied) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        idle.push(timed(&list).1);
        start_polling(&mut poller, "grant");
        busy.push(timed(&list).1);
        let (t0, cli) = timed(&["capability", "grant", "lat", "--path", &f, "--ops", "read"]);
        let (lat, n) = effect(&mut poller, t0, "ok");
        grant.push(lat);
        grant_cli.push(cli);
        denied.push(n);
        start_polling(&mut poller, "revoke");
        busy.push(timed(&list).1);
        let (t0, cli) = timed(&["capability", "revoke", "lat", "--path", &f]);
        revoke.push(effect(&mut poller, t0, "denied").0);
        revoke_cli.push(cli);
    }
    let rtt = median(busy) as f64;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("BENCH kernel {}", kernel.trim());
    println!("BENCH | median of {rounds} rounds | µs | ratio vs `rush capability list` (agent polling) |");
    println!("BENCH |---|---|---|");
    for (what, v) in [
        ("`rush capability list`, agent idle", median(idle)),
        ("`rush capability list`, agent polling", rtt as u64),
        ("grant → the agent's first successful open", median(grant)),
        ("`rush capability grant` returns", median(grant_cli)),
        ("revoke → the agent's first EPERM", median(revoke)),
        ("`rush capability revoke` returns", median(revoke_cli)),
    ] {
        println!("BENCH | {what} | {:.0} | {:.2} |", v as f64 / 1000.0, v as f64 / rtt);
    }
    println!("BENCH denied opens per grant round (median): {}", median(denied));
}

/// An agent on a terminal of its own (`--tty`) under BPF LSM: its pty (opened by the
/// daemon, checked like its own files) is usable through the baseline, the holder types
/// into it and logs it, and its tokens hold as for any agent.
#[test]
fn a_file_confined_agent_on_a_terminal_uses_it_and_nothing_else() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let grant = format!("{}:read,write,create", t.a().display());
    let script = format!(
        "echo ready; read -r l; echo \"got:$l\" > {typed}; echo \"got:$l\"; cat {secret} || echo refused",
        typed = t.p("a/typed"),
        secret = t.p("b/secret")
    );
    let out = d.rush(&[
        "agent", "spawn", "tty1", "--tty", "--detach", "--allow", &grant, "--", "/bin/sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let logs = || String::from_utf8_lossy(&d.rush(&["agent", "logs", "tty1"]).stdout).into_owned();
    assert!(wait_until(Duration::from_secs(20), || logs().contains("ready")), "{}", logs());
    let out = d.rush(&["agent", "send", "tty1", "hello", "--enter"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(20), || logs().contains("refused")), "{}", logs());
    let log = logs();
    assert!(log.contains("got:hello") && !log.contains("secret data"), "{log}");
    assert_eq!(std::fs::read_to_string(t.p("a/typed")).unwrap(), "got:hello\n");
}

/// A path claim in the kernel: while `holder` claims `a/`, the other agents (file-confined
/// with tokens that allow it, or not file-confined at all) are refused every write there,
/// audited naming the claim; reads and writes elsewhere stay; the holder writes; once the
/// holder exits the claim is released and the others write again.
#[test]
fn a_capability_approved_from_the_queue_reaches_the_kernel_and_the_agents_next_open_succeeds() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let (tool, rush) = (fs_tool(), bin("rush").display().to_string());
    let (bins, own) = (bin_grant(), format!("{}:read,write,create", t.a().display()));
    // Refused, it asks and waits; told "approved", it writes once: the grant is in the map by
    // then. No restart: BPF LSM changes the map under the running agent (its pid noted).
    let log = t.p("a/log");
    let script = format!(
        "echo $$ > {log}.pid; {tool} write {secret} +agent >> {log}; \
         {rush} approval request --kind capability --path {b} --ops write --action 'write b/' --wait >> {log} \
         && {tool} write {secret} +agent >> {log}; sleep 600",
        secret = t.p("b/secret"),
        b = t.p("b"),
    );
    let out = d.rush(&[
        "agent", "spawn", "asker", "--detach", "--allow", &bins, "--allow", &own, "--", "sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let asked = || std::fs::read_to_string(&log).unwrap_or_default();
    let pending = || d.rush_json(&["approvals"])["approvals"][0]["id"].as_u64();
    assert!(wait_until(Duration::from_secs(60), || pending().is_some()), "never asked: {}", asked());
    assert!(asked().starts_with("errno EPERM"), "refused before the approval: {}", asked());
    let pid = std::fs::read_to_string(format!("{log}.pid")).unwrap();
    let id = pending().unwrap();
    let decided = d.rush_json(&["approve", &id.to_string(), "--ttl", "5m"]);
    let effect = decided.to_string();
    assert!(effect.contains("granted"), "{effect}");
    // Its one write after the answer succeeds: the grant is in the kernel's map.
    assert!(
        wait_until(Duration::from_secs(30), || asked().trim_end().ends_with("ok")),
        "the write after the approval failed: {}",
        asked()
    );
    assert_eq!(std::fs::read_to_string(t.p("b/secret")).unwrap(), "secret data+agent");
    assert_eq!(std::fs::read_to_string(format!("{log}.pid")).unwrap(), pid, "not restarted");
    assert_eq!(d.rush_json(&["agent", "status", "asker"])["state"], "running");
    // Still confined elsewhere.
    assert_eq!(agent_fs(&d, "other", &[], &["write", &t.p("b/secret"), "+x"]), ["errno EPERM"]);
}

#[test]
fn a_path_claim_refuses_the_other_agents_writes_there_and_only_there() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let tool = fs_tool();
    let (bins, own) = (bin_grant(), format!("{}:read,write", t.a().display()));
    // The holder writes a/f while it holds the claim, when told to (a/go appears), then exits.
    let holder =
        format!("while [ ! -e {} ]; do sleep 0.2; done; {tool} write {} +holder", t.p("a/go"), t.p("a/f"));
    let out = d.rush(&[
        "agent", "spawn", "holder", "--detach", "--allow", &bins, "--allow", &own, "--", "sh", "-c", &holder,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let claimed = d.rush_json(&["agent", "claim", "parser", "--agent", "holder", "--paths", &t.p("a")]);
    assert_eq!(claimed["won"], true, "{claimed}");
    assert_eq!(claimed["claim"]["enforcement"], "kernel", "{claimed}");

    let rw = format!("{}:read,write,create,delete", t.a().display());
    let both = [rw.as_str(), &format!("{}:read,write,create,delete", t.p("b"))];
    assert_eq!(agent_fs(&d, "c1", &[&rw], &["write", &t.p("a/f"), "+x"]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c2", &[&rw], &["read", &t.p("a/f")]), ["ok 12"]);
    assert_eq!(agent_fs(&d, "c3", &[&rw], &["create", &t.p("a/new")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c4", &[&rw], &["unlink", &t.p("a/f")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c5", &[&rw], &["mkdir", &t.p("a/sub")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c6", &both, &["rename", &t.p("a/f"), &t.p("b/f")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c7", &both, &["rename", &t.p("b/secret"), &t.p("a/secret")]), ["errno EPERM"]);
    assert_eq!(agent_fs(&d, "c8", &both, &["write", &t.p("b/secret"), "+ok"]), ["ok"], "outside the claim");
    // An agent with no file tokens at all (not file-confined) is refused too.
    let out = d.rush(&["agent", "spawn", "free", "--", &tool, "write", &t.p("a/f"), "+free"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "errno EPERM", "{}", describe(&out));
    // (The holder may have written its own part by now.)
    let f = std::fs::read_to_string(t.p("a/f")).unwrap();
    assert!(
        f.starts_with("granted data") && !f.contains("+x") && !f.contains("+free"),
        "the others wrote: {f}"
    );
    assert!(!Path::new(&t.p("a/new")).exists() && !Path::new(&t.p("a/secret")).exists());

    // Audited naming the claim and its holder; the denied agent can ask who holds it.
    let get = || d.audit().into_iter().find(|r| r["agent"] == "c1" && r["event"]["kind"] == "claim_deny");
    assert!(wait_until(Duration::from_secs(5), || get().is_some()), "no claim_deny for c1: {:#?}", d.audit());
    let ev = get().unwrap()["event"].clone();
    assert_eq!(
        (ev["task"].as_str(), ev["holder"].as_str(), ev["op"].as_str()),
        (Some("parser"), Some("holder"), Some("write")),
        "{ev}"
    );
    assert_eq!(ev["path"], t.p("a/f"), "{ev}");
    let who = d.rush_json(&["agent", "claims", "--path", &t.p("a/f")]);
    assert_eq!(who[0]["agent"], "holder", "{who}");

    // The holder writes; it exits; its claim goes, and so do the denies.
    std::fs::write(t.p("a/go"), "").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || d.rush_json(&["agent", "status", "holder"])["state"]
            == "exited"),
        "the holder did not finish"
    );
    assert_eq!(std::fs::read_to_string(t.p("a/f")).unwrap(), "granted data+holder");
    assert!(wait_until(Duration::from_secs(10), || d
        .rush_json(&["agent", "claims"])
        .as_array()
        .is_some_and(Vec::is_empty)));
    assert_eq!(agent_fs(&d, "c9", &[&rw], &["write", &t.p("a/f"), "+after"]), ["ok"]);
}

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

/// A daemon whose LSM programs attached; None (after a SKIP line) where they cannot.
fn lsm_daemon() -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    let d = Daemon::start();
    if !require(d.lsm_attached(), "BPF LSM programs attach on this kernel (rush doctor: bpf-lsm-attach)") {
        return None;
    }
    Some(d)
}

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
    let (bins, tool, f) = (bin_grant(), fs_tool(), t.p("a/f"));
    let mut child = d
        .rush_cmd(&["agent", "spawn", "holder", "--allow", &bins, "--allow", &grant, "--", &tool, "hold", &f])
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
    assert_eq!(ask("read"), "ok 1");
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

/// openat+read+close inside an agent (1 and 50 tokens) and outside, alternated in one run.
#[test]
fn bench_open_read_close_overhead() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let (bins, tool, f) = (bin_grant(), fs_tool(), t.p("a/f"));
    let grant_a = format!("{}:read", t.a().display());
    let mut fifty: Vec<String> = (0..49)
        .map(|i| {
            let p = t.dir.path().join(format!("g{i}"));
            std::fs::create_dir(&p).unwrap();
            format!("{}:read", p.display())
        })
        .collect();
    fifty.push(grant_a.clone());
    let deep = outside(&["deep-tree", &t.p("a"), "1000"]);
    let deep = deep.strip_prefix("ok ").unwrap().to_owned();

    let ns = |out: &std::process::Output| -> f64 {
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("ns_per_op "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no measurement: {}", describe(out)))
    };
    let run_agent = |name: &str, grants: &[String], n: &str, path: &str| -> f64 {
        let mut args: Vec<&str> = vec!["agent", "spawn", name, "--allow", &bins];
        for g in grants {
            args.extend(["--allow", g.as_str()]);
        }
        args.extend(["--", &tool, "open-loop", n, path]);
        ns(&d.rush(&args))
    };
    let run_outside =
        |n: &str, path: &str| ns(&Command::new(&tool).args(["open-loop", n, path]).output().unwrap());
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rounds = 3;
    let (mut base, mut one, mut many, mut deep_base, mut deep_in) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        base.push(run_outside("1000", &f));
        one.push(run_agent("b1", std::slice::from_ref(&grant_a), "1000", &f));
        many.push(run_agent("b50", &fifty, "1000", &f));
        deep_base.push(run_outside("50", &deep));
        deep_in.push(run_agent("bdeep", std::slice::from_ref(&grant_a), "50", &deep));
    }
    let (base, one, many, deep_base, deep_in) =
        (median(base), median(one), median(many), median(deep_base), median(deep_in));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("BENCH kernel {}", kernel.trim());
    println!("BENCH | open+read+close, median of {rounds} | ns per op | ratio vs outside |");
    println!("BENCH |---|---|---|");
    println!("BENCH | outside any agent | {base:.0} | 1.00 |");
    println!("BENCH | agent, 1 token (+ baseline) | {one:.0} | {:.2} |", one / base);
    println!("BENCH | agent, 50 tokens (+ baseline) | {many:.0} | {:.2} |", many / base);
    println!("BENCH | 1000 dirs deep, outside | {deep_base:.0} | 1.00 |");
    println!("BENCH | 1000 dirs deep, agent | {deep_in:.0} | {:.2} |", deep_in / deep_base);
    // Sanity bounds only (TCG timing is noisy); the numbers go to BENCHMARKS.md.
    assert!(one / base < 5.0 && many / base < 5.0, "file-token overhead out of bounds");
}

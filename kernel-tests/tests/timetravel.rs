//! Time travel end to end: sessions, checkpoints, rollbacks, timelines and diffs through
//! `rush`, on the store the daemon picks (a loop-mounted btrfs image here and in the
//! guests). Each test asserts bytes, modes and environments restored exactly, not exit
//! codes only. Processes (CRIU) are asserted where CRIU works (the guests); elsewhere the
//! refusal is asserted.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn daemon() -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    Some(Daemon::start())
}

/// A workspace directory with one of each kind of thing a checkpoint must keep.
struct Workspace {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("rush-tt-").tempdir_in("/tmp").unwrap();
        let path = dir.path().join("ws");
        std::fs::create_dir_all(path.join("sub/empty")).unwrap();
        std::fs::write(path.join("a.txt"), "alpha\n").unwrap();
        let bin: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(path.join("sub/b.bin"), bin).unwrap();
        std::fs::write(path.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(path.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a.txt", path.join("link")).unwrap();
        Workspace { _dir: dir, path }
    }
    fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

/// Every path under `root` with its mode and its bytes (a symlink: its target).
fn manifest(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (mode, std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()),
                );
            } else if m.is_dir() {
                out.insert(rel, (mode, b"<dir>".to_vec()));
                walk(root, &p, out);
            } else {
                out.insert(rel, (mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    // Through the workspace symlink, as the user sees it.
    let real = std::fs::canonicalize(root).unwrap();
    walk(&real, &real, &mut out);
    out
}

/// `rush ARGS` run inside `cwd` with exactly `env` (plus PWD), as a shell there would.
fn rush_in(d: &Daemon, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = d.rush_cmd(args);
    c.current_dir(cwd).env_clear().env("PWD", cwd);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", describe(&out));
    out
}

fn fails_with(out: Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure mentioning {needle:?}: {}", describe(&out));
    assert!(err.contains(needle), "stderr should mention {needle:?}: {}", describe(&out));
}

fn create(d: &Daemon, name: &str, ws: &Workspace) -> Value {
    let v = d.rush_json(&["session", "create", name, "--workspace", ws.s()]);
    assert!(std::fs::symlink_metadata(&ws.path).unwrap().file_type().is_symlink(), "workspace not a symlink");
    v
}

fn audit_kinds(d: &Daemon) -> Vec<String> {
    d.audit().iter().filter_map(|r| r["event"]["kind"].as_str().map(str::to_owned)).collect()
}

#[test]
fn a_rollback_restores_bytes_modes_and_the_shell_environment_exactly() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    let before = manifest(&ws.path);
    let s = create(&d, "s1", &ws);
    assert_eq!(manifest(&ws.path), before, "moving into the store changed the tree");
    assert_eq!(s["timeline"], "main");

    let env = [("PATH", "/usr/bin:/bin"), ("FOO", "one"), ("KEEP", "it's \"quoted\" $x")];
    let out = ok(rush_in(&d, &ws.path, &env, &["--json", "checkpoint", "cp1"]));
    let cp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cp["session"], "s1", "the session was found from the working directory");
    let captured: Vec<&str> = cp["captured"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(captured, ["files", "shell"]);

    // An agent of the session corrupts the tree, then stays.
    let script = "echo corrupted > a.txt; rm run.sh; echo new > added; chmod 600 sub/b.bin; \
                  rmdir sub/empty; ln -sf /etc/passwd link; echo ok > done; sleep 300";
    ok(rush_in(
        &d,
        &ws.path,
        &env,
        &["agent", "spawn", "w1", "--session", "s1", "--detach", "--", "/bin/sh", "-c", script],
    ));
    assert!(
        wait_until(Duration::from_secs(20), || ws.p("done").exists()),
        "the agent did not finish writing"
    );
    let corrupted = manifest(&ws.path);
    assert_ne!(corrupted, before);

    let other = [("PATH", "/usr/bin:/bin"), ("FOO", "two"), ("BAR", "extra")];
    let out = ok(rush_in(&d, &ws.path, &other, &["rollback", "cp1", "--shell"]));
    assert_eq!(manifest(&ws.path), before, "files not restored exactly");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("stopped agents") && report.contains("w1"), "{report}");
    assert!(report.contains("undo-1"), "{report}");
    let agent = d.rush_json(&["agent", "status", "w1"]);
    assert_eq!(agent["state"], "exited", "the session's agent was not stopped");

    // The printed commands take a shell with the other environment back to the saved one.
    let script = String::from_utf8(out.stdout).unwrap();
    let shown = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{script}\nenv; echo \"cwd=$(pwd)\""))
        .env_clear()
        .envs(other)
        .current_dir("/")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.lines().any(|l| l == "FOO=one"), "{script}\n---\n{shown}");
    assert!(shown.lines().any(|l| l == "KEEP=it's \"quoted\" $x"), "{script}\n---\n{shown}");
    assert!(!shown.lines().any(|l| l.starts_with("BAR=")), "{script}\n---\n{shown}");
    assert!(shown.lines().any(|l| l == format!("cwd={}", ws.s())), "{script}\n---\n{shown}");

    // The rollback is undone by rolling back to its automatic checkpoint.
    ok(d.rush(&["rollback", "undo-1", "--session", "s1"]));
    assert_eq!(manifest(&ws.path), corrupted, "undo did not bring back the pre-rollback tree");
    let kinds = audit_kinds(&d);
    for k in ["session_created", "checkpoint", "rollback"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} audit record: {kinds:?}");
    }
}

#[test]
fn diff_branch_and_switch_show_and_swap_timelines() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create(&d, "s2", &ws);
    let at_c1 = manifest(&ws.path);
    ok(rush_in(&d, &ws.path, &[("X", "1")], &["checkpoint", "c1"]));
    std::fs::write(ws.p("a.txt"), "changed\n").unwrap();
    std::fs::remove_file(ws.p("link")).unwrap();
    std::fs::create_dir(ws.p("new")).unwrap();
    std::fs::write(ws.p("new/x.txt"), "x").unwrap();
    let at_c2 = manifest(&ws.path);

    let d1 = d.rush_json(&["timeline", "diff", "c1", "main", "--session", "s2"]);
    let list = |v: &Value, k: &str| -> Vec<String> {
        v[k].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
    };
    assert!(list(&d1, "added").contains(&"new/x.txt".to_owned()), "{d1}");
    assert_eq!(list(&d1, "removed"), ["link"], "{d1}");
    assert_eq!(list(&d1, "modified"), ["a.txt"], "{d1}");
    for p in list(&d1, "added") {
        assert!(p == "new" || p == "new/x.txt", "unrelated path listed as added: {p}");
    }

    ok(rush_in(&d, &ws.path, &[("X", "2")], &["checkpoint", "c2"]));
    let d2 = d.rush_json(&["timeline", "diff", "c1", "c2", "--session", "s2"]);
    assert_eq!(list(&d2, "modified"), ["a.txt"], "{d2}");
    assert_eq!(d2["env"][0]["name"], "X", "{d2}");
    assert_eq!((d2["env"][0]["a"].as_str(), d2["env"][0]["b"].as_str()), (Some("1"), Some("2")));
    let text = String::from_utf8(ok(d.rush(&["timeline", "diff", "c1", "c2", "-s", "s2"])).stdout).unwrap();
    assert!(text.lines().any(|l| l == "M a.txt") && text.lines().any(|l| l == "D link"), "{text}");

    // A branch from c1 is a separate, writable timeline; the workspace stays on main.
    ok(d.rush(&["timeline", "branch", "alt", "--from", "c1", "--session", "s2"]));
    assert_eq!(manifest(&ws.path), at_c2);
    ok(d.rush(&["timeline", "switch", "alt", "--session", "s2"]));
    assert_eq!(manifest(&ws.path), at_c1, "switching to the branch did not show c1's tree");
    std::fs::write(ws.p("only-on-alt"), "alt").unwrap();
    ok(d.rush(&["timeline", "switch", "main", "--session", "s2"]));
    assert_eq!(manifest(&ws.path), at_c2, "main changed while on the branch");
    let tl = d.rush_json(&["timeline", "list", "--session", "s2"]);
    let names: Vec<&str> =
        tl["timelines"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["alt", "main"]);
    assert_eq!(tl["session"]["timeline"], "main");

    // Names are one namespace: a checkpoint cannot take a timeline's name.
    fails_with(d.rush(&["checkpoint", "alt", "--session", "s2"]), "already has a timeline named \"alt\"");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_half_done() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    let original = manifest(&ws.path);
    create(&d, "s3", &ws);
    fails_with(d.rush(&["session", "create", "s3", "--workspace", "/tmp"]), "already exists");
    let file = ws._dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        d.rush(&["session", "create", "s4", "--workspace", file.to_str().unwrap()]),
        "not a directory",
    );
    fails_with(d.rush(&["session", "create", "s4", "--workspace", "/nonexistent/dir"]), "/nonexistent/dir");
    fails_with(d.rush(&["session", "create", "s4", "--workspace", ws.s()]), "symlink");
    fails_with(d.rush(&["session", "create", "../x"]), "invalid");

    ok(d.rush(&["checkpoint", "c1", "--session", "s3"]));
    fails_with(d.rush(&["checkpoint", "c1", "--session", "s3"]), "already has a checkpoint named \"c1\"");
    fails_with(d.rush(&["rollback", "nope", "--session", "s3"]), "no checkpoint \"nope\" (it has: c1)");
    fails_with(rush_in(&d, Path::new("/"), &[], &["checkpoint", "c9"]), "in no session's workspace");
    fails_with(d.rush(&["checkpoint", "c9", "--session", "nosuch"]), "no session \"nosuch\"");
    fails_with(
        d.rush(&["agent", "spawn", "a1", "--session", "nosuch", "--detach", "--", "/bin/true"]),
        "no session \"nosuch\"",
    );

    // --with-processes where CRIU cannot work is refused before anything is taken.
    let criu = guarantee(&d, "time travel: processes");
    if !criu {
        ok(d.rush(&["agent", "spawn", "a2", "--session", "s3", "--detach", "--", "sleep", "300"]));
        fails_with(d.rush(&["checkpoint", "c2", "--with-processes", "--session", "s3"]), "--with-processes");
        let tl = d.rush_json(&["timeline", "list", "--session", "s3"]);
        assert_eq!(tl["checkpoints"].as_array().unwrap().len(), 1, "a refused checkpoint was recorded: {tl}");
        assert_eq!(d.rush_json(&["agent", "status", "a2"])["paused"], Value::Null, "left frozen");
        ok(d.rush(&["agent", "kill", "a2"]));
    }

    for n in ["c2", "c3", "c4"] {
        ok(d.rush(&["checkpoint", n, "--session", "s3"]));
    }
    fails_with(d.rush(&["timeline", "prune", "--session", "s3"]), "--keep");
    let pruned = d.rush_json(&["timeline", "prune", "--keep", "2", "--session", "s3"]);
    assert_eq!(pruned, serde_json::json!(["c1", "c2"]));
    ok(d.rush(&["timeline", "rm", "c3", "--session", "s3"]));
    let tl = d.rush_json(&["timeline", "list", "--session", "s3"]);
    let left: Vec<&str> =
        tl["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(left, ["c4"]);

    // Removing the session puts the tree back as a plain directory, same bytes.
    ok(d.rush(&["session", "rm", "s3"]));
    assert!(std::fs::symlink_metadata(&ws.path).unwrap().is_dir(), "workspace not a directory again");
    assert_eq!(manifest(&ws.path), original);
    assert_eq!(d.rush_json(&["session", "list"]), serde_json::json!([]));
}

fn guarantee(d: &Daemon, name: &str) -> bool {
    d.doctor()["guarantees"].as_array().unwrap().iter().any(|g| g["name"] == name && g["holds"] == true)
}

fn session_dir(d: &Daemon, session: &str) -> PathBuf {
    let list = d.rush_json(&["session", "list"]);
    let s = list.as_array().unwrap().iter().find(|s| s["name"] == session).unwrap();
    PathBuf::from(s["live"].as_str().unwrap()).parent().unwrap().to_owned()
}

/// A daemon dies (abort) just before, then just after, the swap of a rollback; the next
/// start settles it: the old tree (undone) or the new one (completed), never a mix, and
/// nothing of the other left behind.
#[test]
fn a_crash_in_a_rollback_leaves_the_old_or_the_new_tree() {
    if !require(is_root(), "root") {
        return;
    }
    for (point, outcome) in [("rollback-before-swap", "undone"), ("rollback-after-swap", "completed")] {
        let mut d = Daemon::start_with_env("", &[("RUSH_TEST_CRASH_AT", point)]);
        let ws = Workspace::new();
        create(&d, "s5", &ws);
        let old = manifest(&ws.path);
        ok(d.rush(&["checkpoint", "c1", "--session", "s5"]));
        std::fs::write(ws.p("a.txt"), "after c1\n").unwrap();
        std::fs::write(ws.p("later"), "later\n").unwrap();
        let new = manifest(&ws.path);
        let out = d.rush(&["rollback", "c1", "--session", "s5"]);
        assert!(!out.status.success(), "{point}: the daemon did not die: {}", describe(&out));
        assert!(wait_until(Duration::from_secs(10), || !d.is_running()), "{point}: daemon still running");
        d.kill9();
        let mid = manifest(&ws.path);
        assert!(mid == old || mid == new, "{point}: a mixed tree after the crash");
        d.env.clear();
        d.restart();
        let expected = if outcome == "completed" { &old } else { &new };
        assert_eq!(&manifest(&ws.path), expected, "{point}: wrong tree after the repair");
        let repaired: Vec<Value> =
            d.audit().into_iter().filter(|r| r["event"]["kind"] == "rollback_repaired").collect();
        assert_eq!(repaired.len(), 1, "{point}: {repaired:?}");
        assert_eq!(repaired[0]["event"]["outcome"], outcome, "{point}");
        let leftovers: Vec<String> = std::fs::read_dir(session_dir(&d, "s5").join("timelines"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, ["main"], "{point}: scratch trees left");
        // And the session works on: the rollback can be done now.
        ok(d.rush(&["rollback", "c1", "--session", "s5"]));
        assert_eq!(manifest(&ws.path), old);
    }
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .flatten()
        .unwrap_or(0)
}

/// A workspace larger than the store is refused as "full", and the directory is untouched.
#[test]
fn a_full_store_is_a_clear_error_and_the_directory_stays() {
    if !require(is_root(), "root") {
        return;
    }
    if mem_total_kib() < 4 << 20 {
        // The guests' /tmp is RAM (1 GiB): 300 MB of data there would starve the suite.
        eprintln!("not run: under 4 GiB of RAM");
        return;
    }
    let d = Daemon::start_with_config("[snapshot]\nimage_size = \"256M\"\n");
    let ws = Workspace::new();
    let mut big = std::fs::File::create(ws.p("big.bin")).unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for i in 0..300u32 {
        let mut b = block.clone();
        b[..4].copy_from_slice(&i.to_le_bytes());
        std::io::Write::write_all(&mut big, &b).unwrap();
    }
    drop(big);
    let before = manifest(&ws.path);
    let out = d.rush(&["session", "create", "big", "--workspace", ws.s()]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space") || err.contains("full"), "{err}");
    assert!(std::fs::symlink_metadata(&ws.path).unwrap().is_dir(), "the directory was replaced");
    assert_eq!(manifest(&ws.path), before, "the directory changed");
    assert_eq!(d.rush_json(&["session", "list"]), serde_json::json!([]));
}

/// With CRIU (the guests), a counting agent checkpointed with --with-processes resumes
/// from its checkpointed count after a rollback, in its cgroup, still confined. Without
/// it, --with-processes is refused (asserted in `bad_input_...`); in a guest that is a
/// failure.
#[test]
fn with_processes_a_counter_resumes_from_its_checkpointed_count() {
    let Some(d) = daemon() else { return };
    let in_guest = Path::new("/payload/run").exists();
    if !guarantee(&d, "time travel: processes") {
        assert!(!(in_guest && strict()), "CRIU must work in the guests: {}", d.doctor());
        eprintln!("not run: CRIU does not work on this kernel (rush doctor)");
        return;
    }
    let lsm = d.lsm_attached();
    let ws = Workspace::new();
    create(&d, "s6", &ws);
    // `echo $i > count` truncates before it writes: a read in between sees an empty file,
    // so an unparsable read is retried (for up to a second) rather than taken as 0.
    let count = |ws: &Workspace| -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let read = std::fs::read_to_string(ws.p("count")).ok().and_then(|s| s.trim().parse().ok());
            match read {
                Some(n) => return n,
                None if std::time::Instant::now() >= deadline => return 0,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    };
    let script =
        "i=0; while :; do i=$((i+1)); echo $i > count; cat /etc/shadow > leak 2>/dev/null; sleep 0.1; done";
    let allow = format!("{}:read,write,create,delete", ws.s());
    let mut args = vec!["agent", "spawn", "counter", "--session", "s6", "--detach"];
    if lsm {
        args.extend(["--allow", &allow]);
    }
    args.extend(["--", "/bin/sh", "-c", script]);
    ok(rush_in(&d, &ws.path, &[("PATH", "/usr/bin:/bin")], &args));
    assert!(wait_until(Duration::from_secs(30), || count(&ws) >= 5), "not counting");
    // The checkpointed count is between what the file says just before and just after.
    let before = count(&ws);
    let cp = d.rush_json(&["checkpoint", "c", "--with-processes", "--session", "s6"]);
    assert!(cp["captured"].as_array().unwrap().iter().any(|c| c == "processes:counter"), "{cp}");
    let at = count(&ws);
    assert!(wait_until(Duration::from_secs(60), || count(&ws) >= at + 20), "stopped counting after the dump");
    let pid_before = d.rush_json(&["agent", "status", "counter"])["pid"].clone();

    let r = d.rush_json(&["rollback", "c", "--session", "s6"]);
    assert_eq!(r["restored"], serde_json::json!(["counter"]), "{r}");
    let first = count(&ws);
    assert!(
        (before..at + 15).contains(&first),
        "count {first} right after the rollback; checkpointed between {before} and {at}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || count(&ws) >= first + 5),
        "the restored counter does not count"
    );
    let agent = d.rush_json(&["agent", "status", "counter"]);
    assert_eq!(agent["state"], "running", "{agent}");
    assert_eq!(agent["pid"], pid_before, "CRIU restores the same pid");
    // criu 3.17 does not restore no_new_privs: the daemon runs it with the flag set, so
    // every restored task inherits it (setuid binaries stay powerless).
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent["pid"])).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "restored without no_new_privs:\n{status}");
    let root = agent["pid"].to_string();
    let procs =
        std::fs::read_to_string(PathBuf::from(agent["cgroup_path"].as_str().unwrap()).join("cgroup.procs"));
    assert!(procs.unwrap().lines().any(|p| p == root), "the restored root is not in the agent's cgroup");
    if lsm {
        let leak = std::fs::read(ws.p("leak")).unwrap_or_default();
        assert!(leak.is_empty(), "the restored agent read /etc/shadow: it is not confined");
    }
}

/// Where there is no btrfs (`[snapshot] store = "git"`), checkpoints are commits of the
/// whole tree: a rollback restores bytes and the executable bit, and leaves the user's own
/// `.git` as it is (it is not the store's to rewrite).
#[test]
fn the_git_store_rolls_back_files_and_keeps_the_users_repository() {
    if !require(is_root(), "root") {
        return;
    }
    if std::process::Command::new("git").arg("--version").output().is_err() {
        // The guests carry no git: the git store is for machines without btrfs, not a
        // kernel guarantee.
        eprintln!("not run: git is not installed");
        return;
    }
    let d = Daemon::start_with_config("[snapshot]\nstore = \"git\"\n");
    let ws = Workspace::new();
    std::fs::remove_dir(ws.p("sub/empty")).unwrap(); // git keeps no empty directories
    std::fs::create_dir(ws.p(".git")).unwrap();
    std::fs::write(ws.p(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(ws.p(".gitignore"), "*.log\n").unwrap();
    std::fs::write(ws.p("ignored.log"), "ignored but kept\n").unwrap();
    let s = create(&d, "g1", &ws);
    assert_eq!(s["backend"], "git");
    let before = manifest(&ws.path);
    ok(d.rush(&["checkpoint", "c1", "--session", "g1"]));
    std::fs::write(ws.p("a.txt"), "changed by a shell command\n").unwrap();
    std::fs::remove_file(ws.p("ignored.log")).unwrap();
    std::fs::set_permissions(ws.p("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(ws.p(".git/HEAD"), "ref: refs/heads/later\n").unwrap();
    let diff = d.rush_json(&["timeline", "diff", "c1", "main", "--session", "g1"]);
    assert_eq!(diff["removed"], serde_json::json!(["ignored.log"]), "{diff}");
    ok(d.rush(&["rollback", "c1", "--session", "g1"]));
    let mut after = manifest(&ws.path);
    assert_eq!(
        after.remove(".git/HEAD").unwrap().1,
        b"ref: refs/heads/later\n",
        "the user's .git was rolled back"
    );
    let mut expected = before;
    expected.remove(".git/HEAD");
    assert_eq!(after, expected, "files not restored");
}

//! Tokens over time, end to end in the guests: conditional write tokens (`rush capability
//! grant --condition CMD`: the agent's writes land in its worktree, never in the granted
//! directory, until the condition passes; a failing condition puts the worktree back), and
//! tokens surviving a daemon crash and restart. Needs BPF LSM (the agents are
//! file-confined); under RUSH_TEST_STRICT=1 a kernel without it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

/// `ctl/` (the agent reads its orders there) and `ws/` (the directory under condition,
/// holding `f` = "v1").
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::Builder::new().prefix("rush-cond-").tempdir_in("/tmp").unwrap();
        std::fs::create_dir(dir.path().join("ctl")).unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::write(dir.path().join("ws/f"), "v1").unwrap();
        Tree { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn s(&self, rel: &str) -> String {
        self.p(rel).to_str().unwrap().to_owned()
    }
}

/// Spawns (detached) a file-confined agent that waits for its worktree's path in
/// `ctl/go-NAME`, tries to write the real `ws/f` directly (must fail), writes `content` to
/// the worktree's `f` and a new file `added`, marks `done`, then sleeps or exits.
fn agent(d: &Daemon, t: &Tree, name: &str, content: &str, then_exit: bool) {
    let script = format!(
        "while [ ! -s {ctl}/go-{name} ]; do sleep 0.1; done; wt=$(cat {ctl}/go-{name}); \
         echo direct >> {ws}/f; \
         printf %s '{content}' > \"$wt/f\" && echo new > \"$wt/added\" && echo ok > \"$wt/done\"; {tail}",
        ctl = t.s("ctl"),
        ws = t.s("ws"),
        tail = if then_exit { "exit 0" } else { "sleep 300" },
    );
    let ctl = format!("{}:read", t.s("ctl"));
    let ws = format!("{}:read", t.s("ws"));
    let out = d.rush(&[
        "agent", "spawn", name, "--detach", "--allow", &ctl, "--allow", &ws, "--", "/bin/sh", "-c", &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Grants the condition, hands the worktree to the agent, waits until it wrote there.
fn grant_and_wait(d: &Daemon, t: &Tree, name: &str, condition: &str) -> PathBuf {
    let token = d.rush_json(&[
        "capability",
        "grant",
        name,
        "--path",
        &t.s("ws"),
        "--ops",
        "read,write,create,delete",
        "--condition",
        condition,
    ]);
    assert_eq!(token["condition"], condition, "{token}");
    let worktree = PathBuf::from(token["worktree"].as_str().expect("a worktree"));
    assert_ne!(worktree, t.p("ws"));
    assert_eq!(std::fs::read_to_string(worktree.join("f")).unwrap(), "v1", "the worktree starts as a copy");
    std::fs::write(t.p(&format!("ctl/go-{name}")), worktree.to_str().unwrap()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || worktree.join("done").exists()),
        "the agent did not write its worktree: {}",
        d.log_text()
    );
    worktree
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

fn commits(d: &Daemon, agent: &str) -> Vec<Value> {
    d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == "commit").collect()
}

#[test]
fn a_failing_condition_discards_and_a_passing_one_promotes() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();

    // Failing: the agent wrote "bad"; `grep -q good f` exits 1.
    agent(&d, &t, "c-bad", "bad", false);
    let wt = grant_and_wait(&d, &t, "c-bad", "grep -q good f");
    assert_eq!(read(&t.p("ws/f")), "v1", "neither the direct write nor the worktree's reached ws/");
    assert_eq!(read(&wt.join("f")), "bad");
    let out = d.rush(&["--json", "capability", "commit", "c-bad"]);
    assert_eq!(out.status.code(), Some(1), "a discarded commit exits 1: {}", describe(&out));
    let outcomes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcomes[0]["promoted"], false, "{outcomes}");
    assert_eq!(outcomes[0]["exit_code"], 1, "{outcomes}");
    assert_eq!(read(&t.p("ws/f")), "v1", "discarded: ws/ unchanged");
    assert!(!t.p("ws/added").exists());
    assert_eq!(read(&wt.join("f")), "v1", "discarded: the worktree is put back");
    assert!(!wt.join("added").exists());
    let c = commits(&d, "c-bad");
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0]["event"]["outcome"]["reason"].as_str().unwrap().contains("exited with 1"), "{c:?}");

    // Passing: "good".
    agent(&d, &t, "c-good", "good", false);
    grant_and_wait(&d, &t, "c-good", "grep -q good f");
    let out = d.rush(&["--json", "capability", "commit", "c-good"]);
    assert!(out.status.success(), "{}", describe(&out));
    let outcomes: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcomes[0]["promoted"], true, "{outcomes}");
    assert_eq!(outcomes[0]["added"], 2, "added and done: {outcomes}");
    assert_eq!(outcomes[0]["changed"], 1, "f: {outcomes}");
    assert_eq!(read(&t.p("ws/f")), "good", "promoted");
    assert_eq!(read(&t.p("ws/added")), "new\n");
    // The condition itself ran confined, as an agent of its own.
    let checked = d.audit().into_iter().any(|r| {
        r["event"]["kind"] == "spawn" && r["agent"].as_str().is_some_and(|a| a.starts_with("c-good-check-"))
    });
    assert!(checked, "the condition did not run as an agent of its own");
    for name in ["c-bad", "c-good"] {
        assert!(d.rush(&["agent", "kill", name]).status.success());
    }
}

#[test]
fn the_condition_runs_when_the_agent_exits() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    agent(&d, &t, "c-exit", "good", true);
    let wt = grant_and_wait(&d, &t, "c-exit", "test \"$(cat f)\" = good");
    assert!(
        wait_until(Duration::from_secs(60), || !commits(&d, "c-exit").is_empty()),
        "no commit after the agent exited: {:?}",
        d.audit()
    );
    let c = &commits(&d, "c-exit")[0]["event"];
    assert_eq!(c["cause"], "exit", "{c}");
    assert_eq!(c["outcome"]["promoted"], true, "{c}");
    assert_eq!(read(&t.p("ws/f")), "good");
    assert!(!wt.exists(), "the worktree is removed after the agent's last commit");
}

#[test]
fn bad_conditions_are_refused_by_name() {
    let Some(d) = lsm_daemon() else { return };
    let t = Tree::new();
    let ws = format!("{}:read", t.s("ws"));
    let out = d.rush(&["agent", "spawn", "c-in", "--detach", "--allow", &ws, "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", describe(&out));
    let refuse = |args: &[&str], why: &str| {
        let out = d.rush(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let f = t.s("ws/f");
    let ws = t.s("ws");
    refuse(
        &["capability", "grant", "c-in", "--path", &f, "--ops", "write", "--condition", "true"],
        "not one",
    );
    refuse(
        &["capability", "grant", "c-in", "--path", &ws, "--ops", "read", "--condition", "true"],
        "no write",
    );
    refuse(&["capability", "grant", "c-in", "--path", &ws, "--ops", "write", "--condition", " "], "empty");
    refuse(&["capability", "commit", "c-in"], "no conditional token");
    assert_eq!(read(&t.p("ws/f")), "v1");
    assert!(d.rush(&["agent", "kill", "c-in"]).status.success());
}

/// Tokens outlive a crashed daemon: the kernel keeps enforcing them while it is down, the
/// next daemon re-adopts the agent with its tokens from the state database (listed,
/// revocable by id), and a TTL granted before the crash still lapses on time.
#[test]
fn tokens_survive_a_daemon_restart_and_still_lapse() {
    let Some(mut d) = lsm_daemon() else { return };
    let t = Tree::new();
    let fs = bin("rush-test-fs");
    let bins = format!("{}:read,exec", bin_dir().display());
    let ctl = format!("{}:read", t.s("ctl"));
    // Reads ws/f every 200 ms, forever: its log is the kernel's verdict over time.
    let script = format!("while true; do {} read {}; sleep 0.2; done", fs.display(), t.s("ws/f"));
    let out = d.rush(&[
        "agent", "spawn", "ttl", "--detach", "--allow", &bins, "--allow", &ctl, "--", "/bin/sh", "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let timed = d.rush_json(&[
        "capability",
        "grant",
        "ttl",
        "--path",
        &t.s("ws/f"),
        "--ops",
        "read",
        "--duration",
        "40s",
    ]);
    let lasting = d.rush_json(&["capability", "grant", "ttl", "--path", &t.s("ctl"), "--ops", "read,write"]);
    let logs = |d: &Daemon| String::from_utf8_lossy(&d.rush(&["agent", "logs", "ttl"]).stdout).into_owned();
    assert!(
        wait_until(Duration::from_secs(10), || logs(&d).contains("ok 2")),
        "the grant never took: {}",
        logs(&d)
    );

    d.kill9();
    d.restart();
    let tokens = d.rush_json(&["capability", "list", "ttl"]);
    let ids: Vec<u64> = tokens.as_array().unwrap().iter().filter_map(|t| t["id"].as_u64()).collect();
    assert!(
        ids.contains(&timed["id"].as_u64().unwrap()),
        "the TTL token is gone after the restart: {tokens}"
    );
    assert!(ids.contains(&lasting["id"].as_u64().unwrap()), "{tokens}");
    // After the restart: still granted (40 s outlast a restart even under TCG), then
    // lapsing on time, and never granted again.
    let n = logs(&d).lines().count();
    let after = |d: &Daemon| logs(d).lines().skip(n).map(str::to_owned).collect::<Vec<_>>();
    assert!(
        wait_until(Duration::from_secs(90), || after(&d).iter().any(|l| l == "errno EPERM")),
        "the TTL token did not lapse after the restart: {}",
        logs(&d)
    );
    let seen = after(&d);
    assert!(seen.first().is_some_and(|l| l == "ok 2"), "not granted after the restart: {seen:?}");
    let lapsed = seen.iter().position(|l| l == "errno EPERM").unwrap();
    assert!(seen[lapsed..].iter().all(|l| l == "errno EPERM"), "granted again after lapsing: {seen:?}");
    let tokens = d.rush_json(&["capability", "list", "ttl"]);
    let timed_now = tokens.as_array().unwrap().iter().find(|x| x["id"] == timed["id"]).cloned().unwrap();
    assert_eq!(timed_now["expired"], true, "{timed_now}");
    // Restored tokens are the daemon's again: revocable by id, new ids never reuse old ones.
    let id = lasting["id"].as_u64().unwrap().to_string();
    let out = d.rush(&["capability", "revoke", "ttl", "--id", &id]);
    assert!(out.status.success(), "{}", describe(&out));
    let fresh = d.rush_json(&["capability", "grant", "ttl", "--path", &t.s("ctl"), "--ops", "read"]);
    assert!(fresh["id"].as_u64() > lasting["id"].as_u64(), "token ids reused: {fresh}");
    assert!(d.rush(&["agent", "kill", "ttl"]).status.success());
}

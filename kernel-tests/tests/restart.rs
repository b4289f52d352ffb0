//! Restartable agents without a reboot: the daemon is killed (-9) and the agents' processes
//! with it, as a reboot would leave them, and a new daemon on the same state starts the
//! restartable ones again (audited `gone`), confined as before, in their session. What is
//! not restartable, killed by the operator, done (exit 0) or whose granted path is gone
//! stays down. The real reboot is the VM tier's `reboot` suite.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

/// Kills every process of the agent's cgroup (as a power cut would) and waits until it is empty.
fn kill_cgroup(d: &Daemon, agent: &str) {
    let dir = d.cgroup_v2_parent().join(agent);
    std::fs::write(dir.join("cgroup.kill"), "1").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(dir.join("cgroup.procs"))
            .map_or(true, |p| p.trim().is_empty())),
        "agent {agent}'s processes survived cgroup.kill"
    );
}

fn agent(d: &Daemon, name: &str) -> Option<Value> {
    let list = d.rush_json(&["agent", "list"]);
    list.as_array().unwrap().iter().find(|a| a["name"] == name).cloned()
}

fn running(d: &Daemon, name: &str) -> bool {
    agent(d, name).is_some_and(|a| a["state"] == "running")
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn events(d: &Daemon, agent: &str, kind: &str) -> Vec<Value> {
    d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == kind).collect()
}

/// Spawns a detached agent from `cwd` with `extra` flags; panics with rush's output on failure.
fn spawn(d: &Daemon, cwd: &Path, name: &str, extra: &[&str], script: &str) {
    let mut args = vec!["agent", "spawn", name, "--detach"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    let out = d.rush_cmd(&args).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "spawn {name}: {}", describe(&out));
}

#[test]
fn restartable_agents_come_back_confined_in_their_session_and_the_rest_stay_down() {
    if !require(is_root(), "root") {
        return;
    }
    let mut d = Daemon::start();
    let files = d.doctor()["guarantees"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"].as_str().is_some_and(|n| n.starts_with("file")) && g["holds"] == true);
    if !require(files, "file tokens enforced (BPF LSM or Landlock)") {
        return;
    }
    let top = tempfile::Builder::new().prefix("rush-restart-").tempdir_in("/tmp").unwrap();
    let ws = top.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("readme"), "hello\n").unwrap();
    let secret = top.path().join("secret");
    std::fs::write(&secret, "no\n").unwrap();
    let gone = top.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let ws_s = ws.to_str().unwrap();
    let out = d.rush(&["session", "create", "s1", "--workspace", ws_s]);
    assert!(out.status.success(), "{}", describe(&out));

    // Each second-ish: a line with its pid, and whether it could read outside its grant.
    let count = ws.join("count");
    let script = format!(
        "while :; do if cat {secret} >/dev/null 2>&1; then r=open; else r=denied; fi; \
         echo \"$$ $r\" >> {count}; sleep 0.2; done",
        secret = secret.display(),
        count = count.display()
    );
    let allow = format!("{ws_s}:read,write,create");
    spawn(&d, &ws, "worker", &["--session", "s1", "--allow", &allow, "--restartable"], &script);
    spawn(&d, &ws, "plain", &["--session", "s1"], "sleep 300");
    spawn(&d, &ws, "done", &["--restartable"], "exit 0");
    let gone_allow = format!("{}:read", gone.display());
    spawn(&d, &ws, "lost", &["--allow", &gone_allow, "--restartable"], "sleep 300");
    let before = agent(&d, "worker").unwrap();
    assert_eq!(before["restartable"], true, "{before}");
    assert_eq!(agent(&d, "plain").unwrap()["restartable"], false);
    let old_pid = before["pid"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(20), || lines(&count).len() >= 3), "the worker never wrote");
    assert!(lines(&count).iter().all(|l| l.ends_with(" denied")), "{:?}", lines(&count));
    assert!(wait_until(Duration::from_secs(10), || agent(&d, "done").is_some_and(|a| a["state"] == "exited")));

    // The daemon and every agent process die at once; a granted path goes meanwhile.
    d.kill9();
    for a in ["worker", "plain", "lost"] {
        kill_cgroup(&d, a);
    }
    std::fs::remove_dir(&gone).unwrap();
    let written = lines(&count).len();
    d.restart();

    assert!(running(&d, "worker"), "{}", d.log_text());
    let after = agent(&d, "worker").unwrap();
    let new_pid = after["pid"].as_u64().unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(after["session"], "s1", "{after}");
    assert_eq!(after["restartable"], true, "{after}");
    assert!(
        after["enforcement"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("files:")),
        "still file-confined: {after}"
    );
    let restarted = events(&d, "worker", "agent_restarted");
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0]["event"]["reason"], "gone");
    assert_eq!(restarted[0]["event"]["old_pid"], old_pid);
    assert_eq!(restarted[0]["event"]["new_pid"], new_pid);
    assert!(
        wait_until(Duration::from_secs(20), || lines(&count).len() >= written + 3),
        "the restarted worker does not write: {}",
        d.log_text()
    );
    let new_lines: Vec<String> =
        lines(&count).into_iter().filter(|l| l.starts_with(&format!("{new_pid} "))).collect();
    assert!(!new_lines.is_empty() && new_lines.iter().all(|l| l.ends_with(" denied")), "{new_lines:?}");

    // Not restartable: gone, and the trail says so. Done (exit 0): not started again.
    assert!(!running(&d, "plain"));
    assert!(!events(&d, "plain", "exit").is_empty(), "no exit record for plain");
    assert!(events(&d, "plain", "agent_restarted").is_empty());
    assert!(!running(&d, "done") && events(&d, "done", "agent_restarted").is_empty());
    // A granted path gone: not started with less, the path named.
    assert!(!running(&d, "lost"));
    let failed = events(&d, "lost", "restart_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let error = failed[0]["event"]["error"].as_str().unwrap();
    assert!(error.contains(&*gone.to_string_lossy()), "{error}");

    // The operator's kill ends it for good; it also forgets the one that could not start.
    let out = d.rush(&["agent", "kill", "worker"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.rush(&["agent", "kill", "lost"]);
    assert!(out.status.success(), "forgetting a failed restartable agent: {}", describe(&out));
    std::fs::create_dir(&gone).unwrap();
    d.kill9();
    d.restart();
    for a in ["worker", "lost"] {
        assert!(!running(&d, a), "{a} came back after rush agent kill");
    }
    assert_eq!(events(&d, "worker", "agent_restarted").len(), 1);
    assert!(events(&d, "lost", "agent_restarted").is_empty());
    drop(d);
    let _: PathBuf = ws;
}

/// A daemon whose log cannot be written (its stderr a file on a full disk; here
/// /dev/full, where every write fails with ENOSPC) drops log lines and goes on: it starts,
/// answers, spawns, refuses, reaps. tracing-subscriber's default reported each failed
/// write with eprintln!, which panics when stderr refuses too: the daemon died at its
/// first start-up line, and a request that logged lost its connection unanswered.
#[test]
fn a_daemon_whose_log_cannot_be_written_goes_on_answering() {
    if !require(is_root(), "root") {
        return;
    }
    let mut d = Daemon::start();
    d.kill9();
    d.log = PathBuf::from("/dev/full");
    d.restart();
    let cwd = tempfile::tempdir().unwrap();
    // A refused connect: the kernel's denial becomes an audit record and a log line.
    let script = format!("{} tcp 127.0.0.1:9; sleep 600", bin("rush-test-net").display());
    spawn(&d, cwd.path(), "quiet", &["--net", "deny"], &script);
    spawn(&d, cwd.path(), "brief", &[], "exit 3");
    assert!(
        wait_until(Duration::from_secs(20), || agent(&d, "brief").is_none_or(|a| a["state"] != "running")),
        "the agent that exited was not reaped"
    );
    let out = d.rush(&["agent", "kill", "no-such-agent"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-agent"), "{}", describe(&out));
    assert!(running(&d, "quiet"), "{:?}", agent(&d, "quiet"));
    assert!(d.is_running(), "the daemon exited");
    let out = d.rush(&["agent", "kill", "quiet"]);
    assert!(out.status.success(), "{}", describe(&out));
}

//! The state database under stress, with the real daemon: a damaged `state.db` is moved
//! aside and salvaged at start (agents it no longer knows are killed, never left
//! unconfined), and a full disk refuses what cannot be saved while enforcement goes on;
//! every acknowledged request survives a SIGKILL once there is room again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn host_ready() -> bool {
    require(is_root(), "root")
}

fn guarantee(d: &Daemon, name: &str) -> Value {
    let doctor = d.doctor();
    doctor["guarantees"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no doctor line {name:?}: {doctor}"))
}

fn running(d: &Daemon, name: &str) -> bool {
    let out = d.rush(&["--json", "agent", "status", name]);
    out.status.success()
        && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|a| a["state"] == "running")
}

fn spawn_sleeper(d: &Daemon, name: &str) -> std::process::Output {
    d.rush(&["--json", "agent", "spawn", name, "--detach", "--net", "deny", "--", "sleep", "600"])
}

#[test]
fn a_damaged_database_is_moved_aside_and_unknown_agents_are_killed_not_freed() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    let out = spawn_sleeper(&d, "before");
    assert!(out.status.success(), "{}", describe(&out));
    let pid = serde_json::from_slice::<Value>(&out.stdout).unwrap()["pid"].as_i64().unwrap() as i32;
    assert!(d.rush(&["session", "list"]).status.success());
    d.kill9();

    // Garbage over the headers of the database and of its WAL (which would otherwise
    // still supply page 1): SQLite no longer recognizes the file at all.
    let db = d.state.path().join("state/state.db");
    let mut bytes = Vec::new();
    for f in [db.clone(), d.state.path().join("state/state.db-wal")] {
        let Ok(mut b) = std::fs::read(&f) else { continue };
        let n = b.len().min(100);
        b[..n].fill(0x5a);
        std::fs::write(&f, &b).unwrap();
        if f == db {
            bytes = b;
        }
    }
    d.restart();

    let aside: Vec<_> = std::fs::read_dir(d.state.path().join("state"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.db.corrupt-"))
        .collect();
    assert!(!aside.is_empty(), "the damaged database was not kept aside");
    let kept = aside.iter().find(|e| !e.file_name().to_string_lossy().ends_with("-wal")).unwrap();
    assert_eq!(std::fs::read(kept.path()).unwrap()[..100], bytes[..100], "kept as it was");
    let records = d.audit();
    let rec =
        records.iter().find(|r| r["event"]["kind"] == "store_recovered").expect("store_recovered audited");
    assert!(rec["event"]["why"].as_str().unwrap().contains("not a database"), "{rec}");
    let lost = guarantee(&d, "state: nothing lost");
    assert_eq!(lost["holds"], false, "{lost}");
    assert!(lost["detail"].as_str().unwrap().contains("damaged"), "{lost}");

    // The agent the new store does not know was killed at start: confined to the end.
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)), "unknown agent {pid} left running");
    assert!(!running(&d, "before"));
    // And the daemon works on.
    let out = spawn_sleeper(&d, "after");
    assert!(out.status.success(), "{}", describe(&out));
    let agree = guarantee(&d, "state: store and kernel agree");
    assert_eq!(agree["holds"], true, "{agree}");
    assert!(d.rush(&["agent", "kill", "after"]).status.success());
}

/// Mounts a tmpfs of `size` over `dir`, keeping what `dir` held.
fn tmpfs_over(dir: &Path, size: &str) {
    let hold = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        let st = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
        assert!(st.success());
    };
    copy(dir, hold.path());
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "rush-test-full"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    copy(hold.path(), dir);
}

/// Writes zeros to `path` until the filesystem refuses (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_refuses_what_cannot_be_saved_and_loses_nothing_acknowledged() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    // An agent that tries a connect every 0.2 s and writes the verdict outside the state dir.
    let verdict = tempfile::Builder::new().prefix("rush-full-").tempdir_in("/tmp").unwrap();
    let v = verdict.path().join("v");
    let script = format!(
        "while true; do {} tcp 127.0.0.1:9 > {v}.new; mv {v}.new {v}; sleep 0.2; done",
        bin("rush-test-net").display(),
        v = v.display()
    );
    let out =
        d.rush(&["agent", "spawn", "keep", "--detach", "--net", "deny", "--", "/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    d.kill9();
    let state = d.state.path().to_owned();
    tmpfs_over(&state, "24m");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    d.restart();
    assert!(running(&d, "keep"), "re-adopted from the tmpfs copy");

    fill(&state.join("fill"));
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let name = format!("z{i}");
        let out = spawn_sleeper(&d, &name);
        if out.status.success() {
            acked.push(name);
        } else {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                err.contains("not saved") || err.contains("space"),
                "an unclear refusal: {err}\ndaemon log:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            refused.push((name, err));
            if refused.len() >= 3 {
                break;
            }
        }
    }
    eprintln!(
        "disk full: {} spawns acknowledged, {} refused: {:?}",
        acked.len(),
        refused.len(),
        refused.first()
    );
    assert!(!refused.is_empty(), "the full disk never refused a write (nothing was tested)");
    for (name, _) in &refused {
        assert!(!running(&d, name), "refused agent {name} is running, unrecorded");
    }
    // The daemon answers and the kernel still enforces.
    assert!(d.rush(&["agent", "list"]).status.success());
    let seen = std::fs::read_to_string(&v).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(500));
    let now = std::fs::read_to_string(&v).unwrap_or_default();
    assert_eq!(now.trim(), "errno EPERM", "network policy while the disk is full (before: {seen:?})");
    let lost = guarantee(&d, "state: nothing lost");
    assert_eq!(lost["holds"], false, "{lost}");

    // Room again: every acknowledged spawn is in the store (a SIGKILL and a restart find it).
    std::fs::remove_file(state.join("fill")).unwrap();
    let out = spawn_sleeper(&d, "after");
    assert!(out.status.success(), "{}", describe(&out));
    d.kill9();
    d.restart();
    for name in acked.iter().chain([&"after".to_string(), &"keep".to_string()]) {
        assert!(running(&d, name), "acknowledged agent {name} lost after the disk was full");
    }
    let records = d.audit();
    assert!(
        records.iter().any(|r| r["event"]["kind"] == "records_lost"),
        "the audit trail does not say it lost records"
    );
    let agree = guarantee(&d, "state: store and kernel agree");
    assert_eq!(agree["holds"], true, "{agree}");
    for name in acked.iter().chain([&"after".to_string(), &"keep".to_string()]) {
        let _ = d.rush(&["agent", "kill", name]);
    }
}

//! Sessions and restartable agents across a real reboot: the VM tier's `reboot` suite
//! (xtask/src/vm.rs). The guest has a state disk (ext4 on virtio-blk) mounted at
//! `$RUSH_REBOOT_DIR`; phase 1 runs at the end of one boot and leaves a session with
//! checkpoints and a restartable, file-confined agent writing into it, the guest powers
//! off, and phase 2 runs on the next boot (a new boot id) with the same disk and asserts
//! what came back. Both are `#[ignore]`d: they mean something only in that order, across
//! a reboot, so the guest runs them by name (`--ignored --exact reboot_phaseN`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

/// The loop image is sparse; 1G keeps it well inside the 2 GiB state disk.
const CONFIG: &str = "[snapshot]\nimage_size = \"1G\"\n";
const C1: &str = "alpha v1\n";
const C2: &str = "alpha v2\n";

struct Disk {
    root: PathBuf,
}

impl Disk {
    fn new() -> Disk {
        let root = PathBuf::from(std::env::var("RUSH_REBOOT_DIR").expect(
            "RUSH_REBOOT_DIR (the mounted state disk) is set by the VM tier's run script: \
             cargo xtask vm-test --suite reboot",
        ));
        assert!(root.is_dir(), "{} is not a directory", root.display());
        Disk { root }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn s(&self, rel: &str) -> String {
        self.p(rel).to_str().unwrap().to_owned()
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_owned()
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", describe(&out));
    out
}

fn agent(d: &Daemon, name: &str) -> Option<Value> {
    d.rush_json(&["agent", "list"]).as_array().unwrap().iter().find(|a| a["name"] == name).cloned()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn events(d: &Daemon, agent: &str, kind: &str) -> Vec<Value> {
    d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == kind).collect()
}

/// The session's key-value state and working directory across the reboot: set in phase 1,
/// read back exactly in phase 2.
fn session_state(d: &Daemon, phase: u8) {
    const VALUE: &str = "line 1\nit's \"quoted\" $x ünï";
    let cwd = Disk::new().p("ws").join("sub");
    if phase == 1 {
        ok(d.rush(&["session", "set", "--session", "box", "goal", VALUE]));
        // Attached (this test process is the "shell"), then detached from a directory of
        // the workspace: that directory is the session's working directory.
        ok(d.rush(&["session", "attach", "box", "--print"]));
        ok(d.rush_cmd(&["session", "detach", "--session", "box"])
            .current_dir(&cwd)
            .env("PWD", &cwd)
            .output()
            .unwrap());
        return;
    }
    let out = ok(d.rush(&["session", "get", "--session", "box", "goal"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{VALUE}\n"),
        "the key's value after the reboot"
    );
    let show = d.rush_json(&["session", "show", "box"]);
    assert_eq!(
        show["session"]["cwd"].as_str(),
        Some(cwd.to_str().unwrap()),
        "the saved working directory: {show}"
    );
}

#[test]
#[ignore = "VM tier only, before a reboot: cargo xtask vm-test --suite reboot"]
fn reboot_phase1() {
    let disk = Disk::new();
    assert!(!disk.p("daemon").exists(), "the state disk is not fresh: {}", disk.root.display());
    let d = Daemon::start_in(&disk.p("daemon"), CONFIG);
    assert!(d.lsm_attached(), "BPF LSM programs did not attach: {}", d.log_text());

    let ws = disk.p("ws");
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::write(ws.join("a.txt"), C1).unwrap();
    std::fs::write(ws.join("sub/b.bin"), (0..4096u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
    std::fs::write(disk.p("secret"), "outside the grant\n").unwrap();
    ok(d.rush(&["session", "create", "box", "--workspace", &disk.s("ws")]));
    ok(d.rush(&["checkpoint", "c1", "--session", "box"]));
    std::fs::write(ws.join("a.txt"), C2).unwrap();
    ok(d.rush(&["checkpoint", "c2", "--session", "box"]));

    // Every second: its pid, and whether the file outside its grant could be opened.
    let script = format!(
        "while :; do if cat {secret} >/dev/null 2>&1; then r=open; else r=denied; fi; \
         echo \"$$ $r\" >> {ws}/count; sleep 1; done",
        secret = disk.s("secret"),
        ws = disk.s("ws")
    );
    let allow = format!("{}:read,write,create", disk.s("ws"));
    let spawn = |name: &str, extra: &[&str], script: &str| {
        let mut args = vec!["agent", "spawn", name, "--session", "box", "--detach"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
        ok(d.rush_cmd(&args).current_dir(&ws).output().unwrap());
    };
    spawn("worker", &["--allow", &allow, "--restartable"], &script);
    spawn("plain", &[], "sleep 3600");
    let worker = agent(&d, "worker").unwrap();
    assert_eq!(worker["restartable"], true, "{worker}");
    assert!(
        wait_until(Duration::from_secs(60), || lines(&ws.join("count")).len() >= 2),
        "the worker does not write: {}",
        d.log_text()
    );
    assert!(
        lines(&ws.join("count")).iter().all(|l| l.ends_with(" denied")),
        "{:?}",
        lines(&ws.join("count"))
    );

    session_state(&d, 1);

    let facts = serde_json::json!({ "boot_id": boot_id(), "worker_pid": worker["pid"] });
    std::fs::write(disk.p("phase1.json"), facts.to_string()).unwrap();
    // As a machine losing power: the daemon and its agents keep running until poweroff.
    d.abandon();
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

#[test]
#[ignore = "VM tier only, after phase 1 and a reboot: cargo xtask vm-test --suite reboot"]
fn reboot_phase2() {
    let disk = Disk::new();
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(disk.p("phase1.json")).expect("phase 1's facts on the state disk"),
    )
    .unwrap();
    assert_ne!(facts["boot_id"], boot_id(), "not a new boot");
    let d = Daemon::start_in(&disk.p("daemon"), CONFIG);
    let ws = disk.p("ws");

    // The session and its checkpoints.
    let sessions = d.rush_json(&["session", "list"]);
    let names: Vec<&str> = sessions.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["box"], "{sessions}");
    let tl = d.rush_json(&["timeline", "list", "--session", "box"]);
    let cps: Vec<&str> =
        tl["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(cps, ["c1", "c2"], "{tl}");
    assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), C2, "the live tree as it was");

    // The restartable agent: running again, a new process, in its session, confined.
    let worker = agent(&d, "worker").unwrap_or_else(|| panic!("no worker: {}", d.log_text()));
    assert_eq!(worker["state"], "running", "{worker}\n{}", d.log_text());
    assert_eq!(worker["session"], "box");
    assert_eq!(worker["restartable"], true);
    assert!(worker["enforcement"].as_array().unwrap().iter().any(|e| e == "files:bpf-lsm"), "{worker}");
    let pid = worker["pid"].as_u64().unwrap();
    let restarted = events(&d, "worker", "agent_restarted");
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0]["event"]["reason"], "reboot");
    assert_eq!(restarted[0]["event"]["new_pid"], pid);
    assert_eq!(restarted[0]["event"]["old_pid"], facts["worker_pid"]);
    let mine = |l: &String| l.starts_with(&format!("{pid} "));
    assert!(
        wait_until(Duration::from_secs(60), || lines(&ws.join("count")).iter().filter(|l| mine(l)).count()
            >= 2),
        "the restarted worker does not write: {}",
        d.log_text()
    );
    let after: Vec<String> = lines(&ws.join("count")).into_iter().filter(mine).collect();
    assert!(after.iter().all(|l| l.ends_with(" denied")), "its denied open is still EPERM: {after:?}");

    // Not restartable: gone with the boot, and the trail says so.
    assert!(agent(&d, "plain").is_none_or(|a| a["state"] != "running"));
    assert_eq!(events(&d, "plain", "exit").len(), 1, "the earlier boot's agent closed in the trail");
    assert!(events(&d, "plain", "agent_restarted").is_empty());

    session_state(&d, 2);

    // Checkpoints usable: rolling back to c1 gives c1's bytes (the worker is stopped for it).
    ok(d.rush(&["rollback", "c1", "--session", "box"]));
    assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), C1);
}

//! Guest-only tier: what only the QEMU guests of `cargo xtask vm-test` provide (Debian's
//! 6.1 and 6.12 cloud kernels): an active BPF LSM that the daemon really attaches to, pure
//! cgroup v2 with the resource controllers, btrfs, CRIU.
//!
//! There RUSH_TEST_STRICT=1 is set and a missing feature fails the test; anywhere else (the
//! host's BPF LSM refuses programs, its cgroups are hybrid) the test prints a loud SKIP.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn root() -> bool {
    require(is_root(), "root (these tests load BPF programs and create cgroups)")
}

fn active_lsms() -> String {
    std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default().trim().to_owned()
}

fn bpf_lsm_active() -> bool {
    let lsms = active_lsms();
    require(
        lsms.split(',').any(|m| m == "bpf"),
        &format!("BPF LSM active (/sys/kernel/security/lsm: {lsms:?})"),
    )
}

fn probe<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no probe {name:?} in the doctor report: {report:#}"))
}

/// `rush-agentd doctor --json`: loads the programs into a throw-away pin dir and reports.
fn local_doctor() -> Value {
    let out = Command::new(bin("rush-agentd"))
        .args(["--config", "/dev/null", "doctor", "--json"])
        .output()
        .expect("run rush-agentd doctor");
    assert!(out.status.success(), "rush-agentd doctor failed: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor output not JSON ({e}): {}", describe(&out)))
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2).then(|| (f[1].to_owned(), f[2].to_owned()))
        })
        .collect()
}

#[test]
fn the_kernel_has_the_bpf_lsm_and_btf() {
    if !bpf_lsm_active() {
        return;
    }
    assert!(Path::new("/sys/kernel/btf/vmlinux").exists(), "BTF missing: CO-RE programs cannot load");
}

#[test]
fn rush_agentd_doctor_attaches_the_lsm_programs() {
    if !root() || !bpf_lsm_active() {
        return;
    }
    let report = local_doctor();
    eprintln!("doctor: {report:#}");
    let attach = probe(&report, "bpf-lsm-attach");
    if !require(
        attach["ok"] == true,
        &format!("rush-agentd attaches its BPF LSM programs: {}", attach["detail"]),
    ) {
        return;
    }
    for name in ["bpf-lsm-active", "btf", "bpffs", "cgroup-sock-addr", "cgroups"] {
        let p = probe(&report, name);
        assert_eq!(p["ok"], true, "probe {name}: {p}");
    }
    // The throw-away pins are gone.
    let left: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rush-doctor-"))
        .collect();
    assert!(left.is_empty(), "doctor left pins behind: {left:?}");
}

#[test]
fn the_running_daemon_reports_its_lsm_programs_attached() {
    if !root() || !bpf_lsm_active() {
        return;
    }
    let mut d = Daemon::start();
    let report = d.rush_json(&["doctor"]);
    let attach = probe(&report, "bpf-lsm-attach");
    require(
        attach["ok"] == true,
        &format!(
            "the daemon attached its BPF LSM programs: {}\ndaemon log:\n{}",
            attach["detail"],
            d.log_text()
        ),
    );
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
}

#[test]
fn cgroups_are_pure_v2_with_cpu_memory_and_pids() {
    if !root() {
        return;
    }
    let ms = mounts();
    let v1: Vec<&String> = ms.iter().filter(|(_, t)| t == "cgroup").map(|(p, _)| p).collect();
    let v2: Vec<&String> = ms.iter().filter(|(_, t)| t == "cgroup2").map(|(p, _)| p).collect();
    if !require(
        v1.is_empty() && v2.len() == 1,
        &format!("pure cgroup v2 (v2 mounts {v2:?}, v1 mounts {v1:?})"),
    ) {
        return;
    }
    let root = cgroup2_root();
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    for c in ["cpu", "memory", "pids"] {
        if !require(
            controllers.split_whitespace().any(|x| x == c),
            &format!("cgroup v2 controller {c} (have: {controllers:?})"),
        ) {
            return;
        }
    }

    // The daemon sees the same: unified mode.
    let d = Daemon::start();
    let report = d.rush_json(&["doctor"]);
    let cg = probe(&report, "cgroups");
    assert!(cg["detail"].as_str().unwrap().starts_with("unified"), "daemon's cgroup probe: {cg}");
    drop(d);

    // And the controllers work: pids.max refuses a fork beyond it.
    let subtree = root.join("cgroup.subtree_control");
    std::fs::write(&subtree, "+cpu +memory +pids").expect("enable cpu memory pids in the root cgroup");
    let dir = root.join(format!("rush-guest-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    for f in ["cpu.max", "memory.max", "pids.max"] {
        assert!(dir.join(f).exists(), "{f} missing in a child cgroup");
    }
    std::fs::write(dir.join("pids.max"), "1").unwrap();
    // The shell moves itself in, then needs a second process for the subshell.
    let script = format!("echo $$ > {}/cgroup.procs && ( exit 0 ) && echo forked", dir.display());
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let events = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
    let _ = std::fs::remove_dir(&dir);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("forked"),
        "fork beyond pids.max=1 succeeded: {}",
        describe(&out)
    );
    let refused: u64 =
        events.lines().find_map(|l| l.strip_prefix("max ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    assert!(refused >= 1, "pids.events counts no refused fork: {events:?}; {}", describe(&out));
}

#[test]
fn btrfs_is_available() {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    require(
        fs.lines().any(|l| l.trim_end().ends_with("btrfs")),
        "btrfs in /proc/filesystems (module loaded)",
    );
}

#[test]
fn criu_check_passes() {
    if !root() || !require(which("criu"), "criu installed") {
        return;
    }
    let out = Command::new("criu").arg("check").output().expect("run criu check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    require(
        out.status.success() && text.contains("Looks good"),
        &format!("`criu check` passes: {}", describe(&out)),
    );
}

#[test]
fn criu_dumps_and_restores_a_process_tree() {
    if !root() || !require(which("criu"), "criu installed") {
        return;
    }
    let check = Command::new("criu").arg("check").output().expect("run criu check");
    if !require(check.status.success(), &format!("`criu check` passes: {}", describe(&check))) {
        return;
    }
    // A tree in its own session (CRIU dumps a session only with its leader), no terminal.
    let mut leader = Command::new("sh");
    leader
        .args(["-c", "sleep 1000 & sleep 1000 & wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        leader.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut leader = leader.spawn().unwrap();
    let pid = leader.id() as i32;
    let children = || -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || children().len() == 2),
        "tree not started: {:?}",
        children()
    );
    let mut tree = children();
    tree.push(pid);

    let images = tempfile::tempdir().unwrap();
    let dir = images.path().to_str().unwrap();
    let dump = Command::new("criu")
        .args(["dump", "-t", &pid.to_string(), "-D", dir, "-o", "dump.log"])
        .output()
        .unwrap();
    let log = |name: &str| std::fs::read_to_string(images.path().join(name)).unwrap_or_default();
    assert!(dump.status.success(), "criu dump: {}\n{}", describe(&dump), log("dump.log"));
    leader.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || tree.iter().all(|p| !pid_alive(*p))),
        "dump left the tree running"
    );

    let restore =
        Command::new("criu").args(["restore", "-d", "-D", dir, "-o", "restore.log"]).output().unwrap();
    assert!(restore.status.success(), "criu restore: {}\n{}", describe(&restore), log("restore.log"));
    let alive: Vec<i32> = tree.iter().copied().filter(|p| pid_alive(*p)).collect();
    for p in &tree {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
    }
    assert_eq!(alive, tree, "restored tree (same pids) {alive:?} != dumped {tree:?}");
}

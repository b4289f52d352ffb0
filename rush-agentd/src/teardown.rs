//! `rush-agentd teardown`: undo everything a daemon leaves behind on a plain stop.
//!
//! A plain stop leaves agents running in their cgroups, confined by the programs pinned in
//! bpffs, so that the next daemon re-adopts them (and a snapshot store may stay mounted).
//! Uninstalling must not: this stops any running daemon of this binary, kills every process
//! in every cgroup under the agent parent in each hierarchy and removes those cgroups (all
//! of them, whatever their names: pre-created pool cgroups too), unmounts what is mounted
//! under the state directories, and removes the pins and the socket. It works from what is
//! on the machine, not from the daemon's state, so it also works with the daemon dead.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rush_agentd::adapters::cgroup::CgroupLayout;
use rush_agentd::config::Config;

pub fn run(config: &Config) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("rush-agentd teardown: must run as root");
        return ExitCode::FAILURE;
    }
    let mut failures = Vec::new();
    stop_daemons(&mut failures);
    match CgroupLayout::detect() {
        Ok(layout) => {
            remove_cgroups(&layout, &config.cgroup.parent, &mut failures);
            release_dynmods(&layout, &mut failures);
        }
        Err(e) => failures.push(format!("cgroup hierarchies not found: {e}")),
    }
    let state = &config.daemon.state_dir;
    let name = state.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let roots = [state.clone(), config.snapshot.base_dir(state), state.with_file_name(format!("{name}-tmp"))];
    unmount_under(&roots, &mut failures);
    remove_pins(&config.bpf.pin_dir, &mut failures);
    match fs::remove_file(&config.daemon.socket) {
        Ok(()) => eprintln!("removed {}", config.daemon.socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("{}: {e}", config.daemon.socket.display())),
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for f in &failures {
        eprintln!("rush-agentd teardown: {f}");
    }
    ExitCode::FAILURE
}

/// The cgroup2 `favordynmods` flag a daemon set and could not take back (SIGKILLed, or
/// crashed) is cleared, unless another daemon still holds it; the lock file goes with it
/// once it no longer says Rush set the flag.
fn release_dynmods(layout: &CgroupLayout, failures: &mut Vec<String>) {
    use rush_agentd::adapters::cgroup::{dynmods_lock_path, favor_dynmods};
    if let Err(e) = favor_dynmods(layout, false, &dynmods_lock_path()) {
        return failures.push(format!("favordynmods: {e}"));
    }
    let path = dynmods_lock_path();
    if fs::read_to_string(&path).is_ok_and(|t| t.trim().is_empty()) {
        let _ = fs::remove_file(&path);
    }
}

/// SIGTERM to every other process running this binary (the daemon, its terminal holders),
/// SIGKILL to those still there after 10 s. Compared by the executable's inode, so a daemon
/// started from another path of the same file is found and another build is not; or by
/// its path, deleted: a daemon still running the binary an upgrade replaced (no systemd
/// to restart it).
fn stop_daemons(failures: &mut Vec<String>) {
    let me = match fs::metadata("/proc/self/exe") {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => return failures.push(format!("/proc/self/exe: {e}")),
    };
    let replaced = fs::read_link("/proc/self/exe").ok().map(|p| {
        let mut p = p.into_os_string();
        p.push(" (deleted)");
        PathBuf::from(p)
    });
    let mine = |pid: i32| {
        let exe = format!("/proc/{pid}/exe");
        fs::metadata(&exe).is_ok_and(|m| (m.dev(), m.ino()) == me)
            || replaced.as_ref().is_some_and(|r| fs::read_link(&exe).is_ok_and(|p| p == *r))
    };
    let self_pid = std::process::id() as i32;
    let pids: Vec<i32> = proc_pids().into_iter().filter(|p| *p != self_pid && mine(*p)).collect();
    for &pid in &pids {
        eprintln!("stopping rush-agentd (pid {pid})");
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    // A zombie has no exe: it no longer counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| mine(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|p| mine(**p)) {
        eprintln!("rush-agentd (pid {pid}) did not stop in 10 s: killing it");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn proc_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Every cgroup under `<root>/<parent>` in every hierarchy: thawed, emptied (cgroup.kill
/// where the kernel has it, else SIGKILL to each listed process, repeated until none is
/// left), then removed deepest first, `<root>/<parent>` last.
fn remove_cgroups(layout: &CgroupLayout, parent: &Path, failures: &mut Vec<String>) {
    let mut tops: Vec<PathBuf> = std::iter::once(&layout.v2_root)
        .chain(layout.v1.iter().map(|(_, r)| r))
        .map(|r| r.join(parent))
        .filter(|d| d.is_dir())
        .collect();
    // cpu and cpuacct are often one hierarchy mounted twice (and symlinked).
    tops.sort();
    tops.dedup_by(|a, b| fs::canonicalize(&*a).ok() == fs::canonicalize(&*b).ok());
    let trees: Vec<Vec<PathBuf>> = tops.iter().map(|t| subtree(t)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for dir in trees.iter().flatten() {
            // A frozen task does not die of SIGKILL until thawed (v1 freezer).
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
            let _ = fs::write(dir.join("cgroup.freeze"), "0");
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    left += 1;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let populated = trees
            .iter()
            .flatten()
            .any(|d| fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()));
        if (left == 0 && !populated) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (top, tree) in tops.iter().zip(&trees) {
        let mut removed = 0;
        // Deepest first: a cgroup with children cannot be removed. An exiting task may keep
        // a cgroup busy for a moment after it left cgroup.procs.
        for dir in tree.iter().rev() {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => {
                        removed += 1;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        failures.push(format!("cgroup {} not removed: {e}", dir.display()));
                        break;
                    }
                }
            }
        }
        eprintln!("removed {removed} cgroup(s) under {}", top.display());
    }
}

/// `top` and every cgroup below it, parents before children.
fn subtree(top: &Path) -> Vec<PathBuf> {
    let mut out = vec![top.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(dir) = fs::read_dir(&out[i]) {
            let mut children: Vec<PathBuf> = dir
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Detaches every mount at or under one of `roots` (the snapshot store's loop-mounted
/// btrfs), deepest first.
fn unmount_under(roots: &[PathBuf], failures: &mut Vec<String>) {
    use std::os::unix::ffi::OsStringExt;
    // Bytes, not text: a mount point need not be UTF-8.
    let info = match fs::read("/proc/self/mountinfo") {
        Ok(s) => s,
        Err(e) => return failures.push(format!("/proc/self/mountinfo: {e}")),
    };
    let mut points: Vec<PathBuf> = info
        .split(|b| *b == b'\n')
        .filter_map(|l| l.split(|b| *b == b' ').nth(4))
        .map(|p| {
            PathBuf::from(std::ffi::OsString::from_vec(rush_agentd::adapters::snapshot::btrfs::unescape(p)))
        })
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => eprintln!("unmounted {}", p.display()),
            Err(e) => failures.push(format!("{} not unmounted: {e}", p.display())),
        }
    }
}

/// The daemon's pin directory, and the throw-away ones `rush-agentd doctor` makes beside
/// it should one have been left by a killed doctor. Removing a pin detaches its program
/// once nothing else holds it (the daemon is stopped and its agents are gone).
fn remove_pins(pin_dir: &Path, failures: &mut Vec<String>) {
    let mut dirs = vec![pin_dir.to_path_buf()];
    if let Ok(d) = fs::read_dir("/sys/fs/bpf") {
        dirs.extend(
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rush-doctor-"))
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        match fs::remove_dir_all(&d) {
            Ok(()) => eprintln!("removed the BPF pins in {}", d.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("pins in {} not removed: {e}", d.display())),
        }
    }
}

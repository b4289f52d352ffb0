//! CRIU in the guests: a file-confined agent's process tree dumped and restored by the
//! daemon's own `AgentManager::dump_processes` / `restore_processes`. The counter it runs
//! goes back to its checkpointed value and counts on, in the agent's cgroup, still denied
//! what its tokens leave out. Prints dump and restore times and the image size.
//!
//! TEMPORARY way in: this test builds the daemon's agent manager in its own process (real
//! cgroups, real BPF programs) until `rush checkpoint --with-processes` / `rush rollback`
//! reach the CLI; then it should drive a [`Daemon`] over its socket like the other suites.
//!
//! Needs root, BPF LSM and a working criu: under RUSH_TEST_STRICT=1 (the guests) their
//! absence fails the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_tests::*;
use rush_agentd::agent::{AgentManager, Budgets, Caller, Enforcement, FileBackend};
use rush_agentd::bpf::{BpfConfig, BpfHandle, KernelPolicy};
use rush_agentd::cgroup::{CgroupBackend, CgroupLayout, FsCgroups};
use rush_agentd::config::{EnforcementChoice, FilesSection, LandlockSection};
use rush_agentd::snapshot::criu::Criu;
use rush_proto::{AgentState, SpawnRequest, StdioMode};

/// Straight to stderr (libtest captures the print macros of passing tests).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn read_count(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Waits until the counter file satisfies `ok`; returns the value seen.
fn wait_count(p: &Path, timeout: Duration, ok: impl Fn(u64) -> bool) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = read_count(p).filter(|v| ok(*v)) {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The daemon's pieces, as `daemon::run` wires them, in this process.
struct InProcess {
    agents: Arc<AgentManager>,
    cgroups: Arc<FsCgroups>,
    pin_dir: PathBuf,
    state: tempfile::TempDir,
    _bpf: BpfHandle,
    _events: tokio::sync::mpsc::UnboundedReceiver<rush_agentd::bpf::KernelEvent>,
}

impl InProcess {
    /// None (after a SKIP, or a panic under strict) without BPF LSM.
    fn start() -> Option<InProcess> {
        let tag = format!("rush-criu-{}", std::process::id());
        let state = tempfile::Builder::new().prefix(&tag).tempdir_in("/tmp").unwrap();
        let log_dir = state.path().join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let layout = CgroupLayout::detect().expect("cgroup layout");
        let cgroups = Arc::new(FsCgroups::new(layout.clone(), Path::new(&tag), &[]).expect("cgroup parent"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let (bpf, report, events) = BpfHandle::start(BpfConfig {
            pin_dir: pin_dir.clone(),
            cgroup2_root: layout.v2_root.clone(),
            agent_cgroup_level: cgroups.agent_level(),
            protected_dirs: vec![state.path().to_owned()],
        })
        .expect("BPF programs load");
        let files = rush_agentd::daemon::choose_file_backend(EnforcementChoice::BpfLsm, &report);
        if !require(files == FileBackend::BpfLsm, "BPF LSM programs attach on this kernel") {
            return None;
        }
        let kernel: Arc<dyn KernelPolicy> = Arc::new(bpf.clone());
        let audit = Arc::new(rush_agentd::audit::AuditLog::open(&state.path().join("audit.jsonl")).unwrap());
        let agents = AgentManager::new(
            cgroups.clone(),
            kernel,
            audit,
            Enforcement { net: report.net_enforced(), files, landlock: LandlockSection::default() },
            log_dir,
            FilesSection::default().grants(),
            Budgets {
                control: Arc::new(rush_agentd::budget::CgroupsRs::new(layout)),
                policy: rush_agentd::policy::Policy::load(Path::new("/nonexistent")).unwrap(),
                meter: None,
                api_endpoints: 0,
            },
        );
        Some(InProcess { agents, cgroups, pin_dir, state, _bpf: bpf, _events: events })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for cg in self.cgroups.existing() {
            let _ = self.cgroups.kill_all(&cg);
            let _ = self.cgroups.remove(&cg);
        }
        self.cgroups.remove_parent();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
fn a_counting_agent_resumes_from_its_checkpoint_still_confined() {
    if !require(is_root(), "root") {
        return;
    }
    let criu = Criu::locate(None).and_then(|c| c.check().map(|()| c));
    if !require(criu.is_ok(), &format!("CRIU works on this kernel ({:?})", criu.err().map(|e| e.to_string())))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(scenario());
}

async fn scenario() {
    let Some(d) = InProcess::start() else { return };
    let work = tempfile::Builder::new().prefix("rush-criu-ws-").tempdir_in("/tmp").unwrap();
    let ws = work.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let secret = work.path().join("secret");
    std::fs::write(&secret, "not for agents").unwrap();
    let counter = ws.join("counter");
    let (denied, leaked) = (ws.join("denied"), ws.join("leaked"));
    // Every tick: count, and try the file no token covers (a new `cat` each time, so
    // restored processes' children are checked too).
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > {c}; \
         if cat {s} >/dev/null 2>&1; then echo $i > {l}; else echo $i > {dn}; fi; sleep 0.1; done",
        c = counter.display(),
        s = secret.display(),
        l = leaked.display(),
        dn = denied.display(),
    );
    let req = SpawnRequest {
        name: "counter".into(),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        net: None,
        trust: None,
        budget: Default::default(),
        allow: vec![format!("{}:read,write,create", ws.display()).parse().unwrap()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: ws.clone(),
        stdio: StdioMode::Log,
        allow_unconfined: false,
        session: None,
    };
    let me = Caller { uid: 0, gid: 0, pid: std::process::id() as i32, groups: vec![] };
    let (info, _exit) = d.agents.spawn(req, &me, None).await.expect("spawn");
    let why = || {
        let log = std::fs::read_to_string(d.state.path().join("logs/counter.log")).unwrap_or_default();
        format!(
            "status {:?}\nlog:\n{log}",
            d.agents.status("counter").map(|s| (s.state, s.exit, s.processes))
        )
    };
    assert!(
        wait_count(&counter, Duration::from_secs(30), |v| v >= 5).is_some(),
        "the agent does not count: {}",
        why()
    );
    assert!(read_count(&denied).is_some() && !leaked.exists(), "the agent is not confined before the dump");

    // Frozen by us around the dump, as a checkpoint does: the count on disk is the one
    // dumped, and the dump leaves our freeze in force.
    let cg = d.cgroups.existing().into_iter().find(|c| c.id == info.cgroup_id).expect("agent cgroup");
    assert!(d.cgroups.freeze(&cg, Duration::from_secs(10)).unwrap(), "not frozen");
    let checkpointed = read_count(&counter).unwrap();
    let images = d.state.path().join("images");
    let image = d.agents.dump_processes("counter", &images).await.expect("dump_processes");
    let still = std::fs::read_to_string(cg.v2_dir.join("cgroup.events")).unwrap();
    assert!(still.contains("frozen 1"), "the dump thawed a cgroup its caller had frozen: {still}");
    assert_eq!(read_count(&counter), Some(checkpointed), "it counted while frozen");
    d.cgroups.thaw(&cg).unwrap();
    assert_eq!(image.root_pid, info.pid);

    let later = wait_count(&counter, Duration::from_secs(30), |v| v >= checkpointed + 10)
        .expect("the agent does not count on after the dump");
    let restored = d.agents.restore_processes("counter", &images).await.expect("restore_processes");
    say(&format!(
        "criu: dump {} ms, restore {} ms, image {} KiB, {} processes (checkpointed at {checkpointed}, \
         killed at about {later})",
        image.dump_ms,
        restored.restore_ms,
        image.bytes / 1024,
        image.pids.len()
    ));
    assert_eq!(restored.root_pid, image.root_pid, "criu restores the pids");
    let status = d.agents.status("counter").expect("status");
    assert_eq!(status.state, AgentState::Running);
    assert_eq!(status.cgroup_id, info.cgroup_id, "the agent keeps its cgroup");
    // Each restored process that still runs (its `sleep` may be done) is in the cgroup.
    let path = format!("0::/{}", cg.v2_dir.strip_prefix(cgroup2_root()).unwrap().display());
    assert!(
        d.cgroups.pids(&cg).contains(&restored.root_pid),
        "the restored root is not in the agent's cgroup"
    );
    for pid in &restored.pids {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            assert_eq!(text.trim(), path, "restored process {pid}");
        }
    }
    let nnp = std::fs::read_to_string(format!("/proc/{}/status", restored.root_pid)).unwrap();
    assert!(nnp.contains("NoNewPrivs:\t1"), "no_new_privs lost in the restore");

    // Back to the checkpointed count, then on from there.
    let back = wait_count(&counter, Duration::from_secs(30), |v| v > checkpointed && v < later)
        .unwrap_or_else(|| {
            panic!("the counter did not resume from {checkpointed}: {:?}", read_count(&counter))
        });
    wait_count(&counter, Duration::from_secs(30), |v| v > back && v < later + 100)
        .expect("it stopped counting");
    // Still confined: the restored shell's new `cat`s are denied.
    wait_count(&denied, Duration::from_secs(30), |v| v > back).expect("no denied attempt after the restore");
    assert!(!leaked.exists(), "a restored process read a file outside its tokens");

    // The exit watcher took the restored root over: a kill ends the agent as usual.
    d.agents.kill("counter", &me).await.expect("kill");
    assert_eq!(d.agents.status("counter").unwrap().state, AgentState::Exited);
    assert!(wait_until(Duration::from_secs(5), || !cg.v2_dir.exists()), "the agent's cgroup stays");
}

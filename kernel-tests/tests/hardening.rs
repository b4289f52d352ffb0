//! The process hardening every agent gets on every kernel (`rush-agentd/src/adapters/harden.rs`):
//! its own cgroup and mount namespaces with cgroupfs read-only, a capability bounding set,
//! a seccomp filter whose refusals are audited, `--user`; and what the file backends do
//! with files handed to an agent. Run as root agents on the host tier (this host: no BPF
//! LSM guard, Landlock) and in both guests (BPF LSM): escape attempts from outside testers
//! (issue 15) and their variants. Each asserts the refusal (errno), the target unchanged
//! or the confinement still in force after the attempt, and a control where one is cheap.
//! Where a backend cannot stop something, the test asserts the documented behaviour, so
//! that docs/ESCAPES.md stays true.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use kernel_tests::escape_kit::*;
use kernel_tests::*;

const EPERM: &str = "errno EPERM";
const ENOSYS: &str = "errno ENOSYS";

/// Root, with the cgroup and network programs: what every test here needs.
fn daemon_with(config: &str) -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    let d = Daemon::start_with_config(config);
    let net = d.doctor()["guarantees"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g["name"] == "network policy" && g["holds"] == true));
    require(net, "the cgroup network programs attach (rush doctor: network policy)").then_some(d)
}

fn daemon() -> Option<Daemon> {
    daemon_with("")
}

/// The audit records of `agent` of this kind, waiting up to 5 s for `want` of them.
fn records(d: &Daemon, agent: &str, kind: &str, want: usize) -> Vec<serde_json::Value> {
    let get = || -> Vec<serde_json::Value> {
        d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == kind).collect()
    };
    wait_until(Duration::from_secs(5), || get().len() >= want);
    get()
}

/// A root agent writes its pid into every hierarchy's root `cgroup.procs` it can name
/// (the paths of the host's view, which in its own mount namespace are its own cgroup,
/// read-only), and into the host's through `/proc/1/root`; then its network policy, its
/// memory budget and its cgroup (seen from outside) are still there.
#[test]
fn hardening_root_agent_cannot_leave_its_cgroup() {
    let Some(d) = daemon() else { return };
    let srv = HttpServer::start();
    let addr = format!("127.0.0.1:{}", srv.port);
    let mut steps: Vec<Vec<String>> = Vec::new();
    let mut want: Vec<&str> = Vec::new();
    for root in cgroup_roots() {
        steps.push(vec!["join-cgroup".into(), root.join("cgroup.procs").display().to_string()]);
        // EROFS: the read-only cgroupfs (this host); EPERM: the BPF LSM guard comes first.
        want.push("errno EROFS|errno EPERM");
        steps.push(vec!["join-cgroup".into(), format!("/proc/1/root{}/cgroup.procs", root.display())]);
        // /proc/1/root of a process outside: ptrace access refused (capabilities the
        // agent lacks, Landlock's domain, or the guard).
        want.push("errno EACCES|errno EPERM");
    }
    let net = bin("rush-test-net");
    steps.push(vec!["run".into(), net.display().to_string(), "tcp".into(), addr.clone()]);
    // The net tool's own line, then the escape tool's line for its exit status.
    want.extend(["errno EPERM", "ok exit 10"]);
    steps.push(vec!["say".into(), "done".into()]);
    want.push("ok done");
    steps.push(vec!["run".into(), "sleep".into(), "30".into()]);
    let steps_ref: Vec<Vec<&str>> = steps.iter().map(|s| s.iter().map(String::as_str).collect()).collect();
    let steps_ref: Vec<&[&str]> = steps_ref.iter().map(Vec::as_slice).collect();
    let tool = tool();
    let mut args = vec!["--json", "agent", "spawn", "leaver", "--net", "deny", "--detach", "--", &tool];
    let chained = chain(&steps_ref);
    args.extend(chained.iter().copied());
    let out = d.rush(&args);
    assert!(out.status.success(), "{}", describe(&out));
    let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["pid"].as_u64().unwrap();
    let log = || String::from_utf8_lossy(&d.rush(&["agent", "logs", "leaver"]).stdout).into_owned();
    assert!(wait_until(Duration::from_secs(20), || log().contains("ok done")), "log: {}", log());
    let got: Vec<String> = log().lines().map(str::to_owned).collect();
    eprintln!("agent leaver: {got:?}");
    assert_lines(&got, &want, "cgroup.procs writes of a root agent, then a connect its policy denies");
    // From outside: still in its cgroup, in every hierarchy.
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mine = format!("/{}/leaver", d.cgroup_parent);
    for line in
        text.lines().filter(|l| l.starts_with("0::") || [":memory:", ":pids:"].iter().any(|c| l.contains(c)))
    {
        assert!(line.ends_with(&mine), "the agent left its cgroup: {line}\n{text}");
    }
    d.rush(&["agent", "kill", "leaver"]);

    // Its memory budget holds after the same attempts: 200 MiB past mem:64M is killed.
    let budget = bin("rush-test-budget");
    let script = format!(
        "for r in {roots}; do echo $$ > $r/cgroup.procs; done 2>/dev/null; exec {budget} hog 200",
        roots = cgroup_roots().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
        budget = budget.display()
    );
    let out = d.rush(&["agent", "spawn", "hog", "--budget", "mem:64M", "--", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("done"), "allocated 200 MiB under mem:64M: {}", describe(&out));
    assert_eq!(out.status.code(), Some(128 + 9), "not OOM-killed: {}", describe(&out));
}

/// What the seccomp filter refuses, each refusal audited as `syscall_deny`; controls by
/// root outside any agent show each call works there.
#[test]
fn hardening_kernel_interfaces_are_refused_and_audited() {
    let Some(d) = daemon() else { return };
    let key = format!("rush-test-{}", std::process::id());
    // A key a process outside put in uid 0's user keyring.
    assert_lines(&outside(&[&["add-key", &key, "outside secret"]]), &["ok key *"], "add-key outside");
    let pin = d.pin_dir.join("rush_agents").display().to_string();
    let scratch = tempfile::Builder::new().prefix("rush-hardening-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = scratch.path().display().to_string();
    let steps: [&[&str]; 14] = [
        &["bpf-get", &pin],
        &["bpf-map-create"],
        &["perf-open"],
        &["fanotify", &mnt, "plain"],
        &["keyctl-read", &key],
        &["add-key", "rush-agent-key", "planted"],
        &["userfaultfd"],
        &["userfaultfd", "user"],
        &["unshare", "user"],
        &["clone3"],
        &["x32-getpid"],
        &["mount-tmpfs", &mnt],
        &["open-tree", &mnt],
        &["run", "sleep", "1"],
    ];
    let got = agent(&d, "kif", None, &steps);
    assert_lines(
        &got,
        &[
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            EPERM,
            "ok fd *",
            EPERM,
            ENOSYS,
            ENOSYS,
            EPERM,
            EPERM,
            "ok exit 0",
        ],
        "kernel interfaces from a root agent",
    );
    // Controls: root outside any agent gets past each (or fails on its arguments only).
    let controls = outside(&[&["bpf-get", &pin], &["perf-open"], &["keyctl-read", &key], &["clone3"]]);
    assert_lines(&controls, &["ok fd *", "ok fd *", "ok found", "ok outside secret", "ok pid *"], "outside");
    // Audited by name, from the kernel's audit records.
    let want = [
        "bpf",
        "perf_event_open",
        "fanotify_init",
        "keyctl",
        "add_key",
        "userfaultfd",
        "unshare(CLONE_NEWUSER)",
        "clone3",
        "mount",
        "open_tree",
    ];
    let recs = records(&d, "kif", "syscall_deny", 11);
    let names: Vec<&str> = recs.iter().filter_map(|r| r["event"]["syscall"].as_str()).collect();
    for w in want {
        assert!(names.contains(&w), "no syscall_deny of {w}: {names:?}");
    }
    assert!(recs.iter().all(|r| r["event"]["comm"] == "rush-test-escap"), "{recs:?}");
    // The key the agent tried to plant is not there.
    assert_lines(&outside(&[&["keyctl-read", "rush-agent-key"]]), &["errno ENOKEY"], "planted key");
}

fn cap_bit(caps_line: &str, which: &str, bit: u32) -> bool {
    // `ok eff HEX bnd HEX`
    let f: Vec<&str> = caps_line.split_whitespace().collect();
    let i = f.iter().position(|x| *x == which).unwrap() + 1;
    u64::from_str_radix(f[i], 16).unwrap() & (1 << bit) != 0
}

/// A root agent holds none of the dropped capabilities (bounding set and effective), so
/// what needs CAP_SYS_ADMIN fails while what needs CAP_CHOWN (kept) works.
#[test]
fn hardening_root_agents_lose_the_dangerous_capabilities() {
    let Some(d) = daemon() else { return };
    let s = Scratch::new();
    let f = s.p("a/f");
    let got =
        agent(&d, "caps", None, &[&["caps"], &["sethostname"], &["chown", &f, "65534", "65534"], &["ids"]]);
    assert_lines(&got, &["ok eff *", EPERM, "ok", "ok uid 0 *"], "capabilities of a root agent");
    for (name, bit) in
        [("SYS_ADMIN", 21), ("BPF", 39), ("SYS_PTRACE", 19), ("SYS_MODULE", 16), ("DAC_READ_SEARCH", 2)]
    {
        assert!(!cap_bit(&got[0], "bnd", bit), "CAP_{name} in the bounding set: {}", got[0]);
        assert!(!cap_bit(&got[0], "eff", bit), "CAP_{name} effective: {}", got[0]);
    }
    assert!(cap_bit(&got[0], "eff", 0) && cap_bit(&got[0], "eff", 1), "CHOWN, DAC_OVERRIDE kept: {}", got[0]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), 65534, "control: chown (kept capability) worked");
    let status = d.rush_json(&["agent", "status", "caps"]);
    let dropped = status["hardening"]["capabilities_dropped"].as_array().unwrap();
    assert!(dropped.iter().any(|c| c == "CAP_SYS_ADMIN"), "{status}");
    assert_eq!(status["hardening"]["seccomp"], true);
    assert_eq!(status["hardening"]["cgroup_namespace"], true);
    // The read-only cgroupfs view is for kernels where no BPF LSM guard refuses cgroupfs
    // writes (its mount calls are what the guard refuses an agent's first process).
    assert_eq!(status["hardening"]["private_cgroupfs"], !d.lsm_attached());
    drop(d);
    // Control where no BPF LSM guard refuses CAP_SYS_ADMIN itself: the capability set is
    // what refused (with none dropped, sethostname works).
    let d = Daemon::start_with_config("[hardening]\ndrop_capabilities = []\n");
    if !d.lsm_attached() {
        let got = agent(&d, "caps2", None, &[&["sethostname"]]);
        assert_lines(&got, &["ok hostname *"], "sethostname with no capability dropped");
    }
}

/// `--user` runs the agent as that user (groups from the user database); a trust level
/// with `root_agents = false` refuses root agents and accepts them with --user.
#[test]
fn hardening_user_and_refused_root_agents() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[trust.nonroot]\nroot_agents = false\n").unwrap();
    let Some(d) = daemon_with(&format!("[policy]\nfile = \"{}\"\n", policy.display())) else { return };
    let run = |args: &[&str]| d.rush_cmd(args).current_dir("/").output().unwrap();
    let out = run(&["agent", "spawn", "u1", "--user", "nobody", "--", "id"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("uid=65534"), "{text}");
    let out = run(&["agent", "spawn", "u2", "--user", "65534", "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534", "{}", describe(&out));
    let out = run(&["agent", "spawn", "u3", "--trust", "nonroot", "--", "id", "-u"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run the agent as root: trust level \"nonroot\" refuses root agents"),
        "{err}"
    );
    let out = run(&["agent", "spawn", "u4", "--trust", "nonroot", "--user", "nobody", "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534", "{}", describe(&out));
    let out = run(&["agent", "spawn", "u5", "--user", "no-such-user-here", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"), "{}", describe(&out));
    assert_eq!(d.rush_json(&["agent", "status", "u4"])["uid"], 65534);
}

/// Files handed to a file-confined agent. Both backends: stdin handed read-write is
/// writable through the fd (stdio gets a token in the fd's modes). Received over
/// SCM_RIGHTS from a process outside, an fd of an ungranted file, inotify marks and
/// O_TMPFILE: refused under BPF LSM; under Landlock, which checks opens only, the fd is
/// usable and the marks are placed: asserted, as documented.
#[test]
fn hardening_files_handed_to_an_agent() {
    let Some(d) = daemon() else { return };
    let lsm = d.lsm_attached();
    let s = Scratch::new();
    s.write("b/io", "stdin data");
    let server = FdServer::start(s.path("fds.sock"), vec![std::fs::File::open(s.path("b/secret")).unwrap()]);
    let (bins, a) = (bin_grant(), s.grant("a", "read,write"));
    let tool = tool();
    let steps: [&[&str]; 6] = [
        &["pwrite", "0", "STDIN"],
        &["recv-fd", &server.path],
        &["pread", "@"],
        &["inotify", &s.p("b")],
        &["tmpfile", &s.p("a"), "x"],
        &["run", "sleep", "0"],
    ];
    // Connecting to the server is a write on its socket file (BPF LSM checks it).
    let to_server = s.grant("fds.sock", "write");
    let mut args =
        vec!["agent", "spawn", "handed", "--allow", &bins, "--allow", &a, "--allow", &to_server, "--", &tool];
    let chained = chain(&steps);
    args.extend(chained.iter().copied());
    let stdin = std::fs::OpenOptions::new().read(true).write(true).open(s.path("b/io")).unwrap();
    let out = d.rush_cmd(&args).stdin(Stdio::from(stdin)).output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(10)), "{}", describe(&out));
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    eprintln!("agent handed ({}): {got:?}", if lsm { "BPF LSM" } else { "Landlock" });
    let want: [&str; 7] = if lsm {
        ["ok wrote 5", "ok fd *", EPERM, EPERM, EPERM, "ok exit 0", ""]
    } else {
        // Landlock: the received fd reads, the mark is placed, O_TMPFILE needs only
        // write on the directory (Landlock has no right for it).
        ["ok wrote 5", "ok fd *", "ok secret data", "ok wd *", "ok fd *", "ok exit 0", ""]
    };
    assert_lines(&got, &want[..6], "files handed to a file-confined root agent");
    assert_eq!(s.read("b/io"), "STDIN data", "the handed stdin was written through its fd");
    assert_eq!(s.read("b/secret"), "secret data");
}

/// The agent's own view: `/` as its cgroup (its cgroup namespace); under cgroupfs, where
/// no BPF LSM guard runs, only its own cgroup, read-only; where the guard runs, the whole
/// tree, which it may not write.
#[test]
fn hardening_the_agent_s_view_of_its_cgroup() {
    let Some(d) = daemon() else { return };
    let root = cgroup2_root();
    let script = format!(
        "sed -n 's/^0:://p' /proc/self/cgroup; ls {root} | grep -c '^{parent}$'; echo x > {root}/cgroup.procs",
        root = root.display(),
        parent = d.cgroup_parent.trim_matches('/'),
    );
    let out = d.rush(&["agent", "spawn", "view", "--", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("/"), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    if d.lsm_attached() {
        assert_eq!(lines.next(), Some("1"), "{}", describe(&out));
        assert!(err.contains("Operation not permitted"), "{err}");
    } else {
        // The agents' parent directory is not in its view (its own cgroup is the root).
        assert_eq!(lines.next(), Some("0"), "{}", describe(&out));
        assert!(err.contains("Read-only file system"), "{err}");
    }
}

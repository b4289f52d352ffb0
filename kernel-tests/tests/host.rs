//! Host integration tier: root, the real daemon and CLI, real cgroups and BPF programs.
//! Every test ends in an outcome the kernel produced: an errno, a dead process, a
//! removed cgroup, a record in the audit trail.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

/// Root and a kernel that attaches cgroup sock_addr programs; false = skipped.
fn host_ready() -> bool {
    require(is_root(), "root (these tests load BPF programs and create cgroups)")
}

fn net(d: &Daemon, name: &str, policy: &str, kind: &str, addr: &str) -> std::process::Output {
    let tool = bin("rush-test-net");
    let tool = tool.to_str().unwrap();
    d.rush(&["agent", "spawn", name, "--net", policy, "--", tool, kind, addr])
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The agent's net_deny records, waiting for the first: kernel events reach the audit
/// trail asynchronously, through the ring buffer.
fn net_denies(d: &Daemon, agent: &str) -> Vec<Value> {
    let get = || -> Vec<Value> {
        d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == "net_deny").collect()
    };
    wait_until(Duration::from_secs(5), || !get().is_empty());
    get()
}

#[test]
fn deny_all_refuses_connect_with_eperm_and_audits_it() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let srv = HttpServer::start();
    let addr = format!("127.0.0.1:{}", srv.port);

    let out = net(&d, "a1", "deny", "tcp", &addr);
    assert_eq!(stdout(&out), "errno EPERM", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(10), "the agent's exit status is rush's: {}", describe(&out));

    // The same program outside any agent connects.
    let plain = std::process::Command::new(bin("rush-test-net")).args(["tcp", &addr]).output().unwrap();
    assert_eq!(stdout(&plain), "ok", "{}", describe(&plain));

    let denies = net_denies(&d, "a1");
    assert_eq!(denies.len(), 1, "one deny record expected: {denies:?}");
    let ev = &denies[0]["event"];
    assert_eq!(ev["destination"], addr.as_str());
    assert_eq!(ev["hook"], "connect4");
    assert_eq!(ev["protocol"], "tcp");
    assert_eq!(ev["comm"], "rush-test-net");
    assert_eq!(ev["uid"], 0);
    assert!(ev["pid"].as_u64().unwrap() > 0);
}

#[test]
fn curl_is_refused_in_a_deny_agent_and_allowed_by_its_allow_list() {
    if !host_ready() || !require(which("curl"), "curl installed") {
        return;
    }
    let d = Daemon::start();
    let srv = HttpServer::start();
    let url = format!("http://127.0.0.1:{}/", srv.port);
    let curl = ["curl", "-sS", "--max-time", "5", url.as_str()];

    let mut args = vec!["agent", "spawn", "c1", "--net", "deny", "--"];
    args.extend_from_slice(&curl);
    let out = d.rush(&args);
    assert_eq!(out.status.code(), Some(7), "curl must fail to connect (exit 7): {}", describe(&out));

    let outside = std::process::Command::new("curl").args(&curl[1..]).output().unwrap();
    assert_eq!(stdout(&outside), "hello from rush test", "{}", describe(&outside));

    let allow = format!("127.0.0.1:{}", srv.port);
    let mut args = vec!["agent", "spawn", "c2", "--net", allow.as_str(), "--"];
    args.extend_from_slice(&curl);
    let out = d.rush(&args);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "hello from rush test");

    let denies = net_denies(&d, "c1");
    assert!(!denies.is_empty(), "curl's refused connect must be audited");
    assert_eq!(denies[0]["event"]["comm"], "curl");
    assert_eq!(denies[0]["event"]["destination"], allow.as_str());
    // `rush audit` (human form) shows it too, with the agent name and destination.
    let human = d.rush(&["audit", "--agent", "c1"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("c1") && text.contains(&allow) && text.contains("curl"), "{text}");
}

#[test]
fn allow_list_admits_only_the_listed_destinations() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let a = HttpServer::start();
    let b = HttpServer::start();
    let allowed = format!("127.0.0.1:{}", a.port);
    let other = format!("127.0.0.1:{}", b.port);

    assert_eq!(stdout(&net(&d, "l1", &allowed, "tcp", &allowed)), "ok");
    assert_eq!(stdout(&net(&d, "l2", &allowed, "tcp", &other)), "errno EPERM");
    // Any port on a host: HOST:*
    assert_eq!(stdout(&net(&d, "l3", "127.0.0.1:*", "tcp", &other)), "ok");
    // allow = everything
    assert_eq!(stdout(&net(&d, "l4", "allow", "tcp", &other)), "ok");
}

#[test]
fn cidr_allow_lists_admit_whole_blocks() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let a = HttpServer::start();
    let b = HttpServer::start();
    let on_a = format!("127.0.0.1:{}", a.port);
    let on_b = format!("127.0.0.1:{}", b.port);
    // Only 127.0.0.1 listens: elsewhere in 127/8 an allowed connect is refused by the
    // stack (ECONNREFUSED), a denied one by Rush (EPERM).
    let elsewhere = format!("127.3.2.1:{}", a.port);

    let block_a = format!("127.0.0.0/8:{}", a.port);
    assert_eq!(stdout(&net(&d, "c1", &block_a, "tcp", &on_a)), "ok");
    assert_eq!(stdout(&net(&d, "c2", &block_a, "tcp", &elsewhere)), "errno ECONNREFUSED");
    assert_eq!(stdout(&net(&d, "c3", &block_a, "tcp", &on_b)), "errno EPERM", "other port");
    assert_eq!(stdout(&net(&d, "c4", "127.0.0.0/8:*", "tcp", &on_b)), "ok");
    // Host bits are cleared: 127.9.9.9/8 is 127.0.0.0/8.
    assert_eq!(stdout(&net(&d, "c5", "127.9.9.9/8:*", "tcp", &on_b)), "ok");
    assert_eq!(stdout(&net(&d, "c6", "127.0.0.0/30:*", "tcp", &elsewhere)), "errno EPERM");
    assert_eq!(stdout(&net(&d, "c7", "10.0.0.0/8:*,[::/0]:*", "tcp", &on_a)), "errno EPERM");
    // An IPv6 block, and IPv4 through a v6 socket judged as IPv4.
    let v6 = format!("[::1]:{}", a.port);
    assert_eq!(stdout(&net(&d, "c8", "[::/64]:*", "tcp", &v6)), "errno ECONNREFUSED");
    let mapped = format!("[::ffff:127.0.0.1]:{}", a.port);
    assert_eq!(stdout(&net(&d, "c9", "127.0.0.0/8:*", "tcp", &mapped)), "ok");
    // The policy is shown normalised.
    let spawned = d.audit().into_iter().find(|r| r["agent"] == "c5" && r["event"]["kind"] == "spawn");
    let spawned = spawned.expect("a spawn record of c5");
    assert_eq!(spawned["event"]["net"]["endpoints"][0]["host"], "127.0.0.0", "{spawned}");
    assert_eq!(spawned["event"]["net"]["endpoints"][0]["prefix"], 8, "{spawned}");
}

#[test]
fn udp_sendmsg_and_ipv6_are_covered_too() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uaddr = udp.local_addr().unwrap().to_string();
    assert_eq!(stdout(&net(&d, "u1", "deny", "udp", &uaddr)), "errno EPERM");
    assert_eq!(stdout(&net(&d, "u2", &uaddr, "udp", &uaddr)), "ok");

    // An IPv4 destination reached through an IPv6 socket (v4-mapped) is still IPv4 to the policy.
    let srv = HttpServer::start();
    let mapped = format!("[::ffff:127.0.0.1]:{}", srv.port);
    let allow_v4 = format!("127.0.0.1:{}", srv.port);
    assert_eq!(stdout(&net(&d, "m1", "deny", "tcp", &mapped)), "errno EPERM");
    assert_eq!(stdout(&net(&d, "m2", &allow_v4, "tcp", &mapped)), "ok");

    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let l6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let a6 = l6.local_addr().unwrap().to_string();
        assert_eq!(stdout(&net(&d, "v6a", "deny", "tcp", &a6)), "errno EPERM");
        assert_eq!(stdout(&net(&d, "v6b", &a6, "tcp", &a6)), "ok");
        let d6: Vec<Value> = net_denies(&d, "v6a");
        assert_eq!(d6[0]["event"]["hook"], "connect6");
        assert_eq!(d6[0]["event"]["destination"], a6.as_str());
    }
}

#[test]
fn a_sub_cgroup_made_inside_the_agent_stays_confined() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let srv = HttpServer::start();
    let addr = format!("127.0.0.1:{}", srv.port);
    let tool = bin("rush-test-net");
    // As root inside the agent: make a child cgroup, move in, try again.
    let script = format!(
        "set -e; cg=$(sed -n 's/^0:://p' /proc/self/cgroup); d={root}$cg/escape; mkdir $d; echo $$ > $d/cgroup.procs; \
         sed -n 's/^0:://p' /proc/self/cgroup; {tool} tcp {addr}",
        root = cgroup2_root().display(),
        tool = tool.display()
    );
    let out = d.rush(&["agent", "spawn", "s1", "--net", "deny", "--", "sh", "-c", &script]);
    let text = stdout(&out);
    // With the default hardening its cgroupfs is read-only: no sub-cgroup at all.
    assert!(!text.contains("/escape"), "the agent moved into a sub-cgroup: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system") || self_protected(&d),
        "mkdir in the agent's cgroupfs must fail (EROFS): {}",
        describe(&out)
    );
    drop(d);
    // Without that layer (and its cgroup namespace), the cgroup itself still holds.
    let d = Daemon::start_with_config(HARDENING_OFF);
    let out = d.rush(&["agent", "spawn", "s1", "--net", "deny", "--", "sh", "-c", &script]);
    let text = stdout(&out);
    if self_protected(&d) {
        // Where the guard programs attach, the agent cannot even make the sub-cgroup.
        assert!(!text.contains("/escape"), "the agent moved into a sub-cgroup: {}", describe(&out));
        assert!(!out.status.success(), "mkdir in cgroupfs must fail: {}", describe(&out));
        let denied = d.audit().iter().any(|r| r["event"]["kind"] == "guard_deny");
        assert!(denied, "no guard_deny in the audit trail: {:?}", d.audit());
        return;
    }
    assert!(text.contains("/escape"), "the agent did move into its sub-cgroup: {}", describe(&out));
    assert!(text.ends_with("errno EPERM"), "{}", describe(&out));
}

/// Whether `rush doctor` says self-protection (the BPF LSM guard programs) holds.
fn self_protected(d: &Daemon) -> bool {
    let doctor = d.doctor();
    doctor["guarantees"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["name"] == "self-protection" && g["holds"] == true)
}

#[test]
fn processes_outside_agents_are_never_affected() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let srv = HttpServer::start();
    let addr = format!("127.0.0.1:{}", srv.port);
    let out = d.rush(&["--json", "agent", "spawn", "bg", "--net", "deny", "--detach", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", describe(&out));
    for _ in 0..20 {
        let plain = std::process::Command::new(bin("rush-test-net")).args(["tcp", &addr]).output().unwrap();
        assert_eq!(stdout(&plain), "ok");
    }
    assert!(d.rush(&["agent", "kill", "bg"]).status.success());
}

#[test]
fn kill_ends_the_whole_tree_and_removes_the_cgroup() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    // A tree: sh with two background children, plus a double-forked orphan (its parent
    // subshell exits): four processes whatever the shell.
    let script = "sleep 300 & sleep 301 & (sleep 302 &); wait";
    let out = d.rush(&["--json", "agent", "spawn", "tree", "--detach", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", describe(&out));
    let cgroup_dir = d.cgroup_v2_parent().join("tree");
    let procs = cgroup_dir.join("cgroup.procs");
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&procs).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    };
    // Settled means sh and three execed `sleep`s: before that the count passes through
    // 4 (sh, two sleeps, the subshell) and 5 (the subshell not yet gone) too.
    let comm = |pid: &i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let settled =
        |pids: &[i32]| pids.len() == 4 && pids.iter().filter(|p| comm(p).trim() == "sleep").count() == 3;
    assert!(
        wait_until(Duration::from_secs(5), || settled(&read_pids())),
        "tree not started: {:?}",
        read_pids()
    );
    let mut pids = read_pids();
    pids.sort();

    // v1 controllers (hybrid hosts): the agent is placed in them too.
    for root in cgroup_roots() {
        if root == cgroup2_root() || !root.join(&d.cgroup_parent).exists() {
            continue;
        }
        let v1 = std::fs::read_to_string(root.join(&d.cgroup_parent).join("tree/cgroup.procs")).unwrap();
        let mut v1: Vec<i32> = v1.lines().filter_map(|l| l.parse().ok()).collect();
        v1.sort();
        assert_eq!(v1, pids, "v1 hierarchy {} differs from v2", root.display());
    }

    let status = d.rush_json(&["agent", "status", "tree"]);
    assert_eq!(status["processes"].as_u64().unwrap() as usize, pids.len());
    let out = d.rush(&["agent", "kill", "tree"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(5), || pids.iter().all(|p| !pid_alive(*p))),
        "survivors: {:?}",
        pids.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
    assert!(
        wait_until(Duration::from_secs(5), || !cgroup_dir.exists()),
        "cgroup {} not removed",
        cgroup_dir.display()
    );
    for root in cgroup_roots() {
        assert!(!root.join(&d.cgroup_parent).join("tree").exists(), "v1 cgroup left in {}", root.display());
    }
    let status = d.rush_json(&["agent", "status", "tree"]);
    assert_eq!(status["state"], "exited");
    let kinds: Vec<String> = d
        .audit()
        .iter()
        .filter(|r| r["agent"] == "tree")
        .map(|r| r["event"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["spawn", "kill", "exit"]);
}

#[test]
fn foreground_agent_streams_output_and_returns_its_status() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let out = d.rush(&["agent", "spawn", "fg", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // The first process is in the agent's cgroups: v2 (identity) and every v1 hierarchy,
    // as seen from outside (inside, its cgroup namespace makes that `/`).
    let out = d.rush(&["agent", "spawn", "where", "--", "cat", "/proc/self/cgroup"]);
    let inside = String::from_utf8_lossy(&out.stdout);
    assert!(inside.lines().any(|l| l == "0::/"), "not in a cgroup namespace of its own: {inside}");
    let out = d.rush(&["--json", "agent", "spawn", "where2", "--detach", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", describe(&out));
    let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["pid"].as_u64().unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mine = format!("/{}/where2", d.cgroup_parent);
    assert!(text.lines().any(|l| l == format!("0::{mine}")), "not in its v2 cgroup: {text}");
    for line in
        text.lines().filter(|l| ["pids", "memory", "freezer"].iter().any(|c| l.contains(&format!(":{c}:"))))
    {
        assert!(line.ends_with(&mine), "not in its v1 cgroup: {line}");
    }
    // Killed by a signal: 128 + signal, the shell's convention.
    let out = d.rush(&["agent", "spawn", "sig", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", describe(&out));
}

#[test]
fn a_foreground_agent_dies_with_its_caller() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let mut child = d
        .rush_cmd(&["agent", "spawn", "orphan", "--", "sleep", "300"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let cg = d.cgroup_v2_parent().join("orphan/cgroup.procs");
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(&cg).is_ok_and(|s| !s.is_empty())));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !d.cgroup_v2_parent().join("orphan").exists()),
        "agent outlived its caller"
    );
}

#[test]
fn bad_input_gives_one_clear_line_and_changes_nothing() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    let keep = d.rush(&["--json", "agent", "spawn", "dup", "--detach", "--", "sleep", "30"]);
    assert!(keep.status.success(), "{}", describe(&keep));
    let before = d.rush_json(&["agent", "list"]);
    let audit_before = d.audit().len();

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["agent", "spawn", "x", "--bogus", "--", "true"], 2, "--bogus"),
        (vec!["agent", "spawn", "x", "--net", "10.0.0.1", "--", "true"], 2, "missing ':PORT'"),
        (vec!["agent", "spawn", "x", "--net", "1.2.3.4:99999", "--", "true"], 2, "99999"),
        (vec!["agent", "spawn", "x", "--net", "10.0.0.0/33:80", "--", "true"], 2, "/33"),
        (vec!["agent", "spawn", "x", "--net", "example.com/24:80", "--", "true"], 2, "host name"),
        (vec!["agent", "spawn", "x", "--allow", "relative:read", "--", "true"], 2, "absolute"),
        (vec!["agent", "spawn", "x", "--allow", "/tmp:fly", "--", "true"], 2, "fly"),
        (vec!["agent", "spawn", "bad/name", "--", "true"], 2, "invalid agent name"),
        (vec!["agent", "spawn", "x"], 2, ""),
        (vec!["agent", "spawn", "dup", "--", "true"], 1, "already in use"),
        (vec!["agent", "spawn", "x", "--", "/nonexistent/program"], 1, "/nonexistent/program"),
        // Refused either way: unenforceable here, or (BPF LSM) a grant on nothing.
        (
            vec!["agent", "spawn", "x", "--allow", "/nonexistent/dir:read", "--", "true"],
            1,
            "/nonexistent/dir",
        ),
        (vec!["agent", "status", "nobody"], 1, "nobody"),
        (vec!["agent", "kill", "nobody"], 1, "nobody"),
    ];
    for (args, code, needle) in cases {
        let out = d.rush(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "rush {args:?}: {}", describe(&out));
        assert!(err.contains(needle), "rush {args:?}: stderr lacks {needle:?}: {err}");
        if code == 1 {
            assert_eq!(err.trim().lines().count(), 1, "rush {args:?}: one line expected: {err}");
        }
    }
    assert!(d.is_running(), "daemon died on bad input:\n{}", d.log_text());
    let after = d.rush_json(&["agent", "list"]);
    assert_eq!(before.as_array().unwrap().len(), after.as_array().unwrap().len());
    assert_eq!(after[0]["name"], "dup");
    assert_eq!(after[0]["state"], "running");
    // Failed spawns leave no cgroup behind and no spawn record.
    let dirs: Vec<String> = std::fs::read_dir(d.cgroup_v2_parent())
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ["dup"]);
    let spawns = d.audit().iter().skip(audit_before).filter(|r| r["event"]["kind"] == "spawn").count();
    assert_eq!(spawns, 0);
}

#[test]
fn file_tokens_are_refused_not_faked_where_bpf_lsm_cannot_attach() {
    if !host_ready() {
        return;
    }
    // Only BPF LSM may enforce files (Landlock, chosen by `auto` here, is tests/landlock.rs).
    let d = Daemon::start_with_config("[files]\nenforcement = \"bpf-lsm\"\n");
    if d.lsm_attached() {
        eprintln!("note: BPF LSM attaches here; tests/files.rs covers file tokens");
        return;
    }
    let out = d.rush(&["agent", "spawn", "x", "--allow", "/tmp:read", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing --allow /tmp:read") && err.contains("BPF LSM"), "{err}");
    assert!(d.rush_json(&["agent", "list"]).as_array().unwrap().is_empty(), "nothing may have started");
}

#[test]
fn no_daemon_and_untrusted_sockets_are_refused_clearly() {
    if !host_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = std::process::Command::new(bin("rush"))
        .args(["--socket", missing.to_str().unwrap(), "agent", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"), "{}", describe(&out));

    // A socket someone else owns could be a fake daemon collecting our terminal.
    let fake = dir.path().join("fake.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&fake).unwrap();
    std::os::unix::fs::chown(&fake, Some(65534), Some(65534)).unwrap();
    let out = std::process::Command::new(bin("rush"))
        .args(["--socket", fake.to_str().unwrap(), "agent", "list"])
        .env_remove("RUSH_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned by uid 65534"), "{err}");

    // And the daemon will not start on top of it either.
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("rush-agentd"))
        .args(["--config", "/dev/null", "--ephemeral", "--socket", fake.to_str().unwrap()])
        .args(["--state-dir", state.path().to_str().unwrap(), "--pin-dir", "/sys/fs/bpf/rush-test-untrusted"])
        .args(["--cgroup-parent", "rush-test-untrusted"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"), "{}", describe(&out));
    for root in cgroup_roots() {
        let _ = std::fs::remove_dir(root.join("rush-test-untrusted"));
    }
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/rush-test-untrusted");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("rush-agentd"))
        .args(["--config", "/dev/null", "--ephemeral", "--socket", d.socket.to_str().unwrap()])
        .args(["--state-dir", state.path().to_str().unwrap(), "--pin-dir", "/sys/fs/bpf/rush-test-second"])
        .args(["--cgroup-parent", "rush-test-second"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"), "{}", describe(&out));
    for root in cgroup_roots() {
        let _ = std::fs::remove_dir(root.join("rush-test-second"));
    }
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/rush-test-second");
    assert!(d.rush(&["agent", "list"]).status.success(), "the first daemon must be unaffected");
}

#[test]
fn malformed_ndjson_and_dropped_connections_never_crash_the_daemon() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut reply = |s: &mut UnixStream, line: &[u8]| -> Value {
        s.write_all(line).unwrap();
        let mut buf = String::new();
        r.read_line(&mut buf).unwrap();
        serde_json::from_str(&buf).unwrap_or_else(|e| panic!("reply not JSON ({e}): {buf:?}"))
    };
    let v = rush_proto::PROTOCOL_VERSION;
    for bad in [
        "this is not json\n".as_bytes().to_vec(),
        format!("{{\"version\":{v},\"id\":5,\"request\":{{\"type\":\"launch_missiles\"}}}}\n").into_bytes(),
        format!("{{\"version\":{v},\"id\":6}}\n").into_bytes(),
        b"[1,2,3]\n".to_vec(),
        format!("{{\"version\":{v},\"id\":7,\"request\":{{\"type\":\"spawn\",\"name\":\"x\"}}}}\n")
            .into_bytes(),
        b"\xff\xfe\n".to_vec(),
    ] {
        let v = reply(&mut s, &bad);
        assert_eq!(v["reply"]["err"]["kind"], "bad_request", "{:?} → {v}", String::from_utf8_lossy(&bad));
    }
    let v = reply(&mut s, b"{\"version\":99,\"id\":8,\"request\":{\"type\":\"hello\"}}\n");
    assert_eq!(v["reply"]["err"]["kind"], "version_mismatch");
    assert_eq!(v["id"], 8);
    // The same connection still works after all that.
    let hello = format!(
        "{{\"version\":{v},\"id\":9,\"request\":{{\"type\":\"hello\"}}}}\n",
        v = rush_proto::PROTOCOL_VERSION
    );
    let v = reply(&mut s, hello.as_bytes());
    assert_eq!(v["reply"]["ok"]["caller"]["role"]["kind"], "operator", "{v}");
    drop(s);

    // Connections dropped mid-line, mid-request, and a flood of partial ones.
    for i in 0..50 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let _ = s.write_all(&b"{\"version\":2,\"id\":1,\"request\":{\"type\":\"list_ag"[..(i % 40) + 1]);
    }
    // A foreground spawn whose caller vanishes before reading the reply.
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let _ = s.write_all(b"{\"version\":2,\"id\":1,\"request\":{\"type\":\"list_agents\"}}\n");
    }
    // An oversized line is refused without the daemon buffering forever.
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let big = vec![b'x'; 2 << 20];
        let _ = s.write_all(&big);
    }
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
    assert!(d.rush(&["agent", "list"]).status.success());
}

/// A client of the previous protocol (envelope version 1) is told which versions meet, by
/// name; what it sends is not read as a request of ours, whatever its body.
#[test]
fn an_old_client_is_refused_naming_both_versions() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for line in [
        &b"{\"version\":1,\"id\":3,\"request\":{\"type\":\"list_agents\"}}\n"[..],
        // A request of version 1 that this version no longer has.
        b"{\"version\":1,\"id\":4,\"request\":{\"type\":\"list_agents_v1\"}}\n",
    ] {
        s.write_all(line).unwrap();
        let mut buf = String::new();
        r.read_line(&mut buf).unwrap();
        let v: Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["reply"]["err"]["kind"], "version_mismatch", "{v}");
        let msg = v["reply"]["err"]["message"].as_str().unwrap();
        let ours = format!("rush-agentd speaks version {}", rush_proto::PROTOCOL_VERSION);
        assert!(msg.contains("this client speaks protocol version 1") && msg.contains(&ours), "{msg}");
        assert_eq!(v["version"], rush_proto::PROTOCOL_VERSION);
    }
}

#[test]
fn only_operators_may_spawn_even_root_inside_an_agent_may_not() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let rush = bin("rush");
    // root, but inside an agent: an agent is not an operator.
    let inner = format!("{} --socket {} agent spawn inner -- true", rush.display(), d.socket.display());
    let out = d.rush(&["agent", "spawn", "outer", "--", "sh", "-c", &inner]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not spawn"), "{}", describe(&out));
    let refused: Vec<Value> = d.audit().into_iter().filter(|r| r["event"]["kind"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["agent"], "outer");

    // An unprivileged user outside agents may not list agents either.
    let out = std::process::Command::new(&rush)
        .args(["--socket", d.socket.to_str().unwrap(), "agent", "list"])
        .uid(65534)
        .gid(65534)
        .output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uid 65534 may not"), "{}", describe(&out));
}

#[test]
fn detached_agents_log_their_output() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let out = d.rush(&[
        "--json",
        "agent",
        "spawn",
        "lg",
        "--detach",
        "--",
        "sh",
        "-c",
        "echo one; sleep 0.3; echo two",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let follow = d.rush(&["agent", "logs", "lg", "--follow"]);
    assert!(follow.status.success(), "{}", describe(&follow));
    assert_eq!(String::from_utf8_lossy(&follow.stdout), "one\ntwo\n");
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// The cgroup/sysctl program needs no BPF LSM: even a root agent on this host writes no
/// sysctl, while the same write from outside agents works.
#[test]
fn agents_cannot_write_sysctls() {
    if !host_ready() {
        return;
    }
    let d = Daemon::start();
    let path = "/proc/sys/kernel/domainname";
    let before = std::fs::read_to_string(path).unwrap();
    let script = format!("echo rush-escaped > {path}");
    let out = d.rush(&["agent", "spawn", "sysctl", "--net", "deny", "--", "sh", "-c", &script]);
    assert!(!out.status.success(), "the write succeeded: {}", describe(&out));
    assert_eq!(std::fs::read_to_string(path).unwrap(), before, "{path} changed");
    // Where the BPF LSM guard attaches, its procfs check refuses the open first.
    let denied = d.audit().into_iter().any(|r| {
        r["agent"] == "sysctl"
            && r["event"]["kind"] == "guard_deny"
            && (r["event"]["hook"] == "cgroup/sysctl" || r["event"]["hook"] == "file_open:procfs-write")
    });
    assert!(denied, "no guard_deny from cgroup/sysctl or the procfs guard: {:?}", d.audit());
    // Outside agents: untouched (write the same value back).
    std::fs::write(path, before.trim_end()).expect("root outside agents writes sysctls");
}

/// A daemon killed with SIGKILL leaves its agent running and confined; the next one
/// re-adopts it from its state database: listed with the same pid, still denied the
/// network (the pinned programs never stopped), and killable.
#[test]
fn a_restarted_daemon_re_adopts_its_running_agent() {
    if !host_ready() {
        return;
    }
    let mut d = Daemon::start();
    let srv = HttpServer::start();
    let addr = format!("127.0.0.1:{}", srv.port);
    let tool = bin("rush-test-net");
    let script = format!("while true; do {} tcp {addr}; sleep 0.2; done", tool.display());
    let out =
        d.rush(&["--json", "agent", "spawn", "keep", "--net", "deny", "--detach", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["pid"].as_u64().unwrap();

    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(pid as i32), "the agent died with the daemon");
    d.restart();

    let agent = d.rush_json(&["agent", "status", "keep"]);
    assert_eq!(agent["state"], "running", "{agent}");
    assert_eq!(agent["pid"].as_u64(), Some(pid), "{agent}");
    // Confined all along: every attempt, before, between and after the daemons, EPERM.
    let logs = || String::from_utf8_lossy(&d.rush(&["agent", "logs", "keep"]).stdout).into_owned();
    let before = logs().lines().count();
    assert!(wait_until(Duration::from_secs(5), || logs().lines().count() > before + 2), "no new attempts");
    let text = logs();
    assert!(text.lines().all(|l| l == "errno EPERM"), "an attempt got through: {text}");
    assert!(d.log_text().contains("re-adopted"), "{}", d.log_text());

    let out = d.rush(&["agent", "kill", "keep"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid as i32)), "the adopted agent survived kill");
    let agent = d.rush_json(&["agent", "status", "keep"]);
    assert_eq!(agent["state"], "exited", "{agent}");
}

/// Hybrid hosts: a daemon joining v1 hierarchies holds the cgroup2 `favordynmods` flag
/// while it runs (`[cgroup] favordynmods`, on by default), says so in `rush doctor`, and
/// its agents are still in every v1 hierarchy, under the v1 pids limit. Whether the flag
/// is cleared after the last daemon stops is the unit test's (other suites' daemons run
/// alongside this one and hold it too). Pure cgroup v2 hosts (the guests): the host is
/// left alone, no flag and no lock file.
#[test]
fn hybrid_hosts_hold_favordynmods_and_still_join_v1_limits() {
    if !host_ready() {
        return;
    }
    let flag_on = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("cgroup2") && l.contains("favordynmods"))
    };
    let pids_root = std::fs::read_to_string("/proc/mounts").unwrap().lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids")).then(|| f[1].to_owned())
    });
    let Some(pids_root) = pids_root else {
        // Nothing to gain where agents are born in all their controllers: untouched.
        let before = flag_on();
        let d = Daemon::start();
        let out = d.rush(&["agent", "spawn", "v2only", "--budget", "pids:8", "--", "/bin/true"]);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(flag_on(), before, "a pure cgroup v2 host's favordynmods flag was changed");
        assert!(
            !std::path::Path::new("/run/rush-favordynmods.lock").exists(),
            "a pure cgroup v2 host got a favordynmods lock file"
        );
        return;
    };
    let d = Daemon::start();
    assert!(flag_on(), "favordynmods not set while the daemon runs");
    let doctor = d.doctor();
    let cgroups =
        doctor["probes"].as_array().unwrap().iter().find(|p| p["name"] == "cgroups").cloned().unwrap();
    assert!(cgroups["detail"].as_str().unwrap().contains("favordynmods on"), "{cgroups}");

    // The agent is still placed in every v1 hierarchy (the daemon checks that before it
    // may exec): its process is in its v1 pids cgroup, under its limit.
    let out = d.rush(&["agent", "spawn", "fav", "--budget", "pids:8", "--detach", "--", "/bin/sleep", "30"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v1 = std::path::Path::new(&pids_root).join(&d.cgroup_parent).join("fav");
    let mut procs = String::new();
    wait_until(Duration::from_secs(5), || {
        procs = std::fs::read_to_string(v1.join("cgroup.procs")).unwrap_or_default();
        !procs.trim().is_empty()
    });
    assert!(!procs.trim().is_empty(), "no process in {}", v1.display());
    assert_eq!(std::fs::read_to_string(v1.join("pids.max")).unwrap().trim(), "8");
    let out = d.rush(&["agent", "kill", "fav"]);
    assert!(out.status.success(), "{}", describe(&out));

    // Without the flag configured, a daemon does not set it (another suite's daemon may
    // hold it, so this is checked only when none does).
    drop(d);
    if !flag_on() {
        let d = Daemon::start_with_config("[cgroup]\nfavordynmods = false\n");
        assert!(!flag_on(), "favordynmods set though configured off");
        drop(d);
    }
}

//! Resource budgets and trust levels, through the real daemon and CLI: on this project's
//! hybrid hosts (v1 controllers) and in the guests (pure cgroup v2). Every test ends in
//! what the kernel did: a frozen process whose CPU time stops, an OOM kill, a refused
//! fork, a refused exec, and the audit records that say so.

use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn ready() -> bool {
    require(is_root(), "root (these tests create cgroups and load BPF programs)")
}

fn tool() -> String {
    bin("rush-test-budget").to_str().unwrap().to_owned()
}

fn status(d: &Daemon, name: &str) -> Value {
    d.rush_json(&["agent", "status", name])
}

/// The `usage` line of `resource` in the agent's status.
fn usage(d: &Daemon, name: &str, resource: &str) -> Value {
    let s = status(d, name);
    s["usage"]
        .as_array()
        .and_then(|u| u.iter().find(|l| l["resource"] == resource).cloned())
        .unwrap_or_else(|| panic!("no {resource} line in the status of {name}: {s}"))
}

/// The agent's audit records of `kind`, waiting up to 5 s for the first.
fn records(d: &Daemon, agent: &str, kind: &str) -> Vec<Value> {
    let get = || -> Vec<Value> {
        d.audit().into_iter().filter(|r| r["agent"] == agent && r["event"]["kind"] == kind).collect()
    };
    wait_until(Duration::from_secs(5), || !get().is_empty());
    get()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_busy_loop_is_frozen_at_its_cpu_budget_and_resumes_after_a_raise() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let t = tool();
    let out = d.rush(&[
        "agent",
        "spawn",
        "spin",
        "--budget",
        "cpu:2s,mem:256M,pids:64",
        "--detach",
        "--",
        &t,
        "spin",
    ]);
    assert!(out.status.success(), "{}", describe(&out));

    let paused = || status(&d, "spin")["paused"] == "budget:cpu";
    assert!(wait_until(Duration::from_secs(60), paused), "not frozen at 2 s of CPU: {}", status(&d, "spin"));
    let used = || usage(&d, "spin", "cpu")["used"].as_u64().unwrap();
    let at_freeze = used();
    assert!(at_freeze >= 2000, "frozen before its budget was used: {at_freeze} ms");
    std::thread::sleep(Duration::from_secs(1));
    let later = used();
    assert!(later - at_freeze < 50, "a frozen agent still used CPU: {at_freeze} ms, then {later} ms");
    let s = status(&d, "spin");
    assert_eq!(s["state"], "running", "frozen, not killed: {s}");
    assert_eq!(s["processes"], 1);
    let line = usage(&d, "spin", "cpu");
    assert_eq!(line["limit"], 2000);
    assert_eq!(line["exceeded"], true);
    for r in ["mem", "pids"] {
        assert!(usage(&d, "spin", r)["limit"].as_u64().is_some(), "{r}: {s}");
    }
    let exceeded = records(&d, "spin", "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0]["event"]["resource"], "cpu");
    assert_eq!(exceeded[0]["event"]["limit"], 2000);

    // Not without a raise: it stays frozen, and says how to go on.
    let out = d.rush(&["agent", "resume", "spin"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains("stays frozen"), "{}", describe(&out));
    assert!(paused());

    let out = d.rush(&["agent", "resume", "spin", "--budget", "cpu:4s"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(status(&d, "spin")["paused"], Value::Null);
    assert!(
        wait_until(Duration::from_secs(30), || used() > later + 300),
        "a resumed agent runs again: {}",
        status(&d, "spin")
    );
    assert!(wait_until(Duration::from_secs(60), paused), "frozen again at the raised 4 s");
    assert!(used() >= 4000);
    assert_eq!(records(&d, "spin", "resumed").len(), 1);
    assert!(d.rush(&["agent", "kill", "spin"]).status.success());
}

#[test]
fn a_memory_hog_is_oom_killed_inside_its_limit_and_the_host_is_untouched() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let t = tool();
    let out = d.rush(&["agent", "spawn", "hog", "--budget", "mem:48M", "--", &t, "hog", "1024"]);
    assert_eq!(out.status.code(), Some(128 + 9), "SIGKILLed by the OOM killer: {}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("done"), "{stdout}");
    let got: u64 =
        stdout.lines().filter_map(|l| l.strip_prefix("allocated ")?.parse().ok()).max().unwrap_or(0);
    assert!((8..48).contains(&got), "allocated {got} MiB under a 48 MiB limit");
    let oom = records(&d, "hog", "oom_kill");
    assert_eq!(oom.len(), 1, "{oom:?}");
    assert!(oom[0]["event"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(oom[0]["event"]["limit_bytes"], 48u64 << 20);

    // The same program outside any agent gets its memory, and the daemon lives on.
    let plain = std::process::Command::new(&t).args(["hog", "96"]).output().unwrap();
    assert!(text(&plain.stdout).contains("done"), "{}", describe(&plain));
    assert!(d.rush(&["agent", "list"]).status.success());
}

#[test]
fn a_fork_bomb_stops_at_its_pids_limit() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let t = tool();
    let out = d.rush(&["agent", "spawn", "bomb", "--budget", "pids:16", "--", &t, "forks", "200"]);
    assert_eq!(out.status.code(), Some(10), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("errno EAGAIN"), "fork refused with EAGAIN: {stdout}");
    let forked: u64 = stdout.lines().find_map(|l| l.strip_prefix("forked ")?.parse().ok()).unwrap();
    assert!((1..16).contains(&forked), "{forked} children under pids:16 (the agent itself is one)");
    let refused = records(&d, "bomb", "fork_refused");
    assert!(!refused.is_empty());
    assert_eq!(refused[0]["event"]["limit"], 16);

    // Outside any agent, 200 children start.
    let plain = std::process::Command::new(&t).args(["forks", "200"]).output().unwrap();
    assert!(plain.status.success(), "{}", describe(&plain));
}

#[test]
fn bad_budgets_and_unknown_trust_levels_are_refused_by_name() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    for (budget, needle) in [
        ("cpu:1h,mem:lots", "\"mem:lots\": \"lots\" is not a size"),
        ("disk:1G", "unknown resource \"disk\""),
        ("cost:$0.0000001", "more than 6 decimal places"),
    ] {
        let out = d.rush(&["agent", "spawn", "x", "--budget", budget, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "usage error: {}", describe(&out));
        assert!(text(&out.stderr).contains(needle), "{budget}: {}", describe(&out));
    }
    let out = d.rush(&["agent", "spawn", "x", "--trust", "root", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains("unknown trust level \"root\""), "{}", describe(&out));
    assert!(text(&out.stderr).contains("high, low, medium"), "{}", describe(&out));
    assert_eq!(d.rush_json(&["agent", "list"]).as_array().map(Vec::len), Some(0), "nothing was started");
}

#[test]
fn a_low_trust_agent_runs_system_programs_but_not_files_it_may_write() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let allow = format!("{}:read,write,create,exec", work.path().display());
    let cmd = format!("/bin/true && echo system-ok; {}; echo rc=$?", script.display());
    let out =
        d.rush(&["agent", "spawn", "low", "--trust", "low", "--allow", &allow, "--", "/bin/sh", "-c", &cmd]);
    if !d.lsm_attached() {
        // The exec rule is enforced by file confinement, which needs BPF LSM (Landlock
        // checks execve only): refused.
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = text(&out.stderr);
        assert!(err.contains("exec rule") && err.contains("refusing trust level"), "{}", describe(&out));
        return;
    }
    let stdout = text(&out.stdout);
    assert!(stdout.contains("system-ok"), "the baseline still runs programs: {}", describe(&out));
    assert!(!stdout.contains("ran"), "the agent ran a file it may write: {}", describe(&out));
    assert!(stdout.contains("rc=126"), "exec refused (Permission denied): {}", describe(&out));
}

/// `rush-test-api serve` on a free loopback port: (the process, its port).
fn fake_api(style: &str) -> (std::process::Child, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let child = std::process::Command::new(bin("rush-test-api"))
        .args(["serve", "--listen", "127.0.0.1:0", "--style", style])
        .args(["--input-tokens", "1000", "--output-tokens", "500", "--model", "test-model"])
        .arg("--port-file")
        .arg(&port_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("rush-test-api serve");
    assert!(wait_until(Duration::from_secs(10), || port_file.exists()), "fake API did not start");
    let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
    (child, port)
}

#[test]
fn a_cost_budget_stops_api_calls_once_the_reported_usage_crosses_it() {
    if !ready() {
        return;
    }
    let (mut api, port) = fake_api("openai");
    // 1000 input and 500 output tokens at $3 / $15 per million: $0.0105 per call.
    let d = Daemon::start_with_config(&format!(
        "[meter]\nupstream = \"http://127.0.0.1:{port}\"\n[meter.prices]\ndefault = {{ input = 3, output = 15 }}\n"
    ));
    let api_tool = bin("rush-test-api");
    let script = format!(
        "{t} call \"$RUSH_METER_URL/v1/chat/completions\" --count 3; echo rc=$?; \
         {t} call http://127.0.0.1:{port}/v1/chat/completions --count 1; echo direct=$?",
        t = api_tool.display()
    );
    let out = d.rush(&["agent", "spawn", "coster", "--budget", "cost:$0.01", "--", "/bin/sh", "-c", &script]);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["ok 200", "http 402", "http 402"], "{}", describe(&out));
    assert!(stdout.contains("rc=3"), "{stdout}");
    // Around the meter, straight to the API: the agent's network policy (deny) refuses it.
    assert!(stdout.contains("refused EPERM") && stdout.contains("direct=4"), "{stdout}");

    let exceeded = records(&d, "coster", "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0]["event"]["resource"], "cost");
    assert_eq!(exceeded[0]["event"]["used"], 10_500);
    assert_eq!(exceeded[0]["event"]["limit"], 10_000);
    let refused: Vec<Value> = records(&d, "coster", "api_refused")
        .into_iter()
        .filter(|r| r["event"]["resource"] == "cost")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let _ = api.kill();
    let _ = api.wait();
}

#[test]
fn a_cost_budget_without_a_configured_meter_is_refused() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let out = d.rush(&["agent", "spawn", "c0", "--budget", "cost:$1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains("meter.upstream is not set"), "{}", describe(&out));
}

#[test]
fn an_agent_frozen_at_its_budget_stays_frozen_across_a_daemon_crash() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start();
    let t = tool();
    let out = d.rush(&["agent", "spawn", "held", "--budget", "cpu:1s,pids:32", "--detach", "--", &t, "spin"]);
    assert!(out.status.success(), "{}", describe(&out));
    let paused = |d: &Daemon| status(d, "held")["paused"] == "budget:cpu";
    assert!(wait_until(Duration::from_secs(60), || paused(&d)), "not frozen at 1 s of CPU");
    let used = |d: &Daemon| usage(d, "held", "cpu")["used"].as_u64().unwrap();
    let before = used(&d);

    d.kill9();
    std::thread::sleep(Duration::from_secs(1));
    d.restart();
    let s = status(&d, "held");
    assert_eq!(s["paused"], "budget:cpu", "re-adopted frozen: {s}");
    assert_eq!(s["budget"]["cpu_ms"], 1000, "its budget came back from the store: {s}");
    std::thread::sleep(Duration::from_secs(1));
    let after = used(&d);
    assert!(after - before < 50, "it ran while the daemon was down or after: {before} ms, then {after} ms");

    let out = d.rush(&["agent", "resume", "held", "--budget", "cpu:3s"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(30), || used(&d) > after + 300), "it runs again after resume");
    assert!(d.rush(&["agent", "kill", "held"]).status.success());
}

/// A TCP server outside any agent that sends `bytes` to everyone who connects.
fn bulk_server(bytes: usize) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let chunk = vec![0x42u8; 64 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if std::io::Write::write_all(&mut c, &chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

#[test]
fn a_download_stops_at_its_net_budget_and_goes_on_after_a_raise() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let port = bulk_server(8 << 20);
    let addr = format!("127.0.0.1:{port}");
    let net_tool = bin("rush-test-net");
    let net_tool = net_tool.to_str().unwrap();
    let dl = |d: &Daemon, name: &str| {
        d.rush(&[
            "agent", "spawn", name, "--net", &addr, "--budget", "net:1M", "--", net_tool, "download", &addr,
            "8388608",
        ])
    };
    let out = dl(&d, "dl");
    assert_eq!(out.status.code(), Some(10), "the download must stall: {}", describe(&out));
    let got: u64 = text(&out.stdout).lines().find_map(|l| l.strip_prefix("bytes ")?.parse().ok()).unwrap();
    assert!(got < (1 << 20) + (128 << 10) && got > 256 << 10, "{got} bytes through a 1 MiB budget");
    let exceeded = records(&d, "dl", "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0]["event"]["resource"], "net");
    assert_eq!(exceeded[0]["event"]["limit"], 1u64 << 20);

    // A detached agent: stalled at its budget, then raised, and the rest arrives.
    let script = format!(
        "{net_tool} download {addr} 1048576; echo first=$?; sleep 3; {net_tool} download {addr} 4194304; echo second=$?"
    );
    let out = d.rush(&[
        "agent", "spawn", "dl2", "--net", &addr, "--budget", "net:512K", "--detach", "--", "/bin/sh", "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let logs = || text(&d.rush(&["agent", "logs", "dl2"]).stdout);
    assert!(wait_until(Duration::from_secs(20), || logs().contains("first=10")), "{}", logs());
    let net = usage(&d, "dl2", "net");
    assert_eq!(net["exceeded"], true, "{net}");
    let out = d.rush(&["agent", "resume", "dl2", "--budget", "net:64M"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(30), || logs().contains("second=")), "{}", logs());
    assert!(logs().contains("bytes 4194304") && logs().contains("second=0"), "{}", logs());
}

#[test]
fn the_call_after_an_api_budget_is_refused_by_the_kernel() {
    if !ready() {
        return;
    }
    let (mut api, port) = fake_api("anthropic");
    let d = Daemon::start_with_config(&format!("[budget]\napi_endpoints = [\"127.0.0.1:{port}\"]\n"));
    let url = format!("http://127.0.0.1:{port}/v1/messages");
    let api_tool = bin("rush-test-api");
    let net = format!("127.0.0.1:{port}");
    let out = d.rush(&[
        "agent",
        "spawn",
        "caller",
        "--net",
        &net,
        "--budget",
        "api:10",
        "--detach",
        "--",
        "/bin/sh",
        "-c",
        &format!("{} call {url} --count 11; echo rc=$?; sleep 30", api_tool.display()),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let logs = || text(&d.rush(&["agent", "logs", "caller"]).stdout);
    assert!(wait_until(Duration::from_secs(20), || logs().contains("rc=")), "{}", logs());
    let lines: Vec<String> = logs().lines().map(str::to_owned).collect();
    assert!(lines[..10].iter().all(|l| l == "ok 200"), "{lines:?}");
    assert_eq!(lines[10], "refused EPERM", "{lines:?}");
    assert!(logs().contains("rc=4"), "{lines:?}");
    let line = usage(&d, "caller", "api");
    assert_eq!((line["used"].as_u64(), line["limit"].as_u64()), (Some(10), Some(10)), "{line}");
    let refused = records(&d, "caller", "api_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["event"]["resource"], "api");
    assert_eq!(refused[0]["event"]["destination"], net.as_str());
    assert!(d.rush(&["agent", "kill", "caller"]).status.success());
    let _ = api.kill();
    let _ = api.wait();

    // Without configured endpoints an api budget would count nothing: refused.
    let plain = Daemon::start();
    let out = plain.rush(&["agent", "spawn", "c2", "--budget", "api:10", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains("no API endpoints are configured"), "{}", describe(&out));
}

#[test]
fn a_cost_budget_is_refused_when_the_agent_could_reach_the_api_around_its_meter() {
    if !ready() {
        return;
    }
    let (mut api, port) = fake_api("openai");
    let d = Daemon::start_with_config(&format!(
        "[meter]\nupstream = \"http://127.0.0.1:{port}\"\n[meter.prices]\ndefault = {{ input = 3, output = 15 }}\n"
    ));
    for net in ["allow", "127.0.0.0/8:*", &format!("127.0.0.1:{port}")] {
        let out = d.rush(&["agent", "spawn", "around", "--net", net, "--budget", "cost:$1", "--", "true"]);
        assert_eq!(out.status.code(), Some(1), "--net {net}: {}", describe(&out));
        assert!(text(&out.stderr).contains("around its meter"), "--net {net}: {}", describe(&out));
    }
    let out =
        d.rush(&["agent", "spawn", "other", "--net", "127.0.0.1:1", "--budget", "cost:$1", "--", "true"]);
    assert!(out.status.success(), "another port is fine: {}", describe(&out));
    let _ = api.kill();
    let _ = api.wait();
}

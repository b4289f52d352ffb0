//! Agents as callers (host tier, and in the guests): `rush` run inside an agent reaches the
//! daemon through `RUSH_SOCKET` and acts as that agent, identified by its cgroup; it can ask
//! about itself and nothing else, name no other agent, and cannot borrow anyone's identity
//! by being handed a connection that someone else opened.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn ready() -> bool {
    require(is_root(), "root (these tests start the daemon and agents)")
}

fn rush_bin() -> String {
    bin("rush").to_str().unwrap().to_owned()
}

/// One request line of this protocol version.
fn line(request: &str) -> String {
    format!(r#"{{"version":{},"id":1,"request":{request}}}"#, rush_proto::PROTOCOL_VERSION)
}

/// A foreground agent running `sh -c script` (with `allow` grants): its stdout and stderr.
fn agent_sh(d: &Daemon, name: &str, allow: &[&str], script: &str) -> (String, String) {
    let mut args = vec!["agent", "spawn", name];
    for a in allow {
        args.extend(["--allow", a]);
    }
    args.extend(["--", "sh", "-c", script]);
    let out = d.rush(&args);
    assert!(out.status.success(), "agent {name}: {}", describe(&out));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What `rush` inside an agent is for: its own status, tokens, who it is, the doctor, with
/// no `--socket` (RUSH_SOCKET comes with the agent's environment).
fn self_verbs(d: &Daemon, name: &str, allow: &[&str]) {
    let rush = rush_bin();
    let script = format!(
        "echo socket=$RUSH_SOCKET; {rush} whoami && {rush} --json agent status && {rush} capability list \
         && {rush} doctor > /dev/null && echo all-ok"
    );
    let (out, err) = agent_sh(d, name, allow, &script);
    assert!(out.contains(&format!("socket={}", d.socket.display())), "{out}\n{err}");
    assert!(out.contains(&format!("agent {name} (uid 0")), "whoami: {out}\n{err}");
    assert!(out.contains(&format!("\"name\": \"{name}\"")), "its own status: {out}\n{err}");
    assert!(out.contains("ID  AGENT"), "its token table: {out}\n{err}");
    assert!(out.ends_with("all-ok\n"), "{out}\n{err}");
}

#[test]
fn rush_inside_an_agent_works_for_its_own_verbs() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    self_verbs(&d, "me", &[]);
    // The operator may not leave the name out: only an agent has a self.
    let out = d.rush(&["agent", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the agent's name"), "{}", describe(&out));
}

/// File-confined agents reach the socket too: neither backend checks connect(2) of a path
/// socket, so no baseline grant is needed (the agent needs only to run `rush`).
#[test]
fn a_file_confined_agent_reaches_the_daemon_under_landlock_and_bpf_lsm() {
    if !ready() {
        return;
    }
    let bins = format!("{}:read,exec", bin_dir().display());
    let landlock = Daemon::start_with_config("[files]\nenforcement = \"landlock\"\n");
    let has_landlock = landlock.doctor()["probes"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "landlock" && p["ok"] == true));
    if has_landlock {
        self_verbs(&landlock, "ll", &[&bins]);
        let st = landlock.rush_json(&["agent", "status", "ll"]);
        assert!(st["enforcement"].as_array().unwrap().iter().any(|e| e == "files:landlock"), "{st}");
    } else {
        eprintln!("note: no Landlock here; tests/landlock.rs says so loudly");
    }
    drop(landlock);
    let lsm = Daemon::start_with_config("[files]\nenforcement = \"bpf-lsm\"\n");
    if lsm.lsm_attached() {
        self_verbs(&lsm, "lsm", &[&bins]);
        let st = lsm.rush_json(&["agent", "status", "lsm"]);
        assert!(st["enforcement"].as_array().unwrap().iter().any(|e| e == "files:bpf-lsm"), "{st}");
    } else {
        eprintln!("note: BPF LSM does not attach here; the guests run this with it");
    }
}

#[test]
fn an_agent_cannot_act_on_another_agent_nor_send_operator_requests() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let out = d.rush(&["--json", "agent", "spawn", "victim", "--detach", "--", "sleep", "600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let rush = rush_bin();
    let attempts = [
        ("kill", "agent kill victim"),
        ("status", "agent status victim"),
        ("commit", "capability commit victim"),
        ("tokens", "capability list victim"),
        ("pause", "agent pause victim"),
        ("logs", "agent logs victim"),
        ("list", "agent list"),
        ("spawn", "agent spawn inner -- true"),
        ("grant", "capability grant thief --path / --ops read"),
        ("sessions", "session list"),
        ("audit", "audit"),
    ];
    let script: String =
        attempts.iter().map(|(tag, cmd)| format!("{rush} {cmd} 2>&1; echo {tag}=$?; ")).collect();
    let (out, _) = agent_sh(&d, "thief", &[], &script);
    for (tag, _) in attempts {
        assert!(
            out.contains(&format!("\n{tag}=1\n")) || out.starts_with(&format!("{tag}=1\n")),
            "{tag}: {out}"
        );
    }
    for refusal in [
        "agent \"thief\" may not kill_agent: only root or the operator group may",
        "agent \"thief\" may not agent_status agent \"victim\": an agent acts only on itself",
        "agent \"thief\" may not commit agent \"victim\": an agent acts only on itself",
        "agent \"thief\" may not list_capabilities agent \"victim\": an agent acts only on itself",
        "agent \"thief\" may not list_agents",
        "agent \"thief\" may not spawn",
        "agent \"thief\" may not grant",
        "agent \"thief\" may not audit",
    ] {
        assert!(out.contains(refusal), "{refusal:?} missing: {out}");
    }
    assert_eq!(d.rush_json(&["agent", "status", "victim"])["state"], "running");
    assert!(d.rush_json(&["agent", "status", "victim"])["paused"].is_null());
    // The refused mutations are in the audit trail, under the agent that tried.
    let refused: Vec<String> = d
        .audit()
        .into_iter()
        .filter(|r| r["event"]["kind"] == "refused" && r["agent"] == "thief")
        .map(|r| r["event"]["request"].as_str().unwrap().to_owned())
        .collect();
    for request in ["kill_agent", "commit", "pause_agent", "spawn", "grant"] {
        assert!(refused.iter().any(|r| r == request), "{request} not audited: {refused:?}");
    }
}

/// The operator's own connection, handed to an agent (as its stdin: what a foreground
/// spawn passes with SCM_RIGHTS), sends nothing as the operator.
#[test]
fn a_connection_handed_from_the_operator_to_an_agent_acts_for_no_one() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let out = d.rush(&["agent", "spawn", "victim", "--detach", "--", "sleep", "600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let conn = UnixStream::connect(&d.socket).unwrap();
    let hello = line(r#"{"type":"hello"}"#);
    // The operator's connection is the operator's.
    assert!(exchange(&conn, &hello).contains(r#""kind":"operator""#));

    let tool = bin("rush-test-escape").to_str().unwrap().to_owned();
    let kill = line(r#"{"type":"kill_agent","name":"victim"}"#);
    let status = line(r#"{"type":"agent_status"}"#);
    let out = d
        .rush_cmd(&[
            "agent", "spawn", "thief", "--", &tool, "ndjson", "0", &kill, ";;", "ndjson", "0", &hello,
        ])
        .arg(";;")
        .args(["ndjson", "0", &status])
        .stdin(Stdio::from(OwnedFd::from(conn.try_clone().unwrap())))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies: Vec<&str> = text.lines().collect();
    assert_eq!(replies.len(), 3, "{}", describe(&out));
    for reply in &replies {
        assert!(
            reply.contains("permission_denied")
                && reply.contains("opened by the operator")
                && reply.contains("sent by agent \\\"thief\\\"")
                && reply.contains("cannot be handed on"),
            "{reply}"
        );
    }
    assert_eq!(d.rush_json(&["agent", "status", "victim"])["state"], "running", "the kill went through");
    // Still the operator's, in the operator's hands.
    assert!(exchange(&conn, &hello).contains(r#""kind":"operator""#));
    let refused = d.audit().into_iter().any(|r| {
        r["agent"] == "thief"
            && r["event"]["kind"] == "refused"
            && r["event"]["request"] == "kill_agent"
            && r["event"]["reason"].as_str().unwrap().contains("cannot be handed on")
    });
    assert!(refused, "{:?}", d.audit());
}

/// Agent `a` opens a connection and hands it to agent `b`: `b` cannot ask as `a` (its
/// status, its commit), while `b`'s own connection is `b`'s.
#[test]
fn a_connection_handed_from_one_agent_to_another_acts_for_no_one() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let rendezvous = dir.path().join("handover.sock");
    let rdv = rendezvous.to_str().unwrap();
    let sock = d.socket.to_str().unwrap();
    let tool = bin("rush-test-escape").to_str().unwrap().to_owned();
    let hello = line(r#"{"type":"hello"}"#);
    let out = d.rush(&[
        "agent", "spawn", "a", "--detach", "--", &tool, "connect", sock, ";;", "ndjson", "@", &hello, ";;",
        "serve-fd", rdv, "@",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(10), || Path::new(rdv).exists()), "a never listened");

    let status = line(r#"{"type":"agent_status"}"#);
    let commit = line(r#"{"type":"commit"}"#);
    let out = d.rush(&[
        "agent", "spawn", "b", "--", &tool, "recv-fd", rdv, ";;", "ndjson", "@", &status, ";;", "ndjson",
        "@", &commit, ";;", "ndjson", "@", &hello, ";;", "connect", sock, ";;", "ndjson", "@", &hello,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{}", describe(&out));
    assert!(lines[0].starts_with("ok fd "), "{text}");
    for reply in &lines[1..4] {
        assert!(
            reply.contains("permission_denied")
                && reply.contains("opened by agent \\\"a\\\"")
                && reply.contains("sent by agent \\\"b\\\""),
            "{reply}"
        );
    }
    // b's own connection: b.
    assert!(lines[5].contains(r#""role":{"kind":"agent","name":"b"}"#), "{text}");
    // a's connection worked for a before it handed it on.
    let logs = String::from_utf8_lossy(&d.rush(&["agent", "logs", "a"]).stdout).into_owned();
    assert!(logs.contains(r#""role":{"kind":"agent","name":"a"}"#) && logs.contains("ok sent fd"), "{logs}");
}

/// One request line out on `conn`, one reply line back.
fn exchange(conn: &UnixStream, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut w = conn.try_clone().unwrap();
    w.write_all(format!("{request}\n").as_bytes()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    // One byte at a time: nothing past the line may be taken from the socket.
    let mut r = BufReader::with_capacity(1, conn.try_clone().unwrap());
    r.read_line(&mut reply).unwrap();
    let _: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    reply
}

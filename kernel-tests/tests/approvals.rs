//! The human attention queue on the real daemon (host tier): agents asking as themselves
//! without blocking, operators deciding (never agents), batches, deadlines, `--freeze`,
//! a daemon killed with requests pending, and the channels against real servers: a webhook
//! receiver and signed callbacks to the daemon's listener (forged, stale, replayed,
//! already decided, unknown: each refused and audited), an SMTP server with STARTTLS and
//! AUTH whose digest links decide with one-time tokens.
//! The kernel side (an approved capability reaching the BPF LSM grant map) is in
//! `files.rs`, run in the guests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kernel_tests::channels::{SmtpSink, WebhookReceiver, smtp_python, test_ca};
use kernel_tests::*;
use rush_proto::approval::{ApprovalState, ApprovalTarget, DecideRequest};
use rush_proto::client::Client;
use serde_json::Value;

fn ready() -> bool {
    require(is_root(), "root (these tests start the daemon and agents)")
}

fn approvals(d: &Daemon, all: bool) -> Vec<Value> {
    let args: &[&str] = if all { &["approvals", "--all"] } else { &["approvals"] };
    let v = d.rush_json(args);
    v.get("approvals").and_then(Value::as_array).or_else(|| v.as_array()).cloned().unwrap_or_default()
}

fn approval(d: &Daemon, id: u64) -> Value {
    d.rush_json(&["approval", "show", &id.to_string()])
}

fn audit_of(d: &Daemon, kind: &str) -> Vec<Value> {
    d.audit().into_iter().filter(|r| r["event"]["kind"] == kind).collect()
}

/// A workspace the agents get tokens in, with a directory they cannot write yet.
fn workspace() -> tempfile::TempDir {
    let w = tempfile::tempdir().unwrap();
    std::fs::create_dir(w.path().join("migrations")).unwrap();
    std::fs::create_dir(w.path().join("out")).unwrap();
    w
}

/// A detached agent running `script` under sh, with read on the binaries, read+write on
/// `w/out` and read on `w/migrations`.
fn spawn_asker(d: &Daemon, name: &str, w: &Path, script: &str, extra: &[&str]) {
    let bins = format!("{}:read,exec", bin_dir().display());
    let out_dir = format!("{}/out:read,write,create,delete", w.display());
    let mig = format!("{}/migrations:read", w.display());
    let mut args =
        vec!["agent", "spawn", name, "--detach", "--allow", &bins, "--allow", &out_dir, "--allow", &mig];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    let out = d.rush(&args);
    assert!(out.status.success(), "{}", describe(&out));
}

/// The script of an agent that writes `migrations/FILE` once it may, asking once (without
/// waiting) when it may not; `out/NAME.asked` holds the request's id. Idempotent: under
/// Landlock a grant restarts the agent, which runs it again.
fn asker_script(w: &Path, name: &str, file: &str, extra: &str) -> String {
    let rush = bin("rush").display().to_string();
    let w = w.display();
    format!(
        "if echo {name} > {w}/migrations/{file} 2>/dev/null; then echo done > {w}/out/{name}.done; exec sleep 600; fi; \
         [ -e {w}/out/{name}.asked ] || {rush} --json approval request --kind capability \
           --path {w}/migrations --ops write,create --action 'write migrations/' {extra} \
           > {w}/out/{name}.json 2> {w}/out/{name}.err && mv {w}/out/{name}.json {w}/out/{name}.asked; \
         echo going-on > {w}/out/{name}.progress; sleep 600"
    )
}

fn asked_id(d: &Daemon, w: &Path, name: &str) -> u64 {
    let p = w.join(format!("out/{name}.asked"));
    let err = w.join(format!("out/{name}.err"));
    assert!(
        wait_until(Duration::from_secs(10), || p.exists()),
        "{name} never asked: {}\n{}\n{}",
        std::fs::read_to_string(err).unwrap_or_default(),
        describe(&d.rush(&["agent", "logs", name])),
        describe(&d.rush(&["agent", "status", name]))
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["id"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn an_agent_asks_without_blocking_and_an_approval_grants_it_write_with_the_approvers_ttl() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let w = workspace();
    spawn_asker(&d, "coder", w.path(), &asker_script(w.path(), "coder", "001.sql", ""), &[]);
    let id = asked_id(&d, w.path(), "coder");
    // Non-blocking: the agent went on at once.
    assert!(wait_until(Duration::from_secs(5), || w.path().join("out/coder.progress").exists()));
    assert!(!w.path().join("migrations/001.sql").exists());
    let a = approval(&d, id);
    assert_eq!(a["state"], "pending", "{a}");
    assert_eq!(a["agent"], "coder");
    assert_eq!(a["origin"], "agent");
    // A directory asked for: the batch is its subtree.
    assert_eq!(a["batch_key"], format!("capability:write,create:{}/migrations", w.path().display()));
    let out = d.rush(&["approve", &id.to_string(), "--ttl", "10m"]);
    assert!(out.status.success(), "{}", describe(&out));
    // The grant reached the agent: it wrote the file.
    let written = w.path().join("migrations/001.sql");
    assert!(wait_until(Duration::from_secs(15), || written.exists()), "{}", d.log_text());
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "coder\n");
    let tokens = d.rush_json(&["capability", "list", "coder"]);
    let token = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["origin"] != "spawn"
                && t["path"].as_str() == Some(&format!("{}/migrations", w.path().display()))
        })
        .unwrap_or_else(|| panic!("no token on the file: {tokens}"))
        .clone();
    let life = token["expires_unix_ms"].as_u64().unwrap_or_else(|| panic!("{token}"))
        - token["granted_unix_ms"].as_u64().unwrap();
    assert!((590_000..=600_000).contains(&life), "{token}");
    let a = approval(&d, id);
    assert_eq!(a["state"], "approved");
    assert_eq!(a["decision"]["via"], "cli");
    assert_eq!(a["decision"]["ttl_secs"], 600);
    assert!(a["decision"]["effect"].as_str().unwrap().contains("granted"), "{a}");
    // Approving it again: refused, nothing changes.
    let again = d.rush(&["approve", &id.to_string()]);
    assert_ne!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already approved"), "{}", describe(&again));
    let decided = audit_of(&d, "approval_decided");
    assert_eq!(
        decided.iter().filter(|r| r["event"]["id"] == id && r["event"]["effect"].is_null()).count(),
        1
    );
}

#[test]
fn no_agent_approves_its_own_request_or_any_other() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let w = workspace();
    spawn_asker(&d, "asker", w.path(), &asker_script(w.path(), "asker", "a.sql", ""), &[]);
    let id = asked_id(&d, w.path(), "asker");
    let rush = bin("rush").display().to_string();
    let wd = w.path().display();
    // The asker approves its own request; two other agents approve and reject it.
    let own = format!(
        "set -- $({rush} approval request --kind custom --action 'mine'); \
         {rush} approve $2 > {wd}/out/self.txt 2>&1; echo $? > {wd}/out/self.rc; sleep 600"
    );
    spawn_asker(&d, "selfish", w.path(), &own, &[]);
    for (name, verb) in [("other", "approve"), ("other2", "reject")] {
        let script =
            format!("{rush} {verb} {id} > {wd}/out/{name}.txt 2>&1; echo $? > {wd}/out/{name}.rc; sleep 600");
        spawn_asker(&d, name, w.path(), &script, &[]);
    }
    for name in ["self", "other", "other2"] {
        let rc = w.path().join(format!("out/{name}.rc"));
        assert!(wait_until(Duration::from_secs(10), || rc.exists()), "{name} did not finish");
        assert_ne!(std::fs::read_to_string(&rc).unwrap().trim(), "0", "{name} decided");
        let said = std::fs::read_to_string(w.path().join(format!("out/{name}.txt"))).unwrap();
        assert!(
            said.contains("operator") || said.contains("not allowed") || said.contains("permission"),
            "{name}: {said}"
        );
    }
    // Nothing pending changed state: the asker's and the self-approver's.
    for a in approvals(&d, true) {
        assert_eq!(a["state"], "pending", "{a}");
    }
    assert_eq!(approval(&d, id)["state"], "pending");
    let refused = audit_of(&d, "refused");
    assert!(refused.iter().filter(|r| r["event"]["request"] == "decide").count() >= 3, "{refused:?}");
}

#[test]
fn three_similar_requests_are_one_batch_decided_once_with_an_exclusion_and_one_expires() {
    if !ready() {
        return;
    }
    let d = Daemon::start_with_config("[approvals]\nbatch_window = \"5m\"\n");
    let w = workspace();
    let names = ["m1", "m2", "m3", "m4"];
    for (i, n) in names.iter().enumerate() {
        let extra = if i == 3 { "--timeout 2s --on-timeout reject" } else { "" };
        // The fourth asks for another directory's file: not in the batch.
        let file = format!("{n}.sql");
        spawn_asker(&d, n, w.path(), &asker_script(w.path(), n, &file, extra), &[]);
    }
    let ids: Vec<u64> = names.iter().map(|n| asked_id(&d, w.path(), n)).collect();
    let listed = d.rush_json(&["approvals"]);
    let batches = listed["batches"].as_array().cloned().unwrap_or_default();
    assert_eq!(batches.len(), 1, "{listed}");
    let key = batches[0]["key"].as_str().unwrap().to_owned();
    let in_batch: Vec<u64> =
        batches[0]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(in_batch.len(), 4, "same key, same window: {listed}");
    // One decision for the batch, leaving m3 and m4 out.
    let out = d.rush(&[
        "approve",
        "--batch",
        &key,
        "--exclude",
        &ids[2].to_string(),
        "--exclude",
        &ids[3].to_string(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    for n in ["m1", "m2"] {
        let f = w.path().join(format!("migrations/{n}.sql"));
        assert!(wait_until(Duration::from_secs(15), || f.exists()), "{n} did not proceed");
    }
    assert_eq!(approval(&d, ids[2])["state"], "pending");
    assert!(!w.path().join("migrations/m3.sql").exists());
    // m4's deadline passes: rejected by the daemon's clock, audited as a timeout.
    assert!(wait_until(Duration::from_secs(10), || approval(&d, ids[3])["state"] == "expired"));
    let a = approval(&d, ids[3]);
    assert_eq!(a["decision"]["via"], "timeout", "{a}");
    assert!(!w.path().join("migrations/m4.sql").exists());
    let out = d.rush(&["reject", &ids[2].to_string(), "--reason", "not now"]);
    assert!(out.status.success(), "{}", describe(&out));
    let a = approval(&d, ids[2]);
    assert_eq!((a["state"].as_str(), a["decision"]["reason"].as_str()), (Some("rejected"), Some("not now")));
    // The agents heard: m3's inbox has its answer, once.
    let inbox = d.rush_json(&["agent", "inbox", "--agent", "m3"]);
    assert!(inbox.to_string().contains("rejected"), "{inbox}");
}

#[test]
fn a_request_with_freeze_stops_the_agent_until_it_is_decided() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let w = workspace();
    let rush = bin("rush").display().to_string();
    let wd = w.path().display();
    // Counts while it runs; asks with --freeze (and --wait, which returns once thawed).
    let script = format!(
        "(while :; do date +%s%N >> {wd}/out/ticks; sleep 0.05; done) & \
         {rush} --json approval request --kind custom --action 'may I deploy?' --freeze > {wd}/out/f.json; \
         mv {wd}/out/f.json {wd}/out/f.asked; wait"
    );
    spawn_asker(&d, "frozen", w.path(), &script, &[]);
    // The agent (its rush too) is frozen before the answer reaches it: the id from the queue.
    assert!(wait_until(Duration::from_secs(10), || !approvals(&d, false).is_empty()));
    let id = approvals(&d, false)[0]["id"].as_u64().unwrap();
    assert_eq!(approvals(&d, false)[0]["freeze"], true);
    let status = d.rush_json(&["agent", "status", "frozen"]);
    assert!(status.to_string().contains("approval"), "paused for approval: {status}");
    let ticks = || std::fs::read_to_string(w.path().join("out/ticks")).unwrap_or_default().lines().count();
    let before = ticks();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ticks(), before, "the agent ran while frozen");
    let out = d.rush(&["reject", &id.to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(5), || ticks() > before + 3), "not thawed");
    assert!(!d.rush_json(&["agent", "status", "frozen"]).to_string().contains("\"approval\""));
}

#[test]
fn a_daemon_killed_with_a_hundred_requests_pending_loses_none_and_decides_none_twice() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start();
    let agents = d.sleepers("p", 4);
    let mut c = Client::connect(&d.socket).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let req = rush_proto::approval::ApprovalRequest {
            agent: Some(agents[i % 4].clone()),
            action: format!("step {i}"),
            detail: rush_proto::approval::ApprovalDetail::Custom { text: format!("item {i}") },
            priority: None,
            // Ten of them time out while the daemon is down.
            timeout_secs: Some(if i < 10 { 1 } else { 3600 }),
            on_timeout: None,
            class: None,
            freeze: false,
        };
        ids.push(c.request_approval(req).unwrap().id);
    }
    // Decisions race the kill: whatever was acknowledged must hold.
    let (socket, later) = (d.socket.clone(), ids[10..].to_vec());
    let decider = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let Ok(mut c) = Client::connect(&socket) else { return acked };
        for id in later.into_iter().step_by(3) {
            let req = DecideRequest {
                target: ApprovalTarget::Id(id),
                approve: true,
                exclude: vec![],
                ttl_secs: None,
                reason: None,
                remember: None,
                remember_scope: None,
            };
            match c.decide(req) {
                Ok(done) => acked.extend(done.into_iter().map(|a| a.id)),
                Err(_) => break,
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(30));
    d.kill9();
    let acked = decider.join().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    d.restart();
    let all = approvals(&d, true);
    let ours: Vec<&Value> = all.iter().filter(|a| ids.contains(&a["id"].as_u64().unwrap())).collect();
    assert_eq!(ours.len(), 100, "none lost");
    for id in &acked {
        let a = ours.iter().find(|a| a["id"] == *id).unwrap();
        assert_eq!(a["state"], "approved", "acknowledged then lost: {a}");
    }
    for a in ours.iter().filter(|a| a["id"].as_u64().unwrap() <= ids[9]) {
        assert_eq!(a["state"], "expired", "{a}");
        assert_eq!(a["decision"]["late"], true, "{a}");
    }
    // Decide every pending one, twice over: the second decision of each is refused, and
    // no request has two decision records (the record of one decided in the instant of the
    // kill may be missing: the trail is written after the commit).
    let pending: Vec<u64> =
        ours.iter().filter(|a| a["state"] == "pending").map(|a| a["id"].as_u64().unwrap()).collect();
    for id in &pending {
        assert!(d.rush(&["reject", &id.to_string()]).status.success());
        assert!(!d.rush(&["approve", &id.to_string()]).status.success());
        assert_eq!(approval(&d, *id)["state"], "rejected");
    }
    let decided = audit_of(&d, "approval_decided");
    for id in &ids {
        let n = decided
            .iter()
            .filter(|r| {
                r["event"]["id"] == *id && r["event"]["escalated"].is_null() && r["event"]["effect"].is_null()
            })
            .count();
        assert!(n <= 1, "request {id} decided {n} times");
    }
}

/// A POST of Slack's interactive payload for `value`, signed with `secret` at `ts`.
fn slack_callback(addr: &str, secret: &[u8], ts: u64, value: &str) -> (u16, String, Vec<u8>) {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": "U1", "name": "alice"},
        "actions": [{"action_id": "rush", "value": value}],
    });
    let body = format!("payload={}", urlencode(&payload.to_string()));
    let sig = sign(secret, ts, body.as_bytes());
    let req = raw_post(
        addr,
        "/slack/actions",
        &body,
        &[("X-Slack-Request-Timestamp", ts.to_string()), ("X-Slack-Signature", sig)],
    );
    let (status, text) = send_raw(addr, &req);
    (status, text, req)
}

fn sign(secret: &[u8], ts: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = format!("v0:{ts}:").into_bytes();
    msg.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &msg);
    format!("v0={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn raw_post(addr: &str, path: &str, body: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

fn send_raw(addr: &str, req: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    send_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
}

/// The message with quoted-printable soft line breaks and `=XX` escapes undone (the links
/// are in QP-encoded parts).
fn quoted_printable_decoded(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn webhook_posts_are_retried_and_only_signed_fresh_single_use_callbacks_decide() {
    if !ready() {
        return;
    }
    let hook = WebhookReceiver::start(2);
    let secrets = tempfile::tempdir().unwrap();
    let secret = b"s3cret-signing-key";
    let secret_file = secrets.path().join("listener.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let config = format!(
        "[approvals]\nbatch_window = \"0s\"\nroutes = {{ medium = \"webhook:ops\" }}\n\
         [approvals.webhooks.ops]\nurl = \"{}\"\nattempts = 4\n\
         [approvals.listener]\naddress = \"{addr}\"\nsecret_file = \"{}\"\n",
        hook.url(),
        secret_file.display()
    );
    let d = Daemon::start_with_config(&config);
    let w = workspace();
    spawn_asker(&d, "hooked", w.path(), &asker_script(w.path(), "hooked", "h.sql", ""), &[]);
    let id = asked_id(&d, w.path(), "hooked");
    // Two 500s, then delivered: three POSTs, each failure audited.
    assert!(hook.wait_for(3, Duration::from_secs(30)), "{:?}", hook.requests());
    let posted: Value = serde_json::from_str(hook.requests()[2]["body"].as_str().unwrap()).unwrap();
    let text = posted.to_string();
    assert!(text.contains(&format!("approve:{id}")) && text.contains(&format!("reject:{id}")), "{text}");
    assert!(posted["blocks"].is_array(), "{posted}");
    assert!(wait_until(Duration::from_secs(5), || {
        audit_of(&d, "approval_delivery").iter().any(|r| r["event"]["ok"] == true)
    }));
    let failures =
        audit_of(&d, "approval_delivery").into_iter().filter(|r| r["event"]["ok"] == false).count();
    assert!(failures >= 2, "each failed attempt audited");
    assert!(approval(&d, id)["delivered_unix_ms"].is_u64());

    let refusals_before = audit_of(&d, "approval_refused").len();
    // Forged: signed with another secret.
    let (status, _, _) = slack_callback(&addr, b"wrong", now_secs(), &format!("approve:{id}"));
    assert_eq!(status, 401);
    // Stale: a signature from ten minutes ago.
    let (status, _, _) = slack_callback(&addr, secret, now_secs() - 600, &format!("approve:{id}"));
    assert_eq!(status, 401);
    // Unknown id.
    let (status, _, _) = slack_callback(&addr, secret, now_secs(), "approve:999999");
    assert_eq!(status, 404);
    assert_eq!(approval(&d, id)["state"], "pending", "nothing changed");
    // The real one: approved, by alice via the webhook; the agent proceeds.
    let (status, text, sent) = slack_callback(&addr, secret, now_secs(), &format!("approve:{id}"));
    assert_eq!(status, 200, "{text}");
    let f = w.path().join("migrations/h.sql");
    assert!(wait_until(Duration::from_secs(15), || f.exists()));
    let a = approval(&d, id);
    assert_eq!((a["state"].as_str(), a["decision"]["via"].as_str()), (Some("approved"), Some("webhook")));
    assert!(a["decision"]["by"].as_str().unwrap().contains("alice"), "{a}");
    // Replayed byte for byte: refused.
    assert_eq!(send_raw(&addr, &sent).0, 409);
    // A fresh, signed reject of the decided request: refused (already decided).
    let (status, _, _) = slack_callback(&addr, secret, now_secs(), &format!("reject:{id}"));
    assert_eq!(status, 410);
    assert_eq!(approval(&d, id)["state"], "approved");
    let refused = audit_of(&d, "approval_refused");
    assert!(refused.len() >= refusals_before + 5, "every refusal audited: {refused:?}");
}

#[test]
fn email_digests_go_out_over_starttls_with_auth_and_their_one_time_links_decide_once() {
    if !ready() {
        return;
    }
    if !require(smtp_python().is_some(), "the SDK venv with aiosmtpd (cargo xtask setup)") {
        return;
    }
    let smtp = SmtpSink::start(true, Some(("rush", "pw-123")));
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("smtp.password"), "pw-123\n").unwrap();
    std::fs::write(secrets.path().join("listener.secret"), "k").unwrap();
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let config = format!(
        "[approvals]\nbatch_window = \"1s\"\nroutes = {{ low = \"email:ops@example.org\" }}\n\
         [approvals.smtp]\nhost = \"localhost\"\nport = {}\ntls = \"starttls\"\nusername = \"rush\"\n\
         password_file = \"{}\"\nfrom = \"rush@example.org\"\nca_file = \"{}\"\n\
         [approvals.listener]\naddress = \"{addr}\"\nsecret_file = \"{}\"\n",
        smtp.port,
        secrets.path().join("smtp.password").display(),
        test_ca().display(),
        secrets.path().join("listener.secret").display()
    );
    let d = Daemon::start_with_config(&config);
    let w = workspace();
    let extra = "--priority low";
    spawn_asker(&d, "mailer", w.path(), &asker_script(w.path(), "mailer", "e.sql", extra), &[]);
    spawn_asker(
        &d,
        "late",
        w.path(),
        &asker_script(w.path(), "late", "l.sql", "--priority low --timeout 4s"),
        &[],
    );
    let (id, late) = (asked_id(&d, w.path(), "mailer"), asked_id(&d, w.path(), "late"));
    assert!(smtp.wait_for(1, Duration::from_secs(30)), "no mail; daemon log:\n{}", d.log_text());
    let env = &smtp.envelopes()[0];
    assert_eq!(env["tls"], true, "{env}");
    assert_eq!(env["user"], "rush", "{env}");
    assert!(env["rcpt_tos"].to_string().contains("ops@example.org"));
    let mail = quoted_printable_decoded(&smtp.messages().join("\n"));
    let links: Vec<String> = mail
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>')
        .filter(|s| s.starts_with(&format!("http://{addr}/email/")))
        .map(|s| s.trim_end_matches(['.', ',', ')']).to_owned())
        .collect();
    let link_for = |id: u64, decision: &str| -> String {
        // The digest names each item's id next to its links; tokens differ per item.
        let marker = format!("#{id}");
        let at = mail.find(&marker).unwrap_or_else(|| panic!("#{id} not in the mail:\n{mail}"));
        let rest = &mail[at..];
        links
            .iter()
            .filter(|l| l.ends_with(&format!("decision={decision}")))
            .find(|l| rest.contains(l.as_str()))
            .unwrap_or_else(|| panic!("no {decision} link for #{id} in:\n{mail}"))
            .clone()
    };
    let approve = link_for(id, "approve");
    let path = approve.trim_start_matches(&format!("http://{addr}"));
    // A GET (a mail scanner's prefetch, the click) only shows the confirmation page.
    let (status, page) = http_get(&addr, path);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("form") && page.contains("write migrations/"), "{page}");
    assert_eq!(approval(&d, id)["state"], "pending");
    let token_path = path.split('?').next().unwrap();
    let post = raw_post(&addr, token_path, "decision=approve", &[]);
    let (status, text) = send_raw(&addr, &post);
    assert_eq!(status, 200, "{text}");
    let f = w.path().join("migrations/e.sql");
    assert!(wait_until(Duration::from_secs(15), || f.exists()));
    let a = approval(&d, id);
    assert_eq!((a["state"].as_str(), a["decision"]["via"].as_str()), (Some("approved"), Some("email")));
    assert_eq!(a["decision"]["by"], "ops@example.org");
    // Used: the same link again is refused; an unknown token too.
    assert_eq!(send_raw(&addr, &post).0, 410);
    assert_eq!(send_raw(&addr, &raw_post(&addr, "/email/00ff", "decision=approve", &[])).0, 404);
    // The other request expires; its link then refuses.
    assert!(wait_until(Duration::from_secs(10), || approval(&d, late)["state"] == "expired"));
    let expired = link_for(late, "approve");
    let p = expired.trim_start_matches(&format!("http://{addr}")).split('?').next().unwrap().to_owned();
    assert_eq!(send_raw(&addr, &raw_post(&addr, &p, "decision=approve", &[])).0, 410);
    assert_eq!(approval(&d, late)["state"], "expired");
    assert!(audit_of(&d, "approval_refused").len() >= 3);
}

#[test]
fn a_kernel_denial_of_a_trusted_agent_becomes_one_pending_request() {
    if !ready() {
        return;
    }
    let d = Daemon::start_with_config("[approvals]\ndeny_to_ask = [\"high\"]\n");
    if !require(d.doctor().to_string().contains("landlock") || d.lsm_attached(), "file tokens enforced here")
    {
        return;
    }
    let w = workspace();
    let wd = w.path().display();
    // It tries, several times, to write where it has no token.
    let script = format!("for i in 1 2 3 4 5; do echo x > {wd}/migrations/x.sql; sleep 0.1; done; sleep 600");
    spawn_asker(&d, "denied", w.path(), &script, &["--trust", "high"]);
    assert!(
        wait_until(Duration::from_secs(10), || !approvals(&d, false).is_empty()),
        "no request from the denial; audit: {:?}",
        audit_of(&d, "file_deny")
    );
    std::thread::sleep(Duration::from_millis(800));
    let pending = approvals(&d, false);
    // Five refused creates in migrations/ (Landlock names the directory; BPF LSM the file).
    let mine: Vec<&Value> = pending
        .iter()
        .filter(|a| a["detail"]["path"].as_str().is_some_and(|p| p.starts_with(&format!("{wd}/migrations"))))
        .collect();
    assert_eq!(mine.len(), 1, "deduplicated: {pending:?}");
    let a = mine[0];
    assert_eq!(a["origin"], "deny_to_ask");
    assert_eq!(a["agent"], "denied");
    assert!(a["action"].as_str().unwrap().starts_with("denied wants "), "{a}");
    assert!(pending.iter().all(|a| a["agent"] == "denied"), "{pending:?}");
    // An agent of no listed trust level: its denials stay denials only.
    let before = pending.len();
    spawn_asker(&d, "plain", w.path(), &script.replace("x.sql", "y.sql"), &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(approvals(&d, false).len(), before);
}

#[test]
fn queue_settings_are_stored_shown_and_checked() {
    if !ready() {
        return;
    }
    let mut d = Daemon::start_with_config("[approvals]\nroutes = { high = \"cli:blocking\" }\n");
    let out =
        d.rush(&["human-queue", "configure", "--priority", "low", "cli:blocking", "--batch-window", "5m"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.rush(&["approval-policy", "set", "--destructive", "cli", "--timeout", "1h:reject"]);
    assert!(out.status.success(), "{}", describe(&out));
    // A channel the daemon cannot deliver to is refused, naming it.
    let bad = d.rush(&["human-queue", "configure", "--priority", "medium", "webhook:nowhere"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhook:nowhere"), "{}", describe(&bad));
    d.kill9();
    d.restart();
    let s = d.rush_json(&["human-queue", "show"]);
    assert_eq!(s["batch_window_secs"], 300, "{s}");
    let routes = s["routes"].to_string();
    assert!(routes.contains("\"low\"") && routes.contains("cli:blocking"), "{s}");
    let classes = s["classes"].as_array().unwrap();
    assert!(
        classes
            .iter()
            .any(|c| c["class"] == "destructive" && c["timeout_secs"] == 3600 && c["on_timeout"] == "reject")
    );
    // A destructive request gets the class's timeout whatever it asks.
    let agents = d.sleepers("q", 1);
    let a = d.rush_json(&[
        "approval",
        "request",
        "--agent",
        &agents[0],
        "--kind",
        "custom",
        "--class",
        "destructive",
        "--action",
        "rm -rf build",
        "--timeout",
        "30d",
    ]);
    let t = a["deadline_unix_ms"].as_u64().unwrap() - a["created_unix_ms"].as_u64().unwrap();
    assert_eq!(t, 3_600_000, "{a}");
    assert_eq!(a["state"], ApprovalState::Pending.as_str());
    // Text with an escape sequence never reaches the person's terminal, chat or mail.
    let bad = d.rush(&[
        "approval",
        "request",
        "--agent",
        &agents[0],
        "--kind",
        "custom",
        "--action",
        "ok\x1b]52;c;eA==\x07",
    ]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("control characters"), "{}", describe(&bad));
}

fn cpu_used(d: &Daemon, agent: &str) -> u64 {
    let s = d.rush_json(&["agent", "status", agent]);
    s["usage"].as_array().unwrap().iter().find(|u| u["resource"] == "cpu").unwrap()["used"].as_u64().unwrap()
}

#[test]
fn an_approved_budget_raise_resumes_an_agent_frozen_at_its_cpu_budget() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let spin = bin("rush-test-budget").display().to_string();
    let out = d.rush(&["agent", "spawn", "spin", "--budget", "cpu:1s", "--detach", "--", &spin, "spin"]);
    assert!(out.status.success(), "{}", describe(&out));
    let paused = || d.rush_json(&["agent", "status", "spin"])["paused"] == "budget:cpu";
    assert!(wait_until(Duration::from_secs(60), paused), "not frozen at its budget");
    // Frozen, it cannot ask; the operator asks on its behalf (a supervisor would).
    let a = d.rush_json(&[
        "approval", "request", "--agent", "spin", "--kind", "budget", "--budget", "cpu:3s", "--action",
        "more cpu",
    ]);
    assert_eq!(a["origin"], "operator");
    let before = cpu_used(&d, "spin");
    std::thread::sleep(Duration::from_millis(500));
    assert!(cpu_used(&d, "spin") < before + 50, "ran while frozen");
    let out = d.rush(&["approve", &a["id"].to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(20), || cpu_used(&d, "spin") > before + 300), "not resumed");
    let s = d.rush_json(&["agent", "status", "spin"]);
    assert_eq!(s["budget"]["cpu_ms"], 3000, "{s}");
    let decided = approval(&d, a["id"].as_u64().unwrap());
    assert!(decided["decision"]["effect"].as_str().unwrap().contains("budget now"), "{decided}");
}

#[test]
fn an_approved_command_is_run_by_the_asker_and_a_rejected_one_is_not() {
    if !ready() {
        return;
    }
    let d = Daemon::start();
    let w = workspace();
    let (rush, wd) = (bin("rush").display().to_string(), w.path().display().to_string());
    for name in ["yes", "no"] {
        let script = format!(
            "{rush} ask --kind command --action 'mark {name}' --wait -- sh -c 'echo ran > {wd}/out/{name}; exit 7'; \
             echo $? > {wd}/out/{name}.rc; sleep 600"
        );
        spawn_asker(&d, &format!("cmd-{name}"), w.path(), &script, &[]);
    }
    assert!(wait_until(Duration::from_secs(10), || approvals(&d, false).len() == 2));
    for a in approvals(&d, false) {
        assert_eq!(a["detail"]["kind"], "command", "{a}");
        let verb = if a["agent"] == "cmd-yes" { "approve" } else { "reject" };
        assert!(d.rush(&[verb, &a["id"].to_string()]).status.success());
    }
    let rc = |n: &str| std::fs::read_to_string(w.path().join(format!("out/{n}.rc"))).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || !rc("yes").is_empty() && !rc("no").is_empty()));
    // Approved: run, with its own exit status; rejected: not run, exit 3.
    assert_eq!(std::fs::read_to_string(w.path().join("out/yes")).unwrap(), "ran\n");
    assert_eq!(rc("yes").trim(), "7");
    assert!(!w.path().join("out/no").exists());
    assert_eq!(rc("no").trim(), "3");
}

#[test]
fn a_request_from_an_agent_holding_a_claim_another_waits_on_is_raised_to_high() {
    if !ready() {
        return;
    }
    let d = Daemon::start_with_config("[approvals]\naging = \"0s\"\n");
    d.sleepers("c", 3);
    assert_eq!(d.rush_json(&["agent", "claim", "schema", "--agent", "c0"])["won"], true);
    let ask = |agent: &str| {
        d.rush_json(&[
            "approval",
            "request",
            "--agent",
            agent,
            "--kind",
            "custom",
            "--priority",
            "low",
            "--action",
            "may I",
        ])
    };
    let holder = ask("c0")["id"].as_u64().unwrap();
    let other = ask("c2")["id"].as_u64().unwrap();
    assert_eq!(approval(&d, holder)["effective_priority"], "low");
    // c1 wants the same task and loses: c0's request now blocks c1 too.
    assert_ne!(d.rush(&["agent", "claim", "schema", "--agent", "c1"]).status.code(), Some(0));
    assert!(
        wait_until(Duration::from_secs(5), || approval(&d, holder)["effective_priority"] == "high"),
        "{}",
        approval(&d, holder)
    );
    let a = approval(&d, holder);
    assert!(a["raised_because"].as_str().unwrap().contains("schema"), "{a}");
    assert_eq!(approval(&d, other)["effective_priority"], "low");
    // Released: back to what it asked.
    assert!(d.rush(&["agent", "release", "schema", "--agent", "c0"]).status.success());
    assert!(wait_until(Duration::from_secs(5), || approval(&d, holder)["effective_priority"] == "low"));
}

use super::*;
use crate::audit::AuditEvent;

/// The variant tags serde knows for an internally tagged enum `T`: its error for an
/// unknown tag lists them all.
fn serde_tags<T: serde::de::DeserializeOwned + fmt::Debug>(tag: &str) -> Vec<String> {
    let e = serde_json::from_str::<T>(&format!(r#"{{"{tag}":"?"}}"#)).unwrap_err().to_string();
    let listed = e.split("expected one of ").nth(1).expect(&e);
    let mut tags: Vec<String> =
        listed.split(", ").map(|k| k.split('`').nth(1).expect(listed).to_owned()).collect();
    tags.sort_unstable();
    tags
}

/// One request of each kind, read from the wire as `{"type": NAME, ...}`: every field
/// any request needs is there (the others ignore what they do not have).
fn request_named(name: &str) -> Request {
    let mut v = serde_json::json!({
        "name": "a", "command": ["true"], "cwd": "/", "stdio": "log", "follow": false,
        "agent": "a", "path": "/", "ops": 1, "target": {"id": 1}, "workspace": "/w",
        "session": {}, "a": "x", "b": "y", "prune": {}, "key": "k", "value": "v", "pid": 1,
        "mode": "write", "text": "x", "task": "t", "content_base64": "", "to": "b",
        "action": "x", "detail": {"kind": "custom"}, "id": 1, "approve": true,
    });
    match name {
        "audit" | "subscribe" => v = serde_json::json!({}),
        "spawn" | "query_intents" | "list_claims" => v["session"] = "s".into(),
        "assess" | "record_execution" => {
            v["command"] = "true".into();
            v["decision"] = "allow".into();
        }
        "import_guardrails" => v["guardrails"] = serde_json::json!([]),
        "create_workspace" => v["repo"] = "/r".into(),
        "collect_workspaces" => v["older_than_secs"] = 1.into(),
        _ => {}
    }
    v["type"] = name.into();
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[test]
fn request_names_are_the_serde_tags() {
    let mut names: Vec<String> = Request::NAMES.iter().map(|n| n.to_string()).collect();
    names.sort_unstable();
    assert_eq!(names, serde_tags::<Request>("type"), "Request::NAMES and the enum differ");
    for name in Request::NAMES {
        let r = request_named(name);
        assert_eq!(r.name(), *name, "{r:?}");
        assert_eq!(serde_json::to_value(&r).unwrap()["type"], *name);
        // Every request is one or the other (an exhaustive match: never forgotten).
        let _ = r.is_mutation();
    }
    assert!(request_named("kill_agent").is_mutation());
    assert!(!request_named("agent_status").is_mutation());
}

/// One reply of each kind, read from the wire as `{"type": NAME, ...}`.
fn response_named(name: &str) -> Response {
    use serde_json::json;
    let agent = json!({
        "name": "a", "cgroup_id": 1, "cgroup_path": "/c", "pid": 1, "uid": 0, "command": [],
        "net": NetPolicy::Deny, "state": "running", "processes": 0, "started_unix_ms": 0,
        "enforcement": [], "detached": false,
    });
    let session = json!({
        "name": "s", "workspace": "/w", "live": "/l", "backend": "git", "timeline": "main",
        "created_unix_ms": 0,
    });
    let checkpoint = json!({
        "name": "c", "session": "s", "timeline": "main", "created_unix_ms": 0, "took_ms": 0,
        "captured": [], "automatic": false,
    });
    let timeline = json!({"name": "main", "created_unix_ms": 0, "live": true});
    let claim = json!({
        "task": "t", "agent": "a", "lease": 1, "fencing": 1, "enforcement": "none",
        "acquired_unix_ms": 0, "expires_unix_ms": 0,
    });
    let token = json!({
        "id": 1, "agent": "a", "path": "/", "ops": 1, "granted_unix_ms": 0, "expired": false,
        "origin": "grant",
    });
    let mut v = json!({
        "name": "a", "processes_killed": 1, "data": "", "events": [], "agents": [], "tokens": [],
        "outcomes": [], "sessions": [], "workspace": "/w", "names": [], "session": "s", "pairs": [],
        "agent": agent, "token": token, "checkpoint": checkpoint,
        "daemon_version": "0", "protocol_version": crate::PROTOCOL_VERSION,
        "caller": {"uid": 0, "gid": 0, "pid": 1, "role": {"kind": "operator"}},
        "status": {"code": 0, "signal": null},
        "report": {"kernel": "k", "probes": [], "guarantees": []},
        "effect": {"agent": "a", "backend": "none", "action": "none", "detail": "", "pid": 1},
        "timeline": timeline,
        "diff": {"a": "x", "b": "y", "added": [], "removed": [], "modified": [], "took_ms": 0},
        "detail": {"session": session, "attachments": [], "checkpoints": [], "keys": []},
        "attachment": {"session": "s", "pid": 1, "uid": 0, "since_unix_ms": 0},
        "mode": "write", "bytes": 0, "intents": [], "claims": [], "results": [], "tasks": [],
    });
    v["intent"] = json!({"id": 1, "agent": "a", "text": "t", "created_unix_ms": 0, "expires_unix_ms": 0});
    v["claim"] = claim.clone();
    v["outcome"] = json!({"won": true, "claim": claim});
    v["result"] = json!({"key": "k", "agent": "a", "sha256": "", "size": 0, "published_unix_ms": 0});
    v["task"] = json!({
        "id": 1, "from": "a", "to": "b", "text": "t", "state": "open", "result_key": "task/1",
        "created_unix_ms": 0,
    });
    let approval = json!({
        "id": 1, "agent": "a", "origin": "agent", "action": "x", "detail": {"kind": "custom"},
        "class": "custom", "priority": "low", "effective_priority": "low", "batch_key": "custom:x",
        "channel": "cli", "created_unix_ms": 0, "deadline_unix_ms": 1, "on_timeout": "reject",
        "state": "pending",
    });
    v["approval"] = approval.clone();
    v["approvals"] = json!([approval.clone()]);
    v["decided"] = json!([approval]);
    v["settings"] = json!({
        "routes": [], "classes": [], "batch_window_secs": 0, "similarity": 1.0, "aging_secs": 0,
        "grant_ttl_secs": 3600,
    });
    v["assessment"] = json!({
        "command": "true", "trust": "medium", "cwd": "/", "commands": [], "tags": [], "score": 0,
        "score_decision": "allow", "decision": "allow", "decided_by": "score", "reason": "",
        "pattern": "true",
    });
    v["guardrails"] = json!([]);
    v["added"] = json!([]);
    v["existing"] = json!([]);
    match name {
        "rolled_back" => {
            v["report"] = json!({"checkpoint": checkpoint, "undo": checkpoint, "took_ms": 0});
        }
        "timeline" => v["timeline"] = json!({"session": session, "timelines": [], "checkpoints": []}),
        "session" | "attached" => v["session"] = session,
        "event" => v["event"] = json!({"type": "lagged", "missed": 1}),
        "workspace" => {
            v["workspace"] = json!({
                "name": "a", "repo": "/r", "path": "/r/.rush/workspaces/a", "branch": "rush/a",
                "base": "HEAD", "base_commit": "0", "uid": 0, "created_unix_ms": 0,
            })
        }
        _ => {}
    }
    v["workspaces"] = json!([]);
    v["merges"] = json!([]);
    v["removed"] = json!([]);
    v["merge"] = json!({
        "id": 1, "workspace": "a", "repo": "/r", "branch": "rush/a", "into": "main",
        "strategy": "squash", "state": "queued", "queued_unix_ms": 0,
    });
    v["type"] = name.into();
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn agents_send_only_requests_about_themselves_and_get_them_about_themselves() {
    let mut agent_sendable = Vec::new();
    for name in Request::NAMES {
        let mut r = request_named(name);
        assert!(r.may_be_sent_by(Principal::Operator), "{name}: the operator may send everything");
        if !r.may_be_sent_by(Principal::Agent) {
            assert!(!r.may_be_sent_by(Principal::Other), "{name}");
            continue;
        }
        agent_sendable.push(*name);
        // Reads of coordination state: scoped by the daemon to the agent's session.
        if matches!(*name, "hello" | "doctor") {
            assert!(r.may_be_sent_by(Principal::Other));
            continue;
        }
        if matches!(*name, "query_intents" | "list_claims") {
            assert_eq!(r.confine_to_agent("b"), Ok(()));
            assert!(!r.may_be_sent_by(Principal::Other), "{name}");
            continue;
        }
        // The sample names agent "a": another agent may not send it as it is...
        assert_eq!(r.confine_to_agent("b"), Err("a".to_owned()), "{name} must be confined");
        // ...agent "a" may, and so may it with the name left out.
        assert_eq!(r.confine_to_agent("a"), Ok(()));
        let mut v = serde_json::to_value(&r).unwrap();
        for field in ["name", "agent"] {
            if v.get(field).is_some() {
                v[field] = serde_json::Value::Null;
            }
        }
        let mut unnamed: Request = serde_json::from_value(v).unwrap();
        assert_ne!(unnamed, r, "{name}: the name can be left out");
        unnamed.confine_to_agent("a").unwrap();
        assert_eq!(unnamed, r, "{name}: confined to the sender");
        assert!(!r.may_be_sent_by(Principal::Other), "{name}");
    }
    assert_eq!(
        agent_sendable,
        [
            "hello",
            "agent_status",
            "doctor",
            "list_capabilities",
            "commit",
            "broadcast",
            "query_intents",
            "claim",
            "renew",
            "release",
            "list_claims",
            "publish",
            "results",
            "delegate",
            "inbox",
            "request_approval",
            "list_approvals",
            "wait_approval",
            "cancel_approval",
            "assess",
            "record_execution"
        ]
    );
    // Requests about other agents or the system stay the operator's; no agent decides.
    for name in [
        "kill_agent",
        "list_agents",
        "spawn",
        "grant",
        "audit",
        "agent_logs",
        "session_get",
        "decide",
        "configure_queue",
        "show_queue",
        "list_guardrails",
        "remove_guardrail",
        "import_guardrails",
    ] {
        assert_eq!(request_named(name).senders(), [Principal::Operator], "{name}");
    }
}

#[test]
fn response_names_are_the_serde_tags() {
    for tag in serde_tags::<Response>("type") {
        let r = response_named(&tag);
        assert_eq!(r.name(), tag, "{r:?}");
        assert_eq!(serde_json::to_value(&r).unwrap()["type"], tag);
    }
}

#[test]
fn kinds_lists_every_audit_event() {
    // serde's error for an unknown tag names every variant: the list to compare with.
    let e = serde_json::from_str::<AuditEvent>(r#"{"kind":"?"}"#).unwrap_err().to_string();
    let listed = e.split("expected one of ").nth(1).expect(&e);
    let mut serde_kinds: Vec<&str> = listed.split(", ").map(|k| k.split('`').nth(1).expect(listed)).collect();
    let mut kinds = AuditEvent::KINDS.to_vec();
    serde_kinds.sort_unstable();
    kinds.sort_unstable();
    assert_eq!(kinds, serde_kinds);
    let lost = AuditEvent::RecordsLost { count: 1, error: String::new() };
    assert!(AuditEvent::KINDS.contains(&lost.kind()));
}

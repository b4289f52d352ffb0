//! docs/PROTOCOL.md is checked against the types it documents: every fenced block tagged
//! `json request` holds request lines the daemon parses (`RequestEnvelope`), every one tagged
//! `json reply` reply lines a client parses (`ReplyEnvelope`), field for field (serde ignores
//! a field it does not know, so a misspelt one is caught by writing the value back), and
//! every request an agent may send has an example.

use std::collections::BTreeSet;

use rush_proto::{PROTOCOL_VERSION, Principal, ReplyEnvelope, Request, RequestEnvelope};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fenced block: the line of its opening fence, its info string, its text.
struct Block {
    line: usize,
    info: String,
    text: String,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in doc.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                open = Some(Block { line: n + 1, info: info.trim().to_owned(), text: String::new() })
            }
            (Some(_), Some("")) => out.push(open.take().expect("a block is open")),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "docs/PROTOCOL.md: a fenced block is not closed");
    out
}

/// Whether `doc` (what the example says) is all in `back` (the example parsed and written
/// back): every field it sets is a field of the type, with the value it gave. A null may
/// stand for a field left out.
fn contained(doc: &Value, back: &Value, at: &str) -> Result<(), String> {
    match (doc, back) {
        (Value::Object(d), Value::Object(b)) => {
            for (k, v) in d {
                match b.get(k) {
                    Some(bv) => contained(v, bv, &format!("{at}.{k}"))?,
                    None if v.is_null() => {}
                    None => return Err(format!("{at}.{k}: no such field (ignored when read)")),
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(b)) if d.len() == b.len() => {
            d.iter().zip(b).enumerate().try_for_each(|(i, (d, b))| contained(d, b, &format!("{at}[{i}]")))
        }
        _ if doc == back => Ok(()),
        _ => Err(format!("{at}: {doc} reads back as {back}")),
    }
}

/// Every JSON value of the blocks tagged `json <tag>`, parsed as `T` and held to the text.
fn examples<T: DeserializeOwned + Serialize>(blocks: &[Block], tag: &str) -> Vec<T> {
    let mut out = Vec::new();
    for b in blocks.iter().filter(|b| b.info == format!("json {tag}")) {
        let values: Vec<Value> = serde_json::Deserializer::from_str(&b.text)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("PROTOCOL.md:{}: not JSON: {e}", b.line));
        assert!(!values.is_empty(), "PROTOCOL.md:{}: an empty example", b.line);
        for v in values {
            let parsed: T = serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("PROTOCOL.md:{}: not a {tag}: {e}\n{v}", b.line));
            let back = serde_json::to_value(&parsed).expect("wire types serialize");
            if let Err(e) = contained(&v, &back, tag) {
                panic!("PROTOCOL.md:{}: {e}\n{v}", b.line);
            }
            out.push(parsed);
        }
    }
    out
}

/// One request of each kind, read from the wire as `{"type": NAME, ...}`: every field any
/// request needs is there (the others ignore what they do not have). A new request with a
/// field of its own fails here until the field is added.
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
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("sample request {v}: {e}"))
}

/// The values serde knows for a unit enum: its error for an unknown one lists them all.
fn serde_values<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let e = serde_json::from_str::<T>(r#""?""#).unwrap_err().to_string();
    let listed = e.split("expected one of ").nth(1).unwrap_or_else(|| panic!("{e}"));
    listed.split(", ").map(|k| k.split('`').nth(1).expect(listed).to_owned()).collect()
}

#[test]
fn every_json_example_parses_as_what_its_block_says() {
    let doc = doc();
    let blocks = blocks(&doc);
    for b in &blocks {
        assert!(
            !b.info.starts_with("json") || b.info == "json request" || b.info == "json reply",
            "PROTOCOL.md:{}: a JSON block must be tagged `json request` or `json reply` (checked), not {:?}",
            b.line,
            b.info
        );
    }
    let requests: Vec<RequestEnvelope> = examples(&blocks, "request");
    let replies: Vec<ReplyEnvelope> = examples(&blocks, "reply");
    assert!(
        requests.len() >= 15 && replies.len() >= 15,
        "{} requests, {} replies",
        requests.len(),
        replies.len()
    );
    for r in &requests {
        assert_eq!(r.version, PROTOCOL_VERSION, "{r:?}");
        assert_ne!(r.id, 0, "id 0 is the daemon's for a line it could not read: {r:?}");
    }
    for r in &replies {
        assert_eq!(r.version, PROTOCOL_VERSION, "{r:?}");
    }
    assert!(replies.iter().any(|r| matches!(r.reply, rush_proto::Reply::Err(_))), "no error example");
}

#[test]
fn every_request_an_agent_may_send_has_an_example() {
    let doc = doc();
    let requests: Vec<RequestEnvelope> = examples(&blocks(&doc), "request");
    let shown: BTreeSet<&str> = requests.iter().map(|r| r.request.name()).collect();
    let agents: Vec<&str> = Request::NAMES
        .iter()
        .copied()
        .filter(|n| request_named(n).may_be_sent_by(Principal::Agent))
        .collect();
    assert!(agents.contains(&"claim") && !agents.contains(&"spawn"), "{agents:?}");
    let missing: Vec<&str> = agents.iter().copied().filter(|n| !shown.contains(n)).collect();
    assert!(missing.is_empty(), "PROTOCOL.md has no `json request` example of {missing:?}");
}

#[test]
fn every_request_and_error_kind_is_named() {
    let doc = doc();
    let missing: Vec<&str> =
        Request::NAMES.iter().copied().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "PROTOCOL.md does not name the requests {missing:?}");
    let kinds = serde_values::<rush_proto::ErrorKind>();
    assert!(kinds.len() >= 9, "{kinds:?}");
    let missing: Vec<&String> = kinds.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "PROTOCOL.md does not name the error kinds {missing:?}");
    for kind in [
        "intent",
        "claim",
        "claim_deny",
        "result",
        "task",
        "approval_requested",
        "approval_decided",
        "approval_delivery",
        "approval_refused",
        "command_run",
        "guardrail_learned",
        "workspace",
    ] {
        assert!(
            doc.contains(&format!("\"kind\":\"{kind}\"")),
            "PROTOCOL.md has no example of the {kind} event"
        );
    }
}

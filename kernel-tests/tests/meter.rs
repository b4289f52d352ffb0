//! The meter with the official SDKs nobody here wrote: the `anthropic` and `openai` Python
//! packages from PyPI (pinned in xtask/src/setup.rs, installed into a venv under the cache
//! dir), run as confined agents, call through the agent's meter to a model API on TLS
//! (fixtures/model_api.py with the test CA of testdata/tls). Each SDK finds its route in
//! its own variable, set by the daemon; spend is charged exactly from the reported usage;
//! past the budget the SDK gets HTTP 402 and raises it, without retrying.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

/// A daemon whose meter has an Anthropic and an OpenAI route, both to `api` over TLS.
fn daemon(api: &ModelApi) -> Daemon {
    Daemon::start_with_config(&format!(
        r#"[meter]
ca_file = "{ca}"
[meter.routes.anthropic]
upstream = "https://localhost:{port}"
env = ["ANTHROPIC_BASE_URL"]
prices = {{ "claude-*" = {{ input = 3, output = 15 }} }}
[meter.routes.openai]
upstream = "https://localhost:{port}/v1"
env = ["OPENAI_BASE_URL"]
prices = {{ "gpt-*" = {{ input = 2.5, output = 10 }} }}
"#,
        ca = repo().join("testdata/tls/ca.pem").display(),
        port = api.port
    ))
}

fn ready() -> Option<PathBuf> {
    if !require(is_root(), "root (agents in cgroups, BPF programs)") {
        return None;
    }
    let py = sdk_python();
    if !require(py.is_some(), "the SDK venv (cargo xtask setup installs anthropic and openai into it)") {
        return None;
    }
    py
}

/// Runs fixtures/sdk_calls.py with `calls` as agent `name` under `budget`.
fn sdk_agent(
    d: &Daemon,
    py: &Path,
    name: &str,
    budget: &str,
    script_prefix: &str,
    calls: &[&str],
) -> (Vec<String>, String) {
    let script = format!(
        "{script_prefix}exec {py} {sdk} {calls}",
        py = py.display(),
        sdk = repo().join("kernel-tests/fixtures/sdk_calls.py").display(),
        calls = calls.join(" ")
    );
    let out = d
        .rush(&["agent", "spawn", name, "--net", "deny", "--budget", budget, "--", "/bin/sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout.lines().map(str::to_owned).collect(), describe(&out))
}

/// The agent's spend; its status has no cost line before anything was charged.
fn cost_used(d: &Daemon, name: &str) -> u64 {
    let s = d.rush_json(&["agent", "status", name]);
    let line = s["usage"].as_array().and_then(|u| u.iter().find(|l| l["resource"] == "cost").cloned());
    line.map_or(0, |l| l["used"].as_u64().unwrap_or_else(|| panic!("a cost line without used: {s}")))
}

#[test]
fn the_official_sdks_are_metered_over_tls_streaming_and_not() {
    let Some(py) = ready() else { return };
    let api = ModelApi::start();
    let d = daemon(&api);
    let calls = ["anthropic", "anthropic-stream", "openai", "openai-stream", "openai-responses"];
    let (lines, why) = sdk_agent(&d, &py, "sdk", "cost:$1", "", &calls);
    assert_eq!(
        lines,
        [
            "ok anthropic anthropic 1000+500 'hello from the fixture'",
            "ok anthropic anthropic-stream 1000+500 'hello from the fixture'",
            "ok openai openai 2000+100 'hello from the fixture'",
            // The SDK did not ask for usage in its stream; the meter did, and relayed it.
            "ok openai openai-stream 2000+100 'hello from the fixture'",
            "ok openai openai-responses 2000+100 'hello from the fixture'",
        ],
        "{why}"
    );
    // Each route went to its own upstream path: the Anthropic SDK's /v1/messages under
    // /anthropic, the OpenAI SDK's under /openai (its base URL ends in the route, the API's
    // /v1 is the upstream's prefix).
    let paths: Vec<String> = api.requests().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        ["/v1/messages", "/v1/messages", "/v1/chat/completions", "/v1/chat/completions", "/v1/responses"]
    );
    assert_eq!(
        api.requests()[3].1["stream_options"]["include_usage"],
        true,
        "the meter asked the stream for usage"
    );
    // Anthropic: 1000 × $3 + 500 × $15 per million = 10,500 µ$; OpenAI: 2000 × $2.5 + 100 × $10 = 6,000 µ$.
    assert_eq!(cost_used(&d, "sdk"), 2 * 10_500 + 3 * 6_000);
}

#[test]
fn past_the_budget_each_sdk_raises_402_once_and_nothing_reaches_the_api() {
    let Some(py) = ready() else { return };
    let api = ModelApi::start();
    let d = daemon(&api);
    // $0.015: the first call (10,500 µ$) leaves it under, the second crosses it, the rest are refused.
    let calls = ["anthropic", "anthropic-stream", "anthropic", "anthropic-stream", "openai", "openai-stream"];
    let (lines, why) = sdk_agent(&d, &py, "broke", "cost:$0.015", "", &calls);
    assert_eq!(lines.len(), 6, "{why}");
    assert!(lines[0].starts_with("ok ") && lines[1].starts_with("ok "), "{why}");
    for (line, call) in lines[2..].iter().zip(&calls[2..]) {
        let sdk = call.split('-').next().unwrap();
        assert!(
            line.starts_with(&format!("error {sdk} {call} 402 "))
                && line.contains("cost budget of agent broke is spent"),
            "{call}: {line}\n{why}"
        );
    }
    assert_eq!(api.requests().len(), 2, "a refused call reached the API");
    assert_eq!(cost_used(&d, "broke"), 21_000);
    // One refusal per call: neither SDK retried a 402 (both retry 408/409/429/5xx, 2 times here).
    let refused = || -> Vec<Value> {
        d.audit()
            .into_iter()
            .filter(|r| {
                r["agent"] == "broke"
                    && r["event"]["kind"] == "api_refused"
                    && r["event"]["resource"] == "cost"
            })
            .collect()
    };
    assert!(wait_until(Duration::from_secs(5), || refused().len() >= 4));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(refused().len(), 4, "{:?}", refused());
}

#[test]
fn an_sdk_pointed_around_the_meter_is_refused_by_the_kernel() {
    let Some(py) = ready() else { return };
    let api = ModelApi::start();
    let d = daemon(&api);
    // The agent overrides its base URLs to the API itself: its --net deny refuses the connect.
    let prefix = format!(
        "export ANTHROPIC_BASE_URL=https://localhost:{p} OPENAI_BASE_URL=https://127.0.0.1:{p}/v1; ",
        p = api.port
    );
    let (lines, why) = sdk_agent(&d, &py, "around", "cost:$1", &prefix, &["anthropic", "openai"]);
    assert_eq!(lines.len(), 2, "{why}");
    for line in &lines {
        assert!(line.contains(" connection APIConnectionError "), "{line}\n{why}");
    }
    assert!(api.requests().is_empty(), "the agent reached the API around its meter");
    assert_eq!(cost_used(&d, "around"), 0);
}

//! Agent profiles: `rush doctor --profile` shows the expansion, `rush agent spawn
//! --profile` runs it confined to it (file tokens by Landlock here), and real agent tools
//! from npm (pinned in xtask/src/setup.rs, installed under the cache dir) start confined:
//! Claude Code answers a prompt through its meter from a local model API on TLS (charged
//! from the reported usage), Codex prints its version.

use std::path::{Path, PathBuf};
use std::process::Output;

use kernel_tests::*;
use serde_json::Value;

/// A home and a workspace of their own, so that profiles' `~` and `{workspace}` land in
/// the test's directories (and a user profile dir beside them).
struct Places {
    _dir: tempfile::TempDir,
    home: PathBuf,
    ws: PathBuf,
    config: PathBuf,
}

impl Places {
    fn new() -> Places {
        let dir = tempfile::tempdir().unwrap();
        let (home, ws, config) = (dir.path().join("home"), dir.path().join("ws"), dir.path().join("config"));
        for d in [&home, &ws, &config] {
            std::fs::create_dir_all(d).unwrap();
        }
        Places { home, ws, config, _dir: dir }
    }

    fn rush(&self, d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = d.rush_cmd(args);
        c.current_dir(&self.ws).env("HOME", &self.home).env("XDG_CONFIG_HOME", &self.config);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("rush")
    }
}

fn landlock_daemon() -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    let d = Daemon::start();
    let files = d.doctor()["guarantees"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "file tokens" && g["holds"] == true);
    require(files, "file tokens enforced here (BPF LSM or Landlock)").then_some(d)
}

#[test]
fn doctor_shows_what_a_profile_allows_here() {
    let Some(d) = landlock_daemon() else { return };
    let p = Places::new();
    let out = p.rush(&d, &["--json", "doctor", "--profile", "claude-code"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> =
        v["allow"].as_array().unwrap().iter().map(|g| g["path"].as_str().unwrap()).collect();
    let claude_dir = p.home.join(".claude");
    assert_eq!(paths, [p.ws.to_str().unwrap(), claude_dir.to_str().unwrap()]);
    assert_eq!(v["create"][0], claude_dir.to_str().unwrap());
    let hosts: Vec<&str> =
        v["net"]["endpoints"].as_array().unwrap().iter().map(|e| e["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["api.anthropic.com", "statsig.anthropic.com", "sentry.io"], "{v}");
    assert_eq!(v["tty"], true);
    assert_eq!(v["file_tokens_enforced"], true);
    let env = v["env"].to_string();
    assert!(env.contains("CLAUDE_CONFIG_DIR") && env.contains(claude_dir.to_str().unwrap()), "{env}");
    // The text form says the same, for a person.
    let out = p.rush(&d, &["doctor", "--profile", "claude-code"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(created at spawn)") && text.contains("file tokens: enforced"), "{text}");
    // An unknown profile is refused, naming those there are.
    let out = p.rush(&d, &["doctor", "--profile", "nosuch"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("claude-code"), "{}", describe(&out));
}

#[test]
fn a_spawn_with_a_profile_is_confined_to_it() {
    let Some(d) = landlock_daemon() else { return };
    let p = Places::new();
    // A profile of the user's own, in ~/.config/rush/profiles (XDG_CONFIG_HOME here).
    std::fs::create_dir_all(p.config.join("rush/profiles")).unwrap();
    std::fs::write(
        p.config.join("rush/profiles/mine.toml"),
        "description = \"a test tool\"\ncommand = [\"sh\", \"-c\", \"echo $TOOL_MODE; echo w > out.txt && echo wrote; \
         echo c > ~/.mine/cache && echo cached; echo x > ~/outside.txt || echo outside-refused\"]\n\
         allow = [\"{workspace}:read,write,create\", \"~/.mine/:read,write,create\"]\n\
         [env]\nTOOL_MODE = \"from-profile\"\n",
    )
    .unwrap();
    let out = p.rush(&d, &["agent", "spawn", "mine", "--profile", "mine", "--net", "deny"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["from-profile", "wrote", "cached", "outside-refused"], "{}", describe(&out));
    assert!(p.ws.join("out.txt").exists() && p.home.join(".mine/cache").exists());
    assert!(!p.home.join("outside.txt").exists());
    // Its tokens, as the daemon holds them (a detached run of the same profile).
    let out = p.rush(
        &d,
        &["agent", "spawn", "mine2", "--profile", "mine", "--net", "deny", "--detach", "--", "sleep", "30"],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let caps = d.rush_json(&["capability", "list", "mine2"]);
    let granted: Vec<String> = caps
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["origin"] == "spawn")
        .map(|t| t["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(granted, [p.ws.display().to_string(), p.home.join(".mine").display().to_string()], "{caps}");

    // A bad profile is refused before anything runs, naming the entry.
    std::fs::write(p.config.join("rush/profiles/bad.toml"), "description = \"x\"\nallow = [\"rel:read\"]\n")
        .unwrap();
    let out = p.rush(&d, &["agent", "spawn", "bad", "--profile", "bad", "--", "true"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow \"rel:read\""), "{}", describe(&out));
    // A profile without a command needs one.
    let out = p.rush(&d, &["agent", "spawn", "g", "--profile", "generic-openai", "--net", "deny"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one after --"), "{}", describe(&out));
}

fn agent_tools() -> Option<PathBuf> {
    let dir = cached("RUSH_AGENT_TOOLS", "agent-tools");
    let ok = dir.join("node_modules/.bin/claude").exists() && dir.join("node_modules/.bin/codex").exists();
    require(ok, "the agent tools (cargo xtask setup installs claude-code and codex from npm)").then_some(dir)
}

fn meter_daemon(api: &ModelApi) -> Daemon {
    Daemon::start_with_config(&format!(
        "[meter]\nca_file = \"{ca}\"\n[meter.routes.anthropic]\nupstream = \"https://localhost:{port}\"\n\
         env = [\"ANTHROPIC_BASE_URL\"]\nprices = {{ \"claude-*\" = {{ input = 3, output = 15 }} }}\n",
        ca = repo().join("testdata/tls/ca.pem").display(),
        port = api.port
    ))
}

#[test]
fn claude_code_from_npm_answers_through_its_meter_confined() {
    if !require(is_root(), "root") {
        return;
    }
    let Some(tools) = agent_tools() else { return };
    let api = ModelApi::start();
    let d = meter_daemon(&api);
    let p = Places::new();
    let tools_grant = format!("{}:read,exec", tools.display());
    let claude = tools.join("node_modules/.bin/claude").display().to_string();
    // --net deny: the profile's hosts would need DNS this machine lacks; the meter is
    // always reachable. The tool itself lives under the cache dir, granted read+exec.
    let spawn = |name: &str, args: &[&str]| {
        let mut all = vec![
            "agent",
            "spawn",
            name,
            "--profile",
            "claude-code",
            "--net",
            "deny",
            "--budget",
            "cost:$1",
            "--allow",
            &tools_grant,
            "--no-tty",
            "--",
            &claude,
        ];
        all.extend_from_slice(args);
        p.rush(&d, &all, &[("ANTHROPIC_API_KEY", "sk-ant-fixture")])
    };
    let out = spawn("cc-version", &["--version"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2.1.332 (Claude Code)"), "{}", describe(&out));

    let out = spawn("cc", &["-p", "say hi"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from the fixture", "{}", describe(&out));
    let reqs = api.requests();
    assert!(!reqs.is_empty() && reqs.iter().all(|(path, _)| path.starts_with("/v1/messages")), "{reqs:?}");
    // Charged from the usage the API reported: 1000 input + 500 output tokens at $3/$15.
    let status = d.rush_json(&["agent", "status", "cc"]);
    let cost = status["usage"].as_array().unwrap().iter().find(|u| u["resource"] == "cost").cloned();
    assert_eq!(cost.map(|c| c["used"].clone()), Some(Value::from(10_500 * reqs.len() as u64)), "{status}");
    // Its state went where the profile put it, in the granted directory it created.
    assert!(p.home.join(".claude").is_dir());
    assert!(!Path::new(&p.home.join(".claude.json")).exists(), "config outside the granted directory");
}

#[test]
fn codex_from_npm_starts_confined() {
    let Some(d) = landlock_daemon() else { return };
    let Some(tools) = agent_tools() else { return };
    let p = Places::new();
    let grant = format!("{}:read,exec", tools.display());
    let codex = tools.join("node_modules/.bin/codex").display().to_string();
    let out = p.rush(
        &d,
        &[
            "agent",
            "spawn",
            "codex",
            "--profile",
            "codex",
            "--net",
            "deny",
            "--allow",
            &grant,
            "--no-tty",
            "--",
            &codex,
            "--version",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("codex-cli 0.171.0"), "{}", describe(&out));
    let st = d.rush_json(&["agent", "status", "codex"]);
    assert!(
        st["enforcement"].to_string().contains("files:landlock")
            || st["enforcement"].to_string().contains("files:bpf-lsm"),
        "{st}"
    );
}

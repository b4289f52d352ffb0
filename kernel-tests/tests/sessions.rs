//! Sessions beyond their workspace, end to end through `rush`: the key-value state (exact
//! to the byte), attach and detach (RUSH_SESSION, the saved working directory, the
//! daemon's record of attached shells), RUSH_SESSION as every session command's default,
//! and all of it surviving a daemon crash. On the store the daemon picks (a loop-mounted
//! btrfs image here and in the guests).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kernel_tests::*;
use serde_json::Value;

fn daemon() -> Option<Daemon> {
    if !require(is_root(), "root") {
        return None;
    }
    Some(Daemon::start())
}

struct Workspace {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("rush-sess-").tempdir_in("/tmp").unwrap();
        let path = dir.path().join("ws");
        std::fs::create_dir_all(path.join("sub dir/deeper")).unwrap();
        std::fs::write(path.join("a.txt"), "alpha\n").unwrap();
        Workspace { _dir: dir, path }
    }
    fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }
    fn p(&self, rel: &str) -> String {
        self.path.join(rel).to_str().unwrap().to_owned()
    }
}

fn create(d: &Daemon, name: &str, ws: &Workspace) {
    d.rush_json(&["session", "create", name, "--workspace", ws.s()]);
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", describe(&out));
    out
}

fn fails_with(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code} mentioning {needle:?}: {}",
        describe(out)
    );
    assert!(err.contains(needle), "stderr should mention {needle:?}: {}", describe(out));
}

/// `rush ARGS` in `cwd`, with RUSH_SESSION as given (and unset otherwise).
fn rush_with(d: &Daemon, cwd: &Path, session: Option<&str>, args: &[&str]) -> Output {
    let mut c = d.rush_cmd(args);
    c.current_dir(cwd).env("PWD", cwd).env_remove("RUSH_SESSION");
    if let Some(s) = session {
        c.env("RUSH_SESSION", s);
    }
    c.output().unwrap()
}

/// `sh -c SCRIPT` with $RUSH the rush binary and RUSH_SOCKET the daemon's socket.
fn sh(d: &Daemon, cwd: &Path, script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("RUSH", bin("rush"))
        .env("RUSH_SOCKET", &d.socket)
        .env("PWD", cwd)
        .env_remove("RUSH_SESSION")
        .stdin(Stdio::null());
    c
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn show(d: &Daemon, name: &str) -> Value {
    d.rush_json(&["session", "show", name])
}

fn audit_of(d: &Daemon, kind: &str) -> Vec<Value> {
    d.audit().into_iter().filter(|r| r["event"]["kind"] == kind).collect()
}

const TRICKY: [(&str, &str); 7] = [
    ("newline", "line one\nline two\n"),
    ("quotes", "it's \"double\" and 'single'"),
    ("dollar", "$x ${HOME} `id` $(id) \\n"),
    ("empty", ""),
    ("unicode", "naïve façade — 日本語 🦀"),
    ("leading-dash", "--not-a-flag"),
    ("spaces", "  padded  \t tab "),
];

#[test]
fn key_values_round_trip_exactly_and_bad_keys_are_refused_by_name() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create(&d, "kv", &ws);
    for (k, v) in TRICKY {
        ok(d.rush(&["session", "set", k, v, "--session", "kv"]));
    }
    for (k, v) in TRICKY {
        let out = ok(d.rush(&["session", "get", k, "--session", "kv"]));
        assert_eq!(out.stdout, format!("{v}\n").into_bytes(), "value of {k} not exact");
        let j = d.rush_json(&["session", "get", k, "--session", "kv"]);
        assert_eq!(
            (j["session"].as_str(), j["key"].as_str(), j["value"].as_str()),
            (Some("kv"), Some(k), Some(v))
        );
    }
    // Found from the working directory too.
    let out = ok(rush_with(&d, &ws.path, None, &["session", "get", "unicode"]));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", TRICKY[4].1));
    let all = d.rush_json(&["session", "get", "--session", "kv"]);
    assert_eq!(all.as_object().unwrap().len(), TRICKY.len(), "{all}");
    for (k, v) in TRICKY {
        assert_eq!(all[k], v, "{k} in {all}");
    }
    let table = String::from_utf8(ok(d.rush(&["session", "get", "--session", "kv"])).stdout).unwrap();
    assert!(table.starts_with("KEY") && table.contains("line one\\nline two\\n"), "{table}");

    // Replacing, and a missing key.
    ok(d.rush(&["session", "set", "quotes", "replaced", "--session", "kv"]));
    assert_eq!(ok(d.rush(&["session", "get", "quotes", "--session", "kv"])).stdout, b"replaced\n");
    fails_with(
        &d.rush(&["session", "get", "nope", "--session", "kv"]),
        1,
        "session \"kv\" has no key \"nope\"",
    );
    ok(d.rush(&["session", "unset", "quotes", "--session", "kv"]));
    fails_with(&d.rush(&["session", "get", "quotes", "--session", "kv"]), 1, "has no key \"quotes\"");
    fails_with(&d.rush(&["session", "unset", "quotes", "--session", "kv"]), 1, "has no key \"quotes\"");
    fails_with(&d.rush(&["session", "get", "k", "--session", "nosuch"]), 1, "no session \"nosuch\"");

    // Bad keys are refused before reaching the daemon, naming the key and why.
    for (key, why) in [("", "empty"), ("a b", "whitespace"), ("a=b", "'='"), ("tab\there", "control")] {
        let out = d.rush(&["session", "set", key, "v", "--session", "kv"]);
        fails_with(&out, 2, &format!("invalid key {key:?}"));
        fails_with(&out, 2, why);
    }
    let big = "x".repeat(64 * 1024 + 1);
    fails_with(&d.rush(&["session", "set", "big", &big, "--session", "kv"]), 1, "65537 bytes");
    ok(d.rush(&["session", "set", "big", &big[1..], "--session", "kv"]));

    // Audited by key, never by value.
    let secret = "s3cr3t-token-value";
    ok(d.rush(&["session", "set", "token", secret, "--session", "kv"]));
    let records = audit_of(&d, "session_kv");
    let token: Vec<&Value> = records.iter().filter(|r| r["event"]["key"] == "token").collect();
    assert_eq!(token.len(), 1, "{records:?}");
    assert_eq!(token[0]["event"]["action"], "set");
    assert_eq!(token[0]["session"], "kv");
    assert!(records.iter().any(|r| r["event"]["key"] == "quotes" && r["event"]["action"] == "unset"));
    let trail = serde_json::to_string(&d.audit()).unwrap();
    assert!(!trail.contains(secret), "a value reached the audit trail");
}

#[test]
fn attach_print_and_detach_bind_a_shell_and_save_its_directory() {
    let Some(d) = daemon() else { return };
    let ws = Workspace::new();
    create(&d, "at", &ws);

    // eval'd by a shell outside the workspace: it lands in the workspace, attached.
    let out = ok(sh(
        &d,
        Path::new("/"),
        r#"eval "$("$RUSH" session attach at --print)"; echo "$RUSH_SESSION"; pwd; echo $$;
           "$RUSH" --json session show"#,
    )
    .output()
    .unwrap());
    let l = lines(&out);
    assert_eq!(l[..2], ["at".to_owned(), ws.s().to_owned()], "{}", describe(&out));
    let shell_pid: i64 = l[2].parse().unwrap();
    let detail: Value = serde_json::from_str(&l[3..].join("\n")).unwrap();
    let atts = detail["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 1, "{detail}");
    assert_eq!(atts[0]["pid"], shell_pid, "the attachment is not the eval'ing shell");
    assert_eq!(atts[0]["uid"], 0);
    // That shell is gone: its attachment is pruned.
    assert_eq!(show(&d, "at")["attachments"], serde_json::json!([]));
    assert_eq!(d.rush_json(&["session", "list"])[0]["attached"], 0);

    // The exact lines, single-quoted.
    let out = ok(sh(&d, Path::new("/"), r#""$RUSH" session attach at --print"#).output().unwrap());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("export RUSH_SESSION='at'\ncd '{}'\n", ws.s())
    );

    // Detach saves the directory (as the workspace path shows it); the next attach goes there.
    let out = ok(sh(
        &d,
        Path::new("/"),
        r#"eval "$("$RUSH" session attach at --print)"; cd "sub dir/deeper";
           eval "$("$RUSH" session detach --print)"; echo "[$RUSH_SESSION]""#,
    )
    .output()
    .unwrap());
    assert_eq!(lines(&out), ["[]"], "{}", describe(&out));
    let deeper = ws.p("sub dir/deeper");
    assert_eq!(show(&d, "at")["session"]["cwd"], deeper.as_str());
    let out =
        ok(sh(&d, Path::new("/"), r#"eval "$("$RUSH" session attach at --print)"; pwd"#).output().unwrap());
    assert_eq!(lines(&out), std::slice::from_ref(&deeper), "{}", describe(&out));
    let out = ok(sh(&d, Path::new("/"), r#""$RUSH" session attach at --print"#).output().unwrap());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cd '/tmp/")
            && lines(&out)[1].ends_with("/ws/sub dir/deeper'")
    );

    // Detaching what is not attached.
    fails_with(&rush_with(&d, Path::new("/"), None, &["session", "detach"]), 1, "not attached");
    fails_with(
        &rush_with(&d, Path::new("/"), Some("at"), &["session", "detach"]),
        1,
        "no attachment from shell pid",
    );

    // The subshell: in the saved directory with RUSH_SESSION set, detached when it exits.
    let mut child = d
        .rush_cmd(&["session", "attach", "at"])
        .current_dir("/")
        .env("SHELL", "/bin/sh")
        .env("RUSH_SOCKET", &d.socket)
        .env("RUSH", bin("rush"))
        .env_remove("RUSH_SESSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo \"$RUSH_SESSION\"; pwd; echo $$; \"$RUSH\" --json session show | tr -d '\\n'; echo; exit 7\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "the shell's status is rush's: {}", describe(&out));
    let l = lines(&out);
    assert_eq!(l[..2], ["at".to_owned(), deeper.clone()], "{}", describe(&out));
    let sub_pid: i64 = l[2].parse().unwrap();
    let inside: Value = serde_json::from_str(&l[3]).unwrap();
    assert_eq!(inside["attachments"][0]["pid"], sub_pid, "{inside}");
    assert_eq!(show(&d, "at")["attachments"], serde_json::json!([]), "not detached after the shell exited");
    let detached = audit_of(&d, "session_detached");
    assert!(detached.iter().any(|r| r["event"]["pid"] == sub_pid && r["session"] == "at"), "{detached:?}");
    // A shell that cannot run: the error names it, and no attachment is left behind.
    let out = d
        .rush_cmd(&["session", "attach", "at"])
        .current_dir("/")
        .env("SHELL", "/nonexistent/shell")
        .env("RUSH_SOCKET", &d.socket)
        .env_remove("RUSH_SESSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("cannot start the shell /nonexistent/shell"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        show(&d, "at")["attachments"],
        serde_json::json!([]),
        "an attachment outlived a shell that never ran"
    );
    let attached = audit_of(&d, "session_attached");
    assert!(attached.len() >= 4 && attached.iter().all(|r| r["event"]["caller_uid"] == 0), "{attached:?}");
}

#[test]
fn rush_session_is_the_default_session_of_checkpoints_and_agents() {
    let Some(d) = daemon() else { return };
    let (ws, other) = (Workspace::new(), Workspace::new());
    create(&d, "env", &ws);
    create(&d, "other", &other);
    let outside = Path::new("/");

    let out = ok(rush_with(&d, outside, Some("env"), &["--json", "checkpoint", "c1"]));
    let cp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cp["session"], "env", "{cp}");
    // --session wins over RUSH_SESSION; RUSH_SESSION over the working directory.
    let out = ok(rush_with(&d, outside, Some("env"), &["--json", "checkpoint", "c2", "--session", "other"]));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["session"], "other");
    let out = ok(rush_with(&d, &other.path, Some("env"), &["--json", "checkpoint", "c3"]));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["session"], "env");
    ok(rush_with(&d, outside, Some("env"), &["session", "set", "k", "v"]));
    assert_eq!(ok(d.rush(&["session", "get", "k", "--session", "env"])).stdout, b"v\n");
    let tl = ok(rush_with(&d, outside, Some("env"), &["--json", "timeline", "list"]));
    assert_eq!(
        serde_json::from_slice::<Value>(&tl.stdout).unwrap()["checkpoints"].as_array().unwrap().len(),
        2
    );

    // An agent spawned in an attached shell belongs to its session.
    ok(rush_with(&d, outside, Some("env"), &["agent", "spawn", "x", "--detach", "--", "sleep", "30"]));
    assert_eq!(d.rush_json(&["agent", "status", "x"])["session"], "env");
    let list = d.rush_json(&["session", "list"]);
    let env = list.as_array().unwrap().iter().find(|s| s["name"] == "env").unwrap().clone();
    assert_eq!(env["agents"], serde_json::json!(["x"]), "{env}");
    assert_eq!((env["checkpoints"].as_u64(), env["keys"].as_u64()), (Some(2), Some(1)), "{env}");
    assert!(show(&d, "env")["session"]["agents"] == serde_json::json!(["x"]));
    ok(d.rush(&["agent", "kill", "x"]));

    // A RUSH_SESSION naming no session is an error naming it.
    let out = rush_with(&d, &ws.path, Some("gone"), &["checkpoint", "c9"]);
    fails_with(&out, 1, "no session \"gone\"");
    fails_with(&out, 1, "RUSH_SESSION=gone");
    let out = rush_with(&d, outside, Some("gone"), &["agent", "spawn", "y", "--detach", "--", "true"]);
    fails_with(&out, 1, "no session \"gone\"");
    fails_with(
        &rush_with(&d, outside, Some("bad name"), &["session", "get"]),
        1,
        "RUSH_SESSION=\"bad name\"",
    );
}

#[test]
fn keys_directory_attachments_and_checkpoints_survive_a_daemon_crash_and_go_with_rm() {
    let Some(mut d) = daemon() else { return };
    let ws = Workspace::new();
    create(&d, "keep", &ws);
    for (k, v) in TRICKY {
        ok(d.rush(&["session", "set", k, v, "--session", "keep"]));
    }
    ok(d.rush(&["checkpoint", "c1", "--session", "keep"]));
    ok(sh(
        &d,
        Path::new("/"),
        r#"eval "$("$RUSH" session attach keep --print)"; cd "sub dir"; "$RUSH" session detach --print"#,
    )
    .output()
    .unwrap());
    // A shell that stays attached across the crash (exec keeps its pid).
    let mut held = sh(
        &d,
        Path::new("/"),
        r#"eval "$("$RUSH" session attach keep --print)"; echo "$$ attached"; exec sleep 60"#,
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(held.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("{} attached", held.id()));

    d.kill9();
    d.restart();

    for (k, v) in TRICKY {
        let out = ok(d.rush(&["session", "get", k, "--session", "keep"]));
        assert_eq!(out.stdout, format!("{v}\n").into_bytes(), "{k} after the crash");
    }
    let detail = show(&d, "keep");
    assert_eq!(detail["session"]["cwd"], ws.p("sub dir"), "{detail}");
    assert_eq!(detail["checkpoints"], serde_json::json!(["c1"]), "{detail}");
    assert_eq!(detail["attachments"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(detail["attachments"][0]["pid"], held.id(), "{detail}");
    let out =
        ok(sh(&d, Path::new("/"), r#"eval "$("$RUSH" session attach keep --print)"; pwd"#).output().unwrap());
    assert_eq!(lines(&out), [ws.p("sub dir")]);

    held.kill().unwrap();
    held.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || show(&d, "keep")["attachments"] == serde_json::json!([])));
    assert_eq!(d.rush_json(&["session", "list"])[0]["attached"], 0);

    // rm takes the keys and the directory with it: a new session of the same name starts empty.
    ok(d.rush(&["session", "rm", "keep"]));
    create(&d, "keep", &ws);
    assert_eq!(d.rush_json(&["session", "get", "--session", "keep"]), serde_json::json!({}));
    let detail = show(&d, "keep");
    assert_eq!(detail["session"]["cwd"], Value::Null, "{detail}");
    assert_eq!(detail["keys"], serde_json::json!([]), "{detail}");
}

//! What a tool call asks the gate: the hook's JSON on stdin, turned into the shell command
//! the daemon judges.
//!
//! Read leniently where the tools may grow (unknown fields, unknown tools: no opinion) and
//! strictly where a decision depends on it (a Bash call without a command string is an
//! error, never an empty command judged harmless). File tools are judged as the shell
//! command that does the same thing to the same path, so that one set of rules (workspace,
//! system paths, secrets, the agent's tokens) judges both: a write to P as `: > 'P'`, a
//! read as `cat -- 'P'`, a delete as `rm -f -- 'P'`.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::cli::HookTool;

/// A tool call the gate is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The tool's name as the payload gives it (`Bash`, `Write`, `apply_patch`).
    pub tool: String,
    /// The payload's `cwd` when it is absolute; None: the hook's own working directory.
    pub cwd: Option<PathBuf>,
    pub subject: Subject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A shell command line, judged as it is.
    Command(String),
    /// What a file tool does, judged as the equivalent shell command.
    Files(Vec<FileOp>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    Write(String),
    Read(String),
    Delete(String),
}

impl Subject {
    /// The command line the daemon judges.
    pub fn command(&self) -> String {
        match self {
            Subject::Command(c) => c.clone(),
            Subject::Files(ops) => ops
                .iter()
                .map(|op| match op {
                    FileOp::Write(p) => format!(": > {}", quote(p)),
                    FileOp::Read(p) => format!("cat -- {}", quote(p)),
                    FileOp::Delete(p) => format!("rm -f -- {}", quote(p)),
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// What the payload asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A call the gate judges.
    Judge(Call),
    /// Nothing for the gate (another tool, another event): say nothing, the tool's own
    /// permission flow goes on. The string says why, for stderr.
    NoOpinion(String),
}

/// `s` as one shell word: single-quoted, each `'` written `'\''`. Newlines, spaces, `$`,
/// backslashes and globs are literal inside single quotes.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Reads a PreToolUse payload of `tool`'s hook contract. An error is a payload the hook
/// cannot judge (not JSON, a field missing or of the wrong type): never a call let through.
pub fn parse(tool: HookTool, input: &str) -> Result<Parsed, String> {
    let value: Value = serde_json::from_str(input).map_err(|e| format!("the hook input is not JSON: {e}"))?;
    let Value::Object(payload) = value else {
        return Err("the hook input is not a JSON object".into());
    };
    match payload.get("hook_event_name") {
        None => {}
        Some(Value::String(event)) if event == "PreToolUse" => {}
        Some(Value::String(event)) => {
            return Ok(Parsed::NoOpinion(format!("event {event:?}: rush answers PreToolUse only")));
        }
        Some(other) => return Err(format!("hook_event_name is {}, not a string", kind(other))),
    }
    let name = match payload.get("tool_name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => return Err(format!("tool_name is {}, not a string", kind(other))),
        None => return Err("the hook input has no tool_name".into()),
    };
    let cwd = payload.get("cwd").and_then(Value::as_str).map(PathBuf::from).filter(|p| p.is_absolute());
    let empty = Map::new();
    let input = match payload.get("tool_input") {
        Some(Value::Object(input)) => input,
        None | Some(Value::Null) => &empty,
        Some(other) => return Err(format!("{name}: tool_input is {}, not an object", kind(other))),
    };
    let subject = match (tool, name.as_str()) {
        (_, "Bash") => Subject::Command(command(&name, input)?),
        (HookTool::ClaudeCode, "Edit" | "MultiEdit" | "Write") => {
            Subject::Files(vec![FileOp::Write(path(&name, input, "file_path")?)])
        }
        (HookTool::ClaudeCode, "NotebookEdit") => {
            Subject::Files(vec![FileOp::Write(path(&name, input, "notebook_path")?)])
        }
        (HookTool::ClaudeCode, "Read") => {
            Subject::Files(vec![FileOp::Read(path(&name, input, "file_path")?)])
        }
        (HookTool::Codex, "apply_patch") => {
            Subject::Files(patch_ops(&string_field(&name, input, "command")?)?)
        }
        (_, other) => return Ok(Parsed::NoOpinion(format!("tool {other:?}: rush has no rule for it"))),
    };
    let command = subject.command();
    rush_proto::gate::check_command(&command).map_err(|e| format!("{name}: {e}"))?;
    Ok(Parsed::Judge(Call { tool: name, cwd, subject }))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(tool: &str, input: &Map<String, Value>, field: &str) -> Result<String, String> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("{tool}: tool_input.{field} is empty")),
        Some(other) => Err(format!("{tool}: tool_input.{field} is {}, not a string", kind(other))),
        None => Err(format!("{tool}: tool_input has no {field}")),
    }
}

/// A shell tool's command: a string (Claude Code, Codex), or an argv array (older Codex
/// `shell` calls), quoted word by word.
fn command(tool: &str, input: &Map<String, Value>) -> Result<String, String> {
    if let Some(Value::Array(words)) = input.get("command") {
        let words: Option<Vec<&str>> = words.iter().map(Value::as_str).collect();
        return match words {
            Some(w) if !w.is_empty() => Ok(w.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")),
            Some(_) => Err(format!("{tool}: tool_input.command is empty")),
            None => Err(format!("{tool}: tool_input.command has a word that is not a string")),
        };
    }
    string_field(tool, input, "command")
}

fn path(tool: &str, input: &Map<String, Value>, field: &str) -> Result<String, String> {
    string_field(tool, input, field)
}

/// The files a Codex `apply_patch` envelope touches: `*** Add File: P` and `*** Update
/// File: P` write P, `*** Move to: Q` writes Q (and the moved file is deleted), `*** Delete
/// File: P` deletes P. Paths are as written (relative ones resolve against the cwd).
pub fn patch_ops(patch: &str) -> Result<Vec<FileOp>, String> {
    let mut ops = Vec::new();
    let mut updating: Option<String> = None;
    for line in patch.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(p) = line.strip_prefix("*** Add File: ") {
            ops.push(FileOp::Write(p.trim().to_owned()));
            updating = None;
        } else if let Some(p) = line.strip_prefix("*** Update File: ") {
            ops.push(FileOp::Write(p.trim().to_owned()));
            updating = Some(p.trim().to_owned());
        } else if let Some(p) = line.strip_prefix("*** Delete File: ") {
            ops.push(FileOp::Delete(p.trim().to_owned()));
            updating = None;
        } else if let Some(p) = line.strip_prefix("*** Move to: ") {
            let Some(from) = updating.take() else {
                return Err("apply_patch: `*** Move to:` without an `*** Update File:` before it".into());
            };
            ops.push(FileOp::Delete(from));
            ops.push(FileOp::Write(p.trim().to_owned()));
        }
    }
    if ops.is_empty() {
        return Err("apply_patch: the patch names no file (no `*** Add/Update/Delete File:` line)".into());
    }
    if ops
        .iter()
        .any(|op| matches!(op, FileOp::Write(p) | FileOp::Delete(p) | FileOp::Read(p) if p.is_empty()))
    {
        return Err("apply_patch: a file line names no path".into());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judge(tool: HookTool, payload: Value) -> Call {
        match parse(tool, &payload.to_string()) {
            Ok(Parsed::Judge(call)) => call,
            other => panic!("{payload}: {other:?}"),
        }
    }

    fn claude(tool_name: &str, tool_input: Value) -> Value {
        // The documented common fields, and ones a newer Claude Code may add.
        json!({
            "session_id": "abc123",
            "transcript_path": "/home/u/.claude/projects/p/abc123.jsonl",
            "cwd": "/src/app",
            "permission_mode": "default",
            "hook_event_name": "PreToolUse",
            "tool_name": tool_name,
            "tool_input": tool_input,
            "tool_use_id": "toolu_01ABC",
            "some_future_field": {"x": 1},
        })
    }

    #[test]
    fn claude_code_bash_is_its_command_in_the_payload_cwd() {
        let call = judge(
            HookTool::ClaudeCode,
            claude(
                "Bash",
                json!({"command": "cargo test", "description": "Run tests", "timeout": 120000,
                                   "run_in_background": false}),
            ),
        );
        assert_eq!(call.tool, "Bash");
        assert_eq!(call.cwd, Some(PathBuf::from("/src/app")));
        assert_eq!(call.subject, Subject::Command("cargo test".into()));
        assert_eq!(call.subject.command(), "cargo test");
    }

    #[test]
    fn claude_code_file_tools_become_the_equivalent_shell_command() {
        let cases = [
            ("Write", json!({"file_path": "/src/app/a.rs", "content": "fn main(){}"}), ": > '/src/app/a.rs'"),
            (
                "Edit",
                json!({"file_path": "/src/app/a.rs", "old_string": "a", "new_string": "b"}),
                ": > '/src/app/a.rs'",
            ),
            (
                "MultiEdit",
                json!({"file_path": "/etc/passwd", "edits": [{"old_string": "a", "new_string": "b"}]}),
                ": > '/etc/passwd'",
            ),
            (
                "NotebookEdit",
                json!({"notebook_path": "/src/app/n.ipynb", "new_source": "x"}),
                ": > '/src/app/n.ipynb'",
            ),
            (
                "Read",
                json!({"file_path": "/root/.ssh/id_rsa", "offset": 1, "limit": 10}),
                "cat -- '/root/.ssh/id_rsa'",
            ),
        ];
        for (tool, input, expected) in cases {
            let call = judge(HookTool::ClaudeCode, claude(tool, input));
            assert_eq!(call.subject.command(), expected, "{tool}");
        }
    }

    #[test]
    fn unknown_tools_and_events_have_no_opinion() {
        for tool in ["WebFetch", "Task", "Glob", "Grep", "mcp__github__create_issue", "apply_patch"] {
            let p = parse(HookTool::ClaudeCode, &claude(tool, json!({"url": "https://x"})).to_string());
            assert!(matches!(p, Ok(Parsed::NoOpinion(_))), "{tool}: {p:?}");
        }
        let mut post = claude("Bash", json!({"command": "ls"}));
        post["hook_event_name"] = json!("PostToolUse");
        assert!(matches!(parse(HookTool::ClaudeCode, &post.to_string()), Ok(Parsed::NoOpinion(_))));
        // Codex has no Write/Read tools of its own: a name it never sends is not judged.
        let p = parse(HookTool::Codex, &claude("Write", json!({"file_path": "/x"})).to_string());
        assert!(matches!(p, Ok(Parsed::NoOpinion(_))), "{p:?}");
    }

    #[test]
    fn malformed_payloads_are_errors_naming_the_problem() {
        let cases = [
            ("", "not JSON"),
            ("{\"tool_name\": ", "not JSON"),
            ("[1,2]", "not a JSON object"),
            (r#"{"hook_event_name":"PreToolUse"}"#, "no tool_name"),
            (r#"{"tool_name":7}"#, "tool_name is a number"),
            (r#"{"tool_name":"Bash","tool_input":"ls"}"#, "tool_input is a string"),
            (r#"{"tool_name":"Bash","tool_input":{}}"#, "has no command"),
            (r#"{"tool_name":"Bash","tool_input":{"command":"  "}}"#, "command is empty"),
            (r#"{"tool_name":"Bash","tool_input":{"command":["ls",3]}}"#, "not a string"),
            (r#"{"tool_name":"Bash","tool_input":{"command":"ls\u0000x"}}"#, "NUL"),
            (r#"{"tool_name":"Write","tool_input":{"content":"x"}}"#, "has no file_path"),
            (r#"{"tool_name":"Read","tool_input":{"file_path":null}}"#, "file_path is null"),
            (r#"{"hook_event_name":3,"tool_name":"Bash"}"#, "hook_event_name is a number"),
        ];
        for (input, expected) in cases {
            let err = parse(HookTool::ClaudeCode, input).expect_err(input);
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn a_relative_or_missing_cwd_is_left_to_the_process() {
        let mut p = claude("Bash", json!({"command": "ls"}));
        p["cwd"] = json!("relative/dir");
        assert_eq!(judge(HookTool::ClaudeCode, p.clone()).cwd, None);
        p.as_object_mut().unwrap().remove("cwd");
        assert_eq!(judge(HookTool::ClaudeCode, p).cwd, None);
    }

    #[test]
    fn codex_bash_and_apply_patch() {
        // Codex's documented PreToolUse input (codex-rs/hooks/schema/generated).
        let bash = json!({
            "session_id": "t-1", "turn_id": "turn-1", "transcript_path": null, "cwd": "/src/app",
            "hook_event_name": "PreToolUse", "model": "gpt-5", "permission_mode": "default",
            "tool_name": "Bash", "tool_use_id": "call-1", "tool_input": {"command": "rm -rf /"},
        });
        assert_eq!(judge(HookTool::Codex, bash.clone()).subject.command(), "rm -rf /");
        let mut argv = bash.clone();
        argv["tool_input"]["command"] = json!(["bash", "-lc", "rm -rf ~"]);
        assert_eq!(judge(HookTool::Codex, argv).subject.command(), "'bash' '-lc' 'rm -rf ~'");
        let mut patch = bash;
        patch["tool_name"] = json!("apply_patch");
        patch["tool_input"]["command"] = json!(
            "*** Begin Patch\n*** Add File: src/new.rs\n+fn x() {}\n*** Update File: src/old.rs\n*** Move to: src/moved.rs\n\
             @@\n-a\n+b\n*** Delete File: /etc/hosts\n*** End Patch\n"
        );
        let call = judge(HookTool::Codex, patch.clone());
        assert_eq!(
            call.subject.command(),
            ": > 'src/new.rs'; : > 'src/old.rs'; rm -f -- 'src/old.rs'; : > 'src/moved.rs'; rm -f -- '/etc/hosts'"
        );
        patch["tool_input"]["command"] = json!("*** Begin Patch\n*** End Patch\n");
        assert!(parse(HookTool::Codex, &patch.to_string()).unwrap_err().contains("names no file"));
        for tool in ["mcp__fs__read", "spawn_agent", "dynamic__x__y"] {
            let mut other = patch.clone();
            other["tool_name"] = json!(tool);
            assert!(matches!(parse(HookTool::Codex, &other.to_string()), Ok(Parsed::NoOpinion(_))), "{tool}");
        }
    }

    #[test]
    fn quoting_survives_quotes_spaces_newlines_and_shell_syntax() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        let nasty = [
            "/tmp/a b/c",
            "/tmp/it's/x",
            "/tmp/new\nline",
            "/tmp/$(rm -rf ~)/`id`/$HOME/*/?/[a]",
            "/tmp/'';rm -rf /;'",
            "/tmp/back\\slash\t\"dq\"",
            "-n",
        ];
        // What bash makes of the quoted word is the path itself, byte for byte.
        for p in nasty {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", quote(p)))
                .output()
                .expect("bash");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), p, "{}", quote(p));
        }
        let call =
            judge(HookTool::ClaudeCode, claude("Write", json!({"file_path": "/tmp/it's\n; rm -rf /"})));
        assert_eq!(call.subject.command(), ": > '/tmp/it'\\''s\n; rm -rf /'");
    }
}

//! `rush hook install`: the hook's entry in a tool's hooks file, merged in place.
//!
//! Both tools read the same shape: `{"hooks": {"PreToolUse": [{"matcher": M, "hooks":
//! [{"type": "command", "command": C}]}]}}` (Claude Code: settings.json, "Hook
//! configuration" of https://code.claude.com/docs/en/hooks; Codex: hooks.json, whose root
//! may hold only `description` and `hooks`). Everything else in the file is kept, in its
//! order; rush's own entry (a command hook running `rush ... hook TOOL`) is updated where
//! it is, so installing twice leaves one; a new entry goes last, so the positional keys
//! Codex records its trust under (`FILE:pre_tool_use:GROUP:HANDLER`) stay those of the
//! hooks already there. A file that is not JSON is refused, never overwritten.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::ordered::Json;
use crate::cli::HookTool;

/// The entry rush installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEntry {
    pub tool: HookTool,
    pub matcher: &'static str,
    /// The shell command the tool runs.
    pub command: String,
}

/// The tools' names for the tool calls rush judges, as a matcher (both tools treat `A|B`
/// as alternatives; the anchors make Codex's regex match whole names).
pub fn matcher(tool: HookTool) -> &'static str {
    match tool {
        HookTool::ClaudeCode => "Bash|Edit|MultiEdit|Write|NotebookEdit|Read",
        HookTool::Codex => "^(Bash|apply_patch)$",
    }
}

/// The subcommand word of `tool` (`rush hook claude-code`).
pub fn subcommand(tool: HookTool) -> &'static str {
    match tool {
        HookTool::ClaudeCode => "claude-code",
        HookTool::Codex => "codex",
    }
}

/// Where `tool` reads its hooks from by default: `~/.claude/settings.json`;
/// `$CODEX_HOME/hooks.json`, else `~/.codex/hooks.json`.
pub fn default_path(tool: HookTool) -> anyhow::Result<PathBuf> {
    let home = || -> anyhow::Result<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("HOME is not set: give the file with --settings"))
    };
    Ok(match tool {
        HookTool::ClaudeCode => home()?.join(".claude/settings.json"),
        HookTool::Codex => match std::env::var_os("CODEX_HOME").filter(|h| !h.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("hooks.json"),
            None => home()?.join(".codex/hooks.json"),
        },
    })
}

/// Whether `command` runs `rush ... hook SUBCOMMAND`: the program's file name is `rush`
/// (the path may be single-quoted) and the words `hook SUBCOMMAND` follow.
pub fn is_rush_hook(command: &str, tool: HookTool) -> bool {
    let command = command.trim_start();
    let (program, rest) = match command.strip_prefix('\'') {
        Some(quoted) => match quoted.split_once('\'') {
            Some((program, rest)) => (program, rest),
            None => return false,
        },
        None => command.split_once(char::is_whitespace).unwrap_or((command, "")),
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    Path::new(program).file_name().is_some_and(|n| n == "rush")
        && words.windows(2).any(|w| w[0] == "hook" && w[1] == subcommand(tool))
}

/// `text` (the file's content; None: no file) with `entry` merged in, and whether that
/// changed anything. `path` only names the file in errors.
pub fn merge(text: Option<&str>, path: &Path, entry: &HookEntry) -> anyhow::Result<(Json, bool)> {
    let original = match text {
        Some(t) if !t.trim().is_empty() => Some(serde_json::from_str::<Json>(t).map_err(|e| {
            anyhow!(
                "{}: not valid JSON ({e}); nothing was changed: fix the file, or move it away",
                path.display()
            )
        })?),
        _ => None,
    };
    let mut root = original.clone().unwrap_or_else(Json::object);
    if !matches!(root, Json::Object(_)) {
        bail!("{}: the file holds {}, not a JSON object; nothing was changed", path.display(), root.kind());
    }
    let shape = |what: &str, v: &Json, want: &str| {
        anyhow!("{}: {what} is {}, not {want}; nothing was changed", path.display(), v.kind())
    };
    let hooks = root.entry("hooks", Json::object()).expect("an object");
    if !matches!(hooks, Json::Object(_)) {
        return Err(shape("\"hooks\"", hooks, "an object"));
    }
    let groups = hooks.entry("PreToolUse", Json::Array(vec![])).expect("an object");
    let Json::Array(groups) = groups else {
        return Err(shape("\"hooks\".\"PreToolUse\"", groups, "an array"));
    };

    // Every handler of ours, by (group, handler) index.
    let mut ours = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if let Some(Json::Array(handlers)) = group.get("hooks") {
            for (h, handler) in handlers.iter().enumerate() {
                if handler.get("command").and_then(Json::as_str).is_some_and(|c| is_rush_hook(c, entry.tool))
                {
                    ours.push((g, h));
                }
            }
        }
    }
    match ours.split_first() {
        None => groups.push(Json::Object(vec![
            ("matcher".into(), Json::string(entry.matcher)),
            ("hooks".into(), Json::Array(vec![handler(entry)])),
        ])),
        Some((&(g, h), duplicates)) => {
            // Later copies go, last first so the indices hold; a group left empty goes too.
            for &(dg, dh) in duplicates.iter().rev() {
                if let Some(Json::Array(handlers)) = groups[dg].get_mut("hooks") {
                    handlers.remove(dh);
                    if handlers.is_empty() && dg != g {
                        groups.remove(dg);
                    }
                }
            }
            let group = &mut groups[g];
            group.set("matcher", Json::string(entry.matcher));
            if let Some(Json::Array(handlers)) = group.get_mut("hooks") {
                // Keys of its own (a timeout, a status message) stay.
                handlers[h].set("type", Json::string("command"));
                handlers[h].set("command", Json::string(entry.command.clone()));
            }
        }
    }
    let changed = original.as_ref() != Some(&root);
    Ok((root, changed))
}

fn handler(entry: &HookEntry) -> Json {
    Json::Object(vec![
        ("type".into(), Json::string("command")),
        ("command".into(), Json::string(entry.command.clone())),
    ])
}

/// The file's text as written: pretty-printed, two spaces, a final newline.
pub fn render(root: &Json) -> String {
    let mut text = serde_json::to_string_pretty(root).expect("JSON values serialize");
    text.push('\n');
    text
}

/// Reads `path`: None when there is no such file.
pub fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

/// Replaces `path`'s content at once (a temporary file beside it, renamed over it): a
/// reader sees the old file or the new one, never half of one. A symlink is followed (the
/// file it points to is replaced, the link stays); mode and owner are kept; missing
/// directories are created.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot resolve {}", path.display()))),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let old = std::fs::metadata(&target).ok();
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.rush-{}.tmp", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mode = old.as_ref().map_or(0o644, |m| m.permissions().mode() & 0o7777);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        if let Some(m) = &old {
            let mine = f.metadata().context("cannot stat the new file")?;
            if (m.uid(), m.gid()) != (mine.uid(), mine.gid()) {
                std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid())).with_context(|| {
                    format!("cannot give {} the owner of {}", tmp.display(), target.display())
                })?;
            }
        }
        // After chown, which clears set-id bits.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        std::fs::rename(&tmp, &target).with_context(|| format!("cannot replace {}", target.display()))?;
        // The rename itself, on disk: best effort (some file systems refuse to sync a directory).
        let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSH: &str = "/usr/local/bin/rush hook claude-code";

    fn entry(command: &str) -> HookEntry {
        HookEntry {
            tool: HookTool::ClaudeCode,
            matcher: matcher(HookTool::ClaudeCode),
            command: command.into(),
        }
    }

    fn merged(text: Option<&str>, command: &str) -> (serde_json::Value, bool) {
        let (json, changed) = merge(text, Path::new("/h/.claude/settings.json"), &entry(command)).unwrap();
        (serde_json::from_str(&render(&json)).unwrap(), changed)
    }

    fn ours(v: &serde_json::Value) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for g in v["hooks"]["PreToolUse"].as_array().unwrap() {
            for h in g["hooks"].as_array().unwrap() {
                let c = h["command"].as_str().unwrap();
                if is_rush_hook(c, HookTool::ClaudeCode) {
                    found.push((g["matcher"].as_str().unwrap().to_owned(), c.to_owned()));
                }
            }
        }
        found
    }

    #[test]
    fn no_file_or_an_empty_one_gets_the_documented_entry() {
        for text in [None, Some(""), Some("  \n"), Some("{}")] {
            let (v, changed) = merged(text, RUSH);
            assert!(changed);
            assert_eq!(
                v,
                serde_json::json!({"hooks": {"PreToolUse": [{
                    "matcher": "Bash|Edit|MultiEdit|Write|NotebookEdit|Read",
                    "hooks": [{"type": "command", "command": RUSH}],
                }]}}),
                "{text:?}"
            );
        }
    }

    #[test]
    fn other_settings_and_hooks_are_kept_in_their_order() {
        let text = r#"{
  "model": "opus",
  "permissions": {"allow": ["Bash(npm run lint)"], "deny": ["Read(./.env)"]},
  "hooks": {
    "PostToolUse": [{"matcher": "Write", "hooks": [{"type": "command", "command": "prettier --write"}]}],
    "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "/opt/audit.sh", "timeout": 5}]}]
  },
  "env": {"A": "1"}
}"#;
        let (json, changed) = merge(Some(text), Path::new("s.json"), &entry(RUSH)).unwrap();
        assert!(changed);
        let out = render(&json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let before: serde_json::Value = serde_json::from_str(text).unwrap();
        for key in ["model", "permissions", "env"] {
            assert_eq!(v[key], before[key], "{key}");
        }
        assert_eq!(v["hooks"]["PostToolUse"], before["hooks"]["PostToolUse"]);
        let pre = v["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre[0], before["hooks"]["PreToolUse"][0], "the existing hook stays first");
        assert_eq!(pre.len(), 2);
        // Key order as in the file (serde_json::Value would have sorted them).
        let at = |k: &str| out.find(k).unwrap();
        assert!(
            at("\"model\"") < at("\"permissions\"")
                && at("\"permissions\"") < at("\"hooks\"")
                && at("\"hooks\"") < at("\"env\"")
        );
        assert!(at("\"PostToolUse\"") < at("\"PreToolUse\""));
    }

    #[test]
    fn installing_twice_leaves_one_entry_updated_in_place() {
        let (first, _) = merged(None, RUSH);
        let (again, changed) = merged(Some(&first.to_string()), RUSH);
        assert!(!changed);
        assert_eq!(again, first);
        // A moved binary, and an entry with a timeout of its own and a stale matcher.
        let text = r#"{"hooks":{"PreToolUse":[
            {"matcher":"Write","hooks":[{"type":"command","command":"lint.sh"}]},
            {"matcher":"Bash","hooks":[{"type":"command","command":"'/old place/rush' hook claude-code --trust low","timeout":30}]},
            {"matcher":"Read","hooks":[{"type":"command","command":"/usr/bin/rush hook claude-code"}]}
        ]}}"#;
        let (v, changed) = merged(Some(text), "/new/rush hook claude-code");
        assert!(changed);
        assert_eq!(
            ours(&v),
            [(
                "Bash|Edit|MultiEdit|Write|NotebookEdit|Read".to_owned(),
                "/new/rush hook claude-code".to_owned()
            )]
        );
        let pre = v["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre.len(), 2, "{v:#}");
        assert_eq!(pre[0]["hooks"][0]["command"], "lint.sh");
        assert_eq!(pre[1]["hooks"][0]["timeout"], 30, "its own keys stay");
    }

    #[test]
    fn invalid_json_and_wrong_shapes_are_refused_naming_the_file() {
        for (text, expected) in [
            ("{\"hooks\": {", "not valid JSON"),
            ("// comment\n{}", "not valid JSON"),
            ("[]", "holds an array"),
            (r#"{"hooks": []}"#, "\"hooks\" is an array"),
            (r#"{"hooks": {"PreToolUse": {}}}"#, "\"PreToolUse\" is an object"),
        ] {
            let err = merge(Some(text), Path::new("/h/.claude/settings.json"), &entry(RUSH))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/h/.claude/settings.json: ") && err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn rush_hooks_are_recognised_by_program_and_subcommand() {
        use HookTool::*;
        assert!(is_rush_hook("/usr/bin/rush hook claude-code", ClaudeCode));
        assert!(is_rush_hook("rush --socket /s hook claude-code --trust low", ClaudeCode));
        assert!(is_rush_hook("'/opt/my tools/rush' hook codex", Codex));
        assert!(!is_rush_hook("/usr/bin/rush hook codex", ClaudeCode));
        assert!(!is_rush_hook("/usr/bin/rushx hook claude-code", ClaudeCode));
        assert!(!is_rush_hook("echo rush hook claude-code", ClaudeCode));
        assert!(!is_rush_hook("'/unterminated/rush hook claude-code", ClaudeCode));
    }

    #[test]
    fn writes_replace_the_file_keeping_mode_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new/dir/settings.json");
        write_atomically(&fresh, "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "{}\n");
        let real = dir.path().join("dotfiles-settings.json");
        std::fs::write(&real, "old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("settings.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, "new\n").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new\n");
        assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

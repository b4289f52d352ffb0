//! /payload/run: what the guest's /init runs (busybox sh, as root, stdin /dev/null). It
//! puts the workspace's copy at the workspace's own path, enters the command's directory
//! in it, and runs the command with the kit's shell between two markers the host reads on
//! the serial console.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where the copy travels in the payload; bind-mounted at the workspace's path at run time
/// (a path under /tmp or /run would be hidden by the tmpfs /init mounts there).
pub const COPY: &str = "payload/ws";

/// The lines that frame the command's output; `nonce` makes them unlikely to be printed
/// by anything else. A command that reads /payload/run can forge the status line: it
/// could as well have exited with that status, so nothing is gained by it.
pub fn start_marker(nonce: &str) -> String {
    format!("@@RUSH-START-{nonce}@@")
}

/// The status line is `{exit_prefix}<status>@@`.
pub fn exit_prefix(nonce: &str) -> String {
    format!("@@RUSH-EXIT-{nonce}=")
}

/// `s` as one single-quoted shell word: every byte stands for itself inside '...', and a
/// quote is ended, escaped and reopened. Newlines, `$`, backquotes and backslashes need
/// nothing.
pub fn quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The script. `workspace` is the host path the copy appears at, `rel` the command's
/// directory inside it, `shell` the kit's shell.
pub fn run_script(shell: &str, workspace: &Path, rel: &Path, command: &str, nonce: &str) -> Vec<u8> {
    let mut s: Vec<u8> = Vec::new();
    let mut line = |parts: &[&[u8]]| {
        for p in parts {
            s.extend_from_slice(p);
        }
        s.push(b'\n');
    };
    line(&[b"#!/bin/sh"]);
    line(&[b"# Written by rush (rush-userspace/src/commands/guest/script.rs): one vm-only command"]);
    line(&[b"# on a copy of the workspace, in a guest thrown away after it."]);
    // Only emergencies on the console: kernel messages would land in the command's output.
    line(&[b"dmesg -n 1 2>/dev/null"]);
    // No \n -> \r\n on the console: the output reaches the host byte for byte.
    line(&[b"stty -F /dev/console -opost 2>/dev/null"]);
    line(&[b"n=", &quote(nonce.as_bytes())]);
    line(&[b"ws=", &quote(workspace.as_os_str().as_bytes())]);
    line(&[b"if ! { mkdir -p \"$ws\" && mount -o bind /", COPY.as_bytes(), b" \"$ws\"; } 2>/dev/null; then"]);
    line(&[b"    echo \"rush-guest: the copy stays at /", COPY.as_bytes(), b" (cannot mount it at $ws)\""]);
    line(&[b"    ws=/", COPY.as_bytes()]);
    line(&[b"fi"]);
    line(&[b"export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    line(&[b"echo \"@@RUSH-START-$n@@\""]);
    let mut dir = b"\"$ws\"".to_vec();
    if !rel.as_os_str().is_empty() {
        dir.extend_from_slice(&quote(&[b"/", rel.as_os_str().as_bytes()].concat()));
    }
    line(&[b"if cd ", &dir, b"; then"]);
    line(&[b"    ", &quote(shell.as_bytes()), b" -c ", &quote(command.as_bytes())]);
    line(&[b"    rc=$?"]);
    line(&[b"else"]);
    line(&[b"    rc=126"]);
    line(&[b"fi"]);
    // The newline first: the command's last line may not have ended (the host drops it).
    line(&[b"printf '\\n@@RUSH-EXIT-%s=%s@@\\n' \"$n\" \"$rc\""]);
    line(&[b"exit 0"]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's sh reads the quoted word back as the original bytes.
    fn through_sh(s: &str) -> Vec<u8> {
        let word = String::from_utf8(quote(s.as_bytes())).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {word}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn quoted_words_survive_quotes_newlines_dollars_and_backslashes() {
        for s in [
            "",
            "plain",
            "it's",
            "''",
            "a \"b\" c",
            "line one\nline two\n",
            "echo $HOME ${x:-y} $(id) `id`",
            "back\\slash \\n \\'",
            "tab\there; exit 7 & | > < * ? ~ # !",
            "ünïcödé ✓",
        ] {
            assert_eq!(through_sh(s), s.as_bytes(), "{s:?}");
        }
    }

    #[test]
    fn the_script_runs_the_command_in_its_directory_between_the_markers() {
        let cmd = "echo 'it''s' \"$HOME\"\nexit 7";
        let s = run_script("/usr/bin/bash", Path::new("/src/my ws"), Path::new("sub/dir"), cmd, "abc123");
        let s = String::from_utf8(s).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains("\nws='/src/my ws'\n"), "{s}");
        assert!(s.contains("mount -o bind /payload/ws \"$ws\""), "{s}");
        assert!(s.contains("\nif cd \"$ws\"'/sub/dir'; then\n"), "{s}");
        assert!(s.contains("'/usr/bin/bash' -c 'echo '\\''it'\\'''\\''s'\\'' \"$HOME\"\nexit 7'\n"), "{s}");
        let start = s.find("echo \"@@RUSH-START-$n@@\"").unwrap();
        let run = s.find("-c 'echo").unwrap();
        let exit = s.find("@@RUSH-EXIT-%s=%s@@").unwrap();
        assert!(start < run && run < exit, "{s}");
        // The marker lines never appear verbatim in the script: reading it back (cat
        // /payload/run) prints nothing the host takes for them.
        assert!(!s.contains(&start_marker("abc123")) && !s.contains(&exit_prefix("abc123")), "{s}");
        let top =
            String::from_utf8(run_script("/bin/sh", Path::new("/w"), Path::new(""), "true", "n")).unwrap();
        assert!(top.contains("\nif cd \"$ws\"; then\n"), "{top}");
    }
}

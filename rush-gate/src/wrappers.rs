//! Programs whose arguments are themselves a command: `sudo CMD`, `env VAR=x CMD`,
//! `xargs CMD`, `find -exec CMD \;`, or code to parse: `bash -c STR`, `eval ARGS`,
//! `su -c STR`, `ssh HOST CMD`. The walker judges what they run as commands of their own.

use crate::words::Word;

/// What a command runs besides itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Runs these words as a command.
    Exec {
        via: String,
        words: Vec<Word>,
        /// Its arguments are completed at run time (xargs items, find's `{}`).
        dynamic: bool,
    },
    /// Runs this text as shell code.
    Code {
        via: String,
        text: String,
        /// The argv indices the code came from (their substitutions are walked as part of
        /// the code, not twice).
        from: Vec<usize>,
        /// `eval` of words only known when it runs.
        computed: bool,
    },
}

/// Shells whose `-c STRING` is code, and which run a script read from standard input.
pub(crate) const SHELLS: &[&str] =
    &["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "yash", "posh", "rbash", "rush"];

pub(crate) fn is_shell(program: &str) -> bool {
    SHELLS.contains(&program)
}

/// Whether the shell invocation runs a `-c` string (so stdin is not its script).
pub(crate) fn shell_code_index(words: &[Word]) -> Option<usize> {
    let mut have_c = false;
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let a = w.text.as_str();
        if a == "--" || a == "-" {
            i += 1;
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            i += if matches!(long, "rcfile" | "init-file") { 2 } else { 1 };
            continue;
        }
        if a.len() > 1 && (a.starts_with('-') || a.starts_with('+')) {
            let letters = &a[1..];
            have_c |= letters.contains('c');
            // `-o OPTION` / `-O OPTION` take the next word.
            i += if letters.contains('o') || letters.contains('O') { 2 } else { 1 };
            continue;
        }
        break;
    }
    (have_c && i < words.len()).then_some(i)
}

/// Whether a shell invocation reads its script from standard input: no `-c`, and no
/// script operand (or `-`, `/dev/stdin`), or `-s`.
/// Whether `source FILE` / `. FILE` reads its script from standard input (`. /dev/stdin
/// <<< 'rm -rf /'`): then a here-doc or here-string fed to it is code, as for a shell.
pub(crate) fn sources_stdin(program: &str, words: &[Word]) -> bool {
    matches!(program, "source" | ".")
        && words
            .get(1)
            .is_some_and(|w| matches!(w.text.as_str(), "/dev/stdin" | "/dev/fd/0" | "/proc/self/fd/0" | "-"))
}

pub(crate) fn shell_reads_stdin(words: &[Word]) -> bool {
    if shell_code_index(words).is_some() {
        return false;
    }
    if words.iter().skip(1).any(|w| {
        w.text == "-s"
            || (w.text.starts_with('-')
                && !w.text.starts_with("--")
                && w.text.contains('s')
                && w.text.len() <= 4)
    }) {
        return true;
    }
    let i = first_operand(words, 1, &["-o", "-O", "--rcfile", "--init-file"]);
    match words.get(i) {
        None => true,
        Some(w) => matches!(w.text.as_str(), "-" | "/dev/stdin" | "/proc/self/fd/0" | "/dev/fd/0"),
    }
}

/// Index of the first word at or after `start` that is not an option (nor an option's
/// value, for the options in `takes_value`); past `--` everything is an operand.
pub(crate) fn first_operand(words: &[Word], start: usize, takes_value: &[&str]) -> usize {
    let mut i = start;
    while let Some(w) = words.get(i) {
        let a = w.text.as_str();
        if a == "--" {
            return i + 1;
        }
        if a.len() < 2 || !a.starts_with('-') {
            return i;
        }
        i += if takes_value.contains(&a) { 2 } else { 1 };
    }
    i
}

fn exec(via: &str, words: &[Word], from: usize, dynamic: bool) -> Vec<Plan> {
    match words.get(from..) {
        Some(rest) if !rest.is_empty() => {
            vec![Plan::Exec { via: via.to_owned(), words: rest.to_vec(), dynamic }]
        }
        _ => Vec::new(),
    }
}

fn code(via: &str, words: &[Word], idx: usize) -> Vec<Plan> {
    match words.get(idx) {
        Some(w) => {
            vec![Plan::Code { via: via.to_owned(), text: w.text.clone(), from: vec![idx], computed: false }]
        }
        None => Vec::new(),
    }
}

/// Joins words from `from` on as code (`eval a b`, `ssh host cmd args`, `watch cmd`).
fn joined(via: &str, words: &[Word], from: usize, eval: bool) -> Vec<Plan> {
    let Some(rest) = words.get(from..).filter(|r| !r.is_empty()) else { return Vec::new() };
    let text = rest.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
    let computed = eval && rest.iter().any(|w| w.dynamic);
    vec![Plan::Code { via: via.to_owned(), text, from: (from..words.len()).collect(), computed }]
}

/// Skips `NAME=value` words (environment settings before the command of `env`, `sudo`).
fn skip_assignments(words: &[Word], mut i: usize) -> usize {
    while words.get(i).is_some_and(|w| is_assignment(&w.text)) {
        i += 1;
    }
    i
}

pub(crate) fn is_assignment(text: &str) -> bool {
    match text.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// Index of the value of option `opt` (`-c STR`, `-qc STR`, `--command STR`,
/// `--command=STR`).
fn option_value(words: &[Word], opts: &[&str]) -> Option<(usize, Option<String>)> {
    let short: Vec<char> =
        opts.iter().filter_map(|o| o.strip_prefix('-').filter(|l| l.len() == 1)?.chars().next()).collect();
    for (i, w) in words.iter().enumerate().skip(1) {
        if opts.contains(&w.text.as_str()) {
            return Some((i + 1, None));
        }
        // A bundle of short flags ending with the option's letter.
        let t = w.text.as_str();
        if t.len() > 2
            && t.starts_with('-')
            && !t.starts_with("--")
            && t[1..].chars().all(|c| c.is_ascii_alphabetic())
            && t.chars().last().is_some_and(|c| short.contains(&c))
        {
            return Some((i + 1, None));
        }
        for o in opts.iter().filter(|o| o.starts_with("--")) {
            if let Some(v) = w.text.strip_prefix(&format!("{o}=")) {
                return Some((i, Some(v.to_owned())));
            }
        }
    }
    None
}

fn code_option(via: &str, words: &[Word], opts: &[&str]) -> Option<Vec<Plan>> {
    let (i, attached) = option_value(words, opts)?;
    Some(match attached {
        Some(text) => vec![Plan::Code { via: via.to_owned(), text, from: vec![i], computed: false }],
        None => code(via, words, i),
    })
}

/// What `words` (a simple command, program first) runs besides itself.
pub(crate) fn plan(program: &str, words: &[Word]) -> Vec<Plan> {
    if words.first().is_none_or(|w| w.dynamic) {
        return Vec::new();
    }
    match program {
        p if is_shell(p) => match shell_code_index(words) {
            Some(i) => code(&format!("{p} -c"), words, i),
            None => Vec::new(),
        },
        "eval" => joined("eval", words, 1, true),
        "sudo" | "doas" | "run0" => {
            if words.iter().skip(1).any(|w| matches!(w.text.as_str(), "-e" | "--edit" | "-l" | "--list")) {
                return Vec::new();
            }
            let i = first_operand(
                words,
                1,
                &[
                    "-u",
                    "-g",
                    "-C",
                    "-D",
                    "-h",
                    "-p",
                    "-r",
                    "-t",
                    "-T",
                    "-U",
                    "--user",
                    "--group",
                    "--chdir",
                    "--prompt",
                    "--role",
                    "--type",
                    "--host",
                    "--close-from",
                    "--other-user",
                    "--command-timeout",
                ],
            );
            exec(program, words, skip_assignments(words, i), false)
        }
        "su" | "runuser" => code_option(&format!("{program} -c"), words, &["-c", "--command"])
            .unwrap_or_else(|| {
                // `runuser -u USER -- CMD`
                match words.iter().position(|w| w.text == "--") {
                    Some(i) if program == "runuser" => exec(program, words, i + 1, false),
                    _ => Vec::new(),
                }
            }),
        "pkexec" => exec("pkexec", words, first_operand(words, 1, &["--user"]), false),
        // `trap CODE SIGNAL...` runs CODE later, in this shell.
        "trap" => {
            let i = first_operand(words, 1, &[]);
            match words.get(i).map(|w| w.text.as_str()) {
                Some("-" | "") | None => Vec::new(),
                Some(_) if words.len() > i + 1 => code("trap", words, i),
                Some(_) => Vec::new(),
            }
        }
        "git" => plan_git(words),
        "tar" | "bsdtar" => plan_tar(words),
        "vi" | "vim" | "nvim" | "ex" | "view" => {
            // `vim -c '!cmd'` / `+'!cmd'` runs cmd through the shell.
            let mut plans = Vec::new();
            for (i, w) in words.iter().enumerate().skip(1) {
                let cmd = if words.get(i.wrapping_sub(1)).is_some_and(|p| p.text == "-c") {
                    Some(w.text.as_str())
                } else {
                    w.text.strip_prefix('+')
                };
                if let Some(bang) = cmd.and_then(|c| c.trim_start().strip_prefix('!')) {
                    plans.push(Plan::Code {
                        via: format!("{program} !"),
                        text: bang.to_owned(),
                        from: vec![i],
                        computed: false,
                    });
                }
            }
            plans
        }
        "strace" | "ltrace" => {
            let i = first_operand(
                words,
                1,
                &["-o", "-e", "-p", "-s", "-u", "-E", "-a", "-b", "-O", "-S", "-X", "-P"],
            );
            exec(program, words, i, false)
        }
        "chrt" | "taskset" => {
            if words.iter().any(|w| matches!(w.text.as_str(), "-p" | "--pid")) {
                return Vec::new();
            }
            // The priority (chrt) or CPU mask (taskset) comes first.
            let i = first_operand(words, 1, &["-T", "-P", "-D"]);
            exec(program, words, i + 1, false)
        }
        p if p.starts_with("ld-linux") || p.starts_with("ld.so") || p.starts_with("ld-musl") => {
            exec(program, words, first_operand(words, 1, &["--library-path", "--preload", "--argv0"]), false)
        }
        p if INTERPRETERS.iter().any(|i| {
            p == *i || p.strip_prefix(i).is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        }) =>
        {
            shell_strings(p, words)
        }
        "env" => plan_env(words),
        "nohup" | "builtin" | "busybox" | "toybox" => exec(program, words, 1, false),
        "setsid" => exec("setsid", words, first_operand(words, 1, &[]), false),
        "timeout" => {
            let i = first_operand(words, 1, &["-s", "--signal", "-k", "--kill-after"]);
            exec("timeout", words, first_operand(words, i + 1, &[]), false)
        }
        "nice" => exec("nice", words, first_operand(words, 1, &["-n", "--adjustment"]), false),
        "ionice" => {
            if words
                .iter()
                .any(|w| matches!(w.text.as_str(), "-p" | "-P" | "-u" | "--pid" | "--pgid" | "--uid"))
            {
                return Vec::new();
            }
            exec("ionice", words, first_operand(words, 1, &["-c", "-n", "--class", "--classdata"]), false)
        }
        "stdbuf" => exec("stdbuf", words, first_operand(words, 1, &["-i", "-o", "-e"]), false),
        "time" => exec("time", words, first_operand(words, 1, &["-f", "-o", "--format", "--output"]), false),
        "command" => {
            if words.iter().skip(1).any(|w| matches!(w.text.as_str(), "-v" | "-V" | "-pv" | "-vp")) {
                return Vec::new(); // a lookup, not a run
            }
            exec("command", words, first_operand(words, 1, &[]), false)
        }
        "exec" => exec("exec", words, first_operand(words, 1, &["-a"]), false),
        "xargs" => {
            let i = first_operand(
                words,
                1,
                &[
                    "-a",
                    "-d",
                    "-E",
                    "-I",
                    "-L",
                    "-n",
                    "-P",
                    "-s",
                    "--arg-file",
                    "--delimiter",
                    "--eof",
                    "--replace",
                    "--max-lines",
                    "--max-args",
                    "--max-procs",
                    "--max-chars",
                    "--process-slot-var",
                ],
            );
            exec("xargs", words, i, true)
        }
        "find" => plan_find(words),
        "parallel" => {
            let i = first_operand(
                words,
                1,
                &["-j", "-N", "-S", "-a", "--jobs", "--arg-file", "-d", "--delimiter"],
            );
            let end = words.iter().position(|w| w.text.starts_with(":::")).unwrap_or(words.len());
            match words.get(i..end) {
                Some([one]) if one.text.contains(' ') => vec![Plan::Code {
                    via: "parallel".into(),
                    text: one.text.clone(),
                    from: vec![i],
                    computed: false,
                }],
                Some(cmd) if !cmd.is_empty() => {
                    vec![Plan::Exec { via: "parallel".into(), words: cmd.to_vec(), dynamic: true }]
                }
                _ => Vec::new(),
            }
        }
        "watch" => {
            let i = first_operand(words, 1, &["-n", "--interval", "-q", "--equexit"]);
            if words.iter().take(i).any(|w| matches!(w.text.as_str(), "-x" | "--exec")) {
                exec("watch", words, i, false)
            } else {
                joined("watch", words, i, false)
            }
        }
        "flock" => {
            let i = first_operand(words, 1, &["-w", "--wait", "--timeout", "-E", "--conflict-exit-code"]);
            match words.get(i + 1).map(|w| w.text.as_str()) {
                Some("-c" | "--command") => code("flock -c", words, i + 2),
                _ => exec("flock", words, i + 1, false),
            }
        }
        "chroot" => {
            let i = first_operand(words, 1, &["--userspec", "--groups"]);
            exec("chroot", words, i + 1, false)
        }
        "unshare" | "nsenter" => {
            let i = first_operand(
                words,
                1,
                &["-S", "-G", "-R", "-w", "-t", "--target", "--setuid", "--setgid", "--root", "--wd"],
            );
            exec(program, words, i, false)
        }
        "script" => code_option("script -c", words, &["-c", "--command"]).unwrap_or_default(),
        "ssh" => {
            let i = first_operand(
                words,
                1,
                &[
                    "-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O", "-o", "-p",
                    "-Q", "-R", "-S", "-W", "-w", "-B", "-P",
                ],
            );
            joined("ssh", words, i + 1, false)
        }
        "npx" | "bunx" | "pnpx" => code_option(&format!("{program} -c"), words, &["-c", "--call"])
            .unwrap_or_else(|| exec(program, words, first_operand(words, 1, &["-p", "--package"]), false)),
        "poetry" | "pipenv" | "pdm" | "rye" | "uv" | "bundle" | "pixi" | "hatch" => {
            let sub = first_operand(words, 1, &["--directory", "--project", "-C"]);
            match words.get(sub).map(|w| w.text.as_str()) {
                Some("run" | "exec") => {
                    let i = first_operand(
                        words,
                        sub + 1,
                        &["--with", "-p", "--python", "--env-file", "--directory", "--project", "--package"],
                    );
                    exec(&format!("{program} run"), words, i, false)
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// Interpreters whose inline code may hand a string to the shell (`os.system("...")`).
const INTERPRETERS: &[&str] =
    &["python", "python3", "perl", "ruby", "node", "php", "awk", "gawk", "mawk", "nawk", "lua"];

/// Calls that hand their string argument to `/bin/sh`.
const SHELL_CALLS: &[&str] = &[
    "system(",
    "popen(",
    "execSync(",
    "exec(",
    "spawnSync(",
    "check_output(",
    "check_call(",
    "getoutput(",
    "getstatusoutput(",
    "run(",
    "call(",
    "Popen(",
    "shell_exec(",
    "passthru(",
    "`",
];

/// The string literals an interpreter's inline code passes to the shell: each is walked
/// as code (`python3 -c 'os.system("rm -rf /")'` runs `rm -rf /`).
fn shell_strings(program: &str, words: &[Word]) -> Vec<Plan> {
    let mut plans = Vec::new();
    for w in words.iter().skip(1) {
        for call in SHELL_CALLS {
            let mut rest = w.text.as_str();
            while let Some(at) = rest.find(call) {
                rest = &rest[at + call.len()..];
                let literal = if *call == "`" {
                    rest.split_once('`').map(|(lit, _)| lit)
                } else {
                    let trimmed = rest.trim_start();
                    let quote = trimmed.chars().next().filter(|c| matches!(c, '"' | '\''));
                    quote.and_then(|q| trimmed[1..].split_once(q).map(|(lit, _)| lit))
                };
                if let Some(lit) = literal.filter(|l| !l.trim().is_empty()) {
                    plans.push(Plan::Code {
                        via: format!("{program} {}", call.trim_end_matches('(')),
                        text: lit.to_owned(),
                        from: Vec::new(),
                        computed: false,
                    });
                }
                if plans.len() >= 8 {
                    return plans;
                }
            }
        }
    }
    plans
}

/// `git -c core.pager=CMD`, `-c alias.x='!CMD'` / `-c alias.x='push -f'`, and
/// `git config alias.x VALUE`: configuration that runs commands.
fn plan_git(words: &[Word]) -> Vec<Plan> {
    let mut plans = Vec::new();
    let mut config = |i: usize, kv: &str| {
        let Some((key, value)) = kv.split_once('=') else { return };
        let key = key.to_ascii_lowercase();
        if let Some(alias) = key.strip_prefix("alias.") {
            let text = match value.strip_prefix('!') {
                Some(shell) => shell.to_owned(),
                None => format!("git {value}"),
            };
            plans.push(Plan::Code {
                via: format!("git alias {alias}"),
                text,
                from: vec![i],
                computed: false,
            });
        } else if matches!(
            key.as_str(),
            "core.pager"
                | "core.fsmonitor"
                | "core.sshcommand"
                | "core.editor"
                | "sequence.editor"
                | "diff.external"
                | "core.askpass"
                | "credential.helper"
                | "gpg.program"
        ) {
            let text = value.strip_prefix('!').unwrap_or(value).to_owned();
            plans.push(Plan::Code { via: format!("git -c {key}"), text, from: vec![i], computed: false });
        }
    };
    let mut i = 1;
    while let Some(w) = words.get(i) {
        match w.text.as_str() {
            "-c" => {
                if let Some(kv) = words.get(i + 1) {
                    config(i + 1, &kv.text);
                }
                i += 2;
            }
            "-C" | "--git-dir" | "--work-tree" | "--namespace" => i += 2,
            "config" => {
                // `git config [--global] alias.x VALUE`
                let ops: Vec<(usize, &Word)> =
                    words.iter().enumerate().skip(i + 1).filter(|(_, w)| !w.text.starts_with('-')).collect();
                if let [(_, key), (vi, value), ..] = ops.as_slice() {
                    config(*vi, &format!("{}={}", key.text, value.text));
                }
                break;
            }
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    plans
}

/// `tar --checkpoint-action=exec=CMD`, `--to-command=CMD`, `-I CMD`.
fn plan_tar(words: &[Word]) -> Vec<Plan> {
    let mut plans = Vec::new();
    for (i, w) in words.iter().enumerate().skip(1) {
        let t = w.text.as_str();
        let text = t
            .strip_prefix("--checkpoint-action=exec=")
            .or_else(|| t.strip_prefix("--to-command="))
            .or_else(|| t.strip_prefix("--use-compress-program="))
            .or_else(|| t.strip_prefix("--info-script="))
            .or_else(|| t.strip_prefix("--new-volume-script="))
            .map(str::to_owned)
            .or_else(|| {
                (matches!(t, "-I" | "--use-compress-program" | "-F" | "--to-command"))
                    .then(|| words.get(i + 1).map(|n| n.text.clone()))
                    .flatten()
            });
        if let Some(text) = text {
            plans.push(Plan::Code { via: "tar exec".into(), text, from: vec![i], computed: false });
        }
    }
    plans
}

fn plan_env(words: &[Word]) -> Vec<Plan> {
    let mut i = 1;
    while let Some(w) = words.get(i) {
        let a = w.text.as_str();
        match a {
            "-u" | "--unset" | "-C" | "--chdir" => i += 2,
            "-S" | "--split-string" => return code("env -S", words, i + 1),
            "--" => {
                i += 1;
                break;
            }
            _ if a.starts_with("--split-string=") => {
                let text = a.trim_start_matches("--split-string=").to_owned();
                return vec![Plan::Code { via: "env -S".into(), text, from: vec![i], computed: false }];
            }
            _ if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    exec("env", words, skip_assignments(words, i), false)
}

fn plan_find(words: &[Word]) -> Vec<Plan> {
    // The starting points (before the first test, option or parenthesis): what `{}`
    // stands for is found under them, so `find ~ -exec shred {} +` shreds in the home and
    // is judged as `shred ~`.
    let roots: Vec<&Word> = words[1..]
        .iter()
        .take_while(|w| !(w.text.starts_with('-') || w.text == "(" || w.text == "!" || w.text == ","))
        .collect();
    let dot = Word::literal(".");
    let roots = if roots.is_empty() { vec![&dot] } else { roots };
    let mut plans = Vec::new();
    let mut i = 1;
    while i < words.len() {
        if matches!(words[i].text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
            let start = i + 1;
            let end = (start..words.len())
                .find(|&j| matches!(words[j].text.as_str(), ";" | "+"))
                .unwrap_or(words.len());
            if end > start {
                for root in &roots {
                    let words = words[start..end]
                        .iter()
                        .map(|w| match w.text.as_str() {
                            "{}" => (*root).clone(),
                            t if t.contains("{}") => {
                                let mut w = w.clone();
                                w.text = t.replace("{}", &root.text);
                                w
                            }
                            _ => w.clone(),
                        })
                        .collect();
                    plans.push(Plan::Exec { via: "find -exec".into(), words, dynamic: true });
                }
            }
            i = end + 1;
        } else {
            i += 1;
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(s: &str) -> Vec<Word> {
        s.split(' ').map(Word::literal).collect()
    }

    fn inner(s: &str) -> Vec<String> {
        let words = ws(s);
        let program = words[0].text.clone();
        plan(&program, &words)
            .into_iter()
            .map(|p| match p {
                Plan::Exec { words, .. } => {
                    words.iter().map(|w| w.text.clone()).collect::<Vec<_>>().join(" ")
                }
                Plan::Code { text, .. } => format!("code:{text}"),
            })
            .collect()
    }

    #[test]
    fn unwraps() {
        assert_eq!(inner("sudo -u root rm x"), ["rm x"]);
        assert_eq!(inner("sudo A=1 rm x"), ["rm x"]);
        assert_eq!(inner("env -i -u X A=1 rm x"), ["rm x"]);
        assert_eq!(inner("timeout -s KILL 10 rm x"), ["rm x"]);
        assert_eq!(inner("nice -n 5 rm x"), ["rm x"]);
        assert_eq!(inner("xargs -n 1 rm -f"), ["rm -f"]);
        assert_eq!(inner("find . -name x -exec rm {} ;"), ["rm ."]);
        assert_eq!(inner("find ~ /srv -type f -exec shred -u {} +"), ["shred -u ~", "shred -u /srv"]);
        assert_eq!(inner("find -name x -exec mv {} {}.bak ;"), ["mv . ..bak"]);
        assert_eq!(inner("command rm x"), ["rm x"]);
        assert!(inner("command -v rm").is_empty());
        assert_eq!(inner("bash -lc ls"), ["code:ls"]);
        assert_eq!(inner("bash -o pipefail -c ls"), ["code:ls"]);
        assert_eq!(inner("bash --login -c ls"), ["code:ls"]);
        assert!(inner("bash script.sh").is_empty());
        assert_eq!(inner("eval rm x"), ["code:rm x"]);
        assert_eq!(inner("ssh -p 22 host rm x"), ["code:rm x"]);
        assert_eq!(inner("su -c ls root"), ["code:ls"]);
        assert_eq!(inner("flock /tmp/l rm x"), ["rm x"]);
        assert_eq!(inner("uv run pytest -q"), ["pytest -q"]);
    }
}

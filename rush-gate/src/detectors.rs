//! Detectors: the judgements a declarative matcher cannot express, named from the rules
//! file (`detector = "fetch-exec"`), which gives them their tag, weight and floor.

use std::str::FromStr;

use rush_proto::Ops;

use crate::effects::{self, Op};
use crate::paths;
use crate::pattern::glob_matches;
use crate::rules::{Hit, Scene, shorten};
use crate::walk::{Cmd, Fact};
use crate::wrappers;

macro_rules! detectors {
    ($($variant:ident = $name:literal,)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Detector { $($variant,)+ }

        impl FromStr for Detector {
            /// The known names, for the error.
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Detector::$variant),)+
                    _ => Err([$($name),+].join(", ")),
                }
            }
        }
    };
}

detectors! {
    FetchExec = "fetch-exec",
    DecodeExec = "decode-exec",
    StdinScript = "stdin-script",
    Computed = "computed-code",
    Ifs = "ifs",
    Depth = "depth",
    NestedUnparsable = "nested-unparsable",
    Background = "background",
    UntrustedPath = "untrusted-path",
    UnknownProgram = "unknown-program",
    EnvHijack = "env-hijack",
    WriteOutside = "write-outside-workspace",
    WriteSystem = "write-system",
    DeleteRoot = "delete-root",
    Secrets = "secrets",
    CapWrite = "cap-write",
    CapRead = "cap-read",
    KillOthers = "kill-others",
    InlineExec = "inline-exec",
    Unlisted = "unlisted-program",
}

fn in_list(list: &[String], program: &str) -> bool {
    list.iter().any(|p| glob_matches(p, program))
}

impl Detector {
    pub(crate) fn hits(self, s: &Scene<'_>) -> Vec<Hit> {
        let facts = |want: &dyn Fn(&Fact) -> Option<String>| -> Vec<Hit> {
            s.walked.facts.iter().filter_map(|(c, f)| want(f).map(|why| Hit { command: *c, why })).collect()
        };
        match self {
            Detector::FetchExec => code_fed_by(s, &|c| is_fetcher(s, c)),
            Detector::DecodeExec => code_fed_by(s, &is_decoder),
            Detector::StdinScript => stdin_script(s),
            Detector::Computed => {
                facts(&|f| (*f == Fact::Computed).then(|| "eval of text only known when it runs".into()))
            }
            Detector::Ifs => facts(&|f| (*f == Fact::Ifs).then(|| "$IFS used inside a word".into())),
            Detector::Depth => facts(&|f| match f {
                Fact::Depth => Some(format!(
                    "code nested too deep (over {} levels of code in code, or {} of blocks in all)",
                    crate::walk::MAX_DEPTH,
                    crate::walk::MAX_TOTAL_NESTING
                )),
                Fact::Budget => Some(format!("more than {} commands", crate::walk::MAX_COMMANDS)),
                Fact::Recursion(name) => Some(format!("function {name} calls itself")),
                _ => None,
            }),
            Detector::NestedUnparsable => facts(&|f| match f {
                Fact::NestedUnparsable(why) => Some(format!("code that does not parse: {why}")),
                _ => None,
            }),
            Detector::Background => {
                facts(&|f| (*f == Fact::Background).then(|| "runs in the background (&)".into()))
            }
            Detector::UntrustedPath => per_cmd(s, |i, c| untrusted_path(s, i, c)),
            Detector::UnknownProgram => per_cmd(s, |i, c| {
                c.words
                    .first()
                    .filter(|w| w.dynamic)
                    .map(|w| format!("program only known when it runs: {}", shorten(&w.text)))
                    .map(|why| Hit { command: Some(i), why })
            }),
            Detector::EnvHijack => env_hijack(s),
            Detector::WriteOutside => effect_hits(s, |e| {
                e.op != Op::Read
                    && !paths::within(&e.path, &s.root)
                    && !s
                        .vocab
                        .temp_dirs
                        .iter()
                        .any(|t| paths::within(&e.path, &paths::with_home(t, &s.home)))
            }),
            Detector::WriteSystem => effect_hits(s, |e| {
                e.op != Op::Read && s.vocab.system_dirs.iter().any(|d| paths::within(&e.path, d))
            }),
            Detector::DeleteRoot => {
                effect_hits(s, |e| e.op == Op::Delete && e.recursive && critical(s, &e.path))
            }
            Detector::Secrets => per_cmd(s, |i, c| secrets(s, i, c)),
            Detector::CapWrite => cap(s, true),
            Detector::CapRead => cap(s, false),
            Detector::KillOthers => {
                per_cmd(s, |i, c| kill_others(c).map(|why| Hit { command: Some(i), why }))
            }
            Detector::InlineExec => {
                per_cmd(s, |i, c| inline_exec(s, c).map(|why| Hit { command: Some(i), why }))
            }
            Detector::Unlisted => per_cmd(s, |i, c| {
                let w = c.words.first()?;
                let listed = w.opaque
                    || c.gate.path.is_some()
                    || c.gate.program.is_empty()
                    || in_list(&s.vocab.known_tools, &c.gate.program)
                    || in_list(&s.vocab.dev_tools, &c.gate.program)
                    || in_list(&s.vocab.shells, &c.gate.program)
                    || in_list(&s.vocab.interpreters, &c.gate.program)
                    || in_list(&s.vocab.fetchers, &c.gate.program);
                (!listed).then(|| Hit {
                    command: Some(i),
                    why: format!("{} is not a program the rules know", c.gate.program),
                })
            }),
        }
    }
}

fn per_cmd(s: &Scene<'_>, f: impl Fn(usize, &Cmd) -> Option<Hit>) -> Vec<Hit> {
    s.walked.cmds.iter().enumerate().filter_map(|(i, c)| f(i, c)).collect()
}

/// One hit per command with an effect (not only known at run time) that `pred` holds for.
fn effect_hits(s: &Scene<'_>, pred: impl Fn(&effects::Effect) -> bool) -> Vec<Hit> {
    let mut out = Vec::new();
    for (i, effects) in s.effects.iter().enumerate() {
        if let Some(e) = effects.iter().find(|e| !e.dynamic && pred(e)) {
            out.push(Hit { command: Some(i), why: format!("{} {}", e.op.verb(), e.path) });
        }
    }
    out
}

fn is_fetcher(s: &Scene<'_>, c: &Cmd) -> bool {
    in_list(&s.vocab.fetchers, &c.gate.program)
}

/// A command that turns encoded text back into code: `base64 -d`, `xxd -r`, `rev`,
/// `printf '\x72\x6d'`.
fn is_decoder(c: &Cmd) -> bool {
    let w = &c.words;
    match c.gate.program.as_str() {
        "base64" | "base32" | "basenc" => {
            effects::has_flag(w, 'd', &["--decode"]) || effects::has_flag(w, 'D', &[])
        }
        "xxd" => effects::has_flag(w, 'r', &["-revert"]),
        "openssl" => w.iter().any(|a| a.text == "-d" || a.text == "base64"),
        "rev" | "tr" | "gunzip" | "zcat" | "uudecode" => true,
        "printf" | "echo" => w.iter().skip(1).any(|a| {
            a.text.contains("\\x")
                || a.text.contains("\\0")
                || a.text.contains("\\u")
                || a.text.contains("\\1")
        }),
        _ => false,
    }
}

/// A shell or interpreter whose script is its standard input (`sh`, `bash -s`,
/// `python3 -`), not a file or `-c` string.
fn reads_script_from_stdin(s: &Scene<'_>, c: &Cmd) -> bool {
    let program = c.gate.program.as_str();
    if c.fed || c.words.first().is_none_or(|w| w.dynamic) {
        return false;
    }
    if in_list(&s.vocab.shells, program) {
        if wrappers::shell_code_index(&c.words).is_some() {
            return false;
        }
        let ops = effects::operands(&c.words, program);
        return ops.is_empty() || ops[0].text == "-" || c.words.iter().any(|w| w.text == "-s");
    }
    if in_list(&s.vocab.interpreters, program) {
        let inline = c
            .words
            .iter()
            .skip(1)
            .any(|w| matches!(w.text.as_str(), "-c" | "-e" | "-E" | "-r" | "-m" | "--eval"));
        let ops = effects::operands(&c.words, program);
        return !inline && (ops.is_empty() || ops[0].text == "-");
    }
    false
}

/// A command that runs code given to it: a shell or interpreter, `eval`, `source`.
fn runs_code(s: &Scene<'_>, c: &Cmd) -> bool {
    let p = c.gate.program.as_str();
    matches!(p, "eval" | "source" | ".") || in_list(&s.vocab.shells, p) || in_list(&s.vocab.interpreters, p)
}

/// Code fed by a command `pred` holds for: through a pipe (`curl .. | sh`), a
/// substitution (`bash -c "$(curl ..)"`, `sh <(curl ..)`, `eval "$(base64 -d ..)"`), or a
/// file it wrote and a later command runs (`curl -o x.sh ..; sh x.sh`).
fn code_fed_by(s: &Scene<'_>, pred: &dyn Fn(&Cmd) -> bool) -> Vec<Hit> {
    let cmds = &s.walked.cmds;
    let mut out = Vec::new();
    let mut push = |i: usize, src: usize| {
        if !out.iter().any(|h: &Hit| h.command == Some(i)) {
            let why = format!("{} | {}", shorten(&s.form(src)), s.form(i));
            out.push(Hit { command: Some(i), why: shorten(&why) });
        }
    };
    for stages in &s.walked.pipes {
        // The first matching command of the stages before the current one.
        let mut src: Option<usize> = None;
        for stage in stages {
            if let Some(src) = src
                && let Some(reader) = stage.clone().find(|&j| reads_script_from_stdin(s, &cmds[j]))
            {
                push(reader, src);
            }
            src = src.or_else(|| stage.clone().find(|&j| pred(&cmds[j])));
        }
    }
    for (i, c) in cmds.iter().enumerate() {
        if !runs_code(s, c) {
            continue;
        }
        let depth = c.gate.via.len();
        let fed = c.subst.clone().chain(c.inner.clone()).find(|&j| {
            pred(&cmds[j])
                && cmds[j].gate.via.iter().skip(depth).any(|v| matches!(v.as_str(), "$( )" | "` `" | "<( )"))
        });
        if let Some(src) = fed {
            push(i, src);
        }
    }
    // Written by one command, run by a later one.
    for (j, _) in cmds.iter().enumerate().filter(|(_, c)| pred(c)) {
        for e in s.effects[j].iter().filter(|e| e.op == Op::Write && !e.dynamic) {
            for (i, later) in cmds.iter().enumerate().skip(j + 1) {
                let runs_file =
                    later.gate.path.as_deref().is_some_and(|p| paths::resolve(&later.cwd, p) == e.path)
                        || (runs_code(s, later)
                            && effects::operands(&later.words, &later.gate.program)
                                .first()
                                .is_some_and(|w| paths::resolve(&later.cwd, &w.text) == e.path));
                if runs_file {
                    push(i, j);
                }
            }
        }
    }
    out
}

/// A shell reading its script from a pipe whose source is neither a download nor a
/// decoder (those have their own tags): the code is not on the command line.
fn stdin_script(s: &Scene<'_>) -> Vec<Hit> {
    let cmds = &s.walked.cmds;
    let mut out = Vec::new();
    for stages in &s.walked.pipes {
        let mut judged_elsewhere = false;
        for (k, stage) in stages.iter().enumerate() {
            // `echo 'make test' | sh` with a literal script was walked as code already.
            let literal = k == 1
                && stages[0].len() == 1
                && crate::walk::literal_output(&cmds[stages[0].start]).is_some();
            if k > 0
                && !judged_elsewhere
                && !literal
                && let Some(reader) = stage.clone().find(|&j| reads_script_from_stdin(s, &cmds[j]))
            {
                out.push(Hit {
                    command: Some(reader),
                    why: format!("runs a script read from a pipe: {}", s.form(reader)),
                });
            }
            judged_elsewhere |= stage.clone().any(|j| is_fetcher(s, &cmds[j]) || is_decoder(&cmds[j]));
        }
    }
    out
}

fn in_temp(s: &Scene<'_>, path: &str) -> bool {
    s.vocab.temp_dirs.iter().any(|t| paths::within(path, &paths::with_home(t, &s.home)))
}

fn untrusted_path(s: &Scene<'_>, i: usize, c: &Cmd) -> Option<Hit> {
    // A script run from a world-writable directory: `sh /tmp/x.sh`, `sh < /tmp/x.sh`.
    if runs_code(s, c) && !c.words.first().is_some_and(|w| w.opaque) {
        let script = effects::operands(&c.words, &c.gate.program)
            .first()
            .filter(|w| !w.opaque && !matches!(c.gate.program.as_str(), "eval"))
            .map(|w| paths::resolve(&c.cwd, &w.text))
            .filter(|_| wrappers::shell_code_index(&c.words).is_none())
            .into_iter()
            .chain(c.reads.iter().cloned());
        for p in script {
            if in_temp(s, &p) {
                return Some(Hit {
                    command: Some(i),
                    why: format!("runs a script from a world-writable directory: {p}"),
                });
            }
        }
    }
    let written = c.gate.path.as_deref()?;
    if c.words.first().is_some_and(|w| w.dynamic) {
        return None;
    }
    let resolved = paths::resolve(&c.cwd, written);
    let dir = resolved.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap_or("/");
    let trusted = s.vocab.trusted_bin_dirs.iter().any(|t| paths::with_home(t, &s.home) == dir);
    if trusted {
        return None;
    }
    let temp = in_temp(s, &resolved);
    let known = in_list(&s.vocab.known_tools, &c.gate.program);
    (temp || known).then(|| Hit {
        command: Some(i),
        why: if known {
            format!("{written} is named like {} but is not the system's", c.gate.program)
        } else {
            format!("runs {written} from a world-writable directory")
        },
    })
}

fn env_hijack(s: &Scene<'_>) -> Vec<Hit> {
    let hijack = |name: &str, value: &str| -> bool {
        if !s.vocab.hijack_vars.iter().any(|v| glob_matches(v, name)) {
            return false;
        }
        if name != "PATH" {
            return true;
        }
        // PATH: only directories searched before the system's (ahead of `$PATH`) that the
        // agent can fill with look-alikes matter: relative ones, scratch space, the
        // workspace. `$HOME/.cargo/bin:$PATH` and `$PATH:./bin` are ordinary setup.
        value.split(':').take_while(|dir| !matches!(*dir, "$PATH" | "${PATH}")).any(|dir| {
            !dir.starts_with('/') || in_temp(s, dir) || paths::within(&paths::resolve("/", dir), &s.root)
        })
    };
    let mut out = Vec::new();
    for (i, c) in s.walked.cmds.iter().enumerate() {
        let prefixed = c.env.iter().find(|(n, v)| hijack(n, &v.text)).map(|(n, v)| format!("{n}={}", v.text));
        let declared = if matches!(
            c.gate.program.as_str(),
            "export" | "declare" | "typeset" | "readonly" | "local" | "env" | "sudo"
        ) {
            c.words.iter().skip(1).find_map(|w| {
                let (n, v) = w.text.split_once('=')?;
                hijack(n, v).then(|| w.text.clone())
            })
        } else {
            None
        };
        if let Some(why) = prefixed.or(declared) {
            out.push(Hit { command: Some(i), why: format!("sets {}", shorten(&why)) });
        }
    }
    for (n, v) in &s.walked.assigns {
        if hijack(n, v) {
            out.push(Hit { command: None, why: format!("sets {}", shorten(&format!("{n}={v}"))) });
        }
    }
    out
}

/// Directories whose recursive delete is a disaster: `/`, home, anything holding the
/// workspace or home, and the system's top-level directories.
fn critical(s: &Scene<'_>, path: &str) -> bool {
    let dir = paths::strip_trailing_glob(path);
    dir == "/"
        || dir == s.home
        || paths::strictly_above(dir, &s.root)
        || paths::strictly_above(dir, &s.home)
        || s.vocab.system_dirs.iter().any(|d| d == dir)
}

fn secret_match(s: &Scene<'_>, path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    if s.vocab.secret_exceptions.iter().any(|e| glob_matches(e, base)) {
        return false;
    }
    s.vocab.secrets.iter().any(|entry| {
        if entry.starts_with('~') || entry.starts_with('/') {
            let e = paths::with_home(entry, &s.home);
            paths::within(path, &e) || glob_matches(&e, path)
        } else {
            glob_matches(entry, base)
        }
    })
}

/// Programs whose arguments are text, not files (`echo .env >> .gitignore`).
const TEXT_PROGRAMS: &[&str] =
    &["echo", "printf", "test", "[", "git", "true", ":", "export", "alias", "type", "which", "command"];

fn secrets(s: &Scene<'_>, i: usize, c: &Cmd) -> Option<Hit> {
    let program = c.gate.program.as_str();
    let mut candidates: Vec<String> =
        s.effects[i].iter().filter(|e| e.op == Op::Read && !e.dynamic).map(|e| e.path.clone()).collect();
    let text_args = TEXT_PROGRAMS.contains(&program) || c.wrapper;
    let args = || c.words.iter().skip(1).filter(|w| !w.opaque);
    if !text_args {
        if !effects::knows(program) {
            candidates.extend(args().filter(|w| !w.text.starts_with('-')).map(|w| w.text.clone()));
        }
        // `--post-file=.env`, `-d @~/.ssh/id_rsa`, `f=@.env`
        for w in args() {
            for sep in ['=', '@'] {
                if let Some((_, rest)) = w.text.split_once(sep)
                    && !rest.is_empty()
                {
                    candidates.push(rest.trim_start_matches('@').to_owned());
                }
            }
        }
    }
    // `find ~ -name id_rsa`: what it looks for.
    if program == "find" {
        for pair in c.words.windows(2) {
            if matches!(pair[0].text.as_str(), "-name" | "-iname" | "-path" | "-wholename") {
                candidates.push(pair[1].text.clone());
            }
        }
    }
    // Inline code (`python3 -c "open('/home/u/.ssh/id_rsa')"`): the paths inside it.
    if in_list(&s.vocab.interpreters, program) {
        for w in args() {
            candidates.extend(
                w.text
                    .split(|ch: char| ch.is_whitespace() || "\"'(),;[]{}=+`".contains(ch))
                    .filter(|t| t.starts_with('/') || t.starts_with("~/"))
                    .map(|t| paths::with_home(t, &s.home)),
            );
        }
    }
    let hit = candidates
        .iter()
        .filter(|t| !t.contains("://") && !t.contains(' ') && !t.is_empty())
        .map(|t| if t.contains('/') || t.starts_with('.') { paths::resolve(&c.cwd, t) } else { t.clone() })
        .find(|p| secret_match(s, p))?;
    Some(Hit { command: Some(i), why: format!("touches {hit}") })
}

fn cap(s: &Scene<'_>, writes: bool) -> Vec<Hit> {
    let Some(tokens) = s.ctx.tokens else { return Vec::new() };
    let need = |op: Op| match op {
        Op::Read => Ops::READ,
        Op::Write => Ops::WRITE,
        Op::Create => Ops::CREATE,
        Op::Delete => Ops::DELETE,
    };
    effect_hits(s, |e| {
        if (e.op == Op::Read) == writes {
            return false;
        }
        let op = need(e.op);
        !tokens.iter().any(|t| {
            t.ops.contains(op) && paths::within(&e.path, &paths::resolve("/", &t.path.to_string_lossy()))
        })
    })
    .into_iter()
    .map(|h| Hit { why: format!("no token: {}", h.why), ..h })
    .collect()
}

/// `kill` of pid 1, of every process (`-1`) or of a process group (negative pid).
fn kill_others(c: &Cmd) -> Option<String> {
    if c.gate.program != "kill" {
        return None;
    }
    let args: Vec<&str> = c.words.iter().skip(1).map(|w| w.text.as_str()).collect();
    let mut i = 0;
    let mut targets = Vec::new();
    let mut signal_seen = false;
    while let Some(a) = args.get(i) {
        match *a {
            "-l" | "-L" | "--list" | "--table" => return None,
            "-s" | "-n" | "--signal" => {
                signal_seen = true;
                i += 1;
            }
            "--" => {
                targets.extend(args.iter().skip(i + 1).copied());
                break;
            }
            a if a.starts_with('-') && !signal_seen && a.len() > 1 => signal_seen = true,
            a => targets.push(a),
        }
        i += 1;
    }
    let bad = targets.iter().find(|t| {
        matches!(**t, "1" | "$PPID" | "${PPID}")
            || (t.starts_with('-') && t.len() > 1 && t[1..].chars().all(|ch| ch.is_ascii_digit()))
    })?;
    Some(format!("kill {bad}: other processes than its own jobs"))
}

/// Inline code that runs commands or deletes files: `python3 -c 'os.system(..)'`,
/// `awk 'BEGIN { system(..) }'`, `sed '1e cmd'`, a here-document fed to an interpreter.
fn inline_exec(s: &Scene<'_>, c: &Cmd) -> Option<String> {
    let program = c.gate.program.as_str();
    if program == "sed" || program == "gsed" {
        let scripts = sed_scripts(c);
        return scripts
            .iter()
            .find(|sc| sed_executes(sc))
            .map(|sc| format!("sed script runs a command: {}", shorten(sc)));
    }
    if !in_list(&s.vocab.interpreters, program) {
        return None;
    }
    let texts = c.words.iter().skip(1).map(|w| w.text.as_str()).chain(c.stdin_text.as_deref());
    for t in texts {
        if let Some(p) = s.vocab.inline_danger.iter().find(|p| glob_matches(p, t)) {
            return Some(format!("{program} code matches {p}: {}", shorten(t)));
        }
    }
    None
}

/// A sed invocation's scripts: `-e` values, or its first operand.
fn sed_scripts(c: &Cmd) -> Vec<String> {
    let mut out: Vec<String> = c
        .words
        .windows(2)
        .filter(|p| matches!(p[0].text.as_str(), "-e" | "--expression"))
        .map(|p| p[1].text.clone())
        .collect();
    if out.is_empty()
        && let Some(first) = effects::operands(&c.words, &c.gate.program).first()
    {
        out.push(first.text.clone());
    }
    out
}

/// Whether a sed script has an `e` command or an `s///e` flag (both run the shell).
fn sed_executes(script: &str) -> bool {
    for cmd in script.split([';', '\n']) {
        let chars: Vec<char> = cmd.trim_start().chars().collect();
        let mut i = 0;
        // Skip the address: line numbers, `$`, ranges, `/regex/`, negation.
        while i < chars.len() {
            match chars[i] {
                c if c.is_ascii_digit() || matches!(c, '$' | ',' | '~' | '!' | ' ' | '+') => i += 1,
                '/' => {
                    i += 1;
                    while i < chars.len() && chars[i] != '/' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                _ => break,
            }
        }
        match chars.get(i) {
            Some('e') => return true,
            Some('s') => {
                let Some(&delim) = chars.get(i + 1) else { continue };
                let mut seen = 0;
                let mut j = i + 2;
                while j < chars.len() && seen < 2 {
                    if chars[j] == '\\' {
                        j += 1;
                    } else if chars[j] == delim {
                        seen += 1;
                    }
                    j += 1;
                }
                if seen == 2 && chars[j..].contains(&'e') {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

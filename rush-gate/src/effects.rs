//! What a command does to files, from its program and arguments: the paths it reads,
//! writes, creates and deletes. Judged lexically, for the programs agents use to touch
//! files; an unknown program's arguments are not guessed at (its redirections still are).

use crate::paths;
use crate::walk::Cmd;
use crate::words::Word;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    Read,
    Write,
    Create,
    Delete,
}

impl Op {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Op::Read => "reads",
            Op::Write => "writes",
            Op::Create => "creates",
            Op::Delete => "deletes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effect {
    pub op: Op,
    /// Absolute and normalised; as written when `dynamic`.
    pub path: String,
    pub dynamic: bool,
    /// A recursive delete (`rm -r`, `find -delete`).
    pub recursive: bool,
}

/// Options (per program) whose value is the next word, so it is not taken for a file.
fn value_options(program: &str) -> &'static [&'static str] {
    match program {
        "cp" | "mv" | "ln" | "install" => &["-t", "-S", "-m", "-o", "-g", "--target-directory", "--suffix"],
        "touch" => &["-r", "-t", "-d", "--reference", "--date"],
        "mkdir" => &["-m", "--mode"],
        "truncate" => &["-s", "-r", "--size", "--reference"],
        "head" | "tail" => &["-n", "-c", "--lines", "--bytes"],
        "cut" => &["-d", "-f", "-c", "-b"],
        "sort" => &["-k", "-t", "-o", "-S", "-T", "--output"],
        "grep" | "egrep" | "fgrep" => &["-e", "-f", "-A", "-B", "-C", "-m", "--regexp", "--file"],
        "rg" => &["-e", "-f", "-g", "-t", "-T", "-A", "-B", "-C", "-m", "-j", "--glob", "--type", "--regexp"],
        "awk" | "gawk" | "mawk" => &["-F", "-v", "-f"],
        "sed" => &["-e", "-f", "--expression", "--file", "-l"],
        "jq" => &["--arg", "--argjson", "--slurpfile", "--rawfile", "--indent", "-L"],
        "tar" => &["-f", "-C", "-T", "-X", "--file", "--directory", "-b", "-H"],
        "curl" => &[
            "-o",
            "--output",
            "-d",
            "--data",
            "--data-binary",
            "--data-raw",
            "--data-urlencode",
            "-F",
            "--form",
            "-H",
            "--header",
            "-X",
            "--request",
            "-u",
            "--user",
            "-A",
            "--user-agent",
            "-e",
            "--referer",
            "-T",
            "--upload-file",
            "-b",
            "--cookie",
            "-c",
            "--cookie-jar",
            "-w",
            "--write-out",
            "-m",
            "--max-time",
            "--connect-timeout",
            "-x",
            "--proxy",
            "-K",
            "--config",
            "--retry",
            "-r",
            "--range",
        ],
        "wget" => {
            &["-O", "-P", "-o", "-a", "-U", "--output-document", "--directory-prefix", "--header", "-t", "-T"]
        }
        "chmod" | "chown" | "chgrp" => &["--reference"],
        "rm" | "rmdir" | "shred" | "unlink" => &["-n", "--iterations", "-s", "--size"],
        "diff" => &["-U", "-C", "-x", "-X", "--label"],
        "unzip" => &["-d", "-x"],
        "zip" => &["-x", "-i", "-b", "-n", "-t"],
        _ => &[],
    }
}

/// The operands of a command: words that are neither options nor option values.
pub(crate) fn operands<'w>(words: &'w [Word], program: &str) -> Vec<&'w Word> {
    let takes = value_options(program);
    let mut out = Vec::new();
    let mut i = 1;
    let mut options_done = false;
    while let Some(w) = words.get(i) {
        let a = w.text.as_str();
        if !options_done && a == "--" {
            options_done = true;
        } else if !options_done && a.len() > 1 && a.starts_with('-') {
            if takes.contains(&a) {
                i += 1;
            }
        } else {
            out.push(w);
        }
        i += 1;
    }
    out
}

/// The value of an option (`-o FILE`, `-oFILE`, `--output=FILE`, `--output FILE`).
fn option_values<'w>(words: &'w [Word], short: &[&str], long: &[&str]) -> Vec<&'w Word> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate().skip(1) {
        let a = w.text.as_str();
        if short.contains(&a) || long.contains(&a) {
            out.extend(words.get(i + 1));
        }
    }
    out
}

fn option_attached(words: &[Word], long: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for w in words.iter().skip(1) {
        for l in long {
            if let Some(v) = w.text.strip_prefix(l).and_then(|r| r.strip_prefix('=')) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

pub(crate) fn has_flag(words: &[Word], short: char, long: &[&str]) -> bool {
    words.iter().skip(1).map(|w| w.text.as_str()).take_while(|a| *a != "--").any(|a| {
        long.contains(&a)
            || (a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 1
                && a[1..].chars().all(|c| c.is_ascii_alphanumeric())
                && a[1..].contains(short))
    })
}

struct Collector<'c> {
    cwd: &'c str,
    out: Vec<Effect>,
}

impl Collector<'_> {
    fn add(&mut self, op: Op, w: &Word, recursive: bool) {
        self.add_text(op, &w.text, w.opaque, recursive);
    }

    fn add_text(&mut self, op: Op, text: &str, dynamic: bool, recursive: bool) {
        // `host:path` (scp, rsync) is another machine's file.
        if text.is_empty() || text.contains("://") || (!text.starts_with('/') && remote(text)) {
            return;
        }
        let path = if dynamic { text.to_owned() } else { paths::resolve(self.cwd, text) };
        if matches!(op, Op::Write | Op::Create | Op::Delete) && paths::is_sink(&path) {
            return;
        }
        self.out.push(Effect { op, path, dynamic, recursive });
    }
}

fn remote(text: &str) -> bool {
    match text.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}

/// Every file effect of `cmd`: its redirections, then what its program does.
pub(crate) fn of(cmd: &Cmd) -> Vec<Effect> {
    let mut c = Collector { cwd: &cmd.cwd, out: Vec::new() };
    for w in &cmd.gate.writes {
        let dynamic = !w.starts_with('/');
        c.out.push(Effect { op: Op::Write, path: w.clone(), dynamic, recursive: false });
    }
    for r in &cmd.reads {
        c.out.push(Effect { op: Op::Read, path: r.clone(), dynamic: !r.starts_with('/'), recursive: false });
    }
    let words = &cmd.words;
    let program = cmd.gate.program.as_str();
    let ops = operands(words, program);
    match program {
        "rm" | "unlink" | "srm" => {
            let recursive = has_flag(words, 'r', &["--recursive"]) || has_flag(words, 'R', &[]);
            for w in ops {
                c.add(Op::Delete, w, recursive);
            }
        }
        "rmdir" => ops.iter().for_each(|w| c.add(Op::Delete, w, false)),
        "rimraf" => ops.iter().for_each(|w| c.add(Op::Delete, w, true)),
        "shred" => {
            let delete = has_flag(words, 'u', &["--remove"]);
            for w in ops {
                c.add(if delete { Op::Delete } else { Op::Write }, w, false);
            }
        }
        "cp" | "mv" | "install" | "ln" | "rsync" | "scp" => {
            let target_opt = option_values(words, &["-t"], &["--target-directory"]);
            let attached = option_attached(words, &["--target-directory"]);
            let dir_mode = program == "install" && has_flag(words, 'd', &["--directory"]);
            let (sources, target): (Vec<&Word>, Option<String>) = if dir_mode {
                (Vec::new(), None)
            } else if let Some(t) = target_opt.first() {
                (ops.clone(), Some(t.text.clone()))
            } else if let Some(t) = attached.first() {
                (ops.clone(), Some(t.clone()))
            } else if ops.len() >= 2 {
                (ops[..ops.len() - 1].to_vec(), ops.last().map(|w| w.text.clone()))
            } else {
                (Vec::new(), None)
            };
            if dir_mode {
                ops.iter().for_each(|w| c.add(Op::Create, w, false));
            }
            for s in &sources {
                c.add(if program == "mv" { Op::Delete } else { Op::Read }, s, false);
            }
            if let Some(t) = target {
                let dynamic = words.iter().any(|w| w.text == t && w.opaque);
                c.add_text(Op::Create, &t, dynamic, false);
                if program == "rsync" && words.iter().any(|w| w.text.starts_with("--delete")) {
                    c.add_text(Op::Delete, &t, dynamic, true);
                }
            }
        }
        "tee" => ops.iter().for_each(|w| c.add(Op::Write, w, false)),
        "touch" | "mkdir" | "mkfifo" | "mknod" => ops.iter().for_each(|w| c.add(Op::Create, w, false)),
        "truncate" | "vi" | "vim" | "nvim" | "nano" | "emacs" => {
            ops.iter().for_each(|w| c.add(Op::Write, w, false));
        }
        "chmod" | "chown" | "chgrp" | "chattr" | "setfacl" => {
            let skip = usize::from(option_attached(words, &["--reference"]).is_empty());
            for w in ops.iter().skip(skip) {
                c.add(Op::Write, w, false);
            }
        }
        "dd" => {
            for w in words.iter().skip(1) {
                if let Some(p) = w.text.strip_prefix("of=") {
                    c.add_text(Op::Write, p, w.opaque, false);
                } else if let Some(p) = w.text.strip_prefix("if=") {
                    c.add_text(Op::Read, p, w.opaque, false);
                }
            }
        }
        "sed" => {
            let in_place = words.iter().skip(1).any(|w| {
                w.text == "--in-place"
                    || w.text.starts_with("--in-place=")
                    || (w.text.starts_with("-i") && !w.text.starts_with("--"))
                    || (w.text.starts_with('-')
                        && !w.text.starts_with("--")
                        && w.text.contains('i')
                        && w.text.len() <= 4)
            });
            let script_given =
                words.iter().any(|w| matches!(w.text.as_str(), "-e" | "-f" | "--expression" | "--file"));
            let files = ops.iter().skip(usize::from(!script_given));
            for w in files {
                c.add(if in_place { Op::Write } else { Op::Read }, w, false);
            }
        }
        "curl" => {
            for w in option_values(words, &["-o"], &["--output"]) {
                c.add(Op::Write, w, false);
            }
            for w in option_values(words, &["-T"], &["--upload-file"]) {
                c.add(Op::Read, w, false);
            }
            for w in words.iter().skip(1) {
                if let Some(p) = w
                    .text
                    .split_once('@')
                    .map(|(_, p)| p)
                    .filter(|_| w.text.starts_with('@') || w.text.contains("=@"))
                {
                    c.add_text(Op::Read, p, w.opaque, false);
                }
            }
        }
        "wget" => {
            for w in option_values(words, &["-O"], &["--output-document"]) {
                c.add(Op::Write, w, false);
            }
            for p in option_attached(words, &["--output-document"]) {
                c.add_text(Op::Write, &p, false, false);
            }
        }
        "tar" | "bsdtar" => tar(&mut c, words, &ops),
        "unzip" => {
            let dest = option_values(words, &["-d"], &[]);
            match dest.first() {
                Some(d) => c.add(Op::Write, d, false),
                None => c.add_text(Op::Write, ".", false, false),
            }
            ops.iter().take(1).for_each(|w| c.add(Op::Read, w, false));
        }
        "find" => {
            let roots = words.iter().skip(1).take_while(|w| {
                !(w.text.starts_with('-') || w.text == "(" || w.text == "!" || w.text == "\\(")
            });
            // `-delete`, or `-exec rm {}`: what it finds under its roots goes.
            let exec_rm = words.windows(2).position(|w| {
                matches!(w[0].text.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir")
                    && w[1].text.rsplit('/').next() == Some("rm")
            });
            let recursive = words.iter().any(|w| w.text == "-delete")
                || exec_rm.is_some_and(|at| {
                    let rm = &words[at + 1..];
                    has_flag(rm, 'r', &["--recursive"]) || has_flag(rm, 'R', &[])
                });
            let delete = exec_rm.is_some() || recursive;
            for w in roots {
                c.add(if delete { Op::Delete } else { Op::Read }, w, recursive);
            }
        }
        "cat" | "less" | "more" | "head" | "tail" | "base64" | "xxd" | "od" | "hexdump" | "strings"
        | "wc" | "sort" | "uniq" | "nl" | "tac" | "source" | "." | "bat" | "batcat" | "diff" | "cmp"
        | "md5sum" | "sha1sum" | "sha256sum" | "sha512sum" | "file" | "stat" | "ls" | "cut" | "gpg"
        | "openssl" => {
            ops.iter().for_each(|w| c.add(Op::Read, w, false));
            if program == "sort" {
                for w in option_values(words, &["-o"], &["--output"]) {
                    c.add(Op::Write, w, false);
                }
            }
        }
        "grep" | "egrep" | "fgrep" | "rg" | "awk" | "gawk" | "mawk" | "jq" => {
            let pattern_given =
                words.iter().any(|w| matches!(w.text.as_str(), "-e" | "-f" | "--regexp" | "--file"));
            for w in ops.iter().skip(usize::from(!pattern_given)) {
                c.add(Op::Read, w, false);
            }
        }
        _ => {}
    }
    c.out
}

/// Programs whose file arguments this module understands (for any other, every operand
/// may name a file).
pub(crate) fn knows(program: &str) -> bool {
    matches!(
        program,
        "rm" | "unlink"
            | "srm"
            | "rmdir"
            | "shred"
            | "cp"
            | "mv"
            | "install"
            | "ln"
            | "rsync"
            | "scp"
            | "tee"
            | "touch"
            | "mkdir"
            | "mkfifo"
            | "mknod"
            | "truncate"
            | "vi"
            | "vim"
            | "nvim"
            | "nano"
            | "emacs"
            | "chmod"
            | "chown"
            | "chgrp"
            | "chattr"
            | "setfacl"
            | "dd"
            | "sed"
            | "curl"
            | "wget"
            | "tar"
            | "bsdtar"
            | "unzip"
            | "find"
            | "cat"
            | "less"
            | "more"
            | "head"
            | "tail"
            | "base64"
            | "xxd"
            | "od"
            | "hexdump"
            | "strings"
            | "wc"
            | "sort"
            | "uniq"
            | "nl"
            | "tac"
            | "source"
            | "."
            | "bat"
            | "batcat"
            | "diff"
            | "cmp"
            | "md5sum"
            | "sha1sum"
            | "sha256sum"
            | "sha512sum"
            | "file"
            | "stat"
            | "ls"
            | "cut"
            | "gpg"
            | "openssl"
            | "grep"
            | "egrep"
            | "fgrep"
            | "rg"
            | "awk"
            | "gawk"
            | "mawk"
            | "jq"
    )
}

fn tar(c: &mut Collector<'_>, words: &[Word], ops: &[&Word]) {
    // Old style `tar czf out.tgz dir`: the first word is the mode without a dash.
    let bundled = words.get(1).filter(|w| !w.text.starts_with('-')).map(|w| w.text.clone());
    let mode_has = |ch: char| bundled.as_deref().is_some_and(|b| b.contains(ch)) || has_flag(words, ch, &[]);
    let create = mode_has('c') || words.iter().any(|w| w.text == "--create");
    let extract = mode_has('x') || words.iter().any(|w| w.text == "--extract" || w.text == "--get");
    let mut file = option_values(words, &["-f"], &["--file"]).first().map(|w| (*w).clone());
    let mut rest: Vec<&Word> = ops.to_vec();
    if bundled.is_some() {
        rest.remove(0);
        if bundled.as_deref().is_some_and(|b| b.contains('f')) && !rest.is_empty() {
            file = Some(rest.remove(0).clone());
        }
    }
    if let Some(p) = option_attached(words, &["--file"]).first() {
        file = Some(Word::literal(p.clone()));
    }
    if create {
        if let Some(f) = &file {
            c.add(Op::Write, f, false);
        }
        rest.iter().for_each(|w| c.add(Op::Read, w, false));
    } else if extract {
        if let Some(f) = &file {
            c.add(Op::Read, f, false);
        }
        match option_values(words, &["-C"], &["--directory"]).first() {
            Some(d) => c.add(Op::Write, d, false),
            None => c.add_text(Op::Write, ".", false, false),
        }
    } else if let Some(f) = &file {
        c.add(Op::Read, f, false);
    }
}

//! `cargo xtask spec`: the Oils project's shell spec tests (third-party data, read at run
//! time from `../shared/external/oils-spec`, never copied here) run against rush, bash and
//! dash side by side, and rush's failures per file checked against a checked-in allowance
//! (testdata/oils-spec-allowance.toml) that only ever goes down.
//!
//! The format is Oils' own, read as its harness (test/sh_spec.py) reads it: `#### NAME`
//! starts a case; the lines after it are code, except comment lines (blank lines count from
//! the first code line on, for `$LINENO`); `## KEY: VALUE` lines give what is expected
//! (`stdout`, `stderr`, `status`, `stdout-json`, `stderr-json`, multi-line `STDOUT:` /
//! `STDERR:` up to `## END`), for every shell or for some (`## OK bash/mksh status: 1`,
//! `## BUG-2 dash STDOUT:` ... `## END`). What a case does not name is not compared, except
//! the status: 0 unless given.
//!
//! Each shell is judged by its own expectations: a case passes when the shell's output
//! matches the case's expectation, or an alternative the case lists for that shell (fields
//! it leaves out taken from the case's), and only on the files whose `compare_shells` name
//! it. rush claims bash compatibility, so it is judged as bash: it is run as `bash` (a
//! symlink to it, first on the case's PATH), so `$SH` is `bash`, the cases' `case $SH in
//! bash)` branches apply to it and bash's alternatives are accepted.
//!
//! Every run is the shell with the case's code on stdin and no arguments (as Oils runs
//! them), in a new session (no terminal), in a fresh directory that is also `$TMP`, with
//! Oils' environment (`SH`, `TMP`, `REPO_ROOT`, `PATH`, `LC_ALL=C.UTF-8`, no `HOME`); 10 s
//! per run, then its process group is killed. A failure is run again (some cases race).
//! Files tagged `interactive` (they need a terminal) and files Oils marks `suite: disabled`
//! are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// Where the corpus is, relative to the workspace, unless `--corpus` or `RUSH_OILS_SPEC`.
const CORPUS_BESIDE_WORKSPACE: &str = "../shared/external/oils-spec";
/// The allowance, relative to the workspace.
const ALLOWANCE_FILE: &str = "testdata/oils-spec-allowance.toml";
/// The docs page the table goes in (`--markdown` without a file).
const COMPAT_DOC: &str = "docs/SHELL-COMPAT.md";
const TABLE_BEGIN: &str = "<!-- spec-table:begin -->";
const TABLE_END: &str = "<!-- spec-table:end -->";
/// What a run may print per stream; the rest is read and dropped.
const OUTPUT_CAP: usize = 1 << 20;

#[derive(clap::Args)]
pub struct SpecArgs {
    /// The corpus (a directory holding spec/*.test.sh). Default: ../shared/external/oils-spec
    /// beside the workspace.
    #[arg(long, env = "RUSH_OILS_SPEC", value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// The rush binary (run as the shell: no arguments, the case on stdin). Default:
    /// target/debug/rush.
    #[arg(long, value_name = "PATH")]
    rush: Option<PathBuf>,
    /// The shells to run, comma-separated: rush, or a shell on PATH (judged by its own
    /// alternatives).
    #[arg(long, value_delimiter = ',', default_value = "rush,bash,dash")]
    shells: Vec<String>,
    /// Runs at a time. Default: the number of CPUs.
    #[arg(short = 'j', long, value_name = "N")]
    jobs: Option<usize>,
    /// Only the files whose name contains SUBSTR.
    #[arg(long, value_name = "SUBSTR")]
    filter: Option<String>,
    /// Seconds a run may take before its process group is killed (it then fails: timeout).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    timeout: u64,
    /// Fail if rush fails more cases of a file than testdata/oils-spec-allowance.toml allows
    /// (or the corpus is missing, or no case ran).
    #[arg(long)]
    check: bool,
    /// Lower the allowance to rush's current failure counts (only the files run); refuses to
    /// raise an entry, except a file's first one.
    #[arg(long)]
    update_allowance: bool,
    /// With --update-allowance: write the current counts whatever the old ones were (for a
    /// new rush shell; the allowance only goes down from there).
    #[arg(long, requires = "update_allowance")]
    init: bool,
    /// Write the table as Markdown: into FILE's region between `<!-- spec-table:begin -->`
    /// and `<!-- spec-table:end -->`, or a new FILE with a header. Without FILE:
    /// docs/SHELL-COMPAT.md.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    markdown: Option<Option<PathBuf>>,
    /// Print one JSON document with every case's result per shell instead of the table.
    #[arg(long)]
    json: bool,
    /// Print what rush's failures expected and got (truncated).
    #[arg(long)]
    show_failures: bool,
    /// Also print what the parser did not understand, and each file as it finishes.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: SpecArgs) -> Result<()> {
    let corpus = corpus_dir(args.corpus.clone());
    let rush = match &args.rush {
        Some(p) => p.clone(),
        None => util::target_dir()?.join("debug/rush"),
    };
    let opts = RunOptions {
        shells: args.shells.clone(),
        rush,
        jobs: args.jobs.unwrap_or_else(default_jobs).max(1),
        filter: args.filter.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        verbose: args.verbose,
    };
    if (args.check || args.update_allowance) && !opts.shells.iter().any(|s| s == "rush") {
        bail!("--check and --update-allowance judge rush: keep rush in --shells");
    }
    let mut report = execute(&corpus, &opts)?;
    let allowance_path = util::workspace_root().join(ALLOWANCE_FILE);
    if args.check {
        report.recheck_over_allowance(&read_allowance(&allowance_path)?);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text_table());
        print!("{}", report.summary());
    }
    if args.show_failures {
        // On stdout after the table; with --json, stdout is the JSON document alone.
        let failures = report.failures("rush");
        if args.json { eprint!("{failures}") } else { print!("{failures}") }
    }
    if let Some(md) = &args.markdown {
        let path = match md {
            Some(p) => p.clone(),
            None => util::workspace_root().join(COMPAT_DOC),
        };
        write_markdown(&path, &report.markdown(&opts.rush))?;
        eprintln!("wrote the table to {}", path.display());
    }
    if report.cases_run("rush") == 0 {
        bail!("no case ran (filter {:?})", opts.filter.as_deref().unwrap_or(""));
    }
    if args.update_allowance {
        let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let default_rush = util::target_dir()?.join("debug/rush");
        let stand_in = (real(&opts.rush) != real(&default_rush)).then_some(opts.rush.as_path());
        update_allowance_file(&allowance_path, &report.failures_per_file("rush", true), args.init, stand_in)?;
    } else if args.check {
        check_allowance_file(&allowance_path, &report.failures_per_file("rush", false))?;
    }
    Ok(())
}

/// The host tier's step: every file against `rush` (rush, bash and dash run side by side),
/// failing on any file over its allowance. Prints the summary lines, not the table.
pub fn check_in_tier(rush: &Path) -> Result<()> {
    let corpus = corpus_dir(None);
    let opts = RunOptions {
        shells: vec!["rush".into(), "bash".into(), "dash".into()],
        rush: rush.to_owned(),
        // Twice the CPUs: most of a run is waiting (cases sleep, a hung shell waits out
        // its timeout); measured 116 s against 200 s at one per CPU on 2 cores.
        jobs: default_jobs() * 2,
        filter: None,
        timeout: Duration::from_secs(10),
        verbose: false,
    };
    let mut report = execute(&corpus, &opts)?;
    let allowance_path = util::workspace_root().join(ALLOWANCE_FILE);
    report.recheck_over_allowance(&read_allowance(&allowance_path)?);
    eprint!("{}", report.summary());
    if report.cases_run("rush") == 0 {
        bail!("rush ran no case of the Oils spec tests");
    }
    check_allowance_file(&allowance_path, &report.failures_per_file("rush", false))
}

fn corpus_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("RUSH_OILS_SPEC").map(PathBuf::from))
        .unwrap_or_else(|| util::workspace_root().join(CORPUS_BESIDE_WORKSPACE))
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

// ---------------------------------------------------------------------------------------
// The format

/// One `spec/NAME.test.sh`.
#[derive(Debug, Default)]
pub struct SpecFile {
    pub name: String,
    /// `## tags: interactive dev-minimal`.
    pub tags: Vec<String>,
    /// `## suite: disabled`: Oils does not run it either.
    pub disabled: bool,
    /// `## compare_shells: dash bash-4.4 mksh`: the shells whose results the file's
    /// expectations were written against (a version after `-`).
    pub compare_shells: Vec<String>,
    /// `## legacy_tmp_dir: yes`: its cases expect a `_tmp` directory where they start.
    pub legacy_tmp_dir: bool,
    pub cases: Vec<Case>,
    /// Lines that look like metadata (`## ...`) but were not understood: (line, text).
    pub unparsed: Vec<(usize, String)>,
    /// Code lines after a case's closing metadata (Oils refuses them; here they are code).
    pub late_code: Vec<usize>,
}

impl SpecFile {
    /// Why the file is not run on a shell judged as `shell`, if it is not: it needs a
    /// terminal, Oils does not run it, or its expectations were not written against that
    /// shell (not in `compare_shells`; a file with none is for Oils' own shell only).
    pub fn skip_reason(&self, shell: &str) -> Option<&'static str> {
        if self.tags.iter().any(|t| t == "interactive") {
            Some("tagged interactive")
        } else if self.disabled {
            Some("suite: disabled")
        } else if self.compare_shells.is_empty() {
            Some("Oils' shell only (no compare_shells)")
        } else if !self.compare_shells.iter().any(|s| s.split('-').next() == Some(shell)) {
            Some("not in compare_shells")
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
pub struct Case {
    pub name: String,
    /// The line of its `####`.
    pub line: usize,
    pub code: String,
    /// What every shell should do (the status defaults to 0 when judging).
    pub expect: Expect,
    /// What the named shells may do instead, in the order the file lists them.
    pub alternatives: Vec<Alternative>,
}

/// Expected output; `None` is not compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub status: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Stdout(String),
    Stderr(String),
    Status(i32),
}

/// One `## OK bash/mksh status: 1` line (or multi-line block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// `OK`, `BUG` or `N-I`, with a numbered variant's number (`OK-2`).
    pub qualifier: String,
    pub shells: Vec<String>,
    pub field: Field,
}

impl Expect {
    fn has(&self, field: &Field) -> bool {
        match field {
            Field::Stdout(_) => self.stdout.is_some(),
            Field::Stderr(_) => self.stderr.is_some(),
            Field::Status(_) => self.status.is_some(),
        }
    }

    fn set(&mut self, field: Field) {
        match field {
            Field::Stdout(s) => self.stdout = Some(s),
            Field::Stderr(s) => self.stderr = Some(s),
            Field::Status(n) => self.status = Some(n),
        }
    }

    /// `self` with `over`'s fields on top.
    fn overlaid(&self, over: &Expect) -> Expect {
        Expect {
            stdout: over.stdout.clone().or_else(|| self.stdout.clone()),
            stderr: over.stderr.clone().or_else(|| self.stderr.clone()),
            status: over.status.or(self.status),
        }
    }

    pub fn matches(&self, out: &Outcome) -> bool {
        self.stdout.as_ref().is_none_or(|s| s.as_bytes() == out.stdout)
            && self.stderr.as_ref().is_none_or(|s| s.as_bytes() == out.stderr)
            && self.status.unwrap_or(0) == out.status
    }
}

impl Case {
    /// What `shell` may do: the case's own expectation first (status 0 unless given), then
    /// one per alternative it lists for `shell`. A shell's alternative lines merge into one
    /// (`## OK bash stdout: x` with `## OK bash status: 1`), as in Oils; a field given twice
    /// for the same shell (`## OK-2 ...`) starts another.
    pub fn expectations(&self, shell: &str) -> Vec<(Option<String>, Expect)> {
        let mut own = self.expect.clone();
        own.status.get_or_insert(0);
        let mut overlays: Vec<(String, Expect)> = Vec::new();
        for alt in self.alternatives.iter().filter(|a| a.shells.iter().any(|s| s == shell)) {
            match overlays.iter_mut().find(|(_, e)| !e.has(&alt.field)) {
                Some((_, e)) => e.set(alt.field.clone()),
                None => {
                    let mut e = Expect::default();
                    e.set(alt.field.clone());
                    overlays.push((alt.qualifier.clone(), e));
                }
            }
        }
        let mut all = vec![(None, own.clone())];
        all.extend(overlays.into_iter().map(|(q, e)| (Some(q), own.overlaid(&e))));
        all
    }
}

/// A line of a spec file, classified.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    CaseStart(&'a str),
    Meta(Meta<'a>),
    /// `## END` (also `## END:`), closing a multi-line value.
    End,
    /// Starts with `##` and whitespace but is none of the above.
    OddMeta,
    Comment,
    Blank,
    Code,
}

#[derive(Debug, PartialEq, Eq)]
struct Meta<'a> {
    qualifier: Option<&'a str>,
    shells: Option<&'a str>,
    key: &'a str,
    value: &'a str,
}

fn classify(line: &str) -> Line<'_> {
    if let Some(desc) = line.strip_prefix("####") {
        return Line::CaseStart(desc.trim());
    }
    if let Some(rest) = line.strip_prefix("##")
        && rest.starts_with(char::is_whitespace)
    {
        let rest = rest.trim_start();
        return match parse_meta(rest) {
            Some(m) if m.key == "END" && m.qualifier.is_none() => Line::End,
            Some(m) => Line::Meta(m),
            None if rest.starts_with("END") => Line::End,
            None => Line::OddMeta,
        };
    }
    if line.trim_start().starts_with('#') {
        Line::Comment
    } else if line.trim().is_empty() {
        Line::Blank
    } else {
        Line::Code
    }
}

/// `[QUALIFIER SHELLS ]KEY: VALUE` (what follows `## `), as Oils' KEY_VALUE_RE reads it:
/// the value keeps its trailing blanks.
fn parse_meta(rest: &str) -> Option<Meta<'_>> {
    fn word(s: &str) -> Option<(&str, &str)> {
        let end = s.find(char::is_whitespace)?;
        Some((&s[..end], s[end..].trim_start()))
    }
    fn key_value(s: &str) -> Option<(&str, &str)> {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))?;
        let value = s[end..].strip_prefix(':')?;
        (end > 0).then(|| (&s[..end], value.trim_start()))
    }
    fn is_qualifier(w: &str) -> bool {
        let (base, n) = match w.rsplit_once('-') {
            Some((b, n)) if b != "N" => (b, Some(n)),
            _ => (w, None),
        };
        matches!(base, "OK" | "BUG" | "N-I")
            && n.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    if let Some((q, after)) = word(rest)
        && is_qualifier(q)
        && let Some((shells, after)) = word(after)
        && shells.chars().all(|c| c.is_alphanumeric() || "_+/,".contains(c))
        && let Some((key, value)) = key_value(after)
    {
        return Some(Meta { qualifier: Some(q), shells: Some(shells), key, value });
    }
    let (key, value) = key_value(rest)?;
    Some(Meta { qualifier: None, shells: None, key, value })
}

/// A multi-line `## STDOUT:` / `## STDERR:` being read.
struct Block {
    qualifier: Option<String>,
    shells: Option<String>,
    stderr: bool,
    text: String,
}

#[derive(Default)]
struct CaseBuilder {
    case: Case,
    code_lines: Vec<String>,
    /// `## code: ...` (a case whose code cannot be written plainly).
    code_value: Option<String>,
    /// Reading code: blank lines are code from the first code line to the next metadata.
    in_code: bool,
    meta_after_code: bool,
}

impl CaseBuilder {
    fn add(&mut self, qualifier: Option<String>, shells: Option<String>, field: Field) {
        if !self.code_lines.is_empty() {
            self.meta_after_code = true;
        }
        self.in_code = false;
        match (qualifier, shells) {
            (Some(qualifier), Some(shells)) => self.case.alternatives.push(Alternative {
                qualifier,
                shells: shells.split(['/', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                field,
            }),
            _ => self.case.expect.set(field),
        }
    }

    fn finish(mut self) -> Case {
        self.case.code = match self.code_value {
            Some(code) => code,
            None => self.code_lines.iter().map(|l| format!("{l}\n")).collect(),
        };
        self.case
    }
}

/// Reads a spec file the way Oils' harness does: comment lines are dropped everywhere (also
/// from code and multi-line values), blank lines are kept from a case's first code line on
/// and in multi-line values (so `$LINENO` counts from the first code line); a multi-line
/// value ends at `## END` or at the next metadata line or case.
pub fn parse(name: &str, text: &str) -> SpecFile {
    let mut file = SpecFile { name: name.to_owned(), ..SpecFile::default() };
    let mut case: Option<CaseBuilder> = None;
    let mut block: Option<Block> = None;

    let finish_block = |block: &mut Option<Block>, case: &mut Option<CaseBuilder>| {
        if let (Some(b), Some(c)) = (block.take(), case.as_mut()) {
            let field = if b.stderr { Field::Stderr(b.text) } else { Field::Stdout(b.text) };
            c.add(b.qualifier, b.shells, field);
        }
    };

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = classify(raw);
        if let Some(b) = block.as_mut() {
            match line {
                Line::Code | Line::Blank => {
                    b.text.push_str(raw);
                    b.text.push('\n');
                    continue;
                }
                Line::Comment => continue,
                Line::OddMeta => {
                    file.unparsed.push((n, raw.to_owned()));
                    continue;
                }
                Line::End => {
                    finish_block(&mut block, &mut case);
                    continue;
                }
                Line::CaseStart(_) | Line::Meta(_) => finish_block(&mut block, &mut case),
            }
        }
        match line {
            Line::CaseStart(desc) => {
                if let Some(done) = case.take() {
                    file.cases.push(done.finish());
                }
                case = Some(CaseBuilder {
                    case: Case { name: desc.to_owned(), line: n, ..Case::default() },
                    ..CaseBuilder::default()
                });
            }
            Line::Meta(m) => {
                let understood = match case.as_mut() {
                    None => header_meta(&mut file, &m),
                    Some(c) => case_meta(c, &m, &mut block),
                };
                if !understood {
                    file.unparsed.push((n, raw.to_owned()));
                }
            }
            Line::OddMeta => file.unparsed.push((n, raw.to_owned())),
            Line::End | Line::Comment => {}
            Line::Blank => {
                if let Some(c) = case.as_mut().filter(|c| c.in_code) {
                    c.code_lines.push(raw.to_owned());
                }
            }
            Line::Code => {
                if let Some(c) = case.as_mut() {
                    if c.meta_after_code {
                        file.late_code.push(n);
                    }
                    c.code_lines.push(raw.to_owned());
                    c.in_code = true;
                }
            }
        }
    }
    finish_block(&mut block, &mut case);
    if let Some(done) = case.take() {
        file.cases.push(done.finish());
    }
    file
}

/// A file header's `## KEY: VALUE`; false if not understood.
fn header_meta(file: &mut SpecFile, m: &Meta) -> bool {
    if m.qualifier.is_some() {
        return false;
    }
    match m.key {
        "tags" => file.tags.extend(m.value.split_whitespace().map(str::to_owned)),
        "suite" => file.disabled |= m.value.trim() == "disabled",
        "compare_shells" => file.compare_shells.extend(m.value.split_whitespace().map(str::to_owned)),
        "legacy_tmp_dir" => file.legacy_tmp_dir = matches!(m.value.trim(), "yes" | "true"),
        // Oils' own bookkeeping: how many failures its shell may have, which is "ours".
        "oils_failures_allowed" | "oils_cpp_failures_allowed" | "our_shell" => {}
        _ => return false,
    }
    true
}

/// A case's `## [QUALIFIER SHELLS ]KEY: VALUE`; false if not understood.
fn case_meta(c: &mut CaseBuilder, m: &Meta, block: &mut Option<Block>) -> bool {
    let qualifier = m.qualifier.map(str::to_owned);
    let shells = m.shells.map(str::to_owned);
    let field = match m.key {
        "STDOUT" | "STDERR" => {
            *block = Some(Block { qualifier, shells, stderr: m.key == "STDERR", text: String::new() });
            // Oils refuses a value on the same line; the block still reads.
            return m.value.trim().is_empty();
        }
        "stdout" => Field::Stdout(format!("{}\n", m.value)),
        "stderr" => Field::Stderr(format!("{}\n", m.value)),
        "stdout-json" | "stderr-json" => match serde_json::from_str::<String>(m.value.trim()) {
            Ok(s) if m.key == "stdout-json" => Field::Stdout(s),
            Ok(s) => Field::Stderr(s),
            Err(_) => return false,
        },
        "status" => match m.value.trim().parse() {
            Ok(n) => Field::Status(n),
            Err(_) => return false,
        },
        "code" if qualifier.is_none() => {
            c.code_value = Some(m.value.to_owned());
            return true;
        }
        _ => return false,
    };
    c.add(qualifier, shells, field);
    true
}

pub fn load_corpus(corpus: &Path, filter: Option<&str>) -> Result<Vec<SpecFile>> {
    let spec = corpus.join("spec");
    if !spec.is_dir() {
        bail!(
            "the Oils spec tests are not at {} (expected spec/*.test.sh there; set --corpus DIR or RUSH_OILS_SPEC)",
            corpus.display()
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&spec)
        .with_context(|| format!("listing {}", spec.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.sh"))
        .filter(|n| filter.is_none_or(|f| n.contains(f)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(spec.join(&name)).with_context(|| format!("reading spec/{name}"))?;
            Ok(parse(&name, &String::from_utf8_lossy(&bytes)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running

struct RunOptions {
    shells: Vec<String>,
    rush: PathBuf,
    jobs: usize,
    filter: Option<String>,
    timeout: Duration,
    verbose: bool,
}

/// A shell under test.
struct Shell {
    /// The column it is reported under.
    label: String,
    /// Whose alternatives it is judged by (rush: bash's).
    judged_as: String,
    /// `$SH`, and the name it runs as: a symlink by that name to `program` is first on the
    /// case's PATH.
    name: String,
    program: PathBuf,
}

/// What one run of a case did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The exit status, or minus the signal that ended the shell.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub took: Duration,
    /// It failed, then passed when run again.
    pub retried: bool,
}

/// How a shell did on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matched the case's own expectation (`None`) or the alternative named (`OK`, `BUG-2`).
    Pass(Option<String>),
    Fail,
    Timeout,
    Skip,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Pass(_) => "pass",
            Verdict::Fail => "fail",
            Verdict::Timeout => "timeout",
            Verdict::Skip => "skip",
        }
    }
}

pub fn judge(case: &Case, judged_as: &str, out: &Outcome) -> Verdict {
    if out.timed_out {
        return Verdict::Timeout;
    }
    match case.expectations(judged_as).into_iter().find(|(_, e)| e.matches(out)) {
        Some((qualifier, _)) => Verdict::Pass(qualifier),
        None => Verdict::Fail,
    }
}

/// The per-run directory: `bin/python2` (the helpers' shebang) for Python 3, `sh-LABEL/NAME`
/// for each shell, and `run/N.ATTEMPT/tmp` per run. Removed when dropped.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let root = std::env::temp_dir().join(format!("rush-spec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).with_context(|| format!("creating {}", root.display()))?;
        Ok(Scratch { root })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A Python 3 for the helpers' `#!/usr/bin/env python2`: the system's first (a pyenv shim
/// needs an environment the cases do not have).
fn find_python3() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn resolve_shells(opts: &RunOptions) -> Result<Vec<Shell>> {
    let mut shells = Vec::new();
    for label in &opts.shells {
        if shells.iter().any(|s: &Shell| &s.label == label) {
            continue;
        }
        let shell = if label == "rush" {
            if !opts.rush.is_file() {
                bail!(
                    "no rush binary at {} (build it: cargo build -p rush-userspace; or give --rush PATH)",
                    opts.rush.display()
                );
            }
            let program =
                opts.rush.canonicalize().with_context(|| format!("resolving {}", opts.rush.display()))?;
            Shell { label: label.clone(), judged_as: "bash".into(), name: "bash".into(), program }
        } else {
            let program = find_on_path(label).with_context(|| format!("no {label} on PATH"))?;
            Shell { label: label.clone(), judged_as: label.clone(), name: label.clone(), program }
        };
        shells.push(shell);
    }
    if shells.is_empty() {
        bail!("no shell to run (--shells)");
    }
    Ok(shells)
}

/// How a shell did on a case, and what its run did (`None`: not run).
type Cell = (Verdict, Option<Outcome>);

/// A case on a shell: (file, case, shell) indices.
type Job = (usize, usize, usize);

/// Every case of `files` on every shell (skipped where a file is not for that shell).
pub struct Report {
    shells: Vec<(String, String)>,
    files: Vec<SpecFile>,
    /// [file][case][shell].
    results: Vec<Vec<Vec<Cell>>>,
    took: Duration,
    /// Kept to run failures again ([`Report::recheck_over_allowance`]).
    harness: Harness,
}

/// The shells set up to run cases: each a symlink named `$SH` in its own directory, first
/// on its cases' PATH; Python 3 as the helpers' `python2`; a scratch directory.
struct Harness {
    shells: Vec<Shell>,
    envs: Vec<Vec<(&'static str, OsString)>>,
    scratch: Scratch,
    jobs: usize,
    timeout: Duration,
}

impl Harness {
    fn new(corpus: &Path, opts: &RunOptions) -> Result<Harness> {
        let shells = resolve_shells(opts)?;
        let scratch = Scratch::new()?;
        match find_python3() {
            Some(py) => std::os::unix::fs::symlink(py, scratch.root.join("bin/python2"))?,
            None => eprintln!("warning: no python3: the cases that use spec/bin/*.py will fail"),
        }
        check_helpers(&scratch, corpus);
        for sh in &shells {
            let dir = shell_dir(&scratch, sh);
            std::fs::create_dir_all(&dir)?;
            std::os::unix::fs::symlink(&sh.program, dir.join(&sh.name))?;
        }
        let env = |sh: &Shell| -> Vec<(&'static str, OsString)> {
            let path = [
                shell_dir(&scratch, sh),
                scratch.root.join("bin"),
                corpus.join("spec/bin"),
                PathBuf::from("/usr/bin"),
                PathBuf::from("/bin"),
            ];
            vec![
                ("SH", sh.name.clone().into()),
                ("REPO_ROOT", corpus.into()),
                ("PATH", std::env::join_paths(path).expect("no ':' in these paths")),
                ("LC_ALL", "C.UTF-8".into()),
            ]
        };
        let envs = shells.iter().map(env).collect();
        Ok(Harness { shells, envs, scratch, jobs: opts.jobs, timeout: opts.timeout })
    }

    /// Runs `jobs` on a pool of threads and hands each result to `done` as it comes.
    /// `stubborn`: a failure is run up to [`RECHECK_ATTEMPTS`] times whatever it prints.
    fn run(&self, files: &[SpecFile], jobs: &[Job], stubborn: bool, mut done: impl FnMut(Job, Cell)) {
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.min(jobs.len().max(1)) {
                let tx = tx.clone();
                let next = &next;
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(fi, ci, si)) = jobs.get(i) else { break };
                        let shell = &self.shells[si];
                        let run = Run {
                            shell,
                            program: shell_dir(&self.scratch, shell).join(&shell.name),
                            env: &self.envs[si],
                            dir: self.scratch.root.join(format!("run/{}-{i}", u8::from(stubborn))),
                            legacy_tmp_dir: files[fi].legacy_tmp_dir,
                            timeout: self.timeout,
                        };
                        let (verdict, mut out) = run.judged(&files[fi].cases[ci], stubborn);
                        if matches!(verdict, Verdict::Pass(_)) {
                            (out.stdout, out.stderr) = (Vec::new(), Vec::new());
                        }
                        if tx.send(((fi, ci, si), (verdict, Some(out)))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (job, cell) in rx {
                done(job, cell);
            }
        });
    }
}

fn execute(corpus: &Path, opts: &RunOptions) -> Result<Report> {
    let files = load_corpus(corpus, opts.filter.as_deref())?;
    if files.is_empty() {
        bail!("no spec file matches --filter {:?}", opts.filter.as_deref().unwrap_or(""));
    }
    if opts.verbose {
        print_parse_notes(&files);
    }
    let corpus = corpus.canonicalize().with_context(|| format!("resolving {}", corpus.display()))?;
    let harness = Harness::new(&corpus, opts)?;
    let shells = &harness.shells;
    let corpus_before = corpus_entries(&corpus);

    let mut results: Vec<Vec<Vec<Cell>>> = files
        .iter()
        .map(|f| f.cases.iter().map(|_| vec![(Verdict::Skip, None); shells.len()]).collect())
        .collect();
    let mut jobs: Vec<Job> = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        for ci in 0..f.cases.len() {
            for (si, sh) in shells.iter().enumerate() {
                if f.skip_reason(&sh.judged_as).is_none() {
                    jobs.push((fi, ci, si));
                }
            }
        }
    }
    let cases: usize = files.iter().map(|f| f.cases.len()).sum();
    let labels: Vec<&str> = shells.iter().map(|s| s.label.as_str()).collect();
    eprintln!(
        "==> Oils spec tests: {} files, {cases} cases, on {} ({} runs, -j {})",
        files.len(),
        labels.join(", "),
        jobs.len(),
        opts.jobs
    );

    let started = Instant::now();
    let mut done = 0;
    let mut left_in_file = vec![0; files.len()];
    for &(fi, _, _) in &jobs {
        left_in_file[fi] += 1;
    }
    harness.run(&files, &jobs, false, |(fi, ci, si), cell| {
        results[fi][ci][si] = cell;
        done += 1;
        left_in_file[fi] -= 1;
        if opts.verbose && left_in_file[fi] == 0 {
            eprintln!("    {} done ({done}/{} runs)", files[fi].name, jobs.len());
        } else if !opts.verbose && jobs.len() >= 1000 && done % (jobs.len() / 10) == 0 {
            eprintln!("    {done}/{} runs, {:.0}s", jobs.len(), started.elapsed().as_secs_f64());
        }
    });
    let took = started.elapsed();
    eprintln!("    {} runs in {:.1}s", jobs.len(), took.as_secs_f64());
    if corpus_entries(&corpus) != corpus_before {
        eprintln!("warning: a case left files in the corpus ({}): it is third-party data", corpus.display());
    }
    let report = Report {
        shells: shells.iter().map(|s| (s.label.clone(), s.judged_as.clone())).collect(),
        files,
        results,
        took,
        harness,
    };
    report.print_retried();
    Ok(report)
}

/// Most runs a failing case gets when its runs differ (see [`Run::judged`]).
const MAX_ATTEMPTS: usize = 5;
/// Most runs a failure gets when its file is over the allowance (see
/// [`Report::recheck_over_allowance`]).
const RECHECK_ATTEMPTS: usize = 10;

/// How a case is run on a shell.
struct Run<'a> {
    shell: &'a Shell,
    /// The symlink named `$SH`.
    program: PathBuf,
    env: &'a [(&'static str, OsString)],
    /// Holds the run's `tmp`; removed after each run.
    dir: PathBuf,
    legacy_tmp_dir: bool,
    timeout: Duration,
}

impl Run<'_> {
    /// Runs `case` and judges it. A failure is run again: some cases race (job control,
    /// SIGPIPE in a pipeline) and a shell may print in a varying order, which would make the
    /// counts, and so the allowance check, flaky. A failure that repeats itself exactly is
    /// final; one whose runs differ gets up to [`MAX_ATTEMPTS`] (`stubborn`: any failure
    /// gets [`RECHECK_ATTEMPTS`]). Passing on any run passes, marked `retried` (counted as
    /// a failure when the allowance is lowered). A timeout is final.
    fn judged(&self, case: &Case, stubborn: bool) -> (Verdict, Outcome) {
        let attempt = || {
            let out = run_case(self, case).unwrap_or_else(|e| Outcome {
                status: -1,
                stderr: format!("(the runner could not run it: {e:#})").into_bytes(),
                ..Outcome::default()
            });
            let _ = std::fs::remove_dir_all(&self.dir);
            (judge(case, &self.shell.judged_as, &out), out)
        };
        let (verdict, first) = attempt();
        if verdict != Verdict::Fail {
            return (verdict, first);
        }
        let mut varies = false;
        for _ in 1..if stubborn { RECHECK_ATTEMPTS } else { MAX_ATTEMPTS } {
            let (verdict, out) = attempt();
            match verdict {
                Verdict::Pass(_) => return (verdict, Outcome { retried: true, ..out }),
                Verdict::Timeout => break,
                _ => {}
            }
            varies |= (out.status, &out.stdout, &out.stderr) != (first.status, &first.stdout, &first.stderr);
            if !varies && !stubborn {
                break;
            }
        }
        (Verdict::Fail, first)
    }
}

/// Warns if spec/bin/argv.py (most cases use it) does not run as the cases will run it.
fn check_helpers(scratch: &Scratch, corpus: &Path) {
    let path = std::env::join_paths([scratch.root.join("bin"), corpus.join("spec/bin"), "/usr/bin".into()])
        .unwrap_or_default();
    let out = Command::new(corpus.join("spec/bin/argv.py"))
        .arg("ok")
        .env_clear()
        .env("PATH", path)
        .env("LC_ALL", "C.UTF-8")
        .output();
    match out {
        Ok(o) if o.stdout == b"['ok']\n" => {}
        Ok(o) => eprintln!(
            "warning: spec/bin/argv.py does not work here ({}): most cases will fail",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: spec/bin/argv.py does not run here ({e}): most cases will fail"),
    }
}

/// The names at the corpus' top and in spec/, to notice a case writing there.
fn corpus_entries(corpus: &Path) -> BTreeSet<OsString> {
    [corpus.to_owned(), corpus.join("spec")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().into_os_string()))
        .collect()
}

fn print_parse_notes(files: &[SpecFile]) {
    let unparsed: usize = files.iter().map(|f| f.unparsed.len()).sum();
    let late: usize = files.iter().map(|f| f.late_code.len()).sum();
    eprintln!("parser: {unparsed} unparsed metadata lines, {late} code lines after a case's metadata");
    for f in files {
        for (n, text) in &f.unparsed {
            eprintln!("    unparsed {}:{n}: {text}", f.name);
        }
        for n in &f.late_code {
            eprintln!("    code after metadata {}:{n}", f.name);
        }
    }
}

/// Runs the shell with the case's code on stdin in `DIR/tmp` (also `$TMP`, holding a `_tmp` for
/// files that expect one), in its own session; on `timeout` the session's process group is
/// killed. `$HOME` is not set: Oils' harness sets none, and a case checks that
/// (vars-special.test.sh, "$HOME is NOT set"); cases that need one set their own.
fn run_case(run: &Run, case: &Case) -> Result<Outcome> {
    let (sh, timeout) = (run.shell, run.timeout);
    let tmp = run.dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    if run.legacy_tmp_dir {
        std::fs::create_dir(tmp.join("_tmp"))?;
    }
    let mut cmd = Command::new(&run.program);
    cmd.arg0(&sh.name)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .env("TMP", &tmp)
        .current_dir(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setsid, which
    // is async-signal-safe; it makes the shell a session and group leader with no terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", sh.program.display()))?;
    let deadline = started + timeout;
    let (stdout, stderr, mut timed_out) = communicate(&mut child, case.code.as_bytes(), deadline);
    let pid = child.id() as libc::pid_t;
    let mut nap = Duration::from_micros(100);
    while !timed_out && !exited(pid) {
        if Instant::now() >= deadline {
            timed_out = true;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    // The whole group: on a timeout the shell and all it started, otherwise whatever it
    // left running. The shell is not reaped yet, so the group's id is still its own.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = child.wait()?;
    let status = status.code().unwrap_or_else(|| -status.signal().unwrap_or(0));
    Ok(Outcome { status, stdout, stderr, timed_out, took: started.elapsed(), retried: false })
}

/// The shell's own directory, first on its cases' PATH: a symlink named `$SH` to it.
fn shell_dir(scratch: &Scratch, sh: &Shell) -> PathBuf {
    scratch.root.join(format!("sh-{}", sh.label))
}

/// Whether the child has exited, leaving it unreaped.
fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data, valid zeroed.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t for waitid to fill; WNOWAIT leaves the child to
    // be reaped by Child::wait.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: waitid succeeded, so si_pid is set (0 while the child runs).
    r == 0 && unsafe { info.si_pid() } != 0
}

/// Writes `input` to the child's stdin and reads its stdout and stderr until both close or
/// `deadline` passes (then the last value is true).
fn communicate(child: &mut Child, input: &[u8], deadline: Instant) -> (Vec<u8>, Vec<u8>, bool) {
    let mut stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
    if let Some(s) = &stdin {
        // SAFETY: fcntl on an fd this function owns; no memory is passed.
        unsafe {
            let flags = libc::fcntl(s.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(s.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    if input.is_empty() {
        stdin = None;
    }
    let mut pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut bufs = [Vec::new(), Vec::new()];
    let mut written = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if pipes.iter().all(Option::is_none) {
            let [out, err] = bufs;
            return (out, err, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let [out, err] = bufs;
            return (out, err, true);
        }
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        if let Some(s) = &stdin {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
            which.push(2);
        }
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                fds.push(libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                which.push(i);
            }
        }
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for poll to update.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            continue; // timeout (the deadline is checked above) or EINTR
        }
        for (fd, &w) in fds.iter().zip(&which) {
            if fd.revents == 0 {
                continue;
            }
            if w == 2 {
                let Some(s) = stdin.as_mut() else { continue };
                match s.write(&input[written..]) {
                    Ok(k) => {
                        written += k;
                        if written == input.len() {
                            stdin = None;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => stdin = None, // the shell stopped reading
                }
            } else {
                let Some(p) = pipes[w].as_mut() else { continue };
                match p.read(&mut chunk) {
                    Ok(0) => pipes[w] = None,
                    Ok(k) => {
                        let room = OUTPUT_CAP.saturating_sub(bufs[w].len());
                        bufs[w].extend_from_slice(&chunk[..k.min(room)]);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => pipes[w] = None,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reporting

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Failed on a timeout (in `failed`).
    pub timeouts: usize,
    /// Passed only when run again (in `passed`).
    pub retried: usize,
}

impl Counts {
    fn add(&mut self, (v, out): &Cell) {
        self.retried += usize::from(out.as_ref().is_some_and(|o| o.retried));
        match v {
            Verdict::Pass(_) => self.passed += 1,
            Verdict::Fail => self.failed += 1,
            Verdict::Timeout => {
                self.failed += 1;
                self.timeouts += 1;
            }
            Verdict::Skip => self.skipped += 1,
        }
    }

    fn sum(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
        self.timeouts += o.timeouts;
        self.retried += o.retried;
    }

    fn cell(&self) -> String {
        format!("{} / {} / {}", self.passed, self.failed, self.skipped)
    }
}

impl Report {
    /// Runs rush's failures in the files over `allowance` again, up to [`RECHECK_ATTEMPTS`]
    /// times each, before the check judges: a case that passes on any run is flaky (its
    /// output varies, e.g. a listing in hash order), not a new failure.
    pub fn recheck_over_allowance(&mut self, allowance: &PerFile) {
        let Some(si) = self.shell_index("rush") else { return };
        let over: BTreeSet<String> = over_allowance(allowance, &self.failures_per_file("rush", false))
            .into_iter()
            .map(|(f, ..)| f)
            .collect();
        let jobs: Vec<Job> = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| over.contains(&f.name))
            .flat_map(|(fi, f)| (0..f.cases.len()).map(move |ci| (fi, ci, si)))
            .filter(|&(fi, ci, si)| self.results[fi][ci][si].0 == Verdict::Fail)
            .collect();
        if jobs.is_empty() {
            return;
        }
        eprintln!(
            "    {} files over the allowance: their {} failures run again, up to {RECHECK_ATTEMPTS} times each",
            over.len(),
            jobs.len()
        );
        let mut rerun = Vec::new();
        self.harness.run(&self.files, &jobs, true, |job, cell| rerun.push((job, cell)));
        for ((fi, ci, si), cell) in rerun {
            self.results[fi][ci][si] = cell;
        }
        self.print_retried();
    }

    /// Names the cases each shell passed only on a retry.
    fn print_retried(&self) {
        for (si, (label, _)) in self.shells.iter().enumerate() {
            let retried: Vec<String> = self
                .files
                .iter()
                .enumerate()
                .flat_map(|(fi, f)| f.cases.iter().enumerate().map(move |(ci, c)| (fi, f, c, ci)))
                .filter(|(fi, _, _, ci)| self.results[*fi][*ci][si].1.as_ref().is_some_and(|o| o.retried))
                .map(|(_, f, c, _)| format!("{}:{}", f.name, c.line))
                .collect();
            if !retried.is_empty() {
                eprintln!(
                    "    {label}: {} cases passed only on a retry: {}",
                    retried.len(),
                    retried.join(" ")
                );
            }
        }
    }

    fn shell_index(&self, label: &str) -> Option<usize> {
        self.shells.iter().position(|(l, _)| l == label)
    }

    /// Why shells skipped the file (one reason if all did), timeouts, passes on a retry.
    fn note(&self, fi: usize) -> String {
        let f = &self.files[fi];
        let reasons: Vec<(&str, Option<&str>)> =
            self.shells.iter().map(|(label, judged_as)| (label.as_str(), f.skip_reason(judged_as))).collect();
        if let Some(first) = reasons[0].1
            && reasons.iter().all(|(_, r)| *r == Some(first))
        {
            return first.to_owned();
        }
        let mut notes: Vec<String> =
            reasons.iter().filter_map(|&(label, r)| Some(format!("{label}: {}", r?))).collect();
        for (si, (label, _)) in self.shells.iter().enumerate() {
            let c = self.counts(fi, si);
            if c.timeouts > 0 {
                notes.push(format!(
                    "{label}: {} timeout{}",
                    c.timeouts,
                    if c.timeouts == 1 { "" } else { "s" }
                ));
            }
            if c.retried > 0 {
                notes.push(format!("{label}: {} passed on a retry", c.retried));
            }
        }
        notes.join("; ")
    }

    fn counts(&self, fi: usize, si: usize) -> Counts {
        let mut c = Counts::default();
        for case in &self.results[fi] {
            c.add(&case[si]);
        }
        c
    }

    fn totals(&self, si: usize) -> Counts {
        let mut c = Counts::default();
        for fi in 0..self.files.len() {
            c.sum(self.counts(fi, si));
        }
        c
    }

    /// How many cases `label` ran (any shell if it is not in the run).
    pub fn cases_run(&self, label: &str) -> usize {
        let ran = |r: &[Cell], si: usize| r[si].0 != Verdict::Skip;
        match self.shell_index(label) {
            Some(si) => self.results.iter().flatten().filter(|r| ran(r, si)).count(),
            None => self.results.iter().flatten().filter(|r| (0..r.len()).any(|si| ran(r, si))).count(),
        }
    }

    /// Per file that ran: how many cases `label` failed (timeouts included), and with
    /// `retried`, the ones it passed only on a retry: a lowered allowance counts those, so
    /// that a lucky run does not lower an entry below what an unlucky one needs.
    pub fn failures_per_file(&self, label: &str, retried: bool) -> PerFile {
        let Some(si) = self.shell_index(label) else { return BTreeMap::new() };
        self.files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.skip_reason(&self.shells[si].1).is_none())
            .map(|(fi, f)| {
                let c = self.counts(fi, si);
                (f.name.clone(), (c.failed + if retried { c.retried } else { 0 }) as u32)
            })
            .collect()
    }

    /// Rows of the table: file, cases, a `pass / fail / skip` cell per shell, a note.
    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut header = vec!["file".to_owned(), "cases".to_owned()];
        header.extend(self.shells.iter().map(|(l, _)| format!("{l} pass / fail / skip")));
        header.push("note".into());
        rows.push(header);
        for (fi, f) in self.files.iter().enumerate() {
            let mut row = vec![f.name.clone(), f.cases.len().to_string()];
            row.extend((0..self.shells.len()).map(|si| self.counts(fi, si).cell()));
            row.push(self.note(fi));
            rows.push(row);
        }
        let cases: usize = self.files.iter().map(|f| f.cases.len()).sum();
        let mut total = vec!["total".to_owned(), cases.to_string()];
        total.extend((0..self.shells.len()).map(|si| self.totals(si).cell()));
        total.push(String::new());
        rows.push(total);
        rows
    }

    pub fn text_table(&self) -> String {
        let rows = self.rows();
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (ri, row) in rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let w = widths[c];
                if c == 0 || c == row.len() - 1 {
                    let _ = write!(line, "{cell:<w$}  ");
                } else {
                    let _ = write!(line, "{cell:>w$}  ");
                }
            }
            out += line.trim_end();
            out.push('\n');
            if ri == 0 || ri == rows.len() - 2 {
                out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
                out.push('\n');
            }
        }
        out
    }

    /// `rush: N passed, N failed, N skipped` per shell, and rush against bash.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (si, (label, _)) in self.shells.iter().enumerate() {
            let c = self.totals(si);
            let _ = writeln!(out, "{label}: {} passed, {} failed, {} skipped", c.passed, c.failed, c.skipped);
        }
        if let (Some(r), Some(b)) = (self.shell_index("rush"), self.shell_index("bash")) {
            let (mut both, mut bash) = (0, 0);
            for case in self.results.iter().flatten() {
                if matches!(case[b].0, Verdict::Pass(_)) {
                    bash += 1;
                    both += usize::from(matches!(case[r].0, Verdict::Pass(_)));
                }
            }
            let pct = if bash == 0 { 0.0 } else { 100.0 * both as f64 / bash as f64 };
            let _ = writeln!(out, "rush passes {both} of the {bash} cases bash passes ({pct:.1}%)");
        }
        out
    }

    /// The table and summary as Markdown, for docs/SHELL-COMPAT.md's table region.
    pub fn markdown(&self, rush: &Path) -> String {
        let rows = self.rows();
        let mut out = String::new();
        for (ri, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(
                    |(c, cell)| {
                        if ri == rows.len() - 1 && c < 2 { format!("**{cell}**") } else { cell.clone() }
                    },
                )
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if ri == 0 {
                let align: Vec<&str> = (0..row.len())
                    .map(|c| if c == 0 || c == row.len() - 1 { "---" } else { "---:" })
                    .collect();
                let _ = writeln!(out, "| {} |", align.join(" | "));
            }
        }
        out.push('\n');
        for line in self.summary().lines() {
            let _ = writeln!(out, "    {line}");
        }
        let default_rush = util::target_dir().map(|t| t.join("debug/rush")).ok();
        if default_rush.as_deref() != Some(rush) {
            let _ = writeln!(out, "\nThe rush column was run with `--rush {}`.", rush.display());
        }
        out
    }

    /// What `label`'s failures expected and got, truncated.
    pub fn failures(&self, label: &str) -> String {
        let Some(si) = self.shell_index(label) else { return String::new() };
        let judged_as = &self.shells[si].1;
        let mut out = String::new();
        for (fi, f) in self.files.iter().enumerate() {
            for (ci, case) in f.cases.iter().enumerate() {
                let (verdict, Some(got)) = &self.results[fi][ci][si] else { continue };
                if matches!(verdict, Verdict::Pass(_)) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "\n{} {}:{} {}  [{label}]",
                    verdict.word().to_uppercase(),
                    f.name,
                    case.line,
                    case.name
                );
                for line in case.code.lines().take(12) {
                    let _ = writeln!(out, "  | {line}");
                }
                if case.code.lines().count() > 12 {
                    let _ = writeln!(out, "  | ...");
                }
                for (qualifier, exp) in case.expectations(judged_as) {
                    let mut diffs = Vec::new();
                    if let Some(s) = &exp.stdout
                        && s.as_bytes() != got.stdout
                    {
                        diffs.push(format!("stdout {} got {}", shown(s.as_bytes()), shown(&got.stdout)));
                    }
                    if let Some(s) = &exp.stderr
                        && s.as_bytes() != got.stderr
                    {
                        diffs.push(format!("stderr {} got {}", shown(s.as_bytes()), shown(&got.stderr)));
                    }
                    if exp.status.unwrap_or(0) != got.status {
                        diffs.push(format!("status {} got {}", exp.status.unwrap_or(0), got.status));
                    }
                    let who = qualifier.map_or("expected".to_owned(), |q| format!("or ({q} {judged_as})"));
                    let _ = writeln!(out, "  {who}: {}", diffs.join("; "));
                }
                if exp_lacks_stderr(case, judged_as) && !got.stderr.is_empty() {
                    let _ = writeln!(out, "  stderr was {}", shown(&got.stderr));
                }
            }
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let files: Vec<_> = self
            .files
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                let cases: Vec<_> = f
                    .cases
                    .iter()
                    .enumerate()
                    .map(|(ci, case)| {
                        let mut results = serde_json::Map::new();
                        for (si, (label, _)) in self.shells.iter().enumerate() {
                            let (v, out) = &self.results[fi][ci][si];
                            let mut r = json!({ "result": v.word() });
                            if let Verdict::Pass(Some(q)) = v {
                                r["as"] = json!(q);
                            }
                            if let Some(out) = out {
                                r["seconds"] = json!((out.took.as_secs_f64() * 1000.0).round() / 1000.0);
                                if out.retried {
                                    r["retried"] = json!(true);
                                }
                            }
                            if let Some(out) = out.as_ref().filter(|_| !matches!(v, Verdict::Pass(_))) {
                                r["status"] = json!(out.status);
                                r["stdout"] =
                                    json!(String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4096)]));
                                r["stderr"] =
                                    json!(String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(4096)]));
                            }
                            results.insert(label.clone(), r);
                        }
                        json!({ "name": case.name, "line": case.line, "results": results })
                    })
                    .collect();
                let skipped: serde_json::Map<_, _> = self
                    .shells
                    .iter()
                    .filter_map(|(label, judged_as)| Some((label.clone(), json!(f.skip_reason(judged_as)?))))
                    .collect();
                json!({ "file": f.name, "skipped": skipped, "cases": cases })
            })
            .collect();
        let totals: serde_json::Map<_, _> = self
            .shells
            .iter()
            .enumerate()
            .map(|(si, (label, judged_as))| {
                let c = self.totals(si);
                (
                    label.clone(),
                    json!({ "judged_as": judged_as, "passed": c.passed, "failed": c.failed,
                            "skipped": c.skipped, "timeouts": c.timeouts, "retried": c.retried }),
                )
            })
            .collect();
        json!({ "seconds": self.took.as_secs_f64(), "totals": totals, "files": files })
    }
}

fn exp_lacks_stderr(case: &Case, shell: &str) -> bool {
    case.expectations(shell).iter().all(|(_, e)| e.stderr.is_none())
}

/// Bytes as a quoted, escaped string of at most ~200 characters.
fn shown(bytes: &[u8]) -> String {
    let s = format!("{:?}", String::from_utf8_lossy(bytes));
    if s.chars().count() > 200 { format!("{}...\"", s.chars().take(200).collect::<String>()) } else { s }
}

/// Puts `table` between the markers of `path`, or creates `path` with a header.
fn write_markdown(path: &Path, table: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(old) => replace_region(&old, table)
            .with_context(|| format!("{} has no {TABLE_BEGIN} ... {TABLE_END} region", path.display()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            format!("{}{TABLE_BEGIN}\n{table}{TABLE_END}\n", doc_header())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn replace_region(old: &str, table: &str) -> Option<String> {
    let begin = old.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
    let end = begin + old[begin..].find(TABLE_END)?;
    Some(format!("{}\n{table}{}", &old[..begin], &old[end..]))
}

fn doc_header() -> String {
    "# Shell compatibility: the Oils spec tests\n\
     \n\
     How the `rush` shell does against bash and dash on the shell spec tests of the Oils\n\
     project (oils-for-unix/oils, Apache-2.0: 133 files, 2,742 cases), third-party data read\n\
     from `../shared/external/oils-spec` and never copied here. Each shell is judged by the\n\
     case's own expectations: what the case expects of every shell, or an alternative it lists\n\
     for that shell (`## OK bash ...`, `## BUG dash ...`, `## N-I dash ...`). rush is judged as\n\
     bash: it runs as `bash` (a symlink to it, first on PATH), so `$SH` is `bash` in the cases\n\
     and bash's alternatives count. A shell is judged only on the files whose `compare_shells`\n\
     names it (rush: those naming bash); files tagged `interactive` (they need a terminal) and\n\
     those Oils marks `suite: disabled` are skipped for all. A cell is `passed / failed /\n\
     skipped`; a timeout (10 s) is a failure; a failure is run once more (a few cases race).\n\
     \n\
     Some failures are the harness's and every shell has them: there is no Python 2 (the\n\
     helpers in spec/bin run on Python 3; cases running `python2 -c 'print ...'` fail), CI runs\n\
     as root (`test -r` is true), `$REPO_ROOT` is the corpus rather than an Oils checkout, and\n\
     bash and dash are Debian's.\n\
     \n\
     Rerun: `cargo build -p rush-userspace && cargo xtask spec --markdown` (rewrites the table\n\
     below). The host tier runs `cargo xtask spec --check`, which fails when rush fails more\n\
     cases of a file than `testdata/oils-spec-allowance.toml` allows; `cargo xtask spec\n\
     --update-allowance` lowers those counts and refuses to raise them.\n\
     \n"
    .to_owned()
}

// ---------------------------------------------------------------------------------------
// The allowance

/// A count per spec file name.
pub type PerFile = BTreeMap<String, u32>;

/// An entry an update would raise.
#[derive(Debug, PartialEq, Eq)]
pub struct Rise {
    pub file: String,
    pub from: u32,
    pub to: u32,
}

const ALLOWANCE_HEADER: &str = "\
# How many cases of each Oils spec test file rush may still fail (the shell spec tests in
# ../shared/external/oils-spec; docs/SHELL-COMPAT.md). `cargo xtask spec --check`, run by
# the host tier, fails when rush fails more cases of a file than its entry here.
#
# The numbers only ever go down: `cargo xtask spec --update-allowance` lowers each entry to
# rush's current count and refuses to raise one (a file with no entry yet gets one). After
# a fix, run it and commit the lower numbers. `--update-allowance --init` writes the counts
# as they are, up or down: only for a new baseline (e.g. rush's shell replaced).
";

pub fn parse_allowance(text: &str) -> Result<PerFile> {
    let table: toml::Table = toml::from_str(text)?;
    table
        .into_iter()
        .map(|(file, v)| match v.as_integer().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok((file, n)),
            None => bail!("{file}: expected a count, got {v}"),
        })
        .collect()
}

/// The file's text; `stand_in` names the binary the counts were taken with if not rush's.
pub fn render_allowance(allowance: &PerFile, stand_in: Option<&Path>) -> String {
    let mut out = ALLOWANCE_HEADER.to_owned();
    if let Some(p) = stand_in {
        let _ = writeln!(
            out,
            "#\n# These counts were taken with `--rush {}`, not target/debug/rush.",
            p.display()
        );
    }
    out.push('\n');
    for (file, n) in allowance {
        let _ = writeln!(out, "{} = {n}", toml::Value::String(file.clone()));
    }
    out
}

/// Files whose failures exceed their allowance (no entry allows none): (file, failed,
/// allowed).
pub fn over_allowance(allowance: &PerFile, failures: &PerFile) -> Vec<(String, u32, Option<u32>)> {
    failures
        .iter()
        .filter(|(f, n)| **n > allowance.get(*f).copied().unwrap_or(0))
        .map(|(f, n)| (f.clone(), *n, allowance.get(f).copied()))
        .collect()
}

/// The allowance lowered to `failures` (files not run keep theirs; a file without an entry
/// gets one). Refused, with the entries that would rise (file, from, to), unless `init`.
pub fn updated_allowance(
    allowance: &PerFile,
    failures: &PerFile,
    init: bool,
) -> std::result::Result<PerFile, Vec<Rise>> {
    let rises: Vec<_> = failures
        .iter()
        .filter_map(|(f, n)| {
            allowance.get(f).filter(|old| n > old).map(|old| Rise { file: f.clone(), from: *old, to: *n })
        })
        .collect();
    if !rises.is_empty() && !init {
        return Err(rises);
    }
    let mut new = allowance.clone();
    new.extend(failures.iter().map(|(f, n)| (f.clone(), *n)));
    Ok(new)
}

fn read_allowance(path: &Path) -> Result<PerFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_allowance(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn check_allowance_file(path: &Path, failures: &PerFile) -> Result<()> {
    let allowance = read_allowance(path)?;
    let over = over_allowance(&allowance, failures);
    let lower = failures.iter().filter(|(f, n)| allowance.get(*f).is_some_and(|a| *n < a)).count();
    if !over.is_empty() {
        let mut msg = format!("rush fails more Oils spec cases than {} allows:", path.display());
        for (f, n, a) in &over {
            match a {
                Some(a) => write!(msg, "\n    {f}: {n} failed, {a} allowed")?,
                None => write!(msg, "\n    {f}: {n} failed, no entry (none allowed)")?,
            }
        }
        msg += "\n(`cargo xtask spec --filter FILE --show-failures` shows what they expected and got)";
        bail!(msg);
    }
    eprintln!("rush is within the allowance of every file ({} checked)", failures.len());
    if lower > 0 {
        eprintln!(
            "{lower} files fail fewer cases than allowed: `cargo xtask spec --update-allowance` lowers them"
        );
    }
    Ok(())
}

fn update_allowance_file(path: &Path, failures: &PerFile, init: bool, stand_in: Option<&Path>) -> Result<()> {
    let allowance = read_allowance(path)?;
    match updated_allowance(&allowance, failures, init) {
        Ok(new) => {
            let changed = |up: bool| {
                new.iter()
                    .filter(|(f, n)| allowance.get(*f).is_some_and(|a| if up { *n > a } else { *n < a }))
                    .count()
            };
            let added = new.keys().filter(|f| !allowance.contains_key(*f)).count();
            std::fs::write(path, render_allowance(&new, stand_in))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {}: {} entries lowered, {} raised (--init), {added} added",
                path.display(),
                changed(false),
                changed(true)
            );
            Ok(())
        }
        Err(rises) => {
            let mut msg = format!("refusing to raise entries of {} (nothing written):", path.display());
            for Rise { file, from, to } in rises {
                write!(msg, "\n    {file}: {from} -> {to}")?;
            }
            msg += "\n(the allowance only goes down; --init writes the counts as they are)";
            bail!(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"## compare_shells: bash dash mksh
## oils_failures_allowed: 2
## tags: dev-minimal

# a comment before the first case
#### plain one-line stdout
echo hi
## stdout: hi

#### multi-line, status, per-shell alternatives
# comment inside code

echo one
echo two; exit 1
## status: 1
## STDOUT:
one

two
# a comment line, dropped as Oils drops it
## END
## OK bash STDOUT:
bash-one
## END
## OK bash status: 3
## BUG dash/mksh,ash status: 2
## N-I zsh stdout-json: ""
## OK-2 bash stdout: other

#### json, stderr and a block closed by the next metadata line
printf 'a\tb'
## stdout-json: "a\tb\u00e9"
## STDERR:
err
## BUG dash STDOUT:
dash
## END:
## stderr-json: ""

#### code given as a value
## code: foo(ls)
## status: 2
## N-I dash stderr: nope
## weird metadata line
"#;

    fn sample() -> SpecFile {
        parse("sample.test.sh", SAMPLE)
    }

    fn out(stdout: &str, status: i32) -> Outcome {
        Outcome { status, stdout: stdout.as_bytes().to_vec(), ..Outcome::default() }
    }

    #[test]
    fn header_and_cases() {
        let f = sample();
        assert_eq!(f.tags, ["dev-minimal"]);
        assert!(!f.disabled);
        assert_eq!(f.compare_shells, ["bash", "dash", "mksh"]);
        assert_eq!(f.skip_reason("bash"), None);
        assert_eq!(f.skip_reason("zsh"), Some("not in compare_shells"));
        let names: Vec<_> = f.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "plain one-line stdout",
                "multi-line, status, per-shell alternatives",
                "json, stderr and a block closed by the next metadata line",
                "code given as a value"
            ]
        );
        assert_eq!(f.cases[0].line, 6);
        let weird = SAMPLE.lines().position(|l| l == "## weird metadata line").unwrap() + 1;
        assert_eq!(f.unparsed, [(weird, "## weird metadata line".to_owned())]);
    }

    #[test]
    fn one_line_values_get_a_newline() {
        let c = &sample().cases[0];
        assert_eq!(c.code, "echo hi\n");
        assert_eq!(c.expect, Expect { stdout: Some("hi\n".into()), stderr: None, status: None });
        assert!(c.alternatives.is_empty());
    }

    #[test]
    fn blocks_keep_blank_lines_and_drop_comments() {
        let c = &sample().cases[1];
        assert_eq!(c.code, "echo one\necho two; exit 1\n", "comments and leading blank lines are not code");
        assert_eq!(c.expect.stdout.as_deref(), Some("one\n\ntwo\n"));
        assert_eq!(c.expect.status, Some(1));
    }

    #[test]
    fn alternatives_per_shell() {
        let c = &sample().cases[1];
        let q = |s: &str| c.alternatives.iter().find(|a| a.qualifier == s).cloned();
        assert_eq!(q("BUG").unwrap().shells, ["dash", "mksh", "ash"], "slash and comma lists");
        assert_eq!(q("N-I").unwrap().field, Field::Stdout(String::new()));
        assert_eq!(q("OK-2").unwrap().field, Field::Stdout("other\n".into()));

        // bash: its OK lines merge (stdout + status); OK-2 repeats stdout, so another one.
        let bash = c.expectations("bash");
        assert_eq!(bash.len(), 3);
        assert_eq!(
            bash[1],
            (Some("OK".into()), Expect { stdout: Some("bash-one\n".into()), stderr: None, status: Some(3) })
        );
        assert_eq!(
            bash[2],
            (Some("OK-2".into()), Expect { stdout: Some("other\n".into()), stderr: None, status: Some(1) })
        );
        assert_eq!(judge(c, "bash", &out("one\n\ntwo\n", 1)), Verdict::Pass(None));
        assert_eq!(judge(c, "bash", &out("bash-one\n", 3)), Verdict::Pass(Some("OK".into())));
        assert_eq!(judge(c, "bash", &out("other\n", 1)), Verdict::Pass(Some("OK-2".into())));
        assert_eq!(
            judge(c, "bash", &out("bash-one\n", 1)),
            Verdict::Fail,
            "fields of one alternative go together"
        );

        // dash: only a status, the stdout stays the case's.
        assert_eq!(judge(c, "dash", &out("one\n\ntwo\n", 2)), Verdict::Pass(Some("BUG".into())));
        assert_eq!(judge(c, "dash", &out("", 2)), Verdict::Fail);
        // Another shell's alternative is not dash's.
        assert_eq!(judge(c, "dash", &out("", 1)), Verdict::Fail);
        assert_eq!(judge(c, "zsh", &out("", 1)), Verdict::Pass(Some("N-I".into())));
        let timed_out = Outcome { timed_out: true, ..out("one\n\ntwo\n", 1) };
        assert_eq!(judge(c, "bash", &timed_out), Verdict::Timeout);
    }

    #[test]
    fn json_values_and_unclosed_blocks() {
        let c = &sample().cases[2];
        assert_eq!(c.expect.stdout.as_deref(), Some("a\tb\u{e9}"));
        assert_eq!(c.expect.stderr.as_deref(), Some(""), "stderr-json after the STDERR block wins");
        let dash = c.alternatives.iter().find(|a| a.shells == ["dash"]).unwrap();
        assert_eq!(dash.field, Field::Stdout("dash\n".into()), "## END: closes a block too");
        assert_eq!(c.code, "printf 'a\\tb'\n");
        // Unstated status is 0; unstated stderr is not compared.
        let mut o = out("a\tb\u{e9}", 0);
        assert_eq!(judge(c, "bash", &o), Verdict::Pass(None));
        o.stderr = b"noise".to_vec();
        assert_eq!(judge(c, "bash", &o), Verdict::Fail);
    }

    #[test]
    fn blank_lines_in_code_count_for_lineno() {
        let f = parse(
            "t",
            "## legacy_tmp_dir: yes\n#### a\n\n# c\necho a\n\n# c\necho b\n\n## stdout: x\n\n#### b\n",
        );
        assert!(f.legacy_tmp_dir);
        assert_eq!(
            f.cases[0].code, "echo a\n\necho b\n\n",
            "blank lines from the first code line on, no comments"
        );
    }

    #[test]
    fn code_value_and_block_ended_by_a_case() {
        let c = &sample().cases[3];
        assert_eq!(c.code, "foo(ls)");
        assert_eq!(c.expect.status, Some(2));
        let text = "#### a\necho\n## STDOUT:\nx\n\n#### b\necho\n";
        let f = parse("t", text);
        assert_eq!(f.cases.len(), 2);
        assert_eq!(f.cases[0].expect.stdout.as_deref(), Some("x\n\n"), "blank lines belong to an open block");
    }

    #[test]
    fn skipped_files() {
        let f = parse("t", "## compare_shells: bash\n## tags: dev-minimal interactive\n#### a\necho\n");
        assert_eq!(f.skip_reason("bash"), Some("tagged interactive"));
        let f = parse("t", "## compare_shells: bash\n## suite: disabled\n#### a\necho\n");
        assert_eq!(f.skip_reason("bash"), Some("suite: disabled"));
        let f = parse("t", "## compare_shells: dash bash-4.4\n#### a\necho\n");
        assert_eq!((f.skip_reason("bash"), f.skip_reason("dash")), (None, None), "a version after -");
        let f = parse("t", "#### a\necho\n");
        assert!(f.skip_reason("bash").is_some(), "no compare_shells: Oils' own shell only");
    }

    #[test]
    fn classify_lines() {
        assert_eq!(classify("## END"), Line::End);
        assert_eq!(classify("##   END"), Line::End);
        assert_eq!(classify("## END:"), Line::End);
        assert_eq!(classify("##END"), Line::Comment);
        assert_eq!(classify("## a note, not metadata"), Line::OddMeta);
        assert_eq!(classify("  # indented comment"), Line::Comment);
        assert_eq!(classify("   "), Line::Blank);
        assert_eq!(classify("echo ## not meta"), Line::Code);
        assert_eq!(
            classify("## OK-3 zsh/ash STDOUT: "),
            Line::Meta(Meta { qualifier: Some("OK-3"), shells: Some("zsh/ash"), key: "STDOUT", value: "" })
        );
        assert_eq!(
            classify("## N-I dash stdout: x  "),
            Line::Meta(Meta { qualifier: Some("N-I"), shells: Some("dash"), key: "stdout", value: "x  " })
        );
        assert_eq!(
            classify("## stdout: OK bash"),
            Line::Meta(Meta { qualifier: None, shells: None, key: "stdout", value: "OK bash" })
        );
    }

    fn map(entries: &[(&str, u32)]) -> PerFile {
        entries.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect()
    }

    #[test]
    fn allowance_lowers_and_adds() {
        let old = map(&[("a.test.sh", 5), ("b.test.sh", 2), ("not-run.test.sh", 7)]);
        let failures = map(&[("a.test.sh", 3), ("b.test.sh", 2), ("new.test.sh", 4)]);
        let new = updated_allowance(&old, &failures, false).unwrap();
        assert_eq!(
            new,
            map(&[("a.test.sh", 3), ("b.test.sh", 2), ("new.test.sh", 4), ("not-run.test.sh", 7)])
        );
        assert!(over_allowance(&new, &failures).is_empty());
    }

    #[test]
    fn allowance_refuses_to_rise() {
        let old = map(&[("a.test.sh", 5), ("b.test.sh", 2)]);
        let failures = map(&[("a.test.sh", 1), ("b.test.sh", 3)]);
        let rise = Rise { file: "b.test.sh".into(), from: 2, to: 3 };
        assert_eq!(updated_allowance(&old, &failures, false), Err(vec![rise]));
        assert_eq!(
            updated_allowance(&old, &failures, true).unwrap(),
            failures,
            "--init writes them as they are"
        );
        assert_eq!(over_allowance(&old, &failures), [("b.test.sh".to_owned(), 3, Some(2))]);
        let unlisted = map(&[("c.test.sh", 1)]);
        assert_eq!(
            over_allowance(&old, &unlisted),
            [("c.test.sh".to_owned(), 1, None)],
            "no entry allows none"
        );
    }

    #[test]
    fn allowance_round_trips() {
        let a = map(&[("array-assoc.test.sh", 0), ("var-op-test.test.sh", 12)]);
        let text = render_allowance(&a, None);
        assert!(text.starts_with("# How many cases"));
        assert!(render_allowance(&a, Some(Path::new("/bin/bash"))).contains("taken with `--rush /bin/bash`"));
        assert!(text.contains("\"var-op-test.test.sh\" = 12\n"));
        assert_eq!(parse_allowance(&text).unwrap(), a);
        assert!(parse_allowance("\"x\" = -1").is_err());
    }

    #[test]
    fn runs_in_a_fresh_dir_and_kills_on_timeout() {
        let dir = std::env::temp_dir().join(format!("rush-spec-unit-{}", std::process::id()));
        let sh = Shell {
            label: "sh".into(),
            judged_as: "sh".into(),
            name: "sh".into(),
            program: "/bin/sh".into(),
        };
        let env = vec![("PATH", OsString::from("/usr/bin:/bin"))];
        let run = Run {
            shell: &sh,
            program: "/bin/sh".into(),
            env: &env,
            dir: dir.clone(),
            legacy_tmp_dir: true,
            timeout: Duration::from_secs(1),
        };
        let case = |text: &str| parse("t", &format!("#### t\n{text}")).cases.remove(0);

        let c = case("echo \"$TMP\" \"${HOME-unset}\"; pwd; ls; exit 3\n## status: 3\n");
        let (verdict, out) = run.judged(&c, false);
        let tmp = dir.join("tmp");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{0} unset\n{0}\n_tmp\n", tmp.display()));
        assert_eq!((verdict, out.status), (Verdict::Pass(None), 3));
        assert!(!dir.exists(), "the run's directory is removed");

        // More code than a pipe holds, fed while the shell reads.
        let long = format!("{}echo done\n## stdout: done\n", ":\n".repeat(100_000));
        assert_eq!(run.judged(&case(&long), false).0, Verdict::Pass(None));

        let started = Instant::now();
        let (verdict, out) = run.judged(&case("sleep 5 &\nsleep 5\n"), false);
        assert_eq!(verdict, Verdict::Timeout);
        assert!(out.timed_out && started.elapsed() < Duration::from_secs(4), "killed, background job too");

        let (verdict, out) = run.judged(&case("kill -9 $$\n"), false);
        assert_eq!((verdict, out.status), (Verdict::Fail, -9), "a signal is minus its number");
    }

    #[test]
    fn markdown_region() {
        let old = format!("intro\n{TABLE_BEGIN}\nold table\n{TABLE_END}\noutro\n");
        let new = replace_region(&old, "new table\n").unwrap();
        assert_eq!(new, format!("intro\n{TABLE_BEGIN}\nnew table\n{TABLE_END}\noutro\n"));
        assert_eq!(replace_region(&new, "new table\n").unwrap(), new);
        assert!(replace_region("no markers", "x").is_none());
    }
}

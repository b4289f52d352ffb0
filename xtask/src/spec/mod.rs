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

mod parse;
mod report;

pub use parse::*;
pub use report::*;

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

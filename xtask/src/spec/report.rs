//! What the runs gave: counts per file and shell, the Markdown table of
//! docs/SHELL-COMPAT.md, and the allowance of rush's failures per file that only goes down.

use super::*;

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
    pub(super) fn print_retried(&self) {
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
pub(super) fn write_markdown(path: &Path, table: &str) -> Result<()> {
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

pub(super) fn replace_region(old: &str, table: &str) -> Option<String> {
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

pub(super) fn read_allowance(path: &Path) -> Result<PerFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_allowance(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(super) fn check_allowance_file(path: &Path, failures: &PerFile) -> Result<()> {
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

pub(super) fn update_allowance_file(
    path: &Path,
    failures: &PerFile,
    init: bool,
    stand_in: Option<&Path>,
) -> Result<()> {
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

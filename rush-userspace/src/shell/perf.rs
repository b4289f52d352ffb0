//! Performance monitoring: every command line an interactive shell runs is timed (wall
//! and CPU) and appended to its session's records, a JSON line each; a run much slower
//! than the median of its recent runs is flagged at once and by `rush perf`. The recent
//! runs are the baseline a checkpoint saves and a rollback restores.
//!
//! Records live in `$XDG_STATE_HOME/rush/perf/SESSION.jsonl` (else ~/.local/state):
//! local to the user, written without a daemon round trip on the command's path.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rush_proto::{PerfSample, PerfSeries};

/// Runs of each command kept as its baseline.
pub const BASELINE_RUNS: usize = 20;
/// Runs before a command's median means anything.
const MIN_RUNS: usize = 5;
/// Slower than the median by this factor, and by at least `MIN_SLOWER_MS`: a regression.
const REGRESSION_FACTOR: f64 = 1.25;
const MIN_SLOWER_MS: f64 = 50.0;
/// Command lines kept; beyond, the least recently run are dropped when the file is compacted.
const MAX_COMMANDS: usize = 500;
/// The file is rewritten (compacted) when it passes this many lines.
const COMPACT_AT_LINES: usize = 4 * MAX_COMMANDS * BASELINE_RUNS / 10;

pub fn state_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d).join("rush")),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".local/state/rush")),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    cmd: String,
    #[serde(flatten)]
    sample: PerfSample,
}

/// A session's records.
pub struct PerfStore {
    path: PathBuf,
    series: BTreeMap<String, Vec<PerfSample>>,
    lines: usize,
    /// Opened (O_APPEND) at the first record and kept: one write per command after that.
    file: Option<std::fs::File>,
}

impl PerfStore {
    pub fn path_for(session: &str) -> Option<PathBuf> {
        state_dir().map(|d| d.join("perf").join(format!("{session}.jsonl")))
    }

    /// Reads the records (none yet is an empty store); a torn last line (a crash mid-write)
    /// is skipped.
    pub fn load(path: &Path) -> std::io::Result<PerfStore> {
        let mut store = PerfStore { path: path.to_owned(), series: BTreeMap::new(), lines: 0, file: None };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(e),
        };
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            store.lines += 1;
            if let Ok(l) = serde_json::from_str::<Line>(&line) {
                store.push(l.cmd, l.sample);
            }
        }
        Ok(store)
    }

    fn push(&mut self, cmd: String, sample: PerfSample) {
        let runs = self.series.entry(cmd).or_default();
        runs.push(sample);
        if runs.len() > BASELINE_RUNS * 2 {
            runs.drain(..runs.len() - BASELINE_RUNS * 2);
        }
    }

    pub fn series(&self) -> impl Iterator<Item = (&String, &Vec<PerfSample>)> {
        self.series.iter()
    }

    pub fn runs(&self, cmd: &str) -> &[PerfSample] {
        self.series.get(cmd).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Appends one run (one write with O_APPEND: concurrent shells of a session interleave
    /// whole lines).
    pub fn append(&mut self, cmd: &str, sample: PerfSample) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&Line { cmd: cmd.to_owned(), sample }).expect("serializes");
        line.push(b'\n');
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        self.file.as_mut().expect("opened above").write_all(&line)?;
        self.push(cmd.to_owned(), sample);
        self.lines += 1;
        if self.lines > COMPACT_AT_LINES {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The baseline: the last `BASELINE_RUNS` runs of each command.
    pub fn baseline(&self) -> Vec<PerfSeries> {
        self.series
            .iter()
            .map(|(c, runs)| PerfSeries {
                command: c.clone(),
                samples: runs[runs.len().saturating_sub(BASELINE_RUNS)..].to_vec(),
            })
            .collect()
    }

    /// Replaces every record with a baseline (a rollback's), written whole to a temporary
    /// file and renamed over the old one.
    pub fn replace(&mut self, baseline: &[PerfSeries]) -> std::io::Result<()> {
        self.series = baseline.iter().map(|s| (s.command.clone(), s.samples.clone())).collect();
        self.rewrite()
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        // The most recently run commands survive the bound.
        let mut by_recency: Vec<(&String, &Vec<PerfSample>)> = self.series.iter().collect();
        by_recency.sort_by_key(|(_, runs)| std::cmp::Reverse(runs.last().map_or(0, |s| s.at_unix_ms)));
        by_recency.truncate(MAX_COMMANDS);
        let mut text = Vec::new();
        let mut kept = BTreeMap::new();
        for (cmd, runs) in by_recency {
            let runs = &runs[runs.len().saturating_sub(BASELINE_RUNS)..];
            for s in runs {
                text.extend(serde_json::to_vec(&Line { cmd: cmd.clone(), sample: *s }).expect("serializes"));
                text.push(b'\n');
            }
            kept.insert(cmd.clone(), runs.to_vec());
        }
        self.lines = kept.values().map(Vec::len).sum();
        self.series = kept;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // The next record goes to the new file.
        self.file = None;
        Ok(())
    }
}

/// A run compared with the runs before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub median_ms: f64,
    pub runs: usize,
    /// How much slower than the median, 0.4 = 40%.
    pub slower_by: f64,
    pub regression: bool,
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `wall_ms` against the median of up to `BASELINE_RUNS` runs before it.
pub fn judge(before: &[PerfSample], wall_ms: f64) -> Option<Verdict> {
    let before = &before[before.len().saturating_sub(BASELINE_RUNS)..];
    if before.len() < MIN_RUNS {
        return None;
    }
    let median_ms = median(&mut before.iter().map(|s| s.wall_ms).collect::<Vec<_>>());
    let slower_by = if median_ms > 0.0 { wall_ms / median_ms - 1.0 } else { 0.0 };
    let regression = wall_ms > median_ms * REGRESSION_FACTOR && wall_ms - median_ms >= MIN_SLOWER_MS;
    Some(Verdict { median_ms, runs: before.len(), slower_by, regression })
}

pub fn seconds(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

/// Wall and CPU time of one command: CPU of the shell itself (builtins) and of the children
/// it waited for.
pub struct Clock {
    wall: Instant,
    cpu_ms: f64,
}

fn cpu_ms_now() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage fills the zeroed struct we own; `who` is a valid selector.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(who, &mut u) } == 0 {
            for t in [u.ru_utime, u.ru_stime] {
                total += t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
            }
        }
    }
    total
}

impl Clock {
    pub fn start() -> Clock {
        Clock { wall: Instant::now(), cpu_ms: cpu_ms_now() }
    }

    /// (wall ms, cpu ms) since start.
    pub fn stop(self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64() * 1000.0, (cpu_ms_now() - self.cpu_ms).max(0.0))
    }
}

/// Bumped when the records were replaced under a recorder (a rollback, an attach): it
/// reloads them.
static GENERATION: AtomicU64 = AtomicU64::new(0);

pub fn records_replaced() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// An interactive shell's recorder for its session.
pub struct Recorder {
    session: String,
    store: PerfStore,
    generation: u64,
}

impl Recorder {
    /// None when there is no place for records (no HOME) or RUSH_PERF=off.
    pub fn open(shell: &super::Shell) -> Option<Recorder> {
        if shell.env_str("RUSH_PERF").is_some_and(|v| v == "off") {
            return None;
        }
        let session = super::session_file_name(shell);
        let path = PerfStore::path_for(&session)?;
        match PerfStore::load(&path) {
            Ok(store) => Some(Recorder { session, store, generation: GENERATION.load(Ordering::Relaxed) }),
            Err(e) => {
                eprintln!("rush: perf: cannot read {}: {e}; commands are not timed", path.display());
                None
            }
        }
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn is_stale(&self) -> bool {
        self.generation != GENERATION.load(Ordering::Relaxed)
    }

    /// Records a run; Some(note) when it is a regression.
    pub fn record(&mut self, cmd: &str, (wall_ms, cpu_ms): (f64, f64), status: u8) -> Option<String> {
        let verdict = judge(self.store.runs(cmd), wall_ms);
        let sample = PerfSample { at_unix_ms: crate::time::now_unix_ms(), wall_ms, cpu_ms, status };
        if let Err(e) = self.store.append(cmd, sample) {
            return Some(format!("perf: cannot record the run: {e}"));
        }
        let v = verdict.filter(|v| v.regression)?;
        Some(format!(
            "perf: `{}` took {}, {:.0}% over its median of {} ({} runs)",
            crate::render::sanitize(cmd),
            seconds(wall_ms),
            v.slower_by * 100.0,
            seconds(v.median_ms),
            v.runs
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(wall_ms: f64) -> PerfSample {
        PerfSample { at_unix_ms: 1, wall_ms, cpu_ms: 0.0, status: 0 }
    }

    #[test]
    fn a_run_40_percent_over_the_median_is_a_regression_noise_is_not() {
        let before: Vec<_> = [1000.0, 1010.0, 990.0, 1005.0, 995.0].map(s).to_vec();
        let v = judge(&before, 1400.0).unwrap();
        assert!(v.regression);
        assert!((v.slower_by - 0.4).abs() < 0.01, "{v:?}");
        assert!(!judge(&before, 1100.0).unwrap().regression);
        // 2 ms against 1 ms is 100% slower but not a regression anyone feels.
        let tiny: Vec<_> = [1.0; 5].map(s).to_vec();
        assert!(!judge(&tiny, 2.0).unwrap().regression);
        // Too few runs to judge.
        assert!(judge(&before[..3], 5000.0).is_none());
    }

    #[test]
    fn records_survive_a_reload_and_a_torn_line_and_a_rollback_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut store = PerfStore::load(&path).unwrap();
        for w in [10.0, 11.0, 12.0] {
            store.append("cargo test", s(w)).unwrap();
        }
        let baseline = store.baseline();
        store.append("make", s(5.0)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"cmd\":\"x\",\"at")
            .unwrap();
        let mut again = PerfStore::load(&path).unwrap();
        assert_eq!(again.runs("cargo test").len(), 3);
        assert_eq!(again.runs("make").len(), 1);
        again.replace(&baseline).unwrap();
        let after = PerfStore::load(&path).unwrap();
        assert_eq!(
            after.runs("cargo test").iter().map(|s| s.wall_ms).collect::<Vec<_>>(),
            [10.0, 11.0, 12.0]
        );
        assert!(after.runs("make").is_empty());
    }
}

//! Small shared pieces: announcing steps, running cargo, root checks.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A visible step marker, so a long CI log shows where it is.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

pub fn target_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    })
}

pub fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("    $ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root: run `sudo -E cargo xtask ...` (or as root)");
    }
    Ok(())
}

/// How long each step of a run took and how it ended, printed as one table at the end:
/// where the time of a CI run goes.
#[derive(Default)]
pub struct Timings {
    steps: Vec<(String, Duration, &'static str)>,
    started: Option<Instant>,
}

impl Timings {
    pub fn new() -> Timings {
        Timings { steps: Vec::new(), started: Some(Instant::now()) }
    }

    /// Runs `f` as the step `name`, recording its time and whether it passed.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.record(name, t.elapsed(), if r.is_ok() { "ok" } else { "FAILED" });
        r
    }

    /// A step timed elsewhere (e.g. guests that ran in parallel).
    pub fn record(&mut self, name: &str, took: Duration, result: &'static str) {
        self.steps.push((name.to_owned(), took, result));
    }

    /// The table, steps in the order they ran, then the wall time.
    pub fn table(&self) -> String {
        let width = self.steps.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0).max(10);
        let mut out = format!("  {:<width$}  {:>9}  result\n", "step", "time");
        for (name, took, result) in &self.steps {
            out += &format!("  {name:<width$}  {:>8.1}s  {result}\n", took.as_secs_f64());
        }
        if let Some(t) = self.started {
            out += &format!("  {:<width$}  {:>8.1}s\n", "wall time", t.elapsed().as_secs_f64());
        }
        out
    }
}

//! The corpus: every `corpus/*.toml` case judged by the shipped rules in the fixed example
//! context (cwd = workspace = /work/ws, home = /home/u, no tokens, no guardrails).
//!
//! ```toml
//! [[case]]
//! command = "cargo test --workspace"
//! decision = "allow"          # exactly this decision, or
//! min_decision = "ask"        # at least this strict
//! trust = "medium"            # optional: the policy's default trust
//! tags = ["..."]              # optional: tags that must be among the fired ones
//! benign = true               # optional: counted in the false-ask rate
//! note = "why"                # optional
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use rush_gate::{Context, Policy, assess};
use rush_proto::gate::{Assessment, GateDecision};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    command: String,
    #[serde(default)]
    decision: Option<GateDecision>,
    #[serde(default)]
    min_decision: Option<GateDecision>,
    #[serde(default)]
    trust: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    benign: bool,
    #[serde(default)]
    note: Option<String>,
}

/// Fewest cases the corpus must have.
const MIN_CASES: usize = 500;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every case, with the file it came from, files in name order.
fn load() -> Vec<(String, Case)> {
    let dir = corpus_dir();
    assert!(
        dir.is_dir(),
        "no corpus directory {}: the corpus (corpus/*.toml) has not been written",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus files in {}: the corpus (corpus/*.toml) has not been written",
        dir.display()
    );
    let mut cases = Vec::new();
    for path in files {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let file: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for case in file.case {
            assert!(
                case.decision.is_some() != case.min_decision.is_some(),
                "{name}: case {:?} needs exactly one of decision / min_decision",
                case.command
            );
            cases.push((name.clone(), case));
        }
    }
    cases
}

fn judge(policy: &Policy, case: &Case) -> Assessment {
    let trust = case.trust.as_deref().unwrap_or(policy.default_trust());
    assess(&case.command, &Context::example(trust), policy)
}

#[test]
fn corpus() {
    let policy = Policy::shipped();
    let cases = load();
    let mut mismatches = Vec::new();
    let (mut benign, mut false_asks) = (0usize, 0usize);
    let started = std::time::Instant::now();
    let judged: Vec<Assessment> = cases.iter().map(|(_, case)| judge(&policy, case)).collect();
    let per_case = started.elapsed() / u32::try_from(cases.len().max(1)).unwrap_or(u32::MAX);
    for ((file, case), a) in cases.iter().zip(judged) {
        let fired: Vec<&str> = a.tags.iter().map(|t| t.tag.as_str()).collect();
        if case.benign {
            benign += 1;
            if a.decision != GateDecision::Allow {
                false_asks += 1;
            }
        }
        let decision_ok = match (case.decision, case.min_decision) {
            (Some(d), _) => a.decision == d,
            (None, Some(min)) => a.decision >= min,
            (None, None) => true,
        };
        let missing: Vec<&String> = case.tags.iter().filter(|t| !fired.contains(&t.as_str())).collect();
        if !decision_ok || !missing.is_empty() {
            let expected = match (case.decision, case.min_decision) {
                (Some(d), _) => d.to_string(),
                (_, Some(m)) => format!(">= {m}"),
                _ => String::new(),
            };
            let mut tags: Vec<&str> = fired.clone();
            tags.dedup();
            mismatches.push(format!(
                "{file}: {:?} [trust {}]\n    expected {expected}{}, got {} (score {}), tags [{}]\n    reason: {}{}",
                case.command,
                a.trust,
                if missing.is_empty() { String::new() } else { format!(" with tags {missing:?}") },
                a.decision,
                a.score,
                tags.join(", "),
                a.reason,
                case.note.as_ref().map(|n| format!("\n    note: {n}")).unwrap_or_default(),
            ));
        }
    }
    let rate = if benign == 0 { 0.0 } else { false_asks as f64 / benign as f64 };
    println!(
        "corpus: {} cases, {} match, {} mismatch; benign {benign}, not allowed {false_asks}: false-ask rate {:.2}%; \
         {per_case:?} per assessment",
        cases.len(),
        cases.len() - mismatches.len(),
        mismatches.len(),
        rate * 100.0
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} corpus cases disagree:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    assert!(cases.len() >= MIN_CASES, "the corpus has {} cases, fewer than {MIN_CASES}", cases.len());
}

/// One line of JSON per case, in corpus order.
fn dump_lines(policy: &Policy) -> String {
    let mut out = String::new();
    for (_, case) in load() {
        let a = judge(policy, &case);
        out.push_str(
            &serde_json::to_string(&a).unwrap_or_else(|e| panic!("serialising {:?}: {e}", case.command)),
        );
        out.push('\n');
    }
    out
}

/// With RUSH_GATE_DUMP=PATH, writes every assessment there (the helper process of
/// `same_bytes_across_processes`); without it, does nothing.
#[test]
fn dump_assessments() {
    let Some(path) = std::env::var_os("RUSH_GATE_DUMP") else { return };
    std::fs::write(&path, dump_lines(&Policy::shipped()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", Path::new(&path).display()));
}

#[test]
fn same_bytes_across_processes() {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = std::env::temp_dir().join(format!("rush-gate-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut dumps = Vec::new();
    for run in 0..2 {
        let path = dir.join(format!("run{run}.jsonl"));
        let out = Command::new(&exe)
            .args(["--exact", "dump_assessments", "--test-threads", "1"])
            .env("RUSH_GATE_DUMP", &path)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "dump run {run} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        dumps.push(std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let here = dump_lines(&Policy::shipped()).into_bytes();
    assert!(!here.is_empty(), "nothing was dumped");
    assert!(dumps[0] == dumps[1], "two processes judged the corpus differently");
    assert!(dumps[0] == here, "a child process and this one judged the corpus differently");
}

//! `rush-bench gating`: risk gating's decision latency over the whole corpus
//! (rush-gate/corpus), side by side in one run:
//! - in process: `rush_gate::assess` (parse, walk, rules, score, decision) against
//!   brush-parser's parse alone, per command, alternated (each assess sample paired with a
//!   parse sample of the same command taken just before it);
//! - through the daemon: the `assess` request against a `hello` round trip on the same
//!   connection, alternated;
//! - end to end: a `rush explain` process against a `rush version` process (the same
//!   binary, connect and one request: the CLI's floor).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, bin, repo};
use rush_proto::client::Client;
use rush_proto::gate::AssessRequest;

/// Samples per command in process (the median of them is the command's time).
const IN_PROCESS_REPEAT: usize = 20;
/// Commands sent through the daemon and through the CLI (every corpus entry, this often).
const DAEMON_ROUNDS: usize = 3;
const CLI_SAMPLES: usize = 100;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Every corpus command, in file order.
fn corpus() -> Vec<String> {
    let dir = repo().join("rush-gate/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for case in v["case"].as_array().unwrap() {
            out.push(case["command"].as_str().unwrap().to_owned());
        }
    }
    out
}

fn parse_only(command: &str) {
    let mut p = brush_parser::Parser::new(command.as_bytes(), &brush_parser::ParserOptions::default());
    std::hint::black_box(p.parse_program().ok());
}

pub fn run() {
    let commands = corpus();
    println!("risk gating over the corpus: {} commands\n", commands.len());
    let policy = rush_gate::Policy::shipped();
    let (cwd, home, ws) = (PathBuf::from("/work/ws"), PathBuf::from("/home/u"), PathBuf::from("/work/ws"));
    let ctx = rush_gate::Context {
        cwd: &cwd,
        home: &home,
        workspace: Some(&ws),
        trust: policy.default_trust(),
        tokens: None,
        guardrails: &[],
    };
    // In process: per command, the median of its samples.
    let (mut assess, mut parse, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for c in &commands {
        let (mut a, mut p) = (Vec::new(), Vec::new());
        for _ in 0..IN_PROCESS_REPEAT {
            let t = Instant::now();
            parse_only(c);
            p.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(rush_gate::assess(c, &ctx, &policy));
            a.push(t.elapsed());
        }
        let (a, p) = (percentile(&mut a, 0.5), percentile(&mut p, 0.5));
        ratios.push(a.as_secs_f64() / p.as_secs_f64());
        assess.push(a);
        parse.push(p);
    }
    ratios.sort_by(f64::total_cmp);
    println!("| in process (per command, median of {IN_PROCESS_REPEAT}) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    let row = |what: &str, v: &mut Vec<Duration>| {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!("| {what} | {} | {} | {} |", us(p50), us(p99), us(*v.last().unwrap()));
    };
    row("`assess` (parse + walk + rules + decision)", &mut assess);
    row("brush-parser's parse alone", &mut parse);
    println!(
        "\nassess / parse, per command: p50 {:.1}x, p99 {:.1}x\n",
        ratios[ratios.len() / 2],
        ratios[((ratios.len() - 1) as f64 * 0.99).round() as usize]
    );

    let d = Daemon::start();
    let mut client = Client::connect(&d.socket).expect("connect");
    let (mut through, mut hello) = (Vec::new(), Vec::new());
    for _ in 0..DAEMON_ROUNDS {
        for c in &commands {
            let t = Instant::now();
            client.hello().unwrap();
            hello.push(t.elapsed());
            let req = AssessRequest { command: c.clone(), cwd: cwd.clone(), agent: None, trust: None };
            let t = Instant::now();
            client.assess(req).unwrap();
            through.push(t.elapsed());
        }
    }
    let (a50, a99, h50) =
        (percentile(&mut through, 0.5), percentile(&mut through, 0.99), percentile(&mut hello, 0.5));
    println!("| through the daemon ({} requests) | p50 | p99 | `hello` p50 | ratio p50 |", through.len());
    println!("|---|---|---|---|---|");
    println!(
        "| `assess` request | {} | {} | {} | {:.1}x |\n",
        us(a50),
        us(a99),
        us(h50),
        a50.as_secs_f64() / h50.as_secs_f64()
    );

    let rush = bin("rush");
    let run_cli = |args: &[&str]| {
        let t = Instant::now();
        let ok = Command::new(&rush)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "rush {args:?} failed");
        t.elapsed()
    };
    let (mut explain, mut version) = (Vec::new(), Vec::new());
    for i in 0..CLI_SAMPLES {
        version.push(run_cli(&["version"]));
        explain.push(run_cli(&["--json", "explain", &commands[i * 7 % commands.len()]]));
    }
    let (e50, e99, v50) =
        (percentile(&mut explain, 0.5), percentile(&mut explain, 0.99), percentile(&mut version, 0.5));
    println!("| end to end ({CLI_SAMPLES} processes) | p50 | p99 | `rush version` p50 | ratio p50 |");
    println!("|---|---|---|---|---|");
    println!(
        "| `rush --json explain` | {} | {} | {} | {:.2}x |",
        ms(e50),
        ms(e99),
        ms(v50),
        e50.as_secs_f64() / v50.as_secs_f64()
    );
}

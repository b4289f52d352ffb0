//! `rush-bench peers [--spawns N] [--runs N] [--files N] [--idle N]`: Rush against the
//! tools a user would confine an agent with instead, side by side in one run, each set up
//! as the closest equivalent of
//! `rush agent spawn x --allow DIR:read,write --net deny --budget mem:512M,pids:64 -- CMD`:
//! bubblewrap, firejail, podman (rootful, runc, an image imported from a local tarball)
//! and systemd-run (which needs systemd as PID 1: tried, its error reported).
//!
//! Measured, each side alternated with the others in every round (the order rotates):
//! spawn-to-exit of /bin/true warm and cold (p50/p90); four workloads end to end, each
//! tool's start included (git status/add/commit on a FILES-file repository, `cargo build
//! --offline` of a crate with vendored dependencies, `tar -x` of FILES files, `python3 -m
//! compileall` of a tree; medians); memory per idle confined process; and what each
//! enforces, from probes run under each (not from their documentation).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kernel_tests::{Daemon, bin, describe};

use crate::{Rng, syncfs};

const IMAGE: &str = "localhost/rush-peer:latest";
const MEM: &str = "512M";
const PIDS: &str = "64";

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Unconfined,
    Rush,
    Bwrap,
    Firejail,
    Podman,
}

const TOOLS: [Tool; 5] = [Tool::Unconfined, Tool::Rush, Tool::Bwrap, Tool::Firejail, Tool::Podman];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Unconfined => "unconfined",
            Tool::Rush => "Rush",
            Tool::Bwrap => "bubblewrap",
            Tool::Firejail => "firejail",
            Tool::Podman => "podman",
        }
    }
}

struct Sizes {
    spawns: usize,
    runs: usize,
    files: usize,
    idle: usize,
}

fn sizes() -> Sizes {
    let mut s = Sizes { spawns: 30, runs: 5, files: 20_000, idle: 5 };
    let args: Vec<String> = std::env::args().skip(2).collect();
    for pair in args.chunks(2) {
        let v = || -> usize {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number, got {:?}", pair[0], pair.get(1)))
        };
        match pair[0].as_str() {
            "--spawns" => s.spawns = v(),
            "--runs" => s.runs = v(),
            "--files" => s.files = v(),
            "--idle" => s.idle = v(),
            other => panic!("rush-bench peers: unknown flag {other} (--spawns --runs --files --idle)"),
        }
    }
    s
}

/// The bench's directories: `work` is DIR (the one directory each tool lets the process
/// write), `outside` sits next to it and holds a secret no tool should let it read.
struct Env {
    _root: tempfile::TempDir,
    work: PathBuf,
    outside: PathBuf,
    toolchain: PathBuf,
    rush_sock: String,
    vars: Vec<(String, String)>,
    seq: AtomicUsize,
}

fn run_ok(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run_ok(Command::new("/bin/sh").args(["-c", script]))
}

impl Env {
    fn path(&self, rel: &str) -> String {
        self.work.join(rel).to_str().unwrap().to_owned()
    }

    /// `argv` run by `tool` in `cwd` (inside DIR), with the bench's environment.
    fn command(&self, tool: Tool, cwd: &Path, argv: &[&str], extra: &[&str]) -> Command {
        let w = self.work.to_str().unwrap();
        let tc = self.toolchain.to_str().unwrap();
        let mut c = match tool {
            Tool::Unconfined => Command::new(argv[0]),
            Tool::Rush => {
                let mut c = Command::new(bin("rush"));
                let name = format!("peer{}", self.seq.fetch_add(1, Ordering::Relaxed));
                c.args(["--socket", &self.rush_sock, "agent", "spawn", &name, "--no-tty"]);
                c.args(["--allow", &format!("{w}:read,write,create,delete,exec"), "--net", "deny"]);
                c.args(["--budget", &format!("mem:{MEM},pids:{PIDS}")]).args(extra).arg("--");
                c
            }
            Tool::Bwrap => {
                let mut c = Command::new("bwrap");
                c.args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--ro-bind", tc, tc]);
                for l in ["bin", "lib", "lib64", "sbin"] {
                    c.args(["--symlink", &format!("usr/{l}"), &format!("/{l}")]);
                }
                c.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--bind", w, w]);
                c.args(["--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--chdir"]);
                c.arg(cwd).arg("--");
                c
            }
            Tool::Firejail => {
                let mut c = Command::new("firejail");
                c.args(["--quiet", "--noprofile", "--net=none", &format!("--whitelist={w}")]);
                c.args(["--rlimit-as=536870912", &format!("--rlimit-nproc={PIDS}"), "--"]);
                c
            }
            Tool::Podman => {
                let mut c = Command::new("podman");
                c.args(["run", "--rm", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
                // This host's root lacks CAP_SYS_RESOURCE: podman's default rlimits cannot be set.
                c.args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]);
                c.args(["--network", "none", "--memory", "512m", "--pids-limit", PIDS]);
                c.args(["-v", "/usr:/usr:ro", "-v", &format!("{tc}:{tc}:ro"), "-v", &format!("{w}:{w}")]);
                c.arg("-w").arg(cwd);
                for (k, v) in &self.vars {
                    c.args(["-e", &format!("{k}={v}")]);
                }
                c.args(extra).arg(IMAGE);
                c
            }
        };
        if tool == Tool::Unconfined {
            c.args(&argv[1..]);
        } else {
            c.args(argv);
        }
        c.current_dir(cwd).envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The command line each tool runs `CMD` with, for the report.
    fn shown(&self, tool: Tool) -> String {
        let c = self.command(tool, &self.work, &["CMD"], &[]);
        let mut s = c.get_program().to_string_lossy().into_owned();
        for a in c.get_args() {
            let a = a.to_string_lossy();
            let a = a.replace(self.work.to_str().unwrap(), "DIR").replace(&self.rush_sock, "SOCK");
            let a = if a.starts_with("peer") && a[4..].chars().all(|c| c.is_ascii_digit()) {
                "x".into()
            } else {
                a
            };
            s.push(' ');
            s.push_str(&a);
        }
        s.replace(self.toolchain.to_str().unwrap(), "TOOLCHAIN")
    }
}

fn elapsed(c: &mut Command) -> Duration {
    try_elapsed(c).unwrap_or_else(|e| panic!("{c:?} failed: {e}"))
}

/// The wall time of `c`, or why it failed (its last line of stderr).
fn try_elapsed(c: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    let out = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run");
    let d = t.elapsed();
    if out.status.success() {
        return Ok(d);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error")).or(err.lines().last()).unwrap_or("").trim();
    Err(format!("exit {:?}: {}", out.status.code(), line.replace('|', "/")))
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Runs `f(tool)` for every tool, `rounds` times, rotating which goes first.
fn alternate(rounds: usize, mut f: impl FnMut(Tool) -> Duration) -> Vec<Vec<Duration>> {
    let v = alternate_fallible(rounds, |t| Ok(f(t)));
    v.into_iter().map(|r| r.unwrap()).collect()
}

/// As [`alternate`]; a tool whose run fails is not run again, and its error is kept.
fn alternate_fallible(
    rounds: usize,
    mut f: impl FnMut(Tool) -> Result<Duration, String>,
) -> Vec<Result<Vec<Duration>, String>> {
    let mut v: Vec<Result<Vec<Duration>, String>> = vec![Ok(Vec::new()); TOOLS.len()];
    for r in 0..rounds {
        for i in 0..TOOLS.len() {
            let k = (i + r) % TOOLS.len();
            if let Ok(runs) = &mut v[k] {
                match f(TOOLS[k]) {
                    Ok(d) => runs.push(d),
                    Err(e) => v[k] = Err(e),
                }
            }
        }
    }
    v
}

/// A tree of `n` small files in 100 directories, tarred to `tar`.
fn make_tree(dir: &Path, n: usize, tar: &Path) {
    let mut rng = Rng(0x5eed_1234);
    for i in 0..n {
        let d = dir.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d).unwrap();
        }
        let len = 200 + (rng.next() % 3000) as usize;
        let body: Vec<u8> = (0..len).map(|_| b"abcdefghij klmnop\n"[(rng.next() % 18) as usize]).collect();
        std::fs::write(d.join(format!("f{i}.txt")), body).unwrap();
    }
    run_ok(Command::new("tar").arg("-cf").arg(tar).arg("-C").arg(dir).arg("."));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A crate with three vendored dependencies already in ~/.cargo/registry.
fn make_crate(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"peerbench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\
         aho-corasick = \"1\"\nbitflags = \"2\"\nbase64 = \"0.22\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        "use base64::Engine;\nfn main() {\n    let a = aho_corasick::AhoCorasick::new([\"ab\"]).unwrap();\n    \
         println!(\"{} {}\", a.is_match(\"xab\"), base64::engine::general_purpose::STANDARD.encode(b\"x\"));\n}\n",
    )
    .unwrap();
    run_ok(Command::new("cargo").args(["generate-lockfile", "--offline", "-q"]).current_dir(dir));
    let cfg = run_ok(Command::new("cargo").args(["vendor", "--offline", "vendor"]).current_dir(dir));
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    std::fs::write(dir.join(".cargo/config.toml"), cfg).unwrap();
}

/// The image: a directory skeleton, the host's /etc and usr-merge links; /usr and the
/// Rust tool chain are bind-mounted read-only at run time (no registry is reachable).
fn make_image(root: &Path) {
    let fs = root.join("rootfs");
    for d in ["usr", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp"] {
        std::fs::create_dir_all(fs.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), fs.join(l)).unwrap();
    }
    run_ok(Command::new("cp").arg("-a").arg("/etc").arg(fs.join("etc")));
    let tar = root.join("rootfs.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&fs).arg("."));
    run_ok(Command::new("podman").arg("import").arg("-q").arg(&tar).arg(IMAGE));
    std::fs::remove_dir_all(&fs).unwrap();
}

fn install_peers() {
    let missing: Vec<&str> =
        [("bwrap", "bubblewrap"), ("firejail", "firejail"), ("podman", "podman"), ("runc", "runc")]
            .into_iter()
            .filter(|(b, _)| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {b} >/dev/null")])
                    .status()
                    .unwrap()
                    .success()
            })
            .map(|(_, p)| p)
            .collect();
    if !missing.is_empty() {
        println!("installing {missing:?} with apt-get");
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run_ok(&mut c);
    }
}

fn version(cmd: &str) -> String {
    let out =
        Command::new(cmd).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default().lines().next().unwrap_or("?").trim().to_owned()
}

pub fn run() {
    let s = sizes();
    install_peers();
    let root = tempfile::Builder::new().prefix("rush-peers").tempdir().unwrap();
    let work = root.path().join("work");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(work.join("in")).unwrap();
    std::fs::create_dir_all(work.join("home")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "peer-secret-42\n").unwrap();
    let toolchain =
        PathBuf::from(sh("rustup which cargo").trim()).parent().unwrap().parent().unwrap().to_owned();
    make_tree(&work.join("gen"), s.files, &work.join("in/tree.tar"));
    make_crate(&work.join("crate"));
    let py = work.join("py");
    std::fs::create_dir_all(&py).unwrap();
    for d in ["email", "json", "http", "xml", "asyncio", "unittest", "logging", "concurrent", "importlib"] {
        run_ok(Command::new("cp").arg("-a").arg(format!("/usr/lib/python3.11/{d}")).arg(&py));
    }
    make_image(root.path());

    let d = Daemon::start();
    let w = work.to_str().unwrap().to_owned();
    let vars = vec![
        ("PATH".into(), format!("{}/bin:/usr/local/bin:/usr/bin:/bin", toolchain.display())),
        ("HOME".into(), format!("{w}/home")),
        ("CARGO_HOME".into(), format!("{w}/cargo-home")),
        ("CARGO_TARGET_DIR".into(), format!("{w}/crate/target")),
    ];
    let env = Env {
        _root: root,
        work: work.clone(),
        outside,
        toolchain,
        rush_sock: d.socket.to_str().unwrap().to_owned(),
        vars,
        seq: AtomicUsize::new(0),
    };
    let enforcement = String::from_utf8_lossy(&d.rush(&["doctor"]).stdout)
        .lines()
        // The guarantee line ("yes file tokens  by Landlock ..." or "... by BPF LSM"), not the
        // probe that only lists the active LSMs.
        .find(|l| l.trim_start().trim_start_matches("yes").trim_start().starts_with("file tokens"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let uname = sh("uname -r").trim().to_owned();
    let commit =
        sh(concat!("git -C ", env!("CARGO_MANIFEST_DIR"), " rev-parse --short HEAD 2>/dev/null || echo ?"))
            .trim()
            .to_owned();
    println!(
        "rush-bench peers: kernel {uname}, {} cores, commit {commit}; runs {}, spawns {}, files {}, idle {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.runs,
        s.spawns,
        s.files,
        s.idle
    );
    println!("Rush's file enforcement here (`rush doctor`): {enforcement}");
    println!(
        "versions: {}; {}; {}; {}\n",
        version("bwrap"),
        version("firejail"),
        version("podman"),
        version("runc")
    );
    println!("| tool | command line (DIR = the work directory) |\n|---|---|");
    for t in &TOOLS[1..] {
        println!("| {} | `{}` |", t.name(), env.shown(*t));
    }
    let sd = Command::new("systemd-run")
        .args([
            "--scope",
            "-p",
            "MemoryMax=512M",
            "-p",
            "TasksMax=64",
            "-p",
            "IPAddressDeny=any",
            "/bin/true",
        ])
        .output()
        .unwrap();
    println!(
        "| systemd-run | `systemd-run --scope -p MemoryMax=512M -p TasksMax=64 -p IPAddressDeny=any CMD`: exit {}, \
         \"{}\" (no systemd as PID 1 here: not measured) |",
        sd.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&sd.stderr).trim().replace('\n', " / ")
    );

    spawn(&env, &s);
    workloads(&env, &s);
    memory(&env, &d, &s);
    probes(&env, &d);
}

fn print_table(title: &str, samples: &[Vec<Duration>]) {
    let mut v = samples.to_vec();
    let base = pct(&mut v[0], 0.5);
    println!("\n| {title} | p50 ms | p90 ms | p50 ratio to unconfined |\n|---|---|---|---|");
    for (i, t) in TOOLS.iter().enumerate() {
        let p50 = pct(&mut v[i], 0.5);
        let r = p50.as_secs_f64() / base.as_secs_f64();
        println!("| {} | {} | {} | {r:.2}x |", t.name(), ms(p50), ms(pct(&mut v[i], 0.9)));
    }
}

/// Medians of the workload runs, ratios to unconfined and to the fastest confined tool.
fn print_medians(title: &str, samples: &[Result<Vec<Duration>, String>]) {
    let med = |r: &Result<Vec<Duration>, String>| r.as_ref().ok().map(|v| pct(&mut v.clone(), 0.5));
    let base = med(&samples[0]).expect("the unconfined runs failed");
    let best = samples[1..].iter().filter_map(med).min();
    println!(
        "\n| {title} | median ms | ratio to unconfined | ratio to the fastest confined |\n|---|---|---|---|"
    );
    for (i, t) in TOOLS.iter().enumerate() {
        match (&samples[i], med(&samples[i])) {
            (_, Some(m)) => {
                let r = m.as_secs_f64() / base.as_secs_f64();
                let rb = match best {
                    Some(b) if i > 0 => format!("{:.2}x", m.as_secs_f64() / b.as_secs_f64()),
                    _ => "-".into(),
                };
                println!("| {} | {} | {r:.2}x | {rb} |", t.name(), ms(m));
            }
            (Err(e), None) => println!("| {} | **fails**: {e} | - | - |", t.name()),
            _ => println!("| {} | no runs | - | - |", t.name()),
        }
    }
}

fn spawn(env: &Env, s: &Sizes) {
    let warm = alternate(s.spawns, |t| elapsed(&mut env.command(t, &env.work, &["/bin/true"], &[])));
    print_table(&format!("spawn-to-exit of /bin/true, warm ({} alternated rounds)", s.spawns), &warm);
    let cold = alternate(s.spawns, |t| {
        std::thread::sleep(Duration::from_millis(100));
        elapsed(&mut env.command(t, &env.work, &["/bin/true"], &[]))
    });
    print_table(&format!("same, cold (100 ms idle before each; {} rounds)", s.spawns), &cold);
}

fn workloads(env: &Env, s: &Sizes) {
    let w = &env.work;
    let tar = env.path("in/tree.tar");
    let git_script = "git init -q 2>/dev/null; git status --porcelain >/dev/null && git add -A && \
                      git -c user.name=b -c user.email=b@b commit -qm x";
    // git: a fresh tree each run (untimed), then status, add, commit (timed).
    let repo = w.join("repo");
    let git = alternate_fallible(s.runs, |t| {
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::create_dir_all(&repo).unwrap();
        run_ok(Command::new("tar").args(["-xf", &tar, "-C"]).arg(&repo));
        run_ok(Command::new("git").args(["init", "-q"]).current_dir(&repo));
        syncfs(w);
        try_elapsed(&mut env.command(t, &repo, &["/bin/sh", "-c", git_script], &[]))
    });
    print_medians(&format!("git status + add + commit, {} files", s.files), &git);
    let x = w.join("x");
    let tarx = alternate_fallible(s.runs, |t| {
        let _ = std::fs::remove_dir_all(&x);
        std::fs::create_dir_all(&x).unwrap();
        syncfs(w);
        try_elapsed(&mut env.command(t, w, &["tar", "-xf", &tar, "-C", x.to_str().unwrap()], &[]))
    });
    print_medians(&format!("tar -x of {} files", s.files), &tarx);
    let krate = w.join("crate");
    let cargo = alternate_fallible(s.runs, |t| {
        let _ = std::fs::remove_dir_all(krate.join("target"));
        try_elapsed(&mut env.command(t, &krate, &["cargo", "build", "--offline", "-q"], &[]))
    });
    print_medians("cargo build --offline (aho-corasick, memchr, bitflags, base64 vendored)", &cargo);
    let py = env.path("py");
    let compile = alternate_fallible(s.runs, |t| {
        sh(&format!("find {py} -name __pycache__ -prune -exec rm -rf {{}} +"));
        try_elapsed(&mut env.command(t, w, &["python3", "-m", "compileall", "-q", &py], &[]))
    });
    print_medians("python3 -m compileall (9 stdlib packages)", &compile);
}

/// Resident set of `pid` in KiB (VmRSS; 0 once gone).
fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes running `/bin/sleep 600`.
fn sleepers() -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"/bin/sleep\x00600\x00") {
            out.push(p);
        }
    }
    out
}

/// `pid` and all its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let mut parent = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let Some(after) = stat.rsplit_once(')').map(|x| x.1) else { continue };
        if let Some(pp) = after.split_whitespace().nth(1).and_then(|v| v.parse::<i32>().ok()) {
            parent.insert(p, pp);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn tree_rss(pid: i32) -> u64 {
    tree(pid).into_iter().map(rss_kib).sum()
}

/// Memory per idle confined `sleep`: the process and every helper the tool keeps (VmRSS
/// summed, so shared pages count in each process: an upper bound).
fn memory(env: &Env, d: &Daemon, s: &Sizes) {
    let n = s.idle;
    let sleep = ["/bin/sleep", "600"];
    println!(
        "\n| idle confined `sleep` ({n} at once) | KiB per process, RSS summed | what is counted |\n|---|---|---|"
    );
    for t in TOOLS {
        let (kib, how) = match t {
            Tool::Unconfined | Tool::Bwrap | Tool::Firejail => {
                let mut kids: Vec<Child> = (0..n)
                    .map(|_| env.command(t, &env.work, &sleep, &[]).stdin(Stdio::null()).spawn().unwrap())
                    .collect();
                std::thread::sleep(Duration::from_secs(2));
                let total: u64 = kids.iter().map(|k| tree_rss(k.id() as i32)).sum();
                for k in &mut kids {
                    // The tool's own process tree: killing its leader ends it (die-with-parent, firejail's own teardown).
                    let _ = k.kill();
                    let _ = k.wait();
                }
                (total / n as u64, "the tool's process and its descendants (the sleep included)")
            }
            Tool::Podman => {
                let ids: Vec<String> = (0..n)
                    .map(|_| {
                        let mut c = env.command(t, &env.work, &sleep, &["-d"]);
                        run_ok(&mut c).trim().to_owned()
                    })
                    .collect();
                std::thread::sleep(Duration::from_secs(2));
                let mut total = 0;
                for id in &ids {
                    let pid =
                        run_ok(Command::new("podman").args(["inspect", "-f", "{{.State.ConmonPid}}", id]));
                    total += tree_rss(pid.trim().parse().expect("conmon pid"));
                }
                run_ok(Command::new("podman").args(["rm", "-f", "-t", "0"]).args(&ids));
                (total / n as u64, "conmon and the container's processes (podman's CLI exits after `run -d`)")
            }
            Tool::Rush => {
                let before = tree_rss(d.pid());
                let names: Vec<String> = (0..n).map(|i| format!("idle{i}")).collect();
                for name in &names {
                    let mut c = Command::new(bin("rush"));
                    c.args(["--socket", &env.rush_sock, "agent", "spawn", name, "--detach"]);
                    c.args(["--allow", &format!("{}:read,write", env.work.display()), "--net", "deny"]);
                    c.args(["--budget", &format!("mem:{MEM},pids:{PIDS}"), "--"]).args(sleep);
                    run_ok(&mut c);
                }
                std::thread::sleep(Duration::from_secs(2));
                let daemon_tree = tree(d.pid());
                let after: u64 = daemon_tree.iter().map(|p| rss_kib(*p)).sum();
                // Agents the daemon does not parent (if any): the only `/bin/sleep 600`s now.
                let agents: u64 =
                    sleepers().into_iter().filter(|p| !daemon_tree.contains(p)).map(rss_kib).sum();
                for name in &names {
                    run_ok(&mut d.rush_cmd(&["agent", "kill", name]));
                }
                (
                    (after.saturating_sub(before) + agents) / n as u64,
                    "the agents' processes + the growth of rush-agentd's process tree over n agents, / n",
                )
            }
        };
        println!("| {} | {kib} | {how} |", t.name());
    }
    println!("(rush-agentd itself, with no agent: {} KiB RSS, paid once per machine)", rss_kib(d.pid()));
}

/// A loopback listener outside every tool's network namespace, counting connections.
fn listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        }
    });
    (port, n)
}

/// Runs a probe under `tool`; (exit code or -signal, stdout).
fn probe(env: &Env, t: Tool, script: &str) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    let out =
        env.command(t, &env.work, &["/bin/sh", "-c", script], &[]).stdin(Stdio::null()).output().unwrap();
    let code = out.status.code().unwrap_or_else(|| -out.status.signal().unwrap_or(0));
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn probes(env: &Env, d: &Daemon) {
    let out = env.outside.to_str().unwrap();
    let (port, conns) = listener();
    println!(
        "\n| probe (run under each tool) | {} |\n|---|---|---|---|---|---|",
        TOOLS.iter().map(|t| t.name()).collect::<Vec<_>>().join(" | ")
    );
    let row = |what: &str, f: &dyn Fn(Tool) -> String| {
        let cells: Vec<String> = TOOLS.iter().map(|t| f(*t)).collect();
        println!("| {what} | {} |", cells.join(" | "));
    };
    row("write to a file outside DIR", &|t| {
        let _ = std::fs::remove_file(env.outside.join("written"));
        probe(env, t, &format!("echo x > {out}/written"));
        if env.outside.join("written").exists() { "**written**".into() } else { "denied".into() }
    });
    row("read a file outside DIR", &|t| {
        let (_, o) = probe(env, t, &format!("cat {out}/secret"));
        if o.contains("peer-secret-42") { "**read**".into() } else { "denied".into() }
    });
    row("TCP connect to a listener on the host's 127.0.0.1", &|t| {
        let before = conns.load(Ordering::SeqCst);
        probe(
            env,
            t,
            &format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\""),
        );
        std::thread::sleep(Duration::from_millis(200));
        if conns.load(Ordering::SeqCst) > before { "**connected**".into() } else { "denied".into() }
    });
    row("allocate and touch 768 MiB", &|t| {
        let (c, o) = probe(env, t, "python3 -c \"b = b'x' * (768 << 20); print('allocated')\"");
        match (c, o.contains("allocated")) {
            (_, true) => "**allocated**".into(),
            (137 | -9, _) => "killed (SIGKILL)".into(),
            (c, _) => format!("refused (exit {c})"),
        }
    });
    row("fork 150 sleeping children (a fork bomb's start)", &|t| {
        let (_, o) = probe(
            env,
            t,
            "python3 -c \"\nimport os, time\nn = 0\nfor i in range(150):\n    try:\n        p = os.fork()\n    \
             except OSError:\n        break\n    if p == 0:\n        time.sleep(2); os._exit(0)\n    n += 1\nprint('forked', n)\"",
        );
        match o.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()) {
            Some(150) => "**150 forked**".into(),
            Some(n) => format!("stopped at {n}"),
            None => "stopped (no count)".into(),
        }
    });
    // Rush's own: revoke while running, a grant's TTL, the denial in the audit trail.
    let w = env.work.display().to_string();
    std::fs::write(env.work.join("f"), "granted\n").unwrap();
    let spawn = |name: &str, allow: &str, script: &str| {
        let mut c = Command::new(bin("rush"));
        c.args([
            "--socket",
            &env.rush_sock,
            "agent",
            "spawn",
            name,
            "--no-tty",
            "--allow",
            allow,
            "--net",
            "deny",
        ]);
        c.args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let outcome = |o: std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        if String::from_utf8_lossy(&o.stdout).contains("granted") {
            format!("**read {what}**")
        } else {
            let last = err.lines().last().unwrap_or("").trim().replace('|', "/");
            format!("denied {what} (exit {:?}: {last})", o.status.code())
        }
    };
    let control = outcome(
        spawn("ctl-probe", &format!("{w}:read"), &format!("cat {w}/f")).wait_with_output().unwrap(),
        "",
    );
    let child = spawn("revoke-probe", &format!("{w}:read"), &format!("sleep 1.5; cat {w}/f"));
    std::thread::sleep(Duration::from_millis(500));
    let revoked = d.rush(&["capability", "revoke", "--path", &w, "revoke-probe"]);
    let o = child.wait_with_output().unwrap();
    let revoke = if !revoked.status.success() {
        format!("revoke failed: {}", describe(&revoked).replace('\n', " "))
    } else {
        outcome(o, "after revoke")
    };
    let o = spawn("ttl-probe", &format!("{w}:read:1s"), &format!("sleep 2.5; cat {w}/f"))
        .wait_with_output()
        .unwrap();
    let ttl = outcome(o, "after the TTL");
    println!("| control: a granted read, no revoke | - | {control} | - | - | - |");
    let name = format!("peer{}", env.seq.load(Ordering::Relaxed));
    probe(env, Tool::Rush, &format!("echo x > {out}/written2"));
    std::thread::sleep(Duration::from_millis(500));
    let tag = format!("\"{name}\"");
    let kinds: Vec<String> = d
        .audit()
        .iter()
        .filter(|e| e.to_string().contains(&tag))
        .map(|e| e["event"]["kind"].as_str().unwrap_or("?").to_owned())
        .collect();
    let none = "no such operation";
    println!(
        "| revoke file access while it runs (read again 1 s later) | - | {revoke} | {none} | {none} | {none} |"
    );
    println!("| grant with a TTL of 1 s (read again after 2.5 s) | - | {ttl} | {none} | {none} | {none} |");
    println!(
        "| audit record of the denied write | - | {} | none kept | none kept | none kept (`podman events`: lifecycle only) |",
        if kinds.is_empty() { "**none**".into() } else { format!("entries: {}", kinds.join(", ")) }
    );
}

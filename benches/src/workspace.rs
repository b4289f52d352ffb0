//! `rush-bench workspace`: agent workspaces, side by side in one run.
//!
//! 1. Create time and disk use, for a git repository of a few hundred tracked files with a
//!    1.05 GB ignored build directory (`target/`: 1000 files of 1 MiB of pseudo-random
//!    bytes: not sparse, not compressible, not all-zero), on the host's filesystem
//!    (/var/tmp) and on a loop-mounted btrfs image:
//!    - `rush agent workspace create` (its state cloned with `cp --reflink=always`, or,
//!      where a one-file probe says the filesystem cannot share extents, copied with a
//!      warning);
//!    - `git worktree add` + `cp -a --reflink=never target` (a plain copy);
//!    - on btrfs only, `git worktree add` + `cp -a target`: coreutils ≥ 9 defaults to
//!      `--reflink=auto`, so this is what copying by hand gets there;
//!    - `git worktree add` + the same bytes written again by the same generator: the
//!      "rebuild" row, a lower bound for any real build of that state.
//!
//!    Median of 3 alternated runs, each on a fresh worktree removed (untimed) afterwards.
//!    Wall time of the command, and to the end of a `syncfs` after it (so a copy still in
//!    the page cache is not compared with a clone the filesystem has committed). Disk use
//!    added: the filesystem's used blocks (statvfs) before and after, each after a sync;
//!    cross-checked with `du` of the new tree (ext4: no sharing, so du is what it uses) or
//!    `btrfs filesystem du` (its exclusive bytes) on btrfs.
//! 2. Merge queue throughput: 20 workspaces (`--no-state`) with one commit each, on distinct
//!    files, all queued with `--no-wait --test true`; time from the first request until the
//!    last merge's `finished_unix_ms`; merge and squash. Against a sequential `git merge
//!    --no-ff` (and `--squash` + commit) of 20 branches in a plain repository, no test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kernel_tests::{Daemon, describe};

use crate::{Rng, median_of, syncfs};

/// Files of build state, and the bytes of each.
const STATE_FILES: usize = 1000;
const STATE_FILE_BYTES: usize = 1 << 20;
/// Tracked source files of the repositories.
const TRACKED: usize = 300;
const RUNS: usize = 3;
/// Workspaces merged through the queue per strategy.
const MERGES: usize = 20;
const BTRFS_IMAGE: u64 = 4 << 30;

/// The build state: `target/debug/dNN/fNNNN.o`, 1000 x 1 MiB of pseudo-random bytes (one
/// seed: byte-identical wherever it is generated).
fn generate_state(target: &Path) {
    let mut rng = Rng(0x005e_ed7a_26e7);
    let mut buf = vec![0u8; STATE_FILE_BYTES];
    for i in 0..STATE_FILES {
        let dir = target.join(format!("debug/d{:02}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        fs::write(dir.join(format!("f{i:04}.o")), &buf).unwrap();
    }
}

fn state_file(target: &Path, i: usize) -> PathBuf {
    target.join(format!("debug/d{:02}/f{i:04}.o", i / 100))
}

/// The first and last state files of `target` are those of `source` (the copy is whole).
fn check_state(source: &Path, target: &Path) {
    for i in [0, STATE_FILES - 1] {
        let (a, b) = (fs::read(state_file(source, i)).unwrap(), fs::read(state_file(target, i)));
        assert!(b.is_ok_and(|b| b == a), "{}: not the source's bytes", state_file(target, i).display());
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    sh(Command::new("git").arg("-C").arg(dir).args(args))
}

/// A repository on `main` with `TRACKED` source-like files in 10 directories and a
/// .gitignore for target/; one commit.
fn make_repo(repo: &Path) {
    fs::create_dir_all(repo).unwrap();
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["config", "user.name", "Bench"]);
    git(repo, &["config", "user.email", "bench@example.com"]);
    let mut rng = Rng(0x0005_0bce);
    for i in 0..TRACKED {
        let dir = repo.join(format!("src/m{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        let mut text = String::new();
        for l in 0..40 + rng.next() % 120 {
            text.push_str(&format!("fn f{l}() -> u64 {{ {} }}\n", rng.next() >> 20));
        }
        fs::write(dir.join(format!("f{i}.rs")), text).unwrap();
    }
    fs::write(repo.join(".gitignore"), "target/\n").unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", "initial"]);
}

fn tracked_file(repo: &Path, i: usize) -> PathBuf {
    repo.join(format!("src/m{}/f{i}.rs", i % 10))
}

/// One commit in `tree` touching only tracked file `i`.
fn commit_one(tree: &Path, i: usize) {
    let f = tracked_file(tree, i);
    let mut text = fs::read_to_string(&f).unwrap();
    text.push_str(&format!("// change {i}\n"));
    fs::write(&f, text).unwrap();
    git(tree, &["commit", "-qam", &format!("change {i}")]);
}

/// Bytes in use on the filesystem holding `p`, after a sync (btrfs: a transaction commit,
/// so freed and shared extents are counted as they are).
fn used(p: &Path, btrfs: bool) -> u64 {
    if btrfs {
        sh(Command::new("btrfs").args(["filesystem", "sync"]).arg(p));
    } else {
        syncfs(p);
    }
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    (st.blocks() - st.blocks_free()) * st.fragment_size()
}

/// `du` of `dir` (ext4), or its exclusive bytes by `btrfs filesystem du` (btrfs).
fn cross_check(dir: &Path, btrfs: bool) -> u64 {
    if btrfs {
        let out = sh(Command::new("btrfs").args(["filesystem", "du", "-s", "--raw"]).arg(dir));
        // "Total Exclusive Set shared Filename", then one line of numbers.
        let line = out.lines().last().unwrap_or_default();
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("btrfs fi du: {out}"))
    } else {
        let out = sh(Command::new("du").args(["-s", "--block-size=1"]).arg(dir));
        out.split_whitespace().next().unwrap().parse().unwrap()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn secs(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1000.0 { format!("{ms:.0} ms") } else { format!("{:.2} s", ms / 1e3) }
}

fn mb(b: i64) -> String {
    format!("{:.0} MB", b as f64 / 1e6)
}

/// Where one filesystem's side runs: a directory on it, and whether it is the btrfs.
struct Place<'a> {
    fs: &'a str,
    dir: PathBuf,
    btrfs: bool,
}

/// Unmounts the loop btrfs (if any; `-o loop` sets autoclear: the loop device goes too)
/// and removes the bench's directories, also when the bench panics.
struct Cleanup {
    mount: Option<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let ok = Command::new("umount").arg(m).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Rush,
    PlainCopy,
    CpDefault,
    Rebuild,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Rush => "`rush agent workspace create`",
            Method::PlainCopy => "`git worktree add` + `cp -a --reflink=never target`",
            Method::CpDefault => "`git worktree add` + `cp -a target` (coreutils default: reflink=auto)",
            Method::Rebuild => "`git worktree add` + target/ written again (rebuild, lower bound)",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Method::Rush => "r",
            Method::PlainCopy => "p",
            Method::CpDefault => "c",
            Method::Rebuild => "g",
        }
    }
}

#[derive(Default)]
struct Runs {
    command: Vec<Duration>,
    synced: Vec<Duration>,
    added: Vec<i64>,
    check: Vec<i64>,
    /// Rush only: what it said (method, worktree_ms, state_ms), and its warnings.
    said: Vec<String>,
}

/// One create by `m` as `name`: the new tree.
fn create(d: &Daemon, place: &Place, repo: &Path, m: Method, name: &str, runs: &mut Runs) -> PathBuf {
    let wt = place.dir.join("wt").join(name);
    let before = used(&place.dir, place.btrfs);
    let t = Instant::now();
    match m {
        Method::Rush => {
            // `rush --json`, parsed (microseconds next to the create).
            let v = d.rush_json(&["agent", "workspace", "create", name, "--repo", repo.to_str().unwrap()]);
            let took = t.elapsed();
            let s = &v["workspace"]["state"];
            let warnings: Vec<&str> = v["warnings"]
                .as_array()
                .map(|w| w.iter().filter_map(|w| w.as_str()).collect())
                .unwrap_or_default();
            runs.said.push(format!(
                "method {}, worktree_ms {}, state_ms {}, bytes {}; warnings: {}",
                s["method"].as_str().unwrap_or("?"),
                s["worktree_ms"],
                s["state_ms"],
                s["bytes"],
                if warnings.is_empty() { "none".to_owned() } else { warnings.join(" | ") }
            ));
            runs.command.push(took);
            syncfs(&place.dir);
            runs.synced.push(t.elapsed());
            let path = PathBuf::from(v["workspace"]["path"].as_str().expect("workspace.path"));
            runs.added.push(used(&place.dir, place.btrfs) as i64 - before as i64);
            runs.check.push(cross_check(&path, place.btrfs) as i64);
            return path;
        }
        Method::PlainCopy | Method::CpDefault => {
            git(
                repo,
                &["worktree", "add", "-q", "-b", &format!("plain/{name}"), wt.to_str().unwrap(), "HEAD"],
            );
            let mut cp = Command::new("cp");
            cp.arg("-a");
            if m == Method::PlainCopy {
                cp.arg("--reflink=never");
            }
            sh(cp.arg(repo.join("target")).arg(wt.join("target")));
        }
        Method::Rebuild => {
            git(
                repo,
                &["worktree", "add", "-q", "-b", &format!("plain/{name}"), wt.to_str().unwrap(), "HEAD"],
            );
            generate_state(&wt.join("target"));
        }
    }
    runs.command.push(t.elapsed());
    syncfs(&place.dir);
    runs.synced.push(t.elapsed());
    runs.added.push(used(&place.dir, place.btrfs) as i64 - before as i64);
    runs.check.push(cross_check(&wt, place.btrfs) as i64);
    wt
}

/// Removes what `create` made (untimed), and waits for the filesystem to have freed it.
fn remove(d: &Daemon, place: &Place, repo: &Path, m: Method, name: &str, tree: &Path) {
    if m == Method::Rush {
        let out = d.rush(&["agent", "workspace", "remove", name]);
        assert!(out.status.success(), "rush workspace remove: {}", describe(&out));
    } else {
        git(repo, &["worktree", "remove", "--force", tree.to_str().unwrap()]);
        git(repo, &["branch", "-q", "-D", &format!("plain/{name}")]);
    }
    assert!(!tree.exists(), "{} is still there", tree.display());
    used(&place.dir, place.btrfs);
}

/// The create table of one filesystem.
fn create_table(d: &Daemon, place: &Place) {
    let repo = place.dir.join("repo");
    make_repo(&repo);
    let t = Instant::now();
    generate_state(&repo.join("target"));
    syncfs(&place.dir);
    let generated = t.elapsed();
    fs::create_dir_all(place.dir.join("wt")).unwrap();
    let mut methods = vec![Method::Rush, Method::PlainCopy];
    if place.btrfs {
        methods.push(Method::CpDefault);
    }
    methods.push(Method::Rebuild);
    let mut results: Vec<Runs> = methods.iter().map(|_| Runs::default()).collect();
    for run in 0..RUNS {
        for (m, r) in methods.iter().zip(&mut results) {
            let name = format!("{}-{}{run}", place.fs, m.tag());
            let tree = create(d, place, &repo, *m, &name, r);
            check_state(&repo.join("target"), &tree.join("target"));
            remove(d, place, &repo, *m, &name, &tree);
        }
    }
    println!(
        "\n### {} ({}): {TRACKED} tracked files, target/ = {STATE_FILES} x 1 MiB \
         (generated + synced in {})\n",
        place.fs,
        place.dir.display(),
        secs(generated)
    );
    let check = if place.btrfs { "btrfs fi du: exclusive" } else { "du of the new tree" };
    println!(
        "| method (median of {RUNS}, alternated) | wall: command | wall: command + syncfs | disk added \
         (statvfs Δ) | {check} | time vs plain copy (command / +syncfs) | disk vs plain copy |"
    );
    println!("|---|---|---|---|---|---|---|");
    let plain = &results[1];
    let (pc, ps, pa) = (median_of(&plain.command), median_of(&plain.synced), median_of(&plain.added));
    for (m, r) in methods.iter().zip(&results) {
        let (c, s, a) = (median_of(&r.command), median_of(&r.synced), median_of(&r.added));
        println!(
            "| {} | {} | {} | {} | {} | {:.2}x / {:.2}x | {:.3}x |",
            m.name(),
            secs(c),
            secs(s),
            mb(a),
            mb(median_of(&r.check)),
            c.as_secs_f64() / pc.as_secs_f64(),
            s.as_secs_f64() / ps.as_secs_f64(),
            a as f64 / pa as f64
        );
    }
    for (m, r) in methods.iter().zip(&results) {
        let all = |v: &[Duration]| v.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ");
        let adds = r.added.iter().map(|a| mb(*a)).collect::<Vec<_>>().join(", ");
        println!("- {}: runs {} (+syncfs {}); added {adds}", m.name(), all(&r.command), all(&r.synced));
    }
    for s in &results[0].said {
        println!("- rush said: {s}");
    }
    fs::remove_dir_all(&repo).unwrap();
    syncfs(&place.dir);
}

/// The merge queue: `MERGES` workspaces of strategy `strategy` merged with `--test true`;
/// (merges per minute, seconds, median create --no-state).
fn queue_round(d: &Daemon, repo: &Path, strategy: &str, first_file: usize) -> (f64, Duration, Duration) {
    let mut creates = Vec::new();
    let mut names = Vec::new();
    for i in 0..MERGES {
        let name = format!("q-{strategy}-{i}");
        let t = Instant::now();
        let out = d.rush(&[
            "--json",
            "agent",
            "workspace",
            "create",
            &name,
            "--repo",
            repo.to_str().unwrap(),
            "--no-state",
        ]);
        creates.push(t.elapsed());
        assert!(out.status.success(), "create {name}: {}", describe(&out));
        commit_one(&repo.join(".rush/workspaces").join(&name), first_file + i);
        names.push(name);
    }
    let start_ms = now_ms();
    let t = Instant::now();
    for name in &names {
        let out = d.rush(&[
            "--json",
            "agent",
            "workspace",
            "merge",
            name,
            "--strategy",
            strategy,
            "--test",
            "true",
            "--no-wait",
        ]);
        assert!(out.status.success(), "merge {name}: {}", describe(&out));
    }
    let queued = t.elapsed();
    let finished = loop {
        std::thread::sleep(Duration::from_millis(250));
        let jobs = d.rush_json(&["agent", "workspace", "queue"]);
        // (workspace, state, finished_unix_ms) of our merges.
        let ours: Vec<(&str, &str, u64)> = jobs
            .as_array()
            .expect("a list of merges")
            .iter()
            .filter(|j| names.iter().any(|n| j["workspace"] == n.as_str()))
            .map(|j| {
                let state = j["state"].as_str().unwrap_or("?");
                (j["workspace"].as_str().unwrap_or("?"), state, j["finished_unix_ms"].as_u64().unwrap_or(0))
            })
            .collect();
        assert_eq!(ours.len(), MERGES, "the queue lists {} of our merges", ours.len());
        if let Some(bad) = ours.iter().find(|j| !matches!(j.1, "queued" | "running" | "landing" | "merged")) {
            panic!("merge of {} ended {}: {jobs}", bad.0, bad.1);
        }
        if ours.iter().all(|j| j.1 == "merged") {
            break ours.iter().map(|j| j.2).max().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(300), "the queue did not finish in 5 min");
    };
    let took = Duration::from_millis(finished.saturating_sub(start_ms));
    eprintln!("  {strategy}: {MERGES} merges queued in {}, all merged after {}", secs(queued), secs(took));
    for i in 0..MERGES {
        assert!(
            fs::read_to_string(tracked_file(repo, first_file + i))
                .unwrap()
                .contains(&format!("// change {}", first_file + i)),
            "change {} not on main",
            first_file + i
        );
    }
    for name in &names {
        let out = d.rush(&["agent", "workspace", "remove", name]);
        assert!(out.status.success(), "remove {name}: {}", describe(&out));
    }
    (MERGES as f64 / took.as_secs_f64() * 60.0, took, median_of(&creates))
}

/// The same merges by hand: `MERGES` branches, one commit each, merged one after the
/// other in the main tree (no test, no queue). (merges per minute, seconds).
fn git_round(repo: &Path, strategy: &str, first_file: usize) -> (f64, Duration) {
    let branches: Vec<String> = (0..MERGES).map(|i| format!("b-{strategy}-{i}")).collect();
    let base = git(repo, &["rev-parse", "HEAD"]);
    for (i, b) in branches.iter().enumerate() {
        git(repo, &["switch", "-q", "-c", b, &base]);
        commit_one(repo, first_file + i);
        git(repo, &["switch", "-q", "main"]);
    }
    let t = Instant::now();
    for b in &branches {
        if strategy == "squash" {
            git(repo, &["merge", "-q", "--squash", b]);
            git(repo, &["commit", "-qm", &format!("squash {b}")]);
        } else {
            git(repo, &["merge", "-q", "--no-ff", "--no-edit", b]);
        }
    }
    let took = t.elapsed();
    for i in 0..MERGES {
        assert!(fs::read_to_string(tracked_file(repo, first_file + i)).unwrap().contains("// change"));
    }
    (MERGES as f64 / took.as_secs_f64() * 60.0, took)
}

fn merge_table(d: &Daemon, dir: &Path) {
    let rush_repo = dir.join("mq-rush");
    let git_repo = dir.join("mq-git");
    make_repo(&rush_repo);
    make_repo(&git_repo);
    println!(
        "\n### Merge queue: {MERGES} workspaces, one commit each on a distinct file ({TRACKED} tracked files, \
         {}, main tree checked out on the target)\n",
        dir.display()
    );
    println!(
        "| strategy | Rush queue (`--no-wait --test true`): all merged after | merged/min | `rush agent workspace \
         create --no-state` p50 | plain git in the main tree, sequential, no test | merged/min | Rush time / git time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, strategy) in ["merge", "squash"].into_iter().enumerate() {
        let (rate, took, create) = queue_round(d, &rush_repo, strategy, k * MERGES);
        let (grate, gtook) = git_round(&git_repo, strategy, k * MERGES);
        let git_name =
            if strategy == "squash" { "`git merge --squash` + `git commit`" } else { "`git merge --no-ff`" };
        println!(
            "| {strategy} | {} | {rate:.1} | {} | {git_name}: {} | {grate:.0} | {:.1}x |",
            secs(took),
            secs(create),
            secs(gtook),
            took.as_secs_f64() / gtook.as_secs_f64()
        );
    }
    let merges = git(&rush_repo, &["rev-list", "--count", "main"]);
    println!("\n(main of the Rush repository: {merges} commits after both rounds)");
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

pub fn run() {
    let started = Instant::now();
    let base =
        PathBuf::from(std::env::var("RUSH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/rush-bench-ws".into()));
    let _ = Command::new("umount").arg(base.join("btrfs/mnt")).stderr(Stdio::null()).status();
    let _ = fs::remove_dir_all(&base);
    let host = base.join("host");
    let image = base.join("btrfs/image");
    let mnt = base.join("btrfs/mnt");
    fs::create_dir_all(&host).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mut cleanup = Cleanup { mount: None, dirs: vec![base.clone()] };
    // Sparse: the image takes host blocks only as btrfs writes them.
    fs::File::create(&image).unwrap().set_len(BTRFS_IMAGE).unwrap();
    sh(Command::new("mkfs.btrfs").arg("-q").arg(&image));
    sh(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt));
    cleanup.mount = Some(mnt.clone());
    let host_fs = sh(Command::new("findmnt").args(["-n", "-o", "FSTYPE", "-T"]).arg(&host));
    println!(
        "kernel {}, {} cores; {}; {}; {}",
        version("uname", "-r"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version("cp", "--version"),
        version("git", "--version"),
        version("btrfs", "--version")
    );
    println!(
        "host filesystem at {}: {host_fs}; btrfs: a {} GiB sparse image on it, loop-mounted",
        host.display(),
        BTRFS_IMAGE >> 30
    );
    println!("load average at the start: {}", loadavg());
    let d = Daemon::start();
    create_table(&d, &Place { fs: &host_fs, dir: host.clone(), btrfs: false });
    create_table(&d, &Place { fs: "btrfs", dir: mnt.clone(), btrfs: true });
    merge_table(&d, &host);
    drop(d);
    drop(cleanup);
    println!("\nload average at the end: {}; the bench took {}", loadavg(), secs(started.elapsed()));
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

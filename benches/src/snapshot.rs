//! `rush-bench snapshot`: checkpoint, rollback, branch, diff and space of the time-travel
//! storage backends, on the same generated workspace (byte-identical: one seeded generator),
//! side by side in one run: btrfs snapshots (the Btrfs backend on a loop store), reflink
//! copies on that same btrfs, plain copies on the host's filesystem, and the Git backend.
//!
//! Every timed step ends with a syncfs of the filesystem it wrote, so that a copy left in the
//! page cache is not compared with a snapshot the kernel has committed. Caches are warm.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use crate::{Rng, median_of, syncfs};
use rush_agentd::adapters::snapshot::btrfs::Btrfs;
use rush_agentd::adapters::snapshot::git::Git;
use rush_agentd::adapters::snapshot::{Backend, Side};

struct Size {
    name: &'static str,
    files: usize,
    /// Mean file size; sizes vary from 1/4 to 7/4 of it.
    mean: usize,
    reps: usize,
    /// Repetitions on the host (plain copy, git): fewer at 200k files, where one costs minutes.
    host_reps: usize,
}

const SIZES: [Size; 3] = [
    Size { name: "2k files / 30 MB", files: 2_000, mean: 15_000, reps: 5, host_reps: 5 },
    Size { name: "20k files / 300 MB", files: 20_000, mean: 15_000, reps: 3, host_reps: 3 },
    Size { name: "200k files / 300 MB", files: 200_000, mean: 1_500, reps: 3, host_reps: 1 },
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Snapshot,
    Reflink,
    Plain,
    Git,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Snapshot => "btrfs snapshot",
            Kind::Reflink => "reflink copy (same btrfs)",
            Kind::Plain => "plain copy (host ext4)",
            Kind::Git => "git backend (host ext4)",
        }
    }
}

/// One method's place: its session dir and live tree.
struct Place<'a> {
    kind: Kind,
    backend: Option<&'a dyn Backend>,
    session: PathBuf,
    tree: PathBuf,
}

#[derive(Default)]
struct Results {
    checkpoint: Vec<Duration>,
    rollback: Vec<Duration>,
    branch: Vec<Duration>,
    diff: Vec<Duration>,
    space: u64,
}

fn sh(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn cp(src: &Path, dest: &Path, reflink: &str) {
    sh(Command::new("cp").args(["-a", reflink, "--no-target-directory"]).arg(src).arg(dest));
}

fn timed(sync: &Path, f: impl FnOnce()) -> Duration {
    syncfs(sync);
    let t = Instant::now();
    f();
    syncfs(sync);
    t.elapsed()
}

const WORDS: [&str; 16] = [
    "fn ", "let ", "self", ".map(", "x", ")", "{\n", "}\n", "    ", "return ", "Result<", ">", "= ", "0x1f",
    "// ", "match ",
];

/// A source-like (zlib-compressible) workspace: 50 files per directory, two levels.
fn generate(root: &Path, size: &Size) {
    let mut rng = Rng(0x5eed_0000 + size.files as u64);
    let mut buf = Vec::new();
    for i in 0..size.files {
        let dir = root.join(format!("d{:03}/s{:03}", i / 2500, (i / 50) % 50));
        if i % 50 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        let len = size.mean / 4 + (rng.next() as usize) % (size.mean * 3 / 2);
        buf.clear();
        while buf.len() < len {
            let r = rng.next();
            buf.extend_from_slice(WORDS[(r & 15) as usize].as_bytes());
            buf.extend_from_slice(format!("{}", r >> 48).as_bytes());
        }
        buf.truncate(len);
        fs::write(dir.join(format!("f{i}.rs")), &buf).unwrap();
    }
}

/// Changes 10 files spread over the tree (appends, so sizes change too).
fn touch_ten(tree: &Path, size: &Size, rep: usize) {
    for k in 0..10 {
        let i = (k * size.files / 10 + rep) % size.files;
        let p = tree.join(format!("d{:03}/s{:03}/f{i}.rs", i / 2500, (i / 50) % 50));
        let mut data = fs::read(&p).unwrap();
        data.extend_from_slice(format!("// edit {rep}\n").as_bytes());
        fs::write(&p, data).unwrap();
    }
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").args(["-s", "--block-size=1"]).arg(p).output().expect("du");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn used(p: &Path) -> u64 {
    sh(Command::new("btrfs").args(["filesystem", "sync"]).arg(p));
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    (st.blocks() - st.blocks_free()) * st.fragment_size()
}

fn ckpt_path(p: &Place, id: &str) -> PathBuf {
    p.session.join(format!("ckpt-{id}"))
}

fn checkpoint(p: &Place, id: &str) {
    match p.kind {
        Kind::Snapshot | Kind::Git => {
            p.backend.unwrap().checkpoint(&p.session, &p.tree, id).unwrap();
        }
        Kind::Reflink => cp(&p.tree, &ckpt_path(p, id), "--reflink=always"),
        Kind::Plain => cp(&p.tree, &ckpt_path(p, id), "--reflink=never"),
    }
}

/// Materializes `id` next to the tree, swaps it in with one RENAME_EXCHANGE; returns the
/// old tree (removed untimed).
fn rollback(p: &Place, id: &str) -> PathBuf {
    let new = p.session.join(format!("rollback-{id}"));
    match p.kind {
        Kind::Snapshot | Kind::Git => p.backend.unwrap().materialize(&p.session, id, &new).unwrap(),
        Kind::Reflink => cp(&ckpt_path(p, id), &new, "--reflink=always"),
        Kind::Plain => cp(&ckpt_path(p, id), &new, "--reflink=never"),
    }
    renameat2(AT_FDCWD, &new, AT_FDCWD, &p.tree, RenameFlags::RENAME_EXCHANGE).unwrap();
    new
}

fn branch(p: &Place, dest: &Path) {
    match p.kind {
        Kind::Snapshot | Kind::Git => p.backend.unwrap().clone_tree(&p.tree, dest).unwrap(),
        Kind::Reflink => cp(&p.tree, dest, "--reflink=always"),
        Kind::Plain => cp(&p.tree, dest, "--reflink=never"),
    }
}

fn diff(p: &Place, id: &str) -> usize {
    match p.kind {
        Kind::Snapshot | Kind::Git => {
            p.backend.unwrap().diff(&p.session, Side::Checkpoint(id), Side::Tree(&p.tree)).unwrap().len()
        }
        // No tree comparison to ask: read both trees (what hashing would cost).
        Kind::Reflink | Kind::Plain => {
            let out = Command::new("diff")
                .args(["-rq", "--no-dereference"])
                .arg(ckpt_path(p, id))
                .arg(&p.tree)
                .output()
                .expect("diff");
            assert_eq!(out.status.code(), Some(1), "diff -rq: {}", String::from_utf8_lossy(&out.stderr));
            out.stdout.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count()
        }
    }
}

fn remove(p: &Place, path: &Path) {
    match p.backend {
        Some(b) => b.remove_tree(path).unwrap(),
        None => fs::remove_dir_all(path).unwrap(),
    }
}

fn remove_checkpoint(p: &Place, id: &str) {
    match p.kind {
        Kind::Snapshot | Kind::Git => p.backend.unwrap().remove_checkpoint(&p.session, id).unwrap(),
        Kind::Reflink | Kind::Plain => fs::remove_dir_all(ckpt_path(p, id)).unwrap(),
    }
}

fn measure(p: &Place, size: &Size) -> Results {
    let mut r = Results::default();
    let reps = if matches!(p.kind, Kind::Plain | Kind::Git) { size.host_reps } else { size.reps };
    for rep in 0..reps {
        let id = format!("c{rep}");
        let before = if p.kind == Kind::Snapshot || p.kind == Kind::Reflink { used(&p.session) } else { 0 };
        r.checkpoint.push(timed(&p.session, || checkpoint(p, &id)));
        if rep == 0 {
            r.space = match p.kind {
                Kind::Snapshot | Kind::Reflink => used(&p.session).saturating_sub(before),
                Kind::Plain => du(&ckpt_path(p, &id)),
                Kind::Git => du(&p.session.join("git")),
            };
        }
        touch_ten(&p.tree, size, rep);
        let mut n = 0;
        r.diff.push(timed(&p.session, || n = diff(p, &id)));
        assert!(n >= 10, "{}: diff found {n} changes, 10 files were changed", p.kind.name());
        let mut old = PathBuf::new();
        r.rollback.push(timed(&p.session, || old = rollback(p, &id)));
        remove(p, &old);
        let dest = p.session.join("branch");
        r.branch.push(timed(&p.session, || branch(p, &dest)));
        remove(p, &dest);
        remove_checkpoint(p, &id);
    }
    r
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

pub fn run() {
    let base =
        PathBuf::from(std::env::var("RUSH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/rush-bench-snap".into()));
    let only: Option<String> = std::env::var("RUSH_BENCH_SNAPSHOT_SIZES").ok();
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let mnt = base.join("mnt");
    let guard = Unmount(mnt.clone(), base.clone());
    let btrfs = Btrfs::on_loop(&base.join("store.img"), &mnt, 4 << 30).expect("loop btrfs store");
    let git = Git::new(&base.join("git")).unwrap();
    println!("kernel {}, {} cores", uname(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    for (i, size) in SIZES.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|s| s == i.to_string())) {
            continue;
        }
        println!("\n### {} (median of {}; host methods {})\n", size.name, size.reps, size.host_reps);
        println!(
            "| method | checkpoint | rollback | branch | diff (10 files changed) | space of 1 checkpoint |"
        );
        println!("|---|---|---|---|---|---|");
        // The btrfs places: the workspace generated once, a reflink copy of it beside.
        let s_session = mnt.join("snap");
        fs::create_dir_all(&s_session).unwrap();
        let s_tree = s_session.join("tree");
        btrfs.create_tree(&s_tree).unwrap();
        generate(&s_tree, size);
        let snap =
            Place { kind: Kind::Snapshot, backend: Some(&btrfs), session: s_session.clone(), tree: s_tree };
        let base_r = measure(&snap, size);
        row(Kind::Snapshot, &base_r, &base_r);
        let r_session = mnt.join("reflink");
        fs::create_dir_all(&r_session).unwrap();
        let reflink = Place {
            kind: Kind::Reflink,
            backend: None,
            session: r_session.clone(),
            tree: r_session.join("tree"),
        };
        cp(&snap.tree, &reflink.tree, "--reflink=always");
        row(Kind::Reflink, &measure(&reflink, size), &base_r);
        fs::remove_dir_all(&r_session).unwrap();
        // Freed before the host places are filled: the image gives the blocks back (disk).
        btrfs.remove_tree(&snap.tree).unwrap();
        sh(Command::new("btrfs").args(["subvolume", "sync"]).arg(&mnt));
        sh(Command::new("fstrim").arg(&mnt));
        // The host places, one at a time (disk): the same bytes, generated again.
        for kind in [Kind::Plain, Kind::Git] {
            let session = base.join(if kind == Kind::Git { "git/s" } else { "plain" });
            fs::create_dir_all(&session).unwrap();
            let p = Place {
                kind,
                backend: (kind == Kind::Git).then_some(&git as &dyn Backend),
                tree: session.join("tree"),
                session: session.clone(),
            };
            fs::create_dir(&p.tree).unwrap();
            generate(&p.tree, size);
            row(kind, &measure(&p, size), &base_r);
            fs::remove_dir_all(&session).unwrap();
        }
    }
    drop(guard);
}

/// One table row, printed as soon as measured; ratios against btrfs snapshot.
fn row(kind: Kind, r: &Results, base: &Results) {
    let ratio = |v: &[Duration], b: &[Duration]| median_of(v).as_secs_f64() / median_of(b).as_secs_f64();
    println!(
        "| {} | {} ({:.0}x) | {} ({:.0}x) | {} ({:.0}x) | {} ({:.0}x) | {} |",
        kind.name(),
        ms(median_of(&r.checkpoint)),
        ratio(&r.checkpoint, &base.checkpoint),
        ms(median_of(&r.rollback)),
        ratio(&r.rollback, &base.rollback),
        ms(median_of(&r.branch)),
        ratio(&r.branch, &base.branch),
        ms(median_of(&r.diff)),
        ratio(&r.diff, &base.diff),
        mb(r.space),
    );
}

fn uname() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

/// Unmounts the loop store (autoclear detaches the loop device) and removes the bench dir.
struct Unmount(PathBuf, PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.1);
    }
}

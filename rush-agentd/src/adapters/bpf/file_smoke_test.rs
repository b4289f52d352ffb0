//! End-to-end check of the file hooks (BPF LSM) on the running kernel: a file-confined
//! agent may touch exactly what its grants cover, checked with real syscalls from a
//! process in the agent's cgroup. Needs root, cgroup v2 and a kernel that attaches BPF LSM
//! programs; prints SKIP otherwise, and fails instead when RUSH_TEST_STRICT=1 (the VM
//! tier, Debian 6.1 and 6.12 guests).
//!
//!     cargo test -p rush-agentd bpf::file_smoke_test -- --nocapture     (as root)

use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::boot_time_ns;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use rush_ebpf::{FILE_OP_CREATE, FILE_OP_DELETE, FILE_OP_EXEC, FILE_OP_READ, FILE_OP_WRITE};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;

const OK: i32 = 0;
const EPERM: i32 = libc::EPERM;
const CHILD_COMM: &str = "rush-fsmoke";
/// Directory levels of the "deep" trees: well inside the kernel's walk bound (4096)...
const DEEP: usize = 1000;
/// ...and beyond it: the walk gives up and denies.
const ABYSS: usize = 4200;
const MAX_STEPS: usize = 64;
const FOREVER: u64 = u64::MAX;

#[test]
fn file_smoke_test() {
    let _serial = super::smoke_test::BPF_TEST_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let strict = std::env::var("RUSH_TEST_STRICT").is_ok_and(|v| v == "1");
    let skip = |why: &str| {
        if strict {
            panic!("RUSH_TEST_STRICT=1 but the file LSM test cannot run: {why}");
        }
        // Not println!: libtest would swallow it in a passing test.
        let _ = writeln!(std::io::stderr(), "\n***** SKIP ***** file_smoke_test: {why}\n");
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (bpf, cgroups, bpffs, mounts)");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libbpf=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let Some(v2_root) = cgroup2_root() else {
        return skip("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    };
    let id = std::process::id();
    let mut fx = Fixture {
        cgroup_parent: v2_root.join(format!("rush-fsmoke-{id}")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/rush-fsmoke-{id}")),
        base: std::env::temp_dir().join(format!("rush-fsmoke-{id}")),
        mounts: Vec::new(),
    };
    let confined = fx.cgroup_parent.join("a1"); // level 2 below the v2 root
    let unconfined = fx.cgroup_parent.join("a2"); // an agent without file confinement
    for cg in [&confined, &unconfined] {
        std::fs::create_dir_all(cg).expect("create test cgroups");
    }
    let cg = cgroup_id(&confined);
    let cg2 = cgroup_id(&unconfined);

    let cfg = BpfConfig {
        pin_dir: fx.pin_dir.clone(),
        cgroup2_root: v2_root,
        agent_cgroup_level: 2,
        protected_dirs: Vec::new(),
    };
    let (bpf, report, mut events) = BpfHandle::start(cfg.clone()).expect("start BPF");
    for p in report.programs.iter().filter(|p| p.hook.starts_with("lsm/")) {
        println!("  {:<22} {:<20} attached={} error={:?}", p.name, p.hook, p.attached, p.error);
    }
    if !report.lsm_attached() {
        return skip(&format!("the LSM programs did not attach: {:?}", report.lsm_error()));
    }
    assert!(report.net_enforced());

    // The tree. srv/a: read, write, create, delete; srv/b and out: nothing; srv/c: create
    // and delete only; srv/m: read, write, delete; srv/r: read and write (revoked later);
    // srv/e: read, expiring; srv/ro: read.
    let t = Tree::new(&fx.base);
    for d in "srv/a/sub srv/a/mnt srv/b/mnt srv/c srv/e srv/m srv/r srv/ro srv/x out/dd".split(' ') {
        std::fs::create_dir_all(t.p(d)).unwrap();
    }
    // Mounts below a granted and an ungranted directory: the walk crosses them.
    for d in ["srv/a/mnt", "srv/b/mnt"] {
        nix::mount::mount(Some("tmpfs"), &t.p(d), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
            .expect("mount tmpfs");
        fx.mounts.push(t.p(d));
    }
    let files = "srv/a/f srv/a/sub/g srv/a/t srv/a/mnt/m srv/b/f srv/b/mnt/m srv/c/y srv/e/f srv/m/z srv/r/f \
                 srv/ro/f out/x out/x2";
    for f in files.split_whitespace() {
        std::fs::write(t.p(f), b"hello").unwrap();
    }
    let deep_a = t.p(&format!("srv/a/deep/{}", "d/".repeat(DEEP)));
    let deep_b = t.p(&format!("srv/b/deep/{}", "d/".repeat(DEEP)));
    for d in [&deep_a, &deep_b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), b"deep").unwrap();
    }
    make_abyss(&t.p("srv/a/abyss"), ABYSS);
    for f in ["srv/x/true", "srv/a/true"] {
        write_exit0_elf(&t.p(f));
    }

    let key = |rel: &str| FileKey::of_path(&t.p(rel)).unwrap();
    let ops = |bits: u32, expires: u64| {
        let mut g = FileGrantEntry::default();
        for i in 0..5 {
            if bits & (1 << i) != 0 {
                g.expires_ns[i] = expires;
            }
        }
        Some(g)
    };
    let rwcd = FILE_OP_READ | FILE_OP_WRITE | FILE_OP_CREATE | FILE_OP_DELETE;
    bpf.add_agent(cg, &KernelNetPolicy::Allow, AgentFlags { files_confined: true, ..Default::default() })
        .unwrap();
    bpf.add_agent(cg2, &KernelNetPolicy::Allow, AgentFlags::default()).unwrap();
    bpf.set_file_grant(cg, key("srv/a"), ops(rwcd, FOREVER)).unwrap();
    bpf.set_file_grant(cg, key("srv/c"), ops(FILE_OP_CREATE | FILE_OP_DELETE, FOREVER)).unwrap();
    bpf.set_file_grant(cg, key("srv/m"), ops(FILE_OP_READ | FILE_OP_WRITE | FILE_OP_DELETE, FOREVER))
        .unwrap();
    bpf.set_file_grant(cg, key("srv/r"), ops(FILE_OP_READ | FILE_OP_WRITE, FOREVER)).unwrap();
    bpf.set_file_grant(cg, key("srv/ro"), ops(FILE_OP_READ, FOREVER)).unwrap();
    bpf.set_file_grant(cg, key("srv/x"), ops(FILE_OP_EXEC, FOREVER)).unwrap();
    // The same inodes granted to the other agent must not count for this one.
    bpf.set_file_grant(cg2, key("srv/b"), ops(rwcd, FOREVER)).unwrap();

    // An outsider and the unconfined agent can do everything, before, during and after.
    let outsider = |tag: &str, cgroup: Option<&Path>| {
        let r = run(cgroup, &outsider_steps(&t, tag));
        check(&format!("outsider {tag}"), &r);
    };
    outsider("before", None);
    outsider("unconfined-agent", Some(&unconfined));

    // The confined agent.
    use Step::*;
    let steps = vec![
        step("read a granted file", Open(t.c("srv/a/f"), libc::O_RDONLY), OK),
        step("  read()", Read, OK),
        step("write a granted file", Open(t.c("srv/a/f"), libc::O_WRONLY | libc::O_APPEND), OK),
        step("  write()", Write, OK),
        step("granted subdirectory", Open(t.c("srv/a/sub/g"), libc::O_RDWR), OK),
        step("list the granted dir (getdents)", Open(t.c("srv/a"), libc::O_RDONLY | libc::O_DIRECTORY), OK),
        step("  getdents64()", Getdents, OK),
        step("a mount below the granted dir", Open(t.c("srv/a/mnt/m"), libc::O_RDONLY), OK),
        step("a file 1000 directories deep", Open(c(&deep_a.join("f")), libc::O_RDONLY), OK),
        step("  read()", Read, OK),
        step("sibling dir's file", Open(t.c("srv/b/f"), libc::O_RDONLY), EPERM),
        step("a mount below the sibling dir", Open(t.c("srv/b/mnt/m"), libc::O_RDONLY), EPERM),
        step("deep in the sibling dir", Open(c(&deep_b.join("f")), libc::O_RDONLY), EPERM),
        step("/etc/passwd", Open(c(Path::new("/etc/passwd")), libc::O_RDONLY), EPERM),
        step("outside file", Open(t.c("out/x"), libc::O_RDONLY), EPERM),
        step("create+delete-only dir, open for write", Open(t.c("srv/c/y"), libc::O_WRONLY), EPERM),
        step("read-only dir, open for read", Open(t.c("srv/ro/f"), libc::O_RDONLY), OK),
        step("  O_TRUNC needs write", Open(t.c("srv/ro/f"), libc::O_RDONLY | libc::O_TRUNC), EPERM),
        step("create inside", Open(t.c("srv/a/new"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY), OK),
        step("  write()", Write, OK),
        step("unlink inside", Unlink(t.c("srv/a/new")), OK),
        step("mkdir inside", Mkdir(t.c("srv/a/nd")), OK),
        step("rmdir inside", Rmdir(t.c("srv/a/nd")), OK),
        step("symlink inside", Symlink(c(Path::new("f")), t.c("srv/a/sl")), OK),
        step("unlink the symlink", Unlink(t.c("srv/a/sl")), OK),
        step("rename inside", Rename(t.c("srv/a/sub/g"), t.c("srv/a/g2")), OK),
        step("rename back", Rename(t.c("srv/a/g2"), t.c("srv/a/sub/g")), OK),
        step("truncate inside", Truncate(t.c("srv/a/t")), OK),
        step("chmod inside", Chmod(t.c("srv/a/t")), OK),
        step("chown inside", Chown(t.c("srv/a/t")), OK),
        step("exchange inside", Exchange(t.c("srv/a/t"), t.c("srv/a/f")), OK),
        step("exchange back", Exchange(t.c("srv/a/t"), t.c("srv/a/f")), OK),
        step("exec, exec-only grant", Exec(t.c("srv/x/true")), OK),
        step("exec, no exec grant", Exec(t.c("srv/a/true")), EPERM),
        step("exec-only dir, open for read", Open(t.c("srv/x/true"), libc::O_RDONLY), EPERM),
        step("create outside", Open(t.c("out/new"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY), EPERM),
        step("unlink outside", Unlink(t.c("out/x")), EPERM),
        step("mkdir outside", Mkdir(t.c("out/nd")), EPERM),
        step("symlink outside", Symlink(c(Path::new("x")), t.c("out/sl")), EPERM),
        step("truncate outside", Truncate(t.c("out/x")), EPERM),
        step("chmod outside", Chmod(t.c("out/x")), EPERM),
        step("chown outside", Chown(t.c("out/x")), EPERM),
        step("rmdir outside", Rmdir(t.c("out/dd")), EPERM),
        step("exchange inside <-> outside", Exchange(t.c("srv/a/t"), t.c("out/x")), EPERM),
        step("rename granted -> outside", Rename(t.c("srv/a/t"), t.c("out/t")), EPERM),
        step("rename outside -> granted", Rename(t.c("out/x2"), t.c("srv/a/x2")), EPERM),
        step("rename, would widen", Rename(t.c("srv/c/y"), t.c("srv/a/y")), EPERM),
        step("link, would widen", Link(t.c("srv/c/y"), t.c("srv/a/yl")), EPERM),
        step("link outside -> granted", Link(t.c("out/x"), t.c("srv/a/xl")), EPERM),
        step("rename, no widening", Rename(t.c("srv/m/z"), t.c("srv/a/z")), OK),
        step("beyond the walk bound", Open(t.c("srv/a/abyss"), libc::O_PATH | libc::O_DIRECTORY), OK),
        step("  (O_PATH down)", OpenAt(c(Path::new(&"d/".repeat(1500))), libc::O_PATH), OK),
        step("  (O_PATH down)", OpenAt(c(Path::new(&"d/".repeat(1500))), libc::O_PATH), OK),
        step(
            "  open there: fail closed",
            OpenAt(c(Path::new(&format!("{}f", "d/".repeat(ABYSS - 3000)))), libc::O_RDONLY),
            EPERM,
        ),
    ];
    let r = run(Some(&confined), &steps);
    check("confined agent", &r);
    assert!(t.p("srv/a/z").exists() && !t.p("srv/m/z").exists(), "the allowed rename happened");
    assert!(t.p("out/x").exists() && t.p("srv/c/y").exists() && !t.p("srv/a/y").exists());

    // Revoke while a descriptor is open: its next read and write fail.
    let revoke = vec![
        step("open granted file", Open(t.c("srv/r/f"), libc::O_RDWR), OK),
        step("  read()", Read, OK),
        step("  write()", Write, OK),
        step("(the grant is revoked)", Sync, OK),
        step("  read() after revoke", Read, EPERM),
        step("  write() after revoke", Write, EPERM),
        step("open after revoke", Open(t.c("srv/r/f"), libc::O_RDONLY), EPERM),
    ];
    let child = spawn(Some(&confined), &revoke);
    child.wait_sync();
    bpf.set_file_grant(cg, key("srv/r"), None).unwrap();
    outsider("during", None);
    child.resume();
    check("revoke", &child.finish());

    // Expiry: checked by the kernel against CLOCK_BOOTTIME, no daemon involved.
    let expires = boot_time_ns() + 2_000_000_000;
    bpf.set_file_grant(cg, key("srv/e"), ops(FILE_OP_READ, expires)).unwrap();
    let expiry = vec![
        step("open, grant not expired", Open(t.c("srv/e/f"), libc::O_RDONLY), OK),
        step("  read()", Read, OK),
        step("(sleep 2.5 s)", Sleep(2500), OK),
        step("  read() after expiry", Read, EPERM),
        step("open after expiry", Open(t.c("srv/e/f"), libc::O_RDONLY), EPERM),
    ];
    let r = run(Some(&confined), &expiry);
    assert!(boot_time_ns() > expires);
    check("expiry", &r);
    outsider("after", None);

    // The deny events: hook, op, path as the kernel saw them.
    let want: Vec<(&str, u32, String)> = vec![
        ("file_open", FILE_OP_READ, t.s("srv/b/f")),
        ("file_open", FILE_OP_READ, t.s("srv/b/mnt/m")),
        ("file_open", FILE_OP_READ, "/etc/passwd".into()),
        ("file_open", FILE_OP_WRITE, t.s("srv/c/y")),
        ("file_open", FILE_OP_WRITE, t.s("srv/ro/f")),
        ("path_mknod", FILE_OP_CREATE, t.s("out/new")),
        ("path_unlink", FILE_OP_DELETE, t.s("out/x")),
        ("path_mkdir", FILE_OP_CREATE, t.s("out/nd")),
        ("path_symlink", FILE_OP_CREATE, t.s("out/sl")),
        ("path_truncate", FILE_OP_WRITE, t.s("out/x")),
        ("path_chmod", FILE_OP_WRITE, t.s("out/x")),
        ("path_chown", FILE_OP_WRITE, t.s("out/x")),
        ("path_rmdir", FILE_OP_DELETE, t.s("out/dd")),
        ("path_rename", FILE_OP_DELETE, t.s("out/x")),
        ("path_rename", FILE_OP_CREATE, t.s("out/t")),
        ("file_open", FILE_OP_EXEC, t.s("srv/a/true")),
        ("file_open", FILE_OP_READ, t.s("srv/x/true")),
        ("path_rename", FILE_OP_DELETE, t.s("out/x2")),
        ("path_rename", FILE_OP_READ, t.s("srv/a/y")),
        ("path_link", FILE_OP_READ, t.s("srv/a/yl")),
        ("path_link", FILE_OP_READ, t.s("srv/a/xl")),
        ("file_permission", FILE_OP_READ, t.s("srv/r/f")),
        ("file_permission", FILE_OP_WRITE, t.s("srv/r/f")),
        ("file_open", FILE_OP_READ, t.s("srv/r/f")),
        ("file_permission", FILE_OP_READ, t.s("srv/e/f")),
        ("file_open", FILE_OP_READ, t.s("srv/e/f")),
    ];
    let got = collect_file_denies(&mut events, cg, |got| {
        want.iter().all(|(hook, op, path)| {
            got.iter().any(|e| {
                matches!(e, KernelEvent::FileDeny { hook: h, op: o, path: p, .. }
                if h == hook && o == op && p == path)
            })
        })
    });
    for e in &got {
        if let KernelEvent::FileDeny { hook, op, path, .. } = e {
            let shown = if path.len() > 80 {
                format!("{}...({} bytes)", &path[..60], path.len())
            } else {
                path.clone()
            };
            println!("  deny event: {hook:<16} op={op:#x} {shown}");
        }
    }
    for (hook, op, path) in &want {
        assert!(
            got.iter().any(|e| matches!(e, KernelEvent::FileDeny { hook: h, op: o, path: p, .. }
                if h == hook && o == op && p == path)),
            "no {hook} deny of op {op:#x} on {path}"
        );
    }
    for e in &got {
        let KernelEvent::FileDeny { cgroup_id, pid, tgid, uid, comm, .. } = e else { unreachable!() };
        assert_eq!((*cgroup_id, comm.as_str(), *uid), (cg, CHILD_COMM, 0), "{e:?}");
        assert_eq!(pid, tgid);
    }
    // dev/ino name the object whose grants were checked.
    let sib = key("srv/b/f");
    assert!(got.iter().any(|e| matches!(e, KernelEvent::FileDeny { path, dev, ino, .. }
        if *path == t.s("srv/b/f") && *dev == sib.dev && *ino == sib.ino)));
    // Too long for the event: cut at the root end, marked with "…".
    let deep_tail = format!("{}f", "d/".repeat(20));
    assert!(
        got.iter().any(|e| matches!(e, KernelEvent::FileDeny { hook: "file_open", path, .. }
            if path.starts_with('…') && path.ends_with(&deep_tail) && path.len() <= 255)),
        "no cut path for the deep deny"
    );

    claims(&bpf, &mut events, &mut fx, &t, (cg, &confined), (cg2, &unconfined));

    // No daemon: the pinned LSM links and maps keep enforcing. A restarted daemon adopts
    // the grants (and replaces the links).
    drop(bpf);
    drop(events);
    let still = [
        step("granted, no daemon", Open(t.c("srv/a/f"), libc::O_RDONLY), OK),
        step("ungranted, no daemon", Open(t.c("srv/b/f"), libc::O_RDONLY), EPERM),
    ];
    check("no daemon", &run(Some(&confined), &still));
    let (bpf, report, _events) = BpfHandle::start(cfg).expect("restart BPF");
    assert!(report.lsm_attached(), "{report:?}");
    assert!(bpf.agent_ids().unwrap().contains(&cg));
    check("restarted daemon", &run(Some(&confined), &still));

    // Removing the agent removes its grants (and lifts its confinement).
    bpf.remove_agent(cg).unwrap();
    let grants = libbpf_rs::MapHandle::from_pinned_path(fx.pin_dir.join(rush_ebpf::MAP_FILE_GRANTS)).unwrap();
    let left: Vec<_> = libbpf_rs::MapCore::keys(&grants)
        .filter_map(|k| <rush_ebpf::RushFileKey as rush_ebpf::Plain>::from_bytes(&k))
        .filter(|k| k.cgroup_id == cg)
        .collect();
    assert!(left.is_empty(), "grants left after remove_agent: {left:?}");
    let claims =
        libbpf_rs::MapHandle::from_pinned_path(fx.pin_dir.join(rush_ebpf::MAP_CLAIM_DENIES)).unwrap();
    let left: Vec<_> = libbpf_rs::MapCore::keys(&claims)
        .filter_map(|k| <rush_ebpf::RushFileKey as rush_ebpf::Plain>::from_bytes(&k))
        .filter(|k| k.cgroup_id == cg)
        .collect();
    assert!(left.is_empty(), "claim denies left after remove_agent: {left:?}");
    check(
        "removed agent",
        &run(Some(&confined), &[step("unconfined now", Open(t.c("out/x"), libc::O_RDONLY), OK)]),
    );
    bpf.remove_agent(cg2).unwrap();
    println!("file smoke test passed");
}

/// Path claims: a claim deny on srv/a/cl refuses every write-like operation there to the
/// file-confined agent `x` (whose grant on srv/a allows them all) and to the agent `y` that
/// is not file-confined at all, also through a bind mount of a directory inside it and
/// into a mount below it, and to descriptors opened before the deny; reads and the rest
/// of srv/a stay allowed, other processes are not concerned, and clearing the denies
/// allows the writes again.
fn claims(
    bpf: &BpfHandle,
    events: &mut UnboundedReceiver<KernelEvent>,
    fx: &mut Fixture,
    t: &Tree,
    (x, x_dir): (u64, &Path),
    (y, y_dir): (u64, &Path),
) {
    use Step::*;
    // What earlier sections left unread (they all came before their last awaited event).
    while let Ok(e) = events.try_recv() {
        println!("  earlier event: {e:?}");
    }
    for d in ["srv/a/cl/bsub", "srv/a/cl/mnt", "out/bind"] {
        std::fs::create_dir_all(t.p(d)).unwrap();
    }
    // A mount inside the claimed directory, and a bind mount of a directory of it elsewhere.
    let flags = nix::mount::MsFlags::empty();
    nix::mount::mount(Some("tmpfs"), &t.p("srv/a/cl/mnt"), Some("tmpfs"), flags, None::<&str>)
        .expect("mount tmpfs");
    fx.mounts.push(t.p("srv/a/cl/mnt"));
    nix::mount::mount(
        Some(&t.p("srv/a/cl/bsub")),
        &t.p("out/bind"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    fx.mounts.insert(0, t.p("out/bind"));
    for f in "srv/a/cl/f srv/a/cl/h srv/a/cl/h2 srv/a/cl/bsub/f srv/a/cl/mnt/m srv/a/g srv/a/other".split(' ')
    {
        std::fs::write(t.p(f), b"hello").unwrap();
    }
    let claimed = FileKey::of_path(&t.p("srv/a/cl")).unwrap();
    let (x_claim, y_claim) =
        (ClaimDeny { claim_id: 41, holder_cgroup: y }, ClaimDeny { claim_id: 42, holder_cgroup: x });
    let agents = libbpf_rs::MapHandle::from_pinned_path(fx.pin_dir.join(rush_ebpf::MAP_AGENTS)).unwrap();
    let denies =
        libbpf_rs::MapHandle::from_pinned_path(fx.pin_dir.join(rush_ebpf::MAP_CLAIM_DENIES)).unwrap();
    let flags_of = |cgroup_id: u64| {
        let value = libbpf_rs::MapCore::lookup(&agents, &cgroup_id.to_ne_bytes(), libbpf_rs::MapFlags::ANY);
        let value = value.unwrap().expect("agent entry");
        <rush_ebpf::RushAgent as rush_ebpf::Plain>::from_bytes(&value).unwrap().flags
    };
    let denies_of = |cgroup_id: u64| {
        libbpf_rs::MapCore::keys(&denies)
            .filter_map(|k| <rush_ebpf::RushFileKey as rush_ebpf::Plain>::from_bytes(&k))
            .filter(|k| k.cgroup_id == cgroup_id)
            .count()
    };
    let (confined, claim_denied) = (rush_ebpf::AGENT_FILES_CONFINED, rush_ebpf::AGENT_CLAIM_DENIED);
    assert_eq!((flags_of(x), flags_of(y)), (confined, 0));

    // The confined agent: its grant on srv/a allows all of this but the claim.
    let writes_under_claim = |who: &str| {
        let h = t.c(&format!("srv/a/cl/{who}"));
        let moved = t.c(&format!("srv/a/moved-{who}"));
        vec![
            step("open for write before the claim", Open(h.clone(), libc::O_WRONLY | libc::O_APPEND), OK),
            step("  write()", Write, OK),
            step("(the claim deny is set)", Sync, OK),
            step("  write() to the fd opened before", Write, EPERM),
            step("open for write", Open(t.c("srv/a/cl/f"), libc::O_WRONLY), EPERM),
            step("open O_RDONLY|O_TRUNC", Open(t.c("srv/a/cl/f"), libc::O_RDONLY | libc::O_TRUNC), EPERM),
            step("open for read", Open(t.c("srv/a/cl/f"), libc::O_RDONLY), OK),
            step("  read()", Read, OK),
            step("create", Open(t.c("srv/a/cl/new"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY), EPERM),
            step("unlink", Unlink(t.c("srv/a/cl/f")), EPERM),
            step("rename out of the claim", Rename(t.c("srv/a/cl/f"), moved), EPERM),
            step("rename into the claim", Rename(t.c("srv/a/g"), t.c("srv/a/cl/g")), EPERM),
            step("mkdir", Mkdir(t.c("srv/a/cl/nd")), EPERM),
            step("symlink", Symlink(c(Path::new("f")), t.c("srv/a/cl/sl")), EPERM),
            step("link out of the claim", Link(t.c("srv/a/cl/f"), t.c(&format!("srv/a/link-{who}"))), EPERM),
            step("truncate", Truncate(t.c("srv/a/cl/f")), EPERM),
            step("chmod", Chmod(t.c("srv/a/cl/f")), EPERM),
            step("in a mount inside it", Open(t.c("srv/a/cl/mnt/m"), libc::O_WRONLY), EPERM),
            step("outside the claim", Open(t.c("srv/a/other"), libc::O_WRONLY | libc::O_APPEND), OK),
            step("  write()", Write, OK),
            step("(the claim denies are cleared)", Sync, OK),
            step("open for write again", Open(t.c("srv/a/cl/f"), libc::O_WRONLY | libc::O_APPEND), OK),
            step("  write()", Write, OK),
            step(
                "create again",
                Open(t.c(&format!("srv/a/cl/new-{who}")), libc::O_CREAT | libc::O_WRONLY),
                OK,
            ),
            step("unlink it", Unlink(t.c(&format!("srv/a/cl/new-{who}"))), OK),
        ]
    };
    // Someone else (no agent) writes there all along.
    let outsider = [
        step("write under the claim", Open(t.c("srv/a/cl/f"), libc::O_WRONLY | libc::O_APPEND), OK),
        step("  write()", Write, OK),
    ];
    let child = spawn(Some(x_dir), &writes_under_claim("h"));
    child.wait_sync();
    bpf.set_claim_denies(x, &[(claimed, x_claim)]).unwrap();
    assert_eq!(flags_of(x), confined | claim_denied);
    check("claims: outsider", &run(None, &outsider));
    check("claims: other agent", &run(Some(y_dir), &outsider));
    child.resume();
    child.wait_sync();
    bpf.set_claim_denies(x, &[]).unwrap();
    assert_eq!((flags_of(x), denies_of(x)), (confined, 0));
    child.resume();
    check("claims: file-confined agent", &child.finish());

    // The agent that is not file-confined (its file hooks returned at once until now).
    let mut steps = writes_under_claim("h2");
    steps.insert(
        steps.len() - 5,
        step("a bind mount of a directory in it", Open(t.c("out/bind/f"), libc::O_WRONLY), EPERM),
    );
    steps.insert(steps.len() - 5, step("unrelated file", Open(t.c("out/x"), libc::O_WRONLY), OK));
    steps.push(step("the bind mount again", Open(t.c("out/bind/f"), libc::O_WRONLY), OK));
    let child = spawn(Some(y_dir), &steps);
    child.wait_sync();
    bpf.set_claim_denies(y, &[(claimed, y_claim)]).unwrap();
    assert_eq!((flags_of(y), denies_of(y)), (claim_denied, 1));
    child.resume();
    child.wait_sync();
    bpf.set_claim_denies(y, &[]).unwrap();
    assert_eq!((flags_of(y), denies_of(y)), (0, 0));
    child.resume();
    check("claims: agent not file-confined", &child.finish());

    // The deny events: hook, op, path, and the claim that denied.
    let mut want: Vec<(u64, &str, u32, String, ClaimDeny)> = Vec::new();
    for (agent, h, claim) in [(x, "h", x_claim), (y, "h2", y_claim)] {
        want.extend([
            (agent, "file_permission", FILE_OP_WRITE, t.s(&format!("srv/a/cl/{h}")), claim),
            (agent, "file_open", FILE_OP_WRITE, t.s("srv/a/cl/f"), claim),
            (agent, "path_mknod", FILE_OP_CREATE, t.s("srv/a/cl/new"), claim),
            (agent, "path_unlink", FILE_OP_DELETE, t.s("srv/a/cl/f"), claim),
            (agent, "path_rename", FILE_OP_DELETE, t.s("srv/a/cl/f"), claim),
            (agent, "path_rename", FILE_OP_CREATE, t.s("srv/a/cl/g"), claim),
            (agent, "path_mkdir", FILE_OP_CREATE, t.s("srv/a/cl/nd"), claim),
            (agent, "path_symlink", FILE_OP_CREATE, t.s("srv/a/cl/sl"), claim),
            (agent, "path_link", FILE_OP_WRITE, t.s("srv/a/cl/f"), claim),
            (agent, "path_truncate", FILE_OP_WRITE, t.s("srv/a/cl/f"), claim),
            (agent, "path_chmod", FILE_OP_WRITE, t.s("srv/a/cl/f"), claim),
            (agent, "file_open", FILE_OP_WRITE, t.s("srv/a/cl/mnt/m"), claim),
        ]);
    }
    want.push((y, "file_open", FILE_OP_WRITE, t.s("out/bind/f"), y_claim));
    let matches = |e: &KernelEvent, (agent, hook, op, path, claim): &(u64, &str, u32, String, ClaimDeny)| {
        matches!(e, KernelEvent::ClaimDeny { cgroup_id, hook: h, op: o, path: p, claim_id, holder_cgroup, .. }
            if cgroup_id == agent && h == hook && o == op && p == path
                && *claim_id == claim.claim_id && *holder_cgroup == claim.holder_cgroup)
    };
    // File denies of either agent are kept too: there must be none (the claim check runs
    // first, and the grants allowed all the rest).
    let got = collect_events(
        events,
        |e| match e {
            KernelEvent::ClaimDeny { cgroup_id, .. } | KernelEvent::FileDeny { cgroup_id, .. } => {
                *cgroup_id == x || *cgroup_id == y
            }
            _ => false,
        },
        |got| want.iter().all(|w| got.iter().any(|e| matches(e, w))),
    );
    for e in &got {
        match e {
            KernelEvent::ClaimDeny { cgroup_id, hook, op, path, claim_id, .. } => {
                println!(
                    "  claim deny event: agent {cgroup_id} {hook:<16} op={op:#x} claim {claim_id} {path}"
                )
            }
            other => println!("  UNEXPECTED: {other:?}"),
        }
    }
    for w in &want {
        assert!(got.iter().any(|e| matches(e, w)), "no claim deny event {w:?}");
    }
    for e in &got {
        let KernelEvent::ClaimDeny { comm, uid, pid, tgid, .. } = e else {
            panic!("a file deny during the claims section: {e:?}")
        };
        assert_eq!((comm.as_str(), *uid), (CHILD_COMM, 0), "{e:?}");
        assert_eq!(pid, tgid);
    }

    // Claim denies of a cgroup that is not (yet) an agent: kept, reported, no agent entry
    // made; cleared, gone.
    let stranger = u64::MAX - 7;
    bpf.set_claim_denies(stranger, &[(claimed, x_claim)]).unwrap();
    assert!(bpf.agent_ids().unwrap().contains(&stranger));
    let entry = libbpf_rs::MapCore::lookup(&agents, &stranger.to_ne_bytes(), libbpf_rs::MapFlags::ANY);
    assert!(entry.unwrap().is_none(), "set_claim_denies made an agent entry");
    bpf.set_claim_denies(stranger, &[]).unwrap();
    assert!(!bpf.agent_ids().unwrap().contains(&stranger));
    assert_eq!(denies_of(stranger), 0);
    // remove_agent deletes them too (checked for x at the end of the test).
    bpf.set_claim_denies(x, &[(claimed, x_claim)]).unwrap();
}

/// What an outsider (or an unconfined agent) does: all of it must work.
fn outsider_steps(t: &Tree, tag: &str) -> Vec<(String, Step, i32)> {
    use Step::*;
    let new = t.c(&format!("out/new-{tag}"));
    let dir = t.c(&format!("out/dir-{tag}"));
    let moved = t.c(&format!("srv/a/moved-{tag}"));
    vec![
        step("read an ungranted file", Open(t.c("srv/b/f"), libc::O_RDONLY), OK),
        step("  read()", Read, OK),
        step("/etc/passwd", Open(c(Path::new("/etc/passwd")), libc::O_RDONLY), OK),
        step("create outside", Open(new.clone(), libc::O_CREAT | libc::O_WRONLY), OK),
        step("  write()", Write, OK),
        step("mkdir outside", Mkdir(dir.clone()), OK),
        step("rmdir outside", Rmdir(dir), OK),
        step("rename outside -> srv/a", Rename(new, moved.clone()), OK),
        step("unlink", Unlink(moved), OK),
        step("write a revocable file", Open(t.c("srv/r/f"), libc::O_WRONLY | libc::O_APPEND), OK),
        step("  write()", Write, OK),
    ]
}

fn step(what: &str, s: Step, expect: i32) -> (String, Step, i32) {
    (what.to_string(), s, expect)
}

/// Asserts every step's result (0 or the errno) is the expected one; shows all of them.
fn check(who: &str, results: &[(String, i32, i32)]) {
    let bad: Vec<_> = results.iter().filter(|(_, got, want)| got != want).collect();
    for (what, got, want) in results {
        let mark = if got == want { "ok " } else { "BAD" };
        println!("  [{who}] {mark} {what}: got {}, want {}", errno_name(*got), errno_name(*want));
    }
    assert!(bad.is_empty(), "[{who}] unexpected results: {bad:?}");
}

fn errno_name(e: i32) -> String {
    match e {
        0 => "ok".into(),
        libc::EPERM => "EPERM".into(),
        e => format!("{}", std::io::Error::from_raw_os_error(e)),
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new(base: &Path) -> Tree {
        std::fs::create_dir_all(base).unwrap();
        Tree { base: base.to_path_buf() }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
    fn c(&self, rel: &str) -> CString {
        c(&self.p(rel))
    }
    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }
}

/// `levels` nested directories `d` under `top` with a file `f` at the bottom: too deep for
/// one path (PATH_MAX), so built with *at() calls.
fn make_abyss(top: &Path, levels: usize) {
    std::fs::create_dir_all(top).unwrap();
    let d = c(Path::new("d"));
    let f = c(Path::new("f"));
    // SAFETY: plain syscalls on fds this function owns and NUL-terminated names.
    unsafe {
        let mut fd = libc::open(c(top).as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
        assert!(fd >= 0);
        for _ in 0..levels {
            assert_eq!(libc::mkdirat(fd, d.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, d.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        let file = libc::openat(fd, f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(file >= 0);
        libc::close(file);
        libc::close(fd);
    }
}

/// A minimal static x86-64 ELF executable that calls exit(0): an exec test that needs no
/// dynamic loader or libraries (which would need their own grants).
fn write_exit0_elf(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    const BASE: u64 = 0x40_0000;
    let code: [u8; 9] = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]; // mov eax, 60; xor edi, edi; syscall
    let size = (64 + 56 + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, sh*
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [0, BASE, BASE, size, size, 0x1000u64] {
        elf.extend_from_slice(&word.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
    }
    elf.extend_from_slice(&code);
    std::fs::write(path, &elf).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Removes what `make_abyss` made, one level at a time (no recursion, no long paths):
/// move top/d/d up to top/x, remove top/d, rename top/x to top/d.
fn remove_abyss(top: &Path) {
    let Ok(dir) = std::fs::File::open(top) else { return };
    let fd = dir.as_raw_fd();
    let (d, dd, x, df) = (c(Path::new("d")), c(Path::new("d/d")), c(Path::new("x")), c(Path::new("d/f")));
    // SAFETY: *at() syscalls relative to an open directory, NUL-terminated names.
    unsafe {
        loop {
            libc::unlinkat(fd, df.as_ptr(), 0);
            if libc::renameat(fd, dd.as_ptr(), fd, x.as_ptr()) != 0 {
                libc::unlinkat(fd, d.as_ptr(), libc::AT_REMOVEDIR);
                break;
            }
            if libc::unlinkat(fd, d.as_ptr(), libc::AT_REMOVEDIR) != 0
                || libc::renameat(fd, x.as_ptr(), fd, d.as_ptr()) != 0
            {
                break;
            }
        }
    }
}

/// Test cgroups, pins, mounts and files, removed even when an assertion fails.
struct Fixture {
    cgroup_parent: PathBuf,
    pin_dir: PathBuf,
    base: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        remove_abyss(&self.base.join("srv/a/abyss"));
        let _ = std::fs::remove_dir_all(&self.base);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for dir in [self.cgroup_parent.join("a1"), self.cgroup_parent.join("a2"), self.cgroup_parent.clone()]
        {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn cgroup_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC))
}

/// The FileDeny events of agent `cgroup_id` until `enough` says so or 5 s have passed.
fn collect_file_denies(
    events: &mut UnboundedReceiver<KernelEvent>,
    cgroup_id: u64,
    enough: impl Fn(&[KernelEvent]) -> bool,
) -> Vec<KernelEvent> {
    collect_events(
        events,
        |e| matches!(e, KernelEvent::FileDeny { cgroup_id: c, .. } if *c == cgroup_id),
        enough,
    )
}

/// The events `keep` picks until `enough` says so or 5 s have passed (others are shown).
fn collect_events(
    events: &mut UnboundedReceiver<KernelEvent>,
    keep: impl Fn(&KernelEvent) -> bool,
    enough: impl Fn(&[KernelEvent]) -> bool,
) -> Vec<KernelEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while !enough(&got) && Instant::now() < deadline {
        match events.try_recv() {
            Ok(e) if keep(&e) => got.push(e),
            Ok(other) => println!("  other event: {other:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    got
}

/// One syscall of a child. Paths are prepared before the fork: the child allocates nothing.
#[derive(Debug)]
enum Step {
    /// open(path, flags, 0644); the fd replaces the child's current one.
    Open(CString, i32),
    /// openat(current fd, path, flags); the fd replaces the current one.
    OpenAt(CString, i32),
    /// read() of 1 byte from the current fd (0 bytes is success too).
    Read,
    /// write() of 1 byte to the current fd.
    Write,
    /// getdents64() on the current fd.
    Getdents,
    Unlink(CString),
    Mkdir(CString),
    Rmdir(CString),
    Rename(CString, CString),
    /// link(existing, new)
    Link(CString, CString),
    /// symlink(target, linkpath)
    Symlink(CString, CString),
    Truncate(CString),
    Chmod(CString),
    /// chown(path, 0, 0)
    Chown(CString),
    /// renameat2(RENAME_EXCHANGE)
    Exchange(CString, CString),
    /// fork + execve(path) + wait: 0 if it ran and exited 0, else the execve errno.
    Exec(CString),
    /// nanosleep, milliseconds.
    Sleep(u64),
    /// Tells the parent it got here and waits until the parent says go on.
    Sync,
}

struct Child {
    pid: i32,
    results: OwnedFd,
    synced: OwnedFd,
    go: OwnedFd,
    labels: Vec<(String, i32)>,
}

impl Child {
    fn wait_sync(&self) {
        let mut b = [0u8; 1];
        let n = nix::unistd::read(&self.synced, &mut b).expect("read sync pipe");
        assert_eq!(n, 1, "the child ended before its Sync step");
    }

    fn resume(&self) {
        nix::unistd::write(&self.go, b"g").expect("write go pipe");
    }

    /// (label, result, expected) per step.
    fn finish(self) -> Vec<(String, i32, i32)> {
        let mut buf = [0u8; MAX_STEPS * 4];
        let mut got = 0;
        while got < buf.len() {
            match nix::unistd::read(&self.results, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("reading results: {e}"),
            }
        }
        match waitpid(Pid::from_raw(self.pid), None).expect("waitpid") {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("child: {other:?}"),
        }
        assert_eq!(got, buf.len(), "child results incomplete");
        self.labels
            .into_iter()
            .enumerate()
            .map(|(i, (label, want))| {
                (label, i32::from_ne_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap()), want)
            })
            .collect()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn run(cgroup: Option<&Path>, steps: &[(String, Step, i32)]) -> Vec<(String, i32, i32)> {
    spawn(cgroup, steps).finish()
}

/// Forks a child that moves itself into `cgroup` (if any), runs `steps` and writes each
/// step's result (0 or errno) to a pipe.
fn spawn(cgroup: Option<&Path>, steps: &[(String, Step, i32)]) -> Child {
    assert!(steps.len() <= MAX_STEPS);
    let procs = cgroup.map(|cg| c(&cg.join("cgroup.procs")));
    let comm = CString::new(CHILD_COMM).unwrap();
    let (results_r, results_w) = pipe();
    let (synced_r, synced_w) = pipe();
    let (go_r, go_w) = pipe();
    let labels = steps.iter().map(|(l, _, want)| (l.clone(), *want)).collect();

    // SAFETY: this test process has other threads, so the child may only make
    // async-signal-safe calls: raw syscalls on memory prepared before the fork, and
    // _exit. Reading `steps` (already built) allocates nothing.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        // SAFETY: (the child) see above.
        0 => unsafe {
            if let Some(procs) = &procs {
                // "0" moves the writing process.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(200);
                }
                libc::close(fd);
            }
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
            let mut results = [0i32; MAX_STEPS];
            let mut fd: i32 = -1;
            let mut buf = [0u8; 512];
            let errno = || *libc::__errno_location();
            for (i, (_, s, _)) in steps.iter().enumerate() {
                let r: i64 = match s {
                    Step::Open(p, flags) | Step::OpenAt(p, flags) => {
                        let dir = if matches!(s, Step::OpenAt(..)) { fd } else { libc::AT_FDCWD };
                        let n = libc::openat(dir, p.as_ptr(), *flags | libc::O_CLOEXEC, 0o644);
                        if n >= 0 {
                            if fd >= 0 {
                                libc::close(fd);
                            }
                            fd = n;
                        }
                        n as i64
                    }
                    Step::Read => libc::read(fd, buf.as_mut_ptr().cast(), 1) as i64,
                    Step::Write => libc::write(fd, c"x".as_ptr().cast(), 1) as i64,
                    Step::Getdents => libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()),
                    Step::Unlink(p) => libc::unlink(p.as_ptr()) as i64,
                    Step::Mkdir(p) => libc::mkdir(p.as_ptr(), 0o755) as i64,
                    Step::Rmdir(p) => libc::rmdir(p.as_ptr()) as i64,
                    Step::Rename(a, b) => libc::rename(a.as_ptr(), b.as_ptr()) as i64,
                    Step::Link(a, b) => libc::link(a.as_ptr(), b.as_ptr()) as i64,
                    Step::Symlink(a, b) => libc::symlink(a.as_ptr(), b.as_ptr()) as i64,
                    Step::Truncate(p) => libc::truncate(p.as_ptr(), 0) as i64,
                    Step::Chmod(p) => libc::chmod(p.as_ptr(), 0o600) as i64,
                    Step::Chown(p) => libc::chown(p.as_ptr(), 0, 0) as i64,
                    Step::Exchange(a, b) => libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    ),
                    Step::Exec(p) => {
                        let argv = [p.as_ptr(), std::ptr::null()];
                        let envp = [std::ptr::null()];
                        match libc::fork() {
                            -1 => -1,
                            0 => {
                                libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
                                libc::_exit(100 + errno());
                            }
                            pid => {
                                let mut status = 0;
                                libc::waitpid(pid, &mut status, 0);
                                match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                                    Some(0) => 0,
                                    Some(code) if code > 100 => {
                                        *libc::__errno_location() = code - 100;
                                        -1
                                    }
                                    _ => {
                                        *libc::__errno_location() = libc::ECHILD;
                                        -1
                                    }
                                }
                            }
                        }
                    }
                    Step::Sleep(ms) => {
                        let ts = libc::timespec {
                            tv_sec: (*ms / 1000) as i64,
                            tv_nsec: ((*ms % 1000) * 1_000_000) as i64,
                        };
                        libc::nanosleep(&ts, std::ptr::null_mut()) as i64
                    }
                    Step::Sync => {
                        let mut b = [0u8; 1];
                        if libc::write(synced_w.as_raw_fd(), b"s".as_ptr().cast(), 1) != 1
                            || libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) != 1
                        {
                            libc::_exit(201);
                        }
                        0
                    }
                };
                results[i] = if r < 0 { errno() } else { 0 };
            }
            let bytes = std::slice::from_raw_parts(results.as_ptr().cast::<u8>(), MAX_STEPS * 4);
            if libc::write(results_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize
            {
                libc::_exit(202);
            }
            libc::_exit(0)
        },
        pid => {
            drop((results_w, synced_w, go_r));
            Child { pid, results: results_r, synced: synced_r, go: go_w, labels }
        }
    }
}

//! The Debian package, installed the way a user would: `cargo xtask deb` builds it, a clean
//! Debian bookworm (debootstrap --variant=minbase) installs it with apt, the daemon starts
//! the way the installed unit says, a confined agent is refused a connect and the refusal is
//! audited; then `dpkg -r` must leave no daemon, agent, agent cgroup (v2 and v1), BPF pin or
//! mount behind but keep the config and state, and `dpkg -P` must remove those too.
//!
//! The package is of the debug build the host tier has just built (`--bin-dir`, which builds
//! nothing): a release build would cost CI ~10 minutes for the same files (`cargo xtask
//! deb` defaults to release), and even `--profile dev` would compile the daemon again (a
//! build without kernel-tests unifies its dependencies' features differently). The chroot is cached as a tarball in `${RUSH_CACHE_DIR:-~/.cache/rush}/
//! deb-chroot/` (debootstrap's first run downloads ~40 MB, ~1 min); `RUSH_DEB` names a
//! prebuilt .deb instead of building one.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use kernel_tests::*;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// A hard link to the installed rush-agentd, kept past `dpkg -r` for the cleanup.
const TEARDOWN: &str = "/root/rush-agentd.teardown";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

/// cargo as from a shell: without the variables `cargo test` sets for this test
/// (CARGO_PKG_*, CARGO_MANIFEST_DIR, LD_LIBRARY_PATH), which describe this test crate.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(repo());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR") || k == "LD_LIBRARY_PATH"
        {
            c.env_remove(&*k);
        }
    }
    c
}

/// The .deb: `RUSH_DEB`, else `cargo xtask deb --bin-dir` of the binaries under test (the
/// tier's dev build), once per test process.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(d) = std::env::var_os("RUSH_DEB").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let out = tempfile::tempdir().unwrap().keep();
        let built = run(cargo()
            .args(["run", "-p", "xtask", "--", "deb", "--bin-dir"])
            .arg(bin_dir())
            .arg("--out")
            .arg(&out));
        // What cargo had to compile: nothing, when the tier built the binaries just before.
        for l in
            String::from_utf8_lossy(&built.stderr).lines().filter(|l| l.trim_start().starts_with("Compiling"))
        {
            eprintln!("package suite: {}", l.trim());
        }
        let debs: Vec<PathBuf> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(debs.len(), 1, "cargo xtask deb wrote {debs:?}");
        debs[0].clone()
    })
}

/// The files (not directories) a .deb installs, relative to /.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./").to_owned())
        .collect()
}

/// A clean bookworm from the cached tarball (made by debootstrap on the first run), with
/// /proc, /sys (the cgroup hierarchies and bpffs in it) and /dev mounted. Dropping it stops
/// what it started, tears down what an installed package left, unmounts and deletes it.
struct Chroot {
    root: PathBuf,
    mounts: Vec<PathBuf>,
    daemon: Option<Child>,
}

impl Chroot {
    fn new() -> Chroot {
        let tarball = chroot_tarball();
        let root = tempfile::Builder::new().prefix("rush-deb-chroot-").tempdir_in("/var/tmp").unwrap().keep();
        let mut c = Chroot { root, mounts: Vec::new(), daemon: None };
        run(Command::new("tar")
            .args(["--zstd", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&c.root)
            .arg("--numeric-owner"));
        fs::copy("/etc/resolv.conf", c.root.join("etc/resolv.conf")).unwrap();
        // The root a mount point, as on a real machine (arch-chroot does the same): the
        // daemon makes `/` a slave in each agent's mount namespace, which the kernel
        // refuses (EINVAL) for a chroot directory that is not one.
        c.bind_root();
        c.mount_proc();
        for dir in ["sys", "dev"] {
            c.bind(dir);
        }
        c
    }

    fn bind_root(&mut self) {
        use nix::mount::MsFlags;
        nix::mount::mount(Some(&self.root), &self.root, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .unwrap_or_else(|e| panic!("bind {} on itself: {e}", self.root.display()));
        self.mounts.push(self.root.clone());
        nix::mount::mount(None::<&str>, &self.root, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
            .unwrap_or_else(|e| panic!("make {} private: {e}", self.root.display()));
    }

    fn mount_proc(&mut self) {
        let target = self.root.join("proc");
        nix::mount::mount(Some("proc"), &target, Some("proc"), nix::mount::MsFlags::empty(), None::<&str>)
            .unwrap_or_else(|e| panic!("mount proc on {}: {e}", target.display()));
        self.mounts.push(target);
    }

    /// A recursive bind of /DIR, made a slave first thing: an unmount in the copy must not
    /// propagate to the host's own /sys/fs/cgroup or /dev/pts.
    fn bind(&mut self, dir: &str) {
        use nix::mount::MsFlags;
        let target = self.root.join(dir);
        nix::mount::mount(
            Some(&Path::new("/").join(dir)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind /{dir} on {}: {e}", target.display()));
        self.mounts.push(target.clone());
        nix::mount::mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("make {} a slave: {e}", target.display()));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.root).args(args);
        c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Starts the daemon as systemd would from the installed unit: its ExecStart line and
    /// Environment=, its CapabilityBoundingSet=, the Runtime/State/
    /// ConfigurationDirectory= it asks for, and a notify socket it must send READY=1 to
    /// (Type=notify). Not applied: the unit's own cgroup (agents are not under it anyway).
    fn start_daemon_like_the_unit(&mut self) {
        let unit = fs::read_to_string(self.path("/lib/systemd/system/rush-agentd.service")).unwrap();
        let mut exec = None;
        let mut env = Vec::new();
        // Through util-linux's setpriv (in minbase). LimitMEMLOCK=infinity is not applied: the
        // CI's container may not raise it (prlimit: EPERM), and kernels since 5.11 do not
        // charge BPF maps to it.
        let mut wrap: Vec<String> = Vec::new();
        for line in unit.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "ExecStart" => exec = Some(value.to_owned()),
                "CapabilityBoundingSet" => {
                    let caps: Vec<String> = value
                        .split_whitespace()
                        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
                        .collect();
                    wrap.extend([
                        "setpriv".into(),
                        format!("--bounding-set=-all,{}", caps.join(",")),
                        "--".into(),
                    ]);
                }
                "Environment" => env.extend(value.split_whitespace().filter_map(|kv| {
                    let (k, v) = kv.trim_matches('"').split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })),
                "RuntimeDirectory" | "StateDirectory" | "ConfigurationDirectory" => {
                    let base = match key {
                        "RuntimeDirectory" => "/run",
                        "StateDirectory" => "/var/lib",
                        _ => "/etc",
                    };
                    let mode = unit
                        .lines()
                        .find_map(|l| l.trim().strip_prefix(&format!("{key}Mode=")))
                        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
                        .unwrap_or(0o755);
                    for d in value.split_whitespace() {
                        let dir = self.path(&format!("{base}/{d}"));
                        fs::create_dir_all(&dir).unwrap();
                        use std::os::unix::fs::PermissionsExt;
                        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
                    }
                }
                _ => {}
            }
        }
        let exec = exec.expect("the unit has an ExecStart line");
        assert!(
            !exec.starts_with(['-', '@', '+', '!', ':']),
            "ExecStart prefixes are not handled here: {exec}"
        );
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], "/usr/bin/rush-agentd", "the packaged unit must start the packaged daemon");

        let notify = self.path("/run/rush-test-notify.sock");
        let _ = fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify).unwrap();
        let log = fs::File::create(self.path("/var/log/rush-agentd.log")).unwrap();
        assert!(wrap.iter().any(|w| w == "setpriv"), "the unit sets a CapabilityBoundingSet=");
        let argv: Vec<&str> = wrap.iter().map(String::as_str).chain(words.iter().copied()).collect();
        let mut cmd = self.cmd(&argv);
        cmd.envs(env).env("NOTIFY_SOCKET", "/run/rush-test-notify.sock");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.daemon = Some(cmd.spawn().unwrap());
        let mut buf = [0u8; 256];
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let n = loop {
            if let Ok(n) = sock.recv(&mut buf) {
                break n;
            }
            let exited = self.daemon.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "no READY=1 from the daemon ({exited:?}): {}",
                self.daemon_log()
            );
        };
        assert!(
            String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.path("/var/log/rush-agentd.log")).unwrap_or_default()
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // A failed test must not leave agents, cgroups or pins on the host, even when the
        // failure is that `dpkg -r` left them (and took the binary): the hard link to the
        // installed daemon tears down (and stops only processes of that very file).
        if self.path(TEARDOWN).exists() {
            let _ = self.cmd(&[TEARDOWN, "teardown"]).output();
        }
        for m in self.mounts.iter().rev() {
            // MNT_DETACH takes the bind's submounts (cgroup hierarchies, bpffs) with it.
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!(
                    "package suite: {} not unmounted: {e}; {} left in place",
                    m.display(),
                    self.root.display()
                );
                return;
            }
        }
        // --one-file-system: never into anything still mounted there.
        let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg(&self.root).status();
    }
}

/// The cached minbase chroot tarball, made on the first run: debootstrap, then `apt-get
/// update` in it so that `apt-get install ./rush.deb` can fetch the few libraries minbase
/// lacks (libelf1).
fn chroot_tarball() -> PathBuf {
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture")).stdout).unwrap();
    let dir = cached("RUSH_DEB_CHROOT_CACHE", "deb-chroot");
    let tarball = dir.join(format!("{SUITE}-{}.tar.zst", arch.trim()));
    if tarball.exists() {
        return tarball;
    }
    fs::create_dir_all(&dir).unwrap();
    let work = dir.join(format!("partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    eprintln!(
        "package suite: debootstrap --variant=minbase {SUITE} into {} (first run: downloads)",
        work.display()
    );
    run(Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(&work).arg(MIRROR));
    fs::copy("/etc/resolv.conf", work.join("etc/resolv.conf")).unwrap();
    run(Command::new("chroot").arg(&work).args(["apt-get", "update", "-q"]));
    let tmp = tarball.with_extension("tmp");
    run(Command::new("tar")
        .args(["--zstd", "-cpf"])
        .arg(&tmp)
        .arg("-C")
        .arg(&work)
        .args(["--numeric-owner", "."]));
    fs::rename(&tmp, &tarball).unwrap();
    let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg(&work).status();
    tarball
}

/// Every hierarchy's `<root>/rush`: where the packaged daemon (default `[cgroup] parent`)
/// puts agents.
fn agent_parents() -> Vec<PathBuf> {
    cgroup_roots().into_iter().map(|r| r.join("rush")).filter(|p| p.exists()).collect()
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| {
            m.starts_with(&root)
                && *m != root
                && !["proc", "sys", "dev"].iter().any(|d| m.starts_with(&format!("{root}/{d}")))
        })
        .map(str::to_owned)
        .collect()
}

fn ready() -> bool {
    require(is_root(), "root (chroot, mounts, the daemon)")
        && require(Path::new("/usr/sbin/debootstrap").exists(), "debootstrap (cargo xtask setup)")
        && require(Command::new("dpkg-shlibdeps").arg("--version").output().is_ok(), "dpkg-dev (cargo xtask setup)")
        // The packaged daemon uses the default cgroup parent and pin dir: one at a time.
        && require(agent_parents().is_empty() && !Path::new("/sys/fs/bpf/rush").exists(),
            "no other daemon using the default cgroup parent `rush` and /sys/fs/bpf/rush")
}

#[test]
fn deb_installs_in_a_clean_debian_runs_confined_agents_and_removes_without_a_trace() {
    if !ready() {
        return;
    }
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("package suite: {:>5.1} s {what}", t0.elapsed().as_secs_f64());
    let deb = deb();
    phase("the .deb built");
    let mut c = Chroot::new();
    phase("the chroot unpacked and mounted");
    fs::copy(deb, c.path("/tmp/rush.deb")).unwrap();
    // apt resolves the Depends dpkg-shlibdeps computed; the lists are from the cached
    // chroot's first run, refreshed when a package they name has moved on the mirror.
    let install = c.cmd(&["apt-get", "install", "-y", "-q", "/tmp/rush.deb"]).output().unwrap();
    if !install.status.success() {
        c.ok(&["apt-get", "update", "-q"]);
        c.ok(&["apt-get", "install", "-y", "-q", "/tmp/rush.deb"]);
    }
    phase("installed with apt-get");
    fs::hard_link(c.path("/usr/bin/rush-agentd"), c.path(TEARDOWN)).unwrap();
    let status = c.ok(&["dpkg-query", "-W", "-f", "${Status}", "rush"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout), "install ok installed");
    assert!(
        c.path("/etc/rush/config.toml").exists() && c.path("/usr/share/man/man8/rush-agentd.8.gz").exists()
    );
    let help = c.ok(&["rush", "completions", "bash"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("spawn"));

    c.start_daemon_like_the_unit();
    // Under the unit's bounding set: CAP_BPF (39) in it, CAP_SYS_CHROOT (18) not.
    let pid = c.daemon.as_ref().unwrap().id();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    let bnd = u64::from_str_radix(bnd, 16).unwrap();
    assert!(bnd & (1 << 39) != 0 && bnd & (1 << 18) == 0, "CapBnd {bnd:x}");
    phase("the daemon ready");
    // A deny: the connect of an agent spawned with --net deny is refused (EPERM) by the
    // cgroup program, and the same connect outside the agent succeeds.
    let srv = HttpServer::start();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{}", srv.port);
    c.ok(&["bash", "-c", &connect]);
    let refused = c
        .cmd(&["rush", "agent", "spawn", "smoke", "--net", "deny", "--", "bash", "-c", &connect])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "{}",
        describe(&refused)
    );
    // ... and audited.
    let audited = wait_until(Duration::from_secs(10), || {
        let out = c.ok(&["rush", "--json", "audit", "--agent", "smoke"]);
        let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        records.as_array().unwrap().iter().any(|r| r["event"]["kind"] == "net_deny")
    });
    assert!(audited, "no net_deny record for the refused connect; daemon log:\n{}", c.daemon_log());

    // An agent left running: a plain stop would leave it (re-adopted by the next daemon),
    // the removal must not.
    c.ok(&["rush", "agent", "spawn", "sleeper", "--detach", "--", "sleep", "600"]);
    let mut sleeper = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        sleeper = agent_pids("sleeper");
        !sleeper.is_empty()
    }));
    assert!(!agent_parents().is_empty() && Path::new("/sys/fs/bpf/rush").exists());

    phase("smoke test passed");

    // An upgrade (the same package again: prerm upgrade, then postinst configure with the old
    // version) tears nothing down: the agent keeps running, confined, pins in place.
    c.ok(&["dpkg", "-i", "/tmp/rush.deb"]);
    assert!(sleeper.iter().all(|p| pid_alive(*p)), "an upgrade killed the agent");
    assert!(!agent_parents().is_empty() && Path::new("/sys/fs/bpf/rush").exists(), "an upgrade tore down");
    assert!(
        c.daemon.as_mut().unwrap().try_wait().unwrap().is_none(),
        "an upgrade without systemd stopped the daemon"
    );
    phase("upgraded in place");
    let removed = c.ok(&["dpkg", "-r", "rush"]);
    phase("removed");
    let daemon = c.daemon.as_mut().unwrap();
    let gone = wait_until(Duration::from_secs(15), || daemon.try_wait().unwrap().is_some());
    assert!(gone, "the daemon still runs after dpkg -r: {}", describe(&removed));
    assert!(sleeper.iter().all(|p| !pid_alive(*p)), "the agent survived dpkg -r: {}", describe(&removed));
    assert_eq!(agent_parents(), Vec::<PathBuf>::new(), "agent cgroups left: {}", describe(&removed));
    assert!(!Path::new("/sys/fs/bpf/rush").exists(), "BPF pins left: {}", describe(&removed));
    assert_eq!(mounts_under(&c.root), Vec::<String>::new(), "mounts left: {}", describe(&removed));
    assert!(!c.path("/usr/bin/rush-agentd").exists());
    assert!(!c.path("/run/rush-favordynmods.lock").exists(), "dpkg -r left the favordynmods lock");
    assert!(c.path("/etc/rush/config.toml").exists(), "dpkg -r must keep the config");
    assert!(c.path("/var/lib/rush/state.db").exists(), "dpkg -r must keep the state (the audit trail)");

    c.ok(&["dpkg", "-P", "rush"]);
    for gone in ["/etc/rush", "/var/lib/rush", "/var/lib/rush-tmp", "/var/lib/rush-workspaces"] {
        assert!(!c.path(gone).exists(), "dpkg -P left {gone}");
    }
    phase("purged");
}

/// The pids in the agent's v2 cgroup.
fn agent_pids(agent: &str) -> Vec<i32> {
    let procs = cgroup2_root().join("rush").join(agent).join("cgroup.procs");
    fs::read_to_string(procs).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// `cargo xtask install --destdir` installs the files the package does, in the local places.
#[test]
fn xtask_install_stages_the_files_the_package_installs() {
    if !ready() {
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    run(cargo()
        .args(["run", "-q", "-p", "xtask", "--", "install", "--bin-dir"])
        .arg(bin_dir())
        .args(["--destdir"])
        .arg(dest.path()));
    let mut installed = BTreeSet::new();
    let out = run(Command::new("find").arg(".").args(["-type", "f"]).current_dir(dest.path()));
    for f in String::from_utf8_lossy(&out.stdout).lines() {
        let f = f.trim_start_matches("./");
        let f = f.strip_prefix("usr/local/").map(|r| format!("usr/{r}")).unwrap_or_else(|| f.to_owned());
        installed.insert(
            f.replace("etc/systemd/system/", "lib/systemd/system/")
                .replace("share/zsh/site-functions/", "share/zsh/vendor-completions/"),
        );
    }
    let packaged = deb_files(deb());
    assert!(packaged.len() > 10 && packaged.contains("usr/bin/rush-agentd"), "{packaged:?}");
    assert_eq!(installed, packaged, "cargo xtask install --destdir and the .deb differ");
    let unit = fs::read_to_string(dest.path().join("etc/systemd/system/rush-agentd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/rush-agentd\n"),
        "the unit must start the installed daemon"
    );
}

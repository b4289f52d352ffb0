//! `cargo xtask vm-test`: the kernel test tier. Boots Debian's own 6.1 and 6.12 cloud
//! kernels under QEMU (TCG) with a busybox initramfs, the daemon, the CLI and the
//! kernel-tests executables appended as a payload, and runs the host tests and the
//! guest-only tests inside, as root, with RUSH_TEST_STRICT=1.
//!
//! What is where: vm-images/README.md. Kernels and base images are cached under
//! `${RUSH_CACHE_DIR:-$HOME/.cache/rush}/vm/`; each run's files (payload, console logs,
//! kernel versions, summary) go to `<target>/vm-test/`.

mod cpio;
pub mod image;
pub mod kernel;
pub mod qemu;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;
use kernel::{SERIES, Series};

#[derive(clap::Args)]
pub struct VmArgs {
    /// Which kernels to boot: 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Per-kernel limit in seconds; a guest still running then is killed and fails.
    #[arg(long, default_value_t = 3300)]
    timeout: u64,
    /// Use KVM instead of TCG. Off by default: this machine kind's /dev/kvm is PVM-only and
    /// stock kernels hang under it (ENVIRONMENT.md).
    #[arg(long, conflicts_with = "mttcg")]
    kvm: bool,
    /// Multi-threaded TCG (one host thread per vCPU). Off by default: with it, the kernel's
    /// live patching of the LSM hook sites (each BPF LSM attach and detach) races with the
    /// other vCPU's translated code and 6.12 guests die with "Oops: int3" in
    /// bpf_lsm_file_permission now and then.
    #[arg(long)]
    mttcg: bool,
    /// apt-get update and look for newer kernel packages even when the newest one the
    /// local apt lists name is cached already.
    #[arg(long)]
    refresh: bool,
    /// Run only this suite (host, budget, ..., timetravel, bpf); all of them by default.
    #[arg(long)]
    suite: Option<String>,
    /// Passed to both test executables in the guest (a test-name filter, --exact, ...).
    #[arg(last = true)]
    test_args: Vec<String>,
}

impl VmArgs {
    /// Both kernels with the defaults: what `cargo xtask test` runs.
    pub fn all_kernels() -> VmArgs {
        VmArgs {
            kernel: "all".into(),
            memory: 1024,
            timeout: 3300,
            kvm: false,
            mttcg: false,
            refresh: false,
            suite: None,
            test_args: Vec::new(),
        }
    }
}

/// Debian packages this tier needs on the host, beyond `setup::ensure`'s.
const VM_PACKAGES: [(&str, &str); 9] = [
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("btrfs-progs", "mkfs.btrfs"),
    ("busybox-static", "/bin/busybox"),
    ("kmod", "depmod"),
    ("xz-utils", "xz"),
    ("binutils", "strip"),
    ("curl", "curl"),
    ("criu", "criu"),
    ("e2fsprogs", "mkfs.ext4"),
];

/// The guest test suites, in the order they run: (name, test threads, extra arguments).
/// Kernel-tests targets: `host`, `budget`, `landlock`, `files`, `guest`, `escape`, `lifecycle`,
/// `timetravel`, `audit`, `sessions`, `store`, `crash`, `toolchains`, `hardening`, `principals`,
/// `workspaces`; `bpf` is rush-agentd's own
/// kernel smoke tests (its lib tests under `bpf::`). `reboot` spans two boots with a state disk:
/// its phase 1 runs last in the first boot, its phase 2 alone in a second boot ([`REBOOT`]).
/// `toolchains` runs only the tests of the tools the payload carries ([`GUEST_TOOLS`]).
const SUITES: [(&str, u32, &str); 18] = [
    ("host", 2, ""),
    ("principals", 1, ""),
    ("budget", 1, ""),
    ("landlock", 1, ""),
    ("files", 1, " --nocapture"),
    ("guest", 1, ""),
    ("escape", 1, ""),
    ("hardening", 1, ""),
    ("lifecycle", 1, ""),
    ("timetravel", 1, ""),
    ("audit", 1, ""),
    ("sessions", 1, ""),
    ("store", 1, ""),
    ("crash", 1, " --nocapture"),
    ("toolchains", 1, " git_ make_runs_shell_recipes private_tmpdir"),
    // Only what needs the kernel: an agent's workspace tokens under BPF LSM.
    ("workspaces", 1, " an_agent_"),
    ("bpf", 1, " bpf::"),
    ("reboot", 1, " --ignored --exact reboot_phase1"),
];

/// The `reboot` suite's second boot: its marker name and its test, run alone.
const REBOOT: &str = "reboot";
const REBOOT_PHASE2: (&str, &str) = ("reboot-phase2", " --ignored --exact reboot_phase2");
/// The state disk: a sparse raw image, ext4 in the guest (made on the first boot).
const STATE_DISK_BYTES: u64 = 2 << 30;
/// On the kernel command line of the second boot: /payload/run runs phase 2 only.
const PHASE2_ARG: &str = "rush.phase=2";
/// A second boot runs one test; beyond this it is stuck.
const PHASE2_TIMEOUT: Duration = Duration::from_secs(600);

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs (apt-get, root) whichever of the VM tier's packages are missing.
pub fn ensure_vm_packages() -> Result<()> {
    let missing: Vec<&str> = VM_PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::step(&format!("installing Debian packages for the VM tier: {}", missing.join(" ")));
    util::require_root("installing packages")?;
    for args in
        [vec!["update", "-qq"], [&["install", "-y", "--no-install-recommends"][..], &missing].concat()]
    {
        eprintln!("    $ apt-get {}", args.join(" "));
        let status = Command::new("apt-get").args(&args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

fn select(kernel: &str) -> Result<Vec<Series>> {
    if kernel == "all" {
        return Ok(SERIES.to_vec());
    }
    let mut out = Vec::new();
    for want in kernel.split(',') {
        match SERIES.iter().find(|s| s.label == want) {
            Some(s) => out.push(*s),
            None => bail!(
                "--kernel {want}: expected all or one of {}",
                SERIES.iter().map(|s| s.label).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(out)
}

/// (suite name, test executable), in SUITES order.
struct Tests(Vec<(&'static str, PathBuf)>);

pub fn run(args: VmArgs) -> Result<()> {
    run_timed(args, &mut util::Timings::default())
}

/// [`run`], adding its phases to `times`: build, kernels, payload, and each kernel's
/// guests (which run at the same time, so their times overlap).
pub fn run_timed(args: VmArgs, times: &mut util::Timings) -> Result<()> {
    let wall = Instant::now();
    let series = select(&args.kernel)?;
    if let Some(s) = &args.suite
        && !SUITES.iter().any(|(n, _, _)| n == s)
    {
        let names: Vec<&str> = SUITES.iter().map(|(n, _, _)| *n).collect();
        bail!("no suite {s:?}; the suites are {}", names.join(", "));
    }
    crate::setup::ensure()?;
    ensure_vm_packages()?;
    let out_dir = util::target_dir()?.join("vm-test");
    std::fs::create_dir_all(&out_dir)?;

    util::step("building the daemon, the CLI and the kernel tests (debug)");
    util::cargo(
        &["build", "-p", "rush-agentd", "-p", "rush-userspace", "-p", "kernel-tests", "--bins"],
        &[],
    )?;
    let tests = test_executables()?;
    let build_time = wall.elapsed();
    times.record("vm: build", build_time, "ok");

    util::step(&format!("kernels (cache: {})", kernel::cache_root().display()));
    let t = Instant::now();
    let mut updated = false;
    let mut kernels = Vec::new();
    for s in &series {
        let k = kernel::prepare(*s, args.refresh, &mut updated)?;
        eprintln!(
            "    {:<5} {} {} (uname -r {}){}",
            s.label,
            k.package,
            k.version,
            k.release,
            if k.fetched { ", downloaded now" } else { ", cached" }
        );
        kernels.push(k);
    }
    let mut versions = String::new();
    for k in &kernels {
        writeln!(versions, "{}\t{}\t{}\t{}", k.series.label, k.package, k.version, k.release)?;
    }
    std::fs::write(out_dir.join("kernels.txt"), &versions)?;
    let fetch_time = t.elapsed();
    times.record("vm: kernels (fetch or cache)", fetch_time, "ok");

    util::step("payload (binaries under test, their libraries, the run script)");
    let t = Instant::now();
    let payload = out_dir.join("payload.cpio");
    let size =
        build_payload(&payload, &out_dir.join("stripped"), &tests, args.suite.as_deref(), &args.test_args)?;
    eprintln!("    {} ({:.1} MiB)", payload.display(), size as f64 / 1048576.0);
    let payload_time = t.elapsed();
    times.record("vm: payload", payload_time, "ok");

    let accel = match (args.kvm, args.mttcg) {
        (true, _) => "kvm",
        (false, true) => "tcg,thread=multi",
        (false, false) => "tcg,thread=single",
    };
    // One guest per kernel, all at once: each single-threaded TCG guest keeps one host core
    // busy, so on a 2-core machine the two kernels take the time of the slower one.
    for k in &kernels {
        util::step(&format!("kernel {}: {} {}", k.series.label, k.package, k.version));
    }
    let timeout = Duration::from_secs(args.timeout);
    let reboot = args.suite.as_deref().is_none_or(|s| s == REBOOT);
    let results = std::thread::scope(|scope| {
        let running: Vec<_> = kernels
            .iter()
            .map(|k| {
                let (payload, out_dir) = (&payload, &out_dir);
                scope.spawn(move || boot_twice(k, payload, out_dir, args.memory, accel, timeout, reboot))
            })
            .collect();
        running
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a guest's runner thread panicked"))))
            .collect::<Result<Vec<_>>>()
    })?;

    let mut summary = String::new();
    writeln!(summary, "VM kernel tests (-accel {accel}, {} MiB)", args.memory)?;
    writeln!(
        summary,
        "  build {}, kernels {}, payload {}",
        secs(build_time),
        secs(fetch_time),
        secs(payload_time)
    )?;
    let mut failed = Vec::new();
    for (k, (o, second)) in kernels.iter().zip(&results) {
        // The reboot suite passes only when both phases ran their one test and passed: a
        // missing second boot or an empty filter is a failure, never a skip.
        let phase1 = suite_passed_one(&o.lines, REBOOT);
        let phase2 =
            second.as_ref().is_some_and(|s| s.exit == Some(0) && suite_passed_one(&s.lines, REBOOT_PHASE2.0));
        let verdict = match (o.exit, o.timed_out) {
            (Some(0), _) if reboot && !phase1 => "FAIL (reboot phase 1)".to_owned(),
            (Some(0), _) if reboot && !phase2 => "FAIL (reboot phase 2 missing or failed)".to_owned(),
            (Some(0), _) => "PASS".to_owned(),
            (Some(rc), _) => format!("FAIL (payload exit {rc})"),
            (None, true) => "FAIL (timed out, no @@EXIT marker)".to_owned(),
            (None, false) => {
                format!("FAIL (no @@EXIT marker: the guest died; QEMU exit {:?})", o.qemu_status)
            }
        };
        if !verdict.starts_with("PASS") {
            failed.push(k.series.label);
        }
        let guests = o.total_time + second.as_ref().map_or(Duration::ZERO, |s| s.total_time);
        times.record(
            &format!("vm: {} guests (in parallel with the other kernel)", k.series.label),
            guests,
            if verdict.starts_with("PASS") { "ok" } else { "FAILED" },
        );
        writeln!(
            summary,
            "  {:<5} {verdict}  {} {} (uname -r {}); boot to /init {}, VM total {}",
            k.series.label,
            k.package,
            k.version,
            k.release,
            o.boot_time.map(secs).unwrap_or_else(|| "?".into()),
            secs(o.total_time)
        )?;
        for line in suite_report(&o.lines, args.suite.as_deref()) {
            writeln!(summary, "        {line}")?;
        }
        if reboot {
            match second {
                Some(s) => {
                    writeln!(
                        summary,
                        "        reboot: second boot (same state disk) {}, boot to /init {}, VM total {}",
                        match s.exit {
                            Some(0) => "ok".to_owned(),
                            Some(rc) => format!("exit {rc}"),
                            None => "died or timed out".to_owned(),
                        },
                        s.boot_time.map(secs).unwrap_or_else(|| "?".into()),
                        secs(s.total_time)
                    )?;
                    for line in report_of(&s.lines, REBOOT_PHASE2.0) {
                        writeln!(summary, "        {line}")?;
                    }
                    if s.exit.is_none() {
                        writeln!(summary, "        last console lines of the second boot:")?;
                        let tail: Vec<&String> =
                            s.lines.iter().rev().filter(|l| !l.trim().is_empty()).take(8).collect();
                        for l in tail.iter().rev() {
                            writeln!(summary, "          {l}")?;
                        }
                    }
                }
                None => writeln!(summary, "        reboot: FAIL: no second boot (phase 1 did not pass)")?,
            }
        }
        if o.exit.is_none() {
            // Why it died: a panic, an oops, a hang; the console's last lines say.
            writeln!(summary, "        last console lines:")?;
            let tail: Vec<&String> = o.lines.iter().rev().filter(|l| !l.trim().is_empty()).take(8).collect();
            for l in tail.iter().rev() {
                writeln!(summary, "          {l}")?;
            }
        }
    }
    writeln!(summary, "  wall time {}", secs(wall.elapsed()))?;
    std::fs::write(out_dir.join("summary.txt"), &summary)?;
    util::step("summary");
    eprint!("{summary}");
    eprintln!("  console logs, kernels.txt, summary.txt: {}", out_dir.display());
    if !failed.is_empty() {
        bail!("VM kernel tests failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// The suites' boot of `k`; with `reboot`, with a fresh state disk attached, and, when the
/// first boot's phase 1 passed, a second boot on the same disk for phase 2.
fn boot_twice(
    k: &kernel::Kernel,
    payload: &Path,
    out_dir: &Path,
    memory_mb: u32,
    accel: &str,
    timeout: Duration,
    reboot: bool,
) -> Result<(qemu::Outcome, Option<qemu::Outcome>)> {
    let disk = out_dir.join(format!("state-{}.img", k.series.label));
    if reboot {
        // Fresh and sparse: the first boot formats it.
        let _ = std::fs::remove_file(&disk);
        let f = std::fs::File::create(&disk).with_context(|| format!("creating {}", disk.display()))?;
        f.set_len(STATE_DISK_BYTES)?;
    }
    let first =
        boot_guest(k, payload, out_dir, memory_mb, accel, timeout, reboot.then_some(disk.as_path()), 1)?;
    let second = if reboot && suite_passed_one(&first.lines, REBOOT) {
        util::step(&format!(
            "kernel {}: rebooting onto the same state disk (reboot phase 2)",
            k.series.label
        ));
        Some(boot_guest(k, payload, out_dir, memory_mb, accel, PHASE2_TIMEOUT, Some(&disk), 2)?)
    } else {
        None
    };
    if reboot {
        let _ = std::fs::remove_file(&disk);
    }
    Ok((first, second))
}

/// Boots `k` with its (cached) base initramfs and `payload` appended; /init runs
/// /payload/run. The console goes to stdout (prefixed) and to `out_dir`.
pub fn boot_with_payload(
    k: &kernel::Kernel,
    payload: &Path,
    out_dir: &Path,
    memory_mb: u32,
    accel: &str,
    timeout: Duration,
) -> Result<qemu::Outcome> {
    boot_guest(k, payload, out_dir, memory_mb, accel, timeout, None, 1)
}

/// [`boot_with_payload`], with `disk` attached, as boot number `boot` (2: the reboot
/// suite's second boot, told so on the kernel command line).
#[allow(clippy::too_many_arguments)]
fn boot_guest(
    k: &kernel::Kernel,
    payload: &Path,
    out_dir: &Path,
    memory_mb: u32,
    accel: &str,
    timeout: Duration,
    disk: Option<&Path>,
    boot: u8,
) -> Result<qemu::Outcome> {
    let t = Instant::now();
    let (base, built) = image::base_initramfs(k)?;
    eprintln!(
        "    base initramfs {} ({}, {:.1}s)",
        base.display(),
        if built { "built now" } else { "cached" },
        t.elapsed().as_secs_f64()
    );
    let initrd = out_dir.join(format!("initrd-{}.cpio", k.series.label));
    concat(&initrd, &[&base, payload])?;
    let mut append = String::from("console=ttyS0 quiet panic=-1");
    match k.config_lsm() {
        Some(l) if l.split(',').any(|m| m == "bpf") => {}
        Some(l) => write!(append, " lsm={l},bpf")?,
        None => append.push_str(" lsm=landlock,lockdown,yama,apparmor,bpf"),
    }
    let log = if boot == 2 {
        write!(append, " {PHASE2_ARG}")?;
        out_dir.join(format!("console-{}-boot2.log", k.series.label))
    } else {
        out_dir.join(format!("console-{}.log", k.series.label))
    };
    qemu::boot(&qemu::Boot {
        label: k.series.label,
        vmlinuz: &k.vmlinuz,
        initrd: &initrd,
        append,
        memory_mb,
        accel,
        timeout,
        log,
        disk,
    })
}

/// The newest kernel of one series, fetched and cached as `vm-test` does.
pub fn kernel(label: &str) -> Result<kernel::Kernel> {
    let series = select(label)?;
    let mut updated = false;
    kernel::prepare(series[0], false, &mut updated)
}

/// `which`, for the demo's payload.
pub fn host_tool(prog: &str) -> Option<PathBuf> {
    which(prog)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Per suite: its status, the libtest result line, failed tests, loud skips.
fn suite_report(lines: &[String], only: Option<&str>) -> Vec<String> {
    SUITES
        .into_iter()
        .filter(|(s, _, _)| only.is_none_or(|o| o == *s))
        .flat_map(|(suite, _, _)| report_of(lines, suite))
        .collect()
}

/// The console lines of one suite's run (from its start marker) and its exit code, if it
/// finished.
fn suite_body<'a>(lines: &'a [String], suite: &str) -> Option<(&'a [String], Option<i32>)> {
    let start = format!("@@SUITE-START={suite}@@");
    let from = lines.iter().position(|l| l.contains(&start))?;
    let end_tag = format!("@@SUITE={suite} rc=");
    let to = lines[from..].iter().position(|l| l.contains(&end_tag)).map(|i| from + i);
    let rc = to.and_then(|i| {
        let l = &lines[i];
        l[l.find(&end_tag)? + end_tag.len()..].trim_end_matches('@').parse::<i32>().ok()
    });
    Some((&lines[from..to.unwrap_or(lines.len())], rc))
}

/// The suite exited 0 and its libtest summary says exactly one test passed (the reboot
/// phases: a filter that matched nothing must not pass).
fn suite_passed_one(lines: &[String], suite: &str) -> bool {
    suite_body(lines, suite).is_some_and(|(body, rc)| {
        rc == Some(0) && body.iter().any(|l| l.starts_with("test result: ok. 1 passed;"))
    })
}

/// [`suite_report`] of one suite.
fn report_of(lines: &[String], suite: &str) -> Vec<String> {
    let Some((body, rc)) = suite_body(lines, suite) else {
        return vec![format!("{suite}: did not start")];
    };
    let result = body
        .iter()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .map(String::as_str)
        .unwrap_or("no test result line");
    let mut out = vec![format!(
        "{suite}: {} — {result}",
        match rc {
            Some(0) => "ok".to_owned(),
            Some(rc) => format!("exit {rc}"),
            None => "did not finish".to_owned(),
        }
    )];
    for l in body {
        if l.starts_with("test ") && l.ends_with(" FAILED") {
            out.push(format!("  {l}"));
        }
        if l.contains("SKIP *****") || l.starts_with("rush-vm: suite ") {
            out.push(format!("  {}", l.trim()));
        }
    }
    out
}

/// The test executables of the suites, from cargo's JSON messages.
fn test_executables() -> Result<Tests> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "test",
        "-p",
        "kernel-tests",
        "-p",
        "rush-agentd",
        "--lib",
        "--tests",
        "--no-run",
        "--message-format=json",
    ];
    eprintln!("    $ cargo {}", args.join(" "));
    let out = Command::new(cargo)
        .args(args)
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let messages: Vec<serde_json::Value> =
        stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if !out.status.success() {
        // With --message-format=json, rustc's diagnostics go to stdout as JSON: show them,
        // or a failed build says only "could not compile".
        for m in &messages {
            if m["reason"] == "compiler-message" && m["message"]["level"] == "error" {
                eprint!("{}", m["message"]["rendered"].as_str().unwrap_or_default());
            }
        }
        bail!("`cargo {}` failed ({})", args.join(" "), out.status);
    }
    let mut found: Vec<(&'static str, PathBuf)> = Vec::new();
    for (name, kind, exe) in messages.iter().filter_map(test_artifact) {
        let suite = match (name, kind) {
            ("rush_agentd", "lib") => "bpf",
            (n, "test") => match SUITES.iter().find(|(s, _, _)| *s == n) {
                Some((s, _, _)) => s,
                None => continue,
            },
            _ => continue,
        };
        found.push((suite, PathBuf::from(exe)));
    }
    let mut tests = Vec::new();
    for (suite, _, _) in SUITES {
        let exe = found
            .iter()
            .find(|(s, _)| *s == suite)
            .map(|(_, e)| e.clone())
            .with_context(|| format!("cargo built no test executable for the `{suite}` suite"))?;
        tests.push((suite, exe));
    }
    Ok(Tests(tests))
}

/// (target name, its single kind, the test executable) of a cargo `compiler-artifact` message.
fn test_artifact(m: &serde_json::Value) -> Option<(&str, &str, &str)> {
    if m["reason"] != "compiler-artifact" {
        return None;
    }
    let kinds = m["target"]["kind"].as_array()?;
    let [kind] = kinds.as_slice() else { return None };
    Some((m["target"]["name"].as_str()?, kind.as_str()?, m["executable"].as_str()?))
}

/// Tool chains the `toolchains` suite runs confined in the guests, at their Debian paths:
/// git (init, add, commit, log are built in: no git-core helpers needed) and make, ~5 MB
/// of the guest's RAM with their libraries. Not python3 (its standard library), node and
/// npm (a 100 MB binary), cc (cc1, as, ld, headers) or cargo: hundreds of MB in a 1 GiB
/// guest whose initramfs lives in RAM; those run on the host tier only.
const GUEST_TOOLS: [&str; 2] = ["/usr/bin/git", "/usr/bin/make"];

/// The payload: /payload/bin (rush-agentd, rush, the rush-test-* tools,
/// sh → dash), /payload/tests (one per suite), curl, criu, dash, mkfs.btrfs and btrfs at their host
/// paths, [`GUEST_TOOLS`], every library at its host path, and /payload/run, which /init starts.
fn build_payload(
    path: &Path,
    scratch: &Path,
    tests: &Tests,
    only: Option<&str>,
    test_args: &[String],
) -> Result<u64> {
    let bins = util::target_dir()?.join("debug");
    let mut p = image::Payload::create(path, scratch)?;
    const BINS: [&str; 7] = [
        "rush-agentd",
        "rush",
        "rush-test-net",
        "rush-test-fs",
        "rush-test-escape",
        "rush-test-budget",
        "rush-test-api",
    ];
    for b in BINS {
        p.elf(&bins.join(b), &format!("payload/bin/{b}"), true)?;
    }
    for (suite, exe) in &tests.0 {
        p.elf(exe, &format!("payload/tests/{suite}"), true)?;
    }
    // mkfs.btrfs: the escape suite's btrfs rows make a filesystem on a loop file; btrfs:
    // the snapshot backend's send/receive diff and resize.
    // mkfs.ext4: the reboot suite's state disk.
    for tool in ["curl", "criu", "dash", "mkfs.btrfs", "btrfs", "mkfs.ext4"] {
        let host = which(tool).with_context(|| format!("{tool} is not installed"))?;
        let guest = host.to_string_lossy().into_owned();
        p.elf(&host, &guest, false)?;
    }
    for tool in GUEST_TOOLS {
        let host = Path::new(tool);
        if !host.is_file() {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
        p.elf(host, tool, false)?;
    }
    // `sh` is dash, as on the Debian hosts the tests are written on (busybox ash differs:
    // it execs the last command of `sh -c`, so process trees have fewer members).
    // /bin/sh stays busybox for /init.
    let dash = which("dash").context("dash")?;
    p.symlink("payload/bin/sh", &dash.to_string_lossy())?;
    p.file("payload/run", 0o755, run_script(only, test_args).as_bytes())?;
    p.finish()
}

/// The run script's functions: one suite between markers, with its time; the state disk.
const RUN_PRELUDE: &str = r#"#!/bin/sh
# Generated by `cargo xtask vm-test` (xtask/src/vm.rs): the tests, as root, strict.
export RUSH_TEST_STRICT=1 RUSH_BIN_DIR=/payload/bin RUST_BACKTRACE=1
rc=0
# run_suite NAME CMD...: CMD between the suite's markers, with how long it took.
run_suite() {
    name=$1; shift
    echo "@@SUITE-START=$name@@"
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@"
    r=$?
    echo "rush-vm: suite $name took $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')s"
    echo "@@SUITE=$name rc=$r@@"
    [ $r = 0 ] || rc=1
}
# state_disk [format]: the reboot suite's disk (virtio-blk) at /mnt/state, made ext4 first
# on the first boot.
state_disk() {
    [ -b /dev/vda ] || { echo "rush-vm: no state disk (/dev/vda)"; return 1; }
    if [ "$1" = format ]; then mkfs.ext4 -q -F /dev/vda || return 1; fi
    mkdir -p /mnt/state && mount -t ext4 /dev/vda /mnt/state
}
"#;

fn run_script(only: Option<&str>, test_args: &[String]) -> String {
    let extra: String = test_args.iter().map(|a| format!(" '{}'", a.replace('\'', "'\\''"))).collect();
    let mut s = String::from(RUN_PRELUDE);
    let (phase2, phase2_args) = REBOOT_PHASE2;
    if only.is_none_or(|o| o == REBOOT) {
        // The second boot runs phase 2 alone, on what the first left on the disk.
        write!(
            s,
            "if grep -qw {PHASE2_ARG} /proc/cmdline; then\n\
             \x20   if state_disk; then\n\
             \x20       run_suite {phase2} env RUSH_REBOOT_DIR=/mnt/state /payload/tests/{REBOOT} --test-threads 1{phase2_args}\n\
             \x20   else\n\
             \x20       rc=1\n\
             \x20   fi\n\
             \x20   exit $rc\n\
             fi\n"
        )
        .unwrap();
    }
    for (suite, threads, args) in SUITES.into_iter().filter(|(s, _, _)| only.is_none_or(|o| o == *s)) {
        if suite == REBOOT {
            // Last: it leaves its daemon and agents running for the poweroff. Its filter is
            // its own (the phases run by exact name).
            write!(
                s,
                "if state_disk format; then\n\
                 \x20   run_suite {suite} env RUSH_REBOOT_DIR=/mnt/state /payload/tests/{suite} --test-threads {threads}{args}\n\
                 else\n\
                 \x20   rc=1\n\
                 fi\n"
            )
            .unwrap();
        } else {
            writeln!(s, "run_suite {suite} /payload/tests/{suite} --test-threads {threads}{args}{extra}")
                .unwrap();
        }
    }
    s.push_str("exit $rc\n");
    s
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        // /usr/bin/x rather than /bin/x (merged /usr): one canonical guest directory.
        .map(|p| match (p.parent().and_then(|d| std::fs::canonicalize(d).ok()), p.file_name()) {
            (Some(d), Some(f)) => d.join(f),
            _ => p,
        })
}

fn concat(out: &Path, parts: &[&Path]) -> Result<()> {
    let mut f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for p in parts {
        let mut src = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut src, &mut f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reboot_suite_runs_phase1_last_and_phase2_alone_on_the_second_boot() {
        let all = super::run_script(None, &[]);
        let phase2 = all.find("if grep -qw rush.phase=2 /proc/cmdline").unwrap();
        let phase1 = all.find("run_suite reboot env RUSH_REBOOT_DIR=/mnt/state").unwrap();
        let host = all.find("run_suite host ").unwrap();
        assert!(phase2 < host && host < phase1, "{all}");
        assert!(all[phase1..].contains("--ignored --exact reboot_phase1\n"), "{all}");
        assert!(all[..host].contains("--ignored --exact reboot_phase2\n"), "{all}");
        let one = super::run_script(Some("host"), &["x".into()]);
        assert!(!one.contains("state_disk format") && !one.contains("rush.phase=2"), "{one}");
        assert!(one.contains("run_suite host /payload/tests/host --test-threads 2 'x'"), "{one}");
    }

    #[test]
    fn a_reboot_phase_passes_with_exactly_one_test_passed() {
        let run = |result: &str, rc: i32| -> Vec<String> {
            ["@@SUITE-START=reboot@@", result, &format!("@@SUITE=reboot rc={rc}@@")]
                .map(String::from)
                .to_vec()
        };
        let ok = "test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out";
        let none = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out";
        assert!(super::suite_passed_one(&run(ok, 0), "reboot"));
        assert!(!super::suite_passed_one(&run(none, 0), "reboot"), "a filter that matched nothing");
        assert!(!super::suite_passed_one(&run(ok, 1), "reboot"));
        assert!(!super::suite_passed_one(&[], "reboot"), "missing");
    }

    #[test]
    fn test_artifact_reads_cargo_messages() {
        let l = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"host","src_path":"/a"},"executable":"/t/debug/deps/host-1a\"b"}"#;
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(super::test_artifact(&m), Some(("host", "test", "/t/debug/deps/host-1a\"b")));
        let lib = serde_json::json!({"reason":"compiler-artifact","target":{"kind":["lib"],"name":"x"},"executable":null});
        assert_eq!(super::test_artifact(&lib), None, "no executable");
        let msg = serde_json::json!({"reason":"compiler-message"});
        assert_eq!(super::test_artifact(&msg), None);
    }
}

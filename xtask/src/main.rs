//! `cargo xtask COMMAND`: runs things (setup, test tiers, demo, benchmarks, code
//! generation); builds nothing cargo itself should build (the BPF objects come from
//! rush-ebpf's build.rs).

mod codegen;
mod deb;
mod demo;
mod guest_kit;
mod install;
mod layers;
mod setup;
mod spec;
mod util;
mod vm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Rush development tasks", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the Debian packages the build, tests and demo need (apt-get; root).
    Setup,
    /// Run the test tiers: unit tests (no root), the host root integration tests, then
    /// the VM kernel tests in QEMU guests on Debian's 6.1 and 6.12 kernels.
    ///
    /// The host and VM tiers run with RUSH_TEST_STRICT=1: a test whose kernel feature is
    /// missing fails instead of skipping, so a tier that exists to prove a kernel guarantee
    /// cannot pass by skipping it.
    Test {
        #[arg(long, value_enum, default_value_t = Tier::All)]
        tier: Tier,
    },
    /// Build and run the demo: a network denial, file tokens enforced by BPF LSM (in a QEMU
    /// guest when this kernel refuses LSM programs), a revoke reaching an open file, and a
    /// TTL that lapses with the daemon dead.
    Demo(demo::DemoArgs),
    /// Run the benchmarks (root) and print ratios measured side by side in one run.
    Bench {
        /// Only Rush against bubblewrap, firejail, podman and systemd-run (`rush-bench
        /// peers`: installs them with apt-get; ~15 min). Arguments after `--` go to it, e.g.
        /// `--runs 3 --files 2000 --spawns 10` for a quick run.
        #[arg(long)]
        peers: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build release binaries and install them as a service: /usr/local/bin/{rush-agentd,
    /// rush}, /etc/systemd/system/rush-agentd.service, /etc/rush/config.toml with every
    /// default (only if there is none), man pages and shell completions under
    /// /usr/local/share. Then `systemctl enable --now rush-agentd`.
    Install(install::InstallArgs),
    /// Build a Debian package (target/debian/rush_VERSION_ARCH.deb) of the same files
    /// `install` installs, in Debian's places (/usr/bin, /lib/systemd/system, /etc/rush, man
    /// pages, completions), with maintainer scripts that enable and start the daemon where
    /// systemd runs and tear agents down on removal. Install it with `apt install ./FILE`.
    Deb(deb::DebArgs),
    /// Regenerate rush-ebpf/src/bpf/vmlinux.h from this kernel's BTF with bpftool.
    Codegen,
    /// Print rush-agentd's import graph by layer and check it: no room uses a higher
    /// layer, no import loops (docs/DESIGN.md, "The daemon's layers").
    Layers {
        /// Only check; print nothing but problems.
        #[arg(long)]
        check: bool,
        /// Another checkout's rush-agentd/src (e.g. an older commit's, to compare).
        #[arg(long, value_name = "DIR")]
        src: Option<std::path::PathBuf>,
    },
    /// Run the kernel test tier: the host and guest tests inside QEMU guests booting
    /// Debian's 6.1 and 6.12 cloud kernels (BPF LSM, pure cgroup v2, CRIU).
    VmTest(vm::VmArgs),
    /// Install the guest kit `rush execute` boots vm-only commands in (a Debian kernel, the
    /// test tier's busybox initramfs, bash): in --dir, $RUSH_GUEST_DIR or /var/lib/rush/guest.
    GuestKit(guest_kit::GuestKitArgs),
    /// Run the Oils project's shell spec tests (../shared/external/oils-spec) on rush, bash
    /// and dash and print a table per file; --check fails when rush fails more cases of a
    /// file than testdata/oils-spec-allowance.toml allows (docs/SHELL-COMPAT.md).
    Spec(spec::SpecArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tier {
    Unit,
    Host,
    Vm,
    All,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { tier } => test(tier),
        Command::Demo(args) => demo::run(args),
        Command::Bench { peers, args } => bench(peers, &args),
        Command::Install(args) => install::run(args),
        Command::Deb(args) => deb::run(args),
        Command::Codegen => codegen::run(),
        Command::VmTest(args) => vm::run(args),
        Command::GuestKit(args) => guest_kit::run(args),
        Command::Layers { check, src } => layers::run(check, src),
        Command::Spec(args) => spec::run(args),
    }
}

/// The host tier's test suites (kernel-tests/tests/NAME.rs), run one cargo invocation each
/// so the summary says what each costs; the others run only in the guests.
const HOST_SUITES: [&str; 27] = [
    "host",
    "coordination",
    "approvals",
    "etcd",
    "profiles",
    "terminal",
    "dns",
    "meter",
    "budget",
    "api",
    "landlock",
    "timetravel",
    "audit",
    "store",
    "sessions",
    "restart",
    "scale",
    "hardening",
    "toolchains",
    "events",
    "principals",
    "hooks",
    "gating",
    "shell",
    "top",
    "workspaces",
    "package",
];

fn test(tier: Tier) -> Result<()> {
    setup::ensure()?;
    let mut times = util::Timings::new();
    let result = run_tiers(tier, &mut times);
    util::step("where the time went");
    eprint!("{}", times.table());
    result
}

fn run_tiers(tier: Tier, times: &mut util::Timings) -> Result<()> {
    if matches!(tier, Tier::Unit | Tier::All) {
        util::step("gates: formatting, clippy (warnings denied), the daemon's layers, before any test");
        times.step("gate: cargo fmt --all --check", || {
            util::cargo(&["fmt", "--all", "--check"], &[])
                .context("the code is not formatted: run `cargo fmt --all` (the tests did not run)")
        })?;
        times.step("gate: cargo clippy -D warnings", || {
            util::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[]).context(
                "clippy found something (warnings are denied): fix it, or allow it where it is with a reason (the tests did not run)",
            )
        })?;
        times.step("gate: cargo xtask layers", || {
            layers::run(true, None).context("rush-agentd's layers are broken (the tests did not run)")
        })?;
        util::step("unit tests (cargo test: no root, no kernel features)");
        let unit = ["test", "--workspace", "--exclude", "kernel-tests", "--exclude", "rush-benches"];
        times.step("unit: build", || util::cargo(&[&unit[..], &["--no-run"]].concat(), &[]))?;
        times.step("unit: run", || util::cargo(&unit, &[]))?;
    }
    if matches!(tier, Tier::Host | Tier::All) {
        util::step("host integration tests (root, real daemon, cgroups and BPF programs)");
        util::require_root("the host integration tier")?;
        let bin_dir = util::target_dir()?.join("debug");
        let envs = [("RUSH_TEST_STRICT", "1"), ("RUSH_BIN_DIR", bin_dir.to_str().unwrap())];
        times.step("host: build", || {
            util::cargo(
                &["build", "-p", "rush-agentd", "-p", "rush-userspace", "-p", "kernel-tests", "--bins"],
                &[],
            )?;
            // The gating suite boots one throwaway guest (`rush execute`'s vm-only path)
            // from a kit of the cached 6.12 kernel: fetched here on a fresh machine.
            vm::ensure_vm_packages()?;
            vm::kernel("6.12")?;
            let mut args = vec!["test", "-p", "kernel-tests", "--no-run"];
            for suite in HOST_SUITES {
                args.extend(["--test", suite]);
            }
            util::cargo(&args, &envs)
        })?;
        for suite in HOST_SUITES {
            times.step(&format!("host: {suite}"), || {
                util::cargo(
                    &["test", "-p", "kernel-tests", "--test", suite, "--", "--test-threads", "4"],
                    &envs,
                )
            })?;
        }
        times.step("host: oils spec (rush vs bash, dash)", || spec::check_in_tier(&bin_dir.join("rush")))?;
    }
    if matches!(tier, Tier::Vm | Tier::All) {
        util::step("VM kernel tests (QEMU guests, Debian 6.1 and 6.12: BPF LSM, pure cgroup v2, CRIU)");
        util::require_root("the VM tier")?;
        vm::run_timed(vm::VmArgs::all_kernels(), times)?;
    }
    Ok(())
}

fn bench(peers: bool, args: &[String]) -> Result<()> {
    setup::ensure()?;
    util::require_root("the benchmarks")?;
    util::cargo(
        &["build", "--release", "-p", "rush-agentd", "-p", "rush-userspace", "-p", "kernel-tests", "--bins"],
        &[],
    )?;
    let bin_dir = util::target_dir()?.join("release");
    let mut run = vec!["run", "--release", "-p", "rush-benches", "--bin", "rush-bench", "--"];
    if peers {
        run.push("peers");
    }
    run.extend(args.iter().map(String::as_str));
    util::cargo(&run, &[("RUSH_BIN_DIR", bin_dir.to_str().unwrap())])
}

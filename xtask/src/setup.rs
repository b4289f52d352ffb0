//! The Debian packages Rush needs, installed on demand so that a fresh machine needs
//! nothing but this repository and a Rust toolchain.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util;

/// clang compiles the BPF programs (any of these versions); the rest is for libbpf-sys,
/// the tests and the demo (btrfs-progs: the snapshot store; git: its fallback backend and,
/// with make, a tool chain the toolchains tests run confined, here and in the guests;
/// dnsmasq: the real DNS server whose answers the host-name allow-list tests change).
const CLANGS: [&str; 4] = ["clang", "clang-19", "clang-18", "clang-16"];
const PACKAGES: [&str; 18] = [
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
    "make",
    "curl",
    "bpftool",
    "iproute2",
    "btrfs-progs",
    "git",
    "dnsmasq-base",
    // The terminal suite: tmux is the terminal, python3-minimal's curses the full-screen agent.
    "tmux",
    "python3",
    "ncurses-base",
    // rush-agentd's etcd client (etcd-client, tonic/prost) generates its gRPC code with
    // protoc at build time (its well-known types, google/protobuf/*.proto, are in
    // libprotobuf-dev); the etcd suite runs a real 3-member cluster of Debian's etcd.
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    // The package suite: `cargo xtask deb` (dpkg-shlibdeps) and the clean Debian it installs into.
    "dpkg-dev",
    "debootstrap",
];
/// The tool chains kernel-tests/tests/toolchains.rs runs confined (with make and git
/// above): `python3 -m venv` (Debian splits ensurepip out into python3-venv), cc with the C
/// library's headers. Cargo is the toolchain building this repository.
const TOOLCHAIN_PACKAGES: [&str; 3] = ["python3-venv", "gcc", "libc6-dev"];
/// npm, by command: a node from elsewhere (NodeSource's nodejs) brings its own npm and
/// conflicts with Debian's npm package, which is installed only when there is no npm.
const NPM: (&str, &str) = ("npm", "npm");
/// busybox, by command: the demo's local HTTP server (`busybox httpd`) and the client that
/// names the errno of a refused connect (`busybox wget`), and the VM images' /init.
/// Debian's `busybox` and `busybox-static` conflict; either has both applets, so the
/// static one is installed only when there is no busybox at all.
const BUSYBOX: (&str, &str) = ("busybox", "busybox-static");

/// The official model API clients the meter tests run confined (kernel-tests/tests/meter.rs),
/// and the SMTP server the approval e-mail tests deliver to (kernel-tests/fixtures/smtp_sink.py),
/// from PyPI, pinned; installed into a venv under the cache dir.
pub const SDK_REQUIREMENTS: [&str; 3] = ["anthropic==2.17.0", "openai==3.63.0", "aiosmtpd==1.4.6"];

/// `$VAR`, else `${RUSH_CACHE_DIR:-~/.cache/rush}/NAME`.
fn cached(var: &str, name: &str) -> std::path::PathBuf {
    if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return d.into();
    }
    crate::vm::kernel::cache_root().parent().expect("the cache root has a parent").join(name)
}

/// `$RUSH_SDK_VENV`, else `${RUSH_CACHE_DIR:-~/.cache/rush}/sdk-venv`.
pub fn sdk_venv_dir() -> std::path::PathBuf {
    cached("RUSH_SDK_VENV", "sdk-venv")
}

/// Creates the SDK venv, or brings it to the pinned versions; quiet when it is there.
pub fn ensure_sdk_venv() -> Result<()> {
    let dir = sdk_venv_dir();
    let stamp = dir.join("rush-pinned.txt");
    let wanted = SDK_REQUIREMENTS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && dir.join("bin/python").exists() {
        return Ok(());
    }
    util::step(&format!(
        "installing the model API SDKs ({}) into {}",
        SDK_REQUIREMENTS.join(" "),
        dir.display()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = |c: &mut Command, what: &str| -> Result<()> {
        let status = c.status()?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    };
    ok(Command::new("python3").args(["-m", "venv"]).arg(&dir), "python3 -m venv")?;
    ok(
        Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(SDK_REQUIREMENTS),
        "pip install of the SDKs",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

/// Agent tools the profile tests run confined (kernel-tests/tests/profiles.rs), from npm,
/// pinned; installed under the cache dir (`npm install --prefix`), never globally.
pub const AGENT_TOOLS: [&str; 2] = ["@anthropic-ai/claude-code@2.1.332", "@openai/codex@0.171.0"];

/// `$RUSH_AGENT_TOOLS`, else `${RUSH_CACHE_DIR:-~/.cache/rush}/agent-tools`.
pub fn agent_tools_dir() -> std::path::PathBuf {
    cached("RUSH_AGENT_TOOLS", "agent-tools")
}

/// Installs the pinned agent tools; quiet when they are there.
pub fn ensure_agent_tools() -> Result<()> {
    let dir = agent_tools_dir();
    let stamp = dir.join("rush-pinned.txt");
    let wanted = AGENT_TOOLS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    util::step(&format!("installing agent tools ({}) into {}", AGENT_TOOLS.join(" "), dir.display()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
        .arg(&dir)
        .args(AGENT_TOOLS)
        .status()?;
    if !status.success() {
        bail!("npm install of the agent tools failed ({status})");
    }
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

fn have_clang() -> bool {
    CLANGS.iter().any(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Installs what is missing; prints what it does. Quiet when all is there.
pub fn ensure() -> Result<()> {
    let mut missing: Vec<&str> =
        PACKAGES.iter().chain(&TOOLCHAIN_PACKAGES).copied().filter(|p| !installed(p)).collect();
    for (command, package) in [NPM, BUSYBOX] {
        if !on_path(command) {
            missing.push(package);
        }
    }
    if !have_clang() {
        missing.push("clang-19");
    }
    if missing.is_empty() {
        ensure_sdk_venv()?;
        return ensure_agent_tools();
    }
    util::step(&format!("installing Debian packages: {}", missing.join(" ")));
    if !util::is_root() {
        bail!(
            "missing packages {}: install them with `sudo apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    if apt(&args).is_err() && missing.contains(&"clang-19") {
        // Older Debian/Ubuntu: take the distribution's default clang.
        let args: Vec<&str> = args.iter().map(|a| if *a == "clang-19" { "clang" } else { a }).collect();
        apt(&args)?;
    }
    ensure_sdk_venv()?;
    ensure_agent_tools()
}

fn apt(args: &[&str]) -> Result<()> {
    eprintln!("    $ apt-get {}", args.join(" "));
    let status = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn run() -> Result<()> {
    ensure()?;
    eprintln!("all packages Rush needs are installed");
    Ok(())
}

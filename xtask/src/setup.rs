//! The Debian packages Rush needs, installed on demand so that a fresh machine needs
//! nothing but this repository and a Rust toolchain.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util;

/// clang compiles the BPF programs (any of these versions); the rest is for libbpf-sys,
/// the tests and the demo (btrfs-progs: the snapshot store; git: its fallback backend).
const CLANGS: [&str; 4] = ["clang", "clang-19", "clang-18", "clang-16"];
const PACKAGES: [&str; 9] =
    ["libelf-dev", "zlib1g-dev", "pkg-config", "make", "curl", "bpftool", "iproute2", "btrfs-progs", "git"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn have_clang() -> bool {
    CLANGS.iter().any(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Installs what is missing; prints what it does. Quiet when all is there.
pub fn ensure() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !have_clang() {
        missing.push("clang-19");
    }
    if missing.is_empty() {
        return Ok(());
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
    Ok(())
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

//! The README's main job: `vm-images/demo.sh`, a short narrated scenario with the real
//! daemon and CLI: a network denial, file tokens (allowed inside, EPERM outside), a revoke
//! that reaches an open file, a TTL that lapses with the daemon dead.
//!
//! File tokens need BPF LSM. Where this kernel attaches LSM programs the demo runs here;
//! elsewhere (this project's own hosts) it boots Debian's 6.12 kernel under QEMU and runs
//! there, saying so. `--host` forces a native run (the file scenes then show the refusal).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{setup, util, vm};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run on this machine's kernel even if it cannot attach BPF LSM programs.
    #[arg(long)]
    host: bool,
    /// The guest kernel series when the demo runs in QEMU.
    #[arg(long, default_value = "6.12")]
    kernel: String,
}

fn demo_script() -> PathBuf {
    util::workspace_root().join("vm-images/demo.sh")
}

/// Whether this kernel attaches Rush's LSM programs, asked of `rush-agentd doctor`.
fn lsm_attaches_here(agentd: &std::path::Path) -> Result<bool> {
    let out = Command::new(agentd)
        .args(["--config", "/dev/null", "doctor", "--json"])
        .output()
        .context("running rush-agentd doctor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The report lists probes as {"name": "...", "ok": ..., ...}; find bpf-lsm-attach's.
    let Some(at) = text.find("\"bpf-lsm-attach\"") else { return Ok(false) };
    let rest = &text[at..];
    let ok =
        rest.find("\"ok\"").map(|i| rest[i..].trim_start_matches("\"ok\"").trim_start_matches([':', ' ']));
    Ok(ok.is_some_and(|v| v.starts_with("true")))
}

pub fn run(args: DemoArgs) -> Result<()> {
    setup::ensure()?;
    util::require_root("the demo (it loads BPF programs and creates cgroups)")?;
    util::step("building rush-agentd and rush");
    util::cargo(&["build", "-p", "rush-agentd", "-p", "rush-userspace"], &[])?;
    let bin_dir = util::target_dir()?.join("debug");

    if args.host || lsm_attaches_here(&bin_dir.join("rush-agentd"))? {
        util::step("running the demo on this machine's kernel");
        let status = Command::new("sh")
            .arg(demo_script())
            .env("RUSH_BIN", &bin_dir)
            .status()
            .context("running vm-images/demo.sh")?;
        if !status.success() {
            bail!("the demo failed ({status})");
        }
        return Ok(());
    }

    util::step(&format!(
        "this kernel refuses BPF LSM programs, so file tokens cannot be enforced here: \
         running the demo in a QEMU guest with Debian's {} kernel",
        args.kernel
    ));
    vm::ensure_vm_packages()?;
    let kernel = vm::kernel(&args.kernel)?;
    eprintln!("    {} {} (uname -r {})", kernel.package, kernel.version, kernel.release);
    let out_dir = util::target_dir()?.join("vm-demo");
    std::fs::create_dir_all(&out_dir)?;
    let payload_path = out_dir.join("payload.cpio");
    let mut p = vm::image::Payload::create(&payload_path, &out_dir.join("stripped"))?;
    for b in ["rush-agentd", "rush"] {
        p.elf(&bin_dir.join(b), &format!("payload/bin/{b}"), true)?;
    }
    let curl = vm::host_tool("curl").context("curl is not installed")?;
    p.elf(&curl, &curl.to_string_lossy(), false)?;
    p.file("payload/demo.sh", 0o755, &std::fs::read(demo_script())?)?;
    p.file("payload/run", 0o755, b"#!/bin/sh\nRUSH_BIN=/payload/bin exec /bin/sh /payload/demo.sh\n")?;
    p.finish()?;
    let outcome = vm::boot_with_payload(
        &kernel,
        &payload_path,
        &out_dir,
        1024,
        "tcg,thread=single",
        Duration::from_secs(900),
    )?;
    match outcome.exit {
        Some(0) => Ok(()),
        Some(rc) => bail!("the demo failed in the guest (exit {rc}); console log in {}", out_dir.display()),
        None => bail!("the guest died or timed out; console log in {}", out_dir.display()),
    }
}

//! The README's main job: `vm-images/demo.sh`, a short narrated scenario with the real
//! daemon and CLI: a network denial, file tokens (allowed inside, EPERM outside), a revoke
//! that reaches an open file, a TTL that lapses with the daemon dead, a full-screen agent
//! on its own terminal attached and detached, a metered SDK call over TLS, three agents'
//! approval requests batched and approved once (and one expiring), budgets, a rollback.
//!
//! File tokens need BPF LSM or Landlock. Where this kernel can enforce them with either the
//! demo runs here (on this project's own hosts: Landlock, whose scenes show a revoke
//! freezing and restarting the agent); elsewhere it boots Debian's 6.12 kernel under QEMU
//! and runs there, saying so. `--host` forces a native run (the file scenes then show the
//! refusal where nothing enforces them); `--vm` forces the guest (BPF LSM).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{setup, util, vm};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run on this machine's kernel even if it can enforce file tokens neither with BPF
    /// LSM nor with Landlock.
    #[arg(long, conflicts_with = "vm")]
    host: bool,
    /// Run in a QEMU guest (BPF LSM) even where this kernel could run it natively.
    #[arg(long)]
    vm: bool,
    /// The guest kernel series when the demo runs in QEMU.
    #[arg(long, default_value = "6.12")]
    kernel: String,
}

fn demo_script() -> PathBuf {
    util::workspace_root().join("vm-images/demo.sh")
}

/// Whether this kernel can enforce file tokens (BPF LSM, or else Landlock), asked of
/// `rush-agentd doctor`.
fn file_tokens_here(agentd: &std::path::Path) -> Result<bool> {
    let out = Command::new(agentd)
        .args(["--config", "/dev/null", "doctor", "--json"])
        .output()
        .context("running rush-agentd doctor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The report lists guarantees as {"name": "...", "holds": ..., ...}; find file tokens'.
    let Some(at) = text.find("\"file tokens\"") else { return Ok(false) };
    let rest = &text[at..];
    let holds = rest
        .find("\"holds\"")
        .map(|i| rest[i..].trim_start_matches("\"holds\"").trim_start_matches([':', ' ']));
    Ok(holds.is_some_and(|v| v.starts_with("true")))
}

pub fn run(args: DemoArgs) -> Result<()> {
    setup::ensure()?;
    util::require_root("the demo (it loads BPF programs and creates cgroups)")?;
    util::step("building rush-agentd and rush");
    util::cargo(&["build", "-p", "rush-agentd", "-p", "rush-userspace"], &[])?;
    let bin_dir = util::target_dir()?.join("debug");

    if args.host || (!args.vm && file_tokens_here(&bin_dir.join("rush-agentd"))?) {
        util::step("running the demo on this machine's kernel");
        let status = Command::new("sh")
            .arg(demo_script())
            .env("RUSH_BIN", &bin_dir)
            // The cost scene: the official SDKs' venv and the repo's model API stand-in.
            .env("RUSH_REPO", util::workspace_root())
            .env("RUSH_SDK_PYTHON", setup::sdk_venv_dir().join("bin/python"))
            .status()
            .context("running vm-images/demo.sh")?;
        if !status.success() {
            bail!("the demo failed ({status})");
        }
        return Ok(());
    }

    util::step(&format!(
        "running the demo in a QEMU guest with Debian's {} kernel (BPF LSM), because this \
         kernel can enforce file tokens neither with BPF LSM nor with Landlock, or --vm",
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
    // curl for the network scenes; mkfs.btrfs and btrfs for the rollback scene's store.
    for tool in ["curl", "mkfs.btrfs", "btrfs"] {
        let host = vm::host_tool(tool).with_context(|| format!("{tool} is not installed"))?;
        p.elf(&host, &host.to_string_lossy(), false)?;
    }
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

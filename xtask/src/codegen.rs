//! `cargo xtask codegen`: regenerates rush-ebpf/src/bpf/vmlinux.h from the running kernel's
//! BTF. The header is committed: with CO-RE, programs built against it relocate their field
//! accesses to whatever kernel loads them, so it only needs regenerating to use types or
//! fields that this one lacks.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn run() -> Result<()> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rush-ebpf/src/bpf/vmlinux.h");
    if !Path::new(KERNEL_BTF).exists() {
        bail!("{KERNEL_BTF} does not exist: this kernel was built without CONFIG_DEBUG_INFO_BTF");
    }
    let bpftool = find_bpftool()?;
    let args = ["btf", "dump", "file", KERNEL_BTF, "format", "c"];
    let output = Command::new(&bpftool)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bpftool.display()))?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            bpftool.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    let header = output.stdout;
    let out = out.canonicalize().unwrap_or(out);
    let unchanged = fs::read(&out).is_ok_and(|old| old == header);
    if !unchanged {
        // Write then rename, so an interrupted run never leaves half a header.
        let tmp = out.with_extension("h.tmp");
        fs::write(&tmp, &header).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    }
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("ran `{} {}` (kernel {})", bpftool.display(), args.join(" "), kernel.trim());
    println!(
        "{} {} ({} lines, {} bytes)",
        if unchanged { "unchanged:" } else { "wrote" },
        out.display(),
        header.iter().filter(|&&b| b == b'\n').count(),
        header.len()
    );
    Ok(())
}

/// `$BPFTOOL`, else `bpftool` on PATH, else /usr/sbin/bpftool (not on a user's PATH).
fn find_bpftool() -> Result<PathBuf> {
    let candidates: Vec<OsString> = match std::env::var_os("BPFTOOL") {
        Some(path) => vec![path],
        None => vec!["bpftool".into(), "/usr/sbin/bpftool".into()],
    };
    for candidate in candidates {
        let works = Command::new(&candidate).arg("version").output().is_ok_and(|o| o.status.success());
        if works {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("bpftool not found: install it (`apt-get install bpftool`) or set BPFTOOL=/path/to/bpftool")
}

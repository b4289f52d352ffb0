//! `cargo xtask guest-kit`: installs the guest kit `rush execute` boots vm-only commands
//! with (docs/GUEST.md): one of the kernels the VM test tier uses and its base initramfs
//! (busybox, the /init that runs /payload/run), plus bash and any `--tool` with their
//! shared libraries, so the guest runs commands with the shell the gate parses.
//!
//! The kit: `vmlinuz`, `initrd.cpio` (the base initramfs with the tools' archive appended)
//! and `kit.toml`, written last: a directory without it is not a kit.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::util;
use crate::vm::{self, image, kernel};

/// Where `rush` looks when RUSH_GUEST_DIR is not set (rush-userspace/src/commands/guest.rs).
const DEFAULT_DIR: &str = "/var/lib/rush/guest";
/// The kit layout's version; `rush` refuses kits of another.
const FORMAT: u32 = 1;
/// The guest's shell: the gate parses bash syntax, so commands run with bash, at its
/// Debian path (and /bin/bash, for `#!/bin/bash` scripts in the workspace).
const SHELL: &str = "/usr/bin/bash";

#[derive(clap::Args)]
pub struct GuestKitArgs {
    /// Kernel series: 6.1 or 6.12.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Install it here (default: $RUSH_GUEST_DIR, else /var/lib/rush/guest).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Use the newest kernel already cached by the VM tier: no apt-get, no network.
    #[arg(long)]
    cached: bool,
    /// Another host program for the guest (an ELF, e.g. /usr/bin/git), with its shared
    /// libraries, at its host path. Repeatable. Programs that need data files beside
    /// them (python3, cc) will not work.
    #[arg(long = "tool", value_name = "PATH")]
    tools: Vec<PathBuf>,
}

pub fn run(args: GuestKitArgs) -> Result<()> {
    let t = Instant::now();
    let dir = match (&args.dir, std::env::var_os("RUSH_GUEST_DIR")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    };
    let series = kernel::SERIES
        .iter()
        .find(|s| s.label == args.kernel)
        .copied()
        .with_context(|| format!("--kernel {}: expected 6.1 or 6.12", args.kernel))?;
    if !args.cached {
        vm::ensure_vm_packages()?;
    }

    util::step(&format!("kernel {} (cache: {})", series.label, kernel::cache_root().display()));
    let k = if args.cached { kernel::cached(series)? } else { vm::kernel(series.label)? };
    eprintln!("    {} {} (uname -r {})", k.package, k.version, k.release);
    let (base, built) = image::base_initramfs(&k)?;
    eprintln!("    base initramfs {} ({})", base.display(), if built { "built now" } else { "cached" });

    util::step(&format!("installing the guest kit in {}", dir.display()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempdir_in(&dir)?;
    let result = install(&dir, &scratch, &k, &base, &args.tools);
    let _ = std::fs::remove_dir_all(&scratch);
    let size = result?;
    eprintln!(
        "    {}: vmlinuz, initrd.cpio ({:.1} MiB), kit.toml ({:.1}s)",
        dir.display(),
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "    rush finds it there{}",
        if dir == Path::new(DEFAULT_DIR) {
            String::new()
        } else {
            format!(" with RUSH_GUEST_DIR={}", dir.display())
        }
    );
    Ok(())
}

/// Writes the kit's files beside their final names and renames them into place,
/// kit.toml last. Returns the initrd's size.
fn install(dir: &Path, scratch: &Path, k: &kernel::Kernel, base: &Path, tools: &[PathBuf]) -> Result<u64> {
    let bash = vm::host_tool("bash").context("bash is not installed")?;
    let mut programs = vec![(bash, SHELL.to_owned())];
    for t in tools {
        let host = std::fs::canonicalize(t).with_context(|| format!("--tool {}", t.display()))?;
        if !host.is_file() {
            bail!("--tool {}: not a file", t.display());
        }
        let guest = t.to_str().with_context(|| format!("--tool {}: not UTF-8", t.display()))?.to_owned();
        if !guest.starts_with('/') {
            bail!("--tool {}: give its absolute path (the guest gets it there)", t.display());
        }
        programs.push((host, guest));
    }

    // The tools' archive, appended to the base initramfs: the kernel unpacks both.
    let tools_cpio = scratch.join("tools.cpio");
    let mut p = image::Payload::create(&tools_cpio, &scratch.join("strip"))?;
    for (host, guest) in &programs {
        p.elf(host, guest, false)?;
    }
    p.symlink("bin/bash", SHELL)?;
    p.finish()?;

    let initrd = scratch.join("initrd.cpio");
    let mut out = std::fs::File::create(&initrd).with_context(|| format!("creating {}", initrd.display()))?;
    for part in [base, &tools_cpio] {
        let mut src = std::fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut src, &mut out)?;
    }
    out.flush()?;
    let size = out.metadata()?.len();
    drop(out);
    std::fs::copy(&k.vmlinuz, scratch.join("vmlinuz"))
        .with_context(|| format!("copying {}", k.vmlinuz.display()))?;
    std::fs::write(scratch.join("kit.toml"), kit_toml(k, &programs)?)?;

    for name in ["vmlinuz", "initrd.cpio", "kit.toml"] {
        let from = scratch.join(name);
        // Readable by everyone: `rush` boots it as whoever runs it.
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&from, dir.join(name))
            .with_context(|| format!("installing {}", dir.join(name).display()))?;
    }
    Ok(size)
}

fn kit_toml(k: &kernel::Kernel, programs: &[(PathBuf, String)]) -> Result<String> {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut s = String::from(
        "# A Rush guest kit: `rush execute` boots vm-only commands with it (docs/GUEST.md).\n\
         # Written by `cargo xtask guest-kit`; vmlinuz and initrd.cpio beside it.\n",
    );
    writeln!(s, "format = {FORMAT}")?;
    writeln!(s, "kernel = {}", quote(k.series.label))?;
    writeln!(s, "package = {}", quote(&k.package))?;
    writeln!(s, "version = {}", quote(&k.version))?;
    writeln!(s, "release = {}", quote(&k.release))?;
    writeln!(s, "created = {created}")?;
    writeln!(s, "shell = {}", quote(SHELL))?;
    let list: Vec<String> = programs.iter().map(|(_, g)| quote(g)).collect();
    writeln!(s, "tools = [{}]", list.join(", "))?;
    Ok(s)
}

/// A TOML basic string (xtask has no TOML writer; the values are package names and paths).
fn quote(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A scratch directory inside `dir`, so the final renames stay on one filesystem.
fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let p = dir.join(format!(".kit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quote_escapes_what_toml_needs() {
        assert_eq!(super::quote("6.12"), "\"6.12\"");
        assert_eq!(super::quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}

//! vm-only: a command in a throwaway QEMU guest, on a copy of the workspace (docs/GUEST.md).
//!
//! The guest is the VM test tier's own (xtask/src/vm): a Debian cloud kernel and a busybox
//! initramfs whose /init runs /payload/run, installed as a kit by `cargo xtask guest-kit`
//! with bash added. Per run, rush appends a second cpio archive to the kit's initramfs:
//! the workspace's copy and the run script. The guest has no network device and no disk;
//! everything it writes lives in its RAM and is gone when it powers off. The workspace is
//! only read.

mod console;
mod cpio;
mod kit;
mod qemu;
mod script;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use rush_proto::gate::Assessment;

use super::gating::Ran;
use crate::error::{Error, Result};
use qemu::{Accel, End};

/// The biggest workspace copied. The copy lives in the guest's RAM twice while the kernel
/// unpacks it (the initrd, then the files), so its memory grows with it ([`memory_mb`]).
const MAX_COPY: u64 = 512 << 20;
/// RUSH_GUEST_TIMEOUT's default: boot, command and poweroff.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Guest memory beside the initramfs, for the kernel and the command.
const BASE_MEMORY_MB: u64 = 512;

pub fn run_in_guest(a: &Assessment, cwd: &Path) -> Result<Ran> {
    let (dir, from_env) = kit::dir(std::env::var_os("RUSH_GUEST_DIR"));
    let kit = kit::load(&dir, from_env).map_err(refused)?;
    let qemu_bin = kit::qemu().map_err(refused)?;
    let timeout = parse_timeout(std::env::var_os("RUSH_GUEST_TIMEOUT"))?;
    let accel_choice = parse_accel(std::env::var_os("RUSH_GUEST_ACCEL"))?;
    let (workspace, rel) = placement(a.workspace.as_deref(), cwd)?;
    let tree = match cpio::scan(&workspace, MAX_COPY)? {
        Ok(tree) => tree,
        Err(big) => return Err(refused(too_big(&workspace, &big))),
    };
    if !kit.meta.shell.ends_with("/bash") {
        eprintln!(
            "rush: vm-only: this guest kit has no bash: the command runs with {}, though the gate judged it as bash",
            kit.meta.shell
        );
    }
    if !tree.skipped.is_empty() {
        let names: Vec<String> = tree.skipped.iter().take(3).map(|p| p.display().to_string()).collect();
        let more = tree.skipped.len().saturating_sub(3);
        eprintln!(
            "rush: vm-only: not copied (sockets and device nodes mean nothing in a copy): {}{}",
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }

    let nonce = nonce();
    let mut scratch = Scratch::create(&nonce)?;
    let initrd = scratch.path().join("initrd.cpio");
    let run = script::run_script(&kit.meta.shell, &workspace, &rel, &a.command, &nonce);
    let size = build_initrd(&kit.initrd, &tree, &run, &initrd)?;
    let memory = memory_mb(std::env::var_os("RUSH_GUEST_MEMORY"), size)?;
    eprintln!(
        "rush: vm-only: a copy of {} ({} files, {}) in a throwaway guest: linux {} (kit {}), {memory} MiB, no network",
        workspace.display(),
        tree.files,
        mib(tree.bytes),
        if kit.meta.release.is_empty() { &kit.meta.kernel } else { &kit.meta.release },
        kit.dir.display(),
    );

    let mut accel = match accel_choice {
        AccelChoice::Auto if kvm_usable() => Accel::Kvm,
        AccelChoice::Auto | AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
    };
    let outcome = loop {
        eprintln!(
            "rush: vm-only: booting the guest{}",
            match (accel, accel_choice) {
                (Accel::Kvm, _) => " (KVM)",
                (Accel::Tcg, AccelChoice::Tcg) =>
                    " (TCG, as RUSH_GUEST_ACCEL says: ~5 s to boot, the command runs several times slower)",
                (Accel::Tcg, _) =>
                    " (TCG, no usable KVM: ~5 s to boot, the command runs several times slower)",
            }
        );
        let boot = qemu::Boot {
            qemu: &qemu_bin,
            vmlinuz: &kit.vmlinuz,
            initrd: &initrd,
            accel,
            memory_mb: memory,
            timeout,
            nonce: &nonce,
        };
        // Once the guest prints, QEMU has read the kernel and initrd: the copy can go now,
        // so that nothing of it is left behind even if rush is killed.
        let outcome = qemu::boot(&boot, || scratch.remove())?;
        let kvm_failed = accel == Accel::Kvm
            && accel_choice == AccelChoice::Auto
            && !outcome.printed
            && !matches!(outcome.end, End::TimedOut);
        if kvm_failed {
            let why = outcome.qemu_stderr.last().cloned().unwrap_or_else(|| "it printed nothing".into());
            eprintln!("rush: vm-only: KVM did not boot the guest ({why}); trying TCG");
            accel = Accel::Tcg;
            continue;
        }
        break outcome;
    };
    drop(scratch);

    match (outcome.status, &outcome.end) {
        (Some(rc), _) => {
            eprintln!(
                "rush: vm-only: done in {:.1} s ({:.1} s of it booting); the guest and its copy of the workspace are gone",
                outcome.total.as_secs_f64(),
                outcome.boot_time.unwrap_or_default().as_secs_f64()
            );
            Ok(Ran { code: Some(rc), signal: None })
        }
        (None, End::TimedOut) => Err(anyhow!(
            "vm-only: the guest did not finish within {} s (RUSH_GUEST_TIMEOUT): stopped it",
            timeout.as_secs()
        )
        .into()),
        (None, end) => {
            let qemu_end = match end {
                End::Exited(st) => format!("QEMU {st}"),
                End::Silent => "no output from the guest".to_owned(),
                End::TimedOut => "timed out".to_owned(),
            };
            eprintln!("rush: vm-only: the guest's console, last lines:");
            for l in outcome.console_tail.iter().chain(&outcome.qemu_stderr) {
                eprintln!("    {}", crate::render::sanitize(l));
            }
            // The kernel says so when the copy did not fit in the guest's RAM.
            let unpack_failed = outcome.console_tail.iter().any(|l| l.contains("Initramfs unpacking failed"));
            let what = if unpack_failed {
                format!(
                    "the workspace's copy did not fit in the guest's {memory} MiB (RUSH_GUEST_MEMORY sets it)"
                )
            } else if outcome.boot_time.is_some() {
                "the guest stopped before the command ended (out of memory? RUSH_GUEST_MEMORY sets it)".into()
            } else {
                "the guest did not get as far as the command".to_owned()
            };
            Err(anyhow!("vm-only: {what} ({qemu_end})").into())
        }
    }
}

fn refused(message: String) -> Error {
    anyhow!(message).into()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn too_big(workspace: &Path, big: &cpio::TooBig) -> String {
    let parts: Vec<String> =
        big.biggest.iter().map(|(name, n)| format!("{} {}", Path::new(name).display(), mib(*n))).collect();
    format!(
        "{}: {} holds more than {} to copy into the guest's memory (the biggest parts: {})",
        kit::REFUSED,
        workspace.display(),
        mib(big.limit),
        parts.join(", ")
    )
}

/// The directory copied and the command's directory inside it: the assessment's
/// workspace when `cwd` is in it, else `cwd` alone.
fn placement(workspace: Option<&Path>, cwd: &Path) -> Result<(PathBuf, PathBuf)> {
    let ws = match workspace {
        Some(w) => Some(std::fs::canonicalize(w).with_context(|| format!("the workspace {}", w.display()))?),
        None => None,
    };
    let (ws, rel) = match ws {
        Some(w) if cwd.starts_with(&w) => {
            let rel = cwd.strip_prefix(&w).map(Path::to_path_buf).unwrap_or_default();
            (w, rel)
        }
        _ => (cwd.to_owned(), PathBuf::new()),
    };
    if ws == Path::new("/") {
        return Err(refused(format!("{}: the workspace is / (no copy of a whole system)", kit::REFUSED)));
    }
    Ok((ws, rel))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccelChoice {
    /// KVM when /dev/kvm opens, falling back to TCG when the guest does not come up.
    Auto,
    Kvm,
    Tcg,
}

fn parse_accel(v: Option<OsString>) -> Result<AccelChoice> {
    let Some(v) = v.filter(|v| !v.is_empty()) else { return Ok(AccelChoice::Auto) };
    match v.to_str() {
        Some("auto") => Ok(AccelChoice::Auto),
        Some("kvm") => Ok(AccelChoice::Kvm),
        Some("tcg") => Ok(AccelChoice::Tcg),
        _ => Err(anyhow!("RUSH_GUEST_ACCEL={}: expected auto, kvm or tcg", v.to_string_lossy()).into()),
    }
}

/// RUSH_GUEST_TIMEOUT: seconds, or a number with s, m or h.
fn parse_timeout(v: Option<OsString>) -> Result<Duration> {
    let Some(v) = v.filter(|v| !v.is_empty()) else { return Ok(DEFAULT_TIMEOUT) };
    let bad = || -> Error {
        anyhow!(
            "RUSH_GUEST_TIMEOUT={}: expected seconds or a duration such as 90s, 10m, 1h",
            v.to_string_lossy()
        )
        .into()
    };
    let s = v.to_str().ok_or_else(bad)?;
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// RUSH_GUEST_MEMORY (MiB), else room for the initramfs twice (packed, then unpacked)
/// beside [`BASE_MEMORY_MB`].
fn memory_mb(v: Option<OsString>, initrd_bytes: u64) -> Result<u64> {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        return v.to_str().and_then(|s| s.parse::<u64>().ok()).filter(|&m| m >= 128).ok_or_else(|| {
            anyhow!("RUSH_GUEST_MEMORY={}: expected MiB, at least 128", v.to_string_lossy()).into()
        });
    }
    Ok(BASE_MEMORY_MB + 2 * initrd_bytes.div_ceil(1 << 20))
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// 16 hex digits from the kernel's random pool (time and pid if it cannot be read): the
/// markers' and the scratch directory's name.
fn nonce() -> String {
    let mut b = [0u8; 8];
    let random = File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if random.is_err() {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        b = (t ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The kit's initramfs with the payload appended: the kernel unpacks both in turn.
/// Returns the whole file's size.
fn build_initrd(base: &Path, tree: &cpio::Tree, run: &[u8], out: &Path) -> Result<u64> {
    let mut f = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut src = File::open(base).with_context(|| format!("cannot read {}", base.display()))?;
    let base_len =
        std::io::copy(&mut src, &mut f).with_context(|| format!("cannot copy {}", base.display()))?;
    // Archives start on a 4-byte boundary; zeros between them are skipped.
    let pad = (4 - base_len % 4) % 4;
    f.write_all(&[0; 3][..pad as usize]).with_context(|| format!("cannot write {}", out.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let h = cpio::Header { mode: 0o755, uid: 0, gid: 0, mtime: u32::try_from(now).unwrap_or(u32::MAX) };
    let mut w = cpio::Writer::new(f);
    w.dir(b"payload", h).context("cannot write the payload")?;
    cpio::write_tree(&mut w, tree, script::COPY)?;
    w.file(b"payload/run", h, run.len() as u64, &mut &run[..]).context("cannot write the payload")?;
    let (size, _) = w.finish().context("cannot write the payload")?;
    Ok(base_len + pad + size)
}

/// A private directory for the initrd, removed when dropped (or earlier: [`Scratch::remove`]).
struct Scratch(Option<PathBuf>);

impl Scratch {
    fn create(nonce: &str) -> Result<Scratch> {
        let p = std::env::temp_dir().join(format!("rush-guest-{}-{nonce}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        Ok(Scratch(Some(p)))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new("/nonexistent"))
    }

    fn remove(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_knobs_parse_or_say_what_they_expect() {
        assert_eq!(parse_timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(parse_timeout(Some("90".into())).unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout(Some("10m".into())).unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout(Some("1h".into())).unwrap(), Duration::from_secs(3600));
        for bad in ["0", "ten", "5d", "-1", "1.5m"] {
            let e = parse_timeout(Some(bad.into())).unwrap_err();
            assert!(e.lines()[0].starts_with(&format!("RUSH_GUEST_TIMEOUT={bad}: expected")), "{bad}");
        }
        assert_eq!(parse_accel(None).unwrap(), AccelChoice::Auto);
        assert_eq!(parse_accel(Some("tcg".into())).unwrap(), AccelChoice::Tcg);
        assert!(parse_accel(Some("xen".into())).is_err());
        assert_eq!(memory_mb(None, 12 << 20).unwrap(), 512 + 24);
        assert_eq!(memory_mb(None, (12 << 20) + 1).unwrap(), 512 + 26);
        assert_eq!(memory_mb(Some("2048".into()), 1).unwrap(), 2048);
        assert!(memory_mb(Some("64".into()), 1).is_err());
    }

    #[test]
    fn the_copy_is_the_workspace_when_cwd_is_in_it_else_cwd() {
        let ws = tempfile::tempdir().unwrap();
        let ws_path = std::fs::canonicalize(ws.path()).unwrap();
        let sub = ws_path.join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(placement(Some(&ws_path), &sub).unwrap(), (ws_path.clone(), PathBuf::from("a/b")));
        assert_eq!(placement(Some(&ws_path), &ws_path).unwrap(), (ws_path.clone(), PathBuf::new()));
        assert_eq!(placement(None, &sub).unwrap(), (sub.clone(), PathBuf::new()));
        let other = tempfile::tempdir().unwrap();
        assert_eq!(placement(Some(other.path()), &sub).unwrap(), (sub.clone(), PathBuf::new()));
        let e = placement(None, Path::new("/")).unwrap_err();
        assert!(e.lines()[0].contains("the workspace is /"), "{:?}", e.lines());
    }

    #[test]
    fn the_initrd_is_the_kit_then_the_workspace_and_the_script() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.cpio");
        let mut w = cpio::Writer::new(File::create(&base).unwrap());
        w.file(b"init", cpio::Header { mode: 0o755, uid: 0, gid: 0, mtime: 0 }, 2, &mut &b"#!"[..]).unwrap();
        w.finish().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("f"), "data").unwrap();
        let tree = cpio::scan(&ws, 1 << 20).unwrap().unwrap();
        let out = d.path().join("initrd.cpio");
        let size = build_initrd(&base, &tree, b"#!/bin/sh\n", &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(size, bytes.len() as u64);
        let base_len = std::fs::metadata(&base).unwrap().len() as usize;
        assert_eq!(cpio::tests::read_all(&bytes[..base_len])[0].0, b"init");
        let names: Vec<Vec<u8>> =
            cpio::tests::read_all(&bytes[base_len..]).into_iter().map(|e| e.0).collect();
        assert_eq!(names, [&b"payload"[..], b"payload/ws", b"payload/ws/f", b"payload/run"]);
    }

    #[test]
    fn the_scratch_directory_is_private_and_goes_away() {
        use std::os::unix::fs::PermissionsExt;
        let mut s = Scratch::create(&nonce()).unwrap();
        let p = s.path().to_owned();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
        s.remove();
        assert!(!p.exists());
        let s = Scratch::create(&nonce()).unwrap();
        let p = s.path().to_owned();
        drop(s);
        assert!(!p.exists());
        assert_eq!(nonce().len(), 16);
        assert_ne!(nonce(), nonce());
    }
}

//! The two archives a guest boots with: the base initramfs (busybox, /init, the kernel's
//! modules; cached per kernel and recipe) and the payload appended to it per run (the
//! binaries under test, their shared libraries and the dynamic loader, the run script).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cpio;
use super::kernel::{self, Kernel};

/// The guest's /init.
const INIT: &str = include_str!("../../../vm-images/init.sh");

/// Loaded at boot, in modules.dep order with their dependencies (ENVIRONMENT.md: what CRIU,
/// btrfs and the diag sockets need; loop and binfmt_misc for the escape suite).
pub const MODULES: [&str; 15] = [
    "virtio_pci",
    "virtio_blk",
    "loop",
    "binfmt_misc",
    "btrfs",
    "unix_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "raw_diag",
    "netlink_diag",
    "af_packet_diag",
    "tun",
    "veth",
    "nf_tables",
];

/// Bump when the base image layout changes in a way the inputs below do not show.
const RECIPE_VERSION: &str = "1";

const BUSYBOX: &str = "/bin/busybox";

const ETC_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const ETC_GROUP: &str = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";
const ETC_HOSTS: &str = "127.0.0.1\tlocalhost rush-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
    // A separator, so that ("ab","c") and ("a","bc") differ.
    *h ^= 0xff;
    *h = h.wrapping_mul(0x100000001b3);
}

/// The base initramfs of `k`, built unless the cache holds one for this recipe.
/// Returns its path and whether it was built now.
pub fn base_initramfs(k: &Kernel) -> Result<(PathBuf, bool)> {
    let busybox =
        std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (package busybox-static)"))?;
    let mut h = 0xcbf29ce484222325u64;
    for part in [RECIPE_VERSION.as_bytes(), INIT.as_bytes(), MODULES.join(" ").as_bytes(), &busybox] {
        fnv(&mut h, part);
    }
    let path = k.dir.join(format!("initramfs-{h:016x}.cpio"));
    if path.is_file() {
        return Ok((path, false));
    }
    let (modules, notes) = kernel::modules_in_load_order(k, &MODULES)?;
    for n in &notes {
        eprintln!("    {}: {n}", k.series.label);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut w = cpio::Writer::create(&tmp)?;
    for d in ["dev", "proc", "sys", "tmp", "run", "mnt", "var", "etc", "bin", "sbin", "usr/bin", "usr/sbin"] {
        w.dir(d)?;
    }
    w.dir_mode("root", 0o700)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, INIT.as_bytes())?;
    w.file("etc/passwd", 0o644, ETC_PASSWD.as_bytes())?;
    w.file("etc/group", 0o644, ETC_GROUP.as_bytes())?;
    w.file("etc/hosts", 0o644, ETC_HOSTS.as_bytes())?;
    w.file("etc/rush-vm/package", 0o644, format!("{} {}", k.package, k.version).as_bytes())?;
    let mut list = String::new();
    for m in &modules {
        w.file(
            &format!("lib/modules/{}/{}", k.release, m.guest_rel),
            0o644,
            &kernel::module_bytes(&m.source)?,
        )?;
        list.push_str(&m.guest_rel);
        list.push('\n');
    }
    w.file("etc/rush-vm/modules", 0o644, list.as_bytes())?;
    w.finish()?;
    std::fs::rename(&tmp, &path)?;
    // Older images of this kernel (other recipe hashes) are dead weight.
    for e in std::fs::read_dir(&k.dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("initramfs-") && e.path() != path {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok((path, true))
}

/// The per-run archive: ELF programs with their libraries, plus plain files.
pub struct Payload {
    w: cpio::Writer,
    libs: BTreeSet<String>,
    scratch: PathBuf,
}

impl Payload {
    pub fn create(path: &Path, scratch: &Path) -> Result<Payload> {
        std::fs::create_dir_all(scratch)?;
        Ok(Payload { w: cpio::Writer::create(path)?, libs: BTreeSet::new(), scratch: scratch.to_owned() })
    }

    /// `host` at `guest`, with what `ldd` says it needs at the same paths as on the host.
    /// `strip`: drop debug info (a debug build's DWARF is most of its size, and the whole
    /// initramfs lives in the guest's RAM); symbols stay, so backtraces keep their names.
    pub fn elf(&mut self, host: &Path, guest: &str, strip: bool) -> Result<()> {
        let data = if strip { stripped(host, &self.scratch)? } else { read(host)? };
        let mode = std::fs::metadata(host)?.permissions().mode();
        self.w.file(guest, mode | 0o555, &data)?;
        for lib in ldd(host)? {
            if self.libs.insert(lib.clone()) {
                self.w.file(&lib, 0o755, &read(Path::new(&lib))?)?;
            }
        }
        Ok(())
    }

    pub fn file(&mut self, guest: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.w.file(guest, mode, data)
    }

    pub fn symlink(&mut self, guest: &str, target: &str) -> Result<()> {
        self.w.symlink(guest, target)
    }

    pub fn finish(self) -> Result<u64> {
        self.w.finish()
    }
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn stripped(host: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let out = scratch.join(host.file_name().context("file name")?);
    let status = Command::new("strip").arg("--strip-debug").arg("-o").arg(&out).arg(host).status();
    match status {
        Ok(s) if s.success() => read(&out),
        _ => {
            eprintln!("    (strip failed for {}: copying it whole)", host.display());
            read(host)
        }
    }
}

/// The shared libraries and the loader `ldd` resolves for `exe` (none for a static one).
fn ldd(exe: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(exe).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", exe.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: library missing on this host: {line}", exe.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_owned());
        }
    }
    Ok(libs)
}

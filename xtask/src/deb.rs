//! `cargo xtask deb`: a Debian package of rush-agentd and rush.
//!
//! The tree is staged by install.rs's [`install::stage`], the same list of files `cargo
//! xtask install` installs, in the package's places; then DEBIAN/ gets the control file,
//! the conffiles and the maintainer scripts of contrib/debian/, and `dpkg-deb --build
//! --root-owner-group` makes the .deb. Not cargo-deb: it would be built in CI first (more
//! minutes than the package itself), and the installed files would be described twice, in
//! its Cargo.toml metadata and here; dpkg-deb is Debian's own, maintained with dpkg.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::install::{self, Layout};
use crate::util;

#[derive(clap::Args)]
pub struct DebArgs {
    /// The binaries packaged: CI packages the dev build it already has; a package for users
    /// is a release one.
    #[command(flatten)]
    bins: install::Binaries,
    /// Where the .deb is written [default: target/debian].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: DebArgs) -> Result<()> {
    let out = match args.out {
        Some(d) => d,
        None => util::target_dir()?.join("debian"),
    };
    let bins = args.bins.get()?;
    // xz (Debian's default) for a package to hand out; a package of the dev build or of
    // --bin-dir is for the test suite, whose CI minutes gzip -1 saves (xz: ~50 s on 2 busy
    // cores).
    let compression = if args.bins.for_tests() { "-Zgzip" } else { "-Zxz" };
    let deb = build(&bins, &out, compression)?;
    eprintln!("\nBuilt {}\nInstall it with: apt install {}", deb.display(), absolute(&deb).display());
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Stages the package of the binaries in `bins` and builds it into `out` (`compression`:
/// dpkg-deb's -Z); returns its path.
pub fn build(bins: &Path, out: &Path, compression: &str) -> Result<PathBuf> {
    let src = util::workspace_root();
    let version = version(&bins.join("rush-agentd"))?;
    let arch = command_line("dpkg", &["--print-architecture"])?;
    let stage = util::target_dir()?.join(format!("deb-stage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&stage);
    util::step(&format!("staging rush {version} ({arch}) in {}", stage.display()));
    let result = (|| {
        let files = install::stage(&stage, Layout::Package, bins)?;
        let debian = stage.join("DEBIAN");
        fs::create_dir_all(&debian)?;
        for script in ["postinst", "prerm", "postrm"] {
            let to = debian.join(script);
            fs::copy(src.join("contrib/debian").join(script), &to)
                .with_context(|| format!("copying contrib/debian/{script}"))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(debian.join("conffiles"), format!("/{}\n", install::CONFIG))?;
        let binaries: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.parent().is_some_and(|p| p.ends_with("bin")))
            .map(|f| stage.join(f))
            .collect();
        // As dh_strip does (without the -dbgsym package): the debug build's binaries are
        // 150 MB of DWARF, which xz would spend minutes on.
        for b in &binaries {
            let status = Command::new("strip")
                .args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"])
                .arg(b)
                .status()
                .context("running strip (binutils)")?;
            if !status.success() {
                bail!("strip {} failed ({status})", b.display());
            }
        }
        let depends = shlib_depends(&stage, &binaries)?;
        let control = control(&version, &arch, &depends, installed_kib(&stage)?);
        fs::write(debian.join("control"), control)?;
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let deb = out.join(format!("rush_{version}_{arch}.deb"));
        let status = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", compression])
            .args(if compression == "-Zgzip" { &["-z1"][..] } else { &[] })
            .arg(&stage)
            .arg(&deb)
            .status()
            .context("running dpkg-deb (Debian's dpkg package)")?;
        if !status.success() {
            bail!("dpkg-deb --build {} failed ({status})", stage.display());
        }
        Ok(deb)
    })();
    let _ = fs::remove_dir_all(&stage);
    result
}

fn control(version: &str, arch: &str, depends: &str, kib: u64) -> String {
    format!(
        "Package: rush\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: The Rush developers <rush@localhost>\n\
         Installed-Size: {kib}\n\
         Depends: {depends}\n\
         Suggests: btrfs-progs, criu, git\n\
         Section: admin\n\
         Priority: optional\n\
         Description: AI agents as kernel-confined processes\n \
         rush-agentd runs AI agents confined by eBPF LSM and cgroup programs (and\n \
         Landlock): file tokens that can be revoked while files are open, network allow\n \
         lists, budgets, an audit trail of every denial. rush is its command line.\n \
         .\n \
         The daemon is enabled and started on install when systemd runs the machine.\n"
    )
}

/// `rush-agentd 0.1.0` -> `0.1.0`.
fn version(daemon: &Path) -> Result<String> {
    let line = command_line(daemon.to_str().context("a UTF-8 path")?, &["--version"])?;
    match line.split_whitespace().nth(1) {
        Some(v) => Ok(v.to_owned()),
        None => bail!("`{} --version` printed {line:?}, not `rush-agentd VERSION`", daemon.display()),
    }
}

/// The Depends of the binaries' shared libraries, from dpkg-shlibdeps: the packages that
/// ship the NEEDED libraries, each at the version the symbols used need (shlibs/symbols
/// files), as debhelper's ${shlibs:Depends}. It reads debian/control, so it runs in a
/// scratch directory with a minimal one.
fn shlib_depends(stage: &Path, binaries: &[PathBuf]) -> Result<String> {
    let work = stage.with_extension("shlibdeps");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("debian"))?;
    fs::write(work.join("debian/control"), "Source: rush\n\nPackage: rush\nArchitecture: any\n")?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-xrush"])
        .args(binaries.iter().map(|b| format!("-e{}", b.display())))
        .current_dir(&work)
        .output()
        .context("running dpkg-shlibdeps (Debian's dpkg-dev package: cargo xtask setup)")?;
    let _ = fs::remove_dir_all(&work);
    if !out.status.success() {
        bail!("dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find_map(|l| l.strip_prefix("shlibs:Depends=")) {
        Some(d) => Ok(d.trim().to_owned()),
        None => bail!("dpkg-shlibdeps printed no shlibs:Depends: {text}"),
    }
}

/// Installed-Size: the KiB the files take on disk (du -sk, DEBIAN/ left out).
fn installed_kib(stage: &Path) -> Result<u64> {
    let line = command_line("du", &["-sk", "--exclude=DEBIAN", stage.to_str().context("a UTF-8 path")?])?;
    line.split_whitespace().next().and_then(|k| k.parse().ok()).context("du -sk printed no size")
}

fn command_line(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

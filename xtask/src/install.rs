//! `cargo xtask install`: the binaries, the systemd unit, the default config, man pages and
//! shell completions in their places. systemctl is left to the operator (the command prints
//! what to run): it may be an upgrade of a running daemon, which they restart when they
//! choose.
//!
//! [`stage`] is the one list of installed files: `cargo xtask deb` (deb.rs) stages the
//! package's tree with it too, in the [`Layout::Package`] places.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Install under this directory instead of / (packaging, or a dry run): DIR/usr/local/bin,
    /// DIR/etc/systemd/system, DIR/etc/rush, DIR/usr/local/share. Root is not needed then.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    #[command(flatten)]
    bins: Binaries,
}

/// Which rush-agentd and rush to install or package.
#[derive(clap::Args)]
pub struct Binaries {
    /// The cargo profile to build them in.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    profile: Profile,
    /// Take them from DIR as they are, building nothing (the package suite takes the host
    /// tier's: a build of two packages alone would unify features differently and compile
    /// the daemon again).
    #[arg(long, value_name = "DIR", conflicts_with = "profile")]
    bin_dir: Option<PathBuf>,
}

impl Binaries {
    /// The directory holding rush-agentd and rush, built first unless --bin-dir.
    pub fn get(&self) -> Result<PathBuf> {
        match &self.bin_dir {
            Some(d) => Ok(d.clone()),
            None => self.profile.build(),
        }
    }

    /// Binaries for testing rather than handing out: the dev build, or taken as they are.
    pub fn for_tests(&self) -> bool {
        self.bin_dir.is_some() || self.profile == Profile::Dev
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Release,
    Dev,
}

impl Profile {
    /// Builds rush-agentd and rush in this profile; returns the directory they are in.
    pub fn build(self) -> Result<PathBuf> {
        let mut args = vec!["build", "-p", "rush-agentd", "-p", "rush-userspace", "--bins"];
        let dir = match self {
            Profile::Release => {
                args.push("--release");
                "release"
            }
            Profile::Dev => "debug",
        };
        util::step(&format!("building rush-agentd and rush ({dir})"));
        util::cargo(&args, &[])?;
        Ok(util::target_dir()?.join(dir))
    }
}

/// Where the files go: a local install beside the distribution's files (/usr/local, the
/// admin's /etc/systemd/system), or the distribution's own places (a package).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    Local,
    Package,
}

impl Layout {
    fn prefix(self) -> &'static str {
        match self {
            Layout::Local => "usr/local",
            Layout::Package => "usr",
        }
    }

    fn unit_dir(self) -> &'static str {
        match self {
            Layout::Local => "etc/systemd/system",
            // bookworm's debhelper still installs units here (usrmerge makes it /usr/lib).
            Layout::Package => "lib/systemd/system",
        }
    }

    fn zsh_dir(self) -> &'static str {
        match self {
            Layout::Local => "share/zsh/site-functions",
            Layout::Package => "share/zsh/vendor-completions",
        }
    }
}

/// The config file, relative to the root: the operator's once installed (a conffile in the
/// package; `cargo xtask install` writes it only when missing).
pub const CONFIG: &str = "etc/rush/config.toml";

pub fn run(args: InstallArgs) -> Result<()> {
    let root = match args.destdir {
        Some(d) => d,
        None => {
            util::require_root("installing into /usr/local and /etc")?;
            PathBuf::from("/")
        }
    };
    let bins = args.bins.get()?;
    stage(&root, Layout::Local, &bins)?;
    eprintln!(
        "\nInstalled. Start it now and at boot with:\n    systemctl daemon-reload && systemctl enable --now rush-agentd\n\
         (an upgrade: systemctl restart rush-agentd; agents keep running and are re-adopted)"
    );
    Ok(())
}

/// Installs every file under `root` in `layout`'s places, the binaries taken from `bins`;
/// returns the installed paths relative to `root`. A config already there is kept.
pub fn stage(root: &Path, layout: Layout, bins: &Path) -> Result<Vec<PathBuf>> {
    let src = util::workspace_root();
    let prefix = Path::new(layout.prefix());
    let mut staged = Vec::new();
    let mut put = |rel: PathBuf, from: &Path, mode: u32| -> Result<()> {
        replace(from, &root.join(&rel), mode)?;
        staged.push(rel);
        Ok(())
    };
    for name in ["rush-agentd", "rush"] {
        put(prefix.join("bin").join(name), &bins.join(name), 0o755)?;
    }
    let work = scratch_dir()?;
    let result = (|| {
        // The unit names the daemon where this layout puts it.
        let unit = fs::read_to_string(src.join("contrib/systemd/rush-agentd.service"))?;
        let exec = "ExecStart=/usr/local/bin/rush-agentd";
        if !unit.contains(exec) {
            bail!(
                "contrib/systemd/rush-agentd.service has no `{exec}` line to point at the installed daemon"
            );
        }
        let unit = unit.replace(exec, &format!("ExecStart=/{}/bin/rush-agentd", layout.prefix()));
        fs::write(work.join("rush-agentd.service"), unit)?;
        put(
            Path::new(layout.unit_dir()).join("rush-agentd.service"),
            &work.join("rush-agentd.service"),
            0o644,
        )?;

        // The operator's config is theirs: only a missing one is written.
        let config = root.join(CONFIG);
        if config.exists() {
            eprintln!("    kept {} (the defaults are in contrib/config.toml)", config.display());
        } else {
            put(CONFIG.into(), &src.join("contrib/config.toml"), 0o644)?;
        }
        put(prefix.join("share/rush/gating-rules.toml"), &src.join("rush-gate/rules/default.toml"), 0o644)?;
        put(prefix.join("share/doc/rush/copyright"), &src.join("contrib/debian/copyright"), 0o644)?;

        // Man pages and completions come from the binaries' own clap definitions.
        let man = work.join("man");
        run_tool(bins.join("rush").as_ref(), &["man", "--dir"], &man)?;
        run_tool(bins.join("rush-agentd").as_ref(), &["__man"], &man)?;
        let mut pages: Vec<PathBuf> = fs::read_dir(&man)?.map(|e| Ok(e?.path())).collect::<Result<_>>()?;
        pages.sort();
        for page in pages {
            let section = page.extension().and_then(|e| e.to_str()).unwrap_or("1").to_owned();
            let gz = gzip(&page)?;
            let name = gz.file_name().expect("a file").to_owned();
            put(prefix.join(format!("share/man/man{section}")).join(name), &gz, 0o644)?;
        }
        for (shell, dir, name) in [
            ("bash", "share/bash-completion/completions", "rush"),
            ("zsh", layout.zsh_dir(), "_rush"),
            ("fish", "share/fish/vendor_completions.d", "rush.fish"),
        ] {
            let out = Command::new(bins.join("rush")).args(["completions", shell]).output()?;
            if !out.status.success() || out.stdout.is_empty() {
                bail!("`rush completions {shell}` failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let file = work.join(name);
            fs::write(&file, out.stdout)?;
            put(prefix.join(dir).join(name), &file, 0o644)?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(staged)
}

/// A scratch directory in the target directory (not under the root: it would be staged).
fn scratch_dir() -> Result<PathBuf> {
    let dir = util::target_dir()?.join(format!("xtask-stage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `tool ARGS DIR`, which writes files into DIR.
fn run_tool(tool: &Path, args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .arg(dir)
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {} {}` failed: {}",
            tool.display(),
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `gzip -9n`: Debian's man pages are compressed, and -n (no name, no time) makes the same
/// page the same bytes on every build.
fn gzip(file: &Path) -> Result<PathBuf> {
    let status = Command::new("gzip").args(["-9nf"]).arg(file).status().context("running gzip")?;
    if !status.success() {
        bail!("gzip {} failed ({status})", file.display());
    }
    let mut gz = file.as_os_str().to_owned();
    gz.push(".gz");
    Ok(gz.into())
}

/// Copies `from` to `to` through a temporary file and a rename: a running binary cannot be
/// written in place (ETXTBSY), and a reader never sees half a file.
fn replace(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.parent().expect("an absolute destination");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = to.with_extension("rush-install-tmp");
    fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    eprintln!("    {}", to.display());
    Ok(())
}

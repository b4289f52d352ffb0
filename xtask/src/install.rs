//! `cargo xtask install`: the release binaries, the systemd unit and the default config in
//! their places. systemctl is left to the operator (the command prints what to run): it
//! may be an upgrade of a running daemon, which they restart when they choose.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::util;

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Install under this directory instead of / (packaging, or a dry run): DIR/usr/local/bin,
    /// DIR/etc/systemd/system, DIR/etc/rush. Root is not needed then.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

pub fn run(args: InstallArgs) -> Result<()> {
    let root = match args.destdir {
        Some(d) => d,
        None => {
            util::require_root("installing into /usr/local/bin and /etc")?;
            PathBuf::from("/")
        }
    };
    util::step("building the release binaries");
    util::cargo(&["build", "--release", "-p", "rush-agentd", "-p", "rush-userspace", "--bins"], &[])?;
    let release = util::target_dir()?.join("release");
    let src = util::workspace_root();
    let bin = root.join("usr/local/bin");
    for name in ["rush-agentd", "rush"] {
        replace(&release.join(name), &bin.join(name), 0o755)?;
    }
    let unit = root.join("etc/systemd/system/rush-agentd.service");
    replace(&src.join("contrib/systemd/rush-agentd.service"), &unit, 0o644)?;
    // The operator's config is theirs: only a missing one is written.
    let config = root.join("etc/rush/config.toml");
    if config.exists() {
        eprintln!("    kept {} (the defaults are in contrib/config.toml)", config.display());
    } else {
        replace(&src.join("contrib/config.toml"), &config, 0o644)?;
    }
    eprintln!(
        "\nInstalled. Start it now and at boot with:\n    systemctl daemon-reload && systemctl enable --now rush-agentd\n\
         (an upgrade: systemctl restart rush-agentd; agents keep running and are re-adopted)"
    );
    Ok(())
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

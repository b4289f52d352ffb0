//! The guest kit: what a vm-only command boots (docs/GUEST.md). A directory holding
//! `vmlinuz`, `initrd.cpio` (busybox, an /init that runs /payload/run, bash) and
//! `kit.toml`, installed by `cargo xtask guest-kit` (xtask/src/guest_kit.rs) at
//! `$RUSH_GUEST_DIR`, else [`DEFAULT_DIR`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_DIR: &str = "/var/lib/rush/guest";
/// The kit layout this rush reads (kit.toml's `format`).
pub const FORMAT: u32 = 1;
/// Why nothing can boot starts every refusal the same way, so it is found in logs.
pub const REFUSED: &str = "vm-only: no guest can boot here";

/// kit.toml (also package, version, created, tools: for people).
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    pub format: u32,
    /// The kernel series ("6.12").
    pub kernel: String,
    /// `uname -r` in the guest.
    #[serde(default)]
    pub release: String,
    /// The shell commands run with in the guest. A kit without bash is told on stderr:
    /// the gate judged bash syntax.
    #[serde(default = "default_shell")]
    pub shell: String,
}

fn default_shell() -> String {
    "/bin/sh".into()
}

#[derive(Debug, Clone)]
pub struct Kit {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub meta: Meta,
}

/// Where the kit is: `RUSH_GUEST_DIR` (passed in, so tests need not set the process's
/// environment), else [`DEFAULT_DIR`]; and whether the variable chose it.
pub fn dir(env: Option<OsString>) -> (PathBuf, bool) {
    match env {
        Some(d) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (PathBuf::from(DEFAULT_DIR), false),
    }
}

/// The kit in `dir`, or the sentence saying why there is none usable.
pub fn load(dir: &Path, from_env: bool) -> Result<Kit, String> {
    let install = if from_env {
        format!("install one: cargo xtask guest-kit --dir {}", dir.display())
    } else {
        "install one: cargo xtask guest-kit, or set RUSH_GUEST_DIR".to_owned()
    };
    let toml_path = dir.join("kit.toml");
    let text = match std::fs::read_to_string(&toml_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let var = if from_env { " (RUSH_GUEST_DIR)" } else { "" };
            return Err(format!("{REFUSED}: no guest kit at {}{var} ({install})", dir.display()));
        }
        Err(e) => return Err(format!("{REFUSED}: cannot read {}: {e}", toml_path.display())),
    };
    let meta: Meta = toml::from_str(&text).map_err(|e| {
        format!("{REFUSED}: {} is not a guest kit's: {} ({install})", toml_path.display(), e.message())
    })?;
    if meta.format != FORMAT {
        return Err(format!(
            "{REFUSED}: the guest kit at {} has format {}, this rush reads format {FORMAT} ({})",
            dir.display(),
            meta.format,
            install.replace("install one", "reinstall it")
        ));
    }
    let kit =
        Kit { dir: dir.to_owned(), vmlinuz: dir.join("vmlinuz"), initrd: dir.join("initrd.cpio"), meta };
    for f in [&kit.vmlinuz, &kit.initrd] {
        if !f.is_file() {
            return Err(format!(
                "{REFUSED}: the guest kit at {} has no {} ({})",
                dir.display(),
                f.file_name().unwrap_or_default().to_string_lossy(),
                install.replace("install one", "reinstall it")
            ));
        }
    }
    Ok(kit)
}

/// qemu-system-x86_64 on PATH (then /usr/bin), or why not.
pub fn qemu() -> Result<PathBuf, String> {
    const QEMU: &str = "qemu-system-x86_64";
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{REFUSED}: {QEMU} is not installed (Debian: apt-get install qemu-system-x86)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "format = 1\nkernel = \"6.12\"\nrelease = \"6.12.1\"\ncreated = 5\nshell = \"/usr/bin/bash\"\ntools = [\"/usr/bin/bash\"]\npackage = \"p\"\n";

    #[test]
    fn the_dir_is_the_variable_else_the_default() {
        assert_eq!(dir(None), (PathBuf::from(DEFAULT_DIR), false));
        assert_eq!(dir(Some("".into())), (PathBuf::from(DEFAULT_DIR), false));
        assert_eq!(dir(Some("/k".into())), (PathBuf::from("/k"), true));
    }

    #[test]
    fn no_kit_says_where_it_looked_and_how_to_get_one() {
        let d = tempfile::tempdir().unwrap();
        let e = load(Path::new(DEFAULT_DIR).join("nonexistent").as_path(), false).unwrap_err();
        assert_eq!(
            e,
            format!(
                "vm-only: no guest can boot here: no guest kit at {DEFAULT_DIR}/nonexistent (install one: cargo xtask guest-kit, or set RUSH_GUEST_DIR)"
            )
        );
        let e = load(d.path(), true).unwrap_err();
        assert!(e.contains(&format!("no guest kit at {} (RUSH_GUEST_DIR)", d.path().display())), "{e}");
        assert!(e.contains(&format!("cargo xtask guest-kit --dir {}", d.path().display())), "{e}");
    }

    #[test]
    fn a_broken_or_incomplete_kit_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("kit.toml"), "format = \"x\"").unwrap();
        let e = load(d.path(), false).unwrap_err();
        assert!(e.starts_with(REFUSED) && e.contains("is not a guest kit's"), "{e}");
        std::fs::write(d.path().join("kit.toml"), GOOD.replace("format = 1", "format = 2")).unwrap();
        let e = load(d.path(), false).unwrap_err();
        assert!(
            e.contains("has format 2, this rush reads format 1 (reinstall it: cargo xtask guest-kit"),
            "{e}"
        );
        std::fs::write(d.path().join("kit.toml"), GOOD).unwrap();
        std::fs::write(d.path().join("vmlinuz"), "k").unwrap();
        let e = load(d.path(), false).unwrap_err();
        assert!(
            e.ends_with("has no initrd.cpio (reinstall it: cargo xtask guest-kit, or set RUSH_GUEST_DIR)"),
            "{e}"
        );
        std::fs::write(d.path().join("initrd.cpio"), "i").unwrap();
        let kit = load(d.path(), false).unwrap();
        assert_eq!((kit.meta.kernel.as_str(), kit.meta.shell.as_str()), ("6.12", "/usr/bin/bash"));
    }
}

//! What every file-confined agent gets besides its own tokens:
//! - the **baseline** (config `[files] baseline`): system directories and files programs
//!   need to load and run, and the read-only system data common tool chains read. An entry
//!   `~/REL:OPS` names a directory in the home of the user the agent runs as (from the
//!   password database, at spawn): toolchains installed per user, such as rustup's
//!   `~/.rustup` and `~/.cargo/bin`. Home entries are read and exec only, never the whole
//!   home, never `..`: the baseline must not let agents write the user's home, nor read
//!   what else is kept there (ssh keys, tokens).
//! - a **private temporary directory** (config `[files] private_tmp`): `<state_dir>-tmp/
//!   <agent>.XXXXXX`, made by the daemon at spawn (mode 0700, owned by the agent's user), granted
//!   read, write, create and delete (never exec), exported as `TMPDIR`, and removed when
//!   the agent exits. Agents never get the shared `/tmp`, where they could read each
//!   other's and the user's files.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rush_proto::{FileGrant, Ops};

/// How a baseline entry names the agent's home.
pub const HOME_PREFIX: &str = "~/";

/// Parses one baseline entry: `PATH:OPS` with PATH absolute or `~/REL`. Baseline tokens
/// never expire; home entries are read and exec only, below the home, without `..`.
pub fn parse_entry(entry: &str) -> Result<FileGrant, String> {
    let Some(rest) = entry.strip_prefix(HOME_PREFIX) else {
        let grant: FileGrant = entry.parse().map_err(|e: rush_proto::SpecError| e.to_string())?;
        if grant.ttl_secs.is_some() {
            return Err(format!("{entry:?}: baseline tokens cannot expire"));
        }
        return Ok(grant);
    };
    // Parsed as if absolute, then put back under `~`.
    let mut grant = parse_entry(&format!("/{rest}"))?;
    let rel = grant.path.strip_prefix("/").unwrap_or(&grant.path).to_owned();
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "{entry:?}: a home entry names a directory or file below the home (not the home itself, \
             which holds ssh keys and tokens; no `..`)"
        ));
    }
    if grant.ops.0 & !(Ops::READ.0 | Ops::EXEC.0) != 0 {
        return Err(format!(
            "{entry:?}: home entries are read and exec only: the baseline must not let agents write the \
             user's home (point caches elsewhere, or grant the agent the directory)"
        ));
    }
    grant.path = Path::new("~").join(rel);
    Ok(grant)
}

/// The baseline as the agent gets it: `~/` entries under `home` (dropped without one).
pub fn expand(baseline: &[FileGrant], home: Option<&Path>) -> Vec<FileGrant> {
    baseline
        .iter()
        .filter_map(|g| match g.path.strip_prefix("~") {
            Ok(rel) => {
                let home = home?;
                Some(FileGrant { path: home.join(rel), ..g.clone() })
            }
            Err(_) => Some(g.clone()),
        })
        .collect()
}

/// The home directory of `uid` in the password database; None for a user without one.
pub fn home_of(uid: u32) -> Option<PathBuf> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten()?;
    (user.dir.is_absolute() && user.dir != Path::new("/")).then_some(user.dir)
}

#[derive(Debug, thiserror::Error)]
pub enum TmpError {
    #[error("cannot make the agents' temporary directories' parent {path}")]
    Root { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a directory owned by root and writable only by it (a symlink, or made by someone \
         else): refusing to put agents' temporary directories there"
    )]
    RootUnsafe { path: PathBuf },
    #[error("cannot make the agent's temporary directory {path}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// The agents' private temporary directories: `<root>/<agent name>.XXXXXX`, one per spawn.
#[derive(Debug, Clone)]
pub struct PrivateTmp {
    root: PathBuf,
}

impl PrivateTmp {
    /// Beside the state dir (which agents may not enter), as `<state_dir>-tmp`.
    pub fn beside(state_dir: &Path) -> PrivateTmp {
        let name = state_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PrivateTmp { root: state_dir.with_file_name(format!("{name}-tmp")) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` is one of these directories.
    pub fn owns(&self, path: &Path) -> bool {
        path.parent() == Some(self.root.as_path())
    }

    /// The parent: made if missing (mode 0711: others may pass, not list), and refused
    /// unless it is a real directory only its owner (this daemon's user) may write.
    fn ensure_root(&self) -> Result<(), TmpError> {
        let root = &self.root;
        match std::fs::DirBuilder::new().mode(0o711).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(TmpError::Root { path: root.clone(), source }),
        }
        let meta = std::fs::symlink_metadata(root)
            .map_err(|source| TmpError::Root { path: root.clone(), source })?;
        let ours = meta.uid() == nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_dir() || !ours || meta.permissions().mode() & 0o022 != 0 {
            return Err(TmpError::RootUnsafe { path: root.clone() });
        }
        Ok(())
    }

    /// A new, empty directory for `agent` (mkdtemp: mode 0700), owned by `owner` (uid,
    /// gid) when given. Removed when the returned guard drops, unless kept.
    pub fn create(&self, agent: &str, owner: Option<(u32, u32)>) -> Result<TmpDir, TmpError> {
        self.ensure_root()?;
        let template = self.root.join(format!("{agent}.XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| TmpError::Dir { path: template.clone(), source: e.into() })?;
        let guard = TmpDir { dir: Some(dir.clone()) };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
                .map_err(|source| TmpError::Dir { path: dir.clone(), source })?;
        }
        Ok(guard)
    }

    /// `dir` (one of these, named by a restarted agent's carried token) made again, empty,
    /// if it is gone.
    pub fn recreate(&self, dir: &Path, owner: Option<(u32, u32)>) -> Result<TmpDir, TmpError> {
        self.ensure_root()?;
        let err = |source| TmpError::Dir { path: dir.to_owned(), source };
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(err)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        Ok(TmpDir { dir: Some(dir.to_owned()) })
    }

    /// Removes `dir` and what is in it, if it is one of these.
    pub fn remove(&self, dir: &Path) {
        if !self.owns(dir) {
            return;
        }
        if let Err(e) = remove_any(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "agent's temporary directory not removed");
        }
    }

    /// Removes the directories no running agent has (`live(dir)` false): what agents left
    /// when the daemon or the machine went down.
    pub fn sweep(&self, live: impl Fn(&Path) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            if !live(&e.path()) {
                self.remove(&e.path());
            }
        }
    }
}

/// An agent's new temporary directory, removed on drop unless [`TmpDir::keep`] was called
/// (the spawn succeeded: from then on the agent's exit removes it).
#[derive(Debug)]
pub struct TmpDir {
    dir: Option<PathBuf>,
}

impl TmpDir {
    pub fn path(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new(""))
    }

    pub fn keep(mut self) {
        self.dir = None;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = remove_any(&dir);
        }
    }
}

/// Removes `path` whatever it is (a directory tree, a file, a symlink: never followed).
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_entries_parse_below_the_home_read_and_exec_only() {
        let g = parse_entry("~/.rustup:read,exec").unwrap();
        assert_eq!(g.path, Path::new("~/.rustup"));
        assert_eq!(g.ops, Ops(Ops::READ.0 | Ops::EXEC.0));
        assert_eq!(parse_entry("~/.cargo/bin:read").unwrap().path, Path::new("~/.cargo/bin"));
        for bad in ["~/.npm:read,write", "~/.cache:create", "~/x:delete"] {
            assert!(parse_entry(bad).unwrap_err().contains("read and exec only"), "{bad}");
        }
        for bad in ["~/:read", "~/..:read", "~/a/../../etc:read"] {
            assert!(parse_entry(bad).unwrap_err().contains("below the home"), "{bad}");
        }
        assert!(parse_entry("~/.rustup:read:5m").unwrap_err().contains("cannot expire"));
        assert!(parse_entry("~root/.rustup:read").is_err(), "only the agent's own home");
        assert!(parse_entry("/usr:read,exec").is_ok());
        assert!(parse_entry("usr:read").is_err());
    }

    #[test]
    fn expansion_puts_home_entries_under_the_agents_home_or_drops_them() {
        let base: Vec<FileGrant> =
            ["/usr:read,exec", "~/.rustup:read,exec"].iter().map(|e| parse_entry(e).unwrap()).collect();
        let got = expand(&base, Some(Path::new("/home/alice")));
        let paths: Vec<&Path> = got.iter().map(|g| g.path.as_path()).collect();
        assert_eq!(paths, [Path::new("/usr"), Path::new("/home/alice/.rustup")]);
        let got = expand(&base, None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, Path::new("/usr"));
    }

    #[test]
    fn private_tmp_dirs_are_new_0700_and_removed() {
        let state = tempfile::tempdir().unwrap();
        let tmp = PrivateTmp::beside(&state.path().join("state"));
        assert_eq!(tmp.root(), state.path().join("state-tmp"));
        let a = tmp.create("coder", None).unwrap();
        let b = tmp.create("coder", None).unwrap();
        assert_ne!(a.path(), b.path(), "one per spawn");
        assert!(tmp.owns(a.path()) && a.path().file_name().unwrap().to_str().unwrap().starts_with("coder."));
        assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(tmp.root()).unwrap().permissions().mode() & 0o777, 0o711);
        // A failed spawn's directory goes with its guard; a kept one stays until removed.
        let gone = b.path().to_owned();
        drop(b);
        assert!(!gone.exists());
        let kept = a.path().to_owned();
        std::fs::write(kept.join("f"), "x").unwrap();
        a.keep();
        assert!(kept.join("f").exists());
        // A restart under new rules gets the same path back, made again if gone.
        tmp.remove(&kept);
        assert!(!kept.exists());
        tmp.recreate(&kept, None).unwrap().keep();
        assert!(kept.is_dir());
        let other = tmp.create("other", None).unwrap();
        let other_path = other.path().to_owned();
        other.keep();
        tmp.sweep(|d| d == other_path);
        assert!(!kept.exists() && other_path.exists());
        tmp.remove(Path::new("/etc"));
        assert!(Path::new("/etc").exists(), "only its own directories");
    }

    #[test]
    fn an_unsafe_parent_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("state-tmp");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let tmp = PrivateTmp::beside(&state.path().join("state"));
        assert!(matches!(tmp.create("a", None), Err(TmpError::RootUnsafe { .. })));
        std::fs::remove_dir(&root).unwrap();
        std::os::unix::fs::symlink(state.path(), &root).unwrap();
        assert!(matches!(tmp.create("a", None), Err(TmpError::RootUnsafe { .. })));
    }
}

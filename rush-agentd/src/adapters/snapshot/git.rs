//! The git backend, for machines without btrfs or loop devices: trees are plain directories
//! and a checkpoint is a commit of the whole tree on a hidden ref of a private repository.
//!
//! Each session has a bare repository at `<session_dir>/git`; checkpoint `id` is the commit
//! on `refs/rush/checkpoints/<id>`. Git is run with its own `GIT_DIR`, `GIT_WORK_TREE`, a
//! private `GIT_INDEX_FILE` and an emptied environment (no system or global config, `HOME`
//! an empty directory), so neither the user's git config nor a repository in their tree can
//! change what is recorded.
//!
//! What a checkpoint keeps, and what it does not (git's own limits):
//! - every regular file and symlink, untracked and git-ignored ones too: the files are
//!   listed by our own walk, not by `git add`, so no ignore rule applies;
//! - **no `.git` entry at any depth**: the user's own repository (and any nested one) is
//!   neither read as a repository nor recorded, and never written to. A nested repository's
//!   work tree files are recorded like any others, not as a submodule link;
//! - **no empty directories** (git has no object for them), and no fifos, sockets or device
//!   nodes;
//! - of the mode, only the executable bit (644 or 755, as git records it); a materialized
//!   tree gets the daemon's umask on top, and the owner is the daemon's user.
//!
//! Objects of removed checkpoints stay in the repository until it is garbage-collected.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendKind, Change, ChangeKind, Side, SnapshotError, StoreUsage};

const REF_PREFIX: &str = "refs/rush/checkpoints/";

/// Config given on every command line, so that a system config the emptied environment
/// still reaches (compiled-in defaults) cannot change results either.
const CONFIG: &[&str] = &[
    "core.autocrlf=false",
    "core.safecrlf=false",
    "core.fileMode=true",
    "core.symlinks=true",
    "core.ignoreCase=false",
    "core.precomposeUnicode=false",
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.looseCompression=1",
    "gc.auto=0",
    "safe.directory=*",
];

pub struct Git {
    root: PathBuf,
}

impl Git {
    /// A git backend whose sessions live under `root` (created if missing).
    pub fn new(root: &Path) -> Result<Git, SnapshotError> {
        let out = Command::new("git").arg("--version").stdin(Stdio::null()).output();
        if !out.is_ok_and(|o| o.status.success()) {
            return Err(SnapshotError::Unavailable("the git backend needs git in PATH".into()));
        }
        fs::create_dir_all(root).map_err(SnapshotError::io("creating the snapshot store", root))?;
        Ok(Git { root: root.to_path_buf() })
    }

    fn repo(&self, session_dir: &Path) -> Result<Repo, SnapshotError> {
        let dir = session_dir.join("git");
        let home = dir.join("rush-home");
        if !home.is_dir() {
            fs::create_dir_all(&dir).map_err(SnapshotError::io("creating the git repository", &dir))?;
            let repo = Repo { dir, home: home.clone(), full_hint: self.full_hint() };
            repo.git(None, None).args(["init", "--quiet", "--bare"]).arg(&repo.dir).run(None)?;
            // Created last: its presence says the repository is complete.
            fs::create_dir(&home).map_err(SnapshotError::io("creating the git repository", &home))?;
            return Ok(repo);
        }
        Ok(Repo { dir, home, full_hint: self.full_hint() })
    }

    fn full_hint(&self) -> String {
        format!("free space on the filesystem holding {}", self.root.display())
    }
}

/// A session's private repository.
struct Repo {
    dir: PathBuf,
    home: PathBuf,
    full_hint: String,
}

/// A temporary index file, removed on drop.
struct TempIndex(PathBuf);

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Repo {
    fn git(&self, work_tree: Option<&Path>, index: Option<&TempIndex>) -> GitCmd<'_> {
        let mut c = Command::new("git");
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_DIR", &self.dir)
            .env("GIT_AUTHOR_NAME", "rush")
            .env("GIT_AUTHOR_EMAIL", "rush@localhost")
            .env("GIT_COMMITTER_NAME", "rush")
            .env("GIT_COMMITTER_EMAIL", "rush@localhost")
            .env("LC_ALL", "C");
        for kv in CONFIG {
            c.args(["-c", kv]);
        }
        if let Some(w) = work_tree {
            c.env("GIT_WORK_TREE", w);
        }
        if let Some(i) = index {
            c.env("GIT_INDEX_FILE", &i.0);
        }
        GitCmd { cmd: c, full_hint: &self.full_hint }
    }

    fn temp_index(&self) -> TempIndex {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempIndex(self.dir.join(format!("rush-index-{}-{n}", std::process::id())))
    }

    /// Writes a tree object of everything in `tree` (see the module doc for what is kept).
    fn write_tree(&self, tree: &Path) -> Result<String, SnapshotError> {
        let mut paths = Vec::new();
        walk(tree, Path::new(""), &mut paths)?;
        let index = self.temp_index();
        self.git(Some(tree), Some(&index))
            .args(["update-index", "--add", "-z", "--stdin"])
            .run(Some(&paths))?;
        let out = self.git(None, Some(&index)).arg("write-tree").run(None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    fn resolve(&self, id: &str) -> Result<String, SnapshotError> {
        let r = format!("{REF_PREFIX}{id}^{{commit}}");
        match self.git(None, None).args(["rev-parse", "--verify", "--quiet", &r]).run(None) {
            Ok(out) => Ok(String::from_utf8_lossy(&out).trim().to_string()),
            Err(SnapshotError::Tool { .. }) => Err(SnapshotError::NoCheckpoint(id.to_string())),
            Err(e) => Err(e),
        }
    }

    fn side(&self, side: Side<'_>) -> Result<String, SnapshotError> {
        match side {
            Side::Checkpoint(id) => self.resolve(id),
            Side::Tree(path) => self.write_tree(path),
        }
    }
}

/// A git command line being built.
struct GitCmd<'a> {
    cmd: Command,
    full_hint: &'a str,
}

impl GitCmd<'_> {
    fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Self {
        self.cmd.args(a);
        self
    }

    /// Runs it, feeding `stdin` from a thread (git may write while it reads); returns stdout.
    fn run(mut self, stdin: Option<&[u8]>) -> Result<Vec<u8>, SnapshotError> {
        let sub = self.cmd.get_args().find(|a| !a.as_bytes().contains(&b'=') && *a != "-c");
        let tool = format!("git {}", sub.map(|s| s.to_string_lossy()).unwrap_or_default());
        self.cmd
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .map_err(|e| SnapshotError::Tool { tool: tool.clone(), stderr: e.to_string() })?;
        let pipe = child.stdin.take();
        let out = std::thread::scope(|s| {
            if let (Some(mut pipe), Some(data)) = (pipe, stdin) {
                // A write error means git exited early; its status and stderr tell why.
                s.spawn(move || pipe.write_all(data));
            }
            child.wait_with_output()
        })
        .map_err(|e| SnapshotError::Tool { tool: tool.clone(), stderr: e.to_string() })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No space left on device") {
            return Err(SnapshotError::Full { used: 0, size: 0, hint: self.full_hint.to_string() });
        }
        Err(SnapshotError::Tool { tool, stderr: format!("{stderr} ({})", out.status) })
    }
}

/// Appends `rel` paths of the regular files and symlinks under `root/rel`, NUL-terminated,
/// skipping every `.git` entry. Hand-written: 20 lines did not warrant a walkdir dependency.
fn walk(root: &Path, rel: &Path, out: &mut Vec<u8>) -> Result<(), SnapshotError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(SnapshotError::io("reading directory", &dir))? {
        let entry = entry.map_err(SnapshotError::io("reading directory", &dir))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let path = rel.join(entry.file_name());
        let ft = entry.file_type().map_err(SnapshotError::io("reading directory", &dir))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.extend_from_slice(path.as_os_str().as_bytes());
            out.push(0);
        }
    }
    Ok(())
}

fn statvfs_usage(path: &Path) -> Result<StoreUsage, SnapshotError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| SnapshotError::Io {
        what: "statvfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let frag = st.fragment_size();
    Ok(StoreUsage { used_bytes: (st.blocks() - st.blocks_free()) * frag, size_bytes: st.blocks() * frag })
}

impl Backend for Git {
    fn kind(&self) -> BackendKind {
        BackendKind::Git
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn create_tree(&self, path: &Path) -> Result<(), SnapshotError> {
        fs::create_dir(path).map_err(SnapshotError::io("creating tree", path))
    }

    fn clone_tree(&self, src: &Path, dest: &Path) -> Result<(), SnapshotError> {
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto", "--no-target-directory"])
            .arg(src)
            .arg(dest)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SnapshotError::Tool { tool: "cp".into(), stderr: e.to_string() })?;
        if out.status.success() {
            return Ok(());
        }
        let _ = fs::remove_dir_all(dest);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No space left on device") {
            let u = self.usage().unwrap_or_default();
            return Err(SnapshotError::Full {
                used: u.used_bytes,
                size: u.size_bytes,
                hint: self.full_hint(),
            });
        }
        Err(SnapshotError::Tool { tool: "cp".into(), stderr })
    }

    fn remove_tree(&self, path: &Path) -> Result<(), SnapshotError> {
        fs::remove_dir_all(path).map_err(SnapshotError::io("removing tree", path))
    }

    fn checkpoint(&self, session_dir: &Path, tree: &Path, id: &str) -> Result<Option<u64>, SnapshotError> {
        let repo = self.repo(session_dir)?;
        let t = repo.write_tree(tree).map_err(|e| self.fill_usage(e))?;
        let msg = format!("rush checkpoint {id}");
        let out = repo.git(None, None).args(["commit-tree", &t, "-m", &msg]).run(None)?;
        let commit = String::from_utf8_lossy(&out).trim().to_string();
        repo.git(None, None).args(["update-ref", &format!("{REF_PREFIX}{id}"), &commit]).run(None)?;
        Ok(None)
    }

    fn materialize(&self, session_dir: &Path, id: &str, dest: &Path) -> Result<(), SnapshotError> {
        let repo = self.repo(session_dir)?;
        let commit = repo.resolve(id)?;
        fs::create_dir(dest).map_err(SnapshotError::io("creating tree", dest))?;
        let index = repo.temp_index();
        let r = repo.git(None, Some(&index)).args(["read-tree", &commit]).run(None).and_then(|_| {
            repo.git(Some(dest), Some(&index)).args(["checkout-index", "--all", "--force"]).run(None)
        });
        if let Err(e) = r {
            let _ = fs::remove_dir_all(dest);
            return Err(self.fill_usage(e));
        }
        Ok(())
    }

    fn remove_checkpoint(&self, session_dir: &Path, id: &str) -> Result<(), SnapshotError> {
        let repo = self.repo(session_dir)?;
        repo.resolve(id)?;
        repo.git(None, None).args(["update-ref", "-d", &format!("{REF_PREFIX}{id}")]).run(None)?;
        Ok(())
    }

    fn diff(&self, session_dir: &Path, a: Side<'_>, b: Side<'_>) -> Result<Vec<Change>, SnapshotError> {
        let repo = self.repo(session_dir)?;
        let (a, b) = (repo.side(a)?, repo.side(b)?);
        let out = repo
            .git(None, None)
            .args(["diff-tree", "-r", "--no-renames", "--no-commit-id", "--name-status", "-z", &a, &b])
            .run(None)?;
        let mut changes = Vec::new();
        let mut fields = out.split(|&c| c == 0).filter(|f| !f.is_empty());
        while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
            let kind = match status.first() {
                Some(b'A') => ChangeKind::Added,
                Some(b'D') => ChangeKind::Removed,
                _ => ChangeKind::Modified,
            };
            changes.push(Change { kind, path: String::from_utf8_lossy(path).into_owned() });
        }
        changes.sort_by(|x, y| x.path.cmp(&y.path).then(x.kind.cmp(&y.kind)));
        changes.dedup();
        Ok(changes)
    }

    fn usage(&self) -> Result<StoreUsage, SnapshotError> {
        statvfs_usage(&self.root)
    }
}

impl Git {
    /// `Full` as git reports it has no numbers: add them.
    fn fill_usage(&self, e: SnapshotError) -> SnapshotError {
        match e {
            SnapshotError::Full { hint, .. } => {
                let u = self.usage().unwrap_or_default();
                SnapshotError::Full { used: u.used_bytes, size: u.size_bytes, hint }
            }
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn change(kind: ChangeKind, path: &str) -> Change {
        Change { kind, path: path.into() }
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode()
    }

    #[test]
    fn checkpoint_diff_materialize() {
        let tmp = tempfile::tempdir().unwrap();
        let git = Git::new(&tmp.path().join("store")).unwrap();
        let session = git.root().join("s1");
        fs::create_dir(&session).unwrap();
        let tree = session.join("t");
        git.create_tree(&tree).unwrap();
        fs::create_dir_all(tree.join("src/deep")).unwrap();
        fs::write(tree.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(tree.join("src/deep/data.bin"), [0u8, 1, 2, 255, b'\r', b'\n']).unwrap();
        fs::write(tree.join("gone.txt"), "bye").unwrap();
        fs::write(tree.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::write(tree.join("name with space\\x"), "s").unwrap();
        fs::write(tree.join(".gitignore"), "target/\n*.log\n").unwrap();
        fs::create_dir(tree.join("target")).unwrap();
        fs::write(tree.join("target/out.o"), "ignored but kept").unwrap();
        fs::write(tree.join("x.log"), "log").unwrap();
        // The user's own repository, and a nested one: never recorded, never touched.
        fs::create_dir_all(tree.join(".git/objects")).unwrap();
        fs::write(tree.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        fs::create_dir_all(tree.join("vendor/lib/.git")).unwrap();
        fs::write(tree.join("vendor/lib/.git/HEAD"), "nested").unwrap();
        fs::write(tree.join("vendor/lib/lib.c"), "int x;").unwrap();
        let user_git_before = fs::read_dir(tree.join(".git")).unwrap().count();

        assert_eq!(git.checkpoint(&session, &tree, "c1").unwrap(), None);
        assert_eq!(fs::read_dir(tree.join(".git")).unwrap().count(), user_git_before);
        assert_eq!(git.diff(&session, Side::Checkpoint("c1"), Side::Tree(&tree)).unwrap(), vec![]);

        fs::write(tree.join("src/main.rs"), "fn main() { loop {} }\n").unwrap();
        fs::write(tree.join("new.txt"), "new").unwrap();
        fs::remove_file(tree.join("gone.txt")).unwrap();
        fs::set_permissions(tree.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("src/main.rs", tree.join("link")).unwrap();
        fs::write(tree.join("target/out.o"), "rebuilt").unwrap();

        let want = vec![
            change(ChangeKind::Removed, "gone.txt"),
            change(ChangeKind::Added, "link"),
            change(ChangeKind::Added, "new.txt"),
            change(ChangeKind::Modified, "run.sh"),
            change(ChangeKind::Modified, "src/main.rs"),
            change(ChangeKind::Modified, "target/out.o"),
        ];
        assert_eq!(git.diff(&session, Side::Checkpoint("c1"), Side::Tree(&tree)).unwrap(), want);
        git.checkpoint(&session, &tree, "c2").unwrap();
        assert_eq!(git.diff(&session, Side::Checkpoint("c1"), Side::Checkpoint("c2")).unwrap(), want);

        // c2 restored exactly: bytes, exec bits, symlinks; nothing of .git.
        let back = session.join("back");
        git.materialize(&session, "c2", &back).unwrap();
        assert!(!back.join(".git").exists() && !back.join("vendor/lib/.git").exists());
        for f in [
            "src/main.rs",
            "src/deep/data.bin",
            "run.sh",
            "new.txt",
            "name with space\\x",
            ".gitignore",
            "target/out.o",
            "x.log",
            "vendor/lib/lib.c",
        ] {
            assert_eq!(fs::read(back.join(f)).unwrap(), fs::read(tree.join(f)).unwrap(), "{f}");
            assert_eq!(mode(&back.join(f)) & 0o111, mode(&tree.join(f)) & 0o111, "{f}");
        }
        assert_ne!(mode(&back.join("run.sh")) & 0o111, 0);
        assert_eq!(fs::read_link(back.join("link")).unwrap(), Path::new("src/main.rs"));
        assert!(!back.join("gone.txt").exists());
        assert_eq!(git.diff(&session, Side::Checkpoint("c2"), Side::Tree(&back)).unwrap(), vec![]);

        // An older checkpoint, a clone, removal.
        let old = session.join("old");
        git.materialize(&session, "c1", &old).unwrap();
        assert_eq!(fs::read(old.join("gone.txt")).unwrap(), b"bye");
        let clone = session.join("clone");
        git.clone_tree(&old, &clone).unwrap();
        assert_eq!(git.diff(&session, Side::Tree(&old), Side::Tree(&clone)).unwrap(), vec![]);
        git.remove_checkpoint(&session, "c1").unwrap();
        assert!(matches!(
            git.materialize(&session, "c1", &session.join("x")),
            Err(SnapshotError::NoCheckpoint(id)) if id == "c1"
        ));
        assert!(!session.join("x").exists());
        git.remove_tree(&clone).unwrap();
        assert!(!clone.exists());
        assert!(git.usage().unwrap().size_bytes > 0);
    }
}

//! Conditional write tokens: the agent writes to a worktree (a copy of the granted
//! directory) instead of the directory itself; a command, run confined in the worktree,
//! decides on commit whether the changes reach the directory or are discarded.
//!
//! The worktree is a sibling of the directory (`.NAME.rush-AGENT-ID`): on one filesystem
//! with it, so that file copies (`copy_file_range`) can share extents on btrfs/xfs, and
//! outside the daemon's state dir, which agents may not enter. Making it, promoting and
//! discarding are the same one-way sync (directory → new worktree, worktree → directory,
//! directory → worktree), written by hand because it must not follow symlinks, must keep
//! owners and modes, must replace each file atomically (write a temporary, rename it over)
//! and must report what it changed. A sync interrupted by a
//! crash leaves each file either old or new, never torn (not the tree as a whole: the
//! time-travel store is what gives whole-tree atomicity).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConditionError {
    #[error("a conditional token needs a directory; {0} is not one")]
    NotADirectory(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ConditionError + use<> {
    let path = path.to_owned();
    move |source| ConditionError::Io { op, path, source }
}

/// What a sync changed in its destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: u32,
    pub changed: u32,
    pub removed: u32,
}

/// Copies `original` (a directory) to a fresh worktree beside it, owned like it.
pub fn create_worktree(original: &Path, agent: &str, id: u64) -> Result<PathBuf, ConditionError> {
    let meta = fs::metadata(original).map_err(io_err("stat", original))?;
    if !meta.is_dir() {
        return Err(ConditionError::NotADirectory(original.to_owned()));
    }
    let name =
        original.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
    let parent = original.parent().unwrap_or(Path::new("/"));
    let worktree = parent.join(format!(".{name}.rush-{agent}-{id}"));
    if worktree.exists() {
        fs::remove_dir_all(&worktree).map_err(io_err("removing the stale worktree", &worktree))?;
    }
    fs::create_dir(&worktree).map_err(io_err("mkdir", &worktree))?;
    let made = own_like(&worktree, &meta).and_then(|()| sync(original, &worktree));
    if let Err(e) = made {
        let _ = fs::remove_dir_all(&worktree);
        return Err(e);
    }
    Ok(worktree)
}

/// Makes `dst` (a directory) hold what `src` holds: new and changed entries copied (each
/// file through a temporary renamed over the old one), entries `src` lacks removed.
/// Symlinks are copied as links, never followed; other special files are skipped.
pub fn sync(src: &Path, dst: &Path) -> Result<Changes, ConditionError> {
    let mut changes = Changes::default();
    sync_dir(src, dst, &mut changes)?;
    Ok(changes)
}

fn sync_dir(src: &Path, dst: &Path, changes: &mut Changes) -> Result<(), ConditionError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(src).map_err(io_err("listing", src))? {
        let entry = entry.map_err(io_err("listing", src))?;
        names.push(entry.file_name());
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        let existing = fs::symlink_metadata(&to).ok();
        let ft = meta.file_type();
        if ft.is_dir() {
            match &existing {
                Some(e) if e.is_dir() => {}
                Some(_) => {
                    remove(&to)?;
                    changes.changed += 1;
                    fs::create_dir(&to).map_err(io_err("mkdir", &to))?;
                }
                None => {
                    changes.added += 1;
                    fs::create_dir(&to).map_err(io_err("mkdir", &to))?;
                }
            }
            own_like(&to, &meta)?;
            sync_dir(&from, &to, changes)?;
        } else if ft.is_file() || ft.is_symlink() {
            let same = existing.as_ref().is_some_and(|e| same_entry(&from, &meta, &to, e));
            if same {
                continue;
            }
            match &existing {
                Some(e) if e.is_dir() => {
                    remove(&to)?;
                    changes.changed += 1;
                }
                Some(_) => changes.changed += 1,
                None => changes.added += 1,
            }
            replace(&from, &meta, &to)?;
        }
    }
    for entry in fs::read_dir(dst).map_err(io_err("listing", dst))? {
        let entry = entry.map_err(io_err("listing", dst))?;
        if !names.contains(&entry.file_name()) {
            remove(&entry.path())?;
            changes.removed += 1;
        }
    }
    Ok(())
}

/// Same type, mode, size and bytes (or link target).
fn same_entry(from: &Path, fm: &fs::Metadata, to: &Path, tm: &fs::Metadata) -> bool {
    if fm.file_type() != tm.file_type() || fm.mode() != tm.mode() {
        return false;
    }
    if fm.file_type().is_symlink() {
        return fs::read_link(from).ok() == fs::read_link(to).ok();
    }
    fm.len() == tm.len() && fs::read(from).ok() == fs::read(to).ok()
}

/// `to` becomes a copy of `from` in one rename.
fn replace(from: &Path, meta: &fs::Metadata, to: &Path) -> Result<(), ConditionError> {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.rush-sync"));
    let _ = fs::remove_file(&tmp);
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(io_err("readlink", from))?;
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err("symlink", &tmp))?;
    } else {
        // fs::copy uses copy_file_range: extents are shared where the filesystem can.
        fs::copy(from, &tmp).map_err(io_err("copying", from))?;
        let file = fs::File::open(&tmp).map_err(io_err("opening", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    own_like(&tmp, meta)?;
    fs::rename(&tmp, to).map_err(io_err("renaming into place", to))
}

/// `path` gets the owner (and, unless a symlink, the mode) of `meta`: the agent owns its
/// worktree as it owns the directory, and promoted files keep the agent's modes.
fn own_like(path: &Path, meta: &fs::Metadata) -> Result<(), ConditionError> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())).map_err(io_err("chown", path))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", path))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), ConditionError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(io_err("removing", path))
    } else {
        fs::remove_file(path).map_err(io_err("removing", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        fs::create_dir_all(ws.join("src/deep")).unwrap();
        fs::write(ws.join("a.txt"), "a").unwrap();
        fs::write(ws.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(ws.join("src/deep/gone.rs"), "x").unwrap();
        std::os::unix::fs::symlink("a.txt", ws.join("link")).unwrap();
        t
    }

    #[test]
    fn worktree_is_a_sibling_copy_and_sync_promotes_exactly_the_changes() {
        let t = tree();
        let ws = t.path().join("ws");
        let wt = create_worktree(&ws, "bot", 7).unwrap();
        assert_eq!(wt, t.path().join(".ws.rush-bot-7"));
        assert_eq!(fs::read_to_string(wt.join("src/main.rs")).unwrap(), "fn main() {}");
        assert_eq!(fs::read_link(wt.join("link")).unwrap(), Path::new("a.txt"));
        assert_eq!(sync(&wt, &ws).unwrap(), Changes::default(), "a fresh copy changes nothing");

        fs::write(wt.join("src/main.rs"), "fn main() { changed() }").unwrap();
        fs::write(wt.join("new.txt"), "new").unwrap();
        fs::remove_dir_all(wt.join("src/deep")).unwrap();
        fs::remove_file(wt.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", wt.join("link")).unwrap();
        // Nothing reaches the original before the sync.
        assert_eq!(fs::read_to_string(ws.join("src/main.rs")).unwrap(), "fn main() {}");

        let c = sync(&wt, &ws).unwrap();
        assert_eq!(c, Changes { added: 1, changed: 2, removed: 1 });
        assert_eq!(fs::read_to_string(ws.join("src/main.rs")).unwrap(), "fn main() { changed() }");
        assert_eq!(fs::read_to_string(ws.join("new.txt")).unwrap(), "new");
        assert!(!ws.join("src/deep").exists());
        assert_eq!(
            fs::read_link(ws.join("link")).unwrap(),
            Path::new("/etc/passwd"),
            "links copied, not followed"
        );
        assert_eq!(sync(&wt, &ws).unwrap(), Changes::default(), "a second sync has nothing to do");
    }

    #[test]
    fn discarding_is_the_sync_the_other_way() {
        let t = tree();
        let ws = t.path().join("ws");
        let wt = create_worktree(&ws, "bot", 1).unwrap();
        fs::write(wt.join("a.txt"), "bad").unwrap();
        fs::write(wt.join("junk"), "junk").unwrap();
        let c = sync(&ws, &wt).unwrap();
        assert_eq!(c, Changes { added: 0, changed: 1, removed: 1 });
        assert_eq!(fs::read_to_string(wt.join("a.txt")).unwrap(), "a");
        assert_eq!(fs::read_to_string(ws.join("a.txt")).unwrap(), "a");
    }

    #[test]
    fn bad_input_is_named() {
        let t = tree();
        let file = t.path().join("ws/a.txt");
        let e = create_worktree(&file, "bot", 1).unwrap_err().to_string();
        assert!(e.contains("a.txt") && e.contains("directory"), "{e}");
        let e = create_worktree(&t.path().join("missing"), "bot", 1).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}

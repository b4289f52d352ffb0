//! A new workspace's untracked state: files `.rushinclude` names (gitignore syntax, matched
//! by git itself: `ls-files --others --ignored --exclude-from`), copied; ignored build
//! directories (`target/`, `node_modules/`, ...), cloned with `cp --reflink=always` so
//! the copy shares the source's extents, or copied with a warning where the filesystem
//! cannot share them. `cp` runs as the repository's owner, so the copies are theirs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rush_proto::workspace::{CloneMethod, StateCopy};

use crate::adapters::git::Git;

pub(super) fn clone_state(
    git: &Git,
    root: &Path,
    workspace: &Path,
    state_dirs: &[String],
    warnings: &mut Vec<String>,
) -> StateCopy {
    let mut copy = StateCopy::default();
    let include = root.join(".rushinclude");
    if include.is_file() {
        match git.run([
            "ls-files".as_ref(),
            "-z".as_ref(),
            "--others".as_ref(),
            "--ignored".as_ref(),
            "--exclude-from".as_ref(),
            include.as_os_str(),
        ]) {
            Ok(out) => {
                let files: Vec<PathBuf> = out
                    .split('\0')
                    .filter(|f| !f.is_empty() && !f.starts_with(".rush/"))
                    .map(PathBuf::from)
                    .collect();
                for f in &files {
                    copy.bytes += std::fs::symlink_metadata(root.join(f)).map(|m| m.len()).unwrap_or(0);
                }
                for chunk in files.chunks(500) {
                    if let Err(e) = cp(git, root, workspace, chunk, "auto") {
                        warnings.push(format!(".rushinclude files not all copied: {e}"));
                    }
                }
                copy.included = files;
            }
            Err(e) => warnings.push(format!(".rushinclude not applied: {e}")),
        }
    }
    let dirs = match git.run(["ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"])
    {
        Ok(out) => out
            .split('\0')
            .filter_map(|d| d.strip_suffix('/'))
            .filter(|d| !d.starts_with(".rush"))
            .filter(|d| Path::new(d).file_name().is_some_and(|n| state_dirs.iter().any(|s| n == s.as_str())))
            .map(PathBuf::from)
            .collect::<Vec<_>>(),
        Err(e) => {
            warnings.push(format!("ignored build state not looked for: {e}"));
            Vec::new()
        }
    };
    let mut method = None;
    // One file first: a `cp --reflink=always` of a whole tree the filesystem cannot clone
    // fails file by file, leaving an empty file for each (a 100k-file node_modules).
    let probe = if dirs.is_empty() { Ok(()) } else { reflink_probe(git, root, workspace, &dirs) };
    for d in &dirs {
        let bytes = disk_usage_apparent(&root.join(d));
        let cloned = match &probe {
            Ok(()) => cp(git, root, workspace, std::slice::from_ref(d), "always"),
            Err(why) => Err(why.clone()),
        };
        let used = match cloned {
            Ok(()) => CloneMethod::Reflink,
            Err(why) => {
                let _ = std::fs::remove_dir_all(workspace.join(d));
                match cp(git, root, workspace, std::slice::from_ref(d), "never") {
                    Ok(()) => {
                        warnings.push(format!(
                            "{}: copied, not cloned ({} MiB): this filesystem cannot share extents ({why})",
                            d.display(),
                            bytes >> 20
                        ));
                        CloneMethod::Copy
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(workspace.join(d));
                        warnings.push(format!("{}: not copied: {e}", d.display()));
                        continue;
                    }
                }
            }
        };
        // One plain copy makes the whole clone a copy.
        method = Some(match (method, used) {
            (Some(CloneMethod::Copy), _) | (_, CloneMethod::Copy) => CloneMethod::Copy,
            _ => CloneMethod::Reflink,
        });
        copy.bytes += bytes;
        copy.cloned.push(d.clone());
    }
    copy.method = method;
    copy
}

/// Whether a file of the build directories clones into the workspace: Ok, or cp's reason.
fn reflink_probe(git: &Git, root: &Path, workspace: &Path, dirs: &[PathBuf]) -> Result<(), String> {
    let Some(file) = dirs.iter().find_map(|d| first_file(&root.join(d))) else { return Ok(()) };
    let target = workspace.join(".rush-reflink-probe");
    let out = git
        .at(root)
        .command("cp")
        .args(["--reflink=always", "--"])
        .arg(&file)
        .arg(&target)
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    let _ = std::fs::remove_file(&target);
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    // cp's reason without its paths: "failed to clone ...: Operation not supported".
    let reason = said.lines().next().unwrap_or("cp failed").rsplit(": ").next().unwrap_or("cp failed");
    Err(format!("reflink: {}", reason.trim()))
}

/// A regular file under `dir` (not following links), the first found.
fn first_file(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_file() {
                return Some(e.path());
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    None
}

/// `cp -a --parents --reflink=MODE -t WORKSPACE PATHS...` in `root`, as the owner.
fn cp(git: &Git, root: &Path, workspace: &Path, paths: &[PathBuf], reflink: &str) -> Result<(), String> {
    let mut c = git.at(root).command("cp");
    c.args(["-a", "--parents", &format!("--reflink={reflink}"), "-t"]).arg(workspace).arg("--").args(paths);
    let out = c.output().map_err(|e| format!("cannot run cp: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(said.lines().next().unwrap_or("cp failed").trim().to_owned())
}

/// Bytes the files under `dir` take on disk (blocks), not following links.
pub(super) fn disk_usage(dir: &Path) -> u64 {
    walk(dir, &|m| m.blocks() * 512)
}

fn disk_usage_apparent(dir: &Path) -> u64 {
    walk(dir, &|m| if m.is_file() { m.len() } else { 0 })
}

// By hand: a few lines over std::fs, where a crate would add a dependency for one loop.
fn walk(dir: &Path, size: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            total += size(&m);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Removes `objects/??/tmp_obj_*` files older than `age` from the shared object store.
/// An agent's git writes an object as a temporary file, links it to its name and unlinks
/// the temporary; agents hold no delete right on the store (so they cannot empty it), so
/// their temporaries stay behind, each a copy of an object. Old enough, no git is still
/// writing one. How many went.
pub(super) fn sweep_object_temporaries(common: &Path, age: std::time::Duration) -> usize {
    let mut removed = 0;
    let Ok(dirs) = std::fs::read_dir(common.join("objects")) else { return 0 };
    for d in dirs.flatten() {
        let name = d.file_name();
        let name = name.to_string_lossy();
        if name.len() != 2 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else { continue };
        for f in files.flatten() {
            if !f.file_name().to_string_lossy().starts_with("tmp_obj_") {
                continue;
            }
            let old = f
                .path()
                .symlink_metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age);
            if old && std::fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_object_temporaries_are_swept() {
        let common = tempfile::tempdir().unwrap();
        let dir = common.path().join("objects/ab");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(common.path().join("objects/pack")).unwrap();
        let old = dir.join("tmp_obj_old");
        let fresh = dir.join("tmp_obj_fresh");
        let object = dir.join("cdef0123");
        let pack_tmp = common.path().join("objects/pack/tmp_obj_pack");
        for f in [&old, &fresh, &object, &pack_tmp] {
            std::fs::write(f, b"x").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for f in [&old, &object, &pack_tmp] {
            std::fs::File::options().write(true).open(f).unwrap().set_modified(hour_ago).unwrap();
        }
        assert_eq!(sweep_object_temporaries(common.path(), std::time::Duration::from_secs(600)), 1);
        assert!(!old.exists());
        assert!(fresh.exists() && object.exists() && pack_tmp.exists());
    }
}

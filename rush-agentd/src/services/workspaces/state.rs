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
    for d in &dirs {
        let bytes = disk_usage_apparent(&root.join(d));
        let cloned = cp(git, root, workspace, std::slice::from_ref(d), "always");
        let used = match cloned {
            Ok(()) => CloneMethod::Reflink,
            Err(why) => {
                let _ = std::fs::remove_dir_all(workspace.join(d));
                match cp(git, root, workspace, std::slice::from_ref(d), "never") {
                    Ok(()) => {
                        warnings.push(format!(
                            "{}: copied, not cloned ({} MB): this filesystem cannot share extents ({why})",
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

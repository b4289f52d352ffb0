//! Git, as the `git` binary run for a user: worktrees, refs, merges. Nothing here reads or
//! writes git's files itself; every change is a git command, so git's own locking and
//! checks apply (and a daemon killed mid-command leaves what git leaves: a command that
//! finishes or a lock file git reports).
//!
//! The binary, not libgit2: worktrees, `merge --squash` and `rebase` are porcelain that
//! libgit2 does not have, and the user's own config (merge drivers, hooks, identity)
//! applies only when git itself runs.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    /// git ran and failed: its command line and the first line of what it said.
    #[error("git {args} failed: {message}")]
    Failed { args: String, message: String, status: i32 },
}

impl GitError {
    pub fn status(&self) -> Option<i32> {
        match self {
            GitError::Failed { status, .. } => Some(*status),
            GitError::Spawn(_) => None,
        }
    }
}

/// Who git runs as, and in which directory.
#[derive(Debug, Clone)]
pub struct Git {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    home: Option<PathBuf>,
    /// GIT_DIR, GIT_COMMON_DIR, GIT_WORK_TREE when set by [`Git::pinned_worktree`].
    pinned: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Git {
    pub fn new(dir: &Path, uid: u32) -> Git {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
        Git {
            dir: dir.to_owned(),
            uid,
            gid: user.as_ref().map_or(uid, |u| u.gid.as_raw()),
            home: user.map(|u| u.dir),
            pinned: None,
        }
    }

    /// The user's home directory, from the user database.
    pub fn home(&self) -> Option<&Path> {
        self.home.as_deref()
    }

    /// The same user in another directory.
    pub fn at(&self, dir: &Path) -> Git {
        Git { dir: dir.to_owned(), pinned: None, ..self.clone() }
    }

    /// Git in a worktree someone else can write (an agent's): its git directory, the
    /// common directory and the work tree given here, never read from the worktree's
    /// `.git` file or its `commondir` (which the agent could point at a config of its own,
    /// with a `core.fsmonitor` command git would run as this user), and no fsmonitor.
    pub fn pinned_worktree(&self, git_dir: &Path, common: &Path, work_tree: &Path) -> Git {
        let mut g = self.at(work_tree);
        g.pinned = Some((git_dir.to_owned(), common.to_owned(), work_tree.to_owned()));
        g
    }

    /// A command run as the user (never as root for someone else's repository: files git
    /// makes are theirs), with their HOME so their config applies, and no prompts.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_EDITOR", "true")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(home) = &self.home {
            c.env("HOME", home);
        }
        if let Some((git_dir, common, work_tree)) = &self.pinned {
            c.env("GIT_DIR", git_dir)
                .env("GIT_COMMON_DIR", common)
                .env("GIT_WORK_TREE", work_tree)
                .env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", "core.fsmonitor")
                .env("GIT_CONFIG_VALUE_0", "false")
                .env("GIT_CONFIG_KEY_1", "core.hooksPath")
                .env("GIT_CONFIG_VALUE_1", "/dev/null");
        }
        if self.uid != nix::unistd::geteuid().as_raw() {
            // std drops the supplementary groups too (setgroups(0) when root sets a uid).
            c.uid(self.uid).gid(self.gid);
        }
        c
    }

    pub fn output<I, S>(&self, args: I) -> Result<Output, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command("git");
        c.args(args);
        c.output().map_err(GitError::Spawn)
    }

    /// Runs git; its stdout, or the failure with what it said.
    pub fn run<I, S>(&self, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.output(&args)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(failed(&args, &out))
    }

    /// Runs git; its first line of stdout, trimmed.
    pub fn line<I, S>(&self, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Ok(self.run(args)?.lines().next().unwrap_or("").trim().to_owned())
    }

    /// Whether a git command succeeds (a question: `merge-base --is-ancestor`).
    pub fn test<I, S>(&self, args: I) -> Result<bool, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.output(&args)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(failed(&args, &out)),
        }
    }

    /// The commit `rev` names, or None.
    pub fn commit_of(&self, rev: &str) -> Result<Option<String>, GitError> {
        let out = self.output([
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &format!("{rev}^{{commit}}"),
        ])?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }

    /// Paths with changes not committed (`status --porcelain`), untracked included.
    pub fn dirty_paths(&self) -> Result<Vec<String>, GitError> {
        let out = self.run(["status", "--porcelain=v1", "-z", "--untracked-files=all"])?;
        Ok(porcelain_paths(&out))
    }
}

/// The paths of `git status --porcelain=v1 -z` output (a rename's second name skipped).
pub fn porcelain_paths(out: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut fields = out.split('\0');
    while let Some(entry) = fields.next() {
        if entry.len() < 4 {
            continue;
        }
        let (code, path) = entry.split_at(3);
        paths.push(path.to_owned());
        if code.starts_with('R') || code.starts_with('C') {
            fields.next();
        }
    }
    paths
}

fn failed<S: AsRef<OsStr>>(args: &[S], out: &Output) -> GitError {
    let said = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let message = said
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("hint:"))
        .unwrap_or("(no message)")
        .trim_start_matches("fatal: ")
        .trim_start_matches("error: ")
        .to_owned();
    let args = args.iter().map(|a| a.as_ref().to_string_lossy()).collect::<Vec<_>>().join(" ");
    GitError::Failed { args, message, status: out.status.code().unwrap_or(-1) }
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    pub path: PathBuf,
    pub head: Option<String>,
    /// `refs/heads/...` checked out there, None when detached or bare.
    pub branch: Option<String>,
}

pub fn parse_worktrees(out: &str) -> Vec<Worktree> {
    let mut list = Vec::new();
    for block in out.split("\n\n") {
        let mut w = Worktree { path: PathBuf::new(), head: None, branch: None };
        for line in block.lines() {
            if let Some(p) = line.strip_prefix("worktree ") {
                w.path = PathBuf::from(p);
            } else if let Some(h) = line.strip_prefix("HEAD ") {
                w.head = Some(h.to_owned());
            } else if let Some(b) = line.strip_prefix("branch ") {
                w.branch = Some(b.to_owned());
            }
        }
        if !w.path.as_os_str().is_empty() {
            list.push(w);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_paths_skip_a_renames_source() {
        let out = " M a.txt\0R  new.txt\0old.txt\0?? dir/x\0";
        assert_eq!(porcelain_paths(out), ["a.txt", "new.txt", "dir/x"]);
    }

    #[test]
    fn worktree_list_is_parsed() {
        let out = "worktree /r\nHEAD abc\nbranch refs/heads/main\n\nworktree /r/.rush/workspaces/a\nHEAD def\ndetached\n\n";
        let w = parse_worktrees(out);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].branch.as_deref(), Some("refs/heads/main"));
        assert_eq!(w[1].branch, None);
        assert_eq!(w[1].path, PathBuf::from("/r/.rush/workspaces/a"));
    }
}

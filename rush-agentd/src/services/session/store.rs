//! Where session trees live: the workspace's own btrfs, a loop-mounted btrfs image, or
//! git; chosen per session, reported by `doctor`.

use super::*;
use crate::core::Fault;
use crate::services::session::SessionError;
use rush_proto::SessionStore;

pub(super) fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The mount point of the filesystem `path` is on (longest matching mount in mountinfo).
pub(super) fn mount_point(path: &Path) -> Result<PathBuf, SessionError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    let canon = std::fs::canonicalize(path).map_err(io_err("resolving", path))?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            PathBuf::from(std::ffi::OsString::from_vec(crate::adapters::snapshot::btrfs::unescape(
                m.as_bytes(),
            )))
        })
        .filter(|m| canon.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .ok_or_else(|| err(Fault::Internal, format!("no mount point found for {}", path.display())))
}

impl Sessions {
    /// The image stays in the state dir (agents never reach it); the trees are mounted
    /// outside it, since the guard keeps agents out of the state dir and they work in them.
    pub(super) fn loop_paths(&self) -> (PathBuf, PathBuf) {
        (self.state_dir.join("snapshots.img"), self.config.base_dir(&self.state_dir).join("btrfs"))
    }

    pub(super) fn open_backend(
        &self,
        kind: BackendKind,
        root: &Path,
    ) -> Result<Arc<dyn Backend>, SnapshotError> {
        let key = format!("{}:{}", kind.as_str(), root.display());
        if let Some(b) = self.backends.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(b.clone());
        }
        let backend: Arc<dyn Backend> = match kind {
            BackendKind::Btrfs => Arc::new(crate::adapters::snapshot::btrfs::Btrfs::on_host(root)?),
            BackendKind::BtrfsLoop => {
                let (image, mountpoint) = self.loop_paths();
                Arc::new(crate::adapters::snapshot::btrfs::Btrfs::on_loop(
                    &image,
                    &mountpoint,
                    self.config.image_bytes(),
                )?)
            }
            BackendKind::Git => Arc::new(crate::adapters::snapshot::git::Git::new(root)?),
        };
        self.backends.lock().unwrap_or_else(|p| p.into_inner()).insert(key, backend.clone());
        Ok(backend)
    }

    pub(super) fn backend_of(&self, info: &SessionInfo) -> Result<Arc<dyn Backend>, SnapshotError> {
        let kind = match info.backend {
            SessionStore::Btrfs => BackendKind::Btrfs,
            SessionStore::BtrfsLoop => BackendKind::BtrfsLoop,
            SessionStore::Git => BackendKind::Git,
        };
        let root = info.live.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
        self.open_backend(kind, root)
    }

    /// The store a new session whose workspace is `workspace` goes to, per `[snapshot] store`.
    pub(super) fn choose_store(&self, workspace: &Path) -> Result<(BackendKind, PathBuf), SessionError> {
        let on_btrfs = nix::sys::statfs::statfs(workspace)
            .map(|s| s.filesystem_type().0 == BTRFS_SUPER_MAGIC)
            .unwrap_or(false);
        let loop_ok = Path::new("/dev/loop-control").exists() && which("mkfs.btrfs").is_some();
        let host_root = || mount_point(workspace).map(|m| m.join(".rush-sessions"));
        let git_root = || self.config.base_dir(&self.state_dir).join("git");
        let loop_root = || self.loop_paths().1;
        match self.config.store {
            StoreChoice::Auto if on_btrfs => Ok((BackendKind::Btrfs, host_root()?)),
            StoreChoice::Auto if loop_ok => Ok((BackendKind::BtrfsLoop, loop_root())),
            StoreChoice::Auto => Ok((BackendKind::Git, git_root())),
            StoreChoice::Btrfs if on_btrfs => Ok((BackendKind::Btrfs, host_root()?)),
            StoreChoice::Btrfs => Err(err(
                Fault::Unsupported,
                format!(
                    "snapshot.store is \"btrfs\" but workspace {} is not on a btrfs filesystem",
                    workspace.display()
                ),
            )),
            StoreChoice::BtrfsLoop if loop_ok => Ok((BackendKind::BtrfsLoop, loop_root())),
            StoreChoice::BtrfsLoop => Err(err(
                Fault::Unsupported,
                "snapshot.store is \"btrfs-loop\" but this machine has no loop devices (/dev/loop-control) \
                 or no mkfs.btrfs (btrfs-progs)",
            )),
            StoreChoice::Git if which("git").is_some() => Ok((BackendKind::Git, git_root())),
            StoreChoice::Git => {
                Err(err(Fault::Unsupported, "snapshot.store is \"git\" but git is not installed"))
            }
        }
    }

    /// The store new sessions would use, and why: for `rush doctor`.
    pub fn store_report(&self) -> (bool, String) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match self.choose_store(&cwd) {
            Ok((BackendKind::Btrfs, root)) => {
                (true, format!("btrfs snapshots on the workspace's own filesystem ({})", root.display()))
            }
            Ok((BackendKind::BtrfsLoop, root)) => (
                true,
                format!(
                    "btrfs snapshots on a loop-mounted image at {} ({} sparse; workspaces on btrfs use their own)",
                    root.display(),
                    self.config.image_size
                ),
            ),
            Ok((BackendKind::Git, _)) => (
                true,
                "git commits on hidden refs (no btrfs, no loop devices): checkpoints copy every file".into(),
            ),
            Err(e) => (false, e.message),
        }
    }

    /// An ephemeral daemon (tests, demos) leaves nothing mounted: the loop store is
    /// unmounted (its loop device goes with it). A normal daemon keeps it mounted, so that
    /// workspaces stay reachable while it is down.
    pub fn unmount_loop_store(&self) {
        let (_, mountpoint) = self.loop_paths();
        let mounted = crate::adapters::snapshot::btrfs::is_mount_point(&mountpoint).unwrap_or(false);
        if mounted && let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %mountpoint.display(), error = %e, "snapshot store not unmounted");
        }
    }
}

/// A snapshot backend as the protocol names it.
pub(super) fn store_of(kind: BackendKind) -> SessionStore {
    match kind {
        BackendKind::Btrfs => SessionStore::Btrfs,
        BackendKind::BtrfsLoop => SessionStore::BtrfsLoop,
        BackendKind::Git => SessionStore::Git,
    }
}

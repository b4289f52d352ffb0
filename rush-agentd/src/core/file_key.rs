//! Files as the kernel programs key them: (superblock or btrfs subvolume device, inode),
//! and the resolution of a path or an open fd to that key.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot grant {path}: {source}")]
    Stat { path: PathBuf, source: std::io::Error },
    #[error("cannot grant {path}: its mount (id {mnt_id}) is not in /proc/self/mountinfo")]
    Mount { path: PathBuf, mnt_id: u64 },
    #[error("path {0} must be absolute")]
    Relative(PathBuf),
    #[error(
        "cannot grant {0}: it is on btrfs, and the LSM programs were loaded without btrfs's type \
         information (the btrfs module was not loaded when rush-agentd started), so they cannot \
         tell its subvolumes apart: load the module (modprobe btrfs) and restart rush-agentd"
    )]
    BtrfsUnkeyed(PathBuf),
}

/// An inode as the file hooks identify it: `inode->i_sb->s_dev` (the kernel's dev_t,
/// `MAJOR << 20 | MINOR`) and `inode->i_ino`.
///
/// On btrfs, `dev` is the inode's subvolume's anonymous device instead (what stat()
/// reports there): the superblock's is shared by every subvolume and snapshot, whose inode
/// numbers repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u32,
    pub ino: u64,
}

impl FileKey {
    /// The key of a stat()ed file: `st_dev` re-encoded as the kernel's dev_t. Equals the
    /// kernel's `i_sb->s_dev` on filesystems whose stat reports the superblock's device
    /// (ext4, xfs, tmpfs, ...), not on btrfs subvolumes or overlayfs.
    pub fn from_metadata(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey { dev: kernel_dev(meta.dev()), ino: meta.ino() }
    }

    /// [`FileKey::from_metadata`] of `path` (following symlinks).
    pub fn of_path(path: &std::path::Path) -> std::io::Result<FileKey> {
        std::fs::metadata(path).map(|m| FileKey::from_metadata(&m))
    }
}

/// A userspace dev_t (glibc encoding, what stat returns) as the kernel's internal dev_t
/// (`MAJOR << 20 | MINOR`), the encoding of `super_block::s_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

/// How paths resolve to keys on this daemon: a value decided once the kernel programs are
/// loaded (whether they could read btrfs's types), handed to whoever resolves paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKeys {
    /// The file programs key btrfs inodes by subvolume. If not, they deny every btrfs file
    /// (never alias subvolumes) and resolving a btrfs path is refused.
    pub btrfs_keyed: bool,
}

impl Default for FileKeys {
    fn default() -> FileKeys {
        FileKeys { btrfs_keyed: true }
    }
}

impl FileKeys {
    /// The inode `path` names (symlinks followed), keyed as the kernel sees it.
    pub fn key(self, path: &Path) -> Result<FileKey, KeyError> {
        self.resolve(path).map(|r| r.key)
    }

    /// The inode `path` names (symlinks followed) and the mount it is in.
    pub fn resolve(self, path: &Path) -> Result<Resolved, KeyError> {
        let c = absolute_cpath(path)?;
        statx_key(self, path, libc::AT_FDCWD, &c, 0)
    }

    /// The inode open as `fd`; `label` names it in errors.
    pub fn resolve_fd(self, label: &Path, fd: std::os::fd::BorrowedFd<'_>) -> Result<Resolved, KeyError> {
        use std::os::fd::AsRawFd;
        statx_key(self, label, fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
    }
}

/// An inode as the file programs identify it, and where the path met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub key: FileKey,
    /// statx's STATX_MNT_ID: the kernel's `mount::mnt_id`.
    pub mnt_id: u32,
    pub is_dir: bool,
}

/// (superblock dev, inode) of `path`, whatever the filesystem: what the guard programs
/// compare protected directories with.
pub fn superblock_key(path: &Path) -> Result<FileKey, KeyError> {
    let c = absolute_cpath(path)?;
    let stx = statx(path, libc::AT_FDCWD, &c, 0)?;
    Ok(FileKey { dev: mount_dev_of(path, stx.stx_mnt_id)?, ino: stx.stx_ino })
}

fn absolute_cpath(path: &Path) -> Result<std::ffi::CString, KeyError> {
    if !path.is_absolute() {
        return Err(KeyError::Relative(path.to_owned()));
    }
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| KeyError::Stat {
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn statx(
    path: &Path,
    dirfd: libc::c_int,
    name: &std::ffi::CStr,
    flags: libc::c_int,
) -> Result<libc::statx, KeyError> {
    // SAFETY: statx(2) writes only into `stx`, which is a zeroed, correctly sized struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID;
    // SAFETY: `name` is NUL-terminated; `stx` is valid for writes.
    let r = unsafe { libc::statx(dirfd, name.as_ptr(), flags, mask, &mut stx) };
    if r != 0 {
        return Err(KeyError::Stat { path: path.to_owned(), source: std::io::Error::last_os_error() });
    }
    Ok(stx)
}

/// The key: on btrfs, statx's device, which is the subvolume's anonymous device (the
/// kernel programs read the same from the inode's btrfs root); elsewhere the superblock's
/// dev from /proc/self/mountinfo (`sb->s_dev`; `st_dev` can differ, e.g. on overlayfs).
fn statx_key(
    keys: FileKeys,
    path: &Path,
    dirfd: libc::c_int,
    name: &std::ffi::CStr,
    flags: libc::c_int,
) -> Result<Resolved, KeyError> {
    let stx = statx(path, dirfd, name, flags)?;
    // SAFETY: fstatfs/statfs write only into `sfs`, a zeroed, correctly sized struct.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as for statx: a NUL-terminated name or an fd, and a writable buffer.
    let r = unsafe {
        if flags & libc::AT_EMPTY_PATH != 0 {
            libc::fstatfs(dirfd, &mut sfs)
        } else {
            libc::statfs(name.as_ptr(), &mut sfs)
        }
    };
    if r != 0 {
        return Err(KeyError::Stat { path: path.to_owned(), source: std::io::Error::last_os_error() });
    }
    let dev = if sfs.f_type == libc::BTRFS_SUPER_MAGIC {
        if !keys.btrfs_keyed {
            return Err(KeyError::BtrfsUnkeyed(path.to_owned()));
        }
        (stx.stx_dev_major << 20) | (stx.stx_dev_minor & 0xfffff)
    } else {
        mount_dev_of(path, stx.stx_mnt_id)?
    };
    Ok(Resolved {
        key: FileKey { dev, ino: stx.stx_ino },
        mnt_id: stx.stx_mnt_id as u32,
        is_dir: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    })
}

fn mount_dev_of(path: &Path, mnt_id: u64) -> Result<u32, KeyError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| KeyError::Stat { path: path.to_owned(), source })?;
    mount_dev(&mountinfo, mnt_id).ok_or(KeyError::Mount { path: path.to_owned(), mnt_id })
}

/// The kernel dev_t (MAJOR << 20 | MINOR) of the mount with this id.
fn mount_dev(mountinfo: &str, mnt_id: u64) -> Option<u32> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let id: u64 = f.next()?.parse().ok()?;
        if id != mnt_id {
            return None;
        }
        let (major, minor) = f.nth(1)?.split_once(':')?;
        Some((major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // glibc: makedev(8, 1); kernel: 8 << 20 | 1.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }

    #[test]
    fn file_keys_come_from_mountinfo() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n35 22 8:17 / /srv rw - xfs /dev/sdb1 rw\n";
        assert_eq!(mount_dev(info, 35), Some((8 << 20) | 17));
        assert_eq!(mount_dev(info, 99), None);
        let keys = FileKeys::default();
        let k = keys.key(Path::new("/")).unwrap();
        assert!(k.ino > 0);
        assert!(keys.key(Path::new("relative")).is_err());
        let e = keys.key(Path::new("/nonexistent/x")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x"), "{e}");
    }
}

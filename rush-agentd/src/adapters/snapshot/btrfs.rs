//! The btrfs backend: trees are subvolumes, checkpoints read-only snapshots at
//! `<session_dir>/checkpoints/<id>`, clones and materialized trees writable snapshots, diffs
//! btrfs's own tree comparison (`btrfs send --no-data | btrfs receive --dump`).
//!
//! Subvolumes are made and deleted with the three btrfs ioctls directly rather than through
//! the `libbtrfsutil` crate: its -sys crate runs bindgen at build time (libclang plus a
//! bindgen/clang-sys build tree on every clean build) and links libbtrfsutil.so, a runtime
//! library the daemon and the VM payload would then have to carry, for three ioctls whose
//! argument structs are fixed kernel ABI.
//!
//! The store lives either on a btrfs the host already has ([`Btrfs::on_host`]) or on an image
//! file under the daemon's state dir, loop-mounted on first use ([`Btrfs::on_loop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use super::{Backend, BackendKind, Change, ChangeKind, Side, SnapshotError, StoreUsage};

/// `struct btrfs_ioctl_vol_args` (linux/btrfs.h): BTRFS_PATH_NAME_MAX is 4087.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`: the size/qgroup_inherit union is `unused[4]`, the name
/// union BTRFS_SUBVOL_NAME_MAX (4039) + 1.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const _: () = assert!(size_of::<VolArgs>() == 4096 && size_of::<VolArgsV2>() == 4096);

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

nix::ioctl_write_ptr!(ioc_subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);

pub struct Btrfs {
    root: PathBuf,
    kind: BackendKind,
}

impl Btrfs {
    /// A store at `root`, a directory (created if missing) on a btrfs the host has.
    pub fn on_host(root: &Path) -> Result<Btrfs, SnapshotError> {
        fs::create_dir_all(root).map_err(SnapshotError::io("creating the snapshot store", root))?;
        let st = nix::sys::statfs::statfs(root).map_err(|e| SnapshotError::Io {
            what: "statfs",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        if st.filesystem_type() != nix::sys::statfs::BTRFS_SUPER_MAGIC {
            return Err(SnapshotError::Unavailable(format!("{} is not on a btrfs", root.display())));
        }
        Ok(Btrfs { root: root.to_path_buf(), kind: BackendKind::Btrfs })
    }

    /// A store on a btrfs in the image file `image`, loop-mounted at `mountpoint`: created
    /// (sparse, `size_bytes`) and formatted on first use, reused when a previous daemon left
    /// it mounted there, grown when `size_bytes` is larger than the image (never shrunk).
    ///
    /// Mounting uses `mount -o loop` rather than loop ioctls: util-linux picks a free loop
    /// device and attaches it race-free (LOOP_CONFIGURE), with autoclear so unmounting
    /// detaches it; this runs once per daemon start, so the process spawn costs nothing
    /// that matters, while the hand-written ioctl sequence would be ~60 lines with races.
    pub fn on_loop(image: &Path, mountpoint: &Path, size_bytes: u64) -> Result<Btrfs, SnapshotError> {
        fs::create_dir_all(mountpoint).map_err(SnapshotError::io("creating the mountpoint", mountpoint))?;
        let mountpoint = fs::canonicalize(mountpoint)
            .map_err(SnapshotError::io("resolving the mountpoint", mountpoint))?;
        let store = Btrfs { root: mountpoint.clone(), kind: BackendKind::BtrfsLoop };
        if !image.exists() {
            // Formatted under a temporary name, so a crash never leaves an unformatted image.
            let tmp = image.with_extension("tmp");
            if let Some(dir) = image.parent() {
                fs::create_dir_all(dir).map_err(SnapshotError::io("creating the image's directory", dir))?;
            }
            let f = File::create(&tmp).map_err(SnapshotError::io("creating the image", &tmp))?;
            f.set_len(size_bytes).map_err(SnapshotError::io("sizing the image", &tmp))?;
            drop(f);
            run(Command::new("mkfs.btrfs").arg("-q").arg(&tmp), "mkfs.btrfs")?;
            fs::rename(&tmp, image).map_err(SnapshotError::io("renaming the image", image))?;
        }
        let grow =
            fs::metadata(image).map_err(SnapshotError::io("reading the image", image))?.len() < size_bytes;
        if grow {
            let f = File::options()
                .write(true)
                .open(image)
                .map_err(SnapshotError::io("opening the image", image))?;
            f.set_len(size_bytes).map_err(SnapshotError::io("growing the image", image))?;
        }
        match mounted_at(&mountpoint)? {
            Some(m) if m.fstype == "btrfs" => {
                if grow {
                    // The loop device keeps the size it was attached with until told.
                    run(Command::new("losetup").arg("--set-capacity").arg(&m.source), "losetup")?;
                }
            }
            Some(m) => {
                return Err(SnapshotError::Unavailable(format!(
                    "{} is already a mountpoint of {} ({}), not of the snapshot image",
                    mountpoint.display(),
                    m.source,
                    m.fstype
                )));
            }
            None => {
                run(
                    Command::new("mount").args(["-t", "btrfs", "-o", "loop"]).arg(image).arg(&mountpoint),
                    "mount",
                )?;
            }
        }
        if grow {
            run(
                Command::new("btrfs").args(["filesystem", "resize", "max"]).arg(&mountpoint),
                "btrfs resize",
            )?;
        }
        Ok(store)
    }

    fn full_hint(&self) -> String {
        match self.kind {
            BackendKind::BtrfsLoop => format!(
                "raise `[snapshot] image_size` in the daemon's config (the image at {} grows at the next start), \
                 or remove checkpoints",
                self.root.display()
            ),
            _ => format!("free space on the btrfs holding {}, or remove checkpoints", self.root.display()),
        }
    }

    fn full(&self) -> SnapshotError {
        let u = self.usage().unwrap_or_default();
        SnapshotError::Full { used: u.used_bytes, size: u.size_bytes, hint: self.full_hint() }
    }

    /// An ioctl's error: `Full` for ENOSPC, else the errno with what and where.
    fn errno(&self, what: &'static str, path: &Path) -> impl FnOnce(Errno) -> SnapshotError {
        move |e| match e {
            Errno::ENOSPC => self.full(),
            e => SnapshotError::Io { what, path: path.to_path_buf(), source: e.into() },
        }
    }

    /// Like [`run_with_stdin`], with ENOSPC as `Full`.
    fn tool(&self, cmd: &mut Command, tool: &str) -> Result<Vec<u8>, SnapshotError> {
        run_with_stdin(cmd, tool).map_err(|e| match e {
            SnapshotError::Tool { ref stderr, .. } if stderr.contains("No space left on device") => {
                self.full()
            }
            e => e,
        })
    }

    fn create_subvolume(&self, path: &Path) -> Result<(), SnapshotError> {
        let (parent, name) = parent_and_name(path)?;
        let mut args = VolArgs { fd: 0, name: [0; 4088] };
        fill_name(&mut args.name, name, path)?;
        // SAFETY: `parent` is an open directory fd and `args` a fully initialized
        // btrfs_ioctl_vol_args that outlives the call.
        unsafe { ioc_subvol_create(parent.as_raw_fd(), &args) }
            .map_err(self.errno("creating subvolume", path))?;
        Ok(())
    }

    fn snapshot(&self, src: &Path, dest: &Path, readonly: bool) -> Result<(), SnapshotError> {
        let src_dir = File::open(src).map_err(SnapshotError::io("opening subvolume", src))?;
        let (parent, name) = parent_and_name(dest)?;
        let mut args = VolArgsV2 {
            fd: src_dir.as_raw_fd().into(),
            transid: 0,
            flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
            unused: [0; 4],
            name: [0; 4040],
        };
        fill_name(&mut args.name, name, dest)?;
        // SAFETY: `parent` is an open directory fd, `args` a fully initialized
        // btrfs_ioctl_vol_args_v2 whose `fd` (src_dir) stays open for the call.
        unsafe { ioc_snap_create_v2(parent.as_raw_fd(), &args) }
            .map_err(self.errno("snapshotting into", dest))?;
        Ok(())
    }

    /// Deletes the subvolume at `path`, or removes it recursively if it is a plain directory.
    fn delete(&self, path: &Path) -> Result<(), SnapshotError> {
        let md = fs::symlink_metadata(path).map_err(SnapshotError::io("reading", path))?;
        if !md.is_dir() || md.ino() != BTRFS_FIRST_FREE_OBJECTID {
            return fs::remove_dir_all(path).map_err(SnapshotError::io("removing tree", path));
        }
        let (parent, name) = parent_and_name(path)?;
        let mut args = VolArgs { fd: 0, name: [0; 4088] };
        fill_name(&mut args.name, name, path)?;
        // SAFETY: as in create_subvolume.
        unsafe { ioc_snap_destroy(parent.as_raw_fd(), &args) }
            .map_err(self.errno("deleting subvolume", path))?;
        Ok(())
    }

    fn checkpoint_path(session_dir: &Path, id: &str) -> PathBuf {
        session_dir.join("checkpoints").join(id)
    }

    fn existing_checkpoint(session_dir: &Path, id: &str) -> Result<PathBuf, SnapshotError> {
        let p = Self::checkpoint_path(session_dir, id);
        if fs::symlink_metadata(&p).is_err() {
            return Err(SnapshotError::NoCheckpoint(id.to_string()));
        }
        Ok(p)
    }

    /// The read-only subvolume for a diff side: the checkpoint itself, or a temporary
    /// snapshot of a tree, deleted when `temps` drops.
    fn diff_side(
        &self,
        session_dir: &Path,
        side: Side<'_>,
        temps: &mut Temps<'_>,
    ) -> Result<PathBuf, SnapshotError> {
        match side {
            Side::Checkpoint(id) => Self::existing_checkpoint(session_dir, id),
            Side::Tree(tree) => {
                static N: AtomicU64 = AtomicU64::new(0);
                let dir = session_dir.join("checkpoints");
                fs::create_dir_all(&dir).map_err(SnapshotError::io("creating", &dir))?;
                // Checkpoint ids never start with '.', so this cannot clash with one.
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = dir.join(format!(".diff-{}-{n}", std::process::id()));
                self.snapshot(tree, &p, true)?;
                temps.0.push(p.clone());
                Ok(p)
            }
        }
    }
}

/// Temporary read-only snapshots, deleted on drop.
struct Temps<'a>(Vec<PathBuf>, &'a Btrfs);

impl Drop for Temps<'_> {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = self.1.delete(p);
        }
    }
}

fn parent_and_name(path: &Path) -> Result<(File, &[u8]), SnapshotError> {
    let invalid = || SnapshotError::Io {
        what: "subvolume path",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return Err(invalid()) };
    let dir = File::open(parent).map_err(SnapshotError::io("opening directory", parent))?;
    Ok((dir, name.as_bytes()))
}

fn fill_name(buf: &mut [u8], name: &[u8], path: &Path) -> Result<(), SnapshotError> {
    // One byte stays NUL: the kernel reads a C string.
    if name.len() >= buf.len() || name.contains(&0) {
        return Err(SnapshotError::Io {
            what: "subvolume name",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    buf[..name.len()].copy_from_slice(name);
    Ok(())
}

/// Runs a tool with no input; its stdout, or `Tool` with its stderr.
fn run(cmd: &mut Command, tool: &str) -> Result<Vec<u8>, SnapshotError> {
    run_with_stdin(cmd.stdin(Stdio::null()), tool)
}

fn run_with_stdin(cmd: &mut Command, tool: &str) -> Result<Vec<u8>, SnapshotError> {
    let out = cmd.output().map_err(|e| SnapshotError::Tool { tool: tool.into(), stderr: e.to_string() })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(SnapshotError::Tool { tool: tool.into(), stderr: format!("{stderr} ({})", out.status) })
}

struct Mount {
    fstype: String,
    source: String,
}

/// Whether anything is mounted at `mountpoint` (the session layer unmounts the loop store).
pub(crate) fn is_mount_point(mountpoint: &Path) -> Result<bool, SnapshotError> {
    mounted_at(mountpoint).map(|m| m.is_some())
}

/// What is mounted at `mountpoint` (the topmost mount), from /proc/self/mountinfo.
fn mounted_at(mountpoint: &Path) -> Result<Option<Mount>, SnapshotError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read(info).map_err(SnapshotError::io("reading", info))?;
    let mut found = None;
    for line in text.split(|&c| c == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else { continue };
        if fields.len() < sep + 3
            || fields.len() < 5
            || unescape(fields[4]) != mountpoint.as_os_str().as_bytes()
        {
            continue;
        }
        found = Some(Mount {
            fstype: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
        });
    }
    Ok(found)
}

/// Undoes the backslash escapes of mountinfo (`\040`) and `btrfs receive --dump`
/// (`\ `, `\\`, `\n`, ..., `\ooo`).
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 == s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let c = s[i + 1];
        let octal = s.get(i + 1..i + 4).filter(|o| o.iter().all(|d| (b'0'..=b'7').contains(d)));
        if let Some(o) = octal {
            out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(match c {
            b'a' => 7,
            b'b' => 8,
            b'e' => 27,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            c => c,
        });
        i += 2;
    }
    out
}

/// Splits a `receive --dump` line into its tokens: spaces separate them unless escaped.
fn tokens(line: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += if line[i] == b'\\' { 2 } else { 1 };
        }
        if start < line.len() {
            out.push(unescape(&line[start..i.min(line.len())]));
        }
    }
    out
}

/// Replays a `btrfs receive --dump` stream to tell, per inode it touches, where it was in
/// the parent (`orig`, None for a new one) and where it ends up. Send renames inodes
/// through temporary `o<ino>-<gen>-<n>` names and only names the directory in a directory
/// rename, so paths are tracked through renames, including their descendants.
#[derive(Default)]
struct Replay {
    entries: Vec<Entry>,
    /// Current path → entry, for every path the stream touched.
    cur: BTreeMap<Vec<u8>, usize>,
}

struct Entry {
    orig: Option<Vec<u8>>,
    modified: bool,
}

impl Replay {
    fn push(&mut self, path: &[u8], orig: Option<Vec<u8>>) -> usize {
        self.entries.push(Entry { orig, modified: false });
        self.cur.insert(path.to_vec(), self.entries.len() - 1);
        self.entries.len() - 1
    }

    fn resolve(&mut self, path: &[u8]) -> usize {
        if let Some(&i) = self.cur.get(path) {
            return i;
        }
        // Not touched yet: where it was is where its nearest touched ancestor was.
        let mut end = path.len();
        while let Some(slash) = path[..end].iter().rposition(|&c| c == b'/') {
            end = slash;
            if let Some(&i) = self.cur.get(&path[..end]) {
                let orig = self.entries[i].orig.as_ref().map(|o| [o, &path[end..]].concat());
                return self.push(path, orig);
            }
        }
        self.push(path, Some(path.to_vec()))
    }

    fn rename(&mut self, from: &[u8], to: &[u8]) {
        self.resolve(from);
        let prefix = [from, b"/"].concat();
        let moved: Vec<Vec<u8>> = self
            .cur
            .range(from.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(from))
            .filter(|k| k.as_slice() == from || k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in moved {
            let i = self.cur.remove(&k).expect("listed");
            self.cur.insert([to, &k[from.len()..]].concat(), i);
        }
    }

    fn line(&mut self, line: &[u8], prefix: &[u8]) {
        let t = tokens(line);
        let (Some(cmd), Some(path)) = (t.first(), t.get(1)) else { return };
        let rel = |p: &[u8]| -> Option<Vec<u8>> {
            let r = p.strip_prefix(prefix)?;
            let r = r.strip_prefix(b"/").unwrap_or(r);
            (!r.is_empty()).then(|| r.to_vec())
        };
        let Some(path) = rel(path) else { return };
        match cmd.as_slice() {
            b"mkfile" | b"mkdir" | b"mknod" | b"mkfifo" | b"mksock" | b"symlink" | b"link" => {
                self.push(&path, None);
            }
            b"rename" => {
                let dest = t.iter().find_map(|k| k.strip_prefix(b"dest=")).and_then(rel);
                if let Some(dest) = dest {
                    self.rename(&path, &dest);
                }
            }
            b"unlink" | b"rmdir" => {
                self.resolve(&path);
                self.cur.remove(&path);
            }
            b"snapshot" | b"subvol" => {}
            _ => {
                let i = self.resolve(&path);
                self.entries[i].modified = true;
            }
        }
    }

    /// The changes, with moved directories' contents listed from the trees on disk.
    fn changes(self, a: &Path, b: &Path) -> Result<Vec<Change>, SnapshotError> {
        let mut fin: Vec<Option<&[u8]>> = vec![None; self.entries.len()];
        for (p, &i) in &self.cur {
            fin[i] = Some(p);
        }
        let (mut added, mut removed, mut modified) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let is_dir = |root: &Path, p: &[u8]| {
            fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(p))).is_ok_and(|m| m.is_dir())
        };
        for (e, f) in self.entries.iter().zip(fin) {
            match (&e.orig, f) {
                (Some(o), Some(f)) if o.as_slice() != f => {
                    removed.insert(o.clone());
                    added.insert(f.to_vec());
                    if is_dir(a, o) {
                        list(a, o, &mut removed)?;
                    }
                    if is_dir(b, f) {
                        list(b, f, &mut added)?;
                    }
                }
                (Some(_), Some(f)) if e.modified && !is_dir(b, f) => {
                    modified.insert(f.to_vec());
                }
                (Some(o), None) => {
                    removed.insert(o.clone());
                }
                (None, Some(f)) => {
                    added.insert(f.to_vec());
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for p in added.union(&removed).chain(modified.iter()).collect::<BTreeSet<_>>() {
            let kind = match (added.contains(p), removed.contains(p)) {
                (true, false) => ChangeKind::Added,
                (false, true) => ChangeKind::Removed,
                _ => ChangeKind::Modified,
            };
            out.push(Change { kind, path: String::from_utf8_lossy(p).into_owned() });
        }
        Ok(out)
    }
}

/// Adds every path under `root/rel` (relative to `root`) to `out`.
fn list(root: &Path, rel: &[u8], out: &mut BTreeSet<Vec<u8>>) -> Result<(), SnapshotError> {
    let dir = root.join(std::ffi::OsStr::from_bytes(rel));
    for entry in fs::read_dir(&dir).map_err(SnapshotError::io("reading directory", &dir))? {
        let entry = entry.map_err(SnapshotError::io("reading directory", &dir))?;
        let p = [rel, b"/", entry.file_name().as_bytes()].concat();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            list(root, &p, out)?;
        }
        out.insert(p);
    }
    Ok(())
}

impl Backend for Btrfs {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn create_tree(&self, path: &Path) -> Result<(), SnapshotError> {
        self.create_subvolume(path)
    }

    fn clone_tree(&self, src: &Path, dest: &Path) -> Result<(), SnapshotError> {
        self.snapshot(src, dest, false)
    }

    fn remove_tree(&self, path: &Path) -> Result<(), SnapshotError> {
        self.delete(path)
    }

    fn checkpoint(&self, session_dir: &Path, tree: &Path, id: &str) -> Result<Option<u64>, SnapshotError> {
        let dir = session_dir.join("checkpoints");
        fs::create_dir_all(&dir).map_err(SnapshotError::io("creating", &dir))?;
        self.snapshot(tree, &dir.join(id), true)?;
        // Its own size needs quotas (qgroups), which cost on every write: not known cheaply.
        Ok(None)
    }

    fn materialize(&self, session_dir: &Path, id: &str, dest: &Path) -> Result<(), SnapshotError> {
        self.snapshot(&Self::existing_checkpoint(session_dir, id)?, dest, false)
    }

    fn remove_checkpoint(&self, session_dir: &Path, id: &str) -> Result<(), SnapshotError> {
        self.delete(&Self::existing_checkpoint(session_dir, id)?)
    }

    fn diff(&self, session_dir: &Path, a: Side<'_>, b: Side<'_>) -> Result<Vec<Change>, SnapshotError> {
        let mut temps = Temps(Vec::new(), self);
        let a = self.diff_side(session_dir, a, &mut temps)?;
        let b = self.diff_side(session_dir, b, &mut temps)?;
        let mut send = Command::new("btrfs")
            .args(["send", "--no-data", "-q", "-p"])
            .arg(&a)
            .arg(&b)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SnapshotError::Tool { tool: "btrfs send".into(), stderr: e.to_string() })?;
        let stream = send.stdout.take().expect("piped");
        let dump =
            self.tool(Command::new("btrfs").args(["receive", "--dump"]).stdin(stream), "btrfs receive");
        let mut err = String::new();
        send.stderr.take().expect("piped").read_to_string(&mut err).ok();
        let status = send
            .wait()
            .map_err(|e| SnapshotError::Tool { tool: "btrfs send".into(), stderr: e.to_string() })?;
        // receive's failure first: it is why send would have got SIGPIPE.
        let dump = dump?;
        // receive stops reading at the stream's end command; send can still be writing its
        // last bytes then and die of SIGPIPE. A stream receive accepted whole is complete.
        if !status.success() && status.signal() != Some(libc::SIGPIPE) {
            return Err(SnapshotError::Tool {
                tool: "btrfs send".into(),
                stderr: format!("{} ({status})", err.trim()),
            });
        }
        // Paths in the dump are `./<name of b>/...`.
        let prefix = [b"./", b.file_name().expect("a subvolume path").as_bytes()].concat();
        let mut replay = Replay::default();
        for line in dump.split(|&c| c == b'\n') {
            replay.line(line, &prefix);
        }
        replay.changes(&a, &b)
    }

    fn usage(&self) -> Result<StoreUsage, SnapshotError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| SnapshotError::Io {
            what: "statvfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        let frag = st.fragment_size();
        Ok(StoreUsage { used_bytes: (st.blocks() - st.blocks_free()) * frag, size_bytes: st.blocks() * frag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn change(kind: ChangeKind, path: &str) -> Change {
        Change { kind, path: path.into() }
    }

    /// Root and loop devices, or a reason to skip; a skip panics under RUSH_TEST_STRICT=1.
    fn can_run() -> bool {
        let why = if !nix::unistd::geteuid().is_root() {
            "not root"
        } else if !Path::new("/dev/loop-control").exists() {
            "no /dev/loop-control"
        } else if Command::new("mkfs.btrfs").arg("--version").output().is_err() {
            "no mkfs.btrfs"
        } else {
            return true;
        };
        if std::env::var_os("RUSH_TEST_STRICT").is_some_and(|v| v == "1") {
            panic!("btrfs loop test cannot run: {why} (RUSH_TEST_STRICT=1)");
        }
        eprintln!("SKIP btrfs loop test: {why}");
        false
    }

    /// Unmounts the store and detaches its loop device, however the test ends.
    struct LoopGuard {
        image: PathBuf,
        mountpoint: PathBuf,
    }

    impl Drop for LoopGuard {
        fn drop(&mut self) {
            while mounted_at(&self.mountpoint).ok().flatten().is_some() {
                if !Command::new("umount").arg(&self.mountpoint).status().is_ok_and(|s| s.success()) {
                    break;
                }
            }
            if let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(dev) = line.split(':').next() {
                        let _ = Command::new("losetup").args(["-d", dev]).status();
                    }
                }
            }
        }
    }

    fn store(tmp: &Path, size: u64) -> (Btrfs, LoopGuard) {
        let (image, mountpoint) = (tmp.join("store.img"), tmp.join("mnt"));
        let guard = LoopGuard { image: image.clone(), mountpoint: mountpoint.clone() };
        (Btrfs::on_loop(&image, &mountpoint, size).expect("loop store"), guard)
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn loop_store_checkpoint_diff_materialize() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (b, _guard) = store(tmp.path(), 512 * MIB);
        assert_eq!(b.kind(), BackendKind::BtrfsLoop);
        let session = b.root().join("s1");
        fs::create_dir_all(session.join("timelines")).unwrap();
        let tree = session.join("timelines/main");
        b.create_tree(&tree).unwrap();
        fs::create_dir_all(tree.join("src/deep")).unwrap();
        fs::create_dir_all(tree.join("old dir/sub")).unwrap();
        fs::create_dir_all(tree.join("doomed/inner")).unwrap();
        for (f, data) in [
            ("src/main.rs", "fn main() {}\n"),
            ("src/deep/data.bin", "\0\u{1}binary"),
            ("gone.txt", "bye"),
            ("keep.txt", "same"),
            ("tab\there \\x", "odd name"),
            ("old dir/a.txt", "a"),
            ("old dir/sub/b.txt", "b"),
            ("doomed/inner/c.txt", "c"),
            ("renamed-from", "r"),
        ] {
            fs::write(tree.join(f), data).unwrap();
        }
        assert_eq!(b.checkpoint(&session, &tree, "c1").unwrap(), None);
        assert!(fs::write(session.join("checkpoints/c1/keep.txt"), "x").is_err(), "checkpoint is read-only");
        assert_eq!(b.diff(&session, Side::Checkpoint("c1"), Side::Tree(&tree)).unwrap(), vec![]);

        fs::write(tree.join("src/main.rs"), "fn main() { loop {} }\n").unwrap();
        fs::write(tree.join("tab\there \\x"), "changed odd name").unwrap();
        fs::write(tree.join("new file.txt"), "new").unwrap();
        fs::remove_file(tree.join("gone.txt")).unwrap();
        fs::rename(tree.join("old dir"), tree.join("new dir")).unwrap();
        fs::rename(tree.join("renamed-from"), tree.join("renamed-to")).unwrap();
        fs::remove_dir_all(tree.join("doomed")).unwrap();
        fs::create_dir(tree.join("fresh")).unwrap();
        fs::write(tree.join("fresh/f.txt"), "f").unwrap();
        std::os::unix::fs::symlink("keep.txt", tree.join("link")).unwrap();

        let want = vec![
            change(ChangeKind::Removed, "doomed"),
            change(ChangeKind::Removed, "doomed/inner"),
            change(ChangeKind::Removed, "doomed/inner/c.txt"),
            change(ChangeKind::Added, "fresh"),
            change(ChangeKind::Added, "fresh/f.txt"),
            change(ChangeKind::Removed, "gone.txt"),
            change(ChangeKind::Added, "link"),
            change(ChangeKind::Added, "new dir"),
            change(ChangeKind::Added, "new dir/a.txt"),
            change(ChangeKind::Added, "new dir/sub"),
            change(ChangeKind::Added, "new dir/sub/b.txt"),
            change(ChangeKind::Added, "new file.txt"),
            change(ChangeKind::Removed, "old dir"),
            change(ChangeKind::Removed, "old dir/a.txt"),
            change(ChangeKind::Removed, "old dir/sub"),
            change(ChangeKind::Removed, "old dir/sub/b.txt"),
            change(ChangeKind::Removed, "renamed-from"),
            change(ChangeKind::Added, "renamed-to"),
            change(ChangeKind::Modified, "src/main.rs"),
            change(ChangeKind::Modified, "tab\there \\x"),
        ];
        assert_eq!(b.diff(&session, Side::Checkpoint("c1"), Side::Tree(&tree)).unwrap(), want);
        b.checkpoint(&session, &tree, "c2").unwrap();
        assert_eq!(b.diff(&session, Side::Checkpoint("c1"), Side::Checkpoint("c2")).unwrap(), want);
        // No temporary snapshot is left behind.
        let left: Vec<_> =
            fs::read_dir(session.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");

        // Rollback material: c1 as a new writable tree, byte for byte.
        let back = session.join("timelines/back");
        b.materialize(&session, "c1", &back).unwrap();
        for f in ["src/main.rs", "src/deep/data.bin", "gone.txt", "keep.txt", "old dir/sub/b.txt"] {
            assert_eq!(
                fs::read(back.join(f)).unwrap(),
                fs::read(session.join("checkpoints/c1").join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(fs::read(back.join("src/main.rs")).unwrap(), b"fn main() {}\n");
        fs::write(back.join("writable"), "yes").unwrap();
        assert!(matches!(
            b.materialize(&session, "nope", &session.join("x")),
            Err(SnapshotError::NoCheckpoint(_))
        ));

        let clone = session.join("timelines/branch");
        b.clone_tree(&tree, &clone).unwrap();
        assert_eq!(b.diff(&session, Side::Tree(&tree), Side::Tree(&clone)).unwrap(), vec![]);
        let plain = session.join("plain");
        fs::create_dir_all(plain.join("d")).unwrap();
        for t in [&back, &clone, &plain] {
            b.remove_tree(t).unwrap();
            assert!(!t.exists());
        }
        b.remove_checkpoint(&session, "c1").unwrap();
        assert!(!session.join("checkpoints/c1").exists());
        let u = b.usage().unwrap();
        assert!(u.size_bytes > 400 * MIB && u.used_bytes > 0 && u.used_bytes < u.size_bytes, "{u:?}");
    }

    #[test]
    fn loop_store_full_reopen_grow() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (b, _guard) = store(tmp.path(), 512 * MIB);
        let session = b.root().join("s1");
        fs::create_dir_all(&session).unwrap();
        let tree = session.join("t");
        b.create_tree(&tree).unwrap();
        fs::write(tree.join("marker"), "still here").unwrap();

        // Reopening while mounted reuses the mount (a restarted daemon).
        let again =
            Btrfs::on_loop(&tmp.path().join("store.img"), &tmp.path().join("mnt"), 512 * MIB).unwrap();
        assert_eq!(fs::read(again.root().join("s1/t/marker")).unwrap(), b"still here");

        // Fill the data space, then take checkpoints (metadata only) until metadata is full too.
        let mut f = File::create(tree.join("big")).unwrap();
        let chunk: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 + i / 4096) as u8).collect();
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        let mut full = None;
        for i in 0..5000 {
            match b.checkpoint(&session, &tree, &format!("c{i}")) {
                Ok(_) => continue,
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        match full {
            Some(SnapshotError::Full { used, size, hint }) => {
                assert!(hint.contains("[snapshot] image_size"), "{hint}");
                assert!(size > 0 && used > 0, "{used} of {size}");
            }
            other => panic!("expected Full after filling the store, got {other:?}"),
        }
        assert!(b.usage().unwrap().size_bytes < 600 * MIB);

        // Growing: a larger configured size grows the image and the mounted filesystem.
        fs::remove_file(tree.join("big")).unwrap();
        let grown =
            Btrfs::on_loop(&tmp.path().join("store.img"), &tmp.path().join("mnt"), 1024 * MIB).unwrap();
        let u = grown.usage().unwrap();
        assert!(u.size_bytes > 900 * MIB, "{u:?}");
        assert_eq!(fs::metadata(tmp.path().join("store.img")).unwrap().len(), 1024 * MIB);
    }

    #[test]
    fn mountinfo_paths_unescape() {
        // mountinfo writes space, tab, newline and backslash as \ooo; teardown reads it too.
        assert_eq!(unescape(br"/var/lib/a\040b\134c"), b"/var/lib/a b\\c".to_vec());
        assert_eq!(unescape(b"/plain"), b"/plain".to_vec());
        assert_eq!(unescape(br"/not-utf8-\377"), b"/not-utf8-\xff".to_vec());
    }

    #[test]
    fn dump_names_unescape() {
        let t = tokens(br"rename          ./c2/a\ b\\c\tx\303\251                 dest=./c2/o\ 1");
        assert_eq!(
            t,
            vec![b"rename".to_vec(), b"./c2/a b\\c\tx\xc3\xa9".to_vec(), b"dest=./c2/o 1".to_vec()]
        );
    }
}

//! The payload archive: a copy of the workspace in the `newc` cpio format the kernel
//! unpacks as (part of) an initramfs.
//!
//! Hand-written rather than a crate: newc is an ASCII header per entry, padded to four
//! bytes, and ~60 lines cover what is needed; the one crate for it (`cpio`) would add a
//! dependency to a CLI kept lean on purpose, and xtask's writer (xtask/src/vm/cpio.rs)
//! lives in a dev-only crate. Unlike xtask's, entries keep their owner, mode and mtime
//! (the copy should look like the workspace) and file data is streamed, not held in memory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;

/// One entry's header fields (newc has no room for more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// File type and permission bits, as in st_mode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

pub struct Writer<W: Write> {
    out: BufWriter<W>,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out: BufWriter::with_capacity(1 << 16, out), written: 0, next_ino: 1 }
    }

    pub fn dir(&mut self, name: &[u8], h: Header) -> io::Result<()> {
        self.header(name, Header { mode: S_IFDIR | (h.mode & 0o7777), ..h }, 2, 0)?;
        self.align()
    }

    pub fn fifo(&mut self, name: &[u8], h: Header) -> io::Result<()> {
        self.header(name, Header { mode: S_IFIFO | (h.mode & 0o7777), ..h }, 1, 0)?;
        self.align()
    }

    pub fn symlink(&mut self, name: &[u8], target: &[u8], h: Header) -> io::Result<()> {
        self.file(name, Header { mode: S_IFLNK | 0o777, ..h }, target.len() as u64, &mut &target[..])
    }

    /// A regular file of exactly `size` bytes read from `data` (fewer is an error: the
    /// header already promised `size`). `h.mode`'s type bits are taken as given when set.
    pub fn file(&mut self, name: &[u8], h: Header, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let mode = if h.mode & 0o170000 == 0 { S_IFREG | h.mode } else { h.mode };
        self.header(name, Header { mode, ..h }, 1, size)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes where {size} were expected (it changed while being copied)"),
            ));
        }
        self.align()
    }

    /// The trailer, padded to 512 bytes so another archive may follow; returns the size.
    pub fn finish(mut self) -> io::Result<(u64, W)> {
        self.header(b"TRAILER!!!", Header { mode: 0, uid: 0, gid: 0, mtime: 0 }, 1, 0)?;
        self.align()?;
        let pad = (512 - self.written % 512) % 512;
        self.put(&vec![0; pad as usize])?;
        let written = self.written;
        let out = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((written, out))
    }

    /// The 110-byte header and the NUL-terminated name, padded to four bytes (data follows).
    fn header(&mut self, name: &[u8], h: Header, nlink: u32, size: u64) -> io::Result<()> {
        if name.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a name"));
        }
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "over 4 GiB: newc cannot hold it"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [ino, h.mode, h.uid, h.gid, nlink, h.mtime, size, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        let mut head = String::with_capacity(110);
        head.push_str("070701");
        for f in fields {
            head.push_str(&format!("{f:08x}"));
        }
        self.put(head.as_bytes())?;
        self.put(name)?;
        self.put(&[0])?;
        self.align()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..pad as usize])
    }
}

/// What a walk of the workspace found, before anything is copied.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// Relative paths (empty: the root) with their metadata, parents before children.
    pub entries: Vec<(PathBuf, Metadata)>,
    /// Bytes of file data (and symlink targets).
    pub bytes: u64,
    pub files: u64,
    /// Sockets and device nodes: no copy can mean the same thing in the guest.
    pub skipped: Vec<PathBuf>,
}

/// The walk stopped: the workspace holds more than `limit` bytes.
#[derive(Debug)]
pub struct TooBig {
    pub limit: u64,
    /// The biggest top-level entries counted so far, biggest first.
    pub biggest: Vec<(OsString, u64)>,
}

/// Walks `root` without following symlinks, in name order, stopping once file data passes
/// `limit` bytes (a workspace of many GiB is refused at once, not after reading it all).
pub fn scan(root: &Path, limit: u64) -> Result<std::result::Result<Tree, TooBig>> {
    let meta = std::fs::symlink_metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut tree = Tree {
        root: root.to_owned(),
        entries: vec![(PathBuf::new(), meta)],
        bytes: 0,
        files: 0,
        skipped: Vec::new(),
    };
    let mut per_top: BTreeMap<OsString, u64> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = rel.join(&name);
            let full = root.join(&path);
            let m = std::fs::symlink_metadata(&full)
                .with_context(|| format!("cannot read {}", full.display()))?;
            let ft = m.file_type();
            let size = if ft.is_file() || ft.is_symlink() { m.len() } else { 0 };
            if ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
                tree.skipped.push(path);
                continue;
            }
            tree.bytes += size;
            tree.files += u64::from(!ft.is_dir());
            let top = path.components().next().map(|c| c.as_os_str().to_owned()).unwrap_or_default();
            *per_top.entry(top).or_default() += size;
            if tree.bytes > limit {
                let mut biggest: Vec<(OsString, u64)> = per_top.into_iter().collect();
                biggest.sort_by_key(|b| std::cmp::Reverse(b.1));
                biggest.truncate(3);
                return Ok(Err(TooBig { limit, biggest }));
            }
            if ft.is_dir() {
                subdirs.push(path.clone());
            }
            tree.entries.push((path, m));
        }
        // Depth-first, in name order: parents always precede their children.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Ok(tree))
}

/// Writes `tree` under `prefix` (e.g. "payload/ws"), whose own parents the caller wrote.
pub fn write_tree<W: Write>(w: &mut Writer<W>, tree: &Tree, prefix: &str) -> Result<()> {
    for (rel, m) in &tree.entries {
        let mut name = prefix.as_bytes().to_vec();
        if !rel.as_os_str().is_empty() {
            name.push(b'/');
            name.extend_from_slice(rel.as_os_str().as_bytes());
        }
        let full = tree.root.join(rel);
        let h = Header {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            // newc's mtime is 32 bits: dates past 2106 (or before 1970) are clamped.
            mtime: u32::try_from(m.mtime().max(0)).unwrap_or(u32::MAX),
        };
        let ft = m.file_type();
        let done = if ft.is_dir() {
            w.dir(&name, h)
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&full).with_context(|| format!("cannot read {}", full.display()))?;
            w.symlink(&name, target.as_os_str().as_bytes(), h)
        } else if ft.is_fifo() {
            w.fifo(&name, h)
        } else {
            let mut f = File::open(&full).with_context(|| format!("cannot read {}", full.display()))?;
            let now = f.metadata().with_context(|| format!("cannot read {}", full.display()))?.len();
            if now != m.len() {
                return Err(anyhow!("{} changed while being copied", full.display()));
            }
            w.file(&name, h, now, &mut f)
        };
        done.with_context(|| format!("cannot copy {}", full.display()))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (name, mode, uid, mtime, data).
    pub(crate) type Entry = (Vec<u8>, u32, u32, u32, Vec<u8>);

    /// A newc reader for the tests: each entry but the trailer; panics on anything
    /// malformed.
    pub(crate) fn read_all(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {}", total - b.len());
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
            };
            let (mode, uid, mtime, size, namesize) =
                (field(1), field(2), field(5), field(6) as usize, field(11) as usize);
            let name = b[110..110 + namesize - 1].to_vec();
            assert_eq!(b[110 + namesize - 1], 0, "name NUL-terminated");
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).div_ceil(4) * 4;
            b = &b[next..];
            if name == b"TRAILER!!!" {
                assert_eq!((total - b.len()) % 4, 0);
                assert!(b.iter().all(|&c| c == 0), "only padding after the trailer");
                assert_eq!(total % 512, 0, "padded to 512 bytes");
                return out;
            }
            out.push((name, mode, uid, mtime, data));
        }
    }

    #[test]
    fn entries_round_trip_with_their_types_modes_and_data() {
        let mut w = Writer::new(Vec::new());
        let h = Header { mode: 0o755, uid: 1000, gid: 1000, mtime: 1_700_000_000 };
        w.dir(b"payload", h).unwrap();
        w.file(b"payload/a b\n\xff", Header { mode: 0o644, ..h }, 5, &mut &b"hello"[..]).unwrap();
        w.file(b"payload/empty", Header { mode: 0o600, ..h }, 0, &mut &b""[..]).unwrap();
        w.symlink(b"payload/link", b"../x", h).unwrap();
        w.fifo(b"payload/fifo", Header { mode: 0o640, ..h }).unwrap();
        let (size, bytes) = w.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        let got = read_all(&bytes);
        let names: Vec<&[u8]> = got.iter().map(|e| &e.0[..]).collect();
        assert_eq!(
            names,
            [&b"payload"[..], b"payload/a b\n\xff", b"payload/empty", b"payload/link", b"payload/fifo"]
        );
        assert_eq!(got[0].1, S_IFDIR | 0o755);
        assert_eq!((got[1].1, &got[1].4[..]), (S_IFREG | 0o644, &b"hello"[..]));
        assert_eq!((got[2].1, got[2].4.len()), (S_IFREG | 0o600, 0));
        assert_eq!((got[3].1, &got[3].4[..]), (S_IFLNK | 0o777, &b"../x"[..]));
        assert_eq!(got[4].1, S_IFIFO | 0o640);
        assert!(got.iter().all(|e| e.2 == 1000 && e.3 == 1_700_000_000));
    }

    #[test]
    fn a_file_shorter_than_promised_is_an_error_and_nul_in_a_name_too() {
        let mut w = Writer::new(Vec::new());
        let h = Header { mode: 0o644, uid: 0, gid: 0, mtime: 0 };
        let e = w.file(b"f", h, 10, &mut &b"short"[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(w.dir(b"a\0b", h).is_err());
    }

    #[test]
    fn a_workspace_is_copied_whole_and_parents_come_first() {
        use std::os::unix::fs::PermissionsExt;
        let ws = tempfile::tempdir().unwrap();
        let p = ws.path();
        std::fs::create_dir_all(p.join("src/deep")).unwrap();
        std::fs::write(p.join("src/deep/x.txt"), "x\n").unwrap();
        std::fs::write(p.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p.join("run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("outside")).unwrap();
        nix::unistd::mkfifo(&p.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();

        let tree = scan(p, 1 << 20).unwrap().unwrap();
        assert_eq!(tree.skipped, [PathBuf::from("sock")]);
        assert_eq!(tree.bytes, 2 + 10 + "/etc/passwd".len() as u64);
        let mut w = Writer::new(Vec::new());
        write_tree(&mut w, &tree, "payload/ws").unwrap();
        let (_, bytes) = w.finish().unwrap();
        let got = read_all(&bytes);
        let names: Vec<String> = got.iter().map(|e| String::from_utf8_lossy(&e.0).into_owned()).collect();
        assert_eq!(
            names,
            [
                "payload/ws",
                "payload/ws/outside",
                "payload/ws/pipe",
                "payload/ws/run.sh",
                "payload/ws/src",
                "payload/ws/src/deep",
                "payload/ws/src/deep/x.txt"
            ]
        );
        let run = &got[3];
        assert_eq!((run.1, &run.4[..]), (S_IFREG | 0o751, &b"#!/bin/sh\n"[..]));
        assert_eq!((got[1].1 & 0o170000, &got[1].4[..]), (S_IFLNK, &b"/etc/passwd"[..]), "not followed");
        assert_eq!(got[2].1 & 0o170000, S_IFIFO);
    }

    #[test]
    fn a_workspace_over_the_limit_is_refused_naming_the_biggest_parts() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("target")).unwrap();
        std::fs::write(ws.path().join("target/big"), vec![0u8; 4000]).unwrap();
        std::fs::write(ws.path().join("small"), "s").unwrap();
        let too_big = scan(ws.path(), 3000).unwrap().unwrap_err();
        assert_eq!(too_big.biggest[0], (OsString::from("target"), 4000));
        assert!(scan(ws.path(), 5000).unwrap().is_ok());
    }

    /// busybox's cpio (when installed) lists what the reader above reads: the format is
    /// the real one, not one only our own reader agrees with.
    #[test]
    fn busybox_cpio_reads_it() {
        let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists())
        else {
            eprintln!("SKIP: no busybox to cross-check the archive with");
            return;
        };
        let mut w = Writer::new(Vec::new());
        let h = Header { mode: 0o755, uid: 0, gid: 0, mtime: 0 };
        w.dir(b"d", h).unwrap();
        w.file(b"d/f", h, 3, &mut &b"abc"[..]).unwrap();
        w.symlink(b"d/l", b"f", h).unwrap();
        let (_, bytes) = w.finish().unwrap();
        let mut child = std::process::Command::new(busybox)
            .args(["cpio", "-t"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "d\nd/f\nd/l\n");
    }
}

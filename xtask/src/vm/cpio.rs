//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Written here rather than by running `cpio` over a staging directory so that every entry
//! is owned by root, device nodes need no `mknod` on the host, and parent directories
//! appear before their contents without a staging tree.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

pub struct Writer {
    out: BufWriter<File>,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Writer {
            out: BufWriter::new(f),
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
            names: BTreeSet::new(),
        })
    }

    /// A directory (and its missing parents), mode 0755 unless it exists already.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.dir_mode(path, 0o755)
    }

    pub fn dir_mode(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = clean(path)?;
        if path.is_empty() || self.dirs.contains(&path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.clone());
        self.entry(&path, 0o040000 | mode, 2, 0, b"")
    }

    /// A regular file; the same path twice is written once (the first wins).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let path = clean(path)?;
        if !self.names.insert(path.clone()) {
            return Ok(());
        }
        self.parent(&path)?;
        self.entry(&path, 0o100000 | (mode & 0o7777), 1, 0, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = clean(path)?;
        if !self.names.insert(path.clone()) {
            return Ok(());
        }
        self.parent(&path)?;
        self.entry(&path, 0o120000 | 0o777, 1, 0, target.as_bytes())
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        let path = clean(path)?;
        if !self.names.insert(path.clone()) {
            return Ok(());
        }
        self.parent(&path)?;
        self.entry(&path, 0o020000 | mode, 1, (major << 8) | minor, b"")
    }

    /// Writes the trailer, pads to 512 bytes (so archives can be concatenated) and flushes.
    pub fn finish(mut self) -> Result<u64> {
        self.entry("TRAILER!!!", 0, 1, 0, b"")?;
        let pad = (512 - self.written % 512) % 512;
        self.out.write_all(&vec![0; pad as usize])?;
        self.written += pad;
        self.out.flush()?;
        Ok(self.written)
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    /// One newc header + name + data, each padded to 4 bytes. `rdev` is major << 8 | minor.
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, data: &[u8]) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = rdev >> 8,
            rmin = rdev & 0xff,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.align()?;
        self.put(data)?;
        self.align()
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..pad as usize])
    }
}

/// Archive names are relative ("bin/sh"); accepts "/bin/sh" and refuses "..".
fn clean(path: &str) -> Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.split('/').any(|c| c == ".." || c == "." || c.is_empty()) && !p.is_empty() {
        bail!("bad archive path {path:?}");
    }
    Ok(p.to_owned())
}

//! Debian's cloud kernels for the guests: the newest package of each series, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` into the cache (never installed, never
//! /boot), and `depmod`ed there so that modules.dep exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A kernel series of the test matrix.
#[derive(Clone, Copy)]
pub struct Series {
    /// What `--kernel` calls it: "6.1", "6.12".
    pub label: &'static str,
    /// Package name = PREFIX N SUFFIX [-unsigned], N the number that grows with each upload.
    prefix: &'static str,
    suffix: &'static str,
}

pub const SERIES: [Series; 2] = [
    Series { label: "6.1", prefix: "linux-image-6.1.0-", suffix: "-cloud-amd64" },
    Series { label: "6.12", prefix: "linux-image-6.12.", suffix: "+deb12-cloud-amd64" },
];

/// One unpacked kernel package in the cache.
pub struct Kernel {
    pub series: Series,
    pub package: String,
    pub version: String,
    /// `uname -r` of this kernel (the directory name under lib/modules).
    pub release: String,
    /// The cache directory of this package version.
    pub dir: PathBuf,
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// Whether this run downloaded and unpacked it (false: found in the cache).
    pub fetched: bool,
}

impl Kernel {
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// CONFIG_LSM of this kernel: the LSMs it enables when the command line names none.
    pub fn config_lsm(&self) -> Option<String> {
        let config = std::fs::read_to_string(self.root.join(format!("boot/config-{}", self.release))).ok()?;
        config.lines().find_map(|l| l.strip_prefix("CONFIG_LSM=")).map(|v| v.trim_matches('"').to_owned())
    }
}

impl Series {
    /// The upload number N when `name` is a package of this series ("-unsigned" allowed).
    fn number(&self, name: &str) -> Option<(u64, bool)> {
        let rest = name.strip_prefix(self.prefix)?;
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n = rest[..digits].parse().ok()?;
        match &rest[digits..] {
            s if s == self.suffix => Some((n, true)),
            s if s.strip_suffix("-unsigned") == Some(self.suffix) => Some((n, false)),
            _ => None,
        }
    }

    /// The newest package of this series in the local apt lists (the signed one preferred:
    /// both hold the same kernel, and QEMU does not check signatures).
    fn newest_in_apt_lists(&self) -> Option<String> {
        let pattern =
            format!("^{}[0-9]+{}(-unsigned)?$", regex_escape(self.prefix), regex_escape(self.suffix));
        let out = Command::new("apt-cache").args(["search", "--names-only", &pattern]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| self.number(name).map(|(n, signed)| ((n, signed), name.to_owned())))
            .max_by_key(|(key, _)| *key)
            .map(|(_, name)| name)
    }

    /// The newest version of this series already unpacked in the cache.
    fn newest_cached(&self, cache: &Path) -> Option<(String, String)> {
        let mut best: Option<((u64, bool), String, String)> = None;
        for entry in std::fs::read_dir(cache).ok()?.flatten() {
            let Ok(info) = std::fs::read_to_string(entry.path().join("package")) else { continue };
            let mut it = info.split_whitespace();
            let (Some(name), Some(version)) = (it.next(), it.next()) else { continue };
            if !entry.path().join("root").is_dir() {
                continue;
            }
            if let Some(key) = self.number(name)
                && best.as_ref().is_none_or(|(k, _, _)| key > *k)
            {
                best = Some((key, name.to_owned(), version.to_owned()));
            }
        }
        best.map(|(_, n, v)| (n, v))
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".+".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

fn candidate_version(package: &str) -> Option<String> {
    let out = Command::new("apt-cache").args(["show", "--no-all-versions", package]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("Version: ")).map(|v| v.trim().to_owned())
}

pub fn cache_root() -> PathBuf {
    let base = match std::env::var_os("RUSH_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/rush"),
    };
    base.join("vm")
}

fn dir_name(package: &str, version: &str) -> String {
    format!("{package}_{version}")
}

/// The newest kernel of `series`: from the cache when the apt lists name nothing newer,
/// else downloaded (after `apt-get update`). `refresh`: update the lists first even then.
/// Offline, the newest cached one is used.
pub fn prepare(series: Series, refresh: bool, updated: &mut bool) -> Result<Kernel> {
    let cache = cache_root();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    // What the local lists name, if it is cached already: no network needed.
    if !refresh
        && let Some(name) = series.newest_in_apt_lists()
        && let Some(version) = candidate_version(&name)
        && cache.join(dir_name(&name, &version)).join("package").is_file()
    {
        return open(series, &cache, &name, &version, false);
    }
    if !*updated {
        eprintln!("    $ apt-get update");
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success());
        *updated = true;
        if !ok {
            eprintln!("    apt-get update failed");
        }
    }
    let resolved = series.newest_in_apt_lists().and_then(|n| candidate_version(&n).map(|v| (n, v)));
    let fetch = match &resolved {
        Some((name, version)) if cache.join(dir_name(name, version)).join("package").is_file() => {
            return open(series, &cache, name, version, false);
        }
        Some((name, version)) => fetch(&cache, name, version),
        None => Err(anyhow::anyhow!("apt-cache finds no package {}N{}", series.prefix, series.suffix)),
    };
    match fetch {
        Ok(()) => {
            let (name, version) = resolved.unwrap();
            open(series, &cache, &name, &version, true)
        }
        Err(e) => match series.newest_cached(&cache) {
            Some((name, version)) => {
                eprintln!(
                    "    WARNING: cannot fetch the newest {} kernel ({e:#}); using cached {name} {version}",
                    series.label
                );
                open(series, &cache, &name, &version, false)
            }
            None => Err(e.context(format!("fetching the {} kernel", series.label))),
        },
    }
}

/// The newest kernel of `series` already unpacked in the cache; no apt-get at all (for
/// callers that must not touch the network, such as the guest-kit test).
pub fn cached(series: Series) -> Result<Kernel> {
    let cache = cache_root();
    let (name, version) = series.newest_cached(&cache).with_context(|| {
        format!(
            "no {} kernel cached in {} (`cargo xtask vm-test` fetches one)",
            series.label,
            cache.display()
        )
    })?;
    open(series, &cache, &name, &version, false)
}

/// apt-get download + dpkg-deb -x + depmod, into a temporary directory renamed into place
/// only when complete (an interrupted fetch leaves nothing that looks cached).
fn fetch(cache: &Path, package: &str, version: &str) -> Result<()> {
    let final_dir = cache.join(dir_name(package, version));
    let tmp = cache.join(format!(".fetch-{}-{}", package, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let spec = format!("{package}={version}");
    eprintln!("    $ apt-get download {spec}");
    let status = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", &spec])
        .current_dir(&tmp)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!("apt-get download {spec} failed ({status})");
    }
    let deb = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let root = tmp.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_file(&deb)?;
    let release = release_of(&root)?;
    run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    std::fs::write(tmp.join("package"), format!("{package} {version}\n"))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir)?;
    Ok(())
}

fn open(series: Series, cache: &Path, package: &str, version: &str, fetched: bool) -> Result<Kernel> {
    let dir = cache.join(dir_name(package, version));
    let root = dir.join("root");
    let release = release_of(&root)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no kernel image", vmlinuz.display());
    }
    Ok(Kernel {
        series,
        package: package.into(),
        version: version.into(),
        release,
        dir,
        root,
        vmlinuz,
        fetched,
    })
}

fn release_of(root: &Path) -> Result<String> {
    let mods = root.join("lib/modules");
    let mut names: Vec<String> = std::fs::read_dir(&mods)
        .with_context(|| format!("reading {}", mods.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.pop().with_context(|| format!("{} is empty", mods.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// A module to load in the guest: its path under lib/modules/RELEASE, as found in the
/// package (maybe compressed), and the path it gets in the guest (never compressed).
pub struct Module {
    pub source: PathBuf,
    pub guest_rel: String,
}

/// The modules named in `wanted` and their dependencies, in load order (modules.dep lists
/// a module's dependencies with the one to load first last). Built-in ones are skipped.
pub fn modules_in_load_order(k: &Kernel, wanted: &[&str]) -> Result<(Vec<Module>, Vec<String>)> {
    let dir = k.modules_dir();
    let dep_text = std::fs::read_to_string(dir.join("modules.dep")).context("reading modules.dep")?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else { continue };
        deps.insert(
            module_name(path),
            (path.to_owned(), rest.split_whitespace().map(str::to_owned).collect()),
        );
    }
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    let mut order: Vec<String> = Vec::new();
    let mut notes = Vec::new();
    for want in wanted {
        let want = want.replace('-', "_");
        match deps.get(&want) {
            Some((path, ds)) => {
                for p in ds.iter().rev().chain(std::iter::once(path)) {
                    if !order.contains(p) {
                        order.push(p.clone());
                    }
                }
            }
            None if builtin.contains(&want) => notes.push(format!("{want} is built in")),
            None => notes.push(format!("WARNING: module {want} not found in this kernel")),
        }
    }
    let modules = order
        .into_iter()
        .map(|rel| {
            let plain =
                rel.trim_end_matches(".xz").trim_end_matches(".zst").trim_end_matches(".gz").to_owned();
            Module { source: dir.join(&rel), guest_rel: plain }
        })
        .collect();
    Ok((modules, notes))
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// A module file's contents, decompressed on the host (busybox insmod takes plain ELF).
pub fn module_bytes(source: &Path) -> Result<Vec<u8>> {
    let tool = match source.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return std::fs::read(source).with_context(|| format!("reading {}", source.display())),
    };
    let out =
        Command::new(tool).arg("-dc").arg(source).output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed: {}", source.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

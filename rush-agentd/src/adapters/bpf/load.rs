//! Opening, loading, pinning and attaching the objects (runs on the owner thread).

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, MapInfo, Object, OpenMap, OpenObject, PrintLevel, ProgramMut,
    ProgramType,
};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use rush_ebpf::file::{FileSkel, FileSkelBuilder};
use rush_ebpf::guard::{GuardSkel, GuardSkelBuilder};
use rush_ebpf::net::{NetSkel, NetSkelBuilder};
use rush_ebpf::{
    AF_INET, GUARD_PROGRAMS, LSM_PROGRAMS, MAP_NET_ALLOW_RETIRED, MAP_NET_CIDR, NET_CIDR_FIXED_BITS,
    NET_PROGRAMS, PINNED_MAPS, PROTECTED_MAX, Plain, ProgramSpec, RushNetCidrKey, RushNetKey, SYSCTL_PROGRAM,
};
use tracing::{debug, info, trace, warn};

use super::{AttachReport, BpfConfig, BpfError, ProgramStatus};

const BPFFS: &str = "/sys/fs/bpf";
const SECURITYFS: &str = "/sys/kernel/security";
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The loaded objects and their links; dropping this closes the fds, but pinned links stay
/// attached and pinned maps stay alive.
pub(super) struct Loaded<'obj> {
    pub net: NetSkel<'obj>,
    pub _file: Option<FileSkel<'obj>>,
    pub _guard: Option<GuardSkel<'obj>>,
    pub _links: Vec<Link>,
    pub report: AttachReport,
}

pub(super) fn load<'obj>(
    cfg: &BpfConfig,
    net_storage: &'obj mut MaybeUninit<OpenObject>,
    file_storage: &'obj mut MaybeUninit<OpenObject>,
    guard_storage: &'obj mut MaybeUninit<OpenObject>,
) -> Result<Loaded<'obj>, BpfError> {
    install_libbpf_logger();
    if !is_fs(&cfg.cgroup2_root, CGROUP2_SUPER_MAGIC) {
        return Err(BpfError::Config(format!(
            "cgroup2_root {} is not a cgroup v2 mount",
            cfg.cgroup2_root.display()
        )));
    }
    ensure_bpffs(&cfg.pin_dir)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.pin_dir)
        .map_err(|source| BpfError::PinDir { path: cfg.pin_dir.clone(), source })?;
    let cgroup = File::open(&cfg.cgroup2_root)
        .map_err(|source| BpfError::Cgroup { path: cfg.cgroup2_root.clone(), source })?;

    let mut open = NetSkelBuilder::default()
        .open(net_storage)
        .map_err(|source| BpfError::Open { object: "net", source })?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| BpfError::Other("BPF object net has no .rodata".into()))?;
    rodata.agent_cgroup_level = cfg.agent_cgroup_level;
    set_map_pins(open.open_object_mut(), &cfg.pin_dir)?;
    // The sysctl guard needs the agent lookup helper in sysctl programs, which not every
    // kernel gives them; without it the rest of the object must still load.
    let sysctl_why_not = match ProgramType::CgroupSysctl
        .is_helper_supported(libbpf_rs::libbpf_sys::BPF_FUNC_get_current_ancestor_cgroup_id)
    {
        Ok(true) => None,
        Ok(false) => {
            Some("this kernel gives cgroup/sysctl programs no bpf_get_current_ancestor_cgroup_id".into())
        }
        Err(e) => Some(format!("probing cgroup/sysctl helpers: {e}")),
    };
    if sysctl_why_not.is_some()
        && let Some(mut prog) =
            open.open_object_mut().progs_mut().find(|p| p.name() == OsStr::new(SYSCTL_PROGRAM.name))
    {
        prog.set_autoload(false);
    }
    let loading = std::time::Instant::now();
    let (net, log) = capture_libbpf_log(|| open.load());
    debug!(object = "net", load_ms = loading.elapsed().as_millis() as u64, "BPF object loaded (verified)");
    let net = net.map_err(|source| {
        log.iter().for_each(|line| warn!(target: "libbpf", "{line}"));
        BpfError::Load { object: "net", source }
    })?;
    log.iter().for_each(|line| debug!(target: "libbpf", "{line}"));
    migrate_retired_allow(&cfg.pin_dir, &net.maps.rush_net_cidr);

    let mut links = Vec::new();
    let mut report = AttachReport::default();
    for spec in &NET_PROGRAMS {
        let prog = program(net.object(), spec)?;
        let mut link = prog.attach_cgroup(cgroup.as_raw_fd()).map_err(|source| BpfError::Attach {
            program: spec.name,
            hook: spec.hook,
            source,
        })?;
        pin_link(&mut link, &cfg.pin_dir, spec)?;
        links.push(link);
        report.programs.push(status(spec, true, None));
    }
    match sysctl_why_not {
        None => {
            let spec = &SYSCTL_PROGRAM;
            let attached =
                program(net.object(), spec).and_then(|prog| {
                    let mut link = prog
                        .attach_cgroup(cgroup.as_raw_fd())
                        .map_err(|source| BpfError::Attach { program: spec.name, hook: spec.hook, source })?;
                    pin_link(&mut link, &cfg.pin_dir, spec).map(|()| link)
                });
            match attached {
                Ok(link) => {
                    links.push(link);
                    report.programs.push(status(spec, true, None));
                }
                Err(e) => report.programs.push(status(spec, false, Some(error_chain(&e)))),
            }
        }
        Some(why) => report.programs.push(status(&SYSCTL_PROGRAM, false, Some(why))),
    }

    let lsm_inactive = bpf_lsm_inactive();
    if lsm_inactive.is_none() {
        report.btrfs_keyed = btrfs_types_available();
    }
    let file = match &lsm_inactive {
        Some(why) => Err(why.clone()),
        None => FileSkelBuilder::default().open(file_storage).map_err(|e| format!("open: {e:#}")).and_then(
            |mut open| {
                let rodata = open.maps.rodata_data.as_deref_mut().ok_or("BPF object file has no .rodata")?;
                rodata.agent_cgroup_level = cfg.agent_cgroup_level;
                Ok(open)
            },
        ),
    };
    let (file, lsm_links, lsm_status) = load_lsm(cfg, "file", &LSM_PROGRAMS, file);
    links.extend(lsm_links);
    report.programs.extend(lsm_status);

    let guard = match lsm_inactive {
        Some(why) => Err(why),
        None => GuardSkelBuilder::default().open(guard_storage).map_err(|e| format!("open: {e:#}")).and_then(
            |mut open| {
                let rodata = open.maps.rodata_data.as_deref_mut().ok_or("BPF object guard has no .rodata")?;
                rodata.agent_cgroup_level = cfg.agent_cgroup_level;
                let protected = protected_inodes(&cfg.protected_dirs)?;
                for (i, (dev, ino)) in protected.into_iter().enumerate() {
                    rodata.protected_dev[i] = dev;
                    rodata.protected_ino[i] = ino;
                }
                Ok(open)
            },
        ),
    };
    let (guard, guard_links, guard_status) = load_lsm(cfg, "guard", &GUARD_PROGRAMS, guard);
    links.extend(guard_links);
    report.programs.extend(guard_status);
    Ok(Loaded { net, _file: file, _guard: guard, _links: links, report })
}

/// An older daemon's allow lists (`rush_net_allow`, a HASH of exact addresses): copied into
/// `rush_net_cidr` as full-length prefixes before the new programs attach, so the agents
/// it left running keep their lists; then its pin is removed (its old programs, until
/// their links are replaced, keep the map alive). Failures cost only those entries.
fn migrate_retired_allow(dir: &Path, cidr: &impl MapCore) {
    let path = dir.join(MAP_NET_ALLOW_RETIRED);
    if !path.exists() {
        return;
    }
    match MapHandle::from_pinned_path(&path) {
        Ok(old) if old.key_size() as usize == size_of::<RushNetKey>() => {
            let (mut moved, mut failed) = (0, 0);
            for key in old.keys() {
                let Some(k) = RushNetKey::from_bytes(&key) else { continue };
                let len = if k.family == AF_INET { 32 } else { 128 };
                let new = RushNetCidrKey {
                    prefixlen: NET_CIDR_FIXED_BITS + len,
                    family: k.family,
                    port: k.port,
                    cgroup_id: k.cgroup_id,
                    addr: k.addr,
                };
                match cidr.update(new.as_bytes(), &[1], MapFlags::ANY) {
                    Ok(()) => moved += 1,
                    Err(e) => {
                        failed += 1;
                        debug!(error = %e, "migrating an allow entry");
                    }
                }
            }
            info!(moved, failed, "migrated the allow lists of {MAP_NET_ALLOW_RETIRED} into {MAP_NET_CIDR}");
        }
        Ok(old) => {
            warn!(
                key_size = old.key_size(),
                "{MAP_NET_ALLOW_RETIRED} pin of an unknown layout: removed unread"
            )
        }
        Err(e) => warn!(error = %e, "{MAP_NET_ALLOW_RETIRED} pin unreadable: removed"),
    }
    if let Err(e) = fs::remove_file(&path) {
        warn!(pin = %path.display(), error = %e, "cannot remove the retired allow-list pin");
    }
}

/// Whether btrfs's BTF is there for the file programs' CO-RE relocations (built in, or
/// its module loaded, which this tries first: the relocations resolve once, at load).
fn btrfs_types_available() -> bool {
    let present = || {
        Path::new("/sys/kernel/btf/btrfs").exists()
            || libbpf_rs::btf::Btf::from_vmlinux().is_ok_and(|btf| {
                btf.type_by_name::<libbpf_rs::btf::types::Struct<'_>>("btrfs_inode").is_some()
            })
    };
    if present() {
        return true;
    }
    let loaded = std::process::Command::new("modprobe").args(["-q", "btrfs"]).status();
    debug!(?loaded, "modprobe btrfs (for its BTF)");
    let present = present();
    if !present {
        warn!("no btrfs type information: file tokens will deny every file on btrfs");
    }
    present
}

/// (superblock dev, inode) of each protected directory, as the guard's inode_permission
/// hook compares them (each must exist).
fn protected_inodes(dirs: &[PathBuf]) -> Result<Vec<(u32, u64)>, String> {
    if dirs.len() > PROTECTED_MAX {
        return Err(format!("at most {PROTECTED_MAX} protected directories, got {}", dirs.len()));
    }
    dirs.iter()
        .map(|dir| {
            let key = crate::core::file_key::superblock_key(dir).map_err(|e| e.to_string())?;
            Ok((key.dev, key.ino))
        })
        .collect()
}

/// Loads and attaches one LSM object (`open`: opened and configured, or why it could not
/// be). Never fails: what went wrong is recorded per program.
fn load_lsm<'obj, O: OpenSkel<'obj>>(
    cfg: &BpfConfig,
    object: &str,
    specs: &[ProgramSpec],
    open: Result<O, String>,
) -> (Option<O::Output>, Vec<Link>, Vec<ProgramStatus>) {
    let failed = |error: String| {
        let status = specs.iter().map(|s| status(s, false, Some(error.clone()))).collect();
        (None, Vec::new(), status)
    };
    let mut open = match open {
        Ok(open) => open,
        Err(e) => return failed(e),
    };
    if let Err(e) = set_map_pins(open.open_object_mut(), &cfg.pin_dir) {
        return failed(error_chain(&e));
    }
    // An EPERM here is the expected outcome on kernels that refuse BPF trampolines.
    let loading = std::time::Instant::now();
    let (loaded, log) = capture_libbpf_log(|| open.load());
    debug!(object, load_ms = loading.elapsed().as_millis() as u64, "BPF object loaded (verified)");
    log.iter().for_each(|line| debug!(target: "libbpf", "{line}"));
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            let what = refused_program(&log).unwrap_or_else(|| format!("BPF object {object}"));
            return failed(format!("loading {what}: {e:#}"));
        }
    };

    for prog in loaded.object().progs() {
        debug!(object, program = ?prog.name(), verified_insns = verified_insns(&prog), "BPF program verified");
    }
    let attaching = std::time::Instant::now();
    let mut links = Vec::new();
    let mut statuses = Vec::new();
    for spec in specs {
        let attached = program(loaded.object(), spec)
            .and_then(|prog| {
                prog.attach_lsm().map_err(|source| BpfError::Attach {
                    program: spec.name,
                    hook: spec.hook,
                    source,
                })
            })
            .and_then(|mut link| pin_link(&mut link, &cfg.pin_dir, spec).map(|()| link));
        match attached {
            Ok(link) => {
                links.push(link);
                statuses.push(status(spec, true, None));
            }
            Err(e) => statuses.push(status(spec, false, Some(error_chain(&e)))),
        }
    }
    debug!(object, attach_ms = attaching.elapsed().as_millis() as u64, "BPF object attached");
    (Some(loaded), links, statuses)
}

/// Instructions the verifier walked for `prog` (what its load costs), if the kernel says.
fn verified_insns(prog: &libbpf_rs::Program) -> Option<u32> {
    use std::os::fd::AsFd;
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes with no array pointers set, so
    // the kernel writes only into it; the fd is the loaded program's, borrowed for the call.
    let r = unsafe {
        libbpf_rs::libbpf_sys::bpf_obj_get_info_by_fd(
            prog.as_fd().as_raw_fd(),
            (&mut info as *mut libbpf_rs::libbpf_sys::bpf_prog_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info.verified_insns)
}

/// The program libbpf says the kernel refused ("prog 'NAME': BPF program load failed").
fn refused_program(log: &[String]) -> Option<String> {
    log.iter()
        .filter(|line| line.contains("load failed"))
        .find_map(|line| line.split('\'').nth(1))
        .map(str::to_string)
}

fn status(spec: &ProgramSpec, attached: bool, error: Option<String>) -> ProgramStatus {
    ProgramStatus { name: spec.name.into(), hook: spec.hook.into(), attached, error }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn program<'a>(object: &'a Object, spec: &ProgramSpec) -> Result<ProgramMut<'a>, BpfError> {
    object
        .progs_mut()
        .find(|p| p.name() == spec.name)
        .ok_or_else(|| BpfError::Other(format!("program {} is missing from its BPF object", spec.name)))
}

/// Pins `link` at `<dir>/<spec.link_pin>`, replacing an older pin (a previous daemon's link)
/// only once the new link is attached and pinned: renaming over the old pin drops the old
/// link's last reference, so there is no moment without enforcement.
fn pin_link(link: &mut Link, dir: &Path, spec: &ProgramSpec) -> Result<(), BpfError> {
    let path = dir.join(spec.link_pin);
    // bpffs refuses names with a dot.
    let fresh = dir.join(format!("{}_new", spec.link_pin));
    let pin_err = |path: PathBuf, source| BpfError::PinLink { program: spec.name, path, source };
    // Left over by a start that died between pin and rename.
    let _ = fs::remove_file(&fresh);
    link.pin(&fresh).map_err(|e| pin_err(fresh.clone(), e))?;
    fs::rename(&fresh, &path).map_err(|e| pin_err(path, e.into()))
}

/// Points every shared map at its pin; libbpf then reuses a pinned map or creates and pins
/// it. A pin that doesn't match the object's definition (an older layout) would make the
/// load fail, so it is removed first and the map starts empty.
fn set_map_pins(object: &mut OpenObject, dir: &Path) -> Result<(), BpfError> {
    for mut map in object.maps_mut() {
        let Some(&name) = PINNED_MAPS.iter().find(|&&n| map.name() == OsStr::new(n)) else {
            continue; // .rodata: per object, not shared
        };
        let path = dir.join(name);
        if path.exists()
            && let Err(why) = pin_matches(&path, &map)
        {
            warn!(pin = %path.display(), %why, "incompatible pinned map: unpinning it and starting with an empty map");
            fs::remove_file(&path).map_err(|e| BpfError::PinMap { path: path.clone(), source: e.into() })?;
        }
        map.set_pin_path(&path).map_err(|source| BpfError::PinMap { path, source })?;
    }
    Ok(())
}

/// The checks libbpf makes before reusing a pinned map.
fn pin_matches(path: &Path, map: &OpenMap<'_>) -> Result<(), String> {
    let pinned = MapHandle::from_pinned_path(path).map_err(|e| format!("{e:#}"))?;
    let info = MapInfo::new(pinned.as_fd()).map_err(|e| format!("{e:#}"))?.info;
    let have = (info.type_, info.key_size, info.value_size, info.max_entries, info.map_flags);
    let want = (map.map_type() as u32, map.key_size(), map.value_size(), map.max_entries(), map.map_flags());
    if have != want {
        return Err(format!(
            "(type, key size, value size, max entries, flags) pinned {have:?}, expected {want:?}"
        ));
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory is meant to be there and it is not.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    if is_fs(pin_dir, BPF_FS_MAGIC) {
        return Ok(());
    }
    if !pin_dir.starts_with(BPFFS) {
        return Err(BpfError::NotBpffs { path: pin_dir.to_path_buf() });
    }
    nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| BpfError::MountBpffs { path: BPFFS.into(), source })?;
    info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Whether `path`, or its nearest existing ancestor, is on a filesystem of type `magic`.
fn is_fs(path: &Path, magic: nix::sys::statfs::FsType) -> bool {
    path.ancestors()
        .find(|p| p.exists())
        .and_then(|p| statfs(p).ok())
        .is_some_and(|s| s.filesystem_type() == magic)
}

/// Why LSM programs would load but never run, if the kernel says so: BPF LSM must be in
/// the active LSM list (lsm= boot parameter), which securityfs shows.
fn bpf_lsm_inactive() -> Option<String> {
    if !Path::new(LSM_LIST).exists() {
        let mounted = nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        debug!(?mounted, "mounting securityfs to read {LSM_LIST}");
    }
    match fs::read_to_string(LSM_LIST) {
        Ok(list) if !list.trim().split(',').any(|lsm| lsm == "bpf") => {
            Some(format!("BPF LSM is not active: \"bpf\" is not in {LSM_LIST} ({})", list.trim()))
        }
        Ok(_) => None,
        Err(e) => {
            debug!(error = %e, "cannot read {LSM_LIST}; trying the LSM programs anyway");
            None
        }
    }
}

thread_local! {
    /// libbpf's messages while a load on this thread is being captured.
    static LIBBPF_LOG: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// libbpf prints through one process-wide callback: route it to tracing, or to the capture
/// buffer of the thread doing the load (whose caller decides how loud a failure is).
fn install_libbpf_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Info, libbpf_print)));
    });
}

fn libbpf_print(level: PrintLevel, msg: String) {
    let msg = msg.trim_end().to_string();
    let msg = match LIBBPF_LOG.with_borrow_mut(|log| log.as_mut().map(|log| log.push(msg.clone()))) {
        Some(()) => return,
        None => msg,
    };
    match level {
        PrintLevel::Warn => warn!(target: "libbpf", "{msg}"),
        PrintLevel::Info => debug!(target: "libbpf", "{msg}"),
        PrintLevel::Debug => trace!(target: "libbpf", "{msg}"),
    }
}

fn capture_libbpf_log<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    LIBBPF_LOG.with_borrow_mut(|log| *log = Some(Vec::new()));
    let result = f();
    let log = LIBBPF_LOG.with_borrow_mut(Option::take).unwrap_or_default();
    (result, log)
}

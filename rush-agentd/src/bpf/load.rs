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
use libbpf_rs::{Link, MapHandle, MapInfo, Object, OpenMap, OpenObject, PrintLevel, ProgramMut};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use rush_ebpf::file::{FileSkel, FileSkelBuilder};
use rush_ebpf::net::{NetSkel, NetSkelBuilder};
use rush_ebpf::{LSM_PROGRAMS, NET_PROGRAMS, PINNED_MAPS, ProgramSpec};
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
    pub _links: Vec<Link>,
    pub report: AttachReport,
}

pub(super) fn load<'obj>(
    cfg: &BpfConfig,
    net_storage: &'obj mut MaybeUninit<OpenObject>,
    file_storage: &'obj mut MaybeUninit<OpenObject>,
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
    let (net, log) = capture_libbpf_log(|| open.load());
    let net = net.map_err(|source| {
        log.iter().for_each(|line| warn!(target: "libbpf", "{line}"));
        BpfError::Load { object: "net", source }
    })?;
    log.iter().for_each(|line| debug!(target: "libbpf", "{line}"));

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

    let (file, lsm_links, lsm_status) = load_lsm(cfg, file_storage);
    links.extend(lsm_links);
    report.programs.extend(lsm_status);
    Ok(Loaded { net, _file: file, _links: links, report })
}

/// Tries the LSM object. Never fails: what went wrong is recorded per program.
fn load_lsm<'obj>(
    cfg: &BpfConfig,
    storage: &'obj mut MaybeUninit<OpenObject>,
) -> (Option<FileSkel<'obj>>, Vec<Link>, Vec<ProgramStatus>) {
    let failed = |error: String| {
        let status = LSM_PROGRAMS.iter().map(|s| status(s, false, Some(error.clone()))).collect();
        (None, Vec::new(), status)
    };
    if let Some(why) = bpf_lsm_inactive() {
        return failed(why);
    }
    let mut open = match FileSkelBuilder::default().open(storage) {
        Ok(open) => open,
        Err(e) => return failed(format!("open: {e:#}")),
    };
    match open.maps.rodata_data.as_deref_mut() {
        Some(rodata) => rodata.agent_cgroup_level = cfg.agent_cgroup_level,
        None => return failed("BPF object file has no .rodata".into()),
    }
    if let Err(e) = set_map_pins(open.open_object_mut(), &cfg.pin_dir) {
        return failed(error_chain(&e));
    }
    // An EPERM here is the expected outcome on kernels that refuse BPF trampolines.
    let (file, log) = capture_libbpf_log(|| open.load());
    log.iter().for_each(|line| debug!(target: "libbpf", "{line}"));
    let file = match file {
        Ok(file) => file,
        Err(e) => return failed(format!("loading {}: {e:#}", refused_program(&log))),
    };

    let mut links = Vec::new();
    let mut statuses = Vec::new();
    for spec in &LSM_PROGRAMS {
        let attached = program(file.object(), spec)
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
    (Some(file), links, statuses)
}

/// The program libbpf says the kernel refused ("prog 'NAME': BPF program load failed").
fn refused_program(log: &[String]) -> String {
    log.iter()
        .filter(|line| line.contains("load failed"))
        .find_map(|line| line.split('\'').nth(1))
        .unwrap_or("BPF object file")
        .to_string()
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

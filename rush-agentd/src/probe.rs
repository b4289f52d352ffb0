//! `rush doctor`: what this kernel and machine really support, found by probing (never by
//! reading config), and which of Rush's guarantees therefore hold.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rush_proto::{DoctorReport, Guarantee, Probe};

use crate::bpf::AttachReport;
use crate::cgroup::{CgroupLayout, CgroupMode};

/// Everything the probes need that only a loaded daemon knows.
pub struct ProbeInputs<'a> {
    /// What really attached; None when no load was attempted.
    pub attach: Option<&'a AttachReport>,
    pub cgroups: Option<&'a CgroupLayout>,
    /// Whether the metering proxy has an upstream and prices (cost budgets); None = unknown.
    pub meter_ready: Option<bool>,
    /// How many API endpoint addresses connects are counted against; None = unknown.
    pub api_endpoints: Option<usize>,
}

pub fn doctor(inputs: &ProbeInputs<'_>) -> DoctorReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut probes = Vec::new();
    let probe = |name: &str, ok: bool, detail: String| Probe { name: name.into(), ok, detail };

    let lsms = active_lsms();
    let bpf_lsm = lsms.as_deref().is_some_and(|l| l.split(',').any(|m| m == "bpf"));
    probes.push(probe(
        "bpf-lsm-active",
        bpf_lsm,
        match &lsms {
            Some(l) => format!("active LSMs: {l}"),
            None => "cannot read /sys/kernel/security/lsm".into(),
        },
    ));
    let (lsm_attach_ok, lsm_attach_detail) = match inputs.attach {
        Some(r) if r.lsm_attached() => (
            true,
            format!(
                "{} lsm programs attached",
                r.programs.iter().filter(|p| p.hook.starts_with("lsm/")).count()
            ),
        ),
        Some(r) => (false, r.lsm_error().unwrap_or_else(|| "LSM programs did not attach".into())),
        None => (false, "not attempted".into()),
    };
    probes.push(probe("bpf-lsm-attach", lsm_attach_ok, lsm_attach_detail.clone()));
    let net_ok = inputs.attach.is_some_and(|r| r.net_enforced());
    probes.push(probe(
        "cgroup-sock-addr",
        net_ok,
        match inputs.attach {
            Some(r) => summarize(r, "cgroup/"),
            None => "not attempted".into(),
        },
    ));
    probes.push(probe(
        "btf",
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "/sys/kernel/btf/vmlinux (needed for CO-RE)".into(),
    ));
    probes.push(probe("bpffs", is_bpffs(Path::new("/sys/fs/bpf")), "bpf filesystem at /sys/fs/bpf".into()));
    let cgroup_kill = match inputs.cgroups {
        Some(l) => {
            let kill = l.v2_root.join("cgroup.kill").exists()
                || std::fs::read_dir(&l.v2_root)
                    .ok()
                    .and_then(|mut d| {
                        d.find(|e| e.as_ref().is_ok_and(|e| e.path().join("cgroup.kill").exists()))
                    })
                    .is_some();
            let v1: Vec<&str> = l.v1.iter().map(|(c, _)| c.as_str()).collect();
            probes.push(probe(
                "cgroups",
                true,
                format!(
                    "{}; v2 at {} with controllers [{}]; v1 controllers [{}]",
                    l.mode.as_str(),
                    l.v2_root.display(),
                    l.v2_controllers.join(" "),
                    v1.join(" ")
                ),
            ));
            kill
        }
        None => {
            probes.push(probe("cgroups", false, "no cgroup v2 hierarchy mounted".into()));
            false
        }
    };
    let btrfs = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("btrfs"));
    probes.push(probe(
        "btrfs",
        btrfs,
        if btrfs {
            "btrfs in /proc/filesystems".into()
        } else {
            "btrfs not in /proc/filesystems (module not loaded?)".into()
        },
    ));
    let (criu_ok, criu_detail) = criu_check();
    probes.push(probe("criu", criu_ok, criu_detail));
    let landlock = landlock_abi();
    probes.push(probe(
        "landlock",
        landlock.is_some(),
        match landlock {
            Some(v) => format!("ABI version {v}"),
            None => "not available".into(),
        },
    ));

    let guard_ok = inputs.attach.is_some_and(AttachReport::guard_attached);
    let guard_detail = inputs
        .attach
        .and_then(AttachReport::guard_error)
        .unwrap_or_else(|| "the daemon could not load programs".into());
    let sysctl_ok = inputs.attach.is_some_and(AttachReport::sysctl_guarded);
    let g = |name: &str, holds: bool, detail: String| Guarantee { name: name.into(), holds, detail };
    let guarantees = vec![
        g(
            "network policy",
            net_ok,
            if net_ok {
                "connect() and sendmsg() of agents checked by cgroup/connect4,6 and sendmsg4,6".into()
            } else {
                "cgroup sock_addr programs not attached: agents are refused".into()
            },
        ),
        g(
            "agent identity",
            inputs.cgroups.is_some(),
            "each agent in its own cgroup v2, placed before it executes anything".into(),
        ),
        g(
            "kill whole process tree",
            cgroup_kill || inputs.cgroups.is_some_and(|l| l.mode == CgroupMode::Unified),
            if cgroup_kill {
                "cgroup.kill".into()
            } else {
                "cgroup.freeze then SIGKILL of every member".into()
            },
        ),
        g(
            "file tokens",
            lsm_attach_ok,
            if lsm_attach_ok {
                "agents spawned with --allow: every open, read, write, create, delete and rename checked by BPF LSM programs against their tokens (default deny)".into()
            } else {
                format!("BPF LSM programs cannot attach ({lsm_attach_detail}): --allow is refused")
            },
        ),
        g(
            "live revoke on open files",
            lsm_attach_ok,
            if lsm_attach_ok {
                "lsm/file_permission checks every read and write of a regular file or directory".into()
            } else {
                "needs the BPF LSM file programs".into()
            },
        ),
        g(
            "token expiry without the daemon",
            lsm_attach_ok,
            if lsm_attach_ok {
                "deadlines in the grant map, compared with the boot clock in the kernel".into()
            } else {
                "needs the BPF LSM file programs".into()
            },
        ),
        g(
            "exec control",
            lsm_attach_ok,
            if lsm_attach_ok {
                "file-confined agents execute (execve, or mmap/mprotect PROT_EXEC) only files a token grants `exec` (the baseline: system directories); never a memfd".into()
            } else {
                "needs the BPF LSM file programs".into()
            },
        ),
        g(
            "self-protection",
            guard_ok,
            if guard_ok {
                format!(
                    "agents (root ones too) cannot ptrace, signal or reach /proc of processes outside their cgroup, \
                     call bpf(), mount, unshare user namespaces, load modules, write cgroupfs or bpffs, \
                     enter the daemon's state dir, or use CAP_SYS_ADMIN and the other dangerous \
                     capabilities; sysctl writes: {}; setuid binaries don't raise privileges (no_new_privs)",
                    if sysctl_ok { "refused" } else { "NOT refused (cgroup/sysctl program not attached)" }
                )
            } else {
                format!(
                    "BPF LSM guard programs not attached ({guard_detail}): an agent running as root can leave \
                     its cgroup; only no_new_privs{} hold",
                    if sysctl_ok { " and the sysctl-write refusal" } else { "" }
                )
            },
        ),
        budget_guarantee(inputs, "cpu", "cumulative CPU time: frozen at the limit (cgroup freezer)"),
        budget_guarantee(inputs, "cpu-rate", "CPU bandwidth ceiling (cpu.max / cfs quota)"),
        budget_guarantee(inputs, "mem", "memory ceiling, no swap past it: OOM kill inside the agent"),
        budget_guarantee(inputs, "pids", "process ceiling: fork fails with EAGAIN"),
        g(
            "budget: net",
            net_ok,
            if net_ok {
                "bytes sent and received counted per agent by cgroup_skb programs; packets dropped at the limit".into()
            } else {
                "cgroup programs not attached".into()
            },
        ),
        g(
            "budget: api",
            net_ok && inputs.api_endpoints.is_some_and(|n| n > 0),
            match inputs.api_endpoints {
                _ if !net_ok => "cgroup programs not attached".into(),
                Some(0) => {
                    "no API endpoints configured (budget.api_endpoints): api budgets are refused".into()
                }
                Some(n) => format!(
                    "connects to {n} configured API endpoint address(es) counted in the kernel; refused (EPERM) past the limit"
                ),
                None => "known only to a running daemon".into(),
            },
        ),
        g(
            "budget: cost",
            inputs.meter_ready == Some(true),
            match inputs.meter_ready {
                Some(true) => "API spend charged from reported usage by a per-agent metering proxy".into(),
                Some(false) => "config [meter] has no upstream or no prices: cost budgets are refused".into(),
                None => "known only to a running daemon".into(),
            },
        ),
        g("time travel", false, "not implemented yet".into()),
        g(
            "persistence across daemon restarts",
            inputs.attach.is_some(),
            "programs and maps stay pinned (enforcing while the daemon is down); a restarted daemon \
             re-adopts living agents and their tokens from its state database. Not across reboots yet"
                .into(),
        ),
    ];
    DoctorReport { kernel, probes, guarantees }
}

fn summarize(r: &AttachReport, prefix: &str) -> String {
    let mut parts = Vec::new();
    for p in r.programs.iter().filter(|p| p.hook.starts_with(prefix)) {
        match &p.error {
            None if p.attached => parts.push(format!("{} attached", p.hook)),
            Some(e) => parts.push(format!("{} failed: {e}", p.hook)),
            None => parts.push(format!("{} not attached", p.hook)),
        }
    }
    parts.join("; ")
}

/// The LSM list, mounting securityfs first if nobody has.
fn active_lsms() -> Option<String> {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn criu_check() -> (bool, String) {
    let mut child = match Command::new("criu")
        .arg("check")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("criu not runnable: {e}")),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return (false, "criu check timed out".into());
            }
        }
    }
    match child.wait_with_output() {
        Ok(out) => {
            let text =
                String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
            (out.status.success(), format!("criu check: {last}"))
        }
        Err(e) => (false, format!("criu check: {e}")),
    }
}

/// The Landlock ABI version, asked of the kernel directly. By hand (one syscall) rather than
/// with the landlock crate, which the Landlock backend issue will bring in for rulesets.
fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attr, size 0 and the VERSION flag only
    // returns the ABI version (or an error); it reads and writes no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

/// One cgroup-controller budget: holds where cgroups-rs can reach the controller.
fn budget_guarantee(inputs: &ProbeInputs<'_>, resource: &str, what: &str) -> Guarantee {
    let why_not = match inputs.cgroups {
        Some(l) => crate::budget::ResourceControl::unavailable(&crate::budget::CgroupsRs::new(l.clone()))
            .into_iter()
            .find(|(r, _)| *r == resource)
            .map(|(_, why)| why),
        None => Some("no cgroup v2 hierarchy".into()),
    };
    Guarantee {
        name: format!("budget: {resource}"),
        holds: why_not.is_none(),
        detail: match why_not {
            None => what.to_owned(),
            Some(why) => format!("{why}: a {resource} budget is refused"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::ProgramStatus;

    #[test]
    fn guarantees_follow_what_attached() {
        let attach = AttachReport {
            programs: vec![
                ProgramStatus {
                    name: "rush_connect4".into(),
                    hook: "cgroup/connect4".into(),
                    attached: true,
                    error: None,
                },
                ProgramStatus {
                    name: "rush_file_open".into(),
                    hook: "lsm/file_open".into(),
                    attached: false,
                    error: Some("BPF_PROG_LOAD: EPERM".into()),
                },
            ],
            btrfs_keyed: false,
        };
        let r = doctor(&ProbeInputs {
            attach: Some(&attach),
            cgroups: None,
            meter_ready: None,
            api_endpoints: None,
        });
        let file = r.guarantees.iter().find(|g| g.name == "file tokens").unwrap();
        assert!(!file.holds);
        let guard = r.guarantees.iter().find(|g| g.name == "self-protection").unwrap();
        assert!(!guard.holds, "no guard program attached: {}", guard.detail);
        let p = r.probes.iter().find(|p| p.name == "bpf-lsm-attach").unwrap();
        assert!(!p.ok);
        assert!(r.probes.iter().any(|p| p.name == "landlock"));
    }
}

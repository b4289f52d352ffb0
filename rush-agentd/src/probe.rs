//! `rush doctor`: what this kernel and machine really support, found by probing (never by
//! reading config), and which of Rush's guarantees therefore hold.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rush_proto::{DoctorReport, Guarantee, Probe};

use crate::adapters::bpf::AttachReport;
use crate::adapters::cgroup::{CgroupLayout, CgroupMode};
use crate::adapters::landlock::LandlockSection;
use crate::services::agent::FileBackend;

/// Everything the probes need that only a loaded daemon knows.
pub struct ProbeInputs<'a> {
    /// What really attached; None when no load was attempted.
    pub attach: Option<&'a AttachReport>,
    pub cgroups: Option<&'a CgroupLayout>,
    /// Whether the metering proxy has an upstream and prices (cost budgets); None = unknown.
    pub meter_ready: Option<bool>,
    /// How many API endpoint addresses connects are counted against; None = unknown.
    pub api_endpoints: Option<usize>,
    /// What enforces file tokens (chosen by the daemon, or as `auto` would choose).
    pub files: Option<&'a FileBackend>,
    /// What a token change does to a Landlock-confined agent.
    pub landlock: Option<&'a LandlockSection>,
    /// The store new sessions would use (holds, how or why not); None = unknown.
    pub snapshot_store: Option<(bool, String)>,
    /// Whether CRIU can dump and restore here (Err: why not); None = unknown.
    pub criu: Option<Result<(), String>>,
    /// The running daemon's state: store, memory and kernel maps compared, and what was
    /// lost; None without a daemon.
    pub state: Option<StateHealth>,
    /// `[hardening]`, and whether seccomp refusals reach the audit trail (None: unknown,
    /// no daemon).
    pub hardening: Option<(&'a crate::adapters::harden::HardeningSection, Option<Result<(), String>>)>,
    /// Where Landlock enforces file tokens: whether the daemon brings its denials into the
    /// audit trail (Err: why not); None without a daemon (the kernel is asked instead).
    pub landlock_audit: Option<Result<(), String>>,
    /// Where agents' resolvers forward (Err: why there are none); None without a daemon.
    pub dns: Option<Result<std::net::SocketAddr, String>>,
}

/// What a running daemon knows of its own state (`rush doctor`).
pub struct StateHealth {
    pub check: crate::services::agent::StateCheck,
    /// Kernel events the ring buffer dropped since the daemon started.
    pub events_lost: u64,
    /// Audit records the database refused since the daemon started.
    pub records_lost: u64,
    /// Revokes in force in the kernel that the store has not recorded yet.
    pub unsaved_revokes: usize,
    /// The damaged database this daemon moved aside at start, and what it lost.
    pub recovered: Option<String>,
}

/// What confines file-token agents here, for the hardening lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileConfinement {
    BpfLsm,
    Landlock,
    None,
}

/// Whether the cgroup2 mount has `nsdelegate` (cgroup namespaces are then delegation
/// boundaries: migrations out of one fail with ENOENT).
fn cgroup2_nsdelegate() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == "cgroup2" && f[3].split(',').any(|o| o == "nsdelegate")
        })
    })
}

/// The hardening lines: what holds for which kind of agent (root or not, file-confined or
/// not), from the configuration, the guard and the file backend.
pub fn hardening_guarantees(
    h: &crate::adapters::harden::HardeningSection,
    audited: Option<&Result<(), String>>,
    guard: bool,
    files: FileConfinement,
    nsdelegate: bool,
) -> Vec<Guarantee> {
    let g = |name: &str, holds: bool, detail: String| Guarantee { name: name.into(), holds, detail };
    let mut how = Vec::new();
    if guard {
        how.push("the BPF LSM guard refuses every agent's cgroupfs writes (EPERM)".to_string());
    }
    if h.private_cgroupfs && !guard {
        how.push(
            "each agent's own mount namespace has cgroupfs read-only, showing only its cgroup (EROFS)"
                .to_string(),
        );
    }
    if h.cgroup_namespace && nsdelegate {
        how.push("its cgroup namespace is a delegation boundary (cgroup2 nsdelegate: ENOENT)".to_string());
    }
    let stays = !how.is_empty();
    let mut detail = if stays {
        how.join("; ")
    } else {
        "NOT for root agents: one can write its pid into another cgroup's cgroup.procs and leave its network policy, budgets and tree kill behind ([hardening] private_cgroupfs is off and no BPF LSM guard runs); agents of other users cannot (cgroup.procs is root's)"
            .to_string()
    };
    if h.cgroup_namespace && !nsdelegate {
        detail +=
            "; the cgroup namespace alone hides the tree but stops no move here (cgroup2 without nsdelegate)";
    }
    let audit = match audited {
        Some(Ok(())) => "each refusal audited as syscall_deny (from the kernel's audit records)".to_string(),
        Some(Err(why)) => format!("refusals NOT audited: {why}"),
        None => "whether refusals are audited is known only to a running daemon".to_string(),
    };
    let caps = crate::adapters::harden::parse_capabilities(&h.drop_capabilities).unwrap_or_default();
    let cap_names: Vec<String> =
        caps.iter().map(|c| c.to_string().trim_start_matches("CAP_").to_owned()).collect();
    vec![
        g("agents stay in their cgroup (root agents too)", stays, detail),
        g(
            "capabilities of root agents",
            !caps.is_empty(),
            if caps.is_empty() {
                "NOT limited ([hardening] drop_capabilities = []): a root agent holds every capability the other layers do not refuse"
                    .to_string()
            } else {
                format!(
                    "never held by any agent process, setuid binaries included (bounding set): {}; trust levels may change the list (drop_capabilities); agents of other users hold none anyway",
                    cap_names.join(" ")
                )
            },
        ),
        g(
            "system call filter",
            h.seccomp,
            if h.seccomp {
                format!(
                    "every agent, root or not: seccomp refuses {} (EPERM; clone3, iopl, ioperm: ENOSYS; the x32 ABI: ENOSYS); {audit}; a trust level may turn it off (seccomp = false)",
                    crate::adapters::harden::refused_syscalls().join(", ")
                )
            } else {
                "off ([hardening] seccomp = false): keyrings, fanotify, perf events and user namespaces are refused only where the BPF LSM guard or missing capabilities refuse them"
                    .to_string()
            },
        ),
        g(
            "root agents",
            h.root_agents,
            if h.root_agents {
                "allowed: the operator's agents run as the operator (root runs root agents, without the capabilities above); `rush agent spawn --user USER` runs one as USER; a trust level with root_agents = false refuses root"
                    .to_string()
            } else {
                "refused ([hardening] root_agents = false): agents must run as another user (--user)".to_string()
            },
        ),
        g(
            "files handed to an agent",
            files == FileConfinement::BpfLsm,
            match files {
                FileConfinement::BpfLsm => "file-confined agents: reads, writes and memory mappings of a file they did not open (stdin/stdout/stderr, a descriptor received over SCM_RIGHTS) need a token, like their own opens; stdio files get a token with the modes they were opened with"
                    .to_string(),
                FileConfinement::Landlock => "NOT under Landlock, which checks at open only: a descriptor opened outside (received over SCM_RIGHTS from a process outside, or handed as stdin/stdout/stderr) is usable in the modes it was opened with, whatever the tokens; stdio files get a token with those same modes, as under BPF LSM"
                    .to_string(),
                FileConfinement::None => "needs a file backend".to_string(),
            },
        ),
    ]
}

/// Whether file denials reach the audit trail: always under BPF LSM (ring buffer events);
/// under Landlock only from its own audit records (ABI 7+, with the kernel's audit on).
fn file_denials_audited(
    files: Option<Backend>,
    abi: Option<i64>,
    daemon: Option<&Result<(), String>>,
) -> Guarantee {
    let name = "file denials audited".to_string();
    let (holds, detail) = match (files, daemon) {
        (Some(Backend::BpfLsm), _) => (
            true,
            "each denial of the BPF LSM programs is a ring buffer event, audited as file_deny (hook, operation, path, process)".to_string(),
        ),
        (Some(Backend::Landlock), Some(Ok(()))) => (
            true,
            format!(
                "from Landlock's own audit records (ABI {}), audited as file_deny (operation, path, process); \
                 not when the process and the agent's first one exited before the record was read, nor what the kernel dropped (audit backlog)",
                abi.unwrap_or(0)
            ),
        ),
        (Some(Backend::Landlock), Some(Err(why))) => {
            (false, format!("NOT under Landlock here: {why}; spawns, exits, grants and revokes are"))
        }
        (Some(Backend::Landlock), None) => match abi {
            Some(v) if v >= 7 => (
                true,
                format!(
                    "from Landlock's own audit records (ABI {v}) where the daemon runs with [landlock] audit_denials = true (it turns the kernel's audit on; now {})",
                    match crate::adapters::audit_netlink::status() {
                        Ok(s) if s.enabled > 0 => "on".to_string(),
                        Ok(_) => "off".to_string(),
                        Err(e) => format!("unknown: {e}"),
                    }
                ),
            ),
            v => (
                false,
                format!(
                    "NOT under Landlock here: ABI {} does not report denials (ABI 7, Linux 6.15+, does)",
                    v.unwrap_or(0)
                ),
            ),
        },
        (None, _) => (false, "needs a file backend".to_string()),
    };
    Guarantee { name, holds, detail }
}

/// The doctor's two lines on the daemon's state.
fn state_guarantees(state: &StateHealth) -> Vec<Guarantee> {
    let c = &state.check;
    let agree = if c.problems.is_empty() {
        format!(
            "state.db, the daemon and the kernel's grant map agree: {} agents, {} tokens, {} kernel entries checked",
            c.agents, c.tokens, c.kernel_entries
        )
    } else {
        format!("{} disagreements: {}", c.problems.len(), c.problems.join("; "))
    };
    let mut lost = Vec::new();
    if let Some(r) = &state.recovered {
        lost.push(format!("state database damaged at start: {r}"));
    }
    if state.events_lost > 0 {
        lost.push(format!(
            "{} kernel events dropped (ring buffer full; enforcement unaffected)",
            state.events_lost
        ));
    }
    if state.records_lost > 0 {
        lost.push(format!("{} audit records not stored (database refused them)", state.records_lost));
    }
    if state.unsaved_revokes > 0 {
        lost.push(format!(
            "{} revokes in force in the kernel but not yet in state.db (disk full?): a restart would grant them again",
            state.unsaved_revokes
        ));
    }
    let nothing_lost = lost.is_empty();
    if nothing_lost {
        lost.push("no kernel event, audit record, grant or revoke lost since the daemon started".into());
    }
    vec![
        Guarantee {
            name: "state: store and kernel agree".into(),
            holds: c.problems.is_empty(),
            detail: agree,
        },
        Guarantee { name: "state: nothing lost".into(), holds: nothing_lost, detail: lost.join("; ") },
    ]
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
                    "{}; v2 at {} with controllers [{}]; v1 controllers [{}]{}",
                    l.mode.as_str(),
                    l.v2_root.display(),
                    l.v2_controllers.join(" "),
                    v1.join(" "),
                    // Hybrid: whether v1 joins skip the RCU wait (`[cgroup] favordynmods`).
                    match (v1.is_empty(), l.v2_flags.iter().any(|f| f == "favordynmods")) {
                        (true, _) => "",
                        (false, true) => "; favordynmods on (v1 joins do not wait)",
                        (false, false) => "; favordynmods off (a cold spawn waits ~10 ms to join v1)",
                    }
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
    let landlock = crate::adapters::landlock::abi();
    probes.push(probe(
        "landlock",
        landlock.is_some(),
        match landlock {
            Some(v) => format!("ABI version {v}"),
            None => "not available".into(),
        },
    ));

    let guard_ok = inputs.attach.is_some_and(AttachReport::guard_attached);
    let files = match inputs.files {
        Some(FileBackend::BpfLsm) => Some(Backend::BpfLsm),
        Some(FileBackend::Landlock) => Some(Backend::Landlock),
        Some(FileBackend::Unavailable(_)) => None,
        None if lsm_attach_ok => Some(Backend::BpfLsm),
        None if landlock.is_some() => Some(Backend::Landlock),
        None => None,
    };
    let lsm_files = files == Some(Backend::BpfLsm);
    let on_narrow = inputs.landlock.map_or("restarts it", |l| match l.on_narrow {
        crate::adapters::landlock::OnChange::Restart => "restarts it under the new rules",
        crate::adapters::landlock::OnChange::Kill => "kills it",
    });
    let landlock_guard = files == Some(Backend::Landlock) && landlock.is_some_and(|v| v >= 6);
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
        match &inputs.dns {
            Some(Ok(upstream)) => g(
                "net: host names follow their DNS answers",
                net_ok,
                format!(
                    "an agent with names in --net asks its own resolver (any server, port 53), which forwards to \
                     {upstream}; their addresses are allowed for the answer's TTL, other names are REFUSED"
                ),
            ),
            Some(Err(why)) => g(
                "net: host names follow their DNS answers",
                false,
                format!("NO: {why}; names in --net are resolved once, at spawn, and wildcards are refused"),
            ),
            None => g(
                "net: host names follow their DNS answers",
                net_ok,
                "where the daemon finds a DNS server ([dns] upstream or /etc/resolv.conf); ask a running daemon".into(),
            ),
        },
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
        g("file tokens", files.is_some(), file_tokens_detail(&files, landlock, &lsm_attach_detail)),
        file_denials_audited(files, landlock, inputs.landlock_audit.as_ref()),
        g(
            "live revoke on open files",
            lsm_files,
            match files {
                Some(Backend::BpfLsm) => {
                    "lsm/file_permission checks every read and write of a regular file or directory".into()
                }
                Some(Backend::Landlock) => format!(
                    "not under Landlock, which checks at open only: a revoke freezes the agent, then {} \
                     ([landlock] on_narrow), so no process keeps a revoked descriptor or mapping",
                    on_narrow
                ),
                None => "needs a file backend".into(),
            },
        ),
        g(
            "token expiry without the daemon",
            lsm_files,
            match files {
                Some(Backend::BpfLsm) => "deadlines in the grant map, compared with the boot clock in the kernel".into(),
                Some(Backend::Landlock) => format!(
                    "not under Landlock: the daemon enforces a TTL at its deadline (freeze, then {on_narrow}); \
                     with the daemon down, a lapsed token stays usable until it runs again"
                ),
                None => "needs a file backend".into(),
            },
        ),
        g(
            "exec control",
            lsm_files,
            match files {
                Some(Backend::BpfLsm) => "file-confined agents execute (execve, or mmap/mprotect PROT_EXEC) only files a token grants `exec` (the baseline: system directories); never a memfd".into(),
                Some(Backend::Landlock) => "partly, under Landlock: execve of a file no token grants `exec` fails (EACCES), \
                    but Landlock does not see mmap(PROT_EXEC), so `ld.so BINARY` runs a readable binary, \
                    and a memfd can be executed (execveat)".into(),
                None => "needs a file backend".into(),
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
                    "BPF LSM guard programs not attached ({guard_detail}): no ptrace, signal or /proc \
                     checks of their own; what keeps a root agent in its cgroup and away from bpf(), mounts, \
                     keyrings and the dangerous capabilities is the process hardening (the lines below, when \
                     it is on); no_new_privs{}{} hold",
                    if sysctl_ok { " and the sysctl-write refusal" } else { "" },
                    if landlock_guard {
                        ", for file-confined agents Landlock's own limits (no ptrace of, signal to, \
                         or abstract socket of a process outside the agent, the daemon included; no \
                         mount; no write to cgroupfs or anything else no token grants), and for the \
                         others Landlock's scopes (no signal to or abstract socket of a process \
                         outside the agent)"
                    } else {
                        ""
                    }
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
        match &inputs.snapshot_store {
            Some((holds, how)) => g("time travel: files", *holds, how.clone()),
            None => g("time travel: files", false, "known only to a running daemon".into()),
        },
        match &inputs.criu {
            Some(Ok(())) => g(
                "time travel: processes",
                true,
                "CRIU dumps and restores agents' process trees (`rush checkpoint --with-processes`)".into(),
            ),
            Some(Err(why)) => g(
                "time travel: processes",
                false,
                format!("{why}: `rush checkpoint --with-processes` is refused (files and shell state still work)"),
            ),
            None => g("time travel: processes", false, "known only to a running daemon".into()),
        },
        g(
            "persistence across daemon restarts",
            inputs.attach.is_some(),
            "programs and maps stay pinned (enforcing while the daemon is down); a restarted daemon \
             re-adopts living agents and their tokens from its state database (Landlock rules stay with \
             the processes; a re-adopted Landlock agent is killed, not restarted, on a token change, \
             unless it was spawned --restartable). After a reboot, sessions come back with their state \
             and checkpoints, and --restartable agents are started again (fail closed)"
                .into(),
        ),
    ];
    let mut guarantees = guarantees;
    if let Some((section, audited)) = &inputs.hardening {
        let backend = match files {
            Some(Backend::BpfLsm) => FileConfinement::BpfLsm,
            Some(Backend::Landlock) => FileConfinement::Landlock,
            None => FileConfinement::None,
        };
        guarantees.extend(hardening_guarantees(
            section,
            audited.as_ref(),
            guard_ok,
            backend,
            cgroup2_nsdelegate(),
        ));
    }
    if let Some(state) = &inputs.state {
        guarantees.extend(state_guarantees(state));
    }
    DoctorReport { kernel, probes, guarantees }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    BpfLsm,
    Landlock,
}

fn file_tokens_detail(files: &Option<Backend>, landlock: Option<i64>, lsm_detail: &str) -> String {
    match files {
        Some(Backend::BpfLsm) => "agents spawned with --allow: every open, read, write, create, delete and rename checked by BPF LSM programs against their tokens (default deny)".into(),
        Some(Backend::Landlock) => format!(
            "by Landlock (ABI {}): agents spawned with --allow enter, before exec, a ruleset made of their \
             tokens (read, write, exec, create, delete as Landlock rights; default deny, also TCP connect \
             ports from ABI 4). Rules are path hierarchies fixed at spawn: a change restarts or kills the \
             agent; conditional tokens and editor-style saves of a single-file token need BPF LSM",
            landlock.unwrap_or(0)
        ),
        None => format!(
            "BPF LSM programs cannot attach ({lsm_detail}) and Landlock is {}: --allow is refused \
             (--allow-unconfined runs the agent anyway, listed as UNCONFINED)",
            if landlock.is_some() { "not chosen (files.enforcement)" } else { "not available" }
        ),
    }
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

/// One cgroup-controller budget: holds where cgroups-rs can reach the controller.
fn budget_guarantee(inputs: &ProbeInputs<'_>, resource: &str, what: &str) -> Guarantee {
    let why_not = match inputs.cgroups {
        Some(l) => crate::services::budget::ResourceControl::unavailable(
            &crate::services::budget::CgroupsRs::new(l.clone()),
        )
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
    use crate::adapters::bpf::ProgramStatus;

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
            files: Some(&FileBackend::Unavailable("x".into())),
            snapshot_store: None,
            criu: None,
            state: None,
            landlock: None,
            hardening: None,
            landlock_audit: None,
            dns: None,
        });
        let file = r.guarantees.iter().find(|g| g.name == "file tokens").unwrap();
        assert!(!file.holds);
        let guard = r.guarantees.iter().find(|g| g.name == "self-protection").unwrap();
        assert!(!guard.holds, "no guard program attached: {}", guard.detail);
        let p = r.probes.iter().find(|p| p.name == "bpf-lsm-attach").unwrap();
        assert!(!p.ok);
        assert!(r.probes.iter().any(|p| p.name == "landlock"));
    }

    /// The hardening lines say what holds for which agents, from config, guard and backend.
    #[test]
    fn hardening_lines_follow_the_layers() {
        let on = crate::adapters::harden::HardeningSection::default();
        let find = |g: &[Guarantee], n: &str| g.iter().find(|x| x.name.starts_with(n)).unwrap().clone();
        let g = hardening_guarantees(&on, Some(&Ok(())), false, FileConfinement::Landlock, false);
        let stay = find(&g, "agents stay in their cgroup");
        assert!(
            stay.holds && stay.detail.contains("read-only") && stay.detail.contains("without nsdelegate")
        );
        assert!(find(&g, "system call filter").detail.contains("audited as syscall_deny"));
        let handed = find(&g, "files handed to an agent");
        assert!(!handed.holds && handed.detail.starts_with("NOT under Landlock"), "{}", handed.detail);
        // Everything off, no guard: root agents can leave, and it says so.
        let off = crate::adapters::harden::HardeningSection {
            cgroup_namespace: false,
            private_cgroupfs: false,
            drop_capabilities: vec![],
            seccomp: false,
            root_agents: true,
        };
        let g =
            hardening_guarantees(&off, Some(&Err("no audit".into())), false, FileConfinement::None, false);
        let stay = find(&g, "agents stay in their cgroup");
        assert!(!stay.holds && stay.detail.starts_with("NOT for root agents"), "{}", stay.detail);
        assert!(!find(&g, "capabilities of root agents").holds);
        assert!(!find(&g, "system call filter").holds);
        // The guard alone keeps them in, and the view is not claimed where it is not made.
        let g = hardening_guarantees(&off, None, true, FileConfinement::BpfLsm, true);
        let stay = find(&g, "agents stay in their cgroup");
        assert!(stay.holds && stay.detail.contains("BPF LSM guard") && !stay.detail.contains("read-only"));
        assert!(find(&g, "files handed to an agent").holds);
    }
}

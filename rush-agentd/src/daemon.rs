//! Start-up, the event pump from the kernel to the audit log, and shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rush_proto::AuditEvent;
use tokio::sync::{broadcast, mpsc};

use crate::adapters::bpf::{AttachReport, BpfConfig, BpfHandle, KernelEvent, KernelPolicy};
use crate::adapters::cgroup::{CgroupBackend, CgroupLayout, FsCgroups};
use crate::api::{self, ApiContext};
use crate::config::{Config, EnforcementChoice};
use crate::probe::{self, ProbeInputs};
use crate::services::agent::{AgentManager, AgentSetup, Enforcement, FileBackend};
use crate::services::audit::AuditLog;
use crate::services::budget::CgroupsRs;
use crate::services::budget::{Budgets, MeterSetup};
use crate::services::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("rush-agentd must run as root (it loads BPF programs and manages cgroups)")]
    NotRoot,
    #[error("cannot create state directory {path}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::adapters::cgroup::CgroupError),
    #[error(transparent)]
    Policy(#[from] crate::services::policy::PolicyError),
    #[error("cannot load the kernel programs")]
    Bpf(#[from] crate::adapters::bpf::BpfError),
    #[error(transparent)]
    Audit(#[from] crate::services::audit::AuditError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiServerError),
    #[error(transparent)]
    Store(#[from] crate::adapters::store::StoreError),
    #[error(transparent)]
    Harden(#[from] crate::adapters::harden::HardenError),
    #[error("[dns] upstream {0:?}: not an IP address or IP:PORT (e.g. 10.0.0.1, [fd00::1]:5353)")]
    DnsUpstream(String),
    #[error(transparent)]
    Etcd(#[from] crate::adapters::etcd::EtcdError),
    #[error("risk gating cannot start: {0}")]
    Gating(String),
    #[error("the approvals queue cannot start: {0}")]
    Approvals(String),
}

/// `[coordination] backend = "etcd"`: its client, started (etcd need not answer yet).
fn start_etcd(config: &Config, state_dir: &Path) -> Result<Option<crate::adapters::etcd::Etcd>, DaemonError> {
    let c = &config.coordination;
    if c.backend != crate::config::CoordinationBackend::Etcd {
        return Ok(None);
    }
    let node = c.node_name(state_dir);
    let etcd = crate::adapters::etcd::Etcd::start(crate::adapters::etcd::EtcdSetup {
        endpoints: c.etcd_endpoints.clone(),
        prefix: c.etcd_prefix.clone(),
        lease_ttl: c.etcd_lease_ttl(),
        tls: c.etcd_ca_file.clone().map(|ca_file| crate::adapters::etcd::EtcdTls {
            ca_file,
            identity: c.etcd_cert_file.clone().zip(c.etcd_key_file.clone()),
        }),
        node: node.clone(),
    })?;
    tracing::info!(endpoints = etcd.endpoints(), node, "coordination: on etcd");
    Ok(Some(etcd))
}

/// The coordination store, this daemon's node name among the daemons sharing it (empty
/// when embedded), and what reports claims changed by other daemons.
type CoordinationBackend = (
    Arc<dyn crate::services::coordination::CoordinationStore>,
    String,
    Option<tokio::sync::watch::Receiver<u64>>,
);

fn coordination_store(
    etcd: Option<crate::adapters::etcd::Etcd>,
    store: &Arc<crate::adapters::store::Store>,
    state_dir: &Path,
) -> CoordinationBackend {
    match etcd {
        None => (
            Arc::new(crate::services::coordination::Embedded {
                store: store.clone(),
                blobs: state_dir.join("results"),
            }),
            String::new(),
            None,
        ),
        Some(etcd) => {
            let (node, changes) = (etcd.node().to_owned(), etcd.changes());
            (Arc::new(etcd), node, Some(changes))
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. With `ephemeral`, the BPF pins are removed on
/// exit (tests and benchmarks); otherwise programs and maps stay pinned and enforcing.
pub async fn run(config: Config, ephemeral: bool) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let state_dir = config.daemon.state_dir.clone();
    let log_dir = state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|source| DaemonError::StateDir { path: log_dir.clone(), source })?;

    // Before anything touches the kernel: a bad etcd setup (an unreadable TLS file) stops
    // the start here, naming its key.
    let etcd = start_etcd(&config, &state_dir)?;
    let layout = CgroupLayout::detect()?;
    let mut cgroups = FsCgroups::new(layout.clone(), &config.cgroup.parent, &config.cgroup.v1_controllers)?;
    // Hybrid hosts: v1 joins without an RCU grace period each (`[cgroup] favordynmods`).
    let dynmods = cgroups.favor_dynmods(config.cgroup.favordynmods);
    match &dynmods {
        Ok(crate::adapters::cgroup::DynmodsState::Held { set_now, .. }) => {
            tracing::info!(set_now, "cgroup2 favordynmods on while the daemon runs (v1 joins do not wait)")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %crate::core::error_chain(e), "cgroup2 favordynmods not set: cold spawns wait ~10 ms to join v1 hierarchies")
        }
    }
    let cgroups = Arc::new(cgroups);
    let bpf_config = BpfConfig {
        pin_dir: config.bpf.pin_dir.clone(),
        cgroup2_root: layout.v2_root.clone(),
        agent_cgroup_level: cgroups.agent_level(),
        protected_dirs: protected_dirs(&state_dir, &config.daemon.socket),
    };
    let (bpf, report, events) = BpfHandle::start(bpf_config)?;
    log_attach_report(&report);
    let files = choose_file_backend(config.files.enforcement, &report);
    match &files {
        FileBackend::BpfLsm => tracing::info!("file tokens: enforced by BPF LSM"),
        FileBackend::Landlock => tracing::warn!(
            abi = crate::adapters::landlock::abi().unwrap_or(0),
            "file tokens: enforced by Landlock (rules fixed at spawn: a grant, revoke or expiry \
             restarts or kills the agent; expiry needs this daemon running)"
        ),
        FileBackend::Unavailable(why) => tracing::warn!("file tokens cannot be enforced: {why}"),
    }
    let doctor_files = files.clone();
    let enforcement = Enforcement {
        net: report.net_enforced(),
        files,
        landlock: config.landlock.clone(),
        keys: crate::core::FileKeys { btrfs_keyed: report.btrfs_keyed },
    };

    let policy = Policy::load(&config.policy.file)?;
    // Connects to these count as model API calls (the `api` budget).
    let api_endpoints = resolve_api_endpoints(&config.budget.api_endpoints).await;
    if let Err(e) = bpf.set_api_endpoints(&api_endpoints) {
        tracing::error!(error = %e, "API endpoints not set: api budgets count nothing and are refused");
    }
    let api_endpoint_count = api_endpoints.len();
    let (meter_tx, meter_rx) = tokio::sync::mpsc::unbounded_channel();
    // Before anything opens it: a damaged database is moved aside and salvaged.
    let recovery = crate::adapters::store::recover_if_corrupt(&state_dir.join("state.db"))?;
    let bus = crate::services::events::EventBus::new(config.events.backlog);
    let audit = Arc::new(AuditLog::open_with_bus(&state_dir.join("state.db"), bus)?);
    if let Some(r) = &recovery {
        audit.record(
            None,
            AuditEvent::StoreRecovered {
                moved_to: r.moved_to.display().to_string(),
                why: r.why.clone(),
                salvaged: r.salvaged.iter().map(|(t, n)| format!("{t}={n}")).collect(),
                lost: r.lost.clone(),
            },
        );
    }
    // The JSON-lines trail of a daemon from before the store, once.
    if let Err(e) = audit.import_jsonl(&state_dir.join("audit.jsonl")) {
        tracing::error!(error = %crate::core::error_chain(&e), "old audit trail not imported");
    }
    let retention = tokio::spawn(prune_audit(audit.clone(), config.audit.clone()));
    let kernel: Arc<dyn KernelPolicy> = Arc::new(bpf.clone());
    let store = Arc::new(crate::adapters::store::Store::open(&state_dir.join("state.db"))?);
    let dns = dns_resolver(&config.dns)?;
    let doctor_dns: Result<std::net::SocketAddr, String> =
        dns.as_ref().map(|c| c.upstream).ok_or_else(|| {
            "no DNS server ([dns] upstream empty and no nameserver in /etc/resolv.conf)".to_string()
        });
    let agents = AgentManager::new(AgentSetup {
        dns,
        cgroups: cgroups.clone(),
        kernel: kernel.clone(),
        audit: audit.clone(),
        enforcement,
        log_dir,
        baseline: with_socket(config.files.grants(), &config.daemon.socket),
        budgets: Budgets {
            control: Arc::new(CgroupsRs::new(cgroups.layout().clone())),
            policy,
            meter: Some(MeterSetup { config: Arc::new(config.meter.clone()), events: meter_tx }),
            api_endpoints: api_endpoint_count,
        },
        criu: Arc::new(crate::adapters::snapshot::criu::CriuSetup::new(config.snapshot.criu.clone())),
        hardening: Some(crate::services::agent::AgentHardening {
            cgroup_namespace: config.hardening.cgroup_namespace,
            private_cgroupfs: config.hardening.private_cgroupfs,
            guard: report.guard_attached(),
            defaults: config.hardening.policy()?,
            seccomp: Arc::new(crate::adapters::harden::seccomp_program()?),
        }),
        private_tmp: config
            .files
            .private_tmp
            .then(|| crate::services::baseline::PrivateTmp::beside(&state_dir)),
        store: Some(store.clone()),
        terminal_scrollback: config.terminal.scrollback,
    });
    let (coordination_store, node, store_changes) = coordination_store(etcd, &store, &state_dir);
    let coordination = Arc::new(crate::services::coordination::Coordination::new(
        crate::services::coordination::CoordinationSetup {
            store: coordination_store,
            node,
            agents: agents.clone(),
            kernel,
            audit: audit.clone(),
            keys: crate::core::FileKeys { btrfs_keyed: report.btrfs_keyed },
            kernel_claims: if matches!(doctor_files, FileBackend::BpfLsm) {
                Ok(())
            } else {
                Err(match &doctor_files {
                    FileBackend::Landlock => {
                        "no BPF LSM on this kernel, and a Landlock ruleset cannot be narrowed in a running agent"
                            .to_string()
                    }
                    _ => "no BPF LSM on this kernel".to_string(),
                })
            },
            max_result_bytes: config.coordination.max_result_bytes.min(700 << 10),
        },
    ));
    // Before any agent starts (adopted ones already run: their denies come with the sweep).
    agents.set_admission(coordination.clone());
    let adopted = agents.adopt();
    if adopted > 0 {
        tracing::info!(adopted, "re-adopted agents left running by a previous daemon");
    }
    agents.reap_orphans();
    // After adoption: what no living agent uses any more is removed.
    agents.sweep_private_tmp();
    let events_lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The seccomp filter's refusals and Landlock's denials, from the kernel's audit records.
    let (record_tx, audit_records) = mpsc::unbounded_channel();
    let syscall_audit: Result<(), String> = match crate::adapters::audit_netlink::open() {
        Ok(fd) => std::thread::Builder::new()
            .name("audit-netlink".into())
            .spawn(move || crate::adapters::audit_netlink::read_loop(fd, |r| drop(record_tx.send(r))))
            .map(drop)
            .map_err(|e| format!("cannot start its reader: {e}")),
        Err(e) => Err(format!("the kernel's audit socket cannot be joined: {e}")),
    };
    if let Err(why) = &syscall_audit {
        tracing::warn!("seccomp refusals will not be audited: {why}");
    }
    // Before any agent is spawned (restartable ones below): the flag of their rulesets.
    let landlock_audit = matches!(doctor_files, FileBackend::Landlock)
        .then(|| landlock_audit(&config.landlock, &syscall_audit));
    if let Some(Err(why)) = &landlock_audit {
        tracing::warn!("Landlock's file denials will not be audited: {why}");
    }
    let agent_cgroups = AgentCgroups {
        v2_root: cgroups.layout().v2_root.clone(),
        prefix: format!("/{}/", config.cgroup.parent.to_string_lossy().trim_matches('/')),
    };
    let approvals = Arc::new(
        crate::services::approvals::Approvals::new(crate::services::approvals::ApprovalsSetup {
            store: store.clone(),
            agents: Arc::new(crate::handles::AgentsForApprovals(agents.clone())),
            claims: Some(coordination.clone()),
            audit: audit.clone(),
            config: config.approvals.clone(),
        })
        .map_err(DaemonError::Approvals)?,
    );
    // Set once the sessions it judges in are open (below); denials before that have no
    // command of the gate's to be about.
    let gating_for_denials = Arc::new(std::sync::OnceLock::new());
    let pump = tokio::spawn(pump_events(
        events,
        audit_records,
        agent_cgroups,
        agents.clone(),
        DenialReaders {
            coordination: coordination.clone(),
            approvals: approvals.clone(),
            gating: gating_for_denials.clone(),
        },
        audit.clone(),
        events_lost.clone(),
    ));
    let meter_pump = tokio::spawn(pump_meter_events(meter_rx, audit.clone()));
    let budget_poll = std::time::Duration::from_millis(config.budget.poll_ms);
    let budgets = tokio::spawn({
        let agents = agents.clone();
        async move {
            let mut tick = tokio::time::interval(budget_poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                agents.check_budgets().await;
            }
        }
    });

    // Before the socket is bound: a rules file of the operator's has every rule's examples
    // judged, which no client should wait on (nor find the daemon refusing to start after
    // it answered).
    let gating_policy = config.gating.policy().map_err(DaemonError::Gating)?;
    let listener = api::bind(&config.daemon.socket).await?;
    let operator_gid =
        config.daemon.operator_group.as_deref().and_then(|g| match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => Some(grp.gid.as_raw()),
            _ => {
                tracing::warn!(group = g, "operator group not found; only root may operate the daemon");
                None
            }
        });
    let parent = config.cgroup.parent.to_string_lossy().trim_matches('/').to_owned();
    let meter_ready = match config.meter.check() {
        Ok(()) => true,
        Err(e) if config.meter != crate::services::meter::MeterConfig::default() => {
            tracing::warn!(error = %e, "[meter] is unusable: cost budgets are refused until it is fixed");
            false
        }
        Err(_) => false,
    };
    let doctor_report = report.clone();
    let doctor_landlock = config.landlock.clone();
    let doctor_hardening = config.hardening.clone();
    let doctor_syscall_audit = syscall_audit.clone();
    let doctor_landlock_audit = landlock_audit.clone();
    let doctor_layout = cgroups.layout().clone();
    let sessions = crate::services::session::Sessions::open(
        store.clone(),
        agents.clone(),
        audit.clone(),
        config.snapshot.clone(),
        state_dir.clone(),
    );
    // Sessions first: a restartable agent's workspace is there once its store is mounted.
    let restarted = agents.restart_restartable(|s| sessions.exists(s)).await;
    if restarted > 0 {
        tracing::info!(restarted, "restartable agents started again");
    }
    // Claims whose holders died while no daemon ran are released; the rest are mirrored
    // into the kernel again (adopted agents included).
    coordination.sweep();
    coordination.resync_kernel();
    crate::services::coordination::spawn_sweeper(coordination.clone(), store_changes);
    // Deadlines that passed while no daemon ran are applied now (marked late), and
    // approvals whose effect a crash cut off are finished.
    approvals.sweep(true).await;
    let approvals_sweeper = crate::services::approvals::spawn_sweeper(approvals.clone());
    let (channels_stop, channels_stopped) = tokio::sync::watch::channel(());
    let approval_channels =
        match crate::services::approvals::spawn_channels(approvals.clone(), channels_stopped).await {
            Ok(tasks) => tasks,
            Err(e) => {
                // Loud, not fatal: requests still queue and the CLI still decides them.
                tracing::error!(
                    "approval channels not started: {e}; only the cli channel delivers (rush approvals)"
                );
                Vec::new()
            }
        };
    let gating = Arc::new(
        crate::services::gating::Gating::new(crate::services::gating::GatingSetup {
            store: store.clone(),
            audit: audit.clone(),
            context: Arc::new(crate::handles::ContextForGating {
                agents: agents.clone(),
                sessions: sessions.clone(),
            }),
            config: config.gating.clone(),
            policy: gating_policy,
        })
        .map_err(DaemonError::Gating)?,
    );
    let _ = gating_for_denials.set(gating.clone());
    let workspaces =
        crate::services::workspaces::Workspaces::new(crate::services::workspaces::WorkspacesSetup {
            store: store.clone(),
            audit: audit.clone(),
            context: Arc::new(crate::handles::ContextForWorkspaces {
                agents: agents.clone(),
                coordination: coordination.clone(),
            }),
            config: config.workspaces.clone(),
        });
    // Merges a stopped daemon left are resumed or ended before new ones queue.
    crate::services::workspaces::spawn_queue(workspaces.clone());
    let doctor_coordination = coordination.clone();
    let doctor_sessions = sessions.clone();
    let (doctor_agents, doctor_audit, doctor_events_lost) =
        (agents.clone(), audit.clone(), events_lost.clone());
    let doctor_recovery = recovery.map(|r| {
        format!(
            "{} (moved aside: {}; lost: {})",
            r.why,
            r.moved_to.display(),
            if r.lost.is_empty() { "nothing".into() } else { r.lost.join("; ") }
        )
    });
    let ctx = Arc::new(ApiContext {
        agents: agents.clone(),
        sessions: sessions.clone(),
        coordination,
        approvals: approvals.clone(),
        gating,
        workspaces,
        audit: audit.clone(),
        operator_gid,
        agent_cgroup_prefix: format!("/{parent}/"),
        socket: config.daemon.socket.clone(),
        doctor: Box::new(move || {
            let mut report = probe::doctor(&ProbeInputs {
                attach: Some(&doctor_report),
                cgroups: Some(&doctor_layout),
                meter_ready: Some(meter_ready),
                api_endpoints: Some(api_endpoint_count),
                files: Some(&doctor_files),
                landlock: Some(&doctor_landlock),
                snapshot_store: Some(doctor_sessions.store_report()),
                criu: Some(doctor_agents.criu().get().map(|_| ()).map_err(|e| crate::core::error_chain(&e))),
                hardening: Some((&doctor_hardening, Some(doctor_syscall_audit.clone()))),
                landlock_audit: doctor_landlock_audit.clone(),
                dns: Some(doctor_dns.clone()),
                state: Some(probe::StateHealth {
                    check: doctor_agents.check_state(),
                    events_lost: doctor_events_lost.load(std::sync::atomic::Ordering::Relaxed),
                    records_lost: doctor_audit.records_lost(),
                    unsaved_revokes: doctor_agents.unsaved_revokes(),
                    recovered: doctor_recovery.clone(),
                }),
            });
            report.guarantees.push(doctor_coordination.doctor_guarantee());
            report.guarantees.push(doctor_coordination.doctor_store());
            report
        }),
    });
    let (shutdown_tx, _) = broadcast::channel(1);
    let server = tokio::spawn(api::serve(listener, ctx, shutdown_tx.subscribe()));
    tracing::info!(socket = %config.daemon.socket.display(), state_dir = %state_dir.display(), "rush-agentd ready");
    sd_notify("READY=1");

    wait_for_signal().await;
    sd_notify("STOPPING=1");
    let _ = shutdown_tx.send(());
    let _ = server.await;
    if ephemeral {
        tracing::info!("shutting down (ephemeral): killing agents");
        agents.kill_all_agents().await;
    } else {
        // The pinned programs keep confining them; the next daemon re-adopts them.
        tracing::info!(
            agents = agents.list().len(),
            "shutting down: agents keep running, confined by the pinned programs"
        );
    }
    let _ = std::fs::remove_file(&config.daemon.socket);
    pump.abort();
    meter_pump.abort();
    budgets.abort();
    approvals_sweeper.abort();
    drop(channels_stop);
    for t in approval_channels {
        t.abort();
    }
    retention.abort();
    drop(bpf);
    if let Ok(state) = dynmods
        && let Err(e) = crate::adapters::cgroup::release_dynmods(cgroups.layout(), state)
    {
        tracing::warn!(error = %crate::core::error_chain(&e), "cgroup2 favordynmods not cleared");
    }
    if ephemeral {
        sessions.unmount_loop_store();
        cgroups.remove_parent();
        if let Err(e) = std::fs::remove_dir_all(&config.bpf.pin_dir) {
            tracing::warn!(pin_dir = %config.bpf.pin_dir.display(), error = %e, "pins not removed");
        }
    }
    Ok(())
}

/// Tells systemd (`Type=notify`, contrib/systemd/rush-agentd.service) how the daemon is
/// doing: `READY=1` once the socket accepts requests, so `systemctl start` returns only then.
/// Nothing when not started by systemd. One datagram to $NOTIFY_SOCKET by hand rather than
/// a crate: that is the whole protocol, and the daemon builds on a 2-core machine.
fn sd_notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = notify_to(&socket, state) {
        tracing::warn!(socket = ?socket, error = %e, state, "systemd not notified");
    }
}

/// Sends `state` to the notify socket `socket`: a path, or `@name` in the abstract namespace.
fn notify_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(socket))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// The file-token backend for `choice`, from what really attached and what the kernel has.
pub fn choose_file_backend(choice: EnforcementChoice, report: &AttachReport) -> FileBackend {
    let lsm_why = || match report.lsm_error() {
        Some(e) => format!("this kernel does not attach BPF LSM programs ({e})"),
        None => "the BPF LSM programs are not attached".into(),
    };
    let landlock = crate::adapters::landlock::abi().is_some();
    match choice {
        EnforcementChoice::BpfLsm if report.lsm_attached() => FileBackend::BpfLsm,
        EnforcementChoice::BpfLsm => FileBackend::Unavailable(format!(
            "{}, and files.enforcement is \"bpf-lsm\", so file tokens cannot be enforced",
            lsm_why()
        )),
        EnforcementChoice::Landlock if landlock => FileBackend::Landlock,
        EnforcementChoice::Landlock => FileBackend::Unavailable(
            "Landlock is not available on this kernel (files.enforcement is \"landlock\"), so file \
             tokens cannot be enforced"
                .into(),
        ),
        EnforcementChoice::Auto if report.lsm_attached() => FileBackend::BpfLsm,
        EnforcementChoice::Auto if landlock => FileBackend::Landlock,
        EnforcementChoice::Auto => FileBackend::Unavailable(format!(
            "{}, and Landlock is not available either, so file tokens cannot be enforced",
            lsm_why()
        )),
    }
}

/// The agent a kernel event came from, or `cgroup:ID` for one this daemon never knew.
fn agent_name(agents: &AgentManager, cgroup_id: u64) -> String {
    agents.name_of(cgroup_id).unwrap_or_else(|| format!("cgroup:{cgroup_id}"))
}

fn log_attach_report(report: &AttachReport) {
    for p in &report.programs {
        match &p.error {
            None if p.attached => tracing::info!(program = %p.name, hook = %p.hook, "attached"),
            err => {
                tracing::warn!(program = %p.name, hook = %p.hook, error = err.as_deref().unwrap_or("not attached"), "NOT attached")
            }
        }
    }
    if !report.lsm_attached() {
        tracing::warn!(
            "BPF LSM programs are not attached: no self-protection (guard) programs; file tokens only through Landlock"
        );
    }
}

/// Where agent cgroups are, to find the agent of a pid an audit record names.
struct AgentCgroups {
    v2_root: PathBuf,
    /// `/<parent>/`, as `/proc/PID/cgroup` shows agent cgroups.
    prefix: String,
}

impl AgentCgroups {
    /// (cgroup id, agent name) of the agent `pid` is in, if any.
    fn of_pid(&self, pid: u32) -> Option<(u64, String)> {
        use std::os::unix::fs::MetadataExt;
        let path = crate::adapters::cgroup::process_cgroup_v2(pid as i32)?;
        let name = path.strip_prefix(&self.prefix)?.split('/').next()?.to_owned();
        let dir = self.v2_root.join(self.prefix.trim_matches('/')).join(&name);
        Some((std::fs::metadata(dir).ok()?.ino(), name))
    }
}

/// Landlock's denials in the audit trail (`[landlock] audit_denials`, where Landlock
/// enforces file tokens): agents spawned from now on log their denials after exec, and the
/// kernel's audit is turned on if it is off (Landlock reports nothing while it is off).
/// `reader`: whether the audit records are read at all. Err says why denials will not be
/// audited.
fn landlock_audit(
    config: &crate::adapters::landlock::LandlockSection,
    reader: &Result<(), String>,
) -> Result<(), String> {
    if !config.audit_denials {
        return Err("[landlock] audit_denials = false".into());
    }
    if let Err(why) = reader {
        return Err(format!("the kernel's audit records cannot be read ({why})"));
    }
    // First: a kernel whose Landlock cannot log (ABI < 7) gets its audit left alone.
    crate::adapters::landlock::log_denials(true)?;
    let enabled = crate::adapters::audit_netlink::status()
        .map_err(|e| format!("the kernel's audit status cannot be read (AUDIT_GET: {e})"))
        .and_then(|status| {
            if status.enabled > 0 {
                return Ok(());
            }
            crate::adapters::audit_netlink::set_enabled(true)
                .map_err(|e| format!("the kernel's audit is off and cannot be turned on (AUDIT_SET: {e})"))?;
            tracing::info!(
                "turned the kernel's audit on (as `auditctl -e 1` does) so that Landlock reports agents' \
                 denials; it stays on; [landlock] audit_denials = false leaves it alone"
            );
            Ok(())
        });
    if enabled.is_err() {
        let _ = crate::adapters::landlock::log_denials(false);
    }
    enabled
}

/// The agent a Landlock denial is of: the denied task's, else its domain creator's (the
/// agent's first process), else the agent a domain was found to be before (domain ids are
/// never reused until the domain ends). None for processes outside agents.
fn landlock_agent(
    d: &crate::adapters::audit_netlink::LandlockDenial,
    agent_cgroups: &AgentCgroups,
    agents: &AgentManager,
    domains: &mut std::collections::HashMap<u64, (u64, String)>,
) -> Option<(u64, String)> {
    if let Some(known) = domains.get(&d.domain) {
        return Some(known.clone());
    }
    let found = d
        .task
        .as_ref()
        .and_then(|t| agent_cgroups.of_pid(t.pid))
        .or_else(|| d.creator.and_then(|pid| agent_cgroups.of_pid(pid)))
        .or_else(|| {
            let pid = d.creator?;
            agents.list().into_iter().find(|a| a.pid == pid).map(|a| (a.cgroup_id, a.name))
        })?;
    // Bounded: domains that never end are forgotten past this, and looked up again.
    if domains.len() >= 4096 {
        domains.clear();
    }
    domains.insert(d.domain, found.clone());
    Some(found)
}

/// The services kernel events reach besides the audit trail: claims name a denial's
/// holder; a trusted agent's file denial may become a request for a person.
struct DenialReaders {
    coordination: Arc<crate::services::coordination::Coordination>,
    approvals: Arc<crate::services::approvals::Approvals>,
    /// Many denials right after a gated command teach a guardrail.
    gating: Arc<std::sync::OnceLock<Arc<crate::services::gating::Gating>>>,
}

/// Kernel events → audit records, naming the agent.
async fn pump_events(
    mut events: mpsc::UnboundedReceiver<KernelEvent>,
    mut records: mpsc::UnboundedReceiver<crate::adapters::audit_netlink::AuditRecord>,
    agent_cgroups: AgentCgroups,
    agents: Arc<AgentManager>,
    readers: DenialReaders,
    audit: Arc<AuditLog>,
    events_lost: Arc<std::sync::atomic::AtomicU64>,
) {
    let DenialReaders { coordination, approvals, gating } = readers;
    let storm = |agent: &str| {
        if let Some(g) = gating.get().and_then(|g| g.denied(agent)) {
            tracing::info!(guardrail = g.id, pattern = %g.pattern, "guardrail learned from a denial storm");
        }
    };
    // 200 at once, then 50 a second, per agent; the rest counted (see DenyLimiter).
    let mut limiter = crate::services::audit::DenyLimiter::new(200, 50);
    let mut flush = tokio::time::interval(std::time::Duration::from_secs(1));
    // Landlock domain id → (cgroup id, name) of the agent it confines.
    let mut domains = std::collections::HashMap::new();
    loop {
        let ev = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            Some(r) = records.recv() => {
                use crate::adapters::audit_netlink::AuditRecord;
                match r {
                    // Refusals of processes outside agents (another seccomp user) are not ours.
                    AuditRecord::Seccomp(r) => {
                        if let Some((cgroup_id, name)) = agent_cgroups.of_pid(r.pid)
                            && limiter.admit(cgroup_id, std::time::Instant::now())
                        {
                            let syscall = crate::adapters::harden::syscall_name(r.syscall).unwrap_or("unknown").to_owned();
                            audit.record(
                                Some(&name),
                                AuditEvent::SyscallDeny { pid: r.pid, uid: r.uid, comm: r.comm, syscall, nr: r.syscall },
                            );
                        }
                    }
                    // File denials of agents; not network (the cgroup programs audit
                    // those), scopes or ptrace, nor any process outside agents.
                    AuditRecord::Landlock(d) if d.file_ops() != 0 => {
                        if let Some((cgroup_id, name)) = landlock_agent(&d, &agent_cgroups, &agents, &mut domains)
                            && limiter.admit(cgroup_id, std::time::Instant::now())
                        {
                            let ops = rush_proto::Ops(d.file_ops());
                            let op = ops.to_string();
                            if let Some(path) = &d.path {
                                approvals.ask_from_denial(&name, path, ops);
                            }
                            storm(&name);
                            // No task: its audit context was made before audit was on.
                            let (pid, uid, comm) = match d.task {
                                Some(t) => (t.pid, t.uid, t.comm),
                                None => (0, u32::MAX, String::new()),
                            };
                            audit.record(
                                Some(&name),
                                AuditEvent::FileDeny {
                                    pid,
                                    uid,
                                    comm,
                                    hook: format!("landlock:{}", d.blockers.join(",")),
                                    op,
                                    path: d.path.unwrap_or_default(),
                                },
                            );
                        }
                    }
                    AuditRecord::Landlock(_) => {}
                    AuditRecord::LandlockDomainGone { domain } => {
                        domains.remove(&domain);
                    }
                }
                continue;
            }
            _ = flush.tick() => {
                for (cgroup_id, count) in limiter.take_suppressed() {
                    let name = agent_name(&agents, cgroup_id);
                    audit.record(Some(&name), AuditEvent::DenialsSuppressed { count });
                }
                continue;
            }
        };
        let deny_of = match &ev {
            KernelEvent::NetDeny { cgroup_id, .. }
            | KernelEvent::FileDeny { cgroup_id, .. }
            | KernelEvent::ClaimDeny { cgroup_id, .. }
            | KernelEvent::GuardDeny { cgroup_id, .. }
            | KernelEvent::ApiCallRefused { cgroup_id, .. } => Some(*cgroup_id),
            _ => None,
        };
        if let Some(cgroup_id) = deny_of
            && !limiter.admit(cgroup_id, std::time::Instant::now())
        {
            continue;
        }
        match ev {
            KernelEvent::NetDeny { cgroup_id, pid: _, tgid, uid, comm, hook, destination, protocol } => {
                let name = agent_name(&agents, cgroup_id);
                storm(&name);
                audit.record(
                    Some(&name),
                    AuditEvent::NetDeny {
                        pid: tgid,
                        uid,
                        comm,
                        hook: hook.as_str().into(),
                        destination: destination.to_string(),
                        protocol,
                    },
                );
            }
            KernelEvent::FileDeny { cgroup_id, pid: _, tgid, uid, comm, hook, op, path, dev: _, ino: _ } => {
                let name = agent_name(&agents, cgroup_id);
                approvals.ask_from_denial(&name, &path, rush_proto::Ops(op));
                storm(&name);
                let op = rush_proto::Ops(op).to_string();
                audit.record(
                    Some(&name),
                    AuditEvent::FileDeny { pid: tgid, uid, comm, hook: hook.into(), op, path },
                );
            }
            KernelEvent::ClaimDeny { cgroup_id, tgid, uid, comm, hook, op, path, claim_id, .. } => {
                let name = agent_name(&agents, cgroup_id);
                let op = rush_proto::Ops(op).to_string();
                // The claim may have ended since the kernel refused: named by its lease then.
                let (task, holder, fencing) = match coordination.claim_by_lease(claim_id) {
                    Some(c) => (c.task, c.agent, c.fencing),
                    // The kernel could not finish the walk up (too deep): refused, fail closed.
                    None if claim_id == 0 => {
                        ("(path too deep to check against claims)".into(), String::new(), 0)
                    }
                    None => (format!("(ended claim, lease {claim_id})"), String::new(), 0),
                };
                audit.record(
                    Some(&name),
                    AuditEvent::ClaimDeny {
                        pid: tgid,
                        uid,
                        comm,
                        hook: hook.into(),
                        op,
                        path,
                        task,
                        holder,
                        fencing,
                    },
                );
            }
            KernelEvent::GuardDeny { cgroup_id, pid: _, tgid, uid, comm, hook, target, arg } => {
                let name = agent_name(&agents, cgroup_id);
                audit.record(
                    Some(&name),
                    AuditEvent::GuardDeny {
                        pid: tgid,
                        uid,
                        comm,
                        hook: hook.into(),
                        what: guard_what(hook, target, arg),
                    },
                );
            }
            KernelEvent::GrantMoved { cgroup_id, from, to } => {
                let moved = agents.tokens().rekey(cgroup_id, from, to);
                agents.persist_rekey(cgroup_id, from, to);
                tracing::debug!(cgroup_id, ?from, ?to, moved, "a save moved a grant to a new inode");
            }
            KernelEvent::NetBudgetExceeded { cgroup_id, used, limit } => {
                let name = agent_name(&agents, cgroup_id);
                tracing::warn!(agent = %name, used, limit, "network byte budget spent: packets dropped");
                let action =
                    "packets dropped until the budget is raised (rush agent resume --budget net:...)";
                audit.record(
                    Some(&name),
                    AuditEvent::BudgetExceeded {
                        resource: rush_proto::BudgetResource::Net,
                        used,
                        limit,
                        action: action.into(),
                    },
                );
            }
            KernelEvent::ApiCallRefused { cgroup_id, pid, uid: _, comm, addr, port, calls, limit } => {
                let name = agent_name(&agents, cgroup_id);
                let destination = std::net::SocketAddr::new(addr, port).to_string();
                audit.record(
                    Some(&name),
                    AuditEvent::ApiRefused {
                        resource: rush_proto::BudgetResource::Api,
                        pid,
                        comm,
                        destination,
                        used: calls,
                        limit,
                    },
                );
            }
            KernelEvent::Lost { count } => {
                events_lost.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(count, "kernel events lost: ring buffer full");
                audit.record(None, AuditEvent::EventsLost { count });
            }
        }
    }
}

/// Directories agents may not enter: the daemon's state (audit trail, logs) and config,
/// unless the socket, which agents use, is inside one (then that one stays open, loudly).
fn protected_dirs(state_dir: &Path, socket: &Path) -> Vec<PathBuf> {
    [state_dir.to_path_buf(), PathBuf::from(crate::config::DEFAULT_CONFIG_DIR)]
        .into_iter()
        .filter(|dir| dir.is_dir())
        .filter(|dir| {
            let holds_socket = socket.starts_with(dir);
            if holds_socket {
                tracing::warn!(
                    dir = %dir.display(),
                    socket = %socket.display(),
                    "the socket is inside this directory, so agents can enter it: put the socket elsewhere"
                );
            }
            !holds_socket
        })
        .collect()
}

/// What a guard deny refused, in words: the capability, signal, bpf command, ...
fn guard_what(hook: &str, target: u32, arg: i64) -> String {
    const CAPS: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    match hook {
        "capable" => match usize::try_from(arg).ok().and_then(|i| CAPS.get(i)) {
            Some(cap) => format!("CAP_{cap}"),
            None => format!("capability {arg}"),
        },
        "task_kill" => format!("signal {arg} to pid {target}"),
        "ptrace_access_check" => format!("ptrace (mode {arg:#x}) of pid {target}"),
        "ptrace_traceme" => format!("PTRACE_TRACEME by parent pid {target}"),
        "bpf" => format!("bpf() command {arg}"),
        "file_fcntl" if arg < 0 => "F_SETOWN_EX".into(),
        "file_fcntl" => format!("F_SETOWN to pid {arg}"),
        "file_ioctl" => format!("ioctl {arg:#x} (FIOSETOWN/SIOCSPGRP)"),
        "sb_mount" => format!("mount (flags {arg:#x})"),
        "inode_permission:kernel-fs-write" => {
            "write to a kernel filesystem (cgroupfs, bpffs, sysfs, binfmt_misc, ...)".into()
        }
        "file_open:procfs-write" => "write outside /proc/PID (sysrq-trigger, /proc/sys, ...)".into(),
        "file_open:procfs-pid-write" => format!("write to /proc/{target} (a process outside the agent)"),
        "inode_permission:protected-dir" => "access to the daemon's directories".into(),
        "cgroup/sysctl" => "sysctl write".into(),
        "unix_stream_connect:abstract" | "unix_may_send:abstract" => {
            "an abstract Unix socket of a process outside the agent".into()
        }
        _ if arg != 0 => format!("{hook} ({arg})"),
        _ => hook.to_string(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The metering proxies' events into the audit trail: a budget crossed, a call refused.
/// Each charge is only logged (one per API call would drown the trail).
/// Audit retention: at start, then hourly.
async fn prune_audit(audit: Arc<AuditLog>, config: crate::config::AuditSection) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (audit, max_age, max_records) = (audit.clone(), config.max_age(), config.max_records());
        // A large delete takes a while: off the async workers.
        match tokio::task::spawn_blocking(move || audit.prune(max_age, max_records)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(deleted, "old audit records deleted (retention)"),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::core::error_chain(&e), "audit retention not applied")
            }
            Err(e) => tracing::warn!(error = %e, "audit retention task failed"),
        }
    }
}

async fn pump_meter_events(
    mut events: tokio::sync::mpsc::UnboundedReceiver<crate::services::meter::MeterEvent>,
    audit: Arc<AuditLog>,
) {
    use crate::services::meter::MeterEvent;
    while let Some(e) = events.recv().await {
        match e {
            MeterEvent::Exceeded { agent, used_micro_usd, limit_micro_usd } => {
                tracing::warn!(%agent, used_micro_usd, limit_micro_usd, "cost budget spent: further API calls are refused");
                audit.record(
                    Some(&agent),
                    AuditEvent::BudgetExceeded {
                        resource: rush_proto::BudgetResource::Cost,
                        used: used_micro_usd,
                        limit: limit_micro_usd,
                        action: "further calls refused by the metering proxy (HTTP 402)".into(),
                    },
                );
            }
            MeterEvent::Refused { agent, used_micro_usd, limit_micro_usd } => {
                audit.record(
                    Some(&agent),
                    AuditEvent::ApiRefused {
                        resource: rush_proto::BudgetResource::Cost,
                        pid: 0,
                        comm: String::new(),
                        destination: "meter".into(),
                        used: used_micro_usd,
                        limit: limit_micro_usd,
                    },
                );
            }
            MeterEvent::Charged { agent, model, input_tokens, output_tokens, micro_usd } => {
                tracing::debug!(%agent, %model, input_tokens, output_tokens, micro_usd, "API call charged");
            }
            MeterEvent::Unmetered { agent, status, reason } => {
                tracing::warn!(%agent, status, %reason, "API call not metered: its usage was unreadable");
            }
        }
    }
}

/// `budget.api_endpoints` as addresses; names resolved now (a name that does not resolve is
/// logged and left out).
async fn resolve_api_endpoints(endpoints: &[String]) -> Vec<(std::net::IpAddr, u16)> {
    let mut out = Vec::new();
    for ep in endpoints {
        let Ok(rush_proto::NetPolicy::AllowList(eps)) = ep.parse::<rush_proto::NetPolicy>() else { continue };
        for e in eps {
            match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                Ok(addrs) => out.extend(addrs.map(|a| (a.ip(), a.port()))),
                Err(err) => {
                    tracing::error!(endpoint = %ep, error = %err, "API endpoint does not resolve: not counted")
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The baseline plus write on the daemon's socket: connecting to a pathname Unix socket is
/// a write to it (BPF LSM `unix_stream_connect`), and a confined agent's `rush` must reach
/// its daemon (`RUSH_SOCKET`).
fn with_socket(mut baseline: Vec<rush_proto::FileGrant>, socket: &Path) -> Vec<rush_proto::FileGrant> {
    let path = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    baseline.push(rush_proto::FileGrant { path, ops: rush_proto::Ops::WRITE, ttl_secs: None });
    baseline
}

/// Where agents' resolvers forward: `[dns] upstream`, else this machine's first
/// nameserver. None (loudly): host names in `--net` are then resolved once, at spawn.
fn dns_resolver(
    section: &crate::config::DnsSection,
) -> Result<Option<Arc<crate::services::resolver::ResolverConfig>>, DaemonError> {
    use crate::services::resolver::ResolverConfig;
    let upstream = if section.upstream.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        ResolverConfig::upstream_from_resolv_conf(&conf)
    } else {
        let text = section.upstream.as_str();
        let parsed = text
            .parse::<std::net::SocketAddr>()
            .ok()
            .or_else(|| text.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53)));
        Some(parsed.ok_or_else(|| DaemonError::DnsUpstream(text.to_owned()))?)
    };
    let Some(upstream) = upstream else {
        tracing::warn!(
            "no DNS server (no [dns] upstream, no nameserver in /etc/resolv.conf): host names in --net are \
             resolved once at spawn, their addresses may change under the agent, wildcards are refused"
        );
        return Ok(None);
    };
    tracing::info!(%upstream, "agents' DNS: host names in --net are allowed by their DNS answers");
    Ok(Some(Arc::new(ResolverConfig {
        upstream,
        grace: std::time::Duration::from_secs(section.grace_secs),
        max_ttl: std::time::Duration::from_secs(section.max_ttl_secs.max(1)),
        timeout: std::time::Duration::from_secs(3),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_notified_on_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("rush-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(notify_to(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}

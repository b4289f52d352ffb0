//! Spawning, running and ending agents: a request checked and planned, its cgroup,
//! kernel policy and tokens in place before the first instruction, the exit watched.

use super::capabilities::landlock_link_check;
use super::*;
use crate::core::Fault;
use crate::services::agent::AgentError;

/// Undoes a start that did not finish, whichever step failed: the agent's processes
/// killed, its cgroup removed and only then its kernel entry (a cgroup that still exists
/// never lacks its policy), its tokens and its name for kernel events forgotten.
/// `launched` keeps everything.
struct LaunchGuard<'a> {
    mgr: &'a AgentManager,
    cg: Option<AgentCgroup>,
}

impl LaunchGuard<'_> {
    fn launched(mut self) {
        self.cg = None;
    }
}

impl Drop for LaunchGuard<'_> {
    fn drop(&mut self) {
        let Some(cg) = self.cg.take() else { return };
        let m = self.mgr;
        let _ = m.cgroups.kill_all(&cg);
        if m.cgroups.remove(&cg).is_ok() {
            let _ = m.kernel.remove_agent(cg.id);
        }
        m.tokens.forget_agent(cg.id);
        m.registry().names.remove(&cg.id);
    }
}

/// What a validated spawn request turns into, before anything is created.
pub(super) struct Plan {
    pub(super) net: KernelNetPolicy,
    pub(super) budget: Budget,
    /// Some: the agent is file-confined, with these tokens.
    pub(super) file_tokens: Option<FileTokens>,
    pub(super) files: Files,
    /// What it asked for that nothing enforces (`allow_unconfined`).
    pub(super) unconfined: Vec<String>,
    pub(super) stdio: Option<[OwnedFd; 3]>,
    pub(super) log_path: Option<PathBuf>,
    /// A restart under new rules: the log goes on rather than starting empty.
    pub(super) restart: bool,
    /// Capabilities, seccomp (config, then the trust level).
    pub(super) hardening: crate::adapters::harden::HardeningPolicy,
    /// Host names of its `--net` list, for its resolver (none without one).
    pub(super) names: Vec<crate::services::resolver::NamePattern>,
}

/// What a started agent hands over to the registry.
pub(super) struct Started {
    pub(super) info: AgentInfo,
    pub(super) cgroup: AgentCgroup,
    pub(super) child: Child,
    /// Its tokens with a TTL (the daemon enforces their expiry on mappings too).
    pub(super) timed: Vec<Token>,
    pub(super) resolver: Option<crate::services::resolver::AgentResolver>,
}

/// A new agent's tokens: resolved from its request, or carried over from the process it
/// replaces (a Landlock restart), ids and expiries kept.
pub(super) enum FileTokens {
    New(Vec<NewToken>),
    Carried(Vec<Token>),
}

/// How to start an agent's command again (Landlock restarts): its request as it came,
/// and who asked. None for foreground agents, whose terminal went with the old process.
#[derive(Clone)]
pub(super) struct Respawn {
    pub(super) req: SpawnRequest,
    pub(super) caller: Caller,
}

/// How many exited agents `agent list` keeps showing.
pub(super) const EXITED_KEPT: usize = 64;

/// Host names are resolved now, once, to their addresses (full prefixes): the kernel
/// matches addresses. Prefixes are checked again: the request may not come from our parser.
/// The static part of a `--net` policy: IP literals and blocks. Host names too, resolved
/// now, unless `by_dns` (the agent's resolver allows their addresses as its DNS answers
/// give them; wildcards need that).
pub(super) async fn resolve_net(net: &NetPolicy, by_dns: bool) -> Result<KernelNetPolicy, AgentError> {
    Ok(match net {
        NetPolicy::Deny => KernelNetPolicy::Deny,
        NetPolicy::Allow => KernelNetPolicy::Allow,
        NetPolicy::AllowList(eps) => {
            let mut out = Vec::new();
            for ep in eps {
                let block = ep
                    .ip_prefix()
                    .map_err(|why| AgentError::new(Fault::Invalid, format!("--net {ep}: {why}")))?;
                if let Some((ip, len)) = block {
                    out.push((ip, len, ep.port));
                    continue;
                }
                if by_dns {
                    continue;
                }
                if ep.host.starts_with("*.") {
                    return Err(AgentError::new(
                        Fault::Unsupported,
                        format!(
                            "--net {ep}: a wildcard needs the daemon's DNS resolver, and it has none (no [dns] \
                             upstream and no nameserver in /etc/resolv.conf)"
                        ),
                    ));
                }
                let addrs = tokio::net::lookup_host((ep.host.as_str(), ep.port)).await.map_err(|e| {
                    AgentError::new(Fault::Invalid, format!("--net {ep}: cannot resolve {:?}: {e}", ep.host))
                })?;
                let before = out.len();
                out.extend(addrs.map(|a| (a.ip(), if a.is_ipv4() { 32 } else { 128 }, ep.port)));
                if out.len() == before {
                    return Err(AgentError::new(
                        Fault::Invalid,
                        format!("--net {ep}: {:?} has no addresses", ep.host),
                    ));
                }
            }
            out.sort();
            out.dedup();
            KernelNetPolicy::List(out)
        }
    })
}

/// The TCP ports a Landlock ruleset allows connects to: none for `deny`, the listed ports
/// for an allow list; None (TCP left to the cgroup programs) for `allow` or any-port entries.
pub(super) fn landlock_tcp(net: &KernelNetPolicy) -> crate::adapters::landlock::TcpPorts {
    match net {
        KernelNetPolicy::Deny => Some(Vec::new()),
        KernelNetPolicy::Allow => None,
        KernelNetPolicy::List(eps) if eps.iter().any(|(_, _, port)| *port == 0) => None,
        KernelNetPolicy::List(eps) => {
            let mut ports: Vec<u16> = eps.iter().map(|(_, _, port)| *port).collect();
            ports.sort_unstable();
            ports.dedup();
            Some(ports)
        }
    }
}

/// Whether `net` lets the agent connect to the meter's upstream itself. A host name is
/// resolved as the kernel would see it; a name that does not resolve is reachable only
/// under `allow`.
pub(super) fn reaches(net: &KernelNetPolicy, up: &crate::services::meter::Upstream) -> bool {
    let eps = match net {
        KernelNetPolicy::Allow => return true,
        KernelNetPolicy::Deny => return false,
        KernelNetPolicy::List(eps) => eps,
    };
    let addrs: Vec<IpAddr> = match up.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(up.host.as_str(), up.port))
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    let covers = |net: IpAddr, prefix: u8, ip: IpAddr| {
        net.is_ipv4() == ip.is_ipv4()
            && rush_proto::spec::mask_ip(net, prefix) == rush_proto::spec::mask_ip(ip, prefix)
    };
    eps.iter().any(|&(net, prefix, port)| {
        (port == 0 || port == up.port) && addrs.iter().any(|&ip| covers(net, prefix, ip))
    })
}

/// The part of a budget the kernel's network programs enforce.
pub(super) fn net_budget(b: &Budget) -> crate::adapters::bpf::NetBudget {
    crate::adapters::bpf::NetBudget { bytes: b.net_bytes, api_calls: b.api_calls }
}

/// What the kernel is told of an agent's hard links: only file-confined agents have a mode.
pub(super) fn hardlinks_of(files: Files, req: &SpawnRequest) -> Hardlinks {
    if files == Files::Open { Hardlinks::Follow } else { req.hardlinks.unwrap_or_default() }
}

impl AgentManager {
    /// Starts an agent. On success the process runs in its cgroup under its policy; the
    /// receiver yields its exit status. On error nothing is left behind.
    pub async fn spawn(
        self: &Arc<Self>,
        req: SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<(AgentInfo, watch::Receiver<Option<ExitStatus>>), AgentError> {
        self.spawn_inner(req, caller, stdio, None).await
    }

    /// [`AgentManager::spawn`]; with `carried`, a restart: these tokens instead of the
    /// request's, and the log continued.
    pub(super) async fn spawn_inner(
        self: &Arc<Self>,
        req: SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
        carried: Option<Vec<Token>>,
    ) -> Result<(AgentInfo, watch::Receiver<Option<ExitStatus>>), AgentError> {
        let original = req.clone();
        let name: AgentName = req
            .name
            .parse()
            .map_err(|e: rush_proto::SpecError| AgentError::new(Fault::Invalid, e.to_string()))?;
        let name = name.to_string();
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(AgentError::new(Fault::Invalid, "no command to run: give one after `--`"));
        }
        if req.restartable && req.stdio != StdioMode::Log {
            return Err(AgentError::new(
                Fault::Invalid,
                "refusing --restartable for an agent on a terminal: its terminal does not survive a restart; \
                 spawn it detached (--detach)",
            ));
        }
        let (mut req, budget, exec, hardening) = self.apply_trust(req)?;
        // Who the agent runs as: the caller, or --user (root callers only).
        let run_as = self.run_as(&req, caller, &hardening)?;
        let operator = caller;
        let caller = &run_as;
        // Cost budgets: the agent's API calls go through its own metering proxy.
        let meter = match budget.cost_micro_usd {
            Some(limit) => match self.start_meter(&name, 0, limit) {
                Some(m) => Some(m?),
                None => {
                    return Err(AgentError::new(
                        Fault::Unsupported,
                        "refusing the cost budget: this daemon runs no metering proxy",
                    ));
                }
            },
            None => None,
        };
        let meter_url = meter.as_ref().map(|m| format!("http://{}", m.addr));
        if let Some(m) = &meter {
            for (var, url) in &m.env {
                req.env.retain(|(k, _)| k != var);
                req.env.push((var.clone(), url.clone()));
            }
        }
        let mut unconfined = Vec::new();
        let files = match (req.allow.first(), &self.enforcement.files) {
            (None, _) => Files::Open,
            (Some(_), FileBackend::BpfLsm) => Files::BpfLsm,
            (Some(_), FileBackend::Landlock) => Files::Landlock,
            (Some(_), FileBackend::Unavailable(why)) if req.allow_unconfined => {
                unconfined.push(format!("files: {why}"));
                Files::Unenforced
            }
            (Some(grant), FileBackend::Unavailable(why)) => {
                return Err(AgentError::new(
                    Fault::Unsupported,
                    format!(
                        "refusing --allow {}:{}: {why}; the agent would not be confined to it \
                         (--allow-unconfined runs it anyway, listed as UNCONFINED)",
                        grant.path.display(),
                        grant.ops
                    ),
                ));
            }
        };
        if !self.enforcement.net {
            if !req.allow_unconfined {
                return Err(AgentError::new(
                    Fault::Unsupported,
                    "the network programs are not attached, so no agent can be confined; see `rush doctor` \
                     (--allow-unconfined runs it anyway, listed as UNCONFINED)",
                ));
            }
            unconfined.push("net: the cgroup network programs are not attached".into());
        }
        if !req.cwd.is_dir() {
            return Err(AgentError::new(
                Fault::Invalid,
                format!("working directory {} does not exist or is not a directory", req.cwd.display()),
            ));
        }
        // An agent on a terminal: the slave is its stdio, the master goes to a holder
        // process (adapters/pty.rs) that writes the agent's log.
        let mut tty = None;
        let (stdio_fds, log_path) = match (req.stdio, stdio) {
            (StdioMode::Tty, _) => {
                let size = req.tty_size.unwrap_or_default();
                if size.rows == 0 || size.cols == 0 {
                    return Err(AgentError::new(
                        Fault::Invalid,
                        format!(
                            "terminal size {}x{}: rows and columns must be at least 1",
                            size.rows, size.cols
                        ),
                    ));
                }
                let owner = nix::unistd::geteuid().is_root().then_some((caller.uid, caller.gid));
                let (master, slave) = crate::adapters::pty::open(size, owner)
                    .map_err(|e| AgentError::new(Fault::Internal, error_chain(&e)))?;
                let dup = |fd: &OwnedFd| {
                    fd.try_clone().map_err(|e| AgentError::new(Fault::Internal, e.to_string()))
                };
                let fds = [dup(&slave)?, dup(&slave)?, slave];
                tty = Some((master, size));
                (Some(fds), None)
            }
            (StdioMode::Passed, Some(fds)) => (Some(fds), None),
            (StdioMode::Passed, None) => {
                return Err(AgentError::new(
                    Fault::Malformed,
                    "stdio \"passed\" needs stdin, stdout and stderr as SCM_RIGHTS on the request line",
                ));
            }
            (StdioMode::Log, _) => (None, Some(self.log_dir.join(format!("{name}.log")))),
        };
        let net_policy = req.net.as_ref().unwrap_or(&NetPolicy::Deny);
        let names = if self.dns.is_some() { super::names::names_of(net_policy) } else { Vec::new() };
        let mut net = resolve_net(net_policy, self.dns.is_some()).await?;
        if meter.is_some()
            && let Some(up) = self.budgets.meter_upstreams().into_iter().find(|up| {
                reaches(&net, up)
                    || names.iter().any(|n| n.matches(&up.host) && (n.port == 0 || n.port == up.port))
            })
        {
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "refusing the cost budget: the network policy lets the agent reach the API ({}:{}) around \
                     its meter; give a --net that leaves the API out (the meter is always reachable)",
                    up.host, up.port
                ),
            ));
        }
        if let Some(m) = &meter {
            // Its meter is always reachable, whatever else its network policy says.
            let ep = (m.addr.ip(), 32, m.addr.port());
            net = match net {
                KernelNetPolicy::Deny => KernelNetPolicy::List(vec![ep]),
                KernelNetPolicy::List(mut eps) => {
                    eps.push(ep);
                    KernelNetPolicy::List(eps)
                }
                KernelNetPolicy::Allow => KernelNetPolicy::Allow,
            };
        }
        let restart = carried.is_some();
        // A file-confined agent's own TMPDIR (a restart under new rules keeps its path).
        let tmp = match files {
            Files::Open => None,
            _ => self.private_tmp_for(&name, caller, carried.as_deref())?,
        };
        if let Some(dir) = &tmp {
            req.env.retain(|(k, _)| k != "TMPDIR");
            req.env.push(("TMPDIR".to_owned(), dir.path().to_string_lossy().into_owned()));
        }
        // Its name: the rush shell run inside an agent turns risk gating on, locked, when
        // it sees this (docs/SHELL.md). Set by us, whatever the request said.
        req.env.retain(|(k, _)| k != "RUSH_AGENT");
        req.env.push(("RUSH_AGENT".to_owned(), name.to_string()));
        let file_tokens = match carried {
            _ if files == Files::Open => None,
            Some(tokens) => Some(FileTokens::Carried(tokens)),
            None => Some(FileTokens::New(self.spawn_tokens(
                &self.agent_baseline(caller, tmp.as_ref().map(|t| t.path())),
                &req.allow,
                exec,
                stdio_fds.as_ref(),
                log_path.as_deref(),
            )?)),
        };

        if let (Files::Landlock, Some(FileTokens::New(tokens))) = (files, &file_tokens) {
            landlock_link_check(
                req.hardlinks.unwrap_or_default(),
                tokens.iter().map(|t| (&t.path, t.ops, t.origin)),
                &[],
            )
            .map_err(|e| AgentError::new(Fault::Unsupported, format!("refusing the spawn: {e}")))?;
        }
        // Reserve the name; everything after this point is undone on failure.
        {
            let mut reg = self.registry();
            let running = reg.agents.get(&name).is_some_and(|a| a.info.state == AgentState::Running);
            if running || reg.starting.contains(&name) {
                return Err(AgentError::new(Fault::Exists, format!("agent name {name:?} is already in use")));
            }
            reg.starting.insert(name.clone());
        }
        // The terminal's holder, before the agent starts: it drains the pty from the first
        // byte. If the start fails, the slave's last fd closes and the holder ends.
        let log_path = match tty {
            Some((master, size)) => {
                let log = self.log_dir.join(format!("{name}.log"));
                let cfg = crate::adapters::pty::HolderConfig {
                    agent: name.clone(),
                    socket: self.terminal_socket(&name),
                    log: log.clone(),
                    scrollback: self.terminal_scrollback,
                    size,
                    append: false,
                };
                if let Err(e) = crate::adapters::pty::start_holder(master, &cfg) {
                    self.registry().starting.remove(&name);
                    return Err(AgentError::new(Fault::Internal, error_chain(&e)));
                }
                Some(log)
            }
            None => log_path,
        };
        let files_confined = file_tokens.is_some();
        let respawn =
            (req.stdio == StdioMode::Log).then(|| Respawn { req: original, caller: operator.clone() });
        let plan = Plan {
            net,
            budget,
            file_tokens,
            files,
            unconfined: unconfined.clone(),
            stdio: stdio_fds,
            log_path: log_path.clone(),
            restart,
            hardening,
            names,
        };
        let result = self.start(&name, &req, plan, caller).await;
        self.registry().starting.remove(&name);
        let Started { mut info, cgroup, child, timed, resolver } = result?;
        info.meter_url = meter_url.clone();

        let (tx, rx) = watch::channel(None);
        // A block: the guard must not live across the awaits below.
        {
            let mut reg = self.registry();
            if let Some(old) = reg.agents.remove(&name) {
                reg.exited_order.retain(|n| n != &name);
                // The name's previous agent (exited, or killed for a restart) is gone for
                // good: so is its cgroup id's name, which nothing else would ever remove.
                if old.cgroup.id != cgroup.id {
                    reg.names.remove(&old.cgroup.id);
                }
            }
            reg.agents.insert(
                name.clone(),
                Agent {
                    info: info.clone(),
                    cgroup: cgroup.clone(),
                    exit: rx.clone(),
                    log_path,
                    files_confined,
                    files,
                    respawn,
                    exec,
                    resolver,
                    kill_lock: Default::default(),
                },
            );
            self.budgets.enter(&name, AgentBudget::spawned(meter));
        }
        self.audit.set_agent_session(&name, info.session.as_deref());
        self.audit.record(
            Some(&name),
            AuditEvent::Spawn {
                pid: info.pid,
                uid: caller.uid,
                command: req.command.clone(),
                net: req.net.clone().unwrap_or_default(),
                caller_uid: operator.uid,
                unconfined,
            },
        );
        for token in timed {
            self.schedule_expiry(token);
        }
        // The exit is watched while the record is written (its fsync off this worker, which
        // also drives everyone's I/O): an agent that ends at once (`true`) is cleaned up
        // meanwhile. The watcher deletes the record only once it is written.
        let (saved_tx, saved_rx) = tokio::sync::oneshot::channel();
        let (mgr, watched) = (Arc::clone(self), cgroup.clone());
        tokio::spawn(async move { mgr.watch_exit(name, watched, child, tx, Some(saved_rx)).await });
        let (mgr, agent) = (Arc::clone(self), info.name.clone());
        let saved = tokio::task::spawn_blocking(move || {
            mgr.save_agent(&agent).and_then(|()| mgr.save_restart(&agent))
        })
        .await
        .unwrap_or_else(|e| Err(AgentError::new(Fault::Internal, format!("saving the agent: {e}"))));
        let _ = saved_tx.send(());
        let kill = saved.is_err().then(|| cgroup.clone());
        if let (Err(e), Some(cg)) = (saved, kill) {
            // Unrecorded, a daemon restart would not know it: it must not outlive the refusal.
            let killed = self.cgroups.kill_all(&cg).unwrap_or(0);
            // Answered once it is gone, so the name is free again for a retry.
            let mut exit = rx.clone();
            let gone = async move { exit.wait_for(Option::is_some).await.is_ok() };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), gone).await;
            return Err(AgentError::new(
                e.fault,
                format!("the agent was started, then killed ({killed} processes): its {}", e.message),
            ));
        }
        // From here on the agent's exit removes it.
        if let Some(t) = tmp {
            t.keep();
        }
        Ok((info, rx))
    }

    /// What the agent's first process sets up before exec (`harden.rs`); nothing when
    /// the daemon has no hardening (unit tests).
    pub(super) fn child_hardening(
        &self,
        cg: &AgentCgroup,
        policy: &crate::adapters::harden::HardeningPolicy,
        in_session: bool,
    ) -> Result<crate::adapters::harden::ChildHardening, AgentError> {
        let Some(h) = self.hardening.as_ref() else {
            return Ok(crate::adapters::harden::ChildHardening::default());
        };
        let view = if h.private_cgroupfs && !h.guard { self.cgroups.view(cg) } else { None };
        // An agent of a session may be dumped by CRIU (`checkpoint --with-processes`),
        // from a staging cgroup beside its own: CRIU 3.17 refuses a task that is outside
        // its cgroup namespace's root ("invalid cgroup configuration"). Where CRIU works,
        // such agents get no cgroup namespace; what keeps them in their cgroup is the
        // guard or the read-only view, as for every agent.
        let namespace = h.cgroup_namespace && !(in_session && self.criu.get().is_ok());
        crate::adapters::harden::ChildHardening::new(
            namespace,
            view.as_ref(),
            policy,
            Some(Arc::clone(&h.seccomp)),
        )
        .map_err(|e| AgentError::new(Fault::Internal, format!("cannot prepare the agent's hardening: {e}")))
    }

    /// Who the agent runs as: the caller, or `req.user` (a name or uid), which only root
    /// may set to someone else. Refused as root where the hardening refuses root agents.
    pub(super) fn run_as(
        &self,
        req: &SpawnRequest,
        caller: &Caller,
        hardening: &crate::adapters::harden::HardeningPolicy,
    ) -> Result<Caller, AgentError> {
        let bad = |m: String| AgentError::new(Fault::Invalid, m);
        let run_as = match &req.user {
            None => caller.clone(),
            Some(spec) => {
                let user = match spec.parse::<u32>() {
                    Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                    Err(_) => nix::unistd::User::from_name(spec),
                }
                .map_err(|e| AgentError::new(Fault::Internal, format!("cannot look up user {spec:?}: {e}")))?
                .ok_or_else(|| bad(format!("--user {spec:?}: no such user in the user database")))?;
                let uid = user.uid.as_raw();
                if caller.uid != 0 && uid != caller.uid {
                    return Err(AgentError::new(
                        Fault::Forbidden,
                        format!("--user {spec:?}: only root may run an agent as another user"),
                    ));
                }
                let name = std::ffi::CString::new(user.name.clone())
                    .map_err(|_| bad(format!("--user {spec:?}: the user name has a NUL byte")))?;
                let groups = nix::unistd::getgrouplist(&name, user.gid)
                    .map_err(|e| AgentError::new(Fault::Internal, format!("groups of {spec:?}: {e}")))?;
                Caller {
                    uid,
                    gid: user.gid.as_raw(),
                    pid: caller.pid,
                    groups: groups.into_iter().map(|g| g.as_raw()).collect(),
                }
            }
        };
        if run_as.uid == 0 && !hardening.root_agents {
            return Err(AgentError::new(
                Fault::Forbidden,
                format!(
                    "refusing to run the agent as root: {} refuses root agents; give --user USER",
                    match &req.trust {
                        Some(level) => format!("trust level {level:?}"),
                        None => "this daemon ([hardening] root_agents = false)".to_string(),
                    }
                ),
            ));
        }
        Ok(run_as)
    }

    pub(super) async fn start(
        &self,
        name: &str,
        req: &SpawnRequest,
        plan: Plan,
        caller: &Caller,
    ) -> Result<Started, AgentError> {
        let Plan { net, budget, file_tokens, files, unconfined, stdio, log_path, restart, hardening, names } =
            plan;
        let mut tcp = landlock_tcp(&net);
        // DNS over TCP: Landlock sees port 53 before the cgroup program sends it to the
        // agent's resolver (no connect to port 53 reaches anything else).
        if let (Some(ports), false) = (tcp.as_mut(), names.is_empty()) {
            ports.push(53);
        }
        let internal =
            |what: &str, e: &dyn std::fmt::Display| AgentError::new(Fault::Internal, format!("{what}: {e}"));
        // A few mkdir(2) calls: done in place, since a hop to a blocking thread costs a
        // cold wake-up, which measured more than the work itself.
        let cg = self
            .cgroups
            .create(name)
            .map_err(|e| internal("cannot create the agent's cgroup", &error_chain(&e)))?;
        // Kernel events name the agent from its first instruction on.
        self.registry().names.insert(cg.id, name.to_owned());
        // From here on, any early return undoes the start.
        let guard = LaunchGuard { mgr: self, cg: Some(cg.clone()) };
        // The policy must be in the kernel before the first process enters the cgroup:
        // file grants first, then the agent entry that makes them (and the net policy) live.
        // Tokens with a TTL: the daemon enforces their expiry on mappings too.
        let mut timed = Vec::new();
        let installed = (|| {
            if let Some(tokens) = file_tokens {
                let (added, entries) = match tokens {
                    FileTokens::New(new) => self.tokens.add(name, cg.id, new),
                    FileTokens::Carried(mut old) => {
                        old.iter_mut().for_each(|t| t.cgroup_id = cg.id);
                        self.tokens.restore(old)
                    }
                };
                timed.extend(added.into_iter().filter(|t| t.expires.is_some()));
                // The BPF grant map only for agents the LSM programs confine.
                if files == Files::BpfLsm {
                    for (key, entry) in entries {
                        self.kernel.set_file_grant(cg.id, key, entry)?;
                    }
                }
            }
            self.budgets
                .control()
                .apply(&cg, &budget)
                .map_err(|e| crate::adapters::bpf::BpfError::Other(error_chain(&e)))?;
            self.kernel.add_agent(
                cg.id,
                &net,
                AgentFlags { files_confined: files == Files::BpfLsm, hardlinks: hardlinks_of(files, req) },
            )?;
            if let Some(admission) = self.admission.get() {
                admission
                    .admit(name, cg.id, req.session.as_deref())
                    .map_err(crate::adapters::bpf::BpfError::Other)?;
            }
            self.kernel.set_net_budget(cg.id, net_budget(&budget))
        })();
        if let Err(e) = installed {
            return Err(internal("cannot install the agent's kernel policy", &e));
        }
        let resolver =
            if names.is_empty() { None } else { Some(self.start_resolver(name, cg.id, names, true).await?) };
        let landlock = if files == Files::Landlock {
            let now = boot_time_ns();
            let rules: Vec<crate::adapters::landlock::PathRule> = self
                .tokens
                .of_agent(cg.id)
                .into_iter()
                .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
                .map(|t| crate::adapters::landlock::PathRule { path: t.path, ops: t.ops })
                .collect();
            match crate::adapters::landlock::ruleset(&rules, &tcp) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    return Err(AgentError::new(
                        Fault::Unsupported,
                        format!("Landlock: {}", error_chain(&e)),
                    ));
                }
            }
        } else if files == Files::Open && self.enforcement.files == FileBackend::Landlock {
            // No BPF LSM guard on this daemon: Landlock's scopes keep the agent's signals
            // inside it (the daemon included), whatever its uid.
            crate::adapters::landlock::scope_only().unwrap_or_else(|e| {
                tracing::warn!(agent = %name, error = %error_chain(&e), "no Landlock scope: the agent may signal outside its cgroup");
                None
            })
        } else {
            None
        };
        let scoped = files == Files::Open && landlock.is_some();
        let files_enforcement = match files {
            Files::BpfLsm => Some(rush_proto::Enforcement::FilesBpfLsm),
            Files::Landlock => Some(rush_proto::Enforcement::FilesLandlock),
            Files::Open | Files::Unenforced => None,
        };
        let landlock_tcp =
            files == Files::Landlock && tcp.is_some() && crate::adapters::landlock::tcp_enforced();
        let child_hardening = self.child_hardening(&cg, &hardening, req.session.is_some());
        let hardening_info = child_hardening
            .as_ref()
            .map(|h| crate::adapters::harden::info(h, &hardening))
            .unwrap_or_default();
        match child_hardening.and_then(|h| self.exec(&cg, req, caller, stdio, log_path, landlock, restart, h))
        {
            Ok(child) => {
                let pid = child.pid;
                let info = AgentInfo {
                    name: name.to_owned(),
                    cgroup_id: cg.id,
                    cgroup_path: cg.v2_dir.clone(),
                    pid,
                    uid: caller.uid,
                    command: req.command.clone(),
                    net: req.net.clone().unwrap_or_default(),
                    state: AgentState::Running,
                    trust: req.trust.clone(),
                    budget,
                    paused: Vec::new(),
                    usage: Vec::new(),
                    meter_url: None,
                    processes: 1,
                    started_unix_ms: now_unix_ms(),
                    enforcement: std::iter::once(rush_proto::Enforcement::IdentityCgroupV2)
                        .chain(self.enforcement.net.then_some(rush_proto::Enforcement::NetCgroupSockAddr))
                        .chain(files_enforcement)
                        .chain(scoped.then_some(rush_proto::Enforcement::SelfProtectionLandlockScope))
                        .chain(landlock_tcp.then_some(rush_proto::Enforcement::NetLandlockTcpPorts))
                        .chain(resolver.is_some().then_some(rush_proto::Enforcement::NetDnsResolver))
                        .chain((!budget.is_empty()).then_some(rush_proto::Enforcement::BudgetCgroup))
                        .collect(),
                    exit: None,
                    detached: req.stdio != StdioMode::Passed,
                    tty: req.stdio == StdioMode::Tty,
                    unconfined,
                    session: req.session.clone(),
                    restartable: req.restartable,
                    hardlinks: hardlinks_of(files, req),
                    hardening: hardening_info,
                };
                guard.launched();
                Ok(Started { info, cgroup: cg, child, timed, resolver })
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn exec(
        &self,
        cg: &AgentCgroup,
        req: &SpawnRequest,
        caller: &Caller,
        stdio: Option<[OwnedFd; 3]>,
        log_path: Option<PathBuf>,
        landlock: Option<OwnedFd>,
        restart: bool,
        hardening: crate::adapters::harden::ChildHardening,
    ) -> Result<Child, AgentError> {
        let internal = |what: String| AgentError::new(Fault::Internal, what);
        let placement = self
            .cgroups
            .placement(cg)
            .map_err(|e| internal(format!("cannot open the agent's cgroup: {}", error_chain(&e))))?;
        let null = || -> Result<OwnedFd, AgentError> {
            File::open("/dev/null").map(OwnedFd::from).map_err(|e| internal(format!("/dev/null: {e}")))
        };
        let stdio = match (stdio, log_path) {
            (Some(fds), _) => fds,
            (None, Some(path)) => {
                let mut opts = std::fs::OpenOptions::new();
                // A restart continues the log, with a line saying why it starts over.
                if restart {
                    opts.append(true)
                } else {
                    opts.write(true).truncate(true)
                };
                let mut file = opts
                    .create(true)
                    .open(&path)
                    .map_err(|e| internal(format!("cannot open log {}: {e}", path.display())))?;
                if restart {
                    use std::io::Write;
                    let _ = writeln!(file, "--- rush-agentd: restarted under new Landlock rules ---");
                }
                let out = OwnedFd::from(file);
                let err = out.try_clone().map_err(|e| internal(e.to_string()))?;
                [null()?, out, err]
            }
            (None, None) => [null()?, null()?, null()?],
        };
        // Only root can change credentials; an unprivileged daemon (unit tests) runs agents
        // as itself, which is then also its caller.
        let creds = nix::unistd::geteuid().is_root().then(|| (caller.uid, caller.gid, caller.groups.clone()));
        let spawn =
            Spawn::new(&req.command, &req.env, &req.cwd, stdio, placement, creds, landlock, hardening)
                .map(|s| if req.stdio == StdioMode::Tty { s.with_controlling_tty() } else { s })
                .map_err(|e| {
                    AgentError::new(
                        Fault::Invalid,
                        format!("cannot run {:?}: {}", req.command[0], error_chain(&e)),
                    )
                })?;
        let (pid, pidfd) = spawn.start().map_err(|e| {
            let kind = match e {
                SpawnError::Child { .. } | SpawnError::NotFound { .. } => Fault::Invalid,
                _ => Fault::Internal,
            };
            AgentError::new(kind, format!("cannot run {:?}: {}", req.command[0], error_chain(&e)))
        })?;
        Ok(Child { pid: pid as u32, pidfd })
    }

    pub(super) async fn watch_exit(
        self: Arc<Self>,
        name: String,
        cg: AgentCgroup,
        child: Child,
        tx: watch::Sender<Option<ExitStatus>>,
        mut saved: Option<tokio::sync::oneshot::Receiver<()>>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = child;
        let status = loop {
            let status = match crate::adapters::spawn::wait(child.pidfd).await {
                Ok(s) => ExitStatus { code: s.code(), signal: s.signal() },
                Err(e) => {
                    tracing::error!(agent = %name, error = %e, "lost track of the agent's process");
                    ExitStatus { code: None, signal: None }
                }
            };
            // Killed for a process restore: watch the restored root instead.
            let handover = self.registry().restoring.remove(&name);
            match handover {
                Some(rx) => match rx.await {
                    Ok(Some(restored)) => child = restored,
                    _ => break status,
                },
                None => break status,
            }
        };
        // The last look at its counters, while the cgroup still exists: audited, and kept
        // as the exited agent's usage (a spend charged since the last budget round, e.g.
        // a call just before it exited, would otherwise never show).
        let budget = self.registry().agents.get(&name).map(|a| a.info.budget);
        if let Some(budget) = budget {
            let observed = self.observe(&cg, self.budgets.ledger(&name));
            self.audit_counters(&name, &budget, &observed.cgroup);
            if let Some(a) = self.registry().agents.get_mut(&name).filter(|a| a.cgroup.id == cg.id) {
                a.info.usage = crate::services::budget::usage_lines(&budget, &observed);
            }
        }
        // The first process is gone: nothing the agent left running outlives it.
        let tmp_dirs = self.private_tmp_dirs(cg.id);
        let mut conditional = Vec::new();
        let mut removed_row = false;
        let cgroups = Arc::clone(&self.cgroups);
        let cg2 = cg.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let _ = cgroups.kill_all(&cg2);
            cgroups.remove(&cg2)
        })
        .await;
        match removed {
            // Only once the cgroup is gone may its kernel policy go: fail closed.
            Ok(Ok(())) => {
                if let Err(e) = self.kernel.remove_agent(cg.id) {
                    tracing::warn!(agent = %name, error = %e, "kernel policy not removed");
                }
                conditional = self.tokens.conditional(cg.id);
                self.tokens.forget_agent(cg.id);
                removed_row = true;
            }
            Ok(Err(e)) => {
                tracing::error!(agent = %name, error = %error_chain(&e), "agent cgroup not removed; its policy stays in force")
            }
            Err(e) => tracing::error!(agent = %name, error = %e, "cleanup task failed"),
        }
        let (pid, evicted) = {
            let mut reg = self.registry();
            // Only this watcher's agent: a restart may already have put a new agent under
            // the name (when the kill's wait for this exit timed out).
            let pid = match reg.agents.get_mut(&name) {
                Some(a) if a.cgroup.id == cg.id => {
                    a.info.state = AgentState::Exited;
                    a.info.exit = Some(status);
                    a.info.processes = 0;
                    // Its resolver stops (the kernel entry goes with the agent's).
                    a.resolver = None;
                    Some(a.info.pid)
                }
                _ => None,
            };
            if pid.is_some() {
                reg.exited_order.push_back(name.clone());
            }
            let pid = pid.unwrap_or(child.pid);
            let mut evicted = Vec::new();
            while reg.exited_order.len() > EXITED_KEPT {
                let Some(old) = reg.exited_order.pop_front() else { break };
                if let Some(a) = reg.agents.remove(&old) {
                    reg.names.remove(&a.cgroup.id);
                    self.budgets.forget(&old);
                    evicted.push(old);
                }
            }
            (pid, evicted)
        };
        for old in evicted {
            self.audit.set_agent_session(&old, None);
        }
        // Its TMPDIR, unless a restart already put a new agent under the name (which
        // carries the same directory).
        if !tmp_dirs.is_empty() && self.registry().agents.get(&name).is_some_and(|a| a.cgroup.id == cg.id) {
            self.remove_private_tmp(tmp_dirs).await;
        }
        // Done by itself: a restartable agent is not started again. Any other end (a crash,
        // a signal) leaves it to the next daemon start or boot; never restarted here, so a
        // failing agent cannot loop.
        if status.code == Some(0) {
            let restartable =
                self.registry().agents.get(&name).is_some_and(|a| a.cgroup.id == cg.id && a.info.restartable);
            if restartable {
                // After the spawn wrote it, or the record would restart a finished agent.
                if let Some(saved) = saved.take() {
                    let _ = saved.await;
                }
                self.forget_restart(&name);
            }
        }
        // A kill that ended it is audited first.
        let kill_lock = self
            .registry()
            .agents
            .get(&name)
            .filter(|a| a.cgroup.id == cg.id)
            .map(|a| Arc::clone(&a.kill_lock));
        if let Some(lock) = kill_lock {
            drop(lock.lock().await);
        }
        self.audit.record(Some(&name), AuditEvent::Exit { pid, status });
        let _ = tx.send(Some(status));
        // Off the way to the caller hearing of the exit (its fsync was most of an exit's
        // cost): a crash before it leaves a row whose cgroup is gone, which the next start
        // finds exited. Keyed by cgroup id, so a new agent under the name keeps its row.
        // Not before the spawn wrote it (a write after this delete would outlive the agent).
        if let Some(saved) = saved.take() {
            let _ = saved.await;
        }
        if removed_row && let Some(store) = self.store.clone() {
            let (agent, id) = (name.clone(), cg.id);
            let deleted = tokio::task::spawn_blocking(move || store.delete_agent(&agent, id)).await;
            if let Ok(Err(e)) = deleted {
                tracing::error!(agent = %name, error = %error_chain(&e), "state database: an exited agent's removal not saved");
            }
        }
        // The agent's work under its conditions gets its last check now.
        if !conditional.is_empty() {
            self.commit_at_exit(name, conditional).await;
        }
    }

    /// Boxed as `dyn Send`: the check is an agent spawned from here, so its future would
    /// otherwise contain itself (spawn → exit watcher → check → spawn).
    pub(super) fn commit_at_exit(
        self: Arc<Self>,
        name: String,
        tokens: Vec<Token>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.commit_tokens(&name, tokens, CommitCause::Exit).await;
        })
    }

    /// Kills the agent's whole process tree. Cleanup (cgroup, kernel policy) follows when
    /// its first process is reaped.
    pub async fn kill(&self, name: &str, caller: &Caller) -> Result<u32, AgentError> {
        let (cg, mut exit, kill_lock, held) = {
            let reg = self.registry();
            let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
            if a.info.state != AgentState::Running {
                return Err(AgentError::new(Fault::Invalid, format!("agent {name:?} has already exited")));
            }
            // Taken while it is still running (under the registry lock): its exit watcher
            // cannot have passed the point where it waits for this.
            let held = Arc::clone(&a.kill_lock).try_lock_owned().ok();
            (a.cgroup.clone(), a.exit.clone(), Arc::clone(&a.kill_lock), held)
        };
        let killing = match held {
            Some(guard) => guard,
            None => kill_lock.lock_owned().await,
        };
        let cgroups = Arc::clone(&self.cgroups);
        let n = tokio::task::spawn_blocking(move || cgroups.kill_all(&cg))
            .await
            .map_err(|e| AgentError::new(Fault::Internal, e.to_string()))?
            .map_err(|e| AgentError::new(Fault::Internal, format!("kill {name}: {}", error_chain(&e))))?;
        self.audit.record(Some(name), AuditEvent::Kill { caller_uid: caller.uid, processes_killed: n });
        drop(killing);
        // Answer once the agent is really gone, so `kill` then `list` never shows it running.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exit.wait_for(|s| s.is_some())).await;
        Ok(n)
    }

    /// `rush agent kill`: the operator's kill, which also ends a restartable agent's
    /// restarts. A stored restartable agent that is not running (its restart failed) is
    /// forgotten without error.
    pub async fn kill_by_operator(&self, name: &str, caller: &Caller) -> Result<u32, AgentError> {
        let stored = self
            .store
            .as_ref()
            .and_then(|s| s.restartable().ok())
            .is_some_and(|l| l.iter().any(|r| r.request.name == name));
        self.forget_restart(name);
        match self.kill(name, caller).await {
            Err(e) if stored && (e.fault == Fault::NotFound || e.message.contains("already exited")) => {
                self.audit
                    .record(Some(name), AuditEvent::Kill { caller_uid: caller.uid, processes_killed: 0 });
                Ok(0)
            }
            other => other,
        }
    }

    /// Where the holder of an agent's terminal listens (`<state>/pty/NAME.sock`).
    pub(super) fn terminal_socket(&self, name: &str) -> PathBuf {
        crate::adapters::pty::socket_path(&self.log_dir.with_file_name("pty"), name)
    }

    /// The holder socket of a running agent's terminal, for `attach` and `send`.
    /// Root, or the user the agent runs as, may: typing into a terminal is acting as the
    /// agent's user.
    pub fn terminal(&self, name: &str, caller: &Caller) -> Result<PathBuf, AgentError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        if caller.uid != 0 && caller.uid != a.info.uid {
            return Err(AgentError::new(
                Fault::Forbidden,
                format!(
                    "uid {} may not use the terminal of agent {name:?}: it runs as uid {} (only that user or root may)",
                    caller.uid, a.info.uid
                ),
            ));
        }
        if !a.info.tty {
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} has no terminal: it was spawned without --tty (its output: `rush agent logs {name}`)"
                ),
            ));
        }
        let socket = self.terminal_socket(name);
        if a.info.state != AgentState::Running || !socket.exists() {
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} has exited and its terminal is closed (its output: `rush agent logs {name}`)"
                ),
            ));
        }
        Ok(socket)
    }

    pub fn log_path(&self, name: &str) -> Result<(PathBuf, watch::Receiver<Option<ExitStatus>>), AgentError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        let path = a.log_path.clone().ok_or_else(|| {
            AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} runs in the foreground: its output went to the terminal that spawned it"
                ),
            )
        })?;
        Ok((path, a.exit.clone()))
    }

    /// Kills every running agent (daemon shutdown).
    pub async fn kill_all_agents(&self) {
        let running: Vec<(String, watch::Receiver<Option<ExitStatus>>, AgentCgroup)> = self
            .registry()
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running)
            .map(|a| (a.info.name.clone(), a.exit.clone(), a.cgroup.clone()))
            .collect();
        for (name, mut exit, cg) in running {
            let _ = self.cgroups.kill_all(&cg);
            if tokio::time::timeout(std::time::Duration::from_secs(5), exit.wait_for(|s| s.is_some()))
                .await
                .is_err()
            {
                tracing::error!(agent = %name, "agent did not exit after SIGKILL");
            }
        }
    }

    /// The request with its trust level's defaults filled in, the combined budget, and the
    /// exec rule. Refuses budgets this machine cannot enforce.
    #[allow(clippy::type_complexity)]
    pub(super) fn apply_trust(
        &self,
        mut req: SpawnRequest,
    ) -> Result<(SpawnRequest, Budget, ExecRule, crate::adapters::harden::HardeningPolicy), AgentError> {
        let mut budget = req.budget;
        let mut exec = ExecRule::Granted;
        let mut hardening = self.hardening.as_ref().map(|h| h.defaults.clone()).unwrap_or_default();
        if let Some(level) = &req.trust {
            let level = self.budgets.policy().level(level).map_err(|e| AgentError::new(Fault::Invalid, e))?;
            budget = level.budget.overridden_by(&req.budget);
            if req.net.is_none() {
                req.net = level.net.clone();
            }
            if req.hardlinks.is_none() {
                req.hardlinks = level.hardlinks;
            }
            hardening = level.hardening.apply(&hardening);
            let mut allow = level.allow.clone();
            allow.append(&mut req.allow);
            req.allow = allow;
            exec = level.exec;
            let exec_unenforced = match &self.enforcement.files {
                FileBackend::BpfLsm => None,
                // Landlock sees execve only: `ld.so BINARY` and memfds would run what the
                // agent wrote, so the rule would not hold.
                FileBackend::Landlock => Some(
                    "file tokens are enforced by Landlock here, which checks execve only (not \
                     mmap(PROT_EXEC): `ld.so BINARY` would run what the agent wrote)"
                        .to_string(),
                ),
                FileBackend::Unavailable(why) => Some(why.clone()),
            };
            if let (ExecRule::System, Some(why)) = (exec, &exec_unenforced) {
                return Err(AgentError::new(
                    Fault::Unsupported,
                    format!(
                        "refusing trust level {:?}: its exec rule (\"system\") is enforced by file confinement, \
                         and {why}",
                        level.name
                    ),
                ));
            }
            if exec == ExecRule::System && req.allow.is_empty() {
                // The exec rule is enforced by file confinement: an agent at this level is
                // file-confined even with no tokens of its own (the baseline lets it run).
                req.allow.push(FileGrant {
                    path: PathBuf::from("/dev/null"),
                    ops: Ops::READ,
                    ttl_secs: None,
                });
            }
        }
        if budget.api_calls.is_some() && self.budgets.api_endpoints() == 0 {
            return Err(AgentError::new(
                Fault::Unsupported,
                "refusing the api budget: no API endpoints are configured (budget.api_endpoints in the \
                 daemon's config), so no call would be counted",
            ));
        }
        if let Some((resource, why)) = self
            .budgets
            .control()
            .unavailable()
            .into_iter()
            .find(|(r, _)| crate::services::budget::sets(&budget, r))
        {
            return Err(AgentError::new(
                Fault::Unsupported,
                format!("refusing the {resource} budget: {why}; it could not be enforced"),
            ));
        }
        Ok((req, budget, exec, hardening))
    }

    pub(super) fn exec_rule(&self, trust: Option<&str>) -> ExecRule {
        trust.and_then(|t| self.budgets.policy().level(t).ok()).map_or(ExecRule::Granted, |l| l.exec)
    }
}

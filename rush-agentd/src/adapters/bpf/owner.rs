//! The thread that owns the BPF objects and applies agents' policies to the maps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use rush_ebpf::{
    AF_INET, AF_INET6, AGENT_CLAIM_DENIED, MAP_AGENTS, MAP_API_ADDRS, MAP_CLAIM_DENIES, MAP_DNS_RESOLVERS,
    MAP_EVENTS, MAP_FILE_GRANTS, MAP_FILE_POLICY, MAP_NET_CIDR, MAP_NET_LEARNED, MAP_NET_USAGE, MAP_STATS,
    NET_CIDR_FIXED_BITS, NET_MODE_ALLOW, NET_MODE_DENY, NET_MODE_LIST, POLICY_DAEMON, Plain, RushAgent,
    RushApiKey, RushClaimDeny, RushDnsResolver, RushFileGrant, RushFileKey, RushFilePolicy, RushNetCidrKey,
    RushNetUsage,
};
use tracing::info;

use super::load::{self, Loaded};
use super::{
    AgentFlags, AttachReport, BpfConfig, BpfError, ClaimDeny, Command, FileGrantEntry, KernelNetPolicy,
    NetBudget, NetUsage,
};
use crate::core::FileKey;

/// What the owner thread hands back once everything is loaded and attached.
pub(super) struct Started {
    pub report: AttachReport,
    /// fd duplicates for the events thread.
    pub events: MapHandle,
    pub stats: MapHandle,
}

pub(super) fn run(
    cfg: BpfConfig,
    ready: mpsc::SyncSender<Result<Started, BpfError>>,
    commands: mpsc::Receiver<Command>,
    gone: Arc<AtomicBool>,
) {
    // Tells the events thread to stop, however this thread ends.
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _gone = SetOnDrop(gone);

    // The skeletons borrow these; they live on this thread's stack until it exits.
    let mut net_storage = MaybeUninit::uninit();
    let mut file_storage = MaybeUninit::uninit();
    let mut guard_storage = MaybeUninit::uninit();
    let setup =
        load::load(&cfg, &mut net_storage, &mut file_storage, &mut guard_storage).and_then(|loaded| {
            let maps = &loaded.net.maps;
            let mut agents = AgentMaps {
                agents: handle(&maps.rush_agents, MAP_AGENTS)?,
                allow: handle(&maps.rush_net_cidr, MAP_NET_CIDR)?,
                usage: handle(&maps.rush_net_usage, MAP_NET_USAGE)?,
                api: handle(&maps.rush_api_addrs, MAP_API_ADDRS)?,
                grants: handle(&maps.rush_file_grants, MAP_FILE_GRANTS)?,
                claims: handle(&maps.rush_claim_denies, MAP_CLAIM_DENIES)?,
                policy: handle(&maps.rush_file_policy, MAP_FILE_POLICY)?,
                published: RushFilePolicy::default(),
                expiries: BTreeSet::new(),
                learned: handle(&maps.rush_net_learned, MAP_NET_LEARNED)?,
                resolvers: handle(&maps.rush_dns_resolvers, MAP_DNS_RESOLVERS)?,
                learned_until: HashMap::new(),
                last_sweep_ns: 0,
                keys: HashMap::new(),
                grant_keys: HashMap::new(),
                claim_keys: HashMap::new(),
                api_keys: HashSet::new(),
            };
            agents.adopt();
            agents.start_policy()?;
            let started = Started {
                report: loaded.report.clone(),
                events: handle(&maps.rush_events, MAP_EVENTS)?,
                stats: handle(&maps.rush_stats, MAP_STATS)?,
            };
            Ok((loaded, agents, started))
        });
    let (_loaded, mut agents): (Loaded<'_>, AgentMaps) = match setup {
        Ok((loaded, agents, started)) => {
            if ready.send(Ok(started)).is_err() {
                return;
            }
            (loaded, agents)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };

    // Ends when every BpfHandle is dropped. The pinned links and maps stay in the kernel.
    // Wakes at the file policy's next expiry too (cached decisions stop counting there).
    loop {
        let command = match agents.until_next_expiry() {
            None => match commands.recv() {
                Ok(c) => c,
                Err(mpsc::RecvError) => break,
            },
            Some(wait) => match commands.recv_timeout(wait) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = agents.pass_expiry() {
                        tracing::warn!("file policy past an expiry: {e}");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        match command {
            Command::AddAgent { cgroup_id, net, flags, reply } => {
                let _ = reply.send(agents.add(cgroup_id, &net, flags));
            }
            Command::SetFileGrant { cgroup_id, key, grant, reply } => {
                let _ = reply.send(agents.set_file_grant(cgroup_id, key, grant));
            }
            Command::RemoveAgent { cgroup_id, reply } => {
                let _ = reply.send(agents.remove(cgroup_id));
            }
            Command::AgentIds { reply } => {
                let _ = reply.send(agents.ids());
            }
            Command::FileGrants { reply } => {
                let _ = reply.send(Ok(agents.file_grants()));
            }
            Command::SetNetBudget { cgroup_id, budget, reply } => {
                let _ = reply.send(agents.set_budget(cgroup_id, budget));
            }
            Command::NetUsage { cgroup_id, reply } => {
                let _ = reply.send(agents.usage(cgroup_id));
            }
            Command::SetApiEndpoints { endpoints, reply } => {
                let _ = reply.send(agents.set_api_endpoints(&endpoints));
            }
            Command::SetClaimDenies { cgroup_id, denies, reply } => {
                let _ = reply.send(agents.set_claim_denies(cgroup_id, &denies));
            }
            Command::SetDnsResolver { cgroup_id, ports, reply } => {
                let _ = reply.send(agents.set_dns_resolver(cgroup_id, ports));
            }
            Command::LearnAddress { cgroup_id, ip, port, until_boot_ns, reply } => {
                let _ = reply.send(agents.learn(cgroup_id, ip, port, until_boot_ns));
            }
        }
    }
}

fn handle(map: &libbpf_rs::MapMut<'_>, name: &'static str) -> Result<MapHandle, BpfError> {
    MapHandle::try_from(map).map_err(|source| BpfError::MapHandle { map: name, source })
}

/// `rush_agents`, `rush_net_cidr`, `rush_net_usage`, `rush_api_addrs`,
/// `rush_file_grants` and `rush_claim_denies`, plus the allow-list, grant, claim and API
/// keys written (so removing or changing an agent deletes exactly its entries).
struct AgentMaps {
    agents: MapHandle,
    allow: MapHandle,
    usage: MapHandle,
    api: MapHandle,
    grants: MapHandle,
    claims: MapHandle,
    /// `rush_file_policy`: the generation and next expiry the cached file decisions check.
    policy: MapHandle,
    /// What this daemon last wrote to the policy's daemon entry.
    published: RushFilePolicy,
    /// Every finite expiry of a grant written (or found at start), until it passes: the
    /// published next expiry is the earliest. Deleted grants keep theirs (the kernel may
    /// have copied them: saves, moved grants); passing sooner is only a cache miss.
    expiries: BTreeSet<u64>,
    /// Addresses learned from DNS answers, and until when each allows.
    learned: MapHandle,
    resolvers: MapHandle,
    learned_until: HashMap<RushNetCidrKey, u64>,
    /// When expired learned entries were last deleted (CLOCK_BOOTTIME ns).
    last_sweep_ns: u64,
    keys: HashMap<u64, Vec<RushNetCidrKey>>,
    grant_keys: HashMap<u64, HashSet<RushFileKey>>,
    /// Each agent's entries of `rush_claim_denies` (no key: none).
    claim_keys: HashMap<u64, HashSet<RushFileKey>>,
    api_keys: HashSet<RushApiKey>,
}

impl AgentMaps {
    /// Learns the keys already in reused (pinned) allow, grant, claim and API maps.
    fn adopt(&mut self) {
        for key in self.allow.keys() {
            if let Some(key) = RushNetCidrKey::from_bytes(&key) {
                self.keys.entry(key.cgroup_id).or_default().push(key);
            }
        }
        self.api_keys.extend(self.api.keys().filter_map(|k| RushApiKey::from_bytes(&k)));
        for key in self.learned.keys() {
            let Some(key) = RushNetCidrKey::from_bytes(&key) else { continue };
            let until = self.learned.lookup(key.as_bytes(), MapFlags::ANY).ok().flatten();
            let until = until.and_then(|v| Some(u64::from_ne_bytes(v.as_slice().try_into().ok()?)));
            self.learned_until.insert(key, until.unwrap_or(0));
        }
        for key in self.grants.keys() {
            if let Some(key) = RushFileKey::from_bytes(&key) {
                self.grant_keys.entry(key.cgroup_id).or_default().insert(key);
            }
        }
        for key in self.claims.keys() {
            if let Some(key) = RushFileKey::from_bytes(&key) {
                self.claim_keys.entry(key.cgroup_id).or_default().insert(key);
            }
        }
        let agents = self.agents.keys().count();
        if agents > 0 {
            info!(agents, "reusing agent entries from the pinned maps");
        }
    }

    /// Takes the policy generation on from what a previous daemon published (decisions
    /// cached under it must not count again) and the expiries from the grants in the map.
    fn start_policy(&mut self) -> Result<(), BpfError> {
        let previous = self
            .policy
            .lookup(&POLICY_DAEMON.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| RushFilePolicy::from_bytes(&v));
        // Until written, next_expiry_ns 0 means no cached decision counts.
        self.published = RushFilePolicy { next_expiry_ns: 0, ..previous.unwrap_or_default() };
        for key in self.grants.keys() {
            let value = self.grants.lookup(&key, MapFlags::ANY).ok().flatten();
            if let Some(grant) = value.as_deref().and_then(RushFileGrant::from_bytes) {
                self.expiries.extend(finite_expiries(&grant.expires_ns));
            }
        }
        self.grants_changed()
    }

    /// Before a grant with `expires_ns` is written: the next expiry lowered to it if sooner
    /// (no generation change: decisions only stop counting sooner).
    fn expiry_before_write(&mut self, expires_ns: &[u64]) -> Result<(), BpfError> {
        let new: Vec<u64> = finite_expiries(expires_ns).collect();
        self.expiries.extend(new.iter().copied());
        match new.iter().min() {
            Some(&soonest) if soonest < self.published.next_expiry_ns => {
                self.publish(RushFilePolicy { next_expiry_ns: soonest, ..self.published })
            }
            _ => Ok(()),
        }
    }

    /// After grants were written or deleted: the generation bumped (every decision cached
    /// before stops counting: a revoke reaches open descriptors), then the next expiry
    /// moved to the earliest one not passed, computed before the bump.
    fn grants_changed(&mut self) -> Result<(), BpfError> {
        let next = self.next_expiry(crate::core::boot_time_ns());
        let bumped =
            RushFilePolicy { generation: self.published.generation.wrapping_add(1), ..self.published };
        self.publish(bumped)?;
        if next != bumped.next_expiry_ns {
            self.publish(RushFilePolicy { next_expiry_ns: next, ..bumped })?;
        }
        Ok(())
    }

    /// Once the published next expiry has passed (the kernel no longer trusts any cached
    /// decision): a bump, and the next one.
    fn pass_expiry(&mut self) -> Result<(), BpfError> {
        if crate::core::boot_time_ns() < self.published.next_expiry_ns {
            return Ok(());
        }
        self.grants_changed()
    }

    /// How long until the published next expiry (None: no expiry pending).
    fn until_next_expiry(&self) -> Option<Duration> {
        let next = self.published.next_expiry_ns;
        (next != u64::MAX).then(|| Duration::from_nanos(next.saturating_sub(crate::core::boot_time_ns())))
    }

    /// The earliest expiry after `now` (`u64::MAX`: none); passed ones are forgotten.
    fn next_expiry(&mut self, now: u64) -> u64 {
        self.expiries = self.expiries.split_off(&now.saturating_add(1));
        self.expiries.first().copied().unwrap_or(u64::MAX)
    }

    /// One field changed per call (see `struct rush_file_policy`).
    fn publish(&mut self, value: RushFilePolicy) -> Result<(), BpfError> {
        self.policy
            .update(&POLICY_DAEMON.to_ne_bytes(), value.as_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::GlobalMap { map: MAP_FILE_POLICY, op: "update", source })?;
        self.published = value;
        Ok(())
    }

    /// The allow entries and the usage entry first, then the agent entry that makes them
    /// count, then the entries of a previous policy that the new one no longer has.
    ///
    /// Every agent gets a usage entry (unlimited until `set_budget`), so every agent's
    /// traffic is counted: usage can be shown for all agents, and a budget set later
    /// covers the bytes from the start. The cost is two atomic adds per packet of agents
    /// only (see the throughput benchmark); processes outside agents pay one failed
    /// lookup. A re-add (policy change, restarted daemon) keeps the counters.
    ///
    /// `RUSH_AGENT_CLAIM_DENIED` is set only if the agent has claim denies already (set
    /// before it was added, or kept across a re-add); a fresh agent has none.
    fn add(&mut self, cgroup_id: u64, net: &KernelNetPolicy, flags: AgentFlags) -> Result<(), BpfError> {
        let (net_mode, keys) = net_entries(cgroup_id, net);
        let old = self.keys.remove(&cgroup_id).unwrap_or_default();
        let mut usage_created = false;
        let written = self.write_allow(cgroup_id, &keys).and_then(|()| {
            usage_created = self.create_usage(cgroup_id)?;
            Ok(())
        });
        let written = written.and_then(|()| {
            let claim_denied = if self.claim_keys.contains_key(&cgroup_id) { AGENT_CLAIM_DENIED } else { 0 };
            let agent = RushAgent { net_mode, flags: flags.bits() | claim_denied, ..Default::default() };
            self.agents
                .update(&cgroup_id.to_ne_bytes(), agent.as_bytes(), MapFlags::ANY)
                .map_err(|source| map_err(MAP_AGENTS, "update", cgroup_id, source))
        });
        if let Err(e) = written {
            // The old policy stays in force; drop only what this call added.
            let added: Vec<_> = keys.iter().filter(|k| !old.contains(k)).copied().collect();
            let _ = self.delete_allow(cgroup_id, &added);
            if usage_created {
                let _ = delete(&self.usage, &cgroup_id.to_ne_bytes());
            }
            self.keys.insert(cgroup_id, old);
            return Err(e);
        }
        let stale: Vec<_> = old.into_iter().filter(|k| !keys.contains(k)).collect();
        self.keys.insert(cgroup_id, keys);
        self.delete_allow(cgroup_id, &stale)
    }

    /// The agent entry first (the agent is then no longer confined by this daemon), then
    /// its allow entries, file grants and claim denies. Removing an unknown agent is not an
    /// error.
    fn remove(&mut self, cgroup_id: u64) -> Result<(), BpfError> {
        delete(&self.agents, &cgroup_id.to_ne_bytes())
            .map_err(|source| map_err(MAP_AGENTS, "delete", cgroup_id, source))?;
        let keys = self.keys.remove(&cgroup_id).unwrap_or_default();
        self.delete_allow(cgroup_id, &keys)?;
        delete(&self.resolvers, &cgroup_id.to_ne_bytes())
            .map_err(|source| map_err(MAP_DNS_RESOLVERS, "delete", cgroup_id, source))?;
        self.forget_learned(|k, _| k.cgroup_id == cgroup_id)?;
        delete(&self.usage, &cgroup_id.to_ne_bytes())
            .map_err(|source| map_err(MAP_NET_USAGE, "delete", cgroup_id, source))?;
        let mut grants = self.grant_keys.remove(&cgroup_id).unwrap_or_default();
        // Entries the kernel wrote itself (files an agent made through a save right).
        grants.extend(
            self.grants
                .keys()
                .filter_map(|k| RushFileKey::from_bytes(&k))
                .filter(|k| k.cgroup_id == cgroup_id),
        );
        self.delete_grants(cgroup_id, grants)?;
        let claims = self.claim_keys_of(cgroup_id);
        self.delete_claims(cgroup_id, claims)
    }

    /// Replaces the agent's claim denies: the new entries first, then its
    /// `RUSH_AGENT_CLAIM_DENIED` flag set (if it has an agent entry: else `add` sets it),
    /// then the entries no longer in the set deleted, and the flag cleared once none is left.
    /// Every moment in between denies at least what the old and the new set both deny.
    fn set_claim_denies(&mut self, cgroup_id: u64, denies: &[(FileKey, ClaimDeny)]) -> Result<(), BpfError> {
        let new: HashMap<RushFileKey, RushClaimDeny> = denies
            .iter()
            .map(|(key, deny)| {
                let key = RushFileKey { cgroup_id, ino: key.ino, dev: key.dev, pad: 0 };
                (key, RushClaimDeny { claim_id: deny.claim_id, holder_cgroup: deny.holder_cgroup })
            })
            .collect();
        let old = self.claim_keys_of(cgroup_id);
        for (key, value) in &new {
            if let Err(source) = self.claims.update(key.as_bytes(), value.as_bytes(), MapFlags::ANY) {
                // The old set stays in force; drop only what this call added.
                for added in new.keys().filter(|k| !old.contains(k)) {
                    let _ = delete(&self.claims, added.as_bytes());
                }
                self.track_claims(cgroup_id, old);
                return Err(map_err(MAP_CLAIM_DENIES, "update", cgroup_id, source));
            }
        }
        let stale: HashSet<RushFileKey> = old.iter().filter(|k| !new.contains_key(k)).copied().collect();
        if !new.is_empty()
            && let Err(e) = self.set_agent_flag(cgroup_id, AGENT_CLAIM_DENIED, true)
        {
            self.track_claims(cgroup_id, old.into_iter().chain(new.into_keys()).collect());
            return Err(e);
        }
        self.track_claims(cgroup_id, new.into_keys().chain(stale.iter().copied()).collect());
        self.delete_claims(cgroup_id, stale)?;
        if !self.claim_keys.contains_key(&cgroup_id) {
            self.set_agent_flag(cgroup_id, AGENT_CLAIM_DENIED, false)?;
        }
        Ok(())
    }

    /// The agent's keys in `rush_claim_denies`: those this daemon wrote, and any the map
    /// holds besides (a previous daemon's); forgotten here until tracked again.
    fn claim_keys_of(&mut self, cgroup_id: u64) -> HashSet<RushFileKey> {
        let mut keys = self.claim_keys.remove(&cgroup_id).unwrap_or_default();
        keys.extend(
            self.claims
                .keys()
                .filter_map(|k| RushFileKey::from_bytes(&k))
                .filter(|k| k.cgroup_id == cgroup_id),
        );
        keys
    }

    fn track_claims(&mut self, cgroup_id: u64, keys: HashSet<RushFileKey>) {
        if keys.is_empty() {
            self.claim_keys.remove(&cgroup_id);
        } else {
            self.claim_keys.insert(cgroup_id, keys);
        }
    }

    /// Deletes claim entries (a few per agent: one per claimed directory); those that
    /// could not be deleted stay tracked.
    fn delete_claims(&mut self, cgroup_id: u64, keys: HashSet<RushFileKey>) -> Result<(), BpfError> {
        let mut first_err = None;
        for key in keys {
            match delete(&self.claims, key.as_bytes()) {
                Ok(()) => {
                    if let Some(keys) = self.claim_keys.get_mut(&cgroup_id) {
                        keys.remove(&key);
                        if keys.is_empty() {
                            self.claim_keys.remove(&cgroup_id);
                        }
                    }
                }
                Err(source) => {
                    first_err.get_or_insert(map_err(MAP_CLAIM_DENIES, "delete", cgroup_id, source));
                    self.claim_keys.entry(cgroup_id).or_default().insert(key);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sets or clears `bit` in the agent's `rush_agents` entry, keeping the rest of it (this
    /// thread is its only writer). No entry (not added yet, or removed): nothing to do.
    fn set_agent_flag(&self, cgroup_id: u64, bit: u32, on: bool) -> Result<(), BpfError> {
        let key = cgroup_id.to_ne_bytes();
        let value = self
            .agents
            .lookup(&key, MapFlags::ANY)
            .map_err(|source| map_err(MAP_AGENTS, "lookup", cgroup_id, source))?;
        let Some(mut agent) = value.and_then(|v| RushAgent::from_bytes(&v)) else {
            return Ok(());
        };
        let flags = if on { agent.flags | bit } else { agent.flags & !bit };
        if flags == agent.flags {
            return Ok(());
        }
        agent.flags = flags;
        match self.agents.update(&key, agent.as_bytes(), MapFlags::EXIST) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|source| map_err(MAP_AGENTS, "update", cgroup_id, source)),
        }
    }

    /// Writes or deletes one grant entry (whether or not the agent has been added yet).
    fn set_file_grant(
        &mut self,
        cgroup_id: u64,
        key: FileKey,
        grant: Option<FileGrantEntry>,
    ) -> Result<(), BpfError> {
        let key = RushFileKey { cgroup_id, ino: key.ino, dev: key.dev, pad: 0 };
        // No decision is cached for an agent the kernel does not know yet (the programs
        // cache only for agents with an entry, and its cgroup is new): a spawn's grants
        // need no generation bump each, which for 10,000 tokens was 20,000 map writes.
        let live = self.agents.lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY).ok().flatten().is_some();
        match grant {
            Some(grant) => {
                let value = RushFileGrant { expires_ns: grant.expires_ns, mnt_id: grant.mnt_id, pad: 0 };
                self.expiry_before_write(&grant.expires_ns)?;
                let written = self
                    .grants
                    .update(key.as_bytes(), value.as_bytes(), MapFlags::ANY)
                    .map_err(|source| map_err(MAP_FILE_GRANTS, "update", cgroup_id, source));
                // Also after a failed write: an entry it replaced may be gone or changed.
                if live {
                    self.grants_changed()?;
                }
                written?;
                self.grant_keys.entry(cgroup_id).or_default().insert(key);
            }
            None => {
                let deleted = delete(&self.grants, key.as_bytes())
                    .map_err(|source| map_err(MAP_FILE_GRANTS, "delete", cgroup_id, source));
                self.grants_changed()?;
                deleted?;
                if let Some(keys) = self.grant_keys.get_mut(&cgroup_id) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.grant_keys.remove(&cgroup_id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every entry of `rush_file_grants` by agent, read from the map itself (entries the
    /// kernel wrote included), not from what this daemon remembers writing.
    fn file_grants(&self) -> super::GrantsByAgent {
        let mut by_agent: HashMap<u64, Vec<_>> = HashMap::new();
        for k in self.grants.keys().filter_map(|k| RushFileKey::from_bytes(&k)) {
            let Some(value) = self.grants.lookup(k.as_bytes(), MapFlags::ANY).ok().flatten() else {
                continue;
            };
            let Some(v) = RushFileGrant::from_bytes(&value) else { continue };
            let entry = FileGrantEntry { expires_ns: v.expires_ns, mnt_id: v.mnt_id };
            by_agent.entry(k.cgroup_id).or_default().push((FileKey { dev: k.dev, ino: k.ino }, entry));
        }
        by_agent
    }

    /// One batch delete (thousands of tokens per agent); one by one if that fails, e.g.
    /// because an entry was already gone.
    fn delete_grants(&mut self, cgroup_id: u64, keys: HashSet<RushFileKey>) -> Result<(), BpfError> {
        if keys.is_empty() {
            return Ok(());
        }
        let deleted = self.delete_grant_entries(cgroup_id, keys);
        // Whatever was deleted: decisions cached before stop counting.
        self.grants_changed()?;
        deleted
    }

    fn delete_grant_entries(&mut self, cgroup_id: u64, keys: HashSet<RushFileKey>) -> Result<(), BpfError> {
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.as_bytes().to_vec()).collect();
        let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        if self.grants.delete_batch(&bytes, count, MapFlags::ANY, MapFlags::ANY).is_ok() {
            return Ok(());
        }
        let mut left = HashSet::new();
        let mut first_err = None;
        for key in keys {
            if let Err(source) = delete(&self.grants, key.as_bytes()) {
                first_err.get_or_insert(map_err(MAP_FILE_GRANTS, "delete", cgroup_id, source));
                left.insert(key);
            }
        }
        if !left.is_empty() {
            self.grant_keys.entry(cgroup_id).or_default().extend(left);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Agents in the map, then cgroups that have only allow entries, usage entries, file
    /// grants or claim denies left (a daemon that died between the steps of a remove), so
    /// that they get removed too.
    fn ids(&self) -> Result<Vec<u64>, BpfError> {
        let id = |k: Vec<u8>| Some(u64::from_ne_bytes(k.as_slice().try_into().ok()?));
        let mut ids: Vec<u64> = self.agents.keys().filter_map(id).collect();
        let usage: Vec<u64> = self.usage.keys().filter_map(id).collect();
        let mut orphans: Vec<u64> = self
            .keys
            .keys()
            .chain(self.grant_keys.keys())
            .chain(self.claim_keys.keys())
            .chain(self.learned_until.keys().map(|k| &k.cgroup_id))
            .chain(usage.iter())
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        orphans.sort_unstable();
        orphans.dedup();
        ids.extend(orphans);
        Ok(ids)
    }

    fn set_dns_resolver(&mut self, cgroup_id: u64, ports: Option<(u16, u16)>) -> Result<(), BpfError> {
        match ports {
            Some((port4, port6)) => {
                let value = RushDnsResolver { port4, port6, pad: 0 };
                self.resolvers
                    .update(&cgroup_id.to_ne_bytes(), value.as_bytes(), MapFlags::ANY)
                    .map_err(|source| map_err(MAP_DNS_RESOLVERS, "update", cgroup_id, source))
            }
            None => delete(&self.resolvers, &cgroup_id.to_ne_bytes())
                .map_err(|source| map_err(MAP_DNS_RESOLVERS, "delete", cgroup_id, source)),
        }
    }

    /// One learned address (a full-length prefix), kept until the later of its old and
    /// new expiry; expired entries of every agent are swept at most once a minute.
    fn learn(&mut self, cgroup_id: u64, ip: IpAddr, port: u16, until_boot_ns: u64) -> Result<(), BpfError> {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let (_, keys) = net_entries(cgroup_id, &KernelNetPolicy::List(vec![(ip, full, port)]));
        let now = crate::core::boot_time_ns();
        for key in keys {
            let until = self.learned_until.get(&key).copied().unwrap_or(0).max(until_boot_ns);
            self.learned
                .update(key.as_bytes(), &until.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| map_err(MAP_NET_LEARNED, "update", cgroup_id, source))?;
            self.learned_until.insert(key, until);
        }
        if now.saturating_sub(self.last_sweep_ns) > 60_000_000_000 {
            self.last_sweep_ns = now;
            self.forget_learned(|_, until| until <= now)?;
        }
        Ok(())
    }

    /// Deletes the learned entries `which` picks.
    fn forget_learned(&mut self, which: impl Fn(&RushNetCidrKey, u64) -> bool) -> Result<(), BpfError> {
        let gone: Vec<RushNetCidrKey> =
            self.learned_until.iter().filter(|(k, until)| which(k, **until)).map(|(k, _)| *k).collect();
        for key in gone {
            delete(&self.learned, key.as_bytes())
                .map_err(|source| map_err(MAP_NET_LEARNED, "delete", key.cgroup_id, source))?;
            self.learned_until.remove(&key);
        }
        Ok(())
    }

    fn write_allow(&self, cgroup_id: u64, keys: &[RushNetCidrKey]) -> Result<(), BpfError> {
        for key in keys {
            self.allow
                .update(key.as_bytes(), &[1], MapFlags::ANY)
                .map_err(|source| map_err(MAP_NET_CIDR, "update", cgroup_id, source))?;
        }
        Ok(())
    }

    fn delete_allow(&self, cgroup_id: u64, keys: &[RushNetCidrKey]) -> Result<(), BpfError> {
        for key in keys {
            delete(&self.allow, key.as_bytes())
                .map_err(|source| map_err(MAP_NET_CIDR, "delete", cgroup_id, source))?;
        }
        Ok(())
    }

    /// An unlimited, zeroed usage entry unless the agent has one; true if it was created.
    fn create_usage(&self, cgroup_id: u64) -> Result<bool, BpfError> {
        let fresh = RushNetUsage { api_limit: u64::MAX, ..Default::default() };
        match self.usage.update(&cgroup_id.to_ne_bytes(), fresh.as_bytes(), MapFlags::NO_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(map_err(MAP_NET_USAGE, "create", cgroup_id, source)),
        }
    }

    fn read_usage(&self, cgroup_id: u64) -> Result<Option<RushNetUsage>, BpfError> {
        let value = self
            .usage
            .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| map_err(MAP_NET_USAGE, "lookup", cgroup_id, source))?;
        Ok(value.and_then(|v| RushNetUsage::from_bytes(&v)))
    }

    /// Writes the limits, keeping the counters and clearing the breach flags.
    ///
    /// The map has no partial update: this reads the entry and writes it back whole, so
    /// counts the programs add in between (microseconds) are lost. Budgets are set before
    /// the agent runs or while it is stalled at its budget, when there is little to lose.
    fn set_budget(&mut self, cgroup_id: u64, budget: NetBudget) -> Result<(), BpfError> {
        let mut value = self.read_usage(cgroup_id)?.unwrap_or_default();
        // 0 means unlimited to the programs; no IP packet fits in a 1-byte budget.
        value.limit_bytes = budget.bytes.map_or(0, |b| b.max(1));
        value.api_limit = budget.api_calls.unwrap_or(u64::MAX);
        value.flags = 0;
        self.usage
            .update(&cgroup_id.to_ne_bytes(), value.as_bytes(), MapFlags::ANY)
            .map_err(|source| map_err(MAP_NET_USAGE, "update", cgroup_id, source))
    }

    fn usage(&self, cgroup_id: u64) -> Result<Option<NetUsage>, BpfError> {
        Ok(self.read_usage(cgroup_id)?.map(|u| NetUsage {
            tx_bytes: u.tx_bytes,
            rx_bytes: u.rx_bytes,
            api_calls: u.api_calls,
            dropped_packets: u.dropped_packets,
            refused_calls: u.refused_calls,
        }))
    }

    /// The new endpoints first, then the ones no longer in the set are deleted.
    fn set_api_endpoints(&mut self, endpoints: &[(IpAddr, u16)]) -> Result<(), BpfError> {
        let keys: HashSet<RushApiKey> = endpoints
            .iter()
            .map(|&(ip, port)| {
                let (family, addr) = kernel_addr(ip);
                RushApiKey { family, port, pad: 0, addr }
            })
            .collect();
        let added: Vec<RushApiKey> = keys.difference(&self.api_keys).copied().collect();
        for key in added {
            self.api.update(key.as_bytes(), &[1], MapFlags::ANY).map_err(|source| BpfError::GlobalMap {
                map: MAP_API_ADDRS,
                op: "update",
                source,
            })?;
            self.api_keys.insert(key);
        }
        let stale: Vec<RushApiKey> = self.api_keys.difference(&keys).copied().collect();
        for key in stale {
            delete(&self.api, key.as_bytes()).map_err(|source| BpfError::GlobalMap {
                map: MAP_API_ADDRS,
                op: "delete",
                source,
            })?;
            self.api_keys.remove(&key);
        }
        Ok(())
    }
}

/// The expiries of a grant entry that lie in the future at some point: not 0 (not
/// granted) and not `u64::MAX` (never expires).
fn finite_expiries(expires_ns: &[u64]) -> impl Iterator<Item = u64> + '_ {
    expires_ns.iter().copied().filter(|&e| e != 0 && e != u64::MAX)
}

/// Deletes `key`; a missing key is fine.
fn delete(map: &MapHandle, key: &[u8]) -> Result<(), libbpf_rs::Error> {
    match map.delete(key) {
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn map_err(map: &'static str, op: &'static str, cgroup_id: u64, source: libbpf_rs::Error) -> BpfError {
    BpfError::Map { map, op, cgroup_id, source }
}

/// (family, address bytes) as the programs see an address: IPv4 in the first 4 bytes, and
/// IPv4-mapped IPv6 addresses as the IPv4 address (the programs check them as IPv4).
fn kernel_addr(ip: IpAddr) -> (u16, [u8; 16]) {
    let mut addr = [0; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (AF_INET, addr)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

/// The agent's net mode and its allow-list keys (deduplicated, bits below each prefix
/// cleared). IPv4-mapped IPv6 blocks of at least /96 become IPv4 blocks, as the kernel
/// checks mapped addresses as IPv4; shorter ones stay IPv6 (and then cover no IPv4).
fn net_entries(cgroup_id: u64, net: &KernelNetPolicy) -> (u32, Vec<RushNetCidrKey>) {
    let list = match net {
        KernelNetPolicy::Deny => return (NET_MODE_DENY, Vec::new()),
        KernelNetPolicy::Allow => return (NET_MODE_ALLOW, Vec::new()),
        KernelNetPolicy::List(list) => list,
    };
    let mut keys: Vec<RushNetCidrKey> = Vec::with_capacity(list.len());
    for &(ip, prefix, port) in list {
        let (family, len, mut addr) = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                (AF_INET, prefix.min(128) - 96, kernel_addr(ip).1)
            }
            IpAddr::V6(v6) => (AF_INET6, prefix.min(128), v6.octets()),
            IpAddr::V4(_) => (AF_INET, prefix.min(32), kernel_addr(ip).1),
        };
        for (i, byte) in addr.iter_mut().enumerate() {
            let bits_here = u32::from(len).saturating_sub(i as u32 * 8).min(8);
            *byte &= !(0xffu8.checked_shr(bits_here).unwrap_or(0));
        }
        let key =
            RushNetCidrKey { prefixlen: NET_CIDR_FIXED_BITS + u32::from(len), family, port, cgroup_id, addr };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    (NET_MODE_LIST, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys() {
        let list = KernelNetPolicy::List(vec![
            ("10.1.2.3".parse().unwrap(), 32, 443),
            ("::ffff:10.1.2.3".parse().unwrap(), 128, 443), // same as the first
            ("2001:db8::1".parse().unwrap(), 128, 0),
            ("10.1.2.3".parse().unwrap(), 8, 0), // bits below /8 cleared
            ("::ffff:172.16.9.9".parse().unwrap(), 108, 0), // = 172.16.0.0/12
            ("fd00::1".parse().unwrap(), 8, 53),
            ("::ffff:0.0.0.0".parse().unwrap(), 80, 0), // shorter than the mapped range
        ]);
        let (mode, keys) = net_entries(7, &list);
        assert_eq!(mode, NET_MODE_LIST);
        assert_eq!(keys.len(), 6, "{keys:#?}");
        assert_eq!(keys[0].family, AF_INET);
        assert_eq!(keys[0].port, 443);
        assert_eq!(keys[0].prefixlen, 96 + 32);
        assert_eq!(keys[0].addr, [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(keys[1].family, AF_INET6);
        assert_eq!(keys[1].port, 0);
        assert_eq!(keys[1].prefixlen, 96 + 128);
        assert_eq!(keys[1].addr[..2], [0x20, 0x01]);
        assert_eq!((keys[2].family, keys[2].prefixlen), (AF_INET, 96 + 8));
        assert_eq!(keys[2].addr, [10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((keys[3].family, keys[3].prefixlen), (AF_INET, 96 + 12));
        assert_eq!(keys[3].addr[..4], [172, 16, 0, 0]);
        assert_eq!((keys[4].family, keys[4].prefixlen, keys[4].port), (AF_INET6, 96 + 8, 53));
        assert_eq!(keys[4].addr, "fd00::".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!((keys[5].family, keys[5].prefixlen), (AF_INET6, 96 + 80));
        assert_eq!(keys[5].addr, [0; 16]);
        assert!(keys.iter().all(|k| k.cgroup_id == 7));

        assert_eq!(net_entries(7, &KernelNetPolicy::Deny), (NET_MODE_DENY, vec![]));
        assert_eq!(net_entries(7, &KernelNetPolicy::Allow), (NET_MODE_ALLOW, vec![]));
    }
}

//! Claims: the compare-and-swap, renew and release, and their mirror in the kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rush_proto::coordination::{
    self as co, Claim, ClaimAction, ClaimEnforcement, ClaimOutcome, ClaimRequest, DEFAULT_CLAIM_TTL_SECS,
};

use super::{Actor, AgentView, Coordination, CoordinationError, invalid, store_failed};
use crate::adapters::bpf::ClaimDeny;
use crate::adapters::store::{ClaimRecord, ClaimSwap};
use crate::core::{Fault, FileKey, now_unix_ms};

impl Coordination {
    pub fn claim(&self, actor: Actor<'_>, req: ClaimRequest) -> Result<ClaimOutcome, CoordinationError> {
        co::check_name("task", &req.task).map_err(invalid)?;
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_CLAIM_TTL_SECS);
        co::check_ttl("ttl", ttl).map_err(invalid)?;
        if req.paths.len() > co::MAX_PATHS {
            return Err(invalid(format!(
                "{} paths: a claim names at most {}",
                req.paths.len(),
                co::MAX_PATHS
            )));
        }
        for p in &req.paths {
            co::check_pattern(p).map_err(invalid)?;
        }
        let holder = self.acting_agent(actor, req.agent.as_deref(), "claim")?;
        let (enforced_paths, keys) = self.resolve_paths(&req.paths)?;
        let mut warning = None;
        let enforcement = if req.paths.is_empty() {
            ClaimEnforcement::None
        } else {
            match &self.kernel_claims {
                Ok(()) => ClaimEnforcement::Kernel,
                Err(why) if req.enforce => {
                    return Err(CoordinationError::new(
                        Fault::Unsupported,
                        format!(
                            "claim {:?} refused (--enforce): its paths cannot be enforced on this kernel: {why}",
                            req.task
                        ),
                    ));
                }
                Err(why) => {
                    warning = Some(format!(
                        "the claim's paths are advisory: {why}; other agents can still write there"
                    ));
                    ClaimEnforcement::Advisory
                }
            }
        };
        if enforcement == ClaimEnforcement::Kernel
            && let Some(p) = req.paths.iter().find(|p| co::is_glob(p))
        {
            warning = Some(format!(
                "{p}: the kernel protects what the glob matched now ({} paths); files created later that match it \
                 are not protected unless they are inside one of those",
                enforced_paths.len()
            ));
        }
        let record = ClaimRecord {
            claim: Claim {
                task: req.task.clone(),
                agent: holder.name.clone(),
                session: holder.session.clone(),
                lease: 0,
                fencing: 0,
                paths: req.paths.clone(),
                enforced_paths,
                enforcement,
                acquired_unix_ms: 0,
                expires_unix_ms: 0,
            },
            keys: keys.iter().map(|k| (k.dev, k.ino)).collect(),
            ttl_secs: ttl,
            node: self.node.clone(),
            version: 0,
        };
        let swap = self.store.try_claim(record, now_unix_ms()).map_err(|e| store_failed(&e))?;
        Ok(match swap {
            ClaimSwap::Won { record, displaced } => {
                if let Some(old) = displaced {
                    self.audit_claim(&old.claim, ClaimAction::Expired, None);
                }
                // The denies are in place before the winner hears it has won.
                self.sync_kernel();
                self.audit_claim(&record.claim, ClaimAction::Acquired, None);
                ClaimOutcome { won: true, claim: record.claim, warning }
            }
            ClaimSwap::AlreadyHeld(record) => {
                let changed =
                    record.claim.paths != req.paths || req.ttl_secs.is_some_and(|t| t != record.ttl_secs);
                let warning = changed.then(|| {
                    format!(
                        "agent {:?} already holds {:?}: its paths and lease are unchanged (renew to extend it; release \
                         and claim again to change its paths)",
                        record.claim.agent, record.claim.task
                    )
                });
                ClaimOutcome { won: true, claim: record.claim, warning }
            }
            ClaimSwap::Lost(record) => {
                self.contended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(record.claim.agent.clone(), (record.claim.task.clone(), record.claim.lease));
                ClaimOutcome { won: false, claim: record.claim, warning: None }
            }
        })
    }

    pub fn renew(
        &self,
        actor: Actor<'_>,
        agent: Option<&str>,
        task: &str,
        ttl_secs: Option<u64>,
    ) -> Result<ClaimOutcome, CoordinationError> {
        co::check_name("task", task).map_err(invalid)?;
        if let Some(ttl) = ttl_secs {
            co::check_ttl("ttl", ttl).map_err(invalid)?;
        }
        let holder = self.acting_agent(actor, agent, "renew")?;
        let renewed = self.store.renew_claim(task, &self.node, &holder.name, ttl_secs, now_unix_ms());
        match renewed.map_err(|e| store_failed(&e))? {
            Some(r) => {
                self.audit_claim(&r.claim, ClaimAction::Renewed, None);
                Ok(ClaimOutcome { won: true, claim: r.claim, warning: None })
            }
            None => Err(CoordinationError::new(
                Fault::NotFound,
                format!(
                    "agent {:?} does not hold task {task:?} (never claimed, released, or its lease lapsed): claim it \
                     again",
                    holder.name
                ),
            )),
        }
    }

    /// An agent releases its own claim; the operator (no `agent`) whoever holds it.
    pub fn release(
        &self,
        actor: Actor<'_>,
        agent: Option<&str>,
        task: &str,
    ) -> Result<Claim, CoordinationError> {
        co::check_name("task", task).map_err(invalid)?;
        let (only, caller_uid) = match actor {
            Actor::Agent { name } => (Some(name), None),
            Actor::Operator { uid } => (agent, Some(uid)),
        };
        let holder = only.map(|agent| (self.node.as_str(), agent));
        let gone =
            self.store.release_claim(task, holder).map_err(|e| store_failed(&e))?.ok_or_else(|| {
                let who = only.map(|a| format!("agent {a:?}")).unwrap_or_else(|| "anyone".into());
                CoordinationError::new(Fault::NotFound, format!("task {task:?} is not held by {who}"))
            })?;
        self.sync_kernel();
        // Released after its lease lapsed (before the sweep saw it): it had expired.
        let action = if gone.claim.expires_unix_ms <= now_unix_ms() {
            ClaimAction::Expired
        } else if caller_uid.is_some() {
            ClaimAction::Revoked
        } else {
            ClaimAction::Released
        };
        self.audit_claim(&gone.claim, action, caller_uid);
        Ok(gone.claim)
    }

    /// Live claims (an agent sees its session's); with `path`, those covering it.
    pub fn claims(
        &self,
        actor: Actor<'_>,
        path: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<Claim>, CoordinationError> {
        let now = now_unix_ms();
        let scope = self.reader_scope(actor);
        if let Some(p) = path {
            co::check_pattern(p).map_err(invalid)?;
        }
        let live = self.store.live_claims().map_err(|e| store_failed(&e))?;
        Ok(live
            .into_iter()
            .map(|r| r.claim)
            .filter(|c| c.expires_unix_ms > now)
            .filter(|c| scope.as_ref().is_none_or(|s| &c.session == s))
            .filter(|c| session.is_none_or(|s| c.session.as_deref() == Some(s)))
            .filter(|c| path.is_none_or(|p| covers(c, Path::new(p))))
            .collect())
    }

    /// Each pattern's existing matches and their inodes: a literal path must exist; a glob
    /// may match nothing yet.
    fn resolve_paths(&self, patterns: &[String]) -> Result<(Vec<PathBuf>, Vec<FileKey>), CoordinationError> {
        let mut paths = Vec::new();
        for p in patterns {
            if co::is_glob(p) {
                let matches = glob::glob(p).map_err(|e| invalid(format!("bad glob {p:?}: {e}")))?;
                paths.extend(matches.filter_map(Result::ok));
            } else {
                let path = PathBuf::from(p.trim_end_matches('/'));
                let path = if path.as_os_str().is_empty() { PathBuf::from("/") } else { path };
                if !path.exists() {
                    return Err(invalid(format!(
                        "path {p:?} does not exist: a path claim protects an existing file or directory"
                    )));
                }
                paths.push(path);
            }
        }
        paths.sort();
        paths.dedup();
        let keys = paths
            .iter()
            .map(|p| self.keys.key(p).map_err(|e| invalid(crate::core::error_chain(&e))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((paths, keys))
    }

    /// The write-denies `agent` (of this node) must have now: every live, kernel-enforced
    /// claim of its session (by name, on any node) held by another agent.
    fn denies_for(&self, claims: &[ClaimRecord], agent: &AgentView, now: u64) -> Vec<(FileKey, ClaimDeny)> {
        let mut out = Vec::new();
        for r in claims {
            let c = &r.claim;
            if c.enforcement != ClaimEnforcement::Kernel
                || c.expires_unix_ms <= now
                || (c.agent == agent.name && self.is_mine(r))
                || c.session != agent.session
            {
                continue;
            }
            for &(dev, ino) in &r.keys {
                out.push((FileKey { dev, ino }, ClaimDeny { claim_id: c.lease, holder_cgroup: 0 }));
            }
        }
        out.sort_by_key(|(k, d)| (k.dev, k.ino, d.claim_id));
        out
    }

    /// The claims with the inodes their paths name on this machine: another node's claim
    /// carries the inodes of its own machine, meaningless here, so its protected paths
    /// are resolved again (those that do not exist here protect nothing here).
    fn localized(&self, mut claims: Vec<ClaimRecord>) -> Vec<ClaimRecord> {
        for r in
            claims.iter_mut().filter(|r| !self.is_mine(r) && r.claim.enforcement == ClaimEnforcement::Kernel)
        {
            r.keys = r
                .claim
                .enforced_paths
                .iter()
                .filter_map(|p| self.keys.key(p).ok())
                .map(|k| (k.dev, k.ino))
                .collect();
        }
        claims
    }

    /// Brings every living agent's kernel denies in line with the live claims.
    pub(super) fn sync_kernel(&self) {
        self.sync_kernel_from(false)
    }

    /// With `all`, also agents the mirror has nothing for (their pinned entries may be
    /// stale: a daemon start).
    pub(super) fn sync_kernel_from(&self, all: bool) {
        if self.kernel_claims.is_err() {
            return;
        }
        let mut pushed = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(claims) = self.store.live_claims() else { return };
        let claims = self.localized(claims);
        let agents = self.agents.alive();
        let holders: HashMap<&str, u64> = agents.iter().map(|a| (a.name.as_str(), a.cgroup_id)).collect();
        let now = now_unix_ms();
        let mut seen = Vec::with_capacity(agents.len());
        for a in &agents {
            seen.push(a.cgroup_id);
            let mut want = self.denies_for(&claims, a, now);
            for (_, d) in &mut want {
                // The holder's cgroup when it is an agent of this node; 0 for another node's.
                let holder = claims
                    .iter()
                    .find(|r| r.claim.lease == d.claim_id && self.is_mine(r))
                    .map(|r| r.claim.agent.as_str());
                d.holder_cgroup = holder.and_then(|h| holders.get(h)).copied().unwrap_or(0);
            }
            let before = pushed.get(&a.cgroup_id);
            if !(all && before.is_none()) && before.map(Vec::as_slice).unwrap_or(&[]) == want.as_slice() {
                continue;
            }
            match self.kernel.set_claim_denies(a.cgroup_id, &want) {
                Ok(()) => {
                    pushed.insert(a.cgroup_id, want);
                }
                Err(e) => tracing::error!(agent = %a.name, error = %e, "claim denies not set in the kernel"),
            }
        }
        // Agents gone: the kernel dropped their entries with them.
        pushed.retain(|cg, _| seen.contains(cg));
    }

    /// Before a new agent's first process runs: the denies of its session's live claims.
    pub fn admit(&self, name: &str, cgroup_id: u64, session: Option<&str>) -> Result<(), CoordinationError> {
        if self.kernel_claims.is_err() {
            return Ok(());
        }
        let mut pushed = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        let claims = self.localized(self.store.live_claims().map_err(|e| store_failed(&e))?);
        let view =
            AgentView { name: name.into(), cgroup_id, session: session.map(str::to_owned), alive: true };
        let want = self.denies_for(&claims, &view, now_unix_ms());
        if want.is_empty() {
            return Ok(());
        }
        self.kernel.set_claim_denies(cgroup_id, &want).map_err(|e| {
            CoordinationError::new(Fault::Internal, format!("cannot set the session's claim denies: {e}"))
        })?;
        pushed.insert(cgroup_id, want);
        Ok(())
    }
}

/// Whether claim `c` covers `path`: inside one of its protected paths, or matched by one
/// of its globs.
/// Whether claim `c` covers `path` (a path it names, or one below it).
pub fn covers(c: &Claim, path: &Path) -> bool {
    c.enforced_paths.iter().any(|p| path.starts_with(p))
        || c.paths.iter().any(|p| {
            if co::is_glob(p) {
                glob::Pattern::new(p).is_ok_and(|g| g.matches_path(path))
                    || path.starts_with(co::literal_prefix(p)) && p.ends_with("**")
            } else {
                path.starts_with(p.trim_end_matches('/'))
            }
        })
}

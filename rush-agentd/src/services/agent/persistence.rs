//! Agents that outlive the daemon: written to the store before a request is answered,
//! re-adopted by the next daemon, restartable ones started again, state checked.

use super::lifecycle::Respawn;
use super::*;
use crate::core::Fault;
use crate::services::agent::AgentError;

/// The request that starts a stored restartable agent again, `now` in Unix ms: its
/// tokens as last stored (timed ones with what is left of their time), detached, never
/// unconfined. Err: why it must not start.
pub(super) fn restart_request(
    rec: &crate::adapters::store::RestartRecord,
    now: u64,
) -> Result<SpawnRequest, String> {
    let mut req = rec.request.clone();
    req.stdio = StdioMode::Log;
    req.restartable = true;
    req.allow_unconfined = false;
    req.allow = rec
        .grants
        .iter()
        .filter(|g| g.expires_unix_ms.is_none_or(|ms| ms > now))
        .map(|g| FileGrant {
            path: g.path.clone(),
            ops: g.ops,
            ttl_secs: g.expires_unix_ms.map(|ms| (ms - now).div_ceil(1000)),
        })
        .collect();
    if rec.files_confined && req.allow.is_empty() {
        return Err("all its file grants have expired or were revoked; without any it would run with \
                    its files unconfined"
            .into());
    }
    Ok(req)
}

impl AgentManager {
    /// Runs a store write; a failure is loud (log) but does not undo what the kernel
    /// already enforces: the agent stays confined, only its re-adoption would miss it.
    pub(super) fn persist(
        &self,
        what: &str,
        write: impl FnOnce(&crate::adapters::store::Store) -> Result<(), crate::adapters::store::StoreError>,
    ) {
        if let Some(store) = self.store.as_ref()
            && let Err(e) = write(store)
        {
            tracing::error!(error = %error_chain(&e), "state database: {what} not saved");
        }
    }

    /// Runs a store write that a request's acknowledgement depends on: its failure is the
    /// request's (ResourceExhausted when the disk is full), so nothing acknowledged is
    /// missing from the store after a crash.
    pub(super) fn save(
        &self,
        what: &str,
        write: impl FnOnce(&crate::adapters::store::Store) -> Result<(), crate::adapters::store::StoreError>,
    ) -> Result<(), AgentError> {
        let Some(store) = self.store.as_ref() else { return Ok(()) };
        self.retry_unsaved_revokes(store);
        write(store).map_err(|e| {
            tracing::error!(error = %error_chain(&e), "state database: {what} not saved");
            let kind = if e.is_full() { Fault::Exhausted } else { Fault::Internal };
            AgentError::new(kind, format!("{what} not saved: {}", error_chain(&e)))
        })
    }

    /// Deletes from the store the tokens a revoke took out of the kernel while the store
    /// refused writes.
    pub(super) fn retry_unsaved_revokes(&self, store: &crate::adapters::store::Store) {
        let unsaved = self.tokens.unsaved_revokes();
        if unsaved.is_empty() {
            return;
        }
        let ids: Vec<u64> = unsaved.iter().map(|(_, id)| *id).collect();
        let mut agents: Vec<&str> = unsaved.iter().map(|(a, _)| a.as_str()).collect();
        agents.dedup();
        // A restartable agent's record lists its grants too: rewritten from what it holds now.
        let records: Vec<_> = agents.iter().filter_map(|a| self.restart_record(a)).collect();
        let saved = store
            .delete_tokens(&ids)
            .and_then(|()| records.iter().try_for_each(|r| store.put_restartable(r)));
        if saved.is_ok() {
            tracing::info!(tokens = ids.len(), "revokes the store had refused are now saved");
            self.tokens.revokes_saved(&unsaved);
        }
    }

    /// How many revokes hold in the kernel but not yet in the store (`rush doctor`).
    pub fn unsaved_revokes(&self) -> usize {
        if let Some(store) = self.store.as_ref() {
            self.retry_unsaved_revokes(store);
        }
        self.tokens.unsaved_revokes().len()
    }

    /// Deletes revoked tokens from the store. The kernel has already dropped them, so a
    /// failure does not undo the revoke: the ids are kept for a retry, and the caller is
    /// told that a restart before the retry succeeds would grant them again.
    pub(super) fn save_revoke(&self, agent: &str, ids: &[u64]) -> Result<(), AgentError> {
        let restart = self.restart_record(agent);
        let write = |s: &crate::adapters::store::Store| {
            s.delete_tokens(ids)?;
            restart.as_ref().map_or(Ok(()), |r| s.put_restartable(r))
        };
        self.save("revoke", write).map_err(|e| {
            self.tokens.note_unsaved_revokes(agent, ids);
            AgentError::new(
                e.fault,
                format!(
                    "agent {agent:?} has lost the access in the kernel now, but the {}; the daemon retries \
                     the write before every other one, and a daemon restarted before it succeeds would \
                     grant the token again (free space in the state dir)",
                    e.message
                ),
            )
        })
    }

    /// Writes the agent (as registered now) and its tokens.
    pub(super) fn persist_agent(&self, name: &str) {
        if let Err(e) = self.save_agent(name) {
            tracing::error!(agent = %name, error = %e.message, "agent record not updated");
        }
    }

    pub(super) fn save_agent(&self, name: &str) -> Result<(), AgentError> {
        let record = self.registry().agents.get(name).map(|a| crate::adapters::store::AgentRecord {
            info: a.info.clone(),
            files_confined: a.files_confined,
            log_path: a.log_path.clone(),
        });
        let Some(record) = record else { return Ok(()) };
        let tokens = self.tokens.of_agent(record.info.cgroup_id);
        self.save("agent", |s| s.put_agent(&record).and_then(|()| s.put_tokens(&tokens)))
    }

    /// Writes what restarting a restartable agent needs: its request, who asked, and its
    /// file tokens as they are now (so a revoke is never undone by a restart).
    /// Part of the request it belongs to (spawn, grant, revoke): a refused write is that
    /// request's failure.
    pub(super) fn save_restart(&self, name: &str) -> Result<(), AgentError> {
        match self.restart_record(name) {
            Some(record) => self.save("restartable agent", |s| s.put_restartable(&record)),
            None => Ok(()),
        }
    }

    pub(super) fn restart_record(&self, name: &str) -> Option<crate::adapters::store::RestartRecord> {
        let found = self.registry().agents.get(name).and_then(|a| {
            let r = a.respawn.clone().filter(|r| r.req.restartable)?;
            Some((r, a.cgroup.id, a.info.pid, a.files_confined))
        });
        let (r, cgroup_id, pid, files_confined) = found?;
        let now = boot_time_ns();
        let grants = self
            .tokens
            .of_agent(cgroup_id)
            .into_iter()
            // Baseline and stdio tokens are made again at spawn; a conditional token's
            // worktree does not outlive the agent, so it is left out (less, never more).
            .filter(|t| matches!(t.origin, Origin::Spawn | Origin::Grant) && t.condition.is_none())
            .filter(|t| t.expires.is_none_or(|(ns, _)| ns > now))
            .map(|t| crate::adapters::store::RestartGrant {
                path: t.path,
                ops: t.ops,
                expires_unix_ms: t.expires.map(|(_, ms)| ms),
            })
            .collect();
        Some(crate::adapters::store::RestartRecord {
            request: r.req,
            uid: r.caller.uid,
            gid: r.caller.gid,
            groups: r.caller.groups,
            grants,
            files_confined,
            pid,
        })
    }

    /// The agent is not to be started again (killed by an operator, or done).
    pub(super) fn forget_restart(&self, name: &str) {
        if let Some(a) = self.registry().agents.get_mut(name) {
            a.info.restartable = false;
            if let Some(r) = a.respawn.as_mut() {
                r.req.restartable = false;
            }
        }
        self.persist("a restartable agent's removal", |s| s.delete_restartable(name));
    }

    /// Starts again every restartable agent that is not running (after adoption, once the
    /// sessions are open), each as it was spawned, its tokens resolved again from their
    /// paths. Fail closed: a path gone, its session gone, or enforcement this boot lacks
    /// and it is not started (audited `restart_failed`, tried again at the next start).
    /// Returns how many started.
    pub async fn restart_restartable(self: &Arc<Self>, session_exists: impl Fn(&str) -> bool) -> usize {
        let Some(store) = self.store.clone() else { return 0 };
        let reason = if store.from_earlier_boot() { RestartReason::Reboot } else { RestartReason::Gone };
        let records = match store.restartable() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "state database unreadable: no agent restarted");
                return 0;
            }
        };
        let mut started = 0;
        for rec in records {
            let name = rec.request.name.clone();
            let running =
                self.registry().agents.get(&name).is_some_and(|a| a.info.state == AgentState::Running);
            if running {
                continue;
            }
            let result = match restart_request(&rec, now_unix_ms()) {
                Err(why) => Err(why),
                Ok(req) => match req.session.as_deref().filter(|s| !session_exists(s)) {
                    Some(s) => Err(format!("its session {s:?} no longer exists")),
                    None => {
                        let caller = Caller {
                            uid: rec.uid,
                            gid: rec.gid,
                            pid: std::process::id() as i32,
                            groups: rec.groups.clone(),
                        };
                        self.spawn(req, &caller, None).await.map(|(info, _)| info.pid).map_err(|e| e.message)
                    }
                },
            };
            match result {
                Ok(new_pid) => {
                    tracing::info!(agent = %name, %reason, old_pid = rec.pid, new_pid, "restartable agent started again");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::AgentRestarted { reason, old_pid: rec.pid, new_pid },
                    );
                    started += 1;
                }
                Err(error) => {
                    tracing::error!(agent = %name, %reason, %error, "restartable agent not started again");
                    self.audit.set_agent_session(&name, rec.request.session.as_deref());
                    self.audit.record(Some(&name), AuditEvent::RestartFailed { reason, error });
                }
            }
        }
        started
    }

    /// The kernel moved a grant to a new inode: the stored tokens follow.
    pub fn persist_rekey(&self, cgroup_id: u64, from: crate::core::FileKey, to: crate::core::FileKey) {
        self.persist("a moved grant", |s| s.rekey(cgroup_id, from, to));
    }

    /// Takes back the agents a previous daemon left running (their cgroup still there, their
    /// first process alive in it): registered again, tokens restored from the store and
    /// rewritten into the kernel map, TTL timers rescheduled, exit watched. Returns how
    /// many; stored agents that are gone are forgotten (their exit status is unknown).
    pub fn adopt(self: &Arc<Self>) -> usize {
        let Some(store) = self.store.as_ref() else { return 0 };
        let records = match store.agents() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "state database unreadable: no agent re-adopted");
                return 0;
            }
        };
        if let Ok(max) = store.max_token_id() {
            self.tokens.skip_ids_to(max);
        }
        // Agents of an earlier boot died with it: their exit recorded (status unknown).
        for info in store.take_earlier_boot_agents() {
            self.audit.set_agent_session(&info.name, info.session.as_deref());
            self.audit.record(
                Some(&info.name),
                AuditEvent::Exit { pid: info.pid, status: ExitStatus { code: None, signal: None } },
            );
            tracing::info!(agent = %info.name, "an agent of the earlier boot is gone (exit status unknown)");
        }
        let existing = self.cgroups.existing();
        let stored_restarts = store.restartable().unwrap_or_default();
        let restart_of = |name: &str| {
            stored_restarts.iter().find(|r| r.request.name == name).map(|r| Respawn {
                req: r.request.clone(),
                caller: Caller { uid: r.uid, gid: r.gid, pid: 0, groups: r.groups.clone() },
            })
        };
        let mut adopted = 0;
        for rec in records {
            let name = rec.info.name.clone();
            let pid = rec.info.pid;
            self.audit.set_agent_session(&name, rec.info.session.as_deref());
            let cg = existing.iter().find(|c| c.id == rec.info.cgroup_id).cloned();
            // The pid must still be the agent's (not reused): alive (a zombie is not: its
            // agent died with the old daemon, its reaper has not come by yet), in its cgroup.
            let still_there = cg.as_ref().is_some_and(|cg| {
                proc_stat(pid as i32).is_some()
                    && crate::adapters::cgroup::process_cgroup_v2(pid as i32)
                        .is_some_and(|p| cg.v2_dir.ends_with(p.trim_start_matches('/')))
            });
            let pidfd = if still_there { pidfd_open(pid) } else { None };
            let (Some(cg), Some(pidfd)) = (cg, pidfd) else {
                self.persist("a gone agent's removal", |s| s.delete_agent(&name, rec.info.cgroup_id));
                self.audit.record(
                    Some(&name),
                    AuditEvent::Exit { pid, status: ExitStatus { code: None, signal: None } },
                );
                tracing::info!(agent = %name, "a stored agent is gone (exit status unknown)");
                continue;
            };
            let tokens = store.tokens(cg.id).unwrap_or_else(|e| {
                tracing::error!(agent = %name, error = %error_chain(&e), "its tokens are unreadable: it keeps what the kernel map holds");
                Vec::new()
            });
            // A daemon that died mid-revoke (or mid-check) left it frozen; no freeze of
            // this daemon is in force, so thaw, unless it is paused: then each reason takes
            // its freeze again (no window in which it runs).
            let pause = Pause::from_info(&rec.info.paused);
            if pause.freezes() == 0 {
                if let Err(e) = self.cgroups.thaw(&cg) {
                    tracing::warn!(agent = %name, error = %error_chain(&e), "adopted agent not thawed");
                }
            } else {
                for _ in 0..pause.freezes() {
                    if let Err(e) = self.cgroups.freeze(&cg, std::time::Duration::from_secs(1)) {
                        tracing::error!(agent = %name, error = %error_chain(&e), "paused agent not frozen again");
                    }
                }
            }
            let exec = self.exec_rule(rec.info.trust.as_deref());
            // Its meter again, on the port the agent was told about, with what it spent.
            let meter_port = rec.info.meter_url.as_deref().and_then(|u| u.rsplit(':').next()?.parse().ok());
            let meter = match (rec.info.budget.cost_micro_usd, meter_port) {
                (Some(limit), Some(port)) => match self.start_meter(&name, port, limit) {
                    Some(Ok(m)) => Some(m),
                    Some(Err(e)) => {
                        tracing::error!(agent = %name, error = %e.message, "meter not restarted: its API calls fail");
                        None
                    }
                    None => None,
                },
                _ => None,
            };
            let files = Files::of_info(&rec.info, rec.files_confined);
            let (restored, entries) = self.tokens.restore(tokens);
            if files == Files::BpfLsm
                && let Err(e) = self.write_entries(cg.id, entries)
            {
                tracing::error!(agent = %name, error = %e.message, "kernel entries not rebuilt");
            }
            let (tx, rx) = watch::channel(None);
            let mut info = rec.info;
            info.state = AgentState::Running;
            let budget = AgentBudget::adopted(&info, meter);
            let net = info.net.clone();
            {
                let mut reg = self.registry();
                reg.names.insert(cg.id, name.clone());
                reg.agents.insert(
                    name.clone(),
                    Agent {
                        info,
                        cgroup: cg.clone(),
                        exit: rx,
                        log_path: rec.log_path,
                        files_confined: rec.files_confined,
                        files,
                        // Only a restartable agent's request (env, cwd) is stored: any
                        // other is killed by a Landlock change.
                        respawn: restart_of(&name),
                        exec,
                        resolver: None,
                        kill_lock: Default::default(),
                    },
                );
                self.budgets.enter(&name, budget);
            }
            for t in restored {
                self.schedule_expiry(t);
            }
            if self.dns.is_some() {
                self.restart_resolver(name.clone(), cg.id, &net);
            }
            let mgr = Arc::clone(self);
            let child = Child { pid, pidfd };
            tokio::spawn(async move { mgr.watch_exit(name, cg, child, tx, None).await });
            adopted += 1;
        }
        adopted
    }

    /// Checks that the store, this daemon's memory and the kernel's grant map say the same
    /// of every running agent: its record and tokens in `state.db`, and (BPF LSM) each
    /// grant entry the tokens make, exact to the expiry. Returns what was checked and the
    /// disagreements found (`rush doctor`; the crash tests).
    pub fn check_state(&self) -> StateCheck {
        let mut check = StateCheck::default();
        let running: Vec<(String, u64, Files)> = self
            .registry()
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running)
            .map(|a| (a.info.name.clone(), a.cgroup.id, a.files))
            .collect();
        if let Some(store) = self.store.as_ref() {
            match store.agents() {
                Ok(stored) => {
                    for rec in &stored {
                        if !running.iter().any(|(n, id, _)| *n == rec.info.name && *id == rec.info.cgroup_id)
                        {
                            check
                                .problems
                                .push(format!("agent {:?} is in state.db but not running", rec.info.name));
                        }
                    }
                    for (name, _, _) in &running {
                        if !stored.iter().any(|r| r.info.name == *name) {
                            check.problems.push(format!("agent {name:?} runs but is not in state.db"));
                        }
                    }
                }
                Err(e) => check.problems.push(format!("agents unreadable: {}", error_chain(&e))),
            }
        }
        let fields = |t: &Token| (t.id, t.key, t.ops, t.expires, t.save_dir, t.mnt_id);
        // One pass over the kernel map for all agents (it may hold many thousands of entries).
        let kernel = running.iter().any(|(_, _, f)| *f == Files::BpfLsm).then(|| self.kernel.file_grants());
        for (name, cgroup_id, files) in running {
            check.agents += 1;
            let mut held: Vec<_> = self.tokens.of_agent(cgroup_id).iter().map(fields).collect();
            held.sort_by_key(|f| f.0);
            check.tokens += held.len();
            if let Some(store) = self.store.as_ref() {
                match store.tokens(cgroup_id) {
                    Ok(stored) => {
                        let stored: Vec<_> = stored.iter().map(fields).collect();
                        for f in held.iter().filter(|f| !stored.contains(f)) {
                            check
                                .problems
                                .push(format!("agent {name:?}: token {} is not in state.db as held", f.0));
                        }
                        for f in stored.iter().filter(|f| !held.contains(f)) {
                            check.problems.push(format!(
                                "agent {name:?}: state.db has token {} the daemon does not hold",
                                f.0
                            ));
                        }
                    }
                    Err(e) => {
                        check.problems.push(format!("agent {name:?}: tokens unreadable: {}", error_chain(&e)))
                    }
                }
            }
            if files != Files::BpfLsm {
                continue;
            }
            let want: HashMap<_, _> = self.tokens.entries_of(cgroup_id).into_iter().collect();
            let Some(read) = &kernel else { continue };
            let have: HashMap<_, _> = match read {
                Ok(all) => all.get(&cgroup_id).into_iter().flatten().copied().collect(),
                Err(e) => {
                    check.problems.push(format!("agent {name:?}: grant map unreadable: {}", error_chain(&e)));
                    continue;
                }
            };
            check.kernel_entries += have.len();
            for (key, entry) in &want {
                match have.get(key) {
                    None => check.problems.push(format!("agent {name:?}: no kernel entry for inode {}:{}", key.dev, key.ino)),
                    Some(k) if k != entry => check.problems.push(format!(
                        "agent {name:?}: kernel entry for inode {}:{} differs from its tokens ({k:?} != {entry:?})",
                        key.dev, key.ino
                    )),
                    Some(_) => {}
                }
            }
            for key in have.keys().filter(|k| !want.contains_key(k)) {
                check.problems.push(format!(
                    "agent {name:?}: kernel entry for inode {}:{} that no token makes",
                    key.dev, key.ino
                ));
            }
        }
        check
    }

    /// Kills and removes agent cgroups no stored agent accounts for: a spawn a crash cut
    /// before its record was written, or agents a damaged store lost. Their processes were
    /// confined by the pinned programs until now; with no record, nothing would enforce a
    /// later revoke, TTL or budget of theirs correctly, so they end (fail closed).
    pub fn reap_orphans(&self) {
        let adopted: HashSet<u64> = self.registry().names.keys().copied().collect();
        for cg in self.cgroups.existing().into_iter().filter(|cg| !adopted.contains(&cg.id)) {
            let n = self.cgroups.kill_all(&cg).unwrap_or(0);
            tracing::warn!(agent = %cg.name, processes = n, "killed an agent cgroup the state database does not know (fail closed)");
            match self.cgroups.remove(&cg) {
                Ok(()) => {
                    let _ = self.kernel.remove_agent(cg.id);
                }
                Err(e) => {
                    tracing::error!(agent = %cg.name, error = %e, "orphan cgroup not removed; its kernel policy stays")
                }
            }
            self.audit.record(Some(&cg.name), AuditEvent::Kill { caller_uid: 0, processes_killed: n });
        }
    }
}

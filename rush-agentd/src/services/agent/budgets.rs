//! Agents' resource budgets as the agents service drives them: usage observed, a spent
//! budget freezing the agent (a pause), resumes, OOM kills and refused forks audited, the
//! cost meter. The state (pause reasons, counters audited, meters, spend stored) is the
//! budgets service's ([`BudgetBook`]), asked by name.

use super::lifecycle::net_budget;
use super::*;
use crate::core::Fault;
use crate::services::agent::AgentError;

impl AgentManager {
    /// Freezes the agent until `resume`.
    pub async fn pause(&self, name: &str, caller: &Caller) -> Result<AgentInfo, AgentError> {
        self.hold(name, PauseReason::Operator, Some(caller.uid)).await?;
        self.status(name)
    }

    /// Freezes the running agent for `reason`, once: a reason already holding it changes
    /// nothing. Audited as `paused`, kept in its stored info.
    async fn hold(&self, name: &str, reason: PauseReason, caller_uid: Option<u32>) -> Result<(), AgentError> {
        let cg = self.running(name)?;
        if self.budgets.pause(name).has(reason) {
            return Ok(());
        }
        self.freeze_for(name, &cg).await?;
        self.set_pause(name, |p| p.set(reason, true));
        self.audit.record(Some(name), AuditEvent::Paused { caller_uid, reason });
        self.persist_agent(name);
        Ok(())
    }

    /// Thaws the agent, first raising its budget by `raise`. Refused, with the agent left
    /// frozen, if its CPU budget stays spent.
    pub async fn resume(
        &self,
        name: &str,
        raise: Option<Budget>,
        caller: &Caller,
    ) -> Result<AgentInfo, AgentError> {
        let cg = self.running(name)?;
        let old = self.registry().agents.get(name).ok_or_else(|| not_found(name))?.info.budget;
        let (pause, ledger) = (self.budgets.pause(name), self.budgets.ledger(name));
        let budget = raise.map_or(old, |r| old.overridden_by(&r));
        if budget.cost_micro_usd.is_some() && old.cost_micro_usd.is_none() {
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} was spawned without a cost budget: its API calls do not go through a meter"
                ),
            ));
        }
        let observed = self.observe(&cg, ledger.clone());
        if crate::services::budget::cpu_spent(&budget, &observed) {
            let used = crate::services::budget::cpu_ms(&observed).unwrap_or(0);
            return Err(AgentError::new(
                Fault::Invalid,
                format!(
                    "agent {name:?} has used {:.1}s of CPU time against a budget of {}: it stays frozen; \
                     resume it with a higher one, e.g. --budget cpu:{}",
                    used as f64 / 1000.0,
                    rush_proto::budget::format_cpu_ms(budget.cpu_ms.unwrap_or(0)),
                    rush_proto::budget::format_cpu_ms((used * 2).max(1000).div_ceil(1000) * 1000)
                ),
            ));
        }
        if budget != old {
            let control = Arc::clone(self.budgets.control());
            let cg2 = cg.clone();
            tokio::task::spawn_blocking(move || control.apply(&cg2, &budget))
                .await
                .map_err(|e| AgentError::new(Fault::Internal, e.to_string()))?
                .map_err(|e| AgentError::new(Fault::Unsupported, error_chain(&e)))?;
        }
        if let (Some(l), Some(limit)) = (&ledger, budget.cost_micro_usd) {
            l.set_limit(limit);
        }
        if (budget.net_bytes, budget.api_calls) != (old.net_bytes, old.api_calls) {
            self.kernel
                .set_net_budget(cg.id, net_budget(&budget))
                .map_err(|e| AgentError::new(Fault::Internal, format!("net budget of {name}: {e}")))?;
        }
        for _ in 0..pause.freezes() {
            self.cgroups
                .thaw(&cg)
                .map_err(|e| AgentError::new(Fault::Internal, format!("thaw {name}: {}", error_chain(&e))))?;
        }
        if let Some(a) = self.registry().agents.get_mut(name) {
            a.info.budget = budget;
        }
        self.set_pause(name, |p| *p = Pause::default());
        self.audit.record(Some(name), AuditEvent::Resumed { caller_uid: caller.uid, budget });
        self.persist_agent(name);
        self.status(name)
    }

    /// Freezes the agent while a request it made with `--freeze` waits for a person (one
    /// hold, however many such requests). `rush agent resume` ends it too.
    pub async fn hold_for_approval(&self, name: &str) -> Result<(), AgentError> {
        self.hold(name, PauseReason::Approval, None).await
    }

    /// Ends [`Self::hold_for_approval`]'s freeze, if it still holds.
    pub fn release_approval_hold(&self, name: &str) -> Result<(), AgentError> {
        let cg = self.running(name)?;
        if !self.budgets.pause(name).approval {
            return Ok(());
        }
        self.cgroups
            .thaw(&cg)
            .map_err(|e| AgentError::new(Fault::Internal, format!("thaw {name}: {}", error_chain(&e))))?;
        self.set_pause(name, |p| p.approval = false);
        self.persist_agent(name);
        Ok(())
    }

    /// Running agents of session `session`.
    pub fn in_session(&self, session: &str) -> Vec<String> {
        let reg = self.registry();
        let mut names: Vec<String> = reg
            .agents
            .values()
            .filter(|a| a.info.state == AgentState::Running && a.info.session.as_deref() == Some(session))
            .map(|a| a.info.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Freezes the running agent for a workspace operation; pair with [`Self::thaw`]. Each
    /// freeze is counted, so an operator pause or a budget freeze held meanwhile stays.
    pub async fn freeze(&self, name: &str) -> Result<(), AgentError> {
        let cg = self.running(name)?;
        self.freeze_for(name, &cg).await
    }

    pub fn thaw(&self, name: &str) -> Result<(), AgentError> {
        let cg = self.running(name)?;
        self.cgroups
            .thaw(&cg)
            .map_err(|e| AgentError::new(Fault::Internal, format!("thaw {name}: {}", error_chain(&e))))
    }

    /// The cgroup of the running agent `name`.
    pub(super) fn running(&self, name: &str) -> Result<AgentCgroup, AgentError> {
        let reg = self.registry();
        let a = reg.agents.get(name).ok_or_else(|| not_found(name))?;
        if a.info.state != AgentState::Running {
            return Err(AgentError::new(Fault::Invalid, format!("agent {name:?} has exited")));
        }
        Ok(a.cgroup.clone())
    }

    pub(super) async fn freeze_for(&self, name: &str, cg: &AgentCgroup) -> Result<(), AgentError> {
        let cgroups = Arc::clone(&self.cgroups);
        let cg = cg.clone();
        let frozen =
            tokio::task::spawn_blocking(move || cgroups.freeze(&cg, std::time::Duration::from_secs(5)))
                .await
                .map_err(|e| AgentError::new(Fault::Internal, e.to_string()))?
                .map_err(|e| {
                    AgentError::new(Fault::Internal, format!("freeze {name}: {}", error_chain(&e)))
                })?;
        if !frozen {
            tracing::warn!(agent = %name, "still freezing after 5 s (a process in uninterruptible sleep)");
        }
        Ok(())
    }

    /// Changes why `name` is frozen, in the budgets service and in the agent's info
    /// (under the registry lock: two changes cannot land out of order).
    pub(super) fn set_pause(&self, name: &str, change: impl FnOnce(&mut Pause)) {
        let mut reg = self.registry();
        let reasons = self.budgets.set_pause(name, change);
        if let Some(a) = reg.agents.get_mut(name) {
            a.info.paused = reasons;
        }
    }

    /// One round of budget enforcement (the daemon runs it every `budget.poll_ms`): agents
    /// past their CPU time are frozen; new OOM kills and refused forks are audited.
    pub async fn check_budgets(&self) {
        let agents: Vec<(String, AgentCgroup, Budget)> = self
            .registry()
            .agents
            .iter()
            .filter(|(_, a)| a.info.state == AgentState::Running)
            .map(|(n, a)| (n.clone(), a.cgroup.clone(), a.info.budget))
            .collect();
        for (name, cg, budget) in agents {
            let (pause, ledger) = (self.budgets.pause(&name), self.budgets.ledger(&name));
            // Only what this round acts on: cpu time, the cgroup counters and spend (the
            // kernel's net counters enforce themselves; status reads them).
            let observed = Observed {
                cgroup: self.budgets.control().usage(&cg),
                cost_micro_usd: ledger.map(|l| l.used_micro_usd()),
                ..Default::default()
            };
            // Spend survives a daemon restart: written when it changed.
            if observed.cost_micro_usd.is_some_and(|cost| self.budgets.cost_changed(&name, cost)) {
                if let Some(a) = self.registry().agents.get_mut(&name) {
                    a.info.usage = crate::services::budget::usage_lines(&budget, &observed);
                }
                self.persist_agent(&name);
            }
            let u = observed.cgroup;
            if !pause.cpu_budget && crate::services::budget::cpu_spent(&budget, &observed) {
                if let Err(e) = self.freeze_for(&name, &cg).await {
                    tracing::error!(agent = %name, error = %e.message, "cpu budget spent but the agent is not frozen");
                } else {
                    self.set_pause(&name, |p| p.cpu_budget = true);
                    let used = crate::services::budget::cpu_ms(&observed).unwrap_or(0);
                    let limit = budget.cpu_ms.unwrap_or(0);
                    tracing::warn!(agent = %name, used_ms = used, limit_ms = limit, "cpu budget spent: agent frozen; `rush agent resume {name} --budget cpu:...` continues it");
                    self.audit.record(
                        Some(&name),
                        AuditEvent::BudgetExceeded {
                            resource: BudgetResource::Cpu,
                            used,
                            limit,
                            action: "frozen until resumed with a raised budget".into(),
                        },
                    );
                    self.persist_agent(&name);
                }
            }
            self.audit_counters(&name, &budget, &u);
        }
    }

    /// Audits OOM kills and refused forks counted since the last report (once each: the
    /// budgets service takes them as reported). Also run when the agent's first process
    /// exits, before its cgroup (and counters) go: an OOM kill is often what ended it.
    pub(super) fn audit_counters(
        &self,
        name: &str,
        budget: &Budget,
        u: &crate::services::budget::CgroupUsage,
    ) {
        let new = self.budgets.new_counts(name, u);
        if let Some(count) = new.oom_kills {
            let limit_bytes = budget.mem_bytes.unwrap_or(0);
            self.audit.record(Some(name), AuditEvent::OomKill { count, limit_bytes });
        }
        if let Some(count) = new.fork_refusals {
            let limit = budget.pids.unwrap_or(0);
            self.audit.record(Some(name), AuditEvent::ForkRefused { count, limit });
        }
    }

    /// Starts a metering proxy for the agent; None if this daemon has none configured.
    pub(super) fn start_meter(
        &self,
        name: &str,
        port: u16,
        limit: u64,
    ) -> Option<Result<crate::services::meter::AgentMeter, AgentError>> {
        let setup = self.budgets.meter_setup()?;
        let started = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(crate::services::meter::start_on(
                setup.config.clone(),
                name.to_owned(),
                port,
                limit,
                setup.events.clone(),
            ))
        });
        Some(started.map_err(|e| {
            AgentError::new(Fault::Unsupported, format!("refusing the cost budget: {}", error_chain(&e)))
        }))
    }

    /// Everything counted for an agent now.
    pub(super) fn observe(
        &self,
        cg: &AgentCgroup,
        ledger: Option<Arc<crate::services::meter::Ledger>>,
    ) -> Observed {
        let net = self.kernel.net_usage(cg.id).ok().flatten();
        Observed {
            cgroup: self.budgets.control().usage(cg),
            net_bytes: net.map(|n| n.tx_bytes + n.rx_bytes),
            api_calls: net.map(|n| n.api_calls),
            net_dropped: net.map_or(0, |n| n.dropped_packets),
            api_refused: net.map_or(0, |n| n.refused_calls),
            cost_micro_usd: ledger.map(|l| l.used_micro_usd()),
        }
    }
}

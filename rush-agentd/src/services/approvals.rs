//! The human attention queue: requests for a person's decision, prioritised, batched,
//! routed to a channel, timed out by policy.
//!
//! An agent asks (as itself) and goes on; the daemon asks too (a kernel file denial of an
//! agent whose trust level says so). Every request and decision is a row in the state
//! store, committed before anyone hears of it; a decision is one compare-and-set on
//! `state = 'pending'`, so a request is decided at most once, whoever races (the CLI, a
//! webhook button, an email link, its deadline). What an approval does (a token granted, a
//! budget raised, a frozen agent thawed) happens after the commit and is marked done; a
//! crash in between is finished when the daemon starts again.
//!
//! Priorities age: a request waiting `aging` is raised a level, and one from an agent
//! holding a claim another agent waits on is raised to high (priority inversion). Both are
//! computed when asked, from the clock, never stored.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rush_proto::approval::{
    Approval, ApprovalBatch, ApprovalDetail, ApprovalOrigin, ApprovalRequest, ApprovalState, ApprovalTarget,
    Channel, DecideRequest, DecidedVia, Decision, OnTimeout, Priority, QueueChange, QueueSettings,
};
use rush_proto::{AuditEvent, Budget, Ops};
use tokio::sync::{Notify, watch};

use crate::adapters::store::{Store, StoreError};
use crate::core::{Asker, Fault, error_chain, now_unix_ms};
use crate::services::audit::AuditLog;

pub mod batching;
mod channels;
pub mod settings;
#[cfg(test)]
mod tests;

pub use channels::spawn_channels;
pub use settings::ApprovalsConfig;

crate::service_error!(
    /// An approvals request's failure: its fault and one line naming the input.
    ApprovalError
);

fn invalid(message: impl Into<String>) -> ApprovalError {
    ApprovalError::new(Fault::Invalid, message)
}

fn saved(e: StoreError) -> ApprovalError {
    let fault = if e.is_full() { Fault::Exhausted } else { Fault::Internal };
    ApprovalError::new(fault, format!("approval not saved: {}", error_chain(&e)))
}

/// Who decides: an operator at the CLI, or a channel's verified callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    /// `uid:N`, a webhook user, an email address.
    pub by: String,
    pub via: DecidedVia,
    /// The uid grants are made as (the operator's, or root's for channels).
    pub uid: u32,
}

/// Risk gating's judgement of a command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    pub score: u32,
    pub tags: Vec<String>,
    /// Deletes, overwrites or rewrites history: the request's class is `destructive`.
    pub destructive: bool,
}

/// An agent as the queue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    pub session: Option<String>,
    pub trust: Option<String>,
    pub alive: bool,
}

pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What the queue needs of the agents service (implemented at the edge, handles.rs).
pub trait ApprovalAgents: Send + Sync {
    fn agent(&self, name: &str) -> Option<AgentFacts>;
    /// Whether a token could be granted on `path` (it exists); Err says why not.
    fn grantable(&self, path: &Path) -> Result<(), String>;
    /// Grants `ops` on `path` for `ttl_secs`; one line saying what it did.
    fn grant<'a>(
        &'a self,
        agent: &'a str,
        path: &'a Path,
        ops: Ops,
        ttl_secs: u64,
        uid: u32,
    ) -> Pending<'a, String>;
    /// Sets the limits in `raise` and thaws a budget-frozen agent; one line.
    fn raise_budget<'a>(&'a self, agent: &'a str, raise: Budget, uid: u32) -> Pending<'a, String>;
    /// Freezes the agent until [`ApprovalAgents::release_hold`] (`--freeze`).
    fn hold<'a>(&'a self, agent: &'a str) -> Pending<'a, ()>;
    fn release_hold(&self, agent: &str) -> Result<(), String>;
}

/// What the queue asks of coordination (implemented at the edge): the task of a claim
/// `agent` holds that another agent waits on.
pub trait ClaimWaits: Send + Sync {
    fn contended_claim(&self, agent: &str) -> Option<String>;
}

pub struct ApprovalsSetup {
    pub store: Arc<Store>,
    pub agents: Arc<dyn ApprovalAgents>,
    pub claims: Option<Arc<dyn ClaimWaits>>,
    pub audit: Arc<AuditLog>,
    pub config: ApprovalsConfig,
}

pub struct Approvals {
    store: Arc<Store>,
    agents: Arc<dyn ApprovalAgents>,
    claims: Option<Arc<dyn ClaimWaits>>,
    audit: Arc<AuditLog>,
    config: ApprovalsConfig,
    /// The config's settings (checked when the daemon started).
    base: QueueSettings,
    deny_to_ask_per_minute: u32,
    stored: Mutex<settings::StoredQueue>,
    /// Held across a request's checks and its insert, and across a decision's read of the
    /// batches and its writes: what `rush approvals` showed is what `--batch` decides.
    lock: Mutex<()>,
    /// Bumped on every decision: what waiters wait on.
    changed: watch::Sender<u64>,
    /// Woken on every new request: the delivery loop.
    pub(crate) arrived: Notify,
    /// Per agent: (minute started, requests made from denials in it).
    deny_rate: Mutex<HashMap<String, (u64, u32)>>,
}

impl Approvals {
    /// The queue; Err names the config key that is wrong.
    pub fn new(setup: ApprovalsSetup) -> Result<Approvals, String> {
        let base = setup.config.check()?;
        let stored = setup.store.queue_overrides::<settings::StoredQueue>().unwrap_or_else(|e| {
            tracing::warn!(error = %error_chain(&e), "stored approval queue settings unreadable: using config.toml's");
            Default::default()
        });
        Ok(Approvals {
            store: setup.store,
            agents: setup.agents,
            claims: setup.claims,
            audit: setup.audit,
            config: setup.config,
            base: base.settings,
            deny_to_ask_per_minute: base.deny_to_ask_per_minute,
            stored: Mutex::new(stored),
            lock: Mutex::new(()),
            changed: watch::channel(0).0,
            arrived: Notify::new(),
            deny_rate: Mutex::default(),
        })
    }

    pub fn config(&self) -> &ApprovalsConfig {
        &self.config
    }

    /// The settings in effect.
    pub fn settings(&self) -> QueueSettings {
        settings::effective(&self.base, &self.stored.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The aging step in effect, without building the whole settings (asked per request
    /// listed).
    fn aging_secs(&self) -> u64 {
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).aging_secs.unwrap_or(self.base.aging_secs)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent `asker` acts for: an agent is itself; an operator must name one.
    fn asking_agent(&self, asker: Asker<'_>, named: Option<&str>) -> Result<String, ApprovalError> {
        match (asker, named) {
            (Asker::Agent { name }, None) => Ok(name.to_owned()),
            (Asker::Agent { name }, Some(n)) if n == name => Ok(name.to_owned()),
            (Asker::Agent { name }, Some(n)) => Err(ApprovalError::new(
                Fault::Forbidden,
                format!("agent {name:?} may not act for agent {n:?}"),
            )),
            (Asker::Operator { .. }, Some(n)) => Ok(n.to_owned()),
            (Asker::Operator { .. }, None) => {
                Err(ApprovalError::new(Fault::Malformed, "agent: required (the agent the operator asks for)"))
            }
        }
    }

    /// Makes a pending request; answered at once (non-blocking for the asker). With
    /// `freeze`, the agent is frozen before the answer. `risk`: risk gating's score of a
    /// command request (the daemon's, never the asker's).
    pub async fn request(
        &self,
        asker: Asker<'_>,
        req: ApprovalRequest,
        risk: Option<Risk>,
    ) -> Result<Approval, ApprovalError> {
        let origin = match asker {
            Asker::Agent { .. } => ApprovalOrigin::Agent,
            Asker::Operator { .. } => ApprovalOrigin::Operator,
        };
        let agent = self.asking_agent(asker, req.agent.as_deref())?;
        // An agent asking in its first instants may be in its cgroup (which named it) before
        // the agents service lists it running: give the spawn a moment to finish.
        if let Asker::Agent { .. } = asker {
            for _ in 0..100 {
                if self.agents.agent(&agent).is_some_and(|a| a.alive) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let approval = self.create(&agent, req, origin, risk)?;
        if approval.freeze
            && let Err(e) = self.agents.hold(&agent).await
        {
            tracing::warn!(%agent, error = %e, "could not freeze the agent while it waits");
        }
        Ok(approval)
    }

    fn create(
        &self,
        agent: &str,
        req: ApprovalRequest,
        origin: ApprovalOrigin,
        risk: Option<Risk>,
    ) -> Result<Approval, ApprovalError> {
        rush_proto::approval::check_request(&req).map_err(invalid)?;
        // A token names an existing file or directory: refused now, not approved and then
        // impossible to grant.
        if let ApprovalDetail::Capability { path, .. } = &req.detail {
            self.agents
                .grantable(path)
                .map_err(|why| ApprovalError::new(Fault::NotFound, format!("detail.path: {why}")))?;
        }
        let facts = self
            .agents
            .agent(agent)
            .filter(|a| a.alive)
            .ok_or_else(|| ApprovalError::new(Fault::NotFound, format!("no running agent {agent:?}")))?;
        let settings = self.settings();
        // Risk gating's tags make a command destructive unless the asker said otherwise.
        let class = req.class.unwrap_or_else(|| match &risk {
            Some(r) if r.destructive => rush_proto::approval::ActionClass::Destructive,
            _ => rush_proto::approval::ActionClass::of_kind(req.detail.kind()),
        });
        let policy = settings.classes.iter().find(|c| c.class == Some(class)).cloned().unwrap_or_default();
        // The class's policy wins over what the asker wants: an agent cannot mark
        // everything high, or give itself a week.
        let priority = policy.priority.or(req.priority).unwrap_or(Priority::Medium);
        let channel = policy.channel.clone().unwrap_or_else(|| route(&settings, priority));
        self.config.check_channel(&channel).map_err(|e| ApprovalError::new(Fault::Unsupported, e))?;
        let timeout =
            policy.timeout_secs.or(req.timeout_secs).unwrap_or(rush_proto::approval::DEFAULT_TIMEOUT_SECS);
        let on_timeout = policy.on_timeout.or(req.on_timeout).unwrap_or(OnTimeout::Reject);
        let now = now_unix_ms();
        let _g = self.guard();
        let pending = self.store.pending_approvals().map_err(saved)?;
        if pending.iter().filter(|a| a.agent == agent).count() >= rush_proto::approval::MAX_PENDING_PER_AGENT
        {
            return Err(ApprovalError::new(
                Fault::Exhausted,
                format!(
                    "agent {agent:?} has {} requests pending: wait for decisions (or cancel some) before asking again",
                    rush_proto::approval::MAX_PENDING_PER_AGENT
                ),
            ));
        }
        let approval = Approval {
            id: 0,
            agent: agent.to_owned(),
            session: facts.session,
            origin,
            batch_key: batching::batch_key(&req.detail, &req.action),
            action: req.action,
            detail: req.detail,
            class,
            priority,
            effective_priority: priority,
            raised_because: None,
            risk_score: risk.as_ref().map(|r| r.score),
            tags: risk.map(|r| r.tags).unwrap_or_default(),
            channel,
            created_unix_ms: now,
            deadline_unix_ms: now + timeout * 1000,
            on_timeout,
            escalated: false,
            freeze: req.freeze,
            delivered_unix_ms: None,
            state: ApprovalState::Pending,
            decision: None,
        };
        let approval = self.store.add_approval(approval).map_err(saved)?;
        drop(_g);
        self.audit.record(
            Some(agent),
            AuditEvent::ApprovalRequested {
                id: approval.id,
                action: approval.action.clone(),
                approval_kind: approval.kind(),
                priority: approval.priority,
                channel: approval.channel.clone(),
                origin,
                batch_key: approval.batch_key.clone(),
                deadline_unix_ms: approval.deadline_unix_ms,
            },
        );
        self.arrived.notify_one();
        Ok(self.with_priority(approval, now))
    }

    /// A kernel file denial of `agent` (`op` on `path`): a pending capability request, if
    /// its trust level turns denials into requests, none for that path and ops is pending,
    /// and its per-minute allowance is not spent.
    /// Called for every file denial the event pump admits: the trust levels are config.toml's
    /// only (nothing stored overrides them), so most calls end at the first check.
    pub fn ask_from_denial(&self, agent: &str, path: &str, ops: Ops) -> Option<Approval> {
        if self.base.deny_to_ask.is_empty() || !path.starts_with('/') || ops.0 == 0 {
            return None;
        }
        let facts = self.agents.agent(agent)?;
        let trust = facts.trust.as_deref()?;
        if !self.base.deny_to_ask.iter().any(|t| t == trust) {
            return None;
        }
        let mut path = PathBuf::from(path);
        // A refused create names a file that is not there: ask for its directory.
        if self.agents.grantable(&path).is_err() {
            path = path.parent().map(Path::to_path_buf)?;
        }
        let detail = ApprovalDetail::Capability { path: path.clone(), ops };
        let already =
            self.store.pending_approvals().ok()?.into_iter().any(|a| a.agent == agent && a.detail == detail);
        if already {
            return None;
        }
        {
            let minute = now_unix_ms() / 60_000;
            let mut rate = self.deny_rate.lock().unwrap_or_else(|p| p.into_inner());
            let entry = rate.entry(agent.to_owned()).or_insert((minute, 0));
            if entry.0 != minute {
                *entry = (minute, 0);
            }
            if entry.1 >= self.deny_to_ask_per_minute {
                return None;
            }
            entry.1 += 1;
        }
        let req = ApprovalRequest {
            agent: Some(agent.to_owned()),
            action: format!("{agent} wants {ops} on {}", path.display()),
            detail,
            priority: None,
            timeout_secs: None,
            on_timeout: None,
            class: None,
            freeze: false,
        };
        match self.create(agent, req, ApprovalOrigin::DenyToAsk, None) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(%agent, error = %e.message, "a denial could not become a request");
                None
            }
        }
    }

    /// `a` with its effective priority now: aged, escalated, or raised for a contended claim.
    fn with_priority(&self, mut a: Approval, now: u64) -> Approval {
        let mut p = a.priority;
        let mut why = None;
        if a.state == ApprovalState::Pending {
            let aging = self.aging_secs();
            if aging > 0 {
                let levels = now.saturating_sub(a.created_unix_ms) / (aging * 1000);
                for _ in 0..levels.min(2) {
                    p = p.raised();
                }
                if p > a.priority {
                    why = Some(format!(
                        "waiting over {}",
                        rush_proto::budget::format_cpu_ms(levels * aging * 1000)
                    ));
                }
            }
            if a.escalated && p < Priority::High {
                p = Priority::High;
                why = Some("escalated at its deadline".into());
            }
            if p < Priority::High
                && let Some(task) = self.claims.as_ref().and_then(|c| c.contended_claim(&a.agent))
            {
                p = Priority::High;
                why = Some(format!("its agent holds claim {task:?} another agent waits on"));
            }
        }
        a.effective_priority = p;
        a.raised_because = why;
        a
    }

    /// Pending requests (with `all`, the last 1,000 of any state), and their batches.
    pub fn list(
        &self,
        asker: Asker<'_>,
        agent: Option<&str>,
        all: bool,
    ) -> Result<(Vec<Approval>, Vec<ApprovalBatch>), ApprovalError> {
        let only = match asker {
            Asker::Agent { .. } => Some(self.asking_agent(asker, agent)?),
            Asker::Operator { .. } => agent.map(str::to_owned),
        };
        let pending = self.pending_now()?;
        let batches: Vec<ApprovalBatch> = self
            .batches(&pending)
            .into_iter()
            .filter(|b| b.ids.len() > 1)
            .filter(|b| {
                only.as_deref().is_none_or(|o| {
                    b.ids.iter().any(|id| pending.iter().any(|a| a.id == *id && a.agent == o))
                })
            })
            .collect();
        let mut list = if all {
            let now = now_unix_ms();
            self.store
                .all_approvals(1000)
                .map_err(saved)?
                .into_iter()
                .map(|a| self.with_priority(a, now))
                .collect()
        } else {
            pending
        };
        list.retain(|a| only.as_deref().is_none_or(|o| a.agent == o));
        Ok((list, batches))
    }

    /// The pending requests, with their effective priorities now.
    fn pending_now(&self) -> Result<Vec<Approval>, ApprovalError> {
        let now = now_unix_ms();
        Ok(self
            .store
            .pending_approvals()
            .map_err(saved)?
            .into_iter()
            .map(|a| self.with_priority(a, now))
            .collect())
    }

    /// The batches pending requests fold into (every group, singles included).
    fn batches(&self, pending: &[Approval]) -> Vec<ApprovalBatch> {
        let s = self.settings();
        batching::group(pending, |a| window_ms(&s, a), s.similarity)
            .into_iter()
            .map(|g| ApprovalBatch {
                key: g.key,
                ids: g.members.iter().map(|&i| pending[i].id).collect(),
                priority: g
                    .members
                    .iter()
                    .map(|&i| pending[i].effective_priority)
                    .max()
                    .unwrap_or(Priority::Low),
                deadline_unix_ms: g.members.iter().map(|&i| pending[i].deadline_unix_ms).min().unwrap_or(0),
            })
            .collect()
    }

    /// One request; an agent sees only its own (and its decision is then marked seen).
    pub fn get(&self, asker: Asker<'_>, agent: Option<&str>, id: u64) -> Result<Approval, ApprovalError> {
        let rec = self.store.approval(id).map_err(saved)?;
        let not_found = || ApprovalError::new(Fault::NotFound, format!("no approval request {id}"));
        let rec = rec.ok_or_else(not_found)?;
        if let Asker::Agent { .. } = asker {
            let me = self.asking_agent(asker, agent)?;
            if rec.approval.agent != me {
                return Err(not_found());
            }
            if rec.approval.state != ApprovalState::Pending && !rec.seen {
                let _ = self.store.mark_seen([id]);
            }
        }
        Ok(self.with_priority(rec.approval, now_unix_ms()))
    }

    /// [`Self::get`], waiting up to `wait_secs` for it to be decided.
    pub async fn wait(
        &self,
        asker: Asker<'_>,
        agent: Option<&str>,
        id: u64,
        wait_secs: Option<u64>,
    ) -> Result<Approval, ApprovalError> {
        let wait = wait_secs.unwrap_or(0).min(rush_proto::approval::MAX_WAIT_SECS);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let a = self.get(asker, agent, id)?;
            // Approved is answered once its effect is done (the token granted): an agent
            // told "approved" may use the grant at once.
            let settled = match a.state {
                ApprovalState::Pending => false,
                ApprovalState::Approved => a.decision.as_ref().is_some_and(|d| d.effect.is_some()),
                _ => true,
            };
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(a);
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return self.get(asker, agent, id);
            }
        }
    }

    /// The agent's decided requests it has not been shown (for its inbox), marked shown.
    pub fn unseen_decisions(&self, agent: &str) -> Vec<Approval> {
        self.store.take_unseen_decisions(agent).unwrap_or_else(|e| {
            tracing::warn!(%agent, error = %error_chain(&e), "decided approvals unreadable");
            Vec::new()
        })
    }

    /// Withdraws a pending request: by its agent, or an operator.
    pub fn cancel(&self, asker: Asker<'_>, agent: Option<&str>, id: u64) -> Result<Approval, ApprovalError> {
        let current = self.get(asker, agent, id)?;
        let by = match asker {
            Asker::Agent { name } => Decider { by: name.to_owned(), via: DecidedVia::Agent, uid: 0 },
            Asker::Operator { uid } => Decider { by: format!("uid:{uid}"), via: DecidedVia::Cli, uid },
        };
        let decided = self.settle(current.id, ApprovalState::Cancelled, &by, None, None, false)?;
        let decided = decided.ok_or_else(|| already_decided(&current))?;
        if decided.freeze {
            self.thaw(&decided);
        }
        Ok(decided)
    }

    /// Approves or rejects a pending request, or every pending request in the batches with
    /// a key (minus `exclude`). Only operators and verified channels get here.
    pub async fn decide(&self, req: DecideRequest, by: &Decider) -> Result<Vec<Approval>, ApprovalError> {
        if let Some(r) = &req.reason
            && r.len() > rush_proto::approval::MAX_TEXT
        {
            return Err(invalid(format!(
                "reason: {} bytes, over the limit of {}",
                r.len(),
                rush_proto::approval::MAX_TEXT
            )));
        }
        if req.ttl_secs == Some(0) {
            return Err(invalid(
                "ttl: 0s (a grant must last a while; leave it out for the queue's grant_ttl)",
            ));
        }
        let state = if req.approve { ApprovalState::Approved } else { ApprovalState::Rejected };
        let ttl = req.approve.then(|| req.ttl_secs.unwrap_or(self.base.grant_ttl_secs));
        let mut decided = Vec::new();
        {
            let _g = self.guard();
            let ids: Vec<u64> = match &req.target {
                ApprovalTarget::Id(id) => {
                    let rec = self.store.approval(*id).map_err(saved)?.ok_or_else(|| {
                        ApprovalError::new(Fault::NotFound, format!("no approval request {id}"))
                    })?;
                    if rec.approval.state != ApprovalState::Pending {
                        return Err(already_decided(&rec.approval));
                    }
                    vec![*id]
                }
                ApprovalTarget::Batch(key) => {
                    let pending = self.pending_now()?;
                    let ids: Vec<u64> = self
                        .batches(&pending)
                        .into_iter()
                        .filter(|b| &b.key == key)
                        .flat_map(|b| b.ids)
                        .filter(|id| !req.exclude.contains(id))
                        .collect();
                    if ids.is_empty() {
                        return Err(ApprovalError::new(
                            Fault::NotFound,
                            format!("no pending batch {key:?} (rush approvals lists the batches)"),
                        ));
                    }
                    ids
                }
            };
            for id in ids {
                if let Some(a) = self.settle_locked(id, state, by, req.reason.clone(), ttl, false)? {
                    decided.push(a);
                }
            }
        }
        let mut out = Vec::with_capacity(decided.len());
        for a in decided {
            out.push(self.finish(a, by.uid).await);
        }
        Ok(out)
    }

    /// Decides `id` if it is still pending (taking the lock); what was decided.
    fn settle(
        &self,
        id: u64,
        state: ApprovalState,
        by: &Decider,
        reason: Option<String>,
        ttl: Option<u64>,
        late: bool,
    ) -> Result<Option<Approval>, ApprovalError> {
        let _g = self.guard();
        self.settle_locked(id, state, by, reason, ttl, late)
    }

    /// The compare-and-set, its audit record and the waiters' wake-up.
    fn settle_locked(
        &self,
        id: u64,
        state: ApprovalState,
        by: &Decider,
        reason: Option<String>,
        ttl: Option<u64>,
        late: bool,
    ) -> Result<Option<Approval>, ApprovalError> {
        let decision = Decision {
            by: by.by.clone(),
            via: by.via,
            unix_ms: now_unix_ms(),
            reason,
            ttl_secs: ttl.filter(|_| state == ApprovalState::Approved),
            late,
            effect: None,
        };
        let decided = self
            .store
            .update_pending(id, |a| {
                a.state = state;
                a.decision = Some(decision);
            })
            .map_err(saved)?;
        if let Some(a) = &decided {
            self.audit.record(
                Some(&a.agent),
                AuditEvent::ApprovalDecided {
                    id,
                    state,
                    by: by.by.clone(),
                    via: by.via,
                    late,
                    escalated: false,
                    effect: None,
                },
            );
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(decided)
    }

    /// Thaws `a`'s frozen agent, unless another of its `--freeze` requests still waits.
    fn thaw(&self, a: &Approval) {
        let still_waiting = self
            .store
            .pending_approvals()
            .unwrap_or_default()
            .iter()
            .any(|p| p.agent == a.agent && p.freeze && p.id != a.id);
        if still_waiting {
            return;
        }
        if let Err(e) = self.agents.release_hold(&a.agent) {
            tracing::warn!(agent = %a.agent, id = a.id, error = %e, "could not thaw the agent after its request was decided");
        }
    }

    /// What an approval does, then the thaw of a frozen asker; recorded as applied.
    async fn finish(&self, a: Approval, uid: u32) -> Approval {
        if a.state != ApprovalState::Approved {
            if a.freeze {
                self.thaw(&a);
            }
            return a;
        }
        let ttl = a.decision.as_ref().and_then(|d| d.ttl_secs).unwrap_or(self.base.grant_ttl_secs);
        let effect = match &a.detail {
            ApprovalDetail::Capability { path, ops } => {
                self.agents.grant(&a.agent, path, *ops, ttl, uid).await
            }
            ApprovalDetail::Budget { raise } => self.agents.raise_budget(&a.agent, *raise, uid).await,
            ApprovalDetail::Command { .. } => Ok("approved: the asker runs the command".into()),
            ApprovalDetail::Custom { .. } => Ok("approved".into()),
        };
        let effect = effect.unwrap_or_else(|e| format!("approved, but not applied: {e}"));
        if a.freeze {
            self.thaw(&a);
        }
        let out = match self.store.approval_applied(a.id, &effect) {
            Ok(Some(updated)) => updated,
            Ok(None) => a,
            Err(e) => {
                tracing::warn!(id = a.id, error = %error_chain(&e), "approval's effect done but not recorded");
                a
            }
        };
        self.audit.record(
            Some(&out.agent),
            AuditEvent::ApprovalDecided {
                id: out.id,
                state: out.state,
                by: out.decision.as_ref().map_or_else(String::new, |d| d.by.clone()),
                via: out.decision.as_ref().map_or(DecidedVia::Daemon, |d| d.via),
                late: false,
                escalated: false,
                effect: Some(effect),
            },
        );
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// Changes the queue's settings (stored; the request's channels checked against the
    /// config first).
    pub fn configure(&self, change: QueueChange) -> Result<QueueSettings, ApprovalError> {
        for r in &change.routes {
            self.config.check_channel(&r.channel).map_err(|e| ApprovalError::new(Fault::Unsupported, e))?;
        }
        if let Some(c) = &change.class {
            if c.class.is_none() {
                return Err(ApprovalError::new(
                    Fault::Malformed,
                    "class: required (which class the policy is for)",
                ));
            }
            if let Some(ch) = &c.channel {
                self.config.check_channel(ch).map_err(|e| ApprovalError::new(Fault::Unsupported, e))?;
            }
            if c.timeout_secs.is_some_and(|t| t == 0 || t > rush_proto::approval::MAX_TIMEOUT_SECS) {
                return Err(invalid("timeout: must be between 1s and 30 days"));
            }
        }
        if let Some(s) = change.similarity
            && (!(0.0..=2.0).contains(&s) || s.is_nan())
        {
            return Err(invalid(format!("similarity: {s} is not between 0 and 2")));
        }
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = stored.clone();
        next.apply(&change);
        self.store.set_queue_overrides(&next).map_err(saved)?;
        *stored = next;
        drop(stored);
        Ok(self.settings())
    }

    /// One round of deadlines and gone agents (the sweeper runs it every second; the
    /// daemon once at start with `starting`, marking what passed while it was down late).
    pub async fn sweep(&self, starting: bool) {
        let now = now_unix_ms();
        let overdue = match self.store.overdue_approvals(now) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "approval deadlines not checked");
                return;
            }
        };
        let timeout = Decider { by: "timeout".into(), via: DecidedVia::Timeout, uid: 0 };
        for a in overdue {
            let result = match (a.on_timeout, a.escalated) {
                (OnTimeout::Escalate, false) => {
                    self.escalate(&a);
                    continue;
                }
                (OnTimeout::Approve, _) => {
                    self.settle(a.id, ApprovalState::Approved, &timeout, None, None, starting)
                }
                _ => self.settle(a.id, ApprovalState::Expired, &timeout, None, None, starting),
            };
            match result {
                Ok(Some(decided)) => {
                    self.finish(decided, 0).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(id = a.id, error = %e.message, "deadline not applied"),
            }
        }
        // Requests of agents that are gone: nobody is left to answer.
        let daemon = Decider { by: "daemon".into(), via: DecidedVia::Daemon, uid: 0 };
        for a in self.store.pending_approvals().unwrap_or_default() {
            if !self.agents.agent(&a.agent).is_some_and(|f| f.alive) {
                let reason = Some(format!("agent {:?} is gone", a.agent));
                let _ = self.settle(a.id, ApprovalState::Cancelled, &daemon, reason, None, false);
            }
        }
        if starting {
            // Approved before a crash, their effect not done: done now.
            for a in self.store.unapplied_approvals().unwrap_or_default() {
                self.finish(a, 0).await;
            }
        }
    }

    /// Raises an overdue `escalate` request to high, routes it to the high channel, gives
    /// it one more timeout, and has it delivered again.
    fn escalate(&self, a: &Approval) {
        let settings = self.settings();
        let channel = route(&settings, Priority::High);
        let timeout = a.deadline_unix_ms.saturating_sub(a.created_unix_ms);
        let updated = self.store.update_pending(a.id, |x| {
            x.escalated = true;
            x.channel = channel.clone();
            x.deadline_unix_ms = now_unix_ms() + timeout.max(1000);
            x.delivered_unix_ms = None;
        });
        if let Ok(Some(x)) = updated {
            self.audit.record(
                Some(&x.agent),
                AuditEvent::ApprovalDecided {
                    id: x.id,
                    state: x.state,
                    by: "timeout".into(),
                    via: DecidedVia::Timeout,
                    late: false,
                    escalated: true,
                    effect: Some(format!("escalated to high, routed to {channel}")),
                },
            );
            self.arrived.notify_one();
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// The batch window of `a`'s class (its policy's, else the queue's), in milliseconds.
fn window_ms(settings: &QueueSettings, a: &Approval) -> u64 {
    settings
        .classes
        .iter()
        .find(|c| c.class == Some(a.class))
        .and_then(|c| c.batch_window_secs)
        .unwrap_or(settings.batch_window_secs)
        * 1000
}

/// The channel a priority routes to (`cli` without a route).
fn route(settings: &QueueSettings, p: Priority) -> Channel {
    settings
        .routes
        .iter()
        .find(|r| r.priority == p)
        .map_or(Channel::Cli { blocking: false }, |r| r.channel.clone())
}

fn already_decided(a: &Approval) -> ApprovalError {
    let how = a.decision.as_ref().map_or_else(String::new, |d| format!(" (by {} via {})", d.by, d.via));
    ApprovalError::new(Fault::Exists, format!("approval request {} is already {}{how}", a.id, a.state))
}

/// Spawns the sweeper: deadlines and gone agents, every second.
pub fn spawn_sweeper(approvals: Arc<Approvals>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            approvals.sweep(false).await;
        }
    })
}

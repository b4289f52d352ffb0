//! Intents, results and delegated tasks: what agents tell each other.

use std::time::Duration;

use data_encoding::BASE64;
use rush_proto::AuditEvent;
use rush_proto::coordination::{
    self as co, BroadcastRequest, DelegateRequest, Intent, PublishRequest, ResultInfo, ResultsQuery, Task,
    TaskAction, TaskState,
};

use super::{Actor, AgentView, Coordination, CoordinationError, invalid, store_failed};

/// The delegator of a task the operator delegates for no agent (not a valid agent name).
const OPERATOR: &str = "(operator)";
use crate::core::{Fault, now_unix_ms};

impl Coordination {
    pub fn broadcast(&self, actor: Actor<'_>, req: BroadcastRequest) -> Result<Intent, CoordinationError> {
        let agent = self.acting_agent(actor, req.agent.as_deref(), "broadcast")?;
        if req.text.trim().is_empty() {
            return Err(invalid("the intent's text is empty: say what the agent is about to do"));
        }
        if req.text.len() > co::MAX_TEXT {
            return Err(invalid(format!(
                "the intent's text is {} bytes, more than {}",
                req.text.len(),
                co::MAX_TEXT
            )));
        }
        if req.paths.len() > co::MAX_PATHS {
            return Err(invalid(format!(
                "{} paths: an intent names at most {}",
                req.paths.len(),
                co::MAX_PATHS
            )));
        }
        for p in &req.paths {
            co::check_pattern(p).map_err(invalid)?;
        }
        let ttl = req.ttl_secs.unwrap_or(co::DEFAULT_INTENT_TTL_SECS);
        co::check_ttl("ttl", ttl).map_err(invalid)?;
        let now = now_unix_ms();
        let intent = Intent {
            id: 0,
            agent: agent.name.clone(),
            session: agent.session,
            text: req.text,
            paths: req.paths,
            created_unix_ms: now,
            expires_unix_ms: now + ttl * 1000,
            overlaps: false,
        };
        let intent = self.store.add_intent(intent).map_err(|e| store_failed(&e))?;
        self.audit.record(
            Some(&agent.name),
            AuditEvent::Intent {
                id: intent.id,
                text: intent.text.clone(),
                paths: intent.paths.clone(),
                expires_unix_ms: intent.expires_unix_ms,
            },
        );
        Ok(intent)
    }

    /// Live intents (an agent sees its session's), those overlapping `paths` marked.
    pub fn intents(
        &self,
        actor: Actor<'_>,
        paths: &[String],
        session: Option<&str>,
    ) -> Result<Vec<Intent>, CoordinationError> {
        for p in paths {
            co::check_pattern(p).map_err(invalid)?;
        }
        let scope = self.reader_scope(actor);
        let mut live = self.store.live_intents(now_unix_ms()).map_err(|e| store_failed(&e))?;
        live.retain(|i| scope.as_ref().is_none_or(|s| &i.session == s));
        live.retain(|i| session.is_none_or(|s| i.session.as_deref() == Some(s)));
        for i in &mut live {
            i.overlaps = paths.iter().any(|q| i.paths.iter().any(|p| co::patterns_overlap(p, q)));
        }
        Ok(live)
    }

    pub fn publish(&self, actor: Actor<'_>, req: PublishRequest) -> Result<ResultInfo, CoordinationError> {
        co::check_name("result key", &req.key).map_err(invalid)?;
        let agent = self.acting_agent(actor, req.agent.as_deref(), "publish")?;
        let content = BASE64
            .decode(req.content_base64.as_bytes())
            .map_err(|e| invalid(format!("content_base64 of {:?} is not base64: {e}", req.key)))?;
        if content.len() > self.max_result_bytes {
            return Err(CoordinationError::new(
                Fault::Invalid,
                format!(
                    "result {:?} is {} bytes, more than the limit of {} ([coordination] max_result_bytes)",
                    req.key,
                    content.len(),
                    self.max_result_bytes
                ),
            ));
        }
        // `task/N` is the result of task N: only its doer may publish it.
        let task = match req.key.strip_prefix("task/") {
            Some(n) => {
                let id: u64 = n
                    .parse()
                    .map_err(|_| invalid(format!("result key {:?}: task/ keys are task/ID", req.key)))?;
                let task = self.store.task(id).map_err(|e| store_failed(&e))?;
                match task {
                    Some(t) if t.to == agent.name => Some(t),
                    Some(t) => {
                        return Err(CoordinationError::new(
                            Fault::Forbidden,
                            format!(
                                "task {id} was delegated to agent {:?}: only it publishes {:?}",
                                t.to, req.key
                            ),
                        ));
                    }
                    None => return Err(CoordinationError::new(Fault::NotFound, format!("no task {id}"))),
                }
            }
            None => None,
        };
        if let Some(to) = &req.for_agent {
            to.parse::<rush_proto::AgentName>().map_err(|e| invalid(format!("for_agent {to:?}: {e}")))?;
        }
        let sha = ring::digest::digest(&ring::digest::SHA256, &content);
        let sha256: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.store.put_blob(&sha256, &content).map_err(|e| store_failed(&e))?;
        let result = ResultInfo {
            key: req.key.clone(),
            agent: agent.name.clone(),
            session: agent.session.clone(),
            for_agent: req.for_agent.clone(),
            sha256,
            size: content.len() as u64,
            published_unix_ms: now_unix_ms(),
            content_base64: None,
        };
        let fence = req.fence.as_ref().map(|f| (f.task.as_str(), f.fencing));
        let stored = self.store.put_result(&result, fence, &self.node, now_unix_ms());
        if let Err(holding) = stored.map_err(|e| store_failed(&e))? {
            let f = req.fence.as_ref().expect("only a fence is refused");
            let now = match holding {
                Some(c) => format!("it is held by agent {:?} with fencing token {}", c.agent, c.fencing),
                None => "nobody holds it now (released or lapsed)".into(),
            };
            return Err(CoordinationError::new(
                Fault::Forbidden,
                format!("stale fencing token {} for task {:?}: {now}", f.fencing, f.task),
            ));
        }
        self.audit.record(
            Some(&agent.name),
            AuditEvent::Result {
                key: result.key.clone(),
                sha256: result.sha256.clone(),
                size: result.size,
                for_agent: result.for_agent.clone(),
            },
        );
        // A task's result completes it.
        if let Some(task) = task
            && let Some(done) =
                self.store.finish_task(task.id, TaskState::Done).map_err(|e| store_failed(&e))?
        {
            self.audit_task(&agent.name, &done, TaskAction::Done);
        }
        self.bump();
        Ok(result)
    }

    /// What `actor` may read: its session's results meant for everyone or for it (all of
    /// them for the operator), or one key with its content, waited for up to `wait_secs`.
    pub async fn results(
        &self,
        actor: Actor<'_>,
        q: ResultsQuery,
    ) -> Result<Vec<ResultInfo>, CoordinationError> {
        if let Some(k) = &q.key {
            co::check_name("result key", k).map_err(invalid)?;
        }
        let wait = q.wait_secs.unwrap_or(0);
        if wait > co::MAX_WAIT_SECS {
            return Err(invalid(format!("a wait of {wait}s is more than {}s", co::MAX_WAIT_SECS)));
        }
        if wait > 0 && q.key.is_none() {
            return Err(invalid("a wait needs the key to wait for"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let found = self.readable(actor, &q)?;
            if q.key.is_none() {
                return Ok(found);
            }
            if let Some(mut r) = found.into_iter().next() {
                let blob = self.store.blob(&r.sha256).map_err(|e| store_failed(&e))?.ok_or_else(|| {
                    CoordinationError::new(
                        Fault::Internal,
                        format!("result {:?}: its content is gone", r.key),
                    )
                })?;
                r.content_base64 = Some(BASE64.encode(&blob));
                return Ok(vec![r]);
            }
            let key = q.key.as_deref().unwrap_or_default();
            if wait == 0 || !self.wait_change(&mut changed, deadline).await {
                let waited = if wait > 0 { format!(" after waiting {wait}s") } else { String::new() };
                return Err(CoordinationError::new(Fault::NotFound, format!("no result {key:?}{waited}")));
            }
        }
    }

    fn readable(&self, actor: Actor<'_>, q: &ResultsQuery) -> Result<Vec<ResultInfo>, CoordinationError> {
        let (all, reader) = match actor {
            Actor::Operator { .. } => (self.store.all_results().map_err(|e| store_failed(&e))?, None),
            Actor::Agent { name } => {
                let session = self.agents.agent(name).and_then(|a| a.session);
                (self.store.results(session.as_deref()).map_err(|e| store_failed(&e))?, Some(name))
            }
        };
        Ok(all
            .into_iter()
            .filter(|r| {
                reader.is_none_or(|me| r.for_agent.as_deref().is_none_or(|f| f == me) || r.agent == me)
            })
            .filter(|r| q.from.as_deref().is_none_or(|f| r.agent == f))
            .filter(|r| q.key.as_deref().is_none_or(|k| r.key == k))
            .collect())
    }

    /// Puts a task in `req.to`'s inbox. With `spawn` the caller (the edge) starts the agent
    /// after this, so the task is there before the agent first looks.
    pub fn delegate(&self, actor: Actor<'_>, req: &DelegateRequest) -> Result<Task, CoordinationError> {
        let target = self.agents.agent(&req.to).filter(|a| a.alive);
        let from = match (actor, req.agent.as_deref()) {
            // The operator delegating for nobody: the task is in the doer's session.
            (Actor::Operator { .. }, None) => AgentView {
                name: OPERATOR.into(),
                cgroup_id: 0,
                session: match &req.spawn {
                    Some(s) => s.session.clone(),
                    None => target.as_ref().and_then(|a| a.session.clone()),
                },
                alive: true,
            },
            _ => self.acting_agent(actor, req.agent.as_deref(), "delegate")?,
        };
        req.to
            .parse::<rush_proto::AgentName>()
            .map_err(|e| invalid(format!("delegate to {:?}: {e}", req.to)))?;
        if req.to == from.name {
            return Err(invalid(format!("agent {:?} cannot delegate to itself", from.name)));
        }
        if req.text.trim().is_empty() {
            return Err(invalid("the task's text is empty: say what is to be done"));
        }
        if req.text.len() > co::MAX_TEXT {
            return Err(invalid(format!(
                "the task's text is {} bytes, more than {}",
                req.text.len(),
                co::MAX_TEXT
            )));
        }
        if req.spawn.is_some() && !matches!(actor, Actor::Operator { .. }) {
            return Err(CoordinationError::new(
                Fault::Forbidden,
                "an agent may not spawn agents: delegate to a running agent, or ask the operator",
            ));
        }
        if req.spawn.is_some() && target.is_some() {
            return Err(CoordinationError::new(
                Fault::Exists,
                format!("agent {:?} is already running: delegate to it without spawning", req.to),
            ));
        }
        if req.spawn.is_none() {
            match self.agents.agent(&req.to) {
                // An agent delegates within its session: the result comes back there.
                Some(a) if a.alive && matches!(actor, Actor::Agent { .. }) && a.session != from.session => {
                    return Err(CoordinationError::new(
                        Fault::Forbidden,
                        format!(
                            "agent {:?} is in session {}, agent {:?} in {}: an agent delegates only within its session",
                            req.to,
                            a.session.as_deref().unwrap_or("(none)"),
                            from.name,
                            from.session.as_deref().unwrap_or("(none)")
                        ),
                    ));
                }
                Some(a) if a.alive => {}
                _ => {
                    return Err(CoordinationError::new(
                        Fault::NotFound,
                        format!("no running agent named {:?} to delegate to", req.to),
                    ));
                }
            }
        }
        if let Some(parent) = req.parent
            && self.store.task(parent).map_err(|e| store_failed(&e))?.is_none()
        {
            return Err(CoordinationError::new(
                Fault::NotFound,
                format!("no task {parent} (the parent named)"),
            ));
        }
        let task = Task {
            id: 0,
            from: from.name.clone(),
            to: req.to.clone(),
            session: from.session.clone(),
            text: req.text.clone(),
            parent: req.parent,
            state: TaskState::Open,
            result_key: String::new(),
            created_unix_ms: now_unix_ms(),
        };
        let task = self.store.add_task(task).map_err(|e| store_failed(&e))?;
        self.audit_task(&from.name, &task, TaskAction::Delegated);
        self.bump();
        Ok(task)
    }

    /// The agent spawned for task `id` could not start: the task is cancelled, so that no
    /// later agent of that name finds it.
    pub fn cancel(&self, id: u64) {
        if let Ok(Some(t)) = self.store.finish_task(id, TaskState::Cancelled) {
            self.audit_task(&t.from, &t, TaskAction::Cancelled);
        }
    }

    /// The open tasks delegated to the agent; waits up to `wait_secs` for one.
    pub async fn inbox(
        &self,
        actor: Actor<'_>,
        agent: Option<&str>,
        wait_secs: Option<u64>,
    ) -> Result<Vec<Task>, CoordinationError> {
        let me = match (actor, agent) {
            (Actor::Agent { name }, _) => name.to_owned(),
            (Actor::Operator { .. }, Some(a)) => {
                if self.agents.agent(a).is_none() {
                    return Err(CoordinationError::new(Fault::NotFound, format!("no agent named {a:?}")));
                }
                a.to_owned()
            }
            (Actor::Operator { .. }, None) => {
                return Err(CoordinationError::new(
                    Fault::Invalid,
                    "inbox needs the agent (`agent`, --agent NAME)",
                ));
            }
        };
        let wait = wait_secs.unwrap_or(0);
        if wait > co::MAX_WAIT_SECS {
            return Err(invalid(format!("a wait of {wait}s is more than {}s", co::MAX_WAIT_SECS)));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let tasks = self.store.open_tasks(&me).map_err(|e| store_failed(&e))?;
            if !tasks.is_empty() || wait == 0 {
                return Ok(tasks);
            }
            if !self.wait_change(&mut changed, deadline).await {
                return Ok(Vec::new());
            }
        }
    }

    /// Waits for a result or task made through this daemon, or (a store shared with other
    /// daemons, whose changes this one is not told of) a second at most; false once
    /// `deadline` has passed.
    async fn wait_change(
        &self,
        changed: &mut tokio::sync::watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        let until = if self.node.is_empty() { deadline } else { deadline.min(now + Duration::from_secs(1)) };
        let _ = tokio::time::timeout_at(until, changed.changed()).await;
        true
    }

    fn audit_task(&self, agent: &str, t: &Task, action: TaskAction) {
        self.audit.record(
            Some(agent),
            AuditEvent::Task {
                id: t.id,
                action,
                from: t.from.clone(),
                to: t.to.clone(),
                text: t.text.clone(),
                parent: t.parent,
            },
        );
    }
}

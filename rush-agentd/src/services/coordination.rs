//! Coordination between agents: intents, leased claims (their paths write-protected by the
//! kernel from the session's other agents), results and delegated tasks.
//!
//! The state sits behind [`CoordinationStore`]: the daemon's SQLite store (embedded, the
//! default), or an etcd cluster several daemons share (`adapters::etcd`). A claim is one
//! compare-and-swap there, committed before the answer, so a daemon killed mid-claim
//! either granted it (and the store says so after a restart) or did not. Holdings are
//! named by a lease id and a fencing token that only grows per task.
//!
//! Several daemons (nodes) may share one store: a claim records the node of its holder,
//! "already held" means the same node and agent, and a daemon ends as `holder_exited` only
//! the claims of its own node (lapsed ones anyone may end, one version exactly).
//!
//! The kernel mirror: every live claim with paths becomes, for each *other* agent of the
//! holder's session, write-deny entries on the claimed inodes (another node's claim: its
//! paths resolved on this machine) (`KernelPolicy::set_claim_denies`), set before a new agent's first process runs (`admit`) and removed
//! when the claim ends. The mirror is recomputed under one lock after every change, so a
//! claim and its denies change together.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rush_proto::AuditEvent;
use rush_proto::coordination::{Claim, ClaimAction, Intent, ResultInfo, Task, TaskState};
use tokio::sync::watch;

use crate::adapters::bpf::{ClaimDeny, KernelPolicy};
use crate::adapters::etcd::{Etcd, EtcdError};
use crate::adapters::store::{ClaimRecord, ClaimSwap, Store, StoreError};
use crate::core::{Fault, FileKey, FileKeys, error_chain, now_unix_ms};
use crate::services::audit::AuditLog;

mod claims;
pub use claims::covers;
mod exchange;
#[cfg(test)]
mod tests;

crate::service_error!(
    /// A coordination request's failure: its fault and one line naming the input.
    CoordinationError
);

fn invalid(message: impl Into<String>) -> CoordinationError {
    CoordinationError::new(Fault::Invalid, message)
}

fn store_failed(e: &BackendError) -> CoordinationError {
    match e {
        BackendError::Store(e) => {
            let fault = if e.is_full() { Fault::Exhausted } else { Fault::Internal };
            CoordinationError::new(fault, format!("coordination state not saved: {}", error_chain(e)))
        }
        BackendError::Blobs { source, .. } => {
            let fault =
                if source.raw_os_error() == Some(libc::ENOSPC) { Fault::Exhausted } else { Fault::Internal };
            CoordinationError::new(fault, error_chain(e))
        }
        // Never a silent local fallback: the request fails, naming the cluster.
        BackendError::Etcd(e) => CoordinationError::new(Fault::Internal, error_chain(e)),
    }
}

/// What a coordination store failed at.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot store the result in {}", path.display())]
    Blobs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who sends a request: the operator, or an agent as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    Operator { uid: u32 },
    Agent { name: &'a str },
}

/// An agent as coordination sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub name: String,
    pub cgroup_id: u64,
    pub session: Option<String>,
    /// Not exited.
    pub alive: bool,
}

/// What coordination needs of the agents service (implemented at the edge, handles.rs).
pub trait CoordinationAgents: Send + Sync {
    fn agent(&self, name: &str) -> Option<AgentView>;
    /// Every agent that has not exited.
    fn alive(&self) -> Vec<AgentView>;
}

/// Where coordination state lives: the embedded store, or (across machines) a
/// distributed one behind the same calls. Calls block their caller briefly (a store's
/// round trip); none waits on the daemon's async runtime.
pub trait CoordinationStore: Send + Sync {
    fn try_claim(&self, new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, BackendError>;
    /// Extends the holding of `task` by `agent` of `node`, if it is theirs and unlapsed.
    fn renew_claim(
        &self,
        task: &str,
        node: &str,
        agent: &str,
        ttl: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, BackendError>;
    /// Ends the holding of `task`: `(node, agent)`'s only, when given.
    fn release_claim(
        &self,
        task: &str,
        holder: Option<(&str, &str)>,
    ) -> Result<Option<ClaimRecord>, BackendError>;
    /// Ends the holding `seen` if it is still exactly that version (not renewed, not
    /// replaced): what a sweep does to a lapsed holding or one whose holder exited.
    fn end_claim(&self, seen: &ClaimRecord) -> Result<Option<ClaimRecord>, BackendError>;
    fn live_claims(&self) -> Result<Vec<ClaimRecord>, BackendError>;
    fn add_intent(&self, intent: Intent) -> Result<Intent, BackendError>;
    fn live_intents(&self, now_ms: u64) -> Result<Vec<Intent>, BackendError>;
    /// Stores a result; with `fence` (task, fencing token), only if that is the task's
    /// live, unlapsed holding by the publisher (`r.agent` of `node`), checked atomically
    /// with the write. `Ok(Err(holding))`: the fence is stale (the task's live holding).
    fn put_result(
        &self,
        r: &ResultInfo,
        fence: Option<(&str, u64)>,
        node: &str,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, BackendError>;
    fn results(&self, session: Option<&str>) -> Result<Vec<ResultInfo>, BackendError>;
    fn all_results(&self) -> Result<Vec<ResultInfo>, BackendError>;
    /// A result's content, named by its SHA-256 (hex); written once.
    fn put_blob(&self, sha256: &str, content: &[u8]) -> Result<(), BackendError>;
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, BackendError>;
    fn add_task(&self, task: Task) -> Result<Task, BackendError>;
    fn task(&self, id: u64) -> Result<Option<Task>, BackendError>;
    fn open_tasks(&self, agent: &str) -> Result<Vec<Task>, BackendError>;
    /// Ends open task `id` as `state` (done or cancelled); None if it was not open.
    fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, BackendError>;
    /// What `rush doctor` says of the store: Ok(what it is and that it answers), or why
    /// it does not.
    fn probe(&self) -> Result<String, String>;
}

/// The embedded backend: the daemon's own SQLite store, result blobs as files in
/// `<state>/results` (one daemon: the node is not compared).
pub struct Embedded {
    pub store: Arc<Store>,
    pub blobs: PathBuf,
}

impl CoordinationStore for Embedded {
    fn try_claim(&self, new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, BackendError> {
        Ok(self.store.try_claim(new, now_ms)?)
    }
    fn renew_claim(
        &self,
        task: &str,
        _node: &str,
        agent: &str,
        ttl: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(self.store.renew_claim(task, agent, ttl, now_ms)?)
    }
    fn release_claim(
        &self,
        task: &str,
        holder: Option<(&str, &str)>,
    ) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(self.store.release_claim(task, holder.map(|(_, agent)| agent))?)
    }
    fn end_claim(&self, seen: &ClaimRecord) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(self.store.end_claim(seen)?)
    }
    fn live_claims(&self) -> Result<Vec<ClaimRecord>, BackendError> {
        Ok(self.store.live_claims()?)
    }
    fn add_intent(&self, intent: Intent) -> Result<Intent, BackendError> {
        Ok(self.store.add_intent(intent)?)
    }
    fn live_intents(&self, now_ms: u64) -> Result<Vec<Intent>, BackendError> {
        Ok(self.store.live_intents(now_ms)?)
    }
    fn put_result(
        &self,
        r: &ResultInfo,
        fence: Option<(&str, u64)>,
        _node: &str,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, BackendError> {
        Ok(self.store.put_result(r, fence, now_ms)?)
    }
    fn results(&self, session: Option<&str>) -> Result<Vec<ResultInfo>, BackendError> {
        Ok(self.store.results(session)?)
    }
    fn all_results(&self) -> Result<Vec<ResultInfo>, BackendError> {
        Ok(self.store.all_results()?)
    }
    /// Content-addressed: the name is the digest, written once (fsynced, then renamed).
    fn put_blob(&self, sha256: &str, content: &[u8]) -> Result<(), BackendError> {
        use std::io::Write as _;
        let path = self.blobs.join(sha256);
        if path.exists() {
            return Ok(());
        }
        let fail = |source| BackendError::Blobs { path: self.blobs.clone(), source };
        std::fs::create_dir_all(&self.blobs).map_err(fail)?;
        let tmp = self.blobs.join(format!(".{sha256}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(content).and_then(|_| f.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, BackendError> {
        match std::fs::read(self.blobs.join(sha256)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BackendError::Blobs { path: self.blobs.clone(), source }),
        }
    }
    fn add_task(&self, task: Task) -> Result<Task, BackendError> {
        Ok(self.store.add_task(task)?)
    }
    fn task(&self, id: u64) -> Result<Option<Task>, BackendError> {
        Ok(self.store.task(id)?)
    }
    fn open_tasks(&self, agent: &str) -> Result<Vec<Task>, BackendError> {
        Ok(self.store.open_tasks(agent)?)
    }
    fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, BackendError> {
        Ok(self.store.finish_task(id, state)?)
    }
    fn probe(&self) -> Result<String, String> {
        Ok(format!(
            "embedded: this daemon's state.db, result contents in {} (one machine)",
            self.blobs.display()
        ))
    }
}

/// The etcd backend: the same calls on a cluster several daemons share.
impl CoordinationStore for Etcd {
    fn try_claim(&self, new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, BackendError> {
        Ok(Etcd::try_claim(self, new, now_ms)?)
    }
    fn renew_claim(
        &self,
        task: &str,
        node: &str,
        agent: &str,
        ttl: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(Etcd::renew_claim(self, task, node, agent, ttl, now_ms)?)
    }
    fn release_claim(
        &self,
        task: &str,
        holder: Option<(&str, &str)>,
    ) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(Etcd::release_claim(self, task, holder)?)
    }
    fn end_claim(&self, seen: &ClaimRecord) -> Result<Option<ClaimRecord>, BackendError> {
        Ok(Etcd::end_claim(self, seen)?)
    }
    fn live_claims(&self) -> Result<Vec<ClaimRecord>, BackendError> {
        Ok(Etcd::live_claims(self)?)
    }
    fn add_intent(&self, intent: Intent) -> Result<Intent, BackendError> {
        Ok(Etcd::add_intent(self, intent)?)
    }
    fn live_intents(&self, now_ms: u64) -> Result<Vec<Intent>, BackendError> {
        Ok(Etcd::live_intents(self, now_ms)?)
    }
    fn put_result(
        &self,
        r: &ResultInfo,
        fence: Option<(&str, u64)>,
        node: &str,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, BackendError> {
        Ok(Etcd::put_result(self, r, fence, node, now_ms)?)
    }
    fn results(&self, session: Option<&str>) -> Result<Vec<ResultInfo>, BackendError> {
        Ok(Etcd::results(self, session)?)
    }
    fn all_results(&self) -> Result<Vec<ResultInfo>, BackendError> {
        Ok(Etcd::all_results(self)?)
    }
    fn put_blob(&self, sha256: &str, content: &[u8]) -> Result<(), BackendError> {
        Ok(Etcd::put_blob(self, sha256, content)?)
    }
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(Etcd::blob(self, sha256)?)
    }
    fn add_task(&self, task: Task) -> Result<Task, BackendError> {
        Ok(Etcd::add_task(self, task)?)
    }
    fn task(&self, id: u64) -> Result<Option<Task>, BackendError> {
        Ok(Etcd::task(self, id)?)
    }
    fn open_tasks(&self, agent: &str) -> Result<Vec<Task>, BackendError> {
        Ok(Etcd::open_tasks(self, agent)?)
    }
    fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, BackendError> {
        Ok(Etcd::finish_task(self, id, state)?)
    }
    fn probe(&self) -> Result<String, String> {
        Etcd::probe(self).map_err(|e| error_chain(&e))
    }
}

/// `[coordination]` of the daemon's config, and what the kernel allows.
pub struct CoordinationSetup {
    pub store: Arc<dyn CoordinationStore>,
    pub agents: Arc<dyn CoordinationAgents>,
    pub kernel: Arc<dyn KernelPolicy>,
    pub audit: Arc<AuditLog>,
    pub keys: FileKeys,
    /// Ok: BPF LSM file programs are attached, path claims are enforced. Err: why not
    /// (they are advisory, or refused with `enforce`).
    pub kernel_claims: Result<(), String>,
    pub max_result_bytes: usize,
    /// This daemon's name among the daemons sharing the store; empty with the embedded
    /// store (one daemon).
    pub node: String,
}

pub struct Coordination {
    store: Arc<dyn CoordinationStore>,
    agents: Arc<dyn CoordinationAgents>,
    kernel: Arc<dyn KernelPolicy>,
    audit: Arc<AuditLog>,
    keys: FileKeys,
    kernel_claims: Result<(), String>,
    max_result_bytes: usize,
    node: String,
    /// The live claims (task, lease, deadline) the last sweep saw: when another daemon's
    /// change shows up there, the kernel mirror is brought in line.
    seen: Mutex<Vec<(String, u64, u64)>>,
    /// The claim denies last pushed to the kernel, per agent cgroup; held while a claim
    /// change and its mirror are made, so they are one step to everyone else.
    mirror: Mutex<HashMap<u64, Vec<(FileKey, ClaimDeny)>>>,
    /// Bumped on every result published or task delegated: what waiters wait on.
    changed: watch::Sender<u64>,
    /// Holder → (task, lease) of a claim another agent tried to take and lost: whose
    /// requests for a person's decision are raised (priority inversion).
    contended: Mutex<HashMap<String, (String, u64)>>,
}

impl Coordination {
    pub fn new(setup: CoordinationSetup) -> Coordination {
        Coordination {
            store: setup.store,
            agents: setup.agents,
            kernel: setup.kernel,
            audit: setup.audit,
            keys: setup.keys,
            kernel_claims: setup.kernel_claims,
            max_result_bytes: setup.max_result_bytes,
            node: setup.node,
            seen: Mutex::default(),
            mirror: Mutex::default(),
            changed: watch::channel(0).0,
            contended: Mutex::default(),
        }
    }

    /// The task of a live claim `agent` holds that another agent tried to take (and waits
    /// on), if any.
    pub fn contended_claim(&self, agent: &str) -> Option<String> {
        let (task, lease) = self.contended.lock().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()?;
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix_ms();
        seen.iter().any(|(t, l, deadline)| *t == task && *l == lease && *deadline > now).then_some(task)
    }

    /// What `rush doctor` says of path claims on this daemon.
    pub fn doctor_guarantee(&self) -> rush_proto::Guarantee {
        let (holds, detail) = match &self.kernel_claims {
            Ok(()) => (
                true,
                "BPF LSM: while an agent holds a claim with paths, the session's other agents get EPERM on \
                 writes, creates, deletes and renames there (reads stay allowed)"
                    .to_string(),
            ),
            Err(why) => (
                false,
                format!(
                    "advisory only: {why}; claims are still exclusive, but other agents can write in claimed \
                     paths (`rush agent claim --enforce` refuses such a claim instead)"
                ),
            ),
        };
        rush_proto::Guarantee { name: "path claims".into(), holds, detail }
    }

    /// What `rush doctor` says of the coordination store: which, and whether it answers.
    pub fn doctor_store(&self) -> rush_proto::Guarantee {
        let (holds, detail) = match self.store.probe() {
            Ok(what) => (true, what),
            Err(why) => (false, format!("{why}: claims, intents, results and tasks fail until it answers")),
        };
        rush_proto::Guarantee { name: "coordination store".into(), holds, detail }
    }

    /// Whether this daemon's agent holds `r` (records without a node: the embedded
    /// store's, or written before nodes).
    fn is_mine(&self, r: &ClaimRecord) -> bool {
        r.node == self.node || r.node.is_empty()
    }

    /// Pushes every agent's denies again (after a daemon start: adopted agents, and
    /// entries a previous daemon left pinned).
    pub fn resync_kernel(&self) {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.sync_kernel_from(true);
    }

    /// The agent `actor` acts as: an agent is itself; the operator must name one.
    fn acting_agent(
        &self,
        actor: Actor<'_>,
        named: Option<&str>,
        request: &str,
    ) -> Result<AgentView, CoordinationError> {
        let name = match (actor, named) {
            (Actor::Agent { name }, _) => name,
            (Actor::Operator { .. }, Some(n)) => n,
            (Actor::Operator { .. }, None) => {
                return Err(CoordinationError::new(
                    Fault::Invalid,
                    format!(
                        "{request} needs the agent to act for (`agent`, --agent NAME): only an agent may leave it out"
                    ),
                ));
            }
        };
        match self.agents.agent(name) {
            Some(a) if a.alive => Ok(a),
            Some(_) => Err(CoordinationError::new(Fault::NotFound, format!("agent {name:?} has exited"))),
            None => Err(CoordinationError::new(Fault::NotFound, format!("no agent named {name:?}"))),
        }
    }

    /// The session an agent caller is confined to reading; None for the operator (all).
    fn reader_scope(&self, actor: Actor<'_>) -> Option<Option<String>> {
        match actor {
            Actor::Operator { .. } => None,
            Actor::Agent { name } => Some(self.agents.agent(name).and_then(|a| a.session)),
        }
    }

    /// Ends what lapsed or lost its holder: expired leases (anyone's), claims of this
    /// node's exited agents (never another node's: its daemon knows whether they live).
    /// Run every second by the daemon, after a restart, on an agent's exit and when the
    /// store reports a change; the kernel mirror follows when the live claims changed
    /// (another daemon's claim made or ended included).
    pub fn sweep(&self) {
        let now = now_unix_ms();
        let Ok(live) = self.store.live_claims() else { return };
        let alive: std::collections::HashSet<String> =
            self.agents.alive().into_iter().map(|a| a.name).collect();
        let mut ended = false;
        for r in &live {
            let action = if r.claim.expires_unix_ms <= now {
                ClaimAction::Expired
            } else if self.is_mine(r) && !alive.contains(&r.claim.agent) {
                ClaimAction::HolderExited
            } else {
                continue;
            };
            if let Ok(Some(gone)) = self.store.end_claim(r) {
                self.audit_claim(&gone.claim, action, None);
                ended = true;
            }
        }
        let now_seen: Vec<(String, u64, u64)> =
            live.iter().map(|r| (r.claim.task.clone(), r.claim.lease, r.claim.expires_unix_ms)).collect();
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *seen != now_seen;
            *seen = now_seen;
            changed
        };
        if ended || changed {
            self.sync_kernel();
        }
    }

    fn audit_claim(&self, c: &Claim, action: ClaimAction, caller_uid: Option<u32>) {
        self.audit.record(
            Some(&c.agent),
            AuditEvent::Claim {
                task: c.task.clone(),
                action,
                lease: c.lease,
                fencing: c.fencing,
                paths: c.enforced_paths.clone(),
                enforcement: c.enforcement,
                expires_unix_ms: c.expires_unix_ms,
                caller_uid,
            },
        );
    }

    /// The live claim a kernel deny names (its lease), for the audit record of the deny.
    pub fn claim_by_lease(&self, lease: u64) -> Option<Claim> {
        self.store.live_claims().ok()?.into_iter().map(|r| r.claim).find(|c| c.lease == lease)
    }

    /// Wakes whoever waits for a result or a task.
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Runs [`Coordination::sweep`] every second, and at once when an agent exits or the
/// store reports a change of claims (`store_changes`: etcd's watch, another daemon's claim).
pub fn spawn_sweeper(c: Arc<Coordination>, store_changes: Option<watch::Receiver<u64>>) {
    // The sweep itself runs on a thread of its own: it waits on the store (SQLite, or etcd
    // over the network) and must neither hold an async worker nor churn the blocking pool.
    let (nudge, nudged) = std::sync::mpsc::channel::<()>();
    let sweeper = Arc::clone(&c);
    let spawned = std::thread::Builder::new().name("rush-sweep".into()).spawn(move || {
        loop {
            match nudged.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            // Nudges that came meanwhile are served by this one sweep.
            while nudged.try_recv().is_ok() {}
            sweeper.sweep();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "claim sweeper not started: lapsed leases end only when claimed again");
        return;
    }
    let mut bus = c.audit.subscribe();
    // What is watched when the store reports nothing (embedded): never changes.
    let (idle, idle_changes) = watch::channel(0u64);
    let mut store_changes = store_changes.unwrap_or(idle_changes);
    // Nudges: an agent's exit (its claims end at once), a change in a shared store.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = store_changes.changed() => if changed.is_err() {
                    store_changes = idle.subscribe();
                    continue;
                },
                ev = bus.recv() => match ev {
                    Ok(e) if e.kind() == "exit" => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
            if nudge.send(()).is_err() {
                return;
            }
        }
    });
}

//! The etcd coordination backend (`[coordination] backend = "etcd"`): claims, intents,
//! results and tasks as keys of an etcd v3 cluster that several daemons share. etcd decides
//! every compare-and-swap; nothing here votes, orders or retries its way to an answer etcd
//! did not give.
//!
//! Keys, under the configured prefix (`/rush/`):
//! - `nodes/NODE`: this daemon's node lease id, bound to that lease (a restarted daemon
//!   takes its lease back while it lives, so its claims outlive the restart);
//! - `claims/TASK`: a [`ClaimRecord`] (JSON), bound to the node lease of the daemon whose
//!   agent holds it. Created by one transaction that fails if the key exists
//!   (`create_revision == 0`). The fencing token is the key's create revision (etcd's
//!   revision only grows, so each new holding of a task gets a higher one), and so is the
//!   holding's `lease` id (the etcd lease is shared by all a node's claims and names no
//!   holding);
//! - `intents/ID` with an etcd lease of the intent's own TTL; `tasks/ID`; IDs from
//!   `counters/intents` and `counters/tasks`, incremented in the transaction that puts the
//!   item;
//! - `results/SESSION/KEY` (metadata) and `blobs/SHA256` (the content, at most 700 KiB:
//!   below etcd's default 1.5 MiB request limit), so any daemon can read any result.
//!
//! The daemon's code calling this is synchronous (some of it on async workers), so the
//! client runs on a thread of its own with its own tokio runtime; a call hands it the work
//! and waits for the answer on a channel, at most [`OP_TIMEOUT`], as an SQLite call blocks
//! its caller. That thread also keeps the node lease alive (every TTL/3; a lost lease, as
//! after a SIGSTOP longer than the TTL, is replaced and logged as an error) and watches
//! `claims/`, bumping [`Etcd::changes`] on every change so the daemon mirrors other
//! daemons' claims into its kernel.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use rush_proto::coordination::{Claim, Intent, ResultInfo, Task, TaskState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::adapters::store::{ClaimRecord, ClaimSwap};

/// The longest a call waits for etcd, retries included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// One request's own limit (a member that accepted a connection and went silent).
/// A proposal made on a follower just as the leader dies waits for nothing: this bounds
/// how long a claim takes to be decided by the next leader (about an election more).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Between two tries of a request that found no member answering.
const RETRY_PAUSE: Duration = Duration::from_millis(150);

/// `[coordination]`'s etcd keys, checked (config.rs).
#[derive(Debug, Clone)]
pub struct EtcdSetup {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub tls: Option<EtcdTls>,
    /// This daemon's name among the daemons sharing the cluster.
    pub node: String,
}

#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    /// A client certificate and its key, for clusters that check clients.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered (all down, or none of them reachable or with a leader).
    /// `maybe_applied`: the request may have reached the cluster (timed out, cut off)
    /// and been carried out.
    #[error("coordination store (etcd at {endpoints}) unreachable: {cause}")]
    Unreachable { endpoints: String, cause: String, maybe_applied: bool },
    /// etcd answered, and refused.
    #[error("coordination store (etcd at {endpoints}) refused the request: {cause}")]
    Refused { endpoints: String, cause: String },
    #[error("coordination store (etcd at {endpoints}): key {key}: {what}")]
    Corrupt { endpoints: String, key: String, what: String },
    #[error("coordination.{key}: cannot read {}", path.display())]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordination.etcd_endpoints: {0}")]
    Config(String),
    #[error("coordination store (etcd): its client thread is gone")]
    Gone,
    #[error("coordination store (etcd): cannot start its client thread")]
    Thread(#[source] std::io::Error),
}

impl EtcdError {
    /// Whether trying again may help; with `idempotent` false, only when the request
    /// surely was not carried out.
    fn retry(&self, idempotent: bool) -> bool {
        matches!(self, EtcdError::Unreachable { maybe_applied, .. } if idempotent || !maybe_applied)
    }
}

/// The client, on its own thread. Dropping it stops that thread (the node lease is not
/// revoked: agents may outlive the daemon, and a restarted daemon takes the lease back).
pub struct Etcd {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    changes: watch::Receiver<u64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Inner {
    client: Client,
    prefix: String,
    /// The endpoints, comma-separated, for messages.
    endpoints: String,
    lease_ttl: Duration,
    node: String,
    /// The node lease, once granted (or taken back); None after it was found lost.
    lease: tokio::sync::Mutex<Option<i64>>,
    /// The same, readable without the runtime (doctor).
    lease_seen: std::sync::Mutex<Option<i64>>,
    changes: watch::Sender<u64>,
}

impl Etcd {
    /// Starts the client thread. Reaching etcd is not required yet (a daemon may start
    /// before the cluster): requests fail, naming the endpoints, until it answers.
    pub fn start(setup: EtcdSetup) -> Result<Etcd, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the majority answers "no leader" at once instead of
            // serving what it last knew or waiting.
            .with_require_leader(true);
        if let Some(tls) = &setup.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let (changes_tx, changes) = watch::channel(0u64);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EtcdError::Thread(e)));
                        return;
                    }
                };
                let endpoints = setup.endpoints.join(",");
                let client = rt.block_on(Client::connect(&setup.endpoints, Some(options)));
                let client = match client {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EtcdError::Config(format!("{endpoints}: {e}"))));
                        return;
                    }
                };
                let inner = Arc::new(Inner {
                    client,
                    prefix: setup.prefix,
                    endpoints,
                    lease_ttl: setup.lease_ttl,
                    node: setup.node,
                    lease: tokio::sync::Mutex::new(None),
                    lease_seen: std::sync::Mutex::new(None),
                    changes: changes_tx,
                });
                rt.spawn(keep_node_lease(inner.clone()));
                rt.spawn(watch_claims(inner.clone()));
                let _ = ready_tx.send(Ok((inner, rt.handle().clone())));
                // Runs the client's tasks until the adapter is dropped.
                let _ = rt.block_on(stop_rx);
            })
            .map_err(EtcdError::Thread)?;
        let (inner, handle) = ready_rx.recv().map_err(|_| EtcdError::Gone)??;
        Ok(Etcd { inner, handle, changes, _stop: stop_tx })
    }

    /// Bumped whenever a claim changed in etcd (any daemon's), the watch was (re)started
    /// (changes may have been missed), or this daemon's node lease was lost.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Runs `op` on the client's thread and waits for its answer; retries it while no
    /// member answers, up to [`OP_TIMEOUT`] in all.
    fn call<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EtcdError>> + Send,
    {
        self.call_within(OP_TIMEOUT, true, op)
    }

    /// [`Etcd::call`] for an operation that must not be carried out twice (it allocates
    /// an id): tried again only when the request surely did not reach the cluster.
    fn call_once<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EtcdError>> + Send,
    {
        self.call_within(OP_TIMEOUT, false, op)
    }

    fn call_within<T, F, Fut>(&self, timeout: Duration, idempotent: bool, op: F) -> Result<T, EtcdError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EtcdError>> + Send,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = self.inner.clone();
        self.handle.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let answer = loop {
                match tokio::time::timeout_at(deadline, op(inner.clone())).await {
                    Ok(Err(e))
                        if e.retry(idempotent) && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Ok(answer) => break answer,
                    Err(_) => {
                        break Err(EtcdError::Unreachable {
                            endpoints: inner.endpoints.clone(),
                            cause: format!("no answer within {}s", timeout.as_secs()),
                            maybe_applied: true,
                        });
                    }
                }
            };
            let _ = tx.send(answer);
        });
        rx.recv_timeout(timeout + Duration::from_secs(2)).unwrap_or(Err(EtcdError::Gone))
    }

    pub fn try_claim(&self, new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, EtcdError> {
        self.call(move |i| {
            let new = new.clone();
            async move { i.try_claim(new, now_ms).await }
        })
    }

    pub fn renew_claim(
        &self,
        task: &str,
        node: &str,
        agent: &str,
        ttl_secs: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, EtcdError> {
        let (task, node, agent) = (task.to_owned(), node.to_owned(), agent.to_owned());
        self.call(move |i| {
            let (task, node, agent) = (task.clone(), node.clone(), agent.clone());
            async move { i.renew_claim(&task, &node, &agent, ttl_secs, now_ms).await }
        })
    }

    /// Ends the holding of `task` (only `(node, agent)`'s, when given).
    pub fn release_claim(
        &self,
        task: &str,
        holder: Option<(&str, &str)>,
    ) -> Result<Option<ClaimRecord>, EtcdError> {
        let task = task.to_owned();
        let holder = holder.map(|(n, a)| (n.to_owned(), a.to_owned()));
        self.call(move |i| {
            let (task, holder) = (task.clone(), holder.clone());
            async move { i.release_claim(&task, holder).await }
        })
    }

    /// Ends exactly the version `seen` of a holding (a renew or a new holder wins).
    pub fn end_claim(&self, seen: &ClaimRecord) -> Result<Option<ClaimRecord>, EtcdError> {
        let seen = seen.clone();
        self.call(move |i| {
            let seen = seen.clone();
            async move { i.end_claim(seen).await }
        })
    }

    pub fn live_claims(&self) -> Result<Vec<ClaimRecord>, EtcdError> {
        self.call(|i| async move { i.live_claims().await })
    }

    pub fn add_intent(&self, intent: Intent) -> Result<Intent, EtcdError> {
        self.call_once(move |i| {
            let intent = intent.clone();
            async move { i.add_intent(intent).await }
        })
    }

    pub fn live_intents(&self, now_ms: u64) -> Result<Vec<Intent>, EtcdError> {
        self.call(move |i| async move {
            let mut all: Vec<Intent> = i.range("intents/").await?;
            all.retain(|x| x.expires_unix_ms > now_ms);
            all.sort_by_key(|x| x.id);
            Ok(all)
        })
    }

    /// Stores a result; with `fence` (task, fencing token), in one transaction that
    /// requires the task's key to be that holding (its create revision), after checking
    /// that the holding is `node`'s agent `r.agent`'s and unlapsed. `Ok(Err(holding))`:
    /// the fence is stale.
    pub fn put_result(
        &self,
        r: &ResultInfo,
        fence: Option<(&str, u64)>,
        node: &str,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, EtcdError> {
        let (r, node) = (r.clone(), node.to_owned());
        let fence = fence.map(|(t, f)| (t.to_owned(), f));
        self.call(move |i| {
            let (r, node, fence) = (r.clone(), node.clone(), fence.clone());
            async move { i.put_result(r, fence, &node, now_ms).await }
        })
    }

    /// Results of one session (None: agents without one), by key.
    pub fn results(&self, session: Option<&str>) -> Result<Vec<ResultInfo>, EtcdError> {
        let prefix = format!("results/{}/", session.unwrap_or(""));
        self.call(move |i| {
            let prefix = prefix.clone();
            async move {
                let mut all: Vec<ResultInfo> = i.range(&prefix).await?;
                all.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(all)
            }
        })
    }

    pub fn all_results(&self) -> Result<Vec<ResultInfo>, EtcdError> {
        self.call(|i| async move {
            let mut all: Vec<ResultInfo> = i.range("results/").await?;
            all.sort_by(|a, b| (&a.session, &a.key).cmp(&(&b.session, &b.key)));
            Ok(all)
        })
    }

    /// Stores a result's content under its digest, once.
    pub fn put_blob(&self, sha256: &str, content: &[u8]) -> Result<(), EtcdError> {
        let (sha, content) = (sha256.to_owned(), content.to_vec());
        self.call(move |i| {
            let (sha, content) = (sha.clone(), content.clone());
            async move {
                let key = i.key(&format!("blobs/{sha}"));
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, content, None)]);
                i.client.clone().txn(txn).await.map_err(|e| i.fail(e))?;
                Ok(())
            }
        })
    }

    pub fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let sha = sha256.to_owned();
        self.call(move |i| {
            let sha = sha.clone();
            async move { Ok(i.get(&i.key(&format!("blobs/{sha}"))).await?.map(|kv| kv.value().to_vec())) }
        })
    }

    pub fn add_task(&self, task: Task) -> Result<Task, EtcdError> {
        self.call_once(move |i| {
            let task = task.clone();
            async move {
                let mut out = None;
                let id = i
                    .allocate("tasks", None, |id| {
                        let mut t = task.clone();
                        t.id = id;
                        t.result_key = rush_proto::coordination::task_result_key(id);
                        let value = serde_json::to_vec(&t).unwrap_or_default();
                        out = Some(t);
                        (format!("tasks/{id}"), value)
                    })
                    .await?;
                out.filter(|t| t.id == id).ok_or_else(|| i.refused("task id not allocated"))
            }
        })
    }

    pub fn task(&self, id: u64) -> Result<Option<Task>, EtcdError> {
        self.call(move |i| async move {
            let key = i.key(&format!("tasks/{id}"));
            match i.get(&key).await? {
                Some(kv) => Ok(Some(i.parse(&kv)?)),
                None => Ok(None),
            }
        })
    }

    /// Open tasks delegated to `agent`, oldest first.
    pub fn open_tasks(&self, agent: &str) -> Result<Vec<Task>, EtcdError> {
        let agent = agent.to_owned();
        self.call(move |i| {
            let agent = agent.clone();
            async move {
                let mut all: Vec<Task> = i.range("tasks/").await?;
                all.retain(|t| t.to == agent && t.state == TaskState::Open);
                all.sort_by_key(|t| t.id);
                Ok(all)
            }
        })
    }

    /// Ends open task `id` as `state` (done or cancelled); None if it was not open.
    pub fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, EtcdError> {
        self.call(move |i| async move { i.finish_task(id, state).await })
    }

    /// What `rush doctor` says: the cluster's answer (its version and leader) and this
    /// daemon's node lease.
    pub fn probe(&self) -> Result<String, EtcdError> {
        let status = self.call_within(Duration::from_secs(2), true, |i| async move {
            let s = i.client.clone().status().await.map_err(|e| i.fail(e))?;
            Ok((s.version().to_owned(), s.leader()))
        })?;
        let lease = *self.inner.lease_seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(format!(
            "etcd {} at {} answers (leader member {:x}); node {:?}, node lease {} (TTL {}s)",
            status.0,
            self.inner.endpoints,
            status.1,
            self.inner.node,
            lease.map(|l| format!("{l:x}")).unwrap_or_else(|| "not granted yet".into()),
            self.inner.lease_ttl.as_secs()
        ))
    }
}

impl Inner {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn fail(&self, e: etcd_client::Error) -> EtcdError {
        let endpoints = self.endpoints.clone();
        match &e {
            etcd_client::Error::GRpcStatus(s) => {
                // Unavailable (14: no connection, or "no leader"), or Cancelled, Unknown,
                // DeadlineExceeded (1, 2, 4: sent, unanswered): nobody with a leader
                // answered. The numbers are gRPC's, stable on the wire.
                let code = s.code() as i32;
                let mut cause =
                    if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_owned() };
                // What the connection said (connection refused, ...), when it was that.
                let mut root = std::error::Error::source(s);
                while let Some(deeper) = root.and_then(std::error::Error::source) {
                    root = Some(deeper);
                }
                if let Some(why) = root.map(ToString::to_string)
                    && !cause.contains(&why)
                {
                    cause = format!("{cause}: {why}");
                }
                let cause = one_line(&cause);
                if matches!(code, 1 | 2 | 4 | 14) {
                    EtcdError::Unreachable { endpoints, cause, maybe_applied: code != 14 }
                } else {
                    EtcdError::Refused { endpoints, cause }
                }
            }
            etcd_client::Error::TransportError(t) => EtcdError::Unreachable {
                endpoints,
                cause: one_line(&crate::core::error_chain(t)),
                maybe_applied: false,
            },
            etcd_client::Error::IoError(_) | etcd_client::Error::LeaseKeepAliveError(_) => {
                EtcdError::Unreachable { endpoints, cause: one_line(&e.to_string()), maybe_applied: true }
            }
            _ => EtcdError::Refused { endpoints, cause: one_line(&e.to_string()) },
        }
    }

    fn refused(&self, what: &str) -> EtcdError {
        EtcdError::Refused { endpoints: self.endpoints.clone(), cause: what.into() }
    }

    fn corrupt(&self, key: &[u8], what: impl Into<String>) -> EtcdError {
        EtcdError::Corrupt {
            endpoints: self.endpoints.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            what: what.into(),
        }
    }

    fn json<T: Serialize>(&self, key: &str, v: &T) -> Result<Vec<u8>, EtcdError> {
        serde_json::to_vec(v).map_err(|e| self.corrupt(key.as_bytes(), e.to_string()))
    }

    fn parse<T: DeserializeOwned>(&self, kv: &KeyValue) -> Result<T, EtcdError> {
        serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(kv.key(), e.to_string()))
    }

    /// A claim as read: its fencing token and lease id are the key's create revision.
    fn claim_of(&self, kv: &KeyValue) -> Result<ClaimRecord, EtcdError> {
        let mut r: ClaimRecord = self.parse(kv)?;
        r.claim.fencing = kv.create_revision() as u64;
        r.claim.lease = kv.create_revision() as u64;
        r.version = kv.mod_revision() as u64;
        Ok(r)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let resp = self.client.clone().get(key, None).await.map_err(|e| self.fail(e))?;
        Ok(resp.kvs().first().cloned())
    }

    /// Every value under `PREFIX rest`.
    async fn range<T: DeserializeOwned>(&self, rest: &str) -> Result<Vec<T>, EtcdError> {
        let resp = self
            .client
            .clone()
            .get(self.key(rest), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e))?;
        resp.kvs().iter().map(|kv| self.parse(kv)).collect()
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.client.clone().txn(txn).await
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The node lease, granted (or taken back from `nodes/NODE`) when there is none.
    async fn node_lease(&self) -> Result<i64, EtcdError> {
        let mut lease = self.lease.lock().await;
        if let Some(id) = *lease {
            return Ok(id);
        }
        let node_key = self.key(&format!("nodes/{}", self.node));
        let mut client = self.client.clone();
        // A daemon restarted within the TTL takes its lease back: its claims live on.
        if let Some(kv) = self.get(&node_key).await?
            && let Ok(id) = std::str::from_utf8(kv.value()).unwrap_or("").parse::<i64>()
            && client.lease_client().time_to_live(id, None).await.is_ok_and(|t| t.ttl() > 0)
        {
            tracing::info!(node = %self.node, lease = format!("{id:x}"), "etcd: node lease taken back");
            *lease = Some(id);
            *self.lease_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            return Ok(id);
        }
        let ttl = self.lease_ttl.as_secs() as i64;
        let id = client.lease_grant(ttl, None).await.map_err(|e| self.fail(e))?.id();
        client
            .put(node_key, id.to_string(), Some(PutOptions::new().with_lease(id)))
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!(node = %self.node, lease = format!("{id:x}"), ttl, "etcd: node lease granted");
        *lease = Some(id);
        *self.lease_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        Ok(id)
    }

    /// `id` is gone at etcd (expired): every claim bound to it went with it.
    async fn lease_lost(&self, id: i64) {
        let mut lease = self.lease.lock().await;
        if *lease == Some(id) {
            *lease = None;
            *self.lease_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::error!(
                node = %self.node,
                lease = format!("{id:x}"),
                ttl_secs = self.lease_ttl.as_secs(),
                "etcd: this daemon's node lease EXPIRED (it was stopped, or cut off from the cluster's majority, \
                 longer than the TTL): every claim its agents held is gone and may be held by others now; \
                 a new lease is granted for new claims"
            );
        }
        drop(lease);
        self.bump();
    }

    async fn try_claim(&self, mut new: ClaimRecord, now_ms: u64) -> Result<ClaimSwap, EtcdError> {
        let key = self.key(&format!("claims/{}", new.claim.task));
        new.claim.acquired_unix_ms = now_ms;
        new.claim.expires_unix_ms = now_ms + new.ttl_secs * 1000;
        new.claim.lease = 0;
        new.claim.fencing = 0;
        let value = self.json(&key, &new)?;
        let mut displaced = None;
        // 1: create, or see who holds it; 2: after ending a lapsed holding, create once
        // more (another daemon may win that one: then this claim lost); 3: a holding seen
        // in 1 or 2 was released before it could be read.
        for _ in 0..3 {
            let lease = self.node_lease().await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = match self.txn(txn).await {
                Ok(r) => r,
                Err(e) if lease_not_found(&e) => {
                    self.lease_lost(lease).await;
                    continue;
                }
                Err(e) => return Err(self.fail(e)),
            };
            if resp.succeeded() {
                let revision = resp.header().map_or(0, |h| h.revision()) as u64;
                let mut record = new;
                record.claim.lease = revision;
                record.claim.fencing = revision;
                record.version = revision;
                return Ok(ClaimSwap::Won { record, displaced });
            }
            let Some(kv) = got(&resp) else { continue };
            let held = self.claim_of(&kv)?;
            if held.claim.expires_unix_ms > now_ms || displaced.is_some() {
                return Ok(if held.node == new.node && held.claim.agent == new.claim.agent {
                    ClaimSwap::AlreadyHeld(held)
                } else {
                    ClaimSwap::Lost(held)
                });
            }
            // Lapsed: end exactly that version (a renew in between wins), then try again.
            let end = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::delete(key.clone(), None)]);
            if self.txn(end).await.map_err(|e| self.fail(e))?.succeeded() {
                displaced = Some(Box::new(held));
            }
        }
        Err(self.refused(&format!("claim {:?}: the key kept changing under three tries", new.claim.task)))
    }

    async fn renew_claim(
        &self,
        task: &str,
        node: &str,
        agent: &str,
        ttl_secs: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<ClaimRecord>, EtcdError> {
        let key = self.key(&format!("claims/{task}"));
        for _ in 0..3 {
            let Some(kv) = self.get(&key).await? else { return Ok(None) };
            let mut r = self.claim_of(&kv)?;
            if r.node != node || r.claim.agent != agent || r.claim.expires_unix_ms <= now_ms {
                return Ok(None);
            }
            if let Some(ttl) = ttl_secs {
                r.ttl_secs = ttl;
            }
            r.claim.expires_unix_ms = now_ms + r.ttl_secs * 1000;
            // The same key, the same lease: its create revision (the fencing token) stays.
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.json(&key, &r)?,
                    Some(PutOptions::new().with_lease(kv.lease())),
                )]);
            let resp = self.txn(txn).await.map_err(|e| self.fail(e))?;
            if resp.succeeded() {
                r.version = resp.header().map_or(0, |h| h.revision()) as u64;
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn release_claim(
        &self,
        task: &str,
        holder: Option<(String, String)>,
    ) -> Result<Option<ClaimRecord>, EtcdError> {
        let key = self.key(&format!("claims/{task}"));
        let Some(kv) = self.get(&key).await? else { return Ok(None) };
        let r = self.claim_of(&kv)?;
        if holder.is_some_and(|(node, agent)| r.node != node || r.claim.agent != agent) {
            return Ok(None);
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, kv.create_revision())])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await.map_err(|e| self.fail(e))?.succeeded().then_some(r))
    }

    async fn end_claim(&self, seen: ClaimRecord) -> Result<Option<ClaimRecord>, EtcdError> {
        let key = self.key(&format!("claims/{}", seen.claim.task));
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, seen.version as i64)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await.map_err(|e| self.fail(e))?.succeeded().then_some(seen))
    }

    async fn live_claims(&self) -> Result<Vec<ClaimRecord>, EtcdError> {
        let resp = self
            .client
            .clone()
            .get(self.key("claims/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail(e))?;
        resp.kvs().iter().map(|kv| self.claim_of(kv)).collect()
    }

    async fn add_intent(&self, mut intent: Intent) -> Result<Intent, EtcdError> {
        // Its own lease: etcd deletes it when it lapses (a second late: never early).
        let ttl = (intent.expires_unix_ms.saturating_sub(intent.created_unix_ms)).div_ceil(1000) + 1;
        let lease = self.client.clone().lease_grant(ttl as i64, None).await.map_err(|e| self.fail(e))?.id();
        let mut out = None;
        let id = self
            .allocate("intents", Some(lease), |id| {
                intent.id = id;
                out = Some(intent.clone());
                (format!("intents/{id}"), serde_json::to_vec(&intent).unwrap_or_default())
            })
            .await?;
        out.filter(|i| i.id == id).ok_or_else(|| self.refused("intent id not allocated"))
    }

    /// The next id of `counters/WHAT`, and the item `make(id)` names (`(key, value)`),
    /// put in the same transaction as the counter, bound to `lease` when given.
    async fn allocate(
        &self,
        what: &str,
        lease: Option<i64>,
        mut make: impl FnMut(u64) -> (String, Vec<u8>),
    ) -> Result<u64, EtcdError> {
        let counter = self.key(&format!("counters/{what}"));
        for _ in 0..64 {
            let (last, unchanged) = match self.get(&counter).await? {
                Some(kv) => {
                    let n = std::str::from_utf8(kv.value())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| self.corrupt(kv.key(), "not a number"))?;
                    (n, Compare::mod_revision(counter.clone(), CompareOp::Equal, kv.mod_revision()))
                }
                None => (0, Compare::create_revision(counter.clone(), CompareOp::Equal, 0)),
            };
            let id = last + 1;
            let (rest, value) = make(id);
            let put = PutOptions::new();
            let put = match lease {
                Some(l) => put.with_lease(l),
                None => put,
            };
            let txn = Txn::new().when([unchanged]).and_then([
                TxnOp::put(counter.clone(), id.to_string(), None),
                TxnOp::put(self.key(&rest), value, Some(put)),
            ]);
            if self.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                return Ok(id);
            }
        }
        Err(self.refused(&format!("{counter}: too many daemons allocating at once")))
    }

    async fn put_result(
        &self,
        r: ResultInfo,
        fence: Option<(String, u64)>,
        node: &str,
        now_ms: u64,
    ) -> Result<Result<(), Option<Claim>>, EtcdError> {
        let key = self.key(&format!("results/{}/{}", r.session.as_deref().unwrap_or(""), r.key));
        let value = self.json(&key, &r)?;
        let Some((task, fencing)) = fence else {
            self.client.clone().put(key, value, None).await.map_err(|e| self.fail(e))?;
            return Ok(Ok(()));
        };
        let claim_key = self.key(&format!("claims/{task}"));
        for _ in 0..3 {
            let held = match self.get(&claim_key).await? {
                Some(kv) => Some(self.claim_of(&kv)?).filter(|h| h.claim.expires_unix_ms > now_ms),
                None => None,
            };
            match held {
                Some(h) if h.claim.fencing == fencing && h.claim.agent == r.agent && h.node == node => {}
                other => return Ok(Err(other.map(|h| h.claim))),
            }
            let txn = Txn::new()
                .when([Compare::create_revision(claim_key.clone(), CompareOp::Equal, fencing as i64)])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            if self.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                return Ok(Ok(()));
            }
        }
        Ok(Err(None))
    }

    async fn finish_task(&self, id: u64, state: TaskState) -> Result<Option<Task>, EtcdError> {
        let key = self.key(&format!("tasks/{id}"));
        for _ in 0..3 {
            let Some(kv) = self.get(&key).await? else { return Ok(None) };
            let mut task: Task = self.parse(&kv)?;
            if task.state != TaskState::Open {
                return Ok(None);
            }
            task.state = state;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(key.clone(), self.json(&key, &task)?, None)]);
            if self.txn(txn).await.map_err(|e| self.fail(e))?.succeeded() {
                return Ok(Some(task));
            }
        }
        Ok(None)
    }
}

/// The key an unsuccessful transaction's `get` found, if it still existed.
fn got(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// etcd's answer to a put bound to a lease that expired.
fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, EtcdError> {
    let read = |key, path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile { key, path: path.clone(), source })
    };
    let mut options =
        TlsOptions::new().ca_certificate(Certificate::from_pem(read("etcd_ca_file", &tls.ca_file)?));
    if let Some((cert, key)) = &tls.identity {
        options =
            options.identity(Identity::from_pem(read("etcd_cert_file", cert)?, read("etcd_key_file", key)?));
    }
    Ok(options)
}

/// Keeps the node lease alive every TTL/3; a lease found expired is replaced (loudly).
async fn keep_node_lease(inner: Arc<Inner>) {
    let period = (inner.lease_ttl / 3).max(Duration::from_millis(500));
    let mut complained = false;
    loop {
        let id = match inner.node_lease().await {
            Ok(id) => id,
            Err(e) => {
                if !complained {
                    tracing::error!(error = %e, "etcd: no node lease: claims cannot be made until etcd answers");
                    complained = true;
                }
                tokio::time::sleep(period.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        let mut lease_client = inner.client.lease_client();
        let (mut keeper, mut stream) = match lease_client.keep_alive(id).await {
            Ok(k) => k,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                inner.lease_lost(id).await;
                continue;
            }
            Err(e) => {
                if !complained {
                    tracing::warn!(error = %inner.fail(e), "etcd: node lease keep-alive failed; retrying");
                    complained = true;
                }
                tokio::time::sleep(period.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        if complained {
            tracing::info!(lease = format!("{id:x}"), "etcd: node lease kept alive again");
            complained = false;
        }
        loop {
            tokio::time::sleep(period).await;
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    inner.lease_lost(id).await;
                    break;
                }
                // The member went away, or did not answer in time: a new stream (through
                // whichever member answers) tells whether the lease still lives.
                _ => break,
            }
        }
    }
}

/// Watches `claims/`: every change bumps `changes` (the daemon then mirrors the claims
/// into its kernel). Re-established when the member it is on goes away.
async fn watch_claims(inner: Arc<Inner>) {
    let key = inner.key("claims/");
    loop {
        let stream =
            inner.client.watch_client().watch(key.clone(), Some(WatchOptions::new().with_prefix())).await;
        if let Ok(mut stream) = stream {
            // Changes made while no watch was open are seen by reading again.
            inner.bump();
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() {
                    break;
                }
                if !resp.events().is_empty() {
                    inner.bump();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

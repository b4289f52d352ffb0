//! Cost budgets: a metering proxy for model APIs, one per agent with a cost budget.
//!
//! The agent sends its model API calls to a loopback port ([`AgentMeter::addr`]); the
//! proxy forwards them to the configured upstream, relays the answer as it arrives, and
//! charges the usage the answer reports (see [`usage`]) at the configured prices to the
//! agent's [`Ledger`]. Once the ledger's spend reaches its limit, further calls are not
//! forwarded: they get `402 Payment Required` with a JSON error in the API's own style
//! naming the budget. 402 rather than 429: SDKs retry 429 with backoff, but a spent budget
//! does not come back by waiting, so the agent should fail fast instead of retrying.
//!
//! Money is integer micro-dollars (µ$) throughout; a price in USD per million tokens is
//! exactly µ$ per token.
//!
//! ```toml
//! [meter]
//! upstream = "https://api.openai.com/v1"  # the default route; the path is a prefix
//! ca_file = "/etc/rush/extra-ca.pem"      # trusted besides the system's roots (optional)
//! connect_timeout_secs = 10
//! idle_timeout_secs = 600                 # longest silence from either side mid-call
//! include_stream_usage = true             # see below
//!
//! [meter.prices]                          # USD per million tokens
//! "gpt-4o" = { input = 2.5, output = 10 }
//! default = { input = 3, output = 15 }    # models nothing else matches
//!
//! [meter.routes.anthropic]                # calls to /anthropic/... on the meter's port
//! upstream = "https://api.anthropic.com"
//! env = ["ANTHROPIC_BASE_URL"]            # = http://127.0.0.1:PORT/anthropic in the agent
//! prices = { "claude-sonnet*" = { input = 3, output = 15 } }   # prefix match, longest wins
//! ```
//!
//! See [`config`] for routes. A model no key matches, with no `default`, is charged at the
//! highest input and output prices configured (and logged), never at zero.
//!
//! Choices, and why:
//! - hyper on both sides: agents may speak HTTP/1.1 or HTTP/2 (prior knowledge) to the
//!   meter; upstreams get HTTP/2 when their TLS offers it (ALPN), else HTTP/1.1. Upstream
//!   connections are pooled per meter (one agent), so TLS handshakes are not paid per call.
//! - rustls with the system's roots, plus `ca_file`. Plain `http://` upstreams stay allowed
//!   (a local model server).
//! - The request body is read whole (up to 64 MiB) before it is forwarded: the meter
//!   needs its `model`, and forwards it with a Content-Length whatever framing it came in.
//! - Upstreams are asked for `Accept-Encoding: identity`, so answers can be read.
//! - OpenAI streams report usage only when asked: streamed `/completions` calls get
//!   `stream_options.include_usage = true` added, else they would run unmetered.
//! - Response bodies are relayed frame by frame as they arrive (server-sent events
//!   included) and read on the way; the charge is made when the answer ends. If the agent
//!   hangs up early the proxy still reads the answer to its end, since the provider bills
//!   it all the same.
//! - A call is admitted while spend < limit, and its cost is only known at its end, so
//!   concurrent calls can overshoot the limit by what they cost; the next call is refused.
//! - Successful POST answers whose usage cannot be read (not JSON, none reported) are
//!   relayed uncharged, logged and counted as unmetered; error answers and other methods
//!   (GET /models) are not billed by the providers and are not counted.

pub mod config;
#[cfg(test)]
mod http;
mod proxy;
pub mod usage;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use self::config::{MeterConfig, Route, RouteConfig, Scheme, Upstream};
use self::proxy::Proxy;

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("meter.upstream is not set: agents with a cost budget need a model API to forward to")]
    NoUpstream,
    #[error("meter.prices is empty: agents with a cost budget need the prices of their models")]
    NoPrices,
    #[error("meter route {route}: {why}")]
    Route { route: String, why: String },
    #[error("meter.ca_file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("cannot listen on 127.0.0.1 for agent {agent}'s meter")]
    Listen { agent: String, source: std::io::Error },
}

/// One agent's spend against its limit. Shared with the daemon, which persists it.
#[derive(Debug)]
pub struct Ledger {
    used: AtomicU64,
    limit: AtomicU64,
    calls: AtomicU64,
    unmetered: AtomicU64,
    refused: AtomicU64,
}

impl Ledger {
    pub fn new(limit_micro_usd: u64) -> Ledger {
        Ledger {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit_micro_usd),
            calls: AtomicU64::new(0),
            unmetered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn used_micro_usd(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Calls forwarded that the upstream answered.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Successful calls whose usage could not be read, so were not charged.
    pub fn unmetered_calls(&self) -> u64 {
        self.unmetered.load(Ordering::SeqCst)
    }

    /// Calls refused at the budget.
    pub fn refused_calls(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Whether the budget is spent: calls are refused while it is.
    pub fn is_spent(&self) -> bool {
        self.used_micro_usd() >= self.limit()
    }

    /// A new limit; raised above the spend, calls flow again.
    pub fn set_limit(&self, limit_micro_usd: u64) {
        self.limit.store(limit_micro_usd, Ordering::SeqCst);
    }

    /// Spend and calls as saved before a daemon restart.
    pub fn restore(&self, used_micro_usd: u64, calls: u64) {
        self.used.store(used_micro_usd, Ordering::SeqCst);
        self.calls.store(calls, Ordering::SeqCst);
    }

    /// Adds `micro_usd`; the spend before and after.
    fn charge(&self, micro_usd: u64) -> (u64, u64) {
        let before = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_add(micro_usd)))
            .unwrap_or_else(|u| u);
        (before, before.saturating_add(micro_usd))
    }
}

/// What the meter tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterEvent {
    /// A call's reported usage was charged.
    Charged { agent: String, model: String, input_tokens: u64, output_tokens: u64, micro_usd: u64 },
    /// This charge took the spend from under the limit to at or over it (once per crossing).
    Exceeded { agent: String, used_micro_usd: u64, limit_micro_usd: u64 },
    /// A call was refused at the budget.
    Refused { agent: String, used_micro_usd: u64, limit_micro_usd: u64 },
    /// A successful answer whose usage could not be read: relayed, not charged.
    Unmetered { agent: String, status: u16, reason: String },
}

/// A running meter. Dropping it (or [`AgentMeter::stop`]) closes its port and every
/// connection through it; the ledger lives on with whoever holds it.
#[derive(Debug)]
pub struct AgentMeter {
    pub addr: SocketAddr,
    pub ledger: Arc<Ledger>,
    /// What the agent's environment gets: `VAR=http://127.0.0.1:PORT[/route]`.
    pub env: Vec<(String, String)>,
    stop: Option<watch::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AgentMeter {
    /// Stops the meter, returning once its port is closed.
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AgentMeter {
    fn drop(&mut self) {
        // The connections end when the sender goes; the accept loop is aborted outright.
        self.stop.take();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts `agent`'s meter on an ephemeral loopback port.
pub async fn start(
    cfg: Arc<MeterConfig>,
    agent: String,
    limit_micro_usd: u64,
    events: mpsc::UnboundedSender<MeterEvent>,
) -> Result<AgentMeter, MeterError> {
    start_on(cfg, agent, 0, limit_micro_usd, events).await
}

/// [`start`] on a given loopback port (0 = any): a restarted daemon takes the port an
/// adopted agent was told about again.
pub async fn start_on(
    cfg: Arc<MeterConfig>,
    agent: String,
    port: u16,
    limit_micro_usd: u64,
    events: mpsc::UnboundedSender<MeterEvent>,
) -> Result<AgentMeter, MeterError> {
    let routes = cfg.routes()?;
    let client = proxy::upstream_client(&cfg)?;
    let listen_err = |source| MeterError::Listen { agent: agent.clone(), source };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let ledger = Arc::new(Ledger::new(limit_micro_usd));
    for r in &routes {
        tracing::info!(agent = %agent, %addr, route = %r.name, path = %r.path, upstream = %r.upstream, limit_micro_usd, "meter started");
    }
    let env = environment(addr, &routes);
    let proxy = Arc::new(Proxy::new(cfg, routes, client, agent, ledger.clone(), events));
    let (stop, stopped) = watch::channel(());
    let task = tokio::spawn(accept_loop(listener, proxy, stopped));
    Ok(AgentMeter { addr, ledger, env, stop: Some(stop), task: Some(task) })
}

/// The variables that point an agent's SDKs at its meter: each route's own, and
/// RUSH_METER_URL at the root.
fn environment(addr: SocketAddr, routes: &[Route]) -> Vec<(String, String)> {
    let mut env = vec![(config::METER_URL_ENV.to_owned(), format!("http://{addr}"))];
    for r in routes {
        env.extend(r.env.iter().map(|v| (v.clone(), format!("http://{addr}{}", r.path))));
    }
    env
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, mut stopped: watch::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let (proxy, mut stopped) = (proxy.clone(), stopped.clone());
                tokio::spawn(async move {
                    let serving = proxy.serve(stream, stopped.clone());
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = serving => {}
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(agent = %proxy.agent, error = %e, "meter: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Micro-dollars as `$D.DDDDDD`.
pub fn usd(micro_usd: u64) -> String {
    format!("${}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000)
}

#[cfg(test)]
mod tests;

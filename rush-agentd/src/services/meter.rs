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
//! upstream = "http://127.0.0.1:8080/v1"   # http only for now; the path is a prefix
//! connect_timeout_secs = 10
//! idle_timeout_secs = 600                 # longest silence from either side mid-call
//! include_stream_usage = true             # see below
//!
//! [meter.prices]                          # USD per million tokens
//! "gpt-4o" = { input = 2.5, output = 10 }
//! "claude-3-5-sonnet*" = { input = 3, output = 15 }   # prefix match, longest wins
//! default = { input = 3, output = 15 }    # models nothing else matches
//! ```
//!
//! A model no key matches, with no `default`, is charged at the highest input and output
//! prices configured (and logged), never at zero.
//!
//! Choices, and why:
//! - HTTP/1.1 by hand ([`http`]), no hyper: one request and one response at a time is all
//!   this needs, and the daemon builds on a 2-core machine. For the same reason there is
//!   no TLS: `https://` upstreams are refused when the config is read.
//! - Client connections are kept alive: SDKs pool connections and send several calls on
//!   one. Each call still goes upstream on a connection of its own (`Connection: close`),
//!   so nothing about one call can leak into the next.
//! - The request body is read whole (up to 64 MiB) before it is forwarded: the meter
//!   needs its `model`, and forwards it with a Content-Length whatever framing it came in.
//! - Upstreams are asked for `Accept-Encoding: identity`, so answers can be read.
//! - OpenAI streams report usage only when asked: streamed `/completions` calls get
//!   `stream_options.include_usage = true` added, else they would run unmetered.
//! - Response bodies are relayed as they arrive (server-sent events included) and read
//!   on the way; the charge is made when the answer ends. If the agent hangs up early the
//!   proxy still reads the answer to its end, since the provider bills it all the same.
//! - A call is admitted while spend < limit, and its cost is only known at its end, so
//!   concurrent calls can overshoot the limit by what they cost; the next call is refused.
//! - Successful POST answers whose usage cannot be read (not JSON, none reported) are
//!   relayed uncharged, logged and counted as unmetered; error answers and other methods
//!   (GET /models) are not billed by the providers and are not counted.

pub mod http;
pub mod usage;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use self::http::{BodyReader, Framing, Headers, HttpError, RequestHead, ResponseHead};
use self::usage::{BodyMeter, PriceMatch, Prices};

/// The largest request body forwarded.
const MAX_REQUEST_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("meter.upstream is not set: agents with a cost budget need a model API to forward to")]
    NoUpstream,
    #[error("meter.prices is empty: agents with a cost budget need the prices of their models")]
    NoPrices,
    #[error("cannot listen on 127.0.0.1 for agent {agent}'s meter")]
    Listen { agent: String, source: std::io::Error },
}

/// `[meter]` of the daemon's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeterConfig {
    pub upstream: Option<Upstream>,
    pub prices: Prices,
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub include_stream_usage: bool,
}

impl MeterConfig {
    /// Whether a meter can run: an upstream to forward to and prices to charge with.
    pub fn check(&self) -> Result<(), MeterError> {
        if self.upstream.is_none() {
            return Err(MeterError::NoUpstream);
        }
        if self.prices.is_empty() {
            return Err(MeterError::NoPrices);
        }
        Ok(())
    }
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            upstream: None,
            prices: Prices::default(),
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            include_stream_usage: true,
        }
    }
}

/// `http://HOST[:PORT][/PREFIX]`: where calls go; PREFIX is put before each call's path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// Empty, or starts with `/` and does not end with one.
    pub prefix: String,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Upstream, String> {
        let bad = |why: &str| Err(format!("meter.upstream {s:?}: {why}"));
        let Some(rest) = s.strip_prefix("http://") else {
            if s.starts_with("https://") {
                return bad(
                    "TLS upstreams are not supported yet; give an http:// endpoint (such as a local \
                     TLS-terminating forwarder)",
                );
            }
            return bad("must be http://HOST[:PORT][/PREFIX]");
        };
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return bad("credentials do not belong in the URL");
        }
        if prefix.contains(['?', '#']) {
            return bad("a query or fragment cannot be a path prefix");
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => match port.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return bad("bad IPv6 authority"),
                },
                None => return bad("bad IPv6 authority"),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port.map(str::parse::<u16>) {
            None => 80,
            Some(Ok(p)) if p > 0 => p,
            Some(_) => return bad("bad port"),
        };
        if host.is_empty() {
            return bad("no host");
        }
        Ok(Upstream { host: host.to_owned(), port, prefix: prefix.trim_end_matches('/').to_owned() })
    }
}

impl TryFrom<String> for Upstream {
    type Error = String;

    fn try_from(s: String) -> Result<Upstream, String> {
        s.parse()
    }
}

impl Upstream {
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 80 { host } else { format!("{host}:{}", self.port) }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.host_header(), self.prefix)
    }
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
    cfg.check()?;
    let upstream = cfg.upstream.clone().ok_or(MeterError::NoUpstream)?;
    let listen_err = |source| MeterError::Listen { agent: agent.clone(), source };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let ledger = Arc::new(Ledger::new(limit_micro_usd));
    tracing::info!(agent = %agent, %addr, %upstream, limit_micro_usd, "meter started");
    let proxy = Arc::new(Proxy { cfg, upstream, agent, ledger: ledger.clone(), events });
    let (stop, stopped) = watch::channel(());
    let task = tokio::spawn(accept_loop(listener, proxy, stopped));
    Ok(AgentMeter { addr, ledger, stop: Some(stop), task: Some(task) })
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
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = proxy.serve(stream) => {}
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

/// The style of the API a call is for, so errors look like that API's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    OpenAi,
    Anthropic,
}

impl Style {
    fn of(req: &RequestHead) -> Style {
        let path = req.target.split('?').next().unwrap_or("");
        if req.headers.get("anthropic-version").is_some() || path.ends_with("/messages") {
            Style::Anthropic
        } else {
            Style::OpenAi
        }
    }

    fn error(self, kind: &str, message: &str) -> Value {
        match self {
            Style::OpenAi => {
                json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
            }
            Style::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        402 => "Payment Required",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Whether the client connection carries on after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1): they concern one connection, never relayed.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields the proxy sets itself.
const REWRITTEN: [&str; 4] = ["host", "content-length", "expect", "accept-encoding"];

/// The path (and query) of a request target in origin or absolute form.
fn origin_path(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target.strip_prefix("http://")?;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

struct Proxy {
    cfg: Arc<MeterConfig>,
    upstream: Upstream,
    agent: String,
    ledger: Arc<Ledger>,
    events: mpsc::UnboundedSender<MeterEvent>,
}

type ClientReader = BufReader<OwnedReadHalf>;

impl Proxy {
    fn idle(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_secs.max(1))
    }

    fn send(&self, event: MeterEvent) {
        // The daemon gone means shutdown: nobody left to tell.
        let _ = self.events.send(event);
    }

    async fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        loop {
            let req = match timeout(self.idle(), http::read_request_head(&mut rd)).await {
                Err(_) | Ok(Err(HttpError::Closed | HttpError::Io(_))) => return,
                Ok(Err(e)) => {
                    let msg = format!("rush meter: {e}");
                    self.reply(&mut wr, Style::OpenAi, 400, "invalid_request_error", &msg, None, true).await;
                    return;
                }
                Ok(Ok(req)) => req,
            };
            if self.exchange(req, &mut rd, &mut wr).await == Next::Close {
                return;
            }
        }
    }

    /// Writes an error answer of the proxy's own.
    #[allow(clippy::too_many_arguments)]
    async fn reply(
        &self,
        wr: &mut OwnedWriteHalf,
        style: Style,
        status: u16,
        kind: &str,
        message: &str,
        extra: Option<(&str, Value)>,
        close: bool,
    ) -> Next {
        let mut body = style.error(kind, message);
        if let (Some((key, value)), Some(obj)) = (extra, body.as_object_mut()) {
            obj.insert(key.to_owned(), value);
        }
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let mut headers = Headers::default();
        headers.push("Content-Type", "application/json");
        headers.push("Content-Length", body.len().to_string());
        if close {
            headers.push("Connection", "close");
        }
        let mut out =
            ResponseHead { status, reason: reason_phrase(status).into(), minor: 1, headers }.encode();
        out.extend_from_slice(&body);
        match timeout(self.idle(), wr.write_all(&out)).await {
            Ok(Ok(())) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    async fn exchange(&self, req: RequestHead, rd: &mut ClientReader, wr: &mut OwnedWriteHalf) -> Next {
        let style = Style::of(&req);
        let close = req.wants_close();
        let Some(path) = origin_path(&req.target).map(str::to_owned) else {
            let msg = "rush meter: the request target must be a path";
            return self.reply(wr, style, 400, "invalid_request_error", msg, None, true).await;
        };
        if req.method.eq_ignore_ascii_case("CONNECT") {
            let msg =
                "rush meter: CONNECT is not supported; send calls to this address as the API's base URL";
            return self.reply(wr, style, 405, "invalid_request_error", msg, None, true).await;
        }
        let framing = match http::request_framing(&req) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("rush meter: {e}");
                return self.reply(wr, style, 400, "invalid_request_error", &msg, None, true).await;
            }
        };
        let expects_continue = framing != Framing::None && req.headers.has_token("expect", "100-continue");

        if self.ledger.is_spent() {
            return self.refuse(rd, wr, style, framing, expects_continue, close).await;
        }
        if expects_continue && wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return Next::Close;
        }
        let body = match timeout(self.idle(), http::read_body(rd, framing, MAX_REQUEST_BODY)).await {
            Err(_) | Ok(Err(HttpError::Io(_))) => return Next::Close,
            Ok(Err(e @ HttpError::BodyTooLarge(_))) => {
                let msg = format!("rush meter: request {e}");
                return self.reply(wr, style, 413, "request_too_large", &msg, None, true).await;
            }
            Ok(Err(e)) => {
                let msg = format!("rush meter: {e}");
                return self.reply(wr, style, 400, "invalid_request_error", &msg, None, true).await;
            }
            Ok(Ok(body)) => body,
        };
        let (body, req_model) = self.prepare_body(&path, body);
        self.forward(&req, &path, framing, body, req_model, style, close, wr).await
    }

    /// Answers a call at a spent budget. Its body is read first (unless held back for
    /// 100-continue, when the connection is closed instead): so the connection can carry
    /// on, and because closing a socket with unread data resets it, which can lose the
    /// answer before the client reads it.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        rd: &mut ClientReader,
        wr: &mut OwnedWriteHalf,
        style: Style,
        framing: Framing,
        expects_continue: bool,
        mut close: bool,
    ) -> Next {
        let (used, limit) = (self.ledger.used_micro_usd(), self.ledger.limit());
        self.ledger.refused.fetch_add(1, Ordering::SeqCst);
        tracing::info!(agent = %self.agent, used_micro_usd = used, limit_micro_usd = limit, "meter: call refused at the cost budget");
        self.send(MeterEvent::Refused {
            agent: self.agent.clone(),
            used_micro_usd: used,
            limit_micro_usd: limit,
        });
        if expects_continue {
            close = true;
        } else {
            let drained = timeout(self.idle(), http::read_body(rd, framing, MAX_REQUEST_BODY)).await;
            close |= !matches!(drained, Ok(Ok(_)));
        }
        let msg = format!(
            "rush: the cost budget of agent {} is spent ({} used of {}); model API calls are refused \
             until it is raised",
            self.agent,
            usd(used),
            usd(limit)
        );
        let budget = json!({"agent": self.agent, "used_micro_usd": used, "limit_micro_usd": limit});
        let kind = match style {
            Style::OpenAi => "insufficient_quota",
            Style::Anthropic => "budget_exceeded_error",
        };
        self.reply(wr, style, 402, kind, &msg, Some(("rush_budget", budget)), close).await
    }

    /// The request body to forward, and the model it names.
    fn prepare_body(&self, path: &str, body: Vec<u8>) -> (Vec<u8>, Option<String>) {
        let Ok(mut v) = serde_json::from_slice::<Value>(&body) else { return (body, None) };
        let model = v.get("model").and_then(Value::as_str).map(str::to_owned);
        let endpoint = path.split('?').next().unwrap_or("");
        let streamed = v.get("stream") == Some(&Value::Bool(true));
        if self.cfg.include_stream_usage
            && endpoint.ends_with("/completions")
            && streamed
            && v.pointer("/stream_options/include_usage") != Some(&Value::Bool(true))
            && let Some(obj) = v.as_object_mut()
        {
            let options = obj.entry("stream_options").or_insert_with(|| json!({}));
            if !options.is_object() {
                *options = json!({});
            }
            options["include_usage"] = Value::Bool(true);
            return (serde_json::to_vec(&v).expect("JSON values serialize"), model);
        }
        (body, model)
    }

    fn upstream_head(&self, req: &RequestHead, path: &str, framing: Framing, body_len: usize) -> RequestHead {
        let named: Vec<String> = req.headers.elements("connection").map(str::to_ascii_lowercase).collect();
        let mut headers = Headers::default();
        headers.push("Host", self.upstream.host_header());
        for (name, value) in &req.headers.0 {
            let lower = name.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lower.as_str())
                || REWRITTEN.contains(&lower.as_str())
                || named.contains(&lower)
            {
                continue;
            }
            headers.push(name, value.clone());
        }
        headers.push("Accept-Encoding", "identity");
        if framing != Framing::None || body_len > 0 {
            headers.push("Content-Length", body_len.to_string());
        }
        headers.push("Connection", "close");
        RequestHead {
            method: req.method.clone(),
            target: format!("{}{path}", self.upstream.prefix),
            minor: 1,
            headers,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        req: &RequestHead,
        path: &str,
        framing: Framing,
        body: Vec<u8>,
        req_model: Option<String>,
        style: Style,
        close: bool,
        wr: &mut OwnedWriteHalf,
    ) -> Next {
        let up = &self.upstream;
        let connect = timeout(
            Duration::from_secs(self.cfg.connect_timeout_secs.max(1)),
            TcpStream::connect((up.host.as_str(), up.port)),
        );
        let stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let msg = format!("rush meter: cannot reach the model API at {up}: {e}");
                tracing::warn!(agent = %self.agent, upstream = %up, error = %e, "meter: upstream unreachable");
                return self.reply(wr, style, 502, "api_error", &msg, None, close).await;
            }
            Err(_) => {
                let msg = format!("rush meter: the model API at {up} did not accept a connection in time");
                return self.reply(wr, style, 504, "api_error", &msg, None, close).await;
            }
        };
        let _ = stream.set_nodelay(true);
        let (up_rd, mut up_wr) = stream.into_split();
        let mut up_rd = BufReader::with_capacity(64 * 1024, up_rd);
        let head = self.upstream_head(req, path, framing, body.len()).encode();
        let resp = match timeout(self.idle(), async {
            up_wr.write_all(&head).await?;
            up_wr.write_all(&body).await?;
            loop {
                let head = http::read_response_head(&mut up_rd).await?;
                match head.status {
                    101 => break Err(HttpError::Malformed("101 Switching Protocols unasked")),
                    100..=199 => continue,
                    _ => break Ok(head),
                }
            }
        })
        .await
        {
            Ok(Ok(head)) => head,
            Ok(Err(e)) => {
                let msg = format!("rush meter: no valid answer from the model API at {up}: {e}");
                tracing::warn!(agent = %self.agent, upstream = %up, error = %e, "meter: bad upstream answer");
                return self.reply(wr, style, 502, "api_error", &msg, None, true).await;
            }
            Err(_) => {
                let msg = format!("rush meter: the model API at {up} did not answer in time");
                return self.reply(wr, style, 504, "api_error", &msg, None, true).await;
            }
        };
        let resp_framing = match http::response_framing(&req.method, &resp) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("rush meter: bad answer from the model API at {up}: {e}");
                return self.reply(wr, style, 502, "api_error", &msg, None, true).await;
            }
        };
        // A body delimited by the upstream's close is re-framed as chunks for HTTP/1.1
        // clients, so their connection can carry on.
        let chunked_out =
            resp_framing == Framing::Chunked || (resp_framing == Framing::Close && req.minor >= 1);
        let close = close || (resp_framing == Framing::Close && !chunked_out);
        let mut headers = Headers::default();
        for (name, value) in &resp.headers.0 {
            let lower = name.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&lower.as_str()) || (chunked_out && lower == "content-length") {
                continue;
            }
            headers.push(name, value.clone());
        }
        if chunked_out {
            headers.push("Transfer-Encoding", "chunked");
        }
        if close {
            headers.push("Connection", "close");
        }
        let meter = BodyMeter::for_content_type(resp.headers.get("content-type"));
        let head = ResponseHead { status: resp.status, reason: resp.reason.clone(), minor: 1, headers };
        let mut client_ok = self.write(wr, &head.encode()).await;

        let mut meter = meter;
        let mut reader = BodyReader::new(resp_framing);
        let complete = loop {
            match timeout(self.idle(), reader.next(&mut up_rd)).await {
                Ok(Ok(Some(piece))) => {
                    meter.feed(&piece);
                    if client_ok {
                        let bytes = if chunked_out { http::chunk(&piece) } else { piece };
                        client_ok = self.write(wr, &bytes).await;
                    }
                }
                Ok(Ok(None)) => break true,
                Ok(Err(e)) => {
                    tracing::warn!(agent = %self.agent, upstream = %up, error = %e, "meter: answer cut short");
                    break false;
                }
                Err(_) => {
                    tracing::warn!(agent = %self.agent, upstream = %up, "meter: answer stalled; cut short");
                    break false;
                }
            }
        };
        if complete && client_ok && chunked_out {
            client_ok = self.write(wr, http::LAST_CHUNK).await;
        }
        self.settle(&req.method, resp.status, meter, req_model);
        if complete && client_ok && !close { Next::KeepAlive } else { Next::Close }
    }

    async fn write(&self, wr: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
        matches!(timeout(self.idle(), wr.write_all(bytes)).await, Ok(Ok(())))
    }

    /// Charges what an answer reported.
    fn settle(&self, method: &str, status: u16, meter: BodyMeter, req_model: Option<String>) {
        self.ledger.calls.fetch_add(1, Ordering::SeqCst);
        // Model calls are POSTs; a GET (listing models, say) answers without usage.
        let billable = (200..300).contains(&status) && method.eq_ignore_ascii_case("POST");
        let reported = match meter.finish() {
            Ok(r) => r,
            Err(reason) => return self.unmetered(billable, status, reason),
        };
        let Some(usage) = reported.usage else {
            return self.unmetered(billable, status, "no usage reported");
        };
        let model = reported.model.or(req_model).unwrap_or_default();
        let Some((price, how)) = self.cfg.prices.lookup(&model) else {
            // start() refuses an empty price table, so this is never reached.
            return self.unmetered(true, status, "no prices configured");
        };
        if how == PriceMatch::Highest {
            tracing::warn!(agent = %self.agent, model = %model, "meter: no price for this model and no default; charged at the highest prices configured");
        }
        let micro_usd = price.cost_micro_usd(usage);
        let (before, after) = self.ledger.charge(micro_usd);
        self.send(MeterEvent::Charged {
            agent: self.agent.clone(),
            model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            micro_usd,
        });
        let limit = self.ledger.limit();
        if before < limit && after >= limit {
            tracing::info!(agent = %self.agent, used_micro_usd = after, limit_micro_usd = limit, "meter: cost budget spent; further calls are refused");
            self.send(MeterEvent::Exceeded {
                agent: self.agent.clone(),
                used_micro_usd: after,
                limit_micro_usd: limit,
            });
        }
    }

    fn unmetered(&self, billable: bool, status: u16, reason: &str) {
        if !billable {
            tracing::debug!(agent = %self.agent, status, reason, "meter: unbilled answer without usage");
            return;
        }
        self.ledger.unmetered.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(agent = %self.agent, status, reason, "meter: answer relayed uncharged");
        self.send(MeterEvent::Unmetered { agent: self.agent.clone(), status, reason: reason.to_owned() });
    }
}

/// Micro-dollars as `$D.DDDDDD`.
pub fn usd(micro_usd: u64) -> String {
    format!("${}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000)
}

#[cfg(test)]
mod tests;

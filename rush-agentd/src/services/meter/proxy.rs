//! The meter's HTTP: a hyper server on the agent's side, a pooled hyper client (rustls)
//! upstream, and between them the budget check, the request rewrite and the usage read.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use super::usage::{BodyMeter, PriceMatch};
use super::{Ledger, MeterConfig, MeterError, MeterEvent, Route, usd};

/// The largest request body forwarded.
const MAX_REQUEST_BODY: usize = 64 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the agent gets: the proxy's own answers whole, upstream answers frame by frame.
type ProxyBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The system's roots, read once per process.
fn native_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "meter: a system root certificate could not be read");
        }
        found.certs
    })
}

/// The upstream client: the system's roots plus `ca_file`; HTTP/2 where ALPN offers it.
pub fn upstream_client(cfg: &MeterConfig) -> Result<UpstreamClient, MeterError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let bad = |why: String| MeterError::CaFile { path: path.display().to_string(), why };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    } else if added == 0 {
        tracing::warn!(
            "meter: no system root certificates found; https upstreams will fail (set meter.ca_file)"
        );
    }
    // ring, deprecated in rustls 0.23.48 for lacking post-quantum key exchange (X25519MLKEM768):
    // kept because aws-lc-rs builds a large C library on every clean CI checkout. The
    // classical groups (X25519, P-256) it offers are what most model APIs negotiate today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(cfg.connect_timeout_secs.max(1))));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// The style of the API a call is for, so errors look like that API's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    OpenAi,
    Anthropic,
}

impl Style {
    fn of(headers: &HeaderMap, path: &str) -> Style {
        let path = path.split('?').next().unwrap_or("");
        if headers.contains_key("anthropic-version") || path.ends_with("/messages") {
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

/// `headers` without hop-by-hop fields, those `Connection` names, and `also`.
fn end_to_end(headers: &HeaderMap, also: &[&str]) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || also.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

pub struct Proxy {
    cfg: Arc<MeterConfig>,
    routes: Vec<Route>,
    client: UpstreamClient,
    pub agent: String,
    ledger: Arc<Ledger>,
    events: mpsc::UnboundedSender<MeterEvent>,
}

impl Proxy {
    pub fn new(
        cfg: Arc<MeterConfig>,
        routes: Vec<Route>,
        client: UpstreamClient,
        agent: String,
        ledger: Arc<Ledger>,
        events: mpsc::UnboundedSender<MeterEvent>,
    ) -> Proxy {
        Proxy { cfg, routes, client, agent, ledger, events }
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_secs.max(1))
    }

    fn send(&self, event: MeterEvent) {
        // The daemon gone means shutdown: nobody left to tell.
        let _ = self.events.send(event);
    }

    /// Serves one agent connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it
    /// closes or the meter stops.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, stopped: watch::Receiver<()>) {
        let _ = stream.set_nodelay(true);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.idle());
        builder.http2().timer(TokioTimer::new());
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let (this, stopped) = (this.clone(), stopped.clone());
            async move { Ok::<_, Infallible>(this.exchange(req, stopped).await) }
        });
        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(agent = %self.agent, error = %e, "meter: agent connection ended");
        }
    }

    /// An answer of the proxy's own, in the API's style.
    fn reply(
        &self,
        style: Style,
        status: StatusCode,
        kind: &str,
        message: &str,
        extra: Option<(&str, Value)>,
    ) -> Response<ProxyBody> {
        let mut body = style.error(kind, message);
        if let (Some((key, value)), Some(obj)) = (extra, body.as_object_mut()) {
            obj.insert(key.to_owned(), value);
        }
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    async fn exchange(&self, req: Request<Incoming>, stopped: watch::Receiver<()>) -> Response<ProxyBody> {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        let style = Style::of(req.headers(), &path);
        if req.method() == Method::CONNECT {
            let msg =
                "rush meter: CONNECT is not supported; send calls to this address as the API's base URL";
            return self.reply(style, StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", msg, None);
        }
        let Some((route, upstream_path)) = self.routes.iter().find_map(|r| r.strip(&path).map(|p| (r, p)))
        else {
            let known: Vec<String> =
                self.routes.iter().map(|r| format!("{}/ ({})", r.path, r.name)).collect();
            let msg = format!("rush meter: no route for {path}; this meter serves {}", known.join(", "));
            return self.reply(style, StatusCode::NOT_FOUND, "not_found_error", &msg, None);
        };
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let (parts, body) = req.into_parts();
        if self.ledger.is_spent() {
            // The body is read first (unless held back for 100-continue): closing a
            // connection with unread data resets it, which can lose the answer.
            if !expects_continue {
                let _ = timeout(self.idle(), Limited::new(body, MAX_REQUEST_BODY).collect()).await;
            }
            return self.refuse(style);
        }
        let body = match timeout(self.idle(), Limited::new(body, MAX_REQUEST_BODY).collect()).await {
            Err(_) => {
                let msg = "rush meter: the request body stalled";
                return self.reply(style, StatusCode::REQUEST_TIMEOUT, "invalid_request_error", msg, None);
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                let msg = format!("rush meter: request body larger than {MAX_REQUEST_BODY} bytes");
                return self.reply(style, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", &msg, None);
            }
            Ok(Err(e)) => {
                let msg = format!("rush meter: cannot read the request body: {e}");
                return self.reply(style, StatusCode::BAD_REQUEST, "invalid_request_error", &msg, None);
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
        let (body, req_model) = self.prepare_body(&upstream_path, body);
        let url = route.upstream.url(&upstream_path);
        let mut up = Request::builder().method(parts.method.clone()).uri(&url);
        if let Some(h) = up.headers_mut() {
            *h = end_to_end(&parts.headers, &REWRITTEN);
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            if !body.is_empty()
                || parts.headers.contains_key(header::CONTENT_LENGTH)
                || parts.headers.contains_key(header::TRANSFER_ENCODING)
            {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
        }
        let up = match up.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("rush meter: cannot build the call to {url}: {e}");
                return self.reply(style, StatusCode::BAD_REQUEST, "invalid_request_error", &msg, None);
            }
        };
        let resp = match timeout(self.idle(), self.client.request(up)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let cause = crate::core::error_chain(&e);
                let what = if e.is_connect() { "cannot reach" } else { "no valid answer from" };
                let msg = format!("rush meter: {what} the model API at {}: {cause}", route.upstream);
                tracing::warn!(agent = %self.agent, upstream = %route.upstream, error = %cause, "meter: upstream failed");
                return self.reply(style, StatusCode::BAD_GATEWAY, "api_error", &msg, None);
            }
            Err(_) => {
                let msg = format!("rush meter: the model API at {} did not answer in time", route.upstream);
                return self.reply(style, StatusCode::GATEWAY_TIMEOUT, "api_error", &msg, None);
            }
        };
        let (rparts, rbody) = resp.into_parts();
        let meter = BodyMeter::for_content_type(
            rparts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        );
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(16);
        let relay = Relay {
            proxy: self.snapshot(),
            route: route.name.clone(),
            method: parts.method,
            status: rparts.status,
            model: req_model,
        };
        tokio::spawn(relay.run(rbody, meter, tx, stopped));
        let mut out = Response::new(rx.boxed());
        *out.status_mut() = rparts.status;
        *out.headers_mut() = end_to_end(&rparts.headers, &[]);
        out
    }

    fn snapshot(&self) -> Charger {
        Charger {
            agent: self.agent.clone(),
            ledger: self.ledger.clone(),
            events: self.events.clone(),
            prices: self.routes.clone(),
            idle: self.idle(),
        }
    }

    /// Answers a call at a spent budget.
    fn refuse(&self, style: Style) -> Response<ProxyBody> {
        let (used, limit) = (self.ledger.used_micro_usd(), self.ledger.limit());
        self.ledger.refused.fetch_add(1, Ordering::SeqCst);
        tracing::info!(agent = %self.agent, used_micro_usd = used, limit_micro_usd = limit, "meter: call refused at the cost budget");
        self.send(MeterEvent::Refused {
            agent: self.agent.clone(),
            used_micro_usd: used,
            limit_micro_usd: limit,
        });
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
        self.reply(style, StatusCode::PAYMENT_REQUIRED, kind, &msg, Some(("rush_budget", budget)))
    }

    /// The request body to forward, and the model it names.
    fn prepare_body(&self, path: &str, body: Bytes) -> (Bytes, Option<String>) {
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
            return (Bytes::from(serde_json::to_vec(&v).expect("JSON values serialize")), model);
        }
        (body, model)
    }
}

/// What a relayed answer needs to be charged when it ends.
struct Charger {
    agent: String,
    ledger: Arc<Ledger>,
    events: mpsc::UnboundedSender<MeterEvent>,
    prices: Vec<Route>,
    idle: Duration,
}

/// One upstream answer on its way to the agent.
struct Relay {
    proxy: Charger,
    route: String,
    method: Method,
    status: StatusCode,
    model: Option<String>,
}

impl Relay {
    /// Relays `body` frame by frame, reading it to its end even when the agent has gone
    /// (the provider bills it all the same), then charges it.
    async fn run(
        self,
        mut body: Incoming,
        mut meter: BodyMeter,
        mut tx: http_body_util::channel::Sender<Bytes, BoxError>,
        mut stopped: watch::Receiver<()>,
    ) {
        let idle = self.proxy.idle;
        let mut agent_reads = true;
        let complete = loop {
            let frame = tokio::select! {
                _ = stopped.changed() => return,
                f = timeout(idle, body.frame()) => f,
            };
            match frame {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        meter.feed(data);
                    }
                    if agent_reads {
                        agent_reads =
                            matches!(timeout(idle, tx.send(frame_to_agent(frame))).await, Ok(Ok(())));
                    }
                }
                Ok(None) => break true,
                Ok(Some(Err(e))) => {
                    tracing::warn!(agent = %self.proxy.agent, route = %self.route, error = %e, "meter: answer cut short");
                    break false;
                }
                Err(_) => {
                    tracing::warn!(agent = %self.proxy.agent, route = %self.route, "meter: answer stalled; cut short");
                    break false;
                }
            }
        };
        if !complete && agent_reads {
            // The agent must see a cut, not a clean end: its connection is reset.
            tx.abort("the model API's answer was cut short".into());
        } else {
            drop(tx);
        }
        self.settle(meter);
    }

    /// Charges what an answer reported.
    fn settle(self, meter: BodyMeter) {
        let p = &self.proxy;
        let status = self.status.as_u16();
        p.ledger.calls.fetch_add(1, Ordering::SeqCst);
        // Model calls are POSTs; a GET (listing models, say) answers without usage.
        let billable = self.status.is_success() && self.method == Method::POST;
        let reported = match meter.finish() {
            Ok(r) => r,
            Err(reason) => return self.unmetered(billable, status, reason),
        };
        let Some(usage) = reported.usage else {
            return self.unmetered(billable, status, "no usage reported");
        };
        let model = reported.model.or(self.model.clone()).unwrap_or_default();
        let prices = p.prices.iter().find(|r| r.name == self.route).map(|r| &r.prices);
        let Some((price, how)) = prices.and_then(|pr| pr.lookup(&model)) else {
            // routes() refuses a route without prices, so this is never reached.
            return self.unmetered(true, status, "no prices configured");
        };
        if how == PriceMatch::Highest {
            tracing::warn!(agent = %p.agent, route = %self.route, model = %model, "meter: no price for this model and no default; charged at the highest prices configured");
        }
        let micro_usd = price.cost_micro_usd(usage);
        let (before, after) = p.ledger.charge(micro_usd);
        let _ = p.events.send(MeterEvent::Charged {
            agent: p.agent.clone(),
            model,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            micro_usd,
        });
        let limit = p.ledger.limit();
        if before < limit && after >= limit {
            tracing::info!(agent = %p.agent, used_micro_usd = after, limit_micro_usd = limit, "meter: cost budget spent; further calls are refused");
            let _ = p.events.send(MeterEvent::Exceeded {
                agent: p.agent.clone(),
                used_micro_usd: after,
                limit_micro_usd: limit,
            });
        }
    }

    fn unmetered(&self, billable: bool, status: u16, reason: &str) {
        let p = &self.proxy;
        if !billable {
            tracing::debug!(agent = %p.agent, status, reason, "meter: unbilled answer without usage");
            return;
        }
        p.ledger.unmetered.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(agent = %p.agent, route = %self.route, status, reason, "meter: answer relayed uncharged");
        let _ = p.events.send(MeterEvent::Unmetered {
            agent: p.agent.clone(),
            status,
            reason: reason.to_owned(),
        });
    }
}

/// Data relayed as is; trailers without hop-by-hop fields.
fn frame_to_agent(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(t) => Frame::trailers(end_to_end(&t, &[])),
        Err(f) => f,
    }
}

//! The callback listener: Slack's interactive payloads (the buttons of
//! [`slack_message`](super::webhook::slack_message)), verified as Slack signs them, and the
//! links of approval e-mails, where a GET only shows a confirmation page (mail scanners
//! prefetch links) and only the POST of its form decides.
//!
//! Decisions and refusals go to a [`DecisionSink`] (the approvals service), called on a
//! blocking thread: it may do SQLite work.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::hmac;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::escape_html;

/// Request bodies over this are refused (413): a Slack payload is a few KiB.
pub const MAX_BODY: usize = 64 << 10;
/// Slack's request timestamp header.
pub const SLACK_TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// Slack's request signature header: `v0=` and the hex HMAC-SHA256.
pub const SLACK_SIGNATURE_HEADER: &str = "x-slack-signature";
/// Route of Slack's interactivity requests.
pub const SLACK_ROUTE: &str = "/slack/actions";
/// Prefix of the e-mail links: `/email/<token>`.
pub const EMAIL_ROUTE: &str = "/email/";
/// The longest e-mail token accepted (longer ones are not asked about).
const MAX_TOKEN: usize = 256;
/// The time a client has to send its request head, and then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish once the listener is told to stop.
const DRAIN: Duration = Duration::from_secs(5);

/// The listener's settings.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Slack's signing secret (the app's Basic Information page). Without it `/slack/actions`
    /// answers 404: an unsigned callback cannot be trusted.
    pub slack_signing_secret: Option<Vec<u8>>,
    /// Requests whose timestamp is further than this from now are refused (Slack: 5 minutes).
    pub max_skew: Duration,
    /// Signatures remembered against replays; when full of signatures still inside the
    /// window, requests are refused (503) rather than a remembered one forgotten.
    pub replay_capacity: usize,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("slack_signing_secret", &self.slack_signing_secret.as_ref().map(|_| "(set)"))
            .field("max_skew", &self.max_skew)
            .field("replay_capacity", &self.replay_capacity)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            slack_signing_secret: None,
            max_skew: Duration::from_secs(300),
            replay_capacity: 10_000,
            max_connections: 256,
        }
    }
}

/// Why a callback was not acted on; `status` is the HTTP status answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (HTTP {status})")]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal { status, reason: reason.into() }
    }
}

/// What a callback decides about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackTarget {
    /// One item (`approve:42`).
    Id(u64),
    /// Every pending item of a batch (`approve-batch:KEY`).
    Batch(String),
    /// The item an e-mail link's token stands for.
    EmailToken(String),
}

/// Where a callback came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackVia {
    /// A signed Slack interactive payload; `user` is Slack's `name (id)` of who clicked.
    Webhook { user: Option<String> },
    /// The confirmation form of an e-mail link.
    Email,
}

/// A verified decision to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub target: CallbackTarget,
    pub approve: bool,
    pub via: CallbackVia,
}

/// The approvals service, as the listener sees it. Called on a blocking thread, one call per
/// request; each call should be quick (a SQLite transaction, not a network round trip).
pub trait DecisionSink: Send + Sync {
    /// Applies `callback`; `Ok` is a short text shown to whoever clicked. Refusals of its
    /// own (404 unknown, 410 expired or already decided) are answered with their status.
    fn decide(&self, callback: Callback) -> Result<String, Refusal>;
    /// A one-paragraph description of the item `token` stands for, for the confirmation page.
    fn describe_token(&self, token: &str) -> Result<String, Refusal>;
    /// Told of every refusal the listener makes itself (bad or missing signature, stale
    /// timestamp, replay, malformed payload or token, body too large), for the audit trail.
    /// Refusals returned by `decide` / `describe_token` are not reported back here.
    fn refused(&self, route: &str, why: &Refusal);
}

/// Slack's request signature: `v0=` + hex HMAC-SHA256(`secret`, `v0:{timestamp}:{body}`).
/// Also the signature of outgoing webhooks (see [`super::webhook::deliver`]).
pub fn slack_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &base_string(&timestamp.to_string(), body));
    format!("v0={}", data_encoding::HEXLOWER.encode(tag.as_ref()))
}

fn base_string(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut base = Vec::with_capacity(body.len() + timestamp.len() + 4);
    base.extend_from_slice(b"v0:");
    base.extend_from_slice(timestamp.as_bytes());
    base.push(b':');
    base.extend_from_slice(body);
    base
}

/// The MAC of a `v0=<hex>` header value, if it is one.
fn parse_signature(signature: &str) -> Option<Vec<u8>> {
    let hex = signature.trim().strip_prefix("v0=")?;
    let mac = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).ok()?;
    (mac.len() == 32).then_some(mac)
}

/// Whether `signature` (a `v0=<hex>` header value) signs `timestamp` (the header's text, as
/// received) and `body` with `secret`; compared in constant time.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(mac) = parse_signature(signature) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &base_string(timestamp, body), &mac).is_ok()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signatures already acted on, each with its timestamp; forgotten once the timestamp is out
/// of the window, since a replay of it is refused as stale from then on.
struct ReplayCache {
    seen: HashMap<Vec<u8>, u64>,
    capacity: usize,
    last_prune: u64,
}

impl ReplayCache {
    fn new(capacity: usize) -> ReplayCache {
        ReplayCache { seen: HashMap::new(), capacity: capacity.max(1), last_prune: 0 }
    }

    /// Records `mac` as used; a refusal if it already was, or if the cache is full.
    fn check_and_insert(&mut self, mac: Vec<u8>, timestamp: u64, now: u64, skew: u64) -> Result<(), Refusal> {
        if self.seen.contains_key(&mac) {
            return Err(Refusal::new(409, "replayed request: this signature was already used"));
        }
        if self.seen.len() >= self.capacity || now >= self.last_prune.saturating_add(60) {
            self.seen.retain(|_, ts| now.abs_diff(*ts) <= skew);
            self.last_prune = now;
        }
        if self.seen.len() >= self.capacity {
            return Err(Refusal::new(503, "too many signed requests in the replay window; try again later"));
        }
        self.seen.insert(mac, timestamp);
        Ok(())
    }
}

/// The verification of Slack requests, apart from HTTP so that it is tested alone.
struct SlackVerifier {
    key: hmac::Key,
    max_skew: u64,
    replay: Mutex<ReplayCache>,
}

impl SlackVerifier {
    fn new(secret: &[u8], max_skew: Duration, replay_capacity: usize) -> SlackVerifier {
        SlackVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            max_skew: max_skew.as_secs(),
            replay: Mutex::new(ReplayCache::new(replay_capacity)),
        }
    }

    /// Signature first (so a forgery is named as one), then freshness, then replay.
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Refusal> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Refusal::new(401, format!("missing {name} header")))
        };
        let ts_text = header(SLACK_TIMESTAMP_HEADER)?.trim();
        let signature = header(SLACK_SIGNATURE_HEADER)?;
        let timestamp: u64 = ts_text
            .parse()
            .ok()
            .filter(|_| ts_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| Refusal::new(401, "malformed request timestamp"))?;
        let mac = parse_signature(signature).ok_or_else(|| Refusal::new(401, "malformed signature"))?;
        hmac::verify(&self.key, &base_string(ts_text, body), &mac)
            .map_err(|_| Refusal::new(401, "bad signature"))?;
        if now.abs_diff(timestamp) > self.max_skew {
            return Err(Refusal::new(
                401,
                format!("stale request: timestamp {timestamp} is {}s from now", now.abs_diff(timestamp)),
            ));
        }
        self.replay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).check_and_insert(
            mac,
            timestamp,
            now,
            self.max_skew,
        )
    }
}

/// `approve:42`, `reject:42`, `approve-batch:KEY`, `reject-batch:KEY`.
fn parse_action_value(value: &str) -> Option<(CallbackTarget, bool)> {
    let (verb, arg) = value.split_once(':')?;
    match verb {
        "approve" | "reject" => Some((CallbackTarget::Id(arg.parse().ok()?), verb == "approve")),
        "approve-batch" | "reject-batch" if !arg.is_empty() => {
            Some((CallbackTarget::Batch(arg.to_owned()), verb == "approve-batch"))
        }
        _ => None,
    }
}

/// The callback in a Slack interactive request body (`payload=<JSON>`, form-encoded).
fn parse_slack_payload(body: &[u8]) -> Result<Callback, Refusal> {
    let bad = |why: &str| Refusal::new(400, why);
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| bad("no payload field in the form"))?;
    let payload: serde_json::Value =
        serde_json::from_str(&payload).map_err(|_| bad("the payload is not JSON"))?;
    let value =
        payload["actions"][0]["value"].as_str().ok_or_else(|| bad("no action value in the payload"))?;
    let (target, approve) = parse_action_value(value).ok_or_else(|| bad("unknown action value"))?;
    let user = &payload["user"];
    let name = user["name"].as_str().or_else(|| user["username"].as_str());
    let user = match (name, user["id"].as_str()) {
        (Some(name), Some(id)) => Some(format!("{name} ({id})")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    };
    Ok(Callback { target, approve, via: CallbackVia::Webhook { user } })
}

fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `approve` / `reject` from a `decision=` pair of a query string or form body.
fn decision_in(form: &[u8]) -> Option<bool> {
    form_urlencoded::parse(form).find(|(k, _)| k == "decision").and_then(|(_, v)| match &*v {
        "approve" => Some(true),
        "reject" => Some(false),
        _ => None,
    })
}

type Body = Full<Bytes>;

fn text_response(status: u16, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A page of the e-mail flow: no scripts, no framing, no referrer (the URL holds the token),
/// never cached.
fn html_response(status: u16, title: &str, body_html: &str) -> Response<Body> {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Rush: {title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         .item{{white-space:pre-wrap;background:#f4f4f4;padding:1rem;border-radius:6px}}\
         button{{font-size:1rem;padding:.6rem 1.4rem;margin-right:.6rem;border:0;border-radius:6px;color:#fff;cursor:pointer}}\
         .approve{{background:#2e7d32}}.reject{{background:#c62828}}\
         </style></head><body><main><h1>{title}</h1>{body_html}</main></body></html>\n",
        title = escape_html(title),
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

fn refusal_page(why: &Refusal) -> Response<Body> {
    let title = match why.status {
        404 => "Unknown link",
        410 => "No longer pending",
        _ => "Not possible",
    };
    html_response(why.status, title, &format!("<p>{}</p>", escape_html(&why.reason)))
}

/// The confirmation page of an e-mail link: the item, and a form whose POST decides.
fn confirm_page(description: &str, decision: Option<bool>) -> Response<Body> {
    let button = |approve: bool| {
        let (value, class, label) =
            if approve { ("approve", "approve", "Approve") } else { ("reject", "reject", "Reject") };
        format!(
            "<button type=\"submit\" name=\"decision\" value=\"{value}\" class=\"{class}\">{label}</button>"
        )
    };
    let (title, buttons) = match decision {
        Some(true) => ("Approve this request?", button(true)),
        Some(false) => ("Reject this request?", button(false)),
        None => ("Decide this request", format!("{}{}", button(true), button(false))),
    };
    let body = format!(
        "<p class=\"item\">{}</p><form method=\"post\">{buttons}</form>\
         <p><small>Nothing is decided until you press the button.</small></p>",
        escape_html(description)
    );
    html_response(200, title, &body)
}

struct Shared {
    slack: Option<SlackVerifier>,
    sink: Arc<dyn DecisionSink>,
}

impl Shared {
    /// Runs `f` with the sink on a blocking thread.
    async fn with_sink<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn DecisionSink) -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || f(&*sink))
            .await
            .map_err(|e| Refusal::new(500, format!("the decision failed: {e}")))
    }

    /// Reports a refusal of the listener's own to the sink, and returns it.
    async fn refuse(&self, route: &'static str, why: Refusal) -> Refusal {
        tracing::info!(route, status = why.status, reason = %why.reason, "notify: callback refused");
        let reported = why.clone();
        let _ = self.with_sink(move |s| s.refused(route, &reported)).await;
        why
    }
}

/// The body, or a refusal: 413 over [`MAX_BODY`], 408 when it is not sent in time.
async fn read_body(req: Request<Incoming>) -> Result<(HeaderMap, Bytes), Refusal> {
    let too_large = || Refusal::new(413, format!("request body over {MAX_BODY} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(Refusal::new(408, "request body not sent in time")),
        Ok(Ok(b)) => Ok((parts.headers, b.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Refusal::new(400, "request body unreadable")),
    }
}

async fn slack_actions(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Some(verifier) = &shared.slack else {
        let why = Refusal::new(404, "Slack callbacks are not configured (no signing secret)");
        return text_response(404, shared.refuse(SLACK_ROUTE, why).await.reason);
    };
    let refused = |why: Refusal| async move {
        let why = shared.refuse(SLACK_ROUTE, why).await;
        text_response(why.status, why.reason)
    };
    let (headers, body) = match read_body(req).await {
        Ok(x) => x,
        Err(why) => return refused(why).await,
    };
    if let Err(why) = verifier.verify(&headers, &body, unix_now()) {
        return refused(why).await;
    }
    let callback = match parse_slack_payload(&body) {
        Ok(c) => c,
        Err(why) => return refused(why).await,
    };
    match shared.with_sink(move |s| s.decide(callback)).await {
        Ok(Ok(text)) => text_response(200, text),
        Ok(Err(why)) | Err(why) => text_response(why.status, why.reason),
    }
}

async fn email_link(shared: &Shared, token: &str, req: Request<Incoming>) -> Response<Body> {
    const ROUTE: &str = "/email";
    if !valid_token(token) {
        let why = shared.refuse(ROUTE, Refusal::new(404, "malformed e-mail link token")).await;
        return refusal_page(&why);
    }
    let token = token.to_owned();
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let decision = req.uri().query().and_then(|q| decision_in(q.as_bytes()));
        return match shared.with_sink(move |s| s.describe_token(&token)).await {
            Ok(Ok(description)) => confirm_page(&description, decision),
            Ok(Err(why)) | Err(why) => refusal_page(&why),
        };
    }
    let body = match read_body(req).await {
        Ok((_, body)) => body,
        Err(why) => return refusal_page(&shared.refuse(ROUTE, why).await),
    };
    let Some(approve) = decision_in(&body) else {
        let why = Refusal::new(400, "the form must say decision=approve or decision=reject");
        return refusal_page(&shared.refuse(ROUTE, why).await);
    };
    let callback = Callback { target: CallbackTarget::EmailToken(token), approve, via: CallbackVia::Email };
    match shared.with_sink(move |s| s.decide(callback)).await {
        Ok(Ok(text)) => {
            let title = if approve { "Approved" } else { "Rejected" };
            html_response(200, title, &format!("<p>{}</p>", escape_html(&text)))
        }
        Ok(Err(why)) | Err(why) => refusal_page(&why),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text_response(405, "method not allowed".into());
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = if path == SLACK_ROUTE {
        if req.method() == Method::POST {
            slack_actions(&shared, req).await
        } else {
            method_not_allowed("POST")
        }
    } else if let Some(token) = path.strip_prefix(EMAIL_ROUTE) {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::POST) {
            email_link(&shared, token, req).await
        } else {
            method_not_allowed("GET, HEAD, POST")
        }
    } else {
        text_response(404, "not found".into())
    };
    Ok(response)
}

/// Serves callbacks on `listener` (HTTP/1.1) until `stop` changes or its sender is dropped;
/// then stops accepting and gives open connections a few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    cfg: ListenerConfig,
    sink: Arc<dyn DecisionSink>,
    mut stop: watch::Receiver<()>,
) {
    let slack =
        cfg.slack_signing_secret.as_deref().map(|s| SlackVerifier::new(s, cfg.max_skew, cfg.replay_capacity));
    let shared = Arc::new(Shared { slack, sink });
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "notify: callback listener full, connection closed");
                        continue;
                    };
                    let (shared, stop) = (shared.clone(), stop.clone());
                    connections.spawn(async move {
                        connection(stream, shared, stop).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    tracing::warn!(error = %e, "notify: callback listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.abort_all();
    }
}

async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<()>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| route(shared.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_BODY + (16 << 10))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SLACK_TIMESTAMP_HEADER, ts.parse().unwrap());
        h.insert(SLACK_SIGNATURE_HEADER, sig.parse().unwrap());
        h
    }

    fn verifier() -> SlackVerifier {
        SlackVerifier::new(SECRET, Duration::from_secs(300), 100)
    }

    /// Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    #[test]
    fn matches_slacks_documented_example() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            slack_signature(SECRET, 1_531_420_618, body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn signature_round_trip_and_forgeries_refused() {
        let now = unix_now();
        let body = b"payload=%7B%7D";
        let sig = slack_signature(SECRET, now, body);
        assert!(verify_signature(SECRET, &now.to_string(), body, &sig));
        assert!(!verify_signature(SECRET, &now.to_string(), b"payload=%7B1%7D", &sig));
        assert!(!verify_signature(SECRET, &(now + 1).to_string(), body, &sig));
        assert!(!verify_signature(b"another secret", &now.to_string(), body, &sig));
        assert!(!verify_signature(SECRET, &now.to_string(), body, &sig.replace("v0=", "v1=")));
        assert!(!verify_signature(SECRET, &now.to_string(), body, "v0=abcd"));

        let v = verifier();
        assert_eq!(v.verify(&headers(&now.to_string(), &sig), body, now), Ok(()));
        // A mutated body, then a mutated signature: forgeries.
        let e = v.verify(&headers(&now.to_string(), &sig), b"payload=%7B%7D&x=1", now).unwrap_err();
        assert_eq!((e.status, e.reason.as_str()), (401, "bad signature"));
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let e = v
            .verify(&headers(&now.to_string(), std::str::from_utf8(&flipped).unwrap()), body, now)
            .unwrap_err();
        assert_eq!(e.status, 401);
        // Missing headers.
        let e = v.verify(&HeaderMap::new(), body, now).unwrap_err();
        assert!(e.reason.contains("missing"), "{e}");
        // A timestamp signed as is but not canonical (a leading +) is refused too.
        let e = v.verify(&headers(&format!("+{now}"), &sig), body, now).unwrap_err();
        assert_eq!(e.reason, "malformed request timestamp");
    }

    #[test]
    fn stale_timestamps_refused_either_way() {
        let v = verifier();
        let now = 1_700_000_000;
        for ts in [now - 301, now + 301] {
            let sig = slack_signature(SECRET, ts, b"x");
            let e = v.verify(&headers(&ts.to_string(), &sig), b"x", now).unwrap_err();
            assert_eq!(e.status, 401);
            assert!(e.reason.starts_with("stale request"), "{e}");
        }
        for ts in [now - 300, now + 300] {
            let sig = slack_signature(SECRET, ts, b"x");
            assert_eq!(v.verify(&headers(&ts.to_string(), &sig), b"x", now), Ok(()));
        }
    }

    #[test]
    fn replays_refused_and_the_cache_bounded() {
        let v = SlackVerifier::new(SECRET, Duration::from_secs(300), 3);
        let now = 1_700_000_000;
        let sig = slack_signature(SECRET, now, b"a");
        assert_eq!(v.verify(&headers(&now.to_string(), &sig), b"a", now), Ok(()));
        let e = v.verify(&headers(&now.to_string(), &sig), b"a", now + 10).unwrap_err();
        assert_eq!(e.status, 409);
        // Two more fill it; a fourth inside the window finds it full.
        for body in [b"b", b"c"] {
            let sig = slack_signature(SECRET, now, body);
            assert_eq!(v.verify(&headers(&now.to_string(), &sig), body, now), Ok(()));
        }
        let sig_d = slack_signature(SECRET, now, b"d");
        assert_eq!(v.verify(&headers(&now.to_string(), &sig_d), b"d", now).unwrap_err().status, 503);
        // Once the first three are out of the window they are forgotten (and a replay of them
        // is stale): room again.
        let later = now + 400;
        let sig_e = slack_signature(SECRET, later, b"e");
        assert_eq!(v.verify(&headers(&later.to_string(), &sig_e), b"e", later), Ok(()));
        assert_eq!(v.verify(&headers(&now.to_string(), &sig), b"a", later).unwrap_err().status, 401);
        assert_eq!(v.replay.lock().unwrap().seen.len(), 1);
    }

    #[test]
    fn action_values_and_payloads() {
        assert_eq!(parse_action_value("approve:42"), Some((CallbackTarget::Id(42), true)));
        assert_eq!(parse_action_value("reject:7"), Some((CallbackTarget::Id(7), false)));
        assert_eq!(
            parse_action_value("approve-batch:b:1"),
            Some((CallbackTarget::Batch("b:1".into()), true))
        );
        assert_eq!(parse_action_value("reject-batch:k"), Some((CallbackTarget::Batch("k".into()), false)));
        for bad in ["approve:", "approve:x", "approve-batch:", "delete:1", "approve", ""] {
            assert_eq!(parse_action_value(bad), None, "{bad}");
        }
        let body = form(&serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U1", "name": "alice"},
            "actions": [{"action_id": "rush_reject", "value": "reject:9"}],
        }));
        assert_eq!(
            parse_slack_payload(body.as_bytes()),
            Ok(Callback {
                target: CallbackTarget::Id(9),
                approve: false,
                via: CallbackVia::Webhook { user: Some("alice (U1)".into()) },
            })
        );
        assert_eq!(parse_slack_payload(b"payload=not-json").unwrap_err().status, 400);
        assert_eq!(parse_slack_payload(b"other=1").unwrap_err().status, 400);
        let unknown = form(&serde_json::json!({"actions": [{"value": "nuke:1"}]}));
        assert_eq!(parse_slack_payload(unknown.as_bytes()).unwrap_err().reason, "unknown action value");
    }

    #[test]
    fn tokens_and_decisions() {
        assert!(valid_token("abcDEF123-_"));
        for bad in ["", "a/b", "a%2Fb", "a b", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(!valid_token(bad), "{bad}");
        }
        assert_eq!(decision_in(b"decision=approve"), Some(true));
        assert_eq!(decision_in(b"x=1&decision=reject"), Some(false));
        assert_eq!(decision_in(b"decision=maybe"), None);
    }

    fn form(payload: &serde_json::Value) -> String {
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish()
    }

    /// Records what it was asked; item 404 is unknown, token "gone" is decided already.
    #[derive(Default)]
    struct TestSink {
        decided: Mutex<Vec<Callback>>,
        refusals: Mutex<Vec<(String, Refusal)>>,
    }

    impl DecisionSink for TestSink {
        fn decide(&self, callback: Callback) -> Result<String, Refusal> {
            if callback.target == CallbackTarget::Id(404) {
                return Err(Refusal::new(404, "no request #404"));
            }
            if callback.target == CallbackTarget::EmailToken("gone".into()) {
                return Err(Refusal::new(410, "already decided"));
            }
            let verb = if callback.approve { "approved" } else { "rejected" };
            self.decided.lock().unwrap().push(callback);
            Ok(verb.into())
        }

        fn describe_token(&self, token: &str) -> Result<String, Refusal> {
            match token {
                "tok-1" => Ok("#12 <rm -rf build/> by coder-1".into()),
                "gone" => Err(Refusal::new(410, "already decided")),
                _ => Err(Refusal::new(404, "unknown link")),
            }
        }

        fn refused(&self, route: &str, why: &Refusal) {
            self.refusals.lock().unwrap().push((route.to_owned(), why.clone()));
        }
    }

    struct Running {
        addr: SocketAddr,
        sink: Arc<TestSink>,
        stop: watch::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(secret: Option<&[u8]>) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Arc::new(TestSink::default());
        let (stop, stop_rx) = watch::channel(());
        let cfg =
            ListenerConfig { slack_signing_secret: secret.map(<[u8]>::to_vec), ..ListenerConfig::default() };
        let task = tokio::spawn(serve(listener, cfg, sink.clone(), stop_rx));
        Running { addr, sink, stop, task }
    }

    /// One HTTP/1.1 exchange over a plain TcpStream: (status, headers, body).
    async fn http(addr: SocketAddr, raw: Vec<u8>) -> (u16, String, String) {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&raw).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            let text = String::from_utf8_lossy(&out).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            (status, head.to_owned(), body.to_owned())
        })
        .await
        .unwrap()
    }

    fn request(method: &str, path: &str, extra: &[(&str, String)], body: &[u8]) -> Vec<u8> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in extra {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(body);
        raw
    }

    fn slack_request(body: &str, ts: u64, secret: &[u8]) -> Vec<u8> {
        let sig = slack_signature(secret, ts, body.as_bytes());
        request(
            "POST",
            SLACK_ROUTE,
            &[
                ("Content-Type", "application/x-www-form-urlencoded".into()),
                ("X-Slack-Request-Timestamp", ts.to_string()),
                ("X-Slack-Signature", sig),
            ],
            body.as_bytes(),
        )
    }

    #[tokio::test]
    async fn slack_callbacks_end_to_end() {
        let r = start(Some(SECRET)).await;
        let body = form(&serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U1", "name": "alice"},
            "actions": [{"action_id": "rush_approve", "value": "approve:42"}],
        }));
        let now = unix_now();
        let signed = slack_request(&body, now, SECRET);
        let (status, _, text) = http(r.addr, signed.clone()).await;
        assert_eq!((status, text.as_str()), (200, "approved"));
        assert_eq!(
            *r.sink.decided.lock().unwrap(),
            [Callback {
                target: CallbackTarget::Id(42),
                approve: true,
                via: CallbackVia::Webhook { user: Some("alice (U1)".into()) }
            }]
        );
        // The very same request again: a replay, refused, the sink not asked to decide.
        let (status, _, _) = http(r.addr, signed).await;
        assert_eq!(status, 409);
        assert_eq!(r.sink.decided.lock().unwrap().len(), 1);
        // Forged (wrong secret), stale, and an unknown action.
        let (status, _, _) = http(r.addr, slack_request(&body, now, b"guessed")).await;
        assert_eq!(status, 401);
        let (status, _, _) = http(r.addr, slack_request(&body, now - 3600, SECRET)).await;
        assert_eq!(status, 401);
        let unknown = form(&serde_json::json!({"actions": [{"value": "nuke:1"}]}));
        let (status, _, _) = http(r.addr, slack_request(&unknown, now, SECRET)).await;
        assert_eq!(status, 400);
        // The sink's own refusal is answered with its status, and not reported back.
        let missing = form(&serde_json::json!({"actions": [{"value": "reject:404"}]}));
        let (status, _, text) = http(r.addr, slack_request(&missing, now, SECRET)).await;
        assert_eq!((status, text.as_str()), (404, "no request #404"));
        // A batch.
        let batch =
            form(&serde_json::json!({"user": {"id": "U2"}, "actions": [{"value": "reject-batch:k1"}]}));
        let (status, _, _) = http(r.addr, slack_request(&batch, now, SECRET)).await;
        assert_eq!(status, 200);
        assert_eq!(
            r.sink.decided.lock().unwrap()[1],
            Callback {
                target: CallbackTarget::Batch("k1".into()),
                approve: false,
                via: CallbackVia::Webhook { user: Some("U2".into()) }
            }
        );
        let refusals: Vec<(String, u16)> =
            r.sink.refusals.lock().unwrap().iter().map(|(route, why)| (route.clone(), why.status)).collect();
        assert_eq!(
            refusals,
            [
                (SLACK_ROUTE.to_owned(), 409),
                (SLACK_ROUTE.into(), 401),
                (SLACK_ROUTE.into(), 401),
                (SLACK_ROUTE.into(), 400)
            ]
        );
        r.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), r.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn email_links_get_shows_post_decides() {
        let r = start(None).await;
        let (status, head, page) =
            http(r.addr, request("GET", "/email/tok-1?decision=approve", &[], b"")).await;
        assert_eq!(status, 200);
        assert!(page.contains("#12 &lt;rm -rf build/&gt; by coder-1"), "{page}");
        assert!(page.contains("<form method=\"post\">"), "{page}");
        assert!(page.contains("value=\"approve\"") && !page.contains("value=\"reject\""), "{page}");
        let head = head.to_lowercase();
        assert!(
            head.contains("x-frame-options: deny") && head.contains("referrer-policy: no-referrer"),
            "{head}"
        );
        // Neither a GET nor a HEAD decided anything.
        let (status, _, _) = http(r.addr, request("HEAD", "/email/tok-1?decision=approve", &[], b"")).await;
        assert_eq!(status, 200);
        assert!(r.sink.decided.lock().unwrap().is_empty());

        let post = |token: &str, body: &str| {
            request(
                "POST",
                &format!("/email/{token}?decision=approve"),
                &[("Content-Type", "application/x-www-form-urlencoded".into())],
                body.as_bytes(),
            )
        };
        let (status, _, page) = http(r.addr, post("tok-1", "decision=reject")).await;
        assert_eq!(status, 200);
        assert!(page.contains("Rejected"), "{page}");
        assert_eq!(
            *r.sink.decided.lock().unwrap(),
            [Callback {
                target: CallbackTarget::EmailToken("tok-1".into()),
                approve: false,
                via: CallbackVia::Email
            }]
        );
        // The sink's refusals become pages with their status.
        assert_eq!(http(r.addr, post("gone", "decision=approve")).await.0, 410);
        assert_eq!(http(r.addr, request("GET", "/email/nope", &[], b"")).await.0, 404);
        assert_eq!(http(r.addr, request("GET", "/email/gone", &[], b"")).await.0, 410);
        // The listener's own: a malformed token, a form without a decision.
        assert_eq!(http(r.addr, request("GET", "/email/a.b", &[], b"")).await.0, 404);
        assert_eq!(http(r.addr, post("tok-1", "decision=")).await.0, 400);
        assert_eq!(r.sink.decided.lock().unwrap().len(), 1);
        assert_eq!(r.sink.refusals.lock().unwrap().len(), 2);
        r.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), r.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn other_routes_methods_and_sizes() {
        let r = start(None).await;
        assert_eq!(http(r.addr, request("GET", "/", &[], b"")).await.0, 404);
        assert_eq!(http(r.addr, request("GET", "/slack/actionsx", &[], b"")).await.0, 404);
        let (status, head, _) = http(r.addr, request("GET", SLACK_ROUTE, &[], b"")).await;
        assert_eq!(status, 405);
        assert!(head.to_lowercase().contains("allow: post"), "{head}");
        // Without a signing secret Slack callbacks are refused, and that is audited.
        assert_eq!(http(r.addr, request("POST", SLACK_ROUTE, &[], b"payload=x")).await.0, 404);
        // Too large: by Content-Length, and by a chunked body that grows past the limit.
        let big = vec![b'a'; MAX_BODY + 1];
        assert_eq!(http(r.addr, request("POST", "/email/tok-1", &[], &big)).await.0, 413);
        let mut chunked = b"POST /email/tok-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            chunked.extend_from_slice(format!("{:x}\r\n", 20_000).as_bytes());
            chunked.extend_from_slice(&[b'a'; 20_000]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(http(r.addr, chunked).await.0, 413);
        assert!(r.sink.decided.lock().unwrap().is_empty());
        let statuses: Vec<u16> = r.sink.refusals.lock().unwrap().iter().map(|(_, w)| w.status).collect();
        assert_eq!(statuses, [404, 413, 413]);
        drop(r.stop);
        tokio::time::timeout(Duration::from_secs(10), r.task).await.unwrap().unwrap();
    }
}

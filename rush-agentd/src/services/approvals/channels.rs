//! Pending requests out to their channels (a webhook post per batch, an email digest per
//! address), and decisions back in through the callback listener (signed webhook
//! callbacks, email links with one-time tokens), all audited.
//!
//! A batch goes out when its window has closed (its first request is `batch_window` old),
//! at once when it is high priority. A delivery marks its requests delivered only when the
//! channel took it; a daemon that dies mid-delivery delivers again (at least once).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rush_proto::AuditEvent;
use rush_proto::approval::{
    Approval, ApprovalState, ApprovalTarget, Channel, DecideRequest, DecidedVia, Priority,
};

use super::{Approvals, Decider, batching};
use crate::adapters::notify::email::{self, DigestItem, SmtpConfig, SmtpTls};
use crate::adapters::notify::listener::{self, Callback, CallbackTarget, CallbackVia, DecisionSink, Refusal};
use crate::adapters::notify::webhook::{self, Notice, NoticeItem, RetryPolicy, WebhookClient};
use crate::core::{Fault, now_unix_ms};

/// A webhook ready to post: its client, URL and signing secret.
struct Hook {
    name: String,
    client: WebhookClient,
    url: String,
    secret: Option<Vec<u8>>,
    retry: RetryPolicy,
}

/// What the channels run with, read from the config (secrets from their files) at start.
struct Outlets {
    hooks: Vec<Hook>,
    smtp: Option<SmtpConfig>,
    /// Base of the email links (`public_url`), when the listener runs.
    links: Option<String>,
}

fn read_secret(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let trimmed = text.trim_ascii().to_vec();
    if trimmed.is_empty() {
        return Err(format!("{what} {}: empty", path.display()));
    }
    Ok(trimmed)
}

fn outlets(q: &Approvals) -> Result<Outlets, String> {
    let c = q.config();
    let mut hooks = Vec::new();
    for (name, w) in &c.webhooks {
        let client =
            WebhookClient::new(w.ca_file.as_deref(), Duration::from_secs(5), Duration::from_secs(15))
                .map_err(|e| format!("approvals.webhooks.{name}: {e}"))?;
        let secret = w
            .secret_file
            .as_deref()
            .map(|p| read_secret(&format!("approvals.webhooks.{name}.secret_file"), p))
            .transpose()?;
        let retry = RetryPolicy { attempts: w.attempts, ..RetryPolicy::default() };
        hooks.push(Hook { name: name.clone(), client, url: w.url.clone(), secret, retry });
    }
    let smtp = match &c.smtp {
        Some(s) => {
            let tls = match s.tls.as_str() {
                "starttls-opportunistic" => SmtpTls::StartTlsOpportunistic,
                "implicit" => SmtpTls::Implicit,
                "none" => SmtpTls::None,
                _ => SmtpTls::StartTlsRequired,
            };
            let password = s
                .password_file
                .as_deref()
                .map(|p| read_secret("approvals.smtp.password_file", p))
                .transpose()?
                .map(|p| String::from_utf8_lossy(&p).into_owned());
            Some(SmtpConfig {
                host: s.host.clone(),
                port: s.port,
                tls,
                username: s.username.clone(),
                password,
                from: s.from.clone(),
                ca_file: s.ca_file.clone(),
                timeout: Duration::from_secs(20),
            })
        }
        None => None,
    };
    let links = c.listener.as_ref().map(|l| {
        if l.public_url.is_empty() {
            format!("http://{}", l.address)
        } else {
            l.public_url.trim_end_matches('/').to_owned()
        }
    });
    Ok(Outlets { hooks, smtp, links })
}

/// Starts the delivery loop, and the callback listener when `[approvals.listener]` is set.
/// Err: a channel's config or secret is unusable, or the listener cannot bind (the daemon
/// then runs with the CLI channel only, and says so).
pub async fn spawn_channels(
    q: Arc<Approvals>,
    stop: tokio::sync::watch::Receiver<()>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let outlets = Arc::new(outlets(&q)?);
    let mut tasks = Vec::new();
    if let Some(l) = &q.config().listener {
        let secret = read_secret("approvals.listener.secret_file", &l.secret_file)?;
        let socket = tokio::net::TcpListener::bind(&l.address)
            .await
            .map_err(|e| format!("approvals.listener.address {}: cannot listen: {e}", l.address))?;
        let cfg = listener::ListenerConfig {
            slack_signing_secret: Some(secret),
            max_skew: q.config().max_skew(),
            ..Default::default()
        };
        let sink: Arc<dyn DecisionSink> =
            Arc::new(Sink { q: q.clone(), runtime: tokio::runtime::Handle::current() });
        tracing::info!(address = %l.address, "approvals: callback listener up");
        tasks.push(tokio::spawn(listener::serve(socket, cfg, sink, stop)));
    }
    if !outlets.hooks.is_empty() || outlets.smtp.is_some() {
        let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
        tasks.push(tokio::spawn(async move {
            loop {
                deliver_due(&q, &outlets, &in_flight);
                tokio::select! {
                    _ = q.arrived.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }));
    }
    Ok(tasks)
}

/// One round: every batch whose window closed (or that is high priority), out to its
/// channel on a task of its own.
fn deliver_due(q: &Arc<Approvals>, outlets: &Arc<Outlets>, in_flight: &Arc<Mutex<HashSet<u64>>>) {
    let now = now_unix_ms();
    let Ok(pending) = q.store.pending_approvals() else { return };
    let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let waiting: Vec<Approval> = pending
        .into_iter()
        .filter(|a| a.delivered_unix_ms.is_none() && !busy.contains(&a.id))
        .filter(|a| !matches!(a.channel, Channel::Cli { .. }))
        .map(|a| q.with_priority(a, now))
        .collect();
    if waiting.is_empty() {
        return;
    }
    let settings = q.settings();
    let window_ms = |a: &Approval| super::window_ms(&settings, a);
    let mut channels: Vec<Channel> = waiting.iter().map(|a| a.channel.clone()).collect();
    channels.sort();
    channels.dedup();
    for channel in channels {
        let mine: Vec<Approval> = waiting.iter().filter(|a| a.channel == channel).cloned().collect();
        let due: Vec<Vec<Approval>> = batching::group(&mine, window_ms, settings.similarity)
            .into_iter()
            .map(|g| g.members.iter().map(|&i| mine[i].clone()).collect::<Vec<_>>())
            .filter(|b: &Vec<Approval>| {
                let leader = &b[0];
                b.iter().any(|a| a.effective_priority == Priority::High)
                    || now >= leader.created_unix_ms + window_ms(leader)
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        {
            let mut f = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            f.extend(due.iter().flatten().map(|a| a.id));
        }
        let (q, outlets, in_flight) = (q.clone(), outlets.clone(), in_flight.clone());
        tokio::spawn(async move {
            let ids: Vec<u64> = due.iter().flatten().map(|a| a.id).collect();
            match &channel {
                Channel::Webhook(name) => {
                    for batch in &due {
                        post(&q, &outlets, name, &channel, batch).await;
                    }
                }
                Channel::Email(to) => mail(&q, &outlets, to, &channel, &due).await,
                Channel::Cli { .. } => {}
            }
            let mut f = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                f.remove(&id);
            }
        });
    }
}

fn fields(a: &Approval) -> Vec<(String, String)> {
    let mut f = vec![("agent".to_string(), a.agent.clone())];
    if let Some(s) = &a.session {
        f.push(("session".into(), s.clone()));
    }
    f.push(("kind".into(), a.kind().to_string()));
    f.push(("priority".into(), a.effective_priority.to_string()));
    let left = a.deadline_unix_ms.saturating_sub(now_unix_ms()) / 1000;
    f.push((
        "deadline".into(),
        format!("in {} ({} then)", rush_proto::budget::format_cpu_ms(left * 1000), a.on_timeout),
    ));
    if let Some(r) = a.risk_score {
        f.push(("risk".into(), r.to_string()));
    }
    f
}

fn summary(a: &Approval) -> String {
    format!("{}: {}", a.agent, a.action)
}

fn audit_delivery(
    q: &Approvals,
    ids: &[u64],
    channel: &Channel,
    attempt: u32,
    ok: bool,
    error: Option<String>,
) {
    q.audit.record(
        None,
        AuditEvent::ApprovalDelivery { ids: ids.to_vec(), channel: channel.clone(), attempt, ok, error },
    );
}

fn mark_delivered(q: &Approvals, ids: &[u64]) {
    let now = now_unix_ms();
    for &id in ids {
        let _ = q.store.update_pending(id, |a| a.delivered_unix_ms = Some(now));
    }
}

async fn post(q: &Approvals, outlets: &Outlets, name: &str, channel: &Channel, batch: &[Approval]) {
    let ids: Vec<u64> = batch.iter().map(|a| a.id).collect();
    let Some(hook) = outlets.hooks.iter().find(|h| h.name == name) else {
        audit_delivery(q, &ids, channel, 0, false, Some(format!("no webhook {name:?} configured")));
        return;
    };
    let notice = Notice {
        title: match batch {
            [one] => format!("Rush: {} asks: {}", one.agent, one.action),
            _ => format!("Rush: {} similar requests ({})", batch.len(), batch[0].batch_key),
        },
        batch_key: (batch.len() > 1).then(|| batch[0].batch_key.clone()),
        items: batch
            .iter()
            .map(|a| NoticeItem { id: a.id, summary: summary(a), fields: fields(a) })
            .collect(),
    };
    let body = webhook::slack_message(&notice);
    match webhook::deliver(&hook.client, &hook.url, &body, hook.secret.as_deref(), &hook.retry).await {
        Ok(done) => {
            for a in done
                .attempts
                .iter()
                .filter(|a| !matches!(a.outcome, webhook::AttemptOutcome::Status { code: 200..=299, .. }))
            {
                audit_delivery(q, &ids, channel, a.n, false, Some(a.outcome.to_string()));
            }
            audit_delivery(q, &ids, channel, done.attempts.len() as u32, true, None);
            mark_delivered(q, &ids);
        }
        Err(failed) => {
            for a in &failed.attempts {
                audit_delivery(q, &ids, channel, a.n, false, Some(a.outcome.to_string()));
            }
            audit_delivery(q, &ids, channel, failed.attempts.len() as u32, false, Some(failed.to_string()));
            // Not marked delivered: the next round tries again (the requests still show in
            // `rush approvals`, and their deadlines still run).
        }
    }
}

/// A fresh one-time token: 32 random bytes, hex; the store keeps its SHA-256 only.
fn new_token() -> Option<(String, String)> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    let token = data_encoding::HEXLOWER.encode(&bytes);
    Some((token.clone(), token_hash(&token)))
}

fn token_hash(token: &str) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

async fn mail(q: &Approvals, outlets: &Outlets, to: &str, channel: &Channel, batches: &[Vec<Approval>]) {
    let ids: Vec<u64> = batches.iter().flatten().map(|a| a.id).collect();
    let (Some(smtp), Some(links)) = (&outlets.smtp, &outlets.links) else {
        let why = if outlets.smtp.is_none() {
            "no [approvals.smtp]"
        } else {
            "no [approvals.listener] for the links"
        };
        audit_delivery(q, &ids, channel, 0, false, Some(why.into()));
        return;
    };
    let mut items = Vec::new();
    for a in batches.iter().flatten() {
        let Some((token, hash)) = new_token() else { return };
        if q.store.set_approval_token(a.id, &hash).is_err() {
            continue;
        }
        items.push(DigestItem {
            id: a.id,
            summary: summary(a),
            fields: fields(a),
            approve_link: format!("{links}{}{token}?decision=approve", listener::EMAIL_ROUTE),
            reject_link: format!("{links}{}{token}?decision=reject", listener::EMAIL_ROUTE),
        });
    }
    let (subject, text, html) = email::digest(&items);
    let (smtp, to_owned) = (smtp.clone(), to.to_owned());
    let sent =
        tokio::task::spawn_blocking(move || email::send(&smtp, &to_owned, &subject, &text, Some(&html)))
            .await;
    match sent {
        Ok(Ok(())) => {
            audit_delivery(q, &ids, channel, 1, true, None);
            mark_delivered(q, &ids);
        }
        Ok(Err(e)) => audit_delivery(q, &ids, channel, 1, false, Some(crate::core::error_chain(&e))),
        Err(e) => audit_delivery(q, &ids, channel, 1, false, Some(e.to_string())),
    }
}

/// The queue as the listener sees it: verified callbacks become decisions.
struct Sink {
    q: Arc<Approvals>,
    runtime: tokio::runtime::Handle,
}

impl Sink {
    fn refuse(&self, via: DecidedVia, id: Option<u64>, status: u16, reason: String) -> Refusal {
        self.q.audit.record(None, AuditEvent::ApprovalRefused { via, id, reason: reason.clone() });
        Refusal::new(status, reason)
    }

    /// The pending request an email token names; refusals audited.
    fn by_token(&self, token: &str) -> Result<Approval, Refusal> {
        let found = self.q.store.approval_by_token(&token_hash(token)).ok().flatten();
        let Some(a) = found else {
            return Err(self.refuse(DecidedVia::Email, None, 404, "unknown or replaced link".into()));
        };
        if a.state != ApprovalState::Pending {
            return Err(self.refuse(
                DecidedVia::Email,
                Some(a.id),
                410,
                format!("request {} is already {}", a.id, a.state),
            ));
        }
        if a.deadline_unix_ms <= now_unix_ms() {
            return Err(self.refuse(
                DecidedVia::Email,
                Some(a.id),
                410,
                format!("request {} has expired", a.id),
            ));
        }
        Ok(a)
    }
}

impl DecisionSink for Sink {
    fn decide(&self, callback: Callback) -> Result<String, Refusal> {
        let (target, by, via) = match (&callback.target, &callback.via) {
            (CallbackTarget::EmailToken(token), _) => {
                let a = self.by_token(token)?;
                let by = match &a.channel {
                    Channel::Email(addr) => addr.clone(),
                    other => other.to_string(),
                };
                (ApprovalTarget::Id(a.id), by, DecidedVia::Email)
            }
            (CallbackTarget::Id(id), CallbackVia::Webhook { user }) => (
                ApprovalTarget::Id(*id),
                user.clone().unwrap_or_else(|| "webhook".into()),
                DecidedVia::Webhook,
            ),
            (CallbackTarget::Batch(key), CallbackVia::Webhook { user }) => (
                ApprovalTarget::Batch(key.clone()),
                user.clone().unwrap_or_else(|| "webhook".into()),
                DecidedVia::Webhook,
            ),
            (_, CallbackVia::Email) => {
                return Err(self.refuse(
                    DecidedVia::Email,
                    None,
                    400,
                    "an email decision needs its link's token".into(),
                ));
            }
        };
        let id = match &target {
            ApprovalTarget::Id(id) => Some(*id),
            ApprovalTarget::Batch(_) => None,
        };
        // A batch button decides what the person could have seen: the batch's requests
        // delivered to a channel, not ones that arrived after the message went out.
        let exclude: Vec<u64> = match &target {
            ApprovalTarget::Batch(_) => self
                .q
                .store
                .pending_approvals()
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.delivered_unix_ms.is_none())
                .map(|a| a.id)
                .collect(),
            ApprovalTarget::Id(_) => Vec::new(),
        };
        let req = DecideRequest {
            target,
            approve: callback.approve,
            exclude,
            ttl_secs: None,
            reason: None,
            remember: None,
            remember_scope: None,
        };
        // Grants are made by the daemon for the verified approver (root's authority).
        let decider = Decider { by, via, uid: 0 };
        match self.runtime.block_on(self.q.decide(req, &decider)) {
            Ok(decided) => Ok(decided
                .iter()
                .map(|a| format!("request {} {}: {}", a.id, a.state, a.action))
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => {
                let status = match e.fault {
                    Fault::NotFound => 404,
                    Fault::Exists => 410,
                    Fault::Invalid | Fault::Malformed => 400,
                    Fault::Forbidden => 403,
                    _ => 500,
                };
                Err(self.refuse(via, id, status, e.message))
            }
        }
    }

    fn describe_token(&self, token: &str) -> Result<String, Refusal> {
        let a = self.by_token(token)?;
        Ok(format!(
            "Request {} from agent {}: {} ({} request, {} priority; {} in {} if undecided).",
            a.id,
            a.agent,
            a.action,
            a.kind(),
            a.effective_priority,
            a.on_timeout,
            rush_proto::budget::format_cpu_ms(a.deadline_unix_ms.saturating_sub(now_unix_ms()) / 1000 * 1000)
        ))
    }

    fn refused(&self, route: &str, why: &Refusal) {
        let via = if route.starts_with("/email") { DecidedVia::Email } else { DecidedVia::Webhook };
        self.q.audit.record(None, AuditEvent::ApprovalRefused { via, id: None, reason: why.reason.clone() });
    }
}

//! The queue's settings: config.toml's `[approvals]` (routes, class policies, windows,
//! channels and their secrets), and what the operator stored over it with `rush
//! human-queue configure` / `rush approval-policy set`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rush_proto::approval::{
    ActionClass, Channel, ClassPolicy, OnTimeout, Priority, QueueChange, QueueSettings, Route,
};
use serde::{Deserialize, Serialize};

/// `[approvals]` in config.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Requests with one batch key (or near-duplicates) arriving within this window are
    /// delivered and decided as one item.
    pub batch_window: String,
    /// Jaccard similarity (0-1) of normalised words at or over which two requests of one
    /// kind batch; above 1: only by batch key.
    pub similarity: f64,
    /// A pending request is raised one priority level per this long waiting; "0s": never.
    pub aging: String,
    /// What an approved capability lasts unless the approver says (`rush approve --ttl`).
    pub grant_ttl: String,
    /// Trust levels (`[policy.trust.NAME]`) whose agents' kernel file denials become
    /// capability requests, so the person sees "coder wants write on migrations/".
    pub deny_to_ask: Vec<String>,
    /// Requests one agent's denials may create per minute (beyond: dropped, the denials
    /// still audited); a pending request for the same path and ops is never made twice.
    pub deny_to_ask_per_minute: u32,
    /// Priority → channel (`high = "cli:blocking"`); a priority without one goes to `cli`.
    pub routes: BTreeMap<String, String>,
    /// Per class of action (`destructive`, `capability`, ...): what overrides the request.
    pub classes: BTreeMap<String, ClassConfig>,
    /// `[approvals.webhooks.NAME]`: where `webhook:NAME` posts.
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// The SMTP relay `email:ADDRESS` channels send through.
    pub smtp: Option<SmtpSection>,
    /// The HTTP listener webhook buttons and email links call back to (off unless set).
    pub listener: Option<ListenerSection>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            batch_window: "30s".into(),
            similarity: 0.8,
            aging: "15m".into(),
            grant_ttl: "1h".into(),
            deny_to_ask: Vec::new(),
            deny_to_ask_per_minute: 6,
            routes: BTreeMap::new(),
            classes: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            smtp: None,
            listener: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassConfig {
    pub channel: Option<String>,
    pub priority: Option<String>,
    /// `DURATION` or `DURATION:reject|approve|escalate`.
    pub timeout: Option<String>,
    pub batch_window: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the Slack-compatible message is POSTed to.
    pub url: String,
    /// A file holding a secret the posts are signed with (`X-Rush-Signature`); optional.
    pub secret_file: Option<PathBuf>,
    /// Extra PEM CA the receiver's certificate may chain to.
    pub ca_file: Option<PathBuf>,
    /// Tries per delivery (connection failures, 5xx and 429 are retried with backoff).
    pub attempts: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { url: String::new(), secret_file: None, ca_file: None, attempts: 5 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    pub port: u16,
    /// `starttls` (required, the default), `starttls-opportunistic`, `implicit` (465) or
    /// `none` (plain text: only for a relay on this machine).
    pub tls: String,
    pub username: Option<String>,
    /// A file holding the password (never the password itself in config.toml).
    pub password_file: Option<PathBuf>,
    pub from: String,
    /// Extra PEM CA the relay's certificate may chain to.
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            host: "localhost".into(),
            port: 587,
            tls: "starttls".into(),
            username: None,
            password_file: None,
            from: "rush@localhost".into(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSection {
    /// `IP:PORT` the listener binds.
    pub address: String,
    /// How links and buttons reach it (e.g. `https://rush.example.org`); empty:
    /// `http://ADDRESS`.
    pub public_url: String,
    /// A file holding the shared secret webhook callbacks are signed with (Slack's signing
    /// secret); required: an unsigned callback is never accepted.
    pub secret_file: PathBuf,
    /// How far a callback's timestamp may be from the daemon's clock.
    pub max_skew: String,
}

impl Default for ListenerSection {
    fn default() -> Self {
        ListenerSection {
            address: "127.0.0.1:8787".into(),
            public_url: String::new(),
            secret_file: PathBuf::new(),
            max_skew: "5m".into(),
        }
    }
}

fn secs(key: &str, s: &str) -> Result<u64, String> {
    rush_proto::parse_duration(s).map(|d| d.as_secs()).map_err(|e| format!("approvals.{key}: {e}"))
}

fn channel(key: &str, s: &str) -> Result<Channel, String> {
    s.parse().map_err(|e| format!("approvals.{key}: {e}"))
}

/// `DURATION[:ACTION]`.
pub fn parse_timeout(key: &str, s: &str) -> Result<(u64, Option<OnTimeout>), String> {
    let (d, action) = s.split_once(':').map_or((s, None), |(d, a)| (d, Some(a)));
    let t = secs(key, d)?;
    let action =
        action.map(|a| a.parse::<OnTimeout>().map_err(|e| format!("approvals.{key}: {e}"))).transpose()?;
    Ok((t, action))
}

/// What the operator stored over config.toml.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredQueue {
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub classes: Vec<ClassPolicy>,
    #[serde(default)]
    pub batch_window_secs: Option<u64>,
    #[serde(default)]
    pub similarity: Option<f64>,
    #[serde(default)]
    pub aging_secs: Option<u64>,
}

impl StoredQueue {
    pub fn apply(&mut self, change: &QueueChange) {
        for r in &change.routes {
            self.routes.retain(|x| x.priority != r.priority);
            self.routes.push(r.clone());
        }
        if let Some(c) = &change.class {
            self.classes.retain(|x| x.class != c.class);
            self.classes.push(c.clone());
        }
        self.batch_window_secs = change.batch_window_secs.or(self.batch_window_secs);
        self.similarity = change.similarity.or(self.similarity);
        self.aging_secs = change.aging_secs.or(self.aging_secs);
    }
}

/// The config's settings, checked (every problem names its key).
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub settings: QueueSettings,
    pub deny_to_ask_per_minute: u32,
}

impl ApprovalsConfig {
    pub fn check(&self) -> Result<Base, String> {
        let mut routes = Vec::new();
        for (p, c) in &self.routes {
            let priority = p.parse::<Priority>().map_err(|e| format!("approvals.routes: {e}"))?;
            let channel = channel(&format!("routes.{p}"), c)?;
            routes.push(Route { priority, channel });
        }
        let mut classes = Vec::new();
        for (name, c) in &self.classes {
            let class = name.parse::<ActionClass>().map_err(|e| format!("approvals.classes: {e}"))?;
            let (timeout_secs, on_timeout) = match &c.timeout {
                Some(t) => {
                    let (t, a) = parse_timeout(&format!("classes.{name}.timeout"), t)?;
                    (Some(t), a)
                }
                None => (None, None),
            };
            classes.push(ClassPolicy {
                class: Some(class),
                channel: c
                    .channel
                    .as_deref()
                    .map(|s| channel(&format!("classes.{name}.channel"), s))
                    .transpose()?,
                priority: c
                    .priority
                    .as_deref()
                    .map(|p| {
                        p.parse::<Priority>().map_err(|e| format!("approvals.classes.{name}.priority: {e}"))
                    })
                    .transpose()?,
                timeout_secs,
                on_timeout,
                batch_window_secs: c
                    .batch_window
                    .as_deref()
                    .map(|w| secs(&format!("classes.{name}.batch_window"), w))
                    .transpose()?,
            });
        }
        if !(0.0..=2.0).contains(&self.similarity) || self.similarity.is_nan() {
            return Err(format!("approvals.similarity: {} is not between 0 and 2", self.similarity));
        }
        for (name, w) in &self.webhooks {
            if format!("webhook:{name}").parse::<Channel>().is_err() {
                return Err(format!("approvals.webhooks.{name}: a name of letters, digits, - and _"));
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!("approvals.webhooks.{name}.url: {:?} is not an http(s) URL", w.url));
            }
            if w.attempts == 0 || w.attempts > 20 {
                return Err(format!("approvals.webhooks.{name}.attempts: {} is not 1-20", w.attempts));
            }
        }
        let channels =
            routes.iter().map(|r| &r.channel).chain(classes.iter().filter_map(|c| c.channel.as_ref()));
        for c in channels {
            self.check_channel(c)?;
        }
        if let Some(smtp) = &self.smtp
            && !["starttls", "starttls-opportunistic", "implicit", "none"].contains(&smtp.tls.as_str())
        {
            return Err(format!(
                "approvals.smtp.tls: {:?} is not starttls, starttls-opportunistic, implicit or none",
                smtp.tls
            ));
        }
        if let Some(l) = &self.listener {
            l.address
                .parse::<std::net::SocketAddr>()
                .map_err(|_| format!("approvals.listener.address: {:?} is not IP:PORT", l.address))?;
            if !l.secret_file.is_absolute() {
                return Err("approvals.listener.secret_file: required, an absolute path".into());
            }
            secs("listener.max_skew", &l.max_skew)?;
        }
        let settings = QueueSettings {
            routes,
            classes,
            batch_window_secs: secs("batch_window", &self.batch_window)?,
            similarity: self.similarity,
            aging_secs: secs("aging", &self.aging)?,
            grant_ttl_secs: secs("grant_ttl", &self.grant_ttl)?.max(1),
            deny_to_ask: self.deny_to_ask.clone(),
            webhooks: self.webhooks.keys().cloned().collect(),
            smtp: self.smtp.as_ref().map(|s| format!("{}:{}", s.host, s.port)),
            listener: self.listener.as_ref().map(|l| l.address.clone()),
        };
        Ok(Base { settings, deny_to_ask_per_minute: self.deny_to_ask_per_minute })
    }

    /// A channel this config can deliver to: its webhook configured, SMTP for email.
    pub fn check_channel(&self, c: &Channel) -> Result<(), String> {
        match c {
            Channel::Cli { .. } => Ok(()),
            Channel::Webhook(name) if self.webhooks.contains_key(name) => Ok(()),
            Channel::Webhook(name) => Err(format!(
                "channel webhook:{name}: no [approvals.webhooks.{name}] in the daemon's config (known: {})",
                if self.webhooks.is_empty() {
                    "none".to_string()
                } else {
                    self.webhooks.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
            Channel::Email(_) if self.smtp.is_some() => Ok(()),
            Channel::Email(addr) => {
                Err(format!("channel email:{addr}: no [approvals.smtp] relay in the daemon's config"))
            }
        }
    }

    pub fn max_skew(&self) -> Duration {
        self.listener
            .as_ref()
            .and_then(|l| rush_proto::parse_duration(&l.max_skew).ok())
            .unwrap_or(Duration::from_secs(300))
    }
}

/// The settings in effect: the config's, with what the operator stored over them.
pub fn effective(base: &QueueSettings, stored: &StoredQueue) -> QueueSettings {
    let mut s = base.clone();
    for r in &stored.routes {
        s.routes.retain(|x| x.priority != r.priority);
        s.routes.push(r.clone());
    }
    s.routes.sort_by_key(|r| std::cmp::Reverse(r.priority));
    for c in &stored.classes {
        s.classes.retain(|x| x.class != c.class);
        s.classes.push(c.clone());
    }
    s.classes.sort_by_key(|c| c.class);
    s.batch_window_secs = stored.batch_window_secs.unwrap_or(s.batch_window_secs);
    s.similarity = stored.similarity.unwrap_or(s.similarity);
    s.aging_secs = stored.aging_secs.unwrap_or(s.aging_secs);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_checked_by_name() {
        let bad = |f: &dyn Fn(&mut ApprovalsConfig), key: &str| {
            let mut c = ApprovalsConfig::default();
            f(&mut c);
            let e = c.check().unwrap_err();
            assert!(e.contains(key), "{e}");
        };
        bad(&|c| drop(c.routes.insert("urgent".into(), "cli".into())), "approvals.routes");
        bad(&|c| drop(c.routes.insert("high".into(), "webhook:ops".into())), "webhook:ops");
        bad(&|c| drop(c.routes.insert("low".into(), "email:me@x.org".into())), "approvals.smtp");
        bad(&|c| c.batch_window = "soon".into(), "approvals.batch_window");
        bad(&|c| c.similarity = 3.0, "approvals.similarity");
        bad(
            &|c| {
                drop(c.classes.insert(
                    "destructive".into(),
                    ClassConfig { timeout: Some("1h:ignore".into()), ..Default::default() },
                ))
            },
            "approvals.classes.destructive.timeout",
        );
        bad(&|c| c.listener = Some(ListenerSection::default()), "approvals.listener.secret_file");
        let ok = ApprovalsConfig::default().check().unwrap();
        assert_eq!(ok.settings.batch_window_secs, 30);
        assert_eq!(ok.settings.grant_ttl_secs, 3600);
    }

    #[test]
    fn stored_changes_override_the_config_per_priority_and_class() {
        let mut c = ApprovalsConfig::default();
        c.routes.insert("high".into(), "cli:blocking".into());
        c.routes.insert("low".into(), "cli".into());
        let base = c.check().unwrap().settings;
        let mut stored = StoredQueue::default();
        stored.apply(&QueueChange {
            routes: vec![Route { priority: Priority::Low, channel: Channel::Cli { blocking: true } }],
            batch_window_secs: Some(300),
            ..Default::default()
        });
        stored.apply(&QueueChange {
            class: Some(ClassPolicy {
                class: Some(ActionClass::Destructive),
                timeout_secs: Some(60),
                on_timeout: Some(OnTimeout::Reject),
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = effective(&base, &stored);
        assert_eq!(s.batch_window_secs, 300);
        assert_eq!(s.routes.len(), 2);
        assert!(s.routes.iter().all(|r| r.channel == Channel::Cli { blocking: true }));
        assert_eq!(s.classes[0].timeout_secs, Some(60));
    }
}

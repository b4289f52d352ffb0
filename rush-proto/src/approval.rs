//! The human attention queue: requests for a person's decision (a capability, a command, a
//! budget raise, anything else), each with a priority, a deadline and what happens at it,
//! routed to a channel (the CLI, a webhook, email) and batched with similar ones.
//!
//! An agent asks as itself and goes on (non-blocking unless it waits); only an operator
//! decides. Requests and decisions are the daemon's stored state: a restart keeps both,
//! and a deadline that passed while it was down is applied when it starts.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::spec::Ops;
use crate::wire::wire_enum;

/// Longest action line, reason or custom text (bytes).
pub const MAX_TEXT: usize = 4096;
/// What a request waits for a decision unless told (`--timeout`, or its class's policy).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// A timeout longer than this is refused as absurd (30 days).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// Longest wait an `approval_wait` request may ask for (1 hour).
pub const MAX_WAIT_SECS: u64 = 3600;
/// Requests one agent may have pending at once: past it, new ones are refused (an agent
/// must not bury the person it asks).
pub const MAX_PENDING_PER_AGENT: usize = 100;

wire_enum! {
    /// What a request asks for (`Approval.kind`).
    pub enum ApprovalKind as "Approval.kind" {
        /// A capability token: granted on approval, with the approver's TTL.
        Capability = "capability",
        /// A command line: the asker runs it once approved.
        Command = "command",
        /// A budget raise: applied on approval, and a budget-frozen agent resumed.
        Budget = "budget",
        /// Anything else: only the answer flows back.
        Custom = "custom",
    }
}

wire_enum! {
    /// How soon a person should see it. Ordered: `low < medium < high`.
    pub enum Priority as "Approval.priority" {
        Low = "low",
        Medium = "medium",
        High = "high",
    }
}

impl Priority {
    /// One level up (`high` stays `high`).
    pub fn raised(self) -> Priority {
        match self {
            Priority::Low => Priority::Medium,
            Priority::Medium | Priority::High => Priority::High,
        }
    }
}

wire_enum! {
    /// What the daemon does when a request's deadline passes undecided.
    pub enum OnTimeout as "Approval.on_timeout" {
        /// Rejected (state `expired`).
        Reject = "reject",
        /// Approved, by the policy (state `approved`, decided `via: timeout`).
        Approve = "approve",
        /// Raised to `high`, routed to the high-priority channel, given one more timeout;
        /// rejected if that passes too.
        Escalate = "escalate",
    }
}

wire_enum! {
    /// Where a request is in its life. Only `pending` changes, and only once.
    pub enum ApprovalState as "Approval.state" {
        Pending = "pending",
        Approved = "approved",
        Rejected = "rejected",
        /// Its deadline passed (rejected by the timeout policy).
        Expired = "expired",
        /// Withdrawn by the agent, or its agent is gone.
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// A class of action, as a policy names it (`rush approval-policy set --CLASS`).
    pub enum ActionClass as "Approval.class" {
        /// Deletes, overwrites or rewrites history (set by risk gating's tags, or asked).
        Destructive = "destructive",
        Capability = "capability",
        Budget = "budget",
        Network = "network",
        Command = "command",
        Custom = "custom",
    }
}

impl ActionClass {
    /// The class a request of `kind` has unless it says otherwise.
    pub fn of_kind(kind: ApprovalKind) -> ActionClass {
        match kind {
            ApprovalKind::Capability => ActionClass::Capability,
            ApprovalKind::Command => ActionClass::Command,
            ApprovalKind::Budget => ActionClass::Budget,
            ApprovalKind::Custom => ActionClass::Custom,
        }
    }
}

wire_enum! {
    /// Through what a request was decided.
    pub enum DecidedVia as "Decision.via" {
        /// `rush approve` / `rush reject` (or a blocking prompt).
        Cli = "cli",
        /// A signed callback from the webhook's buttons.
        Webhook = "webhook",
        /// An email link with its one-time token.
        Email = "email",
        /// Its deadline, by its `on_timeout` policy.
        Timeout = "timeout",
        /// Withdrawn by the asking agent.
        Agent = "agent",
        /// The daemon (its agent exited).
        Daemon = "daemon",
    }
}

wire_enum! {
    /// Who created a request.
    pub enum ApprovalOrigin as "Approval.origin" {
        /// The agent, as itself (`rush approval request` inside it).
        Agent = "agent",
        /// An operator, on an agent's behalf.
        Operator = "operator",
        /// The daemon, from a kernel file denial of an agent whose trust level turns
        /// denials into requests (`[approvals] deny_to_ask`).
        DenyToAsk = "deny_to_ask",
    }
}

/// What exactly is asked for, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalDetail {
    /// A token on `path` (absolute) for `ops`.
    Capability { path: PathBuf, ops: Ops },
    /// A command line (argv), run by the asker after approval.
    Command {
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<PathBuf>,
    },
    /// The limits to set (as `rush agent resume --budget`).
    Budget { raise: Budget },
    /// Free text, for the person.
    Custom {
        #[serde(default)]
        text: String,
    },
}

impl ApprovalDetail {
    pub fn kind(&self) -> ApprovalKind {
        match self {
            ApprovalDetail::Capability { .. } => ApprovalKind::Capability,
            ApprovalDetail::Command { .. } => ApprovalKind::Command,
            ApprovalDetail::Budget { .. } => ApprovalKind::Budget,
            ApprovalDetail::Custom { .. } => ApprovalKind::Custom,
        }
    }
}

/// Where a request goes to be seen: `cli`, `cli:blocking`, `webhook:NAME`, `email:ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Listed by `rush approvals`; `blocking`: prompted in every `rush approvals --follow`
    /// terminal, with a bell.
    Cli { blocking: bool },
    /// A webhook named in the daemon's config (`[approvals.webhooks.NAME]`).
    Webhook(String),
    /// A digest per batch window to this address, through `[approvals.smtp]`.
    Email(String),
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Cli { blocking: false } => f.write_str("cli"),
            Channel::Cli { blocking: true } => f.write_str("cli:blocking"),
            Channel::Webhook(name) => write!(f, "webhook:{name}"),
            Channel::Email(addr) => write!(f, "email:{addr}"),
        }
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        match (kind, arg) {
            ("cli", None) => Ok(Channel::Cli { blocking: false }),
            ("cli", Some("blocking")) => Ok(Channel::Cli { blocking: true }),
            ("cli", Some(other)) => {
                Err(format!("channel {s:?}: cli takes only \":blocking\", not {other:?}"))
            }
            ("webhook", Some(name))
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Ok(Channel::Webhook(name.to_owned()))
            }
            ("webhook", _) => {
                Err(format!("channel {s:?}: a webhook is named webhook:NAME (letters, digits, - and _)"))
            }
            ("email", Some(addr))
                if addr.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                    && !addr.chars().any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '>') =>
            {
                Ok(Channel::Email(addr.to_owned()))
            }
            ("email", _) => Err(format!("channel {s:?}: an email channel is email:USER@DOMAIN")),
            _ => Err(format!("channel {s:?}: expected cli, cli:blocking, webhook:NAME or email:ADDRESS")),
        }
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `approval_request`: ask a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The agent asking (filled in for an agent asking as itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// One line for the person: what the agent wants to do.
    pub action: String,
    pub detail: ApprovalDetail,
    /// None: the class's policy, else the queue's default (`medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// None: the class's policy, else [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// None: the class's policy, else `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// None: the class of its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ActionClass>,
    /// Freeze the agent's cgroup until the request is decided.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze: bool,
}

/// A decision, and who made it through what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `uid:N` for an operator at the CLI, the webhook's user, the email address, or
    /// `timeout`, `agent`, `daemon`.
    pub by: String,
    pub via: DecidedVia,
    pub unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lifetime of what the approval granted (capability requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Applied when the daemon started: the deadline passed while it was down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// What the approval did (a token granted, a budget raised), or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// A request as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: u64,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub origin: ApprovalOrigin,
    pub action: String,
    pub detail: ApprovalDetail,
    pub class: ActionClass,
    /// As asked (or set by policy).
    pub priority: Priority,
    /// Now: raised by waiting (aging), by escalation, or because its agent holds a claim
    /// another agent waits on.
    pub effective_priority: Priority,
    /// Why `effective_priority` is above `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raised_because: Option<String>,
    /// From risk gating, when it scored the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Requests with the same key arriving within the batch window are one item.
    pub batch_key: String,
    pub channel: Channel,
    pub created_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub on_timeout: OnTimeout,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze: bool,
    /// When its channel was given it (webhook posted, email sent); None: not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_unix_ms: Option<u64>,
    pub state: ApprovalState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl Approval {
    pub fn kind(&self) -> ApprovalKind {
        self.detail.kind()
    }
}

/// Pending requests delivered and decided as one: the same batch key within the batch
/// window, or near-duplicates (similarity at or over the threshold) of its first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalBatch {
    /// The first request's batch key: `rush approve --batch KEY`.
    pub key: String,
    /// In id order; the first is the one the others were grouped with.
    pub ids: Vec<u64>,
    /// The highest effective priority in it.
    pub priority: Priority,
    /// The earliest deadline in it.
    pub deadline_unix_ms: u64,
}

/// Which pending requests a decision answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalTarget {
    Id(u64),
    /// Every pending request in the batches with this key.
    Batch(String),
}

/// `decide`: approve or reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideRequest {
    pub target: ApprovalTarget,
    pub approve: bool,
    /// Requests of the batch left pending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<u64>,
    /// Lifetime of what an approved capability request grants; None: the queue's
    /// `grant_ttl` (1 hour unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For command requests: also learn a guardrail for the command's pattern ("always
    /// allow" = allow, "always ask" = ask, "never" = deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember: Option<crate::gate::GateDecision>,
    /// Where that guardrail applies; None: the request's session, else global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_scope: Option<crate::gate::GuardrailScope>,
}

/// Which channel a priority goes to (`rush human-queue configure --priority P CHANNEL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub priority: Priority,
    pub channel: Channel,
}

/// A class's policy (`rush approval-policy set --CLASS CHANNEL ...`): each field set
/// overrides the request's and the priority route's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPolicy {
    pub class: Option<ActionClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window_secs: Option<u64>,
}

/// The queue's settings: config.toml's `[approvals]`, overridden by what `rush human-queue
/// configure` and `rush approval-policy set` stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Priority → channel. A priority with no route goes to `cli`.
    pub routes: Vec<Route>,
    pub classes: Vec<ClassPolicy>,
    /// Requests with one batch key arriving within this window are delivered as one.
    pub batch_window_secs: u64,
    /// Jaccard similarity of normalised tokens at or over which two requests of one kind
    /// are batched (1.0: only identical ones; above 1: off).
    pub similarity: f64,
    /// A pending request is raised one level per this long waiting (0: no aging).
    pub aging_secs: u64,
    /// What an approved capability lasts unless the approver says (`--ttl`).
    pub grant_ttl_secs: u64,
    /// Trust levels whose agents' kernel file denials become capability requests.
    #[serde(default)]
    pub deny_to_ask: Vec<String>,
    /// Webhooks configured (names; their URLs and secrets stay in config.toml).
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// The SMTP relay configured, `host:port`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<String>,
    /// The callback listener's address, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
}

/// `configure_queue`: what to change (fields left out stay).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueChange {
    /// Routes to set (replacing each named priority's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// A class policy to set (replacing that class's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aging_secs: Option<u64>,
}

/// Checks a request's fields: the first problem, naming the field.
pub fn check_request(req: &ApprovalRequest) -> Result<(), String> {
    if req.action.trim().is_empty() {
        return Err("action: empty (say what the agent wants to do)".into());
    }
    // The text reaches terminals, chat clients and mail readers: no control characters (an
    // escape sequence in an action is an attack on the person reading it).
    if req.action.chars().any(char::is_control) {
        return Err("action: control characters are not allowed (one line of text)".into());
    }
    if req.action.len() > MAX_TEXT {
        return Err(format!("action: {} bytes, over the limit of {MAX_TEXT}", req.action.len()));
    }
    if let Some(t) = req.timeout_secs
        && (t == 0 || t > MAX_TIMEOUT_SECS)
    {
        return Err(format!("timeout: {t}s, must be between 1s and 30 days"));
    }
    match &req.detail {
        ApprovalDetail::Capability { path, ops } => {
            if !path.is_absolute() {
                return Err(format!("detail.path: {} is not absolute", path.display()));
            }
            if ops.0 == 0 {
                return Err("detail.ops: empty (read, write, exec, create, delete)".into());
            }
        }
        ApprovalDetail::Command { argv, .. } => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err("detail.argv: empty (the command to run once approved)".into());
            }
        }
        ApprovalDetail::Budget { raise } => {
            if *raise == Budget::default() {
                return Err("detail.raise: no limit named (e.g. cpu:2m,mem:1G)".into());
            }
        }
        ApprovalDetail::Custom { text } => {
            if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(
                    "detail.text: control characters other than newline and tab are not allowed".into()
                );
            }
            if text.len() > MAX_TEXT {
                return Err(format!("detail.text: {} bytes, over the limit of {MAX_TEXT}", text.len()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_print_and_refuse_with_the_input_named() {
        for s in ["cli", "cli:blocking", "webhook:ops-room", "email:me@example.org"] {
            assert_eq!(s.parse::<Channel>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "cli:loud",
            "webhook:",
            "webhook:a b",
            "email:nobody",
            "email:a@b",
            "sms:1",
            "email:a@b.c,d@e.f",
        ] {
            let err = bad.parse::<Channel>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let json = serde_json::to_string(&Channel::Webhook("w".into())).unwrap();
        assert_eq!(json, r#""webhook:w""#);
    }

    #[test]
    fn priorities_order_and_raise() {
        assert!(Priority::Low < Priority::Medium && Priority::Medium < Priority::High);
        assert_eq!(Priority::Low.raised(), Priority::Medium);
        assert_eq!(Priority::High.raised(), Priority::High);
    }

    #[test]
    fn details_carry_their_kind_on_the_wire() {
        let d = ApprovalDetail::Capability { path: "/w".into(), ops: "write".parse().unwrap() };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["kind"], "capability");
        assert_eq!(serde_json::from_value::<ApprovalDetail>(json).unwrap(), d);
        assert_eq!(d.kind(), ApprovalKind::Capability);
    }

    #[test]
    fn requests_are_checked_naming_the_field() {
        let mut r = ApprovalRequest {
            agent: None,
            action: "write migrations/".into(),
            detail: ApprovalDetail::Capability { path: "rel".into(), ops: Ops(2) },
            priority: None,
            timeout_secs: None,
            on_timeout: None,
            class: None,
            freeze: false,
        };
        assert!(check_request(&r).unwrap_err().starts_with("detail.path"));
        r.detail = ApprovalDetail::Command { argv: vec![], cwd: None };
        assert!(check_request(&r).unwrap_err().starts_with("detail.argv"));
        r.detail = ApprovalDetail::Custom { text: "ok".into() };
        r.timeout_secs = Some(0);
        assert!(check_request(&r).unwrap_err().starts_with("timeout"));
        r.timeout_secs = Some(60);
        assert!(check_request(&r).is_ok());
        r.action = " ".into();
        assert!(check_request(&r).unwrap_err().starts_with("action"));
        r.action = "ok\x1b]52;c;cm0gLXJmIH4=\x07".into();
        assert!(check_request(&r).unwrap_err().starts_with("action: control"));
        r.action = "ok".into();
        r.detail = ApprovalDetail::Custom { text: "line\nline\x1b[2J".into() };
        assert!(check_request(&r).unwrap_err().starts_with("detail.text"));
    }
}

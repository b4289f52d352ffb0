//! Coordination between agents: intents (what an agent is about to do), claims (exclusive,
//! leased locks on a task, whose paths the kernel write-protects from the session's other
//! agents), results (published blobs) and tasks (work delegated to another agent).
//!
//! Every request here may be sent by an agent, acting as itself (its `agent` field is
//! filled in or checked by the daemon), or by the operator naming the agent it acts for.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest task name, result key or intent text (bytes).
pub const MAX_NAME: usize = 256;
pub const MAX_TEXT: usize = 4096;
/// Paths (or globs) one intent or claim may name.
pub const MAX_PATHS: usize = 64;
/// A lease or intent longer than this is refused as absurd (30 days).
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// What a claim lasts unless told (`--ttl`).
pub const DEFAULT_CLAIM_TTL_SECS: u64 = 30 * 60;
/// What an intent lasts unless told.
pub const DEFAULT_INTENT_TTL_SECS: u64 = 2 * 3600;
/// Longest wait a `results`/`inbox` request may ask for (1 hour).
pub const MAX_WAIT_SECS: u64 = 3600;

/// `broadcast`: an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub text: String,
    /// Absolute paths or globs (`*`, `?`, `[..]`, `**`) the intent is about.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// An agent's declared intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: u64,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub text: String,
    #[serde(default)]
    pub paths: Vec<String>,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
    /// In a `query_intents` answer: it names a path that overlaps one of the query's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlaps: bool,
}

/// `claim`: an exclusive lease on `task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub task: String,
    /// Absolute paths (files or directories: their subtrees) or globs, expanded to what
    /// exists when the claim is made. While the claim lasts, the session's other agents
    /// may not write, create, delete or rename there.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Refuse the claim if the kernel cannot enforce its paths on every other agent of the
    /// session (instead of taking it as advisory).
    #[serde(default)]
    pub enforce: bool,
}

/// How a claim's paths hold against the session's other agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimEnforcement {
    /// No paths: nothing to enforce.
    None,
    /// BPF LSM: writes by the others are refused with EPERM.
    Kernel,
    /// Nothing refuses the others' writes (no BPF LSM on this kernel: a Landlock ruleset
    /// cannot be narrowed in a running process). Other agents see the claim, nothing more.
    Advisory,
}

/// A claim as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub task: String,
    /// The holder.
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Names this holding: a renew or release must come from the same holder.
    pub lease: u64,
    /// Strictly increasing per task, over every holder it ever had: whoever shows the
    /// highest one owns the task; a lower one is stale.
    pub fencing: u64,
    /// The claimed paths (globs as given) ...
    #[serde(default)]
    pub paths: Vec<String>,
    /// ... and what they matched when the claim was made: what the kernel protects.
    #[serde(default)]
    pub enforced_paths: Vec<PathBuf>,
    pub enforcement: ClaimEnforcement,
    pub acquired_unix_ms: u64,
    pub expires_unix_ms: u64,
}

/// The answer to `claim` and `renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimOutcome {
    /// The caller holds the task now. If not, `claim` is the holder's.
    pub won: bool,
    pub claim: Claim,
    /// Why the paths are only advisory, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What ended a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimAction {
    Acquired,
    Renewed,
    /// Released by its holder.
    Released,
    /// Released by the operator.
    Revoked,
    /// Its lease lapsed.
    Expired,
    /// Its holder exited or was killed.
    HolderExited,
}

/// A fencing token shown with a `publish`: refused unless it is the task's current one,
/// held by the publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub task: String,
    pub fencing: u64,
}

/// `publish`: a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub key: String,
    /// The content, base64 (RFC 4648, padded).
    pub content_base64: String,
    /// Only this agent (and the operator) may read it; None: the session's agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
}

/// A published result. Publishing a key again replaces it (a new digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInfo {
    pub key: String,
    /// The publisher.
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_agent: Option<String>,
    /// sha256 of the content, hex: the blob's name in the state dir.
    pub sha256: String,
    pub size: u64,
    pub published_unix_ms: u64,
    /// The content (base64), when one key was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// `results`: what the caller may read, or one key (with its content).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResultsQuery {
    /// The reader (filled in for an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Only results published by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// One key, with its content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// With `key`: wait up to this long for it to be published (`NotFound` after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

/// `delegate`: a task put in another agent's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegateRequest {
    /// The delegator (filled in for an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent that gets the task.
    pub to: String,
    pub text: String,
    /// The task this one is part of (a delegation chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Operator only: spawn `to` for the task (the task is in its inbox before it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn: Option<Box<crate::api::SpawnRequest>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// In the inbox, no result yet.
    Open,
    /// Its result (key `result_key`) was published.
    Done,
    /// The agent to be spawned for it could not start.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    /// The delegator.
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    pub state: TaskState,
    /// Publishing this key completes the task (and is what the delegator waits for).
    pub result_key: String,
    pub created_unix_ms: u64,
}

/// What happened to a task (the `task` audit event's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAction {
    Delegated,
    Done,
    Cancelled,
}

/// The result key a task's result is published under.
pub fn task_result_key(id: u64) -> String {
    format!("task/{id}")
}

/// Whether `s` contains glob metacharacters.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The part of a path pattern before its first glob component: the directory whose
/// subtree the pattern can only match within.
pub fn literal_prefix(pattern: &str) -> &str {
    match pattern.find(['*', '?', '[']) {
        None => pattern.trim_end_matches('/'),
        Some(i) => match pattern[..i].rfind('/') {
            Some(0) => "/",
            Some(j) => &pattern[..j],
            None => "",
        },
    }
}

/// Whether two path patterns may name a common file: one's literal prefix is inside the
/// other's (whole components), or they are equal. Conservative: `a/*.rs` and `a/*.md`
/// overlap.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (literal_prefix(a), literal_prefix(b));
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || outer == "/"
            || inner == outer
            || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
    };
    within(a, b) || within(b, a)
}

/// Checks a task name or result key: non-empty, at most [`MAX_NAME`] bytes, printable,
/// no whitespace. Err says why, naming `what`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(format!("{what} {:?}… is {} bytes, more than {MAX_NAME}", &name[..32], name.len()));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} {name:?} contains {c:?}: use letters, digits and punctuation"));
    }
    Ok(())
}

/// Checks a TTL: 1 second to [`MAX_TTL_SECS`].
pub fn check_ttl(what: &str, secs: u64) -> Result<(), String> {
    if secs == 0 {
        return Err(format!("{what} 0s: a lease must last at least 1s"));
    }
    if secs > MAX_TTL_SECS {
        return Err(format!("{what} {secs}s is more than 30 days: take a shorter one and renew it"));
    }
    Ok(())
}

/// Checks a path pattern: absolute, no `..`, a glob that compiles. Err says why.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!("path {pattern:?} is not absolute (the CLI resolves relative paths)"));
    }
    if pattern.split('/').any(|c| c == "..") {
        return Err(format!("path {pattern:?} contains '..'"));
    }
    if pattern.contains('\0') {
        return Err(format!("path {pattern:?} contains a NUL byte"));
    }
    let mut depth = 0i32;
    for c in pattern.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("bad glob {pattern:?}: '[' without its ']'"));
    }
    if pattern.split('/').any(|c| c.contains("**") && c != "**") {
        return Err(format!("bad glob {pattern:?}: '**' must be a whole path component"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes_and_overlap() {
        assert_eq!(literal_prefix("/w/parser/"), "/w/parser");
        assert_eq!(literal_prefix("/w/parser/*.rs"), "/w/parser");
        assert_eq!(literal_prefix("/*.rs"), "/");
        assert!(patterns_overlap("/w/parser", "/w/parser/lex.rs"));
        assert!(patterns_overlap("/w/parser/**", "/w/parser/a/b"));
        assert!(patterns_overlap("/w/parser/*.rs", "/w/parser/*.md"));
        assert!(!patterns_overlap("/w/parser", "/w/parsers"));
        assert!(!patterns_overlap("/w/parser", "/w/lexer"));
    }

    #[test]
    fn bad_input_is_named() {
        assert!(check_name("task", "").unwrap_err().contains("empty"));
        assert!(check_name("task", "a b").unwrap_err().contains("' '"));
        assert!(check_name("task", &"x".repeat(300)).unwrap_err().contains("300 bytes"));
        assert!(check_ttl("ttl", 0).unwrap_err().contains("at least 1s"));
        assert!(check_ttl("ttl", MAX_TTL_SECS + 1).unwrap_err().contains("30 days"));
        assert!(check_pattern("parser/").unwrap_err().contains("not absolute"));
        assert!(check_pattern("/w/[ab").unwrap_err().contains("bad glob"));
        assert!(check_pattern("/w/a**b").unwrap_err().contains("**"));
        assert!(check_pattern("/w/../etc").unwrap_err().contains(".."));
        check_pattern("/w/parser/**/*.rs").unwrap();
    }
}

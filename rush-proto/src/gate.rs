//! Risk gating: what the daemon decides about a shell command before anyone runs it, and
//! the guardrails it learned from outcomes.
//!
//! The decision is machine logic over brush-parser's syntax tree (the parser of the shell
//! Rush runs), never a model: the same command, context and rules give the same
//! [`Assessment`], byte for byte.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

/// Longest command the gate judges (bytes); a longer one is refused as input.
pub const MAX_COMMAND: usize = 64 * 1024;

wire_enum! {
    /// What happens to a command. Ordered by strictness: where several rules, thresholds
    /// or guardrails apply, the strictest wins (`allow < sandbox < vm-only < ask < deny`):
    /// sandbox and vm-only still run without a person; ask runs nothing until one says
    /// yes; deny runs nothing.
    pub enum GateDecision as "decision" {
        /// Run it as asked.
        Allow = "allow",
        /// Run it as a confined agent that may touch only the workspace.
        Sandbox = "sandbox",
        /// Run it in a throwaway QEMU guest on a copy of the workspace.
        VmOnly = "vm-only",
        /// A person decides (the human attention queue).
        Ask = "ask",
        /// Never run it.
        Deny = "deny",
    }
}

/// One simple command found anywhere in the tree: a pipeline's stage, a list's member, the
/// inside of a subshell, `$( )`, backticks, `<( )`, a function body, or the command an
/// `sh -c` / `eval` / `xargs` / `find -exec` / `sudo` / `env` ... runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCommand {
    /// The words after quote removal and escape normalisation (`'r'm` is `rm`); a word
    /// that cannot be known before it runs (`$x`, `$(..)`) is kept as written.
    pub argv: Vec<String>,
    /// The program's basename (`/tmp/cat` is `cat`, with `path` saying where).
    pub program: String,
    /// The program as written when it names a path (`./rm`, `/tmp/cat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How it is reached, outermost first (`bash -c`, `$( )`, `xargs`, `function f`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// Files it writes through redirections (`>`, `>>`, `>|`, `&>`, `<>`), resolved
    /// against the working directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
    /// Some word of it (the program, or an argument) is only known when it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic: bool,
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagHit {
    /// `fs.delete.recursive`, `net.fetch-exec`, ...
    pub tag: String,
    /// The rule's name in the rules file.
    pub rule: String,
    /// What the tag adds to the score (counted once per tag, however often it fires).
    pub weight: u32,
    /// The decision the rule asks for at least, whatever the score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<GateDecision>,
    /// Index into [`Assessment::commands`]; None: the tree as a whole (a pipeline shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<usize>,
    /// One line: what in the command made it fire.
    pub why: String,
}

wire_enum! {
    /// What settled the decision.
    pub enum DecidedBy as "decided_by" {
        /// The score against the trust level's thresholds.
        Score = "score",
        /// A rule's floor.
        Rule = "rule",
        /// A learned (or imported) guardrail.
        Guardrail = "guardrail",
        /// The command could not be parsed: it is asked about, never allowed.
        Unparsable = "unparsable",
    }
}

/// The gate's verdict on one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub command: String,
    /// The trust level whose thresholds applied.
    pub trust: String,
    /// The directory paths were judged against (the session's workspace); None: none
    /// known, so every write outside the working directory counts as outside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    pub cwd: PathBuf,
    /// Every simple command in the tree, outermost first, in source order.
    pub commands: Vec<GateCommand>,
    /// Rules that fired, in the order of `commands`, then the tree's own.
    pub tags: Vec<TagHit>,
    /// Sum of the distinct tags' weights.
    pub score: u32,
    /// What the score alone gives at this trust level.
    pub score_decision: GateDecision,
    pub decision: GateDecision,
    pub decided_by: DecidedBy,
    /// One line for a person: why this decision.
    pub reason: String,
    /// The guardrail that applied, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<u64>,
    /// The normalised form guardrails match and are learned as (quotes, escapes and
    /// wrappers removed, paths resolved).
    pub pattern: String,
}

/// Where a guardrail applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum GuardrailScope {
    /// Every command judged on this machine.
    Global,
    /// Commands judged in this session (an agent's, or the caller's working directory's).
    Session { session: String },
    /// Commands judged with a working directory inside this repository (a directory
    /// holding `.git`).
    Repository { repository: PathBuf },
}

impl std::fmt::Display for GuardrailScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuardrailScope::Global => f.write_str("global"),
            GuardrailScope::Session { session } => write!(f, "session:{session}"),
            GuardrailScope::Repository { repository } => {
                write!(f, "repository:{}", repository.display())
            }
        }
    }
}

impl std::str::FromStr for GuardrailScope {
    type Err = String;
    /// `global`, `session:NAME`, `repository:/abs/path`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "global" => Ok(GuardrailScope::Global),
            Some(("session", name)) if !name.is_empty() => {
                Ok(GuardrailScope::Session { session: name.to_owned() })
            }
            Some(("repository", path)) if path.starts_with('/') => {
                Ok(GuardrailScope::Repository { repository: PathBuf::from(path) })
            }
            _ => Err(format!("scope {s:?}: expected global, session:NAME or repository:/ABSOLUTE/PATH")),
        }
    }
}

wire_enum! {
    /// What taught a guardrail.
    pub enum GuardrailSource as "guardrail.source" {
        /// A person's "always allow / always ask / never" on an approval.
        Human = "human",
        /// A person rejected the command when it was asked about.
        Rejection = "rejection",
        /// The session was rolled back right after the command (or after it failed).
        Rollback = "rollback",
        /// The agent that ran it was denied by the kernel many times at once.
        DenialStorm = "denial_storm",
        /// Imported from a TOML file (a team's shared guardrails).
        Imported = "imported",
    }
}

/// A rule learned from an outcome: commands whose normalised form matches `pattern` get
/// `decision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guardrail {
    pub id: u64,
    /// A normalised command; `*` matches any run of characters. Learned guardrails are
    /// literal (their `*` are escaped as `\*`).
    pub pattern: String,
    pub decision: GateDecision,
    #[serde(flatten)]
    pub scope: GuardrailScope,
    pub source: GuardrailSource,
    /// Who taught it: `uid:0`, an agent, `import`.
    pub learned_by: String,
    /// What taught it, for a person: the approval, the checkpoint, the denials.
    pub because: String,
    /// Audit record ids of the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_ids: Vec<u64>,
    pub created_unix_ms: u64,
}

/// A guardrail as exported and imported (`rush guardrail export|import`): no id, no time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardrailSpec {
    pub pattern: String,
    pub decision: GateDecision,
    #[serde(flatten)]
    pub scope: GuardrailScope,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub because: String,
}

/// `assess`: judge a command. The context (workspace, tokens, trust) is the agent's when
/// an agent asks, or `agent` names one; otherwise the working directory's session and
/// `trust` (the configured default when None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssessRequest {
    pub command: String,
    /// Where it would run (relative paths resolve against it).
    pub cwd: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

/// `record_execution`: a command the gate passed has run; its outcome is what guardrails
/// learn from (a rollback right after it, a kernel denial storm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub command: String,
    pub cwd: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// None: killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub decision: GateDecision,
}

/// Whether `command` is acceptable input at all (size, NUL bytes).
pub fn check_command(command: &str) -> Result<(), String> {
    if command.trim().is_empty() {
        return Err("command is empty".into());
    }
    if command.len() > MAX_COMMAND {
        return Err(format!("command is {} bytes, over the {MAX_COMMAND}-byte limit", command.len()));
    }
    if command.contains('\0') {
        return Err("command contains a NUL byte".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_ordered_by_strictness() {
        use GateDecision::*;
        assert!(Allow < Sandbox && Sandbox < VmOnly && VmOnly < Ask && Ask < Deny);
        assert_eq!(serde_json::to_string(&VmOnly).unwrap(), "\"vm-only\"");
    }

    #[test]
    fn scopes_parse_and_print_alike() {
        for s in ["global", "session:s1", "repository:/src/x"] {
            assert_eq!(s.parse::<GuardrailScope>().unwrap().to_string(), s);
        }
        for bad in ["", "session:", "repository:rel", "world"] {
            assert!(bad.parse::<GuardrailScope>().is_err(), "{bad}");
        }
    }
}

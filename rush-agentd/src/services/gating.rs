//! Risk gating: the daemon's verdict on a shell command before anyone runs it, and the
//! guardrails it learns from outcomes.
//!
//! The verdict is `rush_gate::assess` (brush-parser's tree, rules, weights, thresholds),
//! given the context only the daemon knows for sure: an agent's trust level, tokens and
//! session workspace (an agent is identified by its cgroup, never by what it says), and
//! the guardrails in scope. The daemon, not the caller, decides: a hook or `rush execute`
//! only carries the answer out.
//!
//! Guardrails are rows in the state store, one per `(scope, pattern)`: the same lesson
//! twice is one guardrail. They are learned from a person's "always allow / always ask /
//! never" on a command approval, a rejection, a rollback right after a command (or after
//! it failed), and a kernel denial storm after a command; or imported.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rush_proto::AuditEvent;
use rush_proto::approval::{Approval, ApprovalDetail, ApprovalState};
use rush_proto::gate::{
    AssessRequest, Assessment, ExecutionRecord, GateDecision, Guardrail, GuardrailScope, GuardrailSource,
    GuardrailSpec,
};

use crate::adapters::store::{Store, StoreError};
use crate::core::{Asker, Fault, error_chain, now_unix_ms};
use crate::services::audit::AuditLog;

mod config;
mod learning;
#[cfg(test)]
mod tests;

pub use config::GatingConfig;

crate::service_error!(
    /// A gating request's failure: its fault and one line naming the input.
    GatingError
);

fn invalid(message: impl Into<String>) -> GatingError {
    GatingError::new(Fault::Invalid, message)
}

fn stored(e: StoreError) -> GatingError {
    let fault = if e.is_full() { Fault::Exhausted } else { Fault::Internal };
    GatingError::new(fault, format!("guardrails: {}", error_chain(&e)))
}

/// An agent as the gate judges it.
#[derive(Default)]
pub struct AgentContext {
    pub session: Option<String>,
    pub trust: Option<String>,
    pub tokens: Vec<rush_gate::Token>,
}

/// What the gate needs of the agents and sessions services (implemented at the edge,
/// handles.rs).
pub trait GatingContext: Send + Sync {
    fn agent(&self, name: &str) -> Option<AgentContext>;
    /// The workspace of session `name`.
    fn workspace(&self, session: &str) -> Option<PathBuf>;
    /// The session whose workspace holds `cwd`, and that workspace.
    fn session_at(&self, cwd: &Path) -> Option<(String, PathBuf)>;
}

pub struct GatingSetup {
    pub store: Arc<Store>,
    pub audit: Arc<AuditLog>,
    pub context: Arc<dyn GatingContext>,
    pub config: GatingConfig,
    /// `config.policy()`, loaded by the caller before the socket is served (a rules file
    /// of its own has every example judged: not while clients wait).
    pub policy: rush_gate::Policy,
}

/// Everything a verdict is made in.
struct Judged {
    trust: String,
    workspace: Option<PathBuf>,
    session: Option<String>,
    repository: Option<PathBuf>,
    tokens: Option<Vec<rush_gate::Token>>,
    cwd: PathBuf,
}

pub struct Gating {
    store: Arc<Store>,
    audit: Arc<AuditLog>,
    context: Arc<dyn GatingContext>,
    config: GatingConfig,
    policy: rush_gate::Policy,
    home: PathBuf,
    learning: learning::Learning,
}

impl Gating {
    /// The gate; Err names the rules file, the rule and why (a rule whose own examples
    /// fail is refused here, so the daemon does not start with it).
    pub fn new(setup: GatingSetup) -> Result<Gating, String> {
        let policy = setup.policy;
        if let Some(t) = &setup.config.default_trust
            && !policy.trust_levels().iter().any(|l| l == t)
        {
            return Err(format!(
                "gating.default_trust: {t:?} is not a trust level of the rules (they have {})",
                policy.trust_levels().join(", ")
            ));
        }
        Ok(Gating {
            store: setup.store,
            audit: setup.audit,
            context: setup.context,
            learning: learning::Learning::new(&setup.config),
            config: setup.config,
            policy,
            // Whose `~` the commands mean: the operator's, who runs the CLI as root here.
            home: std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")),
        })
    }

    pub fn config(&self) -> &GatingConfig {
        &self.config
    }

    /// The context a command would run in: the agent's (its trust, tokens and session),
    /// or for an operator the session whose workspace holds `cwd` and the trust asked.
    fn judged(&self, asker: Asker<'_>, req: &AssessRequest) -> Result<Judged, GatingError> {
        if !req.cwd.is_absolute() {
            return Err(invalid(format!("cwd {}: not an absolute path", req.cwd.display())));
        }
        let agent = match asker {
            Asker::Agent { name } => Some(name),
            Asker::Operator { .. } => req.agent.as_deref(),
        };
        let (session, trust, tokens) = match agent {
            Some(name) => {
                let a = self.context.agent(name).ok_or_else(|| {
                    GatingError::new(Fault::NotFound, format!("no agent {name:?} (see `rush agent list`)"))
                })?;
                // An agent is judged at its own trust level: it cannot ask for a laxer one.
                let trust = match (asker, &req.trust) {
                    (Asker::Operator { .. }, Some(t)) => Some(t.clone()),
                    _ => a.trust,
                };
                (a.session, trust, Some(a.tokens))
            }
            None => (None, req.trust.clone(), None),
        };
        let (session, workspace) = match session {
            Some(s) => {
                let w = self.context.workspace(&s);
                (Some(s), w)
            }
            None => match self.context.session_at(&req.cwd) {
                Some((s, w)) => (Some(s), Some(w)),
                None => (None, None),
            },
        };
        let trust = trust
            .or_else(|| self.config.default_trust.clone())
            .unwrap_or_else(|| self.policy.default_trust().to_owned());
        // A session's workspace is a symlink to its live tree, and a working directory is
        // a real path (getcwd): a cwd in the live tree is judged as the same place under
        // the workspace, where the command's paths (and the tokens) name it. Tokens count
        // under both names.
        let mut cwd = req.cwd.clone();
        if let Some(w) = &workspace {
            let live = real(w);
            if let Ok(rest) = req.cwd.strip_prefix(&live)
                && live != *w
            {
                cwd = w.join(rest);
            }
        }
        let tokens = tokens.map(|ts| {
            let mut all = Vec::with_capacity(ts.len() * 2);
            for t in ts {
                let r = real(&t.path);
                if r != t.path {
                    all.push(rush_gate::Token { path: r, ops: t.ops });
                }
                all.push(t);
            }
            all
        });
        Ok(Judged { trust, workspace, session, repository: repository_of(&req.cwd), tokens, cwd })
    }

    /// The guardrails that apply in `j`.
    fn in_scope(&self, j: &Judged) -> Result<Vec<Guardrail>, GatingError> {
        let all = self.store.guardrails().map_err(stored)?;
        Ok(all.into_iter().filter(|g| applies(&g.scope, j)).collect())
    }

    fn verdict(&self, command: &str, j: &Judged) -> Result<Assessment, GatingError> {
        let guardrails = self.in_scope(j)?;
        let ctx = rush_gate::Context {
            cwd: &j.cwd,
            home: &self.home,
            workspace: j.workspace.as_deref(),
            trust: &j.trust,
            tokens: j.tokens.as_deref(),
            guardrails: &guardrails,
        };
        Ok(rush_gate::assess(command, &ctx, &self.policy))
    }

    /// The verdict on `req.command` (nothing runs).
    pub fn assess(&self, asker: Asker<'_>, req: &AssessRequest) -> Result<Assessment, GatingError> {
        rush_proto::gate::check_command(&req.command).map_err(|e| invalid(format!("command: {e}")))?;
        let j = self.judged(asker, req)?;
        self.verdict(&req.command, &j)
    }

    /// A gated command ran: audited, and remembered for a while (a rollback or a denial
    /// storm right after it teaches a guardrail). Answers what it taught at once (none
    /// yet: lessons come from what follows).
    pub fn record(
        &self,
        asker: Asker<'_>,
        uid: u32,
        rec: ExecutionRecord,
    ) -> Result<Vec<Guardrail>, GatingError> {
        rush_proto::gate::check_command(&rec.command).map_err(|e| invalid(format!("command: {e}")))?;
        let req = AssessRequest {
            command: rec.command.clone(),
            cwd: rec.cwd.clone(),
            agent: rec.agent.clone(),
            trust: None,
        };
        let j = self.judged(asker, &req)?;
        let agent = match asker {
            Asker::Agent { name } => Some(name.to_owned()),
            Asker::Operator { .. } => rec.agent.clone(),
        };
        let audited = self.audit.record(
            agent.as_deref(),
            AuditEvent::CommandRun {
                command: rec.command.clone(),
                cwd: rec.cwd.clone(),
                decision: rec.decision,
                exit_code: rec.exit_code,
                caller_uid: uid,
            },
        );
        self.learning.ran(learning::Execution {
            audit_seq: audited.seq,
            pattern: rush_gate::pattern_of(&rec.command),
            agent,
            session: j.session.clone(),
            repository: j.repository.clone(),
            exit_code: rec.exit_code,
            at_ms: now_unix_ms(),
            who: match asker {
                Asker::Agent { name } => name.to_owned(),
                Asker::Operator { uid } => format!("uid:{uid}"),
            },
        });
        Ok(Vec::new())
    }

    /// Session `session` was rolled back to `checkpoint` (audit record `seq`): the last
    /// command run in it, if it failed shortly before or ran just before, becomes a
    /// guardrail asking first.
    pub fn rolled_back(&self, session: &str, checkpoint: &str) -> Option<Guardrail> {
        let ex = self.learning.before_rollback(session, now_unix_ms())?;
        let because = match ex.exit_code {
            Some(0) => format!("session {session} rolled back to {checkpoint} right after it ran"),
            Some(c) => {
                format!("it failed (exit {c}), then session {session} was rolled back to {checkpoint}")
            }
            None => format!("it was killed, then session {session} was rolled back to {checkpoint}"),
        };
        let spec = GuardrailSpec {
            pattern: rush_gate::literal_pattern(&ex.pattern),
            decision: GateDecision::Ask,
            scope: GuardrailScope::Session { session: session.to_owned() },
            because,
        };
        self.learn_logged(spec, GuardrailSource::Rollback, &ex.who, vec![ex.audit_seq])
    }

    /// A kernel denial of `agent`'s: many at once right after a command it ran teach a
    /// guardrail asking first for that command.
    pub fn denied(&self, agent: &str) -> Option<Guardrail> {
        let (ex, count) = self.learning.denial(agent, now_unix_ms())?;
        let scope = match (&ex.session, &ex.repository) {
            (Some(s), _) => GuardrailScope::Session { session: s.clone() },
            (None, Some(r)) => GuardrailScope::Repository { repository: r.clone() },
            (None, None) => GuardrailScope::Global,
        };
        let spec = GuardrailSpec {
            pattern: rush_gate::literal_pattern(&ex.pattern),
            decision: GateDecision::Ask,
            scope,
            because: format!("{count} kernel denials of agent {agent} right after it ran"),
        };
        self.learn_logged(spec, GuardrailSource::DenialStorm, agent, vec![ex.audit_seq])
    }

    /// A command approval was decided: `remember` (a person's "always allow / always ask /
    /// never") is learned as said; a rejection without it teaches "ask first" (whatever
    /// the trust level, a person sees it again).
    pub fn approval_decided(
        &self,
        approval: &Approval,
        remember: Option<GateDecision>,
        scope: Option<GuardrailScope>,
        by: &str,
    ) -> Option<Guardrail> {
        let ApprovalDetail::Command { argv, .. } = &approval.detail else { return None };
        let (decision, source) = match (remember, approval.state) {
            (Some(d), _) => (d, GuardrailSource::Human),
            (None, ApprovalState::Rejected) if self.config.learn => {
                (GateDecision::Ask, GuardrailSource::Rejection)
            }
            (None, _) => return None,
        };
        // Asked as `bash -c LINE` (how `rush execute` asks): the lesson is about LINE.
        let command = match argv.as_slice() {
            [shell, c, line] if c == "-c" && ["sh", "bash", "dash", "zsh"].contains(&basename(shell)) => {
                line.clone()
            }
            _ => command_line(argv),
        };
        let scope = scope.unwrap_or_else(|| match &approval.session {
            Some(s) => GuardrailScope::Session { session: s.clone() },
            None => GuardrailScope::Global,
        });
        let spec = GuardrailSpec {
            pattern: rush_gate::literal_pattern(&rush_gate::pattern_of(&command)),
            decision,
            scope,
            because: format!("approval {} {} by {by}", approval.id, approval.state),
        };
        self.learn_logged(spec, source, by, Vec::new())
    }

    /// The score and tags of a command approval's command (run where the agent is).
    pub fn score(&self, agent: &str, argv: &[String], cwd: Option<&Path>) -> Option<(u32, Vec<String>)> {
        let req = AssessRequest {
            command: command_line(argv),
            cwd: cwd.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")),
            agent: Some(agent.to_owned()),
            trust: None,
        };
        let a = self.assess(Asker::Operator { uid: 0 }, &req).ok()?;
        let mut tags: Vec<String> = a.tags.into_iter().map(|t| t.tag).collect();
        tags.dedup();
        Some((a.score, tags))
    }

    fn learn_logged(
        &self,
        spec: GuardrailSpec,
        source: GuardrailSource,
        by: &str,
        audit_ids: Vec<u64>,
    ) -> Option<Guardrail> {
        match self.learn(spec, source, by, audit_ids) {
            Ok((g, true)) => Some(g),
            Ok((_, false)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "a guardrail was not stored");
                None
            }
        }
    }

    /// Stores a lesson once: `(the guardrail, whether it is new)`.
    fn learn(
        &self,
        spec: GuardrailSpec,
        source: GuardrailSource,
        by: &str,
        audit_ids: Vec<u64>,
    ) -> Result<(Guardrail, bool), GatingError> {
        check_spec(&spec)?;
        let g = Guardrail {
            id: 0,
            pattern: spec.pattern,
            decision: spec.decision,
            scope: spec.scope,
            source,
            learned_by: by.to_owned(),
            because: spec.because,
            audit_ids,
            created_unix_ms: now_unix_ms(),
        };
        let (g, new) = self.store.add_guardrail(g).map_err(stored)?;
        if new {
            self.audit.record(
                None,
                AuditEvent::GuardrailLearned {
                    id: g.id,
                    pattern: g.pattern.clone(),
                    decision: g.decision,
                    source: g.source,
                    scope: g.scope.to_string(),
                    because: g.because.clone(),
                },
            );
        }
        Ok((g, new))
    }

    pub fn list(&self) -> Result<Vec<Guardrail>, GatingError> {
        self.store.guardrails().map_err(stored)
    }

    pub fn remove(&self, id: u64, uid: u32) -> Result<Guardrail, GatingError> {
        let g = self.store.remove_guardrail(id).map_err(stored)?.ok_or_else(|| {
            GatingError::new(Fault::NotFound, format!("no guardrail {id} (see `rush guardrail list`)"))
        })?;
        self.audit
            .record(None, AuditEvent::GuardrailRemoved { id, pattern: g.pattern.clone(), caller_uid: uid });
        Ok(g)
    }

    /// `(added, already there)`. All are checked before any is stored: a bad file adds
    /// nothing.
    pub fn import(
        &self,
        specs: Vec<GuardrailSpec>,
        uid: u32,
    ) -> Result<(Vec<Guardrail>, Vec<Guardrail>), GatingError> {
        if specs.len() > MAX_IMPORT {
            return Err(invalid(format!("{} guardrails: at most {MAX_IMPORT} per import", specs.len())));
        }
        for (i, s) in specs.iter().enumerate() {
            check_spec(s).map_err(|e| invalid(format!("guardrails[{i}]: {}", e.message)))?;
        }
        let (mut added, mut existing) = (Vec::new(), Vec::new());
        for s in specs {
            match self.learn(s, GuardrailSource::Imported, &format!("uid:{uid}"), Vec::new())? {
                (g, true) => added.push(g),
                (g, false) => existing.push(g),
            }
        }
        Ok((added, existing))
    }
}

/// Guardrails one import may carry.
const MAX_IMPORT: usize = 10_000;

fn check_spec(s: &GuardrailSpec) -> Result<(), GatingError> {
    if s.pattern.trim().is_empty() {
        return Err(invalid("pattern: empty"));
    }
    if s.pattern.len() > rush_proto::gate::MAX_COMMAND {
        return Err(invalid(format!("pattern: over {} bytes", rush_proto::gate::MAX_COMMAND)));
    }
    if s.pattern.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid("pattern: contains control characters"));
    }
    // `*` alone would match every command: a guardrail that broad is a rule change, made
    // in the rules file where its examples are checked.
    if s.pattern.chars().all(|c| c == '*' || c.is_whitespace()) {
        return Err(invalid(format!("pattern {:?}: matches every command", s.pattern)));
    }
    if s.because.len() > rush_proto::approval::MAX_TEXT {
        return Err(invalid("because: too long"));
    }
    Ok(())
}

/// Whether a guardrail of `scope` applies to a command judged in `j`.
fn applies(scope: &GuardrailScope, j: &Judged) -> bool {
    match scope {
        GuardrailScope::Global => true,
        GuardrailScope::Session { session } => j.session.as_deref() == Some(session),
        GuardrailScope::Repository { repository } => j.cwd.starts_with(repository),
    }
}

/// `p` with its symlinks resolved, or as it is when it cannot be (gone, not ours to read).
fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// The repository holding `cwd`: the nearest directory up with a `.git`.
fn repository_of(cwd: &Path) -> Option<PathBuf> {
    cwd.ancestors().find(|d| d.join(".git").exists()).map(Path::to_path_buf)
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// An argv as one shell line (what the gate parses): words quoted where needed.
pub fn command_line(argv: &[String]) -> String {
    argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain { w.to_owned() } else { format!("'{}'", w.replace('\'', r"'\''")) }
}

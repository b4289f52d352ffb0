//! The risk gate: whether a shell command an AI agent wants to run is allowed, decided by
//! rules over brush-parser's syntax tree (the parser of the shell Rush runs), never by a
//! model. The same command, context and policy give the same [`Assessment`], byte for byte.
//!
//! 1. Parse, and walk the whole tree into every simple command it runs: pipeline
//!    stages, list members, subshells, `$( )`, backquotes, `<( )`, function and alias bodies,
//!    and the commands inside wrappers and strings (`sudo`, `xargs`, `find -exec`,
//!    `bash -c`, `eval`, here-documents fed to a shell).
//! 2. Every rule of the [`Policy`] looks at that list; each that fires adds a tag.
//! 3. Score = the sum of the distinct tags' weights; the trust level's bands turn it into a
//!    decision. The decision is the strictest of that, every fired rule's floor, and the
//!    guardrails that match (a person's "always allow" lifts the score and `ask` floors,
//!    never a `deny` floor).

mod detectors;
mod effects;
mod nesting;
mod paths;
mod pattern;
mod policy;
mod printer;
mod rules;
mod walk;
mod words;
mod wrappers;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rush_proto::gate::{Assessment, DecidedBy, GateDecision, Guardrail, TagHit, check_command};

pub use pattern::{literal_pattern, pattern_matches};
pub use policy::{Bands, Policy};

/// A capability token an agent holds: operations on a path and everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub path: PathBuf,
    pub ops: rush_proto::Ops,
}

/// Who asks and where: everything [`assess`] reads besides the command (it reads no
/// environment, clock or file).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Where the command would run; relative paths resolve against it.
    pub cwd: &'a Path,
    /// The home `~` and `$HOME` stand for.
    pub home: &'a Path,
    /// The session's workspace; None: writes outside `cwd` count as outside.
    pub workspace: Option<&'a Path>,
    /// The trust level whose score bands apply.
    pub trust: &'a str,
    /// The agent's capability tokens; None: the caller is not a confined agent, so no
    /// token checks.
    pub tokens: Option<&'a [Token]>,
    /// Guardrails of the scope, already filtered by the caller.
    pub guardrails: &'a [Guardrail],
}

/// A rules file that cannot be used; each variant names the rule, field or example.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("rules file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("rules file: no [trust.LEVEL] table")]
    NoTrustLevels,
    #[error("default_trust {name:?} is not one of the [trust.LEVEL] tables")]
    DefaultTrust { name: String },
    #[error("trust.{level}: {why}")]
    Bands { level: String, why: String },
    #[error("sets.{set}: missing (the detectors need it)")]
    MissingSet { set: String },
    #[error("rule {rule:?}: set @{set} is not defined in [sets]")]
    UnknownSet { rule: String, set: String },
    #[error("rule {rule:?}: defined twice")]
    DuplicateRule { rule: String },
    #[error("rule {rule:?}: tag {tag:?} has no weight (add it to [weights] or give the rule `weight`)")]
    NoWeight { rule: String, tag: String },
    #[error("weights.{tag:?}: no rule has this tag")]
    UnusedWeight { tag: String },
    #[error("rule {rule:?}: `{field}` needs at least one example command")]
    MissingExamples { rule: String, field: &'static str },
    #[error("rule {rule:?}: {why}")]
    Matcher { rule: String, why: String },
    #[error(
        "rule {rule:?}: example {example:?} {}",
        if *fired { "fires it, but is a not_match example" } else { "does not fire it, but is a match example" }
    )]
    Example { rule: String, example: String, fired: bool },
}

/// The normalised form of `command`, as [`Assessment::pattern`] holds it. It does not depend
/// on the context: `~`, `$HOME` and `${HOME}` all print as `~`, so a guardrail learned in
/// one home applies in another.
pub fn pattern_of(command: &str) -> String {
    match walk::parse(command) {
        Ok(program) => normalised(&program),
        Err(_) => command.trim().to_owned(),
    }
}

fn normalised(program: &brush_parser::ast::Program) -> String {
    let printer = printer::Printer {
        env: words::WordEnv { home: "~", cwd: "." },
        opts: brush_parser::ParserOptions::default(),
    };
    printer.program(program)
}

/// Judges `command` in `ctx` by `policy`.
pub fn assess(command: &str, ctx: &Context<'_>, policy: &Policy) -> Assessment {
    let (level, bands, unknown_trust) = policy.level(ctx.trust);
    let trust_note = if unknown_trust {
        format!("; unknown trust level {:?}: the strictest, {level}, applies", ctx.trust)
    } else {
        String::new()
    };
    let mut a = Assessment {
        command: command.to_owned(),
        trust: level.to_owned(),
        workspace: ctx.workspace.map(Path::to_path_buf),
        cwd: ctx.cwd.to_path_buf(),
        commands: Vec::new(),
        tags: Vec::new(),
        score: 0,
        score_decision: GateDecision::Allow,
        decision: GateDecision::Ask,
        decided_by: DecidedBy::Unparsable,
        reason: String::new(),
        guardrail: None,
        pattern: command.trim().to_owned(),
    };
    let parsed = check_command(command)
        .and_then(|()| walk::parse_nested(command).map_err(|e| format!("does not parse: {e}")));
    let (program, nesting) = match parsed {
        Ok(p) => p,
        Err(why) => {
            // Never allowed; a guardrail may only make it stricter.
            let candidates = [a.pattern.clone()];
            let guard =
                strictest_guardrail(ctx.guardrails, &candidates).filter(|g| g.decision > GateDecision::Ask);
            a.reason = format!("ask: {why}{trust_note}");
            if let Some(g) = guard {
                a.decision = g.decision;
                a.decided_by = DecidedBy::Guardrail;
                a.guardrail = Some(g.id);
                a.reason = format!("{}: guardrail {} matches {:?}{trust_note}", g.decision, g.id, g.pattern);
            }
            return a;
        }
    };
    let home = paths::resolve("/", &ctx.home.to_string_lossy());
    let cwd = paths::resolve("/", &ctx.cwd.to_string_lossy());
    let walked = walk::Walker::new(&home, &cwd).walk(&program, nesting);
    a.pattern = normalised(&program);
    let scene = rules::Scene::new(&walked, ctx, policy);

    let mut hits: Vec<TagHit> = Vec::new();
    for rule in &policy.rules {
        for h in rule.hits(&scene) {
            hits.push(TagHit {
                tag: rule.tag.clone(),
                rule: rule.name.clone(),
                weight: rule.weight,
                floor: rule.floor,
                command: h.command,
                why: h.why,
            });
        }
    }
    // In the order of the commands, then the line's own; rule order within (stable sort).
    hits.sort_by_key(|h| h.command.unwrap_or(usize::MAX));

    // Each tag counts once, at the weight of its heaviest fired rule.
    let mut tag_weights: BTreeMap<&str, u32> = BTreeMap::new();
    for h in &hits {
        let w = tag_weights.entry(&h.tag).or_insert(0);
        *w = (*w).max(h.weight);
    }
    a.score = tag_weights.values().fold(0u32, |s, w| s.saturating_add(*w));
    a.score_decision = bands.decide(a.score);

    let candidates: Vec<String> = std::iter::once(a.pattern.clone())
        .chain(walked.cmds.iter().map(|c| {
            let dynamic: Vec<bool> = c.words.iter().map(|w| w.dynamic).collect();
            printer::argv_form(&c.gate.argv, &dynamic, &home)
        }))
        .collect();
    let guard = strictest_guardrail(ctx.guardrails, &candidates);
    // The first hit with the strictest floor.
    let floor_hit = hits.iter().filter(|h| h.floor.is_some()).fold(None::<&TagHit>, |best, h| match best {
        Some(b) if b.floor >= h.floor => Some(b),
        _ => Some(h),
    });
    let floor = floor_hit.and_then(|h| h.floor);

    let (decision, by) = match guard {
        // A person's "always allow" lifts the score and `ask` floors; a `deny` floor stands
        // (rules that deny name what no one should run unseen, whoever clicked before).
        Some(g) if g.decision == GateDecision::Allow => {
            if floor == Some(GateDecision::Deny) {
                (GateDecision::Deny, DecidedBy::Rule)
            } else {
                (GateDecision::Allow, DecidedBy::Guardrail)
            }
        }
        _ => {
            let d = [Some(a.score_decision), floor, guard.map(|g| g.decision)].into_iter().flatten().max();
            let d = d.unwrap_or(GateDecision::Allow);
            // On a tie the most specific source is named: a guardrail (a person or an
            // outcome decided this exact command), then a rule's floor, then the score.
            let by = if guard.is_some_and(|g| g.decision == d) {
                DecidedBy::Guardrail
            } else if floor == Some(d) {
                DecidedBy::Rule
            } else {
                DecidedBy::Score
            };
            (d, by)
        }
    };
    a.decision = decision;
    a.decided_by = by;
    a.reason = match by {
        DecidedBy::Guardrail => {
            let g = guard.unwrap_or_else(|| unreachable!("decided by a guardrail"));
            a.guardrail = Some(g.id);
            format!("{decision}: guardrail {} matches {:?}", g.id, g.pattern)
        }
        DecidedBy::Rule => {
            let h = floor_hit.unwrap_or_else(|| unreachable!("decided by a floor"));
            format!("{decision}: {} ({}) — rule {} floor", h.tag, h.why, h.rule)
        }
        _ => match top_hit(&hits) {
            Some(h) => format!("{decision}: score {} at trust {level} — top: {} ({})", a.score, h.tag, h.why),
            None => format!("{decision}: no rule fired (score 0 at trust {level})"),
        },
    } + &trust_note;
    a.commands = walked.cmds.into_iter().map(|c| c.gate).collect();
    a.tags = hits;
    a
}

/// The heaviest hit (the first on ties).
fn top_hit(hits: &[TagHit]) -> Option<&TagHit> {
    hits.iter().fold(None, |best: Option<&TagHit>, h| match best {
        Some(b) if b.weight >= h.weight => Some(b),
        _ => Some(h),
    })
}

/// The strictest guardrail matching any candidate form (the lowest id on ties).
fn strictest_guardrail<'g>(guardrails: &'g [Guardrail], candidates: &[String]) -> Option<&'g Guardrail> {
    guardrails.iter().filter(|g| candidates.iter().any(|c| pattern_matches(&g.pattern, c))).fold(
        None,
        |best: Option<&Guardrail>, g| match best {
            Some(b) if b.decision > g.decision || (b.decision == g.decision && b.id <= g.id) => Some(b),
            _ => Some(g),
        },
    )
}

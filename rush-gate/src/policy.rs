//! The rules file: trust levels (score bands), tag weights, named word sets, and rules, each
//! carrying examples that must and must not fire it, checked when the file loads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use rush_proto::gate::GateDecision;
use serde::Deserialize;

use crate::rules::{Detector, Matcher, Rule, RuleKind, Scene};
use crate::{Context, PolicyError};

/// The rules Rush ships with.
const SHIPPED: &str = include_str!("../rules/default.toml");

// Compiled without running its examples: they are run by this crate's tests
// (`shipped_rules_load`), so a daemon starting does not judge ~300
// example commands again (seconds in a debug build under emulation, with its socket bound).
static SHIPPED_POLICY: LazyLock<Policy> = LazyLock::new(|| match Policy::compile(SHIPPED) {
    Ok(p) => p,
    // The shipped file is checked by this crate's tests; failing here is a build defect.
    Err(e) => panic!("rush-gate's shipped rules do not load: {e}"),
});

/// Score bands of one trust level: a score at or above a threshold gets that decision
/// (the strictest band reached wins); below every threshold, allow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    #[serde(default)]
    pub sandbox: Option<u32>,
    #[serde(default, rename = "vm-only")]
    pub vm_only: Option<u32>,
    #[serde(default)]
    pub ask: Option<u32>,
    #[serde(default)]
    pub deny: Option<u32>,
}

impl Bands {
    fn ordered(&self) -> [(GateDecision, Option<u32>); 4] {
        [
            (GateDecision::Sandbox, self.sandbox),
            (GateDecision::VmOnly, self.vm_only),
            (GateDecision::Ask, self.ask),
            (GateDecision::Deny, self.deny),
        ]
    }

    /// What a score gives at this level.
    pub fn decide(&self, score: u32) -> GateDecision {
        self.ordered()
            .into_iter()
            .filter(|(_, t)| t.is_some_and(|t| score >= t))
            .map(|(d, _)| d)
            .max()
            .unwrap_or(GateDecision::Allow)
    }

    /// Sort key: lower thresholds for the stricter decisions first = stricter level.
    fn strictness_key(&self) -> [u32; 4] {
        let t = |o: Option<u32>| o.unwrap_or(u32::MAX);
        [t(self.deny), t(self.ask), t(self.vm_only), t(self.sandbox)]
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_trust: String,
    trust: BTreeMap<String, Bands>,
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    sets: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

/// One `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub name: String,
    pub tag: String,
    /// Overrides `[weights]` for this rule (a tag scores its heaviest fired rule).
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub floor: Option<GateDecision>,
    #[serde(default)]
    pub detector: Option<String>,
    #[serde(default)]
    pub programs: Vec<String>,
    #[serde(default)]
    pub subcommand: Vec<String>,
    #[serde(default)]
    pub any_flag: Vec<String>,
    #[serde(default)]
    pub not_flag: Vec<String>,
    #[serde(default)]
    pub any_arg: Vec<String>,
    #[serde(default)]
    pub all_args: Vec<String>,
    #[serde(default)]
    pub not_arg: Vec<String>,
    #[serde(default)]
    pub any_path: Vec<String>,
    #[serde(default)]
    pub writes: Vec<String>,
    #[serde(default)]
    pub min_args: Option<usize>,
    #[serde(default)]
    pub max_args: Option<usize>,
    #[serde(default, rename = "match")]
    pub matches: Vec<String>,
    #[serde(default)]
    pub not_match: Vec<String>,
}

/// Word sets the detectors read (every rules file defines them; see the shipped file).
#[derive(Debug, Clone, Default)]
pub(crate) struct Vocab {
    pub shells: Vec<String>,
    pub interpreters: Vec<String>,
    pub fetchers: Vec<String>,
    pub trusted_bin_dirs: Vec<String>,
    pub known_tools: Vec<String>,
    pub dev_tools: Vec<String>,
    pub secrets: Vec<String>,
    pub secret_exceptions: Vec<String>,
    pub system_dirs: Vec<String>,
    pub temp_dirs: Vec<String>,
    pub hijack_vars: Vec<String>,
    pub inline_danger: Vec<String>,
}

/// Rules, weights and trust levels: what [`crate::assess`] judges by.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) default_trust: String,
    pub(crate) trust: BTreeMap<String, Bands>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) vocab: Vocab,
}

impl Policy {
    /// The rules Rush ships with (`rules/default.toml`), parsed once per process.
    pub fn shipped() -> Policy {
        SHIPPED_POLICY.clone()
    }

    /// The shipped rules file's text, for `rush` to show or copy.
    pub fn shipped_text() -> &'static str {
        SHIPPED
    }

    /// Parses and checks a rules file: unknown keys, undefined weights, sets or detectors,
    /// inconsistent bands, and every rule against its own `match` / `not_match` examples.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let (policy, examples) = Policy::compile_with_examples(text)?;
        for (rule, (matches, not_match)) in policy.rules.iter().zip(examples) {
            for example in matches {
                if !policy.example_fires(rule, &example) {
                    return Err(PolicyError::Example { rule: rule.name.clone(), example, fired: false });
                }
            }
            for example in not_match {
                if policy.example_fires(rule, &example) {
                    return Err(PolicyError::Example { rule: rule.name.clone(), example, fired: true });
                }
            }
        }
        Ok(policy)
    }

    /// [`Policy::from_toml`] without running the examples (they must still be there).
    fn compile(text: &str) -> Result<Policy, PolicyError> {
        Policy::compile_with_examples(text).map(|(p, _)| p)
    }

    #[allow(clippy::type_complexity)]
    fn compile_with_examples(text: &str) -> Result<(Policy, Vec<(Vec<String>, Vec<String>)>), PolicyError> {
        let file: File = toml::from_str(text)?;
        if file.trust.is_empty() {
            return Err(PolicyError::NoTrustLevels);
        }
        if !file.trust.contains_key(&file.default_trust) {
            return Err(PolicyError::DefaultTrust { name: file.default_trust });
        }
        for (level, bands) in &file.trust {
            check_bands(level, bands)?;
        }
        let set = |name: &str| -> Result<Vec<String>, PolicyError> {
            file.sets.get(name).cloned().ok_or_else(|| PolicyError::MissingSet { set: name.to_owned() })
        };
        let vocab = Vocab {
            shells: set("shells")?,
            interpreters: set("interpreters")?,
            fetchers: set("fetchers")?,
            trusted_bin_dirs: set("trusted_bin_dirs")?,
            known_tools: set("known_tools")?,
            dev_tools: set("dev_tools")?,
            secrets: set("secrets")?,
            secret_exceptions: set("secret_exceptions")?,
            system_dirs: set("system_dirs")?,
            temp_dirs: set("temp_dirs")?,
            hijack_vars: set("hijack_vars")?,
            inline_danger: set("inline_danger")?,
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len());
        let mut examples = Vec::with_capacity(file.rules.len());
        for spec in file.rules {
            if rules.iter().any(|r| r.name == spec.name) {
                return Err(PolicyError::DuplicateRule { rule: spec.name });
            }
            let weight = match spec.weight.or_else(|| file.weights.get(&spec.tag).copied()) {
                Some(w) => w,
                None => return Err(PolicyError::NoWeight { rule: spec.name, tag: spec.tag }),
            };
            if spec.matches.is_empty() {
                return Err(PolicyError::MissingExamples { rule: spec.name, field: "match" });
            }
            if spec.not_match.is_empty() {
                return Err(PolicyError::MissingExamples { rule: spec.name, field: "not_match" });
            }
            let kind = compile_kind(&spec, &file.sets)?;
            examples.push((spec.matches, spec.not_match));
            rules.push(Rule { name: spec.name, tag: spec.tag, weight, floor: spec.floor, kind });
        }
        for tag in file.weights.keys() {
            if !rules.iter().any(|r| &r.tag == tag) {
                return Err(PolicyError::UnusedWeight { tag: tag.clone() });
            }
        }
        let policy = Policy { default_trust: file.default_trust, trust: file.trust, rules, vocab };
        Ok((policy, examples))
    }

    /// The trust level used when a caller names none.
    pub fn default_trust(&self) -> &str {
        &self.default_trust
    }

    /// Every trust level, in name order.
    pub fn trust_levels(&self) -> Vec<String> {
        self.trust.keys().cloned().collect()
    }

    /// The bands of a level: (name applied, bands, whether `trust` was unknown). An unknown
    /// level gets the strictest level's bands.
    pub(crate) fn level(&self, trust: &str) -> (&str, &Bands, bool) {
        if let Some((name, bands)) = self.trust.get_key_value(trust) {
            return (name, bands, false);
        }
        let (name, bands) = self
            .trust
            .iter()
            .min_by_key(|(name, b)| (b.strictness_key(), (*name).clone()))
            .unwrap_or_else(|| unreachable!("from_toml refuses a policy without trust levels"));
        (name, bands, true)
    }

    /// Whether `rule` fires on `example` in the fixed example context (token rules: holding
    /// one token, read on the workspace).
    fn example_fires(&self, rule: &Rule, example: &str) -> bool {
        let tokens = [crate::Token { path: "/work/ws".into(), ops: rush_proto::Ops::READ }];
        let mut ctx = Context::example(self.default_trust());
        if matches!(rule.kind, RuleKind::Detector(Detector::CapWrite | Detector::CapRead)) {
            ctx.tokens = Some(&tokens);
        }
        match crate::walk::parse_nested(example) {
            Ok((program, nesting)) => {
                let walked = crate::walk::Walker::new("/home/u", "/work/ws").walk(&program, nesting);
                let scene = Scene::new(&walked, &ctx, self);
                !rule.hits(&scene).is_empty()
            }
            Err(_) => false,
        }
    }
}

impl<'a> Context<'a> {
    /// The context rule examples (and the corpus) are judged in: `/work/ws` as working
    /// directory and workspace, `/home/u` as home, no tokens, no guardrails.
    pub fn example(trust: &'a str) -> Context<'a> {
        Context {
            cwd: Path::new("/work/ws"),
            home: Path::new("/home/u"),
            workspace: Some(Path::new("/work/ws")),
            trust,
            tokens: None,
            guardrails: &[],
        }
    }
}

fn check_bands(level: &str, b: &Bands) -> Result<(), PolicyError> {
    let given: Vec<(GateDecision, u32)> =
        b.ordered().into_iter().filter_map(|(d, t)| t.map(|t| (d, t))).collect();
    for pair in given.windows(2) {
        let ((d1, t1), (d2, t2)) = (pair[0], pair[1]);
        if t1 > t2 {
            return Err(PolicyError::Bands {
                level: level.to_owned(),
                why: format!("{d1} ({t1}) is above the stricter {d2} ({t2})"),
            });
        }
    }
    Ok(())
}

/// Expands `@set` entries.
fn expand_sets(
    rule: &str,
    list: &[String],
    sets: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, PolicyError> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        // `\@x` is the literal word `@x`.
        if let Some(literal) = item.strip_prefix("\\@") {
            out.push(format!("@{literal}"));
            continue;
        }
        match item.strip_prefix('@') {
            Some(name) => match sets.get(name) {
                Some(values) => out.extend(values.iter().cloned()),
                None => return Err(PolicyError::UnknownSet { rule: rule.to_owned(), set: name.to_owned() }),
            },
            None => out.push(item.clone()),
        }
    }
    Ok(out)
}

fn compile_kind(spec: &RuleSpec, sets: &BTreeMap<String, Vec<String>>) -> Result<RuleKind, PolicyError> {
    let declarative = !(spec.programs.is_empty()
        && spec.subcommand.is_empty()
        && spec.any_flag.is_empty()
        && spec.not_flag.is_empty()
        && spec.any_arg.is_empty()
        && spec.all_args.is_empty()
        && spec.not_arg.is_empty()
        && spec.any_path.is_empty()
        && spec.writes.is_empty()
        && spec.min_args.is_none()
        && spec.max_args.is_none());
    let bad = |why: &str| PolicyError::Matcher { rule: spec.name.clone(), why: why.to_owned() };
    match &spec.detector {
        Some(_) if declarative => Err(bad("a rule has either `detector` or matcher keys, not both")),
        Some(name) => match name.parse::<Detector>() {
            Ok(d) => Ok(RuleKind::Detector(d)),
            Err(known) => Err(bad(&format!("unknown detector {name:?} (known: {known})"))),
        },
        None if !declarative => {
            Err(bad("no matcher: give `detector` or at least one of `programs`, `any_arg`, ..."))
        }
        None => {
            let x = |list: &[String]| expand_sets(&spec.name, list, sets);
            let only_selectors = spec.programs.is_empty()
                && spec.any_arg.is_empty()
                && spec.all_args.is_empty()
                && spec.any_path.is_empty()
                && spec.writes.is_empty();
            if only_selectors {
                return Err(bad(
                    "needs `programs`, `any_arg`, `all_args`, `any_path` or `writes` to select commands",
                ));
            }
            Ok(RuleKind::Match(Box::new(Matcher {
                programs: x(&spec.programs)?,
                subcommand: x(&spec.subcommand)?,
                any_flag: x(&spec.any_flag)?,
                not_flag: x(&spec.not_flag)?,
                any_arg: x(&spec.any_arg)?,
                all_args: x(&spec.all_args)?,
                not_arg: x(&spec.not_arg)?,
                any_path: x(&spec.any_path)?,
                writes: x(&spec.writes)?,
                min_args: spec.min_args,
                max_args: spec.max_args,
            })))
        }
    }
}

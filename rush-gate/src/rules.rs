//! Rules: a tag, a weight, maybe a floor, and either a declarative matcher over one simple
//! command (program, subcommand, flags, arguments, paths) or a named detector for what needs
//! code (pipelines, paths against the workspace and tokens, walk facts).

use rush_proto::gate::GateDecision;

use crate::Context;
use crate::effects::{self, Effect, Op};
use crate::paths;
use crate::pattern::glob_matches;
use crate::policy::{Policy, Vocab};
use crate::printer::argv_form;
use crate::walk::{Cmd, Walked};

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: String,
    pub tag: String,
    pub weight: u32,
    pub floor: Option<GateDecision>,
    pub kind: RuleKind,
}

#[derive(Debug, Clone)]
pub(crate) enum RuleKind {
    Match(Box<Matcher>),
    Detector(Detector),
}

/// All given conditions must hold for one command. Lists are globs (`*` any run), `@name`
/// entries having been replaced by the set's words.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    /// The program's basename is one of these.
    pub programs: Vec<String>,
    /// The first operand (after global options) is one of these (`git push`).
    pub subcommand: Vec<String>,
    /// Some argument is one of these flags; `-r` also matches inside `-rf`, `--force`
    /// also matches `--force=x`.
    pub any_flag: Vec<String>,
    /// No argument is one of these flags.
    pub not_flag: Vec<String>,
    /// Some argument matches one of these.
    pub any_arg: Vec<String>,
    /// Each of these matches some argument.
    pub all_args: Vec<String>,
    /// No argument matches one of these.
    pub not_arg: Vec<String>,
    /// A path the command touches or names (resolved; `~` allowed) matches one of these.
    pub any_path: Vec<String>,
    /// A path it writes, creates or deletes matches one of these.
    pub writes: Vec<String>,
    pub min_args: Option<usize>,
    pub max_args: Option<usize>,
}

/// Global options whose value is the next word, skipped when looking for a subcommand.
const GLOBAL_VALUE_OPTIONS: &[&str] = &[
    "-C",
    "-c",
    "--git-dir",
    "--work-tree",
    "--namespace",
    "--prefix",
    "-o",
    "-H",
    "--host",
    "--context",
    "--kubeconfig",
    "--config",
    "--manifest-path",
    "-Z",
    "--profile",
    "--region",
];

/// The first operand of a subcommand-style tool (`git -C x push` is `push`).
pub(crate) fn subcommand(cmd: &Cmd) -> Option<&str> {
    let mut i = 1;
    while let Some(w) = cmd.words.get(i) {
        let a = w.text.as_str();
        if a == "--" {
            return cmd.words.get(i + 1).map(|w| w.text.as_str());
        }
        if a.len() > 1 && (a.starts_with('-') || a.starts_with('+')) {
            i += if GLOBAL_VALUE_OPTIONS.contains(&a) { 2 } else { 1 };
            continue;
        }
        return Some(a);
    }
    None
}

/// Whether argument `arg` is flag `spec`.
pub(crate) fn flag_matches(spec: &str, arg: &str) -> bool {
    if spec.contains('*') {
        return glob_matches(spec, arg);
    }
    if arg == spec {
        return true;
    }
    if spec.starts_with("--") {
        return arg.strip_prefix(spec).is_some_and(|rest| rest.starts_with('='));
    }
    // A one-letter flag inside a bundle of letters: `-r` in `-rf`.
    match spec.strip_prefix('-').map(|s| s.chars().collect::<Vec<_>>()).as_deref() {
        Some([letter]) => {
            arg.starts_with('-')
                && !arg.starts_with("--")
                && arg.len() > 2
                && arg[1..].chars().all(|c| c.is_ascii_alphabetic())
                && arg[1..].contains(*letter)
        }
        _ => false,
    }
}

impl Matcher {
    fn matches(&self, cmd: &Cmd, effects: &[Effect], scene: &Scene<'_>) -> bool {
        let args: Vec<&str> = cmd.words.iter().skip(1).map(|w| w.text.as_str()).collect();
        let flags: Vec<&str> = args.iter().copied().take_while(|a| *a != "--").collect();
        let any = |globs: &[String], s: &str| globs.iter().any(|g| glob_matches(g, s));
        if !self.programs.is_empty() && !any(&self.programs, &cmd.gate.program) {
            return false;
        }
        if !self.subcommand.is_empty() && !subcommand(cmd).is_some_and(|s| any(&self.subcommand, s)) {
            return false;
        }
        if !self.any_flag.is_empty()
            && !flags.iter().any(|a| self.any_flag.iter().any(|f| flag_matches(f, a)))
        {
            return false;
        }
        if flags.iter().any(|a| self.not_flag.iter().any(|f| flag_matches(f, a))) {
            return false;
        }
        if !self.any_arg.is_empty() && !args.iter().any(|a| any(&self.any_arg, a)) {
            return false;
        }
        if !self.all_args.iter().all(|g| args.iter().any(|a| glob_matches(g, a))) {
            return false;
        }
        if args.iter().any(|a| any(&self.not_arg, a)) {
            return false;
        }
        if self.min_args.is_some_and(|n| args.len() < n) || self.max_args.is_some_and(|n| args.len() > n) {
            return false;
        }
        if !self.any_path.is_empty() {
            let globs: Vec<String> = self.any_path.iter().map(|g| paths::with_home(g, &scene.home)).collect();
            let named = args
                .iter()
                .filter(|a| paths::looks_like_path(a))
                .map(|a| paths::resolve(&cmd.cwd, a))
                .chain(effects.iter().filter(|e| !e.dynamic).map(|e| e.path.clone()));
            if !named
                .into_iter()
                .any(|p| any(&globs, &p) || globs.iter().any(|g| !g.contains('*') && paths::within(&p, g)))
            {
                return false;
            }
        }
        if !self.writes.is_empty() {
            let globs: Vec<String> = self.writes.iter().map(|g| paths::with_home(g, &scene.home)).collect();
            let written = effects.iter().filter(|e| e.op != Op::Read && !e.dynamic);
            if !written.into_iter().any(|e| any(&globs, &e.path)) {
                return false;
            }
        }
        true
    }
}

/// What a rule found: the command (None: the line as a whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub command: Option<usize>,
    pub why: String,
}

/// Everything rules look at for one command line.
pub(crate) struct Scene<'s> {
    pub walked: &'s Walked,
    pub effects: Vec<Vec<Effect>>,
    pub ctx: &'s Context<'s>,
    pub vocab: &'s Vocab,
    pub home: String,
    /// The directory writes are judged against: the workspace, or the working directory.
    pub root: String,
}

impl<'s> Scene<'s> {
    pub(crate) fn new(walked: &'s Walked, ctx: &'s Context<'s>, policy: &'s Policy) -> Scene<'s> {
        let cwd = paths::resolve("/", &ctx.cwd.to_string_lossy());
        let root = match ctx.workspace {
            Some(w) => paths::resolve("/", &w.to_string_lossy()),
            None => cwd,
        };
        let mut effects: Vec<Vec<Effect>> = walked.cmds.iter().map(effects::of).collect();
        // `find / -type f | xargs rm`: rm deletes what find found under its roots.
        for stages in &walked.pipes {
            let mut roots: Vec<String> = Vec::new();
            for stage in stages {
                for j in stage.clone() {
                    let c = &walked.cmds[j];
                    let fed = c.gate.via.last().is_some_and(|v| v == "xargs");
                    if fed
                        && !roots.is_empty()
                        && matches!(c.gate.program.as_str(), "rm" | "unlink" | "shred" | "rmdir")
                    {
                        let recursive = effects::has_flag(&c.words, 'r', &["--recursive"])
                            || effects::has_flag(&c.words, 'R', &[]);
                        for path in &roots {
                            effects[j].push(Effect {
                                op: Op::Delete,
                                path: path.clone(),
                                dynamic: false,
                                recursive,
                            });
                        }
                    }
                }
                for j in stage.clone().filter(|&j| walked.cmds[j].gate.program == "find") {
                    roots.extend(effects[j].iter().filter(|e| !e.dynamic).map(|e| e.path.clone()));
                }
            }
        }
        Scene {
            walked,
            effects,
            ctx,
            vocab: &policy.vocab,
            home: paths::resolve("/", &ctx.home.to_string_lossy()),
            root,
        }
    }

    /// A command's normalised form, shortened for a one-line reason.
    pub(crate) fn form(&self, i: usize) -> String {
        let cmd = &self.walked.cmds[i];
        let dynamic: Vec<bool> = cmd.words.iter().map(|w| w.dynamic).collect();
        shorten(&argv_form(&cmd.gate.argv, &dynamic, &self.home))
    }
}

/// At most 80 characters, cut at a character boundary.
pub(crate) fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(79).collect::<String>())
    }
}

impl Rule {
    pub(crate) fn hits(&self, scene: &Scene<'_>) -> Vec<Hit> {
        match &self.kind {
            RuleKind::Match(m) => {
                let select_all = !m.programs.is_empty();
                scene
                    .walked
                    .cmds
                    .iter()
                    .enumerate()
                    // A rule that does not name programs judges arguments: the wrapper's
                    // (`sudo cat x`) and the wrapped command's (`cat x`) are the same ones.
                    .filter(|(_, c)| select_all || !c.wrapper)
                    .filter(|(i, c)| m.matches(c, &scene.effects[*i], scene))
                    .map(|(i, _)| Hit { command: Some(i), why: scene.form(i) })
                    .collect()
            }
            RuleKind::Detector(d) => d.hits(scene),
        }
    }
}

pub(crate) use crate::detectors::Detector;

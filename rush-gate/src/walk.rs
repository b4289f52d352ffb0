//! The walk: brush-parser's tree of a command line, flattened into every simple command it
//! would run, outermost first, in source order, with how each is reached (`via`).
//!
//! Code hidden in strings is parsed and walked too (`bash -c`, `eval`, here-documents fed
//! to a shell, aliases and functions defined on the same line), to a depth limit: past it,
//! or past a command budget, the walk stops and says so (a fact the rules turn into a tag).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::rc::Rc;

use brush_parser::ast;
use brush_parser::{Parser, ParserOptions};
use rush_proto::gate::GateCommand;

use crate::nesting::{MAX_NESTING, nesting};
use crate::paths;
use crate::pattern::{quote_dynamic, quote_literal};
use crate::words::{self, SubstKind, Word, WordEnv};
use crate::wrappers::{self, Plan};

/// Deepest nesting of code in code (`bash -c "eval '...'"`) the walk follows.
pub(crate) const MAX_DEPTH: usize = 16;
/// Most simple commands one assessment walks (functions calling functions multiply).
pub(crate) const MAX_COMMANDS: usize = 1024;

/// Parses a program with the options the executor uses.
pub(crate) fn parse(src: &str) -> Result<ast::Program, String> {
    parse_nested(src).map(|(p, _)| p)
}

/// Parses a program, and says how deeply it nests.
pub(crate) fn parse_nested(src: &str) -> Result<(ast::Program, usize), String> {
    let depth = nesting(src);
    if depth > MAX_NESTING {
        return Err(format!("nests {depth} levels deep, more than {MAX_NESTING}"));
    }
    let mut parser = Parser::new(std::io::BufReader::new(src.as_bytes()), &ParserOptions::default());
    parser.parse_program().map(|p| (p, depth)).map_err(|e| e.to_string())
}

/// One simple command and what the walk learned around it.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub gate: GateCommand,
    /// The argv as expanded words (same length as `gate.argv`).
    pub words: Vec<Word>,
    /// Where it runs (`cd` earlier on the line moves it).
    pub cwd: String,
    /// Files it reads through `<` redirections (resolved).
    pub reads: Vec<String>,
    /// `NAME=value` prefixes.
    pub env: Vec<(String, Word)>,
    /// Commands walked from its words' substitutions (`$( )`, `<( )`).
    pub subst: Range<usize>,
    /// Commands it runs itself: a wrapper's command, a `-c` string, a here-document fed to
    /// a shell, a function's or alias's body.
    pub inner: Range<usize>,
    /// It runs another command given in its arguments (`sudo`, `xargs`, `bash -c`).
    pub wrapper: bool,
    /// Its standard input is a here-document or here-string.
    pub fed: bool,
    /// That here-document's body or here-string's text, when known before it runs.
    pub stdin_text: Option<String>,
}

/// What the walk saw that is not a command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fact {
    /// `$IFS` used inside a word.
    Ifs,
    /// `eval` (or a shell's code) built from values only known at run time.
    Computed,
    /// Code nested deeper than [`MAX_DEPTH`].
    Depth,
    /// More than [`MAX_COMMANDS`] commands.
    Budget,
    /// Code in a string (`bash -c`, `eval`, here-document) that does not parse.
    NestedUnparsable(String),
    /// Run in the background with `&`.
    Background,
    /// A function that calls itself (`:(){ :|:& };:`).
    Recursion(String),
}

/// The result of a walk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Walked {
    pub cmds: Vec<Cmd>,
    /// Pipelines of two stages or more: each stage's command range.
    pub pipes: Vec<Vec<Range<usize>>>,
    /// Facts, with the command they concern when there is one.
    pub facts: Vec<(Option<usize>, Fact)>,
    /// Assignments with no command (`PATH=/tmp:$PATH; ls`): name and value as written.
    pub assigns: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
struct Frame {
    via: Vec<String>,
    depth: usize,
    /// Arguments completed at run time (xargs, find -exec).
    dynamic: bool,
    /// The nesting of the code being walked, and of all the code it sits in: the walk
    /// recurses through both, so their sum is kept under [`MAX_TOTAL_NESTING`].
    own: usize,
    total: usize,
}

impl Frame {
    fn nest(&self, step: impl Into<String>) -> Frame {
        let mut via = self.via.clone();
        via.push(step.into());
        Frame { via, depth: self.depth + 1, ..*self }
    }
}

/// Deepest nesting of code in code summed over the levels (see [`Frame`]).
pub(crate) const MAX_TOTAL_NESTING: usize = 64;

/// Redirections and the like of one simple command, before it is emitted.
#[derive(Default)]
struct Extra {
    env: Vec<(String, Word)>,
    writes: Vec<String>,
    reads: Vec<String>,
    /// Substitutions in assignments and redirection targets.
    substs: Vec<(SubstKind, String)>,
    /// Process substitutions among the arguments.
    procs: Vec<(String, ast::CompoundList)>,
    /// Here-documents: body, and whether the shell expands it.
    docs: Vec<(String, bool)>,
    /// Here-strings.
    strings: Vec<Word>,
}

pub(crate) struct Walker<'a> {
    home: &'a str,
    cwd: String,
    opts: ParserOptions,
    out: Walked,
    /// Functions defined so far, with the nesting of the code they were defined in.
    functions: BTreeMap<String, (Rc<ast::FunctionBody>, usize)>,
    aliases: BTreeMap<String, String>,
    /// Functions and aliases being expanded (a body that calls its own name is not
    /// walked again: bash's aliases do not recurse, and a recursive function adds nothing).
    active: BTreeSet<String>,
    /// The facts recorded, for recording each once.
    seen_facts: BTreeSet<(Option<usize>, Fact)>,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(home: &'a str, cwd: &str) -> Self {
        Walker {
            home,
            cwd: cwd.to_owned(),
            opts: ParserOptions::default(),
            out: Walked::default(),
            functions: BTreeMap::new(),
            aliases: BTreeMap::new(),
            active: BTreeSet::new(),
            seen_facts: BTreeSet::new(),
        }
    }

    /// Walks `program`, parsed from code that nests `nesting` levels deep.
    pub(crate) fn walk(mut self, program: &ast::Program, nesting: usize) -> Walked {
        self.program(program, &Frame { own: nesting, total: nesting, ..Frame::default() });
        self.out
    }

    fn env(&self) -> WordEnv<'_> {
        WordEnv { home: self.home, cwd: &self.cwd }
    }

    fn expand(&self, raw: &str) -> Word {
        words::expand(raw, self.env(), &self.opts)
    }

    fn fact(&mut self, cmd: Option<usize>, fact: Fact) {
        if self.seen_facts.insert((cmd, fact.clone())) {
            self.out.facts.push((cmd, fact));
        }
    }

    /// Walks code found in a string; it runs in a child shell, so `cd` inside stays there.
    fn code(&mut self, src: &str, f: &Frame) {
        let own = nesting(src);
        if f.depth > MAX_DEPTH || f.total + own > MAX_TOTAL_NESTING {
            self.fact(None, Fact::Depth);
            return;
        }
        match parse(src) {
            Ok(p) => {
                let saved = self.cwd.clone();
                self.program(&p, &Frame { own, total: f.total + own, ..f.clone() });
                self.cwd = saved;
            }
            Err(e) => {
                let via = f.via.last().cloned().unwrap_or_default();
                self.fact(None, Fact::NestedUnparsable(format!("{via}: {e}")));
            }
        }
    }

    fn program(&mut self, p: &ast::Program, f: &Frame) {
        for list in &p.complete_commands {
            self.list(list, f);
        }
    }

    fn list(&mut self, l: &ast::CompoundList, f: &Frame) {
        for ast::CompoundListItem(and_or, sep) in &l.0 {
            let start = self.out.cmds.len();
            self.pipeline(&and_or.first, f);
            for next in &and_or.additional {
                match next {
                    ast::AndOr::And(p) | ast::AndOr::Or(p) => self.pipeline(p, f),
                }
            }
            if matches!(sep, ast::SeparatorOperator::Async) {
                let first = (start < self.out.cmds.len()).then_some(start);
                self.fact(first, Fact::Background);
            }
        }
    }

    fn pipeline(&mut self, p: &ast::Pipeline, f: &Frame) {
        if p.seq.len() < 2 {
            for c in &p.seq {
                self.command(c, f);
            }
            return;
        }
        // Every stage runs in a subshell: a `cd` in one does not move the next.
        let saved = self.cwd.clone();
        let mut stages = Vec::with_capacity(p.seq.len());
        for c in &p.seq {
            let start = self.out.cmds.len();
            self.command(c, f);
            stages.push(start..self.out.cmds.len());
            self.cwd.clone_from(&saved);
        }
        // `echo 'cmd' | sh`, `cat <<EOF | sh`: the script is on the line; walk it.
        for pair in stages.windows(2) {
            let (up, down) = (pair[0].clone(), pair[1].clone());
            let Some(reader) = down.clone().find(|&j| {
                let c = &self.out.cmds[j];
                !c.fed && wrappers::is_shell(&c.gate.program) && wrappers::shell_reads_stdin(&c.words)
            }) else {
                continue;
            };
            if up.len() != 1 {
                continue;
            }
            if let Some(text) = literal_output(&self.out.cmds[up.start]) {
                let via = format!("pipe to {}", self.out.cmds[reader].gate.program);
                self.code(&text, &f.nest(via));
            }
        }
        self.out.pipes.push(stages);
    }

    fn command(&mut self, c: &ast::Command, f: &Frame) {
        match c {
            ast::Command::Simple(sc) => self.simple(sc, f),
            ast::Command::Compound(cc, redirects) => {
                let start = self.out.cmds.len();
                self.compound(cc, f);
                if let Some(r) = redirects {
                    self.compound_redirects(&r.0, start, f);
                }
            }
            ast::Command::Function(def) => {
                let name = self.expand(&def.fname.value).text;
                self.functions.insert(name.clone(), (Rc::new(def.body.clone()), f.own));
                let saved = self.cwd.clone();
                self.function_body(&def.body, &f.nest(format!("function {name}")));
                self.cwd = saved;
            }
            ast::Command::ExtendedTest(test, redirects) => {
                let start = self.out.cmds.len();
                self.test_expr(&test.expr, f);
                if let Some(r) = redirects {
                    self.compound_redirects(&r.0, start, f);
                }
            }
        }
    }

    fn function_body(&mut self, body: &ast::FunctionBody, f: &Frame) {
        if f.depth > MAX_DEPTH {
            self.fact(None, Fact::Depth);
            return;
        }
        let start = self.out.cmds.len();
        self.compound(&body.0, f);
        if let Some(r) = &body.1 {
            self.compound_redirects(&r.0, start, f);
        }
    }

    fn compound(&mut self, cc: &ast::CompoundCommand, f: &Frame) {
        use ast::CompoundCommand as C;
        match cc {
            C::BraceGroup(b) => self.list(&b.list, f),
            C::Subshell(s) => {
                let saved = self.cwd.clone();
                self.list(&s.list, f);
                self.cwd = saved;
            }
            C::ForClause(fc) => {
                for w in fc.values.iter().flatten() {
                    let w = self.expand(&w.value);
                    self.substs(&w.substs, f);
                }
                self.list(&fc.body.list, f);
            }
            C::ArithmeticForClause(fc) => {
                for e in [&fc.initializer, &fc.condition, &fc.updater].into_iter().flatten() {
                    self.arith(&e.value, f);
                }
                self.list(&fc.body.list, f);
            }
            C::CaseClause(cc) => {
                let w = self.expand(&cc.value.value);
                self.substs(&w.substs, f);
                for item in &cc.cases {
                    for p in &item.patterns {
                        let w = self.expand(&p.value);
                        self.substs(&w.substs, f);
                    }
                    if let Some(body) = &item.cmd {
                        self.list(body, f);
                    }
                }
            }
            C::IfClause(ic) => {
                self.list(&ic.condition, f);
                self.list(&ic.then, f);
                for e in ic.elses.iter().flatten() {
                    if let Some(c) = &e.condition {
                        self.list(c, f);
                    }
                    self.list(&e.body, f);
                }
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.list(&w.0, f);
                self.list(&w.1.list, f);
            }
            C::Coprocess(c) => {
                let start = self.out.cmds.len();
                self.command(&c.body, f);
                let first = (start < self.out.cmds.len()).then_some(start);
                self.fact(first, Fact::Background);
            }
            C::Arithmetic(a) => {
                self.arith(&a.expr.value, f);
                // brush reads `( (cmd) )` as `((cmd))`; bash runs nested subshells. Text
                // that is no arithmetic is walked as the commands bash would see.
                if brush_parser::arithmetic::parse(&a.expr.value).is_err() {
                    self.code(&a.expr.value, &f.nest("( )"));
                }
            }
        }
    }

    /// Substitutions inside an arithmetic expression.
    fn arith(&mut self, expr: &str, f: &Frame) {
        let w = self.expand(&format!("\"{}\"", expr.replace('"', "")));
        self.substs(&w.substs, f);
    }

    fn test_expr(&mut self, e: &ast::ExtendedTestExpr, f: &Frame) {
        use ast::ExtendedTestExpr as T;
        match e {
            T::And(a, b) | T::Or(a, b) => {
                self.test_expr(a, f);
                self.test_expr(b, f);
            }
            T::Not(a) | T::Parenthesized(a) => self.test_expr(a, f),
            T::UnaryTest(_, w) => {
                let w = self.expand(&w.value);
                self.substs(&w.substs, f);
            }
            T::BinaryTest(_, a, b) => {
                for w in [a, b] {
                    let w = self.expand(&w.value);
                    self.substs(&w.substs, f);
                }
            }
        }
    }

    fn substs(&mut self, substs: &[(SubstKind, String)], f: &Frame) {
        for (kind, src) in substs {
            self.code(src, &f.nest(kind.via()));
        }
    }

    /// Redirections on a compound command apply to every command inside it.
    fn compound_redirects(&mut self, redirects: &[ast::IoRedirect], start: usize, f: &Frame) {
        let mut extra = Extra::default();
        for r in redirects {
            self.redirect(r, &mut extra);
        }
        let end = self.out.cmds.len();
        for cmd in self.out.cmds.get_mut(start..end).into_iter().flatten() {
            cmd.gate.writes.extend(extra.writes.iter().cloned());
            cmd.reads.extend(extra.reads.iter().cloned());
        }
        self.substs(&extra.substs, f);
        for (via, list) in &extra.procs {
            self.list(list, &f.nest(via.clone()));
        }
        for (body, expands) in &extra.docs {
            if *expands {
                let substs = words::heredoc_substs(body, self.env(), &self.opts);
                self.substs(&substs, f);
            }
        }
    }

    /// Where a redirection target resolves, or it as written when only known at run time.
    fn target(&self, w: &Word) -> String {
        if w.dynamic { w.text.clone() } else { paths::resolve(&self.cwd, &w.text) }
    }

    fn redirect(&mut self, r: &ast::IoRedirect, extra: &mut Extra) {
        use ast::IoFileRedirectKind as K;
        use ast::IoFileRedirectTarget as T;
        match r {
            ast::IoRedirect::File(_, kind, target) => match target {
                T::Filename(w) | T::Duplicate(w) => {
                    let w = self.expand(&w.value);
                    extra.substs.extend(w.substs.iter().cloned());
                    let dup = matches!(target, T::Duplicate(_));
                    // `>&2`, `<&0`, `>&-` duplicate descriptors; `>&file` writes a file.
                    if dup && (w.text == "-" || w.text.chars().all(|c| c.is_ascii_digit())) {
                        return;
                    }
                    let path = self.target(&w);
                    match kind {
                        K::Read | K::DuplicateInput => extra.reads.push(path),
                        K::ReadAndWrite => {
                            extra.reads.push(path.clone());
                            push_write(&mut extra.writes, path);
                        }
                        K::Write | K::Append | K::Clobber | K::DuplicateOutput => {
                            push_write(&mut extra.writes, path);
                        }
                    }
                }
                T::Fd(_) => {}
                T::ProcessSubstitution(kind, sub) => {
                    extra.procs.push((proc_via(kind).to_owned(), sub.list.clone()));
                }
            },
            ast::IoRedirect::OutputAndError(w, _) => {
                let w = self.expand(&w.value);
                extra.substs.extend(w.substs.iter().cloned());
                let path = self.target(&w);
                push_write(&mut extra.writes, path);
            }
            ast::IoRedirect::HereDocument(_, doc) => {
                extra.docs.push((doc.doc.value.clone(), doc.requires_expansion));
            }
            ast::IoRedirect::HereString(_, w) => {
                let w = self.expand(&w.value);
                extra.substs.extend(w.substs.iter().cloned());
                extra.strings.push(w);
            }
        }
    }

    fn simple(&mut self, sc: &ast::SimpleCommand, f: &Frame) {
        use ast::CommandPrefixOrSuffixItem as I;
        let mut argv: Vec<Word> = Vec::new();
        let mut extra = Extra::default();
        let items = sc.prefix.iter().flat_map(|p| p.0.iter());
        let name = sc.word_or_name.iter().map(|w| I::Word(w.clone()));
        let suffix = sc.suffix.iter().flat_map(|s| s.0.iter());
        // The name is cloned into an item so prefix, name and suffix are walked in order.
        let name: Vec<I> = name.collect();
        for item in items.chain(name.iter()).chain(suffix) {
            match item {
                I::AssignmentWord(a, _) if argv.is_empty() => {
                    let (name, value) = self.assignment(a);
                    extra.substs.extend(value.substs.iter().cloned());
                    extra.env.push((name, value));
                }
                I::AssignmentWord(_, w) | I::Word(w) => argv.push(self.expand(&w.value)),
                I::IoRedirect(r) => self.redirect(r, &mut extra),
                I::ProcessSubstitution(kind, sub) => {
                    let via = proc_via(kind);
                    let text = format!("{}({})", &via[..1], flat(&sub.list.to_string()));
                    argv.push(Word { text, dynamic: true, ..Word::default() });
                    extra.procs.push((via.to_owned(), sub.list.clone()));
                }
            }
        }
        // `$IFS` splitting and brace expansion make one written word several.
        let mut split = Vec::with_capacity(argv.len());
        let mut ifs = false;
        for w in argv {
            ifs |= w.ifs;
            match &w.fields {
                Some(fields) => {
                    let mut first = true;
                    for field in fields {
                        // The substitutions stay with the first field, to be walked once.
                        let substs = if first { w.substs.clone() } else { Vec::new() };
                        first = false;
                        split.push(Word { text: field.clone(), substs, ..Word::default() });
                    }
                }
                None => split.push(w),
            }
        }
        // A bare assignment: nothing runs but its substitutions. (A redirection alone,
        // `> /etc/x`, still truncates its target: it is a command with no words.)
        if split.is_empty() && extra.writes.is_empty() && extra.reads.is_empty() && extra.docs.is_empty() {
            for (name, value) in &extra.env {
                self.out.assigns.push((name.clone(), value.text.clone()));
            }
            self.substs(&extra.substs, f);
            for (via, list) in &extra.procs {
                self.list(list, &f.nest(via.clone()));
            }
            return;
        }
        let idx = self.emit(split, extra, f);
        if ifs {
            self.fact(idx, Fact::Ifs);
        }
    }

    fn assignment(&self, a: &ast::Assignment) -> (String, Word) {
        let name = match &a.name {
            ast::AssignmentName::VariableName(n) | ast::AssignmentName::ArrayElementName(n, _) => n.clone(),
        };
        let value = match &a.value {
            ast::AssignmentValue::Scalar(w) => self.expand(&w.value),
            ast::AssignmentValue::Array(items) => {
                let mut all = Word::default();
                for (k, v) in items {
                    for w in k.iter().chain(std::iter::once(v)) {
                        let e = self.expand(&w.value);
                        all.dynamic |= e.dynamic;
                        all.substs.extend(e.substs);
                        if !all.text.is_empty() {
                            all.text.push(' ');
                        }
                        all.text.push_str(&e.text);
                    }
                }
                all
            }
        };
        (name, value)
    }

    /// Records one simple command and walks everything it runs. Returns its index.
    fn emit(&mut self, words: Vec<Word>, extra: Extra, f: &Frame) -> Option<usize> {
        if f.depth > MAX_DEPTH {
            self.fact(None, Fact::Depth);
            return None;
        }
        if self.out.cmds.len() >= MAX_COMMANDS {
            self.fact(None, Fact::Budget);
            return None;
        }
        let first = words.first().map(|w| w.text.clone()).unwrap_or_default();
        let (program, path) = match first.rsplit_once('/') {
            Some((_, base)) => (base.to_owned(), Some(first.clone())),
            None => (first.clone(), None),
        };
        let program_dynamic = words.first().is_some_and(|w| w.dynamic);
        let idx = self.out.cmds.len();
        let gate = GateCommand {
            argv: words.iter().map(|w| w.text.clone()).collect(),
            program: program.clone(),
            path,
            via: f.via.clone(),
            writes: extra.writes.clone(),
            dynamic: f.dynamic || words.iter().any(|w| w.dynamic),
        };
        let fed = !extra.docs.is_empty() || !extra.strings.is_empty();
        let stdin_text = match (extra.docs.first(), extra.strings.first()) {
            (Some((body, _)), _) => Some(body.clone()),
            (None, Some(w)) if !w.opaque => Some(w.text.clone()),
            _ => None,
        };
        self.out.cmds.push(Cmd {
            gate,
            words: words.clone(),
            cwd: self.cwd.clone(),
            reads: extra.reads.clone(),
            env: extra.env.clone(),
            subst: idx + 1..idx + 1,
            inner: idx + 1..idx + 1,
            wrapper: false,
            fed,
            stdin_text,
        });

        let plans = if program_dynamic { Vec::new() } else { wrappers::plan(&program, &words) };
        let reparsed: BTreeSet<usize> = plans
            .iter()
            .flat_map(|p| match p {
                Plan::Code { from, .. } => from.clone(),
                Plan::Exec { .. } => Vec::new(),
            })
            .collect();

        // Substitutions run before the command does, in the current shell's view.
        let start = self.out.cmds.len();
        for (i, w) in words.iter().enumerate() {
            if !reparsed.contains(&i) {
                self.substs(&w.substs, f);
            }
        }
        self.substs(&extra.substs, f);
        for (via, list) in &extra.procs {
            let saved = self.cwd.clone();
            self.list(list, &f.nest(via.clone()));
            self.cwd = saved;
        }
        let shell_reads_stdin = !program_dynamic
            && ((wrappers::is_shell(&program) && wrappers::shell_reads_stdin(&words))
                || wrappers::sources_stdin(&program, &words));
        for (body, expands) in &extra.docs {
            if shell_reads_stdin {
                continue; // walked below as the shell's script
            }
            if *expands {
                let substs = words::heredoc_substs(body, self.env(), &self.opts);
                self.substs(&substs, f);
            }
        }
        self.out.cmds[idx].subst = start..self.out.cmds.len();

        let start = self.out.cmds.len();
        if shell_reads_stdin {
            for (body, _) in &extra.docs {
                self.code(body, &f.nest(format!("here-doc to {program}")));
            }
            for w in &extra.strings {
                self.code(&w.text, &f.nest(format!("here-string to {program}")));
            }
        }
        if !program_dynamic {
            self.builtins(&program, &words);
        }
        // Variables whose value the program runs as a command (`GIT_SSH_COMMAND='...' git`).
        for (name, value) in &extra.env {
            if CODE_VARIABLES.contains(&name.as_str()) && !value.opaque {
                self.code(&value.text, &f.nest(format!("{name}=")));
            }
        }
        let wrapper = !plans.is_empty();
        for p in plans {
            match p {
                Plan::Exec { via, words: inner, dynamic } => {
                    let mut fr = f.nest(via);
                    fr.dynamic |= dynamic;
                    self.emit(inner, Extra::default(), &fr);
                }
                Plan::Code { via, text, computed, .. } => {
                    if computed {
                        self.fact(Some(idx), Fact::Computed);
                    }
                    self.code(&text, &f.nest(via));
                }
            }
        }
        if !program_dynamic && words.first().is_some_and(|w| !w.text.contains('/')) {
            self.call(&program, &words, f);
        }
        let end = self.out.cmds.len();
        let cmd = &mut self.out.cmds[idx];
        cmd.inner = start..end;
        cmd.wrapper = wrapper;
        Some(idx)
    }

    /// Builtins that change how the rest of the line is read: `cd`, `alias`.
    fn builtins(&mut self, program: &str, words: &[Word]) {
        match program {
            "cd" | "pushd" => {
                let i = wrappers::first_operand(words, 1, &[]);
                match words.get(i) {
                    None => self.cwd = self.home.to_owned(),
                    Some(w) if w.dynamic || w.text == "-" => {}
                    Some(w) => self.cwd = paths::resolve(&self.cwd, &w.text),
                }
            }
            "alias" => {
                for w in words.iter().skip(1).filter(|w| !w.dynamic) {
                    if let Some((name, value)) = w.text.split_once('=') {
                        self.aliases.insert(name.to_owned(), value.to_owned());
                    }
                }
            }
            _ => {}
        }
    }

    /// A call of a function or alias defined earlier on the line: walk what it does.
    fn call(&mut self, name: &str, words: &[Word], f: &Frame) {
        if self.active.contains(name) {
            if self.functions.contains_key(name) {
                self.fact(None, Fact::Recursion(name.to_owned()));
            }
            return;
        }
        if let Some((body, own)) = self.functions.get(name).cloned() {
            if f.total + own > MAX_TOTAL_NESTING {
                self.fact(None, Fact::Depth);
                return;
            }
            self.active.insert(name.to_owned());
            let fr = Frame { own, total: f.total + own, ..f.nest(format!("call {name}")) };
            self.function_body(&body, &fr);
            self.active.remove(name);
        } else if let Some(value) = self.aliases.get(name).cloned() {
            let mut src = value.clone();
            for w in words.iter().skip(1) {
                src.push(' ');
                src.push_str(&if w.dynamic { quote_dynamic(&w.text) } else { quote_literal(&w.text) });
            }
            self.active.insert(name.to_owned());
            self.code(&src, &f.nest(format!("alias {name}")));
            // The arguments join the alias's last command; its commands are judged on
            // their own as well (`alias git='curl .. | sh'; git status`).
            if words.len() > 1 {
                self.code(&value, &f.nest(format!("alias {name}")));
            }
            self.active.remove(name);
        }
    }
}

/// Environment variables holding a command line that programs run.
const CODE_VARIABLES: &[&str] = &[
    "GIT_SSH_COMMAND",
    "GIT_SSH",
    "GIT_PAGER",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
    "GIT_EXTERNAL_DIFF",
    "GIT_PROXY_COMMAND",
    "GIT_ASKPASS",
    "PAGER",
    "EDITOR",
    "VISUAL",
    "PROMPT_COMMAND",
    "LESSOPEN",
    "SSH_ASKPASS",
];

fn push_write(writes: &mut Vec<String>, path: String) {
    if !paths::is_sink(&path) {
        writes.push(path);
    }
}

fn proc_via(kind: &ast::ProcessSubstitutionKind) -> &'static str {
    match kind {
        ast::ProcessSubstitutionKind::Read => "<( )",
        ast::ProcessSubstitutionKind::Write => ">( )",
    }
}

/// What a command prints when that is on the line itself: `echo` / `printf` of literal
/// words, `cat` of a here-document.
pub(crate) fn literal_output(c: &Cmd) -> Option<String> {
    if c.words.iter().any(|w| w.opaque) {
        return None;
    }
    let args: Vec<&str> = c.words.iter().skip(1).map(|w| w.text.as_str()).collect();
    match c.gate.program.as_str() {
        "echo" => {
            let start = args.iter().take_while(|a| matches!(**a, "-n" | "-e" | "-E" | "-ne" | "-en")).count();
            let escapes = args[..start].iter().any(|a| a.contains('e'));
            let text = args[start..].join(" ");
            Some(if escapes { words::ansi_c(&text) } else { text })
        }
        // Only a format without conversions prints itself (with its escapes decoded).
        "printf" => args.first().filter(|f| !f.contains('%') && args.len() == 1).map(|f| words::ansi_c(f)),
        "cat" if args.is_empty() => c.stdin_text.clone(),
        _ => None,
    }
}

/// Collapses a printed list's whitespace to single spaces.
pub(crate) fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

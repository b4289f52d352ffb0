//! The normalised form: the command line re-printed canonically, so that spellings of the
//! same command (`'r'm  -rf  x`, `rm -rf x`) learn and match the same guardrail.
//!
//! Words are printed after quote removal (bare when that reads back the same, else in
//! single quotes); what is only known at run time is printed as written; whitespace is
//! collapsed; operators are spaced alike. Relative paths stay relative (a guardrail learned
//! in one directory applies in another); `~` and `$HOME` are resolved like every other use.

use brush_parser::ParserOptions;
use brush_parser::ast;

use crate::pattern::{quote_dynamic, quote_literal};
use crate::walk::flat;
use crate::words::{self, Word, WordEnv};

pub(crate) struct Printer<'a> {
    pub env: WordEnv<'a>,
    pub opts: ParserOptions,
}

/// A simple command's words as the normalised form prints them (`home` printed as `~`, as
/// the line's form does).
pub(crate) fn argv_form(argv: &[String], dynamic: &[bool], home: &str) -> String {
    argv.iter()
        .zip(dynamic.iter().copied().chain(std::iter::repeat(false)))
        .map(|(w, d)| {
            let w = match w.strip_prefix(home) {
                Some(rest) if home != "/" && (rest.is_empty() || rest.starts_with('/')) => format!("~{rest}"),
                _ => w.clone(),
            };
            if d { quote_dynamic(&w) } else { quote_literal(&w) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Printer<'_> {
    pub(crate) fn program(&self, p: &ast::Program) -> String {
        let parts: Vec<String> = p.complete_commands.iter().map(|l| self.list(l)).collect();
        join_lists(parts)
    }

    fn word(&self, raw: &str) -> String {
        let w = words::expand(raw, self.env, &self.opts);
        print_word(&w)
    }

    fn list(&self, l: &ast::CompoundList) -> String {
        let mut out = String::new();
        let n = l.0.len();
        for (i, ast::CompoundListItem(and_or, sep)) in l.0.iter().enumerate() {
            out.push_str(&self.and_or(and_or));
            match sep {
                ast::SeparatorOperator::Async => out.push_str(" &"),
                ast::SeparatorOperator::Sequence if i + 1 < n => out.push(';'),
                ast::SeparatorOperator::Sequence => {}
            }
            if i + 1 < n {
                out.push(' ');
            }
        }
        out
    }

    /// A list inside `{ }`, `then`, `do`: every item ends with `;` or `&`.
    fn body(&self, l: &ast::CompoundList) -> String {
        let s = self.list(l);
        if s.ends_with('&') { s } else { format!("{s};") }
    }

    fn and_or(&self, a: &ast::AndOrList) -> String {
        let mut out = self.pipeline(&a.first);
        for next in &a.additional {
            match next {
                ast::AndOr::And(p) => {
                    out.push_str(" && ");
                    out.push_str(&self.pipeline(p));
                }
                ast::AndOr::Or(p) => {
                    out.push_str(" || ");
                    out.push_str(&self.pipeline(p));
                }
            }
        }
        out
    }

    fn pipeline(&self, p: &ast::Pipeline) -> String {
        let mut out = String::new();
        if let Some(t) = &p.timed {
            out.push_str(if t.is_posix_output() { "time -p " } else { "time " });
        }
        if p.bang {
            out.push_str("! ");
        }
        let stages: Vec<String> = p.seq.iter().map(|c| self.command(c)).collect();
        out.push_str(&stages.join(" | "));
        out
    }

    fn command(&self, c: &ast::Command) -> String {
        match c {
            ast::Command::Simple(sc) => self.simple(sc),
            ast::Command::Compound(cc, r) => self.with_redirects(self.compound(cc), r.as_ref()),
            ast::Command::Function(def) => {
                let body = self.with_redirects(self.compound(&def.body.0), def.body.1.as_ref());
                format!("{}() {body}", self.word(&def.fname.value))
            }
            ast::Command::ExtendedTest(t, r) => {
                self.with_redirects(format!("[[ {} ]]", flat(&t.expr.to_string())), r.as_ref())
            }
        }
    }

    fn with_redirects(&self, mut s: String, r: Option<&ast::RedirectList>) -> String {
        for redirect in r.iter().flat_map(|r| r.0.iter()) {
            s.push(' ');
            s.push_str(&self.redirect(redirect));
        }
        s
    }

    fn compound(&self, cc: &ast::CompoundCommand) -> String {
        use ast::CompoundCommand as C;
        match cc {
            C::BraceGroup(b) => format!("{{ {} }}", self.body(&b.list)),
            C::Subshell(s) => format!("( {} )", self.list(&s.list)),
            C::ForClause(fc) => {
                let values = match &fc.values {
                    Some(ws) => {
                        let ws: Vec<String> = ws.iter().map(|w| self.word(&w.value)).collect();
                        format!(" in {}", ws.join(" "))
                    }
                    None => String::new(),
                };
                format!("for {}{values}; do {} done", fc.variable_name, self.body(&fc.body.list))
            }
            C::ArithmeticForClause(fc) => {
                let part = |e: &Option<ast::UnexpandedArithmeticExpr>| {
                    e.as_ref().map(|e| flat(&e.value)).unwrap_or_default()
                };
                format!(
                    "for (( {}; {}; {} )); do {} done",
                    part(&fc.initializer),
                    part(&fc.condition),
                    part(&fc.updater),
                    self.body(&fc.body.list)
                )
            }
            C::CaseClause(cc) => {
                let mut out = format!("case {} in", self.word(&cc.value.value));
                for item in &cc.cases {
                    let pats: Vec<String> = item.patterns.iter().map(|p| self.word(&p.value)).collect();
                    let body = item.cmd.as_ref().map(|l| self.list(l)).unwrap_or_default();
                    let end = match item.post_action {
                        ast::CaseItemPostAction::ExitCase => ";;",
                        ast::CaseItemPostAction::UnconditionallyExecuteNextCaseItem => ";&",
                        ast::CaseItemPostAction::ContinueEvaluatingCases => ";;&",
                    };
                    out.push_str(&format!(" {}) {body} {end}", pats.join("|")));
                }
                out.push_str(" esac");
                out
            }
            C::IfClause(ic) => {
                let mut out = format!("if {} then {}", self.body(&ic.condition), self.body(&ic.then));
                for e in ic.elses.iter().flatten() {
                    match &e.condition {
                        Some(c) => {
                            out.push_str(&format!(" elif {} then {}", self.body(c), self.body(&e.body)))
                        }
                        None => out.push_str(&format!(" else {}", self.body(&e.body))),
                    }
                }
                out.push_str(" fi");
                out
            }
            C::WhileClause(w) => format!("while {} do {} done", self.body(&w.0), self.body(&w.1.list)),
            C::UntilClause(w) => format!("until {} do {} done", self.body(&w.0), self.body(&w.1.list)),
            C::Coprocess(c) => {
                let name = c.name.as_ref().map(|n| format!("{} ", self.word(&n.value))).unwrap_or_default();
                format!("coproc {name}{}", self.command(&c.body))
            }
            C::Arithmetic(a) => format!("(( {} ))", flat(&a.expr.value)),
        }
    }

    fn simple(&self, sc: &ast::SimpleCommand) -> String {
        use ast::CommandPrefixOrSuffixItem as I;
        let mut parts = Vec::new();
        let name: Vec<I> = sc.word_or_name.iter().map(|w| I::Word(w.clone())).collect();
        let items = sc.prefix.iter().flat_map(|p| p.0.iter()).chain(name.iter());
        for item in items.chain(sc.suffix.iter().flat_map(|s| s.0.iter())) {
            parts.push(match item {
                I::AssignmentWord(a, w) => match &a.value {
                    ast::AssignmentValue::Scalar(v) => {
                        let name = match &a.name {
                            ast::AssignmentName::VariableName(n) => n.clone(),
                            ast::AssignmentName::ArrayElementName(n, i) => format!("{n}[{i}]"),
                        };
                        let op = if a.append { "+=" } else { "=" };
                        format!("{name}{op}{}", self.word(&v.value))
                    }
                    ast::AssignmentValue::Array(_) => flat(&w.value),
                },
                I::Word(w) => self.word(&w.value),
                I::IoRedirect(r) => self.redirect(r),
                I::ProcessSubstitution(kind, sub) => {
                    let k = match kind {
                        ast::ProcessSubstitutionKind::Read => '<',
                        ast::ProcessSubstitutionKind::Write => '>',
                    };
                    format!("{k}( {} )", self.list(&sub.list))
                }
            });
        }
        parts.join(" ")
    }

    fn redirect(&self, r: &ast::IoRedirect) -> String {
        use ast::IoFileRedirectKind as K;
        use ast::IoFileRedirectTarget as T;
        let fd = |fd: &Option<i32>| fd.map(|n| n.to_string()).unwrap_or_default();
        match r {
            ast::IoRedirect::File(n, kind, target) => {
                let op = match kind {
                    K::Read => "<",
                    K::Write => ">",
                    K::Append => ">>",
                    K::ReadAndWrite => "<>",
                    K::Clobber => ">|",
                    K::DuplicateInput => "<&",
                    K::DuplicateOutput => ">&",
                };
                let t = match target {
                    T::Filename(w) => format!(" {}", self.word(&w.value)),
                    T::Fd(n) => n.to_string(),
                    T::Duplicate(w) => self.word(&w.value),
                    T::ProcessSubstitution(k, sub) => {
                        let k = match k {
                            ast::ProcessSubstitutionKind::Read => '<',
                            ast::ProcessSubstitutionKind::Write => '>',
                        };
                        format!(" {k}( {} )", self.list(&sub.list))
                    }
                };
                format!("{}{op}{t}", fd(n))
            }
            ast::IoRedirect::OutputAndError(w, append) => {
                format!("{} {}", if *append { "&>>" } else { "&>" }, self.word(&w.value))
            }
            // Printed as the equivalent here-string, so the form stays on one line.
            ast::IoRedirect::HereDocument(n, doc) => {
                format!("{}<<< {}", fd(n), quote_literal(doc.doc.value.trim_end_matches('\n')))
            }
            ast::IoRedirect::HereString(n, w) => format!("{}<<< {}", fd(n), self.word(&w.value)),
        }
    }
}

pub(crate) fn print_word(w: &Word) -> String {
    match &w.fields {
        Some(fields) => fields.iter().map(|f| quote_literal(f)).collect::<Vec<_>>().join(" "),
        None if w.dynamic => quote_dynamic(&w.text),
        None => quote_literal(&w.text),
    }
}

/// Complete commands (lines) joined as one list.
fn join_lists(parts: Vec<String>) -> String {
    let mut out = String::new();
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with('&') { " " } else { "; " });
        }
        out.push_str(&p);
    }
    out
}

//! One shell word as the program will receive it: quotes removed, escapes decoded, `~` and
//! `$HOME` resolved; what only the running shell knows (`$x`, `$(..)`, globs) kept as written
//! and flagged, so the judgement never guesses a value.

use brush_parser::ParserOptions;
use brush_parser::word::{Parameter, ParameterExpr, TildeExpr, WordPiece, WordPieceWithSource};

/// Where a command substitution came from (its `via` step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubstKind {
    Dollar,
    Backtick,
}

impl SubstKind {
    pub(crate) fn via(self) -> &'static str {
        match self {
            SubstKind::Dollar => "$( )",
            SubstKind::Backtick => "` `",
        }
    }
}

/// What expansion needs from the context.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WordEnv<'a> {
    pub home: &'a str,
    pub cwd: &'a str,
}

/// An expanded word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Word {
    /// Quote-removed text; the dynamic parts as written.
    pub text: String,
    /// Some part of it is only known when it runs (a glob included).
    pub dynamic: bool,
    /// Some part is only known when it runs for another reason than a glob: `$x`, `$( )`.
    /// A glob's word still names where the files are (`/*` is under `/`); an opaque one
    /// names nothing.
    pub opaque: bool,
    /// `$IFS` appears in it (a separator trick when unquoted).
    pub ifs: bool,
    /// The words it becomes before it runs: split at unquoted `$IFS`, or brace-expanded.
    pub fields: Option<Vec<String>>,
    /// Command substitutions inside it, as source text, in order.
    pub substs: Vec<(SubstKind, String)>,
}

impl Word {
    pub(crate) fn literal(text: impl Into<String>) -> Word {
        Word { text: text.into(), ..Word::default() }
    }
}

/// Expands one word's source text.
pub(crate) fn expand(raw: &str, env: WordEnv<'_>, opts: &ParserOptions) -> Word {
    // Brace expansion comes first and makes several words: `{sh,-c,'rm -rf /'}`.
    if let Some(alternatives) = raw_braces(raw) {
        let mut w = Word { text: raw.to_owned(), ..Word::default() };
        let mut fields = Vec::new();
        for alt in alternatives {
            let e = expand(&alt, env, opts);
            w.dynamic |= e.dynamic;
            w.opaque |= e.opaque;
            w.ifs |= e.ifs;
            w.substs.extend(e.substs);
            match e.fields {
                Some(f) => fields.extend(f),
                None => fields.push(e.text),
            }
        }
        w.fields = Some(fields);
        return w;
    }
    let mut w = Word::default();
    match brush_parser::word::parse(raw, opts) {
        Ok(pieces) => {
            let mut st = State { raw, env, opts, fields: vec![String::new()], split: false };
            st.pieces(&pieces, false, &mut w);
            if st.split {
                w.fields = Some(st.fields.into_iter().filter(|f| !f.is_empty()).collect());
            }
        }
        Err(_) => {
            // The parser could not split it into pieces: judge it as unknown.
            w.text = raw.to_owned();
            w.dynamic = true;
            w.opaque = true;
        }
    }
    w
}

/// Command substitutions in an unquoted here-document's body (the shell runs them while it
/// reads the body, whatever the program it feeds).
pub(crate) fn heredoc_substs(body: &str, env: WordEnv<'_>, opts: &ParserOptions) -> Vec<(SubstKind, String)> {
    let Ok(pieces) = brush_parser::word::parse_heredoc(body, opts) else { return Vec::new() };
    let mut w = Word::default();
    let mut st = State { raw: body, env, opts, fields: vec![String::new()], split: false };
    st.pieces(&pieces, true, &mut w);
    w.substs
}

struct State<'a> {
    raw: &'a str,
    env: WordEnv<'a>,
    opts: &'a ParserOptions,
    /// The word split at unquoted `$IFS`.
    fields: Vec<String>,
    split: bool,
}

impl State<'_> {
    fn push(&mut self, w: &mut Word, s: &str) {
        w.text.push_str(s);
        if let Some(f) = self.fields.last_mut() {
            f.push_str(s);
        }
    }

    fn source(&self, p: &WordPieceWithSource) -> String {
        self.raw.get(p.start_index..p.end_index).unwrap_or("").to_owned()
    }

    fn pieces(&mut self, pieces: &[WordPieceWithSource], quoted: bool, w: &mut Word) {
        for p in pieces {
            match &p.piece {
                WordPiece::Text(s) => {
                    if !quoted && has_glob(s) {
                        w.dynamic = true;
                    }
                    self.push(w, s);
                }
                WordPiece::SingleQuotedText(s) => self.push(w, s),
                WordPiece::AnsiCQuotedText(s) => self.push(w, &ansi_c(s)),
                WordPiece::DoubleQuotedSequence(inner) | WordPiece::GettextDoubleQuotedSequence(inner) => {
                    self.pieces(inner, true, w)
                }
                WordPiece::EscapeSequence(s) => {
                    let rest = s.strip_prefix('\\').unwrap_or(s);
                    // `\<newline>` is a line continuation: nothing.
                    if rest != "\n" {
                        self.push(w, rest);
                    }
                }
                WordPiece::TildeExpansion(t) => match t {
                    TildeExpr::Home => self.push(w, self.env.home),
                    TildeExpr::UserHome(user) if user == "root" => self.push(w, "/root"),
                    TildeExpr::UserHome(user) => self.push(w, &format!("/home/{user}")),
                    TildeExpr::WorkingDir => self.push(w, self.env.cwd),
                    _ => self.dynamic(w, p),
                },
                WordPiece::ParameterExpansion(expr) => self.parameter(expr, quoted, w, p),
                WordPiece::CommandSubstitution(s) => {
                    w.substs.push((SubstKind::Dollar, s.clone()));
                    self.dynamic(w, p);
                }
                WordPiece::BackquotedCommandSubstitution(s) => {
                    w.substs.push((SubstKind::Backtick, unescape_backticks(s)));
                    self.dynamic(w, p);
                }
                WordPiece::ArithmeticExpression(expr) => {
                    // `$(( $(cmd) ))` runs cmd: find substitutions inside the expression.
                    if let Ok(inner) = brush_parser::word::parse(&expr.value, self.opts) {
                        let mut scratch = Word::default();
                        let mut sub = State {
                            raw: &expr.value,
                            env: self.env,
                            opts: self.opts,
                            fields: vec![String::new()],
                            split: false,
                        };
                        sub.pieces(&inner, true, &mut scratch);
                        w.substs.append(&mut scratch.substs);
                    }
                    self.dynamic(w, p);
                }
            }
        }
    }

    fn dynamic(&mut self, w: &mut Word, p: &WordPieceWithSource) {
        w.dynamic = true;
        w.opaque = true;
        let src = self.source(p);
        self.push(w, &src);
    }

    fn parameter(&mut self, expr: &ParameterExpr, quoted: bool, w: &mut Word, p: &WordPieceWithSource) {
        let name = match expr {
            ParameterExpr::Parameter { parameter: Parameter::Named(name), indirect: false } => {
                Some(name.as_str())
            }
            _ => None,
        };
        // `${x:-$(cmd)}` runs cmd when x is unset: walk the words inside the expansion.
        let inner = match expr {
            ParameterExpr::UseDefaultValues { default_value: v, .. }
            | ParameterExpr::AssignDefaultValues { default_value: v, .. } => v.as_deref(),
            ParameterExpr::UseAlternativeValue { alternative_value: v, .. } => v.as_deref(),
            ParameterExpr::IndicateErrorIfNullOrUnset { error_message: v, .. } => v.as_deref(),
            ParameterExpr::ReplaceSubstring { replacement: v, .. } => v.as_deref(),
            _ => None,
        };
        if let Some(inner) = inner
            && let Ok(pieces) = brush_parser::word::parse(inner, self.opts)
        {
            let mut scratch = Word::default();
            let mut sub = State {
                raw: inner,
                env: self.env,
                opts: self.opts,
                fields: vec![String::new()],
                split: false,
            };
            sub.pieces(&pieces, true, &mut scratch);
            w.substs.append(&mut scratch.substs);
        }
        match name {
            // The session's home and working directory are part of the context, not unknown.
            Some("HOME") => self.push(w, self.env.home),
            Some("PWD") => self.push(w, self.env.cwd),
            Some("IFS") => {
                w.ifs = true;
                if quoted {
                    self.dynamic(w, p);
                } else {
                    // Unquoted `$IFS` expands to blanks that split the word: `rm${IFS}-rf`
                    // runs `rm -rf`.
                    let src = self.source(p);
                    w.text.push_str(&src);
                    self.fields.push(String::new());
                    self.split = true;
                }
            }
            _ => self.dynamic(w, p),
        }
    }
}

/// Unquoted characters that make the shell expand a word to file names.
fn has_glob(s: &str) -> bool {
    s.contains('*') || s.contains('?') || (s.contains('[') && s.contains(']'))
}

/// Inside backquotes `\$`, `` \` `` and `\\` stand for the character itself.
fn unescape_backticks(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && matches!(n, '$' | '`' | '\\')
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Decodes the body of `$'...'` (bash's ANSI-C quoting).
pub(crate) fn ansi_c(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let hex = |chars: &[char], start: usize, max: usize| -> (Option<u32>, usize) {
        let digits: String =
            chars.iter().skip(start).take(max).take_while(|c| c.is_ascii_hexdigit()).collect();
        (u32::from_str_radix(&digits, 16).ok(), digits.len())
    };
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' || i + 1 == chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = chars[i + 1];
        i += 2;
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'e' | 'E' => out.push('\u{1b}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' | '\'' | '"' | '?' => out.push(e),
            'x' | 'u' | 'U' => {
                let max = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                match hex(&chars, i, max) {
                    (Some(v), n) if n > 0 => {
                        out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        i += n;
                    }
                    _ => {
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                let mut n = 0;
                while n < 2 && i < chars.len() && chars[i].is_digit(8) {
                    v = v * 8 + chars[i].to_digit(8).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            }
            'c' if i < chars.len() => {
                out.push(char::from_u32(chars[i] as u32 & 0x1f).unwrap_or('\u{fffd}'));
                i += 1;
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

/// Most words one brace expression may become; past it the word is left as it is.
const MAX_BRACE_WORDS: usize = 64;

/// Brace expansion of comma lists on a word's source (`/{etc,usr}` is `/etc /usr`):
/// braces inside quotes, `${..}` and `$(..)` are not expansions; ranges are left alone.
fn raw_braces(raw: &str) -> Option<Vec<String>> {
    if !raw.contains('{') || !raw.contains(',') {
        return None;
    }
    let mut out = Vec::new();
    expand_into(raw, &mut out);
    (out.len() > 1 && out.len() <= MAX_BRACE_WORDS).then_some(out)
}

fn expand_into(s: &str, out: &mut Vec<String>) {
    if out.len() > MAX_BRACE_WORDS {
        return;
    }
    let Some((open, close, commas)) = find_brace(s) else {
        out.push(s.to_owned());
        return;
    };
    let (prefix, suffix) = (&s[..open], &s[close + 1..]);
    let mut start = open + 1;
    for end in commas.into_iter().chain(std::iter::once(close)) {
        let alt = &s[start..end];
        expand_into(&format!("{prefix}{alt}{suffix}"), out);
        start = end + 1;
    }
}

/// The first unquoted `{` whose matching `}` encloses a top-level comma: (open, close,
/// commas), as byte offsets.
fn find_brace(s: &str) -> Option<(usize, usize, Vec<usize>)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut nest = 0usize; // `${` / `$(` depth: not brace expansion
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' && q == b'"' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\\' => i += 1,
                b'\'' | b'"' => quote = Some(c),
                b'$' if matches!(b.get(i + 1), Some(b'{' | b'(')) => {
                    nest += 1;
                    i += 1;
                }
                b'}' | b')' if nest > 0 && stack.is_empty() => nest -= 1,
                b'{' if nest == 0 => stack.push((i, Vec::new())),
                b',' if nest == 0 => {
                    if let Some((_, commas)) = stack.last_mut() {
                        commas.push(i);
                    }
                }
                b'}' if nest == 0 => {
                    if let Some((open, commas)) = stack.pop()
                        && !commas.is_empty()
                        && stack.is_empty()
                    {
                        return Some((open, i, commas));
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(raw: &str) -> Word {
        expand(raw, WordEnv { home: "/home/u", cwd: "/work/ws" }, &ParserOptions::default())
    }

    #[test]
    fn quotes_and_escapes_are_removed() {
        for raw in ["rm", "'r'm", "\"rm\"", "r\\m", "$'\\x72m'", "$'\\162m'", "\"r\"'m'"] {
            let w = ex(raw);
            assert_eq!(w.text, "rm", "{raw}");
            assert!(!w.dynamic, "{raw}");
        }
        assert_eq!(ex("\"a\\$b\"").text, "a$b");
        assert!(!ex("\"a\\$b\"").dynamic);
    }

    #[test]
    fn home_and_tilde_resolve() {
        assert_eq!(ex("~").text, "/home/u");
        assert_eq!(ex("~/.ssh/id_rsa").text, "/home/u/.ssh/id_rsa");
        assert_eq!(ex("$HOME/x").text, "/home/u/x");
        assert_eq!(ex("\"${HOME}\"").text, "/home/u");
        assert!(!ex("$HOME").dynamic);
    }

    #[test]
    fn unknowns_stay_as_written() {
        let w = ex("\"$DIR/build\"");
        assert_eq!(w.text, "$DIR/build");
        assert!(w.dynamic);
        let w = ex("\"$(echo rm)\"");
        assert!(w.dynamic);
        assert_eq!(w.substs, vec![(SubstKind::Dollar, "echo rm".to_owned())]);
        let w = ex("`echo \\$x`");
        assert_eq!(w.substs, vec![(SubstKind::Backtick, "echo $x".to_owned())]);
        assert!(ex("*.rs").dynamic);
        assert!(!ex("'*.rs'").dynamic);
        assert_eq!(ex("$((1+$(rm x)))").substs.len(), 1);
    }

    #[test]
    fn ifs_splits() {
        let w = ex("rm${IFS}-rf${IFS}/");
        assert!(w.ifs);
        assert_eq!(w.fields, Some(vec!["rm".into(), "-rf".into(), "/".into()]));
    }

    #[test]
    fn braces_expand() {
        assert_eq!(ex("/{etc,usr}").fields, Some(vec!["/etc".into(), "/usr".into()]));
        assert_eq!(ex("a{b,{c,d}}e").fields.map(|f| f.len()), Some(3));
        assert_eq!(ex("'{a,b}'").fields, None);
        assert_eq!(ex("{}").fields, None);
        assert_eq!(ex("${x:-a,b}").fields, None);
        assert_eq!(ex("{sh,-c,'rm -rf /'}").fields, Some(vec!["sh".into(), "-c".into(), "rm -rf /".into()]));
    }
}

//! Glob patterns over normalised commands (guardrails, rule globs) and the canonical quoting
//! the normalised form is printed with.

/// One element of a compiled glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Star,
    Any,
    Char(char),
}

fn compile(pattern: &str, question: bool) -> Vec<Tok> {
    let mut toks = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                // `**` is the same as `*`; collapsing keeps matching linear in practice.
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' if question => toks.push(Tok::Any),
            '\\' => match chars.peek() {
                Some(&next @ ('*' | '\\' | '?')) if next != '?' || question => {
                    chars.next();
                    toks.push(Tok::Char(next));
                }
                // A backslash before anything else is itself: learned patterns only ever
                // escape `*` and `\`, and a stray one should not make a pattern unusable.
                _ => toks.push(Tok::Char('\\')),
            },
            c => toks.push(Tok::Char(c)),
        }
    }
    toks
}

/// Whether `candidate` matches `pattern`: `*` is any run of characters (spaces included),
/// `\*` a literal star, `\\` a literal backslash; everything else matches itself.
pub fn pattern_matches(pattern: &str, candidate: &str) -> bool {
    matches(&compile(pattern, false), candidate)
}

/// The rules file's globs: as [`pattern_matches`], plus `?` for any one character.
pub(crate) fn glob_matches(pattern: &str, candidate: &str) -> bool {
    matches(&compile(pattern, true), candidate)
}

fn matches(toks: &[Tok], candidate: &str) -> bool {
    let text: Vec<char> = candidate.chars().collect();
    // The classic backtracking-to-the-last-star matcher: O(n·m) worst case, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Char(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            Some(Tok::Any) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Star) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|tok| *tok == Tok::Star)
}

/// `normalised` as a pattern that matches only itself: `*` and `\` escaped. Learned
/// guardrails are stored this way.
pub fn literal_pattern(normalised: &str) -> String {
    let mut out = String::with_capacity(normalised.len() + 4);
    for c in normalised.chars() {
        if c == '*' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Characters a word may hold and still be printed bare.
fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-+=/.,:@%^~".contains(c)
}

/// A literal word as the normalised form prints it: bare when that reads back the same,
/// otherwise in single quotes (`'` as `'\''`).
pub(crate) fn quote_literal(word: &str) -> String {
    // A leading `~` stays bare: the normalised form prints the home directory as `~`.
    if !word.is_empty() && word.chars().all(is_bare) {
        return word.to_owned();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A word that is only known when it runs, printed as written (its expansions visible);
/// double-quoted when it holds blanks or operators, so it stays one word.
pub(crate) fn quote_dynamic(word: &str) -> String {
    if !word.is_empty() && !word.chars().any(|c| c.is_whitespace() || ";&|<>()'\"".contains(c)) {
        return word.to_owned();
    }
    if word.starts_with("<(") || word.starts_with(">(") {
        return word.to_owned();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match() {
        assert!(pattern_matches("git push *", "git push --force origin main"));
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "aXXbYY"));
        assert!(pattern_matches("rm -rf \\*", "rm -rf *"));
        assert!(!pattern_matches("rm -rf \\*", "rm -rf x"));
        assert!(pattern_matches("a\\\\b", "a\\b"));
        assert!(pattern_matches("a\\b", "a\\b"));
        assert!(!pattern_matches("git push", "git push -f"));
        assert!(pattern_matches("**x", "yyx"));
        assert!(!pattern_matches("a?c", "abc"));
        assert!(glob_matches("a?c", "abc"));
        assert!(glob_matches("4???", "4755"));
        assert!(!glob_matches("4???", "475"));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        for s in ["rm -rf *", "echo a\\*b", "plain", "x\\", "*"] {
            let p = literal_pattern(s);
            assert!(pattern_matches(&p, s), "{p} vs {s}");
        }
        assert!(!pattern_matches(&literal_pattern("rm -rf *"), "rm -rf /"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("rm"), "rm");
        assert_eq!(quote_literal("a b"), "'a b'");
        assert_eq!(quote_literal("it's"), "'it'\\''s'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("*.rs"), "'*.rs'");
        assert_eq!(quote_dynamic("$x"), "$x");
        assert_eq!(quote_dynamic("$x y"), "\"$x y\"");
    }
}

//! How deeply a command line nests, read before it is parsed: brush-parser recurses once
//! per level of nesting, and a thread's stack must not run out on a hostile line.

/// Deepest nesting of brackets and compound commands a line may have. brush-parser (and
/// this walk) recurse once per level; past this a thread's stack could run out, so such
/// a line is refused unparsed (asked about) instead.
pub(crate) const MAX_NESTING: usize = 48;

/// What a level of nesting was opened by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Paren,
    /// `((`: arithmetic, where `<<` is a shift.
    Arith,
    Brace,
    Param,
    Quote,
    If,
    Loop,
    Case,
}

/// How deeply `src` nests: brackets, `$( )`, `${ }` and compound commands, read with
/// quoting and here-documents. Openers count wherever they appear (`echo {a,b}` opens a
/// level), and a closer only closes what it matches where the grammar reads it as one, so
/// the count is never below how deep the parser recurses.
pub(crate) fn nesting(src: &str) -> usize {
    let b = src.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut push = |stack: &mut Vec<Open>, o: Open, depth: &mut usize| {
        stack.push(o);
        if o != Open::Quote {
            *depth += 1;
            max = max.max(*depth);
        }
    };
    let pop = |stack: &mut Vec<Open>, depth: &mut usize| {
        if stack.pop().is_some_and(|o| o != Open::Quote) {
            *depth -= 1;
        }
    };
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut i = 0;
    // At a command's start, where reserved words (`fi`, `done`, `}`) are read as such.
    let mut at_start = true;
    while i < b.len() {
        let c = b[i];
        let quoted = stack.last() == Some(&Open::Quote);
        let was_start = at_start;
        at_start = false;
        match c {
            b'\\' => i += 1,
            b'"' if quoted => pop(&mut stack, &mut depth),
            b'"' => push(&mut stack, Open::Quote, &mut depth),
            b'$' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) == Some(&b'(') => {
                push(&mut stack, Open::Arith, &mut depth);
                i += 2;
            }
            b'$' if b.get(i + 1) == Some(&b'(') => {
                push(&mut stack, Open::Paren, &mut depth);
                at_start = true;
                i += 1;
            }
            b'$' if b.get(i + 1) == Some(&b'{') => {
                push(&mut stack, Open::Param, &mut depth);
                i += 1;
            }
            _ if quoted => {}
            b'\'' => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
            }
            b'<' if b.get(i + 1) == Some(&b'<')
                && b.get(i + 2) != Some(&b'<')
                && !stack.contains(&Open::Arith) =>
            {
                // A here-document: its body (from the next line) is text, not syntax.
                i += 2;
                let strip = b.get(i) == Some(&b'-');
                if strip {
                    i += 1;
                }
                while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
                    i += 1;
                }
                let start = i;
                while b.get(i).is_some_and(|c| {
                    !matches!(c, b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')')
                }) {
                    i += 1;
                }
                let word: String = src
                    .get(start..i)
                    .unwrap_or("")
                    .chars()
                    .filter(|c| !matches!(c, '\'' | '"' | '\\'))
                    .collect();
                heredocs.push((word, strip));
                continue;
            }
            b'\n' if !heredocs.is_empty() => {
                for (delim, strip) in std::mem::take(&mut heredocs) {
                    // The body ends at its delimiter line; without one it is not skipped.
                    let mut j = i;
                    loop {
                        let line_start = j + 1;
                        let line_end = (line_start..b.len()).find(|&k| b[k] == b'\n').unwrap_or(b.len());
                        let line = src.get(line_start..line_end).unwrap_or("");
                        let line = if strip { line.trim_start_matches('\t') } else { line };
                        if line == delim {
                            i = line_end;
                            break;
                        }
                        if line_end >= b.len() {
                            break;
                        }
                        j = line_end;
                    }
                }
                at_start = true;
            }
            b'(' if b.get(i + 1) == Some(&b'(') => {
                push(&mut stack, Open::Arith, &mut depth);
                i += 1;
            }
            b'(' => {
                push(&mut stack, Open::Paren, &mut depth);
                at_start = true;
            }
            b')' => match stack.last() {
                Some(Open::Paren) => pop(&mut stack, &mut depth),
                Some(Open::Arith) if b.get(i + 1) == Some(&b')') => {
                    pop(&mut stack, &mut depth);
                    i += 1;
                }
                // One `)` of a `((`: what is left is a single level.
                Some(Open::Arith) => {
                    stack.pop();
                    stack.push(Open::Paren);
                }
                _ => {}
            },
            b'{' => {
                push(&mut stack, Open::Brace, &mut depth);
                at_start = true;
            }
            b'}' => {
                let top = stack.last().copied();
                if top == Some(Open::Param) || (top == Some(Open::Brace) && was_start) {
                    pop(&mut stack, &mut depth);
                }
            }
            b';' | b'&' | b'|' | b'\n' => at_start = true,
            b' ' | b'\t' => at_start = was_start,
            c if c.is_ascii_lowercase() => {
                let end = (i..b.len()).find(|&j| !b[j].is_ascii_lowercase()).unwrap_or(b.len());
                let whole =
                    end >= b.len() || matches!(b[end], b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b')');
                let word = &b[i..end];
                if whole {
                    match word {
                        b"if" => push(&mut stack, Open::If, &mut depth),
                        b"while" | b"until" | b"for" | b"select" => push(&mut stack, Open::Loop, &mut depth),
                        b"case" => push(&mut stack, Open::Case, &mut depth),
                        b"fi" | b"done" | b"esac" if was_start => {
                            let closes = match word {
                                b"fi" => Open::If,
                                b"done" => Open::Loop,
                                _ => Open::Case,
                            };
                            if stack.last() == Some(&closes) {
                                pop(&mut stack, &mut depth);
                            }
                        }
                        _ => {}
                    }
                    at_start = was_start
                        && matches!(
                            word,
                            b"if"
                                | b"while"
                                | b"until"
                                | b"then"
                                | b"do"
                                | b"else"
                                | b"elif"
                                | b"time"
                                | b"!"
                        )
                        || matches!(word, b"then" | b"do" | b"else");
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    max
}

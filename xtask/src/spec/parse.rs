//! The Oils spec format, read as its harness (test/sh_spec.py) reads it (see the parent
//! module for the rules).

use super::*;

/// One `spec/NAME.test.sh`.
#[derive(Debug, Default)]
pub struct SpecFile {
    pub name: String,
    /// `## tags: interactive dev-minimal`.
    pub tags: Vec<String>,
    /// `## suite: disabled`: Oils does not run it either.
    pub disabled: bool,
    /// `## compare_shells: dash bash-4.4 mksh`: the shells whose results the file's
    /// expectations were written against (a version after `-`).
    pub compare_shells: Vec<String>,
    /// `## legacy_tmp_dir: yes`: its cases expect a `_tmp` directory where they start.
    pub legacy_tmp_dir: bool,
    pub cases: Vec<Case>,
    /// Lines that look like metadata (`## ...`) but were not understood: (line, text).
    pub unparsed: Vec<(usize, String)>,
    /// Code lines after a case's closing metadata (Oils refuses them; here they are code).
    pub late_code: Vec<usize>,
}

impl SpecFile {
    /// Why the file is not run on a shell judged as `shell`, if it is not: it needs a
    /// terminal, Oils does not run it, or its expectations were not written against that
    /// shell (not in `compare_shells`; a file with none is for Oils' own shell only).
    pub fn skip_reason(&self, shell: &str) -> Option<&'static str> {
        if self.tags.iter().any(|t| t == "interactive") {
            Some("tagged interactive")
        } else if self.disabled {
            Some("suite: disabled")
        } else if self.compare_shells.is_empty() {
            Some("Oils' shell only (no compare_shells)")
        } else if !self.compare_shells.iter().any(|s| s.split('-').next() == Some(shell)) {
            Some("not in compare_shells")
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
pub struct Case {
    pub name: String,
    /// The line of its `####`.
    pub line: usize,
    pub code: String,
    /// What every shell should do (the status defaults to 0 when judging).
    pub expect: Expect,
    /// What the named shells may do instead, in the order the file lists them.
    pub alternatives: Vec<Alternative>,
}

/// Expected output; `None` is not compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub status: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Stdout(String),
    Stderr(String),
    Status(i32),
}

/// One `## OK bash/mksh status: 1` line (or multi-line block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// `OK`, `BUG` or `N-I`, with a numbered variant's number (`OK-2`).
    pub qualifier: String,
    pub shells: Vec<String>,
    pub field: Field,
}

impl Expect {
    fn has(&self, field: &Field) -> bool {
        match field {
            Field::Stdout(_) => self.stdout.is_some(),
            Field::Stderr(_) => self.stderr.is_some(),
            Field::Status(_) => self.status.is_some(),
        }
    }

    fn set(&mut self, field: Field) {
        match field {
            Field::Stdout(s) => self.stdout = Some(s),
            Field::Stderr(s) => self.stderr = Some(s),
            Field::Status(n) => self.status = Some(n),
        }
    }

    /// `self` with `over`'s fields on top.
    fn overlaid(&self, over: &Expect) -> Expect {
        Expect {
            stdout: over.stdout.clone().or_else(|| self.stdout.clone()),
            stderr: over.stderr.clone().or_else(|| self.stderr.clone()),
            status: over.status.or(self.status),
        }
    }

    pub fn matches(&self, out: &Outcome) -> bool {
        self.stdout.as_ref().is_none_or(|s| s.as_bytes() == out.stdout)
            && self.stderr.as_ref().is_none_or(|s| s.as_bytes() == out.stderr)
            && self.status.unwrap_or(0) == out.status
    }
}

impl Case {
    /// What `shell` may do: the case's own expectation first (status 0 unless given), then
    /// one per alternative it lists for `shell`. A shell's alternative lines merge into one
    /// (`## OK bash stdout: x` with `## OK bash status: 1`), as in Oils; a field given twice
    /// for the same shell (`## OK-2 ...`) starts another.
    pub fn expectations(&self, shell: &str) -> Vec<(Option<String>, Expect)> {
        let mut own = self.expect.clone();
        own.status.get_or_insert(0);
        let mut overlays: Vec<(String, Expect)> = Vec::new();
        for alt in self.alternatives.iter().filter(|a| a.shells.iter().any(|s| s == shell)) {
            match overlays.iter_mut().find(|(_, e)| !e.has(&alt.field)) {
                Some((_, e)) => e.set(alt.field.clone()),
                None => {
                    let mut e = Expect::default();
                    e.set(alt.field.clone());
                    overlays.push((alt.qualifier.clone(), e));
                }
            }
        }
        let mut all = vec![(None, own.clone())];
        all.extend(overlays.into_iter().map(|(q, e)| (Some(q), own.overlaid(&e))));
        all
    }
}

/// A line of a spec file, classified.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line<'a> {
    CaseStart(&'a str),
    Meta(Meta<'a>),
    /// `## END` (also `## END:`), closing a multi-line value.
    End,
    /// Starts with `##` and whitespace but is none of the above.
    OddMeta,
    Comment,
    Blank,
    Code,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Meta<'a> {
    pub(super) qualifier: Option<&'a str>,
    pub(super) shells: Option<&'a str>,
    pub(super) key: &'a str,
    pub(super) value: &'a str,
}

pub(super) fn classify(line: &str) -> Line<'_> {
    if let Some(desc) = line.strip_prefix("####") {
        return Line::CaseStart(desc.trim());
    }
    if let Some(rest) = line.strip_prefix("##")
        && rest.starts_with(char::is_whitespace)
    {
        let rest = rest.trim_start();
        return match parse_meta(rest) {
            Some(m) if m.key == "END" && m.qualifier.is_none() => Line::End,
            Some(m) => Line::Meta(m),
            None if rest.starts_with("END") => Line::End,
            None => Line::OddMeta,
        };
    }
    if line.trim_start().starts_with('#') {
        Line::Comment
    } else if line.trim().is_empty() {
        Line::Blank
    } else {
        Line::Code
    }
}

/// `[QUALIFIER SHELLS ]KEY: VALUE` (what follows `## `), as Oils' KEY_VALUE_RE reads it:
/// the value keeps its trailing blanks.
fn parse_meta(rest: &str) -> Option<Meta<'_>> {
    fn word(s: &str) -> Option<(&str, &str)> {
        let end = s.find(char::is_whitespace)?;
        Some((&s[..end], s[end..].trim_start()))
    }
    fn key_value(s: &str) -> Option<(&str, &str)> {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))?;
        let value = s[end..].strip_prefix(':')?;
        (end > 0).then(|| (&s[..end], value.trim_start()))
    }
    fn is_qualifier(w: &str) -> bool {
        let (base, n) = match w.rsplit_once('-') {
            Some((b, n)) if b != "N" => (b, Some(n)),
            _ => (w, None),
        };
        matches!(base, "OK" | "BUG" | "N-I")
            && n.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    if let Some((q, after)) = word(rest)
        && is_qualifier(q)
        && let Some((shells, after)) = word(after)
        && shells.chars().all(|c| c.is_alphanumeric() || "_+/,".contains(c))
        && let Some((key, value)) = key_value(after)
    {
        return Some(Meta { qualifier: Some(q), shells: Some(shells), key, value });
    }
    let (key, value) = key_value(rest)?;
    Some(Meta { qualifier: None, shells: None, key, value })
}

/// A multi-line `## STDOUT:` / `## STDERR:` being read.
struct Block {
    qualifier: Option<String>,
    shells: Option<String>,
    stderr: bool,
    text: String,
}

#[derive(Default)]
struct CaseBuilder {
    case: Case,
    code_lines: Vec<String>,
    /// `## code: ...` (a case whose code cannot be written plainly).
    code_value: Option<String>,
    /// Reading code: blank lines are code from the first code line to the next metadata.
    in_code: bool,
    meta_after_code: bool,
}

impl CaseBuilder {
    fn add(&mut self, qualifier: Option<String>, shells: Option<String>, field: Field) {
        if !self.code_lines.is_empty() {
            self.meta_after_code = true;
        }
        self.in_code = false;
        match (qualifier, shells) {
            (Some(qualifier), Some(shells)) => self.case.alternatives.push(Alternative {
                qualifier,
                shells: shells.split(['/', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                field,
            }),
            _ => self.case.expect.set(field),
        }
    }

    fn finish(mut self) -> Case {
        self.case.code = match self.code_value {
            Some(code) => code,
            None => self.code_lines.iter().map(|l| format!("{l}\n")).collect(),
        };
        self.case
    }
}

/// Reads a spec file the way Oils' harness does: comment lines are dropped everywhere (also
/// from code and multi-line values), blank lines are kept from a case's first code line on
/// and in multi-line values (so `$LINENO` counts from the first code line); a multi-line
/// value ends at `## END` or at the next metadata line or case.
pub fn parse(name: &str, text: &str) -> SpecFile {
    let mut file = SpecFile { name: name.to_owned(), ..SpecFile::default() };
    let mut case: Option<CaseBuilder> = None;
    let mut block: Option<Block> = None;

    let finish_block = |block: &mut Option<Block>, case: &mut Option<CaseBuilder>| {
        if let (Some(b), Some(c)) = (block.take(), case.as_mut()) {
            let field = if b.stderr { Field::Stderr(b.text) } else { Field::Stdout(b.text) };
            c.add(b.qualifier, b.shells, field);
        }
    };

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = classify(raw);
        if let Some(b) = block.as_mut() {
            match line {
                Line::Code | Line::Blank => {
                    b.text.push_str(raw);
                    b.text.push('\n');
                    continue;
                }
                Line::Comment => continue,
                Line::OddMeta => {
                    file.unparsed.push((n, raw.to_owned()));
                    continue;
                }
                Line::End => {
                    finish_block(&mut block, &mut case);
                    continue;
                }
                Line::CaseStart(_) | Line::Meta(_) => finish_block(&mut block, &mut case),
            }
        }
        match line {
            Line::CaseStart(desc) => {
                if let Some(done) = case.take() {
                    file.cases.push(done.finish());
                }
                case = Some(CaseBuilder {
                    case: Case { name: desc.to_owned(), line: n, ..Case::default() },
                    ..CaseBuilder::default()
                });
            }
            Line::Meta(m) => {
                let understood = match case.as_mut() {
                    None => header_meta(&mut file, &m),
                    Some(c) => case_meta(c, &m, &mut block),
                };
                if !understood {
                    file.unparsed.push((n, raw.to_owned()));
                }
            }
            Line::OddMeta => file.unparsed.push((n, raw.to_owned())),
            Line::End | Line::Comment => {}
            Line::Blank => {
                if let Some(c) = case.as_mut().filter(|c| c.in_code) {
                    c.code_lines.push(raw.to_owned());
                }
            }
            Line::Code => {
                if let Some(c) = case.as_mut() {
                    if c.meta_after_code {
                        file.late_code.push(n);
                    }
                    c.code_lines.push(raw.to_owned());
                    c.in_code = true;
                }
            }
        }
    }
    finish_block(&mut block, &mut case);
    if let Some(done) = case.take() {
        file.cases.push(done.finish());
    }
    file
}

/// A file header's `## KEY: VALUE`; false if not understood.
fn header_meta(file: &mut SpecFile, m: &Meta) -> bool {
    if m.qualifier.is_some() {
        return false;
    }
    match m.key {
        "tags" => file.tags.extend(m.value.split_whitespace().map(str::to_owned)),
        "suite" => file.disabled |= m.value.trim() == "disabled",
        "compare_shells" => file.compare_shells.extend(m.value.split_whitespace().map(str::to_owned)),
        "legacy_tmp_dir" => file.legacy_tmp_dir = matches!(m.value.trim(), "yes" | "true"),
        // Oils' own bookkeeping: how many failures its shell may have, which is "ours".
        "oils_failures_allowed" | "oils_cpp_failures_allowed" | "our_shell" => {}
        _ => return false,
    }
    true
}

/// A case's `## [QUALIFIER SHELLS ]KEY: VALUE`; false if not understood.
fn case_meta(c: &mut CaseBuilder, m: &Meta, block: &mut Option<Block>) -> bool {
    let qualifier = m.qualifier.map(str::to_owned);
    let shells = m.shells.map(str::to_owned);
    let field = match m.key {
        "STDOUT" | "STDERR" => {
            *block = Some(Block { qualifier, shells, stderr: m.key == "STDERR", text: String::new() });
            // Oils refuses a value on the same line; the block still reads.
            return m.value.trim().is_empty();
        }
        "stdout" => Field::Stdout(format!("{}\n", m.value)),
        "stderr" => Field::Stderr(format!("{}\n", m.value)),
        "stdout-json" | "stderr-json" => match serde_json::from_str::<String>(m.value.trim()) {
            Ok(s) if m.key == "stdout-json" => Field::Stdout(s),
            Ok(s) => Field::Stderr(s),
            Err(_) => return false,
        },
        "status" => match m.value.trim().parse() {
            Ok(n) => Field::Status(n),
            Err(_) => return false,
        },
        "code" if qualifier.is_none() => {
            c.code_value = Some(m.value.to_owned());
            return true;
        }
        _ => return false,
    };
    c.add(qualifier, shells, field);
    true
}

pub fn load_corpus(corpus: &Path, filter: Option<&str>) -> Result<Vec<SpecFile>> {
    let spec = corpus.join("spec");
    if !spec.is_dir() {
        bail!(
            "the Oils spec tests are not at {} (expected spec/*.test.sh there; set --corpus DIR or RUSH_OILS_SPEC)",
            corpus.display()
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&spec)
        .with_context(|| format!("listing {}", spec.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.sh"))
        .filter(|n| filter.is_none_or(|f| n.contains(f)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(spec.join(&name)).with_context(|| format!("reading spec/{name}"))?;
            Ok(parse(&name, &String::from_utf8_lossy(&bytes)))
        })
        .collect()
}

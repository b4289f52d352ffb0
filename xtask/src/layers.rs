//! `cargo xtask layers`: the import graph of rush-agentd's rooms, checked against its
//! layers (docs/DESIGN.md, "The daemon's layers").
//!
//! Each room (`core`, a module under `adapters/` or `services/`, or an edge file at the top
//! of `rush-agentd/src`) belongs to the layer of its folder; a room may use rooms of its
//! own layer or below, never above, and the graph has no loops. Below the edge no room
//! names the protocol's errors (`ApiError`): services return their own error types and
//! `api` maps them, once. Test code (`#[cfg(test)] mod` and test-only files) is left out:
//! a test may set up any room. The graph is read from `crate::room` paths in the source (use lines and
//! inline paths), which is what rustc resolves too for this crate: it has no re-exports
//! that would hide an edge, and the check refuses one (`pub use crate::`) if it appears.
//!
//! Hand-written rather than `cargo modules`: that tool needs a rust-analyzer build (minutes
//! and hundreds of crates), this needs the source files and answers in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The layers, lowest first: the folder a room is in says its layer. `core/` is one room;
/// each module under `adapters/` and `services/` is a room; the files at the top of `src`
/// (api, config, daemon, probe) are the edge.
pub const LAYERS: &[&str] = &["core", "adapters", "services", "edge"];

pub struct Graph {
    /// room -> rooms it uses.
    pub edges: BTreeMap<String, BTreeSet<String>>,
    /// Rooms below the edge that build or name the protocol's errors (`ApiError`): only
    /// `api` may, each service returning its own error type.
    pub wire_errors: BTreeSet<String>,
}

/// A room: its name and its layer (an index into [`LAYERS`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Room {
    pub name: String,
    pub layer: usize,
}

/// Where the rooms of a checkout from before the layout by layer (flat `src/`) would go,
/// so that `--src` can show an older graph against the same layers.
const FLAT_LAYOUT: &[(&str, usize)] = &[
    ("core", 0),
    ("bpf", 1),
    ("cgroup", 1),
    ("harden", 1),
    ("landlock", 1),
    ("spawn", 1),
    ("audit_netlink", 1),
    ("store", 1),
    ("snapshot", 1),
    ("mappings", 1),
    ("condition", 1),
    ("events", 2),
    ("tokens", 2),
    ("baseline", 2),
    ("policy", 2),
    ("budget", 2),
    ("meter", 2),
    ("audit", 2),
    ("agent", 2),
    ("session", 2),
];

/// The rooms of `src`, by folder, and what each uses.
pub fn read(src: &Path) -> Result<(Vec<Room>, Graph)> {
    let mut rooms = vec![Room { name: "core".into(), layer: 0 }];
    let mut paths = vec![src.join("core")];
    let flat = !src.join("adapters").is_dir();
    if flat {
        rooms.clear();
        paths.clear();
        for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let path = entry?.path();
            let Some(name) = room_name(&path) else { continue };
            let file_beside = path.is_dir() && path.with_extension("rs").is_file();
            if ["lib", "main"].contains(&name.as_str()) || file_beside {
                continue;
            }
            let layer = FLAT_LAYOUT.iter().find(|(n, _)| *n == name).map_or(3, |(_, l)| *l);
            rooms.push(Room { name, layer });
            paths.push(path);
        }
    }
    for (folder, layer) in [("adapters", 1), ("services", 2)].into_iter().filter(|_| !flat) {
        for entry in std::fs::read_dir(src.join(folder)).with_context(|| format!("reading {folder}"))? {
            let path = entry?.path();
            let Some(name) = room_name(&path) else { continue };
            // `agent.rs` with `agent/` beside it is one room, read from the file.
            let file_beside = path.is_dir() && path.with_extension("rs").is_file();
            if name != "mod" && !file_beside {
                rooms.push(Room { name, layer });
                paths.push(path);
            }
        }
    }
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if !flat
            && path.is_file()
            && let Some(name) = room_name(&path)
            && !["lib", "main"].contains(&name.as_str())
        {
            rooms.push(Room { name, layer: 3 });
            paths.push(path);
        }
    }
    let names: BTreeSet<String> = rooms.iter().map(|r| r.name.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wire_errors = BTreeSet::new();
    for (room, path) in rooms.iter().zip(&paths) {
        let uses = edges.entry(room.name.clone()).or_default();
        // A room is a file, a folder, or both (`agent.rs` and `agent/`).
        let mut files = rust_files(path)?;
        if path.is_file() {
            let dir = path.with_extension("");
            if dir.is_dir() {
                files.extend(rust_files(&dir)?);
            }
        }
        for file in files {
            if is_test_file(&file) {
                continue;
            }
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            if text.contains("pub use crate::") {
                bail!("{}: `pub use crate::` would hide an edge from this check", file.display());
            }
            // Tests may use any room to set one up; the graph is of what ships.
            let text = text.split("#[cfg(test)]\nmod ").next().unwrap_or("");
            if room.layer < 3 && text.contains("ApiError") {
                wire_errors.insert(room.name.clone());
            }
            for used in crate_paths(text) {
                if used != room.name && names.contains(&used) {
                    uses.insert(used);
                }
            }
        }
    }
    rooms.sort();
    Ok((rooms, Graph { edges, wire_errors }))
}

/// The module name of a `.rs` file or a folder.
fn room_name(path: &Path) -> Option<String> {
    if path.is_dir() {
        return Some(path.file_name()?.to_string_lossy().into_owned());
    }
    (path.extension()? == "rs").then(|| path.file_stem().unwrap().to_string_lossy().into_owned())
}

/// Test-only files (`#[cfg(test)] mod x_test;`, `tests.rs`).
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with("_test.rs") || name == "tests.rs"
}

fn rust_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        out.extend(rust_files(&entry?.path())?);
    }
    out.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    Ok(out)
}

/// The rooms named by `crate::room` paths, including grouped ones: `use crate::{a::X, b}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // Grouped use: the first segment of each item (may span lines; the
                // common formatting puts each group on one line or one item per line).
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let seg: String =
                        item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !seg.is_empty() && seg != "self" {
                        out.insert(seg);
                    }
                }
            } else {
                let mut rest_path = after;
                let mut seg = segment(rest_path);
                // `crate::adapters::bpf`, `crate::services::agent`: the room is the next segment.
                if (seg == "adapters" || seg == "services") && rest_path[seg.len()..].starts_with("::") {
                    rest_path = &rest_path[seg.len() + 2..];
                    seg = segment(rest_path);
                }
                if !seg.is_empty() {
                    out.insert(seg);
                }
            }
            rest = after;
        }
    }
    // Items of a multi-line grouped use: `use crate::{` then one item per line.
    let mut in_group = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("use crate::{") && !t.contains('}') {
            in_group = true;
            continue;
        }
        if in_group {
            if t.starts_with('}') {
                in_group = false;
                continue;
            }
            for item in t.split(',') {
                let seg: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !seg.is_empty() && seg != "self" {
                    out.insert(seg);
                }
            }
        }
    }
    out
}

fn segment(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Strongly connected components with more than one room (import loops).
pub fn loops(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the graph has a few dozen nodes, recursion depth is fine.
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Prints the graph by layer; Err if a room uses a higher layer or sits in a loop.
pub fn run(check_only: bool, src: Option<PathBuf>) -> Result<()> {
    let src = src.unwrap_or_else(|| crate::util::workspace_root().join("rush-agentd/src"));
    let (rooms, g) = read(&src)?;
    let layer: BTreeMap<&str, usize> = rooms.iter().map(|r| (r.name.as_str(), r.layer)).collect();
    if !check_only {
        for (i, name) in LAYERS.iter().enumerate() {
            println!("{name}:");
            for room in rooms.iter().filter(|r| r.layer == i) {
                let uses: Vec<&str> =
                    g.edges.get(&room.name).into_iter().flatten().map(String::as_str).collect();
                println!(
                    "  {:<14} -> {}",
                    room.name,
                    if uses.is_empty() { "-".into() } else { uses.join(" ") }
                );
            }
        }
    }
    let mut problems = Vec::new();
    for (room, uses) in &g.edges {
        let mine = layer[room.as_str()];
        for u in uses {
            let theirs = layer[u.as_str()];
            if theirs > mine {
                problems.push(format!(
                    "{room} ({}) uses {u} ({}): a room may only use its own layer or lower ones",
                    LAYERS[mine], LAYERS[theirs]
                ));
            }
        }
    }
    for l in loops(&g) {
        problems.push(format!("import loop: {}", l.join(" <-> ")));
    }
    for room in &g.wire_errors {
        problems.push(format!(
            "{room} ({}) builds the protocol's errors (ApiError): return the room's own error type; `api` maps it",
            LAYERS[layer[room.as_str()]]
        ));
    }
    if problems.is_empty() {
        println!(
            "layers: {} rooms, no loops, no upward imports, wire errors built only at the edge",
            g.edges.len()
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("layers: {p}");
    }
    bail!("{} layering problem(s) in {}", problems.len(), src.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_single_grouped_and_multiline() {
        let text = "use crate::adapters::bpf::FileKey;\nuse crate::{audit::AuditLog, store};\nuse crate::{\n    cgroup::X,\n    spawn,\n};\nfn f() { crate::core::now(); } // crate::nope\n";
        let got: Vec<String> = crate_paths(text).into_iter().collect();
        assert_eq!(got, ["audit", "bpf", "cgroup", "core", "spawn", "store"]);
    }

    #[test]
    fn loops_are_found() {
        let mut edges = BTreeMap::new();
        for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
            edges.entry(a.to_string()).or_insert_with(BTreeSet::new).insert(b.to_string());
        }
        edges.insert("d".into(), BTreeSet::new());
        assert_eq!(
            loops(&Graph { edges, wire_errors: BTreeSet::new() }),
            vec![vec!["a".to_string(), "b".into(), "c".into()]]
        );
    }
}

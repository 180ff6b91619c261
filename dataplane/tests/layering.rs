//! The data plane's modules are layered: no module names one that names it
//! back, directly or through others. The graph is read from the sources:
//! every `crate::…` path (in `use` or inline) is an edge from the module
//! whose file holds it to the module it names first. A module's children
//! (`tap/decode.rs`) count as the module itself; `lib.rs` is the root, which
//! declares every module, so a module naming a root item (`crate::Settings`)
//! closes a cycle too.
#![allow(clippy::expect_used)]
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate root's node in the graph.
const ROOT: &str = "crate";

/// Module → the modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    // A reader that found nothing would pass anything.
    assert!(
        graph
            .get("relay")
            .is_some_and(|to| to.contains("scheduler")),
        "the graph read from {} misses relay → scheduler: {graph:#?}",
        src.display()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the data plane's modules import each other in a cycle:\n  {}\n\
         modules caught in cycles, by group: {:?}\nmodule graph:\n{}",
        cycles.join("\n  "),
        tangles(&graph),
        graph
            .iter()
            .map(|(from, to)| format!(
                "  {from} → {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn paths_are_read_from_uses_groups_and_inline_code_but_not_comments() {
    let source = "//! Uses crate::doc, in a comment.\n\
        use crate::{a::B, c, d::{e, f}};\n\
        use crate::g as h;\n\
        use crate::{\n    i::J,\n    self,\n};\n\
        fn x() -> crate::k::L { crate::m::n(\"http://x\") } // crate::comment\n\
        macro_rules! y { () => { $crate::z } }\n\
        let not_ours = other_crate::o;\n";
    let named: Vec<String> = named_paths(source).into_iter().collect();
    assert_eq!(
        named,
        vec!["a", "c", "d", "g", "i", "k", "m", "self"],
        "{source}"
    );
}

#[test]
fn a_cycle_is_found_and_spelled_out() {
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "d")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(cycles(&graph), vec!["a → b → c → a"]);
    assert_eq!(tangles(&graph), vec![vec!["a", "b", "c"]]);
    graph.get_mut("c").unwrap().remove("a");
    assert!(cycles(&graph).is_empty());
    assert!(tangles(&graph).is_empty());
}

/// The import graph of the crate whose sources are under `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module = |file: &Path| -> String {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a file");
        let name = first.as_os_str().to_string_lossy();
        match name.strip_suffix(".rs") {
            Some("lib") => ROOT.to_string(),
            Some(stem) => stem.to_string(),
            None => name.to_string(),
        }
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module(f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let from = module(file);
        let source = std::fs::read_to_string(file).expect("readable source");
        let edges = graph.entry(from.clone()).or_default();
        for first in named_paths(&source) {
            let to = if modules.contains(&first) {
                first
            } else {
                // `crate::Settings`, `crate::{self}`: an item of the root.
                ROOT.to_string()
            };
            if to != from {
                edges.insert(to);
            }
        }
    }
    // The root declares (and starts) every module.
    let all: BTreeSet<String> = modules.iter().filter(|m| *m != ROOT).cloned().collect();
    graph.entry(ROOT.to_string()).or_default().extend(all);
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first segment of every `crate::` path in `source`, comments left
/// out; each member of a `crate::{…}` group counts.
fn named_paths(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                return "";
            }
            // A trailing comment; `http://` in a string is not one.
            match line.find(" //") {
                Some(at) => &line[..at],
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = BTreeSet::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        match rest.strip_prefix('{') {
            Some(group) => named.extend(group_members(group)),
            None => named.extend(first_ident(rest)),
        }
    }
    named
}

/// The first identifier of each top-level member of a `{…}` group (its
/// opening brace already taken).
fn group_members(group: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.extend(first_ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.extend(first_ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    members
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

/// Every cycle a depth-first walk meets, each spelled `a → b → a` from the
/// module the walk reached first.
fn cycles(graph: &Graph) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        Never,
        OnPath,
        Done,
    }
    fn walk<'g>(
        node: &'g str,
        graph: &'g Graph,
        seen: &mut BTreeMap<&'g str, Seen>,
        path: &mut Vec<&'g str>,
        found: &mut Vec<String>,
    ) {
        seen.insert(node, Seen::OnPath);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if next == node {
                continue;
            }
            match seen.get(next.as_str()).copied().unwrap_or(Seen::Never) {
                Seen::Never => walk(next, graph, seen, path, found),
                Seen::OnPath => {
                    let from = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle: Vec<&str> = path[from..].to_vec();
                    cycle.push(next);
                    found.push(cycle.join(" → "));
                }
                Seen::Done => {}
            }
        }
        path.pop();
        seen.insert(node, Seen::Done);
    }
    let mut seen = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !seen.contains_key(node.as_str()) {
            walk(node, graph, &mut seen, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// The groups of modules that each reach one another (the graph's strongly
/// connected components of more than one module).
fn tangles(graph: &Graph) -> Vec<Vec<&str>> {
    let reach = |from: &str| -> BTreeSet<&str> {
        let mut reached = BTreeSet::new();
        let mut next = vec![from];
        while let Some(node) = next.pop() {
            for to in graph.get(node).into_iter().flatten() {
                if reached.insert(to.as_str()) {
                    next.push(to);
                }
            }
        }
        reached
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> =
        graph.keys().map(|n| (n.as_str(), reach(n))).collect();
    let mut groups: Vec<Vec<&str>> = Vec::new();
    for (node, from) in &reached {
        let group: Vec<&str> = from
            .iter()
            .copied()
            .filter(|other| other != node && reached.get(other).is_some_and(|r| r.contains(node)))
            .chain([*node])
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

//! The server's layering, checked on its sources: every `use crate::`/`use super::` (and every
//! `crate::`/`super::` path in code) is an edge between modules; no edge may run from a lower
//! layer to a higher one, and no modules may import each other in a circle.
//!
//! ```text
//! lib ─▶ http ─▶ app ─▶ config ─▶ fleet ─▶ store ─▶ auth ─▶ error
//!                 │                  └──▶ transport      clock
//! ```
//!
//! `metrics` sits below everything (every layer records into it; it imports nothing).

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may import (besides itself): its layer and those below.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "http",
        &[
            "app",
            "config",
            "fleet",
            "store",
            "transport",
            "auth",
            "error",
            "clock",
            "metrics",
            "ratelimit",
        ],
    ),
    (
        "app",
        &[
            "config",
            "fleet",
            "store",
            "transport",
            "auth",
            "error",
            "clock",
            "ratelimit",
            "metrics",
        ],
    ),
    ("config", &["fleet", "transport"]),
    (
        "fleet",
        &[
            "store",
            "transport",
            "auth",
            "error",
            "clock",
            "ratelimit",
            "metrics",
        ],
    ),
    ("store", &["auth", "error", "clock", "metrics"]),
    ("transport", &["ratelimit", "metrics"]),
    ("auth", &["error", "ratelimit"]),
    ("error", &[]),
    ("clock", &[]),
    ("ratelimit", &[]),
    ("metrics", &[]),
];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of a source file: `fleet/mod.rs` -> `fleet`, `store/sqlite/blocks.rs` ->
/// `store::sqlite::blocks`, `lib.rs` -> `` (the crate root).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` statement names: `use crate::a::{b, c::d};` -> `crate::a::b`,
/// `crate::a::c::d`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let prefix = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &prefix, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or_default().trim();
        out.push(join(prefix, path));
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}::{path}"),
    }
}

/// The paths a file refers to: its `use` trees and the `crate::`/`super::` paths in its code.
fn references(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand(&rest[..end], "", &mut paths);
        rest = &rest[end..];
    }
    for anchor in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push(tail[..len].trim_end_matches(':').to_owned());
            rest = &rest[at + anchor.len()..];
        }
    }
    paths
        .into_iter()
        .filter(|p| p.starts_with("crate::") || p.starts_with("super::"))
        .collect()
}

/// The module a path refers to: the longest known module that prefixes it.
fn target(path: &str, from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let absolute = if let Some(rest) = path.strip_prefix("crate::") {
        rest.to_owned()
    } else {
        let mut base: Vec<&str> = from.split("::").filter(|s| !s.is_empty()).collect();
        let mut rest = path;
        while let Some(tail) = rest.strip_prefix("super::") {
            base.pop();
            rest = tail;
        }
        join(&base.join("::"), rest)
    };
    let parts: Vec<&str> = absolute.split("::").collect();
    (0..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        let targets = edges.entry(from.clone()).or_default();
        for path in references(&code(&text)) {
            if let Some(to) = target(&path, &from, &modules) {
                if to != from {
                    targets.insert(to);
                }
            }
        }
    }
    edges
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

#[test]
fn no_layer_imports_a_higher_one() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut violations = Vec::new();
    for (from, targets) in graph() {
        if from.is_empty() {
            continue; // the crate root wires everything together
        }
        let layer = top(&from);
        let Some(may) = allowed.get(layer) else {
            violations.push(format!("`{from}`: top-level module `{layer}` has no layer"));
            continue;
        };
        for to in targets {
            let other = top(&to);
            if other != layer && !may.contains(&other) {
                violations.push(format!("`{from}` imports `{to}`"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let edges = graph();
    let mut cycles = Vec::new();
    // Depth-first search with colours; every back edge closes a circle.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node, 1);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| *n == next).unwrap_or(0);
                    let mut circle: Vec<&str> = stack[start..].to_vec();
                    circle.push(next);
                    cycles.push(circle.join(" -> "));
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, cycles),
            }
        }
        stack.pop();
        state.insert(node, 2);
    }
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            visit(node, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_circles() {
    let mut paths = Vec::new();
    expand("crate::{a, b::{c, d as e}}", "", &mut paths);
    assert_eq!(paths, ["crate::a", "crate::b::c", "crate::b::d"]);
    let modules: BTreeSet<String> = ["", "fleet", "fleet::streams", "store"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    assert_eq!(
        target("super::streams::Publisher", "fleet::reports", &modules).as_deref(),
        Some("fleet::streams")
    );
    assert_eq!(
        target("crate::store::Store", "fleet::reports", &modules).as_deref(),
        Some("store")
    );
    assert_eq!(
        references("use crate::store::{Store, records::merge_block};\nlet x = super::views::f();"),
        [
            "crate::store::Store",
            "crate::store::records::merge_block",
            "crate::store",
            "super::views::f"
        ]
    );
}

//! Holds the metrics' documentation to what is exposed: the README's Metrics tables and the
//! Grafana dashboard's queries against the `# TYPE` lines of real scrapes. Shared by the
//! server's (`tests/metrics.rs`) and the agent's (`examples/tests/agent_metrics.rs`) tests.

use std::collections::{BTreeMap, BTreeSet};

const README: &str = include_str!("../../../README.md");
const DASHBOARD: &str = include_str!("../../../examples/grafana/policy-fleet.json");

/// The metrics an OpenMetrics text declares, by the name a query uses (a counter with its
/// `_total`), with their type.
pub fn declared(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            (name, kind.to_owned())
        })
        .collect()
}

/// The README's Metrics tables: every `| `name` | type | ...` row whose name starts with
/// `prefix`, with its type.
pub fn documented(prefix: &str) -> BTreeMap<String, String> {
    let section = README.split("\n## Metrics\n").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut rows = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, ..] = cells.as_slice() else {
            continue;
        };
        if let Some(name) = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .filter(|n| n.starts_with(prefix))
        {
            let previous = rows.insert(name.to_owned(), (*kind).to_owned());
            assert_eq!(previous, None, "{name} documented twice");
        }
    }
    assert!(!rows.is_empty(), "no {prefix} metric in README.md");
    rows
}

/// The metrics the dashboard queries whose names start with `prefix`, histogram series
/// (`_bucket`, `_sum`, `_count`) by their histogram's name when `declared` has it.
pub fn queried(prefix: &str, declared: &BTreeMap<String, String>) -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "no query in the dashboard");
    let mut names = BTreeSet::new();
    for expr in exprs {
        for (start, _) in expr.match_indices(prefix) {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| declared.get(*base).map(String::as_str) == Some("histogram"))
            });
            names.insert(histogram.map_or(name.clone(), str::to_owned));
        }
    }
    names
}

fn collect_exprs<'a>(value: &'a serde_json::Value, exprs: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", serde_json::Value::String(expr)) => exprs.push(expr),
                    _ => collect_exprs(value, exprs),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, exprs)),
        _ => {}
    }
}

/// The README documents every `prefix` metric `declared`, with its type, and no other but
/// those in `absent` (metrics a scrape shows only once something happened that a test cannot
/// cause, such as a database failure); the dashboard queries only documented metrics.
pub fn check(prefix: &str, declared: &BTreeMap<String, String>, absent: &[&str]) {
    let exposed: BTreeMap<String, String> = declared
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(n, k)| (n.clone(), k.clone()))
        .collect();
    let mut documented = documented(prefix);
    for name in absent {
        assert!(!exposed.contains_key(*name), "{name} is exposed: check it");
        assert!(
            documented.remove(*name).is_some(),
            "{name} is not documented"
        );
    }
    assert_eq!(documented, exposed, "README.md's Metrics tables");
    let unknown: Vec<String> = queried(prefix, declared)
        .into_iter()
        .filter(|name| !exposed.contains_key(name) && !absent.contains(&name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exposes: {unknown:?}"
    );
}

//! The runner's layers, checked from its source: each layer uses only the
//! layers below it (`lib.rs` lists them), and no module of a layer uses
//! another that uses it back, directly or through others. A `crate::` path
//! outside a test module is a use; test modules may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: &[&str] = &["plan", "judge", "execute", "record", "ui", "run", "tools"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `layer/module` of a file (`execute/backend` for execute/backend/qemu.rs),
/// or the file's own name at the top.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    parts[..parts.len().min(2)].join("/")
}

/// The `layer/module` (or `layer`) names `text` uses through `crate::`,
/// test modules and comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let code = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let path = regex::Regex::new(r"crate::(\{[^}]*\}|[a-z_]+(?:::[a-z_]+)?)").unwrap();
    let mut out = BTreeSet::new();
    for m in path.captures_iter(&code) {
        let what = &m[1];
        let items: Vec<&str> = match what.strip_prefix('{') {
            Some(group) => group.trim_end_matches('}').split(',').collect(),
            None => vec![what],
        };
        for item in items {
            let mut parts = item.trim().split("::");
            let top = parts.next().unwrap_or("").trim();
            if LAYERS.contains(&top) {
                out.insert(match parts.next() {
                    Some(m) if m.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                        format!("{top}/{m}")
                    }
                    _ => top.to_owned(),
                });
            }
        }
    }
    out
}

fn layer(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|l| module.split('/').next() == Some(*l))
}

#[test]
fn layers_only_use_layers_below_them_and_modules_have_no_circles() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for f in &files {
        let from = module_of(f);
        for to in uses(&std::fs::read_to_string(f).unwrap()) {
            if let (Some(a), Some(b)) = (layer(&from), layer(&to)) {
                if b > a {
                    upward.push(format!("{} uses {to}", f.display()));
                }
            }
            if to != from && to.contains('/') {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(
        upward.is_empty(),
        "uses of a higher layer:\n{}",
        upward.join("\n")
    );
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m.as_str()) {
            if let Some(cycle) = visit(m, &graph, &mut state, &mut Vec::new()) {
                panic!("module circle: {}", cycle.join(" -> "));
            }
        }
    }
    // The check has teeth: it sees the layers' real edges.
    assert!(graph["run/mod"].contains("execute/session"), "{graph:#?}");
}

#[test]
fn the_checker_finds_an_upward_use_and_ignores_tests() {
    let text = "use crate::tools::report;\nuse crate::{plan::shard, judge};\n// crate::ui::progress\n#[cfg(test)]\nmod tests {\n use crate::run::x;\n}\n";
    let found = uses(text);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["judge", "plan/shard", "tools/report"]
    );
}

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
    if let Some(cycle) = find_circle(&graph) {
        panic!("module circle: {}", cycle.join(" -> "));
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

/// The module graph of a crate's `src` outside the runner (the agent, the
/// VMM, the protocol): node `a/b` for `a/b.rs` or `a/b/mod.rs`, `<root>` for
/// `lib.rs`/`main.rs`. An edge is a `crate::`/`super::` path, or a parent
/// naming a child module (`child::item`), outside test modules and comments.
fn crate_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let node = |f: &Path| -> String {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let s = rel.to_string_lossy().into_owned();
        match s.as_str() {
            "lib" | "main" => "<root>".to_owned(),
            _ => s.strip_suffix("/mod").unwrap_or(&s).to_owned(),
        }
    };
    let nodes: BTreeSet<String> = files.iter().map(|f| node(f)).collect();
    // The longest module prefix of `segments` below `base` ("" = root).
    let resolve = |base: &str, segments: &[&str]| -> String {
        let mut best = if base.is_empty() {
            "<root>".to_owned()
        } else {
            base.to_owned()
        };
        let mut cur = base.to_owned();
        for s in segments {
            cur = if cur.is_empty() {
                (*s).to_owned()
            } else {
                format!("{cur}/{s}")
            };
            if nodes.contains(&cur) {
                best = cur.clone();
            } else {
                break;
            }
        }
        best
    };
    // `pub use a::b::{X, Y};` in module `m`: `m::X` is really `a/b`'s.
    let reexport =
        regex::Regex::new(r"pub(?:\([a-z]+\))? use (?:(crate|super|self)::)?([a-z_]+(?:::[a-z_]+)*)::(\{[^}]*\}|[A-Za-z_]+)").unwrap();
    let mut moved: BTreeMap<(String, String), String> = BTreeMap::new();
    for f in &files {
        let from = node(f);
        let here = if from == "<root>" {
            String::new()
        } else {
            from.clone()
        };
        let text = std::fs::read_to_string(f).unwrap();
        for m in reexport.captures_iter(&text) {
            let base = match m.get(1).map(|x| x.as_str()) {
                Some("crate") => String::new(),
                Some("super") => here
                    .rsplit_once('/')
                    .map_or(String::new(), |(p, _)| p.to_owned()),
                _ => here.clone(),
            };
            let segs: Vec<&str> = m[2].split("::").collect();
            let mut target = base.clone();
            for s in &segs {
                target = if target.is_empty() {
                    (*s).to_owned()
                } else {
                    format!("{target}/{s}")
                };
            }
            if !nodes.contains(&target) {
                continue;
            }
            for item in m[3].trim_matches(|c| c == '{' || c == '}').split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    moved.insert((from.clone(), item.to_owned()), target.clone());
                }
            }
        }
    }
    let resolve = |base: &str, segments: &[&str]| -> String {
        let m = resolve(base, segments);
        let depth = if m == "<root>" {
            0
        } else {
            m.split('/').count() - base.split('/').filter(|s| !s.is_empty()).count()
        };
        match segments.get(depth) {
            Some(item) => moved
                .get(&(m.clone(), (*item).to_owned()))
                .cloned()
                .unwrap_or(m),
            None => m,
        }
    };
    let path =
        regex::Regex::new(r"\b(crate|super)::(\{[^}]*\}|[A-Za-z_]+(?:::[A-Za-z_]+)*)").unwrap();
    let child = regex::Regex::new(r"(?:^|[^:A-Za-z_])([a-z_]+)::").unwrap();
    let test_mod =
        regex::Regex::new(r"(?m)^#\[cfg\(test\)\]\n(?:(?:#\[|//)[^\n]*\n)*mod ").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = node(f);
        let text = std::fs::read_to_string(f).unwrap();
        let code = test_mod
            .find(&text)
            .map_or(&text[..], |m| &text[..m.start()]);
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let here = if from == "<root>" {
            String::new()
        } else {
            from.clone()
        };
        // `super` of `a/b` (a/b.rs or a/b/mod.rs) is `a`.
        let super_of = here
            .rsplit_once('/')
            .map_or(String::new(), |(p, _)| p.to_owned());
        let mut add = |to: String| {
            if to != from {
                graph.entry(from.clone()).or_default().insert(to);
            }
        };
        for m in path.captures_iter(&code) {
            let base = if &m[1] == "crate" {
                String::new()
            } else {
                super_of.clone()
            };
            let what = &m[2];
            let items: Vec<&str> = match what.strip_prefix('{') {
                Some(group) => group.trim_end_matches('}').split(',').collect(),
                None => vec![what],
            };
            for item in items {
                let segs: Vec<&str> = item.trim().split("::").map(str::trim).collect();
                add(resolve(&base, &segs));
            }
        }
        // A module naming its own child (`touch::run`) or, at the root, a
        // top-level module.
        for m in child.captures_iter(&code) {
            let name = &m[1];
            let full = if here.is_empty() {
                name.to_owned()
            } else {
                format!("{here}/{name}")
            };
            if nodes.contains(&full) && name != "crate" && name != "super" {
                add(full);
            }
        }
    }
    graph
}

/// A module circle in `graph`, if any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
            if let Some(c) = visit(m, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn agent_vmm_and_protocol_have_no_module_circles() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = Vec::new();
    for krate in ["guest-images/agent/src", "vmm/src", "protocol/src"] {
        let graph = crate_graph(&ws.join(krate));
        eprintln!("{krate}: {graph:?}");
        if let Some(c) = find_circle(&graph) {
            found.push(format!("{krate}: {}", c.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "module circles:\n{}", found.join("\n"));
}

#[test]
fn the_crate_graph_sees_real_edges_and_a_planted_circle() {
    let dir = std::env::temp_dir().join(format!("layers-circle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("steps")).unwrap();
    std::fs::write(
        dir.join("main.rs"),
        "mod executor;\nmod steps;\nfn main() { executor::run(); }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("executor.rs"),
        "use crate::steps::touch;\npub fn run() {}\n",
    )
    .unwrap();
    std::fs::write(dir.join("steps/mod.rs"), "pub mod touch;\npub mod ctx;\n").unwrap();
    std::fs::write(dir.join("steps/ctx.rs"), "pub struct Ctx;\n").unwrap();
    std::fs::write(dir.join("steps/touch.rs"), "use super::ctx::Ctx;\n").unwrap();
    let g = crate_graph(&dir);
    assert!(g["<root>"].contains("executor"), "{g:?}");
    assert!(g["executor"].contains("steps/touch"), "{g:?}");
    assert!(g["steps/touch"].contains("steps/ctx"), "{g:?}");
    assert_eq!(find_circle(&g), None);
    // steps/touch now uses the executor back: a circle.
    std::fs::write(
        dir.join("steps/touch.rs"),
        "use super::ctx::Ctx;\nuse crate::executor::run;\n",
    )
    .unwrap();
    let c = find_circle(&crate_graph(&dir)).expect("a circle");
    assert!(
        c.contains(&"executor".to_owned()) && c.contains(&"steps/touch".to_owned()),
        "{c:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

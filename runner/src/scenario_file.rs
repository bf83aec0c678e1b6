//! Loading scenario files: strict YAML into the typed model, then semantic
//! checks. Every error names `file:line:column` and the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arena_protocol::scenario::{Step, TouchExpect};
use arena_protocol::Scenario;

/// A scenario with the file it came from.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    /// The YAML file.
    pub path: PathBuf,
    /// Its contents, typed.
    pub scenario: Scenario,
}

/// Why scenarios could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Missing or unreadable file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// YAML syntax or schema error.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The YAML is well formed but means something impossible.
    #[error("{path}:{line}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line (best effort: the step's line).
        line: usize,
        /// Field path, e.g. `steps[2].touch.arena`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No scenario files under the given paths.
    #[error("{0}: no scenario files (*.yaml) found")]
    Empty(String),
}

/// Load every scenario named by `paths` (files, or directories searched
/// recursively for `*.yaml`/`*.yml`), in a stable order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<ScenarioFile>, ScenarioError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| ScenarioError::Io {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            collect_yaml(p, &mut files)?;
            if files.len() == before {
                return Err(ScenarioError::Empty(p.display().to_string()));
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for f in files {
        let s = load_file(&f)?;
        if !names.insert(s.scenario.name.clone()) {
            return Err(ScenarioError::Invalid {
                line: line_of_key(&std::fs::read_to_string(&f).unwrap_or_default(), "name"),
                path: f,
                field: "name".into(),
                message: format!("duplicate scenario name `{}`", s.scenario.name),
            });
        }
        out.push(s);
    }
    Ok(out)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_yaml(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Load and check one file.
pub fn load_file(path: &Path) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_owned(),
        source,
    })?;
    let scenario = parse(path, &text)?;
    Ok(ScenarioFile {
        path: path.to_owned(),
        scenario,
    })
}

/// Parse YAML text and check it.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    // Steps are written as one-key maps (`- touch: {...}`), not YAML tags.
    let de = serde_yaml::Deserializer::from_str(text);
    let scenario: Scenario =
        serde_yaml::with::singleton_map_recursive::deserialize(de).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            // serde_yaml appends " at line L column C"; the prefix says it already.
            let message = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_owned(),
                None => msg,
            };
            ScenarioError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
    check(&scenario).map_err(|(field, step, message)| ScenarioError::Invalid {
        path: path.to_owned(),
        line: step
            .and_then(|i| line_of_step(text, i))
            .unwrap_or_else(|| line_of_key(text, field.split(['.', '[']).next().unwrap_or(""))),
        field,
        message,
    })?;
    Ok(scenario)
}

/// A semantic problem: (field path, top-level step index, message).
type Problem = (String, Option<usize>, String);

fn check(s: &Scenario) -> Result<(), Problem> {
    let valid_name = !s.name.is_empty()
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.name.starts_with('.');
    if !valid_name {
        return Err((
            "name".into(),
            None,
            format!(
                "`{}` must be non-empty and use only A-Z a-z 0-9 - _ .",
                s.name
            ),
        ));
    }
    if !(1..=64).contains(&s.vm.vcpus) {
        return Err(("vm.vcpus".into(), None, "must be 1..=64".into()));
    }
    if s.vm.memory_mib < 128 {
        return Err(("vm.memory_mib".into(), None, "must be at least 128".into()));
    }
    if s.timeout_s == 0 {
        return Err(("timeout_s".into(), None, "must be positive".into()));
    }
    if s.steps.is_empty() {
        return Err((
            "steps".into(),
            None,
            "a scenario needs at least one step".into(),
        ));
    }
    let mut arenas = HashSet::new();
    let mut objects = HashSet::new();
    for (i, step) in s.steps.iter().enumerate() {
        check_step(
            step,
            &format!("steps[{i}]"),
            &mut arenas,
            &mut objects,
            true,
        )
        .map_err(|(f, m)| (f, Some(i), m))?;
    }
    Ok(())
}

fn check_step(
    step: &Step,
    at: &str,
    arenas: &mut HashSet<String>,
    objects: &mut HashSet<String>,
    top: bool,
) -> Result<(), (String, String)> {
    let kind = step.kind();
    let field = |f: &str| format!("{at}.{kind}.{f}");
    let need_arena = |id: &str, arenas: &HashSet<String>| {
        if arenas.contains(id) {
            Ok(())
        } else {
            Err((
                field("arena"),
                format!("no earlier arena step has id `{id}`"),
            ))
        }
    };
    match step {
        Step::Arena(a) => {
            if a.expect.errno.is_none() && !arenas.insert(a.id.clone()) {
                return Err((field("id"), format!("arena `{}` is defined twice", a.id)));
            }
        }
        Step::Mmap(m) => need_arena(&m.arena, arenas)?,
        Step::Munmap(m) => need_arena(&m.arena, arenas)?,
        Step::Mremap(m) => need_arena(&m.arena, arenas)?,
        Step::Madvise(m) => need_arena(&m.arena, arenas)?,
        Step::Touch(t) => {
            need_arena(&t.arena, arenas)?;
            if t.count == 0 {
                return Err((field("count"), "must be at least 1".into()));
            }
            if t.offset % 8 != 0 || t.offset >= arena_protocol::scenario::PAGE_SIZE {
                return Err((
                    field("offset"),
                    "must be 8-byte aligned and below 4096".into(),
                ));
            }
            let TouchExpect {
                signal,
                value,
                zero,
                pattern,
            } = &t.expect;
            let set = [signal.is_some(), value.is_some(), *zero, *pattern]
                .iter()
                .filter(|b| **b)
                .count();
            if set > 1 {
                return Err((
                    field("expect"),
                    "set at most one of signal, value, zero, pattern".into(),
                ));
            }
        }
        Step::BpfLoad(b) => {
            if let Some(r) = &b.reuse_arena {
                need_arena(r, arenas).map_err(|(_, m)| (field("reuse_arena"), m))?;
            }
            if let Some(id) = &b.arena_id {
                arenas.insert(id.clone());
            }
            objects.insert(b.id.clone());
        }
        Step::BpfRun(r) => {
            if !objects.contains(&r.object) {
                return Err((
                    field("object"),
                    format!("no earlier bpf_load step has id `{}`", r.object),
                ));
            }
            if r.args.len() > 4 || r.expect_out.len() > 4 {
                return Err((
                    field("args"),
                    "at most 4 args and 4 expect_out values".into(),
                ));
            }
        }
        Step::UserWalk(w) => need_arena(&w.arena, arenas)?,
        Step::ReadPointer(r) => {
            need_arena(&r.arena, arenas)?;
            if r.out > 3 {
                return Err((field("out"), "must be 0..=3".into()));
            }
        }
        Step::Processes(p) | Step::Threads(p) => {
            if p.count == 0 || p.count > 256 {
                return Err((field("count"), "must be 1..=256".into()));
            }
            if p.iterations == 0 {
                return Err((field("iterations"), "must be at least 1".into()));
            }
        }
        Step::Repeat(r) => {
            if r.times == 0 {
                return Err((field("times"), "must be at least 1".into()));
            }
        }
        Step::ExpectKernelLog(k) => {
            for (name, list) in [("contains", &k.contains), ("not_contains", &k.not_contains)] {
                for p in list {
                    regex::Regex::new(p).map_err(|e| (field(name), format!("bad regex: {e}")))?;
                }
            }
        }
        Step::Selftest(_) if !top => {
            return Err((
                format!("{at}.selftest"),
                "selftest steps are only allowed at the top level".into(),
            ));
        }
        Step::Sysctl(c) => {
            if c.file().is_none() {
                return Err((
                    field("path"),
                    format!("{:?} is not a path below /proc/sys", c.path),
                ));
            }
        }
        Step::Selftest(_) | Step::Sleep(_) => {}
    }
    for (j, child) in step.children().iter().enumerate() {
        check_step(
            child,
            &format!("{at}.{kind}.steps[{j}]"),
            arenas,
            objects,
            false,
        )?;
    }
    Ok(())
}

/// 1-based line of the first line starting with `key:` (fallback 1).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// 1-based line of the `index`-th item of the top-level `steps:` list.
fn line_of_step(text: &str, index: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("steps:"))?;
    let mut item_indent = None;
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = l.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            break;
        }
        if trimmed.starts_with('-') && item_indent.is_none_or(|ii| ii == indent) {
            item_indent = Some(indent);
            if seen == index {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: segv-on-fault-unallocated
description: user touch of an unallocated page must SIGSEGV
tags: [smoke, segv_on_fault]
vm: { vcpus: 2, memory_mib: 512 }
timeout_s: 60
steps:
  - arena: { id: a, pages: 16, flags: [segv_on_fault] }
  - mmap: { arena: a }
  - touch: { arena: a, page: 3, op: write, expect: { signal: SIGSEGV } }
";

    fn p(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("s.yaml"), text)
    }

    #[test]
    fn parses_the_documented_shape() {
        let s = p(GOOD).unwrap();
        assert_eq!(s.steps.len(), 3);
        assert_eq!(s.vm.vcpus, 2);
        assert_eq!(s.steps[2].kind(), "touch");
    }

    #[test]
    fn unknown_step_on_line_3_names_file_and_line() {
        let text = "name: x\nsteps:\n  - frobnicate: { arena: a }\n";
        let e = p(text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("s.yaml:3:"), "{msg}");
        assert!(msg.contains("frobnicate"), "{msg}");
        assert!(msg.contains("steps[0]"), "{msg}");
    }

    #[test]
    fn unknown_field_names_the_field() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1, colour: red }\n";
        let msg = p(text).unwrap_err().to_string();
        assert!(msg.starts_with("s.yaml:3:"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn unknown_top_level_field() {
        let msg = p("name: x\nsteps: []\nbogus: 1\n").unwrap_err().to_string();
        assert!(msg.contains("bogus"), "{msg}");
        assert!(msg.starts_with("s.yaml:"), "{msg}");
    }

    #[test]
    fn undefined_arena_points_at_the_step_line() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - mmap: { arena: b }\n";
        let e = p(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yaml:4: steps[1].mmap.arena: no earlier arena step has id `b`"
        );
    }

    #[test]
    fn conflicting_touch_expectations() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 0, op: read, expect: { zero: true, value: 3 } }\n";
        let msg = p(text).unwrap_err().to_string();
        assert!(msg.starts_with("s.yaml:5: steps[2].touch.expect"), "{msg}");
    }

    #[test]
    fn bad_name_and_vm() {
        assert!(p("name: 'a b'\nsteps: [ {sleep: {ms: 1}} ]\n")
            .unwrap_err()
            .to_string()
            .contains("name"));
        let msg = p("name: a\nvm: { vcpus: 0 }\nsteps: [ {sleep: {ms: 1}} ]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("s.yaml:2: vm.vcpus"), "{msg}");
    }

    #[test]
    fn nested_steps_are_checked() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - processes:\n      count: 2\n      steps:\n        - touch: { arena: z, page: 0, op: read }\n";
        let msg = p(text).unwrap_err().to_string();
        assert!(
            msg.contains("steps[1].processes.steps[0].touch.arena"),
            "{msg}"
        );
        assert!(msg.starts_with("s.yaml:4:"), "{msg}");
    }

    #[test]
    fn step_line_locator() {
        let text = "name: x\nsteps:\n  # c\n  - a: 1\n  - b:\n      - c: 2\n  - d: 3\n";
        assert_eq!(line_of_step(text, 0), Some(4));
        assert_eq!(line_of_step(text, 1), Some(5));
        assert_eq!(line_of_step(text, 2), Some(7));
        assert_eq!(line_of_step(text, 3), None);
    }
}

//! `nightly.toml`: the kernels × scenario sets a night runs, each split into
//! shards: the jobs `lab nightly plan` hands to a CI system's own matrix and
//! `lab nightly run --job K` runs one of.
//!
//! ```toml
//! shards = 2                      # shards per kernel × scenario set (--shards overrides)
//! [[kernel]]
//! name = "debian-6.12"            # folder name of its results
//! spec = "debian:6.12"            # debian:SERIES[.PATCH], debian:newest, or a kernel file
//! [[kernel]]
//! name = "my-tree-debug"
//! tree = "/src/linux"             # built by `lab kernel build` first
//! ref = "HEAD"                    # checked out (detached) in the tree before the build
//! debug = true                    # lab kernel build --debug
//! [[scenarios]]
//! name = "catalogue"
//! paths = ["scenarios/smoke", "scenarios/arena"]
//! ```
//!
//! Relative paths are relative to the matrix file's folder. A bad file is
//! an error naming the file, line, column and field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A matrix file that cannot be used: `FILE:LINE:COL: FIELD: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {field}: {message}", path.display())]
pub struct MatrixError {
    /// The matrix file.
    pub path: PathBuf,
    /// 1-based line (0 when the file could not be read).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, e.g. `kernel[1].spec`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// `--kernel` as `lab run` takes it: `debian:…` or a kernel file
    /// (resolved against the matrix file's folder).
    Spec(String),
    /// A source tree built with `lab kernel build` before the run.
    Tree {
        /// The tree (resolved against the matrix file's folder).
        tree: PathBuf,
        /// A git ref to check out (detached) first.
        git_ref: Option<String>,
        /// `lab kernel build --debug`.
        debug: bool,
    },
}

/// One `[[kernel]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixKernel {
    /// Its name (a folder name).
    pub name: String,
    /// What to boot.
    pub source: KernelSource,
}

/// One `[[scenarios]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioSet {
    /// Its name (a folder name).
    pub name: String,
    /// Scenario files or folders (resolved against the matrix file's folder).
    pub paths: Vec<PathBuf>,
}

/// A parsed matrix file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// The file it was read from.
    pub file: PathBuf,
    /// Default shard count.
    pub shards: usize,
    /// Kernels, in file order.
    pub kernels: Vec<MatrixKernel>,
    /// Scenario sets, in file order.
    pub scenarios: Vec<ScenarioSet>,
}

/// One CI job: a kernel, a scenario set, a shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    /// 1-based job number (`--job`).
    pub job: usize,
    /// The kernel's name.
    pub kernel: String,
    /// The scenario set's name.
    pub scenarios: String,
    /// `i/N`.
    pub shard: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    shards: Option<Spanned<i64>>,
    #[serde(default)]
    kernel: Vec<Spanned<RawKernel>>,
    #[serde(default)]
    scenarios: Vec<Spanned<RawScenarios>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    name: Spanned<String>,
    spec: Option<Spanned<String>>,
    tree: Option<Spanned<String>>,
    #[serde(rename = "ref")]
    git_ref: Option<Spanned<String>>,
    debug: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenarios {
    name: Spanned<String>,
    paths: Spanned<Vec<Spanned<String>>>,
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The field at byte `offset`: `kernel[1].spec` (the key on its line, or
/// `key`, inside the nearest `[[table]]` above it, counted), `shards`.
fn field_at(text: &str, offset: usize, key: Option<&str>) -> String {
    let (line, _) = position(text, offset);
    let lines: Vec<&str> = text.lines().collect();
    let own = lines
        .get(line.wrapping_sub(1))
        .copied()
        .unwrap_or("")
        .trim();
    let key = key.map(str::to_owned).or_else(|| {
        own.split_once('=')
            .map(|(k, _)| k.trim().to_owned())
            .filter(|k| !k.is_empty())
    });
    let header = |l: &str| {
        let l = l.trim();
        l.strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(t, _)| t.trim().to_owned())
    };
    let table = lines[..line.min(lines.len())]
        .iter()
        .rev()
        .find_map(|l| header(l))
        .map(|t| {
            let before = lines[..line.min(lines.len())]
                .iter()
                .filter(|l| header(l).as_deref() == Some(t.as_str()))
                .count();
            format!("{t}[{}]", before - 1)
        });
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(file)".to_owned(),
    }
}

/// Whether `name` can be a folder name of the results.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses matrix file `path` with contents `text`; relative paths are
/// resolved against `path`'s folder, and checked to exist (scenario paths,
/// kernel files; a tree is checked when its job runs).
pub fn parse(path: &Path, text: &str) -> Result<Matrix, MatrixError> {
    let err = |offset: usize, field: &str, message: String| {
        let (line, column) = position(text, offset);
        MatrixError {
            path: path.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message,
        }
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().to_owned();
        let key = message.split('`').nth(1).filter(|_| {
            message.starts_with("unknown field") || message.starts_with("missing field")
        });
        let field = field_at(text, offset, key);
        err(offset, &field, message)
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        if p.is_empty() {
            base.to_owned()
        } else {
            base.join(p)
        }
    };
    let shards = match &raw.shards {
        None => 1,
        Some(s) if *s.get_ref() >= 1 => *s.get_ref() as usize,
        Some(s) => {
            return Err(err(
                s.span().start,
                "shards",
                format!("{} shards: give 1 or more", s.get_ref()),
            ))
        }
    };
    if raw.kernel.is_empty() {
        return Err(err(0, "kernel", "no [[kernel]]: name at least one".into()));
    }
    if raw.scenarios.is_empty() {
        return Err(err(
            0,
            "scenarios",
            "no [[scenarios]]: name at least one".into(),
        ));
    }
    let check_name = |field: &str, name: &Spanned<String>, taken: &[String]| {
        if !valid_name(name.get_ref()) {
            return Err(err(
                name.span().start,
                field,
                format!(
                    "`{}` cannot be a folder name: use only A-Z a-z 0-9 - _ .",
                    name.get_ref()
                ),
            ));
        }
        if taken.contains(name.get_ref()) {
            return Err(err(
                name.span().start,
                field,
                format!("`{}` is named twice", name.get_ref()),
            ));
        }
        Ok(name.get_ref().clone())
    };
    let mut kernels = Vec::new();
    let mut names = Vec::new();
    for (i, k) in raw.kernel.iter().enumerate() {
        let at = k.span().start;
        let k = k.get_ref();
        let f = |field: &str| format!("kernel[{i}].{field}");
        let name = check_name(&f("name"), &k.name, &names)?;
        names.push(name.clone());
        let source = match (&k.spec, &k.tree) {
            (Some(spec), None) => {
                for (field, given) in [
                    ("ref", k.git_ref.as_ref().map(|r| r.span().start)),
                    ("debug", k.debug.as_ref().map(|d| d.span().start)),
                ] {
                    if let Some(offset) = given {
                        return Err(err(
                            offset,
                            &f(field),
                            format!("`{field}` is for a `tree`, not a `spec`"),
                        ));
                    }
                }
                let s = spec.get_ref();
                match super::debian_channel(Path::new(s)) {
                    Some(Err(e)) => return Err(err(spec.span().start, &f("spec"), e.to_string())),
                    Some(Ok(_)) => KernelSource::Spec(s.clone()),
                    None => {
                        let file = resolve(s);
                        if let Err(e) = std::fs::metadata(&file) {
                            return Err(err(
                                spec.span().start,
                                &f("spec"),
                                format!(
                                    "{}: {e} (give debian:SERIES or a kernel file)",
                                    file.display()
                                ),
                            ));
                        }
                        KernelSource::Spec(file.to_string_lossy().into_owned())
                    }
                }
            }
            (None, Some(tree)) => KernelSource::Tree {
                tree: resolve(tree.get_ref()),
                git_ref: k.git_ref.as_ref().map(|r| r.get_ref().clone()),
                debug: k.debug.as_ref().is_some_and(|d| *d.get_ref()),
            },
            (Some(_), Some(tree)) => {
                return Err(err(
                    tree.span().start,
                    &f("tree"),
                    "give `spec` or `tree`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    at,
                    &f("spec"),
                    "give `spec` (debian:SERIES or a kernel file) or `tree`".into(),
                ))
            }
        };
        kernels.push(MatrixKernel { name, source });
    }
    let mut scenarios = Vec::new();
    let mut names = Vec::new();
    for (i, s) in raw.scenarios.iter().enumerate() {
        let s = s.get_ref();
        let f = |field: &str| format!("scenarios[{i}].{field}");
        let name = check_name(&f("name"), &s.name, &names)?;
        names.push(name.clone());
        if s.paths.get_ref().is_empty() {
            return Err(err(
                s.paths.span().start,
                &f("paths"),
                "no paths: name scenario files or folders".into(),
            ));
        }
        let mut paths = Vec::new();
        for (j, p) in s.paths.get_ref().iter().enumerate() {
            let full = resolve(p.get_ref());
            if let Err(e) = std::fs::metadata(&full) {
                return Err(err(
                    p.span().start,
                    &f(&format!("paths[{j}]")),
                    format!("{}: {e}", full.display()),
                ));
            }
            paths.push(full);
        }
        scenarios.push(ScenarioSet { name, paths });
    }
    Ok(Matrix {
        file: path.to_owned(),
        shards,
        kernels,
        scenarios,
    })
}

/// Reads and parses matrix file `path`.
pub fn read(path: &Path) -> Result<Matrix, MatrixError> {
    let text = std::fs::read_to_string(path).map_err(|e| MatrixError {
        path: path.to_owned(),
        line: 0,
        column: 0,
        field: "(file)".into(),
        message: e.to_string(),
    })?;
    parse(path, &text)
}

impl Matrix {
    /// Every job, numbered from 1: kernels in file order, then scenario
    /// sets in file order, then shards 1..=`shards` (default: the file's).
    pub fn jobs(&self, shards: Option<usize>) -> Vec<Job> {
        let n = shards.unwrap_or(self.shards).max(1);
        let mut out = Vec::new();
        for k in &self.kernels {
            for s in &self.scenarios {
                for i in 1..=n {
                    out.push(Job {
                        job: out.len() + 1,
                        kernel: k.name.clone(),
                        scenarios: s.name.clone(),
                        shard: format!("{i}/{n}"),
                    });
                }
            }
        }
        out
    }

    /// The kernel named `name`.
    pub fn kernel(&self, name: &str) -> Option<&MatrixKernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// The scenario set named `name`.
    pub fn scenario_set(&self, name: &str) -> Option<&ScenarioSet> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("nightly.toml")
    }

    const GOOD: &str = r#"
shards = 2
[[kernel]]
name = "debian-6.12"
spec = "debian:6.12"
[[kernel]]
name = "tree"
tree = "/nonexistent/linux"
ref = "v6.12"
debug = true
[[scenarios]]
name = "smoke"
paths = ["scenarios/smoke"]
"#;

    #[test]
    fn a_matrix_gives_kernels_times_sets_times_shards_jobs() {
        let m = parse(&dir(), GOOD).unwrap();
        assert_eq!(m.shards, 2);
        assert_eq!(
            m.kernels[1].source,
            KernelSource::Tree {
                tree: "/nonexistent/linux".into(),
                git_ref: Some("v6.12".into()),
                debug: true
            }
        );
        let jobs = m.jobs(None);
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[3].job, 4);
        assert_eq!(jobs[3].kernel, "tree");
        assert_eq!(jobs[3].shard, "2/2");
        assert_eq!(m.jobs(Some(3)).len(), 6);
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = GOOD.replace("debian:6.12", "debian:six");
        let e = parse(&dir(), &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (5, "kernel[0].spec"), "{e}");
        let bad = GOOD.replace("scenarios/smoke", "scenarios/nope");
        let e = parse(&dir(), &bad).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (13, "scenarios[0].paths[0]"),
            "{e}"
        );
        let bad = GOOD.replace("debug = true", "debgu = true");
        let e = parse(&dir(), &bad).unwrap_err();
        assert_eq!(e.field, "kernel[1].debgu", "{e}");
        let e = parse(&dir(), "shards = [").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = parse(&dir(), &GOOD.replace("shards = 2", "shards = 0")).unwrap_err();
        assert_eq!(e.field, "shards", "{e}");
        let e = parse(&dir(), &GOOD.replace("\"tree\"", "\"debian-6.12\"")).unwrap_err();
        assert_eq!(e.field, "kernel[1].name", "{e}");
    }
}

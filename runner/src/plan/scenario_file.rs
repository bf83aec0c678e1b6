//! Loading scenario files: strict YAML into the typed model, then semantic
//! checks, bounds included (every page, count, offset and length that is
//! static is checked against its arena and the mapping the steps before it
//! leave). Every error names `file:line:column` and the field; every error of
//! every file is reported, not only the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use arena_protocol::scenario::step_fields;
use arena_protocol::scenario::{
    arena_range, bpf_catalogue, check_bpf_page_args, check_page_offset, pages_to_bytes, AccessOp,
    BpfCatalogue, Count, KmemleakAction, MemoryStep, PageSet, ParallelStep, Requirement, Step,
    SysrqStep, WorkersExpect, MAX_ARENA_PAGES,
};
use arena_protocol::{Scenario, StepLines};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::plan::lab_toml::{self, DeclaredTags, LabTomlError};
use crate::plan::own_bpf;

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
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the field's value (or of the nearest enclosing
        /// node when the field is left at its default).
        line: usize,
        /// 1-based column of the same.
        column: usize,
        /// Field path, e.g. `steps[2].touch.arena`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No scenario files under the given paths.
    #[error("{0}: no scenario files (*.yaml) found")]
    Empty(String),
    /// A `lab.toml` beside the scenarios is wrong (its path, line and field).
    #[error(transparent)]
    LabToml(#[from] LabTomlError),
    /// Several of the above, one per line, in file order.
    #[error("{}", Lines(.0))]
    Many(Vec<ScenarioError>),
}

/// Display helper: one error per line.
struct Lines<'a>(&'a [ScenarioError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ScenarioError {
    /// One error, or all of them as [`ScenarioError::Many`]; `None` if empty.
    pub fn combine(mut errors: Vec<ScenarioError>) -> Option<ScenarioError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ScenarioError::Many(
                errors
                    .into_iter()
                    .flat_map(|e| match e {
                        ScenarioError::Many(v) => v,
                        e => vec![e],
                    })
                    .collect(),
            )),
        }
    }
}

/// A scenario file that did not load, with what can still be read of it:
/// enough to tell whether a selection (`--only`, `--tags`, `--exclude`)
/// would have picked it.
#[derive(Debug)]
pub struct InvalidFile {
    /// The file.
    pub path: PathBuf,
    /// Its `name:`, when that much can be read.
    pub name: Option<String>,
    /// Its `tags:`, when they can be read (none written: empty).
    pub tags: Option<Vec<String>>,
    /// Why it did not load.
    pub error: ScenarioError,
}

impl InvalidFile {
    fn new(path: PathBuf, error: ScenarioError) -> InvalidFile {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let (name, tags) = recover_name_and_tags(&text);
        InvalidFile {
            path,
            name,
            tags,
            error,
        }
    }
}

/// The `name:` and `tags:` of a file that does not load: from its YAML when
/// that parses, else from top-level `name: x` and `tags: [a, b]` lines.
fn recover_name_and_tags(text: &str) -> (Option<String>, Option<Vec<String>>) {
    use serde_yaml::Value;
    if let Ok(Value::Mapping(m)) = serde_yaml::from_str::<Value>(text) {
        let name = m.get("name").and_then(Value::as_str).map(str::to_owned);
        let tags = match m.get("tags") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Sequence(v)) => v
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            Some(_) => None,
        };
        return (name, tags);
    }
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            let v = v.split(" #").next().unwrap_or("").trim();
            (!v.is_empty()).then(|| v.to_owned())
        })
    };
    let unquote = |v: &str| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
    let name = value("name").map(|v| unquote(&v)).filter(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    });
    let tags = value("tags").and_then(|v| {
        let list = v.strip_prefix('[')?.strip_suffix(']')?;
        Some(
            list.split(',')
                .map(unquote)
                .filter(|t| !t.is_empty())
                .collect(),
        )
    });
    (name, tags)
}

/// What [`load_all`] found: the files that loaded and those that did not.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid scenarios, in a stable order.
    pub files: Vec<ScenarioFile>,
    /// Invalid files, in the same order.
    pub invalid: Vec<InvalidFile>,
}

/// Load every scenario named by `paths` (files, or directories searched
/// recursively for `*.yaml`/`*.yml`), in a stable order. Every problem in
/// every file is reported.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<ScenarioFile>, ScenarioError> {
    let loaded = load_all(paths)?;
    let errors: Vec<_> = loaded.invalid.into_iter().map(|f| f.error).collect();
    match ScenarioError::combine(errors) {
        Some(e) => Err(e),
        None => Ok(loaded.files),
    }
}

/// [`load_paths`], keeping the files that load apart from those that do
/// not. The error is what no selection can leave out (a path that does not
/// exist, a directory without scenarios, a `lab.toml` that does not parse),
/// with every invalid file's errors after it.
pub fn load_all(paths: &[PathBuf]) -> Result<Loaded, ScenarioError> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(source) => {
                errors.push(ScenarioError::Io {
                    path: p.clone(),
                    source,
                });
                continue;
            }
        };
        if meta.is_dir() {
            let before = files.len();
            if let Err(e) = collect_yaml(p, &mut files) {
                errors.push(e);
            } else if files.len() == before {
                errors.push(ScenarioError::Empty(p.display().to_string()));
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut loaded = Loaded::default();
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let mut tag_files = lab_toml::Cache::default();
    let mut bad_tomls = HashSet::new();
    for f in files {
        // The same file named twice (`dir dir/x.yaml`, or twice for
        // `--repeat`) is one scenario, not a clash of names.
        if !seen.insert(std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone())) {
            continue;
        }
        let tags = match tag_files.tags_for(f.parent().unwrap_or(Path::new("."))) {
            Ok(t) => t,
            Err(e) => {
                // Reported once, however many scenarios it is above.
                if bad_tomls.insert(e.to_string()) {
                    errors.push(e.into());
                }
                continue;
            }
        };
        let s = match load_file_with(&f, &tags) {
            Ok(s) => s,
            Err(e) => {
                loaded.invalid.push(InvalidFile::new(f, e));
                continue;
            }
        };
        if !names.insert(s.scenario.name.clone()) {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let (line, column) = locate(&text, "name");
            let error = ScenarioError::Invalid {
                line,
                column,
                path: f.clone(),
                field: "name".into(),
                message: format!("duplicate scenario name `{}`", s.scenario.name),
            };
            loaded.invalid.push(InvalidFile {
                path: f,
                name: Some(s.scenario.name),
                tags: Some(s.scenario.tags),
                error,
            });
            continue;
        }
        loaded.files.push(s);
    }
    if errors.is_empty() {
        return Ok(loaded);
    }
    errors.extend(loaded.invalid.into_iter().map(|f| f.error));
    Err(ScenarioError::combine(errors).expect("not empty"))
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

/// Load and check one file; its tags may be those the `lab.toml` files
/// above it declare ([`lab_toml`]).
pub fn load_file(path: &Path) -> Result<ScenarioFile, ScenarioError> {
    let tags = lab_toml::tags_for(path.parent().unwrap_or(Path::new(".")))?;
    load_file_with(path, &tags)
}

fn load_file_with(path: &Path, tags: &DeclaredTags) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_owned(),
        source,
    })?;
    let scenario = parse_with_tags(path, &text, tags)?;
    Ok(ScenarioFile {
        path: path.to_owned(),
        scenario,
    })
}

/// Parse YAML text and check it; all semantic problems are reported. Tags
/// must be of the built-in families ([`TAG_FAMILIES`]).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    parse_with_tags(path, text, &DeclaredTags::default())
}

/// [`parse`], with the tag families `tags` (from `lab.toml` files) allowed too.
pub fn parse_with_tags(
    path: &Path,
    text: &str,
    tags: &DeclaredTags,
) -> Result<Scenario, ScenarioError> {
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
    let mut scenario = scenario;
    let mut problems = Vec::new();
    arena_protocol::sweep::expand_all(&mut scenario.steps, "steps", &mut problems);
    if problems.is_empty() {
        problems = check(&scenario, tags, own_bpf::Sources::beside(path));
    }
    let errors = problems
        .into_iter()
        .map(|(field, message)| {
            let (line, column) = locate(text, &field);
            ScenarioError::Invalid {
                path: path.to_owned(),
                line,
                column,
                field,
                message,
            }
        })
        .collect();
    match ScenarioError::combine(errors) {
        Some(e) => Err(e),
        None => {
            // The agent checks what the steps need as well as what the
            // file declares: a kernel without it skips, naming it.
            scenario.requires = scenario.requirements();
            scenario.lines = step_lines(path, text, &scenario.steps);
            Ok(scenario)
        }
    }
}

/// Where each step of `steps` (nested ones too) is written in `text`, the
/// file at `path`: what reasons name a step by (`step 8/12 (bpf_run,
/// race.yaml:19)`).
fn step_lines(path: &Path, text: &str, steps: &[Step]) -> StepLines {
    StepLines {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        lines: step_fields(steps, "steps")
            .into_iter()
            .map(|field| {
                let (line, _) = locate(text, &field);
                (field, line as u32)
            })
            .collect(),
    }
}

/// One step of a field path such as `steps[1].touch.page`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_field(field: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(Seg::Key(rest[..i].to_owned()));
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some(close) = r.find(']') else { break };
                if let Ok(n) = r[..close].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &r[close + 1..];
            }
        } else {
            out.push(Seg::Key(rest.to_owned()));
        }
    }
    out
}

/// 1-based (line, column) where the value of `field` starts in `text`, or of
/// the deepest node on its path that exists (a field left at its default).
/// It walks the YAML with a visitor that stops with an error at the target:
/// serde_yaml stamps such an error with the position of the node it was
/// deserializing, the only position information it exposes.
fn locate(text: &str, field: &str) -> (usize, usize) {
    let path = parse_field(field);
    let de = serde_yaml::Deserializer::from_str(text);
    match Locator(&path).deserialize(de) {
        Err(e) => e.location().map_or((1, 1), |l| (l.line(), l.column())),
        Ok(()) => (1, 1),
    }
}

struct Locator<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Locator<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Every `visit_*` not written here defaults to an error, which is what
/// marks the target when the path ends at a scalar.
impl<'de> Visitor<'de> for Locator<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the located node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let [Seg::Key(want), rest @ ..] = self.0 {
            while let Some(key) = map.next_key::<String>()? {
                if &key == want {
                    return map.next_value_seed(Locator(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom("here"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let [Seg::Index(want), rest @ ..] = self.0 {
            for _ in 0..*want {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(de::Error::custom("here"));
                }
            }
            if seq.next_element_seed(Locator(rest))?.is_some() {
                return Ok(());
            }
        }
        Err(de::Error::custom("here"))
    }
}

/// A semantic problem: (field path, message).
type Problem = (String, String);

/// What validation knows statically about one arena, in the process that
/// runs the step being checked.
#[derive(Debug, Clone, PartialEq)]
struct ArenaModel {
    /// Size in pages; `None` when only the run knows (an arena libbpf creates).
    pages: Option<u64>,
    /// Pages mapped; `None` when unknown.
    mapped: Option<PageSet>,
}

/// Ids the steps so far defined, as a process running them sees them.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    arenas: HashMap<String, ArenaModel>,
    /// `memory` baselines recorded so far.
    baselines: HashSet<String>,
    /// `bpf_load` id → (object file, arena id its programs use).
    objects: HashMap<String, (String, Option<String>)>,
}

/// Where a step list runs.
#[derive(Debug, Clone, Copy)]
struct Scope {
    /// Directly in `steps:` (only there may `selftest` run).
    top: bool,
    /// Inside `threads:`: the mapping is shared with the other threads.
    threads: bool,
}

/// Collects problems, one per field (a loop body checked twice would
/// otherwise report the same field twice).
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    /// The scenario's own BPF sources (`bpf_load.source`).
    own: own_bpf::Sources,
}
impl Checker {
    fn report(&mut self, field: String, message: impl Into<String>) {
        if !self.problems.iter().any(|(f, _)| *f == field) {
            self.problems.push((field, message.into()));
        }
    }
}

/// The built-in tag families (scenarios/README.md): what `--tags` selects
/// by, so a misspelt tag would silently drop a scenario from a selection.
/// A `lab.toml` beside the scenarios may declare more ([`lab_toml`]).
pub const TAG_FAMILIES: &[&str] = &[
    "smoke",
    "page_fault",
    "segv_on_fault",
    "bpf_alloc",
    "mmap_rules",
    "race",
    "selftests",
    "lab_selftest",
    "leak",
];

/// BPF objects and their syscall programs, read once from the source tree's
/// `guest-images/bpf` (see [`bpf_catalogue`]; this file is also built into
/// the fuzz crate, one level below the root as well). Why not, if they
/// cannot be listed: every `bpf_load` of a lab object then says so.
fn known_bpf() -> Result<&'static [(String, Vec<String>)], &'static str> {
    static CATALOGUE: std::sync::OnceLock<Result<BpfCatalogue, String>> =
        std::sync::OnceLock::new();
    CATALOGUE
        .get_or_init(|| {
            bpf_catalogue(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/bpf"))
        })
        .as_deref()
        .map_err(String::as_str)
}
fn check(s: &Scenario, declared: &DeclaredTags, own: own_bpf::Sources) -> Vec<Problem> {
    let mut c = Checker {
        own,
        ..Checker::default()
    };
    let valid_name = !s.name.is_empty()
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.name.starts_with('.');
    if !valid_name {
        c.report(
            "name".into(),
            format!(
                "`{}` must be non-empty and use only A-Z a-z 0-9 - _ .",
                s.name
            ),
        );
    }
    if !(1..=64).contains(&s.vm.vcpus) {
        c.report("vm.vcpus".into(), "must be 1..=64");
    }
    if s.vm.memory_mib < 128 {
        c.report("vm.memory_mib".into(), "must be at least 128");
    }
    for (i, t) in s.tags.iter().enumerate() {
        if !TAG_FAMILIES.contains(&t.as_str()) && !declared.contains(t) {
            let known: Vec<&str> = TAG_FAMILIES
                .iter()
                .copied()
                .chain(declared.names())
                .collect();
            c.report(
                format!("tags[{i}]"),
                format!(
                    "unknown tag \"{t}\": declare it in a lab.toml beside the scenarios ([tags] {t} = \"...\"), or use one of: {}",
                    known.join(", ")
                ),
            );
        }
    }
    if s.timeout_s == 0 {
        c.report("timeout_s".into(), "must be positive");
    }
    if s.steps.is_empty() {
        c.report("steps".into(), "a scenario needs at least one step");
    }
    if !s.lines.is_empty() {
        c.report(
            "lines".into(),
            "is filled by the lab from the file (where each step is written); do not write it",
        );
    }
    for (i, k) in s.known_issues.iter().enumerate() {
        for (field, value) in [
            ("kernel", &k.kernel),
            ("reason", &k.reason),
            ("note", &k.note),
        ] {
            if value.trim().is_empty() {
                c.report(format!("known_issues[{i}].{field}"), "must not be empty");
            }
        }
        // A reason that names a step must name one of these steps, as
        // reasons do (`step 4/5 (processes, *): ...`, `*` for the line):
        // caught here when a step is added before it, not missed at run time.
        if k.reason.starts_with("step ") && !s.steps.is_empty() {
            // `step 4/5 (processes`: how reasons name step i, up to its place.
            let named = |i: usize| {
                let unplaced = StepLines::default().step("steps", &s.steps, i);
                let mut n = unplaced.to_string();
                n.pop();
                n
            };
            if !(0..s.steps.len()).map(named).any(|n| {
                k.reason
                    .strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with([',', ')']) || rest.is_empty())
            }) {
                c.report(
                    format!("known_issues[{i}].reason"),
                    format!(
                        "names no step of this file: reasons name one as `step N/{} (kind, file:line)`, e.g. `{}, *)`",
                        s.steps.len(),
                        named(0)
                    ),
                );
            }
        }
        if k.kernel.trim() == "*" {
            c.report(
                format!("known_issues[{i}].kernel"),
                "`*` would excuse the failure on every kernel; name the releases",
            );
        }
    }
    for (i, r) in s.requires.iter().enumerate() {
        let (kind, name) = match r {
            Requirement::Kfunc(n) => ("kfunc", n),
            Requirement::Kallsyms(n) => ("kallsyms", n),
            Requirement::Config(_) => continue,
        };
        let ident = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ident {
            c.report(
                format!("requires[{i}].{kind}"),
                format!("{name:?} is not a kernel symbol name (letters, digits, _)"),
            );
        }
    }
    let scope = Scope {
        top: true,
        threads: false,
    };
    c.block(&s.steps, "steps", &mut Model::default(), scope);
    // The agent forks only while it has one thread: refused here, before
    // a boot, with the field, as the agent would refuse it at run time.
    for (field, message) in arena_protocol::scenario::forks_inside_threads(&s.steps, "steps") {
        c.report(field, message);
    }
    c.problems
}

impl Checker {
    fn block(&mut self, steps: &[Step], at: &str, model: &mut Model, scope: Scope) {
        for (i, step) in steps.iter().enumerate() {
            self.step(step, &format!("{at}[{i}]"), model, scope);
        }
    }

    /// `memory:`: a baseline records every source; a check names at most
    /// one source and gives bounds in its unit.
    fn memory(&mut self, m: &MemoryStep, field: &dyn Fn(&str) -> String, model: &mut Model) {
        let bounds_given = [m.at_most_kib, m.at_least_kib, m.at_most, m.at_least]
            .iter()
            .any(Option::is_some);
        match (&m.baseline, &m.since) {
            (Some(name), None) => {
                if bounds_given || m.within_ms > 0 || m.meminfo.is_some() || m.vmstat.is_some() {
                    self.report(
                        field("baseline"),
                        "a baseline step records every source; the source and bounds go on a later step with `since`",
                    );
                }
                model.baselines.insert(name.clone());
            }
            (None, Some(name)) => {
                if !model.baselines.contains(name) {
                    self.report(
                        field("since"),
                        format!("no earlier memory step records baseline `{name}`"),
                    );
                }
                let (unit, least, most, wrong) = match (&m.meminfo, &m.vmstat) {
                    (Some(_), Some(_)) => {
                        self.report(field("vmstat"), "check one source: meminfo or vmstat");
                        return;
                    }
                    (_, Some(_)) => ("", "at_least", "at_most", [m.at_least_kib, m.at_most_kib]),
                    _ => (
                        "_kib",
                        "at_least_kib",
                        "at_most_kib",
                        [m.at_least, m.at_most],
                    ),
                };
                if wrong.iter().any(Option::is_some) {
                    let source = if unit.is_empty() {
                        "a vmstat count"
                    } else {
                        "KiB (cgroup, meminfo)"
                    };
                    self.report(
                        field(if unit.is_empty() {
                            "at_most_kib"
                        } else {
                            "at_most"
                        }),
                        format!("this check is in {source}: bound it with {least} / {most}"),
                    );
                }
                let (l, h) = if unit.is_empty() {
                    (m.at_least, m.at_most)
                } else {
                    (m.at_least_kib, m.at_most_kib)
                };
                match (l, h) {
                    (None, None) => {
                        self.report(field("since"), format!("give {most}, {least} or both"))
                    }
                    (Some(l), Some(h)) if l > h => self.report(
                        field(least),
                        format!("above {most}: no change satisfies both"),
                    ),
                    _ => {}
                }
                for (name, value) in [("meminfo", &m.meminfo), ("vmstat", &m.vmstat)] {
                    let ok = value.as_ref().is_none_or(|v| {
                        !v.is_empty()
                            && v.len() <= 64
                            && v.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_()".contains(c))
                    });
                    if !ok {
                        self.report(field(name), format!("{value:?} is not a {name} field name"));
                    }
                }
                if m.within_ms > 600_000 {
                    self.report(field("within_ms"), "at most 600000 (10 minutes)");
                }
            }
            _ => self.report(
                field("baseline"),
                "give either `baseline` (to record) or `since` (to check)",
            ),
        }
    }

    /// A block run `times` times with the same state: checked once, and
    /// once more from where the first run leaves the mappings if that
    /// differs (the second iteration starts there); what still differs is
    /// then unknown.
    fn looped(&mut self, steps: &[Step], at: &str, model: &mut Model, scope: Scope, times: u64) {
        let start = model.clone();
        self.block(steps, at, model, scope);
        if times > 1 && *model != start {
            let mut again = model.clone();
            self.block(steps, at, &mut again, scope);
            for (id, a) in again.arenas.iter_mut() {
                if model.arenas.get(id) != Some(a) {
                    a.mapped = None;
                }
            }
            *model = again;
        }
    }

    /// `processes`/`threads`: the single-list form or roles, each role's
    /// lists checked like the single list (its setup once, then its steps
    /// as a loop), from a copy of the state; workers hand nothing back.
    fn parallel(
        &mut self,
        p: &ParallelStep,
        field: &dyn Fn(&str) -> String,
        model: &Model,
        threads: bool,
    ) {
        if p.iterations == 0 {
            self.report(field("iterations"), "must be at least 1");
        }
        if p.roles.is_empty() {
            if !p.count.is_some_and(|c| (1..=256).contains(&c)) {
                self.report(field("count"), "must be 1..=256 (or give `roles`)");
            }
        } else {
            if p.count.is_some() || !p.steps.is_empty() {
                self.report(
                    field("roles"),
                    "give either `count` and `steps` (one role) or `roles`, not both",
                );
            }
            let mut names = HashSet::new();
            for (i, r) in p.roles.iter().enumerate() {
                if r.name.is_empty() || !names.insert(r.name.as_str()) {
                    self.report(
                        field(&format!("roles[{i}].name")),
                        format!("`{}` must be non-empty and unique in the step", r.name),
                    );
                }
                if !(1..=256).contains(&r.count) {
                    self.report(field(&format!("roles[{i}].count")), "must be 1..=256");
                }
                self.counts(&r.expect, &field(&format!("roles[{i}].expect")));
            }
            if p.total_workers() > 256 {
                self.report(field("roles"), "at most 256 workers in all roles");
            }
        }
        self.counts(&p.expect, &field("expect"));
        // A forked process has its own mm (VM_DONTCOPY: nothing mapped);
        // threads share theirs.
        let mut start = model.clone();
        if !threads {
            for a in start.arenas.values_mut() {
                a.mapped = Some(PageSet::new());
            }
        }
        let scope = Scope {
            top: false,
            threads,
        };
        for (i, r) in p.role_views().iter().enumerate() {
            let at = |list: &str| {
                if r.implicit {
                    field(list)
                } else {
                    field(&format!("roles[{i}].{list}"))
                }
            };
            let mut inner = start.clone();
            self.block(r.setup, &at("setup"), &mut inner, scope);
            self.looped(r.steps, &at("steps"), &mut inner, scope, p.iterations);
        }
    }

    /// Bounds of a `{ at_least, at_most }` count must make sense.
    fn counts(&mut self, e: &WorkersExpect, at: &str) {
        let all = e
            .failures
            .iter()
            .map(|c| ("failures".to_owned(), c))
            .chain(e.signals.iter().map(|(s, c)| (format!("signals.{s:?}"), c)));
        let mut bad = Vec::new();
        for (f, c) in all {
            if let Count::Range {
                at_least: Some(l),
                at_most: Some(m),
            } = c
            {
                if l > m {
                    bad.push(format!("{at}.{f}"));
                }
            }
        }
        for f in bad {
            self.report(f, "at_least is above at_most: no count satisfies it");
        }
    }

    /// The arena `id`, or a problem at `field` if no earlier step defines it.
    fn arena<'m>(
        &mut self,
        model: &'m mut Model,
        id: &str,
        field: String,
    ) -> Option<&'m mut ArenaModel> {
        let found = model.arenas.get_mut(id);
        if found.is_none() {
            self.report(field, format!("no earlier arena step has id `{id}`"));
        }
        found
    }

    fn step(&mut self, step: &Step, at: &str, model: &mut Model, scope: Scope) {
        let kind = step.kind();
        let field = |f: &str| format!("{at}.{kind}.{f}");
        // Which of (page, count) to blame for a range outside the arena: the
        // count only when the first page itself is inside.
        let blame = |first: u64, pages: u64, page_f: &str, count_f: &str| {
            field(if first < pages { count_f } else { page_f })
        };
        let not_mapped = |arena: &str| {
            format!("arena `{arena}` is not mapped in the process running this step (mmap it first; a forked process does not inherit mappings)")
        };
        match step {
            Step::Arena(a) => {
                if a.expect.errno.is_none() {
                    if model.arenas.contains_key(&a.id) {
                        self.report(field("id"), format!("arena `{}` is defined twice", a.id));
                    }
                    if !(1..=MAX_ARENA_PAGES).contains(&a.pages) {
                        self.report(
                            field("pages"),
                            format!("an arena has 1..={MAX_ARENA_PAGES} pages (4 GiB); the kernel refuses {} (say so with expect: {{ errno: ... }})", a.pages),
                        );
                    }
                    model.arenas.insert(
                        a.id.clone(),
                        ArenaModel {
                            pages: Some(a.pages),
                            mapped: Some(PageSet::new()),
                        },
                    );
                }
            }
            Step::Mmap(m) => {
                let Some(a) = self.arena(model, &m.arena, field("arena")) else {
                    return;
                };
                let len = m.pages.or(a.pages);
                for (f, v) in [("pages", m.pages), ("offset_pages", Some(m.offset_pages))] {
                    if let Some(Err(e)) = v.map(|v| pages_to_bytes(f, v)) {
                        self.report(field(f), e.to_string());
                    }
                }
                if m.expect.errno.is_some() {
                    // A probe of the kernel's checks: any length or offset.
                    return;
                }
                if m.offset_pages != 0 {
                    self.report(field("offset_pages"), "must be 0 unless the step expects an errno: the kernel maps only offset 0, and page numbers count from the arena's start");
                }
                if let (Some(len), Some(pages)) = (len, a.pages) {
                    if len == 0 {
                        self.report(
                            field("pages"),
                            "must be at least 1 unless the step expects an errno",
                        );
                    } else if len > pages {
                        self.report(field("pages"), format!("{len} pages is longer than arena `{}` ({pages} pages); only a step that expects an errno may ask for more", m.arena));
                    }
                }
                a.mapped = len.map(PageSet::prefix);
            }
            Step::Munmap(u) => {
                if scope.threads {
                    self.report(format!("{at}.munmap"), "not allowed inside threads: it would unmap the arena under the other threads of the process");
                }
                let Some(a) = self.arena(model, &u.arena, field("arena")) else {
                    return;
                };
                if a.mapped.as_ref().is_some_and(PageSet::is_empty) {
                    self.report(field("arena"), not_mapped(&u.arena));
                    return;
                }
                // Default: from `page` to the end of the mapping.
                let count = u.pages.or_else(|| {
                    a.mapped
                        .as_ref()
                        .map(PageSet::end)
                        .or(a.pages)
                        .map(|end| end.saturating_sub(u.page))
                });
                let (Some(count), Some(pages)) = (count, a.pages) else {
                    return;
                };
                match arena_range(&u.arena, pages, u.page, count) {
                    Err(e) => {
                        let f = if u.pages.is_some() {
                            blame(u.page, pages, "page", "pages")
                        } else {
                            field("page")
                        };
                        self.report(f, e.to_string());
                    }
                    Ok(r) if u.expect.errno.is_none() => {
                        if let Some(m) = a.mapped.as_mut() {
                            m.remove(r);
                        }
                    }
                    Ok(_) => {}
                }
            }
            Step::Mremap(r) => {
                if scope.threads {
                    self.report(format!("{at}.mremap"), "not allowed inside threads: it would move or shrink the arena under the other threads of the process");
                }
                let Some(a) = self.arena(model, &r.arena, field("arena")) else {
                    return;
                };
                if a.mapped.as_ref().is_some_and(PageSet::is_empty) {
                    self.report(field("arena"), not_mapped(&r.arena));
                    return;
                }
                if let Err(e) = pages_to_bytes("pages", r.pages) {
                    self.report(field("pages"), e.to_string());
                } else if r.expect.errno.is_none() {
                    if let Some(pages) = a.pages.filter(|p| r.pages == 0 || r.pages > *p) {
                        self.report(field("pages"), format!("must be 1..={pages} (the size of arena `{}`) unless the step expects an errno", r.arena));
                    }
                    a.mapped = Some(PageSet::prefix(r.pages));
                }
            }
            Step::Madvise(m) => {
                let Some(a) = self.arena(model, &m.arena, field("arena")) else {
                    return;
                };
                if a.mapped.as_ref().is_some_and(PageSet::is_empty) {
                    self.report(field("arena"), not_mapped(&m.arena));
                    return;
                }
                if let Some(pages) = a.pages {
                    if let Err(e) = arena_range(&m.arena, pages, m.page, m.pages) {
                        self.report(blame(m.page, pages, "page", "pages"), e.to_string());
                        return;
                    }
                }
                if let (None, Some(mapped)) = (m.expect.errno, &a.mapped) {
                    if let Err(e) = mapped.check_mapped(&m.arena, m.page, m.pages) {
                        self.report(field("page"), format!("{e}; madvise fails there with ENOMEM (say so with expect: {{ errno: ENOMEM }})"));
                    }
                }
            }
            Step::Touch(t) => {
                if t.count == 0 {
                    self.report(field("count"), "must be at least 1");
                }
                if let Err(e) = check_page_offset(t.offset) {
                    self.report(field("offset"), e.to_string());
                }
                let e = &t.expect;
                if e.fields_set() > 1 {
                    self.report(
                        field("expect"),
                        "set at most one of signal, value, zero, pattern, any_of",
                    );
                } else if e
                    .any_of
                    .iter()
                    .any(|a| a.fields_set() != 1 || !a.any_of.is_empty())
                {
                    self.report(
                        field("expect.any_of"),
                        "each alternative sets exactly one of signal, value, zero, pattern",
                    );
                } else if t.op == AccessOp::Write && e.expects_values() {
                    self.report(field("expect"), "a write cannot expect a read value");
                }
                let no_signal = e.accepted_signals().is_empty();
                let Some(a) = self.arena(model, &t.arena, field("arena")) else {
                    return;
                };
                if let Some(pages) = a.pages {
                    if let Err(e) = arena_range(&t.arena, pages, t.page, t.count) {
                        self.report(blame(t.page, pages, "page", "count"), e.to_string());
                        return;
                    }
                }
                // Unmapped pages inside the arena: only a fault probe.
                if let (true, Some(mapped)) = (no_signal, &a.mapped) {
                    if let Err(e) = mapped.check_mapped(&t.arena, t.page, t.count) {
                        self.report(
                            field("page"),
                            format!(
                                "{e}; only a touch that expects (or accepts) a signal may access it"
                            ),
                        );
                    }
                }
            }
            Step::BpfLoad(b) => {
                let mut pages = None;
                if let Some(r) = &b.reuse_arena {
                    pages = self
                        .arena(model, r, field("reuse_arena"))
                        .and_then(|a| a.pages);
                }
                if let Some(id) = &b.arena_id {
                    // libbpf creates (or reuses) and maps it: the run knows.
                    model.arenas.insert(
                        id.clone(),
                        ArenaModel {
                            pages,
                            mapped: None,
                        },
                    );
                }
                // Checked whatever the expectation: an errno is the load's,
                // and a missing object fails before any load.
                match (&b.source, b.object.is_empty(), known_bpf()) {
                    (Some(_), false, _) => self.report(
                        field("source"),
                        "give `object` (one of the lab's) or `source` (your own), not both",
                    ),
                    (None, true, _) => self.report(
                        field("object"),
                        "give `object` (one of the lab's BPF objects) or `source` (a .bpf.c beside the scenario)",
                    ),
                    (Some(_), true, _) => {
                        if let Err(e) = self.own.check(b) {
                            self.report(field("source"), e);
                        }
                    }
                    (None, false, Err(why)) => self.report(
                        field("object"),
                        format!("cannot list the lab's BPF objects to check `{}`: {why}", b.object),
                    ),
                    (None, false, Ok(all)) => {
                        if !all.iter().any(|(o, _)| *o == b.object) {
                            let names: Vec<&str> = all.iter().map(|(o, _)| o.as_str()).collect();
                            self.report(
                                field("object"),
                                format!(
                                    "no BPF object `{}` (built from guest-images/bpf/*.bpf.c): {}",
                                    b.object,
                                    names.join(", ")
                                ),
                            );
                        }
                    }
                }
                let arena = b.arena_id.clone().or_else(|| b.reuse_arena.clone());
                model.objects.insert(b.id.clone(), (b.object_file(), arena));
            }
            Step::BpfRun(r) => {
                let Some((object, arena)) = model.objects.get(&r.object) else {
                    self.report(
                        field("object"),
                        format!("no earlier bpf_load step has id `{}`", r.object),
                    );
                    return;
                };
                let programs = match self.own.programs_of(object) {
                    Some((source, own)) => Some((source.replace(".bpf.c", ".bpf.o"), own)),
                    None => known_bpf()
                        .ok()
                        .and_then(|all| all.iter().find(|(o, _)| o == object))
                        .map(|(o, p)| (o.clone(), p.as_slice())),
                };
                if let Some((name, programs)) = programs {
                    if !programs.contains(&r.program) {
                        self.report(
                            field("program"),
                            format!(
                                "no syscall program `{}` in {name}: {}",
                                r.program,
                                programs.join(", ")
                            ),
                        );
                    }
                }
                if r.args.len() > 4 || r.expect_out.len() > 4 {
                    self.report(field("args"), "at most 4 args and 4 expect_out values");
                    return;
                }
                let arena = arena.clone().unwrap_or_default();
                let pages = model.arenas.get(&arena).and_then(|a| a.pages);
                if let Err((i, e)) = check_bpf_page_args(object, &r.program, &r.args, &arena, pages)
                {
                    self.report(field(&format!("args[{i}]")), format!("{}: {e}", r.program));
                }
            }
            Step::UserWalk(w) => {
                if let Some(a) = self.arena(model, &w.arena, field("arena")) {
                    if a.mapped.as_ref().is_some_and(PageSet::is_empty) {
                        self.report(field("arena"), not_mapped(&w.arena));
                    }
                }
            }
            Step::ReadPointer(r) => {
                if let Some(a) = self.arena(model, &r.arena, field("arena")) {
                    if a.mapped.as_ref().is_some_and(PageSet::is_empty) {
                        self.report(field("arena"), not_mapped(&r.arena));
                    }
                }
                if r.out > 3 {
                    self.report(field("out"), "must be 0..=3");
                }
            }
            Step::Processes(p) | Step::Threads(p) => {
                self.parallel(p, &field, model, matches!(step, Step::Threads(_)));
            }
            Step::Repeat(r) => {
                if r.times == 0 {
                    self.report(field("times"), "must be at least 1");
                }
                let scope = Scope {
                    top: false,
                    ..scope
                };
                self.looped(&r.steps, &field("steps"), model, scope, r.times);
            }
            Step::ExpectKernelLog(k) => {
                for (name, list) in [("contains", &k.contains), ("not_contains", &k.not_contains)] {
                    for (i, p) in list.iter().enumerate() {
                        if let Err(e) = regex::Regex::new(p) {
                            self.report(field(&format!("{name}[{i}]")), format!("bad regex: {e}"));
                        }
                    }
                }
            }
            Step::Selftest(t) if scope.top && !t.unsupported.is_empty() => {
                for (j, u) in t.unsupported.iter().enumerate() {
                    let name = format!("{at}.selftest.unsupported[{j}]");
                    if u.tests.is_empty() {
                        self.report(format!("{name}.tests"), "name at least one test");
                    }
                    if u.config.is_empty()
                        || !u
                            .config
                            .chars()
                            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
                    {
                        self.report(
                            format!("{name}.config"),
                            format!("{:?} is not a config option name (e.g. NR_CPUS)", u.config),
                        );
                    }
                    if u.why.trim().is_empty() {
                        self.report(format!("{name}.why"), "say why the tests cannot work");
                    }
                }
            }
            Step::Selftest(_) if !scope.top => {
                self.report(
                    format!("{at}.selftest"),
                    "selftest steps are only allowed at the top level",
                );
            }
            Step::Sysctl(c) => {
                if c.file().is_none() {
                    self.report(
                        field("path"),
                        format!("{:?} is not a path below /proc/sys", c.path),
                    );
                }
                if c.value.is_none() && c.expect.is_none() {
                    self.report(
                        field("value"),
                        "a sysctl step needs `value` (to write), `expect` (to check), or both",
                    );
                }
            }
            Step::Destroy(d) => {
                if scope.threads {
                    self.report(format!("{at}.destroy"), "not allowed inside threads: it would unmap the arena under the other threads of the process");
                }
                if self.arena(model, &d.arena, field("arena")).is_some() {
                    model.arenas.remove(&d.arena);
                }
            }
            Step::Memory(m) => self.memory(m, &field, model),
            Step::Kmemleak(k) => {
                if let Some(p) = &k.matching {
                    if k.action != KmemleakAction::Check {
                        self.report(field("matching"), "filters a `check`; a `clear` clears all");
                    } else if let Err(e) = regex::Regex::new(p) {
                        self.report(field("matching"), format!("bad regex: {e}"));
                    }
                }
            }
            Step::Sysrq(q) => {
                if !SysrqStep::KEYS.contains(&q.key) {
                    self.report(
                        field("key"),
                        format!(
                            "{:?} is not one of {:?} (reset and power-off keys would end the VM without a trace)",
                            q.key,
                            SysrqStep::KEYS
                        ),
                    );
                }
            }
            Step::Sweep(sw) => {
                let scope = Scope {
                    top: false,
                    ..scope
                };
                // The cases run one after another in one state. Problems
                // name the template's field and the case's values.
                for case in &sw.cases {
                    let before = self.problems.len();
                    self.block(&case.steps, &field("steps"), model, scope);
                    let label = case.label();
                    for (_, message) in &mut self.problems[before..] {
                        *message = format!("with {label}: {message}");
                    }
                }
            }
            Step::FailAllocs(f) => {
                if f.probability > 100 {
                    self.report(field("probability"), "a percentage: 0..=100");
                }
            }
            Step::Selftest(_) | Step::Sleep(_) | Step::Crash(_) => {}
        }
    }
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

    /// The error lines for a scenario whose steps follow a 32-page arena `a`
    /// that is mapped (the arena is on line 3, the mmap on line 4).
    fn errors(steps: &str) -> Vec<String> {
        let text = format!(
            "name: x\nsteps:\n  - arena: {{ id: a, pages: 32 }}\n  - mmap: {{ arena: a }}\n{steps}"
        );
        match p(&text) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    fn one_error(steps: &str) -> String {
        let e = errors(steps);
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    /// Issue 21: reasons named the eighth step `step 7`. They say
    /// `step 8/12 (kind, file:line)`, at every level.
    #[test]
    fn steps_are_named_one_based_with_their_count_file_and_line() {
        let text = "name: x\n\
                    steps:\n\
                    \x20 - arena: { id: a, pages: 32 }\n\
                    \x20 - mmap: { arena: a }\n\
                    \x20 - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 # a comment, so that line numbers are not step numbers\n\
                    \x20 - repeat:\n\
                    \x20     times: 2\n\
                    \x20     steps:\n\
                    \x20       - sleep: { ms: 1 }\n\
                    \x20       - touch: { arena: a, page: 0, op: read }\n\
                    \x20       - sleep: { ms: 1 }\n\
                    \x20 # three more lines\n\
                    \x20 # of comments\n\
                    \x20 # here\n\
                    \x20 - processes:\n\
                    \x20     roles:\n\
                    \x20       - name: r\n\
                    \x20         count: 1\n\
                    \x20         setup:\n\
                    \x20           - mmap: { arena: a, same_address: true }\n\
                    \x20         steps:\n\
                    \x20           - bpf_run: { object: p, program: alloc_pages, args: [0, 1] }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 - sleep: { ms: 1 }\n\
                    \x20 - sleep: { ms: 1 }\n";
        let s = parse(Path::new("dir/x.yaml"), text).unwrap();
        assert_eq!(s.steps.len(), 12);
        let l = &s.lines;
        assert_eq!(
            l.step("steps", &s.steps, 7).to_string(),
            "step 8/12 (processes, x.yaml:19)"
        );
        assert_eq!(
            l.step("steps", &s.steps, 0).to_string(),
            "step 1/12 (arena, x.yaml:3)"
        );
        let Step::Repeat(r) = &s.steps[6] else {
            panic!()
        };
        assert_eq!(
            l.step("steps[6].repeat.steps", &r.steps, 1).to_string(),
            "step 2/3 (touch, x.yaml:14)"
        );
        let Step::Processes(par) = &s.steps[7] else {
            panic!()
        };
        let role = par.role_views()[0];
        let (setup, steps) = role.list_fields("steps[7].processes");
        assert_eq!(
            l.step(&setup, role.setup, 0).to_string(),
            "step 1/1 (mmap, x.yaml:24)"
        );
        assert_eq!(
            l.step(&steps, role.steps, 0).to_string(),
            "step 1/1 (bpf_run, x.yaml:26)"
        );
        // The lab fills it; a file may not.
        let e = p(&format!("{text}lines: {{ file: y.yaml }}\n")).unwrap_err();
        assert!(e.to_string().contains("lines: is filled by the lab"), "{e}");
        // A known issue names a step as reasons do, or not at all.
        let known = |reason: &str| {
            p(&format!(
                "{text}known_issues:\n  - {{ kernel: \"6.12.*\", reason: \"{reason}\", note: n }}\n"
            ))
        };
        assert!(known("step 8/12 (processes, *): role `r`").is_ok());
        assert!(known("step 8/12 (processes").is_ok());
        assert!(known("kernel splat: BUG").is_ok());
        for stale in [
            "step 7 (processes): role `r`",
            "step 8/13 (processes, *)",
            "step 8/12 (touch, *)",
        ] {
            let e = known(stale).unwrap_err().to_string();
            assert!(
                e.contains("known_issues[0].reason: names no step of this file: reasons name one as `step N/12 (kind, file:line)`, e.g. `step 1/12 (arena, *)`"),
                "{e}"
            );
        }
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
    fn undefined_arena_points_at_the_field() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - mmap: { arena: b }\n";
        let e = p(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yaml:4:20: steps[1].mmap.arena: no earlier arena step has id `b`"
        );
    }

    #[test]
    fn conflicting_touch_expectations() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 0, op: read, expect: { zero: true, value: 3 } }\n";
        let msg = p(text).unwrap_err().to_string();
        assert!(
            msg.starts_with("s.yaml:5:51: steps[2].touch.expect"),
            "{msg}"
        );
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
        assert!(msg.starts_with("s.yaml:2:14: vm.vcpus"), "{msg}");
    }

    #[test]
    fn nested_steps_are_checked() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 1 }\n  - processes:\n      count: 2\n      steps:\n        - touch: { arena: z, page: 0, op: read }\n";
        let msg = p(text).unwrap_err().to_string();
        assert!(
            msg.contains("steps[1].processes.steps[0].touch.arena"),
            "{msg}"
        );
        assert!(msg.starts_with("s.yaml:7:27:"), "{msg}");
    }

    #[test]
    fn field_paths_are_located() {
        let text =
            "name: x\nsteps:\n  # c\n  - a: 1\n  - b:\n      - c: 2\n      - d: { e: [5, 6] }\n";
        assert_eq!(locate(text, "name"), (1, 7));
        assert_eq!(locate(text, "steps[0].a"), (4, 8));
        assert_eq!(locate(text, "steps[1].b[1].d.e[1]"), (7, 21));
        // Absent: the nearest enclosing node.
        assert_eq!(locate(text, "steps[1].b[1].d.zzz"), (7, 12));
        assert_eq!(locate(text, "steps[9].a"), (4, 3));
        assert_eq!(
            parse_field("steps[1].bpf_run.args[0]"),
            vec![
                Seg::Key("steps".into()),
                Seg::Index(1),
                Seg::Key("bpf_run".into()),
                Seg::Key("args".into()),
                Seg::Index(0),
            ]
        );
    }

    // The false PASS of issue 10: page 100 of a 32-page arena was written
    // into the agent's own memory and read back.
    #[test]
    fn touch_page_outside_the_arena_names_line_and_field() {
        let e = errors(
            "  - touch: { arena: a, page: 100, op: write }\n  - touch: { arena: a, page: 100, op: read, expect: { pattern: true } }\n",
        );
        assert_eq!(
            e,
            vec![
                "s.yaml:5:30: steps[2].touch.page: page 100 is outside arena `a` (32 pages)",
                "s.yaml:6:30: steps[3].touch.page: page 100 is outside arena `a` (32 pages)",
            ]
        );
        let e = one_error("  - touch: { arena: a, page: 32, op: read }\n");
        assert!(
            e.ends_with("steps[2].touch.page: page 32 is outside arena `a` (32 pages)"),
            "{e}"
        );
        assert!(errors("  - touch: { arena: a, page: 31, op: read }\n").is_empty());
    }

    #[test]
    fn touch_count_running_past_the_end() {
        let e = one_error("  - touch: { arena: a, page: 30, count: 4, op: write }\n");
        assert_eq!(
            e,
            "s.yaml:5:41: steps[2].touch.count: pages 30..34 run past the end of arena `a` (32 pages)"
        );
        assert!(errors("  - touch: { arena: a, page: 28, count: 4, op: write }\n").is_empty());
        // No overflow on hostile values.
        let e =
            one_error("  - touch: { arena: a, page: 1, count: 18446744073709551615, op: write }\n");
        assert!(e.contains("steps[2].touch.count"), "{e}");
    }

    #[test]
    fn touch_offset_must_fit_the_page() {
        let e = one_error("  - touch: { arena: a, page: 0, offset: 4096, op: read }\n");
        assert!(
            e.starts_with("s.yaml:5:41: steps[2].touch.offset: offset 0x1000"),
            "{e}"
        );
        let e = one_error("  - touch: { arena: a, page: 0, offset: 0xffc, op: read }\n");
        assert!(e.contains("touch.offset"), "{e}");
        assert!(errors("  - touch: { arena: a, page: 0, offset: 0xff8, op: read }\n").is_empty());
    }

    #[test]
    fn munmap_and_madvise_ranges_past_the_end() {
        let e = one_error("  - munmap: { arena: a, page: 16, pages: 17 }\n");
        assert_eq!(
            e,
            "s.yaml:5:42: steps[2].munmap.pages: pages 16..33 run past the end of arena `a` (32 pages)"
        );
        let e = one_error("  - munmap: { arena: a, page: 40, pages: 1 }\n");
        assert!(
            e.contains("steps[2].munmap.page: page 40 is outside"),
            "{e}"
        );
        let e = one_error("  - munmap: { arena: a, page: 33 }\n");
        assert!(e.contains("steps[2].munmap.page"), "{e}");
        let e = one_error("  - madvise: { arena: a, page: 31, pages: 2, advice: dontneed }\n");
        assert!(
            e.starts_with("s.yaml:5:43: steps[2].madvise.pages: pages 31..33 run past"),
            "{e}"
        );
        let e = one_error("  - madvise: { arena: a, page: 32, advice: dontneed }\n");
        assert!(
            e.contains("steps[2].madvise.page: page 32 is outside"),
            "{e}"
        );
        // Out-of-range probes of the kernel's own checks stay allowed when
        // they stay inside the arena.
        assert!(
            errors("  - munmap: { arena: a, page: 2, pages: 1, expect: { errno: EINVAL } }\n")
                .is_empty()
        );
    }

    #[test]
    fn mapping_lengths() {
        let e = one_error("  - mremap: { arena: a, pages: 64 }\n");
        assert!(e.contains("steps[2].mremap.pages: must be 1..=32"), "{e}");
        assert!(errors(
            "  - mremap: { arena: a, pages: 64, may_move: true, expect: { errno: EFAULT } }\n"
        )
        .is_empty());
        let e = one_error(
            "  - mremap: { arena: a, pages: 18446744073709551615, expect: { errno: EFAULT } }\n",
        );
        assert!(
            e.contains("mremap.pages: pages 18446744073709551615 is too large"),
            "{e}"
        );
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 8 }\n  - mmap: { arena: a, pages: 9 }\n  - mmap: { arena: a, offset_pages: 1 }\n  - mmap: { arena: a, pages: 9, offset_pages: 1, expect: { errno: EINVAL } }\n";
        let e = p(text).unwrap_err().to_string();
        let lines: Vec<_> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].starts_with(
                "s.yaml:4:30: steps[1].mmap.pages: 9 pages is longer than arena `a` (8 pages)"
            ),
            "{e}"
        );
        assert!(
            lines[1].starts_with("s.yaml:5:37: steps[2].mmap.offset_pages: must be 0"),
            "{e}"
        );
        let e = p("name: x\nsteps:\n  - arena: { id: a, pages: 0 }\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.yaml:3:28: steps[0].arena.pages: an arena has 1..=1048576 pages"),
            "{e}"
        );
    }

    #[test]
    fn pages_outside_a_shorter_mapping_need_a_signal() {
        let text = "name: x\nsteps:\n  - arena: { id: a, pages: 32 }\n  - mmap: { arena: a, pages: 16 }\n  - touch: { arena: a, page: 20, op: write }\n  - touch: { arena: a, page: 20, op: write, expect: { signal: SIGSEGV } }\n  - touch: { arena: a, page: 15, op: write }\n";
        let e = p(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "s.yaml:5:30: steps[2].touch.page: page 20 of arena `a` is not mapped in this process (mapped: pages 0..16); only a touch that expects (or accepts) a signal may access it"
        );
        // After munmap nothing is mapped; a touch without a signal is refused.
        let e = one_error("  - munmap: { arena: a }\n  - touch: { arena: a, page: 0, op: read }\n  - touch: { arena: a, page: 0, op: read, expect: { signal: SIGSEGV } }\n");
        assert!(
            e.contains("steps[3].touch.page: page 0 of arena `a` is not mapped"),
            "{e}"
        );
        let e = errors("  - munmap: { arena: a }\n  - madvise: { arena: a, advice: dontneed }\n  - munmap: { arena: a }\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("steps[3].madvise.arena: arena `a` is not mapped"),
            "{e:#?}"
        );
    }

    #[test]
    fn nested_in_processes_threads_and_repeat() {
        let e = one_error("  - processes:\n      count: 2\n      steps:\n        - mmap: { arena: a, same_address: true }\n        - touch: { arena: a, page: 100, op: write }\n");
        assert!(
            e.starts_with("s.yaml:9:36: steps[2].processes.steps[1].touch.page: page 100 is outside arena `a` (32 pages)"),
            "{e}"
        );
        let e = one_error("  - repeat:\n      times: 3\n      steps:\n        - touch: { arena: a, page: 0, count: 33, op: write }\n");
        assert!(
            e.starts_with("s.yaml:8:46: steps[2].repeat.steps[0].touch.count"),
            "{e}"
        );
        // A forked process has no mapping until it maps the arena itself.
        let e = one_error("  - processes:\n      count: 1\n      steps:\n        - touch: { arena: a, page: 0, op: read }\n");
        assert!(
            e.contains("steps[2].processes.steps[0].touch.page: page 0 of arena `a` is not mapped"),
            "{e}"
        );
        assert!(errors("  - processes:\n      count: 1\n      steps:\n        - touch: { arena: a, page: 0, op: read, expect: { signal: SIGSEGV } }\n").is_empty());
        // Threads share the mapping; they must not take it away.
        let e = errors("  - threads:\n      count: 2\n      steps:\n        - touch: { arena: a, page: 0, count: 32, op: read }\n        - munmap: { arena: a }\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("steps[2].threads.steps[1].munmap: not allowed inside threads"),
            "{e:#?}"
        );
        // What would fork beside running threads is refused before a boot.
        let e = one_error("  - threads:\n      count: 2\n      steps:\n        - touch: { arena: a, page: 0, op: read, expect: { signal: SIGSEGV } }\n");
        assert!(
            e.contains("steps[2].threads.steps[0].touch.expect: a touch that expects (or accepts) a signal runs in a forked child"),
            "{e}"
        );
        let e = one_error("  - threads:\n      count: 2\n      steps:\n        - processes: { count: 1, steps: [ { sleep: { ms: 1 } } ] }\n");
        assert!(
            e.contains("steps[2].threads.steps[0].processes: not allowed inside threads: its workers are forked"),
            "{e}"
        );
    }

    #[test]
    fn roles_are_checked_like_the_worker_list() {
        let roles = "  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - processes:\n      iterations: 5\n      roles:\n        - name: faulter\n          count: 3\n          setup:\n            - mmap: { arena: a, same_address: true }\n          steps:\n            - touch: { arena: a, page: 0, count: 8, op: read, expect: { any_of: [ { pattern: true }, { zero: true } ] } }\n          expect: { failures: 0 }\n        - name: freer\n          count: 1\n          steps:\n            - bpf_run: { object: p, program: free_pages, args: [0, 8] }\n      expect: { signals: { SIGSEGV: { at_most: 0 } } }\n";
        assert_eq!(errors(roles), Vec::<String>::new());
        // Each role starts unmapped (forked) and is checked on its own.
        let e = errors(&roles.replace("page: 0, count: 8", "page: 30, count: 8"));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains(
                "steps[3].processes.roles[0].steps[0].touch.count: pages 30..38 run past"
            ),
            "{e:#?}"
        );
        let e = errors(&roles.replace(
            "          setup:\n            - mmap: { arena: a, same_address: true }\n",
            "",
        ));
        assert!(
            e[0].contains("roles[0].steps[0].touch.page: pages 0..8 of arena `a` are not mapped"),
            "{e:#?}"
        );
        // Names unique, counts sane, one form only.
        let e = errors(&roles.replace("name: freer", "name: faulter"));
        assert!(
            e[0].contains("roles[1].name: `faulter` must be non-empty and unique"),
            "{e:#?}"
        );
        let e = errors(&roles.replace("iterations: 5", "iterations: 5\n      count: 2"));
        assert!(
            e[0].contains("processes.roles: give either `count` and `steps`"),
            "{e:#?}"
        );
        let e = errors(&roles.replace("count: 1\n", "count: 0\n"));
        assert!(e[0].contains("roles[1].count: must be 1..=256"), "{e:#?}");
        let e = errors(&roles.replace("{ at_most: 0 }", "{ at_least: 2, at_most: 1 }"));
        assert!(
            e[0].contains("processes.expect.signals.SIGSEGV: at_least is above"),
            "{e:#?}"
        );
        let e = errors("  - processes:\n      steps:\n        - sleep: { ms: 1 }\n");
        assert!(
            e[0].contains("processes.count: must be 1..=256 (or give `roles`)"),
            "{e:#?}"
        );
    }

    #[test]
    fn bpf_objects_programs_and_tags_are_known() {
        let e = one_error("  - bpf_load: { id: p, object: arena_opz.bpf.o, reuse_arena: a }\n");
        assert!(
            e.contains("steps[2].bpf_load.object: no BPF object `arena_opz.bpf.o` (built from guest-images/bpf/*.bpf.c): arena_nonsleepable.bpf.o, arena_ops.bpf.o"),
            "{e}"
        );
        let e = one_error("  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - bpf_run: { object: p, program: free_page, args: [0, 1] }\n");
        assert!(
            e.contains("steps[3].bpf_run.program: no syscall program `free_page` in arena_ops.bpf.o: alloc_pages, alloc_pages_node, bump_global, count_allocated, free_pages,"),
            "{e}"
        );
        let e = p("name: x\ntags: [race, races]\nsteps: [ {sleep: {ms: 1}} ]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.yaml:2:14: tags[1]: unknown tag \"races\": declare it in a lab.toml beside the scenarios ([tags] races = \"...\"), or use one of: smoke,"),
            "{e}"
        );
    }

    #[test]
    fn any_of_alternatives() {
        let e = one_error("  - touch: { arena: a, page: 0, op: read, expect: { any_of: [ { pattern: true, zero: true } ] } }\n");
        assert!(
            e.contains("steps[2].touch.expect.any_of: each alternative sets exactly one"),
            "{e}"
        );
        let e = one_error("  - touch: { arena: a, page: 0, op: read, expect: { zero: true, any_of: [ { pattern: true } ] } }\n");
        assert!(
            e.contains("set at most one of signal, value, zero, pattern, any_of"),
            "{e}"
        );
        let e = one_error(
            "  - touch: { arena: a, page: 0, op: write, expect: { any_of: [ { zero: true } ] } }\n",
        );
        assert!(e.contains("a write cannot expect a read value"), "{e}");
        // A write that may fault; unmapped pages only with an accepted signal.
        assert!(errors("  - munmap: { arena: a }\n  - touch: { arena: a, page: 0, op: write, expect: { any_of: [ { signal: SIGSEGV } ] } }\n").is_empty());
        let e = one_error("  - munmap: { arena: a }\n  - touch: { arena: a, page: 0, op: read, expect: { any_of: [ { zero: true } ] } }\n");
        assert!(e.contains("not mapped"), "{e}");
    }

    #[test]
    fn loops_are_checked_from_where_the_last_iteration_left() {
        // The second iteration touches and unmaps an unmapped arena.
        let e = errors("  - repeat:\n      times: 2\n      steps:\n        - touch: { arena: a, page: 0, op: read }\n        - munmap: { arena: a }\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("steps[2].repeat.steps[0].touch.page: page 0 of arena `a` is not mapped"),
            "{e:#?}"
        );
        assert!(
            e[1].contains("steps[2].repeat.steps[1].munmap.arena: arena `a` is not mapped"),
            "{e:#?}"
        );
        // Map, use, unmap per iteration is fine.
        assert!(errors("  - munmap: { arena: a }\n  - processes:\n      count: 2\n      iterations: 10\n      steps:\n        - mmap: { arena: a, same_address: true }\n        - touch: { arena: a, page: 0, count: 32, op: write }\n        - munmap: { arena: a }\n").is_empty());
    }

    #[test]
    fn bpf_run_page_arguments() {
        let e = one_error("  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - bpf_run: { object: p, program: read_page, args: [32, 0] }\n  - bpf_run: { object: p, program: alloc_pages, args: [40, 2], expect_retval: 1 }\n");
        assert_eq!(
            e,
            "s.yaml:6:54: steps[3].bpf_run.args[0]: read_page: page 32 is outside arena `a` (32 pages)"
        );
        let e = one_error("  - bpf_load: { id: p, object: arena_ops.bpf.o, reuse_arena: a }\n  - bpf_run: { object: p, program: write_pages, args: [0, 1, 7, 0x1000] }\n");
        assert!(
            e.contains("steps[3].bpf_run.args[3]: write_pages: offset 0x1000"),
            "{e}"
        );
        // A libbpf-created arena's size is only known at run time; offsets are static.
        assert!(errors("  - bpf_load: { id: q, object: arena_ops.bpf.o, arena_id: b }\n  - bpf_run: { object: q, program: read_page, args: [1000, 8] }\n  - touch: { arena: b, page: 1023, op: read }\n").is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors("  - touch: { arena: a, page: 100, op: write }\n  - touch: { arena: a, page: 0, offset: 3, op: write }\n  - munmap: { arena: b }\n");
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains("steps[2].touch.page"));
        assert!(e[1].contains("steps[3].touch.offset"));
        assert!(e[2].contains("steps[4].munmap.arena"));
    }

    #[test]
    fn every_file_is_reported() {
        let dir = std::env::temp_dir().join(format!("arena-sf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bad = "name: NAME\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 4, op: read }\n";
        std::fs::write(dir.join("a.yaml"), bad.replace("NAME", "one")).unwrap();
        std::fs::write(dir.join("b.yaml"), bad.replace("NAME", "two")).unwrap();
        std::fs::write(dir.join("c.yaml"), GOOD).unwrap();
        let e = load_paths(std::slice::from_ref(&dir))
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<_> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].ends_with(
                "a.yaml:5:30: steps[2].touch.page: page 4 is outside arena `a` (4 pages)"
            ),
            "{e}"
        );
        assert!(
            lines[1].ends_with(
                "b.yaml:5:30: steps[2].touch.page: page 4 is outside arena `a` (4 pages)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_lab_toml_declares_tags() {
        let root = std::env::temp_dir().join(format!("arena-sf-tags-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("mine");
        std::fs::create_dir_all(&dir).unwrap();
        // A repository boundary: nothing above it is read.
        std::fs::create_dir_all(root.join(".git")).unwrap();
        let mine = "name: mine\ntags: [my-patch, smoke]\nsteps: [ {sleep: {ms: 1}} ]\n";
        std::fs::write(dir.join("mine.yaml"), mine).unwrap();
        let e = load_paths(std::slice::from_ref(&dir))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("mine.yaml:2:8: tags[0]: unknown tag \"my-patch\": declare it in a lab.toml beside the scenarios ([tags] my-patch = \"...\"), or use one of: smoke, page_fault, segv_on_fault, bpf_alloc, mmap_rules, race, selftests, lab_selftest, leak"),
            "{e}"
        );
        // Declared at the repository's root: every directory below sees it.
        std::fs::write(
            root.join(lab_toml::FILE_NAME),
            "[tags]\nmy-patch = \"scenarios for my arena patch\"\n",
        )
        .unwrap();
        let all = load_paths(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(all[0].scenario.tags, ["my-patch", "smoke"]);
        assert!(load_file(&dir.join("mine.yaml")).is_ok());
        // Still unknown to `parse`, which reads no lab.toml.
        assert!(parse(Path::new("s.yaml"), mine).is_err());
        // A nearer one that does not parse is the error, once, with its path.
        std::fs::write(
            dir.join("other.yaml"),
            mine.replace("name: mine", "name: other"),
        )
        .unwrap();
        std::fs::write(dir.join(lab_toml::FILE_NAME), "[tags]\nbroken = 7\n").unwrap();
        let e = load_paths(std::slice::from_ref(&dir))
            .unwrap_err()
            .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.contains(
                "mine/lab.toml:2:10: tags.broken: invalid type: integer `7`, expected a string"
            ),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn names_and_tags_of_files_that_do_not_load() {
        assert_eq!(
            recover_name_and_tags("name: x\ntags: [a, b]\nsteps: 3\n"),
            (Some("x".into()), Some(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            recover_name_and_tags("name: x\nsteps: []\n"),
            (Some("x".into()), Some(vec![]))
        );
        // Not YAML: the top-level lines.
        assert_eq!(
            recover_name_and_tags("name: \"x\"  # mine\ntags: [a, 'b']\nsteps: [ {\n"),
            (Some("x".into()), Some(vec!["a".into(), "b".into()]))
        );
        assert_eq!(recover_name_and_tags("name: [\n"), (None, None));
        assert_eq!(recover_name_and_tags("- a\n- b\n"), (None, None));
    }

    #[test]
    fn the_catalogue_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let all = load_paths(&[root]).unwrap_or_else(|e| panic!("{e}"));
        assert!(all.len() > 20);
    }
}

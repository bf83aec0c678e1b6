//! A scenario's own BPF programs: `bpf_load: { id: p, source: x.bpf.c }`,
//! C beside the scenario file, compiled by the lab (the lab's clang and
//! flags, `arena_lab.h`, and the `vmlinux.h` of the kernel under test) and
//! put in the guest image as [`BpfLoadStep::object_file`].
//!
//! `lab validate` (any load of a scenario file) compiles each source
//! against the default kernel's BTF when that kernel is in the cache (no
//! download at validate time) and checks `bpf_run.program` against the
//! compiled object's programs; without a cached kernel it checks the path
//! only, and the run's compile (against the run's kernel, before boot) is
//! the first to see the C.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use arena_images::bpf::{self, OwnBuildError};
use arena_images::kernel::debian;
use arena_protocol::scenario::{BpfLoadStep, Step};
use arena_protocol::Scenario;

/// Sections of the programs `bpf_run` can test-run (see the agent's
/// `steps::bpf::run`): syscall programs, tc (`SCHED_CLS`) and raw_tp.
fn runnable(section: &str) -> bool {
    let kind = section.split('/').next().unwrap_or_default();
    matches!(
        kind,
        "syscall" | "tc" | "classifier" | "raw_tp" | "raw_tracepoint"
    )
}

/// Programs of a compiled BPF object as `(function, section)`: the global
/// functions outside `.text` (which holds subprograms).
pub fn programs(object: &Path) -> Result<Vec<(String, String)>, String> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind, SymbolSection};
    let data = std::fs::read(object).map_err(|e| format!("{}: {e}", object.display()))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{}: {e}", object.display()))?;
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || !sym.is_global() {
            continue;
        }
        let SymbolSection::Section(index) = sym.section() else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let section = section.name().unwrap_or_default();
        if section == ".text" || section.is_empty() {
            continue;
        }
        if let Ok(name) = sym.name() {
            out.push((name.to_owned(), section.to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// A `source` must name a file inside the scenario's folder (its copy in a
/// run folder sits at the same place beside the scenario's copy).
pub fn check_path(source: &str) -> Result<(), String> {
    let p = Path::new(source);
    if source.is_empty() {
        return Err("must name a C file beside the scenario".into());
    }
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "`{source}` must be a path relative to the scenario file, inside its folder (no `/…` or `..`)"
        ));
    }
    Ok(())
}

/// The compiler's errors in one line each (`x.bpf.c:12:5: error: …`),
/// the code excerpts and carets left out; the whole output if it names no
/// error.
pub fn compile_errors(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(": error: ") || l.contains(": fatal error: "))
        .collect();
    match errors.as_slice() {
        [] => stderr.trim().to_owned(),
        [one] => (*one).to_owned(),
        [first, rest @ ..] => format!("{first} (and {} more errors)", rest.len()),
    }
}

/// Compile `source` of the scenario in `dir` for the kernel whose ELF is
/// `vmlinux`: the object, or the message for the scenario's
/// `bpf_load.source` field.
pub fn compile(dir: &Path, source: &str, vmlinux: &Path) -> Result<PathBuf, String> {
    check_path(source)?;
    if !dir.join(source).is_file() {
        return Err(format!(
            "no file `{source}` beside the scenario (in {})",
            dir.display()
        ));
    }
    bpf::build_own(dir, source, vmlinux).map_err(|e| match e {
        OwnBuildError::Compile(stderr) => compile_errors(&stderr),
        OwnBuildError::Lab(e) => format!("cannot compile `{source}`: {e}"),
    })
}

/// The default kernel's ELF vmlinux, when that kernel is cached: what
/// validation compiles against.
fn validation_vmlinux() -> Option<PathBuf> {
    static VMLINUX: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    VMLINUX
        .get_or_init(|| debian::cached(debian::DEFAULT).and_then(|k| k.vmlinux))
        .clone()
}

/// What validation learnt of a scenario's own sources.
#[derive(Debug, Default)]
pub struct Sources {
    /// The scenario file's folder; `None`: not from a file (no source
    /// can be found).
    dir: Option<PathBuf>,
    /// [`BpfLoadStep::object_file`] → (source, its runnable programs), for
    /// the sources that compiled.
    programs: HashMap<String, (String, Vec<String>)>,
}

impl Sources {
    /// For the scenario file at `path`.
    pub fn beside(path: &Path) -> Self {
        let dir = path.parent().map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d.to_owned()
            }
        });
        Sources {
            dir,
            programs: HashMap::new(),
        }
    }

    /// Check (and, with the default kernel at hand, compile) the source of
    /// `b`: the message for its `source` field if it is wrong.
    pub fn check(&mut self, b: &BpfLoadStep) -> Result<(), String> {
        let Some(source) = &b.source else {
            return Ok(());
        };
        check_path(source)?;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if !dir.join(source).is_file() {
            return Err(format!(
                "no file `{source}` beside the scenario (in {})",
                dir.display()
            ));
        }
        let Some(vmlinux) = validation_vmlinux() else {
            return Ok(());
        };
        let object = compile(dir, source, &vmlinux)?;
        let runnable: Vec<String> = programs(&object)?
            .into_iter()
            .filter(|(_, s)| runnable(s))
            .map(|(p, _)| p)
            .collect();
        self.programs
            .insert(b.object_file(), (source.clone(), runnable));
        Ok(())
    }

    /// The source and runnable programs of an own object that compiled here.
    pub fn programs_of(&self, object_file: &str) -> Option<(&str, &[String])> {
        self.programs
            .get(object_file)
            .map(|(s, p)| (s.as_str(), p.as_slice()))
    }
}

/// The `source` of every `bpf_load` in `steps`, nested lists included, in
/// order, each once.
pub fn sources(scenario: &Scenario) -> Vec<String> {
    fn walk(steps: &[Step], out: &mut Vec<String>) {
        for s in steps {
            if let Step::BpfLoad(BpfLoadStep {
                source: Some(src), ..
            }) = s
            {
                if !out.contains(src) {
                    out.push(src.clone());
                }
            }
            for list in s.child_lists() {
                walk(list, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&scenario.steps, &mut out);
    out
}

/// Copy the sources of `scenario` (in `from`) and the headers beside them
/// to `to`, at the same relative paths: what `lab repro` compiles beside
/// the scenario's copy.
pub fn copy_sources(scenario: &Scenario, from: &Path, to: &Path) -> std::io::Result<()> {
    for src in sources(scenario) {
        let (a, b) = (from.join(&src), to.join(&src));
        if let Some(parent) = b.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&a, &b)?;
        let (Some(pa), Some(pb)) = (a.parent(), b.parent()) else {
            continue;
        };
        for e in std::fs::read_dir(pa)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "h") {
                if let Some(name) = p.file_name() {
                    std::fs::copy(&p, pb.join(name))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_beside_the_scenario() {
        assert!(check_path("x.bpf.c").is_ok());
        assert!(check_path("progs/x.bpf.c").is_ok());
        assert!(check_path("./x.bpf.c").is_ok());
        for bad in ["", "/tmp/x.bpf.c", "../x.bpf.c", "a/../x.bpf.c"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compile_errors_are_one_line_each() {
        let out = "x.bpf.c:12:5: error: use of undeclared identifier 'y'\n   12 |     y = 1;\n      |     ^\nx.bpf.c:14:1: error: expected ';'\n2 errors generated.\n";
        assert_eq!(
            compile_errors(out),
            "x.bpf.c:12:5: error: use of undeclared identifier 'y' (and 1 more errors)"
        );
        assert_eq!(compile_errors("boom\n"), "boom");
    }

    #[test]
    fn runnable_sections() {
        for s in ["syscall", "tc", "tc/ingress", "raw_tp", "raw_tp/sys_enter"] {
            assert!(runnable(s), "{s}");
        }
        for s in ["iter.s/bpf_map", "xdp", ".text", "socket"] {
            assert!(!runnable(s), "{s}");
        }
    }
}

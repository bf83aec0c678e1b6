//! Subtests known before running: `libarena` and `libarena_asan` make one
//! subtest per BPF program of their skeleton (by name prefix, as
//! `prog_tests/libarena.c` and `libarena_asan.c` pick them), so the host
//! can list them from the generated skeleton headers. A test that this
//! kernel's config rules out is then reported skipped subtest by subtest,
//! not as one line that hides how much did not run.

use std::collections::BTreeMap;
use std::path::Path;

/// (test, skeleton header below the selftests' bpf directory, rule).
const STATIC_SUBTESTS: &[(&str, &str, Rule)] = &[
    ("libarena", "libarena/libarena.skel.h", Rule::Libarena),
    ("libarena_asan", "libarena/libarena_asan.skel.h", Rule::Asan),
];

/// How a test names subtests after its programs.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `test_*` programs, and `parallel_test*__init` (the part before
    /// `__init`; its worker and `__fini` programs are not subtests).
    Libarena,
    /// `asan_test*` programs.
    Asan,
}

impl Rule {
    fn subtest(self, program: &str) -> Option<String> {
        match self {
            Rule::Libarena if program.starts_with("parallel_test") => {
                program.find("__init").map(|i| program[..i].to_owned())
            }
            Rule::Libarena => program.starts_with("test_").then(|| program.to_owned()),
            Rule::Asan => program.starts_with("asan_test").then(|| program.to_owned()),
        }
    }
}

/// Subtests by test for the skeletons present under `bpf_dir` (after a
/// build); tests whose skeleton was not built are absent.
pub fn static_subtests(bpf_dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (test, header, rule) in STATIC_SUBTESTS {
        let Ok(text) = std::fs::read_to_string(bpf_dir.join(header)) else {
            continue;
        };
        let mut subtests: Vec<String> = Vec::new();
        for program in skeleton_programs(&text) {
            if let Some(s) = rule.subtest(&program) {
                if !subtests.contains(&s) {
                    subtests.push(s);
                }
            }
        }
        out.insert((*test).to_owned(), subtests);
    }
    out
}

/// Program names of a bpftool skeleton: its `progs` struct holds one
/// `struct bpf_program *NAME;` line per program, in object order.
fn skeleton_programs(header: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in header.lines() {
        let Some(rest) = line.trim().strip_prefix("struct bpf_program *") else {
            continue;
        };
        let Some(name) = rest.strip_suffix(';') else {
            continue;
        };
        let ident = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEL: &str = "struct libarena {\n\tstruct bpf_object_skeleton *skeleton;\n\tstruct {\n\t\tstruct bpf_map *arena;\n\t} maps;\n\tstruct {\n\t\tstruct bpf_program *arena_buddy_reset;\n\t\tstruct bpf_program *test_buddy_alloc;\n\t\tstruct bpf_program *parallel_test_spmc__init;\n\t\tstruct bpf_program *parallel_test_spmc__0;\n\t\tstruct bpf_program *parallel_test_spmc__fini;\n\t\tstruct bpf_program *test_rbtree_insert;\n\t} progs;\n\tstruct {\n\t\tstruct bpf_link *test_buddy_alloc;\n\t} links;\n};\nstatic int f(struct bpf_program *prog)\n";

    #[test]
    fn libarena_subtests_follow_its_runner() {
        let names: Vec<String> = skeleton_programs(SKEL)
            .iter()
            .filter_map(|p| Rule::Libarena.subtest(p))
            .collect();
        assert_eq!(
            names,
            [
                "test_buddy_alloc",
                "parallel_test_spmc",
                "test_rbtree_insert"
            ]
        );
    }

    #[test]
    fn asan_takes_only_asan_tests_and_headers_are_read_from_the_tree() {
        assert_eq!(
            Rule::Asan.subtest("asan_test_uaf").as_deref(),
            Some("asan_test_uaf")
        );
        assert_eq!(Rule::Asan.subtest("test_buddy_alloc"), None);
        let dir = std::env::temp_dir().join(format!("subtests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("libarena")).unwrap();
        std::fs::write(dir.join("libarena/libarena.skel.h"), SKEL).unwrap();
        let found = static_subtests(&dir);
        assert_eq!(found.len(), 1, "no asan skeleton, no entry: {found:?}");
        assert_eq!(found["libarena"].len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

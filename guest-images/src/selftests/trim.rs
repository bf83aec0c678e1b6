//! Trimming a copied `tools/testing/selftests/bpf` to the arena tests:
//! `prog_tests/arena_*.c`, `progs/arena_*.c`, `progs/verifier_arena*.c`,
//! the arena part of `prog_tests/verifier.c` and the programs they use.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::NotBuilt;
use crate::{io_err, ImageError, Result};

/// BPF program always kept: `resolve_btfids` reads it when linking test_progs.
const BTF_DATA: &str = "btf_data.c";

/// Whether a test or BPF program name (file stem) is an arena one:
/// `arena_*` or `verifier_arena*`.
pub fn is_arena(stem: &str) -> bool {
    stem.starts_with("arena_") || stem.starts_with("verifier_arena")
}

/// Whether a file of `prog_tests/` is kept: headers, arena tests, and
/// `verifier.c` (which is then reduced by [`reduce_verifier`]).
pub fn keep_test_file(name: &str, libarena: bool) -> bool {
    match name.strip_suffix(".c") {
        Some(stem) => stem == "verifier" || is_arena(stem) || (libarena && is_libarena(stem)),
        None => true,
    }
}

/// 7.2's tests of libarena, the BPF arena allocator library
/// (`libarena/`): built when the selftests' clang is LLVM 22 or newer.
pub fn is_libarena(stem: &str) -> bool {
    matches!(stem, "libarena" | "libarena_asan")
}

/// The oldest LLVM that builds libarena and its sanitizer variant.
pub const LIBARENA_LLVM: u32 = 22;

/// Kinds of skeleton header a test includes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SkeletonRefs {
    /// `<name>.skel.h` (and `.subskel.h`).
    pub skel: BTreeSet<String>,
    /// `<name>.lskel.h` (light skeletons).
    pub lskel: BTreeSet<String>,
}

/// Skeleton headers a C file includes, by BPF program name.
pub fn skeleton_refs(text: &str) -> SkeletonRefs {
    let mut refs = SkeletonRefs::default();
    for header in quoted_includes(text) {
        if let Some(n) = header.strip_suffix(".lskel.h") {
            refs.lskel.insert(n.to_owned());
        } else if let Some(n) = header.strip_suffix(".subskel.h") {
            refs.skel.insert(n.to_owned());
        } else if let Some(n) = header.strip_suffix(".skel.h") {
            refs.skel.insert(n.to_owned());
        }
    }
    refs
}

/// The `#include "..."` names of a C file.
fn quoted_includes(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let rest = l.trim_start().strip_prefix('#')?.trim_start();
        let rest = rest
            .strip_prefix("include")?
            .trim_start()
            .strip_prefix('"')?;
        rest.split_once('"').map(|(name, _)| name)
    })
}

/// Names of the tests a `prog_tests` file defines (`void test_<name>(void)`
/// and `void serial_test_<name>(void)`), as the Makefile's tests.h sees them.
pub fn test_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("void ")?;
            let rest = rest.strip_prefix("serial_").unwrap_or(rest);
            let (name, after) = rest.strip_prefix("test_")?.split_once('(')?;
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let args_ok = after.starts_with(')') || after.starts_with("void)");
            (ok && args_ok).then(|| name.to_owned())
        })
        .collect()
}

/// `"<name>.bpf.o"` string literals: objects a test opens from its cwd.
pub fn bpf_object_refs(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.ends_with(".bpf.o")
                && !s.contains('/')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        })
        .map(str::to_owned)
        .collect()
}

/// Reduce `prog_tests/verifier.c` to its arena tests: drop the other
/// skeleton includes, the other `test_*` functions and any top-level item
/// using a dropped skeleton; silence warnings about helpers left unused.
pub fn reduce_verifier(text: &str) -> String {
    let mut dropped: Vec<String> = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        let header = quoted_includes(line).next();
        match header.and_then(|h| h.strip_suffix(".skel.h")) {
            Some(stem) if !is_arena(stem) => dropped.push(format!("{stem}__")),
            _ => lines.push(line),
        }
    }
    let mut out = String::new();
    for item in top_level_items(&lines) {
        let joined = item.join("\n");
        let foreign_test = test_names(&joined).iter().any(|t| !is_arena(t));
        let uses_dropped =
            joined.contains('{') && dropped.iter().any(|d| joined.contains(d.as_str()));
        if foreign_test || uses_dropped {
            continue;
        }
        out.push_str(&joined);
        out.push('\n');
    }
    // Helpers only the dropped tests used would fail -Werror=unused-function.
    let pragma = "#pragma GCC diagnostic ignored \"-Wunused-function\"\n";
    match out.find("#include") {
        Some(at) => out.insert_str(at, pragma),
        None => out.insert_str(0, pragma),
    }
    out
}

/// Split C source lines into top-level items: a blank line, a comment, a
/// preprocessor directive (with its `\\` continuations), or a declaration or
/// definition running until its braces close (or its `;` at depth 0). Braces
/// in comments, strings and characters are ignored.
fn top_level_items<'a>(lines: &[&'a str]) -> Vec<Vec<&'a str>> {
    #[derive(Clone, Copy)]
    enum Kind {
        Code,
        Comment,
        Directive,
    }
    let mut items = Vec::new();
    let mut current: Vec<&'a str> = Vec::new();
    let mut kind = Kind::Code;
    let mut depth = 0i32;
    let mut in_comment = false;
    for &line in lines {
        let trimmed = line.trim();
        if current.is_empty() {
            if trimmed.is_empty() {
                items.push(vec![line]);
                continue;
            }
            kind = if trimmed.starts_with('#') {
                Kind::Directive
            } else if trimmed.starts_with("//") || trimmed.starts_with("/*") {
                Kind::Comment
            } else {
                Kind::Code
            };
        }
        current.push(line);
        let done = match kind {
            Kind::Directive => !trimmed.ends_with('\\'),
            Kind::Comment => {
                scan_line(line, &mut in_comment);
                !in_comment
            }
            Kind::Code => {
                let (delta, ends_statement) = scan_line(line, &mut in_comment);
                let opened = depth > 0 || delta != 0 || line.contains('{');
                depth += delta;
                depth <= 0
                    && !in_comment
                    && ((opened && trimmed.ends_with('}'))
                        || trimmed.ends_with("};")
                        || ends_statement)
            }
        };
        if done {
            depth = 0;
            items.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

/// Brace balance of a line, outside comments and literals, and whether it
/// ends with `;` (outside comments); tracks `/* */` across lines.
fn scan_line(line: &str, in_comment: &mut bool) -> (i32, bool) {
    let b = line.as_bytes();
    let mut delta = 0;
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        if *in_comment {
            if b[i..].starts_with(b"*/") {
                *in_comment = false;
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            *in_comment = true;
            i += 1;
        } else if b[i..].starts_with(b"//") {
            break;
        } else if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            i += 1;
            while i < b.len() && b[i] != quote {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            last = Some(quote);
        } else {
            match b[i] {
                b'{' => delta += 1,
                b'}' => delta -= 1,
                _ => {}
            }
            if !b[i].is_ascii_whitespace() {
                last = Some(b[i]);
            }
        }
        i += 1;
    }
    (delta, last == Some(b';'))
}

/// What trimming kept, for the make command line and the record.
#[derive(Debug, Default)]
pub(super) struct Trimmed {
    /// Test names compiled in.
    pub tests: Vec<String>,
    /// Light skeletons only (`LSKELS`).
    pub lskels: Vec<String>,
    /// Light skeletons of programs that also have a full one (`LSKELS_EXTRA`).
    pub lskels_extra: Vec<String>,
    /// Objects the tests open from their cwd.
    pub runtime_objects: BTreeSet<String>,
    /// Arena tests left out, with why.
    pub not_built: Vec<NotBuilt>,
}

/// Why an arena-related `prog_tests` file outside the kept patterns is not
/// built (7.2's libarena tests), or `None` if it is not arena-related.
pub fn not_built_reason(stem: &str, clang: &str) -> Option<String> {
    if !stem.contains("arena") || is_arena(stem) {
        return None;
    }
    Some(match stem {
        "libarena" => format!(
            "needs libarena (libarena/src/*.bpf.c, linked into test_progs as \
             libarena.skel.h), which needs LLVM {LIBARENA_LLVM}+ (clang-19 crashes on \
             libarena/src/buddy.bpf.c); the selftests' clang is {clang}: install \
             clang-{LIBARENA_LLVM} or set ARENA_LAB_SELFTESTS_CLANG"
        ),
        "libarena_asan" => format!(
            "needs libarena built with the BPF arena address sanitizer \
             (-fsanitize=kernel-address for BPF), which needs LLVM {LIBARENA_LLVM}+; the \
             selftests' clang is {clang}"
        ),
        _ => "an arena test outside the arena_*/verifier_arena* files the lab builds".into(),
    })
}

/// Which programs of `progs/` to keep, given its file names, the programs the
/// kept tests reference and a reader for the `progs/` sources (for
/// `#include "other.c"`).
pub fn select_progs(
    files: &[String],
    referenced: &BTreeSet<String>,
    read: &dyn Fn(&str) -> String,
) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = files
        .iter()
        .filter(|f| match f.strip_suffix(".c") {
            Some(stem) => is_arena(stem) || f.as_str() == BTF_DATA || referenced.contains(stem),
            None => true,
        })
        .cloned()
        .collect();
    let mut todo: Vec<String> = keep.iter().filter(|f| f.ends_with(".c")).cloned().collect();
    while let Some(f) = todo.pop() {
        for inc in quoted_includes(&read(&f)) {
            if inc.ends_with(".c") && files.iter().any(|x| x == inc) && keep.insert(inc.to_owned())
            {
                todo.push(inc.to_owned());
            }
        }
    }
    keep
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Trim the copied selftests directory `bpf` to the arena tests, in place.
/// `clang` names the compiler in reasons; `libarena`: it can build
/// libarena, whose tests are then kept.
pub(super) fn trim(bpf: &Path, clang: &str, libarena: bool) -> Result<Trimmed> {
    let tests_dir = bpf.join("prog_tests");
    let progs_dir = bpf.join("progs");
    let read = |p: &Path| fs::read_to_string(p).map_err(io_err(p));
    let mut trimmed = Trimmed::default();
    let mut refs = SkeletonRefs::default();
    for name in file_names(&tests_dir)? {
        let path = tests_dir.join(&name);
        if !keep_test_file(&name, libarena) {
            let stem = name.strip_suffix(".c");
            if let Some(reason) = stem.and_then(|s| not_built_reason(s, clang)) {
                for test in test_names(&read(&path)?) {
                    trimmed.not_built.push(NotBuilt {
                        test,
                        reason: reason.clone(),
                    });
                }
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if !name.ends_with(".c") {
            continue;
        }
        let mut text = read(&path)?;
        if name == "verifier.c" {
            let reduced = reduce_verifier(&text);
            let mut wanted = test_names(&text);
            wanted.retain(|t| is_arena(t));
            if test_names(&reduced) != wanted {
                return Err(ImageError::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("could not reduce to its arena tests {wanted:?}"),
                    ),
                });
            }
            text = reduced;
            fs::write(&path, &text).map_err(io_err(&path))?;
        }
        trimmed.tests.extend(test_names(&text));
        trimmed.runtime_objects.extend(bpf_object_refs(&text));
        let r = skeleton_refs(&text);
        refs.skel.extend(r.skel);
        refs.lskel.extend(r.lskel);
    }
    trimmed.tests.sort();
    for name in &refs.lskel {
        let list = if refs.skel.contains(name) {
            &mut trimmed.lskels_extra
        } else {
            &mut trimmed.lskels
        };
        list.push(format!("{name}.c"));
    }

    let files = file_names(&progs_dir)?;
    let referenced: BTreeSet<String> = refs.skel.union(&refs.lskel).cloned().collect();
    let read_prog = |name: &str| fs::read_to_string(progs_dir.join(name)).unwrap_or_default();
    let keep = select_progs(&files, &referenced, &read_prog);
    for name in files.iter().filter(|f| !keep.contains(*f)) {
        let path = progs_dir.join(name);
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER_C: &str = r#"// SPDX-License-Identifier: GPL-2.0-only

#include <test_progs.h>

#include "cap_helpers.h"
#include "verifier_and.skel.h"
#include "verifier_arena.skel.h"
#include "verifier_arena_large.skel.h"
#include "verifier_array_access.skel.h"

#define MAX_ENTRIES 11

struct test_val {
	unsigned int index;
	int foo[MAX_ENTRIES];
};

__maybe_unused
static void run_tests_aux(const char *skel_name,
			  skel_elf_bytes_fn elf_bytes_factory,
			  pre_execution_cb pre_execution_cb)
{
	struct test_loader tester = {};
	/* braces in a comment: { */
	test_loader__run_subtests(&tester, skel_name, elf_bytes_factory);
}

#define RUN(skel) run_tests_aux(#skel, skel##__elf_bytes, NULL)
#define TWO(a) \\
	do { RUN(a); } while (0)

/* A comment
 * before a test: { */
void test_verifier_and(void)                  { RUN(verifier_and); }
void test_verifier_arena(void)                { RUN(verifier_arena); }
void test_verifier_arena_large(void)          { RUN(verifier_arena_large); }

void test_verifier_mtu(void)
{
	int ret = 0;
	if (ret)
		printf("}");
	RUN(verifier_mtu);
}

static int init_test_val_map(struct bpf_object *obj, char *map_name)
{
	return 0;
}

static int init_array_access_maps(struct bpf_object *obj)
{
	return init_test_val_map(obj, "map_array_ro");
}

void test_verifier_array_access(void)
{
	run_tests_aux("verifier_array_access",
		      verifier_array_access__elf_bytes,
		      init_array_access_maps);
}
"#;

    #[test]
    fn arena_names_by_pattern() {
        for yes in [
            "arena_htab",
            "arena_atomics",
            "verifier_arena",
            "verifier_arena_large",
            "arena_spin_lock",
        ] {
            assert!(is_arena(yes), "{yes}");
        }
        for no in [
            "verifier_and",
            "htab_arena",
            "arena",
            "verifier",
            "btf_data",
        ] {
            assert!(!is_arena(no), "{no}");
        }
        assert!(keep_test_file("arena_list.c", false));
        assert!(keep_test_file("verifier.c", false));
        assert!(keep_test_file("lwt_helpers.h", false));
        assert!(!keep_test_file("atomics.c", true));
        assert!(!keep_test_file("verifier_log.c", true));
        // libarena's tests only with an LLVM that builds libarena.
        assert!(!keep_test_file("libarena.c", false));
        assert!(keep_test_file("libarena.c", true));
        assert!(keep_test_file("libarena_asan.c", true));
    }

    #[test]
    fn left_out_arena_tests_have_reasons() {
        let why = not_built_reason("libarena", "clang-19").unwrap();
        assert!(
            why.contains("LLVM 22+") && why.contains("is clang-19"),
            "{why}"
        );
        assert!(not_built_reason("libarena_asan", "clang-19")
            .unwrap()
            .contains("LLVM 22"));
        assert!(not_built_reason("htab_arena", "clang-22").is_some());
        assert!(not_built_reason("arena_list", "clang-22").is_none());
        assert!(not_built_reason("atomics", "clang-22").is_none());
    }

    #[test]
    fn verifier_reduced_to_arena_tests() {
        let out = reduce_verifier(VERIFIER_C);
        assert_eq!(test_names(&out), ["verifier_arena", "verifier_arena_large"]);
        assert!(out.contains("#include \"verifier_arena.skel.h\""));
        assert!(out.contains("#include \"verifier_arena_large.skel.h\""));
        assert!(out.contains("#include \"cap_helpers.h\""));
        assert!(!out.contains("verifier_and"));
        assert!(!out.contains("verifier_array_access"));
        assert!(!out.contains("verifier_mtu"));
        assert!(out.contains("static void run_tests_aux("));
        assert!(out.contains("struct test_val {"));
        assert!(out.contains("#define RUN(skel)"));
        assert!(
            out.contains("\tdo { RUN(a); } while (0)\n\n/* A comment"),
            "{out}"
        );
        // init_test_val_map is kept (it uses no skeleton) and may go unused.
        assert!(out.contains("#pragma GCC diagnostic ignored \"-Wunused-function\""));
        assert!(out.find("#pragma").unwrap() < out.find("#include").unwrap());
        let refs = skeleton_refs(&out);
        assert_eq!(
            refs.skel.into_iter().collect::<Vec<_>>(),
            ["verifier_arena", "verifier_arena_large"]
        );
    }

    #[test]
    fn test_names_like_the_makefile() {
        let text = "void test_arena_htab(void)\n{\n}\nvoid serial_test_arena_x(void) {}\n\
                    static void test_arena_helper(int x)\nvoid test_bad(int a)\nvoid test_ok()\n";
        assert_eq!(test_names(text), ["arena_htab", "arena_x", "ok"]);
    }

    #[test]
    fn skeletons_and_objects_referenced() {
        let text = "#include <test_progs.h>\n#include \"arena_list.skel.h\"\n\
                    # include \"atomics.lskel.h\"\n#include \"foo.subskel.h\"\n\
                    obj = bpf_object__open_file(\"arena_extra.bpf.o\", NULL);\n\
                    x = \"../bad/path.bpf.o\"; y = \"%s.bpf.o\";\n";
        let refs = skeleton_refs(text);
        assert_eq!(
            refs.skel.into_iter().collect::<Vec<_>>(),
            ["arena_list", "foo"]
        );
        assert_eq!(refs.lskel.into_iter().collect::<Vec<_>>(), ["atomics"]);
        assert_eq!(
            bpf_object_refs(text).into_iter().collect::<Vec<_>>(),
            ["arena_extra.bpf.o"]
        );
    }

    #[test]
    fn progs_selected_by_pattern_references_and_includes() {
        let files: Vec<String> = [
            "arena_htab.c",
            "arena_htab_asm.c",
            "atomics.c",
            "bpf_misc.h",
            "btf_data.c",
            "helper_prog.c",
            "verifier_and.c",
            "verifier_arena.c",
            "included.c",
        ]
        .map(String::from)
        .to_vec();
        let referenced = BTreeSet::from(["helper_prog".to_owned()]);
        let read = |name: &str| match name {
            "arena_htab_asm.c" => "#include \"arena_htab.c\"\n".to_owned(),
            "helper_prog.c" => "#include \"included.c\"\n#include \"missing.c\"\n".to_owned(),
            _ => String::new(),
        };
        let keep = select_progs(&files, &referenced, &read);
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            [
                "arena_htab.c",
                "arena_htab_asm.c",
                "bpf_misc.h",
                "btf_data.c",
                "helper_prog.c",
                "included.c",
                "verifier_arena.c"
            ]
        );
    }
}

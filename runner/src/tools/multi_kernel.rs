//! `lab run --kernel A --kernel B …`: the same scenarios on each kernel in
//! turn, one results root per kernel (`RESULTS/<label>/<run-id>`), then each
//! later kernel's run compared with the first one's (`compare.json` and
//! `compare.md` in the later run's folder), and `RESULTS/kernels.json`
//! naming which root holds which kernel.
//!
//! The runs are ordinary `lab run`s (the argv minus the other kernels), so
//! every guarantee of one run holds for each. The exit status is the worst
//! of theirs; kernels differing is reported, not an error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{exit, tools::compare, LabError};

/// Options that name one kernel's own files: ambiguous with several.
const PER_KERNEL_FILES: &[&str] = &["--vmlinux", "--modules", "--kernel-src", "--kernel-tree"];

/// `--kernel` values of a `lab run` argv (program name first), in order.
pub fn kernels_of_run(argv: &[OsString]) -> Vec<String> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("run") {
        return Vec::new();
    }
    options(argv, "--kernel")
}

/// Values of option `name` (`--name V` or `--name=V`) before any `--`.
fn options(argv: &[OsString], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.iter().skip(2).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == name {
            out.extend(it.next().map(|v| v.into_owned()));
        } else if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            out.push(v.to_owned());
        }
    }
    out
}

/// `argv` without option `name` and its value.
fn without(argv: &[OsString], name: &str) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    let mut past_dashes = false;
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if !past_dashes && s == name {
            it.next();
            continue;
        }
        if !past_dashes && s.starts_with(&format!("{name}=")) {
            continue;
        }
        past_dashes |= s == "--";
        out.push(a.clone());
    }
    out
}

/// A folder name for a kernel argument: `debian:7.2` → `debian-7.2`, a path
/// → its characters that are safe in a file name; unique among `taken`.
fn label(kernel: &str, taken: &[String]) -> String {
    let safe: String = kernel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let safe = safe.trim_matches('-');
    let tail: String = safe
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let base = if tail.is_empty() {
        "kernel".to_owned()
    } else {
        tail
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// One kernel's part of `kernels.json`.
#[derive(Debug, Serialize)]
struct KernelRun {
    /// `--kernel` as given.
    kernel: String,
    /// Its results root, below `--results`.
    results: PathBuf,
    /// Its `lab run`'s exit status, or `None` when it was not run (an
    /// earlier run was interrupted).
    exit: Option<u8>,
}

/// Worse of two exit statuses: infrastructure, interrupted, invalid input,
/// failed, passed.
fn worse(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        exit::PASS => 0,
        exit::FAIL => 1,
        exit::INVALID => 2,
        exit::INTERRUPTED => 3,
        _ => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Run `argv` (a `lab run` with several `--kernel`) once per kernel.
pub fn run_each(argv: &[OsString], kernels: &[String]) -> Result<u8, LabError> {
    for opt in PER_KERNEL_FILES {
        if !options(argv, opt).is_empty() {
            return Err(LabError::BadArgs(format!(
                "{opt} names one kernel's files; with several --kernel, give each as debian:SERIES or a bzImage in its build tree"
            )));
        }
    }
    let root = options(argv, "--results")
        .pop()
        .map_or_else(|| PathBuf::from("results"), PathBuf::from);
    let base = without(&without(argv, "--kernel"), "--results");
    let mut labels: Vec<String> = Vec::new();
    let mut runs = Vec::new();
    let mut status = exit::PASS;
    for kernel in kernels {
        let name = label(kernel, &labels);
        labels.push(name.clone());
        let results = root.join(&name);
        if status == exit::INTERRUPTED {
            eprintln!("lab: kernel {kernel}: not run (interrupted)");
            runs.push(KernelRun {
                kernel: kernel.clone(),
                results,
                exit: None,
            });
            continue;
        }
        eprintln!("lab: kernel {kernel}: results in {}", results.display());
        let mut one = base.clone();
        one.extend([
            "--kernel".into(),
            kernel.into(),
            "--results".into(),
            results.clone().into(),
        ]);
        let args = crate::run::parse_args(one).map_err(|e| LabError::BadArgs(e.to_string()))?;
        let code = match crate::run::run(args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lab: kernel {kernel}: error: {e}");
                e.code()
            }
        };
        status = worse(status, code);
        runs.push(KernelRun {
            kernel: kernel.clone(),
            results,
            exit: Some(code),
        });
    }
    write_index(&root, &runs)?;
    compare_with_first(&runs);
    Ok(status)
}

fn write_index(root: &Path, runs: &[KernelRun]) -> Result<(), LabError> {
    std::fs::create_dir_all(root).map_err(crate::infra)?;
    let json =
        serde_json::to_vec_pretty(&serde_json::json!({ "kernels": runs })).expect("serialisable");
    arena_images::write_atomic(&root.join("kernels.json"), &json).map_err(crate::infra)
}

/// Each later kernel's latest run against the first kernel's, printed and
/// written into the later run's folder; a run that left no folder is said.
fn compare_with_first(runs: &[KernelRun]) {
    let Some((first, rest)) = runs.split_first() else {
        return;
    };
    let base = first.results.join("latest");
    for run in rest {
        let new = run.results.join("latest");
        if !base.exists() || !new.exists() {
            eprintln!(
                "lab: no comparison of {} with {}: a run left no results",
                run.kernel, first.kernel
            );
            continue;
        }
        let pair = [base.clone(), new.clone()];
        let req = compare::Request {
            runs: &pair,
            history: None,
            out: None,
            threshold: "50%",
            nights: None,
        };
        match compare::compare(&req) {
            Ok((c, dir)) => {
                println!("## {} against {}\n", run.kernel, first.kernel);
                print!("{}", compare::markdown(&c));
                eprintln!("lab: compare.json and compare.md in {}", dir.display());
            }
            Err(e) => eprintln!("lab: comparing {} with {}: {e}", run.kernel, first.kernel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn kernels_are_read_from_run_only_and_before_dashes() {
        let a = argv("lab run --kernel debian:6.12 -j 2 --kernel=debian:7.2 x.yaml");
        assert_eq!(kernels_of_run(&a), ["debian:6.12", "debian:7.2"]);
        assert!(kernels_of_run(&argv("lab boot --kernel a")).is_empty());
        assert_eq!(
            kernels_of_run(&argv("lab run --kernel a -- --kernel b")),
            ["a"]
        );
    }

    #[test]
    fn each_run_gets_its_own_kernel_and_results() {
        let a = argv("lab run --results out --kernel a --kernel=b -j 2 s");
        let rest = without(&without(&a, "--kernel"), "--results");
        assert_eq!(rest, argv("lab run -j 2 s"));
    }

    #[test]
    fn labels_are_safe_and_unique() {
        assert_eq!(label("debian:7.2", &[]), "debian-7.2");
        let taken = vec!["build-arch-x86-boot-bzImage".to_owned()];
        assert_eq!(label("/build/arch/x86/boot/bzImage", &[]), taken[0]);
        assert_eq!(
            label("/build/arch/x86/boot/bzImage", &taken),
            "build-arch-x86-boot-bzImage-2"
        );
        assert_eq!(label("///", &[]), "kernel");
        assert!(label(&"x/".repeat(100), &[]).len() <= 60);
    }

    #[test]
    fn the_worst_status_wins() {
        assert_eq!(worse(exit::PASS, exit::FAIL), exit::FAIL);
        assert_eq!(worse(exit::INFRA, exit::FAIL), exit::INFRA);
        assert_eq!(worse(exit::FAIL, exit::INTERRUPTED), exit::INTERRUPTED);
        assert_eq!(worse(exit::PASS, exit::PASS), exit::PASS);
    }
}

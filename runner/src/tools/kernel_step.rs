//! One step of a kernel loop, shared by `lab bisect` and `lab mutate`:
//! build a tree with `lab kernel build`'s options, run scenarios on the
//! result with `lab run`'s, and read which scenarios did not pass.

use crate::judge::verdict::Verdict;
use crate::record::results::Summary;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::tools::kernel_cmd::{Base, BuildArgs};

/// `lab kernel build TREE --out OUT --base BASE [-j JOBS] [--debug]`'s options.
pub fn build_args(
    tree: &Path,
    out: &Path,
    base: Base,
    jobs: Option<usize>,
    debug: bool,
) -> BuildArgs {
    BuildArgs {
        tree: tree.to_owned(),
        debug,
        jobs,
        out: Some(out.to_owned()),
        base,
    }
}

/// The argv of `lab run` on the kernel built in `build_dir`, results under
/// `results`, with `extra` options before the scenario `paths`. Known
/// issues are not applied: a step hunts exactly such failures.
pub fn run_argv(
    build_dir: &Path,
    results: &Path,
    extra: &[OsString],
    paths: &[PathBuf],
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "lab".into(),
        "run".into(),
        "--no-known-issues".into(),
        "--kernel-tree".into(),
        build_dir.into(),
        "--results".into(),
        results.into(),
    ];
    argv.extend(extra.iter().cloned());
    argv.extend(paths.iter().map(|p| p.clone().into_os_string()));
    argv
}

/// A scenario of a run that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPassed {
    /// Scenario name.
    pub name: String,
    /// Its verdict (`fail`, `error`, `timeout`, `skipped`, `not_run`, ...).
    pub verdict: Verdict,
    /// The first line of its reason.
    pub reason: String,
    /// The lab, not the kernel, could not carry it out.
    pub infra: bool,
}

/// The scenarios of `summary.json` that did not pass, in plan order;
/// `None` when it cannot be read.
pub fn not_passed(summary: &Path) -> Option<Vec<NotPassed>> {
    let summary = Summary::read(summary).ok()?;
    Some(
        summary
            .scenarios
            .iter()
            .filter(|s| s.judgement.verdict != Verdict::Pass)
            .map(|s| NotPassed {
                name: s.name.clone(),
                verdict: s.judgement.verdict,
                reason: s.judgement.reason.lines().next().unwrap_or("").to_owned(),
                infra: s.judgement.infra,
            })
            .collect(),
    )
}

/// `name: verdict: reason`, a line each.
pub fn reasons(list: &[NotPassed]) -> String {
    list.iter()
        .map(|s| format!("{}: {}: {}", s.name, s.verdict, s.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_passed_lists_what_did_not_pass() {
        let dir = std::env::temp_dir().join(format!("arena-kernel-step-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("summary.json");
        std::fs::write(
            &f,
            r#"{"scenarios":[{"name":"a","verdict":"pass","reason":""},
                {"name":"b","verdict":"fail","reason":"kernel splat: BUG: x\nmore"},
                {"name":"c","verdict":"error","reason":"no hello","infra":true}]}"#,
        )
        .unwrap();
        let got = not_passed(&f).unwrap();
        assert_eq!(
            reasons(&got),
            "b: fail: kernel splat: BUG: x\nc: error: no hello"
        );
        assert!(!got[0].infra && got[1].infra);
        assert_eq!(not_passed(&dir.join("absent.json")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

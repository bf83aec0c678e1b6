//! A run in KernelCI's KCIDB I/O schema (kcidb-io, major version 5), for
//! `lab kcidb`: one checkout (the kernel's source), one build (the kernel
//! that booted), one test per scenario entry and one per selftest subtest.
//!
//! Test paths are `arena.<suite>.<scenario>[.<test>[.<subtest>]]`: the
//! family is the scenario's suite (the directory of its file, as in JUnit's
//! `arena-lab.<suite>`), which every scenario has (tags are optional and
//! many). Path segments keep `[A-Za-z0-9_-]`, anything else becomes `_`;
//! a selftest's `test/subtest` is two segments.
//!
//! Ids are `<origin>:<hash>`, the hash (sha256, 32 hex digits) taken over
//! what the object is, never over when it ran: the kernel's sha256 for the
//! checkout and build; for a test also the catalogue's digest, the scenario
//! name, its attempt number and the subtest. Submitting the same night again
//! (the same kernel and catalogue) updates its objects instead of adding
//! copies; a new kernel or an edited catalogue gives new ones.

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use arena_images::kernel::{Kernel, KernelOrigin};
use arena_protocol::StepStatus;

use crate::judge::verdict::{TestcaseRecord, Verdict};
use crate::record::results::{ScenarioSummary, Summary};
use crate::record::shards::hex;

/// The KCIDB I/O schema version written: kcidb-io's `LATEST` when this was
/// written (v5.3); a v5 reader accepts any v5.x up to its own minor.
pub const MAJOR: u32 = 5;
/// See [`MAJOR`].
pub const MINOR: u32 = 3;

/// kcidb-io's `maxLength` of every `log_excerpt` (characters).
pub const LOG_EXCERPT_MAX: usize = 16384;

/// The default `--origin`.
pub const DEFAULT_ORIGIN: &str = "arena_lab";

/// Top of every test path.
pub const PATH_ROOT: &str = "arena";

/// Whether `origin` is a KCIDB origin (`[a-z0-9_]+`).
pub fn valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What the kernel's source tree says about itself, when the run's kernel
/// came from one (`--kernel TREE/arch/x86/boot/bzImage`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GitInfo {
    /// `git rev-parse HEAD` (40 hex digits).
    pub commit: String,
    /// `git describe --tags --always`.
    pub describe: Option<String>,
    /// The current branch.
    pub branch: Option<String>,
    /// `remote.origin.url`, when it is an `https://` URL.
    pub url: Option<String>,
    /// The tree had uncommitted changes when `lab kcidb` looked.
    pub dirty: bool,
}

/// Where the run comes from, besides its summary.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The KCIDB origin (`[a-z0-9_]+`).
    pub origin: String,
    /// The catalogue's digest (summary `catalogue`, or one computed from the
    /// run's scenario copies for older runs).
    pub catalogue: String,
    /// The kernel tree's git state, when known.
    pub git: Option<GitInfo>,
    /// Where the run folder is published (`https://…/<run-id>`): test
    /// `log_url`s point at `<it>/<dir>/console.log`.
    pub log_url_base: Option<String>,
}

/// Why a run cannot be written as KCIDB data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KcidbError {
    /// The origin breaks KCIDB's pattern.
    #[error("--origin {0:?}: a KCIDB origin is lower-case letters, digits and `_`")]
    Origin(String),
    /// The run stopped before its kernel was known: nothing to hang tests on.
    #[error(
        "the run recorded no kernel (it stopped before resolving one): KCIDB tests need a build"
    )]
    NoKernel,
}

/// Sanitise one test path segment.
fn segment(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "_".to_owned()
    } else {
        out
    }
}

/// The test path of a scenario entry, or of one of its selftest results.
pub fn test_path(s: &ScenarioSummary, subtest: Option<&str>) -> String {
    let mut parts = vec![PATH_ROOT.to_owned(), segment(&s.suite), segment(&s.name)];
    if let Some(sub) = subtest {
        parts.extend(sub.split('/').map(segment));
    }
    parts.join(".")
}

/// `<origin>:<32 hex digits of sha256 over parts>`.
fn id(origin: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{origin}:{}", &hex(&h.finalize())[..32])
}

/// KCIDB's status of a verdict.
pub fn status(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail | Verdict::KnownFail => "FAIL",
        Verdict::Error | Verdict::Timeout => "ERROR",
        Verdict::Skipped => "SKIP",
        Verdict::NotRun => "MISS",
    }
}

fn step_status(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pass => "PASS",
        StepStatus::Fail => "FAIL",
        StepStatus::Error | StepStatus::Timeout => "ERROR",
        StepStatus::Skip => "SKIP",
    }
}

/// Text KCIDB accepts (no NUL), at most `max` characters: `head` first,
/// then as much of the end of `tail` as fits.
fn excerpt(head: &str, tail: &str, max: usize) -> String {
    let clean = |s: &str| s.replace('\0', "");
    let head: String = clean(head).chars().take(max).collect();
    let room = max - head.chars().count();
    let tail = clean(tail);
    let n = tail.chars().count();
    let tail: String = tail.chars().skip(n.saturating_sub(room)).collect();
    head + &tail
}

/// A scenario's `log_excerpt`: the failure title (its reason), the first
/// splats' text, then the console's last lines, cut to
/// [`LOG_EXCERPT_MAX`] from the front of the console part.
fn scenario_excerpt(s: &ScenarioSummary) -> Option<String> {
    let j = &s.judgement;
    if j.verdict == Verdict::Pass {
        return None;
    }
    let mut head = j.reason.clone();
    if let Some(k) = &j.known_issue {
        head.push_str(&format!("\nknown kernel bug: {k}"));
    }
    for splat in &j.splats {
        if let Some(text) = splat.decoded.as_ref().or(splat.text.as_ref()) {
            head.push_str(&format!(
                "\n\nkernel splat at console.log:{}:\n{text}",
                splat.line
            ));
        }
    }
    let tail = match &j.console_tail {
        Some(t) => format!("\n\nconsole.log, last {} lines:\n{t}\n", t.lines().count()),
        None => String::new(),
    };
    let text = excerpt(&head, &tail, LOG_EXCERPT_MAX);
    (!text.is_empty()).then_some(text)
}

#[derive(Serialize)]
struct Environment {
    comment: String,
    misc: Value,
}

#[derive(Serialize)]
struct Test {
    id: String,
    build_id: String,
    origin: String,
    path: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_excerpt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    environment: Environment,
    misc: Value,
}

/// The checkout of `kernel`: Debian's package version as the name of the
/// commit of Debian's kernel packaging (`debian/<version>`, as DEP-14
/// names its tags), a user tree's commit when known.
fn checkout(kernel: &Kernel, summary: &Summary, src: &Source) -> Value {
    let mut c = json!({
        "id": id(&src.origin, &["checkout", &kernel.sha256]),
        "origin": src.origin,
        "start_time": summary.started,
        "valid": true,
        "comment": kernel.version,
    });
    let mut misc = json!({
        "kernel_release": kernel.release,
        "kernel_version": kernel.version,
        "kernel_sha256": kernel.sha256,
    });
    match &kernel.origin {
        KernelOrigin::Debian {
            package,
            version,
            suite,
            ..
        } => {
            c["tree_name"] = json!("debian");
            // Debian's kernel packaging tags its releases DEP-14 style.
            c["git_commit_name"] = json!(format!(
                "debian/{}",
                version.replace(':', "%").replace('~', "_")
            ));
            misc["debian_package"] = json!(package);
            misc["debian_version"] = json!(version);
            if let Some(s) = suite {
                misc["debian_suite"] = json!(s);
            }
        }
        KernelOrigin::User { path } => {
            misc["kernel_file"] = json!(path);
            if let Some(g) = &src.git {
                c["git_commit_hash"] = json!(g.commit);
                if let Some(d) = &g.describe {
                    c["git_commit_name"] = json!(d);
                }
                if let Some(b) = &g.branch {
                    c["git_repository_branch"] = json!(b);
                }
                if let Some(u) = &g.url {
                    c["git_repository_url"] = json!(u);
                }
                misc["tree_dirty"] = json!(g.dirty);
            }
        }
    }
    c["misc"] = misc;
    c
}

fn build(kernel: &Kernel, summary: &Summary, src: &Source) -> Value {
    let mut b = json!({
        "id": id(&src.origin, &["build", &kernel.sha256]),
        "checkout_id": id(&src.origin, &["checkout", &kernel.sha256]),
        "origin": src.origin,
        "start_time": summary.started,
        "architecture": "x86_64",
        "comment": kernel.version,
        // It booted (or was identified and handed to the VMM): the build
        // is the kernel file, which exists.
        "status": "PASS",
        "misc": {
            "kernel_release": kernel.release,
            "kernel_sha256": kernel.sha256,
        },
    });
    if let KernelOrigin::Debian { package, .. } = &kernel.origin {
        b["config_name"] = json!("debian");
        b["misc"]["debian_package"] = json!(package);
    }
    b
}

/// The whole run as KCIDB I/O data (`{"version": …, "checkouts": …,
/// "builds": …, "tests": …}`).
pub fn report(summary: &Summary, src: &Source) -> Result<Value, KcidbError> {
    if !valid_origin(&src.origin) {
        return Err(KcidbError::Origin(src.origin.clone()));
    }
    let kernel = summary.kernel.as_ref().ok_or(KcidbError::NoKernel)?;
    let build_id = id(&src.origin, &["build", &kernel.sha256]);
    let environment = |s: &ScenarioSummary| Environment {
        comment: format!(
            "arena lab VM: {} ({}), {} vCPU(s), {} MiB",
            summary.backend.as_deref().unwrap_or("unknown backend"),
            summary.accelerator.as_deref().unwrap_or("?"),
            s.vm.vcpus,
            s.vm.memory_mib
        ),
        misc: json!({
            "backend": summary.backend,
            "accelerator": summary.accelerator,
            "vcpus": s.vm.vcpus,
            "memory_mib": s.vm.memory_mib,
        }),
    };
    let log_url = |s: &ScenarioSummary| {
        src.log_url_base
            .as_ref()
            .map(|b| format!("{}/{}/console.log", b.trim_end_matches('/'), s.dir))
    };
    let mut tests = Vec::new();
    for s in &summary.scenarios {
        let j = &s.judgement;
        let attempt = s.attempt.to_string();
        let test_id = |sub: &str| {
            id(
                &src.origin,
                &[
                    "test",
                    &summary.run_id,
                    &kernel.sha256,
                    &src.catalogue,
                    &s.name,
                    &attempt,
                    sub,
                ],
            )
        };
        let mut misc = json!({
            "lab_verdict": j.verdict.as_str(),
            "run_id": summary.run_id,
            "attempt": s.attempt,
            "seed": s.seed,
            "run_seed": s.run_seed,
            "file": s.file,
            "dir": s.dir,
        });
        if !j.reason.is_empty() {
            misc["reason"] = json!(j.reason.replace('\0', ""));
        }
        if j.verdict == Verdict::KnownFail {
            // FAIL to KCIDB; the lab knows it as a documented kernel bug.
            misc["known_fail"] = json!(true);
            misc["known_issue"] = json!(j.known_issue);
        }
        if j.infra {
            misc["infrastructure"] = json!(true);
        }
        if let Some(r) = &s.reproduce {
            misc["reproduce"] = json!(r);
        }
        if !s.tags.is_empty() {
            misc["tags"] = json!(s.tags);
        }
        tests.push(Test {
            id: test_id(""),
            build_id: build_id.clone(),
            origin: src.origin.clone(),
            path: test_path(s, None),
            status: status(j.verdict),
            duration: j.verdict.ran().then_some(s.duration_s),
            comment: Some(format!("scenario {} ({})", s.name, s.file.display())),
            log_excerpt: scenario_excerpt(s),
            log_url: if j.verdict.ran() { log_url(s) } else { None },
            start_time: None,
            environment: environment(s),
            misc,
        });
        for t in &j.testcases {
            tests.push(subtest(
                s,
                t,
                test_id(&t.name),
                &build_id,
                src,
                environment(s),
            ));
        }
    }
    let checkouts = vec![checkout(kernel, summary, src)];
    let builds = vec![build(kernel, summary, src)];
    Ok(json!({
        "version": {"major": MAJOR, "minor": MINOR},
        "checkouts": checkouts,
        "builds": builds,
        "tests": tests,
    }))
}

fn subtest(
    s: &ScenarioSummary,
    t: &TestcaseRecord,
    id: String,
    build_id: &str,
    src: &Source,
    environment: Environment,
) -> Test {
    let log = (t.status != StepStatus::Pass && !t.log.is_empty())
        .then(|| excerpt(&t.log, "", LOG_EXCERPT_MAX));
    Test {
        id,
        build_id: build_id.to_owned(),
        origin: src.origin.clone(),
        path: test_path(s, Some(&t.name)),
        status: step_status(t.status),
        duration: Some(t.duration_s),
        comment: Some(format!("selftest {} in scenario {}", t.name, s.name)),
        log_excerpt: log,
        log_url: None,
        start_time: None,
        environment,
        misc: json!({
            "scenario": s.name,
            "subtest": t.name,
            "attempt": s.attempt,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::verdict::Judgement;
    use std::path::Path;

    fn kernel() -> Kernel {
        Kernel {
            origin: KernelOrigin::Debian {
                package: "linux-image-6.12.57+deb13-cloud-amd64".into(),
                version: "6.12.57-1".into(),
                other_packages: Vec::new(),
                suite: None,
            },
            boot_image: "/k/vmlinux".into(),
            elf_without_pvh: false,
            bzimage: None,
            vmlinux: None,
            modules: None,
            release: "6.12.57+deb13-cloud-amd64".into(),
            version: "Linux version 6.12.57".into(),
            sha256: "ab".repeat(32),
        }
    }

    fn run(verdicts: &[(&str, Verdict)]) -> Summary {
        let entries = verdicts
            .iter()
            .map(|(n, v)| {
                let mut s =
                    ScenarioSummary::pending(n, Path::new("scenarios/smoke/x.yaml"), &[], 7);
                s.judgement = Judgement::not_run("x");
                s.judgement.verdict = *v;
                s
            })
            .collect();
        let mut s = Summary::new("r", 7, entries);
        s.kernel = Some(kernel());
        s
    }

    fn src(cat: &str) -> Source {
        Source {
            origin: "arena_lab".into(),
            catalogue: cat.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_come_from_content_and_are_unique() {
        let s = run(&[("a", Verdict::Pass), ("b", Verdict::Fail)]);
        let one = report(&s, &src("c1")).unwrap();
        let two = report(&s.clone(), &src("c1")).unwrap();
        let mut next_night = s.clone();
        next_night.run_id = "other".into();
        next_night.started = "2030-01-01T00:00:00Z".into();
        let next = report(&next_night, &src("c1")).unwrap();
        let ids = |v: &Value| -> Vec<String> {
            v["tests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&one), ids(&two), "same night again: same ids");
        assert_ne!(
            ids(&one)[0],
            ids(&next)[0],
            "the next night on the same kernel is a new test, not an update"
        );
        assert_eq!(
            one["builds"][0]["id"], next["builds"][0]["id"],
            "same build"
        );
        assert_ne!(ids(&one)[0], ids(&one)[1]);
        assert!(ids(&one)[0].starts_with("arena_lab:"));
        assert_ne!(
            ids(&one),
            ids(&report(&s, &src("c2")).unwrap()),
            "new catalogue"
        );
        assert_eq!(one["tests"][0]["path"], "arena.smoke.a");
        assert_eq!(one["tests"][1]["status"], "FAIL");
    }

    #[test]
    fn statuses_paths_and_excerpts() {
        assert_eq!(status(Verdict::KnownFail), "FAIL");
        assert_eq!(status(Verdict::Timeout), "ERROR");
        assert_eq!(status(Verdict::NotRun), "MISS");
        assert_eq!(status(Verdict::Skipped), "SKIP");
        let s = ScenarioSummary::pending("x y", Path::new("a/b.c/x.yaml"), &[], 1);
        assert_eq!(
            test_path(&s, Some("arena_htab/llvm v2")),
            "arena.b_c.x_y.arena_htab.llvm_v2"
        );
        let e = excerpt("title\0", &"x".repeat(LOG_EXCERPT_MAX * 2), LOG_EXCERPT_MAX);
        assert_eq!(e.chars().count(), LOG_EXCERPT_MAX);
        assert!(e.starts_with("title") && !e.contains('\0'));
        assert!(!valid_origin("Arena") && !valid_origin("") && valid_origin("arena_lab2"));
        assert_eq!(
            report(&run(&[]), &src("c")).map(|_| ()),
            Ok(()),
            "an empty run is still a checkout and a build"
        );
        let mut none = run(&[]);
        none.kernel = None;
        assert_eq!(report(&none, &src("c")).unwrap_err(), KcidbError::NoKernel);
    }
}

//! The results folder of a run:
//!
//! ```text
//! <results>/<run-id>/summary.json   machine-readable, rewritten atomically after each scenario
//! <results>/<run-id>/junit.xml      one testcase per scenario (+ one per selftest subtest)
//! <results>/<run-id>/<scenario>/console.log, events.jsonl, vmm.log
//! <results>/latest -> <run-id>
//! ```
//! `summary.json` carries `"complete": false` until the last scenario is
//! judged, so a killed runner never leaves a summary that claims more.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use arena_images::kernel::Kernel;
use arena_images::write_atomic;
use arena_protocol::{Hello, StepStatus};

use crate::verdict::{Judgement, Verdict};

/// One scenario's entry in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    /// Scenario name (also its folder).
    pub name: String,
    /// Source file.
    pub file: PathBuf,
    /// Tags.
    pub tags: Vec<String>,
    /// Seed the scenario ran with.
    pub seed: u64,
    /// Verdict and details.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// VM start → agent hello (s).
    pub boot_s: Option<f64>,
    /// VM start → VM end (s).
    pub duration_s: f64,
    /// How the VM process ended.
    pub vm_exit: String,
    /// The agent's hello.
    pub guest: Option<Hello>,
    /// Set when the first boot died before the agent's hello and the VM was
    /// booted again: how the first attempt ended (its logs: `attempt1-*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_after: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id (folder name).
    pub run_id: String,
    /// Start time (UTC, RFC 3339).
    pub started: String,
    /// False until every scenario has been judged.
    pub complete: bool,
    /// Kernel that ran.
    pub kernel: Kernel,
    /// Backend name.
    pub backend: String,
    /// Accelerator.
    pub accelerator: String,
    /// Why this backend/accelerator.
    pub backend_reason: String,
    /// The run's seed.
    pub seed: u64,
    /// Scenarios planned.
    pub planned: usize,
    /// Counts by verdict.
    pub passed: usize,
    /// Failed scenarios.
    pub failed: usize,
    /// Errored scenarios.
    pub errors: usize,
    /// Timed-out scenarios.
    pub timeouts: usize,
    /// Wall time so far (s).
    pub wall_s: f64,
    /// Judged scenarios.
    pub scenarios: Vec<ScenarioSummary>,
}

impl Summary {
    /// Recount the verdicts.
    pub fn recount(&mut self) {
        let count = |v| {
            self.scenarios
                .iter()
                .filter(|s| s.judgement.verdict == v)
                .count()
        };
        self.passed = count(Verdict::Pass);
        self.failed = count(Verdict::Fail);
        self.errors = count(Verdict::Error);
        self.timeouts = count(Verdict::Timeout);
    }
}

/// A run's folder.
pub struct RunDir {
    /// `<results>/<run-id>`.
    pub path: PathBuf,
    /// The id.
    pub id: String,
}

/// UTC civil time from a Unix timestamp: (year, month, day, h, m, s).
pub fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

impl RunDir {
    /// Create `<root>/<id>` and point `<root>/latest` at it.
    pub fn create(root: &Path) -> std::io::Result<RunDir> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, mo, d, h, mi, s) = civil(secs);
        let base = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
        std::fs::create_dir_all(root)?;
        let mut n = 0;
        let (id, path) = loop {
            let id = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let path = root.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => break (id, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        };
        let tmp = root.join(format!(".latest-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&id, &tmp)?;
        std::fs::rename(&tmp, root.join("latest"))?;
        Ok(RunDir { path, id })
    }

    /// A scenario's folder, created.
    pub fn scenario_dir(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Write summary.json and junit.xml atomically.
    pub fn write(&self, summary: &Summary) -> arena_images::Result<()> {
        let json = serde_json::to_vec_pretty(summary).expect("serialisable");
        write_atomic(&self.path.join("junit.xml"), junit(summary).as_bytes())?;
        write_atomic(&self.path.join("summary.json"), &json)
    }
}

/// Escape text for XML, dropping characters XML 1.0 cannot carry.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

fn testcase(
    out: &mut String,
    class: &str,
    name: &str,
    time: f64,
    failure: Option<(&str, &str)>,
    skipped: bool,
) {
    out.push_str(&format!(
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
        xml_escape(class),
        xml_escape(name)
    ));
    match (failure, skipped) {
        (Some((kind, text)), _) => {
            let first = text.lines().next().unwrap_or("");
            out.push_str(&format!(
                ">\n      <failure type=\"{kind}\" message=\"{}\">{}</failure>\n    </testcase>\n",
                xml_escape(first),
                xml_escape(text)
            ));
        }
        (None, true) => out.push_str(">\n      <skipped/>\n    </testcase>\n"),
        (None, false) => out.push_str("/>\n"),
    }
}

/// JUnit XML: one testcase per scenario, plus one per selftest result.
pub fn junit(summary: &Summary) -> String {
    let mut cases = String::new();
    let (mut tests, mut failures, mut skipped) = (0, 0, 0);
    for s in &summary.scenarios {
        let j = &s.judgement;
        let class = format!(
            "arena.{}",
            s.tags.first().map(String::as_str).unwrap_or("scenario")
        );
        let failure = (j.verdict != Verdict::Pass).then(|| {
            let kind = match j.verdict {
                Verdict::Timeout => "timeout",
                Verdict::Error => "error",
                _ => "failure",
            };
            (kind, j.reason.as_str())
        });
        tests += 1;
        failures += usize::from(failure.is_some());
        testcase(&mut cases, &class, &s.name, s.duration_s, failure, false);
        for t in &j.testcases {
            tests += 1;
            let failed = matches!(
                t.status,
                StepStatus::Fail | StepStatus::Error | StepStatus::Timeout
            );
            failures += usize::from(failed);
            let skip = t.status == StepStatus::Skip;
            skipped += usize::from(skip);
            let text = if t.log.is_empty() {
                "failed (no log)"
            } else {
                t.log.as_str()
            };
            testcase(
                &mut cases,
                &format!("selftests.{}", s.name),
                &t.name,
                0.0,
                failed.then_some(("failure", text)),
                skip,
            );
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"arena-lab\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">\n  <testsuite name=\"arena-lab.{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" timestamp=\"{}\">\n{cases}  </testsuite>\n</testsuites>\n",
        summary.wall_s,
        xml_escape(&summary.run_id),
        summary.started,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::TestcaseRecord;
    use arena_images::kernel::KernelOrigin;

    fn summary(verdicts: &[(Verdict, &str)]) -> Summary {
        let scenarios = verdicts
            .iter()
            .enumerate()
            .map(|(i, (v, reason))| ScenarioSummary {
                name: format!("s{i}"),
                file: PathBuf::from("x.yaml"),
                tags: vec!["smoke".into()],
                seed: 1,
                judgement: Judgement {
                    verdict: *v,
                    reason: reason.to_string(),
                    infra: false,
                    steps: vec![],
                    testcases: vec![],
                    splats: vec![],
                },
                boot_s: Some(1.0),
                duration_s: 2.0,
                vm_exit: String::new(),
                guest: None,
                retried_after: None,
            })
            .collect();
        let mut s = Summary {
            run_id: "r".into(),
            started: now_rfc3339(),
            complete: true,
            kernel: Kernel {
                origin: KernelOrigin::User { path: "/k".into() },
                boot_image: "/k".into(),
                bzimage: None,
                vmlinux: None,
                modules: None,
                release: "6.12".into(),
                version: "Linux version 6.12".into(),
                sha256: "0".into(),
            },
            backend: "qemu".into(),
            accelerator: "tcg".into(),
            backend_reason: String::new(),
            seed: 1,
            planned: verdicts.len(),
            passed: 0,
            failed: 0,
            errors: 0,
            timeouts: 0,
            wall_s: 1.0,
            scenarios,
        };
        s.recount();
        s
    }

    #[test]
    fn junit_counts_and_escapes_failures() {
        let s = summary(&[
            (Verdict::Pass, ""),
            (Verdict::Fail, "expected <0x1> & got \"0x2\"\nmore"),
        ]);
        let x = junit(&s);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("<testcase classname=\"arena.smoke\" name=\"s0\" time=\"2.000\"/>"));
        assert!(
            x.contains("message=\"expected &lt;0x1&gt; &amp; got &quot;0x2&quot;\""),
            "{x}"
        );
        assert_eq!(s.failed, 1);
        assert_eq!(s.passed, 1);
    }

    #[test]
    fn selftest_results_become_testcases_with_their_log() {
        let mut s = summary(&[(Verdict::Fail, "1 failed")]);
        s.scenarios[0].judgement.testcases = vec![
            TestcaseRecord {
                name: "arena_list/arena_list_1".into(),
                status: StepStatus::Pass,
                log: String::new(),
            },
            TestcaseRecord {
                name: "arena_htab/arena_htab_llvm".into(),
                status: StepStatus::Fail,
                log: "test_arena_htab:FAIL:x".into(),
            },
        ];
        let x = junit(&s);
        assert!(x.contains("tests=\"3\" failures=\"2\""), "{x}");
        assert!(x.contains("name=\"arena_htab/arena_htab_llvm\""));
        assert!(x.contains(">test_arena_htab:FAIL:x</failure>"));
    }

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(xml_escape("a\u{1}b\u{1b}[0mc\n"), "ab[0mc\n");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_000_000), (2026, 11, 18, 11, 6, 40));
    }

    #[test]
    fn run_dir_and_latest_link() {
        let root = std::env::temp_dir().join(format!("arena-results-{}", std::process::id()));
        let a = RunDir::create(&root).unwrap();
        let b = RunDir::create(&root).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(
            std::fs::read_link(root.join("latest")).unwrap(),
            PathBuf::from(&b.id)
        );
        b.write(&summary(&[(Verdict::Pass, "")])).unwrap();
        let text = std::fs::read_to_string(b.path.join("summary.json")).unwrap();
        assert!(text.contains("\"complete\": true"));
        std::fs::remove_dir_all(root).unwrap();
    }
}

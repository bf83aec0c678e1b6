//! `results.ktap`: the run in KTAP version 1, the format kselftest and KUnit
//! print, so kernel CI tooling that already parses those (kernelci, LAVA,
//! `kunit.py parse`) can read a lab run as it is.
//!
//! One test line per scenario; a scenario with selftest results carries
//! them as a nested, indented subtest block before its own line. A scenario
//! that did not run is `ok ... # SKIP`, so, as in junit.xml, an incomplete
//! run gets one more test, `lab-run-aborted` / `lab-run-incomplete`, that
//! is `not ok`: a consumer counting failures still sees the run red.

use arena_protocol::StepStatus;

use crate::judge::verdict::Verdict;
use crate::record::results::Summary;

/// A KTAP description or directive reason: one line, without `#` (which
/// would start a directive) and control characters.
fn clean(s: &str) -> String {
    let first = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let out: String = first
        .chars()
        .map(|c| if c == '#' || c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    out.trim().to_owned()
}

/// `ok N name` / `not ok N name # FAIL reason` / `ok N name # SKIP reason`.
fn result_line(indent: &str, n: usize, name: &str, ok: bool, directive: Option<String>) -> String {
    let status = if ok { "ok" } else { "not ok" };
    match directive {
        Some(d) => format!("{indent}{status} {n} {} # {d}\n", clean(name)),
        None => format!("{indent}{status} {n} {}\n", clean(name)),
    }
}

fn with_reason(word: &str, reason: &str) -> String {
    let r = clean(reason);
    if r.is_empty() {
        word.to_owned()
    } else {
        format!("{word} {r}")
    }
}

/// The whole run as KTAP v1.
pub fn ktap(summary: &Summary) -> String {
    let incomplete = !summary.complete;
    let total = summary.scenarios.len() + usize::from(incomplete);
    let mut out = format!(
        "KTAP version 1\n# arena-lab run {} seed {}\n1..{total}\n",
        clean(&summary.run_id),
        summary.seed
    );
    for (k, s) in summary.scenarios.iter().enumerate() {
        let j = &s.judgement;
        if !j.testcases.is_empty() {
            out.push_str(&format!(
                "    KTAP version 1\n    # Subtest: {}\n    1..{}\n",
                clean(&s.name),
                j.testcases.len()
            ));
            for (t, c) in j.testcases.iter().enumerate() {
                let (ok, directive) = match c.status {
                    StepStatus::Pass => (true, None),
                    StepStatus::Skip => (true, Some("SKIP".to_owned())),
                    StepStatus::Fail => (false, Some(with_reason("FAIL", &c.log))),
                    StepStatus::Error => (false, Some(with_reason("FAIL error:", &c.log))),
                    StepStatus::Timeout => (false, Some(with_reason("FAIL timeout:", &c.log))),
                };
                out.push_str(&result_line("    ", t + 1, &c.name, ok, directive));
            }
        }
        let (ok, directive) = match j.verdict {
            Verdict::Pass => (true, None),
            Verdict::Fail => (false, Some(with_reason("FAIL", &j.reason))),
            // kselftest's expected failure: `ok N name # XFAIL reason`.
            Verdict::KnownFail => (true, Some(with_reason("XFAIL", &j.reason))),
            Verdict::Error => (false, Some(with_reason("FAIL error:", &j.reason))),
            Verdict::Timeout => (false, Some(with_reason("FAIL timeout:", &j.reason))),
            Verdict::NotRun => (true, Some(with_reason("SKIP not run:", &j.reason))),
            Verdict::Skipped => (true, Some(with_reason("SKIP", &j.reason))),
        };
        out.push_str(&result_line("", k + 1, &s.name, ok, directive));
    }
    if incomplete {
        let (name, reason) = match &summary.aborted {
            Some(a) => ("lab-run-aborted", a.reason.clone()),
            None => (
                "lab-run-incomplete",
                format!(
                    "{} of {} scenario(s) not run",
                    summary.not_run, summary.planned
                ),
            ),
        };
        out.push_str(&result_line(
            "",
            total,
            name,
            false,
            Some(with_reason("FAIL", &reason)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::verdict::{Judgement, TestcaseRecord};
    use crate::record::results::ScenarioSummary;
    use std::path::Path;

    fn sc(name: &str, verdict: Verdict, reason: &str) -> ScenarioSummary {
        let mut s = ScenarioSummary::pending(name, Path::new("scenarios/x/a.yaml"), &[], 1);
        s.judgement = Judgement::not_run(reason);
        s.judgement.verdict = verdict;
        s
    }

    /// A minimal KTAP v1 reader: checks version lines, plans, numbering and
    /// nesting, and returns the top-level (number, ok, name, directive).
    fn parse(text: &str) -> Vec<(usize, bool, String, Option<String>)> {
        let lines: Vec<&str> = text.lines().collect();
        let mut top = Vec::new();
        // (indent, plan, next expected number)
        let mut stack: Vec<(usize, usize, usize)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let indent = line.len() - line.trim_start().len();
            let body = line.trim_start();
            assert_eq!(indent % 4, 0, "line {i}: {line}");
            if body == "KTAP version 1" {
                assert!(stack.last().is_none_or(|s| s.0 < indent), "line {i}");
                stack.push((indent, usize::MAX, 1));
                continue;
            }
            if body.starts_with('#') {
                continue;
            }
            if let Some(plan) = body.strip_prefix("1..") {
                let top = stack.last_mut().expect("plan after version");
                assert_eq!(top.0, indent, "line {i}");
                top.1 = plan.parse().expect("plan count");
                continue;
            }
            let (ok, rest) = if let Some(r) = body.strip_prefix("not ok ") {
                (false, r)
            } else if let Some(r) = body.strip_prefix("ok ") {
                (true, r)
            } else {
                panic!("line {i}: not KTAP: {line}");
            };
            // A result line at a lower indent closes the nested block.
            while stack.last().is_some_and(|s| s.0 > indent) {
                let (_, plan, next) = stack.pop().unwrap();
                assert_eq!(plan, next - 1, "subtest plan vs results");
            }
            let cur = stack.last_mut().expect("result inside a block");
            assert_eq!(cur.0, indent, "line {i}");
            let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let num: usize = num.parse().expect("test number");
            assert_eq!(num, cur.2, "line {i}: numbering");
            cur.2 += 1;
            let (name, directive) = match rest.split_once(" # ") {
                Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                None => (rest.to_owned(), None),
            };
            if indent == 0 {
                top.push((num, ok, name, directive));
            }
        }
        assert_eq!(stack.len(), 1, "unclosed subtest");
        assert_eq!(stack[0].1, stack[0].2 - 1, "top-level plan vs results");
        top
    }

    #[test]
    fn ktap_structure_with_nested_selftests() {
        let mut st = sc("selftests-arena", Verdict::Fail, "1 of 2 failed");
        for (name, status) in [
            ("arena_htab/arena_htab_llvm", StepStatus::Pass),
            ("arena_list/arena_list_1", StepStatus::Fail),
            ("arena_atomics/x", StepStatus::Skip),
        ] {
            st.judgement.testcases.push(TestcaseRecord {
                name: name.into(),
                status,
                log: "line one # with hash\nline two".into(),
                duration_s: 0.1,
            });
        }
        let mut sum = Summary::new(
            "20260101-000000",
            7,
            vec![
                sc("ok-one", Verdict::Pass, ""),
                st,
                sc("slow", Verdict::Timeout, "scenario timeout 3 s\nmore"),
            ],
        );
        sum.finish(1.0);
        let text = ktap(&sum);
        assert!(text.starts_with("KTAP version 1\n"), "{text}");
        let top = parse(&text);
        assert_eq!(top.len(), 3);
        assert_eq!(top[0], (1, true, "ok-one".into(), None));
        assert!(!top[1].1);
        assert_eq!(top[1].3.as_deref(), Some("FAIL 1 of 2 failed"));
        assert_eq!(
            top[2].3.as_deref(),
            Some("FAIL timeout: scenario timeout 3 s")
        );
        assert!(text.contains("    # Subtest: selftests-arena\n    1..3\n"));
        assert!(text.contains("    not ok 2 arena_list/arena_list_1 # FAIL line one   with hash\n"));
        assert!(text.contains("    ok 3 arena_atomics/x # SKIP\n"));
    }

    #[test]
    fn incomplete_run_is_never_all_ok() {
        let mut sum = Summary::new(
            "r",
            1,
            vec![
                sc("a", Verdict::Pass, ""),
                sc("b", Verdict::NotRun, "interrupted"),
            ],
        );
        sum.abort("interrupted (SIGINT) after 1/2 scenario(s)", None);
        sum.finish(1.0);
        let top = parse(&ktap(&sum));
        assert_eq!(top.len(), 3);
        assert!(top[1].1);
        assert!(top[1].3.as_deref().unwrap().starts_with("SKIP not run:"));
        assert_eq!(top[2].2, "lab-run-aborted");
        assert!(!top[2].1);
    }
}

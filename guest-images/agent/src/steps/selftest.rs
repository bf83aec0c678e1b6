//! `selftest:` run the upstream `test_progs` from the image and turn every
//! `#N/M test/subtest:OK|FAIL|SKIP` line into its own result. `test_progs`
//! prints a failing test's log before its result line, so the lines since the
//! previous result are that test's log. The "All error logs:" recap at the
//! end repeats earlier results and is not parsed again.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arena_protocol::paths::{BOOT_DIR, NOT_BUILT, SELFTESTS_DIR, SUBTESTS, TEST_PROGS};
use arena_protocol::scenario::SelftestStep;
use arena_protocol::{GuestMessage, StepStatus};

use super::{Outcome, StepError, StepResult};
use crate::channel::Channel;

/// Log lines kept per test (the tail).
const MAX_LOG_LINES: usize = 200;
/// Bytes of raw `test_progs` output sent to the host (`test_progs.log`).
const MAX_OUTPUT_BYTES: usize = 2 << 20;

/// One parsed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// `test` or `test/subtest`.
    pub name: String,
    /// Outcome.
    pub status: StepStatus,
    /// Lines printed for it.
    pub log: String,
}

/// Incremental parser of `test_progs` console output.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<String>,
    in_recap: bool,
    /// Test numbers that had subtests (their aggregate line is not a testcase).
    with_subtests: Vec<u32>,
    /// Test numbers with a failing subtest (their aggregate FAIL is explained).
    with_failed_subtests: Vec<u32>,
    /// The last lines seen, for crash reports.
    pub tail: Vec<String>,
}

/// Split `#12/3    name/sub:OK` into (12, Some(3), "name/sub", status).
fn parse_result_line(line: &str) -> Option<(u32, Option<u32>, String, StepStatus)> {
    let rest = line.strip_prefix('#')?;
    let (num, rest) = rest.split_once(|c: char| c.is_whitespace())?;
    let (test, sub) = match num.split_once('/') {
        Some((t, s)) => (t.parse().ok()?, Some(s.parse().ok()?)),
        None => (num.parse().ok()?, None),
    };
    let rest = rest.trim();
    let (name, status) = rest.rsplit_once(':')?;
    let status = match status.trim() {
        "OK" => StepStatus::Pass,
        "FAIL" => StepStatus::Fail,
        "SKIP" => StepStatus::Skip,
        _ => return None,
    };
    Some((test, sub, name.trim().to_owned(), status))
}

impl Parser {
    /// Feed one output line; returns a result when the line completes one.
    pub fn line(&mut self, line: &str) -> Option<TestResult> {
        self.tail.push(line.to_owned());
        if self.tail.len() > 20 {
            self.tail.remove(0);
        }
        if self.in_recap {
            return None;
        }
        if line.starts_with("All error logs:") {
            self.in_recap = true;
            return None;
        }
        let Some((test, sub, name, status)) = parse_result_line(line) else {
            self.pending.push(line.to_owned());
            if self.pending.len() > MAX_LOG_LINES {
                self.pending.remove(0);
            }
            return None;
        };
        let log = std::mem::take(&mut self.pending).join("\n");
        if sub.is_some() {
            if !self.with_subtests.contains(&test) {
                self.with_subtests.push(test);
            }
            if status == StepStatus::Fail && !self.with_failed_subtests.contains(&test) {
                self.with_failed_subtests.push(test);
            }
        } else if self.with_subtests.contains(&test)
            && (status != StepStatus::Fail || self.with_failed_subtests.contains(&test))
        {
            // The aggregate line of a test whose subtests were reported.
            return None;
        } else if self.with_subtests.contains(&test) {
            // An aggregate FAIL with no failing subtest of its own (setup failed).
            return Some(TestResult {
                name: format!("{name}/(setup)"),
                status,
                log,
            });
        }
        Some(TestResult { name, status, log })
    }
}

/// The kernel's `.config` as libbpf finds it for `__kconfig` (the image's
/// `/boot/config-$(uname -r)`); empty when there is none.
fn kernel_config() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    std::fs::read_to_string(format!("{BOOT_DIR}/config-{}", release.trim())).unwrap_or_default()
}

/// The top-level tests `test_progs` was built with (`--list`).
fn built_tests() -> Vec<String> {
    Command::new(TEST_PROGS)
        .arg("--list")
        .current_dir(SELFTESTS_DIR)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty() && !l.contains(char::is_whitespace))
                .collect()
        })
        .unwrap_or_default()
}

/// `selftest:` step.
pub fn run(s: &SelftestStep, channel: &Channel, scenario_deadline: Instant) -> StepResult {
    if !std::path::Path::new(TEST_PROGS).exists() {
        return Err(StepError::Error(format!(
            "{TEST_PROGS} is not in the image (the runner adds it for scenarios with selftest steps)"
        )));
    }
    let mut cmd = Command::new(TEST_PROGS);
    cmd.current_dir(SELFTESTS_DIR);
    for t in &s.tests {
        cmd.args(["-t", t]);
    }
    for a in &s.allow {
        cmd.args(["-a", a]);
    }
    for d in &s.deny {
        cmd.args(["-d", d]);
    }
    // Tests this kernel's config rules out: not run, reported skipped
    // (only those this tree has).
    let config = kernel_config();
    let built = if s.unsupported.is_empty() {
        Vec::new()
    } else {
        built_tests()
    };
    let mut unsupported = 0;
    let known_subtests = std::fs::read_to_string(SUBTESTS).unwrap_or_default();
    for u in &s.unsupported {
        let Some(why) = u.applies(&config) else {
            continue;
        };
        for t in u
            .tests
            .iter()
            .filter(|t| selected(s, t) && built.contains(t))
        {
            cmd.args(["-d", t]);
            // The test, then each subtest the host listed: how much did
            // not run is visible, one skipped testcase each.
            let subtests = known_subtests
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .filter(|(test, _)| test == t)
                .map(|(_, sub)| format!("{t}/{sub}"));
            for name in std::iter::once(t.clone()).chain(subtests) {
                unsupported += 1;
                channel.send(&GuestMessage::Testcase {
                    name,
                    status: StepStatus::Skip,
                    log: why.clone(),
                });
            }
        }
    }
    // Merge stderr into stdout so log lines stay in order.
    let (rx, tx) = crate::sys::pipe().map_err(|e| StepError::Error(e.to_string()))?;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: tx is a fresh pipe fd this function owns and hands over here.
    let tx = unsafe { OwnedFd::from_raw_fd(tx) };
    // A failed dup (no fds left) is a step error, never an fd of -1.
    let tx2 = tx
        .try_clone()
        .map_err(|e| StepError::Error(format!("dup of the output pipe: {e}")))?;
    let (out, err) = (Stdio::from(tx), Stdio::from(tx2));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| StepError::Error(format!("{TEST_PROGS}: {e}")))?;
    drop(cmd);
    let pid = child.id() as i32;
    let deadline = (Instant::now() + Duration::from_secs(s.timeout_s)).min(scenario_deadline);
    // A second thread until the join below: nothing here forks while it
    // runs (`worker::spawn` would refuse); test_progs was spawned before it
    // (Command forks and execs at once).
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: kill takes no pointers; `pid` is our child, probed
            // only until `child.wait()` below reaps it.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: as for the probe above: no pointers, our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    });
    // SAFETY: `rx` is the read end `sys::pipe` just returned; nothing else
    // owns or closes it, so the File takes sole ownership.
    let reader = BufReader::new(unsafe { std::fs::File::from_raw_fd(rx) });
    let mut parser = Parser::default();
    let (mut passed, mut failed, mut skipped) = (0, 0, unsupported);
    let mut output = String::new();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if output.len() + line.len() < MAX_OUTPUT_BYTES {
            output.push_str(&line);
            output.push('\n');
        }
        if let Some(r) = parser.line(&line) {
            match r.status {
                StepStatus::Pass => passed += 1,
                StepStatus::Skip => skipped += 1,
                _ => failed += 1,
            }
            channel.send(&GuestMessage::Testcase {
                name: r.name,
                status: r.status,
                log: r.log,
            });
        }
    }
    let status = child.wait().map_err(|e| StepError::Error(e.to_string()))?;
    let timed_out = watchdog.join().unwrap_or(false);
    channel.send(&GuestMessage::Output {
        name: "test_progs.log".into(),
        text: output,
    });
    // Tests the host could not build are errors, never silently missing.
    let not_built = std::fs::read_to_string(NOT_BUILT).unwrap_or_default();
    let mut errors = 0;
    for (name, reason) in not_built.lines().filter_map(|l| l.split_once('\t')) {
        if selected(s, name) {
            errors += 1;
            channel.send(&GuestMessage::Testcase {
                name: name.to_owned(),
                status: StepStatus::Error,
                log: format!("not built: {reason}"),
            });
        }
    }
    let summary = format!("{passed} passed, {failed} failed, {skipped} skipped")
        + &if errors > 0 {
            format!(", {errors} not built")
        } else {
            String::new()
        };
    let tail = parser.tail.join("\n");
    if timed_out {
        return Err(StepError::Fail(format!(
            "test_progs still running after {} s ({summary}); last output:\n{tail}",
            s.timeout_s
        )));
    }
    if passed + failed + skipped == 0 {
        return Err(StepError::Fail(format!(
            "test_progs ran no test ({status}); last output:\n{tail}"
        )));
    }
    if failed > 0 || errors > 0 || !status.success() {
        return Err(StepError::Fail(format!(
            "{summary}; test_progs {status}; last output:\n{tail}"
        )));
    }
    Ok(Outcome::said(summary))
}

/// Whether `test_progs` with the step's filters would run `name`: `-t` is a
/// substring, `-a`/`-d` are globs (`*`); no `-t`/`-a` selects everything.
pub fn selected(s: &SelftestStep, name: &str) -> bool {
    let allowed = (s.tests.is_empty() && s.allow.is_empty())
        || s.tests.iter().any(|t| name.contains(t.as_str()))
        || s.allow.iter().any(|a| glob(a, name));
    allowed && !s.deny.iter().any(|d| glob(d, name))
}

/// `*`-only glob match.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(after) = text.strip_prefix(head) else {
                return false;
            };
            (0..=after.len()).any(|i| after.is_char_boundary(i) && glob(rest, &after[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_built_tests_selected_like_test_progs() {
        let step = |t: &[&str], a: &[&str], d: &[&str]| SelftestStep {
            tests: t.iter().map(|s| s.to_string()).collect(),
            allow: a.iter().map(|s| s.to_string()).collect(),
            deny: d.iter().map(|s| s.to_string()).collect(),
            timeout_s: 1,
            unsupported: Vec::new(),
        };
        let arena = step(&["arena"], &[], &["verifier_arena*"]);
        assert!(selected(&arena, "libarena"));
        assert!(selected(&arena, "libarena_asan"));
        assert!(!selected(&arena, "verifier_arena_large"));
        let verifier = step(&[], &["verifier_arena*"], &[]);
        assert!(!selected(&verifier, "libarena"));
        assert!(selected(&verifier, "verifier_arena_globals1"));
        assert!(selected(&step(&[], &[], &[]), "x"));
        assert!(glob("a*b*c", "aXXbYc") && !glob("a*b", "ab_"));
    }

    fn parse_all(text: &str) -> Vec<TestResult> {
        let mut p = Parser::default();
        text.lines().filter_map(|l| p.line(l)).collect()
    }

    #[test]
    fn passing_run() {
        let out = "\
#1/1     arena_atomics/add:OK
#1/2     arena_atomics/sub:OK
#1       arena_atomics:OK
#2       lonely_test:OK
#3/1     verifier_arena/basic_alloc1:SKIP
#3       verifier_arena:SKIP
Summary: 3/3 PASSED, 1 SKIPPED, 0 FAILED";
        let r = parse_all(out);
        let names: Vec<_> = r.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "arena_atomics/add",
                "arena_atomics/sub",
                "lonely_test",
                "verifier_arena/basic_alloc1"
            ]
        );
        assert_eq!(r[3].status, StepStatus::Skip);
    }

    /// Shaped like test_progs 6.12 output of a failing subtest.
    #[test]
    fn failing_subtest_carries_its_log_and_recap_is_ignored() {
        let out = "\
#1/1     arena_atomics/add:OK
test_sub:PASS:arena atomics skeleton open 0 nsec
test_sub:FAIL:sub value unexpected sub value: actual 1 != expected 2
#1/2     arena_atomics/sub:FAIL
#1       arena_atomics:FAIL

All error logs:
test_sub:FAIL:sub value unexpected sub value: actual 1 != expected 2
#1/2     arena_atomics/sub:FAIL
#1       arena_atomics:FAIL
Summary: 0/1 PASSED, 0 SKIPPED, 1 FAILED";
        let r = parse_all(out);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[1].name, "arena_atomics/sub");
        assert_eq!(r[1].status, StepStatus::Fail);
        assert!(r[1].log.contains("actual 1 != expected 2"));
        assert!(r[1].log.contains("skeleton open"));
    }

    /// Recorded in a 6.12.117 guest: `sysctl net.core.bpf_jit_enable=0`, then
    /// `test_progs -t arena_atomics -t arena_list` (arena programs need the JIT).
    const RECORDED_FAILING_RUN: &str = include_str!("../../testdata/test_progs-6.12.117-nojit.txt");

    #[test]
    fn recorded_failing_run_gives_failing_testcases_with_their_logs() {
        let r = parse_all(RECORDED_FAILING_RUN);
        let names: Vec<_> = r.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "arena_atomics",
                "arena_list/arena_list_1",
                "arena_list/arena_list_1000"
            ],
            "the recap after 'All error logs:' must not add testcases"
        );
        assert!(r.iter().all(|t| t.status == StepStatus::Fail));
        // Test without subtests: its setup failure log is its failure text.
        assert!(
            r[0].log.contains("JIT is required to use arena"),
            "{}",
            r[0].log
        );
        assert!(r[0].log.contains("skeleton load unexpected error: -95"));
        // Each failing subtest carries its own log, not the previous test's.
        assert!(r[1]
            .log
            .contains("JIT is required for calling kernel function"));
        assert!(r[1]
            .log
            .contains("arena_list__open_and_load unexpected error: -524"));
        assert!(!r[1].log.contains("arena_atomics"));
    }

    #[test]
    fn aggregate_fail_without_failing_subtest_is_reported() {
        let out = "\
#4/1     arena_list/arena_list_1:OK
setup failed: -22
#4       arena_list:FAIL";
        let r = parse_all(out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "arena_list/(setup)");
        assert!(r[1].log.contains("setup failed"));
    }

    #[test]
    fn non_result_lines_are_not_results() {
        assert!(parse_result_line("#define X").is_none());
        assert!(parse_result_line("#12 foo:MAYBE").is_none());
        assert_eq!(
            parse_result_line("#12/3    foo/bar:OK"),
            Some((12, Some(3), "foo/bar".into(), StepStatus::Pass))
        );
    }
}

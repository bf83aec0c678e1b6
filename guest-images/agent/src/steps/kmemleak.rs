//! `kmemleak:` the kernel's leak detector, through its debugfs file.

use std::time::Duration;

use arena_protocol::scenario::{KmemleakAction, KmemleakStep};

use super::{Outcome, StepError, StepResult};

/// kmemleak's control and report file (the agent mounts debugfs at boot).
const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";
/// kmemleak judges only objects older than 5 s (`MSECS_MIN_AGE`): a check
/// waits that long, plus a margin, so what the scenario just freed or
/// leaked is old enough to be seen.
const MIN_AGE: Duration = Duration::from_millis(5_500);
/// Scans per check ([`kmemleak`]).
const SCANS: usize = 2;
/// Suspects quoted in a failure (all are counted).
const QUOTED: usize = 2;

/// `kmemleak:` step.
pub fn kmemleak(s: &KmemleakStep) -> StepResult {
    if !std::path::Path::new(KMEMLEAK).exists() {
        return Err(StepError::Error(format!(
            "no {KMEMLEAK}: this kernel lacks CONFIG_DEBUG_KMEMLEAK (`lab kernel config --debug` adds it)"
        )));
    }
    match s.action {
        KmemleakAction::Clear => {
            command("clear")?;
            Ok(Outcome::said("kmemleak: current suspects cleared"))
        }
        KmemleakAction::Check => {
            std::thread::sleep(MIN_AGE);
            // Two scans: kmemleak holds back an unreferenced object whose
            // contents changed since the previous scan (its checksum), and
            // a new object's first checksum always counts as changed. One
            // scan never reports what leaked since the last one.
            for _ in 0..SCANS {
                command("scan")?;
            }
            let report = std::fs::read_to_string(KMEMLEAK)
                .map_err(|e| StepError::Error(format!("read {KMEMLEAK}: {e}")))?;
            let filter = match &s.matching {
                Some(p) => Some(regex_lite::Regex::new(p).map_err(|e| {
                    StepError::Error(format!("matching: {p:?} is not a regex: {e}"))
                })?),
                None => None,
            };
            let all = suspects(&report);
            let counted: Vec<&str> = all
                .iter()
                .copied()
                .filter(|r| filter.as_ref().is_none_or(|f| f.is_match(r)))
                .collect();
            let scope = s
                .matching
                .as_ref()
                .map(|p| format!(" matching /{p}/"))
                .unwrap_or_default();
            if counted.is_empty() {
                return Ok(Outcome::said(format!(
                    "kmemleak: no new suspects{scope} ({} in all)",
                    all.len()
                )));
            }
            let quoted: Vec<String> = counted
                .iter()
                .take(QUOTED)
                .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            Err(StepError::Fail(format!(
                "kmemleak: {} new suspect(s){scope}: {}",
                counted.len(),
                quoted.join(" | ")
            )))
        }
    }
}

/// Write a command to kmemleak; it refuses when disabled (`kmemleak=off`,
/// or after an internal error), which is an error, never a pass.
fn command(word: &str) -> Result<(), StepError> {
    std::fs::write(KMEMLEAK, word).map_err(|e| {
        StepError::Error(format!(
            "write `{word}` to {KMEMLEAK}: {e} (kmemleak disabled?)"
        ))
    })
}

/// The report split into one record per suspect (each starts with
/// `unreferenced object`).
fn suspects(report: &str) -> Vec<&str> {
    let mut starts: Vec<usize> = report
        .match_indices("unreferenced object")
        .map(|(i, _)| i)
        .collect();
    starts.push(report.len());
    starts
        .windows(2)
        .map(|w| report[w[0]..w[1]].trim_end())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "unreferenced object 0xffff888003c5a000 (size 4096):\n  comm \"init\", pid 1, jiffies 4294893297\n  backtrace (crc 0):\n    [<ffffffff81234567>] __kmalloc_noprof+0x1a/0x30\n    [<ffffffff81345678>] arena_map_alloc+0x55/0x200\nunreferenced object 0xffff888003c5b000 (size 64):\n  comm \"kworker/0:1\", pid 9, jiffies 4294893300\n  backtrace (crc 0):\n    [<ffffffff81234567>] kmem_cache_alloc+0x1a/0x30\n";

    #[test]
    fn a_report_splits_into_one_record_per_suspect() {
        let s = suspects(REPORT);
        assert_eq!(s.len(), 2);
        assert!(s[0].contains("arena_map_alloc") && !s[0].contains("kworker"));
        assert!(s[1].starts_with("unreferenced object 0xffff888003c5b000"));
        assert!(suspects("").is_empty());
    }
}

//! `memory:` the scenario's cgroup memory against a recorded baseline.

use std::time::{Duration, Instant};

use arena_protocol::scenario::MemoryStep;

use crate::executor::{Ctx, Outcome, StepError, StepResult};

/// Pause between reads while waiting for deferred frees.
const POLL: Duration = Duration::from_millis(20);

/// `memory:` step.
pub fn memory(ctx: &mut Ctx, s: &MemoryStep) -> StepResult {
    let read = || crate::cgroup::memory_current().map_err(StepError::Error);
    if let Some(name) = &s.baseline {
        let now = read()?;
        ctx.baselines.insert(name.clone(), now);
        return Ok(Outcome::said(format!(
            "baseline `{name}`: memory.current = {} KiB",
            now / 1024
        )));
    }
    let name = s.since.as_deref().unwrap_or_default();
    let base = *ctx.baselines.get(name).ok_or_else(|| {
        StepError::Error(format!("no baseline `{name}` was recorded in this process"))
    })?;
    let until = Instant::now() + Duration::from_millis(s.within_ms);
    loop {
        let now = read()?;
        match judge(base, now, s) {
            Ok(text) => return Ok(Outcome::said(text)),
            Err(text) if Instant::now() >= until => {
                let waited = if s.within_ms > 0 {
                    format!(" (still after {} ms)", s.within_ms)
                } else {
                    String::new()
                };
                return Err(StepError::Fail(format!("{text}{waited}")));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Whether growing from `base` to `now` bytes meets `s`'s bounds; the text
/// says by how much either way.
fn judge(base: u64, now: u64, s: &MemoryStep) -> Result<String, String> {
    let grown_kib = (i128::from(now) - i128::from(base)) / 1024;
    let since = s.since.as_deref().unwrap_or_default();
    let text = format!(
        "memory.current {} KiB, {grown_kib:+} KiB since `{since}` ({} KiB)",
        now / 1024,
        base / 1024
    );
    if let Some(most) = s.at_most_kib {
        if grown_kib > i128::from(most) {
            return Err(format!("{text}: grew more than {most} KiB"));
        }
    }
    if let Some(least) = s.at_least_kib {
        if grown_kib < i128::from(least) {
            return Err(format!("{text}: grew less than {least} KiB"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(at_least: Option<u64>, at_most: Option<u64>) -> MemoryStep {
        MemoryStep {
            baseline: None,
            since: Some("b".into()),
            at_most_kib: at_most,
            at_least_kib: at_least,
            within_ms: 0,
        }
    }

    #[test]
    fn bounds_are_on_the_growth_in_kib() {
        let mib = 1 << 20;
        assert!(judge(mib, mib + 64 * 1024, &step(None, Some(64))).is_ok());
        let e = judge(mib, mib + 65 * 1024, &step(None, Some(64))).unwrap_err();
        assert!(
            e.ends_with("+65 KiB since `b` (1024 KiB): grew more than 64 KiB"),
            "{e}"
        );
        assert!(judge(mib, mib + 4000 * 1024, &step(Some(3600), None)).is_ok());
        let e = judge(mib, mib + 100 * 1024, &step(Some(3600), None)).unwrap_err();
        assert!(e.contains("grew less than 3600 KiB"), "{e}");
        // A shrink meets any upper bound, never a lower one.
        assert!(judge(mib, 0, &step(None, Some(0))).is_ok());
        assert!(judge(mib, 0, &step(Some(1), None)).is_err());
    }
}

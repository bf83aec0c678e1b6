//! `memory:` the scenario's cgroup memory, `/proc/meminfo` and
//! `/proc/vmstat` against a recorded baseline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arena_protocol::scenario::MemoryStep;

use super::{Ctx, Outcome, Sample, StepError, StepResult};

/// Pause between reads while waiting for deferred frees.
const POLL: Duration = Duration::from_millis(20);

impl Sample {
    fn read() -> Result<Sample, StepError> {
        let text = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| StepError::Error(format!("read {p}: {e}")))
        };
        Ok(Sample {
            cgroup: crate::cgroup::memory_current(),
            meminfo: parse_meminfo(&text("/proc/meminfo")?),
            vmstat: parse_vmstat(&text("/proc/vmstat")?),
        })
    }
}

/// Which number a check looks at, and its unit.
enum Source<'a> {
    Cgroup,
    Meminfo(&'a str),
    Vmstat(&'a str),
}

impl Source<'_> {
    fn of(s: &MemoryStep) -> Source<'_> {
        match (&s.meminfo, &s.vmstat) {
            (Some(f), _) => Source::Meminfo(f),
            (None, Some(c)) => Source::Vmstat(c),
            (None, None) => Source::Cgroup,
        }
    }

    /// The value in the check's unit (KiB, or a count for vmstat).
    fn value(&self, sample: &Sample) -> Result<i64, StepError> {
        let missing = |what: String| StepError::Error(format!("{what}: not in this kernel"));
        match self {
            Source::Cgroup => match &sample.cgroup {
                Ok(b) => Ok((b / 1024) as i64),
                Err(e) => Err(StepError::Error(e.clone())),
            },
            Source::Meminfo(f) => sample
                .meminfo
                .get(*f)
                .copied()
                .ok_or_else(|| missing(format!("/proc/meminfo has no `{f}`"))),
            Source::Vmstat(c) => sample
                .vmstat
                .get(*c)
                .copied()
                .ok_or_else(|| missing(format!("/proc/vmstat has no `{c}`"))),
        }
    }

    fn name(&self) -> String {
        match self {
            Source::Cgroup => "memory.current".into(),
            Source::Meminfo(f) => format!("meminfo {f}"),
            Source::Vmstat(c) => format!("vmstat {c}"),
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            Source::Vmstat(_) => "",
            _ => " KiB",
        }
    }

    /// (at_least, at_most) in the check's unit.
    fn bounds(&self, s: &MemoryStep) -> (Option<i64>, Option<i64>) {
        match self {
            Source::Vmstat(_) => (s.at_least, s.at_most),
            _ => (s.at_least_kib, s.at_most_kib),
        }
    }
}

/// `memory:` step.
pub fn memory(ctx: &mut Ctx, s: &MemoryStep) -> StepResult {
    if let Some(name) = &s.baseline {
        let now = Sample::read()?;
        let cgroup = match &now.cgroup {
            Ok(b) => format!("memory.current = {} KiB", b / 1024),
            Err(e) => format!("no memory cgroup ({e})"),
        };
        let text = format!(
            "baseline `{name}`: {cgroup}, {} meminfo fields, {} vmstat counters",
            now.meminfo.len(),
            now.vmstat.len()
        );
        ctx.baselines.insert(name.clone(), now);
        return Ok(Outcome::said(text));
    }
    let name = s.since.as_deref().unwrap_or_default();
    let base = ctx.baselines.get(name).ok_or_else(|| {
        StepError::Error(format!("no baseline `{name}` was recorded in this process"))
    })?;
    let source = Source::of(s);
    let base_value = source.value(base)?;
    let until = Instant::now() + Duration::from_millis(s.within_ms);
    loop {
        let now = source.value(&Sample::read()?)?;
        match judge(&source, base_value, now, s) {
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

/// Whether changing from `base` to `now` meets `s`'s bounds; the text says
/// by how much either way.
fn judge(source: &Source, base: i64, now: i64, s: &MemoryStep) -> Result<String, String> {
    let change = i128::from(now) - i128::from(base);
    let since = s.since.as_deref().unwrap_or_default();
    let unit = source.unit();
    let text = format!(
        "{} {now}{unit}, {change:+}{unit} since `{since}` ({base}{unit})",
        source.name()
    );
    let (least, most) = source.bounds(s);
    if let Some(most) = most {
        if change > i128::from(most) {
            return Err(format!("{text}: changed by more than {most:+}{unit}"));
        }
    }
    if let Some(least) = least {
        if change < i128::from(least) {
            return Err(format!("{text}: changed by less than {least:+}{unit}"));
        }
    }
    Ok(text)
}

/// `Name:   123 kB` lines; values in KiB (the few unitless fields, such
/// as `HugePages_Total`, as they are).
fn parse_meminfo(text: &str) -> HashMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

/// `name value` lines.
fn parse_vmstat(text: &str) -> HashMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(at_least: Option<i64>, at_most: Option<i64>) -> MemoryStep {
        MemoryStep {
            baseline: None,
            since: Some("b".into()),
            meminfo: None,
            vmstat: None,
            at_most_kib: at_most,
            at_least_kib: at_least,
            at_most: None,
            at_least: None,
            within_ms: 0,
        }
    }

    #[test]
    fn bounds_are_on_the_change_in_kib() {
        let c = &Source::Cgroup;
        assert!(judge(c, 1024, 1024 + 64, &step(None, Some(64))).is_ok());
        let e = judge(c, 1024, 1024 + 65, &step(None, Some(64))).unwrap_err();
        assert!(
            e.ends_with("+65 KiB since `b` (1024 KiB): changed by more than +64 KiB"),
            "{e}"
        );
        assert!(judge(c, 1024, 1024 + 4000, &step(Some(3600), None)).is_ok());
        let e = judge(c, 1024, 1024 + 100, &step(Some(3600), None)).unwrap_err();
        assert!(e.contains("changed by less than +3600 KiB"), "{e}");
        // A shrink meets any non-negative upper bound, never a lower one.
        assert!(judge(c, 1024, 0, &step(None, Some(0))).is_ok());
        assert!(judge(c, 1024, 0, &step(Some(1), None)).is_err());
        // Negative bounds: shrank by at least 100, by at most 2000.
        assert!(judge(c, 1024, 0, &step(Some(-2000), Some(-100))).is_ok());
        assert!(judge(c, 1024, 1000, &step(Some(-2000), Some(-100))).is_err());
    }

    #[test]
    fn vmstat_bounds_are_counts() {
        let v = &Source::Vmstat("nr_page_table_pages");
        let mut s = step(None, None);
        s.at_most = Some(2);
        assert!(judge(v, 10, 12, &s).is_ok());
        let e = judge(v, 10, 13, &s).unwrap_err();
        assert!(
            e.starts_with("vmstat nr_page_table_pages 13, +3 since"),
            "{e}"
        );
    }

    #[test]
    fn meminfo_and_vmstat_parse_the_kernels_formats() {
        let m = parse_meminfo(
            "MemTotal:         480216 kB\nSlab:  12 kB\nHugePages_Total:       0\nbogus\n",
        );
        assert_eq!(m["MemTotal"], 480216);
        assert_eq!(m["Slab"], 12);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 3);
        let v = parse_vmstat("nr_free_pages 81234\nnr_page_table_pages 77\nbad line here\n");
        assert_eq!(v["nr_page_table_pages"], 77);
        assert_eq!(v.len(), 2);
    }
}

//! `fail_allocs:` kernel fault injection for this process, through the
//! `fail_page_alloc` and `failslab` debugfs attributes
//! (Documentation/fault-injection/fault-injection.rst).

use arena_protocol::scenario::FailAllocsStep;

use super::{Outcome, StepError, StepResult};

/// The two fault points allocations go through: pages and slab objects
/// (the maple and range trees' nodes are slab objects).
const POINTS: &[&str] = &[
    "/sys/kernel/debug/fail_page_alloc",
    "/sys/kernel/debug/failslab",
];
/// Per task: only tasks with this set to 1 see failures (`task-filter`).
const MAKE_IT_FAIL: &str = "/proc/self/make-it-fail";

/// `fail_allocs:` step.
pub fn fail_allocs(s: &FailAllocsStep) -> StepResult {
    for point in POINTS {
        if !std::path::Path::new(point).is_dir() {
            return Err(StepError::Error(format!(
                "no {point}: this kernel lacks fault injection (CONFIG_FAULT_INJECTION, \
                 CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC, CONFIG_FAULT_INJECTION_DEBUG_FS)"
            )));
        }
    }
    let yes_no = |b: bool| if b { "Y" } else { "N" };
    // -1: no limit (the attribute is an atomic_t).
    let times = s.times.map_or("-1".to_owned(), |t| t.to_string());
    // fail_page_alloc skips order-0 pages unless told (`min-order`
    // defaults to 1), and single pages are what arena allocates.
    write(&format!("{}/min-order", POINTS[0]), "0")?;
    for point in POINTS {
        let attributes = [
            ("task-filter", "Y"),
            ("ignore-gfp-wait", yes_no(!s.sleeping)),
            ("interval", "1"),
            ("times", times.as_str()),
            ("verbose", "0"),
            ("probability", &s.probability.to_string()),
        ];
        for (name, value) in attributes {
            write(&format!("{point}/{name}"), value)?;
        }
    }
    write(MAKE_IT_FAIL, if s.probability > 0 { "1" } else { "0" })?;
    Ok(Outcome::said(if s.probability == 0 {
        "fault injection off for this process".to_owned()
    } else {
        format!(
            "{}% of this process's {}allocations fail{}",
            s.probability,
            if s.sleeping { "" } else { "non-sleeping " },
            s.times
                .map(|t| format!(", {t} times at most"))
                .unwrap_or_default()
        )
    }))
}

fn write(path: &str, value: &str) -> Result<(), StepError> {
    std::fs::write(path, value)
        .map_err(|e| StepError::Error(format!("write {value:?} to {path}: {e}")))
}

//! One module per step kind; [`run`] dispatches a step to its module.

pub mod arena;
pub mod bounds;
pub mod bpf;
pub mod control;
mod ctx;
pub mod fail_allocs;
pub mod kmemleak;
pub mod mapping;
pub mod memory;
mod object;
pub mod parallel;
pub mod selftest;
pub mod touch;

use std::sync::OnceLock;

use arena_protocol::scenario::Step;
use arena_protocol::{StepLines, StepRef};

use crate::channel::Channel;
pub use ctx::{check_errno, ArenaState, Ctx, Outcome, Sample, StepError, StepResult};

/// Run one step in the current process.
pub fn run(ctx: &mut Ctx, step: &Step) -> StepResult {
    match step {
        Step::Arena(s) => arena::create(ctx, s),
        Step::Mmap(s) => mapping::mmap(ctx, s),
        Step::Munmap(s) => mapping::munmap(ctx, s),
        Step::Mremap(s) => mapping::mremap(ctx, s),
        Step::Madvise(s) => mapping::madvise(ctx, s),
        Step::Touch(s) => touch::touch(ctx, s),
        Step::BpfLoad(s) => bpf::load(ctx, s),
        Step::BpfRun(s) => bpf::run(ctx, s),
        Step::UserWalk(s) => bpf::walk(ctx, s),
        Step::ReadPointer(s) => bpf::read_pointer(ctx, s),
        Step::Processes(s) => parallel::processes(ctx, s),
        Step::Threads(s) => parallel::threads(ctx, s),
        Step::Sysctl(s) => control::sysctl(s),
        Step::Sleep(s) => control::sleep(s),
        Step::Repeat(s) => control::repeat(ctx, s),
        Step::ExpectKernelLog(s) => control::kernel_log_step(s),
        Step::Crash(s) => control::crash(s),
        Step::Destroy(s) => mapping::destroy(ctx, s),
        Step::Memory(s) => memory::memory(ctx, s),
        Step::Sysrq(s) => control::sysrq(s),
        Step::Sweep(s) => control::sweep(ctx, s),
        Step::Kmemleak(s) => kmemleak::kmemleak(s),
        Step::FailAllocs(s) => fail_allocs::fail_allocs(s),
        Step::Selftest(_) => Err(StepError::Error(
            "selftest steps stream their own results and are only allowed at the top level".into(),
        )),
    }
}

/// Run a top-level step; only these may stream extra messages (selftests).
pub fn run_top_level(ctx: &mut Ctx, step: &Step, channel: &Channel) -> StepResult {
    match step {
        Step::Selftest(s) => selftest::run(s, channel, ctx.deadline),
        _ => run(ctx, step),
    }
}

/// Where the scenario's steps are written, as the host sent them: set
/// once before the first step, read by every process and thread after.
static LINES: OnceLock<StepLines> = OnceLock::new();

/// Remember where the scenario's steps are written.
pub fn set_lines(lines: StepLines) {
    let _ = LINES.set(lines);
}

/// How to name step `i` of `list`, the list at field path `list_field`:
/// `step 2/3 (touch, race.yaml:27)`.
pub fn step_ref(list_field: &str, list: &[Step], i: usize) -> StepRef {
    static NONE: OnceLock<StepLines> = OnceLock::new();
    LINES
        .get()
        .unwrap_or_else(|| NONE.get_or_init(StepLines::default))
        .step(list_field, list, i)
}

/// Run `steps`, the list at field path `field` (`steps[3].repeat.steps`),
/// in order; the first failing step ends the list, named.
pub fn run_steps(ctx: &mut Ctx, list: &[Step], field: &str) -> Result<(), (StepRef, StepError)> {
    for (i, step) in list.iter().enumerate() {
        let outer = std::mem::replace(&mut ctx.at, format!("{field}[{i}]"));
        let result = run(ctx, step);
        ctx.at = outer;
        result.map_err(|e| (step_ref(field, list, i), e))?;
        crate::counters::tick();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_protocol::scenario::{Errno, SyscallExpect};

    #[test]
    fn errno_expectations() {
        let ok = SyscallExpect::default();
        let busy = SyscallExpect {
            errno: Some(Errno::EBUSY),
        };
        assert_eq!(check_errno("x", Ok::<_, i32>(5), &ok).unwrap(), Some(5));
        assert_eq!(check_errno::<u8>("x", Err(16), &busy).unwrap(), None);
        let e = check_errno::<u8>("mmap", Err(22), &busy).unwrap_err();
        assert_eq!(
            e,
            StepError::Fail("mmap: expected EBUSY (16), got EINVAL (22)".into())
        );
        let e = check_errno("mmap", Ok::<_, i32>(1), &busy).unwrap_err();
        assert!(e.text().contains("but it succeeded"));
        let e = check_errno::<u8>("mmap", Err(7), &ok).unwrap_err();
        assert!(e.text().contains("expected success, got E2BIG"));
    }
}

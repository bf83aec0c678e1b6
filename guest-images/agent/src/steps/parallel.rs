//! `processes:` (fork, one mm each) and `threads:` (one mm) workers that run
//! a step list for a number of iterations, released together.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use arena_protocol::scenario::ParallelStep;
use serde::{Deserialize, Serialize};

use crate::crash;
use crate::executor::{run_steps, Ctx, Outcome, StepError, StepResult};
use crate::sys;

/// What one worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: u32,
    /// `pass`, `fail`, `crashed` or `timeout`.
    pub status: String,
    /// Iterations completed.
    pub iterations: u64,
    /// What went wrong, if anything.
    pub detail: String,
}

/// SplitMix64: a tiny, well-distributed generator for reproducible choices.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of worker `i` derived from the step's seed.
fn worker_seed(seed: u64, i: u32) -> u64 {
    let mut s = seed ^ (u64::from(i) + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix(&mut s)
}

/// The loop every worker runs.
fn work(ctx: &mut Ctx, s: &ParallelStep, worker: u32) -> WorkerReport {
    let mut rng = ctx.seed;
    let stop_at = s
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut done = 0;
    for it in 0..s.iterations {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if let Err((j, e)) = run_steps(ctx, &s.steps) {
            return WorkerReport {
                worker,
                status: "fail".into(),
                iterations: done,
                detail: format!(
                    "iteration {it}, step {j} ({}): {}",
                    s.steps[j].kind(),
                    e.text()
                ),
            };
        }
        done += 1;
        if s.jitter_us > 0 {
            std::thread::sleep(Duration::from_micros(splitmix(&mut rng) % s.jitter_us));
        }
    }
    WorkerReport {
        worker,
        status: "pass".into(),
        iterations: done,
        detail: String::new(),
    }
}

fn summarise(s: &ParallelStep, what: &str, seed: u64, reports: Vec<WorkerReport>) -> StepResult {
    let total: u64 = reports.iter().map(|r| r.iterations).sum();
    let failed: Vec<&WorkerReport> = reports.iter().filter(|r| r.status != "pass").collect();
    let data = serde_json::json!({ "seed": seed, "iterations": total, "workers": reports });
    if failed.is_empty() {
        return Ok(Outcome {
            detail: format!(
                "{} {what} passed, {total} iterations in all (seed {seed})",
                s.count
            ),
            data,
        });
    }
    let list: Vec<String> = failed
        .iter()
        .map(|r| format!("{what} {} {}: {}", r.worker, r.status, r.detail))
        .collect();
    Err(StepError::Fail(format!(
        "{} of {} {what} failed (seed {seed}): {}",
        failed.len(),
        s.count,
        list.join("; ")
    )))
}

/// `processes:` step.
pub fn processes(ctx: &mut Ctx, s: &ParallelStep) -> StepResult {
    let seed = s.seed.unwrap_or(ctx.seed);
    let err = |e: std::io::Error| StepError::Error(e.to_string());
    let (go_rx, go_tx) = sys::pipe().map_err(err)?;
    let mut children = Vec::new();
    for i in 0..s.count {
        let (res_rx, res_tx) = sys::pipe().map_err(err)?;
        let (crash_rx, crash_tx) = sys::pipe().map_err(err)?;
        // SAFETY: the child runs its steps and exits; it never returns here.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            sys::close(go_tx);
            sys::close(res_rx);
            sys::close(crash_rx);
            crash::install(crash_tx);
            ctx.forget_mappings();
            ctx.seed = worker_seed(seed, i);
            let mut b = [0u8; 1];
            // Blocks until the parent closes the write end: all start together.
            // SAFETY: reading into a local buffer.
            unsafe { libc::read(go_rx, b.as_mut_ptr().cast(), 1) };
            let report = work(ctx, s, i);
            let line = serde_json::to_vec(&report).unwrap_or_default();
            // SAFETY: writing a local buffer to our pipe, then exiting.
            unsafe {
                libc::write(res_tx, line.as_ptr().cast(), line.len());
                libc::_exit(if report.status == "pass" { 0 } else { 1 });
            }
        }
        sys::close(res_tx);
        sys::close(crash_tx);
        if pid < 0 {
            return Err(StepError::Error(format!(
                "fork of process {i}: {}",
                std::io::Error::last_os_error()
            )));
        }
        children.push((i, pid, res_rx, crash_rx));
    }
    sys::close(go_rx);
    sys::close(go_tx); // release
    let mut reports = Vec::new();
    for (i, pid, res_rx, crash_rx) in children {
        let status = sys::wait_child(pid, ctx.deadline);
        // SAFETY: we own res_rx; File closes it.
        let mut out = String::new();
        let _ = unsafe { std::fs::File::from_raw_fd(res_rx) }.read_to_string(&mut out);
        let fault = crash::read_report(crash_rx);
        sys::close(crash_rx);
        let report = match (status, serde_json::from_str::<WorkerReport>(&out)) {
            (None, _) => WorkerReport {
                worker: i,
                status: "timeout".into(),
                iterations: 0,
                detail: "killed at the scenario deadline".into(),
            },
            (Some(_), Ok(r)) => r,
            (Some(st), Err(_)) => WorkerReport {
                worker: i,
                status: "crashed".into(),
                iterations: 0,
                detail: format!(
                    "{}{}",
                    sys::describe_status(st),
                    fault.map(|a| format!(" at {a:#x}")).unwrap_or_default()
                ),
            },
        };
        reports.push(report);
    }
    summarise(s, "processes", seed, reports)
}

/// `threads:` step. A fault in a thread kills the whole worker process
/// (it is reported by PID 1), as it would in any program.
pub fn threads(ctx: &mut Ctx, s: &ParallelStep) -> StepResult {
    let seed = s.seed.unwrap_or(ctx.seed);
    let barrier = std::sync::Barrier::new(s.count as usize);
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..s.count)
            .map(|i| {
                let mut tctx = ctx.clone_for_thread(worker_seed(seed, i));
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    work(&mut tctx, s, i)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| WorkerReport {
                    worker: i as u32,
                    status: "crashed".into(),
                    iterations: 0,
                    detail: "thread panicked".into(),
                })
            })
            .collect::<Vec<_>>()
    });
    summarise(s, "threads", seed, reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_reproducible_and_distinct() {
        assert_eq!(worker_seed(42, 0), worker_seed(42, 0));
        assert_ne!(worker_seed(42, 0), worker_seed(42, 1));
        assert_ne!(worker_seed(42, 0), worker_seed(43, 0));
    }
}

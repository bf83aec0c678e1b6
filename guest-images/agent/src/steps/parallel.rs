//! `processes:` (fork, one mm each) and `threads:` (one mm) workers that run
//! a step list for a number of iterations, released together.
//!
//! Every random choice comes from the step's seed: the order workers are
//! started in, each worker's seed (its shuffled touches), its jitter. The
//! choices are recorded in the step's data so that a replay with the same
//! seed can be compared; how the threads then interleave is up to the
//! scheduler and is not replayed.

use std::time::{Duration, Instant};

use arena_protocol::scenario::ParallelStep;
use arena_protocol::seed;
use serde::{Deserialize, Serialize};

use crate::executor::{run_steps, Ctx, Outcome, StepError, StepResult};
use crate::sys;
use crate::worker;

/// How one worker ended; serialized as `pass`, `fail`, `crashed`, `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Every iteration passed.
    Pass,
    /// A step failed.
    Fail,
    /// The process or thread died without a report.
    Crashed,
    /// Killed at the scenario deadline.
    Timeout,
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerStatus::Pass => "pass",
            WorkerStatus::Fail => "fail",
            WorkerStatus::Crashed => "crashed",
            WorkerStatus::Timeout => "timeout",
        })
    }
}

/// What one worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: u32,
    /// How it ended.
    pub status: WorkerStatus,
    /// Iterations completed.
    pub iterations: u64,
    /// What went wrong, if anything.
    pub detail: String,
    /// The worker's seed (drives its shuffled touches).
    #[serde(default)]
    pub seed: u64,
    /// The jitter slept after each iteration (µs), the first
    /// [`RECORDED_JITTER`].
    #[serde(default)]
    pub jitter_us: Vec<u64>,
    /// Choices its steps made (shuffled page orders), tagged with the
    /// iteration, up to [`RECORDED_CHOICE_BYTES`] of JSON.
    #[serde(default)]
    pub choices: Vec<serde_json::Value>,
    /// Whether choices were left out to stay under the limit.
    #[serde(default)]
    pub choices_truncated: bool,
}

/// Jitter values recorded per worker.
const RECORDED_JITTER: usize = 64;
/// JSON bytes of choices recorded per worker: a process's report goes
/// through a pipe that is only read once the process has exited, so it
/// must fit the pipe (64 KiB) with room to spare.
const RECORDED_CHOICE_BYTES: usize = 16 * 1024;

/// Seed of worker `i` derived from the step's seed.
fn worker_seed(seed: u64, i: u32) -> u64 {
    // Recorded: kept below 2^53 like every recorded seed.
    seed::derive_index(seed, u64::from(i)) >> 11
}

/// The order workers are forked or spawned in, drawn from the step's seed.
fn start_order(seed: u64, count: u32) -> Vec<u32> {
    seed::permutation(seed::derive(seed, "start"), count as usize)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// The loop every worker runs; `ctx.seed` is the worker's seed.
fn work(ctx: &mut Ctx, s: &ParallelStep, worker: u32) -> WorkerReport {
    let mut report = WorkerReport {
        worker,
        status: WorkerStatus::Pass,
        iterations: 0,
        detail: String::new(),
        seed: ctx.seed,
        jitter_us: Vec::new(),
        choices: Vec::new(),
        choices_truncated: false,
    };
    let mut jitter = seed::derive(ctx.seed, "jitter");
    let mut recorded = 0;
    let stop_at = s
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    ctx.choices.clear();
    for it in 0..s.iterations {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let result = run_steps(ctx, &s.steps);
        for mut c in ctx.choices.drain(..) {
            c["iteration"] = it.into();
            recorded += c.to_string().len();
            if recorded > RECORDED_CHOICE_BYTES {
                report.choices_truncated = true;
            } else {
                report.choices.push(c);
            }
        }
        if let Err((j, e)) = result {
            report.status = WorkerStatus::Fail;
            report.detail = format!(
                "iteration {it}, step {j} ({}): {}",
                s.steps[j].kind(),
                e.text()
            );
            return report;
        }
        report.iterations += 1;
        if s.jitter_us > 0 {
            let us = seed::below(&mut jitter, s.jitter_us);
            if report.jitter_us.len() < RECORDED_JITTER {
                report.jitter_us.push(us);
            }
            std::thread::sleep(Duration::from_micros(us));
        }
    }
    report
}

/// A report for a worker that could not say anything itself.
fn lost(worker: u32, status: WorkerStatus, detail: String) -> WorkerReport {
    WorkerReport {
        worker,
        status,
        iterations: 0,
        detail,
        seed: 0,
        jitter_us: Vec::new(),
        choices: Vec::new(),
        choices_truncated: false,
    }
}

fn summarise(
    s: &ParallelStep,
    what: &str,
    seed: u64,
    mut reports: Vec<WorkerReport>,
) -> StepResult {
    reports.sort_by_key(|r| r.worker);
    let total: u64 = reports.iter().map(|r| r.iterations).sum();
    let failed: Vec<&WorkerReport> = reports
        .iter()
        .filter(|r| r.status != WorkerStatus::Pass)
        .collect();
    // Outcomes here; seeds and choices are in `choices` (see `record`).
    let outcomes: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "worker": r.worker,
                "status": r.status,
                "iterations": r.iterations,
                "detail": r.detail,
            })
        })
        .collect();
    let data = serde_json::json!({ "seed": seed, "iterations": total, "workers": outcomes });
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

/// Record the step's choices in `ctx.choices`, which the executor puts in
/// the step's data whether it passes or fails.
fn record(ctx: &mut Ctx, what: &str, seed: u64, order: &[u32], reports: &[WorkerReport]) {
    let workers: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "worker": r.worker,
                "seed": r.seed,
                "jitter_us": r.jitter_us,
                "choices": r.choices,
                "choices_truncated": r.choices_truncated,
            })
        })
        .collect();
    ctx.choices.push(serde_json::json!({
        "step": what,
        "seed": seed,
        "start_order": order,
        "workers": workers,
    }));
}

/// `processes:` step.
pub fn processes(ctx: &mut Ctx, s: &ParallelStep) -> StepResult {
    let seed = s.seed.unwrap_or_else(|| ctx.draw());
    let order = start_order(seed, s.count);
    let err = |e: std::io::Error| StepError::Error(e.to_string());
    let (go_rx, go_tx) = sys::pipe().map_err(err)?;
    let mut children = Vec::new();
    for &i in &order {
        // The child runs its steps and exits; it never returns here.
        let child = worker::spawn(|res_tx| {
            sys::close(go_tx);
            ctx.forget_mappings();
            ctx.seed = worker_seed(seed, i);
            ctx.choices.clear();
            let mut b = [0u8; 1];
            // Blocks until the parent closes the write end: all start together.
            // SAFETY: reading into a local buffer.
            unsafe { libc::read(go_rx, b.as_mut_ptr().cast(), 1) };
            let report = work(ctx, s, i);
            let line = serde_json::to_vec(&report).unwrap_or_default();
            // SAFETY: writing a local buffer to our pipe.
            unsafe { libc::write(res_tx, line.as_ptr().cast(), line.len()) };
            i32::from(report.status != WorkerStatus::Pass)
        })
        .map_err(|e| StepError::Error(format!("fork of process {i}: {e}")))?;
        children.push((i, child));
    }
    sys::close(go_rx);
    sys::close(go_tx); // release
    let mut reports = Vec::new();
    for (i, child) in children {
        let status = sys::wait_child(child.pid, ctx.deadline);
        let out = child.output();
        let fault = child.fault();
        let report = match (status, serde_json::from_slice::<WorkerReport>(&out)) {
            (None, _) => lost(
                i,
                WorkerStatus::Timeout,
                "killed at the scenario deadline".into(),
            ),
            (Some(_), Ok(r)) => r,
            (Some(st), Err(_)) => lost(
                i,
                WorkerStatus::Crashed,
                format!(
                    "{}{}",
                    sys::describe_status(st),
                    fault.map(|a| format!(" at {a:#x}")).unwrap_or_default()
                ),
            ),
        };
        reports.push(report);
    }
    record(ctx, "processes", seed, &order, &reports);
    summarise(s, "processes", seed, reports)
}

/// `threads:` step. A fault in a thread kills the whole worker process
/// (it is reported by PID 1), as it would in any program.
pub fn threads(ctx: &mut Ctx, s: &ParallelStep) -> StepResult {
    let seed = s.seed.unwrap_or_else(|| ctx.draw());
    let order = start_order(seed, s.count);
    let barrier = std::sync::Barrier::new(s.count as usize);
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = order
            .iter()
            .map(|&i| {
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
            .zip(&order)
            .map(|(h, &i)| {
                h.join()
                    .unwrap_or_else(|_| lost(i, WorkerStatus::Crashed, "thread panicked".into()))
            })
            .collect::<Vec<_>>()
    });
    record(ctx, "threads", seed, &order, &reports);
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

    #[test]
    fn start_order_is_a_reproducible_permutation() {
        let o = start_order(7, 6);
        assert_eq!(o, start_order(7, 6));
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..6).collect::<Vec<_>>());
        assert!((0..32).any(|s| start_order(s, 6) != o));
    }
}

//! `processes:` (fork, one mm each) and `threads:` (one mm) workers that run
//! a step list for a number of iterations, released together.
//!
//! Every random choice comes from the step's seed: the order workers are
//! started in, each worker's seed (its shuffled touches), its jitter. The
//! choices are recorded in the step's data so that a replay with the same
//! seed can be compared; how the threads then interleave is up to the
//! scheduler and is not replayed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arena_protocol::scenario::{Count, ParallelStep, RoleView, Signal, WorkersExpect};
use arena_protocol::seed;
use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome, StepError, StepResult};
use crate::counters::WorkerCounters;
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
    /// Worker index across all roles (what `start_order` lists).
    pub worker: u32,
    /// Its role's name (`worker` for the single-list form).
    #[serde(default)]
    pub role: String,
    /// Its index within the role.
    #[serde(default)]
    pub index: u32,
    /// Its task id (a process's pid, a thread's tid): what kernel splats
    /// and stall diagnoses name it by. 0 when it never ran.
    #[serde(default)]
    pub pid: u32,
    /// How it ended.
    pub status: WorkerStatus,
    /// Iterations completed.
    pub iterations: u64,
    /// What went wrong, if anything.
    pub detail: String,
    /// Signals seen: accepted by its touches, or the one that killed it.
    #[serde(default)]
    pub signals: BTreeMap<Signal, u64>,
    /// Reads that saw a later `any_of` alternative: interleavings observed.
    #[serde(default)]
    pub raced_reads: u64,
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

/// Seed of worker `i` of the single-list form, derived from the step's
/// seed (unchanged since before roles, so old seeds replay).
fn worker_seed(seed: u64, i: u32) -> u64 {
    // Recorded: kept below 2^53 like every recorded seed.
    seed::derive_index(seed, u64::from(i)) >> 11
}

/// Seed of worker `i` of `role`: from the step's seed, the role's name and
/// the index, so adding a role or a worker elsewhere changes no other seed.
fn role_worker_seed(seed: u64, role: &RoleView, i: u32) -> u64 {
    if role.implicit {
        worker_seed(seed, i)
    } else {
        seed::derive_index(seed::derive(seed, role.name), u64::from(i)) >> 11
    }
}

/// The order workers are forked or spawned in, drawn from the step's seed.
fn start_order(seed: u64, count: u32) -> Vec<u32> {
    seed::permutation(seed::derive(seed, "start"), count as usize)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// One worker to start: its global number, role, index in the role, seed.
#[derive(Debug, Clone, Copy)]
struct Worker<'a> {
    worker: u32,
    role: RoleView<'a>,
    index: u32,
    seed: u64,
}

/// Every worker of every role, numbered across roles in role order.
fn workers<'a>(roles: &[RoleView<'a>], seed: u64) -> Vec<Worker<'a>> {
    let mut out = Vec::new();
    for role in roles {
        for index in 0..role.count {
            out.push(Worker {
                worker: out.len() as u32,
                role: *role,
                index,
                seed: role_worker_seed(seed, role, index),
            });
        }
    }
    out
}

/// The loop every worker runs; `ctx.seed` is the worker's seed. `release`
/// waits for the others (it must be called exactly once, also when the
/// setup fails, or the threads' barrier would never open).
/// `counters`, when this step owns them, show its iterations to the host.
fn work(
    ctx: &mut Ctx,
    s: &ParallelStep,
    at: &str,
    w: &Worker,
    counters: Option<&WorkerCounters>,
    release: impl FnOnce(),
) -> WorkerReport {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    if let Some(c) = counters {
        c.started(w.worker, tid);
    }
    let mut report = work_loop(ctx, s, at, w, counters, release);
    report.pid = tid;
    if let Some(c) = counters {
        c.finished(w.worker);
    }
    report
}

fn work_loop(
    ctx: &mut Ctx,
    s: &ParallelStep,
    at: &str,
    w: &Worker,
    counters: Option<&WorkerCounters>,
    release: impl FnOnce(),
) -> WorkerReport {
    let mut report = WorkerReport {
        worker: w.worker,
        role: w.role.name.to_owned(),
        index: w.index,
        pid: 0,
        status: WorkerStatus::Pass,
        iterations: 0,
        detail: String::new(),
        signals: BTreeMap::new(),
        raced_reads: 0,
        seed: ctx.seed,
        jitter_us: Vec::new(),
        choices: Vec::new(),
        choices_truncated: false,
    };
    ctx.choices.clear();
    ctx.signals.clear();
    ctx.raced_reads = 0;
    let (setup_field, steps_field) = w.role.list_fields(at);
    let setup = (ctx.run_nested)(ctx, w.role.setup, &setup_field);
    release();
    if let Err((at, e)) = setup {
        report.status = WorkerStatus::Fail;
        report.detail = format!("setup {at}: {}", e.text());
        report.signals = std::mem::take(&mut ctx.signals);
        report.raced_reads = std::mem::take(&mut ctx.raced_reads);
        return report;
    }
    let mut jitter = seed::derive(ctx.seed, "jitter");
    let mut recorded = 0;
    let stop_at = s
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    for it in 0..s.iterations {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let result = (ctx.run_nested)(ctx, w.role.steps, &steps_field);
        for mut c in ctx.choices.drain(..) {
            c["iteration"] = it.into();
            recorded += c.to_string().len();
            if recorded > RECORDED_CHOICE_BYTES {
                report.choices_truncated = true;
            } else {
                report.choices.push(c);
            }
        }
        if let Err((at, e)) = result {
            report.status = WorkerStatus::Fail;
            report.detail = format!("iteration {}/{}, {at}: {}", it + 1, s.iterations, e.text());
            break;
        }
        report.iterations += 1;
        if let Some(c) = counters {
            c.iteration_done(w.worker);
        }
        if s.jitter_us > 0 {
            let us = seed::below(&mut jitter, s.jitter_us);
            if report.jitter_us.len() < RECORDED_JITTER {
                report.jitter_us.push(us);
            }
            std::thread::sleep(Duration::from_micros(us));
        }
    }
    report.signals = std::mem::take(&mut ctx.signals);
    report.raced_reads = std::mem::take(&mut ctx.raced_reads);
    report
}

/// A report for a worker that could not say anything itself.
fn lost(w: &Worker, status: WorkerStatus, detail: String) -> WorkerReport {
    WorkerReport {
        worker: w.worker,
        role: w.role.name.to_owned(),
        index: w.index,
        pid: 0,
        status,
        iterations: 0,
        detail,
        signals: BTreeMap::new(),
        raced_reads: 0,
        seed: w.seed,
        jitter_us: Vec::new(),
        choices: Vec::new(),
        choices_truncated: false,
    }
}

/// What one role's workers did together (the step's `data.roles`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
struct RoleOutcome {
    role: String,
    workers: u32,
    iterations: u64,
    failures: u64,
    signals: BTreeMap<Signal, u64>,
    /// Reads that saw a later `any_of` alternative (the race interleaved).
    raced_reads: u64,
}

fn role_outcomes(roles: &[RoleView], reports: &[WorkerReport]) -> Vec<RoleOutcome> {
    roles
        .iter()
        .map(|r| {
            let mut o = RoleOutcome {
                role: r.name.to_owned(),
                workers: r.count,
                ..RoleOutcome::default()
            };
            for w in reports.iter().filter(|w| w.role == r.name) {
                o.iterations += w.iterations;
                o.failures += u64::from(w.status != WorkerStatus::Pass);
                o.raced_reads += w.raced_reads;
                for (sig, n) in &w.signals {
                    *o.signals.entry(*sig).or_default() += n;
                }
            }
            o
        })
        .collect()
}

/// Check the counts of `who` (a role, or `all` for the step) against
/// `expect`; `failures` is the default failure bound. Problems are pushed.
fn check_counts(
    who: &str,
    o: &RoleOutcome,
    failures: Option<Count>,
    expect: Option<&WorkersExpect>,
    problems: &mut Vec<String>,
) {
    if let Some(want) = failures {
        if !want.allows(o.failures) {
            problems.push(format!(
                "{who}: {} failed worker(s), expected {want}",
                o.failures
            ));
        }
    }
    for (sig, want) in expect.map(|e| &e.signals).into_iter().flatten() {
        let got = o.signals.get(sig).copied().unwrap_or(0);
        if !want.allows(got) {
            problems.push(format!(
                "{who}: {sig:?} seen {got} time(s), expected {want}"
            ));
        }
    }
}

/// Every count the step and its roles expect that does not hold. A worker
/// that timed out is always a problem (the scenario's time is up).
fn problems(s: &ParallelStep, roles: &[RoleView], outcomes: &[RoleOutcome]) -> Vec<String> {
    let mut out = Vec::new();
    // Default: no role may fail, unless the step bounds the total.
    let default_failures = s.expect.failures.is_none().then_some(Count::Exactly(0));
    for (r, o) in roles.iter().zip(outcomes) {
        let failures = r.expect.and_then(|e| e.failures).or(default_failures);
        let who = if r.implicit {
            "workers".to_owned()
        } else {
            format!("role `{}`", r.name)
        };
        check_counts(&who, o, failures, r.expect, &mut out);
    }
    let mut all = RoleOutcome::default();
    for o in outcomes {
        all.failures += o.failures;
        for (sig, n) in &o.signals {
            *all.signals.entry(*sig).or_default() += n;
        }
    }
    check_counts(
        "all workers",
        &all,
        s.expect.failures,
        Some(&s.expect),
        &mut out,
    );
    out
}

fn summarise(
    s: &ParallelStep,
    what: &str,
    seed: u64,
    roles: &[RoleView],
    mut reports: Vec<WorkerReport>,
) -> StepResult {
    reports.sort_by_key(|r| r.worker);
    let total: u64 = reports.iter().map(|r| r.iterations).sum();
    let outcomes = role_outcomes(roles, &reports);
    let mut problems = problems(s, roles, &outcomes);
    let timed_out = reports
        .iter()
        .filter(|r| r.status == WorkerStatus::Timeout)
        .count();
    if timed_out > 0 {
        problems.push(format!(
            "{timed_out} worker(s) killed at the scenario deadline"
        ));
    }
    if problems.is_empty() {
        // Outcomes here; seeds and choices are in `choices` (see `record`).
        let workers: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "worker": r.worker,
                    "role": r.role,
                    "index": r.index,
                    "pid": r.pid,
                    "status": r.status,
                    "iterations": r.iterations,
                    "signals": r.signals,
                    "detail": r.detail,
                })
            })
            .collect();
        let roles_text: Vec<String> = outcomes.iter().map(role_text).collect();
        return Ok(Outcome {
            detail: format!(
                "{} {what} passed, {total} iterations in all (seed {seed}): {}",
                reports.len(),
                roles_text.join("; ")
            ),
            data: serde_json::json!({
                "seed": seed,
                "iterations": total,
                "roles": outcomes,
                "workers": workers,
            }),
        });
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.status != WorkerStatus::Pass)
        .map(|r| {
            format!(
                "{what} {} ({} {}) {}: {}",
                r.worker, r.role, r.index, r.status, r.detail
            )
        })
        .collect();
    let roles_text: Vec<String> = outcomes.iter().map(role_text).collect();
    Err(StepError::Fail(format!(
        "{} (seed {seed}; {}){}{}",
        problems.join("; "),
        roles_text.join("; "),
        if failed.is_empty() { "" } else { ": " },
        failed.join("; ")
    )))
}

/// `faulter: 3 workers, 600 iterations, 0 failed, SIGSEGV 4`.
fn role_text(o: &RoleOutcome) -> String {
    let mut t = format!(
        "{}: {} workers, {} iterations, {} failed",
        o.role, o.workers, o.iterations, o.failures
    );
    for (sig, n) in &o.signals {
        t.push_str(&format!(", {sig:?} {n}"));
    }
    t
}

/// Record the step's choices in `ctx.choices`, which the executor puts in
/// the step's data whether it passes or fails.
fn record(ctx: &mut Ctx, what: &str, seed: u64, order: &[u32], reports: &[WorkerReport]) {
    let workers: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "worker": r.worker,
                "role": r.role,
                "index": r.index,
                "pid": r.pid,
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
    if ctx.shared_mm {
        return Err(StepError::Error(
            "processes cannot be forked while the threads of a `threads:` step run (the agent forks only while it has a single thread)".into(),
        ));
    }
    let seed = s.seed.unwrap_or_else(|| ctx.draw());
    // Where the roles' lists are written, for naming a step that fails.
    let at = format!("{}.processes", ctx.at);
    let roles = s.role_views();
    let all = workers(&roles, seed);
    let order = start_order(seed, all.len() as u32);
    let err = |e: std::io::Error| StepError::Error(e.to_string());
    let counters = WorkerCounters::claim(all.len() as u32, s.iterations);
    if let Some(c) = &counters {
        c.name_roles(roles.iter().map(|r| (r.name, r.count)));
    }
    let (go_rx, go_tx) = sys::pipe().map_err(err)?;
    let mut children = Vec::new();
    for &i in &order {
        let w = &all[i as usize];
        // The child runs its steps and exits; it never returns here.
        let child = worker::spawn(|res_tx| {
            sys::close(go_tx);
            ctx.forget_mappings();
            ctx.seed = w.seed;
            let report = work(ctx, s, &at, w, counters.as_ref(), || {
                let mut b = [0u8; 1];
                // Blocks until the parent closes the write end: all start
                // together.
                // SAFETY: `b` is a live 1-byte local, matching the count of 1.
                unsafe { libc::read(go_rx, b.as_mut_ptr().cast(), 1) };
            });
            let line = serde_json::to_vec(&report).unwrap_or_default();
            // SAFETY: `line` is live and holds `line.len()` initialised bytes.
            unsafe { libc::write(res_tx, line.as_ptr().cast(), line.len()) };
            i32::from(report.status != WorkerStatus::Pass)
        })
        .map_err(|e| StepError::Error(format!("fork of process {i}: {e}")))?;
        children.push((w, child));
    }
    sys::close(go_rx);
    sys::close(go_tx); // release
    let mut reports = Vec::new();
    for (w, child) in children {
        let status = sys::wait_child(child.pid, ctx.deadline);
        let out = child.output();
        let fault = child.fault();
        let mut report = match (status, serde_json::from_slice::<WorkerReport>(&out)) {
            (None, _) => lost(
                w,
                WorkerStatus::Timeout,
                "killed at the scenario deadline".into(),
            ),
            (Some(_), Ok(r)) => r,
            (Some(st), Err(_)) => {
                let mut r = lost(
                    w,
                    WorkerStatus::Crashed,
                    format!(
                        "{}{}",
                        sys::describe_status(st),
                        fault.map(|a| format!(" at {a:#x}")).unwrap_or_default()
                    ),
                );
                // A worker killed by a signal has seen it.
                let killed_by = libc::WIFSIGNALED(st).then(|| libc::WTERMSIG(st));
                if let Some(sig) = killed_by.and_then(Signal::from_number) {
                    r.signals.insert(sig, 1);
                }
                r
            }
        };
        // A process that could not report still had its pid.
        if report.pid == 0 {
            report.pid = child.pid as u32;
        }
        reports.push(report);
    }
    record(ctx, "processes", seed, &order, &reports);
    summarise(s, "processes", seed, &roles, reports)
}

/// `threads:` step. A fault in a thread kills the whole worker process
/// (it is reported by PID 1), as it would in any program.
pub fn threads(ctx: &mut Ctx, s: &ParallelStep) -> StepResult {
    let seed = s.seed.unwrap_or_else(|| ctx.draw());
    let at = format!("{}.threads", ctx.at);
    let roles = s.role_views();
    let all = workers(&roles, seed);
    let order = start_order(seed, all.len() as u32);
    let counters = WorkerCounters::claim(all.len() as u32, s.iterations);
    if let Some(c) = &counters {
        c.name_roles(roles.iter().map(|r| (r.name, r.count)));
    }
    let counters = counters.as_ref();
    let barrier = std::sync::Barrier::new(all.len());
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = order
            .iter()
            .map(|&i| {
                let w = &all[i as usize];
                let mut tctx = ctx.clone_for_thread(w.seed);
                let barrier = &barrier;
                let at = at.as_str();
                scope.spawn(move || {
                    work(&mut tctx, s, at, w, counters, || {
                        barrier.wait();
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&order)
            .map(|(h, &i)| {
                h.join().unwrap_or_else(|_| {
                    lost(
                        &all[i as usize],
                        WorkerStatus::Crashed,
                        "thread panicked".into(),
                    )
                })
            })
            .collect::<Vec<_>>()
    });
    record(ctx, "threads", seed, &order, &reports);
    summarise(s, "threads", seed, &roles, reports)
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

    fn role(name: &str, count: u32, expect: WorkersExpect) -> arena_protocol::scenario::Role {
        arena_protocol::scenario::Role {
            name: name.into(),
            count,
            setup: vec![],
            steps: vec![],
            expect,
        }
    }

    fn step(roles: Vec<arena_protocol::scenario::Role>, expect: WorkersExpect) -> ParallelStep {
        ParallelStep {
            count: None,
            iterations: 1,
            duration_ms: None,
            seed: None,
            jitter_us: 0,
            steps: vec![],
            roles,
            expect,
        }
    }

    #[test]
    fn role_seeds_come_from_the_role_name_and_index() {
        let s = step(
            vec![
                role("faulter", 3, WorkersExpect::default()),
                role("freer", 1, WorkersExpect::default()),
            ],
            WorkersExpect::default(),
        );
        let all = workers(&s.role_views(), 42);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].worker, 3);
        assert_eq!((all[3].role.name, all[3].index), ("freer", 0));
        let seeds: std::collections::HashSet<u64> = all.iter().map(|w| w.seed).collect();
        assert_eq!(seeds.len(), 4);
        // Adding a role before it changes no other role's seeds.
        let more = step(
            vec![
                role("reader", 2, WorkersExpect::default()),
                role("faulter", 3, WorkersExpect::default()),
                role("freer", 1, WorkersExpect::default()),
            ],
            WorkersExpect::default(),
        );
        let again = workers(&more.role_views(), 42);
        assert_eq!(again[5].seed, all[3].seed);
        assert_eq!(again[2].seed, all[0].seed);
        // The single-list form keeps its old seeds.
        let mut single = step(vec![], WorkersExpect::default());
        single.count = Some(2);
        let w = workers(&single.role_views(), 42);
        assert_eq!(w[1].seed, worker_seed(42, 1));
        assert_eq!(w[1].role.name, "worker");
    }

    fn report(role: &str, status: WorkerStatus, segv: u64) -> WorkerReport {
        let mut r = WorkerReport {
            worker: 0,
            role: role.into(),
            index: 0,
            pid: 0,
            status,
            iterations: 5,
            detail: String::new(),
            signals: BTreeMap::new(),
            raced_reads: 2,
            seed: 0,
            jitter_us: vec![],
            choices: vec![],
            choices_truncated: false,
        };
        if segv > 0 {
            r.signals.insert(Signal::SIGSEGV, segv);
        }
        r
    }

    #[test]
    fn counts_are_checked_per_role_and_across_workers() {
        let at_least = |n| Count::Range {
            at_least: Some(n),
            at_most: None,
        };
        let reports = vec![
            report("faulter", WorkerStatus::Pass, 2),
            report("faulter", WorkerStatus::Fail, 1),
            report("freer", WorkerStatus::Pass, 0),
        ];
        let check = |s: &ParallelStep| {
            let roles = s.role_views();
            let outcomes = role_outcomes(&roles, &reports);
            problems(s, &roles, &outcomes)
        };
        // Default: no worker may fail.
        let s = step(
            vec![
                role("faulter", 2, WorkersExpect::default()),
                role("freer", 1, WorkersExpect::default()),
            ],
            WorkersExpect::default(),
        );
        assert_eq!(
            check(&s),
            vec!["role `faulter`: 1 failed worker(s), expected exactly 0"]
        );
        let outcomes = role_outcomes(&s.role_views(), &reports);
        assert_eq!(outcomes[0].iterations, 10);
        assert_eq!(outcomes[0].signals.get(&Signal::SIGSEGV), Some(&3));
        assert_eq!(
            outcomes[0].raced_reads, 4,
            "two faulters, two raced reads each"
        );
        // A role may tolerate failures; the step counts signals in all.
        let tolerant = WorkersExpect {
            failures: Some(at_least(0)),
            signals: BTreeMap::from([(Signal::SIGSEGV, at_least(1))]),
        };
        let mut s = step(
            vec![
                role("faulter", 2, tolerant),
                role("freer", 1, WorkersExpect::default()),
            ],
            WorkersExpect {
                failures: None,
                signals: BTreeMap::from([(Signal::SIGSEGV, Count::Exactly(3))]),
            },
        );
        assert!(check(&s).is_empty(), "{:?}", check(&s));
        s.expect.signals.insert(Signal::SIGSEGV, Count::Exactly(0));
        assert_eq!(
            check(&s),
            vec!["all workers: SIGSEGV seen 3 time(s), expected exactly 0"]
        );
        // A step-level failure bound replaces the roles' default of 0.
        let s = step(
            vec![
                role("faulter", 2, WorkersExpect::default()),
                role("freer", 1, WorkersExpect::default()),
            ],
            WorkersExpect {
                failures: Some(Count::Range {
                    at_least: None,
                    at_most: Some(1),
                }),
                signals: BTreeMap::new(),
            },
        );
        assert!(check(&s).is_empty(), "{:?}", check(&s));
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

    #[test]
    fn processes_inside_threads_are_an_error_not_a_fork() {
        let (ctx, _) = crate::steps::bounds::testing::fake_arena(9, 4, 4);
        let mut t = ctx.clone_for_thread(1);
        let mut s = step(vec![], WorkersExpect::default());
        s.count = Some(2);
        match processes(&mut t, &s) {
            Err(StepError::Error(e)) => assert!(
                e.starts_with(
                    "processes cannot be forked while the threads of a `threads:` step run"
                ),
                "{e}"
            ),
            other => panic!("expected a step error, got {other:?}"),
        }
    }
}

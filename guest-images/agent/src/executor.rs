//! Runs a scenario's steps in order, reporting each one on the results
//! channel, and publishes the running step in the shared page PID 1 reads:
//! PID 1 is the watchdog ([`crate::watchdog`]) that sends `progress` every
//! second (the host judges stalls from it) and reports a timeout if a step
//! outlives the scenario's hard cap. The worker has no watchdog thread: it
//! forks (`processes:`, touch probes), and forks only while single-threaded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use arena_protocol::message::hard_cap_s;
use arena_protocol::scenario::forks_inside_threads;
use arena_protocol::{GuestMessage, Scenario, StepStatus};

use crate::channel::Channel;
use crate::counters::{map_counters, scenario_done, step_done, step_started};
use crate::steps::{self, Ctx, Outcome};

/// Where the worker hands its verdict to PID 1, which sends it as `done`
/// only once the worker has exited (so map teardown happens before it).
static VERDICT_FD: AtomicI32 = AtomicI32::new(-1);

/// Set the pipe the worker's verdict goes to.
pub fn set_verdict_fd(fd: i32) {
    VERDICT_FD.store(fd, Ordering::Relaxed);
}

/// Hand the scenario's verdict to PID 1 (one `done` message as a JSON line).
pub fn verdict(status: StepStatus, reason: String) {
    let done = GuestMessage::Done {
        status,
        reason,
        killed: None,
    };
    let mut line = serde_json::to_vec(&done).unwrap_or_default();
    line.push(b'\n');
    let fd = VERDICT_FD.load(Ordering::Relaxed);
    // SAFETY: writing a local buffer to our pipe (a short, atomic write).
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// Run a whole scenario, streaming events; returns whether it passed.
pub fn run_scenario(channel: &Channel, scenario: &Scenario, seed: u64) -> bool {
    let start = Instant::now();
    // `timeout_s` bounds a stall, which the host judges from `progress`;
    // the guest only enforces the hard cap (PID 1 does, see
    // `crate::watchdog`), so it never kills a worker that is still
    // progressing before the host would give up.
    let cap_s = hard_cap_s(scenario.timeout_s);
    let deadline = start + Duration::from_secs(cap_s);
    // PID 1 mapped them before the fork (this is a no-op then).
    map_counters();
    // Before anything is allocated: all of it is the scenario's.
    crate::cgroup::join();
    let mut ctx = Ctx {
        arenas: HashMap::new(),
        objects: HashMap::new(),
        seed,
        deadline,
        last_out: [0; 4],
        shared_mm: false,
        baselines: HashMap::new(),
        choices: Vec::new(),
        signals: Default::default(),
        raced_reads: 0,
        at: String::new(),
        run_nested: steps::run_steps,
    };
    steps::set_lines(scenario.lines.clone());
    if let Some(why) = crate::requirements::unmet(&scenario.requires) {
        // Not a pass: a skip that says what the kernel lacks.
        scenario_done();
        verdict(StepStatus::Skip, why);
        return true;
    }
    // What would fork beside running threads is refused before any step
    // runs (the runner's validation says the same about the file).
    if let Some((field, why)) = forks_inside_threads(&scenario.steps, "steps")
        .into_iter()
        .next()
    {
        scenario_done();
        verdict(StepStatus::Error, format!("{field}: {why}"));
        return false;
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        let path = i.to_string();
        let kind = step.kind();
        let at = steps::step_ref("steps", &scenario.steps, i);
        ctx.at = format!("steps[{i}]");
        let t0 = Instant::now();
        channel.send(&GuestMessage::StepStarted {
            path: path.clone(),
            kind: kind.into(),
            at: Some(at.clone()),
        });
        // After `step_started`, so no `progress` comes before it.
        step_started(i);
        let result =
            steps::run_top_level(&mut ctx, step, channel).map(|o| o.with_choices(&mut ctx));
        let duration_ms = t0.elapsed().as_millis() as u64;
        match result {
            Ok(outcome) => {
                // Before `step_ended`, so no `progress` follows it.
                step_done();
                channel.send(&GuestMessage::StepEnded {
                    path,
                    kind: kind.into(),
                    status: StepStatus::Pass,
                    detail: outcome.detail,
                    duration_ms,
                    data: outcome.data,
                })
            }
            Err(e) => {
                scenario_done();
                channel.send(&GuestMessage::StepEnded {
                    path: path.clone(),
                    kind: kind.into(),
                    status: e.status(),
                    detail: e.text().to_owned(),
                    duration_ms,
                    // A failing step's choices are what a replay must see.
                    data: Outcome::said("").with_choices(&mut ctx).data,
                });
                verdict(e.status(), format!("{at}: {}", e.text()));
                return false;
            }
        }
    }
    scenario_done();
    verdict(StepStatus::Pass, String::new());
    true
}

//! Runs a scenario's steps in order, reporting each one on the results
//! channel, with a watchdog that sends `progress` every second (the host
//! judges stalls from it) and reports a timeout if a step outlives the
//! scenario's hard cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arena_protocol::message::hard_cap_s;
use arena_protocol::scenario::{PageSet, Signal, Step, PAGE_SIZE};
use arena_protocol::{GuestMessage, Scenario, StepStatus, WorkerProgress};

use crate::channel::Channel;
use crate::steps;

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

/// What a step did and saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Human-readable account.
    pub detail: String,
    /// Structured extras.
    pub data: serde_json::Value,
}

impl Outcome {
    /// An outcome with only a detail line.
    pub fn said(detail: impl Into<String>) -> Self {
        Outcome {
            detail: detail.into(),
            data: serde_json::Value::Null,
        }
    }

    /// Move the choices the step made into its data (`choices`), where the
    /// host records them in events.jsonl and the summary.
    pub fn with_choices(mut self, ctx: &mut Ctx) -> Self {
        if ctx.choices.is_empty() {
            return self;
        }
        let choices = serde_json::Value::Array(std::mem::take(&mut ctx.choices));
        match &mut self.data {
            serde_json::Value::Object(m) => {
                m.insert("choices".into(), choices);
            }
            d => *d = serde_json::json!({ "choices": choices }),
        }
        self
    }
}

/// Why a step did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// An expectation did not hold: expected vs. actual.
    Fail(String),
    /// The step could not be carried out.
    Error(String),
}

impl StepError {
    /// Protocol status of this error.
    pub fn status(&self) -> StepStatus {
        match self {
            StepError::Fail(_) => StepStatus::Fail,
            StepError::Error(_) => StepStatus::Error,
        }
    }
    /// The message.
    pub fn text(&self) -> &str {
        match self {
            StepError::Fail(s) | StepError::Error(s) => s,
        }
    }
}

/// Result of running one step.
pub type StepResult = Result<Outcome, StepError>;

/// An arena as this process knows it.
#[derive(Debug, Clone)]
pub struct ArenaState {
    /// Map fd.
    pub fd: i32,
    /// Size in pages.
    pub pages: u64,
    /// Creation flags.
    pub flags: u32,
    /// The arena's user address, once known (mapped here or in an ancestor).
    pub addr: Option<u64>,
    /// Length in pages of the mapping as the last mmap or mremap made it:
    /// what a forked child maps again (the kernel wants every mapping of an
    /// arena to have the same length).
    pub mapped_pages: u64,
    /// Pages this process has mapped now, relative to `addr`. Every user
    /// access is checked against it: an address outside it is not arena
    /// memory here and may be the agent's own.
    pub mapped: PageSet,
}

impl ArenaState {
    /// Whether this process has any of the arena mapped.
    pub fn is_mapped(&self) -> bool {
        !self.mapped.is_empty()
    }

    /// The user address of byte `offset` of `page`, if the arena has an
    /// address and the sum does not overflow.
    pub fn addr_of(&self, page: u64, offset: u64) -> Option<u64> {
        page.checked_mul(PAGE_SIZE)?
            .checked_add(offset)?
            .checked_add(self.addr?)
    }
}

/// Per-process execution state.
pub struct Ctx {
    /// Arenas by id.
    pub arenas: HashMap<String, ArenaState>,
    /// Loaded BPF objects by id.
    pub objects: HashMap<String, steps::bpf::LoadedObject>,
    /// Seed for random choices.
    pub seed: u64,
    /// When the scenario's time is up.
    pub deadline: Instant,
    /// `out` words of the last `bpf_run` (roots for `user_walk`).
    pub last_out: [u64; 4],
    /// Running in a `threads:` worker: the other threads use the same
    /// mappings (with their own copy of this state), so this one must not
    /// unmap or move them.
    pub shared_mm: bool,
    /// `memory` baselines by name.
    pub baselines: HashMap<String, crate::steps::memory::Sample>,
    /// Random choices made since the last report (shuffled page orders),
    /// recorded in the step's data so a run with the same seed can be
    /// checked to have made the same ones.
    pub choices: Vec<serde_json::Value>,
    /// Signals touches survived in a child because they were accepted
    /// (counted for a worker's report, where races expect them).
    pub signals: std::collections::BTreeMap<Signal, u64>,
    /// Reads an `any_of` accepted through a later alternative: the race
    /// went the other way (counted for a worker's report).
    pub raced_reads: u64,
}

impl Ctx {
    /// The arena `id` or a step error naming it.
    pub fn arena(&self, id: &str) -> Result<&ArenaState, StepError> {
        self.arenas
            .get(id)
            .ok_or_else(|| StepError::Error(format!("unknown arena `{id}`")))
    }

    /// Mutable access to arena `id`.
    pub fn arena_mut(&mut self, id: &str) -> Result<&mut ArenaState, StepError> {
        self.arenas
            .get_mut(id)
            .ok_or_else(|| StepError::Error(format!("unknown arena `{id}`")))
    }

    /// After fork: mappings are not inherited (arena VMAs are `VM_DONTCOPY`),
    /// and the new process's mm is its own (even when forked from a thread).
    pub fn forget_mappings(&mut self) {
        for a in self.arenas.values_mut() {
            a.mapped = PageSet::new();
        }
        self.shared_mm = false;
    }

    /// The next seed of this process's stream: each randomised step draws
    /// one, so every step and every iteration chooses anew, reproducibly.
    pub fn draw(&mut self) -> u64 {
        arena_protocol::seed::draw(&mut self.seed)
    }

    /// A copy for a thread of the same process (same mm, same fds).
    pub fn clone_for_thread(&self, seed: u64) -> Ctx {
        Ctx {
            arenas: self.arenas.clone(),
            objects: self.objects.clone(),
            seed,
            deadline: self.deadline,
            last_out: self.last_out,
            shared_mm: true,
            baselines: self.baselines.clone(),
            choices: Vec::new(),
            signals: Default::default(),
            raced_reads: 0,
        }
    }
}

/// Run `steps` in order; the first failing step ends the list.
pub fn run_steps(ctx: &mut Ctx, list: &[Step]) -> Result<(), (usize, StepError)> {
    for (i, step) in list.iter().enumerate() {
        steps::run(ctx, step).map_err(|e| (i, e))?;
        if let Some(c) = counters() {
            c.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Worker slots in the shared progress page (more workers go uncounted
/// in the iteration display; their nested steps still tick).
const SLOTS: usize = 500;
/// A slot's flag: the worker is done.
const FINISHED: u64 = 1 << 63;

/// Progress counters in one `MAP_SHARED` anonymous page mapped before any
/// fork, so forked `processes:` workers update what the watchdog reads.
#[repr(C)]
pub struct Counters {
    /// Nested steps finished, by any worker (the host's progress measure).
    ticks: AtomicU64,
    /// 1 while a top-level `processes:`/`threads:` step owns `slots`.
    owner: AtomicU32,
    /// Workers of the owning step.
    workers: AtomicU32,
    /// Iterations per worker of the owning step.
    iterations: AtomicU64,
    /// Per worker: iterations done, plus [`FINISHED`].
    slots: [AtomicU64; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Counters>() <= PAGE_SIZE as usize);

static COUNTERS: AtomicPtr<Counters> = AtomicPtr::new(std::ptr::null_mut());

/// The shared counters, once mapped.
fn counters() -> Option<&'static Counters> {
    // SAFETY: set once to a page that is never unmapped; all fields atomic.
    unsafe { COUNTERS.load(Ordering::Acquire).as_ref() }
}

/// Map the shared counters (idempotent; without them progress shows no
/// ticks, which only makes stalls look likelier).
fn map_counters() {
    if counters().is_some() {
        return;
    }
    // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid
    // `Counters` (all atomics).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p != libc::MAP_FAILED {
        COUNTERS.store(p.cast(), Ordering::Release);
    }
}

/// Ownership of the worker slots by one parallel step; released on drop.
pub struct WorkerCounters(&'static Counters);

impl WorkerCounters {
    /// Claim the slots for a step of `workers` × `iterations`; `None` when
    /// an enclosing parallel step holds them (only the outermost is shown).
    pub fn claim(workers: u32, iterations: u64) -> Option<WorkerCounters> {
        let c = counters()?;
        c.owner
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        for slot in &c.slots {
            slot.store(0, Ordering::Relaxed);
        }
        c.iterations.store(iterations, Ordering::Relaxed);
        c.workers.store(workers, Ordering::Release);
        Some(WorkerCounters(c))
    }

    /// Worker `worker` finished an iteration.
    pub fn iteration_done(&self, worker: u32) {
        if let Some(slot) = self.0.slots.get(worker as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Worker `worker` ended.
    pub fn finished(&self, worker: u32) {
        if let Some(slot) = self.0.slots.get(worker as usize) {
            slot.fetch_or(FINISHED, Ordering::Relaxed);
        }
    }
}

impl Drop for WorkerCounters {
    fn drop(&mut self) {
        self.0.workers.store(0, Ordering::Release);
        self.0.owner.store(0, Ordering::Release);
    }
}

/// How far the workers got, from the slot words of a step with `workers`
/// workers of `iterations` each; `None` when no parallel step runs.
fn worker_progress(slots: &[u64], workers: u32, iterations: u64) -> Option<WorkerProgress> {
    if workers == 0 {
        return None;
    }
    let counted = &slots[..slots.len().min(workers as usize)];
    let running: Vec<u64> = counted
        .iter()
        .filter(|&&w| w & FINISHED == 0)
        .copied()
        .collect();
    let slowest = running.iter().min().copied().unwrap_or(iterations);
    Some(WorkerProgress {
        iteration: (slowest + 1).min(iterations.max(1)),
        iterations,
        running: running.len() as u32 + workers.saturating_sub(counted.len() as u32),
        workers,
    })
}

/// A snapshot of the shared counters: (ticks, worker progress).
fn read_counters() -> (u64, Option<WorkerProgress>) {
    let Some(c) = counters() else {
        return (0, None);
    };
    let workers = c.workers.load(Ordering::Acquire);
    let slots: Vec<u64> = c
        .slots
        .iter()
        .take(workers as usize)
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let progress = worker_progress(&slots, workers, c.iterations.load(Ordering::Relaxed));
    (c.ticks.load(Ordering::Relaxed), progress)
}

/// How often the watchdog tells the host how far the scenario got.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Shared between the step loop and the watchdog.
#[derive(Default)]
struct Progress {
    current: Option<(String, &'static str, Instant)>,
    finished: bool,
}

/// Run a whole scenario, streaming events; returns whether it passed.
pub fn run_scenario(channel: &'static Channel, scenario: &Scenario, seed: u64) -> bool {
    let start = Instant::now();
    // `timeout_s` bounds a stall, which the host judges from `progress`;
    // the guest only enforces the hard cap, so it never kills a worker
    // that is still progressing before the host would give up.
    let cap_s = hard_cap_s(scenario.timeout_s);
    let deadline = start + Duration::from_secs(cap_s);
    map_counters();
    // Before anything is allocated: all of it is the scenario's.
    crate::cgroup::join();
    let progress = Arc::new(Mutex::new(Progress::default()));
    spawn_watchdog(channel, deadline, cap_s, progress.clone());
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
    };
    if let Some(why) = crate::requirements::unmet(&scenario.requires) {
        // Not a pass: a skip that says what the kernel lacks.
        progress.lock().expect("lock").finished = true;
        verdict(StepStatus::Skip, why);
        return true;
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        let path = i.to_string();
        let kind = step.kind();
        let t0 = Instant::now();
        progress.lock().expect("lock").current = Some((path.clone(), kind, t0));
        channel.send(&GuestMessage::StepStarted {
            path: path.clone(),
            kind: kind.into(),
        });
        let result =
            steps::run_top_level(&mut ctx, step, channel).map(|o| o.with_choices(&mut ctx));
        let duration_ms = t0.elapsed().as_millis() as u64;
        let mut p = progress.lock().expect("lock");
        p.current = None;
        match result {
            Ok(outcome) => channel.send(&GuestMessage::StepEnded {
                path,
                kind: kind.into(),
                status: StepStatus::Pass,
                detail: outcome.detail,
                duration_ms,
                data: outcome.data,
            }),
            Err(e) => {
                p.finished = true;
                channel.send(&GuestMessage::StepEnded {
                    path: path.clone(),
                    kind: kind.into(),
                    status: e.status(),
                    detail: e.text().to_owned(),
                    duration_ms,
                    // A failing step's choices are what a replay must see.
                    data: Outcome::said("").with_choices(&mut ctx).data,
                });
                verdict(e.status(), format!("step {path} ({kind}): {}", e.text()));
                return false;
            }
        }
    }
    progress.lock().expect("lock").finished = true;
    verdict(StepStatus::Pass, String::new());
    true
}

/// Send `progress` every [`PROGRESS_EVERY`] while a step runs; at
/// `deadline` (the hard cap) report the open step as timed out and end the
/// worker.
fn spawn_watchdog(
    channel: &'static Channel,
    deadline: Instant,
    cap_s: u64,
    progress: Arc<Mutex<Progress>>,
) {
    std::thread::spawn(move || loop {
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(PROGRESS_EVERY));
        // Held while sending, so no `progress` follows its step's end.
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        if p.finished {
            return;
        }
        if Instant::now() < deadline {
            if let Some((path, kind, started)) = &p.current {
                let (ticks, workers) = read_counters();
                channel.send(&GuestMessage::Progress {
                    path: path.clone(),
                    kind: (*kind).into(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    ticks,
                    workers,
                });
            }
            continue;
        }
        let (path, kind, started) = p
            .current
            .clone()
            .unwrap_or_else(|| ("?".into(), "?", Instant::now()));
        let at = read_counters()
            .1
            .map(|w| format!(", {w}"))
            .unwrap_or_default();
        let detail = format!(
            "hard cap {cap_s} s reached while still running{at}, {:.1} s into the step",
            started.elapsed().as_secs_f64()
        );
        channel.send(&GuestMessage::StepEnded {
            path: path.clone(),
            kind: kind.into(),
            status: StepStatus::Timeout,
            detail: detail.clone(),
            duration_ms: started.elapsed().as_millis() as u64,
            data: serde_json::Value::Null,
        });
        verdict(
            StepStatus::Timeout,
            format!("step {path} ({kind}): {detail}"),
        );
        channel.drain();
        // SAFETY: _exit has no preconditions; it ends the whole worker (every
        // thread, no destructors run), and PID 1 then powers the VM off.
        unsafe { libc::_exit(3) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_progress_names_the_slowest_running_worker() {
        assert_eq!(worker_progress(&[], 0, 10), None);
        let w = worker_progress(&[36, 40, 50, 200 | FINISHED], 4, 200).unwrap();
        assert_eq!(w.to_string(), "iteration 37/200 in 3 of 4 workers");
        // All done: the last iteration, none running.
        let w = worker_progress(&[5 | FINISHED, 5 | FINISHED], 2, 5).unwrap();
        assert_eq!(w.to_string(), "iteration 5/5 in 0 of 2 workers");
        // Workers beyond the slots count as running.
        let w = worker_progress(&[1], 3, 4).unwrap();
        assert_eq!((w.iteration, w.running), (2, 3));
    }

    #[test]
    fn a_claimed_step_shows_its_workers_and_nested_claims_do_not() {
        map_counters();
        let claim = WorkerCounters::claim(2, 10).unwrap();
        assert!(WorkerCounters::claim(3, 5).is_none());
        claim.iteration_done(0);
        claim.iteration_done(1);
        claim.iteration_done(1);
        let w = read_counters().1.unwrap();
        assert_eq!(w.to_string(), "iteration 2/10 in 2 of 2 workers");
        claim.finished(0);
        assert_eq!(read_counters().1.unwrap().iteration, 3);
        drop(claim);
        assert_eq!(read_counters().1, None);
        assert!(WorkerCounters::claim(1, 1).is_some());
    }

    #[test]
    fn counters_fit_a_page() {
        assert!(std::mem::size_of::<Counters>() <= PAGE_SIZE as usize);
    }
}

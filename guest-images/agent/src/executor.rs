//! Runs a scenario's steps in order, reporting each one on the results
//! channel, with a watchdog that reports a timeout if a step outlives the
//! scenario's deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arena_protocol::scenario::{PageSet, Signal, Step, PAGE_SIZE};
use arena_protocol::{GuestMessage, Scenario, StepStatus};

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
    let mut line = serde_json::to_vec(&GuestMessage::Done { status, reason }).unwrap_or_default();
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
    }
    Ok(())
}

/// Shared between the step loop and the watchdog.
#[derive(Default)]
struct Progress {
    current: Option<(String, &'static str, Instant)>,
    finished: bool,
}

/// Run a whole scenario, streaming events; returns whether it passed.
pub fn run_scenario(channel: &'static Channel, scenario: &Scenario, seed: u64) -> bool {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(scenario.timeout_s);
    let progress = Arc::new(Mutex::new(Progress::default()));
    spawn_watchdog(channel, deadline, progress.clone());
    let mut ctx = Ctx {
        arenas: HashMap::new(),
        objects: HashMap::new(),
        seed,
        deadline,
        last_out: [0; 4],
        shared_mm: false,
        choices: Vec::new(),
        signals: Default::default(),
        raced_reads: 0,
    };
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

fn spawn_watchdog(channel: &'static Channel, deadline: Instant, progress: Arc<Mutex<Progress>>) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let p = progress.lock().unwrap_or_else(|e| e.into_inner());
        if p.finished {
            return;
        }
        let (path, kind, started) = p
            .current
            .clone()
            .unwrap_or_else(|| ("?".into(), "?", Instant::now()));
        let detail = format!(
            "still running after {:.1} s when the scenario timeout expired",
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
        // SAFETY: ending the worker process; PID 1 powers the VM off.
        unsafe { libc::_exit(3) };
    });
}

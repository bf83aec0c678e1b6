//! What steps share: the per-process execution state ([`Ctx`]) a step
//! runs with, the arenas it knows, and what a step returns ([`Outcome`],
//! [`StepError`]).

use std::collections::HashMap;
use std::time::Instant;

use arena_protocol::scenario::{errno_name, PageSet, Signal, Step, SyscallExpect, PAGE_SIZE};
use arena_protocol::{StepRef, StepStatus};

use super::object::LoadedObject;

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
    pub objects: HashMap<String, LoadedObject>,
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
    pub baselines: HashMap<String, Sample>,
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
    /// Field path of the step running (`steps[3]`,
    /// `steps[3].repeat.steps[1]`): where its nested lists are written.
    pub at: String,
    /// Runs a nested list of steps (see [`NestedRunner`]).
    pub run_nested: NestedRunner,
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
            at: self.at.clone(),
            run_nested: self.run_nested,
        }
    }
}

/// Every source, read at one moment (what a baseline records).
#[derive(Debug, Clone)]
pub struct Sample {
    /// The cgroup's `memory.current` in bytes, or why it could not be read
    /// (a check of it is then an error).
    pub(super) cgroup: Result<u64, String>,
    /// `/proc/meminfo`, KiB by field.
    pub(super) meminfo: HashMap<String, i64>,
    /// `/proc/vmstat`, by counter.
    pub(super) vmstat: HashMap<String, i64>,
}

/// Compare a syscall's result with the expectation. `Ok(Some(v))`: it
/// succeeded as expected; `Ok(None)`: it failed with the expected errno.
pub fn check_errno<T>(
    what: &str,
    result: Result<T, i32>,
    expect: &SyscallExpect,
) -> Result<Option<T>, StepError> {
    match (result, expect.errno) {
        (Ok(v), None) => Ok(Some(v)),
        (Err(n), Some(e)) if n == e.number() => Ok(None),
        (Err(n), Some(e)) => Err(StepError::Fail(format!(
            "{what}: expected {}, got {}",
            errno_name(e.number()),
            errno_name(n)
        ))),
        (Ok(_), Some(e)) => Err(StepError::Fail(format!(
            "{what}: expected {}, but it succeeded",
            errno_name(e.number())
        ))),
        (Err(n), None) => Err(StepError::Fail(format!(
            "{what}: expected success, got {}",
            errno_name(n)
        ))),
    }
}

/// Runs a nested list of steps (`repeat`, `sweep` cases, roles): the
/// dispatcher's `run_steps`, handed down in [`Ctx::run_nested`] so the
/// compound steps need not call back up into the dispatcher's module.
pub type NestedRunner = fn(&mut Ctx, &[Step], &str) -> Result<(), (StepRef, StepError)>;

//! The shared progress page: one `MAP_SHARED` anonymous page that PID 1
//! maps before it forks the worker. The worker publishes its running step
//! and nested-step ticks there, parallel steps their workers' iterations,
//! and PID 1's watchdog reads them; it also holds the turn on the results
//! channel that PID 1 and the worker take before writing a message.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arena_protocol::scenario::PAGE_SIZE;
use arena_protocol::WorkerProgress;

/// Worker slots in the shared progress page (more workers go uncounted
/// in the iteration display; their nested steps still tick).
const SLOTS: usize = 500;
/// A slot's flag: the worker is done.
const FINISHED: u64 = 1 << 63;
/// Roles of a parallel step whose names PID 1 can tell (a worker of a
/// later role is shown by its number only).
const ROLES: usize = 8;
/// Bytes of a role's name kept in the page.
const ROLE_NAME: usize = 32;
/// Bytes mapped for [`Counters`]: two pages (the worker slots fill one).
const COUNTERS_BYTES: usize = 2 * PAGE_SIZE as usize;

/// Progress counters in one `MAP_SHARED` anonymous page that PID 1 maps
/// before it forks the worker, so the worker and its forked `processes:`
/// workers update what PID 1's watchdog reads.
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
    /// The top-level step running now, plus 1 (0: none). Written by the
    /// worker during its turn on the channel ([`channel_turn`]), read by
    /// PID 1 during its own.
    step: AtomicU64,
    /// When that step started, [`monotonic_ns`].
    step_started_ns: AtomicU64,
    /// 1 once the worker has run its last step (only its verdict follows).
    finished: AtomicU32,
    /// Pid of the process whose turn it is on the results channel (0: none).
    sender: AtomicU32,
    /// Per worker: iterations done, plus [`FINISHED`].
    slots: [AtomicU64; SLOTS],
    /// Per worker: its task id once it runs (0: not yet), so PID 1 can
    /// name a task by its role when it diagnoses a stall.
    pids: [AtomicU32; SLOTS],
    /// Workers per role of the owning step, in role order.
    role_counts: [AtomicU32; ROLES],
    /// The roles' names (UTF-8, NUL-padded, cut to [`ROLE_NAME`] bytes).
    role_names: [[AtomicU64; ROLE_NAME / 8]; ROLES],
}

const _: () = assert!(std::mem::size_of::<Counters>() <= COUNTERS_BYTES);

static COUNTERS: AtomicPtr<Counters> = AtomicPtr::new(std::ptr::null_mut());

/// The shared counters, once mapped.
fn counters() -> Option<&'static Counters> {
    // SAFETY: set once to a page that is never unmapped; all fields atomic.
    unsafe { COUNTERS.load(Ordering::Acquire).as_ref() }
}

/// Map the shared counters (idempotent; without them PID 1 sees no step
/// and sends no progress, which only makes stalls look likelier). PID 1
/// calls it before forking the worker: a mapping made later would not be
/// shared between them.
pub fn map_counters() {
    if counters().is_some() {
        return;
    }
    map_fresh_counters();
}

/// Map a new, zeroed page for the counters, replacing any (tests run in
/// forked children of the harness, which must not share its page).
fn map_fresh_counters() {
    // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid
    // `Counters` (all atomics).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            COUNTERS_BYTES,
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

/// A page of counters for this process alone, whatever it inherited.
#[cfg(test)]
pub fn fresh_counters() {
    map_fresh_counters();
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: a clock PID 1 and the worker read
/// alike (an `Instant` means nothing in another process).
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live timespec the call fills in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// How long a process waits for its turn on the results channel before it
/// takes it anyway: a turn is one message, so a holder that keeps it this
/// long is stuck writing to a host that does not read (or is dead).
const TURN_PATIENCE: Duration = Duration::from_secs(5);

/// One process's turn on the results channel, which PID 1 (progress,
/// timeouts, `done`) and the worker (steps) both write to; released on
/// drop. Without the shared page (before PID 1 maps it) there is one
/// writer and no turn is needed.
pub struct ChannelTurn {
    lock: Option<&'static AtomicU32>,
    me: u32,
}

impl Drop for ChannelTurn {
    fn drop(&mut self) {
        if let Some(l) = self.lock {
            let _ = l.compare_exchange(self.me, 0, Ordering::Release, Ordering::Relaxed);
        }
    }
}

fn this_pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Whether the process `pid` still exists (a reaped one does not).
fn exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only probes; `pid` is positive, never a group.
    let probed = unsafe { libc::kill(pid, 0) };
    probed == 0 || crate::sys::errno() == libc::EPERM
}

/// Try once to take the channel; `Err(holder)` when another process has it.
fn take_turn(lock: &'static AtomicU32, me: u32) -> Result<ChannelTurn, u32> {
    match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => Ok(ChannelTurn {
            lock: Some(lock),
            me,
        }),
        // Ours already: a send inside this process's own turn (PID 1's
        // progress tick). The outer turn releases it. Threads of one
        // process are kept apart by the channel's mutex, taken first.
        Err(holder) if holder == me => Ok(ChannelTurn { lock: None, me }),
        Err(holder) => Err(holder),
    }
}

/// Wait for this process's turn on the results channel. A holder that no
/// longer exists (a reaped worker) or holds it past [`TURN_PATIENCE`]
/// loses it: a stuck writer must not silence the other.
pub fn channel_turn() -> ChannelTurn {
    let Some(c) = counters() else {
        return ChannelTurn { lock: None, me: 0 };
    };
    let me = this_pid();
    let give_up = Instant::now() + TURN_PATIENCE;
    loop {
        match take_turn(&c.sender, me) {
            Ok(turn) => return turn,
            Err(holder) if !exists(holder) || Instant::now() >= give_up => {
                if c.sender
                    .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return ChannelTurn {
                        lock: Some(&c.sender),
                        me,
                    };
                }
            }
            Err(_) => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

/// The channel's turn if it is free now (PID 1's progress tick: a worker
/// in the middle of a message is waited for by trying again shortly, never
/// by blocking PID 1, which must also reap the worker when it dies).
pub fn try_channel_turn() -> Option<ChannelTurn> {
    let Some(c) = counters() else {
        return Some(ChannelTurn { lock: None, me: 0 });
    };
    take_turn(&c.sender, this_pid()).ok()
}

/// The worker starts top-level step `index`: from now on PID 1 reports its
/// progress. Call it after sending the step's `step_started`.
pub fn step_started(index: usize) {
    let Some(c) = counters() else { return };
    let _turn = channel_turn();
    c.step_started_ns.store(monotonic_ns(), Ordering::Relaxed);
    c.step.store(index as u64 + 1, Ordering::Release);
}

/// The worker's running step is over. Cleared during the worker's turn on
/// the channel, and PID 1 checks the step during its own turn before it
/// sends `progress`: once this returns, no `progress` for the step can
/// follow, so call it before sending the step's `step_ended`.
pub fn step_done() {
    let Some(c) = counters() else { return };
    let _turn = channel_turn();
    c.step.store(0, Ordering::Release);
}

/// The worker runs no more steps; only its verdict follows (PID 1 then
/// gives it a grace period past the hard cap to exit).
pub fn scenario_done() {
    let Some(c) = counters() else { return };
    let _turn = channel_turn();
    c.step.store(0, Ordering::Release);
    c.finished.store(1, Ordering::Release);
}

/// The top-level step the worker runs now and when it started
/// ([`monotonic_ns`]); read by PID 1 during its turn on the channel.
pub fn running_step() -> Option<(usize, u64)> {
    let c = counters()?;
    let step = c.step.load(Ordering::Acquire);
    let started = c.step_started_ns.load(Ordering::Relaxed);
    (step > 0).then(|| ((step - 1) as usize, started))
}

/// Whether the worker said it runs no more steps.
pub fn worker_finished() -> bool {
    counters().is_some_and(|c| c.finished.load(Ordering::Acquire) != 0)
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
        for pid in &c.pids {
            pid.store(0, Ordering::Relaxed);
        }
        for n in &c.role_counts {
            n.store(0, Ordering::Relaxed);
        }
        c.iterations.store(iterations, Ordering::Relaxed);
        c.workers.store(workers, Ordering::Release);
        Some(WorkerCounters(c))
    }

    /// Name the step's roles, in order, with their worker counts (workers
    /// are numbered across roles in that order).
    pub fn name_roles<'a>(&self, roles: impl IntoIterator<Item = (&'a str, u32)>) {
        for ((name, count), i) in roles.into_iter().zip(0..ROLES) {
            let mut bytes = [0u8; ROLE_NAME];
            let n = name.len().min(ROLE_NAME);
            bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
            for (word, chunk) in self.0.role_names[i].iter().zip(bytes.chunks(8)) {
                let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                word.store(w, Ordering::Relaxed);
            }
            self.0.role_counts[i].store(count, Ordering::Release);
        }
    }

    /// Worker `worker` runs as task `tid`.
    pub fn started(&self, worker: u32, tid: u32) {
        if let Some(p) = self.0.pids.get(worker as usize) {
            p.store(tid, Ordering::Relaxed);
        }
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
pub fn read_counters() -> (u64, Option<WorkerProgress>) {
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

/// What the shared page says about a worker task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTask {
    /// Worker number across roles.
    pub worker: u32,
    /// Its role, when among the first [`ROLES`].
    pub role: Option<String>,
    /// Its index within the role.
    pub index: Option<u32>,
    /// The 1-based iteration it is in (its last, once finished).
    pub iteration: u64,
}

/// The role and index of worker `worker`, from the roles' counts in order.
fn role_of(counts: &[u32], worker: u32) -> Option<(usize, u32)> {
    let mut first = 0u32;
    for (i, &n) in counts.iter().enumerate() {
        if worker < first.saturating_add(n) {
            return Some((i, worker - first));
        }
        first = first.saturating_add(n);
    }
    None
}

/// Which worker of the running parallel step task `tid` is, if any.
pub fn worker_task(tid: u32) -> Option<WorkerTask> {
    let c = counters()?;
    let workers = c.workers.load(Ordering::Acquire) as usize;
    if tid == 0 || workers == 0 {
        return None;
    }
    let worker = c
        .pids
        .iter()
        .take(workers.min(SLOTS))
        .position(|p| p.load(Ordering::Relaxed) == tid)?;
    let counts: Vec<u32> = c
        .role_counts
        .iter()
        .map(|n| n.load(Ordering::Acquire))
        .collect();
    let role = role_of(&counts, worker as u32);
    let name = role.map(|(r, _)| {
        let bytes: Vec<u8> = c.role_names[r]
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let done = c.slots[worker].load(Ordering::Relaxed);
    let iterations = c.iterations.load(Ordering::Relaxed).max(1);
    let iteration = if done & FINISHED != 0 {
        (done & !FINISHED).min(iterations)
    } else {
        (done + 1).min(iterations)
    };
    Some(WorkerTask {
        worker: worker as u32,
        role: name,
        index: role.map(|(_, i)| i),
        iteration,
    })
}

/// A nested step finished (the host's progress measure).
pub fn tick() {
    if let Some(c) = counters() {
        c.ticks.fetch_add(1, Ordering::Relaxed);
    }
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
    fn counters_fit_their_mapping() {
        assert!(std::mem::size_of::<Counters>() <= COUNTERS_BYTES);
    }

    #[test]
    fn a_worker_task_is_named_by_its_role() {
        assert_eq!(role_of(&[2, 3, 0], 0), Some((0, 0)));
        assert_eq!(role_of(&[2, 3, 0], 4), Some((1, 2)));
        assert_eq!(role_of(&[2, 3, 0], 5), None);
        // In a child with a page of its own: other tests claim theirs.
        crate::worker::testing::in_single_threaded_child(a_worker_task_in_a_fresh_page);
    }

    fn a_worker_task_in_a_fresh_page() {
        let claim = WorkerCounters::claim(3, 10).unwrap();
        claim.name_roles([("faulter", 2), ("a-role-name-longer-than-32-bytes!!", 1)]);
        claim.started(0, 100);
        claim.started(1, 101);
        claim.started(2, 102);
        claim.iteration_done(1);
        claim.iteration_done(1);
        assert_eq!(
            worker_task(101),
            Some(WorkerTask {
                worker: 1,
                role: Some("faulter".into()),
                index: Some(1),
                iteration: 3,
            })
        );
        let w = worker_task(102).unwrap();
        assert_eq!(w.role.as_deref(), Some("a-role-name-longer-than-32-bytes"));
        assert_eq!(w.index, Some(0));
        assert_eq!(worker_task(7), None);
        claim.finished(1);
        assert_eq!(worker_task(101).unwrap().iteration, 2);
        drop(claim);
        assert_eq!(worker_task(101), None);
    }
}

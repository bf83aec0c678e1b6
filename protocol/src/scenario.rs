//! The typed scenario model. The runner parses YAML into these types (strictly:
//! unknown fields and steps are errors) and sends them as JSON to the agent,
//! which runs them. The schema is documented in `scenarios/README.md`.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::step_ref::{StepLines, StepRef};

/// Default per-scenario timeout, guest boot excluded.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Default number of vCPUs of a scenario's VM.
pub const DEFAULT_VCPUS: u32 = 2;
/// Default guest memory of a scenario's VM.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Guest page size the arena works in.
pub const PAGE_SIZE: u64 = 4096;
/// Most pages an arena can have: its 4 GiB of user address space
/// (`arena_map_alloc` refuses more with E2BIG).
pub const MAX_ARENA_PAGES: u64 = 1 << 20;

/// One scenario: a VM shape, a timeout and a list of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique name; also the name of the scenario's results folder.
    pub name: String,
    /// What the scenario proves, with the kernel behaviour it relies on.
    #[serde(default)]
    pub description: String,
    /// Free-form tags (families such as `smoke`, `segv_on_fault`, `race`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The VM the scenario runs in.
    #[serde(default)]
    pub vm: VmSpec,
    /// Longest time the steps may go without progress, boot excluded; the
    /// whole scenario is capped at `HARD_CAP_FACTOR` times it.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// What the booted kernel must offer; a kernel without one of these
    /// skips the scenario (verdict `skipped`, naming the missing one), never
    /// passes it. Checked by the agent before the first step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Requirement>,
    /// Steps run in order by the agent; the first failure ends the scenario.
    pub steps: Vec<Step>,
    /// Kernel bugs this scenario is known to hit, written up where the
    /// scenario lives: a failure matching one is `known_fail`, shown but
    /// not a regression. Host-side only; the agent ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_issues: Vec<KnownIssue>,
    /// Where each step is written (filled by the runner from the file,
    /// never written by hand): reasons name a step by it.
    #[serde(default, skip_serializing_if = "StepLines::is_empty")]
    pub lines: StepLines,
}

/// A capability of the booted kernel, named by what it is rather than by
/// a version number: kernels gain features in backports and lose them in
/// configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Requirement {
    /// A function in the kernel's BTF (`/sys/kernel/btf/vmlinux`), e.g. the
    /// kfunc `bpf_arena_reserve_pages` (Linux 6.17+).
    Kfunc(String),
    /// A symbol in `/proc/kallsyms`, e.g. an implementation function whose
    /// presence tells which implementation the kernel has.
    Kallsyms(String),
    /// A kernel config option, probed in the guest by what it creates.
    /// Steps that need one require it without saying so
    /// ([`Scenario::requirements`]).
    Config(KernelOption),
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Kfunc(n) => write!(f, "kfunc {n}"),
            Requirement::Kallsyms(n) => write!(f, "kernel symbol {n}"),
            Requirement::Config(o) => write!(f, "CONFIG_{} ({})", o.name(), o.what()),
        }
    }
}

/// Kernel config options the catalogue's steps depend on. A developer's
/// `defconfig` + `kvm_guest.config` build has none of them: a scenario
/// that needs one is `skipped` there, with the option named, never an
/// error of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KernelOption {
    /// The memory controller: a cgroup's `memory.current` (`memory:`
    /// checks without `meminfo`/`vmstat`).
    #[serde(rename = "MEMCG")]
    Memcg,
    /// kmemleak's debugfs file (`kmemleak:` steps).
    #[serde(rename = "DEBUG_KMEMLEAK")]
    DebugKmemleak,
    /// `fail_page_alloc` and `failslab` in debugfs (`fail_allocs:` steps):
    /// FAULT_INJECTION, FAIL_PAGE_ALLOC, FAILSLAB, FAULT_INJECTION_DEBUG_FS.
    #[serde(rename = "FAULT_INJECTION")]
    FaultInjection,
}

impl KernelOption {
    /// The option's name without `CONFIG_`.
    pub fn name(self) -> &'static str {
        match self {
            KernelOption::Memcg => "MEMCG",
            KernelOption::DebugKmemleak => "DEBUG_KMEMLEAK",
            KernelOption::FaultInjection => "FAULT_INJECTION",
        }
    }

    /// What it gives the lab, for people.
    pub fn what(self) -> &'static str {
        match self {
            KernelOption::Memcg => "the memory controller, for cgroup memory checks",
            KernelOption::DebugKmemleak => "kmemleak, for kmemleak steps",
            KernelOption::FaultInjection => {
                "fail_page_alloc and failslab in debugfs, for fail_allocs steps"
            }
        }
    }

    /// The option a step needs, if any.
    pub fn needed_by(step: &Step) -> Option<KernelOption> {
        match step {
            Step::Memory(m)
                if m.baseline.is_none() && m.meminfo.is_none() && m.vmstat.is_none() =>
            {
                Some(KernelOption::Memcg)
            }
            Step::Kmemleak(_) => Some(KernelOption::DebugKmemleak),
            Step::FailAllocs(_) => Some(KernelOption::FaultInjection),
            _ => None,
        }
    }
}

impl Scenario {
    /// Everything the kernel must offer: `requires`, then the config
    /// options its steps need (nested steps included), each once.
    pub fn requirements(&self) -> Vec<Requirement> {
        fn walk(steps: &[Step], out: &mut Vec<Requirement>) {
            for step in steps {
                if let Some(o) = KernelOption::needed_by(step) {
                    let r = Requirement::Config(o);
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
                for list in step.child_lists() {
                    walk(list, out);
                }
            }
        }
        let mut out = self.requires.clone();
        walk(&self.steps, &mut out);
        out
    }
}

/// A documented kernel bug a scenario finds on some kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownIssue {
    /// Kernel releases (`uname -r`) it applies to: a glob where `*` matches
    /// any run of characters, e.g. `6.12.*+deb12-*`.
    pub kernel: String,
    /// The failure's reason starts with this, e.g.
    /// `kernel splat: BUG: Bad page state`; `*` matches any run of
    /// characters, so `step 4/5 (processes, *): role` holds when lines move.
    pub reason: String,
    /// What is known and where it is written up.
    pub note: String,
}

impl KnownIssue {
    /// Whether a failure with `reason` on kernel `release` is this issue.
    pub fn matches(&self, release: &str, reason: &str) -> bool {
        glob_match(&format!("{}*", self.reason), reason) && glob_match(&self.kernel, release)
    }
}

/// `*`-only glob, anchored at both ends.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

/// Naming steps as reasons do ([`crate::step_ref`]): the lists are here.
impl StepLines {
    /// How to name step `i` of `list`, the list at field path `list_field`
    /// (`steps`, `steps[3].repeat.steps`).
    pub fn step(&self, list_field: &str, list: &[Step], i: usize) -> StepRef {
        self.named(
            list_field,
            i,
            list.len(),
            list.get(i).map_or("?", Step::kind),
        )
    }

    /// Every step of a top-level list, named.
    pub fn top_level(&self, steps: &[Step]) -> Vec<StepRef> {
        (0..steps.len())
            .map(|i| self.step("steps", steps, i))
            .collect()
    }
}

/// The field path of every step in `steps` (the list at `at`) and in the
/// lists nested in them, in file order: the keys of [`StepLines::lines`].
pub fn step_fields(steps: &[Step], at: &str) -> Vec<String> {
    let mut out = Vec::new();
    fields(steps, at, &mut out);
    out
}

fn fields(steps: &[Step], at: &str, out: &mut Vec<String>) {
    for (i, step) in steps.iter().enumerate() {
        let field = format!("{at}[{i}]");
        out.push(field.clone());
        for (list_field, list) in nested_lists(step, &field) {
            fields(list, &list_field, out);
        }
    }
}

/// The step lists nested in `step` (at field path `field`), each with its
/// field path: what the agent names a nested step by, too.
pub fn nested_lists<'a>(step: &'a Step, field: &str) -> Vec<(String, &'a [Step])> {
    match step {
        Step::Repeat(r) => vec![(format!("{field}.repeat.steps"), &r.steps[..])],
        // Every case has the template's shape: its steps are the template's.
        Step::Sweep(s) => s
            .cases
            .first()
            .map(|c| vec![(format!("{field}.sweep.steps"), &c.steps[..])])
            .unwrap_or_default(),
        Step::Processes(p) | Step::Threads(p) => {
            let at = format!("{field}.{}", step.kind());
            let mut out = Vec::new();
            for role in p.role_views() {
                let (setup, steps) = role.list_fields(&at);
                out.push((setup, role.setup));
                out.push((steps, role.steps));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Shape of the VM a scenario needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}
fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

/// One step of a scenario. Written in YAML as a one-key map: `- touch: {...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Create an arena map (`BPF_MAP_TYPE_ARENA`, `BPF_F_MMAPABLE` implied).
    Arena(ArenaStep),
    /// mmap an arena into the current process.
    Mmap(MmapStep),
    /// munmap (part of) the current process's arena mapping.
    Munmap(MunmapStep),
    /// mremap the current process's arena mapping.
    Mremap(MremapStep),
    /// madvise on (part of) the current process's arena mapping.
    Madvise(MadviseStep),
    /// Read or write arena pages from user space.
    Touch(TouchStep),
    /// Load a BPF object (built from `guest-images/bpf/*.bpf.c`) with libbpf.
    BpfLoad(BpfLoadStep),
    /// Run a syscall program of a loaded object with `BPF_PROG_TEST_RUN`.
    BpfRun(BpfRunStep),
    /// Walk a BPF-built data structure natively through the user mapping.
    UserWalk(UserWalkStep),
    /// Read, through the user mapping, the u64 a program pointed at
    /// (`out[i]` of the last `bpf_run`), e.g. an arena global.
    ReadPointer(ReadPointerStep),
    /// Fork processes that each run a list of steps, released together.
    Processes(ParallelStep),
    /// Start threads (one mm) that each run a list of steps, released together.
    Threads(ParallelStep),
    /// Write a value under `/proc/sys`, or check what it reads.
    Sysctl(SysctlStep),
    /// Sleep for a while.
    Sleep(SleepStep),
    /// Run a block of steps several times.
    Repeat(RepeatStep),
    /// Check the kernel log (on top of the always-on splat detector).
    ExpectKernelLog(KernelLogStep),
    /// Run the upstream `test_progs` selftests shipped in the image.
    Selftest(SelftestStep),
    /// Kill the agent's worker with a signal: a self-test of the lab's crash
    /// reporting (a crashing step must become a verdict), not of the kernel.
    Crash(CrashStep),
    /// Unmap this process's mapping of an arena and close its map fd: the
    /// map is freed once nothing else (a BPF object, another process)
    /// holds it.
    Destroy(DestroyStep),
    /// Record a memory baseline (the scenario's cgroup, meminfo, vmstat),
    /// or bound the change of one of them since one.
    Memory(MemoryStep),
    /// Write a key to `/proc/sysrq-trigger`: `w` dumps blocked tasks to the
    /// kernel log, `c` crashes the kernel (a self-test of how the lab
    /// handles a dying kernel and of snapshot isolation).
    Sysrq(SysrqStep),
    /// Run `steps` once per combination of `over`'s values (a boundary
    /// sweep or a parameter matrix), every value's outcome reported.
    Sweep(SweepStep),
    /// Clear kmemleak's suspects, or scan and fail on new ones.
    Kmemleak(KmemleakStep),
    /// Make this process's non-sleeping allocations fail (kernel fault
    /// injection), or stop it.
    FailAllocs(FailAllocsStep),
}

impl Step {
    /// The step's YAML key, e.g. `touch`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Arena(_) => "arena",
            Step::Mmap(_) => "mmap",
            Step::Munmap(_) => "munmap",
            Step::Mremap(_) => "mremap",
            Step::Madvise(_) => "madvise",
            Step::Touch(_) => "touch",
            Step::BpfLoad(_) => "bpf_load",
            Step::BpfRun(_) => "bpf_run",
            Step::UserWalk(_) => "user_walk",
            Step::ReadPointer(_) => "read_pointer",
            Step::Processes(_) => "processes",
            Step::Threads(_) => "threads",
            Step::Sysctl(_) => "sysctl",
            Step::Sleep(_) => "sleep",
            Step::Repeat(_) => "repeat",
            Step::ExpectKernelLog(_) => "expect_kernel_log",
            Step::Selftest(_) => "selftest",
            Step::Crash(_) => "crash",
            Step::Destroy(_) => "destroy",
            Step::Memory(_) => "memory",
            Step::Sysrq(_) => "sysrq",
            Step::Sweep(_) => "sweep",
            Step::Kmemleak(_) => "kmemleak",
            Step::FailAllocs(_) => "fail_allocs",
        }
    }

    /// Nested step lists (for validation that walks the tree), roles' too.
    pub fn child_lists(&self) -> Vec<&[Step]> {
        match self {
            Step::Processes(p) | Step::Threads(p) => p
                .role_views()
                .into_iter()
                .flat_map(|r| [r.setup, r.steps])
                .collect(),
            Step::Repeat(r) => vec![&r.steps],
            Step::Sweep(s) => s.cases.iter().map(|c| c.steps.as_slice()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Why a `processes:` step is refused inside `threads:`.
pub const PROCESSES_IN_THREADS: &str = "not allowed inside threads: its workers are forked processes, and the agent forks only while it has a single thread (a child forked beside running threads can inherit a lock one of them holds, and wait for it forever)";
/// Why a touch that accepts a signal is refused inside `threads:`.
pub const SIGNAL_TOUCH_IN_THREADS: &str = "a touch that expects (or accepts) a signal runs in a forked child, which cannot be made while the threads of a `threads:` step run (the agent forks only while it has a single thread)";

/// Nested steps of `threads:` that would have to fork while the other
/// threads run, which the agent refuses (`worker::spawn` forks only in a
/// single-threaded process): a `processes:` step, or a `touch` whose
/// `expect` accepts a signal (it runs in a forked child that survives the
/// fault). Returned as (field, message) for `steps` listed under `at`,
/// in the runner's field-path style: `steps[2].threads.steps[1].processes`,
/// `steps[2].threads.roles[0].steps[0].touch.expect`. A touch that forks
/// only because of its arena's flags or this process's mapping is not
/// known here; the agent refuses it when it runs.
pub fn forks_inside_threads(steps: &[Step], at: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    forks_in(steps, at, false, &mut out);
    out
}

fn forks_in(steps: &[Step], at: &str, threads: bool, out: &mut Vec<(String, String)>) {
    for (i, step) in steps.iter().enumerate() {
        let here = format!("{at}[{i}].{}", step.kind());
        let mut report = |field: String, message: &str| {
            // A sweep's cases share the template's fields: one problem each.
            if !out.iter().any(|(f, _)| *f == field) {
                out.push((field, message.to_owned()));
            }
        };
        match step {
            Step::Processes(_) if threads => report(here, PROCESSES_IN_THREADS),
            Step::Touch(t) if threads && !t.expect.accepted_signals().is_empty() => {
                report(format!("{here}.expect"), SIGNAL_TOUCH_IN_THREADS)
            }
            // A forked worker has one thread again; threads run in one.
            Step::Processes(p) | Step::Threads(p) => {
                let inner = matches!(step, Step::Threads(_));
                for (r, role) in p.role_views().iter().enumerate() {
                    let list = |name: &str| {
                        if role.implicit {
                            format!("{here}.{name}")
                        } else {
                            format!("{here}.roles[{r}].{name}")
                        }
                    };
                    forks_in(role.setup, &list("setup"), inner, out);
                    forks_in(role.steps, &list("steps"), inner, out);
                }
            }
            Step::Repeat(r) => forks_in(&r.steps, &format!("{here}.steps"), threads, out),
            Step::Sweep(s) => {
                for case in &s.cases {
                    forks_in(&case.steps, &format!("{here}.steps"), threads, out);
                }
            }
            _ => {}
        }
    }
}

/// Arena creation flags (beyond the implied `BPF_F_MMAPABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaFlag {
    /// `BPF_F_SEGV_ON_FAULT`: user faults on unallocated pages raise SIGSEGV.
    SegvOnFault,
    /// `BPF_F_NO_USER_CONV`: no user-address conversion in BPF programs.
    NoUserConv,
    /// `BPF_F_MMAPABLE` spelled out (it is always set unless `omit_mmapable`).
    Mmapable,
    /// A flag arena does not accept (`BPF_F_RDONLY_PROG`), for negative tests.
    RdonlyProg,
}

/// `arena:` create an arena map and remember it under `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArenaStep {
    /// Name later steps use to refer to this arena.
    pub id: String,
    /// `max_entries`: the arena's size in pages.
    pub pages: u64,
    /// Extra flags.
    #[serde(default)]
    pub flags: Vec<ArenaFlag>,
    /// Leave out `BPF_F_MMAPABLE` (the kernel must refuse that).
    #[serde(default)]
    pub omit_mmapable: bool,
    /// `map_extra`: the fixed user address of the arena, 0 = chosen at mmap.
    #[serde(default)]
    pub map_extra: u64,
    /// NUMA node (`BPF_F_NUMA_NODE` is set when given).
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// key_size (must be 0 for an arena).
    #[serde(default)]
    pub key_size: u32,
    /// value_size (must be 0 for an arena).
    #[serde(default)]
    pub value_size: u32,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
}

/// `mmap:` map an arena into the current process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmapStep {
    /// Arena id.
    pub arena: String,
    /// Address hint (or fixed address with `fixed`); default: none, or the
    /// arena's `map_extra`.
    #[serde(default)]
    pub addr: Option<u64>,
    /// Map at the address this arena has in the process that created it
    /// (`MAP_FIXED`), as a second process must.
    #[serde(default)]
    pub same_address: bool,
    /// Pass `MAP_FIXED`.
    #[serde(default)]
    pub fixed: bool,
    /// Length in pages; default the arena's size.
    #[serde(default)]
    pub pages: Option<u64>,
    /// File offset in pages (the kernel accepts only 0).
    #[serde(default)]
    pub offset_pages: u64,
    /// Map `MAP_PRIVATE` instead of `MAP_SHARED`.
    #[serde(default)]
    pub private: bool,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
}

/// `munmap:` unmap (part of) the arena mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MunmapStep {
    /// Arena id.
    pub arena: String,
    /// First page to unmap.
    #[serde(default)]
    pub page: u64,
    /// Pages to unmap; default the whole mapping.
    #[serde(default)]
    pub pages: Option<u64>,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
}

/// `mremap:` resize or move the arena mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MremapStep {
    /// Arena id.
    pub arena: String,
    /// New length in pages.
    pub pages: u64,
    /// Allow the kernel to move the mapping (`MREMAP_MAYMOVE`).
    #[serde(default)]
    pub may_move: bool,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
}

/// madvise advice values the scenarios use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advice {
    /// `MADV_DONTNEED`.
    Dontneed,
    /// `MADV_DONTFORK`.
    Dontfork,
    /// `MADV_DOFORK`.
    Dofork,
}

/// `madvise:` advise on part of the arena mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MadviseStep {
    /// Arena id.
    pub arena: String,
    /// First page.
    #[serde(default)]
    pub page: u64,
    /// Number of pages.
    #[serde(default = "one")]
    pub pages: u64,
    /// Which madvise(2) advice to give for the range.
    pub advice: Advice,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
}

fn one() -> u64 {
    1
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessOp {
    /// Load one u64 per page.
    Read,
    /// Store one u64 per page.
    Write,
}

/// `touch:` access `count` pages from `page` at byte `offset` within each page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchStep {
    /// Arena id.
    pub arena: String,
    /// First page index within the arena.
    pub page: u64,
    /// Number of consecutive pages.
    #[serde(default = "one")]
    pub count: u64,
    /// Byte offset within each page (8-byte aligned).
    #[serde(default)]
    pub offset: u64,
    /// Read or write.
    pub op: AccessOp,
    /// Value to write; default the deterministic pattern of each page.
    #[serde(default)]
    pub value: Option<u64>,
    /// Order the pages are accessed in; `shuffled` draws a permutation from
    /// the seed (recorded in the step's data, so it replays).
    #[serde(default)]
    pub order: PageOrder,
    /// Expected outcome; default: the access succeeds.
    #[serde(default)]
    pub expect: TouchExpect,
}

/// Order in which a multi-page step visits its pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageOrder {
    /// `page`, `page + 1`, ...
    #[default]
    Sequential,
    /// A permutation drawn from the process's seed, new on every run of the
    /// step (each iteration of a worker draws again).
    Shuffled,
}

/// What a touch must observe. At most one of the fields may be set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchExpect {
    /// The access must kill the process with this signal.
    #[serde(default)]
    pub signal: Option<Signal>,
    /// A read must return this value on every page.
    #[serde(default)]
    pub value: Option<u64>,
    /// A read must return 0 on every page.
    #[serde(default)]
    pub zero: bool,
    /// A read must return each page's deterministic pattern.
    #[serde(default)]
    pub pattern: bool,
    /// Each access must satisfy one of these (each sets exactly one of the
    /// fields above): what a race may legitimately show, e.g. "my write or
    /// a zero page", or a SIGSEGV when a page is freed under the reader.
    #[serde(default)]
    pub any_of: Vec<TouchExpect>,
}

impl TouchExpect {
    /// The value a read of `page` must return under this single
    /// expectation, if it is one on values.
    pub fn read_value(&self, page: u64) -> Option<u64> {
        if let Some(v) = self.value {
            Some(v)
        } else if self.zero {
            Some(0)
        } else if self.pattern {
            Some(page_pattern(page))
        } else {
            None
        }
    }

    /// Whether any expectation (itself or an alternative) is on read values.
    pub fn expects_values(&self) -> bool {
        self.read_value(0).is_some() || self.any_of.iter().any(|a| a.read_value(0).is_some())
    }

    /// Signals the access may die of (`signal`, or alternatives).
    pub fn accepted_signals(&self) -> Vec<Signal> {
        self.signal
            .into_iter()
            .chain(self.any_of.iter().filter_map(|a| a.signal))
            .collect()
    }

    /// Whether a read of `page` returning `got` is accepted; `true` when
    /// nothing is expected of values.
    pub fn accepts_read(&self, page: u64, got: u64) -> bool {
        if !self.any_of.is_empty() {
            return self
                .any_of
                .iter()
                .any(|a| a.read_value(page).is_some_and(|v| v == got));
        }
        match self.read_value(page) {
            Some(v) => v == got,
            None => true,
        }
    }

    /// Whether a read of `page` returning `got` was accepted by an `any_of`
    /// alternative other than the first: the race went the other way (e.g.
    /// `[pattern, zero]`: the page was freed under the reader). Counted as
    /// the observed interleavings of a race scenario.
    pub fn raced_read(&self, page: u64, got: u64) -> bool {
        let mut alts = self.any_of.iter().filter_map(|a| a.read_value(page));
        match alts.next() {
            Some(first) if first != got => alts.any(|v| v == got),
            _ => false,
        }
    }

    /// How many of the fields are set (`any_of` counts as one).
    pub fn fields_set(&self) -> usize {
        [
            self.signal.is_some(),
            self.value.is_some(),
            self.zero,
            self.pattern,
            !self.any_of.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Text for a failure: `pattern 0x..`, `one of [zero, SIGSEGV]`.
    pub fn describe(&self, page: u64) -> String {
        if !self.any_of.is_empty() {
            let alts: Vec<String> = self.any_of.iter().map(|a| a.describe(page)).collect();
            return format!("one of [{}]", alts.join(", "));
        }
        match (self.signal, self.read_value(page)) {
            (Some(s), _) => format!("{s:?}"),
            (None, Some(v)) => format!("{v:#x}"),
            (None, None) => "anything".into(),
        }
    }
}

/// The value `touch` writes to `page` when no value is given, and what
/// `pattern: true` expects: recognisable, different for every page.
pub fn page_pattern(page: u64) -> u64 {
    0xA5E1_A000_0000_0000 | (page.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF_FFFF)
}

/// `bpf_load:` open and load a BPF object with libbpf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfLoadStep {
    /// Name later steps use for this object.
    pub id: String,
    /// Object file name in the image, e.g. `arena_ops.bpf.o` (one of the
    /// lab's own, built from `guest-images/bpf/*.bpf.c`); or give `source`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// The scenario's own BPF C source, relative to the scenario file
    /// (inside its folder): the lab compiles it against the kernel's BTF
    /// (`vmlinux.h`) and the lab's `arena_lab.h`, and the image carries the
    /// object as [`BpfLoadStep::object_file`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Reuse the map of an earlier `arena` step as the object's arena map.
    #[serde(default)]
    pub reuse_arena: Option<String>,
    /// Register the object's arena map under this arena id for user steps.
    #[serde(default)]
    pub arena_id: Option<String>,
    /// Expected outcome; default success (the verifier accepts every program).
    #[serde(default)]
    pub expect: BpfLoadExpect,
}

impl BpfLoadStep {
    /// The object's file name in the image's BPF folder: `object`, or for a
    /// `source` a name made from the source path as written (the host
    /// compiles it under that name; the agent looks it up by it).
    pub fn object_file(&self) -> String {
        match &self.source {
            Some(src) => own_object_name(src),
            None => self.object.clone(),
        }
    }
}

/// Image file name of the object compiled from a scenario's own `source`:
/// `own-<FNV-1a 64 of the path>.bpf.o`, which no `guest-images/bpf` object
/// (named after its source) can be.
pub fn own_object_name(source: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("own-{h:016x}.bpf.o")
}

/// What a `bpf_load` expects of the verifier (and of the load syscall).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfLoadExpect {
    /// The load must fail with this errno; `None` means it must succeed
    /// (unless `rejected`).
    #[serde(default)]
    pub errno: Option<Errno>,
    /// The verifier must refuse a program of the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
    /// Texts that must each appear in the verifier log (of the refused
    /// program when `rejected`, else of any program).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// `bpf_run:` run a syscall program with `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfRunStep {
    /// Object id from `bpf_load`.
    pub object: String,
    /// Program (function) name.
    pub program: String,
    /// Up to four u64 arguments passed in the context (`args[0..4]`).
    #[serde(default)]
    pub args: Vec<u64>,
    /// Expected return value of the program.
    #[serde(default)]
    pub expect_retval: Option<i64>,
    /// Expected values of the context's output words (`out[0..4]`);
    /// `null` skips a word.
    #[serde(default)]
    pub expect_out: Vec<Option<u64>>,
    /// Texts that must appear in the program's BPF stderr stream after the
    /// run (Linux 6.17+ `BPF_PROG_STREAM_READ_BY_FD`; e.g. the kernel's
    /// arena-violation report). A kernel without streams makes the step an
    /// error: gate such scenarios with `requires`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_stderr: Vec<String>,
}

/// Data structures BPF programs build in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    /// `struct list_node { next; value; }` from `list_build`.
    List,
    /// `struct htab { buckets[64]; }` of `struct htab_node { next; key; value; }` from `htab_build`.
    Htab,
}

/// `user_walk:` follow the pointers of a structure whose root is `out[0]` of
/// the previous `bpf_run`, in user space, through the arena mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserWalkStep {
    /// Arena id (must be mapped in this process).
    pub arena: String,
    /// What to walk.
    pub structure: Structure,
    /// Expected number of nodes.
    pub expect_count: u64,
    /// Expected sum of the nodes' values.
    pub expect_sum: u64,
}

/// `read_pointer:` load the u64 at the user address in `out[out]` of the
/// previous `bpf_run`; the address must lie inside the arena's mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadPointerStep {
    /// Arena id (must be mapped in this process).
    pub arena: String,
    /// Which output word holds the address (0..4).
    pub out: usize,
    /// The value that must be there.
    pub expect_value: u64,
}

/// `processes:` / `threads:` run workers released together. Either one
/// implicit role (`count` and `steps`) or named `roles`, each with its own
/// count and steps, so that "three faulters and one freer" can be written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelStep {
    /// Number of workers of the implicit role (without `roles`).
    #[serde(default)]
    pub count: Option<u32>,
    /// How many times each worker runs its steps.
    #[serde(default = "one")]
    pub iterations: u64,
    /// Stop iterating after this long even if iterations remain.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Seed of the workers' choices (start order, jitter, shuffled touches);
    /// default: drawn from the scenario's seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Random sleep of up to this many microseconds between iterations.
    #[serde(default)]
    pub jitter_us: u64,
    /// Steps each worker of the implicit role runs per iteration.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Named groups of workers (instead of `count` and `steps`).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Counts across all workers; default: every worker passes.
    #[serde(default)]
    pub expect: WorkersExpect,
}

/// Name of the one role of a `processes`/`threads` step without `roles`.
pub const IMPLICIT_ROLE: &str = "worker";

impl ParallelStep {
    /// The roles to run: `roles`, or the implicit one made of `count` and
    /// `steps` (borrowed views, so both forms run the same code).
    pub fn role_views(&self) -> Vec<RoleView<'_>> {
        if self.roles.is_empty() {
            return vec![RoleView {
                name: IMPLICIT_ROLE,
                index: 0,
                implicit: true,
                count: self.count.unwrap_or(0),
                setup: &[],
                steps: &self.steps,
                expect: None,
            }];
        }
        self.roles
            .iter()
            .enumerate()
            .map(|(index, r)| RoleView {
                name: &r.name,
                index,
                implicit: false,
                count: r.count,
                setup: &r.setup,
                steps: &r.steps,
                expect: Some(&r.expect),
            })
            .collect()
    }

    /// Workers in all roles.
    pub fn total_workers(&self) -> u64 {
        self.role_views().iter().map(|r| u64::from(r.count)).sum()
    }
}

/// One role as the agent runs it (see [`ParallelStep::role_views`]).
#[derive(Debug, Clone, Copy)]
pub struct RoleView<'a> {
    /// Role name ([`IMPLICIT_ROLE`] for the single-list form).
    pub name: &'a str,
    /// Its place in `roles` (0 for the single-list form).
    pub index: usize,
    /// The single-list form (its worker seeds are derived as before roles).
    pub implicit: bool,
    /// How many workers run this role.
    pub count: u32,
    /// Run once per worker before the release.
    pub setup: &'a [Step],
    /// Run every iteration.
    pub steps: &'a [Step],
    /// The role's own counts, if any.
    pub expect: Option<&'a WorkersExpect>,
}

impl RoleView<'_> {
    /// The field paths of this role's `setup` and `steps` lists in the
    /// `processes`/`threads` step at `at` (`steps[3].processes`).
    pub fn list_fields(&self, at: &str) -> (String, String) {
        if self.implicit {
            // No setup list: nothing of it runs, nothing is named by it.
            (format!("{at}.setup"), format!("{at}.steps"))
        } else {
            let role = format!("{at}.roles[{}]", self.index);
            (format!("{role}.setup"), format!("{role}.steps"))
        }
    }
}

/// `roles[i]` of a `processes`/`threads` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Unique within the step; part of each worker's seed.
    pub name: String,
    /// Workers in this role.
    pub count: u32,
    /// Steps each worker runs once before all are released (e.g. its
    /// `mmap: { same_address: true }`), so the race starts at the barrier.
    #[serde(default)]
    pub setup: Vec<Step>,
    /// Steps each worker runs per iteration.
    pub steps: Vec<Step>,
    /// Counts across this role's workers.
    #[serde(default)]
    pub expect: WorkersExpect,
}

/// Counts a `processes`/`threads` step (all workers) or a role (its
/// workers) must end with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersExpect {
    /// Workers that fail, crash or time out. Default 0 for every role,
    /// unless the step sets it (then it bounds the total instead).
    #[serde(default)]
    pub failures: Option<Count>,
    /// Signals seen: touches whose child an accepted signal killed, and
    /// workers killed by one.
    #[serde(default)]
    pub signals: std::collections::BTreeMap<Signal, Count>,
}

/// A count: exactly `N`, or `{ at_least: N, at_most: M }` (either bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Count {
    /// Exactly this many.
    Exactly(u64),
    /// Within bounds.
    Range {
        /// At least this many.
        #[serde(default)]
        at_least: Option<u64>,
        /// At most this many.
        #[serde(default)]
        at_most: Option<u64>,
    },
}

impl Count {
    /// Whether `n` satisfies the count.
    pub fn allows(&self, n: u64) -> bool {
        match *self {
            Count::Exactly(want) => n == want,
            Count::Range { at_least, at_most } => {
                n >= at_least.unwrap_or(0) && n <= at_most.unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Count::Exactly(n) => write!(f, "exactly {n}"),
            Count::Range {
                at_least: Some(l),
                at_most: Some(m),
            } => write!(f, "{l}..={m}"),
            Count::Range {
                at_least: Some(l),
                at_most: None,
            } => write!(f, "at least {l}"),
            Count::Range {
                at_least: None,
                at_most: Some(m),
            } => write!(f, "at most {m}"),
            Count::Range { .. } => f.write_str("any number"),
        }
    }
}

/// `sysctl:` write `value` to `/proc/sys/<path>` (e.g. `net/core/bpf_jit_harden`),
/// then, with `expect`, read it back and compare (whitespace-trimmed). At
/// least one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlStep {
    /// Path below `/proc/sys`, with `/` or `.` separators.
    pub path: String,
    /// Value to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value it must read as afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

impl SysctlStep {
    /// The file to write, or `None` if the path tries to leave `/proc/sys`.
    pub fn file(&self) -> Option<String> {
        let rel = self.path.replace('.', "/");
        let ok = !rel.is_empty()
            && rel.split('/').all(|c| {
                !c.is_empty()
                    && c != ".."
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            });
        ok.then(|| format!("/proc/sys/{rel}"))
    }
}

/// `sleep:` pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepStep {
    /// How long to pause, in milliseconds.
    pub ms: u64,
    /// Wait in a blocking `recv` on a socket nobody writes to (timed out
    /// after `ms` by `SO_RCVTIMEO`) instead of on a timer: a wait the
    /// kernel's stacks name (`unix_stream_data_wait`), for testing how
    /// the lab diagnoses a stall.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub socket: bool,
}

/// `destroy:` unmap and close arena `arena` in this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyStep {
    /// Arena id.
    pub arena: String,
}

/// `memory:` memory accounting against a recorded baseline. Arena pages
/// are charged to the memory cgroup of the process that created the map,
/// and the agent runs each scenario in a cgroup of its own, so the cgroup's
/// `memory.current` (the default source) tells whether they all came back;
/// `meminfo` and `vmstat` give whole-kernel counters for what is not
/// charged. Either `baseline` (record every source) or `since` with bounds
/// (check one source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryStep {
    /// Record the cgroup's `memory.current`, `/proc/meminfo` and
    /// `/proc/vmstat` under this name.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Check the change since this earlier baseline.
    #[serde(default)]
    pub since: Option<String>,
    /// Check this `/proc/meminfo` field (in KiB, e.g. `Slab`, `Percpu`,
    /// `MemFree`) instead of the cgroup.
    #[serde(default)]
    pub meminfo: Option<String>,
    /// Check this `/proc/vmstat` counter (a count, e.g.
    /// `nr_page_table_pages`) instead of the cgroup.
    #[serde(default)]
    pub vmstat: Option<String>,
    /// The change is at most this many KiB (cgroup, meminfo); negative
    /// demands a shrink.
    #[serde(default)]
    pub at_most_kib: Option<i64>,
    /// The change is at least this many KiB (cgroup, meminfo); negative
    /// bounds a shrink.
    #[serde(default)]
    pub at_least_kib: Option<i64>,
    /// The change is at most this much (vmstat).
    #[serde(default)]
    pub at_most: Option<i64>,
    /// The change is at least this much (vmstat).
    #[serde(default)]
    pub at_least: Option<i64>,
    /// Read again until the bounds hold, for up to this long: the kernel
    /// frees a map's pages from a workqueue, after its last reference.
    #[serde(default)]
    pub within_ms: u64,
}

/// `kmemleak:` the kernel's leak detector (`CONFIG_DEBUG_KMEMLEAK`), for
/// kernel memory that no counter shows: `clear` forgets every object it
/// suspects now, `check` waits until what the scenario allocated since is
/// old enough to be judged, scans, and fails on every new suspect. On a
/// kernel without kmemleak the step is an error, never a pass (declare
/// `requires: [{kallsyms: kmemleak_scan}]` to skip such kernels instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmemleakStep {
    /// What to do.
    pub action: KmemleakAction,
    /// With `check`: only suspects whose report (backtrace included)
    /// matches this regex count; default all.
    #[serde(default)]
    pub matching: Option<String>,
}

/// `fail_allocs:` kernel fault injection (`fail_page_alloc` and
/// `failslab`, `CONFIG_FAULT_INJECTION_DEBUG_FS`) for this process and
/// the processes it forks after: with `probability` percent, an allocation
/// the kernel makes on their behalf fails. Only allocations that may not
/// sleep (no `__GFP_DIRECT_RECLAIM`, e.g. `GFP_NOWAIT`) fail unless
/// `sleeping` is set: the kernel's own `ignore-gfp-wait`, which tells a
/// path that must not fail (`GFP_KERNEL`) from one that may. `probability:
/// 0` stops it. Without fault injection the step is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailAllocsStep {
    /// Percent of eligible allocations that fail (0 stops injection).
    pub probability: u32,
    /// Stop after this many failures; default unlimited.
    #[serde(default)]
    pub times: Option<u32>,
    /// Also fail allocations that may sleep.
    #[serde(default)]
    pub sleeping: bool,
}

/// What a `kmemleak:` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KmemleakAction {
    /// Write `clear`: every current suspect is forgotten.
    Clear,
    /// Scan, and fail on any suspect reported since the last `clear`.
    Check,
}

/// `sysrq:` one of [`SysrqStep::KEYS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysrqStep {
    /// The key.
    pub key: char,
}

impl SysrqStep {
    /// Keys a scenario may send: `w` (blocked tasks), `l` (backtraces of
    /// all CPUs), `m` (memory), `t` (all tasks), `c` (crash the kernel).
    /// Not `b`/`o` (reset, power off: the VM would vanish without a
    /// splat) nor the ones that change state behind the lab's back.
    pub const KEYS: &'static [char] = &['w', 'l', 'm', 't', 'c'];
}

/// `crash:` the worker raises `signal` at itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashStep {
    /// The signal the worker dies of.
    pub signal: Signal,
}

/// `repeat:` run `steps` `times` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatStep {
    /// How many times the block runs.
    pub times: u64,
    /// The steps run in order on each repetition.
    pub steps: Vec<Step>,
}

/// Most cases one sweep may expand to (the product of its value lists).
pub const MAX_SWEEP_CASES: usize = 1024;

/// `sweep:` run `steps` once per combination of the values in `over`, in
/// order, with `${name}` (or `${name+K}`, `${name-K}`) in the steps replaced
/// by that combination's value. Every case runs even after one fails, so
/// the step reports every value's outcome.
///
/// In YAML `steps` is a template; the runner expands it into `cases`
/// (typed, bounds-checked like any steps) and only `cases` reach the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepStep {
    /// Variable name → its values, in the order they run; several
    /// variables give their cartesian product (the last varies fastest).
    pub over: std::collections::BTreeMap<String, SweepValues>,
    /// The template (YAML only; never sent).
    #[serde(default, skip_serializing)]
    pub steps: Vec<serde_json::Value>,
    /// The expanded cases (filled by the runner, never written by hand).
    #[serde(default)]
    pub cases: Vec<SweepCase>,
}

/// The values of one sweep variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SweepValues {
    /// `[1, 2, 15, 16]`, or any values (`[[], [segv_on_fault]]`).
    List(Vec<serde_json::Value>),
    /// `{from: 0, to: 16, step: 4}`: `from`, `from+step`, … up to `to`
    /// inclusive.
    Range {
        /// First value.
        from: i64,
        /// Last value (included when the steps land on it).
        to: i64,
        /// Increment, positive; default 1.
        #[serde(default = "one_i64")]
        step: i64,
    },
}

fn one_i64() -> i64 {
    1
}

impl SweepValues {
    /// The values in order, or why there are none to give.
    pub fn values(&self) -> Result<Vec<serde_json::Value>, String> {
        match self {
            SweepValues::List(v) if v.is_empty() => Err("the list of values is empty".into()),
            SweepValues::List(v) => Ok(v.clone()),
            SweepValues::Range { step, .. } if *step <= 0 => {
                Err(format!("step must be positive, not {step}"))
            }
            SweepValues::Range { from, to, .. } if from > to => {
                Err(format!("from ({from}) is past to ({to})"))
            }
            SweepValues::Range { from, to, step } => {
                let n = (i128::from(*to) - i128::from(*from)) / i128::from(*step) + 1;
                if n > MAX_SWEEP_CASES as i128 {
                    return Err(format!("{n} values; at most {MAX_SWEEP_CASES}"));
                }
                // In range: n ≤ MAX_SWEEP_CASES and every value ≤ `to`.
                Ok((0..n as i64).map(|i| (from + i * step).into()).collect())
            }
        }
    }
}

/// One combination of a sweep's values and its concrete steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepCase {
    /// Variable → value in this case.
    pub values: std::collections::BTreeMap<String, serde_json::Value>,
    /// The steps with the values put in.
    pub steps: Vec<Step>,
}

impl SweepCase {
    /// `count=16 page=1023`: how reports name the case.
    pub fn label(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `expect_kernel_log:` regexes the kernel log must / must not match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelLogStep {
    /// Each must match some line.
    #[serde(default)]
    pub contains: Vec<String>,
    /// None may match any line.
    #[serde(default)]
    pub not_contains: Vec<String>,
}

/// `selftest:` run `test_progs` with filters; each subtest becomes a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelftestStep {
    /// `-t` filters (test name substrings).
    #[serde(default)]
    pub tests: Vec<String>,
    /// `-a` allow-list globs.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `-d` deny-list globs.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Watchdog: seconds `test_progs` may run.
    #[serde(default = "default_selftest_timeout")]
    pub timeout_s: u64,
    /// Tests that cannot work on some kernel configurations: where the
    /// condition holds they are not run and are reported skipped with the
    /// reason and the config value, never failed and never passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported: Vec<Unsupported>,
}

/// `unsupported:` of a selftest step: `tests` need `CONFIG_<config>` at
/// most `above`, for the reason `why`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsupported {
    /// Top-level `test_progs` test names.
    pub tests: Vec<String>,
    /// The option, without `CONFIG_` (e.g. `NR_CPUS`).
    pub config: String,
    /// The tests cannot work when the option's value is above this.
    pub above: u64,
    /// Why, citing the code that refuses.
    pub why: String,
}

impl Unsupported {
    /// The skip reason when `config` (a kernel `.config` text) sets the
    /// option above the limit; `None` when it does not, or says nothing
    /// (then the tests run).
    pub fn applies(&self, config: &str) -> Option<String> {
        let key = format!("CONFIG_{}=", self.config);
        let value: u64 = config
            .lines()
            .find_map(|l| l.strip_prefix(&key))?
            .trim()
            .parse()
            .ok()?;
        (value > self.above).then(|| {
            format!(
                "unsupported on this kernel: CONFIG_{}={value} (needs at most {}): {}",
                self.config, self.above, self.why
            )
        })
    }
}

fn default_selftest_timeout() -> u64 {
    120
}

/// Expected result of a syscall-like step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallExpect {
    /// The call must fail with this errno; `None` means it must succeed.
    #[serde(default)]
    pub errno: Option<Errno>,
}

/// Fatal signals a step can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Signal {
    /// Segmentation fault.
    SIGSEGV,
    /// Bus error.
    SIGBUS,
}

impl Signal {
    /// The x86_64 Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::SIGSEGV => 11,
            Signal::SIGBUS => 7,
        }
    }

    /// The signal with this number, if it is one the model names.
    pub fn from_number(n: i32) -> Option<Signal> {
        [Signal::SIGSEGV, Signal::SIGBUS]
            .into_iter()
            .find(|s| s.number() == n)
    }
}

macro_rules! errnos {
    ($($name:ident = $num:expr),* $(,)?) => {
        /// Error numbers a step can expect (x86_64 Linux values).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Errno { $(#[doc = stringify!($name)] $name),* }

        impl Errno {
            /// The x86_64 Linux value, to compare with a failed call's errno.
            pub fn number(self) -> i32 {
                match self { $(Errno::$name => $num),* }
            }
            /// The errno with this value, if it is one the model names.
            pub fn from_number(n: i32) -> Option<Errno> {
                match n { $($num => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, E2BIG = 7, EBADF = 9,
    EAGAIN = 11, ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17,
    ENODEV = 19, EINVAL = 22, ENOSPC = 28, ERANGE = 34, ENOSYS = 38,
    EOPNOTSUPP = 95, ENOTSUPP = 524,
}

/// Describe an errno number by name when known (`EINVAL (22)`).
pub fn errno_name(n: i32) -> String {
    match Errno::from_number(n) {
        Some(e) => format!("{e:?} ({n})"),
        None => format!("errno {n}"),
    }
}

// Bounds. Every page, count, offset and length a step uses is checked against
// the arena and the mapping before anything touches memory: by `lab validate`
// where the values are static, and by the agent always. Both ends use these
// functions so they cannot disagree.

/// Why a page, range, offset or length does not fit the arena, the mapping or
/// the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// Pages past the end of the arena.
    #[error("{}", outside_text(arena, *first, *count, *pages))]
    OutsideArena {
        /// Arena id.
        arena: String,
        /// First page asked for.
        first: u64,
        /// Pages asked for.
        count: u64,
        /// The arena's size in pages.
        pages: u64,
    },
    /// Pages inside the arena that this process does not have mapped.
    #[error("{}", not_mapped_text(arena, *first, *count, mapped))]
    NotMapped {
        /// Arena id.
        arena: String,
        /// First page asked for.
        first: u64,
        /// Pages asked for.
        count: u64,
        /// What is mapped.
        mapped: PageSet,
    },
    /// A byte offset that is not an 8-byte slot of one page.
    #[error("offset {offset:#x} must be 8-byte aligned and at most {:#x} (an 8-byte access inside one {PAGE_SIZE}-byte page)", PAGE_SIZE - 8)]
    BadOffset {
        /// The offset.
        offset: u64,
    },
    /// A page count whose byte length does not fit in 64 bits.
    #[error("{what} {value} is too large: {value} pages do not fit a 64-bit byte length")]
    Overflow {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A count above what the consumer handles.
    #[error("{what} {value} is above {max}{why}")]
    TooMany {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
        /// Why the limit exists (with a leading separator).
        why: &'static str,
    },
    /// A count of zero where at least one is needed.
    #[error("{what} must be at least 1")]
    Zero {
        /// Which value.
        what: &'static str,
    },
}

/// `page N is` or `pages A..B are`.
fn range_text(first: u64, count: u64) -> (String, &'static str) {
    if count == 1 {
        (format!("page {first}"), "is")
    } else {
        // u128: a hostile first + count must not overflow in the message.
        let end = u128::from(first) + u128::from(count);
        (format!("pages {first}..{end}"), "are")
    }
}

fn not_mapped_text(arena: &str, first: u64, count: u64, mapped: &PageSet) -> String {
    let (what, verb) = range_text(first, count);
    format!("{what} of arena `{arena}` {verb} not mapped in this process (mapped: {mapped})")
}

fn outside_text(arena: &str, first: u64, count: u64, pages: u64) -> String {
    let (what, verb) = range_text(first, count.max(1));
    if count <= 1 || first >= pages {
        format!("{what} {verb} outside arena `{arena}` ({pages} pages)")
    } else {
        format!("{what} run past the end of arena `{arena}` ({pages} pages)")
    }
}

/// The pages `first..first + count` if they all lie inside an arena of
/// `pages` pages (an empty range must start inside or at its end).
pub fn arena_range(
    arena: &str,
    pages: u64,
    first: u64,
    count: u64,
) -> Result<Range<u64>, BoundsError> {
    match first.checked_add(count) {
        Some(end) if end <= pages => Ok(first..end),
        _ => Err(BoundsError::OutsideArena {
            arena: arena.to_owned(),
            first,
            count,
            pages,
        }),
    }
}

/// Check that `offset` is an 8-byte slot inside one page.
pub fn check_page_offset(offset: u64) -> Result<(), BoundsError> {
    if offset.is_multiple_of(8) && offset <= PAGE_SIZE - 8 {
        Ok(())
    } else {
        Err(BoundsError::BadOffset { offset })
    }
}

/// Bytes in `pages` pages, or an error naming `what` when that overflows.
pub fn pages_to_bytes(what: &'static str, pages: u64) -> Result<u64, BoundsError> {
    pages
        .checked_mul(PAGE_SIZE)
        .ok_or(BoundsError::Overflow { what, value: pages })
}

/// The pages of an arena one process has mapped, relative to the arena's
/// user address: `mmap` maps a prefix, `munmap` may punch holes, `mremap`
/// resizes. Every user access is checked against it, because a page outside
/// it is not arena memory (it may be the agent's own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    /// Sorted, disjoint, non-adjacent, non-empty ranges.
    ranges: Vec<Range<u64>>,
}

impl PageSet {
    /// Nothing mapped.
    pub fn new() -> Self {
        PageSet::default()
    }

    /// Pages `0..pages` mapped (what a successful mmap of `pages` gives).
    pub fn prefix(pages: u64) -> Self {
        let mut s = PageSet::new();
        s.insert(0..pages);
        s
    }

    /// Whether no page is mapped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// One past the last mapped page (0 when empty).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// The mapped ranges, in order.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Mark `r` mapped.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for x in self.ranges.drain(..) {
            if x.end < start || x.start > end {
                out.push(x);
            } else {
                start = start.min(x.start);
                end = end.max(x.end);
            }
        }
        out.push(start..end);
        out.sort_by_key(|x| x.start);
        self.ranges = out;
    }

    /// Mark `r` unmapped.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for x in self.ranges.drain(..) {
            if x.end <= r.start || x.start >= r.end {
                out.push(x);
                continue;
            }
            if x.start < r.start {
                out.push(x.start..r.start);
            }
            if x.end > r.end {
                out.push(r.end..x.end);
            }
        }
        self.ranges = out;
    }

    /// Whether every page of `r` is mapped (an empty range always is).
    pub fn contains(&self, r: &Range<u64>) -> bool {
        r.is_empty()
            || self
                .ranges
                .iter()
                .any(|x| x.start <= r.start && r.end <= x.end)
    }

    /// The parts of `r` that are not mapped, in order.
    pub fn holes(&self, r: &Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for x in &self.ranges {
            if x.end <= at {
                continue;
            }
            if x.start >= r.end {
                break;
            }
            if x.start > at {
                out.push(at..x.start);
            }
            at = x.end;
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    /// Check that `first..first + count` of `arena` is mapped.
    pub fn check_mapped(&self, arena: &str, first: u64, count: u64) -> Result<(), BoundsError> {
        let end = first.checked_add(count);
        if end.is_some_and(|end| self.contains(&(first..end))) {
            Ok(())
        } else {
            Err(BoundsError::NotMapped {
                arena: arena.to_owned(),
                first,
                count,
                mapped: self.clone(),
            })
        }
    }
}

impl fmt::Display for PageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("no pages");
        }
        f.write_str("pages ")?;
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}..{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// The BPF object whose programs' arguments the lab knows
/// (`guest-images/bpf/arena_ops.bpf.c`).
pub const ARENA_OPS_OBJECT: &str = "arena_ops.bpf.o";
/// `MAX_ITEMS` of arena_ops.bpf.c: its loops silently stop there.
pub const ARENA_OPS_MAX_ITEMS: u64 = 4096;

/// Which `args` of an arena_ops program are a page, a page count and a byte
/// offset.
struct PageArgs {
    page: usize,
    count: Option<usize>,
    offset: Option<usize>,
}

/// Programs that access pages they are told to. `alloc_pages` and
/// `free_pages` are left out on purpose: the kernel's own range checks are
/// what scenarios probe with them (an out-of-range page must give NULL).
fn arena_ops_page_args(program: &str) -> Option<PageArgs> {
    let (page, count, offset) = match program {
        "write_pages" => (0, Some(1), Some(3)),
        "read_page" => (0, None, Some(1)),
        "count_allocated" => (0, Some(1), None),
        _ => return None,
    };
    Some(PageArgs {
        page,
        count,
        offset,
    })
}

/// Check the page, count and offset arguments of `program` in `object`
/// against `arena` of `pages` pages (`None`: size unknown, only offsets and
/// counts are checked). The programs wrap page numbers at 4 GiB, mask
/// offsets to the page and cap loops, so a bad value would silently access a
/// different page. On error: the index in `args` and why.
pub fn check_bpf_page_args(
    object: &str,
    program: &str,
    args: &[u64],
    arena: &str,
    pages: Option<u64>,
) -> Result<(), (usize, BoundsError)> {
    if object != ARENA_OPS_OBJECT {
        return Ok(());
    }
    let Some(p) = arena_ops_page_args(program) else {
        return Ok(());
    };
    // Missing arguments are 0 (the context is zero-filled).
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    if let Some(i) = p.offset {
        check_page_offset(arg(i)).map_err(|e| (i, e))?;
    }
    let count = match p.count {
        Some(i) if arg(i) > ARENA_OPS_MAX_ITEMS => {
            return Err((
                i,
                BoundsError::TooMany {
                    what: "count",
                    value: arg(i),
                    max: ARENA_OPS_MAX_ITEMS,
                    why: ": the program's loop stops there (MAX_ITEMS)",
                },
            ))
        }
        Some(i) => arg(i),
        None => 1,
    };
    if let Some(pages) = pages {
        arena_range(arena, pages, arg(p.page), count).map_err(|e| {
            // Blame the count only when the first page itself is inside.
            let at = match p.count {
                Some(i) if arg(p.page) < pages => i,
                _ => p.page,
            };
            (at, e)
        })?;
    }
    Ok(())
}

/// BPF object names with their syscall program names, sorted.
pub type BpfCatalogue = Vec<(String, Vec<String>)>;

/// The objects `lab` builds from `src` and the syscall programs each has,
/// as `(name.bpf.o, [program, ...])`, sorted: what `bpf_load` and `bpf_run`
/// may name, so `lab validate` can refuse a typo before any VM boots.
/// Hidden files (an editor's lock file `.#x.bpf.c`, often a dangling
/// link) are not sources. Why not, if `src` or a source in it cannot be
/// read: the caller must say so rather than check nothing (one unreadable
/// file used to make the whole catalogue `None`, and validation then
/// accepted any object and program name).
pub fn bpf_catalogue(src: &std::path::Path) -> Result<BpfCatalogue, String> {
    let why = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(src).map_err(|e| why(src, e))?.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('.'))
            .and_then(|n| n.strip_suffix(".bpf.c"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|e| why(&path, e))?;
        out.push((format!("{name}.bpf.o"), syscall_programs(&text)));
    }
    out.sort();
    Ok(out)
}

/// Sections of programs `bpf_run` can run: syscall programs (their
/// context is `struct arena_args`), and tc and raw_tp programs (the agent
/// passes the arguments in the object's `.bss` `args`).
const RUNNABLE_SECTIONS: &[&str] = &["SEC(\"syscall\")", "SEC(\"tc\")", "SEC(\"raw_tp\")"];

/// Names of the functions that follow a runnable section (see
/// [`RUNNABLE_SECTIONS`]) in C source: the line after it is
/// `int name(...)`.
fn syscall_programs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !RUNNABLE_SECTIONS.contains(&line.trim()) {
            continue;
        }
        let Some(decl) = lines.find(|l| !l.trim().is_empty()) else {
            break;
        };
        let Some(before) = decl.split('(').next() else {
            continue;
        };
        if let Some(name) = before.split_whitespace().last() {
            out.push(name.trim_start_matches('*').to_owned());
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod catalogue_tests {
    use super::*;

    #[test]
    fn syscall_programs_are_found() {
        let src = "SEC(\".maps\") x;\nSEC(\"syscall\")\nint alloc_pages(struct arena_args *ctx)\n{\n}\n\nSEC(\"syscall\")\n\nint free_pages(struct arena_args *ctx)\n";
        assert_eq!(syscall_programs(src), vec!["alloc_pages", "free_pages"]);
        let tc = "SEC(\"tc\")\nint tc_free_pages(void *skb)\nSEC(\"xdp\")\nint x(void *c)\n";
        assert_eq!(syscall_programs(tc), vec!["tc_free_pages"]);
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/bpf");
        let all = bpf_catalogue(&src).unwrap();
        let ops = all.iter().find(|(o, _)| o == "arena_ops.bpf.o").unwrap();
        assert!(ops.1.contains(&"count_allocated".to_owned()), "{all:?}");
        let e = bpf_catalogue(std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(e.starts_with("/nonexistent: "), "{e}");
        // An unreadable source is an error, not "nothing to check"; an
        // editor's hidden lock file is not a source.
        let dir = std::env::temp_dir().join(format!("bpf-cat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bpf.c"), "SEC(\"syscall\")\nint go(void *c)\n").unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.join(".#a.bpf.c")).unwrap();
        assert_eq!(
            bpf_catalogue(&dir).unwrap(),
            vec![("a.bpf.o".to_owned(), vec!["go".to_owned()])]
        );
        std::os::unix::fs::symlink("/nonexistent/y", dir.join("b.bpf.c")).unwrap();
        let e = bpf_catalogue(&dir).unwrap_err();
        assert!(e.contains("b.bpf.c"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn known_issues_match_release_globs_and_reason_prefixes() {
        let k = KnownIssue {
            kernel: "6.12.*+deb12-*".into(),
            reason: "kernel splat: BUG: Bad page state".into(),
            note: "n".into(),
        };
        let reason = "kernel splat: BUG: Bad page state in process init (console.log:256)";
        assert!(k.matches("6.12.117+deb12-amd64", reason));
        assert!(!k.matches("6.13.1+deb12-amd64", reason));
        assert!(!k.matches("7.2.13+deb14-amd64", reason));
        assert!(!k.matches("6.12.117+deb12-amd64", "expected 0x1, read 0x2"));
        // A step's line may move: `*` stands for it.
        let step = KnownIssue {
            reason: "step 4/5 (processes, *): role `faulter-".into(),
            ..k
        };
        let reason = "step 4/5 (processes, race.yaml:31): role `faulter-0`: 1 failed";
        assert!(step.matches("6.12.117+deb12-amd64", reason));
        let other = "step 4/5 (processes, race.yaml:31): role `toucher`: 1 failed";
        assert!(!step.matches("6.12.117+deb12-amd64", other));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("6.12.117", "6.12.117"));
        assert!(!glob_match("6.12.117", "6.12.1170"));
        assert!(glob_match("6.*.*-x", "6.12.3-x"));
        assert!(!glob_match("a*b*c", "acb"));
    }
    use super::*;

    #[test]
    fn errno_roundtrip() {
        assert_eq!(Errno::from_number(22), Some(Errno::EINVAL));
        assert_eq!(Errno::EBUSY.number(), 16);
        assert_eq!(errno_name(7), "E2BIG (7)");
        assert_eq!(errno_name(9999), "errno 9999");
    }

    #[test]
    fn sysctl_paths_stay_in_proc_sys() {
        let s = |p: &str| {
            SysctlStep {
                path: p.into(),
                value: Some("1".into()),
                expect: None,
            }
            .file()
        };
        assert_eq!(
            s("net.core.bpf_jit_enable").as_deref(),
            Some("/proc/sys/net/core/bpf_jit_enable")
        );
        assert_eq!(
            s("kernel/panic_on_warn").as_deref(),
            Some("/proc/sys/kernel/panic_on_warn")
        );
        assert_eq!(s("../../etc/passwd"), None);
        assert_eq!(s("net//core"), None);
        assert_eq!(s(""), None);
    }

    #[test]
    fn pattern_differs_per_page() {
        assert_ne!(page_pattern(0), page_pattern(1));
        assert_ne!(page_pattern(1), 0);
    }

    #[test]
    fn arena_range_bounds() {
        assert_eq!(arena_range("a", 32, 0, 32), Ok(0..32));
        assert_eq!(arena_range("a", 32, 31, 1), Ok(31..32));
        assert_eq!(arena_range("a", 32, 32, 0), Ok(32..32));
        let e = arena_range("a", 32, 100, 1).unwrap_err();
        assert_eq!(e.to_string(), "page 100 is outside arena `a` (32 pages)");
        let e = arena_range("a", 32, 32, 1).unwrap_err();
        assert_eq!(e.to_string(), "page 32 is outside arena `a` (32 pages)");
        let e = arena_range("a", 32, 30, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pages 30..34 run past the end of arena `a` (32 pages)"
        );
        let e = arena_range("a", 32, 40, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pages 40..42 are outside arena `a` (32 pages)"
        );
        // No overflow, in the check or in the message.
        let e = arena_range("a", 32, u64::MAX, 2).unwrap_err();
        assert!(e.to_string().contains("18446744073709551617"), "{e}");
        assert!(arena_range("a", 32, 1, u64::MAX).is_err());
    }

    #[test]
    fn page_offsets_fit_an_8_byte_access() {
        assert!(check_page_offset(0).is_ok());
        assert!(check_page_offset(0xff8).is_ok());
        assert!(check_page_offset(0x1000).is_err());
        assert!(check_page_offset(0xffc).is_err());
        assert!(check_page_offset(4).is_err());
        assert!(check_page_offset(u64::MAX).is_err());
        assert_eq!(pages_to_bytes("pages", 2), Ok(8192));
        assert!(pages_to_bytes("pages", u64::MAX / 4096 + 1).is_err());
    }

    #[test]
    fn page_set_tracks_holes() {
        let mut s = PageSet::prefix(32);
        assert!(s.contains(&(0..32)));
        assert!(!s.contains(&(31..33)));
        s.remove(8..12);
        assert_eq!(s.ranges(), &[0..8, 12..32]);
        assert!(!s.contains(&(7..9)));
        assert!(s.contains(&(12..13)));
        assert_eq!(s.holes(&(4..14)), vec![8..12]);
        assert_eq!(s.holes(&(30..40)), vec![32..40]);
        assert_eq!(s.to_string(), "pages 0..8, 12..32");
        s.insert(8..12);
        assert_eq!(s, PageSet::prefix(32));
        s.remove(0..32);
        assert!(s.is_empty());
        assert_eq!(s.end(), 0);
        assert_eq!(s.to_string(), "no pages");
        let e = PageSet::prefix(16).check_mapped("a", 20, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "page 20 of arena `a` is not mapped in this process (mapped: pages 0..16)"
        );
        assert!(PageSet::prefix(16).check_mapped("a", 15, u64::MAX).is_err());
    }

    #[test]
    fn bpf_page_args() {
        let ok =
            |p: &str, args: &[u64]| check_bpf_page_args(ARENA_OPS_OBJECT, p, args, "a", Some(32));
        assert!(ok("write_pages", &[0, 32, 7, 0xff8]).is_ok());
        assert_eq!(ok("write_pages", &[30, 4, 7, 0]).unwrap_err().0, 1);
        assert_eq!(ok("write_pages", &[40, 1, 7, 0]).unwrap_err().0, 0);
        assert_eq!(ok("write_pages", &[0, 1, 7, 0x1000]).unwrap_err().0, 3);
        assert_eq!(ok("read_page", &[32, 0]).unwrap_err().0, 0);
        assert_eq!(ok("read_page", &[3, 0x1008]).unwrap_err().0, 1);
        assert_eq!(ok("count_allocated", &[0, 33]).unwrap_err().0, 1);
        assert_eq!(ok("count_allocated", &[0, 5000]).unwrap_err().0, 1);
        // The kernel's own range checks are what these probe.
        assert!(ok("alloc_pages", &[15, 200]).is_ok());
        assert!(ok("free_pages", &[100, 1]).is_ok());
        // Other objects are not known; unknown sizes only check offsets.
        assert!(check_bpf_page_args("x.bpf.o", "read_page", &[99, 3], "a", Some(1)).is_ok());
        assert!(check_bpf_page_args(ARENA_OPS_OBJECT, "read_page", &[999, 8], "a", None).is_ok());
    }

    #[test]
    fn counts() {
        assert!(Count::Exactly(0).allows(0));
        assert!(!Count::Exactly(0).allows(1));
        let r = Count::Range {
            at_least: Some(1),
            at_most: Some(3),
        };
        assert!(!r.allows(0) && r.allows(1) && r.allows(3) && !r.allows(4));
        assert_eq!(r.to_string(), "1..=3");
        let e: WorkersExpect =
            serde_json::from_str(r#"{"failures": 0, "signals": {"SIGSEGV": {"at_least": 1}}}"#)
                .unwrap();
        assert_eq!(e.failures, Some(Count::Exactly(0)));
        assert_eq!(e.signals[&Signal::SIGSEGV].to_string(), "at least 1");
        // The runner sends scenarios to the agent as JSON: enum map keys too.
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<WorkersExpect>(&json).unwrap(), e);
        assert!(serde_json::from_str::<WorkersExpect>(r#"{"signals": {"SIGFOO": 1}}"#).is_err());
        assert_eq!(Signal::from_number(11), Some(Signal::SIGSEGV));
        assert_eq!(Signal::from_number(9), None);
    }

    #[test]
    fn any_of_reads() {
        let alt = |f: fn(&mut TouchExpect)| {
            let mut e = TouchExpect::default();
            f(&mut e);
            e
        };
        let e = TouchExpect {
            any_of: vec![
                alt(|e| e.pattern = true),
                alt(|e| e.zero = true),
                alt(|e| e.signal = Some(Signal::SIGSEGV)),
            ],
            ..TouchExpect::default()
        };
        assert!(e.accepts_read(3, page_pattern(3)));
        assert!(e.accepts_read(3, 0));
        assert!(!e.accepts_read(3, page_pattern(4)));
        assert_eq!(e.accepted_signals(), vec![Signal::SIGSEGV]);
        assert!(e.expects_values());
        assert_eq!(e.fields_set(), 1);
        assert_eq!(
            e.describe(0),
            format!("one of [{:#x}, 0x0, SIGSEGV]", page_pattern(0))
        );
        // A read the first alternative explains is no race; one only a later
        // alternative explains is (the page was freed under the reader).
        assert!(!e.raced_read(3, page_pattern(3)));
        assert!(e.raced_read(3, 0));
        assert!(!e.raced_read(3, 7));
        assert!(!TouchExpect::default().raced_read(3, 0));
        // Nothing expected: any value; a plain value: only it.
        assert!(TouchExpect::default().accepts_read(1, 99));
        assert!(!alt(|e| e.value = Some(5)).accepts_read(1, 6));
    }

    #[test]
    fn single_list_is_one_implicit_role() {
        let p = ParallelStep {
            count: Some(3),
            iterations: 1,
            duration_ms: None,
            seed: None,
            jitter_us: 0,
            steps: vec![Step::Sleep(SleepStep {
                ms: 1,
                socket: false,
            })],
            roles: vec![],
            expect: WorkersExpect::default(),
        };
        let r = p.role_views();
        assert_eq!(r.len(), 1);
        assert!(r[0].implicit);
        assert_eq!(
            (r[0].name, r[0].count, r[0].steps.len()),
            (IMPLICIT_ROLE, 3, 1)
        );
        assert_eq!(p.total_workers(), 3);
        assert_eq!(Step::Processes(p).child_lists().len(), 2);
    }

    #[test]
    fn steps_that_fork_are_refused_inside_threads() {
        let steps = |json: &str| serde_json::from_str::<Vec<Step>>(json).unwrap();
        let write = r#"{"touch": {"arena": "a", "page": 0, "count": 64, "op": "write"}}"#;
        let pattern = r#"{"touch": {"arena": "a", "page": 0, "count": 64, "op": "read", "expect": {"pattern": true}}}"#;
        let segv = r#"{"touch": {"arena": "a", "page": 9, "op": "read", "expect": {"signal": "SIGSEGV"}}}"#;
        let raced = r#"{"touch": {"arena": "a", "page": 9, "op": "read", "expect": {"any_of": [{"zero": true}, {"signal": "SIGSEGV"}]}}}"#;
        let procs = format!(r#"{{"processes": {{"count": 2, "steps": [{segv}]}}}}"#);
        // scenarios/arena/race-threads-same-mm.yaml: plain touches only.
        let same_mm = steps(&format!(
            r#"[{{"arena": {{"id": "a", "pages": 64}}}}, {{"mmap": {{"arena": "a"}}}},
                {{"threads": {{"count": 4, "iterations": 300, "steps": [{write}, {pattern}]}}}},
                {pattern}]"#
        ));
        assert_eq!(forks_inside_threads(&same_mm, "steps"), vec![]);
        // Forks outside threads (and in processes inside nothing) are fine.
        let outside = steps(&format!(
            r#"[{segv}, {procs}, {{"processes": {{"count": 1, "steps": [{{"threads": {{"count": 2, "steps": [{write}]}}}}]}}}}]"#
        ));
        assert_eq!(forks_inside_threads(&outside, "steps"), vec![]);
        let inside = steps(&format!(
            r#"[{write},
                {{"threads": {{"count": 2, "steps": [{write}, {procs}, {{"repeat": {{"times": 2, "steps": [{raced}]}}}}]}}}},
                {{"threads": {{"roles": [{{"name": "r", "count": 1, "setup": [{segv}], "steps": [{write}]}}]}}}},
                {{"processes": {{"count": 1, "steps": [{{"threads": {{"count": 2, "steps": [{segv}]}}}}]}}}}]"#
        ));
        let problems = forks_inside_threads(&inside, "steps");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "steps[1].threads.steps[1].processes",
                "steps[1].threads.steps[2].repeat.steps[0].touch.expect",
                "steps[2].threads.roles[0].setup[0].touch.expect",
                "steps[3].processes.steps[0].threads.steps[0].touch.expect",
            ]
        );
        assert_eq!(problems[0].1, PROCESSES_IN_THREADS);
        assert_eq!(problems[1].1, SIGNAL_TOUCH_IN_THREADS);
    }

    #[test]
    fn unsupported_applies_only_above_its_limit() {
        let u = Unsupported {
            tests: vec!["libarena".into()],
            config: "NR_CPUS".into(),
            above: 1024,
            why: "arena spin lock".into(),
        };
        let why = u.applies("CONFIG_X=y\nCONFIG_NR_CPUS=8192\n").unwrap();
        assert_eq!(
            why,
            "unsupported on this kernel: CONFIG_NR_CPUS=8192 (needs at most 1024): arena spin lock"
        );
        assert_eq!(u.applies("CONFIG_NR_CPUS=1024\n"), None);
        assert_eq!(u.applies("CONFIG_NR_CPUS_X=9999\n"), None);
        // Unknown or unreadable: the tests run.
        assert_eq!(u.applies(""), None);
        assert_eq!(u.applies("CONFIG_NR_CPUS=lots\n"), None);
    }

    #[test]
    fn steps_require_the_config_options_they_need() {
        let s: Scenario = serde_json::from_value(serde_json::json!({
            "name": "x",
            "requires": [{"kfunc": "bpf_arena_alloc_pages"}],
            "steps": [
                {"memory": {"baseline": "b"}},
                {"memory": {"since": "b", "meminfo": "SUnreclaim", "at_most_kib": 1}},
                {"repeat": {"times": 2, "steps": [
                    {"memory": {"since": "b", "at_most_kib": 1}},
                    {"memory": {"since": "b", "at_most_kib": 2}},
                    {"kmemleak": {"action": "clear"}}
                ]}},
            ]
        }))
        .unwrap();
        assert_eq!(
            s.requirements(),
            [
                Requirement::Kfunc("bpf_arena_alloc_pages".into()),
                Requirement::Config(KernelOption::Memcg),
                Requirement::Config(KernelOption::DebugKmemleak),
            ]
        );
        assert_eq!(
            Requirement::Config(KernelOption::Memcg).to_string(),
            "CONFIG_MEMCG (the memory controller, for cgroup memory checks)"
        );
        let r: Requirement = serde_json::from_str(r#"{"config": "FAULT_INJECTION"}"#).unwrap();
        assert_eq!(r, Requirement::Config(KernelOption::FaultInjection));
        assert!(serde_json::from_str::<Requirement>(r#"{"config": "MEMCGG"}"#).is_err());
    }

    #[test]
    fn requirements_read_as_one_key_maps() {
        let r: Vec<Requirement> = serde_json::from_str(
            r#"[{"kfunc": "bpf_arena_reserve_pages"}, {"kallsyms": "range_tree_set"}]"#,
        )
        .unwrap();
        assert_eq!(
            r,
            [
                Requirement::Kfunc("bpf_arena_reserve_pages".into()),
                Requirement::Kallsyms("range_tree_set".into())
            ]
        );
        assert_eq!(r[0].to_string(), "kfunc bpf_arena_reserve_pages");
        assert!(serde_json::from_str::<Vec<Requirement>>(r#"[{"version": "7.2"}]"#).is_err());
    }

    #[test]
    fn nested_steps_are_named_by_their_list() {
        let sleep = || {
            Step::Sleep(SleepStep {
                ms: 1,
                socket: false,
            })
        };
        let steps = vec![
            sleep(),
            Step::Repeat(RepeatStep {
                times: 2,
                steps: vec![sleep(), sleep()],
            }),
        ];
        assert_eq!(
            step_fields(&steps, "steps"),
            [
                "steps[0]",
                "steps[1]",
                "steps[1].repeat.steps[0]",
                "steps[1].repeat.steps[1]"
            ]
        );
        let lines = StepLines {
            file: "x.yaml".into(),
            lines: [("steps[1].repeat.steps[1]".to_owned(), 22)]
                .into_iter()
                .collect(),
        };
        let Step::Repeat(r) = &steps[1] else { panic!() };
        assert_eq!(
            lines.step("steps[1].repeat.steps", &r.steps, 1).to_string(),
            "step 2/2 (sleep, x.yaml:22)"
        );
        assert_eq!(
            lines.top_level(&steps)[1].to_string(),
            "step 2/2 (repeat, x.yaml)"
        );
    }

    #[test]
    fn scenario_json_roundtrip() {
        let s = Scenario {
            name: "x".into(),
            description: String::new(),
            tags: vec![],
            vm: VmSpec::default(),
            timeout_s: 5,
            requires: vec![
                Requirement::Kfunc("bpf_arena_reserve_pages".into()),
                Requirement::Kallsyms("arena_vm_fault".into()),
            ],
            steps: vec![Step::Sleep(SleepStep {
                ms: 1,
                socket: false,
            })],
            known_issues: vec![KnownIssue {
                kernel: "6.12.*".into(),
                reason: "kernel splat".into(),
                note: "n".into(),
            }],
            lines: StepLines {
                file: "x.yaml".into(),
                lines: [("steps[0]".to_owned(), 9)].into_iter().collect(),
            },
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), s);
    }
}

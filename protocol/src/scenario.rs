//! The typed scenario model. The runner parses YAML into these types (strictly:
//! unknown fields and steps are errors) and sends them as JSON to the agent,
//! which runs them. The schema is documented in `scenarios/README.md`.

use serde::{Deserialize, Serialize};

/// Default per-scenario timeout, guest boot excluded.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Default number of vCPUs of a scenario's VM.
pub const DEFAULT_VCPUS: u32 = 2;
/// Default guest memory of a scenario's VM.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Guest page size the arena works in.
pub const PAGE_SIZE: u64 = 4096;

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
    /// Wall-clock limit for the steps, boot excluded.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Steps run in order by the agent; the first failure ends the scenario.
    pub steps: Vec<Step>,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
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
    /// Write a value under `/proc/sys`.
    Sysctl(SysctlStep),
    /// Sleep for a while.
    Sleep(SleepStep),
    /// Run a block of steps several times.
    Repeat(RepeatStep),
    /// Check the kernel log (on top of the always-on splat detector).
    ExpectKernelLog(KernelLogStep),
    /// Run the upstream `test_progs` selftests shipped in the image.
    Selftest(SelftestStep),
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
        }
    }

    /// Nested step lists (for validation that walks the tree).
    pub fn children(&self) -> &[Step] {
        match self {
            Step::Processes(p) | Step::Threads(p) => &p.steps,
            Step::Repeat(r) => &r.steps,
            _ => &[],
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
    /// The advice.
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
    /// Expected outcome; default: the access succeeds.
    #[serde(default)]
    pub expect: TouchExpect,
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
    /// Object file name in the image, e.g. `arena_ops.bpf.o`.
    pub object: String,
    /// Reuse the map of an earlier `arena` step as the object's arena map.
    #[serde(default)]
    pub reuse_arena: Option<String>,
    /// Register the object's arena map under this arena id for user steps.
    #[serde(default)]
    pub arena_id: Option<String>,
    /// Expected outcome; default success.
    #[serde(default)]
    pub expect: SyscallExpect,
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

/// `processes:` / `threads:` run `steps` in `count` workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelStep {
    /// Number of workers.
    pub count: u32,
    /// How many times each worker runs its steps.
    #[serde(default = "one")]
    pub iterations: u64,
    /// Stop iterating after this long even if iterations remain.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Shuffle each iteration's page order / jitter with this seed
    /// (default: the run's seed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Random sleep of up to this many microseconds between iterations.
    #[serde(default)]
    pub jitter_us: u64,
    /// Steps each worker runs per iteration.
    pub steps: Vec<Step>,
}

/// `sysctl:` write `value` to `/proc/sys/<path>` (e.g. `net/core/bpf_jit_harden`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlStep {
    /// Path below `/proc/sys`, with `/` or `.` separators.
    pub path: String,
    /// Value to write.
    pub value: String,
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
    /// Milliseconds.
    pub ms: u64,
}

/// `repeat:` run `steps` `times` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatStep {
    /// Repetitions.
    pub times: u64,
    /// The block.
    pub steps: Vec<Step>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

macro_rules! errnos {
    ($($name:ident = $num:expr),* $(,)?) => {
        /// Error numbers a step can expect (x86_64 Linux values).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Errno { $(#[doc = stringify!($name)] $name),* }

        impl Errno {
            /// The numeric value.
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

#[cfg(test)]
mod tests {
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
                value: "1".into(),
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
    fn scenario_json_roundtrip() {
        let s = Scenario {
            name: "x".into(),
            description: String::new(),
            tags: vec![],
            vm: VmSpec::default(),
            timeout_s: 5,
            steps: vec![Step::Sleep(SleepStep { ms: 1 })],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), s);
    }
}

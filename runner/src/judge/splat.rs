//! Kernel splat detection on the serial console log: oopses, BUGs, WARNINGs,
//! sanitizer reports, panics, RCU stalls, hung tasks and lockups.

/// A splat found in the console log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splat {
    /// 1-based line in `console.log`.
    pub line: usize,
    /// Which detector matched.
    pub kind: &'static str,
    /// The line itself (timestamp removed): the failure title.
    pub title: String,
}

/// (kind, marker) pairs; a line containing the marker is a splat.
const MARKERS: &[(&str, &str)] = &[
    ("bug", "BUG:"),
    ("warning", "WARNING:"),
    ("kasan", "KASAN:"),
    ("ubsan", "UBSAN:"),
    ("kfence", "KFENCE:"),
    ("gpf", "general protection fault"),
    ("oops", "Oops:"),
    ("oops", "Oops -"),
    ("panic", "Kernel panic - not syncing"),
    ("rcu_stall", "rcu_sched detected stall"),
    ("rcu_stall", "rcu_preempt detected stall"),
    ("rcu_stall", "detected stalls on CPUs/tasks"),
    ("rcu_stall", "self-detected stall on CPU"),
    ("hung_task", "blocked for more than"),
    ("soft_lockup", "soft lockup - CPU#"),
    ("hard_lockup", "Watchdog detected hard LOCKUP"),
    ("lockdep", "possible circular locking dependency detected"),
    ("lockdep", "possible recursive locking detected"),
    ("refcount", "refcount_t: "),
    ("list_corruption", "list_add corruption"),
    ("list_corruption", "list_del corruption"),
];

/// Lines the lab itself (the agent, libbpf inside it) prints on the console;
/// never splats.
const OWN_PREFIXES: &[&str] = &["arena-agent:", "libbpf:"];

/// Remove a `[   12.345678] ` printk timestamp.
pub fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let inside = &rest[..end];
            if inside
                .trim()
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
            {
                return rest[end + 1..].trim_start();
            }
        }
    }
    t
}

/// Every splat in `log`, in order.
pub fn detect(log: &str) -> Vec<Splat> {
    let mut out = Vec::new();
    for (i, raw) in log.lines().enumerate() {
        let line = strip_timestamp(raw.trim_end_matches('\r'));
        if OWN_PREFIXES.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        if let Some((kind, _)) = MARKERS.iter().find(|(_, m)| line.contains(m)) {
            out.push(Splat {
                line: i + 1,
                kind,
                title: line.chars().take(300).collect(),
            });
        }
    }
    out
}

/// The title `Oops: int3` starts with: a breakpoint trap in kernel mode.
/// A stock kernel takes one when another CPU runs code it is patching
/// (static keys, alternatives) and the patcher's int3 handler misses it.
const INT3_OOPS: &str = "Oops: int3";

/// RFLAGS bits every x86 CPU reads as zero: 3, 5, 15 and 22–63.
const EFLAGS_READ_AS_ZERO: u64 = 0xffff_ffff_ffc0_8028;
/// RFLAGS bit 1 always reads as one.
const EFLAGS_READ_AS_ONE: u64 = 0x2;

/// A console that shows the machine below the kernel failed, so its splat
/// is not a verdict on the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineFault {
    /// The splat the kernel printed (the first one in the log).
    pub splat: Splat,
    /// Why this is the machine's doing, one clause.
    pub cause: String,
}

/// The first sign in `log` that the machine, not the kernel, failed:
///
/// - a register dump whose EFLAGS has a bit set that every CPU reads as
///   zero (or bit 1 clear): the CPU pushed that value, so the vCPU state
///   was corrupted by whatever runs the vCPU. Seen under `lab nested`,
///   where QEMU 7.2's TCG emulates SVM for L1's KVM: RIP 0 or a double
///   fault with EFLAGS such as `04182402`, a few boots in a hundred and
///   more under load (docs/architecture.md). Valid on every backend.
/// - only with `tcg`: `Oops: int3` from live text patching, whose
///   cross-CPU ordering multi-threaded TCG does not always honour. Under
///   hardware KVM the same splat is a real kernel bug.
pub fn machine_fault(log: &str, tcg: bool) -> Option<MachineFault> {
    let splats = detect(log);
    if let Some((line, eflags)) = impossible_eflags(log) {
        // The dump belongs to the splat printed before it.
        let splat = splats
            .iter()
            .rev()
            .find(|s| s.line <= line)
            .or(splats.first())
            .cloned()
            .unwrap_or_else(|| Splat {
                line,
                kind: "oops",
                title: format!("EFLAGS: {eflags:08x}"),
            });
        return Some(MachineFault {
            splat,
            cause: format!(
                "corrupted vCPU state: EFLAGS {eflags:08x} (console line {line}) has bits set \
                 that no CPU sets"
            ),
        });
    }
    if !tcg {
        return None;
    }
    let splat = splats
        .into_iter()
        .find(|s| s.title.starts_with(INT3_OOPS))?;
    Some(MachineFault {
        splat,
        cause: "emulator fault under multi-threaded TCG (live text patching; under hardware \
                KVM the same splat would be a kernel bug)"
            .into(),
    })
}

/// The first kernel register dump line (`RSP: 0018:… EFLAGS: 04aa3602`)
/// whose EFLAGS no CPU can hold: its 1-based line and the value. The
/// agent's own lines never start with `RSP: `.
fn impossible_eflags(log: &str) -> Option<(usize, u64)> {
    log.lines().enumerate().find_map(|(i, raw)| {
        let line = strip_timestamp(raw.trim_end_matches('\r'));
        // x86-64's `show_iret_regs` prints "RSP: ss:sp EFLAGS: flags"; any
        // other line (a command line echoed at boot, the agent) is text.
        let (head, rest) = line.split_once(" EFLAGS: ")?;
        if !head.starts_with("RSP: ") {
            return None;
        }
        let hex = rest.split_whitespace().next()?;
        let value = u64::from_str_radix(hex, 16).ok()?;
        let impossible = value & EFLAGS_READ_AS_ZERO != 0 || value & EFLAGS_READ_AS_ONE == 0;
        impossible.then_some((i + 1, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real splat first lines, as 6.x kernels print them.
    const REAL: &[(&str, &str)] = &[
        ("[    5.123456] BUG: kernel NULL pointer dereference, address: 0000000000000008", "bug"),
        ("[   12.000001] WARNING: CPU: 1 PID: 93 at kernel/bpf/arena.c:289 arena_vm_fault+0x1b1/0x1c0", "warning"),
        ("[    3.3] BUG: KASAN: slab-use-after-free in arena_map_free+0x2c/0x90", "bug"),
        ("[    7.77] UBSAN: array-index-out-of-bounds in kernel/bpf/arena.c:120:5", "ubsan"),
        ("[    1.1] Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI", "gpf"),
        ("[    1.1] Oops: 0000 [#1] PREEMPT SMP PTI", "oops"),
        ("[    9.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b", "panic"),
        ("[   30.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu_stall"),
        ("[  242.9] INFO: task arena-agent:77 blocked for more than 120 seconds.", "hung_task"),
        ("[   50.1] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [arena-agent:81]", "bug"),
        ("[   11.2] refcount_t: underflow; use-after-free.", "refcount"),
    ];

    #[test]
    fn detects_real_splats() {
        for (line, kind) in REAL {
            let found = detect(line);
            assert_eq!(found.len(), 1, "{line}");
            assert_eq!(found[0].kind, *kind, "{line}");
            assert!(
                !found[0].title.starts_with('['),
                "timestamp kept: {}",
                found[0].title
            );
        }
    }

    #[test]
    fn int3_oops_is_a_machine_fault_only_under_tcg() {
        let log = "[ 1.0] WARNING: CPU: 0 PID: 1 at x\n\
[ 2.0] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n";
        let f = machine_fault(log, true).expect("int3 oops");
        assert_eq!(f.splat.line, 2);
        assert!(f.cause.contains("TCG"), "{}", f.cause);
        assert!(
            machine_fault(log, false).is_none(),
            "a kernel bug under KVM"
        );
        assert!(machine_fault("[ 1.0] Oops: 0000 [#1] PREEMPT SMP PTI\n", true).is_none());
        assert!(machine_fault("[ 1.0] BUG: Bad page state in process x\n", true).is_none());
        // Only a kernel line counts, never the agent quoting one.
        assert!(machine_fault("arena-agent: Oops: int3\n", true).is_none());
    }

    /// The head of a real dump from `lab nested` (Debian 6.12 under the own
    /// VMM, boot CPU in `extract_entropy`).
    const CORRUPT_DUMP: &str = "\
[    0.568356] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    0.568356] #PF: supervisor instruction fetch in kernel mode
[    0.568356] Oops: Oops: 0010 [#1] PREEMPT SMP NOPTI
[    0.568356] RIP: 0010:0x0
[    0.568356] RSP: 0000:ffffffff82c03b70 EFLAGS: 04182402
[    0.568356] RAX: 0000000000000000 RBX: 0000000000000000 RCX: 0000000000000000
";

    #[test]
    fn reserved_eflags_bits_are_a_machine_fault_on_every_backend() {
        for tcg in [false, true] {
            let f = machine_fault(CORRUPT_DUMP, tcg).expect("corrupt EFLAGS");
            assert_eq!(f.splat.line, 3, "the splat before the dump");
            assert!(f.splat.title.starts_with("Oops: Oops: 0010"));
            assert!(
                f.cause.contains("EFLAGS 04182402 (console line 5)"),
                "{}",
                f.cause
            );
        }
        // Bit 1 clear is as impossible as a reserved bit set.
        let no_fixed = "[ 1.0] Oops: 0000\n[ 1.0] RSP: 0018:ffffc900 EFLAGS: 00010244\n";
        assert!(machine_fault(no_fixed, false).is_some());
    }

    #[test]
    fn possible_eflags_keep_the_splat_a_kernel_verdict() {
        // Every architectural bit set (ID, VIP, VIF, AC, VM, RF, NT, IOPL,
        // OF..CF) is a value a CPU can push: the splat stays the kernel's.
        for v in [
            "00010246",
            "00000002",
            "003f7fd7",
            "00010206 ORIG_RAX: 0000",
        ] {
            let log = format!("[ 1.0] Oops: 0000 [#1]\n[ 1.0] RSP: 0018:ffffc900 EFLAGS: {v}\n");
            assert!(machine_fault(&log, false).is_none(), "{v}");
        }
        // Only a register dump line counts: not the agent quoting one, not
        // a command line the kernel echoes.
        for text in [
            "arena-agent: RSP: 0018:ffffc900 EFLAGS: 04182402",
            "[ 0.0] Command line: console=ttyS0 x=EFLAGS: 04182402",
            "[ 0.0] EFLAGS: 04182402",
        ] {
            assert!(machine_fault(text, false).is_none(), "{text}");
        }
    }

    #[test]
    fn clean_boot_log_has_no_splat() {
        let log = "\
[    0.000000] Linux version 6.12.117+deb12-amd64 (debian-kernel@lists.debian.org)
[    0.000000] Command line: console=ttyS0 quiet panic=-1
[    0.512000] Run /init as init process
arena-agent: starting
arena-agent: WARNING: this is the agent talking, not the kernel
libbpf: prog 'x': BUG: not the kernel either
[    1.200000] virtio_mmio: probe of LNRO0005:00 succeeded
";
        assert!(detect(log).is_empty());
    }

    #[test]
    fn reports_line_numbers_in_order() {
        let log = "ok\r\n[ 1.0] WARNING: CPU: 0 PID: 1 at x\r\nok\n[ 2.0] BUG: y\n";
        let s = detect(log);
        assert_eq!(s.iter().map(|s| s.line).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(s[0].title, "WARNING: CPU: 0 PID: 1 at x");
    }
}

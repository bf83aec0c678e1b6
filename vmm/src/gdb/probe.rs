//! What debugging this host's KVM can do, asked of KVM itself: once per
//! process and capability, with a throwaway one-vCPU VM.
//!
//! `KVM_SET_GUEST_DEBUG` may be accepted and still not work. Two KVMs the
//! lab runs on show it:
//!
//! - PVM emulates the guest kernel's instructions and fails on `int3`
//!   (`KVM_EXIT_INTERNAL_ERROR`) even with `KVM_GUESTDBG_USE_SW_BP`;
//!   hardware breakpoints and single-step work.
//! - KVM inside `lab nested`'s L1 runs on QEMU TCG's emulated SVM (QEMU
//!   7.2 here). TCG checks an executed `int3` against the INTn intercept
//!   only, never against the `#BP` exception intercept KVM sets
//!   (`target/i386/tcg/excp_helper.c`, `raise_interrupt2`), so the `int3`
//!   reaches the guest's own handler; and its `VMRUN` loads the guest's DR7
//!   from the VMCB without re-arming its breakpoints
//!   (`target/i386/tcg/sysemu/svm_helper.c`, `helper_vmrun`), so DR0–DR3
//!   never fire. Single-step (RFLAGS.TF) does.
//!
//! A breakpoint that cannot work is refused with an error reply (gdb says
//! it cannot insert it) instead of leaving gdb waiting for a stop that
//! never comes, or, for `int3`, crashing the guest's code.
//!
//! The probe VM is the PVH entry state (32-bit protected mode, paging
//! off, empty IDT) at [`CODE`], every other byte `hlt`: what the debug
//! exit should have caught ends in `KVM_EXIT_HLT` (the instruction ran
//! on) or a triple fault (`int3` delivered to the empty IDT).

use std::sync::mpsc::channel;
use std::sync::OnceLock;
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

use super::breakpoints::{dr6_hit, guest_debug, DebugRequest, HwBreakpoints, INT3};
use super::stop::{BP_VECTOR, DB_VECTOR};
use crate::arch::x86_64::{cpuid, regs};
use crate::memory::GuestMem;

/// A debugging feature the stub depends on KVM for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `int3` in guest memory turned into `KVM_EXIT_DEBUG`.
    SwBreakpoints,
    /// DR0–DR3 execution breakpoints.
    HwBreakpoints,
    /// One instruction, then `KVM_EXIT_DEBUG`.
    SingleStep,
}

impl Capability {
    fn index(self) -> usize {
        self as usize
    }

    /// The byte at [`CODE`] the probe executes.
    fn instruction(self) -> u8 {
        match self {
            Capability::SwBreakpoints => INT3,
            Capability::HwBreakpoints | Capability::SingleStep => NOP,
        }
    }
}

/// Guest physical address of the probed instruction.
const CODE: u64 = 0x1000;
/// The probe VM's RAM: boot GDT, IDT and page tables, and the code.
const PROBE_BYTES: usize = 0x10000;
/// `nop`: one byte, for a step or an execution breakpoint.
const NOP: u8 = 0x90;
/// The byte every other address holds.
const HLT: u8 = 0xf4;
/// `KVM_RUN`s the probe may take before it counts as an answer.
const MAX_EXITS: usize = 16;
/// How long the probe may take before it counts as "does not work".
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `Ok` when this host's KVM does `cap` for a debugger; otherwise what it
/// did instead.
pub fn check(cap: Capability) -> Result<(), String> {
    static ANSWERS: [OnceLock<Result<(), String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    ANSWERS[cap.index()]
        .get_or_init(|| {
            let (tx, rx) = channel();
            // On a thread of its own: a KVM that never returns from
            // KVM_RUN must not hang the debugger (the thread is then left).
            let spawned = std::thread::Builder::new()
                .name("gdb-probe".into())
                .spawn(move || {
                    let _ = tx.send(run_probe(cap));
                });
            if let Err(e) = spawned {
                return Err(format!("cannot start the probe: {e}"));
            }
            rx.recv_timeout(PROBE_TIMEOUT)
                .unwrap_or_else(|_| Err("the probe VM did not answer".into()))
        })
        .clone()
}

/// Shorthand for [`check`] of [`Capability::SwBreakpoints`].
pub fn sw_breakpoints() -> Result<(), String> {
    check(Capability::SwBreakpoints)
}

/// Builds the probe VM for `cap` and runs it until it answers.
fn run_probe(cap: Capability) -> Result<(), String> {
    // Declared first, dropped last: unmapped only once the VM is gone.
    let mem =
        GuestMem::from_ranges(&[(GuestAddress(0), PROBE_BYTES)]).map_err(|e| e.to_string())?;
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: `mem` is declared before `vm` and its vCPU, so it is
    // dropped after them: the VM never runs on unmapped memory.
    unsafe { crate::memory::register_with_kvm(&vm, &mem) }.map_err(|e| e.to_string())?;
    let fill = vec![HLT; PROBE_BYTES];
    mem.write_slice(&fill, GuestAddress(0))
        .map_err(|e| e.to_string())?;
    regs::write_boot_tables(&mem).map_err(|e| e.to_string())?;
    mem.write_obj(cap.instruction(), GuestAddress(CODE))
        .map_err(|e| e.to_string())?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut ids = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let quirks = crate::probe::cpuid_quirks();
    cpuid::patch_cpuid(&mut ids, 0, quirks);
    vcpu.set_cpuid2(&ids)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    regs::setup_boot_regs(&vcpu, regs::BootEntry::Pvh { entry: CODE })
        .map_err(|e| e.to_string())?;
    let mut hw = HwBreakpoints::default();
    if cap == Capability::HwBreakpoints {
        hw.add(CODE);
    }
    let req = DebugRequest {
        step: cap == Capability::SingleStep,
        ..Default::default()
    };
    vcpu.set_guest_debug(&guest_debug(&hw, cap == Capability::SwBreakpoints, req))
        .map_err(|e| format!("KVM_SET_GUEST_DEBUG: {e}"))?;
    for _ in 0..MAX_EXITS {
        let exit = match vcpu.run() {
            Ok(VcpuExit::Debug(d)) => Some(d),
            Ok(VcpuExit::Intr) => continue,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Ok(VcpuExit::Hlt) => return Err("the guest ran on past it (KVM_EXIT_HLT)".into()),
            Ok(VcpuExit::Shutdown) => {
                return Err("the guest took the exception itself (triple fault)".into())
            }
            Ok(other) => return Err(format!("{other:?} instead of KVM_EXIT_DEBUG")),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        };
        let Some(d) = exit else { continue };
        let ok = match cap {
            Capability::SwBreakpoints => d.exception == BP_VECTOR && d.pc == CODE,
            Capability::HwBreakpoints => {
                d.exception == DB_VECTOR && d.pc == CODE && d.dr6 & dr6_hit(0) != 0
            }
            Capability::SingleStep => d.exception == DB_VECTOR && d.pc == CODE + 1,
        };
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "KVM_EXIT_DEBUG with vector {} at {:#x} (DR6 {:#x})",
                d.exception, d.pc, d.dr6
            ))
        };
    }
    Err("the probe VM gave no answer".into())
}

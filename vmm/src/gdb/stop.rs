//! What a `KVM_EXIT_DEBUG` means: one of our breakpoints, the end of a
//! single step, or a debug event that is not ours.
//!
//! KVM reports the exception vector (1 = `#DB`, 3 = `#BP`), the linear
//! address of the instruction, and DR6. A `#DB` with DR6.BS is a finished
//! step; with a B0–B3 bit, the hardware breakpoint in that slot. A `#BP`
//! is one of our `int3`s when we set one at that address. Anything else
//! is stale (a breakpoint removed, or a step asked of another vCPU, while
//! this one was already on its way out) or the guest's own (its `int3`s,
//! e.g. Linux patching its text); the stub then resumes the vCPU and
//! hands the guest its own `#BP` back.

use kvm_bindings::kvm_debug_exit_arch;

use super::breakpoints::{HwBreakpoints, SwBreakpoints, INT3};

/// Vector of the debug exception (`#DB`): hardware breakpoints and steps.
pub const DB_VECTOR: u32 = 1;
/// Vector of the breakpoint exception (`#BP`): `int3`.
pub const BP_VECTOR: u32 = 3;

/// What a debug exit means to the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// Our `int3` at this address.
    SwBreak(u64),
    /// Our hardware breakpoint at this address.
    HwBreak(u64),
    /// The step we asked for is done.
    Step,
    /// The guest's own `int3`: to be given back to the guest.
    GuestBp,
    /// Nothing to report: resume as if nothing happened.
    Stale,
}

/// Classifies `exit`. `stepping`: whether this vCPU was asked to step;
/// `byte_at_pc`: the guest's byte at the reported address now, if it is
/// readable (an `int3` that is no longer there was a breakpoint of ours
/// that has since been removed).
pub fn classify(
    exit: &kvm_debug_exit_arch,
    hw: &HwBreakpoints,
    sw: &SwBreakpoints,
    stepping: bool,
    byte_at_pc: Option<u8>,
) -> DebugStop {
    match exit.exception {
        BP_VECTOR if sw.get(exit.pc).is_some() => DebugStop::SwBreak(exit.pc),
        BP_VECTOR if byte_at_pc == Some(INT3) => DebugStop::GuestBp,
        BP_VECTOR => DebugStop::Stale,
        // A stepping vCPU's #DB is its step even without DR6.BS: not every
        // KVM reports DR6 the same way (TF is the stub's own doing).
        DB_VECTOR => match hw.hit(exit.dr6) {
            Some(addr) => DebugStop::HwBreak(addr),
            None if stepping => DebugStop::Step,
            None => DebugStop::Stale,
        },
        _ => DebugStop::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::breakpoints::SwBreakpoint;

    fn exit(exception: u32, pc: u64, dr6: u64) -> kvm_debug_exit_arch {
        kvm_debug_exit_arch {
            exception,
            pc,
            dr6,
            ..Default::default()
        }
    }

    /// DR6 values as KVM reported them under PVM: a step, and slot 0.
    const DR6_STEP: u64 = 0xffff_4ff0;
    const DR6_SLOT0: u64 = 0xffff_0ff1;

    #[test]
    fn debug_exits_are_told_apart() {
        let mut hw = HwBreakpoints::default();
        hw.add(0x1000);
        let mut sw = SwBreakpoints::default();
        sw.insert(
            0x2000,
            SwBreakpoint {
                gpa: 0x2000,
                original: 0x90,
            },
        )
        .unwrap();
        let c = |e, stepping, byte| classify(&e, &hw, &sw, stepping, byte);
        assert_eq!(
            c(exit(DB_VECTOR, 0x1000, DR6_SLOT0), false, None),
            DebugStop::HwBreak(0x1000)
        );
        assert_eq!(
            c(exit(DB_VECTOR, 0x1234, DR6_STEP), true, None),
            DebugStop::Step
        );
        assert_eq!(
            c(exit(BP_VECTOR, 0x2000, 0), false, Some(INT3)),
            DebugStop::SwBreak(0x2000)
        );
        // The guest's own int3, and one of ours already taken out.
        assert_eq!(
            c(exit(BP_VECTOR, 0x3000, 0), false, Some(INT3)),
            DebugStop::GuestBp
        );
        assert_eq!(
            c(exit(BP_VECTOR, 0x3000, 0), false, Some(0x55)),
            DebugStop::Stale
        );
        // A step this vCPU was not asked for; a slot since cleared.
        assert_eq!(
            c(exit(DB_VECTOR, 0x1234, DR6_STEP), false, None),
            DebugStop::Stale
        );
        assert_eq!(
            c(exit(DB_VECTOR, 0x1234, 0xffff_0ff2), false, None),
            DebugStop::Stale
        );
        // A stepping vCPU's #DB without DR6.BS is still its step.
        assert_eq!(
            c(exit(DB_VECTOR, 0x1234, 0xffff_0ff0), true, None),
            DebugStop::Step
        );
        assert_eq!(c(exit(6, 0, 0), true, None), DebugStop::Stale);
    }
}

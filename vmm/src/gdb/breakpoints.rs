//! Breakpoints as KVM implements them for a debugger in the host.
//!
//! Hardware breakpoints (gdb's `hbreak`, packet `Z1`) use the four x86
//! debug address registers: `KVM_SET_GUEST_DEBUG` with
//! `KVM_GUESTDBG_USE_HW_BP` makes KVM load our DR0–DR3 and DR7 while the
//! guest runs (the guest's own values are kept aside) and exit with
//! `KVM_EXIT_DEBUG` when one hits. They match linear addresses, so they
//! work before the guest has mapped its code, or while it is being
//! decompressed or relocated.
//!
//! Software breakpoints (`break`, `Z0`) replace the instruction's first
//! byte with `int3`; `KVM_GUESTDBG_USE_SW_BP` turns the guest's `#BP` into
//! a `KVM_EXIT_DEBUG`. The byte is written at the guest *physical* address
//! the virtual one translated to when the breakpoint was set, and put back
//! there when it is removed, so it needs the code to be mapped and to stay
//! put: a kernel that decompresses or patches itself afterwards overwrites
//! the `int3` (use `hbreak` for early boot). Their number is capped
//! ([`MAX_SW_BREAKPOINTS`]) so a client cannot grow the VMM without bound.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};

/// Debug address registers DR0–DR3.
pub const HW_SLOTS: usize = 4;
/// Software breakpoints one session may have set at once.
pub const MAX_SW_BREAKPOINTS: usize = 1024;
/// The one-byte breakpoint instruction.
pub const INT3: u8 = 0xcc;

/// DR7 bit 10 always reads as 1.
const DR7_FIXED_1: u64 = 1 << 10;
/// Index of DR7 in `kvm_guest_debug_arch.debugreg`.
const DR7_INDEX: usize = 7;

/// DR7's local-enable bit of slot `i`. The slot's R/W and LEN fields are
/// left 00 (break on instruction execution, 1 byte), as the SDM requires
/// for execution breakpoints.
const fn dr7_local_enable(i: usize) -> u64 {
    1 << (2 * i)
}

/// DR6's "slot `i` hit" bit (B0–B3).
pub const fn dr6_hit(i: usize) -> u64 {
    1 << i
}

/// Execution breakpoints in DR0–DR3.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HwBreakpoints {
    slots: [Option<u64>; HW_SLOTS],
}

impl HwBreakpoints {
    /// Sets one at `addr`; false when all four slots are taken. Setting
    /// one that is already set is a no-op.
    pub fn add(&mut self, addr: u64) -> bool {
        if self.slots.contains(&Some(addr)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(s) => {
                *s = Some(addr);
                true
            }
            None => false,
        }
    }

    /// Clears the one at `addr`; false when there is none.
    pub fn remove(&mut self, addr: u64) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(addr)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// Whether any slot is set.
    pub fn any(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }

    /// The address of a set slot whose DR6 hit bit is on.
    pub fn hit(&self, dr6: u64) -> Option<u64> {
        (0..HW_SLOTS).find_map(|i| self.slots[i].filter(|_| dr6 & dr6_hit(i) != 0))
    }

    /// DR0–DR7 as `kvm_guest_debug_arch.debugreg` wants them.
    pub fn debugregs(&self) -> [u64; 8] {
        let mut r = [0u64; 8];
        r[DR7_INDEX] = DR7_FIXED_1;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(addr) = slot {
                r[i] = *addr;
                r[DR7_INDEX] |= dr7_local_enable(i);
            }
        }
        r
    }
}

/// An `int3` the stub wrote into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwBreakpoint {
    /// Where the virtual address pointed when it was set.
    pub gpa: u64,
    /// The byte the `int3` replaced.
    pub original: u8,
}

/// Why a software breakpoint was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwBreakpointError {
    /// [`MAX_SW_BREAKPOINTS`] are set already.
    #[error("at most {MAX_SW_BREAKPOINTS} software breakpoints")]
    TooMany,
}

/// Software breakpoints by guest virtual address.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SwBreakpoints {
    set: BTreeMap<u64, SwBreakpoint>,
}

impl SwBreakpoints {
    /// Records one at `gva`. The caller has written the `int3`.
    pub fn insert(&mut self, gva: u64, bp: SwBreakpoint) -> Result<(), SwBreakpointError> {
        if !self.set.contains_key(&gva) && self.set.len() >= MAX_SW_BREAKPOINTS {
            return Err(SwBreakpointError::TooMany);
        }
        self.set.insert(gva, bp);
        Ok(())
    }

    /// The one at `gva`, if set.
    pub fn get(&self, gva: u64) -> Option<SwBreakpoint> {
        self.set.get(&gva).copied()
    }

    /// Forgets the one at `gva`; the caller puts the byte back.
    pub fn remove(&mut self, gva: u64) -> Option<SwBreakpoint> {
        self.set.remove(&gva)
    }

    /// Forgets them all; the caller puts the bytes back.
    pub fn take_all(&mut self) -> Vec<SwBreakpoint> {
        std::mem::take(&mut self.set).into_values().collect()
    }

    /// Whether any is set.
    pub fn any(&self) -> bool {
        !self.set.is_empty()
    }

    /// Those whose address falls in `len` bytes at `gva`, with their
    /// offset into that range.
    pub fn within(&self, gva: u64, len: usize) -> Vec<(usize, SwBreakpoint)> {
        let Some(end) = gva.checked_add(len as u64) else {
            return self.within(gva, (u64::MAX - gva) as usize);
        };
        self.set
            .range(gva..end)
            .map(|(a, bp)| ((a - gva) as usize, *bp))
            .collect()
    }

    /// Shows the original bytes in memory read at `gva`, so gdb never sees
    /// its own `int3`s (it disassembles and steps over them).
    pub fn hide(&self, gva: u64, buf: &mut [u8]) {
        for (off, bp) in self.within(gva, buf.len()) {
            buf[off] = bp.original;
        }
    }
}

/// What one vCPU's next `KVM_RUN` needs from `KVM_SET_GUEST_DEBUG`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DebugRequest {
    /// Execute one instruction, then exit.
    pub step: bool,
    /// Hold interrupts off while stepping (when KVM can), so a step does
    /// not land in an interrupt handler.
    pub block_irqs: bool,
    /// Hand a `#BP` that was not ours back to the guest.
    pub inject_bp: bool,
}

/// The `kvm_guest_debug` for one vCPU: hardware breakpoints and software
/// breakpoint interception for every vCPU, stepping and re-injection for
/// this one. All zero (debugging off, the guest's own debug registers in
/// force) when nothing is asked.
pub fn guest_debug(hw: &HwBreakpoints, sw: bool, req: DebugRequest) -> kvm_guest_debug {
    let mut d = kvm_guest_debug::default();
    let mut control = 0;
    if hw.any() {
        control |= KVM_GUESTDBG_USE_HW_BP;
        d.arch.debugreg = hw.debugregs();
    }
    if sw {
        control |= KVM_GUESTDBG_USE_SW_BP;
    }
    if req.step {
        control |= KVM_GUESTDBG_SINGLESTEP;
        if req.block_irqs {
            control |= KVM_GUESTDBG_BLOCKIRQ;
        }
    }
    if req.inject_bp {
        control |= KVM_GUESTDBG_INJECT_BP;
    }
    if control != 0 {
        control |= KVM_GUESTDBG_ENABLE;
    }
    d.control = control;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_hardware_slots_encode_into_dr7() {
        let mut hw = HwBreakpoints::default();
        assert!(!hw.any());
        assert_eq!(hw.debugregs()[7], DR7_FIXED_1);
        for a in [0x1000, 0x2000, 0x3000, 0x4000] {
            assert!(hw.add(a));
        }
        assert!(hw.add(0x3000), "setting one twice is a no-op");
        assert!(!hw.add(0x5000), "only four slots");
        let r = hw.debugregs();
        assert_eq!(&r[..4], &[0x1000, 0x2000, 0x3000, 0x4000]);
        assert_eq!(r[7], DR7_FIXED_1 | 0b0101_0101);
        assert!(hw.remove(0x2000));
        assert!(!hw.remove(0x2000));
        assert_eq!(hw.debugregs()[7], DR7_FIXED_1 | 0b0101_0001);
        // A freed slot is reused.
        assert!(hw.add(0x6000));
        assert_eq!(hw.debugregs()[1], 0x6000);
    }

    #[test]
    fn dr6_names_the_slot_that_hit() {
        let mut hw = HwBreakpoints::default();
        hw.add(0xa);
        hw.add(0xb);
        assert_eq!(hw.hit(0xffff_0ff2), Some(0xb));
        assert_eq!(hw.hit(0xffff_0ff1), Some(0xa));
        // B2 with slot 2 empty, or a step: no breakpoint of ours.
        assert_eq!(hw.hit(0xffff_0ff4), None);
        assert_eq!(hw.hit(0xffff_4ff0), None);
    }

    #[test]
    fn software_breakpoints_are_capped_and_hidden_from_reads() {
        let mut sw = SwBreakpoints::default();
        let bp = |original| SwBreakpoint {
            gpa: 0x1000,
            original,
        };
        sw.insert(0x10, bp(0x55)).unwrap();
        sw.insert(0x13, bp(0x48)).unwrap();
        let mut buf = [INT3, 1, 2, INT3];
        sw.hide(0x10, &mut buf);
        assert_eq!(buf, [0x55, 1, 2, 0x48]);
        assert_eq!(sw.within(0x11, 2), vec![]);
        assert_eq!(sw.within(u64::MAX - 1, 100), vec![]);
        assert_eq!(sw.remove(0x10), Some(bp(0x55)));
        assert_eq!(sw.remove(0x10), None);
        for a in 0..MAX_SW_BREAKPOINTS as u64 - 1 {
            sw.insert(0x1000 + a, bp(0)).unwrap();
        }
        assert_eq!(sw.insert(0x9999, bp(0)), Err(SwBreakpointError::TooMany));
        // Re-setting one that exists is always fine.
        sw.insert(0x13, bp(0x48)).unwrap();
        assert_eq!(sw.take_all().len(), MAX_SW_BREAKPOINTS);
        assert!(!sw.any());
    }

    #[test]
    fn guest_debug_control_follows_the_request() {
        let mut hw = HwBreakpoints::default();
        assert_eq!(guest_debug(&hw, false, DebugRequest::default()).control, 0);
        let step = DebugRequest {
            step: true,
            block_irqs: true,
            inject_bp: false,
        };
        assert_eq!(
            guest_debug(&hw, false, step).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ
        );
        hw.add(0xffff_ffff_8100_0000);
        let d = guest_debug(&hw, true, DebugRequest::default());
        assert_eq!(
            d.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_USE_SW_BP
        );
        assert_eq!(d.arch.debugreg[0], 0xffff_ffff_8100_0000);
        assert_eq!(d.arch.debugreg[7], DR7_FIXED_1 | 1);
        let inject = DebugRequest {
            inject_bp: true,
            ..Default::default()
        };
        assert_eq!(
            guest_debug(&HwBreakpoints::default(), false, inject).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_INJECT_BP
        );
    }
}

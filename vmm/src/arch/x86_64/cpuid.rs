//! Per-vCPU CPUID: start from what KVM supports and patch in APIC IDs,
//! topology (one core per package, `n` packages) and the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: hypervisor present.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: CMPXCHG16B (PVM's instruction emulator lacks it; QEMU 7.2's
/// TCG corrupts flags with it in an SVM guest).
const LEAF1_ECX_CX16: u32 = 1 << 13;
/// Leaf 1 EDX: hyper-threading / multi-core package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB/0x1F level type: SMT.
const LEVEL_TYPE_SMT: u32 = 1;
/// Leaf 0xB/0x1F level type: core.
const LEVEL_TYPE_CORE: u32 = 2;

/// Host quirks that change what we advertise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidQuirks {
    /// Host is PVM: hide CMPXCHG16B, which its CPL0 emulator lacks, so
    /// kernels take their fallback paths instead of dying.
    pub pvm: bool,
    /// The host's own CPU is QEMU's TCG (nested KVM, `lab nested`): hide
    /// CMPXCHG16B. QEMU 7.2's helper computes the flags from a condition
    /// code state the translator did not write back, which after a VMRUN is
    /// often "flags in CC_SRC" while CC_SRC holds an older operand: SLUB's
    /// `cmpxchg16b %gs:(%rsi)` then leaves a pointer's low bits in EFLAGS
    /// (DF, TF, reserved bits) and the guest dies. The kernel's fallback
    /// (`this_cpu_cmpxchg16b_emu`) has no such instruction.
    pub tcg_host: bool,
}

impl CpuidQuirks {
    /// Whether CMPXCHG16B is hidden from the guest.
    pub fn hides_cx16(self) -> bool {
        self.pvm || self.tcg_host
    }
}

/// Patches `cpuid` for vCPU `id` (which becomes its APIC ID).
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, quirks: CpuidQuirks) {
    for e in cpuid.as_mut_slice().iter_mut() {
        patch_entry(e, id);
        if quirks.hides_cx16() && e.function == 1 {
            e.ecx &= !LEAF1_ECX_CX16;
        }
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, id: u8) {
    let id32 = u32::from(id);
    match e.function {
        1 => {
            // EBX[31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in qwords.
            e.ebx = (id32 << 24) | (1 << 16) | (8 << 8);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.edx |= LEAF1_EDX_HTT;
        }
        4 => {
            // Cache topology: one core per package, cache shared by one thread.
            e.eax &= 0x3ff;
        }
        6 => {
            // No power management features (APERF/MPERF etc.).
            e.ecx &= !1;
        }
        0xb | 0x1f => {
            e.edx = id32;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

/// Returns the APIC ID vCPU `id` reports through leaf 1.
pub fn apic_id_of(cpuid: &CpuId) -> Option<u8> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .map(|e| (e.ebx >> 24) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut c = sample();
        patch_cpuid(&mut c, 3, CpuidQuirks::default());
        assert_eq!(apic_id_of(&c), Some(3));
        assert_eq!(c.as_slice()[0].ecx & LEAF1_ECX_CX16, 0);
        c.as_mut_slice()[0].ecx |= LEAF1_ECX_CX16;
        patch_cpuid(&mut c, 3, CpuidQuirks::default());
        assert_ne!(c.as_slice()[0].ecx & LEAF1_ECX_CX16, 0);
        for quirks in [
            CpuidQuirks {
                pvm: true,
                tcg_host: false,
            },
            CpuidQuirks {
                pvm: false,
                tcg_host: true,
            },
        ] {
            c.as_mut_slice()[0].ecx |= LEAF1_ECX_CX16;
            patch_cpuid(&mut c, 3, quirks);
            assert_eq!(c.as_slice()[0].ecx & LEAF1_ECX_CX16, 0, "{quirks:?}");
        }
        let l1 = c.as_slice()[0];
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let lb = c.as_slice()[1];
        assert_eq!(lb.edx, 3);
        assert_eq!(lb.ecx, (LEVEL_TYPE_CORE << 8) | 1);
    }
}

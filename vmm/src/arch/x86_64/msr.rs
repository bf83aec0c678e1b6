//! Boot MSR values: everything a BIOS would leave zeroed, plus fast strings.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::ArchError;

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// STAR (syscall target).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit syscall target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compat syscall target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL flag mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// Kernel GS base.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Time stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// Misc enable.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// Misc enable: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The boot MSR list.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Writes the boot MSRs; returns how many KVM accepted. Hosts that refuse
/// some (PVM does) are tolerated: the guest reprograms them anyway.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<usize, ArchError> {
    let msrs =
        Msrs::from_entries(&boot_msr_entries()).map_err(|_| ArchError::GuestMemory("MSR list"))?;
    vcpu.set_msrs(&msrs)
        .map_err(|e| ArchError::Kvm("KVM_SET_MSRS", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_list_is_unique_and_sets_fast_strings() {
        let e = boot_msr_entries();
        let mut idx: Vec<u32> = e.iter().map(|m| m.index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), e.len());
        let misc = e.iter().find(|m| m.index == MSR_IA32_MISC_ENABLE).unwrap();
        assert_eq!(misc.data, MISC_ENABLE_FAST_STRING);
    }
}

//! Reading and writing KVM's own state: the VM-wide in-kernel devices
//! (PIC, IOAPIC, PIT, kvmclock) and each vCPU's registers. The order of the
//! ioctls matters and follows Firecracker; see [`save_vcpu`] and
//! [`restore_vcpu`].

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, CpuId, Msrs, KVM_CLOCK_HOST_TSC, KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use super::error::SnapshotError;
use super::state::{KvmVmState, Raw, VcpuState};
use crate::arch::x86_64::msr::MSR_IA32_TSC;

/// IA32_MCG_CTL: listed by KVM on some hosts but not meant to be migrated
/// (Linux does not export it; Firecracker skips it too).
const MSR_IA32_MCG_CTL: u32 = 0x17b;

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(what, e)
}

/// Which optional vCPU state this KVM has.
#[derive(Debug, Clone, Copy)]
pub struct VcpuCaps {
    /// KVM_GET/SET_XCRS.
    pub xcrs: bool,
}

impl VcpuCaps {
    /// Asks KVM.
    pub fn probe(kvm: &Kvm) -> Self {
        Self {
            xcrs: kvm.check_extension(Cap::Xcrs),
        }
    }
}

/// The MSRs to save: every index KVM reports, minus the deny list,
/// `MSR_IA32_TSC` first (other TSC-relative MSRs are written after it).
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(self::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&i| i != MSR_IA32_MCG_CTL && i != MSR_IA32_TSC)
        .collect();
    v.insert(0, MSR_IA32_TSC);
    Ok(v)
}

fn msr_batch(entries: &[kvm_msr_entry]) -> Result<Msrs, SnapshotError> {
    Msrs::from_entries(entries).map_err(|e| SnapshotError::Corrupt(format!("MSR list: {e:?}")))
}

/// Reads `indices`. KVM_GET_MSRS stops at the first MSR it cannot read and
/// returns how many it did: that one is dropped (it has no state KVM could
/// give back either) and reading resumes after it.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut i = 0;
    while i < indices.len() {
        let end = (i + KVM_MAX_MSR_ENTRIES).min(indices.len());
        let want: Vec<kvm_msr_entry> = indices[i..end]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_batch(&want)?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        i += n;
        if i < end {
            i += 1; // unreadable: skip it
        }
    }
    Ok(out)
}

/// Saves one vCPU. The vCPU must be out of `KVM_RUN` with no I/O pending
/// (see `Vcpu::run`). KVM_GET_MP_STATE goes first: it makes the LAPIC
/// accept pending INIT/SIPI events, which changes the other state.
pub fn save_vcpu(
    fd: &VcpuFd,
    id: u8,
    msr_indices: &[u32],
    caps: VcpuCaps,
) -> Result<VcpuState, SnapshotError> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = Raw(fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?);
    let xcrs = if caps.xcrs {
        Some(Raw(fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?))
    } else {
        None
    };
    let debugregs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?;
    let msrs = get_msrs(fd, msr_indices)?;
    let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().iter().copied().map(Raw).collect(),
        msrs: msrs.into_iter().map(Raw).collect(),
        regs: Raw(regs),
        sregs: Raw(sregs),
        xsave,
        xcrs,
        lapic: Raw(lapic),
        events: Raw(events),
        debugregs: Raw(debugregs),
        mp_state: Raw(mp_state),
    })
}

/// Restores one freshly created vCPU: CPUID first (KVM derives what the
/// other state may hold from it), then run state and registers, the LAPIC
/// after the special registers (APIC base), MSRs after the LAPIC (the TSC
/// deadline is relative to LAPIC mode and TSC, which leads the list), and
/// pending events last.
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    let entries: Vec<_> = s.cpuid.iter().map(|e| e.0).collect();
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|e| SnapshotError::Corrupt(format!("CPUID: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state.0)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs.0).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs.0).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: the VMM never enables dynamically sized XSTATE features (no
    // ARCH_REQ_XCOMP_GUEST_PERM), so the vCPU's XSAVE state fits the
    // 4096-byte legacy `kvm_xsave` that KVM reads here.
    unsafe { fd.set_xsave(&s.xsave.0) }.map_err(kvm("KVM_SET_XSAVE"))?;
    if let Some(x) = &s.xcrs {
        fd.set_xcrs(&x.0).map_err(kvm("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&s.debugregs.0)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic.0).map_err(kvm("KVM_SET_LAPIC"))?;
    let msrs: Vec<kvm_msr_entry> = s.msrs.iter().map(|m| m.0).collect();
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let n = fd
            .set_msrs(&msr_batch(chunk)?)
            .map_err(kvm("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            return Err(SnapshotError::Restore(format!(
                "vCPU {}: KVM refused MSR {:#x}",
                s.id, chunk[n].index
            )));
        }
    }
    let mut events = s.events.0;
    // KVM_GET_VCPU_EVENTS does not flag these as valid, but they are: a
    // pending NMI and the SIPI vector of an AP waiting for its SIPI.
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    fd.set_vcpu_events(&events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<Raw<kvm_irqchip>, SnapshotError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(Raw(c))
}

/// Saves the PICs, IOAPIC, PIT and kvmclock (vCPUs stopped).
pub fn save_vm(vm: &VmFd) -> Result<KvmVmState, SnapshotError> {
    let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    // Restore sets the clock to exactly this value, so the guest's time
    // continues from the pause: TSC_STABLE, REALTIME and HOST_TSC describe
    // this host's clocks only (and older kernels refuse them on SET).
    clock.flags &= !(KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC);
    Ok(KvmVmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: Raw(vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?),
        clock: Raw(clock),
    })
}

/// Restores what [`save_vm`] saved, into a VM with irqchip and PIT created.
pub fn restore_vm(vm: &VmFd, s: &KvmVmState) -> Result<(), SnapshotError> {
    for (chip, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.0.chip_id != id {
            return Err(SnapshotError::Corrupt(format!(
                "irqchip {id} saved as chip {}",
                chip.0.chip_id
            )));
        }
        vm.set_irqchip(&chip.0).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&s.pit.0).map_err(kvm("KVM_SET_PIT2"))?;
    let mut clock = s.clock.0;
    clock.flags &= !(KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC);
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}

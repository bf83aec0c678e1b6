//! Boot register state: GDT, identity page tables, segment and control
//! registers for the two entry points we support:
//!
//! * 64-bit Linux boot protocol (bzImage `startup_64`): long mode, paging on,
//!   `rsi` = zero page.
//! * PVH (ELF `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected mode, paging off,
//!   `ebx` = `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::ArchError;
use crate::memory::*;

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS reserved bit 1, must be set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Page-table entry bits: present | writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: 2 MiB page.
const PDE_PS: u64 = 0x80;
/// Number of page directories (one per GiB identity mapped).
const NUM_PDS: u64 = 4;

/// GDT selector of the 32-bit PVH code segment (the PVH ABI leaves it open).
pub const GDT_CODE32_SEL: u16 = 0x08;
/// GDT selector of the 64-bit code segment: `__BOOT_CS` of the Linux
/// 64-bit boot protocol.
pub const GDT_CODE64_SEL: u16 = 0x10;
/// GDT selector of the data segment: `__BOOT_DS` of the boot protocol.
pub const GDT_DATA_SEL: u16 = 0x18;
/// GDT selector of the TSS.
pub const GDT_TSS_SEL: u16 = 0x20;

/// Builds a GDT entry from flags (access in bits 0..7, flags in 12..15), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, 32-bit code, 64-bit code (0x10), data (0x18), TSS.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 KiB granularity
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, present, DPL0, accessed
    gdt_entry(0xc093, 0, 0xfffff), // data, read/write
    gdt_entry(0x808b, 0, 0xfffff), // 32-bit busy TSS
];

/// Decodes a GDT entry into a KVM segment with the given selector.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = (((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000)) as u32;
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: u64::from(base),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Which entry protocol the boot vCPU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: `rip` = entry, `rsi` = zero page.
    Linux64 {
        /// Guest physical entry address (`startup_64`).
        entry: u64,
    },
    /// PVH: 32-bit protected mode, `ebx` = start info.
    Pvh {
        /// Guest physical entry address from the PVH ELF note.
        entry: u64,
    },
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) identity page tables
/// covering the first 4 GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), ArchError> {
    let err = |_| ArchError::GuestMemory("boot GDT/IDT/page tables");
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(err)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(err)?;
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    for pd in 0..NUM_PDS {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | PTE_PRESENT_RW, GuestAddress(PDPTE_START + pd * 8))
            .map_err(err)?;
        for i in 0..512u64 {
            let phys = ((pd * 512 + i) << 21) | PTE_PRESENT_RW | PDE_PS;
            mem.write_obj(phys, GuestAddress(pd_addr + i * 8))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Computes the special registers for `entry`, starting from `sregs` as read
/// from KVM (so that fields we do not care about keep their reset values).
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment_from_gdt(BOOT_GDT[3], GDT_DATA_SEL);
    let tss = segment_from_gdt(BOOT_GDT[4], GDT_TSS_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cs = segment_from_gdt(BOOT_GDT[2], GDT_CODE64_SEL);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cs = segment_from_gdt(BOOT_GDT[1], GDT_CODE32_SEL);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General-purpose registers for `entry`.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// FPU state after reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Programs the boot vCPU's registers for `entry`.
pub fn setup_boot_regs(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), ArchError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| ArchError::Kvm("KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry))
        .map_err(|e| ArchError::Kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| ArchError::Kvm("KVM_SET_REGS", e))?;
    Ok(())
}

/// Sets the FPU of any vCPU to its reset state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    vcpu.set_fpu(&boot_fpu())
        .map_err(|e| ArchError::Kvm("KVM_SET_FPU", e))
}

/// LAPIC register offset of LVT LINT0.
const APIC_LVT0: usize = 0x350;
/// LAPIC register offset of LVT LINT1.
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT.
const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI.
const APIC_MODE_NMI: u32 = 0x4;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Configures LINT0 as ExtINT (the PIC) and LINT1 as NMI, like a BIOS does.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| ArchError::Kvm("KVM_GET_LAPIC", e))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[off..off + 4].iter().map(|b| *b as u8).collect();
        let v = set_delivery_mode(u32::from_le_bytes(bytes.try_into().unwrap()), mode);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| ArchError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn gdt_entries_decode() {
        let cs = segment_from_gdt(BOOT_GDT[2], GDT_CODE64_SEL);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_, cs.s), (1, 0, 1, 0xb, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment_from_gdt(BOOT_GDT[1], GDT_CODE32_SEL);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = segment_from_gdt(BOOT_GDT[4], GDT_TSS_SEL);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let m = create_guest_memory(32).unwrap();
        write_boot_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pdpt3: u64 = m.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3 & !0xfff, PDE_START + 3 * 0x1000);
        let last: u64 = m
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_ne!(last & PDE_PS, 0);
    }

    #[test]
    fn entry_modes() {
        let s = boot_sregs(kvm_sregs::default(), BootEntry::Linux64 { entry: 0x100200 });
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        let p = boot_sregs(s, BootEntry::Pvh { entry: 0x100000 });
        assert_eq!((p.cr0 & X86_CR0_PG, p.efer, p.cr4), (0, 0, 0));
        assert_eq!(p.cs.db, 1);
        let r = boot_regs(BootEntry::Pvh { entry: 0x1234 });
        assert_eq!((r.rip, r.rbx), (0x1234, PVH_INFO_START));
        let r = boot_regs(BootEntry::Linux64 { entry: 0x100200 });
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(set_delivery_mode(0x10700, APIC_MODE_NMI), 0x10400);
    }
}

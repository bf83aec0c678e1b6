//! Guest physical memory: layout constants and creation.
//!
//! The x86_64 guest physical address space looks like this:
//!
//! ```text
//! 0x0000_0000 ─ 0x0000_04ff  real-mode IVT + BIOS data area (left zero)
//! 0x0000_0500                boot GDT, then boot IDT
//! 0x0000_6000                PVH `hvm_start_info`, its memmap and modlist
//! 0x0000_7000                bzImage zero page (`boot_params`)
//! 0x0000_8ff0                initial stack pointer of the BSP
//! 0x0000_9000 ─ 0x0000_dfff  identity page tables (PML4, PDPT, 4 PDs: first 4 GiB)
//! 0x0002_0000                kernel command line
//! 0x0009_fc00 ─ 0x0009_ffff  "EBDA": MP floating pointer + MP table
//! 0x000e_0000 ─ 0x000f_ffff  ACPI tables (RSDP is found by the 0xe0000 BIOS scan)
//! 0x0010_0000                high memory: kernel, then initrd near the top of low RAM
//! MMIO_GAP_START ─ 4 GiB     32-bit MMIO gap: virtio-mmio window, IOAPIC, LAPIC, TSS
//! 4 GiB ─ …                  RAM above the gap when the guest has more than 3 GiB
//! ```

use std::fs::File;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Guest memory type used throughout the VMM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Start of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` address.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (initrd) address.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map address.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Maximum number of PVH memmap entries that fit before the zero page.
pub const PVH_MEMMAP_MAX: usize = (ZERO_PAGE_START - PVH_MEMMAP_START) as usize / 24;
/// bzImage zero page (`boot_params`) address.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories of the identity page tables.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line address.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line length including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI tables (RSDP first) are written.
pub const ACPI_START: u64 = 0xe0000;
/// End of the BIOS area reserved in the e820 map.
pub const BIOS_END: u64 = 0x10_0000;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (3 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the virtio-mmio device window inside the gap.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM TSS (three pages) address, inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM identity map page address, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The fixed boot structures must not overlap each other.
const _: () = {
    assert!(PVH_MEMMAP_START + (PVH_MEMMAP_MAX as u64) * 24 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(VIRTIO_MMIO_BASE > MMIO_GAP_START && IOAPIC_START < MMIO_GAP_END);
};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Requested size is too small to hold the boot structures.
    #[error("guest memory of {0} MiB is too small (minimum 16 MiB)")]
    TooSmall(u64),
    /// Requested size does not fit in the address space.
    #[error("guest memory of {0} MiB is too large")]
    TooLarge(u64),
    /// mmap of the guest RAM failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(String),
    /// A guest region has no host mapping to register.
    #[error("invalid configuration: guest region without host mapping")]
    Unmapped,
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("KVM_SET_USER_MEMORY_REGION failed: {0}")]
    Register(kvm_ioctls::Error),
}

/// Registers every region of `mem` with KVM as guest RAM, one slot each.
///
/// # Safety
///
/// `mem` must stay mapped for as long as any vCPU of `vm` can run: KVM
/// reads and writes the regions through their host addresses.
pub unsafe fn register_with_kvm(vm: &kvm_ioctls::VmFd, mem: &GuestMem) -> Result<(), MemoryError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::Unmapped)?;
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host + len` is this region's mapping; the caller
        // keeps it mapped while the VM can run.
        unsafe { vm.set_user_memory_region(r) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// Splits `size` bytes of RAM around the MMIO gap: returns `(start, len)` pairs.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Guest RAM size in bytes for `mem_mib`, within the limits every VM obeys
/// (fresh or restored from an untrusted snapshot).
pub fn checked_size(mem_mib: u64) -> Result<u64, MemoryError> {
    if mem_mib < 16 {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    mem_mib
        .checked_mul(1 << 20)
        .filter(|s| *s < (1 << 46))
        .ok_or(MemoryError::TooLarge(mem_mib))
}

/// Creates anonymous guest memory of `mem_mib` MiB laid out by [`ram_ranges`].
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMem, MemoryError> {
    let size = checked_size(mem_mib)?;
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|e| MemoryError::Mmap(e.to_string()))
}

/// Maps `mem_mib` MiB of guest RAM from `file`, starting at byte `offset`,
/// the regions of [`ram_ranges`] back to back. `MAP_PRIVATE`: pages are read
/// from the file on first touch and copied only when the guest writes them,
/// so restoring costs nothing for memory the guest never touches again, and
/// the file is never modified. The caller must have checked that the file
/// holds `offset + size` bytes (a mapping past EOF faults with SIGBUS).
pub fn map_guest_memory_private(
    file: &File,
    offset: u64,
    mem_mib: u64,
) -> Result<GuestMem, MemoryError> {
    let size = checked_size(mem_mib)?;
    if !offset.is_multiple_of(4096) {
        return Err(MemoryError::Mmap(format!(
            "file offset {offset:#x} is not page aligned"
        )));
    }
    let mut regions = Vec::new();
    let mut at = offset;
    for (start, len) in ram_ranges(size) {
        let f = file
            .try_clone()
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let map = MmapRegion::build(
            Some(FileOffset::new(f, at)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(map, start)
                .ok_or_else(|| MemoryError::Mmap("region wraps the address space".into()))?,
        );
        at += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Mmap(e.to_string()))
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMem) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .filter(|r| r.start_addr().0 < MMIO_GAP_START)
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_ram_is_one_range() {
        let r = ram_ranges(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn big_ram_is_split_around_gap() {
        let r = ram_ranges(5 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[1].1 as u64, (5 << 30) - MMIO_GAP_START);
    }

    #[test]
    fn create_and_access() {
        let m = create_guest_memory(32).unwrap();
        assert_eq!(m.num_regions(), 1);
        m.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        assert!(m.write_obj(0u32, GuestAddress(32 << 20)).is_err());
        assert_eq!(low_ram_end(&m), 32 << 20);
        assert!(create_guest_memory(1).is_err());
    }

    #[test]
    fn size_limits() {
        assert!(matches!(checked_size(15), Err(MemoryError::TooSmall(15))));
        assert_eq!(checked_size(16).unwrap(), 16 << 20);
        assert!(matches!(
            checked_size(1 << 26),
            Err(MemoryError::TooLarge(_))
        ));
        assert!(matches!(
            checked_size(u64::MAX),
            Err(MemoryError::TooLarge(_))
        ));
    }

    #[test]
    fn private_file_mapping_is_copy_on_write() {
        use std::io::Write;
        let p = std::env::temp_dir().join(format!("vmm-mem-{}", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        f.write_all(b"saved").unwrap();
        f.set_len(4096 + (16 << 20)).unwrap();
        drop(f);
        let f = std::fs::File::open(&p).unwrap();
        let m = map_guest_memory_private(&f, 4096, 16).unwrap();
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(&got, b"saved");
        m.write_slice(b"guest", GuestAddress(0)).unwrap();
        m.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(&got, b"guest");
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[4096..4101], b"saved", "the file must not change");
        assert!(map_guest_memory_private(&f, 100, 16).is_err());
        let _ = std::fs::remove_file(&p);
    }
}

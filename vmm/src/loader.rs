//! Kernel, initrd and boot-parameter loading (via `linux-loader`).
//!
//! Two kernel formats are accepted, detected by magic:
//! * ELF `vmlinux` with a PVH note: booted through its 32-bit PVH entry with
//!   an `hvm_start_info` (cmdline, memmap, modlist = initrd, RSDP).
//! * ELF `vmlinux` without one (no `CONFIG_PVH`): entered at `e_entry`
//!   (`startup_64`) in long mode with a zero page, as Firecracker does.
//! * bzImage: booted through the 64-bit boot protocol entry
//!   (`startup_64` = load address + 0x200) with a zero page.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::mem::size_of;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::x86_64::regs::BootEntry;
use crate::memory::*;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// PVH start info magic.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Offset of the 64-bit entry point from the bzImage protected-mode load address.
pub const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader` value for an "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Boot protocol signature `HdrS`.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// bzImage `loadflags`: kernel loaded high.
const LOADED_HIGH: u8 = 0x01;
/// bzImage `loadflags`: the loader may use the heap.
const CAN_USE_HEAP: u8 = 0x80;
/// bzImage `xloadflags`: has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 0x1;
/// Page size used for initrd alignment.
const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the kernel or writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Could not open or read an image file.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    /// The kernel is neither ELF nor bzImage.
    #[error("kernel image is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat,
    /// linux-loader rejected the kernel.
    #[error("loading kernel: {0}")]
    Kernel(#[from] linux_loader::loader::Error),
    /// ELF kernel without PVH entry note.
    #[error("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry,
    /// bzImage too old or without a 64-bit entry.
    #[error("bzImage does not support the 64-bit boot protocol")]
    NoLongModeEntry,
    /// The command line is invalid or too long.
    #[error("bad command line: {0}")]
    Cmdline(String),
    /// The initrd does not fit in guest memory.
    #[error("initrd of {0} bytes does not fit in guest memory")]
    InitrdTooBig(u64),
    /// Writing to guest memory failed.
    #[error("cannot write {0} to guest memory")]
    GuestMemory(&'static str),
}

/// Where the kernel ended up and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry protocol and address.
    pub entry: BootEntry,
    /// Kernel load result from linux-loader.
    pub result: KernelLoaderResult,
}

/// Location of the initrd in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn is_elf(f: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0))?;
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(n == 4 && &magic == b"\x7fELF")
}

/// Loads `path` (ELF vmlinux or bzImage) into guest memory.
pub fn load_kernel(mem: &GuestMem, path: &Path) -> Result<LoadedKernel, LoadError> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| LoadError::Io(name.clone(), e))?;
    if is_elf(&mut f).map_err(|e| LoadError::Io(name.clone(), e))? {
        let result = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr.0 },
            // Kernels built without CONFIG_PVH: `e_entry` is the physical
            // address of `startup_64`, entered in long mode with a zero page
            // (the 64-bit boot protocol, as for a bzImage's payload).
            _ => BootEntry::Linux64 {
                entry: result.kernel_load.0,
            },
        };
        Ok(LoadedKernel { entry, result })
    } else {
        let result = BzImage::load(
            mem,
            Some(GuestAddress(HIMEM_START)),
            &mut f,
            Some(GuestAddress(HIMEM_START)),
        )
        .map_err(|e| match e {
            linux_loader::loader::Error::Bzimage(_) => LoadError::UnknownFormat,
            e => LoadError::Kernel(e),
        })?;
        let hdr = result.setup_header.ok_or(LoadError::UnknownFormat)?;
        if hdr.version < 0x0206 || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::NoLongModeEntry);
        }
        Ok(LoadedKernel {
            entry: BootEntry::Linux64 {
                entry: result.kernel_load.0 + STARTUP_64_OFFSET,
            },
            result,
        })
    }
}

/// Loads the initrd page-aligned as high as possible below `limit` (and
/// below the end of low RAM), but above `kernel_end`.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdInfo, LoadError> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| LoadError::Io(name.clone(), e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .and_then(|s| f.seek(SeekFrom::Start(0)).map(|_| s))
        .map_err(|e| LoadError::Io(name.clone(), e))?;
    let top = low_ram_end(mem).min(limit);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(LoadError::InitrdTooBig(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|_| LoadError::GuestMemory("initrd"))?;
    Ok(InitrdInfo { addr, size })
}

/// Writes `cmdline` at [`CMDLINE_START`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<usize, LoadError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)?;
    Ok(cl.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0))
}

/// The guest's physical memory map as `(addr, size, type)`.
pub fn memory_map(mem: &GuestMem) -> Vec<(u64, u64, u32)> {
    use vm_memory::GuestMemoryRegion;
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
        (ACPI_START, BIOS_END - ACPI_START, E820_RESERVED),
    ];
    for r in mem.iter() {
        let (start, end) = (r.start_addr().0, r.start_addr().0 + r.len());
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the PVH `hvm_start_info`, memmap and modlist.
pub fn write_pvh_info(
    mem: &GuestMem,
    initrd: Option<InitrdInfo>,
    rsdp: Option<u64>,
) -> Result<(), LoadError> {
    let map = memory_map(mem);
    if map.len() > PVH_MEMMAP_MAX {
        return Err(LoadError::GuestMemory("PVH memmap (too many entries)"));
    }
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *ty,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(e, GuestAddress(at))
            .map_err(|_| LoadError::GuestMemory("PVH memmap"))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let m = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_START))
            .map_err(|_| LoadError::GuestMemory("PVH modlist"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(|_| LoadError::GuestMemory("PVH start info"))
}

/// Writes the bzImage zero page from the kernel's setup header.
pub fn write_zero_page(
    mem: &GuestMem,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdInfo>,
    rsdp: Option<u64>,
) -> Result<(), LoadError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    params.hdr.heap_end_ptr = 0xfe00;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    let map = memory_map(mem);
    for (i, (addr, size, ty)) in map.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| LoadError::GuestMemory("zero page"))
}

/// Highest address (exclusive) the initrd may end at for this kernel.
pub fn initrd_limit(kernel: &LoadedKernel) -> u64 {
    match kernel.result.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        _ => MMIO_GAP_START,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpfile(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-loader-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn rejects_garbage_kernel() {
        let m = create_guest_memory(32).unwrap();
        let p = tmpfile("garbage", &[0u8; 4096]);
        assert!(matches!(load_kernel(&m, &p), Err(LoadError::UnknownFormat)));
        let _ = std::fs::remove_file(p);
        assert!(matches!(
            load_kernel(&m, Path::new("/nonexistent/kernel")),
            Err(LoadError::Io(..))
        ));
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let m = create_guest_memory(32).unwrap();
        let p = tmpfile("initrd", &[0xabu8; 5000]);
        let rd = load_initrd(&m, &p, 0x20_0000, u64::MAX).unwrap();
        assert_eq!(rd.size, 5000);
        assert_eq!(rd.addr % PAGE_SIZE, 0);
        assert!(rd.addr + rd.size <= 32 << 20);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(rd.addr + 4999)).unwrap(),
            0xab
        );
        assert!(matches!(
            load_initrd(&m, &p, 32 << 20, u64::MAX),
            Err(LoadError::InitrdTooBig(5000))
        ));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn pvh_info_and_memmap() {
        let m = create_guest_memory(64).unwrap();
        write_cmdline(&m, "console=ttyS0").unwrap();
        let rd = InitrdInfo {
            addr: 0x300_0000,
            size: 42,
        };
        write_pvh_info(&m, Some(rd), Some(ACPI_START)).unwrap();
        let map = memory_map(&m);
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.flags, 0);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, ACPI_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(info.reserved, 0);
        // The raw layout the kernel reads (xen/include/public/arch-x86/hvm/start_info.h).
        let raw: [u32; 4] = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(raw, [XEN_HVM_START_MAGIC_VALUE, 1, 0, 1]);
        let entries: u32 = m.read_obj(GuestAddress(PVH_INFO_START + 48)).unwrap();
        assert_eq!(entries as usize, map.len());
        for (i, (addr, size, ty)) in map.iter().enumerate() {
            let at = PVH_MEMMAP_START + (i * size_of::<hvm_memmap_table_entry>()) as u64;
            let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(
                (e.addr, e.size, e.type_, e.reserved),
                (*addr, *size, *ty, 0)
            );
        }
        assert_eq!(
            map.last(),
            Some(&(HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM))
        );
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(
            (
                module.paddr,
                module.size,
                module.cmdline_paddr,
                module.reserved
            ),
            (0x300_0000, 42, 0, 0)
        );
        let mut cl = [0u8; 14];
        m.read_slice(&mut cl, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&cl, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_info_without_initrd_or_rsdp() {
        let m = create_guest_memory(32).unwrap();
        // Garbage where the modlist would go must not be referenced.
        m.write_obj([0xffu8; 32], GuestAddress(PVH_MODLIST_START))
            .unwrap();
        write_pvh_info(&m, None, None).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.memmap_entries as usize, memory_map(&m).len());
    }

    #[test]
    fn memory_map_covers_high_ram() {
        let m = create_guest_memory(4096 + 1024).unwrap();
        let map = memory_map(&m);
        assert!(map.contains(&(MMIO_GAP_END, (1024 + 1024) << 20, E820_RAM)));
        assert!(map.contains(&(HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM)));
    }
}

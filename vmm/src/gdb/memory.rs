//! Guest memory at guest *virtual* addresses, as gdb names it.
//!
//! gdb asks for kernel virtual addresses; guest RAM is indexed by guest
//! physical ones. Each page of a request is translated on its own (page
//! tables map pages, not ranges) through [`Translate`], which on a stopped
//! vCPU is `KVM_TRANSLATE`: KVM walks the guest's own page tables in
//! whatever paging mode that vCPU is in. The physical range is then
//! checked against guest RAM: MMIO and holes are never touched, and an
//! address gdb or the guest made up is an error, never a host access
//! outside the guest's memory.

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Translation granularity: the smallest x86 page.
pub const PAGE_SIZE: u64 = 4096;

/// Why guest memory could not be accessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The guest's page tables do not map it.
    #[error("guest virtual address {0:#x} is not mapped")]
    Unmapped(u64),
    /// It maps to something that is not guest RAM (MMIO, a hole).
    #[error("guest virtual address {gva:#x} maps to {gpa:#x}, outside guest RAM")]
    NotRam {
        /// The virtual address.
        gva: u64,
        /// What it translated to.
        gpa: u64,
    },
    /// The range runs past the end of the address space.
    #[error("range at {0:#x} wraps around the address space")]
    Wraps(u64),
}

/// Guest virtual → guest physical translation on a stopped vCPU.
pub trait Translate {
    /// The physical address of `gva`, or `None` when it is not mapped.
    fn translate(&self, gva: u64) -> Option<u64>;
}

impl Translate for VcpuFd {
    /// `KVM_TRANSLATE`; a failed ioctl counts as unmapped.
    fn translate(&self, gva: u64) -> Option<u64> {
        self.translate_gva(gva)
            .ok()
            .filter(|t| t.valid != 0)
            .map(|t| t.physical_address)
    }
}

/// One page-bounded piece of a request: `len` bytes at `gva` → `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    gva: u64,
    gpa: u64,
    len: usize,
}

/// Translates `len` bytes at `gva` page by page, stopping at the first
/// page that fails (its error is returned alongside what did translate).
fn pieces(
    mem: &GuestMem,
    tr: &dyn Translate,
    gva: u64,
    len: usize,
) -> (Vec<Piece>, Option<MemError>) {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let Some(at) = gva.checked_add(done as u64) else {
            return (out, Some(MemError::Wraps(gva)));
        };
        let in_page = (PAGE_SIZE - (at % PAGE_SIZE)) as usize;
        let n = in_page.min(len - done);
        let Some(gpa) = tr.translate(at) else {
            return (out, Some(MemError::Unmapped(at)));
        };
        let in_ram = gpa
            .checked_add(n as u64 - 1)
            .is_some_and(|last| mem_has(mem, gpa) && mem_has(mem, last));
        if !in_ram {
            return (out, Some(MemError::NotRam { gva: at, gpa }));
        }
        out.push(Piece {
            gva: at,
            gpa,
            len: n,
        });
        done += n;
    }
    (out, None)
}

/// Whether guest RAM holds the byte at `gpa`.
fn mem_has(mem: &GuestMem, gpa: u64) -> bool {
    use vm_memory::GuestMemoryBackend;
    mem.address_in_range(GuestAddress(gpa))
}

/// Reads guest virtual memory into `buf`. Returns how many bytes were read
/// from the start (fewer than asked when a later page is not readable);
/// an error when not even the first byte is.
pub fn read(
    mem: &GuestMem,
    tr: &dyn Translate,
    gva: u64,
    buf: &mut [u8],
) -> Result<usize, MemError> {
    let (pieces, err) = pieces(mem, tr, gva, buf.len());
    let mut done = 0;
    for p in &pieces {
        // In RAM (checked above), so the read cannot fail.
        if mem
            .read_slice(&mut buf[done..done + p.len], GuestAddress(p.gpa))
            .is_err()
        {
            break;
        }
        done += p.len;
    }
    match err {
        Some(e) if done == 0 => Err(e),
        _ => Ok(done),
    }
}

/// Writes `data` to guest virtual memory: all of it, or (when any page is
/// not writable RAM) none of it.
pub fn write(mem: &GuestMem, tr: &dyn Translate, gva: u64, data: &[u8]) -> Result<(), MemError> {
    let (pieces, err) = pieces(mem, tr, gva, data.len());
    if let Some(e) = err {
        return Err(e);
    }
    let mut done = 0;
    for p in pieces {
        mem.write_slice(&data[done..done + p.len], GuestAddress(p.gpa))
            .map_err(|_| MemError::NotRam {
                gva: p.gva,
                gpa: p.gpa,
            })?;
        done += p.len;
    }
    Ok(())
}

/// One guest physical byte, if it is RAM.
pub fn read_phys_byte(mem: &GuestMem, gpa: u64) -> Option<u8> {
    mem.read_obj::<u8>(GuestAddress(gpa)).ok()
}

/// Writes one guest physical byte; false when it is not RAM.
pub fn write_phys_byte(mem: &GuestMem, gpa: u64, b: u8) -> bool {
    mem.write_obj(b, GuestAddress(gpa)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    /// A made-up page table: virtual page → physical page.
    struct Pages(Vec<(u64, u64)>);
    impl Translate for Pages {
        fn translate(&self, gva: u64) -> Option<u64> {
            let page = gva & !(PAGE_SIZE - 1);
            self.0
                .iter()
                .find(|(v, _)| *v == page)
                .map(|(_, p)| p + (gva - page))
        }
    }

    const KERNEL: u64 = 0xffff_ffff_8100_0000;

    fn mem() -> GuestMem {
        let m = create_guest_memory(16).unwrap();
        for page in 0..4u64 {
            m.write_slice(
                &[page as u8 + 1; 4096],
                GuestAddress(0x10_0000 + page * 4096),
            )
            .unwrap();
        }
        m
    }

    #[test]
    fn reads_follow_the_page_tables_page_by_page() {
        let m = mem();
        // Two virtual pages mapped to physical pages in reverse order.
        let tr = Pages(vec![(KERNEL, 0x10_1000), (KERNEL + 4096, 0x10_0000)]);
        let mut buf = [0u8; 8];
        assert_eq!(read(&m, &tr, KERNEL + 4092, &mut buf), Ok(8));
        assert_eq!(buf, [2, 2, 2, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn a_read_stops_at_the_first_unmapped_page() {
        let m = mem();
        let tr = Pages(vec![(KERNEL, 0x10_0000)]);
        let mut buf = [0u8; 16];
        assert_eq!(read(&m, &tr, KERNEL + 4088, &mut buf), Ok(8));
        assert_eq!(
            read(&m, &tr, KERNEL + 4096, &mut buf),
            Err(MemError::Unmapped(KERNEL + 4096))
        );
    }

    #[test]
    fn addresses_outside_guest_ram_are_refused() {
        let m = mem();
        // 16 MiB of RAM; an MMIO address and one past the end.
        for gpa in [crate::memory::VIRTIO_MMIO_BASE, 16 << 20, !0xfff] {
            let tr = Pages(vec![(KERNEL, gpa)]);
            let mut buf = [0u8; 4];
            assert_eq!(
                read(&m, &tr, KERNEL, &mut buf),
                Err(MemError::NotRam { gva: KERNEL, gpa })
            );
            assert!(write(&m, &tr, KERNEL, &buf).is_err());
        }
        // The last page of RAM is readable up to its last byte, not past it.
        let tr = Pages(vec![(KERNEL, (16 << 20) - 4096)]);
        let mut page = vec![0u8; 4096];
        assert_eq!(read(&m, &tr, KERNEL, &mut page), Ok(4096));
    }

    #[test]
    fn ranges_that_wrap_are_refused() {
        let m = mem();
        let top = !(PAGE_SIZE - 1);
        let tr = Pages(vec![(top, 0x10_0000)]);
        let mut buf = [0u8; 8192];
        assert_eq!(read(&m, &tr, top, &mut buf), Ok(4096));
        assert_eq!(write(&m, &tr, top, &buf), Err(MemError::Wraps(top)));
    }

    #[test]
    fn a_write_is_all_or_nothing() {
        let m = mem();
        let tr = Pages(vec![(KERNEL, 0x10_0000)]);
        // The second page is unmapped: nothing is written to the first.
        assert_eq!(
            write(&m, &tr, KERNEL + 4094, &[9, 9, 9, 9]),
            Err(MemError::Unmapped(KERNEL + 4096))
        );
        assert_eq!(read_phys_byte(&m, 0x10_0ffe), Some(1));
        write(&m, &tr, KERNEL + 4094, &[9, 9]).unwrap();
        assert_eq!(read_phys_byte(&m, 0x10_0ffe), Some(9));
        assert!(write_phys_byte(&m, 0x10_0000, 0xcc));
        assert_eq!(read_phys_byte(&m, 0x10_0000), Some(0xcc));
        assert!(!write_phys_byte(&m, 16 << 20, 0));
        assert_eq!(read_phys_byte(&m, 16 << 20), None);
    }
}

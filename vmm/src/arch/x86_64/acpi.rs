//! ACPI tables, built with the `acpi_tables` crate: RSDP → XSDT → FADT
//! (hardware-reduced, pointing at the DSDT) and MADT (one LAPIC per vCPU, the
//! IOAPIC). The DSDT declares one `LNRO0005` (virtio-mmio) device per slot
//! with its register window and interrupt, which is how kernels without
//! `VIRTIO_MMIO_CMDLINE_DEVICES` discover virtio-mmio devices.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use super::mptable::{checksum, ioapic_id};
use super::ArchError;
use crate::devices::acpi_pm::{
    ACPI_PM_PORT, RESET_REG, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL, SLEEP_STATUS,
};
use crate::devices::serial::{COM1_IRQ, COM1_PORT, UART_PORT_LEN};
use crate::memory::{GuestMem, ACPI_START, APIC_START, BIOS_END, IOAPIC_START};
use crate::virtio::VirtioSlot;

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"ARENA ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"ARENAVMM";
/// OEM revision.
pub const OEM_REVISION: u32 = 1;
/// virtio-mmio ACPI hardware ID.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// PNP ID of a 16550-compatible UART.
pub const UART_PNP_ID: &str = "PNP0501";
/// MADT flag: the platform also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT flags field.
const MADT_FLAGS_OFFSET: usize = 40;
/// Offset of the checksum in every SDT header.
const SDT_CHECKSUM_OFFSET: usize = 9;
/// Table alignment inside the ACPI area.
const TABLE_ALIGN: u64 = 16;

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Builds the DSDT with one virtio-mmio device per slot.
pub fn build_dsdt(slots: &[VirtioSlot]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // \_S5: sleep type for soft-off, written to the FADT sleep control register.
    let (s5, zero) = (S5_SLEEP_TYPE, 0u8);
    let s5_pkg = Package::new(vec![&s5, &zero, &zero, &zero]);
    dsdt.append_slice(&to_bytes(&Name::new("_S5_".into(), &s5_pkg)));
    dsdt.append_slice(&com1_device());
    for (i, s) in slots.iter().enumerate() {
        let path = format!("_SB_.VR{i:02X}");
        let hid = Name::new("_HID".into(), &VIRTIO_MMIO_HID);
        let uid = Name::new("_UID".into(), &(i as u32));
        let mem = Memory32Fixed::new(true, s.addr as u32, s.size as u32);
        let irq = Interrupt::new(true, true, false, false, s.irq);
        let crs_t = ResourceTemplate::new(vec![&mem, &irq]);
        let crs = Name::new("_CRS".into(), &crs_t);
        let dev = Device::new(Path::new(&path), vec![&hid, &uid, &crs]);
        dsdt.append_slice(&to_bytes(&dev));
    }
    dsdt.as_slice().to_vec()
}

/// COM1 as an ACPI device (`PNP0501`, its ports and IRQ 4).
///
/// The FADT is hardware-reduced, so Linux installs no legacy PIC and
/// preallocates no ISA interrupts: the 8250 driver's built-in COM1 (irq 4)
/// then cannot request its interrupt, the port's startup fails, and every
/// user-space write to the console returns EIO (the agent's first `eprintln!`
/// panicked, exit 101). Described here, the port is found by PnP ACPI and its
/// interrupt is mapped through the IOAPIC, as on QEMU's microvm.
fn com1_device() -> Vec<u8> {
    let port = COM1_PORT as u16;
    let io = IO::new(port, port, 1, UART_PORT_LEN as u8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs_t = ResourceTemplate::new(vec![&io, &irq]);
    let crs = Name::new("_CRS".into(), &crs_t);
    let hid = Name::new("_HID".into(), &EISAName::new(UART_PNP_ID));
    let uid = Name::new("_UID".into(), &0u32);
    to_bytes(&Device::new(Path::new("_SB_.COM1"), vec![&hid, &uid, &crs]))
}

/// Builds the MADT for `num_cpus` vCPUs (APIC IDs 0..n) and the IOAPIC.
pub fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id(num_cpus), IOAPIC_START as u32, 0));
    let mut bytes = to_bytes(&madt);
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
        .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    bytes[SDT_CHECKSUM_OFFSET] = 0;
    bytes[SDT_CHECKSUM_OFFSET] = checksum(&bytes);
    bytes
}

fn io_reg(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// Builds a hardware-reduced FADT pointing at `dsdt_addr`, with sleep
/// control/status and reset registers in the [`ACPI_PM_PORT`] block.
pub fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    b.sleep_control_reg = io_reg(ACPI_PM_PORT + SLEEP_CONTROL);
    b.sleep_status_reg = io_reg(ACPI_PM_PORT + SLEEP_STATUS);
    b.reset_reg = io_reg(ACPI_PM_PORT + RESET_REG);
    b.reset_value = RESET_VALUE;
    let fadt = b.finalize();
    to_bytes(&fadt)
}

/// All tables with their guest addresses; the first one is the RSDP.
pub fn build_tables(num_cpus: u8, slots: &[VirtioSlot]) -> Result<Vec<(u64, Vec<u8>)>, ArchError> {
    let align = |a: u64| a.div_ceil(TABLE_ALIGN) * TABLE_ALIGN;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // XSDT has two entries: FADT and MADT.
    let fadt_addr = align(xsdt_addr + 36 + 2 * 8);
    let dsdt = build_dsdt(slots);
    let fadt_len = build_fadt(0).len() as u64;
    let dsdt_addr = align(fadt_addr + fadt_len);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt = build_madt(num_cpus);
    if madt_addr + madt.len() as u64 > BIOS_END {
        return Err(ArchError::GuestMemory("ACPI tables (too large)"));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    Ok(vec![
        (rsdp_addr, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, to_bytes(&xsdt)),
        (fadt_addr, build_fadt(dsdt_addr)),
        (dsdt_addr, dsdt),
        (madt_addr, madt),
    ])
}

/// Writes the tables into guest memory; returns the RSDP address.
pub fn setup_acpi(mem: &GuestMem, num_cpus: u8, slots: &[VirtioSlot]) -> Result<u64, ArchError> {
    let tables = build_tables(num_cpus, slots)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| ArchError::GuestMemory("ACPI tables"))?;
    }
    Ok(tables[0].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_checksums_to_zero_and_links_up() {
        let t = build_tables(4, &[VirtioSlot::nth(0), VirtioSlot::nth(1)]).unwrap();
        let (rsdp_addr, rsdp) = &t[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt_ptr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        assert_eq!(xsdt_ptr, t[1].0);
        for (_, tbl) in &t[1..] {
            let len = u32::from_le_bytes(tbl[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, tbl.len(), "{}", String::from_utf8_lossy(&tbl[..4]));
            assert_eq!(sum(tbl), 0, "{}", String::from_utf8_lossy(&tbl[..4]));
        }
        let sigs: Vec<&[u8]> = t[1..].iter().map(|(_, b)| &b[..4]).collect();
        assert_eq!(sigs, vec![&b"XSDT"[..], b"FACP", b"DSDT", b"APIC"]);
        // FADT: hardware reduced, X_DSDT points at the DSDT.
        let fadt = &t[2].1;
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            t[3].0
        );
        // DSDT mentions both virtio devices.
        let dsdt = &t[3].1;
        let hits = dsdt
            .windows(8)
            .filter(|w| *w == VIRTIO_MMIO_HID.as_bytes())
            .count();
        assert_eq!(hits, 2);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = build_madt(3);
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(
            u32::from_le_bytes(m[36..40].try_into().unwrap()),
            APIC_START as u32
        );
        assert_eq!(
            u32::from_le_bytes(m[40..44].try_into().unwrap()),
            MADT_PCAT_COMPAT
        );
        // Entries: 3 x LAPIC (type 0, len 8) then IOAPIC (type 1, len 12).
        let e = &m[44..];
        for id in 0..3u8 {
            let o = 8 * id as usize;
            assert_eq!(&e[o..o + 4], &[0, 8, id, id]);
            assert_eq!(e[o + 4] & 1, 1);
        }
        assert_eq!(&e[24..27], &[1, 12, ioapic_id(3)]);
        assert_eq!(sum(&m), 0);
    }
}

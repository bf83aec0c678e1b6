//! Intel MultiProcessor Specification 1.4 table, so Linux finds every CPU,
//! the IOAPIC and the ISA interrupt routing without ACPI.

use vm_memory::{Bytes, GuestAddress};

use super::ArchError;
use crate::memory::{GuestMem, APIC_START, EBDA_START, IOAPIC_START};

/// Number of IOAPIC pins routed 1:1 from ISA IRQs.
pub const IOAPIC_PINS: u8 = 24;
/// Highest number of vCPUs whose MP table still fits in the 1 KiB EBDA.
pub const MAX_VCPUS: u8 = 32;
/// Local APIC version reported for CPUs.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version.
const IOAPIC_VERSION: u8 = 0x11;
/// MP spec revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// CPU flag: enabled.
const CPU_ENABLED: u8 = 1;
/// CPU flag: bootstrap processor.
const CPU_BSP: u8 = 2;
/// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// CPU signature (family 6) and features (FPU, APIC) advertised in entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// IOAPIC ID used in the MP table and MADT: right after the CPUs.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// The byte that makes `bytes` sum to zero (mod 256): the MP spec and ACPI
/// checksum rule alike.
pub(super) fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer + configuration table placed at `base`.
pub fn build_mptable(base: u64, num_cpus: u8) -> Result<Vec<u8>, ArchError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(ArchError::TooManyVcpus(num_cpus, MAX_VCPUS));
    }
    let table_addr = base + 16;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id(num_cpus), IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        let kind = if irq == 0 { MP_EXTINT } else { MP_INT };
        entries.extend_from_slice(&[MP_INTSRC, kind, 0, 0, 0, irq, ioapic_id(num_cpus), irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0 and NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[MP_SPEC_REV, 0]);
    table.extend_from_slice(b"ARENALAB");
    table.extend_from_slice(b"ARENA-VMM   ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length/checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, MP_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMem, num_cpus: u8) -> Result<(), ArchError> {
    let bytes = build_mptable(EBDA_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| ArchError::GuestMemory("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        let t = build_mptable(EBDA_START, 4).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, EBDA_START + 16);
        let tbl = &t[16..];
        assert_eq!(&tbl[0..4], b"PCMP");
        let len = u16::from_le_bytes([tbl[4], tbl[5]]) as usize;
        assert_eq!(len, tbl.len());
        assert_eq!(sum(tbl), 0);
        let count = u16::from_le_bytes([tbl[34], tbl[35]]);
        assert_eq!(count, 4 + 1 + 1 + u16::from(IOAPIC_PINS) + 2);
        // First CPU entry is the BSP with APIC ID 0, the others are enabled APs.
        assert_eq!(
            &tbl[44..48],
            &[MP_PROCESSOR, 0, APIC_VERSION, CPU_ENABLED | CPU_BSP]
        );
        assert_eq!(&tbl[64..68], &[MP_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]);
        // Fits in the EBDA.
        assert!(t.len() <= 1024);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build_mptable(EBDA_START, 0).is_err());
        assert!(build_mptable(EBDA_START, MAX_VCPUS + 1).is_err());
        assert!(build_mptable(EBDA_START, MAX_VCPUS).unwrap().len() <= 1024);
    }
}

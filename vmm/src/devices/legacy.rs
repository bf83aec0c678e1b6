//! "Ignore but answer" legacy ports: POST code (0x80), port B (0x61),
//! CMOS/RTC (0x70/0x71), fast A20 (0x92) and PCI configuration
//! (0xcf8..0xcff: all-ones, so the kernel's PCI probes find no host bridge).
//! Reads return "nothing here" values, writes are dropped, and nothing ever
//! fails. Ports no device claims (other COM ports...) read as all-ones in
//! the vCPU exit handler.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Bus, BusDevice, BusError, Offset, SharedDevice};

/// POST diagnostic port, also used as an I/O delay.
pub const POST_PORT: u64 = 0x80;
/// System control port B (speaker gate / refresh toggle).
pub const PORT_B: u64 = 0x61;
/// CMOS index port; 0x71 is the data port.
pub const CMOS_INDEX_PORT: u64 = 0x70;
/// Fast A20 / reset port.
pub const FAST_A20_PORT: u64 = 0x92;
/// PCI configuration mechanism #1: address port 0xcf8, data ports 0xcfc..0xcff.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Length of the PCI configuration port range.
pub const PCI_CONFIG_LEN: u64 = 8;

/// The port ranges the device answers, as (base, length).
pub const PORTS: &[(u64, u64)] = &[
    (POST_PORT, 1),
    (PORT_B, 1),
    (CMOS_INDEX_PORT, 2),
    (FAST_A20_PORT, 1),
    (PCI_CONFIG_PORT, PCI_CONFIG_LEN),
];

/// CMOS status register A (bit 7: update in progress, kept clear).
const CMOS_STATUS_A: u8 = 0x0a;
/// CMOS status register B: 24-hour, binary mode.
const CMOS_STATUS_B: u8 = 0x0b;
/// CMOS status register D: valid RAM and time.
const CMOS_STATUS_D: u8 = 0x0d;
/// Value of status B: binary (bit 2) + 24h (bit 1).
const CMOS_B_VALUE: u8 = 0x06;
/// Value of status D: valid RAM/time (bit 7).
const CMOS_D_VALUE: u8 = 0x80;

/// Port B refresh toggle bit (bit 4 flips on every read, like real hardware).
const PORT_B_REFRESH: u8 = 0x10;

/// A sink for miscellaneous legacy ports; see the module docs.
#[derive(Default)]
pub struct LegacyDevice {
    cmos_index: u8,
    port_b: u8,
}

/// Saved legacy-port state: the two registers the guest can change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacySnapshot {
    /// Selected CMOS register.
    pub cmos_index: u8,
    /// Port B value.
    pub port_b: u8,
}

impl LegacyDevice {
    /// Creates the device.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> LegacySnapshot {
        LegacySnapshot {
            cmos_index: self.cmos_index,
            port_b: self.port_b,
        }
    }

    /// Puts back registers saved by [`LegacyDevice::snapshot`].
    pub fn restore(&mut self, s: &LegacySnapshot) {
        self.cmos_index = s.cmos_index;
        self.port_b = s.port_b;
    }

    fn cmos_read(&self) -> u8 {
        match self.cmos_index & 0x7f {
            CMOS_STATUS_A => 0x26,
            CMOS_STATUS_B => CMOS_B_VALUE,
            CMOS_STATUS_D => CMOS_D_VALUE,
            0x07 | 0x08 => 1, // day of month, month
            0x09 => 24,       // year (binary mode)
            0x32 => 20,       // century
            _ => 0,
        }
    }

    /// Handles a read of absolute port `port`.
    pub fn read_port(&mut self, port: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(b) = data.first_mut() else { return };
        match port {
            PORT_B => {
                self.port_b ^= PORT_B_REFRESH;
                *b = self.port_b;
            }
            p if p == CMOS_INDEX_PORT + 1 => *b = self.cmos_read(),
            CMOS_INDEX_PORT => *b = self.cmos_index,
            FAST_A20_PORT => *b = 0x02,
            _ => {}
        }
    }

    /// Handles a write to absolute port `port`.
    pub fn write_port(&mut self, port: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match port {
            PORT_B => self.port_b = (self.port_b & PORT_B_REFRESH) | (v & !PORT_B_REFRESH),
            CMOS_INDEX_PORT => self.cmos_index = v,
            _ => {}
        }
    }
}

/// Offsets are absolute ports: [`register`] maps each range through an
/// [`Offset`] of its base.
impl BusDevice for LegacyDevice {
    fn read(&mut self, port: u64, data: &mut [u8]) {
        self.read_port(port, data)
    }
    fn write(&mut self, port: u64, data: &[u8]) {
        self.write_port(port, data)
    }
}

/// Registers one legacy device on every range of [`PORTS`]; returns it (its
/// state goes into snapshots).
pub fn register(bus: &mut Bus) -> Result<Arc<Mutex<LegacyDevice>>, BusError> {
    let legacy = Arc::new(Mutex::new(LegacyDevice::new()));
    let dev: SharedDevice = legacy.clone();
    for &(base, len) in PORTS {
        bus.insert(Offset::shared(dev.clone(), base), base, len)?;
    }
    Ok(legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ports_read_all_ones() {
        let mut d = LegacyDevice::new();
        let mut b = [0u8; 4];
        d.read_port(PCI_CONFIG_PORT, &mut b);
        assert_eq!(b, [0xff; 4]);
        d.write_port(POST_PORT, &[0x12]);
        d.read_port(POST_PORT, &mut b[..1]);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn cmos_index_and_data() {
        let mut d = LegacyDevice::new();
        let mut b = [0u8];
        d.write_port(CMOS_INDEX_PORT, &[CMOS_STATUS_A]);
        d.read_port(CMOS_INDEX_PORT + 1, &mut b);
        assert_eq!(b[0] & 0x80, 0, "update-in-progress must be clear");
        d.write_port(CMOS_INDEX_PORT, &[0x80 | CMOS_STATUS_D]); // NMI-disable bit set
        d.read_port(CMOS_INDEX_PORT + 1, &mut b);
        assert_eq!(b[0], CMOS_D_VALUE);
    }

    #[test]
    fn registered_ports_answer_with_absolute_port_numbers() {
        let mut bus = Bus::new();
        register(&mut bus).unwrap();
        // No PCI: a type-1 probe reads back all-ones, not the address written.
        let mut b = [0u8; 4];
        assert!(bus.write(PCI_CONFIG_PORT, &0x8000_0000u32.to_le_bytes()));
        assert!(bus.read(PCI_CONFIG_PORT, &mut b));
        assert_eq!(b, [0xff; 4]);
        for port in PCI_CONFIG_PORT..PCI_CONFIG_PORT + PCI_CONFIG_LEN {
            let mut one = [0u8];
            assert!(bus.read(port, &mut one), "{port:#x} unclaimed");
            assert_eq!(one[0], 0xff, "{port:#x}");
        }
        assert!(!bus.read(PCI_CONFIG_PORT + PCI_CONFIG_LEN, &mut b));
        // CMOS through the bus: offsets arrive as absolute ports.
        let mut one = [0u8];
        assert!(bus.write(CMOS_INDEX_PORT, &[CMOS_STATUS_B]));
        assert!(bus.read(CMOS_INDEX_PORT + 1, &mut one));
        assert_eq!(one[0], CMOS_B_VALUE);
        assert!(bus.read(FAST_A20_PORT, &mut one));
        assert_eq!(one[0], 0x02);
        // The i8042 owns 0x60 and 0x62..=0x64 around port B.
        assert!(!bus.read(PORT_B - 1, &mut one));
        assert!(!bus.read(PORT_B + 1, &mut one));
    }

    #[test]
    fn port_b_refresh_toggles() {
        let mut d = LegacyDevice::new();
        let (mut a, mut b) = ([0u8], [0u8]);
        d.read_port(PORT_B, &mut a);
        d.read_port(PORT_B, &mut b);
        assert_ne!(a[0] & PORT_B_REFRESH, b[0] & PORT_B_REFRESH);
        d.write_port(PORT_B, &[]);
        d.write_port(CMOS_INDEX_PORT, &[0x32]);
        let mut r = LegacyDevice::new();
        r.restore(&d.snapshot());
        assert_eq!(r.snapshot(), d.snapshot());
        assert_eq!(r.cmos_read(), 20);
    }
}

//! Hardware-reduced ACPI power management registers (I/O ports), as
//! described by the FADT: sleep control (0x600), sleep status (0x601) and
//! reset (0x604). Writing S5 | SLP_EN powers the VM off; writing the reset
//! value resets it.

use super::i8042::ResetSink;
use super::BusDevice;

/// Base I/O port of the block.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Number of ports.
pub const ACPI_PM_PORT_LEN: u64 = 8;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET_REG: u64 = 4;
/// Value that triggers a reset.
pub const RESET_VALUE: u8 = 1;
/// Sleep type announced for S5 in the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN bit of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field position in the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
/// SLP_TYP field mask (after shifting).
const SLP_TYP_MASK: u8 = 0x7;

/// The power management register block.
pub struct AcpiPmDevice {
    power_off: Box<dyn ResetSink>,
    reset: Box<dyn ResetSink>,
}

impl AcpiPmDevice {
    /// `power_off` fires on an S5 request, `reset` on a reset-register write.
    pub fn new(power_off: Box<dyn ResetSink>, reset: Box<dyn ResetSink>) -> Self {
        Self { power_off, reset }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never waking from anything.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL
                if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE =>
            {
                self.power_off.reset()
            }
            RESET_REG if v == RESET_VALUE => self.reset.reset(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let off = Arc::new(AtomicUsize::new(0));
        let rst = Arc::new(AtomicUsize::new(0));
        let (o, r) = (off.clone(), rst.clone());
        let mut d = AcpiPmDevice::new(
            Box::new(move || {
                o.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        d.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN
        d.write(SLEEP_CONTROL, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3: ignored
        assert_eq!(off.load(Ordering::SeqCst), 0);
        d.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(off.load(Ordering::SeqCst), 1);
        d.write(RESET_REG, &[0]);
        d.write(RESET_REG, &[]);
        assert_eq!(rst.load(Ordering::SeqCst), 0);
        d.write(RESET_REG, &[RESET_VALUE]);
        assert_eq!(rst.load(Ordering::SeqCst), 1);
        let mut b = [0xffu8];
        d.read(SLEEP_STATUS, &mut b);
        assert_eq!(b[0], 0);
    }
}

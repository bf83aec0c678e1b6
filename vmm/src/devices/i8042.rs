//! Minimal i8042 keyboard controller: enough for the guest to probe it and
//! to reset the machine with command 0xFE on port 0x64.

use serde::{Deserialize, Serialize};

use super::BusDevice;

/// Data port of the controller.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Status/command port of the controller.
pub const I8042_CMD_PORT: u64 = 0x64;
/// The device covers ports 0x60..=0x64 (0x61 is routed to the legacy device first).
pub const I8042_PORT_LEN: u64 = 5;

/// Command: read the controller configuration byte.
const CMD_READ_CTR: u8 = 0x20;
/// Command: write the controller configuration byte (next data byte).
const CMD_WRITE_CTR: u8 = 0x60;
/// Command: controller self test, answers 0x55.
const CMD_SELF_TEST: u8 = 0xAA;
/// Command: pulse the reset line.
const CMD_RESET_CPU: u8 = 0xFE;
/// Self-test passed answer.
const SELF_TEST_OK: u8 = 0x55;
/// Status bit: output buffer full.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
/// Status bit: system flag (POST passed).
const SB_SYSTEM_FLAG: u8 = 0x04;
/// Status bit: last write was a command.
const SB_CMD_DATA: u8 = 0x08;

/// Something to call when the guest asks for a CPU reset.
pub trait ResetSink: Send {
    /// Called once per reset request.
    fn reset(&self);
}

impl<F: Fn() + Send> ResetSink for F {
    fn reset(&self) {
        self()
    }
}

/// The i8042 device.
pub struct I8042Device {
    reset: Box<dyn ResetSink>,
    status: u8,
    control: u8,
    out: Option<u8>,
    expect_ctr: bool,
}

/// Saved controller registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042Snapshot {
    /// Status register.
    pub status: u8,
    /// Controller configuration byte.
    pub control: u8,
    /// Output buffer (answer not yet read by the guest).
    pub out: Option<u8>,
    /// The next data byte is a new configuration byte.
    pub expect_ctr: bool,
}

impl I8042Device {
    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            status: self.status,
            control: self.control,
            out: self.out,
            expect_ctr: self.expect_ctr,
        }
    }

    /// Puts back registers saved by [`I8042Device::snapshot`] (any byte
    /// values are valid).
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.status = s.status;
        self.control = s.control;
        self.out = s.out;
        self.expect_ctr = s.expect_ctr;
    }

    /// Creates the controller; `reset` fires on command 0xFE.
    pub fn new(reset: Box<dyn ResetSink>) -> Self {
        Self {
            reset,
            status: SB_SYSTEM_FLAG,
            control: 0,
            out: None,
            expect_ctr: false,
        }
    }

    fn push(&mut self, b: u8) {
        self.out = Some(b);
        self.status |= SB_OUT_DATA_AVAIL;
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => {
                self.status &= !SB_OUT_DATA_AVAIL;
                self.out.take().unwrap_or(0)
            }
            4 => self.status,
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            4 => {
                self.status |= SB_CMD_DATA;
                match v {
                    CMD_RESET_CPU => self.reset.reset(),
                    CMD_READ_CTR => self.push(self.control),
                    CMD_WRITE_CTR => self.expect_ctr = true,
                    CMD_SELF_TEST => self.push(SELF_TEST_OK),
                    _ => {}
                }
            }
            0 => {
                self.status &= !SB_CMD_DATA;
                if std::mem::take(&mut self.expect_ctr) {
                    self.control = v;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn dev() -> (I8042Device, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let d = I8042Device::new(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        (d, n)
    }

    #[test]
    fn reset_command_fires_once() {
        let (mut d, n) = dev();
        d.write(4, &[CMD_RESET_CPU]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ctr_roundtrip_and_self_test() {
        let (mut d, n) = dev();
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x47]);
        d.write(4, &[CMD_READ_CTR]);
        let mut b = [0u8];
        d.read(4, &mut b);
        assert_ne!(b[0] & SB_OUT_DATA_AVAIL, 0);
        d.read(0, &mut b);
        assert_eq!(b[0], 0x47);
        d.write(4, &[CMD_SELF_TEST]);
        d.read(0, &mut b);
        assert_eq!(b[0], SELF_TEST_OK);
        d.read(4, &mut b);
        assert_eq!(b[0] & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn snapshot_round_trip() {
        let (mut d, _) = dev();
        d.write(4, &[CMD_WRITE_CTR]);
        let s = d.snapshot();
        let (mut r, _) = dev();
        r.restore(&s);
        r.write(0, &[0x61]);
        r.write(4, &[CMD_READ_CTR]);
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b[0], 0x61);
        assert!(s.expect_ctr);
    }

    #[test]
    fn empty_and_unknown_accesses_are_harmless() {
        let (mut d, _) = dev();
        d.write(4, &[]);
        d.write(2, &[1]);
        let mut b = [0u8; 2];
        d.read(2, &mut b);
        assert_eq!(b, [0xff, 0]);
        d.read(0, &mut []);
    }
}

//! Emulated devices and the buses that route guest port-I/O and MMIO to them.

pub mod acpi_pm;
pub mod i8042;
pub mod legacy;
pub mod serial;

use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes on a bus.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors registering devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps an existing one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Address → device map (one for port I/O, one for MMIO).
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` for `[base, base + len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|(b, l, _)| base < b + l && *b < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.push((base, len, dev));
        self.entries.sort_by_key(|e| e.0);
        Ok(())
    }

    /// Finds the device covering `addr` and the offset into it.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let idx = self.entries.partition_point(|e| e.0 <= addr);
        let (base, len, dev) = self.entries.get(idx.checked_sub(1)?)?;
        (addr - base < *len).then_some((dev, addr - base))
    }

    /// Dispatches a read; returns false when no device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex (a panicking vCPU thread
/// must not take every other vCPU down with it).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adapter that forwards to `dev` with `offset` added, so one device can be
/// registered on several disjoint ranges and still see its own offsets (the
/// i8042 around port 0x61; the legacy ports, which see absolute ports).
pub struct Offset {
    /// Target device.
    pub dev: SharedDevice,
    /// Added to every offset.
    pub offset: u64,
}

impl Offset {
    /// `dev` behind an offset, ready to insert on a bus.
    pub fn shared(dev: SharedDevice, offset: u64) -> SharedDevice {
        Arc::new(Mutex::new(Offset { dev, offset }))
    }
}

impl BusDevice for Offset {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read(offset.wrapping_add(self.offset), data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).write(offset.wrapping_add(self.offset), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn bus_routes_and_rejects_overlap() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert!(bus.insert(d.clone(), 0x10, 0).is_err());
        assert!(bus.insert(d.clone(), u64::MAX, 2).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(bus.write(0x3f8, &[7]));
    }

    #[test]
    fn offset_adapter_shifts_offsets() {
        let echo = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::new();
        bus.insert(echo.clone(), 0x60, 1).unwrap();
        bus.insert(Offset::shared(echo.clone(), 2), 0x62, 3)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b[0], 4);
        assert!(bus.write(0x62, &[9]));
        assert!(bus.write(0x60, &[8]));
        assert_eq!(lock(&echo).0, [(2, 9), (0, 8)]);
        assert!(!bus.read(0x61, &mut b));
    }
}

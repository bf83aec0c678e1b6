//! Counts of VM exits per device, to find where a boot's time goes: under
//! KVM every port-I/O or MMIO access the VMM emulates is an exit, and exits
//! dominate boot time (each costs microseconds on hardware, far more nested).

use std::collections::HashMap;
use std::fmt;

use crate::devices::Bus;

/// What kind of access exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// Port I/O (`in`/`out`).
    Io,
    /// Memory-mapped I/O.
    Mmio,
}

/// Exits counted by kind and by the base address of the device that took
/// them (the accessed address itself where no device claims it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    counts: HashMap<(ExitKind, u64, bool), u64>,
}

impl ExitStats {
    /// Counts one access to `addr` on `bus`.
    pub fn record(&mut self, kind: ExitKind, bus: &Bus, addr: u64) {
        let (base, claimed) = match bus.resolve(addr) {
            Some((_, off)) => (addr - off, true),
            None => (addr, false),
        };
        *self.counts.entry((kind, base, claimed)).or_default() += 1;
    }

    /// Adds `other`'s counts (another vCPU's).
    pub fn merge(&mut self, other: &ExitStats) {
        for (k, v) in &other.counts {
            *self.counts.entry(*k).or_default() += v;
        }
    }

    /// All counted exits.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Exits at the device (or unclaimed address) based at `base`.
    pub fn at(&self, kind: ExitKind, base: u64) -> u64 {
        self.counts
            .iter()
            .filter(|((k, b, _), _)| *k == kind && *b == base)
            .map(|(_, v)| v)
            .sum()
    }
}

/// One line: the total, then the busiest devices first (at most eight).
impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v: Vec<_> = self.counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        write!(f, "{} I/O exits", self.total())?;
        for ((kind, base, claimed), n) in v.into_iter().take(8) {
            let kind = match kind {
                ExitKind::Io => "io",
                ExitKind::Mmio => "mmio",
            };
            let unclaimed = if *claimed { "" } else { " (no device)" };
            write!(f, "; {kind} {base:#x}{unclaimed}: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{BusDevice, SharedDevice};
    use std::sync::{Arc, Mutex};

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _: u64, _: &mut [u8]) {}
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn counts_by_device_base_and_merges() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Nop));
        bus.insert(d, 0x3f8, 8).unwrap();
        let mut a = ExitStats::default();
        a.record(ExitKind::Io, &bus, 0x3f8);
        a.record(ExitKind::Io, &bus, 0x3fd);
        a.record(ExitKind::Io, &bus, 0x80);
        let mut b = ExitStats::default();
        b.record(ExitKind::Io, &bus, 0x3f8);
        a.merge(&b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.at(ExitKind::Io, 0x3f8), 3);
        assert_eq!(a.at(ExitKind::Io, 0x80), 1);
        assert_eq!(a.at(ExitKind::Mmio, 0x3f8), 0);
        let line = a.to_string();
        assert!(
            line.starts_with("4 I/O exits; io 0x3f8: 3; io 0x80 (no device): 1"),
            "{line}"
        );
    }
}

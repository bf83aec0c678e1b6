//! virtio-mmio transport, version 2 ("modern", virtio 1.x) register layout
//! and device-status state machine.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Transport version 2 (modern).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID ("ARNA").
pub const VENDOR_ID: u32 = 0x414e_5241;

/// Register offsets.
pub mod reg {
    /// Magic value.
    pub const MAGIC: u64 = 0x000;
    /// Transport version.
    pub const VERSION: u64 = 0x004;
    /// Device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (32-bit page chosen by DEVICE_FEATURES_SEL).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features page selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features (page chosen by DRIVER_FEATURES_SEL).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features page selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification (value = queue index).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Configuration generation counter.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of device-specific configuration.
    pub const CONFIG: u64 = 0x100;
}

/// Transport state for one device.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: Arc<GuestMem>,
    irq: Arc<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    interrupt_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    /// Last error that put the device into NEEDS_RESET.
    pub last_error: Option<VirtioError>,
}

/// Saved split-queue state: virtio-queue's [`QueueState`], mirrored
/// because that type has no serde support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size the device offers.
    pub max_size: u16,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver selected.
    pub size: u16,
    /// Driver marked the queue ready.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// Saved transport registers and queues (the device's own state is saved
/// by the device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// Device status register.
    pub status: u32,
    /// Interrupt status register.
    pub interrupt_status: u32,
    /// Device features page selector.
    pub device_features_sel: u32,
    /// Driver features page selector.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Selected queue.
    pub queue_sel: u32,
    /// Configuration generation counter.
    pub config_generation: u32,
    /// Why the device needs a reset, if it does.
    pub last_error: Option<String>,
    /// One entry per device queue.
    pub queues: Vec<QueueSnapshot>,
}

/// Every status bit the transport knows.
const STATUS_KNOWN: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_NEEDS_RESET
    | STATUS_FAILED;

impl<D: VirtioDevice> MmioTransport<D> {
    /// Registers and queue state, for a snapshot.
    pub fn snapshot(&self) -> TransportSnapshot {
        TransportSnapshot {
            status: self.status,
            interrupt_status: self.interrupt_status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            last_error: self.last_error.as_ref().map(ToString::to_string),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Puts back state saved by [`MmioTransport::snapshot`], checking it as
    /// untrusted input: queue count and maximum sizes must be this device's,
    /// sizes valid, features a subset of the offer, and the queues of a live
    /// device inside guest memory. On error nothing is changed.
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), String> {
        let max = self.device.queue_max_sizes();
        if s.queues.len() != max.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                s.queues.len(),
                max.len()
            ));
        }
        if s.status & !STATUS_KNOWN != 0 {
            return Err(format!("unknown device status bits {:#x}", s.status));
        }
        if s.driver_features & !self.offered_features() != 0 {
            return Err(format!(
                "driver features {:#x} were never offered",
                s.driver_features
            ));
        }
        let mut queues = Vec::with_capacity(max.len());
        for (i, (q, &m)) in s.queues.iter().zip(max).enumerate() {
            if q.max_size != m {
                return Err(format!(
                    "queue {i}: maximum size {} saved, the device has {m}",
                    q.max_size
                ));
            }
            let queue =
                Queue::try_from(QueueState::from(*q)).map_err(|e| format!("queue {i}: {e}"))?;
            if s.status & STATUS_DRIVER_OK != 0 && queue.ready() && !queue.is_valid(&*self.mem) {
                return Err(format!("queue {i} is outside guest memory"));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.status = s.status;
        self.interrupt_status = s.interrupt_status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.last_error = s.last_error.clone().map(VirtioError::Restored);
        Ok(())
    }

    /// The wrapped device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Wraps `device`; `irq` is the eventfd registered as its irqfd.
    pub fn new(device: D, mem: Arc<GuestMem>, irq: Arc<EventFd>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m).expect("device queue sizes are valid powers of two"))
            .collect();
        Self {
            device,
            mem,
            irq,
            queues,
            status: 0,
            interrupt_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            last_error: None,
        }
    }

    /// The wrapped device.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// All offered features, including VERSION_1.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn is_live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && self.status & (STATUS_NEEDS_RESET | STATUS_FAILED) == 0
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        // A failed eventfd write only loses an interrupt; never fatal.
        let _ = self.irq.write(1);
    }

    fn fail(&mut self, e: VirtioError) {
        self.last_error = Some(e);
        self.status |= STATUS_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(INT_CONFIG);
    }

    /// Processes queue `idx` (driver notification or host-side data).
    pub fn process_queue(&mut self, idx: usize) {
        if !self.is_live() || idx >= self.queues.len() || !self.queues[idx].ready() {
            return;
        }
        match self.device.process_queue(idx, &mut self.queues, &self.mem) {
            Ok(true) => self.raise(INT_USED_RING),
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.last_error = None;
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device: a driver write can neither set
        // it (which would stop the device with no `last_error` to say why)
        // nor clear it short of a reset.
        let v = (v & !STATUS_NEEDS_RESET) | (self.status & STATUS_NEEDS_RESET);
        // Bits may only be added (FAILED is always accepted).
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        let mut v = v;
        if new & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.offered_features() == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
                && self.status & STATUS_DRIVER != 0;
            if !ok {
                v &= !STATUS_FEATURES_OK;
            }
        }
        if new & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 {
                return;
            }
            let bad = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(&*self.mem));
            self.status = v;
            if let Some(i) = bad {
                self.fail(VirtioError::Queue(format!(
                    "queue {i} is outside guest memory"
                )));
                return;
            }
            // Deliver anything the host queued before the driver was ready.
            for i in 0..self.queues.len() {
                self.process_queue(i);
            }
            return;
        }
        self.status = v;
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let features = self.offered_features();
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let cfg_ok = self.queue_config_allowed();
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES
                if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0 =>
            {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if cfg_ok => {
                if let Some(q) = self.selected_queue() {
                    // Invalid sizes (0, > max, not a power of two) are ignored by
                    // the queue and make it fail validation at DRIVER_OK.
                    q.set_size(u16::try_from(v).unwrap_or(0));
                }
            }
            reg::QUEUE_READY if cfg_ok => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH
                if cfg_ok =>
            {
                // virtio-queue's setters take the address as (low, high)
                // halves, either of which may be left as it is.
                let (lo, hi) = match offset {
                    reg::QUEUE_DESC_HIGH | reg::QUEUE_AVAIL_HIGH | reg::QUEUE_USED_HIGH => {
                        (None, Some(v))
                    }
                    _ => (Some(v), None),
                };
                if let Some(q) = self.selected_queue() {
                    match offset {
                        reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                            q.set_desc_table_address(lo, hi)
                        }
                        reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => {
                            q.set_avail_ring_address(lo, hi)
                        }
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            reg::QUEUE_NOTIFY => self.process_queue(v as usize),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v),
            _ => {}
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset & 3 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registers are 32-bit only; the console has no writable config.
        if offset < reg::CONFIG && data.len() == 4 && offset & 3 == 0 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::memory::create_guest_memory;

    /// A device with one queue that marks every chain used with length 0.
    struct Null;
    impl VirtioDevice for Null {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn process_queue(
            &mut self,
            idx: usize,
            q: &mut [Queue],
            mem: &GuestMem,
        ) -> Result<bool, VirtioError> {
            let mut used = false;
            while let Some(c) = pop_chain(&mut q[idx], mem)? {
                let head = c.head_index();
                validate_chain(c, false, 4096).map_err(|kind| VirtioError::Chain { head, kind })?;
                add_used(&mut q[idx], mem, head, 0)?;
                used = true;
            }
            Ok(used)
        }
        fn reset(&mut self) {}
    }

    fn setup() -> (MmioTransport<Null>, Arc<GuestMem>, Arc<EventFd>) {
        let mem = Arc::new(create_guest_memory(16).unwrap());
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (MmioTransport::new(Null, mem.clone(), irq.clone()), mem, irq)
    }

    fn w<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn negotiate<D: VirtioDevice>(t: &mut MmioTransport<D>, features_hi: u32) {
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE);
        w(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, features_hi);
        w(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport<Null>, tq: &TestQueue) {
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, u32::from(tq.size));
        w(t, reg::QUEUE_DESC_LOW, tq.desc as u32);
        w(t, reg::QUEUE_AVAIL_LOW, tq.avail as u32);
        w(t, reg::QUEUE_USED_LOW, tq.used as u32);
        w(t, reg::QUEUE_READY, 1);
    }

    const ALL: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = setup();
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 5);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1); // VERSION_1 = bit 32
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        // Narrow or misaligned register reads give zero.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 1];
        t.read(reg::CONFIG + 3, &mut c);
        assert_eq!(c[0], 3);
    }

    #[test]
    fn features_ok_requires_version_1_and_subset() {
        let (mut t, _, _) = setup();
        negotiate(&mut t, 0);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0, "legacy driver refused");
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, 1 | 2); // bit 33 not offered
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, 1);
        assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn full_lifecycle_notify_interrupt_ack_reset() {
        let (mut t, mem, irq) = setup();
        negotiate(&mut t, 1);
        let mut tq = TestQueue::new(0x10000, 16);
        setup_queue(&mut t, &tq);
        w(&mut t, reg::STATUS, ALL);
        assert_eq!(t.status(), ALL);
        // Queue config is frozen after DRIVER_OK.
        w(&mut t, reg::QUEUE_NUM, 4);
        tq.set_desc(&mem, 0, 0x20000, 8, 0, 0);
        tq.push_avail(&mem, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(tq.used_idx(&mem), 1);
        assert_eq!(tq.used_elem(&mem, 0), (0, 0));
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_USED_RING);
        assert_eq!(irq.read().unwrap(), 1);
        w(&mut t, reg::INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        // Notifying a queue that does not exist is ignored.
        w(&mut t, reg::QUEUE_NOTIFY, 9);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn bad_chain_sets_needs_reset_and_stops() {
        let (mut t, mem, _) = setup();
        negotiate(&mut t, 1);
        let mut tq = TestQueue::new(0x10000, 16);
        setup_queue(&mut t, &tq);
        w(&mut t, reg::STATUS, ALL);
        tq.set_desc(&mem, 0, 0x20000, 8, F_NEXT, 0); // loop
        tq.push_avail(&mem, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert!(matches!(
            t.last_error,
            Some(VirtioError::Chain {
                head: 0,
                kind: ChainError::Broken
            })
        ));
        // Further notifications do nothing until reset.
        tq.set_desc(&mem, 1, 0x20000, 8, 0, 0);
        tq.push_avail(&mem, 1);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(tq.used_idx(&mem), 0);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
        assert!(t.last_error.is_none());
    }

    #[test]
    fn queue_outside_memory_is_refused_at_driver_ok() {
        let (mut t, _, _) = setup();
        negotiate(&mut t, 1);
        let tq = TestQueue::new(0xd000_0000, 16); // MMIO gap, not RAM
        setup_queue(&mut t, &tq);
        w(&mut t, reg::STATUS, ALL);
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_addresses_combine_low_and_high_halves() {
        let (mut t, _, _) = setup();
        negotiate(&mut t, 1);
        w(&mut t, reg::QUEUE_SEL, 0);
        for (lo, hi, base) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, 0x1_0000_1000u64),
            (reg::QUEUE_AVAIL_LOW, reg::QUEUE_AVAIL_HIGH, 0x2_0000_2000),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH, 0x3_0000_3000),
        ] {
            w(&mut t, hi, (base >> 32) as u32);
            w(&mut t, lo, base as u32);
        }
        // Rewriting one half keeps the other.
        w(&mut t, reg::QUEUE_DESC_LOW, 0x4000);
        w(&mut t, reg::QUEUE_USED_HIGH, 7);
        let q = &t.queues[0];
        assert_eq!(q.desc_table(), 0x1_0000_4000);
        assert_eq!(q.avail_ring(), 0x2_0000_2000);
        assert_eq!(q.used_ring(), 0x7_0000_3000);
    }

    #[test]
    fn bad_queue_size_is_refused() {
        let (mut t, _, _) = setup();
        negotiate(&mut t, 1);
        let mut tq = TestQueue::new(0x10000, 16);
        tq.size = 12; // not a power of two: ignored, queue keeps max size
        setup_queue(&mut t, &tq);
        w(&mut t, reg::QUEUE_NUM, 1000); // > max: ignored
        w(&mut t, reg::STATUS, ALL);
        assert_eq!(t.status(), ALL);
        assert_eq!(t.queues[0].size(), 16);
    }

    #[test]
    fn status_bits_cannot_be_cleared_or_skipped() {
        let (mut t, _, _) = setup();
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(t.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // DRIVER_OK without FEATURES_OK is ignored.
        w(
            &mut t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(t.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }

    #[test]
    fn driver_cannot_set_needs_reset() {
        let (mut t, _, _) = setup();
        w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_NEEDS_RESET);
        assert_eq!(t.status(), STATUS_ACKNOWLEDGE);
        assert!(t.last_error.is_none());
    }

    /// Random register traffic and random queue memory: the transport and
    /// console must never panic, whatever a hostile driver does.
    #[test]
    fn random_driver_never_panics() {
        use crate::virtio::console::Console;
        use vm_memory::{Bytes, GuestAddress};
        let mem = Arc::new(create_guest_memory(16).unwrap());
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(Console::new(Box::new(std::io::sink())), mem.clone(), irq);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let regs = [
            reg::STATUS,
            reg::QUEUE_SEL,
            reg::QUEUE_NUM,
            reg::QUEUE_READY,
            reg::QUEUE_NOTIFY,
            reg::QUEUE_DESC_LOW,
            reg::QUEUE_DESC_HIGH,
            reg::QUEUE_AVAIL_LOW,
            reg::QUEUE_USED_LOW,
            reg::DRIVER_FEATURES,
            reg::DRIVER_FEATURES_SEL,
            reg::INTERRUPT_ACK,
        ];
        let (mut live, mut broken) = (0u32, 0u32);
        for round in 0..20_000u32 {
            let r = rnd();
            // Sprinkle garbage over the low 64 KiB where queues tend to land.
            mem.write_obj(rnd(), GuestAddress(r % 0xfff8)).unwrap();
            let off = if r & 0x100 != 0 {
                regs[(r >> 9) as usize % regs.len()]
            } else {
                (r >> 12) % 0x200
            };
            let val = match off {
                reg::STATUS => [0, 1, 3, 0xb, 0xf, 0x80][(r >> 20) as usize % 6],
                reg::QUEUE_SEL | reg::QUEUE_NOTIFY => (r >> 20) as u32 % 4,
                reg::QUEUE_NUM => [0u32, 1, 8, 12, 256, 4096][(r >> 20) as usize % 6],
                reg::QUEUE_DESC_LOW | reg::QUEUE_AVAIL_LOW | reg::QUEUE_USED_LOW => {
                    ((r >> 20) as u32 % 0x10) * 0x1000 + ((r >> 40) as u32 % 2) * 2
                }
                reg::DRIVER_FEATURES => 1,
                reg::DRIVER_FEATURES_SEL | reg::QUEUE_READY => (r >> 20) as u32 % 2,
                _ => (r >> 20) as u32,
            };
            let len = [1usize, 2, 4, 8][(r >> 60) as usize % 4];
            if r & 1 == 0 {
                t.write(off, &val.to_le_bytes()[..len.min(4)]);
            } else {
                let mut b = vec![0u8; len];
                t.read(off, &mut b);
            }
            if round % 200 == 0 {
                // A proper bring-up over garbage queue memory, then chaos again.
                w(&mut t, reg::STATUS, 0);
                negotiate(&mut t, 1);
                for q in 0..2u32 {
                    w(&mut t, reg::QUEUE_SEL, q);
                    w(&mut t, reg::QUEUE_NUM, 8);
                    w(&mut t, reg::QUEUE_DESC_LOW, (rnd() % 13) as u32 * 0x1000);
                    w(
                        &mut t,
                        reg::QUEUE_AVAIL_LOW,
                        (rnd() % 13) as u32 * 0x1000 + 0x200,
                    );
                    w(
                        &mut t,
                        reg::QUEUE_USED_LOW,
                        (rnd() % 13) as u32 * 0x1000 + 0x400,
                    );
                    w(&mut t, reg::QUEUE_READY, 1);
                }
                w(&mut t, reg::STATUS, ALL);
            }
            if round % 97 == 0 {
                t.device_mut().queue_input(b"hostile");
                t.process_queue(0);
            }
            live += u32::from(t.status() & STATUS_DRIVER_OK != 0);
            broken += u32::from(t.status() & STATUS_NEEDS_RESET != 0);
        }
        // The random driver did get the device running, and broke it.
        assert!(live > 100 && broken > 10, "live {live} broken {broken}");
    }

    #[test]
    fn snapshot_round_trip_continues_the_queues() {
        let (mut t, mem, irq) = setup();
        let mut tq = TestQueue::new(0x10000, 8);
        negotiate(&mut t, 1);
        setup_queue(&mut t, &tq);
        w(&mut t, reg::STATUS, ALL);
        tq.set_desc(&mem, 0, 0x20000, 4, 0, 0);
        tq.push_avail(&mem, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(tq.used_idx(&mem), 1);
        let s = t.snapshot();
        let mut r = MmioTransport::new(Null, mem.clone(), irq);
        r.restore(&s).unwrap();
        assert_eq!(r.snapshot(), s);
        assert_eq!(r.status(), ALL);
        // The restored transport picks up at the next avail entry.
        tq.push_avail(&mem, 0);
        w(&mut r, reg::QUEUE_NOTIFY, 0);
        assert_eq!(tq.used_idx(&mem), 2);
        assert_eq!(r.snapshot().queues[0].next_avail, 2);
    }

    #[test]
    fn untrusted_snapshot_state_is_refused() {
        let (mut t, _, _) = setup();
        let tq = TestQueue::new(0x10000, 8);
        negotiate(&mut t, 1);
        setup_queue(&mut t, &tq);
        w(&mut t, reg::STATUS, ALL);
        let good = t.snapshot();
        let (mut r, _, _) = setup();
        let before = r.snapshot();
        let bad: Vec<fn(&mut TransportSnapshot)> = vec![
            |s| s.queues.clear(),
            |s| {
                let q = s.queues[0];
                s.queues.push(q)
            },
            |s| s.queues[0].max_size = 32768,
            |s| s.queues[0].size = 3,
            |s| s.queues[0].size = 32,
            |s| s.queues[0].desc_table = (16 << 20) - 8,
            |s| s.queues[0].used_ring = 0x10001,
            |s| s.driver_features |= 1 << 40,
            |s| s.status |= 0x100,
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut s = good.clone();
            f(&mut s);
            assert!(r.restore(&s).is_err(), "case {i} accepted");
            assert_eq!(r.snapshot(), before, "case {i} changed the transport");
        }
        r.restore(&good).unwrap();
    }
}

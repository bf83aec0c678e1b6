//! virtio 1.x devices over the MMIO transport.
//!
//! Every value the guest hands us (queue addresses and sizes, descriptor
//! indices, buffer addresses and lengths) is checked against guest memory and
//! the queue before use. A malformed chain never panics: the device reports
//! [`VirtioError`], the transport sets `DEVICE_NEEDS_RESET` and stops
//! processing until the driver resets it.

pub mod console;
pub mod mmio;

use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, Permissions};

use crate::memory::GuestMem;
use console::Console;
use mmio::MmioTransport;

/// Device status: guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: guest has a driver.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 0x40;
/// Device status: driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;
/// Feature bit: virtio 1.0 or later (mandatory for the modern transport).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Interrupt status: used buffer notification.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status: configuration change (also used for NEEDS_RESET).
pub const INT_CONFIG: u32 = 2;
/// Device type: console.
pub const TYPE_CONSOLE: u32 = 3;

/// Errors a device reports for a misbehaving driver.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VirtioError {
    /// The queue itself is unusable (bad addresses, bad avail index).
    #[error("virtqueue error: {0}")]
    Queue(String),
    /// A descriptor chain is malformed.
    #[error("bad descriptor chain at head {head}: {kind}")]
    Chain {
        /// Head index of the chain.
        head: u16,
        /// What is wrong with it.
        kind: ChainError,
    },
    /// An error restored from a snapshot, as it was displayed.
    #[error("{0}")]
    Restored(String),
}

/// What is wrong with a descriptor chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum ChainError {
    /// A buffer is outside guest memory (or wraps around).
    #[error("buffer {addr:#x}+{len:#x} outside guest memory")]
    OutOfBounds {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The chain loops, is longer than the queue, or links to a bad index.
    #[error("chain loops, exceeds the queue size or links out of the table")]
    Broken,
    /// A descriptor has the wrong direction for this queue.
    #[error("descriptor is {}, queue needs the other direction", if *.0 { "device-writable" } else { "device-readable" })]
    WrongDirection(bool),
    /// The chain describes more bytes than the device accepts.
    #[error("chain carries {0} bytes, more than the device accepts")]
    Oversize(u64),
}

/// One guest buffer from a validated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero: empty descriptors are skipped).
    pub len: u32,
}

/// Validates a chain: every descriptor in `writable` direction, inside guest
/// memory, chain terminated within the queue size, total at most `max_total`.
pub fn validate_chain(
    chain: DescriptorChain<&GuestMem>,
    writable: bool,
    max_total: u64,
) -> Result<Vec<Buffer>, ChainError> {
    let mem = chain.memory();
    let mut bufs = Vec::new();
    let mut total: u64 = 0;
    let mut terminated = false;
    for desc in chain.clone() {
        if desc.is_write_only() != writable {
            return Err(ChainError::WrongDirection(desc.is_write_only()));
        }
        let (addr, len) = (desc.addr(), desc.len());
        let perm = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if addr.checked_add(u64::from(len)).is_none()
            || !GuestMemory::check_range(mem, addr, len as usize, perm)
        {
            return Err(ChainError::OutOfBounds {
                addr: addr.raw_value(),
                len,
            });
        }
        total += u64::from(len);
        if total > max_total {
            return Err(ChainError::Oversize(total));
        }
        if len > 0 {
            bufs.push(Buffer { addr, len });
        }
        terminated = !desc.has_next();
    }
    // The iterator stops silently on loops (its TTL is the queue size), on
    // out-of-table `next` indices and on unreadable descriptors: in all of
    // those cases the last descriptor we saw still claimed a successor.
    if !terminated {
        return Err(ChainError::Broken);
    }
    Ok(bufs)
}

/// Pops the next available chain, turning a corrupt avail ring into an error.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMem,
) -> Result<Option<DescriptorChain<&'a GuestMem>>, VirtioError> {
    let mut iter = queue
        .iter(mem)
        .map_err(|e| VirtioError::Queue(e.to_string()))?;
    Ok(iter.next())
}

/// Returns a used chain to the driver.
pub fn add_used(queue: &mut Queue, mem: &GuestMem, head: u16, len: u32) -> Result<(), VirtioError> {
    queue
        .add_used(mem, head, len)
        .map_err(|e| VirtioError::Queue(e.to_string()))
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device type (3 = console).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Processes queue `idx` after a driver notification or host-side event.
    /// Returns true when used buffers were added.
    fn process_queue(
        &mut self,
        idx: usize,
        queues: &mut [Queue],
        mem: &GuestMem,
    ) -> Result<bool, VirtioError>;
    /// Forgets all driver-visible state (the driver wrote status 0).
    fn reset(&mut self);
}

/// First interrupt line used by virtio-mmio devices (one per slot).
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// The virtio-console behind its MMIO transport.
pub type ConsoleTransport = Arc<Mutex<MmioTransport<Console>>>;

/// One virtio-mmio device slot: where the guest finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// MMIO base address.
    pub addr: u64,
    /// Size of the register window.
    pub size: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

impl VirtioSlot {
    /// Slot `i` of the virtio-mmio window.
    pub fn nth(i: u32) -> Self {
        Self {
            addr: crate::memory::VIRTIO_MMIO_BASE
                + u64::from(i) * crate::memory::VIRTIO_MMIO_SLOT_SIZE,
            size: crate::memory::VIRTIO_MMIO_SLOT_SIZE,
            irq: VIRTIO_IRQ_BASE + i,
        }
    }

    /// `virtio_mmio.device=` kernel parameter describing this slot.
    pub fn cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.addr,
            self.irq
        )
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny in-memory "driver" to build split virtqueues in guest memory.

    use super::*;
    use vm_memory::Bytes;

    /// Descriptor flag: chain continues.
    pub const F_NEXT: u16 = 1;
    /// Descriptor flag: device writes this buffer.
    pub const F_WRITE: u16 = 2;

    /// A split queue laid out at fixed addresses.
    pub struct TestQueue {
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub size: u16,
        pub next_avail: u16,
    }

    impl TestQueue {
        pub fn new(base: u64, size: u16) -> Self {
            Self {
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                size,
                next_avail: 0,
            }
        }

        pub fn set_desc(&self, mem: &GuestMem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let a = GuestAddress(self.desc + 16 * u64::from(i));
            mem.write_obj(addr, a).unwrap();
            mem.write_obj(len, a.unchecked_add(8)).unwrap();
            mem.write_obj(flags, a.unchecked_add(12)).unwrap();
            mem.write_obj(next, a.unchecked_add(14)).unwrap();
        }

        pub fn push_avail(&mut self, mem: &GuestMem, head: u16) {
            let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
            mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
                .unwrap();
        }

        pub fn used_idx(&self, mem: &GuestMem) -> u16 {
            mem.read_obj(GuestAddress(self.used + 2)).unwrap()
        }

        pub fn used_elem(&self, mem: &GuestMem, i: u16) -> (u32, u32) {
            let a = self.used + 4 + 8 * u64::from(i % self.size);
            (
                mem.read_obj(GuestAddress(a)).unwrap(),
                mem.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        }

        pub fn queue(&self, max: u16) -> Queue {
            let mut q = Queue::new(max).unwrap();
            q.set_size(self.size);
            q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
            q.set_avail_ring_address(Some(self.avail as u32), Some(0));
            q.set_used_ring_address(Some(self.used as u32), Some(0));
            q.set_ready(true);
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::memory::create_guest_memory;

    const MAX: u64 = 0x10000;

    fn first_chain(
        tq: &mut TestQueue,
        mem: &GuestMem,
        head: u16,
    ) -> Result<Vec<Buffer>, ChainError> {
        tq.push_avail(mem, head);
        let mut q = tq.queue(256);
        let chain = pop_chain(&mut q, mem).unwrap().expect("a chain");
        validate_chain(chain, false, MAX)
    }

    #[test]
    fn good_chain_is_accepted() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0x20000, 10, F_NEXT, 3);
        tq.set_desc(&mem, 3, 0x30000, 0, F_NEXT, 5); // zero-length: skipped
        tq.set_desc(&mem, 5, 0x40000, 20, 0, 0);
        let b = first_chain(&mut tq, &mem, 0).unwrap();
        assert_eq!(
            b,
            vec![
                Buffer {
                    addr: GuestAddress(0x20000),
                    len: 10
                },
                Buffer {
                    addr: GuestAddress(0x40000),
                    len: 20
                }
            ]
        );
    }

    #[test]
    fn looping_chain_is_broken() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0x20000, 1, F_NEXT, 1);
        tq.set_desc(&mem, 1, 0x20000, 1, F_NEXT, 0);
        assert_eq!(first_chain(&mut tq, &mem, 0), Err(ChainError::Broken));
        // Self loop.
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 2, 0x20000, 1, F_NEXT, 2);
        assert_eq!(first_chain(&mut tq, &mem, 2), Err(ChainError::Broken));
    }

    #[test]
    fn next_index_outside_table_is_broken() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0x20000, 4, F_NEXT, 8);
        assert_eq!(first_chain(&mut tq, &mem, 0), Err(ChainError::Broken));
    }

    #[test]
    fn head_index_outside_table_is_broken() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.push_avail(&mem, 200);
        let mut q = tq.queue(256);
        // virtio-queue refuses a head >= queue size while popping.
        match pop_chain(&mut q, &mem) {
            Ok(None) | Err(_) => {}
            Ok(Some(c)) => assert_eq!(validate_chain(c, false, MAX), Err(ChainError::Broken)),
        }
    }

    #[test]
    fn out_of_bounds_and_wrapping_buffers_are_rejected() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, (16 << 20) - 4, 8, 0, 0);
        assert_eq!(
            first_chain(&mut tq, &mem, 0),
            Err(ChainError::OutOfBounds {
                addr: (16 << 20) - 4,
                len: 8
            })
        );
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, u64::MAX - 2, 16, 0, 0);
        assert!(matches!(
            first_chain(&mut tq, &mem, 0),
            Err(ChainError::OutOfBounds { .. })
        ));
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0xd000_0000, 16, 0, 0); // MMIO hole, not RAM
        assert!(matches!(
            first_chain(&mut tq, &mem, 0),
            Err(ChainError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn oversize_and_wrong_direction_are_rejected() {
        let mem = create_guest_memory(16).unwrap();
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0x100000, 0x8000, F_NEXT, 1);
        tq.set_desc(&mem, 1, 0x200000, 0x8001, 0, 0);
        assert_eq!(
            first_chain(&mut tq, &mem, 0),
            Err(ChainError::Oversize(0x10001))
        );
        let mut tq = TestQueue::new(0x10000, 8);
        tq.set_desc(&mem, 0, 0x100000, 4, F_WRITE, 0);
        assert_eq!(
            first_chain(&mut tq, &mem, 0),
            Err(ChainError::WrongDirection(true))
        );
    }

    #[test]
    fn bogus_avail_index_is_a_queue_error() {
        let mem = create_guest_memory(16).unwrap();
        let tq = TestQueue::new(0x10000, 8);
        use vm_memory::Bytes;
        mem.write_obj(100u16, GuestAddress(tq.avail + 2)).unwrap();
        let mut q = tq.queue(256);
        assert!(matches!(
            pop_chain(&mut q, &mem),
            Err(VirtioError::Queue(_))
        ));
    }
}

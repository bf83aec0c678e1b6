//! virtio-console (single port, no multiport): queue 0 is `receiveq` (host
//! to guest), queue 1 is `transmitq` (guest to host).

use std::collections::VecDeque;
use std::io::Write;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Largest transmit chain accepted (bytes).
pub const MAX_TX_CHAIN: u64 = 1 << 20;
/// Largest receive chain accepted (bytes).
pub const MAX_RX_CHAIN: u64 = 1 << 20;
/// Host input kept while the guest posts no receive buffers.
pub const MAX_PENDING_RX: usize = 1 << 20;

/// The console device.
pub struct Console {
    out: Box<dyn Write + Send>,
    pending_rx: VecDeque<u8>,
    /// Bytes dropped because the guest did not read fast enough.
    pub dropped_rx: u64,
}

/// Saved console state. No MULTIPORT feature is offered, so there are no
/// port open flags: the state is host input the guest has not taken yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSnapshot {
    /// Host input waiting for guest receive buffers.
    pub pending_rx: Vec<u8>,
    /// Input bytes dropped so far.
    pub dropped_rx: u64,
}

impl Console {
    /// State for a snapshot.
    pub fn snapshot(&self) -> ConsoleSnapshot {
        ConsoleSnapshot {
            pending_rx: self.pending_rx.iter().copied().collect(),
            dropped_rx: self.dropped_rx,
        }
    }

    /// Puts back state saved by [`Console::snapshot`]; refuses more pending
    /// input than a running console ever holds.
    pub fn restore(&mut self, s: &ConsoleSnapshot) -> Result<(), String> {
        if s.pending_rx.len() > MAX_PENDING_RX {
            return Err(format!(
                "{} bytes of pending console input, at most {MAX_PENDING_RX}",
                s.pending_rx.len()
            ));
        }
        self.pending_rx = s.pending_rx.iter().copied().collect();
        self.dropped_rx = s.dropped_rx;
        Ok(())
    }

    /// Creates a console writing guest output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            pending_rx: VecDeque::new(),
            dropped_rx: 0,
        }
    }

    /// Queues host input for the guest (call `process_queue(RX_QUEUE)` after).
    pub fn queue_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.pending_rx.len() >= MAX_PENDING_RX {
                self.pending_rx.pop_front();
                self.dropped_rx += 1;
            }
            self.pending_rx.push_back(b);
        }
    }

    /// Bytes waiting for guest receive buffers.
    pub fn pending_input(&self) -> usize {
        self.pending_rx.len()
    }

    fn transmit(&mut self, q: &mut Queue, mem: &GuestMem) -> Result<bool, VirtioError> {
        let mut used = false;
        while let Some(chain) = pop_chain(q, mem)? {
            let head = chain.head_index();
            let bufs = validate_chain(chain, false, MAX_TX_CHAIN)
                .map_err(|kind| VirtioError::Chain { head, kind })?;
            for b in bufs {
                let mut data = vec![0u8; b.len as usize];
                mem.read_slice(&mut data, b.addr)
                    .map_err(|e| VirtioError::Queue(e.to_string()))?;
                // Host output errors (peer gone) drop data but keep the guest going.
                let _ = self.out.write_all(&data);
            }
            let _ = self.out.flush();
            add_used(q, mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn receive(&mut self, q: &mut Queue, mem: &GuestMem) -> Result<bool, VirtioError> {
        let mut used = false;
        while !self.pending_rx.is_empty() {
            let Some(chain) = pop_chain(q, mem)? else {
                break;
            };
            let head = chain.head_index();
            let bufs = validate_chain(chain, true, MAX_RX_CHAIN)
                .map_err(|kind| VirtioError::Chain { head, kind })?;
            let mut written: u32 = 0;
            for b in bufs {
                let n = (b.len as usize).min(self.pending_rx.len());
                if n == 0 {
                    break;
                }
                let chunk: Vec<u8> = self.pending_rx.drain(..n).collect();
                mem.write_slice(&chunk, GuestAddress(b.addr.0))
                    .map_err(|e| VirtioError::Queue(e.to_string()))?;
                written += n as u32;
            }
            add_used(q, mem, head, written)?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No feature that gives the config space meaning (SIZE, MULTIPORT,
        // EMERG_WRITE) is offered: cols, rows, max_nr_ports, emerg_wr read 0.
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        idx: usize,
        queues: &mut [Queue],
        mem: &GuestMem,
    ) -> Result<bool, VirtioError> {
        let q = queues
            .get_mut(idx)
            .ok_or_else(|| VirtioError::Queue(format!("no queue {idx}")))?;
        match idx {
            RX_QUEUE => self.receive(q, mem),
            TX_QUEUE => self.transmit(q, mem),
            _ => Ok(false),
        }
    }

    fn reset(&mut self) {
        // Host input survives a driver reset; it is delivered once the
        // driver sets DRIVER_OK again.
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::devices::serial::SharedBuffer;
    use crate::memory::create_guest_memory;

    fn queues(rx: &TestQueue, tx: &TestQueue) -> Vec<Queue> {
        vec![rx.queue(QUEUE_SIZE), tx.queue(QUEUE_SIZE)]
    }

    #[test]
    fn transmit_writes_guest_bytes_to_host() {
        let mem = create_guest_memory(16).unwrap();
        let out = SharedBuffer::default();
        let mut c = Console::new(Box::new(out.clone()));
        let rx = TestQueue::new(0x10000, 8);
        let mut tx = TestQueue::new(0x20000, 8);
        mem.write_slice(b"hello ", GuestAddress(0x100000)).unwrap();
        mem.write_slice(b"world\n", GuestAddress(0x100100)).unwrap();
        tx.set_desc(&mem, 0, 0x100000, 6, F_NEXT, 1);
        tx.set_desc(&mem, 1, 0x100100, 6, 0, 0);
        tx.push_avail(&mem, 0);
        let mut qs = queues(&rx, &tx);
        assert!(c.process_queue(TX_QUEUE, &mut qs, &mem).unwrap());
        assert_eq!(out.contents(), "hello world\n");
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(tx.used_elem(&mem, 0), (0, 0));
    }

    #[test]
    fn receive_fills_buffers_and_keeps_the_rest() {
        let mem = create_guest_memory(16).unwrap();
        let mut c = Console::new(Box::new(std::io::sink()));
        let mut rx = TestQueue::new(0x10000, 8);
        let tx = TestQueue::new(0x20000, 8);
        let mut qs = queues(&rx, &tx);
        c.queue_input(b"0123456789");
        // No buffers yet: nothing happens, input stays pending.
        assert!(!c.process_queue(RX_QUEUE, &mut qs, &mem).unwrap());
        assert_eq!(c.pending_input(), 10);
        rx.set_desc(&mem, 0, 0x100000, 4, F_WRITE, 0);
        rx.push_avail(&mem, 0);
        assert!(c.process_queue(RX_QUEUE, &mut qs, &mem).unwrap());
        assert_eq!(rx.used_elem(&mem, 0), (0, 4));
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x100000)).unwrap();
        assert_eq!(&got, b"0123");
        assert_eq!(c.pending_input(), 6);
    }

    #[test]
    fn readable_buffer_on_receive_queue_is_an_error() {
        let mem = create_guest_memory(16).unwrap();
        let mut c = Console::new(Box::new(std::io::sink()));
        let mut rx = TestQueue::new(0x10000, 8);
        let tx = TestQueue::new(0x20000, 8);
        rx.set_desc(&mem, 0, 0x100000, 4, 0, 0);
        rx.push_avail(&mem, 0);
        let mut qs = queues(&rx, &tx);
        c.queue_input(b"x");
        assert_eq!(
            c.process_queue(RX_QUEUE, &mut qs, &mem),
            Err(VirtioError::Chain {
                head: 0,
                kind: ChainError::WrongDirection(false)
            })
        );
    }

    #[test]
    fn snapshot_round_trip_and_bounds() {
        let mut c = Console::new(Box::new(std::io::sink()));
        c.queue_input(b"left over");
        let s = c.snapshot();
        let mut r = Console::new(Box::new(std::io::sink()));
        r.restore(&s).unwrap();
        assert_eq!(r.pending_input(), 9);
        assert_eq!(r.snapshot(), s);
        let big = ConsoleSnapshot {
            pending_rx: vec![0; MAX_PENDING_RX + 1],
            dropped_rx: 0,
        };
        assert!(r.restore(&big).is_err());
        assert_eq!(r.pending_input(), 9);
    }

    #[test]
    fn pending_input_is_bounded() {
        let mut c = Console::new(Box::new(std::io::sink()));
        c.queue_input(&vec![1u8; MAX_PENDING_RX + 10]);
        assert_eq!(c.pending_input(), MAX_PENDING_RX);
        assert_eq!(c.dropped_rx, 10);
        let mut cfg = [0xffu8; 4];
        c.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 4]);
    }
}

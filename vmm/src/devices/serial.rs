//! 16550A UART at COM1 (0x3f8, IRQ 4), built on `vm-superio`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports of a UART.
pub const UART_PORT_LEN: u64 = 8;
/// COM1 interrupt line (ISA IRQ / GSI).
pub const COM1_IRQ: u32 = 4;

/// Interrupt trigger backed by an eventfd registered as a KVM irqfd.
#[derive(Clone)]
pub struct EventFdTrigger(pub Arc<EventFd>);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// In-memory sink for guest output, shared with whoever wants to read it.
#[derive(Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// Snapshot of everything written so far, lossily decoded.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&super::lock(&self.0)).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        super::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writer that flushes after every write so output is visible immediately.
struct Flushing(Box<dyn Write + Send>);

impl Write for Flushing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Port-I/O front end of the UART.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, NoEvents, Flushing>,
}

/// Saved UART registers and receive FIFO: vm-superio's [`SerialState`],
/// mirrored because that type has no serde support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most the FIFO size).
    pub in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// Creates a UART that raises `irq` and writes transmitted bytes to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Serial::new(irq, Flushing(out)),
        }
    }

    /// Rebuilds a UART from a snapshot; the FIFO length is checked (the
    /// snapshot is untrusted). A pending interrupt is raised again.
    pub fn from_snapshot(
        irq: EventFdTrigger,
        out: Box<dyn Write + Send>,
        s: &SerialSnapshot,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let inner = Serial::from_state(&state, irq, NoEvents, Flushing(out))
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(Self { inner })
    }

    /// The UART's registers and FIFO, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues bytes for the guest to read (RX).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.inner.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // An output error (closed stdout, full disk) must not stop the guest.
            let _ = self.inner.write(off, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSR: u64 = 5;
    const LSR_THR_EMPTY: u8 = 0x20;
    const LSR_DATA_READY: u8 = 0x01;

    fn dev() -> (SerialDevice, SharedBuffer, Arc<EventFd>) {
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let buf = SharedBuffer::default();
        let d = SerialDevice::new(EventFdTrigger(evt.clone()), Box::new(buf.clone()));
        (d, buf, evt)
    }

    #[test]
    fn transmits_bytes() {
        let (mut d, buf, _) = dev();
        for b in b"hi\n" {
            d.write(0, &[*b]);
        }
        assert_eq!(buf.contents(), "hi\n");
        let mut lsr = [0u8];
        d.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn receives_bytes_and_interrupts() {
        let (mut d, _, evt) = dev();
        d.write(1, &[0x01]); // IER: received data available interrupt
        assert_eq!(d.enqueue_input(b"x"), 1);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0u8];
        d.read(LSR, &mut b);
        assert_ne!(b[0] & LSR_DATA_READY, 0);
        d.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn enabling_thre_interrupt_raises_it_at_once() {
        // Linux's 8250 driver starts a user-space write by enabling THRI in
        // IER and waits for the interrupt: an idle UART must assert it then.
        const IER: u64 = 1;
        const IIR: u64 = 2;
        const IER_THRI: u8 = 0x02;
        const IIR_THRI: u8 = 0x02;
        let (mut d, _, evt) = dev();
        d.write(IER, &[IER_THRI]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut iir = [0u8];
        d.read(IIR, &mut iir);
        assert_eq!(iir[0] & 0x0f, IIR_THRI, "IIR {:#x}", iir[0]);
        // Each byte written re-asserts it once the previous one was seen.
        d.write(0, b"x");
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn snapshot_round_trip_keeps_registers_and_fifo() {
        let (mut d, _, _) = dev();
        d.write(3, &[0x83]); // LCR: DLAB
        d.write(0, &[0x0c]); // divisor low
        d.write(3, &[0x03]); // 8N1
        d.write(7, &[0x5a]); // scratch
        d.enqueue_input(b"ab");
        let snap = d.snapshot();
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut r =
            SerialDevice::from_snapshot(EventFdTrigger(evt), Box::new(std::io::sink()), &snap)
                .unwrap();
        assert_eq!(r.snapshot(), snap);
        let mut b = [0u8];
        r.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        r.read(0, &mut b);
        assert_eq!(b[0], b'a');
        let mut big = snap.clone();
        big.in_buffer = vec![0; 65];
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert!(
            SerialDevice::from_snapshot(EventFdTrigger(evt), Box::new(std::io::sink()), &big)
                .is_err()
        );
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut d, _, _) = dev();
        d.write(0x1_0000, &[1]);
        d.write(0, &[]);
        d.read(0, &mut []);
        let mut b = [0u8; 4];
        d.read(7, &mut b);
    }
}

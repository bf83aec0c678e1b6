//! The results channel: the virtio console `/dev/hvc0`, put in raw mode,
//! carrying one JSON message per line each way. Two processes write to it:
//! PID 1 (`progress`, timeouts, `done`) and the scenario's worker (steps),
//! one message at a time (see [`Channel::send`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arena_protocol::{GuestMessage, HostMessage, LineReader};

use crate::counters;
use crate::log::log;

/// Device node of the first virtio console port.
const HVC: &str = "/dev/hvc0";
/// Drivers the results channel needs, with what they are.
const REQUIRED_DRIVERS: &[(&str, &str)] = &[
    (
        "/sys/bus/platform/drivers/virtio-mmio",
        "virtio-mmio transport (VIRTIO_MMIO)",
    ),
    (
        "/sys/bus/virtio/drivers/virtio_console",
        "virtio console (VIRTIO_CONSOLE)",
    ),
];
/// How long the port may take to appear after the virtio driver loads.
const HVC_WAIT: Duration = Duration::from_secs(20);

/// Both directions of the results channel.
pub struct Channel {
    writer: Mutex<File>,
    reader: Mutex<LineReader<File>>,
    /// The reader's descriptor, polled by [`Channel::poll_receive`].
    reader_fd: i32,
}

impl Channel {
    /// Wait for `hvc0`, open it and switch it to raw mode. Fails at once
    /// when the kernel has no driver that could ever create it.
    pub fn open_hvc() -> std::io::Result<Channel> {
        for (driver, what) in REQUIRED_DRIVERS {
            if !std::path::Path::new(driver).exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("the kernel has no {what} driver ({driver} is missing)"),
                ));
            }
        }
        if !wait_for(HVC, HVC_WAIT) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{HVC} did not appear within {HVC_WAIT:?}"),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open(HVC)?;
        make_raw(&file)?;
        Ok(Channel::from_files(file.try_clone()?, file))
    }

    /// A channel that reads from `reader` and writes to `writer` (the tty's
    /// two handles; a pipe or socket in tests).
    pub fn from_files(reader: File, writer: File) -> Channel {
        Channel {
            reader_fd: reader.as_raw_fd(),
            reader: Mutex::new(LineReader::new(reader)),
            writer: Mutex::new(writer),
        }
    }

    /// Send one message as one line; a broken channel is logged, never
    /// fatal. PID 1 and the worker both send, so lines must not mix:
    /// - each process sends during its turn ([`counters::channel_turn`],
    ///   a lock in the page they share), taken after this process's own
    ///   mutex, so one message is written at a time across both;
    /// - the line goes out in one `write(2)` where the kernel allows: a
    ///   blocking tty write holds the tty's write lock for the whole call
    ///   (and a pipe write of up to `PIPE_BUF` bytes is atomic), so even a
    ///   writer that took the turn from a stuck holder cannot split a line
    ///   written whole. Only a write cut short (by a signal) continues in a
    ///   second call, still during the turn.
    ///
    /// The line is the framing's (`framing::write_message`: the JSON, then
    /// a newline), built whole before anything is written.
    pub fn send(&self, msg: &GuestMessage) {
        let mut line = match serde_json::to_vec(msg) {
            Ok(l) => l,
            Err(e) => {
                log(&format!("results channel: cannot encode a message: {e}"));
                return;
            }
        };
        line.push(b'\n');
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _turn = counters::channel_turn();
        if let Err(e) = write_whole(w.as_raw_fd(), &line) {
            log(&format!("results channel write failed: {e}"));
        }
    }

    /// Receive one host message; `None` on end of stream or garbage.
    pub fn receive(&self) -> Option<HostMessage> {
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        match r.next_message::<HostMessage>() {
            Ok(m) => m,
            Err(e) => {
                log(&format!("bad host message: {e}"));
                None
            }
        }
    }

    /// A host message if one is waiting to be read, else `None` at once:
    /// PID 1 checks for one while it supervises the worker (the host asks
    /// for a [`HostMessage::Diagnose`] when the scenario stalls). The host
    /// writes each message whole, so a readable channel holds a line.
    pub fn poll_receive(&self) -> Option<HostMessage> {
        let mut fds = libc::pollfd {
            fd: self.reader_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd; a zero timeout never blocks. The fd is
        // the reader's, which `self` keeps open.
        let n = unsafe { libc::poll(&mut fds, 1, 0) };
        if n <= 0 || fds.revents & libc::POLLIN == 0 {
            return None;
        }
        self.receive()
    }

    /// Wait until everything written has left the guest.
    pub fn drain(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.flush();
        // SAFETY: tcdrain takes no pointers; `w` stays locked and borrowed, so
        // its fd is open for the whole call.
        unsafe { libc::tcdrain(w.as_raw_fd()) };
    }
}

/// Wait for a device node to appear (devtmpfs creates it when the driver binds).
pub fn wait_for(path: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::path::Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Write all of `buf` to `fd`: one `write(2)` unless the kernel cuts it
/// short.
fn write_whole(fd: i32, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice of `buf.len()` initialised bytes;
        // the caller keeps `fd` open (it borrows the channel's File).
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn make_raw(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain data; the fd is an open tty.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

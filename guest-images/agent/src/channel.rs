//! The results channel: the virtio console `/dev/hvc0`, put in raw mode,
//! carrying one JSON message per line each way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use arena_protocol::framing::write_message;
use arena_protocol::{GuestMessage, HostMessage, LineReader};

use crate::boot;

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
        if !boot::wait_for(HVC, HVC_WAIT) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{HVC} did not appear within {HVC_WAIT:?}"),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open(HVC)?;
        make_raw(&file)?;
        Ok(Channel {
            reader: Mutex::new(LineReader::new(file.try_clone()?)),
            writer: Mutex::new(file),
        })
    }

    /// Send one message; a broken channel is logged, never fatal.
    pub fn send(&self, msg: &GuestMessage) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = write_message(&mut *w, msg) {
            boot::log(&format!("results channel write failed: {e}"));
        }
    }

    /// Receive one host message; `None` on end of stream or garbage.
    pub fn receive(&self) -> Option<HostMessage> {
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        match r.next_message::<HostMessage>() {
            Ok(m) => m,
            Err(e) => {
                boot::log(&format!("bad host message: {e}"));
                None
            }
        }
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

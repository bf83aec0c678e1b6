//! Host side of the virtio-console: a Unix stream socket (the VMM is the
//! client) bridged both ways with the device.
//!
//! Guest output is handed to a writer thread through a channel, so a vCPU
//! never blocks on the socket while holding the device lock; a reader
//! thread feeds socket input into the receive queue. Neither side can
//! therefore deadlock against a peer that writes before it reads. The
//! channel holds at most [`MAX_PENDING_TX`] bytes: past that (a peer that
//! stopped reading, a guest that writes without end) output is dropped and
//! counted instead of growing the VMM without bound.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::devices::lock;
use crate::error::Error;
use crate::virtio::console::RX_QUEUE;
use crate::virtio::ConsoleTransport;

/// How long pending guest output may take to drain at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Guest output bytes queued for the socket at most.
pub const MAX_PENDING_TX: usize = 16 << 20;

/// Bytes queued for the writer thread, and bytes dropped for lack of room.
#[derive(Debug, Default)]
pub struct TxCounters {
    /// Queued, not yet written to the socket.
    pub pending: AtomicUsize,
    /// Dropped because [`MAX_PENDING_TX`] bytes were already queued.
    pub dropped: AtomicU64,
}

/// `Write` end handed to the console device.
pub struct ChannelWriter {
    tx: Sender<Option<Vec<u8>>>,
    counters: Arc<TxCounters>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let c = &self.counters;
        if c.pending.load(Ordering::Relaxed) + buf.len() > MAX_PENDING_TX {
            c.dropped.fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Ok(buf.len());
        }
        c.pending.fetch_add(buf.len(), Ordering::Relaxed);
        // If the writer thread is gone the output is dropped, never fatal.
        let _ = self.tx.send(Some(buf.to_vec()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connected socket with its writer (and, once started, reader) thread.
pub struct SocketBridge {
    stream: UnixStream,
    tx: Sender<Option<Vec<u8>>>,
    /// Output queued and dropped (see [`MAX_PENDING_TX`]).
    pub counters: Arc<TxCounters>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl SocketBridge {
    /// Connects to `path`; returns the bridge and the device's output end.
    pub fn connect(path: &Path) -> Result<(Self, ChannelWriter), Error> {
        let io = |what: &str, e| Error::Io(format!("{what} {}", path.display()), e);
        let stream = UnixStream::connect(path).map_err(|e| io("connect", e))?;
        let mut out = stream.try_clone().map_err(|e| io("clone", e))?;
        let (tx, rx) = channel::<Option<Vec<u8>>>();
        let counters = Arc::new(TxCounters::default());
        let written = counters.clone();
        let writer = std::thread::Builder::new()
            .name("console-tx".into())
            .spawn(move || {
                while let Ok(Some(chunk)) = rx.recv() {
                    let ok = out.write_all(&chunk).is_ok();
                    written.pending.fetch_sub(chunk.len(), Ordering::Relaxed);
                    if !ok {
                        break;
                    }
                }
            })
            .map_err(|e| io("spawn writer for", e))?;
        let bridge = Self {
            stream,
            tx: tx.clone(),
            counters: counters.clone(),
            writer: Some(writer),
            reader: None,
        };
        Ok((bridge, ChannelWriter { tx, counters }))
    }

    /// Starts copying socket input into the console's receive queue.
    pub fn start_reader(&mut self, console: ConsoleTransport) -> Result<(), Error> {
        let mut stream = self
            .stream
            .try_clone()
            .map_err(|e| Error::Io("clone console socket".into(), e))?;
        let h = std::thread::Builder::new()
            .name("console-rx".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut t = lock(&console);
                            t.device_mut().queue_input(&buf[..n]);
                            t.process_queue(RX_QUEUE);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| Error::Io("spawn console reader".into(), e))?;
        self.reader = Some(h);
        Ok(())
    }

    /// Drains pending output (bounded by a timeout), closes the socket and
    /// joins both threads. Idempotent.
    pub fn stop(&mut self) {
        let _ = self.tx.send(None);
        if let Some(w) = &self.writer {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for h in [self.writer.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

impl Drop for SocketBridge {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn output_is_forwarded_and_stop_joins_threads() {
        let p = std::env::temp_dir().join(format!("vmm-bridge-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        let (mut bridge, mut w) = SocketBridge::connect(&p).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        w.write_all(b"abc").unwrap();
        bridge.stop();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
        // Writing after stop is harmless.
        w.write_all(b"late").unwrap();
        bridge.stop();
        let _ = std::fs::remove_file(&p);
        assert!(SocketBridge::connect(&p).is_err());
    }

    #[test]
    fn output_to_a_peer_that_does_not_read_is_bounded() {
        let p = std::env::temp_dir().join(format!("vmm-bridge-full-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).unwrap();
        let (mut bridge, mut w) = SocketBridge::connect(&p).unwrap();
        let (_peer, _) = l.accept().unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            w.write_all(&chunk).unwrap();
        }
        let c = bridge.counters.clone();
        assert!(c.pending.load(Ordering::Relaxed) <= MAX_PENDING_TX);
        // 64 MiB offered, at most 16 MiB queued plus what the socket buffers.
        assert!(c.dropped.load(Ordering::Relaxed) >= 40 << 20);
        bridge.stop();
        let _ = std::fs::remove_file(&p);
    }
}

//! The fuzz targets. Each takes raw bytes, drives one component with them
//! and panics when the component panics or breaks an invariant; the harness
//! turns a panic into a saved reproducer.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arena_protocol::framing::LineReader;
use arena_protocol::{GuestMessage, HostMessage, Scenario};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::BusDevice;
use vmm::memory::GuestMem;
use vmm::virtio::console::{Console, MAX_PENDING_RX, QUEUE_SIZE};
use vmm::virtio::mmio::{reg, MmioTransport, MMIO_MAGIC};
use vmm::virtio::*;
use vmm_sys_util::eventfd::EventFd;

use crate::{scenario_file, splat};

/// One fuzz target.
pub struct Target {
    /// Name on the command line and corpus directory name.
    pub name: &'static str,
    /// Runs one input; panics on a bug. Returns whether the input got deep
    /// (parsed, loaded, device brought up): the share of such inputs shows
    /// the mutation is not just producing rejects.
    pub run: fn(&[u8]) -> bool,
    /// Tokens the mutator inserts.
    pub dict: &'static [&'static [u8]],
    /// Inputs are cut to this length.
    pub max_len: usize,
}

/// Every target, in the order `all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "virtio_mmio",
        run: virtio_mmio,
        dict: &[],
        max_len: 4096,
    },
    Target {
        name: "console",
        run: console,
        dict: &[],
        max_len: 4096,
    },
    Target {
        name: "framing",
        run: framing,
        dict: FRAMING_DICT,
        max_len: 16384,
    },
    Target {
        name: "splat",
        run: splat_target,
        dict: SPLAT_DICT,
        max_len: 16384,
    },
    Target {
        name: "scenario_yaml",
        run: scenario_yaml,
        dict: YAML_DICT,
        max_len: 16384,
    },
    Target {
        name: "loader",
        run: loader,
        dict: LOADER_DICT,
        max_len: 64 << 10,
    },
];

/// Looks a target up by name.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Reads integers off the front of the input; zero once it runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn u64n(&mut self, n: usize) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(n);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }
    fn u8(&mut self) -> u8 {
        self.u64n(1) as u8
    }
    fn u16(&mut self) -> u16 {
        self.u64n(2) as u16
    }
    fn u32(&mut self) -> u32 {
        self.u64n(4) as u32
    }
    fn u64(&mut self) -> u64 {
        self.u64n(8)
    }
}

/// Guest RAM of the device targets: 1 MiB at 0, fresh per input (pages are
/// allocated lazily, so this is cheap and every run starts from zeroes).
const RAM: u64 = 1 << 20;

fn small_memory() -> Arc<GuestMem> {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])
            .expect("1 MiB of anonymous memory"),
    )
}

/// A guest address: mostly inside RAM, sometimes anywhere (hostile).
fn addr(inp: &mut Input) -> u64 {
    match inp.u8() % 8 {
        0 => inp.u64(),
        1 => RAM - u64::from(inp.u8()),
        _ => u64::from(inp.u32()) % RAM,
    }
}

/// A buffer length: mostly small, sometimes huge.
fn length(inp: &mut Input) -> u32 {
    match inp.u8() % 8 {
        0 => inp.u32(),
        1 => 1 << (inp.u8() % 32),
        _ => u32::from(inp.u16() % 512),
    }
}

/// Where the fuzz "driver" put each queue (desc, avail, used, size).
#[derive(Default, Clone, Copy)]
struct QueueLayout {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_avail: u16,
}

impl QueueLayout {
    fn random(inp: &mut Input) -> Self {
        let size = match inp.u8() % 6 {
            0 => inp.u16(),
            1 => QUEUE_SIZE,
            n => 1 << (n + 1),
        };
        // 16-byte aligned within RAM, so the rings are usually valid.
        let mut a = || {
            if inp.u8() & 15 == 0 {
                inp.u64()
            } else {
                (u64::from(inp.u32()) % RAM) & !0xf
            }
        };
        QueueLayout {
            desc: a(),
            avail: a(),
            used: a(),
            size,
            next_avail: 0,
        }
    }

    fn set_desc(&self, mem: &GuestMem, inp: &mut Input) {
        let i = u64::from(inp.u16() % self.size.clamp(1, 512));
        let a = self.desc.wrapping_add(16 * i);
        let (buf, len, flags, next) = (addr(inp), length(inp), inp.u8() & 7, inp.u16() % 300);
        // Writes outside RAM fail: a hostile layout, nothing to check.
        let _ = mem.write_obj(buf, GuestAddress(a));
        let _ = mem.write_obj(len, GuestAddress(a.wrapping_add(8)));
        let _ = mem.write_obj(u16::from(flags), GuestAddress(a.wrapping_add(12)));
        let _ = mem.write_obj(next, GuestAddress(a.wrapping_add(14)));
    }

    fn push_avail(&mut self, mem: &GuestMem, head: u16, bump: u16) {
        let slot = u64::from(self.next_avail % self.size.max(1));
        let _ = mem.write_obj(head, GuestAddress(self.avail.wrapping_add(4 + 2 * slot)));
        self.next_avail = self.next_avail.wrapping_add(bump);
        let _ = mem.write_obj(self.next_avail, GuestAddress(self.avail.wrapping_add(2)));
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("valid max size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }
}

/// Writes a fuzzed descriptor into one of the two queues' tables.
fn fuzz_desc(layouts: &mut [QueueLayout; 2], mem: &GuestMem, inp: &mut Input) {
    let q = usize::from(inp.u8() & 1);
    layouts[q].set_desc(mem, inp);
}

/// Offers a fuzzed head (and avail index step) on one of the two queues;
/// returns which.
fn fuzz_avail(layouts: &mut [QueueLayout; 2], mem: &GuestMem, inp: &mut Input) -> usize {
    let q = usize::from(inp.u8() & 1);
    let head = inp.u16() % 300;
    let bump = if inp.u8() & 7 == 0 { inp.u16() } else { 1 };
    layouts[q].push_avail(mem, head, bump);
    q
}

const REGS: &[u64] = &[
    reg::STATUS,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_AVAIL_LOW,
    reg::QUEUE_AVAIL_HIGH,
    reg::QUEUE_USED_LOW,
    reg::QUEUE_USED_HIGH,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::DEVICE_FEATURES_SEL,
    reg::INTERRUPT_ACK,
    reg::CONFIG,
];

fn mmio_w(t: &mut MmioTransport<Console>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Register read/write sequences and descriptor tables against the
/// virtio-mmio transport with the console behind it.
fn virtio_mmio(data: &[u8]) -> bool {
    let mem = small_memory();
    let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Console::new(Box::new(std::io::sink())), mem.clone(), irq);
    let mut layouts = [QueueLayout::default(); 2];
    let mut inp = Input { data };
    let mut steps = 0;
    let mut live = false;
    while !inp.done() && steps < 2000 {
        steps += 1;
        match inp.u8() % 10 {
            0 | 1 => {
                let b = inp.u8();
                let off = if b & 0x80 != 0 {
                    REGS[usize::from(b) % REGS.len()]
                } else {
                    u64::from(inp.u16() % 0x240)
                };
                let v = inp.u32();
                let len = [4usize, 4, 1, 2, 8, 3][usize::from(b >> 4) % 6];
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&v.to_le_bytes());
                t.write(off, &bytes[..len]);
            }
            2 => {
                let off = u64::from(inp.u16() % 0x240);
                let mut b = vec![0u8; [4usize, 1, 2, 8][usize::from(inp.u8()) % 4]];
                t.read(off, &mut b);
            }
            3 => {
                let a = addr(&mut inp);
                let v = inp.u64();
                let _ = mem.write_obj(v, GuestAddress(a));
            }
            4 => {
                // A proper bring-up with fuzzed queue layouts.
                mmio_w(&mut t, reg::STATUS, 0);
                mmio_w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE);
                mmio_w(&mut t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                mmio_w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
                mmio_w(&mut t, reg::DRIVER_FEATURES, 1);
                let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
                mmio_w(&mut t, reg::STATUS, ok);
                for (q, l) in layouts.iter_mut().enumerate() {
                    *l = QueueLayout::random(&mut inp);
                    mmio_w(&mut t, reg::QUEUE_SEL, q as u32);
                    mmio_w(&mut t, reg::QUEUE_NUM, u32::from(l.size));
                    for (lo, a) in [
                        (reg::QUEUE_DESC_LOW, l.desc),
                        (reg::QUEUE_AVAIL_LOW, l.avail),
                        (reg::QUEUE_USED_LOW, l.used),
                    ] {
                        mmio_w(&mut t, lo, a as u32);
                        mmio_w(&mut t, lo + 4, (a >> 32) as u32);
                    }
                    mmio_w(&mut t, reg::QUEUE_READY, 1);
                }
                mmio_w(&mut t, reg::STATUS, ok | STATUS_DRIVER_OK);
            }
            5 => fuzz_desc(&mut layouts, &mem, &mut inp),
            6 => {
                let q = fuzz_avail(&mut layouts, &mem, &mut inp);
                mmio_w(&mut t, reg::QUEUE_NOTIFY, q as u32);
            }
            7 => mmio_w(&mut t, reg::QUEUE_NOTIFY, u32::from(inp.u8() % 4)),
            8 => {
                let n = usize::from(inp.u8());
                let bytes = inp.bytes(n);
                t.device_mut().queue_input(bytes);
                t.process_queue(0);
            }
            _ => {
                // Reset in the middle of whatever is going on.
                mmio_w(&mut t, reg::STATUS, 0);
            }
        }
        let s = t.status();
        assert!(
            s & STATUS_DRIVER_OK == 0 || s & STATUS_FEATURES_OK != 0,
            "DRIVER_OK without FEATURES_OK: {s:#x}"
        );
        assert_eq!(
            s & STATUS_NEEDS_RESET != 0,
            t.last_error.is_some(),
            "NEEDS_RESET and last_error disagree"
        );
        assert!(t.device_mut().pending_input() <= MAX_PENDING_RX);
        live |= s & STATUS_DRIVER_OK != 0 && s & STATUS_NEEDS_RESET == 0;
    }
    let mut m = [0u8; 4];
    t.read(reg::MAGIC, &mut m);
    assert_eq!(u32::from_le_bytes(m), MMIO_MAGIC);
    live
}

/// The console device on its own, with hostile queues and chains.
fn console(data: &[u8]) -> bool {
    let mem = small_memory();
    let mut c = Console::new(Box::new(std::io::sink()));
    let mut inp = Input { data };
    let mut layouts = [QueueLayout::random(&mut inp), QueueLayout::random(&mut inp)];
    let mut queues = vec![layouts[0].queue(), layouts[1].queue()];
    let mut steps = 0;
    let mut used = false;
    while !inp.done() && steps < 2000 {
        steps += 1;
        match inp.u8() % 6 {
            0 => fuzz_desc(&mut layouts, &mem, &mut inp),
            1 => {
                fuzz_avail(&mut layouts, &mem, &mut inp);
            }
            2 => {
                let idx = usize::from(inp.u8() % 3);
                let r = c.process_queue(idx, &mut queues, &mem);
                used |= r == Ok(true);
                if let Err(e) = r {
                    // Display must work for every error; a broken queue stays
                    // broken until the (simulated) driver resets it.
                    let _ = e.to_string();
                    c.reset();
                    let q = usize::from(inp.u8() & 1);
                    layouts[q] = QueueLayout::random(&mut inp);
                    queues[q] = layouts[q].queue();
                }
            }
            3 => {
                let n = usize::from(inp.u16() % 2048);
                let bytes = inp.bytes(n);
                c.queue_input(bytes);
            }
            4 => {
                let a = addr(&mut inp);
                let v = inp.u64();
                let _ = mem.write_obj(v, GuestAddress(a));
            }
            _ => {
                let mut cfg = [0xa5u8; 8];
                c.read_config(u64::from(inp.u16()), &mut cfg[..usize::from(inp.u8() % 9)]);
            }
        }
        assert!(c.pending_input() <= MAX_PENDING_RX);
    }
    used
}

/// Hands out the input in chunks of varying size, like a socket does.
struct Chunks<'a> {
    data: &'a [u8],
    seed: u32,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let want = 1 + (self.seed >> 16) as usize % 700;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// LineReader against a model of it (split on `\n`, drop `\r` and NUL),
/// then message decoding, with a round trip for what decodes.
fn framing(data: &[u8]) -> bool {
    let (seed, body) = match data.split_first() {
        Some((s, b)) => (u32::from(*s), b),
        None => (0, data),
    };
    let mut r = LineReader::new(Chunks { data: body, seed });
    let mut lines = Vec::new();
    while let Some(l) = r.next_line().expect("in-memory reads cannot fail") {
        lines.push(l);
    }
    let mut want: Vec<Vec<u8>> = body
        .split(|&b| b == b'\n')
        .map(|l| {
            l.iter()
                .copied()
                .filter(|&b| b != b'\r' && b != 0)
                .collect()
        })
        .collect();
    // The piece after the last newline is not a line (stream ended mid-line).
    want.pop();
    assert_eq!(lines, want, "LineReader disagrees with the line model");

    let mut r = LineReader::new(Chunks { data: body, seed });
    let mut decoded = false;
    loop {
        match r.next_message::<GuestMessage>() {
            Ok(Some(m)) => {
                decoded = true;
                let json = serde_json::to_string(&m).expect("a decoded message encodes");
                let back: GuestMessage = serde_json::from_str(&json).expect("round trip decodes");
                assert_eq!(back, m, "GuestMessage round trip changed the message");
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    for line in &want {
        if let Ok(m) = serde_json::from_slice::<HostMessage>(line) {
            let json = serde_json::to_string(&m).expect("a decoded message encodes");
            let _: HostMessage = serde_json::from_str(&json).expect("round trip decodes");
            decoded = true;
        }
    }
    decoded
}

/// The runner's splat detector on arbitrary console logs.
fn splat_target(data: &[u8]) -> bool {
    let log = String::from_utf8_lossy(data);
    let found = splat::detect(&log);
    let lines: Vec<&str> = log.lines().collect();
    let mut last = 0;
    for s in &found {
        assert!(
            s.line > last && s.line <= lines.len(),
            "bad line {}",
            s.line
        );
        last = s.line;
        assert!(s.title.chars().count() <= 300);
        assert!(
            lines[s.line - 1].contains(s.title.as_str()),
            "title is not from its line"
        );
    }
    !found.is_empty()
}

/// The runner's scenario loader (strict YAML + semantic checks); what loads
/// must survive a JSON round trip (that is how it reaches the guest).
fn scenario_yaml(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    match scenario_file::parse(Path::new("fuzz.yaml"), &text) {
        Ok(s) => {
            let json = serde_json::to_string(&s).expect("a loaded scenario encodes");
            let back: Scenario = serde_json::from_str(&json).expect("round trip decodes");
            assert_eq!(back, s, "Scenario JSON round trip changed it");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// Path of this process's loader scratch file (`load_kernel` takes a path).
fn scratch_path() -> std::path::PathBuf {
    // tmpfs when there is one: a disk-backed write per input halves the rate.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("arena-fuzz-loader-{}.img", std::process::id()))
}

/// Removes the loader's scratch file.
pub fn cleanup() {
    let _ = std::fs::remove_file(scratch_path());
}

/// `vmm::loader::load_kernel` on hostile ELF / bzImage files, then the boot
/// structures built from what it returned.
fn loader(data: &[u8]) -> bool {
    let path = scratch_path();
    std::fs::write(&path, data).expect("scratch file");
    // 16 MiB: the smallest VM; pages are only allocated where the loader writes.
    let mem = vmm::memory::create_guest_memory(16).expect("guest memory");
    if let Ok(k) = vmm::loader::load_kernel(&mem, &path) {
        let limit = vmm::loader::initrd_limit(&k);
        assert!(limit > 0);
        let _ = vmm::loader::write_zero_page(&mem, &k, 10, None, Some(0xe0000));
        return true;
    }
    false
}

const FRAMING_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"{\"type\":\"hello\",\"agent_version\":\"1\",\"kernel_release\":\"6\",\"kernel_version\":\"v\",\"jit_enabled\":1,\"cpus\":2,\"uptime_ms\":5}",
    b"{\"type\":\"done\",\"status\":\"pass\",\"reason\":\"\"}",
    b"{\"type\":\"log\",\"line\":\"x\"}",
    b"{\"type\":\"fatal\",\"reason\":\"r\"}",
    b"\"type\"",
    b"\"step_started\"",
    b"\"step_ended\"",
    b"\\u0000",
    b"\\ud800",
    b"18446744073709551616",
    b"-1",
    b"1e999",
    b"[",
    b"{",
    b"}",
    b"null",
];

const SPLAT_DICT: &[&[u8]] = &[
    b"BUG:",
    b"WARNING:",
    b"KASAN:",
    b"Oops:",
    b"Kernel panic - not syncing",
    b"[    1.234567] ",
    b"[",
    b"]",
    b"arena-agent:",
    b"\r\n",
    b"\n",
    "\u{00e9}\u{1f600}".as_bytes(),
    b"\xff\xfe",
];

const YAML_DICT: &[&[u8]] = &[
    b"name: x\n",
    b"arenas:\n",
    b"steps:\n",
    b"- touch:\n",
    b"pages: ",
    b"page: ",
    b"arena: ",
    b"count: ",
    b"18446744073709551615",
    b"4294967296",
    b"-1",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"{",
    b"[",
    b"  ",
    b"\n",
    b": ",
    b"~",
];

const LOADER_DICT: &[&[u8]] = &[
    b"\x7fELF",
    b"HdrS",
    b"\x55\xaa",
    b"Xen\0",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\x12\x00\x00\x00",
];

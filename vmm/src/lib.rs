//! arena lab's own small KVM virtual machine monitor.
//!
//! The boot flow, top to bottom ([`Vm::new`] then [`Vm::run`]); steps 1–5
//! are one function each in `builder.rs`:
//!
//! 1. open `/dev/kvm`, create the VM, the in-kernel irqchip (PIC + IOAPIC +
//!    LAPICs) and PIT, and set the TSS / identity-map addresses;
//! 2. create guest RAM ([`memory`]) and register it with KVM;
//! 3. load the kernel and initrd ([`loader`]), write the command line, the
//!    MP table and ACPI tables ([`arch::x86_64`]) and the boot parameters
//!    (zero page for bzImage, `hvm_start_info` for PVH);
//! 4. create the devices ([`devices`], [`virtio`]) on the port-I/O and MMIO
//!    buses, with interrupts delivered through irqfds;
//! 5. create and configure the vCPUs ([`vcpu`]); the boot vCPU gets the
//!    entry registers, the others wait for INIT/SIPI in the in-kernel LAPIC;
//! 6. run one thread per vCPU until the guest resets, powers off, faults,
//!    or the host-side timeout expires, and report the [`ExitReason`].

#![warn(missing_docs)]

pub mod arch;
pub mod bridge;
mod builder;
pub mod devices;
pub mod exit_stats;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod rss;
pub mod vcpu;
pub mod virtio;

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use arch::x86_64::ArchError;
use devices::serial::SharedBuffer;
use devices::{Bus, BusError};
use loader::LoadError;
use memory::{GuestMem, MemoryError};
use vcpu::{Vcpu, VcpuContext};
use virtio::console::Console;
use virtio::mmio::MmioTransport;

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
            addr: memory::VIRTIO_MMIO_BASE + u64::from(i) * memory::VIRTIO_MMIO_SLOT_SIZE,
            size: memory::VIRTIO_MMIO_SLOT_SIZE,
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

/// Default guest RAM in MiB.
pub const DEFAULT_MEM_MIB: u64 = 512;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;

/// Why the VM stopped. Maps 1:1 to `arena-vmm` exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset the machine (i8042 0xFE or KVM_SYSTEM_EVENT_RESET): clean.
    Reset,
    /// Guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN): clean.
    PowerOff,
    /// KVM_EXIT_SHUTDOWN: triple fault.
    TripleFault {
        /// vCPU that faulted.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR (e.g. an instruction the emulator lacks).
    InternalError {
        /// `kvm_run.internal.suberror` (1 = emulation failure).
        suberror: u32,
        /// vCPU that failed.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM_EXIT_FAIL_ENTRY: hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Physical CPU.
        cpu: u32,
    },
    /// Host-side timeout expired.
    Timeout,
    /// Any other exit the VMM cannot handle.
    Unexpected(String),
    /// KVM_RUN itself failed.
    VcpuError(String),
}

/// `arena-vmm` exit code: guest reset or powered off.
pub const EXIT_CLEAN: i32 = 0;
/// `arena-vmm` exit code: setup error (bad arguments, missing kernel, KVM failure).
pub const EXIT_SETUP_ERROR: i32 = 2;
/// `arena-vmm` exit code: triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 10;
/// `arena-vmm` exit code: KVM internal error.
pub const EXIT_INTERNAL_ERROR: i32 = 11;
/// `arena-vmm` exit code: VM entry failed.
pub const EXIT_FAIL_ENTRY: i32 = 12;
/// `arena-vmm` exit code: host-side timeout.
pub const EXIT_TIMEOUT: i32 = 13;
/// `arena-vmm` exit code: unexpected exit or KVM_RUN error.
pub const EXIT_UNEXPECTED: i32 = 14;

impl ExitReason {
    /// Process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => EXIT_CLEAN,
            ExitReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            ExitReason::InternalError { .. } => EXIT_INTERNAL_ERROR,
            ExitReason::FailEntry { .. } => EXIT_FAIL_ENTRY,
            ExitReason::Timeout => EXIT_TIMEOUT,
            ExitReason::Unexpected(_) | ExitReason::VcpuError(_) => EXIT_UNEXPECTED,
        }
    }

    /// True for a guest-requested reset or power-off.
    pub fn is_clean(&self) -> bool {
        self.exit_code() == EXIT_CLEAN
    }

    /// Fills in which vCPU and where, for fault reasons.
    pub fn with_location(self, id: u8, at: u64) -> Self {
        match self {
            ExitReason::TripleFault { .. } => ExitReason::TripleFault { vcpu: id, rip: at },
            ExitReason::InternalError { suberror, .. } => ExitReason::InternalError {
                suberror,
                vcpu: id,
                rip: at,
            },
            other => other,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset (clean exit)"),
            ExitReason::PowerOff => write!(f, "guest powered off (clean exit)"),
            ExitReason::TripleFault { vcpu, rip } => write!(
                f,
                "triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at rip {rip:#x}"
            ),
            ExitReason::InternalError {
                suberror,
                vcpu,
                rip,
            } => write!(
                f,
                "KVM_EXIT_INTERNAL_ERROR suberror {suberror} on vCPU {vcpu} at rip {rip:#x}"
            ),
            ExitReason::FailEntry { reason, cpu } => write!(
                f,
                "KVM_EXIT_FAIL_ENTRY hardware reason {reason:#x} on host CPU {cpu}"
            ),
            ExitReason::Timeout => write!(f, "host-side timeout"),
            ExitReason::Unexpected(s) => write!(f, "unexpected vCPU exit: {s}"),
            ExitReason::VcpuError(s) => write!(f, "vCPU error: {s}"),
        }
    }
}

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or boot parameters could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// CPU or platform table setup failed.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// Device registration failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A host resource (file, socket, eventfd, thread) failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Where the UART output goes.
#[derive(Clone)]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Kept in memory (tests, benchmarks).
    Buffer(SharedBuffer),
    /// Dropped.
    Sink,
}

/// What to build.
#[derive(Clone)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (PVH entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// UART output.
    pub serial: SerialOutput,
    /// Unix stream socket bridged to the virtio-console (client side).
    pub console_socket: Option<PathBuf>,
    /// Host-side timeout.
    pub timeout: Option<Duration>,
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            serial: SerialOutput::Sink,
            console_socket: None,
            timeout: None,
        }
    }
}

impl VmConfig {
    /// The `arena-vmm` command line describing this config: the one argv
    /// format, shared by the runner (which spawns `arena-vmm`) and the
    /// VMM's own parser ([`VmConfig::from_args`]), so the two cannot drift.
    /// Defaults are left out; `SerialOutput::Sink` and `Buffer` (in-process
    /// only) give no `--serial`, i.e. output dropped.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--kernel".into(), self.kernel.clone().into()];
        if let Some(i) = &self.initrd {
            a.extend(["--initrd".into(), i.clone().into()]);
        }
        if !self.cmdline.is_empty() {
            a.extend(["--cmdline".into(), self.cmdline.clone().into()]);
        }
        if self.vcpus != DEFAULT_VCPUS {
            a.extend(["--vcpus".into(), self.vcpus.to_string().into()]);
        }
        if self.mem_mib != DEFAULT_MEM_MIB {
            a.extend(["--mem-mib".into(), self.mem_mib.to_string().into()]);
        }
        match &self.serial {
            SerialOutput::Stdout => a.extend(["--serial".into(), "-".into()]),
            SerialOutput::File(p) => a.extend(["--serial".into(), p.clone().into()]),
            SerialOutput::Buffer(_) | SerialOutput::Sink => {}
        }
        if let Some(s) = &self.console_socket {
            a.extend(["--console-socket".into(), s.clone().into()]);
        }
        if let Some(t) = self.timeout {
            // Whole nanoseconds, so the round trip is exact.
            let s = format!("{}.{:09}", t.as_secs(), t.subsec_nanos());
            a.extend(["--timeout-s".into(), s.into()]);
        }
        a
    }

    /// Parses an `arena-vmm` command line (program name excluded); the
    /// inverse of [`VmConfig::to_args`]. Paths are taken as raw `OsStr`s.
    pub fn from_args<S: AsRef<OsStr>>(args: &[S]) -> Result<VmConfig, String> {
        let mut cfg = VmConfig::new("");
        let mut kernel = None;
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let flag = flag.to_string_lossy();
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let mut text = || {
                value()?
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{flag}: not UTF-8"))
            };
            match &*flag {
                "--kernel" => kernel = Some(PathBuf::from(value()?)),
                "--initrd" => cfg.initrd = Some(PathBuf::from(value()?)),
                "--cmdline" => cfg.cmdline = text()?,
                "--vcpus" => cfg.vcpus = text()?.parse().map_err(|e| format!("--vcpus: {e}"))?,
                "--mem-mib" => {
                    cfg.mem_mib = text()?.parse().map_err(|e| format!("--mem-mib: {e}"))?
                }
                "--serial" => {
                    let v = value()?;
                    cfg.serial = if v == "-" {
                        SerialOutput::Stdout
                    } else {
                        SerialOutput::File(v.into())
                    };
                }
                "--console-socket" => cfg.console_socket = Some(PathBuf::from(value()?)),
                "--timeout-s" => cfg.timeout = Some(parse_seconds(&text()?)?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        cfg.kernel = kernel.ok_or("--kernel is required")?;
        Ok(cfg)
    }
}

/// A positive number of seconds; `S.NNNNNNNNN` is read exactly (what
/// [`VmConfig::to_args`] writes), anything else through `f64`.
fn parse_seconds(v: &str) -> Result<Duration, String> {
    let exact = v.split_once('.').and_then(|(s, f)| {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        (digits(s) && digits(f) && f.len() <= 9).then(|| {
            let nanos: u32 = format!("{f:0<9}").parse().ok()?;
            Some(Duration::new(s.parse().ok()?, nanos))
        })?
    });
    let d = match exact {
        Some(d) => d,
        None => {
            let s: f64 = v.parse().map_err(|e| format!("--timeout-s: {e}"))?;
            if !(s > 0.0 && s.is_finite()) {
                return Err("--timeout-s must be positive".into());
            }
            Duration::try_from_secs_f64(s).map_err(|e| format!("--timeout-s: {e}"))?
        }
    };
    if d.is_zero() {
        return Err("--timeout-s must be positive".into());
    }
    Ok(d)
}

/// Measurements of one VM lifetime.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Why the VM stopped.
    pub exit: ExitReason,
    /// Time from the start of [`Vm::run`] until the boot vCPU entered the guest.
    pub time_to_first_entry: Option<Duration>,
    /// Total time spent in [`Vm::run`].
    pub run_time: Duration,
    /// When the boot vCPU first entered the guest.
    pub first_entry_at: Option<Instant>,
    /// Port-I/O and MMIO exits per device, all vCPUs.
    pub exits: exit_stats::ExitStats,
}

/// A fully built VM, ready to [`run`](Vm::run).
pub struct Vm {
    _kvm: Kvm,
    vm: VmFd,
    /// Guest RAM, mapped into the VM: dropped after `vm` (field order).
    _mem: Arc<GuestMem>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vcpus: Vec<Vcpu>,
    exit_tx: Sender<ExitReason>,
    exit_rx: Receiver<ExitReason>,
    timeout: Option<Duration>,
    irqfds: Vec<(Arc<EventFd>, u32)>,
    console: ConsoleTransport,
    console_bridge: Option<bridge::SocketBridge>,
}

impl Vm {
    /// The virtio-console transport (host side).
    pub fn console(&self) -> &ConsoleTransport {
        &self.console
    }

    /// Step 6: runs the vCPUs until the guest stops or the timeout expires.
    pub fn run(mut self) -> Result<RunReport, Error> {
        vcpu::install_kick_handler();
        let start = Instant::now();
        if let Some(b) = &mut self.console_bridge {
            b.start_reader(self.console.clone())?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let boot_started = Arc::new(std::sync::OnceLock::new());
        let stats = Arc::new(Mutex::new(exit_stats::ExitStats::default()));
        for v in self.vcpus.drain(..) {
            let started = if v.id == 0 {
                boot_started.clone()
            } else {
                Arc::new(std::sync::OnceLock::new())
            };
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit_tx: self.exit_tx.clone(),
                stop: stop.clone(),
                started,
                stats: stats.clone(),
            };
            let id = v.id;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let tx = ctx.exit_tx.clone();
                    // A bug in an exit handler must end the VM, not hang it.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.run(ctx)));
                    if r.is_err() {
                        let _ =
                            tx.send(ExitReason::VcpuError(format!("vCPU {id} thread panicked")));
                    }
                })
                .map_err(|e| Error::Io("spawn vCPU thread".into(), e))?;
            threads.push(h);
        }
        let deadline = self.timeout.map(|t| start + t);
        let exit = loop {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left,
                    None => break ExitReason::Timeout,
                },
                None => Duration::from_secs(3600),
            };
            match self.exit_rx.recv_timeout(wait) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break ExitReason::VcpuError("all vCPU threads ended".into())
                }
            }
        };
        stop.store(true, Ordering::Release);
        for h in threads {
            while !h.is_finished() {
                let _ = h.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
        if let Some(b) = &mut self.console_bridge {
            b.stop();
        }
        let exits = std::mem::take(&mut *devices::lock(&stats));
        Ok(RunReport {
            exit,
            time_to_first_entry: boot_started.get().map(|t| t.duration_since(start)),
            run_time: start.elapsed(),
            first_entry_at: boot_started.get().copied(),
            exits,
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for (fd, gsi) in &self.irqfds {
            let _ = self.vm.unregister_irqfd(fd, *gsi);
        }
    }
}

fn new_eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io("eventfd".into(), e))
}

fn serial_writer(out: &SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::Io(p.display().to_string(), e))?,
        ),
        SerialOutput::Buffer(b) => Box::new(b.clone()),
        SerialOutput::Sink => Box::new(std::io::sink()),
    })
}

/// Builds and runs a VM in one call.
pub fn run_vm(cfg: &VmConfig) -> Result<RunReport, Error> {
    Vm::new(cfg)?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_full_command_line() {
        let c = VmConfig::from_args(&args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--vcpus",
            "2",
            "--mem-mib",
            "256",
            "--serial",
            "-",
            "--console-socket",
            "/s",
            "--timeout-s",
            "1.5",
        ]))
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert!(matches!(c.serial, SerialOutput::Stdout));
        assert_eq!(c.console_socket, Some(PathBuf::from("/s")));
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_arguments() {
        let parse = |a: &[&str]| VmConfig::from_args(&args(a));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kernel"]).is_err());
        assert!(parse(&["--kernel", "/k", "--vcpus", "x"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "-1"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "0.000000000"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "1e300"]).is_err());
        assert!(parse(&["--kernel", "/k", "--bogus"]).is_err());
        let c = parse(&["--kernel", "/k", "--serial", "/tmp/out"]).unwrap();
        assert!(matches!(c.serial, SerialOutput::File(_)));
    }

    /// `to_args` then `from_args` gives the same config back, for defaults
    /// and for every field set (paths with spaces and non-UTF-8 bytes too).
    #[test]
    fn args_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        fn same(a: &VmConfig, b: &VmConfig) -> bool {
            let serial = |s: &SerialOutput| match s {
                SerialOutput::Stdout => "-".into(),
                SerialOutput::File(p) => p.display().to_string(),
                _ => String::new(),
            };
            a.kernel == b.kernel
                && a.initrd == b.initrd
                && a.cmdline == b.cmdline
                && a.vcpus == b.vcpus
                && a.mem_mib == b.mem_mib
                && serial(&a.serial) == serial(&b.serial)
                && a.console_socket == b.console_socket
                && a.timeout == b.timeout
        }
        let plain = VmConfig::new("/boot/vmlinux");
        assert_eq!(plain.to_args(), ["--kernel", "/boot/vmlinux"]);
        let mut full = VmConfig::new(OsStr::from_bytes(b"/odd dir/k\xff"));
        full.initrd = Some("/i n/initrd.cpio".into());
        full.cmdline = "loglevel=5 console=ttyS0 arena.x=\"a b\"".into();
        full.vcpus = 4;
        full.mem_mib = 1024;
        full.serial = SerialOutput::File("/r/console.log".into());
        full.console_socket = Some("/r/chan.sock".into());
        full.timeout = Some(Duration::new(7, 123_456_789));
        let mut stdout = plain.clone();
        stdout.serial = SerialOutput::Stdout;
        stdout.timeout = Some(Duration::from_millis(1));
        for c in [plain, full, stdout] {
            let back = VmConfig::from_args(&c.to_args()).unwrap();
            assert!(same(&c, &back), "{:?} did not round-trip", c.to_args());
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let reasons = [
            ExitReason::Reset,
            ExitReason::TripleFault { vcpu: 0, rip: 0 },
            ExitReason::InternalError {
                suberror: 1,
                vcpu: 0,
                rip: 0,
            },
            ExitReason::FailEntry { reason: 0, cpu: 0 },
            ExitReason::Timeout,
            ExitReason::Unexpected(String::new()),
        ];
        let mut codes: Vec<i32> = reasons.iter().map(|r| r.exit_code()).collect();
        codes.push(EXIT_SETUP_ERROR);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(ExitReason::PowerOff.is_clean());
        assert!(ExitReason::Timeout.to_string().contains("timeout"));
    }

    #[test]
    fn virtio_slots_and_cmdline_param() {
        let s0 = VirtioSlot::nth(0);
        let s1 = VirtioSlot::nth(1);
        assert_eq!(s0.addr, memory::VIRTIO_MMIO_BASE);
        assert_eq!(
            s1.addr,
            memory::VIRTIO_MMIO_BASE + memory::VIRTIO_MMIO_SLOT_SIZE
        );
        assert_eq!(s1.irq, VIRTIO_IRQ_BASE + 1);
        assert_eq!(s0.cmdline_param(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn with_location_fills_fault_info() {
        let r = ExitReason::TripleFault { vcpu: 0, rip: 0 }.with_location(2, 0x1000);
        assert_eq!(
            r,
            ExitReason::TripleFault {
                vcpu: 2,
                rip: 0x1000
            }
        );
        assert_eq!(ExitReason::Reset.with_location(1, 2), ExitReason::Reset);
    }

    #[test]
    fn bad_config_is_rejected_before_kvm() {
        let mut c = VmConfig::new("/nonexistent");
        c.vcpus = 0;
        assert!(matches!(Vm::new(&c), Err(Error::Config(_))));
    }
}

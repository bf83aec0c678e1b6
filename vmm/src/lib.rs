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
//!
//! A VM can also be paused and saved to a file on request (SIGUSR1 with
//! `--snapshot-to`), and rebuilt from that file ([`Vm::restore`]) instead of
//! steps 2–5: guest RAM is mapped from the file, the in-kernel irqchip, PIT
//! and clock, the devices and the vCPUs get their saved state. See
//! [`snapshot`] for the file format.
//!
//! With `--gdb` or `--gdb-on-demand` a gdb client can stop, inspect and
//! step the guest ([`gdb`]); the run loop pauses the vCPUs for it the way
//! it does for a snapshot.

#![warn(missing_docs)]

pub mod arch;
pub mod bridge;
mod builder;
pub mod devices;
pub mod exit_stats;
pub mod gdb;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod rss;
mod run_loop;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use arch::x86_64::ArchError;
use devices::i8042::I8042Device;
use devices::legacy::LegacyDevice;
use devices::serial::{SerialDevice, SharedBuffer};
use devices::{Bus, BusError};
use loader::LoadError;
use memory::{GuestMem, MemoryError};
use snapshot::SnapshotError;
use vcpu::Vcpu;
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
    /// The guest wrote nothing to the serial port for the whole stall
    /// window (`--stall-timeout-s`): it stopped making progress.
    Stalled {
        /// The stall window.
        window: Duration,
    },
    /// Any other exit the VMM cannot handle.
    Unexpected(String),
    /// KVM_RUN itself failed.
    VcpuError(String),
    /// Paused on request and saved to a snapshot file.
    SnapshotSaved {
        /// The snapshot file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// Time from the request to the file being renamed into place.
        millis: u64,
    },
    /// Paused on request, but the snapshot could not be saved (no file left behind).
    SnapshotFailed(String),
    /// The attached gdb client killed the VM (`kill`).
    DebuggerKill,
}

/// What the run loop hears: from the vCPU threads, the devices, and the
/// gdb client's reader thread, on one channel, so it waits in one place.
#[derive(Debug)]
pub enum VmEvent {
    /// The VM is over.
    Exit(ExitReason),
    /// A vCPU left `KVM_RUN` with `KVM_EXIT_DEBUG` (a debugger is attached).
    Debug(gdb::DebugExit),
    /// The gdb client sent bytes or hung up.
    Gdb(gdb::ClientEvent),
}

/// `arena-vmm` exit code: guest reset or powered off.
pub const EXIT_CLEAN: i32 = 0;
/// `arena-vmm` exit code: setup error (bad arguments, missing kernel, KVM
/// failure, a snapshot refused at restore).
pub const EXIT_SETUP_ERROR: i32 = 2;
/// `arena-vmm` exit code: the VM was paused and saved (`--snapshot-to`, SIGUSR1).
pub const EXIT_SNAPSHOT_SAVED: i32 = 3;
/// `arena-vmm` exit code: the VM was paused for a snapshot that could not be saved.
pub const EXIT_SNAPSHOT_FAILED: i32 = 4;
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
/// `arena-vmm` exit code: the gdb client killed the VM.
pub const EXIT_DEBUGGER_KILL: i32 = 15;
/// `arena-vmm` exit code: no serial output for the stall window.
pub const EXIT_STALLED: i32 = 16;

impl ExitReason {
    /// Process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff => EXIT_CLEAN,
            ExitReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            ExitReason::InternalError { .. } => EXIT_INTERNAL_ERROR,
            ExitReason::FailEntry { .. } => EXIT_FAIL_ENTRY,
            ExitReason::Timeout => EXIT_TIMEOUT,
            ExitReason::Stalled { .. } => EXIT_STALLED,
            ExitReason::Unexpected(_) | ExitReason::VcpuError(_) => EXIT_UNEXPECTED,
            ExitReason::SnapshotSaved { .. } => EXIT_SNAPSHOT_SAVED,
            ExitReason::SnapshotFailed(_) => EXIT_SNAPSHOT_FAILED,
            ExitReason::DebuggerKill => EXIT_DEBUGGER_KILL,
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
            ExitReason::Stalled { window } => write!(
                f,
                "guest stalled: no serial output for {:.3} s",
                window.as_secs_f64()
            ),
            ExitReason::Unexpected(s) => write!(f, "unexpected vCPU exit: {s}"),
            ExitReason::VcpuError(s) => write!(f, "vCPU error: {s}"),
            ExitReason::SnapshotSaved {
                path,
                bytes,
                millis,
            } => write!(
                f,
                "snapshot saved to {} ({bytes} bytes, {millis} ms)",
                path.display()
            ),
            ExitReason::SnapshotFailed(s) => write!(f, "snapshot failed: {s}"),
            ExitReason::DebuggerKill => write!(f, "killed by the gdb client"),
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
    /// A snapshot file was refused or could not be applied.
    #[error("snapshot {0}: {1}")]
    Snapshot(String, SnapshotError),
    /// Saved device state was refused.
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    /// The gdb stub could not start.
    #[error(transparent)]
    Gdb(#[from] gdb::GdbError),
    /// The vCPU kick signal's handler could not be installed.
    #[error(transparent)]
    Kick(#[from] vcpu::KickError),
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
    /// Where its output goes, how long it may run, what signals do.
    pub host: HostIo,
}

/// The host side of a VM, the same for a fresh boot and a restore.
#[derive(Clone)]
pub struct HostIo {
    /// UART output.
    pub serial: SerialOutput,
    /// Unix stream socket bridged to the virtio-console (client side).
    pub console_socket: Option<PathBuf>,
    /// Host-side timeout (for a restore: counted from the restore).
    pub timeout: Option<Duration>,
    /// Progress bound: the VM ends as [`ExitReason::Stalled`] when the
    /// guest writes nothing to the serial port for this long (time a
    /// debugger holds the VM excluded). Unlike `timeout`, a slow guest
    /// that keeps printing is never cut off.
    pub stall_timeout: Option<Duration>,
    /// Where SIGUSR1 saves a snapshot of the running VM.
    pub snapshot_to: Option<PathBuf>,
    /// A gdb stub (`--gdb`, `--gdb-on-demand`).
    pub gdb: Option<gdb::GdbConfig>,
}

impl Default for HostIo {
    /// Output dropped, no console socket, no limit, no signal handling.
    fn default() -> Self {
        Self {
            serial: SerialOutput::Sink,
            console_socket: None,
            timeout: None,
            stall_timeout: None,
            snapshot_to: None,
            gdb: None,
        }
    }
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
            host: HostIo::default(),
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
        self.host.push_args(&mut a);
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
                f if HOST_IO_FLAGS.contains(&f) => cfg.host.set(f, value()?)?,
                "--restore" => return Err("--restore starts a VM from a snapshot alone".into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        cfg.kernel = kernel.ok_or("--kernel is required")?;
        cfg.host.check_gdb()?;
        Ok(cfg)
    }
}

/// The host-side options shared by a fresh boot and a restore: written by
/// [`HostIo::push_args`], read by [`HostIo::set`].
const HOST_IO_FLAGS: [&str; 7] = [
    "--serial",
    "--console-socket",
    "--timeout-s",
    "--stall-timeout-s",
    "--snapshot-to",
    gdb::GDB_FLAG,
    gdb::GDB_ON_DEMAND_FLAG,
];

impl HostIo {
    /// Sets the host-side option `flag` (one of [`HOST_IO_FLAGS`]) to `value`.
    fn set(&mut self, flag: &str, value: &OsStr) -> Result<(), String> {
        match flag {
            gdb::GDB_FLAG | gdb::GDB_ON_DEMAND_FLAG => {
                if self.gdb.is_some() {
                    return Err(format!(
                        "give one of {} and {}, once",
                        gdb::GDB_FLAG,
                        gdb::GDB_ON_DEMAND_FLAG
                    ));
                }
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.gdb = Some(gdb::GdbConfig::parse(flag, v)?);
            }
            "--serial" => self.serial = parse_serial(value),
            "--console-socket" => self.console_socket = Some(PathBuf::from(value)),
            "--timeout-s" => {
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.timeout = Some(parse_seconds(v)?);
            }
            "--stall-timeout-s" => {
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.stall_timeout = Some(parse_seconds(v)?);
            }
            "--snapshot-to" => self.snapshot_to = Some(PathBuf::from(value)),
            other => return Err(format!("unknown argument {other}")),
        }
        Ok(())
    }

    /// Refuses a gdb stub together with snapshots: both pause the VM on a
    /// signal, and a VM a debugger holds (breakpoints in its memory, vCPUs
    /// stopped one by one) is no snapshot to resume from.
    fn check_gdb(&self) -> Result<(), String> {
        match self.gdb {
            Some(g) if self.snapshot_to.is_some() => Err(format!(
                "{} cannot be used with --snapshot-to: a VM under a debugger is not snapshotted",
                g.flag()
            )),
            _ => Ok(()),
        }
    }

    /// Appends these options to an `arena-vmm` command line.
    fn push_args(&self, a: &mut Vec<OsString>) {
        match &self.serial {
            SerialOutput::Stdout => a.extend(["--serial".into(), "-".into()]),
            SerialOutput::File(p) => a.extend(["--serial".into(), p.clone().into()]),
            SerialOutput::Buffer(_) | SerialOutput::Sink => {}
        }
        if let Some(s) = &self.console_socket {
            a.extend(["--console-socket".into(), s.clone().into()]);
        }
        // Whole nanoseconds, so the round trip is exact.
        let secs = |t: Duration| format!("{}.{:09}", t.as_secs(), t.subsec_nanos());
        if let Some(t) = self.timeout {
            a.extend(["--timeout-s".into(), secs(t).into()]);
        }
        if let Some(t) = self.stall_timeout {
            a.extend(["--stall-timeout-s".into(), secs(t).into()]);
        }
        if let Some(p) = &self.snapshot_to {
            a.extend(["--snapshot-to".into(), p.clone().into()]);
        }
        if let Some(g) = self.gdb {
            a.extend([g.flag().into(), g.addr.to_string().into()]);
        }
    }
}

fn parse_serial(v: &OsStr) -> SerialOutput {
    if v == "-" {
        SerialOutput::Stdout
    } else {
        SerialOutput::File(v.into())
    }
}

/// What to restore, and where the restored VM's host side goes. The VM's
/// shape (RAM, vCPUs, devices, command line) comes from the snapshot.
#[derive(Clone)]
pub struct RestoreConfig {
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// The host side from now on: the console socket is reconnected, the
    /// timeout counts from the restore, and a gdb stub can only be
    /// `--gdb-on-demand` (a restored VM has no first instruction to hold).
    pub host: HostIo,
    /// Skip the checksum over the whole file (`--no-verify`): the caller
    /// verified this very file already (lab hashes it once per run). The
    /// header, build id and every bound are still checked. Under nested
    /// TCG the checksum is most of a restore (1.4 of 1.6 s measured).
    pub trust_checksum: bool,
}

impl RestoreConfig {
    /// Restore `snapshot` with output dropped and no console socket.
    pub fn new(snapshot: impl Into<PathBuf>) -> Self {
        Self {
            snapshot: snapshot.into(),
            host: HostIo::default(),
            trust_checksum: false,
        }
    }

    /// The `arena-vmm --restore` command line for this config.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--restore".into(), self.snapshot.clone().into()];
        if self.trust_checksum {
            a.push("--no-verify".into());
        }
        self.host.push_args(&mut a);
        a
    }

    /// Parses an `arena-vmm --restore` command line; the inverse of
    /// [`RestoreConfig::to_args`]. Options that shape a fresh VM are refused.
    pub fn from_args<S: AsRef<OsStr>>(args: &[S]) -> Result<RestoreConfig, String> {
        let mut cfg = RestoreConfig::new("");
        let mut snapshot = None;
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let flag = flag.to_string_lossy();
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match &*flag {
                "--restore" => snapshot = Some(PathBuf::from(value()?)),
                "--no-verify" => cfg.trust_checksum = true,
                f if HOST_IO_FLAGS.contains(&f) => cfg.host.set(f, value()?)?,
                "--kernel" | "--initrd" | "--cmdline" | "--vcpus" | "--mem-mib" => {
                    return Err(format!(
                        "{flag} cannot be used with --restore: the VM's shape comes from the snapshot"
                    ))
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        cfg.snapshot = snapshot.ok_or("--restore needs a snapshot file")?;
        if cfg.host.gdb.is_some_and(|g| g.wait) {
            return Err(format!(
                "{} cannot be used with --restore: a restored VM has no first instruction to \
                 hold; use {}",
                gdb::GDB_FLAG,
                gdb::GDB_ON_DEMAND_FLAG
            ));
        }
        cfg.host.check_gdb()?;
        Ok(cfg)
    }
}

/// What an `arena-vmm` command line asks for.
pub enum Launch {
    /// Boot a kernel.
    Boot(VmConfig),
    /// Resume a snapshot.
    Restore(RestoreConfig),
}

/// Parses an `arena-vmm` command line: `--restore` anywhere selects a
/// restore, anything else is a fresh boot.
pub fn parse_launch<S: AsRef<OsStr>>(args: &[S]) -> Result<Launch, String> {
    if args.iter().any(|a| a.as_ref() == "--restore") {
        RestoreConfig::from_args(args).map(Launch::Restore)
    } else {
        VmConfig::from_args(args).map(Launch::Boot)
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
    /// For a restored VM, where the restore's time went.
    pub restore: Option<RestoreTimes>,
}

/// Where the time of [`Vm::restore`] went.
#[derive(Debug, Clone, Copy)]
pub struct RestoreTimes {
    /// Opening the file and checking header, build id and checksum.
    pub verify: Duration,
    /// Building the VM from the verified state.
    pub build: Duration,
}

/// Port-I/O devices with state, kept for snapshots.
struct DeviceHandles {
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    legacy: Arc<Mutex<LegacyDevice>>,
}

/// A fully built VM, ready to [`run`](Vm::run).
pub struct Vm {
    kvm: Kvm,
    vm: VmFd,
    /// Guest RAM, mapped into the VM: dropped after `vm` (field order).
    mem: Arc<GuestMem>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vcpus: Vec<Vcpu>,
    exit_tx: Sender<VmEvent>,
    exit_rx: Receiver<VmEvent>,
    timeout: Option<Duration>,
    stall_timeout: Option<Duration>,
    /// Bytes the guest has written to the serial port: its progress.
    serial_progress: Arc<std::sync::atomic::AtomicU64>,
    irqfds: Vec<(Arc<EventFd>, u32)>,
    console: ConsoleTransport,
    console_bridge: Option<bridge::SocketBridge>,
    devices: DeviceHandles,
    machine: snapshot::state::MachineState,
    snapshot_to: Option<PathBuf>,
    restore_times: Option<RestoreTimes>,
    /// The gdb stub, when asked for.
    debugger: Option<gdb::Debugger>,
}

impl Vm {
    /// The virtio-console transport (host side).
    pub fn console(&self) -> &ConsoleTransport {
        &self.console
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

/// Counts what passes through into `progress`.
struct Counting(Box<dyn Write + Send>, Arc<std::sync::atomic::AtomicU64>);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Counted even when the output fails: the guest did write it.
        self.1
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.0.write(buf).or(Ok(buf.len()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The UART's output, counting every byte into `progress`.
fn serial_writer(
    out: &SerialOutput,
    progress: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<Box<dyn Write + Send>, Error> {
    Ok(Box::new(Counting(
        plain_serial_writer(out)?,
        progress.clone(),
    )))
}

fn plain_serial_writer(out: &SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
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

/// Restores and runs a VM in one call.
pub fn restore_vm(cfg: &RestoreConfig) -> Result<RunReport, Error> {
    Vm::restore(cfg)?.run()
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
        assert!(matches!(c.host.serial, SerialOutput::Stdout));
        assert_eq!(c.host.console_socket, Some(PathBuf::from("/s")));
        assert_eq!(c.host.timeout, Some(Duration::from_millis(1500)));
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
        assert!(matches!(c.host.serial, SerialOutput::File(_)));
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
                && serial(&a.host.serial) == serial(&b.host.serial)
                && a.host.console_socket == b.host.console_socket
                && a.host.timeout == b.host.timeout
                && a.host.stall_timeout == b.host.stall_timeout
                && a.host.gdb == b.host.gdb
        }
        let plain = VmConfig::new("/boot/vmlinux");
        assert_eq!(plain.to_args(), ["--kernel", "/boot/vmlinux"]);
        let mut full = VmConfig::new(OsStr::from_bytes(b"/odd dir/k\xff"));
        full.initrd = Some("/i n/initrd.cpio".into());
        full.cmdline = "loglevel=5 console=ttyS0 arena.x=\"a b\"".into();
        full.vcpus = 4;
        full.mem_mib = 1024;
        full.host.serial = SerialOutput::File("/r/console.log".into());
        full.host.console_socket = Some("/r/chan.sock".into());
        full.host.timeout = Some(Duration::new(7, 123_456_789));
        full.host.stall_timeout = Some(Duration::new(30, 5));
        let mut stdout = plain.clone();
        stdout.host.serial = SerialOutput::Stdout;
        stdout.host.timeout = Some(Duration::from_millis(1));
        stdout.host.gdb = Some(gdb::GdbConfig::parse("--gdb", "127.0.0.1:1234").unwrap());
        let mut on_demand = full.clone();
        on_demand.host.gdb = Some(gdb::GdbConfig::parse("--gdb-on-demand", "[::1]:0").unwrap());
        for c in [plain, full, stdout, on_demand] {
            let args = c.to_args();
            let back = VmConfig::from_args(&args).unwrap();
            assert!(same(&c, &back), "{args:?} did not round-trip");
            // Each option once.
            for flag in [
                "--serial",
                "--console-socket",
                "--timeout-s",
                "--stall-timeout-s",
            ] {
                assert!(args.iter().filter(|a| *a == flag).count() <= 1, "{args:?}");
            }
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
            ExitReason::SnapshotSaved {
                path: "/s".into(),
                bytes: 4096,
                millis: 7,
            },
            ExitReason::SnapshotFailed(String::new()),
            ExitReason::DebuggerKill,
            ExitReason::Stalled {
                window: Duration::from_secs(1),
            },
        ];
        let mut codes: Vec<i32> = reasons.iter().map(|r| r.exit_code()).collect();
        codes.push(EXIT_SETUP_ERROR);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(ExitReason::PowerOff.is_clean());
        assert!(ExitReason::Timeout.to_string().contains("timeout"));
        assert_eq!(reasons[6].exit_code(), EXIT_SNAPSHOT_SAVED);
        assert_eq!(
            reasons[6].to_string(),
            "snapshot saved to /s (4096 bytes, 7 ms)"
        );
    }

    #[test]
    fn restore_command_line_round_trips_and_refuses_shape_options() {
        let mut r = RestoreConfig::new("/snap");
        r.host.serial = SerialOutput::File("/after.log".into());
        r.host.console_socket = Some("/c.sock".into());
        r.host.timeout = Some(Duration::from_millis(2500));
        r.host.snapshot_to = Some("/snap2".into());
        r.trust_checksum = true;
        let Ok(Launch::Restore(back)) = parse_launch(&r.to_args()) else {
            panic!("not parsed as a restore")
        };
        assert_eq!(back.to_args(), r.to_args());
        assert!(back.trust_checksum);
        assert_eq!(back.snapshot, PathBuf::from("/snap"));
        for flag in ["--kernel", "--initrd", "--cmdline", "--vcpus", "--mem-mib"] {
            let e = parse_launch(&args(&["--restore", "/s", flag, "1"]))
                .err()
                .unwrap();
            assert!(e.contains("cannot be used with --restore"), "{e}");
        }
        assert!(parse_launch(&args(&["--serial", "-", "--restore"])).is_err());
        let Ok(Launch::Boot(b)) = parse_launch(&args(&["--kernel", "/k", "--snapshot-to", "/s"]))
        else {
            panic!("not parsed as a boot")
        };
        assert_eq!(b.host.snapshot_to, Some(PathBuf::from("/s")));
        assert!(b.to_args().contains(&OsString::from("--snapshot-to")));
    }

    #[test]
    fn gdb_options_parse_and_refuse_what_cannot_work() {
        let boot = |a: &[&str]| VmConfig::from_args(&args(a));
        let c = boot(&["--kernel", "/k", "--gdb", "127.0.0.1:1234"]).unwrap();
        assert_eq!(
            c.host.gdb,
            Some(gdb::GdbConfig {
                addr: "127.0.0.1:1234".parse().unwrap(),
                wait: true
            })
        );
        let c = boot(&["--kernel", "/k", "--gdb-on-demand", "127.0.0.1:0"]).unwrap();
        assert!(!c.host.gdb.unwrap().wait);
        for bad in [
            &["--kernel", "/k", "--gdb", "1234"][..],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--gdb",
                "127.0.0.1:2",
            ],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--gdb-on-demand",
                "127.0.0.1:2",
            ],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--snapshot-to",
                "/s",
            ],
            &[
                "--kernel",
                "/k",
                "--snapshot-to",
                "/s",
                "--gdb-on-demand",
                "127.0.0.1:1",
            ],
        ] {
            assert!(boot(bad).is_err(), "{bad:?}");
        }
        let e = parse_launch(&args(&["--restore", "/s", "--gdb", "127.0.0.1:1"]))
            .err()
            .unwrap();
        assert!(e.contains("--gdb cannot be used with --restore"), "{e}");
        let Ok(Launch::Restore(r)) = parse_launch(&args(&[
            "--restore",
            "/s",
            "--gdb-on-demand",
            "127.0.0.1:1",
        ])) else {
            panic!("not parsed as a restore")
        };
        assert_eq!(parse_launch(&r.to_args()).ok().map(|_| ()), Some(()));
        assert!(r.to_args().contains(&OsString::from("--gdb-on-demand")));
        assert!(parse_launch(&args(&[
            "--restore",
            "/s",
            "--snapshot-to",
            "/t",
            "--gdb-on-demand",
            "127.0.0.1:1"
        ]))
        .is_err());
    }

    #[test]
    fn a_gdb_stub_with_snapshots_is_refused_before_kvm() {
        let mut c = VmConfig::new("/nonexistent");
        c.host.snapshot_to = Some("/s".into());
        c.host.gdb = Some(gdb::GdbConfig::parse("--gdb", "127.0.0.1:1").unwrap());
        assert!(matches!(Vm::new(&c), Err(Error::Config(_))));
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

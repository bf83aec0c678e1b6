//! arena lab's own small KVM virtual machine monitor.
//!
//! The boot flow, top to bottom ([`Vm::new`] then [`Vm::run`]):
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

pub mod arch;
pub mod devices;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod vcpu;
pub mod virtio;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use arch::x86_64::{mptable, ArchError};
use devices::acpi_pm::{AcpiPmDevice, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use devices::i8042::{I8042Device, I8042_DATA_PORT, I8042_PORT_LEN};
use devices::legacy::{LegacyAt, LegacyDevice, CMOS_INDEX_PORT, FAST_A20_PORT, PORT_B, POST_PORT};
use devices::serial::{
    EventFdTrigger, SerialDevice, SharedBuffer, COM1_IRQ, COM1_PORT, UART_PORT_LEN,
};
use devices::{Bus, BusError, SharedDevice};
use loader::LoadError;
use memory::{GuestMem, MemoryError};
use vcpu::{Vcpu, VcpuContext};
use virtio::console::{Console, RX_QUEUE};
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

/// Measurements of one VM lifetime.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Why the VM stopped.
    pub exit: ExitReason,
    /// Time from the start of [`Vm::run`] until the boot vCPU entered the guest.
    pub time_to_first_entry: Option<Duration>,
    /// Total time spent in [`Vm::run`].
    pub run_time: Duration,
}

/// A fully built VM, ready to [`run`](Vm::run).
pub struct Vm {
    _kvm: Kvm,
    vm: VmFd,
    mem: Arc<GuestMem>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vcpus: Vec<Vcpu>,
    exit_tx: Sender<ExitReason>,
    exit_rx: Receiver<ExitReason>,
    timeout: Option<Duration>,
    irqfds: Vec<Arc<EventFd>>,
    console: ConsoleTransport,
    console_stream: Option<UnixStream>,
}

impl Vm {
    /// Builds the VM described by `cfg` (steps 1–5 of the crate docs).
    pub fn new(cfg: &VmConfig) -> Result<Self, Error> {
        if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
            return Err(Error::Config(format!(
                "vCPU count must be 1..={}",
                mptable::MAX_VCPUS
            )));
        }
        // 1. KVM, VM, irqchip, PIT.
        let kvm = Kvm::new().map_err(|e| Error::Kvm("open /dev/kvm", e))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(memory::KVM_TSS_ADDRESS as usize)
            .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.set_identity_map_address(memory::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;

        // 2. Guest memory.
        let mem = Arc::new(memory::create_guest_memory(cfg.mem_mib)?);
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| Error::Config("guest region without host mapping".into()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region stays mapped for the life of `mem`, which the
            // `Vm` owns and drops after the VM fd.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }

        // 3. Kernel, initrd, command line, platform tables, boot parameters.
        let kernel = loader::load_kernel(&mem, &cfg.kernel)?;
        let initrd = match &cfg.initrd {
            Some(p) => Some(loader::load_initrd(
                &mem,
                p,
                kernel.result.kernel_end,
                loader::initrd_limit(&kernel),
            )?),
            None => None,
        };
        let console_slot = VirtioSlot::nth(0);
        let rsdp = Some(arch::x86_64::acpi::setup_acpi(
            &mem,
            cfg.vcpus,
            &[console_slot],
        )?);
        let mut cmdline = cfg.cmdline.trim().to_string();
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&console_slot.cmdline_param());
        let cmdline_len = loader::write_cmdline(&mem, &cmdline)?;
        arch::x86_64::regs::write_boot_tables(&mem)?;
        mptable::setup_mptable(&mem, cfg.vcpus)?;
        match kernel.entry {
            arch::x86_64::regs::BootEntry::Pvh { .. } => {
                loader::write_pvh_info(&mem, initrd, rsdp)?
            }
            arch::x86_64::regs::BootEntry::Linux64 { .. } => {
                loader::write_zero_page(&mem, &kernel, cmdline_len, initrd, rsdp)?
            }
        }

        // 4. Devices.
        let (exit_tx, exit_rx) = channel();
        let mut irqfds = Vec::new();
        let mut pio = Bus::new();
        let serial_irq = Arc::new(new_eventfd()?);
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        irqfds.push(serial_irq.clone());
        let serial = SerialDevice::new(EventFdTrigger(serial_irq), serial_writer(&cfg.serial)?);
        pio.insert(Arc::new(Mutex::new(serial)), COM1_PORT, UART_PORT_LEN)?;
        let reset_tx = Mutex::new(exit_tx.clone());
        let i8042 = I8042Device::new(Box::new(move || {
            let _ = devices::lock(&reset_tx).send(ExitReason::Reset);
        }));
        let (off_tx, rst_tx) = (Mutex::new(exit_tx.clone()), Mutex::new(exit_tx.clone()));
        let pm = AcpiPmDevice::new(
            Box::new(move || {
                let _ = devices::lock(&off_tx).send(ExitReason::PowerOff);
            }),
            Box::new(move || {
                let _ = devices::lock(&rst_tx).send(ExitReason::Reset);
            }),
        );
        pio.insert(Arc::new(Mutex::new(pm)), ACPI_PM_PORT, ACPI_PM_PORT_LEN)?;
        let legacy = Arc::new(Mutex::new(LegacyDevice::new()));
        for (base, len) in [
            (POST_PORT, 1),
            (PORT_B, 1),
            (CMOS_INDEX_PORT, 2),
            (FAST_A20_PORT, 1),
        ] {
            let dev: SharedDevice = Arc::new(Mutex::new(LegacyAt {
                base,
                dev: legacy.clone(),
            }));
            pio.insert(dev, base, len)?;
        }
        // 0x61 sits inside the i8042 range, so the controller gets 0x60 and 0x62..=0x64.
        let i8042: SharedDevice = Arc::new(Mutex::new(i8042));
        pio.insert(i8042.clone(), I8042_DATA_PORT, 1)?;
        pio.insert(
            Arc::new(Mutex::new(devices::Offset {
                dev: i8042,
                offset: 2,
            })),
            I8042_DATA_PORT + 2,
            I8042_PORT_LEN - 2,
        )?;
        let mut mmio = Bus::new();
        let console_irq = Arc::new(new_eventfd()?);
        vm.register_irqfd(&console_irq, console_slot.irq)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        irqfds.push(console_irq.clone());
        let (console_out, console_stream): (Box<dyn Write + Send>, _) = match &cfg.console_socket {
            Some(p) => {
                let s = UnixStream::connect(p)
                    .map_err(|e| Error::Io(format!("connect {}", p.display()), e))?;
                let out = s
                    .try_clone()
                    .map_err(|e| Error::Io("clone console socket".into(), e))?;
                (Box::new(out), Some(s))
            }
            None => (Box::new(std::io::sink()), None),
        };
        let console: ConsoleTransport = Arc::new(Mutex::new(MmioTransport::new(
            Console::new(console_out),
            mem.clone(),
            console_irq,
        )));
        mmio.insert(console.clone(), console_slot.addr, console_slot.size)?;

        // 5. vCPUs.
        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let quirks = arch::x86_64::cpuid::CpuidQuirks {
            pvm: probe::host_is_pvm(),
        };
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        for id in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
            let v = Vcpu::new(fd, id, &base_cpuid, quirks)?;
            if id == 0 {
                v.set_boot_entry(kernel.entry)?;
            }
            vcpus.push(v);
        }

        Ok(Self {
            _kvm: kvm,
            vm,
            mem,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            vcpus,
            exit_tx,
            exit_rx,
            timeout: cfg.timeout,
            irqfds,
            console,
            console_stream,
        })
    }

    /// Guest memory (for inspection by tests and tools).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The KVM VM fd.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The virtio-console transport (host side).
    pub fn console(&self) -> &ConsoleTransport {
        &self.console
    }

    /// Step 6: runs the vCPUs until the guest stops or the timeout expires.
    pub fn run(mut self) -> Result<RunReport, Error> {
        vcpu::install_kick_handler();
        let start = Instant::now();
        let console_reader = match &self.console_stream {
            Some(s) => {
                let s = s
                    .try_clone()
                    .map_err(|e| Error::Io("clone console socket".into(), e))?;
                Some(spawn_console_reader(s, self.console.clone())?)
            }
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let boot_started = Arc::new(AtomicBool::new(false));
        let mut first_entry = None;
        for v in self.vcpus.drain(..) {
            let started = if v.id == 0 {
                boot_started.clone()
            } else {
                Arc::new(AtomicBool::new(false))
            };
            let ctx = VcpuContext {
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit_tx: self.exit_tx.clone(),
                stop: stop.clone(),
                started,
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
            if first_entry.is_none() && boot_started.load(Ordering::Acquire) {
                first_entry = Some(start.elapsed());
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left.min(Duration::from_millis(5)),
                    None => break ExitReason::Timeout,
                },
                None => Duration::from_millis(5),
            };
            match self.exit_rx.recv_timeout(wait) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break ExitReason::VcpuError("all vCPU threads ended".into())
                }
            }
        };
        if first_entry.is_none() && boot_started.load(Ordering::Acquire) {
            first_entry = Some(start.elapsed());
        }
        stop.store(true, Ordering::Release);
        for h in threads {
            while !h.is_finished() {
                let _ = h.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
        if let Some(s) = &self.console_stream {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(h) = console_reader {
            let _ = h.join();
        }
        Ok(RunReport {
            exit,
            time_to_first_entry: first_entry,
            run_time: start.elapsed(),
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for fd in &self.irqfds {
            let _ = self.vm.unregister_irqfd(fd, 0);
        }
    }
}

/// Copies socket input into the console's receive queue until EOF.
fn spawn_console_reader(
    mut stream: UnixStream,
    console: ConsoleTransport,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("console-rx".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut t = devices::lock(&console);
                        t.device_mut().queue_input(&buf[..n]);
                        t.process_queue(RX_QUEUE);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
        .map_err(|e| Error::Io("spawn console reader".into(), e))
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

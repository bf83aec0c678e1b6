//! Building a VM, one step per function, in boot order (what [`Vm::new`]
//! does): validate → KVM VM → guest memory → guest image and boot tables →
//! devices → vCPUs. [`Vm::restore`] reuses the steps that do not depend on
//! booting: verify snapshot → KVM VM → guest memory mapped from the file →
//! irqchip/PIT/clock state → devices with saved state → vCPUs with saved
//! state.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, KVM_CAP_SET_GUEST_DEBUG2, KVM_GUESTDBG_BLOCKIRQ, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};

use crate::arch::x86_64::regs::BootEntry;
use crate::arch::x86_64::{acpi, mptable, regs};
use crate::bridge::SocketBridge;
use crate::config::{HostIo, RestoreConfig, SerialOutput, VmConfig};
use crate::devices::acpi_pm::{AcpiPmDevice, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use crate::devices::i8042::{I8042Device, I8042_DATA_PORT, I8042_PORT_LEN};
use crate::devices::legacy;
use crate::devices::serial::{EventFdTrigger, SerialDevice, COM1_IRQ, COM1_PORT, UART_PORT_LEN};
use crate::devices::{self, Bus, SharedDevice};
use crate::error::Error;
use crate::event::VmEvent;
use crate::exit_reason::ExitReason;
use crate::gdb;
use crate::memory::{self, GuestMem};
use crate::snapshot::state::{DeviceState, MachineState, VcpuState, VmState};
use crate::snapshot::{self, kvm_state, SnapshotError};
use crate::vcpu::Vcpu;
use crate::virtio::console::Console;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{ConsoleTransport, VirtioSlot};
use crate::vm::{DeviceHandles, RestoreTimes, Vm};
use crate::{loader, probe};
use vmm_sys_util::eventfd::EventFd;

impl Vm {
    /// Builds the VM described by `cfg` (steps 1–5 of the crate docs).
    pub fn new(cfg: &VmConfig) -> Result<Self, Error> {
        validate(cfg)?;
        let kvm_vm = create_vm()?;
        let vm = &kvm_vm.1;
        let mem = create_memory(vm, cfg.mem_mib)?;
        let console_slot = VirtioSlot::nth(0);
        let entry = load_guest(&mem, cfg, &[console_slot])?;
        let exit = channel();
        let host = &cfg.host;
        let devs = create_devices(vm, &mem, host, console_slot, &exit.0, None)?;
        let vcpus = create_vcpus(&kvm_vm.0, vm, cfg.vcpus, entry)?;
        let machine = MachineState {
            vcpus: cfg.vcpus,
            mem_mib: cfg.mem_mib,
            cmdline: cfg.cmdline.clone(),
            kernel: cfg.kernel.display().to_string(),
            console_slot: (console_slot.addr, console_slot.size, console_slot.irq),
        };
        Ok(Self::assemble(
            kvm_vm, mem, devs, vcpus, exit, machine, host,
        ))
    }

    /// Rebuilds the VM saved in `cfg.snapshot`, paused where it was saved
    /// (the restore flow in the module docs). The file is verified before
    /// anything is built from it.
    pub fn restore(cfg: &RestoreConfig) -> Result<Self, Error> {
        check_host(&cfg.host)?;
        if cfg.host.gdb.is_some_and(|g| g.wait) {
            return Err(Error::Config(
                "a restored VM cannot wait for gdb at its first instruction".into(),
            ));
        }
        let start = std::time::Instant::now();
        let path = cfg.snapshot.display().to_string();
        let snap_err = |e: SnapshotError| Error::Snapshot(path.clone(), e);
        let id = snapshot::build_id().map_err(snap_err)?;
        let check = if cfg.trust_checksum {
            snapshot::format::Check::TrustCaller
        } else {
            snapshot::format::Check::Checksum
        };
        let file = snapshot::format::open(&cfg.snapshot, &id, check).map_err(snap_err)?;
        let state = VmState::from_json(&file.state).map_err(snap_err)?;
        if memory::checked_size(state.machine.mem_mib)? != file.header.mem_len {
            return Err(snap_err(SnapshotError::Corrupt(format!(
                "{} bytes of guest memory for {} MiB",
                file.header.mem_len, state.machine.mem_mib
            ))));
        }
        let verified = start.elapsed();
        let kvm_vm = create_vm()?;
        let vm = &kvm_vm.1;
        let mem = Arc::new(memory::map_guest_memory_private(
            &file.file,
            file.header.mem_offset,
            state.machine.mem_mib,
        )?);
        // SAFETY: the `Vm` holds a clone of `mem` (`_mem`, dropped after
        // `vm`, field order), and so do the virtio transports on the MMIO
        // bus, which every running vCPU thread holds: no vCPU runs while the
        // memory is unmapped.
        unsafe { memory::register_with_kvm(vm, &mem) }?;
        kvm_state::restore_vm(vm, &state.vm).map_err(snap_err)?;
        let exit = channel();
        let host = &cfg.host;
        let slot = VirtioSlot::nth(0);
        let devs = create_devices(vm, &mem, host, slot, &exit.0, Some(&state.devices))?;
        let vcpus = restore_vcpus(vm, &state.vcpus).map_err(snap_err)?;
        let mut vm = Self::assemble(kvm_vm, mem, devs, vcpus, exit, state.machine, host);
        vm.restore_times = Some(RestoreTimes {
            verify: verified,
            build: start.elapsed() - verified,
        });
        Ok(vm)
    }

    /// The built parts, as a [`Vm`] ready to run.
    fn assemble(
        (kvm, vm): (Kvm, VmFd),
        mem: Arc<GuestMem>,
        devs: Devices,
        vcpus: Vec<Vcpu>,
        (exit_tx, exit_rx): (Sender<VmEvent>, Receiver<VmEvent>),
        machine: MachineState,
        host: &HostIo,
    ) -> Self {
        let debugger = host.gdb.map(|cfg| {
            let ids = vcpus.iter().map(|v| v.id).collect();
            let target = gdb::target::VmTarget::new(ids, mem.clone());
            gdb::Debugger::new(cfg, target, exit_tx.clone(), can_block_irqs(&kvm))
        });
        Self {
            kvm,
            vm,
            mem,
            pio: Arc::new(devs.pio),
            mmio: Arc::new(devs.mmio),
            vcpus,
            exit_tx,
            exit_rx,
            timeout: host.timeout,
            stall_timeout: host.stall_timeout,
            serial_progress: devs.serial_progress,
            irqfds: devs.irqfds,
            console: devs.console,
            console_bridge: devs.console_bridge,
            devices: devs.handles,
            machine,
            snapshot_to: host.snapshot_to.clone(),
            restore_times: None,
            debugger,
        }
    }
}

/// Whether KVM can hold interrupts off during a single step
/// (`KVM_GUESTDBG_BLOCKIRQ`, Linux 5.16): `KVM_CAP_SET_GUEST_DEBUG2` lists
/// the guest debug flags it supports.
fn can_block_irqs(kvm: &Kvm) -> bool {
    let flags = kvm.check_extension_raw(KVM_CAP_SET_GUEST_DEBUG2.into());
    flags > 0 && (flags as u32) & KVM_GUESTDBG_BLOCKIRQ != 0
}

/// Checks the host-side options that pause the VM on a signal, and arms
/// those signals: SIGUSR1 (snapshot) and SIGUSR2 (debugger) must not kill
/// a VM that was asked to pause on them. Armed before the VM is built, so
/// an early signal is not fatal either.
fn check_host(host: &HostIo) -> Result<(), Error> {
    let (snapshot_to, gdb) = (&host.snapshot_to, host.gdb);
    if snapshot_to.is_some() && gdb.is_some() {
        return Err(Error::Config(
            "a VM under a gdb stub is not snapshotted (--snapshot-to)".into(),
        ));
    }
    if snapshot_to.is_some() {
        snapshot::arm_sigusr1().map_err(|e| Error::Io("install the SIGUSR1 handler".into(), e))?;
    }
    if gdb.is_some() {
        gdb::signal::arm_sigusr2()
            .map_err(|e| Error::Io("install the SIGUSR2 handler".into(), e))?;
    }
    Ok(())
}

/// Appended unless the command line already says `pci=`: the machine has no
/// PCI, and without it Linux's early quirks scan every bus through the
/// 0xcf8/0xcfc ports anyway. Measured in `lab nested`: 33,213 of a boot's
/// 35,088 I/O exits, 3.6 s of a 9.6 s scenario.
pub const NO_PCI_PARAM: &str = "pci=off";

/// Rejects configurations the platform tables cannot describe.
fn validate(cfg: &VmConfig) -> Result<(), Error> {
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
        return Err(Error::Config(format!(
            "vCPU count must be 1..={}",
            mptable::MAX_VCPUS
        )));
    }
    check_host(&cfg.host)
}

/// Step 1: KVM, the VM, in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
fn create_vm() -> Result<(Kvm, VmFd), Error> {
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
    Ok((kvm, vm))
}

/// Step 2: guest RAM, registered with KVM one slot per region.
fn create_memory(vm: &VmFd, mem_mib: u64) -> Result<Arc<GuestMem>, Error> {
    let mem = Arc::new(memory::create_guest_memory(mem_mib)?);
    // SAFETY: as in `Vm::restore`: every holder of a vCPU holds `mem`.
    unsafe { memory::register_with_kvm(vm, &mem) }?;
    Ok(mem)
}

/// Step 3: kernel, initrd, command line, ACPI and MP tables, boot page
/// tables and the boot parameters of the kernel's entry protocol.
fn load_guest(mem: &GuestMem, cfg: &VmConfig, slots: &[VirtioSlot]) -> Result<BootEntry, Error> {
    let kernel = loader::load_kernel(mem, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(loader::load_initrd(
            mem,
            p,
            kernel.result.kernel_end,
            loader::initrd_limit(&kernel),
        )?),
        None => None,
    };
    let rsdp = Some(acpi::setup_acpi(mem, cfg.vcpus, slots)?);
    let mut cmdline = cfg.cmdline.trim().to_string();
    let mut params: Vec<String> = slots.iter().map(VirtioSlot::cmdline_param).collect();
    if !cmdline.split_whitespace().any(|p| p.starts_with("pci=")) {
        params.push(NO_PCI_PARAM.into());
    }
    for p in params {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&p);
    }
    let cmdline_len = loader::write_cmdline(mem, &cmdline)?;
    regs::write_boot_tables(mem)?;
    mptable::setup_mptable(mem, cfg.vcpus)?;
    match kernel.entry {
        BootEntry::Pvh { .. } => loader::write_pvh_info(mem, initrd, rsdp)?,
        BootEntry::Linux64 { .. } => {
            loader::write_zero_page(mem, &kernel, cmdline_len, initrd, rsdp)?
        }
    }
    Ok(kernel.entry)
}

/// Everything step 4 creates.
struct Devices {
    pio: Bus,
    mmio: Bus,
    irqfds: Vec<(Arc<EventFd>, u32)>,
    console: ConsoleTransport,
    console_bridge: Option<SocketBridge>,
    handles: DeviceHandles,
    serial_progress: Arc<AtomicU64>,
}

/// An eventfd registered with KVM as the irqfd of `gsi`.
fn irqfd(vm: &VmFd, gsi: u32, all: &mut Vec<(Arc<EventFd>, u32)>) -> Result<Arc<EventFd>, Error> {
    let evt = Arc::new(new_eventfd()?);
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    all.push((evt.clone(), gsi));
    Ok(evt)
}

/// A callback that ends the VM with `reason`.
fn exit_sink(tx: &Sender<VmEvent>, reason: ExitReason) -> Box<dyn Fn() + Send> {
    let tx = Mutex::new(tx.clone());
    Box::new(move || {
        let _ = devices::lock(&tx).send(VmEvent::Exit(reason.clone()));
    })
}

/// Step 4: the port-I/O devices (UART, i8042, ACPI PM, legacy ports) and the
/// virtio-mmio console, with interrupts delivered through irqfds; with
/// `saved`, each device then takes its state from a snapshot.
fn create_devices(
    vm: &VmFd,
    mem: &Arc<GuestMem>,
    host: &HostIo,
    console_slot: VirtioSlot,
    exit_tx: &Sender<VmEvent>,
    saved: Option<&DeviceState>,
) -> Result<Devices, Error> {
    let mut irqfds = Vec::new();
    let mut pio = Bus::new();

    let serial_irq = EventFdTrigger(irqfd(vm, COM1_IRQ, &mut irqfds)?);
    let serial_progress = Arc::new(AtomicU64::new(0));
    let serial_out = serial_writer(&host.serial, &serial_progress)?;
    let serial = Arc::new(Mutex::new(match saved {
        Some(s) => SerialDevice::from_snapshot(serial_irq, serial_out, &s.serial)
            .map_err(Error::Restore)?,
        None => SerialDevice::new(serial_irq, serial_out),
    }));
    pio.insert(serial.clone(), COM1_PORT, UART_PORT_LEN)?;

    let pm = AcpiPmDevice::new(
        Box::new(exit_sink(exit_tx, ExitReason::PowerOff)),
        Box::new(exit_sink(exit_tx, ExitReason::Reset)),
    );
    pio.insert(Arc::new(Mutex::new(pm)), ACPI_PM_PORT, ACPI_PM_PORT_LEN)?;

    let legacy = legacy::register(&mut pio)?;

    // 0x61 (port B) sits inside the i8042 range, so the controller gets 0x60
    // and 0x62..=0x64.
    let i8042 = Arc::new(Mutex::new(I8042Device::new(Box::new(exit_sink(
        exit_tx,
        ExitReason::Reset,
    )))));
    let i8042_dev: SharedDevice = i8042.clone();
    pio.insert(i8042_dev.clone(), I8042_DATA_PORT, 1)?;
    pio.insert(
        devices::Offset::shared(i8042_dev, 2),
        I8042_DATA_PORT + 2,
        I8042_PORT_LEN - 2,
    )?;

    let mut mmio = Bus::new();
    let console_irq = irqfd(vm, console_slot.irq, &mut irqfds)?;
    let (console_out, console_bridge): (Box<dyn Write + Send>, _) =
        match host.console_socket.as_deref() {
            Some(p) => {
                let (bridge, out) = SocketBridge::connect(p)?;
                (Box::new(out), Some(bridge))
            }
            None => (Box::new(std::io::sink()), None),
        };
    let console: ConsoleTransport = Arc::new(Mutex::new(MmioTransport::new(
        Console::new(console_out),
        mem.clone(),
        console_irq,
    )));
    mmio.insert(console.clone(), console_slot.addr, console_slot.size)?;

    if let Some(s) = saved {
        devices::lock(&i8042).restore(&s.i8042);
        devices::lock(&legacy).restore(&s.legacy);
        let mut t = devices::lock(&console);
        t.restore(&s.console_transport).map_err(Error::Restore)?;
        t.device_mut().restore(&s.console).map_err(Error::Restore)?;
    }

    Ok(Devices {
        pio,
        mmio,
        irqfds,
        console,
        console_bridge,
        serial_progress,
        handles: DeviceHandles {
            serial,
            i8042,
            legacy,
        },
    })
}

/// Step 5: vCPUs with per-vCPU CPUID, MSRs, FPU and LAPIC; the boot vCPU
/// also gets the entry registers, the others wait for INIT/SIPI.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8, entry: BootEntry) -> Result<Vec<Vcpu>, Error> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let quirks = probe::cpuid_quirks();
    let mut vcpus = Vec::with_capacity(count as usize);
    for id in 0..count {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        let v = Vcpu::new(fd, id, &base_cpuid, quirks)?;
        if id == 0 {
            v.set_boot_entry(entry)?;
        }
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// Restore step: vCPUs created in id order, each given its saved state.
fn restore_vcpus(vm: &VmFd, saved: &[VcpuState]) -> Result<Vec<Vcpu>, SnapshotError> {
    saved
        .iter()
        .map(|s| {
            let fd = vm
                .create_vcpu(u64::from(s.id))
                .map_err(|e| SnapshotError::Kvm("KVM_CREATE_VCPU", e))?;
            kvm_state::restore_vcpu(&fd, s)?;
            Ok(Vcpu::restored(fd, s.id))
        })
        .collect()
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

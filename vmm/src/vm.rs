//! The built VM ([`Vm`]), what its run measured ([`RunReport`]), and
//! saving a paused one to a snapshot file.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{RestoreConfig, VmConfig};
use crate::devices::i8042::I8042Device;
use crate::devices::legacy::LegacyDevice;
use crate::devices::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::Bus;
use crate::error::Error;
use crate::event::VmEvent;
use crate::exit_reason::ExitReason;
use crate::memory::GuestMem;
use crate::snapshot::state::{DeviceState, VmState};
use crate::snapshot::{build_id, format, kvm_state, SnapshotError};
use crate::vcpu::Vcpu;
use crate::virtio::ConsoleTransport;
use crate::{bridge, exit_stats, gdb, snapshot};

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
pub(crate) struct DeviceHandles {
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<I8042Device>>,
    pub(crate) legacy: Arc<Mutex<LegacyDevice>>,
}

/// A fully built VM, ready to [`run`](Vm::run).
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    /// Guest RAM, mapped into the VM: dropped after `vm` (field order).
    pub(crate) mem: Arc<GuestMem>,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) exit_tx: Sender<VmEvent>,
    pub(crate) exit_rx: Receiver<VmEvent>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stall_timeout: Option<Duration>,
    /// Bytes the guest has written to the serial port: its progress.
    pub(crate) serial_progress: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) irqfds: Vec<(Arc<EventFd>, u32)>,
    pub(crate) console: ConsoleTransport,
    pub(crate) console_bridge: Option<bridge::SocketBridge>,
    pub(crate) devices: DeviceHandles,
    pub(crate) machine: snapshot::state::MachineState,
    pub(crate) snapshot_to: Option<PathBuf>,
    pub(crate) restore_times: Option<RestoreTimes>,
    /// The gdb stub, when asked for.
    pub(crate) debugger: Option<gdb::Debugger>,
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

/// Builds and runs a VM in one call.
pub fn run_vm(cfg: &VmConfig) -> Result<RunReport, Error> {
    Vm::new(cfg)?.run()
}

/// Restores and runs a VM in one call.
pub fn restore_vm(cfg: &RestoreConfig) -> Result<RunReport, Error> {
    Vm::restore(cfg)?.run()
}

impl Vm {
    /// Saves the VM to `path`. Every vCPU must be out of `KVM_RUN` for good
    /// (their threads joined) and the console bridge stopped, so neither
    /// guest RAM nor device state changes underneath. Returns the file size.
    pub(crate) fn save_snapshot(&self, path: &Path, vcpus: &[Vcpu]) -> Result<u64, SnapshotError> {
        let id = build_id()?;
        let msrs = kvm_state::msr_indices(&self.kvm)?;
        let caps = kvm_state::VcpuCaps::probe(&self.kvm);
        let vcpu_states = vcpus
            .iter()
            .map(|v| kvm_state::save_vcpu(v.fd(), v.id, &msrs, caps))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = kvm_state::save_vm(&self.vm)?;
        let console = lock(&self.console);
        let devices = DeviceState {
            serial: lock(&self.devices.serial).snapshot(),
            i8042: lock(&self.devices.i8042).snapshot(),
            legacy: lock(&self.devices.legacy).snapshot(),
            console_transport: console.snapshot(),
            console: console.device().snapshot(),
        };
        drop(console);
        let state = VmState {
            machine: self.machine.clone(),
            vm,
            vcpus: vcpu_states,
            devices,
        };
        // Never write what restore would refuse.
        state.validate()?;
        format::write(path, &id, &state.to_json()?, &self.mem)
    }
}

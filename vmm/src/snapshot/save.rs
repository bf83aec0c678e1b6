//! Collecting a paused VM's state and writing it out.

use std::path::Path;

use super::state::{DeviceState, VmState};
use super::{build_id, format, kvm_state, SnapshotError};
use crate::devices::lock;
use crate::vcpu::Vcpu;
use crate::Vm;

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

//! The serialisable VM state (everything but guest RAM), and its checks as
//! untrusted input.
//!
//! KVM structures go through kvm-bindings' serde support, which writes their
//! raw bytes; [`Raw`] adds an exact length check on the way back in (the
//! library pads or truncates silently).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    KVM_MAX_CPUID_ENTRIES,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::SnapshotError;
use crate::arch::x86_64::mptable;
use crate::devices::i8042::I8042Snapshot;
use crate::devices::legacy::LegacySnapshot;
use crate::devices::serial::SerialSnapshot;
use crate::memory;
use crate::virtio::console::ConsoleSnapshot;
use crate::virtio::mmio::TransportSnapshot;
use crate::virtio::VirtioSlot;

/// Most MSRs a vCPU state may carry (KVM lists a few hundred at most).
pub const MAX_MSRS: usize = 4096;

/// A KVM structure stored as its exact bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw<T>(pub T);

impl<T: Serialize> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        let want = std::mem::size_of::<T>();
        if bytes.len() != want {
            return Err(D::Error::custom(format!(
                "{}: {} bytes, expected {want}",
                std::any::type_name::<T>(),
                bytes.len()
            )));
        }
        T::deserialize(serde::de::value::BytesDeserializer::<D::Error>::new(&bytes)).map(Raw)
    }
}

/// The machine's shape: what a fresh VM would have been built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB (laid out by [`memory::ram_ranges`]).
    pub mem_mib: u64,
    /// Command line as given at boot (informational: it is in guest RAM).
    pub cmdline: String,
    /// Kernel path at boot (informational).
    pub kernel: String,
    /// Where the virtio-console sits: (MMIO base, size, GSI).
    pub console_slot: (u64, u64, u32),
}

/// VM-wide in-kernel device state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    /// PIC master (`KVM_IRQCHIP_PIC_MASTER`).
    pub pic_master: Raw<kvm_irqchip>,
    /// PIC slave.
    pub pic_slave: Raw<kvm_irqchip>,
    /// IOAPIC.
    pub ioapic: Raw<kvm_irqchip>,
    /// PIT (i8254) channels.
    pub pit: Raw<kvm_pit_state2>,
    /// kvmclock.
    pub clock: Raw<kvm_clock_data>,
}

/// One vCPU's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (and APIC ID).
    pub id: u8,
    /// CPUID as set at boot.
    pub cpuid: Vec<Raw<kvm_cpuid_entry2>>,
    /// MSRs, `MSR_IA32_TSC` first.
    pub msrs: Vec<Raw<kvm_msr_entry>>,
    /// General-purpose registers.
    pub regs: Raw<kvm_regs>,
    /// Segment, control and descriptor-table registers.
    pub sregs: Raw<kvm_sregs>,
    /// FPU, SSE and AVX state (XSAVE area; KVM has had it since 2.6.36).
    pub xsave: Raw<kvm_xsave>,
    /// Extended control registers, if KVM supports them.
    pub xcrs: Option<Raw<kvm_xcrs>>,
    /// Local APIC registers.
    pub lapic: Raw<kvm_lapic_state>,
    /// Pending exceptions, interrupts, NMIs, SIPI vector.
    pub events: Raw<kvm_vcpu_events>,
    /// Debug registers.
    pub debugregs: Raw<kvm_debugregs>,
    /// Run state (runnable, halted, waiting for SIPI...).
    pub mp_state: Raw<kvm_mp_state>,
}

/// Every VMM device with state (the ACPI PM block has none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    /// COM1 UART.
    pub serial: SerialSnapshot,
    /// i8042 controller.
    pub i8042: I8042Snapshot,
    /// CMOS index and port B.
    pub legacy: LegacySnapshot,
    /// virtio-mmio transport of the console.
    pub console_transport: TransportSnapshot,
    /// virtio-console device.
    pub console: ConsoleSnapshot,
}

/// Everything in a snapshot but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Shape of the machine.
    pub machine: MachineState,
    /// In-kernel irqchip, PIT and clock.
    pub vm: KvmVmState,
    /// One entry per vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// VMM devices.
    pub devices: DeviceState,
}

impl VmState {
    /// Parses the state section of a snapshot.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let s: VmState = serde_json::from_slice(bytes)
            .map_err(|e| SnapshotError::Corrupt(format!("state section: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    /// Serialises the state section.
    pub fn to_json(&self) -> Result<Vec<u8>, SnapshotError> {
        serde_json::to_vec(self).map_err(|e| SnapshotError::Corrupt(format!("state section: {e}")))
    }

    /// Bounds-checks everything a restore sizes or indexes by, against the
    /// limits a fresh VM obeys; device contents are checked by the devices.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Corrupt(m));
        let m = &self.machine;
        if m.vcpus == 0 || m.vcpus > mptable::MAX_VCPUS {
            return bad(format!(
                "{} vCPUs, must be 1..={}",
                m.vcpus,
                mptable::MAX_VCPUS
            ));
        }
        memory::checked_size(m.mem_mib).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let slot = VirtioSlot::nth(0);
        if m.console_slot != (slot.addr, slot.size, slot.irq) {
            return bad(format!(
                "console slot {:x?} differs from this VMM's",
                m.console_slot
            ));
        }
        if self.vcpus.len() != usize::from(m.vcpus) {
            return bad(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                m.vcpus
            ));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.id) != i {
                return bad(format!("vCPU state {i} has id {}", v.id));
            }
            if v.cpuid.is_empty() || v.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
                return bad(format!("vCPU {i}: {} CPUID entries", v.cpuid.len()));
            }
            if v.msrs.len() > MAX_MSRS {
                return bad(format!("vCPU {i}: {} MSRs", v.msrs.len()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible state for a 2-vCPU, 64 MiB VM.
    pub(crate) fn sample() -> VmState {
        let slot = VirtioSlot::nth(0);
        let vcpu = |id| VcpuState {
            id,
            cpuid: vec![Raw(kvm_cpuid_entry2 {
                function: 1,
                ebx: u32::from(id) << 24,
                ..Default::default()
            })],
            msrs: vec![Raw(kvm_msr_entry {
                index: 0x10,
                data: 12345,
                ..Default::default()
            })],
            regs: Raw(kvm_regs {
                rip: 0x100000 + u64::from(id),
                ..Default::default()
            }),
            sregs: Raw(Default::default()),
            xsave: Raw(Default::default()),
            xcrs: None,
            lapic: Raw(Default::default()),
            events: Raw(Default::default()),
            debugregs: Raw(Default::default()),
            mp_state: Raw(Default::default()),
        };
        VmState {
            machine: MachineState {
                vcpus: 2,
                mem_mib: 64,
                cmdline: "console=ttyS0".into(),
                kernel: "/k".into(),
                console_slot: (slot.addr, slot.size, slot.irq),
            },
            vm: KvmVmState {
                pic_master: Raw(Default::default()),
                pic_slave: Raw(Default::default()),
                ioapic: Raw(Default::default()),
                pit: Raw(Default::default()),
                clock: Raw(kvm_clock_data {
                    clock: 987654321,
                    ..Default::default()
                }),
            },
            vcpus: vec![vcpu(0), vcpu(1)],
            devices: DeviceState {
                serial: crate::devices::serial::SerialSnapshot {
                    baud_divisor_low: 12,
                    baud_divisor_high: 0,
                    interrupt_enable: 0,
                    interrupt_identification: 1,
                    line_control: 3,
                    line_status: 0x60,
                    modem_control: 8,
                    modem_status: 0xb0,
                    scratch: 0,
                    in_buffer: b"x".to_vec(),
                },
                i8042: I8042Snapshot {
                    status: 4,
                    control: 0,
                    out: None,
                    expect_ctr: false,
                },
                legacy: LegacySnapshot::default(),
                console_transport: TransportSnapshot {
                    status: 0,
                    interrupt_status: 0,
                    device_features_sel: 0,
                    driver_features_sel: 0,
                    driver_features: 0,
                    queue_sel: 0,
                    config_generation: 0,
                    last_error: None,
                    queues: vec![],
                },
                console: ConsoleSnapshot::default(),
            },
        }
    }

    #[test]
    fn json_round_trip_keeps_kvm_structures() {
        let s = sample();
        let back = VmState::from_json(&s.to_json().unwrap()).unwrap();
        assert_eq!(back.machine, s.machine);
        assert_eq!(back.vcpus[1].regs.0.rip, 0x100001);
        assert_eq!(back.vcpus[1].cpuid[0].0.ebx, 1 << 24);
        assert_eq!(back.vcpus[0].msrs[0].0.data, 12345);
        assert_eq!(back.vm.clock.0.clock, 987654321);
        assert_eq!(back.devices.serial, s.devices.serial);
        assert!(back.vcpus[0].xcrs.is_none());
    }

    #[test]
    fn wrong_structure_length_is_refused() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
        v["vcpus"][0]["regs"].as_array_mut().unwrap().pop();
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = VmState::from_json(&bytes).unwrap_err().to_string();
        assert!(e.contains("kvm_regs"), "{e}");
    }

    #[test]
    fn counts_and_sizes_are_bounds_checked() {
        type Mutation = fn(&mut VmState);
        let cases: Vec<(&str, Mutation)> = vec![
            ("0 vCPUs", |s| s.machine.vcpus = 0),
            ("255 vCPUs", |s| s.machine.vcpus = 255),
            ("vCPU states", |s| s.machine.vcpus = 3),
            ("vCPU states", |s| drop(s.vcpus.pop())),
            ("has id", |s| s.vcpus[1].id = 0),
            ("too small", |s| s.machine.mem_mib = 1),
            ("too large", |s| s.machine.mem_mib = u64::MAX / 2),
            ("CPUID", |s| s.vcpus[0].cpuid.clear()),
            ("CPUID", |s| {
                let e = s.vcpus[0].cpuid[0];
                s.vcpus[0].cpuid = vec![e; KVM_MAX_CPUID_ENTRIES + 1]
            }),
            ("MSRs", |s| {
                let e = s.vcpus[0].msrs[0];
                s.vcpus[0].msrs = vec![e; MAX_MSRS + 1]
            }),
            ("console slot", |s| s.machine.console_slot.0 = 0),
        ];
        for (want, f) in cases {
            let mut s = sample();
            f(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        sample().validate().unwrap();
    }
}

//! Can this host's KVM run a stock Linux kernel?
//!
//! Hardware KVM means `kvm_intel` or `kvm_amd` is loaded, `/dev/kvm` opens
//! and `KVM_CREATE_VM` works. PVM (`kvm_pvm`) runs small guests but emulates
//! every CPL0 instruction and lacks some, so stock kernels do not boot.

use std::path::Path;

/// Result of [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// True when stock Linux kernels can run here.
    pub usable: bool,
    /// One-line human-readable explanation.
    pub reason: String,
}

/// Where loaded kernel modules show up.
const SYS_MODULE: &str = "/sys/module";
/// The KVM device node.
pub const KVM_DEV: &str = "/dev/kvm";

fn module_loaded(sys_module: &Path, name: &str) -> bool {
    sys_module.join(name).exists()
}

/// True when the host's KVM is PVM (`kvm_pvm` module loaded).
pub fn host_is_pvm() -> bool {
    module_loaded(Path::new(SYS_MODULE), "kvm_pvm")
}

/// The hypervisor this host itself runs under, from CPUID leaf
/// 0x4000_0000 (`TCGTCGTCGTCG` for QEMU's TCG, `KVMKVMKVM\0\0\0` for
/// KVM), when leaf 1 says there is one.
pub fn host_hypervisor_vendor() -> Option<[u8; 12]> {
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // A hypervisor that sets the bit answers leaf 0x4000_0000.
    let h = std::arch::x86_64::__cpuid(0x4000_0000);
    let mut vendor = [0u8; 12];
    for (i, r) in [h.ebx, h.ecx, h.edx].iter().enumerate() {
        vendor[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    Some(vendor)
}

/// True when this host's CPU is QEMU's TCG emulator (so its KVM, if any,
/// runs on emulated SVM/VMX: `lab nested`).
pub fn host_is_tcg() -> bool {
    host_hypervisor_vendor().is_some_and(|v| &v == b"TCGTCGTCGTCG")
}

/// What this host needs hidden from guests ([`cpuid::CpuidQuirks`]).
pub fn cpuid_quirks() -> crate::arch::x86_64::cpuid::CpuidQuirks {
    crate::arch::x86_64::cpuid::CpuidQuirks {
        pvm: host_is_pvm(),
        tcg_host: host_is_tcg(),
    }
}

/// Probes the real host.
pub fn probe() -> Probe {
    probe_with(Path::new(SYS_MODULE), Path::new(KVM_DEV), || {
        kvm_ioctls::Kvm::new()
            .and_then(|k| k.create_vm().map(|_| ()))
            .map_err(|e| e.to_string())
    })
}

/// Probe logic with injectable paths and VM creation, for tests.
pub fn probe_with(
    sys_module: &Path,
    kvm_dev: &Path,
    create_vm: impl FnOnce() -> Result<(), String>,
) -> Probe {
    let no = |reason: String| Probe {
        usable: false,
        reason,
    };
    if !kvm_dev.exists() {
        return no(format!(
            "{} does not exist: no KVM on this host",
            kvm_dev.display()
        ));
    }
    if module_loaded(sys_module, "kvm_pvm") {
        return no(format!(
            "{} is PVM (kvm_pvm loaded): stock kernels cannot run",
            kvm_dev.display()
        ));
    }
    let vendor = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| module_loaded(sys_module, m));
    let Some(vendor) = vendor else {
        return no(format!(
            "{} exists but neither kvm_intel nor kvm_amd is loaded",
            kvm_dev.display()
        ));
    };
    match create_vm() {
        Ok(()) => Probe {
            usable: true,
            reason: format!(
                "hardware KVM ({vendor}): {} opens and KVM_CREATE_VM works",
                kvm_dev.display()
            ),
        },
        Err(e) => no(format!(
            "hardware KVM ({vendor}) but KVM_CREATE_VM failed: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(mods: &[&str]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmm-probe-{}-{}",
            std::process::id(),
            mods.join("-")
        ));
        let _ = std::fs::remove_dir_all(&d);
        for m in mods {
            std::fs::create_dir_all(d.join("sys").join(m)).unwrap();
        }
        std::fs::create_dir_all(d.join("sys")).unwrap();
        std::fs::write(d.join("kvm"), b"").unwrap();
        d
    }

    #[test]
    fn pvm_is_not_usable() {
        let d = fake(&["kvm", "kvm_pvm"]);
        let p = probe_with(&d.join("sys"), &d.join("kvm"), || Ok(()));
        assert!(!p.usable);
        assert!(p.reason.contains("PVM (kvm_pvm loaded)"), "{}", p.reason);
    }

    #[test]
    fn hardware_kvm_is_usable_when_vm_creation_works() {
        let d = fake(&["kvm", "kvm_intel"]);
        assert!(probe_with(&d.join("sys"), &d.join("kvm"), || Ok(())).usable);
        let p = probe_with(&d.join("sys"), &d.join("kvm"), || Err("EPERM".into()));
        assert!(!p.usable && p.reason.contains("EPERM"));
        let p = probe_with(&d.join("sys"), &d.join("nope"), || Ok(()));
        assert!(!p.usable && p.reason.contains("does not exist"));
        let d2 = fake(&["kvm"]);
        assert!(!probe_with(&d2.join("sys"), &d2.join("kvm"), || Ok(())).usable);
    }
}

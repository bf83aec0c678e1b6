//! Can this host's KVM run a stock Linux kernel? Decided by looking, not
//! guessing: `/dev/kvm` must open, and the module behind it must be a
//! hardware one (`kvm_intel`/`kvm_amd`), not PVM (`kvm_pvm`), which emulates
//! every kernel-mode instruction and cannot run a stock kernel.

use std::path::Path;

/// Probe outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Hardware KVM that can run a stock kernel.
    pub usable: bool,
    /// One line saying why.
    pub reason: String,
}

/// Probe with the host's real paths.
pub fn probe() -> Probe {
    probe_at(Path::new("/"))
}

/// Probe below `root` (for tests).
pub fn probe_at(root: &Path) -> Probe {
    let dev = root.join("dev/kvm");
    let module = |m: &str| root.join("sys/module").join(m).exists();
    if module("kvm_pvm") {
        return Probe {
            usable: false,
            reason: "/dev/kvm is PVM (kvm_pvm loaded), which cannot run a stock kernel".into(),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        return Probe {
            usable: false,
            reason: format!("{} unusable: {e}", dev.display()),
        };
    }
    match ["kvm_intel", "kvm_amd"].into_iter().find(|m| module(m)) {
        Some(m) => Probe {
            usable: true,
            reason: format!("hardware KVM ({m}) at {}", dev.display()),
        },
        None => Probe {
            usable: false,
            reason: "/dev/kvm is not backed by kvm_intel or kvm_amd".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(modules: &[&str], with_dev: bool) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "arena-probe-{}-{}-{with_dev}",
            std::process::id(),
            modules.join("-")
        ));
        let _ = std::fs::remove_dir_all(&root);
        for m in modules {
            std::fs::create_dir_all(root.join("sys/module").join(m)).unwrap();
        }
        std::fs::create_dir_all(root.join("dev")).unwrap();
        if with_dev {
            std::fs::write(root.join("dev/kvm"), b"").unwrap();
        }
        root
    }

    #[test]
    fn pvm_is_not_usable() {
        let p = probe_at(&fake(&["kvm", "kvm_pvm"], true));
        assert!(!p.usable);
        assert!(p.reason.contains("PVM"));
    }

    #[test]
    fn hardware_kvm_is_usable() {
        let p = probe_at(&fake(&["kvm", "kvm_intel"], true));
        assert!(p.usable, "{}", p.reason);
    }

    #[test]
    fn missing_device_is_not_usable() {
        let p = probe_at(&fake(&["kvm_amd"], false));
        assert!(!p.usable);
        assert!(p.reason.contains("unusable"));
    }
}

//! QEMU `microvm` backend: virtio-mmio devices discovered through ACPI, the
//! kernel log on the 8250 UART, the results channel on a virtconsole.

use std::process::Command;

use super::{Backend, Console, VmSpec};

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// The QEMU backend.
pub struct Qemu {
    accel: Accel,
    binary: String,
}

impl Qemu {
    /// QEMU with `accel` (binary from `ARENA_LAB_QEMU`, default `qemu-system-x86_64`).
    pub fn new(accel: Accel) -> Self {
        Qemu {
            accel,
            binary: std::env::var("ARENA_LAB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        }
    }
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accelerator(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn command(&self, spec: &VmSpec) -> Command {
        let mut c = Command::new(&self.binary);
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        c.args(["-M", "microvm", "-accel", accel, "-cpu", cpu])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.vcpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&spec.kernel)
            .args(["-append", &spec.cmdline]);
        if let Some(initrd) = &spec.initrd {
            c.arg("-initrd").arg(initrd);
        }
        match &spec.console {
            Console::File(p) => {
                c.arg("-chardev")
                    .arg(format!("file,id=serial0,path={}", p.display()));
            }
            Console::Stdout => {
                c.args(["-chardev", "stdio,id=serial0,signal=off"]);
            }
        }
        c.args(["-serial", "chardev:serial0"]);
        if let Some(sock) = &spec.channel {
            c.args(["-device", "virtio-serial-device,max_ports=1"])
                .arg("-chardev")
                .arg(format!("socket,id=results,path={}", sock.display()))
                .args(["-device", "virtconsole,chardev=results"]);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn command_wires_serial_and_results_channel() {
        let spec = VmSpec {
            kernel: PathBuf::from("/k/vmlinux"),
            initrd: Some(PathBuf::from("/i.cpio.zst")),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 512,
            console: Console::File(PathBuf::from("/r/console.log")),
            channel: Some(PathBuf::from("/tmp/s.sock")),
        };
        let c = Qemu::new(Accel::Tcg).command(&spec);
        let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm -accel tcg"), "{joined}");
        assert!(joined.contains("file,id=serial0,path=/r/console.log"));
        assert!(joined.contains("socket,id=results,path=/tmp/s.sock"));
        assert!(joined.contains("virtconsole,chardev=results"));
        assert!(joined.contains("-initrd /i.cpio.zst"));
    }
}

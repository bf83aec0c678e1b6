//! Our own VMM (`vmm/`, binary `arena-vmm`) as a backend: run as a separate
//! process so a hostile or crashing guest can only take that process down.

use std::path::PathBuf;
use std::process::Command;

use super::{Backend, Console, VmSpec};

/// Console log level while booting under the own VMM (the agent raises it to
/// 7 once up): warnings, oopses and worse still reach `console.log`, the
/// info chatter does not. Every console byte costs two VM exits (LSR poll,
/// THR write), and under KVM exits are the cost of a boot: measured in
/// `lab nested`, replaying the full boot log took 8.4 s of a 19.8 s boot.
/// Placed first, so a user's `--append loglevel=N` still wins.
pub const BOOT_LOGLEVEL: &str = "loglevel=5";

/// The own-VMM backend.
pub struct OwnVmm {
    binary: PathBuf,
}

impl OwnVmm {
    /// Find `arena-vmm` next to the running `lab` binary (or `ARENA_LAB_VMM`).
    pub fn locate() -> Result<Self, String> {
        if let Some(p) = std::env::var_os("ARENA_LAB_VMM") {
            return Ok(OwnVmm { binary: p.into() });
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().ok_or("lab has no parent directory")?;
        // Test binaries live in target/<profile>/deps.
        for cand in [dir.join("arena-vmm"), dir.join("../arena-vmm")] {
            if cand.is_file() {
                return Ok(OwnVmm { binary: cand });
            }
        }
        Err(format!(
            "arena-vmm not found next to {} (build it with `cargo build --release`)",
            exe.display()
        ))
    }
}

impl Backend for OwnVmm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn accelerator(&self) -> &'static str {
        "kvm"
    }

    fn command(&self, spec: &VmSpec) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--kernel")
            .arg(&spec.kernel)
            .args(["--cmdline", &format!("{BOOT_LOGLEVEL} {}", spec.cmdline)])
            .args(["--vcpus", &spec.vcpus.to_string()])
            .args(["--mem-mib", &spec.memory_mib.to_string()]);
        if let Some(initrd) = &spec.initrd {
            c.arg("--initrd").arg(initrd);
        }
        match &spec.console {
            Console::File(p) => c.arg("--serial").arg(p),
            Console::Stdout => c.args(["--serial", "-"]),
        };
        if let Some(sock) = &spec.channel {
            c.arg("--console-socket").arg(sock);
        }
        c
    }
}

//! Our own VMM (`vmm/`, binary `arena-vmm`) as a backend: run as a separate
//! process so a hostile or crashing guest can only take that process down.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use vmm::{SerialOutput, VmConfig};

use super::{console_label, wire_console, Backend, Console, SerialTarget, VmSpec};

/// Console log level while booting under the own VMM (the agent raises it to
/// 7 once up): warnings, oopses and worse still reach `console.log`, the
/// info chatter does not. Every console byte costs two VM exits (LSR poll,
/// THR write), and under KVM exits are the cost of a boot: measured in
/// `lab nested`, replaying the full boot log took 8.4 s of a 19.8 s boot.
/// Placed first, so a user's `--append loglevel=N` still wins.
pub const BOOT_LOGLEVEL: &str = "loglevel=5";

/// The VM `spec` describes, as the VMM's own config: its argv comes from
/// `VmConfig::to_args`, the format `arena-vmm` parses.
pub fn vm_config(spec: &VmSpec) -> VmConfig {
    let mut cfg = VmConfig::new(&spec.kernel);
    cfg.initrd.clone_from(&spec.initrd);
    cfg.cmdline = format!("{BOOT_LOGLEVEL} {}", spec.cmdline);
    // Out-of-range counts saturate and the VMM refuses them (max 32 vCPUs).
    cfg.vcpus = u8::try_from(spec.vcpus).unwrap_or(u8::MAX);
    cfg.mem_mib = u64::from(spec.memory_mib);
    cfg.serial = match &spec.console {
        Console::File(p) => SerialOutput::File(p.clone()),
        Console::Stdout => SerialOutput::Stdout,
    };
    cfg.console_socket.clone_from(&spec.channel);
    cfg
}

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

    /// The VMM writes its serial console into the runner's capture pipe
    /// (`--serial /proc/self/fd/3`); its argv[0] names the console file, for `ps`
    /// and for finding a scenario's VM.
    fn command(&self, spec: &VmSpec) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(p) = console_label(&spec.console) {
            c.arg0(format!("arena-vmm (console {})", p.display()));
        }
        let console = match wire_console(&mut c, spec) {
            SerialTarget::Path(p) => Console::File(p),
            SerialTarget::Stdout => Console::Stdout,
        };
        let spec = VmSpec {
            console,
            ..spec.clone()
        };
        c.args(vm_config(&spec).to_args());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The argv the runner hands `arena-vmm` parses back into the VM the
    /// spec describes, boot log level first on the command line.
    #[test]
    fn argv_parses_back_to_the_spec() {
        let spec = VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 loglevel=7".into(),
            vcpus: 2,
            memory_mib: 768,
            console: Console::File("/r/console.log".into()),
            channel: Some("/r/chan.sock".into()),
            gdb: None,
            snapshot: None,
        };
        let args = vm_config(&spec).to_args();
        let cfg = VmConfig::from_args(&args).unwrap();
        assert_eq!(cfg.kernel, spec.kernel);
        assert_eq!(cfg.initrd, spec.initrd);
        assert_eq!(cfg.cmdline, "loglevel=5 console=ttyS0 loglevel=7");
        assert_eq!((cfg.vcpus, cfg.mem_mib), (2, 768));
        assert!(
            matches!(cfg.serial, SerialOutput::File(ref p) if p.to_str() == Some("/r/console.log"))
        );
        assert_eq!(cfg.console_socket, spec.channel);
    }

    /// The VMM gets the capture pipe as its serial file, really as fd 3:
    /// what a stand-in VMM writes there ends up in the console file.
    #[test]
    fn command_hands_the_vmm_the_capture_pipe() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("arena-kvm-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-vmm");
        std::fs::write(&fake, "#!/bin/sh\necho \"console of $1 $2\" >&3\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let console = dir.join("console.log");
        let spec = VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            console: Console::File(console.clone()),
            channel: None,
            gdb: None,
            snapshot: None,
        };
        let mut c = OwnVmm { binary: fake }.command(&spec);
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let cfg = VmConfig::from_args(&args).unwrap();
        assert!(
            matches!(cfg.serial, SerialOutput::File(ref p) if p.to_str() == Some("/proc/self/fd/3"))
        );
        // A fork elsewhere in the test process may briefly hold the script
        // open for writing (ETXTBSY): try again.
        let status = (0..100)
            .find_map(|_| match c.status() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                other => Some(other.unwrap()),
            })
            .expect("the stand-in VMM stayed busy");
        assert!(status.success());
        drop(c);
        let text = crate::console_capture::read_for_verdict(&console).unwrap();
        assert_eq!(text, "console of --kernel /k/vmlinux\n");
    }
}

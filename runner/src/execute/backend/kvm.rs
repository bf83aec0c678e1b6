//! Our own VMM (`vmm/`, binary `arena-vmm`) as a backend: run as a separate
//! process so a hostile or crashing guest can only take that process down.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Instant;

use vmm::{RestoreConfig, SerialOutput, VmConfig};

use super::{
    console_label, wire_console, Backend, Console, GdbStub, GdbWhen, SerialTarget, SnapshotRole,
    VmCommand, VmSpec,
};

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
    cfg.host.serial = serial_output(&spec.console);
    cfg.host.console_socket.clone_from(&spec.channel);
    if let Some(SnapshotRole::Save { state, .. }) = &spec.snapshot {
        cfg.host.snapshot_to = Some(state.clone());
    }
    cfg.host.gdb = spec.gdb.map(gdb_stub);
    cfg
}

/// The VMM's own gdb stub on localhost: `--gdb` holds the VM's first
/// instruction until gdb resumes it (like QEMU's `-gdb … -S`);
/// `--gdb-on-fail` opens it only on SIGUSR2 ([`Backend::hold_for_gdb`]).
fn gdb_stub(stub: GdbStub) -> vmm::gdb::GdbConfig {
    vmm::gdb::GdbConfig {
        addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, stub.port)),
        wait: stub.when == GdbWhen::Start,
    }
}

/// A VM restored from `state` (the shape comes from the snapshot), with
/// `spec`'s console and results channel.
fn restore_config(spec: &VmSpec, state: &std::path::Path) -> RestoreConfig {
    let mut cfg = RestoreConfig::new(state);
    // `snapshot` checked the file's sha256 before this run's first restore.
    cfg.trust_checksum = true;
    cfg.host.serial = serial_output(&spec.console);
    cfg.host.console_socket.clone_from(&spec.channel);
    cfg
}

/// Where the VMM writes the serial console for `console`.
fn serial_output(console: &Console) -> SerialOutput {
    match console {
        Console::File(p) => SerialOutput::File(p.clone()),
        Console::Stdout => SerialOutput::Stdout,
    }
}

/// The own-VMM backend.
pub struct OwnVmm {
    binary: PathBuf,
    /// Snapshots (off with `ARENA_LAB_OWN_VMM_SNAPSHOTS=0`; `lab bench`
    /// measures them either way).
    snapshots: bool,
}

/// `0` turns the own VMM's snapshots off for `lab run` (every scenario
/// boots). They were opt-in until session 6: a restored VM under nested KVM
/// had taken a double fault in `__kmalloc_node`, which turned out to be
/// QEMU 7.2's CMPXCHG16B flags bug, cold boots included (see
/// `vmm::arch::x86_64::cpuid::CpuidQuirks::tcg_host`).
pub const SNAPSHOTS_ENV: &str = "ARENA_LAB_OWN_VMM_SNAPSHOTS";

impl OwnVmm {
    /// Find `arena-vmm` next to the running `lab` binary (or `ARENA_LAB_VMM`).
    pub fn locate() -> Result<Self, String> {
        if let Some(p) = std::env::var_os("ARENA_LAB_VMM") {
            return Ok(OwnVmm::at(p.into()));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().ok_or("lab has no parent directory")?;
        // Test binaries live in target/<profile>/deps.
        for cand in [dir.join("arena-vmm"), dir.join("../arena-vmm")] {
            if cand.is_file() {
                return Ok(OwnVmm::at(cand));
            }
        }
        Err(format!(
            "arena-vmm not found next to {} (build it with `cargo build --release`)",
            exe.display()
        ))
    }
}

impl OwnVmm {
    fn at(binary: PathBuf) -> OwnVmm {
        OwnVmm {
            binary,
            snapshots: std::env::var_os(SNAPSHOTS_ENV).is_none_or(|v| v != "0"),
        }
    }

    /// The same VMM with snapshots on whatever the environment says
    /// (`lab bench` measures them).
    pub fn with_snapshots(self) -> OwnVmm {
        OwnVmm {
            snapshots: true,
            ..self
        }
    }
}

impl Backend for OwnVmm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn accelerator(&self) -> &'static str {
        "kvm"
    }

    /// `arena-vmm --gdb` (see `vmm::gdb`).
    fn has_gdb_stub(&self) -> bool {
        true
    }

    /// SIGUSR2: `arena-vmm --gdb-on-demand` pauses every vCPU and opens
    /// its stub.
    fn hold_for_gdb(&self, vm: &mut Child, _spec: &VmSpec) -> Result<(), String> {
        let pid = libc::pid_t::try_from(vm.id()).map_err(|e| e.to_string())?;
        // SAFETY: kill takes no pointers; `vm` is our child, not yet reaped
        // (the caller checked it still runs), so the pid is still its own.
        if unsafe { libc::kill(pid, libc::SIGUSR2) } != 0 {
            return Err(format!(
                "SIGUSR2 to arena-vmm: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The VMM writes its serial console into the runner's capture pipe
    /// (`--serial /proc/self/fd/3`); its argv[0] names the console file, for `ps`
    /// and for finding a scenario's VM.
    fn command(&self, spec: &VmSpec) -> VmCommand {
        let mut c = Command::new(&self.binary);
        if let Some(p) = console_label(&spec.console) {
            c.arg0(format!("arena-vmm (console {})", p.display()));
        }
        let (target, capture) = wire_console(&mut c, spec);
        let console = match target {
            SerialTarget::Path(p) => Console::File(p),
            SerialTarget::Stdout => Console::Stdout,
        };
        let spec = VmSpec {
            console,
            ..spec.clone()
        };
        match &spec.snapshot {
            Some(SnapshotRole::Restore { state, .. }) => {
                c.args(restore_config(&spec, state).to_args())
            }
            _ => c.args(vm_config(&spec).to_args()),
        };
        VmCommand {
            command: c,
            console: capture,
        }
    }

    /// The VMM refuses another build's snapshot itself; keying by the
    /// binary's sha256 makes a rebuilt VMM make a new one instead.
    fn snapshot_identity(&self) -> Result<String, String> {
        if !self.snapshots {
            return Err(format!("own-VMM snapshots are off ({SNAPSHOTS_ENV}=0)"));
        }
        static ID: OnceLock<Result<String, String>> = OnceLock::new();
        ID.get_or_init(|| {
            arena_images::sha256_file(&self.binary)
                .map(|sha| format!("arena-vmm sha256 {sha}"))
                .map_err(|e| format!("{}: {e}", self.binary.display()))
        })
        .clone()
    }

    /// SIGUSR1: the VMM pauses the vCPUs, writes the state it was started
    /// with `--snapshot-to` for, and exits [`vmm::EXIT_SNAPSHOT_SAVED`].
    fn save_snapshot(
        &self,
        vm: &mut Child,
        role: &SnapshotRole,
        deadline: Instant,
    ) -> Result<(), String> {
        if !matches!(role, SnapshotRole::Save { .. }) {
            return Err("not a VM booted to be saved".into());
        }
        let pid = libc::pid_t::try_from(vm.id()).map_err(|e| e.to_string())?;
        // SAFETY: kill takes no pointers; `vm` is our unreaped child.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(format!(
                "signalling arena-vmm: {}",
                std::io::Error::last_os_error()
            ));
        }
        match super::exit_by(vm, deadline)? {
            Some(st) if st.code() == Some(vmm::EXIT_SNAPSHOT_SAVED) => Ok(()),
            Some(st) => Err(format!("arena-vmm did not save the VM ({st}; see vmm.log)")),
            None => Err("arena-vmm did not save the VM in time".into()),
        }
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
            matches!(cfg.host.serial, SerialOutput::File(ref p) if p.to_str() == Some("/r/console.log"))
        );
        assert_eq!(cfg.host.console_socket, spec.channel);
    }

    /// `--gdb PORT` becomes the VMM's stub on localhost, halted at start.
    #[test]
    fn gdb_port_becomes_the_vmms_stub() {
        let mut spec = VmSpec {
            gdb: Some(GdbStub::at_start(4321)),
            ..VmSpec::minimal("/k/vmlinux")
        };
        let args = vm_config(&spec).to_args();
        let text: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        let at = text.iter().position(|a| a == "--gdb").expect("--gdb");
        assert_eq!(text[at + 1], "127.0.0.1:4321");
        let cfg = VmConfig::from_args(&args).unwrap();
        assert_eq!(
            cfg.host.gdb.map(|g| (g.addr.port(), g.wait)),
            Some((4321, true))
        );
        // --gdb-on-fail: the stub opens on SIGUSR2, the VM runs meanwhile.
        spec.gdb = Some(GdbStub {
            port: 4322,
            when: GdbWhen::OnFailure,
        });
        let text: Vec<String> = vm_config(&spec)
            .to_args()
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        let at = text
            .iter()
            .position(|a| a == "--gdb-on-demand")
            .expect("--gdb-on-demand");
        assert_eq!(text[at + 1], "127.0.0.1:4322");
        spec.gdb = None;
        assert!(VmConfig::from_args(&vm_config(&spec).to_args())
            .unwrap()
            .host
            .gdb
            .is_none());
        assert!(OwnVmm::at("/bin/true".into()).has_gdb_stub());
    }

    /// Turned off, the run says why and boots cold.
    #[test]
    fn snapshots_can_be_turned_off() {
        let exe = std::env::current_exe().unwrap();
        let off = OwnVmm {
            binary: exe.clone(),
            snapshots: false,
        };
        assert!(off.snapshot_identity().unwrap_err().contains(SNAPSHOTS_ENV));
        let on = off.with_snapshots();
        assert!(on
            .snapshot_identity()
            .unwrap()
            .starts_with("arena-vmm sha256 "));
    }

    /// Saving adds `--snapshot-to`; restoring passes the snapshot, the
    /// console and the channel, and no kernel (the shape is the snapshot's).
    #[test]
    fn snapshot_roles_become_vmm_arguments() {
        let mut spec = VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 512,
            console: Console::File("/r/console.log".into()),
            channel: Some("/r/chan.sock".into()),
            gdb: None,
            snapshot: Some(SnapshotRole::Save {
                control: "/unused".into(),
                state: "/c/state".into(),
            }),
        };
        let cfg = VmConfig::from_args(&vm_config(&spec).to_args()).unwrap();
        assert_eq!(
            cfg.host.snapshot_to.as_deref(),
            Some(std::path::Path::new("/c/state"))
        );
        spec.snapshot = Some(SnapshotRole::Restore {
            state: "/c/state".into(),
            boot_console: "/c/boot-console.log".into(),
        });
        let args = restore_config(&spec, std::path::Path::new("/c/state")).to_args();
        let text: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert!(!text.iter().any(|a| a == "--kernel"), "{text:?}");
        match vmm::parse_launch(&args).unwrap() {
            vmm::Launch::Restore(r) => {
                assert_eq!(r.snapshot, std::path::PathBuf::from("/c/state"));
                assert_eq!(r.host.console_socket, spec.channel);
            }
            vmm::Launch::Boot(_) => panic!("a restore parsed as a boot"),
        }
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
            console: Console::File(console.clone()),
            ..VmSpec::minimal("/k/vmlinux")
        };
        let VmCommand {
            command: mut c,
            console: capture,
        } = OwnVmm::at(fake).command(&spec);
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let cfg = VmConfig::from_args(&args).unwrap();
        assert!(
            matches!(cfg.host.serial, SerialOutput::File(ref p) if p.to_str() == Some("/proc/self/fd/3"))
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
        let capture = capture.expect("a console file is captured");
        assert_eq!(capture.path(), console);
        let text = capture.read_for_verdict().unwrap();
        assert_eq!(text, "console of --kernel /k/vmlinux\n");
    }
}

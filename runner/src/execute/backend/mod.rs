//! VM backends. A backend turns a [`VmSpec`] into the command that runs the
//! VM; the session (timeouts, results channel, verdicts) is the same for all.
//! Both backends put the kernel log on the serial console and bridge the
//! guest's virtio console to a Unix socket the runner listens on.

pub mod kvm;

pub mod qemu;

mod qmp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use crate::execute::console_capture::ConsoleCapture;

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Written to this file (`console.log`), capped: the VM writes into a
    /// pipe, a runner thread keeps the head and the tail (`console_capture`).
    File(PathBuf),
    /// Streamed to the runner's stdout (`lab boot`).
    Stdout,
}

/// Everything a backend needs to start a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Kernel image (vmlinux with PVH entry, or bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// Serial console destination.
    pub console: Console,
    /// Unix socket (listening, owned by the runner) for the virtio console.
    pub channel: Option<PathBuf>,
    /// A gdb remote stub on the VM (localhost TCP).
    pub gdb: Option<GdbStub>,
    /// Boot to be snapshotted, or restore instead of booting.
    pub snapshot: Option<SnapshotRole>,
}

#[cfg(test)]
impl VmSpec {
    /// One vCPU, 256 MiB, `kernel` alone, console on stdout, nothing else:
    /// what backend tests start from.
    pub fn minimal(kernel: &str) -> VmSpec {
        VmSpec {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            console: Console::Stdout,
            channel: None,
            gdb: None,
            snapshot: None,
        }
    }
}

/// A gdb remote stub on a VM, on a localhost TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdbStub {
    /// The port.
    pub port: u16,
    /// When gdb gets the VM.
    pub when: GdbWhen,
}

/// When a VM's gdb stub takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GdbWhen {
    /// The VM starts halted at its first instruction until gdb continues
    /// (`--gdb`).
    Start,
    /// The VM runs; when its scenario fails the runner pauses it for gdb
    /// ([`Backend::hold_for_gdb`], `--gdb-on-fail`).
    OnFailure,
}

impl GdbStub {
    /// `--gdb`: halted at the start.
    pub fn at_start(port: u16) -> GdbStub {
        GdbStub {
            port,
            when: GdbWhen::Start,
        }
    }
}

/// Where a VM run for `--gdb-on-fail` takes control commands (QEMU: QMP),
/// beside its results channel.
pub fn gdb_control(spec: &VmSpec) -> Option<PathBuf> {
    let stub = spec.gdb?;
    (stub.when == GdbWhen::OnFailure).then_some(())?;
    spec.channel.as_ref().map(|c| c.with_extension("ctl"))
}

/// A VM's part in boot-once, restore-per-scenario (see `snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRole {
    /// Boot as usual, ready for [`Backend::save_snapshot`] through
    /// `control` (QEMU: its QMP socket; own VMM: unused, it takes SIGUSR1).
    Save {
        /// The backend's control endpoint, created by the VM.
        control: PathBuf,
        /// Where the state is saved (own VMM: given at start).
        state: PathBuf,
    },
    /// Start from the state saved in `state` instead of booting.
    Restore {
        /// The saved state.
        state: PathBuf,
        /// The console of the boot the state was saved from: the restored
        /// VM's console log starts with it, so a scenario's console reads
        /// (and is judged) as after a cold boot.
        boot_console: PathBuf,
    },
}

/// A VM ready to start: its command, and the capture of its serial
/// console, owned by whoever runs the VM.
///
/// The command holds the capture pipe's write end until it is dropped: a
/// capture settles once the VM has exited and its command is gone.
#[derive(Debug)]
pub struct VmCommand {
    /// The VM's process, to be given its stdio and spawned.
    pub command: Command,
    /// The capture of a [`Console::File`] console (`None`: stdout). Read it
    /// with [`ConsoleCapture::read_for_verdict`] once the VM has ended.
    pub console: Option<ConsoleCapture>,
}

/// Which backend a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Our own VMM where hardware KVM can run a stock kernel, else QEMU/TCG.
    Auto,
    /// arena lab's own VMM (needs hardware KVM).
    Kvm,
    /// QEMU microvm (KVM where usable, else TCG).
    Qemu,
}

/// A chosen backend.
pub trait Backend: Send + Sync {
    /// `qemu` or `kvm`.
    fn name(&self) -> &'static str;
    /// Accelerator in use (`tcg`, `kvm`).
    fn accelerator(&self) -> &'static str;
    /// The command that runs the VM described by `spec`, with the capture
    /// of its console when that goes to a file.
    fn command(&self, spec: &VmSpec) -> VmCommand;
    /// Whether [`VmSpec::gdb`] is honoured.
    fn has_gdb_stub(&self) -> bool {
        false
    }
    /// Pause `vm` (started with [`GdbWhen::OnFailure`]) and leave it to gdb
    /// on its stub: its scenario failed and the user asked to debug that.
    fn hold_for_gdb(&self, _vm: &mut Child, _spec: &VmSpec) -> Result<(), String> {
        Err(format!(
            "the {} backend cannot pause a failed VM for gdb",
            self.name()
        ))
    }
    /// The file of `kernel` this backend boots, or why it cannot boot it.
    fn boot_file(&self, kernel: &arena_images::kernel::Kernel) -> Result<PathBuf, String> {
        Ok(kernel.boot_image.clone())
    }
    /// What a snapshot of this backend depends on besides the VM's shape
    /// (its build and version): part of the snapshot key, so another build
    /// rebuilds rather than restores. `Err`: why it cannot snapshot.
    fn snapshot_identity(&self) -> Result<String, String> {
        Err(format!("the {} backend cannot snapshot a VM", self.name()))
    }
    /// Save the state of `vm` (started with [`SnapshotRole::Save`]) into
    /// `role`'s state file by `deadline`, and end the VM.
    fn save_snapshot(
        &self,
        vm: &mut Child,
        role: &SnapshotRole,
        deadline: Instant,
    ) -> Result<(), String> {
        let _ = (vm, role, deadline);
        Err(format!("the {} backend cannot snapshot a VM", self.name()))
    }
}

/// The backend for `choice`, with the one-line reason for the pick.
pub fn select(choice: BackendChoice) -> Result<(Box<dyn Backend>, String), String> {
    let kvm = vmm::probe::probe();
    let own = |why: String| -> Result<(Box<dyn Backend>, String), String> {
        Ok((Box::new(kvm::OwnVmm::locate()?), why))
    };
    match (choice, kvm.usable) {
        (BackendChoice::Kvm, true) | (BackendChoice::Auto, true) => {
            own(format!("own VMM on KVM: {}", kvm.reason))
        }
        (BackendChoice::Kvm, false) => {
            own(format!("own VMM forced on a host where {}", kvm.reason))
        }
        (BackendChoice::Qemu, true) => Ok((
            Box::new(qemu::Qemu::new(qemu::Accel::Kvm)),
            format!("qemu with KVM: {}", kvm.reason),
        )),
        (BackendChoice::Qemu, false) | (BackendChoice::Auto, false) => Ok((
            Box::new(qemu::Qemu::new(qemu::Accel::Tcg)),
            format!("qemu with TCG: {}", kvm.reason),
        )),
    }
}

/// Wait for `vm` to exit by `deadline`; past it, kill it and say so
/// (`None`). How it exited otherwise.
pub fn exit_by(
    vm: &mut Child,
    deadline: Instant,
) -> Result<Option<std::process::ExitStatus>, String> {
    loop {
        if let Some(st) = vm.try_wait().map_err(|e| e.to_string())? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = vm.kill();
            let _ = vm.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The descriptor a VM finds its console pipe on.
const CONSOLE_FD: libc::c_int = 3;
/// The path a VM opens to write its console into the pipe. Not `/dev/fd/3`:
/// that symlink is a udev convenience that minimal systems lack (`lab
/// nested`'s L1 has only devtmpfs), while /proc is always mounted.
pub const CONSOLE_FD_PATH: &str = "/proc/self/fd/3";

/// Where the VM itself must write its serial console for `console`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// Its stdout (`lab boot`).
    Stdout,
    /// This path: [`CONSOLE_FD_PATH`], or `/dev/null` when the capture
    /// could not start (the verdict then reports that failure).
    Path(PathBuf),
}

/// Wire `spec`'s console for the VM `c` will start: for a file, start the
/// capped capture (a restored VM's begins with its boot's console) and hand
/// the pipe's write end to the child as [`CONSOLE_FD`]; the capture is the
/// caller's. Also makes the child die with the runner (see
/// [`die_with_parent`]).
pub fn wire_console(c: &mut Command, spec: &VmSpec) -> (SerialTarget, Option<ConsoleCapture>) {
    die_with_parent(c);
    let Console::File(path) = &spec.console else {
        return (SerialTarget::Stdout, None);
    };
    let prefix = match &spec.snapshot {
        Some(SnapshotRole::Restore { boot_console, .. }) => std::fs::read(boot_console)
            .unwrap_or_else(|e| {
                format!("lab: cannot read the snapshot's boot console: {e}\n").into_bytes()
            }),
        _ => Vec::new(),
    };
    let (capture, fd) = ConsoleCapture::start(path, &prefix);
    let target = match fd {
        Some(fd) => {
            hand_over(c, fd);
            SerialTarget::Path(CONSOLE_FD_PATH.into())
        }
        None => {
            if let Some(e) = capture.error() {
                eprintln!("lab: {e}");
            }
            SerialTarget::Path("/dev/null".into())
        }
    };
    (target, Some(capture))
}

/// Make the VM's pipe end its [`CONSOLE_FD`] (kept across exec). The
/// parent's copy lives in the closure, i.e. until the `Command` is dropped:
/// the capture sees EOF once the VM is gone and the command with it.
fn hand_over(c: &mut Command, fd: OwnedFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing is allocated.
    unsafe {
        c.pre_exec(move || {
            let raw = fd.as_raw_fd();
            let ok = if raw == CONSOLE_FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, CONSOLE_FD)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child gets SIGKILL when the runner dies (`PR_SET_PDEATHSIG`), so a
/// `kill -9` of `lab` leaves no VM behind. If the runner died between fork
/// and prctl the signal would never come: then the child does not start.
/// (The death signal follows the spawning thread; sessions wait for their
/// VM on the thread that started it.)
pub fn die_with_parent(c: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated
    // but the error, on a path where the child ends anyway.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The console file a VM's command line names (for `ps` and for finding a
/// scenario's VM): the VM itself writes to the pipe, not to this path.
pub fn console_label(console: &Console) -> Option<&Path> {
    match console {
        Console::File(p) => Some(p),
        Console::Stdout => None,
    }
}

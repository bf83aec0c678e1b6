//! Shared helpers for the freestanding-guest integration tests: build guests
//! from the assembly sources in `tests/guests/` with GNU `as`/`ld`/`objcopy`
//! and run them under /dev/kvm.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmm::devices::serial::SharedBuffer;
use vmm::{RunReport, SerialOutput, VmConfig};

/// Directory with the guest sources.
pub fn guest_src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Where built guests go.
pub fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmm-guests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Fails `test` when /dev/kvm is absent: these guests run under any KVM,
/// PVM included, so a missing device is a broken test host, not a skip.
pub fn require_kvm(test: &str) {
    assert!(
        Path::new("/dev/kvm").exists(),
        "{test} needs /dev/kvm (any KVM, PVM included), which this host lacks"
    );
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unique file stem: tests run in parallel and may build the same guest.
fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn assemble(name: &str) -> PathBuf {
    let obj = out_dir().join(format!("{}.o", unique(name)));
    run_tool(
        Command::new("as")
            .arg("--64")
            .arg("-I")
            .arg(guest_src_dir())
            .arg("-o")
            .arg(&obj)
            .arg(guest_src_dir().join(format!("{name}.S"))),
    );
    obj
}

/// Builds `tests/guests/<name>.S` into an ELF with a PVH note.
pub fn build_pvh(name: &str) -> PathBuf {
    let obj = assemble(name);
    let elf = obj.with_extension("elf");
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
            .arg(guest_src_dir().join("pvh.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    elf
}

/// Builds `tests/guests/<name>.S` into an ELF without a PVH note, entered
/// at `startup_64` (a vmlinux built without `CONFIG_PVH`).
pub fn build_elf_without_pvh(name: &str) -> PathBuf {
    let obj = assemble(name);
    let elf = obj.with_extension("nopvh.elf");
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
            .arg(guest_src_dir().join("elf64.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    elf
}

/// Builds `tests/guests/<name>.S` into a flat bzImage-shaped binary.
pub fn build_bzimage(name: &str) -> PathBuf {
    let obj = assemble(name);
    let bin = obj.with_extension("bzimage");
    run_tool(
        Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin),
    );
    bin
}

/// Writes `bytes` to a file in the output dir.
pub fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = out_dir().join(unique(name));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// How long a test guest may go without writing to the serial port before
/// it counts as stuck. Tests bound guests by progress, never by wall-clock
/// time: a guest slowed down by a busy or nested host keeps printing and
/// is never cut off; one that stopped printing ends as `Stalled`. Guests
/// with long silent loops print progress markers.
pub const STALL: Duration = Duration::from_secs(30);

/// A config for `kernel` with serial output captured in memory, bounded
/// by [`STALL`] (no wall-clock timeout).
pub fn config(kernel: &Path) -> (VmConfig, SharedBuffer) {
    let buf = SharedBuffer::default();
    let mut cfg = VmConfig::new(kernel);
    cfg.mem_mib = 64;
    cfg.host.serial = SerialOutput::Buffer(buf.clone());
    cfg.host.stall_timeout = Some(STALL);
    (cfg, buf)
}

/// Runs `cfg`, returning the report and everything the guest printed.
pub fn run(cfg: &VmConfig, buf: &SharedBuffer) -> (RunReport, String) {
    let report = vmm::run_vm(cfg).expect("VM setup failed");
    (report, buf.contents())
}

/// Accepts one connection, failing (instead of hanging) after 30 s.
pub fn accept_with_timeout(l: &std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "VMM never connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

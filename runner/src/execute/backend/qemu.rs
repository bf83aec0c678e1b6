//! QEMU `microvm` backend: virtio-mmio devices discovered through ACPI, the
//! kernel log on the 8250 UART, the results channel on a virtconsole.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::qmp::Qmp;
use super::{
    console_label, gdb_control, wire_console, Backend, GdbStub, GdbWhen, SerialTarget,
    SnapshotRole, VmCommand, VmSpec,
};

/// How long QEMU gets to answer on its QMP socket when a failed VM is
/// paused for gdb (it has been up since the scenario started).
const QMP_CONNECT: Duration = Duration::from_secs(5);

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

/// How long the host TSC is sampled to learn its frequency.
const TSC_SAMPLE: Duration = Duration::from_millis(50);

/// The host's TSC frequency in kHz, if the TSC is invariant.
///
/// Under TCG the guest's TSC is the host's. The kernel calibrates its TSC
/// against the PIT in a short window; on a loaded host that fails, the TSC is
/// marked unstable and the boot can hang. Telling the kernel the frequency
/// (`tsc_early_khz=`) makes the boot deterministic. For the same reason the
/// TSC is declared reliable (`tsc=reliable`): on a loaded host the clocksource
/// watchdog otherwise finds it "unstable after boot", and the resulting
/// sched_clock static-key flip patches live kernel text with int3, which
/// multi-threaded TCG does not always survive (seen: `Oops: int3` in
/// `sched_clock_cpu`).
/// Measured once per host boot and kept in the cache (`host-tsc-khz`,
/// keyed by the boot id), since sampling takes [`TSC_SAMPLE`].
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let file = arena_images::cache::root().join("host-tsc-khz");
        if let Some((id, khz)) = std::fs::read_to_string(&file).ok().and_then(|t| {
            t.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.trim().parse().ok()))
        }) {
            if id == boot_id.trim() {
                return khz;
            }
        }
        let khz = measure_tsc_khz();
        if let Some(k) = khz {
            let _ = arena_images::write_atomic(&file, format!("{} {k}", boot_id.trim()).as_bytes());
        }
        khz
    })
}

/// Plausible TSC frequencies (kHz): a sample outside means it went wrong
/// (e.g. the thread migrated between CPUs with unsynchronised TSCs).
const TSC_KHZ_RANGE: std::ops::Range<u64> = 100_000..20_000_000;

fn measure_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if !has_invariant_tsc(&cpuinfo) {
        return None;
    }
    // SAFETY: rdtsc has no preconditions on x86_64.
    let (t0, c0) = (Instant::now(), unsafe { std::arch::x86_64::_rdtsc() });
    std::thread::sleep(TSC_SAMPLE);
    // SAFETY: as above.
    let (c1, dt) = (unsafe { std::arch::x86_64::_rdtsc() }, t0.elapsed());
    tsc_khz(c1.wrapping_sub(c0), dt)
}

/// Whether `/proc/cpuinfo` flags the TSC as invariant (`constant_tsc`).
fn has_invariant_tsc(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|f| f.split_whitespace().any(|f| f == "constant_tsc"))
}

/// The TSC frequency from `cycles` counted over `elapsed`, if plausible.
fn tsc_khz(cycles: u64, elapsed: Duration) -> Option<u64> {
    let khz = u64::try_from(u128::from(cycles) * 1000 / elapsed.as_micros().max(1)).ok()?;
    TSC_KHZ_RANGE.contains(&khz).then_some(khz)
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn has_gdb_stub(&self) -> bool {
        true
    }

    fn hold_for_gdb(&self, _vm: &mut Child, spec: &VmSpec) -> Result<(), String> {
        let control = gdb_control(spec).ok_or("the VM was not started for --gdb-on-fail")?;
        let mut qmp =
            Qmp::connect(&control, Instant::now() + QMP_CONNECT).map_err(|e| e.to_string())?;
        qmp.execute("stop", serde_json::json!({}))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn accelerator(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// QEMU boots an ELF only through its PVH note: a vmlinux built without
    /// `CONFIG_PVH` is replaced by the tree's bzImage (and the run says so).
    fn boot_file(&self, kernel: &arena_images::kernel::Kernel) -> Result<PathBuf, String> {
        if !kernel.elf_without_pvh {
            return Ok(kernel.boot_image.clone());
        }
        match &kernel.bzimage {
            Some(bz) => {
                eprintln!(
                    "lab: QEMU cannot boot {} (a vmlinux without a PVH note); booting {} instead",
                    kernel.boot_image.display(),
                    bz.display()
                );
                Ok(bz.clone())
            }
            None => Err(format!(
                "QEMU cannot boot {} (a vmlinux without a PVH note, no CONFIG_PVH) and no \
                 arch/x86/boot/bzImage was found beside it: pass the bzImage with --kernel, \
                 or use --backend kvm (the own VMM boots it through its 64-bit entry)",
                kernel.boot_image.display()
            )),
        }
    }

    fn command(&self, spec: &VmSpec) -> VmCommand {
        let mut c = Command::new(&self.binary);
        let (accel, cpu) = match self.accel {
            // KVM on an emulated CPU (`lab nested`): no CMPXCHG16B, which
            // QEMU 7.2's TCG gets wrong in an SVM guest (see
            // `vmm::arch::x86_64::cpuid::CpuidQuirks::tcg_host`).
            Accel::Kvm if vmm::probe::host_is_tcg() => ("kvm", "host,-cx16"),
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "qemu64"),
        };
        c.args(["-M", "microvm", "-accel", accel, "-cpu", cpu])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.vcpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&spec.kernel);
        match (self.accel, host_tsc_khz()) {
            (Accel::Tcg, Some(khz)) => c
                .arg("-append")
                .arg(format!("{} tsc_early_khz={khz} tsc=reliable", spec.cmdline)),
            _ => c.args(["-append", &spec.cmdline]),
        };
        if let Some(initrd) = &spec.initrd {
            c.arg("-initrd").arg(initrd);
        }
        if let Some(p) = console_label(&spec.console) {
            // Names the VM by its console (`ps`, tests looking for a VM).
            let name = format!("arena-lab console {}", p.display());
            c.arg("-name").arg(format!("guest={}", qemu_escape(&name)));
        }
        let (target, capture) = wire_console(&mut c, spec);
        match target {
            SerialTarget::Path(p) => {
                c.arg("-chardev").arg(format!(
                    "file,id=serial0,path={}",
                    qemu_escape(&p.display().to_string())
                ));
            }
            SerialTarget::Stdout => {
                c.args(["-chardev", "stdio,id=serial0,signal=off"]);
            }
        }
        c.args(["-serial", "chardev:serial0"]);
        match spec.gdb {
            // QEMU's own stub; halted until gdb says `continue`.
            Some(GdbStub {
                port,
                when: GdbWhen::Start,
            }) => {
                c.arg("-gdb").arg(format!("tcp:127.0.0.1:{port}")).arg("-S");
            }
            // The stub listens from the start (gdb may attach at any time);
            // QMP pauses the VM when its scenario fails.
            Some(GdbStub {
                port,
                when: GdbWhen::OnFailure,
            }) => {
                c.arg("-gdb").arg(format!("tcp:127.0.0.1:{port}"));
                if let Some(control) = gdb_control(spec) {
                    c.arg("-qmp").arg(format!(
                        "unix:{},server=on,wait=off",
                        qemu_escape(&control.display().to_string())
                    ));
                }
            }
            None => {}
        }
        if let Some(sock) = &spec.channel {
            c.args(["-device", "virtio-serial-device,max_ports=1"])
                .arg("-chardev")
                .arg(format!("socket,id=results,path={}", sock.display()))
                .args(["-device", "virtconsole,chardev=results"]);
        }
        match &spec.snapshot {
            Some(SnapshotRole::Save { control, .. }) => {
                c.arg("-qmp").arg(format!(
                    "unix:{},server=on,wait=off",
                    qemu_escape(&control.display().to_string())
                ));
            }
            // The same machine, its state read from the file (QEMU 7.2 has
            // no `file:` migration; `exec:` runs through /bin/sh).
            Some(SnapshotRole::Restore { state, .. }) => {
                c.arg("-incoming").arg(format!(
                    "exec:cat {}",
                    shell_quote(&state.display().to_string())
                ));
            }
            None => {}
        }
        VmCommand {
            command: c,
            console: capture,
        }
    }

    fn snapshot_identity(&self) -> Result<String, String> {
        static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
        let version = VERSION.get_or_init(|| {
            let out = Command::new(&self.binary)
                .arg("--version")
                .output()
                .map_err(|e| format!("{} --version: {e}", self.binary))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or("").trim().to_owned();
            if !out.status.success() || first.is_empty() {
                return Err(format!("{} --version said nothing", self.binary));
            }
            Ok(first)
        });
        version
            .clone()
            .map(|v| format!("{v}; accel {}", self.accelerator()))
    }

    /// Migrate the running VM into the state file: QEMU's own migration
    /// stream, which it reads back with `-incoming`. The guest is not
    /// stopped first: a stream taken from a paused VM restores paused.
    /// The agent is idle, waiting for a scenario, so little is dirtied
    /// while the stream is written.
    fn save_snapshot(
        &self,
        vm: &mut Child,
        role: &SnapshotRole,
        deadline: Instant,
    ) -> Result<(), String> {
        let SnapshotRole::Save { control, state } = role else {
            return Err("not a VM booted to be saved".into());
        };
        let mut qmp = Qmp::connect(control, deadline).map_err(|e| e.to_string())?;
        let uri = format!("exec:cat > {}", shell_quote(&state.display().to_string()));
        qmp.execute("migrate", serde_json::json!({ "uri": uri }))
            .map_err(|e| e.to_string())?;
        loop {
            let info = qmp
                .execute("query-migrate", serde_json::json!({}))
                .map_err(|e| e.to_string())?;
            match info.get("status").and_then(|s| s.as_str()) {
                Some("completed") => break,
                Some(s @ ("failed" | "cancelled")) => {
                    let why = info
                        .get("error-desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    return Err(format!("QEMU's migration {s}: {why}"));
                }
                _ if Instant::now() >= deadline => {
                    return Err("QEMU's migration did not complete in time".into())
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        // The source is paused now; it has nothing left to do.
        let _ = qmp.execute("quit", serde_json::json!({}));
        // The state is complete whether QEMU quits or is killed.
        super::exit_by(vm, deadline)?;
        Ok(())
    }
}

/// `v` as one /bin/sh word.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// `v` as a QEMU option value: a comma is written twice.
fn qemu_escape(v: &str) -> String {
    v.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::backend::Console;
    use std::path::PathBuf;

    #[test]
    fn command_wires_serial_and_results_channel() {
        let dir = std::env::temp_dir().join(format!("arena-qemu-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("con,sole.log");
        let spec = VmSpec {
            kernel: PathBuf::from("/k/vmlinux"),
            initrd: Some(PathBuf::from("/i.cpio.zst")),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 512,
            console: Console::File(console.clone()),
            channel: Some(PathBuf::from("/tmp/s.sock")),
            gdb: None,
            snapshot: None,
        };
        let vm = Qemu::new(Accel::Tcg).command(&spec);
        let args: Vec<String> = vm
            .command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // Dropping the command closes the pipe: the capture ends, empty.
        drop(vm.command);
        let capture = vm.console.expect("a console file is captured");
        assert_eq!(capture.read_for_verdict().unwrap(), "");
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm -accel tcg"), "{joined}");
        // The VM writes into the capture pipe and is named by its console.
        assert!(
            joined.contains("file,id=serial0,path=/proc/self/fd/3"),
            "{joined}"
        );
        let name = format!("guest=arena-lab console {}", console.display()).replace(',', ",,");
        assert!(args.contains(&name), "{joined}");
        assert!(joined.contains("socket,id=results,path=/tmp/s.sock"));
        assert!(joined.contains("virtconsole,chardev=results"));
        assert!(joined.contains("-initrd /i.cpio.zst"));
        if let Some(khz) = host_tsc_khz() {
            assert!(
                joined.contains(&format!("console=ttyS0 tsc_early_khz={khz} tsc=reliable")),
                "{joined}"
            );
        }
    }

    #[test]
    fn snapshot_roles_add_qmp_or_incoming() {
        let spec = |role| VmSpec {
            snapshot: Some(role),
            ..VmSpec::minimal("/k")
        };
        let args = |vm: VmCommand| -> Vec<String> {
            vm.command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let save = args(Qemu::new(Accel::Tcg).command(&spec(SnapshotRole::Save {
            control: "/run/q,mp.sock".into(),
            state: "/s".into(),
        })));
        assert!(
            save.windows(2)
                .any(|w| w == ["-qmp", "unix:/run/q,,mp.sock,server=on,wait=off"]),
            "{save:?}"
        );
        let restore = args(Qemu::new(Accel::Tcg).command(&spec(SnapshotRole::Restore {
            state: "/cache/it's/state".into(),
            boot_console: "/cache/boot-console.log".into(),
        })));
        assert!(
            restore
                .windows(2)
                .any(|w| w == ["-incoming", r"exec:cat '/cache/it'\''s/state'"]),
            "{restore:?}"
        );
    }

    #[test]
    fn invariant_tsc_comes_from_the_flags_line() {
        assert!(has_invariant_tsc(
            "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
        ));
        assert!(!has_invariant_tsc("flags\t\t: fpu tsc nonstop_tsc\n"));
        assert!(!has_invariant_tsc(
            "processor\t: 0\nbugs\t\t: constant_tsc\n"
        ));
        assert!(!has_invariant_tsc(""));
    }

    #[test]
    fn tsc_khz_keeps_only_plausible_samples() {
        let ms = Duration::from_millis;
        // 3 GHz: 150 M cycles in 50 ms.
        assert_eq!(tsc_khz(150_000_000, ms(50)), Some(3_000_000));
        assert_eq!(tsc_khz(2_496_000, ms(1)), Some(2_496_000));
        // Too slow, too fast, a TSC that went backwards (wraps to huge), no time.
        assert_eq!(tsc_khz(4_000_000, ms(50)), None);
        assert_eq!(tsc_khz(1_000_000_000_000, ms(50)), None);
        assert_eq!(tsc_khz(5u64.wrapping_sub(10), ms(50)), None);
        assert_eq!(tsc_khz(150_000_000, Duration::ZERO), None);
        // The edges of the range.
        assert_eq!(tsc_khz(5_000_000, ms(50)), Some(100_000));
        assert_eq!(tsc_khz(999_999_950, ms(50)), Some(19_999_999));
        assert_eq!(tsc_khz(1_000_000_000, ms(50)), None);
    }
}

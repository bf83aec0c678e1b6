//! Hostile freestanding guests: whatever a guest does to the devices, only
//! the VM ends (with a reason), the VMM does not panic and its memory stays
//! bounded.
//!
//! No guest here is bounded by wall-clock time: the guests print progress
//! markers to the serial port, and a guest fails only when it stops making
//! progress for [`STALL`] (the VMM's `--stall-timeout-s`, and the same
//! window watched by the tests). The virtio guest's memory bound is
//! measured on an `arena-vmm` child process of its own, not on this test
//! process, whose other tests run beside it.

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vmm::ExitReason;

#[test]
fn random_ports_and_mmio_outside_every_device() {
    require_kvm("random_ports_and_mmio_outside_every_device");
    let (cfg, buf) = config(&build_pvh("hostile_io_pvh"));
    assert_eq!(cfg.host.timeout, None, "bounded by progress only");
    let (report, out) = run(&cfg, &buf);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    assert!(
        out.contains("io start\n") && out.contains("io done\n"),
        "{out}"
    );
    // 20000 rounds, a marker every 1024.
    assert_eq!(out.matches('.').count(), 19, "{out}");
    eprintln!("hostile io: reset after {:?}", report.run_time);
}

/// Bytes of the endless line the reading host takes before it ends the
/// VM: twice the VMM's bound on pending console output.
const STREAM_TARGET: u64 = 2 * vmm::bridge::MAX_PENDING_TX as u64;
/// Progress markers ("." per MiB offered) of the endless line the
/// non-reading host waits for: four times that bound, so most is dropped.
const STALLED_HOST_MARKERS: usize = 4 * (vmm::bridge::MAX_PENDING_TX >> 20);
/// Allowed growth of the VMM's RSS (KiB) while the endless line streams.
const RSS_GROWTH_KIB: u64 = 96 << 10;

/// The hostile virtio guest in an `arena-vmm` child process, its console
/// on a fresh socket `<name>-<pid>.sock`, its serial output in a file.
struct HostileVm {
    child: Child,
    listener: UnixListener,
    sock: PathBuf,
    serial: PathBuf,
}

impl HostileVm {
    fn start(name: &str) -> Self {
        let kernel = build_pvh("hostile_virtio_pvh");
        let base = out_dir().join(format!("{name}-{}", std::process::id()));
        let sock = base.with_extension("sock");
        let serial = base.with_extension("log");
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&serial);
        let listener = UnixListener::bind(&sock).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_arena-vmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--mem-mib", "64", "--serial"])
            .arg(&serial)
            .arg("--console-socket")
            .arg(&sock)
            .args(["--stall-timeout-s", &STALL.as_secs().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child,
            listener,
            sock,
            serial,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        vmm::rss::rss_kib(Some(self.pid())).unwrap_or(0)
    }

    fn serial_out(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// True while the VMM runs; panics when the guest's serial output
    /// and `streamed` (console bytes seen) both stood still for twice the
    /// stall window (the VMM should have ended it after one).
    fn running(&mut self, watch: &mut Watch<(u64, u64)>, streamed: u64) -> bool {
        if self.child.try_wait().unwrap().is_some() {
            return false;
        }
        let serial = std::fs::metadata(&self.serial).map_or(0, |m| m.len());
        if watch.idle((serial, streamed)) > 2 * STALL {
            let _ = self.child.kill();
            panic!(
                "no progress for {:?} and the VMM did not end the VM; serial:\n{}",
                2 * STALL,
                self.serial_out()
            );
        }
        true
    }

    /// Ends the VM (SIGKILL to this child) if it still runs; returns
    /// whether it still ran, its stderr and the guest's serial output.
    fn finish(mut self) -> (bool, String, String) {
        let was_running = self.child.try_wait().unwrap().is_none();
        if was_running {
            self.child.kill().unwrap();
        }
        let out = self.child.wait_with_output().unwrap();
        let serial = std::fs::read_to_string(&self.serial).unwrap_or_default();
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_file(&self.serial);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (was_running, err, serial)
    }
}

/// When a progress value last changed.
struct Watch<T> {
    last: T,
    since: Instant,
}

impl<T: PartialEq + Copy> Watch<T> {
    fn new(v: T) -> Self {
        Self {
            last: v,
            since: Instant::now(),
        }
    }

    fn idle(&mut self, v: T) -> Duration {
        if v != self.last {
            self.last = v;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

const PHASES: [&str; 10] = [
    "loop: needs reset\n",
    "outside: needs reset\n",
    "huge: needs reset\n",
    "next: needs reset\n",
    "direction: needs reset\n",
    "avail: needs reset\n",
    "rings: needs reset\n",
    "storm: still live\n",
    "reset: ok\n",
    "endless\n",
];

#[test]
fn hostile_virtio_driver_only_breaks_its_device() {
    require_kvm("hostile_virtio_driver_only_breaks_its_device");
    let mut vm = HostileVm::start("hostile");
    let mut conn = accept_with_timeout(&vm.listener);
    // The VM is built (it connected): its memory from here on.
    let rss_before = vm.rss_kib();
    // Short reads so that progress is checked while the phases before
    // "after reset" send nothing on the socket.
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Read the endless line up to the target, keeping only the start: it
    // must not cost the VMM memory either.
    let (mut head, mut total, mut peak_rss) = (Vec::new(), 0u64, rss_before);
    let mut chunk = vec![0u8; 1 << 16];
    let mut watch = Watch::new((0, 0));
    while total < STREAM_TARGET {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if head.len() < 64 {
                    head.extend_from_slice(&chunk[..n.min(64)]);
                }
                total += n as u64;
                if total % (16 << 20) < n as u64 {
                    peak_rss = peak_rss.max(vm.rss_kib());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !vm.running(&mut watch, total) {
                    break;
                }
            }
            Err(e) => panic!("console socket: {e}"),
        }
    }
    peak_rss = peak_rss.max(vm.rss_kib());
    let (still_running, err, out) = vm.finish();
    for phase in PHASES {
        assert!(out.contains(phase), "missing {phase:?} in:\n{out}\n{err}");
    }
    assert!(
        still_running,
        "the endless line ends only when the host ends it: {err}\n{out}"
    );
    // Only the clean chain reached the host, then the endless 'x's.
    assert!(
        head.starts_with(b"after reset\nxxxx"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        total >= STREAM_TARGET,
        "only {total} bytes of the endless line"
    );
    // 64 MiB of guest RAM is mapped but the guest touches little of it;
    // the endless line streamed through must not accumulate.
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_KIB,
        "VMM RSS grew by {growth} KiB while streaming {total} bytes"
    );
    eprintln!(
        "hostile virtio: {total} bytes of endless line, VMM RSS {rss_before} -> peak {peak_rss} KiB"
    );
}

/// The same guest against a host that accepts the console socket and then
/// never reads: guest output must not pile up in the VMM.
#[test]
fn endless_line_to_a_host_that_never_reads_stays_bounded() {
    require_kvm("endless_line_to_a_host_that_never_reads_stays_bounded");
    let mut vm = HostileVm::start("stalled");
    let _conn = accept_with_timeout(&vm.listener);
    let rss_before = vm.rss_kib();
    let mut peak_rss = rss_before;
    let mut watch = Watch::new((0, 0));
    // Until the guest has offered enough of the endless line (its markers
    // count MiB), however long that takes.
    let markers = |out: &str| out.split_once("endless\n").map_or(0, |(_, l)| l.len());
    while markers(&vm.serial_out()) < STALLED_HOST_MARKERS && vm.running(&mut watch, 0) {
        peak_rss = peak_rss.max(vm.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    peak_rss = peak_rss.max(vm.rss_kib());
    let (still_running, err, out) = vm.finish();
    assert!(out.contains("endless\n"), "{out}\n{err}");
    assert!(
        still_running,
        "the VMM must keep running the guest: {err}\n{out}"
    );
    assert!(markers(&out) >= STALLED_HOST_MARKERS, "{out}");
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!("stalled host: VMM RSS {rss_before} -> peak {peak_rss} KiB");
    assert!(growth < RSS_GROWTH_KIB, "VMM RSS grew by {growth} KiB");
}

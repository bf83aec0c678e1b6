//! Hostile freestanding guests: whatever a guest does to the devices, only
//! the VM ends (with a reason), the VMM does not panic and its memory stays
//! bounded.

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::*;
use vmm::ExitReason;

/// Host-side timeout of `hostile_virtio_pvh`, whose endless line only the
/// timeout ends. Its earlier phases are quick on this host's KVM but slow
/// under nested KVM (`lab nested`, QEMU/TCG) on a busy host: 6 s once cut
/// the guest off in its notify storm, before the endless line.
const PHASES_THEN_ENDLESS: Duration = Duration::from_secs(40);

#[test]
fn random_ports_and_mmio_outside_every_device() {
    require_kvm("random_ports_and_mmio_outside_every_device");
    let (cfg, buf) = config(&build_pvh("hostile_io_pvh"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    assert!(
        out.contains("io start\n") && out.contains("io done\n"),
        "{out}"
    );
}

/// Starts the hostile virtio guest with its console on a fresh socket
/// `<name>-<pid>.sock`: the listener, the socket's path, the RSS before
/// (KiB) and the VM's thread.
fn start_hostile_virtio(
    name: &str,
) -> (
    UnixListener,
    std::path::PathBuf,
    u64,
    std::thread::JoinHandle<(vmm::RunReport, String)>,
) {
    let kernel = build_pvh("hostile_virtio_pvh");
    let sock = out_dir().join(format!("{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let (mut cfg, buf) = config(&kernel);
    cfg.host.console_socket = Some(sock.clone());
    // The endless line runs until this host-side timeout, which must leave
    // time for the phases before it (the storm alone is 40000 exits) where
    // exits are slow: under nested KVM in `lab nested` on a busy host.
    cfg.host.timeout = Some(PHASES_THEN_ENDLESS);
    let rss_before = vmm::rss::rss_kib(None).unwrap_or(0);
    let vm = std::thread::spawn(move || run(&cfg, &buf));
    (listener, sock, rss_before, vm)
}

#[test]
fn hostile_virtio_driver_only_breaks_its_device() {
    require_kvm("hostile_virtio_driver_only_breaks_its_device");
    let (listener, sock, rss_before, vm) = start_hostile_virtio("hostile");

    let mut conn = accept_with_timeout(&listener);
    // The phases before "after reset" send nothing: wait past the timeout.
    conn.set_read_timeout(Some(PHASES_THEN_ENDLESS * 2))
        .unwrap();
    // Read everything until the VMM closes the socket, keeping only the
    // start: the endless line must not cost the VMM memory either.
    let (mut head, mut total, mut peak_rss) = (Vec::new(), 0u64, 0u64);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if head.len() < 64 {
                    head.extend_from_slice(&chunk[..n.min(64)]);
                }
                total += n as u64;
                if total % (16 << 20) < n as u64 {
                    peak_rss = peak_rss.max(vmm::rss::rss_kib(None).unwrap_or(0));
                }
            }
        }
    }
    let (report, out) = vm.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    for phase in [
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
    ] {
        assert!(out.contains(phase), "missing {phase:?} in:\n{out}");
    }
    assert_eq!(
        report.exit,
        ExitReason::Timeout,
        "the endless line ends only by the host timeout: {out}"
    );
    // Only the clean chain reached the host, then the endless 'x's.
    assert!(
        head.starts_with(b"after reset\nxxxx"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    assert!(total > 1 << 20, "only {total} bytes of the endless line");
    // 64 MiB of guest RAM is mapped but the guest touches little of it;
    // the endless line streamed through must not accumulate.
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(
        growth < 96 << 10,
        "RSS grew by {growth} KiB while streaming {total} bytes"
    );
    eprintln!(
        "hostile virtio: {total} bytes of endless line, RSS {rss_before} -> peak {peak_rss} KiB"
    );
}

/// The same guest against a host that accepts the console socket and then
/// never reads: guest output must not pile up in the VMM.
#[test]
fn endless_line_to_a_host_that_never_reads_stays_bounded() {
    require_kvm("endless_line_to_a_host_that_never_reads_stays_bounded");
    let (listener, sock, rss_before, vm) = start_hostile_virtio("stalled");
    let _conn = accept_with_timeout(&listener);
    let mut peak_rss = 0;
    while !vm.is_finished() {
        peak_rss = peak_rss.max(vmm::rss::rss_kib(None).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (report, out) = vm.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    assert!(out.contains("endless\n"), "{out}");
    assert_eq!(report.exit, ExitReason::Timeout, "{out}");
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!("stalled host: RSS {rss_before} -> peak {peak_rss} KiB");
    assert!(growth < 96 << 10, "RSS grew by {growth} KiB");
}

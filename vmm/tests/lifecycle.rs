//! A VM lifetime must not leak file descriptors or threads, and several VMs
//! with several vCPUs can run one after another.

mod common;

use common::*;
use vmm::ExitReason;

/// The tests here count process-wide fds and threads, so they must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn no_fd_or_thread_leak_across_vm_lifetimes() {
    require_kvm("no_fd_or_thread_leak_across_vm_lifetimes");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = build_pvh("hello_pvh");
    let (mut cfg, buf) = config(&kernel);
    cfg.vcpus = 3;
    // Warm up once (lazy statics, signal handler), then measure.
    let (r, _) = run(&cfg, &buf);
    assert_eq!(r.exit, ExitReason::Reset);
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    for _ in 0..5 {
        let (r, _) = run(&cfg, &buf);
        assert_eq!(r.exit, ExitReason::Reset);
    }
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
}

#[test]
fn no_leak_with_console_socket_and_smp() {
    require_kvm("no_leak_with_console_socket_and_smp");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::net::UnixListener;
    let kernel = build_pvh("virtio_console_pvh");
    let sock = out_dir().join(format!("leak-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let one_vm = |cfg: &vmm::VmConfig, buf: &vmm::devices::serial::SharedBuffer| {
        let (cfg, buf) = (cfg.clone(), buf.clone());
        let vm = std::thread::spawn(move || run(&cfg, &buf));
        let conn = accept_with_timeout(&listener);
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        use std::io::{Read, Write};
        let mut line = [0u8; 16];
        (&conn).read_exact(&mut line).unwrap();
        (&conn).write_all(b"pong from host\n").unwrap();
        let (r, out) = vm.join().unwrap();
        assert_eq!(r.exit, ExitReason::Reset, "{out}");
    };
    let (mut cfg, buf) = config(&kernel);
    cfg.vcpus = 2;
    cfg.host.console_socket = Some(sock.clone());
    one_vm(&cfg, &buf);
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    for _ in 0..3 {
        one_vm(&cfg, &buf);
    }
    let _ = std::fs::remove_file(&sock);
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
}

//! A freestanding guest drives the virtio-console like a real driver; the
//! host end is a Unix socket the VMM connects to.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::*;
use vmm::ExitReason;

#[test]
fn guest_driver_talks_to_host_socket_with_interrupts() {
    require_kvm("guest_driver_talks_to_host_socket_with_interrupts");
    let kernel = build_pvh("virtio_console_pvh");
    let sock = out_dir().join(format!("console-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let (mut cfg, buf) = config(&kernel);
    cfg.host.console_socket = Some(sock.clone());
    let vm = std::thread::spawn(move || run(&cfg, &buf));

    let conn = accept_with_timeout(&listener);
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ping from guest\n");
    (&conn).write_all(b"pong from host\n").unwrap();

    let (report, out) = vm.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    assert!(
        out.contains("virtio-console found\nfeatures ok\ndriver ok\n"),
        "{out}"
    );
    assert!(out.contains("rx=pong from host\n"), "{out}");
    assert!(out.contains("irqs=0000000"), "{out}");
    assert!(
        !out.contains("irqs=00000000"),
        "no interrupt delivered: {out}"
    );
    assert!(out.contains("txused=00000001\n"), "{out}");
}

#[test]
fn console_socket_that_does_not_exist_is_a_setup_error() {
    require_kvm("console_socket_that_does_not_exist_is_a_setup_error");
    let (mut cfg, _) = config(&build_pvh("hello_pvh"));
    cfg.host.console_socket = Some("/nonexistent/console.sock".into());
    assert!(matches!(vmm::run_vm(&cfg), Err(vmm::Error::Io(..))));
}

//! The `arena-vmm` binary: exit codes, stderr reason line, serial routing,
//! and the `probe` subcommand.

mod common;

use std::process::Command;

use common::*;

fn vmm_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arena-vmm"))
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = vmm_bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_exit_codes_name_the_reason() {
    require_kvm("cli_exit_codes_name_the_reason");
    let hello = build_pvh("hello_pvh");
    let (code, out, err) = run_cli(&["--kernel", hello.to_str().unwrap(), "--serial", "-"]);
    assert_eq!((code, out.as_str()), (0, "hello from pvh\n"), "{err}");
    // Timing and exit counts first; the last line names the reason.
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("first guest entry"), "{err}");
    assert!(lines[1].contains("I/O exits; io 0x3f8"), "{err}");
    assert!(lines[2].contains("guest reset"), "{err}");

    let tf = build_pvh("triple_fault_pvh");
    let (code, _, err) = run_cli(&["--kernel", tf.to_str().unwrap(), "--mem-mib", "32"]);
    assert_eq!(code, vmm::EXIT_TRIPLE_FAULT, "{err}");
    assert!(err.contains("triple fault"), "{err}");

    let spin = build_pvh("spin_pvh");
    let (code, _, err) = run_cli(&["--kernel", spin.to_str().unwrap(), "--timeout-s", "0.5"]);
    assert_eq!(code, vmm::EXIT_TIMEOUT, "{err}");
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn cli_stall_timeout_ends_a_guest_that_stops_printing() {
    require_kvm("cli_stall_timeout_ends_a_guest_that_stops_printing");
    let spin = build_pvh("spin_pvh");
    let (code, out, err) = run_cli(&[
        "--kernel",
        spin.to_str().unwrap(),
        "--serial",
        "-",
        "--stall-timeout-s",
        "0.5",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (vmm::EXIT_STALLED, "spinning\n"),
        "{err}"
    );
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.contains("stalled: no serial output for 0.500 s")),
        "{err}"
    );
}

#[test]
fn cli_serial_file_is_appended() {
    require_kvm("cli_serial_file_is_appended");
    let hello = build_pvh("hello_pvh");
    let log = out_dir().join(format!("serial-{}.log", std::process::id()));
    std::fs::write(&log, "before\n").unwrap();
    let (code, out, _) = run_cli(&[
        "--kernel",
        hello.to_str().unwrap(),
        "--serial",
        log.to_str().unwrap(),
        "--vcpus",
        "2",
    ]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "before\nhello from pvh\n"
    );
}

#[test]
fn cli_setup_errors_exit_2() {
    let (code, _, err) = run_cli(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, vmm::EXIT_SETUP_ERROR, "{err}");
    assert!(err.contains("setup error"), "{err}");
    let (code, _, err) = run_cli(&["--bogus"]);
    assert_eq!(code, vmm::EXIT_SETUP_ERROR);
    assert!(err.contains("usage"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn cli_probe_matches_library() {
    let (code, out, _) = run_cli(&["probe"]);
    let p = vmm::probe::probe();
    assert_eq!(code, if p.usable { 0 } else { 1 });
    assert_eq!(out.trim_end(), p.reason);
    assert_eq!(out.lines().count(), 1);
}

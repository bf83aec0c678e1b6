//! arena lab's own small KVM virtual machine monitor.
//!
//! The boot flow, top to bottom ([`Vm::new`] then [`Vm::run`]); steps 1–5
//! are one function each in `builder.rs`:
//!
//! 1. open `/dev/kvm`, create the VM, the in-kernel irqchip (PIC + IOAPIC +
//!    LAPICs) and PIT, and set the TSS / identity-map addresses;
//! 2. create guest RAM ([`memory`]) and register it with KVM;
//! 3. load the kernel and initrd ([`loader`]), write the command line, the
//!    MP table and ACPI tables ([`arch::x86_64`]) and the boot parameters
//!    (zero page for bzImage, `hvm_start_info` for PVH);
//! 4. create the devices ([`devices`], [`virtio`]) on the port-I/O and MMIO
//!    buses, with interrupts delivered through irqfds;
//! 5. create and configure the vCPUs ([`vcpu`]); the boot vCPU gets the
//!    entry registers, the others wait for INIT/SIPI in the in-kernel LAPIC;
//! 6. run one thread per vCPU until the guest resets, powers off, faults,
//!    or the host-side timeout expires, and report the [`ExitReason`].
//!
//! A VM can also be paused and saved to a file on request (SIGUSR1 with
//! `--snapshot-to`), and rebuilt from that file ([`Vm::restore`]) instead of
//! steps 2–5: guest RAM is mapped from the file, the in-kernel irqchip, PIT
//! and clock, the devices and the vCPUs get their saved state. See
//! [`snapshot`] for the file format.
//!
//! With `--gdb` or `--gdb-on-demand` a gdb client can stop, inspect and
//! step the guest ([`gdb`]); the run loop pauses the vCPUs for it the way
//! it does for a snapshot.

#![warn(missing_docs)]

pub mod arch;
pub mod bridge;
mod builder;
pub mod devices;
pub mod exit_stats;
pub mod gdb;
pub mod loader;
pub mod memory;
pub mod probe;
pub mod rss;
mod run_loop;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;

mod config;
mod error;
mod event;
mod exit_reason;
mod vm;

pub use config::{
    parse_launch, HostIo, Launch, RestoreConfig, SerialOutput, VmConfig, DEFAULT_MEM_MIB,
    DEFAULT_VCPUS,
};
pub use error::Error;
pub use event::VmEvent;
pub use exit_reason::{
    ExitReason, EXIT_CLEAN, EXIT_DEBUGGER_KILL, EXIT_FAIL_ENTRY, EXIT_INTERNAL_ERROR,
    EXIT_SETUP_ERROR, EXIT_SNAPSHOT_FAILED, EXIT_SNAPSHOT_SAVED, EXIT_STALLED, EXIT_TIMEOUT,
    EXIT_TRIPLE_FAULT, EXIT_UNEXPECTED,
};
pub use virtio::{ConsoleTransport, VirtioSlot, VIRTIO_IRQ_BASE};
pub use vm::{restore_vm, run_vm, RestoreTimes, RunReport, Vm};

#[cfg(test)]
mod tests {
    use std::ffi::{OsStr, OsString};
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_full_command_line() {
        let c = VmConfig::from_args(&args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--vcpus",
            "2",
            "--mem-mib",
            "256",
            "--serial",
            "-",
            "--console-socket",
            "/s",
            "--timeout-s",
            "1.5",
        ]))
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert!(matches!(c.host.serial, SerialOutput::Stdout));
        assert_eq!(c.host.console_socket, Some(PathBuf::from("/s")));
        assert_eq!(c.host.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_arguments() {
        let parse = |a: &[&str]| VmConfig::from_args(&args(a));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kernel"]).is_err());
        assert!(parse(&["--kernel", "/k", "--vcpus", "x"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "-1"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "0.000000000"]).is_err());
        assert!(parse(&["--kernel", "/k", "--timeout-s", "1e300"]).is_err());
        assert!(parse(&["--kernel", "/k", "--bogus"]).is_err());
        let c = parse(&["--kernel", "/k", "--serial", "/tmp/out"]).unwrap();
        assert!(matches!(c.host.serial, SerialOutput::File(_)));
    }

    /// `to_args` then `from_args` gives the same config back, for defaults
    /// and for every field set (paths with spaces and non-UTF-8 bytes too).
    #[test]
    fn args_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        fn same(a: &VmConfig, b: &VmConfig) -> bool {
            let serial = |s: &SerialOutput| match s {
                SerialOutput::Stdout => "-".into(),
                SerialOutput::File(p) => p.display().to_string(),
                _ => String::new(),
            };
            a.kernel == b.kernel
                && a.initrd == b.initrd
                && a.cmdline == b.cmdline
                && a.vcpus == b.vcpus
                && a.mem_mib == b.mem_mib
                && serial(&a.host.serial) == serial(&b.host.serial)
                && a.host.console_socket == b.host.console_socket
                && a.host.timeout == b.host.timeout
                && a.host.stall_timeout == b.host.stall_timeout
                && a.host.gdb == b.host.gdb
        }
        let plain = VmConfig::new("/boot/vmlinux");
        assert_eq!(plain.to_args(), ["--kernel", "/boot/vmlinux"]);
        let mut full = VmConfig::new(OsStr::from_bytes(b"/odd dir/k\xff"));
        full.initrd = Some("/i n/initrd.cpio".into());
        full.cmdline = "loglevel=5 console=ttyS0 arena.x=\"a b\"".into();
        full.vcpus = 4;
        full.mem_mib = 1024;
        full.host.serial = SerialOutput::File("/r/console.log".into());
        full.host.console_socket = Some("/r/chan.sock".into());
        full.host.timeout = Some(Duration::new(7, 123_456_789));
        full.host.stall_timeout = Some(Duration::new(30, 5));
        let mut stdout = plain.clone();
        stdout.host.serial = SerialOutput::Stdout;
        stdout.host.timeout = Some(Duration::from_millis(1));
        stdout.host.gdb = Some(gdb::GdbConfig::parse("--gdb", "127.0.0.1:1234").unwrap());
        let mut on_demand = full.clone();
        on_demand.host.gdb = Some(gdb::GdbConfig::parse("--gdb-on-demand", "[::1]:0").unwrap());
        for c in [plain, full, stdout, on_demand] {
            let args = c.to_args();
            let back = VmConfig::from_args(&args).unwrap();
            assert!(same(&c, &back), "{args:?} did not round-trip");
            // Each option once.
            for flag in [
                "--serial",
                "--console-socket",
                "--timeout-s",
                "--stall-timeout-s",
            ] {
                assert!(args.iter().filter(|a| *a == flag).count() <= 1, "{args:?}");
            }
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let reasons = [
            ExitReason::Reset,
            ExitReason::TripleFault { vcpu: 0, rip: 0 },
            ExitReason::InternalError {
                suberror: 1,
                vcpu: 0,
                rip: 0,
            },
            ExitReason::FailEntry { reason: 0, cpu: 0 },
            ExitReason::Timeout,
            ExitReason::Unexpected(String::new()),
            ExitReason::SnapshotSaved {
                path: "/s".into(),
                bytes: 4096,
                millis: 7,
            },
            ExitReason::SnapshotFailed(String::new()),
            ExitReason::DebuggerKill,
            ExitReason::Stalled {
                window: Duration::from_secs(1),
            },
        ];
        let mut codes: Vec<i32> = reasons.iter().map(|r| r.exit_code()).collect();
        codes.push(EXIT_SETUP_ERROR);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(ExitReason::PowerOff.is_clean());
        assert!(ExitReason::Timeout.to_string().contains("timeout"));
        assert_eq!(reasons[6].exit_code(), EXIT_SNAPSHOT_SAVED);
        assert_eq!(
            reasons[6].to_string(),
            "snapshot saved to /s (4096 bytes, 7 ms)"
        );
    }

    #[test]
    fn restore_command_line_round_trips_and_refuses_shape_options() {
        let mut r = RestoreConfig::new("/snap");
        r.host.serial = SerialOutput::File("/after.log".into());
        r.host.console_socket = Some("/c.sock".into());
        r.host.timeout = Some(Duration::from_millis(2500));
        r.host.snapshot_to = Some("/snap2".into());
        r.trust_checksum = true;
        let Ok(Launch::Restore(back)) = parse_launch(&r.to_args()) else {
            panic!("not parsed as a restore")
        };
        assert_eq!(back.to_args(), r.to_args());
        assert!(back.trust_checksum);
        assert_eq!(back.snapshot, PathBuf::from("/snap"));
        for flag in ["--kernel", "--initrd", "--cmdline", "--vcpus", "--mem-mib"] {
            let e = parse_launch(&args(&["--restore", "/s", flag, "1"]))
                .err()
                .unwrap();
            assert!(e.contains("cannot be used with --restore"), "{e}");
        }
        assert!(parse_launch(&args(&["--serial", "-", "--restore"])).is_err());
        let Ok(Launch::Boot(b)) = parse_launch(&args(&["--kernel", "/k", "--snapshot-to", "/s"]))
        else {
            panic!("not parsed as a boot")
        };
        assert_eq!(b.host.snapshot_to, Some(PathBuf::from("/s")));
        assert!(b.to_args().contains(&OsString::from("--snapshot-to")));
    }

    #[test]
    fn gdb_options_parse_and_refuse_what_cannot_work() {
        let boot = |a: &[&str]| VmConfig::from_args(&args(a));
        let c = boot(&["--kernel", "/k", "--gdb", "127.0.0.1:1234"]).unwrap();
        assert_eq!(
            c.host.gdb,
            Some(gdb::GdbConfig {
                addr: "127.0.0.1:1234".parse().unwrap(),
                wait: true
            })
        );
        let c = boot(&["--kernel", "/k", "--gdb-on-demand", "127.0.0.1:0"]).unwrap();
        assert!(!c.host.gdb.unwrap().wait);
        for bad in [
            &["--kernel", "/k", "--gdb", "1234"][..],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--gdb",
                "127.0.0.1:2",
            ],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--gdb-on-demand",
                "127.0.0.1:2",
            ],
            &[
                "--kernel",
                "/k",
                "--gdb",
                "127.0.0.1:1",
                "--snapshot-to",
                "/s",
            ],
            &[
                "--kernel",
                "/k",
                "--snapshot-to",
                "/s",
                "--gdb-on-demand",
                "127.0.0.1:1",
            ],
        ] {
            assert!(boot(bad).is_err(), "{bad:?}");
        }
        let e = parse_launch(&args(&["--restore", "/s", "--gdb", "127.0.0.1:1"]))
            .err()
            .unwrap();
        assert!(e.contains("--gdb cannot be used with --restore"), "{e}");
        let Ok(Launch::Restore(r)) = parse_launch(&args(&[
            "--restore",
            "/s",
            "--gdb-on-demand",
            "127.0.0.1:1",
        ])) else {
            panic!("not parsed as a restore")
        };
        assert_eq!(parse_launch(&r.to_args()).ok().map(|_| ()), Some(()));
        assert!(r.to_args().contains(&OsString::from("--gdb-on-demand")));
        assert!(parse_launch(&args(&[
            "--restore",
            "/s",
            "--snapshot-to",
            "/t",
            "--gdb-on-demand",
            "127.0.0.1:1"
        ]))
        .is_err());
    }

    #[test]
    fn a_gdb_stub_with_snapshots_is_refused_before_kvm() {
        let mut c = VmConfig::new("/nonexistent");
        c.host.snapshot_to = Some("/s".into());
        c.host.gdb = Some(gdb::GdbConfig::parse("--gdb", "127.0.0.1:1").unwrap());
        assert!(matches!(Vm::new(&c), Err(Error::Config(_))));
    }

    #[test]
    fn virtio_slots_and_cmdline_param() {
        let s0 = VirtioSlot::nth(0);
        let s1 = VirtioSlot::nth(1);
        assert_eq!(s0.addr, memory::VIRTIO_MMIO_BASE);
        assert_eq!(
            s1.addr,
            memory::VIRTIO_MMIO_BASE + memory::VIRTIO_MMIO_SLOT_SIZE
        );
        assert_eq!(s1.irq, VIRTIO_IRQ_BASE + 1);
        assert_eq!(s0.cmdline_param(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn with_location_fills_fault_info() {
        let r = ExitReason::TripleFault { vcpu: 0, rip: 0 }.with_location(2, 0x1000);
        assert_eq!(
            r,
            ExitReason::TripleFault {
                vcpu: 2,
                rip: 0x1000
            }
        );
        assert_eq!(ExitReason::Reset.with_location(1, 2), ExitReason::Reset);
    }

    #[test]
    fn bad_config_is_rejected_before_kvm() {
        let mut c = VmConfig::new("/nonexistent");
        c.vcpus = 0;
        assert!(matches!(Vm::new(&c), Err(Error::Config(_))));
    }
}

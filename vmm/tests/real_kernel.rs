//! Boots a real Linux vmlinux through its PVH entry when
//! `ARENA_VMM_TEST_VMLINUX` points at one. On PVM hosts the kernel dies
//! after its early boot messages (an instruction PVM's CPL0 emulator lacks);
//! what must be seen is the banner and the firmware memory map.

use std::path::PathBuf;
use std::time::Duration;

use vmm::devices::serial::SharedBuffer;
use vmm::{SerialOutput, VmConfig};

#[test]
#[ignore = "opt-in (ARENA_VMM_TEST_VMLINUX=... -- --ignored); CI covers it with the runner's \
            `lab boot --backend kvm` test and Linux under `lab nested`"]
fn real_vmlinux_prints_banner_and_e820() {
    let kernel = std::env::var_os("ARENA_VMM_TEST_VMLINUX")
        .map(PathBuf::from)
        .expect("ARENA_VMM_TEST_VMLINUX must name a vmlinux with a PVH note");
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    let buf = SharedBuffer::default();
    let mut cfg = VmConfig::new(kernel);
    cfg.cmdline = "noxsave console=ttyS0".into();
    cfg.mem_mib = 512;
    cfg.host.serial = SerialOutput::Buffer(buf.clone());
    // Bounded by progress: a kernel that stops printing (e.g. after its
    // panic for want of an init) ends the VM; a slow boot is not cut off.
    cfg.host.stall_timeout = Some(Duration::from_secs(60));
    let report = vmm::run_vm(&cfg).expect("VM setup");
    let out = buf.contents();
    eprintln!(
        "real kernel stopped: {} after {:?}",
        report.exit, report.run_time
    );
    assert!(out.contains("Linux version 6."), "{out}");
    assert!(
        out.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
        "{out}"
    );
    assert!(
        out.contains("BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable"),
        "{out}"
    );
    assert!(out.contains("ACPI: RSDP"), "{out}");
}

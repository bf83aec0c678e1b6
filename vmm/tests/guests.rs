//! Freestanding guests, entered exactly the way Linux is, really executed
//! under /dev/kvm.

mod common;

use common::*;
use vmm::ExitReason;

#[test]
fn pvh_guest_prints_and_resets_cleanly() {
    require_kvm("pvh_guest_prints_and_resets_cleanly");
    let (cfg, buf) = config(&build_pvh("hello_pvh"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(out, "hello from pvh\n");
    assert_eq!(report.exit, ExitReason::Reset);
    assert!(report.time_to_first_entry.is_some());
}

#[test]
fn pvh_guest_reads_start_info() {
    require_kvm("pvh_guest_reads_start_info");
    let (mut cfg, buf) = config(&build_pvh("bootinfo_pvh"));
    cfg.cmdline = "console=ttyS0 arena=pvh".into();
    cfg.initrd = Some(write_file("pvh-initrd.img", b"INITRD-PVH-CONTENT"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    assert!(out.contains("magic=336EC578\n"), "{out}");
    assert!(
        out.contains(
            "cmdline=console=ttyS0 arena=pvh virtio_mmio.device=4K@0xd0000000:5 pci=off\n"
        ),
        "{out}"
    );
    assert!(out.contains("memmap_entries=00000004\n"), "{out}");
    assert!(
        out.contains("e820=0000000000000000 000000000009FC00 00000001\n"),
        "{out}"
    );
    assert!(
        out.contains("e820=0000000000100000 0000000003F00000 00000001\n"),
        "{out}"
    );
    assert!(out.contains("modules=00000001\n"), "{out}");
    // 18-byte initrd, page aligned just below the 64 MiB top of RAM.
    assert!(out.contains("initrd=03FFF000 00000012\n"), "{out}");
    assert!(out.contains("initrd_head=54494E49\n"), "{out}"); // "INIT"
    assert!(out.contains("rsdp=000E0000\n"), "{out}");
    assert!(out.contains("cpuid1_ecx_hv=00000001\n"), "{out}");
    assert!(out.contains("hv=KVMKVMKVM\n"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
}

/// Boots the `bzimage64` guest as `kernel` (a bzImage or an ELF without a
/// PVH note: both enter `startup_64` with a zero page) and checks what it
/// reports of its zero page.
fn check_64bit_entry(kernel: &std::path::Path, tag: &str) -> String {
    let (mut cfg, buf) = config(kernel);
    cfg.cmdline = format!("console=ttyS0 arena={tag}");
    cfg.initrd = Some(write_file(&format!("{tag}-initrd.img"), b"INITRD-BZ"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    let expected_prefix =
        "mode=64\ncs_ds=00000010 00000018\nhdr=53726448\ntype_of_loader=000000FF\n";
    assert!(out.starts_with(expected_prefix), "{out}");
    let cmdline =
        format!("cmdline=console=ttyS0 arena={tag} virtio_mmio.device=4K@0xd0000000:5 pci=off\n");
    for line in [
        cmdline.as_str(),
        "e820_entries=00000004\n",
        "e820=000000000009FC00 0000000000000400 00000002\n",
        "e820=0000000000100000 0000000003F00000 00000001\n",
        "initrd_head=54494E49\n",
    ] {
        assert!(out.contains(line), "{line:?} missing in {out}");
    }
    assert!(out.ends_with("done\n"), "{out}");
    out
}

#[test]
fn bzimage_guest_enters_64bit_and_reads_zero_page() {
    require_kvm("bzimage_guest_enters_64bit_and_reads_zero_page");
    let out = check_64bit_entry(&build_bzimage("bzimage64"), "bzimage");
    assert!(out.contains("initrd=03FFF000 00000009\n"), "{out}");
}

#[test]
fn elf_without_pvh_note_boots_through_the_64bit_entry_with_a_zero_page() {
    require_kvm("elf_without_pvh_note_boots_through_the_64bit_entry_with_a_zero_page");
    check_64bit_entry(&build_elf_without_pvh("bzimage64"), "elf64");
}

#[test]
fn bzimage_guest_with_more_ram_than_the_gap() {
    require_kvm("bzimage_guest_with_more_ram_than_the_gap");
    let (mut cfg, buf) = config(&build_bzimage("bzimage64"));
    cfg.mem_mib = 4096 + 512;
    let (report, out) = run(&cfg, &buf);
    assert_eq!(report.exit, ExitReason::Reset, "{out}");
    assert!(out.contains("e820_entries=00000005\n"), "{out}");
    assert!(
        out.contains("e820=0000000000100000 00000000BFF00000 00000001\n"),
        "{out}"
    );
    assert!(
        out.contains("e820=0000000100000000 0000000060000000 00000001\n"),
        "{out}"
    );
}

#[test]
fn triple_fault_is_reported() {
    require_kvm("triple_fault_is_reported");
    let (cfg, buf) = config(&build_pvh("triple_fault_pvh"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(out, "about to fault\n");
    assert!(
        matches!(report.exit, ExitReason::TripleFault { vcpu: 0, .. }),
        "{:?}",
        report.exit
    );
    assert_eq!(report.exit.exit_code(), vmm::EXIT_TRIPLE_FAULT);
}

#[test]
fn int3_without_idt_fails_like_the_host_should() {
    require_kvm("int3_without_idt_fails_like_the_host_should");
    let (cfg, buf) = config(&build_pvh("int3_pvh"));
    let (report, _) = run(&cfg, &buf);
    if vmm::probe::host_is_pvm() {
        // PVM's emulator cannot deliver it: this is how stock kernels die here.
        assert!(
            matches!(report.exit, ExitReason::InternalError { suberror: 1, .. }),
            "{:?}",
            report.exit
        );
    } else {
        assert!(matches!(report.exit, ExitReason::TripleFault { .. }));
    }
}

#[test]
fn host_timeout_stops_a_spinning_guest() {
    require_kvm("host_timeout_stops_a_spinning_guest");
    let (mut cfg, buf) = config(&build_pvh("spin_pvh"));
    cfg.host.timeout = Some(std::time::Duration::from_millis(500));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(out, "spinning\n");
    assert_eq!(report.exit, ExitReason::Timeout);
    // The timeout, not an early exit, ended it (no upper bound: a busy
    // host may take longer to notice, which is not the VMM's fault).
    assert!(
        report.run_time >= std::time::Duration::from_millis(500),
        "{:?}",
        report.run_time
    );
}

/// The progress bound the tests rely on instead of wall-clock timeouts: a
/// guest that stops writing to the serial port gets the stall verdict
/// (here with a short window), with no wall-clock timeout set at all.
#[test]
fn a_guest_that_stops_printing_gets_the_stall_verdict() {
    require_kvm("a_guest_that_stops_printing_gets_the_stall_verdict");
    let (mut cfg, buf) = config(&build_pvh("spin_pvh"));
    let window = std::time::Duration::from_millis(700);
    cfg.host.timeout = None;
    cfg.host.stall_timeout = Some(window);
    let (report, out) = run(&cfg, &buf);
    assert_eq!(out, "spinning\n");
    assert_eq!(report.exit, ExitReason::Stalled { window });
    assert_eq!(report.exit.exit_code(), vmm::EXIT_STALLED);
    assert!(report.run_time >= window, "{:?}", report.run_time);
}

#[test]
fn smp_guest_wakes_every_vcpu_with_init_sipi() {
    require_kvm("smp_guest_wakes_every_vcpu_with_init_sipi");
    let kernel = build_pvh("smp_pvh");
    for n in [1u8, 2, 4] {
        let (mut cfg, buf) = config(&kernel);
        cfg.vcpus = n;
        // The guest waits for this APIC-ID bitmap (8 hex digits).
        cfg.cmdline = format!("{:08X}", (1u32 << n) - 1);
        let (report, out) = run(&cfg, &buf);
        assert_eq!(report.exit, ExitReason::Reset, "{out}");
        assert_eq!(out, format!("cpus={:08X}\n", (1u32 << n) - 1), "{n} vCPUs");
    }
}

#[test]
fn acpi_sleep_register_powers_off_cleanly() {
    require_kvm("acpi_sleep_register_powers_off_cleanly");
    let (cfg, buf) = config(&build_pvh("poweroff_pvh"));
    let (report, out) = run(&cfg, &buf);
    assert_eq!(out, "powering off\n");
    assert_eq!(report.exit, ExitReason::PowerOff);
    assert_eq!(report.exit.exit_code(), vmm::EXIT_CLEAN);
}

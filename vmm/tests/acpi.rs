//! The generated ACPI tables disassemble cleanly with ACPICA's `iasl -d`.

use std::process::Command;

use vmm::arch::x86_64::acpi::build_tables;
use vmm::VirtioSlot;

#[test]
fn iasl_disassembles_every_table_without_errors() {
    if Command::new("iasl").arg("-v").output().is_err() {
        eprintln!(
            "SKIP iasl_disassembles_every_table_without_errors: iasl (acpica-tools) not installed"
        );
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vmm-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tables = build_tables(2, &[VirtioSlot::nth(0), VirtioSlot::nth(1)]).unwrap();
    for (_, bytes) in &tables[1..] {
        let sig = String::from_utf8_lossy(&bytes[..4]).to_lowercase();
        let bin = dir.join(format!("{sig}.dat"));
        std::fs::write(&bin, bytes).unwrap();
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&bin)
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {sig}: {log}");
        assert!(!log.contains("Error"), "iasl -d {sig}: {log}");
        let dsl = std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap();
        if sig == "dsdt" {
            assert!(dsl.contains("\"LNRO0005\""), "{dsl}");
            assert!(dsl.contains("0xD0000000"), "{dsl}");
            assert!(dsl.contains("0xD0001000"), "{dsl}");
            // COM1 must be an ACPI device: a hardware-reduced platform has no
            // legacy IRQs, and without it user-space console writes fail.
            assert!(dsl.contains("EisaId (\"PNP0501\")"), "{dsl}");
            assert!(
                dsl.contains("0x03F8,             // Range Minimum"),
                "{dsl}"
            );
            assert!(
                dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"),
                "{dsl}"
            );
        }
        if sig == "facp" {
            assert!(dsl.contains("Hardware Reduced (V5) : 1"), "{dsl}");
        }
        if sig == "apic" {
            assert_eq!(dsl.matches("Processor Local APIC").count(), 2, "{dsl}");
            assert!(dsl.contains("I/O APIC"), "{dsl}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! The own-VMM backend (`--backend kvm`) straight on this host's /dev/kvm:
//! booting the kernel far enough to see its banner and our e820 map works
//! under any KVM, PVM included. Full scenario runs under real KVM are in
//! `nested.rs` (its `catalogue` part).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn lab_boot_on_the_own_vmm_prints_banner_and_e820() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "needs /dev/kvm (any KVM: PVM boots the kernel this far)"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["boot", "--backend", "kvm", "--timeout", "240"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut banner, mut e820, mut cmdline) = (false, 0, false);
    while Instant::now() < deadline && !(banner && e820 >= 2 && cmdline) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        eprintln!("{line}");
        banner |= line.contains("Linux version 6.");
        cmdline |= line.contains("Command line:") && line.contains("console=ttyS0");
        e820 += usize::from(line.contains("BIOS-e820: [mem"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner, "no kernel banner");
    assert!(cmdline, "no command line echo");
    assert!(e820 >= 2, "no e820 map");
}

//! VMM benchmarks, printed as plain numbers (`cargo bench -p vmm`):
//! * VMM start → first guest instruction (Vm::new + thread start),
//! * port-I/O exits per second,
//! * RSS of the `arena-vmm` process beyond the guest RAM it touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmm::devices::serial::SharedBuffer;
use vmm::{ExitReason, SerialOutput, VmConfig};

fn build_pvh(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmm-bench");
    std::fs::create_dir_all(&out).unwrap();
    let obj = out.join(format!("{name}.o"));
    let elf = out.join(format!("{name}.elf"));
    let ok = Command::new("as")
        .arg("--64")
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .arg(src.join(format!("{name}.S")))
        .status()
        .unwrap()
        .success()
        && Command::new("ld")
            .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
            .arg(src.join("pvh.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj)
            .status()
            .unwrap()
            .success();
    assert!(ok, "building {name} failed");
    elf
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn config(kernel: &Path) -> (VmConfig, SharedBuffer) {
    let buf = SharedBuffer::default();
    let mut cfg = VmConfig::new(kernel);
    cfg.mem_mib = 256;
    cfg.host.serial = SerialOutput::Buffer(buf.clone());
    cfg.host.timeout = Some(Duration::from_secs(60));
    (cfg, buf)
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        println!("SKIP: /dev/kvm is absent");
        return;
    }
    let hello = build_pvh("hello_pvh");
    let pio = build_pvh("pio_loop_pvh");
    let spin = build_pvh("spin_pvh");

    // 1. Start to first guest instruction.
    let mut to_entry = Vec::new();
    let mut build = Vec::new();
    for _ in 0..20 {
        let (cfg, _) = config(&hello);
        let t0 = Instant::now();
        let vm = vmm::Vm::new(&cfg).expect("setup");
        let built = t0.elapsed();
        let r = vm.run().expect("run");
        assert_eq!(r.exit, ExitReason::Reset);
        build.push(built);
        to_entry.push(built + r.time_to_first_entry.unwrap_or_default());
    }
    println!(
        "start_to_first_guest_entry_us median {} (VM build {} us), 20 runs, 256 MiB, 1 vCPU",
        median(to_entry).as_micros(),
        median(build).as_micros()
    );

    // 2. Port-I/O exits per second.
    let (cfg, buf) = config(&pio);
    let r = vmm::run_vm(&cfg).expect("pio run");
    assert_eq!(r.exit, ExitReason::Reset, "{}", buf.contents());
    let exits = 200_000.0;
    println!(
        "pio_exits_per_second {:.0} ({} exits in {:.3} s)",
        exits / r.run_time.as_secs_f64(),
        exits,
        r.run_time.as_secs_f64()
    );

    // 3. RSS of the VMM process with an idle 256 MiB guest.
    let mut child = Command::new(env!("CARGO_BIN_EXE_arena-vmm"))
        .args([
            "--kernel",
            spin.to_str().unwrap(),
            "--mem-mib",
            "256",
            "--timeout-s",
            "3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let rss = vmm::rss::rss_kib(Some(child.id()));
    let _ = child.wait();
    match rss {
        Some(kib) => println!(
            "vmm_rss_kib {kib} with a 256 MiB guest that touched < 1 MiB (overhead ~{} KiB)",
            kib
        ),
        None => println!("vmm_rss_kib unavailable"),
    }
}

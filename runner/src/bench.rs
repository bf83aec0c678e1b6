//! `lab bench`: wall time of `lab run` on a trivial scenario against raw QEMU
//! boots of the same kernel measured in the same session, alternating:
//! - QEMU microvm with a busybox initramfs whose /init prints a line and
//!   powers off (the "boot a kernel, run one command, exit" reference);
//! - QEMU microvm with the lab's own initramfs, from spawn to the agent's
//!   hello on the virtio console (the VM is then killed).
//!
//! Reports medians and ratios; asserts nothing about wall-clock time.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use arena_images::cpio::CpioWriter;

use crate::backend::qemu::{Accel, Qemu};
use crate::backend::{Backend, Console, VmSpec};
use crate::{exit, infra, plan, KernelArgs, LabError};

/// `lab bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Rounds (each runs both sides once, alternating).
    #[arg(short = 'n', long, default_value_t = 5)]
    rounds: usize,
}

const TRIVIAL_YAML: &str = "name: bench-trivial\ndescription: boot, hello, one step, power off\nsteps:\n  - sleep: { ms: 0 }\n";

fn busybox_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| anyhow::anyhow!("/bin/busybox (package busybox-static): {e}"))?;
    let mut w = CpioWriter::new(Vec::new());
    for d in ["bin", "dev", "proc"] {
        w.dir(d, 0o755)?;
    }
    w.chardev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.file(
        "init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo arena-bench-marker\n/bin/busybox poweroff -f\n",
    )?;
    let path = dir.join("busybox.cpio");
    std::fs::write(&path, w.finish()?)?;
    Ok(path)
}

/// Spawn QEMU on `spec` (with a results socket) and time it to the first
/// line the agent sends (its hello); the VM is killed afterwards.
fn raw_to_hello(qemu: &Qemu, spec: &VmSpec, sock: &Path) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock)?;
    let mut spec = spec.clone();
    spec.channel = Some(sock.to_owned());
    let t = Instant::now();
    let mut child = qemu
        .command(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (stream, _) = listener.accept()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let elapsed = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    anyhow::ensure!(
        line.contains("\"hello\""),
        "expected the agent's hello, got {line:?}"
    );
    Ok(elapsed)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `lab bench`.
pub fn bench(args: BenchArgs) -> Result<u8, LabError> {
    let kernel =
        plan::kernel(args.kernel.kernel.as_ref(), args.kernel.modules.as_ref()).map_err(infra)?;
    let dir = std::env::temp_dir().join(format!("arena-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(infra)?;
    let raw_image = busybox_image(&dir).map_err(infra)?;
    let yaml = dir.join("trivial.yaml");
    std::fs::write(&yaml, TRIVIAL_YAML).map_err(infra)?;
    let accel = if vmm::probe::probe().usable {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let qemu = Qemu::new(accel);
    let raw_spec = VmSpec {
        kernel: kernel.boot_image.clone(),
        initrd: Some(raw_image),
        cmdline: "console=ttyS0 quiet panic=-1".into(),
        vcpus: 2,
        memory_mib: 512,
        console: Console::File(dir.join("raw-console.log")),
        channel: None,
    };
    let prepared = plan::prepare(kernel.clone(), None).map_err(infra)?;
    let lab_image = plan::image(&prepared, &crate::run::trivial_scenario()).map_err(infra)?;
    let hello_spec = VmSpec {
        initrd: Some(lab_image),
        cmdline: plan::BASE_CMDLINE.into(),
        console: Console::File(dir.join("hello-console.log")),
        ..raw_spec.clone()
    };
    let exe = std::env::current_exe().map_err(infra)?;
    let lab = |results: &Path| {
        let mut c = Command::new(&exe);
        c.arg("run")
            .arg("--results")
            .arg(results)
            .arg("--backend")
            .arg("qemu");
        if let Some(k) = &args.kernel.kernel {
            c.arg("--kernel").arg(k);
        }
        if let Some(m) = &args.kernel.modules {
            c.arg("--modules").arg(m);
        }
        c.arg(&yaml).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    // Warm-up: builds/caches the agent and image, not measured.
    let warm = lab(&dir.join("warm")).status().map_err(infra)?;
    if !warm.success() {
        return Err(infra(anyhow::anyhow!("warm-up `lab run` failed ({warm})")));
    }
    let (mut raw_t, mut lab_t, mut hello_t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let t = Instant::now();
        let st = qemu
            .command(&raw_spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(infra)?;
        raw_t.push(t.elapsed().as_secs_f64());
        let marker = std::fs::read_to_string(dir.join("raw-console.log")).unwrap_or_default();
        if !st.success() || !marker.contains("arena-bench-marker") {
            return Err(infra(anyhow::anyhow!("raw QEMU run {round} failed ({st})")));
        }
        hello_t.push(raw_to_hello(&qemu, &hello_spec, &dir.join("hello.sock")).map_err(infra)?);
        let t = Instant::now();
        let st = lab(&dir.join(format!("r{round}")))
            .status()
            .map_err(infra)?;
        lab_t.push(t.elapsed().as_secs_f64());
        if !st.success() {
            return Err(infra(anyhow::anyhow!("lab run {round} failed ({st})")));
        }
    }
    let (raw_min, lab_min) = (
        raw_t.iter().cloned().fold(f64::MAX, f64::min),
        lab_t.iter().cloned().fold(f64::MAX, f64::min),
    );
    let (raw_med, lab_med) = (median(&mut raw_t), median(&mut lab_t));
    let hello_med = median(&mut hello_t);
    println!(
        "kernel: {} ({})",
        kernel.release,
        kernel.boot_image.display()
    );
    println!("accelerator: {}", qemu.accelerator());
    println!("raw qemu (busybox, echo + poweroff): min {raw_min:.3} s, median {raw_med:.3} s");
    println!("raw qemu (lab image, spawn to agent hello): median {hello_med:.3} s");
    println!("lab run (trivial scenario, whole CLI): min {lab_min:.3} s, median {lab_med:.3} s");
    println!("ratio lab/raw busybox (median): {:.3}", lab_med / raw_med);
    println!(
        "ratio lab/raw to hello (median): {:.3}",
        lab_med / hello_med
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(exit::PASS)
}

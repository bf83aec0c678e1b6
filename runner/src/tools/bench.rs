//! `lab bench`: wall time of `lab run` on a trivial scenario against raw QEMU
//! boots of the same kernel measured in the same session, alternating:
//! - QEMU microvm with a busybox initramfs whose /init prints a line and
//!   powers off (the "boot a kernel, run one command, exit" reference);
//! - QEMU microvm with the lab's own initramfs, from spawn to the agent's
//!   hello on the virtio console (the VM is then killed).
//!
//! Snapshots (`snapshot.rs`): per backend, spawn to hello of a cold boot
//! against a restore of the snapshot taken at hello, alternating; and the
//! catalogue (`--catalogue DIR`, opt-in: it takes as long as the directory
//! does) at `-j1`, `--cold` against restored. `lab run` itself is timed both ways.
//!
//! Where hardware KVM runs Linux (directly, or inside `lab nested`), it also
//! measures in the same run the own VMM against QEMU with `-accel kvm`:
//! spawn to the agent's hello, the whole one-step scenario (`lab run`), the
//! VMM's start to first guest instruction, its RSS beyond guest RAM, and its
//! exits per device.
//!
//! Reports medians and ratios; asserts nothing about wall-clock time.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use std::time::Instant;

use arena_images::cpio::CpioWriter;

use crate::execute::backend::kvm::OwnVmm;
use crate::execute::backend::qemu::{Accel, Qemu};
use crate::execute::backend::{Backend, Console, SnapshotRole, VmSpec};
use crate::{exit, infra, plan, KernelArgs, LabError};
use arena_protocol::framing::write_message;
use arena_protocol::HostMessage;

/// `lab bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Rounds of the boot measurements (each runs both sides once,
    /// alternating: a few seconds a round under TCG). Bounds the whole
    /// bench unless --catalogue is given.
    #[arg(short = 'n', long, default_value_t = 5)]
    rounds: usize,
    /// Also time a scenario directory at -j1, cold against restored from
    /// snapshots: one run of each, as long as the directory takes (the
    /// whole arena catalogue: several minutes under TCG).
    #[arg(long, value_name = "DIR")]
    catalogue: Option<PathBuf>,
    /// The default now: no catalogue timing (kept for old command lines).
    #[arg(long, hide = true, conflicts_with = "catalogue")]
    no_catalogue: bool,
}

/// Why a benchmark could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An I/O step, named by its file, socket or program.
    #[error("{what}: {source}")]
    Io {
        /// The file, socket or program.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A measured run that did not do what it is timed for.
    #[error("{0}")]
    Failed(String),
}

/// An I/O error of `what` (a path, a socket, a program).
fn io(what: String) -> impl Fn(std::io::Error) -> BenchError {
    move |source| BenchError::Io {
        what: what.clone(),
        source,
    }
}

const TRIVIAL_YAML: &str = "name: bench-trivial\ndescription: boot, hello, one step, power off\nsteps:\n  - sleep: { ms: 0 }\n";

fn busybox_image(dir: &Path) -> Result<PathBuf, BenchError> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(io("/bin/busybox (package busybox-static)".into()))?;
    let path = dir.join("busybox.cpio");
    let cpio = io(path.display().to_string());
    let mut w = CpioWriter::new(Vec::new());
    for d in ["bin", "dev", "proc"] {
        w.dir(d, 0o755).map_err(&cpio)?;
    }
    w.chardev("dev/console", 0o600, 5, 1).map_err(&cpio)?;
    w.file("bin/busybox", 0o755, &busybox).map_err(&cpio)?;
    w.file(
        "init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo arena-bench-marker\n/bin/busybox poweroff -f\n",
    )
    .map_err(&cpio)?;
    std::fs::write(&path, w.finish().map_err(&cpio)?).map_err(&cpio)?;
    Ok(path)
}

/// Spawn `backend` on `spec` (with a results socket) and time it to the
/// first line the agent sends (its hello; a restored agent is told it was
/// restored first); the VM is killed afterwards.
fn raw_to_hello(backend: &dyn Backend, spec: &VmSpec, sock: &Path) -> Result<f64, BenchError> {
    let _ = std::fs::remove_file(sock);
    let at_sock = io(sock.display().to_string());
    let listener = UnixListener::bind(sock).map_err(&at_sock)?;
    let mut spec = spec.clone();
    spec.channel = Some(sock.to_owned());
    let t = Instant::now();
    let mut vm = backend.command(&spec);
    let mut child = vm
        .command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting the {} backend", backend.name())))?;
    let (mut stream, _) = listener.accept().map_err(&at_sock)?;
    if matches!(spec.snapshot, Some(SnapshotRole::Restore { .. })) {
        write_message(&mut stream, &crate::execute::session::resume_message()).map_err(&at_sock)?;
    }
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(&at_sock)?;
    let elapsed = t.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    if !line.contains("\"hello\"") {
        return Err(BenchError::Failed(format!(
            "expected the agent's hello, got {line:?}"
        )));
    }
    Ok(elapsed)
}

/// The own VMM against QEMU `-accel kvm` on the same host, alternating, with
/// the same kernel, image and command line.
fn own_vmm_vs_qemu(
    args: &BenchArgs,
    qemu: &Qemu,
    spec: &VmSpec,
    dir: &Path,
    lab_with: &dyn Fn(&Path, &str, &[&OsStr]) -> Command,
) -> Result<(), BenchError> {
    let own = OwnVmm::locate().map_err(BenchError::Failed)?;
    // The own backend boots at a lower console log level; give QEMU the same.
    let spec = VmSpec {
        cmdline: format!(
            "{} {}",
            crate::execute::backend::kvm::BOOT_LOGLEVEL,
            spec.cmdline
        ),
        ..spec.clone()
    };
    let (mut q_hello, mut o_hello, mut q_run, mut o_run) = (vec![], vec![], vec![], vec![]);
    let (mut first, mut rss, mut exits) = (vec![], vec![], None);
    for round in 0..args.rounds.max(1) {
        let q = boot_once(qemu, &spec, dir)?;
        q_hello.push(q.hello_s);
        let o = boot_once(&own, &spec, dir)?;
        o_hello.push(o.hello_s);
        first.extend(o.first_entry_ms);
        rss.extend(o.rss_overhead_kib.map(|k| k as f64 / 1024.0));
        exits = o.exits.or(exits);
        for (backend, times) in [("qemu", &mut q_run), ("kvm", &mut o_run)] {
            let t = Instant::now();
            let results = dir.join(format!("{backend}-{round}"));
            let st = lab_with(&results, backend, &[])
                .status()
                .map_err(io("running lab".into()))?;
            if !st.success() {
                return Err(BenchError::Failed(format!(
                    "lab run --backend {backend} failed ({st})"
                )));
            }
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let (qh, oh, qr, or) = (
        median(&mut q_hello),
        median(&mut o_hello),
        median(&mut q_run),
        median(&mut o_run),
    );
    println!(
        "own VMM vs QEMU -accel kvm, same kernel, image and command line ({} rounds):",
        args.rounds.max(1)
    );
    println!(
        "  spawn to agent hello: own VMM {oh:.3} s, QEMU {qh:.3} s, ratio {:.3}",
        oh / qh
    );
    println!(
        "  lab run, one-step scenario: own VMM {or:.3} s, QEMU {qr:.3} s, ratio {:.3}",
        or / qr
    );
    if !first.is_empty() {
        println!(
            "  own VMM process start to first guest instruction: median {:.2} ms",
            median(&mut first)
        );
    }
    if !rss.is_empty() {
        println!(
            "  own VMM RSS beyond guest RAM at hello: median {:.2} MiB",
            median(&mut rss)
        );
    }
    if let Some(e) = exits {
        println!("  own VMM exits, one boot plus scenario: {e}");
    }
    Ok(())
}

/// One boot of the lab's image measured through its whole life.
struct Boot {
    /// Spawn → the agent's hello.
    hello_s: f64,
    /// VM process RSS beyond guest RAM at hello (KiB), own VMM only.
    rss_overhead_kib: Option<u64>,
    /// `arena-vmm`'s own "first guest entry … after process start" (ms).
    first_entry_ms: Option<f64>,
    /// `arena-vmm`'s exit-count line.
    exits: Option<String>,
}

/// Spawns `backend`'s VM on `spec`, times it to the agent's hello, samples
/// its memory, then lets the agent run a one-step scenario and power off so
/// the VMM reports its own figures on stderr.
fn boot_once(backend: &dyn Backend, spec: &VmSpec, dir: &Path) -> Result<Boot, BenchError> {
    let sock = dir.join("boot.sock");
    let _ = std::fs::remove_file(&sock);
    let at_sock = io(sock.display().to_string());
    let listener = UnixListener::bind(&sock).map_err(&at_sock)?;
    let mut spec = spec.clone();
    spec.channel = Some(sock.clone());
    let stderr_path = dir.join("vm-stderr.log");
    let t = Instant::now();
    let mut vm = backend.command(&spec);
    let mut child = vm
        .command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).map_err(io(stderr_path.display().to_string()))?)
        .spawn()
        .map_err(io(format!("starting the {} backend", backend.name())))?;
    let (stream, _) = listener.accept().map_err(&at_sock)?;
    let mut writer = stream.try_clone().map_err(&at_sock)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(&at_sock)?;
    let hello_s = t.elapsed().as_secs_f64();
    if !line.contains("\"hello\"") {
        return Err(BenchError::Failed(format!(
            "expected the agent's hello, got {line:?}"
        )));
    }
    let rss_overhead_kib = (backend.name() == "kvm")
        .then(|| rss_beyond_guest_ram(child.id(), spec.memory_mib))
        .flatten();
    write_message(
        &mut writer,
        &HostMessage::Run {
            scenario: crate::run::trivial_scenario(),
            seed: 1,
            hold_on_failure: false,
        },
    )
    .map_err(&at_sock)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while child
        .try_wait()
        .map_err(io(format!("waiting for the {} backend", backend.name())))?
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(BenchError::Failed(
                "the VM did not power off after the trivial scenario".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let first_entry_ms = err
        .lines()
        .find_map(|l| l.split_once("ms after the VM was built, "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
    let exits = err
        .lines()
        .find(|l| l.contains("I/O exits"))
        .map(|l| l.trim_start_matches("arena-vmm: ").to_owned());
    Ok(Boot {
        hello_s,
        rss_overhead_kib,
        first_entry_ms,
        exits,
    })
}

/// Resident memory of process `pid` outside its guest-RAM mappings (the
/// anonymous mappings at least as large as the smallest RAM region, 16 MiB).
fn rss_beyond_guest_ram(pid: u32, memory_mib: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut size_kib = 0u64;
    for l in smaps.lines() {
        let mut f = l.split_whitespace();
        match f.next() {
            Some("Size:") => size_kib = f.next()?.parse().ok()?,
            Some("Rss:") => {
                let rss: u64 = f.next()?.parse().ok()?;
                total += rss;
                if size_kib >= 16 * 1024 && size_kib <= u64::from(memory_mib) * 1024 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some(total.saturating_sub(guest))
}

/// Boot-to-hello against restore-to-hello for `backend`, alternating for
/// `rounds`, on `spec`'s VM: the snapshot is made first (not timed). Prints
/// the medians and their ratio; `Err` when the backend cannot snapshot.
fn restore_vs_cold(
    backend: &dyn Backend,
    spec: &VmSpec,
    dir: &Path,
    rounds: usize,
) -> Result<(), BenchError> {
    let snapshots = crate::execute::snapshot::Snapshots::new(backend, Duration::from_secs(120));
    let snap = snapshots
        .for_spec(spec)
        .map_err(|e| BenchError::Failed(format!("no snapshot: {e}")))?;
    let restore_spec = VmSpec {
        console: Console::File(dir.join("restore-console.log")),
        snapshot: Some(snap.restore_role()),
        ..spec.clone()
    };
    let (mut cold, mut restored) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        cold.push(raw_to_hello(backend, spec, &dir.join("cold.sock"))?);
        restored.push(raw_to_hello(
            backend,
            &restore_spec,
            &dir.join("restore.sock"),
        )?);
    }
    let (cold, restored) = (median(&mut cold), median(&mut restored));
    let name = format!("{} ({})", backend.name(), backend.accelerator());
    println!(
        "{name} snapshot: {:.1} MB, made in {:.2} s after a {:.2} s boot",
        snap.meta.state_bytes as f64 / 1e6,
        snap.meta.save_s,
        snap.meta.boot_to_hello_s
    );
    println!("{name} cold boot to hello: median {cold:.3} s");
    println!("{name} restore to hello: median {restored:.3} s");
    println!(
        "ratio restore/cold to hello, {name} (median): {:.3} (goal <= 0.1)",
        restored / cold
    );
    Ok(())
}

/// `lab run -j1` of `catalogue`, cold then restored (the snapshot made by
/// then), timed whole; prints both and their ratio.
fn catalogue_cold_vs_restored(
    catalogue: &Path,
    dir: &Path,
    lab_with: &dyn Fn(&Path, &str, &[&OsStr]) -> Command,
) -> Result<(), BenchError> {
    let time = |name: &str, extra: &[&OsStr]| -> Result<f64, BenchError> {
        let results = dir.join(name);
        let t = Instant::now();
        let st = lab_with(&results, "qemu", extra)
            .status()
            .map_err(io("running lab".into()))?;
        if !st.success() {
            return Err(BenchError::Failed(format!(
                "lab run {name} of {} failed ({st}): see {}",
                catalogue.display(),
                results.display()
            )));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let (j1, cold_flag) = (OsStr::new("-j1"), OsStr::new("--cold"));
    let cat = catalogue.as_os_str();
    let cold = time("catalogue-cold", &[j1, cold_flag, cat])?;
    let restored = time("catalogue-restored", &[j1, cat])?;
    println!(
        "catalogue {} at -j1: cold {cold:.1} s, restored {restored:.1} s",
        catalogue.display()
    );
    println!(
        "ratio restored/cold catalogue wall time: {:.3} (goal <= 0.4)",
        restored / cold
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `lab bench`.
pub fn bench(args: BenchArgs) -> Result<u8, LabError> {
    let kernel = plan::kernel(&args.kernel).map_err(infra)?;
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
        gdb: None,
        snapshot: None,
    };
    let prepared = plan::prepare(kernel.clone(), &args.kernel).map_err(infra)?;
    let lab_image = plan::image(&prepared, &crate::run::trivial_scenario()).map_err(infra)?;
    let hello_spec = VmSpec {
        initrd: Some(lab_image),
        cmdline: plan::BASE_CMDLINE.into(),
        console: Console::File(dir.join("hello-console.log")),
        ..raw_spec.clone()
    };
    let exe = std::env::current_exe().map_err(infra)?;
    // `lab run` on `backend` with `paths` (the trivial scenario when empty).
    let lab_with = |results: &Path, backend: &str, paths: &[&OsStr]| {
        let mut c = Command::new(&exe);
        c.arg("run")
            .arg("--results")
            .arg(results)
            .arg("--backend")
            .arg(backend);
        if let Some(k) = &args.kernel.kernel {
            c.arg("--kernel").arg(k);
        }
        if let Some(m) = &args.kernel.modules {
            c.arg("--modules").arg(m);
        }
        match paths {
            [] => c.arg(&yaml),
            _ => c.args(paths),
        };
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let lab = |results: &Path| lab_with(results, "qemu", &[]);
    // Warm-up: builds/caches the agent and image, not measured.
    let warm = lab(&dir.join("warm")).status().map_err(infra)?;
    if !warm.success() {
        return Err(infra(format!("warm-up `lab run` failed ({warm})")));
    }
    let (mut raw_t, mut lab_t, mut hello_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut cold_t = Vec::new();
    for round in 0..args.rounds.max(1) {
        let t = Instant::now();
        let mut vm = qemu.command(&raw_spec);
        let st = vm
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(infra)?;
        raw_t.push(t.elapsed().as_secs_f64());
        // The console is complete once its capture has drained the pipe,
        // which the command holds open until it is dropped.
        drop(vm.command);
        let marker = vm
            .console
            .map(|c| c.read_for_verdict().unwrap_or_default())
            .unwrap_or_default();
        if !st.success() || !marker.contains("arena-bench-marker") {
            return Err(infra(format!("raw QEMU run {round} failed ({st})")));
        }
        hello_t.push(raw_to_hello(&qemu, &hello_spec, &dir.join("hello.sock")).map_err(infra)?);
        let t = Instant::now();
        let st = lab(&dir.join(format!("r{round}")))
            .status()
            .map_err(infra)?;
        lab_t.push(t.elapsed().as_secs_f64());
        if !st.success() {
            return Err(infra(format!("lab run {round} failed ({st})")));
        }
        let t = Instant::now();
        let st = lab_with(&dir.join(format!("c{round}")), "qemu", &[])
            .arg("--cold")
            .status()
            .map_err(infra)?;
        cold_t.push(t.elapsed().as_secs_f64());
        if !st.success() {
            return Err(infra(format!("lab run --cold {round} failed ({st})")));
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
    let cold_med = median(&mut cold_t);
    println!(
        "lab run (trivial scenario, whole CLI, restored from its snapshot): min {lab_min:.3} s, \
         median {lab_med:.3} s"
    );
    println!("lab run --cold (the same, booted): median {cold_med:.3} s");
    println!("ratio lab/raw busybox (median): {:.3}", lab_med / raw_med);
    println!(
        "ratio lab/raw to hello (median): {:.3}",
        lab_med / hello_med
    );
    println!(
        "ratio lab --cold/raw busybox (median): {:.3}",
        cold_med / raw_med
    );
    restore_vs_cold(&qemu, &hello_spec, &dir, args.rounds).map_err(infra)?;
    if accel == Accel::Kvm {
        let own = OwnVmm::locate().map_err(infra)?.with_snapshots();
        // The own backend adds its boot log level itself.
        restore_vs_cold(&own, &hello_spec, &dir, args.rounds).map_err(infra)?;
        own_vmm_vs_qemu(&args, &qemu, &hello_spec, &dir, &lab_with).map_err(infra)?;
    }
    match &args.catalogue {
        None => println!("catalogue: not timed (--catalogue DIR times one)"),
        Some(c) if !c.exists() => println!("catalogue: {} not found, not timed", c.display()),
        Some(c) => catalogue_cold_vs_restored(c, &dir, &lab_with).map_err(infra)?,
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(exit::PASS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `lab bench`'s options alone.
    #[derive(clap::Parser)]
    struct Bench {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn rounds_bound_the_bench_unless_a_catalogue_is_asked_for() {
        // `lab bench -n 1` once also timed the whole catalogue (5 min 27 s).
        let a = Bench::try_parse_from(["bench", "-n", "1"]).unwrap().args;
        assert_eq!((a.rounds, a.catalogue), (1, None));
        let a = Bench::try_parse_from(["bench", "--catalogue", "scenarios/smoke"])
            .unwrap()
            .args;
        assert_eq!(a.catalogue, Some(PathBuf::from("scenarios/smoke")));
        // The old spelling still parses, and means the default.
        let a = Bench::try_parse_from(["bench", "--no-catalogue"])
            .unwrap()
            .args;
        assert_eq!(a.catalogue, None);
    }
}

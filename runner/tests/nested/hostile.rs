//! Hostile guests under real KVM (a part of `nested.rs`, run in its L1).
//!
//! This host's `/dev/kvm` (PVM) runs the freestanding hostile suite
//! (`vmm/tests/hostile.rs`) but not Linux, so this part always runs in L1
//! (`lab nested --exec`), even where the host's KVM could run Linux: only
//! there is the root a tmpfs overlay whose upper layer lists every file any
//! process wrote. There it runs the freestanding suite's compiled binary,
//! then Linux guests (Debian's kernel, a busybox `/init` from
//! `fixtures/hostile-linux/`) through `arena-vmm` that stream an endless
//! results line (to a host that reads, and to one that never does), write
//! garbage to the channel, the serial port and the UART's registers, and
//! reset the console device mid transfer. Each must end only its VM with
//! the reason `arena-vmm` names, the VMM's own memory (RSS outside guest
//! RAM) must stay bounded, and no file outside the scratch folder may
//! change.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arena_images::initramfs;
use arena_images::kernel::Kernel;
use arena_images::modules::ModuleDeps;

/// The freestanding suite's compiled test binary.
const SUITE: &str = "ARENA_HOSTILE_SUITE";
/// The `arena-vmm` binary.
const VMM: &str = "ARENA_HOSTILE_VMM";
/// The kernel the Linux guests boot (a PVH vmlinux).
const KERNEL: &str = "ARENA_HOSTILE_KERNEL";
/// Their initramfs.
const INITRD: &str = "ARENA_HOSTILE_INITRD";
/// Where `lab nested` shows L1's overlay upper layer (every changed file).
const CHANGES: &str = "/run/arena-nested-changes";
/// The Linux guests' `/init`.
const INIT: &str = include_str!("../fixtures/hostile-linux/init.sh");
/// Guest RAM of each Linux guest.
const GUEST_MIB: u64 = 160;
/// How much the VMM's own memory (RSS outside guest RAM) may grow while a
/// guest runs: the output it may queue for a slow socket
/// ([`vmm::bridge::MAX_PENDING_TX`]) and 8 MiB of slack. The endless line
/// streams more than that (32 MiB, about 700 bytes a notification, however
/// long that takes), so a VMM that kept what it cannot deliver would cross
/// it.
const OWN_GROWTH_LIMIT_KIB: u64 = (vmm::bridge::MAX_PENDING_TX as u64 >> 10) + (8 << 10);

/// On the host, before L1 boots: builds the suite's test binary,
/// `arena-vmm` and the Linux guests' initramfs; what `run` needs, as
/// environment variables for L1.
pub fn prepare() -> Vec<(&'static str, PathBuf)> {
    let suite = cargo_executable(
        &["test", "-p", "vmm", "--test", "hostile", "--no-run"],
        "hostile",
    );
    let vmm = cargo_executable(&["build", "-p", "vmm", "--bin", "arena-vmm"], "arena-vmm");
    let kernel = arena_images::kernel::debian::default_kernel().expect("the default kernel");
    let initrd = linux_initramfs(&kernel);
    vec![
        (SUITE, suite),
        (VMM, vmm),
        (KERNEL, kernel.boot_image),
        (INITRD, initrd),
    ]
}

/// On the host, after L1: the inner run's own report says it ran, and ran
/// everything (`env` as [`prepare`] made it).
pub fn check_report(stdout: &str, env: &[(&'static str, PathBuf)]) {
    let suite = &env.iter().find(|(k, _)| *k == SUITE).unwrap().1;
    let listed = listed_tests(suite);
    assert!(stdout.contains(&summary(listed)), "{stdout}");
    assert!(
        stdout.contains(&format!("hostile freestanding: all {listed} tests passed")),
        "{stdout}"
    );
    for case in CASES {
        assert!(
            stdout.contains(&format!("hostile linux {}: ", case.name)),
            "no report for {}",
            case.name
        );
    }
    assert!(stdout.contains("hostile: nothing outside "), "{stdout}");
}

/// Builds a cargo target of this workspace (release, like the lab) and
/// returns its executable, from cargo's JSON messages.
fn cargo_executable(args: &[&str], target: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .args(["--release", "--message-format=json"])
        .current_dir(crate::common::root())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == target)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo {args:?} named no executable for {target}"))
}

/// Busybox, `virtio_mmio` (a module in Debian's kernel; the channel needs
/// it) and the hostile `/init`.
fn linux_initramfs(kernel: &Kernel) -> PathBuf {
    let modules = kernel.modules.as_ref().expect("Debian's kernel is modular");
    let deps = ModuleDeps::load(modules).unwrap();
    let mut contents = vec![
        ("init".to_owned(), 0o755, INIT.as_bytes().to_vec()),
        (
            "bin/busybox".to_owned(),
            0o755,
            std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)"),
        ),
    ];
    for (i, m) in deps.resolve(&["virtio_mmio"]).unwrap().iter().enumerate() {
        let (name, data) = initramfs::module_file(m).unwrap();
        contents.push((format!("modules/{i:02}-{name}"), 0o644, data));
    }
    initramfs::build_archive("arena-hostile-linux-v1", &contents).unwrap()
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set"))
}

/// The part itself, in L1.
pub fn run() {
    let probe = vmm::probe::probe();
    assert!(
        probe.usable,
        "L1's /dev/kvm must run Linux: {}",
        probe.reason
    );
    let changes = Path::new(CHANGES);
    assert!(
        changes.is_dir(),
        "{CHANGES} missing: not inside `lab nested`"
    );
    freestanding_suite(&env_path(SUITE));

    let scratch = crate::common::scratch("hostile-linux");
    let before = changed_files(changes);
    let vmm = env_path(VMM);
    let (kernel, initrd) = (env_path(KERNEL), env_path(INITRD));
    for case in CASES {
        run_linux_guest(case, &vmm, &kernel, &initrd, &scratch);
    }
    let after = changed_files(changes);
    let rel_scratch = scratch.strip_prefix("/").unwrap();
    let outside: Vec<_> = after
        .iter()
        .filter(|(p, meta)| before.get(*p) != Some(meta) && !p.starts_with(rel_scratch))
        .map(|(p, _)| p)
        .collect();
    let gone: Vec<_> = before
        .keys()
        .filter(|p| !after.contains_key(*p) && !p.starts_with(rel_scratch))
        .collect();
    assert!(
        outside.is_empty() && gone.is_empty(),
        "the hostile guests changed files outside {}: {outside:?} {gone:?}",
        scratch.display()
    );
    println!(
        "hostile: nothing outside {} changed ({} files inside it)",
        scratch.display(),
        after.keys().filter(|p| p.starts_with(rel_scratch)).count()
    );
}

/// libtest's summary of a run where all `n` tests passed and none was
/// ignored or filtered out.
pub fn summary(n: usize) -> String {
    format!("test result: ok. {n} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out")
}

/// How many tests a libtest binary has (ignored ones included).
fn listed_tests(bin: &Path) -> usize {
    let list = Command::new(bin).arg("--list").output().unwrap();
    assert!(list.status.success(), "{} --list failed", bin.display());
    let listed = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count();
    assert!(listed > 0, "{} lists no tests", bin.display());
    listed
}

/// Runs the freestanding suite's binary and checks libtest's summary: every
/// listed test passed, none ignored or filtered out.
fn freestanding_suite(bin: &Path) {
    let listed = listed_tests(bin);
    let out = Command::new(bin).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the freestanding hostile suite failed"
    );
    let expected = summary(listed);
    assert!(text.contains(&expected), "want {expected:?} in:\n{text}");
    println!("hostile freestanding: all {listed} tests passed under real KVM");
}

/// Every non-directory entry of the overlay's upper layer (whiteouts of
/// deleted files included), relative to the root, with size and mtime.
fn changed_files(upper: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![upper.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                let rel = e.path().strip_prefix(upper).unwrap().to_owned();
                out.insert(rel, (meta.len(), meta.mtime(), meta.mtime_nsec()));
            }
        }
    }
    out
}

/// One Linux guest and what the host does with its channel.
struct Case {
    /// Report name.
    name: &'static str,
    /// `hostile=` for `/init`.
    mode: &'static str,
    /// Whether the host reads the channel (else: accepts, never reads).
    reads: bool,
    /// `arena-vmm --timeout-s`: a safety net only where the guest ends by
    /// its progress (`stall_s`).
    timeout_s: u64,
    /// `arena-vmm --stall-timeout-s`: the endless guests stream a fixed
    /// amount with a serial mark per 1 MiB, then go silent; the stall window
    /// ends them, however long the stream took on a busy host.
    stall_s: Option<u64>,
    /// The reason `arena-vmm` must name last on stderr.
    reason: &'static str,
    /// `arena-vmm`'s exit status for it.
    exit_code: i32,
    /// Lines the channel must carry (the guest's tty ends them with CR LF).
    channel: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "endless",
        mode: "endless",
        reads: true,
        timeout_s: 1800,
        stall_s: Some(15),
        reason: "guest stalled: no serial output for 15.000 s",
        exit_code: vmm::EXIT_STALLED,
        channel: &[],
    },
    Case {
        name: "endless-unread",
        mode: "endless",
        reads: false,
        timeout_s: 1800,
        stall_s: Some(15),
        reason: "guest stalled: no serial output for 15.000 s",
        exit_code: vmm::EXIT_STALLED,
        channel: &[],
    },
    Case {
        name: "garbage",
        mode: "garbage",
        reads: true,
        timeout_s: 120,
        stall_s: None,
        reason: "guest reset (clean exit)",
        exit_code: vmm::EXIT_CLEAN,
        channel: &["hostile: garbage done"],
    },
    Case {
        name: "rebind",
        mode: "rebind",
        reads: true,
        timeout_s: 120,
        stall_s: None,
        reason: "guest reset (clean exit)",
        exit_code: vmm::EXIT_CLEAN,
        channel: &["rebind 0 mid-transfer", "hostile: rebind done"],
    },
];

/// What the host saw on the channel.
#[derive(Default)]
struct Channel {
    bytes: u64,
    newlines: u64,
    /// The first KiB.
    head: Vec<u8>,
    /// Lines the case looks for, as far as found.
    found: Vec<bool>,
}

/// Memory of the VMM process, KiB.
#[derive(Default, Debug)]
struct Memory {
    /// Peak VmRSS.
    rss: u64,
    /// Own memory (outside guest RAM) at the first sample, and its peak.
    own_first: Option<u64>,
    own: u64,
    samples: u32,
}

fn run_linux_guest(case: &Case, vmm: &Path, kernel: &Path, initrd: &Path, scratch: &Path) {
    let sock = scratch.join(format!("{}.sock", case.name));
    let serial = scratch.join(format!("{}-serial.log", case.name));
    let listener = UnixListener::bind(&sock).unwrap();
    let mut vmm_process = Reaped(
        Command::new(vmm)
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args([
                "--cmdline",
                &format!(
                    "console=ttyS0 loglevel=4 panic=-1 reboot=k rdinit=/init hostile={}",
                    case.mode
                ),
                "--mem-mib",
                &GUEST_MIB.to_string(),
                "--timeout-s",
                &case.timeout_s.to_string(),
            ])
            .args(
                case.stall_s
                    .map(|s| ["--stall-timeout-s".to_owned(), s.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--serial")
            .arg(&serial)
            .arg("--console-socket")
            .arg(&sock)
            // Any stray relative write would land outside the scratch folder.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start arena-vmm"),
    );
    let child = &mut vmm_process.0;
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let conn = accept(&listener, child);
    let reader = case.reads.then(|| {
        let mut conn = conn.try_clone().unwrap();
        let wanted: Vec<&'static str> = case.channel.to_vec();
        std::thread::spawn(move || read_channel(&mut conn, &wanted))
    });
    // Sample the VMM's memory until it ends; the guard only stops a VMM
    // that ignores its own timeout from hanging the test.
    let guard = Instant::now() + Duration::from_secs(case.timeout_s + 60);
    let mut mem = Memory::default();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some((rss, own)) = vmm_memory(child.id(), GUEST_MIB << 20) {
            mem.rss = mem.rss.max(rss);
            mem.own = mem.own.max(own);
            mem.own_first.get_or_insert(own);
            mem.samples += 1;
        }
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("{}: arena-vmm outlived its --timeout-s", case.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(conn);
    let channel = reader.map(|r| r.join().unwrap()).unwrap_or_default();
    let stderr = stderr.join().unwrap();
    let serial_log = std::fs::read(&serial).unwrap_or_default();
    let serial_text = String::from_utf8_lossy(&serial_log);
    let ctx = || {
        format!(
            "{}: arena-vmm {status}, stderr:\n{stderr}\nserial (last 3000 bytes):\n{}",
            case.name,
            &serial_text[serial_text.len().saturating_sub(3000)..]
        )
    };
    // The guest really ran its mode (the serial port is still sane then).
    assert!(
        serial_text.contains(&format!("hostile: mode {}", case.mode)),
        "{}",
        ctx()
    );
    assert_eq!(status.code(), Some(case.exit_code), "{}", ctx());
    assert_eq!(
        stderr.lines().last(),
        Some(format!("arena-vmm: {}", case.reason).as_str()),
        "{}",
        ctx()
    );
    for (line, found) in case.channel.iter().zip(&channel.found) {
        assert!(*found, "{line:?} never reached the host; {}", ctx());
    }
    if case.mode == "endless" && case.reads {
        assert_eq!(channel.newlines, 0, "the endless line has no newline");
        assert!(
            channel.head.len() >= 1024 && channel.head.iter().all(|&b| b == b'x'),
            "{:?}",
            String::from_utf8_lossy(&channel.head)
        );
        assert!(channel.bytes >= 1 << 20, "only {} bytes", channel.bytes);
    }
    if case.mode == "garbage" {
        assert!(channel.bytes > 65536, "only {} bytes", channel.bytes);
        assert!(
            serial_log.len() > 65536,
            "only {} serial bytes",
            serial_log.len()
        );
    }
    if case.mode == "endless" {
        // It streamed all 32 MiB (the VMM served it to the end) before the
        // stall window ended it.
        assert!(
            serial_text.contains("hostile: streamed 32 MiB"),
            "{}",
            ctx()
        );
        // Streaming or not, the guest kept notifying the device.
        let notifies = device_exits(&stderr);
        assert!(notifies > 5000, "only {notifies} virtio exits; {}", ctx());
    }
    let own_first = mem.own_first.expect("the VMM's memory was never sampled");
    let growth = mem.own.saturating_sub(own_first);
    assert!(
        growth < OWN_GROWTH_LIMIT_KIB,
        "{}: the VMM's own memory grew by {growth} KiB ({own_first} -> {} KiB); {}",
        case.name,
        mem.own,
        ctx()
    );
    println!(
        "hostile linux {}: arena-vmm exit {} ({}); channel {} bytes; serial {} bytes; \
         {} virtio exits; VMM peak RSS {} KiB, outside the {GUEST_MIB} MiB of guest RAM \
         {own_first} -> peak {} KiB ({} samples)",
        case.name,
        case.exit_code,
        case.reason,
        channel.bytes,
        serial_log.len(),
        device_exits(&stderr),
        mem.rss,
        mem.own,
        mem.samples
    );
}

/// A child killed and reaped when dropped: a failed check must not leave
/// its VMM running into the parts after this one.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MMIO exits of the busiest virtio-mmio slot, from `arena-vmm`'s exit
/// statistics line (`...; mmio 0xd0000000: 28548; io 0x3f8: ...`).
fn device_exits(stderr: &str) -> u64 {
    let re = regex::Regex::new(r"mmio 0x[0-9a-f]+: (\d+)").unwrap();
    re.captures_iter(stderr)
        .filter_map(|c| c[1].parse().ok())
        .max()
        .unwrap_or(0)
}

/// Accepts the VMM's connection, failing if it exits first.
fn accept(listener: &UnixListener, child: &mut Child) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(s) = child.try_wait().unwrap() {
                    panic!("arena-vmm ended ({s}) before connecting its channel");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads the channel until the VMM closes it, keeping counts, the head and
/// which `wanted` lines were seen; never the whole stream.
fn read_channel(conn: &mut UnixStream, wanted: &[&str]) -> Channel {
    let mut ch = Channel {
        found: vec![false; wanted.len()],
        ..Channel::default()
    };
    let mut line = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        ch.bytes += n as u64;
        let take = n.min(1024 - ch.head.len().min(1024));
        ch.head.extend_from_slice(&buf[..take]);
        for &b in &buf[..n] {
            if line.len() < 256 {
                line.push(b);
            }
            if b == b'\n' {
                ch.newlines += 1;
                let text = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"));
                for (w, f) in wanted.iter().zip(ch.found.iter_mut()) {
                    *f |= text == Some(w.as_bytes());
                }
                line.clear();
            }
        }
    }
    ch
}

/// Total RSS of `pid` and the part outside its guest RAM (the anonymous
/// mapping exactly `guest_bytes` long), in KiB; `None` once it is gone.
fn vmm_memory(pid: u32, guest_bytes: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest, mut in_guest, mut seen) = (0, 0, false, false);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    in_guest = b - a == guest_bytes;
                    seen |= in_guest;
                }
            }
        }
    }
    seen.then_some((total, total - guest))
}

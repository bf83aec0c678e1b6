//! The own VMM's gdb stub on a Linux guest under real KVM, driven by a real
//! gdb (`/usr/bin/gdb` in batch mode): a part of `nested.rs`.
//!
//! This host's `/dev/kvm` (PVM) cannot run Linux, so the part runs in the
//! test's one L1 with real KVM (`lab nested --exec`); where KVM can run
//! Linux it runs directly. Either way it runs: there is no skip. Two Linux
//! guests, Debian's default kernel (stripped: its symbol addresses are read
//! from the guest's `/proc/kallsyms`, see [`symbols_guest`]):
//!
//! 1. `arena-vmm --gdb-on-demand` on a busybox guest that prints the
//!    addresses and then reads `/proc/version` in a loop: SIGUSR2 pauses
//!    it; gdb reads `linux_banner`, sets a software and then a hardware
//!    breakpoint on `version_proc_show`, interrupts a `continue` (Ctrl-C),
//!    reads the registers and memory, steps, and kills the VM;
//! 2. `lab boot --backend kvm --gdb=PORT`: gdb finds the VM at its first
//!    instruction, steps it, sets a hardware breakpoint on `start_kernel`,
//!    interrupts the boot once the console shows the banner, reads
//!    `linux_banner` through the kernel's page tables, detaches; the boot
//!    then ends normally;
//! 3. `lab run --backend kvm --gdb-on-fail=PORT` with a failing scenario:
//!    the runner pauses the failed VM (SIGUSR2 opens the VMM's stub), gdb
//!    reads a register and `linux_banner` and kills it, and the run records
//!    the failure.
//!
//! Breakpoints and steps are checked as this KVM does them
//! (`vmm::gdb::probe`): where it does, each must stop where asked; where
//! it does not, the stub must refuse it (gdb says it cannot insert the
//! breakpoint) and the guest must run on. In L1 (KVM on QEMU TCG's
//! emulated SVM) neither kind of breakpoint can work; see the probe's docs
//! and `docs/architecture.md`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arena_images::initramfs;
use vmm::gdb::probe::{check, Capability};

/// The kernel the guests boot.
const KERNEL: &str = "ARENA_GDB_KERNEL";
/// The symbols guest's initramfs.
const INITRD: &str = "ARENA_GDB_INITRD";
/// The symbols guest's `/init`: prints the addresses the test needs from
/// `/proc/kallsyms`, then calls `version_proc_show` ten times a second.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc
$B mount -t proc proc /proc
echo "symbols:"
$B grep -E ' (start_kernel|linux_banner|version_proc_show)$' /proc/kallsyms
echo "symbols done"
while true; do $B cat /proc/version > /dev/null; $B usleep 100000; done
"#;
/// Guest RAM of the symbols guest.
const GUEST_MIB: &str = "256";
/// How long a guest may take to reach a point the test waits for, and one
/// gdb run may take.
const DEADLINE: Duration = Duration::from_secs(300);
/// Printed when everything passed (the host checks for it in L1's output).
const PASSED: &str = "nested gdb: all checks passed";

/// On the host, before L1 boots (or before [`run`] runs directly): the
/// symbols guest's initramfs and the agent's image; what [`run`] needs, as
/// environment variables.
pub fn prepare() -> Vec<(&'static str, PathBuf)> {
    let kernel = arena_images::kernel::debian::default_kernel().expect("the default kernel");
    let initrd = symbols_initramfs();
    // `lab boot` in L1 would otherwise build the agent there, under TCG.
    let warm = crate::common::lab(&["image"]);
    assert_eq!(warm.status.code(), Some(0), "lab image failed");
    vec![(KERNEL, kernel.boot_image), (INITRD, initrd)]
}

/// On the host, after L1: every check passed inside.
pub fn check_report(stdout: &str) {
    assert!(stdout.contains(PASSED), "{stdout}");
}

/// Busybox and [`INIT`].
fn symbols_initramfs() -> PathBuf {
    let contents = vec![
        ("init".to_owned(), 0o755, INIT.as_bytes().to_vec()),
        (
            "bin/busybox".to_owned(),
            0o755,
            std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)"),
        ),
    ];
    initramfs::build_archive("arena-gdb-symbols-v1", &contents).unwrap()
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set"))
}

/// `arena-vmm` beside the `lab` under test.
fn arena_vmm() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_lab")).with_file_name("arena-vmm");
    assert!(
        p.is_file(),
        "{} missing: `cargo build --release` first",
        p.display()
    );
    p
}

/// The part itself: the guests, under real KVM (in L1, or directly).
pub fn run() {
    let probe = vmm::probe::probe();
    assert!(probe.usable, "this KVM must run Linux: {}", probe.reason);
    let kernel = env_path(KERNEL);
    let scratch = crate::common::scratch("nested-gdb");
    let can = Can::probe();
    let t = Instant::now();
    let syms = symbols_guest(&kernel, &env_path(INITRD), &scratch, &can);
    eprintln!(
        "nested gdb: symbols guest done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    lab_boot_under_gdb(&syms, &can);
    eprintln!(
        "nested gdb: lab boot under gdb done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    lab_run_gdb_on_fail(&syms, &scratch);
    eprintln!(
        "nested gdb: lab run --gdb-on-fail done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!("{PASSED}");
}

/// A child whose stderr is read line by line.
struct Lines {
    child: Child,
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(mut child: Child) -> Lines {
        let (tx, rx) = channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// The rest of the first line from now on that contains `marker`.
    fn after(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {marker:?} on stderr: {:#?}", self.seen));
            self.seen.push(l.clone());
            if let Some((_, rest)) = l.split_once(marker) {
                return rest.to_owned();
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        signal(&self.child, sig);
    }

    /// Waits for the child to exit; its exit code and all of its stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + DEADLINE;
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.rx.iter());
        (st.code(), self.seen.join("\n"))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill takes no pointers; the child is ours and unreaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Everything a pipe carries, appended to `into` as it comes.
fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Waits until `text` shows `marker`.
fn until(text: &Mutex<String>, marker: &str, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !text.lock().unwrap().contains(marker) {
        assert!(
            Instant::now() < deadline,
            "{what} never showed {marker:?}:\n{}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Printed by gdb just before the `continue` the test interrupts.
const CONTINUING: &str = "CONTINUING";

/// gdb in batch mode on `vmlinux`, attached to `port`, running `cmds`
/// (`p/x $pc` first, so the output proves it attached).
struct Gdb {
    child: Child,
    /// stdout: what the commands print, in order.
    out: Arc<Mutex<String>>,
    /// stderr, kept apart: gdb's stdout is a buffered pipe, so its stderr
    /// lines would otherwise land in the middle of stdout's.
    err: Arc<Mutex<String>>,
}

impl Gdb {
    fn start(vmlinux: &Path, port: u16, cmds: &[String]) -> Gdb {
        let mut c = Command::new("gdb");
        c.args(["-batch", "-nx"]).arg(vmlinux).args([
            "-ex",
            "set pagination off",
            "-ex",
            // `lab boot` starts the VMM a little later.
            "set tcp connect-timeout 120",
            "-ex",
            &format!("target remote 127.0.0.1:{port}"),
            "-ex",
            "p/x $pc",
        ]);
        for cmd in cmds {
            c.args(["-ex", cmd]);
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gdb (Debian package gdb)");
        let out = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), out.clone());
        let err = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), err.clone());
        Gdb { child, out, err }
    }

    /// Ctrl-C once gdb is in the `continue` after [`CONTINUING`] (and
    /// `ready` holds).
    fn interrupt_when(&self, ready: impl Fn() -> bool) {
        until(&self.out, CONTINUING, "gdb");
        let deadline = Instant::now() + DEADLINE;
        while !ready() {
            assert!(Instant::now() < deadline, "never ready to interrupt");
            std::thread::sleep(Duration::from_millis(50));
        }
        // gdb has sent vCont by now; the guest runs.
        std::thread::sleep(Duration::from_millis(500));
        signal(&self.child, libc::SIGINT);
    }

    /// Waits for gdb to end; its output and where the VM was stopped when
    /// it attached.
    fn finish(mut self) -> (String, u64) {
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gdb hung:\n{}", self.out.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        let text = format!("{}\n{}", self.out.lock().unwrap(), self.err.lock().unwrap());
        eprintln!("gdb output:\n{text}");
        // Attached (else gdb would answer `x` from the vmlinux file, and
        // `p` with "No registers.").
        let attached_at = text
            .lines()
            .find_map(|l| l.strip_prefix("$1 = 0x"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("gdb did not attach:\n{text}"));
        (text, attached_at)
    }
}

impl Drop for Gdb {
    /// A failed check must not leave gdb running into the next part.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of the `p/x` gdb printed after attaching (`$N = 0x...`,
/// N > 1), in order.
fn printed(out: &str) -> Vec<u64> {
    out.lines()
        .skip_while(|l| !l.starts_with("$1 = "))
        .skip(1)
        .filter_map(|l| l.strip_prefix('$')?.split_once(" = 0x"))
        .filter_map(|(_, v)| u64::from_str_radix(v.trim(), 16).ok())
        .collect()
}

/// What this KVM does for a debugger, as the stub will find it.
struct Can {
    sw: Result<(), String>,
    hw: Result<(), String>,
    step: Result<(), String>,
}

impl Can {
    fn probe() -> Can {
        let can = Can {
            sw: check(Capability::SwBreakpoints),
            hw: check(Capability::HwBreakpoints),
            step: check(Capability::SingleStep),
        };
        eprintln!(
            "nested gdb: this KVM: software breakpoints {:?}, hardware breakpoints {:?}, \
             single-step {:?}",
            can.sw, can.hw, can.step
        );
        can
    }
}

/// A kernel virtual address (the top 2 GiB, where the kernel image and
/// modules live) or a user one (the lower half): not a physical address.
fn is_virtual(pc: u64) -> bool {
    pc >= 0xffff_ffff_8000_0000 || (pc > 1 << 32 && pc < 1 << 47)
}

/// A pause or interrupt at `pc` stopped the running guest, not its boot's
/// physical entry: a virtual `pc`, or a static non-PIE user program's
/// (busybox, at 0x400000, below 4 GiB) when the kernel's own virtual
/// memory (`linux_banner`) reads in `after`, which proves paging is on.
/// Seen under load: a SIGUSR2 pause at 0x41c0a6 in busybox.
fn stopped_in_running_guest(pc: u64, after: &str) -> bool {
    is_virtual(pc) || (pc >= 0x40_0000 && after.contains("\"Linux version 6."))
}

/// Boots the symbols guest under `arena-vmm --gdb-on-demand`, reads the
/// addresses it prints, then debugs it: SIGUSR2, `linux_banner`, a
/// software then a hardware breakpoint on `version_proc_show`, Ctrl-C,
/// registers, memory, a step, kill. Returns the symbols.
fn symbols_guest(kernel: &Path, initrd: &Path, scratch: &Path, can: &Can) -> BTreeMap<String, u64> {
    let serial = scratch.join("symbols-serial.log");
    let child = Command::new(arena_vmm())
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args([
            "--cmdline",
            "console=ttyS0 loglevel=4 nokaslr panic=-1 rdinit=/init",
            "--mem-mib",
            GUEST_MIB,
            "--timeout-s",
            "300",
            "--gdb-on-demand",
            "127.0.0.1:0",
            "--serial",
        ])
        .arg(&serial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start arena-vmm");
    let mut vmm = Lines::new(child);
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("symbols done") {
            break text;
        }
        if let Ok(Some(st)) = vmm.child.try_wait() {
            panic!("the symbols guest ended ({st}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the symbols guest never printed its symbols:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let syms: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            Some((f.next()?.to_owned(), addr))
        })
        .collect();
    for s in ["start_kernel", "linux_banner", "version_proc_show"] {
        assert!(
            syms.contains_key(s),
            "{s} not in the guest's kallsyms:\n{text}"
        );
    }
    eprintln!("nested gdb: symbols {syms:x?}");
    vmm.signal(libc::SIGUSR2);
    let port: u16 = vmm
        .after("arena-vmm: paused; gdb stub on 127.0.0.1:")
        .parse()
        .unwrap();
    let show = syms["version_proc_show"];
    let banner = syms["linux_banner"];
    let gdb = Gdb::start(
        kernel,
        port,
        &[
            format!("x/s {banner:#x}"),
            format!("break *{show:#x}"),
            "continue".into(),
            "p/x $pc".into(),
            "delete".into(),
            format!("hbreak *{show:#x}"),
            "continue".into(),
            "p/x $pc".into(),
            "delete".into(),
            format!("echo {CONTINUING}\\n"),
            "continue".into(),
            "p/x $pc".into(),
            "info registers rip".into(),
            "stepi".into(),
            "p/x $pc".into(),
            format!("x/s {banner:#x}"),
            "kill".into(),
        ],
    );
    gdb.interrupt_when(|| true);
    let (out, paused_at) = gdb.finish();
    // Paused by SIGUSR2 wherever the guest was; memory through its page
    // tables, before and after running on.
    assert!(stopped_in_running_guest(paused_at, &out), "{out}");
    assert_eq!(out.matches("\"Linux version 6.").count(), 2, "{out}");
    let pcs = printed(&out);
    assert_eq!(pcs.len(), 4, "{out}");
    match &can.sw {
        Ok(()) => {
            assert!(out.contains("Breakpoint 1, "), "{out}");
            assert_eq!(pcs[0], show, "{out}");
        }
        Err(_) => {
            assert!(out.contains("Cannot insert breakpoint 1"), "{out}");
            assert_eq!(pcs[0], paused_at, "a refused continue runs nothing: {out}");
        }
    }
    if can.hw.is_ok() {
        assert!(out.contains("Breakpoint 2, "), "{out}");
    }
    hw_break_kept_or_refused(&out, can, pcs[1], show, pcs[0]);
    // Ctrl-C stopped the running guest somewhere else.
    interrupted_at(&out, pcs[2]);
    match &can.step {
        Ok(()) => assert_ne!(pcs[3], pcs[2], "the step moved on: {out}"),
        Err(_) => assert!(
            out.contains("Target does not support this operation"),
            "{out}"
        ),
    }
    let (code, err) = vmm.wait();
    assert_eq!(code, Some(vmm::EXIT_DEBUGGER_KILL), "{err}");
    assert!(err.contains("killed by the gdb client"), "{err}");
    for (cap, what) in [(&can.sw, "software"), (&can.hw, "hardware")] {
        let said = format!("{what} breakpoints do not work on this host's KVM");
        assert_eq!(cap.is_err(), err.contains(&said), "{err}");
    }
    syms
}

/// `lab boot --backend kvm --gdb=PORT`: the first instruction, a step, a
/// hardware breakpoint on `start_kernel` set before the kernel ran, Ctrl-C
/// once the console shows the banner, a register, `linux_banner` through
/// the kernel's page tables; after the detach the boot ends normally.
fn lab_boot_under_gdb(syms: &BTreeMap<String, u64>, can: &Can) {
    let port = crate::common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["boot", "--backend", "kvm", "--timeout", "600"])
        .arg(format!("--gdb={port}"))
        .current_dir(crate::common::root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lab boot");
    let console = Arc::new(Mutex::new(String::new()));
    collect(child.stdout.take().unwrap(), console.clone());
    let mut lab = Lines::new(child);
    let vmlinux = lab.after("  gdb ");
    let vmlinux = vmlinux.split(" -ex ").next().unwrap().to_owned();
    let start = syms["start_kernel"];
    let banner = syms["linux_banner"];
    let gdb = Gdb::start(
        Path::new(&vmlinux),
        port,
        &[
            "stepi".into(),
            "p/x $pc".into(),
            format!("hbreak *{start:#x}"),
            "continue".into(),
            "p/x $pc".into(),
            "delete".into(),
            format!("echo {CONTINUING}\\n"),
            "continue".into(),
            "p/x $pc".into(),
            "info registers rip".into(),
            format!("x/s {banner:#x}"),
            "detach".into(),
        ],
    );
    assert!(
        console.lock().unwrap().is_empty(),
        "the guest ran before gdb said so"
    );
    let t = Instant::now();
    gdb.interrupt_when(|| console.lock().unwrap().contains("Linux version"));
    eprintln!(
        "nested gdb: interrupted the boot {:.1} s after gdb started",
        t.elapsed().as_secs_f64()
    );
    let (out, first) = gdb.finish();
    // Held at the kernel's PVH entry: a physical address, paging is off.
    assert!(first < 1 << 32, "not at the first instruction: {out}");
    let pcs = printed(&out);
    assert_eq!(pcs.len(), 3, "{out}");
    match &can.step {
        Ok(()) => assert_ne!(pcs[0], first, "the step moved on: {out}"),
        Err(_) => assert_eq!(pcs[0], first, "{out}"),
    }
    hw_break_kept_or_refused(&out, can, pcs[1], start, pcs[0]);
    // Interrupted in the running kernel (or its first process).
    interrupted_at(&out, pcs[2]);
    assert!(out.contains("\"Linux version 6."), "{out}");
    assert!(out.contains("detached"), "{out}");
    let t = Instant::now();
    let (code, err) = lab.wait();
    eprintln!(
        "nested gdb: lab boot ended {:.1} s after the detach:\n{err}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        code,
        Some(0),
        "the boot did not end normally after the detach: {err}"
    );
}

/// A hardware breakpoint at `want`: where this KVM does them, gdb stopped
/// there (`at`); where not, gdb could not insert it and the refused
/// `continue` ran nothing (`at` is still `before`).
fn hw_break_kept_or_refused(out: &str, can: &Can, at: u64, want: u64, before: u64) {
    match &can.hw {
        Ok(()) => assert_eq!(at, want, "stopped at the breakpoint: {out}"),
        Err(_) => {
            assert!(
                out.contains("Could not insert hardware breakpoint"),
                "{out}"
            );
            assert_eq!(at, before, "a refused continue runs nothing: {out}");
        }
    }
}

/// Ctrl-C stopped the running guest at `pc`, and `info registers` says so.
/// The vCPU may be in the kernel or in user space: a static, non-PIE
/// program (busybox, at 0x400000) runs below 4 GiB, so a low `pc` counts
/// when the kernel's own virtual memory (`linux_banner`) reads right after
/// it, which proves paging is on (the boot's physical entry point cannot).
fn interrupted_at(out: &str, pc: u64) {
    assert!(out.contains("received signal SIGINT"), "{out}");
    let after = out.split("received signal SIGINT").nth(1).unwrap_or("");
    assert!(stopped_in_running_guest(pc, after), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("rip") && l.contains(&format!("{pc:#x}"))),
        "{out}"
    );
}

/// A scenario that fails at its last step (a wrong expected value).
const FAILS: &str = "name: own-vmm-gdb-on-fail\nsteps:\n  - arena: { id: a, pages: 4 }\n  - mmap: { arena: a }\n  - touch: { arena: a, page: 0, op: write, value: 7 }\n  - touch: { arena: a, page: 0, op: read, expect: { value: 8 } }\n";

/// `lab run --backend kvm --gdb-on-fail=PORT`: the failed scenario's VM is
/// paused for gdb, which reads it and kills it; the run records the fail.
fn lab_run_gdb_on_fail(syms: &BTreeMap<String, u64>, scratch: &Path) {
    let file = crate::common::scenario(scratch, "own-vmm-gdb-on-fail", FAILS);
    let results = scratch.join("gdb-on-fail-results");
    let port = crate::common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["run", "--backend", "kvm", "--results"])
        .arg(&results)
        .arg(format!("--gdb-on-fail={port}"))
        .arg(&file)
        .current_dir(crate::common::root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lab run");
    let mut lab = Lines::new(child);
    let vmlinux = lab.after("  gdb ");
    let vmlinux = vmlinux.split(" -ex ").next().unwrap().to_owned();
    let held = lab.after("own-vmm-gdb-on-fail failed");
    assert!(held.contains("is paused with a gdb stub"), "{held}");
    let banner = syms["linux_banner"];
    let gdb = Gdb::start(
        Path::new(&vmlinux),
        port,
        &[
            "info registers rip".into(),
            format!("x/s {banner:#x}"),
            "kill".into(),
        ],
    );
    let (out, at) = gdb.finish();
    assert!(
        stopped_in_running_guest(at, &out),
        "paused in the running guest: {out}"
    );
    assert!(out.contains("\"Linux version 6."), "{out}");
    let (code, err) = lab.wait();
    assert_eq!(code, Some(1), "the failure is the run's verdict: {err}");
    let summary = crate::common::summary(&results);
    assert_eq!(summary["scenarios"][0]["verdict"], "fail", "{summary}");
}

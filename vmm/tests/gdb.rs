//! The gdb stub, driven by a real gdb (`/usr/bin/gdb`, batch mode) and by
//! a hostile raw client, against the `gdb_pvh` guest (which calls `tick`
//! forever, counting in `counter`) under this host's KVM.
//!
//! Everything here runs under PVM too, except software breakpoints: where
//! KVM does not intercept a guest `int3` (`vmm::gdb::probe`: PVM's
//! emulator fails on it, QEMU TCG's SVM hands it to the guest) the stub
//! must refuse them (an error reply, gdb says it cannot insert the
//! breakpoint) and the guest must run on; elsewhere a `break` must stop at
//! its address. Linux under the stub is the `gdb` part of the runner's
//! `nested` test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long one gdb run, or one expected line, may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// `arena-vmm` running `gdb_pvh`, its stderr read line by line.
struct Vmm {
    child: Child,
    stderr: Receiver<String>,
    seen: Vec<String>,
    serial: PathBuf,
    elf: PathBuf,
}

impl Vmm {
    fn start(test: &str, extra: &[&str]) -> Vmm {
        require_kvm(test);
        let elf = build_pvh("gdb_pvh");
        let serial = out_dir().join(format!("{test}-{}.serial", std::process::id()));
        let _ = std::fs::remove_file(&serial);
        let mut child = Command::new(env!("CARGO_BIN_EXE_arena-vmm"))
            .arg("--kernel")
            .arg(&elf)
            .args(["--mem-mib", "64", "--timeout-s", "120", "--serial"])
            .arg(&serial)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Vmm {
            child,
            stderr,
            seen: Vec::new(),
            serial,
            elf,
        }
    }

    /// Waits for a stderr line starting with `prefix`; returns its rest.
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => panic!("no line {prefix:?} on stderr: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the line that says a gdb session ended; returns why.
    fn session_ended(&mut self) -> String {
        loop {
            let l = self.line("arena-vmm: gdb: ");
            if let Some(why) = l.strip_suffix("; the VM runs on without a debugger") {
                return why.to_owned();
            }
        }
    }

    /// The port of the stub the line starting with `prefix` names.
    fn port(&mut self, prefix: &str) -> u16 {
        let addr = self.line(prefix);
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes no pointers; the child is ours and unreaped.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for the VMM to exit; its status code and remaining stderr.
    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + DEADLINE;
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("arena-vmm did not exit: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.seen.extend(self.stderr.iter());
        (code, self.seen.join("\n"))
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gdb in batch mode on `elf` (for its symbols), connected to `port`,
/// running `cmds`; its output so far is shared while it runs.
struct Gdb {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Gdb {
    fn start(elf: &Path, port: u16, cmds: &[&str]) -> Gdb {
        let mut c = Command::new("gdb");
        c.args(["-batch", "-nx"]).arg(elf).args([
            "-ex",
            "set pagination off",
            "-ex",
            &format!("target remote 127.0.0.1:{port}"),
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
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Gdb { child, out }
    }

    /// Waits until gdb has printed `text`.
    fn until(&self, text: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.out.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline,
                "gdb never printed {text:?}:\n{}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C, as gdb gets it from a terminal.
    fn interrupt(&self) {
        // SAFETY: kill takes no pointers; the child is ours and unreaped.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for gdb to end; everything it printed.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gdb hung:\n{}", self.out.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The reader threads drain the pipes once gdb is gone.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        eprintln!("gdb output:\n{out}");
        out
    }
}

/// The guest's symbol table, by name.
fn symbol(elf: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(elf).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, n) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| u64::from_str_radix(addr, 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in {}", elf.display()))
}

/// The value gdb printed for `x/wx &counter` in `out`, each time.
fn counters(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.split_once("<counter>:"))
        .map(|(_, v)| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

#[test]
fn gdb_holds_the_first_instruction_and_steps_breaks_reads_and_writes() {
    let mut vmm = Vmm::start("gdb-halted", &["--vcpus", "2", "--gdb", "127.0.0.1:0"]);
    let port = vmm.port("arena-vmm: waiting for gdb on ");
    std::thread::sleep(Duration::from_millis(200));
    assert!(vmm.serial().is_empty(), "the guest ran before gdb said so");
    let elf = vmm.elf.clone();
    let entry = symbol(&elf, "pvh_start");
    let tick = symbol(&elf, "tick");
    let out = Gdb::start(
        &elf,
        port,
        &[
            "info threads",
            "p/x $rip",
            "stepi",
            "p/x $rip",
            "hbreak tick",
            "continue",
            "p/x $rip",
            "x/wx &counter",
            "set {int}&counter = 0x1000",
            "stepi",
            "x/wx &counter",
            "x/s &magic",
            "p/x $cs",
            "kill",
        ],
    )
    .finish();
    // Halted at the entry point, before a single instruction ran.
    assert!(out.contains(&format!("$1 = {entry:#x}")), "{out}");
    // One thread per vCPU.
    assert!(
        out.contains("(vCPU 0)") && out.contains("(vCPU 1)"),
        "{out}"
    );
    // stepi moved one instruction (`mov $0x80000, %esp`, 5 bytes).
    assert!(out.contains(&format!("$2 = {:#x}", entry + 5)), "{out}");
    // The hardware breakpoint stops at tick, before counter moves.
    assert!(out.contains(&format!("$3 = {tick:#x}")), "{out}");
    assert!(out.contains("in tick ()"), "{out}");
    // Memory read, written, and the step ran `incl counter` on it.
    assert_eq!(counters(&out), vec![0, 0x1001], "{out}");
    assert!(out.contains("\"arena gdb magic\""), "{out}");
    // The boot GDT's 32-bit code selector.
    assert!(out.contains("$4 = 0x8"), "{out}");
    let (code, err) = vmm.wait();
    assert_eq!(code, vmm::EXIT_DEBUGGER_KILL, "{err}");
    assert!(err.contains("killed by the gdb client"), "{err}");
}

#[test]
fn sigusr2_pauses_a_running_guest_for_gdb_and_detach_lets_it_run_on() {
    let mut vmm = Vmm::start("gdb-on-demand", &["--gdb-on-demand", "127.0.0.1:0"]);
    let deadline = Instant::now() + DEADLINE;
    while !vmm.serial().contains("gdb guest up") {
        assert!(Instant::now() < deadline, "the guest never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    vmm.signal(libc::SIGUSR2);
    let port = vmm.port("arena-vmm: paused; gdb stub on ");
    let elf = vmm.elf.clone();
    let tick = symbol(&elf, "tick");
    let sw = vmm::gdb::probe::sw_breakpoints();
    if vmm::probe::host_is_pvm() {
        assert!(
            sw.is_err(),
            "PVM fails on int3, yet the probe says it works"
        );
    }
    let no_sw = sw.is_err();
    let gdb = Gdb::start(
        &elf,
        port,
        &[
            "x/wx &counter",
            "break tick",
            "continue",
            "p/x $rip",
            "delete",
            "echo CONTINUING\\n",
            "continue",
            "x/wx &counter",
            "detach",
        ],
    );
    // The second `continue` runs until Ctrl-C.
    gdb.until("CONTINUING");
    std::thread::sleep(Duration::from_secs(1));
    gdb.interrupt();
    let out = gdb.finish();
    let seen = counters(&out);
    assert_eq!(seen.len(), 2, "{out}");
    assert!(seen[0] > 0, "paused a guest that had run: {out}");
    assert!(seen[1] > seen[0], "continue ran the guest: {out}");
    assert!(out.contains("received signal SIGINT"), "{out}");
    if no_sw {
        // Refused, not written: the guest never met an int3.
        assert!(out.contains("Cannot insert breakpoint 1"), "{out}");
        vmm.line("arena-vmm: gdb: software breakpoints do not work on this host's KVM");
    } else {
        assert!(out.contains("Breakpoint 1, "), "{out}");
        assert!(out.contains(&format!("$1 = {tick:#x}")), "{out}");
    }
    assert!(out.contains("detached"), "{out}");
    assert_eq!(vmm.session_ended(), "detached");

    // Detached, the guest runs on; SIGUSR2 pauses it for a new client.
    vmm.signal(libc::SIGUSR2);
    let port = vmm.port("arena-vmm: paused; gdb stub on ");
    let out = Gdb::start(&elf, port, &["x/wx &counter", "x/2i tick", "kill"]).finish();
    let again = counters(&out);
    assert_eq!(again.len(), 1, "{out}");
    assert!(again[0] > seen[1], "the guest ran after the detach: {out}");
    // No int3 left behind in the code.
    assert!(out.contains("incl"), "{out}");
    let (code, err) = vmm.wait();
    assert_eq!(code, vmm::EXIT_DEBUGGER_KILL, "{err}");
    assert!(!vmm_serial_has_errors(&err), "{err}");
}

/// The stub asks KVM what it can do (`vmm::gdb::probe`); under PVM the
/// answers are known: `int3` is an emulation failure, DR0–DR3 and
/// single-step work.
#[test]
fn the_capability_probe_answers_and_pvm_gets_the_known_answers() {
    require_kvm("the_capability_probe_answers_and_pvm_gets_the_known_answers");
    use vmm::gdb::probe::{check, Capability};
    let answers: Vec<_> = [
        Capability::SwBreakpoints,
        Capability::HwBreakpoints,
        Capability::SingleStep,
    ]
    .into_iter()
    .map(|c| (c, check(c)))
    .collect();
    eprintln!("{answers:?}");
    if vmm::probe::host_is_pvm() {
        let [(_, sw), (_, hw), (_, step)] = &answers[..] else {
            unreachable!()
        };
        assert!(sw.as_ref().unwrap_err().contains("InternalError"), "{sw:?}");
        assert_eq!((hw, step), (&Ok(()), &Ok(())));
    }
}

/// Whether the VMM's stderr reports a failure of its own.
fn vmm_serial_has_errors(err: &str) -> bool {
    err.contains("panicked") || err.contains("KVM_SET_GUEST_DEBUG on vCPU")
}

/// A raw remote-protocol client: one packet out, one reply in.
struct Raw(TcpStream);

impl Raw {
    fn send(&mut self, data: &str) {
        let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        write!(self.0, "${data}#{sum:02x}").unwrap();
    }

    /// The next packet's data (acks skipped); `None` once the stub hung up.
    fn reply(&mut self) -> Option<String> {
        let mut byte = [0u8];
        let mut data = Vec::new();
        loop {
            if self.0.read(&mut byte).ok()? == 0 {
                return None;
            }
            match byte[0] {
                b'$' => data.clear(),
                b'#' => {
                    let mut sum = [0u8; 2];
                    self.0.read_exact(&mut sum).ok()?;
                    self.0.write_all(b"+").ok()?;
                    return Some(String::from_utf8_lossy(&data).into_owned());
                }
                b => data.push(b),
            }
        }
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.reply().unwrap_or_else(|| panic!("no reply to {data}"))
    }
}

fn connect(port: u16) -> Raw {
    let c = Raw(TcpStream::connect(("127.0.0.1", port)).unwrap());
    c.0.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

#[test]
fn a_hostile_client_gets_error_replies_and_cannot_take_the_vmm_down() {
    let mut vmm = Vmm::start("gdb-hostile", &["--gdb", "127.0.0.1:0"]);
    let port = vmm.port("arena-vmm: waiting for gdb on ");
    let mut c = connect(port);
    assert!(c
        .ask("qSupported:multiprocess+;swbreak+;hwbreak+")
        .contains("PacketSize"));
    assert!(c.ask("?").starts_with('T'));
    // Unmapped (paging is off, so: outside RAM), MMIO, the top of the
    // address space, a huge length: EFAULT (E0e), never a host access.
    for addr in ["ffffffff81000000", "d0000000", "fffffffffffffff0"] {
        assert_eq!(c.ask(&format!("m{addr},10")), "E0e", "read at {addr}");
        assert_eq!(c.ask(&format!("M{addr},2:9090")), "E0e", "write at {addr}");
    }
    // A length past guest RAM: what is RAM, then the error (the session
    // goes on).
    let r = c.ask("m0,ffffffffffffffff");
    assert!(r.ends_with("E0e"), "{} bytes of reply", r.len());
    // RAM reads fine.
    assert_eq!(c.ask("m100000,1").len(), 2);
    // A thread that does not exist.
    c.ask("Hg63");
    assert!(c.ask("g").starts_with('E'));
    // Four hardware breakpoints, not five.
    for a in 0..4 {
        assert_eq!(c.ask(&format!("Z1,{:x},1", 0x100000 + a)), "OK");
    }
    assert!(c.ask("Z1,200000,1").starts_with('E'));
    for a in 0..4 {
        assert_eq!(c.ask(&format!("z1,{:x},1", 0x100000 + a)), "OK");
    }
    // A register file too short to be one: refused, or the session ends.
    c.ask("Hg1");
    c.send("G00");
    if let Some(r) = c.reply() {
        assert!(r.starts_with('E'), "{r}");
    }
    drop(c);
    vmm.session_ended();
    // The session is over, the guest runs on.
    let deadline = Instant::now() + DEADLINE;
    while !vmm.serial().contains("gdb guest up") {
        assert!(Instant::now() < deadline, "the guest was not resumed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Garbage longer than any packet ends a session, not the VMM.
    vmm.signal(libc::SIGUSR2);
    let mut c = connect(vmm.port("arena-vmm: paused; gdb stub on "));
    let junk = "x".repeat(64 << 10);
    write!(c.0, "${junk}#00").unwrap();
    while c.reply().is_some() {}
    assert_eq!(
        vmm.session_ended(),
        "the client sent a packet longer than the packet size"
    );
    // And a client can still attach and kill it.
    vmm.signal(libc::SIGUSR2);
    let mut c = connect(vmm.port("arena-vmm: paused; gdb stub on "));
    c.ask("qSupported:multiprocess+");
    c.send("vKill;1");
    let _ = c.reply();
    let (code, err) = vmm.wait();
    assert_eq!(code, vmm::EXIT_DEBUGGER_KILL, "{err}");
    assert!(!vmm_serial_has_errors(&err), "{err}");
}

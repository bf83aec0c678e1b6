//! vCPUs: per-vCPU KVM setup and the run loop (one thread per vCPU).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::x86_64::{cpuid, msr, regs, ArchError};
use crate::devices::Bus;
use crate::event::{DebugExit, VmEvent};
use crate::exit_reason::ExitReason;
use crate::exit_stats::{ExitKind, ExitStats};

/// Signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The kick signal's handler could not be installed. Its default action
/// (SIGRTMIN: terminate) would then kill the VMM at the first pause.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the handler of the vCPU kick signal {signal}: {source}")]
pub struct KickError {
    /// The signal number.
    pub signal: i32,
    /// Why `sigaction` refused it.
    pub source: vmm_sys_util::errno::Error,
}

/// Installs the (empty) kick signal handler once per process. A failure
/// is an error, every time it is asked again: without the handler a kick
/// would terminate the process.
pub fn install_kick_handler() -> Result<(), KickError> {
    static RESULT: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    let signal = kick_signal();
    RESULT
        .get_or_init(|| install_handler(signal).map_err(|e| e.source.errno()))
        .map_err(|errno| KickError {
            signal,
            source: vmm_sys_util::errno::Error::new(errno),
        })
}

/// Installs the empty handler for real-time signal `signal`.
fn install_handler(signal: i32) -> Result<(), KickError> {
    vmm_sys_util::signal::register_signal_handler(signal, noop_handler)
        .map_err(|source| KickError { signal, source })
}

/// True when `ARENA_VMM_TRACE` is set: every vCPU exit is logged to stderr.
pub fn trace_enabled() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("ARENA_VMM_TRACE").is_some())
}

/// A configured vCPU ready to run.
pub struct Vcpu {
    /// vCPU index, also its APIC ID.
    pub id: u8,
    fd: VcpuFd,
}

/// Everything a vCPU thread needs to handle exits.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the first fatal or final exit, or a debug exit, is reported.
    pub exit_tx: Sender<VmEvent>,
    /// Set by the VMM to stop every vCPU.
    pub stop: Arc<AtomicBool>,
    /// Set by the vCPU just before it enters the guest for the first time.
    pub started: Arc<std::sync::OnceLock<std::time::Instant>>,
    /// Where this vCPU adds its exit counts when it stops.
    pub stats: Arc<std::sync::Mutex<ExitStats>>,
}

impl Vcpu {
    /// Configures CPUID, MSRs, FPU and LAPIC of a new vCPU.
    pub fn new(
        fd: VcpuFd,
        id: u8,
        base_cpuid: &CpuId,
        quirks: cpuid::CpuidQuirks,
    ) -> Result<Self, ArchError> {
        let mut c = base_cpuid.clone();
        cpuid::patch_cpuid(&mut c, id, quirks);
        fd.set_cpuid2(&c)
            .map_err(|e| ArchError::Kvm("KVM_SET_CPUID2", e))?;
        msr::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lapic(&fd)?;
        Ok(Self { id, fd })
    }

    /// A vCPU whose state comes from a snapshot (see
    /// `snapshot::kvm_state::restore_vcpu`), not from boot setup.
    pub fn restored(fd: VcpuFd, id: u8) -> Self {
        Self { id, fd }
    }

    /// The KVM vCPU.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Points the (boot) vCPU at the kernel entry.
    pub fn set_boot_entry(&self, entry: regs::BootEntry) -> Result<(), ArchError> {
        regs::setup_boot_regs(&self.fd, entry)
    }

    /// Runs until the guest exits for good, the vCPU stops for a debugger
    /// (`KVM_EXIT_DEBUG`), or the VMM asks to stop. On a stop request the
    /// vCPU is settled (its pending I/O completed) so that its state can be
    /// saved or shown.
    pub fn run(&mut self, ctx: &VcpuContext) {
        let mut first = true;
        let mut stats = ExitStats::default();
        let mut reported = false; // this vCPU ended the VM itself
        while !ctx.stop.load(Ordering::Acquire) {
            if first {
                let _ = ctx.started.set(std::time::Instant::now());
                first = false;
            }
            let outcome = match self.fd.run() {
                // Only a debugger turns these on: it takes the vCPU as it is.
                Ok(VcpuExit::Debug(arch)) => {
                    let _ = ctx.exit_tx.send(VmEvent::Debug(DebugExit {
                        vcpu: self.id,
                        arch,
                    }));
                    reported = true;
                    break;
                }
                Ok(exit) => handle_exit(exit, ctx, &mut stats),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(ExitReason::VcpuError(format!("KVM_RUN: {e}"))),
            };
            let Some(mut reason) = outcome else { continue };
            if let ExitReason::InternalError { suberror, .. } = &mut reason {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the valid one.
                *suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
            }
            let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
            let _ = ctx
                .exit_tx
                .send(VmEvent::Exit(reason.with_location(self.id, rip)));
            reported = true;
            break;
        }
        if !reported {
            self.settle(ctx, &mut stats);
        }
        crate::devices::lock(&ctx.stats).merge(&stats);
        if trace_enabled() {
            if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
                eprintln!(
                    "arena-vmm trace: vCPU {} stopped at rip {:#x} rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                    self.id, r.rip, r.rsp, s.cr0, s.cr3, s.cr4, s.efer
                );
            }
        }
    }
}

impl Vcpu {
    /// Completes what the last exit left pending, without running the guest
    /// on: after a port-I/O or MMIO exit, KVM finishes the instruction (an
    /// `in` stores its value into RAX, RIP advances) only on the next
    /// KVM_RUN, so saved registers would be wrong without this. With
    /// `immediate_exit` set, KVM_RUN completes that and returns EINTR; an
    /// access split in several exits is served from the buses meanwhile.
    fn settle(&mut self, ctx: &VcpuContext, stats: &mut ExitStats) {
        self.fd.set_kvm_immediate_exit(1);
        // Bounded: each round finishes one piece of one instruction.
        for _ in 0..16 {
            match self.fd.run() {
                Ok(exit) => {
                    if handle_exit(exit, ctx, stats).is_some() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.fd.set_kvm_immediate_exit(0);
    }
}

/// Handles one exit; returns a reason when the VM must stop.
fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext, stats: &mut ExitStats) -> Option<ExitReason> {
    if trace_enabled() {
        eprintln!("arena-vmm trace: {exit:?}");
    }
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.record(ExitKind::Io, &ctx.pio, u64::from(port));
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            stats.record(ExitKind::Io, &ctx.pio, u64::from(port));
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.record(ExitKind::Mmio, &ctx.mmio, addr);
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.record(ExitKind::Mmio, &ctx.mmio, addr);
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        VcpuExit::Shutdown => Some(ExitReason::TripleFault { vcpu: 0, rip: 0 }),
        VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::FailEntry { reason, cpu }),
        VcpuExit::InternalError => Some(ExitReason::InternalError {
            suberror: 0,
            vcpu: 0,
            rip: 0,
        }),
        VcpuExit::SystemEvent(ty, _) if ty == KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
        VcpuExit::SystemEvent(ty, _) if ty == KVM_SYSTEM_EVENT_SHUTDOWN => {
            Some(ExitReason::PowerOff)
        }
        VcpuExit::Hlt => Some(ExitReason::Unexpected("HLT with in-kernel irqchip".into())),
        other => Some(ExitReason::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{BusDevice, SharedDevice};
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;
    struct Recorder(Log);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    fn ctx() -> (VcpuContext, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let dev: SharedDevice = Arc::new(Mutex::new(Recorder(log.clone())));
        let mut pio = Bus::new();
        pio.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(dev, 0xd000_0000, 0x1000).unwrap();
        let (exit_tx, _rx) = std::sync::mpsc::channel();
        (
            VcpuContext {
                pio: Arc::new(pio),
                mmio: Arc::new(mmio),
                exit_tx,
                stop: Arc::new(AtomicBool::new(false)),
                started: Arc::new(std::sync::OnceLock::new()),
                stats: Arc::default(),
            },
            log,
        )
    }

    #[test]
    fn kick_handler_installs_and_a_refused_signal_is_an_error() {
        install_kick_handler().unwrap();
        // Installed: a kick no longer terminates the process.
        // SAFETY: `sigaction` is plain old data; all zeroes is a valid value.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `cur`.
        let r = unsafe { libc::sigaction(kick_signal(), std::ptr::null(), &mut cur) };
        assert_eq!(r, 0);
        assert_ne!(cur.sa_sigaction, libc::SIG_DFL, "default action: terminate");
        assert_ne!(cur.sa_sigaction, libc::SIG_IGN);
        // The same installer, asked for a signal the kernel refuses (past
        // SIGRTMAX), reports it instead of carrying on.
        let bad = libc::SIGRTMAX() + 1;
        let e = install_handler(bad).unwrap_err();
        assert_eq!(e.signal, bad);
        assert!(e.to_string().contains("kick signal"), "{e}");
        // And one that can never be caught.
        let e = install_handler(libc::SIGKILL).unwrap_err();
        assert_eq!(e.source.errno(), libc::EINVAL);
    }

    #[test]
    fn io_and_mmio_exits_are_dispatched() {
        let (c, log) = ctx();
        let mut d = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3fa, &mut d), &c, &mut ExitStats::default()),
            None
        );
        assert_eq!(d, [3, 3]);
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x80, &mut d), &c, &mut ExitStats::default()),
            None
        );
        assert_eq!(d, [0xff, 0xff], "unclaimed ports read as all ones");
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"x"), &c, &mut ExitStats::default()),
            None
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x1234, &[1]), &c, &mut ExitStats::default()),
            None
        );
        let mut m = [0u8; 4];
        assert_eq!(
            handle_exit(
                VcpuExit::MmioRead(0xd000_0010, &mut m),
                &c,
                &mut ExitStats::default()
            ),
            None
        );
        assert_eq!(m, [0x11; 4]);
        assert_eq!(
            handle_exit(
                VcpuExit::MmioRead(0xfeed_0000, &mut m),
                &c,
                &mut ExitStats::default()
            ),
            None
        );
        assert_eq!(m, [0xff; 4]);
        assert_eq!(
            handle_exit(
                VcpuExit::MmioWrite(0xd000_0070, &[1, 0, 0, 0]),
                &c,
                &mut ExitStats::default()
            ),
            None
        );
        assert_eq!(
            *log.lock().unwrap(),
            vec![(0, vec![b'x']), (0x70, vec![1, 0, 0, 0])]
        );
    }

    #[test]
    fn fatal_exits_map_to_reasons() {
        let (c, _) = ctx();
        assert!(matches!(
            handle_exit(VcpuExit::Shutdown, &c, &mut ExitStats::default()),
            Some(ExitReason::TripleFault { .. })
        ));
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &c, &mut ExitStats::default()),
            Some(ExitReason::InternalError { .. })
        ));
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(7, 1), &c, &mut ExitStats::default()),
            Some(ExitReason::FailEntry { reason: 7, cpu: 1 })
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &c,
                &mut ExitStats::default()
            ),
            Some(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &c,
                &mut ExitStats::default()
            ),
            Some(ExitReason::PowerOff)
        );
        assert!(matches!(
            handle_exit(VcpuExit::Hlt, &c, &mut ExitStats::default()),
            Some(ExitReason::Unexpected(_))
        ));
        assert_eq!(
            handle_exit(VcpuExit::Intr, &c, &mut ExitStats::default()),
            None
        );
    }
}

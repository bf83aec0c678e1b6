//! The VM as `gdbstub` sees it: a multi-threaded target whose threads are
//! the vCPUs (thread id = vCPU id + 1; gdb's ids start at 1).
//!
//! It only ever holds *stopped* vCPUs: the run loop hands them over after
//! pausing the VM (the same stop/kick/join it uses for snapshots) and
//! takes back the ones to run when gdb resumes. A request that arrives
//! while a vCPU runs finds no vCPU and gets an error reply, so a client
//! that talks out of turn cannot race a running guest. Nothing gdb sends
//! can end the VMM from here: every failure is an error reply (`Exx`,
//! errno-style numbers), never a fatal error or a panic.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, SwBreakpoint as SwBreakpointExt,
    SwBreakpointOps,
};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;

use super::breakpoints::{HwBreakpoints, SwBreakpoint, SwBreakpoints, INT3};
use super::config::GdbError;
use super::probe::{self, Capability};
use super::{memory, regs};
use crate::memory::GuestMem;
use crate::vcpu::Vcpu;

/// errno-style codes of the error replies (`E0e` is EFAULT, and so on).
const ESRCH: u8 = libc::ESRCH as u8;
const EIO: u8 = libc::EIO as u8;
const EFAULT: u8 = libc::EFAULT as u8;
const EBUSY: u8 = libc::EBUSY as u8;
const EINVAL: u8 = libc::EINVAL as u8;
const ENOSPC: u8 = libc::ENOSPC as u8;
const EOPNOTSUPP: u8 = libc::EOPNOTSUPP as u8;

/// gdb's thread id of vCPU `id`.
pub fn tid_of(id: u8) -> Tid {
    NonZeroUsize::MIN.saturating_add(usize::from(id))
}

/// The vCPU id of gdb's thread `tid`, if it can be one.
fn id_of(tid: Tid) -> Option<u8> {
    u8::try_from(tid.get() - 1).ok()
}

/// What gdb asked one vCPU to do on the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run.
    Continue,
    /// Execute one instruction.
    Step,
}

/// gdb's resume request (`vCont`), per vCPU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    actions: BTreeMap<u8, Action>,
    /// Scheduler locking: vCPUs without an action stay stopped.
    locked: bool,
}

impl ResumePlan {
    /// What vCPU `id` does; `None`: it stays stopped.
    pub fn action(&self, id: u8) -> Option<Action> {
        match self.actions.get(&id) {
            Some(a) => Some(*a),
            None if self.locked => None,
            None => Some(Action::Continue),
        }
    }
}

/// The VM's debug state and its stopped vCPUs.
pub struct VmTarget {
    vcpus: Vec<Vcpu>,
    /// Every vCPU id, running or not (gdb's thread list).
    ids: Vec<u8>,
    mem: Arc<GuestMem>,
    /// Hardware breakpoints, the same on every vCPU.
    pub hw: HwBreakpoints,
    /// Software breakpoints in guest memory.
    pub sw: SwBreakpoints,
    /// gdb's last resume request.
    pub plan: ResumePlan,
}

impl VmTarget {
    /// A target for a VM with vCPUs `ids` over `mem`.
    pub fn new(ids: Vec<u8>, mem: Arc<GuestMem>) -> Self {
        Self {
            vcpus: Vec::new(),
            ids,
            mem,
            hw: HwBreakpoints::default(),
            sw: SwBreakpoints::default(),
            plan: ResumePlan::default(),
        }
    }

    /// Takes stopped vCPUs.
    pub fn put(&mut self, vcpus: Vec<Vcpu>) {
        self.vcpus.extend(vcpus);
        self.vcpus.sort_by_key(|v| v.id);
    }

    /// Gives back the stopped vCPUs `keep` does not keep.
    pub fn take(&mut self, mut keep: impl FnMut(&Vcpu) -> bool) -> Vec<Vcpu> {
        let (kept, out) = std::mem::take(&mut self.vcpus)
            .into_iter()
            .partition(|v| keep(v));
        self.vcpus = kept;
        out
    }

    /// The stopped vCPUs.
    pub fn stopped(&self) -> &[Vcpu] {
        &self.vcpus
    }

    /// Guest RAM.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The stopped vCPU behind `tid`.
    fn vcpu(&self, tid: Tid) -> Result<&Vcpu, TargetError<GdbError>> {
        let id = id_of(tid).ok_or(TargetError::Errno(ESRCH))?;
        if !self.ids.contains(&id) {
            return Err(TargetError::Errno(ESRCH));
        }
        // A known vCPU that is not here is running.
        self.vcpus
            .iter()
            .find(|v| v.id == id)
            .ok_or(TargetError::Errno(EBUSY))
    }

    /// Any stopped vCPU, to translate addresses that are not per thread
    /// (breakpoints); the kernel's mappings are the same on every vCPU.
    fn any_vcpu(&self) -> Result<&Vcpu, TargetError<GdbError>> {
        self.vcpus.first().ok_or(TargetError::Errno(EBUSY))
    }

    /// Puts back the bytes of every software breakpoint (detach, kill).
    pub fn clear_sw_breakpoints(&mut self) {
        for bp in self.sw.take_all() {
            restore_byte(&self.mem, bp);
        }
    }
}

/// Puts back the byte an `int3` replaced, unless the guest has since
/// written something else there.
fn restore_byte(mem: &GuestMem, bp: SwBreakpoint) {
    if memory::read_phys_byte(mem, bp.gpa) == Some(INT3) {
        memory::write_phys_byte(mem, bp.gpa, bp.original);
    }
}

/// An error reply when this host's KVM cannot do `cap` (`what`, for the
/// one stderr line that says why, once per process and capability).
fn refuse_unless(cap: Capability, what: &str) -> Result<(), TargetError<GdbError>> {
    let Err(why) = probe::check(cap) else {
        return Ok(());
    };
    static SAID: [std::sync::Once; 3] = [
        std::sync::Once::new(),
        std::sync::Once::new(),
        std::sync::Once::new(),
    ];
    SAID[cap as usize].call_once(|| {
        eprintln!("arena-vmm: gdb: {what} do not work on this host's KVM: {why}");
    });
    Err(TargetError::Errno(EOPNOTSUPP))
}

impl Target for VmTarget {
    type Arch = X86_64_SSE;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for VmTarget {
    fn read_registers(&mut self, out: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let fd = self.vcpu(tid)?.fd();
        let r = fd.get_regs().map_err(|_| TargetError::Errno(EIO))?;
        let s = fd.get_sregs().map_err(|_| TargetError::Errno(EIO))?;
        let f = fd.get_fpu().map_err(|_| TargetError::Errno(EIO))?;
        *out = regs::to_gdb(&r, &s, &f);
        Ok(())
    }

    fn write_registers(&mut self, g: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let fd = self.vcpu(tid)?.fd();
        let mut r = fd.get_regs().map_err(|_| TargetError::Errno(EIO))?;
        let mut s = fd.get_sregs().map_err(|_| TargetError::Errno(EIO))?;
        let mut f = fd.get_fpu().map_err(|_| TargetError::Errno(EIO))?;
        let sregs_changed =
            regs::apply_gdb(g, &mut r, &mut s, &mut f).map_err(|_| TargetError::Errno(EINVAL))?;
        fd.set_regs(&r).map_err(|_| TargetError::Errno(EIO))?;
        if sregs_changed {
            fd.set_sregs(&s).map_err(|_| TargetError::Errno(EIO))?;
        }
        fd.set_fpu(&f).map_err(|_| TargetError::Errno(EIO))?;
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let fd = self.vcpu(tid)?.fd();
        let n = memory::read(&self.mem, fd, start, data).map_err(|_| TargetError::Errno(EFAULT))?;
        self.sw.hide(start, &mut data[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let fd = self.vcpu(tid)?.fd();
        // Over one of our int3s, the int3 stays and the written byte
        // becomes what removing the breakpoint restores.
        let covered = self.sw.within(start, data.len());
        let mut patched = data.to_vec();
        for (off, _) in &covered {
            patched[*off] = INT3;
        }
        memory::write(&self.mem, fd, start, &patched).map_err(|_| TargetError::Errno(EFAULT))?;
        for (off, bp) in covered {
            let bp = SwBreakpoint {
                original: data[off],
                ..bp
            };
            // Already set, so within the cap.
            let _ = self.sw.insert(start + off as u64, bp);
        }
        Ok(())
    }

    fn list_active_threads(&mut self, report: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for id in &self.ids {
            report(tid_of(*id));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for VmTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let text = match id_of(tid) {
            Some(id) => format!("vCPU {id}"),
            None => String::new(),
        };
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl MultiThreadResume for VmTarget {
    /// The run loop resumes the VM once `gdbstub` reports it running.
    fn resume(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.plan = ResumePlan::default();
        Ok(())
    }

    /// Signals mean nothing to a VM and are dropped, as QEMU does.
    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if let Some(id) = id_of(tid) {
            self.plan.actions.insert(id, Action::Continue);
        }
        Ok(())
    }

    /// Offered where this host's KVM steps ([`probe`]); gdb then says it
    /// cannot step instead of waiting for a step that never ends.
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        match probe::check(Capability::SingleStep) {
            Ok(()) => Some(self),
            Err(_) => None,
        }
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for VmTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if let Some(id) = id_of(tid) {
            self.plan.actions.insert(id, Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for VmTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.plan.locked = true;
        Ok(())
    }
}

impl Breakpoints for VmTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpointExt for VmTarget {
    /// Writes an `int3` where `addr` maps now. Refused (an error reply,
    /// so gdb does not fall back to writing `int3` itself) where this
    /// host's KVM does not intercept `int3` ([`probe`]).
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        refuse_unless(Capability::SwBreakpoints, "software breakpoints")?;
        if self.sw.get(addr).is_some() {
            return Ok(true);
        }
        let fd = self.any_vcpu()?.fd();
        let gpa = memory::Translate::translate(fd, addr).ok_or(TargetError::Errno(EFAULT))?;
        let original = memory::read_phys_byte(&self.mem, gpa).ok_or(TargetError::Errno(EFAULT))?;
        let bp = SwBreakpoint { gpa, original };
        self.sw
            .insert(addr, bp)
            .map_err(|_| TargetError::Errno(ENOSPC))?;
        if !memory::write_phys_byte(&self.mem, gpa, INT3) {
            self.sw.remove(addr);
            return Err(TargetError::Errno(EFAULT));
        }
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        match self.sw.remove(addr) {
            Some(bp) => {
                restore_byte(&self.mem, bp);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl HwBreakpoint for VmTarget {
    /// Takes a free debug register. Refused where this host's KVM does not
    /// fire them ([`probe`]).
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        refuse_unless(Capability::HwBreakpoints, "hardware breakpoints")?;
        Ok(self.hw.add(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hw.remove(addr))
    }
}

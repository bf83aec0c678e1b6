//! One gdb client at a time, driven through `gdbstub`'s state machine from
//! the VM's run loop.
//!
//! The run loop owns the vCPU threads; this module owns the client. A
//! reader thread turns the client's bytes into [`VmEvent::Gdb`] events on
//! the run loop's own channel, so the loop waits for a vCPU exit, a
//! vCPU's debug exit and the client in one place. While the VM runs, the
//! bytes go through the state machine at once (gdb only sends Ctrl-C
//! then); while it is stopped, [`Debugger::serve`] answers packets until
//! gdb resumes it, detaches or kills it. Whatever the client sends, the
//! worst outcome is that its session ends and the VM runs on.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};

use super::breakpoints::{guest_debug, DebugRequest};
use super::config::{GdbConfig, GdbError};
use super::memory;
use super::stop::{classify, DebugStop};
use super::target::{tid_of, Action, ResumePlan, VmTarget};
use crate::event::{ClientEvent, ClientInput};
use crate::event::{DebugExit, VmEvent};
use crate::exit_reason::ExitReason;
use crate::vcpu::Vcpu;

/// How long a reply may wait for a client that does not read: past it
/// the session ends instead of stalling the VMM.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Client bytes read but not yet handled, at most; past it the reader
/// waits, and TCP flow control holds the client back.
const MAX_PENDING_INPUT: usize = 1 << 20;
/// How long the reader waits for the backlog to drain before looking again.
const BACKLOG_WAIT: Duration = Duration::from_millis(1);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;
/// The packet size the stub announces (`PacketSize` in `qSupported`):
/// gdb sends nothing longer.
const PACKET_SIZE: usize = 4096;
/// Room for a packet's `$`, `#` and checksum around [`PACKET_SIZE`].
const PACKET_FRAMING: usize = 4;

type StateMachine = GdbStubStateMachine<'static, VmTarget, TcpStream>;
type StopReason = MultiThreadStopReason<u64>;

/// What the run loop does next.
pub enum Outcome {
    /// Run these vCPUs (the others stay stopped with the debugger).
    Resume(Vec<Vcpu>),
    /// End the VM.
    End(ExitReason),
}

/// State shared with the reader thread.
#[derive(Default)]
struct ReaderShared {
    /// Bytes sent to the run loop and not yet handled.
    pending: AtomicUsize,
    /// The session is over: stop reading.
    closed: AtomicBool,
}

/// Bounds a packet's length before `gdbstub` sees it: with an allocator
/// its packet buffer grows to whatever a client sends between `$` and
/// `#`, so an endless packet would grow the VMM without bound.
#[derive(Debug, Default)]
struct PacketLimit {
    /// Bytes of the packet being received, `None` between packets.
    body: Option<usize>,
}

impl PacketLimit {
    /// Accounts for `byte`; false once the packet is too long. `$` and
    /// `#` never occur inside a packet (the protocol escapes them).
    fn accept(&mut self, byte: u8) -> bool {
        match (byte, self.body) {
            (b'$', _) => self.body = Some(0),
            (b'#', _) => self.body = None,
            (_, Some(n)) => self.body = Some(n + 1),
            (_, None) => {}
        }
        self.body.is_none_or(|n| n + PACKET_FRAMING <= PACKET_SIZE)
    }
}

/// A connected client.
struct Session {
    id: u64,
    /// `None` only while a transition is in progress.
    gdb: Option<StateMachine>,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
    shared: Arc<ReaderShared>,
    /// Bytes received and not yet fed to the state machine.
    input: VecDeque<u8>,
    /// The client hung up (after `input`).
    hung_up: bool,
    /// The state machine failed while the VM ran: end the session.
    failed: Option<String>,
    limit: PacketLimit,
}

/// Why a session ends over a packet that is too long.
const TOO_LONG: &str = "the client sent a packet longer than the packet size";

impl Session {
    /// The next received byte for the state machine; `Err` when the client
    /// broke the packet size.
    fn pop(&mut self) -> Option<Result<u8, &'static str>> {
        let b = self.input.pop_front()?;
        Some(if self.limit.accept(b) {
            Ok(b)
        } else {
            Err(TOO_LONG)
        })
    }

    fn absorb(&mut self, input: ClientInput) {
        match input {
            ClientInput::Bytes(b) => {
                self.shared.pending.fetch_sub(b.len(), Ordering::Relaxed);
                self.input.extend(b);
            }
            ClientInput::HungUp => self.hung_up = true,
        }
    }

    /// The next byte from the client, waiting for it on `rx`; `None` once
    /// it hung up. Other events cannot come while the VM is stopped (no
    /// vCPU thread runs); stale ones, and other sessions', are dropped.
    fn next_byte(&mut self, rx: &Receiver<VmEvent>) -> Result<u8, &'static str> {
        loop {
            if let Some(b) = self.pop() {
                return b;
            }
            if self.hung_up {
                return Err("the client hung up");
            }
            match rx.recv() {
                Ok(VmEvent::Gdb(ev)) if ev.session == self.id => self.absorb(ev.input),
                Ok(_) => {}
                Err(_) => return Err("the run loop is gone"),
            }
        }
    }

    fn close(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// The VM's gdb stub: its configuration, debug state and client.
pub struct Debugger {
    cfg: GdbConfig,
    target: VmTarget,
    events: Sender<VmEvent>,
    listener: Option<TcpListener>,
    session: Option<Session>,
    sessions: u64,
    /// KVM can hold interrupts off while stepping (`KVM_GUESTDBG_BLOCKIRQ`).
    block_irqs: bool,
    /// vCPUs whose `#BP` goes back to the guest on the next resume.
    inject_bp: BTreeSet<u8>,
    /// The resume request the running vCPUs were started with.
    running_plan: ResumePlan,
}

impl Debugger {
    /// A stub for a VM: `target` over its vCPUs and memory; client input
    /// goes to the run loop through `events`.
    pub fn new(
        cfg: GdbConfig,
        target: VmTarget,
        events: Sender<VmEvent>,
        block_irqs: bool,
    ) -> Self {
        Self {
            cfg,
            target,
            events,
            listener: None,
            session: None,
            sessions: 0,
            block_irqs,
            inject_bp: BTreeSet::new(),
            running_plan: ResumePlan::default(),
        }
    }

    /// Whether the guest's first instruction waits for a client (`--gdb`).
    pub fn waits_at_start(&self) -> bool {
        self.cfg.wait
    }

    /// Whether a client is attached.
    pub fn attached(&self) -> bool {
        self.session.is_some()
    }

    /// Listens on the configured address; returns the bound one (which
    /// names the port when the configured one was 0).
    pub fn listen(&mut self) -> Result<SocketAddr, GdbError> {
        let addr = self.cfg.addr;
        let err = |source| GdbError::Listen { addr, source };
        let l = TcpListener::bind(addr).map_err(err)?;
        let bound = l.local_addr().map_err(err)?;
        self.listener = Some(l);
        Ok(bound)
    }

    /// The VM is paused (all of `vcpus`) and listening: waits for a client
    /// and serves it until it resumes the VM.
    pub fn attach(&mut self, vcpus: Vec<Vcpu>, rx: &Receiver<VmEvent>) -> Outcome {
        self.target.put(vcpus);
        let Some(listener) = self.listener.take() else {
            return self.resume_without_debugger();
        };
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("arena-vmm: gdb: accept: {e}; the VM runs on");
                return self.resume_without_debugger();
            }
        };
        drop(listener);
        match self.open(stream) {
            Ok(()) => eprintln!("arena-vmm: gdb: client {peer} attached"),
            Err(e) => return self.end_session(&e.to_string()),
        }
        self.serve(rx)
    }

    /// Starts a session on `stream`.
    fn open(&mut self, stream: TcpStream) -> Result<(), GdbError> {
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(GdbError::Io)?;
        self.sessions += 1;
        let id = self.sessions;
        let shared = Arc::new(ReaderShared::default());
        let reader = spawn_reader(
            stream.try_clone().map_err(GdbError::Io)?,
            id,
            self.events.clone(),
            shared.clone(),
        )?;
        let mut session = Session {
            id,
            gdb: None,
            stream: stream.try_clone().map_err(GdbError::Io)?,
            reader: Some(reader),
            shared,
            input: VecDeque::new(),
            hung_up: false,
            failed: None,
            limit: PacketLimit::default(),
        };
        let gdb = GdbStub::<VmTarget, TcpStream>::builder(stream)
            .packet_buffer_size(PACKET_SIZE)
            .build()
            .map_err(|e| GdbError::Protocol(e.to_string()))?
            .run_state_machine(&mut self.target)
            .map_err(|e| GdbError::Protocol(e.to_string()))?;
        session.gdb = Some(gdb);
        self.session = Some(session);
        Ok(())
    }

    /// Client input while the VM runs. True when the VM must stop: the
    /// client interrupted it (Ctrl-C), left, or broke the protocol.
    pub fn input_while_running(&mut self, ev: ClientEvent) -> bool {
        let Some(s) = self.session.as_mut().filter(|s| s.id == ev.session) else {
            return false;
        };
        s.absorb(ev.input);
        loop {
            match s.gdb.take() {
                Some(GdbStubStateMachine::Running(g)) => match s.pop() {
                    Some(Ok(b)) => match g.incoming_data(&mut self.target, b) {
                        Ok(next) => s.gdb = Some(next),
                        Err(e) => {
                            s.failed = Some(e.to_string());
                            return true;
                        }
                    },
                    Some(Err(why)) => {
                        s.failed = Some(why.into());
                        return true;
                    }
                    None => {
                        s.gdb = Some(GdbStubStateMachine::Running(g));
                        return s.hung_up;
                    }
                },
                other => {
                    s.gdb = other;
                    return true;
                }
            }
        }
    }

    /// Client input that arrived while the run loop was pausing the VM.
    pub fn queue_input(&mut self, ev: ClientEvent) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == ev.session) {
            s.absorb(ev.input);
        }
    }

    /// The VM is paused (`vcpus` are the ones that ran), because a vCPU
    /// left with `debug`, or because of the client ([`Self::input_while_running`]).
    /// Tells gdb why, if it should know, and serves it until it resumes.
    pub fn stopped(
        &mut self,
        vcpus: Vec<Vcpu>,
        debug: Option<DebugExit>,
        rx: &Receiver<VmEvent>,
    ) -> Outcome {
        self.target.put(vcpus);
        let reason = debug.and_then(|d| self.stop_reason(d));
        let first = self.first_vcpu();
        let Some(s) = self.session.as_mut() else {
            return self.resume_without_debugger();
        };
        if let Some(why) = s.failed.take() {
            return self.end_session(&why);
        }
        let next = match s.gdb.take() {
            Some(GdbStubStateMachine::Running(g)) => match reason {
                Some(r) => g.report_stop(&mut self.target, r),
                None if s.hung_up && s.input.is_empty() => {
                    return self.end_session("the client hung up")
                }
                // Nothing gdb needs to hear of: on with the same plan.
                None => {
                    s.gdb = Some(GdbStubStateMachine::Running(g));
                    return self.resume();
                }
            },
            Some(GdbStubStateMachine::CtrlCInterrupt(g)) => {
                let r = reason.unwrap_or(MultiThreadStopReason::SignalWithThread {
                    tid: tid_of(first),
                    signal: Signal::SIGINT,
                });
                g.interrupt_handled(&mut self.target, Some(r))
            }
            Some(other) => Ok(other),
            None => return self.end_session("internal state lost"),
        };
        match next {
            Ok(g) => s.gdb = Some(g),
            Err(e) => return self.end_session(&e.to_string()),
        }
        self.serve(rx)
    }

    /// What gdb hears of a debug exit; `None` for one it must not see
    /// (stale, or the guest's own `#BP`, which goes back to the guest).
    fn stop_reason(&mut self, d: DebugExit) -> Option<StopReason> {
        let byte = self
            .target
            .stopped()
            .iter()
            .find(|v| v.id == d.vcpu)
            .and_then(|v| {
                let mut b = [0u8];
                memory::read(self.target.mem(), v.fd(), d.arch.pc, &mut b).ok()?;
                Some(b[0])
            });
        let stepping = self.running_plan.action(d.vcpu) == Some(Action::Step);
        let tid = tid_of(d.vcpu);
        match classify(&d.arch, &self.target.hw, &self.target.sw, stepping, byte) {
            DebugStop::SwBreak(_) => Some(MultiThreadStopReason::SwBreak(tid)),
            DebugStop::HwBreak(_) => Some(MultiThreadStopReason::HwBreak(tid)),
            DebugStop::Step => Some(MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            }),
            DebugStop::GuestBp => {
                self.inject_bp.insert(d.vcpu);
                None
            }
            DebugStop::Stale => None,
        }
    }

    fn first_vcpu(&self) -> u8 {
        self.target.stopped().first().map_or(0, |v| v.id)
    }

    /// Answers the client while the VM is stopped, until it resumes the
    /// VM, detaches, kills it or goes away.
    fn serve(&mut self, rx: &Receiver<VmEvent>) -> Outcome {
        loop {
            let first = self.first_vcpu();
            let Some(s) = self.session.as_mut() else {
                return self.resume_without_debugger();
            };
            let next = match s.gdb.take() {
                Some(GdbStubStateMachine::Idle(g)) => match s.next_byte(rx) {
                    Ok(b) => g.incoming_data(&mut self.target, b),
                    Err(why) => return self.end_session(why),
                },
                // Still stopped: bytes the client sent after its resume
                // request are handled first.
                Some(GdbStubStateMachine::Running(g)) => match s.pop() {
                    Some(Ok(b)) => g.incoming_data(&mut self.target, b),
                    Some(Err(why)) => return self.end_session(why),
                    None => {
                        s.gdb = Some(GdbStubStateMachine::Running(g));
                        return self.resume();
                    }
                },
                Some(GdbStubStateMachine::CtrlCInterrupt(g)) => {
                    let r = MultiThreadStopReason::SignalWithThread {
                        tid: tid_of(first),
                        signal: Signal::SIGINT,
                    };
                    g.interrupt_handled(&mut self.target, Some(r))
                }
                Some(GdbStubStateMachine::Disconnected(g)) => {
                    return self.disconnected(g.get_reason())
                }
                None => return self.end_session("internal state lost"),
            };
            match next {
                Ok(g) => {
                    if let Some(s) = self.session.as_mut() {
                        s.gdb = Some(g);
                    }
                }
                Err(e) => return self.end_session(&e.to_string()),
            }
        }
    }

    /// The client detached (`D`) or killed the VM (`k`).
    fn disconnected(&mut self, why: DisconnectReason) -> Outcome {
        match why {
            DisconnectReason::Kill => {
                self.close();
                eprintln!("arena-vmm: gdb: the client killed the VM");
                Outcome::End(ExitReason::DebuggerKill)
            }
            DisconnectReason::Disconnect => self.end_session("detached"),
            DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_) => {
                self.end_session("the target ended")
            }
        }
    }

    /// Resumes the VM as gdb asked: every stopped vCPU gets its debug
    /// state (breakpoints everywhere, a step where asked, its own `#BP`
    /// back where due), and those gdb did not hold back run.
    fn resume(&mut self) -> Outcome {
        let plan = self.target.plan.clone();
        for v in self.target.stopped() {
            let req = DebugRequest {
                step: plan.action(v.id) == Some(Action::Step),
                block_irqs: self.block_irqs,
                inject_bp: self.inject_bp.remove(&v.id),
            };
            set_debug(v, guest_debug(&self.target.hw, self.target.sw.any(), req));
        }
        let run = self.target.take(|v| plan.action(v.id).is_none());
        self.running_plan = plan;
        Outcome::Resume(run)
    }

    /// Ends the session (saying why) and resumes the VM without a debugger.
    fn end_session(&mut self, why: &str) -> Outcome {
        self.close();
        eprintln!("arena-vmm: gdb: {why}; the VM runs on without a debugger");
        self.resume_without_debugger()
    }

    fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            s.close();
        }
    }

    /// Every breakpoint out, debugging off on every vCPU (a `#BP` of the
    /// guest's still goes back to it), all of them run.
    fn resume_without_debugger(&mut self) -> Outcome {
        self.target.clear_sw_breakpoints();
        self.target.hw = Default::default();
        self.target.plan = ResumePlan::default();
        self.running_plan = ResumePlan::default();
        for v in self.target.stopped() {
            let req = DebugRequest {
                inject_bp: self.inject_bp.remove(&v.id),
                ..Default::default()
            };
            set_debug(v, guest_debug(&self.target.hw, false, req));
        }
        Outcome::Resume(self.target.take(|_| false))
    }

    /// The VM ended with `reason` while a client may be attached: tell it
    /// (gdb shows the exit code) and close the session.
    pub fn vm_ended(&mut self, reason: &ExitReason) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let code = u8::try_from(reason.exit_code()).unwrap_or(u8::MAX);
        let exited = MultiThreadStopReason::Exited(code);
        let _ = match s.gdb.take() {
            Some(GdbStubStateMachine::Running(g)) => g.report_stop(&mut self.target, exited).ok(),
            Some(GdbStubStateMachine::CtrlCInterrupt(g)) => {
                g.interrupt_handled(&mut self.target, Some(exited)).ok()
            }
            _ => None,
        };
        self.close();
    }
}

/// `KVM_SET_GUEST_DEBUG` on one vCPU. A failed re-injection (KVM refuses
/// it while another exception is pending) is retried without it.
fn set_debug(v: &Vcpu, dbg: kvm_bindings::kvm_guest_debug) {
    if v.fd().set_guest_debug(&dbg).is_ok() {
        return;
    }
    let mut plain = dbg;
    plain.control &= !kvm_bindings::KVM_GUESTDBG_INJECT_BP;
    if let Err(e) = v.fd().set_guest_debug(&plain) {
        eprintln!("arena-vmm: gdb: KVM_SET_GUEST_DEBUG on vCPU {}: {e}", v.id);
    }
}

/// Reads the client's bytes into the run loop's channel, holding back
/// while [`MAX_PENDING_INPUT`] bytes wait there, until the client hangs
/// up or the session closes.
fn spawn_reader(
    mut stream: TcpStream,
    session: u64,
    tx: Sender<VmEvent>,
    shared: Arc<ReaderShared>,
) -> Result<JoinHandle<()>, GdbError> {
    std::thread::Builder::new()
        .name("gdb-rx".into())
        .spawn(move || {
            let mut buf = [0u8; READ_CHUNK];
            let send = |input| tx.send(VmEvent::Gdb(ClientEvent { session, input }));
            loop {
                while shared.pending.load(Ordering::Relaxed) >= MAX_PENDING_INPUT {
                    if shared.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(BACKLOG_WAIT);
                }
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        shared.pending.fetch_add(n, Ordering::Relaxed);
                        if send(ClientInput::Bytes(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = send(ClientInput::HungUp);
        })
        .map_err(GdbError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_longer_than_the_packet_size_are_refused() {
        let mut l = PacketLimit::default();
        let feed = |l: &mut PacketLimit, bytes: &[u8]| bytes.iter().all(|b| l.accept(*b));
        // Acks and Ctrl-C between packets, then a packet of the full size.
        assert!(feed(&mut l, b"+\x03"));
        let body = vec![b'x'; PACKET_SIZE - PACKET_FRAMING];
        assert!(feed(&mut l, b"$"));
        assert!(feed(&mut l, &body));
        assert!(feed(&mut l, b"#00"));
        // One byte more is too long, and stays so until the next packet.
        assert!(feed(&mut l, b"$"));
        assert!(feed(&mut l, &body));
        assert!(!l.accept(b'x'));
        assert!(!l.accept(b'x'));
        assert!(feed(&mut l, b"#00$g#67"));
    }
}

//! arena lab's guest agent, PID 1 of the initramfs.
//!
//! Boot flow: mount the pseudo file systems, load the kernel modules the
//! image lists, open the virtio console (`hvc0`), say hello, receive one
//! scenario, run it in a forked worker process (so a crashing step cannot
//! take PID 1 down), report how the worker ended, and power the VM off.
//! PID 1 never exits: every path ends in a power-off. While the worker
//! runs, PID 1 is its watchdog ([`watchdog`]): `progress` every second, a
//! timeout at the hard cap.

mod boot;
mod cgroup;
mod channel;
mod counters;
mod crash;
mod diagnose;
mod executor;
mod log;
mod requirements;
mod steps;
mod sys;
mod watchdog;
mod worker;

use std::time::Duration;

use arena_protocol::{GuestMessage, HostMessage};

use crate::channel::Channel;

/// Extra time PID 1 grants a worker that has run all its steps beyond the
/// scenario's hard cap (`HARD_CAP_FACTOR` × `timeout_s`) to exit. A worker
/// still in a step at the cap is timed out then. Stalls shorter than the
/// cap are the host's to judge, from PID 1's `progress` messages.
const WORKER_GRACE: Duration = Duration::from_secs(5);

fn main() {
    boot::install_panic_hook();
    log::log("starting");
    boot::mount_filesystems();
    boot::set_console_loglevel(7);
    boot::load_modules();
    let channel: &'static Channel = match Channel::open_hvc() {
        Ok(c) => Box::leak(Box::new(c)),
        Err(e) => boot::fatal(&format!(
            "no results channel: {e}. The kernel needs VIRTIO_CONSOLE and \
             VIRTIO_MMIO (built in, or as modules passed with --modules)"
        )),
    };
    boot::set_channel(channel);
    channel.send(&GuestMessage::Hello(boot::hello()));
    // A snapshot is taken here, while the agent waits; each restore of it
    // is told so first (`resume`) and answers with a fresh hello.
    let (scenario, seed, hold) = loop {
        match channel.receive() {
            Some(HostMessage::Run {
                scenario,
                seed,
                hold_on_failure,
            }) => break (scenario, seed, hold_on_failure),
            Some(HostMessage::Resume {
                entropy,
                unix_time_ns,
            }) => {
                boot::resume(&entropy, unix_time_ns);
                channel.send(&GuestMessage::Hello(boot::hello()));
            }
            // Nothing runs yet: nothing to diagnose.
            Some(HostMessage::Diagnose) => {}
            None => boot::fatal("host closed the results channel before sending a scenario"),
        }
    };
    log::log(&format!("running scenario {} (seed {seed})", scenario.name));
    let tuned = diagnose::tune_detectors(scenario.timeout_s);
    if !tuned.is_empty() {
        log::log(&format!("kernel hang detectors: {}", tuned.join(", ")));
    }
    let watch = watchdog::Watch {
        steps: scenario.lines.top_level(&scenario.steps),
        cap_s: arena_protocol::message::hard_cap_s(scenario.timeout_s),
        every: watchdog::PROGRESS_EVERY,
        grace: WORKER_GRACE,
    };
    let passed = watchdog::supervise(channel, &watch, || {
        executor::run_scenario(channel, &scenario, seed)
    });
    channel.drain();
    if hold && !passed {
        // The host pauses this VM for gdb; stay up until it ends the VM.
        log::log("scenario failed: holding the VM for the debugger");
        loop {
            // SAFETY: pause takes no arguments; it only waits for a signal.
            unsafe { libc::pause() };
        }
    }
    boot::power_off();
}

//! `arena-vmm`: command-line front end of the arena lab VMM.
//!
//! ```text
//! arena-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib M]
//!           [--serial PATH|-] [--console-socket PATH] [--timeout-s S]
//!           [--stall-timeout-s S]
//!           [--snapshot-to FILE | --gdb IP:PORT | --gdb-on-demand IP:PORT]
//! arena-vmm --restore FILE [--no-verify] [--serial PATH|-] [--console-socket PATH]
//!           [--timeout-s S] [--stall-timeout-s S]
//!           [--snapshot-to FILE | --gdb-on-demand IP:PORT]
//! arena-vmm probe
//! ```
//!
//! With `--snapshot-to FILE`, SIGUSR1 pauses the VM, saves it to FILE and
//! exits 3. `--restore FILE` resumes it; the VM's shape comes from the
//! snapshot, so the options that shape a fresh VM are refused with it.
//! `--no-verify` skips the checksum over the file (its caller verified it;
//! header, build id and bounds are still checked).
//!
//! `--gdb IP:PORT` builds the VM and holds its first instruction until a
//! gdb client attached there resumes it (`arena-vmm: waiting for gdb on
//! IP:PORT` on stderr; port 0 picks a free one, named in that line).
//! `--gdb-on-demand IP:PORT` runs the VM, and on SIGUSR2 pauses it and
//! listens (`arena-vmm: paused; gdb stub on IP:PORT`). After a detach the
//! VM runs on, and SIGUSR2 pauses it for a client again. The host-side
//! timeout does not count time the VM spends stopped by the debugger.
//!
//! `--timeout-s S` ends the VM after S seconds of running, whatever the
//! guest does; `--stall-timeout-s S` ends it only when the guest has
//! written nothing to the serial port for S seconds (it stopped making
//! progress), so a slow guest that keeps printing runs to its end.
//!
//! Exit status: 0 guest reset/powered off, 2 setup error (a refused
//! snapshot included), 3 snapshot saved, 4 snapshot requested but not
//! saved, 10 triple fault, 11 KVM internal error, 12 VM entry failure,
//! 13 host-side timeout, 14 other unexpected exit, 15 killed by the gdb
//! client, 16 stalled (no serial output for the stall window). One line
//! on stderr names the reason.

use std::process::ExitCode;

use vmm::{Launch, EXIT_SETUP_ERROR};

const USAGE: &str = "usage: arena-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] \
[--mem-mib M] [--serial PATH|-] [--console-socket PATH] [--timeout-s S] \
[--stall-timeout-s S] [--snapshot-to FILE | --gdb IP:PORT | --gdb-on-demand IP:PORT]\n       \
arena-vmm --restore FILE [--no-verify] [--serial PATH|-] [--console-socket PATH] \
[--timeout-s S] [--stall-timeout-s S] [--snapshot-to FILE | --gdb-on-demand IP:PORT]\n       \
arena-vmm probe";

fn main() -> ExitCode {
    let process_start = std::time::Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        let p = vmm::probe::probe();
        println!("{}", p.reason);
        return ExitCode::from(if p.usable { 0 } else { 1 });
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let launch = match vmm::parse_launch(&args) {
        Ok(c) => c,
        Err(e) => {
            // One line naming the reason, like every other exit.
            eprintln!(
                "arena-vmm: setup error: {e}; {}",
                USAGE.replace('\n', " | ")
            );
            return ExitCode::from(EXIT_SETUP_ERROR as u8);
        }
    };
    let quirks = vmm::probe::cpuid_quirks();
    if quirks.tcg_host {
        // In the VM's log: a guest without CMPXCHG16B takes other paths.
        eprintln!("arena-vmm: this host's CPU is QEMU's TCG: CMPXCHG16B hidden from the guest");
    }
    let result = match &launch {
        Launch::Boot(cfg) => vmm::run_vm(cfg),
        Launch::Restore(cfg) => vmm::restore_vm(cfg),
    };
    match result {
        Ok(report) => {
            // Where the time went, for `vmm.log` and `lab bench`.
            if let Some(r) = report.restore {
                eprintln!(
                    "arena-vmm: restored in {:.3} ms: snapshot verified in {:.3} ms, VM built in {:.3} ms",
                    (r.verify + r.build).as_secs_f64() * 1e3,
                    r.verify.as_secs_f64() * 1e3,
                    r.build.as_secs_f64() * 1e3
                );
            }
            if let Some(t) = report.time_to_first_entry {
                eprintln!(
                    "arena-vmm: first guest entry {:.3} ms after the VM was built, {:.3} ms after process start",
                    t.as_secs_f64() * 1e3,
                    report
                        .first_entry_at
                        .map_or(f64::NAN, |at| (at - process_start).as_secs_f64() * 1e3)
                );
            }
            eprintln!("arena-vmm: {}", report.exits);
            eprintln!("arena-vmm: {}", report.exit);
            ExitCode::from(report.exit.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("arena-vmm: setup error: {e}");
            ExitCode::from(EXIT_SETUP_ERROR as u8)
        }
    }
}

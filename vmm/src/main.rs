//! `arena-vmm`: command-line front end of the arena lab VMM.
//!
//! ```text
//! arena-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib M]
//!           [--serial PATH|-] [--console-socket PATH] [--timeout-s S]
//! arena-vmm probe
//! ```
//!
//! Exit status: 0 guest reset/powered off, 2 setup error, 10 triple fault,
//! 11 KVM internal error, 12 VM entry failure, 13 host-side timeout,
//! 14 other unexpected exit. One line on stderr names the reason.

use std::process::ExitCode;

use vmm::{VmConfig, EXIT_SETUP_ERROR};

const USAGE: &str = "usage: arena-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] \
[--mem-mib M] [--serial PATH|-] [--console-socket PATH] [--timeout-s S]\n       arena-vmm probe";

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
    let cfg = match VmConfig::from_args(&args) {
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
    match vmm::run_vm(&cfg) {
        Ok(report) => {
            // Where the time went, for `vmm.log` and `lab bench`.
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

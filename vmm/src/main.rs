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

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vmm::{SerialOutput, VmConfig, EXIT_SETUP_ERROR};

const USAGE: &str = "usage: arena-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] \
[--mem-mib M] [--serial PATH|-] [--console-socket PATH] [--timeout-s S]\n       arena-vmm probe";

/// Parses the command line into a VM config.
fn parse(args: &[String]) -> Result<VmConfig, String> {
    let mut cfg = VmConfig::new("");
    let mut kernel = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initrd" => cfg.initrd = Some(PathBuf::from(value()?)),
            "--cmdline" => cfg.cmdline = value()?,
            "--vcpus" => cfg.vcpus = value()?.parse().map_err(|e| format!("--vcpus: {e}"))?,
            "--mem-mib" => cfg.mem_mib = value()?.parse().map_err(|e| format!("--mem-mib: {e}"))?,
            "--serial" => {
                let v = value()?;
                cfg.serial = if v == "-" {
                    SerialOutput::Stdout
                } else {
                    SerialOutput::File(v.into())
                };
            }
            "--console-socket" => cfg.console_socket = Some(PathBuf::from(value()?)),
            "--timeout-s" => {
                let s: f64 = value()?.parse().map_err(|e| format!("--timeout-s: {e}"))?;
                if !(s > 0.0 && s.is_finite()) {
                    return Err("--timeout-s must be positive".into());
                }
                cfg.timeout = Some(Duration::from_secs_f64(s));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    cfg.kernel = kernel.ok_or("--kernel is required")?;
    Ok(cfg)
}

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
    let cfg = match parse(&args) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_full_command_line() {
        let c = parse(&args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--vcpus",
            "2",
            "--mem-mib",
            "256",
            "--serial",
            "-",
            "--console-socket",
            "/s",
            "--timeout-s",
            "1.5",
        ]))
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert!(matches!(c.serial, SerialOutput::Stdout));
        assert_eq!(c.console_socket, Some(PathBuf::from("/s")));
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["--kernel"])).is_err());
        assert!(parse(&args(&["--kernel", "/k", "--vcpus", "x"])).is_err());
        assert!(parse(&args(&["--kernel", "/k", "--timeout-s", "-1"])).is_err());
        assert!(parse(&args(&["--kernel", "/k", "--bogus"])).is_err());
        let c = parse(&args(&["--kernel", "/k", "--serial", "/tmp/out"])).unwrap();
        assert!(matches!(c.serial, SerialOutput::File(_)));
    }
}

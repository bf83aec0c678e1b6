//! `arena-fuzz TARGET|all [--seconds N] [--seed S] [--hang-s H]`: runs the
//! randomized fuzzer (see the library docs), prints executions/s, RSS and
//! crashes per target; exit status 1 when any target crashed, 3 on a hang.

use std::process::ExitCode;
use std::time::Duration;

use arena_fuzz::{fuzz, Options, TARGETS};

const USAGE: &str = "usage: arena-fuzz TARGET|all [--seconds N] [--seed S] [--hang-s H]\n\
targets: virtio_mmio console framing splat scenario_yaml loader";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(which) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut opts = Options {
        duration: Duration::from_secs(10),
        seed: 1,
        hang: Duration::from_secs(10),
        slow: Duration::from_millis(100),
        root: arena_fuzz::root(),
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let v: Option<f64> = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), v) {
            ("--seconds", Some(s)) if s > 0.0 => opts.duration = Duration::from_secs_f64(s),
            ("--seed", Some(s)) => opts.seed = s as u64,
            ("--hang-s", Some(s)) if s > 0.0 => opts.hang = Duration::from_secs_f64(s),
            _ => {
                eprintln!("bad argument {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let targets: Vec<_> = if which == "all" {
        TARGETS.iter().collect()
    } else if let Some(t) = arena_fuzz::find(which) {
        vec![t]
    } else {
        eprintln!("unknown target {which}\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut crashed = false;
    let mut total = 0;
    for t in targets {
        let s = fuzz(t, &opts);
        println!("{s}");
        total += s.execs;
        if let Some((p, msg)) = &s.crash {
            crashed = true;
            println!("  CRASH: {msg}\n  reproducer: {}", p.display());
        }
    }
    arena_fuzz::targets::cleanup();
    println!("total: {total} execs (seed {})", opts.seed);
    if crashed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

//! `lab run` and `lab boot`: prepare once, then run each scenario in its own
//! VM (up to `-j` at a time), judge it and record the results.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arena_protocol::scenario::{SleepStep, Step, VmSpec as ScenarioVm};
use arena_protocol::Scenario;

use crate::backend::{self, Backend, BackendChoice, Console, VmSpec};
use crate::results::{Abort, RunDir, ScenarioSummary, Summary};
use crate::scenario_file::{self, ScenarioFile};
use crate::session::{self, Limits};
use crate::verdict::{self, Judgement, SessionEnd, Verdict};
use crate::{error_text, exit, infra, plan, KernelArgs, LabError};

/// `lab run` options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Results directory (a run folder is created inside).
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Seed for randomised steps (default: random, recorded in the results).
    #[arg(long)]
    seed: Option<u64>,
    /// Scenarios run at once, each in its own VM.
    #[arg(short = 'j', long, default_value_t = 1)]
    jobs: usize,
    /// Seconds from VM start to the agent's hello.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Scenario files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// A one-step scenario used by `lab boot`, `lab image` and benchmarks.
pub fn trivial_scenario() -> Scenario {
    Scenario {
        name: "boot".into(),
        description: "boot, say hello, power off".into(),
        tags: vec![],
        vm: ScenarioVm::default(),
        timeout_s: 30,
        steps: vec![Step::Sleep(SleepStep { ms: 0 })],
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) % 1_000_000_007
}

fn cmdline(append: &str) -> String {
    if append.trim().is_empty() {
        plan::BASE_CMDLINE.to_owned()
    } else {
        format!("{} {}", plan::BASE_CMDLINE, append.trim())
    }
}

/// The backend for `choice` and why it was picked (also printed).
fn pick_backend(choice: BackendChoice) -> Result<(Box<dyn Backend>, String), LabError> {
    let (backend, why) = backend::select(choice).map_err(|e| infra(anyhow::anyhow!(e)))?;
    eprintln!("lab: backend {why}");
    Ok((backend, why))
}

/// `lab run`.
///
/// Invalid input (scenarios, missing files) is refused before a run folder
/// exists (exit 2). From then on every planned scenario is in the results:
/// an infrastructure error (kernel, backend, agent, a guest image, a VM
/// that never says hello) aborts the run, judges what cannot be judged as
/// `not_run` with the reason, and exits 3.
pub fn run(args: RunArgs) -> Result<u8, LabError> {
    let t0 = Instant::now();
    let scenarios = scenario_file::load_paths(&args.paths)?;
    args.kernel.check()?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let run_dir = RunDir::create(&args.results).map_err(infra)?;
    let planned = scenarios
        .iter()
        .map(|f| ScenarioSummary::pending(&f.scenario.name, &f.path, &f.scenario.tags, seed))
        .collect();
    let mut summary = Summary::new(&run_dir.id, seed, planned);
    run_dir.write(&summary).map_err(infra)?;
    let Ready {
        backend,
        prepared,
        images,
    } = match prepare_run(&args, &scenarios, &mut summary) {
        Ok(ready) => ready,
        Err(abort) => return aborted(&run_dir, summary, t0, abort),
    };
    eprintln!(
        "lab: kernel {} ({}), {} scenario(s), seed {seed}, results in {}",
        prepared.kernel.release,
        prepared.kernel.boot_image.display(),
        scenarios.len(),
        run_dir.path.display()
    );
    run_dir.write(&summary).map_err(infra)?;
    let summary = Mutex::new(summary);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let ctx = RunCtx {
        backend: backend.as_ref(),
        prepared: &prepared,
        run_dir: &run_dir,
        seed,
        limits: Limits {
            boot: Duration::from_secs(args.boot_timeout),
        },
        cmdline: cmdline(&args.append),
    };
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.clamp(1, 16) {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(file) = scenarios.get(i) else { return };
                let s = match run_one(&ctx, file, &images[i]) {
                    Ok(s) => s,
                    Err(e) => {
                        let mut s = summary.lock().expect("lock").scenarios[i].clone();
                        s.judgement = Judgement::infra_error(error_text(&e));
                        s
                    }
                };
                print_line(&s);
                let mut sum = summary.lock().expect("lock");
                if s.judgement.infra {
                    // Later scenarios would most likely meet the same fate
                    // (each after a boot timeout): stop starting them.
                    stop.store(true, Ordering::SeqCst);
                    let reason = format!("{}: {}", s.name, s.judgement.reason);
                    sum.abort(&reason, Some(&s.name));
                }
                sum.scenarios[i] = s;
                sum.recount();
                sum.wall_s = t0.elapsed().as_secs_f64();
                if let Err(e) = run_dir.write(&sum) {
                    eprintln!("lab: writing results: {e}");
                }
            });
        }
    });
    let sum = summary.into_inner().expect("lock");
    if let Some(abort) = sum.aborted.clone() {
        return aborted(&run_dir, sum, t0, abort);
    }
    finish(&run_dir, sum, t0)
}

/// What the scenarios of a run need before the first VM.
struct Ready {
    backend: Box<dyn Backend>,
    prepared: plan::Prepared,
    /// Guest image of each scenario, in plan order.
    images: Vec<PathBuf>,
}

/// The kernel, the backend, the agent and BPF objects, and every scenario's
/// guest image (so a missing selftest source stops the run before any VM
/// boots). Fills the summary as it goes; a failure comes back as the abort,
/// with the failing scenario's own verdict already recorded.
fn prepare_run(
    args: &RunArgs,
    scenarios: &[ScenarioFile],
    summary: &mut Summary,
) -> Result<Ready, Abort> {
    let stage = |what: &str, e: anyhow::Error| Abort {
        reason: format!("{what}: {}", error_text(&e)),
        scenario: None,
    };
    let kernel = plan::kernel(args.kernel.kernel.as_ref(), args.kernel.modules.as_ref())
        .map_err(|e| stage("kernel", e))?;
    summary.kernel = Some(kernel.clone());
    let (backend, why) = pick_backend(args.backend).map_err(|e| match e {
        LabError::Infra(e) => stage("backend", e),
        other => Abort {
            reason: format!("backend: {other}"),
            scenario: None,
        },
    })?;
    summary.backend = Some(backend.name().into());
    summary.accelerator = Some(backend.accelerator().into());
    summary.backend_reason = Some(why);
    let mut prepared = plan::prepare(kernel, args.kernel.kernel_src.clone())
        .map_err(|e| stage("preparing the guest", e))?;
    prepared.kernel.boot_image = backend
        .boot_file(&prepared.kernel)
        .map_err(|e| stage("kernel", anyhow::anyhow!(e)))?;
    let mut images = Vec::with_capacity(scenarios.len());
    for (i, f) in scenarios.iter().enumerate() {
        match plan::image(&prepared, &f.scenario) {
            Ok(image) => images.push(image),
            Err(e) => {
                let reason = format!("guest image: {}", error_text(&e));
                summary.scenarios[i].judgement = Judgement::infra_error(reason.clone());
                print_line(&summary.scenarios[i]);
                let name = &f.scenario.name;
                return Err(Abort {
                    reason: format!("{name}: {reason}"),
                    scenario: Some(name.clone()),
                });
            }
        }
    }
    Ok(Ready {
        backend,
        prepared,
        images,
    })
}

/// End an aborted run: every scenario not judged becomes `not_run` with the
/// reason, the results say so, and the exit is an infrastructure error.
fn aborted(run_dir: &RunDir, mut sum: Summary, t0: Instant, abort: Abort) -> Result<u8, LabError> {
    sum.abort(&abort.reason, abort.scenario.as_deref());
    finish(run_dir, sum, t0)?;
    Err(infra(anyhow::anyhow!("run aborted: {}", abort.reason)))
}

/// Write the final results, print the totals, and give the exit code of a
/// run that was not aborted.
fn finish(run_dir: &RunDir, mut sum: Summary, t0: Instant) -> Result<u8, LabError> {
    sum.finish(t0.elapsed().as_secs_f64());
    for s in sum
        .scenarios
        .iter()
        .filter(|s| s.judgement.verdict == Verdict::NotRun)
    {
        println!("NOT RUN {}", s.name);
    }
    run_dir.write(&sum).map_err(infra)?;
    let mut totals = format!(
        "{} passed, {} failed",
        sum.passed,
        sum.failed + sum.errors + sum.timeouts
    );
    if sum.timeouts > 0 {
        totals.push_str(&format!(" ({} timed out)", sum.timeouts));
    }
    if sum.not_run > 0 {
        totals.push_str(&format!(", {} not run", sum.not_run));
    }
    println!("{totals}");
    eprintln!(
        "lab: wall time {:.2} s; results {}",
        sum.wall_s,
        run_dir.path.display()
    );
    Ok(if sum.green() { exit::PASS } else { exit::FAIL })
}

fn print_line(s: &ScenarioSummary) {
    let v = match s.judgement.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Error => "ERROR",
        Verdict::Timeout => "TIMEOUT",
        Verdict::NotRun => "NOT RUN",
    };
    let boot = s
        .boot_s
        .map(|b| format!("boot {b:.2} s, "))
        .unwrap_or_default();
    println!("{v:<7} {} ({boot}total {:.2} s)", s.name, s.duration_s);
    if s.judgement.verdict != Verdict::Pass {
        for line in s.judgement.reason.lines().take(20) {
            println!("        {line}");
        }
    }
}

struct RunCtx<'a> {
    backend: &'a dyn Backend,
    prepared: &'a plan::Prepared,
    run_dir: &'a RunDir,
    seed: u64,
    limits: Limits,
    cmdline: String,
}

fn run_one(ctx: &RunCtx, file: &ScenarioFile, image: &Path) -> anyhow::Result<ScenarioSummary> {
    let s = &file.scenario;
    let dir = ctx.run_dir.scenario_dir(&s.name)?;
    let console_log = dir.join("console.log");
    let spec = VmSpec {
        kernel: ctx.prepared.kernel.boot_image.clone(),
        initrd: Some(image.to_owned()),
        cmdline: ctx.cmdline.clone(),
        vcpus: s.vm.vcpus,
        memory_mib: s.vm.memory_mib,
        console: Console::File(console_log.clone()),
        channel: None,
    };
    let boot = |spec: VmSpec| {
        session::run(
            ctx.backend,
            spec,
            s,
            ctx.seed,
            ctx.limits,
            &dir.join("events.jsonl"),
            &dir.join("vmm.log"),
        )
    };
    let mut record = boot(spec.clone());
    let mut retried_after = None;
    if died_before_hello(&record, &console_log) {
        // One more boot, keeping the first attempt's files beside the new ones.
        for f in ["console.log", "events.jsonl", "vmm.log"] {
            let _ = std::fs::rename(dir.join(f), dir.join(format!("attempt1-{f}")));
        }
        eprintln!(
            "lab: {}: the VM died before the agent's hello; booting once more (first attempt kept as attempt1-*)",
            s.name
        );
        retried_after = Some(SessionEnd::from(&record.end));
        record = boot(spec);
    }
    save_outputs(&dir, &record);
    let console =
        String::from_utf8_lossy(&std::fs::read(&console_log).unwrap_or_default()).into_owned();
    let judgement = verdict::judge(&record, &console);
    Ok(ScenarioSummary {
        judgement,
        boot_s: record.boot_s,
        duration_s: record.total_s,
        vm_exit: Some(record.vm_exit),
        guest: record.hello,
        retried_after,
        ..ScenarioSummary::pending(&s.name, &file.path, &s.tags, ctx.seed)
    })
}

/// The VM ended on its own before the agent said hello: the kernel died
/// during boot. Under multi-threaded TCG that happens now and then to stock
/// kernels (a live text patch racing another vCPU: `Oops: int3`), so such a
/// boot is tried once more; the summary records the retry and the first
/// attempt's logs stay as `attempt1-*`. A boot that hangs is not retried,
/// nor one where the agent itself gave up (e.g. no virtio console driver).
fn died_before_hello(record: &session::Record, console_log: &std::path::Path) -> bool {
    let agent_gave_up =
        std::fs::read_to_string(console_log).is_ok_and(|c| c.contains("arena-agent: FATAL"));
    record.hello.is_none() && record.vm_exit.starts_with("exited") && !agent_gave_up
}

/// Files the guest sent (`output` messages), written into the scenario's
/// folder under a sanitised name; never outside it, never over a lab file.
fn save_outputs(dir: &std::path::Path, record: &session::Record) {
    for r in &record.messages {
        if let arena_protocol::GuestMessage::Output { name, text } = &r.message {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let reserved = ["console.log", "events.jsonl", "vmm.log"];
            if safe.is_empty() || safe.starts_with('.') || reserved.contains(&safe.as_str()) {
                continue;
            }
            let _ = arena_images::write_atomic(&dir.join(format!("guest-{safe}")), text.as_bytes());
        }
    }
}

/// `lab boot`: the default image, serial console on stdout.
pub fn boot(
    kernel: &KernelArgs,
    choice: BackendChoice,
    timeout: u64,
    append: &str,
) -> Result<u8, LabError> {
    kernel.check()?;
    let k = plan::kernel(kernel.kernel.as_ref(), kernel.modules.as_ref()).map_err(infra)?;
    let (backend, _) = pick_backend(choice)?;
    let prepared = plan::prepare(k, kernel.kernel_src.clone()).map_err(infra)?;
    let scenario = trivial_scenario();
    let image = plan::image(&prepared, &scenario).map_err(infra)?;
    let boot_file = backend
        .boot_file(&prepared.kernel)
        .map_err(|e| infra(anyhow::anyhow!(e)))?;
    let spec = VmSpec {
        kernel: boot_file,
        initrd: Some(image),
        cmdline: cmdline(append),
        vcpus: scenario.vm.vcpus,
        memory_mib: scenario.vm.memory_mib,
        console: Console::Stdout,
        channel: None,
    };
    let scratch = std::env::temp_dir().join(format!("arena-lab-boot-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(infra)?;
    let record = session::run(
        backend.as_ref(),
        spec,
        &scenario,
        0,
        Limits {
            boot: Duration::from_secs(timeout),
        },
        &scratch.join("events.jsonl"),
        &scratch.join("vmm.log"),
    );
    let vmm_log = std::fs::read_to_string(scratch.join("vmm.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "\nlab: {}; VM {}",
        SessionEnd::from(&record.end),
        record.vm_exit
    );
    if !vmm_log.trim().is_empty() {
        eprintln!("lab: backend stderr:\n{}", vmm_log.trim_end());
    }
    Ok(match record.hello {
        Some(h) => {
            eprintln!(
                "lab: agent hello after {:.2} s: {}",
                record.boot_s.unwrap_or(0.0),
                serde_json::to_string(&h).expect("serialisable")
            );
            exit::PASS
        }
        None => exit::INFRA,
    })
}

//! `lab nested`: run `lab` inside a Linux guest (L1) that has real KVM.
//!
//! Hosts whose `/dev/kvm` cannot run a stock kernel (PVM here) still get a
//! real KVM one level down: QEMU's TCG emulates AMD SVM with nested paging,
//! so an L1 booted with `-cpu qemu64,+svm,+npt` loads `kvm_amd` and has a
//! real `/dev/kvm`. L1 sees the host's file system read-only over 9p under a
//! tmpfs overlay (same binaries, caches and scenario files at the same
//! paths), and the results folder read-write, so results land on the host.
//!
//! Host ↔ L1 contract: a control share holding `request.sh` (what to run),
//! `results-path`, and L1's reports `ready.json` ([`Ready`]) and `done.json`
//! ([`Done`]), each written atomically by L1's `/init` (`l1-init.sh`).
//!
//! `--exec` runs any host program in L1 instead of `lab` (the hostile-guest
//! tests run their drivers that way). Everything L1 writes to its root lands
//! in the tmpfs overlay, whose upper layer L1 shows read-only at
//! `/run/arena-nested-changes`: a program can list every file that changed.

mod image;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{exit, infra, plan, LabError};

/// Why `lab nested` could not set L1 up.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// A file or folder of the control share or the results.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The default kernel has no modules tree to take L1's modules from.
    #[error(
        "lab nested boots L1 from the default kernel, which must be modular; {0} has no modules tree"
    )]
    NoModules(String),
    /// The static busybox that runs L1's `/init` cannot be read.
    #[error("{} (Debian's busybox-static; run .ci/install-deps)", image::BUSYBOX)]
    Busybox(#[source] std::io::Error),
    /// Resolving modules or writing an image or a file (the error names it).
    #[error(transparent)]
    Image(#[from] arena_images::ImageError),
}

/// Console lines kept for the report of an L1 that hangs or dies.
const TAIL_LINES: usize = 40;
/// How often the control share is polled.
const POLL: Duration = Duration::from_millis(50);
/// Environment variables passed on to the inner `lab`.
const PASSED_ENV_PREFIX: &str = "ARENA_LAB_";

/// `lab nested` options.
#[derive(clap::Args, Debug)]
pub struct NestedArgs {
    /// L1's vCPUs. One by default: with more, multi-threaded TCG runs them
    /// in parallel, and L1's kernel now and then dies with `Oops: int3` in
    /// KVM's code while it patches its own text (static keys flip as VMs come
    /// and go); single-threaded TCG with two vCPUs never reached a hello in
    /// 120 s. One vCPU is race-free and measured as fast per VM (4.4 s to
    /// hello against 4.5 s with two).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// L1's memory (its tmpfs overlay and the inner VMs live in it).
    #[arg(long, default_value_t = 4096)]
    memory_mib: u32,
    /// Seconds from QEMU's start until L1 reports ready.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Seconds the whole inner command may take before L1 is killed.
    #[arg(long, default_value_t = 7200)]
    timeout: u64,
    /// Run PROGRAM ARGS... (after `--`, a host path or a name looked up in
    /// PATH) inside L1 instead of `lab`; our exit status is the program's.
    /// It sees the host's files read-only under a tmpfs overlay; every file
    /// it creates or changes shows up read-only under
    /// /run/arena-nested-changes (the overlay's upper layer).
    #[arg(long)]
    exec: bool,
    /// The `lab` arguments to run inside L1 (with `--exec`, the program and
    /// its arguments), after `--`.
    #[arg(last = true, required = true)]
    inner: Vec<String>,
}

/// L1's report once KVM and the file systems are up.
#[derive(Debug, Deserialize)]
struct Ready {
    /// L1's uptime at that point.
    uptime_s: f64,
    /// Whether `/dev/kvm` exists (kvm_amd loaded).
    dev_kvm: bool,
    /// L1's kernel release.
    release: String,
}

/// L1's report once the inner command ended.
#[derive(Debug, Deserialize)]
struct Done {
    /// The inner `lab`'s exit status.
    exit_code: i32,
}

/// The inner command as the lab's own command line parses it: what `lab
/// nested` warms on the host and shares with L1. The parser comes from the
/// command line (main.rs), which sits above every tool, so every option of
/// every subcommand is understood exactly as the inner lab will.
pub enum Inner {
    /// `lab run ...`.
    Run(Box<crate::run::RunArgs>),
    /// A command that boots the default image of this kernel (`boot`,
    /// `image`, `bench`).
    Boots(crate::KernelArgs),
    /// Anything else: nothing to warm or share.
    Other,
}

/// Parses an inner `lab` argument list (without `lab`); `None` when it does
/// not parse (the inner lab reports that, with its exit code).
pub type InnerParser = fn(&[String]) -> Option<Inner>;

/// `lab nested`.
pub fn nested(args: NestedArgs, parse: InnerParser) -> Result<u8, LabError> {
    let inner = if args.exec {
        InnerRun::exec(&args.inner)?
    } else {
        InnerRun::parse(&args.inner, parse)?
    };
    let kernel = plan::kernel(&Default::default()).map_err(infra)?;
    let initrd = image::build(&kernel).map_err(infra)?;
    inner.warm_caches()?;
    let ctl = ControlDir::create().map_err(infra)?;
    ctl.write_request(&inner).map_err(infra)?;
    let mut cmd = l1_command(&args, &kernel.boot_image, &initrd, &ctl, &inner);
    let started = Instant::now();
    let mut child = spawn_dying_with_us(&mut cmd)
        .map_err(|e| infra(format!("cannot start qemu-system-x86_64 for L1: {e}")))?;
    let tail = forward_console(&mut child);
    let outcome = supervise(&args, &mut child, &ctl, started);
    let _ = child.kill();
    let status = child.wait().ok();
    let qemu_err = read_stderr(&mut child);
    let l1_log = ctl.keep_console_log(inner.results.as_deref());
    let tail_text = || {
        let l1 = std::fs::read_to_string(&l1_log).unwrap_or_default();
        let l1: Vec<&str> = l1.lines().collect();
        format!(
            "{}\n(L1's whole console: {})\ninner lab output tail:\n{}{}",
            l1[l1.len().saturating_sub(TAIL_LINES)..].join("\n"),
            l1_log.display(),
            joined_tail(&tail),
            if qemu_err.trim().is_empty() {
                String::new()
            } else {
                format!("\nqemu: {}", qemu_err.trim())
            }
        )
    };
    match outcome {
        Outcome::Done(d) => Ok(u8::try_from(d.exit_code).unwrap_or(exit::INFRA)),
        Outcome::NoKvm(r) => Err(infra(format!(
            "L1 ({}) has no /dev/kvm: kvm_amd did not load; L1 console tail:\n{}",
            r.release,
            tail_text()
        ))),
        Outcome::BootTimeout => Err(infra(format!(
            "L1 did not become ready within {} s; L1 console tail:\n{}",
            args.boot_timeout,
            tail_text()
        ))),
        Outcome::Timeout => Err(infra(format!(
            "the nested run exceeded {} s and L1 was killed; L1 console tail:\n{}",
            args.timeout,
            tail_text()
        ))),
        Outcome::Died => Err(infra(format!(
            "L1 ended ({}) without reporting the inner lab's exit status; L1 console tail:\n{}",
            status.map_or_else(|| "status unknown".into(), |s| s.to_string()),
            tail_text()
        ))),
    }
}

/// How L1 ended.
enum Outcome {
    Done(Done),
    NoKvm(Ready),
    BootTimeout,
    Timeout,
    Died,
}

/// Waits for L1's reports, bounded by the boot and overall timeouts.
fn supervise(args: &NestedArgs, child: &mut Child, ctl: &ControlDir, started: Instant) -> Outcome {
    let boot_deadline = started + Duration::from_secs(args.boot_timeout);
    let deadline = started + Duration::from_secs(args.timeout);
    let mut ready = false;
    loop {
        if !ready {
            if let Some(r) = ctl.read::<Ready>("ready.json") {
                if !r.dev_kvm {
                    return Outcome::NoKvm(r);
                }
                ready = true;
                eprintln!(
                    "lab: nested: L1 (Linux {}, QEMU TCG with SVM+NPT, {} vCPU(s), {} MiB) \
                     ready with /dev/kvm in {:.1} s ({:.1} s of L1 uptime)",
                    r.release,
                    args.vcpus,
                    args.memory_mib,
                    started.elapsed().as_secs_f64(),
                    r.uptime_s
                );
            } else if Instant::now() >= boot_deadline {
                return Outcome::BootTimeout;
            }
        }
        if let Some(d) = ctl.read::<Done>("done.json") {
            return Outcome::Done(d);
        }
        if let Ok(Some(_)) = child.try_wait() {
            // The report may have landed just before QEMU ended.
            return ctl
                .read::<Done>("done.json")
                .map_or(Outcome::Died, Outcome::Done);
        }
        if Instant::now() >= deadline {
            return Outcome::Timeout;
        }
        std::thread::sleep(POLL);
    }
}

/// The inner `lab` invocation (or `--exec` program) and what it touches on
/// the host.
struct InnerRun {
    /// `lab` for a lab run; the program for `--exec`.
    program: PathBuf,
    /// Arguments after `program`.
    args: Vec<String>,
    /// Working directory (the same path inside L1).
    cwd: PathBuf,
    /// The inner command as the lab itself parses it; `None` when it does
    /// not parse (the inner lab reports that, with its exit code).
    command: Option<Inner>,
    /// The results folder the inner command writes, exported read-write.
    results: Option<PathBuf>,
}

impl InnerRun {
    /// Parses `args` with the lab's own command line, so every option of
    /// every subcommand is understood exactly as the inner lab will.
    fn parse(args: &[String], parse: InnerParser) -> Result<Self, LabError> {
        let cwd = std::env::current_dir().map_err(infra)?;
        let command = parse(args);
        let results = match &command {
            Some(Inner::Run(r)) => Some(r.results_dir().to_owned()),
            _ => None,
        }
        .map(|r| if r.is_absolute() { r } else { cwd.join(r) });
        Ok(Self {
            program: std::env::current_exe().map_err(infra)?,
            args: args.to_vec(),
            cwd,
            command,
            results,
        })
    }

    /// `--exec PROGRAM ARGS...`: no lab command, so no caches to warm and
    /// no results folder to share.
    #[cfg(test)]
    fn parse_with(args: &[String]) -> Result<Self, LabError> {
        Self::parse(args, tests::run_only)
    }

    fn exec(inner: &[String]) -> Result<Self, LabError> {
        let (program, args) = inner.split_first().ok_or_else(|| {
            LabError::BadArgs("lab nested --exec needs a program after `--`".into())
        })?;
        Ok(Self {
            program: PathBuf::from(program),
            args: args.to_vec(),
            cwd: std::env::current_dir().map_err(infra)?,
            command: None,
            results: None,
        })
    }

    /// Builds on the host what the inner run would otherwise build under TCG
    /// in L1's throw-away overlay: the kernel, agent, BPF objects and every
    /// scenario's image (the selftests among them).
    fn warm_caches(&self) -> Result<(), LabError> {
        let kernel = match &self.command {
            Some(Inner::Run(r)) => return crate::run::warm_caches(r).map_err(infra),
            Some(Inner::Boots(kernel)) => kernel,
            Some(Inner::Other) | None => return Ok(()),
        };
        // `boot`, `bench`, `image`: the agent and the one-step image.
        if let Ok(k) = plan::kernel(kernel) {
            let prepared = plan::prepare(k, kernel).map_err(infra)?;
            let _ = plan::image(&prepared, &crate::run::trivial_scenario());
        }
        Ok(())
    }
}

/// The control share: a fresh host directory exported read-write.
struct ControlDir {
    path: PathBuf,
}

impl ControlDir {
    fn create() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("arena-nested-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Writes `request.sh` and `results-path` for L1's `/init`.
    fn write_request(&self, inner: &InnerRun) -> Result<(), NestedError> {
        let mut script = String::from("# written by `lab nested` on the host\n");
        for (k, v) in std::env::vars() {
            if k.starts_with(PASSED_ENV_PREFIX) || ["HOME", "PATH", "TERM"].contains(&k.as_str()) {
                script.push_str(&format!("export {k}={}\n", shell_quote(&v)));
            }
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // L1's console is a tty; our caller is not: no live display.
            script.push_str(&format!(
                "export {}=plain\n",
                crate::ui::progress::PLAIN_ENV
            ));
        }
        script.push_str(&format!(
            "cd {} || exit {}\nexec {}",
            shell_quote(&inner.cwd.to_string_lossy()),
            exit::INFRA,
            shell_quote(&inner.program.to_string_lossy())
        ));
        for a in &inner.args {
            script.push(' ');
            script.push_str(&shell_quote(a));
        }
        script.push('\n');
        arena_images::write_atomic(&self.path.join("request.sh"), script.as_bytes())?;
        if let Some(r) = &inner.results {
            std::fs::create_dir_all(r).map_err(|source| NestedError::Io {
                path: r.clone(),
                source,
            })?;
            arena_images::write_atomic(
                &self.path.join("results-path"),
                r.to_string_lossy().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// L1's kernel console (its serial port).
    fn console_log(&self) -> PathBuf {
        self.path.join("l1-console.log")
    }

    /// Moves L1's console log next to the results (`nested-l1-console.log`),
    /// or keeps it where it is when there is no results folder, and removes
    /// the rest of the control share. Returns where the log is.
    fn keep_console_log(&self, results: Option<&Path>) -> PathBuf {
        let log = self.console_log();
        let Some(dest) = results.map(|r| r.join("nested-l1-console.log")) else {
            return log;
        };
        if std::fs::copy(&log, &dest).is_err() {
            return log;
        }
        let _ = std::fs::remove_dir_all(&self.path);
        dest
    }

    /// A report of L1's, once it is complete (written by rename).
    fn read<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let text = std::fs::read_to_string(self.path.join(name)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The QEMU command for L1.
fn l1_command(
    args: &NestedArgs,
    kernel: &Path,
    initrd: &Path,
    ctl: &ControlDir,
    inner: &InnerRun,
) -> Command {
    let mut append = String::from("console=ttyS0 panic=-1 rdinit=/init");
    if let Some(khz) = crate::execute::backend::qemu::host_tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    let qemu = std::env::var("ARENA_LAB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let mut c = Command::new(qemu);
    c.args(["-M", "microvm", "-accel", "tcg,thread=multi"])
        .args(["-cpu", "qemu64,+svm,+npt"])
        .args(["-m", &args.memory_mib.to_string()])
        .args(["-smp", &args.vcpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-no-reboot")
        .arg("-serial")
        .arg(format!("file:{}", ctl.console_log().display()))
        .args(["-device", "virtio-serial-device"])
        .args(["-chardev", "stdio,id=lab,signal=off"])
        .args(["-device", "virtconsole,chardev=lab"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append]);
    let mut share = |id: &str, path: &Path, readonly: bool| {
        c.arg("-fsdev").arg(format!(
            "local,id={id},path={},security_model=none,multidevs=remap{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        ));
        c.args([
            "-device",
            &format!("virtio-9p-device,fsdev={id},mount_tag={id}"),
        ]);
    };
    share("host", Path::new("/"), true);
    share("ctl", &ctl.path, false);
    if let Some(r) = &inner.results {
        share("results", r, false);
    }
    c
}

/// Spawns `cmd` so that it is killed when `lab` dies.
fn spawn_dying_with_us(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Streams L1's serial console to our stdout and keeps its last lines.
fn forward_console(child: &mut Child) -> Arc<Mutex<VecDeque<String>>> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(mut out) = child.stdout.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut line = Vec::new();
            let mut stdout = std::io::stdout();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
                for &b in &buf[..n] {
                    if b == b'\n' {
                        push_tail(&tail, &line);
                        line.clear();
                    } else if line.len() < 4096 {
                        line.push(b);
                    }
                }
            }
            if !line.is_empty() {
                push_tail(&tail, &line);
            }
        });
    }
    tail
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: &[u8]) {
    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() == TAIL_LINES {
        t.pop_front();
    }
    t.push_back(
        String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_owned(),
    );
}

fn joined_tail(tail: &Mutex<VecDeque<String>>) -> String {
    let t = tail.lock().unwrap_or_else(|e| e.into_inner());
    t.iter().cloned().collect::<Vec<_>>().join("\n")
}

fn read_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// `lab run` only: the command line's full parser lives in main.rs.
    pub(super) fn run_only(args: &[String]) -> Option<Inner> {
        let argv = std::iter::once("lab").chain(args.iter().map(String::as_str));
        crate::run::parse_args(argv)
            .ok()
            .map(|r| Inner::Run(Box::new(r)))
    }

    #[test]
    fn run_results_default_to_the_working_directory() {
        let r = InnerRun::parse_with(&strings(&["run", "s"])).unwrap();
        assert_eq!(
            r.results,
            Some(std::env::current_dir().unwrap().join("results"))
        );
        let r = InnerRun::parse_with(&strings(&["validate", "s"])).unwrap();
        assert_eq!(r.results, None);
    }

    #[test]
    fn inner_arguments_are_parsed_as_the_lab_parses_them() {
        // `--only NAME` takes a value: NAME is not a scenario path.
        let r = InnerRun::parse_with(&strings(&[
            "run",
            "--only",
            "pf-read-fault-allocates",
            "--results=/r",
            "scenarios/arena",
        ]))
        .unwrap();
        assert_eq!(r.results, Some(PathBuf::from("/r")));
        let Some(Inner::Run(run)) = &r.command else {
            panic!("not parsed as `lab run`");
        };
        assert_eq!(run.paths(), [PathBuf::from("scenarios/arena")]);
        // Not a lab command line: left for the inner lab to refuse.
        assert!(InnerRun::parse_with(&strings(&["frobnicate"]))
            .unwrap()
            .command
            .is_none());
    }

    #[test]
    fn exec_runs_the_program_with_its_arguments() {
        let r = InnerRun::exec(&strings(&["/bin/prog", "--flag", "a b'c"])).unwrap();
        assert_eq!(r.program, PathBuf::from("/bin/prog"));
        assert!(r.command.is_none() && r.results.is_none());
        let ctl = ControlDir::create().unwrap();
        ctl.write_request(&r).unwrap();
        let script = std::fs::read_to_string(ctl.path.join("request.sh")).unwrap();
        let _ = std::fs::remove_dir_all(&ctl.path);
        assert!(
            script.ends_with("exec '/bin/prog' '--flag' 'a b'\\''c'\n"),
            "{script}"
        );
        assert!(InnerRun::exec(&[]).is_err());
    }

    #[test]
    fn exec_is_a_flag_and_lab_arguments_stay_as_they_were() {
        use clap::Parser;
        /// `lab nested`'s options alone, as the command line flattens them.
        #[derive(clap::Parser)]
        struct Nested {
            #[command(flatten)]
            args: NestedArgs,
        }
        let n = Nested::try_parse_from(["nested", "--exec", "--", "prog", "-x"])
            .unwrap()
            .args;
        assert!(n.exec);
        assert_eq!(n.inner, strings(&["prog", "-x"]));
        let n = Nested::try_parse_from(["nested", "--", "run", "--exec"])
            .unwrap()
            .args;
        assert!(!n.exec, "`--exec` after `--` belongs to the inner lab");
        assert_eq!(n.inner, strings(&["run", "--exec"]));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let t = Mutex::new(VecDeque::new());
        for i in 0..(TAIL_LINES + 5) {
            push_tail(&t, format!("line {i}\r").as_bytes());
        }
        let t = t.into_inner().unwrap();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.back().unwrap(), &format!("line {}", TAIL_LINES + 4));
    }
}

//! What `lab run` shows while it runs, and how it stops on Ctrl-C.
//!
//! On a terminal: an indicatif display with n/N done, passes and failures so
//! far, and one line per running scenario with its elapsed time and phase
//! (`booting`, `step 4/12 (touch, x.yaml:9)`, read from the scenario's `events.jsonl` as
//! the session appends to it, so the session needs no callback). Without a
//! terminal (CI logs): one plain line when a scenario starts and one when it
//! ends. `--quiet`: only failures and the final line; `--verbose`: every
//! running scenario's serial console, line by line, prefixed with its name.
//!
//! The phases come from the typed `GuestMessage` records the session
//! appends to `events.jsonl` (the run's own record of its events, so the
//! display needs no callback into the session and can be swapped for
//! another reader). This module kills nothing: SIGINT/SIGTERM only set a
//! flag (`execute::signals`), whose watcher stops the VMs the sessions
//! registered; the display only says so. The VMs also have PDEATHSIG, so a
//! runner killed outright leaves none behind either.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::judge::verdict::Verdict;
use crate::record::results::ScenarioSummary;

/// How much `lab run` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Failures and the final line only.
    Quiet,
    /// Progress, one line per scenario start (without a terminal) and end.
    Normal,
    /// As `Normal`, plus each running scenario's console.
    Verbose,
}

/// One running scenario.
struct Running {
    name: String,
    dir: PathBuf,
    bar: Option<ProgressBar>,
    /// How far `events.jsonl` and `console.log` have been read.
    events_at: u64,
    console_at: u64,
    phase: String,
    /// How the open step is named, for its `progress` lines.
    step: Option<String>,
}

#[derive(Default)]
struct State {
    running: HashMap<usize, Running>,
    done: usize,
    passed: usize,
    failed: usize,
    interrupt_seen: bool,
}

/// The display of one `lab run`.
pub struct Progress {
    total: usize,
    verbosity: Verbosity,
    /// `None` without a terminal.
    bars: Option<(MultiProgress, ProgressBar)>,
    state: Mutex<State>,
}

/// `ARENA_LAB_PROGRESS=plain`: one line per scenario start and end, even on
/// a terminal.
pub const PLAIN_ENV: &str = "ARENA_LAB_PROGRESS";

impl Progress {
    /// A display for `total` scenarios; a live one only if stderr is a
    /// terminal and [`PLAIN_ENV`] does not ask for plain lines (`lab nested`
    /// sets it when its own output is no terminal: L1's console is a tty).
    pub fn new(total: usize, verbosity: Verbosity) -> Progress {
        let tty = std::io::stderr().is_terminal()
            && verbosity != Verbosity::Quiet
            && std::env::var_os(PLAIN_ENV).is_none_or(|v| v != "plain");
        let bars = tty.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
            let main = multi.add(ProgressBar::new(total as u64));
            main.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {pos}/{len} done, {msg}")
                    .expect("template"),
            );
            main.set_message("0 passed, 0 failed");
            main.enable_steady_tick(Duration::from_millis(500));
            (multi, main)
        });
        Progress {
            total,
            verbosity,
            bars,
            state: Mutex::new(State::default()),
        }
    }

    /// Print a line without tearing the live display.
    pub fn println(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => multi.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// Scenario `i` starts; its files go to `dir`.
    pub fn started(&self, i: usize, name: &str, dir: &Path) {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {prefix} {elapsed:>4} {msg}")
                    .expect("template"),
            );
            bar.set_prefix(name.to_owned());
            bar.set_message("booting");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if self.bars.is_none() && self.verbosity != Verbosity::Quiet {
            println!("START   {name}");
        }
        self.state.lock().expect("lock").running.insert(
            i,
            Running {
                name: name.to_owned(),
                dir: dir.to_owned(),
                bar,
                events_at: 0,
                console_at: 0,
                phase: "booting".into(),
                step: None,
            },
        );
    }

    /// Scenario `i` has its verdict: print its line (in quiet mode only if
    /// it did not pass) and count it.
    pub fn ended(&self, i: usize, s: &ScenarioSummary) {
        let mut st = self.state.lock().expect("lock");
        if let Some(mut r) = st.running.remove(&i) {
            if self.verbosity == Verbosity::Verbose {
                self.stream_console(&mut r);
            }
            if let Some(bar) = r.bar {
                bar.finish_and_clear();
                if let Some((multi, _)) = &self.bars {
                    multi.remove(&bar);
                }
            }
        }
        match s.judgement.verdict {
            Verdict::Pass => st.passed += 1,
            Verdict::NotRun | Verdict::Skipped => {}
            _ => st.failed += 1,
        }
        st.done = st.passed + st.failed;
        if let Some((_, main)) = &self.bars {
            main.set_position(st.done as u64);
            main.set_message(format!("{} passed, {} failed", st.passed, st.failed));
        }
        drop(st);
        if self.verbosity != Verbosity::Quiet || s.judgement.verdict != Verdict::Pass {
            self.println(&result_lines(s));
        }
    }

    /// Scenarios with a verdict so far.
    pub fn done(&self) -> usize {
        self.state.lock().expect("lock").done
    }

    /// Refresh phases, stream consoles (`--verbose`), and say once that a
    /// signal stops the run (`execute::signals` stops the VMs).
    fn tick(&self) {
        if let Some(sig) = crate::execute::signals::interrupted() {
            let first = {
                let mut st = self.state.lock().expect("lock");
                !std::mem::replace(&mut st.interrupt_seen, true)
            };
            if first {
                let line = format!(
                    "lab: {sig}: interrupted after {}/{}; stopping the VMs",
                    self.done(),
                    self.total
                );
                match &self.bars {
                    Some((multi, _)) => multi.suspend(|| eprintln!("{line}")),
                    None => eprintln!("{line}"),
                }
            }
        }
        let mut st = self.state.lock().expect("lock");
        for r in st.running.values_mut() {
            if let Some(phase) =
                read_phase(&r.dir.join("events.jsonl"), &mut r.events_at, &mut r.step)
            {
                r.phase = phase;
                if let Some(bar) = &r.bar {
                    bar.set_message(r.phase.clone());
                }
            }
            if self.verbosity == Verbosity::Verbose {
                self.stream_console(r);
            }
        }
    }

    /// Print the console lines of `r` written since the last call.
    fn stream_console(&self, r: &mut Running) {
        let first = r.console_at == 0;
        let text = read_from(&r.dir.join("console.log"), &mut r.console_at, true);
        // A restored VM's log starts with the snapshot's boot (written at
        // once, before the VM runs): shown once per run, not per scenario.
        let text = if first { own_console(&text) } else { &text };
        if text.is_empty() {
            return;
        }
        let prefixed: Vec<String> = text.lines().map(|l| format!("{}| {l}", r.name)).collect();
        self.println(&prefixed.join("\n"));
    }

    /// Run [`Progress::tick`] every 200 ms while `running` is set.
    pub fn watch(&self, running: &AtomicBool) {
        while running.load(Ordering::SeqCst) {
            self.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
        self.tick();
    }

    /// Remove the live display.
    pub fn finish(&self) {
        if let Some((multi, main)) = &self.bars {
            main.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

/// What a restored VM printed itself: the text after
/// [`RESTORE_MARKER`](crate::execute::console_capture::RESTORE_MARKER), or all
/// of it for a booted VM.
fn own_console(text: &str) -> &str {
    let marker = crate::execute::console_capture::RESTORE_MARKER;
    text.find(marker)
        .map_or(text, |i| &text[i + marker.len()..])
}

/// Bytes of `path` from `*at` on, up to the last complete line when
/// `whole_lines` (the rest is read next time); advances `*at`.
fn read_from(path: &Path, at: &mut u64, whole_lines: bool) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(*at)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    let end = if whole_lines {
        buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)
    } else {
        buf.len()
    };
    *at += end as u64;
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The newest phase in the lines of `events.jsonl` added since `*at`;
/// `step` is how the open step is named (kept from one read to the next).
fn read_phase(events: &Path, at: &mut u64, step: &mut Option<String>) -> Option<String> {
    let text = read_from(events, at, true);
    text.lines().filter_map(|l| phase_of(l, step)).next_back()
}

/// What an `events.jsonl` line says the scenario is doing: the line is a
/// [`GuestMessage`](arena_protocol::GuestMessage) stamped with its arrival.
/// A `step_started` names the open step in `step`, for the `progress`
/// lines that follow it.
fn phase_of(line: &str, step: &mut Option<String>) -> Option<String> {
    use arena_protocol::GuestMessage;
    match serde_json::from_str::<GuestMessage>(line).ok()? {
        GuestMessage::Hello(_) => Some("agent up".into()),
        GuestMessage::StepStarted { path, kind, at } => {
            let label = arena_protocol::step_ref::started_label(&path, &kind, at.as_ref());
            *step = Some(label.clone());
            Some(label)
        }
        // Only parallel steps say more than `step_started` already did.
        GuestMessage::Progress {
            path,
            kind,
            workers: Some(w),
            ..
        } => {
            let label = step
                .clone()
                .unwrap_or_else(|| arena_protocol::step_ref::started_label(&path, &kind, None));
            Some(format!("{label}, {w}"))
        }
        GuestMessage::Done { .. } | GuestMessage::Fatal { .. } => Some("powering off".into()),
        _ => None,
    }
}

/// A scenario's end line (`PASS    name (boot 1.20 s, total 3.40 s)`), and
/// for one that did not pass, the first lines of its reason.
pub fn result_lines(s: &ScenarioSummary) -> String {
    let v = match s.judgement.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::KnownFail => "KNOWN",
        Verdict::Error => "ERROR",
        Verdict::Timeout => "TIMEOUT",
        Verdict::NotRun => "NOT RUN",
        Verdict::Skipped => "SKIP",
    };
    let boot = s
        .boot_s
        .map(|b| format!("boot {b:.2} s, "))
        .unwrap_or_default();
    let mut out = format!("{v:<7} {} ({boot}total {:.2} s)", s.name, s.duration_s);
    if s.judgement.verdict != Verdict::Pass {
        for line in s.judgement.reason.lines().take(20) {
            out.push_str(&format!("\n        {line}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_skips_a_restored_vms_boot_console() {
        let marker = crate::execute::console_capture::RESTORE_MARKER;
        let boot: String = (0..255).map(|i| format!("[ 0.{i}] boot line\n")).collect();
        let log = format!("{boot}{marker}[ 9.0] arena-agent: running\n");
        assert_eq!(own_console(&log), "[ 9.0] arena-agent: running\n");
        // A cold boot's console is all its own.
        assert_eq!(own_console(&boot), boot);
    }

    #[test]
    fn phases_from_events() {
        let mut step = None;
        let mut phase = |line: &str| phase_of(line, &mut step);
        assert_eq!(
            phase(
                r#"{"type":"step_started","path":"3","kind":"processes","at":{"index":4,"of":12,"kind":"processes","file":"x.yaml","line":9},"host_time_s":1.0}"#
            ),
            Some("step 4/12 (processes, x.yaml:9)".into())
        );
        let hello = arena_protocol::GuestMessage::Hello(arena_protocol::Hello {
            agent_version: "0".into(),
            kernel_release: "6.12".into(),
            kernel_version: "#1".into(),
            jit_enabled: None,
            cpus: 2,
            uptime_ms: 1,
        });
        let line = serde_json::to_string(&hello).unwrap();
        assert_eq!(phase(&line), Some("agent up".into()));
        assert_eq!(phase(r#"{"type":"step_ended"}"#), None);
        assert_eq!(phase("garbage"), None);
        assert_eq!(
            phase(r#"{"type":"progress","path":"0","kind":"sleep","elapsed_ms":1}"#),
            None
        );
        // `progress` names the step as its `step_started` did.
        assert_eq!(
            phase(
                r#"{"type":"progress","path":"3","kind":"processes","elapsed_ms":1,"ticks":9,"workers":{"iteration":37,"iterations":200,"running":3,"workers":4}}"#
            ),
            Some("step 4/12 (processes, x.yaml:9), iteration 37/200 in 3 of 4 workers".into())
        );
        // An agent that does not name its steps: counted from 1 all the same.
        assert_eq!(
            phase_of(
                r#"{"type":"step_started","path":"3","kind":"touch"}"#,
                &mut None
            ),
            Some("step 4 (touch)".into())
        );
    }

    #[test]
    fn reads_only_whole_new_lines() {
        let p = std::env::temp_dir().join(format!("arena-progress-{}", std::process::id()));
        std::fs::write(&p, "a\nb\npart").unwrap();
        let mut at = 0;
        assert_eq!(read_from(&p, &mut at, true), "a\nb\n");
        assert_eq!(read_from(&p, &mut at, true), "");
        std::fs::write(&p, "a\nb\npartial\n").unwrap();
        assert_eq!(read_from(&p, &mut at, true), "partial\n");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn quiet_has_no_live_display() {
        let p = Progress::new(3, Verbosity::Quiet);
        assert!(p.bars.is_none());
    }
}

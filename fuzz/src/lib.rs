//! arena lab's fuzzer for stable Rust: seeded random mutation of in-repo
//! corpora (`fuzz/corpus/<target>/`) against the parsers and devices that
//! take untrusted input — the guest drives the virtio devices and writes the
//! results channel and console log; users write scenario YAML and hand the
//! VMM kernel images. No coverage feedback (that needs nightly), so the
//! seeds carry the structure and the mutators the hostility.

pub mod rng;
pub mod targets;

/// The runner's splat detector and scenario loader, from its library.
pub use arena_runner::judge::splat;
pub use arena_runner::plan::scenario_file;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub use targets::{find, Target, TARGETS};

/// `fuzz/` in the source tree: corpora and crashes live there.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file in `dir` (sorted; empty if the directory is missing).
pub fn read_dir_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
        .collect()
}

/// FNV-1a: names reproducer files by content.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default panic hook (which would print every caught panic)
/// with one that records the message and location for the report.
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let msg = format!("{info}");
            if let Ok(mut g) = LAST_PANIC.lock() {
                *g = Some(msg);
            }
        }));
    });
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    let recorded = LAST_PANIC.lock().ok().and_then(|mut g| g.take());
    recorded.unwrap_or_else(|| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// Runs one input, turning a panic into `Err(message)`; `Ok(deep)` otherwise.
pub fn run_guarded(t: &Target, data: &[u8]) -> Result<bool, String> {
    quiet_panics();
    panic::catch_unwind(AssertUnwindSafe(|| (t.run)(data))).map_err(panic_message)
}

/// Saves a reproducer under `fuzz/crashes/<target>/`; returns its path.
pub fn save_crash(root: &Path, t: &Target, kind: &str, data: &[u8]) -> PathBuf {
    let dir = root.join("crashes").join(t.name);
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{kind}-{:016x}", fnv(data)));
    if let Err(e) = std::fs::write(&p, data) {
        eprintln!("arena-fuzz: cannot save {}: {e}", p.display());
    }
    p
}

/// Options of one fuzzing run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Wall time per target.
    pub duration: Duration,
    /// PRNG seed.
    pub seed: u64,
    /// One input running longer than this is a hang: saved, and the
    /// process exits (a stuck call cannot be interrupted in-process).
    pub hang: Duration,
    /// Inputs slower than this are counted as slow.
    pub slow: Duration,
    /// Where `corpus/` and `crashes/` are.
    pub root: PathBuf,
}

/// What one target's run measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Target name.
    pub target: &'static str,
    /// Inputs executed.
    pub execs: u64,
    /// Inputs that got deep (see [`Target::run`]).
    pub deep: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Crashing input, if one was found (the run stops at the first).
    pub crash: Option<(PathBuf, String)>,
    /// Inputs over the slow budget.
    pub slow: u64,
    /// Longest single input.
    pub slowest: Duration,
    /// RSS at start and end, KiB.
    pub rss_start: u64,
    /// RSS at the end, KiB.
    pub rss_end: u64,
}

impl Stats {
    /// Executions per second.
    pub fn rate(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} execs in {:.1} s ({:.0}/s), {:.1}% deep, {} crash(es), {} slow (max {:.1} ms), RSS {} -> {} KiB",
            self.target,
            self.execs,
            self.elapsed.as_secs_f64(),
            self.rate(),
            100.0 * self.deep as f64 / self.execs.max(1) as f64,
            usize::from(self.crash.is_some()),
            self.slow,
            self.slowest.as_secs_f64() * 1e3,
            self.rss_start,
            self.rss_end
        )
    }
}

/// The input in flight, for the hang watchdog.
struct InFlight {
    /// Start of the current input in ms since `base`, 0 when idle.
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
    base: Instant,
}

/// Fuzzes one target for `opts.duration`, stopping at the first crash.
pub fn fuzz(t: &'static Target, opts: &Options) -> Stats {
    quiet_panics();
    let rss_start = vmm::rss::rss_kib(None).unwrap_or(0);
    let mut seeds: Vec<Vec<u8>> = read_dir_files(&opts.root.join("corpus").join(t.name))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    let flight = Arc::new(InFlight {
        started_ms: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
        base: Instant::now(),
    });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (flight, done, root, hang) =
            (flight.clone(), done.clone(), opts.root.clone(), opts.hang);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let s = flight.started_ms.load(Ordering::Relaxed);
                let now = flight.base.elapsed().as_millis() as u64;
                if s != 0 && now.saturating_sub(s) > hang.as_millis() as u64 {
                    let data = flight.input.lock().map(|g| g.clone()).unwrap_or_default();
                    let p = save_crash(&root, t, "hang", &data);
                    eprintln!(
                        "arena-fuzz: {}: HANG: one input ran over {:?}; reproducer {}",
                        t.name,
                        hang,
                        p.display()
                    );
                    std::process::exit(3);
                }
            }
        })
    };

    let mut rng = rng::Rng::new(opts.seed ^ fnv(t.name.as_bytes()));
    let start = Instant::now();
    let mut stats = Stats {
        target: t.name,
        execs: 0,
        deep: 0,
        elapsed: Duration::ZERO,
        crash: None,
        slow: 0,
        slowest: Duration::ZERO,
        rss_start,
        rss_end: 0,
    };
    let mut input = Vec::new();
    let mut i = 0usize;
    while start.elapsed() < opts.duration {
        // Seeds as they are first, then stacked mutations of them.
        input.clear();
        input.extend_from_slice(&seeds[i % seeds.len()]);
        if i >= seeds.len() {
            let other = &seeds[rng.below(seeds.len())];
            rng::mutate(&mut rng, &mut input, t.dict, other, t.max_len);
        }
        i += 1;
        if let Ok(mut g) = flight.input.lock() {
            g.clone_from(&input);
        }
        let t0 = Instant::now();
        flight.started_ms.store(
            (flight.base.elapsed().as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        let r = run_guarded(t, &input);
        flight.started_ms.store(0, Ordering::Relaxed);
        let dt = t0.elapsed();
        stats.execs += 1;
        if dt > opts.slow {
            stats.slow += 1;
        }
        stats.slowest = stats.slowest.max(dt);
        stats.deep += u64::from(r == Ok(true));
        if let Err(msg) = r {
            let p = save_crash(&opts.root, t, "crash", &input);
            stats.crash = Some((p, msg));
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    stats.elapsed = start.elapsed();
    stats.rss_end = vmm::rss::rss_kib(None).unwrap_or(0);
    stats
}

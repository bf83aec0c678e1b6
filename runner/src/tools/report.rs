//! `lab report RESULTS_ROOT -o DIR`: a static HTML page for people, built
//! from every run folder under a results root, so the nightly job can
//! publish one file that opens from the file system or any static host.
//!
//! The latest run's verdict table lists failures first, each with its
//! reason, console excerpt and splats one click away (`<details>`); the
//! history shows a runs × scenarios timeline, flaky scenarios (mixed
//! verdicts on the same kernel, so the kernel is not the cause), the kernel
//! of every run and duration trends as SVG drawn with `plotters`.
//!
//! A results root of `lab run --kernel A --kernel B` holds one root per
//! kernel (`R/debian-6.12/<run>`); run folders one level down are found
//! too. Runs are grouped by kernel (release and sha256): each kernel gets
//! its own verdict, timeline and trends, labelled, and the page opens with
//! every kernel's verdict (`lab compare`'s comparison of its last two runs,
//! and with three or more runs the `--nights` record with pass rates).
//!
//! Summaries are read as plain JSON, like `lab compare` does, so that runs
//! written by older or newer `lab`s still show. Everything that came from
//! the guest or a scenario file is HTML-escaped: guest text is hostile.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::record::results::Summary;
use plotters::prelude::*;

/// Lines of `console.log` shown for a failing scenario.
const CONSOLE_LINES: usize = 60;
/// Bytes read from the end of `console.log`: a flooding guest must not make
/// the report huge or slow.
const CONSOLE_BYTES: u64 = 64 * 1024;
/// Scenarios named in the per-scenario trend legend (the slowest ones).
const LEGEND_MAX: usize = 10;

/// Why no report could be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The results root cannot be listed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The results root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No run folder with a readable summary.json.
    #[error("{}: no run folder with a readable summary.json (looked in {looked})", dir.display())]
    NoRuns {
        /// The results root.
        dir: PathBuf,
        /// The folders looked in: the root and its per-kernel children.
        looked: String,
    },
    /// The output folder could not be created.
    #[error("creating {}: {source}", path.display())]
    Mkdir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file of the report could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: arena_images::ImageError,
    },
    /// plotters could not draw a trend plot.
    #[error("drawing {name}: {why}")]
    Plot {
        /// The plot's file name.
        name: String,
        /// plotters' error text.
        why: String,
    },
}

impl ReportError {
    /// Bad input (exit 2) rather than a failure of the lab (exit 3).
    pub fn is_input(&self) -> bool {
        matches!(self, ReportError::Read { .. } | ReportError::NoRuns { .. })
    }
}

/// One scenario attempt of one run, as far as the report goes.
#[derive(Debug, Clone, Default)]
struct Entry {
    name: String,
    attempt: u64,
    verdict: String,
    reason: String,
    duration_s: f64,
    /// Its folder in the run (`dir`, else the name).
    dir: String,
    console_tail: Option<String>,
    /// `title` and `text` of each splat.
    splats: Vec<(String, Option<String>)>,
}

/// One run folder.
#[derive(Debug, Clone, Default)]
struct Run {
    dir: PathBuf,
    id: String,
    started: String,
    /// `i/N` of `lab run --shard`.
    shard: Option<String>,
    complete: bool,
    aborted: Option<String>,
    wall_s: f64,
    kernel_release: String,
    kernel_version: String,
    /// Empty when the kernel was not resolved.
    kernel_sha256: String,
    entries: Vec<Entry>,
}

/// A run from its summary, read through the results model.
fn parse_run(dir: &Path, v: &Summary) -> Run {
    let entries = v
        .scenarios
        .iter()
        .map(|s| Entry {
            name: s.name.clone(),
            attempt: s.attempt,
            verdict: s.judgement.verdict.to_string(),
            reason: s.judgement.reason.clone(),
            duration_s: s.duration_s,
            dir: if s.dir.is_empty() {
                s.name.clone()
            } else {
                s.dir.clone()
            },
            console_tail: s.judgement.console_tail.clone(),
            splats: s
                .judgement
                .splats
                .iter()
                .map(|p| {
                    (
                        p.title.clone(),
                        p.decoded.clone().or_else(|| p.text.clone()),
                    )
                })
                .collect(),
        })
        .collect();
    let k = v.kernel.as_ref();
    let field =
        |f: fn(&arena_images::kernel::Kernel) -> &String| k.map(f).cloned().unwrap_or_default();
    Run {
        dir: dir.to_owned(),
        id: if v.run_id.is_empty() {
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        } else {
            v.run_id.clone()
        },
        started: v.started.clone(),
        shard: v.shard.clone(),
        complete: v.complete,
        aborted: v.aborted.as_ref().map(|a| a.reason.clone()),
        wall_s: v.wall_s,
        kernel_release: field(|k| &k.release),
        kernel_version: field(|k| &k.version),
        kernel_sha256: field(|k| &k.sha256),
        entries,
    }
}

/// Every readable run under `root` and its per-kernel roots, oldest first
/// (run ids sort by time), the folders skipped because their summary did
/// not parse, and the folders looked in.
type Found = (Vec<Run>, Vec<PathBuf>, Vec<PathBuf>);

fn read_runs(root: &Path) -> Result<Found, ReportError> {
    let read_err = |source| ReportError::Read {
        path: root.to_owned(),
        source,
    };
    let (roots, looked) = crate::record::history::kernel_roots(root).map_err(read_err)?;
    let mut folders = vec![];
    for r in &roots {
        folders.extend(crate::record::history::run_folders(r).map_err(read_err)?);
    }
    let mut runs = vec![];
    let mut skipped = vec![];
    for dir in folders {
        let parsed = Summary::read_run(&dir).ok().map(|v| parse_run(&dir, &v));
        match parsed {
            Some(r) => runs.push(r),
            None => skipped.push(dir),
        }
    }
    runs.sort_by(|a, b| (&a.id, &a.dir).cmp(&(&b.id, &b.dir)));
    Ok((runs, skipped, looked))
}

/// The runs of one kernel (release and sha256), oldest first.
struct Kernel {
    release: String,
    sha256: String,
    runs: Vec<Run>,
}

impl Kernel {
    /// What a person reads: release and short sha256.
    fn label(&self) -> String {
        let release = if self.release.is_empty() {
            "unknown kernel"
        } else {
            &self.release
        };
        if self.sha256.is_empty() {
            release.to_owned()
        } else {
            format!("{release} ({})", short(&self.sha256))
        }
    }

    /// A file-name-safe form of the label, for the trend SVGs.
    fn slug(&self) -> String {
        let raw = format!("{}-{}", self.release, self.sha256.get(..8).unwrap_or(""));
        let s: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let s = s.trim_matches('-').to_owned();
        if s.is_empty() {
            "unknown".into()
        } else {
            s
        }
    }
}

/// Runs grouped by kernel, the kernel with the newest run first.
fn by_kernel(runs: Vec<Run>) -> Vec<Kernel> {
    let mut groups: BTreeMap<(String, String), Vec<Run>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.kernel_release.clone(), r.kernel_sha256.clone()))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Kernel> = groups
        .into_iter()
        .map(|((release, sha256), runs)| Kernel {
            release,
            sha256,
            runs,
        })
        .collect();
    out.sort_by(|a, b| {
        let newest = |k: &Kernel| k.runs.last().map(|r| r.id.clone()).unwrap_or_default();
        newest(b).cmp(&newest(a)).then(a.release.cmp(&b.release))
    });
    out
}

/// Text made safe for HTML element content and quoted attributes. Control
/// characters other than tab and newline are dropped: a guest's escape
/// sequences mean nothing in a page.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn is_failure(verdict: &str) -> bool {
    matches!(verdict, "fail" | "error" | "timeout")
}

/// Sort rank: failures first, then known kernel bugs, not run, then passes.
fn rank(verdict: &str) -> u8 {
    match verdict {
        "timeout" | "error" | "fail" => 0,
        "known_fail" => 1,
        "pass" => 3,
        _ => 2,
    }
}

/// Entries with failures first; plan order is kept within each group.
fn failures_first(entries: &[Entry]) -> Vec<&Entry> {
    let mut v: Vec<&Entry> = entries.iter().collect();
    v.sort_by_key(|e| rank(&e.verdict));
    v
}

/// A scenario's verdict in a run: its worst attempt's, as `lab compare` has it.
fn worst(entries: &[&Entry]) -> String {
    let severity = |v: &str| match v {
        "timeout" => 4,
        "error" => 3,
        "fail" => 2,
        "known_fail" => 1,
        "pass" => 1,
        _ => 0,
    };
    entries
        .iter()
        .map(|e| e.verdict.as_str())
        .max_by_key(|v| severity(v))
        .unwrap_or("")
        .to_owned()
}

/// Scenarios that both passed and failed on the same kernel (sha256),
/// counting every attempt of every run, with the kernels it happened on.
/// Mixed verdicts across kernels are a change, not flakiness.
fn flaky(runs: &[Run]) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<(String, String), (bool, bool)> = BTreeMap::new();
    for r in runs {
        for e in &r.entries {
            let slot = seen
                .entry((e.name.clone(), r.kernel_sha256.clone()))
                .or_default();
            slot.0 |= e.verdict == "pass";
            slot.1 |= is_failure(&e.verdict);
        }
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((name, sha), (pass, fail)) in seen {
        if pass && fail {
            out.entry(name).or_default().insert(sha);
        }
    }
    out
}

/// The last `CONSOLE_LINES` lines of `path`, or `None` when unreadable.
fn console_excerpt(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(CONSOLE_BYTES);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = vec![];
    f.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    // A cut first line is partial: drop it.
    let skip = usize::from(start > 0 && lines.len() > 1);
    let from = lines.len().saturating_sub(CONSOLE_LINES).max(skip);
    Some(lines[from..].join("\n"))
}

/// A run's column/row label: its id, and its shard when sharded (a nightly
/// root holds one folder per shard and night).
fn run_label(r: &Run) -> String {
    match &r.shard {
        Some(s) => format!("{} [{s}]", r.id),
        None => r.id.clone(),
    }
}

/// Short form of a sha256 for tables.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Scenario names in first-seen order over all runs.
fn scenario_names(runs: &[Run]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut names = vec![];
    for r in runs {
        for e in &r.entries {
            if seen.insert(e.name.clone()) {
                names.push(e.name.clone());
            }
        }
    }
    names
}

/// Per scenario, per run: its worst verdict and mean duration of the
/// attempts that ran.
type Grid = BTreeMap<String, Vec<Option<(String, Option<f64>)>>>;

fn grid(runs: &[Run], names: &[String]) -> Grid {
    let mut g: Grid = names
        .iter()
        .map(|n| (n.clone(), vec![None; runs.len()]))
        .collect();
    for (i, r) in runs.iter().enumerate() {
        let mut by_name: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for e in &r.entries {
            by_name.entry(&e.name).or_default().push(e);
        }
        for (name, es) in by_name {
            let ran: Vec<f64> = es
                .iter()
                .filter(|e| e.verdict != "not_run")
                .map(|e| e.duration_s)
                .collect();
            let mean = (!ran.is_empty()).then(|| ran.iter().sum::<f64>() / ran.len() as f64);
            if let Some(row) = g.get_mut(name) {
                row[i] = Some((worst(&es), mean));
            }
        }
    }
    g
}

fn plot_err(name: &str) -> impl Fn(String) -> ReportError + '_ {
    move |why| ReportError::Plot {
        name: name.to_owned(),
        why,
    }
}

/// A plotted line: its legend label (none: unnamed, grey), colour and
/// points (run index, seconds).
type Series = (Option<String>, RGBColor, Vec<(usize, f64)>);

/// An SVG line plot of `series` (label, points by run index) over the runs.
fn line_plot(
    name: &str,
    caption: &str,
    runs: &[Run],
    series: &[Series],
) -> Result<String, ReportError> {
    let err = plot_err(name);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let ymax = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * if runs.len() == 1 { 1.3 } else { 1.1 };
        // A single run sits in the middle of the plot, not on its edge.
        let off = usize::from(runs.len() == 1);
        let xmax = if off == 1 { 2 } else { runs.len().max(2) - 1 };
        let series: Vec<Series> = series
            .iter()
            .map(|(l, c, p)| {
                (
                    l.clone(),
                    *c,
                    p.iter().map(|&(x, y)| (x + off, y)).collect(),
                )
            })
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .margin_right(60)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0..xmax, 0.0..ymax)
            .map_err(|e| err(e.to_string()))?;
        let label = |i: &usize| {
            i.checked_sub(off)
                .and_then(|i| runs.get(i))
                .map(|r| r.id.clone())
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(runs.len().clamp(3, 8))
            .x_label_formatter(&label)
            .y_desc("seconds")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let mut labelled = false;
        for (label, color, points) in &series {
            let color = *color;
            let drawn = chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?;
            if let Some(l) = label {
                labelled = true;
                drawn
                    .label(l.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(e.to_string()))?;
            // A single run: a lone dot says nothing, so it is drawn bigger
            // and labelled with its value.
            if let ([p], Some(l)) = (points.as_slice(), label) {
                chart
                    .draw_series([EmptyElement::at(*p)
                        + Circle::new((0, 0), 6, color.filled())
                        + Text::new(
                            format!("{l}: {:.1} s", p.1),
                            (10, -6),
                            ("sans-serif", 14).into_font().color(&color),
                        )])
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// A trend plot: its file name and SVG text.
type Plot = (String, String);

/// One kernel's two trend plots: each run's wall time, and each scenario's
/// duration (the slowest ones of the latest run named, the rest grey).
fn trend_plots(k: &Kernel, g: &Grid) -> Result<[Plot; 2], ReportError> {
    let runs = &k.runs;
    let (wall_file, scen_file) = (
        format!("trend-{}-wall.svg", k.slug()),
        format!("trend-{}-scenarios.svg", k.slug()),
    );
    let wall: Vec<(usize, f64)> = runs.iter().map(|r| r.wall_s).enumerate().collect();
    let wall_svg = line_plot(
        &wall_file,
        &format!("Run wall time, {}", k.label()),
        runs,
        &[(Some("wall time".into()), BLUE, wall)],
    )?;
    let last = runs.len() - 1;
    let mut slowest: Vec<(&String, f64)> = g
        .iter()
        .filter_map(|(n, row)| row[last].as_ref().and_then(|c| c.1).map(|d| (n, d)))
        .collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let named: Vec<&String> = slowest.iter().take(LEGEND_MAX).map(|p| p.0).collect();
    let mut series = vec![];
    for (name, row) in g {
        let points: Vec<(usize, f64)> = row
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().and_then(|c| c.1).map(|d| (i, d)))
            .collect();
        match named.iter().position(|n| *n == name) {
            Some(k) => {
                let c = Palette99::pick(k).to_rgba();
                series.push((Some(name.clone()), RGBColor(c.0, c.1, c.2), points));
            }
            None => series.insert(0, (None, RGBColor(200, 200, 200), points)),
        }
    }
    let per_scenario = line_plot(
        &scen_file,
        &format!("Scenario duration (slowest named), {}", k.label()),
        runs,
        &series,
    )?;
    Ok([(wall_file, wall_svg), (scen_file, per_scenario)])
}

pub const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;\
vertical-align:top;text-align:left}th{background:#f0f0f0}\
.pass{background:#d9f2d9}.fail,.error,.timeout{background:#f8d0d0}.not_run{background:#eee}\
.known_fail{background:#fde9c8}\
pre{background:#111;color:#eee;padding:6px;overflow-x:auto;max-width:110ch;font-size:12px}\
.flaky{color:#a60;font-weight:bold}summary{cursor:pointer;color:#036}\
.timeline td{text-align:center;font-family:monospace}\
.status.bad{background:#f8d0d0;padding:4px}.status.ok{background:#d9f2d9;padding:4px}\
.status.one{background:#eef;padding:4px}\
section.kernel{border-top:3px solid #036;margin-top:2em}.kernel-verdict{margin-left:1em}";

fn cell_symbol(verdict: &str) -> &'static str {
    match verdict {
        "pass" => "✓",
        "fail" => "✗",
        "known_fail" => "K",
        "error" => "E",
        "timeout" => "T",
        "not_run" => "–",
        _ => "?",
    }
}

/// Relative duration threshold of the report's comparisons (as `lab
/// compare`'s default), before the host-load factor.
const THRESHOLD: f64 = 0.5;

/// A verdict's name as in `compare.json`.
fn verdict_name(v: &Option<crate::judge::verdict::Verdict>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| v.to_string())
}

/// One kernel's verdict: its last two runs compared as `lab compare` does,
/// with the `--nights` record over all its runs when it has three or more.
fn verdict_html(i: usize, k: &Kernel) -> String {
    use crate::tools::compare::{self, Record};
    use std::fmt::Write;
    let label = escape(&k.label());
    let mut h = format!(
        "<div class=\"kernel-verdict\" data-kernel=\"{label}\"><h3><a href=\"#kernel-{i}\">{label}</a></h3>\n"
    );
    let latest = k.runs.last().expect("a kernel has runs");
    let dirs: Vec<PathBuf> = k.runs.iter().map(|r| r.dir.clone()).collect();
    if dirs.len() < 2 {
        let pass = latest
            .entries
            .iter()
            .filter(|e| e.verdict == "pass")
            .count();
        let fail = latest
            .entries
            .iter()
            .filter(|e| is_failure(&e.verdict))
            .count();
        let _ = writeln!(
            h,
            "<p class=\"status one\">One run ({}): nothing to compare yet; {pass} passed, {fail} failed.</p></div>",
            escape(&run_label(latest))
        );
        return h;
    }
    let c = match compare::verdict_of(&dirs, THRESHOLD) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                h,
                "<p class=\"status bad\">Cannot compare: {}</p></div>",
                escape(&e.to_string())
            );
            return h;
        }
    };
    let (news, what) = match &c.history {
        Some(hist) => (hist.new_failures().len(), "new failure(s)"),
        None => (c.regressions.len(), "regression(s)"),
    };
    let _ = writeln!(
        h,
        "<p class=\"status {cls}\"><b>{status}</b>: {news} {what}; run {} → {}: {} regression(s), {} fixed, \
         {} still failing, {} not run, {} duration change(s) beyond {}% × host load ratio and {} s.</p>",
        escape(&c.base),
        escape(&c.new),
        c.regressions.len(),
        c.fixed.len(),
        c.still_failing.len(),
        c.not_run.len(),
        c.durations.len(),
        c.duration_threshold_pct,
        c.duration_floor_s,
        cls = if news > 0 { "bad" } else { "ok" },
        status = if news > 0 { "NEWS" } else { "no news" },
    );
    let lists = [
        ("regression", &c.regressions),
        ("fixed", &c.fixed),
        ("still failing", &c.still_failing),
        ("not run", &c.not_run),
        ("other change", &c.other_changes),
        ("new scenario", &c.added),
        ("removed", &c.removed),
    ];
    if lists.iter().any(|l| !l.1.is_empty()) || !c.durations.is_empty() {
        h.push_str(
            "<table class=\"changes\"><thead><tr><th>scenario</th><th>change</th><th>before</th>\
             <th>now</th></tr></thead><tbody>\n",
        );
        for (what, list) in lists {
            for ch in list {
                let _ = writeln!(
                    h,
                    "<tr class=\"{}\" data-scenario=\"{n}\"><td>{n}</td><td>{what}</td><td>{}</td><td>{}</td></tr>",
                    escape(&verdict_name(&ch.new)),
                    escape(&verdict_name(&ch.base)),
                    escape(&verdict_name(&ch.new)),
                    n = escape(&ch.name),
                );
            }
        }
        for d in &c.durations {
            let _ = writeln!(
                h,
                "<tr data-scenario=\"{n}\"><td>{n}</td><td>{}{:.0}% (load ratio {:.2})</td>\
                 <td>{:.2} s</td><td>{:.2} s</td></tr>",
                if d.change_pct > 0.0 {
                    "slower +"
                } else {
                    "faster "
                },
                d.change_pct,
                d.load_factor,
                d.base_s,
                d.new_s,
                n = escape(&d.name),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    if let Some(hist) = &c.history {
        let named = |r: Record| -> Vec<String> {
            hist.scenarios
                .iter()
                .filter(|s| s.record == r)
                .map(|s| format!("{} ({:.0}%)", s.name, s.pass_rate * 100.0))
                .collect()
        };
        let or_none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                escape(&v.join(", "))
            }
        };
        let _ = writeln!(
            h,
            "<p class=\"nights\">Over its last {} runs: new failures: {}; flaky: {}; always failing: {} \
             (pass rates in brackets).</p>",
            hist.runs.len(),
            or_none(named(Record::NewFailure)),
            or_none(named(Record::Flaky)),
            or_none(named(Record::AlwaysFailing)),
        );
    }
    h.push_str("</div>\n");
    h
}

/// One kernel's section: its latest run's verdicts, its runs, timeline and
/// trends.
fn kernel_html(i: usize, k: &Kernel, plots: &[Plot]) -> String {
    use std::fmt::Write;
    let runs = &k.runs;
    let latest = runs.last().expect("a kernel has runs");
    let names = scenario_names(runs);
    let g = grid(runs, &names);
    let flaky = flaky(runs);
    let label = escape(&k.label());
    let mut h = format!(
        "<section class=\"kernel\" id=\"kernel-{i}\" data-kernel=\"{label}\">\n<h2>Kernel {label}</h2>\n"
    );

    // The latest run.
    let count = |v: &str| latest.entries.iter().filter(|e| e.verdict == v).count();
    let _ = write!(
        h,
        "<h3 id=\"latest-{i}\">Latest run {}</h3>\n<p>Kernel {} <code>{}</code>; {} passed, {} failed, \
         {} known kernel bugs, {} errors, {} timeouts, {} not run; {:.1} s{}{}.</p>\n",
        escape(&latest.id),
        escape(&latest.kernel_release),
        escape(short(&latest.kernel_sha256)),
        count("pass"),
        count("fail"),
        count("known_fail"),
        count("error"),
        count("timeout"),
        count("not_run"),
        latest.wall_s,
        if latest.complete { "" } else { ", incomplete" },
        latest
            .aborted
            .as_deref()
            .map(|a| format!(", aborted: {}", escape(a.lines().next().unwrap_or(""))))
            .unwrap_or_default()
    );
    let _ = writeln!(
        h,
        "<table class=\"verdicts\" id=\"verdicts-{i}\"><thead><tr><th>scenario</th><th>verdict</th>\
         <th>duration (s)</th><th>reason</th></tr></thead><tbody>"
    );
    for e in failures_first(&latest.entries) {
        let name = if e.attempt > 1 {
            format!("{} #{}", e.name, e.attempt)
        } else {
            e.name.clone()
        };
        let first = e.reason.lines().next().unwrap_or("");
        let _ = write!(
            h,
            "<tr class=\"{v}\" data-scenario=\"{n}\"><td>{n}</td><td>{v}</td><td>{d:.1}</td><td>{r}",
            v = escape(&e.verdict),
            n = escape(&name),
            d = e.duration_s,
            r = escape(first),
        );
        if is_failure(&e.verdict) {
            let console = console_excerpt(&latest.dir.join(&e.dir).join("console.log"))
                .or_else(|| e.console_tail.clone())
                .unwrap_or_else(|| "(no console)".into());
            let _ = write!(
                h,
                "<details class=\"failure\"><summary>reason, console, splats</summary>\
                 <h4>Reason</h4><pre class=\"reason\">{}</pre>\
                 <h4>Console (last {CONSOLE_LINES} lines of {}/console.log)</h4>\
                 <pre class=\"console\">{}</pre>",
                escape(&e.reason),
                escape(&e.dir),
                escape(&console)
            );
            for (title, text) in &e.splats {
                let _ = write!(
                    h,
                    "<h4>Splat: {}</h4><pre class=\"splat\">{}</pre>",
                    escape(title),
                    escape(text.as_deref().unwrap_or(title))
                );
            }
            h.push_str("</details>");
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</tbody></table>\n");

    // History.
    let _ = write!(
        h,
        "<h3 id=\"history-{i}\">History of {label}</h3>\n<table class=\"runs\" id=\"runs-{i}\"><thead><tr>\
         <th>run</th><th>started</th><th>folder</th><th>kernel</th><th>sha256</th><th>passed</th>\
         <th>failed</th><th>known kernel bugs</th><th>wall (s)</th><th>complete</th></tr></thead><tbody>\n",
    );
    for r in runs.iter().rev() {
        let pass = r.entries.iter().filter(|e| e.verdict == "pass").count();
        let fail = r.entries.iter().filter(|e| is_failure(&e.verdict)).count();
        let known = r
            .entries
            .iter()
            .filter(|e| e.verdict == "known_fail")
            .count();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td title=\"{}\">{}</td><td><code>{}</code></td>\
             <td>{pass}</td><td>{fail}</td><td>{known}</td><td>{:.1}</td><td>{}</td></tr>",
            escape(&run_label(r)),
            escape(&r.started),
            escape(&r.dir.display().to_string()),
            escape(&r.kernel_version),
            escape(&r.kernel_release),
            escape(short(&r.kernel_sha256)),
            r.wall_s,
            if r.complete { "yes" } else { "no" }
        );
    }
    h.push_str("</tbody></table>\n");

    let _ = write!(
        h,
        "<h3 id=\"timeline-{i}\">Pass/fail timeline, {label}</h3>\n<p>✓ pass, ✗ fail, K known kernel bug, \
         E error, T timeout, – not run; <span class=\"flaky\">⚠ flaky</span>: passed and failed on \
         this kernel.</p>\n<table class=\"timeline\" id=\"timeline-table-{i}\" data-kernel=\"{label}\">\
         <thead><tr><th>scenario</th><th>flaky</th>",
    );
    for r in runs {
        let _ = write!(
            h,
            "<th title=\"{}\">{}</th>",
            escape(&r.kernel_release),
            escape(&run_label(r))
        );
    }
    h.push_str("</tr></thead><tbody>\n");
    for name in &names {
        let mark = match flaky.get(name) {
            Some(shas) => {
                let list: Vec<&str> = shas.iter().map(|s| short(s)).collect();
                format!(
                    "<span class=\"flaky\" title=\"mixed verdicts on kernel {}\">⚠ flaky</span>",
                    escape(&list.join(", "))
                )
            }
            None => String::new(),
        };
        let _ = write!(
            h,
            "<tr data-scenario=\"{n}\"><td style=\"text-align:left\">{n}</td><td>{mark}</td>",
            n = escape(name)
        );
        for c in &g[name] {
            match c {
                Some((v, d)) => {
                    let _ = write!(
                        h,
                        "<td class=\"{v}\" title=\"{v} {}\">{}</td>",
                        d.map(|d| format!("{d:.1} s")).unwrap_or_default(),
                        cell_symbol(v),
                        v = escape(v)
                    );
                }
                None => h.push_str("<td></td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    let _ = writeln!(
        h,
        "</tbody></table>\n<h3 id=\"trends-{i}\">Duration trends, {label}</h3>\n<div class=\"trends\">"
    );
    for (file, svg) in plots {
        let _ = writeln!(
            h,
            "<figure class=\"trend\" data-file=\"{file}\">{}<figcaption><a href=\"{file}\">{file}</a>\
             </figcaption></figure>",
            svg.trim_start_matches(|c| c != '<')
        );
    }
    h.push_str("</div></section>\n");
    h
}

/// The whole page; `plots` (per kernel) are inlined so `index.html` stands
/// alone.
fn html(kernels: &[Kernel], skipped: &[PathBuf], root: &Path, plots: &[[Plot; 2]]) -> String {
    use std::fmt::Write;
    let total: usize = kernels.iter().map(|k| k.runs.len()).sum();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>arena lab report</title><style>{STYLE}</style></head><body>\n\
         <h1>arena lab report</h1>\n<p>Results root <code>{}</code>: {total} run(s) of {} kernel(s).</p>\n",
        escape(&root.display().to_string()),
        kernels.len(),
    );
    if !skipped.is_empty() {
        let list: Vec<String> = skipped
            .iter()
            .map(|p| escape(&p.display().to_string()))
            .collect();
        let _ = writeln!(
            h,
            "<p>Skipped (unreadable summary): {}</p>",
            list.join(", ")
        );
    }
    let _ = write!(
        h,
        "<section id=\"verdict\"><h2>Verdict</h2>\n<p>Per kernel: its last two runs compared as \
         <code>lab compare</code> does (a duration change counts beyond {}% × the ratio of the two \
         runs' host load and beyond {} s), and with three runs or more each scenario's record over \
         them (<code>--nights</code>).</p>\n",
        THRESHOLD * 100.0,
        crate::tools::compare::DURATION_FLOOR_S
    );
    for (i, k) in kernels.iter().enumerate() {
        h.push_str(&verdict_html(i, k));
    }
    h.push_str("</section>\n");
    for (i, (k, p)) in kernels.iter().zip(plots).enumerate() {
        h.push_str(&kernel_html(i, k, p));
    }
    h.push_str("</body></html>\n");
    h
}

/// Every kernel's trend plots.
fn all_plots(kernels: &[Kernel]) -> Result<Vec<[Plot; 2]>, ReportError> {
    kernels
        .iter()
        .map(|k| trend_plots(k, &grid(&k.runs, &scenario_names(&k.runs))))
        .collect()
}

/// Write `index.html` and the trend SVGs into `out`; returns the page's path.
pub fn report(root: &Path, out: &Path) -> Result<PathBuf, ReportError> {
    let (runs, skipped, looked) = read_runs(root)?;
    if runs.is_empty() {
        let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
        return Err(ReportError::NoRuns {
            dir: root.to_owned(),
            looked: looked.join(", "),
        });
    }
    let kernels = by_kernel(runs);
    let plots = all_plots(&kernels)?;
    let write = |path: PathBuf, bytes: &[u8]| {
        arena_images::write_atomic(&path, bytes)
            .map_err(|source| ReportError::Write { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| ReportError::Mkdir {
        path: out.to_owned(),
        source,
    })?;
    for (file, svg) in plots.iter().flatten() {
        write(out.join(file), svg.as_bytes())?;
    }
    let index = out.join("index.html");
    write(
        index.clone(),
        html(&kernels, &skipped, root, &plots).as_bytes(),
    )?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, verdict: &str) -> Entry {
        Entry {
            name: name.into(),
            attempt: 1,
            verdict: verdict.into(),
            reason: if verdict == "pass" {
                String::new()
            } else {
                format!("{name} broke")
            },
            duration_s: 2.0,
            dir: name.into(),
            ..Entry::default()
        }
    }

    fn run(id: &str, sha: &str, list: &[(&str, &str)]) -> Run {
        Run {
            dir: PathBuf::from("/nonexistent").join(id),
            id: id.into(),
            complete: true,
            wall_s: 10.0,
            kernel_release: "6.12.0".into(),
            kernel_sha256: sha.into(),
            entries: list.iter().map(|(n, v)| entry(n, v)).collect(),
            ..Run::default()
        }
    }

    #[test]
    fn escapes_markup_and_drops_controls() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("a\x1b[31mred\x07\tb\nc\u{85}"), "a[31mred\tb\nc");
    }

    #[test]
    fn failures_come_first_in_plan_order() {
        let r = run(
            "1",
            "k",
            &[
                ("a", "pass"),
                ("b", "fail"),
                ("c", "not_run"),
                ("d", "timeout"),
                ("e", "pass"),
                ("f", "error"),
            ],
        );
        let order: Vec<&str> = failures_first(&r.entries)
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(order, ["b", "d", "f", "c", "a", "e"]);
    }

    #[test]
    fn flaky_means_mixed_verdicts_on_the_same_kernel() {
        let runs = [
            run(
                "1",
                "k1",
                &[("same", "pass"), ("changed", "pass"), ("ok", "pass")],
            ),
            run(
                "2",
                "k1",
                &[("same", "fail"), ("changed", "pass"), ("ok", "pass")],
            ),
            run(
                "3",
                "k2",
                &[("same", "pass"), ("changed", "fail"), ("ok", "not_run")],
            ),
        ];
        let f = flaky(&runs);
        assert_eq!(f.keys().collect::<Vec<_>>(), ["same"]);
        assert_eq!(f["same"].iter().collect::<Vec<_>>(), ["k1"]);
        // Attempts within one run count too.
        let mut rep = run("4", "k3", &[("rep", "pass"), ("rep", "timeout")]);
        rep.entries[1].attempt = 2;
        assert!(flaky(&[rep]).contains_key("rep"));
    }

    #[test]
    fn page_lists_failure_first_with_escaped_console_in_details() {
        let mut latest = run("2", "k", &[("good", "pass"), ("bad", "fail")]);
        latest.entries[1].console_tail = Some("<img src=x onerror=alert(1)>".into());
        latest.entries[1].splats = vec![("BUG: oops <x>".into(), None)];
        let runs = vec![run("1", "k", &[("good", "pass"), ("bad", "pass")]), latest];
        let kernels = by_kernel(runs);
        let plots = all_plots(&kernels).unwrap();
        let page = html(&kernels, &[], Path::new("/r"), &plots);
        let table = &page[page.find("id=\"verdicts-0\"").unwrap()..];
        assert!(table.find("data-scenario=\"bad\"") < table.find("data-scenario=\"good\""));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img src=x"));
        assert!(page.contains("BUG: oops &lt;x&gt;"));
        assert!(page.contains("<details class=\"failure\">"));
        assert!(page.contains("flaky"));
        assert_eq!(page.matches("<svg").count(), 2);
    }

    #[test]
    fn kernels_are_kept_apart_and_one_run_is_labelled() {
        let mut other = run("2", "k2", &[("a", "pass")]);
        other.kernel_release = "7.2.13".into();
        let runs = vec![
            run("1", "k1", &[("a", "pass")]),
            other,
            run("3", "k1", &[("a", "fail")]),
        ];
        let kernels = by_kernel(runs);
        let labels: Vec<String> = kernels.iter().map(Kernel::label).collect();
        assert_eq!(labels, ["6.12.0 (k1)", "7.2.13 (k2)"]);
        assert_eq!(kernels[0].runs.len(), 2);
        let plots = all_plots(&kernels).unwrap();
        assert_ne!(plots[0][0].0, plots[1][0].0, "one trend file per kernel");
        // The one-run kernel's plot names its point and value.
        assert!(
            plots[1][0].1.contains("wall time: 10.0 s"),
            "{}",
            plots[1][0].1
        );
        let page = html(&kernels, &[], Path::new("/r"), &plots);
        assert_eq!(page.matches("<section class=\"kernel\"").count(), 2);
        assert!(page.contains("One run (2): nothing to compare yet"));
    }

    #[test]
    fn console_excerpt_keeps_the_tail() {
        let dir = std::env::temp_dir().join(format!("report-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("console.log");
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let tail = console_excerpt(&p).unwrap();
        assert!(tail.starts_with(&format!("line {}", 200 - CONSOLE_LINES)));
        assert!(tail.ends_with("line 199"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

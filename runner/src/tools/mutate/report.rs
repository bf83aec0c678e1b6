//! `mutate.json`, `mutate.md` and `mutate.html`: the score, the mutants
//! per operator, each mutant's build and run time, and every survivor
//! with its diff.
//!
//! The score is detected / (detected + survived), where detected is
//! killed plus timed out: a mutant that hangs a scenario was noticed
//! (a kernel developer's CI would go red on it). Build failures and lab
//! errors are left out: they say nothing about the scenarios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{Class, Outcome};
use super::operators::Operator;
use crate::tools::report::{escape, STYLE};

/// Layout version of `mutate.json`.
pub const SCHEMA: u32 = 1;

/// The unmutated kernel's build and run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Build time (s).
    pub build_s: f64,
    /// Run time (s).
    pub run_s: f64,
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios skipped (the kernel lacks what they require).
    pub skipped: Vec<String>,
}

/// One mutant and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MutantRecord {
    /// Its id.
    pub id: String,
    /// Its operator.
    pub operator: Operator,
    /// Line in the file.
    pub line: usize,
    /// Function it is in.
    pub function: String,
    /// What changed.
    pub description: String,
    /// Its unified diff.
    pub diff: String,
    /// Its outcome; `None` until it has run.
    pub outcome: Option<Outcome>,
    /// The outcome came from the cache.
    pub cached: bool,
    /// Its `lab run` results (absent when cached or not built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<PathBuf>,
}

/// Mutants by class.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Generated (before `--max`).
    pub generated: usize,
    /// Chosen to run.
    pub selected: usize,
    /// Killed by a scenario.
    pub killed: usize,
    /// Timed out.
    pub timeout: usize,
    /// Survived.
    pub survived: usize,
    /// Did not compile.
    pub build_failure: usize,
    /// The lab could not tell.
    pub error: usize,
    /// Not run (yet).
    pub pending: usize,
}

impl Counts {
    fn add(&mut self, outcome: Option<&Outcome>) {
        match outcome.map(|o| o.class) {
            None => self.pending += 1,
            Some(Class::Killed) => self.killed += 1,
            Some(Class::Timeout) => self.timeout += 1,
            Some(Class::Survived) => self.survived += 1,
            Some(Class::BuildFailure) => self.build_failure += 1,
            Some(Class::Error) => self.error += 1,
        }
    }

    /// Detected / (detected + survived), detected = killed + timeout.
    pub fn score(&self) -> Option<f64> {
        let detected = self.killed + self.timeout;
        let judged = detected + self.survived;
        (judged > 0).then(|| detected as f64 / judged as f64)
    }
}

/// `mutate.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The kernel tree.
    pub tree: PathBuf,
    /// The mutated file, relative to the tree.
    pub file: String,
    /// `--base`.
    pub base: String,
    /// Scenario paths given.
    pub scenario_paths: Vec<PathBuf>,
    /// Scenario names in the set.
    pub scenarios: Vec<String>,
    /// Operators asked for.
    pub operators: Vec<Operator>,
    /// `--max`.
    pub max: Option<usize>,
    /// The time budget of one mutant's run (s).
    pub mutant_budget_s: Option<f64>,
    /// The unmutated kernel; `None` when every mutant came from the cache.
    pub baseline: Option<Baseline>,
    /// Every mutant has an outcome.
    pub complete: bool,
    /// Interrupted by a signal.
    pub interrupted: bool,
    /// Wall time (s).
    pub wall_s: f64,
    /// The score ([`Counts::score`]), from `counts`.
    pub score: Option<f64>,
    /// All mutants.
    pub counts: Counts,
    /// Per operator.
    pub per_operator: BTreeMap<Operator, Counts>,
    /// The selected mutants, in run order.
    pub mutants: Vec<MutantRecord>,
}

impl Report {
    /// Recounts `counts`, `per_operator` and `score` from the mutants
    /// (`generated`: how many each operator found).
    pub fn recount(&mut self, generated: &BTreeMap<Operator, usize>) {
        let mut total = Counts::default();
        let mut per: BTreeMap<Operator, Counts> = generated
            .iter()
            .map(|(op, n)| {
                (
                    *op,
                    Counts {
                        generated: *n,
                        ..Counts::default()
                    },
                )
            })
            .collect();
        total.generated = generated.values().sum();
        for m in &self.mutants {
            total.selected += 1;
            total.add(m.outcome.as_ref());
            let c = per.entry(m.operator).or_default();
            c.selected += 1;
            c.add(m.outcome.as_ref());
        }
        self.score = total.score();
        self.counts = total;
        self.per_operator = per;
        self.complete = self.counts.pending == 0;
    }

    fn of(&self, class: Class) -> impl Iterator<Item = &MutantRecord> {
        self.mutants
            .iter()
            .filter(move |m| m.outcome.as_ref().map(|o| o.class) == Some(class))
    }
}

/// `0.0`–`1.0` as a percentage with one decimal.
pub fn percent(score: Option<f64>) -> String {
    score.map_or_else(|| "n/a".into(), |s| format!("{:.1} %", s * 100.0))
}

fn seconds(s: f64) -> String {
    format!("{s:.0}")
}

/// The one-line score, for the terminal and the Markdown.
pub fn score_line(r: &Report) -> String {
    let c = &r.counts;
    format!(
        "mutation score {} ({} killed + {} timed out of {} judged; {} survived; {} build failures and {} errors not counted{})",
        percent(r.score),
        c.killed,
        c.timeout,
        c.killed + c.timeout + c.survived,
        c.survived,
        c.build_failure,
        c.error,
        if c.pending > 0 {
            format!("; {} not run", c.pending)
        } else {
            String::new()
        }
    )
}

fn by(m: &MutantRecord) -> String {
    let Some(o) = &m.outcome else {
        return String::new();
    };
    match (&o.scenario, &o.verdict) {
        (Some(s), Some(v)) => format!("{s} ({v}): {}", o.reason),
        _ => o.reason.lines().next().unwrap_or("").to_owned(),
    }
}

fn class_name(m: &MutantRecord) -> &'static str {
    m.outcome.as_ref().map_or("pending", |o| o.class.name())
}

/// Columns of the per-operator table.
const OPERATOR_HEAD: [&str; 9] = [
    "operator",
    "generated",
    "run",
    "killed",
    "timeout",
    "survived",
    "build failure",
    "error",
    "score",
];

fn operator_rows(r: &Report) -> Vec<Vec<String>> {
    r.per_operator
        .iter()
        .map(|(op, c)| {
            let mut row = vec![op.to_string()];
            row.extend(
                [
                    c.generated,
                    c.selected,
                    c.killed,
                    c.timeout,
                    c.survived,
                    c.build_failure,
                    c.error,
                ]
                .map(|n| n.to_string()),
            );
            row.push(percent(c.score()));
            row
        })
        .collect()
}

/// Characters of a reason in the mutants table (the sections below it,
/// and `mutate.json`, have it whole).
const REASON_CHARS: usize = 200;

fn clip(s: &str) -> String {
    match s.char_indices().nth(REASON_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Columns of the mutants table; the outcome is the fourth.
const MUTANT_HEAD: [&str; 7] = [
    "id", "function", "change", "outcome", "build s", "run s", "by / why",
];
const OUTCOME_COLUMN: usize = 3;

/// Each mutant's row, with its class (for the page's colours).
fn mutant_rows(r: &Report) -> Vec<(Vec<String>, &'static str)> {
    r.mutants
        .iter()
        .map(|m| {
            let (b, run) = m
                .outcome
                .as_ref()
                .map_or((String::new(), String::new()), |o| {
                    (seconds(o.build_s), seconds(o.run_s))
                });
            let class = class_name(m);
            let row = vec![
                m.id.clone(),
                m.function.clone(),
                m.description.clone(),
                format!("{class}{}", if m.cached { " (cached)" } else { "" }),
                b,
                run,
                clip(&by(m)),
            ];
            (row, class)
        })
        .collect()
}

fn markdown_table(head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut s = line(head.iter().map(|h| h.to_string()).collect());
    s.push_str(&line(head.iter().map(|_| "---".to_owned()).collect()));
    for row in rows {
        s.push_str(&line(
            row.iter()
                .map(|c| c.replace('|', "\\|").replace('\n', " "))
                .collect(),
        ));
    }
    s
}

/// `text` escaped, its `backquoted` spans as `<code>`.
fn inline_code(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_owned()
            }
        })
        .collect()
}

/// A table row of escaped `cells`; `class` colours the outcome cell.
fn html_row(tag: &str, cells: &[String], class: Option<&str>) -> String {
    let mut s = String::from("<tr>");
    for (i, c) in cells.iter().enumerate() {
        match class.filter(|_| i == OUTCOME_COLUMN) {
            Some(k) => s.push_str(&format!("<{tag} class=\"{k}\">{}</{tag}>", escape(c))),
            None => s.push_str(&format!("<{tag}>{}</{tag}>", inline_code(c))),
        }
    }
    s.push_str("</tr>");
    s
}

/// The Markdown report.
pub fn markdown(r: &Report) -> String {
    let mut s = format!("# lab mutate: `{}`\n\n", r.file);
    s.push_str(&format!(
        "Tree `{}`, `--base {}`, {} scenario(s) from {}; {} of {} mutants{}.{}\n\n",
        r.tree.display(),
        r.base,
        r.scenarios.len(),
        r.scenario_paths
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", "),
        r.counts.selected,
        r.counts.generated,
        r.max.map(|m| format!(" (`--max {m}`)")).unwrap_or_default(),
        if r.interrupted {
            " **Interrupted**: run it again to go on."
        } else if !r.complete {
            " In progress."
        } else {
            ""
        }
    ));
    s.push_str(&format!("**{}**\n\n", score_line(r)));
    if let Some(b) = &r.baseline {
        s.push_str(&format!(
            "Baseline (unmutated): build {} s, run {} s, {} passed{}. Budget per mutant run: {} s.\n\n",
            seconds(b.build_s),
            seconds(b.run_s),
            b.passed,
            if b.skipped.is_empty() {
                String::new()
            } else {
                format!(", skipped: {}", b.skipped.join(", "))
            },
            r.mutant_budget_s.map_or_else(|| "n/a".into(), seconds)
        ));
    }
    s.push_str("## Per operator\n\n");
    s.push_str(&markdown_table(&OPERATOR_HEAD, operator_rows(r)));
    s.push_str("\n## Mutants\n\n");
    s.push_str(&markdown_table(
        &MUTANT_HEAD,
        mutant_rows(r).into_iter().map(|(row, _)| row),
    ));
    let sections = [
        (Class::Survived, "Survivors", "every scenario passed"),
        (Class::Timeout, "Timeouts", ""),
        (Class::BuildFailure, "Build failures", ""),
        (Class::Error, "Errors (the lab's, not counted)", ""),
    ];
    for (class, title, note) in sections {
        let list: Vec<_> = r.of(class).collect();
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!("\n## {title} ({})\n", list.len()));
        for m in list {
            s.push_str(&format!(
                "\n### `{}` — {}\n\n`{}`, line {}{}\n\n```diff\n{}```\n",
                m.id,
                m.description,
                m.function,
                m.line,
                if class == Class::Survived {
                    format!(": {note}")
                } else {
                    format!(": {}", by(m))
                },
                m.diff
            ));
        }
    }
    s
}

/// The HTML page: the Markdown's content, with `lab report`'s style.
pub fn html(r: &Report) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>lab mutate: {}</title>\
         <style>{STYLE}.killed,.timeout{{background:#d9f2d9}}.survived{{background:#f8d0d0}}\
         .build_failure,.error,.pending{{background:#eee}}td:first-child{{white-space:nowrap}}.add{{color:#8f8}}.del{{color:#f88}}</style></head><body>",
        escape(&r.file)
    );
    s.push_str(&format!(
        "<h1>lab mutate: {}</h1><p>Tree <code>{}</code>, <code>--base {}</code>, {} scenario(s); {} of {} mutants{}.</p>",
        escape(&r.file),
        escape(&r.tree.display().to_string()),
        escape(&r.base),
        r.scenarios.len(),
        r.counts.selected,
        r.counts.generated,
        if r.interrupted {
            " (interrupted)"
        } else if !r.complete {
            " (in progress)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "<p><strong>{}</strong></p>",
        escape(&score_line(r))
    ));
    if let Some(b) = &r.baseline {
        s.push_str(&format!(
            "<p>Baseline: build {} s, run {} s, {} passed.</p>",
            seconds(b.build_s),
            seconds(b.run_s),
            b.passed
        ));
    }
    s.push_str("<h2>Per operator</h2><table>");
    s.push_str(&html_row("th", &OPERATOR_HEAD.map(String::from), None));
    for row in operator_rows(r) {
        s.push_str(&html_row("td", &row, None));
    }
    s.push_str("</table><h2>Mutants</h2><table>");
    s.push_str(&html_row("th", &MUTANT_HEAD.map(String::from), None));
    for (row, class) in mutant_rows(r) {
        s.push_str(&html_row("td", &row, Some(class)));
    }
    s.push_str("</table>");
    for (class, title) in [
        (Class::Survived, "Survivors"),
        (Class::Timeout, "Timeouts"),
        (Class::BuildFailure, "Build failures"),
    ] {
        let list: Vec<_> = r.of(class).collect();
        if list.is_empty() {
            continue;
        }
        s.push_str(&format!("<h2>{title} ({})</h2>", list.len()));
        for m in list {
            s.push_str(&format!(
                "<h3><code>{}</code>: {}</h3><p>{}</p><pre>{}</pre>",
                escape(&m.id),
                inline_code(&m.description),
                escape(&by(m)),
                diff_html(&m.diff)
            ));
        }
    }
    s.push_str("</body></html>\n");
    s
}

/// A diff, escaped, its added and removed lines marked.
fn diff_html(diff: &str) -> String {
    diff.lines()
        .map(|l| {
            let e = escape(l);
            if l.starts_with('+') && !l.starts_with("+++") {
                format!("<span class=\"add\">{e}</span>\n")
            } else if l.starts_with('-') && !l.starts_with("---") {
                format!("<span class=\"del\">{e}</span>\n")
            } else {
                format!("{e}\n")
            }
        })
        .collect()
}

/// Writes the three files into `dir` (each atomically).
pub fn write(dir: &Path, r: &Report) -> arena_images::Result<()> {
    arena_images::write_atomic(
        &dir.join("mutate.json"),
        serde_json::to_string_pretty(r)
            .expect("serialisable")
            .as_bytes(),
    )?;
    arena_images::write_atomic(&dir.join("mutate.md"), markdown(r).as_bytes())?;
    arena_images::write_atomic(&dir.join("mutate.html"), html(r).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, op: Operator, class: Option<Class>) -> MutantRecord {
        MutantRecord {
            id: id.into(),
            operator: op,
            line: 3,
            function: "f".into(),
            description: "`<` → `<=` in `a < b`".into(),
            diff: "--- a/k.c\n+++ b/k.c\n@@ -1,1 +1,1 @@\n-<a>\n+<b>\n".into(),
            outcome: class.map(|class| Outcome {
                class,
                scenario: (class == Class::Killed).then(|| "s1".into()),
                verdict: (class == Class::Killed).then(|| "fail".into()),
                reason: "step 1 <failed>".into(),
                build_s: 12.0,
                run_s: 30.0,
            }),
            cached: false,
            results: None,
        }
    }

    fn report(mutants: Vec<MutantRecord>) -> Report {
        let mut r = Report {
            schema: SCHEMA,
            tree: "/t".into(),
            file: "kernel/bpf/arena.c".into(),
            base: "tiny".into(),
            scenario_paths: vec!["scenarios/smoke".into()],
            scenarios: vec!["s1".into()],
            operators: vec![],
            max: Some(4),
            mutant_budget_s: Some(100.0),
            baseline: None,
            complete: false,
            interrupted: false,
            wall_s: 1.0,
            score: None,
            counts: Counts::default(),
            per_operator: BTreeMap::new(),
            mutants,
        };
        let generated = [(Operator::FlipCmp, 10), (Operator::DeleteCall, 5)]
            .into_iter()
            .collect();
        r.recount(&generated);
        r
    }

    #[test]
    fn the_score_counts_timeouts_as_detected_and_leaves_out_build_failures() {
        let r = report(vec![
            record("a", Operator::FlipCmp, Some(Class::Killed)),
            record("b", Operator::FlipCmp, Some(Class::Timeout)),
            record("c", Operator::DeleteCall, Some(Class::Survived)),
            record("d", Operator::DeleteCall, Some(Class::BuildFailure)),
            record("e", Operator::DeleteCall, Some(Class::Error)),
        ]);
        assert_eq!(r.score, Some(2.0 / 3.0));
        assert_eq!(r.counts.generated, 15);
        assert_eq!(r.per_operator[&Operator::DeleteCall].survived, 1);
        assert_eq!(r.per_operator[&Operator::FlipCmp].score(), Some(1.0));
        assert!(r.complete);
        assert!(score_line(&r).starts_with("mutation score 66.7 %"));
    }

    #[test]
    fn survivors_come_with_their_diff_escaped_in_the_page() {
        let r = report(vec![
            record("a", Operator::FlipCmp, Some(Class::Killed)),
            record("c", Operator::DeleteCall, Some(Class::Survived)),
            record("p", Operator::DeleteCall, None),
        ]);
        assert!(!r.complete);
        let md = markdown(&r);
        assert!(md.contains("## Survivors (1)\n\n### `c`"), "{md}");
        assert!(md.contains("```diff\n--- a/k.c"), "{md}");
        assert!(
            md.contains("| a | f | `<` → `<=` in `a < b` | killed |"),
            "{md}"
        );
        let page = html(&r);
        assert!(
            page.contains("<span class=\"del\">-&lt;a&gt;</span>"),
            "{page}"
        );
        assert!(!page.contains("<a>"));
        assert!(page.contains("s1 (fail): step 1 &lt;failed&gt;"));
        assert!(
            page.contains("<code>&lt;</code> → <code>&lt;=</code> in <code>a &lt; b</code>"),
            "{page}"
        );
    }
}

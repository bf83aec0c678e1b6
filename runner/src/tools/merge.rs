//! `lab merge SHARD-RUN... -o RUN`: one run from the shards of a night
//! (`lab run --shard i/N`), written as `lab run` writes one (summary.json
//! through [`Summary`], junit.xml, results.ktap, the scenario folders), with
//! `shards` saying which shard ran what. `lab compare` and `lab report`
//! read it as any run.
//!
//! The shards must be one night: the same kernel (sha256), the same
//! catalogue revision (`catalogue`: the selected scenario files' names and
//! contents, recorded by every run), the same run seed and shard count,
//! each shard once and no scenario in two shards. What the night planned is
//! every shard's `shard_plan` (all scenarios selected before the split); a
//! planned scenario no given shard ran is refused, or with
//! `--allow-missing` recorded as `not_run` ("shard missing").

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::judge::verdict::Judgement;
use crate::plan::shard::Shard;
use crate::record::results::{Abort, ReadError, ScenarioSummary, Summary};
use crate::record::run_dir::RunDir;
use crate::record::shards::{PlannedScenario, ShardPart};
use crate::{exit, LabError};

/// Reason of a planned scenario that no merged shard ran.
pub const SHARD_MISSING: &str = "shard missing";

/// `lab merge`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' run folders (`<results>/<run-id>` of each `lab run
    /// --shard i/N`).
    #[arg(required = true, value_name = "SHARD-RUN")]
    pub shards: Vec<PathBuf>,
    /// The merged run folder to write (new, or empty).
    #[arg(short, long, value_name = "RUN")]
    pub output: PathBuf,
    /// Record planned scenarios that no given shard ran as `not_run`
    /// ("shard missing") instead of refusing.
    #[arg(long)]
    pub allow_missing: bool,
}

/// Why shards cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The shards do not make one night (or a file is not a shard's).
    #[error("{0}")]
    Refused(String),
    /// Writing the merged run failed.
    #[error("{0}")]
    Io(String),
}

/// `lab merge`: exit 0 when the merged run is written, 2 when refused, 3
/// when it could not be written.
pub fn merge_cmd(args: &MergeArgs) -> Result<u8, LabError> {
    let s = merge(&args.shards, &args.output, args.allow_missing).map_err(|e| match e {
        MergeError::Refused(why) => LabError::BadArgs(format!("lab merge: {why}")),
        MergeError::Io(why) => crate::infra(format!("lab merge: {why}")),
    })?;
    println!(
        "{}: {} shard(s), {} scenario(s): {} passed, {} failed, {} known, {} errors, {} timeouts, {} skipped, {} not run",
        args.output.display(),
        s.shards.as_ref().map_or(0, Vec::len),
        s.planned,
        s.passed,
        s.failed,
        s.known_failures,
        s.errors,
        s.timeouts,
        s.skipped,
        s.not_run
    );
    Ok(exit::PASS)
}

/// The first field of `value` (a summary.json) that the results model
/// cannot read, as `scenarios[3].verdict`: each top-level field, and each
/// scenario's, is tried alone (every field has a default).
fn bad_field(value: &Value) -> Option<String> {
    let obj = value.as_object()?;
    for (k, v) in obj {
        let one = Value::Object([(k.clone(), v.clone())].into_iter().collect());
        if serde_json::from_value::<Summary>(one).is_ok() {
            continue;
        }
        if k == "scenarios" {
            if let Some(list) = v.as_array() {
                for (i, s) in list.iter().enumerate() {
                    let Some(fields) = s.as_object() else {
                        return Some(format!("scenarios[{i}]"));
                    };
                    for (f, fv) in fields {
                        let one = Value::Object([(f.clone(), fv.clone())].into_iter().collect());
                        if serde_json::from_value::<ScenarioSummary>(one).is_err() {
                            return Some(format!("scenarios[{i}].{f}"));
                        }
                    }
                }
            }
        }
        return Some(k.clone());
    }
    None
}

/// A shard's summary, or why it cannot be merged (the file, and the field
/// when one is wrong).
fn read_shard(dir: &Path) -> Result<(Summary, Shard), MergeError> {
    let path = dir.join("summary.json");
    let summary = Summary::read(&path).map_err(|e| match &e {
        ReadError::Parse { why, .. } => {
            let field = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| bad_field(&v));
            match field {
                Some(f) => MergeError::Refused(format!(
                    "{}: corrupted: field `{f}`: {why}",
                    path.display()
                )),
                None => MergeError::Refused(format!("{}: corrupted: {why}", path.display())),
            }
        }
        _ => MergeError::Refused(e.to_string()),
    })?;
    let field =
        |f: &str, why: &str| MergeError::Refused(format!("{}: field `{f}`: {why}", path.display()));
    let shard: Shard = match &summary.shard {
        None => {
            return Err(field(
                "shard",
                "absent: not a shard run (`lab run --shard i/N`)",
            ))
        }
        Some(s) => s
            .parse()
            .map_err(|_| field("shard", &format!("{s:?} is not i/N")))?,
    };
    match &summary.kernel {
        None => {
            return Err(field(
                "kernel",
                "absent: the shard stopped before resolving its kernel",
            ))
        }
        Some(k) if k.sha256.is_empty() => return Err(field("kernel.sha256", "empty")),
        Some(_) => {}
    }
    if summary.catalogue.as_deref().is_none_or(str::is_empty) {
        return Err(field(
            "catalogue",
            "absent: written by a lab that did not record it; run the shard again",
        ));
    }
    if summary.shard_plan.is_empty() {
        return Err(field(
            "shard_plan",
            "absent: written by a lab that did not record it; run the shard again",
        ));
    }
    Ok((summary, shard))
}

/// Hard-link (or copy, across file systems) the tree `from` to `to`.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            link_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
    }
}

/// Merge the shard run folders `dirs` into the new run folder `out`.
pub fn merge(dirs: &[PathBuf], out: &Path, allow_missing: bool) -> Result<Summary, MergeError> {
    let refuse = |s: String| Err(MergeError::Refused(s));
    // The same folder twice (by any path): a shard merged with itself.
    let mut seen: HashMap<PathBuf, &PathBuf> = HashMap::new();
    for d in dirs {
        let c = d
            .canonicalize()
            .map_err(|e| MergeError::Refused(format!("{}: {e}", d.display())))?;
        if let Some(first) = seen.insert(c, d) {
            return refuse(format!(
                "{} and {} are the same run: merging a shard with itself",
                first.display(),
                d.display()
            ));
        }
    }
    let mut shards = Vec::new();
    for d in dirs {
        let (s, shard) = read_shard(d)?;
        shards.push((d, s, shard));
    }
    let (d0, s0, sh0) = &shards[0];
    let kernel0 = s0.kernel.as_ref().expect("checked");
    let mut by_index: BTreeMap<usize, (&PathBuf, &str)> = BTreeMap::new();
    for (d, s, sh) in &shards {
        if sh.count != sh0.count {
            return refuse(format!(
                "different shard counts: {} is shard {sh0}, {} is shard {sh}",
                d0.display(),
                d.display()
            ));
        }
        if let Some((other, run_id)) = by_index.insert(sh.index, (d, &s.run_id)) {
            return refuse(format!(
                "shard {sh} given twice: {} and {}{}",
                other.display(),
                d.display(),
                if run_id == s.run_id {
                    " (the same run: merging a shard with itself)"
                } else {
                    ""
                }
            ));
        }
        let k = s.kernel.as_ref().expect("checked");
        if k.sha256 != kernel0.sha256 {
            return refuse(format!(
                "different kernels: {} ran {} (sha256 {}), {} ran {} (sha256 {})",
                d0.display(),
                kernel0.release,
                kernel0.sha256,
                d.display(),
                k.release,
                k.sha256
            ));
        }
        if s.catalogue != s0.catalogue {
            let names = |s: &Summary| -> BTreeSet<String> {
                s.shard_plan.iter().map(|p| p.name.clone()).collect()
            };
            let (a, b) = (names(s0), names(s));
            let only: Vec<String> = a.symmetric_difference(&b).map(String::clone).collect();
            return refuse(format!(
                "different catalogue revisions: {} has {}, {} has {}{}",
                d0.display(),
                s0.catalogue.as_deref().unwrap_or(""),
                d.display(),
                s.catalogue.as_deref().unwrap_or(""),
                if only.is_empty() {
                    " (the same scenario names, different file contents)".to_owned()
                } else {
                    format!(" (scenarios in one plan only: {})", only.join(", "))
                }
            ));
        }
        if s.seed != s0.seed {
            return refuse(format!(
                "different run seeds: {} ran with --seed {}, {} with --seed {}",
                d0.display(),
                s0.seed,
                d.display(),
                s.seed
            ));
        }
    }
    // No scenario in two shards.
    let mut ran_by: BTreeMap<&str, &PathBuf> = BTreeMap::new();
    for (d, s, _) in &shards {
        let names: BTreeSet<&str> = s.scenarios.iter().map(|e| e.name.as_str()).collect();
        for n in names {
            if let Some(other) = ran_by.insert(n, d) {
                return refuse(format!(
                    "overlapping shards: scenario {n} is in {} and in {}",
                    other.display(),
                    d.display()
                ));
            }
        }
    }
    let plan: &[PlannedScenario] = &s0.shard_plan;
    let missing: Vec<&PlannedScenario> = plan
        .iter()
        .filter(|p| !ran_by.contains_key(p.name.as_str()))
        .collect();
    if !missing.is_empty() && !allow_missing {
        let absent: Vec<String> = (1..=sh0.count)
            .filter(|i| !by_index.contains_key(i))
            .map(|i| format!("{i}/{}", sh0.count))
            .collect();
        return refuse(format!(
            "{} planned scenario(s) no given shard ran: {}{}; --allow-missing records them as not_run ({SHARD_MISSING})",
            missing.len(),
            missing.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
            if absent.is_empty() {
                String::new()
            } else {
                format!(" (shard(s) {} not given)", absent.join(", "))
            }
        ));
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut r| r.next().is_some())
            .unwrap_or(true)
    {
        return refuse(format!("{}: exists and is not empty", out.display()));
    }

    // The entries in plan order (each shard keeps its own order within a
    // scenario: attempts stay in sequence), then the missing ones' places.
    let order: HashMap<&str, usize> = plan
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut entries: Vec<(usize, usize, ScenarioSummary)> = Vec::new();
    let mut parts = Vec::new();
    for (d, s, sh) in &shards {
        let mut names: Vec<String> = Vec::new();
        for e in &s.scenarios {
            if !names.contains(&e.name) {
                names.push(e.name.clone());
            }
            let at = order.get(e.name.as_str()).copied().unwrap_or(usize::MAX);
            entries.push((at, entries.len(), e.clone()));
        }
        parts.push(ShardPart {
            shard: sh.to_string(),
            run_id: s.run_id.clone(),
            from: d.to_path_buf(),
            started: s.started.clone(),
            wall_s: s.wall_s,
            complete: s.complete,
            scenarios: names,
        });
    }
    for p in &missing {
        let mut e = ScenarioSummary::pending(&p.name, &p.file, &p.tags, s0.seed);
        e.judgement = Judgement::not_run(SHARD_MISSING);
        let at = order[p.name.as_str()];
        entries.push((at, entries.len(), e));
    }
    entries.sort_by_key(|(at, k, _)| (*at, *k));
    parts.sort_by_key(|p| {
        p.shard
            .split('/')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
    });

    let io = |what: &str, p: &Path, e: std::io::Error| {
        MergeError::Io(format!("{what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(out).map_err(|e| io("creating", out, e))?;
    // Each scenario's folder, from the shard that ran it.
    for (d, s, _) in &shards {
        let tops: BTreeSet<&str> = s
            .scenarios
            .iter()
            .filter_map(|e| Path::new(&e.dir).iter().next().and_then(|c| c.to_str()))
            .collect();
        for top in tops {
            let from = d.join(top);
            if from.exists() {
                link_tree(&from, &out.join(top)).map_err(|e| io("copying", &from, e))?;
            }
        }
    }

    let id = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".to_owned());
    let mut merged = s0.clone();
    merged.run_id = id.clone();
    merged.started = shards
        .iter()
        .map(|(_, s, _)| s.started.clone())
        .min()
        .unwrap_or_default();
    // The shards ran side by side: the night took as long as the longest.
    merged.wall_s = shards.iter().map(|(_, s, _)| s.wall_s).fold(0.0, f64::max);
    merged.interrupted = shards.iter().any(|(_, s, _)| s.interrupted);
    merged.aborted = shards.iter().find_map(|(_, s, sh)| {
        s.aborted.as_ref().map(|a| Abort {
            reason: format!("shard {sh}: {}", a.reason),
            scenario: a.scenario.clone(),
        })
    });
    merged.shard = None;
    merged.shard_plan = Vec::new();
    merged.shards = Some(parts);
    merged.scenarios = entries.into_iter().map(|(_, _, e)| e).collect();
    merged.recount();
    merged.complete = merged.aborted.is_none()
        && missing.is_empty()
        && merged.not_run == 0
        && shards.iter().all(|(_, s, _)| s.complete);
    let dir = RunDir {
        path: out.to_path_buf(),
        id,
    };
    dir.write(&merged)
        .map_err(|e| MergeError::Io(format!("writing {}: {e}", out.display())))?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_field_names_the_field() {
        let v = serde_json::json!({"schema": 1, "seed": "seven", "scenarios": []});
        assert_eq!(bad_field(&v).as_deref(), Some("seed"));
        let v =
            serde_json::json!({"scenarios": [{"name": "a"}, {"name": "b", "verdict": "green"}]});
        assert_eq!(bad_field(&v).as_deref(), Some("scenarios[1].verdict"));
        let v = serde_json::json!({"scenarios": [{"name": "a", "duration_s": 1.0}]});
        assert_eq!(bad_field(&v), None);
    }
}

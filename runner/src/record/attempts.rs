//! Attempts in the results: each attempt's summary entry, and where a new
//! one goes.

use crate::plan::attempts::Attempt;
use crate::plan::scenario_file::ScenarioFile;
use crate::record::results::ScenarioSummary;

/// The summary entry of an attempt not judged yet.
pub fn pending(file: &ScenarioFile, a: &Attempt) -> ScenarioSummary {
    let s = &file.scenario;
    let mut e = ScenarioSummary::pending(&s.name, &file.path, &s.tags, a.seed);
    e.attempt = a.number;
    e.run_seed = a.run_seed;
    e.dir = a.dir.clone();
    e.vm = s.vm;
    e
}

/// The index of `entry`'s attempt in `entries`, inserting it after the
/// scenario's other attempts if it is new (`--until-fail` adds attempts as
/// it goes, so indices move: look them up, never keep them).
pub fn slot(entries: &mut Vec<ScenarioSummary>, entry: &ScenarioSummary) -> usize {
    let same = |e: &ScenarioSummary| e.name == entry.name;
    if let Some(i) = entries
        .iter()
        .position(|e| same(e) && e.attempt == entry.attempt)
    {
        return i;
    }
    let at = entries
        .iter()
        .rposition(same)
        .map_or(entries.len(), |i| i + 1);
    entries.insert(at, entry.clone());
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::attempts::test_files as files;
    use crate::plan::attempts::{plan_attempts, RepeatArgs};
    use std::time::Instant;

    #[test]
    fn new_attempts_go_after_their_scenario() {
        let f = files(&["a", "b"]);
        let args = RepeatArgs {
            until_fail: true,
            ..Default::default()
        };
        let plan = plan_attempts(&f, &args, 3);
        let mut entries: Vec<_> = plan.iter().map(|a| pending(&f[a.scenario], a)).collect();
        let second = args.next(3, "a", &plan[0], true, Instant::now()).unwrap();
        let e = pending(&f[0], &second);
        assert_eq!(slot(&mut entries, &e), 1);
        assert_eq!(slot(&mut entries, &e), 1);
        let order: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.attempt))
            .collect();
        assert_eq!(order, [("a", 1), ("a", 2), ("b", 1)]);
        assert_eq!(entries[1].dir, "a/attempt-2");
        assert_eq!(entries[1].seed, second.seed);
    }
}

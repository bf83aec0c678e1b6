//! Attempts: `--repeat N`, `--until-fail [--max-time D]`, `--same-seed`.
//! Each selected scenario runs one or more times; every attempt has its own
//! seed, results folder and summary entry, and a failing one prints the
//! command line that replays it.

use std::time::{Duration, Instant};

use crate::plan::scenario_file::ScenarioFile;
use arena_protocol::seed;

/// The scenario file each attempt's folder keeps: `lab repro` runs it.
pub const SCENARIO_COPY: &str = "scenario.yaml";

/// Repetition options of `lab run`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RepeatArgs {
    /// Run each selected scenario N times (with --until-fail: at most N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: Option<u64>,
    /// Run each selected scenario again and again until its first failure.
    #[arg(long)]
    pub until_fail: bool,
    /// With --until-fail: start no attempt after this long (`90s`, `10m`, `1h`).
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "until_fail")]
    pub max_time: Option<Duration>,
    /// Give every attempt the run's seed instead of a fresh one per attempt.
    #[arg(long)]
    pub same_seed: bool,
}

/// `90`, `90s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as 60s, 10m or 1h"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}`: expected a duration such as 60s, 10m or 1h"))
}

/// One run of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Index of the scenario in the selected files.
    pub scenario: usize,
    /// 1-based attempt number.
    pub number: u64,
    /// Run seed of this attempt: `lab run --seed <it>` replays it as attempt 1.
    pub run_seed: u64,
    /// The seed the agent gets.
    pub seed: u64,
    /// Results folder, relative to the run folder.
    pub dir: String,
}

impl RepeatArgs {
    /// More than one attempt per scenario may run: attempts get their own
    /// folders (`<name>/attempt-<k>`).
    pub fn repeated(&self) -> bool {
        self.repeat.is_some_and(|n| n > 1) || self.until_fail
    }

    /// Attempt `number` of scenario `scenario` (named `name`).
    pub fn attempt(&self, run_seed: u64, scenario: usize, name: &str, number: u64) -> Attempt {
        let run_seed = if self.same_seed {
            run_seed
        } else {
            seed::attempt_seed(run_seed, number)
        };
        Attempt {
            scenario,
            number,
            run_seed,
            seed: seed::scenario_seed(run_seed, name),
            dir: if self.repeated() {
                format!("{name}/attempt-{number}")
            } else {
                name.to_owned()
            },
        }
    }

    /// After `done` finished, the attempt that follows it, if any: with
    /// `--until-fail` one at a time (none after a failure, none once the
    /// time budget from `started` is spent, at most `--repeat`).
    /// `--repeat` alone plans every attempt up front ([`plan_attempts`]).
    pub fn next(
        &self,
        run_seed: u64,
        name: &str,
        done: &Attempt,
        passed: bool,
        started: Instant,
    ) -> Option<Attempt> {
        let more = self.until_fail
            && passed
            && self.repeat.is_none_or(|n| done.number < n)
            && self.max_time.is_none_or(|d| started.elapsed() < d);
        more.then(|| self.attempt(run_seed, done.scenario, name, done.number + 1))
    }
}

/// The attempts known before the run starts, in plan order (each scenario's
/// attempts together): every `--repeat` attempt, or the first of each
/// scenario with `--until-fail` (the rest come from [`RepeatArgs::next`]).
pub fn plan_attempts(files: &[ScenarioFile], args: &RepeatArgs, run_seed: u64) -> Vec<Attempt> {
    let per = if args.until_fail {
        1
    } else {
        args.repeat.unwrap_or(1)
    };
    files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| (1..=per).map(move |k| args.attempt(run_seed, i, &f.scenario.name, k)))
        .collect()
}

/// Quote `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Scenario files named `names`, each a one-step scenario (tests only).
#[cfg(test)]
pub fn test_files(names: &[&str]) -> Vec<ScenarioFile> {
    names
        .iter()
        .map(|n| {
            let mut scenario = crate::plan::trivial_scenario();
            scenario.name = (*n).into();
            ScenarioFile {
                path: format!("{n}.yaml").into(),
                scenario,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_files as files;
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_single_run_keeps_the_old_layout_and_seeds_by_name() {
        let plan = plan_attempts(&files(&["a", "b"]), &RepeatArgs::default(), 7);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].dir, "a");
        assert_eq!(plan[0].run_seed, 7);
        assert_eq!(plan[0].seed, seed::scenario_seed(7, "a"));
        assert_ne!(plan[0].seed, plan[1].seed);
        // Selection does not change a scenario's seed.
        let only_b = plan_attempts(&files(&["b"]), &RepeatArgs::default(), 7);
        assert_eq!(only_b[0].seed, plan[1].seed);
    }

    #[test]
    fn repeats_get_fresh_reproducible_seeds() {
        let args = RepeatArgs {
            repeat: Some(3),
            ..Default::default()
        };
        let plan = plan_attempts(&files(&["a", "b"]), &args, 7);
        let a: Vec<_> = plan.iter().filter(|p| p.scenario == 0).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].dir, "a/attempt-3");
        assert_ne!(a[0].seed, a[1].seed);
        assert_ne!(a[1].seed, a[2].seed);
        assert_eq!(plan, plan_attempts(&files(&["a", "b"]), &args, 7));
        // Attempt 2 replayed as a run of its own (`--seed <its run seed>`).
        let replay = plan_attempts(&files(&["a"]), &RepeatArgs::default(), a[1].run_seed);
        assert_eq!(replay[0].seed, a[1].seed);
        // --same-seed: every attempt the same.
        let same = RepeatArgs {
            same_seed: true,
            ..args
        };
        let plan = plan_attempts(&files(&["a"]), &same, 7);
        assert!(plan
            .iter()
            .all(|p| p.seed == plan[0].seed && p.run_seed == 7));
    }

    #[test]
    fn until_fail_stops_at_failure_budget_or_cap() {
        let args = RepeatArgs {
            until_fail: true,
            repeat: Some(3),
            ..Default::default()
        };
        let plan = plan_attempts(&files(&["a"]), &args, 1);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].dir, "a/attempt-1");
        let t = Instant::now();
        let second = args.next(1, "a", &plan[0], true, t).unwrap();
        assert_eq!(second.number, 2);
        assert!(args.next(1, "a", &plan[0], false, t).is_none());
        let third = args.next(1, "a", &second, true, t).unwrap();
        assert!(args.next(1, "a", &third, true, t).is_none());
        let timed = RepeatArgs {
            until_fail: true,
            max_time: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(timed.next(1, "a", &plan[0], true, t).is_none());
        // --repeat alone plans everything up front.
        let rep = RepeatArgs {
            repeat: Some(2),
            ..Default::default()
        };
        assert!(rep.next(1, "a", &plan[0], true, t).is_none());
    }
}

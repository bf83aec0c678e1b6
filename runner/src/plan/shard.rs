//! `--shard i/N`: split the selected scenarios over N machines (or CI jobs)
//! so that the N shards together run every scenario exactly once, and the
//! same inputs always give the same split.
//!
//! Without history the scenarios, sorted by name, are dealt round-robin.
//! With `--history DIR` (a results root of earlier runs) each scenario's
//! last recorded wall time is used to balance the shards: longest first,
//! each to the shard with the least total so far (ties: lowest shard,
//! then name), scenarios without a recorded time counting as the mean of
//! those with one. Every shard computes the same split on its own, so all
//! shards must be given the same history.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

/// A shard, `index` of `count`, 1-based as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1..=count.
    pub index: usize,
    /// Number of shards, ≥ 1.
    pub count: usize,
}

/// A `--shard` value that is not `i/N` with 1 ≤ i ≤ N.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--shard {0:?}: expected i/N with 1 <= i <= N (e.g. 1/4)")]
pub struct ShardError(String);

/// `--history` cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("--history {}: {source}", dir.display())]
pub struct HistoryError {
    /// The results root given.
    pub dir: std::path::PathBuf,
    /// Why it cannot be read.
    pub source: std::io::Error,
}

/// `--shard` and `--history`, shared by `lab run` and `lab list` so that
/// `lab list --shard i/N` shows exactly what `lab run --shard i/N` runs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ShardArgs {
    /// Run only shard i of N (1-based) of the selected scenarios: a
    /// deterministic split, see docs/results-schema.md.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<Shard>,
    /// A results root of earlier runs: balance shards by each scenario's
    /// last wall time. Every shard must be given the same history.
    #[arg(long, value_name = "DIR")]
    pub history: Option<std::path::PathBuf>,
}

impl ShardArgs {
    /// Keep the scenarios of this shard (all without `--shard`), in order.
    pub fn apply<T>(
        &self,
        items: Vec<T>,
        name: impl Fn(&T) -> &str,
        history: impl FnOnce(&Path) -> std::io::Result<HashMap<String, f64>>,
    ) -> Result<Vec<T>, HistoryError> {
        let Some(shard) = self.shard else {
            return Ok(items);
        };
        let durations = match &self.history {
            // No such folder yet (the first nightly): no history.
            Some(dir) if !dir.exists() => HashMap::new(),
            Some(dir) => history(dir).map_err(|source| HistoryError {
                dir: dir.clone(),
                source,
            })?,
            None => HashMap::new(),
        };
        let names: Vec<&str> = items.iter().map(&name).collect();
        let keep = select(&names, shard, &durations);
        Ok(items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.binary_search(i).is_ok())
            .map(|(_, t)| t)
            .collect())
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError(s.to_owned());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard (0-based) of every name, in the order given. Duplicate names
/// are kept apart by their position, so each still lands in one shard.
pub fn assign(names: &[&str], count: usize, durations: &HashMap<String, f64>) -> Vec<usize> {
    let count = count.max(1);
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(names[b]).then(a.cmp(&b)));
    let mut shard_of = vec![0; names.len()];
    let known: Vec<f64> = names
        .iter()
        .filter_map(|n| durations.get(*n).copied())
        .filter(|d| d.is_finite() && *d >= 0.0)
        .collect();
    if known.is_empty() {
        for (k, &i) in order.iter().enumerate() {
            shard_of[i] = k % count;
        }
        return shard_of;
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    let weight = |i: usize| {
        durations
            .get(names[i])
            .copied()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .unwrap_or(mean)
    };
    // Stable sort on the name order: equal weights stay in name order.
    order.sort_by(|&a, &b| weight(b).total_cmp(&weight(a)));
    let mut load = vec![0.0f64; count];
    for i in order {
        let (best, _) = load
            .iter()
            .enumerate()
            .min_by(|(ia, a), (ib, b)| a.total_cmp(b).then(ia.cmp(ib)))
            .expect("count >= 1");
        shard_of[i] = best;
        load[best] += weight(i);
    }
    shard_of
}

/// Positions (in the order given) of the names that belong to `shard`.
pub fn select(names: &[&str], shard: Shard, durations: &HashMap<String, f64>) -> Vec<usize> {
    assign(names, shard.count, durations)
        .into_iter()
        .enumerate()
        .filter(|&(_, s)| s == shard.index - 1)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("scenario-{:02}", (i * 7) % n))
            .collect()
    }

    fn covers_once(names: &[&str], count: usize, d: &HashMap<String, f64>) {
        let mut seen = vec![0; names.len()];
        for index in 1..=count {
            for i in select(names, Shard { index, count }, d) {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/2", "3/2", "1/0", "1", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_cover_every_scenario_exactly_once() {
        let owned = names(13);
        let names: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut d = HashMap::new();
        for count in 1..=5 {
            covers_once(&names, count, &d);
        }
        // With history, including scenarios without a recorded time.
        for (i, n) in names.iter().enumerate().take(9) {
            d.insert(n.to_string(), (i * 13 % 7) as f64 + 0.5);
        }
        for count in 1..=5 {
            covers_once(&names, count, &d);
        }
    }

    #[test]
    fn round_robin_over_sorted_names_is_independent_of_input_order() {
        let a = ["c", "a", "b", "d"];
        let b = ["d", "b", "a", "c"];
        let d = HashMap::new();
        let pick = |names: &[&str]| {
            let mut v: Vec<String> = select(names, Shard { index: 1, count: 2 }, &d)
                .into_iter()
                .map(|i| names[i].to_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(pick(&a), vec!["a", "c"]);
        assert_eq!(pick(&a), pick(&b));
    }

    #[test]
    fn history_balances_wall_time() {
        let names = ["long", "a", "b", "c", "d"];
        let d: HashMap<String, f64> = [("long", 40.0), ("a", 10.0), ("b", 10.0), ("c", 10.0)]
            .into_iter()
            .map(|(n, t)| (n.to_owned(), t))
            .collect();
        // "d" has no history: it weighs the mean (17.5).
        let s1 = select(&names, Shard { index: 1, count: 2 }, &d);
        let s2 = select(&names, Shard { index: 2, count: 2 }, &d);
        assert_eq!(s1, vec![0]);
        assert_eq!(s2, vec![1, 2, 3, 4]);
    }
}

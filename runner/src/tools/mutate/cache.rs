//! Each mutant's outcome, cached: a re-run (or a run cut short and
//! started again) skips every mutant whose outcome is known.
//!
//! The key is the sha256 of what decides the outcome: the file's path in
//! the tree and its original sha256, the mutant's diff, the scenario set
//! (every file's name and bytes), the base config and the lab's version.
//! Infrastructure errors are never cached: the next run tries again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a mutant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A scenario failed (or the kernel died) on the mutant.
    Killed,
    /// Every scenario passed on the mutant.
    Survived,
    /// A scenario timed out, or the run exceeded the mutant's budget.
    Timeout,
    /// The mutant did not compile: not counted in the score.
    BuildFailure,
    /// The lab could not tell: not counted, not cached.
    Error,
}

impl Class {
    /// The spelling in reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::Killed => "killed",
            Class::Survived => "survived",
            Class::Timeout => "timeout",
            Class::BuildFailure => "build_failure",
            Class::Error => "error",
        }
    }
}

/// One mutant's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub class: Class,
    /// The scenario that killed it or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// That scenario's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Why: the scenario's reason, the compiler's error lines, or the
    /// lab's trouble.
    pub reason: String,
    /// Build time (s).
    pub build_s: f64,
    /// Run time (s); 0 when it did not build.
    pub run_s: f64,
}

/// What the key is made of.
pub struct KeyParts<'a> {
    /// The file's path in the tree (`kernel/bpf/arena.c`).
    pub file: &'a str,
    /// The unmutated file.
    pub original: &'a [u8],
    /// The mutant's unified diff.
    pub diff: &'a str,
    /// Each scenario file's name and bytes.
    pub scenarios: &'a [(String, Vec<u8>)],
    /// `--base`.
    pub base: &'a str,
}

/// The cache key of a mutant's outcome.
pub fn key(p: &KeyParts) -> String {
    let mut scenarios: Vec<&(String, Vec<u8>)> = p.scenarios.iter().collect();
    scenarios.sort();
    let mut text = format!(
        "lab {}\nbase {}\nfile {}\noriginal {}\n",
        env!("CARGO_PKG_VERSION"),
        p.base,
        p.file,
        arena_images::sha256_hex(p.original)
    );
    for (name, bytes) in scenarios {
        text.push_str(&format!(
            "scenario {name} {}\n",
            arena_images::sha256_hex(bytes)
        ));
    }
    text.push_str("diff\n");
    text.push_str(p.diff);
    arena_images::sha256_hex(text.as_bytes())
}

/// Outcomes on disk, a JSON file per key.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir`.
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The outcome cached under `key`.
    pub fn get(&self, key: &str) -> Option<Outcome> {
        let text = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Caches `outcome` (atomically), unless it is an error.
    pub fn put(&self, key: &str, outcome: &Outcome) -> arena_images::Result<()> {
        if outcome.class == Class::Error {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(outcome).expect("serialisable");
        arena_images::write_atomic(&self.path(key), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(scenarios: &'a [(String, Vec<u8>)], diff: &'a str) -> KeyParts<'a> {
        KeyParts {
            file: "kernel/bpf/arena.c",
            original: b"int x;\n",
            diff,
            scenarios,
            base: "tiny",
        }
    }

    #[test]
    fn the_key_changes_with_the_scenario_set_and_the_diff_only() {
        let one = vec![("a.yaml".to_owned(), b"name: a\n".to_vec())];
        let two = vec![
            ("a.yaml".to_owned(), b"name: a\n".to_vec()),
            ("b.yaml".to_owned(), b"name: b\n".to_vec()),
        ];
        let edited = vec![("a.yaml".to_owned(), b"name: a\ntimeout_s: 9\n".to_vec())];
        let k = key(&parts(&one, "-x\n+y\n"));
        assert_eq!(k, key(&parts(&one, "-x\n+y\n")));
        assert_ne!(k, key(&parts(&two, "-x\n+y\n")), "a scenario added");
        assert_ne!(k, key(&parts(&edited, "-x\n+y\n")), "a scenario edited");
        assert_ne!(k, key(&parts(&one, "-x\n+z\n")), "another mutant");
        let mut other_base = parts(&one, "-x\n+y\n");
        other_base.base = "defconfig";
        assert_ne!(k, key(&other_base));
        // The order scenarios were given in does not matter.
        let swapped: Vec<_> = two.iter().rev().cloned().collect();
        assert_eq!(key(&parts(&two, "d")), key(&parts(&swapped, "d")));
    }

    #[test]
    fn outcomes_round_trip_and_errors_are_not_kept() {
        let dir = std::env::temp_dir().join(format!("arena-mutate-cache-{}", std::process::id()));
        let c = Cache::new(&dir);
        let killed = Outcome {
            class: Class::Killed,
            scenario: Some("s".into()),
            verdict: Some("fail".into()),
            reason: "step 2: expected 1, got 0".into(),
            build_s: 12.0,
            run_s: 30.5,
        };
        c.put("k1", &killed).unwrap();
        assert_eq!(c.get("k1"), Some(killed));
        let error = Outcome {
            class: Class::Error,
            scenario: None,
            verdict: None,
            reason: "no hello".into(),
            build_s: 1.0,
            run_s: 2.0,
        };
        c.put("k2", &error).unwrap();
        assert_eq!(c.get("k2"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

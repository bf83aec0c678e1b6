//! What a sharded night needs to be put back together (`lab merge`): the
//! catalogue's identity, each shard's view of the whole plan, and, in a
//! merged run, which shard ran what.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One scenario selected before `--shard` split the selection: every
/// shard records all of them (`shard_plan` in summary.json), so a merge
/// knows what the night planned, including what a lost shard would have run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedScenario {
    /// Scenario name.
    pub name: String,
    /// Its file, as given to `lab run`.
    pub file: PathBuf,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One shard of a merged run (`shards` in summary.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPart {
    /// `i/N`.
    pub shard: String,
    /// The shard run's id.
    pub run_id: String,
    /// Its folder as given to `lab merge`.
    pub from: PathBuf,
    /// When it started (RFC 3339).
    pub started: String,
    /// Its wall time (s).
    pub wall_s: f64,
    /// Whether it finished normally.
    pub complete: bool,
    /// The scenarios it ran (names, each once, in its order).
    pub scenarios: Vec<String>,
}

/// The catalogue's identity: sha256 over each selected scenario's name and
/// the sha256 of its file, sorted by name, taken before `--shard` splits
/// the selection. The same files give the same digest on every machine
/// (paths do not count); an edited, added or removed scenario changes it.
pub fn catalogue<'a>(files: impl IntoIterator<Item = (&'a str, &'a Path)>) -> String {
    let mut lines: Vec<String> = files
        .into_iter()
        .map(|(name, path)| {
            // Loaded a moment ago; an unreadable file still counts, by its error.
            let content =
                std::fs::read(path).unwrap_or_else(|e| format!("unreadable: {e}").into_bytes());
            format!("{name}\0{}\n", hex(&Sha256::digest(&content)))
        })
        .collect();
    lines.sort();
    hex(&Sha256::digest(lines.concat().as_bytes()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_depends_on_names_and_contents_not_paths_or_order() {
        let d = std::env::temp_dir().join(format!("arena-catalogue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        for sub in ["a", "b"] {
            std::fs::write(d.join(sub).join("x.yaml"), "name: x\n").unwrap();
            std::fs::write(d.join(sub).join("y.yaml"), "name: y\n").unwrap();
        }
        let (ax, ay) = (d.join("a/x.yaml"), d.join("a/y.yaml"));
        let (bx, by) = (d.join("b/x.yaml"), d.join("b/y.yaml"));
        let one = catalogue([("x", ax.as_path()), ("y", ay.as_path())]);
        assert_eq!(one.len(), 64);
        assert_eq!(one, catalogue([("y", by.as_path()), ("x", bx.as_path())]));
        std::fs::write(&by, "name: y\ndescription: edited\n").unwrap();
        assert_ne!(one, catalogue([("x", bx.as_path()), ("y", by.as_path())]));
        assert_ne!(one, catalogue([("x", ax.as_path())]));
        let _ = std::fs::remove_dir_all(&d);
    }
}

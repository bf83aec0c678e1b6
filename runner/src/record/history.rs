//! The runs under a results root, oldest first, and what `--shard
//! --history` balances by: each scenario's last recorded wall time.

use std::collections::HashMap;
use std::path::Path;

use crate::judge::verdict::Verdict;
use crate::record::results::Summary;

/// Run folders of a results root that hold a `summary.json`, oldest first
/// (run ids sort by time); `latest` and hidden entries are skipped.
pub fn run_folders(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut runs: Vec<_> = entries(root)?
        .into_iter()
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    runs.sort();
    Ok(runs)
}

/// The entries of `root` a results root may hold runs in: not the
/// `latest` link, not hidden ones.
fn entries(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_dir(root)?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name != "latest" && !name.starts_with('.')
        })
        .map(|e| e.path())
        .collect())
}

/// The roots under `root` that hold runs: `root` itself when it has run
/// folders, and each child folder that has them (`lab run --kernel A
/// --kernel B --results R` writes one root per kernel, `R/debian-6.12/…`).
/// Also every folder looked at, for an error that names them.
pub fn kernel_roots(
    root: &Path,
) -> std::io::Result<(Vec<std::path::PathBuf>, Vec<std::path::PathBuf>)> {
    let mut roots = vec![];
    let mut looked = vec![root.to_owned()];
    if !run_folders(root)?.is_empty() {
        roots.push(root.to_owned());
    }
    let mut children: Vec<_> = entries(root)?
        .into_iter()
        .filter(|p| p.is_dir() && !p.join("summary.json").is_file())
        .collect();
    children.sort();
    for child in children {
        if run_folders(&child).is_ok_and(|r| !r.is_empty()) {
            roots.push(child.clone());
        }
        looked.push(child);
    }
    Ok((roots, looked))
}

/// Each scenario's last recorded wall time (`duration_s` of its latest run
/// in which a VM ran) under a results root. Unreadable runs are skipped:
/// history only balances shards, it never changes which scenarios run.
pub fn durations(root: &Path) -> std::io::Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for run in run_folders(root)? {
        let Ok(summary) = Summary::read_run(&run) else {
            continue;
        };
        for s in &summary.scenarios {
            if s.duration_s > 0.0 && s.judgement.verdict != Verdict::NotRun {
                out.insert(s.name.clone(), s.duration_s);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_come_from_the_latest_run() {
        let root = std::env::temp_dir().join(format!("arena-shard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (run, d) in [("20260101-000000", 5.0), ("20260102-000000", 7.0)] {
            std::fs::create_dir_all(root.join(run)).unwrap();
            let s = serde_json::json!({"scenarios": [
                {"name": "x", "verdict": "pass", "duration_s": d},
                {"name": "y", "verdict": "not_run", "duration_s": 0.0},
            ]});
            std::fs::write(root.join(run).join("summary.json"), s.to_string()).unwrap();
        }
        let d = durations(&root).unwrap();
        assert_eq!(d.get("x"), Some(&7.0));
        assert_eq!(d.get("y"), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn kernel_roots_are_found_one_level_down() {
        let root = std::env::temp_dir().join(format!("arena-kroots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for k in ["debian-6.12", "debian-7.2"] {
            let run = root.join(k).join("20260101-000000");
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("summary.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let (roots, looked) = kernel_roots(&root).unwrap();
        assert_eq!(roots, [root.join("debian-6.12"), root.join("debian-7.2")]);
        assert_eq!(looked.len(), 4, "{looked:?}");
        // A plain root is its own only kernel root.
        let (roots, _) = kernel_roots(&root.join("debian-7.2")).unwrap();
        assert_eq!(roots, [root.join("debian-7.2")]);
        let _ = std::fs::remove_dir_all(&root);
    }
}

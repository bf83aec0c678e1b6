//! A run's folder on disk: created with its `latest` link, and rewritten
//! atomically (summary.json, junit.xml, results.ktap) after every verdict.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use arena_images::write_atomic;

use crate::record::results::{civil, junit, Summary};

/// A run's folder.
pub struct RunDir {
    /// `<results>/<run-id>`.
    pub path: PathBuf,
    /// The id.
    pub id: String,
}

/// A run folder that cannot be made: the path and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the results folder {}: {source}", path.display())]
pub struct CreateError {
    /// The folder or link that could not be made.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl RunDir {
    /// Create `<root>/<id>` and point `<root>/latest` at it; an error names
    /// the path it failed on.
    pub fn create(root: &Path) -> Result<RunDir, CreateError> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| CreateError { path, source }
        };
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, mo, d, h, mi, s) = civil(secs);
        let base = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
        std::fs::create_dir_all(root).map_err(at(root))?;
        let mut n = 0;
        let (id, path) = loop {
            let id = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let path = root.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => break (id, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(at(&path)(e)),
            }
        };
        let tmp = root.join(format!(".latest-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&id, &tmp).map_err(at(&tmp))?;
        let latest = root.join("latest");
        std::fs::rename(&tmp, &latest).map_err(at(&latest))?;
        Ok(RunDir { path, id })
    }

    /// A scenario's folder, created.
    pub fn scenario_dir(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Write summary.json, junit.xml and results.ktap, each atomically.
    pub fn write(&self, summary: &Summary) -> arena_images::Result<()> {
        let json = serde_json::to_vec_pretty(summary).expect("serialisable");
        write_atomic(&self.path.join("junit.xml"), junit(summary).as_bytes())?;
        write_atomic(
            &self.path.join("results.ktap"),
            crate::record::ktap::ktap(summary).as_bytes(),
        )?;
        write_atomic(&self.path.join("summary.json"), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_folder_under_a_file_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("arena-rundir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let e = RunDir::create(&file.join("results"))
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot create the results folder {}",
                file.join("results").display()
            )),
            "{text}"
        );
        assert!(text.contains("Not a directory"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

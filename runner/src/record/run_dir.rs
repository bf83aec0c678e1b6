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

impl RunDir {
    /// Create `<root>/<id>` and point `<root>/latest` at it.
    pub fn create(root: &Path) -> std::io::Result<RunDir> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, mo, d, h, mi, s) = civil(secs);
        let base = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
        std::fs::create_dir_all(root)?;
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
                Err(e) => return Err(e),
            }
        };
        let tmp = root.join(format!(".latest-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&id, &tmp)?;
        std::fs::rename(&tmp, root.join("latest"))?;
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

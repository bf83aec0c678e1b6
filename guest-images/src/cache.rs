//! Where cached products live: `$ARENA_LAB_CACHE`, else
//! `$XDG_CACHE_HOME/arena-lab`, else `~/.cache/arena-lab`.

use std::path::PathBuf;

/// The cache root (not created).
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARENA_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("arena-lab");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("arena-lab")
}

/// A subdirectory of the cache root, created.
pub fn dir(name: &str) -> crate::Result<PathBuf> {
    let d = root().join(name);
    std::fs::create_dir_all(&d).map_err(crate::io_err(&d))?;
    Ok(d)
}

//! Where cached products live: `$ARENA_LAB_CACHE`, else
//! `$XDG_CACHE_HOME/arena-lab`, else `~/.cache/arena-lab`.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A file younger than this is hashed every time by [`remembered`].
pub const RACY: Duration = Duration::from_secs(2);

/// `digest(path)`, remembered in `memo` under the file's identity (path,
/// size, modification time, inode, device): hashing a 60 MB vmlinux or a
/// snapshot on every run costs seconds under nested TCG. Any rewrite of the
/// file changes its identity, so a changed file is hashed again; a file
/// changed in the last [`RACY`] is always hashed (file times are coarse:
/// two writes within one tick look alike, as git's "racily clean" entries).
pub fn remembered(
    memo: &Path,
    path: &Path,
    digest: impl Fn(&Path) -> crate::Result<String>,
) -> crate::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(crate::io_err(path))?;
    let id = format!(
        "{} {} {}.{} {} {}",
        path.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.dev()
    );
    let file = memo.join(&crate::sha256_hex(id.as_bytes())[..24]);
    let settled = m
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= RACY);
    if settled {
        if let Ok(known) = std::fs::read_to_string(&file) {
            if known.len() == 64 {
                return Ok(known);
            }
        }
    }
    let d = digest(path)?;
    if settled {
        let _ = std::fs::create_dir_all(memo);
        let _ = crate::write_atomic(&file, d.as_bytes());
    }
    Ok(d)
}

/// An exclusive lock on `path` (created), held until the file is dropped:
/// how concurrent `lab` processes take turns on one cache entry.
pub fn lock_exclusive(path: &Path) -> crate::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).map_err(crate::io_err(path))?;
    // SAFETY: flock takes no pointers; the fd is open for the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(crate::io_err(path)(std::io::Error::last_os_error()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_remembered_only_for_settled_files() {
        let dir = std::env::temp_dir().join(format!("arena-memo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"one").unwrap();
        let calls = std::cell::Cell::new(0);
        let count = |_: &Path| {
            calls.set(calls.get() + 1);
            Ok("a".repeat(64))
        };
        let memo = dir.join("memo");
        // Just written: hashed each time.
        remembered(&memo, &f, count).unwrap();
        remembered(&memo, &f, count).unwrap();
        assert_eq!(calls.get(), 2);
        // Settled: hashed once, then remembered.
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        remembered(&memo, &f, count).unwrap();
        remembered(&memo, &f, count).unwrap();
        assert_eq!(calls.get(), 3);
        // Rewritten: another identity, hashed again.
        std::fs::write(&f, b"two").unwrap();
        remembered(&memo, &f, count).unwrap();
        assert_eq!(calls.get(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

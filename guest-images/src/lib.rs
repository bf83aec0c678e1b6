//! Everything the guest needs, prepared on the host: the kernel (Debian's
//! default one, or the user's own), the static guest agent, BPF objects, and
//! the initramfs that carries them. Products are cached under the user's cache
//! directory, keyed by their inputs.

#![warn(missing_docs)]

pub mod agent;
pub mod bpf;
pub mod cache;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod selftests;

use std::path::PathBuf;

/// Errors of image and kernel preparation.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An external tool failed.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// Exit status and the tail of its stderr.
        detail: String,
    },
    /// The file given as a kernel is not one.
    #[error("{path}: not a Linux kernel image ({why})")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// No default kernel package could be found.
    #[error("no kernel package: {0}")]
    NoKernelPackage(String),
    /// A module named by the image is not in the modules tree.
    #[error("module {name} not found in {dir}/modules.dep")]
    ModuleNotFound {
        /// Module name.
        name: String,
        /// Modules directory.
        dir: PathBuf,
    },
}

/// Shorthand for the crate's results.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Attach a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

/// Run a command, turning a non-zero exit into [`ImageError::Tool`].
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<std::process::Output> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Tool {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Tool {
            command,
            detail: format!("{}: {}", out.status, tail.join("\n")),
        });
    }
    Ok(out)
}

/// Hex sha256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cheap identity of a file for cache keys: hex sha256 of its path, size
/// and modification time (content is not read).
pub fn file_fingerprint(path: &std::path::Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(sha256_hex(
        format!("{} {} {mtime}", path.display(), meta.len()).as_bytes(),
    ))
}

/// Write `data` to `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Unique per call, not just per process: threads of one `lab run -j N`
    // may write the same cache entry at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    // A failed write (a full disk) leaves neither half a file nor its temp.
    let written = std::fs::write(&tmp, data)
        .map_err(io_err(path))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn concurrent_atomic_writes_of_one_path_all_succeed() {
        let dir = std::env::temp_dir().join(format!("arena-awc-{}", std::process::id()));
        let p = dir.join("shared");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[i; 64]).unwrap();
                    }
                });
            }
        });
        let data = std::fs::read(&p).unwrap();
        assert!(data.len() == 64 && data.iter().all(|b| *b == data[0]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = std::env::temp_dir().join(format!("arena-aw-{}", std::process::id()));
        let p = dir.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

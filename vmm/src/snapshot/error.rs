//! Why a snapshot failed, and the build identity its `OtherBuild` error
//! names: below the format and the state, which both report through it
//! (so `snapshot/mod.rs` only declares, re-exports and arms SIGUSR1).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Why a snapshot could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The file does not start with the snapshot magic.
    #[error("not an arena-vmm snapshot (bad magic)")]
    BadMagic,
    /// Written in a layout this VMM does not read.
    #[error("unsupported snapshot format version {found} (this arena-vmm reads version {reads})")]
    Version {
        /// The file's version.
        found: u32,
        /// The version this build reads.
        reads: u32,
    },
    /// The file is shorter than its header says.
    #[error("snapshot is truncated: {0}")]
    Truncated(String),
    /// Taken by another `arena-vmm` executable.
    #[error("snapshot was taken by a different arena-vmm build (snapshot build {snapshot}, this build {this})")]
    OtherBuild {
        /// Build id in the file.
        snapshot: BuildId,
        /// Build id of the running executable.
        this: BuildId,
    },
    /// The content does not match the header's checksum.
    #[error("snapshot checksum mismatch: the file is corrupt")]
    Checksum,
    /// A field is malformed or out of bounds.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Guest memory could not be read or mapped.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The state could not be applied to the new VM.
    #[error("cannot restore: {0}")]
    Restore(String),
}

/// Identity of a VMM build: SHA-256 of its executable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BuildId(pub [u8; 32]);

impl std::fmt::Display for BuildId {
    /// The first 8 bytes in hex, like a short git hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The running executable's build id (`/proc/self/exe` hashed once).
pub fn build_id() -> Result<BuildId, SnapshotError> {
    static ID: OnceLock<BuildId> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(*id);
    }
    let exe = "/proc/self/exe";
    let mut f = std::fs::File::open(exe).map_err(|e| SnapshotError::Io(exe.into(), e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| SnapshotError::Io(exe.into(), e))?;
    Ok(*ID.get_or_init(|| BuildId(h.finalize().into())))
}

//! Boot once, restore per scenario.
//!
//! Every scenario of a VM shape (kernel, image, command line, vCPUs, RAM)
//! boots the same kernel into the same agent, which then waits for its
//! scenario. That moment is saved once, by the backend (QEMU: its migration
//! stream; own VMM: its snapshot file), and each scenario starts from a
//! restore of it: as pristine as a cold boot, at a fraction of the cost.
//!
//! A snapshot lives in the cache (`snapshots/<key>/`, or under
//! `$ARENA_LAB_SNAPSHOTS`), keyed by everything
//! that determines the saved state: the kernel's and image's sha256, the
//! command line, vCPUs, RAM, backend, accelerator and the backend's build
//! ([`Backend::snapshot_identity`]). `meta.json` holds the key's inputs and
//! the state's sha256, checked once per run before the first restore: a
//! stale or corrupt snapshot is rebuilt, never trusted. Building is locked
//! across processes (`<key>.lock`), so concurrent runs build it once.
//!
//! The boot's console is kept beside the state; a restored scenario's
//! console log starts with it, so boot-time splats are judged as after a
//! cold boot. A shape whose snapshot cannot be made boots cold, with the
//! reason printed once; a restore that fails is retried cold by the run.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::execute::backend::{Backend, Console, SnapshotRole, VmSpec};

/// Where snapshots live instead of the cache's `snapshots/`.
pub const ROOT_ENV: &str = "ARENA_LAB_SNAPSHOTS";
/// Version of the layout below; part of the key.
pub const FORMAT: u32 = 1;
/// Snapshots kept in the cache (least recently used go first): each is
/// about the guest's touched memory (~70 MB for the default VM).
const KEEP: usize = 16;
/// Time the backend gets to write the state.
const SAVE_LIMIT: Duration = Duration::from_secs(120);
/// Attempts at building a snapshot (a boot can die under TCG).
const BUILD_ATTEMPTS: u32 = 2;

/// How a scenario's VM started (`start` in the summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmStart {
    /// Booted the kernel.
    Cold {
        /// Why not from a snapshot (`--cold`, a retry, a snapshot that
        /// could not be made); `None` where snapshots do not apply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    /// Restored from a snapshot.
    Restored {
        /// Its key (`snapshots/<key>` in the cache).
        snapshot: String,
        /// VM start → the restored agent's hello (s).
        restore_s: Option<f64>,
    },
}

/// What a snapshot was made from, and its state's checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`FORMAT`].
    pub format: u32,
    /// The key the inputs below hash to.
    pub key: String,
    /// Backend name.
    pub backend: String,
    /// Accelerator.
    pub accelerator: String,
    /// The backend's build ([`Backend::snapshot_identity`]).
    pub identity: String,
    /// Kernel file's sha256.
    pub kernel_sha256: String,
    /// Image's sha256.
    pub initrd_sha256: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM.
    pub memory_mib: u32,
    /// Size of the state file.
    pub state_bytes: u64,
    /// The state file's digest (sha256 over its data extents, see
    /// `state_digest`).
    pub state_sha256: String,
    /// VM start → hello when it was made (s).
    pub boot_to_hello_s: f64,
    /// Time the backend took to save it (s).
    pub save_s: f64,
}

/// A usable snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// Its folder.
    pub dir: PathBuf,
    /// What it was made from.
    pub meta: Meta,
}

impl Snapshot {
    /// The role of a VM restored from it.
    pub fn restore_role(&self) -> SnapshotRole {
        SnapshotRole::Restore {
            state: self.dir.join("state"),
            boot_console: self.dir.join("boot-console.log"),
        }
    }
}

type Cell = Arc<OnceLock<Result<Arc<Snapshot>, String>>>;

/// The snapshots of one run, one per VM shape, made or checked on first use.
pub struct Snapshots<'a> {
    backend: &'a dyn Backend,
    boot_limit: Duration,
    root: PathBuf,
    shapes: Mutex<HashMap<String, Cell>>,
}

impl<'a> Snapshots<'a> {
    /// Snapshots of `backend`'s VMs under the cache, booting within
    /// `boot_limit` when one must be made.
    pub fn new(backend: &'a dyn Backend, boot_limit: Duration) -> Snapshots<'a> {
        Snapshots {
            backend,
            boot_limit,
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| arena_images::cache::root().join("snapshots")),
            shapes: Mutex::new(HashMap::new()),
        }
    }

    /// The snapshot for VMs shaped like `spec`, made if needed (once per
    /// shape and run; other callers wait for it), or why there is none
    /// (printed once).
    pub fn for_spec(&self, spec: &VmSpec) -> Result<Arc<Snapshot>, String> {
        let shape = format!(
            "{}\0{:?}\0{}\0{}\0{}",
            spec.kernel.display(),
            spec.initrd,
            spec.cmdline,
            spec.vcpus,
            spec.memory_mib
        );
        let cell = self
            .shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(shape)
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let made = self.load_or_make(spec);
            if let Err(why) = &made {
                eprintln!("lab: no snapshot ({why}): booting cold");
            }
            made
        })
        .clone()
    }

    fn load_or_make(&self, spec: &VmSpec) -> Result<Arc<Snapshot>, String> {
        let identity = self.backend.snapshot_identity()?;
        let memo = self.root.join("digests");
        let sha = |p: &Path| {
            arena_images::cache::remembered(&memo, p, arena_images::sha256_file)
                .map_err(|e| format!("hashing {}: {e}", p.display()))
        };
        let mut meta = Meta {
            format: FORMAT,
            key: String::new(),
            backend: self.backend.name().into(),
            accelerator: self.backend.accelerator().into(),
            identity,
            kernel_sha256: sha(&spec.kernel)?,
            initrd_sha256: spec.initrd.as_deref().map(sha).transpose()?,
            cmdline: spec.cmdline.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            state_bytes: 0,
            state_sha256: String::new(),
            boot_to_hello_s: 0.0,
            save_s: 0.0,
        };
        meta.key = key_of(&meta);
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("creating {}: {e}", self.root.display()))?;
        let _lock =
            arena_images::cache::lock_exclusive(&self.root.join(format!("{}.lock", meta.key)))
                .map_err(|e| e.to_string())?;
        let dir = self.root.join(&meta.key);
        if dir.exists() {
            match check(&dir, &meta, &memo) {
                Ok(snapshot) => {
                    touch(&dir);
                    return Ok(Arc::new(snapshot));
                }
                Err(why) => {
                    eprintln!(
                        "lab: snapshot {} is unusable ({why}): making it again",
                        meta.key
                    );
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| format!("removing {}: {e}", dir.display()))?;
                }
            }
        }
        let mut last = String::new();
        for _ in 0..BUILD_ATTEMPTS {
            match self.make(spec, &meta, &dir, &memo) {
                Ok(snapshot) => {
                    evict(&self.root, KEEP);
                    return Ok(Arc::new(snapshot));
                }
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    /// Boot, save, checksum, then move into place: `dir` appears whole or
    /// not at all.
    fn make(
        &self,
        spec: &VmSpec,
        meta: &Meta,
        dir: &Path,
        memo: &Path,
    ) -> Result<Snapshot, String> {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        eprintln!(
            "lab: making a snapshot of the booted VM ({} vCPUs, {} MiB), reused by every \
             scenario of this shape",
            spec.vcpus, spec.memory_mib
        );
        // A short path: Unix socket paths are limited to 108 bytes.
        let control = std::env::temp_dir().join(format!(
            "arena-lab-{}-{}.qmp",
            std::process::id(),
            &meta.key[..8]
        ));
        let role = SnapshotRole::Save {
            control: control.clone(),
            state: tmp.join("state"),
        };
        let template = VmSpec {
            console: Console::File(tmp.join("boot-console.log")),
            channel: None,
            gdb: None,
            snapshot: Some(role),
            ..spec.clone()
        };
        let t = Instant::now();
        let booted = crate::execute::session::boot_and_save(
            self.backend,
            template,
            self.boot_limit,
            SAVE_LIMIT,
            &tmp.join("events.jsonl"),
            &tmp.join("vmm.log"),
        );
        let _ = std::fs::remove_file(&control);
        let made = booted.and_then(|boot_s| {
            let state = tmp.join("state");
            let bytes = std::fs::metadata(&state)
                .map_err(|e| format!("the backend saved no state: {e}"))?
                .len();
            if bytes == 0 {
                return Err("the backend saved an empty state".into());
            }
            let save_s = (t.elapsed().as_secs_f64() - boot_s).max(0.0);
            let meta = Meta {
                state_bytes: bytes,
                state_sha256: remembered(memo, &state, state_digest)?,
                boot_to_hello_s: boot_s,
                save_s,
                ..meta.clone()
            };
            let json = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
            arena_images::write_atomic(&tmp.join("meta.json"), &json).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, dir).map_err(|e| format!("moving the snapshot: {e}"))?;
            eprintln!(
                "lab: snapshot {} made: boot {boot_s:.2} s, save {:.2} s, {:.1} MB",
                meta.key,
                meta.save_s,
                bytes as f64 / 1e6
            );
            Ok(Snapshot {
                dir: dir.to_owned(),
                meta,
            })
        });
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        made
    }
}

/// The key of the inputs in `meta` (its own key, size and checksum aside).
fn key_of(meta: &Meta) -> String {
    let inputs = Meta {
        key: String::new(),
        state_bytes: 0,
        state_sha256: String::new(),
        boot_to_hello_s: 0.0,
        save_s: 0.0,
        ..meta.clone()
    };
    let json = serde_json::to_vec(&inputs).expect("plain data serialises");
    arena_images::sha256_hex(&json)[..24].to_owned()
}

/// The snapshot in `dir`, if it was made from exactly `want`'s inputs and
/// its state is whole.
fn check(dir: &Path, want: &Meta, memo: &Path) -> Result<Snapshot, String> {
    let text = std::fs::read(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?;
    let meta: Meta = serde_json::from_slice(&text).map_err(|e| format!("meta.json: {e}"))?;
    if key_of(&meta) != want.key || meta.key != want.key {
        return Err("made from other inputs".into());
    }
    let state = dir.join("state");
    let bytes = std::fs::metadata(&state)
        .map_err(|e| format!("state: {e}"))?
        .len();
    if bytes != meta.state_bytes {
        return Err(format!(
            "state has {bytes} bytes, {} when made",
            meta.state_bytes
        ));
    }
    if remembered(memo, &state, state_digest)? != meta.state_sha256 {
        return Err("state checksum mismatch".into());
    }
    if !dir.join("boot-console.log").is_file() {
        return Err("boot console missing".into());
    }
    Ok(Snapshot {
        dir: dir.to_owned(),
        meta,
    })
}

/// The state file's digest: sha256 over its data, extent by extent
/// (`SEEK_DATA`/`SEEK_HOLE`), each preceded by its offset and length. A
/// sparse snapshot (the own VMM leaves zero pages as holes: 68 MB of data
/// in 537 MB) is hashed at the cost of its data, and moving data between
/// extents still changes the digest. A file system without `SEEK_DATA`
/// reports one extent, the whole file.
fn state_digest(path: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let seek = |from: u64, whence: libc::c_int| -> u64 {
        let Ok(off) = libc::off_t::try_from(from) else {
            return len;
        };
        // SAFETY: lseek takes no pointers; the fd is open for the call.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        u64::try_from(r).map_or(len, |r| r.min(len))
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let start = seek(at, libc::SEEK_DATA);
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE).max(start + 1).min(len);
        h.update(start.to_le_bytes());
        h.update((end - start).to_le_bytes());
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).map_or(buf.len(), |n| n.min(buf.len()));
            f.read_exact_at(&mut buf[..n], pos)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        at = end;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `digest(path)`, remembered by the file's identity (see
/// [`arena_images::cache::remembered`]).
fn remembered(
    memo: &Path,
    path: &Path,
    digest: impl Fn(&Path) -> Result<String, String>,
) -> Result<String, String> {
    arena_images::cache::remembered(memo, path, |p| {
        digest(p).map_err(|e| arena_images::ImageError::Io {
            path: p.to_owned(),
            source: std::io::Error::other(e),
        })
    })
    .map_err(|e| e.to_string())
}

/// Mark `dir` as just used (eviction goes by modification time).
fn touch(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Remove all but the `keep` most recently used snapshots under `root`.
fn evict(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().join("meta.json").is_file())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, dir) in dirs.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("lock"));
    }
    // Remembered digests of files long gone or unused: a week is plenty.
    let week = Duration::from_secs(7 * 24 * 3600);
    for e in std::fs::read_dir(root.join("digests"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > week);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            format: FORMAT,
            key: String::new(),
            backend: "qemu".into(),
            accelerator: "tcg".into(),
            identity: "QEMU emulator version 7.2.22".into(),
            kernel_sha256: "aa".into(),
            initrd_sha256: Some("bb".into()),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 512,
            state_bytes: 0,
            state_sha256: String::new(),
            boot_to_hello_s: 0.0,
            save_s: 0.0,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arena-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A snapshot folder as `make` leaves it.
    fn made(dir: &Path, state: &[u8]) -> Meta {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("state"), state).unwrap();
        std::fs::write(dir.join("boot-console.log"), "booted\n").unwrap();
        let mut m = meta();
        m.key = key_of(&m);
        m.state_bytes = state.len() as u64;
        m.state_sha256 = state_digest(&dir.join("state")).unwrap();
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        m
    }

    #[test]
    fn every_input_changes_the_key_and_results_do_not() {
        let base = key_of(&meta());
        let changed: Vec<Meta> = vec![
            Meta {
                kernel_sha256: "ab".into(),
                ..meta()
            },
            Meta {
                initrd_sha256: None,
                ..meta()
            },
            Meta {
                cmdline: "console=ttyS0 x".into(),
                ..meta()
            },
            Meta { vcpus: 1, ..meta() },
            Meta {
                memory_mib: 1024,
                ..meta()
            },
            Meta {
                backend: "kvm".into(),
                ..meta()
            },
            Meta {
                accelerator: "kvm".into(),
                ..meta()
            },
            Meta {
                identity: "QEMU emulator version 8.0".into(),
                ..meta()
            },
            Meta {
                format: FORMAT + 1,
                ..meta()
            },
        ];
        for m in changed {
            assert_ne!(key_of(&m), base, "{m:?}");
        }
        let outputs = Meta {
            state_bytes: 9,
            state_sha256: "ff".into(),
            boot_to_hello_s: 1.5,
            save_s: 0.5,
            ..meta()
        };
        assert_eq!(key_of(&outputs), base);
    }

    #[test]
    fn a_whole_snapshot_checks_out() {
        let dir = scratch("whole");
        let m = made(&dir, b"state bytes");
        let s = check(&dir, &m, &dir.join("memo")).unwrap();
        assert_eq!(s.meta, m);
        assert_eq!(
            s.restore_role(),
            SnapshotRole::Restore {
                state: dir.join("state"),
                boot_console: dir.join("boot-console.log"),
            }
        );
    }

    #[test]
    fn a_corrupt_truncated_or_foreign_snapshot_is_refused() {
        let dir = scratch("corrupt");
        let m = made(&dir, b"state bytes");
        // Same size, other content.
        std::fs::write(dir.join("state"), b"state bytez").unwrap();
        assert_eq!(
            check(&dir, &m, &dir.join("memo")).unwrap_err(),
            "state checksum mismatch"
        );
        std::fs::write(dir.join("state"), b"state").unwrap();
        assert!(check(&dir, &m, &dir.join("memo"))
            .unwrap_err()
            .contains("5 bytes, 11 when made"));
        // Made from another kernel than the one asked for.
        let m = made(&dir, b"state bytes");
        let other = Meta {
            kernel_sha256: "cc".into(),
            ..m.clone()
        };
        let other = Meta {
            key: key_of(&other),
            ..other
        };
        assert_eq!(
            check(&dir, &other, &dir.join("memo")).unwrap_err(),
            "made from other inputs"
        );
        // A meta.json edited to claim other inputs under the same key.
        let mut forged = m.clone();
        forged.cmdline = "edited".into();
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
        assert_eq!(
            check(&dir, &m, &dir.join("memo")).unwrap_err(),
            "made from other inputs"
        );
        std::fs::write(dir.join("meta.json"), b"{").unwrap();
        assert!(check(&dir, &m, &dir.join("memo"))
            .unwrap_err()
            .starts_with("meta.json:"));
        made(&dir, b"state bytes");
        std::fs::remove_file(dir.join("boot-console.log")).unwrap();
        assert_eq!(
            check(&dir, &m, &dir.join("memo")).unwrap_err(),
            "boot console missing"
        );
    }

    #[test]
    fn the_digest_sees_data_and_where_it_is_not_holes() {
        let dir = scratch("digest");
        let a = dir.join("a");
        std::fs::write(&a, b"abc").unwrap();
        let dense = state_digest(&a).unwrap();
        assert_eq!(dense.len(), 64);
        // The same bytes further into a sparse file: another digest.
        let f = File::create(&a).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"abc", 1 << 20).unwrap();
        drop(f);
        let sparse = state_digest(&a).unwrap();
        assert_ne!(sparse, dense);
        // One changed byte: another digest.
        let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all_at(b"b", (1 << 20) + 2).unwrap();
        assert_ne!(state_digest(&a).unwrap(), sparse);
        assert!(state_digest(&dir.join("missing")).is_err());
    }

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let root = scratch("evict");
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let d = root.join(name);
            made(&d, b"x");
            let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            File::open(&d).unwrap().set_modified(t).unwrap();
        }
        // Not a snapshot (no meta.json): never touched.
        std::fs::create_dir_all(root.join("a.tmp-1")).unwrap();
        evict(&root, 2);
        assert!(!root.join("a").exists());
        assert!(root.join("b").exists() && root.join("c").exists());
        assert!(root.join("a.tmp-1").exists());
    }

    #[test]
    fn the_start_reads_as_documented() {
        let r = VmStart::Restored {
            snapshot: "0123".into(),
            restore_s: Some(0.1),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"kind":"restored","snapshot":"0123","restore_s":0.1}"#
        );
        let c = VmStart::Cold { why: None };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"kind":"cold"}"#);
    }
}

//! The mutated file's journal: how `lab mutate` gives the user's tree back
//! byte for byte, even after a crash or `kill -9`.
//!
//! Before the first mutant is written, the original bytes and their sha256
//! are saved in the cache (`mutate/journals/<hash of the file's path>/`);
//! before each mutant, its id and sha256 are recorded there. Restoring
//! writes the saved original. A later `lab mutate` on the same file finds
//! a journal left behind and restores the mutant it recorded; a file that
//! is neither that original nor that mutant (the user edited it since) is
//! refused, never overwritten.
//!
//! Files are replaced (a new file renamed over the old), never written in
//! place: a tree made with `cp -al` shares its files with the cache it was
//! linked from. The original comes back with a new modification time, on
//! purpose: it is newer than the last mutant's object file, so the next
//! build recompiles it instead of linking that mutant's object.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the journal cannot give the file back.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is neither the original nor the mutant the journal knows.
    #[error(
        "{}: changed since an earlier `lab mutate` left its journal in {} (neither the original it saved nor its mutant {mutant}); \
         check the file, then remove that folder to start again",
        file.display(),
        journal.display()
    )]
    Differs {
        /// The mutated file.
        file: PathBuf,
        /// The journal's folder.
        journal: PathBuf,
        /// The mutant the journal last recorded.
        mutant: String,
    },
    /// Another `lab mutate` holds the file.
    #[error("{}: another `lab mutate` is working on it", file.display())]
    Busy {
        /// The mutated file.
        file: PathBuf,
    },
    /// The saved original does not match its recorded sha256.
    #[error("{}: the saved original is damaged; restore the file by hand (e.g. from git) and remove the folder", journal.display())]
    Damaged {
        /// The journal's folder.
        journal: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `journal.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    file: PathBuf,
    original_sha256: String,
    /// The mutant written last, with its sha256, until it is restored.
    mutant: Option<(String, String)>,
}

const RECORD: &str = "journal.json";
const ORIGINAL: &str = "original";

/// The journal of one file, held while `lab mutate` works on it (an
/// exclusive lock: two runs on one file would mutate each other's
/// original). Dropped, it gives the file its original back and goes.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: PathBuf,
    original: Vec<u8>,
    record: Record,
    /// Held until the journal goes (`None` only in tests of a crash).
    _lock: Option<std::fs::File>,
    closed: bool,
}

/// An exclusive lock on `path`, or `None` when another process holds it.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, JournalError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).map_err(io(path))?;
    // SAFETY: flock takes no pointers; the fd is open for the call.
    let held = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(held.then_some(f))
}

fn sha(data: &[u8]) -> String {
    arena_images::sha256_hex(data)
}

/// Replaces `path` with `data`, keeping its permissions.
fn replace(path: &Path, data: &[u8]) -> Result<(), JournalError> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644);
    let tmp = path.with_file_name(format!(
        ".{}.arena-lab-mutate",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Journal {
    /// Takes charge of `file` (canonical), keeping the journal under
    /// `root`: a mutant an earlier run left there is restored first (its
    /// id returned), a file changed since is refused.
    pub fn open(root: &Path, file: &Path) -> Result<(Journal, Option<String>), JournalError> {
        let key = sha(file.as_os_str().as_encoded_bytes());
        let dir = root.join(&key[..24]);
        std::fs::create_dir_all(root).map_err(io(root))?;
        let lock = try_lock(&root.join(format!("{}.lock", &key[..24])))?.ok_or_else(|| {
            JournalError::Busy {
                file: file.to_owned(),
            }
        })?;
        let current = std::fs::read(file).map_err(io(file))?;
        let mut restored = None;
        let record_path = dir.join(RECORD);
        let previous: Option<Record> = std::fs::read(&record_path)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        if let Some(prev) = previous.filter(|p| p.original_sha256 != sha(&current)) {
            let left_over = prev.mutant.clone().filter(|(_, s)| *s == sha(&current));
            let Some((id, _)) = left_over else {
                return Err(JournalError::Differs {
                    file: file.to_owned(),
                    journal: dir,
                    mutant: prev.mutant.map_or_else(|| "(none)".into(), |(id, _)| id),
                });
            };
            let saved = std::fs::read(dir.join(ORIGINAL)).map_err(io(&dir))?;
            if sha(&saved) != prev.original_sha256 {
                return Err(JournalError::Damaged { journal: dir });
            }
            replace(file, &saved)?;
            restored = Some(id);
        }
        let original = std::fs::read(file).map_err(io(file))?;
        let record = Record {
            file: file.to_owned(),
            original_sha256: sha(&original),
            mutant: None,
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        arena_images::write_atomic(&dir.join(ORIGINAL), &original).map_err(|e| {
            JournalError::Io {
                path: dir.join(ORIGINAL),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let j = Journal {
            dir,
            file: file.to_owned(),
            original,
            record,
            _lock: Some(lock),
            closed: false,
        };
        j.save()?;
        Ok((j, restored))
    }

    fn save(&self) -> Result<(), JournalError> {
        let path = self.dir.join(RECORD);
        let text = serde_json::to_vec_pretty(&self.record).expect("serialisable");
        arena_images::write_atomic(&path, &text).map_err(|e| JournalError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The original bytes.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// Writes mutant `id` (`text`) into the file, journalled first; the
    /// original is back when the guard is dropped (or [`Applied::restore`]d).
    pub fn apply(&mut self, id: &str, text: &[u8]) -> Result<Applied<'_>, JournalError> {
        self.record.mutant = Some((id.to_owned(), sha(text)));
        self.save()?;
        let applied = Applied {
            journal: self,
            restored: false,
        };
        replace(&applied.journal.file, text)?;
        Ok(applied)
    }

    fn restore(&mut self) -> Result<(), JournalError> {
        replace(&self.file, &self.original)?;
        self.record.mutant = None;
        self.save()
    }

    /// Done with the file: it holds the original; the journal goes.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.closed = true;
        self.finish()
    }

    fn finish(&self) -> Result<(), JournalError> {
        let current = std::fs::read(&self.file).map_err(io(&self.file))?;
        if current != self.original {
            replace(&self.file, &self.original)?;
        }
        std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.finish() {
                eprintln!("lab mutate: giving the file back: {e}");
            }
        }
    }
}

/// A mutant in the file; dropping it restores the original.
#[derive(Debug)]
pub struct Applied<'j> {
    journal: &'j mut Journal,
    restored: bool,
}

impl Applied<'_> {
    /// Puts the original back, saying whether that worked.
    pub fn restore(mut self) -> Result<(), JournalError> {
        self.restored = true;
        self.journal.restore()
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = self.journal.restore() {
                eprintln!("lab mutate: restoring the original failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arena-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// What a crash does: the process ends (its lock with it) and nothing
    /// is restored.
    fn crash(mut j: Journal) {
        j._lock.take();
        std::mem::forget(j);
    }

    #[test]
    fn a_dropped_mutant_is_restored_and_a_crashed_one_on_the_next_open() {
        let d = scratch("restore");
        let (root, file) = (d.join("journals"), d.join("arena.c"));
        std::fs::write(&file, "original\n").unwrap();
        let (mut j, restored) = Journal::open(&root, &file).unwrap();
        assert_eq!(restored, None);
        {
            let _m = j.apply("m1", b"mutant 1\n").unwrap();
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "mutant 1\n");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\n");
        // A crash while a mutant is in: neither the guard nor the journal
        // gets to restore it.
        std::mem::forget(j.apply("m2", b"mutant 2\n").unwrap());
        crash(j);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mutant 2\n");
        let (j, restored) = Journal::open(&root, &file).unwrap();
        assert_eq!(restored.as_deref(), Some("m2"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\n");
        j.close().unwrap();
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "journal gone: {left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_changed_since_is_refused_not_overwritten() {
        let d = scratch("refuse");
        let (root, file) = (d.join("journals"), d.join("arena.c"));
        std::fs::write(&file, "original\n").unwrap();
        let (mut j, _) = Journal::open(&root, &file).unwrap();
        std::mem::forget(j.apply("m1", b"mutant\n").unwrap());
        crash(j);
        std::fs::write(&file, "the user's edit\n").unwrap();
        let err = Journal::open(&root, &file).unwrap_err();
        assert!(
            matches!(err, JournalError::Differs { ref mutant, .. } if mutant == "m1"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "the user's edit\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_run_at_a_time_and_a_dropped_journal_gives_the_file_back() {
        let d = scratch("busy");
        let (root, file) = (d.join("journals"), d.join("arena.c"));
        std::fs::write(&file, "original\n").unwrap();
        let (mut j, _) = Journal::open(&root, &file).unwrap();
        let err = Journal::open(&root, &file).unwrap_err();
        assert!(matches!(err, JournalError::Busy { .. }), "{err}");
        // An early return with a mutant in (its guard forgotten): the
        // journal's drop restores it.
        std::mem::forget(j.apply("m", b"mutant\n").unwrap());
        drop(j);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\n");
        let (j, restored) = Journal::open(&root, &file).unwrap();
        assert_eq!(restored, None);
        j.close().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn restoring_replaces_the_file_instead_of_writing_through_hard_links() {
        let d = scratch("links");
        let (root, file) = (d.join("journals"), d.join("arena.c"));
        std::fs::write(d.join("cache-copy.c"), "original\n").unwrap();
        std::fs::hard_link(d.join("cache-copy.c"), &file).unwrap();
        let (mut j, _) = Journal::open(&root, &file).unwrap();
        let m = j.apply("m", b"mutant\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mutant\n");
        assert_eq!(
            std::fs::read_to_string(d.join("cache-copy.c")).unwrap(),
            "original\n"
        );
        m.restore().unwrap();
        j.close().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("cache-copy.c")).unwrap(),
            "original\n"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\n");
        let _ = std::fs::remove_dir_all(&d);
    }
}

//! A kernel lock file (`guest-images/kernels.lock`): the exact Debian
//! kernel of each series the tests use (packages, version, and the sha256
//! of the image the lab identifies a kernel by, [`Kernel::sha256`]), so a
//! test boots the same kernel until someone refreshes the lock on purpose,
//! whatever sid has moved on to.
//!
//! The file is TOML, a subset this module reads and writes: comment lines,
//! `[kernel."SERIES"]` tables, and `key = "string"` or `key = ["a", "b"]`
//! (no escapes). [`Lock::render`] writes it with its header comment.
//!
//! [`resolve`] is the lock's side of a run: the cached kernel when it is
//! the locked one (no apt call at all), else that exact version fetched with
//! the lab's own apt state (lists refreshed only if they lack it), checked
//! against the locked sha256. sid keeps only its current version of a
//! package: once sid has moved on, a locked kernel that is not in the cache
//! cannot be downloaded any more, and [`resolve`] says so instead of using
//! another one. Resolutions of one release take turns on
//! `kernels/.lock-<release>` of the cache.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::apt::Apt;
use super::debian::{self, Channel, Packaging};
use super::{Kernel, KernelOrigin};
use crate::{cache, io_err, sha256_file, write_atomic, ImageError};

/// The command that refreshes the lock (see `runner/tests/debian_7_2.rs`).
pub const REFRESH_COMMAND: &str =
    "ARENA_LAB_REFRESH_KERNEL_LOCK=1 cargo test --release -p arena-runner --test debian_7_2";

/// The lock file's path in the repository.
pub const PATH_IN_REPO: &str = "guest-images/kernels.lock";

const HEADER: &str = "\
# The Debian kernels the tests boot, pinned (runner/tests/debian_7_2.rs).
# Read by arena_images::kernel::lock: per series, the exact packages and
# version, and the sha256 of the kernel image the lab identifies the kernel
# by (Kernel.sha256: the bzImage, kernels/<release>/vmlinuz of the cache).
# A test resolves each series through this file: the cached kernel if it is
# this one (no apt call), else exactly this version through the lab's apt
# state; a different sha256 fails the test. sid keeps only its current
# version: once it has moved on, a locked kernel missing from the cache can
# no longer be downloaded, and the test says so.
#
# Refresh (re-resolves each series' newest kernel, refreshing sid's lists,
# rewrites this file, then runs the tests on it; review and commit the diff):
#   ARENA_LAB_REFRESH_KERNEL_LOCK=1 cargo test --release -p arena-runner --test debian_7_2
";

/// One series' locked kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// `MAJOR.MINOR`, e.g. `7.2`.
    pub series: String,
    /// `uname -r`, e.g. `7.2.13+deb14-amd64`.
    pub release: String,
    /// The package holding the kernel (`linux-binary-*`, or 6.12's `linux-image-*`).
    pub package: String,
    /// The packages unpacked with it (7.2's `linux-modules-*`, `linux-base-*`).
    pub other_packages: Vec<String>,
    /// Exact Debian version of all of them, e.g. `7.2.13-1`.
    pub version: String,
    /// The lab's apt state it comes from (`sid`); `None`: the host's apt.
    pub suite: Option<String>,
    /// [`Kernel::sha256`].
    pub sha256: String,
}

impl Locked {
    /// The lock entry of a Debian kernel for `series`; `None` for a user's kernel.
    pub fn of(series: &str, kernel: &Kernel) -> Option<Locked> {
        let KernelOrigin::Debian {
            package,
            version,
            other_packages,
            suite,
        } = &kernel.origin
        else {
            return None;
        };
        Some(Locked {
            series: series.to_owned(),
            release: kernel.release.clone(),
            package: package.clone(),
            other_packages: other_packages.clone(),
            version: version.clone(),
            suite: suite.clone(),
            sha256: kernel.sha256.clone(),
        })
    }

    /// The pinned `debian:` spec naming it for `lab run --kernel`, e.g. `7.2.13`.
    pub fn spec(&self) -> String {
        let numbers = self.release.split('+').next().unwrap_or(&self.release);
        numbers.to_owned()
    }

    /// Whether `kernel` is this one: same packages, version and sha256.
    pub fn matches(&self, kernel: &Kernel) -> bool {
        Locked::of(&self.series, kernel).as_ref() == Some(self)
    }

    fn packaging(&self) -> Packaging {
        if self.other_packages.is_empty() {
            Packaging::Single {
                image: self.package.clone(),
            }
        } else {
            Packaging::Split {
                binary: self.package.clone(),
                others: self.other_packages.clone(),
            }
        }
    }

    fn apt(&self) -> crate::Result<Apt> {
        match &self.suite {
            Some(s) => Apt::suite(s),
            None => Ok(Apt::host()),
        }
    }

    fn describe(&self) -> String {
        let mut packages = vec![self.package.as_str()];
        packages.extend(self.other_packages.iter().map(String::as_str));
        let from = match &self.suite {
            Some(s) => format!("{s} through the lab's apt state"),
            None => "the host's apt".to_owned(),
        };
        format!(
            "Debian {} kernel {} ({} = {}, from {from})",
            self.series,
            self.release,
            packages.join(", "),
            self.version
        )
    }
}

/// The parsed lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// One entry a series, in file order.
    pub kernels: Vec<Locked>,
}

/// What went wrong resolving a locked kernel.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file is not in the expected form.
    #[error("{path}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line and problem.
        why: String,
    },
    /// The lock has no entry for a series.
    #[error("the kernel lock has no series {0:?}: add it with `{REFRESH_COMMAND}`")]
    NoSeries(String),
    /// The locked kernel is not cached and apt cannot fetch it.
    #[error(
        "the locked {what} is {cache} and cannot be fetched: {why}. \
         No other version is used instead. Restore that cache directory, or move the lock \
         to what Debian serves now with `{REFRESH_COMMAND}` (and review the diff)"
    )]
    Unavailable {
        /// The locked kernel.
        what: String,
        /// What the cache has instead: `not in the cache (DIR)`, or the
        /// other version it holds there.
        cache: String,
        /// Why apt cannot fetch it.
        why: String,
    },
    /// The kernel found is not the locked one.
    #[error(
        "the locked {what} has sha256 {want}, but {path} has {got} ({detail}): \
         not the locked kernel, refusing it. If the lock is wrong, refresh it with \
         `{REFRESH_COMMAND}`"
    )]
    Mismatch {
        /// The locked kernel.
        what: String,
        /// The lock's sha256.
        want: String,
        /// The file hashed.
        path: PathBuf,
        /// Its sha256.
        got: String,
        /// What the kernel found is.
        detail: String,
    },
    /// Cache, apt or unpacking failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl Lock {
    /// Read and parse a lock file.
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Lock::parse(&text).map_err(|why| LockError::Parse {
            path: path.to_owned(),
            why,
        })
    }

    /// Parse the lock's TOML subset.
    pub fn parse(text: &str) -> Result<Lock, String> {
        #[derive(Default)]
        struct Partial {
            series: String,
            fields: Vec<(String, Value)>,
        }
        enum Value {
            Str(String),
            List(Vec<String>),
        }
        fn string(s: &str) -> Option<String> {
            let inner = s.strip_prefix('"')?.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then(|| inner.to_owned())
        }
        let mut tables: Vec<Partial> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = |why: &str| format!("line {}: {why}: {raw}", n + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(header) = line.strip_prefix('[') {
                let series = header
                    .strip_suffix(']')
                    .and_then(|h| h.trim().strip_prefix("kernel."))
                    .and_then(string)
                    .ok_or_else(|| at("expected a [kernel.\"SERIES\"] table"))?;
                if tables.iter().any(|t| t.series == series) {
                    return Err(at("series locked twice"));
                }
                tables.push(Partial {
                    series,
                    ..Partial::default()
                });
                continue;
            }
            let table = tables
                .last_mut()
                .ok_or_else(|| at("a key before any [kernel.\"SERIES\"] table"))?;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| at("expected key = value"))?;
            let (key, value) = (key.trim(), value.trim());
            let value = if let Some(list) = value.strip_prefix('[') {
                let list = list
                    .strip_suffix(']')
                    .ok_or_else(|| at("a list must end on its line"))?;
                let items = list
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(string)
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| at("list items must be plain \"strings\""))?;
                Value::List(items)
            } else {
                Value::Str(string(value).ok_or_else(|| at("expected a plain \"string\""))?)
            };
            if table.fields.iter().any(|(k, _)| k == key) {
                return Err(at("key given twice"));
            }
            table.fields.push((key.to_owned(), value));
        }
        let mut kernels = Vec::new();
        for t in tables {
            let take_str = |key: &str, required: bool| -> Result<Option<String>, String> {
                match t.fields.iter().find(|(k, _)| k == key) {
                    Some((_, Value::Str(s))) => Ok(Some(s.clone())),
                    Some((_, Value::List(_))) => {
                        Err(format!("kernel {:?}: {key} must be a string", t.series))
                    }
                    None if required => Err(format!("kernel {:?}: no {key}", t.series)),
                    None => Ok(None),
                }
            };
            let release = take_str("release", true)?.expect("required");
            let package = take_str("package", true)?.expect("required");
            let version = take_str("version", true)?.expect("required");
            let sha256 = take_str("sha256", true)?.expect("required");
            let suite = take_str("suite", false)?;
            let other_packages = match t.fields.iter().find(|(k, _)| k == "other_packages") {
                Some((_, Value::List(l))) => l.clone(),
                Some(_) => {
                    return Err(format!(
                        "kernel {:?}: other_packages must be a list",
                        t.series
                    ))
                }
                None => Vec::new(),
            };
            const KEYS: [&str; 6] = [
                "release",
                "package",
                "other_packages",
                "version",
                "suite",
                "sha256",
            ];
            if let Some((k, _)) = t.fields.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
                return Err(format!("kernel {:?}: unknown key {k}", t.series));
            }
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "kernel {:?}: sha256 is not 64 hex digits",
                    t.series
                ));
            }
            if t.series.parse::<Channel>().is_err() {
                return Err(format!("kernel {:?}: not a MAJOR.MINOR series", t.series));
            }
            kernels.push(Locked {
                series: t.series,
                release,
                package,
                other_packages,
                version,
                suite,
                sha256: sha256.to_ascii_lowercase(),
            });
        }
        Ok(Lock { kernels })
    }

    /// The file's text: the header comment, then one table a series.
    pub fn render(&self) -> String {
        let mut out = HEADER.to_owned();
        for k in &self.kernels {
            let _ = write!(
                out,
                "\n[kernel.\"{}\"]\nrelease = \"{}\"\npackage = \"{}\"\n",
                k.series, k.release, k.package
            );
            if !k.other_packages.is_empty() {
                let list: Vec<String> = k
                    .other_packages
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect();
                let _ = writeln!(out, "other_packages = [{}]", list.join(", "));
            }
            let _ = writeln!(out, "version = \"{}\"", k.version);
            if let Some(s) = &k.suite {
                let _ = writeln!(out, "suite = \"{s}\"");
            }
            let _ = writeln!(out, "sha256 = \"{}\"", k.sha256);
        }
        out
    }

    /// Write [`Lock::render`] to `path`.
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        Ok(write_atomic(path, self.render().as_bytes())?)
    }

    /// The entry of `series`.
    pub fn get(&self, series: &str) -> Result<&Locked, LockError> {
        self.kernels
            .iter()
            .find(|k| k.series == series)
            .ok_or_else(|| LockError::NoSeries(series.to_owned()))
    }
}

/// The locked kernel, ready to boot: the cached one when it is the locked
/// version (no apt call), else exactly that version downloaded with its apt
/// state (sid's lists are fetched only when missing, and refreshed once only
/// when they lack the version or its download fails). Either way the image's
/// sha256 must be the locked one. Never another version.
pub fn resolve(locked: &Locked) -> Result<Kernel, LockError> {
    let kernels = cache::dir("kernels")?;
    let dest = kernels.join(&locked.release);
    // Threads and processes resolving the same kernel take turns.
    let _turn = cache::lock_exclusive(&kernels.join(format!(".lock-{}", locked.release)))?;
    let cached = debian::load_record(&dest);
    if let Some(k) = &cached {
        if Locked::of(&locked.series, k).is_some_and(|c| {
            (&c.package, &c.other_packages, &c.version)
                == (&locked.package, &locked.other_packages, &locked.version)
        }) {
            return verified(locked, k.clone());
        }
    }
    let cache = match cached.as_ref().map(|k| &k.origin) {
        Some(KernelOrigin::Debian {
            package, version, ..
        }) => format!(
            "not what the cache holds ({} has {package} = {version} instead)",
            dest.display()
        ),
        _ => format!("not in the cache ({})", dest.display()),
    };
    let apt = locked.apt()?;
    let unavailable = |why: String| LockError::Unavailable {
        what: locked.describe(),
        cache: cache.clone(),
        why,
    };
    apt.ensure_lists()?;
    let mut refreshed = false;
    loop {
        let why = match missing_from_lists(&apt, locked)? {
            Some(why) => why,
            None => match debian::fetch_exact(
                &apt,
                &locked.release,
                &locked.version,
                &locked.packaging(),
            ) {
                Ok(k) => return verified(locked, k),
                Err(e) => format!("downloading it failed: {e}"),
            },
        };
        if refreshed || apt.suite_name().is_none() {
            let why = match apt.suite_name() {
                None => format!("{why} (the host's apt lists: `apt-get update` refreshes them)"),
                Some(_) => why,
            };
            return Err(unavailable(why));
        }
        apt.update()
            .map_err(|e| unavailable(format!("{why}; refreshing the lists failed: {e}")))?;
        refreshed = true;
    }
}

/// Why the apt state's lists cannot provide the locked packages, if they cannot.
fn missing_from_lists(apt: &Apt, locked: &Locked) -> crate::Result<Option<String>> {
    let source = match (apt.suite_name(), apt.lists_date()) {
        (Some(s), Some(d)) => format!("{s}'s package lists (dated {d})"),
        (Some(s), None) => format!("{s}'s package lists"),
        (None, _) => "the host's package lists".to_owned(),
    };
    for p in std::iter::once(&locked.package).chain(&locked.other_packages) {
        let versions = apt.versions(p)?;
        if !versions.contains(&locked.version) {
            let have = if versions.is_empty() {
                "do not list that package at all (Debian keeps only the current version)".to_owned()
            } else {
                format!("list only {}", versions.join(", "))
            };
            return Ok(Some(format!(
                "{source} {have}, not {p} = {}",
                locked.version
            )));
        }
    }
    Ok(None)
}

/// `kernel` if its recorded sha256 and its image file's are the locked ones.
fn verified(locked: &Locked, kernel: Kernel) -> Result<Kernel, LockError> {
    let file = kernel
        .bzimage
        .clone()
        .unwrap_or_else(|| kernel.boot_image.clone());
    let on_disk = sha256_file(&file)?;
    for got in [&kernel.sha256, &on_disk] {
        if !got.eq_ignore_ascii_case(&locked.sha256) {
            let detail = match &kernel.origin {
                KernelOrigin::Debian {
                    package, version, ..
                } => format!("{package} = {version}, recorded sha256 {}", kernel.sha256),
                KernelOrigin::User { .. } => "not a Debian kernel".to_owned(),
            };
            return Err(LockError::Mismatch {
                what: locked.describe(),
                want: locked.sha256.clone(),
                path: file,
                got: got.clone(),
                detail,
            });
        }
    }
    Ok(kernel)
}

/// Re-resolve each of `series` to its newest kernel (refreshing sid's
/// lists: `lab kernel fetch --series S`), fetch it, and write the lock at
/// `path`. Returns the new lock.
pub fn refresh(path: &Path, series: &[&str]) -> Result<Lock, LockError> {
    let mut lock = Lock::default();
    for s in series {
        let channel: Channel = s
            .parse()
            .map_err(|e: debian::BadChannel| LockError::Parse {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
        let k = debian::fetch_with(channel, None, true)?;
        lock.kernels
            .push(Locked::of(s, &k).expect("fetch_with gives Debian kernels"));
    }
    lock.save(path)?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        Lock {
            kernels: vec![
                Locked {
                    series: "7.2".into(),
                    release: "7.2.13+deb14-amd64".into(),
                    package: "linux-binary-7.2.13+deb14-amd64".into(),
                    other_packages: vec![
                        "linux-modules-7.2.13+deb14-amd64".into(),
                        "linux-base-7.2.13+deb14-amd64".into(),
                    ],
                    version: "7.2.13-1".into(),
                    suite: Some("sid".into()),
                    sha256: "ab".repeat(32),
                },
                Locked {
                    series: "6.12".into(),
                    release: "6.12.118+deb12-amd64".into(),
                    package: "linux-image-6.12.118+deb12-amd64".into(),
                    other_packages: vec![],
                    version: "6.12.118-1~deb12u1".into(),
                    suite: None,
                    sha256: "cd".repeat(32),
                },
            ],
        }
    }

    #[test]
    fn lock_round_trips_through_its_text() {
        let lock = sample();
        let text = lock.render();
        assert!(text.starts_with("# The Debian kernels"));
        assert!(text.contains(REFRESH_COMMAND));
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        assert_eq!(lock.get("7.2").unwrap().spec(), "7.2.13");
        assert_eq!(lock.get("6.12").unwrap().spec(), "6.12.118");
        assert!(matches!(lock.get("7.3"), Err(LockError::NoSeries(_))));
    }

    #[test]
    fn malformed_locks_are_refused_with_the_line() {
        let ok = sample().render();
        for (bad, says) in [
            (ok.replace("sha256 = \"abab", "sha256 = \"zzab"), "64 hex"),
            (ok.replace("version = \"7.2.13-1\"\n", ""), "no version"),
            (
                ok.replace("suite = \"sid\"", "suit = \"sid\""),
                "unknown key suit",
            ),
            (
                ok.replace("[kernel.\"6.12\"]", "[kernel.\"6.12\"]\n[kernel.\"6.12\"]"),
                "twice",
            ),
            (ok.replace("[kernel.\"7.2\"]", "[kernels]"), "line"),
            (ok.replace("\"7.2.13-1\"", "'7.2.13-1'"), "plain \"string\""),
            (
                ok.replace("[kernel.\"7.2\"]", "[kernel.\"7\"]"),
                "MAJOR.MINOR",
            ),
        ] {
            let err = Lock::parse(&bad).unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    #[test]
    fn a_kernel_matches_its_lock_entry_only() {
        let lock = sample();
        let k = Kernel {
            origin: KernelOrigin::Debian {
                package: "linux-image-6.12.118+deb12-amd64".into(),
                version: "6.12.118-1~deb12u1".into(),
                other_packages: vec![],
                suite: None,
            },
            boot_image: "/k/vmlinux".into(),
            elf_without_pvh: false,
            bzimage: None,
            vmlinux: None,
            modules: None,
            release: "6.12.118+deb12-amd64".into(),
            version: String::new(),
            sha256: "cd".repeat(32),
        };
        assert!(lock.get("6.12").unwrap().matches(&k));
        assert!(!lock.get("7.2").unwrap().matches(&k));
        let other = Kernel {
            sha256: "ce".repeat(32),
            ..k
        };
        assert!(!lock.get("6.12").unwrap().matches(&other));
    }
}

//! Upstream arena selftests: `test_progs` from `tools/testing/selftests/bpf`
//! of the kernel under test's own source, reduced to the arena tests.
//!
//! The source is Debian's `linux-source-<series>` at exactly the kernel
//! package's version (fetched with `apt-get download`, unpacked with
//! `dpkg-deb -x`; nothing is installed) or a tree the user names. Its
//! `VERSION.PATCHLEVEL.SUBLEVEL` must match the kernel's release.
//!
//! The build copies the parts of the tree it reads into a scratch directory,
//! trims the selftests to the arena tests (`prog_tests/arena_*.c`,
//! `progs/arena_*.c`, `progs/verifier_arena*.c`, the arena part of
//! `prog_tests/verifier.c`) and runs the tree's own Makefile.
//!
//! Cache layout, under `selftests/` of the cache:
//! - `src/<debian-version>/`: `Makefile`, `tools/`, `kernel/bpf/` and
//!   `scripts/` of the source tarball; `.complete` is written last.
//! - `sha256/<id>`: the vmlinux sha256, by its path, size, mtime and inode.
//! - `build/<key>/`: `test_progs`, the BPF objects the tests open from their
//!   working directory, `build.log` and `build.json` (the [`SelftestBuild`]
//!   record, written last). `<key>` hashes the source identity (Debian
//!   version, or the tree's path and file metadata), the vmlinux sha256 and
//!   `clang --version`.
//!
//! `source` gets the tree, `trim` reduces the selftests, `build` runs the
//! build and `libs` finds the shared libraries `test_progs` needs.

mod build;
mod libs;
mod source;
mod subtests;
mod trim;

use std::fs;
use std::path::{Path, PathBuf};

use arena_protocol::paths;
use serde::{Deserialize, Serialize};

pub use build::build;
pub use source::{debian_source, debian_tree, debian_tree_for};
pub use trim::is_arena;

use crate::initramfs::ImageFile;
use crate::kernel::{Kernel, KernelOrigin};
use crate::{write_atomic, ImageError};

/// The selftests directory inside a kernel tree.
const BPF_DIR: &str = "tools/testing/selftests/bpf";

/// Why the selftests could not be provided. All but [`SelftestsError::Image`]
/// are the user's input: the source tree given, or none for a kernel that
/// needs one.
#[derive(Debug, thiserror::Error)]
pub enum SelftestsError {
    /// The source tree is another version than the kernel: selftests built
    /// from it would not test this kernel.
    #[error(
        "{}: the source tree is Linux {tree_version} but the kernel under test is {release}; \
         selftests built from another version would not test this kernel",
        makefile.display()
    )]
    VersionMismatch {
        /// The tree's top-level Makefile.
        makefile: PathBuf,
        /// `VERSION.PATCHLEVEL.SUBLEVEL` of the tree.
        tree_version: String,
        /// The kernel's release.
        release: String,
    },
    /// A user kernel, whose source the lab cannot fetch, without `--kernel-src`.
    #[error(
        "the selftests for the user kernel {release} ({}) must be built from its own source: \
         pass its source tree with --kernel-src",
        kernel.display()
    )]
    NoSource {
        /// The kernel's release.
        release: String,
        /// The kernel file given.
        kernel: PathBuf,
    },
    /// The tree given has no BPF selftests Makefile (the path named).
    #[error("{}: not a kernel source tree with BPF selftests", .0.display())]
    NotASourceTree(PathBuf),
    /// Fetching, unpacking or building failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl SelftestsError {
    /// Whether the user's input is at fault rather than the lab.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, SelftestsError::Image(_))
    }
}

/// A cached `test_progs` build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelftestBuild {
    /// The build directory in the cache.
    pub dir: PathBuf,
    /// The `test_progs` binary (in `dir`).
    pub test_progs: PathBuf,
    /// Other files the tests open from their cwd, by name (in `dir`).
    pub runtime_files: Vec<String>,
    /// Test names compiled in (what `test_progs -l` lists).
    pub tests: Vec<String>,
    /// Arena tests of the tree that were not built, with why: the guest
    /// reports each as an error rather than leaving it out silently.
    #[serde(default)]
    pub not_built: Vec<NotBuilt>,
    /// Subtests known from the build (libarena's, one per program), by
    /// test: what the guest reports when the kernel's config rules a test
    /// out.
    #[serde(default)]
    pub subtests: std::collections::BTreeMap<String, Vec<String>>,
    /// `VERSION.PATCHLEVEL.SUBLEVEL` of the source tree.
    pub source_version: String,
    /// Where the source came from.
    pub source: String,
}

/// An arena test the build leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotBuilt {
    /// Test name (as `test_progs -l` would list it).
    pub test: String,
    /// Why it is not built.
    pub reason: String,
}

/// Files to add to the image so `test_progs` runs in the guest, built from
/// the kernel source tree `kernel_src` (needed for a user kernel) or else the
/// kernel's Debian source package: `test_progs`, the files it opens from its
/// cwd and the shared libraries it loads (with the dynamic loader) at their
/// host paths.
pub fn image_files_from(
    kernel: &Kernel,
    kernel_src: Option<&Path>,
) -> Result<Vec<ImageFile>, SelftestsError> {
    let b = build(kernel, kernel_src)?;
    let mut files = vec![ImageFile {
        guest_path: paths::entry(paths::TEST_PROGS).to_owned(),
        host_path: b.test_progs.clone(),
        mode: 0o755,
    }];
    // libbpf resolves `__kconfig` externs (7.2's arena_spin_lock reads
    // CONFIG_NR_CPUS) from /boot/config-$(uname -r) when there is no /proc/config.gz.
    if let Some(config) = kernel_config(kernel, kernel_src) {
        files.push(ImageFile {
            guest_path: paths::entry_in(paths::BOOT_DIR, &format!("config-{}", kernel.release)),
            host_path: config,
            mode: 0o644,
        });
    }
    let not_built: String = b
        .not_built
        .iter()
        .map(|n| format!("{}\t{}\n", n.test, n.reason.replace(['\t', '\n'], " ")))
        .collect();
    let subtests: String = b
        .subtests
        .iter()
        .flat_map(|(t, subs)| subs.iter().map(move |s| format!("{t}\t{s}\n")))
        .collect();
    for (guest_path, list) in [(paths::NOT_BUILT, not_built), (paths::SUBTESTS, subtests)] {
        if !list.is_empty() {
            files.push(listing(&b.dir, guest_path, &list)?);
        }
    }
    for name in &b.runtime_files {
        files.push(ImageFile {
            guest_path: paths::entry_in(paths::SELFTESTS_DIR, name),
            host_path: b.dir.join(name),
            mode: 0o644,
        });
    }
    files.extend(libs::image_files(&b.test_progs)?);
    Ok(files)
}

/// A listing for the guest at `guest_path`, kept as a file in the build's
/// folder (rewritten only when it changes).
fn listing(dir: &Path, guest_path: &str, list: &str) -> Result<ImageFile, SelftestsError> {
    let path = dir.join(Path::new(guest_path).file_name().expect("a file"));
    if fs::read_to_string(&path).ok().as_deref() != Some(list) {
        write_atomic(&path, list.as_bytes())?;
    }
    Ok(ImageFile {
        guest_path: paths::entry(guest_path).to_owned(),
        host_path: path,
        mode: 0o644,
    })
}

/// The kernel's config: `config` beside a Debian kernel in the cache, or the
/// `.config` of the user's tree.
fn kernel_config(kernel: &Kernel, kernel_src: Option<&Path>) -> Option<PathBuf> {
    let candidate = match (&kernel.origin, kernel_src) {
        (_, Some(tree)) => tree.join(".config"),
        (KernelOrigin::Debian { .. }, None) => kernel.bzimage.as_deref()?.with_file_name("config"),
        (KernelOrigin::User { .. }, None) => return None,
    };
    candidate.is_file().then_some(candidate)
}

/// Remove `.tmp-*-<pid>` directories left by processes that died mid-build.
fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with(".tmp-"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(origin: KernelOrigin, release: &str) -> Kernel {
        Kernel {
            origin,
            boot_image: "/nonexistent/vmlinux".into(),
            elf_without_pvh: false,
            bzimage: None,
            vmlinux: Some("/nonexistent/vmlinux".into()),
            modules: None,
            release: release.into(),
            version: String::new(),
            sha256: String::new(),
        }
    }

    #[test]
    fn user_kernel_needs_source_and_matching_version() {
        let user = kernel(
            KernelOrigin::User {
                path: "/tmp/bzImage".into(),
            },
            "6.12.117",
        );
        let err = build(&user, None).unwrap_err();
        assert!(matches!(err, SelftestsError::NoSource { .. }), "{err:?}");
        assert!(err.to_string().contains("--kernel-src"), "{err}");

        let dir = std::env::temp_dir().join(format!("arena-st-src-{}", std::process::id()));
        fs::create_dir_all(dir.join(BPF_DIR)).unwrap();
        fs::write(dir.join(BPF_DIR).join("Makefile"), "").unwrap();
        fs::write(
            dir.join("Makefile"),
            "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 110\n",
        )
        .unwrap();
        let err = build(&user, Some(&dir)).unwrap_err();
        assert!(
            matches!(err, SelftestsError::VersionMismatch { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("6.12.110") && text.contains("6.12.117"),
            "{text}"
        );
        let err = image_files_from(&user, Some(Path::new("/nonexistent-tree"))).unwrap_err();
        assert!(matches!(err, SelftestsError::NotASourceTree(_)), "{err:?}");
        assert!(
            err.to_string().contains("not a kernel source tree"),
            "{err}"
        );
        assert!(err.is_invalid_input());
        fs::remove_dir_all(dir).unwrap();
    }
}

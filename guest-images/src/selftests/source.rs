//! The kernel source tree the selftests are built from: a tree the user
//! names, or Debian's `linux-source-<series>` at exactly the kernel
//! package's version, unpacked into the cache (`src/<debian-version>/`). Its
//! version must be the kernel's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{remove_stale_scratch, SelftestsError, BPF_DIR};
use crate::kernel::apt::Apt;
use crate::kernel::{debian, Kernel, KernelOrigin};
use crate::{cache, io_err, run_tool, sha256_hex, write_atomic, ImageError, Result};

/// Parts of a kernel tree the build reads (`disasm.c` links into
/// `kernel/bpf`, libbpf runs `scripts/bpf_doc.py`).
const SOURCE_PARTS: &[&str] = &["Makefile", "tools", "kernel/bpf", "scripts"];
/// Marks a complete source extraction.
const COMPLETE: &str = ".complete";

/// A kernel source tree to build from.
pub(super) struct Source {
    /// The tree's top directory.
    pub root: PathBuf,
    /// Cache identity, when known without looking at the files.
    pub identity: Option<String>,
    /// Where it came from, for the build record.
    pub description: String,
}

/// The tree `kernel_src`, or else the Debian source package of a Debian
/// kernel (a user kernel's source cannot be fetched).
pub(super) fn resolve_source(
    kernel: &Kernel,
    kernel_src: Option<&Path>,
) -> std::result::Result<Source, SelftestsError> {
    if let Some(tree) = kernel_src {
        let makefile = tree.join(BPF_DIR).join("Makefile");
        if !makefile.is_file() {
            return Err(SelftestsError::NotASourceTree(makefile));
        }
        let root = fs::canonicalize(tree).map_err(io_err(tree))?;
        return Ok(Source {
            description: root.display().to_string(),
            root,
            identity: None,
        });
    }
    match &kernel.origin {
        KernelOrigin::Debian { version, suite, .. } => {
            let series = series_of(&kernel.release).ok_or_else(|| {
                ImageError::NoKernelPackage(format!(
                    "no kernel series in release {}",
                    kernel.release
                ))
            })?;
            let package = format!("linux-source-{series}");
            Ok(Source {
                root: debian_source_from(suite.as_deref(), &series, version)?,
                identity: Some(format!("debian {package}={version}")),
                description: format!("{package}={version}"),
            })
        }
        KernelOrigin::User { path } => Err(SelftestsError::NoSource {
            release: kernel.release.clone(),
            kernel: path.clone(),
        }),
    }
}

/// `MAJOR.MINOR` of a release (`6.12.117+deb12-amd64` → `6.12`).
fn series_of(release: &str) -> Option<String> {
    let (major, minor, _) = release_numbers(release)?;
    Some(format!("{major}.{minor}"))
}

/// The needed parts of `linux-source-<series>` at `version`, unpacked into
/// the cache (downloaded on first use with the host's apt; nothing is installed).
pub fn debian_source(series: &str, version: &str) -> Result<PathBuf> {
    debian_source_from(None, series, version)
}

/// The whole of `linux-source-<series>` at `version`, unpacked into the
/// cache (`kernel-src/<version>`): a tree to build (`lab kernel build`) and
/// patch, from the lab's own apt state of `suite`, or the host's.
pub fn debian_tree(suite: Option<&str>, series: &str, version: &str) -> Result<PathBuf> {
    let apt = match suite {
        Some(s) => Apt::suite(s)?,
        None => Apt::host(),
    };
    let package = format!("linux-source-{series}");
    let dest = cache::dir("kernel-src")?.join(version);
    unpack_cached(&apt, &package, version, &dest, None)
}

/// [`debian_tree`] for one of Debian's kernels: the source it was built from.
pub fn debian_tree_for(kernel: &Kernel) -> Result<PathBuf> {
    let KernelOrigin::Debian { version, suite, .. } = &kernel.origin else {
        return Err(ImageError::NoKernelPackage(format!(
            "kernel {} is not one of Debian's: its source is the tree it was built from",
            kernel.release
        )));
    };
    let series = series_of(&kernel.release).ok_or_else(|| {
        ImageError::NoKernelPackage(format!("no kernel series in release {}", kernel.release))
    })?;
    debian_tree(suite.as_deref(), &series, version)
}

/// [`debian_source`] from the lab's own apt state of `suite` (where the
/// kernel came from), or the host's apt when `None`.
fn debian_source_from(suite: Option<&str>, series: &str, version: &str) -> Result<PathBuf> {
    let apt = match suite {
        Some(s) => Apt::suite(s)?,
        None => Apt::host(),
    };
    let package = format!("linux-source-{series}");
    let dest = cache::dir("selftests/src")?.join(version);
    unpack_cached(&apt, &package, version, &dest, Some(SOURCE_PARTS))
}

/// `package`'s source tarball unpacked at `dest` once (`parts`: only these
/// top-level paths; `None`: all), marked complete only when whole.
fn unpack_cached(
    apt: &Apt,
    package: &str,
    version: &str,
    dest: &Path,
    parts: Option<&[&str]>,
) -> Result<PathBuf> {
    if dest.join(COMPLETE).is_file() {
        return Ok(dest.to_owned());
    }
    let parent = dest.parent().expect("src dir");
    remove_stale_scratch(parent);
    let work = parent.join(format!(".tmp-{version}-{}", std::process::id()));
    let result = unpack_source(apt, package, version, &work, dest, parts);
    let _ = fs::remove_dir_all(&work);
    result.map(|()| dest.to_owned())
}

fn unpack_source(
    apt: &Apt,
    package: &str,
    version: &str,
    work: &Path,
    dest: &Path,
    parts: Option<&[&str]>,
) -> Result<()> {
    apt.ensure_lists()?;
    let root = debian::unpack_packages(apt, &[package], version, work)?;
    let usr_src = root.join("usr/src");
    let tarball = find_file(&usr_src, |n| n.starts_with(package) && n.contains(".tar"))?;
    let top = package;
    let tree = work.join("tree");
    fs::create_dir_all(&tree).map_err(io_err(&tree))?;
    let mut tar = Command::new("tar");
    tar.arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg("--strip-components=1");
    for part in parts.unwrap_or_default() {
        tar.arg(format!("{top}/{part}"));
    }
    run_tool(&mut tar)?;
    write_atomic(&tree.join(COMPLETE), version.as_bytes())?;
    if dest.join(COMPLETE).is_file() {
        return Ok(()); // another process finished first
    }
    let _ = fs::remove_dir_all(dest);
    fs::rename(&tree, dest).map_err(io_err(dest))
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<PathBuf> {
    fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .ok_or_else(|| ImageError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "expected file missing"),
        })
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` from a top-level kernel Makefile.
fn makefile_version(makefile: &str) -> Option<String> {
    let field = |name: &str| {
        makefile.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let sub = field("SUBLEVEL").filter(|s| !s.is_empty());
    Some(format!(
        "{}.{}.{}",
        field("VERSION")?,
        field("PATCHLEVEL")?,
        sub.as_deref().unwrap_or("0")
    ))
}

/// The numbers leading a release (`6.12.117+deb12-amd64` → 6, 12, 117);
/// a missing sublevel is 0.
fn release_numbers(release: &str) -> Option<(u32, u32, u32)> {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    let major = nums.next()??;
    let minor = nums.next()??;
    // Only a `.` continues the version (`6.12-rc1` has sublevel 0).
    let after_minor = release
        .splitn(3, '.')
        .nth(2)
        .filter(|s| s.starts_with(|c: char| c.is_ascii_digit()));
    let sub = match after_minor {
        Some(_) => nums.next()??,
        None => 0,
    };
    Some((major, minor, sub))
}

/// The tree's version, refused unless it is the kernel's.
pub(super) fn check_version(
    root: &Path,
    release: &str,
) -> std::result::Result<String, SelftestsError> {
    let makefile = root.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(io_err(&makefile))?;
    let Some(version) = makefile_version(&text) else {
        return Err(ImageError::Io {
            path: makefile,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no VERSION/PATCHLEVEL in the kernel Makefile",
            ),
        }
        .into());
    };
    if release_numbers(&version) != release_numbers(release) || release_numbers(release).is_none() {
        return Err(SelftestsError::VersionMismatch {
            makefile,
            tree_version: version,
            release: release.to_owned(),
        });
    }
    Ok(version)
}

/// Whether a path (relative to the tree root) is left out of the copy: VCS
/// data and the products of an earlier build.
fn skipped(rel: &Path, is_dir: bool) -> bool {
    let s = rel.to_string_lossy();
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == ".git" {
        return true;
    }
    if is_dir {
        let outputs = ["tools", "no_alu32", "cpuv4", "bpf_gcc", "feature"];
        return s
            .strip_prefix("tools/testing/selftests/bpf/")
            .is_some_and(|sub| outputs.contains(&sub));
    }
    let product_ext = [".o", ".ko", ".a", ".d", ".cmd", ".so", ".mod"]
        .iter()
        .any(|e| name.ends_with(e));
    let in_bpf = s.starts_with("tools/testing/selftests/bpf/");
    let generated = in_bpf
        && (name.ends_with(".skel.h")
            || name == "tests.h"
            || name == "vmlinux.h"
            || (name.starts_with("test_progs") && !name.contains('.')));
    product_ext || generated
}

/// Visit every file and symlink under `root/rel` not [`skipped`].
fn walk(
    root: &Path,
    rel: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
    if skipped(rel, meta.is_dir()) {
        return Ok(());
    }
    if !meta.is_dir() {
        return visit(rel, &meta);
    }
    let mut entries: Vec<_> = fs::read_dir(&path)
        .map_err(io_err(&path))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        walk(root, &rel.join(name), visit)?;
    }
    Ok(())
}

/// Copy [`SOURCE_PARTS`] of the tree at `from` to `to` (symlinks as symlinks).
pub(super) fn copy_parts(from: &Path, to: &Path) -> Result<()> {
    for part in SOURCE_PARTS {
        walk(from, Path::new(part), &mut |rel, meta| {
            let dst = to.join(rel);
            let parent = dst.parent().expect("relative path");
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            let src = from.join(rel);
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&src).map_err(io_err(&src))?;
                std::os::unix::fs::symlink(target, &dst).map_err(io_err(&dst))
            } else {
                fs::copy(&src, &dst).map(drop).map_err(io_err(&src))
            }
        })?;
    }
    Ok(())
}

/// Identity of a user tree: its path and the names, sizes and mtimes of the
/// files the build reads (cheap, and changes with any edit).
pub(super) fn fingerprint(root: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut text = format!("tree {}\n", root.display());
    for part in SOURCE_PARTS {
        walk(root, Path::new(part), &mut |rel, meta| {
            text.push_str(&format!(
                "{} {} {}.{}\n",
                rel.display(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
            Ok(())
        })?;
    }
    Ok(format!(
        "tree {} {}",
        root.display(),
        sha256_hex(text.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compared() {
        let mk =
            "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby\n";
        assert_eq!(makefile_version(mk).as_deref(), Some("6.12.117"));
        assert_eq!(
            makefile_version("VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL =\n").as_deref(),
            Some("6.13.0")
        );
        assert_eq!(release_numbers("6.12.117+deb12-amd64"), Some((6, 12, 117)));
        assert_eq!(release_numbers("6.13.0-rc3"), Some((6, 13, 0)));
        assert_eq!(release_numbers("6.13-rc3"), Some((6, 13, 0)));
        assert_eq!(release_numbers("garbage"), None);
        assert_eq!(series_of("6.12.117+deb12-amd64").as_deref(), Some("6.12"));
    }

    #[test]
    fn copy_skips_build_products() {
        let skip = |p: &str, d: bool| skipped(Path::new(p), d);
        assert!(!skip("tools/testing/selftests/net", true));
        assert!(!skip("tools/testing/selftests/bpf", true));
        assert!(!skip("tools/testing/selftests/bpf/progs", true));
        assert!(skip("tools/testing/selftests/bpf/tools", true));
        assert!(!skip("tools/testing/selftests/lib.mk", false));
        assert!(skip("tools/testing/selftests/bpf/test_progs", false));
        assert!(!skip("tools/testing/selftests/bpf/test_progs.c", false));
        assert!(skip(
            "tools/testing/selftests/bpf/prog_tests/tests.h",
            false
        ));
        assert!(skip("kernel/bpf/verifier.o", false));
        assert!(skip("tools/.git", true));
        assert!(!skip("tools/lib/bpf/libbpf.c", false));
    }

    #[test]
    fn tree_of_another_version_is_a_mismatch() {
        let dir = std::env::temp_dir().join(format!("arena-st-version-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("Makefile"),
            "VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 2\n",
        )
        .unwrap();
        let err = check_version(&dir, "6.12.117+deb12-amd64").unwrap_err();
        assert!(
            matches!(&err, SelftestsError::VersionMismatch { tree_version, release, .. }
                if tree_version == "6.13.2" && release == "6.12.117+deb12-amd64"),
            "{err:?}"
        );
        assert!(err.is_invalid_input());
        assert_eq!(check_version(&dir, "6.13.2-arena").unwrap(), "6.13.2");
        fs::write(dir.join("Makefile"), "NAME = none\n").unwrap();
        let err = check_version(&dir, "6.13.2").unwrap_err();
        assert!(matches!(err, SelftestsError::Image(_)), "{err:?}");
        fs::remove_dir_all(dir).unwrap();
    }
}

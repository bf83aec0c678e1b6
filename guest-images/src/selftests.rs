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

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::initramfs::ImageFile;
use crate::kernel::apt::Apt;
use crate::kernel::{Kernel, KernelOrigin};
use crate::{cache, io_err, run_tool, sha256_file, sha256_hex, write_atomic, ImageError, Result};

/// Bumped whenever trimming or the build changes, so cached builds are redone.
const LAYOUT: &str = "arena-selftests-v3";
/// Guest directory of the selftests; `test_progs` runs with it as cwd.
pub const GUEST_DIR: &str = "selftests";
/// Where shared libraries go in the guest (a default search directory of the
/// x86_64 glibc loader).
const GUEST_LIB_DIR: &str = "lib/x86_64-linux-gnu";
/// The selftests directory inside a kernel tree.
const BPF_DIR: &str = "tools/testing/selftests/bpf";
/// Parts of a kernel tree the build reads (`disasm.c` links into
/// `kernel/bpf`, libbpf runs `scripts/bpf_doc.py`).
const SOURCE_PARTS: &[&str] = &["Makefile", "tools", "kernel/bpf", "scripts"];
/// Marks a complete source extraction.
const COMPLETE: &str = ".complete";
/// The build record.
const RECORD: &str = "build.json";
/// BPF program always kept: `resolve_btfids` reads it when linking test_progs.
const BTF_DATA: &str = "btf_data.c";

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

/// Name of the image file listing [`NotBuilt`] tests (`name<TAB>reason` lines).
pub const NOT_BUILT_FILE: &str = "not_built.tsv";

/// Files to add to the image so `/selftests/test_progs` runs in the guest,
/// built from the kernel source tree `kernel_src` (needed for a user kernel)
/// or else the kernel's Debian source package: `test_progs`, the files it
/// opens from its cwd and the shared libraries it loads (with the dynamic
/// loader) at their host paths.
pub fn image_files_from(kernel: &Kernel, kernel_src: Option<&Path>) -> Result<Vec<ImageFile>> {
    let b = build(kernel, kernel_src)?;
    let mut files = vec![ImageFile {
        guest_path: format!("{GUEST_DIR}/test_progs"),
        host_path: b.test_progs.clone(),
        mode: 0o755,
    }];
    // libbpf resolves `__kconfig` externs (7.2's arena_spin_lock reads
    // CONFIG_NR_CPUS) from /boot/config-$(uname -r) when there is no /proc/config.gz.
    if let Some(config) = kernel_config(kernel, kernel_src) {
        files.push(ImageFile {
            guest_path: format!("boot/config-{}", kernel.release),
            host_path: config,
            mode: 0o644,
        });
    }
    if !b.not_built.is_empty() {
        let list: String = b
            .not_built
            .iter()
            .map(|n| format!("{}\t{}\n", n.test, n.reason.replace(['\t', '\n'], " ")))
            .collect();
        let path = b.dir.join(NOT_BUILT_FILE);
        if fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            write_atomic(&path, list.as_bytes())?;
        }
        files.push(ImageFile {
            guest_path: format!("{GUEST_DIR}/{NOT_BUILT_FILE}"),
            host_path: path,
            mode: 0o644,
        });
    }
    for name in &b.runtime_files {
        files.push(ImageFile {
            guest_path: format!("{GUEST_DIR}/{name}"),
            host_path: b.dir.join(name),
            mode: 0o644,
        });
    }
    let bytes = fs::read(&b.test_progs).map_err(io_err(&b.test_progs))?;
    let interp = interpreter(&bytes);
    let mut libs = shared_libraries(&b.test_progs)?;
    // glibc dlopens libgcc_s for pthread_exit (7.2's arena_spin_lock threads
    // abort without it); ldd cannot see that. It lives beside libc.
    let gcc_s = libs
        .iter()
        .find(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
        .and_then(|libc| Some(libc.parent()?.join("libgcc_s.so.1")))
        .filter(|p| p.is_file());
    libs.extend(gcc_s);
    for lib in libs {
        let real = fs::canonicalize(&lib).map_err(io_err(&lib))?;
        // The loader keeps its own path (PT_INTERP); every other library goes
        // into a directory the guest's loader searches by default, whatever
        // odd place the host resolved it from.
        let guest_path = if interp.as_deref() == lib.to_str() {
            lib.to_string_lossy().trim_start_matches('/').to_owned()
        } else {
            let name = lib
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{GUEST_LIB_DIR}/{name}")
        };
        files.push(ImageFile {
            guest_path,
            host_path: real,
            mode: 0o755,
        });
    }
    Ok(files)
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

/// Build `test_progs` with the arena tests for `kernel` (or return the cached
/// build of the same inputs), from `kernel_src` or else the Debian source
/// package matching a Debian kernel.
pub fn build(kernel: &Kernel, kernel_src: Option<&Path>) -> Result<SelftestBuild> {
    // One build at a time in this process (other processes use other scratch
    // directories, and the first to finish wins the rename).
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let source = resolve_source(kernel, kernel_src)?;
    let source_version = check_version(&source.root, &kernel.release)?;
    let vmlinux = kernel.vmlinux.as_deref().ok_or_else(|| {
        ImageError::NoKernelPackage(format!(
            "kernel {} has no uncompressed vmlinux, whose BTF the selftests are built against",
            kernel.release
        ))
    })?;
    let vmlinux = fs::canonicalize(vmlinux).map_err(io_err(vmlinux))?;
    let clang = crate::bpf::clang();
    let clang_version = run_tool(Command::new(&clang).arg("--version"))?.stdout;
    let identity = match &source.identity {
        Some(id) => id.clone(),
        None => fingerprint(&source.root)?,
    };
    let key_material = format!(
        "{LAYOUT}\n{identity}\n{}\n{}",
        vmlinux_sha256(&vmlinux)?,
        String::from_utf8_lossy(&clang_version)
    );
    let key = sha256_hex(key_material.as_bytes());
    let builds = cache::dir("selftests/build")?;
    let dest = builds.join(&key[..24]);
    if let Some(b) = load_record(&dest) {
        return Ok(b);
    }

    remove_stale_scratch(&builds);
    let scratch = builds.join(format!(".tmp-{}-{}", &key[..24], std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let result = build_in(&scratch, &source, &source_version, &vmlinux, &clang, &dest);
    let _ = fs::remove_dir_all(&scratch);
    result
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

/// sha256 of the vmlinux, remembered by path, size, mtime and inode (hashing
/// 60 MB on every call would make a cached build slow to find).
fn vmlinux_sha256(vmlinux: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(vmlinux).map_err(io_err(vmlinux))?;
    let id = format!(
        "{} {} {}.{} {}",
        vmlinux.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    );
    let memo = cache::dir("selftests/sha256")?.join(&sha256_hex(id.as_bytes())[..24]);
    if let Ok(sha) = fs::read_to_string(&memo) {
        if sha.len() == 64 {
            return Ok(sha);
        }
    }
    let sha = sha256_file(vmlinux)?;
    write_atomic(&memo, sha.as_bytes())?;
    Ok(sha)
}

/// Copy, trim and build in `scratch`, then move the products to `dest`.
fn build_in(
    scratch: &Path,
    source: &Source,
    source_version: &str,
    vmlinux: &Path,
    clang: &str,
    dest: &Path,
) -> Result<SelftestBuild> {
    let work = scratch.join("work");
    copy_parts(&source.root, &work)?;
    let bpf = work.join(BPF_DIR);
    let trimmed = trim(&bpf)?;

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&bpf)
        .arg(format!("-j{jobs}"))
        .arg(format!("CLANG={clang}"))
        .arg(format!("LLC={}", llvm_tool(clang, "llc")))
        .arg(format!("LLVM_STRIP={}", llvm_tool(clang, "llvm-strip")))
        .arg("feature-llvm=0")
        .arg(format!("VMLINUX_BTF={}", vmlinux.display()))
        // Helpers and modules other tests need (bpf_testmod.ko, urandom_read, ...).
        .arg("TRUNNER_EXTRA_FILES=")
        .arg(format!("LSKELS={}", trimmed.lskels.join(" ")))
        .arg(format!("LSKELS_EXTRA={}", trimmed.lskels_extra.join(" ")))
        .arg("LINKED_SKELS=")
        // 7.2's signed light skeletons (fentry_test, ...): not arena tests.
        .arg("LSKELS_SIGNED=")
        // 7.2 links libarena's skeleton into every test_progs; only the
        // libarena tests use it, and clang-19 crashes on its buddy.bpf.c.
        .arg("LIBARENA_SKEL=")
        .arg("LIBARENA_ASAN_SKEL=")
        .arg("test_progs");
    for var in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "O",
        "KBUILD_OUTPUT",
        "OUTPUT",
        "ARCH",
        "SRCARCH",
        "CROSS_COMPILE",
        "CC",
        "CFLAGS",
        "LDFLAGS",
        "LDLIBS",
        "LLVM",
    ] {
        make.env_remove(var);
    }
    let out = run_tool(&mut make)?;

    let products = scratch.join("out");
    fs::create_dir_all(&products).map_err(io_err(&products))?;
    let mut log = out.stdout;
    log.extend_from_slice(&out.stderr);
    write_atomic(&products.join("build.log"), &log)?;
    let copy = |name: &str| -> Result<()> {
        let from = bpf.join(name);
        fs::copy(&from, products.join(name)).map_err(io_err(&from))?;
        Ok(())
    };
    copy("test_progs")?;
    let mut runtime_files = Vec::new();
    for name in &trimmed.runtime_objects {
        if bpf.join(name).is_file() {
            copy(name)?;
            runtime_files.push(name.clone());
        }
    }
    let record = SelftestBuild {
        dir: dest.to_owned(),
        test_progs: dest.join("test_progs"),
        runtime_files,
        tests: trimmed.tests,
        not_built: trimmed.not_built,
        source_version: source_version.to_owned(),
        source: source.description.clone(),
    };
    let json = serde_json::to_vec_pretty(&record).expect("serialisable");
    write_atomic(&products.join(RECORD), &json)?;
    if let Err(e) = fs::rename(&products, dest) {
        // Another process may have finished the same build first.
        return load_record(dest).ok_or_else(|| io_err(dest)(e));
    }
    Ok(record)
}

/// The completed build in `dir`, if any (paths re-anchored at `dir`).
fn load_record(dir: &Path) -> Option<SelftestBuild> {
    let text = fs::read_to_string(dir.join(RECORD)).ok()?;
    let mut b: SelftestBuild = serde_json::from_str(&text).ok()?;
    b.dir = dir.to_owned();
    b.test_progs = dir.join("test_progs");
    b.test_progs.is_file().then_some(b)
}

/// `llc`/`llvm-strip` matching a clang name (`clang-19` → `llc-19`).
fn llvm_tool(clang: &str, tool: &str) -> String {
    let path = Path::new(clang);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(clang);
    match name.strip_prefix("clang") {
        Some(suffix) => path
            .with_file_name(format!("{tool}{suffix}"))
            .to_string_lossy()
            .into_owned(),
        None => tool.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Source trees

/// A kernel source tree to build from.
struct Source {
    root: PathBuf,
    /// Cache identity, when known without looking at the files.
    identity: Option<String>,
    description: String,
}

fn resolve_source(kernel: &Kernel, kernel_src: Option<&Path>) -> Result<Source> {
    if let Some(tree) = kernel_src {
        let makefile = tree.join(BPF_DIR).join("Makefile");
        if !makefile.is_file() {
            return Err(ImageError::Io {
                path: makefile,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a kernel source tree with BPF selftests",
                ),
            });
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
        KernelOrigin::User { path } => Err(ImageError::NoKernelPackage(format!(
            "the selftests for the user kernel {} ({}) must be built from its own source: \
             pass its source tree with --kernel-src",
            kernel.release,
            path.display()
        ))),
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

/// [`debian_source`] from the lab's own apt state of `suite` (where the
/// kernel came from), or the host's apt when `None`.
pub fn debian_source_from(suite: Option<&str>, series: &str, version: &str) -> Result<PathBuf> {
    let apt = match suite {
        Some(s) => Apt::suite(s)?,
        None => Apt::host(),
    };
    let package = format!("linux-source-{series}");
    let dest = cache::dir("selftests/src")?.join(version);
    if dest.join(COMPLETE).is_file() {
        return Ok(dest);
    }
    let parent = dest.parent().expect("src dir");
    remove_stale_scratch(parent);
    let work = parent.join(format!(".tmp-{version}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = unpack_source(&apt, &package, version, &work, &dest);
    let _ = fs::remove_dir_all(&work);
    result.map(|()| dest)
}

fn unpack_source(apt: &Apt, package: &str, version: &str, work: &Path, dest: &Path) -> Result<()> {
    apt.ensure_lists()?;
    let deb = apt.download(package, version, work)?;
    let root = work.join("root");
    run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb).map_err(io_err(&deb))?;
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
    for part in SOURCE_PARTS {
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
pub fn makefile_version(makefile: &str) -> Option<String> {
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
fn check_version(root: &Path, release: &str) -> Result<String> {
    let makefile = root.join("Makefile");
    let text = fs::read_to_string(&makefile).map_err(io_err(&makefile))?;
    let invalid = |why: String| ImageError::Io {
        path: makefile.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let version = makefile_version(&text)
        .ok_or_else(|| invalid("no VERSION/PATCHLEVEL in the kernel Makefile".into()))?;
    if release_numbers(&version) != release_numbers(release) || release_numbers(release).is_none() {
        return Err(invalid(format!(
            "the source tree is Linux {version} but the kernel under test is {release}; \
             selftests built from another version would not test this kernel"
        )));
    }
    Ok(version)
}

// ---------------------------------------------------------------------------
// Copying a tree

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
fn copy_parts(from: &Path, to: &Path) -> Result<()> {
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
fn fingerprint(root: &Path) -> Result<String> {
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

// ---------------------------------------------------------------------------
// Trimming to the arena tests

/// Whether a test or BPF program name (file stem) is an arena one:
/// `arena_*` or `verifier_arena*`.
pub fn is_arena(stem: &str) -> bool {
    stem.starts_with("arena_") || stem.starts_with("verifier_arena")
}

/// Whether a file of `prog_tests/` is kept: headers, arena tests, and
/// `verifier.c` (which is then reduced by [`reduce_verifier`]).
pub fn keep_test_file(name: &str) -> bool {
    match name.strip_suffix(".c") {
        Some(stem) => stem == "verifier" || is_arena(stem),
        None => true,
    }
}

/// Kinds of skeleton header a test includes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SkeletonRefs {
    /// `<name>.skel.h` (and `.subskel.h`).
    pub skel: BTreeSet<String>,
    /// `<name>.lskel.h` (light skeletons).
    pub lskel: BTreeSet<String>,
}

/// Skeleton headers a C file includes, by BPF program name.
pub fn skeleton_refs(text: &str) -> SkeletonRefs {
    let mut refs = SkeletonRefs::default();
    for header in quoted_includes(text) {
        if let Some(n) = header.strip_suffix(".lskel.h") {
            refs.lskel.insert(n.to_owned());
        } else if let Some(n) = header.strip_suffix(".subskel.h") {
            refs.skel.insert(n.to_owned());
        } else if let Some(n) = header.strip_suffix(".skel.h") {
            refs.skel.insert(n.to_owned());
        }
    }
    refs
}

/// The `#include "..."` names of a C file.
fn quoted_includes(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let rest = l.trim_start().strip_prefix('#')?.trim_start();
        let rest = rest
            .strip_prefix("include")?
            .trim_start()
            .strip_prefix('"')?;
        rest.split_once('"').map(|(name, _)| name)
    })
}

/// Names of the tests a `prog_tests` file defines (`void test_<name>(void)`
/// and `void serial_test_<name>(void)`), as the Makefile's tests.h sees them.
pub fn test_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("void ")?;
            let rest = rest.strip_prefix("serial_").unwrap_or(rest);
            let (name, after) = rest.strip_prefix("test_")?.split_once('(')?;
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let args_ok = after.starts_with(')') || after.starts_with("void)");
            (ok && args_ok).then(|| name.to_owned())
        })
        .collect()
}

/// `"<name>.bpf.o"` string literals: objects a test opens from its cwd.
pub fn bpf_object_refs(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.ends_with(".bpf.o")
                && !s.contains('/')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        })
        .map(str::to_owned)
        .collect()
}

/// Reduce `prog_tests/verifier.c` to its arena tests: drop the other
/// skeleton includes, the other `test_*` functions and any top-level item
/// using a dropped skeleton; silence warnings about helpers left unused.
pub fn reduce_verifier(text: &str) -> String {
    let mut dropped: Vec<String> = Vec::new();
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines() {
        let header = quoted_includes(line).next();
        match header.and_then(|h| h.strip_suffix(".skel.h")) {
            Some(stem) if !is_arena(stem) => dropped.push(format!("{stem}__")),
            _ => lines.push(line),
        }
    }
    let mut out = String::new();
    for item in top_level_items(&lines) {
        let joined = item.join("\n");
        let foreign_test = test_names(&joined).iter().any(|t| !is_arena(t));
        let uses_dropped =
            joined.contains('{') && dropped.iter().any(|d| joined.contains(d.as_str()));
        if foreign_test || uses_dropped {
            continue;
        }
        out.push_str(&joined);
        out.push('\n');
    }
    // Helpers only the dropped tests used would fail -Werror=unused-function.
    let pragma = "#pragma GCC diagnostic ignored \"-Wunused-function\"\n";
    match out.find("#include") {
        Some(at) => out.insert_str(at, pragma),
        None => out.insert_str(0, pragma),
    }
    out
}

/// Split C source lines into top-level items: a blank line, a comment, a
/// preprocessor directive (with its `\\` continuations), or a declaration or
/// definition running until its braces close (or its `;` at depth 0). Braces
/// in comments, strings and characters are ignored.
fn top_level_items<'a>(lines: &[&'a str]) -> Vec<Vec<&'a str>> {
    #[derive(Clone, Copy)]
    enum Kind {
        Code,
        Comment,
        Directive,
    }
    let mut items = Vec::new();
    let mut current: Vec<&'a str> = Vec::new();
    let mut kind = Kind::Code;
    let mut depth = 0i32;
    let mut in_comment = false;
    for &line in lines {
        let trimmed = line.trim();
        if current.is_empty() {
            if trimmed.is_empty() {
                items.push(vec![line]);
                continue;
            }
            kind = if trimmed.starts_with('#') {
                Kind::Directive
            } else if trimmed.starts_with("//") || trimmed.starts_with("/*") {
                Kind::Comment
            } else {
                Kind::Code
            };
        }
        current.push(line);
        let done = match kind {
            Kind::Directive => !trimmed.ends_with('\\'),
            Kind::Comment => {
                scan_line(line, &mut in_comment);
                !in_comment
            }
            Kind::Code => {
                let (delta, ends_statement) = scan_line(line, &mut in_comment);
                let opened = depth > 0 || delta != 0 || line.contains('{');
                depth += delta;
                depth <= 0
                    && !in_comment
                    && ((opened && trimmed.ends_with('}'))
                        || trimmed.ends_with("};")
                        || ends_statement)
            }
        };
        if done {
            depth = 0;
            items.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

/// Brace balance of a line, outside comments and literals, and whether it
/// ends with `;` (outside comments); tracks `/* */` across lines.
fn scan_line(line: &str, in_comment: &mut bool) -> (i32, bool) {
    let b = line.as_bytes();
    let mut delta = 0;
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        if *in_comment {
            if b[i..].starts_with(b"*/") {
                *in_comment = false;
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            *in_comment = true;
            i += 1;
        } else if b[i..].starts_with(b"//") {
            break;
        } else if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            i += 1;
            while i < b.len() && b[i] != quote {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            last = Some(quote);
        } else {
            match b[i] {
                b'{' => delta += 1,
                b'}' => delta -= 1,
                _ => {}
            }
            if !b[i].is_ascii_whitespace() {
                last = Some(b[i]);
            }
        }
        i += 1;
    }
    (delta, last == Some(b';'))
}

/// What trimming kept, for the make command line and the record.
#[derive(Debug, Default)]
struct Trimmed {
    tests: Vec<String>,
    lskels: Vec<String>,
    lskels_extra: Vec<String>,
    runtime_objects: BTreeSet<String>,
    not_built: Vec<NotBuilt>,
}

/// Why an arena-related `prog_tests` file outside the kept patterns is not
/// built (7.2's libarena tests), or `None` if it is not arena-related.
pub fn not_built_reason(stem: &str) -> Option<&'static str> {
    if !stem.contains("arena") || is_arena(stem) {
        return None;
    }
    Some(match stem {
        "libarena" => {
            "needs libarena (libarena/src/*.bpf.c, linked into test_progs as \
             libarena.skel.h), which clang-19 cannot compile (clang crashes on \
             libarena/src/buddy.bpf.c): needs a newer LLVM"
        }
        "libarena_asan" => {
            "needs libarena built with the BPF arena address sanitizer \
             (-fsanitize=kernel-address for BPF), which needs LLVM 22+; this host has clang-19"
        }
        _ => "an arena test outside the arena_*/verifier_arena* files the lab builds",
    })
}

/// Which programs of `progs/` to keep, given its file names, the programs the
/// kept tests reference and a reader for the `progs/` sources (for
/// `#include "other.c"`).
pub fn select_progs(
    files: &[String],
    referenced: &BTreeSet<String>,
    read: &dyn Fn(&str) -> String,
) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = files
        .iter()
        .filter(|f| match f.strip_suffix(".c") {
            Some(stem) => is_arena(stem) || f.as_str() == BTF_DATA || referenced.contains(stem),
            None => true,
        })
        .cloned()
        .collect();
    let mut todo: Vec<String> = keep.iter().filter(|f| f.ends_with(".c")).cloned().collect();
    while let Some(f) = todo.pop() {
        for inc in quoted_includes(&read(&f)) {
            if inc.ends_with(".c") && files.iter().any(|x| x == inc) && keep.insert(inc.to_owned())
            {
                todo.push(inc.to_owned());
            }
        }
    }
    keep
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Trim the copied selftests directory `bpf` to the arena tests, in place.
fn trim(bpf: &Path) -> Result<Trimmed> {
    let tests_dir = bpf.join("prog_tests");
    let progs_dir = bpf.join("progs");
    let read = |p: &Path| fs::read_to_string(p).map_err(io_err(p));
    let mut trimmed = Trimmed::default();
    let mut refs = SkeletonRefs::default();
    for name in file_names(&tests_dir)? {
        let path = tests_dir.join(&name);
        if !keep_test_file(&name) {
            if let Some(reason) = name.strip_suffix(".c").and_then(not_built_reason) {
                for test in test_names(&read(&path)?) {
                    trimmed.not_built.push(NotBuilt {
                        test,
                        reason: reason.to_owned(),
                    });
                }
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if !name.ends_with(".c") {
            continue;
        }
        let mut text = read(&path)?;
        if name == "verifier.c" {
            let reduced = reduce_verifier(&text);
            let mut wanted = test_names(&text);
            wanted.retain(|t| is_arena(t));
            if test_names(&reduced) != wanted {
                return Err(ImageError::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("could not reduce to its arena tests {wanted:?}"),
                    ),
                });
            }
            text = reduced;
            fs::write(&path, &text).map_err(io_err(&path))?;
        }
        trimmed.tests.extend(test_names(&text));
        trimmed.runtime_objects.extend(bpf_object_refs(&text));
        let r = skeleton_refs(&text);
        refs.skel.extend(r.skel);
        refs.lskel.extend(r.lskel);
    }
    trimmed.tests.sort();
    for name in &refs.lskel {
        let list = if refs.skel.contains(name) {
            &mut trimmed.lskels_extra
        } else {
            &mut trimmed.lskels
        };
        list.push(format!("{name}.c"));
    }

    let files = file_names(&progs_dir)?;
    let referenced: BTreeSet<String> = refs.skel.union(&refs.lskel).cloned().collect();
    let read_prog = |name: &str| fs::read_to_string(progs_dir.join(name)).unwrap_or_default();
    let keep = select_progs(&files, &referenced, &read_prog);
    for name in files.iter().filter(|f| !keep.contains(*f)) {
        let path = progs_dir.join(name);
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(trimmed)
}

// ---------------------------------------------------------------------------
// Shared libraries

/// The shared libraries (with the dynamic loader) a binary loads, as `ldd`
/// resolves them: absolute paths under which the loader finds them.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    // Resolve as the guest will: without the caller's library path (cargo
    // sets LD_LIBRARY_PATH to build directories while running tests).
    let out = run_tool(
        Command::new("ldd")
            .arg(binary)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD"),
    )?;
    let mut libs =
        parse_ldd(&String::from_utf8_lossy(&out.stdout)).map_err(|missing| ImageError::Tool {
            command: format!("ldd {}", binary.display()),
            detail: format!("libraries not found: {}", missing.join(", ")),
        })?;
    let bytes = fs::read(binary).map_err(io_err(binary))?;
    if let Some(interp) = interpreter(&bytes) {
        let interp = PathBuf::from(interp);
        if !libs.contains(&interp) {
            libs.push(interp);
        }
    }
    Ok(libs)
}

/// Parse `ldd` output into library paths (the vDSO has none and is left
/// out); `Err` lists the libraries ldd could not find.
pub fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, Vec<String>> {
    let mut libs = BTreeSet::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim) {
        // Drop the load address: `... (0x00007f...)`.
        let line = match line.rfind(" (0x") {
            Some(at) => line[..at].trim_end(),
            None => line,
        };
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target == "not found" {
                    missing.push(name.trim().to_owned());
                    continue;
                }
                target
            }
            None => line,
        };
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    if missing.is_empty() {
        Ok(libs.into_iter().collect())
    } else {
        Err(missing)
    }
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF, if any.
pub fn interpreter(b: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    if !b.starts_with(b"\x7fELF") || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    for i in 0..usize::from(u16_at(0x38)?) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let off = usize::try_from(u64_at(ph + 8)?).ok()?;
        let size = usize::try_from(u64_at(ph + 32)?).ok()?;
        let raw = b.get(off..off.checked_add(size)?)?;
        let raw = raw.split(|&c| c == 0).next()?;
        return std::str::from_utf8(raw).ok().map(str::to_owned);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER_C: &str = r#"// SPDX-License-Identifier: GPL-2.0-only

#include <test_progs.h>

#include "cap_helpers.h"
#include "verifier_and.skel.h"
#include "verifier_arena.skel.h"
#include "verifier_arena_large.skel.h"
#include "verifier_array_access.skel.h"

#define MAX_ENTRIES 11

struct test_val {
	unsigned int index;
	int foo[MAX_ENTRIES];
};

__maybe_unused
static void run_tests_aux(const char *skel_name,
			  skel_elf_bytes_fn elf_bytes_factory,
			  pre_execution_cb pre_execution_cb)
{
	struct test_loader tester = {};
	/* braces in a comment: { */
	test_loader__run_subtests(&tester, skel_name, elf_bytes_factory);
}

#define RUN(skel) run_tests_aux(#skel, skel##__elf_bytes, NULL)
#define TWO(a) \\
	do { RUN(a); } while (0)

/* A comment
 * before a test: { */
void test_verifier_and(void)                  { RUN(verifier_and); }
void test_verifier_arena(void)                { RUN(verifier_arena); }
void test_verifier_arena_large(void)          { RUN(verifier_arena_large); }

void test_verifier_mtu(void)
{
	int ret = 0;
	if (ret)
		printf("}");
	RUN(verifier_mtu);
}

static int init_test_val_map(struct bpf_object *obj, char *map_name)
{
	return 0;
}

static int init_array_access_maps(struct bpf_object *obj)
{
	return init_test_val_map(obj, "map_array_ro");
}

void test_verifier_array_access(void)
{
	run_tests_aux("verifier_array_access",
		      verifier_array_access__elf_bytes,
		      init_array_access_maps);
}
"#;

    #[test]
    fn arena_names_by_pattern() {
        for yes in [
            "arena_htab",
            "arena_atomics",
            "verifier_arena",
            "verifier_arena_large",
            "arena_spin_lock",
        ] {
            assert!(is_arena(yes), "{yes}");
        }
        for no in [
            "verifier_and",
            "htab_arena",
            "arena",
            "verifier",
            "btf_data",
        ] {
            assert!(!is_arena(no), "{no}");
        }
        assert!(keep_test_file("arena_list.c"));
        assert!(keep_test_file("verifier.c"));
        assert!(keep_test_file("lwt_helpers.h"));
        assert!(!keep_test_file("atomics.c"));
        assert!(!keep_test_file("verifier_log.c"));
    }

    #[test]
    fn left_out_arena_tests_have_reasons() {
        assert!(not_built_reason("libarena").unwrap().contains("clang-19"));
        assert!(not_built_reason("libarena_asan")
            .unwrap()
            .contains("LLVM 22"));
        assert!(not_built_reason("htab_arena").is_some());
        assert!(not_built_reason("arena_list").is_none());
        assert!(not_built_reason("atomics").is_none());
    }

    #[test]
    fn verifier_reduced_to_arena_tests() {
        let out = reduce_verifier(VERIFIER_C);
        assert_eq!(test_names(&out), ["verifier_arena", "verifier_arena_large"]);
        assert!(out.contains("#include \"verifier_arena.skel.h\""));
        assert!(out.contains("#include \"verifier_arena_large.skel.h\""));
        assert!(out.contains("#include \"cap_helpers.h\""));
        assert!(!out.contains("verifier_and"));
        assert!(!out.contains("verifier_array_access"));
        assert!(!out.contains("verifier_mtu"));
        assert!(out.contains("static void run_tests_aux("));
        assert!(out.contains("struct test_val {"));
        assert!(out.contains("#define RUN(skel)"));
        assert!(
            out.contains("\tdo { RUN(a); } while (0)\n\n/* A comment"),
            "{out}"
        );
        // init_test_val_map is kept (it uses no skeleton) and may go unused.
        assert!(out.contains("#pragma GCC diagnostic ignored \"-Wunused-function\""));
        assert!(out.find("#pragma").unwrap() < out.find("#include").unwrap());
        let refs = skeleton_refs(&out);
        assert_eq!(
            refs.skel.into_iter().collect::<Vec<_>>(),
            ["verifier_arena", "verifier_arena_large"]
        );
    }

    #[test]
    fn test_names_like_the_makefile() {
        let text = "void test_arena_htab(void)\n{\n}\nvoid serial_test_arena_x(void) {}\n\
                    static void test_arena_helper(int x)\nvoid test_bad(int a)\nvoid test_ok()\n";
        assert_eq!(test_names(text), ["arena_htab", "arena_x", "ok"]);
    }

    #[test]
    fn skeletons_and_objects_referenced() {
        let text = "#include <test_progs.h>\n#include \"arena_list.skel.h\"\n\
                    # include \"atomics.lskel.h\"\n#include \"foo.subskel.h\"\n\
                    obj = bpf_object__open_file(\"arena_extra.bpf.o\", NULL);\n\
                    x = \"../bad/path.bpf.o\"; y = \"%s.bpf.o\";\n";
        let refs = skeleton_refs(text);
        assert_eq!(
            refs.skel.into_iter().collect::<Vec<_>>(),
            ["arena_list", "foo"]
        );
        assert_eq!(refs.lskel.into_iter().collect::<Vec<_>>(), ["atomics"]);
        assert_eq!(
            bpf_object_refs(text).into_iter().collect::<Vec<_>>(),
            ["arena_extra.bpf.o"]
        );
    }

    #[test]
    fn progs_selected_by_pattern_references_and_includes() {
        let files: Vec<String> = [
            "arena_htab.c",
            "arena_htab_asm.c",
            "atomics.c",
            "bpf_misc.h",
            "btf_data.c",
            "helper_prog.c",
            "verifier_and.c",
            "verifier_arena.c",
            "included.c",
        ]
        .map(String::from)
        .to_vec();
        let referenced = BTreeSet::from(["helper_prog".to_owned()]);
        let read = |name: &str| match name {
            "arena_htab_asm.c" => "#include \"arena_htab.c\"\n".to_owned(),
            "helper_prog.c" => "#include \"included.c\"\n#include \"missing.c\"\n".to_owned(),
            _ => String::new(),
        };
        let keep = select_progs(&files, &referenced, &read);
        assert_eq!(
            keep.into_iter().collect::<Vec<_>>(),
            [
                "arena_htab.c",
                "arena_htab_asm.c",
                "bpf_misc.h",
                "btf_data.c",
                "helper_prog.c",
                "included.c",
                "verifier_arena.c"
            ]
        );
    }

    #[test]
    fn ldd_output_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd4a1f2000)\n\
            \tlibelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007f3c1e0a0000)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f3c1e081000)\n\
            \tlibzstd.so.1 => /usr/lib/x86_64-linux-gnu/libzstd.so.1 (0x00007f3c1dfc0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3c1de9f000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f3c1e0d7000)\n\
            \tlinux-gate.so.1 =>  (0x00007f0000000000)\n";
        let libs = parse_ldd(text).unwrap();
        let libs: Vec<&str> = libs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libelf.so.1",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libzstd.so.1",
            ]
        );
        assert_eq!(
            parse_ldd("\tstatically linked\n").unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.2 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n")
                .unwrap_err(),
            ["libfoo.so.2"]
        );
    }

    #[test]
    fn interpreter_of_host_binary() {
        let sh = fs::read("/bin/sh").unwrap();
        let interp = interpreter(&sh).expect("/bin/sh is dynamic");
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
        assert_eq!(interpreter(b"not an elf"), None);
        assert_eq!(interpreter(b"\x7fELF\x02\x01"), None);
    }

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
        assert_eq!(llvm_tool("clang-19", "llc"), "llc-19");
        assert_eq!(
            llvm_tool("/usr/bin/clang", "llvm-strip"),
            "/usr/bin/llvm-strip"
        );
    }

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
        let err = build(&user, None).unwrap_err().to_string();
        assert!(err.contains("--kernel-src"), "{err}");

        let dir = std::env::temp_dir().join(format!("arena-st-src-{}", std::process::id()));
        fs::create_dir_all(dir.join(BPF_DIR)).unwrap();
        fs::write(dir.join(BPF_DIR).join("Makefile"), "").unwrap();
        fs::write(
            dir.join("Makefile"),
            "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 110\n",
        )
        .unwrap();
        let err = build(&user, Some(&dir)).unwrap_err().to_string();
        assert!(
            err.contains("6.12.110") && err.contains("6.12.117"),
            "{err}"
        );
        let err = image_files_from(&user, Some(Path::new("/nonexistent-tree"))).unwrap_err();
        assert!(
            err.to_string().contains("not a kernel source tree"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
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
}

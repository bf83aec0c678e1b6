//! Building `test_progs`: the needed parts of the source tree are copied
//! into a scratch directory, trimmed to the arena tests and built with the
//! tree's own Makefile; the products move to `build/<key>/` of the cache.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::source::{check_version, copy_parts, fingerprint, resolve_source, Source};
use super::trim::trim;
use super::{remove_stale_scratch, SelftestBuild, SelftestsError, BPF_DIR};
use crate::kernel::Kernel;
use crate::{cache, io_err, run_tool, sha256_file, sha256_hex, write_atomic, ImageError, Result};

/// Bumped whenever trimming or the build changes, so cached builds are redone.
const LAYOUT: &str = "arena-selftests-v4";
/// The build record.
const RECORD: &str = "build.json";

/// Build `test_progs` with the arena tests for `kernel` (or return the cached
/// build of the same inputs), from `kernel_src` or else the Debian source
/// package matching a Debian kernel.
pub fn build(
    kernel: &Kernel,
    kernel_src: Option<&Path>,
) -> std::result::Result<SelftestBuild, SelftestsError> {
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
    let clang = crate::bpf::selftests_clang();
    let clang_version = run_tool(Command::new(&clang).arg("--version"))?.stdout;
    let libarena = crate::bpf::clang_major(&String::from_utf8_lossy(&clang_version))
        .is_some_and(|v| v >= super::trim::LIBARENA_LLVM);
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
    let toolchain = Toolchain {
        clang: &clang,
        libarena,
    };
    let result = build_in(
        &scratch,
        &source,
        &source_version,
        &vmlinux,
        &toolchain,
        &dest,
    );
    let _ = fs::remove_dir_all(&scratch);
    Ok(result?)
}

/// sha256 of the vmlinux, remembered by its identity (hashing 60 MB on
/// every call would make a cached build slow to find).
fn vmlinux_sha256(vmlinux: &Path) -> Result<String> {
    cache::remembered(&cache::dir("selftests/sha256")?, vmlinux, sha256_file)
}

/// The compiler the selftests are built with.
struct Toolchain<'a> {
    /// `clang-22`, …
    clang: &'a str,
    /// It is LLVM 22+: libarena and its tests can be built.
    libarena: bool,
}

/// Copy, trim and build in `scratch`, then move the products to `dest`.
fn build_in(
    scratch: &Path,
    source: &Source,
    source_version: &str,
    vmlinux: &Path,
    toolchain: &Toolchain,
    dest: &Path,
) -> Result<SelftestBuild> {
    let clang = toolchain.clang;
    let work = scratch.join("work");
    copy_parts(&source.root, &work)?;
    let bpf = work.join(BPF_DIR);
    let trimmed = trim(&bpf, clang, toolchain.libarena)?;

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
        .arg("LSKELS_SIGNED=");
    if !toolchain.libarena {
        // 7.2 links libarena's skeletons into every test_progs; only the
        // libarena tests use them, and before LLVM 22 clang cannot build
        // them (clang-19 crashes on buddy.bpf.c).
        make.arg("LIBARENA_SKEL=").arg("LIBARENA_ASAN_SKEL=");
    }
    make.arg("test_progs");
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
        subtests: super::subtests::static_subtests(&bpf),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_tools_match_clang() {
        assert_eq!(llvm_tool("clang-19", "llc"), "llc-19");
        assert_eq!(
            llvm_tool("/usr/bin/clang", "llvm-strip"),
            "/usr/bin/llvm-strip"
        );
    }
}

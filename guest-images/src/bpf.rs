//! BPF programs of `guest-images/bpf/*.bpf.c`, compiled with clang for the
//! `bpf` target and cached by source, headers and compiler version.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cache, io_err, run_tool, sha256_hex, Result};

/// The clang used for BPF (override with `ARENA_LAB_CLANG`).
pub fn clang() -> String {
    std::env::var("ARENA_LAB_CLANG").unwrap_or_else(|_| "clang-19".into())
}

/// The clang for the upstream selftests (override with
/// `ARENA_LAB_SELFTESTS_CLANG`): the newest of clang-22 … clang-19 on the
/// PATH, since newer trees need a newer LLVM (7.2's libarena tests: LLVM
/// 22, for the BPF arena address sanitizer); else [`clang`].
pub fn selftests_clang() -> String {
    if let Ok(c) = std::env::var("ARENA_LAB_SELFTESTS_CLANG") {
        return c;
    }
    (19..=22)
        .rev()
        .map(|v| format!("clang-{v}"))
        .find(|c| on_path(c))
        .unwrap_or_else(clang)
}

/// The major version in `clang --version`'s output (`… clang version 22.1.8 …`).
pub fn clang_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split("clang version ").nth(1)?;
    rest.split(['.', ' ', '-']).next()?.parse().ok()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// Source directory of the BPF programs.
pub fn source_dir() -> PathBuf {
    crate::agent::workspace_root().join("guest-images/bpf")
}

/// Identifies the compiler without running it (a `clang --version` costs
/// tens of milliseconds on every run): its resolved path, size and mtime.
fn toolchain_fingerprint(clang: &str) -> Result<String> {
    let resolved = if clang.contains('/') {
        Some(PathBuf::from(clang))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(clang))
                .find(|p| p.is_file())
        })
    };
    let path = resolved.ok_or_else(|| crate::ImageError::Tool {
        command: clang.to_owned(),
        detail: "not found in PATH (install clang-19 or set ARENA_LAB_CLANG)".into(),
    })?;
    let real = std::fs::canonicalize(&path).map_err(io_err(&path))?;
    crate::file_fingerprint(&real)
}

/// Compile every `*.bpf.c` in `src` (with `src/include` on the include path);
/// returns the objects as `(name.bpf.o, path)`.
pub fn build_all(src: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io_err(src))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            // Not an editor's hidden lock file (`.#x.bpf.c`).
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|s| s.ends_with(".bpf.c") && !s.starts_with('.'))
        })
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Ok(vec![]);
    }
    let include = src.join("include");
    let mut headers = String::new();
    if let Ok(entries) = std::fs::read_dir(&include) {
        let mut hs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        hs.sort();
        for h in hs {
            let data = std::fs::read(&h).map_err(io_err(&h))?;
            headers.push_str(&sha256_hex(&data));
        }
    }
    let clang = clang();
    let toolchain = toolchain_fingerprint(&clang)?;
    let out_dir = cache::dir("bpf")?;
    let mut out = Vec::new();
    for s in sources {
        let code = std::fs::read(&s).map_err(io_err(&s))?;
        let key = sha256_hex(format!("{}{headers}{toolchain}", sha256_hex(&code)).as_bytes());
        let name = s
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("prog.bpf.c")
            .replace(".bpf.c", ".bpf.o");
        let obj = out_dir.join(format!("{}-{name}", &key[..16]));
        if !obj.is_file() {
            let tmp = obj.with_extension(format!("tmp{}", std::process::id()));
            run_tool(
                Command::new(&clang)
                    .args(CFLAGS)
                    .arg("-I")
                    .arg(&include)
                    .arg("-c")
                    .arg(&s)
                    .arg("-o")
                    .arg(&tmp),
            )?;
            std::fs::rename(&tmp, &obj).map_err(io_err(&obj))?;
        }
        out.push((name, obj));
    }
    Ok(out)
}

/// The tool that writes `vmlinux.h` from a kernel's BTF (override with
/// `ARENA_LAB_BPFTOOL`; Debian's `bpftool` installs it in /usr/sbin).
pub fn bpftool() -> String {
    if let Ok(t) = std::env::var("ARENA_LAB_BPFTOOL") {
        return t;
    }
    if !on_path("bpftool") && Path::new("/usr/sbin/bpftool").is_file() {
        return "/usr/sbin/bpftool".into();
    }
    "bpftool".into()
}

/// Flags of every BPF compile, the lab's objects' and scenarios' own.
const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-target",
    "bpf",
    "-mcpu=v3",
    "-D__TARGET_ARCH_x86",
    "-Wall",
    "-Werror",
];

/// The include folder of scenarios' own programs for the kernel whose ELF
/// is `vmlinux`: `vmlinux.h` (`bpftool btf dump file VMLINUX format c`)
/// and the lab's `arena_lab.h` beside it, under the sha256 of `vmlinux`
/// (the kernel's BTF digest, also returned).
pub fn own_include_dir(vmlinux: &Path) -> Result<(PathBuf, String)> {
    let memo = cache::dir("memo")?;
    let btf = cache::remembered(&memo, vmlinux, crate::sha256_file)?;
    let dir = cache::dir(&format!("bpf-own/include-{}", &btf[..16]))?;
    let header = dir.join("vmlinux.h");
    if !header.is_file() {
        let out = run_tool(
            Command::new(bpftool())
                .args(["btf", "dump", "file"])
                .arg(vmlinux)
                .args(["format", "c"]),
        )
        .map_err(|e| match e {
            crate::ImageError::Tool { command, detail } => crate::ImageError::Tool {
                command,
                detail: format!("{detail} (install Debian's bpftool or set ARENA_LAB_BPFTOOL)"),
            },
            e => e,
        })?;
        crate::write_atomic(&header, &out.stdout)?;
    }
    let lab_h = source_dir().join("include/arena_lab.h");
    let text = std::fs::read(&lab_h).map_err(io_err(&lab_h))?;
    let installed = dir.join("arena_lab.h");
    if std::fs::read(&installed).ok().as_deref() != Some(&text[..]) {
        crate::write_atomic(&installed, &text)?;
    }
    Ok((dir, btf))
}

/// Why a scenario's own program did not compile.
#[derive(Debug, thiserror::Error)]
pub enum OwnBuildError {
    /// The compiler refused the source: its diagnostics, paths as given.
    #[error("{0}")]
    Compile(String),
    /// The lab could not get as far as compiling.
    #[error(transparent)]
    Lab(#[from] crate::ImageError),
}

/// Compile `source` (relative to `dir`, the scenario's folder) against the
/// BTF of `vmlinux`, with the lab's flags, clang and `arena_lab.h`; the
/// object, cached as `bpf-own/<sha256 of source, the headers beside it,
/// arena_lab.h, the kernel's BTF digest and the compiler>.bpf.o`: only
/// those inputs name it, so no other source can land on it.
pub fn build_own(
    dir: &Path,
    source: &str,
    vmlinux: &Path,
) -> std::result::Result<PathBuf, OwnBuildError> {
    let (include, btf) = own_include_dir(vmlinux)?;
    let path = dir.join(source);
    let code = std::fs::read(&path).map_err(io_err(&path))?;
    // Headers the source may include from its own folder.
    let folder = path.parent().unwrap_or(dir);
    let mut beside: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(io_err(folder))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    beside.sort();
    let mut key = format!("own1 {} {btf}", sha256_hex(&code));
    for h in &beside {
        let data = std::fs::read(h).map_err(io_err(h))?;
        key.push_str(&format!(" {}", sha256_hex(&data)));
    }
    let lab_h = include.join("arena_lab.h");
    key.push_str(&format!(" {}", crate::sha256_file(&lab_h)?));
    let clang = clang();
    key.push_str(&format!(" {}", toolchain_fingerprint(&clang)?));
    let obj = cache::dir("bpf-own")?.join(format!("{}.bpf.o", sha256_hex(key.as_bytes())));
    if obj.is_file() {
        return Ok(obj);
    }
    let tmp = obj.with_extension(format!("tmp{}", std::process::id()));
    let out = Command::new(&clang)
        .current_dir(dir)
        .args(CFLAGS)
        .args([
            "-DARENA_LAB_VMLINUX",
            "-DBPF_NO_KFUNC_PROTOTYPES",
            "-fno-color-diagnostics",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| crate::ImageError::Tool {
            command: clang.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(OwnBuildError::Compile(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    std::fs::rename(&tmp, &obj).map_err(io_err(&obj))?;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clang_major_reads_the_version_line() {
        assert_eq!(
            clang_major("Debian clang version 22.1.8 (++20250101)\nTarget: x86_64"),
            Some(22)
        );
        assert_eq!(clang_major("clang version 19.1.7-3\n"), Some(19));
        assert_eq!(clang_major("gcc (Debian 12.2.0-14) 12.2.0"), None);
    }
}

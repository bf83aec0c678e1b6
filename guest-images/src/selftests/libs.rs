//! The shared libraries `test_progs` loads, for the image: as the host's
//! `ldd` resolves them, plus what glibc dlopens behind ldd's back.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use arena_protocol::paths;

use crate::initramfs::ImageFile;
use crate::kernel::elf;
use crate::{io_err, run_tool, ImageError, Result};

/// Image files of the shared libraries `binary` loads, with the dynamic
/// loader, from their real (symlink-resolved) host files.
pub(super) fn image_files(binary: &Path) -> Result<Vec<ImageFile>> {
    let bytes = fs::read(binary).map_err(io_err(binary))?;
    let interp = elf::interpreter(&bytes);
    let mut libs = ldd(binary)?;
    if let Some(interp) = interp.as_deref().map(PathBuf::from) {
        if !libs.contains(&interp) {
            libs.push(interp);
        }
    }
    // glibc dlopens libgcc_s for pthread_exit (7.2's arena_spin_lock threads
    // abort without it); ldd cannot see that. It lives beside libc.
    let gcc_s = libs
        .iter()
        .find(|l| l.file_name().is_some_and(|n| n == "libc.so.6"))
        .and_then(|libc| Some(libc.parent()?.join("libgcc_s.so.1")))
        .filter(|p| p.is_file());
    libs.extend(gcc_s);
    libs.into_iter()
        .map(|lib| {
            let real = fs::canonicalize(&lib).map_err(io_err(&lib))?;
            // The loader keeps its own path (PT_INTERP); every other library
            // goes into a directory the guest's loader searches by default,
            // whatever odd place the host resolved it from.
            let guest_path = if interp.as_deref() == lib.to_str() {
                paths::entry(&lib.to_string_lossy()).to_owned()
            } else {
                let name = lib
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                paths::entry_in(paths::LIB_DIR, &name)
            };
            Ok(ImageFile {
                guest_path,
                host_path: real,
                mode: 0o755,
            })
        })
        .collect()
}

/// The libraries `ldd` resolves for `binary`: absolute paths under which the
/// loader finds them.
fn ldd(binary: &Path) -> Result<Vec<PathBuf>> {
    // Resolve as the guest will: without the caller's library path (cargo
    // sets LD_LIBRARY_PATH to build directories while running tests).
    let out = run_tool(
        Command::new("ldd")
            .arg(binary)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD"),
    )?;
    parse_ldd(&String::from_utf8_lossy(&out.stdout)).map_err(|missing| ImageError::Tool {
        command: format!("ldd {}", binary.display()),
        detail: format!("libraries not found: {}", missing.join(", ")),
    })
}

/// Parse `ldd` output into library paths (the vDSO has none and is left
/// out); `Err` lists the libraries ldd could not find.
fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Debian's default kernel: the newest `linux-image-6.12.*+deb12-amd64` apt
//! can see, fetched with `apt-get download` and unpacked with `dpkg-deb -x`
//! into `kernels/<release>/` of the cache. Nothing is installed on the host.
//!
//! Cache layout: `vmlinuz`, `vmlinux`, `config`, `modules/` (the
//! `lib/modules/<release>` tree with a generated `modules.dep`) and
//! `kernel.json` (the [`Kernel`] record, written last: its presence means the
//! directory is complete).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{bzimage, elf, Kernel, KernelOrigin};
use crate::{cache, io_err, run_tool, sha256_hex, write_atomic, ImageError, Result};

/// Kernel series the lab defaults to.
pub const SERIES: &str = "6.12";
/// Package name prefix and suffix around the patch level.
const PKG_PREFIX: &str = "linux-image-6.12.";
const PKG_SUFFIX: &str = "+deb12-amd64";
const RECORD: &str = "kernel.json";

/// A candidate package apt can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// e.g. `linux-image-6.12.117+deb12-amd64`.
    pub package: String,
    /// Patch level (117).
    pub patch: u32,
}

/// Pick the newest kernel package among apt package names.
pub fn newest(names: &str) -> Option<Candidate> {
    names
        .lines()
        .filter_map(|n| {
            let n = n.trim();
            let patch = n.strip_prefix(PKG_PREFIX)?.strip_suffix(PKG_SUFFIX)?;
            let patch: u32 = patch.parse().ok()?;
            Some(Candidate {
                package: n.to_owned(),
                patch,
            })
        })
        .max_by_key(|c| c.patch)
}

/// The newest kernel already in the cache, if any.
pub fn cached() -> Option<Kernel> {
    let dir = cache::root().join("kernels");
    let mut best: Option<(u32, Kernel)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let record = entry.path().join(RECORD);
        let Ok(text) = std::fs::read_to_string(&record) else {
            continue;
        };
        let Ok(k) = serde_json::from_str::<Kernel>(&text) else {
            continue;
        };
        let patch = patch_of(&k.release);
        if best.as_ref().is_none_or(|(p, _)| patch > *p) {
            best = Some((patch, k));
        }
    }
    best.map(|(_, k)| k)
}

fn patch_of(release: &str) -> u32 {
    release
        .strip_prefix("6.12.")
        .and_then(|r| r.split('+').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The newest cached kernel, or fetch the newest one apt can see.
pub fn default_kernel() -> Result<Kernel> {
    match cached() {
        Some(k) => Ok(k),
        None => fetch(None),
    }
}

/// Fetch (or reuse from the cache) the newest package, or the one at `patch`.
pub fn fetch(patch: Option<u32>) -> Result<Kernel> {
    let candidate = match patch {
        Some(p) => Candidate {
            package: format!("{PKG_PREFIX}{p}{PKG_SUFFIX}"),
            patch: p,
        },
        None => {
            let out = run_tool(Command::new("apt-cache").args(["pkgnames", PKG_PREFIX]))?;
            newest(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
                ImageError::NoKernelPackage(format!(
                    "apt knows no {PKG_PREFIX}<n>{PKG_SUFFIX} package; is bookworm-security in the apt sources and `apt-get update` run?"
                ))
            })?
        }
    };
    let release = format!("{SERIES}.{}{PKG_SUFFIX}", candidate.patch);
    let dest = cache::dir("kernels")?.join(&release);
    if let Ok(text) = std::fs::read_to_string(dest.join(RECORD)) {
        if let Ok(k) = serde_json::from_str::<Kernel>(&text) {
            return Ok(k);
        }
    }
    unpack(&candidate.package, &release, &dest)
}

/// Download and unpack into a scratch directory, then rename into place.
fn unpack(package: &str, release: &str, dest: &Path) -> Result<Kernel> {
    let parent = dest.parent().expect("kernels dir");
    let work = parent.join(format!(".tmp-{release}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let version = package_version(package)?;
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&work),
    )?;
    let deb = find_deb(&work)?;
    let root = work.join("root");
    run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_file(&deb).map_err(io_err(&deb))?;
    run_tool(Command::new("depmod").arg("-b").arg(&root).arg(release))?;

    let out = work.join("kernel");
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let rename = |from: PathBuf, to: &str| -> Result<PathBuf> {
        let to = out.join(to);
        std::fs::rename(&from, &to).map_err(io_err(&from))?;
        Ok(to)
    };
    rename(root.join(format!("boot/vmlinuz-{release}")), "vmlinuz")?;
    rename(root.join(format!("boot/config-{release}")), "config")?;
    rename(root.join(format!("lib/modules/{release}")), "modules")?;

    let bz_bytes = std::fs::read(out.join("vmlinuz")).map_err(io_err(out.join("vmlinuz")))?;
    let bz = bzimage::parse(&bz_bytes).map_err(|why| ImageError::NotAKernel {
        path: out.join("vmlinuz"),
        why,
    })?;
    let vmlinux = bzimage::extract_vmlinux(&bz_bytes, &bz)
        .map_err(io_err(out.join("vmlinux")))?
        .ok_or_else(|| ImageError::NotAKernel {
            path: out.join("vmlinuz"),
            why: "unknown payload compression".into(),
        })?;
    let has_pvh = elf::pvh_entry(&vmlinux).is_some();
    std::fs::write(out.join("vmlinux"), &vmlinux).map_err(io_err(out.join("vmlinux")))?;
    std::fs::remove_dir_all(&root).map_err(io_err(&root))?;

    let final_path = |name: &str| dest.join(name);
    let kernel = Kernel {
        origin: KernelOrigin::Debian {
            package: package.to_owned(),
            version,
        },
        boot_image: final_path(if has_pvh { "vmlinux" } else { "vmlinuz" }),
        elf_without_pvh: false,
        bzimage: Some(final_path("vmlinuz")),
        vmlinux: Some(final_path("vmlinux")),
        modules: Some(final_path("modules")),
        release: release.to_owned(),
        version: elf::linux_banner(&vmlinux).unwrap_or(bz.version),
        sha256: sha256_hex(&bz_bytes),
    };
    let record = serde_json::to_vec_pretty(&kernel).expect("serialisable");
    write_atomic(&out.join(RECORD), &record)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&out, dest).map_err(io_err(dest))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(kernel)
}

/// The candidate version apt would download.
fn package_version(package: &str) -> Result<String> {
    let out = run_tool(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
        .ok_or_else(|| {
            ImageError::NoKernelPackage(format!("apt-cache shows no version of {package}"))
        })
}

fn find_deb(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            ImageError::NoKernelPackage(format!(
                "apt-get download left no .deb in {}",
                dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_picks_highest_patch_numerically() {
        let names = "linux-image-6.12.99+deb12-amd64\nlinux-image-6.12.117+deb12-amd64\n\
                     linux-image-6.12.117+deb12-amd64-dbg\nlinux-image-6.12.113+deb12-cloud-amd64\n";
        let c = newest(names).unwrap();
        assert_eq!(c.package, "linux-image-6.12.117+deb12-amd64");
        assert_eq!(c.patch, 117);
        assert!(newest("linux-image-6.1.0-30-amd64").is_none());
    }

    #[test]
    fn patch_from_release() {
        assert_eq!(patch_of("6.12.117+deb12-amd64"), 117);
        assert_eq!(patch_of("garbage"), 0);
    }
}

//! The kernel a run boots: one of Debian's kernels ([`debian`]) or the
//! user's own (`--kernel`), identified and prepared for the fastest boot
//! (the uncompressed vmlinux through its PVH entry when it has one).

pub mod apt;
pub mod build;
pub mod bzimage;
pub mod ccache;
pub mod debian;
pub mod elf;
pub mod kconfig;
pub mod lock;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{cache, io_err, sha256_hex, write_atomic, ImageError, Result};

/// Where a kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelOrigin {
    /// Debian's package, fetched into the cache.
    Debian {
        /// The package holding the kernel (`linux-image-*`, or 7.2's `linux-binary-*`).
        package: String,
        /// Exact package version.
        version: String,
        /// The other packages unpacked with it (7.2's `linux-modules-*`
        /// and `linux-base-*`, which has the config), all at `version`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        other_packages: Vec<String>,
        /// The suite of the lab's own apt state it came from (`sid`);
        /// absent: the host's apt sources. Its source package is fetched alike.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suite: Option<String>,
    },
    /// A file the user passed.
    User {
        /// The path given.
        path: PathBuf,
    },
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// Where it came from.
    pub origin: KernelOrigin,
    /// The file handed to the VMM: a vmlinux (with a PVH entry, or the
    /// user's own without one), else the bzImage.
    pub boot_image: PathBuf,
    /// `boot_image` is a vmlinux without a PVH note (no `CONFIG_PVH`): the
    /// own VMM enters it at `startup_64`; QEMU cannot, and boots `bzimage`.
    #[serde(default)]
    pub elf_without_pvh: bool,
    /// The bzImage, when there is one.
    pub bzimage: Option<PathBuf>,
    /// The uncompressed ELF vmlinux (carries `.BTF`), when there is one.
    pub vmlinux: Option<PathBuf>,
    /// `lib/modules/<release>` with a `modules.dep`, when modular.
    pub modules: Option<PathBuf>,
    /// `uname -r`.
    pub release: String,
    /// The `Linux version ...` banner or the bzImage header's version string.
    pub version: String,
    /// sha256 of the file the kernel was identified from.
    pub sha256: String,
}

impl Kernel {
    /// Identify a user-supplied kernel file (bzImage or vmlinux).
    /// A bzImage's payload is extracted (cached by hash) so the PVH entry can be used.
    pub fn from_user_file(path: &Path, modules: Option<&Path>) -> Result<Kernel> {
        Kernel::from_user_files(path, None, modules)
    }

    /// Identify a user's kernel from its boot file (bzImage or vmlinux)
    /// and, optionally, its ELF `vmlinux` (BTF for the selftests, symbols
    /// for decoding traces). A bzImage inside a build tree
    /// (`TREE/arch/x86/boot/bzImage`) finds `TREE/vmlinux` by itself.
    pub fn from_user_files(
        path: &Path,
        vmlinux: Option<&Path>,
        modules: Option<&Path>,
    ) -> Result<Kernel> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let sha256 = sha256_hex(&bytes);
        let not_a_kernel = |file: &Path, why: &str| ImageError::NotAKernel {
            path: file.to_owned(),
            why: why.to_owned(),
        };
        let tree_vmlinux = || {
            path.ancestors()
                .nth(4)
                .map(|tree| tree.join("vmlinux"))
                .filter(|v| path.ends_with("arch/x86/boot/bzImage") && v.is_file())
        };
        let elf = if elf::is_elf(&bytes) {
            Some((path.to_owned(), std::borrow::Cow::Borrowed(&bytes[..])))
        } else if let Some(v) = vmlinux.map(Path::to_owned).or_else(tree_vmlinux) {
            let b = std::fs::read(&v).map_err(io_err(&v))?;
            if !elf::is_elf(&b) {
                return Err(not_a_kernel(
                    &v,
                    "--vmlinux must be the ELF vmlinux of the build",
                ));
            }
            bzimage::parse(&bytes).map_err(|why| not_a_kernel(path, &why))?;
            Some((v, std::borrow::Cow::Owned(b)))
        } else {
            None
        };
        let (boot_image, bzimage, vmlinux, version, elf_without_pvh) = match elf {
            Some((vmlinux, elf_bytes)) => {
                let banner = elf::linux_banner(&elf_bytes).ok_or_else(|| {
                    not_a_kernel(&vmlinux, "ELF file without a \"Linux version\" banner")
                })?;
                // Without CONFIG_PVH the own VMM enters it at startup_64;
                // QEMU needs the bzImage: the one given, or the tree's.
                let pvh = elf::pvh_entry(&elf_bytes).is_some();
                let bz = if vmlinux != path {
                    Some(path.to_owned())
                } else {
                    path.parent()
                        .map(|d| d.join("arch/x86/boot/bzImage"))
                        .filter(|b| b.is_file())
                };
                (vmlinux.clone(), bz, Some(vmlinux), banner, !pvh)
            }
            None => {
                let bz = bzimage::parse(&bytes).map_err(|why| not_a_kernel(path, &why))?;
                let vmlinux = extract_cached(&bytes, &bz, &sha256)?;
                let boot = vmlinux.clone().unwrap_or_else(|| path.to_owned());
                (boot, Some(path.to_owned()), vmlinux, bz.version, false)
            }
        };
        let release =
            release_of(&version).ok_or_else(|| not_a_kernel(path, "no release in banner"))?;
        if let Some(m) = modules {
            if !m.join("modules.dep").is_file() {
                return Err(ImageError::Io {
                    path: m.join("modules.dep"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "--modules must be a lib/modules/<release> directory with modules.dep (run depmod)",
                    ),
                });
            }
        }
        Ok(Kernel {
            origin: KernelOrigin::User {
                path: path.to_owned(),
            },
            boot_image,
            elf_without_pvh,
            bzimage,
            vmlinux,
            modules: modules.map(Path::to_owned),
            release,
            version,
            sha256,
        })
    }
}

/// The release (`uname -r`) in a banner or header version string.
pub fn release_of(version: &str) -> Option<String> {
    let rest = version.strip_prefix("Linux version ").unwrap_or(version);
    rest.split_whitespace().next().map(str::to_owned)
}

/// Extract a bzImage's vmlinux into `kernels/user-<sha>/vmlinux` if it has a
/// PVH entry; `None` if it cannot be decoded or has no PVH entry.
fn extract_cached(bytes: &[u8], bz: &bzimage::BzImage, sha: &str) -> Result<Option<PathBuf>> {
    let dir = cache::dir("kernels")?.join(format!("user-{}", &sha[..16]));
    let out = dir.join("vmlinux");
    if out.is_file() {
        return Ok(Some(out));
    }
    let marker = dir.join("no-pvh");
    if marker.is_file() {
        return Ok(None);
    }
    let vmlinux = bzimage::extract_vmlinux(bytes, bz).map_err(io_err(&out))?;
    match vmlinux {
        Some(v) if elf::pvh_entry(&v).is_some() => {
            write_atomic(&out, &v)?;
            Ok(Some(out))
        }
        _ => {
            write_atomic(&marker, b"")?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_from_banner_and_header() {
        assert_eq!(
            release_of("Linux version 6.12.117+deb12-amd64 (debian-kernel@lists.debian.org) #1")
                .as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(
            release_of("6.12.117+deb12-amd64 (debian-kernel@lists.debian.org) #1").as_deref(),
            Some("6.12.117+deb12-amd64")
        );
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let p = std::env::temp_dir().join(format!("arena-notkernel-{}", std::process::id()));
        std::fs::write(&p, "hello").unwrap();
        let err = Kernel::from_user_file(&p, None).unwrap_err();
        assert!(
            err.to_string().contains("not a Linux kernel image"),
            "{err}"
        );
        std::fs::remove_file(p).unwrap();
    }
}

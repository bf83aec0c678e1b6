//! The guest image: a `newc` initramfs holding the agent as
//! `/init`, the kernel modules it loads (in order, listed in
//! `/etc/arena/modules`) and any extra files (BPF objects, selftests), at
//! the guest paths of [`arena_protocol::paths`].
//! Built once per distinct input set and cached under `images/<key>.cpio`
//! (or `.cpio.zst`).
//!
//! Uncompressed by default: measured under TCG, the kernel's zstd
//! decompression of the ~2.5 MB image costs ~130 ms of a ~1.8 s boot, while
//! handing QEMU 1.4 MB more costs nothing measurable. Set
//! `ARENA_LAB_INITRAMFS_COMPRESSION=zstd` for a compressed image (e.g. for
//! boot loaders with tight initrd size limits).

use std::path::{Path, PathBuf};

use arena_protocol::paths;

use crate::cpio::CpioWriter;
use crate::{cache, io_err, sha256_hex, write_atomic, Result};

/// Bumped whenever the image layout changes, so cached images are rebuilt.
const LAYOUT_VERSION: &str = "arena-image-v1";
/// zstd level: fast to build, fast for the kernel to unpack.
const ZSTD_LEVEL: i32 = 3;
/// Selects the image compression (`none`, the default, or `zstd`).
pub const COMPRESSION_ENV: &str = "ARENA_LAB_INITRAMFS_COMPRESSION";

/// Whether images are zstd-compressed (see the module docs).
fn compressed() -> bool {
    std::env::var(COMPRESSION_ENV).is_ok_and(|v| v == "zstd")
}

/// A file placed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path inside the guest, without the leading `/`.
    pub guest_path: String,
    /// Source on the host.
    pub host_path: PathBuf,
    /// Permission bits.
    pub mode: u32,
}

/// What goes into an image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// The static agent binary (becomes `/init`).
    pub agent: PathBuf,
    /// Module files to load at boot, dependencies first.
    pub modules: Vec<PathBuf>,
    /// Further files (tests, BPF objects, ...), each at its guest path.
    pub files: Vec<ImageFile>,
}

/// Directories every image has (the agent's mount points among them).
const DIRS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/run",
    "/etc",
    paths::CONFIG_DIR,
    paths::MODULES_DIR,
    paths::BPF_DIR,
    paths::SELFTESTS_DIR,
];

impl ImageSpec {
    /// Every file of the image with its contents, in archive order.
    fn contents(&self) -> Result<Vec<(String, u32, Vec<u8>)>> {
        let read = |p: &Path| std::fs::read(p).map_err(io_err(p));
        let mut out = vec![(
            paths::entry(paths::INIT).to_owned(),
            0o755,
            read(&self.agent)?,
        )];
        let mut list = String::new();
        for (i, m) in self.modules.iter().enumerate() {
            // Decompress on the host: in-kernel xz under TCG costs boot time.
            let (name, data) = module_file(m)?;
            let guest = format!("{}/{i:02}-{name}", paths::MODULES_DIR);
            list.push_str(&format!("{guest}\n"));
            out.push((paths::entry(&guest).to_owned(), 0o644, data));
        }
        out.push((
            paths::entry(paths::MODULE_LIST).to_owned(),
            0o644,
            list.into_bytes(),
        ));
        for f in &self.files {
            out.push((f.guest_path.clone(), f.mode, read(&f.host_path)?));
        }
        Ok(out)
    }

    /// Build the image, or return the cached one with the same inputs.
    pub fn build(&self) -> Result<PathBuf> {
        build_archive(LAYOUT_VERSION, &self.contents()?)
    }
}

/// A `newc` archive of `contents` (guest path, mode, bytes) plus the
/// standard directories and `/dev/console`, cached under `images/` by
/// `layout` and the contents' hashes. Shared by the agent image and other
/// images the lab boots (e.g. `lab nested`'s L1).
pub fn build_archive(layout: &str, contents: &[(String, u32, Vec<u8>)]) -> Result<PathBuf> {
    let mut key_material = String::from(layout);
    for (path, mode, data) in contents {
        key_material.push_str(&format!("\n{path} {mode:o} {}", sha256_hex(data)));
    }
    let key = sha256_hex(key_material.as_bytes());
    let zstd = compressed();
    let ext = if zstd { "cpio.zst" } else { "cpio" };
    let out = cache::dir("images")?.join(format!("{}.{ext}", &key[..24]));
    if out.is_file() {
        return Ok(out);
    }
    let mut archive = write_archive(contents).map_err(io_err(&out))?;
    if zstd {
        archive = zstd::bulk::compress(&archive, ZSTD_LEVEL).map_err(io_err(&out))?;
    }
    write_atomic(&out, &archive)?;
    Ok(out)
}

/// A module file's contents, decompressed when it is `.xz`, with the name it
/// should have once decompressed (`virtio_mmio.ko`).
pub fn module_file(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("module.ko");
    Ok(match name.strip_suffix(".xz") {
        Some(plain) => (plain.to_owned(), unxz(path)?),
        None => (name.to_owned(), std::fs::read(path).map_err(io_err(path))?),
    })
}

/// Decompress an `.xz` file with the `xz` tool, cached by the file's path,
/// size and mtime (`modules/` in the cache).
fn unxz(path: &Path) -> Result<Vec<u8>> {
    let key = crate::file_fingerprint(path)?;
    let cached = cache::dir("modules")?.join(format!("{}.ko", &key[..24]));
    if let Ok(data) = std::fs::read(&cached) {
        return Ok(data);
    }
    let out = crate::run_tool(std::process::Command::new("xz").arg("-dc").arg(path))?;
    write_atomic(&cached, &out.stdout)?;
    Ok(out.stdout)
}

fn write_archive(contents: &[(String, u32, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    let mut made: Vec<String> = Vec::new();
    for d in DIRS.iter().map(|d| paths::entry(d)) {
        w.dir(d, 0o755)?;
        made.push(d.to_owned());
    }
    // The kernel opens /dev/console for init's stdin/stdout/stderr.
    w.chardev("dev/console", 0o600, 5, 1)?;
    for (path, mode, data) in contents {
        // Create missing parent directories, outermost first.
        let mut parents: Vec<&str> = Vec::new();
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            parents.push(parent);
            p = parent;
        }
        for parent in parents.into_iter().rev() {
            if !made.iter().any(|m| m == parent) {
                w.dir(parent, 0o755)?;
                made.push(parent.to_owned());
            }
        }
        w.file(path, *mode, data)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_image_and_key_changes_with_content() {
        let dir = std::env::temp_dir().join(format!("arena-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("ARENA_LAB_CACHE", dir.join("cache"));
        let agent = dir.join("agent");
        std::fs::write(&agent, b"agent-v1").unwrap();
        let extra = dir.join("x.o");
        std::fs::write(&extra, b"obj").unwrap();
        let spec = ImageSpec {
            agent: agent.clone(),
            modules: vec![],
            files: vec![ImageFile {
                guest_path: "bpf/sub/x.o".into(),
                host_path: extra,
                mode: 0o644,
            }],
        };
        let a = spec.build().unwrap();
        assert_eq!(spec.build().unwrap(), a);
        let archive = std::fs::read(&a).unwrap();
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("bpf/sub/x.o"));
        assert!(text.contains("agent-v1"));
        std::fs::write(&agent, b"agent-v2").unwrap();
        assert_ne!(spec.build().unwrap(), a);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

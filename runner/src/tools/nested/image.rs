//! L1's initramfs: static busybox, `l1-init.sh` as `/init`, and the modules
//! L1 needs (KVM, virtio-mmio, 9p, overlay) resolved from the kernel's own
//! modules tree, like the agent image's. Cached by content.

use std::path::PathBuf;

use arena_images::initramfs;
use arena_images::kernel::Kernel;
use arena_images::modules::ModuleDeps;

use super::NestedError;

/// Bumped when the layout changes.
const LAYOUT: &str = "arena-nested-l1-v1";
/// L1's `/init`.
const INIT: &str = include_str!("l1-init.sh");
/// The static busybox that runs it (Debian's `busybox-static`).
pub(super) const BUSYBOX: &str = "/bin/busybox";
/// Modules L1 loads, in this order (dependencies are added first).
const MODULES: &[&str] = &["kvm_amd", "virtio_mmio", "9pnet_virtio", "9p", "overlay"];
/// Where the load list lives in L1.
const MODULE_LIST: &str = "etc/nested/modules";

/// Builds (or finds cached) L1's initramfs for `kernel`.
pub fn build(kernel: &Kernel) -> Result<PathBuf, NestedError> {
    let dir = kernel
        .modules
        .as_ref()
        .ok_or_else(|| NestedError::NoModules(kernel.release.clone()))?;
    let deps = ModuleDeps::load(dir)?;
    let busybox = std::fs::read(BUSYBOX).map_err(NestedError::Busybox)?;
    let mut contents = vec![
        ("init".to_owned(), 0o755, INIT.as_bytes().to_vec()),
        ("bin/busybox".to_owned(), 0o755, busybox),
    ];
    let mut list = String::new();
    for (i, m) in deps.resolve(MODULES)?.iter().enumerate() {
        let (name, data) = initramfs::module_file(m)?;
        let guest = format!("modules/{i:02}-{name}");
        list.push_str(&format!("/{guest}\n"));
        contents.push((guest, 0o644, data));
    }
    contents.push((MODULE_LIST.to_owned(), 0o644, list.into_bytes()));
    Ok(initramfs::build_archive(LAYOUT, &contents)?)
}

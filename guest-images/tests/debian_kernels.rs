//! Debian kernel channels without the network: package-name resolution and
//! the two packagings' layouts, on fake unpacked trees.

use std::path::{Path, PathBuf};

use arena_images::kernel::apt::{parse_show, PackageInfo};
use arena_images::kernel::debian::{layout, newest, Channel, Packaging, DEFAULT};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("arena-debk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"x").unwrap();
}

/// What `apt-cache pkgnames linux-image-` lists in bookworm-security and sid.
const NAMES: &str = "linux-image-6.12.117+deb12-amd64\nlinux-image-6.12.99+deb12-amd64\n\
    linux-image-6.12.117+deb12-cloud-amd64\nlinux-image-7.2.13+deb14-amd64\n\
    linux-image-7.2.13+deb14-amd64-dbg\nlinux-image-7.2.9+deb14-amd64\n\
    linux-image-7.2.13+deb14-rt-amd64\nlinux-image-amd64\n";

#[test]
fn series_and_newest_resolve_to_the_generic_amd64_package() {
    let c = newest(NAMES, DEFAULT, None).unwrap();
    assert_eq!(c.package, "linux-image-6.12.117+deb12-amd64");
    let c = newest(NAMES, "7.2".parse().unwrap(), None).unwrap();
    assert_eq!(c.package, "linux-image-7.2.13+deb14-amd64");
    assert_eq!(c.release, "7.2.13+deb14-amd64");
    assert_eq!(newest(NAMES, Channel::Newest, None).unwrap(), c);
    assert_eq!(
        newest(NAMES, "7.2".parse().unwrap(), Some(9))
            .unwrap()
            .release,
        "7.2.9+deb14-amd64"
    );
    assert!(newest(NAMES, "7.3".parse().unwrap(), None).is_none());
}

#[test]
fn packaging_told_from_the_image_package_dependencies() {
    let c72 = newest(NAMES, "7.2".parse().unwrap(), None).unwrap();
    let show = "Package: linux-image-7.2.13+deb14-amd64\nVersion: 7.2.13-1\n\
        Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
        linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), \
        linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n";
    let info = parse_show(show).unwrap();
    assert_eq!(info.version, "7.2.13-1");
    let p = Packaging::of(&c72, &info);
    assert_eq!(
        p.packages(),
        [
            "linux-binary-7.2.13+deb14-amd64",
            "linux-modules-7.2.13+deb14-amd64",
            "linux-base-7.2.13+deb14-amd64"
        ]
    );
    let c612 = newest(NAMES, DEFAULT, None).unwrap();
    let info = PackageInfo {
        version: "6.12.117-1".into(),
        depends: vec!["kmod".into(), "linux-base".into(), "initramfs-tools".into()],
    };
    assert_eq!(
        Packaging::of(&c612, &info).packages(),
        ["linux-image-6.12.117+deb12-amd64"]
    );
}

#[test]
fn single_package_layout_of_6_12() {
    let root = scratch("single");
    let rel = "6.12.117+deb12-amd64";
    touch(&root, &format!("boot/vmlinuz-{rel}"));
    touch(&root, &format!("boot/config-{rel}"));
    touch(
        &root,
        &format!("lib/modules/{rel}/kernel/drivers/virtio/virtio_mmio.ko.xz"),
    );
    let l = layout(&root, rel).unwrap();
    assert_eq!(l.vmlinuz, root.join(format!("boot/vmlinuz-{rel}")));
    assert_eq!(l.config, Some(root.join(format!("boot/config-{rel}"))));
    assert_eq!(l.modules, root.join(format!("lib/modules/{rel}")));
    assert_eq!(l.depmod_base, root.join(""));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn split_package_layout_of_7_2() {
    let root = scratch("split");
    let rel = "7.2.13+deb14-amd64";
    touch(&root, &format!("usr/lib/modules/{rel}/vmlinuz"));
    touch(&root, &format!("usr/lib/modules/{rel}/config"));
    touch(
        &root,
        &format!("usr/lib/modules/{rel}/kernel/drivers/virtio/virtio_mmio.ko.xz"),
    );
    let l = layout(&root, rel).unwrap();
    assert_eq!(
        l.vmlinuz,
        root.join(format!("usr/lib/modules/{rel}/vmlinuz"))
    );
    assert_eq!(
        l.config,
        Some(root.join(format!("usr/lib/modules/{rel}/config")))
    );
    assert_eq!(l.modules, root.join(format!("usr/lib/modules/{rel}")));
    assert_eq!(l.depmod_base, root.join("usr"));
    // A tree without the kernel is refused with the release in the message.
    std::fs::remove_file(root.join(format!("usr/lib/modules/{rel}/vmlinuz"))).unwrap();
    let err = layout(&root, rel).unwrap_err().to_string();
    assert!(err.contains("vmlinuz") && err.contains(rel), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

//! Builds the arena selftests for the default Debian kernel for real: fetches
//! `linux-source-6.12` at the kernel's version (first run only) and compiles
//! `test_progs` with the tree's Makefile. Skipped when no default kernel is
//! available (neither in the cache nor unpacked in /tmp/k).

use std::path::PathBuf;
use std::time::Instant;

use arena_images::initramfs::ImageFile;
use arena_images::kernel::{debian, Kernel, KernelOrigin};
use arena_images::selftests;

/// The cached default kernel, else the package unpacked in /tmp/k.
fn default_kernel() -> Option<Kernel> {
    if let Some(k) = debian::cached() {
        return Some(k);
    }
    let deb = std::fs::read_dir("/tmp/k")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))?;
    let mut fields = deb.split('_');
    let (package, version) = (fields.next()?, fields.next()?);
    let release = package.strip_prefix("linux-image-")?;
    let bzimage = PathBuf::from(format!("/tmp/k/x/boot/vmlinuz-{release}"));
    let mut kernel = Kernel::from_user_file(&bzimage, None).ok()?;
    kernel.origin = KernelOrigin::Debian {
        package: package.to_owned(),
        version: version.to_owned(),
    };
    Some(kernel)
}

#[test]
fn builds_arena_test_progs_for_the_default_kernel() {
    let Some(kernel) = default_kernel() else {
        eprintln!("skipping: no default kernel in the cache and none unpacked in /tmp/k");
        return;
    };

    let t = Instant::now();
    let build = selftests::build(&kernel, None).expect("selftests build");
    eprintln!("first build call: {:.1?}", t.elapsed());
    let bytes = std::fs::read(&build.test_progs).unwrap();
    assert!(
        bytes.starts_with(b"\x7fELF"),
        "test_progs is not an ELF file"
    );
    assert!(kernel.release.starts_with(&build.source_version));
    assert!(
        build.tests.iter().any(|t| t.starts_with("arena_")),
        "{:?}",
        build.tests
    );
    assert!(build.tests.iter().any(|t| t.starts_with("verifier_arena")));
    assert!(build.tests.iter().all(|t| selftests::is_arena(t)));

    let t = Instant::now();
    assert_eq!(selftests::build(&kernel, None).unwrap(), build);
    let cached = t.elapsed();
    eprintln!("cached build call: {cached:.1?}");
    assert!(cached.as_secs_f64() < 1.0, "cached call took {cached:?}");

    let files = selftests::image_files(&kernel).unwrap();
    let find = |guest: &str| files.iter().find(|f| f.guest_path == guest);
    let test_progs = find("selftests/test_progs").expect("test_progs listed");
    assert_eq!(test_progs.mode, 0o755);
    assert!(find("lib64/ld-linux-x86-64.so.2").is_some(), "{files:#?}");
    assert!(files.iter().any(|f| f.guest_path.ends_with("/libelf.so.1")));
    for f in &files {
        let meta = std::fs::symlink_metadata(&f.host_path).unwrap();
        assert!(
            meta.is_file(),
            "{} is not a regular file",
            f.host_path.display()
        );
    }
    lists_tests_in_chroot(&files, &build.tests);

    // The same tree given as the source of a user kernel builds the same tests.
    let KernelOrigin::Debian { version, .. } = &kernel.origin else {
        unreachable!("the default kernel is Debian's")
    };
    let tree = selftests::debian_source("6.12", version).unwrap();
    let mut user = kernel.clone();
    user.origin = KernelOrigin::User {
        path: kernel.boot_image.clone(),
    };
    assert!(selftests::image_files(&user).is_err(), "no --kernel-src");
    let t = Instant::now();
    let from_tree = selftests::build(&user, Some(&tree)).unwrap();
    eprintln!("build from a tree: {:.1?}", t.elapsed());
    assert_eq!(from_tree.tests, build.tests);
    assert_ne!(from_tree.dir, build.dir);
    let t = Instant::now();
    let files = selftests::image_files_from(&user, Some(&tree)).unwrap();
    eprintln!("cached image_files_from a tree: {:.1?}", t.elapsed());
    assert!(files.iter().any(|f| f.host_path == from_tree.test_progs));

    // A kernel of another version is refused rather than tested with these.
    let mut other = kernel.clone();
    let v = &build.source_version;
    other.release = kernel.release.replacen(v.as_str(), &format!("{v}9"), 1);
    let err = selftests::build(&other, None).unwrap_err().to_string();
    assert!(err.contains(&build.source_version), "{err}");
}

/// Run `test_progs -l` in a chroot holding exactly the image files (plus
/// /proc and /sys, mounted in the guest too): proves the list of libraries
/// is complete. Needs root (a mount namespace); skipped otherwise.
fn lists_tests_in_chroot(files: &[ImageFile], tests: &[String]) {
    let sh = |script: &str| {
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-ec", script])
            .output()
    };
    if !sh("mount -t tmpfs none /mnt").is_ok_and(|o| o.status.success()) {
        eprintln!("skipping chroot check: no mount namespace (not root?)");
        return;
    }
    let root = std::env::temp_dir().join(format!("arena-st-chroot-{}", std::process::id()));
    for f in files {
        let dst = root.join(&f.guest_path);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f.host_path, &dst).unwrap();
    }
    for d in ["proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let r = root.display();
    let out = sh(&format!(
        "mount -t proc proc {r}/proc; mount -t sysfs sys {r}/sys; \
         chroot {r} /selftests/test_progs -l"
    ))
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(
        out.status.success(),
        "test_progs -l in a chroot of the image files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(listed, tests, "test_progs -l in the chroot");
}

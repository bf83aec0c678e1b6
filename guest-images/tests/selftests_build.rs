//! Builds the arena selftests for the default Debian kernel for real: the
//! kernel the lab uses (from the cache, else fetched as the lab does), its
//! `linux-source-6.12` at the kernel's version (first run only) and
//! `test_progs` compiled with the tree's Makefile. Needs what the lab needs
//! (apt with the Debian archive, clang); fails, never skips, without them.

use std::path::Path;
use std::time::SystemTime;

use arena_images::initramfs::ImageFile;
use arena_images::kernel::{debian, KernelOrigin};
use arena_images::selftests;

/// When the build record in `dir` was written.
fn record_written(dir: &Path) -> SystemTime {
    std::fs::metadata(dir.join("build.json"))
        .and_then(|m| m.modified())
        .expect("build.json of a finished build")
}

#[test]
fn builds_arena_test_progs_for_the_default_kernel() {
    let kernel = debian::default_kernel()
        .unwrap_or_else(|e| panic!("the lab's default kernel is unavailable: {e}"));

    let build = selftests::build(&kernel, None).expect("selftests build");
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

    // A second call finds the cached build instead of building again.
    let written = record_written(&build.dir);
    assert_eq!(selftests::build(&kernel, None).unwrap(), build);
    assert_eq!(record_written(&build.dir), written, "rebuilt");

    let files = selftests::image_files_from(&kernel, None).unwrap();
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
    assert!(
        selftests::image_files_from(&user, None).is_err(),
        "no --kernel-src"
    );
    let from_tree = selftests::build(&user, Some(&tree)).unwrap();
    assert_eq!(from_tree.tests, build.tests);
    assert_ne!(from_tree.dir, build.dir);
    let written = record_written(&from_tree.dir);
    let files = selftests::image_files_from(&user, Some(&tree)).unwrap();
    assert!(files.iter().any(|f| f.host_path == from_tree.test_progs));
    assert_eq!(record_written(&from_tree.dir), written, "rebuilt");

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
        eprintln!("SKIPPED chroot check of lists_tests_in_chroot: no mount namespace (not root?); it runs as root, as in CI");
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

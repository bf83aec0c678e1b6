//! Where the guest image puts what the agent reads: the host's image builder
//! writes these paths and the agent opens them, so both ends name them here.
//! They are absolute, as the guest sees them; initramfs entries are named
//! without the leading `/` ([`entry`]).

/// The agent: the kernel runs an initramfs's `/init` as PID 1.
pub const INIT: &str = "/init";
/// Files the image builder writes for the agent.
pub const CONFIG_DIR: &str = "/etc/arena";
/// The kernel modules the agent loads at boot: one absolute path per line,
/// dependencies first.
pub const MODULE_LIST: &str = "/etc/arena/modules";
/// The module files [`MODULE_LIST`] names (decompressed on the host, since
/// in-kernel xz under TCG costs boot time).
pub const MODULES_DIR: &str = "/modules";
/// The lab's BPF objects (`guest-images/bpf/*.bpf.c`), by file name.
pub const BPF_DIR: &str = "/bpf";
/// The upstream selftests: `test_progs` runs with it as cwd, since it opens
/// its BPF objects by bare file name.
pub const SELFTESTS_DIR: &str = "/selftests";
/// The upstream `test_progs`, reduced to the arena tests.
pub const TEST_PROGS: &str = "/selftests/test_progs";
/// Arena tests the host could not build, as `name<TAB>reason` lines, so the
/// guest reports each as an error rather than leaving it out silently.
pub const NOT_BUILT: &str = "/selftests/not_built.tsv";
/// Subtests the host knows from the build (libarena's), as
/// `test<TAB>subtest` lines: a test the kernel's config rules out is
/// reported skipped subtest by subtest.
pub const SUBTESTS: &str = "/selftests/subtests.tsv";
/// Shared libraries of `test_progs`: a default search directory of the
/// x86_64 glibc loader, so nothing needs `LD_LIBRARY_PATH`.
pub const LIB_DIR: &str = "/lib/x86_64-linux-gnu";
/// Where libbpf looks for `config-$(uname -r)` to resolve `__kconfig`
/// externs when the kernel has no `/proc/config.gz`.
pub const BOOT_DIR: &str = "/boot";

/// The initramfs entry name of a guest path: relative to the root.
pub fn entry(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The initramfs entry name of `name` in the guest directory `dir`.
pub fn entry_in(dir: &str, name: &str) -> String {
    format!("{}/{name}", entry(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const DIRS: &[&str] = &[
        CONFIG_DIR,
        MODULES_DIR,
        BPF_DIR,
        SELFTESTS_DIR,
        LIB_DIR,
        BOOT_DIR,
    ];
    const FILES: &[&str] = &[INIT, MODULE_LIST, TEST_PROGS, NOT_BUILT];

    fn parent(path: &str) -> &str {
        match path.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((dir, _)) => dir,
            None => "",
        }
    }

    #[test]
    fn absolute_normal_and_distinct() {
        let all: Vec<&str> = DIRS.iter().chain(FILES).copied().collect();
        for p in &all {
            assert!(p.starts_with('/') && p.len() > 1, "{p} is not absolute");
            assert!(!p.ends_with('/') && !p.contains("//"), "{p} is not normal");
            assert!(
                p.split('/').all(|c| c != "." && c != ".."),
                "{p} is not normal"
            );
        }
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), all.len());
    }

    #[test]
    fn files_sit_in_their_directories_and_no_file_is_a_directory() {
        assert_eq!(parent(MODULE_LIST), CONFIG_DIR);
        assert_eq!(parent(TEST_PROGS), SELFTESTS_DIR);
        assert_eq!(parent(NOT_BUILT), SELFTESTS_DIR);
        for f in FILES {
            for d in DIRS {
                assert!(
                    !d.starts_with(&format!("{f}/")),
                    "{d} is under the file {f}"
                );
            }
        }
    }

    #[test]
    fn entries_are_relative() {
        assert_eq!(entry(TEST_PROGS), "selftests/test_progs");
        assert_eq!(entry(INIT), "init");
        assert_eq!(entry_in(BPF_DIR, "x.bpf.o"), "bpf/x.bpf.o");
        assert_eq!(
            entry_in(LIB_DIR, "libc.so.6"),
            "lib/x86_64-linux-gnu/libc.so.6"
        );
    }
}

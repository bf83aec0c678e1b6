//! What a replay must repeat besides the scenario file and its seed: the
//! exact kernel (a Debian spec pinned to the release that ran, or the
//! user's files, and the sha256 to insist on), the backend, and every
//! option that can change a verdict (`--no-known-issues`, the timeouts, the
//! command line). One builder serves the `reproduce:` line a failing
//! attempt prints and `lab repro`, so the two cannot drift.

use std::path::Path;

use arena_images::kernel::debian::Spec;
use arena_images::kernel::{Kernel, KernelOrigin};
use arena_protocol::scenario::VmSpec;

use crate::plan::attempts::shell_quote;
use crate::KernelArgs;

/// The run's own options that decide verdicts, as the user gave them
/// (before `--timeout-scale` scaled the boot timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `--no-known-issues`.
    pub no_known_issues: bool,
    /// `--timeout-scale`.
    pub timeout_scale: Option<f64>,
    /// `--boot-timeout`, unscaled.
    pub boot_timeout: u64,
    /// `--append`.
    pub append: String,
}

/// The `lab run` options that select this kernel again and refuse any
/// other: a Debian kernel as `debian:X.Y.Z` (its exact release), a user's
/// kernel by the files given (absolute), and `--kernel-sha256` always.
pub fn kernel_args(given: &KernelArgs, kernel: &Kernel) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(spec) = Spec::pinning(kernel) {
        a.extend(["--kernel".into(), format!("debian:{spec}")]);
    } else {
        for (option, path) in [
            ("--kernel", &given.kernel),
            ("--modules", &given.modules),
            ("--kernel-src", &given.kernel_src),
            ("--vmlinux", &given.vmlinux),
            ("--kernel-tree", &given.kernel_tree),
        ] {
            if let Some(p) = path {
                let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                a.extend([option.to_owned(), p.to_string_lossy().into_owned()]);
            }
        }
    }
    a.extend(["--kernel-sha256".into(), kernel.sha256.clone()]);
    a
}

/// Everything but the scenario, seed and VM shape: recorded in the
/// summary (`replay_args`) once the kernel and backend are known.
pub fn run_args(opts: &Options, given: &KernelArgs, kernel: &Kernel, backend: &str) -> Vec<String> {
    let mut a = kernel_args(given, kernel);
    a.extend(["--backend".into(), backend.to_owned()]);
    if opts.no_known_issues {
        a.push("--no-known-issues".into());
    }
    if let Some(x) = opts.timeout_scale {
        a.extend(["--timeout-scale".into(), x.to_string()]);
    }
    a.extend(["--boot-timeout".into(), opts.boot_timeout.to_string()]);
    if !opts.append.trim().is_empty() {
        a.extend(["--append".into(), opts.append.clone()]);
    }
    a
}

/// The recorded kernel as replay options, for a summary written before
/// `replay_args` was recorded: the kernel and its sha256, nothing else.
pub fn from_kernel_record(kernel: &Kernel, modules: Option<&Path>) -> Vec<String> {
    let given = match &kernel.origin {
        KernelOrigin::User { path } => KernelArgs {
            kernel: Some(path.clone()),
            modules: modules.map(Path::to_owned),
            ..KernelArgs::default()
        },
        KernelOrigin::Debian { .. } => KernelArgs::default(),
    };
    kernel_args(&given, kernel)
}

/// The words after `lab run` that replay one attempt: the recorded options,
/// then its seed, VM shape and the scenario.
pub fn attempt_args(
    recorded: &[String],
    run_seed: u64,
    vm: &VmSpec,
    name: &str,
    file: &Path,
) -> Vec<String> {
    let mut a = recorded.to_vec();
    a.extend([
        "--seed".into(),
        run_seed.to_string(),
        "--vcpus".into(),
        vm.vcpus.to_string(),
        "--memory-mib".into(),
        vm.memory_mib.to_string(),
        "--only".into(),
        name.to_owned(),
        file.to_string_lossy().into_owned(),
    ]);
    a
}

/// The `reproduce:` line: `lab run` with [`attempt_args`], shell-quoted.
pub fn line(recorded: &[String], run_seed: u64, vm: &VmSpec, name: &str, file: &Path) -> String {
    ["lab".to_owned(), "run".to_owned()]
        .into_iter()
        .chain(
            attempt_args(recorded, run_seed, vm, name, file)
                .iter()
                .map(|w| shell_quote(w)),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn debian_kernel(release: &str) -> Kernel {
        Kernel {
            origin: KernelOrigin::Debian {
                package: format!("linux-binary-{release}"),
                version: "7.2.13-1".into(),
                other_packages: vec![],
                suite: Some("sid".into()),
            },
            boot_image: PathBuf::from("/c/vmlinux"),
            elf_without_pvh: false,
            bzimage: None,
            vmlinux: None,
            modules: None,
            release: release.into(),
            version: "Linux version 7.2.13".into(),
            sha256: "abc".into(),
        }
    }

    #[test]
    fn a_debian_kernel_replays_pinned_to_its_release_with_every_verdict_option() {
        let opts = Options {
            no_known_issues: true,
            timeout_scale: Some(2.5),
            boot_timeout: 120,
            append: "foo=1".into(),
        };
        // Given as `debian:7.2`: replayed as the exact release that ran.
        let given = KernelArgs {
            kernel: Some("debian:7.2".into()),
            ..KernelArgs::default()
        };
        let a = run_args(&opts, &given, &debian_kernel("7.2.13+deb14-amd64"), "qemu");
        assert_eq!(
            a,
            [
                "--kernel",
                "debian:7.2.13",
                "--kernel-sha256",
                "abc",
                "--backend",
                "qemu",
                "--no-known-issues",
                "--timeout-scale",
                "2.5",
                "--boot-timeout",
                "120",
                "--append",
                "foo=1"
            ]
        );
        let vm = VmSpec {
            vcpus: 4,
            memory_mib: 256,
        };
        let l = line(&a, 7, &vm, "race", Path::new("r/race/it's.yaml"));
        assert!(l.starts_with("lab run --kernel debian:7.2.13 --kernel-sha256 abc"));
        assert!(l.contains(" --no-known-issues "), "{l}");
        assert!(
            l.ends_with("--seed 7 --vcpus 4 --memory-mib 256 --only race 'r/race/it'\\''s.yaml'"),
            "{l}"
        );
        // The default kernel is pinned too: the default moves over time.
        let a = run_args(
            &Options {
                no_known_issues: false,
                timeout_scale: None,
                boot_timeout: 60,
                append: String::new(),
            },
            &KernelArgs::default(),
            &debian_kernel("6.12.118+deb12-amd64"),
            "kvm",
        );
        assert_eq!(a[..2], ["--kernel", "debian:6.12.118"]);
        assert!(!a.contains(&"--no-known-issues".to_owned()));
    }

    #[test]
    fn a_user_kernel_replays_by_its_files_made_absolute() {
        let mut k = debian_kernel("6.12.0");
        k.origin = KernelOrigin::User {
            path: "tree/arch/x86/boot/bzImage".into(),
        };
        let given = KernelArgs {
            kernel_tree: Some("tree".into()),
            ..KernelArgs::default()
        };
        let a = kernel_args(&given, &k);
        assert_eq!(a[0], "--kernel-tree");
        assert!(
            Path::new(&a[1]).is_absolute() && a[1].ends_with("/tree"),
            "{a:?}"
        );
        assert_eq!(a[2..], ["--kernel-sha256", "abc"]);
        let old = from_kernel_record(&k, Some(Path::new("/m")));
        assert_eq!(old[0], "--kernel");
        assert_eq!(old[2..], ["--modules", "/m", "--kernel-sha256", "abc"]);
    }
}

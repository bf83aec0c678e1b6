//! `lab kernel build TREE`: a kernel tree built into something the lab can
//! boot, with the config the lab needs merged in.
//!
//! The build is the tree's own Kbuild: `merge_config.sh` for the fragment
//! ([`super::kconfig::fragment`]), then `make bzImage vmlinux` (and the
//! modules, when the config has any). Kbuild is incremental, so after the
//! first build a one-file change rebuilds in a minute or two; the merge is
//! skipped when the config already satisfies the fragment, so it never
//! touches the config (and never forces a rebuild) for nothing.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::kconfig::{self, KernelConfig, Setting};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The kernel source tree.
    pub tree: PathBuf,
    /// Build directory (`make O=`); `None` builds in the tree.
    pub out: Option<PathBuf>,
    /// Merge the detection options too ([`kconfig::fragment`]`(true)`).
    pub debug: bool,
    /// Parallel jobs (`make -j`).
    pub jobs: usize,
    /// The config to start from when the build directory has no `.config`.
    pub base: BaseConfig,
}

/// The starting config of a fresh build directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseConfig {
    /// `make defconfig kvm_guest.config`: what kernel developers boot in VMs.
    Defconfig,
    /// `make tinyconfig`: the smallest kernel the lab can use (tests).
    Tiny,
}

/// What `tinyconfig` leaves out that booting the agent and running the
/// scenarios needs: a console, SMP for the races, /proc and /sys, ELF
/// binaries, futexes for threads, sysctl, symbol names in traces, and ACPI:
/// QEMU's microvm describes its virtio-mmio devices only there (with ACPI
/// on it adds no `virtio_mmio.device=`), power-off needs it, and PnP ACPI
/// gives the serial port its interrupt under a hardware-reduced FADT.
/// Without PCI, x86 ACPI cannot load the tables ("AE_BAD_PARAMETER, During
/// Region initialization"), though no PCI device is used.
/// The arena catalogue needs more than a boot: NET (libbpf probes a
/// socket-filter program before loading any object; without it every BPF
/// scenario fails with EINVAL), CGROUPS and MEMCG (the leak scenarios'
/// memory cgroup) and ADVISE_SYSCALLS (`madvise`). With them the whole
/// catalogue runs on a tiny kernel, which `lab mutate` rebuilds per mutant.
/// Fault injection (`fail_allocs:` steps) tells allocations that may sleep
/// from those that may not, which no other scenario can.
const TINY_BOOTABLE: &[&str] = &[
    "PRINTK",
    "BUG",
    "SMP",
    "PROC_FS",
    "PROC_SYSCTL",
    "SYSFS",
    "TMPFS",
    "SHMEM",
    "FUTEX",
    "MULTIUSER",
    "POSIX_TIMERS",
    "BINFMT_SCRIPT",
    "KALLSYMS",
    "ACPI",
    "PCI",
    "PNP",
    "MEMFD_CREATE",
    "NET",
    "CGROUPS",
    "MEMCG",
    "ADVISE_SYSCALLS",
    "DEBUG_KERNEL",
    "DEBUG_FS",
    "FAULT_INJECTION",
    "FAILSLAB",
    "FAIL_PAGE_ALLOC",
    "FAULT_INJECTION_DEBUG_FS",
];

impl BaseConfig {
    /// Options the base needs on top of the lab's fragment.
    fn extras(self) -> &'static [&'static str] {
        match self {
            BaseConfig::Defconfig => &[],
            BaseConfig::Tiny => TINY_BOOTABLE,
        }
    }

    /// The `make` targets that create it.
    fn targets(self) -> &'static [&'static str] {
        match self {
            BaseConfig::Defconfig => &["defconfig", "kvm_guest.config"],
            BaseConfig::Tiny => &["tinyconfig"],
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    /// The build directory (the tree, or `O=`).
    pub dir: PathBuf,
    /// `arch/x86/boot/bzImage`.
    pub bzimage: PathBuf,
    /// The ELF `vmlinux` (symbols, BTF, DWARF when configured).
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` installed under the build directory, when
    /// the config builds modules.
    pub modules: Option<PathBuf>,
    /// `make kernelrelease`.
    pub release: String,
    /// Whether the lab's fragment had to be merged into the config.
    pub merged_config: bool,
    /// The ccache directory the compilers went through, if any.
    pub ccache: Option<PathBuf>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The tree is not a kernel tree.
    #[error("{0}: not a kernel source tree (no Makefile and Kconfig)")]
    NotATree(PathBuf),
    /// A step could not be started or its files not written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A `make` (or the config merge) failed.
    #[error("`{command}` failed ({status}); the compiler said:\n{errors}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The error lines (`error:`, `Error `), else the output's tail.
        errors: String,
    },
    /// The merged config still lacks options the lab needs (their
    /// dependencies are off in this tree's config).
    #[error("the config still lacks {0} after merging the lab's fragment; enable what they depend on (make menuconfig)")]
    Unmet(String),
}

/// Where [`build`] installs the modules, under the build directory
/// (`<it>/lib/modules/<release>`): `--kernel-tree` finds them there.
pub const MODULES_ROOT: &str = "arena-lab-modules";

/// Lines of output kept for a failure message when no error line is found.
const TAIL_LINES: usize = 30;
/// Error lines shown at most.
const MAX_ERROR_LINES: usize = 40;

/// Builds `req`, calling `on_line` with each line `make` prints (for progress).
pub fn build(req: &BuildRequest, mut on_line: impl FnMut(&str)) -> Result<Built, BuildError> {
    let tree = &req.tree;
    if !tree.join("Makefile").is_file() || !tree.join("Kconfig").is_file() {
        return Err(BuildError::NotATree(tree.clone()));
    }
    let dir = req.out.clone().unwrap_or_else(|| tree.clone());
    std::fs::create_dir_all(&dir).map_err(|source| BuildError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let make = |args: &[&str], on_line: &mut dyn FnMut(&str)| {
        let mut c = make_command(req);
        c.arg(format!("-j{}", req.jobs.max(1))).args(args);
        run(c, on_line)
    };
    let config = dir.join(".config");
    if !config.is_file() {
        make(req.base.targets(), &mut on_line)?;
    }
    let merged_config = merge_fragment(req, &dir, &mut on_line)?;
    make(&["bzImage", "vmlinux"], &mut on_line)?;
    let cfg = read_config(&config)?;
    let release = capture(req, "kernelrelease")?;
    let modules = if cfg.setting("MODULES") == Setting::BuiltIn && cfg.has_modules() {
        make(&["modules"], &mut on_line)?;
        let root = dir.join(MODULES_ROOT);
        let path = format!("INSTALL_MOD_PATH={}", root.display());
        make(
            &["modules_install", &path, "INSTALL_MOD_STRIP=1"],
            &mut on_line,
        )?;
        Some(root.join("lib/modules").join(&release))
    } else {
        None
    };
    Ok(Built {
        bzimage: dir.join("arch/x86/boot/bzImage"),
        vmlinux: dir.join("vmlinux"),
        modules,
        release,
        merged_config,
        ccache: super::ccache::CompilerCache::detect(&req.tree, &dir).map(|c| c.dir),
        dir,
    })
}

/// Merges the lab's fragment into `dir/.config` unless it already holds;
/// `true` when it merged. Fails if the result still lacks a must-have.
fn merge_fragment(
    req: &BuildRequest,
    dir: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<bool, BuildError> {
    let config = dir.join(".config");
    let mut text = kconfig::fragment(req.debug);
    for extra in req.base.extras() {
        text.push_str(&format!("CONFIG_{extra}=y\n"));
    }
    let wanted = KernelConfig::parse(&text);
    let unmet = |cfg: &KernelConfig| {
        wanted
            .options()
            .filter(|o| cfg.setting(o) != Setting::BuiltIn)
            .map(|o| format!("CONFIG_{o}"))
            .collect::<Vec<_>>()
    };
    if unmet(&read_config(&config)?).is_empty() {
        return Ok(false);
    }
    let fragment = dir.join("arena-lab.config");
    std::fs::write(&fragment, &text).map_err(|source| BuildError::Io {
        what: format!("writing {}", fragment.display()),
        source,
    })?;
    let mut c = Command::new(req.tree.join("scripts/kconfig/merge_config.sh"));
    c.current_dir(&req.tree)
        .arg("-m")
        .arg("-O")
        .arg(dir)
        .arg(&config)
        .arg(&fragment);
    run(c, on_line)?;
    let mut c = make_command(req);
    c.arg("olddefconfig");
    run(c, on_line)?;
    let still = unmet(&read_config(&config)?)
        .into_iter()
        // Detection options that cannot be had on this arch or compiler
        // are advice, not a failure; the must-haves are not.
        .filter(|o| {
            kconfig::REQUIREMENTS.iter().any(|r| {
                r.purpose != kconfig::Purpose::Detection && format!("CONFIG_{}", r.option) == *o
            })
        })
        .collect::<Vec<_>>();
    if !still.is_empty() {
        return Err(BuildError::Unmet(still.join(", ")));
    }
    Ok(true)
}

fn read_config(path: &Path) -> Result<KernelConfig, BuildError> {
    std::fs::read_to_string(path)
        .map(|t| KernelConfig::parse(&t))
        .map_err(|source| BuildError::Io {
            what: format!("reading {}", path.display()),
            source,
        })
}

/// `make -C TREE [O=OUT]`: every make of a build runs in the same tree and
/// build directory, with the same compilers (through ccache where it is
/// installed: [`super::ccache`]).
fn make_command(req: &BuildRequest) -> Command {
    let mut c = Command::new("make");
    c.arg("-C").arg(&req.tree);
    if let Some(o) = &req.out {
        c.arg(format!("O={}", o.display()));
    }
    let out = req.out.as_deref().unwrap_or(&req.tree);
    if let Some(cache) = super::ccache::CompilerCache::detect(&req.tree, out) {
        cache.apply(&mut c);
    }
    c
}

/// `make -s TARGET` output, trimmed.
fn capture(req: &BuildRequest, target: &str) -> Result<String, BuildError> {
    let o = make_command(req)
        .arg("-s")
        .arg(target)
        .output()
        .map_err(|source| BuildError::Io {
            what: format!("running make {target}"),
            source,
        })?;
    if !o.status.success() {
        return Err(BuildError::Failed {
            command: format!("make {target}"),
            status: o.status.to_string(),
            errors: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Runs `c` with stdout and stderr merged into `on_line`; on failure the
/// error is the compiler's error lines (or the output's tail).
fn run(mut c: Command, on_line: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    let command = format!("{c:?}").replace('"', "");
    let (reader, writer) = std::io::pipe().map_err(|source| BuildError::Io {
        what: "creating a pipe".into(),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| BuildError::Io {
        what: "creating a pipe".into(),
        source,
    })?;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .map_err(|source| BuildError::Io {
            what: format!("starting {command}"),
            source,
        })?;
    // The parent's copies of the write end must go before reading, or the
    // reader never sees the end of the output.
    drop(c);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut errors = Vec::new();
    for line in BufReader::new(reader).split(b'\n') {
        let line = line.map_err(|source| BuildError::Io {
            what: format!("reading the output of {command}"),
            source,
        })?;
        let line = String::from_utf8_lossy(&line);
        on_line(&line);
        if is_error_line(&line) && errors.len() < MAX_ERROR_LINES {
            errors.push(line.to_string());
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }
    let status = child.wait().map_err(|source| BuildError::Io {
        what: format!("waiting for {command}"),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let errors = if errors.is_empty() {
        Vec::from(tail)
    } else {
        errors
    };
    Err(BuildError::Failed {
        command,
        status: status.to_string(),
        errors: errors.join("\n"),
    })
}

/// A compiler or make error line (`file.c:12:3: error: …`, `make[2]: *** … Error 1`).
fn is_error_line(line: &str) -> bool {
    line.contains(": error:") || line.contains(": fatal error:") || line.contains("*** ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_the_compilers_and_makes() {
        assert!(is_error_line(
            "kernel/bpf/arena.c:120:5: error: expected ';' before '}' token"
        ));
        assert!(is_error_line(
            "make[4]: *** [scripts/Makefile.build:229: kernel/bpf/arena.o] Error 1"
        ));
        assert!(!is_error_line("  CC      kernel/bpf/arena.o"));
        assert!(!is_error_line("kernel/bpf/arena.c:5:1: warning: unused"));
    }

    #[test]
    fn a_directory_that_is_not_a_tree_is_refused() {
        let req = BuildRequest {
            tree: std::env::temp_dir(),
            out: None,
            debug: false,
            jobs: 1,
            base: BaseConfig::Tiny,
        };
        assert!(matches!(build(&req, |_| {}), Err(BuildError::NotATree(_))));
    }

    #[test]
    fn a_failing_command_reports_its_error_lines() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo '  CC a.o'; echo 'a.c:1:2: error: nope' >&2; echo 'make: *** [a.o] Error 1'; exit 2",
        ]);
        let mut seen = Vec::new();
        let e = run(c, &mut |l| seen.push(l.to_owned())).unwrap_err();
        assert_eq!(seen.len(), 3);
        match e {
            BuildError::Failed { errors, status, .. } => {
                assert_eq!(errors, "a.c:1:2: error: nope\nmake: *** [a.o] Error 1");
                assert!(status.contains('2'), "{status}");
            }
            other => panic!("{other}"),
        }
    }
}

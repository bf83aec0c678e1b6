//! The options that pick a kernel (`--kernel`, `--kernel-tree`, ...), shared
//! by every command that boots one.

use std::path::PathBuf;

use crate::plan;
use crate::plan::InputError;

/// Options that pick the kernel.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KernelArgs {
    /// Kernel to boot: a bzImage or vmlinux, or `debian:6.12`, `debian:7.2`,
    /// `debian:newest` (Debian's newest of that series, or sid's newest);
    /// default: debian:6.12. `lab run` takes it more than once: the
    /// scenarios run on each kernel in turn, results in
    /// RESULTS/<kernel>/<run-id>, each compared with the first kernel's.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// lib/modules/<release> of --kernel (with modules.dep), if it is modular.
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Source tree of --kernel, for the upstream selftests (default kernel:
    /// Debian's matching linux-source package).
    #[arg(long)]
    pub kernel_src: Option<PathBuf>,
    /// The ELF vmlinux of --kernel: its BTF builds the selftests, its
    /// symbols and DWARF decode stack traces. Found by itself for a bzImage
    /// in a build tree (TREE/arch/x86/boot/bzImage next to TREE/vmlinux).
    #[arg(long)]
    pub vmlinux: Option<PathBuf>,
    /// A kernel build directory (in-tree or `make O=`), as `lab kernel build`
    /// leaves it: its bzImage, vmlinux, installed modules and source (for
    /// the selftests) are used.
    #[arg(long, conflicts_with_all = ["kernel", "vmlinux", "modules", "kernel_src"])]
    pub kernel_tree: Option<PathBuf>,
}

impl KernelArgs {
    /// The files these options name exist: a missing one is invalid input
    /// (exit 2), reported before anything is fetched, built or booted.
    pub fn check(&self) -> Result<(), InputError> {
        let given = [
            ("--kernel", &self.kernel),
            ("--modules", &self.modules),
            ("--kernel-src", &self.kernel_src),
            ("--vmlinux", &self.vmlinux),
            ("--kernel-tree", &self.kernel_tree),
        ];
        if let Some(Some(Err(e))) = self.kernel.as_deref().map(plan::debian_channel) {
            return Err(InputError::MissingFile {
                option: "--kernel",
                path: self.kernel.clone().unwrap_or_default(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            });
        }
        for (option, path) in given {
            if let Some(path) = path {
                if option == "--kernel" && plan::debian_channel(path).is_some() {
                    continue;
                }
                std::fs::metadata(path).map_err(|source| InputError::MissingFile {
                    option,
                    path: path.clone(),
                    source,
                })?;
            }
        }
        if let Some(tree) = &self.kernel_tree {
            let bz = tree.join(TREE_BZIMAGE);
            std::fs::metadata(&bz).map_err(|source| InputError::MissingFile {
                option: "--kernel-tree",
                path: bz,
                source,
            })?;
        }
        Ok(())
    }

    /// The kernel image to boot: --kernel, or the tree's bzImage.
    pub fn kernel_file(&self) -> Option<PathBuf> {
        self.kernel_tree
            .as_ref()
            .map(|t| t.join(TREE_BZIMAGE))
            .or_else(|| self.kernel.clone())
    }

    /// The vmlinux: --vmlinux, or the tree's.
    pub fn vmlinux_file(&self) -> Option<PathBuf> {
        self.kernel_tree
            .as_ref()
            .map(|t| t.join("vmlinux"))
            .filter(|v| v.is_file())
            .or_else(|| self.vmlinux.clone())
    }

    /// `lib/modules/<release>`: --modules, or what `lab kernel build`
    /// installed in the tree.
    pub fn modules_dir(&self) -> Option<PathBuf> {
        let Some(tree) = &self.kernel_tree else {
            return self.modules.clone();
        };
        let installed = tree
            .join(arena_images::kernel::build::MODULES_ROOT)
            .join("lib/modules");
        let mut releases = std::fs::read_dir(installed).ok()?.flatten();
        let first = releases.next()?.path();
        // Several releases installed: none of them is known to match.
        releases.next().is_none().then_some(first)
    }

    /// The source tree for the selftests: --kernel-src, or the tree's own
    /// (an `O=` build directory links it as `source`).
    pub fn source_tree(&self) -> Option<PathBuf> {
        let Some(tree) = &self.kernel_tree else {
            return self.kernel_src.clone();
        };
        let linked = tree.join("source");
        Some(if linked.is_dir() {
            linked
        } else {
            tree.clone()
        })
    }
}

/// Where a build tree keeps its bzImage.
const TREE_BZIMAGE: &str = "arch/x86/boot/bzImage";

//! Preparing what a run needs once (kernel, agent, modules, BPF objects) and
//! the guest image of each scenario.

use std::path::PathBuf;

use arena_images::initramfs::{ImageFile, ImageSpec};
use arena_images::kernel::{debian, Kernel};
use arena_images::modules::ModuleDeps;
use arena_images::{agent, bpf};
use arena_protocol::scenario::Step;
use arena_protocol::Scenario;

use arena_images::selftests;

/// Modules the guest needs for its results channel when they are not built in.
const GUEST_MODULES: &[&str] = &["virtio_mmio"];

/// Base kernel command line: the full kernel log on the serial console (so
/// boot-time warnings reach the splat detector; measured: no slower than
/// `quiet` under TCG), reboot at once on panic (the VMMs turn a reboot into
/// VM exit), keyboard-controller reset.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k";

/// Everything shared by the scenarios of a run.
pub struct Prepared {
    /// The kernel.
    pub kernel: Kernel,
    /// Static agent binary.
    pub agent: PathBuf,
    /// Modules to load, dependencies first.
    pub modules: Vec<PathBuf>,
    /// Compiled BPF objects.
    pub bpf: Vec<(String, PathBuf)>,
    /// Kernel source tree for the upstream selftests (`--kernel-src`);
    /// `None`: Debian's source package matching the default kernel.
    pub kernel_src: Option<PathBuf>,
}

/// Which kernel to use.
pub fn kernel(user: Option<&PathBuf>, modules: Option<&PathBuf>) -> anyhow::Result<Kernel> {
    Ok(match user {
        Some(p) => Kernel::from_user_file(p, modules.map(PathBuf::as_path))?,
        None => {
            if debian::cached().is_none() {
                eprintln!(
                    "lab: fetching Debian's newest {} kernel (first run)",
                    debian::SERIES
                );
            }
            debian::default_kernel()?
        }
    })
}

/// Build the agent, resolve modules and compile BPF objects.
pub fn prepare(kernel: Kernel, kernel_src: Option<PathBuf>) -> anyhow::Result<Prepared> {
    let agent = agent::ensure_built(|| {
        eprintln!("lab: building the guest agent (static, with libbpf); first run takes a minute")
    })?;
    let modules = match &kernel.modules {
        Some(dir) => {
            let deps = ModuleDeps::load(dir)?;
            // A module absent from modules.dep is built in: nothing to load.
            GUEST_MODULES
                .iter()
                .filter_map(|m| deps.resolve(&[m]).ok())
                .flatten()
                .collect()
        }
        None => Vec::new(),
    };
    let bpf = bpf::build_all(&bpf::source_dir())?;
    Ok(Prepared {
        kernel,
        agent,
        modules,
        bpf,
        kernel_src,
    })
}

fn uses_selftests(steps: &[Step]) -> bool {
    steps
        .iter()
        .any(|s| matches!(s, Step::Selftest(_)) || uses_selftests(s.children()))
}

/// The image for `scenario` (cached by content).
pub fn image(p: &Prepared, scenario: &Scenario) -> anyhow::Result<PathBuf> {
    let mut files: Vec<ImageFile> = p
        .bpf
        .iter()
        .map(|(name, path)| ImageFile {
            guest_path: format!("bpf/{name}"),
            host_path: path.clone(),
            mode: 0o644,
        })
        .collect();
    if uses_selftests(&scenario.steps) {
        files.extend(selftests::image_files_from(
            &p.kernel,
            p.kernel_src.as_deref(),
        )?);
    }
    let spec = ImageSpec {
        agent: p.agent.clone(),
        modules: p.modules.clone(),
        files,
    };
    Ok(spec.build()?)
}

//! Preparing what a run needs once (kernel, agent, modules, BPF objects) and
//! the guest image of each scenario.

use std::path::{Path, PathBuf};

use arena_images::initramfs::{ImageFile, ImageSpec};
use arena_images::kernel::{debian, Kernel};
use arena_images::modules::ModuleDeps;
use arena_images::selftests::{self, SelftestsError};
use arena_images::{agent, bpf};
use arena_protocol::paths;
use arena_protocol::scenario::{own_object_name, Step};
use arena_protocol::Scenario;

use crate::plan::own_bpf;
use crate::plan::scenario_file::ScenarioFile;
use crate::plan::{InputError, KernelArgs};

/// Modules the guest needs for its results channel when they are not built in.
const GUEST_MODULES: &[&str] = &["virtio_mmio"];

/// Base kernel command line: the full kernel log on the serial console (so
/// boot-time warnings reach the splat detector; measured: no slower than
/// `quiet` under TCG), an oops is a panic and a panic reboots at once (the
/// VMMs turn a reboot into VM exit), so a fatal splat ends the scenario
/// within seconds instead of at its timeout (WARNINGs do not panic), and
/// keyboard-controller reset.
pub const BASE_CMDLINE: &str = "console=ttyS0 oops=panic panic=-1 reboot=k";

/// Why what a run needs (kernel, agent, modules, BPF objects, a guest
/// image) could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The user's input cannot be used (exit 2): a selftests source of
    /// another version, an own BPF source that does not compile.
    #[error(transparent)]
    Input(#[from] InputError),
    /// `--kernel debian:CHANNEL` names no channel.
    #[error(transparent)]
    Channel(#[from] debian::BadChannel),
    /// Fetching or building a kernel, the agent, modules, BPF objects or an
    /// image (the error names the file).
    #[error(transparent)]
    Image(#[from] arena_images::ImageError),
    /// The upstream selftests could not be built or found.
    #[error(transparent)]
    Selftests(SelftestsError),
}

impl PrepareError {
    /// Whether the user's input is at fault (exit 2) rather than the lab's
    /// machinery (exit 3).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, PrepareError::Input(_))
    }
}

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

/// `--kernel debian:<channel>[.<patch>]` (`6.12`, `7.2`, `newest`, or a
/// pinned `7.2.13`): one of Debian's kernels instead of a file. `None` for
/// anything else (a path); an unknown channel is an error.
pub fn debian_channel(spec: &std::path::Path) -> Option<Result<debian::Spec, debian::BadChannel>> {
    let channel = spec.to_str()?.strip_prefix("debian:")?;
    Some(channel.parse())
}

/// Which kernel to use: a file, a `debian:<channel>` spec, or the default
/// (Debian's newest 6.12).
pub fn kernel(args: &KernelArgs) -> Result<Kernel, PrepareError> {
    let user = args.kernel_file();
    let spec = match user.as_deref().map(debian_channel) {
        Some(Some(c)) => c?,
        Some(None) => {
            let p = user.expect("given");
            let vmlinux = args.vmlinux_file();
            let modules = args.modules_dir();
            return Ok(Kernel::from_user_files(
                &p,
                vmlinux.as_deref(),
                modules.as_deref(),
            )?);
        }
        None => debian::Spec {
            channel: debian::DEFAULT,
            patch: None,
        },
    };
    if matches!(spec.channel, debian::Channel::Newest) || debian::cached(spec.channel).is_none() {
        eprintln!("lab: resolving Debian's {spec} kernel (fetched once, then cached)");
    }
    Ok(debian::kernel_for_spec(spec)?)
}

/// Build the agent, resolve modules and compile BPF objects.
pub fn prepare(kernel: Kernel, args: &KernelArgs) -> Result<Prepared, PrepareError> {
    let kernel_src = args.source_tree();
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

/// Whether `scenario` runs upstream selftests (which need the kernel's BTF).
pub fn uses_selftests(scenario: &Scenario) -> bool {
    steps_use_selftests(&scenario.steps)
}

fn steps_use_selftests(steps: &[Step]) -> bool {
    steps.iter().any(|s| {
        matches!(s, Step::Selftest(_)) || s.child_lists().into_iter().any(steps_use_selftests)
    })
}

/// The image for the scenario of `file`, with its own BPF programs
/// (`bpf_load.source`, beside the file) compiled for the run's kernel.
pub fn scenario_image(p: &Prepared, file: &ScenarioFile) -> Result<PathBuf, PrepareError> {
    let dir = match file.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    image_in(p, &file.scenario, Some(&dir))
}

/// The image for `scenario` (cached by content). A selftests source that
/// cannot serve the kernel is the user's input: an [`InputError`] (exit 2)
/// inside the error. A scenario with its own BPF sources needs
/// [`scenario_image`], which knows where they are.
pub fn image(p: &Prepared, scenario: &Scenario) -> Result<PathBuf, PrepareError> {
    image_in(p, scenario, None)
}

/// The scenario's own BPF objects, compiled from the sources in `dir`
/// against the BTF of the run's kernel, as image files; a source that does
/// not compile is the user's input (exit 2).
fn own_objects(
    p: &Prepared,
    scenario: &Scenario,
    dir: Option<&Path>,
) -> Result<Vec<ImageFile>, PrepareError> {
    let sources = own_bpf::sources(scenario);
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let refuse = |why: String| PrepareError::Input(InputError::Refused(why));
    let dir =
        dir.ok_or_else(|| refuse("own BPF sources need the scenario file's folder".into()))?;
    let vmlinux = p.kernel.vmlinux.as_deref().ok_or_else(|| {
        refuse(format!(
            "bpf_load.source: compiling `{}` needs the kernel's BTF, and the kernel {} has no ELF vmlinux (give --vmlinux)",
            sources[0],
            p.kernel.boot_image.display()
        ))
    })?;
    let mut files = Vec::new();
    for src in sources {
        let object = own_bpf::compile(dir, &src, vmlinux)
            .map_err(|e| refuse(format!("bpf_load.source: {e}")))?;
        files.push(ImageFile {
            guest_path: paths::entry_in(paths::BPF_DIR, &own_object_name(&src)),
            host_path: object,
            mode: 0o644,
        });
    }
    Ok(files)
}

fn image_in(
    p: &Prepared,
    scenario: &Scenario,
    dir: Option<&Path>,
) -> Result<PathBuf, PrepareError> {
    let mut files: Vec<ImageFile> = p
        .bpf
        .iter()
        .map(|(name, path)| ImageFile {
            guest_path: paths::entry_in(paths::BPF_DIR, name),
            host_path: path.clone(),
            mode: 0o644,
        })
        .collect();
    files.extend(own_objects(p, scenario, dir)?);
    if uses_selftests(scenario) {
        files.extend(
            selftests::image_files_from(&p.kernel, p.kernel_src.as_deref())
                .map_err(selftests_error)?,
        );
    }
    let spec = ImageSpec {
        agent: p.agent.clone(),
        modules: p.modules.clone(),
        files,
    };
    Ok(spec.build()?)
}

/// The user's side of a selftests failure as invalid input, the rest as is.
fn selftests_error(e: SelftestsError) -> PrepareError {
    if e.is_invalid_input() {
        InputError::Refused(e.to_string()).into()
    } else {
        PrepareError::Selftests(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_version_mismatch_is_invalid_input() {
        let e = selftests_error(SelftestsError::VersionMismatch {
            makefile: "/src/Makefile".into(),
            tree_version: "6.13.0".into(),
            release: "6.12.117+deb12-amd64".into(),
        });
        let lab = crate::infra(e);
        assert_eq!(lab.code(), crate::exit::INVALID);
        assert!(lab.to_string().contains("6.13.0"), "{lab}");
        let infra = selftests_error(SelftestsError::Image(
            arena_images::ImageError::NoKernelPackage("none".into()),
        ));
        assert!(!infra.is_invalid_input());
        assert_eq!(crate::infra(infra).code(), crate::exit::INFRA);
    }
}

//! The kernel's config against what the lab needs, read before any boot
//! (the tree's `.config`, `config-RELEASE` beside the image, or IKCONFIG):
//! a kernel that cannot run the lab is refused with each option named.

use arena_images::kernel::kconfig::{self, Preflight, Purpose};
use arena_images::kernel::Kernel;

use crate::plan::InputError;

/// The preflight of `k`, or why there is none.
pub fn preflight(k: &Kernel) -> Result<Preflight, String> {
    let image = k.bzimage.as_deref().unwrap_or(&k.boot_image);
    let mut images = vec![image];
    if image != k.boot_image {
        images.push(&k.boot_image);
    }
    let found = kconfig::find_config(&images, k.vmlinux.as_deref(), &k.release);
    let (source, cfg) = found.ok_or_else(|| {
        format!(
            "no config found for {} (looked for the tree's .config, config-{} beside it, and IKCONFIG in the vmlinux)",
            image.display(),
            k.release
        )
    })?;
    Ok(Preflight::new(source, &cfg, k.modules.as_deref()))
}

/// Refuses, before any boot, a kernel that lacks what every scenario needs
/// (exit 2, naming each option), and `needs_btf` (selftests selected) adds
/// BTF to that. A kernel whose config cannot be found is let through with
/// one line: the boot will tell. Missing detection options are one line of advice.
pub fn require(k: &Kernel, needs_btf: bool) -> Result<(), InputError> {
    let p = match preflight(k) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("lab: preflight skipped: {why}");
            return Ok(());
        }
    };
    let mut missing = p.missing(Purpose::Lab);
    if needs_btf {
        missing.extend(p.missing(Purpose::Selftests));
    }
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|c| {
                format!(
                    "CONFIG_{} ({})",
                    c.requirement.option,
                    c.problem.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(InputError::Refused(format!(
            "kernel {} cannot run the lab: missing {list} (config: {}; `lab kernel config` prints what to add)",
            k.release, p.source
        )));
    }
    let advice = p.missing(Purpose::Detection);
    if !advice.is_empty() {
        let names: Vec<_> = advice
            .iter()
            .map(|c| format!("CONFIG_{}", c.requirement.option))
            .collect();
        eprintln!(
            "lab: advice: {} would find more bugs (`lab kernel config --debug`)",
            names.join(", ")
        );
    }
    Ok(())
}

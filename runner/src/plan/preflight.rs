//! The kernel's config against what the lab needs, read before any boot
//! (the tree's `.config`, `config-RELEASE` beside the image, or IKCONFIG):
//! a kernel that cannot run the lab is refused with each option named, and
//! each scenario's requirements are told apart into what the config settles
//! (run or skip) and what only the booted kernel can tell ([`outlook`]).

use arena_images::kernel::kconfig::{
    self, ConfigSource, KernelConfig, Preflight, Purpose, Setting,
};
use arena_images::kernel::Kernel;
use arena_protocol::scenario::{KernelOption, Requirement};
use arena_protocol::Scenario;

use crate::plan::InputError;

/// The preflight of `k`, or why there is none.
pub fn preflight(k: &Kernel) -> Result<Preflight, String> {
    let (source, cfg) = config(k)?;
    Ok(Preflight::new(source, &cfg, k.modules.as_deref()))
}

/// The config of `k` and where it was read, or why there is none.
pub fn config(k: &Kernel) -> Result<(ConfigSource, KernelConfig), String> {
    let image = k.bzimage.as_deref().unwrap_or(&k.boot_image);
    let mut images = vec![image];
    if image != k.boot_image {
        images.push(&k.boot_image);
    }
    let found = kconfig::find_config(&images, k.vmlinux.as_deref(), &k.release);
    found.ok_or_else(|| {
        format!(
            "no config found for {} (looked for the tree's .config, config-{} beside it, and IKCONFIG in the vmlinux)",
            image.display(),
            k.release
        )
    })
}

/// The config options behind a [`KernelOption`], as the agent probes it
/// (by what they create): all must be set.
pub fn config_options(option: KernelOption) -> &'static [&'static str] {
    match option {
        KernelOption::Memcg => &["MEMCG"],
        KernelOption::DebugKmemleak => &["DEBUG_KMEMLEAK", "DEBUG_FS"],
        KernelOption::FaultInjection => &[
            "FAULT_INJECTION",
            "FAIL_PAGE_ALLOC",
            "FAILSLAB",
            "FAULT_INJECTION_DEBUG_FS",
        ],
    }
}

/// What a kernel's config says of one scenario before anything boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outlook {
    /// The config has everything it requires: it runs.
    Runs,
    /// It runs if the booted kernel has these (kfuncs, symbols: not in the
    /// config), and is skipped naming the first missing one otherwise.
    AtBoot(Vec<Requirement>),
    /// The config lacks this: the agent will skip it, naming it.
    Skipped(String),
    /// The lab refuses the kernel for it before any boot (exit 2): why.
    Refused(String),
}

/// The [`Outlook`] of `scenario` on a kernel whose config is `cfg` and
/// whose preflight is `p`.
pub fn outlook(scenario: &Scenario, cfg: &KernelConfig, p: &Preflight) -> Outlook {
    let mut missing = p.missing(Purpose::Lab);
    if crate::plan::uses_selftests(scenario) {
        missing.extend(p.missing(Purpose::Selftests));
    }
    if !missing.is_empty() {
        let names: Vec<_> = missing
            .iter()
            .map(|c| format!("CONFIG_{}", c.requirement.option))
            .collect();
        return Outlook::Refused(format!("the lab needs {}", names.join(", ")));
    }
    let mut at_boot = Vec::new();
    for r in scenario.requirements() {
        match r {
            Requirement::Config(o) => {
                if let Some(lacking) = config_options(o)
                    .iter()
                    .find(|name| cfg.setting(name) == Setting::Off)
                {
                    return Outlook::Skipped(format!(
                        "this kernel lacks CONFIG_{lacking} ({})",
                        o.what()
                    ));
                }
            }
            other => at_boot.push(other),
        }
    }
    if at_boot.is_empty() {
        Outlook::Runs
    } else {
        Outlook::AtBoot(at_boot)
    }
}

/// `lab kernel check --scenarios`: one line per scenario (name, what
/// happens, why), after a line of counts.
pub fn outlook_table(rows: &[(&str, Outlook)]) -> String {
    let count = |f: fn(&Outlook) -> bool| rows.iter().filter(|(_, o)| f(o)).count();
    let mut out = format!(
        "scenarios: {} run, {} skipped, {} checked at boot, {} refused\n",
        count(|o| matches!(o, Outlook::Runs)),
        count(|o| matches!(o, Outlook::Skipped(_))),
        count(|o| matches!(o, Outlook::AtBoot(_))),
        count(|o| matches!(o, Outlook::Refused(_))),
    );
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(8);
    out.push_str(&format!("{:<width$} {:<16} why\n", "scenario", "outlook"));
    for (name, o) in rows {
        let (what, why) = match o {
            Outlook::Runs => ("runs", String::new()),
            Outlook::AtBoot(rs) => (
                "checked at boot",
                format!(
                    "runs if the booted kernel has {}; skipped otherwise",
                    rs.iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Outlook::Skipped(why) => ("skipped", why.clone()),
            Outlook::Refused(why) => ("refused", why.clone()),
        };
        out.push_str(format!("{name:<width$} {what:<16} {why}").trim_end());
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const LAB: &str = "CONFIG_BPF_SYSCALL=y\nCONFIG_BPF_JIT=y\nCONFIG_MMU=y\nCONFIG_64BIT=y\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_CONSOLE=y\nCONFIG_SERIAL_8250_CONSOLE=y\nCONFIG_DEVTMPFS=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_DEBUG_INFO_BTF=y\n";

    fn scenario(steps: &str) -> Scenario {
        let text = format!("name: s\nsteps:\n{steps}");
        crate::plan::scenario_file::parse(Path::new("s.yaml"), &text).unwrap()
    }

    fn outlook_on(config: &str, s: &Scenario) -> Outlook {
        let cfg = KernelConfig::parse(config);
        let p = Preflight::new(ConfigSource::File("config".into()), &cfg, None);
        outlook(s, &cfg, &p)
    }

    #[test]
    fn config_decides_run_or_skip_and_the_rest_waits_for_the_boot() {
        let kmemleak = scenario("  - kmemleak: { action: clear }\n");
        let memcg =
            scenario("  - memory: { baseline: b }\n  - memory: { since: b, at_most_kib: 100 }\n");
        let plain = scenario("  - sleep: { ms: 1 }\n");
        let with_memcg = format!("{LAB}CONFIG_MEMCG=y\nCONFIG_DEBUG_FS=y\n");
        assert_eq!(outlook_on(&with_memcg, &plain), Outlook::Runs);
        assert_eq!(outlook_on(&with_memcg, &memcg), Outlook::Runs);
        assert_eq!(
            outlook_on(&with_memcg, &kmemleak),
            Outlook::Skipped(
                "this kernel lacks CONFIG_DEBUG_KMEMLEAK (kmemleak, for kmemleak steps)".into()
            )
        );
        assert!(
            matches!(outlook_on(LAB, &memcg), Outlook::Skipped(w) if w.contains("CONFIG_MEMCG"))
        );
        let all = format!("{with_memcg}CONFIG_DEBUG_KMEMLEAK=y\n");
        assert_eq!(outlook_on(&all, &kmemleak), Outlook::Runs);
        // Fault injection needs its debugfs files as well.
        let fi = scenario("  - fail_allocs: { probability: 10 }\n");
        let o = outlook_on(&format!("{all}CONFIG_FAULT_INJECTION=y\n"), &fi);
        assert!(
            matches!(&o, Outlook::Skipped(w) if w.starts_with("this kernel lacks CONFIG_FAIL_PAGE_ALLOC")),
            "{o:?}"
        );
        // A kfunc is not in the config.
        let kfunc =
            scenario("  - sleep: { ms: 1 }\nrequires:\n  - kfunc: bpf_arena_reserve_pages\n");
        assert_eq!(
            outlook_on(&all, &kfunc),
            Outlook::AtBoot(vec![Requirement::Kfunc("bpf_arena_reserve_pages".into())])
        );
        // A kernel the lab refuses runs nothing.
        let o = outlook_on("CONFIG_MEMCG=y\n", &plain);
        assert!(
            matches!(&o, Outlook::Refused(w) if w.starts_with("the lab needs CONFIG_BPF_SYSCALL")),
            "{o:?}"
        );
    }

    #[test]
    fn the_table_counts_and_explains() {
        let rows = [
            ("a-plain", Outlook::Runs),
            (
                "b-leak",
                Outlook::Skipped("this kernel lacks CONFIG_DEBUG_KMEMLEAK (x)".into()),
            ),
            (
                "c-kfunc",
                Outlook::AtBoot(vec![Requirement::Kfunc("k".into())]),
            ),
        ];
        let t = outlook_table(&rows);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(
            lines[0],
            "scenarios: 1 run, 1 skipped, 1 checked at boot, 0 refused"
        );
        assert_eq!(lines[2], "a-plain  runs");
        assert_eq!(
            lines[3],
            "b-leak   skipped          this kernel lacks CONFIG_DEBUG_KMEMLEAK (x)"
        );
        assert_eq!(
            lines[4],
            "c-kfunc  checked at boot  runs if the booted kernel has kfunc k; skipped otherwise"
        );
    }
}

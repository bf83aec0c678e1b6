//! A kernel's build configuration, and whether the lab can use that kernel.
//!
//! A kernel developer's own build is the normal input, and most of them
//! lack something: no virtio console (the agent cannot report), no BTF (the
//! selftests cannot build), modules the lab cannot load. Reading the config
//! before booting turns a silent two-minute boot timeout into one line that
//! names the option. The config comes from the build tree's `.config`, the
//! `config-<release>` a distribution ships beside the image, or the image
//! itself when it was built with `CONFIG_IKCONFIG`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The value of one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// `=y`, or any non-tristate value.
    BuiltIn,
    /// `=m`.
    Module,
    /// `# CONFIG_X is not set`, or absent.
    Off,
}

/// A parsed `.config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text; lines that are not `CONFIG_X=value` are ignored.
    pub fn parse(text: &str) -> KernelConfig {
        let values = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("CONFIG_")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        KernelConfig { values }
    }

    /// How option `name` (without `CONFIG_`) is set.
    pub fn setting(&self, name: &str) -> Setting {
        match self.values.get(name).map(String::as_str) {
            None | Some("n") => Setting::Off,
            Some("m") => Setting::Module,
            Some(_) => Setting::BuiltIn,
        }
    }

    /// The options set (names without `CONFIG_`).
    pub fn options(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Any option built as a module (`=m`).
    pub fn has_modules(&self) -> bool {
        self.values.values().any(|v| v == "m")
    }

    /// Number of options set.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// No option is set: not a kernel config.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Where a config was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ConfigSource {
    /// A file: a build tree's `.config` or a packaged `config-<release>`.
    File(PathBuf),
    /// `CONFIG_IKCONFIG` data inside this vmlinux.
    Embedded(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded(p) => write!(f, "IKCONFIG in {}", p.display()),
        }
    }
}

/// Marks around the gzipped config `CONFIG_IKCONFIG` embeds (kernel/configs.c).
const IKCONFIG_START: &[u8] = b"IKCFG_ST";
const IKCONFIG_END: &[u8] = b"IKCFG_ED";
/// An embedded config larger than this is not one (a real one is ~60 KiB gzipped).
const IKCONFIG_MAX_BYTES: u64 = 16 << 20;

/// The config embedded in an uncompressed kernel image, if it has one.
pub fn embedded(image: &[u8]) -> Option<String> {
    let start = find(image, IKCONFIG_START)? + IKCONFIG_START.len();
    let len = find(&image[start..], IKCONFIG_END)?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&image[start..start + len])
        .take(IKCONFIG_MAX_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The config of a kernel: for each of its `images` in turn (its bzImage,
/// then the file it boots), `.config` in the build directory that holds it
/// (`TREE/vmlinux` or `TREE/arch/x86/boot/bzImage`), or a `config` or
/// `config-<release>` beside it (Debian's layout, and the lab's cache);
/// failing those, the one embedded in `vmlinux`, read once.
pub fn find_config(
    images: &[&Path],
    vmlinux: Option<&Path>,
    release: &str,
) -> Option<(ConfigSource, KernelConfig)> {
    let beside = |image: &Path| {
        let dir = image.parent()?;
        // A source tree or a `make O=` build directory (which has a Makefile
        // and the .config, but no Kconfig).
        let tree = image
            .ancestors()
            .find(|d| d.join("Makefile").is_file() && d.join(".config").is_file());
        [
            tree.map(|t| t.join(".config")),
            Some(dir.join(format!("config-{release}"))),
            Some(dir.join("config")),
            Some(dir.join(format!("../config-{release}"))),
        ]
        .into_iter()
        .flatten()
        .find_map(|c| {
            let cfg = KernelConfig::parse(&std::fs::read_to_string(&c).ok()?);
            (!cfg.is_empty()).then_some((ConfigSource::File(c), cfg))
        })
    };
    if let Some(found) = images.iter().find_map(|i| beside(i)) {
        return Some(found);
    }
    let v = vmlinux?;
    let cfg = KernelConfig::parse(&embedded(&std::fs::read(v).ok()?)?);
    (!cfg.is_empty()).then(|| (ConfigSource::Embedded(v.to_owned()), cfg))
}

/// What a requirement is for: decides how a missing one is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Without it no scenario can run: refused before boot.
    Lab,
    /// Without it the upstream selftests cannot be built against the kernel.
    Selftests,
    /// Detection: the lab runs without it, but finds fewer bugs.
    Detection,
}

/// One option the lab checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// Option name without `CONFIG_`.
    pub option: &'static str,
    /// A module is good enough (the lab loads it from `--modules`).
    pub module_ok: bool,
    /// What it is for.
    pub purpose: Purpose,
    /// Why the lab needs it, for the table.
    pub why: &'static str,
}

const fn need(option: &'static str, module_ok: bool, why: &'static str) -> Requirement {
    Requirement {
        option,
        module_ok,
        purpose: Purpose::Lab,
        why,
    }
}

const fn nice(option: &'static str, why: &'static str) -> Requirement {
    Requirement {
        option,
        module_ok: false,
        purpose: Purpose::Detection,
        why,
    }
}

/// Everything `lab kernel check` looks at, in table order.
pub const REQUIREMENTS: &[Requirement] = &[
    need(
        "BPF_SYSCALL",
        false,
        "the bpf() syscall; arena.c is built with it",
    ),
    need("BPF_JIT", false, "arena programs are JIT-only"),
    need("MMU", false, "arena maps need an MMU (kernel/bpf/Makefile)"),
    need("64BIT", false, "arena maps need a 64-bit kernel"),
    need(
        "VIRTIO_MMIO",
        true,
        "the VM's virtio devices are virtio-mmio",
    ),
    need(
        "VIRTIO_CONSOLE",
        true,
        "the results channel is a virtio console",
    ),
    need(
        "SERIAL_8250_CONSOLE",
        false,
        "the kernel log goes to the serial console",
    ),
    need("DEVTMPFS", false, "the agent mounts /dev as devtmpfs"),
    need(
        "BLK_DEV_INITRD",
        false,
        "the agent and scenarios are an initramfs",
    ),
    Requirement {
        option: "DEBUG_INFO_BTF",
        module_ok: false,
        purpose: Purpose::Selftests,
        why: "the upstream selftests are built against the kernel's BTF",
    },
    nice(
        "KASAN",
        "catches out-of-bounds and use-after-free in arena.c",
    ),
    nice(
        "PROVE_LOCKING",
        "lockdep: lock-order bugs before they deadlock",
    ),
    nice("DEBUG_VM", "page and VMA sanity checks on the fault paths"),
    nice(
        "DEBUG_KMEMLEAK",
        "leaked arena pages and maps (`kmemleak:` steps)",
    ),
    nice(
        "FAULT_INJECTION",
        "allocation failures on demand (`fail_allocs:` steps)",
    ),
    nice(
        "BPF_JIT_ALWAYS_ON",
        "no interpreter fallback hiding JIT-only paths",
    ),
];

/// One requirement against one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The requirement.
    #[serde(flatten)]
    pub requirement: Requirement,
    /// How the kernel sets it.
    pub setting: Setting,
    /// Satisfied (a module only counts when its file is there).
    pub ok: bool,
    /// Why not, when not.
    pub problem: Option<String>,
}

/// The preflight of one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// Where the config came from.
    pub source: ConfigSource,
    /// Every requirement, in [`REQUIREMENTS`] order.
    pub checks: Vec<Check>,
}

impl Preflight {
    /// Checks `config` against [`REQUIREMENTS`]. `modules` is the kernel's
    /// `lib/modules/<release>`: a module counts only if `modules.dep` lists it.
    pub fn new(source: ConfigSource, config: &KernelConfig, modules: Option<&Path>) -> Preflight {
        let dep = modules
            .and_then(|m| std::fs::read_to_string(m.join("modules.dep")).ok())
            .unwrap_or_default();
        let checks = REQUIREMENTS
            .iter()
            .map(|r| {
                let setting = config.setting(r.option);
                let problem = match setting {
                    Setting::BuiltIn => None,
                    Setting::Off => Some("not set".to_owned()),
                    Setting::Module if !r.module_ok => {
                        Some("a module; the lab needs it built in (=y)".to_owned())
                    }
                    Setting::Module => module_problem(r.option, &dep, modules),
                };
                Check {
                    requirement: *r,
                    setting,
                    ok: problem.is_none(),
                    problem,
                }
            })
            .collect();
        Preflight { source, checks }
    }

    /// The failed checks for `purpose`.
    pub fn missing(&self, purpose: Purpose) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| !c.ok && c.requirement.purpose == purpose)
            .collect()
    }

    /// The full table, one option a line.
    pub fn table(&self) -> String {
        let mut out = format!("config: {}\n", self.source);
        out.push_str(&format!(
            "{:<27} {:<9} {:<7} {:<7} {}\n",
            "option", "for", "setting", "ok", "why / problem"
        ));
        for c in &self.checks {
            let r = &c.requirement;
            let purpose = match r.purpose {
                Purpose::Lab => "lab",
                Purpose::Selftests => "selftests",
                Purpose::Detection => "detection",
            };
            let setting = match c.setting {
                Setting::BuiltIn => "y",
                Setting::Module => "m",
                Setting::Off => "-",
            };
            let ok = match (c.ok, r.purpose) {
                (true, _) => "ok",
                (false, Purpose::Detection) => "advice",
                (false, _) => "MISSING",
            };
            let text = c
                .problem
                .as_ref()
                .map_or(r.why.to_owned(), |p| format!("{p}: {}", r.why));
            out.push_str(&format!(
                "{:<27} {purpose:<9} {setting:<7} {ok:<7} {text}\n",
                format!("CONFIG_{}", r.option)
            ));
        }
        out
    }
}

/// Module file names (`modules.dep` spelling) of the options that may be modules.
fn module_file(option: &str) -> Option<&'static str> {
    match option {
        "VIRTIO_MMIO" => Some("virtio_mmio.ko"),
        "VIRTIO_CONSOLE" => Some("virtio_console.ko"),
        _ => None,
    }
}

fn module_problem(option: &str, dep: &str, modules: Option<&Path>) -> Option<String> {
    let Some(m) = modules else {
        return Some("a module, and the kernel has no modules directory (--modules)".to_owned());
    };
    let file = module_file(option)?;
    let listed = dep.lines().filter_map(|l| l.split(':').next()).find(|p| {
        Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == file || n.starts_with(&format!("{file}.")))
    });
    match listed {
        Some(rel) if m.join(rel).is_file() => None,
        Some(rel) => Some(format!("module {} missing", m.join(rel).display())),
        None => Some(format!(
            "module {file} not in {}",
            m.join("modules.dep").display()
        )),
    }
}

/// The config fragment the lab needs (`lab kernel config`); with `debug`,
/// the detection options too. Ready for `scripts/kconfig/merge_config.sh`.
pub fn fragment(debug: bool) -> String {
    let mut out = String::from("# arena lab: what the lab needs\n");
    for r in REQUIREMENTS
        .iter()
        .filter(|r| r.purpose != Purpose::Detection)
    {
        out.push_str(&format!("CONFIG_{}=y\n", r.option));
    }
    // What the options above depend on, and what the agent uses.
    for extra in FRAGMENT_DEPENDENCIES {
        out.push_str(&format!("CONFIG_{extra}=y\n"));
    }
    if debug {
        out.push_str("# arena lab: detection\n");
        for r in REQUIREMENTS
            .iter()
            .filter(|r| r.purpose == Purpose::Detection)
        {
            out.push_str(&format!("CONFIG_{}=y\n", r.option));
        }
        for extra in DEBUG_DEPENDENCIES {
            out.push_str(&format!("CONFIG_{extra}=y\n"));
        }
    }
    out
}

/// Options [`REQUIREMENTS`] depend on that a defconfig may lack, so that
/// merging the fragment keeps them (`merge_config.sh` drops unmet ones).
const FRAGMENT_DEPENDENCIES: &[&str] = &[
    "VIRTIO_MENU",
    "TTY",
    "SERIAL_8250",
    "BINFMT_ELF",
    "DEBUG_INFO_DWARF5",
    "IKCONFIG",
    "IKCONFIG_PROC",
];

/// What the detection options need, and the fault points and their
/// debugfs attributes `fail_allocs:` uses.
const DEBUG_DEPENDENCIES: &[&str] = &[
    "DEBUG_KERNEL",
    "LOCKDEP",
    "KASAN_GENERIC",
    "DEBUG_FS",
    "FAILSLAB",
    "FAIL_PAGE_ALLOC",
    "FAULT_INJECTION_DEBUG_FS",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DEBIAN_LIKE: &str = "\
# comment
CONFIG_BPF_SYSCALL=y
CONFIG_BPF_JIT=y
CONFIG_MMU=y
CONFIG_64BIT=y
CONFIG_VIRTIO_MMIO=m
CONFIG_VIRTIO_CONSOLE=m
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_DEVTMPFS=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEBUG_INFO_BTF=y
# CONFIG_KASAN is not set
CONFIG_LOCALVERSION=\"-arena\"
";

    fn modules_dir(files: &[&str]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let mut dep = std::fs::File::create(d.0.join("modules.dep")).unwrap();
        for f in files {
            let p = d.0.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
            writeln!(dep, "{f}:").unwrap();
        }
        d
    }

    mod tempdir {
        /// A scratch directory removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "arena-kconfig-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn parses_settings() {
        let c = KernelConfig::parse(DEBIAN_LIKE);
        assert_eq!(c.setting("BPF_SYSCALL"), Setting::BuiltIn);
        assert_eq!(c.setting("VIRTIO_MMIO"), Setting::Module);
        assert_eq!(c.setting("KASAN"), Setting::Off);
        assert_eq!(c.setting("LOCALVERSION"), Setting::BuiltIn);
        assert_eq!(c.setting("NOT_THERE"), Setting::Off);
    }

    #[test]
    fn modules_count_only_when_their_files_are_there() {
        let c = KernelConfig::parse(DEBIAN_LIKE);
        let src = ConfigSource::File("/x/.config".into());
        let m = modules_dir(&[
            "kernel/drivers/virtio/virtio_mmio.ko.xz",
            "kernel/drivers/char/virtio_console.ko.xz",
        ]);
        let p = Preflight::new(src.clone(), &c, Some(&m.0));
        assert!(p.missing(Purpose::Lab).is_empty(), "{}", p.table());
        assert!(p.missing(Purpose::Selftests).is_empty());
        assert_eq!(p.missing(Purpose::Detection).len(), 6);

        let without_console = modules_dir(&["kernel/drivers/virtio/virtio_mmio.ko"]);
        let p = Preflight::new(src.clone(), &c, Some(&without_console.0));
        let missing: Vec<_> = p
            .missing(Purpose::Lab)
            .iter()
            .map(|c| c.requirement.option)
            .collect();
        assert_eq!(missing, ["VIRTIO_CONSOLE"]);

        let p = Preflight::new(src, &c, None);
        assert_eq!(p.missing(Purpose::Lab).len(), 2, "{}", p.table());
    }

    #[test]
    fn a_kernel_without_virtio_console_is_missing_it() {
        let text = DEBIAN_LIKE.replace("CONFIG_VIRTIO_CONSOLE=m\n", "");
        let p = Preflight::new(
            ConfigSource::File("/t/.config".into()),
            &KernelConfig::parse(&text),
            None,
        );
        let table = p.table();
        assert!(
            table.contains("CONFIG_VIRTIO_CONSOLE       lab       -       MISSING not set"),
            "{table}"
        );
    }

    #[test]
    fn built_in_only_options_refuse_modules() {
        let text = DEBIAN_LIKE.replace("CONFIG_BPF_JIT=y", "CONFIG_BPF_JIT=m");
        let p = Preflight::new(
            ConfigSource::File("/t/.config".into()),
            &KernelConfig::parse(&text),
            None,
        );
        let jit = p
            .checks
            .iter()
            .find(|c| c.requirement.option == "BPF_JIT")
            .unwrap();
        assert!(!jit.ok);
        assert!(jit.problem.as_deref().unwrap().contains("built in"));
    }

    #[test]
    fn reads_an_embedded_config_and_nothing_else() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"CONFIG_BPF_SYSCALL=y\n").unwrap();
        let mut image = b"\x7fELF....IKCFG_ST".to_vec();
        image.extend(gz.finish().unwrap());
        image.extend(b"IKCFG_ED....");
        assert_eq!(embedded(&image).as_deref(), Some("CONFIG_BPF_SYSCALL=y\n"));
        assert_eq!(embedded(b"IKCFG_ST not gzip IKCFG_ED"), None);
        assert_eq!(embedded(b"no marks"), None);
    }

    #[test]
    fn the_fragment_sets_every_must_have() {
        let f = KernelConfig::parse(&fragment(false));
        for r in REQUIREMENTS {
            let want = if r.purpose == Purpose::Detection {
                Setting::Off
            } else {
                Setting::BuiltIn
            };
            assert_eq!(f.setting(r.option), want, "{}", r.option);
        }
        let d = KernelConfig::parse(&fragment(true));
        assert!(REQUIREMENTS
            .iter()
            .all(|r| d.setting(r.option) == Setting::BuiltIn));
    }

    #[test]
    fn finds_the_tree_config_from_the_bzimage() {
        let t = tempdir::Dir::new();
        // A `make O=` build directory: Makefile and .config, no Kconfig.
        std::fs::write(t.0.join("Makefile"), "include source/Makefile\n").unwrap();
        std::fs::write(t.0.join(".config"), DEBIAN_LIKE).unwrap();
        let bz = t.0.join("arch/x86/boot/bzImage");
        std::fs::create_dir_all(bz.parent().unwrap()).unwrap();
        std::fs::write(&bz, b"").unwrap();
        let (src, cfg) = find_config(&[&bz], None, "6.12.117").unwrap();
        assert_eq!(src, ConfigSource::File(t.0.join(".config")));
        assert_eq!(cfg.setting("BPF_JIT"), Setting::BuiltIn);
    }
}

//! Debian's kernels, by channel: `6.12` (the default: the newest
//! `linux-image-6.12.*+deb12-amd64` the host's apt sees, i.e. Debian 12's
//! security updates), any other series and `newest` from sid through a
//! private apt state ([`super::apt`]). Packages are fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into
//! `kernels/<release>/` of the cache. Nothing is installed on the host.
//!
//! Two packagings: 6.12's single `linux-image-<release>` (`boot/vmlinuz-*`,
//! `lib/modules/<release>`), and 7.2's split, where `linux-image-<release>`
//! is a meta package depending on `linux-binary-<release>` (the kernel at
//! `usr/lib/modules/<release>/vmlinuz`), `linux-modules-<release>` and
//! `linux-base-<release>` (config, `modules.builtin`).
//!
//! Cache layout: `vmlinuz`, `vmlinux`, `config` (when shipped), `modules/`
//! (the `lib/modules/<release>` tree with a generated `modules.dep`) and
//! `kernel.json` (the [`Kernel`] record, written last: its presence means the
//! directory is complete).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use super::apt::{Apt, PackageInfo};
use super::{bzimage, elf, Kernel, KernelOrigin};
use crate::{cache, io_err, run_tool, sha256_hex, write_atomic, ImageError, Result};

/// Kernel series the lab defaults to.
pub const SERIES: &str = "6.12";
/// The suite other series and `newest` come from.
pub const SID: &str = "sid";
const RECORD: &str = "kernel.json";

/// Which Debian kernel: the newest of a series, or the newest of all (sid's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `MAJOR.MINOR`.
    Series(u32, u32),
    /// The newest kernel sid has.
    Newest,
}

/// The default channel (6.12).
pub const DEFAULT: Channel = Channel::Series(6, 12);

/// A channel name that is neither `MAJOR.MINOR` nor `newest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Debian kernel channel {0:?}: use a series such as 6.12 or 7.2, or newest")]
pub struct BadChannel(pub String);

impl FromStr for Channel {
    type Err = BadChannel;
    fn from_str(s: &str) -> std::result::Result<Channel, BadChannel> {
        if s == "newest" {
            return Ok(Channel::Newest);
        }
        let bad = || BadChannel(s.to_owned());
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        Ok(Channel::Series(
            major.parse().map_err(|_| bad())?,
            minor.parse().map_err(|_| bad())?,
        ))
    }
}

/// A `debian:` kernel spec: a channel, optionally pinned to one patch
/// level (`7.2.13`), which is how a replay names the exact release a run
/// used instead of whatever is newest by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The series (or `newest`).
    pub channel: Channel,
    /// `Some(13)` for `7.2.13`: that release and no other.
    pub patch: Option<u32>,
}

impl FromStr for Spec {
    type Err = BadChannel;
    fn from_str(s: &str) -> std::result::Result<Spec, BadChannel> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Ok(Spec {
                channel: s.parse()?,
                patch: None,
            });
        }
        let bad = || BadChannel(s.to_owned());
        Ok(Spec {
            channel: format!("{}.{}", parts[0], parts[1])
                .parse()
                .map_err(|_| bad())?,
            patch: Some(parts[2].parse().map_err(|_| bad())?),
        })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{p}", self.channel),
            None => write!(f, "{}", self.channel),
        }
    }
}

impl Spec {
    /// The spec that pins `kernel` (a Debian kernel) to its own release:
    /// `debian:<this>` resolves to exactly that kernel again.
    pub fn pinning(kernel: &Kernel) -> Option<Spec> {
        if !matches!(kernel.origin, KernelOrigin::Debian { .. }) {
            return None;
        }
        let (a, b, c) = release_numbers(&kernel.release)?;
        Some(Spec {
            channel: Channel::Series(a, b),
            patch: Some(c),
        })
    }
}

/// The kernel a spec names: a pinned release from the cache or, when it is
/// not cached, fetched at that patch level; else as [`kernel_for`].
pub fn kernel_for_spec(spec: Spec) -> Result<Kernel> {
    let Some(patch) = spec.patch else {
        return kernel_for(spec.channel);
    };
    if let Some(k) = cached_where(spec.channel, |n| n.2 == patch) {
        return Ok(k);
    }
    fetch_with(spec.channel, Some(patch), false)
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Series(a, b) => write!(f, "{a}.{b}"),
            Channel::Newest => f.write_str("newest"),
        }
    }
}

impl Channel {
    /// The apt state to resolve it with: the host's for the default series
    /// (Debian 12 has it), sid's for everything else.
    pub fn apt(self) -> Result<Apt> {
        if self == DEFAULT {
            Ok(Apt::host())
        } else {
            Apt::suite(SID)
        }
    }

    fn matches(self, numbers: (u32, u32, u32)) -> bool {
        match self {
            Channel::Series(a, b) => (numbers.0, numbers.1) == (a, b),
            Channel::Newest => true,
        }
    }
}

/// A kernel image package apt can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// e.g. `linux-image-6.12.117+deb12-amd64`.
    pub package: String,
    /// `uname -r`, e.g. `6.12.117+deb12-amd64`.
    pub release: String,
    /// Major, minor, patch.
    pub numbers: (u32, u32, u32),
}

impl Candidate {
    /// Patch level (117 of 6.12.117).
    pub fn patch(&self) -> u32 {
        self.numbers.2
    }
}

/// Parse `linux-image-X.Y.Z+debN-amd64`: the generic amd64 flavour only
/// (not `-dbg`, `cloud-`, `rt-`, nor the unsigned/`-unsigned` variants).
pub fn parse_image_package(name: &str) -> Option<Candidate> {
    let release = name.trim().strip_prefix("linux-image-")?;
    let numbers = release_numbers(release)?;
    let (_, abi) = release.split_once('+')?;
    let deb = abi.strip_suffix("-amd64")?.strip_prefix("deb")?;
    if deb.is_empty() || !deb.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(Candidate {
        package: name.trim().to_owned(),
        release: release.to_owned(),
        numbers,
    })
}

/// `X.Y.Z` leading a release (exactly three numbers before `+`).
fn release_numbers(release: &str) -> Option<(u32, u32, u32)> {
    let version = release.split('+').next()?;
    let mut it = version.split('.').map(|n| n.parse::<u32>().ok());
    let n = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(n)
}

/// The newest package of `channel` (at `patch`, if given) among apt package names.
pub fn newest(names: &str, channel: Channel, patch: Option<u32>) -> Option<Candidate> {
    names
        .lines()
        .filter_map(parse_image_package)
        .filter(|c| channel.matches(c.numbers))
        .filter(|c| patch.is_none_or(|p| c.patch() == p))
        .max_by_key(|c| c.numbers)
}

/// How a release is packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packaging {
    /// One `linux-image-<release>` with kernel and modules (6.12).
    Single {
        /// The image package.
        image: String,
    },
    /// `linux-image-<release>` is a meta package (7.2).
    Split {
        /// `linux-binary-<release>`: the kernel.
        binary: String,
        /// Its other dependencies of the same release that are unpacked
        /// too: `linux-modules-*` (modules), `linux-base-*` (config, which
        /// libbpf's `__kconfig` externs need in the guest; `modules.builtin`).
        others: Vec<String>,
    },
}

impl Packaging {
    /// Tell the packaging from the image package's dependencies.
    pub fn of(c: &Candidate, info: &PackageInfo) -> Packaging {
        let binary = format!("linux-binary-{}", c.release);
        if info.depends.contains(&binary) {
            let others = ["linux-modules", "linux-base"]
                .iter()
                .map(|p| format!("{p}-{}", c.release))
                .filter(|p| info.depends.contains(p))
                .collect();
            Packaging::Split { binary, others }
        } else {
            Packaging::Single {
                image: c.package.clone(),
            }
        }
    }

    /// Packages to download.
    pub fn packages(&self) -> Vec<&str> {
        match self {
            Packaging::Single { image } => vec![image.as_str()],
            Packaging::Split { binary, others } => std::iter::once(binary)
                .chain(others)
                .map(String::as_str)
                .collect(),
        }
    }
}

/// Where the parts are in a tree the packages were unpacked into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The kernel config, when shipped.
    pub config: Option<PathBuf>,
    /// `lib/modules/<release>` (possibly under `usr/`).
    pub modules: PathBuf,
    /// The `-b` base for `depmod`: the directory holding `lib/modules`.
    pub depmod_base: PathBuf,
}

/// Find kernel, config and modules of `release` in an unpacked tree, in
/// either packaging's layout.
pub fn layout(root: &Path, release: &str) -> Result<Layout> {
    let missing = |what: &str| {
        ImageError::NoKernelPackage(format!(
            "no {what} for {release} in the unpacked packages ({})",
            root.display()
        ))
    };
    let (base, modules) = ["usr", ""]
        .iter()
        .map(|b| root.join(b))
        .map(|b| {
            let m = b.join("lib/modules").join(release);
            (b, m)
        })
        .find(|(_, m)| m.is_dir())
        .ok_or_else(|| missing("lib/modules directory"))?;
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| missing("vmlinuz"))?;
    let config = [
        root.join(format!("boot/config-{release}")),
        modules.join("config"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    Ok(Layout {
        vmlinuz,
        config,
        modules,
        depmod_base: base,
    })
}

/// The newest cached kernel of a series, if any.
pub fn cached(channel: Channel) -> Option<Kernel> {
    cached_where(channel, |_| true)
}

/// The newest cached kernel of a series whose release numbers pass `keep`.
fn cached_where(channel: Channel, keep: impl Fn((u32, u32, u32)) -> bool) -> Option<Kernel> {
    let dir = cache::root().join("kernels");
    let mut best: Option<((u32, u32, u32), Kernel)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Some(k) = load_record(&entry.path()) else {
            continue;
        };
        if !matches!(k.origin, KernelOrigin::Debian { .. }) {
            continue;
        }
        let Some(n) = release_numbers(&k.release).filter(|n| channel.matches(*n) && keep(*n))
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, k));
        }
    }
    best.map(|(_, k)| k)
}

/// The [`Kernel`] record of a complete cache directory, if any.
pub(crate) fn load_record(dir: &Path) -> Option<Kernel> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The newest cached kernel, or fetch the newest one apt can see.
pub fn default_kernel() -> Result<Kernel> {
    kernel_for(DEFAULT)
}

/// The kernel of a channel for a run: a series' newest cached kernel (no
/// apt call), else what apt's lists say is newest (sid's lists are fetched
/// only if there are none yet; `lab kernel fetch` refreshes them).
pub fn kernel_for(channel: Channel) -> Result<Kernel> {
    if let Channel::Series(..) = channel {
        if let Some(k) = cached(channel) {
            return Ok(k);
        }
    }
    fetch_with(channel, None, false)
}

/// Fetch (or reuse from the cache) the newest 6.12 package, or the one at `patch`.
pub fn fetch(patch: Option<u32>) -> Result<Kernel> {
    fetch_with(DEFAULT, patch, true)
}

/// Fetch (or reuse from the cache) the newest package of `channel`, or the
/// one at `patch`; `refresh`: update a private apt state's lists first.
pub fn fetch_with(channel: Channel, patch: Option<u32>, refresh: bool) -> Result<Kernel> {
    let apt = channel.apt()?;
    if refresh {
        apt.update()?;
    } else {
        apt.ensure_lists()?;
    }
    let names = apt.pkgnames("linux-image-")?;
    let candidate = newest(&names, channel, patch).ok_or_else(|| {
        let source = match apt.suite_name() {
            Some(s) => format!("the {s} suite"),
            None => "the host's apt sources (for 6.12: bookworm-security, after `apt-get update`)"
                .to_owned(),
        };
        let which = match patch {
            Some(p) => format!("{channel} at patch level {p}"),
            None => channel.to_string(),
        };
        ImageError::NoKernelPackage(format!(
            "no linux-image-<release>+deb<N>-amd64 package of {which} in {source}"
        ))
    })?;
    let info = apt.show(&candidate.package)?;
    let dest = cache::dir("kernels")?.join(&candidate.release);
    if let Some(k) = load_record(&dest) {
        if matches!(&k.origin, KernelOrigin::Debian { version, .. } if *version == info.version) {
            return Ok(k);
        }
    }
    let packaging = Packaging::of(&candidate, &info);
    unpack(&apt, &candidate, &info.version, &packaging, &dest)
}

/// Download and unpack exactly `packaging` at `version` as the kernel
/// `release` into `kernels/<release>/` of the cache (replacing what is
/// there): no list refresh and no choice of the newest, for a kernel a
/// lock file names ([`super::lock`]). apt must know that version.
pub(crate) fn fetch_exact(
    apt: &Apt,
    release: &str,
    version: &str,
    packaging: &Packaging,
) -> Result<Kernel> {
    let candidate = Candidate {
        package: format!("linux-image-{release}"),
        release: release.to_owned(),
        numbers: release_numbers(release).ok_or_else(|| {
            ImageError::NoKernelPackage(format!("{release} is not a MAJOR.MINOR.PATCH release"))
        })?,
    };
    let dest = cache::dir("kernels")?.join(release);
    unpack(apt, &candidate, version, packaging, &dest)
}

/// Download `packages` at `version` with `apt` into the scratch directory
/// `work` (made afresh) and unpack them into `work/root` with `dpkg-deb -x`:
/// nothing is installed on the host. Returns the root; no `.deb` is kept.
pub(crate) fn unpack_packages(
    apt: &Apt,
    packages: &[&str],
    version: &str,
    work: &Path,
) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io_err(work))?;
    let root = work.join("root");
    for package in packages {
        let deb = apt.download(package, version, work)?;
        run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        std::fs::remove_file(&deb).map_err(io_err(&deb))?;
    }
    Ok(root)
}

/// Download and unpack into a scratch directory, then rename into place.
fn unpack(
    apt: &Apt,
    candidate: &Candidate,
    version: &str,
    packaging: &Packaging,
    dest: &Path,
) -> Result<Kernel> {
    let release = candidate.release.as_str();
    let parent = dest.parent().expect("kernels dir");
    let work = parent.join(format!(".tmp-{release}-{}", std::process::id()));
    let root = unpack_packages(apt, &packaging.packages(), version, &work)?;
    let lay = layout(&root, release)?;
    // Debian ships no modules.dep (7.2 also no modules.builtin: depmod warns).
    run_tool(
        Command::new("depmod")
            .arg("-b")
            .arg(&lay.depmod_base)
            .arg(release),
    )?;

    let out = work.join("kernel");
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let rename = |from: &Path, to: &str| -> Result<PathBuf> {
        let to = out.join(to);
        std::fs::rename(from, &to).map_err(io_err(from))?;
        Ok(to)
    };
    // Kernel and config first: in the split layout they sit in the modules dir.
    rename(&lay.vmlinuz, "vmlinuz")?;
    if let Some(c) = &lay.config {
        rename(c, "config")?;
    }
    rename(&lay.modules, "modules")?;

    let bz_bytes = std::fs::read(out.join("vmlinuz")).map_err(io_err(out.join("vmlinuz")))?;
    let bz = bzimage::parse(&bz_bytes).map_err(|why| ImageError::NotAKernel {
        path: out.join("vmlinuz"),
        why,
    })?;
    let vmlinux = bzimage::extract_vmlinux(&bz_bytes, &bz)
        .map_err(io_err(out.join("vmlinux")))?
        .ok_or_else(|| ImageError::NotAKernel {
            path: out.join("vmlinuz"),
            why: "unknown payload compression".into(),
        })?;
    let has_pvh = elf::pvh_entry(&vmlinux).is_some();
    std::fs::write(out.join("vmlinux"), &vmlinux).map_err(io_err(out.join("vmlinux")))?;
    std::fs::remove_dir_all(&root).map_err(io_err(&root))?;

    let final_path = |name: &str| dest.join(name);
    let (package, other_packages) = match packaging {
        Packaging::Single { image } => (image.clone(), Vec::new()),
        Packaging::Split { binary, others } => (binary.clone(), others.clone()),
    };
    let kernel = Kernel {
        origin: KernelOrigin::Debian {
            package,
            version: version.to_owned(),
            other_packages,
            suite: apt.suite_name().map(str::to_owned),
        },
        boot_image: final_path(if has_pvh { "vmlinux" } else { "vmlinuz" }),
        elf_without_pvh: false,
        bzimage: Some(final_path("vmlinuz")),
        vmlinux: Some(final_path("vmlinux")),
        modules: Some(final_path("modules")),
        release: release.to_owned(),
        version: elf::linux_banner(&vmlinux).unwrap_or(bz.version),
        sha256: sha256_hex(&bz_bytes),
    };
    let record = serde_json::to_vec_pretty(&kernel).expect("serialisable");
    write_atomic(&out.join(RECORD), &record)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&out, dest).map_err(io_err(dest))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pin_a_patch_level_or_follow_the_channel() {
        let s: Spec = "7.2.13".parse().unwrap();
        assert_eq!((s.channel, s.patch), (Channel::Series(7, 2), Some(13)));
        assert_eq!(s.to_string(), "7.2.13");
        let s: Spec = "6.12".parse().unwrap();
        assert_eq!((s.channel, s.patch), (Channel::Series(6, 12), None));
        assert_eq!("newest".parse::<Spec>().unwrap().channel, Channel::Newest);
        assert!("7.2.x".parse::<Spec>().is_err());
        assert!("7.2.1.1".parse::<Spec>().is_err());
    }

    #[test]
    fn newest_picks_highest_patch_numerically() {
        let names = "linux-image-6.12.99+deb12-amd64\nlinux-image-6.12.117+deb12-amd64\n\
                     linux-image-6.12.117+deb12-amd64-dbg\nlinux-image-6.12.113+deb12-cloud-amd64\n";
        let c = newest(names, DEFAULT, None).unwrap();
        assert_eq!(c.package, "linux-image-6.12.117+deb12-amd64");
        assert_eq!(c.release, "6.12.117+deb12-amd64");
        assert_eq!(c.patch(), 117);
        assert_eq!(newest(names, DEFAULT, Some(99)).unwrap().patch(), 99);
        assert!(newest(names, DEFAULT, Some(98)).is_none());
        assert!(newest("linux-image-6.1.0-30-amd64", DEFAULT, None).is_none());
    }

    #[test]
    fn channels_parsed_and_matched() {
        assert_eq!("7.2".parse(), Ok(Channel::Series(7, 2)));
        assert_eq!("newest".parse(), Ok(Channel::Newest));
        assert!("7".parse::<Channel>().is_err());
        assert!("latest".parse::<Channel>().is_err());
        let names = "linux-image-6.12.117+deb12-amd64\nlinux-image-7.2.13+deb14-amd64\n\
                     linux-image-7.2.9+deb14-amd64\nlinux-image-7.2.13+deb14-rt-amd64\n\
                     linux-image-amd64\nlinux-image-7.10.1+deb14-amd64-unsigned\n";
        let c = newest(names, Channel::Series(7, 2), None).unwrap();
        assert_eq!(c.package, "linux-image-7.2.13+deb14-amd64");
        assert_eq!(c.numbers, (7, 2, 13));
        assert_eq!(
            newest(names, Channel::Newest, None).unwrap().release,
            "7.2.13+deb14-amd64"
        );
    }
}

//! apt, used for downloads only: either the host's own configuration (for
//! Debian 12's kernels) or a private apt state under the cache for another
//! suite (sid, where Debian's newest kernels are), so the host's apt
//! configuration is never touched.
//!
//! A private state is `apt/<suite>/` of the cache: `sources.list` (the
//! suite at the base URL the host already uses for Debian), `lists/` and
//! `cache/`; every apt command gets `-o` options pointing at them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cache, io_err, run_tool, write_atomic, ImageError, Result};

/// Keyring of Debian's archive, used when the host's entry names none.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Which apt configuration to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apt {
    /// `None`: the host's; `Some`: a private state for a suite.
    own: Option<OwnState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnState {
    suite: String,
    dir: PathBuf,
}

/// What `apt-cache show` says about a package's candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// Exact version, e.g. `7.2.13-1`.
    pub version: String,
    /// Package names in `Depends` (alternatives and version constraints dropped).
    pub depends: Vec<String>,
}

impl Apt {
    /// The host's apt configuration, as configured.
    pub fn host() -> Apt {
        Apt { own: None }
    }

    /// A private apt state for `suite` under the cache (created if needed;
    /// its package lists are fetched by [`Apt::ensure_lists`] or [`Apt::update`]).
    pub fn suite(suite: &str) -> Result<Apt> {
        let dir = cache::dir(&format!("apt/{suite}"))?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let list = dir.join("sources.list");
        let (uri, keyring) = host_debian_source()?;
        let line = format!("deb [signed-by={keyring}] {uri} {suite} main\n");
        if std::fs::read_to_string(&list).ok().as_deref() != Some(line.as_str()) {
            write_atomic(&list, line.as_bytes())?;
        }
        Ok(Apt {
            own: Some(OwnState {
                suite: suite.to_owned(),
                dir,
            }),
        })
    }

    /// The suite of a private state (`None` for the host's configuration).
    pub fn suite_name(&self) -> Option<&str> {
        self.own.as_ref().map(|o| o.suite.as_str())
    }

    /// Run `f` holding this state's lock, so concurrent `lab` processes
    /// (parallel tests, two runs) never run apt on the same lists at once:
    /// apt's own lock makes the second one fail instead of wait.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let dir = match &self.own {
            Some(o) => o.dir.clone(),
            None => cache::dir("apt")?,
        };
        let lock = cache::lock_exclusive(&dir.join("lab.lock"))?;
        let out = f();
        drop(lock);
        out
    }

    /// `tool` with the options that select this apt state.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        if let Some(o) = &self.own {
            cmd.arg("-o")
                .arg(format!(
                    "Dir::Etc::sourcelist={}",
                    o.dir.join("sources.list").display()
                ))
                .args(["-o", "Dir::Etc::sourceparts=/dev/null"])
                .arg("-o")
                .arg(format!(
                    "Dir::State::Lists={}",
                    o.dir.join("lists").display()
                ))
                // Its own package cache too: the host's pkgcache.bin is not rebuilt.
                .arg("-o")
                .arg(format!("Dir::Cache={}", o.dir.join("cache").display()));
        }
        cmd
    }

    /// Refresh the package lists of a private state (the host's are the
    /// host's business: `apt-get update` is not run for it).
    pub fn update(&self) -> Result<()> {
        if self.own.is_some() {
            self.locked(|| run_tool(self.command("apt-get").args(["update", "-q"])))?;
        }
        Ok(())
    }

    /// Fetch the package lists of a private state unless it has some.
    pub fn ensure_lists(&self) -> Result<()> {
        let Some(o) = &self.own else {
            return Ok(());
        };
        let lists = o.dir.join("lists");
        // Checked under the lock: another process may be fetching them.
        self.locked(|| {
            let has_packages = std::fs::read_dir(&lists)
                .map_err(io_err(&lists))?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
            if !has_packages {
                run_tool(self.command("apt-get").args(["update", "-q"]))?;
            }
            Ok(())
        })
    }

    /// Package names starting with `prefix`, one a line.
    pub fn pkgnames(&self, prefix: &str) -> Result<String> {
        let out = self.locked(|| run_tool(self.command("apt-cache").args(["pkgnames", prefix])))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The candidate version of `package` and its dependencies.
    pub fn show(&self, package: &str) -> Result<PackageInfo> {
        let out = self.locked(|| {
            run_tool(
                self.command("apt-cache")
                    .args(["show", "--no-all-versions", package]),
            )
        })?;
        parse_show(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            ImageError::NoKernelPackage(format!("apt-cache shows no version of {package}"))
        })
    }

    /// Every version of `package` this state's lists know (`apt-cache
    /// madison`), newest first; empty when the lists do not know it.
    pub fn versions(&self, package: &str) -> Result<Vec<String>> {
        let out = self.locked(|| run_tool(self.command("apt-cache").args(["madison", package])))?;
        Ok(parse_madison(
            &String::from_utf8_lossy(&out.stdout),
            package,
        ))
    }

    /// The `Date:` of a private state's release file (when its lists were
    /// published), for messages; `None` for the host's apt or no lists.
    pub fn lists_date(&self) -> Option<String> {
        let lists = self.own.as_ref()?.dir.join("lists");
        std::fs::read_dir(lists)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
            .find_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("Date:").map(|d| d.trim().to_owned()))
            })
    }

    /// Download `package` at `version` into `dir`; the `.deb`'s path.
    pub fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        self.locked(|| {
            run_tool(
                self.command("apt-get")
                    .args(["download", "-q", &format!("{package}={version}")])
                    .current_dir(dir),
            )
        })?;
        let prefix = format!("{package}_");
        std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .ok_or_else(|| {
                ImageError::NoKernelPackage(format!(
                    "apt-get download left no {package}_*.deb in {}",
                    dir.display()
                ))
            })
    }
}

/// Version and dependency names from `apt-cache show` output (first stanza).
pub fn parse_show(text: &str) -> Option<PackageInfo> {
    let stanza = text.split("\n\n").next()?;
    let field = |name: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let version = field("Version")?.to_owned();
    let depends = field("Depends")
        .unwrap_or("")
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    Some(PackageInfo { version, depends })
}

/// The versions of `package` in `apt-cache madison` output
/// (`package | version | source` lines), in order, without repeats.
pub fn parse_madison(text: &str, package: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut cols = line.split('|').map(str::trim);
        if cols.next() != Some(package) {
            continue;
        }
        if let Some(v) = cols.next().filter(|v| !v.is_empty()) {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// The base URL and keyring of the host's Debian archive entry.
fn host_debian_source() -> Result<(String, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let texts: Vec<(String, String)> = files
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            Some((name, std::fs::read_to_string(p).ok()?))
        })
        .collect();
    debian_source_in(&texts).ok_or_else(|| {
        ImageError::NoKernelPackage(
            "the host's apt sources have no Debian archive entry (a URI ending in /debian) \
             to take the base URL of Debian's other suites from"
                .into(),
        )
    })
}

/// The first Debian archive entry (`deb`, URI path ending in `/debian`) in
/// apt source files given as (file name, text): one-line `.list` files and
/// deb822 `.sources` files; others (e.g. disabled ones) are ignored.
/// Returns the URI and the keyring (`signed-by`, else Debian's default).
pub fn debian_source_in(files: &[(String, String)]) -> Option<(String, String)> {
    let is_debian = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    for (name, text) in files {
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
                    })
                };
                let enabled = field("Enabled").is_none_or(|v| v != "no");
                let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                if !(enabled && deb) {
                    continue;
                }
                if let Some(uri) =
                    field("URIs").and_then(|u| u.split_whitespace().find(|u| is_debian(u)))
                {
                    let key = field("Signed-By").filter(|k| k.starts_with('/'));
                    return Some((uri.to_owned(), key.unwrap_or(DEFAULT_KEYRING).to_owned()));
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let Some(rest) = line.trim_start().strip_prefix("deb ") else {
                    continue;
                };
                let rest = rest.trim_start();
                let (options, rest) = match rest.strip_prefix('[') {
                    Some(r) => r.split_once(']').unwrap_or(("", r)),
                    None => ("", rest),
                };
                let key = options
                    .split_whitespace()
                    .find_map(|o| o.strip_prefix("signed-by="));
                if let Some(uri) = rest.split_whitespace().next().filter(|u| is_debian(u)) {
                    return Some((uri.to_owned(), key.unwrap_or(DEFAULT_KEYRING).to_owned()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_parsed() {
        let text = "Package: linux-image-7.2.13+deb14-amd64\nVersion: 7.2.13-1\n\
                    Depends: dracut | initramfs-tools (>= 0.120+deb8u2), \
                    linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n\n\
                    Package: other\nVersion: 1\n";
        let info = parse_show(text).unwrap();
        assert_eq!(info.version, "7.2.13-1");
        assert!(info
            .depends
            .contains(&"linux-binary-7.2.13+deb14-amd64".to_owned()));
        assert!(info.depends.contains(&"initramfs-tools".to_owned()));
        assert!(parse_show("Package: x\n").is_none());
    }

    #[test]
    fn madison_versions_parsed() {
        let text = "linux-binary-7.2.13+deb14-amd64 |   7.2.13-1 | http://m/debian sid/main amd64 Packages\n\
                    linux-binary-7.2.13+deb14-amd64 |   7.2.13-1 | http://m/debian sid/main amd64 Packages\n\
                    linux-binary-7.2.13+deb14-amd64 |   7.2.13-2 | http://m/debian sid/main amd64 Packages\n\
                    other | 1 | http://m/debian sid/main amd64 Packages\n";
        assert_eq!(
            parse_madison(text, "linux-binary-7.2.13+deb14-amd64"),
            ["7.2.13-1", "7.2.13-2"]
        );
        assert!(parse_madison("", "x").is_empty());
    }

    #[test]
    fn debian_entry_found_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\
                      Signed-By: /k.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n";
        let files = vec![
            ("x.sources.disabled".to_owned(), deb822.to_owned()),
            (
                "a.list".to_owned(),
                "deb https://other.example/apt stable main\n".to_owned(),
            ),
            ("debian.sources".to_owned(), deb822.to_owned()),
        ];
        assert_eq!(
            debian_source_in(&files),
            Some(("http://mirror.example/debian".into(), "/k.gpg".into()))
        );
        let list = vec![(
            "sources.list".to_owned(),
            "# deb http://x/debian sid main\ndeb-src http://m.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/s.gpg] http://m.example/debian/ bookworm main\n"
                .to_owned(),
        )];
        assert_eq!(
            debian_source_in(&list),
            Some(("http://m.example/debian/".into(), "/s.gpg".into()))
        );
        let plain = vec![(
            "sources.list".to_owned(),
            "deb http://m.example/debian bookworm main\n".to_owned(),
        )];
        assert_eq!(
            debian_source_in(&plain),
            Some(("http://m.example/debian".into(), DEFAULT_KEYRING.into()))
        );
    }
}

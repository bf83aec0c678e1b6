//! The compiler cache of `lab kernel build`: ccache, when it is installed.
//!
//! Kernel developers and the lab's own loops rebuild the same objects in
//! more than one tree (a bisect's worktrees, `lab mutate`'s tree beside the
//! developer's, CI's tests). ccache keyed by content turns those rebuilds
//! into cache hits: a second tree's cold build of the tiny config took
//! 129 hits of 130 compilations here. Nothing changes for a build without
//! it, and `ARENA_LAB_CCACHE=0` turns it off.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to `0` to build without ccache even where it is installed.
pub const DISABLE_ENV: &str = "ARENA_LAB_CCACHE";

/// How a build uses ccache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompilerCache {
    /// The ccache executable.
    pub ccache: PathBuf,
    /// `CCACHE_DIR`: the user's, else `<lab cache>/ccache` (outside every
    /// tree, like the lab's other caches).
    pub dir: PathBuf,
    /// `CCACHE_BASEDIR`: the user's, else the deepest directory holding
    /// both the tree and the build directory, so that absolute paths into
    /// them hash the same for a sibling tree laid out the same way.
    pub base_dir: PathBuf,
}

impl CompilerCache {
    /// The cache for building `tree` into `out`, if ccache is on `PATH`
    /// and not turned off. Never for an LLVM build (`LLVM` set): its
    /// compiler is not `gcc`, and the user chose it on purpose.
    pub fn detect(tree: &Path, out: &Path) -> Option<Self> {
        if std::env::var_os(DISABLE_ENV).is_some_and(|v| v == "0")
            || std::env::var_os("LLVM").is_some()
        {
            return None;
        }
        let ccache = find_on_path("ccache", std::env::var_os("PATH")?)?;
        let dir = std::env::var_os("CCACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::cache::root().join("ccache"));
        let base_dir = std::env::var_os("CCACHE_BASEDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| common_ancestor(tree, out));
        Some(Self {
            ccache,
            dir,
            base_dir,
        })
    }

    /// Points `make` at ccache for the target and host compilers.
    pub fn apply(&self, make: &mut Command) {
        let cc = format!("{} gcc", self.ccache.display());
        make.arg(format!("CC={cc}"))
            .arg(format!("HOSTCC={cc}"))
            .env("CCACHE_DIR", &self.dir)
            .env("CCACHE_BASEDIR", &self.base_dir);
        // The build directory is in the debug info's DW_AT_comp_dir; hashing
        // it would keep two trees from sharing anything.
        if std::env::var_os("CCACHE_NOHASHDIR").is_none() {
            make.env("CCACHE_NOHASHDIR", "true");
        }
    }
}

/// `name` in one of `path`'s directories, as an executable file.
fn find_on_path(name: &str, path: OsString) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The deepest directory containing both `a` and `b` (absolute paths
/// compared component by component; `/` at worst).
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (a, b) = (abs(a), abs(b));
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x.as_os_str());
    }
    if out.as_os_str().is_empty() {
        return PathBuf::from("/");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dir_is_the_deepest_common_directory() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            common_ancestor(&p("/c/t-loop/6.12/tree"), &p("/c/t-loop/6.12/build")),
            p("/c/t-loop/6.12")
        );
        // In-tree build: the tree itself.
        assert_eq!(
            common_ancestor(&p("/src/linux"), &p("/src/linux")),
            p("/src/linux")
        );
        // Components, not characters: /src/lin is no ancestor of /src/linux-b.
        assert_eq!(
            common_ancestor(&p("/src/lin"), &p("/src/linux-b")),
            p("/src")
        );
        assert_eq!(common_ancestor(&p("/a/x"), &p("/b/y")), p("/"));
    }

    #[test]
    fn finds_only_executables_on_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("arena-ccache-{}", std::process::id()));
        let (exe, plain) = (d.join("bin"), d.join("other"));
        for dir in [&exe, &plain] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("ccache"), "#!/bin/sh\n").unwrap();
        }
        std::fs::set_permissions(exe.join("ccache"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(plain.join("ccache"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let path = std::env::join_paths([&plain, &exe]).unwrap();
        assert_eq!(find_on_path("ccache", path), Some(exe.join("ccache")));
        let none = std::env::join_paths([&plain]).unwrap();
        assert_eq!(find_on_path("ccache", none), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn make_gets_ccache_for_both_compilers_and_keeps_users_settings() {
        let cc = CompilerCache {
            ccache: "/usr/bin/ccache".into(),
            dir: "/cache/ccache".into(),
            base_dir: "/c/t".into(),
        };
        let mut make = Command::new("make");
        cc.apply(&mut make);
        let args: Vec<_> = make
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            ["CC=/usr/bin/ccache gcc", "HOSTCC=/usr/bin/ccache gcc"]
        );
        let env: std::collections::HashMap<_, _> = make
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_owned())))
            .collect();
        assert_eq!(env["CCACHE_DIR"], Some("/cache/ccache".into()));
        assert_eq!(env["CCACHE_BASEDIR"], Some("/c/t".into()));
    }
}

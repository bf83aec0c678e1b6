//! Kernel module resolution from a `modules.dep` file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{io_err, ImageError, Result};

/// Parsed `modules.dep`: module name → (relative path, direct dependencies).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    dir: PathBuf,
    entries: HashMap<String, (String, Vec<String>)>,
}

/// The module name of a path like `kernel/drivers/virtio/virtio_mmio.ko.xz`
/// (dashes and underscores are the same to the kernel).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

impl ModuleDeps {
    /// Read `DIR/modules.dep`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(Self::parse(dir, &text))
    }

    /// Parse the text of a `modules.dep`.
    pub fn parse(dir: &Path, text: &str) -> Self {
        let mut entries = HashMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            entries.insert(module_name(module), (module.to_owned(), deps));
        }
        ModuleDeps {
            dir: dir.to_owned(),
            entries,
        }
    }

    /// Files to load for `names`, dependencies first, each once.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        for name in names {
            self.visit(&name.replace('-', "_"), &mut order, 0)?;
        }
        Ok(order.into_iter().map(|rel| self.dir.join(rel)).collect())
    }

    fn visit(&self, name: &str, order: &mut Vec<String>, depth: usize) -> Result<()> {
        let (path, deps) = self
            .entries
            .get(name)
            .ok_or_else(|| ImageError::ModuleNotFound {
                name: name.to_owned(),
                dir: self.dir.clone(),
            })?;
        if order.contains(path) || depth > 64 {
            return Ok(());
        }
        for dep in deps {
            self.visit(&module_name(dep), order, depth + 1)?;
        }
        if !order.contains(path) {
            order.push(path.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio_mmio.ko.xz:\n\
kernel/a/b-c.ko.xz: kernel/a/d.ko.xz kernel/a/e.ko.xz\n\
kernel/a/d.ko.xz: kernel/a/e.ko.xz\n\
kernel/a/e.ko.xz:\n";

    #[test]
    fn names_normalise_dashes_and_suffixes() {
        assert_eq!(module_name("kernel/a/b-c.ko.xz"), "b_c");
        assert_eq!(module_name("x.ko"), "x");
    }

    #[test]
    fn dependencies_come_first_once() {
        let d = ModuleDeps::parse(Path::new("/m"), DEP);
        let order = d.resolve(&["b-c", "virtio_mmio", "d"]).unwrap();
        let rel: Vec<_> = order
            .iter()
            .map(|p| p.strip_prefix("/m").unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            rel,
            [
                "kernel/a/e.ko.xz",
                "kernel/a/d.ko.xz",
                "kernel/a/b-c.ko.xz",
                "kernel/drivers/virtio/virtio_mmio.ko.xz"
            ]
        );
    }

    #[test]
    fn unknown_module_is_an_error() {
        let d = ModuleDeps::parse(Path::new("/m"), DEP);
        assert!(matches!(
            d.resolve(&["nope"]),
            Err(ImageError::ModuleNotFound { .. })
        ));
    }
}

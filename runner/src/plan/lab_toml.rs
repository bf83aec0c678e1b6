//! `lab.toml`: what a directory of scenarios declares for itself. Today
//! that is its own tag families, beside the built-in ones:
//!
//! ```toml
//! [tags]
//! my-patch = "scenarios for my arena patch"
//! ```
//!
//! A scenario file sees every `lab.toml` from its own directory up to the
//! filesystem root or the first directory holding `.git` (that one
//! included), nearest first: a tag declared twice keeps the nearest
//! description. A `lab.toml` that does not parse is invalid input naming
//! its path, line and field.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name.
pub const FILE_NAME: &str = "lab.toml";

/// One tag family a `lab.toml` declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTag {
    /// The tag, as scenarios write it in `tags:` and `--tags` selects it.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The `lab.toml` that declares it.
    pub file: PathBuf,
}

/// The tag families the `lab.toml` files above one directory declare,
/// nearest first, each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclaredTags(Vec<DeclaredTag>);

impl DeclaredTags {
    /// Whether `tag` is declared.
    pub fn contains(&self, tag: &str) -> bool {
        self.get(tag).is_some()
    }

    /// The declaration of `tag`.
    pub fn get(&self, tag: &str) -> Option<&DeclaredTag> {
        self.0.iter().find(|t| t.name == tag)
    }

    /// The declared names, nearest `lab.toml` first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }

    /// Adds `tags` (from a farther file): a name already declared stays.
    fn merge(&mut self, tags: &[DeclaredTag]) {
        for t in tags {
            if !self.contains(&t.name) {
                self.0.push(t.clone());
            }
        }
    }
}

/// Why a `lab.toml` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabTomlError {
    /// It exists but cannot be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// TOML syntax, an unknown section or key, or a bad declaration.
    #[error("{}:{line}:{column}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The field, e.g. `tags.my-patch`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    tags: BTreeMap<toml::Spanned<String>, toml::Spanned<String>>,
}

/// 1-based (line, column) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// The field a TOML error on `line` is about: `[table].key`, from the
/// nearest table header at or above it and the key written on it.
fn field_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
    let here = lines
        .get(line.wrapping_sub(1))
        .copied()
        .unwrap_or("")
        .trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|h| h.split(']').next())
            .map(|h| unquote(h.trim_start_matches('[')))
    };
    if let Some(h) = header(here) {
        return h;
    }
    let table = lines[..line.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
        .find_map(|l| header(l.trim()));
    let key = here
        .split_once('=')
        .map(|(k, _)| unquote(k))
        .filter(|k| !k.is_empty());
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(file)".to_owned(),
    }
}

/// Whether `name` can be a tag: what `--tags T,U` can name.
fn valid_tag(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The tags one `lab.toml` (`path`, contents `text`) declares.
pub fn parse(path: &Path, text: &str) -> Result<Vec<DeclaredTag>, LabTomlError> {
    let invalid = |offset: usize, field: Option<String>, message: String| {
        let (line, column) = position(text, offset);
        LabTomlError::Invalid {
            path: path.to_owned(),
            line,
            column,
            field: field.unwrap_or_else(|| field_at(text, line)),
            message,
        }
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        invalid(offset, None, e.message().trim().to_owned())
    })?;
    let mut out = Vec::new();
    for (name, description) in raw.tags {
        let field = format!("tags.{}", name.get_ref());
        if !valid_tag(name.get_ref()) {
            return Err(invalid(
                name.span().start,
                Some(field),
                format!(
                    "`{}` cannot be a tag: use only A-Z a-z 0-9 - _ .",
                    name.get_ref()
                ),
            ));
        }
        if description.get_ref().trim().is_empty() {
            return Err(invalid(
                description.span().start,
                Some(field),
                "say what the tag is for (a non-empty string)".to_owned(),
            ));
        }
        out.push(DeclaredTag {
            name: name.into_inner(),
            description: description.into_inner(),
            file: path.to_owned(),
        });
    }
    Ok(out)
}

/// Reads and parses one `lab.toml`.
pub fn read(path: &Path) -> Result<Vec<DeclaredTag>, LabTomlError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabTomlError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse(path, &text)
}

/// The `lab.toml` files a scenario in `dir` sees, nearest first: from
/// `dir` up to the root or the first directory holding `.git`.
pub fn files_for(dir: &Path) -> Vec<PathBuf> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let start = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned());
    let mut out = Vec::new();
    for d in start.ancestors() {
        let f = d.join(FILE_NAME);
        if f.is_file() {
            out.push(f);
        }
        if d.join(".git").exists() {
            break;
        }
    }
    out
}

/// Reads each `lab.toml` once, however many scenarios see it.
#[derive(Debug, Default)]
pub struct Cache {
    files: HashMap<PathBuf, Result<Vec<DeclaredTag>, LabTomlError>>,
}

impl Cache {
    /// The tags a scenario file in `dir` may use beside the built-in
    /// families; the first `lab.toml` (nearest) that does not parse is the error.
    pub fn tags_for(&mut self, dir: &Path) -> Result<DeclaredTags, LabTomlError> {
        let mut tags = DeclaredTags::default();
        for f in files_for(dir) {
            let declared = self.files.entry(f.clone()).or_insert_with(|| read(&f));
            tags.merge(declared.as_ref().map_err(Clone::clone)?);
        }
        Ok(tags)
    }
}

/// [`Cache::tags_for`] without a cache.
pub fn tags_for(dir: &Path) -> Result<DeclaredTags, LabTomlError> {
    Cache::default().tags_for(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arena-labtoml-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn declares_tags_with_their_descriptions() {
        let t = parse(
            Path::new("lab.toml"),
            "# mine\n[tags]\nmy-patch = \"scenarios for my arena patch\"\n\"quoted.one\" = \"x\"\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "my-patch");
        assert_eq!(t[0].description, "scenarios for my arena patch");
        assert_eq!(t[1].name, "quoted.one");
        assert_eq!(t[0].file, Path::new("lab.toml"));
        assert!(parse(Path::new("lab.toml"), "").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let err = |text: &str| {
            parse(Path::new("d/lab.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let e = err("[tags]\nok = \"fine\"\nmy-patch = 3\n");
        assert!(
            e.starts_with("d/lab.toml:3:12: tags.my-patch: invalid type"),
            "{e}"
        );
        let e = err("[tags]\nmy-patch = \"unterminated\n");
        assert!(e.starts_with("d/lab.toml:2:"), "{e}");
        assert!(e.contains(": tags.my-patch: "), "{e}");
        let e = err("[tagz]\nx = \"y\"\n");
        assert!(e.starts_with("d/lab.toml:1:"), "{e}");
        assert!(e.contains(": tagz: unknown field `tagz`"), "{e}");
        let e = err("[tags]\n\"a,b\" = \"two at once\"\n");
        assert_eq!(
            e,
            "d/lab.toml:2:1: tags.a,b: `a,b` cannot be a tag: use only A-Z a-z 0-9 - _ ."
        );
        let e = err("[tags]\nempty = \"  \"\n");
        assert_eq!(
            e,
            "d/lab.toml:2:9: tags.empty: say what the tag is for (a non-empty string)"
        );
    }

    #[test]
    fn nearest_first_up_to_the_git_boundary() {
        let root = tmp("walk");
        let inner = root.join("repo/scenarios/mine");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::create_dir_all(root.join("repo/.git")).unwrap();
        // Above the boundary: never read, even when broken.
        std::fs::write(root.join(FILE_NAME), "not toml [").unwrap();
        std::fs::write(
            root.join("repo").join(FILE_NAME),
            "[tags]\nshared = \"far\"\nfar-only = \"far\"\n",
        )
        .unwrap();
        std::fs::write(inner.join(FILE_NAME), "[tags]\nshared = \"near\"\n").unwrap();
        let files = files_for(&inner);
        assert_eq!(files.len(), 2, "{files:?}");
        let tags = tags_for(&inner).unwrap();
        assert_eq!(tags.names().collect::<Vec<_>>(), ["shared", "far-only"]);
        assert_eq!(tags.get("shared").unwrap().description, "near");
        assert!(!tags.contains("smoke"));
        // The middle directory sees only the repository's.
        let mid = tags_for(&root.join("repo/scenarios")).unwrap();
        assert_eq!(mid.names().collect::<Vec<_>>(), ["far-only", "shared"]);
        assert_eq!(mid.get("shared").unwrap().description, "far");
        // A broken one in the way is the error, with its path.
        std::fs::write(inner.join(FILE_NAME), "[tags]\nx = 1\n").unwrap();
        let mut cache = Cache::default();
        let e = cache.tags_for(&inner).unwrap_err().to_string();
        assert!(e.contains("mine/lab.toml:2:5: tags.x: invalid type"), "{e}");
        assert!(cache.tags_for(&root.join("repo")).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }
}

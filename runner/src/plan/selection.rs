//! Picking scenarios out of the loaded files: `--only NAME` (exact),
//! `--tags T,U` (any of them), `--exclude NAME`. A misspelt `--only` is
//! invalid input with the nearest names, not an empty run that looks green.
//! An explicit selection that leaves out an invalid file runs the rest,
//! naming the file it skipped ([`SelectArgs::load`]).

use std::path::PathBuf;

use crate::plan::scenario_file::{self, InvalidFile, ScenarioError, ScenarioFile};
use crate::plan::InputError;

/// Scenario selection options of `lab run` and `lab list`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SelectArgs {
    /// Run only this scenario (exact name; repeatable).
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Only scenarios with any of these tags (comma-separated; repeatable).
    #[arg(long, value_name = "T,U", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Leave this scenario out (exact name; repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude: Vec<String>,
}

/// Why a selection is invalid input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    /// `--only` (or `--exclude`) names no loaded scenario.
    #[error("{option} {name}: no such scenario{}", near_text(.near))]
    Unknown {
        /// `--only` or `--exclude`.
        option: &'static str,
        /// The name given.
        name: String,
        /// Loaded names close to it, best first.
        near: Vec<String>,
    },
    /// The filters leave nothing to run.
    #[error("no scenario matches the selection ({0})")]
    Empty(String),
}

fn near_text(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", near.join(", "))
    }
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Up to three names close to `name`: containing it (or contained in it),
/// or within a third of its length in edits.
pub fn near_names<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let d = distance(name, n);
            let close = n.contains(name) || name.contains(n) || d <= (name.len() / 3).max(2);
            close.then_some((d, n))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// What [`SelectArgs::load`] selected, and the invalid files it left out.
#[derive(Debug)]
pub struct Selected {
    /// The selected scenarios, in load order.
    pub files: Vec<ScenarioFile>,
    /// Invalid files the selection does not include: skipped, not fatal.
    pub skipped: Vec<InvalidFile>,
}

impl Selected {
    /// One line per skipped file, naming it and its error (for stderr).
    pub fn skipped_lines(&self) -> Vec<String> {
        self.skipped.iter().map(skipped_line).collect()
    }
}

/// `skipped invalid scenario file F (not selected): ERROR`, on one line.
pub fn skipped_line(f: &InvalidFile) -> String {
    let error = f.error.to_string().lines().collect::<Vec<_>>().join("; ");
    format!(
        "skipped invalid scenario file {} (not selected): {error}",
        f.path.display()
    )
}

impl SelectArgs {
    /// `--only`, `--tags` or `--exclude` given.
    pub fn is_explicit(&self) -> bool {
        !(self.only.is_empty() && self.tags.is_empty() && self.exclude.is_empty())
    }

    /// Whether this selection may include `f`, an invalid file: what cannot
    /// be read of it (its name, its tags) counts as matching. Without an
    /// explicit selection every file is included.
    pub fn may_include(&self, f: &InvalidFile) -> bool {
        let name = f.name.as_deref();
        let only = self.only.is_empty() || name.is_none_or(|n| self.only.iter().any(|o| o == n));
        let tags = self.tags.is_empty()
            || f.tags
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|t| self.tags.contains(t)));
        let excluded = name.is_some_and(|n| self.exclude.iter().any(|e| e == n));
        only && tags && !excluded
    }

    /// Loads `paths` and applies the selection. An invalid file is invalid
    /// input (exit 2) unless an explicit selection leaves it out: then it
    /// comes back in [`Selected::skipped`] and the rest run.
    pub fn load(&self, paths: &[PathBuf]) -> Result<Selected, InputError> {
        let loaded = scenario_file::load_all(paths)?;
        let (fatal, skipped): (Vec<InvalidFile>, Vec<InvalidFile>) = loaded
            .invalid
            .into_iter()
            .partition(|f| !self.is_explicit() || self.may_include(f));
        if let Some(e) = ScenarioError::combine(fatal.into_iter().map(|f| f.error).collect()) {
            return Err(e.into());
        }
        // `--exclude` of a skipped file's name is not a misspelling.
        let mut select = self.clone();
        select.exclude.retain(|e| {
            !skipped
                .iter()
                .any(|f| f.name.as_deref() == Some(e.as_str()))
        });
        let files = select
            .apply(loaded.files)
            .map_err(|e| InputError::Refused(e.to_string()))?;
        Ok(Selected { files, skipped })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (option, values) in [
            ("--only", &self.only),
            ("--tags", &self.tags),
            ("--exclude", &self.exclude),
        ] {
            if !values.is_empty() {
                parts.push(format!("{option} {}", values.join(",")));
            }
        }
        parts.join(" ")
    }

    /// The selected scenarios, in load order. Every `--only` and `--exclude`
    /// name must exist (exact match); the result must not be empty.
    pub fn apply(&self, files: Vec<ScenarioFile>) -> Result<Vec<ScenarioFile>, SelectionError> {
        let names = || files.iter().map(|f| f.scenario.name.as_str());
        for (option, list) in [("--only", &self.only), ("--exclude", &self.exclude)] {
            if let Some(name) = list.iter().find(|n| !names().any(|m| m == n.as_str())) {
                return Err(SelectionError::Unknown {
                    option,
                    name: name.clone(),
                    near: near_names(name, names()),
                });
            }
        }
        let picked: Vec<ScenarioFile> = files
            .into_iter()
            .filter(|f| {
                let s = &f.scenario;
                (self.only.is_empty() || self.only.contains(&s.name))
                    && (self.tags.is_empty() || s.tags.iter().any(|t| self.tags.contains(t)))
                    && !self.exclude.contains(&s.name)
            })
            .collect();
        if picked.is_empty() {
            return Err(SelectionError::Empty(self.describe()));
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::trivial_scenario;

    fn file(name: &str, tags: &[&str]) -> ScenarioFile {
        let mut scenario = trivial_scenario();
        scenario.name = name.into();
        scenario.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        ScenarioFile {
            path: format!("s/{name}.yaml").into(),
            scenario,
        }
    }

    fn files() -> Vec<ScenarioFile> {
        vec![
            file("fault-read", &["smoke", "page_fault"]),
            file("fault-write", &["page_fault"]),
            file("segv-on-fault", &["segv_on_fault"]),
        ]
    }

    fn names(v: &[ScenarioFile]) -> Vec<&str> {
        v.iter().map(|f| f.scenario.name.as_str()).collect()
    }

    #[test]
    fn only_tags_and_exclude_combine() {
        let all = SelectArgs::default().apply(files()).unwrap();
        assert_eq!(all.len(), 3);
        let sel = SelectArgs {
            only: vec!["segv-on-fault".into(), "fault-read".into()],
            ..Default::default()
        };
        // Load order, not argument order.
        assert_eq!(
            names(&sel.apply(files()).unwrap()),
            ["fault-read", "segv-on-fault"]
        );
        let sel = SelectArgs {
            tags: vec!["smoke".into(), "segv_on_fault".into()],
            ..Default::default()
        };
        assert_eq!(
            names(&sel.apply(files()).unwrap()),
            ["fault-read", "segv-on-fault"]
        );
        let sel = SelectArgs {
            tags: vec!["page_fault".into()],
            exclude: vec!["fault-read".into()],
            ..Default::default()
        };
        assert_eq!(names(&sel.apply(files()).unwrap()), ["fault-write"]);
    }

    #[test]
    fn unknown_names_suggest_near_ones() {
        let sel = SelectArgs {
            only: vec!["fault-reed".into()],
            ..Default::default()
        };
        let e = sel.apply(files()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--only fault-reed: no such scenario; did you mean fault-read?"
        );
        let sel = SelectArgs {
            exclude: vec!["zzz".into()],
            ..Default::default()
        };
        assert_eq!(
            sel.apply(files()).unwrap_err().to_string(),
            "--exclude zzz: no such scenario"
        );
        // A prefix finds its family.
        assert_eq!(
            near_names("segv", files().iter().map(|f| f.scenario.name.as_str())),
            ["segv-on-fault"]
        );
    }

    #[test]
    fn an_empty_selection_is_an_error() {
        let sel = SelectArgs {
            tags: vec!["race".into()],
            ..Default::default()
        };
        assert_eq!(
            sel.apply(files()).unwrap_err(),
            SelectionError::Empty("--tags race".into())
        );
    }

    fn invalid(name: Option<&str>, tags: Option<&[&str]>) -> InvalidFile {
        InvalidFile {
            path: "s/bad.yaml".into(),
            name: name.map(str::to_owned),
            tags: tags.map(|t| t.iter().map(|x| (*x).to_owned()).collect()),
            error: ScenarioError::Empty("s/bad.yaml".into()),
        }
    }

    #[test]
    fn an_invalid_file_is_left_out_only_when_the_selection_can_tell() {
        let only = SelectArgs {
            only: vec!["fault-read".into()],
            ..Default::default()
        };
        assert!(!only.may_include(&invalid(Some("other"), None)));
        assert!(only.may_include(&invalid(Some("fault-read"), None)));
        // No name: cannot tell, so it is included.
        assert!(only.may_include(&invalid(None, Some(&[]))));
        let tags = SelectArgs {
            tags: vec!["mine".into()],
            ..Default::default()
        };
        assert!(!tags.may_include(&invalid(Some("x"), Some(&["smoke"]))));
        assert!(!tags.may_include(&invalid(None, Some(&[]))));
        assert!(tags.may_include(&invalid(Some("x"), Some(&["mine", "smoke"]))));
        assert!(tags.may_include(&invalid(Some("x"), None)));
        let exclude = SelectArgs {
            exclude: vec!["x".into()],
            ..Default::default()
        };
        assert!(!exclude.may_include(&invalid(Some("x"), None)));
        assert!(exclude.may_include(&invalid(Some("y"), None)));
        assert!(exclude.may_include(&invalid(None, None)));
        assert!(!SelectArgs::default().is_explicit());
        assert!(exclude.is_explicit());
    }

    #[test]
    fn load_runs_beside_an_invalid_file_the_selection_leaves_out() {
        let dir = std::env::temp_dir().join(format!("arena-sel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = "name: good\ntags: [smoke]\nsteps:\n  - sleep: { ms: 1 }\n";
        std::fs::write(dir.join("a-good.yaml"), good).unwrap();
        std::fs::write(
            dir.join("b-bad.yaml"),
            "name: bad\ntags: [race]\nsteps:\n  - sleep: { ms: 1, bogus: 2 }\n",
        )
        .unwrap();
        let paths = [dir.clone()];
        let select = |only: &[&str], tags: &[&str], exclude: &[&str]| SelectArgs {
            only: only.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
        };
        // No selection: the bad file is an error, as `lab validate` says.
        let e = select(&[], &[], &[]).load(&paths).unwrap_err().to_string();
        assert!(e.contains("b-bad.yaml:4:"), "{e}");
        for sel in [
            select(&["good"], &[], &[]),
            select(&[], &["smoke"], &[]),
            select(&[], &[], &["bad"]),
        ] {
            let got = sel.load(&paths).unwrap();
            assert_eq!(names(&got.files), ["good"]);
            assert_eq!(got.skipped.len(), 1);
            let line = &got.skipped_lines()[0];
            assert!(
                line.starts_with("skipped invalid scenario file ")
                    && line.contains("b-bad.yaml (not selected): "),
                "{line}"
            );
            assert!(line.contains("bogus"), "{line}");
            assert!(!line.contains('\n'));
        }
        // A selection that includes it (by name or by tag) stays an error.
        for sel in [select(&["bad"], &[], &[]), select(&[], &["race"], &[])] {
            let e = sel.load(&paths).unwrap_err().to_string();
            assert!(e.contains("b-bad.yaml:4:"), "{e}");
        }
        // A file whose YAML does not even parse: no name, so any selection includes it...
        std::fs::write(dir.join("b-bad.yaml"), "name: [unclosed\n").unwrap();
        assert!(select(&["good"], &[], &[]).load(&paths).is_err());
        // ...unless its `name:` line can be read.
        std::fs::write(dir.join("b-bad.yaml"), "name: bad\nsteps: [ {sleep: \n").unwrap();
        let got = select(&["good"], &[], &[]).load(&paths).unwrap();
        assert_eq!(got.skipped[0].name.as_deref(), Some("bad"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}

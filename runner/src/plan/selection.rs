//! Picking scenarios out of the loaded files: `--only NAME` (exact),
//! `--tags T,U` (any of them), `--exclude NAME`. A misspelt `--only` is
//! invalid input with the nearest names, not an empty run that looks green.

use crate::plan::scenario_file::ScenarioFile;

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

impl SelectArgs {
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

    #[test]
    fn edit_distance() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}

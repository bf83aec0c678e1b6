//! How reasons name a step: `step 8/12 (bpf_run, race.yaml:19)`, 1-based
//! among the steps of its list, with the count of that list, its kind and
//! where it is written. The runner knows the lines (it parsed the file) and
//! hands them to the agent with the scenario ([`StepLines`] in
//! [`Scenario::lines`](crate::Scenario)); the agent, which is where steps
//! fail, names them with `StepLines::step` (in [`scenario`](crate::scenario),
//! which knows the steps) and puts the typed
//! [`StepRef`] of each top-level step in its `step_started`, so the host
//! names an open step the same way.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a scenario's steps are written: filled by the runner from the
/// file, never written in it (the runner refuses a file that does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepLines {
    /// The file's name (`race.yaml`), without its directories.
    pub file: String,
    /// 1-based line of each step by its field path: `steps[3]`,
    /// `steps[3].repeat.steps[1]`, `steps[2].processes.roles[0].setup[1]`;
    /// the cases of a sweep share its template's `steps[4].sweep.steps[0]`.
    pub lines: BTreeMap<String, u32>,
}

impl StepLines {
    /// No file behind the scenario (built in code, or an older runner).
    pub fn is_empty(&self) -> bool {
        self.file.is_empty() && self.lines.is_empty()
    }

    /// How to name step `i` (0-based) of the `of` steps of the list at
    /// field path `list_field` (`steps`, `steps[3].repeat.steps`), a `kind`.
    pub fn named(&self, list_field: &str, i: usize, of: usize, kind: &str) -> StepRef {
        StepRef {
            index: i + 1,
            of,
            kind: kind.to_owned(),
            file: self.file.clone(),
            line: self.lines.get(&format!("{list_field}[{i}]")).copied(),
        }
    }
}

/// A step as reasons and progress name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    /// 1-based position in its list.
    pub index: usize,
    /// Steps in that list.
    pub of: usize,
    /// Its kind (YAML key).
    pub kind: String,
    /// The scenario file's name; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Its 1-based line in that file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// `step 8/12 (bpf_run, race.yaml:19)`; without a known line
/// `step 8/12 (bpf_run)`.
impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}/{} ({}", self.index, self.of, self.kind)?;
        match (self.file.is_empty(), self.line) {
            (false, Some(line)) => write!(f, ", {}:{line})", self.file),
            (false, None) => write!(f, ", {})", self.file),
            (true, Some(line)) => write!(f, ", line {line})"),
            (true, None) => f.write_str(")"),
        }
    }
}

/// How the host names the step a `step_started` opened: by its
/// [`StepRef`]; from a sender without one (an older agent), by its 0-based
/// `path` counted from 1.
pub fn started_label(path: &str, kind: &str, at: Option<&StepRef>) -> String {
    match (at, path.parse::<usize>()) {
        (Some(at), _) => at.to_string(),
        (None, Ok(i)) => format!("step {} ({kind})", i + 1),
        (None, Err(_)) => format!("step {path} ({kind})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eighth_of_twelve_steps_is_step_8_of_12_with_its_line() {
        let lines = StepLines {
            file: "x.yaml".into(),
            lines: [("steps[7]".to_owned(), 19)].into_iter().collect(),
        };
        let at = lines.named("steps", 7, 12, "bpf_run");
        assert_eq!(at.to_string(), "step 8/12 (bpf_run, x.yaml:19)");
        assert_eq!(
            started_label("7", "bpf_run", Some(&at)),
            "step 8/12 (bpf_run, x.yaml:19)"
        );
        // No line known: the position and kind still say which step.
        assert_eq!(
            StepLines::default()
                .named("steps", 0, 12, "sleep")
                .to_string(),
            "step 1/12 (sleep)"
        );
        assert_eq!(started_label("7", "repeat", None), "step 8 (repeat)");
    }
}

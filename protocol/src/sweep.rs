//! Expanding `sweep:` templates into concrete cases.
//!
//! A sweep's steps are kept as untyped JSON until each combination of its
//! values is put in; only then are they typed, so a value can stand in any
//! field (a page, a count, a flag list). Expansion runs on the host, before
//! validation, so every case is bounds-checked like hand-written steps.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::scenario::{ParallelStep, Step, SweepCase, SweepStep, MAX_SWEEP_CASES};

/// A problem found while expanding: (field path, message).
pub type Problem = (String, String);

/// Most steps all of a scenario's sweeps may expand to, nested ones
/// multiplied out: a bound on what a (hostile) file can make the lab hold.
pub const MAX_EXPANDED_STEPS: usize = 100_000;

/// Expand every sweep in `steps`, nested ones included (inside `repeat`,
/// `processes`/`threads` and other sweeps). `at` is the field path of the
/// list (`steps`); problems name the template's fields.
pub fn expand_all(steps: &mut [Step], at: &str, problems: &mut Vec<Problem>) {
    let mut budget = MAX_EXPANDED_STEPS;
    expand_list(steps, at, problems, &mut budget);
}

/// [`expand_all`], taking every expanded step from `budget`.
fn expand_list(steps: &mut [Step], at: &str, problems: &mut Vec<Problem>, budget: &mut usize) {
    for (i, step) in steps.iter_mut().enumerate() {
        let field = format!("{at}[{i}]");
        match step {
            Step::Sweep(s) => expand(s, &format!("{field}.sweep"), problems, budget),
            Step::Repeat(r) => expand_list(
                &mut r.steps,
                &format!("{field}.repeat.steps"),
                problems,
                budget,
            ),
            Step::Processes(p) => {
                expand_parallel(p, &format!("{field}.processes"), problems, budget)
            }
            Step::Threads(p) => expand_parallel(p, &format!("{field}.threads"), problems, budget),
            _ => {}
        }
    }
}

fn expand_parallel(
    p: &mut ParallelStep,
    at: &str,
    problems: &mut Vec<Problem>,
    budget: &mut usize,
) {
    expand_list(&mut p.steps, &format!("{at}.steps"), problems, budget);
    for (k, role) in p.roles.iter_mut().enumerate() {
        let base = format!("{at}.roles[{k}]");
        expand_list(&mut role.setup, &format!("{base}.setup"), problems, budget);
        expand_list(&mut role.steps, &format!("{base}.steps"), problems, budget);
    }
}

/// Fill `s.cases` from its template; on any problem the cases stay empty.
fn expand(s: &mut SweepStep, at: &str, problems: &mut Vec<Problem>, budget: &mut usize) {
    let before = problems.len();
    if !s.cases.is_empty() {
        problems.push((
            format!("{at}.cases"),
            "is filled by the lab from `steps`; write `steps` instead".into(),
        ));
    }
    if s.steps.is_empty() {
        problems.push((
            format!("{at}.steps"),
            "a sweep needs at least one step".into(),
        ));
    }
    if s.over.is_empty() {
        problems.push((
            format!("{at}.over"),
            "name at least one variable and its values".into(),
        ));
    }
    let mut columns = Vec::new();
    for (name, values) in &s.over {
        if !is_identifier(name) {
            problems.push((
                format!("{at}.over.{name}"),
                "a variable name uses only a-z A-Z 0-9 _ and starts with a letter".into(),
            ));
        }
        match values.values() {
            Ok(v) => columns.push((name.clone(), v)),
            Err(m) => problems.push((format!("{at}.over.{name}"), m)),
        }
    }
    let total = columns
        .iter()
        .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()));
    if total.is_none_or(|n| n > MAX_SWEEP_CASES) {
        problems.push((
            format!("{at}.over"),
            format!("the values combine to more than {MAX_SWEEP_CASES} cases"),
        ));
    }
    if problems.len() > before {
        return;
    }
    let mut cases = Vec::new();
    for values in product(&columns) {
        if *budget < s.steps.len() {
            let text = format!(
                "the scenario's sweeps expand to more than {MAX_EXPANDED_STEPS} steps in all"
            );
            // Said once, by the innermost sweep that ran out.
            if !problems.iter().any(|(_, m)| *m == text) {
                problems.push((format!("{at}.over"), text));
            }
            *budget = 0;
            return;
        }
        *budget -= s.steps.len();
        let label = label(&values);
        let mut steps = Vec::with_capacity(s.steps.len());
        for (j, template) in s.steps.iter().enumerate() {
            let field = format!("{at}.steps[{j}]");
            let step = substitute(template, &values, &BTreeSet::new())
                .and_then(|v| serde_json::from_value::<Step>(v).map_err(|e| e.to_string()));
            match step {
                Ok(step) => steps.push(step),
                // One problem per field: the first case that has it.
                Err(_) if problems[before..].iter().any(|(f, _)| *f == field) => {}
                Err(m) => problems.push((field, format!("with {label}: {m}"))),
            }
        }
        expand_list(&mut steps, &format!("{at}.steps"), problems, budget);
        cases.push(SweepCase { values, steps });
    }
    if problems.len() == before {
        s.cases = cases;
    }
}

/// Every combination, the last variable varying fastest.
fn product(columns: &[(String, Vec<Value>)]) -> Vec<BTreeMap<String, Value>> {
    let mut out = vec![BTreeMap::new()];
    for (name, values) in columns {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut m = partial.clone();
                    m.insert(name.clone(), v.clone());
                    m
                })
            })
            .collect();
    }
    out
}

fn label(values: &BTreeMap<String, Value>) -> String {
    SweepCase {
        values: values.clone(),
        steps: Vec::new(),
    }
    .label()
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `template` with every `${…}` replaced. A string that is exactly one
/// `${…}` becomes the value itself (a number stays a number); elsewhere
/// the value is written into the text. `inner` holds the variables of
/// sweeps nested in the template: theirs are left for their own expansion.
fn substitute(
    template: &Value,
    values: &BTreeMap<String, Value>,
    inner: &BTreeSet<String>,
) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => {
            let trimmed = s.trim();
            let single = trimmed.starts_with("${")
                && trimmed.ends_with('}')
                && trimmed.matches("${").count() == 1;
            match single {
                true => evaluate(&trimmed[2..trimmed.len() - 1], values, inner)?
                    .unwrap_or_else(|| template.clone()),
                false => Value::String(interpolate(s, values, inner)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, values, inner))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            // A nested sweep: its own variables stay for its expansion.
            let mut inner = inner.clone();
            if let Some(Value::Object(over)) = map
                .get("sweep")
                .and_then(|s| s.get("over"))
                .filter(|_| map.len() == 1)
            {
                inner.extend(over.keys().cloned());
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), substitute(v, values, &inner)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        v => v.clone(),
    })
}

fn interpolate(
    text: &str,
    values: &BTreeMap<String, Value>,
    inner: &BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("`{text}`: `${{` without its `}}`"));
        };
        match evaluate(&rest[start + 2..start + len], values, inner)? {
            Some(Value::String(s)) => out.push_str(&s),
            Some(v) => out.push_str(&v.to_string()),
            None => out.push_str(&rest[start..=start + len]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `name`, `name+K` or `name-K` (K a non-negative integer); `None` for a
/// variable of a nested sweep (`inner`), which is left as written.
fn evaluate(
    expr: &str,
    values: &BTreeMap<String, Value>,
    inner: &BTreeSet<String>,
) -> Result<Option<Value>, String> {
    let expr = expr.trim();
    let (name, offset) = match expr.find(['+', '-']) {
        Some(i) => {
            let sign = &expr[i..=i];
            let k: i64 = expr[i + 1..]
                .trim()
                .parse()
                .map_err(|_| format!("`${{{expr}}}`: after `{sign}` comes a whole number"))?;
            (expr[..i].trim(), if sign == "-" { -k } else { k })
        }
        None => (expr, 0),
    };
    let Some(value) = values.get(name) else {
        if inner.contains(name) {
            return Ok(None);
        }
        let known: Vec<&str> = values.keys().map(String::as_str).collect();
        return Err(format!(
            "`${{{expr}}}`: no variable `{name}` (this sweep has {})",
            known.join(", ")
        ));
    };
    if offset == 0 {
        return Ok(Some(value.clone()));
    }
    let n = value
        .as_i64()
        .ok_or_else(|| format!("`${{{expr}}}`: `{name}` is {value}, not a whole number"))?;
    n.checked_add(offset)
        .map(|v| Some(Value::from(v)))
        .ok_or_else(|| format!("`${{{expr}}}` overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SweepValues;
    use serde_json::json;

    fn sweep(over: Value, steps: Value) -> Step {
        serde_json::from_value(json!({"sweep": {"over": over, "steps": steps}})).unwrap()
    }

    fn expanded(step: Step) -> (Vec<SweepCase>, Vec<Problem>) {
        let mut steps = vec![step];
        let mut problems = Vec::new();
        expand_all(&mut steps, "steps", &mut problems);
        let Step::Sweep(s) = steps.pop().unwrap() else {
            panic!()
        };
        (s.cases, problems)
    }

    #[test]
    fn values_become_typed_fields_including_offsets() {
        let (cases, problems) = expanded(sweep(
            json!({"count": [1, 16]}),
            json!([{"touch": {"arena": "a", "page": "${count-1}", "count": "${count}", "op": "read"}}]),
        ));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cases.len(), 2);
        let Step::Touch(t) = &cases[1].steps[0] else {
            panic!()
        };
        assert_eq!((t.page, t.count), (15, 16));
        assert_eq!(cases[1].label(), "count=16");
    }

    #[test]
    fn several_variables_give_their_product_last_fastest() {
        let (cases, problems) = expanded(sweep(
            json!({"a": {"from": 0, "to": 4, "step": 2}, "b": ["x", "y"]}),
            json!([{"sleep": {"ms": "${a}"}}]),
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let labels: Vec<String> = cases.iter().map(SweepCase::label).collect();
        assert_eq!(
            labels,
            ["a=0 b=x", "a=0 b=y", "a=2 b=x", "a=2 b=y", "a=4 b=x", "a=4 b=y"]
        );
    }

    #[test]
    fn text_is_interpolated_and_lists_can_be_values() {
        let (cases, problems) = expanded(sweep(
            json!({"flags": [[], ["segv_on_fault"]], "n": [3]}),
            json!([{"arena": {"id": "a${n}", "pages": "${n}", "flags": "${flags}"}}]),
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let Step::Arena(a) = &cases[1].steps[0] else {
            panic!()
        };
        assert_eq!(a.id, "a3");
        assert_eq!(a.flags.len(), 1);
    }

    #[test]
    fn nested_sweeps_and_sweeps_in_repeat_expand() {
        let inner =
            json!({"sweep": {"over": {"p": [0, 1]}, "steps": [{"sleep": {"ms": "${p+10}"}}]}});
        let outer: Step = serde_json::from_value(json!({"repeat": {"times": 2, "steps": [
            {"sweep": {"over": {"q": [5]}, "steps": [inner]}}
        ]}}))
        .unwrap();
        let mut steps = vec![outer];
        let mut problems = Vec::new();
        expand_all(&mut steps, "steps", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let Step::Repeat(r) = &steps[0] else { panic!() };
        let Step::Sweep(s) = &r.steps[0] else {
            panic!()
        };
        let Step::Sweep(inner) = &s.cases[0].steps[0] else {
            panic!()
        };
        let Step::Sleep(sl) = &inner.cases[1].steps[0] else {
            panic!()
        };
        assert_eq!(sl.ms, 11);
    }

    #[test]
    fn problems_name_the_template_field_and_the_case() {
        let (cases, problems) = expanded(sweep(
            json!({"page": [0, -1]}),
            json!([{"touch": {"arena": "a", "page": "${page}", "op": "read"}}, {"sleep": {"ms": "${nope}"}}]),
        ));
        assert!(cases.is_empty());
        let text = format!("{problems:?}");
        assert!(
            text.contains("steps[0].sweep.steps[0]") && text.contains("with page=-1"),
            "{text}"
        );
        assert!(
            text.contains("no variable `nope` (this sweep has page)"),
            "{text}"
        );
    }

    #[test]
    fn empty_bad_and_huge_sweeps_are_refused() {
        for (over, steps, want) in [
            (
                json!({}),
                json!([{"sleep": {"ms": 1}}]),
                "at least one variable",
            ),
            (json!({"a": []}), json!([{"sleep": {"ms": 1}}]), "empty"),
            (json!({"a": [1]}), json!([]), "at least one step"),
            (
                json!({"a": {"from": 3, "to": 1}}),
                json!([{"sleep": {"ms": 1}}]),
                "past",
            ),
            (
                json!({"a": {"from": 0, "to": 5, "step": 0}}),
                json!([{"sleep": {"ms": 1}}]),
                "positive",
            ),
            (
                json!({"a": {"from": 0, "to": 40}, "b": {"from": 0, "to": 40}}),
                json!([{"sleep": {"ms": 1}}]),
                "more than 1024",
            ),
            (
                json!({"1a": [1]}),
                json!([{"sleep": {"ms": 1}}]),
                "variable name",
            ),
        ] {
            let (cases, problems) = expanded(sweep(over, steps));
            assert!(cases.is_empty());
            assert!(
                format!("{problems:?}").contains(want),
                "{want}: {problems:?}"
            );
        }
    }

    #[test]
    fn nested_sweeps_cannot_multiply_past_the_budget() {
        let inner = json!({"sweep": {"over": {"b": {"from": 0, "to": 999}}, "steps": [{"sleep": {"ms": 1}}]}});
        let (cases, problems) =
            expanded(sweep(json!({"a": {"from": 0, "to": 999}}), json!([inner])));
        assert!(cases.is_empty());
        assert!(
            format!("{problems:?}").contains("more than 100000 steps"),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_range_near_the_integer_limits_is_refused_not_overflowed() {
        let v = SweepValues::Range {
            from: i64::MIN,
            to: i64::MAX,
            step: 1,
        };
        assert!(v.values().unwrap_err().contains("at most"));
    }

    #[test]
    fn only_cases_go_to_the_agent() {
        let (cases, _) = expanded(sweep(json!({"a": [1]}), json!([{"sleep": {"ms": "${a}"}}])));
        let step = Step::Sweep(SweepStep {
            over: BTreeMap::from([("a".into(), SweepValues::List(vec![json!(1)]))]),
            steps: vec![json!({"sleep": {"ms": "${a}"}})],
            cases,
        });
        let wire = serde_json::to_value(&step).unwrap();
        assert!(wire["sweep"].get("steps").is_none(), "{wire}");
        let back: Step = serde_json::from_value(wire).unwrap();
        let Step::Sweep(s) = back else { panic!() };
        assert_eq!(s.cases.len(), 1);
    }
}

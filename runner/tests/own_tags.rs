//! Issue 23: a scenario directory's own tag families (`lab.toml`), one
//! invalid file that does not block the scenarios beside it, and `lab
//! kernel check --scenarios`. Scenario directories live outside the
//! repository (a scratch dir), as a kernel developer's own would; the runs
//! are real VMs on the default kernel.

mod common;

use std::path::Path;

use common::*;

/// A tiny scenario with `tags`.
fn tiny(name: &str, tags: &str) -> String {
    format!(
        "name: {name}
tags: [{tags}]
vm: {{ vcpus: 1, memory_mib: 256 }}
timeout_s: 30
steps:
  - arena: {{ id: a, pages: 4 }}
  - mmap: {{ arena: a }}
  - touch: {{ arena: a, page: 0, op: write, value: 0x2 }}
  - touch: {{ arena: a, page: 0, op: read, expect: {{ value: 0x2 }} }}
"
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn names(results: &Path) -> Vec<String> {
    summary(results)["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_lab_toml_declares_tags_that_tags_selects_by() {
    let dir = scratch("own-tags");
    let files = dir.join("scenarios");
    std::fs::create_dir_all(&files).unwrap();
    let mine = scenario(&files, "mine", &tiny("mine", "my-patch"));
    scenario(&files, "other", &tiny("other", "smoke"));
    let d = files.to_str().unwrap();

    // Undeclared: invalid input naming the tag and where to declare it.
    let out = lab(&["validate", d]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:8: tags[0]: unknown tag \"my-patch\": declare it in a lab.toml beside the scenarios ([tags] my-patch = \"...\"), or use one of: smoke,",
            mine.display()
        )),
        "{err}"
    );

    // Declared a level up (found walking up from the file's directory).
    std::fs::write(
        dir.join("lab.toml"),
        "[tags]\nmy-patch = \"scenarios for my arena patch\"\n",
    )
    .unwrap();
    let out = lab(&["validate", d]);
    assert_eq!(out.status.code(), Some(0));
    let out = lab(&["list", "--tags", "my-patch", d]);
    assert_eq!(out.status.code(), Some(0));
    let listed = text(&out.stdout);
    assert!(
        listed.starts_with("mine ") && listed.contains("[my-patch]"),
        "{listed}"
    );
    assert!(!listed.contains("other"), "{listed}");

    // A run of the custom tag runs that scenario only, and it passes.
    let results = dir.join("results");
    let out = lab_run(&results, &["--tags", "my-patch", d]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(names(&results), ["mine"]);
    let s = summary(&results);
    assert_eq!(s["scenarios"][0]["verdict"], "pass", "{s}");

    // A lab.toml that does not parse: exit 2 with its path, line and field.
    std::fs::write(
        files.join("lab.toml"),
        "[tags]\nok = \"fine\"\nbroken = 3\n",
    )
    .unwrap();
    let out = lab(&["list", "--tags", "my-patch", d]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:10: tags.broken: invalid type: integer `3`, expected a string",
            files.join("lab.toml").display()
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_invalid_file_does_not_block_a_selection_that_leaves_it_out() {
    let dir = scratch("bad-neighbour");
    let files = dir.join("scenarios");
    std::fs::create_dir_all(&files).unwrap();
    scenario(&files, "good", &tiny("good", "smoke"));
    let bad = scenario(
        &files,
        "bad",
        &tiny("bad", "race").replace("page: 0, op: read", "page: 9, op: read"),
    );
    let d = files.to_str().unwrap();
    let results = dir.join("results");

    // No selection, validate, or a selection that includes it: exit 2 as before.
    for args in [
        vec!["validate", d],
        vec!["list", d],
        vec!["list", "--only", "bad", d],
        vec!["list", "--tags", "race", d],
    ] {
        let out = lab(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(&format!("{}:9:", bad.display())),
            "{args:?}"
        );
    }
    let out = lab_run(&results, &[d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !results.join("latest").exists(),
        "no run folder for invalid input"
    );

    // A selection without it runs, naming what it skipped on one line.
    let skipped = format!(
        "lab: skipped invalid scenario file {} (not selected): {}:9:",
        bad.display(),
        bad.display()
    );
    let out = lab(&["list", "--exclude", "bad", d]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("good "));
    assert!(
        text(&out.stderr).contains(&skipped),
        "{}",
        text(&out.stderr)
    );
    let out = lab_run(&results, &["--only", "good", d]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    let lines: Vec<_> = err
        .lines()
        .filter(|l| l.contains("skipped invalid"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with(&skipped), "{err}");
    assert!(lines[0].contains("outside arena"), "{err}");
    assert_eq!(names(&results), ["good"]);
    assert_eq!(summary(&results)["scenarios"][0]["verdict"], "pass");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernel_check_tells_which_scenarios_run_and_which_are_skipped() {
    let out = lab(&["kernel", "check", "--scenarios", "scenarios/arena"]);
    // Debian's 6.12 has what the lab needs.
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{table}"))
            .to_owned()
    };
    assert!(table.contains("\nscenarios: "), "{table}");
    // No kmemleak nor fault injection in Debian's config...
    let leak = line("leak-kmemleak-arena-lifecycle");
    assert!(
        leak.contains(" skipped ") && leak.contains("lacks CONFIG_DEBUG_KMEMLEAK"),
        "{leak}"
    );
    let fi = line("fi-fault-and-alloc-may-sleep");
    assert!(
        fi.contains(" skipped ") && fi.contains("CONFIG_FAULT_INJECTION"),
        "{fi}"
    );
    // ...but the memory controller: cgroup memory checks run.
    assert!(line("leak-arena-pages-returned").ends_with(" runs"));
    assert!(line("pf-read-fault-allocates").ends_with(" runs"));
    // A kfunc is not in the config: only the boot can tell.
    let kfunc = line("ba-reserve-pages");
    assert!(
        kfunc.contains("checked at boot") && kfunc.contains("kfunc bpf_arena_reserve_pages"),
        "{kfunc}"
    );
    // An invalid scenario path is invalid input, before any kernel.
    let out = lab(&["kernel", "check", "--scenarios", "scenarios/nope"]);
    assert_eq!(out.status.code(), Some(2));
}

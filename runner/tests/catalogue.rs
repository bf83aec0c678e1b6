//! The arena scenario catalogue and the upstream selftests, run for real on
//! the default kernel, and proof that a flipped expectation fails.

mod common;

use common::*;

#[test]
fn arena_catalogue_passes_and_covers_every_family() {
    let results = scratch("catalogue");
    let out = lab_run(&results, &["-j", "2", "scenarios/arena"]);
    // A documented kernel bug is `known_fail`, which leaves the exit 0.
    let known_bugs = assert_passed_but_known_bugs(&results);
    assert_eq!(out.status.code(), Some(0), "exit status");
    let s = summary(&results);
    let scenarios = s["scenarios"].as_array().unwrap();
    assert!(scenarios.len() >= 20, "only {} scenarios", scenarios.len());
    for family in [
        "page_fault",
        "segv_on_fault",
        "bpf_alloc",
        "mmap_rules",
        "race",
    ] {
        assert!(
            scenarios
                .iter()
                .any(|sc| sc["tags"].as_array().unwrap().iter().any(|t| t == family)),
            "no scenario tagged {family}"
        );
    }
    // Race scenarios report their seed and per-process outcomes.
    let race = scenarios
        .iter()
        .find(|sc| sc["name"] == "race-fault-same-pages")
        .unwrap();
    let step = race["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["kind"] == "processes")
        .unwrap();
    assert_eq!(step["data"]["workers"].as_array().unwrap().len(), 4);
    // The step's seed is the first draw of the scenario's seed stream.
    let mut stream = race["seed"].as_u64().unwrap();
    assert_eq!(
        step["data"]["seed"],
        arena_protocol::seed::draw(&mut stream)
    );
    assert_eq!(step["data"]["choices"][0]["seed"], step["data"]["seed"]);
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    // Known kernel bugs are skipped testcases with their note, never failures.
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert_eq!(
        junit
            .matches("<skipped message=\"known kernel bug: ")
            .count(),
        known_bugs,
        "{junit}"
    );
}

#[test]
fn flipped_expectation_fails_naming_expected_and_actual() {
    // sof-unallocated-sigsegv with the expectation flipped: a touch of an
    // unallocated page of a segv_on_fault arena expected to succeed.
    let original =
        std::fs::read_to_string(root().join("scenarios/arena/sof-unallocated-sigsegv.yaml"))
            .unwrap();
    let flipped = original
        .replace("name: sof-unallocated-sigsegv", "name: flipped")
        .replacen(
            "  - touch: { arena: a, page: 0, op: read, expect: { signal: SIGSEGV } }",
            "  - touch: { arena: a, page: 0, op: read }",
            1,
        );
    assert_ne!(
        flipped,
        original.replace("name: sof-unallocated-sigsegv", "name: flipped")
    );
    let (out, results) = run_yaml("flipped", &flipped);
    assert_eq!(out.status.code(), Some(1));
    let reason = first_reason(&results);
    assert!(reason.contains("expected the access at"), "{reason}");
    assert!(reason.contains("to succeed, got SIGSEGV at"), "{reason}");
}

#[test]
fn seed_is_recorded_and_reused() {
    let results = scratch("seed");
    let out = lab_run(
        &results,
        &[
            "--seed",
            "4242",
            "scenarios/arena/race-munmap-exit-while-faulting.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&results);
    assert_eq!(s["seed"], 4242);
    let step = s["scenarios"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["kind"] == "processes")
        .unwrap()
        .clone();
    // The scenario's seed comes from the run seed and its name; the step's
    // is the first draw of the scenario's stream.
    let name = "race-munmap-exit-while-faulting";
    let mut stream = arena_protocol::seed::scenario_seed(4242, name);
    assert_eq!(s["scenarios"][0]["seed"], stream);
    assert_eq!(
        step["data"]["seed"],
        arena_protocol::seed::draw(&mut stream)
    );
    assert_eq!(step["data"]["iterations"], 600);
}

#[test]
fn upstream_selftests_every_subtest_is_a_testcase() {
    let results = scratch("selftests");
    let out = lab_run(&results, &["scenarios/selftests"]);
    assert_eq!(out.status.code(), Some(0));
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    let cases = junit.matches("<testcase").count();
    assert!(cases >= 19, "{cases} testcases");
    for t in [
        "arena_atomics/",
        "arena_htab/",
        "arena_list/",
        "verifier_arena/",
        "verifier_arena_large/",
    ] {
        assert!(
            junit.contains(&format!("name=\"{t}")),
            "no {t} subtest in junit"
        );
    }
    assert!(junit.contains("failures=\"0\""));
}

#[test]
fn failing_selftest_subtests_become_failing_testcases_with_their_log() {
    // Arena programs need the JIT: with it off, the upstream tests fail for real.
    let (out, results) = run_yaml(
        "selftests-nojit",
        "name: selftests-nojit\nsteps:\n  - sysctl: { path: net.core.bpf_jit_enable, value: \"0\" }\n  - selftest: { tests: [arena_list] }\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let junit = std::fs::read_to_string(results.join("latest/junit.xml")).unwrap();
    let case = junit
        .split("<testcase ")
        .find(|c| c.contains("name=\"arena_list/arena_list_1\""))
        .expect("arena_list_1 testcase");
    assert!(case.contains("<failure"), "{case}");
    assert!(case.contains("JIT is required"), "{case}");
    let raw = std::fs::read_to_string(results.join("latest/selftests-nojit/guest-test_progs.log"))
        .unwrap();
    assert!(
        raw.contains("#1/1") || raw.contains("arena_list/arena_list_1:FAIL"),
        "{raw}"
    );
}

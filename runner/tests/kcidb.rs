//! `lab kcidb`: a run with every verdict (and selftest subtests), written
//! through the library's types without VMs, becomes KCIDB data that
//! kcidb-io's own validator (schema `LATEST`) accepts; the same data with a
//! field broken does not.

mod common;

use std::path::Path;

use arena_images::kernel::{Kernel, KernelOrigin};
use arena_protocol::StepStatus;
use arena_runner::judge::verdict::{Judgement, SplatRecord, TestcaseRecord, Verdict};
use arena_runner::record::results::{ScenarioSummary, Summary};
use common::*;
use serde_json::Value;

fn kernel() -> Kernel {
    Kernel {
        origin: KernelOrigin::Debian {
            package: "linux-image-6.12.57+deb13-amd64".into(),
            version: "6.12.57-1~deb13u1".into(),
            other_packages: Vec::new(),
            suite: None,
        },
        boot_image: "/cache/vmlinux".into(),
        elf_without_pvh: false,
        bzimage: None,
        vmlinux: None,
        modules: None,
        release: "6.12.57+deb13-amd64".into(),
        version: "Linux version 6.12.57+deb13-amd64 (gcc 14)".into(),
        sha256: "5".repeat(64),
    }
}

fn entry(name: &str, suite: &str, verdict: Verdict, reason: &str) -> ScenarioSummary {
    let mut s = ScenarioSummary::pending(
        name,
        &Path::new("scenarios")
            .join(suite)
            .join(format!("{name}.yaml")),
        &["smoke".to_owned()],
        7,
    );
    s.judgement = Judgement::not_run(reason);
    s.judgement.verdict = verdict;
    if verdict.ran() {
        s.duration_s = 3.25;
        s.judgement.console_tail = Some("[    1.0] booting\n[    2.0] done".into());
    }
    s
}

/// pass, fail (a splat and a console tail longer than KCIDB's excerpt
/// limit), known_fail, error, timeout, skipped, not_run, and a selftest
/// scenario with subtests.
fn every_verdict() -> Summary {
    let mut fail = entry(
        "fault-oops",
        "arena",
        Verdict::Fail,
        "kernel BUG at mm/x.c:12",
    );
    fail.judgement.splats.push(SplatRecord {
        line: 40,
        kind: "bug".into(),
        title: "kernel BUG at mm/x.c:12".into(),
        text: Some("kernel BUG at mm/x.c:12\nRIP: f+0x1/0x2\0".into()),
        function: Some("f".into()),
        decoded: None,
    });
    fail.judgement.console_tail = Some("a console line\n".repeat(3000));
    let mut known = entry("race-known", "arena", Verdict::KnownFail, "WARNING: race");
    known.judgement.known_issue = Some("upstream bug, fixed in 7.1".into());
    let mut selftests = entry(
        "test-progs-arena",
        "selftests",
        Verdict::Fail,
        "1 subtest failed",
    );
    for (name, status) in [
        ("arena_htab/arena_htab_llvm", StepStatus::Pass),
        ("arena_list/arena_list_1", StepStatus::Fail),
        ("arena_atomics", StepStatus::Skip),
    ] {
        selftests.judgement.testcases.push(TestcaseRecord {
            name: name.into(),
            status,
            log: if status == StepStatus::Fail {
                "test_arena_list_1:FAIL:expected 0 got 1".into()
            } else {
                String::new()
            },
            duration_s: 0.5,
        });
    }
    let entries = vec![
        entry("arena-mmap-readback", "smoke", Verdict::Pass, ""),
        fail,
        known,
        entry(
            "boot-error",
            "arena",
            Verdict::Error,
            "guest image: no such file",
        ),
        entry(
            "stall",
            "arena",
            Verdict::Timeout,
            "no progress for 30 s; VM killed",
        ),
        entry(
            "needs-7x",
            "arena",
            Verdict::Skipped,
            "kernel lacks kfunc bpf_arena_x",
        ),
        entry("never", "arena", Verdict::NotRun, "aborted: backend died"),
        selftests,
    ];
    let mut s = Summary::new("20260101-000000", 7, entries);
    s.kernel = Some(kernel());
    s.backend = Some("qemu".into());
    s.accelerator = Some("tcg".into());
    s.catalogue = Some("c".repeat(64));
    s.finish(30.0);
    s
}

fn tests_of(v: &Value) -> &Vec<Value> {
    v["tests"].as_array().unwrap()
}

#[test]
fn every_verdict_validates_with_kcidb_io_and_a_broken_field_does_not() {
    let dir = scratch("kcidb");
    let run = dir.join("20260101-000000");
    write_run(&run, &every_verdict());
    let out_file = dir.join("kcidb.json");
    let out = lab(&[
        "kcidb",
        run.to_str().unwrap(),
        "--origin",
        "arena_lab_ci",
        "--log-url-base",
        "https://example.org/nightly/20260101-000000",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let (ok, text) = kcidb_validate(&out_file);
    assert!(ok, "kcidb-io rejects lab kcidb's output: {text}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(v["version"]["major"], 5);
    assert_eq!(v["checkouts"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["checkouts"][0]["git_commit_name"],
        "debian/6.12.57-1_deb13u1"
    );
    assert_eq!(v["builds"][0]["checkout_id"], v["checkouts"][0]["id"]);
    let tests = tests_of(&v);
    assert_eq!(tests.len(), 8 + 3, "a test per scenario and per subtest");
    let by_path = |p: &str| {
        tests
            .iter()
            .find(|t| t["path"] == p)
            .unwrap_or_else(|| panic!("no test {p} in {v}"))
    };
    for (path, status) in [
        ("arena.smoke.arena-mmap-readback", "PASS"),
        ("arena.arena.fault-oops", "FAIL"),
        ("arena.arena.race-known", "FAIL"),
        ("arena.arena.boot-error", "ERROR"),
        ("arena.arena.stall", "ERROR"),
        ("arena.arena.needs-7x", "SKIP"),
        ("arena.arena.never", "MISS"),
        ("arena.selftests.test-progs-arena", "FAIL"),
        (
            "arena.selftests.test-progs-arena.arena_htab.arena_htab_llvm",
            "PASS",
        ),
        (
            "arena.selftests.test-progs-arena.arena_list.arena_list_1",
            "FAIL",
        ),
        ("arena.selftests.test-progs-arena.arena_atomics", "SKIP"),
    ] {
        assert_eq!(by_path(path)["status"], status, "{path}");
        assert_eq!(by_path(path)["build_id"], v["builds"][0]["id"]);
        assert!(by_path(path)["id"]
            .as_str()
            .unwrap()
            .starts_with("arena_lab_ci:"));
    }
    let known = by_path("arena.arena.race-known");
    assert_eq!(known["misc"]["known_fail"], true);
    assert_eq!(known["misc"]["lab_verdict"], "known_fail");
    let fail = by_path("arena.arena.fault-oops");
    let excerpt = fail["log_excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("kernel BUG at mm/x.c:12"), "{excerpt}");
    assert!(excerpt.contains("kernel splat at console.log:40"));
    assert_eq!(excerpt.chars().count(), 16384, "cut to KCIDB's maxLength");
    assert_eq!(
        fail["log_url"],
        "https://example.org/nightly/20260101-000000/fault-oops/console.log"
    );
    assert_eq!(fail["duration"], 3.25);
    assert!(by_path("arena.arena.never").get("duration").is_none());
    assert!(
        by_path("arena.selftests.test-progs-arena.arena_list.arena_list_1")["log_excerpt"]
            .as_str()
            .unwrap()
            .contains("FAIL:expected 0 got 1")
    );
    let mut ids: Vec<&str> = tests.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), tests.len(), "ids unique");

    // `lab kcidb RUN --origin arena_lab_ci [EXTRA...] -o OUT`, read back.
    let write = |run: &Path, out: &str, extra: &[&str]| -> Value {
        let out = dir.join(out);
        let mut args = vec!["kcidb", run.to_str().unwrap(), "--origin", "arena_lab_ci"];
        args.extend(extra);
        args.extend(["-o", out.to_str().unwrap()]);
        assert_eq!(lab(&args).status.code(), Some(0));
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    // The same night written again: the same ids, so a re-submission
    // updates instead of duplicating.
    let url = [
        "--log-url-base",
        "https://example.org/nightly/20260101-000000",
    ];
    assert_eq!(
        v,
        write(&run, "kcidb1b.json", &url),
        "the same night again: the same objects"
    );

    // The next night on the same kernel (another run id, another start):
    // new tests of the same build, so KCIDB keeps both nights.
    let mut again = every_verdict();
    again.run_id = "20260101-010101".into();
    again.started = "2026-01-01T01:01:01Z".into();
    let run2 = dir.join("20260101-010101");
    write_run(&run2, &again);
    let v2 = write(&run2, "kcidb2.json", &[]);
    let ids2: Vec<&Value> = tests_of(&v2).iter().map(|t| &t["id"]).collect();
    let ids1: Vec<&Value> = tests.iter().map(|t| &t["id"]).collect();
    assert!(ids1.iter().all(|i| !ids2.contains(i)), "{ids1:?} {ids2:?}");
    assert_eq!(v["builds"][0]["id"], v2["builds"][0]["id"]);

    // Deliberately broken fields: each is refused by the validator.
    type Break = Box<dyn Fn(&mut Value)>;
    let breaks: Vec<(&str, Break)> = vec![
        (
            "status",
            Box::new(|v: &mut Value| v["tests"][0]["status"] = "GREEN".into()),
        ),
        (
            "log_excerpt",
            Box::new(|v: &mut Value| v["tests"][1]["log_excerpt"] = "x".repeat(16385).into()),
        ),
        (
            "id",
            Box::new(|v: &mut Value| v["tests"][2]["id"] = "no-origin-prefix".into()),
        ),
        (
            "path",
            Box::new(|v: &mut Value| v["tests"][3]["path"] = "arena.a b".into()),
        ),
        (
            "extra field",
            Box::new(|v: &mut Value| v["tests"][0]["verdict"] = "pass".into()),
        ),
    ];
    for (what, break_it) in breaks {
        let mut bad = v.clone();
        break_it(&mut bad);
        let f = dir.join("broken.json");
        std::fs::write(&f, serde_json::to_vec(&bad).unwrap()).unwrap();
        let (ok, text) = kcidb_validate(&f);
        assert!(!ok, "kcidb-io accepted a broken {what}: {text}");
        assert!(text.contains("ValidationError"), "{what}: {text}");
    }
}

#[test]
fn bad_origin_and_a_run_without_kernel_are_refused() {
    let dir = scratch("kcidb-refused");
    let run = dir.join("r");
    write_run(&run, &every_verdict());
    let o = dir.join("o.json");
    let out = lab(&[
        "kcidb",
        run.to_str().unwrap(),
        "--origin",
        "Arena-Lab",
        "-o",
        o.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--origin"));
    let mut s = every_verdict();
    s.kernel = None;
    let run = dir.join("nokernel");
    write_run(&run, &s);
    let out = lab(&["kcidb", run.to_str().unwrap(), "-o", o.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no kernel"));
    assert!(!o.exists());
}

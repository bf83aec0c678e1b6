//! `lab merge`: two real shards of `scenarios/smoke` plus a small failing
//! scenario, merged, give the verdicts, JUnit test names and KCIDB ids of
//! an unsharded run of the same seed, and `lab compare`/`lab report`/`lab
//! kcidb` read the merged run as any run. Then what must be refused (no VM:
//! shard runs written through the library's types).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arena_images::kernel::{Kernel, KernelOrigin};
use arena_runner::judge::verdict::{Judgement, Verdict};
use arena_runner::record::results::{ScenarioSummary, Summary};
use arena_runner::record::shards::PlannedScenario;
use common::*;

const FAILS: &str = "name: merge-expect-fail
description: >
  Fails on purpose (lab merge's test): a touch of a page of an arena without
  segv_on_fault allocates it, so the expected SIGSEGV never comes.
tags: [page_fault]
vm: { vcpus: 1, memory_mib: 256 }
timeout_s: 30
steps:
  - arena: { id: a, pages: 4 }
  - mmap: { arena: a }
  - touch: { arena: a, page: 1, op: write, expect: { signal: SIGSEGV } }
";

/// The one run folder under `results`.
fn only_run(results: &Path) -> PathBuf {
    results.join("latest").canonicalize().unwrap()
}

fn verdicts(s: &serde_json::Value) -> BTreeMap<String, String> {
    s["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `classname/name` of every JUnit testcase, sorted.
fn junit_names(run: &Path) -> Vec<String> {
    let xml = std::fs::read_to_string(run.join("junit.xml")).unwrap();
    let re = regex::Regex::new(r#"<testcase classname="([^"]*)" name="([^"]*)""#).unwrap();
    let mut names: Vec<String> = re
        .captures_iter(&xml)
        .map(|c| format!("{}/{}", &c[1], &c[2]))
        .collect();
    names.sort();
    names
}

#[test]
fn two_real_shards_merge_into_the_unsharded_run() {
    let dir = scratch("merge");
    std::fs::create_dir_all(dir.join("extra")).unwrap();
    let extra = scenario(&dir.join("extra"), "merge-expect-fail", FAILS);
    let extra = extra.to_str().unwrap();
    let mut runs = Vec::new();
    // Round-robin over the sorted names: shard 1 runs the two smoke
    // scenarios (they pass), shard 2 the failing one.
    for (name, shard, code) in [
        ("s1", Some("1/2"), 0),
        ("s2", Some("2/2"), 1),
        ("whole", None, 1),
    ] {
        let results = dir.join(name);
        let mut args = vec!["--seed", "7"];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        args.extend(["scenarios/smoke", extra]);
        let out = lab_run(&results, &args);
        assert_eq!(out.status.code(), Some(code), "{name}");
        runs.push(only_run(&results));
    }
    let (s1, s2, whole) = (&runs[0], &runs[1], &runs[2]);
    let shard1 = json(&s1.join("summary.json"));
    assert_eq!(shard1["shard"], "1/2");
    assert_eq!(
        shard1["shard_plan"].as_array().map(Vec::len),
        Some(3),
        "a shard records the whole plan"
    );
    assert_eq!(
        shard1["catalogue"],
        json(&whole.join("summary.json"))["catalogue"]
    );

    let root = dir.join("merged");
    let merged = root.join("20260101-000000");
    let out = lab(&[
        "merge",
        s1.to_str().unwrap(),
        s2.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));

    let m = json(&merged.join("summary.json"));
    let w = json(&whole.join("summary.json"));
    assert_eq!(verdicts(&m), verdicts(&w), "same verdicts as unsharded");
    assert_eq!(verdicts(&m)["merge-expect-fail"], "fail");
    for k in ["planned", "passed", "failed", "not_run", "seed"] {
        assert_eq!(m[k], w[k], "{k}");
    }
    assert_eq!(m["complete"], true);
    assert!(m.get("shard").is_none_or(serde_json::Value::is_null));
    assert_eq!(junit_names(&merged), junit_names(whole), "same JUnit tests");
    let parts = m["shards"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["shard"], "1/2");
    assert_eq!(
        parts[1]["scenarios"],
        serde_json::json!(["merge-expect-fail"])
    );
    let ktap = std::fs::read_to_string(merged.join("results.ktap")).unwrap();
    assert!(ktap.contains("1..3"), "{ktap}");
    for e in m["scenarios"].as_array().unwrap() {
        let d = merged.join(e["dir"].as_str().unwrap());
        assert!(d.join("console.log").is_file(), "{}", d.display());
        assert!(d.join("scenario.yaml").is_file(), "lab repro's copy");
    }
    // Read through the library's own reader too.
    let lib = Summary::read_run(&merged).unwrap();
    assert_eq!(lib.shards.as_ref().map(Vec::len), Some(2));

    // compare and report treat it as any run.
    let out = lab(&["compare", whole.to_str().unwrap(), merged.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no regression against unsharded"
    );
    let site = dir.join("site");
    let out = lab(&[
        "report",
        root.to_str().unwrap(),
        "-o",
        site.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let page = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(page.contains("merge-expect-fail") && page.contains("arena-mmap-readback"));

    // A real run as KCIDB: kcidb-io accepts it, the merged night has the
    // unsharded night's test paths, and writing it again gives the same ids
    // (a re-submission updates). Ids include the run's id, so the merged
    // night's differ from the unsharded run's.
    let field = |run: &Path, name: &str, key: &str| -> Vec<String> {
        let f = dir.join(name);
        let out = lab(&["kcidb", run.to_str().unwrap(), "-o", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0));
        let (ok, text) = kcidb_validate(&f);
        assert!(ok, "{text}");
        let mut ids: Vec<String> = json(&f)["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[key].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        field(&merged, "merged.json", "path"),
        field(whole, "whole.json", "path")
    );
    let ids = field(&merged, "merged.json", "id");
    assert_eq!(ids, field(&merged, "merged-again.json", "id"));
    assert_ne!(ids, field(whole, "whole.json", "id"));

    // The real shards, refused: one of them twice, and without its pair.
    let again = lab(&[
        "merge",
        s1.to_str().unwrap(),
        s1.to_str().unwrap(),
        "-o",
        dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("merging a shard with itself"));
    let alone = lab(&[
        "merge",
        s1.to_str().unwrap(),
        "-o",
        dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(alone.status.code(), Some(2));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(
        err.contains("merge-expect-fail") && err.contains("2/2 not given"),
        "{err}"
    );
    assert!(!dir.join("x").exists());
}

// ---- refusals, without VMs ----

fn kernel(sha: char) -> Kernel {
    Kernel {
        origin: KernelOrigin::User {
            path: "/k/bzImage".into(),
        },
        boot_image: "/k/bzImage".into(),
        elf_without_pvh: false,
        bzimage: None,
        vmlinux: None,
        modules: None,
        release: format!("6.12.0-{sha}"),
        version: "Linux version 6.12.0".into(),
        sha256: sha.to_string().repeat(64),
    }
}

/// What a shard run records.
struct Shard<'a> {
    shard: &'a str,
    ran: &'a [&'a str],
    plan: &'a [&'a str],
    kernel: char,
    catalogue: char,
    seed: u64,
}

const PLAN: &[&str] = &["a", "b", "c", "d"];

impl Shard<'_> {
    fn of(shard: &'static str, ran: &'static [&'static str]) -> Shard<'static> {
        Shard {
            shard,
            ran,
            plan: PLAN,
            kernel: 'k',
            catalogue: 'c',
            seed: 7,
        }
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let file = |n: &str| PathBuf::from(format!("scenarios/t/{n}.yaml"));
        let entries = self
            .ran
            .iter()
            .map(|n| {
                let mut e = ScenarioSummary::pending(n, &file(n), &[], self.seed);
                e.judgement = Judgement::not_run("");
                e.judgement.verdict = Verdict::Pass;
                e.judgement.reason.clear();
                e.duration_s = 1.0;
                e
            })
            .collect();
        let mut s = Summary::new(
            dir.file_name().unwrap().to_str().unwrap(),
            self.seed,
            entries,
        );
        // "": a run without --shard.
        s.shard = (!self.shard.is_empty()).then(|| self.shard.to_owned());
        s.kernel = Some(kernel(self.kernel));
        s.catalogue = Some(self.catalogue.to_string().repeat(64));
        s.shard_plan = self
            .plan
            .iter()
            .map(|n| PlannedScenario {
                name: n.to_string(),
                file: file(n),
                tags: vec!["smoke".into()],
            })
            .collect();
        s.finish(2.0);
        write_run(dir, &s);
        dir.to_owned()
    }
}

/// `lab merge RUNS... -o OUT [extra]`: (exit code, stderr).
fn merge(runs: &[&Path], out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["merge"];
    args.extend(runs.iter().map(|r| r.to_str().unwrap()));
    args.extend(["-o", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = lab(&args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn what_is_not_one_night_is_refused_with_the_reason() {
    let dir = scratch("merge-refused");
    let one = Shard::of("1/2", &["a", "c"]).write(&dir.join("one"));
    let two = Shard::of("2/2", &["b", "d"]).write(&dir.join("two"));
    let out = dir.join("merged");

    let refused = |runs: &[&Path], want: &str| {
        let (code, err) = merge(runs, &out, &[]);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(!out.exists(), "{want}: nothing written");
    };

    let w = |s: Shard, name: &str| s.write(&dir.join(name));
    let other_kernel = w(
        Shard {
            kernel: 'z',
            ..Shard::of("2/2", &["b", "d"])
        },
        "kernel",
    );
    refused(&[&one, &other_kernel], "different kernels");
    let other_cat = w(
        Shard {
            catalogue: 'e',
            ..Shard::of("2/2", &["b", "d"])
        },
        "cat",
    );
    refused(&[&one, &other_cat], "different catalogue revisions");
    let other_seed = w(
        Shard {
            seed: 8,
            ..Shard::of("2/2", &["b", "d"])
        },
        "seed",
    );
    refused(&[&one, &other_seed], "different run seeds");
    let three = w(
        Shard {
            shard: "2/3",
            ..Shard::of("2/2", &["b", "d"])
        },
        "three",
    );
    refused(&[&one, &three], "different shard counts");
    let overlap = w(Shard::of("2/2", &["b", "c", "d"]), "overlap");
    refused(&[&one, &overlap], "overlapping shards: scenario c");
    refused(&[&one, &one], "merging a shard with itself");
    hard_link_copy(&one, &dir.join("copy-of-one"));
    refused(
        &[&one, &dir.join("copy-of-one")],
        "merging a shard with itself",
    );
    let unsharded = w(
        Shard {
            shard: "",
            ..Shard::of("2/2", &["b", "d"])
        },
        "whole",
    );
    refused(
        &[&one, &unsharded],
        "field `shard`: absent: not a shard run",
    );

    // Corrupted summaries: the file and the field.
    let bad = w(Shard::of("2/2", &["b", "d"]), "bad-seed");
    let text = std::fs::read_to_string(bad.join("summary.json")).unwrap();
    std::fs::write(
        bad.join("summary.json"),
        text.replacen("\"seed\": 7,", "\"seed\": \"seven\",", 1),
    )
    .unwrap();
    refused(
        &[&one, &bad],
        &format!(
            "{}: corrupted: field `seed`",
            bad.join("summary.json").display()
        ),
    );
    let text = std::fs::read_to_string(two.join("summary.json")).unwrap();
    let bad = dir.join("bad-verdict");
    hard_link_copy(&two, &bad);
    std::fs::remove_file(bad.join("summary.json")).unwrap();
    std::fs::write(
        bad.join("summary.json"),
        text.replacen("\"verdict\": \"pass\"", "\"verdict\": \"green\"", 2),
    )
    .unwrap();
    refused(&[&one, &bad], "field `scenarios[0].verdict`");
    std::fs::write(bad.join("summary.json"), &text[..text.len() / 2]).unwrap();
    refused(&[&one, &bad], "bad-verdict/summary.json: corrupted");

    // A planned scenario no shard ran: listed; --allow-missing records it.
    let (code, err) = merge(&[&one], &out, &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("2 planned scenario(s) no given shard ran: b, d (shard(s) 2/2 not given)"),
        "{err}"
    );
    assert!(!out.exists());
    let (code, err) = merge(&[&one], &out, &["--allow-missing"]);
    assert_eq!(code, Some(0), "{err}");
    let m = Summary::read_run(&out).unwrap();
    assert_eq!(m.planned, 4);
    assert_eq!((m.passed, m.not_run), (2, 2));
    assert!(!m.complete, "a missing shard leaves the night incomplete");
    let names: Vec<_> = m.scenarios.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"], "plan order");
    let b = &m.scenarios[1];
    assert_eq!(
        (b.judgement.verdict, b.judgement.reason.as_str()),
        (Verdict::NotRun, "shard missing")
    );
    assert_eq!(b.suite, "t", "its suite from the plan");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("not run: shard missing"), "{junit}");

    // The output must be new.
    let (code, err) = merge(&[&one, &two], &out, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exists and is not empty"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
    let (code, err) = merge(&[&two, &one], &out, &[]);
    assert_eq!(code, Some(0), "{err}");
    let m = Summary::read_run(&out).unwrap();
    assert!(m.complete && m.green());
    assert_eq!(
        m.shards.as_ref().unwrap()[0].shard,
        "1/2",
        "parts in shard order"
    );
    assert!(out.join("a/console.log").is_file() && out.join("d/console.log").is_file());
}

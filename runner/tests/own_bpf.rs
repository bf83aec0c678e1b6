//! A scenario's own BPF program (`bpf_load: { source: x.bpf.c }`), from a
//! folder outside the repository: compiled by the lab against the default
//! kernel's BTF, run on Debian 6.12, kept in the run folder for `lab
//! repro`; a C error and an unknown program are invalid input (exit 2)
//! with the scenario's field and the C file's line.

mod common;

use common::*;

/// Allocates arena pages with the kfunc and answers through the context.
const GRAB: &str = r#"// A scenario's own program.
#include "arena_lab.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 16);
} arena SEC(".maps");

/* arg0 pages to allocate, arg1 added -> out0 = 0x1000 + arg1 read back
 * through the new page; returns 7. */
SEC("syscall")
int grab(struct arena_args *ctx)
{
	__u64 __arena *p = bpf_arena_alloc_pages(&arena, 0, ctx->arg[0], NUMA_NO_NODE, 0);

	if (!p)
		return 1;
	*p = 0x1000;
	ctx->out[0] = *p + ctx->arg[1];
	return 7;
}

char _license[] SEC("license") = "GPL";
"#;

fn scenario_yaml(name: &str, source: &str, program: &str) -> String {
    format!(
        "name: {name}\ndescription: a scenario's own BPF program\nsteps:\n  - bpf_load: {{ id: p, source: {source}, arena_id: a }}\n  - bpf_run: {{ object: p, program: {program}, args: [2, 5], expect_retval: 7, expect_out: [0x1005] }}\n"
    )
}

/// The default kernel in the cache, so `lab validate` compiles against
/// its BTF (without it, validation checks the source's path only).
fn default_kernel_cached() {
    assert_eq!(lab(&["kernel", "info"]).status.code(), Some(0));
}

#[test]
fn own_program_runs_and_replays_from_the_run_folder() {
    let dir = scratch("own-bpf-run");
    assert!(!dir.starts_with(root()));
    write_files(&dir, &[("grab.bpf.c", GRAB)]);
    let f = scenario(
        &dir,
        "own-grab",
        &scenario_yaml("own-grab", "grab.bpf.c", "grab"),
    );
    let results = dir.join("results");
    let out = lab_run(&results, &[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let run = results.join("latest/own-grab");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(events.contains("grab([2, 5]) = 7, out [0x1005"), "{events}");
    // The run folder keeps the source beside the scenario's copy, and
    // `lab repro` compiles that copy (the original is gone).
    assert_eq!(
        std::fs::read_to_string(run.join("grab.bpf.c")).unwrap(),
        GRAB
    );
    std::fs::remove_file(dir.join("grab.bpf.c")).unwrap();
    let again = dir.join("again");
    let out = lab(&[
        "repro",
        run.to_str().unwrap(),
        "--results",
        again.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(summary(&again)["scenarios"][0]["verdict"], "pass");
}

#[test]
fn c_error_names_the_field_and_the_c_line() {
    default_kernel_cached();
    let dir = scratch("own-bpf-c-error");
    // Line 21 of GRAB is `return 7;`: drop its semicolon.
    let bad = GRAB.replace("return 7;", "return 7");
    write_files(&dir, &[("bad.bpf.c", &bad)]);
    let f = scenario(
        &dir,
        "own-bad",
        &scenario_yaml("own-bad", "bad.bpf.c", "grab"),
    );
    for cmd in ["validate", "run"] {
        let mut args = vec![cmd];
        let results = dir.join("results");
        if cmd == "run" {
            args.extend(["--results", results.to_str().unwrap()]);
        }
        args.push(f.to_str().unwrap());
        let out = lab(&args);
        assert_eq!(out.status.code(), Some(2), "lab {cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:4:32: steps[0].bpf_load.source: bad.bpf.c:21:10: error: expected ';' after return statement",
                f.display()
            )),
            "{err}"
        );
    }
}

#[test]
fn unknown_program_of_an_own_object_is_invalid_input() {
    default_kernel_cached();
    let dir = scratch("own-bpf-program");
    write_files(&dir, &[("grab.bpf.c", GRAB)]);
    let f = scenario(
        &dir,
        "own-typo",
        &scenario_yaml("own-typo", "grab.bpf.c", "grabz"),
    );
    let out = lab(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5:36: steps[1].bpf_run.program: no syscall program `grabz` in grab.bpf.o: grab",
            f.display()
        )),
        "{err}"
    );
    // A source outside the scenario's folder, and a missing one.
    for (source, want) in [
        (
            "../grab.bpf.c",
            "must be a path relative to the scenario file",
        ),
        ("nope.bpf.c", "no file `nope.bpf.c` beside the scenario"),
    ] {
        std::fs::write(&f, scenario_yaml("own-typo", source, "grab")).unwrap();
        let out = lab(&["validate", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("steps[0].bpf_load.source: ") && err.contains(want),
            "{err}"
        );
    }
}

/// `scenarios/verifier`, each expectation flipped: a refusal expected no
/// more (so it is an unexpected refusal), and the accepted program
/// expected to be refused. Every scenario must then fail, saying why.
#[test]
fn verifier_scenarios_fail_when_flipped() {
    let dir = scratch("own-bpf-flipped");
    let src = root().join("scenarios/verifier");
    let mut flipped = Vec::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&p).unwrap();
        let text = if name.ends_with(".yaml") {
            let scenario = text.lines().find_map(|l| l.strip_prefix("name: ")).unwrap();
            let (text, why) = if text.contains("rejected: true") {
                (
                    text.replace("rejected: true", "rejected: false"),
                    "the verifier refused program",
                )
            } else {
                (
                    text.replace("expect: { log: [", "expect: { rejected: true, log: ["),
                    "expected the verifier to refuse a program, but it accepted all",
                )
            };
            flipped.push((scenario.to_owned(), why));
            text
        } else {
            text
        };
        std::fs::write(dir.join(&name), text).unwrap();
    }
    assert!(flipped.len() >= 5, "{flipped:?}");
    let results = dir.join("results");
    let out = lab_run(&results, &[dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&results);
    for (name, why) in &flipped {
        let sc = s["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name.as_str())
            .unwrap();
        assert_eq!(sc["verdict"], "fail", "{name}: {sc}");
        let reason = sc["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{name}: {reason}");
    }
}

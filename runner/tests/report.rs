//! `lab report` as a person sees it: three synthetic runs (summary.json in
//! the real schema, console logs with hostile guest text), the report opened
//! in a real headless Chromium, its DOM checked and a screenshot kept.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const SHA_A: &str = "90846a1289d0f21edd8f1226f6f0f6e8e5e72c8bf1ded444e1e38eeb7dc09f4a";

/// A scenario entry as `lab run` writes it.
fn scenario(name: &str, verdict: &str, duration: f64, reason: &str) -> serde_json::Value {
    let failing = !matches!(verdict, "pass" | "not_run");
    serde_json::json!({
        "name": name, "suite": "smoke", "file": format!("scenarios/smoke/{name}.yaml"),
        "tags": ["smoke"], "seed": 1, "run_seed": 1, "attempt": 1, "dir": name,
        "reproduce": if failing { Some(format!("lab run --seed 1 --only {name} scenarios/smoke/{name}.yaml")) } else { None },
        "vm": {"vcpus": 2, "memory_mib": 512},
        "verdict": verdict, "reason": reason, "infra": false, "steps": [], "testcases": [],
        "splats": if failing {
            serde_json::json!([{"line": 3, "kind": "bug", "title": "BUG: unable to handle page fault <arena>",
                                "text": "BUG: unable to handle page fault <arena>\nRIP: bpf_prog_1234\n---[ end trace ]---"}])
        } else { serde_json::json!([]) },
        "console_tail": if failing { Some("tail") } else { None },
        "boot_s": 1.9, "duration_s": duration, "vm_exit": "exited: exit status: 0",
        "guest": null, "retried_after": null
    })
}

/// A run folder with a full summary.json and each scenario's console.log.
fn run(root: &Path, id: &str, list: &[(&str, &str, f64)]) {
    let dir = root.join(id);
    let scenarios: Vec<_> = list
        .iter()
        .map(|(n, v, d)| {
            let reason = if *v == "pass" {
                ""
            } else {
                "step 1 touch: SIGSEGV at arena+0x1000\nmore detail"
            };
            std::fs::create_dir_all(dir.join(n)).unwrap();
            let mut console: String = (0..100)
                .map(|i| format!("[ {i}.000] boot line {i}\n"))
                .collect();
            console.push_str("EXCERPT-MARK <script>alert('guest')</script> \x1b[31m&amp;\n");
            std::fs::write(dir.join(n).join("console.log"), console).unwrap();
            scenario(n, v, *d, reason)
        })
        .collect();
    let count = |v: &str| list.iter().filter(|s| s.1 == v).count();
    let s = serde_json::json!({
        "schema": 1, "run_id": id, "started": "2026-11-20T00:00:00Z", "complete": true,
        "aborted": null, "interrupted": false, "shard": null,
        "kernel": {"origin": {"kind": "debian", "package": "linux-image-6.12.117+deb12-amd64", "version": "6.12.117-1~deb12u1"},
                   "boot_image": "/k/vmlinux", "bzimage": null, "vmlinux": "/k/vmlinux", "modules": null,
                   "release": "6.12.117+deb12-amd64", "version": "Linux version 6.12.117+deb12-amd64", "sha256": SHA_A},
        "backend": "qemu", "accelerator": "tcg", "backend_reason": "test", "seed": 1,
        "planned": list.len(), "passed": count("pass"), "failed": count("fail"), "errors": count("error"),
        "timeouts": count("timeout"), "not_run": count("not_run"),
        "wall_s": list.iter().map(|s| s.2).sum::<f64>(), "scenarios": scenarios, "per_scenario": []
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&s).unwrap(),
    )
    .unwrap();
}

/// Debian's `chromium` (installed by .ci/install-deps); absent is a failure.
fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(c).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("chromium not found: this test needs Debian's `chromium` package (.ci/install-deps installs it)");
}

/// Run headless Chromium on `url` with `extra` arguments and a fresh profile.
fn headless(scratch: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempdir(scratch, "profile");
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {extra:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tempdir(scratch: &Path, name: &str) -> PathBuf {
    let d = scratch.join(format!(
        "{name}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn report_opens_in_chromium_with_failures_first() {
    let dir = scratch("report-chromium");
    let results = dir.join("results");
    run(
        &results,
        "20261120-000000",
        &[
            ("arena-a", "pass", 2.0),
            ("arena-flip", "pass", 3.0),
            ("arena-z", "pass", 1.0),
        ],
    );
    run(
        &results,
        "20261121-000000",
        &[
            ("arena-a", "pass", 2.2),
            ("arena-flip", "fail", 5.0),
            ("arena-z", "pass", 1.1),
        ],
    );
    run(
        &results,
        "20261122-000000",
        &[
            ("arena-a", "pass", 2.1),
            ("arena-z", "pass", 1.2),
            ("arena-flip", "fail", 6.0),
        ],
    );
    let site = dir.join("site");
    let out = lab(&[
        "report",
        results.to_str().unwrap(),
        "-o",
        site.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let index = site.join("index.html");
    assert!(index.is_file());
    let url = format!("file://{}", index.canonicalize().unwrap().display());

    let dom = String::from_utf8(headless(&dir, &url, &["--dump-dom"]).stdout).unwrap();
    assert!(dom.contains("arena lab report"), "{dom}");
    // The verdict table's first row is the failing scenario, though it is
    // last in plan order.
    let table = &dom[dom.find("id=\"verdicts\"").expect("verdict table")..];
    let first_row = &table[table.find("<tr class=").unwrap()..];
    assert!(
        first_row.starts_with("<tr class=\"fail\" data-scenario=\"arena-flip\""),
        "{first_row:.300}"
    );
    // Its console excerpt sits inside a <details>, escaped: the guest's
    // <script> is text, not an element.
    let details = &first_row[first_row.find("<details").expect("details")..];
    let details = &details[..details.find("</details>").unwrap()];
    assert!(details.contains("EXCERPT-MARK &lt;script&gt;"), "{details}");
    assert!(details.contains("boot line 99"), "{details}");
    assert!(
        details.contains("BUG: unable to handle page fault &lt;arena&gt;"),
        "{details}"
    );
    assert!(!dom.contains("<script>alert"), "guest text became markup");
    // History: timeline, flaky marker (pass and fail on the same kernel), trend plot.
    assert!(dom.contains("id=\"timeline-table\""));
    let flip_row = &dom[dom
        .find("<tr data-scenario=\"arena-flip\"")
        .expect("timeline row")..];
    assert!(
        flip_row[..flip_row.find("</tr>").unwrap()].contains("flaky"),
        "{flip_row:.400}"
    );
    let trends = &dom[dom.find("id=\"trends\"").expect("trends")..];
    assert!(trends.contains("<svg"), "no inline SVG plot");
    assert!(trends.contains("Run wall time"));
    assert!(site.join("trend-scenarios.svg").is_file());

    // What a person sees: a screenshot, kept as an artifact.
    let artifacts = root().join("target/report-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    headless(
        &dir,
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    eprintln!("screenshot: {} ({size} bytes)", png.display());
    assert!(
        size > 10 * 1024,
        "screenshot {} is {size} bytes",
        png.display()
    );
}

#[test]
fn report_of_an_empty_root_is_bad_input() {
    let dir = scratch("report-empty");
    let out = lab(&[
        "report",
        dir.to_str().unwrap(),
        "-o",
        dir.join("site").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

//! `lab report` as a person sees it: a two-kernel root as `lab run --kernel
//! A --kernel B` writes it (three nights of 6.12, two of 7.2; summary.json
//! in the real schema, console logs with hostile guest text), the report
//! opened in a real headless Chromium, its DOM checked and a screenshot
//! kept. `lab compare --history` on the same root compares each kernel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const SHA_A: &str = "90846a1289d0f21edd8f1226f6f0f6e8e5e72c8bf1ded444e1e38eeb7dc09f4a";
const SHA_B: &str = "5d1c0c4e2b7a9f3e8d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706";

/// The kernel a run booted: release and sha256.
type Kernel = (&'static str, &'static str);
const K612: Kernel = ("6.12.117+deb12-amd64", SHA_A);
const K72: Kernel = ("7.2.13+deb14-amd64", SHA_B);

/// A scenario entry as `lab run` writes it.
fn scenario(
    name: &str,
    verdict: &str,
    duration: f64,
    reason: &str,
    load: f64,
) -> serde_json::Value {
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
        "guest": null, "retried_after": null,
        "host_load": {"loadavg_start": [load, load, load], "loadavg_end": [load, load, load], "steal_pct": 0.0}
    })
}

/// A run folder with a full summary.json and each scenario's console.log,
/// on kernel `k` with host load `load`.
fn run(root: &Path, id: &str, k: Kernel, load: f64, list: &[(&str, &str, f64)]) {
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
            scenario(n, v, *d, reason, load)
        })
        .collect();
    let count = |v: &str| list.iter().filter(|s| s.1 == v).count();
    let s = serde_json::json!({
        "schema": 1, "run_id": id, "started": "2026-11-20T00:00:00Z", "complete": true,
        "aborted": null, "interrupted": false, "shard": null,
        "kernel": {"origin": {"kind": "debian", "package": format!("linux-image-{}", k.0), "version": "1"},
                   "boot_image": "/k/vmlinux", "bzimage": null, "vmlinux": "/k/vmlinux", "modules": null,
                   "release": k.0, "version": format!("Linux version {}", k.0), "sha256": k.1},
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
fn report_opens_in_chromium_with_kernels_apart_and_failures_first() {
    let dir = scratch("report-chromium");
    let results = dir.join("results");
    let k612 = results.join("debian-6.12");
    let k72 = results.join("debian-7.2");
    run(
        &k612,
        "20261120-000000",
        K612,
        1.0,
        &[
            ("arena-a", "pass", 2.0),
            ("arena-flip", "pass", 3.0),
            ("arena-z", "pass", 1.0),
        ],
    );
    run(
        &k612,
        "20261121-000000",
        K612,
        1.0,
        &[
            ("arena-a", "pass", 2.2),
            ("arena-flip", "fail", 5.0),
            ("arena-z", "pass", 1.1),
        ],
    );
    run(
        &k612,
        "20261122-000000",
        K612,
        1.0,
        &[
            ("arena-a", "pass", 2.1),
            ("arena-z", "pass", 1.2),
            ("arena-flip", "fail", 6.0),
        ],
    );
    // 7.2: a real regression, a real slowdown, and a sub-second scenario
    // slowed by host load alone (0.60 → 2.07 s at 5× the load: not news).
    run(
        &k72,
        "20261121-000000",
        K72,
        1.0,
        &[
            ("arena-a", "pass", 2.0),
            ("arena-slow", "pass", 10.0),
            ("segv-on-fault-unallocated", "pass", 0.60),
        ],
    );
    run(
        &k72,
        "20261122-000000",
        K72,
        5.0,
        &[
            ("arena-a", "fail", 2.0),
            ("arena-slow", "pass", 120.0),
            ("segv-on-fault-unallocated", "pass", 2.07),
        ],
    );
    std::fs::write(results.join("kernels.json"), r#"{"kernels": []}"#).unwrap();

    // `lab compare --history` compares each kernel's last two runs and
    // exits with the worst (7.2 regressed).
    let hist = lab(&["compare", "--history", results.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&hist.stdout);
    assert_eq!(hist.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("debian-6.12") && stdout.contains("debian-7.2"),
        "{stdout}"
    );
    assert!(stdout.contains("| arena-a | pass | fail |"), "{stdout}");
    assert!(stdout.contains("| arena-slow |"), "{stdout}");
    assert!(
        !stdout.contains("| segv-on-fault-unallocated |"),
        "{stdout}"
    );
    assert!(k72.join("20261122-000000/compare.md").is_file());
    assert!(k612.join("20261122-000000/compare.md").is_file());

    let site = dir.join("site");
    let out = lab(&[
        "report",
        results.to_str().unwrap(),
        "-o",
        site.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = site.join("index.html");
    assert!(index.is_file());
    let url = format!("file://{}", index.canonicalize().unwrap().display());

    let dom = String::from_utf8(headless(&dir, &url, &["--dump-dom"]).stdout).unwrap();
    assert!(dom.contains("arena lab report"), "{dom}");
    assert!(dom.contains("5 run(s) of 2 kernel(s)"), "{dom}");
    // The page opens with the verdict, one per kernel, before any kernel's
    // details.
    let verdict = dom.find("id=\"verdict\"").expect("verdict section");
    let first_kernel = dom
        .find("<section class=\"kernel\"")
        .expect("kernel section");
    assert!(verdict < first_kernel);
    let verdicts = &dom[verdict..first_kernel];
    let v612 = &verdicts[verdicts
        .find("data-kernel=\"6.12.117+deb12-amd64 (90846a1289d0)\"")
        .expect("6.12 verdict")..];
    let v72 = &verdicts[verdicts
        .find("data-kernel=\"7.2.13+deb14-amd64 (5d1c0c4e2b7a)\"")
        .expect("7.2 verdict")..];
    // 6.12: three nights, arena-flip failed twice of three: still failing,
    // not new; its pass rate is shown.
    let v612 = &v612[..v612.find("</div>").unwrap()];
    assert!(v612.contains("no news"), "{v612}");
    assert!(v612.contains("Over its last 3 runs"), "{v612}");
    assert!(v612.contains("arena-flip (33%)"), "{v612}");
    // 7.2: the regression and the real slowdown, not the loaded blip.
    let v72 = &v72[..v72.find("</div>").unwrap()];
    assert!(v72.contains("NEWS"), "{v72}");
    assert!(v72.contains("data-scenario=\"arena-a\""), "{v72}");
    assert!(v72.contains("regression"), "{v72}");
    assert!(v72.contains("slower +"), "{v72}");
    assert!(!v72.contains("segv-on-fault-unallocated"), "{v72}");

    // One section, timeline and trend per kernel, labelled.
    assert_eq!(dom.matches("<section class=\"kernel\"").count(), 2);
    assert_eq!(dom.matches("class=\"timeline\"").count(), 2);
    let s612 = &dom[dom
        .find("<section class=\"kernel\" id=\"kernel-0\" data-kernel=\"6.12")
        .or_else(|| dom.find("data-kernel=\"6.12.117+deb12-amd64 (90846a1289d0)\"><h2>"))
        .expect("6.12 section")..];
    let s612 = &s612[..s612.find("</section>").unwrap()];
    assert!(
        !s612.contains("segv-on-fault-unallocated"),
        "7.2 mixed into 6.12"
    );
    assert!(s612.contains("Run wall time, 6.12.117+deb12-amd64"));
    // The 6.12 verdict table's first row is the failing scenario, though
    // it is last in plan order.
    let table = &s612[s612.find("class=\"verdicts\"").expect("verdict table")..];
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
    // Timeline with the flaky marker (pass and fail on the same kernel).
    let flip_row = &s612[s612
        .find("<tr data-scenario=\"arena-flip\"")
        .expect("timeline row")..];
    assert!(
        flip_row[..flip_row.find("</tr>").unwrap()].contains("flaky"),
        "{flip_row:.400}"
    );
    assert!(dom.contains("Run wall time, 7.2.13+deb14-amd64"));
    assert_eq!(dom.matches("<svg").count(), 4, "two trend plots per kernel");
    let svgs: Vec<_> = std::fs::read_dir(&site)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".svg"))
        .collect();
    assert_eq!(svgs.len(), 4);

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
            "--window-size=1280,3800",
        ],
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    eprintln!("screenshot: {} ({size} bytes)", png.display());
    assert!(
        size > 10 * 1024,
        "screenshot {} is {size} bytes",
        png.display()
    );
    // Not one flat colour: a PNG of a blank page compresses to almost
    // nothing, a page of tables and plots does not.
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    let distinct: std::collections::BTreeSet<u8> = bytes.iter().copied().collect();
    assert!(distinct.len() > 200, "screenshot looks blank");
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
    // A root whose children hold nothing names the folders it looked in.
    std::fs::create_dir_all(dir.join("debian-6.12/empty-run")).unwrap();
    let out = lab(&[
        "report",
        dir.to_str().unwrap(),
        "-o",
        dir.join("site").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("looked in") && err.contains("debian-6.12"),
        "{err}"
    );
    let out = lab(&["compare", "--history", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("looked in") && err.contains("debian-6.12"),
        "{err}"
    );
}

//! Debian's 7.2 (from sid, through the lab's own apt state) as a kernel:
//! fetched with `lab kernel fetch --series 7.2`, then the smoke scenarios
//! under QEMU/TCG with `--kernel debian:7.2`. The first run downloads about
//! 125 MB (measured: 23 s cold, 3 s warm for the fetch); later runs use the cache.

mod common;

use common::*;

#[test]
fn fetch_7_2_then_smoke_passes_on_it() {
    let out = lab(&["kernel", "fetch", "--series", "7.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let k: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(k["release"].as_str().unwrap().starts_with("7.2."), "{k}");
    assert_eq!(k["origin"]["suite"], "sid");
    assert!(k["origin"]["package"]
        .as_str()
        .unwrap()
        .starts_with("linux-binary-7.2."));
    assert!(k["origin"]["other_packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().starts_with("linux-modules-7.2.")));
    assert!(k["origin"]["version"].as_str().unwrap().starts_with("7.2."));

    let results = scratch("debian-7.2");
    let out = lab_run(&results, &["--kernel", "debian:7.2", "scenarios/smoke"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&results);
    assert_eq!(s["complete"], true);
    assert_eq!(s["kernel"]["release"], k["release"]);
    assert_eq!(s["kernel"]["origin"]["package"], k["origin"]["package"]);
}

#[test]
fn unknown_debian_channel_is_invalid_input() {
    let results = scratch("debian-bad");
    let out = lab_run(&results, &["--kernel", "debian:latest", "scenarios/smoke"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown Debian kernel channel"), "{stderr}");
}

//! docs/nightly.md's recipe, run locally on the smoke scenarios: two
//! "nights" into one results root (one shard of one), then the comparison
//! with yesterday and the published report, with the commands the doc and
//! docs/nightly-github-actions.yml use.

mod common;

use common::*;

#[test]
fn two_nights_compare_and_report() {
    let dir = scratch("nightly");
    let root = dir.join("results");
    let root_s = root.to_str().unwrap();
    for night in 1..=2 {
        let out = lab(&[
            "run",
            "--shard",
            "1/1",
            "--results",
            root_s,
            "scenarios/smoke",
        ]);
        assert_eq!(out.status.code(), Some(0), "night {night}");
    }
    let runs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("summary.json").is_file() && !p.ends_with("latest"))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");

    let out = lab(&["compare", "--history", root_s]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no regression between two green nights"
    );
    let newest = root.join("latest").canonicalize().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.join("compare.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["regressions"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
    assert_eq!(json["new"].as_str(), newest.file_name().unwrap().to_str());
    assert!(json["base"].is_string());

    let site = dir.join("site");
    let out = lab(&["report", root_s, "-o", site.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let page = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(
        page.contains("arena-mmap-readback"),
        "smoke scenario in the report"
    );
    assert!(page.contains("<svg"), "trend plot inlined");
    assert_eq!(
        page.matches("<th title=").count(),
        2,
        "two runs in the timeline"
    );
}

//! The guide's links hold: every relative link in the README, `docs/` and
//! the other READMEs points at a file that exists, and every `#anchor` into
//! a Markdown file names one of its headings. No network: external links
//! are left alone.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Markdown files people read: the README, docs/ (recursively) and
/// every crate's or folder's README.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut out = vec![root.join("README.md")];
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    walk(&root.join("docs"), &mut out);
    for dir in ["scenarios", "vmm", "fuzz", "results"] {
        let p = root.join(dir).join("README.md");
        if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &str) -> Vec<String> {
    let mut in_code = false;
    page.lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect()
}

/// `(text, target)` of the inline links `[text](target)` outside code.
fn links(page: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut in_code = false;
    let mut out = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Inline code spans are not links.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for m in re.captures_iter(&plain) {
            out.push(m[1].to_owned());
        }
    }
    out
}

fn broken_links(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut bad = Vec::new();
    for target in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, frag) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target.as_str(), None),
        };
        let path = if file.is_empty() {
            page.to_owned()
        } else {
            page.parent().unwrap().join(file)
        };
        if !path.exists() {
            bad.push(format!("{}: {target}: no such file", page.display()));
            continue;
        }
        if let Some(a) = frag {
            if path.extension().is_some_and(|x| x == "md") {
                let headings = anchors(&std::fs::read_to_string(&path).unwrap());
                if !headings.iter().any(|h| h == a) {
                    bad.push(format!("{}: {target}: no heading #{a}", page.display()));
                }
            }
        }
    }
    bad
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let pages = pages();
    assert!(pages.len() >= 8, "{pages:?}");
    let bad: Vec<String> = pages.iter().flat_map(|p| broken_links(p)).collect();
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_a_broken_link_and_a_wrong_anchor() {
    let dir = std::env::temp_dir().join(format!("arena-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.md"), "# Seeds and replay\n").unwrap();
    let a = dir.join("a.md");
    std::fs::write(
        &a,
        "[ok](b.md#seeds-and-replay) [gone](c.md) [anchor](b.md#nope) `[code](x.md)`\n```\n[block](y.md)\n```\n[web](https://example.org/x)\n",
    )
    .unwrap();
    let bad = broken_links(&a);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].ends_with("c.md: no such file") && bad[1].ends_with("no heading #nope"));
    std::fs::remove_dir_all(&dir).unwrap();
}

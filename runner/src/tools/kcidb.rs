//! `lab kcidb RUN -o FILE.json`: a run as KCIDB I/O data
//! ([`crate::record::kcidb`]), for KernelCI's `kcidb-submit`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::record::kcidb::{self, GitInfo, Source};
use crate::record::results::Summary;
use crate::record::shards;
use crate::{exit, LabError};

/// `lab kcidb`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct KcidbArgs {
    /// The run folder (`results/<run-id>`, or a `lab merge` output).
    pub run: PathBuf,
    /// KCIDB origin: the name of the submitting CI system (lower-case
    /// letters, digits, `_`); every id starts with it.
    #[arg(long, default_value = kcidb::DEFAULT_ORIGIN)]
    pub origin: String,
    /// Where the JSON goes.
    #[arg(short, long)]
    pub output: PathBuf,
    /// URL the run folder is published at (`https://…/<run-id>`): each
    /// test's `log_url` becomes `<it>/<scenario dir>/console.log`.
    #[arg(long, value_name = "URL")]
    pub log_url_base: Option<String>,
}

/// `lab kcidb`: exit 0 when written, 2 on input it cannot use.
pub fn kcidb(args: &KcidbArgs) -> Result<u8, LabError> {
    let summary = Summary::read_run(&args.run).map_err(|e| LabError::BadArgs(e.to_string()))?;
    if let Some(u) = &args.log_url_base {
        if !u.starts_with("https://") && !u.starts_with("http://") {
            return Err(LabError::BadArgs(format!(
                "--log-url-base {u:?}: expected an http(s):// URL"
            )));
        }
    }
    let git = match summary.kernel.as_ref().map(|k| &k.origin) {
        Some(arena_images::kernel::KernelOrigin::User { path }) => tree_git(path),
        _ => None,
    };
    let src = Source {
        origin: args.origin.clone(),
        catalogue: summary
            .catalogue
            .clone()
            .unwrap_or_else(|| copies_catalogue(&args.run, &summary)),
        git,
        log_url_base: args.log_url_base.clone(),
    };
    let data = kcidb::report(&summary, &src).map_err(|e| LabError::BadArgs(e.to_string()))?;
    let text = serde_json::to_vec_pretty(&data).expect("serialisable");
    arena_images::write_atomic(&args.output, &text).map_err(crate::infra)?;
    eprintln!(
        "lab: {} test(s) of run {} as KCIDB v{}.{} in {}",
        data["tests"].as_array().map_or(0, Vec::len),
        summary.run_id,
        kcidb::MAJOR,
        kcidb::MINOR,
        args.output.display()
    );
    Ok(exit::PASS)
}

/// A run written before summaries recorded `catalogue`: the same digest
/// over its scenario copies (`<dir>/scenario.yaml`, first attempt of each).
fn copies_catalogue(run: &Path, summary: &Summary) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for s in &summary.scenarios {
        seen.entry(s.name.as_str())
            .or_insert_with(|| run.join(&s.dir).join(crate::plan::attempts::SCENARIO_COPY));
    }
    shards::catalogue(seen.iter().map(|(n, p)| (*n, p.as_path())))
}

/// The git state of the kernel tree a user's kernel file lies in, when
/// it lies in one: the repository's top must be a kernel tree (`Kconfig`
/// and `Makefile`), so a kernel kept in some other repository gives none.
fn tree_git(kernel_file: &Path) -> Option<GitInfo> {
    let dir = kernel_file.parent()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if !top.join("Kconfig").is_file() || !top.join("Makefile").is_file() {
        return None;
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(GitInfo {
        commit: commit.to_ascii_lowercase(),
        describe: git(&["describe", "--tags", "--always"]),
        branch: git(&["symbolic-ref", "--short", "-q", "HEAD"]),
        url: git(&["config", "--get", "remote.origin.url"]).filter(|u| u.starts_with("https://")),
        dirty: git(&["status", "--porcelain", "--untracked-files=no"]).is_some(),
    })
}

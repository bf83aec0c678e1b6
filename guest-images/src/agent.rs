//! The guest agent binary: built from `guest-images/agent` as a static
//! executable (glibc static-pie) in its own target directory, so a `cargo`
//! invocation around `lab` never waits on the same build lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{run_tool, Result};

/// Target triple the agent is built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Overrides the agent binary (a prebuilt static executable).
pub const AGENT_ENV: &str = "ARENA_LAB_AGENT";

/// The Cargo workspace this tool was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("guest-images lives in the workspace")
        .to_owned()
}

/// Where the static agent lands.
pub fn agent_path() -> PathBuf {
    workspace_root()
        .join("target/guest")
        .join(TARGET)
        .join("release/arena-agent")
}

/// Newest modification time of the files the agent is built from (its crate,
/// manifest included, and the protocol crate).
fn newest_source(root: &Path) -> SystemTime {
    fn walk(dir: &Path, newest: &mut SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, newest);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(m);
            }
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    for d in ["guest-images/agent", "protocol"] {
        walk(&root.join(d), &mut newest);
    }
    newest
}

/// The agent binary, built first if it is missing or older than its
/// sources; `on_build` runs just before a (slow) build starts.
pub fn ensure_built(on_build: impl FnOnce()) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV) {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let bin = agent_path();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b >= newest_source(&root)) {
        return Ok(bin);
    }
    on_build();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_tool(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "arena-agent",
                "--target",
                TARGET,
            ])
            .env("CARGO_TARGET_DIR", root.join("target/guest"))
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .current_dir(&root),
    )?;
    Ok(bin)
}

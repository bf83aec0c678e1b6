//! The scenario's memory cgroup: the worker moves itself into
//! `/sys/fs/cgroup/scenario` (cgroup v2, memory controller on) before its
//! first step, so everything it and its children allocate, arena pages
//! included (charged to the map creator's cgroup), shows in one
//! `memory.current`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where cgroup v2 is mounted in the guest.
const ROOT: &str = "/sys/fs/cgroup";
/// The scenario's cgroup below it.
const SCENARIO: &str = "scenario";

static JOINED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Move this process into the scenario's cgroup (once). A kernel without
/// cgroup v2 or the memory controller is not an error here: `memory` steps
/// then fail to evaluate, with this reason.
pub fn join() {
    JOINED
        .get_or_init(|| try_join().map_err(|e| format!("no memory cgroup for the scenario: {e}")));
}

/// Whether this process is in a scenario cgroup with the memory
/// controller on (joining it first, if not yet): `CONFIG_MEMCG`.
pub fn has_memory_controller() -> bool {
    join();
    matches!(JOINED.get(), Some(Ok(_)))
}

/// `memory.current` of the scenario's cgroup, in bytes.
pub fn memory_current() -> Result<u64, String> {
    let dir = JOINED
        .get()
        .cloned()
        .unwrap_or_else(|| Err("the worker never joined its cgroup".into()))?;
    let file = dir.join("memory.current");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a number: {:?}", file.display(), text.trim()))
}

fn try_join() -> Result<PathBuf, String> {
    let root = Path::new(ROOT);
    if !root.join("cgroup.controllers").exists() {
        std::fs::create_dir_all(root).map_err(|e| format!("{ROOT}: {e}"))?;
        mount_cgroup2(root)?;
    }
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|e| format!("{ROOT}/cgroup.controllers: {e}"))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the kernel's cgroup v2 has no memory controller (controllers: {}); needs CONFIG_MEMCG",
            controllers.trim()
        ));
    }
    // Idempotent: every restored or booted VM starts from the same state.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
    let dir = root.join(SCENARIO);
    if !dir.is_dir() {
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("{}/cgroup.procs: {e}", dir.display()))?;
    Ok(dir)
}

fn mount_cgroup2(at: &Path) -> Result<(), String> {
    let target =
        std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting cgroup2 on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

//! PID 1 duties: file systems, console log level, modules, facts for the
//! hello message, power-off.

use std::ffi::CString;
use std::time::{Duration, Instant};

use arena_protocol::Hello;

/// Kernel module list written by the image builder.
const MODULE_LIST: &str = "/etc/arena/modules";
/// `finit_module` flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Log a line on the kernel console (captured as `console.log`).
pub fn log(msg: &str) {
    eprintln!("arena-agent: {msg}");
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, tgt, fs) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; null data is allowed.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            log(&format!("mount {fstype} on {target}: {err}"));
        }
    }
}

/// Mount proc, sysfs, devtmpfs, bpffs, debugfs and tracefs.
pub fn mount_filesystems() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("bpf", "/sys/fs/bpf", "bpf");
    mount("debugfs", "/sys/kernel/debug", "debugfs");
    mount("tracefs", "/sys/kernel/tracing", "tracefs");
    mount("tmpfs", "/tmp", "tmpfs");
}

/// Boot runs `quiet`; once up, let every warning reach the console so the
/// host's splat detector sees it.
pub fn set_console_loglevel(level: u32) {
    let _ = std::fs::write("/proc/sys/kernel/printk", format!("{level}"));
}

/// Load the modules of [`MODULE_LIST`] in order.
pub fn load_modules() {
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return;
    };
    for path in list.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(file) = std::fs::File::open(path) else {
            log(&format!("module {path} missing from the image"));
            continue;
        };
        let flags = if path.ends_with(".ko") {
            0
        } else {
            MODULE_INIT_COMPRESSED_FILE
        };
        let params = CString::default();
        use std::os::fd::AsRawFd;
        // SAFETY: finit_module with a valid fd and an empty parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                params.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                log(&format!("loading {path}: {err}"));
            }
        }
    }
}

/// Wait for a device node to appear (devtmpfs creates it when the driver binds).
pub fn wait_for(path: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::path::Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Facts about the guest for the hello message.
pub fn hello() -> Hello {
    let uptime_ms = read_trim("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: read_trim("/proc/sys/kernel/osrelease"),
        kernel_version: read_trim("/proc/version"),
        jit_enabled: read_trim("/proc/sys/net/core/bpf_jit_enable").parse().ok(),
        // SAFETY: sysconf has no memory-safety preconditions.
        cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32,
        uptime_ms,
    }
}

/// Power the VM off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

//! PID 1 duties: file systems, console log level, modules, facts for the
//! hello message, power-off.

use std::ffi::CString;
use std::time::Duration;

use arena_protocol::paths::MODULE_LIST;
use arena_protocol::Hello;

use crate::log::{self, log};

/// `finit_module` flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// The results channel once open, so a dying PID 1 can say why on it.
static CHANNEL: std::sync::OnceLock<&'static crate::channel::Channel> = std::sync::OnceLock::new();

/// Makes `channel` the one [`fatal`] reports on.
pub fn set_channel(channel: &'static crate::channel::Channel) {
    let _ = CHANNEL.set(channel);
}

/// PID 1 cannot go on: say why on the console (critical, so printk prints
/// it whatever the tty does), on the results channel if it is open, then
/// power off. Never returns and never exits.
pub fn fatal(msg: &str) -> ! {
    log::critical(&format!("{}{msg}", arena_protocol::console::FATAL_PREFIX));
    if let Some(c) = CHANNEL.get() {
        c.send(&arena_protocol::GuestMessage::Fatal {
            reason: msg.to_owned(),
        });
        c.drain();
    }
    power_off()
}

/// A panic anywhere in PID 1 becomes [`fatal`] (the VM powers off with the
/// reason on record) instead of the kernel's "Attempted to kill init!". In a
/// forked worker the message goes to the kernel log and the worker ends;
/// PID 1 reports how it ended.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("panic: {info}");
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == 1 {
            fatal(&msg);
        }
        log::critical(&format!("arena-agent worker: {msg}"));
    }));
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

/// Let every warning reach the console, where the host's splat detector
/// reads it. The lab's command line already logs the boot in full (no
/// `quiet`); this also covers a kernel built with a lower default console
/// level or booted with `quiet`/`loglevel=` by the user.
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

/// After a restore from a snapshot: every restore starts from the same
/// kernel RNG state and wall clock. Mix the host's `entropy` into the pool
/// (a write to `/dev/urandom` stirs it without crediting entropy) and set
/// the wall clock; failures are logged, not fatal (the scenario's own seed
/// still makes its random choices differ).
pub fn resume(entropy: &[u64; 4], unix_time_ns: u64) {
    let bytes: Vec<u8> = entropy.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Err(e) = std::fs::write("/dev/urandom", &bytes) {
        log(&format!("resume: cannot stir /dev/urandom: {e}"));
    }
    let now = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `now` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } != 0 {
        log(&format!(
            "resume: cannot set the wall clock: {}",
            std::io::Error::last_os_error()
        ));
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

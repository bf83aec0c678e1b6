//! Thin, checked wrappers over the system calls the agent uses.

use std::io;
use std::time::{Duration, Instant};

/// `bpf(2)` command numbers.
const BPF_MAP_CREATE: libc::c_long = 0;

/// Map flags (include/uapi/linux/bpf.h).
pub const BPF_F_NUMA_NODE: u32 = 1 << 2;
/// Read-only for programs; not accepted by arena.
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;
/// Memory-mappable map.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// User faults on unallocated arena pages raise SIGSEGV.
pub const BPF_F_SEGV_ON_FAULT: u32 = 1 << 17;
/// No user address conversion in programs.
pub const BPF_F_NO_USER_CONV: u32 = 1 << 18;
/// `BPF_MAP_TYPE_ARENA`.
pub const BPF_MAP_TYPE_ARENA: u32 = 33;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
    value_type_btf_obj_fd: i32,
    map_token_fd: i32,
}

/// Parameters of `BPF_MAP_CREATE`.
pub struct MapCreate<'a> {
    /// Map type.
    pub map_type: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Max entries (pages for an arena).
    pub max_entries: u32,
    /// Flags.
    pub flags: u32,
    /// NUMA node (with `BPF_F_NUMA_NODE`).
    pub numa_node: u32,
    /// Extra (an arena's user address).
    pub map_extra: u64,
    /// Name.
    pub name: &'a str,
}

/// Create a map; returns the fd or the errno.
pub fn map_create(p: &MapCreate) -> Result<i32, i32> {
    let mut attr = MapCreateAttr {
        map_type: p.map_type,
        key_size: p.key_size,
        value_size: p.value_size,
        max_entries: p.max_entries,
        map_flags: p.flags,
        numa_node: p.numa_node,
        map_extra: p.map_extra,
        ..Default::default()
    };
    let n = p.name.len().min(15);
    attr.map_name[..n].copy_from_slice(&p.name.as_bytes()[..n]);
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>(),
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd as i32)
    }
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A pipe as (read, write) fds, close-on-exec.
pub fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Close a descriptor, ignoring errors.
pub fn close(fd: i32) {
    // SAFETY: callers pass raw pipe ends from `pipe` that no OwnedFd or File
    // owns, so no owner can use or close `fd` after this.
    unsafe { libc::close(fd) };
}

/// Reap children (PID 1 inherits orphans) until `pid` ends or `deadline`
/// passes; returns `pid`'s wait status.
pub fn reap_children_until(pid: i32, deadline: Instant) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r > 0 {
            continue;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wait for one specific child until `deadline`; kills it when time is up.
/// Returns the wait status, or `None` on timeout.
pub fn wait_child(pid: i32, deadline: Instant) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r < 0 || Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

/// Describe a wait status: `exit 0`, `killed by SIGSEGV`.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        format!("killed by {} ({s})", signal_name(s))
    } else {
        format!("status {status:#x}")
    }
}

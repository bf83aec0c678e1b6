//! A VM lifetime must not leak file descriptors or threads, and several VMs
//! with several vCPUs can run one after another.

mod common;

use common::*;
use vmm::ExitReason;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn no_fd_or_thread_leak_across_vm_lifetimes() {
    if !kvm_or_skip("no_fd_or_thread_leak_across_vm_lifetimes") {
        return;
    }
    let kernel = build_pvh("hello_pvh");
    let (mut cfg, buf) = config(&kernel);
    cfg.vcpus = 3;
    // Warm up once (lazy statics, signal handler), then measure.
    let (r, _) = run(&cfg, &buf);
    assert_eq!(r.exit, ExitReason::Reset);
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    for _ in 0..5 {
        let (r, _) = run(&cfg, &buf);
        assert_eq!(r.exit, ExitReason::Reset);
    }
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
}

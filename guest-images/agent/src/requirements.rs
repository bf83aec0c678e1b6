//! A scenario's `requires:`: what the booted kernel must offer, checked
//! before the first step. A kernel without it skips the scenario; the
//! reason names what is missing.

use std::ffi::CString;

use arena_protocol::scenario::{KernelOption, Requirement};
use libbpf_sys as bpf;

/// `BTF_KIND_FUNC` (include/uapi/linux/btf.h).
const BTF_KIND_FUNC: u32 = 12;

/// Why the kernel cannot run a scenario needing `requires`, or `None`.
pub fn unmet(requires: &[Requirement]) -> Option<String> {
    // Read once, and only if asked: it is a few MB.
    let kallsyms = std::cell::OnceCell::new();
    let missing: Vec<String> = requires
        .iter()
        .filter(|r| !met(r, &kallsyms))
        .map(|r| r.to_string())
        .collect();
    (!missing.is_empty()).then(|| format!("this kernel lacks {}", missing.join(", ")))
}

fn met(r: &Requirement, kallsyms: &std::cell::OnceCell<String>) -> bool {
    match r {
        Requirement::Kfunc(name) => btf_has_func(name),
        Requirement::Kallsyms(name) => kallsyms_has(
            kallsyms.get_or_init(|| std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()),
            name,
        ),
        Requirement::Config(option) => has_option(*option),
    }
}

/// Whether the kernel has `option`, by what the option creates (the agent
/// mounted debugfs and cgroup2 at boot).
fn has_option(option: KernelOption) -> bool {
    let exists = |p: &str| std::path::Path::new(p).exists();
    match option {
        KernelOption::Memcg => crate::cgroup::has_memory_controller(),
        KernelOption::DebugKmemleak => exists("/sys/kernel/debug/kmemleak"),
        KernelOption::FaultInjection => {
            exists("/sys/kernel/debug/fail_page_alloc") && exists("/sys/kernel/debug/failslab")
        }
    }
}

/// Whether the kernel's BTF has a function `name` (through libbpf, which
/// reads `/sys/kernel/btf/vmlinux`). No BTF at all: not met.
fn btf_has_func(name: &str) -> bool {
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    // SAFETY: libbpf allocates the BTF or returns an error pointer/NULL,
    // which libbpf_get_error tells apart; it is freed below.
    let btf = unsafe { bpf::btf__load_vmlinux_btf() };
    // SAFETY: btf is what btf__load_vmlinux_btf returned.
    if btf.is_null() || unsafe { bpf::libbpf_get_error(btf.cast()) } != 0 {
        return false;
    }
    // SAFETY: btf is a valid BTF object; cname outlives the call.
    let id = unsafe { bpf::btf__find_by_name_kind(btf, cname.as_ptr(), BTF_KIND_FUNC) };
    // SAFETY: btf is valid and freed once.
    unsafe { bpf::btf__free(btf) };
    id > 0
}

/// Whether `/proc/kallsyms` text lists `name` (third field, any module).
fn kallsyms_has(kallsyms: &str, name: &str) -> bool {
    kallsyms
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_matches_whole_names() {
        let text = "ffffffff81000000 T arena_vm_fault\nffffffffc0000000 t range_tree_set\t[bpf]\n";
        assert!(kallsyms_has(text, "arena_vm_fault"));
        assert!(kallsyms_has(text, "range_tree_set"));
        assert!(!kallsyms_has(text, "arena_vm"));
        assert!(!kallsyms_has("", "arena_vm_fault"));
    }

    #[test]
    fn unmet_names_every_missing_requirement() {
        let r = [
            Requirement::Kallsyms("no_such_symbol_anywhere".into()),
            Requirement::Kfunc("no_such_kfunc_anywhere".into()),
        ];
        assert_eq!(
            unmet(&r).unwrap(),
            "this kernel lacks kernel symbol no_such_symbol_anywhere, kfunc no_such_kfunc_anywhere"
        );
        assert_eq!(unmet(&[]), None);
    }
}

//! Resident memory of a process, from `/proc/<pid>/status`: what the
//! benchmarks, the fuzzers and the hostile-guest tests watch to see that a
//! guest cannot make the VMM grow without bound.

/// `VmRSS` of process `pid` (this process when `None`), in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_by_pid_agree_and_are_plausible() {
        let own = rss_kib(None).unwrap();
        assert!(own > 100, "{own} KiB");
        assert!(rss_kib(Some(std::process::id())).is_some());
        assert_eq!(rss_kib(Some(u32::MAX)), None);
    }
}

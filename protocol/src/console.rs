//! What the agent prints on the serial console for the runner to find.
//!
//! The results channel (virtio console) is the typed contract. The serial
//! console is the only way out when that channel never opened (no virtio
//! driver, a broken tty), so the one line the runner looks for there is
//! defined here, once, for both ends.

/// Starts the line PID 1 prints before it powers off because it cannot go
/// on; the rest of the line is the reason.
pub const FATAL_PREFIX: &str = "arena-agent: FATAL: ";

/// The reason of the first fatal line in `console`, if any.
pub fn fatal_reason(console: &str) -> Option<&str> {
    console
        .lines()
        .find_map(|l| l.split_once(FATAL_PREFIX))
        .map(|(_, reason)| reason.trim_end_matches('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_fatal_reason_after_kernel_noise() {
        let console = "[    1.0] x\r\n[    1.1] arena-agent: FATAL: no VIRTIO_MMIO\r\nlater\n";
        assert_eq!(fatal_reason(console), Some("no VIRTIO_MMIO"));
        assert_eq!(fatal_reason("arena-agent: fine\n"), None);
    }
}

//! VMM benchmarks (start latency, port-I/O exit rate, RSS overhead).
fn main() {}

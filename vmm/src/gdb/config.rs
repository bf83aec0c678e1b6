//! The stub's configuration and errors: shared by the session and the
//! target below it, so they live apart from `gdb/mod.rs`, which only
//! declares and re-exports (no module circle).

use std::net::SocketAddr;

/// `arena-vmm` flag: stub on ADDR, the VM halted until a client resumes it.
pub const GDB_FLAG: &str = "--gdb";
/// `arena-vmm` flag: stub on ADDR once SIGUSR2 pauses the VM.
pub const GDB_ON_DEMAND_FLAG: &str = "--gdb-on-demand";

/// Where and when the stub listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdbConfig {
    /// TCP address to listen on (port 0: any free port, named on stderr).
    pub addr: SocketAddr,
    /// Hold the first instruction until a client resumes the VM (`--gdb`);
    /// otherwise wait for SIGUSR2 (`--gdb-on-demand`).
    pub wait: bool,
}

impl GdbConfig {
    /// The config `flag` (one of [`GDB_FLAG`], [`GDB_ON_DEMAND_FLAG`]) with
    /// `value` gives.
    pub fn parse(flag: &str, value: &str) -> Result<GdbConfig, String> {
        let addr = value
            .parse()
            .map_err(|e| format!("{flag} {value}: expected IP:PORT ({e})"))?;
        Ok(GdbConfig {
            addr,
            wait: flag == GDB_FLAG,
        })
    }

    /// The flag that gives this config.
    pub fn flag(&self) -> &'static str {
        if self.wait {
            GDB_FLAG
        } else {
            GDB_ON_DEMAND_FLAG
        }
    }
}

/// Why the stub could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The address could not be listened on.
    #[error("gdb stub: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The client's socket or the reader thread failed.
    #[error("gdb stub: {0}")]
    Io(std::io::Error),
    /// `gdbstub` refused the session.
    #[error("gdb stub: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_to_configs_and_back() {
        let c = GdbConfig::parse(GDB_FLAG, "127.0.0.1:1234").unwrap();
        assert_eq!(c.addr, "127.0.0.1:1234".parse().unwrap());
        assert!(c.wait);
        assert_eq!(c.flag(), GDB_FLAG);
        let d = GdbConfig::parse(GDB_ON_DEMAND_FLAG, "[::1]:0").unwrap();
        assert!(!d.wait);
        assert_eq!(d.flag(), GDB_ON_DEMAND_FLAG);
        for bad in ["1234", "localhost:1234", "127.0.0.1", "127.0.0.1:99999", ""] {
            let e = GdbConfig::parse(GDB_FLAG, bad).unwrap_err();
            assert!(e.contains("expected IP:PORT"), "{e}");
        }
    }
}

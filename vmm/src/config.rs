//! What to build or restore ([`VmConfig`], [`RestoreConfig`]), and the
//! `arena-vmm` command line that describes it, both ways.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use crate::devices::serial::SharedBuffer;
use crate::gdb;

/// Default guest RAM in MiB.
pub const DEFAULT_MEM_MIB: u64 = 512;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u8 = 1;

/// Where the UART output goes.
#[derive(Clone)]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Kept in memory (tests, benchmarks).
    Buffer(SharedBuffer),
    /// Dropped.
    Sink,
}

/// What to build.
#[derive(Clone)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (PVH entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Where its output goes, how long it may run, what signals do.
    pub host: HostIo,
}

/// The host side of a VM, the same for a fresh boot and a restore.
#[derive(Clone)]
pub struct HostIo {
    /// UART output.
    pub serial: SerialOutput,
    /// Unix stream socket bridged to the virtio-console (client side).
    pub console_socket: Option<PathBuf>,
    /// Host-side timeout (for a restore: counted from the restore).
    pub timeout: Option<Duration>,
    /// Progress bound: the VM ends as [`ExitReason::Stalled`] when the
    /// guest writes nothing to the serial port for this long (time a
    /// debugger holds the VM excluded). Unlike `timeout`, a slow guest
    /// that keeps printing is never cut off.
    pub stall_timeout: Option<Duration>,
    /// Where SIGUSR1 saves a snapshot of the running VM.
    pub snapshot_to: Option<PathBuf>,
    /// A gdb stub (`--gdb`, `--gdb-on-demand`).
    pub gdb: Option<gdb::GdbConfig>,
}

impl Default for HostIo {
    /// Output dropped, no console socket, no limit, no signal handling.
    fn default() -> Self {
        Self {
            serial: SerialOutput::Sink,
            console_socket: None,
            timeout: None,
            stall_timeout: None,
            snapshot_to: None,
            gdb: None,
        }
    }
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            host: HostIo::default(),
        }
    }
}

impl VmConfig {
    /// The `arena-vmm` command line describing this config: the one argv
    /// format, shared by the runner (which spawns `arena-vmm`) and the
    /// VMM's own parser ([`VmConfig::from_args`]), so the two cannot drift.
    /// Defaults are left out; `SerialOutput::Sink` and `Buffer` (in-process
    /// only) give no `--serial`, i.e. output dropped.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--kernel".into(), self.kernel.clone().into()];
        if let Some(i) = &self.initrd {
            a.extend(["--initrd".into(), i.clone().into()]);
        }
        if !self.cmdline.is_empty() {
            a.extend(["--cmdline".into(), self.cmdline.clone().into()]);
        }
        if self.vcpus != DEFAULT_VCPUS {
            a.extend(["--vcpus".into(), self.vcpus.to_string().into()]);
        }
        if self.mem_mib != DEFAULT_MEM_MIB {
            a.extend(["--mem-mib".into(), self.mem_mib.to_string().into()]);
        }
        self.host.push_args(&mut a);
        a
    }

    /// Parses an `arena-vmm` command line (program name excluded); the
    /// inverse of [`VmConfig::to_args`]. Paths are taken as raw `OsStr`s.
    pub fn from_args<S: AsRef<OsStr>>(args: &[S]) -> Result<VmConfig, String> {
        let mut cfg = VmConfig::new("");
        let mut kernel = None;
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let flag = flag.to_string_lossy();
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let mut text = || {
                value()?
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{flag}: not UTF-8"))
            };
            match &*flag {
                "--kernel" => kernel = Some(PathBuf::from(value()?)),
                "--initrd" => cfg.initrd = Some(PathBuf::from(value()?)),
                "--cmdline" => cfg.cmdline = text()?,
                "--vcpus" => cfg.vcpus = text()?.parse().map_err(|e| format!("--vcpus: {e}"))?,
                "--mem-mib" => {
                    cfg.mem_mib = text()?.parse().map_err(|e| format!("--mem-mib: {e}"))?
                }
                f if HOST_IO_FLAGS.contains(&f) => cfg.host.set(f, value()?)?,
                "--restore" => return Err("--restore starts a VM from a snapshot alone".into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        cfg.kernel = kernel.ok_or("--kernel is required")?;
        cfg.host.check_gdb()?;
        Ok(cfg)
    }
}

/// The host-side options shared by a fresh boot and a restore: written by
/// [`HostIo::push_args`], read by [`HostIo::set`].
const HOST_IO_FLAGS: [&str; 7] = [
    "--serial",
    "--console-socket",
    "--timeout-s",
    "--stall-timeout-s",
    "--snapshot-to",
    gdb::GDB_FLAG,
    gdb::GDB_ON_DEMAND_FLAG,
];

impl HostIo {
    /// Sets the host-side option `flag` (one of [`HOST_IO_FLAGS`]) to `value`.
    fn set(&mut self, flag: &str, value: &OsStr) -> Result<(), String> {
        match flag {
            gdb::GDB_FLAG | gdb::GDB_ON_DEMAND_FLAG => {
                if self.gdb.is_some() {
                    return Err(format!(
                        "give one of {} and {}, once",
                        gdb::GDB_FLAG,
                        gdb::GDB_ON_DEMAND_FLAG
                    ));
                }
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.gdb = Some(gdb::GdbConfig::parse(flag, v)?);
            }
            "--serial" => self.serial = parse_serial(value),
            "--console-socket" => self.console_socket = Some(PathBuf::from(value)),
            "--timeout-s" => {
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.timeout = Some(parse_seconds(v)?);
            }
            "--stall-timeout-s" => {
                let v = value.to_str().ok_or_else(|| format!("{flag}: not UTF-8"))?;
                self.stall_timeout = Some(parse_seconds(v)?);
            }
            "--snapshot-to" => self.snapshot_to = Some(PathBuf::from(value)),
            other => return Err(format!("unknown argument {other}")),
        }
        Ok(())
    }

    /// Refuses a gdb stub together with snapshots: both pause the VM on a
    /// signal, and a VM a debugger holds (breakpoints in its memory, vCPUs
    /// stopped one by one) is no snapshot to resume from.
    fn check_gdb(&self) -> Result<(), String> {
        match self.gdb {
            Some(g) if self.snapshot_to.is_some() => Err(format!(
                "{} cannot be used with --snapshot-to: a VM under a debugger is not snapshotted",
                g.flag()
            )),
            _ => Ok(()),
        }
    }

    /// Appends these options to an `arena-vmm` command line.
    fn push_args(&self, a: &mut Vec<OsString>) {
        match &self.serial {
            SerialOutput::Stdout => a.extend(["--serial".into(), "-".into()]),
            SerialOutput::File(p) => a.extend(["--serial".into(), p.clone().into()]),
            SerialOutput::Buffer(_) | SerialOutput::Sink => {}
        }
        if let Some(s) = &self.console_socket {
            a.extend(["--console-socket".into(), s.clone().into()]);
        }
        // Whole nanoseconds, so the round trip is exact.
        let secs = |t: Duration| format!("{}.{:09}", t.as_secs(), t.subsec_nanos());
        if let Some(t) = self.timeout {
            a.extend(["--timeout-s".into(), secs(t).into()]);
        }
        if let Some(t) = self.stall_timeout {
            a.extend(["--stall-timeout-s".into(), secs(t).into()]);
        }
        if let Some(p) = &self.snapshot_to {
            a.extend(["--snapshot-to".into(), p.clone().into()]);
        }
        if let Some(g) = self.gdb {
            a.extend([g.flag().into(), g.addr.to_string().into()]);
        }
    }
}

fn parse_serial(v: &OsStr) -> SerialOutput {
    if v == "-" {
        SerialOutput::Stdout
    } else {
        SerialOutput::File(v.into())
    }
}

/// What to restore, and where the restored VM's host side goes. The VM's
/// shape (RAM, vCPUs, devices, command line) comes from the snapshot.
#[derive(Clone)]
pub struct RestoreConfig {
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// The host side from now on: the console socket is reconnected, the
    /// timeout counts from the restore, and a gdb stub can only be
    /// `--gdb-on-demand` (a restored VM has no first instruction to hold).
    pub host: HostIo,
    /// Skip the checksum over the whole file (`--no-verify`): the caller
    /// verified this very file already (lab hashes it once per run). The
    /// header, build id and every bound are still checked. Under nested
    /// TCG the checksum is most of a restore (1.4 of 1.6 s measured).
    pub trust_checksum: bool,
}

impl RestoreConfig {
    /// Restore `snapshot` with output dropped and no console socket.
    pub fn new(snapshot: impl Into<PathBuf>) -> Self {
        Self {
            snapshot: snapshot.into(),
            host: HostIo::default(),
            trust_checksum: false,
        }
    }

    /// The `arena-vmm --restore` command line for this config.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--restore".into(), self.snapshot.clone().into()];
        if self.trust_checksum {
            a.push("--no-verify".into());
        }
        self.host.push_args(&mut a);
        a
    }

    /// Parses an `arena-vmm --restore` command line; the inverse of
    /// [`RestoreConfig::to_args`]. Options that shape a fresh VM are refused.
    pub fn from_args<S: AsRef<OsStr>>(args: &[S]) -> Result<RestoreConfig, String> {
        let mut cfg = RestoreConfig::new("");
        let mut snapshot = None;
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(flag) = it.next() {
            let flag = flag.to_string_lossy();
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match &*flag {
                "--restore" => snapshot = Some(PathBuf::from(value()?)),
                "--no-verify" => cfg.trust_checksum = true,
                f if HOST_IO_FLAGS.contains(&f) => cfg.host.set(f, value()?)?,
                "--kernel" | "--initrd" | "--cmdline" | "--vcpus" | "--mem-mib" => {
                    return Err(format!(
                        "{flag} cannot be used with --restore: the VM's shape comes from the snapshot"
                    ))
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        cfg.snapshot = snapshot.ok_or("--restore needs a snapshot file")?;
        if cfg.host.gdb.is_some_and(|g| g.wait) {
            return Err(format!(
                "{} cannot be used with --restore: a restored VM has no first instruction to \
                 hold; use {}",
                gdb::GDB_FLAG,
                gdb::GDB_ON_DEMAND_FLAG
            ));
        }
        cfg.host.check_gdb()?;
        Ok(cfg)
    }
}

/// What an `arena-vmm` command line asks for.
pub enum Launch {
    /// Boot a kernel.
    Boot(VmConfig),
    /// Resume a snapshot.
    Restore(RestoreConfig),
}

/// Parses an `arena-vmm` command line: `--restore` anywhere selects a
/// restore, anything else is a fresh boot.
pub fn parse_launch<S: AsRef<OsStr>>(args: &[S]) -> Result<Launch, String> {
    if args.iter().any(|a| a.as_ref() == "--restore") {
        RestoreConfig::from_args(args).map(Launch::Restore)
    } else {
        VmConfig::from_args(args).map(Launch::Boot)
    }
}

/// A positive number of seconds; `S.NNNNNNNNN` is read exactly (what
/// [`VmConfig::to_args`] writes), anything else through `f64`.
fn parse_seconds(v: &str) -> Result<Duration, String> {
    let exact = v.split_once('.').and_then(|(s, f)| {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        (digits(s) && digits(f) && f.len() <= 9).then(|| {
            let nanos: u32 = format!("{f:0<9}").parse().ok()?;
            Some(Duration::new(s.parse().ok()?, nanos))
        })?
    });
    let d = match exact {
        Some(d) => d,
        None => {
            let s: f64 = v.parse().map_err(|e| format!("--timeout-s: {e}"))?;
            if !(s > 0.0 && s.is_finite()) {
                return Err("--timeout-s must be positive".into());
            }
            Duration::try_from_secs_f64(s).map_err(|e| format!("--timeout-s: {e}"))?
        }
    };
    if d.is_zero() {
        return Err("--timeout-s must be positive".into());
    }
    Ok(d)
}

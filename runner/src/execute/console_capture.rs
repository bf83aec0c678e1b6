//! Bounded serial console capture. A guest controls its console and can
//! write gigabytes; `console.log` must not fill the disk nor the runner's
//! memory. The VM writes into a pipe; a runner thread keeps the first half
//! of the cap (the boot) and the last half (where a splat usually is), with
//! one marker line between them saying how many bytes were dropped.
//!
//! Splat lines in the dropped middle are not lost: they are copied right
//! after the marker, so the splat detector still sees them (never a false
//! pass because a guest flooded its console).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable overriding the cap (bytes), e.g. for tests.
pub const CAP_ENV: &str = "ARENA_LAB_CONSOLE_CAP_BYTES";
/// Default cap of one `console.log`.
pub const DEFAULT_CAP: u64 = 64 << 20;
/// Smallest cap accepted: below it the marker would dwarf the log.
pub const MIN_CAP: u64 = 4096;
/// Most bytes the marker block (marker line and rescued splat lines) adds
/// on top of the cap.
pub const MARKER_MAX: u64 = 16 << 10;
/// Most splat lines rescued from the dropped middle.
const MAX_RESCUED: usize = 8;
/// Longest rescued line (characters), as the splat detector's titles.
const MAX_LINE_CHARS: usize = 300;
/// Bytes of a dropped line looked at for a splat marker.
const MAX_LINE_BYTES: usize = 1024;
/// How often the tail is rewritten on disk while bytes are being dropped:
/// a runner killed mid-flood leaves a tail at most this old.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long the pump waits for data before syncing an idle tail.
const POLL_MS: i32 = 500;
/// How long [`ConsoleCapture::settle`] waits for a capture to end once its
/// VM is gone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a console could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Creating, writing or reading the console file (or the pipe) failed,
    /// e.g. the disk is full.
    #[error("console capture, {path}: {source}")]
    Io {
        /// The console file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The capture thread did not end although its VM is gone.
    #[error("console capture, {0}: did not end (a process still holds the console pipe)")]
    Unsettled(PathBuf),
    /// The capture thread panicked.
    #[error("console capture, {0}: the capture thread panicked")]
    Panicked(PathBuf),
}

impl CaptureError {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> CaptureError + '_ {
        move |source| CaptureError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The cap in bytes: [`CAP_ENV`] if set to a whole number of at least
/// [`MIN_CAP`], else [`DEFAULT_CAP`] (a bad value is reported once).
pub fn cap() -> u64 {
    static CAP: OnceLock<u64> = OnceLock::new();
    *CAP.get_or_init(|| match parse_cap(std::env::var(CAP_ENV).ok().as_deref()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("lab: {why}; using the default console cap of {DEFAULT_CAP} bytes");
            DEFAULT_CAP
        }
    })
}

/// The cap `value` of [`CAP_ENV`] asks for (`None`: unset).
fn parse_cap(value: Option<&str>) -> Result<u64, String> {
    let Some(v) = value else {
        return Ok(DEFAULT_CAP);
    };
    match v.trim().parse::<u64>() {
        Ok(c) if c >= MIN_CAP => Ok(c),
        _ => Err(format!(
            "{CAP_ENV}={v:?}: expected a number of bytes, at least {MIN_CAP}"
        )),
    }
}

/// What a finished capture saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureStats {
    /// Bytes the guest wrote.
    pub total: u64,
    /// Bytes left out of the file (0: the file is the whole console).
    pub dropped: u64,
}

impl CaptureStats {
    /// Nothing captured.
    const NONE: CaptureStats = CaptureStats {
        total: 0,
        dropped: 0,
    };
}

/// A console file that keeps at most `cap` bytes of what is written to it
/// (plus the marker block): the first half as it comes, the last half in
/// memory, rewritten on disk at most every [`SYNC_EVERY`] once bytes are
/// being dropped. Until then the file is the console, byte for byte.
pub struct CappedLog {
    path: PathBuf,
    file: File,
    cap: u64,
    head_cap: u64,
    tail_cap: usize,
    head_len: u64,
    head_ends_line: bool,
    /// Everything after the head, at most `tail_cap` bytes (the newest).
    tail: VecDeque<u8>,
    total: u64,
    /// Bytes pushed out of `tail` (0: nothing lost yet).
    dropped: u64,
    /// The dropped line being assembled, for the splat scan.
    partial: Vec<u8>,
    /// Splat lines found in the dropped bytes, and how many more.
    rescued: Vec<String>,
    rescued_more: u64,
    /// The tail on disk is older than `tail`.
    dirty: bool,
    last_sync: Instant,
}

impl CappedLog {
    /// Create (truncate) `path`, capped at `cap` bytes.
    pub fn create(path: &Path, cap: u64) -> Result<CappedLog, CaptureError> {
        let file = File::create(path).map_err(CaptureError::io(path))?;
        let cap = cap.max(MIN_CAP);
        let head_cap = cap / 2;
        Ok(CappedLog {
            path: path.to_owned(),
            file,
            cap,
            head_cap,
            tail_cap: usize::try_from(cap - head_cap).unwrap_or(usize::MAX),
            head_len: 0,
            head_ends_line: true,
            tail: VecDeque::new(),
            total: 0,
            dropped: 0,
            partial: Vec::new(),
            rescued: Vec::new(),
            rescued_more: 0,
            dirty: false,
            last_sync: Instant::now(),
        })
    }

    /// Append `data` (the console as it comes).
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), CaptureError> {
        self.total += data.len() as u64;
        if self.head_len < self.head_cap {
            let n = data.len().min((self.head_cap - self.head_len) as usize);
            self.file
                .write_all(&data[..n])
                .map_err(CaptureError::io(&self.path))?;
            self.head_len += n as u64;
            if n > 0 {
                self.head_ends_line = data[n - 1] == b'\n';
            }
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.dropped == 0 && self.tail.len() + data.len() <= self.tail_cap {
            // Nothing lost yet: the file is still the console as written.
            self.file
                .write_all(data)
                .map_err(CaptureError::io(&self.path))?;
            self.tail.extend(data);
            return Ok(());
        }
        if data.len() >= self.tail_cap {
            let old: Vec<u8> = self.tail.drain(..).collect();
            self.scan_dropped(&old);
            let cut = data.len() - self.tail_cap;
            self.scan_dropped(&data[..cut]);
            self.dropped += (old.len() + cut) as u64;
            self.tail.extend(&data[cut..]);
        } else {
            let over = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
            let old: Vec<u8> = self.tail.drain(..over).collect();
            self.scan_dropped(&old);
            self.dropped += over as u64;
            self.tail.extend(data);
        }
        self.dirty = true;
        Ok(())
    }

    /// Look for splats in dropped bytes, line by line.
    fn scan_dropped(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.take_partial(&rest[..nl]);
            let line = std::mem::take(&mut self.partial);
            self.rescue(&line);
            rest = &rest[nl + 1..];
        }
        self.take_partial(rest);
    }

    fn take_partial(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Keep `line` if it is a splat line.
    fn rescue(&mut self, line: &[u8]) {
        if let Some(l) = splat_line(line) {
            if self.rescued.len() < MAX_RESCUED {
                self.rescued.push(l);
            } else {
                self.rescued_more += 1;
            }
        }
    }

    /// Rewrite the tail on disk if it changed and [`SYNC_EVERY`] passed.
    pub fn sync_if_due(&mut self) -> Result<(), CaptureError> {
        if self.dirty && self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Rewrite the marker block and the tail after the head, now.
    pub fn sync(&mut self) -> Result<(), CaptureError> {
        if !self.dirty {
            return Ok(());
        }
        // Start the tail on a line: unless the last dropped byte ended a
        // line, the tail's first, partial line counts as dropped.
        let (a, b) = self.tail.as_slices();
        let skip = if self.partial.is_empty() {
            0
        } else {
            a.iter()
                .chain(b)
                .take(MAX_LINE_BYTES)
                .position(|&x| x == b'\n')
                .map_or(0, |p| p + 1)
        };
        let mut fragment = self.partial.clone();
        fragment.extend(self.tail.iter().take(skip.saturating_sub(1)));
        let mut block = String::new();
        if !self.head_ends_line {
            block.push('\n');
        }
        block.push_str(&format!(
            "[arena-lab] console.log capped at {} bytes ({CAP_ENV}): {} bytes dropped here; \
             the first {} bytes are above, the last {} below\n",
            self.cap,
            self.dropped + skip as u64,
            self.head_len,
            self.tail.len() - skip
        ));
        let boundary = splat_line(&fragment);
        for l in self.rescued.iter().chain(boundary.as_ref()) {
            block.push_str(&format!("[arena-lab] dropped splat line: {l}\n"));
        }
        if self.rescued_more > 0 {
            block.push_str(&format!(
                "[arena-lab] and {} more dropped splat lines\n",
                self.rescued_more
            ));
        }
        let io = CaptureError::io(&self.path);
        self.file
            .seek(SeekFrom::Start(self.head_len))
            .map_err(&io)?;
        let (a, b) = self.tail.as_slices();
        let (a, b) = if skip <= a.len() {
            (&a[skip..], b)
        } else {
            (&[][..], &b[skip - a.len()..])
        };
        self.file.write_all(block.as_bytes()).map_err(&io)?;
        self.file.write_all(a).map_err(&io)?;
        self.file.write_all(b).map_err(&io)?;
        let end = self.file.stream_position().map_err(&io)?;
        self.file.set_len(end).map_err(&io)?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Write what is pending and close the file.
    pub fn finish(mut self) -> Result<CaptureStats, CaptureError> {
        self.sync()?;
        self.file.flush().map_err(CaptureError::io(&self.path))?;
        Ok(CaptureStats {
            total: self.total,
            dropped: self.dropped,
        })
    }
}

/// `line`, clipped, if the splat detector would call it a splat.
fn splat_line(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let first = crate::judge::splat::detect(text).into_iter().next()?;
    Some(first.title.chars().take(MAX_LINE_CHARS).collect())
}

/// The line every panic prints (`oops=panic` makes every oops one).
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Copy everything readable from `input` into `log` until EOF. After a
/// write error (disk full) the rest is read and discarded, so the VM never
/// blocks on a full pipe; the first error is returned at the end. Notes in
/// `panicked` when [`PANIC_MARKER`] first came through (also across reads).
pub fn pump(
    input: OwnedFd,
    mut log: CappedLog,
    panicked: &OnceLock<Instant>,
) -> Result<CaptureStats, CaptureError> {
    let path = log.path.clone();
    let mut input = File::from(input);
    let mut buf = vec![0u8; 64 << 10];
    let mut failed: Option<CaptureError> = None;
    let mut seen = MarkerScan::default();
    loop {
        let mut pfd = libc::pollfd {
            fd: input.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CaptureError::Io { path, source: e });
        }
        if ready > 0 {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CaptureError::Io { path, source: e }),
            };
            if panicked.get().is_none() && seen.feed(&buf[..n]) {
                let _ = panicked.set(Instant::now());
            }
            if failed.is_none() {
                failed = log.write(&buf[..n]).err();
            }
        }
        if failed.is_none() {
            failed = log.sync_if_due().err();
        }
    }
    match failed {
        Some(e) => Err(e),
        None => log.finish(),
    }
}

/// Finds [`PANIC_MARKER`] in a stream read in pieces.
#[derive(Default)]
struct MarkerScan {
    /// The end of the previous piece, shorter than the marker.
    carry: Vec<u8>,
}

impl MarkerScan {
    /// Whether the marker ends in `piece` (or straddles into it).
    fn feed(&mut self, piece: &[u8]) -> bool {
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(piece);
        let found = window
            .windows(PANIC_MARKER.len())
            .any(|w| w == PANIC_MARKER);
        let keep = window.len().min(PANIC_MARKER.len() - 1);
        self.carry = window[window.len() - keep..].to_vec();
        found
    }
}

/// The line after a restored VM's boot console in its `console.log`:
/// what follows is this VM's own output (`lab run -v` streams from here).
pub const RESTORE_MARKER: &str =
    "[arena-lab] restored from a snapshot: the boot console above is the snapshot's\n";

/// The capture of one VM's serial console into one file, owned by whoever
/// runs the VM: the backend starts it with the VM's command
/// (`Backend::command`), the session watches it for a kernel panic, and
/// the verdict reads it once it has ended ([`read_for_verdict`]).
///
/// One handle per capture, so two captures of the same path (a retried
/// boot) cannot be mixed up: whoever replaces a capture settles the earlier
/// one first. Dropping a running capture leaves its thread to end at EOF.
///
/// [`read_for_verdict`]: ConsoleCapture::read_for_verdict
pub struct ConsoleCapture {
    /// The console file.
    path: PathBuf,
    state: State,
}

/// A capture in flight, or how it ended.
enum State {
    Running {
        pump: JoinHandle<Result<CaptureStats, CaptureError>>,
        /// When the pump saw a kernel panic go by.
        panicked: Arc<OnceLock<Instant>>,
    },
    Ended(Result<CaptureStats, CaptureError>),
}

impl std::fmt::Debug for ConsoleCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "running",
            State::Ended(Ok(_)) => "ended",
            State::Ended(Err(_)) => "failed",
        };
        f.debug_struct("ConsoleCapture")
            .field("path", &self.path)
            .field("state", &state)
            .finish()
    }
}

impl ConsoleCapture {
    /// Start capturing into `path` (created, truncated), capped at [`cap`],
    /// beginning with `prefix` (a restored VM's boot console, see
    /// `snapshot`). Returns the capture and the pipe's write end,
    /// close-on-exec, for the VM; `None` when the capture could not start,
    /// which the capture then holds ([`error`](Self::error)), so that
    /// [`read_for_verdict`](Self::read_for_verdict) reports it rather than
    /// judging an empty console.
    pub fn start(path: &Path, prefix: &[u8]) -> (ConsoleCapture, Option<OwnedFd>) {
        let started = open_pipe(path).and_then(|(read, write)| {
            let mut log = CappedLog::create(path, cap())?;
            // The prefix (a boot that reached the hello) is not watched; the
            // marker after it tells readers where this VM's own console starts.
            log.write(prefix)?;
            if !prefix.is_empty() {
                log.write(RESTORE_MARKER.as_bytes())?;
            }
            let name = format!("console {}", path.display());
            let panicked = Arc::new(OnceLock::new());
            let watch = panicked.clone();
            let pump = std::thread::Builder::new()
                .name(name)
                .spawn(move || pump(read, log, &watch))
                .map_err(CaptureError::io(path))?;
            Ok((State::Running { pump, panicked }, write))
        });
        let (state, write) = match started {
            Ok((running, write)) => (running, Some(write)),
            Err(e) => (State::Ended(Err(e)), None),
        };
        let capture = ConsoleCapture {
            path: path.to_owned(),
            state,
        };
        (capture, write)
    }

    /// The console file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the capture failed, once it has (it could not start, or
    /// [`settle`](Self::settle) found it failed).
    pub fn error(&self) -> Option<&CaptureError> {
        match &self.state {
            State::Ended(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// When the console first showed a kernel panic, if it has and the
    /// capture still runs.
    pub fn panicked_at(&self) -> Option<Instant> {
        match &self.state {
            State::Running { panicked, .. } => panicked.get().copied(),
            State::Ended(_) => None,
        }
    }

    /// Wait for the capture to end (its VM is gone and every copy of the
    /// write end closed, the VM's command included) and remember how it
    /// ended; at most 30 s. `Ok` when it ended well, now or before.
    pub fn settle(&mut self) -> Result<(), CaptureError> {
        let ended = std::mem::replace(&mut self.state, State::Ended(Ok(CaptureStats::NONE)));
        let result = match ended {
            State::Ended(r) => r,
            State::Running { pump, .. } => {
                let until = Instant::now() + SETTLE_TIMEOUT;
                while !pump.is_finished() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if pump.is_finished() {
                    pump.join()
                        .unwrap_or_else(|_| Err(CaptureError::Panicked(self.path.clone())))
                } else {
                    Err(CaptureError::Unsettled(self.path.clone()))
                }
            }
        };
        let out = result.as_ref().map(|_| ()).map_err(clone_error);
        self.state = State::Ended(result);
        out
    }

    /// The captured console, for the verdict: waits for the capture to
    /// end, fails if it failed (a console cut short could hide a splat),
    /// reads at most [`cap`] + [`MARKER_MAX`] bytes. A missing file is an
    /// empty console.
    pub fn read_for_verdict(mut self) -> Result<String, CaptureError> {
        self.settle()?;
        read_bounded(&self.path, cap() + MARKER_MAX)
    }
}

/// A pipe (read end, write end), both close-on-exec; the write end is
/// moved above the standard descriptors so a child's stdio set-up cannot
/// overwrite it.
fn open_pipe(path: &Path) -> Result<(OwnedFd, OwnedFd), CaptureError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CaptureError::io(path)(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors we own.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one or -1.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(CaptureError::io(path)(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own; the low one closes with `write`.
    Ok((read, unsafe { OwnedFd::from_raw_fd(high) }))
}

fn clone_error(e: &CaptureError) -> CaptureError {
    match e {
        CaptureError::Io { path, source } => CaptureError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        CaptureError::Unsettled(p) => CaptureError::Unsettled(p.clone()),
        CaptureError::Panicked(p) => CaptureError::Panicked(p.clone()),
    }
}

/// At most `limit` bytes of `path` as text (lossy); missing file: empty.
fn read_bounded(path: &Path, limit: u64) -> Result<String, CaptureError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(CaptureError::io(path)(e)),
    };
    let mut buf = Vec::new();
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(CaptureError::io(path))?;
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("arena-cc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("console.log")
    }

    fn lines(from: u32, to: u32) -> String {
        (from..to).map(|i| format!("line {i:06}\n")).collect()
    }

    #[test]
    fn under_the_cap_the_file_is_the_console() {
        let p = tmp("under");
        let mut log = CappedLog::create(&p, 8192).unwrap();
        let text = lines(0, 500); // 6000 bytes
        for chunk in text.as_bytes().chunks(7) {
            log.write(chunk).unwrap();
        }
        // Visible before the end, too (--verbose streams the file).
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        let st = log.finish().unwrap();
        assert_eq!((st.total, st.dropped), (6000, 0));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn over_the_cap_head_marker_and_tail_stay() {
        let p = tmp("over");
        // Half the cap is a whole number of 12-byte lines.
        let cap = 8160;
        let mut log = CappedLog::create(&p, cap).unwrap();
        let text = lines(0, 100_000); // 1.2 MB
        for chunk in text.as_bytes().chunks(4093) {
            log.write(chunk).unwrap();
        }
        let st = log.finish().unwrap();
        assert_eq!(st.total, text.len() as u64);
        let out = std::fs::read_to_string(&p).unwrap();
        assert!(out.len() as u64 <= cap + MARKER_MAX, "{}", out.len());
        assert!(out.len() as u64 >= cap - 20, "{}", out.len());
        assert!(out.starts_with("line 000000\nline 000001\n"));
        assert!(out.ends_with("line 099999\n"));
        let markers: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("[arena-lab]"))
            .collect();
        assert_eq!(markers.len(), 1, "{markers:?}");
        // Head + tail + dropped add up to what the guest wrote.
        let dropped: u64 = markers[0]
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        let marker_len = markers[0].len() as u64 + 1;
        assert_eq!(out.len() as u64 - marker_len + dropped, text.len() as u64);
        // Every kept line is whole (the head ends on a line boundary here,
        // the tail starts on one).
        for l in out.lines().filter(|l| !l.starts_with('[')) {
            assert_eq!(l.len(), 11, "{l:?}");
        }
    }

    #[test]
    fn a_cut_line_gets_the_marker_on_its_own_line() {
        let p = tmp("cut");
        let mut log = CappedLog::create(&p, 4096).unwrap();
        log.write(&[b'x'; 3000]).unwrap();
        log.write(b"\nend\n").unwrap();
        log.write(&[b'y'; 5000]).unwrap();
        log.write(b"\nlast line\n").unwrap();
        log.finish().unwrap();
        let out = std::fs::read_to_string(&p).unwrap();
        let ls: Vec<&str> = out.lines().collect();
        assert_eq!(ls[0].len(), 2048);
        assert!(
            ls[1].starts_with("[arena-lab] console.log capped at 4096 bytes"),
            "{}",
            ls[1]
        );
        assert_eq!(ls.last(), Some(&"last line"));
    }

    #[test]
    fn splat_lines_in_the_dropped_middle_are_kept() {
        let p = tmp("splat");
        let mut log = CappedLog::create(&p, 8192).unwrap();
        log.write(lines(0, 2000).as_bytes()).unwrap();
        log.write(b"[   3.2] BUG: kernel NULL pointer dereference, address: 0\n")
            .unwrap();
        for i in 0..10 {
            log.write(format!("[ 4.{i}] WARNING: CPU: 0 PID: 1 at f.c:{i}\n").as_bytes())
                .unwrap();
        }
        log.write(lines(2000, 4000).as_bytes()).unwrap();
        log.finish().unwrap();
        let out = std::fs::read_to_string(&p).unwrap();
        let splats = crate::judge::splat::detect(&out);
        assert_eq!(splats.len(), MAX_RESCUED, "{out}");
        assert!(splats[0]
            .title
            .contains("BUG: kernel NULL pointer dereference"));
        assert!(out.contains("[arena-lab] and 3 more dropped splat lines"));
        assert!(out.len() as u64 <= 8192 + MARKER_MAX);
    }

    #[test]
    fn one_huge_write_keeps_its_end() {
        let p = tmp("huge");
        let mut log = CappedLog::create(&p, 4096).unwrap();
        let text = lines(0, 10_000);
        log.write(text.as_bytes()).unwrap();
        let st = log.finish().unwrap();
        let out = std::fs::read_to_string(&p).unwrap();
        assert!(out.ends_with("line 009999\n"));
        assert!(st.dropped > 100_000);
        assert!(out.len() as u64 <= 4096 + MARKER_MAX);
    }

    #[test]
    fn the_cap_comes_from_the_environment_value() {
        assert_eq!(parse_cap(None), Ok(DEFAULT_CAP));
        assert_eq!(parse_cap(Some("1048576")), Ok(1 << 20));
        assert!(parse_cap(Some("100")).is_err());
        assert!(parse_cap(Some("1M")).is_err());
    }

    #[test]
    fn a_piped_console_is_captured_and_settled() {
        let p = tmp("pipe");
        let (capture, w) = ConsoleCapture::start(&p, b"[    0.1] booted\n");
        assert_eq!(capture.path(), p);
        let mut w = File::from(w.unwrap());
        w.write_all(b"hello\nBUG: at the end\n").unwrap();
        drop(w);
        let text = capture.read_for_verdict().unwrap();
        // The prefix (a restored VM's boot console) comes first, then the
        // marker where this VM's own console starts.
        assert_eq!(
            text,
            format!("[    0.1] booted\n{RESTORE_MARKER}hello\nBUG: at the end\n")
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    /// A retried boot: the earlier capture of the same file is settled,
    /// then the new one starts the file afresh.
    #[test]
    fn a_second_capture_of_a_path_replaces_the_first() {
        let p = tmp("again");
        let (mut first, w) = ConsoleCapture::start(&p, b"");
        File::from(w.unwrap()).write_all(b"first boot\n").unwrap();
        first.settle().unwrap();
        // Settled twice: the same answer, no wait.
        first.settle().unwrap();
        let (second, w) = ConsoleCapture::start(&p, b"");
        File::from(w.unwrap()).write_all(b"second boot\n").unwrap();
        assert_eq!(second.read_for_verdict().unwrap(), "second boot\n");
    }

    /// A capture whose pipe a process still holds has not ended: settling
    /// waits for the last write end to close.
    #[test]
    fn settle_waits_for_the_pipe_to_close() {
        let p = tmp("held");
        let (read, write) = open_pipe(&p).unwrap();
        let log = CappedLog::create(&p, 8192).unwrap();
        let pump = std::thread::spawn(move || pump(read, log, &OnceLock::new()));
        let mut capture = ConsoleCapture {
            path: p.clone(),
            state: State::Running {
                pump,
                panicked: Arc::default(),
            },
        };
        let until = Instant::now() + Duration::from_millis(50);
        let result = std::thread::scope(|s| {
            let settling = s.spawn(|| capture.settle());
            while !settling.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Still waiting while the write end is open; closing it ends it.
            assert!(!settling.is_finished());
            drop(write);
            settling.join().unwrap()
        });
        result.unwrap();
    }

    #[test]
    fn a_panic_is_seen_across_reads_and_only_once() {
        let mut scan = MarkerScan::default();
        assert!(!scan.feed(b"[ 1.0] Oops: 0002 [#1] SMP\n[ 1.1] Kernel pan"));
        assert!(scan.feed(b"ic - not syncing: Fatal exception\n"));
        let mut scan = MarkerScan::default();
        assert!(!scan.feed(b"Kernel panic"));
        assert!(!scan.feed(b" - not sync"));
        assert!(scan.feed(b"ing: x"));
        assert!(!MarkerScan::default().feed(b"WARNING: CPU: 0 at kernel/bpf/arena.c"));

        let p = tmp("panic");
        let (mut capture, w) = ConsoleCapture::start(
            &p,
            b"Kernel panic - not syncing: in the prefix, not watched\n",
        );
        assert_eq!(capture.panicked_at(), None);
        let mut w = File::from(w.unwrap());
        w.write_all(b"[ 2.0] Kernel panic - not syncing: Fatal exception\n")
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while capture.panicked_at().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(capture.panicked_at().is_some());
        drop(w);
        capture.settle().unwrap();
        assert_eq!(capture.panicked_at(), None, "forgotten once settled");
    }

    #[test]
    fn a_capture_that_could_not_start_fails_the_verdict_read() {
        let p = Path::new("/nonexistent-dir-arena/console.log");
        let (capture, w) = ConsoleCapture::start(p, b"");
        assert!(w.is_none());
        let why = capture.error().expect("the failure is kept").to_string();
        assert!(why.contains("/nonexistent-dir-arena"), "{why}");
        let e = capture.read_for_verdict().unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir-arena"), "{e}");
    }

    /// A full disk: the capture reports it, and keeps draining the pipe so
    /// the VM does not block.
    #[test]
    fn a_write_error_is_reported_after_draining() {
        let p = tmp("full");
        let log = CappedLog {
            file: File::open("/dev/null").unwrap(), // read-only: writes fail
            ..CappedLog::create(&p, 8192).unwrap()
        };
        let (r, w) = open_pipe(&p).unwrap();
        let t = std::thread::spawn(move || pump(r, log, &OnceLock::new()));
        let mut w = File::from(w);
        // More than a pipe holds: blocks unless the pump drains.
        for _ in 0..64 {
            w.write_all(&[b'z'; 16 << 10]).unwrap();
        }
        drop(w);
        let e = t.join().unwrap().unwrap_err();
        assert!(matches!(e, CaptureError::Io { .. }), "{e}");
    }
}

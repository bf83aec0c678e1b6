//! Newline-delimited JSON framing with a hard bound on line length: the guest
//! is untrusted, so the host never buffers more than [`MAX_LINE_BYTES`] for
//! one message.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// Longest accepted message line (bytes, newline excluded).
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("results channel I/O: {0}")]
    Io(#[from] io::Error),
    /// A line exceeded [`MAX_LINE_BYTES`].
    #[error("message line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// A line was not valid JSON for the expected type.
    #[error("malformed message {line:?}: {source}")]
    Malformed {
        /// The offending line (truncated).
        line: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Serialize `msg` as one line and flush.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = serde_json::to_vec(msg).map_err(io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf)?;
    w.flush()
}

/// Reads newline-terminated messages from a byte stream.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the current line in `buf`.
    start: usize,
    /// Where the newline search resumes: `buf[start..scanned]` has none, so
    /// each byte is looked at once however many reads a long line takes.
    scanned: usize,
    /// Bytes looked at by the newline search (tests check it is linear).
    #[cfg(test)]
    scan_count: usize,
}

impl<R: Read> LineReader<R> {
    /// Wrap a reader.
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(8192),
            start: 0,
            scanned: 0,
            #[cfg(test)]
            scan_count: 0,
        }
    }

    /// Next raw line without its newline; `Ok(None)` at end of stream.
    /// Carriage returns and NUL bytes a tty may add are dropped.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            #[cfg(test)]
            {
                self.scan_count += found.map_or(self.buf.len() - self.scanned, |p| p + 1);
            }
            if let Some(pos) = found {
                let end = self.scanned + pos;
                let line: Vec<u8> = self.buf[self.start..end]
                    .iter()
                    .copied()
                    .filter(|&b| b != b'\r' && b != 0)
                    .collect();
                self.start = end + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                self.scanned = self.start;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() - self.start > MAX_LINE_BYTES {
                return Err(FrameError::TooLong);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.scanned -= self.start;
                self.start = 0;
            }
            let mut chunk = [0u8; 8192];
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Next message, skipping blank lines; `Ok(None)` at end of stream.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            let Some(line) = self.next_line()? else {
                return Ok(None);
            };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return serde_json::from_slice(&line).map(Some).map_err(|source| {
                FrameError::Malformed {
                    line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
                    source,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{GuestMessage, StepStatus};

    #[test]
    fn reads_messages_split_across_reads() {
        let mut out = Vec::new();
        let m = GuestMessage::Log { line: "hi".into() };
        write_message(&mut out, &m).unwrap();
        write_message(&mut out, &m).unwrap();
        // Feed one byte at a time.
        struct OneByte(Vec<u8>, usize);
        impl Read for OneByte {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() {
                    return Ok(0);
                }
                b[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let mut r = LineReader::new(OneByte(out, 0));
        assert_eq!(r.next_message::<GuestMessage>().unwrap(), Some(m.clone()));
        assert_eq!(r.next_message::<GuestMessage>().unwrap(), Some(m));
        assert!(r.next_message::<GuestMessage>().unwrap().is_none());
    }

    #[test]
    fn strips_tty_carriage_returns() {
        let data = b"{\"type\":\"done\",\"status\":\"pass\",\"reason\":\"\"}\r\n".to_vec();
        let mut r = LineReader::new(&data[..]);
        let m: GuestMessage = r.next_message().unwrap().unwrap();
        assert_eq!(
            m,
            GuestMessage::Done {
                status: StepStatus::Pass,
                reason: String::new(),
                killed: None,
            }
        );
    }

    #[test]
    fn rejects_overlong_line() {
        let data = vec![b'a'; MAX_LINE_BYTES + 10];
        let mut r = LineReader::new(&data[..]);
        assert!(matches!(r.next_line(), Err(FrameError::TooLong)));
    }

    /// Hands out `data` at most `chunk` bytes per read.
    struct Chunked<'a>(&'a [u8], usize);
    impl Read for Chunked<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(b.len());
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn long_line_in_small_reads_is_scanned_once() {
        const LEN: usize = 256 << 10;
        let mut data = b"short\n".to_vec();
        data.resize(data.len() + LEN, b'x');
        data.extend_from_slice(b"\nend\n");
        let mut r = LineReader::new(Chunked(&data, 512));
        assert_eq!(r.next_line().unwrap().unwrap(), b"short");
        assert_eq!(r.next_line().unwrap().unwrap().len(), LEN);
        assert_eq!(r.next_line().unwrap().unwrap(), b"end");
        assert!(r.next_line().unwrap().is_none());
        // Each byte once (a rescan per read would be ~LEN * LEN / 1024).
        assert_eq!(r.scan_count, data.len());
    }

    #[test]
    fn overlong_line_in_small_reads_is_bounded() {
        let data = vec![b'a'; MAX_LINE_BYTES + 10];
        let mut r = LineReader::new(Chunked(&data, 4096));
        assert!(matches!(r.next_line(), Err(FrameError::TooLong)));
        assert!(r.scan_count <= MAX_LINE_BYTES + 4096 + 1);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let data = b"{not json}\n".to_vec();
        let mut r = LineReader::new(&data[..]);
        assert!(matches!(
            r.next_message::<GuestMessage>(),
            Err(FrameError::Malformed { .. })
        ));
    }
}

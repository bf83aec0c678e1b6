//! A minimal QMP (QEMU Machine Protocol) client: enough to save a running
//! VM's state through migration. One JSON object per line each way; events
//! the VM sends in between are skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest QMP line accepted: replies here are small, and QEMU is trusted
/// less than a bound.
const MAX_LINE: u64 = 1 << 20;

/// What went wrong talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached by the deadline.
    #[error("cannot connect to QMP at {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// The last error.
        source: std::io::Error,
    },
    /// Reading or writing failed, or QEMU closed the socket.
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    /// Something that is not a QMP reply.
    #[error("QMP sent {0:?}")]
    Garbage(String),
    /// QEMU refused a command.
    #[error("QMP {command}: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A QMP session in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to `path` (retrying until `deadline`: QEMU creates it while
    /// starting), read the greeting and enter command mode.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(100))))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read_line()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Garbage(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Run `command` with `arguments`; its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut line = json!({"execute": command, "arguments": arguments}).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let reply = self.read_line()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            if reply.get("event").is_none() {
                return Err(QmpError::Garbage(reply.to_string()));
            }
        }
    }

    fn read_line(&mut self) -> Result<Value, QmpError> {
        let mut buf = String::new();
        let n = (&mut self.reader).take(MAX_LINE).read_line(&mut buf)?;
        if n == 0 {
            return Err(QmpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&buf).map_err(|_| QmpError::Garbage(truncate(&buf)))
    }
}

fn truncate(s: &str) -> String {
    s.trim_end().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QEMU: greets, then answers each command line with the
    /// next canned reply (events first where given).
    fn fake_qemu(
        name: &str,
        replies: Vec<&'static str>,
    ) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
        let path =
            std::env::temp_dir().join(format!("arena-qmp-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for reply in replies {
                let mut cmd = String::new();
                if r.read_line(&mut cmd).unwrap() == 0 {
                    return;
                }
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        (path, handle)
    }

    #[test]
    fn commands_return_values_and_skip_events() {
        let (path, h) = fake_qemu(
            "events",
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"completed\"}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut q = Qmp::connect(&path, deadline).unwrap();
        let ret = q.execute("query-migrate", json!({})).unwrap();
        assert_eq!(ret["status"], "completed");
        let e = q.execute("migrate", json!({"uri": "x"})).unwrap_err();
        assert_eq!(e.to_string(), "QMP migrate: GenericError: no");
        h.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_socket_fails_at_the_deadline() {
        let path = Path::new("/nonexistent-arena/qmp.sock");
        let e = Qmp::connect(path, Instant::now()).err().unwrap();
        assert!(e.to_string().contains("/nonexistent-arena/qmp.sock"), "{e}");
    }

    #[test]
    fn garbage_is_refused() {
        let (path, h) = fake_qemu("garbage", vec!["not json\n"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = Qmp::connect(&path, deadline).err().unwrap();
        assert!(
            matches!(e, QmpError::Garbage(ref g) if g == "not json"),
            "{e}"
        );
        h.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}

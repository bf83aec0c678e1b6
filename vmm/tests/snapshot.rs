//! Snapshots through the `arena-vmm` binary: SIGUSR1 pauses and saves a
//! running guest, `--restore` resumes it where it stopped (RAM, registers,
//! UART, virtio queues), and damaged or foreign snapshots are refused.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_arena-vmm"))
}

fn tmp(name: &str) -> PathBuf {
    let p = out_dir().join(format!("snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn spawn(bin: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn code_and_stderr(out: &Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `cond` holds, failing only when the guest stopped making
/// progress: its serial output `log` did not grow for [`STALL`]. A slow
/// guest on a busy host is waited for, however long it takes.
fn wait_for(what: &str, log: &Path, mut cond: impl FnMut() -> bool) {
    let len = || std::fs::metadata(log).map_or(0, |m| m.len());
    let (mut last, mut since) = (len(), Instant::now());
    while !cond() {
        let now = len();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < STALL,
            "no guest output for {STALL:?} while waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigusr1(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    assert_eq!(r, 0);
}

/// Pauses `child` with SIGUSR1 and checks it saved `snap` and exited 3.
fn snapshot_and_wait(child: Child, snap: &Path) -> String {
    sigusr1(&child);
    let out = child.wait_with_output().unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, vmm::EXIT_SNAPSHOT_SAVED, "{err}");
    let last = err.lines().last().unwrap_or_default();
    let prefix = format!("arena-vmm: snapshot saved to {} (", snap.display());
    assert!(last.starts_with(&prefix) && last.ends_with(" ms)"), "{err}");
    let len = std::fs::metadata(snap).unwrap().len();
    assert!(last.contains(&format!("({len} bytes, ")), "{err}");
    let mut tmp = snap.as_os_str().to_owned();
    tmp.push(".tmp");
    assert!(!Path::new(&tmp).exists());
    err
}

/// Boots the counting guest with `--snapshot-to`, lets it count a while and
/// snapshots it; returns the serial output so far.
fn counting_snapshot(name: &str, snap: &Path) -> String {
    let guest = build_pvh("counter_pvh");
    let serial = tmp(&format!("{name}-before.log"));
    let child = spawn(
        &vmm_bin(),
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--vcpus",
            "2",
            "--mem-mib",
            "64",
            "--serial",
            serial.to_str().unwrap(),
            "--snapshot-to",
            snap.to_str().unwrap(),
            "--stall-timeout-s",
            "60",
        ],
    );
    wait_for("the guest to count to 20", &serial, || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.lines().count() > 20)
    });
    snapshot_and_wait(child, snap);
    std::fs::read_to_string(&serial).unwrap()
}

/// Checks `out` is `n=00000001\n n=00000002\n ...`, the last line possibly
/// cut short; returns how many lines are complete.
fn check_unbroken_count(out: &str) -> u32 {
    let mut expected = String::new();
    let mut n = 0;
    while expected.len() < out.len() {
        n += 1;
        expected.push_str(&format!("n={n:08X}\n"));
    }
    assert!(
        expected.starts_with(out),
        "the count restarted or skipped:\n{}",
        &out[out.len().saturating_sub(400)..]
    );
    if out.ends_with('\n') {
        n
    } else {
        n - 1
    }
}

#[test]
fn restore_continues_counting_where_the_snapshot_paused() {
    require_kvm("restore_continues_counting_where_the_snapshot_paused");
    let snap = tmp("count.snap");
    let before = counting_snapshot("count", &snap);
    let saved = check_unbroken_count(&before);
    // Twice from the same file: the file is mapped copy-on-write, so the
    // first restore's guest writes must not leak into the second.
    for round in 0..2 {
        let after_log = tmp(&format!("count-after-{round}.log"));
        let mut child = spawn(
            &vmm_bin(),
            &[
                "--restore",
                snap.to_str().unwrap(),
                "--serial",
                after_log.to_str().unwrap(),
                "--stall-timeout-s",
                "60",
            ],
        );
        // Bounded by progress: until the restored guest counted 6 more
        // lines, however slowly; then this test ends the VM.
        wait_for("the restored guest to count on", &after_log, || {
            let lines = std::fs::read_to_string(&after_log).map_or(0, |s| s.lines().count());
            lines > 6 || child.try_wait().unwrap().is_some()
        });
        let still_running = child.try_wait().unwrap().is_none();
        if still_running {
            child.kill().unwrap();
        }
        let (_, err) = code_and_stderr(&child.wait_with_output().unwrap());
        assert!(still_running, "the restored VM ended by itself: {err}");
        let after = std::fs::read_to_string(&after_log).unwrap();
        let total = check_unbroken_count(&(before.clone() + &after));
        assert!(
            total > saved + 5,
            "round {round}: {saved} lines before, {total} after: {after:?}"
        );
    }
}

#[test]
fn virtio_console_queues_survive_a_restore_onto_a_new_socket() {
    require_kvm("virtio_console_queues_survive_a_restore_onto_a_new_socket");
    let guest = build_pvh("virtio_console_pvh");
    let snap = tmp("console.snap");
    let sock1 = tmp("console-1.sock");
    let sock2 = tmp("console-2.sock");
    let serial1 = tmp("console-before.log");
    let serial2 = tmp("console-after.log");
    let l1 = UnixListener::bind(&sock1).unwrap();
    let child = spawn(
        &vmm_bin(),
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--mem-mib",
            "64",
            "--serial",
            serial1.to_str().unwrap(),
            "--console-socket",
            sock1.to_str().unwrap(),
            "--snapshot-to",
            snap.to_str().unwrap(),
            "--stall-timeout-s",
            "60",
        ],
    );
    let conn = accept_with_timeout(&l1);
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "ping from guest\n");
    // The guest now waits (hlt) for its posted receive buffer to be used.
    wait_for("the guest to wait for input", &serial1, || {
        std::fs::read_to_string(&serial1).is_ok_and(|s| s.contains("tx sent\n"))
    });
    snapshot_and_wait(child, &snap);
    drop(conn);

    let l2 = UnixListener::bind(&sock2).unwrap();
    let child = Command::new(vmm_bin())
        .args(["--restore", snap.to_str().unwrap()])
        .args(["--serial", serial2.to_str().unwrap()])
        .args(["--console-socket", sock2.to_str().unwrap()])
        .args(["--stall-timeout-s", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let conn = accept_with_timeout(&l2);
    (&conn).write_all(b"pong from host\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let (code, err) = code_and_stderr(&out);
    let after = std::fs::read_to_string(&serial2).unwrap();
    assert_eq!(code, vmm::EXIT_CLEAN, "{err}\n{after}");
    assert!(after.starts_with("rx=pong from host\n"), "{after}");
    assert!(!after.contains("irqs=00000000"), "no interrupt: {after}");
    assert!(after.contains("txused=00000001\n"), "{after}");
    for p in [sock1, sock2, snap] {
        let _ = std::fs::remove_file(p);
    }
}

/// Runs `arena-vmm ARGS` expecting a one-line refusal with exit code 2.
fn refused(bin: &Path, args: &[&str], want: &str) {
    let out = Command::new(bin).args(args).output().unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, vmm::EXIT_SETUP_ERROR, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "{want:?} not in {err:?}");
}

#[test]
fn damaged_and_foreign_snapshots_are_refused() {
    require_kvm("damaged_and_foreign_snapshots_are_refused");
    let snap = tmp("refuse.snap");
    counting_snapshot("refuse", &snap);
    let good = std::fs::read(&snap).unwrap();
    let bad = tmp("refuse-bad.snap");
    let bad_s = bad.to_str().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = good.clone();
                b[0] ^= 0xff;
                b
            },
            "bad magic",
        ),
        (
            {
                let mut b = good.clone();
                b[8] = 2;
                b
            },
            "format version 2",
        ),
        (
            {
                let mut b = good.clone();
                b[20] ^= 1;
                b
            },
            "different arena-vmm build",
        ),
        (
            {
                let mut b = good.clone();
                b[5000] ^= 1;
                b
            },
            "checksum mismatch",
        ),
        (
            {
                let mut b = good.clone();
                let n = b.len() - 100;
                b[n] ^= 1;
                b
            },
            "checksum mismatch",
        ),
        (good[..good.len() - 4096].to_vec(), "truncated"),
        (good[..64].to_vec(), "truncated"),
    ];
    for (bytes, want) in cases {
        std::fs::write(&bad, bytes).unwrap();
        refused(&vmm_bin(), &["--restore", bad_s], want);
    }
    // A different build of arena-vmm: the same program with one byte more.
    let other = tmp("arena-vmm-other");
    let mut exe = std::fs::read(vmm_bin()).unwrap();
    exe.push(0);
    std::fs::write(&other, exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&other)
        .args(["--restore", snap.to_str().unwrap()])
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, vmm::EXIT_SETUP_ERROR, "{err}");
    assert!(
        err.contains("different arena-vmm build (snapshot build ") && err.contains(", this build "),
        "{err}"
    );
    // Options that shape a fresh VM do not go with --restore.
    let s = snap.to_str().unwrap();
    refused(
        &vmm_bin(),
        &["--restore", s, "--mem-mib", "128"],
        "--mem-mib cannot be used with --restore",
    );
    refused(
        &vmm_bin(),
        &["--kernel", "/k", "--restore", s],
        "--kernel cannot be used with --restore",
    );
    refused(
        &vmm_bin(),
        &["--restore", "/nonexistent/snap"],
        "/nonexistent/snap",
    );
    for p in [snap, bad, other] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_snapshot_that_cannot_be_written_leaves_nothing_behind() {
    require_kvm("a_snapshot_that_cannot_be_written_leaves_nothing_behind");
    let guest = build_pvh("spin_pvh");
    let dir = tmp("unwritable-dir");
    std::fs::create_dir_all(&dir).unwrap();
    // The final rename fails: a non-empty directory is in the way.
    std::fs::create_dir_all(dir.join("snap/x")).unwrap();
    let snap = dir.join("snap");
    let child = spawn(
        &vmm_bin(),
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--mem-mib",
            "32",
            "--snapshot-to",
            snap.to_str().unwrap(),
            "--timeout-s",
            "30",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    sigusr1(&child);
    let out = child.wait_with_output().unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, vmm::EXIT_SNAPSHOT_FAILED, "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("arena-vmm: snapshot failed: "),
        "{err}"
    );
    assert!(!dir.join("snap.tmp").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

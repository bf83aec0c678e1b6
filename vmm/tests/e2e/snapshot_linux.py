#!/usr/bin/env python3
"""Snapshot end to end with a real Linux guest and its agent; needs real
KVM, so run it inside `lab nested --exec`:

    target/release/lab nested --exec -- python3 vmm/tests/e2e/snapshot_linux.py \
        target/release/arena-vmm KERNEL INITRD

Boots the guest with --snapshot-to, waits for the agent's hello on the
virtio console, sends SIGUSR1, then restores onto a new console socket and
serial file, and talks to the agent: two `resume` messages (each answered
by a hello whose uptime shows the guest clock continued and runs), then a
bad line, which the agent logs on the serial console before it reports
`fatal` and powers off (exit 0). Prints the timings; exits non-zero when a
check fails."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

VMM, KERNEL, INITRD = sys.argv[1:4]
SETTLE_S = float(os.environ.get("SETTLE_S", "2"))
work = tempfile.mkdtemp(prefix="snap-e2e-")
snap = os.path.join(work, "vm.snap")


def listen(name):
    path = os.path.join(work, name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    s.settimeout(120)
    return s, path


def read_line(conn, timeout):
    conn.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            break
        buf += b
    return buf.decode(errors="replace")


def fail(msg):
    print(f"E2E FAIL: {msg}", flush=True)
    sys.exit(1)


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return str(e)


l1, sock1 = listen("c1.sock")
serial1 = os.path.join(work, "serial1.log")
t0 = time.monotonic()
p = subprocess.Popen(
    [VMM, "--kernel", KERNEL, "--initrd", INITRD,
     "--cmdline", "console=ttyS0 oops=panic panic=-1 reboot=k",
     "--vcpus", "2", "--mem-mib", "512", "--serial", serial1,
     "--console-socket", sock1, "--snapshot-to", snap, "--timeout-s", "600"],
    stderr=subprocess.PIPE)
c1, _ = l1.accept()
hello = read_line(c1, 300)
t_hello = time.monotonic() - t0
print(f"boot: agent hello after {t_hello:.2f} s: {hello.strip()[:200]}", flush=True)
if '"hello"' not in hello:
    p.kill()
    fail(f"no hello; serial:\n{tail(serial1)}")
time.sleep(SETTLE_S)
t_sig = time.monotonic()
p.send_signal(signal.SIGUSR1)
err1 = p.stderr.read().decode(errors="replace")
rc1 = p.wait()
t_saved = time.monotonic()
print(f"save: exit {rc1} {t_saved - t_sig:.3f} s after SIGUSR1 "
      f"({t_sig - t0:.2f} s after start)\n{err1}", flush=True)
if rc1 != 3:
    fail("snapshot not saved")
st = os.stat(snap)
print(f"snapshot: {st.st_size} bytes apparent, {st.st_blocks * 512} bytes allocated",
      flush=True)
with open(snap, "rb") as f:
    head = f.read(80)
    state_off, state_len, mem_off, mem_len = struct.unpack("<4Q", head[48:80])
    f.seek(state_off)
    state = json.loads(f.read(state_len))
print(f"snapshot: state section {state_len} bytes, guest RAM at {mem_off}; MSRs saved per "
      f"vCPU {[len(v['msrs']) for v in state['vcpus']]}, CPUID entries "
      f"{[len(v['cpuid']) for v in state['vcpus']]}, console queues "
      f"{[(q['size'], q['next_avail'], q['next_used']) for q in state['devices']['console_transport']['queues']]}",
      flush=True)
c1.close()

l2, sock2 = listen("c2.sock")
serial2 = os.path.join(work, "serial2.log")
t1 = time.monotonic()
p2 = subprocess.Popen(
    [VMM, "--restore", snap, "--serial", serial2, "--console-socket", sock2,
     "--timeout-s", "120"],
    stderr=subprocess.PIPE)
c2, _ = l2.accept()
t_conn = time.monotonic() - t1


def resume(conn):
    msg = {"type": "resume", "entropy": [1, 2, 3, 4], "unix_time_ns": time.time_ns()}
    conn.sendall(json.dumps(msg).encode() + b"\n")
    return read_line(conn, 60)


def uptime_ms(line):
    try:
        return json.loads(line)["uptime_ms"]
    except (ValueError, KeyError):
        return None


reply = resume(c2)
t_reply = time.monotonic() - t1
print(f"restore: console connected {t_conn * 1e3:.1f} ms after start, agent answered "
      f"{t_reply * 1e3:.1f} ms after start: {reply.strip()[:160]}...", flush=True)
if '"hello"' not in reply:
    p2.kill()
    fail("the restored agent did not answer with a hello")
up0, up1 = uptime_ms(hello), uptime_ms(reply)
print(f"guest uptime: {up0} ms at the hello before the snapshot, {up1} ms after restore "
      f"(host time between them, minus the pause: {(t_sig - t0 - t_hello) * 1e3:.0f} ms "
      f"before SIGUSR1 + {t_reply * 1e3:.0f} ms after restore)", flush=True)
time.sleep(1)
reply2 = resume(c2)
up2 = uptime_ms(reply2)
print(f"second resume 1 s later: uptime {up2} ms", flush=True)
if up1 is None or up2 is None or not 500 <= up2 - up1 <= 5000:
    p2.kill()
    fail("the guest clock does not run normally after restore")
# A line the agent cannot parse makes it log, report `fatal` on the
# channel and power off: serial output after restore, then a clean exit.
c2.sendall(b"not a host message\n")
fatal = read_line(c2, 60)
print(f"agent after a bad line: {fatal.strip()[:200]}", flush=True)
try:
    rc2 = p2.wait(90)
except subprocess.TimeoutExpired:
    p2.kill()
    rc2 = p2.wait()
err2 = p2.stderr.read().decode(errors="replace")
print(f"restored VM: exit {rc2} {time.monotonic() - t1:.2f} s after restore start\n{err2}"
      f"serial after restore (tail):\n{tail(serial2)}", flush=True)
if rc2 != 0:
    fail(f"restored VM exit {rc2}")
if "bad host message" not in tail(serial2, 50):
    fail("nothing on the new serial file after restore")
print("E2E OK", flush=True)

"""Waiting in tests: poll a condition, and stop a child process we started."""
from __future__ import annotations

import signal
import subprocess
import time

# x86_64 syscall numbers (/proc/PID/syscall's first field); the timeout is the 4th argument of both
EPOLL_WAITS = (232, 281)        # epoll_wait, epoll_pwait


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll predicate until it returns something true or timeout seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM our child PROC unless it has exited, SIGKILL it after timeout seconds; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)


def accept_queue(path: str) -> int | None:
    """Connections waiting at the unix listening socket PATH to be accepted (ss: the listener's Recv-Q,
    in this network namespace); None when nothing listens there."""
    out = subprocess.run(["ss", "-xlnH", "src", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[1] == "LISTEN" and fields[4] == path:
            return int(fields[2])
    return None


def asleep_in_epoll(pid: int) -> bool:
    """Process PID (single-threaded, ours) is blocked in epoll_wait with a timeout other than 0: it has
    done all it had to do and waits for an event (/proc/PID/syscall: the syscall it is in, its arguments;
    "running" while on a CPU)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    if len(fields) < 5 or not fields[0].isdigit():
        return False
    return int(fields[0]) in EPOLL_WAITS and int(fields[4], 16) != 0

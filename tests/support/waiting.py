"""Waiting in tests: poll a condition, and stop a child process we started."""
from __future__ import annotations

import signal
import subprocess
import time


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

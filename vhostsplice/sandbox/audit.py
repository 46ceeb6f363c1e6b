"""Which syscall killed a confined process: the kernel's audit record of a seccomp kill (type=1326,
`sig=31 ... syscall=N`), read from /dev/kmsg by whoever outlives the process (serve's exit events).
Best effort: None without the record (no CAP_SYSLOG, the record rate-limited away, another kernel)."""
from __future__ import annotations

import os
import re

from . import seccomp

KMSG = "/dev/kmsg"
_RECORD = re.compile(r"type=1326 .*?\bpid=(\d+)\b.*?\bsig=31\b.*?\bsyscall=(\d+)")


def killed_by(pid: int) -> str | None:
    """The name (or number) of the syscall that got PID killed by its seccomp filter, if logged."""
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = _records(fd).get(pid)
    finally:
        os.close(fd)
    return _name(found)


class KillLog:
    """killed_by for a process that confines itself (serve): /dev/kmsg opened once, before confinement
    takes CAP_SYSLOG and the file system away, read from its end on; records of other pids are kept
    until asked for (two workers killed at once)."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        try:
            self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = -1

    def killed_by(self, pid: int) -> str | None:
        if self.fd >= 0:
            self.seen.update(_records(self.fd))
        return _name(self.seen.pop(pid, None))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _records(fd: int) -> dict[int, int]:
    """pid -> syscall number of every seccomp kill record readable from FD now."""
    found: dict[int, int] = {}
    while True:
        try:
            record = os.read(fd, 8192).decode(errors="replace")
        except BlockingIOError:
            return found
        except OSError:         # EPIPE: a record was overwritten while reading; keep going
            continue
        match = _RECORD.search(record)
        if match:
            found[int(match.group(1))] = int(match.group(2))


def _name(nr: int | None) -> str | None:
    return None if nr is None else (seccomp.name_of(nr) or str(nr))

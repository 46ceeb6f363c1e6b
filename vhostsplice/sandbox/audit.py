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
    found = None
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:         # EPIPE: a record was overwritten while reading; keep going
                continue
            match = _RECORD.search(record)
            if match and int(match.group(1)) == pid:
                found = int(match.group(2))
    finally:
        os.close(fd)
    return None if found is None else (seccomp.name_of(found) or str(found))

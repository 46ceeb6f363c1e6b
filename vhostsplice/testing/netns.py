"""A private network namespace that this process can step into and out of (setns), and always deletes.

Used by the demo and the root tests: sockets opened inside stay in the namespace after we step out, and
child processes started inside run there. Only namespaces created here are ever deleted.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess

CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class PrivateNetns:
    """`with PrivateNetns("vsdemo") as ns: with ns.entered(): ...`"""

    def __init__(self, prefix: str = "vs"):
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=30)
        with self.entered():
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
            for key in ("all", "default"):     # no IPv6 autoconfiguration chatter on test interfaces
                path = f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6"
                if os.path.exists(path):
                    with open(path, "w") as f:
                        f.write("1")

    @contextlib.contextmanager
    def entered(self):
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            yield self
        finally:
            _setns(home)
            os.close(home)
            os.close(target)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""A private network namespace per test: created with `ip netns add`, always deleted (only it).

Names are `vst-<pid>-<counter>`, so parallel runs and leftovers of a crashed run never collide
with a namespace in use, and cleanup never touches a namespace this process did not create.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

_counter = itertools.count(1)
IP = "ip"


def _package_root() -> str:
    """The directory the tested `vhostsplice` package is imported from (for child Pythons)."""
    import vhostsplice
    return str(Path(list(vhostsplice.__path__)[0]).resolve().parent)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: same PATH, and PYTHONPATH finding the same vhostsplice."""
    env = dict(os.environ)
    root = _package_root()
    if root not in site.getsitepackages() + [site.getusersitepackages()]:  # a source tree
        paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


class NetNs:
    """One private namespace. Use as a context manager, or call close() yourself."""

    def __init__(self, prefix: str = "vst"):
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        subprocess.run([IP, "netns", "add", self.name], check=True, capture_output=True, timeout=30)
        self._open = True
        try:
            self.run([IP, "link", "set", "lo", "up"])
            # No IPv6 autoconfiguration chatter (router solicitations, MLD) on test interfaces.
            self.run(["sh", "-c", "for k in all default; do [ -w /proc/sys/net/ipv6/conf/$k/disable_ipv6 ]"
                      " && echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done; true"])
        except BaseException:
            self.close()
            raise

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        """Run ARGV inside the namespace; captured text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("env", child_env())
        proc = subprocess.run(self.argv(argv), timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"in netns {self.name}: {list(argv)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ARGV inside the namespace; the caller must wait for or kill the returned process."""
        kwargs.setdefault("env", child_env())
        return subprocess.Popen(self.argv(argv), **kwargs)

    def python(self, code: str, *, timeout: float = 60, check: bool = True):
        """Run Python CODE inside the namespace; return the JSON its last stdout line holds."""
        proc = self.run([sys.executable, "-c", code], timeout=timeout, check=check)
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"no output from python in {self.name}; stderr: {proc.stderr}")
        return json.loads(lines[-1])

    def read_sys(self, ifname: str, attr: str) -> str:
        """/sys/class/net/IFNAME/ATTR as seen inside the namespace (ip netns exec remounts /sys)."""
        return self.run(["cat", f"/sys/class/net/{ifname}/{attr}"]).stdout.strip()

    def counters(self, ifname: str, *names: str) -> dict[str, int]:
        return {n: int(self.read_sys(ifname, f"statistics/{n}")) for n in names}

    def close(self) -> None:
        """Delete the namespace (idempotent). Processes still inside keep it alive, unnamed."""
        if self._open:
            self._open = False
            subprocess.run([IP, "netns", "del", self.name], capture_output=True, timeout=30)

    def __enter__(self) -> "NetNs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def private_netns(prefix: str = "vst") -> Iterator[NetNs]:
    ns = NetNs(prefix)
    try:
        yield ns
    finally:
        ns.close()


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def entered_netns(prefix: str):
    """vhostsplice.testing.netns.PrivateNetns(prefix), entered by this thread until the block ends, then
    removed; skips the test when not root (CI runs as root, so nothing is skipped there)."""
    import pytest
    from vhostsplice.testing.netns import PrivateNetns
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with PrivateNetns(prefix) as ns, ns.entered():
        yield ns

"""The confined worker (issue 17; docs/security.md): after set-up, before its first vhost-user message, a
`run` worker gives up what a compromised worker could use.

Two steps, because `--user` sits between them (runner.py):
  prepare()  while still privileged: new mount/IPC/UTS namespaces, the capability bounding set emptied
             and securebits locked (both need privileges `--user` gives up);
  confine()  no capabilities in any set, no_new_privs, Landlock (no file system except the stats
             directory and the socket's directory, pre-opened), then the seccomp allow-list
             (allowlist.py), last because the steps before need syscalls it forbids.
Mode `strict` (the default) kills the process with SIGSYS on a syscall outside the list; `log` lets it
through and the kernel logs it (how the list was built: docs/security.md); `off` does nothing.
"""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field

from ..errors import ConfigError, SetupError
from . import allowlist, kernel, seccomp
from .allowlist import Facts

MODES = ("strict", "log", "off")
DEFAULT_ACTION = {"strict": seccomp.ACT_KILL_PROCESS, "log": seccomp.ACT_LOG}
# Landlock rights granted beneath the two pre-opened directories; nothing else is reachable.
STATS_DIR_RIGHTS = kernel.FS_MAKE_REG | kernel.FS_WRITE_FILE | kernel.FS_REMOVE_FILE | kernel.FS_TRUNCATE
SOCKET_DIR_RIGHTS = kernel.FS_REMOVE_FILE


@dataclass
class Sandbox:
    mode: str = "strict"
    report: dict = field(default_factory=dict)      # what each layer achieved: the stats' "sandbox"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--sandbox {self.mode!r}: expected one of {', '.join(MODES)}")
        self.report["mode"] = self.mode

    def prepare(self) -> None:
        """The privileged half (before --user drops root): libseccomp is opened now too (cffi imported,
        the library mapped), while every file the interpreter needs is still reachable."""
        if self.mode == "off":
            return
        if seccomp.library() is None:
            raise SetupError(f"--sandbox: {seccomp.LIBRARY} is not installed (Debian: libseccomp2); "
                             "--sandbox off runs unconfined", errno.ENOSYS)
        self.report["namespaces"] = kernel.unshare_namespaces()
        self.report["bounding_dropped"] = kernel.drop_bounding(kernel.cap_last())

    def confine(self, facts: Facts) -> dict:
        """The rest, in order; from here on the worker only uses fds it holds."""
        if self.mode == "off":
            return self.report
        _warm_up()
        kernel.drop_capabilities()
        kernel.no_new_privs()
        _check_stats_dir(facts.stats_dir_fd)
        self.report["landlock_abi"] = abi = kernel.landlock_abi()
        if abi:
            grants = [(fd, rights) for fd, rights in ((facts.stats_dir_fd, STATS_DIR_RIGHTS),
                                                      (facts.socket_dir_fd, SOCKET_DIR_RIGHTS)) if fd >= 0]
            kernel.landlock_restrict(abi, grants)
        seccomp.load(DEFAULT_ACTION[self.mode], allowlist.rules(facts))
        self.report["seccomp"] = "kill" if self.mode == "strict" else "log"
        return self.report


def _check_stats_dir(fd: int) -> None:
    """Without CAP_DAC_OVERRIDE even uid 0 writes only where the mode bits let it: say so at start."""
    if fd >= 0 and not os.access(".", os.W_OK | os.X_OK, dir_fd=fd):
        raise SetupError(f"--stats-file: its directory is not writable by uid {os.getuid()} without capabilities "
                         "(the sandbox drops CAP_DAC_OVERRIDE; --sandbox off keeps it)", errno.EACCES)


def _warm_up() -> None:
    """What the interpreter would otherwise do lazily through the file system after confinement:
    glibc reads the time zone on the first localtime (every log line's time), json loads its encoder."""
    time.localtime()
    json.dumps({"warm": [1, 2.0, None]}, sort_keys=True)


def describe() -> dict:
    """`run --print-sandbox`: the allow-list and what the running kernel and libraries offer."""
    return {
        "default_action": "kill_process (SIGSYS)",
        "allow": [{"syscall": name, "args": args, "why": why,
                   "known_here": seccomp.resolve(name) != seccomp.NR_UNKNOWN}
                  for name, args, why in allowlist.ALLOW],
        "soft_deny": [{"syscall": name, "errno": errno.errorcode[code], "why": why}
                      for name, code, why in allowlist.SOFT_DENY],
        "kernel": {"release": os.uname().release, "seccomp_actions": _read("/proc/sys/kernel/seccomp/actions_avail"),
                   "landlock_abi": kernel.landlock_abi(), "libseccomp": seccomp.version()},
    }


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

"""The exception family and the exit-code contract.

Every failure that ends a command is one of these exceptions; each carries an errno, and that errno is
the process exit code. This module is the one place that maps failures to exit codes (README: "Exit codes").
"""
from __future__ import annotations

import errno as _errno
import os
import signal as _signal

# A process killed by signal N exits 128 + N for a shell and a supervisor (serve's exit events too).
SIGSYS_EXIT = 128 + _signal.SIGSYS

# (exit code, short name, meaning) in the order the README documents them.
EXIT_TABLE: tuple[tuple[int, str, str], ...] = (
    (0, "OK", "stopped on request (SIGTERM/SIGINT), or the front-end stopped the rings and closed cleanly"),
    (_errno.EINVAL, "EINVAL", "bad usage or configuration (command-line errors included)"),
    (-1, "kernel errno", "set-up failure as the kernel gave it: ENOENT, EPERM, EACCES, ENODEV, EBUSY, EADDRINUSE..."),
    (_errno.ECONNRESET, "ECONNRESET", "the front-end vanished while rings were running"),
    (_errno.EPROTO, "EPROTO", "vhost-user protocol violation (bad size, fd count, unknown request, bad ring index or size, "
                                 "the worker's own host fd sent back)"),
    (_errno.ENOTSUP, "ENOTSUP", "a required feature (VIRTIO_F_VERSION_1) was not negotiated"),
    (_errno.EBADMSG, "EBADMSG", "guest ring corruption (avail idx jump, head out of range, descriptor loop, chain too long)"),
    (_errno.EFAULT, "EFAULT", "guest address outside the memory table (fatal only with --on-guest-error=exit)"),
    (_errno.EBADFD, "EBADFD", "the host packet fd went bad (tap detached or deleted)"),
    (_errno.EIO, "EIO", "host packet fd I/O failure"),
    (_errno.EPIPE, "EPIPE", "the host packet fd's peer closed"),
    (SIGSYS_EXIT, "SIGSYS", "killed by the sandbox (--sandbox strict): a syscall outside the allow-list; the kernel "
                            "log names it (audit type=1326 ... syscall=N)"),
)


class VhostspliceError(Exception):
    """Base: a failure with an errno that becomes the exit code."""

    errno: int = _errno.EINVAL

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)


class ConfigError(VhostspliceError):
    """Bad usage or configuration (EINVAL unless a more precise errno is known)."""

    errno = _errno.EINVAL


class SetupError(VhostspliceError):
    """A set-up step failed in the kernel; errno is the kernel's."""


class ProtocolError(VhostspliceError):
    """The front-end broke the vhost-user protocol."""

    errno = _errno.EPROTO


class FeatureError(VhostspliceError):
    """A required feature was not negotiated."""

    errno = _errno.ENOTSUP


class FrontendGone(VhostspliceError):
    """The front-end closed the connection while rings were running."""

    errno = _errno.ECONNRESET


class GuestRingError(VhostspliceError):
    """The guest corrupted a ring (the ring is now broken)."""

    errno = _errno.EBADMSG


class GuestFaultError(VhostspliceError):
    """A guest address fell outside the memory table."""

    errno = _errno.EFAULT


class HostFdError(VhostspliceError):
    """The host packet fd failed (EBADFD, EIO, EPIPE...)."""

    errno = _errno.EIO


def errno_name(code: int) -> str:
    """'OK', the errno's name, else for 128 + N the signal's (159: SIGSYS, the sandbox killed it)."""
    if code == 0:
        return "OK"
    if code in _errno.errorcode:
        return _errno.errorcode[code]
    try:
        return _signal.Signals(code - 128).name
    except ValueError:
        return str(code)


def from_oserror(exc: OSError, what: str, cls: type[VhostspliceError] = SetupError) -> VhostspliceError:
    """Wrap a kernel error, keeping its errno, with the step that failed in the message."""
    code = exc.errno or _errno.EIO
    return cls(f"{what}: {os.strerror(code)} ({errno_name(code)})", code)

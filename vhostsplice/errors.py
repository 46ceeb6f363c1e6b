"""The exception family and the exit-code contract.

Every failure that ends a command is one of these exceptions; each carries an errno, and that errno is
the process exit code. This module is the one place that maps failures to exit codes (README: "Exit codes").
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno as _errno
import os
import signal as _signal
from dataclasses import dataclass

# A process killed by signal N exits 128 + N for a shell and a supervisor (serve's exit events too).
SIGSYS_EXIT = 128 + _signal.SIGSYS

# The stop signals: each ends a command with 0. From the first line of `run`/`serve` they (and SIGUSR1, the
# counters, whose default action would end the process) are held blocked until the loop's handlers are in:
# a stop during set-up is a clean stop, not a death by the signal. A supervisor starts its workers with
# them blocked, which covers the interpreter's start-up too (bin/ scripts: env --block-signal=TERM,INT,USR1).
STOP_SIGNALS = (_signal.SIGTERM, _signal.SIGINT)
HELD_AT_START = (*STOP_SIGNALS, _signal.SIGUSR1)


@contextlib.contextmanager
def signals_held(*, drain: bool, restore: set[int] | None = None):
    """HELD_AT_START blocked for the block, the caller's mask back after it (RESTORE instead: the mask a
    lone run's first interpreter had, worker/entry.py); a loop inside unblocks them once its handlers are in
    (release_stop_signals). drain=True (around a command): one still pending at the end is taken, not
    delivered (the command ends anyway, with its own code); drain=False: delivered then."""
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, HELD_AT_START)
    _HOLDS.append(old if restore is None else restore)
    try:
        yield
    finally:
        never_released = set(HELD_AT_START) <= _signal.pthread_sigmask(_signal.SIG_BLOCK, HELD_AT_START)
        # only before the loop (so never under the sandbox, whose allow-list has no rt_sigpending)
        while drain and never_released and (pending := _signal.sigpending() & set(HELD_AT_START)):
            _signal.sigtimedwait(pending, 0)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _HOLDS.pop())


_HOLDS: list[set[int]] = []     # the mask each signals_held block gives back, outermost first


def mask_before_hold() -> set[int]:
    """The signal mask the outermost signals_held block gives back (the process's mask now outside one)."""
    return set(_HOLDS[0]) if _HOLDS else _signal.pthread_sigmask(_signal.SIG_BLOCK, ())


def hold_stop_signals_to_the_end() -> None:
    """A process's outcome is decided (its exit code computed): a stop signal from now on stays pending and
    goes with the process. Python puts the default action back while it shuts down, so a SIGTERM that came
    then would kill it: a death by signal where the exit contract promises an errno (seen in 8 of 15 runs
    of a SIGTERM right after the front-end closed). Only for a process that is the command's own."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """The loop's handlers are in: what signals_held() kept pending arrives now."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, HELD_AT_START)


# (exit code, short name, meaning) in the order the README documents them.
EXIT_TABLE: tuple[tuple[int, str, str], ...] = (
    (0, "OK", "stopped on request (SIGTERM/SIGINT), or the front-end stopped the rings and closed cleanly"),
    (_errno.EINVAL, "EINVAL", "bad usage or configuration (command-line errors included)"),
    (-1, "kernel errno", "set-up failure as the kernel gave it: ENOENT, EPERM, EACCES, ENODEV, EBUSY, EADDRINUSE..."),
    (_errno.ECONNRESET, "ECONNRESET", "the front-end vanished while rings were running"),
    (_errno.EPROTO, "EPROTO", "vhost-user protocol violation (bad size, fd count, unknown request, bad ring index or "
                              "size, the worker's own host fd sent back)"),
    (_errno.ENOTSUP, "ENOTSUP", "a required feature (VIRTIO_F_VERSION_1) was not negotiated"),
    (_errno.EBADMSG, "EBADMSG",
     "guest ring corruption (avail idx jump, head out of range, descriptor loop, chain too long)"),
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


# -- restart policy: what a supervisor does with a worker's exit code ---------------------------------------
# One table for every consumer: `serve` (serve/pairs.py), bin/vhostsplice-supervise and
# bin/vhostsplice-vmm-example (through `vhostsplice exit-codes --shell`), and contrib/systemd's
# RestartPreventExitStatus (tests/unit/test_restart_policy.py fails when one of them drifts).
# The question each row answers: can a fresh worker cure what ended this one?
CLEAN, RESTART, GIVE_UP = "clean", "restart", "give-up"
SIGNALED = "signal"         # the key of deaths by a signal (exit 128+N) in RESTART_POLICY
RESTART_POLICY: tuple[tuple[int | str, str, str], ...] = (
    (0, CLEAN, "the front-end stopped the rings and left, or a stop was asked for: nothing failed; the next "
               "front-end needs a worker (restarted at once, no back-off, by those that serve it)"),
    (_errno.ECONNRESET, RESTART, "the front-end vanished (QEMU died or restarts): its successor reconnects"),
    (_errno.EBADMSG, RESTART, "the guest corrupted a ring: the driver's reset brings a fresh ring"),
    (_errno.EFAULT, RESTART, "a bad guest address (--on-guest-error=exit): the guest's reset brings a fresh one"),
    (_errno.EPROTO, RESTART, "the front-end broke the protocol: a reconnecting front-end starts a fresh "
                             "session; a persistent breakage runs into the supervisor's restart limit"),
    (_errno.EIO, RESTART, "host packet fd I/O failure: a fresh queue of the same tap"),
    (_errno.EPIPE, RESTART, "the host fd's peer closed: a fresh queue of the same tap"),
    (SIGNALED, RESTART, "killed by a signal (OOM kill, crash, someone's SIGKILL): nothing says the next one will be"),
    (SIGSYS_EXIT, GIVE_UP, "killed by the sandbox: a syscall outside the allow-list is a bug of the list or the "
                           "worker, and the next worker dies the same way when it takes that path"),
    (_errno.EBADFD, GIVE_UP, "the tap was deleted or detached under the worker: whoever removed the host side "
                             "meant it, and a restart would recreate an interface the host removed"),
    (_errno.EINVAL, GIVE_UP, "bad usage or configuration: a restart fails the same way"),
    (_errno.ENOTSUP, GIVE_UP, "the driver refuses VIRTIO_F_VERSION_1: a legacy guest stays legacy"),
    (_errno.EADDRINUSE, GIVE_UP, "another worker serves the socket: that one is in charge"),
    (_errno.EPERM, GIVE_UP, "no permission (EPERM), or an internal error (a bug, exit 1): a restart repeats it"),
    (_errno.EACCES, GIVE_UP, "a front-end or file the worker may not serve: permissions do not change by themselves"),
    (_errno.ENOENT, GIVE_UP, "a set-up file or namespace is missing"),
    (_errno.ENODEV, GIVE_UP, "no such tap or bridge (create=False, --bridge)"),
    (_errno.EBUSY, GIVE_UP, "a set-up resource is busy (a single-queue tap taken)"),
    (_errno.EEXIST, GIVE_UP, "a set-up name exists already (a tap or socket name taken)"),
)
UNLISTED = GIVE_UP          # any other exit code: a set-up failure the kernel reported; a restart repeats it


def restart_action(code: int) -> str:
    """CLEAN, RESTART or GIVE_UP for a worker's exit code (128+N: died of signal N)."""
    actions = {k: action for k, action, _why in RESTART_POLICY}
    if code in actions:
        return actions[code]
    return actions[SIGNALED] if code > 128 else UNLISTED


@dataclass(frozen=True)
class BackoffPolicy:
    """The delay before restart n (n >= 1 failures in a row): first * 2**(n-1), at most cap, then shortened by
    up to `jitter` of itself (so the pairs of one device do not come back in lock-step; the cap stays a
    bound). A worker that served stable_after seconds resets the count (a failure long after the last is a
    first failure again)."""

    first: float = 0.1
    cap: float = 5.0
    stable_after: float = 10.0
    jitter: float = 0.25

    def delay(self, failures: int, rand: float = 0.0) -> float:
        """The delay for the failures-th failure in a row; rand in [0, 1) picks the jitter."""
        base = min(self.first * 2 ** max(failures - 1, 0), self.cap)
        return base * (1.0 - self.jitter * rand)


BACKOFF = BackoffPolicy()


class Backoff:
    """One restartable thing's back-off state under a BackoffPolicy."""

    def __init__(self, policy: BackoffPolicy = BACKOFF, rand=None):
        if rand is None:        # imported here: the supervisors' jitter, not a worker's (issue 18)
            from random import random as rand
        self.policy, self.rand, self.failures = policy, rand, 0

    def after_run(self, served_s: float) -> bool:
        """A worker ended after serving served_s seconds; True if that run was stable (the count resets)."""
        stable = served_s >= self.policy.stable_after
        if stable:
            self.failures = 0
        return stable

    def next_delay(self) -> float:
        self.failures += 1
        return self.policy.delay(self.failures, self.rand())


def policy_document() -> dict:
    """The restart and back-off policies as data (`vhostsplice exit-codes --json`)."""
    return {"exit_codes": [{"code": c, "name": n, "meaning": m} for c, n, m in EXIT_TABLE if c >= 0],
            "restart": [{"code": k, "name": k if isinstance(k, str) else errno_name(k), "action": a, "why": w}
                        for k, a, w in RESTART_POLICY],
            "unlisted": UNLISTED, "backoff": dataclasses.asdict(BACKOFF)}


def policy_shell() -> str:
    """The same as shell words for bin/ scripts (`vhostsplice exit-codes --shell`): KEY VALUE... per line."""
    codes = {a: [str(k) for k, act, _w in RESTART_POLICY if act == a] for a in (CLEAN, RESTART, GIVE_UP)}
    lines = [f"{a} {' '.join(v)}" for a, v in codes.items()]
    lines += [f"unlisted {UNLISTED}"] + [f"backoff_{k} {v}" for k, v in dataclasses.asdict(BACKOFF).items()]
    return "\n".join(lines)

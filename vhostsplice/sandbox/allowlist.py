"""The syscall allow-list of a confined `vhostsplice run` worker: the one table `confine`, `run
--print-sandbox` and docs/security.md read. Each row: the syscall, what in the worker needs it, and the
argument rule where one is cheap. Everything not listed kills the process (SIGSYS); `openat` outside
the stats directory fails with EPERM instead (the interpreter opens source files for a traceback and
must fail softly there, so the worker still ends with its own exit code).

Built from what a worker really calls after confinement (the suite run under `--sandbox log`, every
SECCOMP_RET_LOG line in the kernel log collected), not from what it might call.
"""
from __future__ import annotations

import errno
import mmap
from dataclasses import dataclass
from collections.abc import Callable

from ..host.tun import SIOCGIFMTU, TUNSETOFFLOAD, TUNSETQUEUE
from .seccomp import ACT_ALLOW, CMP_EQ, CMP_MASKED_EQ, CMP_NE, Cmp, Rule, act_errno

TCGETS, FIONBIO, FIOCLEX = 0x5401, 0x5421, 0x5451
U32 = 0xFFFFFFFF

# Argument rules by name: each maps the worker's facts (Facts below) to the comparisons that must ALL hold
# (one rule; a syscall with several rules is allowed if any of them holds).
ArgRule = Callable[["Facts"], list[tuple[Cmp, ...]]]


@dataclass(frozen=True)
class Facts:
    """What the worker holds when it confines itself: fds that rules compare against (-1: none)."""

    stats_dir_fd: int = -1      # --stats-file's directory, opened O_PATH before confining
    socket_dir_fd: int = -1     # --socket-path's directory: the socket file is removed on exit
    uring_fd: int = -1          # the host fd's io_uring, set up and restricted before confining


IOCTLS = (TUNSETOFFLOAD, TUNSETQUEUE, SIOCGIFMTU, FIONBIO, FIOCLEX, TCGETS)


def _ioctl_requests(_f: Facts) -> list[tuple[Cmp, ...]]:
    return [(Cmp(1, CMP_MASKED_EQ, req, U32),) for req in IOCTLS]


def _no_exec(_f: Facts) -> list[tuple[Cmp, ...]]:
    return [(Cmp(2, CMP_MASKED_EQ, 0, mmap.PROT_EXEC),)]


def _in_dir(attr: str) -> ArgRule:
    def rule(facts: Facts) -> list[tuple[Cmp, ...]]:
        fd = getattr(facts, attr)
        return [(Cmp(0, CMP_EQ, fd),)] if fd >= 0 else []
    rule.__doc__ = f"argument 0 (the directory fd) is the {attr}"
    return rule


def _uring_enter(facts: Facts) -> list[tuple[Cmp, ...]]:
    """Argument 0 is the worker's own ring; no ring (the per-frame path): no io_uring_enter at all."""
    return [(Cmp(0, CMP_EQ, facts.uring_fd),)] if facts.uring_fd >= 0 else []


ANY: ArgRule | None = None
ARG_RULES: dict[str, ArgRule | None] = {
    "any": ANY,
    "TUNSETOFFLOAD, TUNSETQUEUE, SIOCGIFMTU, FIONBIO, FIOCLEX, TCGETS only": _ioctl_requests,
    "no PROT_EXEC": _no_exec,
    "dirfd is the stats directory": _in_dir("stats_dir_fd"),
    "dirfd is the socket's directory": _in_dir("socket_dir_fd"),
    "fd is the worker's io_uring": _uring_enter,
}

# (syscall, argument rule name, who needs it)
ALLOW: tuple[tuple[str, str, str], ...] = (
    ("epoll_wait", "any", "the worker loop sleeps in vs_pair_wait (the C core's wait)"),
    ("epoll_pwait", "any", "the same, where libc uses the p variant"),
    ("epoll_ctl", "any", "watch and unwatch kick fds, the host fd, the control socket"),
    ("read", "any", "kick eventfd drains, the signal wake-up pipe, RX frames from a tap (core)"),
    ("readv", "any", "RX: a frame from the host fd into guest buffers (core)"),
    ("write", "any", "call eventfd signals, SEND_RARP's frame, stderr (log, stats), the stats file"),
    ("writev", "any", "TX: a frame from guest buffers to the host fd (core)"),
    ("io_uring_enter", "fd is the worker's io_uring",
     "batches of readv/writev on the host fd (core, vs_uring.c); the ring was made, restricted to those two "
     "opcodes on its one fixed file and enabled before confinement; io_uring_setup and io_uring_register "
     "stay forbidden"),
    ("recvmsg", "any", "vhost-user messages with SCM_RIGHTS fds; RX from socket host fds (core)"),
    ("sendmsg", "any", "vhost-user replies; TX to socket host fds (core)"),
    ("recvfrom", "any", "socket.recv on the control socket"),
    ("sendto", "any", "socket.send of replies; TX to a connected socket host fd (core)"),
    ("poll", "any", "the control socket's 5 s receive timeout (a started message must be finished)"),
    ("getsockname", "any", "socket(fileno=) on a socket host fd; an AF_PACKET socket's interface"),
    ("getpeername", "any", "a --connect/--fd front-end refused by --allow-uid is named in the exit message"),
    ("accept4", "any", "--socket-path: a front-end connects (a second one is accepted and closed)"),
    ("getsockopt", "any", "SO_PEERCRED of a front-end; SO_ERROR of a socket host fd; socket(fileno=)"),
    ("setsockopt", "any", "--packet: PACKET_VNET_HDR on or off after SET_FEATURES"),
    ("ioctl", "TUNSETOFFLOAD, TUNSETQUEUE, SIOCGIFMTU, FIONBIO, FIOCLEX, TCGETS only",
     "TUNSETOFFLOAD after SET_FEATURES, TUNSETQUEUE attach/detach; --packet on ENETDOWN: is the "
     "interface still there (SIOCGIFMTU through the packet socket); socket.setblocking, set_inheritable; "
     "isatty (TCGETS) on stderr before the exit line is printed"),
    ("fcntl", "any", "O_NONBLOCK on received fds; os.dup (F_DUPFD_CLOEXEC); fd flags"),
    ("close", "any", "every fd the front-end sends is closed once used or refused"),
    ("newfstatat", "any", "fstat of every received fd (st_dev/st_ino against the host fd; memory and log sizes)"),
    ("fstat", "any", "the same, where libc uses the old call"),
    ("lseek", "any", "the interpreter's stderr stream"),
    ("mmap", "no PROT_EXEC", "SET_MEM_TABLE regions and SET_LOG_BASE's log; the interpreter's allocator"),
    ("munmap", "any", "unmap replaced or released regions and logs; the allocator"),
    ("mprotect", "no PROT_EXEC", "the allocator (glibc heaps)"),
    ("madvise", "any", "the allocator returning memory"),
    ("brk", "any", "the allocator"),
    ("mremap", "any", "the allocator growing a large block"),
    ("futex", "any", "the interpreter's locks"),
    ("getrandom", "any", "the interpreter's hash seed and random (dict, tempfile names)"),
    ("rt_sigaction", "any", "SIGTERM/SIGINT/SIGUSR1 handlers are set when the loop starts"),
    ("rt_sigprocmask", "any", "signal masks around the interpreter's signal handling"),
    ("rt_sigreturn", "any", "return from a SIGTERM/SIGINT/SIGUSR1 handler"),
    ("sigaltstack", "any", "the interpreter's fault handler stack"),
    ("getpid", "any", "log lines and the RARP/refusal messages carry the pid"),
    ("gettid", "any", "the interpreter's thread bookkeeping"),
    ("clock_gettime", "any", "uptime and the safety poll, where the vDSO is not used"),
    ("pipe2", "any", "the signal wake-up pipe the loop makes when it starts"),
    ("exit_group", "any", "the end"),
    ("openat", "dirfd is the stats directory", "--stats-file: the temporary file, replaced into place"),
    ("renameat", "dirfd is the stats directory", "--stats-file: the temporary file renamed over the stats file"),
    ("renameat2", "dirfd is the stats directory", "the same, where libc uses renameat2"),
    ("unlinkat", "dirfd is the socket's directory", "--socket-path: the socket file is removed on exit"),
)

# Refused softly: (syscall, errno, why not a kill).
SOFT_DENY: tuple[tuple[str, int, str], ...] = (
    ("openat", errno.EPERM, "the interpreter opens source files to print a traceback: it must fail, not kill"),
)


def rules(facts: Facts) -> list[Rule]:
    """The allow-list for these facts as seccomp rules (a directory rule without its fd is left out)."""
    out: list[Rule] = []
    for name, arg_rule, _why in ALLOW:
        builder = ARG_RULES[arg_rule]
        if builder is None:
            out.append(Rule(name, ACT_ALLOW))
            continue
        out.extend(Rule(name, ACT_ALLOW, cmps) for cmps in builder(facts))
    for name, code, _why in SOFT_DENY:
        allowed_dir = [r for r in out if r.syscall == name]
        excluded = tuple(Cmp(c.arg, CMP_NE, c.datum) for r in allowed_dir for c in r.args if c.op == CMP_EQ)
        out.append(Rule(name, act_errno(code), excluded[:1]))
    return out

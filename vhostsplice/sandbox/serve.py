"""`serve`'s own confinement (issue 17; docs/security.md "serve").

serve parses the hostile front-end's messages too, so it confines itself once its set-up is done (the
tap created and held, the socket listening, the run directory made, the worker template forked:
template.py), before it accepts a front-end. It never starts, execs or signals a worker itself (the
template does, from a recipe fixed before this point, and only for a pair index), so it gives up as
much as a worker does:

  capabilities  none, in every set, the bounding set included;
  no_new_privs  set;
  Landlock      the file system read-only (the interpreter's lazy imports); nothing executable; create and
                write only beneath the `--stats-file` directory; beneath the run directory read the
                workers' stats files and remove them; remove the socket file and the run directory; no
                TCP bind or connect, signals only within its own domain;
  seccomp       SERVE_ALLOW below: no fork, clone, exec, kill, ptrace, mount, no socket() of any family.

Mode `log` loads the same filter with the log action; `off` does nothing (as for the workers).
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from . import kernel, seccomp
from .allowlist import FIOCLEX, FIONBIO, TCGETS, U32
from .seccomp import ACT_ALLOW, CMP_MASKED_EQ, Cmp, Rule

PR_SET_NAME = 15
# (syscall, rule, who in serve needs it): serve's loop after confinement (docs/security.md: how measured).
SERVE_ALLOW: tuple[tuple[str, str, str], ...] = (
    ("epoll_wait", "any", "the loop sleeps in select.epoll.poll"),
    ("epoll_pwait", "any", "the same, where libc uses the p variant"),
    ("epoll_ctl", "any", "watch the front-end, the workers' channels and exit pidfds"),
    ("read", "any", "the signal wake-up pipe; the workers' stats files"),
    ("write", "any", "events, stats, log lines; eventfd signals (VRING_ERR of a failed pair)"),
    ("recvmsg", "any", "vhost-user messages with SCM_RIGHTS fds (front-end, workers, the template)"),
    ("sendmsg", "any", "the same, sent"),
    ("recvfrom", "any", "socket.recv"),
    ("sendto", "any", "socket.send"),
    ("poll", "any", "a started message's receive timeout"),
    ("pselect6", "any", "waiting for a worker's reply or the template's report (select.select)"),
    ("select", "any", "the same, where libc uses it"),
    ("accept4", "any", "the front-end connects (a second one is refused)"),
    ("getsockopt", "any", "SO_PEERCRED of the front-end (--allow-uid)"),
    ("setsockopt", "any", "receive timeouts on channels"),
    ("getsockname", "any", "socket(fileno=) on received sockets"),
    ("getpeername", "any", "the same"),
    ("socketpair", "any", "each worker's channel to serve"),
    ("pidfd_open", "any", "a worker's exit, watched in epoll"),
    ("memfd_create", "any", "each pair's ring-position state page"),
    ("ftruncate", "any", "the state page's size"),
    ("fcntl", "any", "O_NONBLOCK, F_DUPFD_CLOEXEC (fds kept for replay), seals on the state page"),
    ("dup", "any", "fds kept for a replacement worker"),
    ("dup3", "any", "the same"),
    ("close", "any", "every fd once used"),
    ("newfstatat", "any", "fstat of received fds; the interpreter"),
    ("fstat", "any", "the same, where libc uses the old call"),
    ("statx", "any", "the same, where libc uses statx"),
    ("lseek", "any", "the interpreter's streams"),
    ("ioctl", "FIONBIO, FIOCLEX, TCGETS only", "socket.setblocking, set_inheritable, isatty"),
    ("openat", "any", "stats files, the interpreter's lazy imports (Landlock limits where)"),
    ("getdents64", "any", "the interpreter's lazy imports"),
    ("readlink", "any", "the interpreter"),
    ("rename", "any", "the stats file replaced into place"),
    ("renameat", "any", "the same"),
    ("renameat2", "any", "the same"),
    ("unlink", "any", "the socket file and the run directory's files at the end"),
    ("unlinkat", "any", "the same"),
    ("rmdir", "any", "the run directory at the end"),
    ("umask", "any", "the stats file"),
    ("mmap", "no PROT_EXEC", "the allocator; state pages"),
    ("munmap", "any", "the allocator"),
    ("mprotect", "no PROT_EXEC", "the allocator"),
    ("madvise", "any", "the allocator"),
    ("brk", "any", "the allocator"),
    ("mremap", "any", "the allocator"),
    ("futex", "any", "the interpreter's locks"),
    ("getrandom", "any", "the interpreter's hash seed and random (back-off jitter)"),
    ("rt_sigaction", "any", "signal handlers"),
    ("rt_sigprocmask", "any", "signal masks"),
    ("rt_sigreturn", "any", "return from a handler"),
    ("sigaltstack", "any", "the interpreter's fault handler"),
    ("getpid", "any", "log lines"),
    ("gettid", "any", "the interpreter"),
    ("getuid", "any", "the interpreter"),
    ("geteuid", "any", "the interpreter"),
    ("clock_gettime", "any", "time, where the vDSO is not used"),
    ("clock_nanosleep", "any", "back-off before a restart"),
    ("pipe2", "any", "the signal wake-up pipe"),
    ("wait4", "any", "the template is reaped at the end (serve's only child)"),
    ("exit_group", "any", "the end"),
)
SERVE_RULES = {
    "any": lambda: [()],
    "no PROT_EXEC": lambda: [(Cmp(2, CMP_MASKED_EQ, 0, mmap.PROT_EXEC),)],
    "FIONBIO, FIOCLEX, TCGETS only": lambda: [(Cmp(1, CMP_MASKED_EQ, req, U32),) for req in (FIONBIO, FIOCLEX, TCGETS)],
}


def table() -> dict[str, tuple[str, str]]:
    """Every syscall serve's filter allows -> (rule, why)."""
    return {name: (rule, why) for name, rule, why in SERVE_ALLOW}


def rules() -> list[Rule]:
    return [Rule(name, ACT_ALLOW, cmps) for name, (rule, _why) in table().items() for cmps in SERVE_RULES[rule]()]


@dataclass(frozen=True)
class ServeFacts:
    """Where serve may still write or remove, opened O_PATH before confining."""

    run_dir: str                 # the workers' stats files (read); removed at the end
    stats_dir: str | None        # --stats-file's directory
    socket_dir: str              # the socket file is removed at the end


def landlock_grants(facts: ServeFacts) -> list[tuple[str, int]]:
    """(path, rights beneath it): the whole of serve's file-system access after confinement."""
    read = kernel.FS_READ_FILE | kernel.FS_READ_DIR
    grants = [("/", read), (facts.run_dir, read | kernel.FS_REMOVE_FILE),
              (os.path.dirname(facts.run_dir), read | kernel.FS_REMOVE_DIR),
              (facts.socket_dir, read | kernel.FS_REMOVE_FILE)]
    if facts.stats_dir:
        grants.append((facts.stats_dir, read | kernel.FS_MAKE_REG | kernel.FS_WRITE_FILE | kernel.FS_REMOVE_FILE
                       | kernel.FS_TRUNCATE))
    return grants


def name_process(name: bytes) -> None:
    """What ps, top and the kernel's audit records (comm=) call this process."""
    kernel.prctl_str(PR_SET_NAME, name[:15])


def confine_serve(mode: str, facts: ServeFacts) -> dict:
    """Confine serve itself (the module docstring's order); returns what each layer achieved."""
    report: dict = {"mode": mode}
    if mode == "off":
        return report
    report["bounding_dropped"] = kernel.drop_bounding(kernel.cap_last())
    kernel.drop_capabilities()
    kernel.no_new_privs()
    report["landlock_abi"] = abi = kernel.landlock_abi()
    if abi:
        fds = [(os.open(path, os.O_PATH | os.O_CLOEXEC), rights) for path, rights in landlock_grants(facts)]
        try:
            kernel.landlock_restrict(abi, fds)
        finally:
            for fd, _rights in fds:
                os.close(fd)
    seccomp.load(seccomp.ACT_KILL_PROCESS if mode == "strict" else seccomp.ACT_LOG, rules())
    report["seccomp"] = "kill" if mode == "strict" else "log"
    return report

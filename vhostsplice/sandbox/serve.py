"""`serve`'s own confinement (issue 17; docs/security.md "serve"): the smaller set a supervisor needs.

serve parses the hostile front-end's messages too, so it confines itself once its set-up is done (the
tap created and held, the socket listening, the run directory made), before it accepts a front-end.
It cannot give up as much as a worker: it starts workers (fork and exec of this interpreter), and a
worker's set-up (open its tap queue, new namespaces, drop to --user, confine itself) runs beneath
serve's confinement, because every layer is inherited across exec. So, in this order:

  capabilities  the bounding, permitted and effective sets cut to KEEP_CAPS (what a worker's set-up
                uses; each worker then drops to none), inheritable and ambient empty;
  no_new_privs  no exec gains a privilege (a setuid binary, file capabilities);
  Landlock      the file system read-only; execute only this interpreter and its ELF loader; write
                only beneath the run directory, the stats file's directory and /dev/net/tun; remove the
                socket file and the run directory; no TCP bind or connect;
  seccomp       an allow-list: the worker's own list (allowlist.ALLOW, so the worker's filter, stacked
                beneath this one, never meets a call this one kills) plus SERVE_ALLOW below; socket()
                only for AF_UNIX, ioctl only with the requests a worker's set-up makes, clone without
                namespace flags, clone3 refused softly (ENOSYS: libc falls back to clone, whose flags
                the filter can see).

Mode `log` loads the same filter with the log action; `off` does nothing (as for the workers).
"""
from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass

from . import allowlist, kernel, seccomp
from .allowlist import IOCTLS, U32
from .seccomp import ACT_ALLOW, CMP_EQ, CMP_MASKED_EQ, Cmp, Rule, act_errno

CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_NET_ADMIN, CAP_SYS_ADMIN = 5, 6, 7, 8, 12, 21
# What serve keeps for its workers' set-up (each worker ends with none): the reason is the row.
KEEP_CAPS: dict[int, str] = {
    CAP_NET_ADMIN: "a worker attaches its tap queue and brings the tap up (TUNSETIFF, SIOCSIFFLAGS)",
    CAP_SYS_ADMIN: "a worker's new mount namespace (unshare CLONE_NEWNS; seccomp forbids mount itself)",
    CAP_SETPCAP: "a worker empties its bounding set and locks securebits",
    CAP_SETUID: "--user: a worker drops to the user once its tap queue is open",
    CAP_SETGID: "--user: the same, for groups",
    CAP_KILL: "--user: serve stops workers that run as another user (SIGTERM at the end)",
}
PT_INTERP = 3
CLONE_NEW_ANY = 0x7E020000      # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
# ioctls a worker's set-up makes under serve (open_tap, hostfd_inspect), beyond the worker's own list
SETUP_IOCTLS = (0x400454CA, 0x800454D2, 0x800454D7, 0x400454D8, 0x8933, 0x8913, 0x8914)
# TUNSETIFF, TUNGETIFF, TUNGETVNETHDRSZ, TUNSETVNETHDRSZ, SIOCGIFINDEX, SIOCGIFFLAGS, SIOCSIFFLAGS

# (syscall, rule, who needs it): the calls serve and a worker's start-up make that the worker's list lacks.
SERVE_ALLOW: tuple[tuple[str, str, str], ...] = (
    ("vfork", "any", "serve starts a worker (subprocess.Popen)"),
    ("clone", "no new namespaces", "the same where libc forks with clone"),
    ("execve", "any", "the worker's exec of this interpreter (Landlock: nothing else is executable)"),
    ("wait4", "any", "serve reaps a worker that exited"),
    ("pidfd_open", "any", "subprocess waits on a worker"),
    ("kill", "any", "serve stops its workers (SIGTERM) at the end; Landlock scopes signals to its own"),
    ("close_range", "any", "the worker's exec closes every fd it is not passed"),
    ("dup2", "any", "the worker's stdin/stdout/stderr set up before exec"),
    ("socketpair", "any", "each worker's channel to serve"),
    ("socket", "AF_UNIX only", "a worker asks its tap's flags and MTU through a unix datagram socket"),
    ("accept4", "any", "the front-end connects"),
    ("connect", "any", "--user: a worker's name lookup asks nscd (socket() makes unix sockets only)"),
    ("pselect6", "any", "waiting for a worker's reply with a timeout"),
    ("clock_nanosleep", "any", "back-off before a restart"),
    ("openat", "any", "the interpreter's imports in serve and each new worker; stats; Landlock limits it"),
    ("getdents64", "any", "the interpreter's imports (directory listings)"),
    ("readlink", "any", "the interpreter's start-up"),
    ("access", "any", "the interpreter's start-up"),
    ("faccessat2", "any", "a worker checks its stats directory is writable"),
    ("fstatfs", "any", "a worker checks its state page (--state-fd) is a memfd or on tmpfs"),
    ("flock", "any", "a worker locks its state page: one worker per page"),
    ("pread64", "any", "the dynamic loader of each new worker"),
    ("mmap", "any", "the dynamic loader maps libraries executable (a worker forbids PROT_EXEC itself)"),
    ("mprotect", "any", "the same"),
    ("arch_prctl", "any", "a new worker's thread pointer"),
    ("set_tid_address", "any", "a new worker's start-up"),
    ("set_robust_list", "any", "a new worker's start-up"),
    ("rseq", "any", "a new worker's start-up"),
    ("prlimit64", "any", "a new worker's start-up"),
    ("uname", "any", "a new worker's start-up"),
    ("sysinfo", "any", "a new worker's start-up"),
    ("getcwd", "any", "a new worker's start-up"),
    ("getuid", "any", "a new worker's start-up"),
    ("geteuid", "any", "a new worker's start-up"),
    ("getgid", "any", "a new worker's start-up"),
    ("getegid", "any", "a new worker's start-up"),
    ("getresuid", "any", "--user: a worker's drop"),
    ("getresgid", "any", "--user: a worker's drop"),
    ("getgroups", "any", "--user: a worker's drop"),
    ("setresuid", "any", "--user: a worker's drop"),
    ("setresgid", "any", "--user: a worker's drop"),
    ("setgroups", "any", "--user: a worker's drop"),
    ("epoll_create1", "any", "serve's and each worker's loop"),
    ("sched_getaffinity", "any", "--cpus: a worker checks its CPU is allowed"),
    ("sched_setaffinity", "any", "--cpus: a worker pins itself to its CPU"),
    ("setpriority", "any", "--nice (a worker's placement)"),
    ("sched_setscheduler", "any", "--sched (a worker's placement)"),
    ("umask", "any", "serve's stats file"),
    ("rename", "any", "serve's stats file replaced into place (Landlock: beneath its directory only)"),
    ("unlink", "any", "the socket file at the end; the run directory's files"),
    ("rmdir", "any", "the run directory at the end"),
    ("ioctl", "the tun and interface requests a worker's set-up makes",
     "a worker's tap queue (TUNSETIFF, TUNGETIFF, vnet header size), its flags and MTU, plus the worker's list"),
    ("unshare", "no new user or network namespace", "a worker's new mount, IPC and UTS namespaces"),
    ("prctl", "any", "a worker's bounding set, securebits, no_new_privs, seccomp"),
    ("capset", "any", "a worker drops its capabilities"),
    ("capget", "any", "a worker reads its capabilities"),
    ("seccomp", "any", "a worker loads its own filter beneath this one"),
    ("landlock_create_ruleset", "any", "a worker's own Landlock domain, nested in serve's"),
    ("landlock_add_rule", "any", "the same"),
    ("landlock_restrict_self", "any", "the same"),
)
# Refused without a kill: (syscall, errno, why).
SERVE_SOFT_DENY: tuple[tuple[str, int, str], ...] = (
    ("clone3", 38, "its flags sit in memory the filter cannot read: ENOSYS makes libc use clone"),
)


def _ioctls() -> list[tuple[Cmp, ...]]:
    return [(Cmp(1, CMP_MASKED_EQ, req, U32),) for req in (*IOCTLS, *SETUP_IOCTLS)]


SERVE_RULES = {
    "any": lambda: [()],
    "AF_UNIX only": lambda: [(Cmp(0, CMP_EQ, socket.AF_UNIX),)],
    "no new namespaces": lambda: [(Cmp(0, CMP_MASKED_EQ, 0, CLONE_NEW_ANY),)],
    "no new user or network namespace": lambda: [(Cmp(0, CMP_MASKED_EQ, 0, 0x50000000),)],
    "the tun and interface requests a worker's set-up makes": _ioctls,
}


def table() -> dict[str, tuple[str, str]]:
    """Every syscall serve's filter allows -> (rule, why): SERVE_ALLOW over the worker's own list (a
    worker's argument rule does not apply to serve, which also runs its start-up: `any` there)."""
    rows = {name: ("any", f"a worker: {why}") for name, _rule, why in allowlist.ALLOW}
    rows.update({name: (rule, why) for name, rule, why in SERVE_ALLOW})
    return rows


def rules() -> list[Rule]:
    out = [Rule(name, ACT_ALLOW, cmps) for name, (rule, _why) in table().items() for cmps in SERVE_RULES[rule]()]
    return out + [Rule(name, act_errno(code)) for name, code, _why in SERVE_SOFT_DENY]


@dataclass(frozen=True)
class ServeFacts:
    """What serve may still write (directories) and run (files), opened O_PATH before confining."""

    run_dir: str                 # the workers' stats files; removed at the end
    stats_dir: str | None        # --stats-file's directory
    socket_dir: str              # the socket file is removed at the end


def _loader(executable: str) -> str | None:
    """The ELF interpreter (PT_INTERP) of a 64-bit little-endian EXECUTABLE: exec opens it too, so
    Landlock must let it run. None for a static binary."""
    with open(executable, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == PT_INTERP:
                f.seek(p_offset)
                return os.path.realpath(f.read(p_filesz).rstrip(b"\0").decode())
    return None


def landlock_grants(facts: ServeFacts) -> list[tuple[str, int]]:
    """(path, rights beneath it): the whole of serve's file-system access after confinement."""
    read = kernel.FS_READ_FILE | kernel.FS_READ_DIR
    write_in = kernel.FS_MAKE_REG | kernel.FS_WRITE_FILE | kernel.FS_REMOVE_FILE | kernel.FS_TRUNCATE | read
    exe = os.path.realpath(sys.executable)
    grants = [("/", read), (exe, kernel.FS_EXECUTE | kernel.FS_READ_FILE), ("/dev/net/tun",
              kernel.FS_READ_FILE | kernel.FS_WRITE_FILE | kernel.FS_IOCTL_DEV), (facts.run_dir, write_in),
              (os.path.dirname(facts.run_dir), kernel.FS_REMOVE_DIR | read),
              (facts.socket_dir, kernel.FS_REMOVE_FILE | read)]
    loader = _loader(exe)
    if loader:
        grants.append((loader, kernel.FS_EXECUTE | kernel.FS_READ_FILE))
    if facts.stats_dir:
        grants.append((facts.stats_dir, write_in))
    return grants


def confine_serve(mode: str, facts: ServeFacts) -> dict:
    """Confine serve itself (the module docstring's order); returns what each layer achieved."""
    report: dict = {"mode": mode}
    if mode == "off":
        return report
    report["capabilities_kept"] = kernel.limit_capabilities(set(KEEP_CAPS), kernel.cap_last())
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

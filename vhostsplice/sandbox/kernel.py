"""The kernel interfaces of confinement other than seccomp, through ctypes: capabilities (capset, the
bounding and ambient sets, securebits), no_new_privs, namespaces (unshare) and Landlock (its three
syscalls; uapi linux/landlock.h). Each step returns what it achieved or raises SetupError with the errno.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from ..errors import SetupError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT and SECBIT_KEEP_CAPS (off), both locked (linux/securebits.h): uid 0 gains nothing on exec, and
# a --user drop (setresuid) still clears every capability (SECBIT_NO_SETUID_FIXUP must stay off)
SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x20
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000

# Landlock (kernel >= 5.13): the syscall numbers are the same on every architecture.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR, FS_REMOVE_DIR, FS_REMOVE_FILE = (1 << n for n in range(6))
FS_MAKE_REG = 1 << 8
FS_TRUNCATE = 1 << 14
# Every file-system right each ABI version knows (all of them are handled: none is granted by default).
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2        # ABI 4
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2    # ABI 6


def _err(what: str) -> SetupError:
    code = ctypes.get_errno() or errno.EPERM
    return SetupError(f"{what}: {os.strerror(code)}", code)


def prctl(option: int, arg: int, what: str) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise _err(what)


def cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_bounding(last: int) -> bool:
    """Empty the bounding set and lock securebits so uid 0 never regains capabilities on exec. Needs
    CAP_SETPCAP: False (nothing changed) without it."""
    try:
        prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, "PR_SET_SECUREBITS")
    except SetupError as exc:
        if exc.errno != errno.EPERM:
            raise
        return False
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP {cap}")
    return True


def drop_capabilities() -> None:
    """Ambient set cleared, then effective, permitted and inheritable set to nothing (capset v3)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    header = ctypes.create_string_buffer(struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(bytes(24))       # two __user_cap_data_struct of three u32
    if _libc.capset(header, data) != 0:
        raise _err("capset (drop every capability)")


def prctl_str(option: int, value: bytes) -> None:
    if _libc.prctl(option, ctypes.c_char_p(value), 0, 0, 0) != 0:
        raise _err(f"prctl {option}")


def no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")


def unshare_namespaces() -> list[str]:
    """New mount, IPC and UTS namespaces, each where the kernel and our privileges allow it."""
    done = []
    for name, flag in (("mnt", CLONE_NEWNS), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS)):
        if _libc.unshare(flag) == 0:
            done.append(name)
    return done


def landlock_abi() -> int:
    """The Landlock ABI version the running kernel offers, 0 if none (older kernel, or not enabled)."""
    rc = _libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, rc)


def landlock_restrict(abi: int, grants: list[tuple[int, int]]) -> None:
    """Restrict this process to no file-system access except `grants` (directory fd, rights beneath it),
    no TCP bind/connect (ABI 4) and no signals or abstract unix sockets outside it (ABI 6)."""
    fs = FS_RIGHTS_BY_ABI.get(abi, FS_RIGHTS_BY_ABI[5])
    fields = [fs] + ([NET_BIND_TCP | NET_CONNECT_TCP] if abi >= 4 else []) + \
        ([SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL] if abi >= 6 else [])
    attr = ctypes.create_string_buffer(struct.pack(f"{len(fields)}Q", *fields))
    ruleset = _libc.syscall(LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr.raw)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _err("landlock_create_ruleset")
    try:
        for dir_fd, rights in grants:
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, dir_fd))
            if _libc.syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                             rule, ctypes.c_uint32(0)) != 0:
                raise _err("landlock_add_rule")
        if _libc.syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise _err("landlock_restrict_self")
    finally:
        os.close(ruleset)

"""libseccomp through cffi in out-of-line ABI mode: the library is opened at run time (libseccomp.so.2),
nothing is compiled at `pip install` (docs/security.md, "Choices"); the declarations are _seccomp_build.py's.

This is the only module that holds libseccomp's cffi objects, and it holds them only while it builds and
loads one filter: the filter context is released before `load` returns (C owns no lifetime here either).
The numbers below are libseccomp's stable ABI (seccomp.h): the actions are the kernel's SECCOMP_RET_*
values, the comparison operators the `enum scmp_compare` order.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ..errors import SetupError

LIBRARY = "libseccomp.so.2"

ACT_KILL_PROCESS = 0x80000000
ACT_ALLOW = 0x7FFF0000
ACT_LOG = 0x7FFC0000


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# enum scmp_compare
CMP_NE, CMP_EQ, CMP_MASKED_EQ = 1, 4, 7
# enum scmp_filter_attr
ATTR_ACT_BADARCH, ATTR_CTL_NNP, ATTR_CTL_OPTIMIZE = 2, 3, 8
OPTIMIZE_BINARY_TREE = 2    # libseccomp >= 2.5: a binary search over syscall numbers, not a linear chain
NR_UNKNOWN = -1     # __NR_SCMP_ERROR: a name this architecture does not have


@dataclass(frozen=True)
class Cmp:
    """One argument comparison: argument `arg` OP datum (MASKED_EQ: (arg & mask) == datum)."""

    arg: int
    op: int
    datum: int
    mask: int = 0

    def pair(self) -> tuple[int, int]:
        return (self.mask, self.datum) if self.op == CMP_MASKED_EQ else (self.datum, 0)


@dataclass(frozen=True)
class Rule:
    syscall: str
    action: int
    args: tuple[Cmp, ...] = ()


_lib = None


def library():
    """(ffi, lib) of libseccomp, opened once; None when it is not installed."""
    global _lib
    if _lib is None:
        from ._seccomp_abi import ffi       # made at install from _seccomp_build.py's declarations
        try:
            _lib = (ffi, ffi.dlopen(LIBRARY))
        except OSError:
            _lib = False
    return _lib or None


def version() -> str | None:
    found = library()
    if found is None:
        return None
    v = found[1].seccomp_version()
    return f"{v.major}.{v.minor}.{v.micro}"


def resolve(name: str) -> int:
    found = library()
    return NR_UNKNOWN if found is None else found[1].seccomp_syscall_resolve_name(name.encode())


def name_of(nr: int) -> str | None:
    """The native architecture's name of syscall NR (libseccomp allocates it; freed here at once)."""
    found = library()
    if found is None:
        return None
    ffi, lib = found
    raw = lib.seccomp_syscall_resolve_num_arch(0, nr)
    if raw == ffi.NULL:
        return None
    try:
        return ffi.string(raw).decode()
    finally:
        lib.free(raw)


def load(default: int, rules: list[Rule]) -> None:
    """Build the filter (default action, then every rule), load it into this process, release it."""
    found = library()
    if found is None:
        raise SetupError(f"--sandbox strict: {LIBRARY} is not installed (Debian: libseccomp2)", errno.ENOSYS)
    ffi, lib = found
    ctx = lib.seccomp_init(default)
    if ctx == ffi.NULL:
        raise SetupError("seccomp_init failed", errno.ENOMEM)
    try:
        _check(lib.seccomp_attr_set(ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "seccomp_attr_set(ACT_BADARCH)")
        _check(lib.seccomp_attr_set(ctx, ATTR_CTL_NNP, 1), "seccomp_attr_set(CTL_NNP)")
        # Every syscall of the datapath (readv/writev, epoll_wait, eventfd reads and writes) runs the filter:
        # a linear chain of ~70 rules cost 16-23 % of the 64 B packet rate (benchmarks/RESULTS.md). An older
        # libseccomp without the attribute keeps its default order (the filter is the same, only slower).
        lib.seccomp_attr_set(ctx, ATTR_CTL_OPTIMIZE, OPTIMIZE_BINARY_TREE)
        for rule in rules:
            _add(ffi, lib, ctx, rule)
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _add(ffi, lib, ctx, rule: Rule) -> None:
    nr = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
    if nr == NR_UNKNOWN:
        return          # not a syscall of this architecture (e.g. an x86_64-only name on arm64)
    args = ffi.new("struct scmp_arg_cmp[]", max(1, len(rule.args)))
    for i, cmp in enumerate(rule.args):
        args[i].arg, args[i].op = cmp.arg, cmp.op
        args[i].datum_a, args[i].datum_b = cmp.pair()
    _check(lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.args), args), f"seccomp rule {rule.syscall}")


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SetupError(f"{what}: {os.strerror(-rc)}", -rc)

"""The worker's io_uring cannot be used for anything but readv/writev of its host fd (docs/security.md,
"The io_uring"). io_uring operations do not pass through seccomp, so the ring itself must refuse: a child
builds the ring exactly as a worker does (Datapath.enable_uring: disabled, the host fd as fixed file 0,
the restrictions, enabled), then writes SQEs of its own into it and calls io_uring_register; confined
with the worker's own filter, only io_uring_enter on that ring is left. No root needed (no_new_privs).
"""
from __future__ import annotations

import errno
import json
import signal
import subprocess
import textwrap

import pytest

from vhostsplice.serve.selfexec import self_argv, self_env

CHILD = textwrap.dedent("""
    import ctypes, errno, json, os, socket, struct, sys
    from vhostsplice.device.datapath import Datapath
    from vhostsplice.sandbox import allowlist, seccomp
    ENTER, REGISTER, SETUP = 426, 427, 425            # the generic syscall table (x86_64, arm64)
    OP_READV, OP_OPENAT = 1, 18
    FIXED_FILE, IO_LINK = 1, 4
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    host, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dp = Datapath(host.fileno())
    assert dp.enable_uring() == "", dp.uring_why
    u, (ring, sqes) = dp._pair.uring, dp._uring[1]
    other = os.open("/dev/null", os.O_RDONLY)
    buf = ctypes.create_string_buffer(256)
    iov = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 256)

    def word(off, value=None):
        if value is None:
            return struct.unpack_from("<I", ring, off)[0]
        struct.pack_into("<I", ring, off, value)

    def submit(op, flags, fd, personality=0):
        '''One SQE of our own through the worker's ring: its completion's result (or the enter's -errno).'''
        tail = word(u.o_sq_tail)
        i = tail & u.sq_mask
        sqe = bytearray(64)
        struct.pack_into("<BBHiQQI", sqe, 0, op, flags, 0, fd, 0, ctypes.addressof(iov), 1)
        struct.pack_into("<QHH", sqe, 32, 0xabc, 0, personality)
        sqes[64 * i:64 * i + 64] = bytes(sqe)
        word(u.o_sq_array + 4 * i, i)
        word(u.o_sq_tail, tail + 1)
        rc = libc.syscall(ENTER, dp.uring_fd, 1, 1, 1, None, 0)
        if rc < 0:
            return -ctypes.get_errno()
        head = word(u.o_cq_head)
        _data, res, _flags = struct.unpack_from("<QiI", ring, u.o_cqes + 16 * (head & u.cq_mask))
        word(u.o_cq_head, head + 1)
        return res

    def register(op):
        arg = (ctypes.c_int * 2)(other, -1)
        rc = libc.syscall(REGISTER, dp.uring_fd, op, arg, 1)
        return -ctypes.get_errno() if rc < 0 else rc

    out = {}
    peer.send(b"x" * 100)
    out["readv_host"] = submit(OP_READV, FIXED_FILE, 0)            # what the worker does: allowed
    out["openat"] = submit(OP_OPENAT, FIXED_FILE, 0)
    out["readv_plain_fd"] = submit(OP_READV, 0, other)
    out["readv_fixed_1"] = submit(OP_READV, FIXED_FILE, 1)
    out["readv_link"] = submit(OP_READV, FIXED_FILE | IO_LINK, 0)
    out["readv_personality"] = submit(OP_READV, FIXED_FILE, 0, personality=1)
    for name, op in (("register_buffers", 0), ("register_files", 2), ("files_update", 6),
                     ("register_eventfd", 4), ("register_personality", 9), ("enable_rings", 12),
                     ("register_restrictions", 11)):
        out[name] = register(op)
    what = sys.argv[1]
    if what == "refusals":
        print(json.dumps(out))
        sys.exit(0)
    seccomp.load(seccomp.ACT_KILL_PROCESS, allowlist.rules(allowlist.Facts(uring_fd=dp.uring_fd)))
    peer.send(b"y" * 50)
    print(json.dumps({"confined_readv": submit(OP_READV, FIXED_FILE, 0)}), flush=True)
    if what == "setup":
        libc.syscall(SETUP, 4, ctypes.create_string_buffer(120))
    elif what == "register":
        register(0)
    elif what == "enter_other":
        libc.syscall(ENTER, other, 0, 0, 0, None, 0)
    print("survived", flush=True)
""")


def _child(what: str) -> subprocess.CompletedProcess:
    python = self_argv()[:-2]       # the interpreter (and -P: the installed package)
    return subprocess.run([*python, "-c", CHILD, what], env=self_env(), capture_output=True, text=True, timeout=60)


def _ring_or_skip(out: subprocess.CompletedProcess) -> None:
    if "io_uring_setup" in out.stderr:
        pytest.skip(f"no io_uring here: {out.stderr.strip().splitlines()[-1]}")


def test_the_ring_reads_the_host_fd_and_refuses_everything_else():
    out = _child("refusals")
    _ring_or_skip(out)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got.pop("readv_host") == 100                            # the one thing the worker does
    assert got.pop("readv_fixed_1") == -errno.EBADF                 # no fixed file but the host fd
    assert got.pop("readv_personality") == -errno.EINVAL            # no personality can be registered
    assert got == {name: -errno.EACCES for name in got}, got        # every other opcode, flag, register op


@pytest.mark.parametrize("what", ["setup", "register", "enter_other"])
def test_confined_only_io_uring_enter_on_the_ring_is_left(what):
    out = _child(what)
    _ring_or_skip(out)
    assert out.stdout.splitlines()[:1] == [json.dumps({"confined_readv": 50})], (out.stdout, out.stderr)
    assert out.returncode == -signal.SIGSYS, (out.returncode, out.stdout, out.stderr)

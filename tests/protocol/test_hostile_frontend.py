"""A hostile front-end against the real back-end stack (channel, backend, memory, the C datapath).

One test per vulnerability class of the public vhost-user advisories (docs/fuzzing.md has the table):
each checks the documented exception (its errno is the worker's exit code), that the process keeps
exactly the fds it had (every fd a message carried is kept or closed, never leaked), and where rings
run, that they still work or were stopped.
"""
from __future__ import annotations

import array
import errno
import os
import socket
import struct

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.device.backend import Backend, BackendConfig
from vhostsplice.vhostuser.channel import Channel
from vhostsplice.device.datapath import Datapath, ring_size_ok
from vhostsplice.errors import GuestFaultError, ProtocolError
from vhostsplice.spec import MAX_PAYLOAD, Feature as F, ProtocolFeature as PF, Req, bit
from vhostsplice.testing.hostfd import FakeHostFd
from support.fds import open_fds, same_fds

MEM = 1 << 20
GPA, UVA = 0x4000_0000, 0x7F00_0000_0000


class Env:
    def __init__(self):
        self.fe_sock, be_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.setblocking(False)
        self.channel = Channel(be_sock)
        self.dp = Datapath(self.host.fileno())
        self.backend = Backend(self.channel, self.dp, FakeHostFd(), BackendConfig())
        self.memfd = os.memfd_create("guest")
        os.ftruncate(self.memfd, MEM)

    def handle(self, req, payload=b"", fds=()):
        """The back-end handles one message; fds are dup'ed (the message owns its copies)."""
        self.backend.handle(P.Message(int(req), 1, payload, tuple(os.dup(fd) for fd in fds)))

    def table(self, *regions):
        regions = regions or ((GPA, MEM, UVA, 0),)
        body = P.encode_mem_table(P.MemTable(tuple(P.MemRegion(*r) for r in regions)))
        self.handle(Req.SET_MEM_TABLE, body, (self.memfd,) * len(regions))

    def ring(self, index, num=256, desc=None, avail=None, used=None):
        base = UVA + 0x10000 * index
        desc = base if desc is None else desc
        avail = base + 0x1000 * (num // 256 + 1) * 4 if avail is None else avail
        used = avail + 0x1000 * (num // 256 + 1) if used is None else used
        self.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(index, num)))
        self.handle(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(index, 0, desc, used, avail, 0)))
        kick = os.eventfd(0)
        try:
            self.handle(Req.SET_VRING_KICK, P.encode_vring_file(index), (kick,))
        finally:
            os.close(kick)

    def running(self):
        self.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
        self.table()
        self.ring(0)
        self.ring(1)
        assert self.backend.rings_running and self.dp.running(0) and self.dp.running(1)

    def close(self):
        self.backend.close()
        self.dp.close()
        self.channel.close()
        for s in (self.fe_sock, self.host, self.peer):
            s.close()
        os.close(self.memfd)


@pytest.fixture
def env():
    with same_fds():
        e = Env()
        yield e
        e.close()


def eproto(fn, *args, match=None):
    with pytest.raises(ProtocolError, match=match) as info:
        fn(*args)
    assert info.value.errno == errno.EPROTO


# -- ring sizes and addresses -------------------------------------------------------------------------
@pytest.mark.parametrize("num", [0, 3, 48, 65536, 0xFFFFFFFF])
def test_zero_odd_or_huge_ring_size_is_eproto(env, num):
    """CVE-2013-4151 / CVE-2021-3839 class: a ring size past the bound or not a power of 2."""
    eproto(env.handle, Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, num)), match="power of 2")
    assert env.backend.rings[0].num == 0


SIZES = sorted({0, 48, 65536, 0xFFFF_FFFF} | {(1 << k) + d for k in range(17) for d in (-1, 0, 1)})


def test_set_vring_num_follows_the_cores_one_size_rule(env):
    """SET_VRING_NUM and the ring layout answer from one rule (datapath.ring_size_ok, the core's
    vs_ring_num_ok): a size the core would refuse never gets past the message, and none it takes is
    refused here."""
    for num in SIZES:
        msg = P.encode_vring_state(P.VringState(0, num))
        if ring_size_ok(num):
            env.handle(Req.SET_VRING_NUM, msg)
            assert env.backend.rings[0].num == num
        else:
            eproto(env.handle, Req.SET_VRING_NUM, msg, match="power of 2")


def test_largest_ring_size_is_accepted(env):
    env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(1, 32768)))
    assert env.backend.rings[1].num == 32768


@pytest.mark.parametrize("field,delta", [("desc", 8), ("avail", 1), ("used", 2)])
def test_unaligned_ring_is_eproto(env, field, delta):
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    env.table()
    addrs = {"desc": UVA, "avail": UVA + 0x1000, "used": UVA + 0x2000}
    addrs[field] += delta
    with pytest.raises(ProtocolError, match="misaligned"):
        env.ring(0, num=256, **addrs)
    assert not env.dp.running(0)


def test_ring_whose_mapping_is_misaligned_is_eproto(env):
    """The uva is aligned but the region's uva and its mapping disagree by 2: the host pointer of the used
    ring is not 4-aligned, which the core's atomics need. A protocol error, not a crash."""
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    env.table((GPA, MEM - 4096, UVA + 2, 4096))
    with pytest.raises(ProtocolError, match="misaligned"):
        env.ring(0, num=256, desc=UVA + 0x1000, avail=UVA + 0x3000, used=UVA + 0x4000)
    assert not env.dp.running(0)


@pytest.mark.parametrize("where", ["below", "past", "straddles", "top"])
def test_ring_address_outside_memory_is_efault(env, where):
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    env.table()
    desc = {"below": UVA - 0x1000, "past": UVA + MEM, "straddles": UVA + MEM - 0x800,
            "top": (1 << 64) - 0x1000}[where]
    with pytest.raises(GuestFaultError) as info:
        env.ring(1, num=256, desc=desc, avail=UVA + 0x8000, used=UVA + 0x9000)
    assert info.value.errno == errno.EFAULT and not env.dp.running(1)


def test_vring_log_address_wrapping_is_counted_never_written(env):
    """A used-ring log address of 2^64 - 1 (any u64 is legal in SET_VRING_ADDR): with logging on, the
    used ring's stores wrap past 2^64 in log space: counted as log_overflow, nothing written, rings run."""
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1) | bit(F.VHOST_F_LOG_ALL)))
    env.table()
    logfd = log_memfd(LOG_SIZE)
    env.handle(Req.SET_LOG_BASE, P.encode_log(P.LogArea(LOG_SIZE, 0)), (logfd,))
    env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, 256)))
    env.handle(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(0, 1, UVA, UVA + 0x2000, UVA + 0x1000,
                                                                   (1 << 64) - 1)))
    kick = os.eventfd(0)
    env.handle(Req.SET_VRING_KICK, P.encode_vring_file(0), (kick,))
    os.close(kick)
    assert env.dp.running(0)
    env.dp.poll()
    assert env.dp.log_stats()["log_overflow"] >= 1
    assert os.pread(logfd, LOG_SIZE, 0) == bytes(LOG_SIZE)
    os.close(logfd)


# -- memory tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("regions", [
    ((GPA, MEM, UVA, 0), (GPA + MEM - 4096, MEM, UVA + 2 * MEM, 0)),        # gpa ranges overlap
    ((GPA, MEM, UVA, 0), (GPA + 2 * MEM, MEM, UVA + 4096, 0)),              # uva ranges overlap
    (((1 << 64) - 4096, MEM, UVA, 0),),                                      # gpa wraps past 2^64
    ((GPA, MEM, (1 << 64) - 4096, 0),),                                      # uva wraps
    ((GPA, 0, UVA, 0),),                                                     # empty region
    ((GPA, MEM, UVA, MEM),),                                                 # offset past the fd's end
    ((GPA, MEM, UVA, (1 << 64) - 4096),),                                    # offset + size wraps
    ((GPA, 1 << 62, UVA, 0),),                                               # larger than the fd
])
def test_bad_region_table_is_eproto_and_closes_its_fds(env, regions):
    eproto(env.table, *regions)
    assert env.backend.memory is None


def test_memory_table_replaced_while_rings_run(env):
    """The same guest memory through a new mapping: rings are re-mapped and keep running; the old
    mapping is unmapped (its pages were only ours through it)."""
    env.running()
    old = env.backend.memory
    env.table()
    assert env.backend.memory is not old and old.regions == []
    assert env.dp.running(0) and env.dp.running(1)
    env.dp.poll()


def test_memory_table_that_drops_the_rings_stops_them(env):
    env.running()
    old = env.backend.memory
    with pytest.raises(GuestFaultError) as info:
        env.table((GPA + 2 * MEM, MEM, UVA + 2 * MEM, 0))
    assert info.value.errno == errno.EFAULT
    assert not env.dp.running(0) and not env.dp.running(1)
    assert old.regions == []                       # the old mapping went too: nothing refers to it now


def test_too_many_regions_is_eproto(env):
    body = struct.pack("<II", 9, 0) + struct.pack("<QQQQ", GPA, MEM, UVA, 0) * 9
    eproto(env.handle, Req.SET_MEM_TABLE, body, (env.memfd,) * 8)


# -- fds: too many, too few, replaced -----------------------------------------------------------------
@pytest.mark.parametrize("regions,nfds", [(2, 1), (1, 2), (2, 3)])
def test_region_fd_count_mismatch_is_eproto(env, regions, nfds):
    body = P.encode_mem_table(P.MemTable(tuple(P.MemRegion(GPA + i * MEM, MEM, UVA + i * MEM, 0)
                                               for i in range(regions))))
    eproto(env.handle, Req.SET_MEM_TABLE, body, (env.memfd,) * nfds, match="file descriptors")


@pytest.mark.parametrize("nofd,nfds", [(True, 1), (False, 0), (False, 2)])
def test_kick_fd_count_mismatch_is_eproto(env, nofd, nfds):
    kick = os.eventfd(0)
    try:
        eproto(env.handle, Req.SET_VRING_KICK, P.encode_vring_file(0, nofd=nofd), (kick,) * nfds)
    finally:
        os.close(kick)


@pytest.mark.parametrize("kind", ["pipe", "memfd", "socket"])
def test_a_kick_fd_that_is_not_an_eventfd_is_eproto(env, kind):
    """A kick is an eventfd's counter: a regular file (epoll refuses it), a pipe or a socket (their reads
    are not the 8-byte counter) would end the worker outside the exit-code table. Refused, fd closed."""
    if kind == "pipe":
        fd, other = os.pipe()
    elif kind == "memfd":
        fd, other = os.memfd_create("kick"), None
    else:
        a, b = socket.socketpair()
        fd, other = a.detach(), b.detach()
    try:
        env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, 256)))
        eproto(env.handle, Req.SET_VRING_KICK, P.encode_vring_file(0), (fd,), match="not an eventfd")
        assert env.backend.rings[0].kick_fd is None
    finally:
        for f in (fd, other):
            if f is not None:
                os.close(f)


def test_kick_for_a_ring_we_do_not_serve_closes_the_fd(env):
    """CVE-2011-2512 / CVE-2020-10723 class: a ring index outside the pair."""
    kick = os.eventfd(0)
    try:
        eproto(env.handle, Req.SET_VRING_KICK, P.encode_vring_file(5), (kick,), match="one queue pair")
    finally:
        os.close(kick)


def test_replacing_fds_again_and_again_leaks_none(env):
    """CVE-2019-14818 (DPDK): repeated ring messages leaked fds. Each replaced kick/call/err fd is closed."""
    env.running()
    base = None
    for _ in range(50):
        base = base or len(open_fds())        # before the first round: ring 1 holds only its kick fd
        for req in (Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR):
            fd = os.eventfd(0)
            env.handle(req, P.encode_vring_file(1), (fd,))
            os.close(fd)
        env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(1, 256)))
    assert len(open_fds()) == base + 2        # + call and err, which ring 1 had none of at first


def frame(request, size, payload=b"", fds=(), flags=1):
    data = struct.pack("<III", request, flags, size) + payload
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    return [data], anc


@pytest.mark.parametrize("nfds", [9, 16])
def test_more_fds_than_any_message_carries(env, nfds):
    """CVE-2022-0669 (DPDK): unexpected fds as ancillary data were never closed. The channel refuses the
    message; what the kernel delivered is closed, what it cut off never became ours."""
    fds = [os.eventfd(0) for _ in range(nfds)]
    try:
        env.fe_sock.sendmsg(*frame(Req.SET_OWNER, 0, fds=fds))
    finally:
        for fd in fds:
            os.close(fd)
    eproto(env.channel.recv, match="too many file descriptors")


@pytest.mark.parametrize("req", [Req.SET_OWNER, Req.GET_FEATURES, Req.SET_VRING_NUM, 999])
def test_fds_on_a_message_that_takes_none_are_closed(env, req):
    fds = [os.eventfd(0) for _ in range(3)]
    try:
        env.fe_sock.sendmsg(*frame(req, 8, bytes(8), fds=fds))
    finally:
        for fd in fds:
            os.close(fd)
    msg = env.channel.recv()
    assert len(msg.fds) == 3
    eproto(env.backend.handle, msg)


# -- message sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [MAX_PAYLOAD + 1, 1 << 20, 0xFFFFFFFF])
def test_oversized_message_is_refused_before_reading_it(env, size):
    fd = os.eventfd(0)
    try:
        env.fe_sock.sendmsg(*frame(Req.SET_MEM_TABLE, size, bytes(40), fds=[fd]))
    finally:
        os.close(fd)
    eproto(env.channel.recv, match="exceeds")


def test_truncated_message_then_close_is_eproto(env):
    env.fe_sock.sendall(struct.pack("<III", Req.SET_VRING_NUM, 1, 8) + b"\x00\x00")
    env.fe_sock.shutdown(socket.SHUT_WR)
    eproto(env.channel.recv, match="middle of a message")


@pytest.mark.parametrize("req", [Req.SET_VRING_NUM, Req.SET_VRING_ADDR, Req.SET_FEATURES, Req.SET_VRING_KICK])
@pytest.mark.parametrize("delta", [-1, 1, 64])
def test_payload_size_off_by_some_bytes_is_eproto(env, req, delta):
    good = {Req.SET_VRING_NUM: 8, Req.SET_VRING_ADDR: 40, Req.SET_FEATURES: 8, Req.SET_VRING_KICK: 8}[req]
    eproto(env.handle, req, bytes(good + delta))


# -- dirty log ----------------------------------------------------------------------------------------
LOG_SIZE = (GPA + MEM) // 4096 // 8          # one bit per page of guest memory, from GPA 0


def log_memfd(size: int) -> int:
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


def log_reply(env):
    """The one reply SET_LOG_BASE always gets: flags VERSION|REPLY (0x5), a u64 0."""
    data = env.fe_sock.recv(64, socket.MSG_DONTWAIT)
    assert struct.unpack("<IIIQ", data) == (Req.SET_LOG_BASE, 5, 8, 0)


def log_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:log" in line for line in f)


def test_log_base_maps_the_log_at_its_offset_and_the_core_writes_it(env):
    """A valid log at a non-zero mmap_offset: QEMU's migration start (SET_LOG_BASE, SET_FEATURES + LOG_ALL
    and SET_VRING_ADDR flags 1 on running rings) turns logging on without restarting the rings."""
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    env.running()
    fd = log_memfd(4096 + LOG_SIZE)
    try:
        env.handle(Req.SET_LOG_BASE, P.encode_log(P.LogArea(LOG_SIZE, 4096)), (fd,))
        log_reply(env)
        env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1) | bit(F.VHOST_F_LOG_ALL)))
        used_uva = UVA + 0x1000 * 4 + 0x1000                     # where env.ring() put ring 0's used ring
        used_gpa = GPA + (used_uva - UVA)
        env.handle(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(0, 1, UVA, used_uva, UVA + 0x4000,
                                                                       used_gpa)))
        assert env.dp.running(0) and env.dp.running(1)
        env.dp.poll()                                            # RX: no buffers, notifications re-armed
        page = used_gpa // 4096
        log = os.pread(fd, 4096 + LOG_SIZE, 0)
        assert log[:4096] == bytes(4096)                          # the bytes before the offset: untouched
        assert log[4096 + page // 8] == 1 << (page % 8)           # used->flags of ring 0 (offset 0)
        assert sum(map(bool, log)) == 1
        # used->flags set (notify off) then cleared (RX starved, notify on): two writes, one page
        assert env.dp.log_stats() == {"log_all": True, "log_size": LOG_SIZE, "log_writes": 2, "log_overflow": 0}
        assert log_maps() == 1
    finally:
        os.close(fd)


def test_log_all_toggled_alone_on_running_rings(env):
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    env.running()
    v1 = bit(F.F_VERSION_1)
    env.handle(Req.SET_FEATURES, P.encode_u64(v1 | bit(F.VHOST_F_LOG_ALL)))
    assert env.dp.log_stats()["log_all"] and env.dp.running(0)
    env.handle(Req.SET_FEATURES, P.encode_u64(v1))
    assert not env.dp.log_stats()["log_all"] and env.dp.running(0)
    eproto(env.handle, Req.SET_FEATURES, P.encode_u64(v1 | bit(F.VHOST_F_LOG_ALL) | bit(F.RING_F_EVENT_IDX)),
           match="while rings were running")


def test_second_log_base_replaces_the_first(env):
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    before = log_maps()
    for size in (LOG_SIZE, 2 * LOG_SIZE, LOG_SIZE):
        fd = log_memfd(size)
        env.handle(Req.SET_LOG_BASE, P.encode_log(P.LogArea(size, 0)), (fd,))
        os.close(fd)
        log_reply(env)
        assert log_maps() == before + 1                          # the old mapping is gone
    env.handle(Req.RESET_OWNER)
    assert log_maps() == before and not env.dp.log_stats()["log_all"]


@pytest.mark.parametrize("size,offset,fd_size", [
    (0, 0, 4096),                                # empty log
    ((1 << 30) + 1, 0, 4096),                    # above MAX_LOG_SIZE
    (4096, 1 << 63, 4096),                       # offset + size past 2^63
    (1 << 63, 1 << 63, 4096),                    # CVE-2020-10722: size + offset wraps
    ((1 << 64) - 1, 4096, 4096),
    (4096, (1 << 64) - 4096, 4096),              # wraps to 0
    (4096, 0, 4095),                             # the fd is one byte short: SIGBUS if mapped
    (4096, 4096, 4096),                          # offset past the fd's end
])
def test_bad_log_base_is_eproto_and_its_fd_closed(env, size, offset, fd_size):
    """CVE-2020-10722 (DPDK): SET_LOG_BASE's size + offset overflowed. Every range is checked against the
    fd before anything is mapped; the fd is closed (the env fixture checks no fd is left behind)."""
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    fd = log_memfd(fd_size)
    try:
        eproto(env.handle, Req.SET_LOG_BASE, struct.pack("<QQ", size, offset), (fd,))
    finally:
        os.close(fd)
    assert env.backend.log is None and log_maps() == 0


@pytest.mark.parametrize("case", ["no_shmfd", "eventfd", "no_fd", "two_fds", "u64_payload", "17_bytes"])
def test_malformed_log_base_is_eproto_and_closes_its_fds(env, case):
    if case != "no_shmfd":
        env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    good = log_memfd(4096)
    fds, payload = (good,), struct.pack("<QQ", 4096, 0)
    if case == "eventfd":
        fds = (os.eventfd(0),)
    elif case == "no_fd":
        fds = ()
    elif case == "two_fds":
        fds = (good, good)
    elif case == "u64_payload":
        payload = struct.pack("<Q", 4096)
    elif case == "17_bytes":
        payload += b"\0"
    try:
        eproto(env.handle, Req.SET_LOG_BASE, payload, fds)
    finally:
        for fd in set(fds) | {good}:
            os.close(fd)
    assert env.backend.log is None


def test_log_fd_is_accepted_and_closed(env):
    """SET_LOG_FD (QEMU 7.2 never sends it): the eventfd is closed, never written; without an fd: EPROTO."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        env.handle(Req.SET_LOG_FD, b"", (fd,))
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        eproto(env.handle, Req.SET_LOG_FD, b"", ())
    finally:
        os.close(fd)


def test_unknown_vring_addr_flags_are_eproto(env):
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    eproto(env.handle, Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(0, 2, UVA, UVA + 0x2000, UVA + 0x1000, 0)),
           match="unknown flags")

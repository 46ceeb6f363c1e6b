"""Fuzz target for the vhost-user control plane: channel.py framing, backend.py handlers, memory.py.

One input decodes into a sequence of steps against one Backend (with a real Datapath over a
socketpair, so memory tables are really mapped and rings really started):
- raw frames into Channel.recv(): any header (request, flags, size), a payload shorter or longer than
  it says, 0..12 fds of any kind (memfd, eventfd, pipe, socket, /dev/null), a peer that closes mid-way;
- structured messages into Backend.handle(): every request, payload sizes off by some bytes, region
  tables (counts, gpa/uva/size/offset at edges, wrapping, overlapping, memfds smaller than the
  region, fds that cannot be mapped), memory slots (ADD/REM_MEM_REG: one region, 0 or 1 fd), ring sizes, addresses,
  indices, features, kick/call/err fds;
- a datapath poll while rings run.
Oracle: only the documented exceptions (VhostspliceError subclasses, each carrying an exit code from
errors.EXIT_TABLE) come out; anything else (KeyError, struct.error, OverflowError, ValueError...) is a
bug; and after the backend is closed the process holds exactly the fds it held before the input.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

from harness import Source

LAST_FEATURES: set = set()
DOCUMENTED = {errno.EINVAL, errno.EPROTO, errno.ENOTSUP, errno.EFAULT, errno.EBADMSG, errno.ECONNRESET,
              errno.EBADFD, errno.EIO, errno.EPIPE}
INTERESTING_U64 = (0, 1, 0x1000, 0x10_0000, 0xFFFF_F000, 1 << 32, (1 << 63), (1 << 64) - 1, (1 << 64) - 0x1000,
                   0x7F00_0000_0000)
MEM_SIZE = 1 << 20
GPA, UVA = 0x4000_0000, 0x7F00_0000_0000


class Undocumented(AssertionError):
    pass


class FdLeak(AssertionError):
    pass


def feedback_files() -> list[str]:
    from vhostsplice.device import backend, memory, memory_requests, ring_requests, vring
    from vhostsplice.vhostuser import channel, protocol
    return [m.__file__ for m in (backend, channel, memory, memory_requests, protocol, ring_requests, vring)]


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


class Session:
    def __init__(self, src: Source):
        from vhostsplice.device import backend, datapath
        from vhostsplice.vhostuser import channel
        from vhostsplice.testing.hostfd import FakeHostFd
        self.src = src
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.setblocking(False)
        self.dp = datapath.Datapath(self.host.fileno())
        # SEND_RARP: the fake has no fd (-1), so an announce is a counted skip
        self.backend = backend.Backend(channel.Channel(self.a), self.dp, FakeHostFd(name="fuzz"),
                                       backend.BackendConfig())
        self.mem = os.memfd_create("fuzz-guest")
        os.ftruncate(self.mem, MEM_SIZE)

    def close(self) -> None:
        self.backend.close()
        self.dp.close()
        for s in (self.a, self.b, self.host, self.peer):
            s.close()
        os.close(self.mem)

    # -- fds of every kind -------------------------------------------------------------------------
    def make_fd(self) -> int:
        k = self.src.below(8)
        if k <= 2:
            return os.dup(self.mem)
        if k == 3:
            small = os.memfd_create("small")
            os.ftruncate(small, self.src.pick((0, 4096, MEM_SIZE // 2)))
            return small
        if k == 4:
            return os.eventfd(0, os.EFD_NONBLOCK)
        if k == 5:
            r, w = os.pipe()
            os.close(w)
            return r
        if k == 6:
            s1, s2 = socket.socketpair()
            s2.close()
            return s1.detach()
        return os.open("/dev/null", os.O_RDWR)

    def fds(self, n: int) -> tuple[int, ...]:
        return tuple(self.make_fd() for _ in range(n))

    def u64(self) -> int:
        s = self.src
        return s.pick(INTERESTING_U64) if s.below(2) else s.u64()

    # -- payloads ------------------------------------------------------------------------------------
    def mem_table(self) -> tuple[bytes, int]:
        s = self.src
        count = s.pick((1, 1, 1, 2, 3, 8, 0, 9, 255))
        regions = [self.region(i) for i in range(min(count, 10))]
        payload = struct.pack("<II", count, 0) + b"".join(regions)
        nfds = min(count, 8) if s.below(4) else s.below(11)
        return payload, nfds

    def region(self, i: int) -> bytes:
        """One region (gpa, size, uva, offset): slot i of the memfd, often bent at an edge."""
        s = self.src
        if s.below(3):
            gpa, size, uva, off = GPA + i * MEM_SIZE, MEM_SIZE, UVA + i * MEM_SIZE, 0
            k = s.below(6)
            if k == 1:
                size = s.pick((0, 1, MEM_SIZE + 1, MEM_SIZE - 4096, 1 << 40, (1 << 64) - 1))
            elif k == 2:
                off = s.pick((1, 4096, MEM_SIZE, (1 << 64) - 4096))
            elif k == 3:
                gpa = s.pick(((1 << 64) - 4096, (1 << 64) - MEM_SIZE, GPA + 4096, 0))
            elif k == 4:
                uva = s.pick(((1 << 64) - 4096, UVA + 4096, 0))
        else:
            gpa, size, uva, off = self.u64(), self.u64(), self.u64(), self.u64()
        return struct.pack("<QQQQ", gpa, size, uva, off)

    def vring_addr(self, index: int) -> bytes:
        s = self.src
        if s.below(3):
            base = UVA + s.pick((0, 0x1000, MEM_SIZE - 0x1000, MEM_SIZE, 2 * MEM_SIZE))
            desc, avail, used = base, base + 0x2000 + s.pick((0, 0, 1)), base + 0x4000 + s.pick((0, 0, 2))
        else:
            desc, avail, used = self.u64(), self.u64(), self.u64()
        return struct.pack("<IIQQQQ", index, s.pick((0, 0, 1, 0xFFFFFFFF)), desc, used, avail, self.u64())

    def payload(self, req: int) -> tuple[bytes, int]:
        from vhostsplice.spec import Req
        s = self.src
        index = s.pick((0, 1, 1, 0, 2, 255, 256, 0xFFFFFFFF))
        if req == Req.SET_MEM_TABLE:
            return self.mem_table()
        if req == Req.SET_VRING_ADDR:
            return self.vring_addr(index), 0
        if req in (Req.ADD_MEM_REG, Req.REM_MEM_REG):   # memory slots: u64 padding, one region
            pad = 0 if s.below(2) else self.u64()
            return struct.pack("<Q", pad) + self.region(s.below(4)), int(req == Req.ADD_MEM_REG or s.below(2) == 0)
        if req in (Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.GET_VRING_BASE, Req.SET_VRING_ENABLE):
            value = s.pick((0, 1, 2, 3, 16, 256, 1024, 32768, 65535, 65536, 0xFFFFFFFF))
            return struct.pack("<II", index, value), 0
        if req in (Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR):
            value = (index & 0xFF) | (0x100 if s.below(4) == 0 else 0) | (s.pick((0, 0, 0, 1 << 9, 1 << 63)))
            return struct.pack("<Q", value), 0 if value & 0x100 else 1
        if req == Req.SET_FEATURES:
            value = self.backend.offered & self.u64() if s.below(3) else self.u64()
            return struct.pack("<Q", value), 0
        if req == Req.SET_PROTOCOL_FEATURES:
            from vhostsplice.device.features import RUN_PROTOCOL_FEATURES
            value = RUN_PROTOCOL_FEATURES & self.u64() if s.below(3) else self.u64()
            return struct.pack("<Q", value), 0
        if req == Req.SET_LOG_BASE:     # a log in the guest memfd (1 MiB) often fits; any u64 otherwise
            if s.below(2):
                return struct.pack("<QQ", s.pick((1, 4096, 0x8200, MEM_SIZE)), s.pick((0, 0, 4096, MEM_SIZE - 4096))), 1
            return struct.pack("<QQ", self.u64(), self.u64()), 1
        return struct.pack("<Q", self.u64()), 0

    # -- steps ----------------------------------------------------------------------------------------
    def step_message(self) -> None:
        from vhostsplice.vhostuser import protocol as P
        from vhostsplice.spec import Req
        s = self.src
        req = s.pick(list(Req)) if s.below(8) else s.u32()
        payload, nfds = self.payload(req)
        k = s.below(8)
        if k == 0:
            payload = payload[:s.below(len(payload) + 1)]
        elif k == 1:
            payload += s.bytes(s.below(16))
        if s.below(6) == 0:
            nfds = s.below(12)
        flags = 1 | (8 if s.below(4) == 0 else 0)
        self.backend.handle(P.Message(int(req), flags, payload, self.fds(nfds)))

    def step_frame(self) -> None:
        """Raw bytes and fds into the channel, as a hostile front-end sends them."""
        import array
        s = self.src
        from vhostsplice.spec import Req
        req = s.pick(list(Req)) if s.below(4) else s.u32()
        size = s.pick((0, 8, 16, 40, 4096, 4097, 1 << 20, 0xFFFFFFFF)) if s.below(2) else s.u16()
        flags = s.pick((1, 1, 9, 0, 2, 3, 5)) if s.below(4) else s.u32()
        body = s.bytes(min(size, 64) if s.below(2) else s.below(80))
        head = struct.pack("<III", req, flags, size)
        cut = s.below(14) if s.below(6) == 0 else 12
        fds = self.fds(s.pick((0, 0, 1, 2, 8, 9, 12)))
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        try:
            self.b.sendmsg([head[:cut] + (body if cut == 12 else b"")], anc)
        finally:
            for fd in fds:
                os.close(fd)
        self.b.shutdown(socket.SHUT_WR)      # no more bytes: recv must not wait for the rest
        msg = self.backend.channel.recv()
        if msg is not None:
            for fd in msg.fds:
                os.close(fd)
        LAST_FEATURES.add(("frame", None if msg is None else msg.request < 64))

    def step_setup(self) -> None:
        """The well-behaved sequence that gets both rings running, so later steps hit running rings."""
        from vhostsplice.vhostuser import protocol as P
        from vhostsplice.spec import Feature as F, Req, bit
        h = self.backend.handle
        log_all = bit(F.VHOST_F_LOG_ALL) if self.src.below(2) else 0     # migration: log every write
        h(P.Message(Req.SET_FEATURES, 1, P.encode_u64(bit(F.F_VERSION_1) | bit(F.RING_F_EVENT_IDX) | log_all)))
        table = P.MemTable((P.MemRegion(GPA, MEM_SIZE, UVA, 0),))
        h(P.Message(Req.SET_MEM_TABLE, 1, P.encode_mem_table(table), (os.dup(self.mem),)))
        for i in (0, 1):
            base = UVA + 0x10000 * i
            h(P.Message(Req.SET_VRING_NUM, 1, P.encode_vring_state(P.VringState(i, 256))))
            h(P.Message(Req.SET_VRING_ADDR, 1, P.encode_vring_addr(P.VringAddr(i, 0, base, base + 0x2000,
                                                                               base + 0x1000, 0))))
            h(P.Message(Req.SET_VRING_KICK, 1, P.encode_vring_file(i), (os.eventfd(0, os.EFD_NONBLOCK),)))
        LAST_FEATURES.add(("running", self.backend.rings_running))

    def step_poll(self) -> None:
        if self.backend.rings_running:
            self.dp.poll()


def run_one(data: bytes) -> None:
    from vhostsplice.errors import VhostspliceError
    LAST_FEATURES.clear()
    before = open_fds()
    src = Source(data)
    sess = Session(src)
    try:
        steps = 0
        while not src.done and steps < 24:
            k = src.below(10)
            try:
                if k == 0:
                    sess.step_frame()
                    break                        # the channel is closed for writing now
                if k == 1:
                    sess.step_poll()
                elif k == 2:
                    sess.step_setup()
                else:
                    sess.step_message()
            except VhostspliceError as exc:
                if exc.errno not in DOCUMENTED:
                    raise Undocumented(f"{type(exc).__name__} with errno {exc.errno}: {exc}") from exc
                LAST_FEATURES.add((type(exc).__name__, exc.errno))
                break                            # the worker would exit here with exc.errno
            except Exception as exc:
                raise Undocumented(f"undocumented exception {exc!r}") from exc
            steps += 1
    finally:
        sess.close()
    after = open_fds()
    if after != before:
        raise FdLeak(f"fds leaked: {sorted(after - before)}, closed: {sorted(before - after)}")


run_one.last_features = lambda: LAST_FEATURES

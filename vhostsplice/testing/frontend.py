"""A pure-Python vhost-user front-end with a virtio-net driver on top: tests, the demo, scripted use.

It plays the part QEMU or DPDK virtio-user play: negotiates features, shares one memfd as guest memory,
lays out both rings with `virtq.DriverQueue`, and moves frames through the back-end. Nothing in it is
trusted by the back-end; hostile tests reach under it through `.rx`/`.tx` and `.send_raw`.
"""
from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct
import time

from ..vhostuser import protocol as P
from ..vhostuser.channel import Channel
from ..spec import NET_HDR_LEN, Feature as F, ProtocolFeature as PF, Req, bit, mask
from .virtq import DriverQueue, GuestMemory
from .virtq_packed import PackedDriverQueue

UVA_BASE = 0x7F00_0000_0000       # where the "front-end process" pretends to have mapped guest memory
DEFAULT_FEATURES = mask(F.F_VERSION_1, F.NET_F_MRG_RXBUF, F.RING_F_INDIRECT_DESC, F.RING_F_EVENT_IDX,
                        F.VHOST_USER_F_PROTOCOL_FEATURES)
DEFAULT_PROTOCOL = mask(PF.MQ, PF.REPLY_ACK, PF.STATUS)


def _connect(path: str, timeout: float) -> socket.socket:
    """A unix stream socket connected to PATH, retried until a back-end listens there (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class FrontendError(RuntimeError):
    pass


class FrontendClosed(FrontendError):
    """The back-end closed the connection (instead of answering a request)."""


class Frontend:
    def __init__(self, sock: socket.socket, *, mem_size: int = 16 << 20, queue_size: int = 256,
                 features: int = DEFAULT_FEATURES, protocol_features: int = DEFAULT_PROTOCOL, packed: bool = False):
        """packed: also ask for VIRTIO_F_RING_PACKED (the rings are packed if the back-end offers it)."""
        self.chan = Channel(sock)
        self.want = features | (bit(F.F_RING_PACKED) if packed else 0)
        self.want_protocol = protocol_features
        self.queue_size = queue_size
        self.memfd = os.memfd_create("vhostsplice-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, mem_size)
        self.map = mmap.mmap(self.memfd, mem_size)
        self.mem = GuestMemory(self.map, gpa_base=0, uva_base=UVA_BASE)
        self.offered = self.acked = self.protocol_acked = 0
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        self.err = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        self.rx: DriverQueue | None = None
        self.tx: DriverQueue | None = None
        self._rx_entries: list[tuple[int, int]] = []     # used RX entries of a packet not yet whole

    # -- connection --------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, path: str, timeout: float = 10.0, **kw) -> "Frontend":
        return cls(_connect(path, timeout), **kw)

    @classmethod
    def listen(cls, path: str, timeout: float = 10.0, **kw) -> "Frontend":
        """Listen on PATH and take the first back-end that connects (`vhostsplice run --connect PATH`);
        TimeoutError when none does within timeout. PATH must not exist: probing whether a socket file
        is stale would mean connecting to whoever serves it, so an existing file is FileExistsError."""
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, f"{path} exists (remove it first)", path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            server.bind(path)
            server.listen(1)
            server.settimeout(timeout)
            try:
                sock, _ = server.accept()
            except socket.timeout:
                raise TimeoutError(f"no back-end connected to {path} within {timeout} s") from None
            sock.setblocking(True)
            return cls(sock, **kw)
        finally:
            server.close()
            try:
                os.unlink(path)
            except OSError:
                pass

    def peer_closed(self) -> bool:
        """True when the back-end has closed the connection (never blocks). The back-end sends nothing
        unasked, so readable data here is a protocol error."""
        try:
            data = self.chan.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return True
            raise
        if data:
            raise FrontendError("the back-end sent a message nobody asked for")
        return True

    def close(self) -> None:
        self.chan.close()
        for fd in (*self.kick, *self.call, *self.err):
            os.close(fd)
        self.mem = self.rx = self.tx = None
        self.map.close()
        os.close(self.memfd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- messages ----------------------------------------------------------------------------------------
    def send_raw(self, request: int, payload: bytes = b"", fds=(), need_reply: bool = False) -> None:
        self.chan.send(request, payload, tuple(fds), need_reply=need_reply)

    def request(self, request: int, payload: bytes = b"", fds=()) -> P.Message:
        """Send a request that has a reply and return the reply."""
        self.send_raw(request, payload, fds)
        return self._reply(request)

    def _reply(self, request: int) -> P.Message:
        msg = self.chan.recv()
        if msg is None:
            raise FrontendClosed(f"back-end closed the connection instead of answering {P.request_name(request)}")
        if msg.request != request:
            raise FrontendError(f"reply to {msg.name}, expected {P.request_name(request)}")
        return msg

    def command(self, request: int, payload: bytes = b"", fds=()) -> None:
        """Send a request without a reply; with REPLY_ACK, ask for and check the ack."""
        ack = bool(self.protocol_acked & bit(PF.REPLY_ACK))
        self.send_raw(request, payload, fds, need_reply=ack)
        if ack and P.decode_u64(self._reply(request)) != 0:
            raise FrontendError(f"back-end refused {P.request_name(request)}")

    # -- set-up, in the order QEMU and virtio-user use -----------------------------------------------------
    def negotiate(self) -> int:
        self.command(Req.SET_OWNER)
        self.offered = P.decode_u64(self.request(Req.GET_FEATURES))
        self.acked = self.offered & self.want
        if self.acked & bit(F.VHOST_USER_F_PROTOCOL_FEATURES):
            offered = P.decode_u64(self.request(Req.GET_PROTOCOL_FEATURES))
            self.protocol_acked = offered & self.want_protocol
            self.command(Req.SET_PROTOCOL_FEATURES, P.encode_u64(self.protocol_acked))
        self.command(Req.SET_FEATURES, P.encode_u64(self.acked))
        return self.acked

    def share_memory(self) -> None:
        region = P.MemRegion(gpa=0, size=len(self.map), uva=UVA_BASE, mmap_offset=0)
        self.command(Req.SET_MEM_TABLE, P.encode_mem_table(P.MemTable((region,))), fds=(self.memfd,))

    def slot_region(self, k: int, count: int) -> P.MemRegion:
        """Slice k of `count` equal slices of the memory, as a memory slot (QEMU: one pc-dimm)."""
        size = len(self.map) // count
        return P.MemRegion(gpa=k * size, size=size, uva=UVA_BASE + k * size, mmap_offset=k * size)

    def add_memory_slots(self, count: int) -> None:
        """The memory as `count` regions, one ADD_MEM_REG each (CONFIGURE_MEM_SLOTS: no SET_MEM_TABLE)."""
        for k in range(count):
            self.command(Req.ADD_MEM_REG, P.encode_mem_reg(self.slot_region(k, count)), fds=(self.memfd,))

    def remove_memory_slot(self, k: int, count: int) -> None:
        self.command(Req.REM_MEM_REG, P.encode_mem_reg(self.slot_region(k, count)))

    @property
    def packed(self) -> bool:
        return bool(self.acked & bit(F.F_RING_PACKED))

    def new_queue(self) -> DriverQueue | PackedDriverQueue:
        """A driver queue of the negotiated layout (packed when RING_PACKED was acked)."""
        event_idx = bool(self.acked & bit(F.RING_F_EVENT_IDX))
        if self.packed:
            return PackedDriverQueue(self.mem, self.queue_size, event_idx=event_idx,
                                     in_order=bool(self.acked & bit(F.F_IN_ORDER)))
        return DriverQueue(self.mem, self.queue_size, event_idx=event_idx)

    def setup_ring(self, index: int, base: int | None = None, queue=None):
        """Hand ring INDEX to the back-end: a new queue, or QUEUE as it stands (a reconnect).  base: the
        SET_VRING_BASE value (default: 0 for split, the packed queue's own 32-bit state)."""
        q = queue or self.new_queue()
        base = (q.base if self.packed else 0) if base is None else base
        self.command(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(index, self.queue_size)))
        self.command(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(index, 0, q.desc_uva, q.used_uva,
                                                                            q.avail_uva, 0)))
        self.command(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(index, base)))
        self.command(Req.SET_VRING_CALL, P.encode_vring_file(index), fds=(self.call[index],))
        self.command(Req.SET_VRING_ERR, P.encode_vring_file(index), fds=(self.err[index],))
        self.command(Req.SET_VRING_KICK, P.encode_vring_file(index), fds=(self.kick[index],))
        if self.acked & bit(F.VHOST_USER_F_PROTOCOL_FEATURES):
            self.command(Req.SET_VRING_ENABLE, P.encode_vring_state(P.VringState(index, 1)))
        return q

    def start(self) -> "Frontend":
        """Negotiate, share memory, bring up both rings."""
        self.negotiate()
        self.share_memory()
        self.rx = self.setup_ring(0)
        self.tx = self.setup_ring(1)
        return self

    def reconnect(self, path: str, timeout: float = 10.0, base: int | None = None) -> "Frontend":
        """A new back-end on PATH takes over this driver's memory and rings as they are (buffers posted,
        chains in flight), set up the way QEMU does after a reconnect: SET_VRING_BASE 0 (packed: the
        driver's positions; `base`: this value instead, e.g. a stale one), no kick."""
        self.chan.close()
        self.chan = Channel(_connect(path, timeout))
        self.protocol_acked = 0             # a new session: nothing negotiated with this back-end yet
        self.negotiate()
        self.share_memory()
        self.setup_ring(0, base=base, queue=self.rx)
        self.setup_ring(1, base=base, queue=self.tx)
        return self

    def stop(self) -> tuple[int, int]:
        """GET_VRING_BASE on both rings (stops them); returns their positions."""
        return tuple(P.decode_vring_state(self.request(Req.GET_VRING_BASE,
                                                       P.encode_vring_state(P.VringState(i, 0)))).num
                     for i in (0, 1))

    # -- the driver --------------------------------------------------------------------------------------
    def notify(self, index: int) -> None:
        os.eventfd_write(self.kick[index], 1)

    def send(self, frames, **kw) -> None:
        """Queue frames on TX (a zero virtio-net header in front of each, unless hdr= is given) and kick."""
        self.tx.add_out(list(frames), **kw)
        self.notify(1)

    def post_rx(self, count: int, size: int = 2048, **kw) -> None:
        self.rx.add_in(count, size, **kw)
        self.notify(0)

    def wait_used(self, q: DriverQueue, count: int, timeout: float = 5.0) -> list[tuple[int, int]]:
        """Collect `count` used entries from q, waiting on its call eventfd."""
        index = 0 if q is self.rx else 1
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            got.extend(q.used())
            if len(got) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ring {index}: {len(got)} of {count} used entries after {timeout} s")
            select.select([self.call[index]], [], [], min(left, 0.05))
            try:
                os.eventfd_read(self.call[index])
            except BlockingIOError:
                pass
        return got

    def receive(self, count: int, timeout: float = 5.0, *, header: bool = False) -> list[bytes]:
        """`count` frames from RX: merged buffers joined by num_buffers, the virtio-net header stripped
        unless `header`."""
        mrg = bool(self.acked & bit(F.NET_F_MRG_RXBUF))
        entries: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while self._complete(entries, mrg) < count:
            entries += self.wait_used(self.rx, 1, max(deadline - time.monotonic(), 0.001))
        frames = self.rx.packets(entries, mrg=mrg)
        return frames if header else [f[NET_HDR_LEN:] for f in frames]

    def _complete(self, entries: list[tuple[int, int]], mrg: bool) -> int:
        """How many whole packets the collected RX entries hold."""
        packets = i = 0
        while i < len(entries):
            step = self._num_buffers(entries[i][0]) if mrg else 1
            if i + step > len(entries):
                break
            packets, i = packets + 1, i + max(step, 1)
        return packets

    def _num_buffers(self, head: int) -> int:
        gpa, size = self.rx._done[head].bufs[0]
        return struct.unpack("<H", self.mem.read(gpa + 10, 2))[0] if size >= NET_HDR_LEN else 1

    @property
    def rx_outstanding(self) -> int:
        """RX buffers posted and not yet used by the back-end."""
        return len(self.rx._chains)

    def take_received(self, *, header: bool = False) -> list[bytes]:
        """Frames the back-end has completed on RX so far, without waiting; the buffers of a merged
        packet not yet whole stay pending for the next call (mix it with receive() at your peril)."""
        self._rx_entries += self.rx.used()
        mrg = bool(self.acked & bit(F.NET_F_MRG_RXBUF))
        i = 0
        while i < len(self._rx_entries):
            step = max(self._num_buffers(self._rx_entries[i][0]), 1) if mrg else 1
            if i + step > len(self._rx_entries):
                break
            i += step
        whole, self._rx_entries = self._rx_entries[:i], self._rx_entries[i:]
        frames = self.rx.packets(whole, mrg=mrg)
        return frames if header else [f[NET_HDR_LEN:] for f in frames]

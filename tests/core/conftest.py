"""The C core on bytearray guest memory, with a SOCK_SEQPACKET socketpair standing in for the tap."""
from __future__ import annotations

import os
import socket

import pytest

from vhostsplice.device.datapath import MORE, Datapath, drain_eventfd
from vhostsplice.testing.virtq import NET_HDR_LEN, DriverQueue, GuestMemory
from vhostsplice.testing.virtq_packed import PackedDriverQueue

GPA_BASE = 0x4000_0000
HOST_IO = {"path": "io_uring"}       # how every Rig's datapath drives the host fd (the host_io fixture)


@pytest.fixture(autouse=True, params=["io_uring", "readv/writev"])
def host_io(request):
    """Every core test runs twice: the host fd read and written in io_uring batches (what a worker does
    where the kernel allows it) and one readv/writev per frame (the fallback)."""
    HOST_IO["path"] = request.param
    yield request.param
    HOST_IO["path"] = "io_uring"
UVA_BASE = 0x7F12_3400_0000


class Rig:
    """Guest memory, two driver queues, the datapath, call/err eventfds and the tap's other end."""

    def __init__(self, *, num=256, mrg=False, event_idx=False, indirect=True, rx_max=NET_HDR_LEN + 1514,
                 fault_exit=False, tx_budget=256, rx_budget=256, mem_size=4 << 20, splits=(), start=True,
                 packed=False, in_order=False, host_io=None, buf=None):
        self.buf = bytearray(mem_size) if buf is None else buf      # buf: e.g. an mmap, pages untouched
        self.mem = GuestMemory(self.buf, GPA_BASE, UVA_BASE)
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.setblocking(False)
        self.peer.setblocking(False)
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.err = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.dp = Datapath(self.host.fileno())
        if (host_io or HOST_IO["path"]) == "io_uring":     # batches (the host_io fixture's default): else per frame
            assert self.dp.enable_uring() == "", self.dp.uring_why
        self.dp.configure(mrg_rxbuf=mrg, event_idx=event_idx, indirect=indirect, rx_max=rx_max,
                          fault_exit=fault_exit, tx_budget=tx_budget, rx_budget=rx_budget, packed=packed,
                          in_order=in_order)
        self.dp.set_memory(self.mem.regions(*splits))
        self.packed = packed
        if packed:
            self.rx = PackedDriverQueue(self.mem, num, event_idx=event_idx, in_order=in_order)
            self.tx = PackedDriverQueue(self.mem, num, event_idx=event_idx, in_order=in_order)
        else:
            self.rx = DriverQueue(self.mem, num, event_idx=event_idx)
            self.tx = DriverQueue(self.mem, num, event_idx=event_idx)
        if start:
            self.start(0)
            self.start(1)

    def queue(self, index: int) -> DriverQueue:
        return self.rx if index == 0 else self.tx

    def start(self, index: int) -> int:
        q = self.queue(index)
        base = q.base if self.packed else 0
        return self.dp.start_ring(index, num=q.num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva,
                                  call_fd=self.call[index], err_fd=self.err[index], base=base)

    def poll_idle(self, limit: int = 1000) -> int:
        """Poll until the datapath stops asking for more; returns the last flags."""
        for _ in range(limit):
            flags = self.dp.poll()
            if not flags & MORE:
                return flags
        raise AssertionError("datapath still busy after %d polls" % limit)

    def calls(self, index: int) -> int:
        return drain_eventfd(self.call[index])

    def errs(self, index: int) -> int:
        return drain_eventfd(self.err[index])

    def wire(self) -> list[bytes]:
        """Everything the back-end wrote to the tap, in order."""
        out = []
        while True:
            try:
                out.append(self.peer.recv(1 << 17))
            except BlockingIOError:
                return out

    def inject(self, *packets: bytes) -> None:
        """The tap delivers packets (virtio-net header included) to the back-end."""
        for p in packets:
            self.peer.send(p)

    def stats(self, ring: str) -> dict:
        return self.dp.stats()[ring]

    @staticmethod
    def frame(n: int, seed: int = 0) -> bytes:
        """A deterministic n-byte frame."""
        return bytes((i * 7 + seed) & 0xFF for i in range(n))

    @staticmethod
    def hdr(num_buffers: int = 0, flags: int = 0) -> bytes:
        """A virtio_net_hdr_v1."""
        return bytes([flags]) + bytes(9) + num_buffers.to_bytes(2, "little")

    def close(self) -> None:
        self.dp.close()
        for fd in self.call + self.err:
            os.close(fd)
        self.host.close()
        self.peer.close()


@pytest.fixture
def make_rig():
    rigs = []

    def make(**kw) -> Rig:
        rigs.append(Rig(**kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()

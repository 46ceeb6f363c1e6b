"""The benchmarks' host-side frame source: one frame sent COUNT times with sendmmsg on an AF_PACKET
socket bound to an interface, bypassing the qdisc (dpdk_bench.py fills a tap's queue with it,
packet_bench.py a tap's queue or a veth into a worker's packet socket)."""
from __future__ import annotations

import ctypes
import os
import socket
import time

SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20
ENOBUFS = 105


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IoVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def send_frames(ifname: str, frame: bytes, count: int, burst: int) -> tuple[int, int, float]:
    """Send FRAME COUNT times on IFNAME, BURST per sendmmsg -> (queued, refused, seconds).

    PACKET_QDISC_BYPASS hands each frame straight to the device (tun's queue); a full queue answers
    ENOBUFS, counted as one refused frame, so 'queued' is exactly what was taken."""
    libc = ctypes.CDLL(None, use_errno=True)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        s.bind((ifname, 0))
        buf = ctypes.create_string_buffer(frame, len(frame))
        iov = IoVec(ctypes.addressof(buf), len(frame))
        msgs = (MMsgHdr * burst)()
        for m in msgs:
            m.hdr.iov = ctypes.pointer(iov)
            m.hdr.iovlen = 1
        queued = refused = 0
        t0 = time.monotonic()
        while queued + refused < count:
            n = libc.sendmmsg(s.fileno(), msgs, min(burst, count - queued - refused), 0)
            if n < 0:
                err = ctypes.get_errno()
                if err != ENOBUFS:          # ENOBUFS: the queue is full; that frame is not queued
                    raise OSError(err, os.strerror(err))
                refused += 1
                continue
            queued += n
        return queued, refused, time.monotonic() - t0

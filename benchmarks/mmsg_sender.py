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


def udp_frame(size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of SIZE bytes, 198.18.0.1:1024 -> 198.18.0.2:1025, to a unicast MAC nobody
    owns, zero payload (IP checksum left 0: nobody checks)."""
    ip = (bytearray.fromhex("4500") + (size - 14).to_bytes(2, "big")
          + bytes.fromhex("0000" "4000" "4011" "0000" "c6120001" "c6120002"))
    udp = (1024).to_bytes(2, "big") + (1025).to_bytes(2, "big") + (size - 34).to_bytes(2, "big") + bytes(2)
    frame = bytes.fromhex("02aabbccdd02" "02aabbccdd01" "0800") + bytes(ip) + udp
    return frame + bytes(size - len(frame))


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

"""Classic pcap files: what `drive --pcap` writes, and a reader for tests and scripts."""
from __future__ import annotations

import struct
import time


class Pcap:
    """Classic pcap (LINKTYPE_ETHERNET, microsecond stamps): what tcpdump -r and wireshark read."""

    def __init__(self, path: str, snaplen: int = 262144):
        self.f = open(path, "wb")
        self.snaplen = snaplen
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        self.count = 0

    def write(self, frame: bytes, stamp: float | None = None) -> None:
        stamp = time.time() if stamp is None else stamp
        sec, usec = int(stamp), int((stamp % 1) * 1e6)
        data = frame[:self.snaplen]
        self.f.write(struct.pack("<IIII", sec, usec, len(data), len(frame)) + data)
        self.count += 1

    def close(self) -> None:
        self.f.close()


def read_pcap(path: str) -> list[bytes]:
    """The frames of a classic little-endian pcap file (for tests and scripts)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, _maj, _min, _tz, _sig, _snap, link = struct.unpack_from("<IHHiIII", data)
    if magic != 0xA1B2C3D4 or link != 1:
        raise ValueError(f"{path}: not a little-endian Ethernet pcap")
    frames, off = [], 24
    while off < len(data):
        _s, _u, incl, _orig = struct.unpack_from("<IIII", data, off)
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames

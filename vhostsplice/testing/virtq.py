"""Driver side of a split virtqueue (virtio 1.2, 2.7) in pure Python: a test tool, not a device.

`GuestMemory` is a writable buffer (bytearray or mmap) seen at a guest-physical base (descriptor
addresses) and at a front-end user-address base (ring addresses, as SET_VRING_ADDR carries them), with
a small first-fit allocator.  `DriverQueue` lays out one ring in it and plays the driver: it adds
device-readable chains (`add_out`) and device-writable buffers (`add_in`), publishes avail->idx with one
aligned 2-byte store, and collects used entries.  `raw_*` helpers write hostile rings on purpose.

    mem = GuestMemory(bytearray(1 << 20), gpa_base=0x10000, uva_base=0x7f0000000000)
    tx = DriverQueue(mem, 256)
    tx.add_out([frame])          # 12-byte zero virtio_net_hdr_v1 + frame, published
    ... device runs ...
    tx.used()                    # [(head, len)]
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
USED_F_NO_NOTIFY = 1
AVAIL_F_NO_INTERRUPT = 1
NET_HDR_LEN = 12

assert sys.byteorder == "little", "virtq.py stores ring indices natively; ring fields are little-endian"


@dataclass(frozen=True)
class Region:
    """One memory region as Datapath.set_memory takes it."""

    gpa: int
    uva: int
    size: int
    buf: memoryview


class GuestMemory:
    """A buffer standing in for guest memory, with a first-fit allocator over it."""

    def __init__(self, buf, gpa_base: int = 0, uva_base: int | None = None):
        self.buf = buf
        self.view = memoryview(buf)
        self.size = len(self.view)
        self.gpa_base = gpa_base
        self.uva_base = gpa_base if uva_base is None else uva_base
        self._free: list[tuple[int, int]] = [(0, self.size)]   # (offset, size), sorted by offset
        self._sizes: dict[int, tuple[int, int, int]] = {}     # gpa -> (offset, size, size asked for)
        self._cache: dict[int, list[int]] = {}                # size -> freed gpas of that size

    def alloc(self, size: int, align: int = 16) -> int:
        """Reserve size bytes aligned to align; returns their gpa. MemoryError when full.

        Freed blocks are kept per size and handed out again first (frames repeat their sizes); when
        memory runs out they go back to the first-fit list and the allocation is retried."""
        size = max(size, 1)
        cached = self._cache.get(size, [])
        for i in range(len(cached) - 1, -1, -1):
            if cached[i] % align == 0:
                return cached.pop(i)
        try:
            return self._first_fit(size, align)
        except MemoryError:
            self._flush_cache()
            return self._first_fit(size, align)

    def free(self, gpa: int) -> None:
        size = self._sizes[gpa][2]
        self._cache.setdefault(size, []).append(gpa)

    def _first_fit(self, size: int, align: int) -> int:
        for i, (off, n) in enumerate(self._free):
            start = -(-(self.gpa_base + off) // align) * align - self.gpa_base
            if start + size <= off + n:
                self._free[i:i + 1] = [b for b in ((off, start - off), (start + size, off + n - start - size)) if b[1]]
                self._sizes[self.gpa_base + start] = (start, size, size)
                return self.gpa_base + start
        raise MemoryError(f"guest memory: no {size} bytes left (align {align})")

    def _flush_cache(self) -> None:
        blocks = self._free + [self._sizes.pop(g)[:2] for gpas in self._cache.values() for g in gpas]
        self._cache.clear()
        merged: list[tuple[int, int]] = []
        for o, n in sorted(blocks):
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((o, n))
        self._free = merged

    def off(self, gpa: int, n: int = 0) -> int:
        off = gpa - self.gpa_base
        if off < 0 or off + n > self.size:
            raise ValueError(f"gpa {gpa:#x}+{n} outside guest memory")
        return off

    def uva(self, gpa: int) -> int:
        return gpa - self.gpa_base + self.uva_base

    def read(self, gpa: int, n: int) -> bytes:
        off = self.off(gpa, n)
        return bytes(self.view[off:off + n])

    def write(self, gpa: int, data: bytes) -> None:
        off = self.off(gpa, len(data))
        self.view[off:off + len(data)] = data

    def load16(self, gpa: int) -> int:
        """One aligned 2-byte load (ring indices)."""
        off = self.off(gpa, 2)
        return self.view[off:off + 2].cast("H")[0]

    def store16(self, gpa: int, value: int) -> None:
        """One aligned 2-byte store (ring indices): never struct.pack_into."""
        off = self.off(gpa, 2)
        self.view[off:off + 2].cast("H")[0] = value & 0xFFFF

    def regions(self, *splits: int) -> list[Region]:
        """The memory as Datapath regions, cut at the given offsets (adjacent regions)."""
        cuts = [0, *sorted(splits), self.size]
        return [Region(self.gpa_base + a, self.uva_base + a, b - a, self.view[a:b])
                for a, b in zip(cuts, cuts[1:]) if b > a]

    def release(self) -> None:
        """Drop the memoryview (so an mmap underneath can be closed)."""
        self.view.release()


@dataclass
class _Chain:
    descs: list[int]                          # ring descriptor ids
    bufs: list[tuple[int, int]]               # (gpa, len) data buffers in chain order
    writable: bool                            # device-writable (an in chain)
    table: int | None = None                  # indirect table gpa


class QueueCommon:
    """What both drivers (split DriverQueue, packed PackedDriverQueue) share: adding chains through
    their _add_chain and publish, and completed buffers kept in `_done` by id (head)."""

    def add_out(self, frames: list[bytes], *, split: int = 1, indirect: bool = False,
                hdr: bytes | None = None, publish: bool = True) -> list[int]:
        """Device-readable chains, one per frame: header (12 zero bytes unless given) + frame."""
        hdr = bytes(NET_HDR_LEN) if hdr is None else hdr
        heads = [self._add_chain(_pieces(hdr + f, split), False, indirect) for f in frames]
        if publish:
            self.publish()
        return heads

    def add_in(self, count: int, size: int, *, split: int = 1, indirect: bool = False,
               publish: bool = True) -> list[int]:
        """count device-writable chains of size bytes each (split over `split` descriptors)."""
        heads = [self._add_chain(_sizes(size, split), True, indirect) for _ in range(count)]
        if publish:
            self.publish()
        return heads

    def _bufs(self, pieces: list) -> list[tuple[int, int]]:
        """Guest buffers for a chain's pieces: bytes are copied in, an int is that many bytes."""
        bufs = []
        for p in pieces:
            n = p if isinstance(p, int) else len(p)
            gpa = self.mem.alloc(n, 8)
            if not isinstance(p, int):
                self.mem.write(gpa, p)
            bufs.append((gpa, n))
        return bufs

    def read_in(self, head: int, length: int) -> bytes:
        """The first `length` bytes the device wrote into buffer `head` (after used() returned it)."""
        chain = self._done.pop(head)
        out = b"".join(self.mem.read(gpa, n) for gpa, n in chain.bufs)[:length]
        self._release(chain, data=True)
        return out

    def packets(self, entries: list[tuple[int, int]], *, mrg: bool = False) -> list[bytes]:
        """Join used RX entries into packets (header included); with mrg, by num_buffers."""
        out, i = [], 0
        while i < len(entries):
            data = self.read_in(*entries[i])
            count = struct.unpack_from("<H", data, 10)[0] if mrg and len(data) >= NET_HDR_LEN else 1
            for head, length in entries[i + 1:i + count]:
                data += self.read_in(head, length)
            out.append(data)
            i += max(count, 1)
        return out

    def _release(self, chain: _Chain, *, data: bool) -> None:
        """Free the indirect table, and the data buffers too when data is true."""
        if chain.table is not None:
            self.mem.free(chain.table)
            chain.table = None
        if data:
            for gpa, _n in chain.bufs:
                self.mem.free(gpa)
            chain.bufs = []


class DriverQueue(QueueCommon):
    """The driver's view of one split ring laid out in GuestMemory."""

    def __init__(self, mem: GuestMemory, num: int, *, event_idx: bool = False):
        if num < 1 or num & (num - 1) or num > 32768:
            raise ValueError(f"queue size {num} is not a power of 2 in 1..32768")
        self.mem, self.num, self.event_idx = mem, num, event_idx
        self.desc_gpa = mem.alloc(16 * num, 16)
        self.avail_gpa = mem.alloc(6 + 2 * num, 2)
        self.used_gpa = mem.alloc(6 + 8 * num, 4)
        for gpa, n in ((self.desc_gpa, 16 * num), (self.avail_gpa, 6 + 2 * num), (self.used_gpa, 6 + 8 * num)):
            mem.write(gpa, bytes(n))
        self.avail_idx = 0            # shadow of avail->idx (next slot to fill)
        self.last_used = 0            # next used entry to collect
        self.published = 0            # avail->idx at the last publish
        self.auto_used_event = True   # with event_idx, used() asks for a call on the next entry
        self._free = list(range(num - 1, -1, -1))
        self._chains: dict[int, _Chain] = {}
        self._done: dict[int, _Chain] = {}

    desc_uva = property(lambda self: self.mem.uva(self.desc_gpa))
    avail_uva = property(lambda self: self.mem.uva(self.avail_gpa))
    used_uva = property(lambda self: self.mem.uva(self.used_gpa))

    # -- adding chains ----------------------------------------------------------------------------
    def _take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"ring full: need {n} descriptors, {len(self._free)} free")
        ids = [self._free.pop() for _ in range(n)]
        for i in ids:                      # data of a chain never read is dropped when its id is reused
            stale = self._done.pop(i, None)
            if stale:
                self._release(stale, data=True)
        return ids

    def _add_chain(self, pieces: list, writable: bool, indirect: bool) -> int:
        bufs = self._bufs(pieces)
        flags = DESC_F_WRITE if writable else 0
        if indirect:
            head, = self._take(1)
            table = self.mem.alloc(16 * len(bufs), 16)
            for i, (gpa, n) in enumerate(bufs):
                nxt = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._write_desc(table + 16 * i, gpa, n, flags | nxt, i + 1 if nxt else 0)
            self.raw_desc(head, table, 16 * len(bufs), DESC_F_INDIRECT, 0)
            chain = _Chain([head], bufs, writable, table)
        else:
            ids = self._take(len(bufs))
            for i, (gpa, n) in enumerate(bufs):
                nxt = DESC_F_NEXT if i + 1 < len(ids) else 0
                self.raw_desc(ids[i], gpa, n, flags | nxt, ids[i + 1] if nxt else 0)
            chain = _Chain(ids, bufs, writable)
        self._chains[chain.descs[0]] = chain
        self.raw_avail(self.avail_idx % self.num, chain.descs[0])
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        return chain.descs[0]

    def publish(self) -> bool:
        """Make added chains visible (one 2-byte store to avail->idx); True if the device wants a kick."""
        old, self.published = self.published, self.avail_idx
        self.mem.store16(self.avail_gpa + 2, self.avail_idx)
        if self.event_idx:
            return _need_event(self.avail_event, self.avail_idx, old)
        return not self.used_flags & USED_F_NO_NOTIFY

    # -- collecting -------------------------------------------------------------------------------
    def used(self) -> list[tuple[int, int]]:
        """Used entries (id, len) added since the last call; their descriptors are free again."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            e = self.used_gpa + 4 + 8 * (self.last_used % self.num)
            head, length = struct.unpack("<II", self.mem.read(e, 8))
            out.append((head, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
            chain = self._chains.pop(head, None)
            if chain is not None:
                self._release(chain, data=not chain.writable)
                self._free.extend(chain.descs)
                if chain.writable:
                    self._done[head] = chain
        if self.event_idx and self.auto_used_event:
            self.used_event = self.last_used
        return out

    # -- raw ring access (hostile tests) -------------------------------------------------------------
    def _write_desc(self, at: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(at, struct.pack("<QIHH", addr, length, flags, nxt))

    def raw_desc(self, i: int, addr: int, length: int, flags: int = 0, next: int = 0) -> None:
        """Write descriptor i of the ring's table as given, unchecked."""
        self._write_desc(self.desc_gpa + 16 * i, addr, length, flags, next)

    def raw_avail(self, slot: int, head: int) -> None:
        """Write avail->ring[slot] (slot < num) as given."""
        self.mem.store16(self.avail_gpa + 4 + 2 * slot, head)

    def set_avail_idx(self, value: int) -> None:
        """Store avail->idx directly (and move the shadow with it)."""
        self.avail_idx = self.published = value & 0xFFFF
        self.mem.store16(self.avail_gpa + 2, self.avail_idx)

    @property
    def used_idx(self) -> int:
        return self.mem.load16(self.used_gpa + 2)

    @property
    def used_flags(self) -> int:
        return self.mem.load16(self.used_gpa)

    @property
    def avail_flags(self) -> int:
        return self.mem.load16(self.avail_gpa)

    @avail_flags.setter
    def avail_flags(self, value: int) -> None:
        self.mem.store16(self.avail_gpa, value)

    @property
    def used_event(self) -> int:
        return self.mem.load16(self.avail_gpa + 4 + 2 * self.num)

    @used_event.setter
    def used_event(self, value: int) -> None:
        self.mem.store16(self.avail_gpa + 4 + 2 * self.num, value)

    @property
    def avail_event(self) -> int:
        return self.mem.load16(self.used_gpa + 4 + 8 * self.num)


def _need_event(event: int, new: int, old: int) -> bool:
    """virtio 1.2 2.7.10: notify when event lies in [old, new)."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def _pieces(data: bytes, split: int) -> list[bytes]:
    split = max(1, min(split, len(data)))
    step = -(-len(data) // split)
    return [data[i:i + step] for i in range(0, len(data), step)]


def _sizes(size: int, split: int) -> list[int]:
    split = max(1, min(split, size))
    step, rest = divmod(size, split)
    return [step + (1 if i < rest else 0) for i in range(split)]

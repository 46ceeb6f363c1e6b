"""Driver side of a packed virtqueue (virtio 1.2, 2.8) in pure Python: a test tool, not a device.

The same methods as the split `virtq.DriverQueue` (add_out, add_in, publish, used, read_in, packets,
raw writes for hostile tests, event suppression) over one descriptor ring and the two 4-byte event
suppression areas: `desc_uva`, `avail_uva` (the driver area) and `used_uva` (the device area) are what
SET_VRING_ADDR carries for a packed ring, and `base` the 32-bit vhost-user state to start it from.
Chains are written whole with their first descriptor's flags held back until `publish()` stores them
(in order, one aligned 2-byte store each), so the device never sees half a chain; until then that
descriptor keeps the flags of its previous lap, which say neither available nor used in this one.

    tx = PackedDriverQueue(mem, 7)
    tx.add_out([frame])          # header + frame, published
    ... device runs ...
    tx.used()                    # [(id, len)]
"""
from __future__ import annotations

import struct
from collections import deque

from .virtq import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GuestMemory, QueueCommon, _Chain

DESC_F_AVAIL = 1 << 7
DESC_F_USED = 1 << 15
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2
WRAP = 0x8000


def avail_flags(wrap: int) -> int:
    """The AVAIL/USED bits of a descriptor made available in the lap of wrap counter `wrap`."""
    return DESC_F_AVAIL if wrap else DESC_F_USED


class PackedDriverQueue(QueueCommon):
    """The driver's view of one packed ring laid out in GuestMemory."""

    packed = True

    def __init__(self, mem: GuestMemory, num: int, *, event_idx: bool = False, in_order: bool = False):
        if not 1 <= num <= 32768:
            raise ValueError(f"queue size {num} is not in 1..32768")
        self.mem, self.num, self.event_idx, self.in_order = mem, num, event_idx, in_order
        self.desc_gpa = mem.alloc(16 * num, 16)
        self.avail_gpa = mem.alloc(4, 4)          # driver event suppression
        self.used_gpa = mem.alloc(4, 4)           # device event suppression
        for gpa, n in ((self.desc_gpa, 16 * num), (self.avail_gpa, 4), (self.used_gpa, 4)):
            mem.write(gpa, bytes(n))
        self.next_avail, self.avail_wrap = 0, 1   # where the next chain goes
        self.next_used, self.used_wrap = 0, 1     # where the next used descriptor is expected
        self.published = self.avail_pos           # the position at the last publish
        self.auto_used_event = True               # with event_idx, used() asks for a call at next_used
        self.free_descs = num
        self._ids = list(range(num - 1, -1, -1))
        self._chains: dict[int, _Chain] = {}
        self._order: deque[int] = deque()         # ids in the order they were made available
        self._held: list[tuple[int, int]] = []    # (slot, flags) of first descriptors not yet published
        self._done: dict[int, _Chain] = {}

    desc_uva = property(lambda self: self.mem.uva(self.desc_gpa))
    avail_uva = property(lambda self: self.mem.uva(self.avail_gpa))
    used_uva = property(lambda self: self.mem.uva(self.used_gpa))
    avail_pos = property(lambda self: self.next_avail | self.avail_wrap << 15)
    used_pos = property(lambda self: self.next_used | self.used_wrap << 15)

    @property
    def base(self) -> int:
        """The vhost-user packed vring state of this driver's positions (SET_VRING_BASE)."""
        return self.avail_pos | self.used_pos << 16

    # -- adding chains ----------------------------------------------------------------------------
    def _add_chain(self, pieces: list, writable: bool, indirect: bool) -> int:
        nring = 1 if indirect else len(pieces)
        if nring > self.free_descs or not self._ids:
            raise RuntimeError(f"ring full: need {nring} descriptors, {self.free_descs} free")
        bufs = self._bufs(pieces)
        bid = self._ids.pop()
        stale = self._done.pop(bid, None)
        if stale:
            self._release(stale, data=True)
        flags = DESC_F_WRITE if writable else 0
        table = None
        if indirect:
            table = self.mem.alloc(16 * len(bufs), 16)
            for i, (gpa, n) in enumerate(bufs):
                self.mem.write(table + 16 * i, struct.pack("<QIHH", gpa, n, 0, flags))
            descs = [(table, 16 * len(bufs), DESC_F_INDIRECT)]
        else:
            descs = [(gpa, n, flags | (DESC_F_NEXT if i + 1 < len(bufs) else 0)) for i, (gpa, n) in enumerate(bufs)]
        first = self.next_avail
        for k, (addr, n, f) in enumerate(descs):
            full = f | avail_flags(self.avail_wrap)
            if k == 0:
                self._desc_body(self.next_avail, addr, n, bid)      # flags held until publish
                self._held.append((first, full))
            else:
                self.raw_desc(self.next_avail, addr, n, bid, full)
            self._step_avail()
        self.free_descs -= nring
        chain = _Chain(list(range(nring)), bufs, writable, table)
        self._chains[bid] = chain
        self._order.append(bid)
        return bid

    def _step_avail(self) -> None:
        self.next_avail += 1
        if self.next_avail == self.num:
            self.next_avail, self.avail_wrap = 0, self.avail_wrap ^ 1

    def publish(self) -> bool:
        """Store the held first-descriptor flags (in order); True if the device wants a kick."""
        old, new = self.published, self.avail_pos
        for slot, flags in self._held:
            self.mem.store16(self.desc_gpa + 16 * slot + 14, flags)
        self._held = []
        self.published = new
        off_wrap, flags = self.device_event
        if flags == EVENT_DISABLE:
            return False
        if flags != EVENT_DESC or not self.event_idx:
            return True
        return _crossed(self.num, off_wrap, old, new)

    # -- collecting -------------------------------------------------------------------------------
    def _take_used(self) -> tuple[int, int] | None:
        at = self.desc_gpa + 16 * self.next_used
        flags = self.mem.load16(at + 14)
        if bool(flags & DESC_F_AVAIL) != bool(self.used_wrap) or bool(flags & DESC_F_USED) != bool(self.used_wrap):
            return None
        length, bid = struct.unpack("<IH", self.mem.read(at + 8, 6))
        return bid, length

    def used(self) -> list[tuple[int, int]]:
        """Used buffers (id, len) since the last call (with in_order, one used descriptor may stand for
        the buffers before it: each is returned, with len 0); their descriptors are free again."""
        out = []
        while self._order:
            entry = self._take_used()
            if entry is None:
                break
            bid, length = entry
            if bid not in self._chains:
                raise AssertionError(f"used id {bid} was never made available")
            while self.in_order and self._order[0] != bid:
                out.append((self._order[0], 0))
                self._complete(self._order.popleft())
            self._order.remove(bid)
            out.append((bid, length))
            self._complete(bid)
        if self.event_idx and self.auto_used_event:
            self.driver_event = (self.used_pos, EVENT_DESC)
        return out

    def _complete(self, bid: int) -> None:
        chain = self._chains.pop(bid)
        for _ in chain.descs:
            self.next_used += 1
            if self.next_used == self.num:
                self.next_used, self.used_wrap = 0, self.used_wrap ^ 1
        self.free_descs += len(chain.descs)
        self._ids.append(bid)
        self._release(chain, data=not chain.writable)
        if chain.writable:
            self._done[bid] = chain

    # -- raw ring access (hostile tests), event suppression ----------------------------------------------
    def raw_desc(self, i: int, addr: int, length: int, id: int = 0, flags: int = 0) -> None:
        """Write descriptor i of the ring as given, unchecked (flags last, one 2-byte store)."""
        self._desc_body(i, addr, length, id)
        self.mem.store16(self.desc_gpa + 16 * i + 14, flags)

    def _desc_body(self, i: int, addr: int, length: int, id: int) -> None:
        """Descriptor i's address, length and id; its flags keep the previous lap's (never available, nor
        used, in this one: a placeholder 0 would read as used in a lap of wrap counter 0)."""
        self.mem.write(self.desc_gpa + 16 * i, struct.pack("<QIH", addr, length, id))

    def raw_flags(self, i: int, flags: int) -> None:
        self.mem.store16(self.desc_gpa + 16 * i + 14, flags)

    def desc_flags(self, i: int) -> int:
        return self.mem.load16(self.desc_gpa + 16 * i + 14)

    @property
    def driver_event(self) -> tuple[int, int]:
        """(off_wrap, flags) of the driver area: when the device may call."""
        return self.mem.load16(self.avail_gpa), self.mem.load16(self.avail_gpa + 2)

    @driver_event.setter
    def driver_event(self, value: tuple[int, int]) -> None:
        self.mem.store16(self.avail_gpa, value[0])
        self.mem.store16(self.avail_gpa + 2, value[1])

    @property
    def device_event(self) -> tuple[int, int]:
        """(off_wrap, flags) of the device area: when the driver should kick."""
        return self.mem.load16(self.used_gpa), self.mem.load16(self.used_gpa + 2)


def _crossed(num: int, ev: int, old: int, new: int) -> bool:
    """Is position ev in [old, new) (positions index | wrap << 15, at most num apart)?"""
    def lin(p: int) -> int:
        return (p & (WRAP - 1)) - (num if (p >> 15) != (new >> 15) else 0)
    return lin(old) <= lin(ev) < (new & (WRAP - 1))

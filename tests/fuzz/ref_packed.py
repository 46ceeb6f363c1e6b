"""A slow pure-Python reference of the C core's packed ring (vs_packed.c): the oracle of the `core-packed`
fuzz target (harness.py PackedScenario).

It models the DEVICE side of a packed virtqueue from virtio 1.2 section 2.8, not from vs_packed.c:
- a descriptor is available in the lap of wrap counter w when its AVAIL flag is w and its USED flag is
  not (2.8.1); the device keeps its next-avail and next-used positions (index | wrap << 15) itself,
  because guest memory holds no used index;
- a list is consecutive descriptors while NEXT is set, each available in its own lap, the buffer id in
  the last one (2.8.6); at most the queue size of descriptors (2.8.5: "If not limited, the maximum
  number of descriptors in a list is the virt queue size"), also for an indirect table's entries;
- an indirect descriptor (2.8.7) is a list's only descriptor; its table's entries are used in order,
  their NEXT flag means nothing;
- one used descriptor per list on the slot of its first descriptor, the device skipping the rest
  (2.8.6); AVAIL = USED = the used wrap counter; WRITE when the device wrote data into the buffer
  (2.8.3: "In a used descriptor, this bit is used to specify whether any data has been written"), so a
  device-writable list completed with length 0 has no WRITE; a batch's first used descriptor's flags are
  stored last (2.8.9 "Multi-buffer requests");
- IN_ORDER (2.8.8): a batch of device-readable buffers gets one used descriptor with the id of its last
  buffer (a batch with a device-writable buffer keeps one per buffer: the lengths matter);
- event suppression (2.8.10): the driver area (SET_VRING_ADDR's avail address) says whether to call -
  ENABLE, DISABLE, or (EVENT_IDX) DESC: only when the descriptor at off_wrap was made used; the device
  area (its used address) is what the device asks of the driver's kicks.

Where the spec leaves a hostile driver's case open, the reference does what the project documents
(docs/fuzzing.md, tests/core/test_packed_hostile.py): a list running into a descriptor that is not
available, or a descriptor at the next-avail position whose flags say "used in this lap", breaks the
ring (`wrap`); an id at or past the queue size `head`; a list longer than the queue `loop`, a table
longer than it `chain_len`; INDIRECT inside a table `nested_indirect` (the spec calls that flag
reserved in a table; the project treats it as corruption, like the split ring); INDIRECT with NEXT, on
a list's second descriptor, without INDIRECT_DESC, or a table length that is 0 or not a multiple of 16
is a per-chain fault (drops_bad_desc).

The net device's part (TX, RX, MRG_RXBUF, the host fd, counters) is ref.Pair's: it reaches the ring
only through the methods overridden here, as the C net files reach it through the layout interface.
"""
from __future__ import annotations

import errno
import struct

import ref
from ref import BAD_DESC, FAULT, OK, Broken  # noqa: F401 - Broken is what a broken ring raises

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2
WRAP = 0x8000
RF_PACKED, RF_IN_ORDER = 8, 16
WRAP_BROKEN = 7          # VS_BROKEN_WRAP
BROKEN_NAMES = {**ref.BROKEN_NAMES, WRAP_BROKEN: "wrap"}


def idx(pos: int) -> int:
    return pos & (WRAP - 1)


def wrap(pos: int) -> int:
    return pos >> 15


class PackedRing(ref.Ring):
    def __init__(self):
        super().__init__()
        self.layout_set = False     # a start reached the core's vs_ring_start (it picks the layout)
        self.lists: dict[int, tuple[int, bool, bool]] = {}   # slot -> (descriptors, writable, data written)
        self.batch_last_id = 0
        self.batch_writable = False

    def advance(self, pos: int, n: int) -> int:
        i, w = idx(pos) + n, wrap(pos)
        if i >= self.num:
            i, w = i - self.num, w ^ 1
        return i | w << 15

    def list_len(self, slot: int) -> int:
        n = self.lists.get(slot, (0, False, False))[0]
        return n if 0 < n <= self.num else 1

    # the descriptor ring: slot i at 16 * i (addr 8, len 4, id 2, flags 2)
    def desc_flags(self, mem, i: int) -> int:
        return self.ld16(mem, self.desc, 16 * i + 14)

    def load(self, mem, i: int):
        return struct.unpack("<QIHH", mem.read(self.desc, 16 * i, 16))


def availability(flags: int, lap: int) -> int:
    """1: available in the lap of wrap counter `lap`; 0: not (yet); -1: AVAIL and USED both say `lap`,
    i.e. used in this lap, which no descriptor at or after the device's next-avail position can be."""
    a, u = bool(flags & F_AVAIL), bool(flags & F_USED)
    if a != bool(lap):
        return 0
    return 1 if u != bool(lap) else -1


class PackedPair(ref.Pair):
    def __init__(self, mem: ref.Memory):
        super().__init__(mem)
        self.rx, self.tx = PackedRing(), PackedRing()
        self.batches: set[tuple[bool, int]] = set()     # (one used descriptor for the batch, later entries)

    # -- set-up (datapath.Datapath.start_ring/stop_ring for a packed ring) ----------------------------
    def _map(self, r: PackedRing):
        d = self.mem.uva(r.desc_uva, 16 * r.num)
        a = self.mem.uva(r.avail_uva, 4)
        u = self.mem.uva(r.used_uva, 4)
        if d is None or a is None or u is None:
            return -errno.EFAULT
        if d[2] & 15 or a[2] & 3 or u[2] & 3:     # our mapping must be as aligned as the guest's (2.8.10.1)
            return -errno.EINVAL
        r.desc, r.avail, r.used = d, a, u
        return 0

    def start(self, i: int, num: int, desc: int, avail: int, used: int, base: int = 0):
        r = self.ring(i)
        if not 0 < num <= ref.MAX_QUEUE:                    # 2.8: any size up to 2^15
            return ("ConfigError", errno.EINVAL)
        avail_pos, used_pos = base & 0xFFFF, base >> 16
        used_pos = used_pos or avail_pos                    # only the avail half: used = avail
        if base >> 32 or idx(avail_pos) >= num or idx(used_pos) >= num:
            return ("ConfigError", errno.EPROTO)
        r.last_avail, r.used_idx = avail_pos, used_pos
        r.lists = {}
        r.num, r.desc_uva, r.avail_uva, r.used_uva = num, desc, avail, used
        r.layout_set = True
        rc = -errno.EINVAL if desc & 15 or avail & 3 or used & 3 else self._map(r)
        if rc < 0:
            r.running = 0
            r.desc = r.avail = r.used = None
            return ("ConfigError", errno.EINVAL) if rc == -errno.EINVAL else ("GuestFaultError", errno.EFAULT)
        r.last_avail = r.signalled_used = r.used_idx     # taken, never completed: taken again
        r.batch_writable = False
        r.signalled_valid = 0
        r.broken = 0
        r.running = 1
        return ("ok", r.used_idx | r.used_idx << 16)

    def stop(self, i: int) -> int:
        r = self.ring(i)
        r.running = 0
        r.desc = r.avail = r.used = None
        if not r.layout_set or not r.flags & RF_PACKED:
            return r.last_avail
        return r.last_avail | r.used_idx << 16

    # -- taking lists ---------------------------------------------------------------------------------
    def avail_pending(self, r: PackedRing) -> int:
        st = availability(r.desc_flags(self.mem, idx(r.last_avail)), wrap(r.last_avail))
        if st < 0:
            r.fail(WRAP_BROKEN)
        return st

    def pop_chain(self, r: PackedRing, writable: bool, max_iov: int):
        """(id, outcome, iov, length, ring descriptors); raises Broken."""
        at = r.last_avail
        i, lap = idx(at), wrap(at)
        count, fault, length, iov = 0, OK, 0, []
        while True:
            count += 1
            if count > r.num:
                r.fail(ref.LOOP)                      # a list longer than the queue
            flags = r.desc_flags(self.mem, i)
            if availability(flags, lap) != 1:
                r.fail(WRAP_BROKEN)                   # the list runs into a descriptor not made available
            addr, n, bid, _ = r.load(self.mem, i)
            if flags & F_INDIRECT:
                rc, add = self.table(r, writable, addr, n, flags, count, iov, max_iov)
                length += add
                fault = fault or rc
            elif fault == OK:
                rc, add = self.element(writable, flags, addr, n, iov, max_iov)
                length += add
                fault = rc
            i += 1
            if i == r.num:
                i, lap = 0, lap ^ 1
            if not flags & F_NEXT:
                break
        if bid >= r.num:
            r.fail(ref.HEAD)                          # the last descriptor's buffer id
        r.at = at
        r.lists[idx(at)] = (count, writable, False)
        r.last_avail = r.advance(at, count)
        return bid, fault, iov, length, count

    def element(self, writable: bool, flags: int, addr: int, n: int, iov: list, max_iov: int):
        """One data element: (outcome, bytes it adds to the list's length)."""
        if bool(flags & F_WRITE) != writable:
            return BAD_DESC, 0
        if n == 0:
            return OK, 0
        return self.gpa_to_iov(addr, n, iov, max_iov), n

    def table(self, r: PackedRing, writable: bool, addr: int, n: int, flags: int, count: int, iov: list,
              max_iov: int):
        if count != 1 or flags & F_NEXT or not r.flags & ref.RF_INDIRECT or n == 0 or n % 16:
            return BAD_DESC, 0
        entries = n // 16
        if entries > r.num:
            r.fail(ref.CHAIN_LEN)                     # more than the queue size of descriptors in the list
        loc = self.mem.gpa(addr, n)
        if loc is None:
            return FAULT, 0
        fault, length = OK, 0
        for k in range(entries):
            e_addr, e_len, _id, e_flags = struct.unpack("<QIHH", self.mem.read(loc, 16 * k, 16))
            if e_flags & F_INDIRECT:
                r.fail(ref.NESTED)
            if fault == OK:
                fault, add = self.element(writable, e_flags, e_addr, e_len, iov, max_iov)
                length += add
        return fault, length

    # -- completing ------------------------------------------------------------------------------------
    def used_add(self, r: PackedRing, bid: int, length: int) -> None:
        slot = idx(r.used_idx)
        self.mem.write(r.desc, 16 * slot + 8, struct.pack("<IH", length & 0xFFFFFFFF, bid))
        count, writable, _ = r.lists.get(slot, (0, False, False))
        r.lists[slot] = (count, writable, writable and length > 0)
        r.batch_last_id = bid
        r.batch_writable |= writable
        r.used_idx = r.advance(r.used_idx, r.list_len(slot))

    def used_flags(self, r: PackedRing, pos: int) -> int:
        f = F_AVAIL | F_USED if wrap(pos) else 0
        return f | (F_WRITE if r.lists.get(idx(pos), (0, False, False))[2] else 0)

    def used_publish(self, r: PackedRing, old: int) -> None:
        if r.used_idx == old:
            return
        first = idx(old)
        rest, pos = [], old
        for _ in range(r.num):                        # every later used descriptor of the batch
            pos = r.advance(pos, r.list_len(idx(pos)))
            if pos == r.used_idx:
                break
            rest.append(pos)
        collapse = bool(r.flags & RF_IN_ORDER and not r.batch_writable)
        self.batches.add((collapse, min(len({idx(p) for p in rest} - {first}), 3)))   # the harness's features
        if collapse:
            self.mem.write(r.desc, 16 * first + 8, struct.pack("<IH", 0, r.batch_last_id))
        else:
            for pos in rest:
                r.st16(self.mem, r.desc, 16 * idx(pos) + 14, self.used_flags(r, pos))
        r.st16(self.mem, r.desc, 16 * first + 14, self.used_flags(r, old))   # the first one last
        r.batch_writable = False
        if self.need_call(r):
            r.st["notify_sent"] += 1
            r.calls += 1
        else:
            r.st["notify_suppressed"] += 1

    def need_call(self, r: PackedRing) -> bool:
        old, new, valid = r.signalled_used, r.used_idx, r.signalled_valid
        r.signalled_used, r.signalled_valid = new, 1
        mode = r.ld16(self.mem, r.avail, 2) & 3
        if mode == EVENT_DISABLE:
            return False
        if mode != EVENT_DESC or not r.flags & ref.RF_EVENT_IDX or not valid:
            return True                               # ENABLE, the reserved 3, DESC without EVENT_IDX
        event = r.ld16(self.mem, r.avail, 0)

        def lin(p: int) -> int:                      # within the lap that ends at new
            return idx(p) - (r.num if wrap(p) != wrap(new) else 0)
        return lin(old) <= lin(event) < idx(new)

    # -- the device area: asking for kicks ----------------------------------------------------------------
    def notify_disable(self, r: PackedRing) -> None:
        if r.flags & ref.RF_EVENT_IDX:
            return
        if r.ld16(self.mem, r.used, 2) & 3 != EVENT_DISABLE:
            r.st16(self.mem, r.used, 2, EVENT_DISABLE)

    def notify_enable(self, r: PackedRing, seen: int) -> int:
        if r.flags & ref.RF_EVENT_IDX:
            r.st16(self.mem, r.used, 0, seen)
            r.st16(self.mem, r.used, 2, EVENT_DESC)
        else:
            r.st16(self.mem, r.used, 2, EVENT_ENABLE)
        if idx(seen) >= r.num or availability(r.desc_flags(self.mem, idx(seen)), wrap(seen)) == 0:
            return 0
        self.notify_disable(r)
        return self.avail_pending(r)

    def stats(self) -> dict:
        out = super().stats()
        for name, r in (("rx", self.rx), ("tx", self.tx)):
            out[name]["broken"] = BROKEN_NAMES.get(r.broken) if r.broken else None
        return out

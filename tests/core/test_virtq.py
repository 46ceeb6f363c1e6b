"""The driver-side test tool itself: allocator, ring layout, kick decisions."""
from __future__ import annotations

import random

import pytest

from vhostsplice.testing.virtq import USED_F_NO_NOTIFY, DriverQueue, GuestMemory


def test_allocator_never_overlaps_and_gives_memory_back():
    mem = GuestMemory(bytearray(8192), gpa_base=0x10000)
    rnd = random.Random(7)
    live: dict[int, int] = {}
    for _ in range(20000):
        if live and rnd.random() < 0.5:
            gpa = rnd.choice(list(live))
            del live[gpa]
            mem.free(gpa)
            continue
        n = rnd.choice([1, 7, 100, 1512, 2048, rnd.randrange(1, 3000)])
        align = rnd.choice([2, 4, 8, 16])
        try:
            gpa = mem.alloc(n, align)
        except MemoryError:
            continue
        assert gpa % align == 0 and 0x10000 <= gpa and gpa + n <= 0x10000 + 8192
        assert all(gpa + n <= g or g + k <= gpa for g, k in live.items())
        live[gpa] = n
    for gpa in live:
        mem.free(gpa)
    assert mem.alloc(8192) == 0x10000                 # everything merged back


def test_layout_and_descriptor_recycling():
    mem = GuestMemory(bytearray(1 << 16), gpa_base=0x1000, uva_base=0x9000_0000)
    q = DriverQueue(mem, 64)
    assert q.desc_gpa % 16 == 0 and q.avail_gpa % 2 == 0 and q.used_gpa % 4 == 0
    assert q.desc_uva - q.desc_gpa == 0x9000_0000 - 0x1000
    q.add_out([b"x" * 100], split=3)
    q.add_in(2, 500, indirect=True)
    assert len(q._free) == 64 - 3 - 2
    with pytest.raises(RuntimeError):
        q.add_in(1, 100, split=60)          # 60 descriptors, 59 free


def test_publish_reports_whether_to_kick():
    mem = GuestMemory(bytearray(1 << 16))
    q = DriverQueue(mem, 16)
    assert q.add_out([b"a"], publish=False) and q.publish() is True
    mem.store16(q.used_gpa, USED_F_NO_NOTIFY)
    assert q.add_out([b"b"], publish=False) and q.publish() is False
    e = DriverQueue(mem, 16, event_idx=True)         # avail_event 0: kick only when idx passes 0
    assert e.add_out([b"c"], publish=False) and e.publish() is True
    assert e.add_out([b"d"], publish=False) and e.publish() is False

"""The region table beyond 8 (memory slots, issue 16): the core holds VS_MAX_REGIONS regions, gets a
large table sorted by gpa whatever order it was given in, and finds every region by binary search."""
from __future__ import annotations

import random

import pytest

from vhostsplice.device.datapath import lib
from vhostsplice.errors import ConfigError
from vhostsplice.spec import MAX_MEM_SLOTS
from vhostsplice.testing.virtq import Region

HDR = bytes(12)
CHUNK = 64 << 10


def slot_cuts(rig, count: int) -> list[int]:
    """Offsets cutting the rig's memory into `count` regions: one for the rings, the rest CHUNK each."""
    first = rig.mem.size - (count - 1) * CHUNK
    assert first > 0
    return [first + k * CHUNK for k in range(count - 1)]


@pytest.mark.parametrize("count", [lib.VS_LINEAR_REGIONS + 1, 40])
def test_frames_in_every_region_of_a_large_shuffled_table(make_rig, count):
    """Frames whose buffers sit in the high regions (and straddle cuts between them) go out byte-exact:
    the table was handed over shuffled, so a lookup that needed Python's sort would miss them."""
    rig = make_rig(start=False, mem_size=4 << 20)
    regions = rig.mem.regions(*slot_cuts(rig, count))
    assert len(regions) == count
    random.Random(count).shuffle(regions)
    rig.dp.set_memory(regions)
    rig.start(0)
    rig.start(1)
    assert rig.dp.memory_stats()["regions"] == count
    rig.mem.alloc(rig.mem.size - (count - 1) * CHUNK)   # later buffers land in the 64 KiB regions
    frames = [rig.frame(n, seed=n % 251) for n in (60, 1514, 9000, 20000, 1514, 60000)]
    rig.tx.add_out(frames, split=3)
    rig.poll_idle()
    assert rig.wire() == [HDR + f for f in frames]
    assert rig.stats("tx")["drops_fault"] == 0


def test_a_gpa_between_regions_is_a_fault_not_a_neighbour(make_rig):
    """A large table with a hole: a buffer in the hole is a counted fault (the search's last check)."""
    rig = make_rig(start=False, mem_size=4 << 20)
    regions = rig.mem.regions(*slot_cuts(rig, 20))
    hole = regions.pop(12)
    rig.dp.set_memory(regions)
    rig.start(1)
    head = rig.tx.add_out([rig.frame(60)], publish=False)[0]
    rig.tx.raw_desc(head, hole.gpa + 100, 72, 0, 0)
    rig.tx.publish()
    rig.poll_idle()
    assert rig.wire() == []
    assert rig.stats("tx")["drops_fault"] == 1


def test_more_regions_than_slots_is_refused(make_rig):
    rig = make_rig(start=False, mem_size=1 << 20)
    view = rig.mem.view
    regions = [Region(rig.mem.gpa_base + 8 * k, rig.mem.uva_base + 8 * k, 8, view[8 * k:8 * k + 8])
               for k in range(MAX_MEM_SLOTS + 1)]
    rig.dp.set_memory(regions[:MAX_MEM_SLOTS])
    assert rig.dp.memory_stats() == {"regions": MAX_MEM_SLOTS, "bytes": 8 * MAX_MEM_SLOTS}
    with pytest.raises(ConfigError):
        rig.dp.set_memory(regions)
    assert rig.dp.memory_stats()["regions"] == MAX_MEM_SLOTS
    rig.dp.set_memory(rig.mem.regions())

"""The state page codec (vhostsplice/device/statepage.py): its layout is the C core's struct vs_ring_state, and a
page that is short, corrupt, of another version or layout, or whose positions cannot be, is ignored with a
reason; the resume decisions for split and packed rings."""
from __future__ import annotations

import errno
import mmap
import os
import struct
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from vhostsplice.device import statepage as S
from vhostsplice.device.datapath import ffi
from vhostsplice.errors import ConfigError, SetupError

ADDRS = (0x1000, 0x2000, 0x3000)
SLOT_FIELDS = ("desc_uva", "avail_uva", "used_uva", "num", "live", "seq", "avail_pos", "used_pos", "next_avail",
               "next_used", "reserved")


def test_the_python_layout_is_the_c_struct():
    assert S.SIZE == ffi.sizeof("struct vs_ring_state")
    assert S.HEADER.size == ffi.offsetof("struct vs_ring_state", "ring")
    assert S.SLOT.size == ffi.sizeof("struct vs_ring_slot")
    offsets = [ffi.offsetof("struct vs_ring_slot", f) for f in SLOT_FIELDS]
    sizes = [struct.calcsize("<" + c) for c in S.SLOT.format.lstrip("<")]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def page(*, magic=S.MAGIC, version=S.VERSION, size=S.SIZE, layout=S.LAYOUT_SPLIT, generation=3, slots=None) -> bytes:
    data = bytearray(S.SIZE)
    S.HEADER.pack_into(data, 0, magic, version, size, layout, generation)
    for i, slot in enumerate(slots or [(*ADDRS, 256, 1, 0, 10, 10, 10, 10, 0)] * 2):
        S.SLOT.pack_into(data, S.HEADER.size + i * S.SLOT.size, *slot)
    return bytes(data)


def test_a_good_page_decodes():
    image, why = S.decode(page())
    assert why == "" and image.generation == 3 and image.layout == S.LAYOUT_SPLIT
    assert image.slots[1] == S.Slot(*ADDRS, 256, 1, 0, 10, 10, 10, 10)


@pytest.mark.parametrize("data, why", [
    (bytes(S.SIZE), "empty"),
    (page()[:-1], "size"),
    (page() + b"\0", "size"),
    (page(magic=0x12345678), "bad magic"),
    (page(version=2), "version 2"),
    (page(size=S.SIZE + 8), "header size"),
    (page(layout=7), "unknown layout 7"),
])
def test_a_bad_page_is_ignored_with_a_reason(data, why):
    image, reason = S.decode(data)
    assert image is None and why in reason


@pytest.mark.parametrize("slot, layout, why", [
    ((*ADDRS, 256, 0, 0, 1, 1, 1, 1, 0), S.LAYOUT_SPLIT, "not live"),
    ((0x9000, 0x2000, 0x3000, 256, 1, 0, 1, 1, 1, 1, 0), S.LAYOUT_SPLIT, "another ring"),
    ((*ADDRS, 128, 1, 0, 1, 1, 1, 1, 0), S.LAYOUT_SPLIT, "another ring"),
    ((*ADDRS, 256, 1, 0, 600, 10, 0, 0, 0), S.LAYOUT_SPLIT, "more than the ring size ahead"),
    ((*ADDRS, 256, 1, 1, 10, 10, 900, 900, 0), S.LAYOUT_SPLIT, "pending used position"),
    ((*ADDRS, 256, 1, 0, 256, 0, 0, 0, 0), S.LAYOUT_PACKED, "packed position out of the ring"),
    ((*ADDRS, 256, 1, 1, 0, 0, 0, 0x8000 | 300, 0), S.LAYOUT_PACKED, "packed position out of the ring"),
])
def test_a_slot_that_cannot_be_is_not_used(slot, layout, why):
    assert why in S.slot_problem(S.Slot(*slot[:10]), layout, 256, ADDRS)


def test_a_possible_slot_is_used():
    assert S.slot_problem(S.Slot(*ADDRS, 256, 1, 1, 0xFFF0, 0xFFF0, 5, 5), S.LAYOUT_SPLIT, 256, ADDRS) == ""
    assert S.slot_problem(S.Slot(*ADDRS, 256, 1, 0, 0x8000 | 255, 0x8000 | 3, 0, 0), S.LAYOUT_PACKED, 256,
                          ADDRS) == ""


def test_split_resumes_from_used_idx_and_the_page_only_agrees_or_not():
    even = S.Slot(*ADDRS, 256, 1, 2, 40, 40, 0, 0)
    res = S.resume_split(even, "", front_end=0, used_idx=40)
    assert (res.source, res.position, res.disagreed, res.state) == ("state-page", 40, True, 40)
    odd = S.Slot(*ADDRS, 256, 1, 3, 40, 40, 52, 52)      # killed inside a publish: either side is possible
    assert S.resume_split(odd, "", 0, 52).source == "state-page"
    assert S.resume_split(odd, "", 0, 40).source == "state-page"
    res = S.resume_split(even, "", 0, 7)                  # the ring was reset while no worker ran
    assert (res.source, res.position) == ("used-idx", 7) and "not the ring's used->idx" in res.reason
    res = S.resume_split(None, "empty", 7, 7)
    assert (res.source, res.disagreed, res.reason) == ("used-idx", False, "empty")


def test_packed_resumes_from_the_page_and_a_killed_publish_is_read_from_its_first_descriptor():
    wrap = 0x8000
    even = S.Slot(*ADDRS, 256, 1, 0, wrap | 5, wrap | 5, 0, 0)
    res = S.resume_packed(even, "", front_end=0, flags=None)
    assert (res.source, res.position) == ("state-page", (wrap | 5) | (wrap | 5) << 16) and res.disagreed
    odd = S.Slot(*ADDRS, 256, 1, 1, wrap | 5, wrap | 5, wrap | 9, wrap | 9)
    used_by_us = S.F_AVAIL | S.F_USED                     # AVAIL == USED == the used wrap counter (1)
    assert S.resume_packed(odd, "", 0, used_by_us).position == S.packed_base(wrap | 9, wrap | 9)
    assert S.resume_packed(odd, "", 0, S.F_AVAIL).position == S.packed_base(wrap | 5, wrap | 5)   # still avail
    assert S.resume_packed(odd, "", 0, None).position == S.packed_base(wrap | 5, wrap | 5)
    res = S.resume_packed(None, "no state page", 0x10001, None)
    assert (res.source, res.position, res.reason) == ("front-end", 0x10001, "no state page")


def test_packed_base_is_the_vhost_user_packed_state():
    assert S.packed_base(0x8000 | 3, 7) == 0x0007_8003
    assert S.packed_base(3, 0x8000 | 7) == 0x8007_0003


def memfd_page(data: bytes = b"") -> mmap.mmap:
    fd = S.new_memfd("test")
    try:
        os.pwrite(fd, data, 0) if data else None
        return S.map_fd(fd, "test")
    finally:
        os.close(fd)


def test_a_corrupt_page_is_ignored_and_cleared_and_a_good_one_counts_generations():
    mm = memfd_page(page(magic=0xDEAD))
    sp = S.StatePage(mm)
    assert sp.prior is None and "bad magic" in sp.reason and sp.generation == 1
    assert S.decode(bytes(mm))[0].slots[0].live == 0
    sp.begin(1, S.LAYOUT_SPLIT, 256, ADDRS, (9, 9))
    again = S.StatePage(mm)
    assert again.generation == 2 and again.slot(1, S.LAYOUT_SPLIT, 256, ADDRS)[0].used_pos == 9
    assert "packed" in again.slot(1, S.LAYOUT_PACKED, 256, ADDRS)[1]       # the page is for split rings
    again.retire(1)
    assert "not live" in S.StatePage(mm).slot(1, S.LAYOUT_SPLIT, 256, ADDRS)[1]
    mm.close()


def test_the_memfd_is_sealed_and_a_file_off_tmpfs_is_refused(monkeypatch):
    fd = S.new_memfd("test")
    try:
        with pytest.raises(OSError):
            os.ftruncate(fd, 8)                                    # F_SEAL_SHRINK: no SIGBUS for a worker
    finally:
        os.close(fd)
    fd = S.new_memfd("test")
    try:
        S.map_fd(fd, "test").close()                               # a memfd is tmpfs
        monkeypatch.setattr(S, "_fs_type", lambda _fd: 0xEF53)     # as if on ext4
        with pytest.raises(ConfigError) as info:
            S.map_fd(fd, "--state-file x")
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL and "not on tmpfs or ramfs" in str(info.value)


def test_one_worker_per_state_file():
    path = tempfile.mktemp(prefix="vs-lock-", dir="/dev/shm")
    try:
        first = S.open_state(path, None)
        with pytest.raises(SetupError) as info:
            S.open_state(path, None)                               # a second worker on the same page
        assert info.value.errno == errno.EBUSY
        first.close()                                              # the first one ends (or is killed)
        S.open_state(path, None).close()
    finally:
        os.unlink(path)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=S.SIZE, max_size=S.SIZE), st.sampled_from([S.LAYOUT_SPLIT, S.LAYOUT_PACKED]),
       st.integers(1, S.MAX_NUM), st.booleans())
def test_any_bytes_are_judged_never_trusted_blindly(data, layout, num, keep_header):
    """Whatever the page holds (a random one, or random slots behind a good header): decoding and judging
    it never raises, and a slot it accepts has positions a ring of num can have."""
    if keep_header:         # a good header and slots of this ring's size: the positions are what is random
        buf = bytearray(page(layout=layout)[:S.HEADER.size] + data[S.HEADER.size:])
        for i in (0, 1):
            struct.pack_into("<II", buf, S.HEADER.size + i * S.SLOT.size + 24, num, 1)
        data = bytes(buf)
    image, why = S.decode(data)
    if image is None:
        assert why
        return
    for slot in image.slots:
        addrs = (slot.desc, slot.avail, slot.used)
        if S.slot_problem(slot, layout, num, addrs) == "" and layout == S.LAYOUT_PACKED:
            assert (slot.avail_pos & 0x7FFF) < num and (slot.used_pos & 0x7FFF) < num
        if S.slot_problem(slot, layout, num, addrs) == "":
            assert slot.live and slot.num == num

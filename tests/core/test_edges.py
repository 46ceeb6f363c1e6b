"""Edges: 16-bit index wrap-around, faults in the middle of a merge, RX across regions, eventfd draining."""
from __future__ import annotations

import os

import pytest

from vhostsplice.device.datapath import drain_eventfd


def start_at(rig, q, index: int, pos: int) -> None:
    """Both sides agree the ring is at pos (as after a reconnect)."""
    q.mem.store16(q.used_gpa + 2, pos)
    q.mem.store16(q.avail_gpa + 2, pos)
    q.last_used = q.avail_idx = q.published = pos
    assert rig.start(index) == pos


def test_indices_wrap_at_65536(make_rig):
    rig = make_rig(num=16, start=False)
    start_at(rig, rig.tx, 1, 65530)
    start_at(rig, rig.rx, 0, 65534)
    frames = [rig.frame(60, seed=i) for i in range(12)]
    for i in range(0, 12, 4):                         # at most 16 chains in flight
        rig.tx.add_out(frames[i:i + 4])
        rig.rx.add_in(4, 2048)
        rig.inject(*[rig.hdr() + f for f in frames[i:i + 4]])
        rig.poll_idle()
        assert len(rig.tx.used()) == 4
        got = rig.rx.packets(rig.rx.used())
        assert [p[12:] for p in got] == frames[i:i + 4]
    assert rig.wire() == [bytes(12) + f for f in frames]
    assert rig.tx.used_idx == (65530 + 12) % 65536 and rig.rx.used_idx == (65534 + 12) % 65536


def test_fault_in_the_middle_of_a_merge(make_rig):
    rig = make_rig(mrg=True, rx_max=6000)
    first, = rig.rx.add_in(1, 2048)
    slot = rig.rx.avail_idx
    rig.rx.raw_desc(100, 0x10, 2048, 2, 0)            # device-writable but outside guest memory
    rig.rx.raw_avail(slot % rig.rx.num, 100)
    rig.rx.set_avail_idx(slot + 1)
    rig.rx.add_in(4, 2048)
    big = rig.hdr() + rig.frame(3000)
    rig.inject(big, rig.hdr() + rig.frame(1000, seed=1))
    rig.poll_idle()
    used = rig.rx.used()
    # collecting for the first packet stops before the faulty chain; 3012 bytes do not fit the 2048 it
    # had, so it is dropped whole (never cut short) and its chain is reused by the second packet; the
    # faulty chain is then completed on its own
    assert used[0] == (first, 1012)
    assert used[1] == (100, 0)
    st = rig.stats("rx")
    assert st["drops_oversize"] == 1 and st["drops_fault"] == 1 and st["packets"] == 1
    assert st["chains"] == 2                             # the delivered chain and the faulty one


def test_rx_buffer_across_two_regions(make_rig):
    rig = make_rig(splits=(1 << 20,))
    gpa = rig.mem.gpa_base + (1 << 20) - 100
    rig.rx.raw_desc(7, gpa, 2048, 2, 0)
    rig.rx.raw_avail(0, 7)
    rig.rx.set_avail_idx(1)
    pkt = rig.hdr() + rig.frame(1500, seed=3)
    rig.inject(pkt)
    rig.poll_idle()
    assert rig.stats("rx")["packets"] == 1
    data = rig.mem.read(gpa, len(pkt))
    assert data[12:] == pkt[12:] and data[10:12] == b"\x01\x00"


def test_drain_eventfd():
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert drain_eventfd(fd) == 0
        os.eventfd_write(fd, 3)
        os.eventfd_write(fd, 2)
        assert drain_eventfd(fd) == 5
        assert drain_eventfd(fd) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("mrg", [False, True])
def test_frame_larger_than_the_buffers_is_dropped_not_cut(make_rig, mrg):
    rig = make_rig(mrg=mrg, rx_max=1518 + 12)           # the worker believed the MTU was 1500
    heads = rig.rx.add_in(8, 2048)
    too_big = rig.hdr() + rig.frame(4030)               # the tap's MTU was raised meanwhile
    fits = rig.hdr() + rig.frame(600, seed=2)
    rig.inject(too_big, fits)
    rig.poll_idle()
    used = rig.rx.used()
    assert used == [(heads[0], len(fits))]              # the big one left no trace in the guest's ring
    st = rig.stats("rx")
    assert st["drops_oversize"] == 1 and st["packets"] == 1

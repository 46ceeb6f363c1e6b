"""The packed layout (vs_packed.c, virtio 1.2 2.8) through the same net files: TX, RX, indirect,
MRG_RXBUF, laps over odd ring sizes, event suppression, IN_ORDER, positions and the vring state."""
from __future__ import annotations

import pytest

from vhostsplice.device import datapath
from vhostsplice.errors import ConfigError
from vhostsplice.testing.virtq import DESC_F_NEXT
from vhostsplice.testing.virtq_packed import DESC_F_AVAIL, DESC_F_USED, DESC_F_WRITE, EVENT_DESC, \
    EVENT_DISABLE, EVENT_ENABLE


def num_buffers(data: bytes) -> int:
    return int.from_bytes(data[10:12], "little")


def test_tx_frames_are_byte_exact_and_used_in_order(make_rig):
    rig = make_rig(packed=True, num=7)
    frames = [rig.frame(n, seed=n) for n in (60, 1514, 200)]
    ids = rig.tx.add_out(frames[:2], split=3)           # 6 of the 7 descriptors
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + f for f in frames[:2]]
    assert rig.tx.used() == [(ids[0], 0), (ids[1], 0)]
    ids = rig.tx.add_out(frames[2:], split=3)           # slots 6, 0, 1: across the end of the ring
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + frames[2]]
    assert rig.tx.used() == [(ids[0], 0)]
    st = rig.stats("tx")
    assert st["packets"] == 3 and st["bytes"] == sum(map(len, frames)) and st["broken"] is None
    assert rig.dp.ring_positions(1) == (2, 2)           # index 2 of the second lap: wrap counter 0


@pytest.mark.parametrize("num", [7, 100, 256])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_tx_laps_over_odd_ring_sizes(make_rig, num, split):
    """Several laps: the wrap counters flip at num, chains cross the end of the ring."""
    rig = make_rig(packed=True, num=num)
    sent = []
    total = 3 * num + 5
    while len(sent) < total:
        k = min(max(1, rig.tx.free_descs // split), total - len(sent), 5)
        frames = [rig.frame(60 + (len(sent) + i) % 50, seed=len(sent) + i) for i in range(k)]
        ids = rig.tx.add_out(frames, split=split)
        rig.poll_idle()
        assert [i for i, _n in rig.tx.used()] == ids
        assert rig.wire() == [bytes(12) + f for f in frames]
        sent += frames
    avail, used = rig.dp.ring_positions(1)
    assert avail == used == rig.tx.avail_pos == rig.tx.used_pos
    assert rig.stats("tx")["packets"] == total


@pytest.mark.parametrize("num", [7, 100])
def test_rx_laps_and_bytes(make_rig, num):
    rig = make_rig(packed=True, num=num)
    for lap in range(3 * num // 2 + 1):
        rig.rx.add_in(2, 2048, split=2 if lap % 2 else 1)
        pkts = [rig.hdr(flags=1) + rig.frame(60 + lap, seed=lap), rig.hdr() + rig.frame(1500, seed=lap + 1)]
        rig.inject(*pkts)
        rig.poll_idle()
        used = rig.rx.used()
        assert [n for _i, n in used] == [len(p) for p in pkts]
        for (bid, n), p in zip(used, pkts):
            data = rig.rx.read_in(bid, n)
            assert num_buffers(data) == 1 and data[12:] == p[12:] and data[:10] == p[:10]
    assert rig.stats("rx")["packets"] == 2 * (3 * num // 2 + 1)


def test_used_descriptor_flags(make_rig):
    """AVAIL and USED both the used wrap counter; WRITE on a device-writable buffer (2.8.1)."""
    rig = make_rig(packed=True, num=4)
    rig.rx.add_in(1, 2048)
    rig.tx.add_out([rig.frame(60)])
    rig.inject(rig.hdr() + rig.frame(100))
    rig.poll_idle()
    assert rig.rx.desc_flags(0) == DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE
    assert rig.tx.desc_flags(0) == DESC_F_AVAIL | DESC_F_USED
    rig.rx.used()
    rig.tx.used()
    for _ in range(3):                                  # into the second lap: used wrap counter 0
        rig.tx.add_out([rig.frame(60)])
        rig.poll_idle()
        rig.tx.used()
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.tx.desc_flags(0) == 0 and rig.tx.used()


def test_indirect_tx_and_rx(make_rig):
    rig = make_rig(packed=True, num=5)
    f = rig.frame(1000, seed=3)
    rig.tx.add_out([f], split=4, indirect=True)
    rig.rx.add_in(1, 2048, split=3, indirect=True)
    pkt = rig.hdr() + rig.frame(900, seed=4)
    rig.inject(pkt)
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + f]
    assert len(rig.tx.used()) == 1
    (bid, n), = rig.rx.used()
    assert n == len(pkt) and rig.rx.read_in(bid, n)[12:] == pkt[12:]


def test_indirect_not_negotiated_is_a_chain_fault(make_rig):
    rig = make_rig(packed=True, num=8, indirect=False)
    rig.tx.add_out([rig.frame(60)], indirect=True)
    rig.tx.add_out([rig.frame(70)])
    rig.poll_idle()
    assert [n for _i, n in rig.tx.used()] == [0, 0]
    assert rig.wire() == [bytes(12) + rig.frame(70)]
    assert rig.stats("tx")["drops_bad_desc"] == 1


def test_mergeable_buffers_over_the_wrap(make_rig):
    rig = make_rig(packed=True, num=7, mrg=True, rx_max=9000)
    rig.rx.add_in(5, 2048)
    rig.inject(rig.hdr() + rig.frame(100))
    rig.poll_idle()
    rig.rx.packets(rig.rx.used(), mrg=True)            # 1 taken; 4 left, at slots 1-4
    ids = rig.rx.add_in(2, 2048)                        # slots 5, 6: the ring is full
    big = rig.hdr() + rig.frame(5000 - 12, seed=1)
    rig.inject(big)
    rig.poll_idle()
    used = rig.rx.used()
    assert [n for _i, n in used] == [2048, 2048, 5000 - 4096]
    pkt, = rig.rx.packets(used, mrg=True)
    assert num_buffers(pkt) == 3 and pkt[12:] == big[12:]
    small = rig.hdr() + rig.frame(80, seed=2)           # 3 buffers posted (slots 4-6): not enough, and the
    rig.inject(small)                                   # driver can post more: the device waits
    assert rig.poll_idle() == datapath.RX_STARVED
    more = rig.rx.add_in(3, 2048)                       # slots 0-2 of the next lap
    rig.poll_idle()
    (bid, n), = rig.rx.used()                           # the packet went into the 4th buffer (slot 4)
    assert n == len(small) and num_buffers(rig.rx.read_in(bid, n)) == 1
    assert bid not in ids + more and rig.stats("rx")["broken"] is None
    assert rig.dp.ring_positions(0) == (5 | 0x8000, 5 | 0x8000)


def test_in_order_tx_batch_gets_one_used_descriptor(make_rig):
    """IN_ORDER: a batch of device-readable buffers is one used descriptor with the last id, the
    driver's buffers before it done too (DPDK's in-order driver); RX keeps one per buffer."""
    rig = make_rig(packed=True, num=16, in_order=True)
    ids = rig.tx.add_out([rig.frame(60, seed=i) for i in range(4)], split=2)
    rig.poll_idle()
    assert rig.tx.desc_flags(0) == DESC_F_AVAIL | DESC_F_USED
    assert rig.tx.desc_flags(2) == DESC_F_AVAIL | DESC_F_NEXT  # the driver's flags: never written back
    assert [i for i, _n in rig.tx.used()] == ids
    assert len(rig.wire()) == 4
    rig.rx.add_in(3, 2048)
    rig.inject(*[rig.hdr() + rig.frame(100, seed=i) for i in range(3)])
    rig.poll_idle()
    assert [n for _i, n in rig.rx.used()] == [112, 112, 112]
    for i in (0, 1, 2):
        assert rig.rx.desc_flags(i) & DESC_F_USED


def test_tx_call_modes(make_rig):
    """The driver area: ENABLE calls each batch, DISABLE never, DESC (EVENT_IDX) only when the used
    position passes off_wrap."""
    rig = make_rig(packed=True, num=16, event_idx=True)
    rig.tx.auto_used_event = False
    rig.tx.driver_event = (0, EVENT_ENABLE)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.calls(1) == 1
    rig.tx.driver_event = (0, EVENT_DISABLE)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.calls(1) == 0
    rig.tx.used()
    rig.tx.driver_event = (5 | 0x8000, EVENT_DESC)     # call once descriptor 5 (this lap) is used
    for expect in (0, 0, 0, 1, 0):                      # used position 2 -> 3, 4, 5, 6 (passes 5), 7
        rig.tx.add_out([rig.frame(60)])
        rig.poll_idle()
        assert rig.calls(1) == expect
    rig.tx.used()


def test_kick_suppression_modes(make_rig):
    """The device area: DISABLE while a batch runs, ENABLE when idle; with EVENT_IDX, DESC at the
    position the device waits for."""
    rig = make_rig(packed=True, num=8)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.tx.device_event[1] == EVENT_ENABLE and rig.tx.publish() is True
    ev = make_rig(packed=True, num=8, event_idx=True)
    for _ in range(3):
        ev.tx.add_out([ev.frame(60)], split=2)
        ev.poll_idle()
        ev.tx.used()
    assert ev.tx.device_event == (6 | 0x8000, EVENT_DESC)
    assert ev.tx.add_out([ev.frame(60)], publish=False) and ev.tx.publish() is True
    ev.poll_idle()
    ev.tx.used()
    assert ev.tx.device_event == (7 | 0x8000, EVENT_DESC)


def test_kicks_are_disabled_while_a_batch_runs(make_rig):
    """A batch cut by its budget leaves the device area at DISABLE (the device comes back by itself);
    the batch that finds the ring empty sets ENABLE again."""
    rig = make_rig(packed=True, num=8, tx_budget=1)
    rig.tx.add_out([rig.frame(60), rig.frame(61)])
    assert rig.dp.poll() & datapath.MORE
    assert rig.tx.device_event[1] == EVENT_DISABLE and rig.tx.publish() is False
    rig.poll_idle()
    assert rig.tx.device_event[1] == EVENT_ENABLE and len(rig.wire()) == 2


def test_rx_starved_enables_kicks(make_rig):
    rig = make_rig(packed=True, num=8)
    rig.inject(rig.hdr() + rig.frame(60))
    assert rig.poll_idle() == datapath.RX_STARVED
    assert rig.rx.device_event[1] == EVENT_ENABLE
    assert rig.rx.add_in(1, 2048, publish=False) and rig.rx.publish() is True
    rig.poll_idle()
    assert len(rig.rx.used()) == 1


@pytest.mark.parametrize("index", [0, 1])
def test_chain_written_but_not_published_in_a_lap_of_wrap_counter_0(make_rig, index):
    """The driver writes a chain at the device's next position and makes it available later (publish):
    until then the first descriptor keeps its old flags, the previous lap's, which never say available
    in this lap.  Flags 0 there would say used in this lap (AVAIL == USED == the wrap counter 0), and
    the device stops the ring as broken ("wrap"): test_drive's packed-odd saw it about 1 run in 20,
    the worker's poll falling between drive's add_in and its publish."""
    rig = make_rig(packed=True, num=7)
    q = rig.queue(index)
    for k in range(7):                                  # one lap of single-descriptor chains
        if index == 0:
            rig.rx.add_in(1, 2048)
            rig.inject(rig.hdr() + rig.frame(60, seed=k))
        else:
            rig.tx.add_out([rig.frame(60, seed=k)])
        rig.poll_idle()
        assert len(q.used()) == 1
    rig.wire()
    assert rig.dp.ring_positions(index) == (0, 0) and q.avail_pos == 0      # index 0, wrap counter 0
    before = q.desc_flags(0)
    pkt = rig.hdr() + rig.frame(80, seed=9)
    if index == 0:
        rig.rx.add_in(1, 2048, publish=False)
        rig.inject(pkt)
    else:
        rig.tx.add_out([pkt[12:]], publish=False)
    rig.poll_idle()
    assert q.desc_flags(0) == before and q.used() == []
    assert rig.stats(("rx", "tx")[index])["broken"] is None and rig.wire() == []
    q.publish()
    rig.poll_idle()
    (bid, n), = q.used()
    if index == 0:
        assert n == len(pkt) and rig.rx.read_in(bid, n)[12:] == pkt[12:]
    else:
        assert rig.wire() == [pkt]


def test_vring_state_round_trip(make_rig):
    """stop_ring gives the 32-bit packed state; a ring started from it goes on where it stopped."""
    rig = make_rig(packed=True, num=7)
    for _ in range(3):
        rig.tx.add_out([rig.frame(60)], split=3)
        rig.poll_idle()
        rig.tx.used()
    state = rig.dp.stop_ring(1)
    assert state == rig.tx.base == (2 | 0 << 15) * 0x10001      # 9 descriptors: index 2, lap 2
    assert rig.start(1) == state
    assert rig.dp.ring_positions(1) == (2, 2)
    rig.tx.add_out([rig.frame(70)])
    rig.poll_idle()
    assert len(rig.tx.used()) == 1 and rig.wire()[-1] == bytes(12) + rig.frame(70)


def test_restart_takes_in_flight_buffers_again(make_rig):
    """A state whose used half is behind its avail half: the buffers between are still marked
    available, and the ring resumes from the used position (like split from used->idx)."""
    rig = make_rig(packed=True, num=8)
    rig.tx.add_out([rig.frame(60, seed=1), rig.frame(60, seed=2)])
    rig.dp.stop_ring(1)
    state = datapath.packed_state(2 | 0x8000, 0 | 0x8000)
    q = rig.tx
    assert rig.dp.start_ring(1, num=8, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva, base=state) \
        == 0x80008000
    rig.poll_idle()
    assert len(rig.wire()) == 2 and len(rig.tx.used()) == 2


@pytest.mark.parametrize("state,why", [(8 | 0x8000, "avail index 8"), (0x8000 | 9 << 16, "used index 9"),
                                       (1 << 32, "32 bits"), (-1, "32 bits")])
def test_vring_state_outside_the_ring_is_refused(make_rig, state, why):
    rig = make_rig(packed=True, num=8, start=False)
    q = rig.tx
    with pytest.raises(ConfigError, match=why):
        rig.dp.start_ring(1, num=8, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva, base=state)
    assert not rig.dp.running(1)


def test_old_front_end_state_means_used_equals_avail():
    assert datapath.packed_positions(0x8003, 8) == (0x8003, 0x8003)
    assert datapath.packed_positions(0x80058003, 8) == (0x8003, 0x8005)


def test_packed_ring_alignment(make_rig):
    rig = make_rig(packed=True, num=8, start=False)
    q = rig.tx
    with pytest.raises(ConfigError, match="misaligned"):
        rig.dp.start_ring(1, num=8, desc=q.desc_uva, avail=q.avail_uva + 2, used=q.used_uva, base=q.base)


def test_size_rule_follows_the_layout(make_rig):
    rig = make_rig(num=8, start=False)
    q = rig.tx
    with pytest.raises(ConfigError, match="power of 2"):
        rig.dp.start_ring(1, num=7, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva)

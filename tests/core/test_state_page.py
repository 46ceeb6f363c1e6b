"""The C core keeps the state page (vs_net_publish, vs_net.c): after each publish the ring's slot holds the
positions the driver has seen, with an even seq; a slot that is not live is left alone; no page, no writes."""
from __future__ import annotations

import os

from vhostsplice.device import statepage as S
from vhostsplice.device.datapath import RX_STARVED


def attach(rig) -> tuple[S.StatePage, object]:
    fd = S.new_memfd("core-test")
    mm = S.map_fd(fd, "test")
    os.close(fd)
    page = S.StatePage(mm)
    rig.dp.attach_state(mm)
    for i, q in ((0, rig.rx), (1, rig.tx)):
        page.begin(i, S.LAYOUT_SPLIT, q.num, (q.desc_uva, q.avail_uva, q.used_uva), rig.dp.ring_positions(i))
    return page, mm


def slot(mm, index: int) -> S.Slot:
    return S.decode(bytes(mm))[0].slots[index]


def test_each_publish_records_the_positions_the_driver_has_seen(make_rig):
    rig = make_rig()
    page, mm = attach(rig)
    try:
        rig.tx.add_out([rig.frame(60, seed=i) for i in range(5)])
        assert rig.poll_idle() == RX_STARVED
        tx = slot(mm, 1)
        assert (tx.avail_pos, tx.used_pos) == (5, 5) == (rig.tx.used_idx, rig.tx.used_idx)
        assert tx.seq % 2 == 0 and tx.seq > 0 and (tx.next_avail, tx.next_used) == (5, 5)
        rig.rx.add_in(3, 2048)
        rig.inject(bytes(12) + rig.frame(100), bytes(12) + rig.frame(200))
        rig.poll_idle()
        rx = slot(mm, 0)
        assert (rx.avail_pos, rx.used_pos) == (2, 2) == (rig.rx.used_idx,) * 2 and rx.seq % 2 == 0
        assert slot(mm, 1) == tx                          # the TX slot is untouched by an RX batch
    finally:
        rig.dp.attach_state(None)
        page.close()


def test_a_slot_that_is_not_live_is_not_written(make_rig):
    rig = make_rig()
    page, mm = attach(rig)
    try:
        page.retire(1)
        before = slot(mm, 1)
        rig.tx.add_out([rig.frame(60)])
        rig.poll_idle()
        assert rig.tx.used_idx == 1 and slot(mm, 1) == before
    finally:
        rig.dp.attach_state(None)
        page.close()

"""Notification suppression both ways: NO_NOTIFY / NO_INTERRUPT flags and EVENT_IDX (virtio 1.2 2.7.7, 2.7.10)."""
from __future__ import annotations

import pytest

from vhostsplice.device.datapath import MORE, PUBLISHED, RX_STARVED
from vhostsplice.testing.virtq import AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY


def test_one_call_per_batch(make_rig):
    rig = make_rig()
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(5)])
    rig.poll_idle()
    assert rig.calls(1) == 1
    st = rig.stats("tx")
    assert (st["notify_sent"], st["notify_suppressed"]) == (1, 0)
    assert rig.calls(0) == 0                         # RX added nothing: no call


def test_no_interrupt_suppresses_calls(make_rig):
    rig = make_rig()
    rig.tx.avail_flags = AVAIL_F_NO_INTERRUPT
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.calls(1) == 0
    assert rig.stats("tx")["notify_suppressed"] == 1
    rig.tx.avail_flags = 0
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.calls(1) == 1


def test_no_notify_while_busy_cleared_when_idle(make_rig):
    rig = make_rig(tx_budget=2)
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(5)])
    assert rig.dp.poll() & MORE
    assert rig.tx.used_flags & USED_F_NO_NOTIFY      # busy: the driver need not kick
    assert rig.tx.publish() is False
    rig.poll_idle()
    assert rig.tx.used_flags == 0                    # idle again: kicks wanted
    assert len(rig.wire()) == 5


def test_event_idx_used_event(make_rig):
    rig = make_rig(event_idx=True)
    rig.tx.auto_used_event = False
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.calls(1) == 1                         # the first call after start is always sent
    rig.tx.used_event = 10                           # call me once used->idx passes 10
    for i in range(4):                               # used idx 1 -> 5: no call
        rig.tx.add_out([rig.frame(60, seed=i)])
        rig.poll_idle()
    assert rig.calls(1) == 0
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(8)])   # 5 -> 13 crosses 10
    rig.poll_idle()
    assert rig.calls(1) == 1
    st = rig.stats("tx")
    assert (st["notify_sent"], st["notify_suppressed"]) == (2, 4)


def test_event_idx_avail_event_follows_last_avail(make_rig):
    rig = make_rig(event_idx=True)
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(3)])
    rig.poll_idle()
    assert rig.tx.avail_event == 3                   # kick me when avail->idx passes 3
    assert rig.tx.used_flags == 0                    # flags are not used with EVENT_IDX
    assert rig.tx.add_out([rig.frame(60)], publish=False) and rig.tx.publish() is True
    assert rig.tx.add_out([rig.frame(60)], publish=False) and rig.tx.publish() is False


def test_rx_calls(make_rig, host_io):
    """One call per batch: with io_uring batches the trickle rule publishes the first frame after a quiet
    spell on its own (one readv, then VS_MORE), so two frames back to back take two batches."""
    rig = make_rig()
    rig.rx.add_in(4, 2048)
    rig.inject(rig.hdr() + rig.frame(60), rig.hdr() + rig.frame(70))
    rig.poll_idle()
    assert rig.calls(0) == (2 if host_io == "io_uring" else 1)
    assert len(rig.rx.used()) == 2


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_poll_says_whether_it_completed_chains(make_rig, packed, host_io):
    """poll_round() sets PUBLISHED exactly when a ring's used index moved in that call (the worker's
    re-check pass and --busy-poll follow such a poll); poll() keeps its three bits."""
    rig = make_rig(packed=packed)
    assert rig.dp.poll_round() == RX_STARVED             # nothing to do, nothing published
    rig.tx.add_out([rig.frame(60)])
    assert rig.dp.poll_round() == RX_STARVED | PUBLISHED  # TX completed one chain
    assert rig.dp.poll_round() == RX_STARVED
    rig.rx.add_in(2, 2048)
    assert rig.dp.poll_round() == 0                      # buffers, but no frame: nothing completed
    rig.inject(rig.hdr() + rig.frame(100))
    trickle = MORE if host_io == "io_uring" else 0       # the trickle rule's readv: then it looks again
    assert rig.dp.poll_round() == PUBLISHED | trickle    # RX completed one chain
    rig.tx.add_out([rig.frame(60)])
    assert rig.dp.poll() == 0                            # the bit is the loop's only
    assert len(rig.wire()) == 2 and len(rig.rx.used()) == 1

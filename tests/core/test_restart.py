"""A replacement worker resumes from the state page (statepage.py) over the same guest memory: the first
datapath is dropped as a SIGKILL would leave it, a second one maps the same page, is given a stale
SET_VRING_BASE (the ring's start), and takes up exactly the chains the driver added after the last publish: none
completed twice, none lost. A publish the kill interrupted (seq odd) is settled from guest memory."""
from __future__ import annotations

import logging
import os

import pytest

from vhostsplice.device import statepage as S
from vhostsplice.device.datapath import Datapath
from vhostsplice.vhostuser.protocol import VringAddr
from vhostsplice.device.vring import RingState

LAYOUTS = [False, True]     # split, packed


def new_page() -> object:
    fd = S.new_memfd("restart-test")
    try:
        return S.map_fd(fd, "test")
    finally:
        os.close(fd)


def ring_state(rig, index: int, base: int = 0) -> RingState:
    q = rig.queue(index)
    return RingState(index, num=q.num, addr=VringAddr(index, 0, q.desc_uva, q.used_uva, q.avail_uva, 0),
                     base=base, call_fd=rig.call[index], err_fd=rig.err[index])


def fresh(packed: bool) -> int:
    """SET_VRING_BASE of a ring that never ran: what a front-end that lost the positions sends again."""
    return S.packed_base(0x8000, 0x8000) if packed else 0


def worker(rig, mm, packed: bool, base: int | None = None) -> tuple[Datapath, S.StatePage]:
    """A (new) worker's datapath on the rig's guest memory and host fd, its rings started by the page."""
    base = fresh(packed) if base is None else base
    dp = Datapath(rig.host.fileno())
    dp.configure(mrg_rxbuf=False, event_idx=False, indirect=True, rx_max=12 + 1514, **packed_kw(packed))
    regions = rig.mem.regions()
    dp.set_memory(regions)
    page = S.StatePage(mm)
    if mm is not None:
        dp.attach_state(mm)
    for i in (0, 1):
        page.start(dp, regions, i, packed, ring_state(rig, i, base))
    return dp, page


def packed_kw(packed: bool) -> dict:
    return {"packed": True} if packed else {}


def frames(rig, start: int, n: int) -> list[bytes]:
    return [rig.frame(60 + i, seed=i) for i in range(start, start + n)]


def drain(dp) -> None:
    for _ in range(100):
        if not dp.poll() & 1:
            return


@pytest.mark.parametrize("packed", LAYOUTS)
def test_the_replacement_takes_up_exactly_the_chains_after_the_last_publish(make_rig, packed):
    rig = make_rig(start=False, **packed_kw(packed))
    mm = new_page()
    first, _ = worker(rig, mm, packed)
    rig.tx.add_out(frames(rig, 0, 10))
    drain(first)
    assert len(rig.wire()) == 10 and len(rig.tx.used()) == 10
    first.attach_state(None)                  # killed: never polled again
    rig.tx.add_out(frames(rig, 10, 5))        # the driver goes on meanwhile
    second, page = worker(rig, mm, packed)    # the front-end's stale SET_VRING_BASE: the ring's start
    drain(second)
    assert rig.wire() == [bytes(12) + f for f in frames(rig, 10, 5)]       # none again, none lost
    assert len(rig.tx.used()) == 5
    tx = page.report()["tx"]
    assert tx["source"] == "state-page" and tx["disagreed"] and tx["front_end"] == fresh(packed), tx
    second.attach_state(None)
    mm.close()


@pytest.mark.parametrize("packed", LAYOUTS)
def test_a_publish_cut_by_the_kill_is_settled_from_guest_memory(make_rig, packed):
    """The page says a publish was under way (seq odd): if the driver sees it (its entries are in guest
    memory), the replacement goes on after it; if not, from before it."""
    rig = make_rig(start=False, **packed_kw(packed))
    mm = new_page()
    first, _ = worker(rig, mm, packed)
    rig.tx.add_out(frames(rig, 0, 4))
    drain(first)
    first.attach_state(None)
    after = S.decode(bytes(mm))[0].slots[1]
    off = S.HEADER.size + S.SLOT.size
    # killed after the release store, before the record: committed still the start, next the new positions
    struct_pack(mm, off, after, seq=1, committed=(0x8000, 0x8000) if packed else (0, 0),
                pending=(after.avail_pos, after.used_pos))
    second, page = worker(rig, mm, packed)
    assert page.resumes[1].position == (S.packed_base(after.avail_pos, after.used_pos) if packed else 4)
    second.attach_state(None)
    # killed before the release store: the pending positions were never seen (the next slot is still the
    # driver's): the replacement resumes from the committed ones
    rig.tx.add_out(frames(rig, 4, 1))
    cur = S.decode(bytes(mm))[0].slots[1]
    ahead = ((cur.avail_pos + 1) & 0xFFFF, (cur.used_pos + 1) & 0xFFFF)
    struct_pack(mm, off, cur, seq=cur.seq | 1, committed=(cur.avail_pos, cur.used_pos), pending=ahead)
    third, page = worker(rig, mm, packed)
    want = S.packed_base(cur.avail_pos, cur.used_pos) if packed else cur.used_pos
    assert page.resumes[1].position == want and page.resumes[1].source == "state-page"
    drain(third)
    assert rig.wire()[-1] == bytes(12) + frames(rig, 4, 1)[0]
    third.attach_state(None)
    mm.close()


def struct_pack(mm, off: int, slot: S.Slot, *, seq: int, committed: tuple[int, int], pending: tuple[int, int]):
    S.SLOT.pack_into(mm, off, slot.desc, slot.avail, slot.used, slot.num, slot.live, seq, *committed, *pending, 0)


def test_without_a_page_a_packed_ring_has_only_the_front_ends_positions(make_rig, caplog, monkeypatch):
    """The reason the page exists: the same restart without one resumes a packed ring at the stale
    SET_VRING_BASE, and says so."""
    monkeypatch.setattr(logging.getLogger("vhostsplice"), "propagate", True)   # cli.main may have cut it
    caplog.set_level(logging.WARNING, logger="vhostsplice")
    rig = make_rig(start=False, packed=True)
    first, _ = worker(rig, None, True)
    rig.tx.add_out(frames(rig, 0, 3))
    drain(first)
    assert len(rig.wire()) == 3
    second, page = worker(rig, None, True)
    tx = page.report()["tx"]
    assert (tx["source"], tx["position"]) == ("front-end", fresh(True)), tx
    assert "resumes from the front-end's positions only" in caplog.text


@pytest.mark.parametrize("packed", LAYOUTS)
def test_a_ring_restarted_by_the_same_worker_goes_on_from_its_own_positions(make_rig, packed):
    """The page read at start-up speaks for the first start only: a ring the worker itself stops and
    starts again (GET_VRING_BASE then SET_VRING_BASE, as QEMU does around a migration) goes on from
    the positions it handed out, not from the page's old ones."""
    rig = make_rig(start=False, **packed_kw(packed))
    mm = new_page()
    first, _ = worker(rig, mm, packed)
    rig.tx.add_out(frames(rig, 0, 6))
    drain(first)
    first.attach_state(None)
    second, page = worker(rig, mm, packed)
    rig.tx.add_out(frames(rig, 6, 4))
    drain(second)
    base = second.stop_ring(1)                # GET_VRING_BASE: the front-end has the positions now
    page.retire(1)
    page.start(second, rig.mem.regions(), 1, packed, ring_state(rig, 1, base))    # SET_VRING_BASE base
    rig.tx.add_out(frames(rig, 10, 3))
    drain(second)
    assert rig.wire() == [bytes(12) + f for f in frames(rig, 0, 13)]     # each frame once, in order
    assert len(rig.tx.used()) == 13 and page.resumes[1].source == "state-page"
    second.attach_state(None)
    mm.close()

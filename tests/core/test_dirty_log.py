"""Dirty-page logging for live migration: the core marks every guest page it writes in a bytearray log.

Log format (vhost-user.rst, "Migration"): bit p % 8 of byte p / 8 is the 4 KiB guest-physical page p.
RX buffer bytes are logged at their GPA; used-ring stores (elements, idx, flags, avail_event) at the
ring's log_addr + their offset when the ring has VHOST_VRING_F_LOG; nothing while LOG_ALL is off.
"""
from __future__ import annotations

import errno

import pytest

GPA_BASE = 0x4000_0000     # tests/core/conftest.py

PAGE = 4096
USED_LOG = 0x1000_0000          # a log_addr for the used rings far from guest memory (the spec allows it)
LOG_BYTES = (GPA_BASE + (8 << 20)) // PAGE // 8      # covers every page of the rig's 4 MiB and more


def dirty(log) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(bytes(log)) if byte for b in range(8) if byte >> b & 1}


def pages(gpa: int, n: int) -> set[int]:
    return set(range(gpa // PAGE, (gpa + n - 1) // PAGE + 1)) if n else set()


def written(bufs, n: int) -> set[int]:
    """Pages of the first n bytes of a chain's buffers (gpa, len) in order."""
    out = set()
    for gpa, length in bufs:
        k = min(length, n)
        out |= pages(gpa, k)
        n -= k
    return out


def logged_rig(make_rig, *, log_all=True, ring_log=True, **kw):
    rig = make_rig(**kw)
    log = bytearray(LOG_BYTES)
    rig.dp.set_log(log)
    rig.dp.set_log_all(log_all)
    for i in (0, 1):
        rig.dp.set_ring_log(i, ring_log, USED_LOG + i * 0x10_0000)
    return rig, log


def used_log_pages(index: int, num: int = 256) -> set[int]:
    return pages(USED_LOG + index * 0x10_0000, 6 + 8 * num)


# -- vs_log_write: bit order and bounds ----------------------------------------------------------------
def test_bit_positions(make_rig):
    rig = make_rig()
    log = bytearray(16)
    rig.dp.set_log(log)
    rig.dp.set_log_all(True)
    for page in (0, 7, 8, 63, 64, 127):
        assert rig.dp.log_write(page * PAGE + 5, 1) == 1
    assert log[0] == 0x81 and log[1] == 0x01 and log[7] == 0x80 and log[8] == 0x01 and log[15] == 0x80
    assert dirty(log) == {0, 7, 8, 63, 64, 127}
    log[:] = bytes(16)
    assert rig.dp.log_write(6 * PAGE + 100, 3 * PAGE) == 4           # pages 6..9: two bytes touched
    assert log[0] == 0xC0 and log[1] == 0x03 and dirty(log) == {6, 7, 8, 9}
    assert rig.dp.log_write(20 * PAGE, 0) == 0 and dirty(log) == {6, 7, 8, 9}
    assert rig.dp.log_stats()["log_overflow"] == 0


def test_nothing_logged_without_log_all_or_log(make_rig):
    rig = make_rig()
    log = bytearray(16)
    rig.dp.set_log(log)
    assert rig.dp.log_write(0, 100) == 0 and dirty(log) == set()      # LOG_ALL not acked
    rig.dp.set_log(None)
    rig.dp.set_log_all(True)
    assert rig.dp.log_write(0, 100) == 0                               # acked, no log yet: no crash
    assert rig.dp.log_stats() == {"log_all": True, "log_size": 0, "log_writes": 0, "log_overflow": 0}


def test_bounds_past_the_end_are_never_written(make_rig):
    """A non-zero offset into a larger buffer (as an mmap_offset): guard bytes either side stay 0."""
    rig = make_rig()
    backing = bytearray(32)
    rig.dp.set_log(memoryview(backing)[8:24])                         # 16 bytes: pages 0..127
    rig.dp.set_log_all(True)
    assert rig.dp.log_write(127 * PAGE + 4095, 1) == 1                # the last byte of the last page
    assert rig.dp.log_write(128 * PAGE, 1) == -errno.ERANGE           # one past
    assert rig.dp.log_write(126 * PAGE, 4 * PAGE) == -errno.ERANGE    # straddles: 126, 127 marked only
    assert rig.dp.log_write((1 << 64) - PAGE, 2 * PAGE) == -errno.ERANGE     # wraps past 2^64
    assert rig.dp.log_write((1 << 64) - 1, 1) == -errno.ERANGE
    assert backing[:8] == bytes(8) and backing[24:] == bytes(8)
    assert dirty(backing[8:24]) == {126, 127}
    st = rig.dp.log_stats()
    assert st["log_overflow"] == 4 and st["log_writes"] == 1 and st["log_size"] == 16


def test_log_can_be_replaced_and_the_old_one_is_left_alone(make_rig):
    rig = make_rig()
    a, b = bytearray(16), bytearray(16)
    rig.dp.set_log(a)
    rig.dp.set_log_all(True)
    rig.dp.log_write(0, 1)
    rig.dp.set_log(b)
    rig.dp.log_write(PAGE, 1)
    assert dirty(a) == {0} and dirty(b) == {1}
    a.extend(b"x")              # released: the core holds no buffer export of it any more


# -- RX data and used rings ----------------------------------------------------------------------------
def test_rx_single_logs_buffer_bytes_and_used_ring(make_rig):
    rig, log = logged_rig(make_rig)
    heads = rig.rx.add_in(4, 6000, split=3)                           # 2000-byte pieces
    bufs = {h: rig.rx._chains[h].bufs for h in heads}
    pkt = rig.hdr() + rig.frame(2500)
    rig.inject(pkt)
    rig.poll_idle()
    (head, n), = rig.rx.used()
    assert n == len(pkt)
    data_pages = written(bufs[head], n)
    assert len(data_pages) >= 1
    got = dirty(log)
    assert data_pages <= got
    assert not written(bufs[head], 6000) - data_pages & got - used_log_pages(0)   # only the bytes written
    for h in heads[1:]:
        assert not (written(bufs[h], 6000) - data_pages) & got                 # untouched buffers
    used = got - data_pages
    assert used <= used_log_pages(0) | used_log_pages(1)       # the idle TX ring writes its flags too
    assert (USED_LOG + 2) // PAGE in used                                     # RX idx
    assert not pages(rig.rx.desc_gpa, 16 * 256) & got - data_pages           # ring reads: never
    assert rig.dp.log_stats()["log_overflow"] == 0


def test_rx_mergeable_logs_every_chain(make_rig):
    rig, log = logged_rig(make_rig, mrg=True, rx_max=9000)
    heads = rig.rx.add_in(8, 2048)
    bufs = {h: rig.rx._chains[h].bufs for h in heads}
    big = rig.hdr() + rig.frame(5000 - 12, seed=1)
    rig.inject(big)
    rig.poll_idle()
    used = rig.rx.used()
    assert [h for h, _n in used] == heads[:3]
    want = set().union(*(written(bufs[h], n) for h, n in used))
    got = dirty(log)
    assert want <= got
    assert got - want <= used_log_pages(0) | used_log_pages(1)
    for h in heads[3:]:
        assert not (written(bufs[h], 2048) - want) & got


def test_used_ring_entries_idx_and_avail_event_logged_at_log_addr(make_rig):
    """EVENT_IDX: avail_event (offset 4 + 8 * num) is logged; TX writes only the used ring."""
    rig, log = logged_rig(make_rig, event_idx=True, num=1024)
    rig.tx.add_out([rig.frame(60)] * 3)
    rig.poll_idle()
    assert len(rig.tx.used()) == 3
    base = USED_LOG + 0x10_0000
    tx = dirty(log) & used_log_pages(1, 1024)
    assert tx == pages(base + 2, 2) | pages(base + 4, 24) | pages(base + 4 + 8 * 1024, 2)
    assert len(tx) == 2                                                 # page 0 and page 2, not 1
    assert dirty(log) - tx <= used_log_pages(0, 1024)                         # RX: its avail_event only


def test_used_ring_wrap_logs_both_ends(make_rig):
    """log_addr puts slots 0..3 (and idx, flags) on page 0 and slots 4..7 on page 1 of the log: a batch
    in slots 6, 7, 0, 1 marks both; a batch in slots 2, 3 marks page 0 only."""
    rig, _ = logged_rig(make_rig, num=8)
    rig.dp.set_ring_log(0, False, 0)
    for _ in range(6):                       # move the ring to position 6
        rig.tx.add_out([rig.frame(60)])
        rig.poll_idle()
        rig.tx.used()
    rig.dp.set_ring_log(1, True, PAGE - 4 - 8 * 4)
    small = bytearray(1)                     # pages 0..7
    rig.dp.set_log(small)
    rig.tx.add_out([rig.frame(60)] * 4)      # slots 6, 7, 0, 1
    rig.poll_idle()
    assert len(rig.tx.used()) == 4
    assert dirty(small) == {0, 1}
    small[0] = 0
    rig.tx.add_out([rig.frame(60)] * 2)      # slots 2, 3
    rig.poll_idle()
    assert len(rig.tx.used()) == 2
    assert dirty(small) == {0}
    assert rig.dp.log_stats()["log_overflow"] == 0


def test_nothing_logged_when_log_all_off(make_rig):
    rig, log = logged_rig(make_rig, log_all=False, mrg=True, rx_max=9000)
    rig.rx.add_in(8, 2048)
    rig.inject(rig.hdr() + rig.frame(5000))
    rig.tx.add_out([rig.frame(60)] * 3)
    rig.poll_idle()
    assert rig.rx.used() and rig.tx.used()
    assert dirty(log) == set()
    assert rig.dp.log_stats()["log_writes"] == 0


def test_ring_without_f_log_logs_data_only(make_rig):
    rig, log = logged_rig(make_rig, ring_log=False)
    heads = rig.rx.add_in(2, 2048)
    bufs = {h: rig.rx._chains[h].bufs for h in heads}
    rig.inject(rig.hdr() + rig.frame(100))
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    (head, n), = rig.rx.used()
    assert dirty(log) == written(bufs[head], n)


def test_pages_at_region_edges(make_rig):
    """A buffer that crosses from one region into the next is logged at both regions' GPAs."""
    rig, log = logged_rig(make_rig, splits=(2 << 20,), ring_log=False)
    edge = GPA_BASE + (2 << 20)
    gpa = edge - 1000
    rig.rx.raw_desc(0, gpa, 3000, 2)                                  # WRITE, crosses the region edge
    rig.rx.raw_avail(0, 0)
    rig.rx.set_avail_idx(1)
    pkt = rig.hdr() + rig.frame(2988)
    rig.inject(pkt)
    rig.poll_idle()
    assert rig.stats("rx")["packets"] == 1
    assert dirty(log) == pages(gpa, 3000) == {edge // PAGE - 1, edge // PAGE}


def test_log_smaller_than_memory_is_counted_not_written(make_rig):
    rig, _ = logged_rig(make_rig, ring_log=False)
    short = bytearray(GPA_BASE // PAGE // 8)                         # ends right where guest memory starts
    guard = bytearray(8)
    rig.dp.set_log(short)
    rig.rx.add_in(1, 2048)
    rig.inject(rig.hdr() + rig.frame(100))
    rig.poll_idle()
    assert len(rig.rx.used()) == 1                                   # delivered all the same
    assert dirty(short) == set() and guard == bytes(8)
    assert rig.dp.log_stats()["log_overflow"] >= 1


# -- the invariant migration needs: no device write without its page marked ---------------------------
@pytest.mark.parametrize("mrg,event_idx,packed", [(False, False, False), (True, False, False), (False, True, False),
                                                 (True, True, False), (False, False, True), (True, True, True)])
def test_every_byte_the_device_changes_is_in_a_dirty_page(make_rig, mrg, event_idx, packed):
    """Random traffic both ways with ring logging at the addresses QEMU gives (log_guest_addr is
    vq->used_phys: a split ring's used ring, a packed ring's device event area): after each poll, every
    byte of guest memory that differs from the snapshot taken before it lies in a marked page. Packed:
    the used descriptors the device writes into the descriptor ring are marked at their own GPA (a CI
    migration on QEMU 10.0 left the guest's RX stuck on a used descriptor the log never marked)."""
    import random
    rng = random.Random(8)
    # packed: 256 entries, a 4 KiB descriptor ring on pages of its own, apart from the event areas, as a Linux
    # guest lays it out (64 would put the device area, QEMU's log_guest_addr, on the ring's page)
    rig = make_rig(mrg=mrg, event_idx=event_idx, rx_max=9000 if mrg else 12 + 1514, num=256 if packed else 64,
                   mem_size=1 << 20, packed=packed)
    log = bytearray(LOG_BYTES)
    rig.dp.set_log(log)
    rig.dp.set_log_all(True)
    rig.dp.set_ring_log(0, True, rig.rx.used_gpa)
    rig.dp.set_ring_log(1, True, rig.tx.used_gpa)
    delivered = 0
    for _round in range(40):
        if rng.random() < 0.7:
            try:
                rig.rx.add_in(rng.randint(1, 6), rng.choice((1526, 2048, 4096, 700)), split=rng.randint(1, 3))
            except (MemoryError, RuntimeError):     # guest memory or the ring is full: post none this round
                pass
        rig.inject(*(rig.hdr() + rig.frame(rng.choice((60, 1000, 1514)), seed=rng.randint(0, 255))
                     for _ in range(rng.randint(0, 4))))
        try:
            rig.tx.add_out([rig.frame(rng.randint(14, 3000))] * rng.randint(0, 3))
        except (MemoryError, RuntimeError):
            pass
        before = bytes(rig.buf)
        log[:] = bytes(len(log))
        rig.poll_idle()
        after = bytes(rig.buf)
        marked = dirty(log)
        changed = {GPA_BASE // PAGE + i for i in range(len(after) // PAGE)
                   if after[i * PAGE:(i + 1) * PAGE] != before[i * PAGE:(i + 1) * PAGE]}
        assert changed <= marked, f"round {_round}: pages written but not logged: {sorted(changed - marked)}"
        delivered += len(rig.rx.used())
        rig.tx.used()
        rig.wire()
    assert delivered > 20 and rig.dp.log_stats()["log_overflow"] == 0
    assert mrg or rig.stats("rx")["drops_oversize"] > 0      # 1514-byte frames into 700-byte buffers

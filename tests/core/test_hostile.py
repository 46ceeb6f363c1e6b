"""A hostile driver: ring corruption breaks the ring for good; per-chain faults are counted and survived."""
from __future__ import annotations

import contextlib
import errno

import pytest

from vhostsplice.errors import GuestFaultError, GuestRingError
from vhostsplice.testing.virtq import DESC_F_INDIRECT, DESC_F_NEXT

HDR = bytes(12)


def broken(rig, reason: str, ring: str = "tx") -> None:
    """The next poll fails with EBADMSG naming the reason, the err eventfd fires once, and stays failed."""
    with pytest.raises(GuestRingError) as e:
        rig.dp.poll()
    assert e.value.errno == errno.EBADMSG
    assert reason in str(e.value) and ring in str(e.value)
    assert rig.stats(ring)["broken"] == reason
    index = 0 if ring == "rx" else 1
    assert rig.errs(index) == 1
    with pytest.raises(GuestRingError):
        rig.dp.poll()
    assert rig.errs(index) == 0                      # signalled once


def test_avail_idx_jump(make_rig):
    rig = make_rig(num=16)
    rig.tx.set_avail_idx(17)
    broken(rig, "avail_idx")


def test_head_out_of_range(make_rig):
    rig = make_rig(num=16)
    rig.tx.raw_avail(0, 16)
    rig.tx.set_avail_idx(1)
    broken(rig, "head")


def test_descriptor_loop(make_rig):
    rig = make_rig(num=16)
    gpa = rig.mem.alloc(64)
    rig.tx.raw_desc(0, gpa, 8, DESC_F_NEXT, 1)
    rig.tx.raw_desc(1, gpa, 8, DESC_F_NEXT, 0)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    broken(rig, "loop")


def test_next_out_of_range(make_rig):
    rig = make_rig(num=16)
    rig.tx.raw_desc(0, rig.mem.alloc(64), 64, DESC_F_NEXT, 99)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    broken(rig, "next")


def indirect_table(rig, entries) -> int:
    table = rig.mem.alloc(16 * len(entries))
    for i, (addr, n, flags, nxt) in enumerate(entries):
        rig.mem.write(table + 16 * i, addr.to_bytes(8, "little") + n.to_bytes(4, "little")
                      + flags.to_bytes(2, "little") + nxt.to_bytes(2, "little"))
    return table


def test_nested_indirect(make_rig):
    rig = make_rig(num=16)
    inner = indirect_table(rig, [(rig.mem.alloc(64), 64, 0, 0)])
    outer = indirect_table(rig, [(inner, 16, DESC_F_INDIRECT, 0)])
    rig.tx.raw_desc(0, outer, 16, DESC_F_INDIRECT, 0)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    broken(rig, "nested_indirect")


def test_loop_inside_indirect_table(make_rig):
    rig = make_rig(num=16)
    buf = rig.mem.alloc(64)
    table = indirect_table(rig, [(buf, 8, DESC_F_NEXT, 1), (buf, 8, DESC_F_NEXT, 0)])
    rig.tx.raw_desc(0, table, 32, DESC_F_INDIRECT, 0)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    broken(rig, "chain_len")


def test_rx_ring_corruption(make_rig):
    rig = make_rig(num=16)
    rig.rx.set_avail_idx(40)
    broken(rig, "avail_idx", ring="rx")


def raw_chain(rig, addr: int, n: int, flags: int = 0) -> None:
    """Descriptor 15 alone as the next available chain."""
    slot = rig.tx.avail_idx
    rig.tx.raw_desc(15, addr, n, flags, 0)
    rig.tx.raw_avail(slot % rig.tx.num, 15)
    rig.tx.set_avail_idx(slot + 1)


@pytest.mark.parametrize("addr,n", [
    (0x10, 100),                                  # below guest memory
    (None, 100),                                  # starts inside, runs past the end
    ((1 << 64) - 8, 64),                          # wraps past 2^64
])
def test_address_outside_memory_is_counted(make_rig, addr, n):
    rig = make_rig(num=16)
    if addr is None:
        addr = rig.mem.gpa_base + rig.mem.size - 50
    raw_chain(rig, addr, n)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.wire() == [HDR + rig.frame(60)]        # the good chain after it still goes out
    assert rig.tx.used()[0] == (15, 0)
    st = rig.stats("tx")
    assert st["drops_fault"] == 1 and st["packets"] == 1 and st["broken"] is None


def test_fault_exit(make_rig):
    rig = make_rig(num=16, fault_exit=True)
    raw_chain(rig, 0x10, 100)
    with pytest.raises(GuestFaultError) as e:
        rig.dp.poll()
    assert e.value.errno == errno.EFAULT
    assert rig.tx.used() == [(15, 0)]                 # completed before exiting
    assert rig.stats("tx")["drops_fault"] == 1


@pytest.mark.parametrize("length", [0, 24])
def test_bad_indirect_length(make_rig, length):
    rig = make_rig(num=16)
    raw_chain(rig, rig.mem.alloc(64), length, DESC_F_INDIRECT)
    rig.poll_idle()
    assert rig.tx.used() == [(15, 0)]
    assert rig.stats("tx")["drops_bad_desc"] == 1


def test_indirect_table_outside_memory(make_rig):
    rig = make_rig(num=16)
    raw_chain(rig, 0x1000, 64, DESC_F_INDIRECT)
    rig.poll_idle()
    assert rig.stats("tx")["drops_fault"] == 1


def test_too_many_iovecs(make_rig):
    rig = make_rig(num=2048)
    buf = rig.mem.alloc(2048)
    entries = [(buf + i, 1, DESC_F_NEXT, i + 1) for i in range(1100)]   # 1100 iovecs > VS_MAX_IOV
    entries[-1] = (buf, 1, 0, 0)
    table = indirect_table(rig, entries)
    raw_chain(rig, table, 16 * len(entries), DESC_F_INDIRECT)
    rig.poll_idle()
    assert rig.stats("tx")["drops_bad_desc"] == 1
    assert rig.wire() == []


def test_indirect_chain_longer_than_the_queue(make_rig):
    rig = make_rig(num=16)                        # 2.7.5.3.1: no chain longer than the queue size
    entries = [(0, 0, DESC_F_NEXT, i + 1) for i in range(40)] + [(rig.mem.alloc(64), 64, 0, 0)]
    raw_chain(rig, indirect_table(rig, entries), 16 * len(entries), DESC_F_INDIRECT)
    broken(rig, "chain_len")


def test_zero_length_descriptors_are_skipped(make_rig):
    rig = make_rig(num=16)
    data = HDR + rig.frame(100)
    gpa = rig.mem.alloc(len(data))
    rig.mem.write(gpa, data)
    rig.tx.raw_desc(0, 0xdead0000, 0, DESC_F_NEXT, 1)   # no bytes: its address is never touched
    rig.tx.raw_desc(1, gpa, len(data), 0, 0)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    rig.poll_idle()
    assert rig.wire() == [data]


def test_descriptor_loop_on_a_ring_larger_than_the_iovec_array(make_rig):
    """A 2048-entry ring: the loop outlasts the 1024 iovec slots and must still break the ring, not be
    counted as a per-chain 'too many iovecs' fault."""
    rig = make_rig(num=2048)
    gpa = rig.mem.alloc(64)
    for i in range(2048):
        rig.tx.raw_desc(i, gpa, 8, DESC_F_NEXT, (i + 1) % 2048)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    broken(rig, "loop")


def test_long_legal_chain_past_the_iovec_array_is_a_counted_fault(make_rig):
    rig = make_rig(num=2048)
    gpa = rig.mem.alloc(64)
    for i in range(1500):
        rig.tx.raw_desc(i, gpa, 8, DESC_F_NEXT if i < 1499 else 0, i + 1)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    rig.poll_idle()
    st = rig.stats("tx")
    assert st["drops_bad_desc"] == 1 and st["broken"] is None
    assert rig.tx.used() == [(0, 0)]


# -- vulnerability classes from public vhost advisories (docs/fuzzing.md has the table) -----------------
DESC_F_WRITE = 2


@pytest.mark.parametrize("back,n,ok", [
    (60, 60, True),         # the last 60 bytes of guest memory: served
    (59, 60, False),        # one byte past the end
    (0, 1, False),          # starts one past the end
    (None, 2, False),       # starts one byte below guest memory
])
def test_descriptor_at_the_edge_of_memory(make_rig, back, n, ok):
    """CVE-2018-1059 (DPDK): a translation must cover the whole range, not only its first byte."""
    rig = make_rig(num=16)
    end = rig.mem.gpa_base + rig.mem.size
    addr = rig.mem.gpa_base - 1 if back is None else end - back
    if ok:
        rig.mem.write(addr, HDR + rig.frame(n - 12))
    raw_chain(rig, addr, n)
    rig.poll_idle()
    st = rig.stats("tx")
    assert (st["packets"], st["drops_fault"]) == ((1, 0) if ok else (0, 1))
    assert rig.wire() == ([HDR + rig.frame(n - 12)] if ok else [])
    assert rig.tx.used() == [(15, 0)] and st["broken"] is None


@pytest.mark.parametrize("over,ok", [(0, True), (2, False)])
def test_avail_ring_ending_at_the_last_byte_of_memory(make_rig, over, ok):
    """A ring area must lie wholly inside one region: exactly at the end is fine, 2 bytes past is EFAULT
    (used_event, the last 2 bytes of the avail area, included)."""
    rig = make_rig(num=16, start=False)
    q = rig.tx
    avail = rig.mem.uva_base + rig.mem.size - (6 + 2 * q.num) + over
    if ok:
        assert rig.dp.start_ring(1, num=q.num, desc=q.desc_uva, avail=avail, used=q.used_uva) == 0
    else:
        with pytest.raises(GuestFaultError) as e:
            rig.dp.start_ring(1, num=q.num, desc=q.desc_uva, avail=avail, used=q.used_uva)
        assert e.value.errno == errno.EFAULT and not rig.dp.running(1)


@contextlib.contextmanager
def sparse_4gib(rig):
    """A 4 GiB + 4 KiB sparse region at gpa 2^40 beside the rig's memory: (its gpa, its mmap)."""
    import mmap

    from vhostsplice.testing.virtq import Region
    size = (1 << 32) + 4096
    big = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    base = 1 << 40
    try:
        rig.dp.set_memory(rig.mem.regions() + [Region(base, 1 << 41, size, memoryview(big))])
        yield base, big
    finally:
        rig.dp.set_memory(rig.mem.regions())
        big.close()


def delivered_across_4gib(rig, big, pkt: bytes) -> None:
    """The packet went into the two 4 GiB - 16 buffers whole: bytes, num_buffers 1, the counters."""
    assert big[12:len(pkt)] == pkt[12:] and big[10:12] == b"\x01\x00"
    st = rig.stats("rx")
    assert st["packets"] == 1 and st["drops_oversize"] == 0 and st["broken"] is None


def test_lengths_summing_past_4_gib(make_rig):
    """Descriptor lengths are 32-bit; their sum is not. Two 4 GiB - 16 buffers (the same sparse memory
    twice) hold a small packet: its used length is the packet's, nothing wraps to a short chain."""
    rig = make_rig(num=16)
    with sparse_4gib(rig) as (base, big):
        rig.rx.raw_desc(3, base, 0xFFFFFFF0, DESC_F_WRITE | DESC_F_NEXT, 4)
        rig.rx.raw_desc(4, base + 16, 0xFFFFFFF0, DESC_F_WRITE, 0)
        rig.rx.raw_avail(0, 3)
        rig.rx.set_avail_idx(1)
        pkt = rig.hdr() + rig.frame(200)
        rig.inject(pkt)
        rig.poll_idle()
        assert rig.rx.used() == [(3, len(pkt))]
        delivered_across_4gib(rig, big, pkt)


def test_huge_descriptor_length_is_a_counted_fault(make_rig):
    """CVE-2016-7422 (QEMU): a descriptor with a huge length crashed the device; here it is one fault."""
    rig = make_rig(num=16)
    raw_chain(rig, rig.mem.gpa_base, 0xFFFFFFFF)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    st = rig.stats("tx")
    assert st["drops_fault"] == 1 and st["packets"] == 1 and st["broken"] is None


def test_indirect_table_running_past_memory_is_a_fault(make_rig):
    """An indirect table whose last entry lies past guest memory: the whole table is refused up front."""
    rig = make_rig(num=16)
    end = rig.mem.gpa_base + rig.mem.size
    raw_chain(rig, end - 32, 64, DESC_F_INDIRECT)
    rig.poll_idle()
    assert rig.stats("tx")["drops_fault"] == 1 and rig.tx.used() == [(15, 0)]


def test_budget_bounds_the_work_of_one_poll(make_rig):
    """CVE-2019-3900 (Linux vhost_net): a guest that keeps the ring full must not hold the worker in one
    call. Each poll does at most tx_budget chains and says MORE."""
    from vhostsplice.device.datapath import MORE
    rig = make_rig(num=256, tx_budget=8)
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(100)])
    flags = rig.dp.poll()
    assert flags & MORE and len(rig.wire()) == 8
    rig.poll_idle()
    assert len(rig.wire()) == 92


def _rx_chain_of_1024_iovecs(rig) -> None:
    gpa = rig.mem.alloc(4096)
    for i in range(1024):
        rig.rx.raw_desc(i, gpa + 2 * i, 2, DESC_F_WRITE | (DESC_F_NEXT if i < 1023 else 0), i + 1)
    rig.rx.raw_avail(0, 0)
    rig.rx.set_avail_idx(1)


@pytest.mark.parametrize("mrg", [False, True])
def test_rx_chain_of_1024_iovecs_does_not_livelock(make_rig, mrg):
    """CVE-2018-16880 class (Linux vhost_net: more RX buffers than the iovec/heads arrays): 1024 iovecs
    of RX buffers - one legal 1024-descriptor chain, or (MRG_RXBUF) 1100 small chains collected for one
    large frame - must end as a counted fault or a delivered packet, not an endless retry."""
    rig = make_rig(num=2048, rx_budget=4, mrg=mrg, rx_max=65562 + 12)
    if mrg:
        rig.rx.add_in(1100, 12)
    else:
        _rx_chain_of_1024_iovecs(rig)
    rx_does_not_livelock(rig)


def rx_does_not_livelock(rig) -> None:
    """One packet, at most three polls: counted or delivered, never a host-fd error retried for good."""
    from vhostsplice.device.datapath import MORE
    rig.inject(rig.hdr() + rig.frame(100))
    for _ in range(3):
        if not rig.dp.poll() & MORE:
            break
    st = rig.stats("rx")
    assert st["drops_hostfd"] == 0 and st["chains"] >= 1

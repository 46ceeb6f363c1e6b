"""A hostile driver on a packed ring: corruption (an id past the ring, a chain longer than it, a
wrap-counter contradiction, indirect in indirect) breaks the ring for good; per-chain faults are
counted and survived, as on a split ring (test_hostile.py).  And the packed dirty log."""
from __future__ import annotations

import errno
import struct

import pytest

from vhostsplice.errors import GuestFaultError
from vhostsplice.testing.virtq import DESC_F_INDIRECT, DESC_F_NEXT
from vhostsplice.testing.virtq_packed import DESC_F_AVAIL, DESC_F_USED, DESC_F_WRITE

from .test_dirty_log import dirty, logged_rig, pages, USED_LOG
from .test_hostile import broken, delivered_across_4gib, rx_does_not_livelock, sparse_4gib

AV = DESC_F_AVAIL           # available in the first lap (wrap counter 1)


def data(rig, n=64) -> int:
    gpa = rig.mem.alloc(n)
    rig.mem.write(gpa, bytes(n))
    return gpa


def test_buffer_id_out_of_range(make_rig):
    rig = make_rig(packed=True, num=7)
    rig.tx.raw_desc(0, data(rig), 64, id=7, flags=AV)
    broken(rig, "head")


def test_chain_longer_than_the_ring(make_rig):
    rig = make_rig(packed=True, num=5)
    for i in range(5):
        rig.tx.raw_desc(i, data(rig), 16, id=0, flags=AV | DESC_F_NEXT)
    broken(rig, "loop")


def test_used_flags_in_the_current_lap_contradict_the_wrap_counter(make_rig):
    rig = make_rig(packed=True, num=8)
    rig.tx.raw_desc(0, data(rig), 64, id=0, flags=DESC_F_AVAIL | DESC_F_USED)
    broken(rig, "wrap")


def test_chain_into_a_descriptor_not_made_available(make_rig):
    rig = make_rig(packed=True, num=8)
    rig.tx.raw_desc(1, data(rig), 32, id=0, flags=0)                  # the next lap's, not this one's
    rig.tx.raw_desc(0, data(rig), 32, id=0, flags=AV | DESC_F_NEXT)
    broken(rig, "wrap")


def table(rig, entries) -> int:
    gpa = rig.mem.alloc(16 * len(entries))
    for k, (addr, n, flags) in enumerate(entries):
        rig.mem.write(gpa + 16 * k, struct.pack("<QIHH", addr, n, 0, flags))
    return gpa


def test_indirect_inside_indirect(make_rig):
    rig = make_rig(packed=True, num=8)
    inner = table(rig, [(data(rig), 64, 0)])
    outer = table(rig, [(data(rig), 12, 0), (inner, 16, DESC_F_INDIRECT)])
    rig.tx.raw_desc(0, outer, 32, id=0, flags=AV | DESC_F_INDIRECT)
    broken(rig, "nested_indirect")


def test_indirect_table_longer_than_the_ring(make_rig):
    rig = make_rig(packed=True, num=4)
    t = table(rig, [(data(rig), 16, 0)] * 5)
    rig.tx.raw_desc(0, t, 80, id=0, flags=AV | DESC_F_INDIRECT)
    broken(rig, "chain_len")


@pytest.mark.parametrize("how", ["indirect+next", "indirect second", "bad table len", "table outside",
                                 "data outside", "writable in tx"])
def test_per_chain_faults_are_counted_and_the_ring_goes_on(make_rig, how):
    """The faulty chain completes with length 0 and its whole length in the ring (the next chain
    follows it), a counter moves, the ring stays good."""
    rig = make_rig(packed=True, num=8)
    q, good = rig.tx, table(rig, [(data(rig), 64, 0)])
    if how == "indirect+next":
        q.raw_desc(1, data(rig), 64, id=3, flags=AV)
        q.raw_desc(0, good, 16, id=3, flags=AV | DESC_F_INDIRECT | DESC_F_NEXT)
    elif how == "indirect second":
        q.raw_desc(1, good, 16, id=3, flags=AV | DESC_F_INDIRECT)
        q.raw_desc(0, data(rig), 12, id=3, flags=AV | DESC_F_NEXT)
    else:
        addr, n, flags = {"bad table len": (good, 24, DESC_F_INDIRECT), "table outside": (1 << 40, 16, DESC_F_INDIRECT),
                          "data outside": (1 << 40, 64, 0), "writable in tx": (data(rig), 64, 2)}[how]
        q.raw_desc(1, data(rig), 64, id=3, flags=AV)
        q.raw_desc(0, addr, n, id=3, flags=AV | flags | DESC_F_NEXT)
    rig.tx.next_avail = 2                         # the driver's shadow: two descriptors used by hand
    rig.tx.add_out([rig.frame(70)])
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + rig.frame(70)]
    st = rig.stats("tx")
    assert st["broken"] is None and st["drops_fault"] + st["drops_bad_desc"] == 1
    assert rig.tx.desc_flags(0) == DESC_F_AVAIL | DESC_F_USED      # id 3, length 0, at its first slot
    assert struct.unpack("<IH", rig.mem.read(rig.tx.desc_gpa + 8, 6)) == (0, 3)
    assert rig.dp.ring_positions(1) == (3 | 0x8000, 3 | 0x8000)


def test_descriptor_ring_outside_memory(make_rig):
    rig = make_rig(packed=True, num=8, start=False)
    q = rig.tx
    with pytest.raises(GuestFaultError):
        rig.dp.start_ring(1, num=8, desc=q.desc_uva + (8 << 20), avail=q.avail_uva, used=q.used_uva, base=q.base)
    with pytest.raises(GuestFaultError):
        rig.dp.start_ring(1, num=8, desc=q.desc_uva, avail=q.avail_uva, used=rig.mem.uva_base - 4, base=q.base)
    assert not rig.dp.running(1)


def test_used_descriptor_stores_are_logged_at_the_descriptor_rings_gpa(make_rig):
    """Each used descriptor's len/id/flags (bytes 8-15 of slot i) at desc_gpa + 16 * i + 8, whatever
    log_addr says (here far outside guest memory; QEMU sends the device area's GPA, vq->used_phys, which
    names no ring the device writes descriptors into); RX data at its guest-physical pages; the device
    area at its guest-physical address. Nothing is marked at log_addr + offset."""
    rig, log = logged_rig(make_rig, packed=True, num=256)
    rig.tx.add_out([rig.frame(60)] * 3)                   # slots 0, 1, 2
    rig.poll_idle()
    assert len(rig.tx.used()) == 3
    device_area = pages(rig.tx.used_gpa, 4) | pages(rig.rx.used_gpa, 4)
    slots = pages(rig.tx.desc_gpa + 8, 3 * 16)
    assert slots <= dirty(log) <= slots | device_area
    assert not dirty(log) & pages(USED_LOG, 0x20_0000)
    log[:] = bytes(len(log))
    for _ in range(2):
        rig.rx.add_in(1, 2048)
        rig.inject(rig.hdr() + rig.frame(1000))
        rig.poll_idle()
        (bid, n), = rig.rx.used()
        bufs = [(g, s) for g, s in rig.rx._done[bid].bufs]
        assert pages(bufs[0][0], n) <= dirty(log)
        rig.rx.read_in(bid, n)
    assert pages(rig.rx.desc_gpa + 8, 16 + 8) <= dirty(log)
    assert rig.dp.log_stats()["log_overflow"] == 0


def test_used_descriptors_are_logged_when_log_addr_is_the_device_area(make_rig):
    """QEMU's SET_VRING_ADDR for a packed ring (vhost_virtqueue_set_addr: log_guest_addr = vq->used_phys,
    the device event area): a used descriptor written into the descriptor ring is marked on the ring's
    own page, which a Linux guest allocates apart from the event areas. Unmarked, the final migration
    round can carry a descriptor page without the used flags the source's worker wrote, and the
    destination guest waits on that slot forever (a 10.0 packed CI failure: RX never refilled)."""
    rig, log = logged_rig(make_rig, packed=True, num=256)
    for i, q in enumerate((rig.rx, rig.tx)):
        rig.dp.set_ring_log(i, True, q.used_gpa)
    ring_pages = pages(rig.rx.desc_gpa, 16 * 256)
    assert not ring_pages & (pages(rig.rx.used_gpa, 4) | pages(rig.rx.avail_gpa, 4))   # the layout Linux has
    for slot in range(256):             # every slot of the RX descriptor ring once
        rig.rx.add_in(1, 2048)
        rig.inject(rig.hdr() + rig.frame(60))
        log[:] = bytes(len(log))
        rig.poll_idle()
        (bid, n), = rig.rx.used()
        assert pages(rig.rx.desc_gpa + 16 * slot + 8, 8) <= dirty(log), f"slot {slot}: used descriptor not marked"
        rig.rx.read_in(bid, n)


# -- findings of the packed differential fuzzer (docs/fuzzing.md, "Bugs found") ---------------------------
def test_indirect_table_of_exactly_the_queue_size_is_served(make_rig):
    """2.8.5: "If not limited, the maximum number of descriptors in a list is the virt queue size": a
    table of num entries is a legal list (it was broken as chain_len, the ring descriptor counted in;
    one entry more still is: test_indirect_table_longer_than_the_ring)."""
    rig = make_rig(packed=True, num=4)
    pkt = bytes(12) + rig.frame(52)
    gpa = data(rig, 64)
    rig.mem.write(gpa, pkt)
    t = table(rig, [(gpa, 16, 0), (gpa + 16, 16, 0), (gpa + 32, 16, 0), (gpa + 48, 16, 0)])
    rig.tx.raw_desc(0, t, 64, id=2, flags=AV | DESC_F_INDIRECT)
    rig.poll_idle()
    assert rig.wire() == [pkt]
    st = rig.stats("tx")
    assert st["packets"] == 1 and st["broken"] is None
    assert struct.unpack("<IHH", rig.mem.read(rig.tx.desc_gpa + 8, 8)) == (0, 2, DESC_F_AVAIL | DESC_F_USED)


@pytest.mark.parametrize("mrg", [False, True])
def test_faulted_rx_chain_is_used_without_the_write_flag(make_rig, mrg):
    """2.8.3: in a used descriptor WRITE says the device wrote data into the buffer. An RX chain
    completed with length 0 (here: its buffer outside guest memory) had WRITE with length 0; now only a
    buffer that received bytes is marked WRITE."""
    rig = make_rig(packed=True, num=8, mrg=mrg)
    rig.rx.raw_desc(0, 1 << 40, 2048, id=5, flags=AV | DESC_F_WRITE)
    rig.rx.next_avail = 1
    rig.rx.add_in(1, 2048)
    rig.inject(rig.hdr() + rig.frame(100))
    rig.poll_idle()
    assert struct.unpack("<IHH", rig.mem.read(rig.rx.desc_gpa + 8, 8)) == (0, 5, DESC_F_AVAIL | DESC_F_USED)
    assert rig.rx.desc_flags(1) == DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE       # 112 bytes written
    st = rig.stats("rx")
    assert st["drops_fault"] == 1 and st["packets"] == 1 and st["broken"] is None


@pytest.mark.parametrize("shift", [4, 8, 1])
def test_descriptor_ring_misaligned_in_our_mapping_is_refused(make_rig, shift):
    """2.8.10.1: the descriptor ring is 16-aligned in guest memory; a region whose host buffer is shifted
    against its uva (an odd mmap offset) made our mapping of it 4- or 8-aligned only, and the core's
    struct and atomic accesses to it misaligned (UB, UBSan: "member access within misaligned address").
    Such a ring is refused like a misaligned split ring (EINVAL), at start and when a new table moves it."""
    from vhostsplice.errors import ConfigError
    from vhostsplice.testing.virtq import Region
    rig = make_rig(packed=True, num=8, start=False)
    q, mem = rig.tx, rig.mem
    shifted = [Region(mem.gpa_base, mem.uva_base, mem.size - 16, mem.view[shift:mem.size - 16 + shift])]
    rig.dp.set_memory(shifted)
    with pytest.raises(ConfigError) as e:
        rig.dp.start_ring(1, num=8, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva, base=q.base)
    assert e.value.errno == errno.EINVAL and not rig.dp.running(1)
    rig.dp.set_memory(mem.regions())
    rig.start(1)
    with pytest.raises(GuestFaultError):
        rig.dp.set_memory(shifted)
    assert not rig.dp.running(1)


# -- the packed counterparts of the split ring's vulnerability classes (test_hostile.py, docs/fuzzing.md) ---
HDR = bytes(12)


def raw_list(q, descs, at: int = 0) -> None:
    """Descriptors (addr, len, id, flags) as one list from slot `at` (first lap: AVAIL), the first one's
    flags stored last; the driver's shadow moves past them (its own chains go after)."""
    for k in range(len(descs) - 1, -1, -1):
        addr, n, bid, flags = descs[k]
        q.raw_desc(at + k, addr, n, id=bid, flags=AV | flags | (DESC_F_NEXT if k < len(descs) - 1 else 0))
    q.next_avail = at + len(descs)
    q.free_descs -= len(descs)


def used_at(rig, q, slot: int) -> tuple[int, int, int]:
    """(len, id, flags) of the descriptor in ring slot `slot`."""
    return struct.unpack("<IHH", rig.mem.read(q.desc_gpa + 16 * slot + 8, 8))


USED1 = DESC_F_AVAIL | DESC_F_USED      # a used descriptor of the first lap


def test_descriptor_a_lap_ahead_is_not_taken(make_rig):
    """avail_idx_jump's counterpart: the driver marking descriptors available in a lap it has not reached
    (flags of wrap counter 0 while the device is in lap 1) makes nothing available: not taken, not broken."""
    rig = make_rig(packed=True, num=8)
    for i in range(8):
        rig.tx.raw_desc(i, data(rig), 64, id=i, flags=DESC_F_USED)      # lap 0's AVAIL/USED pattern
    rig.poll_idle()
    st = rig.stats("tx")
    assert st["chains"] == 0 and st["broken"] is None and rig.wire() == []
    assert rig.dp.ring_positions(1) == (0x8000, 0x8000)


def test_next_flags_inside_an_indirect_table_do_not_loop(make_rig):
    """loop_inside_indirect_table's counterpart: a table's entries are used in order, their NEXT flag and
    id mean nothing (2.8.7), so entries that would loop in a split table are simply the list."""
    rig = make_rig(packed=True, num=8)
    pkt = HDR + rig.frame(52)
    gpa = data(rig, 64)
    rig.mem.write(gpa, pkt)
    t = rig.mem.alloc(32)
    rig.mem.write(t, struct.pack("<QIHH", gpa, 32, 1, DESC_F_NEXT) + struct.pack("<QIHH", gpa + 32, 32, 0, DESC_F_NEXT))
    raw_list(rig.tx, [(t, 32, 4, DESC_F_INDIRECT)])
    rig.poll_idle()
    assert rig.wire() == [pkt] and rig.stats("tx")["broken"] is None
    assert used_at(rig, rig.tx, 0) == (0, 4, USED1)


def test_rx_ring_corruption(make_rig):
    rig = make_rig(packed=True, num=8)
    rig.rx.raw_desc(0, data(rig), 64, id=0, flags=DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE)
    rig.inject(rig.hdr() + rig.frame(60))
    broken(rig, "wrap", ring="rx")


@pytest.mark.parametrize("addr,n", [(0x10, 100), (None, 100), ((1 << 64) - 8, 64)])
def test_address_outside_memory_is_counted(make_rig, addr, n):
    """Below guest memory, running past its end, wrapping past 2^64: one counted fault, the next list
    still goes out."""
    rig = make_rig(packed=True, num=8)
    if addr is None:
        addr = rig.mem.gpa_base + rig.mem.size - 50
    raw_list(rig.tx, [(addr, n, 6, 0)])
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.wire() == [HDR + rig.frame(60)]
    assert used_at(rig, rig.tx, 0) == (0, 6, USED1)
    st = rig.stats("tx")
    assert st["drops_fault"] == 1 and st["packets"] == 1 and st["broken"] is None


def test_fault_exit(make_rig):
    rig = make_rig(packed=True, num=8, fault_exit=True)
    raw_list(rig.tx, [(0x10, 100, 6, 0)])
    with pytest.raises(GuestFaultError) as e:
        rig.dp.poll()
    assert e.value.errno == errno.EFAULT
    assert used_at(rig, rig.tx, 0) == (0, 6, USED1)          # completed (and published) before exiting
    assert rig.stats("tx")["drops_fault"] == 1


@pytest.mark.parametrize("length", [0, 8, 24])
def test_bad_indirect_length(make_rig, length):
    rig = make_rig(packed=True, num=8)
    raw_list(rig.tx, [(data(rig), length, 6, DESC_F_INDIRECT)])
    rig.poll_idle()
    assert used_at(rig, rig.tx, 0) == (0, 6, USED1)
    st = rig.stats("tx")
    assert st["drops_bad_desc"] == 1 and st["broken"] is None


def test_too_many_iovecs(make_rig):
    """1100 one-byte entries (in a table of a 2048 ring): more iovecs than readv takes, one counted fault."""
    rig = make_rig(packed=True, num=2048)
    buf = data(rig, 2048)
    t = table(rig, [(buf + i, 1, 0) for i in range(1100)])
    raw_list(rig.tx, [(t, 16 * 1100, 6, DESC_F_INDIRECT)])
    rig.poll_idle()
    assert rig.stats("tx")["drops_bad_desc"] == 1 and rig.wire() == []


def test_zero_length_descriptors_are_skipped(make_rig):
    rig = make_rig(packed=True, num=8)
    pkt = HDR + rig.frame(100)
    gpa = data(rig, len(pkt))
    rig.mem.write(gpa, pkt)
    raw_list(rig.tx, [(0xdead0000, 0, 0, 0), (gpa, len(pkt), 6, 0)])    # no bytes: never translated
    rig.poll_idle()
    assert rig.wire() == [pkt]
    assert used_at(rig, rig.tx, 0) == (0, 6, USED1)


def test_descriptor_loop_on_a_ring_larger_than_the_iovec_array(make_rig):
    """Every descriptor of a 2048 ring has NEXT: the list outlasts the 1024 iovecs and must still break
    the ring ('loop': longer than the queue), not be a per-chain 'too many iovecs' fault."""
    rig = make_rig(packed=True, num=2048)
    gpa = data(rig, 64)
    for i in range(2048):
        rig.tx.raw_desc(i, gpa, 8, id=0, flags=AV | DESC_F_NEXT)
    broken(rig, "loop")


def test_long_legal_list_past_the_iovec_array_is_a_counted_fault(make_rig):
    rig = make_rig(packed=True, num=2048)
    gpa = data(rig, 64)
    raw_list(rig.tx, [(gpa, 8, 9, 0)] * 1500)
    rig.poll_idle()
    st = rig.stats("tx")
    assert st["drops_bad_desc"] == 1 and st["broken"] is None
    assert used_at(rig, rig.tx, 0) == (0, 9, USED1)
    assert rig.dp.ring_positions(1) == (1500 | 0x8000, 1500 | 0x8000)    # the whole list skipped


@pytest.mark.parametrize("back,n,ok", [(60, 60, True), (59, 60, False), (0, 1, False), (None, 2, False)])
def test_descriptor_at_the_edge_of_memory(make_rig, back, n, ok):
    """CVE-2018-1059 class: the whole range is translated, not its first byte."""
    rig = make_rig(packed=True, num=8)
    end = rig.mem.gpa_base + rig.mem.size
    addr = rig.mem.gpa_base - 1 if back is None else end - back
    if ok:
        rig.mem.write(addr, HDR + rig.frame(n - 12))
    raw_list(rig.tx, [(addr, n, 6, 0)])
    rig.poll_idle()
    st = rig.stats("tx")
    assert (st["packets"], st["drops_fault"]) == ((1, 0) if ok else (0, 1))
    assert rig.wire() == ([HDR + rig.frame(n - 12)] if ok else [])
    assert used_at(rig, rig.tx, 0) == (0, 6, USED1) and st["broken"] is None


@pytest.mark.parametrize("area", ["desc", "used"])
@pytest.mark.parametrize("over,ok", [(0, True), (4, False)])
def test_ring_area_ending_at_the_last_byte_of_memory(make_rig, area, over, ok):
    """The descriptor ring (16 * num) or an event area (4 bytes) exactly at the end of memory is served;
    running past it is EFAULT and the ring is not started."""
    rig = make_rig(packed=True, num=8, start=False)
    q = rig.tx
    end = rig.mem.uva_base + rig.mem.size
    kw = {"desc": q.desc_uva, "avail": q.avail_uva, "used": q.used_uva}
    size, step = (16 * 8, 4 * over) if area == "desc" else (4, over)     # past the end by 16 or 4 (aligned)
    kw[area] = end - size + step
    if ok:
        assert rig.dp.start_ring(1, num=8, base=q.base, **kw) == q.base
    else:
        with pytest.raises(GuestFaultError) as e:
            rig.dp.start_ring(1, num=8, base=q.base, **kw)
        assert e.value.errno == errno.EFAULT and not rig.dp.running(1)


def test_lengths_summing_past_4_gib(make_rig):
    """Two 4 GiB - 16 RX elements over sparse memory: the used length is the packet's, nothing wraps."""
    rig = make_rig(packed=True, num=8)
    with sparse_4gib(rig) as (base, big):
        raw_list(rig.rx, [(base, 0xFFFFFFF0, 0, DESC_F_WRITE), (base + 16, 0xFFFFFFF0, 3, DESC_F_WRITE)])
        pkt = rig.hdr() + rig.frame(200)
        rig.inject(pkt)
        rig.poll_idle()
        assert used_at(rig, rig.rx, 0) == (len(pkt), 3, USED1 | DESC_F_WRITE)
        delivered_across_4gib(rig, big, pkt)


def test_huge_descriptor_length_is_a_counted_fault(make_rig):
    rig = make_rig(packed=True, num=8)
    raw_list(rig.tx, [(rig.mem.gpa_base, 0xFFFFFFFF, 6, 0)])
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    st = rig.stats("tx")
    assert st["drops_fault"] == 1 and st["packets"] == 1 and st["broken"] is None


def test_indirect_table_running_past_memory_is_a_fault(make_rig):
    rig = make_rig(packed=True, num=8)
    end = rig.mem.gpa_base + rig.mem.size
    raw_list(rig.tx, [(end - 32, 64, 6, DESC_F_INDIRECT)])
    rig.poll_idle()
    assert rig.stats("tx")["drops_fault"] == 1 and used_at(rig, rig.tx, 0) == (0, 6, USED1)


def test_budget_bounds_the_work_of_one_poll(make_rig):
    """CVE-2019-3900 class: at most tx_budget lists per poll, then MORE."""
    from vhostsplice.device.datapath import MORE
    rig = make_rig(packed=True, num=256, tx_budget=8)
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(100)])
    flags = rig.dp.poll()
    assert flags & MORE and len(rig.wire()) == 8
    rig.poll_idle()
    assert len(rig.wire()) == 92


@pytest.mark.parametrize("mrg", [False, True])
def test_rx_list_of_1024_iovecs_does_not_livelock(make_rig, mrg):
    """CVE-2018-16880 class: 1024 two-byte RX elements in one list, or (MRG_RXBUF) 1100 small buffers for
    one large frame, end as a counted fault or a delivered packet, not an endless retry."""
    rig = make_rig(packed=True, num=2048, rx_budget=4, mrg=mrg, rx_max=65562 + 12)
    if mrg:
        rig.rx.add_in(1100, 12)
    else:
        gpa = data(rig, 4096)
        raw_list(rig.rx, [(gpa + 2 * i, 2, 0, DESC_F_WRITE) for i in range(1024)])
    rx_does_not_livelock(rig)

"""Ring start/stop/remap: validation, reconnect positions, memory table changes; fairness of the poll."""
from __future__ import annotations

import errno

import pytest

from vhostsplice.device.datapath import MORE, Datapath
from vhostsplice.errors import ConfigError, GuestFaultError
from vhostsplice.testing.virtq import Region


@pytest.mark.parametrize("num", [0, 3, 100, 65536])
def test_bad_size_is_einval(make_rig, num):
    rig = make_rig(start=False)
    q = rig.tx
    with pytest.raises(ConfigError) as e:
        rig.dp.start_ring(1, num=num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva)
    assert e.value.errno == errno.EINVAL
    assert not rig.dp.running(1)


@pytest.mark.parametrize("num", [0, 3, 48, 100, 65536])
def test_bad_size_leaves_a_running_ring_as_it_was(make_rig, num):
    """The size is checked (ring_size_ok, the one rule) before the ring is touched: a refused start
    neither stops the running ring nor moves it."""
    rig = make_rig()
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    before = rig.dp.stats()["tx"]
    q = rig.tx
    with pytest.raises(ConfigError) as e:
        rig.dp.start_ring(1, num=num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva)
    assert e.value.errno == errno.EINVAL
    assert rig.dp.running(1) and rig.dp.stats()["tx"] == before
    rig.tx.add_out([rig.frame(60, seed=1)])
    rig.poll_idle()
    assert len(rig.wire()) == 2


@pytest.mark.parametrize("field,delta", [("desc", 8), ("avail", 1), ("used", 2)])
def test_misaligned_ring_is_einval(make_rig, field, delta):
    rig = make_rig(start=False)
    q = rig.tx
    addrs = {"desc": q.desc_uva, "avail": q.avail_uva, "used": q.used_uva}
    addrs[field] += delta
    with pytest.raises(ConfigError) as e:
        rig.dp.start_ring(1, num=q.num, **addrs)
    assert e.value.errno == errno.EINVAL


def test_ring_outside_memory_is_efault(make_rig):
    rig = make_rig(start=False)
    q = rig.tx
    end = rig.mem.uva_base + rig.mem.size
    for addrs in ({"desc": 0x1000, "avail": q.avail_uva, "used": q.used_uva},
                  {"desc": q.desc_uva, "avail": end - 64, "used": q.used_uva},      # runs past the end
                  {"desc": q.desc_uva, "avail": q.avail_uva, "used": q.used_gpa}):  # a gpa is not a uva
        with pytest.raises(GuestFaultError) as e:
            rig.dp.start_ring(1, num=q.num, **addrs)
        assert e.value.errno == errno.EFAULT
        assert not rig.dp.running(1)


def test_ring_across_two_regions_is_efault(make_rig):
    rig = make_rig(start=False)
    q = rig.tx
    cut = q.desc_gpa - rig.mem.gpa_base + 16 * q.num // 2       # the descriptor table straddles the cut
    rig.dp.set_memory(rig.mem.regions(cut))
    with pytest.raises(GuestFaultError):
        rig.dp.start_ring(1, num=q.num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva)


def test_position_comes_from_used_idx(make_rig):
    rig = make_rig(num=16, start=False)
    q = rig.tx
    q.mem.store16(q.used_gpa + 2, 1000)              # a previous back-end got this far
    q.last_used = q.avail_idx = q.published = 1000
    q.mem.store16(q.avail_gpa + 2, 1000)
    assert rig.start(1) == 1000
    q.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + rig.frame(60)]
    assert q.used() and q.used_idx == 1001
    assert rig.dp.stop_ring(1) == 1001
    assert not rig.dp.running(1)


def test_stopped_ring_is_not_processed(make_rig):
    rig = make_rig()
    rig.dp.stop_ring(1)
    rig.tx.add_out([rig.frame(60)])
    rig.poll_idle()
    assert rig.wire() == [] and rig.tx.used_idx == 0


def test_new_memory_table_remaps_running_rings(make_rig):
    rig = make_rig()
    copy = bytearray(rig.buf)                         # the same guest memory, now at another host address
    rig.dp.set_memory([Region(rig.mem.gpa_base, rig.mem.uva_base, len(copy), memoryview(copy))])
    rig.tx.add_out([rig.frame(60)])                   # written to the old buffer: the device must not see it
    rig.poll_idle()
    assert rig.wire() == []
    rig.dp.set_memory(rig.mem.regions())              # back to the driver's buffer
    rig.poll_idle()
    assert rig.wire() == [bytes(12) + rig.frame(60)]


def test_memory_table_without_the_ring_stops_it(make_rig):
    rig = make_rig()
    with pytest.raises(GuestFaultError):
        rig.dp.set_memory([Region(rig.mem.gpa_base, 0x1000, rig.mem.size, rig.mem.view)])
    assert not rig.dp.running(0) and not rig.dp.running(1)


def test_region_buffer_too_small(make_rig):
    rig = make_rig(start=False)
    with pytest.raises(ConfigError):
        rig.dp.set_memory([Region(0, 0, 4096, memoryview(bytearray(100)))])


def test_only_rings_0_and_1(make_rig):
    rig = make_rig(start=False)
    with pytest.raises(ConfigError):
        rig.dp.start_ring(2, num=16, desc=0, avail=0, used=0)


def test_fairness_both_directions_progress(make_rig, host_io):
    rig = make_rig(tx_budget=4, rx_budget=4)
    rig.tx.add_out([rig.frame(60, seed=i) for i in range(20)])
    rig.rx.add_in(64, 2048)
    rig.inject(*[rig.hdr() + rig.frame(60, seed=i) for i in range(20)])
    first = 1 if host_io == "io_uring" else 4    # the trickle rule: a first RX batch reads one frame
    assert rig.dp.poll() & MORE
    assert len(rig.wire()) == 4 and len(rig.rx.used()) == first    # one batch of each per poll
    assert rig.dp.poll() & MORE                  # wire() and used(): what came since the last look
    assert len(rig.wire()) == 4 and len(rig.rx.used()) == 4
    rig.poll_idle()
    assert len(rig.wire()) == 12 and len(rig.rx.used()) == 16 - first


def test_stats_shape(make_rig):
    rig = make_rig()
    st = rig.dp.stats()
    assert set(st) == {"rx", "tx"}
    for ring in st.values():
        assert ring["broken"] is None
        assert {"packets", "bytes", "drops_fault", "notify_sent", "last_avail_idx", "used_idx"} <= set(ring)


def test_only_the_12_byte_header(make_rig):
    with pytest.raises(ConfigError):
        Datapath(0, hdr_len=10)


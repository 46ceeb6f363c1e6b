"""RX (ring 0): packets from the host fd land in guest buffers, single or merged (MRG_RXBUF)."""
from __future__ import annotations

import errno

import pytest

from vhostsplice.device.datapath import RX_STARVED
from vhostsplice.errors import HostFdError


def num_buffers(data: bytes) -> int:
    return int.from_bytes(data[10:12], "little")


def test_single_buffers(make_rig):
    rig = make_rig()
    rig.rx.add_in(8, 2048)
    pkts = [rig.hdr(num_buffers=0xFFFF, flags=1) + rig.frame(n, seed=n) for n in (60, 1514, 2000)]
    rig.inject(*pkts)
    assert rig.poll_idle() == 0                      # host fd drained (EAGAIN), buffers left
    used = rig.rx.used()
    assert [n for _h, n in used] == [len(p) for p in pkts]
    for (head, n), p in zip(used, pkts):
        data = rig.rx.read_in(head, n)
        assert num_buffers(data) == 1                # written by the device over the tap's bytes
        assert data[:10] == p[:10] and data[12:] == p[12:]
    st = rig.stats("rx")
    assert (st["packets"], st["chains"]) == (3, 3)
    assert st["bytes"] == sum(len(p) - 12 for p in pkts)


def test_single_buffer_split_over_descriptors(make_rig):
    rig = make_rig()
    rig.rx.add_in(1, 2048, split=5)
    pkt = rig.hdr() + rig.frame(1500, seed=2)
    rig.inject(pkt)
    rig.poll_idle()
    (head, n), = rig.rx.used()
    data = rig.rx.read_in(head, n)
    assert n == len(pkt) and data[12:] == pkt[12:] and num_buffers(data) == 1


def test_mergeable_buffers(make_rig):
    rig = make_rig(mrg=True, rx_max=9000)
    heads = rig.rx.add_in(8, 2048)
    big = rig.hdr() + rig.frame(5000 - 12, seed=1)
    rig.inject(big)
    rig.poll_idle()
    used = rig.rx.used()
    assert [h for h, _n in used] == heads[:3]        # 5 chains collected for 9000 bytes, 2 given back
    assert [n for _h, n in used] == [2048, 2048, 5000 - 4096]
    pkt, = rig.rx.packets(used, mrg=True)
    assert num_buffers(pkt) == 3 and pkt[12:] == big[12:]
    assert rig.stats("rx")["last_avail_idx"] == 3
    small = rig.hdr() + rig.frame(100, seed=7)       # the next packet starts in the 4th chain
    rig.inject(small)
    rig.poll_idle()
    used = rig.rx.used()
    assert used == [(heads[3], len(small))]
    assert num_buffers(rig.rx.read_in(*used[0])) == 1
    st = rig.stats("rx")
    assert (st["packets"], st["chains"]) == (2, 4)


def test_mergeable_starved_waits_for_more_buffers(make_rig):
    rig = make_rig(mrg=True, rx_max=9000)
    rig.rx.add_in(2, 2048)                           # 4 KiB posted, 9000 wanted, ring not full
    rig.inject(rig.hdr() + rig.frame(100))
    assert rig.poll_idle() == RX_STARVED
    assert rig.rx.used() == []
    st = rig.stats("rx")
    assert st["rx_starved"] == 1 and st["last_avail_idx"] == 0
    assert rig.rx.used_flags == 0                    # notifications on: the driver will kick
    rig.rx.add_in(4, 2048)
    assert rig.poll_idle() == 0
    assert [n for _h, n in rig.rx.used()] == [112]


def test_mergeable_full_ring_does_not_wait(make_rig):
    rig = make_rig(num=4, mrg=True, rx_max=65562)
    rig.rx.add_in(4, 1024)                           # every descriptor posted: waiting cannot help
    pkt = rig.hdr() + rig.frame(3000, seed=4)
    rig.inject(pkt)
    rig.poll_idle()
    used = rig.rx.used()
    assert [n for _h, n in used] == [1024, 1024, 3012 - 2048]
    assert rig.rx.packets(used, mrg=True)[0][12:] == pkt[12:]


def test_no_buffers_is_starved_with_notifications_on(make_rig):
    rig = make_rig(event_idx=True)
    rig.inject(rig.hdr() + rig.frame(60))
    assert rig.poll_idle() == RX_STARVED
    assert rig.rx.avail_event == 0                   # kick me when avail->idx passes 0
    rig.rx.add_in(1, 2048)
    rig.poll_idle()
    assert [n for _h, n in rig.rx.used()] == [72]


def test_idle_host_fd_is_not_starved(make_rig):
    rig = make_rig()
    rig.rx.add_in(4, 2048)
    assert rig.poll_idle() == 0
    assert rig.stats("rx")["rx_starved"] == 0 and rig.rx.used() == []


def test_packet_shorter_than_header_keeps_the_buffer(make_rig):
    rig = make_rig()
    head, = rig.rx.add_in(1, 2048)
    rig.inject(b"\x01\x02\x03", rig.hdr() + rig.frame(60))
    rig.poll_idle()
    assert rig.rx.used() == [(head, 72)]
    assert rig.stats("rx")["drops_short"] == 1


def test_read_only_descriptor_in_rx_chain(make_rig):
    rig = make_rig()
    gpa = rig.mem.alloc(2048)
    rig.rx.raw_desc(3, gpa, 2048, 0, 0)              # device-readable: wrong for RX
    rig.rx.raw_avail(0, 3)
    rig.rx.set_avail_idx(1)
    rig.inject(rig.hdr() + rig.frame(60))
    assert rig.poll_idle() == RX_STARVED
    assert rig.rx.used() == [(3, 0)]
    assert rig.stats("rx")["drops_bad_desc"] == 1


def test_buffer_smaller_than_header_is_short(make_rig):
    rig = make_rig(mrg=True, rx_max=1526)
    tiny, = rig.rx.add_in(1, 8)
    ok, = rig.rx.add_in(1, 2048)
    rig.inject(rig.hdr() + rig.frame(60))
    rig.poll_idle()
    assert rig.rx.used() == [(tiny, 0), (ok, 72)]
    assert rig.stats("rx")["drops_short"] == 1


def test_peer_closed_is_epipe(make_rig):
    rig = make_rig()
    rig.rx.add_in(1, 2048)
    rig.peer.close()
    with pytest.raises(HostFdError) as e:
        rig.dp.poll()
    assert e.value.errno == errno.EPIPE

"""TX (ring 1): guest chains go to the host fd byte-exact, one writev per chain."""
from __future__ import annotations

import errno
import socket

import pytest

from vhostsplice.device.datapath import RX_STARVED, TX_BLOCKED
from vhostsplice.errors import HostFdError

HDR = bytes(12)


def test_single_descriptor_frames_are_byte_exact(make_rig):
    rig = make_rig()
    frames = [rig.frame(n, seed=n) for n in (60, 1514, 9000, 1)]
    heads = rig.tx.add_out(frames)
    assert rig.poll_idle() == RX_STARVED          # TX done; RX has no buffers posted
    assert rig.wire() == [HDR + f for f in frames]
    assert rig.tx.used() == [(h, 0) for h in heads]
    st = rig.stats("tx")
    assert (st["packets"], st["chains"], st["bytes"]) == (4, 4, sum(map(len, frames)))
    assert st["last_avail_idx"] == st["used_idx"] == 4


@pytest.mark.parametrize("split", [2, 3, 7])
def test_split_chains_are_gathered(make_rig, split):
    rig = make_rig()
    frames = [rig.frame(100 * split + 5, seed=split), rig.frame(3000, seed=1)]
    rig.tx.add_out(frames, split=split)
    rig.poll_idle()
    assert rig.wire() == [HDR + f for f in frames]
    assert [n for _h, n in rig.tx.used()] == [0, 0]


def test_indirect_chains(make_rig):
    rig = make_rig(indirect=True)
    frames = [rig.frame(1500, seed=3), rig.frame(64, seed=4)]
    rig.tx.add_out(frames, split=4, indirect=True)
    rig.poll_idle()
    assert rig.wire() == [HDR + f for f in frames]
    assert rig.stats("tx")["packets"] == 2


def test_indirect_not_negotiated_is_a_chain_fault(make_rig):
    rig = make_rig(indirect=False)
    bad, = rig.tx.add_out([rig.frame(100)], split=2, indirect=True)
    good, = rig.tx.add_out([rig.frame(80, seed=9)])
    rig.poll_idle()
    assert rig.wire() == [HDR + rig.frame(80, seed=9)]
    assert rig.tx.used() == [(bad, 0), (good, 0)]
    assert rig.stats("tx")["drops_bad_desc"] == 1


def test_descriptor_spanning_two_regions_is_split(make_rig):
    rig = make_rig(splits=(1 << 20,))          # regions [0, 1 MiB) and [1 MiB, 4 MiB)
    data = HDR + rig.frame(4000, seed=5)
    gpa = rig.mem.gpa_base + (1 << 20) - 1000  # 1000 bytes in region 0, the rest in region 1
    rig.mem.write(gpa, data)
    rig.tx.raw_desc(0, gpa, len(data), 0, 0)
    rig.tx.raw_avail(0, 0)
    rig.tx.set_avail_idx(1)
    rig.poll_idle()
    assert rig.wire() == [data]
    assert rig.stats("tx")["drops_fault"] == 0


def test_chain_shorter_than_header_is_dropped(make_rig):
    rig = make_rig()
    short, = rig.tx.add_out([b""], hdr=bytes(8))
    rig.poll_idle()
    assert rig.wire() == []
    assert rig.tx.used() == [(short, 0)]
    assert rig.stats("tx")["drops_short"] == 1


def test_write_only_descriptor_in_tx_chain(make_rig):
    rig = make_rig()
    gpa = rig.mem.alloc(100)
    rig.tx.raw_desc(5, gpa, 100, 2, 0)          # VIRTQ_DESC_F_WRITE (2)
    rig.tx.raw_avail(0, 5)
    rig.tx.set_avail_idx(1)
    rig.poll_idle()
    assert rig.wire() == []
    assert rig.tx.used() == [(5, 0)]
    assert rig.stats("tx")["drops_bad_desc"] == 1


def test_blocked_host_fd_keeps_the_chain(make_rig):
    rig = make_rig(num=512)
    rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [rig.frame(4000, seed=i) for i in range(300)]
    rig.tx.add_out(frames)
    got, blocked = [], 0
    for _ in range(10000):
        flags = rig.dp.poll()
        got += rig.wire()
        if flags & TX_BLOCKED:
            blocked += 1
            assert rig.stats("tx")["used_idx"] == len(got)   # nothing consumed that was not sent
        elif not flags & ~RX_STARVED:
            break
    assert blocked > 0
    assert got == [HDR + f for f in frames]
    assert len(rig.tx.used()) == 300


def test_peer_gone_is_epipe(make_rig):
    rig = make_rig()
    rig.peer.close()
    rig.tx.add_out([rig.frame(60)])
    with pytest.raises(HostFdError) as e:
        rig.dp.poll()
    assert e.value.errno == errno.EPIPE


def test_oversized_datagram_is_a_host_drop(make_rig):
    rig = make_rig()
    rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    huge = rig.frame(1 << 20)
    rig.tx.add_out([huge, rig.frame(60)], split=4)
    rig.poll_idle()
    assert rig.wire() == [HDR + rig.frame(60)]
    st = rig.stats("tx")
    assert st["drops_hostfd"] == 1 and st["packets"] == 1
    assert [n for _h, n in rig.tx.used()] == [0, 0]

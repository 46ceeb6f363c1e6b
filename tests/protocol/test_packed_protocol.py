"""RING_PACKED through vhost-user: the offer (one policy for run and serve, --no-packed), the ring-size
rule, and SET/GET_VRING_BASE carrying the 32-bit packed state, against the real back-end and C core."""
from __future__ import annotations

import errno
import itertools
import os
import struct

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.serve import serve_device
from vhostsplice.device.backend import Backend, BackendConfig
from vhostsplice.device.features import offered_features
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import Feature as F, ProtocolFeature as PF, Req, bit
from vhostsplice.serve.supervisor import ServeConfig
from vhostsplice.testing.hostfd import FakeHostFd

from .test_hostile_frontend import GPA, LOG_SIZE, UVA, Env, log_memfd, log_reply

PACKED = bit(F.F_VERSION_1) | bit(F.F_RING_PACKED)


@pytest.fixture
def env():
    e = Env()
    yield e
    e.close()


@pytest.mark.parametrize("offloads,packed", list(itertools.product((True, False), repeat=2)))
def test_run_and_serve_offer_from_one_policy(offloads, packed):
    """run's Backend and serve's device offer the same bits (serve adds its device-only ones), and
    RING_PACKED exactly when not --no-packed."""
    run = Backend(None, None, FakeHostFd(), BackendConfig(offloads=offloads, packed=packed)).offered
    config = ServeConfig(tap="t", queues=1, cpus=[], offloads=offloads, packed=packed)
    serve = serve_device.device_offered(offloads=config.offloads, packed=config.packed)
    assert run == offered_features(offloads=offloads, packed=packed)
    assert serve & ~serve_device.DEVICE_ONLY == run
    assert bool(run & bit(F.F_RING_PACKED)) == packed and run & bit(F.F_IN_ORDER)


def test_acking_packed_from_a_no_packed_worker_is_eproto():
    b = Backend(None, None, FakeHostFd(), BackendConfig(packed=False))
    with pytest.raises(ProtocolError, match="never offered") as e:
        b.handle(P.Message(int(Req.SET_FEATURES), 1, P.encode_u64(PACKED), ()))
    assert e.value.errno == errno.EPROTO


def test_ring_size_rule_follows_the_acked_layout(env):
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    with pytest.raises(ProtocolError, match="power of 2"):
        env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, 100)))
    env.handle(Req.SET_FEATURES, P.encode_u64(PACKED))
    env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, 100)))
    with pytest.raises(ProtocolError, match="1..32768"):
        env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(0, 32769)))


@pytest.mark.parametrize("state,why", [(100, "avail index 100"), (0x8000 | 100 << 16, "used index 100"),
                                       (0x7FFF, "avail index 32767")])
def test_packed_vring_base_outside_the_ring_is_eproto(env, state, why):
    env.handle(Req.SET_FEATURES, P.encode_u64(PACKED))
    env.handle(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(1, 100)))
    with pytest.raises(ProtocolError, match=why) as e:
        env.handle(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(1, state)))
    assert e.value.errno == errno.EPROTO


def test_split_vring_base_keeps_its_16_bits(env):
    env.handle(Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    with pytest.raises(ProtocolError, match="split ring"):
        env.handle(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(1, 0x80008000)))


def get_base(env, index):
    env.handle(Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(index, 0)))
    return P.decode_vring_state(env.fe_channel.recv()).num


def test_get_and_set_vring_base_round_trip(env):
    """A packed ring started from a 32-bit state (old front-end style: avail half only) reports the
    full state at GET_VRING_BASE, and a ring set up again from that state resumes there."""
    from vhostsplice.vhostuser.channel import Channel
    env.fe_channel = Channel(env.fe_sock)
    env.handle(Req.SET_FEATURES, P.encode_u64(PACKED))
    env.table()
    for index in (0, 1):
        env.handle(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(index, 0x8000 | 5)))
        env.ring(index, num=100)
    assert env.dp.running(0) and env.dp.running(1)
    assert env.dp.ring_positions(1) == (0x8005, 0x8005)
    assert get_base(env, 1) == 0x80058005
    assert not env.dp.running(1)
    env.handle(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(1, 0x00030003)))
    env.ring(1, num=100)
    assert env.dp.running(1) and env.dp.ring_positions(1) == (3, 3)
    assert get_base(env, 1) == 0x00030003


def test_qemus_migration_start_logs_used_descriptors_on_the_descriptor_rings_page(env):
    """QEMU's migration start on a running packed ring: SET_VRING_ADDR with VHOST_VRING_F_LOG and
    log_guest_addr = vq->used_phys, which for a packed ring is the device event area. A TX chain the
    device completes writes its used descriptor into the descriptor ring: that page is marked in the
    log, not the page log_guest_addr + 16 * slot + 8 falls on (the packed 10.0 migration flake: an
    unmarked descriptor page reached the destination without the used flags, the guest's RX hung)."""
    env.handle(Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    env.handle(Req.SET_FEATURES, P.encode_u64(PACKED))
    env.table()
    env.handle(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(1, 0x80008000)))   # lap 1, index 0
    env.ring(1)                                      # desc at GPA + 0x10000, device area at GPA + 0x1A000
    desc_gpa, device_gpa = GPA + 0x10000, GPA + 0x1A000
    fd = log_memfd(LOG_SIZE)
    try:
        env.handle(Req.SET_LOG_BASE, P.encode_log(P.LogArea(LOG_SIZE, 0)), (fd,))
        log_reply(env)
        env.handle(Req.SET_FEATURES, P.encode_u64(PACKED | bit(F.VHOST_F_LOG_ALL)))
        env.handle(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(
            1, 1, UVA + 0x10000, UVA + 0x1A000, UVA + 0x18000, device_gpa)))
        assert env.dp.running(1)
        frame = bytes(12) + b"\xff" * 6 + bytes(range(6)) + b"\x08\x00" + bytes(46)
        os.pwrite(env.memfd, frame, 0x30000)
        os.pwrite(env.memfd, struct.pack("<QIHH", GPA + 0x30000, len(frame), 7, 1 << 7), 0x10000)  # AVAIL, lap 1
        env.dp.poll()
        assert env.peer.recv(2048) in (frame, frame[12:])                                   # sent to the host
        assert struct.unpack("<HH", os.pread(env.memfd, 4, 0x10000 + 12)) == (7, 0x8080)   # used in lap 1
        log = os.pread(fd, LOG_SIZE, 0)
        marked = {i * 8 + b for i, byte in enumerate(log) if byte for b in range(8) if byte >> b & 1}
        assert desc_gpa // 4096 in marked
        assert marked <= {desc_gpa // 4096, device_gpa // 4096}     # TX writes no other guest memory
        assert env.dp.log_stats()["log_overflow"] == 0
    finally:
        os.close(fd)

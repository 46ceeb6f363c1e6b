"""RING_PACKED through vhost-user: the offer (one policy for run and serve, --no-packed), the ring-size
rule, and SET/GET_VRING_BASE carrying the 32-bit packed state, against the real back-end and C core."""
from __future__ import annotations

import errno
import itertools

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.serve import serve_device
from vhostsplice.device.backend import Backend, BackendConfig
from vhostsplice.device.features import offered_features
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import Feature as F, Req, bit
from vhostsplice.serve.supervisor import ServeConfig
from vhostsplice.testing.hostfd import FakeHostFd

from .test_hostile_frontend import Env

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

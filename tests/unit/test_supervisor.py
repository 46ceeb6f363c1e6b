import errno

import pytest

from vhostsplice import protocol as P
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import Req
from vhostsplice.serve_device import ring_index, ring_payload
from vhostsplice.supervisor import ServeConfig, Supervisor, spread_cpus


def test_pairs_spread_over_cpus_cycling():
    assert spread_cpus([2, 3], 3) == [2, 3, 2]
    assert spread_cpus([], 2) == [None, None]


@pytest.mark.parametrize("req, payload, ring", [
    (Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(5, 256)), 5),
    (Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(3, 0, 1, 2, 3, 0)), 3),
    (Req.SET_VRING_KICK, P.encode_vring_file(7, nofd=True), 7),
])
def test_ring_index_and_rewrite(req, payload, ring):
    msg = P.Message(req, 1, payload)
    assert ring_index(msg) == ring
    rewritten = P.Message(req, 1, ring_payload(req, payload, ring % 2))
    assert ring_index(rewritten) == ring % 2
    assert rewritten.payload[4:] == payload[4:] or req == Req.SET_VRING_KICK
    if req == Req.SET_VRING_KICK:
        assert P.decode_vring_file(rewritten).nofd           # the NOFD bit survives the rewrite


def test_ring_index_rejects_bad_sizes():
    with pytest.raises(ProtocolError):
        ring_index(P.Message(Req.SET_VRING_NUM, 1, b"\0\0"))


@pytest.mark.parametrize("policy, code, restart", [
    ("on-failure", 0, False), ("on-failure", errno.ECONNRESET, True), ("on-failure", 137, True),
    ("on-failure", errno.EINVAL, False), ("on-failure", errno.EADDRINUSE, False),
    ("always", 0, True), ("always", errno.ENOTSUP, False), ("never", errno.EIO, False),
])
def test_restart_policy(policy, code, restart):
    sup = Supervisor.__new__(Supervisor)
    sup.config = ServeConfig(tap="t", queues=1, cpus=[], restart=policy)
    assert sup._should_restart(code) is restart


class _Front:
    def __init__(self):
        self.sent = []

    def send(self, request, payload, fds=(), reply=False):
        self.sent.append((request, payload))

    def close(self):
        pass


def _lazy_supervisor(features: int, queues: int = 2):
    from vhostsplice.spec import Feature as F, bit
    sup = Supervisor(_Front(), ServeConfig(tap="t", queues=queues, cpus=[]))
    sup.features, sup.front = features, _Front()
    started = []
    sup.start_worker = lambda pair: (started.append(pair.index), setattr(pair, "started", True))
    return sup, started, bit(F.VHOST_USER_F_PROTOCOL_FEATURES)


def _ring_msg(req, ring, num=0):
    if req == Req.SET_VRING_KICK:
        return P.Message(req, 1, P.encode_vring_file(ring, nofd=True))
    return P.Message(req, 1, P.encode_vring_state(P.VringState(ring, num)))


def test_worker_starts_only_when_the_front_end_enables_a_ring_of_its_pair():
    """A pair the driver never enables gets no worker, so no tap queue attached that would swallow flows."""
    sup, started, pf = _lazy_supervisor(features=0)
    sup.features = pf
    for ring in range(4):
        sup.forward_ring(_ring_msg(Req.SET_VRING_NUM, ring, 256))
        sup.forward_ring(_ring_msg(Req.SET_VRING_BASE, ring, 7))
        sup.forward_ring(_ring_msg(Req.SET_VRING_KICK, ring))
    sup.forward_ring(_ring_msg(Req.SET_VRING_ENABLE, 2, 0))
    assert started == []                                    # kicks alone do not enable (protocol features)
    sup.forward_ring(_ring_msg(Req.SET_VRING_ENABLE, 1, 1))
    assert started == [0]
    # GET_VRING_BASE of the never-started pair 1 answers the base the front-end set
    sup.forward_ring(_ring_msg(Req.GET_VRING_BASE, 3))
    assert sup.front.sent[-1] == (Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(3, 7)))
    sup.shutdown()


def test_without_protocol_features_a_kick_enables_the_ring():
    sup, started, _pf = _lazy_supervisor(features=0)
    sup.forward_ring(_ring_msg(Req.SET_VRING_NUM, 3, 256))
    assert started == []
    sup.forward_ring(_ring_msg(Req.SET_VRING_KICK, 3))
    assert started == [1]
    sup.shutdown()

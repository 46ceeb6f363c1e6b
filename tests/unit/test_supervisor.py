import errno

import pytest

from vhostsplice import protocol as P
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import Req
from vhostsplice.supervisor import ServeConfig, Supervisor, ring_index, ring_payload, spread_cpus


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

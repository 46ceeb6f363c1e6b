"""The host fd is configured in one place: HostFd.apply, from the negotiated state, called by the back-end
after each request. The recording fake (testing/hostfd.py) says which knob was turned, with what, and from
where; a worker or handler that turned one itself would show up as another caller."""
from __future__ import annotations

import socket

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.device.backend import Backend, BackendConfig
from vhostsplice.vhostuser.channel import Channel
from vhostsplice.spec import TUN_F_CSUM, Feature as F, Req, bit, mask
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from support.forked import child_record, fork_worker
from vhostsplice.testing.hostfd import FakeHostFd
from vhostsplice.worker.loop import WorkerConfig

APPLY = "vhostsplice/host/hostfd.py:apply"                # where every knob is turned from
ONE_PLACE = "vhostsplice/device/backend.py:_configure_host"  # where apply is called from
CSUM = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM)


def enable(fe: Frontend, on: int) -> None:
    for index in (0, 1):
        fe.command(Req.SET_VRING_ENABLE, P.encode_vring_state(P.VringState(index, on)))


def serve_in_child(host: FakeHostFd, sock: socket.socket, other: socket.socket) -> tuple[int, int]:
    """A forked Worker serving SOCK with HOST (support.forked); its record: exit code, messages, the
    datapath's header length and the host fd's calls."""
    def record(worker, exit_code: int) -> dict:
        return {"exit": exit_code, "messages": worker.stats().get("messages"),
                "host_hdr_len": worker.datapath.host_hdr_len,
                "calls": [(name, None if name == "apply" else arg, where) for name, arg, where in host.calls]}
    return fork_worker(sock, host, WorkerConfig(), record, close=(other,))


@pytest.mark.parametrize("kind,features,knobs,hdr", [
    # a tap: the acked offloads, the queue detached while the front-end disables the pair, attached again
    ("tap", DEFAULT_FEATURES | CSUM,
     [["set_offload", TUN_F_CSUM], ["set_queue_attached", False], ["set_queue_attached", True]], 12),
    # --packet, no offload acked: the socket drops its vnet header and the datapath follows
    ("packet", DEFAULT_FEATURES,
     [["set_offload", 0], ["set_packet_vnet_hdr", False], ["set_queue_attached", False],
      ["set_queue_attached", True]], 0),
], ids=["tap", "packet"])
def test_the_worker_leaves_the_host_fd_to_the_one_place(kind, features, knobs, hdr):
    host = FakeHostFd.datagram(vnet_hdr_len=12, kind=kind, vnet_hdr_switchable=kind == "packet")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid, rfd = serve_in_child(host, theirs, mine)
    theirs.close()
    host.close()
    with Frontend(mine, features=features) as fe:
        fe.start()
        enable(fe, 0)
        enable(fe, 1)
        fe.stop()
    record = child_record(pid, rfd)
    assert record["exit"] == 0
    calls = record["calls"]
    assert [[name, arg] for name, arg, _ in calls if name != "apply"] == knobs
    assert {where for name, _, where in calls if name != "apply"} == {APPLY}
    applies = [where for name, _, where in calls if name == "apply"]
    assert set(applies) == {ONE_PLACE} and len(applies) == record["messages"]     # once per request
    assert record["host_hdr_len"] == hdr


# -- the negotiated state -> the knobs, request by request (the back-end alone, no loop) -------------------

class RecordingDatapath:
    host_hdr_len = 12

    def __init__(self):
        self.hdr_lens = []

    def set_host_hdr_len(self, n):
        self.hdr_lens.append(n)
        self.host_hdr_len = n

    def set_log_all(self, on):
        pass

    def configure(self, **kw):
        pass

    def stop_ring(self, index):
        return 0


@pytest.fixture
def session():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = FakeHostFd(kind="packet", vnet_hdr_len=12, vnet_hdr_switchable=True)
    backend = Backend(Channel(a), RecordingDatapath(), host, BackendConfig())
    yield backend, host
    a.close()
    b.close()


def send(backend: Backend, req: int, value: int | None = None, index: int | None = None) -> None:
    if index is not None:
        payload = P.encode_vring_state(P.VringState(index, value))
    else:
        payload = b"" if value is None else P.encode_u64(value)
    backend.handle(P.Message(int(req), 1, payload, ()))


def vring_enable(backend: Backend, on: int, rings=(0, 1)) -> None:
    for index in rings:
        send(backend, Req.SET_VRING_ENABLE, on, index)


PROTO = mask(F.F_VERSION_1, F.VHOST_USER_F_PROTOCOL_FEATURES)


def test_disabling_a_pair_never_enabled_leaves_its_queue_attached(session):
    backend, host = session
    send(backend, Req.SET_FEATURES, PROTO)
    vring_enable(backend, 0)
    assert host.knobs() == [("set_offload", 0), ("set_packet_vnet_hdr", False)]


def test_the_queue_follows_the_pair_not_one_ring(session):
    backend, host = session
    send(backend, Req.SET_FEATURES, PROTO)
    vring_enable(backend, 1)
    vring_enable(backend, 0, rings=(0,))        # ring 1 still enabled: the pair is
    assert ("set_queue_attached", False) not in host.knobs()
    vring_enable(backend, 0, rings=(1,))
    vring_enable(backend, 0)                    # again: the queue is detached already, no second ioctl
    assert host.knobs()[-1:] == [("set_queue_attached", False)] \
        and host.knobs().count(("set_queue_attached", False)) == 1


def test_reset_owner_leaves_the_queue_attached(session):
    backend, host = session
    send(backend, Req.SET_FEATURES, PROTO)
    vring_enable(backend, 1)
    send(backend, Req.RESET_OWNER)              # every ring reset (disabled): the front-end is resetting
    assert not any(name == "set_queue_attached" for name, _ in host.knobs())


def test_a_ring_started_without_protocol_features_attaches_a_disabled_pair(session):
    backend, host = session
    send(backend, Req.SET_FEATURES, PROTO)
    vring_enable(backend, 1)
    vring_enable(backend, 0)
    send(backend, Req.SET_FEATURES, bit(F.F_VERSION_1))     # no protocol features: rings enabled at start
    assert host.knobs()[-2:] == [("set_queue_attached", False), ("set_queue_attached", True)]


def test_a_queue_without_the_knob_is_asked_once(session):
    backend, host = session
    host.queue_knob = False                     # a single-queue tap: TUNSETQUEUE answers EINVAL
    send(backend, Req.SET_FEATURES, PROTO)
    for _ in range(3):
        vring_enable(backend, 1)
        vring_enable(backend, 0)
    assert [k for k in host.knobs() if k[0] == "set_queue_attached"] == [("set_queue_attached", False)]


def test_the_packet_header_follows_the_acked_offloads_and_the_datapath_with_it(session):
    backend, host = session
    offload = mask(F.F_VERSION_1, F.NET_F_CSUM)
    send(backend, Req.SET_FEATURES, offload)            # acked: opened with the header, nothing to switch
    send(backend, Req.RESET_OWNER)
    send(backend, Req.SET_FEATURES, bit(F.F_VERSION_1))  # none acked: off
    send(backend, Req.GET_FEATURES)                     # nothing changes: nothing asked
    send(backend, Req.RESET_OWNER)
    send(backend, Req.SET_FEATURES, offload)            # on again
    assert [k for k in host.knobs() if k[0] == "set_packet_vnet_hdr"] == [("set_packet_vnet_hdr", False),
                                                                         ("set_packet_vnet_hdr", True)]
    assert backend.datapath.hdr_lens == [0, 12]


def test_tunsetoffload_waits_for_version_1_and_keeps_the_flags_without_it(session):
    backend, host = session
    send(backend, Req.SET_FEATURES, bit(F.NET_F_CSUM))      # no VERSION_1: the tap is left as it is
    assert not any(name == "set_offload" for name, _ in host.knobs())
    send(backend, Req.SET_FEATURES, mask(F.F_VERSION_1, F.NET_F_CSUM, F.NET_F_GUEST_CSUM))
    send(backend, Req.SET_FEATURES, bit(F.NET_F_CSUM))
    assert [k for k in host.knobs() if k[0] == "set_offload"] == [("set_offload", TUN_F_CSUM)]

import errno

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import Req
from vhostsplice.serve.pairs import should_restart
from vhostsplice.serve.serve_device import ServeDevice, ring_index, ring_payload
from vhostsplice.serve.supervisor import ServeConfig, Supervisor, spread_cpus
from vhostsplice.testing.workers import FakeWorkers


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
    assert should_restart(ServeConfig(tap="t", queues=1, cpus=[], restart=policy).restart, code) is restart


class _Front:
    def __init__(self):
        self.sent = []

    def send(self, request, payload, fds=(), reply=False):
        self.sent.append((request, payload))

    def close(self):
        pass


def _lazy_device(features: int, queues: int = 2):
    """serve's device alone, over a fake worker side (testing/workers.py): what it starts and sends."""
    from vhostsplice.spec import Feature as F, bit
    workers = FakeWorkers(queues)
    dev = ServeDevice(workers, queues=queues, offloads=True, packed=True)
    dev.features, dev.front = features, _Front()
    return dev, workers.started, bit(F.VHOST_USER_F_PROTOCOL_FEATURES)


def _ring_msg(req, ring, num=0):
    if req == Req.SET_VRING_KICK:
        return P.Message(req, 1, P.encode_vring_file(ring, nofd=True))
    return P.Message(req, 1, P.encode_vring_state(P.VringState(ring, num)))


def test_worker_starts_only_when_the_front_end_enables_a_ring_of_its_pair():
    """A pair the driver never enables gets no worker, so no tap queue attached that would swallow flows."""
    dev, started, pf = _lazy_device(features=0)
    dev.features = pf
    for ring in range(4):
        dev.forward_ring(_ring_msg(Req.SET_VRING_NUM, ring, 256))
        dev.forward_ring(_ring_msg(Req.SET_VRING_BASE, ring, 7))
        dev.forward_ring(_ring_msg(Req.SET_VRING_KICK, ring))
    dev.forward_ring(_ring_msg(Req.SET_VRING_ENABLE, 2, 0))
    assert started == []                                    # kicks alone do not enable (protocol features)
    dev.forward_ring(_ring_msg(Req.SET_VRING_ENABLE, 1, 1))
    assert started == [0]
    # GET_VRING_BASE of the never-started pair 1 answers the base the front-end set
    dev.forward_ring(_ring_msg(Req.GET_VRING_BASE, 3))
    assert dev.front.sent[-1] == (Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(3, 7)))
    dev.close()


def test_without_protocol_features_a_kick_enables_the_ring():
    dev, started, _pf = _lazy_device(features=0)
    dev.forward_ring(_ring_msg(Req.SET_VRING_NUM, 3, 256))
    assert started == []
    dev.forward_ring(_ring_msg(Req.SET_VRING_KICK, 3))
    assert started == [1]
    dev.close()


# -- migration requests (serve_device.ServeDevice) with a stand-in worker on a socketpair ----------------
def _memfd(size: int) -> int:
    import os
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


class _StandIn:
    """Pair k's worker: a real child process to kill (`sleep`), and our end of its channel, which a
    thread answers like a worker (one reply per request) unless told to stay silent or to hang up."""

    def __init__(self, sup, k: int, mode: str = "answer"):
        import socket
        import subprocess
        import threading
        from vhostsplice.vhostuser.channel import Channel
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pair = sup.pairs[k]
        self.pair.chan, self.pair.started = Channel(ours), True
        self.pair.proc = subprocess.Popen(["sleep", "60"])
        self.peer, self.got = Channel(theirs), []
        if mode == "hang-up":
            self.peer.close()
        elif mode == "answer":
            threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        import os
        while (msg := self.peer.recv()) is not None:
            self.got.append(msg.request)
            for fd in msg.fds:
                os.close(fd)
            self.peer.send(msg.request, P.encode_u64(0), reply=True)

    def close(self) -> None:
        self.pair.chan.close()
        self.pair.chan = None
        self.pair.proc.kill()
        self.pair.proc.wait()


def _migrating_supervisor():
    """A Supervisor (its device over the real worker side, pairs.Workers) with no template: the
    stand-ins are its workers."""
    from vhostsplice.spec import ProtocolFeature as PF, bit
    sup = Supervisor(_Front(), ServeConfig(tap="t", queues=2, cpus=[]))
    sup.device.front = _Front()
    sup.device.protocol_acked = bit(PF.LOG_SHMFD) | bit(PF.RARP)
    return sup


def _log_msg(fd: int, size: int = 512) -> P.Message:
    return P.Message(Req.SET_LOG_BASE, 1, P.encode_log(P.LogArea(size, 0)), (fd,))


@pytest.mark.parametrize("size, fd_kind", [(0, "memfd"), (4096, "short"), (512, "pipe")])
def test_a_log_any_worker_would_refuse_is_refused_and_never_kept(size, fd_kind):
    """Checked here, not only in the workers: kept, it would be replayed to every new worker, each of
    which would refuse it (71) and be restarted, forever."""
    import os
    sup = _migrating_supervisor()
    r = w = None
    if fd_kind == "pipe":
        r, w = os.pipe()
        fd = r
    else:
        fd = _memfd(100 if fd_kind == "short" else 4096)
    with pytest.raises(ProtocolError):
        sup.device.set_log_base(_log_msg(fd, size))
    with pytest.raises(OSError):
        os.fstat(fd)                                          # closed
    assert Req.SET_LOG_BASE not in sup.device.kept and sup.device.front.sent == []
    if w is not None:
        os.close(w)
    sup.shutdown()


def test_log_goes_to_every_running_worker_and_the_front_end_gets_one_reply():
    sup = _migrating_supervisor()
    workers = [_StandIn(sup, 0), _StandIn(sup, 1)]
    sup.device.set_log_base(_log_msg(_memfd(4096)))
    assert sup.device.front.sent == [(Req.SET_LOG_BASE, P.encode_u64(0))]
    assert [w.got for w in workers] == [[Req.SET_LOG_BASE], [Req.SET_LOG_BASE]]
    sup.device.barrier()                                             # the replies stayed in step
    assert [w.got[-1] for w in workers] == [Req.GET_FEATURES, Req.GET_FEATURES]
    for w in workers:
        w.close()
    sup.shutdown()


def test_a_worker_gone_during_set_log_base_does_not_end_the_device():
    sup = _migrating_supervisor()
    alive, gone = _StandIn(sup, 0), _StandIn(sup, 1, mode="hang-up")
    sup.device.set_log_base(_log_msg(_memfd(4096)))           # no ProtocolError: pair 1 gets it in replay
    assert sup.device.front.sent == [(Req.SET_LOG_BASE, P.encode_u64(0))] and alive.got == [Req.SET_LOG_BASE]
    assert Req.SET_LOG_BASE in sup.device.kept
    alive.close()
    gone.close()
    sup.shutdown()


def test_a_worker_that_does_not_answer_is_killed_not_waited_for(monkeypatch):
    from vhostsplice.serve import pairs
    monkeypatch.setattr(pairs, "WORKER_REPLY_TIMEOUT", 0.2)
    sup = _migrating_supervisor()
    silent = _StandIn(sup, 0, mode="silent")
    sup.device.barrier()
    assert silent.pair.proc.wait(5) == -9                     # SIGKILLed, by its PID
    silent.close()
    sup.shutdown()


def test_reset_owner_forgets_the_log_and_the_features():
    import os
    sup = _migrating_supervisor()
    sup.device.features = 1 << 26
    fd = _memfd(4096)
    sup.device.set_log_base(_log_msg(fd))
    kept = sup.device.kept[Req.SET_LOG_BASE][1][0]
    sup.device.broadcast(P.Message(Req.RESET_OWNER, 1, b""))
    assert Req.SET_LOG_BASE not in sup.device.kept and sup.device.features == 0
    with pytest.raises(OSError):
        os.fstat(kept)
    sup.shutdown()


def test_serve_offers_offloads_only_when_its_workers_do():
    from vhostsplice.device.features import OFFLOAD_FEATURES
    dev, _started, _pf = _lazy_device(features=0)
    assert dev.offered() & OFFLOAD_FEATURES == OFFLOAD_FEATURES
    dev.offloads = False                                      # serve's config.offloads, as run_supervisor sets it
    assert dev.offered() & OFFLOAD_FEATURES == 0
    dev.close()


def test_a_started_worker_is_told_everything_in_protocol_order():
    """replay, on the device alone: what the device kept (owner, protocol features, features, the memory
    table as it stands, the dirty log), then the pair's own ring requests, before any of its rings runs."""
    import os
    from vhostsplice.spec import Feature as F, ProtocolFeature as PF, bit
    dev, started, pf = _lazy_device(features=0)
    mb = 1 << 20
    mem = _memfd(2 * mb)
    regions = [P.MemRegion(gpa=k * mb, size=mb, uva=0x7F00_0000_0000 + k * mb, mmap_offset=k * mb) for k in (0, 1)]
    messages = [
        P.Message(Req.SET_PROTOCOL_FEATURES, 1, P.encode_u64(bit(PF.CONFIGURE_MEM_SLOTS) | bit(PF.LOG_SHMFD))),
        P.Message(Req.SET_OWNER, 1, b""),
        P.Message(Req.SET_FEATURES, 1, P.encode_u64(pf | bit(F.F_VERSION_1))),
        P.Message(Req.SET_MEM_TABLE, 1, P.encode_mem_table(P.MemTable(regions[:1])), (os.dup(mem),)),
        P.Message(Req.ADD_MEM_REG, 1, P.encode_mem_reg(regions[1]), (os.dup(mem),)),
        P.Message(Req.SET_LOG_BASE, 1, P.encode_log(P.LogArea(512, 0)), (_memfd(4096),)),
        _ring_msg(Req.SET_VRING_NUM, 2, 256), _ring_msg(Req.SET_VRING_BASE, 2, 7), _ring_msg(Req.SET_VRING_KICK, 2),
        _ring_msg(Req.SET_VRING_NUM, 3, 256),
    ]
    for msg in messages:
        dev.handle(msg)
    assert started == []
    before = len(dev.workers.sent)
    dev.handle(_ring_msg(Req.SET_VRING_ENABLE, 2, 1))
    assert started == [1]
    assert dev.workers.sent[before:] == [(1, req) for req in (
        Req.SET_OWNER, Req.SET_PROTOCOL_FEATURES, Req.SET_FEATURES, Req.SET_MEM_TABLE, Req.ADD_MEM_REG,
        Req.SET_LOG_BASE, Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.SET_VRING_KICK, Req.SET_VRING_ENABLE,
        Req.SET_VRING_NUM)]
    dev.close()
    os.close(mem)

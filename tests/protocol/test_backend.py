"""The handler table against a recording datapath: ordering, fd counts, replies, ring start rules."""
import errno
import os
import socket

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.device.backend import Backend, BackendConfig
from vhostsplice.device.features import BASE_FEATURES
from vhostsplice.vhostuser.channel import Channel
from vhostsplice.errors import FeatureError, ProtocolError
from vhostsplice.spec import TUN_F_CSUM, TUN_F_TSO4, TUN_F_USO4, TUN_F_USO6, Feature as F, ProtocolFeature as PF, Req, \
    bit, mask
from vhostsplice.testing.hostfd import FakeHostFd


class RecordingDatapath:
    def __init__(self, host_hdr_len=0):
        self.host_hdr_len = host_hdr_len    # as a Datapath has it: the header the host fd carries
        self.calls = []
        self.running = set()
        self.log_calls = []     # dirty-log calls, kept apart so the ring-order assertions stay exact
        self.log_all = False
        self.log_buf = None
        self.ring_log = {}

    def set_log_all(self, on):
        self.log_calls.append(("log_all", on))
        self.log_all = on

    def set_log(self, buf):
        self.log_calls.append(("log", None if buf is None else len(buf)))
        self.log_buf = buf

    def set_ring_log(self, index, enabled, log_addr):
        self.log_calls.append(("ring_log", index, enabled, log_addr))
        self.ring_log[index] = (enabled, log_addr)

    def configure(self, **kw):
        self.calls.append(("configure", kw))

    def set_memory(self, regions):
        self.calls.append(("set_memory", len(regions)))

    def start_ring(self, index, **kw):
        self.calls.append(("start", index))
        self.running.add(index)
        return 0

    def stop_ring(self, index):
        self.calls.append(("stop", index))
        self.running.discard(index)
        return 7

    def set_call_fd(self, index, fd):
        self.calls.append(("call", index))

    def set_err_fd(self, index, fd):
        self.calls.append(("err", index))


@pytest.fixture
def env():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dp, host = RecordingDatapath(), FakeHostFd()
    backend = Backend(Channel(a), dp, host, BackendConfig())
    memfd = os.memfd_create("g")
    os.ftruncate(memfd, 1 << 20)
    yield backend, Channel(b), dp, host, memfd
    backend.close()
    a.close()
    b.close()
    os.close(memfd)


def send(backend, req, payload=b"", fds=(), need_reply=False):
    flags = 1 | (8 if need_reply else 0)
    backend.handle(P.Message(req, flags, payload, tuple(os.dup(fd) for fd in fds)))


def setup_ring(backend, index, efd, enable=True):
    send(backend, Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(index, 256)))
    send(backend, Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(index, 0, 0x1000, 0x3000, 0x2000, 0)))
    send(backend, Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(index, 0)))
    send(backend, Req.SET_VRING_KICK, P.encode_vring_file(index), fds=(efd,))
    if enable:
        send(backend, Req.SET_VRING_ENABLE, P.encode_vring_state(P.VringState(index, 1)))


def mem_table(memfd):
    return P.encode_mem_table(P.MemTable((P.MemRegion(0, 1 << 20, 0x7F0000000000, 0),))), (memfd,)


def test_get_features_reply_offers_version_1(env):
    backend, fe, *_ = env
    send(backend, Req.GET_FEATURES)
    reply = fe.recv()
    assert reply.request == Req.GET_FEATURES and reply.flags & 4
    assert P.decode_u64(reply) & bit(F.F_VERSION_1)


def test_virtio_user_order_starts_rings_only_when_enabled(env):
    backend, fe, dp, host, memfd = env
    acked = mask(F.F_VERSION_1, F.NET_F_MRG_RXBUF, F.VHOST_USER_F_PROTOCOL_FEATURES, F.NET_F_GUEST_CSUM,
                 F.NET_F_GUEST_TSO4)
    send(backend, Req.SET_OWNER)
    send(backend, Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.REPLY_ACK)))
    send(backend, Req.SET_FEATURES, P.encode_u64(acked))
    assert host.offload == TUN_F_CSUM | TUN_F_TSO4        # exactly what the driver acked
    conf = [kw for name, kw in dp.calls if name == "configure"][-1]
    assert conf["mrg_rxbuf"] and not conf["event_idx"] and conf["rx_max"] > 65536
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd), need_reply=True)
    assert P.decode_u64(fe.recv()) == 0                   # REPLY_ACK honoured
    kick = os.eventfd(0)
    setup_ring(backend, 0, kick, enable=False)
    assert ("start", 0) not in dp.calls                   # protocol features: disabled until ENABLE
    send(backend, Req.SET_VRING_ENABLE, P.encode_vring_state(P.VringState(0, 1)))
    assert ("start", 0) in dp.calls and backend.rings_running
    send(backend, Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(0, 0)))
    assert P.decode_vring_state(fe.recv()) == P.VringState(0, 7)
    assert not backend.rings_running
    os.close(kick)


def test_without_protocol_features_a_kicked_ring_runs(env):
    backend, fe, dp, host, memfd = env
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd))
    kick = os.eventfd(0)
    setup_ring(backend, 1, kick, enable=False)
    assert ("start", 1) in dp.calls
    os.close(kick)


def test_ring_without_version_1_is_enotsup(env):
    backend, fe, dp, host, memfd = env
    send(backend, Req.SET_FEATURES, P.encode_u64(0))
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd))
    kick = os.eventfd(0)
    with pytest.raises(FeatureError) as info:
        setup_ring(backend, 0, kick, enable=False)
    assert info.value.errno == errno.ENOTSUP
    os.close(kick)


def test_acking_unoffered_features_is_eproto(env):
    backend, *_ = env
    with pytest.raises(ProtocolError, match="never offered"):
        send(backend, Req.SET_FEATURES, P.encode_u64(BASE_FEATURES | bit(F.F_ACCESS_PLATFORM)))


@pytest.mark.parametrize("req", [Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.SET_VRING_ENABLE, Req.GET_VRING_BASE])
def test_ring_index_outside_the_pair_is_eproto(env, req):
    backend, *_ = env
    with pytest.raises(ProtocolError, match="one queue pair"):
        send(backend, req, P.encode_vring_state(P.VringState(2, 1)))


def test_unknown_request_is_eproto_and_closes_its_fds(env):
    backend, *_ = env
    r, w = os.pipe()
    dup = os.dup(r)
    with pytest.raises(ProtocolError, match="unsupported"):
        backend.handle(P.Message(999, 1, b"", (dup,)))
    with pytest.raises(OSError):
        os.fstat(dup)                                       # closed, not leaked
    os.close(r)
    os.close(w)


def test_wrong_fd_count_is_eproto_and_closes_fds(env):
    backend, fe, dp, host, memfd = env
    extra = os.dup(memfd)
    with pytest.raises(ProtocolError, match="file descriptors"):
        backend.handle(P.Message(Req.SET_OWNER, 1, b"", (extra,)))
    with pytest.raises(OSError):
        os.fstat(extra)
    payload, _ = mem_table(memfd)
    with pytest.raises(ProtocolError, match="0 file descriptors, expected 1"):
        backend.handle(P.Message(Req.SET_MEM_TABLE, 1, payload, ()))


def test_kick_with_nofd_flag_takes_no_fd(env):
    backend, *_ = env
    send(backend, Req.SET_VRING_KICK, P.encode_vring_file(0, nofd=True))
    assert backend.rings[0].kicked and backend.rings[0].kick_fd is None


def test_status_round_trip_and_bounds(env):
    backend, fe, *_ = env
    send(backend, Req.SET_STATUS, P.encode_u64(0xF))
    send(backend, Req.GET_STATUS)
    assert P.decode_u64(fe.recv()) == 0xF
    with pytest.raises(ProtocolError):
        send(backend, Req.SET_STATUS, P.encode_u64(0x100))


def test_queue_num_is_one_pair(env):
    backend, fe, *_ = env
    send(backend, Req.GET_QUEUE_NUM)
    assert P.decode_u64(fe.recv()) == 1


def test_call_fd_replaced_while_running_reaches_datapath(env):
    backend, fe, dp, host, memfd = env
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd))
    kick, call = os.eventfd(0), os.eventfd(0)
    setup_ring(backend, 0, kick, enable=False)
    send(backend, Req.SET_VRING_CALL, P.encode_vring_file(0), fds=(call,))
    assert ("call", 0) in dp.calls
    os.close(kick)
    os.close(call)


def _running_ring(backend, memfd):
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd))
    kick = os.eventfd(0)
    setup_ring(backend, 0, kick)
    os.close(kick)
    assert backend.rings[0].running


def test_set_vring_call_on_a_running_ring_signals_the_new_fd_once(env):
    """After a reconnect the front-end may have missed a call: the new call fd is signalled once."""
    backend, fe, dp, host, memfd = env
    _running_ring(backend, memfd)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    send(backend, Req.SET_VRING_CALL, P.encode_vring_file(0), fds=(call,))
    assert os.eventfd_read(call) == 1
    with pytest.raises(BlockingIOError):       # once, not per message handled after it
        os.eventfd_read(call)
    send(backend, Req.GET_FEATURES)
    fe.recv()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)
    os.close(call)


def test_set_vring_call_before_the_ring_runs_signals_nothing(env):
    backend, fe, dp, host, memfd = env
    call = os.eventfd(0, os.EFD_NONBLOCK)
    send(backend, Req.SET_VRING_CALL, P.encode_vring_file(0), fds=(call,))
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)
    os.close(call)


def test_set_vring_call_with_a_pipe_never_blocks_or_writes(env):
    """A hostile front-end's full pipe as call fd: no write (it would block the worker), no crash."""
    backend, fe, dp, host, memfd = env
    _running_ring(backend, memfd)
    r, w = os.pipe()
    send(backend, Req.SET_VRING_CALL, P.encode_vring_file(0), fds=(w,))
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError):
        os.read(r, 8)
    os.close(r)
    os.close(w)


# -- dirty logging (live migration) -----------------------------------------------------------------------
def log_fd(size=4096):
    fd = os.memfd_create("log")
    os.ftruncate(fd, size)
    return fd


def test_run_and_serve_offer_log_all_and_log_shmfd():
    from vhostsplice.device import features as offer
    from vhostsplice.serve import serve_device
    assert offer.LOG_FEATURES == bit(F.VHOST_F_LOG_ALL) == 1 << 26
    assert offer.RUN_PROTOCOL_FEATURES & bit(PF.LOG_SHMFD)
    assert serve_device.PROTOCOL_FEATURES & bit(PF.LOG_SHMFD)
    assert not BASE_FEATURES & bit(F.VHOST_F_LOG_ALL)            # only where logging is wired up


def test_offers_seen_by_a_front_end(env):
    backend, fe, *_ = env
    send(backend, Req.GET_FEATURES)
    assert P.decode_u64(fe.recv()) & bit(F.VHOST_F_LOG_ALL)
    send(backend, Req.GET_PROTOCOL_FEATURES)
    assert P.decode_u64(fe.recv()) & bit(PF.LOG_SHMFD)


def test_guest_announce_is_offered_and_accepted_by_run_and_serve(env):
    """QEMU offers GUEST_ANNOUNCE to the guest only if the back-end does; acking it changes nothing here."""
    from vhostsplice.serve import serve_device
    backend, fe, *_ = env
    send(backend, Req.GET_FEATURES)
    assert P.decode_u64(fe.recv()) & bit(F.NET_F_GUEST_ANNOUNCE) == 1 << 21
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1) | bit(F.NET_F_GUEST_ANNOUNCE)))
    assert backend.acked & bit(F.NET_F_GUEST_ANNOUNCE)
    from vhostsplice.serve.supervisor import ServeConfig
    config = ServeConfig(tap="t", queues=1, cpus=[])
    assert serve_device.device_offered(offloads=config.offloads, packed=config.packed) \
        & bit(F.NET_F_GUEST_ANNOUNCE)                                                     # what serve offers


@pytest.mark.parametrize("reply_ack,need_reply", [(False, False), (True, False), (True, True), (False, True)])
def test_log_base_gets_exactly_one_reply(env, reply_ack, need_reply):
    """QEMU 7.2 reads one reply (flags exactly 0x5) whenever LOG_SHMFD is negotiated; never a second ack."""
    backend, fe, dp, _host, _memfd = env
    send(backend, Req.SET_PROTOCOL_FEATURES,
         P.encode_u64(bit(PF.LOG_SHMFD) | (bit(PF.REPLY_ACK) if reply_ack else 0)))
    fd = log_fd()
    send(backend, Req.SET_LOG_BASE, P.encode_log(P.LogArea(4096, 0)), fds=(fd,), need_reply=need_reply)
    os.close(fd)
    reply = fe.recv()
    assert (reply.request, reply.flags, reply.payload) == (Req.SET_LOG_BASE, 5, P.encode_u64(0))
    send(backend, Req.GET_STATUS)                                 # the next reply is GET_STATUS's
    assert fe.recv().request == Req.GET_STATUS
    assert dp.log_calls[-1] == ("log", 4096)


def running_pair(backend, dp, memfd, kicks, features=bit(F.F_VERSION_1)):
    send(backend, Req.SET_FEATURES, P.encode_u64(features))
    send(backend, Req.SET_MEM_TABLE, *mem_table(memfd))
    for i in (0, 1):
        setup_ring(backend, i, kicks[i], enable=False)
    assert dp.running == {0, 1}
    dp.calls.clear()


def test_migration_start_keeps_rings_running(env):
    """QEMU's sequence on a running device: SET_LOG_BASE, SET_FEATURES + LOG_ALL, SET_VRING_ADDR flags=1
    (same addresses) per ring: no stop, no start, no reconfiguration; the end reverses it."""
    backend, fe, dp, host, memfd = env
    kicks = [os.eventfd(0), os.eventfd(0)]
    running_pair(backend, dp, memfd, kicks)
    send(backend, Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.LOG_SHMFD)))
    fd = log_fd()
    send(backend, Req.SET_LOG_BASE, P.encode_log(P.LogArea(4096, 0)), fds=(fd,))
    os.close(fd)
    fe.recv()
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1) | bit(F.VHOST_F_LOG_ALL)))
    for i in (0, 1):
        send(backend, Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(i, 1, 0x1000, 0x3000, 0x2000, 0x3000)))
    assert dp.calls == [] and dp.running == {0, 1}
    assert dp.log_all and dp.ring_log == {0: (True, 0x3000), 1: (True, 0x3000)}
    send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1)))
    send(backend, Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(0, 0, 0x1000, 0x3000, 0x2000, 0x3000)))
    assert dp.calls == [] and not dp.log_all and dp.ring_log[0] == (False, 0x3000)
    with pytest.raises(ProtocolError, match="while rings were running"):
        send(backend, Req.SET_FEATURES, P.encode_u64(bit(F.F_VERSION_1) | bit(F.NET_F_MRG_RXBUF)))
    for k in kicks:
        os.close(k)


def test_vring_addr_with_new_addresses_restarts_the_ring(env):
    backend, fe, dp, host, memfd = env
    kicks = [os.eventfd(0), os.eventfd(0)]
    running_pair(backend, dp, memfd, kicks)
    send(backend, Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(1, 1, 0x5000, 0x7000, 0x6000, 0x7000)))
    assert dp.calls == [("stop", 1), ("start", 1)] and dp.ring_log[1] == (True, 0x7000)
    for k in kicks:
        os.close(k)


def test_log_base_without_log_shmfd_is_eproto(env):
    backend, *_ = env
    fd = log_fd()
    with pytest.raises(ProtocolError, match="LOG_SHMFD"):
        send(backend, Req.SET_LOG_BASE, P.encode_log(P.LogArea(4096, 0)), fds=(fd,))
    os.close(fd)


# -- SEND_RARP -----------------------------------------------------------------------------------------------
GUEST_MAC = bytes.fromhex("525400a1b2c3")


@pytest.fixture
def rarp_env(request):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host = FakeHostFd.datagram(**getattr(request, "param", {}))   # what the back-end writes: host.frames()
    backend = Backend(Channel(a), RecordingDatapath(host_hdr_len=host.vnet_hdr_len), host, BackendConfig())
    send(backend, Req.SET_PROTOCOL_FEATURES, P.encode_u64(bit(PF.RARP) | bit(PF.REPLY_ACK)))
    yield backend, Channel(b), host
    backend.close()
    host.close()
    a.close()
    b.close()


def expected_rarp(mac):
    """RFC 903 on Ethernet, as QEMU's qemu_announce_self sends it, built field by field."""
    return (b"\xff" * 6 + mac + b"\x80\x35"            # broadcast, source = guest, ethertype RARP
            + b"\x00\x01" + b"\x08\x00" + b"\x06" + b"\x04" + b"\x00\x03"   # Ethernet, IPv4, 6, 4, request-reverse
            + mac + b"\x00" * 4 + mac + b"\x00" * 4    # sha, spa, tha, tpa
            + b"\x00" * 18)                             # padding to 60 bytes


def test_run_and_serve_offer_rarp(env):
    from vhostsplice.device import features as offer
    from vhostsplice.serve import serve_device
    assert offer.RUN_PROTOCOL_FEATURES & bit(PF.RARP)
    assert not offer.PROTOCOL_FEATURES & bit(PF.RARP)
    assert serve_device.PROTOCOL_FEATURES & bit(PF.RARP)            # what `serve` offers
    backend, fe, *_ = env
    send(backend, Req.GET_PROTOCOL_FEATURES)
    assert P.decode_u64(fe.recv()) & bit(PF.RARP)


@pytest.mark.parametrize("rarp_env", [{"vnet_hdr_len": 12}, {"vnet_hdr_len": 10}, {"vnet_hdr_len": 0}],
                         indirect=True)
def test_send_rarp_writes_one_announce_behind_the_host_vnet_header(rarp_env):
    backend, fe, host = rarp_env
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))
    frames = host.frames()
    assert frames == [bytes(host.vnet_hdr_len) + expected_rarp(GUEST_MAC)]
    assert len(expected_rarp(GUEST_MAC)) == 60
    assert backend.rarp == {"sent": 1, "dropped": 0, "skipped": 0}
    fe.sock.setblocking(False)
    with pytest.raises(BlockingIOError):                # no reply, no ack: SEND_RARP has none
        fe.sock.recv(1)


def test_send_rarp_uses_the_header_length_the_datapath_says_the_fd_carries_now(rarp_env):
    backend, _fe, host = rarp_env
    backend.datapath.host_hdr_len = 0                   # e.g. a --packet socket with its vnet header off
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))
    assert host.frames() == [expected_rarp(GUEST_MAC)]


def test_send_rarp_ignores_the_two_bytes_after_the_mac_and_works_without_rings(rarp_env):
    backend, _fe, host = rarp_env
    assert not backend.rings_running
    for _ in range(5):                                  # QEMU sends up to five rounds
        send(backend, Req.SEND_RARP, GUEST_MAC + b"\xaa\xbb")
    assert host.frames() == [bytes(12) + expected_rarp(GUEST_MAC)] * 5
    assert backend.rarp["sent"] == 5


@pytest.mark.parametrize("size", [0, 6, 7, 9, 16])
def test_send_rarp_payload_other_than_8_bytes_is_eproto(rarp_env, size):
    backend, _fe, host = rarp_env
    with pytest.raises(ProtocolError, match="expected 8") as exc:
        send(backend, Req.SEND_RARP, (GUEST_MAC * 3)[:size])
    assert exc.value.errno == errno.EPROTO
    assert host.frames() == []


def test_send_rarp_without_the_protocol_feature_is_eproto(env):
    backend, _fe, *_ = env
    with pytest.raises(ProtocolError, match="RARP"):
        send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))


def test_send_rarp_with_an_fd_is_eproto_and_closes_it(rarp_env):
    backend, _fe, host = rarp_env
    fd = os.eventfd(0)
    dup = os.dup(fd)
    with pytest.raises(ProtocolError, match="file descriptors"):
        backend.handle(P.Message(Req.SEND_RARP, 1, P.encode_rarp_mac(GUEST_MAC), (dup,)))
    with pytest.raises(OSError):
        os.fstat(dup)
    os.close(fd)
    assert host.frames() == []


@pytest.mark.parametrize("mac", ["000000000000", "ffffffffffff", "01005e000001", "33330000000a"])
def test_send_rarp_with_a_non_unicast_mac_sends_nothing_and_carries_on(rarp_env, mac):
    backend, _fe, host = rarp_env
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(bytes.fromhex(mac)))
    assert host.frames() == []
    assert backend.rarp == {"sent": 0, "dropped": 0, "skipped": 1}
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))           # the connection is still fine
    assert len(host.frames()) == 1


@pytest.mark.parametrize("rarp_env", [{"vnet_hdr_len": 0, "stream": True}], indirect=True)
def test_send_rarp_on_a_stream_host_fd_is_skipped(rarp_env):
    backend, _fe, host = rarp_env
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))
    assert host.frames() == []
    assert backend.rarp == {"sent": 0, "dropped": 0, "skipped": 1}


def test_send_rarp_to_a_failing_host_fd_is_a_counted_drop(rarp_env):
    backend, _fe, host = rarp_env
    host.peer.close()                                   # the write now fails (ECONNREFUSED)
    send(backend, Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))
    assert backend.rarp == {"sent": 0, "dropped": 1, "skipped": 0}


USO_ACK = mask(F.F_VERSION_1, F.NET_F_CSUM, F.NET_F_GUEST_CSUM, F.NET_F_HOST_USO, F.NET_F_GUEST_USO4,
               F.NET_F_GUEST_USO6)


@pytest.mark.parametrize("uso", [True, False])
def test_uso_is_offered_only_where_the_host_fd_takes_it(uso):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = Backend(Channel(a), RecordingDatapath(), FakeHostFd(), BackendConfig(uso=uso))
    uso_bits = mask(F.NET_F_GUEST_USO4, F.NET_F_GUEST_USO6, F.NET_F_HOST_USO)
    assert backend.offered & uso_bits == (uso_bits if uso else 0)
    if not uso:     # never offered: acking them is the front-end's violation
        with pytest.raises(ProtocolError, match="never offered"):
            send(backend, Req.SET_FEATURES, P.encode_u64(USO_ACK))
    backend.close()
    a.close()
    b.close()


def test_acked_uso_reaches_the_tap_and_sizes_rx_for_gso():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dp, host = RecordingDatapath(), FakeHostFd()
    backend = Backend(Channel(a), dp, host, BackendConfig(uso=True))
    send(backend, Req.SET_FEATURES, P.encode_u64(USO_ACK))
    assert host.offload == TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6
    assert [kw for name, kw in dp.calls if name == "configure"][-1]["rx_max"] > 65536
    with pytest.raises(ProtocolError, match="GUEST_USO4 without NET_F_GUEST_CSUM"):
        send(backend, Req.SET_FEATURES, P.encode_u64(USO_ACK & ~bit(F.NET_F_GUEST_CSUM)))
    backend.close()
    a.close()
    b.close()

"""`vhostsplice run --packet IFNAME`: an AF_PACKET socket on one end of a veth pair, in a private netns.

The test's own AF_PACKET socket on the other end plays the network. Root only.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import time

import pytest

from support.netns import entered_netns
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, bit, mask
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, tap_socket, uso_frame, uso_header

pytestmark = pytest.mark.root
DEV, PEER = "vshA", "vshB"
CSUM = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM)
SRC_IP, PEER_IP = "10.77.0.1", "10.77.0.2"


class PacketWorker(WorkerProcess):
    """`vhostsplice run --packet DEV`."""

    def __init__(self, workdir: str, *extra: str, name: str = "w"):
        super().__init__(workdir, "", *extra, name=name, host=("--packet", DEV))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth():
    with entered_netns("vsh") as ns:
        ip("link", "add", DEV, "type", "veth", "peer", "name", PEER)
        ip("link", "set", DEV, "up")
        ip("link", "set", PEER, "up")
        yield ns


@pytest.fixture
def make_worker(veth, tmp_path):
    made = []

    def make(*extra: str) -> PacketWorker:
        made.append(PacketWorker(str(tmp_path), *extra, name=f"w{len(made)}"))
        made[-1].wait_listening()
        return made[-1]

    yield make
    for w in made:
        w.kill()


def frames(mac: int, count: int, size: int) -> list[bytes]:
    return [demo_frame(i, size, src=bytes([2, 0, 0, 0, 0, mac])) for i in range(count)]


@pytest.mark.parametrize("extra,features,hdr", [
    ((), DEFAULT_FEATURES | CSUM, 12),          # offloads offered and acked: the socket carries the header
    ((), DEFAULT_FEATURES, 0),                  # offered, none acked: PACKET_VNET_HDR turned off again
    (("--no-offloads",), DEFAULT_FEATURES | CSUM, 0),   # never offered: opened without the header
], ids=["acked", "not-acked", "not-offered"])
def test_frames_both_ways_over_veth(make_worker, extra, features, hdr):
    w = make_worker(*extra)
    net = tap_socket(PEER)
    fe = Frontend.connect(w.sock, features=features).start()
    assert bool(fe.offered & bit(F.NET_F_CSUM)) == (not extra)
    assert bool(fe.acked & CSUM) == bool(hdr)
    sent = frames(0x1, 30, 1514)
    fe.send(sent)
    assert len(fe.wait_used(fe.tx, 30)) == 30
    assert collect(net, 30) == sent                  # byte-exact: no header bytes added or eaten
    back = frames(0x9, 30, 300)
    fe.post_rx(64, 2048)
    for f in back:
        net.send(f)
    got = fe.receive(30, header=True)
    assert [g[12:] for g in got] == back
    assert all(g[1] == 0 for g in got)               # gso_type NONE for frames this small
    if not hdr:
        assert all(g[:10] == bytes(10) for g in got)  # no header from the socket: written as zeros
    assert all(g[10:12] == b"\x01\x00" for g in got)
    fe.stop()
    fe.close()
    code, stats = w.wait()
    assert code == 0, w.stderr
    # our own transmissions are not read back (PACKET_IGNORE_OUTGOING): RX saw only the 30 from the peer
    assert stats["rings"]["rx"]["packets"] == 30 and stats["rings"]["tx"]["packets"] == 30
    io = stats["host"].pop("io")                     # the packet socket in io_uring batches
    assert stats["host"] == {"kind": "packet", "name": DEV, "vnet_hdr_len": hdr}
    # each frame read by a batch's SQE or by a trickle's readv (the trickle rule: how many of each depends
    # on how the 30 arrived)
    assert io["path"] == "io_uring" and io["tx_sqes"] >= 30 and io["rx_sqes"] + io["trickles"] >= 30, io


def _csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_frame(dst_mac: bytes, payload: bytes, dport: int) -> bytes:
    """Ethernet + IPv4 (checksum complete) + UDP whose checksum field holds only the pseudo-header sum,
    as a driver leaves it for checksum offload (VIRTIO_NET_HDR_F_NEEDS_CSUM). As a full checksum it is
    wrong, so a receiver that verifies it drops the datagram."""
    src, dst = socket.inet_aton(SRC_IP), socket.inet_aton(PEER_IP)
    ulen = 8 + len(payload)
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", ~_csum16(ip_hdr) & 0xFFFF) + ip_hdr[12:]
    pseudo = _csum16(src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, ulen))
    assert pseudo not in (0, 0xFFFF)
    udp = struct.pack("!HHHH", 40000, dport, ulen, pseudo) + payload
    return dst_mac + b"\x02\x00\x00\x00\x00\x07" + b"\x08\x00" + ip_hdr + udp


def test_checksum_offload_reaches_the_peer(make_worker):
    """Offloads acked: a guest frame with a partial UDP checksum and NEEDS_CSUM crosses with its vnet
    header, so the peer's stack takes it; the same bytes without NEEDS_CSUM are a bad checksum, dropped."""
    ip("addr", "add", f"{PEER_IP}/24", "dev", PEER)
    with tap_socket(PEER) as probe:
        mac = probe.getsockname()[4]                 # sll_addr: the peer's MAC (sysfs shows the old netns)
    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rcv.bind((PEER_IP, 0))
    rcv.settimeout(5)
    w = make_worker()
    fe = Frontend.connect(w.sock, features=DEFAULT_FEATURES | CSUM).start()
    assert fe.acked & CSUM == CSUM
    frame = udp_frame(mac, b"offloaded checksum", rcv.getsockname()[1])
    needs_csum = struct.pack("<BBHHHHH", 1, 0, 0, 0, 14 + 20, 6, 0)     # flags, gso, hdr/gso size, start, offset
    fe.send([frame], hdr=bytes(12))                  # no NEEDS_CSUM: the partial sum is a bad checksum
    fe.send([frame], hdr=needs_csum)
    fe.wait_used(fe.tx, 2)
    assert rcv.recv(100) == b"offloaded checksum"
    rcv.settimeout(0.5)
    with pytest.raises(socket.timeout):              # exactly one arrived: the one without offload was dropped
        rcv.recv(100)
    rcv.close()
    fe.stop()
    fe.close()
    code, stats = w.wait()
    assert code == 0, w.stderr
    assert stats["host"]["vnet_hdr_len"] == 12 and stats["rings"]["tx"]["packets"] == 2


def test_uso_frame_reaches_the_peer_as_segments(make_worker):
    """Linux >= 6.2: USO is offered on a packet socket with a vnet header, and a GSO_UDP_L4 frame from
    the guest crosses (packet_snd: virtio_net_hdr_to_skb) to arrive at the peer as gso_size datagrams."""
    uso = CSUM | mask(F.NET_F_HOST_USO, F.NET_F_GUEST_USO4, F.NET_F_GUEST_USO6)
    ip("addr", "add", f"{PEER_IP}/24", "dev", PEER)
    with tap_socket(PEER) as probe:
        mac = probe.getsockname()[4]
    rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rcv.bind((PEER_IP, 0))
    rcv.settimeout(5)
    w = make_worker()
    fe = Frontend.connect(w.sock, features=DEFAULT_FEATURES | uso).start()
    assert fe.acked & uso == uso
    payload = bytes(i & 0xFF for i in range(2500))
    frame = uso_frame((b"\x02\x00\x00\x00\x00\x07", mac), (SRC_IP, PEER_IP), (40002, rcv.getsockname()[1]),
                      payload)
    fe.send([frame], hdr=uso_header(1000))
    got = [rcv.recv(65536) for _ in range(3)]
    assert [len(g) for g in got] == [1000, 1000, 500] and b"".join(got) == payload
    rcv.close()
    fe.stop()
    fe.close()
    assert w.wait()[0] == 0, w.stderr


def test_interface_down_is_counted_then_up_serves_again(make_worker):
    w = make_worker()
    net = tap_socket(PEER)
    fe = Frontend.connect(w.sock).start()
    ip("link", "set", DEV, "down")
    fe.send(frames(0x1, 3, 100))
    assert [n for _h, n in fe.wait_used(fe.tx, 3)] == [0, 0, 0]
    ip("link", "set", DEV, "up")
    sent = frames(0x2, 3, 100)
    deadline = time.monotonic() + 10       # the veth carrier comes back asynchronously
    got: list[bytes] = []
    while not got and time.monotonic() < deadline:
        fe.send(sent[:1])
        fe.wait_used(fe.tx, 1)
        got = collect(net, 1, timeout=0.2)
    assert got == sent[:1]
    assert w.proc.poll() is None
    fe.stop()
    fe.close()
    code, stats = w.wait()
    assert code == 0 and stats["rings"]["tx"]["drops_hostfd"] >= 3


def test_interface_deleted_ends_worker_with_ebadfd(make_worker):
    w = make_worker()
    fe = Frontend.connect(w.sock).start()      # RX has no buffers: only EPOLLERR can tell
    ip("link", "del", DEV)
    code, stats = w.wait(timeout=10)
    fe.close()
    assert code == errno.EBADFD, w.stderr
    assert stats["errno"] == "EBADFD" and "deleted" in stats["reason"]


def test_missing_interface_is_enodev(veth):
    res = subprocess.run([*self_argv(), "run", "--socket-path", "/nonexistent/w.sock", "--packet", "vshnone"],
                         capture_output=True, text=True, env=self_env(), timeout=60)
    assert res.returncode == errno.ENODEV, res.stderr
    assert "ENODEV" in res.stderr


def test_inherited_packet_socket_is_detected(veth, tmp_path):
    from vhostsplice.host.hostfd_inspect import inspect_fd
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((DEV, 3))
    s.setsockopt(263, 15, 1)                   # SOL_PACKET, PACKET_VNET_HDR
    try:
        host = inspect_fd(os.dup(s.fileno()))
        assert (host.kind, host.name, host.vnet_hdr_len, host.offloads_ok) == ("packet", DEV, 10, True)
        host.close()
    finally:
        s.close()


def test_packet_vnet_header_switches_off_and_on(veth):
    """What the worker does after each SET_FEATURES: the bound socket's header goes off and on again
    (the kernel refuses this only once a PACKET_MMAP ring exists), and the core's header length follows."""
    from vhostsplice.device import datapath as dp
    from vhostsplice.errors import ConfigError
    from vhostsplice.host.tun import PACKET_VNET_HDR, SOL_PACKET
    from vhostsplice.host.hostfd_inspect import open_packet
    host = open_packet(DEV, vnet_hdr=True)
    try:
        assert host.vnet_hdr_switchable and host.vnet_hdr_len == 12
        with socket.socket(fileno=os.dup(host.fd)) as probe:
            assert host.set_packet_vnet_hdr(False) == 0
            assert probe.getsockopt(SOL_PACKET, PACKET_VNET_HDR) == 0
            assert host.set_packet_vnet_hdr(True) == 12
            assert probe.getsockopt(SOL_PACKET, PACKET_VNET_HDR) == 1
        path = dp.Datapath(host.fd, host_hdr_len=12)
        path.set_host_hdr_len(0)
        assert path.host_hdr_len == 0
        with pytest.raises(ConfigError):
            path.set_host_hdr_len(5)
        assert path.host_hdr_len == 0
    finally:
        host.close()
    bare = open_packet(DEV, vnet_hdr=False)
    try:
        with pytest.raises(ConfigError):        # a socket opened without the header is never switched
            bare.set_packet_vnet_hdr(True)
    finally:
        bare.close()

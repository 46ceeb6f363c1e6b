"""`vhostsplice run --packet IFNAME`: an AF_PACKET socket on one end of a veth pair, in a private netns.

The test's own AF_PACKET socket on the other end plays the network. Root only.
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import time

import pytest

from vhostsplice.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, bit
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, collect, demo_frame, tap_socket
from vhostsplice.testing.netns import PrivateNetns

pytestmark = pytest.mark.root
DEV, PEER = "vshA", "vshB"
CSUM = bit(F.NET_F_CSUM) | bit(F.NET_F_GUEST_CSUM)


class PacketWorker(WorkerProcess):
    def __init__(self, workdir: str, *extra: str, name: str = "w"):
        self.sock = os.path.join(workdir, f"{name}.sock")
        self.stats_file = os.path.join(workdir, f"{name}.stats.json")
        self.argv = [*self_argv(), "run", "--socket-path", self.sock, "--packet", DEV,
                     "--stats-file", self.stats_file, *extra]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self_env())


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with PrivateNetns("vsh") as ns, ns.entered():
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


@pytest.mark.parametrize("extra,offloads", [((), True), (("--no-offloads",), False)], ids=["vnet-hdr", "bare"])
def test_frames_both_ways_over_veth(make_worker, extra, offloads):
    w = make_worker(*extra)
    net = tap_socket(PEER)
    fe = Frontend.connect(w.sock, features=DEFAULT_FEATURES | CSUM).start()
    assert bool(fe.offered & bit(F.NET_F_CSUM)) == offloads
    sent = frames(0x1, 30, 1514)
    fe.send(sent)
    assert len(fe.wait_used(fe.tx, 30)) == 30
    assert collect(net, 30) == sent
    back = frames(0x9, 30, 300)
    fe.post_rx(64, 2048)
    for f in back:
        net.send(f)
    got = fe.receive(30, header=True)
    assert [g[12:] for g in got] == back
    assert all(g[1] == 0 for g in got)               # gso_type NONE for frames this small
    assert all(g[10:12] == b"\x01\x00" for g in got)
    fe.stop()
    fe.close()
    code, stats = w.wait()
    assert code == 0, w.stderr
    # our own transmissions are not read back (PACKET_IGNORE_OUTGOING): RX saw only the 30 from the peer
    assert stats["rings"]["rx"]["packets"] == 30 and stats["rings"]["tx"]["packets"] == 30
    assert stats["host"] == {"kind": "packet", "name": DEV, "vnet_hdr_len": 12 if offloads else 0}


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
    from vhostsplice.hostfd import inspect_fd
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((DEV, 3))
    s.setsockopt(263, 15, 1)                   # SOL_PACKET, PACKET_VNET_HDR
    try:
        host = inspect_fd(os.dup(s.fileno()))
        assert (host.kind, host.name, host.vnet_hdr_len, host.offloads_ok) == ("packet", DEV, 10, True)
        host.close()
    finally:
        s.close()

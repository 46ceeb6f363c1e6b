"""`run --host-fd N --framing qemu` against a real QEMU `-netdev stream` (no guest, no root).

QEMU runs machine `none` as a wire: its `-netdev stream` server and a `-netdev dgram` (UDP to this test)
are joined by a hub. Frames from the front-end go worker -> QEMU stream -> hub -> UDP datagrams here, and
datagrams sent here come back the other way. QEMU only forwards while the VM runs (no -S).
Runs on each QEMU of the peer matrix (the `qemu_peer` fixture: a missing QEMU fails under CI).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import WorkerProcess, demo_frame

pytestmark = [pytest.mark.interop]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def qemu_wire(qemu_peer, tmp_path):
    """(stream socket path, our UDP socket, QEMU's UDP port) with QEMU running as the wire."""
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    qport = free_udp_port()
    path = str(tmp_path / "q.sock")
    argv = [*qemu_peer.argv, "-M", "none", "-nodefaults", "-display", "none",
            "-netdev", f"stream,id=s0,server=on,addr.type=unix,addr.path={path}",
            "-netdev", "hubport,id=p0,hubid=0,netdev=s0",
            "-netdev", f"dgram,id=g0,local.type=inet,local.host=127.0.0.1,local.port={qport},"
                       f"remote.type=inet,remote.host=127.0.0.1,remote.port={ours.getsockname()[1]}",
            "-netdev", "hubport,id=p1,hubid=0,netdev=g0"]
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert qemu.poll() is None, qemu.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU did not create its stream socket"
            time.sleep(0.05)
        yield path, ours, qport
    finally:
        qemu.kill()
        qemu.wait()
        qemu.stderr.close()
        ours.close()


def test_frames_cross_a_real_qemu_netdev_stream(qemu_wire, tmp_path):
    path, udp, qport = qemu_wire
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    w = WorkerProcess(str(tmp_path), "", "--framing", "qemu", host=("--host-fd", str(conn.fileno())),
                      pass_fds=(conn.fileno(),))
    conn.close()
    try:
        w.wait_listening()
        fe = Frontend.connect(w.sock).start()
        fe.post_rx(64, 2048)
        sent = [demo_frame(i, size) for i, size in enumerate((60, 1514, 333, 1000))]
        udp.settimeout(10)
        got = []
        fe.send(sent)
        assert len(fe.wait_used(fe.tx, len(sent))) == len(sent)
        while len(got) < len(sent):
            got.append(udp.recv(65536))
        assert got == sent                              # QEMU parsed our framing frame by frame
        back = [demo_frame(i, size, src=b"\x02\0\0\0\0\x07") for i, size in enumerate((1514, 64, 900))]
        for frame in back:
            udp.sendto(frame, ("127.0.0.1", qport))
        assert fe.receive(len(back), timeout=10) == back    # and we parsed QEMU's
        fe.stop()
        fe.close()
        code, stats = w.wait()
        assert code == 0, w.stderr
        assert stats["rings"]["tx"]["packets"] == 4 and stats["rings"]["rx"]["packets"] == 3
    finally:
        w.kill()

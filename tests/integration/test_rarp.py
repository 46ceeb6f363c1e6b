"""SEND_RARP end to end, as root: `vhostsplice run` on a real tap announces the guest MAC on the host side."""
from __future__ import annotations

import select
import socket

import pytest

from support.netns import entered_netns
from vhostsplice.vhostuser import protocol as P
from vhostsplice.spec import ProtocolFeature as PF, Req, bit
from vhostsplice.testing.frontend import DEFAULT_PROTOCOL, Frontend
from vhostsplice.testing.harness import WorkerProcess

pytestmark = pytest.mark.root
TAP = "vsm0"
ETH_P_RARP = 0x8035
GUEST_MAC = bytes.fromhex("525400c0ffee")


@pytest.fixture
def worker(tmp_path):
    with entered_netns("vsm"), WorkerProcess(str(tmp_path), TAP) as w:
        yield w


def rarp_socket() -> socket.socket:
    """Only RARP frames the worker writes to the tap (the kernel filters on the ethertype)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_RARP))
    s.bind((TAP, ETH_P_RARP))
    return s


def read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    out = []
    while len(out) < count:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            break
        out.append(sock.recv(65536))
    return out


def expected_rarp(mac: bytes) -> bytes:
    """RFC 903 on Ethernet as QEMU's self-announce sends it: 60 bytes, broadcast, request-reverse."""
    return (b"\xff" * 6 + mac + b"\x80\x35" + b"\x00\x01\x08\x00\x06\x04\x00\x03"
            + mac + bytes(4) + mac + bytes(4) + bytes(18))


def test_send_rarp_puts_one_announce_on_the_tap_per_request(worker):
    sock = rarp_socket()
    fe = Frontend.connect(worker.sock, protocol_features=DEFAULT_PROTOCOL | bit(PF.RARP))
    fe.negotiate()
    assert fe.protocol_acked & bit(PF.RARP)
    fe.command(Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))          # before any ring, as QEMU's first round
    assert read_frames(sock, 1) == [expected_rarp(GUEST_MAC)]         # the vnet header is not on the wire
    fe.share_memory()
    fe.rx, fe.tx = fe.setup_ring(0), fe.setup_ring(1)
    for _ in range(2):
        fe.command(Req.SEND_RARP, P.encode_rarp_mac(GUEST_MAC))
    assert read_frames(sock, 2) == [expected_rarp(GUEST_MAC)] * 2
    assert read_frames(sock, 1, timeout=0.3) == []                    # exactly one frame per request
    fe.stop()
    fe.close()
    code, stats = worker.wait()
    assert code == 0 and stats["errno"] == "OK"
    assert stats["rarp"] == {"sent": 3, "dropped": 0, "skipped": 0}


def test_send_rarp_with_a_short_payload_ends_the_worker_with_eproto(worker):
    fe = Frontend.connect(worker.sock, protocol_features=DEFAULT_PROTOCOL | bit(PF.RARP))
    fe.negotiate()
    fe.send_raw(Req.SEND_RARP, GUEST_MAC)                             # 6 bytes, not a u64
    code, stats = worker.wait()
    fe.close()
    assert code == 71 and stats["errno"] == "EPROTO"

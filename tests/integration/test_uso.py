"""UDP segmentation offload through `vhostsplice run` on a real tap (root, a private netns), with the
built-in front-end as the guest: a GSO_UDP_L4 frame from the guest reaches a host UDP socket as
datagrams of gso_size, and a UDP_SEGMENT send on the host side reaches the guest as one gso_type 5
frame when it acked GUEST_USO4/6, as plain datagrams when it did not."""
from __future__ import annotations

import json
import socket
import struct
import subprocess

import pytest

from support.netns import entered_netns
from vhostsplice.host.hostfd import open_tap
from vhostsplice.host.offloads import probe_uso
from vhostsplice.spec import GSO_NONE, GSO_UDP_L4, TUN_F_CSUM, TUN_F_TSO4, Feature as F, mask
from vhostsplice.testing.frontend import DEFAULT_FEATURES, Frontend
from vhostsplice.testing.harness import WorkerProcess, uso_frame, uso_header

pytestmark = pytest.mark.root
TAP = "vsu0"
GUEST_MAC = bytes.fromhex("020000000003")
HOST_IP, GUEST_IP = "10.78.0.1", "10.78.0.2"
CSUMS = mask(F.NET_F_CSUM, F.NET_F_GUEST_CSUM)
USO = CSUMS | mask(F.NET_F_HOST_USO, F.NET_F_GUEST_USO4, F.NET_F_GUEST_USO6)
SOL_UDP, UDP_SEGMENT = 17, 103
SEG, PAYLOAD = 1000, 3500        # four datagrams: 1000, 1000, 1000, 500


@pytest.fixture
def worker(tmp_path):
    with entered_netns("vsu"), WorkerProcess(str(tmp_path), TAP) as w:
        yield w


def _start(worker, features) -> tuple[Frontend, bytes]:
    fe = Frontend.connect(worker.sock, features=DEFAULT_FEATURES | features).start()
    subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
    subprocess.run(["ip", "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC.hex(":"), "dev", TAP], check=True)
    link = subprocess.run(["ip", "-j", "link", "show", TAP], check=True, capture_output=True, text=True).stdout
    return fe, bytes.fromhex(json.loads(link)[0]["address"].replace(":", ""))


@pytest.mark.parametrize("hdr_len, want", [(12, True), (0, False)])
def test_the_probe_asks_the_tap_and_a_tap_without_vnet_header_never_offers_uso(hdr_len, want):
    with entered_netns("vsu"):
        host = open_tap(TAP, vnet_hdr_len=hdr_len)
        try:
            assert probe_uso(host) is want        # the suite's kernel is >= 6.2: tun knows TUN_F_USO4/6
            host.set_offload(TUN_F_CSUM | TUN_F_TSO4 if hdr_len else 0)   # the probe left it settable
        finally:
            host.close()


def test_guest_gso_udp_frame_reaches_the_host_as_segments(worker):
    fe, tap_mac = _start(worker, USO)
    assert fe.acked & USO == USO
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((HOST_IP, 9998))
    rx.settimeout(5)
    payload = bytes(range(256)) * 13 + bytes(PAYLOAD - 256 * 13)
    frame = uso_frame((GUEST_MAC, tap_mac), (GUEST_IP, HOST_IP), (40001, 9998), payload)
    fe.send([frame], hdr=uso_header(SEG))
    got = [rx.recvfrom(65536)[0] for _ in range(4)]
    assert [len(g) for g in got] == [SEG, SEG, SEG, PAYLOAD - 3 * SEG]
    assert b"".join(got) == payload
    fe.stop()
    fe.close()
    assert worker.wait()[0] == 0


@pytest.mark.parametrize("guest_uso", [True, False])
def test_host_udp_segment_send_reaches_the_guest_as_acked(worker, guest_uso):
    features = USO if guest_uso else CSUMS | mask(F.NET_F_GUEST_TSO4)
    fe, _ = _start(worker, features)
    fe.post_rx(32, 4096)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(SOL_UDP, UDP_SEGMENT, SEG)
    payload = bytes(range(250)) * 14
    tx.sendto(payload, (GUEST_IP, 7778))
    count = 1 if guest_uso else 4
    frames = fe.receive(count, header=True)
    hdrs = [struct.unpack_from("<BBHH", f) for f in frames]     # flags, gso_type, hdr_len, gso_size
    udp = [f[12 + 14 + 20 + 8:] for f in frames]
    assert b"".join(udp) == payload
    if guest_uso:
        assert hdrs[0][1] == GSO_UDP_L4 and hdrs[0][3] == SEG and len(udp[0]) == PAYLOAD
    else:
        assert [h[1] for h in hdrs] == [GSO_NONE] * 4 and [len(u) for u in udp] == [SEG] * 3 + [500]
    fe.stop()
    fe.close()
    assert worker.wait()[0] == 0

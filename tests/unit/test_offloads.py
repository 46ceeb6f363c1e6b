"""UDP segmentation offload and the offload dependency rule: what is offered, what the tap is told,
which acked sets are refused (virtio 1.2 5.1.3.1), and which host fds may offer USO at all."""
import socket

import pytest

from vhostsplice.host import offloads
from vhostsplice.device.features import OFFLOAD_FEATURES, USO_FEATURES, offload_features
from vhostsplice.errors import ProtocolError
from vhostsplice.host.hostfd import HostFd
from vhostsplice.host.offloads import check_dependencies, probe_uso, tun_offload
from vhostsplice.spec import (OFFLOAD_REQUIRES, TUN_F_CSUM, TUN_F_TSO4, TUN_F_USO4, TUN_F_USO6, Feature as F,
                              bit, mask)

USO_BITS = {F.NET_F_GUEST_USO4: 54, F.NET_F_GUEST_USO6: 55, F.NET_F_HOST_USO: 56}


def test_uso_bits_are_the_spec_numbers_and_offered_only_with_uso():
    assert {f: int(f) for f in USO_BITS} == USO_BITS
    assert USO_FEATURES == mask(*USO_BITS) and not USO_FEATURES & OFFLOAD_FEATURES
    assert offload_features(True, True) == OFFLOAD_FEATURES | USO_FEATURES
    assert offload_features(True, False) == OFFLOAD_FEATURES
    assert offload_features(False, True) == 0          # --no-offloads wins


@pytest.mark.parametrize("acked, flags", [
    (mask(F.NET_F_GUEST_CSUM, F.NET_F_GUEST_USO4, F.NET_F_GUEST_USO6), TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6),
    (mask(F.NET_F_GUEST_CSUM, F.NET_F_GUEST_USO4), TUN_F_CSUM),     # tun takes USO4 only with USO6
    (mask(F.NET_F_GUEST_CSUM, F.NET_F_GUEST_USO6), TUN_F_CSUM),
    (mask(F.NET_F_GUEST_CSUM, F.NET_F_GUEST_TSO4, F.NET_F_HOST_USO, F.NET_F_CSUM), TUN_F_CSUM | TUN_F_TSO4),
])
def test_tun_flags_follow_the_guest_side_bits(acked, flags):
    assert tun_offload(acked) == flags


@pytest.mark.parametrize("feature", list(OFFLOAD_REQUIRES))
def test_an_offload_without_its_dependency_is_refused(feature):
    needs = OFFLOAD_REQUIRES[feature]
    with pytest.raises(ProtocolError, match=feature.name):
        check_dependencies(bit(feature))
    check_dependencies(bit(feature) | bit(needs[0]) | mask(*OFFLOAD_REQUIRES.get(needs[0], ())))


def test_uso_dependencies_are_the_spec_ones():
    assert OFFLOAD_REQUIRES[F.NET_F_GUEST_USO4] == OFFLOAD_REQUIRES[F.NET_F_GUEST_USO6] == (F.NET_F_GUEST_CSUM,)
    assert OFFLOAD_REQUIRES[F.NET_F_HOST_USO] == (F.NET_F_CSUM,)


@pytest.mark.parametrize("kind", ["unix-dgram", "udp", "unix-stream"])
def test_sockets_other_than_packet_never_offer_uso(kind):
    a, b = socket.socketpair()
    host = HostFd(fd=a.fileno(), kind=kind, name="x", vnet_hdr_len=0, mtu=1500, created=False)
    assert probe_uso(host) is False and host.uso_ok is False
    a.close()
    b.close()


@pytest.mark.parametrize("release, hdr, want", [((6, 1), 12, False), ((6, 2), 12, True), ((6, 12), 10, True),
                                                ((6, 12), 0, False)])
def test_packet_socket_offers_uso_from_linux_6_2_with_a_vnet_header(monkeypatch, release, hdr, want):
    monkeypatch.setattr(offloads, "kernel_release", lambda: release)
    host = HostFd(fd=-1, kind="packet", name="veth0", vnet_hdr_len=hdr, mtu=1500, created=False)
    assert probe_uso(host) is want and host.uso_ok is want


def test_kernel_release_reads_uname(monkeypatch):
    monkeypatch.setattr(offloads.os, "uname", lambda: type("U", (), {"release": "6.12.38+deb12-amd64"})())
    assert offloads.kernel_release() == (6, 12)
    monkeypatch.setattr(offloads.os, "uname", lambda: type("U", (), {"release": "weird"})())
    assert offloads.kernel_release() == (0, 0)

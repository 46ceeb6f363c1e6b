"""What the acked offload bits mean for the host fd: the TUNSETOFFLOAD flags they turn on, and the
dependency rule a driver's set must keep (virtio 1.2 5.1.3.1). The tables are spec.py's; what is
offered is device/features.py's (offload_features). probe_uso: whether a host fd takes UDP GSO at all."""
from __future__ import annotations

import fcntl
import logging
import os
import re

from ..errors import ProtocolError
from .hostfd import TUN_KINDS, HostFd, errno_text
from .tun import TUNSETOFFLOAD
from ..spec import GUEST_OFFLOAD_TO_TUN, GUEST_USO_TO_TUN, OFFLOAD_REQUIRES, TUN_F_CSUM, bit, mask

log = logging.getLogger("vhostsplice")
USO_KERNEL = (6, 2)     # virtio_net_hdr GSO_UDP_L4 and TUN_F_USO4/6 (Linux commit 860b7f27b8f7 and its series)


def tun_offload(acked: int) -> int:
    """TUNSETOFFLOAD flags for the acked guest-side bits; USO only with both USO4 and USO6 acked."""
    tun = 0
    for feature, flag in GUEST_OFFLOAD_TO_TUN.items():
        if acked & bit(feature):
            tun |= flag
    uso = mask(*GUEST_USO_TO_TUN)
    if acked & uso == uso:
        tun |= sum(GUEST_USO_TO_TUN.values())
    return tun


def check_dependencies(features: int) -> None:
    """virtio 1.2 5.1.3.1: an acked offload bit needs one of its dependencies (spec.OFFLOAD_REQUIRES)."""
    for feature, needs in OFFLOAD_REQUIRES.items():
        if features & bit(feature) and not features & mask(*needs):
            raise ProtocolError(f"SET_FEATURES acks {feature.name} without "
                                f"{' or '.join(n.name for n in needs)} (virtio 1.2 5.1.3.1)")


def probe_uso(host: HostFd) -> bool:
    """Whether UDP segmentation offload can be offered on HOST; sets and returns host.uso_ok. A tap or
    macvtap queue is asked once: TUNSETOFFLOAD CSUM|USO4|USO6, then 0 (a kernel before 6.2 answers
    EINVAL). An AF_PACKET socket with a vnet header has no such knob: packet_snd and packet_rcv use
    virtio_net_hdr_to_skb / _from_skb, which know GSO_UDP_L4 from Linux 6.2 on. Other fds: never."""
    host.uso_ok = False
    if host.vnet_hdr_len and host.kind in TUN_KINDS and host.fd >= 0:
        try:
            fcntl.ioctl(host.fd, TUNSETOFFLOAD, TUN_F_CSUM | sum(GUEST_USO_TO_TUN.values()))
            host.uso_ok = True
        except OSError as exc:
            log.info("%s %s: no UDP segmentation offload (TUNSETOFFLOAD USO: %s)", host.kind, host.name,
                     errno_text(exc))
        host.set_offload(0)
    elif host.vnet_hdr_len and host.kind == "packet":
        host.uso_ok = kernel_release() >= USO_KERNEL
    return host.uso_ok


def kernel_release() -> tuple[int, int]:
    """(major, minor) of the running kernel; (0, 0) when uname's release does not start with them."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m[1]), int(m[2])) if m else (0, 0)

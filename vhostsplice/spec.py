"""Spec vocabulary: vhost-user requests, virtio feature bits, ring flags.

Sources: virtio 1.2 (sections cited per group) and QEMU docs/interop/vhost-user.rst.
"""
from __future__ import annotations

import enum


class Req(enum.IntEnum):
    """Front-end -> back-end requests (vhost-user.rst, "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


# Header flags (vhost-user.rst, "Header").
VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

# Payload bits of SET_VRING_KICK/CALL/ERR (vhost-user.rst, "Vring descriptor indices").
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

MAX_REGIONS = 8       # VHOST_MEMORY_BASELINE_NREGIONS: the most SET_MEM_TABLE carries
# Memory slots with CONFIGURE_MEM_SLOTS (ADD_MEM_REG one region at a time): what GET_MAX_MEM_SLOTS
# answers, the size of the C core's region table (VS_MAX_REGIONS, which says why 509).
MAX_MEM_SLOTS = 509
MAX_FDS = 8
MAX_PAYLOAD = 4096    # larger than any message this back-end accepts; a bigger size is a violation


class Feature(enum.IntEnum):
    """Device feature bits (virtio 1.2 5.1.3 network device, 6 reserved bits)."""

    NET_F_CSUM = 0
    NET_F_GUEST_CSUM = 1
    NET_F_MTU = 3
    NET_F_MAC = 5
    NET_F_GUEST_TSO4 = 7
    NET_F_GUEST_TSO6 = 8
    NET_F_GUEST_ECN = 9
    NET_F_GUEST_UFO = 10
    NET_F_HOST_TSO4 = 11
    NET_F_HOST_TSO6 = 12
    NET_F_HOST_ECN = 13
    NET_F_HOST_UFO = 14
    NET_F_MRG_RXBUF = 15
    NET_F_STATUS = 16
    NET_F_CTRL_VQ = 17
    NET_F_GUEST_ANNOUNCE = 21            # the guest announces itself after a move (QEMU's control queue)
    NET_F_MQ = 22
    RING_F_INDIRECT_DESC = 28
    RING_F_EVENT_IDX = 29
    VHOST_F_LOG_ALL = 26                 # vhost: log every guest write in the dirty log (live migration)
    VHOST_USER_F_PROTOCOL_FEATURES = 30  # vhost-user.rst: not a virtio bit; marks protocol-feature support
    F_VERSION_1 = 32
    F_ACCESS_PLATFORM = 33
    F_RING_PACKED = 34
    F_IN_ORDER = 35
    NET_F_GUEST_USO4 = 54                # the driver takes UDP GSO (gso_type UDP_L4) over IPv4 on RX
    NET_F_GUEST_USO6 = 55                # ... over IPv6
    NET_F_HOST_USO = 56                  # the device takes UDP GSO frames on TX


class ProtocolFeature(enum.IntEnum):
    """vhost-user.rst, "Protocol features"."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CONFIG = 9
    INFLIGHT_SHMFD = 12
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


def bit(n: int) -> int:
    return 1 << int(n)


def mask(*bits: int) -> int:
    m = 0
    for b in bits:
        m |= bit(b)
    return m


# Offload features and the TUNSETOFFLOAD flag each guest-side bit turns on (linux/if_tun.h).
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20       # Linux 6.2 and later; tun and tap take USO4 only together with USO6 and CSUM
TUN_F_USO6 = 0x40
GUEST_OFFLOAD_TO_TUN = {
    Feature.NET_F_GUEST_CSUM: TUN_F_CSUM,
    Feature.NET_F_GUEST_TSO4: TUN_F_TSO4,
    Feature.NET_F_GUEST_TSO6: TUN_F_TSO6,
    Feature.NET_F_GUEST_ECN: TUN_F_TSO_ECN,
    Feature.NET_F_GUEST_UFO: TUN_F_UFO,
}
HOST_OFFLOADS = (Feature.NET_F_CSUM, Feature.NET_F_HOST_TSO4, Feature.NET_F_HOST_TSO6,
                 Feature.NET_F_HOST_ECN, Feature.NET_F_HOST_UFO)
# UDP segmentation offload (virtio 1.2 5.1.6.2, gso_type 5): offered only where the host fd's kernel
# path takes GSO_UDP_L4 (HostFd.uso_ok). The tap needs TUN_F_USO4 and TUN_F_USO6 at once (tun.c
# set_offload refuses one alone with EINVAL), so a driver acking one of them gets neither on the tap:
# the kernel then segments before the tap, and the guest sees plain datagrams.
GUEST_USO_TO_TUN = {Feature.NET_F_GUEST_USO4: TUN_F_USO4, Feature.NET_F_GUEST_USO6: TUN_F_USO6}
USO_OFFLOADS = (*GUEST_USO_TO_TUN, Feature.NET_F_HOST_USO)
# The guest-side bits that let the host hand over frames larger than the MTU (rx buffers: GSO size).
GUEST_GSO = (Feature.NET_F_GUEST_TSO4, Feature.NET_F_GUEST_TSO6, Feature.NET_F_GUEST_UFO, *GUEST_USO_TO_TUN)

# Feature dependencies (virtio 1.2 5.1.3.1) among the offloads: each bit needs one of its set acked too.
# A driver acking a bit without its dependency is refused at SET_FEATURES.
OFFLOAD_REQUIRES = {
    Feature.NET_F_GUEST_TSO4: (Feature.NET_F_GUEST_CSUM,),
    Feature.NET_F_GUEST_TSO6: (Feature.NET_F_GUEST_CSUM,),
    Feature.NET_F_GUEST_ECN: (Feature.NET_F_GUEST_TSO4, Feature.NET_F_GUEST_TSO6),
    Feature.NET_F_GUEST_UFO: (Feature.NET_F_GUEST_CSUM,),
    Feature.NET_F_GUEST_USO4: (Feature.NET_F_GUEST_CSUM,),
    Feature.NET_F_GUEST_USO6: (Feature.NET_F_GUEST_CSUM,),
    Feature.NET_F_HOST_TSO4: (Feature.NET_F_CSUM,),
    Feature.NET_F_HOST_TSO6: (Feature.NET_F_CSUM,),
    Feature.NET_F_HOST_ECN: (Feature.NET_F_HOST_TSO4, Feature.NET_F_HOST_TSO6),
    Feature.NET_F_HOST_UFO: (Feature.NET_F_CSUM,),
    Feature.NET_F_HOST_USO: (Feature.NET_F_CSUM,),
}

# virtio_net_hdr gso_type values (virtio 1.2 5.1.6); the kernel validates the header, not the core.
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
HDR_F_NEEDS_CSUM = 1

# The largest Queue Size of both layouts (virtio 1.2 2.7 split, 2.8 packed: the C core's VS_MAX_QUEUE_SIZE;
# the size rule itself is the core's vs_ring_num_ok, asked through datapath.ring_size_ok).
MAX_QUEUE_SIZE = 32768

# virtio_net_hdr_v1 (virtio 1.2 5.1.6): 12 bytes once VERSION_1 is negotiated.
NET_HDR_LEN = 12

RX_RING = 0
TX_RING = 1

# Dirty log (vhost-user.rst, "Migration"): one bit per 4 KiB guest-physical page.
VRING_F_LOG = 0                 # bit of SET_VRING_ADDR's flags: log this ring's used-ring writes
LOG_PAGE = 4096
MAX_LOG_SIZE = 1 << 30          # log bytes: 32 TiB of guest-physical address; a larger log is refused

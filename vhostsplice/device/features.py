"""What the device offers: the feature bits and protocol feature bits, and the offload subset.

One offer policy for both doors: `run`'s Backend offers `offered_features` and RUN_PROTOCOL_FEATURES;
`serve`'s device (serve/serve_device.py) offers the same and adds its device-only bits (MQ). What the
acked offload bits ask of the host fd is host/offloads.py's.
"""
from __future__ import annotations

from ..spec import GUEST_OFFLOAD_TO_TUN, HOST_OFFLOADS, USO_OFFLOADS, Feature as F, ProtocolFeature as PF, bit, mask

BASE_FEATURES = mask(F.F_VERSION_1, F.NET_F_MRG_RXBUF, F.RING_F_INDIRECT_DESC, F.RING_F_EVENT_IDX,
                     F.F_IN_ORDER, F.VHOST_USER_F_PROTOCOL_FEATURES)
OFFLOAD_FEATURES = mask(*GUEST_OFFLOAD_TO_TUN, *HOST_OFFLOADS)
USO_FEATURES = mask(*USO_OFFLOADS)      # only with the offloads, and only where the host fd takes UDP GSO
PROTOCOL_FEATURES = mask(PF.MQ, PF.REPLY_ACK, PF.STATUS)
# Dirty logging for live migration (docs/migration.md), on top of the sets above. `serve` offers them
# too: its supervisor hands SET_LOG_BASE to every worker and answers once (serve_device.py).
LOG_FEATURES = bit(F.VHOST_F_LOG_ALL)
# GUEST_ANNOUNCE: QEMU offers it to the guest only if the back-end does (it is in QEMU's vhost-net
# user_feature_bits). A guest that acks it sends its own gratuitous ARP / unsolicited NA after a move
# (through TX, like any frame; QEMU runs the control queue), which covers VLANs and IPv6; QEMU then sends
# no SEND_RARP. Nothing in the data path changes.
ANNOUNCE_FEATURES = bit(F.NET_F_GUEST_ANNOUNCE)
LOG_PROTOCOL_FEATURES = bit(PF.LOG_SHMFD)
# SEND_RARP: after a move the front-end asks the back-end to announce the guest's MAC (a guest without
# GUEST_ANNOUNCE cannot); `run` writes the RARP to its host fd (`serve`: its first running worker).
RARP_PROTOCOL_FEATURES = bit(PF.RARP)
# CONFIGURE_MEM_SLOTS: memory hot-plug, one region at a time (ADD/REM_MEM_REG), up to MAX_MEM_SLOTS
# regions; a front-end that acks it sends no SET_MEM_TABLE (QEMU). `serve` hands them to every worker.
MEM_SLOTS_PROTOCOL_FEATURES = bit(PF.CONFIGURE_MEM_SLOTS)
RUN_PROTOCOL_FEATURES = PROTOCOL_FEATURES | LOG_PROTOCOL_FEATURES | RARP_PROTOCOL_FEATURES | MEM_SLOTS_PROTOCOL_FEATURES
# The packed virtqueue (virtio 1.2 2.8, the core's vs_packed.c); --no-packed leaves it out. IN_ORDER is
# in BASE_FEATURES: the device completes every ring's chains in the order it takes them.
PACKED_FEATURES = bit(F.F_RING_PACKED)


def offered_features(*, offloads: bool, packed: bool, uso: bool = False) -> int:
    """The one offered-features policy: `run`'s Backend offers it, `serve`'s device adds MQ to it (and
    never USO: serve does not probe its taps)."""
    return (BASE_FEATURES | LOG_FEATURES | ANNOUNCE_FEATURES | offload_features(offloads, uso)
            | (PACKED_FEATURES if packed else 0))


def offload_features(offloads: bool, uso: bool) -> int:
    """The offload bits offered: none with --no-offloads, USO only where the host fd takes it."""
    return (OFFLOAD_FEATURES | (USO_FEATURES if uso else 0)) if offloads else 0

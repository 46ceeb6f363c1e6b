"""One handler per vhost-user request, named after it, dispatched by a table.

The back-end serves exactly one queue pair: ring 0 (RX, device -> driver) and ring 1 (TX). Syntax is
checked by protocol.py; this module checks meaning (ring index, ordering, fd counts, feature subsets)
and drives the datapath. A handler raises a VhostspliceError for a fatal violation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Callable

from ..vhostuser import protocol as P
from ..vhostuser.channel import close_fds
from ..errors import ConfigError, FeatureError, ProtocolError
from ..host.hostfd import HostState
from .memory import DirtyLog, GuestMemory
from .ring_requests import enable_at_start, get_vring_base_exec, set_vring_addr_exec, set_vring_base_exec, \
    set_vring_call_exec, set_vring_enable_exec, set_vring_err_exec, set_vring_kick_exec, set_vring_num_exec
from .memory_requests import add_mem_reg_exec, get_max_mem_slots_exec, region_fds, rem_fds, rem_mem_reg_exec, \
    set_mem_table_exec
from ..host.offloads import check_dependencies, tun_offload
from .features import OFFLOAD_FEATURES, RUN_PROTOCOL_FEATURES, offered_features
from ..spec import GUEST_GSO, NET_HDR_LEN, Feature as F, ProtocolFeature as PF, Req, bit, mask
from .statepage import StatePage
from .vring import RingState

log = logging.getLogger("vhostsplice")

GSO_MAX = 65550 + 4        # largest frame a tap hands over with guest TSO/UFO on (64 KiB + Ethernet + VLAN)


@dataclass
class BackendConfig:
    offloads: bool = True
    packed: bool = True
    uso: bool = False           # the host fd takes GSO_UDP_L4 both ways (HostFd.uso_ok)
    fault_exit: bool = False
    mtu: int = 1500


class Backend:
    def __init__(self, channel, datapath, hostfd, config: BackendConfig):
        self.channel, self.datapath, self.hostfd, self.config = channel, datapath, hostfd, config
        self.offered = offered_features(offloads=config.offloads, packed=config.packed, uso=config.uso)
        self.acked: int | None = None
        self.protocol_acked = 0
        self.status = 0
        self.memory: GuestMemory | None = None
        self.log: DirtyLog | None = None        # SET_LOG_BASE's mapping, written while LOG_ALL is acked
        self.rings = [RingState(0), RingState(1)]
        self.messages = 0
        self.rarp = {"sent": 0, "dropped": 0, "skipped": 0}     # SEND_RARP outcomes
        self.state = StatePage(None)    # the worker's ring-position state page (statepage.py), or none
        # whether the front-end has a ring of the pair enabled, as SET_VRING_ENABLE left it (None: it never
        # enabled one): the tap queue follows it (host_state)
        self.pair_enabled: bool | None = None

    # -- dispatch ---------------------------------------------------------------------------------------
    def handle(self, msg: P.Message) -> None:
        entry = HANDLERS.get(msg.request)
        if entry is None:
            close_fds(msg.fds)
            raise ProtocolError(f"{msg.name}: unsupported request")
        handler, want_fds = entry
        self.messages += 1
        try:
            expected = want_fds(self, msg)
        except BaseException:
            close_fds(msg.fds)
            raise
        if len(msg.fds) != expected:
            close_fds(msg.fds)
            raise ProtocolError(f"{msg.name}: {len(msg.fds)} file descriptors, expected {expected}")
        reply = handler(self, msg)    # a handler owns msg.fds from here: it keeps or closes each
        self._configure_host()
        if reply is not None:
            self.channel.send(msg.request, reply, reply=True)
        elif msg.need_reply and self.protocol_acked & bit(PF.REPLY_ACK):
            self.channel.send(msg.request, P.encode_u64(0), reply=True)

    def host_state(self) -> HostState:
        """What the negotiated state asks of the host fd: the offloads acked (TUNSETOFFLOAD once
        VERSION_1 is, a --packet socket's vnet header from the first SET_FEATURES on) and the tap queue
        attached unless the front-end disabled the pair. A ring stopped by GET_VRING_BASE or RESET_OWNER
        alone leaves the queue attached (the front-end is leaving or resetting)."""
        acked = self.acked
        return HostState(offload=tun_offload(acked) if self._acked(F.F_VERSION_1) else None,
                         vnet_hdr=None if acked is None else bool(acked & OFFLOAD_FEATURES),
                         attached=self.pair_enabled is not False)

    def _configure_host(self) -> None:
        """The one place the host fd is configured (HostFd.apply), after each request and before its
        reply; the datapath follows the header a --packet socket carries."""
        carried = self.hostfd.apply(self.host_state())
        if carried is not None:
            self.datapath.set_host_hdr_len(carried)

    @property
    def rings_running(self) -> bool:
        return any(r.running for r in self.rings)

    def close(self) -> None:
        for ring in self.rings:
            self._stop(ring)
            ring.reset()
        if self.memory is not None:
            self.datapath.set_memory([])
            self.memory.close()
            self.memory = None
        self._drop_log()

    # -- helpers -----------------------------------------------------------------------------------------
    def _ring(self, index: int) -> RingState:
        if index not in (0, 1):
            raise ProtocolError(f"ring index {index}: this back-end serves one queue pair (rings 0 and 1)")
        return self.rings[index]

    def _drop_log(self) -> None:
        self.datapath.set_log_all(False)
        if self.log is not None:
            self.datapath.set_log(None)         # the core lets go of the buffer before it is unmapped
            self.log.close()
            self.log = None

    def _check_log_coverage(self) -> None:
        if self.log is None or self.memory is None or not self.memory.regions:
            return
        end = max(r.gpa + r.size for r in self.memory.regions)
        if not self.log.covers(end):
            log.warning("dirty log of %d bytes covers guest-physical addresses below %#x, memory reaches %#x:"
                        " writes above are not logged (counted as log_overflow)",
                        self.log.size, self.log.size * 8 * 4096, end)

    @property
    def packed(self) -> bool:
        """VIRTIO_F_RING_PACKED acked: every ring is packed, its vring state the 32-bit packed one."""
        return self._acked(F.F_RING_PACKED)

    def _acked(self, feature: int) -> bool:
        return bool(self.acked is not None and self.acked & bit(feature))

    def _stop(self, ring: RingState) -> int:
        if ring.running:
            ring.base = self.datapath.stop_ring(ring.index)
            ring.running = False
        return ring.base

    def _maybe_start(self, ring: RingState) -> None:
        if ring.running or not ring.ready(self.memory is not None and bool(self.memory.regions)):
            return
        if not self._acked(F.F_VERSION_1):
            raise FeatureError("the driver did not accept VIRTIO_F_VERSION_1 (legacy virtio is not served)")
        if self.acked is None:
            self.acked = 0
        try:        # where it resumes: statepage.py (the state page, used->idx, SET_VRING_BASE)
            pos = self.state.start(self.datapath, self.memory.regions, ring.index, self.packed, ring)
        except ConfigError as exc:      # the front-end's ring cannot be used as given: its violation
            raise ProtocolError(f"ring {ring.index}: {exc}") from None
        ring.base, ring.running = pos, True

    def _configure_datapath(self) -> None:
        acked = self.acked or 0
        guest_gso = acked & mask(*GUEST_GSO)
        rx_max = NET_HDR_LEN + (GSO_MAX if guest_gso else self.config.mtu + 18)
        self.datapath.configure(mrg_rxbuf=self._acked(F.NET_F_MRG_RXBUF), event_idx=self._acked(F.RING_F_EVENT_IDX),
                                indirect=self._acked(F.RING_F_INDIRECT_DESC), rx_max=rx_max,
                                fault_exit=self.config.fault_exit, packed=self.packed,
                                in_order=self._acked(F.F_IN_ORDER))


# -- handlers: one per request ----------------------------------------------------------------------------
def get_features_exec(b: Backend, msg: P.Message) -> bytes:
    return P.encode_u64(b.offered)


def set_features_exec(b: Backend, msg: P.Message) -> None:
    features = P.decode_u64(msg)
    extra = features & ~b.offered
    if extra:
        raise ProtocolError(f"SET_FEATURES acks bits never offered: {extra:#x}")
    check_dependencies(features)
    log_all = bool(features & bit(F.VHOST_F_LOG_ALL))
    if b.rings_running and features != b.acked:
        if features ^ (b.acked or 0) != bit(F.VHOST_F_LOG_ALL):
            raise ProtocolError("SET_FEATURES changed the features while rings were running")
        b.acked = features      # migration starts or ends: only logging changes, the rings go on
        b.datapath.set_log_all(log_all)
        log.info("dirty logging %s while rings run", "on" if log_all else "off")
        return
    b.acked = features
    b.datapath.set_log_all(log_all)
    if not features & bit(F.F_VERSION_1):
        log.warning("the driver did not accept VIRTIO_F_VERSION_1 (features %#x)", features)
    else:
        b._configure_datapath()
    if not features & bit(F.VHOST_USER_F_PROTOCOL_FEATURES):
        enable_at_start(b, b.rings)
    for ring in b.rings:
        b._maybe_start(ring)


def set_owner_exec(b: Backend, msg: P.Message) -> None:
    return None


def reset_owner_exec(b: Backend, msg: P.Message) -> None:
    for ring in b.rings:
        b._stop(ring)
        ring.reset()
    b.acked = None
    b._drop_log()


def get_protocol_features_exec(b: Backend, msg: P.Message) -> bytes:
    return P.encode_u64(RUN_PROTOCOL_FEATURES)


def set_protocol_features_exec(b: Backend, msg: P.Message) -> None:
    features = P.decode_u64(msg)
    if features & ~RUN_PROTOCOL_FEATURES:
        raise ProtocolError(f"SET_PROTOCOL_FEATURES acks bits never offered: {features & ~RUN_PROTOCOL_FEATURES:#x}")
    b.protocol_acked = features


def get_queue_num_exec(b: Backend, msg: P.Message) -> bytes:
    return P.encode_u64(1)


def set_status_exec(b: Backend, msg: P.Message) -> None:
    status = P.decode_u64(msg)
    if status > 0xFF:
        raise ProtocolError(f"SET_STATUS: {status:#x} is not a device status byte")
    b.status = status


def get_status_exec(b: Backend, msg: P.Message) -> bytes:
    return P.encode_u64(b.status)


def set_log_base_exec(b: Backend, msg: P.Message) -> bytes:
    """Map the new log, switch the core to it, unmap the old one, and reply (always: QEMU waits for
    one reply whenever LOG_SHMFD is negotiated, NEED_REPLY or not; a u64 0 also satisfies front-ends
    that read it as an ack). After the reply nothing is written into the old log."""
    try:
        if not b.protocol_acked & bit(PF.LOG_SHMFD):
            raise ProtocolError("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated")
        new = DirtyLog(P.decode_log(msg), msg.fds[0])
    finally:
        close_fds(msg.fds)     # the mapping stays valid without the fd
    try:
        b.datapath.set_log(new.view)
    except BaseException:
        new.close()
        raise
    old, b.log = b.log, new
    if old is not None:
        old.close()
    log.info("dirty log: %d bytes at offset %d", new.size, new.offset)
    b._check_log_coverage()
    return P.encode_u64(0)


def set_log_fd_exec(b: Backend, msg: P.Message) -> None:
    """The eventfd a back-end may signal after log writes: QEMU 7.2 never sends it and never reads one
    for vhost-user; accepted and closed (as DPDK does)."""
    close_fds(msg.fds)


def send_rarp_exec(b: Backend, msg: P.Message) -> None:
    """Announce the guest's MAC on the host side after a migration: one RARP broadcast (as QEMU's
    self-announce builds it) written to the host fd, behind the fd's own vnet header (zeroed: no offload).
    Best effort: a full or failing host fd, a stream host fd or a bogus MAC skip the frame with a log
    line, never end the worker (the guest keeps running; only the switch's learning is delayed)."""
    if not b.protocol_acked & bit(PF.RARP):
        raise ProtocolError("SEND_RARP without VHOST_USER_PROTOCOL_F_RARP negotiated")
    mac = P.decode_rarp_mac(msg)
    host = b.hostfd
    if mac[0] & 1 or not any(mac):
        b.rarp["skipped"] += 1
        log.warning("SEND_RARP: %s is not a unicast MAC: no announce sent", mac.hex(":"))
        return
    if host.stream or host.fd < 0:
        b.rarp["skipped"] += 1
        log.info("SEND_RARP for %s: the host fd is %s, announce not sent", mac.hex(":"),
                 "a stream" if host.fd >= 0 else "closed")
        return
    # the header the fd carries now, as the datapath has it (a --packet socket can switch its vnet
    # header off with the offloads)
    frame = bytes(b.datapath.host_hdr_len) + P.rarp_frame(mac)
    try:
        os.write(host.fd, frame)
    except OSError as exc:
        b.rarp["dropped"] += 1
        log.warning("SEND_RARP for %s: writing the announce to %s failed: %s", mac.hex(":"), host.name, exc)
        return
    b.rarp["sent"] += 1
    log.info("SEND_RARP: announced %s on %s", mac.hex(":"), host.name)


def _no_fds(b: Backend, msg: P.Message) -> int:
    return 0


def _one_fd(b: Backend, msg: P.Message) -> int:
    return 1


def _vring_fds(b: Backend, msg: P.Message) -> int:
    return 0 if P.decode_vring_file(msg).nofd else 1


HANDLERS: dict[int, tuple[Callable[[Backend, P.Message], bytes | None], Callable[[Backend, P.Message], int]]] = {
    Req.GET_FEATURES: (get_features_exec, _no_fds),
    Req.SET_FEATURES: (set_features_exec, _no_fds),
    Req.SET_OWNER: (set_owner_exec, _no_fds),
    Req.RESET_OWNER: (reset_owner_exec, _no_fds),
    Req.GET_PROTOCOL_FEATURES: (get_protocol_features_exec, _no_fds),
    Req.SET_PROTOCOL_FEATURES: (set_protocol_features_exec, _no_fds),
    Req.GET_QUEUE_NUM: (get_queue_num_exec, _no_fds),
    Req.SET_MEM_TABLE: (set_mem_table_exec, region_fds),
    Req.SET_VRING_NUM: (set_vring_num_exec, _no_fds),
    Req.SET_VRING_ADDR: (set_vring_addr_exec, _no_fds),
    Req.SET_VRING_BASE: (set_vring_base_exec, _no_fds),
    Req.GET_VRING_BASE: (get_vring_base_exec, _no_fds),
    Req.SET_VRING_KICK: (set_vring_kick_exec, _vring_fds),
    Req.SET_VRING_CALL: (set_vring_call_exec, _vring_fds),
    Req.SET_VRING_ERR: (set_vring_err_exec, _vring_fds),
    Req.SET_VRING_ENABLE: (set_vring_enable_exec, _no_fds),
    Req.SET_STATUS: (set_status_exec, _no_fds),
    Req.GET_STATUS: (get_status_exec, _no_fds),
    Req.SET_LOG_BASE: (set_log_base_exec, _one_fd),
    Req.SET_LOG_FD: (set_log_fd_exec, _one_fd),
    Req.SEND_RARP: (send_rarp_exec, _no_fds),
    Req.GET_MAX_MEM_SLOTS: (get_max_mem_slots_exec, _no_fds),
    Req.ADD_MEM_REG: (add_mem_reg_exec, _one_fd),
    Req.REM_MEM_REG: (rem_mem_reg_exec, rem_fds),
}

"""The ring requests of backend.py's handler table: SET_VRING_NUM / ADDR / BASE / KICK / CALL / ERR / ENABLE
and GET_VRING_BASE, one handler each (`<request>_exec`). Each checks the ring index (this back-end serves
one queue pair: rings 0 and 1), the size, alignment and position rules of the acked ring layout, stops a
ring its message changes and starts it again once it is ready (Backend._maybe_start). `b` is a
backend.Backend; the fd-count rules are the table's.
"""
from __future__ import annotations

import logging
import os
import stat

from ..vhostuser import protocol as P
from ..vhostuser.channel import close_fds
from .datapath import packed_positions, ring_size_ok
from ..errors import ConfigError, ProtocolError
from ..spec import MAX_QUEUE_SIZE, VRING_F_LOG, Feature as F, bit
from .vring import RingState

log = logging.getLogger("vhostsplice")


def set_vring_num_exec(b, msg: P.Message) -> None:
    state = P.decode_vring_state(msg)
    ring = b._ring(state.index)
    num = state.num     # virtio 1.2, 2.7: a power of 2, at most 32768 (0 would mean no ring at all); 2.8: packed any
    if not ring_size_ok(num, b.packed):
        rule = "in" if b.packed else "is not a power of 2 in"
        raise ProtocolError(f"SET_VRING_NUM: ring {state.index} size {num} {rule} 1..{MAX_QUEUE_SIZE}")
    b._stop(ring)
    ring.num = num


def set_vring_addr_exec(b, msg: P.Message) -> None:
    addr = P.decode_vring_addr(msg)
    ring = b._ring(addr.index)
    if addr.flags & ~bit(VRING_F_LOG):
        raise ProtocolError(f"SET_VRING_ADDR: ring {addr.index} has unknown flags {addr.flags:#x}")
    if addr.desc % 16 or addr.avail % 2 or addr.used % 4:    # virtio 1.2, 2.7: the rings' alignment
        raise ProtocolError(f"SET_VRING_ADDR: ring {addr.index} misaligned (desc {addr.desc:#x} needs 16,"
                            f" avail {addr.avail:#x} 2, used {addr.used:#x} 4)")
    log_used = bool(addr.flags & bit(VRING_F_LOG))
    old = ring.addr
    if ring.running and old is not None and (old.desc, old.used, old.avail) == (addr.desc, addr.used, addr.avail):
        ring.addr = addr        # migration turns used-ring logging on or off: the ring keeps its position
        b.datapath.set_ring_log(ring.index, log_used, addr.log)
        return
    b._stop(ring)
    ring.addr = addr
    b.datapath.set_ring_log(ring.index, log_used, addr.log)
    b._maybe_start(ring)


def set_vring_base_exec(b, msg: P.Message) -> None:
    state = P.decode_vring_state(msg)
    ring = b._ring(state.index)
    if b.packed:        # bits 0-14 avail index, 15 its wrap counter, 16-30 used index, 31 its wrap counter
        try:
            packed_positions(state.num, ring.num or MAX_QUEUE_SIZE)
        except ConfigError as exc:
            raise ProtocolError(f"SET_VRING_BASE: ring {state.index}: {exc}") from None
    elif state.num > 0xFFFF:
        raise ProtocolError(f"SET_VRING_BASE: index {state.num} does not fit a split ring")
    b._stop(ring)
    ring.base = state.num


def get_vring_base_exec(b, msg: P.Message) -> bytes:
    state = P.decode_vring_state(msg)
    ring = b._ring(state.index)
    base = b._stop(ring)
    b.state.retire(ring.index)      # the front-end has the positions now
    ring.kicked = False
    ring.replace_fd("kick_fd", None)
    return P.encode_vring_state(P.VringState(ring.index, base))


def _is_eventfd(fd: int) -> bool:
    """An eventfd is an anonymous inode: fstat shows no file type (a pipe, socket or file has one). fstat,
    not /proc/self/fd: a confined worker has no file system (and no readlink)."""
    return stat.S_IFMT(os.fstat(fd).st_mode) == 0


def _vring_file(b, msg: P.Message, attr: str, eventfd_only: bool = False) -> RingState:
    vf = P.decode_vring_file(msg)
    try:
        ring = b._ring(vf.index)
        if eventfd_only and not vf.nofd and not _is_eventfd(msg.fds[0]):
            raise ProtocolError(f"{msg.name}: the fd is not an eventfd")
    except ProtocolError:
        close_fds(msg.fds)
        raise
    ring.replace_fd(attr, None if vf.nofd else msg.fds[0])
    return ring


def set_vring_kick_exec(b, msg: P.Message) -> None:
    """A kick fd must be an eventfd: epoll refuses a regular file (EPERM) and a pipe or socket's read is
    not the 8-byte counter, which ended the worker on an OSError, outside the exit-code table and without
    its exit statistics."""
    ring = _vring_file(b, msg, "kick_fd", eventfd_only=True)
    b._stop(ring)
    ring.kicked = True
    if not (b.acked or 0) & bit(F.VHOST_USER_F_PROTOCOL_FEATURES):
        enable_at_start(b, [ring])
    b._maybe_start(ring)


def enable_at_start(b, rings: list[RingState]) -> None:
    """Without protocol features a ring is enabled as soon as it starts; a pair the front-end had
    disabled (SET_VRING_ENABLE 0) counts as enabled again."""
    for ring in rings:
        ring.enabled = True
    if b.pair_enabled is False:
        b.pair_enabled = True


def set_vring_call_exec(b, msg: P.Message) -> None:
    """A new call fd for a running ring (a front-end reconnecting, or switching its interrupt) is
    signalled once: used entries published before it came would otherwise wait, unannounced, for the
    next batch (libvhost-user does the same against an I/O hang after a reconnect)."""
    ring = _vring_file(b, msg, "call_fd")
    if ring.running:
        b.datapath.set_call_fd(ring.index, _fd(ring.call_fd))
        _signal_once(ring)


def _signal_once(ring: RingState) -> None:
    """Write 1 to the ring's call fd if it is an eventfd (never block on a pipe or socket a hostile
    front-end passed instead: those are left alone with a warning); a failing write is logged. Another
    anonymous inode (a timerfd, signalfd) refuses the write with EINVAL, which is logged."""
    fd = ring.call_fd
    if fd is None:
        return
    try:
        if not _is_eventfd(fd):
            log.warning("ring %d: the call fd is not an eventfd: not signalled", ring.index)
            return
        os.eventfd_write(fd, 1)
    except OSError as exc:
        log.warning("ring %d: signalling the new call fd failed: %s", ring.index, exc)


def set_vring_err_exec(b, msg: P.Message) -> None:
    ring = _vring_file(b, msg, "err_fd")
    if ring.running:
        b.datapath.set_err_fd(ring.index, _fd(ring.err_fd))


def set_vring_enable_exec(b, msg: P.Message) -> None:
    state = P.decode_vring_state(msg)
    ring = b._ring(state.index)
    if state.num not in (0, 1):
        raise ProtocolError(f"SET_VRING_ENABLE: value {state.num} is neither 0 nor 1")
    ring.enabled = bool(state.num)
    pair = any(r.enabled for r in b.rings)
    if pair or b.pair_enabled is not None:     # disabling a pair never enabled leaves its queue alone
        b.pair_enabled = pair
    if ring.enabled:
        b._maybe_start(ring)
    else:
        b._stop(ring)


def _fd(fd: int | None) -> int:
    return -1 if fd is None else fd

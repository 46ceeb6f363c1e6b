"""`vhostsplice serve`, the front-end's side: what the device answers itself, and where the rest goes.

`ServeDevice` is the device's state (features, protocol features, status, the requests kept for
replacements, the memory table) and its answers; the supervisor (supervisor.py) hands it each message
from the front-end, and it reaches the workers only through a `WorkerSide` (pairs.py's Workers: start a
pair's worker, send to it, read its reply, the pair list). Device-wide requests (features, protocol
features, GET_QUEUE_NUM, status, SET_LOG_FD) are answered here. SET_OWNER, RESET_OWNER, SET_MEM_TABLE
and SET_FEATURES go to every worker and are kept for replacements; so do the memory slots' ADD_MEM_REG /
REM_MEM_REG (checked here as a worker would, the table kept as it stands: device_memory.py). A ring
request for device ring 2k+j goes to worker k as ring j, with the index rewritten. SET_LOG_BASE goes to
every worker and is answered once all have it; SEND_RARP goes out through one worker. An ack
(REPLY_ACK) for a forwarded request is sent only once every worker has applied it (`barrier`). A new
worker is told everything that concerns it (`replay`) before any of its rings runs.
"""
from __future__ import annotations

import logging
from typing import Protocol, Sequence

from ..vhostuser import protocol as P
from ..device.features import RUN_PROTOCOL_FEATURES, offered_features
from ..vhostuser.channel import Channel, close_fd, close_fds
from ..errors import ProtocolError
from ..device.memory import DirtyLog
from ..spec import MAX_MEM_SLOTS, Feature as F, ProtocolFeature as PF, Req, bit
from .device_memory import DeviceMemory, same_file
from .pairs import Pair


log = logging.getLogger("vhostsplice")
DEVICE_ONLY = bit(F.NET_F_MQ)                  # answered here; never shown to a worker
RING_REQUESTS = {Req.SET_VRING_NUM, Req.SET_VRING_ADDR, Req.SET_VRING_BASE, Req.GET_VRING_BASE,
                 Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR, Req.SET_VRING_ENABLE}
BROADCAST = {Req.SET_OWNER, Req.RESET_OWNER, Req.SET_MEM_TABLE}
# serve offers what run offers, migration included: every worker logs into the one dirty log (atomic
# ORs into shared memory), and the first running worker sends the RARP announce.
PROTOCOL_FEATURES = RUN_PROTOCOL_FEATURES
# the protocol bits a worker must know were acked
WORKER_PROTOCOL = bit(PF.LOG_SHMFD) | bit(PF.RARP) | bit(PF.CONFIGURE_MEM_SLOTS)
MEM_SLOT_REQUESTS = {Req.ADD_MEM_REG, Req.REM_MEM_REG}
# what a new worker is told of each of its rings, in this order
REPLAY_ORDER = (Req.SET_VRING_NUM, Req.SET_VRING_ADDR, Req.SET_VRING_BASE, Req.SET_VRING_CALL, Req.SET_VRING_ERR,
                Req.SET_VRING_KICK, Req.SET_VRING_ENABLE)


def ring_index(msg: P.Message) -> int:
    """The device ring a per-ring request names (vhost-user.rst: a vring state/address starts with it;
    KICK/CALL/ERR carry it in the low byte of a u64)."""
    if msg.request in (Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR):
        return P.decode_vring_file(msg).index
    if msg.request == Req.SET_VRING_ADDR:
        return P.decode_vring_addr(msg).index
    return P.decode_vring_state(msg).index


def ring_payload(request: int, payload: bytes, index: int) -> bytes:
    """The same request with the ring index rewritten (index is the first u32, or the low byte of a u64)."""
    if request in (Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR):
        value = int.from_bytes(payload, "little")
        return ((value & ~0xFF) | index).to_bytes(8, "little")
    return index.to_bytes(4, "little") + payload[4:]


class WorkerSide(Protocol):
    """What the device needs of the worker side: pairs.Workers in serve, testing/workers.py's fake in tests."""

    pairs: Sequence[Pair]

    def start(self, pair: Pair) -> None:
        """Start the pair's worker (the device then replays to it)."""

    def send(self, pair: Pair, request: int, payload: bytes, fds: Sequence[int] = ()) -> None:
        """Send a request to the pair's worker (nothing if it has none: it is told in replay)."""

    def reply(self, pair: Pair, request: int) -> P.Message | None:
        """The pair's worker's reply to `request`; None if it has none or it went away."""


class ServeDevice:
    """The multi-queue device `serve` is to the front-end: `handle` each message from it."""

    def __init__(self, workers: WorkerSide, *, queues: int, offloads: bool, packed: bool):
        self.workers = workers
        self.queues, self.offloads, self.packed = queues, offloads, packed
        self.front: Channel | None = None        # the front-end (the supervisor accepts it): replies go here
        self.features = 0
        self.protocol_acked = 0
        self.status = 0
        self.kept: dict[int, tuple] = {}         # SET_OWNER, RESET_OWNER, SET_LOG_BASE -> (payload, fds)
        self.memory = DeviceMemory()             # SET_MEM_TABLE and the regions added since

    @property
    def pairs(self) -> Sequence[Pair]:
        return self.workers.pairs

    def start_worker(self, pair: Pair) -> None:
        """Start the pair's worker and tell it everything it must know."""
        self.workers.start(pair)
        self.replay(pair)

    def replay(self, pair: Pair) -> None:
        """Tell a (new) worker everything the front-end has said that concerns it, in protocol order."""
        send = self.workers.send
        if Req.SET_OWNER in self.kept:
            send(pair, Req.SET_OWNER, *self.kept[Req.SET_OWNER])
        if self.protocol_acked & WORKER_PROTOCOL:
            send(pair, Req.SET_PROTOCOL_FEATURES, P.encode_u64(self.protocol_acked & WORKER_PROTOCOL))
        if self.features:
            send(pair, Req.SET_FEATURES, P.encode_u64(self.features & ~DEVICE_ONLY))
        for request, payload, fds in self.memory.replay():     # SET_MEM_TABLE, then the regions added
            send(pair, request, payload, fds)
        if Req.SET_LOG_BASE in self.kept:
            send(pair, Req.SET_LOG_BASE, *self.kept[Req.SET_LOG_BASE])
            self.workers.reply(pair, Req.SET_LOG_BASE)
        for j in (0, 1):
            for req in REPLAY_ORDER:
                if (req, j) in pair.told:
                    payload, fd = pair.told[(req, j)]
                    send(pair, req, payload, (fd,) if fd is not None else ())

    def rings_live(self) -> bool:
        """A ring of the device was started (SET_VRING_KICK) and not stopped since (GET_VRING_BASE)."""
        return any((Req.SET_VRING_KICK, j) in p.told for p in self.pairs for j in (0, 1))

    def close(self) -> None:
        """Close every fd the device keeps: the requests kept for replacements and each pair's ring fds."""
        for pair in self.pairs:
            for _payload, fd in pair.told.values():
                close_fd(fd)
        for _payload, fds in self.kept.values():
            close_fds(fds)
        self.memory.close()

    def handle(self, msg: P.Message) -> None:
        req = msg.request
        local = LOCAL.get(req)
        if local is not None:
            close_fds(msg.fds)
            reply = local(self, msg)
            if reply is not None:
                self.front.send(req, reply, reply=True)
        elif req in RING_REQUESTS:
            self.forward_ring(msg)
        elif req in BROADCAST or req == Req.SET_FEATURES:
            self.broadcast(msg)
        elif req == Req.SET_LOG_BASE:
            self.set_log_base(msg)
            return                              # its reply is the answer (no separate ack)
        elif req == Req.SEND_RARP:
            self.send_rarp(msg)
        elif req in MEM_SLOT_REQUESTS:
            self.mem_slot(msg)
        else:
            close_fds(msg.fds)
            raise ProtocolError(f"{msg.name}: unsupported request")
        if local is None or LOCAL_ACKS.get(req):
            if local is None and msg.need_reply:
                self.barrier()
            self.ack(msg)

    def barrier(self) -> None:
        """Return once every running worker has applied what it was sent: a worker answers requests in
        order, so its reply to a GET_FEATURES means the messages before it took effect. An ack from
        serve then means what it means from run (QEMU relies on it: LOG_ALL on, the used ring logged,
        the new memory table in use, before it goes on). A worker that went away instead is not waited
        for: its replacement is told everything (replay) before any of its rings runs."""
        for pair in self.pairs:
            if pair.chan is not None:
                self.workers.send(pair, Req.GET_FEATURES, b"")
                self.workers.reply(pair, Req.GET_FEATURES)

    def ack(self, msg: P.Message) -> None:
        if msg.need_reply and self.protocol_acked & bit(PF.REPLY_ACK) and msg.request != Req.GET_VRING_BASE:
            self.front.send(msg.request, P.encode_u64(0), reply=True)

    def broadcast(self, msg: P.Message) -> None:
        payload = msg.payload
        if msg.request == Req.SET_FEATURES:
            self.features = P.decode_u64(msg)
            payload = P.encode_u64(self.features & ~DEVICE_ONLY)
            if self.features & ~(self.offered()):
                raise ProtocolError(f"SET_FEATURES acks bits never offered: {self.features & ~self.offered():#x}")
        elif msg.request == Req.SET_MEM_TABLE:     # the whole table anew: regions added before are gone
            self.memory.set_table(payload, msg.fds)
        else:
            old = self.kept.get(msg.request)
            if old:
                close_fds(old[1])
            self.kept[msg.request] = (payload, msg.fds)
            if msg.request == Req.RESET_OWNER:      # workers drop their log and features: so does serve
                self.features = 0
                log_base = self.kept.pop(Req.SET_LOG_BASE, None)
                if log_base:
                    close_fds(log_base[1])
        for pair in self.pairs:
            self.workers.send(pair, msg.request, payload, msg.fds)

    def forward_ring(self, msg: P.Message) -> None:
        try:
            ring = ring_index(msg)
        except ProtocolError:
            close_fds(msg.fds)
            raise
        if not 0 <= ring < 2 * self.queues or len(msg.fds) > 1:
            close_fds(msg.fds)
            raise ProtocolError(f"{msg.name}: ring {ring} is not one of this device's {2 * self.queues}")
        pair, j = self.pairs[ring // 2], ring % 2
        payload = ring_payload(msg.request, msg.payload, j)
        fd = msg.fds[0] if msg.fds else None
        old = pair.told.pop((msg.request, j), None)
        if old and old[1] is not None:
            close_fd(old[1])
        if msg.request == Req.GET_VRING_BASE:
            self.get_vring_base(pair, j, ring, payload)
            return
        pair.told[(msg.request, j)] = (payload, fd)
        if not pair.started:
            if self._enabled(pair):
                self.start_worker(pair)         # replays what it was told, this message included
            return
        self.workers.send(pair, msg.request, payload, (fd,) if fd is not None else ())

    def _enabled(self, pair: Pair) -> bool:
        """A ring of the pair is enabled: by SET_VRING_ENABLE 1, or (without VHOST_USER_F_PROTOCOL_FEATURES)
        by starting it with SET_VRING_KICK (vhost-user.rst, "Ring states").

        A pair's worker is started only then: it opens its own queue of the multi-queue tap, and the kernel
        steers host flows over every attached queue. A driver enables only some pairs (Linux: as many as
        it has CPUs, until `ethtool -L`); a queue attached for a pair it never enabled would swallow its
        share of the host's flows."""
        if not self.features & bit(F.VHOST_USER_F_PROTOCOL_FEATURES):
            return any((Req.SET_VRING_KICK, j) in pair.told for j in (0, 1))
        states = [pair.told.get((Req.SET_VRING_ENABLE, j)) for j in (0, 1)]
        return any(st is not None and P.decode_vring_state(P.Message(Req.SET_VRING_ENABLE, 0, st[0])).num
                   for st in states)

    def get_vring_base(self, pair: Pair, j: int, ring: int, payload: bytes) -> None:
        base = 0
        if not pair.started:                    # never ran: the ring is where the front-end put it
            told = pair.told.get((Req.SET_VRING_BASE, j))
            base = P.decode_vring_state(P.Message(Req.SET_VRING_BASE, 0, told[0])).num if told else 0
        kick = pair.told.pop((Req.SET_VRING_KICK, j), None)     # the ring is stopped: it starts on a new kick
        if kick and kick[1] is not None:
            close_fd(kick[1])
        if pair.chan is not None:
            self.workers.send(pair, Req.GET_VRING_BASE, payload)
            reply = self.workers.reply(pair, Req.GET_VRING_BASE)
            try:
                base = P.decode_vring_state(reply).num if reply is not None else 0
            except ProtocolError:
                base = 0
        pair.told[(Req.SET_VRING_BASE, j)] = (P.encode_vring_state(P.VringState(j, base)), None)
        self.front.send(Req.GET_VRING_BASE, P.encode_vring_state(P.VringState(ring, base)), reply=True)

    def offered(self) -> int:
        return device_offered(offloads=self.offloads, packed=self.packed)

    # -- memory slots ------------------------------------------------------------------------------------
    def mem_slot(self, msg: P.Message) -> None:
        """ADD_MEM_REG / REM_MEM_REG: checked against the device's table (device_memory.py), kept for
        replacements, sent to every running worker; a repeat (QEMU 7.2: once per queue pair) is counted."""
        negotiated = bool(self.protocol_acked & bit(PF.CONFIGURE_MEM_SLOTS))
        if negotiated and self.memory.repeat(msg):
            return
        if not negotiated:
            close_fds(msg.fds)
            raise ProtocolError(f"{msg.name} without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS negotiated")
        self.memory.change(msg)
        fds = msg.fds if msg.request == Req.ADD_MEM_REG else ()
        for pair in self.pairs:
            self.workers.send(pair, msg.request, msg.payload, fds)

    # -- migration ---------------------------------------------------------------------------------------
    def set_log_base(self, msg: P.Message) -> None:
        """One dirty log for the device: every running worker maps it (a replacement gets it in replay),
        and the front-end gets one reply once all have. QEMU 7.2 sends it once per queue pair, with the
        same memfd each time: a repeat of the log the workers already have is only answered."""
        try:
            if not self.protocol_acked & bit(PF.LOG_SHMFD):
                raise ProtocolError("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated")
            if len(msg.fds) != 1:
                raise ProtocolError(f"SET_LOG_BASE: {len(msg.fds)} file descriptors, expected 1")
            DirtyLog(P.decode_log(msg), msg.fds[0]).close()   # the checks run does, here: a log every
        except BaseException:                                  # worker would refuse is never kept
            close_fds(msg.fds)
            raise
        old = self.kept.get(Req.SET_LOG_BASE)
        if old and old[0] == msg.payload and same_file(old[1][0], msg.fds[0]):
            close_fds(msg.fds)
        else:
            if old:
                close_fds(old[1])
            self.kept[Req.SET_LOG_BASE] = (msg.payload, msg.fds)
            for pair in self.pairs:
                if pair.chan is not None:
                    self.workers.send(pair, Req.SET_LOG_BASE, msg.payload, msg.fds)
                    self.workers.reply(pair, Req.SET_LOG_BASE)
                    # no reply: the worker went away; its replacement gets the log in replay, before
                    # any of its rings runs, so no write of that pair goes unlogged
        self.front.send(Req.SET_LOG_BASE, P.encode_u64(0), reply=True)

    def send_rarp(self, msg: P.Message) -> None:
        """The announce after a move goes out once, through the first pair with a worker."""
        close_fds(msg.fds)
        if not self.protocol_acked & bit(PF.RARP):
            raise ProtocolError("SEND_RARP without VHOST_USER_PROTOCOL_F_RARP negotiated")
        if msg.fds or len(msg.payload) != 8:
            raise ProtocolError(f"SEND_RARP: {len(msg.payload)} bytes and {len(msg.fds)} fds, expected 8 and none")
        pair = next((p for p in self.pairs if p.chan is not None), None)
        if pair is None:
            log.info("SEND_RARP: no queue pair runs yet; announce not sent")
            return
        self.workers.send(pair, Req.SEND_RARP, msg.payload)


def device_offered(*, offloads: bool, packed: bool) -> int:
    """What serve offers: what its workers offer (device/features.py; offloads only while the tap carries
    a vnet header; never USO: serve does not probe its taps), plus MQ."""
    return offered_features(offloads=offloads, packed=packed) | DEVICE_ONLY


def _get_features(s: ServeDevice, msg) -> bytes:
    return P.encode_u64(s.offered())


def _get_protocol_features(s: ServeDevice, msg) -> bytes:
    return P.encode_u64(PROTOCOL_FEATURES)


def _set_protocol_features(s: ServeDevice, msg) -> None:
    value = P.decode_u64(msg)
    if value & ~PROTOCOL_FEATURES:
        raise ProtocolError(f"SET_PROTOCOL_FEATURES acks bits never offered: {value & ~PROTOCOL_FEATURES:#x}")
    s.protocol_acked = value
    for pair in s.pairs:
        if pair.chan is not None and value & WORKER_PROTOCOL:
            s.workers.send(pair, Req.SET_PROTOCOL_FEATURES, P.encode_u64(value & WORKER_PROTOCOL))


def _get_max_mem_slots(s: ServeDevice, msg) -> bytes:
    if not s.protocol_acked & bit(PF.CONFIGURE_MEM_SLOTS):
        raise ProtocolError("GET_MAX_MEM_SLOTS without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS negotiated")
    return P.encode_u64(MAX_MEM_SLOTS)


def _set_log_fd(s: ServeDevice, msg) -> None:
    """QEMU 7.2 never sends it for vhost-user; accepted (its fd is closed by handle), as run does."""
    if len(msg.fds) != 1:
        raise ProtocolError(f"SET_LOG_FD: {len(msg.fds)} file descriptors, expected 1")


def _get_queue_num(s: ServeDevice, msg) -> bytes:
    return P.encode_u64(s.queues)


def _set_status(s: ServeDevice, msg) -> None:
    s.status = P.decode_u64(msg) & 0xFF


def _get_status(s: ServeDevice, msg) -> bytes:
    return P.encode_u64(s.status)


LOCAL = {Req.GET_FEATURES: _get_features, Req.GET_PROTOCOL_FEATURES: _get_protocol_features,
         Req.SET_PROTOCOL_FEATURES: _set_protocol_features, Req.GET_QUEUE_NUM: _get_queue_num,
         Req.SET_STATUS: _set_status, Req.GET_STATUS: _get_status, Req.SET_LOG_FD: _set_log_fd,
         Req.GET_MAX_MEM_SLOTS: _get_max_mem_slots}
LOCAL_ACKS = {Req.SET_PROTOCOL_FEATURES: True, Req.SET_STATUS: True, Req.SET_LOG_FD: True}



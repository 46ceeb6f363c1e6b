"""Front-end misbehaviour on purpose: the one table of faults `vhostsplice drive --fault NAME` injects.

Each row says what the driver does, when (during set-up, or once both rings run and `--fault-after N`
frames went out), what the front-end itself sees of the worker's reaction, and what the worker must end
with: its exit code with the default `--on-guest-error=count`, its exit code with `--on-guest-error=exit`,
and the statistics field that proves it. The rows were measured against the real worker
(tests/integration/test_drive.py and tests/shell/faults.bats check every one of them); `drive
--list-faults` prints this table and nothing else defines it.

Reactions the front-end can see:
  ring-error   the ring's VRING_ERR eventfd fires and the worker closes the connection (ring broken)
  used-len-0   the bad chain comes back in the used ring with length 0 (counted; the worker goes on,
               or exits after completing it with --on-guest-error=exit)
  closed       the worker closes the connection (protocol violation, refused feature set)
  none         the front-end itself goes away; there is nothing to see
"""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import Callable

from ..vhostuser import protocol as P
from ..spec import Feature as F, Req, bit
from .virtq import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

RING_ERROR, USED_LEN_0, CLOSED, NONE = "ring-error", "used-len-0", "closed", "none"
SETUP, RUNNING = "setup", "running"
TX = 1


@dataclass(frozen=True)
class Fault:
    name: str
    text: str                          # what the driver does
    phase: str                         # SETUP (instead of a normal negotiation) or RUNNING (rings up)
    reaction: str                      # what the front-end sees (RING_ERROR, USED_LEN_0, CLOSED, NONE)
    exit: int | None                   # worker exit with --on-guest-error=count; None: it keeps serving
    exit_fault_exit: int | None        # worker exit with --on-guest-error=exit
    stat: str | None = None            # statistics field that proves it ("rings.tx.broken")
    value: object = None               # its value after the fault
    needs: int = 0                     # feature bits the driver must have acked
    drop_features: int = 0             # bits the driver refuses (SETUP faults)
    inject: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def fatal(self) -> bool:
        return self.exit is not None

    def row(self) -> dict:
        """The row as JSON-able data (drive --list-faults --json, the drive summary)."""
        return {"name": self.name, "phase": self.phase, "reaction": self.reaction,
                "exit": self.exit, "errno": _name(self.exit),
                "exit_on_guest_error_exit": self.exit_fault_exit,
                "errno_on_guest_error_exit": _name(self.exit_fault_exit),
                "stat": self.stat, "value": self.value, "text": self.text}


def _name(code: int | None) -> str | None:
    if code is None:
        return None
    return "OK" if code == 0 else errno.errorcode.get(code, str(code))


# -- injectors: each gets the started Frontend and a frame, does its damage and kicks -------------------
# They only use the driver's public ring API: a normal chain is built unpublished (so the driver's own
# bookkeeping stays right), then rewritten with raw_desc / raw_avail, then published.

def _desc(fe, index: int) -> tuple[int, int, int, int]:
    """(addr, len, flags, next) of descriptor `index` of the TX ring."""
    return struct.unpack("<QIHH", fe.mem.read(fe.tx.desc_gpa + 16 * index, 16))


def _publish(fe) -> None:
    fe.tx.publish()
    fe.notify(TX)


def inject_descriptor_loop(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], split=2, publish=False)
    addr, length, flags, second = _desc(fe, head)
    b_addr, b_len, _f, _n = _desc(fe, second)
    fe.tx.raw_desc(second, b_addr, b_len, DESC_F_NEXT, head)         # second -> head -> second ...
    _publish(fe)
    return {"head": head, "descriptors": [head, second]}


def inject_next_out_of_range(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    addr, length, _f, _n = _desc(fe, head)
    fe.tx.raw_desc(head, addr, length, DESC_F_NEXT, fe.tx.num + 5)
    _publish(fe)
    return {"head": head, "next": fe.tx.num + 5}


def inject_avail_idx_jump(fe, frame: bytes) -> dict:
    jump = fe.tx.num + 1
    fe.tx.set_avail_idx(fe.tx.avail_idx + jump)
    fe.notify(TX)
    return {"avail_idx": fe.tx.avail_idx, "jump": jump}


def inject_head_out_of_range(fe, frame: bytes) -> dict:
    slot = fe.tx.avail_idx
    fe.tx.raw_avail(slot % fe.tx.num, fe.tx.num)
    fe.tx.set_avail_idx(slot + 1)
    fe.notify(TX)
    return {"head": fe.tx.num}


def inject_address_outside_memory(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    _addr, length, flags, nxt = _desc(fe, head)
    bad = fe.mem.gpa_base + fe.mem.size + (1 << 20)
    fe.tx.raw_desc(head, bad, length, flags, nxt)
    _publish(fe)
    return {"head": head, "addr": f"{bad:#x}"}


def inject_wrong_direction(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    addr, length, flags, nxt = _desc(fe, head)
    fe.tx.raw_desc(head, addr, length, flags | DESC_F_WRITE, nxt)
    _publish(fe)
    return {"head": head}


def inject_short_chain(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    addr, _length, flags, nxt = _desc(fe, head)
    fe.tx.raw_desc(head, addr, 4, flags, nxt)                          # shorter than the 12-byte header
    _publish(fe)
    return {"head": head, "len": 4}


def _table(fe, entries) -> int:
    table = fe.mem.alloc(16 * len(entries), 16)
    fe.mem.write(table, b"".join(struct.pack("<QIHH", *e) for e in entries))
    return table


def inject_chain_longer_than_ring(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    addr, length, _f, _n = _desc(fe, head)
    n = fe.tx.num + 1                     # virtio 1.2 2.7.5.3.1: no chain longer than the queue size
    entries = [(addr, 0, DESC_F_NEXT, i + 1) for i in range(n - 1)] + [(addr, length, 0, 0)]
    fe.tx.raw_desc(head, _table(fe, entries), 16 * n, DESC_F_INDIRECT, 0)
    _publish(fe)
    return {"head": head, "descriptors": n}


def inject_nested_indirect(fe, frame: bytes) -> dict:
    head, = fe.tx.add_out([frame], publish=False)
    addr, length, _f, _n = _desc(fe, head)
    inner = _table(fe, [(addr, length, 0, 0)])
    outer = _table(fe, [(inner, 16, DESC_F_INDIRECT, 0)])
    fe.tx.raw_desc(head, outer, 16, DESC_F_INDIRECT, 0)
    _publish(fe)
    return {"head": head}


def inject_vanish(fe, frame: bytes) -> dict:
    fe.chan.close()                       # rings running, no GET_VRING_BASE: as if the process died
    return {}


def inject_malformed_message(fe, frame: bytes) -> dict:
    fe.send_raw(Req.SET_VRING_NUM, struct.pack("<I", TX))           # 4 bytes where 8 are due
    return {"request": "SET_VRING_NUM", "size": 4}


def inject_unknown_request(fe, frame: bytes) -> dict:
    fe.send_raw(250, P.encode_u64(0))
    return {"request": 250}


def inject_wrong_fd_count(fe, frame: bytes) -> dict:
    fe.send_raw(Req.SET_VRING_CALL, P.encode_vring_file(TX), fds=(fe.call[TX], fe.call[0]))   # 2 where 1 is due
    return {"request": "SET_VRING_CALL", "fds": 2}


def inject_bad_ring_index(fe, frame: bytes) -> dict:
    fe.send_raw(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(2, fe.queue_size)))
    return {"request": "SET_VRING_NUM", "index": 2}


EBADMSG, EFAULT, EPROTO = errno.EBADMSG, errno.EFAULT, errno.EPROTO
INDIRECT = bit(F.RING_F_INDIRECT_DESC)

# The table. Order: ring corruption, per-chain faults, the connection, negotiation, protocol.
FAULTS: tuple[Fault, ...] = (
    Fault("descriptor-loop", "a two-descriptor TX chain whose second descriptor points back at the first",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "loop", inject=inject_descriptor_loop),
    Fault("next-out-of-range", "a TX descriptor whose next index lies past the ring",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "next", inject=inject_next_out_of_range),
    Fault("avail-idx-jump", "TX avail->idx moved ahead by the ring size + 1",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "avail_idx", inject=inject_avail_idx_jump),
    Fault("head-out-of-range", "a TX avail entry naming descriptor <ring size>",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "head", inject=inject_head_out_of_range),
    Fault("chain-longer-than-ring", "an indirect TX table of <ring size> + 1 chained descriptors",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "chain_len", needs=INDIRECT,
          inject=inject_chain_longer_than_ring),
    Fault("nested-indirect", "an indirect TX table whose entry is itself INDIRECT",
          RUNNING, RING_ERROR, EBADMSG, EBADMSG, "rings.tx.broken", "nested_indirect", needs=INDIRECT,
          inject=inject_nested_indirect),
    Fault("address-outside-memory", "a TX descriptor addressing 1 MiB past the end of guest memory",
          RUNNING, USED_LEN_0, None, EFAULT, "rings.tx.drops_fault", 1, inject=inject_address_outside_memory),
    Fault("wrong-direction", "a TX descriptor marked device-writable",
          RUNNING, USED_LEN_0, None, EFAULT, "rings.tx.drops_bad_desc", 1, inject=inject_wrong_direction),
    Fault("short-chain", "a TX chain of 4 bytes, shorter than the 12-byte virtio-net header",
          RUNNING, USED_LEN_0, None, EFAULT, "rings.tx.drops_short", 1, inject=inject_short_chain),
    Fault("vanish", "the front-end closes the connection while both rings run (no GET_VRING_BASE)",
          RUNNING, NONE, errno.ECONNRESET, errno.ECONNRESET, "errno", "ECONNRESET", inject=inject_vanish),
    Fault("no-version-1", "the driver refuses VIRTIO_F_VERSION_1 (acks the rest) and starts the rings",
          SETUP, CLOSED, errno.ENOTSUP, errno.ENOTSUP, "errno", "ENOTSUP", drop_features=bit(F.F_VERSION_1)),
    Fault("malformed-message", "SET_VRING_NUM with a 4-byte payload (8 are due)",
          RUNNING, CLOSED, EPROTO, EPROTO, "errno", "EPROTO", inject=inject_malformed_message),
    Fault("unknown-request", "request number 250, which no vhost-user version defines",
          RUNNING, CLOSED, EPROTO, EPROTO, "errno", "EPROTO", inject=inject_unknown_request),
    Fault("wrong-fd-count", "SET_VRING_CALL carrying 2 file descriptors (1 is due)",
          RUNNING, CLOSED, EPROTO, EPROTO, "errno", "EPROTO", inject=inject_wrong_fd_count),
    Fault("bad-ring-index", "SET_VRING_NUM for ring 2 (the worker serves rings 0 and 1)",
          RUNNING, CLOSED, EPROTO, EPROTO, "errno", "EPROTO", inject=inject_bad_ring_index),
)
BY_NAME: dict[str, Fault] = {f.name: f for f in FAULTS}


def get(name: str) -> Fault:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(BY_NAME)}") from None


def _code(code: int | None) -> str:
    return "- (serves on)" if code is None else f"{code} {_name(code)}"


def table_text() -> str:
    """The table as `drive --list-faults` prints it."""
    head = ("fault", "worker exit", "with --on-guest-error=exit", "proof in the worker's stats", "front-end sees")
    rows = [head] + [(f.name, _code(f.exit), _code(f.exit_fault_exit), _stat(f), f.reaction) for f in FAULTS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"{f.name}: {f.text}" for f in FAULTS]
    return "\n".join(lines)


def _stat(f: Fault) -> str:
    if f.stat is None:
        return "-"
    if isinstance(f.value, int) and not isinstance(f.value, bool):
        return f"{f.stat} == {f.value}"
    return f"{f.stat} == {f.value!r}".replace("'", '"')

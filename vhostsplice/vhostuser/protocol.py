"""vhost-user wire format only: bytes <-> frozen dataclasses, with syntax checks.

Every message is a 12-byte header (request u32, flags u32, size u32, little-endian) and `size` bytes of
payload (vhost-user.rst, "Message Specification"). Decoding checks sizes and field ranges that are pure
syntax; meaning (is this ring index ours? is this address mapped?) is checked by backend.py.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ProtocolError
from ..spec import FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION_MASK, MAX_PAYLOAD, MAX_REGIONS, VERSION, \
    VRING_IDX_MASK, VRING_NOFD_MASK, Req

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
MEM_REG = struct.Struct("<QQQQQ")     # ADD/REM_MEM_REG: u64 padding, then one region
LOG = struct.Struct("<QQ")


@dataclass(frozen=True)
class Header:
    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(frozen=True)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: tuple[int, ...] = field(default=())

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        return request_name(self.request)


@dataclass(frozen=True)
class VringState:
    index: int
    num: int


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class VringFile:
    """Payload of SET_VRING_KICK/CALL/ERR: a ring index and whether an fd comes with it."""

    index: int
    nofd: bool


@dataclass(frozen=True)
class MemRegion:
    gpa: int
    size: int
    uva: int
    mmap_offset: int


@dataclass(frozen=True)
class MemTable:
    regions: tuple[MemRegion, ...]


@dataclass(frozen=True)
class LogArea:
    """SET_LOG_BASE payload ("Log description"): the log is `size` bytes at `offset` of the fd."""

    size: int
    offset: int


def request_name(code: int) -> str:
    try:
        return Req(code).name
    except ValueError:
        return f"request {code}"


def decode_header(data: bytes) -> Header:
    if len(data) != HEADER.size:
        raise ProtocolError(f"short header: {len(data)} bytes")
    request, flags, size = HEADER.unpack(data)
    if flags & FLAG_VERSION_MASK != VERSION:
        raise ProtocolError(f"{request_name(request)}: unsupported version in flags {flags:#x}")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"{request_name(request)}: payload size {size} exceeds {MAX_PAYLOAD}")
    return Header(request, flags, size)


def encode(request: int, payload: bytes = b"", *, reply: bool = False, need_reply: bool = False) -> bytes:
    flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(int(request), flags, len(payload)) + payload


def _exact(msg: Message, st: struct.Struct) -> tuple:
    if len(msg.payload) != st.size:
        raise ProtocolError(f"{msg.name}: payload is {len(msg.payload)} bytes, expected {st.size}")
    return st.unpack(msg.payload)


def decode_u64(msg: Message) -> int:
    return _exact(msg, U64)[0]


def decode_rarp_mac(msg: Message) -> bytes:
    """SEND_RARP payload: a u64 whose first 6 bytes (in memory order) are the guest MAC (vhost-user.rst,
    "VHOST_USER_SEND_RARP"; QEMU memcpy()s the MAC into a zeroed u64). The last 2 bytes carry nothing."""
    _exact(msg, U64)
    return msg.payload[:6]


def encode_rarp_mac(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
    return mac + bytes(2)


ETH_P_RARP = 0x8035
RARP_FRAME_LEN = 60         # the Ethernet minimum without FCS, as QEMU's announce frame


def rarp_frame(mac: bytes) -> bytes:
    """A "request reverse" RARP broadcast announcing `mac` (RFC 903 layout on Ethernet: htype 1, ptype
    IPv4, hlen 6, plen 4, op 3; sender and target hardware address = mac, protocol addresses 0), padded
    to 60 bytes - the frame QEMU's self-announce sends for a NIC after a migration."""
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_RARP)
    rarp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
    return (eth + rarp).ljust(RARP_FRAME_LEN, b"\0")


def decode_vring_state(msg: Message) -> VringState:
    return VringState(*_exact(msg, VRING_STATE))


def decode_vring_addr(msg: Message) -> VringAddr:
    return VringAddr(*_exact(msg, VRING_ADDR))


def decode_vring_file(msg: Message) -> VringFile:
    value = decode_u64(msg)
    if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
        raise ProtocolError(f"{msg.name}: reserved bits set in {value:#x}")
    return VringFile(value & VRING_IDX_MASK, bool(value & VRING_NOFD_MASK))


def decode_mem_table(msg: Message) -> MemTable:
    """SET_MEM_TABLE: u32 nregions, u32 padding, then nregions x (gpa, size, uva, mmap_offset)."""
    if len(msg.payload) < MEM_HEADER.size:
        raise ProtocolError(f"{msg.name}: payload too short")
    count, _pad = MEM_HEADER.unpack_from(msg.payload)
    if not 1 <= count <= MAX_REGIONS:
        raise ProtocolError(f"{msg.name}: {count} regions (1..{MAX_REGIONS} allowed)")
    want = MEM_HEADER.size + count * MEM_REGION.size
    if len(msg.payload) != want:
        raise ProtocolError(f"{msg.name}: payload is {len(msg.payload)} bytes for {count} regions, expected {want}")
    regions = tuple(MemRegion(*MEM_REGION.unpack_from(msg.payload, MEM_HEADER.size + i * MEM_REGION.size))
                    for i in range(count))
    return MemTable(regions)


def decode_mem_reg(msg: Message) -> MemRegion:
    """ADD_MEM_REG / REM_MEM_REG ("Single memory region description"): u64 padding (any value, as
    QEMU leaves it), then gpa, size, uva, mmap_offset."""
    _pad, gpa, size, uva, offset = _exact(msg, MEM_REG)
    return MemRegion(gpa, size, uva, offset)


def encode_mem_reg(region: MemRegion) -> bytes:
    return MEM_REG.pack(0, region.gpa, region.size, region.uva, region.mmap_offset)


def decode_log(msg: Message) -> LogArea:
    """SET_LOG_BASE: u64 mmap_size, u64 mmap_offset (16 bytes, whatever the spec's table says)."""
    return LogArea(*_exact(msg, LOG))


def encode_log(area: LogArea) -> bytes:
    return LOG.pack(area.size, area.offset)


def encode_u64(value: int) -> bytes:
    return U64.pack(value)


def encode_vring_state(state: VringState) -> bytes:
    return VRING_STATE.pack(state.index, state.num)


def encode_vring_addr(addr: VringAddr) -> bytes:
    return VRING_ADDR.pack(addr.index, addr.flags, addr.desc, addr.used, addr.avail, addr.log)


def encode_vring_file(index: int, nofd: bool = False) -> bytes:
    return U64.pack(index | (VRING_NOFD_MASK if nofd else 0))


def encode_mem_table(table: MemTable) -> bytes:
    body = b"".join(MEM_REGION.pack(r.gpa, r.size, r.uva, r.mmap_offset) for r in table.regions)
    return MEM_HEADER.pack(len(table.regions), 0) + body

"""Structure-aware differential fuzz target for the C core's split ring and datapath.

One input (bytes) decodes into a scenario: a region table over guard-paged guest memory, two rings
(RX 0, TX 1) of random size and placement, negotiated flags and budgets, then a sequence of operations
- the driver adds well-formed or hostile chains (descriptors, indirect tables, avail ring entries,
  avail->idx jumps, flags, used_event), scribbles over memory, the tap delivers packets,
- the device polls, rings stop and start, the memory table is replaced, features change.
Dirty logging (live migration) is on in the core, into a log that ends at a PROT_NONE page: the
reference does not model the log, so everything below must match as if it were off, and after each poll
every byte the core changed in guest memory (under the default table) must lie in a marked page.
Half the split-ring inputs (by a hash of the input, so decoding is unchanged) run the core's host fd
in io_uring batches (Datapath.enable_uring, vs_uring.c) against the same per-frame reference. There the
bytes of guest memory and of the packets on the wire are not compared (the packet lengths are): a batch
takes several chains before it reads or writes any, so RX buffers it gives back hold bytes one readv per
chain would not have written, and buffers a hostile driver laid over the used ring are read or written
before that chain's used entry rather than after it; after each check the reference takes the core's
memory. Everything else is compared as above, the dirty log check and the guard pages and sanitizers
hold, and a ring the batch broke on a chain it walked ahead of the per-frame path ends the input
(_walked_ahead). Byte-exact equality of the two paths on well-formed rings: tests/core/test_host_batch.py.
Every operation runs on the real core (through datapath.Datapath) and on ref.Pair, and everything
observable must match: the result or exception (class and errno), every counter, last_avail/used_idx,
the broken reason, every byte of guest memory, the packets on the wire, call and err eventfd counts.
A write outside guest memory hits a PROT_NONE guard page (SIGSEGV); ASan/UBSan, when the core was built
with them (run.py), catch the rest. `run_one(data)` raises Mismatch on any difference.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
import zlib
from dataclasses import dataclass

import ref
from vhostsplice.spec import MAX_MEM_SLOTS

PAGE = mmap.PAGESIZE
AREA_SIZES = (0x4000, 0x4000, 0x2000)
MAX_OPS = 48
GPA0, GPA1, GPA2 = 0x10_0000, 0x10_4000, (1 << 64) - 0x2000      # 0 and 1 contiguous; 2 at the top
UVA = (0x7F00_0010_0000, 0x7F00_0020_0000, 0x7F00_0030_0000)
RING_AREA = 0x2000          # area 0 below this offset holds the rings; buffers live above it
NUMS = (1, 2, 4, 8, 16, 16, 8, 4, 32, 64, 256, 0, 3, 48, 65536)
PKT_LENS = (0, 1, 11, 12, 13, 60, 64, 1526, 2048, 4096, 9000, 65562, 70000)
LENS = (0, 1, 11, 12, 13, 15, 16, 32, 64, 1500, 4096, 0x4000, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
        0xFFFFFFF0, 0xFFFFFFFF)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33    # asm-generic/socket.h (Python's socket module lacks them)
_PATTERN = bytes(range(256)) * 400        # packet contents: a slice of this at some offset
_RXBUF = bytearray(1 << 24)                # the tap's receive buffer (larger than any TX chain here)


class Mismatch(AssertionError):
    """The core and the reference disagree."""


class WalkedAhead(Exception):
    """The batched core broke its RX ring on a chain walked ahead of the frames (Scenario._walked_ahead)."""


@dataclass(frozen=True)
class Region:
    gpa: int
    uva: int
    size: int
    buf: memoryview


class Source:
    """The input bytes, read as the numbers a scenario is made of; past the end everything is 0."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little")

    def u8(self) -> int:
        return self.take(1)

    def u16(self) -> int:
        return self.take(2)

    def u32(self) -> int:
        return self.take(4)

    def u64(self) -> int:
        return self.take(8)

    def below(self, n: int) -> int:
        return self.u8() % n if n <= 256 else self.u32() % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")


class GuardedMemory:
    """Guest memory areas, each between PROT_NONE pages, in one anonymous mapping made once."""

    def __init__(self):
        spans = [((s + PAGE - 1) // PAGE) * PAGE for s in AREA_SIZES]
        total = PAGE + sum(s + PAGE for s in spans)
        self.map = mmap.mmap(-1, total, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        base = ctypes.addressof(self._anchor)
        view = memoryview(self.map)
        self.areas: list[memoryview] = []
        off = PAGE
        self._guard(base, 0)
        for size, span in zip(AREA_SIZES, spans):
            self.areas.append(view[off:off + size])
            self._guard(base, off + span)
            off += span + PAGE

    @staticmethod
    def _guard(base: int, off: int) -> None:
        if _libc.mprotect(base + off, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    def reset(self) -> None:
        for a in self.areas:
            a[:] = bytes(len(a))


_MEMORY: GuardedMemory | None = None
LOG_BYTES = (GPA1 + AREA_SIZES[1]) // 4096 // 8 + 1     # the default table's areas 0 and 1 (area 2 is past it)


class GuardedLog:
    """The dirty log: its last byte right before a PROT_NONE page, so a write past its end faults."""

    def __init__(self):
        self.map = mmap.mmap(-1, 2 * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        GuardedMemory._guard(ctypes.addressof(self._anchor), PAGE)
        self.view = memoryview(self.map)[PAGE - LOG_BYTES:PAGE]

    def pages(self) -> set[int]:
        return {i * 8 + b for i, byte in enumerate(bytes(self.view)) if byte for b in range(8) if byte >> b & 1}


_LOG: GuardedLog | None = None


def memory() -> GuardedMemory:
    global _MEMORY
    if _MEMORY is None:
        _MEMORY = GuardedMemory()
    return _MEMORY


def default_table() -> list[tuple]:
    return [(GPA0, UVA[0], AREA_SIZES[0], 0, 0, 0), (GPA1, UVA[1], AREA_SIZES[1], 1, 0, 0),
            (GPA2, UVA[2], AREA_SIZES[2], 2, 0, 0)]


def sliced(table: list, piece: int) -> list:
    """The table cut into `piece`-byte regions (more than 8: the core gets them sorted by gpa and searches
    by halves, the reference walks them), if no two regions overlap in gpa or uva and none wraps (where
    any lookup order finds the one region holding an address); else the table as it was."""
    for col in (0, 1):
        spans = sorted((r[col], r[col] + r[2]) for r in table)
        if any(e > ref.U64 + 1 for _s, e in spans) or any(b < a_end for (_a, a_end), (b, _e) in zip(spans, spans[1:])):
            return table
    return [[g + k, u + k, min(piece, size - k), a, o + k, (o + k) & 15]
            for g, u, size, a, o, _ in table for k in range(0, size, piece)]


class Scenario:
    """One decoded input running against the core and the reference side by side."""

    REF = ref.Pair          # the reference model of the ring layout this scenario drives
    URING = True            # may run the host fd in io_uring batches (split rings: _rx_ahead)

    def __init__(self, src: Source, dp_cls, max_len: int):
        self.src, self.max_len = src, max_len
        self.gm = memory()
        self.gm.reset()
        self.ref = self.REF(ref.Memory([bytearray(len(a)) for a in self.gm.areas]))
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.host, self.peer):
            s.setblocking(False)
            for force, opt in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:               # root: past wmem_max, so that no TX chain here ever meets EAGAIN
                    s.setsockopt(socket.SOL_SOCKET, force, 1 << 24)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, opt, 1 << 24)
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.err = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.uring = False          # the host fd in io_uring batches (_datapath decides)
        self.dp = self._datapath(dp_cls)
        self.log = None
        self.log_uva = [0, 0]       # the area QEMU names in log_guest_addr (vq->used_phys): split, the used ring
        if hasattr(self.dp, "set_log"):          # a core with dirty logging (API 4)
            global _LOG
            _LOG = _LOG or GuardedLog()
            self.log = _LOG
            self.log.view[:] = bytes(LOG_BYTES)
            self.dp.set_log(self.log.view)
            self.dp.set_log_all(True)
        self.layout: list[dict | None] = [None, None]
        self.rxbuf = _RXBUF
        self.features: set = set()

    def _datapath(self, dp_cls):
        """The host fd carries 12, 10 or 0 header bytes, where this core can do that (API 3)."""
        s = self.src
        host_hdr, empty_ok = s.pick((12, 12, 10, 0)), bool(s.below(2))
        try:
            dp = dp_cls(self.host.fileno(), host_hdr_len=host_hdr, empty_ok=empty_ok)
        except TypeError:
            return dp_cls(self.host.fileno())
        self.ref.omit, self.ref.empty_ok = ref.NET_HDR - host_hdr, empty_ok
        self.uring = self.URING and zlib.crc32(s.data) & 1 == 1 and hasattr(dp, "enable_uring")
        if self.uring and dp.enable_uring():
            self.uring = False      # no io_uring here (the per-frame path runs, as the reference's)
        return dp

    def close(self) -> None:
        self.dp.close()
        for fd in self.call + self.err:
            os.close(fd)
        self.host.close()
        if not self.ref.peer_closed:
            self.peer.close()

    # -- memory, as the driver writes it (both sides) -------------------------------------------
    def poke(self, area: int, off: int, data: bytes) -> None:
        data = data[:max(0, len(self.gm.areas[area]) - off)]
        self.gm.areas[area][off:off + len(data)] = data
        self.ref.mem.areas[area][off:off + len(data)] = data

    def region_objs(self, table) -> list[Region]:
        return [Region(g, u, s, self.gm.areas[a][o:o + s]) for g, u, s, a, o, _ in table]

    def gpa_of(self, area: int, off: int) -> int:
        """A guest address for (area, off) under the current table (a default one if none maps it)."""
        for g, _u, s, a, o, _ in self.ref.mem.table:
            if a == area and o <= off < o + s:
                return (g + off - o) & ref.U64
        return (GPA0, GPA1, GPA2)[area] + off & ref.U64

    def interesting_gpa(self) -> int:
        s = self.src
        table = self.ref.mem.table
        k = s.below(12)
        if k < 6 and table:
            g, _u, size, *_ = table[s.below(len(table))]
            return (g + (0, size - 1, size, -1, size - 16, size // 2)[k]) & ref.U64
        return (0, 0x1000, 1 << 32, ref.U64, ref.U64 - 15, s.u64())[k % 6]

    # -- checks -------------------------------------------------------------------------------------
    def _rx_ahead(self, i: int = 0) -> tuple[list[tuple[int, int, int]], str | None]:
        """Walk the chains of ring i (0 RX, 1 TX) the driver made available and the device has not used,
        without changing the reference: their buffers (area, offset, length) and the broken reason a walk
        would meet (or None). A batch takes several chains at once: it walks them before it knows the
        frames are there (RX) or that the host fd takes them (TX), and gives the unused ones back, whose
        RX buffers may then hold bytes one readv per chain would not have written."""
        r, out = self.ref.ring(i), []
        if not r.running or r.broken or r.avail is None or r.desc is None:
            return out, None
        saved = (r.broken, r.errs, r.at)
        try:
            pos = r.last_avail
            for _ in range(min((r.avail_idx(self.ref.mem) - pos) & 0xFFFF, r.num)):
                head = r.ld16(self.ref.mem, r.avail, 4 + 2 * (pos & (r.num - 1)))
                pos = (pos + 1) & 0xFFFF
                if head >= r.num:
                    return out, ref.BROKEN_NAMES[ref.HEAD]
                out += self.ref.walk(r, head, i == 0, 1 << 16)[1]
        except ref.Broken:
            return out, ref.BROKEN_NAMES.get(r.broken)
        finally:
            r.broken, r.errs, r.at = saved
        return out, None

    def _walked_ahead(self) -> bool:
        """A core batch broke a ring on a chain it walked ahead (of the frames, RX; of a write that failed,
        TX), which one readv/writev per chain reaches only later: the same reason, found by the same walk
        (then the scenario ends: from here every poll fails fast on both sides, only later)."""
        stats = self.dp.stats()
        return any(stats[name]["broken"] and not self.ref.ring(i).broken
                   and self._rx_ahead(i)[1] == stats[name]["broken"] for i, name in ((0, "rx"), (1, "tx")))

    def check(self, what: str, got, want) -> None:
        if self.uring and self._walked_ahead():
            self.features.add(("uring", "walked_ahead"))
            raise WalkedAhead(what)
        if got != want:
            raise Mismatch(f"{what}: core {got!r} != reference {want!r}")
        if self.uring:          # the batched path: no byte-for-byte memory check (see the module's docstring)
            for i, area in enumerate(self.gm.areas):
                self.ref.mem.areas[i][:] = area
            self.features.add(("uring", min(self.dp.host_io()["rx_copies"], 2)))
        for i, area in enumerate(self.gm.areas):
            real = bytes(area)
            if real != self.ref.mem.areas[i]:
                at = next(j for j, (x, y) in enumerate(zip(real, self.ref.mem.areas[i])) if x != y)
                raise Mismatch(f"{what}: guest memory area {i} differs at offset {at:#x}: core "
                               f"{real[at:at + 16].hex()} reference {bytes(self.ref.mem.areas[i][at:at + 16]).hex()}")
        core_stats = self.dp.stats()
        if core_stats != self.ref.stats():
            raise Mismatch(f"{what}: stats differ\n core {core_stats}\n  ref {self.ref.stats()}")
        for i, r in enumerate((self.ref.rx, self.ref.tx)):
            calls, errs = _drain(self.call[i]), _drain(self.err[i])
            if (calls, errs) != (r.calls, r.errs):
                raise Mismatch(f"{what}: ring {i} call/err eventfd {calls}/{errs}, reference {r.calls}/{r.errs}")
            r.calls = r.errs = 0
        wire = []
        while not self.ref.peer_closed:
            try:
                n = self.peer.recv_into(self.rxbuf, len(self.rxbuf), socket.MSG_TRUNC)
            except BlockingIOError:
                break
            wire.append(bytes(self.rxbuf[:n]))
        if (wire != self.ref.wire) if not self.uring else ([len(p) for p in wire] != [len(p) for p in self.ref.wire]):
            raise Mismatch(f"{what}: wire {[len(p) for p in wire]} != reference {[len(p) for p in self.ref.wire]}")
        self.ref.wire = []
        self.features.add((what.split(" ")[0], repr(got)[:40]))
        for ring, d in self.ref.stats().items():
            for k, v in d.items():
                if v and k not in ("last_avail_idx", "used_idx", "batches"):
                    self.features.add((ring, k, v if isinstance(v, str) else min(v, 4)))

    def call_core(self, fn, *args):
        try:
            return ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - the class and errno are what is compared
            code = getattr(exc, "errno", None)
            if type(exc).__name__ not in ("ConfigError", "GuestFaultError", "GuestRingError", "HostFdError"):
                raise Mismatch(f"undocumented exception from the core's Python side: {exc!r}") from exc
            return (type(exc).__name__, code)

    # -- set-up ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.src
        table = default_table()
        if s.below(4) == 0:
            table = table[:1 + s.below(3)]
        self.set_memory(table)
        self.configure()
        off = 0
        for i in (0, 1):
            num = s.pick(NUMS) if s.below(4) else self.usual_num()
            n = max(1, min(num, 256))
            desc = (off + 15) & ~15
            avail, used, off = self.areas_after(desc, n)
            self.layout[i] = {"num": num, "desc": desc, "avail": avail, "used": used, "next": 0, "pos": 0x8000}
            self.start(i, num, UVA[0] + desc, UVA[0] + avail, UVA[0] + used)
        self.layout_end = max(off, RING_AREA)

    def usual_num(self) -> int:
        return 16

    @staticmethod
    def areas_after(desc: int, n: int) -> tuple[int, int, int]:
        """Where the avail and used rings of n entries go after a descriptor table at desc, and their end."""
        avail = desc + 16 * n
        used = (avail + 6 + 2 * n + 3) & ~3
        return avail, used, used + 6 + 8 * n

    def configure(self) -> None:
        s = self.src
        flags = s.u8() & 7
        rx_max = s.pick((ref.NET_HDR + 1514, ref.NET_HDR, 13, 2048, 65562 + 12, 0xFFFFFFFF))
        budgets = (1, 2, 3, 8, 256)
        fault_exit, tx, rx = s.below(5) == 0, s.pick(budgets), s.pick(budgets)
        self.dp.configure(mrg_rxbuf=bool(flags & ref.RF_MRG), event_idx=bool(flags & ref.RF_EVENT_IDX),
                          indirect=bool(flags & ref.RF_INDIRECT), rx_max=rx_max, fault_exit=fault_exit,
                          tx_budget=tx, rx_budget=rx)
        self.ref.configure(flags, rx_max, int(fault_exit), tx, rx)
        self.check("configure", "ok", "ok")

    def set_memory(self, table) -> None:
        got = self.call_core(self.dp.set_memory, self.region_objs(table))
        if got[0] == "ok":
            got = ("ok", None)
        want = self.ref.set_memory(table) if len(table) <= MAX_MEM_SLOTS else ("ConfigError", 22)
        self.check("set_memory", got, want)

    def start(self, i: int, num: int, desc: int, avail: int, used: int) -> None:
        got = self.call_core(lambda: self.dp.start_ring(i, num=num, desc=desc, avail=avail, used=used,
                                                        call_fd=self.call[i], err_fd=self.err[i]))
        self.check(f"start {i}", got, self.ref.start(i, num, desc, avail, used))
        self.log_uva[i] = used

    # -- operations -----------------------------------------------------------------------------------
    def run(self) -> int:
        self.setup()
        ops = (self.op_chain, self.op_chain, self.op_chain, self.op_poll, self.op_poll, self.op_poll,
               self.op_raw_desc, self.op_avail, self.op_flags, self.op_inject, self.op_inject,
               self.op_restart, self.op_table, self.op_configure, self.op_scribble, self.op_indirect,
               self.op_chain, self.op_poll, self.op_inject, self.op_raw_desc, self.op_flags, self.op_peer_close)
        n = 0
        try:
            while not self.src.done and n < MAX_OPS:
                self.src.pick(ops)()
                n += 1
            self.op_poll()
        except WalkedAhead:
            pass
        return n

    def op_poll(self) -> None:
        before = [bytes(a) for a in self.gm.areas[:2]] if self.log is not None else None
        if before is not None:
            self.log.view[:] = bytes(LOG_BYTES)
            for i, used in enumerate(self.log_uva):      # as QEMU does: the used ring's (packed: device area's) GPA
                gpa = next(((g + used - u) & ref.U64 for g, u, sz, *_ in self.ref.mem.table if u <= used < u + sz),
                           used)
                self.dp.set_ring_log(i, True, gpa)
        self.ref.trickle = self.uring and self.dp.host_io()["path"] == "io_uring"     # still on: the rule applies
        self.check("poll", self.call_core(self.dp.poll), self.ref.poll())
        table = self.ref.mem.table
        if before is not None and len(table) >= 2 and table == default_table()[:len(table)]:
            self.check_logged(before)

    def check_logged(self, before: list[bytes]) -> None:
        """Every page of areas 0 and 1 (GPA0, GPA1 under the default table) the poll changed is marked."""
        marked = self.log.pages()
        for area, (gpa, old) in enumerate(zip((GPA0, GPA1), before)):
            new = bytes(self.gm.areas[area])
            for off in range(0, len(new), 4096):
                if new[off:off + 4096] != old[off:off + 4096] and (gpa + off) // 4096 not in marked:
                    raise Mismatch(f"poll: guest page at gpa {gpa + off:#x} (area {area}) written, not logged")
        self.features.add(("logged", min(len(marked), 4)))

    def _ring_loc(self, i: int):
        lay = self.layout[i]
        n = max(1, min(lay["num"], 256))
        return lay, n

    def _publish(self, i: int, heads: list[int]) -> None:
        lay, n = self._ring_loc(i)
        idx = struct.unpack_from("<H", self.gm.areas[0], lay["avail"] + 2)[0]
        for h in heads:
            self.poke(0, lay["avail"] + 4 + 2 * (idx % n), struct.pack("<H", h))
            idx = (idx + 1) & 0xFFFF
        self.poke(0, lay["avail"] + 2, struct.pack("<H", idx))

    def _desc(self, area: int, off: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.poke(area, off, struct.pack("<QIHH", addr & ref.U64, length & 0xFFFFFFFF, flags & 0xFFFF,
                                         nxt & 0xFFFF))

    def _buffer(self) -> tuple[int, int]:
        """A buffer (gpa, len) where the rings are not, mostly small, in any area."""
        s = self.src
        area = s.below(3)
        lo = self.layout_end if area == 0 else 0
        size = len(self.gm.areas[area])
        if lo >= size:
            area, lo, size = 1, 0, len(self.gm.areas[1])
        off = lo + s.below(size - lo)
        length = s.pick((1, 4, 10, 11, 12, 13, 60, 64, 100, 256, 1526, 2048, 4096))
        length = min(length, self.max_len, size - off)
        return self.gpa_of(area, off), length

    def op_chain(self) -> None:
        """A well-formed chain: direct or through an indirect table, 1..4 descriptors."""
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        count = 1 + s.below(4)
        write = ref.F_WRITE if i == 0 else 0
        pieces = self._pieces(i, count)
        if s.below(3) == 0:
            table_off = 16 * s.below(64)          # area 1, where buffers may overlap it (hostile, legal)
            for k, (gpa, length) in enumerate(pieces):
                last = k == count - 1
                self._desc(1, table_off, gpa, length, write | (0 if last else ref.F_NEXT), k + 1)
                table_off += 16
            table_gpa = self.gpa_of(1, table_off - 16 * count)
            head = lay["next"] % n
            self._desc(0, lay["desc"] + 16 * head, table_gpa, 16 * count, ref.F_INDIRECT, 0)
            lay["next"] += 1
        else:
            idxs = [(lay["next"] + k) % n for k in range(count)]
            lay["next"] += count
            for k, (gpa, length) in enumerate(pieces):
                last = k == count - 1
                self._desc(0, lay["desc"] + 16 * idxs[k], gpa, length, write | (0 if last else ref.F_NEXT),
                           idxs[(k + 1) % count])
            head = idxs[0]
        self._publish(i, [head])

    def _pieces(self, i: int, count: int) -> list[tuple[int, int]]:
        """count buffers (gpa, len) for a chain of ring i; TX ones hold a pattern (their first 64 bytes)."""
        pieces = [self._buffer() for _ in range(count)]
        if i == 1:
            for gpa, length in pieces:
                area_off = self._phys(gpa)
                if area_off:
                    self.poke(area_off[0], area_off[1], _PATTERN[gpa & 0xFF:(gpa & 0xFF) + min(length, 64)])
        return pieces

    def _phys(self, gpa: int):
        loc = self.ref.mem.gpa(gpa, 1)
        return None if loc is None else loc[:2]

    def op_raw_desc(self) -> None:
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        idx = s.below(n)
        length = s.pick(LENS) if s.below(2) else s.u32()
        self._desc(0, lay["desc"] + 16 * idx, self.interesting_gpa(), length, s.u8() if s.below(4) else s.u16(),
                   s.below(n + 2) if s.below(4) else s.u16())
        self.check("raw_desc", "ok", "ok")

    def op_avail(self) -> None:
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        heads = [s.below(n + 1) if s.below(8) else s.u16() for _ in range(s.below(4))]
        self._publish(i, heads)
        if s.below(8) == 0:
            self.poke(0, lay["avail"] + 2, struct.pack("<H", s.u16()))
        self.check("avail", "ok", "ok")

    def op_flags(self) -> None:
        s = self.src
        lay, n = self._ring_loc(s.below(2))
        k = s.below(3)
        where = (lay["avail"], lay["avail"] + 4 + 2 * n, lay["used"])[k]
        self.poke(0, where, struct.pack("<H", s.u16() if s.below(2) else s.below(2)))
        self.check("flags", "ok", "ok")

    def op_inject(self) -> None:
        s = self.src
        for _ in range(1 + s.below(3)) if not self.ref.peer_closed else ():
            n = s.pick(PKT_LENS) if s.below(4) else s.u16()
            seed = s.u8()
            pkt = _PATTERN[seed:seed + n]
            try:
                self.peer.send(pkt)
            except BlockingIOError:
                continue
            self.ref.inbox.append(pkt)
        self.check("inject", "ok", "ok")

    def op_peer_close(self) -> None:
        """The host fd's peer goes away (rarely: the fuzzer has to pick this op twice in a row)."""
        if self.src.below(2) or self.ref.peer_closed:
            return
        self.check("peer_close", "ok", "ok")
        self.peer.close()
        self.ref.peer_closed = True

    RESTART_KINDS = 8           # op_restart's ways of starting again (the packed scenario has two more)
    AREA_TAILS = (6, 4)         # bytes the avail and used areas end with (moved to the end of memory)

    def op_restart(self) -> None:
        s = self.src
        i = s.below(2)
        lay, _ = self._ring_loc(i)
        got = self.call_core(self.dp.stop_ring, i)
        state = self.ref.stop(i)
        self.check(f"stop {i}", got, ("ok", state))
        if s.below(4) == 0:
            return
        num = lay["num"] if s.below(2) else s.pick(NUMS)
        k = s.below(self.RESTART_KINDS)
        desc, avail, used = UVA[0] + lay["desc"], UVA[0] + lay["avail"], UVA[0] + lay["used"]
        if k == 1:
            desc += s.pick((1, 8, 0x4000, -16))
        elif k == 2:
            avail += s.pick((1, 2, 0x4000 - lay["avail"] - self.AREA_TAILS[0]))
        elif k == 3:
            used += s.pick((1, 2, 4, 0x4000 - lay["used"] - self.AREA_TAILS[1]))
        elif k == 4:
            desc, avail, used = s.u64(), s.u64(), s.u64()
        elif k == 5:
            num = s.pick((num, num * 2, 32768))
        self.restart(i, num, desc & ref.U64, avail & ref.U64, used & ref.U64, k, state)

    def restart(self, i: int, num: int, desc: int, avail: int, used: int, k: int, state: int) -> None:
        self.start(i, num, desc, avail, used)

    def op_table(self) -> None:
        """Replace the memory table while rings run: shifted, shrunk, overlapping, wrapping, odd offsets."""
        s = self.src
        table = [list(r) for r in default_table()]
        for _ in range(1 + s.below(4)):
            r = table[s.below(len(table))] if table else None
            k = s.below(9)
            if r is None or k == 8:
                area = s.below(3)
                off = s.below(16) if s.below(2) else 0
                size = max(1, len(self.gm.areas[area]) - off - s.below(64))
                table.append([s.u64() if s.below(2) else GPA0 + s.below(8) * 0x1000, UVA[area] + off, size, area,
                              off, off & 15])
            elif k == 0:
                r[0] = (r[0] + s.pick((16, -16, 0x1000, 0x4000))) & ref.U64
            elif k == 1:
                r[1] = (r[1] + s.pick((2, 16, -0x1000, 0x10))) & ref.U64
            elif k == 2:
                r[2] = max(1, r[2] - s.pick((1, 16, 0x1000, r[2] - 1)))
            elif k == 3:
                d = s.pick((1, 2, 4, 16))
                r[4] += d
                r[5] = r[4] & 15
                r[2] = max(1, r[2] - d)
            elif k == 4:
                table.remove(r)
            elif k == 5:
                table.append(list(r))      # the same region twice (overlap)
            elif k == 6:
                r[0] = ref.U64 - s.below(0x3000)
            else:
                table.reverse()
        if s.below(16) == 0:    # memory slots: many small regions (searched by halves), or too many (refused)
            k = s.below(3)
            table = sliced(table, (0x200, 0x800)[k]) if k < 2 else table * (MAX_MEM_SLOTS + 1)
        self.set_memory([tuple(r) for r in table])

    def op_configure(self) -> None:
        self.configure()

    def op_scribble(self) -> None:
        s = self.src
        area = s.below(3)
        off = s.below(len(self.gm.areas[area]))
        if area == 0 and s.below(2):
            off = self.ring_spot(*self._ring_loc(s.below(2))) + s.below(16)
        self.poke(area, off, s.bytes(1 + s.below(16)))
        self.check("scribble", "ok", "ok")

    def ring_spot(self, lay: dict, n: int) -> int:
        """Where in a ring a scribble starts: its descriptor table, avail or used ring."""
        return self.src.pick((lay["desc"], lay["avail"], lay["used"]))

    def op_indirect(self) -> None:
        """A hostile indirect table: random entries, nested INDIRECT, loops, huge lengths."""
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        count = 1 + s.below(6)
        table_off = (self.layout_end + 16 * s.below(64)) & ~15
        table_off = min(table_off, len(self.gm.areas[0]) - 16 * count) & ~15
        for k in range(count):
            addr = self.interesting_gpa() if s.below(3) == 0 else self._buffer()[0]
            length = s.pick(LENS) if s.below(3) == 0 else s.pick((12, 64, 1526))
            flags = s.u8() & 7 if s.below(2) else (ref.F_NEXT if k < count - 1 else 0) | (ref.F_WRITE if i == 0 else 0)
            self._desc(0, table_off + 16 * k, addr, length, flags, s.below(count + 1))
        head = s.below(n)
        length = 16 * count if s.below(4) else s.pick((0, 8, 16 * count + 16, 0xFFFFFFF0))
        self._desc(0, lay["desc"] + 16 * head, self.gpa_of(0, table_off), length,
                   ref.F_INDIRECT | (ref.F_NEXT if s.below(8) == 0 else 0), 0)
        self._publish(i, [head])
        self.check("indirect", "ok", "ok")


def _drain(fd: int) -> int:
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


def run_one(data: bytes, dp_cls, max_len: int = 1 << 20, scenario=Scenario) -> Scenario:
    sc = scenario(Source(data), dp_cls, max_len)
    try:
        sc.run()
    finally:
        sc.close()
    return sc


# -- the packed ring (target core-packed) -----------------------------------------------------------------
import ref_packed as rp  # noqa: E402


def _lap_flags(lap: int) -> int:
    """AVAIL/USED bits of a descriptor the driver makes available in the lap of wrap counter `lap`."""
    return rp.F_AVAIL if lap else rp.F_USED


class PackedScenario(Scenario):
    """The same scenario over packed rings (virtio 1.2 2.8) against ref_packed.PackedPair: the driver's
    shadow position per ring (lay["pos"], index | wrap << 15) is where its next list goes; hostile
    operations write descriptors with any flags and ids, jump that position, rewrite the event areas,
    and restart rings from any 32-bit vhost-user packed state."""

    REF = rp.PackedPair
    URING = False           # the per-frame path only (batches on packed rings: tests/core, both ways)

    def usual_num(self) -> int:
        return self.src.pick((7, 16, 5, 3))

    @staticmethod
    def areas_after(desc: int, n: int) -> tuple[int, int, int]:
        """The driver and device event areas (4 bytes each) after a descriptor ring of n at desc."""
        avail = desc + 16 * n
        return avail, avail + 4, avail + 8

    def configure(self) -> None:
        s = self.src
        flags = s.u8() & 0x17 | rp.RF_PACKED
        rx_max = s.pick((ref.NET_HDR + 1514, ref.NET_HDR, 13, 2048, 65562 + 12, 0xFFFFFFFF))
        budgets = (1, 2, 3, 8, 256)
        fault_exit, tx, rx = s.below(5) == 0, s.pick(budgets), s.pick(budgets)
        self.dp.configure(mrg_rxbuf=bool(flags & ref.RF_MRG), event_idx=bool(flags & ref.RF_EVENT_IDX),
                          indirect=bool(flags & ref.RF_INDIRECT), rx_max=rx_max, fault_exit=fault_exit,
                          tx_budget=tx, rx_budget=rx, packed=True, in_order=bool(flags & rp.RF_IN_ORDER))
        self.ref.configure(flags, rx_max, int(fault_exit), tx, rx)
        self.features.add(("flags", flags))
        self.check("configure", "ok", "ok")

    def start(self, i: int, num: int, desc: int, avail: int, used: int, base: int = rp.WRAP | rp.WRAP << 16) -> None:
        """Start a ring from the vhost-user packed state `base` (default: both positions 0, lap 1)."""
        got = self.call_core(lambda: self.dp.start_ring(i, num=num, desc=desc, avail=avail, used=used,
                                                        call_fd=self.call[i], err_fd=self.err[i], base=base))
        self.check(f"start {i}", got, self.ref.start(i, num, desc, avail, used, base))
        self.log_uva[i] = used      # QEMU: vq->used_phys, the device area; the core logs descriptors at desc's GPA

    # -- the driver's side ---------------------------------------------------------------------------
    def _step(self, lay: dict, n: int) -> tuple[int, int]:
        """The driver's next slot and its lap; the shadow position moves on by one."""
        pos = lay["pos"]
        i, lap = rp.idx(pos) % n, rp.wrap(pos)
        i += 1
        if i >= n:
            i, lap = 0, lap ^ 1
        old = lay["pos"]
        lay["pos"] = i | lap << 15
        return rp.idx(old) % n, rp.wrap(old)

    def _pdesc(self, off: int, addr: int, length: int, bid: int, flags: int, area: int = 0) -> None:
        self.poke(area, off, struct.pack("<QIHH", addr & ref.U64, length & 0xFFFFFFFF, bid & 0xFFFF, flags & 0xFFFF))

    def _bid(self, n: int) -> int:
        s = self.src
        return s.below(n) if s.below(8) else s.pick((n, n + 1, 0xFFFF, s.u16()))

    def op_chain(self) -> None:
        """1..3 well-formed lists at the driver's position (one batch: IN_ORDER may collapse it)."""
        i = self.src.below(2)
        for _ in range(1 + self.src.below(3)):
            self._list(i)

    def _list(self, i: int) -> None:
        """One well-formed list: 1..4 descriptors, or one indirect table."""
        s = self.src
        lay, n = self._ring_loc(i)
        count = 1 + s.below(4)
        write = rp.F_WRITE if i == 0 else 0
        pieces = self._pieces(i, count)
        bid = self._bid(n)
        slots = []
        if s.below(3) == 0:
            table_off = 16 * s.below(64)
            for k, (gpa, length) in enumerate(pieces):
                self._pdesc(table_off + 16 * k, gpa, length, 0, write, area=1)
            slot, lap = self._step(lay, n)
            slots.append((slot, self.gpa_of(1, table_off), 16 * count, rp.F_INDIRECT | _lap_flags(lap)))
        else:
            for k, (gpa, length) in enumerate(pieces):
                slot, lap = self._step(lay, n)
                slots.append((slot, gpa, length, write | (rp.F_NEXT if k < count - 1 else 0) | _lap_flags(lap)))
        for slot, addr, length, flags in reversed(slots):     # the first descriptor's flags last (2.8.6)
            self._pdesc(lay["desc"] + 16 * slot, addr, length, bid, flags)

    def op_raw_desc(self) -> None:
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        slot = s.below(n)
        lap = rp.wrap(lay["pos"])
        kind = s.below(5)
        mark = (_lap_flags(lap), _lap_flags(lap ^ 1), rp.F_AVAIL | rp.F_USED, 0, s.u16())[kind]
        flags = (s.u8() & 7) | (mark & ~7) if kind < 4 else mark
        length = s.pick(LENS) if s.below(2) else s.u32()
        self._pdesc(lay["desc"] + 16 * slot, self.interesting_gpa(), length, self._bid(n), flags)
        self.check("raw_desc", "ok", "ok")

    def op_avail(self) -> None:
        """The driver's shadow position jumps (the next list goes somewhere else, maybe another lap)."""
        s = self.src
        lay, n = self._ring_loc(s.below(2))
        k = s.below(4)
        if k == 0:
            lay["pos"] ^= rp.WRAP
        else:
            for _ in range(s.below(n + 1)):
                self._step(lay, n)
        self.check("avail", "ok", "ok")

    def op_flags(self) -> None:
        """The driver area (when the device may call: ENABLE, DISABLE, DESC at some position) or a write
        over the device area."""
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        if s.below(4) == 0:
            self.poke(0, lay["used"] + 2 * s.below(2), struct.pack("<H", s.u16()))
        else:
            mode = s.pick((rp.EVENT_ENABLE, rp.EVENT_DISABLE, rp.EVENT_DESC, rp.EVENT_DESC, 3))
            used = self.ref.ring(i).used_idx
            off = s.pick((used, lay["pos"], (used + 1) & 0xFFFF, used ^ rp.WRAP, s.u16()))
            self.poke(0, lay["avail"], struct.pack("<HH", off, mode))
        self.check("flags", "ok", "ok")

    RESTART_KINDS = 10
    AREA_TAILS = (2, 2)

    def restart(self, i: int, num: int, desc: int, avail: int, used: int, k: int, state: int) -> None:
        """Kinds 6 and 7 start from another vhost-user packed state (the driver's shadow may follow)."""
        s = self.src
        base = state
        if k == 6:
            base = s.u32() if s.below(2) else s.u16()       # any state; DPDK's sends the low half only
        elif k == 7:
            base = state & 0xFFFF                            # used = avail
        if k in (6, 7) and s.below(2):
            self.layout[i]["pos"] = base & 0xFFFF
        self.start(i, num, desc, avail, used, base)

    def ring_spot(self, lay: dict, n: int) -> int:
        """Any descriptor of the ring, or one of the two event areas."""
        s = self.src
        return s.pick((lay["desc"] + 16 * s.below(n), lay["avail"], lay["used"]))

    def op_indirect(self) -> None:
        """A hostile indirect table at the driver's position: random entry flags (nested INDIRECT), bad
        lengths, tables as long as the ring or longer, INDIRECT with NEXT."""
        s = self.src
        i = s.below(2)
        lay, n = self._ring_loc(i)
        count = s.pick((1, 2, 3, 5, 6, n - 1, n, n + 1)) if s.below(2) else 1 + s.below(6)
        count = max(1, min(count, 64))
        table_off = (self.layout_end + 16 * s.below(64)) & ~15
        table_off = min(table_off, len(self.gm.areas[0]) - 16 * count) & ~15
        for k in range(count):
            addr = self.interesting_gpa() if s.below(3) == 0 else self._buffer()[0]
            length = s.pick(LENS) if s.below(3) == 0 else s.pick((12, 64, 1526))
            flags = s.u8() & 7 if s.below(2) else (rp.F_WRITE if i == 0 else 0)
            self._pdesc(table_off + 16 * k, addr, length, s.u16(), flags)
        length = 16 * count if s.below(4) else s.pick((0, 8, 16 * count + 16, 0xFFFFFFF0))
        slot, lap = self._step(lay, n)
        extra = rp.F_NEXT if s.below(8) == 0 else 0
        if extra:
            nslot, nlap = self._step(lay, n)
            self._pdesc(lay["desc"] + 16 * nslot, self._buffer()[0], 64, self._bid(n),
                        _lap_flags(nlap) | (rp.F_WRITE if i == 0 else 0))
        self._pdesc(lay["desc"] + 16 * slot, self.gpa_of(0, table_off), length, self._bid(n),
                    rp.F_INDIRECT | extra | _lap_flags(lap) | (s.u8() & rp.F_WRITE))
        self.check("indirect", "ok", "ok")

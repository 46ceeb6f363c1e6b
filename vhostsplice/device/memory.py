"""GuestMemory: maps the front-end's region fds and checks the table before C ever sees it.

A region is (gpa, size, uva, mmap_offset) plus an fd. Everything a hostile front-end could get wrong is
refused here with EPROTO: zero or wrapping sizes, overlapping regions, and an fd smaller than the region
claims (touching a mapping past the end of its file would be SIGBUS, a crash). The table comes whole
(SET_MEM_TABLE, at most 8 regions) or a region at a time (ADD_MEM_REG / REM_MEM_REG with
CONFIGURE_MEM_SLOTS, up to MAX_MEM_SLOTS): both go through the same checks (`check_table`).
"""
from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass

from ..errors import ProtocolError
from ..vhostuser.protocol import LogArea, MemRegion, MemTable
from ..spec import LOG_PAGE, MAX_LOG_SIZE, MAX_MEM_SLOTS

U64_MAX = (1 << 64) - 1


@dataclass
class Region:
    gpa: int
    uva: int
    size: int
    buf: memoryview          # exactly `size` bytes of the mapping
    _map: mmap.mmap

    def close(self) -> None:
        self.buf.release()
        self._map.close()

    def same(self, r: MemRegion) -> bool:
        """REM_MEM_REG names a region by guest address, size and user address (not its offset)."""
        return (self.gpa, self.size, self.uva) == (r.gpa, r.size, r.uva)


def check_table(table: MemTable, fds: tuple[int, ...]) -> None:
    """The one validation of a memory table (the whole table a region change would leave) and the fds
    of its new regions (the last len(fds) of the table), before anything is mapped: EPROTO."""
    if len(table.regions) > MAX_MEM_SLOTS:
        raise ProtocolError(f"{len(table.regions)} memory regions, at most {MAX_MEM_SLOTS} slots")
    _check_ranges(table)
    for r, fd in zip(table.regions[len(table.regions) - len(fds):], fds):
        _check_fd(fd, r.mmap_offset, r.size)


def _check_ranges(table: MemTable) -> None:
    spans: list[tuple[str, int, int]] = []
    for i, r in enumerate(table.regions):
        if r.size == 0:
            raise ProtocolError(f"memory region {i} has size 0")
        for what, start in (("gpa", r.gpa), ("uva", r.uva)):
            if start + r.size - 1 > U64_MAX:
                raise ProtocolError(f"memory region {i}: {what} {start:#x} + size {r.size:#x} wraps")
            spans.append((what, start, start + r.size))
    for what in ("gpa", "uva"):
        ranges = sorted((s, e) for w, s, e in spans if w == what)
        for (s1, e1), (s2, _e2) in zip(ranges, ranges[1:]):
            if s2 < e1:
                raise ProtocolError(f"memory regions overlap in {what} space at {s2:#x}")


def _check_fd(fd: int, offset: int, size: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ProtocolError(f"bad memory fd ({exc})") from None
    if stat.S_ISREG(st.st_mode) and st.st_size < offset + size:
        raise ProtocolError(f"memory fd holds {st.st_size} bytes, region needs {offset + size}")


def _map_region(r: MemRegion, fd: int) -> Region:
    try:
        mm = mmap.mmap(fd, r.mmap_offset + r.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot map memory region ({exc})") from None
    return Region(r.gpa, r.uva, r.size, memoryview(mm)[r.mmap_offset:r.mmap_offset + r.size], mm)


class GuestMemory:
    """The mapped memory table; `regions` is what Datapath.set_memory takes. A region change is
    prepared (`with_added`, `with_removed`: the new list, nothing installed), installed in the core by
    the caller, then kept (`commit`)."""

    def __init__(self, table: MemTable, fds: tuple[int, ...]):
        if len(fds) != len(table.regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(table.regions)} regions but {len(fds)} fds")
        check_table(table, fds)
        self.regions: list[Region] = []
        try:
            for r, fd in zip(table.regions, fds):
                self.regions.append(_map_region(r, fd))
        except BaseException:
            self.close()
            raise

    def table(self) -> tuple[MemRegion, ...]:
        return tuple(MemRegion(r.gpa, r.size, r.uva, 0) for r in self.regions)

    def with_added(self, region: MemRegion, fd: int) -> tuple[list[Region], Region]:
        """ADD_MEM_REG: the table with `region` mapped from fd (refused as SET_MEM_TABLE would be)."""
        check_table(MemTable(self.table() + (region,)), (fd,))
        new = _map_region(region, fd)
        return self.regions + [new], new

    def with_removed(self, region: MemRegion) -> tuple[list[Region], Region]:
        """REM_MEM_REG: the table without the region of that gpa, size and uva (EPROTO if none)."""
        for i, r in enumerate(self.regions):
            if r.same(region):
                return self.regions[:i] + self.regions[i + 1:], r
        raise ProtocolError(f"REM_MEM_REG: no region at gpa {region.gpa:#x} size {region.size:#x}"
                            f" uva {region.uva:#x}")

    def commit(self, regions: list[Region], gone: list[Region]) -> None:
        """The core has `regions` now: keep them, unmap what left the table."""
        self.regions = regions
        for r in gone:
            r.close()

    def close(self) -> None:
        for region in self.regions:
            region.close()
        self.regions = []


class DirtyLog:
    """The dirty log of SET_LOG_BASE: `size` bytes at `offset` of a shared fd (a memfd from QEMU).

    Refused with EPROTO before anything is mapped: size 0 or above MAX_LOG_SIZE, size + offset past
    2^63, an fd that is not a regular file, or one smaller than offset + size (touching a mapping past
    the end of its file would be SIGBUS). The fd itself is not kept: the caller closes it.
    """

    def __init__(self, area: LogArea, fd: int):
        size, offset = area.size, area.offset
        if not 0 < size <= MAX_LOG_SIZE:
            raise ProtocolError(f"SET_LOG_BASE: log size {size:#x} is not 1..{MAX_LOG_SIZE:#x}")
        if offset > (1 << 63) - 1 - size:
            raise ProtocolError(f"SET_LOG_BASE: offset {offset:#x} + size {size:#x} overflows")
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise ProtocolError(f"SET_LOG_BASE: bad log fd ({exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolError("SET_LOG_BASE: the log fd is not a shared-memory file")
        if st.st_size < offset + size:
            raise ProtocolError(f"SET_LOG_BASE: log fd holds {st.st_size} bytes, the log needs {offset + size}")
        try:
            self._map = mmap.mmap(fd, offset + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"SET_LOG_BASE: cannot map the log ({exc})") from None
        self.size, self.offset = size, offset
        self.view = memoryview(self._map)[offset:offset + size]

    def covers(self, gpa_end: int) -> bool:
        """Does the log have a bit for every page below gpa_end?"""
        return (gpa_end + LOG_PAGE - 1) // LOG_PAGE <= self.size * 8

    def close(self) -> None:
        self.view.release()
        self._map.close()

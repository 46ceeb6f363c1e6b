"""GuestMemory: maps the front-end's region fds and checks the table before C ever sees it.

A region is (gpa, size, uva, mmap_offset) plus an fd. Everything a hostile front-end could get wrong is
refused here with EPROTO: zero or wrapping sizes, overlapping regions, and an fd smaller than the region
claims (touching a mapping past the end of its file would be SIGBUS, a crash).
"""
from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass

from .errors import ProtocolError
from .protocol import LogArea, MemTable
from .spec import LOG_PAGE, MAX_LOG_SIZE

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


def _map_region(fd: int, offset: int, size: int) -> mmap.mmap:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size < offset + size:
        raise ProtocolError(f"memory fd holds {st.st_size} bytes, region needs {offset + size}")
    try:
        return mmap.mmap(fd, offset + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot map memory region ({exc})") from None


class GuestMemory:
    """The mapped memory table; `regions` is what Datapath.set_memory takes."""

    def __init__(self, table: MemTable, fds: tuple[int, ...]):
        if len(fds) != len(table.regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(table.regions)} regions but {len(fds)} fds")
        _check_ranges(table)
        self.regions: list[Region] = []
        try:
            for r, fd in zip(table.regions, fds):
                mm = _map_region(fd, r.mmap_offset, r.size)
                view = memoryview(mm)[r.mmap_offset:r.mmap_offset + r.size]
                self.regions.append(Region(r.gpa, r.uva, r.size, view, mm))
        except BaseException:
            self.close()
            raise

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

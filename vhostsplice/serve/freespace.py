"""The allocators' free space, taken by serve's template before it forks workers (template.py; issue 18).

After a fork every page either process writes becomes a private copy. Left alone, a worker's first
allocations would land in the free space the template's allocators still have: free blocks in pymalloc's
partly used pools and free chunks in glibc's heap, one here and one there over hundreds of pages the
workers share, each copied by the first object put in it. `take()` fills that space in the template
with objects it keeps for good, so that a worker's allocations start pools and heap space of their own
and fill them densely (measured: 0.6 MiB less private memory per worker, benchmarks/RESULTS.md).

Both allocators are asked how much they have free (pymalloc: sys._debugmallocstats, a CPython detail;
glibc: mallinfo2, 2.33 and later) and each step stops at once when it cannot tell: another Python or
allocator (PYTHONMALLOC), another libc. Nothing here is freed again: the template keeps what it took.
"""
from __future__ import annotations

import ctypes
import os
import sys

TCACHE_SIZES = range(24, 1033, 16)      # a malloc request per glibc tcache bin (chunk sizes 32..1040)
TCACHE_COUNT = 7                # chunks a tcache bin holds (glibc's default tcache_count)
HEAP_SIZES = [(1 << s) - 8 for s in range(20, 10, -1)] + list(range(1016, 16, -16))   # largest first

_kept: list = []                # the filler objects and chunks: never released


def take() -> dict:
    """Fill pymalloc's and glibc's free space; what was taken (for the template's report, and tests)."""
    return {"pymalloc_blocks": _take_pymalloc(), "heap_chunks": _take_heap()}


# -- pymalloc ------------------------------------------------------------------------------------------

def pymalloc_stats() -> dict[int, tuple[int, int]] | None:
    """block size -> (pools, free blocks in them), from sys._debugmallocstats (written on C's stderr:
    fd 2 is pointed at a memfd while it runs); None where there is no pymalloc to ask."""
    if sys.implementation.name != "cpython" or not hasattr(sys, "_debugmallocstats") or sys.flags.dev_mode \
            or os.environ.get("PYTHONMALLOC", "pymalloc") != "pymalloc":
        return None
    sink, saved = os.memfd_create("vhostsplice-mallocstats", os.MFD_CLOEXEC), os.dup(2)
    try:
        os.dup2(sink, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        text = os.pread(sink, os.fstat(sink).st_size, 0).decode(errors="replace")
    finally:
        os.close(sink)
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 5 and all(w.isdigit() for w in words):     # class, size, pools, in use, available
            rows[int(words[1])] = (int(words[2]), int(words[4]))
    return rows or None


def _filler(size: int, i: int):
    """A new object pymalloc puts in a block of exactly `size` bytes (None if none is known)."""
    if size == 16:
        obj = object()
    elif size == 32:
        obj = (1 << 20) + i             # a one-digit int: 28 bytes
    else:
        obj = bytes(size - 33)          # 32 bytes of header, the data and its terminating NUL
    return obj if size - 16 < sys.getsizeof(obj) <= size else None


def _take_pymalloc() -> int:
    rows = pymalloc_stats()
    if rows is None:
        return 0
    count = 0
    for size, (_pools, free) in rows.items():
        if free and _filler(size, 0) is not None:
            fill = [None] * free        # made at its size: a list grown item by item frees blocks as it goes
            for i in range(free):
                fill[i] = _filler(size, i)
            _kept.append(fill)
            count += free
    return count


# -- glibc malloc --------------------------------------------------------------------------------------

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    """(malloc, free, malloc_trim, mallinfo2) of glibc, or None."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2, malloc, free, trim = libc.mallinfo2, libc.malloc, libc.free, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes, trim.argtypes = [ctypes.c_void_p], [ctypes.c_size_t]
    return malloc, free, trim, mallinfo2


def heap_free_in_bins() -> int | None:
    """Bytes in glibc's free chunks, the top of the heap left out (None: not glibc)."""
    found = _libc()
    if found is None:
        return None
    info = found[3]()
    return info.fordblks - info.keepcost


def _take_heap() -> int:
    found = _libc()
    if found is None:
        return 0
    malloc, free, trim, mallinfo2 = found

    def binned() -> int:
        info = mallinfo2()
        return info.fordblks - info.keepcost
    taken: list = []
    _kept.append(taken)
    trim(0)                 # merges the fast bins into the others (and gives back whole free pages)
    taken += [malloc(size) for size in TCACHE_SIZES for _ in range(TCACHE_COUNT)]   # tcache is not in mallinfo
    for _round in range(2):             # the second takes what the list's own growth gave back
        for size in HEAP_SIZES:
            while True:
                before = binned()
                chunk = malloc(size)
                if binned() >= before:  # from the top of the heap: no free chunk of this size is left
                    free(chunk)
                    break
                taken.append(chunk)
    return len(taken)

"""cffi builder for vhostsplice._vs_core (out-of-line API mode, compiled at `pip install`).

vs_api.h is shared by the compiler and cdef: cdef reads the part between its "cdef begin" and
"cdef end" markers.  Flags: -O2 -Wall -Wextra -Werror -std=gnu11, plus whatever VS_CFLAGS adds
(a sanitizer build: VS_CFLAGS="-fsanitize=address,undefined -O1 -g" pip install .).
"""
from __future__ import annotations

import os
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "_core")
# The C files in layer order, bottom up: each calls functions of the files before it only (guest memory,
# dirty log, what both ring layouts share, the split and packed layouts, the layout dispatch, the host
# fd's io_uring, the net device (shared, TX, RX one frame at a time, RX batches), the exported pair
# poll). tests/core/test_layers.py holds the sources to this order; docs/architecture.md describes the layers.
SOURCES = ("vs_mem.c", "vs_log.c", "vs_ring.c", "vs_split.c", "vs_packed.c", "vs_layout.c",
           "vs_uring.c", "vs_net.c", "vs_net_tx.c", "vs_net_rx.c", "vs_net_rx_batch.c",
           "vs_pair.c")
BEGIN, END = "/* ---- cdef begin ---- */", "/* ---- cdef end ---- */"


def cdef_text() -> str:
    with open(os.path.join(CORE, "vs_api.h"), encoding="utf-8") as f:
        text = f.read()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:stop]


def _rel(path: str) -> str:
    """setuptools wants source paths relative to the project root (the cwd of setup.py)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def compile_args() -> list[str]:
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"]
    extra = shlex.split(os.environ.get("VS_CFLAGS", ""))
    return flags + extra


def link_args() -> list[str]:
    return [f for f in shlex.split(os.environ.get("VS_CFLAGS", "")) if f.startswith("-fsanitize")]


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "vhostsplice._vs_core",
    # cffi's generated glue is not ours to keep -Wextra clean; our sources are compiled with all warnings.
    '#pragma GCC diagnostic ignored "-Wunused-parameter"\n#include "vs_api.h"\n',
    sources=[_rel(os.path.join(CORE, s)) for s in SOURCES],
    include_dirs=[_rel(CORE)],
    extra_compile_args=compile_args(),
    extra_link_args=link_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

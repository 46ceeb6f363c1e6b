"""The C core's layers: who may call whom, what the ring layout takes, and the facts Python and C share.

The layer order is one table, `_core_build.SOURCES` (bottom up); these tests read the installed C
sources, so a call from a lower file into a higher one (the old vs_mem.c <-> vs_split.c circle), a ring
function that takes the net device again, or a constant that drifts between spec.py and vs_api.h fails.
"""
from __future__ import annotations

import os
import re

import pytest

from vhostsplice import _core_build, spec
from vhostsplice.device import datapath
from vhostsplice.device.datapath import lib

DEFINITION = re.compile(r"^[A-Za-z_][\w \*]*?\b(vs_\w+)\(([^)]*)\)\s*$", re.M)   # at column 0, body below
CALL = re.compile(r"\b(vs_\w+)\(")
COMMENT = re.compile(r"/\*.*?\*/", re.S)


def source(name: str) -> str:
    with open(os.path.join(_core_build.CORE, name), encoding="utf-8") as f:
        return COMMENT.sub("", f.read())


def definitions() -> dict[str, str]:
    """Function name -> the file that defines it, over every source of the build."""
    out: dict[str, str] = {}
    for name in _core_build.SOURCES:
        for fn, _args in DEFINITION.findall(source(name)):
            assert fn not in out, f"{fn} is defined in {out.get(fn)} and {name}"
            out[fn] = name
    return out


def calls_between_files() -> set[tuple[str, str]]:
    where = definitions()
    edges = set()
    for name in _core_build.SOURCES:
        for fn in CALL.findall(source(name)):
            if where.get(fn, name) != name:
                edges.add((name, where[fn]))
    return edges


def test_every_source_is_in_the_layer_table():
    on_disk = {f for f in os.listdir(_core_build.CORE) if f.endswith(".c")}
    assert on_disk == set(_core_build.SOURCES)


def test_each_file_calls_only_the_layers_below_it():
    order = {name: i for i, name in enumerate(_core_build.SOURCES)}
    edges = calls_between_files()
    assert edges, "no call between files found: the parser is broken"
    upward = sorted((a, b) for a, b in edges if order[b] >= order[a])
    assert upward == [], f"calls up (or round) the layers: {upward}"


def test_the_ring_layout_never_takes_the_net_device():
    """vs_mem.c, vs_log.c, the layouts (vs_ring.c, vs_split.c, vs_packed.c) and their dispatch
    (vs_layout.c) work on the memory table, the log and a ring, never the pair."""
    for name in ("vs_mem.c", "vs_log.c", "vs_ring.c", "vs_split.c", "vs_packed.c", "vs_layout.c"):
        assert "vs_pair" not in source(name), name


def test_the_net_device_reaches_the_ring_only_through_the_layout():
    """Above the layout dispatch (vs_layout.c) no file touches the ring areas in guest memory (desc,
    avail, used), the layouts' positions (last_avail, used_idx: vs_avail_pos, vs_avail_rewind,
    vs_used_pos) or the packed state: the net files serve both layouts unchanged."""
    above = _core_build.SOURCES[_core_build.SOURCES.index("vs_layout.c") + 1:]
    assert above
    for name in above:
        text = source(name)
        assert not re.search(r"->(desc|avail|used)\b", text), name
        assert not re.search(r"\b(last_avail|used_idx|signalled_used|chain_cap|used_last_id|batch_writable|layout)\b",
                             text), name
        assert not re.search(r"\b(split|pk)_\w+\(|VS_RF_PACKED|VS_PK_", text), name   # no layout named


SEAM = ("map", "start", "pop_chain", "prefetch_chain", "used_publish", "notify_disable", "notify_enable")
STATIC = re.compile(r"^static [\w \*]*?\b((?:split|pk)_\w+)\(([^)]*)\)\s*$", re.M)


@pytest.mark.parametrize("layout,prefix", [("vs_split.c", "split_"), ("vs_packed.c", "pk_")])
@pytest.mark.parametrize("fn", SEAM)
def test_ring_functions_take_the_memory_table_and_their_ring(layout, prefix, fn):
    args = dict(STATIC.findall(source(layout)))
    assert re.match(r"const struct vs_mem \*m, (const )?struct vs_ring \*r\b", args[prefix + fn]), args[prefix + fn]


@pytest.mark.parametrize("layout,prefix,table", [("vs_split.c", "split_", "vs_split_layout"),
                                                 ("vs_packed.c", "pk_", "vs_packed_layout")])
def test_each_layout_fills_its_whole_table(layout, prefix, table):
    """Every member of struct vs_layout is set, to the layout's own function: the dispatch in vs_layout.c
    never reaches a NULL, and no layout borrows the other's."""
    with open(os.path.join(_core_build.CORE, "vs_api.h"), encoding="utf-8") as f:
        members = re.findall(r"\(\*(\w+)\)\(", f.read())
    text = source(layout)
    body = text[text.index(f"const struct vs_layout {table} = {{"):]
    body = body[:body.index("};")]
    assert dict(re.findall(r"\.(\w+) = (\w+),", body)) == {m: prefix + m for m in members}


def test_the_layout_is_chosen_in_one_place():
    """vs_layout.c picks the table from VS_RF_PACKED once (layout_of); no other file tests the flag."""
    for name in _core_build.SOURCES:
        hits = len(re.findall(r"\bVS_RF_PACKED\b", source(name)))
        assert hits == (1 if name == "vs_layout.c" else 0), name


def test_python_and_c_share_their_limits():
    assert spec.MAX_QUEUE_SIZE == lib.VS_MAX_QUEUE_SIZE
    assert spec.MAX_MEM_SLOTS == lib.VS_MAX_REGIONS
    assert spec.MAX_REGIONS <= spec.MAX_MEM_SLOTS
    assert spec.NET_HDR_LEN == lib.VS_NET_HDR_LEN
    assert spec.LOG_PAGE == 1 << lib.VS_LOG_PAGE_SHIFT


def test_the_ring_size_rule_is_virtio_2_7():
    """Queue Size: a power of 2, at most 32768 (virtio 1.2, 2.7); anything a u32 holds is asked."""
    powers = {1 << k for k in range(16)}
    for num in sorted(powers | {p + d for p in powers for d in (-1, 1)} | {0, 48, 65536, 0xFFFF_FFFF}):
        assert datapath.ring_size_ok(num) == (num in powers), num
    assert not datapath.ring_size_ok(-1) and not datapath.ring_size_ok(1 << 32)


def test_the_packed_ring_size_rule_is_virtio_2_8():
    """Packed: any Queue Size in 1..32768 (the position keeps its index in 15 bits)."""
    for num in (0, 1, 7, 100, 255, 256, 32767, 32768, 32769, 65536, 0xFFFF_FFFF):
        assert datapath.ring_size_ok(num, packed=True) == (1 <= num <= 32768), num
    assert not datapath.ring_size_ok(-1, packed=True)

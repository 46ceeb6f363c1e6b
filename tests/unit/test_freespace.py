"""freespace.take (serve's template, before its first fork): the allocators' free space is filled, so what a
worker allocates next goes to a pool or heap space of its own. Each case runs in a fresh interpreter (take
keeps what it took for good), which first makes holes of its own to be filled."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vhostsplice.serve import freespace
from vhostsplice.serve.selfexec import self_env

HOLES = """
from vhostsplice.serve import freespace
keep = [bytes(479) for _ in range(64)]       # 512-byte blocks: a size nothing else here allocates
del keep[::2]                                # 32 of them free again, in pools still in use
big = [bytes(1900) for _ in range(400)]      # glibc chunks: every other one freed
del big[::2]
"""


def _run(body: str) -> dict:
    code = HOLES + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=self_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


needs_pymalloc = pytest.mark.skipif(freespace.pymalloc_stats() is None, reason="no pymalloc statistics here")
needs_glibc = pytest.mark.skipif(freespace.heap_free_in_bins() is None, reason="not glibc's malloc")


@needs_pymalloc
@pytest.mark.parametrize("take", [False, True])
def test_after_take_a_new_block_needs_a_new_pool(take):
    got = _run(f"""
        import json
        took = freespace.take() if {take} else {{}}
        pools, free = freespace.pymalloc_stats()[512]
        one = bytes(479)
        after = freespace.pymalloc_stats()[512][0]
        print(json.dumps({{"free": free, "new_pools": after - pools, "took": took}}))
    """)
    if take:
        assert got["free"] == 0 and got["new_pools"] == 1 and got["took"]["pymalloc_blocks"] >= 32
    else:       # the control: the hole is there and takes the block
        assert got["free"] >= 32 and got["new_pools"] == 0


@needs_glibc
def test_take_leaves_the_heap_no_free_chunk_to_reuse():
    got = _run("""
        import json
        before = freespace.heap_free_in_bins()
        took = freespace.take()
        print(json.dumps({"before": before, "after": freespace.heap_free_in_bins(), "took": took}))
    """)
    assert got["before"] >= 150 * 1900 and got["took"]["heap_chunks"] > 0     # (7 of them wait in tcache)
    assert got["after"] < 16384, got      # remainders too small for any request, and what take's list gave back


def test_without_statistics_nothing_is_taken(monkeypatch):
    monkeypatch.setenv("PYTHONMALLOC", "malloc")      # another allocator: pymalloc cannot be asked
    assert freespace.pymalloc_stats() is None and freespace._take_pymalloc() == 0

"""The peer matrix table (tests/support/peers.py) against its consumers, and the one missing-peer rule."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support import peers

TESTS = Path(__file__).resolve().parent.parent


def test_every_column_kernel_is_one_build_sh_builds():
    out = subprocess.run(["bash", str(peers.GUEST_DIR / "build.sh"), "--kernels"], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    assert sorted(out) == sorted({c.kernel for c in peers.COLUMNS})


def test_column_ids_name_their_qemu_and_kernel():
    for c in peers.COLUMNS:
        assert c.id == f"qemu{c.qemu}-linux{c.kernel}"
    assert len({c.id for c in peers.COLUMNS}) == len(peers.COLUMNS)


@pytest.mark.parametrize("column", peers.COLUMNS, ids=lambda c: c.id)
def test_migration_memory_avoids_the_dirty_bitmap_bug_only_where_it_exists(column):
    """QEMU < 9.0 needs a RAM size that is not a multiple of 256 KiB; newer columns must use one that IS
    (so their migration tests prove the workaround is no longer needed)."""
    size = peers.memory_bytes(column.migration_memory)
    multiple = size % peers.DIRTY_BITMAP_BUG_CHUNK == 0
    assert multiple != peers.has_dirty_bitmap_bug(column.qemu), (column, size)


def test_require_peer_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("VHOSTSPLICE_REQUIRE_PEERS", raising=False)
    peers.require_peer(None)                      # present: nothing happens
    with pytest.raises(pytest.skip.Exception):
        peers.require_peer("no such peer")
    for var, value in (("CI", "true"), ("CI", "1"), ("VHOSTSPLICE_REQUIRE_PEERS", "1")):
        monkeypatch.setenv(var, value)
        with pytest.raises(pytest.fail.Exception):
            peers.require_peer("no such peer")
        monkeypatch.delenv(var)


def test_no_test_reads_ci_itself():
    """The missing-peer rule lives in peers.require_peer only: no other test file consults CI."""
    pattern = re.compile(r"""environ(?:\.get\(|\[)\s*["']CI["']""")
    offenders = [str(p.relative_to(TESTS)) for p in TESTS.rglob("*.py")
                 if p.name != "peers.py" and p != Path(__file__) and pattern.search(p.read_text())]
    assert offenders == []


def test_every_column_runs_split_and_only_known_layouts():
    """split is what a test without @on_layouts runs, so every column must run it; a layout a column
    names must be in LAYOUTS, and each layout runs on some column (else its tests collect nothing)."""
    for c in peers.COLUMNS:
        assert "split" in c.layouts and set(c.layouts) <= set(peers.LAYOUTS), c
    assert {name for c in peers.COLUMNS for name in c.layouts} == set(peers.LAYOUTS)
    assert peers.SPLIT.device == ""                 # QEMU's default virtio-net-pci is split


@pytest.mark.parametrize("layout", peers.LAYOUTS.values(), ids=lambda layout: layout.id)
def test_a_layout_chooses_its_ring_and_knows_its_features(layout):
    packed_bit = 1 << 34                            # VIRTIO_F_RING_PACKED (virtio 1.2 6)
    assert ("packed=on" in layout.device.split(",")) == layout.packed
    assert layout.negotiated(1 << 32 | (packed_bit if layout.packed else 0))
    assert not layout.negotiated(1 << 32 | (0 if layout.packed else packed_bit))

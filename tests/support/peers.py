"""The peer matrix: which QEMU and which guest kernel each interop column runs, and the one rule for a
peer that is missing.

COLUMNS is the one table. Every QEMU interop test runs once per column, through the session fixtures of
tests/interop/conftest.py (`column`, `qemu_peer`, `image`), whose test ids name the column:
- qemu7.2-linux6.1: bookworm's own qemu-system-x86 (installed) and bookworm's cloud kernel;
- qemu10.0-linux6.12: QEMU 10.0 from bookworm-backports, unpacked beside 7.2 by tests/guest/qemu.sh
  (never installed), and the backports cloud kernel (tests/guest/build.sh --kernel 6.12).
tests/unit/test_peers.py fails when build.sh's kernel series or a column's migration RAM size drift.

LAYOUTS is the one table of virtqueue layouts a guest's device can be given (virtio-net-pci `packed=on`
or QEMU's default, split), and each column lists the layouts it runs (Column.layouts). A test that runs
per layout says so with `@on_layouts()` (each column, each of its layouts) or `@on_layouts("packed")`;
the interop fixtures hand every guest of that test the layout's device properties (GuestImage.device_opts)
and the layout itself (`layout`), so no test writes `packed=on`; pairs a column does not run are
deselected at collection (conftest.py), never skipped. A test without it runs split rings.
Packed rings run on the QEMU 10.0 + Linux 6.12 column only (issue 15's peer; one more boot per test).

require_peer() is the one place a missing peer (QEMU, testpmd, root, a tool) turns into a skip, or
into a failure under CI (CI=true/1, which .ci/run sets, or VHOSTSPLICE_REQUIRE_PEERS=1): CI cannot pass
by skipping the interop tests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.guest import FEATURE_BITS, QEMU as SYSTEM_QEMU

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
QEMU_SCRIPT = GUEST_DIR / "qemu.sh"
PAGE = 4096
# QEMU < 9.0 under TCG corrupts a migrating guest whose RAM block is a multiple of 64 pages (256 KiB):
# the dirty-bitmap fast path loses stores (fixed by upstream 03bfc2188f, in 9.0). test_qemu_migrate.py
# has the details; the 7.2 column keeps the 512 MiB - 8 KiB workaround, the 10.0 column uses 512 MiB.
DIRTY_BITMAP_BUG_CHUNK = 64 * PAGE


@dataclass(frozen=True)
class Column:
    id: str                    # the pytest parameter id
    qemu: str                  # the QEMU release series the column must run (checked against --version)
    qemu_source: str           # "system" (installed qemu-system-x86) or "backports" (tests/guest/qemu.sh)
    kernel: str                # the guest kernel series (tests/guest/build.sh --kernel SERIES)
    migration_memory: str      # guest RAM for the live-migration tests (QEMU -m syntax, K or M suffix)
    layouts: tuple[str, ...]   # the virtqueue layouts (LAYOUTS) its guests run in the @on_layouts tests


@dataclass(frozen=True)
class Layout:
    """A virtqueue layout (virtio 1.2 2.7 split, 2.8 packed) and how a guest's device is given it."""
    id: str                    # the pytest parameter id's suffix
    device: str                # virtio-net-pci properties that choose it ("": QEMU's default)
    packed: bool               # the driver acks VIRTIO_F_RING_PACKED

    def negotiated(self, features: int) -> bool:
        """FEATURES (acked by a driver, or told to the back-end) are this layout's: RING_PACKED iff packed."""
        return bool(features >> FEATURE_BITS["RING_PACKED"] & 1) == self.packed


LAYOUTS = {layout.id: layout for layout in (Layout("split", "", False), Layout("packed", "packed=on", True))}
SPLIT = LAYOUTS["split"]

COLUMNS = (
    Column("qemu7.2-linux6.1", "7.2", "system", "6.1", "524280K", ("split",)),
    Column("qemu10.0-linux6.12", "10.0", "backports", "6.12", "512M", ("split", "packed")),
)


def on_layouts(*ids: str):
    """Parametrize a QEMU test over the layouts IDS (default: all); with the `column` fixture's columns that
    is every column x layout pair, of which tests/interop/conftest.py keeps those the column runs."""
    assert set(ids) <= set(LAYOUTS), ids
    return pytest.mark.parametrize("layout", [pytest.param(LAYOUTS[i], id=i) for i in ids or LAYOUTS],
                                   indirect=True)


def runs(column: Column, layout: Layout) -> bool:
    return layout.id in column.layouts


def in_ci() -> bool:
    return (os.environ.get("CI", "").lower() in ("1", "true")
            or os.environ.get("VHOSTSPLICE_REQUIRE_PEERS") == "1")


def require_peer(missing: str | None) -> None:
    """MISSING (a reason, or None when the peer is there): fail under CI, else skip."""
    if not missing:
        return
    if in_ci():
        pytest.fail(f"CI needs this peer: {missing}")
    pytest.skip(missing)


def memory_bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG])", size)
    assert m, f"memory size {size!r}: digits and K, M or G"
    return int(m[1]) << {"K": 10, "M": 20, "G": 30}[m[2]]


def has_dirty_bitmap_bug(qemu_version: str) -> bool:
    major = int(qemu_version.split(".")[0])
    return major < 9


@dataclass(frozen=True)
class Qemu:
    """A QEMU binary of one column: `argv` starts every command line (binary, and -L DIR when unpacked)."""
    argv: tuple[str, ...]
    version: str

    @property
    def binary(self) -> str:
        return self.argv[0]


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return m[1] if m else ""


def find_qemu(column: Column, timeout: float = 600) -> tuple[Qemu | None, str | None]:
    """(the column's QEMU, None) or (None, why it is missing)."""
    if column.qemu_source == "system":
        binary = shutil.which(SYSTEM_QEMU)
        if binary is None:
            return None, f"{SYSTEM_QEMU} not installed (apt-get install qemu-system-x86; tests/run.sh does it)"
        argv: tuple[str, ...] = (binary,)
    else:
        proc = subprocess.run(["bash", str(QEMU_SCRIPT)], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return None, f"{QEMU_SCRIPT} exited {proc.returncode} (tests/run.sh adds bookworm-backports):\n" \
                         f"{proc.stderr[-2000:]}"
        kv = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        binary = kv["qemu"]
        argv = (binary, "-L", kv["datadir"])
    version = _version(binary)
    if not version.startswith(column.qemu + ".") and version != column.qemu:
        return None, f"column {column.id} needs QEMU {column.qemu}, {binary} is {version or 'not runnable'}"
    return Qemu(argv, version), None

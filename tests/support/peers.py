"""The peer matrix: which QEMU and which guest kernel each interop column runs, and the one rule for a
peer that is missing.

COLUMNS is the one table. Every QEMU interop test runs once per column, through the session fixtures of
tests/interop/conftest.py (`column`, `qemu_peer`, `image`), whose test ids name the column:
- qemu7.2-linux6.1: bookworm's own qemu-system-x86 (installed) and bookworm's cloud kernel;
- qemu10.0-linux6.12: QEMU 10.0 from bookworm-backports, unpacked beside 7.2 by tests/guest/qemu.sh
  (never installed), and the backports cloud kernel (tests/guest/build.sh --kernel 6.12).
tests/unit/test_peers.py fails when build.sh's kernel series or a column's migration RAM size drift.

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

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
QEMU_SCRIPT = GUEST_DIR / "qemu.sh"
from support.guest import QEMU as SYSTEM_QEMU
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


COLUMNS = (
    Column("qemu7.2-linux6.1", "7.2", "system", "6.1", "524280K"),
    Column("qemu10.0-linux6.12", "10.0", "backports", "6.12", "512M"),
)


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

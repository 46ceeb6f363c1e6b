"""The raw tap floor (issue 18): tap_floor.c compiled at benchmark time, and the table of its variants.

`dpdk_bench.py --floor` runs it as a third back-end column: the same tap (`ip tuntap add ... multi_queue
vnet_hdr`, a queue attached with the worker's flags), the same sender and the same drain (RX: a backlog
queued from the host, the tap's tx_packets slope) or the same counter (TX: the tap's rx_packets over the
window), on the back-end's CPU; but one thread that does nothing per frame except one readv or writev
(or a share of an io_uring batch). vhostsplice / floor says how much of what a tap allows a worker gets.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("tap_floor.c")
URING_BATCH = 32                    # reads/writes per io_uring_enter in the io_uring variants
NET_HDR_LEN = 12                    # the worker's tap header with VIRTIO_F_VERSION_1


@dataclass(frozen=True)
class Variant:
    """One floor column: the header its queue carries and how it moves frames (0: readv/writev)."""
    column: str
    hdr: int
    batch: int


# --floor VALUE -> the column it adds. "same" is the one with the worker's header (the headline ratio).
VARIANTS = {
    "vnet": Variant("floor vnet-hdr", NET_HDR_LEN, 0),
    "plain": Variant("floor no-hdr", 0, 0),
    "uring": Variant(f"floor io_uring-{URING_BATCH} vnet-hdr", NET_HDR_LEN, URING_BATCH),
    "uring-plain": Variant(f"floor io_uring-{URING_BATCH} no-hdr", 0, URING_BATCH),
}
BY_COLUMN = {v.column: v for v in VARIANTS.values()}


def same_as_worker(no_offloads: bool) -> str:
    """The --floor value whose queue carries the header the measured worker's does."""
    return "plain" if no_offloads else "vnet"


def parse(spec: str, no_offloads: bool) -> list[str]:
    """--floor VALUE,... -> variant names ("same" resolved); ValueError on an unknown one."""
    names = [same_as_worker(no_offloads) if v.strip() == "same" else v.strip() for v in spec.split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise ValueError(f"unknown floor variant(s) {bad}: same, {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def build(where: Path = Path("/tmp")) -> Path:
    """Compile tap_floor.c (once per source version) under WHERE; the path of the program."""
    src = SOURCE.read_bytes()
    out = where / f"vsbench-tap-floor-{hashlib.sha256(src).hexdigest()[:12]}" / "tap_floor"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("--floor needs a C compiler (apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(SOURCE)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed:\n{r.stderr[-3000:]}")
    tmp.rename(out)
    return out


def argv(program: Path, mode: str, tap: str, variant: Variant, size: int) -> list[str]:
    """The floor's command line: mode rx or tx, frame SIZE (tx)."""
    return [str(program), mode, tap, str(variant.hdr), str(size), str(variant.batch)]

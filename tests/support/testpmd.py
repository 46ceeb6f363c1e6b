"""DPDK testpmd as a peer: a virtio-user front-end (driver side), or DPDK's own back-end.

Measured on the CI machine kind (DPDK 22.11, see /work/shared/interop.md section 1):
- testpmd waits for Enter on stdin ("Press enter to exit"): started with stdin at EOF it exits at
  once, so we keep a pipe open on its stdin. SIGINT to its own PID prints the totals and exits 0.
- Totals: one "Forward statistics for port N" block per port (absent when there is only one port),
  then "Accumulated forward statistics for all ports", each with RX-packets/RX-dropped/TX-packets/
  TX-dropped. In txonly, TX-packets counts frames rte_eth_tx_burst accepted into the ring; TX-dropped
  counts frames refused because the ring was full. DPDK's net_vhost back-end received exactly
  TX-packets (not TX-total).
- Its stdout is fully buffered when it is not a terminal: run it under `stdbuf -oL` to see progress.
- `--stats-period=S` prints "NIC statistics for port N" blocks every S seconds (live counters).

Run as a program, this module is also a stand-in for `vhostsplice run` backed by DPDK (net_vhost
bridged to a net_tap in io mode), so the interop tests can be checked against DPDK's own back-end:
    VHOSTSPLICE="python3 tests/support/testpmd.py" pytest tests/interop
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

TESTPMD = os.environ.get("DPDK_TESTPMD", "dpdk-testpmd")
DPDK_RUNTIME = Path("/var/run/dpdk")
_counter = itertools.count(1)
# testpmd's stdout is a file here: without this its progress lines sit in a 4 KiB stdio buffer.
LINE_BUFFERED = ("stdbuf", "-oL", "-eL")

_TOTALS_RE = re.compile(
    r"(?:Forward statistics for port (?P<port>\d+)|Accumulated forward statistics for all ports)"
    r"[^\n]*\n\s*RX-packets:\s*(?P<rx>\d+)\s+RX-dropped:\s*(?P<rxd>\d+)[^\n]*\n"
    r"\s*TX-packets:\s*(?P<tx>\d+)\s+TX-dropped:\s*(?P<txd>\d+)")
_NIC_RE = re.compile(r"NIC statistics for port (?P<port>\d+)[^\n]*\n\s*RX-packets:\s*(?P<rx>\d+)"
                     r"(?:.*\n)*?\s*TX-packets:\s*(?P<tx>\d+)")
_STARTED = ("packet forwarding - ports=",)
_FAILED = ("No probed ethernet devices", "EAL: Error", "Cause:", "Fail to start port")


@dataclass(frozen=True)
class Totals:
    rx_packets: int
    rx_dropped: int
    tx_packets: int
    tx_dropped: int


def parse_totals(text: str) -> dict:
    """Final totals: {port number: Totals, ..., "all": Totals} from testpmd's exit output."""
    found = {}
    for m in _TOTALS_RE.finditer(text):
        key = int(m["port"]) if m["port"] is not None else "all"
        found[key] = Totals(int(m["rx"]), int(m["rxd"]), int(m["tx"]), int(m["txd"]))
    return found


def parse_live(text: str) -> dict[int, tuple[int, int]]:
    """The latest --stats-period counters: {port: (RX-packets, TX-packets)}."""
    return {int(m["port"]): (int(m["rx"]), int(m["tx"])) for m in _NIC_RE.finditer(text)}


def available() -> bool:
    return shutil.which(TESTPMD) is not None


class Testpmd:
    """One testpmd process; output goes to LOG. Stop it with stop() (SIGINT, totals) or kill()."""

    def __init__(self, vdevs: Sequence[str], *, mode: str, log: Path, lcores: str = "0@1,1@0",
                 txpkts: int | None = None, stats_period: int | None = None,
                 extra: Sequence[str] = (), argv_prefix: Sequence[str] = LINE_BUFFERED):
        self.prefix = f"vst{os.getpid()}x{next(_counter)}"
        self.log = Path(log)
        argv = [*argv_prefix, TESTPMD, "--no-pci", "--no-huge", "-m", "512",
                f"--file-prefix={self.prefix}", "--lcores", lcores]
        for vdev in vdevs:
            argv += ["--vdev", vdev]
        argv += ["--", "--nb-cores=1", "--total-num-mbufs=32768", "--auto-start",
                 f"--forward-mode={mode}", *extra]
        if txpkts is not None:
            argv.append(f"--txpkts={txpkts}")
        if stats_period is not None:
            argv.append(f"--stats-period={stats_period}")
        self.argv = argv
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self._logf,
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self, timeout: float = 60) -> None:
        """Until forwarding has started; AssertionError (with the log) if it exits or fails first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if any(s in text for s in _STARTED) and "ports=0 " not in text:
                return
            if self.proc.poll() is not None or any(s in text for s in _FAILED):
                break
            time.sleep(0.1)
        raise AssertionError(f"testpmd did not start forwarding ({self.argv}):\n{self.text()[-4000:]}")

    def wait_live(self, predicate, timeout: float = 30, port: int = 0):
        """Poll the --stats-period counters of PORT until predicate((rx, tx)) holds; return them."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline and self.proc.poll() is None:
            last = parse_live(self.text()).get(port)
            if last is not None and predicate(last):
                return last
            time.sleep(0.2)
        return last

    def stop(self, timeout: float = 60) -> dict:
        """SIGINT to our PID, wait for exit 0, return parse_totals() of its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"testpmd did not exit on SIGINT:\n{self.text()[-4000:]}") from None
        self._cleanup()
        totals = parse_totals(self.text())
        if rc != 0 or "all" not in totals:
            raise AssertionError(f"testpmd exited {rc}, totals {totals}:\n{self.text()[-4000:]}")
        return totals

    def kill(self) -> None:
        """SIGKILL our own process if it still runs (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._logf.close()
        shutil.rmtree(DPDK_RUNTIME / self.prefix, ignore_errors=True)

    def __enter__(self) -> "Testpmd":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


QUEUE_SIZE = 256  # virtio_user's default, made explicit: the most a back-end can leave unconsumed


@dataclass(frozen=True)
class Layout:
    """A ring layout virtio-user asks for (its packed_vq and in_order devargs, both always given: its
    defaults are packed_vq=0 and in_order=1) and so must negotiate: VIRTIO_F_RING_PACKED (bit 34) is
    acked exactly when packed_vq, VIRTIO_F_IN_ORDER (bit 35) exactly when in_order."""
    id: str
    packed_vq: bool
    in_order: bool

    @property
    def devargs(self) -> str:
        return f"packed_vq={int(self.packed_vq)},in_order={int(self.in_order)}"


# The layouts the interop tests run on, by id: split with IN_ORDER (virtio-user's default, what the split
# tests always ran), packed, and packed with IN_ORDER.
LAYOUTS = {layout.id: layout for layout in (
    Layout("split-in-order", packed_vq=False, in_order=True),
    Layout("packed", packed_vq=True, in_order=False),
    Layout("packed-in-order", packed_vq=True, in_order=True),
)}
DEFAULT_LAYOUT = LAYOUTS["split-in-order"]


def virtio_user(sock: Path | str, *, mode: str, log: Path, txpkts: int | None = None,
                stats_period: int | None = None, layout: Layout = DEFAULT_LAYOUT) -> Testpmd:
    """testpmd as the front-end (driver) on SOCK with rings of LAYOUT: forwarding lcore on CPU 0, main
    lcore on CPU 1."""
    return Testpmd([f"net_virtio_user0,path={sock},queues=1,queue_size={QUEUE_SIZE},{layout.devargs}"],
                   mode=mode, log=log, lcores="0@1,1@0", txpkts=txpkts, stats_period=stats_period)


def negotiated_features(text: str) -> int | None:
    """The virtio features DPDK's vhost library (net_vhost) says it negotiated: the last "negotiated Virtio
    features: 0x..." line of its log (VHOST_CONFIG, logged at its default level), None if there is none."""
    found = re.findall(r"negotiated Virtio features: (0x[0-9a-fA-F]+)", text)
    return int(found[-1], 16) if found else None


# -- DPDK's back-end standing in for `vhostsplice run` (sanity check of the interop tests) ---------

def _shim_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="testpmd.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="net_vhost on --socket-path bridged to net_tap on --tap")
    run.add_argument("--socket-path", required=True)
    run.add_argument("--tap", required=True)
    run.add_argument("--stats-file", required=True)
    return p.parse_args(argv)


def shim_main(argv: Sequence[str] | None = None) -> int:
    """Like `vhostsplice run`: serve SOCK, move packets to/from TAP, on SIGTERM write stats, exit 0."""
    args = _shim_args(sys.argv[1:] if argv is None else argv)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    log = Path(args.stats_file).with_suffix(".testpmd.log")
    pmd = Testpmd([f"net_vhost0,iface={args.socket_path},queues=1", f"net_tap0,iface={args.tap}"],
                  mode="io", log=log, lcores="0@0,1@1")
    while not stop and pmd.proc.poll() is None:
        time.sleep(0.1)
    port0 = pmd.stop().get(0, Totals(0, 0, 0, 0))  # port 0 is the vhost port
    stats = {"exit": 0, "errno": "OK", "backend": "dpdk-net_vhost",
             "rings": {"rx": {"packets": port0.tx_packets}, "tx": {"packets": port0.rx_packets}}}
    features = negotiated_features(pmd.text())
    if features is not None:            # the worker's "features": what the front-end acked
        stats["features"] = f"{features:#x}"
    Path(args.stats_file).write_text(json.dumps(stats) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(shim_main())

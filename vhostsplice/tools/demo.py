"""`vhostsplice demo`: the main job on an embedded default, with nothing but root.

A private netns with a tap, a real `vhostsplice run` worker on it, the built-in front-end as the guest:
frames go guest -> tap (seen by an AF_PACKET socket on the tap) and tap -> guest (sent on the tap,
received in the guest's RX ring), every frame checked byte for byte. Prints a table, cleans up.
"""
from __future__ import annotations

import os
import tempfile
import time

import click

from ..errors import SetupError
from ..testing.frontend import Frontend
from ..testing.harness import WorkerProcess, collect, demo_frame, tap_socket
from ..testing.netns import PrivateNetns

TAP = "vsdemo0"


def _guest_to_tap(fe: Frontend, tap, frames: int, size: int) -> tuple[int, int, float]:
    sent = [demo_frame(i, size) for i in range(frames)]
    start, got = time.monotonic(), []
    batch = fe.queue_size // 2
    for i in range(0, frames, batch):
        chunk = sent[i:i + batch]
        fe.send(chunk)
        fe.wait_used(fe.tx, len(chunk))
        got += collect(tap, len(chunk), timeout=5.0)
    elapsed = time.monotonic() - start
    return len(got), sum(a == b for a, b in zip(sent, got)), elapsed


def _tap_to_guest(fe: Frontend, tap, frames: int, size: int) -> tuple[int, int, float]:
    sent = [demo_frame(i, size, src=b"\x02\x00\x00\x00\x00\x02") for i in range(frames)]
    start, got = time.monotonic(), []
    batch = fe.queue_size // 2
    for i in range(0, frames, batch):
        chunk = sent[i:i + batch]
        fe.post_rx(len(chunk), 2048)
        for frame in chunk:
            tap.send(frame)
        got += fe.receive(len(chunk))
    elapsed = time.monotonic() - start
    return len(got), sum(a == b for a, b in zip(sent, got)), elapsed


def run_demo(frames: int, size: int) -> int:
    if os.geteuid() != 0:
        raise SetupError("the demo creates a network namespace and a tap: run it as root", 1)
    click.echo(f"vhostsplice demo: {frames} frames of {size} B each way through a tap in a private netns")
    with PrivateNetns("vsdemo") as ns, tempfile.TemporaryDirectory(prefix="vsdemo-") as tmp, ns.entered():
        worker = WorkerProcess(tmp, TAP)
        try:
            worker.wait_listening()
            tap = tap_socket(TAP)
            with Frontend.connect(worker.sock) as fe:
                fe.start()
                rows = [("guest -> tap", *_guest_to_tap(fe, tap, frames, size)),
                        ("tap -> guest", *_tap_to_guest(fe, tap, frames, size))]
                fe.stop()             # GET_VRING_BASE on both rings, then close: the worker exits 0
            tap.close()
            code, stats = worker.wait()
        except BaseException:
            worker.kill()
            click.echo(f"worker stderr:\n{worker.proc.stderr.read()}", err=True)
            raise
    _print_table(rows, frames, size, code, stats)
    ok = code == 0 and all(arrived == frames and intact == frames for _, arrived, intact, _ in rows)
    click.echo("demo passed: every frame arrived intact" if ok else "demo FAILED")
    return 0 if ok else 5


def _print_table(rows, frames, size, code, stats) -> None:
    click.echo(f"\n{'direction':<14}{'sent':>8}{'arrived':>9}{'intact':>8}{'kpps':>9}{'Mbit/s':>9}")
    for name, arrived, intact, elapsed in rows:
        kpps = arrived / elapsed / 1e3 if elapsed else 0.0
        click.echo(f"{name:<14}{frames:>8}{arrived:>9}{intact:>8}{kpps:>9.1f}{kpps * size * 8 / 1e3:>9.1f}")
    rings = stats.get("rings", {})
    click.echo(f"\nworker exit {code} ({stats.get('errno', '?')}); counters: "
               f"tx packets {rings.get('tx', {}).get('packets')}, rx packets {rings.get('rx', {}).get('packets')}, "
               f"wake-ups {stats.get('wakeups')}")
    click.echo("(rates are the pure-Python demo front-end's, not the back-end's: see benchmarks/)")

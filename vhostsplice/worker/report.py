"""A worker's counters out: the stats dict (README "Statistics"), rendered by counters.py as JSON or
Prometheus text, written to --stats-file (atomically, through its directory) or to stderr: on exit, on
SIGUSR1 and every --stats-interval.

The directory is opened (O_PATH) when the worker is made, before it confines itself: the sandbox lets a
confined worker open files in that directory only (sandbox/allowlist.py, Facts.stats_dir_fd).
"""
from __future__ import annotations

import logging
import os
import sys
import time

from . import counters
from ..errors import errno_name, from_oserror

log = logging.getLogger("vhostsplice")


class StatsOut:
    """Where and how the counters go (--stats-file, --stats-format, --stats-interval)."""

    def __init__(self, path: str | None, fmt: str = "json", interval: float | None = None):
        self.path, self.format, self.interval = path, fmt, interval
        self.next_due = time.monotonic() + interval if interval else None     # the next --stats-interval rewrite
        self.dir_fd = -1
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            try:
                self.dir_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise from_oserror(exc, f"--stats-file {path}") from None

    def due_in(self) -> float | None:
        """Seconds until the next --stats-interval rewrite (None: none is due, ever)."""
        return None if self.next_due is None else max(0.0, self.next_due - time.monotonic())

    def tick(self, worker) -> None:
        """--stats-interval: the stats file rewritten once the interval has passed."""
        if self.next_due is not None and time.monotonic() >= self.next_due:
            worker.report(final=False)
            self.next_due = time.monotonic() + self.interval

    def emit(self, data: dict) -> None:
        text = counters.render(data, self.format, worker=counters.worker_name(self.path))
        if self.path:
            try:
                self._write(text)
                return
            except OSError as exc:
                log.warning("--stats-file %s: %s; the statistics follow on stderr", self.path, exc)
        print(text, end="", file=sys.stderr, flush=True)

    def _write(self, text: str) -> None:
        """A temporary file in the stats directory (held open since start), renamed over the stats file."""
        name = os.path.basename(self.path)
        fd = os.open(f"{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=self.dir_fd)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(f"{name}.tmp", name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


def busy_poll(worker) -> dict:
    """--busy-poll: its mode and window (auto: each direction's window now, in ns), the polls and windows."""
    usec = worker.config.busy_poll_us
    if usec >= 0:
        return {"mode": "fixed" if usec else "off", "usec": usec, **worker.busy}
    w = worker.datapath.waiting
    return {"mode": "auto", "usec": 0, "window_rx_ns": int(w.auto_ns[0]), "window_tx_ns": int(w.auto_ns[1]),
            **worker.busy}


def collect(worker) -> dict:
    """The worker's stats dict: its own counters, the rings', the host fd's and the negotiated state."""
    rings = worker.datapath.stats()
    backend, datapath, config = worker.backend, worker.datapath, worker.config
    if backend is not None:
        for ring in backend.rings:
            rings["rx" if ring.index == 0 else "tx"]["kicks"] = ring.kicks
    out = {
        "exit": worker.exit_code, "errno": errno_name(worker.exit_code), "reason": worker.reason,
        "wakeups": worker.wakeups, "lost_kicks": worker.lost_kicks, "rechecks": dict(worker.rechecks),
        "busy_poll": busy_poll(worker),
        "refused": dict(worker.refused),
        "uptime_s": round(time.monotonic() - worker.started, 3), "rings": rings,
        "host": {"kind": worker.hostfd.kind, "name": worker.hostfd.name, "vnet_hdr_len": datapath.host_hdr_len,
                 "io": datapath.host_io()},
    }
    if backend is not None:
        out["features"] = f"{backend.acked or 0:#x}"
        out["offered"] = f"{backend.offered:#x}"
        out["protocol_features"] = f"{backend.protocol_acked:#x}"
        out["messages"] = backend.messages
        out["rarp"] = dict(backend.rarp)        # SEND_RARP after a migration: sent, dropped, skipped
    out["resume"] = config.state.report()      # where each ring resumed from (the state page)
    out["dirty_log"] = datapath.log_stats()    # live migration: log_all, log_size, writes, overflow
    out["memory"] = datapath.memory_stats()    # the region table: regions, bytes (memory hot-plug)
    out["sandbox"] = dict(config.sandbox.report) if config.sandbox else {"mode": "off"}
    return out

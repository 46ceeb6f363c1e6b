"""The traffic half of `vhostsplice drive`: frames sent guest -> tap and seen used, RX buffers posted and
frames collected tap -> guest, and the waits between them (on the call and err eventfds and the control
socket). drive.py sets the connection up, injects the fault and says how it all ended."""
from __future__ import annotations

import errno
import os
import select
import time

from ..errors import FrontendGone, VhostspliceError
from ..testing.frontend import Frontend, FrontendError
from ..testing.harness import demo_frame
from .pcap import Pcap


class DriveError(VhostspliceError):
    """drive did not see what it was asked to see; errno is drive's exit code (DRIVE_EXITS)."""


class WorkerClosed(Exception):
    """The worker closed the control connection."""


class Traffic:
    """What one drive sends, receives and waits for. `summary` is drive's JSON summary (its "tx", "rx",
    "err_signalled" and "worker_closed" are kept here); `opts` drive.DriveOptions."""

    def __init__(self, opts, summary: dict):
        self.o, self.s = opts, summary
        self.fe: Frontend | None = None         # attach(): once drive has connected
        self.pcap: Pcap | None = None
        self.stop_signal = 0                    # SIGTERM/SIGINT seen (run_drive's handler)
        self.in_hold = False
        self.seq = 0

    def attach(self, fe: Frontend) -> None:
        """The connected front-end; --pcap's file is made now, once a worker is there."""
        self.fe = fe
        if self.o.pcap:
            self.pcap = Pcap(self.o.pcap)

    def close(self) -> None:
        if self.pcap:
            self.pcap.close()

    # -- waiting -----------------------------------------------------------------------------------------
    def wait(self, deadline: float) -> None:
        """Sleep until a call/err eventfd or the control socket stirs (or 0.1 s); WorkerClosed if it closed."""
        fe = self.fe
        fds = [*fe.call, *fe.err, fe.chan.sock]
        left = max(0.0, min(deadline - time.monotonic(), 0.1))
        ready = select.select(fds, [], [], left)[0]
        for fd in (*fe.call, *fe.err):
            if fd in ready:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                if fd in fe.err:
                    self.s["err_signalled"]["rx" if fd == fe.err[0] else "tx"] = True
        if fe.chan.sock in ready and self.closed():
            raise WorkerClosed()
        if self.stop_signal and not self.in_hold:
            raise DriveError(f"stopped by signal {self.stop_signal} before the work was done", errno.EINTR)

    def closed(self) -> bool:
        try:
            closed = self.fe.peer_closed()
        except FrontendError as exc:
            raise DriveError(str(exc), errno.EPROTO) from None
        if closed:
            self.s["worker_closed"] = True
        return closed

    def await_close(self, what: str) -> None:
        deadline = time.monotonic() + self.o.timeout
        try:
            while time.monotonic() < deadline:
                self.wait(deadline)
        except WorkerClosed:
            return
        raise DriveError(f"{what}, and did not close the connection within {self.o.timeout} s", errno.ETIMEDOUT)

    # -- TX ----------------------------------------------------------------------------------------------
    def frame(self) -> bytes:
        frame = demo_frame(self.seq, self.o.size)
        self.seq += 1
        return frame

    def send(self, count: int) -> None:
        room = (self.o.mem_mib << 20) // 4 // (self.o.size + 64)     # leave guest memory for rings and RX
        batch = max(1, min(self.fe.queue_size // 2, room))
        while count > 0:
            chunk = [self.frame() for _ in range(min(batch, count))]
            try:
                self.fe.send(chunk)
            except (FrontendGone, ConnectionError, OSError) as exc:
                raise WorkerClosed() from exc
            self.s["tx"]["sent"] += len(chunk)
            self.wait_tx(len(chunk))
            self.s["tx"]["bytes"] += sum(map(len, chunk))
            count -= len(chunk)

    def wait_tx(self, count: int) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + self.o.timeout
        while True:
            got += self.fe.tx.used()
            if len(got) >= count:
                self.s["tx"]["used"] += len(got)
                return got
            if time.monotonic() >= deadline:
                self.s["tx"]["used"] += len(got)
                raise DriveError(f"TX: {len(got)} of {count} chains used after {self.o.timeout} s", errno.ETIMEDOUT)
            try:
                self.wait(deadline)
            except WorkerClosed:
                # A worker may publish its last used entries and leave at once (--on-guest-error=exit):
                # what it published still counts. Seen once in ~40 runs of the fault table under load.
                got += self.fe.tx.used()
                if len(got) < count:
                    raise

    # -- RX ----------------------------------------------------------------------------------------------
    def rx_target(self) -> int:
        if self.o.rx_buffers is not None:
            return min(self.o.rx_buffers, self.fe.queue_size)
        return min(self.o.expect, self.fe.queue_size)

    def post_rx(self, target: int) -> None:
        missing = target - self.fe.rx_outstanding
        if missing > 0:
            self.fe.post_rx(missing, self.o.rx_buffer_size)
            self.s["rx"]["posted"] += missing

    def collect_rx(self) -> None:
        frames = self.fe.take_received()
        for frame in frames:
            self.s["rx"]["received"] += 1
            self.s["rx"]["bytes"] += len(frame)
            if self.pcap:
                self.pcap.write(frame)
        if frames:
            self.post_rx(self.rx_target())

    def receive(self) -> None:
        if not self.o.expect:
            return
        deadline = time.monotonic() + self.o.timeout
        while True:
            self.collect_rx()
            if self.s["rx"]["received"] >= self.o.expect:
                return
            if time.monotonic() >= deadline:
                raise DriveError(f"RX: {self.s['rx']['received']} of {self.o.expect} frames after {self.o.timeout} s",
                                 errno.ETIMEDOUT)
            self.wait(deadline)

    def hold(self) -> None:
        """Keep the rings running (collecting RX) until --hold passes, the worker closes, or a signal."""
        if self.o.hold <= 0:
            return
        self.in_hold = True
        deadline = time.monotonic() + self.o.hold
        try:
            while time.monotonic() < deadline and not self.stop_signal:
                if self.fe.rx is not None and self.rx_target():
                    self.collect_rx()
                self.wait(deadline)
        except WorkerClosed:
            self.s["reason"] = "the worker closed the connection during --hold"

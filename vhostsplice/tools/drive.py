"""`vhostsplice drive`: the pure-Python front-end and virtio driver as a command, for scripts and tests.

It connects to a listening worker (`vhostsplice run --socket-path`), or listens for one
(`vhostsplice run --connect`), negotiates the features asked for, shares memory, brings up both rings,
sends frames (guest -> tap), posts RX buffers and collects what the tap side sends (tap -> guest), can
inject one fault from `testing/faults.py` at a chosen moment, and prints one JSON summary on stdout.
At the end it stops both rings (GET_VRING_BASE) and closes: a worker then exits 0.

Its own exit code says whether what it was asked to see happened (exits.py's DRIVE_EXITS, `drive --help`). The
worker's exit code is the worker's business: a script reads it from `wait`. What it sends, receives and
waits for is traffic.py's; --features names features.py's; --pcap files pcap.py's.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

from ..errors import ConfigError, FrontendGone, VhostspliceError, errno_name
from ..spec import Feature as F, bit
from ..testing import faults as faults_mod
from ..testing.frontend import DEFAULT_FEATURES, Frontend, FrontendClosed, FrontendError
from .features import feature_names
from .traffic import DriveError, Traffic, WorkerClosed


@dataclass
class DriveOptions:
    socket_path: str
    listen: bool = False
    connect_timeout: float = 5.0
    features: int = DEFAULT_FEATURES
    packed: bool = False            # also want RING_PACKED, and fail (EINVAL) unless it is acked
    queue_size: int = 256
    mem_mib: int = 16
    send: int = 0
    size: int = 512
    expect: int = 0
    rx_buffers: int | None = None
    rx_buffer_size: int = 2048
    pcap: str | None = None
    fault: str | None = None
    fault_after: int = 0
    timeout: float = 5.0
    hold: float = 0.0
    ready_file: str | None = None


class Drive:
    def __init__(self, opts: DriveOptions):
        self.o = opts
        self.fault = faults_mod.get(opts.fault) if opts.fault else None
        if self.fault and self.fault.phase == faults_mod.SETUP and opts.fault_after:
            raise ConfigError(f"--fault {self.fault.name} happens during set-up: --fault-after does not apply")
        self.send_total = max(opts.send, opts.fault_after if self.fault else 0)
        self.fe: Frontend | None = None
        self.started = time.monotonic()
        self.s = {
            "drive": "failed", "exit": 1, "errno": "", "reason": "",
            "socket": opts.socket_path, "mode": "listen" if opts.listen else "connect",
            "features": {"wanted": f"{opts.features:#x}"}, "queue_size": opts.queue_size,
            "tx": {"sent": 0, "used": 0, "bytes": 0, "frame_size": opts.size},
            "rx": {"expected": opts.expect, "posted": 0, "received": 0, "bytes": 0},
            "fault": None, "worker_closed": False, "err_signalled": {"rx": False, "tx": False},
            "rings_stopped_at": None, "pcap": opts.pcap, "elapsed_s": 0.0,
        }
        self.traffic = Traffic(opts, self.s)

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            try:
                self._run()
                code, reason = 0, self.s["reason"] or "ok"
            except VhostspliceError as exc:
                code, reason = exc.errno, str(exc)
            except WorkerClosed:
                self.s["worker_closed"] = True
                fault = self.s["fault"]
                if fault and fault["observed"]:     # after its fault the worker may leave (--on-guest-error=exit)
                    code, reason = 0, "the worker closed the connection after the fault"
                else:
                    code, reason = errno.ECONNRESET, "the worker closed the connection"
            if code and self.fe is not None and self.fe.tx is not None and not self.s["worker_closed"]:
                try:                       # leave the worker as a clean front-end would: rings stopped
                    self._stop_rings()
                except (VhostspliceError, WorkerClosed, OSError):
                    pass
        finally:
            self._close()
        self.s.update(drive="ok" if code == 0 else "failed", exit=code, errno=errno_name(code), reason=reason,
                      elapsed_s=round(time.monotonic() - self.started, 3))
        print(json.dumps(self.s, sort_keys=True), flush=True)
        if code:
            print(f"vhostsplice drive: {reason} [exit {code} {errno_name(code)}]", file=sys.stderr, flush=True)
        return code

    def _run(self) -> None:
        self.fe = self._open()
        fault = self.fault
        want = (self.o.features | (bit(F.F_RING_PACKED) if self.o.packed else 0)) \
            & ~(fault.drop_features if fault else 0)
        self.fe.want = want
        if fault:
            self.s["fault"] = dict(fault.row(), after=self.o.fault_after, injected=False, observed=False)
        self.traffic.attach(self.fe)
        try:
            self._start()
        except WorkerClosed:
            self.s["worker_closed"] = True
            if fault and fault.phase == faults_mod.SETUP:       # what the fault asked for
                self.s["fault"].update(injected=True, observed=True)
                return
            raise DriveError("the worker closed the connection during set-up", errno.ECONNRESET) from None
        if fault and fault.phase == faults_mod.SETUP:
            self.s["fault"]["injected"] = True
            self.traffic.await_close(f"--fault {fault.name}: the worker accepted the rings")
            self.s["fault"]["observed"] = True
            return
        if self.o.packed and not self.fe.packed:
            self._stop_rings()
            raise ConfigError("--packed: the worker does not offer RING_PACKED (started with --no-packed?)")
        if fault and self.fe.acked & fault.needs != fault.needs:
            self._stop_rings()
            raise ConfigError(f"--fault {fault.name} needs {', '.join(feature_names(fault.needs))} acked "
                              f"(acked: {', '.join(feature_names(self.fe.acked))})")
        traffic = self.traffic
        traffic.post_rx(traffic.rx_target())
        traffic.send(self.o.fault_after if fault else self.send_total)
        if fault:
            if not self._inject(fault):
                return                                         # the worker is gone: nothing more to do
        traffic.send(self.send_total - self.s["tx"]["sent"])
        self._ready()
        traffic.receive()
        traffic.hold()
        self._stop_rings()

    # -- connection and set-up ---------------------------------------------------------------------------
    def _open(self) -> Frontend:
        kw = dict(queue_size=self.o.queue_size, mem_size=self.o.mem_mib << 20)
        path = self.o.socket_path
        try:
            if self.o.listen:
                return Frontend.listen(path, timeout=self.o.connect_timeout, **kw)
            return Frontend.connect(path, timeout=self.o.connect_timeout, **kw)
        except FileExistsError as exc:
            raise ConfigError(f"--listen: {exc.strerror}") from None
        except (TimeoutError, FileNotFoundError, ConnectionRefusedError) as exc:
            what = "no worker connected to" if self.o.listen else "no worker listening on"
            raise DriveError(f"{what} {path} within {self.o.connect_timeout} s ({exc.__class__.__name__})",
                             errno.ECONNREFUSED) from None
        except OSError as exc:
            raise DriveError(f"{path}: {os.strerror(exc.errno or errno.EIO)}", errno.ECONNREFUSED) from None

    def _start(self) -> None:
        fe = self.fe
        try:
            fe.negotiate()
            self.s["features"].update(offered=f"{fe.offered:#x}", acked=f"{fe.acked:#x}",
                                      acked_names=feature_names(fe.acked),
                                      protocol_acked=f"{fe.protocol_acked:#x}",
                                      layout="packed" if fe.packed else "split")
            fe.share_memory()
            fe.rx = fe.setup_ring(0)
            fe.tx = fe.setup_ring(1)
        except FrontendClosed:
            raise WorkerClosed() from None
        except (FrontendGone, ConnectionError):
            raise WorkerClosed() from None
        except FrontendError as exc:
            if fe.peer_closed():
                raise WorkerClosed() from None
            raise DriveError(f"set-up: {exc}", errno.EPROTO) from None

    def _stop_rings(self) -> None:
        if self.s["worker_closed"]:
            return
        try:
            self.s["rings_stopped_at"] = list(self.fe.stop())
        except (FrontendClosed, FrontendGone, ConnectionError):
            self.s["worker_closed"] = True
            raise WorkerClosed() from None
        except FrontendError as exc:
            raise DriveError(f"GET_VRING_BASE: {exc}", errno.EPROTO) from None

    def _close(self) -> None:
        self.traffic.close()
        if self.fe is not None:
            try:
                self.fe.close()
            except OSError:
                pass
            self.fe = None

    def _ready(self) -> None:
        if self.o.ready_file:
            tmp = f"{self.o.ready_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.o.ready_file)

    # -- faults ------------------------------------------------------------------------------------------
    def _inject(self, fault) -> bool:
        """Inject the fault and see the reaction the table promises; False when the worker is gone."""
        rec = self.s["fault"]
        try:
            rec["details"] = fault.inject(self.fe, self.traffic.frame())
        except (FrontendGone, ConnectionError) as exc:
            raise WorkerClosed() from exc
        rec["injected"] = True
        if fault.reaction == faults_mod.NONE:               # vanish: we are the ones who left
            self.s["worker_closed"] = True
            rec["observed"] = True
            self.s["reason"] = "the front-end vanished on purpose"
            return False
        if fault.reaction == faults_mod.CLOSED:
            self.traffic.await_close(f"--fault {fault.name}: the worker answered nothing")
            rec["observed"] = True
            return False
        if fault.reaction == faults_mod.RING_ERROR:
            self.traffic.await_close(f"--fault {fault.name}: the worker kept the ring")
            if not self.s["err_signalled"]["tx"]:
                self._drain_err()
            if not self.s["err_signalled"]["tx"]:
                raise DriveError(f"--fault {fault.name}: the worker closed without signalling the TX ring's "
                                 "VRING_ERR eventfd", errno.EREMOTEIO)
            rec["observed"] = True
            return False
        # USED_LEN_0: the bad chain must come back, used with length 0.
        head = rec["details"]["head"]
        try:
            used = self.traffic.wait_tx(1)
        except WorkerClosed:
            raise DriveError(f"--fault {fault.name}: the worker closed without completing the bad chain",
                             errno.EREMOTEIO) from None
        rec["used"] = [list(u) for u in used]
        if (head, 0) not in used:
            raise DriveError(f"--fault {fault.name}: used {used}, expected ({head}, 0)", errno.EREMOTEIO)
        self.s["tx"]["used"] -= len(used)        # not one of the frames sent
        rec["observed"] = True
        return self._still_there()

    def _drain_err(self) -> None:
        for i, name in ((0, "rx"), (1, "tx")):
            try:
                if os.eventfd_read(self.fe.err[i]):
                    self.s["err_signalled"][name] = True
            except BlockingIOError:
                pass

    def _still_there(self) -> bool:
        """After a counted fault: has the worker (--on-guest-error=exit) closed? Looks for 0.2 s; a close
        noticed later is not a failure either (run())."""
        deadline = time.monotonic() + 0.2
        try:
            while time.monotonic() < deadline:
                self.traffic.wait(deadline)
        except WorkerClosed:
            self.s["reason"] = "the worker closed the connection after the fault (--on-guest-error=exit)"
            return False
        return True


def run_drive(opts: DriveOptions) -> int:
    """Run one drive; prints the JSON summary; returns drive's exit code (DRIVE_EXITS)."""
    drive = Drive(opts)

    def on_signal(signum, _frame):
        drive.traffic.stop_signal = signum

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return drive.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def list_faults(as_json: bool) -> str:
    if as_json:
        return json.dumps([f.row() for f in faults_mod.FAULTS], indent=1)
    return faults_mod.table_text()


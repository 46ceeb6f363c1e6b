"""`vhostsplice drive`: the pure-Python front-end and virtio driver as a command, for scripts and tests.

It connects to a listening worker (`vhostsplice run --socket-path`), or listens for one
(`vhostsplice run --connect`), negotiates the features asked for, shares memory, brings up both rings,
sends frames (guest -> tap), posts RX buffers and collects what the tap side sends (tap -> guest), can
inject one fault from `testing/faults.py` at a chosen moment, and prints one JSON summary on stdout.
At the end it stops both rings (GET_VRING_BASE) and closes: a worker then exits 0.

Its own exit code says whether what it was asked to see happened (DRIVE_EXITS, `drive --help`). The
worker's exit code is the worker's business: a script reads it from `wait`.
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass

from ..errors import ConfigError, FrontendGone, VhostspliceError, errno_name
from ..spec import Feature as F, bit
from ..testing import faults as faults_mod
from ..testing.frontend import DEFAULT_FEATURES, Frontend, FrontendClosed, FrontendError
from ..testing.harness import demo_frame

# drive's own exit codes (README "Scripted error handling"; `drive --help` prints them).
DRIVE_EXITS: tuple[tuple[int, str, str], ...] = (
    (0, "OK", "what was asked for happened: frames sent and used, --expect frames received, the fault's reaction seen"),
    (errno.EINTR, "EINTR", "SIGTERM/SIGINT before the work was done (during --hold a signal just ends the hold: 0)"),
    (errno.EINVAL, "EINVAL", "bad usage: unknown feature or fault, a fault the acked features cannot carry, "
                             "a --listen path that exists, --packed against a worker that does not offer it"),
    (errno.EPROTO, "EPROTO", "the worker answered a request wrongly or refused it (REPLY_ACK)"),
    (errno.ECONNRESET, "ECONNRESET", "the worker closed the connection when nothing made that expected"),
    (errno.ETIMEDOUT, "ETIMEDOUT",
     "connected, but frames, used entries or the fault's reaction did not come within --timeout"),
    (errno.ECONNREFUSED, "ECONNREFUSED", "no worker to talk to within --connect-timeout"),
    (errno.EREMOTEIO, "EREMOTEIO", "the worker reacted to the fault, but not as the fault table says"),
    (1, "-", "internal error (a bug: the traceback is printed)"),
)

# Feature names for --features: the spec's names without their VIRTIO_*_F_ prefixes.
_PREFIXES = ("VIRTIO_NET_F_", "VIRTIO_RING_F_", "VIRTIO_F_", "VHOST_USER_F_", "NET_F_", "RING_F_", "F_")


def _short(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


FEATURE_NAMES: dict[str, int] = {_short(f.name): int(f) for f in F}


class DriveError(VhostspliceError):
    """drive did not see what it was asked to see; errno is drive's exit code (DRIVE_EXITS)."""


class WorkerClosed(Exception):
    """The worker closed the control connection."""


def parse_features(text: str) -> int:
    """'VERSION_1,MRG_RXBUF', '0x100008000', 'default,-EVENT_IDX' or '-EVENT_IDX' -> a feature mask.

    Items are separated by ',' or '+'; a name may carry its spec prefix (VIRTIO_NET_F_MRG_RXBUF);
    'default' is drive's default set; '-NAME' removes a bit; a list of removals alone starts from the
    default set; 0x... is a mask ORed in."""
    items = [i.strip() for i in text.replace("+", ",").split(",") if i.strip()]
    if not items:
        raise ConfigError(f"--features {text!r}: empty")
    mask = DEFAULT_FEATURES if all(i.startswith("-") for i in items) else 0
    for item in items:
        remove = item.startswith("-")
        word = item[1:] if remove else item
        if word.lower() in ("default", "defaults"):
            value = DEFAULT_FEATURES
        elif word.lower().startswith("0x"):
            try:
                value = int(word, 16)
            except ValueError:
                raise ConfigError(f"--features: {word!r} is not a hex mask") from None
            if value >> 64:
                raise ConfigError(f"--features: {word!r} does not fit 64 bits")
        else:
            key = _short(word.upper())
            if key not in FEATURE_NAMES:
                raise ConfigError(f"--features: unknown feature {word!r}; known: {', '.join(FEATURE_NAMES)}")
            value = bit(FEATURE_NAMES[key])
        mask = mask & ~value if remove else mask | value
    return mask


def feature_names(mask: int) -> list[str]:
    names = [n for n, b in FEATURE_NAMES.items() if mask & bit(b)]
    rest = mask & ~sum(bit(b) for b in FEATURE_NAMES.values())
    return names + ([f"{rest:#x}"] if rest else [])


def exit_table_text() -> str:
    return "\n".join(f"  {code:>3}  {name:<12} {text}" for code, name, text in DRIVE_EXITS)


class Pcap:
    """Classic pcap (LINKTYPE_ETHERNET, microsecond stamps): what tcpdump -r and wireshark read."""

    def __init__(self, path: str, snaplen: int = 262144):
        self.f = open(path, "wb")
        self.snaplen = snaplen
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1))
        self.count = 0

    def write(self, frame: bytes, stamp: float | None = None) -> None:
        stamp = time.time() if stamp is None else stamp
        sec, usec = int(stamp), int((stamp % 1) * 1e6)
        data = frame[:self.snaplen]
        self.f.write(struct.pack("<IIII", sec, usec, len(data), len(frame)) + data)
        self.count += 1

    def close(self) -> None:
        self.f.close()


def read_pcap(path: str) -> list[bytes]:
    """The frames of a classic little-endian pcap file (for tests and scripts)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, _maj, _min, _tz, _sig, _snap, link = struct.unpack_from("<IHHiIII", data)
    if magic != 0xA1B2C3D4 or link != 1:
        raise ValueError(f"{path}: not a little-endian Ethernet pcap")
    frames, off = [], 24
    while off < len(data):
        _s, _u, incl, _orig = struct.unpack_from("<IIII", data, off)
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


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
        self.pcap: Pcap | None = None
        self.stop_signal = 0
        self.in_hold = False
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
        self.seq = 0

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
        if self.o.pcap:
            self.pcap = Pcap(self.o.pcap)
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
            self._await_close(f"--fault {fault.name}: the worker accepted the rings")
            self.s["fault"]["observed"] = True
            return
        if self.o.packed and not self.fe.packed:
            self._stop_rings()
            raise ConfigError("--packed: the worker does not offer RING_PACKED (started with --no-packed?)")
        if fault and self.fe.acked & fault.needs != fault.needs:
            self._stop_rings()
            raise ConfigError(f"--fault {fault.name} needs {', '.join(feature_names(fault.needs))} acked "
                              f"(acked: {', '.join(feature_names(self.fe.acked))})")
        self._post_rx(self._rx_target())
        self._send(self.o.fault_after if fault else self.send_total)
        if fault:
            if not self._inject(fault):
                return                                         # the worker is gone: nothing more to do
        self._send(self.send_total - self.s["tx"]["sent"])
        self._ready()
        self._receive()
        self._hold()
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
        if self.pcap:
            self.pcap.close()
        if self.fe is not None:
            try:
                self.fe.close()
            except OSError:
                pass
            self.fe = None

    # -- waiting -----------------------------------------------------------------------------------------
    def _wait(self, deadline: float) -> None:
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
        if fe.chan.sock in ready and self._closed():
            raise WorkerClosed()
        if self.stop_signal and not self.in_hold:
            raise DriveError(f"stopped by signal {self.stop_signal} before the work was done", errno.EINTR)

    def _closed(self) -> bool:
        try:
            closed = self.fe.peer_closed()
        except FrontendError as exc:
            raise DriveError(str(exc), errno.EPROTO) from None
        if closed:
            self.s["worker_closed"] = True
        return closed

    def _await_close(self, what: str) -> None:
        deadline = time.monotonic() + self.o.timeout
        try:
            while time.monotonic() < deadline:
                self._wait(deadline)
        except WorkerClosed:
            return
        raise DriveError(f"{what}, and did not close the connection within {self.o.timeout} s", errno.ETIMEDOUT)

    # -- TX ----------------------------------------------------------------------------------------------
    def _frame(self) -> bytes:
        frame = demo_frame(self.seq, self.o.size)
        self.seq += 1
        return frame

    def _send(self, count: int) -> None:
        room = (self.o.mem_mib << 20) // 4 // (self.o.size + 64)     # leave guest memory for rings and RX
        batch = max(1, min(self.fe.queue_size // 2, room))
        while count > 0:
            chunk = [self._frame() for _ in range(min(batch, count))]
            try:
                self.fe.send(chunk)
            except (FrontendGone, ConnectionError, OSError) as exc:
                raise WorkerClosed() from exc
            self.s["tx"]["sent"] += len(chunk)
            self._wait_tx(len(chunk))
            self.s["tx"]["bytes"] += sum(map(len, chunk))
            count -= len(chunk)

    def _wait_tx(self, count: int) -> list[tuple[int, int]]:
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
                self._wait(deadline)
            except WorkerClosed:
                # A worker may publish its last used entries and leave at once (--on-guest-error=exit):
                # what it published still counts. Seen once in ~40 runs of the fault table under load.
                got += self.fe.tx.used()
                if len(got) < count:
                    raise

    # -- RX ----------------------------------------------------------------------------------------------
    def _rx_target(self) -> int:
        if self.o.rx_buffers is not None:
            return min(self.o.rx_buffers, self.fe.queue_size)
        return min(self.o.expect, self.fe.queue_size)

    def _post_rx(self, target: int) -> None:
        missing = target - self.fe.rx_outstanding
        if missing > 0:
            self.fe.post_rx(missing, self.o.rx_buffer_size)
            self.s["rx"]["posted"] += missing

    def _collect_rx(self) -> None:
        frames = self.fe.take_received()
        for frame in frames:
            self.s["rx"]["received"] += 1
            self.s["rx"]["bytes"] += len(frame)
            if self.pcap:
                self.pcap.write(frame)
        if frames:
            self._post_rx(self._rx_target())

    def _receive(self) -> None:
        if not self.o.expect:
            return
        deadline = time.monotonic() + self.o.timeout
        while True:
            self._collect_rx()
            if self.s["rx"]["received"] >= self.o.expect:
                return
            if time.monotonic() >= deadline:
                raise DriveError(f"RX: {self.s['rx']['received']} of {self.o.expect} frames after {self.o.timeout} s",
                                 errno.ETIMEDOUT)
            self._wait(deadline)

    def _ready(self) -> None:
        if self.o.ready_file:
            tmp = f"{self.o.ready_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.o.ready_file)

    def _hold(self) -> None:
        """Keep the rings running (collecting RX) until --hold passes, the worker closes, or a signal."""
        if self.o.hold <= 0:
            return
        self.in_hold = True
        deadline = time.monotonic() + self.o.hold
        try:
            while time.monotonic() < deadline and not self.stop_signal:
                if self.fe.rx is not None and self._rx_target():
                    self._collect_rx()
                self._wait(deadline)
        except WorkerClosed:
            self.s["reason"] = "the worker closed the connection during --hold"

    # -- faults ------------------------------------------------------------------------------------------
    def _inject(self, fault) -> bool:
        """Inject the fault and see the reaction the table promises; False when the worker is gone."""
        rec = self.s["fault"]
        try:
            rec["details"] = fault.inject(self.fe, self._frame())
        except (FrontendGone, ConnectionError) as exc:
            raise WorkerClosed() from exc
        rec["injected"] = True
        if fault.reaction == faults_mod.NONE:               # vanish: we are the ones who left
            self.s["worker_closed"] = True
            rec["observed"] = True
            self.s["reason"] = "the front-end vanished on purpose"
            return False
        if fault.reaction == faults_mod.CLOSED:
            self._await_close(f"--fault {fault.name}: the worker answered nothing")
            rec["observed"] = True
            return False
        if fault.reaction == faults_mod.RING_ERROR:
            self._await_close(f"--fault {fault.name}: the worker kept the ring")
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
            used = self._wait_tx(1)
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
                self._wait(deadline)
        except WorkerClosed:
            self.s["reason"] = "the worker closed the connection after the fault (--on-guest-error=exit)"
            return False
        return True


def run_drive(opts: DriveOptions) -> int:
    """Run one drive; prints the JSON summary; returns drive's exit code (DRIVE_EXITS)."""
    drive = Drive(opts)

    def on_signal(signum, _frame):
        drive.stop_signal = signum

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


DEFAULT_FEATURE_TEXT = ",".join(feature_names(DEFAULT_FEATURES))

"""`vhostsplice serve`: the multi-queue door. Terminates vhost-user, one worker process per queue pair.

vhost-user carries every ring of a device over one socket. The supervisor answers the device-wide
requests itself and forwards the rest to the worker of the pair they concern over a socketpair, as a
front-end would: ring 2k+j of the device is ring j of worker k (`vhostsplice run --fd N`, forked by the
template: template.py). Which request goes where is the device's business (serve_device.py's
ServeDevice, which this loop hands each message); each worker's life (start, requests and replies, exit,
restart) is pairs.py's Workers; this module runs the loop: the listener, the front-end, the workers'
exits and restarts, the stats file, the end. Everything a worker was told is kept (fds duplicated), so a
worker that dies is replaced and told again; it resumes
where its predecessor stopped from the pair's state page (a memfd serve holds, `run --state-fd`;
statepage.py), not from the SET_VRING_BASE replayed to it. A pair's worker starts when the front-end first enables one
of its rings (so the tap has a queue only for pairs the driver uses). When the front-end leaves, every worker's channel
is closed, so each ends by the exit-code contract (0 stopped rings, 104 running ones); serve then ends the same way and
says so in a last `end` event. The next front-end gets a fresh `serve` from whatever supervises it.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

from ..vhostuser.channel import Listener
from ..errors import STOP_SIGNALS, FrontendGone, ProtocolError, errno_name, release_stop_signals
from ..worker.runner import Ownership
from ..sandbox.audit import KillLog
from ..sandbox.serve import ServeFacts, confine_serve, name_process
from ..worker.counters import StatsOutput, device_text, worker_name, write_atomically
from .pairs import Events, Pair, Workers, read_json
from .selfexec import self_env
from .serve_device import ServeDevice
from ..device.statepage import new_memfd
from .template import Template, WorkerEntry, WorkerSpec

log = logging.getLogger("vhostsplice")


@dataclass
class ServeConfig:
    tap: str
    queues: int
    cpus: list[int]
    restart: str = "on-failure"
    events: str | None = None
    worker_args: list[str] = field(default_factory=list)
    ownership: Ownership = field(default_factory=Ownership)     # run's --socket-mode/group, --allow-uid, --user
    offloads: bool = True        # the workers offer offloads (not with --no-offloads, nor on a header-less tap)
    packed: bool = True          # the workers offer RING_PACKED (not with --no-packed)
    stats: StatsOutput | None = None     # --stats-file/-format/-interval: one file for the device, every pair
    worker: WorkerEntry | None = None     # how the template makes its workers' recipe and runs it (cli/serve.py)
    sandbox: str = "strict"      # serve's own confinement (sandbox/serve.py) and, passed on, every worker's


def spread_cpus(cpus: list[int], queues: int) -> list[int | None]:
    """Pair k runs on cpus[k % len(cpus)]; no list means no pinning."""
    return [cpus[k % len(cpus)] if cpus else None for k in range(queues)]


class Supervisor:
    """serve's loop: the listener, the front-end (its messages handed to `device`), the workers' exits and
    restarts (`workers`), the stats file and the end."""

    def __init__(self, listener: Listener, config: ServeConfig):
        self.listener, self.config = listener, config
        self.ep = select.epoll()
        stats = config.stats
        self.next_stats = time.monotonic() + stats.interval if stats and stats.interval else None
        self.roles: dict[int, str] = {}          # fd -> what it is: signal, listen, front, exit
        self.rundir = tempfile.mkdtemp(prefix="vhostsplice-serve-")
        if config.ownership.user is not None:
            os.chown(self.rundir, *config.ownership.user)     # workers that dropped write their stats here
        self.events = Events(config.events)
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)    # workers' stdin, opened before confining
        pairs = [Pair(k, cpu) for k, cpu in enumerate(spread_cpus(config.cpus, config.queues))]
        # each pair's ring-position state page (a sealed memfd), made before confining: every worker gets it;
        # KillLog names a worker's seccomp kill: /dev/kmsg, opened before confining
        state_fds = {pair.index: new_memfd(f"vhostsplice-pair{pair.index}-state") for pair in pairs}
        self.workers = Workers(pairs, restart=config.restart, emit=self.events.emit, run_dir=self.rundir,
                               state_fds=state_fds, kills=KillLog())    # run_supervisor forks its template
        self.device = ServeDevice(self.workers, queues=config.queues, offloads=config.offloads, packed=config.packed)

    @property
    def pairs(self) -> list[Pair]:
        return self.workers.pairs

    def emit(self, event: str, **fields) -> None:
        self.events.emit(event, **fields)

    def worker_spec(self) -> WorkerSpec:
        """The template's fixed recipe for this device's workers (template.WorkerSpec)."""
        stats = self.config.stats
        return WorkerSpec(tap=self.config.tap, run_dir=self.rundir, cpus=tuple(p.cpu for p in self.pairs),
                          worker_args=tuple(self.config.worker_args), env=worker_env(),
                          stats_interval=stats.interval if stats and stats.interval else None)

    # -- the loop --------------------------------------------------------------------------------------
    def _watch(self, fd: int, role: str) -> None:
        self.ep.register(fd, select.EPOLLIN)
        self.roles[fd] = role

    def run(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)
        release_stop_signals()      # a stop held since `serve` started arrives now: a clean stop
        self._watch(rfd, "signal")
        self._watch(self.listener.fileno(), "listen")
        self._watch(self.workers.fileno(), "exit")       # every worker's exit pidfd
        code = 0
        try:
            code = self.loop(rfd)
        except (ProtocolError, FrontendGone) as exc:
            self.emit("error", errno=errno_name(exc.errno), message=str(exc))
            code = exc.errno
        finally:
            for sig in STOP_SIGNALS:                        # the end is decided: a late stop signal
                signal.signal(sig, signal.SIG_IGN)          # changes neither it nor the exit code
            self.shutdown()
            os.close(rfd)
            os.close(wfd)
        self.emit("end", exit=code, errno=errno_name(code))
        return code

    def loop(self, sigfd: int) -> int:
        while True:
            timeout = self.workers.next_restart_in()
            if self.next_stats is not None:
                due = max(0.0, self.next_stats - time.monotonic())
                timeout = due if timeout < 0 else min(timeout, due)
            for fd, _ev in self.ep.poll(timeout):
                role = self.roles.get(fd, "gone")
                if role == "signal":
                    os.read(sigfd, 64)
                    return 0
                if role == "listen":
                    self.on_listen()
                elif role == "front":
                    msg = self.device.front.recv()
                    if msg is None:
                        return self.front_left()
                    self.device.handle(msg)
                elif role == "exit":
                    self.workers.reap()
            for pair in self.workers.due():
                self.device.start_worker(pair)
            if self.next_stats is not None and time.monotonic() >= self.next_stats:
                self.write_stats()
                self.next_stats = time.monotonic() + self.config.stats.interval

    def write_stats(self) -> None:
        """--stats-file: every pair's latest counters (its worker's own file) in one file for the device."""
        out = self.config.stats
        pairs = [(p.index, read_json(p.stats_file)) for p in self.pairs if p.stats_file]
        try:
            write_atomically(out.path, device_text([(i, st) for i, st in pairs if st], out.fmt, worker_name(out.path)))
        except OSError as exc:
            log.warning("--stats-file %s: %s", out.path, exc)

    def front_left(self, timeout: float = 10.0) -> int:
        """The front-end closed the socket: each worker learns it the same way (its own channel closes)
        and ends by the exit-code contract, 0 if its rings were stopped (GET_VRING_BASE) or 104 if they
        ran; its exit event says which. Not restarted: the supervisor ends too, with 0 or 104 likewise."""
        code = errno.ECONNRESET if self.device.rings_live() else 0
        self.workers.hang_up(timeout)
        return code

    def on_listen(self) -> None:
        chan = self.listener.accept()
        allowed = self.config.ownership.allow_uids
        pid, uid, _gid = chan.peer_cred()
        why = "busy" if self.device.front is not None else (
            "peer_uid" if allowed is not None and uid not in allowed else "")
        if why:                     # one front-end per device, and only one --allow-uid admits
            self.emit("refused", reason=why, pid=pid, uid=uid)
            chan.close()
            return
        self.device.front = chan
        self._watch(chan.fileno(), "front")

    def shutdown(self) -> None:
        self.workers.stop()
        self.device.close()
        if self.config.stats:
            self.write_stats()                              # the workers' final counters
        self.workers.close()
        if self.device.front is not None:
            self.device.front.close()
        self.listener.close()
        self.ep.close()
        os.close(self.devnull)
        shutil.rmtree(self.rundir, ignore_errors=True)


def worker_env() -> dict[str, str]:
    """A worker's environment: ours without VHOSTSPLICE_* variables (every option has one, and a worker is
    told everything on its command line: serve's own --socket-path from the environment must not reach
    `run --fd` as a second front-end)."""
    return {k: v for k, v in self_env().items() if not k.startswith("VHOSTSPLICE_")}


def run_supervisor(*, socket_path: str, config: ServeConfig) -> int:
    """Listen, serve one multi-queue front-end with a worker per pair; returns the exit code."""
    from ..host.hostfd import open_tap
    # create the tap (multi-queue) once, with the errors of `run`, and the header the workers will get
    probe = open_tap(config.tap, vnet_hdr_len=12 if config.offloads else 0)
    if config.offloads and not probe.vnet_hdr_len:
        log.info("tap %s carries no vnet header: offloads are not offered", config.tap)
        config.offloads = False
    # The probe stays open, detached, for serve's lifetime: the tap outlives its workers (all pairs down
    # at once included), and whatever the host set on it survives every restart (tapctl.hold_queue).
    if not probe.set_queue_attached(False):
        log.info("tap %s is single-queue: not held between workers", config.tap)
        probe.close()
    sup = None
    try:
        own = config.ownership
        owner = own.user[0] if own.user else -1
        group = own.socket_group if own.socket_group != -1 else (own.user[1] if own.user else -1)
        listener = Listener(socket_path, mode=own.socket_mode, owner=owner, group=group)
        sup = Supervisor(listener, config)
        # forked now: before confinement, after the imports
        sup.workers.template = Template(sup.worker_spec(), config.worker)
        name_process(b"vs-serve")
        # set-up done (tap held, socket listening, run directory made, template forked): confined
        # before any front-end
        stats_dir = os.path.dirname(os.path.abspath(config.stats.path)) if config.stats else None
        sup.emit("sandbox", **confine_serve(config.sandbox, ServeFacts(
            run_dir=sup.rundir, stats_dir=stats_dir, socket_dir=os.path.dirname(os.path.abspath(socket_path)))))
        return sup.run()
    finally:
        if sup is not None and sup.workers.template is not None:
            sup.workers.template.close()
        probe.close()

"""`vhostsplice serve`: the multi-queue door. Terminates vhost-user, one worker process per queue pair.

vhost-user carries every ring of a device over one socket. The supervisor answers the device-wide
requests itself and forwards the rest to the worker of the pair they concern over a socketpair, as a
front-end would: ring 2k+j of the device is ring j of worker k (`vhostsplice run --fd N`, forked by the
template: template.py). Which request goes where is the device's business (serve_device.py's
ServeDevice, which this loop hands each message, and which reaches the workers through this module's
start/send/reply: its WorkerSide); this module runs the workers and the loop. Everything a
worker was told is kept (fds duplicated), so a worker that dies is replaced and told again; it resumes
where its predecessor stopped from the pair's state page (a memfd serve holds, `run --state-fd`;
statepage.py), not from the SET_VRING_BASE replayed to it. A pair's worker starts when the front-end first enables one
of its rings (so the tap has a queue only for pairs the driver uses). When the front-end leaves, every worker's channel
is closed, so each ends by the exit-code contract (0 stopped rings, 104 running ones); serve then ends the same way and
says so in a last `end` event. The next front-end gets a fresh `serve` from whatever supervises it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

from ..vhostuser import protocol as P
from ..vhostuser.channel import Channel, Listener, close_fds
from ..errors import (CLEAN, GIVE_UP, RESTART, SIGSYS_EXIT, STOP_SIGNALS, FrontendGone, ProtocolError,
                      errno_name, release_stop_signals, restart_action)
from ..worker.runner import Ownership
from ..sandbox.audit import KillLog
from ..sandbox.serve import ServeFacts, confine_serve, name_process
from ..worker.counters import StatsOutput, device_text, worker_name, write_atomically
from .selfexec import self_env
from .pairs import Pair
from .serve_device import ServeDevice
from ..spec import Req
from ..device.statepage import new_memfd
from .template import Template, WorkerSpec

log = logging.getLogger("vhostsplice")
WORKER_REPLY_TIMEOUT = 10.0       # seconds a worker may take to answer the supervisor


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
    worker_entry: Callable[[list[str]], int] | None = None     # cli.main: what the template runs per worker
    sandbox: str = "strict"      # serve's own confinement (sandbox/serve.py) and, passed on, every worker's


def spread_cpus(cpus: list[int], queues: int) -> list[int | None]:
    """Pair k runs on cpus[k % len(cpus)]; no list means no pinning."""
    return [cpus[k % len(cpus)] if cpus else None for k in range(queues)]


class Supervisor:
    """serve's loop and its workers. The device (serve_device.ServeDevice) is handed each message from the
    front-end, and reaches the workers through start, send, reply and pairs (its WorkerSide)."""

    def __init__(self, listener: Listener, config: ServeConfig):
        self.listener, self.config = listener, config
        self.pairs = [Pair(k, cpu) for k, cpu in enumerate(spread_cpus(config.cpus, config.queues))]
        self.device = ServeDevice(self, queues=config.queues, offloads=config.offloads, packed=config.packed)
        self.ep = select.epoll()
        stats = config.stats
        self.next_stats = time.monotonic() + stats.interval if stats and stats.interval else None
        self.roles: dict[int, tuple[str, int]] = {}
        self.rundir = tempfile.mkdtemp(prefix="vhostsplice-serve-")
        if config.ownership.user is not None:
            os.chown(self.rundir, *config.ownership.user)     # workers that dropped write their stats here
        self.events = open(config.events, "a") if config.events else sys.stderr
        self.stopping = False
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)    # workers' stdin, opened before confining
        self.template: Template | None = None     # run_supervisor forks it
        self.kills = KillLog()           # names a worker's seccomp kill: /dev/kmsg, opened before confining
        # each pair's ring-position state page (a sealed memfd), made before confining: every worker gets it
        self.state_fds = {pair.index: new_memfd(f"vhostsplice-pair{pair.index}-state") for pair in self.pairs}

    # -- events ----------------------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> None:
        fields = {"event": event, "time": round(time.time(), 3), **fields}
        print(json.dumps(fields, sort_keys=True), file=self.events, flush=True)

    # -- workers ---------------------------------------------------------------------------------------
    def start(self, pair: Pair) -> None:
        """Fork the pair's worker and watch its exit (the device then tells it everything: replay)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pair.stats_file = os.path.join(self.rundir, f"pair{pair.index}.json")
        state = self.state_fds[pair.index]
        # The template forks the worker (template.py): its command line is built there, from this
        # serve's own options, and it starts with the stop signals blocked until its handlers are in.
        try:
            pair.proc = self.template.spawn(pair.index, [theirs.fileno(), state])
        finally:
            theirs.close()
        pair.started, pair.started_at = True, time.monotonic()
        pair.chan = Channel(ours)
        pair.pidfd = os.pidfd_open(pair.proc.pid)
        self._watch(pair.pidfd, "exit", pair.index)
        self.emit("start", pair=pair.index, pid=pair.proc.pid, cpu=pair.cpu, restarts=pair.restarts,
                  stats_file=pair.stats_file)       # SIGUSR1 rewrites it (a forked worker's cmdline is serve's)

    def worker_spec(self) -> WorkerSpec:
        """The template's fixed recipe for this device's workers (template.WorkerSpec)."""
        stats = self.config.stats
        return WorkerSpec(tap=self.config.tap, run_dir=self.rundir, cpus=tuple(p.cpu for p in self.pairs),
                          worker_args=tuple(self.config.worker_args), env=worker_env(),
                          stats_interval=stats.interval if stats and stats.interval else None)

    def send(self, pair: Pair, request: int, payload: bytes, fds=()) -> None:
        if pair.chan is None:
            return
        try:
            pair.chan.send(request, payload, tuple(fds))
        except (FrontendGone, OSError):
            pass        # the worker died; its exit event restarts it and replays

    def reply(self, pair: Pair, request: int) -> P.Message | None:
        """The worker's reply to `request` (workers speak only when asked); None if it went away. A worker
        that has not answered within WORKER_REPLY_TIMEOUT is wedged: it is killed (our child, by PID)
        and replaced like any worker that died, so one stuck pair cannot stall the device."""
        if pair.chan is None:
            return None
        if not select.select([pair.chan.fileno()], [], [], WORKER_REPLY_TIMEOUT)[0]:
            log.error("pair %d's worker (pid %d) did not answer %s within %.0f s: killed", pair.index,
                      pair.proc.pid, P.request_name(request), WORKER_REPLY_TIMEOUT)
            pair.proc.kill()
            return None
        try:
            reply = pair.chan.recv()
        except (ProtocolError, FrontendGone, OSError):
            return None
        if reply is not None and reply.request != request:
            close_fds(reply.fds)
            raise ProtocolError(f"pair {pair.index}'s worker answered {reply.name} to {P.request_name(request)}")
        return reply

    def on_exit(self, index: int) -> None:
        pair = self.pairs[index]
        code = pair.proc.wait()
        code = code if code >= 0 else 128 - code
        self._unwatch(pair.pidfd)
        os.close(pair.pidfd)
        pair.chan.close()
        pair.chan, pair.pidfd = None, -1
        counters = _read_json(pair.stats_file)
        stable = pair.backoff.after_run(time.monotonic() - pair.started_at)
        delay = None if self.stopping else self._restart_delay(pair, code)
        # the sandbox's kill
        killed = {"syscall": self.kills.killed_by(pair.proc.pid)} if code == SIGSYS_EXIT else {}
        self.emit("exit", pair=index, pid=pair.proc.pid, exit=code, errno=errno_name(code), stable=stable,
                  backoff=None if delay is None else round(delay, 3), failures=pair.backoff.failures,
                  counters=counters.get("rings"), dirty_log=counters.get("dirty_log"), resume=counters.get("resume"),
                  **killed)
        if self.stopping:
            return
        if code != 0:
            for j in (0, 1):       # tell the front-end the rings of this pair failed
                told = pair.told.get((Req.SET_VRING_ERR, j))
                if told and told[1] is not None:
                    _signal_eventfd(told[1])
        if delay is not None:
            pair.restarts += 1
            pair.next_start = time.monotonic() + delay
        else:
            pair.next_start = float("inf")
            self.emit("given-up", pair=index, exit=code, errno=errno_name(code))

    def _restart_delay(self, pair: Pair, code: int) -> float | None:
        """Seconds until the pair's replacement starts (errors.BACKOFF; 0 after a clean exit), or None."""
        if not self._should_restart(code):
            return None
        if restart_action(code) == CLEAN:
            pair.backoff.failures = 0
            return 0.0
        return pair.backoff.next_delay()

    def _should_restart(self, code: int) -> bool:
        policy = self.config.restart
        if policy == "never":
            return False
        if policy == "always":
            return restart_action(code) != GIVE_UP
        return restart_action(code) == RESTART

    # -- the loop --------------------------------------------------------------------------------------
    def _watch(self, fd: int, role: str, arg: int = 0) -> None:
        self.ep.register(fd, select.EPOLLIN)
        self.roles[fd] = (role, arg)

    def _unwatch(self, fd: int) -> None:
        self.roles.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass

    def run(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)
        release_stop_signals()      # a stop held since `serve` started arrives now: a clean stop
        self._watch(rfd, "signal")
        self._watch(self.listener.fileno(), "listen")
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
            timeout = self._next_restart_in()
            if self.next_stats is not None:
                due = max(0.0, self.next_stats - time.monotonic())
                timeout = due if timeout < 0 else min(timeout, due)
            for fd, _ev in self.ep.poll(timeout):
                role, arg = self.roles.get(fd, ("gone", 0))
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
                    self.on_exit(arg)
            self._restart_due()
            if self.next_stats is not None and time.monotonic() >= self.next_stats:
                self.write_stats()
                self.next_stats = time.monotonic() + self.config.stats.interval

    def write_stats(self) -> None:
        """--stats-file: every pair's latest counters (its worker's own file) in one file for the device."""
        out = self.config.stats
        pairs = [(p.index, _read_json(p.stats_file)) for p in self.pairs if p.stats_file]
        try:
            write_atomically(out.path, device_text([(i, st) for i, st in pairs if st], out.fmt, worker_name(out.path)))
        except OSError as exc:
            log.warning("--stats-file %s: %s", out.path, exc)

    def front_left(self, timeout: float = 10.0) -> int:
        """The front-end closed the socket: each worker learns it the same way (its own channel closes)
        and ends by the exit-code contract, 0 if its rings were stopped (GET_VRING_BASE) or 104 if they
        ran; its exit event says which. Not restarted: the supervisor ends too, with 0 or 104 likewise."""
        code = errno.ECONNRESET if self.device.rings_live() else 0
        self.stopping = True
        running = [p for p in self.pairs if p.chan is not None]
        for pair in running:
            pair.chan.close()
        deadline = time.monotonic() + timeout
        for pair in running:
            try:
                pair.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue            # shutdown() stops it with SIGTERM
            self.on_exit(pair.index)
        return code

    def _next_restart_in(self) -> float:
        due = [p.next_start for p in self.pairs if p.chan is None and p.next_start != float("inf")]
        return max(0.0, min(due) - time.monotonic()) if due else -1

    def _restart_due(self) -> None:
        now = time.monotonic()
        for pair in self.pairs:
            if pair.chan is None and pair.next_start <= now:
                self.device.start_worker(pair)

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
        self.stopping = True
        for pair in self.pairs:
            if pair.chan is not None and pair.proc.poll() is None:
                pair.proc.send_signal(signal.SIGTERM)
        for pair in self.pairs:
            if pair.chan is not None:
                try:
                    pair.proc.wait(10)
                except Exception:
                    pair.proc.kill()
                    pair.proc.wait()
                self.on_exit(pair.index)
        self.device.close()
        if self.config.stats:
            self.write_stats()                              # the workers' final counters
        close_fds(self.state_fds.values())
        if self.device.front is not None:
            self.device.front.close()
        self.listener.close()
        self.ep.close()
        os.close(self.devnull)
        self.kills.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def worker_env() -> dict[str, str]:
    """A worker's environment: ours without VHOSTSPLICE_* variables (every option has one, and a worker is
    told everything on its command line: serve's own --socket-path from the environment must not reach
    `run --fd` as a second front-end)."""
    return {k: v for k, v in self_env().items() if not k.startswith("VHOSTSPLICE_")}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _signal_eventfd(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass


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
        sup.template = Template(sup.worker_spec(), config.worker_entry)
        name_process(b"vs-serve")
        # set-up done (tap held, socket listening, run directory made, template forked): confined
        # before any front-end
        stats_dir = os.path.dirname(os.path.abspath(config.stats.path)) if config.stats else None
        sup.emit("sandbox", **confine_serve(config.sandbox, ServeFacts(
            run_dir=sup.rundir, stats_dir=stats_dir, socket_dir=os.path.dirname(os.path.abspath(socket_path)))))
        return sup.run()
    finally:
        if sup is not None and sup.template is not None:
            sup.template.close()
        probe.close()

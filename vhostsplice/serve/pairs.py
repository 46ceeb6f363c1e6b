"""`serve`'s worker side: one `Pair` per queue pair, and `Workers`, each pair's worker over its life.

A worker is forked by the template (template.py) with its end of a socketpair and the pair's state page;
serve sends it requests and reads its replies over the socketpair (a worker speaks only when asked, and
one that does not answer within WORKER_REPLY_TIMEOUT is killed). Its exit is watched through a pidfd,
reported as an `exit` event and, by --restart and errors.RESTART_POLICY, followed by a replacement after
the back-off (errors.BACKOFF). What a replacement is told is the device's business (serve_device.py:
it starts a pair's worker through `Workers.start` and replays to it); when it is due is told here.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..vhostuser import protocol as P
from ..vhostuser.channel import Channel, close_fds
from ..errors import CLEAN, GIVE_UP, RESTART, SIGSYS_EXIT, Backoff, FrontendGone, ProtocolError, errno_name, \
    restart_action
from ..sandbox.audit import KillLog
from ..spec import Req
from .template import Template

log = logging.getLogger("vhostsplice")
WORKER_REPLY_TIMEOUT = 10.0       # seconds a worker may take to answer the supervisor


@dataclass
class Pair:
    """One queue pair: its worker process and everything it has been told (for a replacement)."""

    index: int
    cpu: int | None
    told: dict = field(default_factory=dict)     # (request, ring j) -> (payload, fd or None)
    proc: object = None
    chan: Channel | None = None
    pidfd: int = -1
    restarts: int = 0
    next_start: float = float("inf")            # no worker until the front-end enables a ring of the pair
    stats_file: str = ""
    started: bool = False
    started_at: float = 0.0                     # time.monotonic() of the current worker's start
    backoff: Backoff = field(default_factory=Backoff)   # errors.BACKOFF: doubling, capped, reset when stable


class Workers:
    """Every pair's worker: started, sent requests, asked for replies, its exit read and reported, and
    restarted when due. `emit` writes one event line (Events.emit). The exit pidfds are watched in an
    epoll set of their own, which serve's loop watches (fileno) and hands back to `reap` when it stirs.

    `restart` is --restart; `run_dir` holds the workers' stats files; `state_fds` each pair's state page;
    `kills` names a worker's seccomp kill; `template` (set once it is forked) starts the processes."""

    def __init__(self, pairs: list[Pair], *, restart: str, emit: Callable[..., None], run_dir: str,
                 state_fds: dict[int, int], kills: KillLog):
        self.pairs, self.restart, self.emit = pairs, restart, emit
        self.run_dir, self.state_fds, self.kills = run_dir, state_fds, kills
        self.template: Template | None = None
        self.stopping = False                    # serve is ending: an exit is reported, not restarted
        self.ep = select.epoll()
        self.exits: dict[int, int] = {}          # pidfd -> pair index

    def fileno(self) -> int:
        return self.ep.fileno()

    # -- one worker ----------------------------------------------------------------------------------------
    def start(self, pair: Pair) -> None:
        """Fork the pair's worker (the template builds its command line from serve's own options; it starts
        with the stop signals blocked until its handlers are in) and watch its exit."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pair.stats_file = os.path.join(self.run_dir, f"pair{pair.index}.json")
        try:
            pair.proc = self.template.spawn(pair.index, [theirs.fileno(), self.state_fds[pair.index]])
        finally:
            theirs.close()
        pair.started, pair.started_at = True, time.monotonic()
        pair.chan = Channel(ours)
        pair.pidfd = os.pidfd_open(pair.proc.pid)
        self.ep.register(pair.pidfd, select.EPOLLIN)
        self.exits[pair.pidfd] = pair.index
        self.emit("start", pair=pair.index, pid=pair.proc.pid, cpu=pair.cpu, restarts=pair.restarts,
                  stats_file=pair.stats_file)       # SIGUSR1 rewrites it (a forked worker's cmdline is serve's)

    def send(self, pair: Pair, request: int, payload: bytes, fds: Sequence[int] = ()) -> None:
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

    # -- exits -------------------------------------------------------------------------------------------
    def reap(self) -> None:
        """Every worker whose pidfd says it ended: on_exit."""
        for fd, _ev in self.ep.poll(0):
            index = self.exits.get(fd)
            if index is not None:
                self.on_exit(index)

    def on_exit(self, index: int) -> None:
        pair = self.pairs[index]
        code = pair.proc.wait()
        code = code if code >= 0 else 128 - code
        self._unwatch(pair.pidfd)
        os.close(pair.pidfd)
        pair.chan.close()
        pair.chan, pair.pidfd = None, -1
        counters = read_json(pair.stats_file)
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

    def _unwatch(self, fd: int) -> None:
        self.exits.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass

    # -- restarts ------------------------------------------------------------------------------------------
    def _restart_delay(self, pair: Pair, code: int) -> float | None:
        """Seconds until the pair's replacement starts (errors.BACKOFF; 0 after a clean exit), or None."""
        if not self.should_restart(code):
            return None
        if restart_action(code) == CLEAN:
            pair.backoff.failures = 0
            return 0.0
        return pair.backoff.next_delay()

    def should_restart(self, code: int) -> bool:
        return should_restart(self.restart, code)

    def next_restart_in(self) -> float:
        """Seconds until the next replacement is due (0: now), or -1 if none is."""
        due = [p.next_start for p in self.pairs if p.chan is None and p.next_start != float("inf")]
        return max(0.0, min(due) - time.monotonic()) if due else -1

    def due(self) -> list[Pair]:
        """The pairs whose replacement is due now."""
        now = time.monotonic()
        return [p for p in self.pairs if p.chan is None and p.next_start <= now]

    # -- the end -------------------------------------------------------------------------------------------
    def hang_up(self, timeout: float) -> None:
        """The front-end left: close every worker's channel, so each ends by the exit-code contract, and
        report each exit within `timeout` (stop() ends those that have not)."""
        self.stopping = True
        running = [p for p in self.pairs if p.chan is not None]
        for pair in running:
            pair.chan.close()
        deadline = time.monotonic() + timeout
        for pair in running:
            try:
                pair.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue            # stop() ends it with SIGTERM
            self.on_exit(pair.index)

    def stop(self) -> None:
        """SIGTERM to every running worker (our children, by PID), SIGKILL after 10 s; each exit reported."""
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

    def close(self) -> None:
        close_fds(self.state_fds.values())
        self.kills.close()
        self.ep.close()


def should_restart(policy: str, code: int) -> bool:
    """Whether --restart POLICY replaces a worker that exited CODE (errors.RESTART_POLICY's action)."""
    if policy == "never":
        return False
    if policy == "always":
        return restart_action(code) != GIVE_UP
    return restart_action(code) == RESTART


class Events:
    """serve's JSON event lines (one object a line: event, time, fields), to --events FILE or stderr."""

    def __init__(self, path: str | None):
        self.file = open(path, "a") if path else sys.stderr

    def emit(self, event: str, **fields) -> None:
        fields = {"event": event, "time": round(time.time(), 3), **fields}
        print(json.dumps(fields, sort_keys=True), file=self.file, flush=True)

    def close(self) -> None:
        if self.file is not sys.stderr:
            self.file.close()


def read_json(path: str) -> dict:
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

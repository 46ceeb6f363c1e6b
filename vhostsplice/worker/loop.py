"""The blocking loop of one queue pair: epoll on the control socket, kicks, the host fd and signals.

The wait itself is the C core's (`Datapath.wait`, vs_pair_wait): as long as every wake-up is traffic
(kicks, the host fd readable) C serves it, kicks drained and the batches run, and waits again, no Python
in between (docs/architecture.md "The loop in C"). It returns here for the rest: a wake-up with any other
event (a message, a signal, a connection, a host fd error), each to its handler (EVENT_HANDLERS); a batch
that changed what epoll must watch; a timeout (the safety poll, a --stats-interval rewrite). With nothing
pending the wait blocks in epoll, after a --busy-poll window if one is open (auto, the default: adaptive,
4-32 us and only while the peer answers that fast; USEC: fixed; 0: none). Python on a ping's path was most of its
wake-ups' time (benchmarks/RESULTS.md); now none runs between a wake-up of traffic and the next wait.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal
import time
from dataclasses import dataclass, field

from . import BUSY_POLL_AUTO, report as _report
from ..device import datapath as dp
from ..device.backend import Backend, BackendConfig
from ..vhostuser.channel import Listener
from ..errors import (STOP_SIGNALS, FrontendGone, HostFdError, ProtocolError, SetupError, VhostspliceError,
                      errno_name, release_stop_signals)
from ..sandbox import Facts, Sandbox
from ..device.statepage import StatePage

log = logging.getLogger("vhostsplice")
IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
Role = tuple[str, int]          # what a watched fd is: (kind, argument), e.g. ("kick", 1); EVENT_HANDLERS
GONE: Role = ("gone", 0)        # an fd reported in the same round as the message that closed it
UNWATCHED = (GONE, 0)
# epoll filters wake-ups by the mask asked for, and tun signals a deleted interface with the same
# "readable" wake-up (IN|PRI|RDNORM) a packet uses: asking for ERR alone never wakes. PRI is never set by
# tun's poll, so PRI|ERR wakes on a deletion and reports nothing for a mere packet (measured, 6.x).
ERR_ONLY = select.EPOLLPRI | ERR
SAFETY_POLL_S = 1.0     # after traffic, look at the rings this long after the last event even without a kick
                        # (a lost kick heals); one such look that finds nothing disarms it: an idle ring
                        # costs no wake-up until its next kick, host frame or message
SAFETY_MS = int(SAFETY_POLL_S * 1000)


@dataclass
class WorkerConfig:
    backend: BackendConfig = field(default_factory=BackendConfig)
    stats_file: str | None = None
    allow_uids: frozenset[int] | None = None    # --allow-uid: peers (SO_PEERCRED uid) served; None: any
    sandbox: Sandbox | None = None              # --sandbox: confined before the first message (None: off)
    stats_format: str = "json"                  # --stats-format: json or prometheus (counters.render)
    stats_interval: float | None = None         # --stats-interval: rewrite --stats-file this often (seconds)
    busy_poll_us: int = 0                       # --busy-poll: USEC after a batch, or BUSY_POLL_AUTO (the
                                                # command line's default, cli/options.py); 0 here: off
    host_io: str = "auto"                       # --host-io: auto (io_uring batches where they work) or plain
    state: StatePage = field(default_factory=lambda: StatePage(None))   # --state-file/--state-fd (statepage.py)


class Worker:
    """Serves one front-end on one channel until a stop signal, a clean close, or a fatal error."""

    def __init__(self, door, hostfd, config: WorkerConfig):
        self.door, self.hostfd, self.config = door, hostfd, config
        self.listening = isinstance(door, Listener)     # --socket-path (else a connected channel)
        self.datapath = dp.Datapath(hostfd.fd, host_hdr_len=hostfd.vnet_hdr_len, empty_ok=hostfd.empty_ok,
                                    refused_drop=hostfd.refused_drop, stream=hostfd.stream)
        if config.state.mm is not None:     # the C core records ring positions in it around each publish
            self.datapath.attach_state(config.state.mm)
        if config.host_io == "auto":        # before confinement: the ring is set up and restricted now
            self.datapath.enable_uring()
        self.ep = select.epoll()
        self.datapath.watch(self.ep.fileno())   # the wait (vs_pair_wait) is on this epoll, in C
        w = self.datapath.waiting       # what C uses only after serving traffic (so while rings run):
        w.safety_ms = SAFETY_MS         # the timeout of its waits, and its --busy-poll windows
        busy = config.busy_poll_us
        w.spin_us = dp.SPIN_AUTO if busy == BUSY_POLL_AUTO else busy
        self.watched: dict[int, tuple[Role, int]] = {}    # fd -> (role, events)
        self.channel = None
        self.backend: Backend | None = None
        self.wakeups = 0
        self.lost_kicks = 0         # safety polls that found work no notification had announced
        self.safety_armed = True    # disarmed by a safety poll that found nothing; any event re-arms it
        self.busy = {"polls": 0, "found_work": 0, "timed_out": 0}     # --busy-poll's polls and their ends
        self.busy_due = False       # --busy-poll: a batch published work and no busy window ran out since
        self.rechecks = {"after_signal": 0, "found_work": 0}    # second passes after a batch published
        self.rx_starved = self.tx_blocked = False
        self.running = False        # the backend's rings_running, as the last control message left it
        self.synced: tuple | None = None    # (rx_starved, tx_blocked, host_err_mask) epoll watches for; None: redo
        self.started = time.monotonic()
        self.exit_code, self.reason = 0, ""
        self.refused = {"busy": 0, "peer_uid": 0}     # connections closed unserved, by reason
        self.host_err_mask = ERR_ONLY
        # --stats-file is written through its directory, opened now: a confined worker opens nothing else
        self.out = _report.StatsOut(config.stats_file, config.stats_format, config.stats_interval)

    # -- epoll bookkeeping -------------------------------------------------------------------------------
    def _watch(self, fd: int, role: Role, events: int) -> None:
        """Watch fd for events (0: stop watching); a number reused since is tolerated."""
        old = self.watched.get(fd)
        if old == (role, events):
            return
        if role[0] == "kick":       # the C wait takes a ring's kicks itself exactly while epoll watches them
            self.datapath.watch_kick(role[1], fd if events else -1)
        if events == 0:
            self.watched.pop(fd, None)
            with contextlib.suppress(OSError):
                self.ep.unregister(fd)
            return
        try:
            (self.ep.modify if old is not None else self.ep.register)(fd, events)
        except FileNotFoundError:
            self.ep.register(fd, events)
        except FileExistsError:
            self.ep.modify(fd, events)
        self.watched[fd] = (role, events)

    def _unwatch_kicks(self) -> None:
        """Unwatch the kick fds while they are open: one a message replaces is closed in there, but the
        front-end holds the same file, so epoll would keep it (a signalled one reported on every wait)."""
        for fd, (role, _events) in list(self.watched.items()):
            if role[0] == "kick":
                self._watch(fd, role, 0)

    def _sync(self) -> None:
        """Make epoll watch exactly the fds the current state needs: only when that state changed since
        (a control message, the RX ring starved or fed, the host fd blocked or writable again)."""
        state = (self.rx_starved, self.tx_blocked, self.host_err_mask)
        if state == self.synced:
            return
        self.synced = state
        want: dict[int, tuple[Role, int]] = {}
        if self.backend is not None:
            for ring in self.backend.rings:
                if ring.running and ring.kick_fd is not None:
                    want[ring.kick_fd] = (("kick", ring.index), IN)
            rx_on = self.backend.rings[0].running and not self.rx_starved
            tx_wait = self.backend.rings[1].running and self.tx_blocked
            if self.running:
                # EPOLLERR is asked for always: a tap whose interface is deleted reports it even while
                # the RX ring is starved and nothing is written to it.
                want[self.hostfd.fd] = (("host", 0),
                                        self.host_err_mask | (IN if rx_on else 0) | (OUT if tx_wait else 0))
        for fd, (role, _ev) in list(self.watched.items()):
            if role[0] in ("host", "kick") and fd not in want:
                self._watch(fd, role, 0)
        for fd, (role, ev) in want.items():
            self._watch(fd, role, ev)

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd)
        # The handlers stay after the loop: a stop signal during shutdown must not change the exit code.
        for sig in (*STOP_SIGNALS, signal.SIGUSR1):
            signal.signal(sig, lambda *_: None)
        release_stop_signals()      # a stop held since start-up (cli.run, or a supervisor) arrives now
        self._watch(rfd, ("signal", 0), IN)
        try:
            if self.config.sandbox is not None:
                self.config.sandbox.confine(Facts(self.out.dir_fd, getattr(self.door, "dir_fd", -1),
                                                  self.datapath.uring_fd))
            self._attach_door()
            self._loop()
        except VhostspliceError as exc:
            self.exit_code, self.reason = exc.errno, str(exc)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)
            self._shutdown()
        return self.exit_code

    def _attach_door(self) -> None:
        if self.listening:
            self._watch(self.door.fileno(), ("listen", 0), IN)
            return
        refused = self._peer_refused(self.door)
        if refused:         # --connect/--fd: no one else will come; the worker ends
            raise SetupError(f"front-end {refused}", errno.EACCES)
        self._attach(self.door)

    def _peer_refused(self, channel) -> str:
        """'' if --allow-uid admits this peer, else why not (its SO_PEERCRED pid and uid)."""
        if self.config.allow_uids is None:
            return ""
        pid, uid, _gid = channel.peer_cred()
        if uid in self.config.allow_uids:
            return ""
        return f"pid {pid} uid {uid} is not in --allow-uid {','.join(map(str, sorted(self.config.allow_uids)))}"

    def _attach(self, channel) -> None:
        channel.refuse_file_of(self.hostfd.fd)     # the front-end may never hand us our own host fd
        self.channel = channel
        self.backend = Backend(channel, self.datapath, self.hostfd, self.config.backend)
        self.backend.state = self.config.state
        self._watch(channel.fileno(), ("control", 0), IN)
        self._rings_changed()

    def _rings_changed(self) -> None:
        """A front-end came or went, or a control message was handled: which rings run and their kick fds
        may have changed (they change nowhere else), so the loop looks at them again."""
        self.running = self.backend is not None and self.backend.rings_running
        self.synced = None

    def _loop(self) -> None:
        pending = False
        while True:
            w = self._wait(pending)
            if self.out.next_due is not None:
                self.out.tick(self)
            if w.took:          # C served traffic, then a batch changed what epoll must watch (or time is up)
                pending = self._rounds_done(w)
            elif w.n:
                if self._dispatch([(w.ev[i].fd, w.ev[i].events) for i in range(w.n)]):
                    return
                pending = self._poll_datapath()
            else:
                pending = self._safety_poll()
                continue
            self._sync()        # before the next wait: epoll must watch what is due

    def _wait(self, pending: bool) -> object:
        """The C wait, told what epoll watches now and how long it may serve: MORE's poll first when
        PENDING, else a --busy-poll window if one is due, then the safety poll's timeout, never past the
        next --stats-interval rewrite. Its counts are added to the loop's, whatever ends it."""
        w = self.datapath.waiting
        w.live, w.synced = self.running, (dp.RX_STARVED if self.rx_starved else 0) | (
            dp.TX_BLOCKED if self.tx_blocked else 0)
        w.until_ns = 0 if self.out.next_due is None else int(self.out.next_due * 1e9)
        spin = 0 if pending else self._window_us()
        try:
            return self.datapath.wait(0 if pending else self._timeout_ms(), spin, pending)
        finally:
            self._count(w)

    def _count(self, w) -> None:
        """A C call's counts (vs_wait) added to the loop's and the rings'; traffic it served re-arms the
        safety poll, as every event but a signal does (_dispatch)."""
        self.wakeups += w.wakeups
        if w.served:
            self.safety_armed = True
        if w.kicks[0] or w.kicks[1]:
            for ring in self.backend.rings:
                ring.kicks += w.kicks[ring.index]
        if w.rechecks:
            self.rechecks["after_signal"] += w.rechecks
            self.rechecks["found_work"] += w.recheck_found
        if w.spin_polls:
            self.busy["polls"] += w.spin_polls
            self.busy["found_work"] += w.spin_found
            self.busy["timed_out"] += w.spin_out

    def _dispatch(self, events: list[tuple[int, int]]) -> bool:
        """Each event to its fd's handler (EVENT_HANDLERS), by the role the fd had when epoll reported it
        (a handler may close or replace fds reported in the same round); True: end the loop."""
        roles = [(fd, ev, self.watched.get(fd, UNWATCHED)[0]) for fd, ev in events]
        for fd, ev, (kind, arg) in roles:
            if kind != "signal":
                self.safety_armed = True        # a kick, a host frame or a message: traffic (not SIGUSR1)
            if EVENT_HANDLERS[kind](self, fd, arg, ev):
                return True
        return False

    def _timeout_ms(self) -> int:
        """epoll's timeout with nothing pending: the safety poll's while rings run; else forever (-1), but
        never past the next --stats-interval rewrite (rounded up, as Python's epoll rounds)."""
        timeout = SAFETY_POLL_S if self.running and self.safety_armed else -1
        if self.out.next_due is not None:
            due = self.out.due_in()
            timeout = due if timeout < 0 else min(timeout, due)
        return -1 if timeout < 0 else math.ceil(timeout * 1000)

    def _safety_poll(self) -> bool:
        before = self._positions()
        pending = self._poll_datapath()
        self._sync()
        if self._positions() != before:
            self.lost_kicks += 1
            log.info("safety poll found work no kick announced (%d so far)", self.lost_kicks)
        elif not pending:
            self.safety_armed = False
        return pending

    def _positions(self) -> tuple:
        rings = self.datapath.stats()
        return tuple(rings[name]["last_avail_idx"] for name in ("rx", "tx"))

    def _poll_datapath(self) -> bool:
        if not self.running:
            return False
        try:
            return self._rounds_done(self.datapath.rounds())
        finally:
            self._count(self.datapath.waiting)

    def _rounds_done(self, w) -> bool:
        """What the loop keeps of a poll and its re-check (vs_pair_rounds, which runs the re-check after a
        batch that published: why, in vs_pair.c): a --busy-poll window due, the states epoll follows, MORE."""
        flags = w.round
        if w.rounds == 2:
            self.busy_due = self.config.busy_poll_us > 0      # auto: C's windows only (vs_pair_wait)
            flags = w.recheck
        self.rx_starved = bool(flags & dp.RX_STARVED)
        self.tx_blocked = bool(flags & dp.TX_BLOCKED)
        return bool(flags & dp.MORE)

    def _window_us(self) -> int:
        """--busy-poll USEC after rounds Python ran that published (C opens its own: docs/architecture.md,
        the --busy-poll paragraph): spent either way, never while the host fd is full."""
        due, self.busy_due = self.busy_due, False
        return self.config.busy_poll_us if due and self.running and not self.tx_blocked else 0

    # -- the handlers of EVENT_HANDLERS: (fd, its role's argument, the events) -> end the loop? ----------
    def _on_signal(self, sigfd: int, _arg: int, _ev: int) -> bool:
        try:
            data = os.read(sigfd, 64)
        except BlockingIOError:
            return False
        if any(b in data for b in STOP_SIGNALS):
            self.reason = "stopped by signal"
            return True
        if signal.SIGUSR1 in data:
            self.report(final=False)
        return False

    def _on_listen(self, _fd: int, _arg: int, _ev: int) -> bool:
        channel = self.door.accept()
        busy = self.channel is not None
        why = "a front-end is already served" if busy else self._peer_refused(channel)
        if not why:
            self._attach(channel)
            return False
        # One front-end per worker, and only an allowed one: close it unserved, count it, keep serving.
        self.refused["busy" if busy else "peer_uid"] += 1
        pid, uid, _gid = channel.peer_cred()
        log.warning("refused a front-end connection (pid %d uid %d): %s", pid, uid, why)
        channel.close()
        return False

    def _on_control(self, _fd: int, _arg: int, _ev: int) -> bool:
        msg = self.channel.recv()
        if msg is None and self.backend.messages == 0 and self.listening:
            self._detach()      # a connect-and-close (a probe for a stale socket): keep listening
            return False
        if msg is None:
            if self.running:
                raise FrontendGone("front-end closed the connection while rings were running")
            self.reason = "front-end closed the connection"
            return True
        log.debug("<- %s %s", msg.name, msg.payload[:32].hex())     # -vv: every request, payload head
        self._unwatch_kicks()          # the message may close them
        self.backend.handle(msg)       # the host fd follows the negotiated state in there (HostFd.apply)
        self._rings_changed()
        self.rx_starved = False        # a ring may have (re)started: look at everything again
        return False

    def _on_host(self, _fd: int, _arg: int, ev: int) -> bool:
        if ev == IN:                    # a frame to read (the common case: nothing to judge)
            return False
        if self.hostfd.is_socket:
            self._on_host_socket(ev)
        elif ev & ERR and not ev & (IN | OUT):
            raise HostFdError(f"{self.hostfd.kind} {self.hostfd.name}: detached or deleted (EPOLLERR)",
                              errno.EBADFD)
        if ev & select.EPOLLPRI:
            self.host_err_mask = ERR     # an fd that does report PRI (a socket's urgent data): never spin on it
        self.tx_blocked = self.tx_blocked and not ev & OUT
        return False

    def _on_host_socket(self, ev: int) -> None:
        """A socket's HUP is its peer gone for good (epoll reports it whatever the mask: never loop on
        it); its ERR is a pending SO_ERROR, taken (and so cleared) and judged by the host fd."""
        if ev & HUP and not ev & IN:
            raise HostFdError(f"{self.hostfd.kind} {self.hostfd.name}: the peer closed (EPOLLHUP)", errno.EPIPE)
        if ev & ERR:
            self.hostfd.socket_error()
        self.tx_blocked = self.tx_blocked and not ev & OUT

    def _detach(self) -> None:
        self._watch(self.channel.fileno(), ("control", 0), 0)
        self.channel.close()
        self.channel = self.backend = None
        self._rings_changed()

    def _on_kick(self, fd: int, index: int, _ev: int) -> bool:
        """A kick. Its fd may be gone since epoll reported it: a control message handled earlier in the same
        round (GET_VRING_BASE, a new SET_VRING_KICK) closed it, so only the ring's current kick fd is read."""
        if self.backend is None or self.backend.rings[index].kick_fd != fd:
            return False
        try:
            dp.drain_eventfd(fd)
        except OSError as exc:      # an anonymous inode that is no eventfd (a signalfd, an epoll fd...)
            raise ProtocolError(f"ring {index}: the kick fd cannot be read as an eventfd ({exc.strerror})") from exc
        self.backend.rings[index].kicks += 1
        if index == 0:
            self.rx_starved = False
        return False

    # -- exit ----------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self.backend is not None:
            self._final_stats = self.stats()
            try:
                self.backend.close()
            except VhostspliceError:
                pass
        if self.channel is not None:
            self.channel.close()
        if self.listening:
            self.door.close()
        self.ep.close()
        self.datapath.attach_state(None)        # before the page is unmapped (runner)

    def stats(self) -> dict:
        return _report.collect(self)

    def report(self, final: bool = True) -> None:
        """The counters to --stats-file (or stderr): on exit those taken before the rings were closed."""
        data = getattr(self, "_final_stats", None) if final else None
        self.out.emit(dict(data or self.stats(), exit=self.exit_code, errno=errno_name(self.exit_code),
                           reason=self.reason))


# What an epoll event on a watched fd does, by its role's kind: (worker, fd, arg, events) -> end the loop?
EVENT_HANDLERS = {
    "signal": Worker._on_signal,
    "control": Worker._on_control,
    "listen": Worker._on_listen,
    "kick": Worker._on_kick,
    "host": Worker._on_host,
    "gone": lambda _worker, _fd, _arg, _ev: False,     # closed by a message handled earlier in the round
}

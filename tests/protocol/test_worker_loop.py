"""The worker's loop (worker/loop.py) against the pure-Python front-end, forked, no root: what epoll watches
follows every control message, and a --busy-poll window ends on whatever fd becomes ready."""
from __future__ import annotations

import os
import socket
import time

from support.forked import child_record, fork_worker
from vhostsplice.device.backend import BackendConfig
from vhostsplice.spec import Req
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import demo_frame
from vhostsplice.testing.hostfd import FakeHostFd
from vhostsplice.vhostuser import protocol as P
from vhostsplice.worker import BUSY_POLL_AUTO
from vhostsplice.worker.loop import WorkerConfig


def serve(config: WorkerConfig, body) -> tuple[dict, list[bytes]]:
    """A Worker (the real loop, in a child) on a datagram fake host fd; body(front-end, host) drives it,
    then the rings stop and the front-end closes. Returns the worker's stats on exit and the frames its
    host fd received, headers stripped."""
    host = FakeHostFd.datagram(vnet_hdr_len=12)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid, rfd = fork_worker(theirs, host, config, lambda worker, _code: worker.stats(), close=(ours,))
    theirs.close()
    with Frontend(ours) as fe:
        fe.start()
        got = body(fe, host)
        fe.stop()
    stats = child_record(pid, rfd)
    host.close()
    return stats, got


def wait_frames(host: FakeHostFd, count: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [frame[12:] for frame in host.frames()]
        time.sleep(0.001)
    return got


def test_a_kick_fd_replaced_while_the_ring_runs_is_watched_at_once():
    """SET_VRING_KICK on a running TX ring: the next kick on the new eventfd wakes the worker (epoll is
    re-synced after every control message), not the safety poll a second later (lost_kicks)."""
    frames = [demo_frame(i, 200) for i in range(2)]

    def body(fe: Frontend, host: FakeHostFd) -> list[bytes]:
        fe.send(frames[:1])
        got = wait_frames(host, 1)
        new = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.command(Req.SET_VRING_KICK, P.encode_vring_file(1), fds=(new,))
        os.close(fe.kick[1])
        fe.kick[1] = new
        fe.send(frames[1:])
        return got + wait_frames(host, 1)

    stats, got = serve(WorkerConfig(backend=BackendConfig()), body)
    assert got == frames
    assert stats["lost_kicks"] == 0 and stats["rings"]["tx"]["kicks"] == 2, stats


def test_a_busy_window_ends_on_a_message_and_does_not_reopen_without_a_batch():
    """--busy-poll: the window after a TX batch ends as soon as a message is ready (it is served then, not
    after the window), and that message, which completes no chain, opens no second window: one window,
    ended by work, none timed out (a window of 5 s: only a stalled test could see one run out)."""
    frame = demo_frame(7, 200)

    def body(fe: Frontend, host: FakeHostFd) -> list[bytes]:
        fe.send([frame])
        got = wait_frames(host, 1)
        fe.request(Req.GET_FEATURES)            # a message during the window: ends it
        fe.request(Req.GET_FEATURES)            # and another, after it: no window follows the first
        return got

    stats, got = serve(WorkerConfig(busy_poll_us=5_000_000), body)
    busy = stats["busy_poll"]
    assert got == [frame]
    assert busy["found_work"] == 1 and busy["timed_out"] == 0 and busy["polls"] >= 1, busy


def test_an_old_kick_fd_the_front_end_still_signals_does_not_wake_the_worker():
    """SET_VRING_KICK closes the worker's copy of the old kick fd, but the front-end's copy keeps its file
    alive, and epoll keeps a registration whose file lives on: signalled, it would be reported on every
    epoll_wait and the worker would spin (a hostile front-end's way to burn a CPU). It is unwatched first."""
    frames = [demo_frame(i, 200) for i in range(2)]

    def body(fe: Frontend, host: FakeHostFd) -> list[bytes]:
        fe.send(frames[:1])
        got = wait_frames(host, 1)
        old, new = fe.kick[1], os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.command(Req.SET_VRING_KICK, P.encode_vring_file(1), fds=(new,))
        fe.kick[1] = new
        os.eventfd_write(old, 1)        # the old file, still open here
        time.sleep(0.3)
        os.close(old)
        fe.send(frames[1:])
        return got + wait_frames(host, 1)

    stats, got = serve(WorkerConfig(backend=BackendConfig()), body)
    assert got == frames
    assert stats["wakeups"] < 50, stats["wakeups"]


def test_busy_poll_auto_never_polls_for_a_peer_slower_than_its_window():
    """--busy-poll auto: a window opens only once the peer answered within 32 us of a batch; this Python
    front-end answers milliseconds later, so no window ever opens (no poll, no CPU) and frames still flow."""
    frames = [demo_frame(i, 200) for i in range(5)]

    def body(fe: Frontend, host: FakeHostFd) -> list[bytes]:
        got = []
        for frame in frames:
            fe.send([frame])
            got += wait_frames(host, 1)
        return got

    stats, got = serve(WorkerConfig(busy_poll_us=BUSY_POLL_AUTO), body)
    busy = stats["busy_poll"]
    assert got == frames
    assert (busy["mode"], busy["polls"], busy["found_work"], busy["timed_out"]) == ("auto", 0, 0, 0), busy
    assert (busy["window_rx_ns"], busy["window_tx_ns"]) == (0, 0), busy

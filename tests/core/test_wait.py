"""The worker loop's wait in C (vs_pair_wait, Datapath.wait; docs/architecture.md "The loop in C"): while
every wake-up is traffic (a watched kick, the host fd readable) C serves it, kicks drained before the
rounds, and waits again; it returns for anything else, untouched (no kick drained, no batch run), for a
batch that changed what epoll must watch, a timeout, Python's deadline, a signal or an error."""
from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time

import pytest

from vhostsplice.device.datapath import MORE, PUBLISHED, RX_STARVED, SPIN_AUTO, lib
from vhostsplice.errors import GuestRingError

SHORT_MS = 100      # a safety timeout that ends a test's wait once the traffic is served


@pytest.fixture
def waiting(make_rig):
    """A rig whose datapath waits on an epoll watching the TX kick eventfd and the host fd (IN), as the
    loop leaves them while the rings run (live; RX starved: no buffers yet); returns (rig, epoll, kick)."""
    rig = make_rig()
    ep = select.epoll()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    ep.register(kick, select.EPOLLIN)
    ep.register(rig.host.fileno(), select.EPOLLIN)
    rig.dp.watch(ep.fileno())
    rig.dp.watch_kick(1, kick)
    w = rig.dp.waiting
    w.live, w.synced, w.safety_ms, w.until_ns, w.spin_us = 1, RX_STARVED, SHORT_MS, 0, 0
    yield rig, ep, kick
    ep.close()
    os.close(kick)


def counts(w) -> dict:
    return {"wakeups": w.wakeups, "served": w.served, "kicks": (w.kicks[0], w.kicks[1]), "rechecks": w.rechecks}


def asleep(tid: int) -> bool:
    """Is thread TID blocked (state S: the wait in epoll_wait, the only place this test's main thread sleeps)?"""
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "S"


class Later:
    """A thread that waits for the rig's first frame on the wire and for the waiting (main) thread to be
    asleep in epoll_wait again, then runs ACT (a second kick): a wake-up of its own, not the first one's
    batch or re-check. Once ENOUGH frames arrived it ends the wait through a pipe epoll watches (an event C
    hands over). No test depends on how long a thread takes to start."""

    def __init__(self, rig, ep, act, enough: int, *, after_sleep: bool = True):
        self.rig, self.act, self.enough, self.frames = rig, act, enough, []
        self.waiter = threading.get_native_id() if after_sleep else None
        self.r, self.w = os.pipe()
        ep.register(self.r, select.EPOLLIN)
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 10
        while len(self.frames) < self.enough and time.monotonic() < deadline:
            select.select([self.rig.peer], [], [], 0.5)
            got = self.rig.wire()
            if got and not self.frames:
                while self.waiter and not asleep(self.waiter) and time.monotonic() < deadline:
                    time.sleep(0.001)
                self.act()
            self.frames += got
        os.write(self.w, b"x")

    def join(self):
        self.thread.join()
        os.close(self.r)
        os.close(self.w)


def handed(w) -> list[int]:
    return [w.ev[i].fd for i in range(w.n)]


def test_kicks_are_served_in_c_until_python_is_needed(waiting):
    """Two batches, the second queued once the first reached the wire: both sent in one call (no Python
    between them), until an event C hands over (a pipe here, a message in the loop). The second frame is
    taken by its own kick's wake-up, or by the first wake-up's re-check when that runs later."""
    rig, ep, kick = waiting
    rig.dp.waiting.safety_ms = -1

    def second():
        rig.tx.add_out([rig.frame(61)])
        os.eventfd_write(kick, 1)
    later = Later(rig, ep, second, 2)
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 3)
    w = rig.dp.wait(-1)
    later.join()
    assert (w.took, w.n, w.ev[0].fd) == (0, 1, later.r)
    assert later.frames == [rig.hdr() + rig.frame(60), rig.hdr() + rig.frame(61)] and len(rig.tx.used()) == 2
    assert counts(w) == {"wakeups": 3, "served": 2, "kicks": (0, 2), "rechecks": 2}
    with pytest.raises(BlockingIOError):                   # drained
        os.eventfd_read(kick)


def test_a_batch_that_changes_what_epoll_watches_returns_its_bits(waiting):
    """RX gets buffers (the guest's kick) while the loop synced epoll for a starved RX ring: the host fd
    must be watched now, so the wait returns after that wake-up with the rounds' bits."""
    rig, ep, kick = waiting
    rx_kick = os.eventfd(0, os.EFD_NONBLOCK)
    ep.register(rx_kick, select.EPOLLIN)
    rig.dp.watch_kick(0, rx_kick)
    try:
        rig.rx.add_in(2, 2048)
        os.eventfd_write(rx_kick, 1)
        w = rig.dp.wait(5000)
        assert (w.took, w.rounds, w.round & RX_STARVED, w.kicks[0]) == (1, 1, 0, 1)
    finally:
        os.close(rx_kick)


def test_a_host_frame_is_delivered_in_c(waiting):
    rig, _ep, _kick = waiting
    rig.rx.add_in(2, 2048)
    rig.dp.waiting.synced = 0          # RX has buffers: the loop watches the host fd
    rig.inject(rig.hdr() + rig.frame(100))
    w = rig.dp.wait(5000)
    assert (w.took, w.n) == (0, 0) and w.wakeups == 2 and w.rechecks == 1
    assert rig.rx.packets(rig.rx.used()) == [rig.hdr(num_buffers=1) + rig.frame(100)]


def test_a_pending_poll_runs_in_c_and_more_keeps_it_polling(make_rig):
    """timeout 0 (the loop's MORE): C polls without a wake-up; a batch that asks for more is followed by
    another poll in C (epoll looked at in between), until the work is done."""
    rig = make_rig(tx_budget=2)
    ep = select.epoll()
    try:
        rig.dp.watch(ep.fileno())
        w = rig.dp.waiting
        w.live, w.synced, w.safety_ms = 1, RX_STARVED, SHORT_MS
        rig.tx.add_out([rig.frame(60, seed=i) for i in range(5)])
        w = rig.dp.wait(0, pending=True)
        assert (w.took, w.n) == (0, 0) and len(rig.wire()) == 5 and w.wakeups >= 3
        w.live = 0                      # no rings to poll: a pending wait returns at once
        w = rig.dp.wait(0, pending=True)
        assert (w.took, w.wakeups, w.rechecks) == (0, 1, 0)
    finally:
        ep.close()


def test_a_wake_up_with_anything_else_goes_to_python_untouched(waiting):
    """A message or a signal beside a kick: the loop must see the kick's fd (a message may close it), so C
    neither drains it nor runs a batch."""
    rig, ep, kick = waiting
    r, wr = os.pipe()
    ep.register(r, select.EPOLLIN)
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 1)
    os.write(wr, b"x")
    try:
        w = rig.dp.wait(5000)
        assert (w.took, w.rounds, w.n, w.kicks[1]) == (0, 0, 2, 0)
        assert sorted((w.ev[i].fd, w.ev[i].events) for i in range(w.n)) == sorted(
            [(kick, select.EPOLLIN), (r, select.EPOLLIN)])
        assert os.eventfd_read(kick) == 1 and rig.wire() == [] and rig.tx.used() == []
    finally:
        ep.unregister(r)
        os.close(r)
        os.close(wr)


def test_a_kick_fd_no_longer_the_rings_and_a_host_fd_event_but_input_go_to_python(waiting):
    rig, ep, kick = waiting
    rig.dp.watch_kick(1, -1)        # unwatched (a message is replacing it) though epoll still reports it
    os.eventfd_write(kick, 1)
    w = rig.dp.wait(5000)
    assert (w.took, w.n, w.ev[0].fd) == (0, 1, kick)
    os.eventfd_read(kick)
    ep.modify(rig.host.fileno(), select.EPOLLIN | select.EPOLLOUT)  # TX blocked: waiting for room
    w = rig.dp.wait(5000)
    assert (w.took, w.n, w.ev[0].fd, w.ev[0].events) == (0, 1, rig.host.fileno(), select.EPOLLOUT)


def test_a_busy_window_spins_then_the_wait_sleeps(waiting):
    rig, _ep, _kick = waiting
    w = rig.dp.wait(SHORT_MS, spin_us=20_000)      # nothing comes: a 20 ms window, then the timeout
    assert (w.took, w.n, w.spin_out, w.spin_found, w.wakeups) == (0, 0, 1, 0, 1) and w.spin_polls > 1


def test_a_window_after_a_batch_that_published_finds_the_next_kick(waiting):
    rig, ep, kick = waiting
    w = rig.dp.waiting
    w.spin_us, w.safety_ms = 5_000_000, -1      # a window longer than any test: only work ends it

    def second():
        rig.tx.add_out([rig.frame(61)])
        os.eventfd_write(kick, 1)
    later = Later(rig, ep, second, 2, after_sleep=False)   # the waiter spins, never sleeps, in its window
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 1)
    w = rig.dp.wait(-1)
    later.join()
    # the first batch's window ends on the second kick (or, if the re-check already sent frame 61, its
    # window does), the last on the pipe: every window ends on work, none runs out
    assert w.spin_found >= 1 and w.spin_out == 0 and w.kicks[1] >= 1 and later.r in handed(w)
    assert len(later.frames) == 2


@pytest.mark.parametrize("window, spun, gap, after", [
    (0, 0, 10_000, 4_000),             # answered 10 us after a closed window: opens at 4 us
    (8_000, 8_000, 10_000, 16_000),    # answered after the window ran out, within 32 us: doubles
    (20_000, 20_000, 25_000, 32_000),  # at most 32 us
    (32_000, 32_000, 32_001, 0),       # answered past 32 us: closed
    (16_000, 16_000, 12_000, 16_000),  # caught while spinning: kept
    (0, 0, 1_000_000, 0),              # a slow peer (1 ms): stays closed
])
def test_the_adaptive_window_grows_for_a_quick_answer_and_closes_for_a_slow_one(window, spun, gap, after):
    """--busy-poll auto: the window a wait opened is judged by when the next wake-up came (vs_auto_window,
    the rule vs_pair_wait applies at every wake-up)."""
    assert lib.vs_auto_window(window, spun, gap) == after


def test_only_traffic_judges_an_adaptive_window(waiting):
    """A message or a signal coming 10 us after a window opened is no answer of the peer: the window is left
    as it was (and forgotten), not doubled; nor by a wait cut short (Python's deadline) within 32 us. A wait
    that ends with nothing after longer than 32 us closes it, as a late answer would."""
    rig, ep, _kick = waiting
    w = rig.dp.waiting
    r, wr = os.pipe()
    ep.register(r, select.EPOLLIN)
    try:
        w.auto_ns[0], w.auto_key, w.auto_spun_ns = 8_000, 0, 0
        w.auto_from_ns = time.monotonic_ns() - 10_000
        os.write(wr, b"x")
        w = rig.dp.wait(5000)
        assert (w.n, w.auto_key, w.auto_ns[0]) == (1, -1, 8_000)
        os.read(r, 1)
        w.auto_key, w.auto_from_ns = 0, time.monotonic_ns() + 10_000_000   # (opened "later": gap < 32 us)
        w = rig.dp.wait(0)                          # nothing ready, at once
        assert (w.n, w.took, w.auto_key, w.auto_ns[0]) == (0, 0, -1, 8_000)
        w.auto_key, w.auto_from_ns = 0, time.monotonic_ns() - 1_000_000
        w = rig.dp.wait(0)                          # nothing, 1 ms after the window opened: closed
        assert (w.n, w.auto_key, w.auto_ns[0]) == (0, -1, 0)
    finally:
        ep.unregister(r)
        os.close(r)
        os.close(wr)


def test_the_adaptive_window_opens_for_what_was_published(waiting):
    """After a served poll that published TX, the wait spins the TX window (key 1); RX, the RX window. A
    window that runs out is followed by the sleeping wait, and a wake-up past 32 us closes it."""
    rig, ep, kick = waiting
    w = rig.dp.waiting
    w.spin_us, w.auto_ns[0], w.auto_ns[1] = SPIN_AUTO, 0, 20_000
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 1)
    w = rig.dp.wait(5000)                          # TX published: a 20 us window, then SHORT_MS asleep
    assert (w.spin_out, w.spin_found, w.auto_ns[1], w.auto_ns[0]) == (1, 0, 0, 0) and len(rig.wire()) == 1
    w.auto_ns[0] = 20_000
    rig.rx.add_in(2, 2048)
    w.synced = 0
    rig.inject(rig.hdr() + rig.frame(100))
    w = rig.dp.wait(5000)                          # RX published: the RX window, judged the same way
    assert (w.spin_out, w.auto_ns[0], w.auto_ns[1]) == (1, 0, 0) and len(rig.rx.used()) == 1


def test_a_kick_fd_that_is_no_eventfd_goes_to_python(waiting):
    """A front-end's kick fd that reads EINVAL (an anonymous inode that is no eventfd: here an epoll fd) is
    handed over with its wake-up, for the loop's kick handler to read and report; no batch runs."""
    rig, ep, kick = waiting
    fake, r, wr = select.epoll(), *os.pipe()
    fake.register(r, select.EPOLLIN)
    os.write(wr, b"x")                             # the fake kick (an epoll fd) is readable now
    ep.register(fake.fileno(), select.EPOLLIN)
    rig.dp.watch_kick(1, fake.fileno())
    rig.tx.add_out([rig.frame(60)])
    try:
        w = rig.dp.wait(5000)
        assert (w.took, w.n, w.ev[0].fd, w.served) == (0, 1, fake.fileno(), 0) and rig.wire() == []
    finally:
        ep.unregister(fake.fileno())
        fake.close()
        os.close(r)
        os.close(wr)


def test_the_wait_returns_by_pythons_deadline(waiting):
    """until_ns (the next --stats-interval rewrite) bounds a wait that would sleep forever, and ends the
    serving after a wake-up past it (took: its bits for the loop)."""
    rig, _ep, kick = waiting
    w = rig.dp.waiting
    w.safety_ms = -1
    start = time.monotonic_ns()
    w.until_ns = start + 30_000_000
    w = rig.dp.wait(-1)
    assert (w.took, w.n, w.wakeups) == (0, 0, 1) and time.monotonic_ns() >= w.until_ns   # not before it
    w.until_ns = time.monotonic_ns()            # due already: the served wake-up is the last
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 1)
    w = rig.dp.wait(-1)
    assert (w.took, w.round & PUBLISHED, w.wakeups) == (1, PUBLISHED, 1)


def test_a_signal_is_the_loops_signal_fd_not_an_interruption(waiting):
    """epoll_wait's EINTR is not an event: a signal comes as its byte on the loop's signal fd (CPython's
    set_wakeup_fd, as the worker sets it up), which the wait hands over; a bare interruption (io_uring's
    task work makes those) only resumes the wait."""
    rig, ep, _kick = waiting
    rig.dp.waiting.safety_ms = -1
    rfd, wfd = os.pipe2(os.O_NONBLOCK)
    ep.register(rfd, select.EPOLLIN)
    old_fd = signal.set_wakeup_fd(wfd)
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        w = rig.dp.wait(10_000)
        assert (w.took, w.n, w.ev[0].fd) == (0, 1, rfd) and os.read(rfd, 8) == bytes([signal.SIGALRM])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        signal.set_wakeup_fd(old_fd)
        ep.unregister(rfd)
        os.close(rfd)
        os.close(wfd)


def test_a_broken_ring_found_in_a_served_wake_up_raises_the_datapath_error(waiting):
    rig, _ep, kick = waiting
    rig.tx.raw_avail(0, 256)        # a head past the 256-entry ring
    rig.tx.set_avail_idx(1)
    os.eventfd_write(kick, 1)
    with pytest.raises(GuestRingError, match="tx ring: head") as e:
        rig.dp.wait(5000)
    assert e.value.errno == errno.EBADMSG and rig.errs(1) == 1


def test_rounds_outside_a_wait_count_the_re_check(make_rig):
    rig = make_rig()
    rig.tx.add_out([rig.frame(60)])
    w = rig.dp.rounds()
    assert (w.rounds, w.rechecks, w.recheck_found, w.round & MORE) == (2, 1, 0, 0)
    w = rig.dp.rounds()
    assert (w.rounds, w.rechecks) == (1, 0)

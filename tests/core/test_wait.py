"""The worker loop's wait in C (vs_pair_wait, Datapath.wait): a wake-up of traffic alone (a watched kick,
the host fd readable) is taken in C, kicks drained before the rounds run; any other event hands the whole
wake-up to Python untouched (no kick drained, no batch run); a busy window spins; a signal interrupts."""
from __future__ import annotations

import errno
import os
import select
import signal

import pytest

from vhostsplice.device.datapath import PUBLISHED, RX_STARVED
from vhostsplice.errors import GuestRingError


@pytest.fixture
def waiting(make_rig):
    """A rig whose datapath waits on an epoll watching the TX kick eventfd and the host fd (IN), as the
    loop's _sync leaves them while the rings run; returns (rig, epoll, kick fd)."""
    rig = make_rig()
    ep = select.epoll()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    ep.register(kick, select.EPOLLIN)
    ep.register(rig.host.fileno(), select.EPOLLIN)
    rig.dp.watch(ep.fileno())
    rig.dp.watch_kick(1, kick)
    yield rig, ep, kick
    ep.close()
    os.close(kick)


def test_a_kick_is_drained_and_its_batch_run_in_c(waiting):
    rig, _ep, kick = waiting
    rig.tx.add_out([rig.frame(60)])
    os.eventfd_write(kick, 3)
    w = rig.dp.wait(5000)
    assert (w.took, w.kicked, w.n, w.rounds) == (1, 2, 0, 2)    # TX published: the re-check ran too
    assert w.round == RX_STARVED | PUBLISHED and w.recheck == RX_STARVED
    assert rig.wire() == [rig.hdr() + rig.frame(60)] and len(rig.tx.used()) == 1
    with pytest.raises(BlockingIOError):    # drained: a later kick is what wakes the next wait
        os.eventfd_read(kick)


def test_a_host_frame_wakes_the_rx_batch_in_c(waiting):
    rig, _ep, _kick = waiting
    rig.rx.add_in(2, 2048)
    rig.inject(rig.hdr() + rig.frame(100))
    w = rig.dp.wait(5000)
    assert (w.took, w.kicked, w.n) == (1, 0, 0) and w.round & PUBLISHED
    assert rig.rx.packets(rig.rx.used()) == [rig.hdr(num_buffers=1) + rig.frame(100)]


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
        assert (w.took, w.rounds, w.n) == (0, 0, 2)
        assert sorted((w.ev[i].fd, w.ev[i].events) for i in range(w.n)) == sorted(
            [(kick, select.EPOLLIN), (r, select.EPOLLIN)])
        assert os.eventfd_read(kick) == 1 and rig.wire() == [] and rig.tx.used() == []
    finally:
        ep.unregister(r)
        os.close(r)
        os.close(wr)


def test_a_kick_fd_no_longer_the_rings_and_a_host_fd_error_go_to_python(waiting):
    rig, ep, kick = waiting
    rig.dp.watch_kick(1, -1)        # unwatched (a message is replacing it) though epoll still reports it
    os.eventfd_write(kick, 1)
    w = rig.dp.wait(5000)
    assert (w.took, w.n, w.ev[0].fd) == (0, 1, kick)
    os.eventfd_read(kick)
    ep.modify(rig.host.fileno(), select.EPOLLIN | select.EPOLLOUT)  # TX blocked: waiting for room
    w = rig.dp.wait(5000)
    assert (w.took, w.n, w.ev[0].fd, w.ev[0].events) == (0, 1, rig.host.fileno(), select.EPOLLOUT)


def test_nothing_ready_times_out_and_a_window_spins(waiting):
    rig, _ep, _kick = waiting
    w = rig.dp.wait(0)
    assert (w.took, w.n, w.polls) == (0, 0, 1)
    w = rig.dp.wait(0, spin_us=20_000)
    assert (w.took, w.n) == (0, 0) and w.polls > 1     # a 20 ms window of epoll_wait(0)s, none found work


def test_a_signal_interrupts_the_wait(waiting):
    rig, _ep, _kick = waiting
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert rig.dp.wait(10_000) is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_broken_ring_found_in_a_wake_up_c_took_raises_the_datapath_error(waiting):
    rig, _ep, kick = waiting
    rig.tx.raw_avail(0, 256)        # a head past the 256-entry ring
    rig.tx.set_avail_idx(1)
    os.eventfd_write(kick, 1)
    with pytest.raises(GuestRingError, match="tx ring: head") as e:
        rig.dp.wait(5000)
    assert e.value.errno == errno.EBADMSG and rig.errs(1) == 1

"""What peers' users hit after reconnects (issue 16), against real `vhostsplice run` workers driven by the
pure-Python front-end. The host side is a SOCK_SEQPACKET socketpair (`--host-fd`): no root, no tap.

- A back-end restarted under a running driver finds the RX buffers posted before it came as soon as the
  ring is enabled, with no kick (a restarted back-end otherwise never sees them: rust-vmm/vhost #375).
- After a batch that signalled the guest, the worker looks at the host fd and the rings once more before
  it sleeps (Linux vhost_net, November 2025): work that came while it signalled is taken at once.
(SET_VRING_CALL signalling the new call fd once is in tests/protocol/test_backend.py.)
"""
from __future__ import annotations

import os
import socket
import time

import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.spec import Req
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import WorkerProcess, demo_frame, live_stats


@pytest.fixture
def wire():
    """(the worker's end, the test's end) of a SEQPACKET socketpair: one frame per message."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.settimeout(20)
    yield a, b
    a.close()
    b.close()


def worker(tmp_path, fd: int, name: str) -> WorkerProcess:
    w = WorkerProcess(str(tmp_path), "", name=name, host=("--host-fd", str(fd)), pass_fds=(fd,))
    w.wait_listening()
    return w


def drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def test_rx_buffers_posted_before_a_restarted_backend_are_used_without_a_kick(tmp_path, wire):
    a, b = wire
    first = worker(tmp_path, a.fileno(), "first")
    fe = Frontend.connect(first.sock).start()
    try:
        first.kill()                        # the back-end dies (SIGKILL, our child) under a running driver
        fe.post_rx(8)                       # the driver posts RX buffers; its kick reaches no one
        drain(fe.kick[0])
        second = worker(tmp_path, a.fileno(), "second")
        fe.reconnect(second.sock)           # QEMU's replay: SET_VRING_BASE 0, ENABLE, and no kick
        frames = [demo_frame(i, 200) for i in range(3)]
        for frame in frames:
            b.send(frame)
        assert fe.receive(len(frames), timeout=20) == frames
        fe.stop()
        fe.close()
        code, stats = second.wait()
    finally:
        first.kill()
        if "second" in locals():
            second.kill()
    assert code == 0, second.stderr
    rx = stats["rings"]["rx"]
    assert rx["packets"] == 3 and rx["kicks"] == 0, rx        # no kick ever reached the second worker
    assert stats["lost_kicks"] == 0, stats                    # found at once, not by the 1 s safety poll


def test_work_arriving_while_the_guest_is_signalled_is_taken_in_the_same_pass(tmp_path, wire):
    """The RX call fd is the far end of the host socketpair: each call the worker makes (8 bytes) arrives
    as a frame on its host fd right after it signalled, exactly in the window the re-check closes (the
    driver's EVENT_IDX asks for no further call, so one such frame comes back)."""
    a, b = wire
    w = worker(tmp_path, a.fileno(), "w")
    try:
        fe = Frontend.connect(w.sock).start()
        fe.command(Req.SET_VRING_CALL, P.encode_vring_file(0), fds=(b.fileno(),))
        fe.post_rx(4)
        frame = demo_frame(0, 100)
        b.send(frame)
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 2:                 # the frame, then the worker's call (8 bytes: eventfd's u64 1)
            got += fe.take_received()
            assert w.proc.poll() is None, w.proc.stderr.read()
            assert time.monotonic() < deadline, (got, live_stats(w.proc, w.stats_file))
            time.sleep(0.01)
        assert got[0] == frame and got[1] == (1).to_bytes(8, "little"), got
        fe.stop()
        fe.close()
        code, stats = w.wait()
    finally:
        w.kill()
    assert code == 0, w.stderr
    assert stats["rechecks"]["found_work"] >= 1, stats["rechecks"]
    assert stats["rechecks"]["after_signal"] >= stats["rechecks"]["found_work"], stats["rechecks"]

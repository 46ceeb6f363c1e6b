"""`vhostsplice serve` migrates: one dirty log for the device, logged into by every pair's worker.

As root, in a private netns (prefix vsl). The front-end is the built-in pure-Python one, driving both
queue pairs of `serve --queues 2` the way QEMU 7.2 does at a migration start: SET_LOG_BASE once per
pair (the same memfd each time, one reply each), SET_FEATURES with VHOST_F_LOG_ALL, SET_VRING_ADDR with
the log flag on the running rings. Asserted: each TX used ring's page is marked in the shared log by its
own worker, a worker replaced mid-migration logs too (the supervisor replays the log to it and consumes
its reply, so later replies stay in step), SEND_RARP goes out once, and every ring stops cleanly.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import time

import pytest

from support.waiting import wait_for
from vhostsplice.vhostuser import protocol as P
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import Feature as F, ProtocolFeature as PF, Req, bit
from vhostsplice.testing.frontend import DEFAULT_PROTOCOL, Frontend
from vhostsplice.testing.harness import demo_frame, tap_socket
from vhostsplice.testing.virtq import DriverQueue

pytestmark = pytest.mark.root
TAP = "vsl0"
NETNS = "vsl"        # the ns fixture's namespace prefix (conftest.py)
PAGE = 4096
GUEST_MAC = bytes.fromhex("525400abcdef")


def events(path: str, kind: str) -> list[dict]:
    try:
        with open(path) as f:
            return [e for e in map(json.loads, f) if e["event"] == kind]
    except FileNotFoundError:
        return []


class Pair1:
    """Rings 2 and 3 (the second queue pair), driven by hand next to the Frontend's rings 0 and 1."""

    def __init__(self, fe: Frontend):
        self.fe = fe
        event_idx = bool(fe.acked & bit(F.RING_F_EVENT_IDX))
        self.q = {2: DriverQueue(fe.mem, fe.queue_size, event_idx=event_idx),
                  3: DriverQueue(fe.mem, fe.queue_size, event_idx=event_idx)}
        self.kick = {i: os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for i in (2, 3)}
        self.call = {i: os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for i in (2, 3)}

    def setup(self) -> None:
        for i, q in self.q.items():
            self.fe.command(Req.SET_VRING_NUM, P.encode_vring_state(P.VringState(i, self.fe.queue_size)))
            self.fe.command(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(i, 0, q.desc_uva, q.used_uva,
                                                                                q.avail_uva, 0)))
            self.fe.command(Req.SET_VRING_BASE, P.encode_vring_state(P.VringState(i, 0)))
            self.fe.command(Req.SET_VRING_CALL, P.encode_vring_file(i), fds=(self.call[i],))
            self.fe.command(Req.SET_VRING_KICK, P.encode_vring_file(i), fds=(self.kick[i],))
            self.fe.command(Req.SET_VRING_ENABLE, P.encode_vring_state(P.VringState(i, 1)))

    def send(self, frame: bytes) -> None:
        q = self.q[3]
        q.add_out([frame])
        q.publish()
        os.eventfd_write(self.kick[3], 1)
        assert wait_for(q.used, 15), "pair 1's worker did not use the TX frame"

    def close(self) -> None:
        for fd in (*self.kick.values(), *self.call.values()):
            os.close(fd)
        self.q.clear()          # the queues hold views of the front-end's memory map


def log_ring(fe: Frontend, index: int, q: DriverQueue) -> None:
    """QEMU's SET_VRING_ADDR at a migration start: the same ring, with VHOST_VRING_F_LOG and the used
    ring's guest address as log_guest_addr."""
    fe.command(Req.SET_VRING_ADDR, P.encode_vring_addr(P.VringAddr(index, 1, q.desc_uva, q.used_uva,
                                                                    q.avail_uva, q.used_gpa)))


def marked(log: mmap.mmap, gpa: int) -> bool:
    page = gpa // PAGE
    return bool(log[page // 8] & (1 << (page % 8)))


def test_serve_logs_every_pair_into_one_log_and_announces_once(ns, tmp_path):
    sock, ev = str(tmp_path / "s.sock"), str(tmp_path / "events")
    proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "2",
                             "--events", ev], env=self_env(), stdin=subprocess.DEVNULL)
    logfd = os.memfd_create("vhost-log", os.MFD_CLOEXEC)
    try:
        assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15), "serve did not listen"
        assert proc.poll() is None
        fe = Frontend.connect(sock, protocol_features=DEFAULT_PROTOCOL | bit(PF.LOG_SHMFD) | bit(PF.RARP))
        with fe:
            fe.negotiate()
            with contextlib.closing(Pair1(fe)) as pair1:
                assert fe.offered & bit(F.VHOST_F_LOG_ALL) and fe.offered & bit(F.NET_F_GUEST_ANNOUNCE)
                assert fe.protocol_acked & bit(PF.LOG_SHMFD) and fe.protocol_acked & bit(PF.RARP)
                fe.share_memory()
                fe.rx, fe.tx = fe.setup_ring(0), fe.setup_ring(1)
                pair1.setup()
                starts = wait_for(lambda: len(events(ev, "start")) == 2 and events(ev, "start"), 15)
                assert starts, "both pairs' workers start"
                pids = {e["pair"]: e["pid"] for e in starts}

                size = len(fe.map) // PAGE // 8
                os.ftruncate(logfd, size)
                log = mmap.mmap(logfd, size)
                for _ in range(2):          # QEMU 7.2: one SET_LOG_BASE per pair, one reply each
                    reply = fe.request(Req.SET_LOG_BASE, P.encode_log(P.LogArea(size, 0)), fds=(logfd,))
                    assert P.decode_u64(reply) == 0
                fe.command(Req.SET_FEATURES, P.encode_u64(fe.acked | bit(F.VHOST_F_LOG_ALL)))
                log_ring(fe, 1, fe.tx)
                log_ring(fe, 3, pair1.q[3])
                assert fe.tx.used_gpa // PAGE != pair1.q[3].used_gpa // PAGE

                log[:] = bytes(size)
                fe.send([demo_frame(1, 64)])
                assert len(fe.wait_used(fe.tx, 1)) == 1
                pair1.send(demo_frame(2, 64))
                # a worker marks the log just after it publishes used->idx (the store first, then its mark)
                assert wait_for(lambda: marked(log, fe.tx.used_gpa), 5), "pair 0's worker did not log its used ring"
                assert wait_for(lambda: marked(log, pair1.q[3].used_gpa), 5), \
                    "pair 1's worker did not log its used ring"

                # a worker replaced mid-migration is told the log again and logs into it
                os.kill(pids[1], signal.SIGKILL)
                assert wait_for(lambda: len([e for e in events(ev, "start") if e["pair"] == 1]) == 2, 15), \
                    "pair 1's worker is replaced"
                log[:] = bytes(size)
                pair1.send(demo_frame(3, 64))
                assert wait_for(lambda: marked(log, pair1.q[3].used_gpa), 5), "the replacement did not log"

                # after the move the front-end asks for the announce: once, through one worker
                with tap_socket(TAP) as cap:
                    fe.command(Req.SEND_RARP, GUEST_MAC + b"\0\0")
                    rarps, deadline = [], time.monotonic() + 1.5      # all of it: a second one would show
                    while (left := deadline - time.monotonic()) > 0:
                        if select.select([cap], [], [], left)[0]:
                            frame, addr = cap.recvfrom(65536)
                            if addr[2] != socket.PACKET_OUTGOING and frame[12:14] == b"\x80\x35":
                                rarps.append(frame)
                assert len(rarps) == 1 and rarps[0][6:12] == GUEST_MAC, rarps

                bases = [P.decode_vring_state(fe.request(Req.GET_VRING_BASE,
                                                         P.encode_vring_state(P.VringState(i, 0)))) for i in range(4)]
                assert [(b.index, b.num) for b in bases] == [(0, 0), (1, 1), (2, 0), (3, 2)], bases
                log.close()
        assert proc.wait(30) == 0
        assert not events(ev, "error")
    finally:
        os.close(logfd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

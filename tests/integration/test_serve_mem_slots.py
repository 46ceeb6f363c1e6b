"""`vhostsplice serve` with memory slots (issue 16): ADD_MEM_REG / REM_MEM_REG go to every worker and a
replacement worker is told the table as it stands.

As root, in a private netns (prefix vsq). The front-end is the built-in pure-Python one, sharing its
memory the way QEMU does once CONFIGURE_MEM_SLOTS is acked: no SET_MEM_TABLE, one ADD_MEM_REG per region
(12 here, more than SET_MEM_TABLE's 8), each acked (REPLY_ACK) only once the worker has it, and each
twice, as QEMU 7.2 does with several queue pairs (serve counts them; the REM goes out with the last). Asserted:
GET_MAX_MEM_SLOTS answers 509, frames whose buffers sit in the tenth region reach the tap byte-exact,
the device's stats file shows the worker's region count (12, then 11 after a REM_MEM_REG), and a worker
killed after the REM is replaced with the 11 regions (its frames reach the tap, its stats say 11).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess

import pytest

from support.guest import read_events
from support.waiting import wait_for
from vhostsplice.vhostuser import protocol as P
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.spec import MAX_MEM_SLOTS, ProtocolFeature as PF, Req, bit
from vhostsplice.testing.frontend import DEFAULT_PROTOCOL, Frontend
from vhostsplice.testing.harness import demo_frame, tap_socket

pytestmark = pytest.mark.root
TAP = "vsq0"
NETNS = "vsq"        # the ns fixture's namespace prefix (conftest.py)
SLOTS = 12


def events_of(path: str, kind: str) -> list[dict]:
    return [e for e in read_events(path) if e["event"] == kind]


def pair0(stats: str) -> dict:
    try:
        with open(stats) as f:
            return json.load(f)["pairs"]["0"]
    except (FileNotFoundError, KeyError, ValueError):
        return {}


def sent_through(fe: Frontend, cap, seq: int) -> bool:
    """One TX frame out and seen on the tap as it was queued."""
    frame = demo_frame(seq, 1400)
    fe.send([frame])
    fe.wait_used(fe.tx, 1)
    while select.select([cap], [], [], 5)[0]:
        if cap.recv(65536) == frame:
            return True
    return False


def test_serve_forwards_memory_slots_and_replays_them(ns, tmp_path):
    sock, ev, stats = str(tmp_path / "s.sock"), str(tmp_path / "events"), str(tmp_path / "stats.json")
    proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "1",
                             "--events", ev, "--stats-file", stats, "--stats-interval", "0.2"],
                            env=self_env(), stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15), "serve did not listen"
        fe = Frontend.connect(sock, mem_size=SLOTS << 20,
                              protocol_features=DEFAULT_PROTOCOL | bit(PF.CONFIGURE_MEM_SLOTS))
        with fe, tap_socket(TAP) as cap:
            fe.negotiate()
            assert fe.protocol_acked & bit(PF.CONFIGURE_MEM_SLOTS) and fe.protocol_acked & bit(PF.REPLY_ACK)
            assert P.decode_u64(fe.request(Req.GET_MAX_MEM_SLOTS)) == MAX_MEM_SLOTS
            fe.add_memory_slots(SLOTS)
            fe.add_memory_slots(SLOTS)      # QEMU 7.2 with queues=N: every queue pair's vhost_dev sends them
            fe.rx, fe.tx = fe.setup_ring(0), fe.setup_ring(1)
            fe.mem.alloc((9 << 20) + (1 << 19))             # later buffers sit in region 9 (of 0..11)
            assert wait_for(lambda: events_of(ev, "start"), 15), "the worker starts"
            assert sent_through(fe, cap, 1)
            assert wait_for(lambda: pair0(stats).get("memory", {}).get("regions") == SLOTS, 10), pair0(stats)

            fe.remove_memory_slot(SLOTS - 1, SLOTS)           # the first of two: the region stays
            assert sent_through(fe, cap, 20)
            assert pair0(stats).get("memory", {}).get("regions") == SLOTS
            fe.remove_memory_slot(SLOTS - 1, SLOTS)           # the last: gone (unused: the rings keep running)
            assert wait_for(lambda: pair0(stats).get("memory", {}).get("regions") == SLOTS - 1, 10), pair0(stats)
            assert sent_through(fe, cap, 2)

            os.kill(events_of(ev, "start")[0]["pid"], signal.SIGKILL)
            assert wait_for(lambda: len(events_of(ev, "start")) == 2, 15), "the worker is replaced"
            assert sent_through(fe, cap, 3)
            new = events_of(ev, "start")[1]["pid"]
            assert wait_for(lambda: pair0(stats).get("memory", {}).get("regions") == SLOTS - 1
                            and pair0(stats).get("rings", {}).get("tx", {}).get("drops_fault") == 0, 10), pair0(stats)
            assert new != events_of(ev, "start")[0]["pid"]
            fe.stop()                                         # GET_VRING_BASE: the rings stop cleanly
        assert proc.wait(30) == 0
        assert not events_of(ev, "error")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

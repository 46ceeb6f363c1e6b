"""`vhostsplice serve` with DPDK virtio-user queues=2: one worker process per queue pair, restarts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import support.testpmd as tp
from support.confined import unconfined
from support.peers import require_peer
from support.waiting import wait_for
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.netns import PrivateNetns

pytestmark = [pytest.mark.root, pytest.mark.interop]
TAP = "vss0"


def events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


@pytest.fixture
def served(tmp_path):
    require_peer(None if os.geteuid() == 0 and tp.available() else "needs root and dpdk-testpmd")
    sock, ev = tmp_path / "dev.sock", tmp_path / "events.jsonl"
    with PrivateNetns("vss") as ns, ns.entered():
        sup = subprocess.Popen([*self_argv(), "serve", "--socket-path", str(sock), "--tap", TAP, "--queues", "2",
                                "--cpus", "0-1", "--events", str(ev)], env=self_env(), stdin=subprocess.DEVNULL)
        try:
            assert wait_for(sock.exists), "supervisor did not listen"
            pmd = tp.Testpmd([f"net_virtio_user0,path={sock},queues=2,queue_size={tp.QUEUE_SIZE}"], mode="txonly",
                          log=tmp_path / "testpmd.log", extra=["--rxq=2", "--txq=2"], txpkts=64)
            with pmd:
                pmd.wait_started()
                yield sup, pmd, ev
        finally:
            if sup.poll() is None:
                sup.send_signal(signal.SIGTERM)
            sup.wait(30)


def _confined_workers(ev) -> list[int]:
    """Issue 17: the pids of both pairs' workers once each is confined (Seccomp 2, no capabilities)."""
    pids = [e["pid"] for e in events(ev) if e["event"] == "start"]
    return pids if len(pids) == 2 and not any(unconfined(pid) for pid in pids) else []


def test_each_pair_is_served_by_its_own_worker(served):
    sup, pmd, ev = served
    time.sleep(2)
    assert wait_for(lambda: _confined_workers(ev)), [unconfined(e["pid"]) for e in events(ev) if e["event"] == "start"]
    totals = pmd.stop()
    # the front-end stopped the rings and left: serve ends by itself, 0, after its workers (each 0 too)
    assert sup.wait(30) == 0
    log = events(ev)
    assert [e for e in log if e["event"] == "end"] and log[-1]["event"] == "end" and log[-1]["exit"] == 0, log
    starts = [e for e in log if e["event"] == "start"]
    exits = {e["pair"]: e for e in log if e["event"] == "exit"}
    assert sorted(e["pair"] for e in starts) == [0, 1]
    assert len({e["pid"] for e in starts}) == 2 and sup.pid not in {e["pid"] for e in starts}
    assert {e["cpu"] for e in starts} == {0, 1}
    sent = totals["all"].tx_packets
    consumed = [exits[k]["counters"]["tx"]["packets"] for k in (0, 1)]
    assert all(c > 0 for c in consumed), consumed           # traffic on both pairs
    assert sent - 2 * tp.QUEUE_SIZE <= sum(consumed) <= sent
    assert all(exits[k]["exit"] == 0 for k in (0, 1))


def test_killed_worker_is_replaced_and_the_other_never_stops(served):
    sup, pmd, ev = served
    # workers start as the front-end enables their pairs: wait until both have
    started = wait_for(lambda: {e["pair"] for e in events(ev) if e["event"] == "start"} >= {0, 1})
    assert started, events(ev)
    first = {e["pair"]: e["pid"] for e in events(ev) if e["event"] == "start"}
    os.kill(first[1], signal.SIGKILL)
    restarted = wait_for(lambda: [e for e in events(ev) if e["event"] == "start" and e["pair"] == 1
                                  and e["restarts"] == 1])
    assert restarted and restarted[0]["pid"] != first[1]
    time.sleep(2)                                           # the replacement carries traffic again
    pmd.stop()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    log = events(ev)
    exits = [e for e in log if e["event"] == "exit"]
    killed = [e for e in exits if e["pid"] == first[1]]
    assert killed and killed[0]["exit"] == 128 + signal.SIGKILL
    pair0 = [e for e in exits if e["pair"] == 0]
    assert len(pair0) == 1 and pair0[0]["pid"] == first[0]  # pair 0 ran once, start to finish
    replacement = [e for e in exits if e["pid"] == restarted[0]["pid"]][0]
    assert replacement["exit"] == 0 and replacement["counters"]["tx"]["packets"] > 0
    assert replacement["counters"]["tx"]["broken"] is None

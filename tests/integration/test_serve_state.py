"""`vhostsplice serve` hands each pair's state page (a sealed memfd it holds) to every worker of the pair:
a worker SIGKILLed under TX traffic is replaced, told the device's requests again (SET_VRING_BASE as the
front-end first said it: stale by now), and resumes from the page. As root, in a private netns (vst)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from support.guest import read_events
from support.waiting import wait_for
from vhostsplice.serve.selfexec import self_argv, self_env
from vhostsplice.testing.frontend import Frontend
from vhostsplice.testing.harness import demo_frame

pytestmark = pytest.mark.root
TAP = "vst0"
NETNS = "vst"        # the ns fixture's namespace prefix (conftest.py)


def events(path: str, kind: str) -> list[dict]:
    return [e for e in read_events(path) if e["event"] == kind]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_serve_replacement_resumes_from_the_pairs_state_page(ns, tmp_path, packed):
    sock, ev = str(tmp_path / "s.sock"), str(tmp_path / "events")
    proc = subprocess.Popen([*self_argv(), "serve", "--socket-path", sock, "--tap", TAP, "--queues", "1",
                             "--events", ev], env=self_env(), stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 15), "serve did not listen"
        fe = Frontend.connect(sock, packed=packed).start()
        with fe:
            assert fe.packed == packed
            first = wait_for(lambda: events(ev, "start"), 15)
            assert first, "the pair's worker starts"
            fe.send([demo_frame(i, 64) for i in range(12)])
            assert len(fe.wait_used(fe.tx, 12, timeout=15)) == 12
            os.kill(first[0]["pid"], signal.SIGKILL)
            assert wait_for(lambda: len(events(ev, "start")) == 2, 15), "the worker is replaced"
            fe.send([demo_frame(i, 64) for i in range(12, 15)])
            assert len(fe.wait_used(fe.tx, 3, timeout=15)) == 3
            fe.stop()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    exits = events(ev, "exit")
    assert [e["exit"] for e in exits] == [128 + signal.SIGKILL, 0], exits
    tx = exits[1]["resume"]["tx"]
    assert exits[1]["resume"]["generation"] == 2, exits[1]["resume"]
    # the replayed SET_VRING_BASE is the one the front-end sent first: the ring's start
    start, after = (0x8000_8000, 0x8000 | 12 | (0x8000 | 12) << 16) if packed else (0, 12)
    assert tx["source"] == "state-page" and tx["front_end"] == start and tx["position"] == after, tx
    assert exits[1]["counters"]["tx"]["chains"] == 3, exits[1]["counters"]      # nothing done twice
